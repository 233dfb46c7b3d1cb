//! Checks of a connector: strategy and its sections, references to sources and sinks, pull
//! routes, push endpoint, schedule, mapping, tables and the definition's tests.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::context::{Ctx, segs};
use super::source::{exactly_one, query, request, source};
use crate::diagnostic::did_you_mean;
use crate::mapping::{Compiler, Mapping, is_resource_type};
use crate::model::{
    Cache, Connector, Cron, CronRead, Param, Pull, PullResource, Push, PushAuth, Read, Schedule,
    Search, Secret, Sink, SinkRef, Source, Strategy, Test,
};
use crate::spec::{ConnectorDoc, ConnectorSpec, ParamType, PushMode, SourceType, Strategy as S};
use crate::template::{Table, Templates};

/// The named documents a connector may refer to.
pub struct Names<'a> {
    pub sources: &'a BTreeMap<String, Arc<Source>>,
    pub sinks: &'a BTreeMap<String, Arc<Sink>>,
    /// Documents that exist but failed their schema check.
    pub broken: &'a HashSet<(String, String)>,
    /// Read and check the definitions' test files (not needed by `map`, `serve`, `run`).
    pub tests: bool,
}

/// Checks and compiles one connector.
pub fn connector(
    ctx: &mut Ctx<'_>,
    doc: &ConnectorDoc,
    names: &Names<'_>,
    used: &mut HashSet<String>,
) -> Option<Connector> {
    let errors = ctx.diags.len();
    let spec = &doc.spec;
    let name = doc.metadata.name.as_str();
    sections(ctx, spec);

    let tables: Arc<BTreeMap<String, Table>> = Arc::new(
        spec.tables
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    Table {
                        map: t.map.clone(),
                        default: t.default.clone(),
                    },
                )
            })
            .collect(),
    );
    let mut templates = Templates::new(tables.clone());

    let sources = sources(ctx, spec, name, names, used);
    let mapping_root = spec.mapping.as_ref().map(|_| {
        let at = segs(&["spec", "mapping"]);
        let node = ctx.doc.node.descend(&at).clone();
        let mut compiler = Compiler {
            templates: &mut templates,
            tables: &tables,
            errors: Vec::new(),
        };
        let expr = compiler.compile(&node, &at);
        for e in compiler.errors {
            let loc = crate::diagnostic::Location {
                line: e.line,
                column: e.column,
                path: crate::yaml::display_path(&e.at),
            };
            ctx.diags.push(
                crate::diagnostic::Diagnostic::error(&ctx.doc.file, &loc, e.message)
                    .with_hint(e.hint),
            );
        }
        expr
    });

    let fhir_source = !sources.is_empty() && sources.iter().all(|s| s.kind == SourceType::Fhir);
    let strategy = match spec.strategy {
        S::Pull => spec.pull.as_ref().map(|p| {
            let resources = p
                .resources
                .iter()
                .enumerate()
                .map(|(i, r)| pull_resource(ctx, i, r, fhir_source, &mut templates, &tables))
                .collect::<Vec<_>>();
            let mut seen = HashSet::new();
            for (i, r) in p.resources.iter().enumerate() {
                if !seen.insert(r.resource_type.as_str()) {
                    ctx.error(
                        &["spec", "pull", "resources", &i.to_string(), "type"],
                        format!("`{}` is listed twice", r.resource_type),
                        None,
                    );
                }
            }
            if p.batch && !fhir_source {
                ctx.error(
                    &["spec", "pull", "batch"],
                    "batch Bundles are fanned out to FHIR sources only",
                    Some("give the connector sources of `type: fhir`".into()),
                );
            }
            let cache = spec.cache.as_ref().map(|c| Cache {
                ttl: ctx.duration(
                    &["spec", "cache", "ttl"],
                    Some(&c.ttl),
                    Duration::from_secs(60),
                ),
                max_entries: c.max_entries.unwrap_or(10_000),
                max_bytes: ctx.size(
                    &["spec", "cache", "maxBytes"],
                    c.max_bytes.as_deref(),
                    64 << 20,
                ),
                stale_if_error: ctx.duration(
                    &["spec", "cache", "staleIfError"],
                    c.stale_if_error.as_deref(),
                    Duration::ZERO,
                ),
                allow_no_cache: c.allow_no_cache.unwrap_or(true),
            });
            Strategy::Pull(Pull {
                resources: resources.into_iter().flatten().collect(),
                batch: p.batch,
                cache,
            })
        }),
        S::Push => spec.push.as_ref().and_then(|p| {
            let auth = push_auth(ctx, &p.auth)?;
            let records = query(
                ctx,
                &["spec", "push", "records"],
                p.records.as_deref().unwrap_or("$"),
            )?;
            Some(Strategy::Push(Push {
                path: p.path.clone().unwrap_or_else(|| format!("/push/{name}")),
                auth,
                max_body: ctx.size(&["spec", "push", "maxBody"], p.max_body.as_deref(), 1 << 20),
                mode: p.mode.unwrap_or(PushMode::Queued),
                records,
                idempotency_header: p
                    .idempotency_header
                    .clone()
                    .unwrap_or_else(|| "Idempotency-Key".into()),
                dedup_window: ctx.duration(
                    &["spec", "push", "dedupWindow"],
                    p.dedup_window.as_deref(),
                    Duration::from_secs(86_400),
                ),
                sink: sink_ref(ctx, spec, names)?,
                identifier_system: spec
                    .write
                    .as_ref()
                    .and_then(|w| w.identifier_system.clone()),
            }))
        }),
        S::Cron => cron(ctx, spec, names, fhir_source, &mut templates, &tables).map(Strategy::Cron),
    };

    let tests = if names.tests {
        tests(ctx, spec)
    } else {
        Vec::new()
    };
    let vars = Value::Object(
        spec.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    let strategy = strategy?;
    let templates = Arc::new(templates);
    (ctx.diags.len() == errors).then(|| Connector {
        name: name.to_owned(),
        fingerprint: String::new(),
        description: doc.metadata.description.clone(),
        labels: doc.metadata.labels.clone(),
        file: ctx.doc.file.clone(),
        strategy,
        sources,
        vars,
        split_bundles: spec.split_bundles,
        mapping: mapping_root.map(|root| Mapping {
            root,
            templates: templates.clone(),
            tables: tables.clone(),
        }),
        templates,
        tests,
    })
}

/// Sections that belong to another strategy are errors; required ones must be there.
fn sections(ctx: &mut Ctx<'_>, spec: &ConnectorSpec) {
    let present = [
        ("pull", spec.pull.is_some(), &[S::Pull][..]),
        ("cache", spec.cache.is_some(), &[S::Pull][..]),
        ("push", spec.push.is_some(), &[S::Push][..]),
        ("schedule", spec.schedule.is_some(), &[S::Cron][..]),
        ("fetch", spec.fetch.is_some(), &[S::Cron][..]),
        ("sync", spec.sync.is_some(), &[S::Cron][..]),
        ("import", spec.import.is_some(), &[S::Cron][..]),
        ("sink", spec.sink.is_some(), &[S::Cron, S::Push][..]),
        ("write", spec.write.is_some(), &[S::Cron, S::Push][..]),
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
    let Some(which) = exactly_one(
        ctx,
        &["spec"],
        "a pull or cron connector",
        &[
            ("source", spec.source.is_some()),
            ("sources", spec.sources.is_some()),
        ],
    ) else {
        return Vec::new();
    };
    if which == 0 {
        return spec
            .source
            .as_ref()
            .and_then(|s| source(ctx, name, s, &["spec", "source"]))
            .map(Arc::new)
            .into_iter()
            .collect();
    }
    let mut out = Vec::new();
    let list = spec.sources.as_deref().unwrap_or_default();
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

fn sink_ref(ctx: &mut Ctx<'_>, spec: &ConnectorSpec, names: &Names<'_>) -> Option<SinkRef> {
    match &spec.sink {
        None => Some(SinkRef::Default),
        Some(s) => match names.sinks.get(s) {
            Some(sink) => Some(SinkRef::Named(sink.clone())),
            None if names.broken.contains(&("Sink".into(), s.clone())) => None,
            None => {
                let hint = did_you_mean(s, names.sinks.keys().map(String::as_str));
                ctx.error(&["spec", "sink"], format!("no Sink named `{s}`"), hint);
                None
            }
        },
    }
}

fn pull_resource(
    ctx: &mut Ctx<'_>,
    i: usize,
    r: &crate::spec::PullResourceSpec,
    fhir_source: bool,
    templates: &mut Templates,
    tables: &BTreeMap<String, Table>,
) -> Option<PullResource> {
    let idx = i.to_string();
    let base = ["spec", "pull", "resources", idx.as_str()];
    let at = |more: &[&'static str]| -> Vec<&str> {
        base.iter().copied().chain(more.iter().copied()).collect()
    };
    if !is_resource_type(&r.resource_type) {
        ctx.error(
            &at(&["type"]),
            format!("`{}` is not a FHIR resource type name", r.resource_type),
            None,
        );
    }
    if r.search.is_none() && r.read.is_none() {
        ctx.error(
            &at(&[]),
            format!("`{}` needs `search`, `read` or both", r.resource_type),
            None,
        );
    }
    let search = r.search.as_ref().map(|s| {
        let request = match &s.request {
            Some(req) => request(ctx, &at(&["search", "request"]), req, templates, tables),
            None if !fhir_source => {
                ctx.error(
                    &at(&["search"]),
                    "a search over a JSON source needs `request`",
                    None,
                );
                None
            }
            None => None,
        };
        let default_records = if fhir_source {
            "$.entry[*].resource"
        } else {
            "$"
        };
        let records = query(
            ctx,
            &at(&["search", "records"]),
            s.records.as_deref().unwrap_or(default_records),
        );
        let total = s
            .total
            .as_ref()
            .and_then(|t| query(ctx, &at(&["search", "total"]), t));
        let mut params = BTreeMap::new();
        for (name, p) in &s.params {
            let p_at: Vec<&str> = at(&["search", "params"])
                .into_iter()
                .chain([name.as_str()])
                .collect();
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-:.".contains(c));
            if !valid {
                ctx.error(
                    &p_at,
                    format!("`{name}` is not a search parameter name"),
                    None,
                );
            }
            if p.max.is_some() && p.kind != ParamType::Integer {
                ctx.error(&p_at, "`max` is for parameters of `type: integer`", None);
            }
            if p.kind == ParamType::Integer && p.default.as_ref().is_some_and(|d| !d.is_i64()) {
                let d_at: Vec<&str> = p_at.iter().copied().chain(["default"]).collect();
                ctx.error(
                    &d_at,
                    "the default of an integer parameter must be an integer",
                    None,
                );
            }
            params.insert(
                name.clone(),
                Param {
                    kind: p.kind,
                    required: p.required,
                    default: p.default.clone(),
                    max: p.max,
                    description: p.description.clone(),
                },
            );
        }
        (records, total, params, request)
    });
    let read = r.read.as_ref().map(|rd| {
        let request = match &rd.request {
            Some(req) => request(ctx, &at(&["read", "request"]), req, templates, tables),
            None if !fhir_source => {
                ctx.error(
                    &at(&["read"]),
                    "a read over a JSON source needs `request`",
                    None,
                );
                None
            }
            None => None,
        };
        (
            query(
                ctx,
                &at(&["read", "records"]),
                rd.records.as_deref().unwrap_or("$"),
            ),
            request,
        )
    });
    Some(PullResource {
        resource_type: r.resource_type.clone(),
        search: match search {
            Some((Some(records), total, params, request)) => Some(Search {
                params,
                request,
                records,
                total,
            }),
            Some(_) => return None,
            None => None,
        },
        read: match read {
            Some((Some(records), request)) => Some(Read { request, records }),
            Some(_) => return None,
            None => None,
        },
    })
}

fn push_auth(ctx: &mut Ctx<'_>, a: &crate::spec::PushAuthSpec) -> Option<PushAuth> {
    let at = ["spec", "push", "auth"];
    let which = exactly_one(
        ctx,
        &at,
        "push auth",
        &[
            ("hmac", a.hmac.is_some()),
            ("bearer", a.bearer.is_some()),
            ("apiKey", a.api_key.is_some()),
        ],
    )?;
    Some(match which {
        0 => {
            let h = a.hmac.as_ref()?;
            if !ctx.unresolved(&["spec", "push", "auth", "hmac", "secret"]) && h.secret.len() < 16 {
                ctx.error(
                    &["spec", "push", "auth", "hmac", "secret"],
                    "an HMAC secret needs at least 16 characters",
                    None,
                );
            }
            PushAuth::Hmac {
                secret: Secret(h.secret.clone()),
                header: h.header.clone().unwrap_or_else(|| "X-Signature".into()),
                timestamp_header: h
                    .timestamp_header
                    .clone()
                    .unwrap_or_else(|| "X-Timestamp".into()),
                tolerance: ctx.duration(
                    &["spec", "push", "auth", "hmac", "tolerance"],
                    h.tolerance.as_deref(),
                    Duration::from_secs(300),
                ),
            }
        }
        1 => PushAuth::Bearer(Secret(a.bearer.as_ref()?.token.clone())),
        _ => {
            let k = a.api_key.as_ref()?;
            PushAuth::ApiKey {
                header: k.header.clone(),
                value: Secret(k.value.clone()),
            }
        }
    })
}

fn cron(
    ctx: &mut Ctx<'_>,
    spec: &ConnectorSpec,
    names: &Names<'_>,
    fhir_source: bool,
    templates: &mut Templates,
    tables: &BTreeMap<String, Table>,
) -> Option<Cron> {
    let s = spec.schedule.as_ref()?;
    let schedule = schedule(ctx, &s.cron, s.time_zone.as_deref());
    let which = exactly_one(
        ctx,
        &["spec"],
        "a cron connector",
        &[
            ("fetch", spec.fetch.is_some()),
            ("sync", spec.sync.is_some()),
            ("import", spec.import.is_some()),
        ],
    );
    let read = match which? {
        0 => {
            let f = spec.fetch.as_ref()?;
            let request = request(
                ctx,
                &["spec", "fetch", "request"],
                &f.request,
                templates,
                tables,
            );
            let records = query(ctx, &["spec", "fetch", "records"], &f.records);
            let incremental = match &f.incremental {
                Some(i) => Some((
                    query(ctx, &["spec", "fetch", "incremental", "cursor"], &i.cursor)?,
                    i.param.clone(),
                )),
                None => None,
            };
            CronRead::Fetch {
                request: request?,
                records: records?,
                incremental,
                each: f.each.clone(),
            }
        }
        2 => CronRead::Import(super::guide::import(ctx, spec.import.as_ref()?)?),
        _ => {
            let y = spec.sync.as_ref()?;
            if !fhir_source {
                ctx.error(
                    &["spec", "sync"],
                    "a sync reads FHIR sources only",
                    Some("give the connector a source of `type: fhir`".into()),
                );
            }
            for (i, t) in y.resource_types.iter().enumerate() {
                if !is_resource_type(t) {
                    ctx.error(
                        &["spec", "sync", "resourceTypes", &i.to_string()],
                        format!("`{t}` is not a FHIR resource type name"),
                        None,
                    );
                }
            }
            CronRead::Sync {
                resource_types: y.resource_types.clone(),
                incremental: y.incremental,
                page_size: y.page_size.unwrap_or(100),
            }
        }
    };
    let sink = sink_ref(ctx, spec, names)?;
    let write = spec.write.as_ref();
    Some(Cron {
        schedule: schedule?,
        read,
        sink,
        identifier_system: write.and_then(|w| w.identifier_system.clone()),
        only_changed: write.is_some_and(|w| w.only_changed),
    })
}

/// Checks a cron expression (5 fields, or 6 with seconds) and its time zone, reporting both.
pub fn schedule(ctx: &mut Ctx<'_>, cron: &str, tz: Option<&str>) -> Option<Schedule> {
    let with_seconds = match cron_with_seconds(cron) {
        Ok(c) => Some(c),
        Err(message) => {
            ctx.error(&["spec", "schedule", "cron"], message, None);
            None
        }
    };
    let time_zone = match tz {
        None => Some(chrono_tz::UTC),
        Some(name) => match chrono_tz::Tz::from_str(name) {
            Ok(z) => Some(z),
            Err(_) => {
                let hint = did_you_mean(name, chrono_tz::TZ_VARIANTS.iter().map(|z| z.name()));
                ctx.error(
                    &["spec", "schedule", "timeZone"],
                    format!("`{name}` is not an IANA time zone"),
                    hint.or(Some("e.g. `Europe/Madrid`, `UTC`".into())),
                );
                None
            }
        },
    };
    Some(Schedule {
        cron: cron.trim().to_owned(),
        cron_with_seconds: with_seconds?,
        time_zone: time_zone?,
    })
}

/// The 6-field form of a 5- or 6-field cron expression, or what is wrong with it.
pub fn cron_with_seconds(cron: &str) -> Result<String, String> {
    const FIELDS: [(&str, u32, u32); 6] = [
        ("second", 0, 59),
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day of month", 1, 31),
        ("month", 1, 12),
        ("day of week", 0, 7),
    ];
    let fields: Vec<&str> = cron.split_whitespace().collect();
    let full = match fields.len() {
        5 => std::iter::once("0")
            .chain(fields.iter().copied())
            .collect::<Vec<_>>(),
        6 => fields.clone(),
        n => {
            return Err(format!(
                "`{cron}` has {n} fields; cron takes 5 (minute hour day month weekday) or 6 (seconds first)"
            ));
        }
    };
    for (field, (name, lo, hi)) in full.iter().zip(FIELDS) {
        for part in field.split(',') {
            let (range, step) = part
                .split_once('/')
                .map_or((part, None), |(r, s)| (r, Some(s)));
            if let Some(step) = step
                && step.parse::<u32>().is_ok_and(|s| s == 0)
            {
                return Err(format!(
                    "`{cron}`: the {name} step `{part}` must be at least 1"
                ));
            }
            for n in range.split('-').filter_map(|x| x.parse::<u32>().ok()) {
                if n < lo || n > hi {
                    return Err(format!("`{cron}`: {name} `{n}` is outside {lo}-{hi}"));
                }
            }
        }
    }
    let with_seconds = full.join(" ");
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(&with_seconds)
        .map_err(|e| format!("`{cron}` is not a valid cron expression: {e}"))?;
    Ok(with_seconds)
}

fn tests(ctx: &mut Ctx<'_>, spec: &ConnectorSpec) -> Vec<Test> {
    let dir = ctx
        .doc
        .file
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for (i, t) in spec.tests.iter().enumerate() {
        let idx = i.to_string();
        let at = ["spec", "tests", idx.as_str()];
        if !names.insert(t.name.clone()) {
            ctx.error(
                &["spec", "tests", &idx, "name"],
                format!("test name `{}` is used twice", t.name),
                None,
            );
        }
        let input = match exactly_one(
            ctx,
            &at,
            "a test",
            &[
                ("input", t.input.is_some()),
                ("inputFile", t.input_file.is_some()),
            ],
        ) {
            Some(0) => t.input.clone(),
            Some(_) => json_file(
                ctx,
                &["spec", "tests", &idx, "inputFile"],
                &dir,
                t.input_file.as_deref().unwrap_or_default(),
            ),
            None => None,
        };
        let expect = match exactly_one(
            ctx,
            &at,
            "a test",
            &[
                ("expect", t.expect.is_some()),
                ("expectFile", t.expect_file.is_some()),
                ("expectError", t.expect_error.is_some()),
            ],
        ) {
            Some(0) => t.expect.clone(),
            Some(1) => json_file(
                ctx,
                &["spec", "tests", &idx, "expectFile"],
                &dir,
                t.expect_file.as_deref().unwrap_or_default(),
            ),
            _ => None,
        };
        if let Some(input) = input {
            out.push(Test {
                name: t.name.clone(),
                at: segs(&at),
                input,
                params: Value::Object(
                    t.params
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
                expect,
                match_mode: t.match_mode,
                expect_error: t.expect_error.clone(),
            });
        }
    }
    out
}

fn json_file(ctx: &mut Ctx<'_>, at: &[&str], dir: &std::path::Path, name: &str) -> Option<Value> {
    let path = dir.join(name);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            ctx.error(
                at,
                format!("cannot read `{name}`: {}", crate::load::io_reason(&e)),
                Some(format!("paths are relative to {}", dir.display())),
            );
            return None;
        }
    };
    match serde_json::from_str(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            ctx.error(at, format!("`{name}` is not JSON: {e}"), None);
            None
        }
    }
}
