//! Checks of a connector: strategy and its sections, references to sources and sinks, pull
//! routes, push endpoint, schedule, mapping, tables and the definition's tests.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use super::context::{Ctx, segs};
use super::mappings::compile_mapping;
use super::names::Names;
use super::source::{exactly_one, source};
use crate::config::spec::{ConnectorDoc, ConnectorSpec, SourceSpec, SourceType, Strategy as S};
use crate::model::hint::did_you_mean;
use crate::model::mapping::Mapping;
use crate::model::template::{Table, Templates};
use crate::model::vocabulary::FhirVersion;
use crate::model::{Connector, Sink, SinkRef, Source, Strategy};

/// Checks and compiles one connector.
pub fn connector(
    ctx: &mut Ctx<'_>,
    doc: &ConnectorDoc,
    names: &Names<'_>,
    used: &mut HashSet<String>,
    inputs: &mut BTreeMap<PathBuf, String>,
) -> Option<Connector> {
    let errors = error_count(ctx);
    let spec = &doc.spec;
    let name = doc.metadata.name.as_str();
    sections(ctx, spec);

    let tables: Arc<BTreeMap<String, Table>> = Arc::new(super::tables::tables(ctx, spec, inputs));
    let time_zone = time_zone(ctx, spec.time_zone.as_deref());
    let mut templates = Templates::new(tables.clone(), time_zone);

    let sources = sources(ctx, spec, name, names, used);
    let mapping_root = spec
        .mapping
        .as_ref()
        .and_then(|_| compile_mapping(ctx, &segs(&["spec", "mapping"]), &mut templates, &tables));

    let fhir_source = !sources.is_empty() && sources.iter().all(|s| s.kind == SourceType::Fhir);
    // A pull connector's version comes from its sources and its own word (it has no sink), and
    // its resource types' own mappings are checked against it as they are compiled.
    let pull_version = (spec.strategy == S::Pull).then(|| version(ctx, spec, &sources, None));
    if let (Some(v), Some(pull)) = (pull_version, &spec.pull)
        && spec.mapping.is_none()
    {
        // The routes no mapping makes (a mapping's types are checked with it) pass on what
        // the sources answer: a proxy of FHIR sources answers in each one's version.
        let mut versions = vec![v];
        if fhir_source && spec.fhir_version.is_none() {
            versions = sources
                .iter()
                .map(|s| s.fhir_version.unwrap_or(FhirVersion::R4))
                .collect();
        }
        let types: Vec<(usize, &str)> = pull
            .resources
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.mapping.is_none()
                    && r.read.as_ref().is_none_or(|rd| rd.mapping.is_none())
                    && crate::model::mapping::is_resource_type(&r.resource_type)
            })
            .map(|(i, r)| (i, r.resource_type.as_str()))
            .collect();
        super::fhir_check::route_types(ctx, &types, &versions);
    }
    let mut own_mappings = Vec::new();
    let strategy = match spec.strategy {
        S::Pull => super::pull::pull(
            ctx,
            spec,
            fhir_source,
            &mut templates,
            &tables,
            pull_version.unwrap_or(FhirVersion::R4),
            &mut own_mappings,
        )
        .map(Strategy::Pull),
        S::Push => super::push::push(ctx, spec, name, names).map(Strategy::Push),
        S::Cron => super::cron::cron(ctx, spec, names, fhir_source, &mut templates, &tables)
            .map(Strategy::Cron),
    };

    let fhir_version = match pull_version {
        Some(v) => v,
        None => version(ctx, spec, &sources, strategy.as_ref()),
    };
    if let Some(root) = &mapping_root {
        // In a pull connector, the connector's mapping serves the routes without their own.
        let routes: Vec<&str> = spec
            .pull
            .iter()
            .flat_map(|p| p.resources.iter())
            .filter(|r| {
                r.mapping.is_none()
                    && (r.search.is_some() || r.read.as_ref().is_none_or(|rd| rd.mapping.is_none()))
            })
            .map(|r| r.resource_type.as_str())
            .collect();
        if spec.strategy == S::Pull && routes.is_empty() && spec.pull.is_some() {
            ctx.error(
                &["spec", "mapping"],
                "no route uses this mapping: every resource type of `pull.resources` has its own",
                Some("remove `spec.mapping`, or a type's own `mapping` that repeats it".into()),
            );
        }
        super::fhir_check::check(
            ctx,
            root,
            &segs(&["spec", "mapping"]),
            fhir_version,
            &routes,
            &tables,
        );
    }

    // Test input files are read as the connector's inputs are.
    let input_format = match &strategy {
        Some(Strategy::Push(p)) => p.format.clone(),
        _ => sources
            .first()
            .map(|s| s.format.clone())
            .unwrap_or_default(),
    };
    let tests = if names.tests {
        super::deftests::tests(ctx, spec, &input_format)
    } else {
        Vec::new()
    };
    let vars = Value::Object(
        spec.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    let mut strategy = strategy?;
    let templates = Arc::new(templates);
    let (shared_templates, shared_tables) = (templates.clone(), tables.clone());
    let mapping = move |root| Mapping {
        root,
        templates: shared_templates.clone(),
        tables: shared_tables.clone(),
    };
    if let Strategy::Pull(p) = &mut strategy {
        for own in own_mappings {
            let Some(r) = p
                .resources
                .iter_mut()
                .find(|r| r.resource_type == own.resource_type)
            else {
                continue;
            };
            match (own.read, &mut r.read) {
                (true, Some(read)) => read.mapping = Some(mapping(own.root)),
                (true, None) => {}
                (false, _) => r.mapping = Some(mapping(own.root)),
            }
        }
    }
    // Warnings (of the FHIR checks) leave the connector usable.
    (error_count(ctx) == errors).then(|| Connector {
        name: name.to_owned(),
        fingerprint: String::new(),
        description: doc.metadata.description.clone(),
        labels: doc.metadata.labels.clone(),
        file: ctx.doc.file.clone(),
        strategy,
        sources,
        vars,
        split_bundles: spec.split_bundles,
        time_zone,
        fhir_version,
        validation: spec.validation.unwrap_or_default(),
        mapping: mapping_root.map(mapping),
        templates,
        tests,
    })
}

/// The zone of `timeZone`: an IANA name (`Europe/Vienna`), else an error with the closest
/// names.
fn time_zone(ctx: &mut Ctx<'_>, name: Option<&str>) -> Option<chrono_tz::Tz> {
    let name = name?;
    match name.parse::<chrono_tz::Tz>() {
        Ok(z) => Some(z),
        Err(_) => {
            let hint = did_you_mean(name, chrono_tz::TZ_VARIANTS.iter().map(|z| z.name()));
            ctx.error(
                &["spec", "timeZone"],
                format!("`{name}` is not an IANA time zone (such as `Europe/Vienna` or `UTC`)"),
                hint,
            );
            None
        }
    }
}

/// Sections that belong to another strategy are errors; required ones must be there.
fn sections(ctx: &mut Ctx<'_>, spec: &ConnectorSpec) {
    let present = [
        ("pull", spec.pull.is_some(), &[S::Pull][..]),
        ("cache", spec.cache.is_some(), &[S::Pull][..]),
        ("push", spec.push.is_some(), &[S::Push][..]),
        ("schedule", spec.schedule.is_some(), &[S::Cron][..]),
        ("run", spec.run.is_some(), &[S::Cron][..]),
        ("fetch", spec.fetch.is_some(), &[S::Cron][..]),
        ("sync", spec.sync.is_some(), &[S::Cron][..]),
        ("import", spec.import.is_some(), &[S::Cron][..]),
        ("bulkExport", spec.bulk_export.is_some(), &[S::Cron][..]),
        ("sink", spec.sink.is_some(), &[S::Cron, S::Push][..]),
        ("write", spec.write.is_some(), &[S::Cron, S::Push][..]),
        // Pull routes answer callers with what the source has; only writes are screened.
        (
            "validation",
            spec.validation.is_some(),
            &[S::Cron, S::Push][..],
        ),
    ];
    let strategy = match spec.strategy {
        S::Pull => "pull",
        S::Push => "push",
        S::Cron => "cron",
    };
    for (key, on, strategies) in present {
        if on && !strategies.contains(&spec.strategy) {
            let owners: Vec<&str> = strategies
                .iter()
                .map(|s| match s {
                    S::Pull => "pull",
                    S::Push => "push",
                    S::Cron => "cron",
                })
                .collect();
            ctx.error(
                &["spec", key],
                format!(
                    "`{key}` is for {} connectors; this one is `{strategy}`",
                    owners.join(" and ")
                ),
                None,
            );
        }
    }
    let required = match spec.strategy {
        S::Pull => ("pull", spec.pull.is_some()),
        S::Push => ("push", spec.push.is_some()),
        S::Cron => ("schedule", spec.schedule.is_some()),
    };
    if !required.1 {
        ctx.error(
            &["spec"],
            format!("a {strategy} connector needs `{}`", required.0),
            None,
        );
    }
}

fn sources(
    ctx: &mut Ctx<'_>,
    spec: &ConnectorSpec,
    name: &str,
    names: &Names<'_>,
    used: &mut HashSet<String>,
) -> Vec<Arc<Source>> {
    // A push connector is sent its data, and an import reads its guide: neither has a source.
    let sourceless = match spec.strategy {
        S::Push => Some("a push connector reads no source: callers send the data"),
        S::Cron if spec.import.is_some() => {
            Some("an import reads its guide (`import.guide`), not a source")
        }
        _ => None,
    };
    if spec.strategy != S::Push {
        // Listed sources count as used even when the connector has other errors.
        used.extend(spec.sources.iter().flatten().cloned());
    }
    if let Some(message) = sourceless {
        let given = [
            ("source", spec.source.is_some()),
            ("sources", spec.sources.is_some()),
        ];
        if let Some((key, _)) = given.into_iter().find(|(_, on)| *on) {
            ctx.error(&["spec", key], message, None);
        }
        return Vec::new();
    }
    enum Given<'a> {
        Inline(&'a SourceSpec),
        Named(&'a [String]),
    }
    let given = exactly_one(
        ctx,
        &["spec"],
        "a pull or cron connector",
        vec![
            ("source", spec.source.as_ref().map(Given::Inline)),
            ("sources", spec.sources.as_deref().map(Given::Named)),
        ],
    );
    let list = match given {
        None => return Vec::new(),
        Some(Given::Inline(s)) => {
            return source(ctx, name, s, &["spec", "source"])
                .map(Arc::new)
                .into_iter()
                .collect();
        }
        Some(Given::Named(list)) => list,
    };
    let mut out = Vec::new();
    if list.is_empty() {
        ctx.error(&["spec", "sources"], "the list of sources is empty", None);
    }
    for (i, s) in list.iter().enumerate() {
        match names.sources.get(s) {
            Some(src) => out.push(src.clone()),
            None if names.broken.contains(&("Source".into(), s.clone())) => {}
            None => {
                let hint = did_you_mean(s, names.sources.keys().map(String::as_str));
                ctx.error(
                    &["spec", "sources", &i.to_string()],
                    format!("no Source named `{s}`"),
                    hint,
                );
            }
        }
    }
    out
}

/// The connector's FHIR version: what its own `fhirVersion`, its FHIR sink and its FHIR
/// sources say, which must agree with the first two (the engine converts no version to
/// another); R4 when none says.
fn version(
    ctx: &mut Ctx<'_>,
    spec: &ConnectorSpec,
    sources: &[Arc<Source>],
    strategy: Option<&Strategy>,
) -> FhirVersion {
    let mut said: Vec<(FhirVersion, Vec<String>, String)> = Vec::new();
    if let Some(v) = spec.fhir_version {
        said.push((v, segs(&["spec", "fhirVersion"]), "`fhirVersion`".into()));
    }
    let sink = match strategy {
        Some(Strategy::Cron(c)) => Some(&c.sink),
        Some(Strategy::Push(p)) => Some(&p.sink),
        Some(Strategy::Pull(_)) | None => None,
    };
    if let Some(SinkRef::Named(sink)) = sink
        && let Sink::Fhir(f) = &**sink
    {
        said.push((
            f.version,
            segs(&["spec", "sink"]),
            format!("the sink `{}`", f.name),
        ));
    }
    for (i, src) in sources.iter().enumerate() {
        if let Some(v) = src.fhir_version {
            let at = if spec.source.is_some() {
                segs(&["spec", "source", "fhirVersion"])
            } else {
                segs(&["spec", "sources", &i.to_string()])
            };
            said.push((v, at, format!("the source `{}`", src.name)));
        }
    }
    // The connector's own word and its sink anchor the version; sources of several versions
    // with neither (a pull fan-out) are served by version by the proxy.
    let anchor = said
        .iter()
        .position(|(_, at, _)| at[1] != "sources" && at[1] != "source");
    let Some((first, _, first_who)) = said.get(anchor.unwrap_or(0)).cloned() else {
        return FhirVersion::R4;
    };
    if anchor.is_some()
        && let Some((other, at, who)) = said.iter().find(|(v, _, _)| *v != first)
    {
        ctx.error_owned(
            at,
            format!(
                "{who} is FHIR {} but {first_who} is FHIR {}: the engine converts no FHIR version to another",
                other.name(),
                first.name()
            ),
            Some("read and write one FHIR version in a connector".into()),
        );
    }
    first
}

fn error_count(ctx: &Ctx<'_>) -> usize {
    ctx.diags
        .iter()
        .filter(|d| d.severity == crate::config::diagnostic::Severity::Error)
        .count()
}
