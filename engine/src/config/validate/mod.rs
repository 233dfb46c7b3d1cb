//! Validation: definition files in, a checked [`Model`] or a list of diagnostics out. YAML is
//! parsed into a located tree, its references (secrets) are resolved inside string values,
//! it is checked against the generated schema, then each document is checked for meaning and
//! compiled; references, names and routes are checked across documents; last, the
//! definitions' own tests run.

mod bulk_export;
mod connector;
mod context;
mod credentials;
mod cron;
mod deftests;
mod fhir_check;
mod format;
mod guide;
mod mappings;
mod names;
mod pull;
mod push;
mod references;
mod source;
mod tables;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::config::diagnostic::{Diagnostic, Location, Severity};
use crate::config::fhir_schema::FhirSchema;
use crate::config::load::SourceFile;
use crate::config::secrets::{Environment, Recording};
use crate::config::spec::{ConnectorDoc, SinkDoc, SourceDoc};
use crate::config::yaml::{self, Node, NodeValue, display_path};
use crate::model::Model;
use crate::model::digest::content_digest;
use context::Doc;

use context::Ctx;
pub use context::{parse_duration, parse_size};

/// What validation may assume.
pub struct Options<'a> {
    /// Unresolvable `${env:...}` / `${file:...}` are warnings instead of errors (CI without
    /// secrets).
    pub allow_unresolved: bool,
    /// Run the definitions' `tests:`.
    pub run_tests: bool,
    /// Check produced FHIR R4 against this JSON Schema.
    pub fhir_schema: Option<&'a FhirSchema>,
    pub env: &'a dyn Environment,
}

/// The result: the model when there is no error, and every diagnostic.
pub struct Outcome {
    pub model: Option<Model>,
    pub diagnostics: Vec<Diagnostic>,
    pub texts: HashMap<PathBuf, String>,
}

impl Outcome {
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}

/// Validates the files; `read_errors` are diagnostics from reading them. The stages: each
/// file parsed into documents, each document checked against the schema with its secrets
/// resolved, names checked unique, sources and sinks checked, connectors checked and compiled,
/// the checks across documents (unused sources, routes), and last the definitions' tests.
pub fn validate(files: &[SourceFile], read_errors: Vec<Diagnostic>, opts: &Options<'_>) -> Outcome {
    // The files that references read are noted, so that the model names its inputs.
    let recording = Recording::new(opts.env);
    let opts = &Options {
        allow_unresolved: opts.allow_unresolved,
        run_tests: opts.run_tests,
        fhir_schema: opts.fhir_schema,
        env: &recording,
    };
    let mut diags = read_errors;
    let mut texts = HashMap::new();
    let mut docs = Documents::default();
    for file in files {
        texts.insert(file.path.clone(), file.text.clone());
        for node in documents_of(file, &mut diags) {
            docs.add(file, node, opts, &mut diags);
        }
    }
    docs.check_unique_names(&mut diags);
    let mut model = Model::default();
    docs.check_sources_and_sinks(&mut model, &mut diags);
    let used = docs.check_connectors(&mut model, opts.run_tests, &mut diags);
    docs.warn_unused_sources(&used, &mut diags);
    routes(&docs.connectors, &mut diags);
    if opts.run_tests && !diags.iter().any(|d| d.severity == Severity::Error) {
        docs.run_tests(&model, opts.fhir_schema, &mut diags);
    }
    model.inputs.extend(recording.into_read());
    crate::config::diagnostic::sort(&mut diags);
    let ok = !diags.iter().any(|d| d.severity == Severity::Error);
    Outcome {
        model: ok.then_some(model),
        diagnostics: diags,
        texts,
    }
}

/// The YAML documents of a file (empty ones left out); parse errors and a file without any
/// document become diagnostics.
fn documents_of(file: &SourceFile, diags: &mut Vec<Diagnostic>) -> Vec<Node> {
    let parsed = yaml::parse(&file.text);
    for e in &parsed.errors {
        let at = Location {
            line: e.line,
            column: e.column,
            path: e.path.clone(),
        };
        diags.push(Diagnostic::error(&file.path, &at, e.message.clone()).with_hint(e.hint.clone()));
    }
    let documents: Vec<Node> = parsed
        .documents
        .into_iter()
        .filter(|d| d.value != NodeValue::Null)
        .collect();
    if documents.is_empty() && parsed.errors.is_empty() {
        let at = Location {
            line: 1,
            column: 1,
            path: String::new(),
        };
        diags.push(
            Diagnostic::error(&file.path, &at, "the file has no documents").with_hint(Some(
                "a definition starts with `apiVersion: fosps.gravitate-health.eu/v1`".into(),
            )),
        );
    }
    documents
}

/// The documents that passed the schema check, by kind, with the names of those that did not
/// (references to them are not errors of their own).
#[derive(Default)]
struct Documents {
    connectors: Vec<(Doc, ConnectorDoc)>,
    sources: Vec<(Doc, SourceDoc)>,
    sinks: Vec<(Doc, SinkDoc)>,
    broken: HashSet<(String, String)>,
}

impl Documents {
    /// Checks one document against the schema, resolves its secrets and keeps it by kind.
    fn add(
        &mut self,
        file: &SourceFile,
        node: Node,
        opts: &Options<'_>,
        diags: &mut Vec<Diagnostic>,
    ) {
        if !matches!(node.value, NodeValue::Map(_)) {
            let at = Location {
                line: node.line,
                column: node.column,
                path: String::new(),
            };
            let found = crate::config::schema::yaml_kind(&node.to_json());
            diags.push(Diagnostic::error(
                &file.path,
                &at,
                format!("a document must be a mapping with apiVersion, kind, metadata and spec, found {found}"),
            ));
            return;
        }
        let base = file.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut json = node.to_json();
        let mut doc = Doc {
            file: file.path.clone(),
            node,
            json: Value::Null,
            secret: HashSet::new(),
            unresolved: HashSet::new(),
        };
        // References are resolved before anything is typed, so that any scalar may use one.
        let lookup = references::Lookup {
            env: opts.env,
            allow_unresolved: opts.allow_unresolved,
            base: &base,
        };
        references::resolve(&mut json, &mut Vec::new(), &mut doc, diags, &lookup);
        let typed = references::check_typed(&mut json, &doc);
        if !typed.findings.is_empty() || typed.incomplete {
            for f in typed.findings {
                let (line, column) = doc.node.locate(&f.at, f.key);
                let at = Location {
                    line,
                    column,
                    path: display_path(&f.at),
                };
                diags.push(Diagnostic::error(&file.path, &at, f.message).with_hint(f.hint));
            }
            if let (Some(k), Some(n)) = (json["kind"].as_str(), json["metadata"]["name"].as_str()) {
                self.broken.insert((k.to_owned(), n.to_owned()));
            }
            return;
        }
        doc.json = json;
        let kind = doc.json["kind"].as_str().unwrap_or_default().to_owned();
        let typed = match kind.as_str() {
            "Connector" => {
                serde_json::from_value(doc.json.clone()).map(|t| self.connectors.push((doc, t)))
            }
            "Source" => {
                serde_json::from_value(doc.json.clone()).map(|t| self.sources.push((doc, t)))
            }
            _ => serde_json::from_value(doc.json.clone()).map(|t| self.sinks.push((doc, t))),
        };
        if let Err(e) = typed {
            // The schema and the types agree, so this is a bug; say so rather than panic.
            let at = Location {
                line: 1,
                column: 1,
                path: String::new(),
            };
            diags.push(Diagnostic::error(
                &file.path,
                &at,
                format!("internal: schema-valid document not accepted: {e}"),
            ));
        }
    }

    fn check_unique_names(&self, diags: &mut Vec<Diagnostic>) {
        let sources = self
            .sources
            .iter()
            .map(|(d, t)| (d, t.metadata.name.as_str()));
        unique_names("Source", sources, diags);
        let sinks = self
            .sinks
            .iter()
            .map(|(d, t)| (d, t.metadata.name.as_str()));
        unique_names("Sink", sinks, diags);
        let connectors = self
            .connectors
            .iter()
            .map(|(d, t)| (d, t.metadata.name.as_str()));
        unique_names("Connector", connectors, diags);
    }

    /// Checks every Source and Sink document into the model; those that fail are remembered
    /// as broken.
    fn check_sources_and_sinks(&mut self, model: &mut Model, diags: &mut Vec<Diagnostic>) {
        for (doc, spec) in &self.sources {
            let mut ctx = Ctx::new(doc, diags);
            match source::source(&mut ctx, &spec.metadata.name, &spec.spec, &["spec"]) {
                Some(s) => {
                    model
                        .sources
                        .entry(spec.metadata.name.clone())
                        .or_insert(Arc::new(s));
                }
                None => {
                    self.broken
                        .insert(("Source".into(), spec.metadata.name.clone()));
                }
            }
        }
        for (doc, spec) in &self.sinks {
            let mut ctx = Ctx::new(doc, diags);
            match source::sink(&mut ctx, &spec.metadata.name, &spec.spec) {
                Some(s) => {
                    model
                        .sinks
                        .entry(spec.metadata.name.clone())
                        .or_insert(Arc::new(s));
                }
                None => {
                    self.broken
                        .insert(("Sink".into(), spec.metadata.name.clone()));
                }
            }
        }
    }

    /// Checks and compiles every connector into the model; the names of the sources they use.
    fn check_connectors(
        &self,
        model: &mut Model,
        run_tests: bool,
        diags: &mut Vec<Diagnostic>,
    ) -> HashSet<String> {
        let mut used = HashSet::new();
        let mut compiled = Vec::new();
        {
            let names = names::Names {
                sources: &model.sources,
                sinks: &model.sinks,
                broken: &self.broken,
                tests: run_tests,
            };
            for (doc, spec) in &self.connectors {
                let mut ctx = Ctx::new(doc, diags);
                let compiled_from = &mut model.inputs;
                if let Some(mut c) =
                    connector::connector(&mut ctx, spec, &names, &mut used, compiled_from)
                {
                    c.fingerprint = self.fingerprint(doc, spec);
                    // A table read from a file changes the connector as its definition does.
                    let files: Vec<String> = c
                        .templates
                        .tables()
                        .iter()
                        .filter(|(_, t)| t.file.is_some())
                        .map(|(n, t)| {
                            format!("{n}={}", Value::Object(t.map.clone().into_iter().collect()))
                        })
                        .collect();
                    if !files.is_empty() {
                        c.fingerprint = content_digest(&[&c.fingerprint, &files.join("\u{1f}")]);
                    }
                    compiled.push(c);
                }
            }
        }
        for c in compiled {
            if model.connector(&c.name).is_none() {
                model.connectors.push(Arc::new(c));
            }
        }
        used
    }

    /// A digest of a connector's resolved definition and of the sources and sink it names:
    /// equal fingerprints mean a reload leaves the connector as it is.
    fn fingerprint(&self, doc: &Doc, spec: &ConnectorDoc) -> String {
        let mut parts = vec![doc.json.to_string()];
        for name in spec.spec.sources.iter().flatten() {
            parts.extend(
                self.sources
                    .iter()
                    .filter(|(_, s)| &s.metadata.name == name)
                    .map(|(d, _)| d.json.to_string()),
            );
        }
        if let Some(sink) = &spec.spec.sink {
            parts.extend(
                self.sinks
                    .iter()
                    .filter(|(_, s)| &s.metadata.name == sink)
                    .map(|(d, _)| d.json.to_string()),
            );
        }
        content_digest(&parts)
    }

    fn warn_unused_sources(&self, used: &HashSet<String>, diags: &mut Vec<Diagnostic>) {
        for (doc, spec) in &self.sources {
            if !used.contains(&spec.metadata.name) {
                let mut ctx = Ctx::new(doc, diags);
                ctx.warning(
                    &["metadata", "name"],
                    format!(
                        "source `{}` is not used by any connector",
                        spec.metadata.name
                    ),
                    None,
                );
            }
        }
    }

    /// Runs each valid connector's `tests:`.
    fn run_tests(&self, model: &Model, schema: Option<&FhirSchema>, diags: &mut Vec<Diagnostic>) {
        for (doc, _) in &self.connectors {
            let name = doc.json["metadata"]["name"].as_str().unwrap_or_default();
            if let Some(c) = model.connector(name) {
                let mut ctx = Ctx::new(doc, diags);
                deftests::run(&mut ctx, c, schema);
            }
        }
    }
}

fn unique_names<'a>(
    kind: &str,
    docs: impl Iterator<Item = (&'a Doc, &'a str)>,
    diags: &mut Vec<Diagnostic>,
) {
    let mut seen: BTreeMap<&str, (PathBuf, usize)> = BTreeMap::new();
    for (doc, name) in docs {
        let ctx = Ctx::new(doc, diags);
        let at = ctx.at(&["metadata", "name"]);
        match seen.get(name) {
            Some((file, line)) => diags.push(
                Diagnostic::error(
                    &doc.file,
                    &at,
                    format!("{kind} name `{name}` is already used"),
                )
                .with_hint(Some(format!("first defined at {}:{line}", file.display()))),
            ),
            None => {
                seen.insert(name, (doc.file.clone(), at.line));
            }
        }
    }
}

/// Paths the engine itself serves; push endpoints may not take them.
const RESERVED: [&str; 6] = [
    "/fhir",
    "/connectors",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
];

fn routes(connectors: &[(Doc, ConnectorDoc)], diags: &mut Vec<Diagnostic>) {
    let mut seen: BTreeMap<String, (String, PathBuf, usize)> = BTreeMap::new();
    for (doc, c) in connectors {
        let Some(push) = &c.spec.push else { continue };
        let path = push
            .path
            .clone()
            .unwrap_or_else(|| format!("/push/{}", c.metadata.name));
        let ctx = Ctx::new(doc, diags);
        let at = if push.path.is_some() {
            ctx.at(&["spec", "push", "path"])
        } else {
            ctx.at(&["spec", "push"])
        };
        let normal = path.trim_end_matches('/').to_owned();
        if let Some(r) = RESERVED
            .iter()
            .find(|r| normal == **r || normal.starts_with(&format!("{r}/")))
        {
            diags.push(Diagnostic::error(
                &doc.file,
                &at,
                format!("push path `{path}` collides with the engine's own route `{r}`"),
            ));
            continue;
        }
        match seen.get(&normal) {
            Some((other, file, line)) => diags.push(
                Diagnostic::error(
                    &doc.file,
                    &at,
                    format!("push path `{path}` is also the route of connector `{other}`"),
                )
                .with_hint(Some(format!(
                    "`{other}` is defined at {}:{line}",
                    file.display()
                ))),
            ),
            None => {
                seen.insert(normal, (c.metadata.name.clone(), doc.file.clone(), at.line));
            }
        }
    }
}
