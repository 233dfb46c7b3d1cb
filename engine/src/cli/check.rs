//! The offline checks: `validate` (definitions checked, their tests run) and `map` (one
//! connector's mapping applied to a sample input as its route would apply it, a pull
//! connector's search or read of a resource type, the FHIR printed).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;

use super::args::{BundleArg, MapTarget};
use super::definitions::{load_and_validate, usage};
use crate::config::diagnostic::{self, Format, Severity};
use crate::config::fhir_schema::FhirSchema;
use crate::config::load;
use crate::model::fhir::{BundleKind, bundle};
use crate::model::fhir_structure;
use crate::model::vocabulary::{Interaction, MatchMode};
use crate::model::{Connector, Strategy, Test, TestRunError};

/// Largest input `engine map` reads.
const MAX_INPUT: u64 = 256 << 20;

/// `engine validate`: exit 0 valid, 1 invalid, 2 unusable invocation.
pub(super) fn validate(
    paths: Vec<PathBuf>,
    format: Format,
    deny_warnings: bool,
    allow_unresolved: bool,
    no_tests: bool,
    fhir_schema: Option<PathBuf>,
) -> ExitCode {
    let schema = match fhir_schema.as_deref().map(FhirSchema::load).transpose() {
        Ok(s) => s,
        Err(e) => return usage(&e.to_string()),
    };
    let outcome = match load_and_validate(&paths, allow_unresolved, !no_tests, schema.as_ref()) {
        Ok(o) => o,
        Err(e) => return usage(&e.to_string()),
    };
    let text = diagnostic::render(&outcome.diagnostics, format, &|p: &Path| {
        outcome.texts.get(p).cloned()
    });
    let failed = outcome.has_errors()
        || (deny_warnings
            && outcome
                .diagnostics
                .iter()
                .any(|d| d.severity == Severity::Warning));
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if format == Format::Human
        && !failed
        && let Some(m) = &outcome.model
    {
        let tests: usize = m.connectors.iter().map(|c| c.tests.len()).sum();
        let _ = writeln!(
            out,
            "valid: {} connectors, {} sources, {} sinks in {} files; {} definition tests passed",
            m.connectors.len(),
            m.sources.len(),
            m.sinks.len(),
            outcome.texts.len(),
            if no_tests { 0 } else { tests }
        );
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `engine map`: the FHIR one connector makes of a sample input.
pub(super) fn map(
    connector: String,
    input: PathBuf,
    definitions: Vec<PathBuf>,
    target: MapTarget,
    as_bundle: Option<BundleArg>,
    fhir_schema: Option<PathBuf>,
    check: bool,
) -> ExitCode {
    let schema = match fhir_schema.as_deref().map(FhirSchema::load).transpose() {
        Ok(s) => s,
        Err(e) => return usage(&e.to_string()),
    };
    let outcome = match load_and_validate(&definitions, true, false, None) {
        Ok(o) => o,
        Err(e) => return usage(&e.to_string()),
    };
    let Some(model) = &outcome.model else {
        let text = diagnostic::render(&outcome.diagnostics, Format::Human, &|p: &Path| {
            outcome.texts.get(p).cloned()
        });
        eprint!("{text}");
        return ExitCode::from(1);
    };
    let Some(c) = model.connector(&connector) else {
        let names: Vec<&str> = model.connectors.iter().map(|c| c.name.as_str()).collect();
        let hint = crate::model::hint::did_you_mean(&connector, names.iter().copied())
            .unwrap_or_else(|| format!("connectors: {}", names.join(", ")));
        return usage(&format!("no connector `{connector}` ({hint})"));
    };
    let document = match read_input_as(&input, &c.input_format()) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let run = match map_run(c, &connector, document, target) {
        Ok(run) => run,
        Err(exit) => return exit,
    };
    match c.run_test(&run) {
        Ok(resources) => {
            let invalid = report_invalid(c, &resources, check, schema.as_ref());
            let out = match as_bundle {
                None => Value::Array(resources),
                Some(kind) => bundle(
                    match kind {
                        BundleArg::Collection => BundleKind::Collection,
                        BundleArg::Transaction => BundleKind::Transaction,
                        BundleArg::Batch => BundleKind::Batch,
                        BundleArg::Searchset => BundleKind::Searchset,
                    },
                    resources,
                    None,
                ),
            };
            super::output::stdout(&format!(
                "{}\n",
                serde_json::to_string_pretty(&out).unwrap_or_default()
            ));
            if invalid {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            match e {
                TestRunError::Map(e) => eprintln!("error: mapping failed: {e}"),
                refused => eprintln!("error: {refused}"),
            }
            ExitCode::from(1)
        }
    }
}

/// The run `engine map` asks of connector `c` (named `connector` on the command line): the
/// input mapped as the search or read of the type `target` names, with its parameters; a
/// target the connector cannot run is an unusable invocation (exit 2).
fn map_run(
    c: &Connector,
    connector: &str,
    document: Value,
    target: MapTarget,
) -> Result<Test, ExitCode> {
    let mut param_values = serde_json::Map::new();
    for p in &target.params {
        let Some((k, v)) = p.split_once('=') else {
            return Err(usage(&format!("`{p}` is not NAME=VALUE")));
        };
        param_values.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    let interaction = match target.read {
        Some(_) => Interaction::Read,
        None => Interaction::Search,
    };
    let pull = matches!(c.strategy, Strategy::Pull(_));
    if !pull && (target.resource_type.is_some() || target.read.is_some()) {
        return Err(usage("`--type` and `--read` are for pull connectors"));
    }
    if let Some(t) = &target.resource_type
        && c.pull_resource(Some(t), interaction).is_none()
    {
        return Err(usage(&format!("connector `{connector}` serves no `{t}`")));
    }
    if pull
        && c.pull_resource(target.resource_type.as_deref(), interaction)
            .is_some_and(|r| {
                (interaction == Interaction::Read && r.read.is_none())
                    || (interaction == Interaction::Search && r.search.is_none())
            })
    {
        let what = if target.read.is_some() {
            "read"
        } else {
            "search"
        };
        return Err(usage(&format!("that resource type has no {what}")));
    }
    if let Some(id) = &target.read
        && !crate::model::fhir::is_id(id)
    {
        return Err(usage(&format!("`{id}` is not a FHIR id")));
    }
    Ok(Test {
        name: "engine map".into(),
        at: Vec::new(),
        input: document,
        params: Value::Object(param_values),
        resource_type: target.resource_type,
        interaction,
        id: target.read,
        expect: None,
        match_mode: MatchMode::Exact,
        expect_error: None,
    })
}

/// Says on standard error which resources are not valid FHIR: of the connector's version
/// (`--check`), and of R4 by the schema (`--fhir-schema`); true when one was not.
fn report_invalid(
    c: &Connector,
    resources: &[Value],
    check: bool,
    schema: Option<&FhirSchema>,
) -> bool {
    let mut invalid = false;
    if check {
        let version = c.fhir_version;
        match fhir_structure::structure(version) {
            Ok(structure) => {
                for (i, r) in resources.iter().enumerate() {
                    for problem in structure.check_instance(r) {
                        eprintln!(
                            "error: resource {i} is not valid FHIR {}: {problem}",
                            version.name()
                        );
                        invalid = true;
                    }
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                invalid = true;
            }
        }
    }
    if let Some(schema) = schema {
        for (i, r) in resources.iter().enumerate() {
            for problem in schema.check(r) {
                eprintln!("error: resource {i} is not valid FHIR R4: {problem}");
                invalid = true;
            }
        }
    }
    invalid
}

/// Reads a JSON input of bounded size; the error says why it is unusable.
pub fn read_input(path: &Path) -> Result<Value, String> {
    read_input_as(path, &crate::model::decode::Format::Json)
}

/// Reads an input of bounded size in a connector's input format (`format` of its source or
/// push endpoint); the error says why it is unusable, with its line or record.
pub fn read_input_as(path: &Path, format: &crate::model::decode::Format) -> Result<Value, String> {
    let mut bytes = Vec::new();
    let name = path.display();
    let read = if path == Path::new("-") {
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::io::stdin(), MAX_INPUT + 1),
            &mut bytes,
        )
    } else {
        std::fs::File::open(path).and_then(|f| {
            std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_INPUT + 1), &mut bytes)
        })
    };
    read.map_err(|e| format!("{name}: {}", load::io_reason(&e)))?;
    if bytes.len() as u64 > MAX_INPUT {
        return Err(format!("{name}: larger than {} MiB", MAX_INPUT >> 20));
    }
    if *format == crate::model::decode::Format::Json {
        return serde_json::from_slice(&bytes).map_err(|e| format!("{name}: not JSON: {e}"));
    }
    let limits = crate::model::decode::Limits {
        max_values: usize::MAX,
    };
    crate::model::decode::decode(format, &bytes, limits)
        .map_err(|e| format!("{name}: not {}: {e}", format.name()))
}
