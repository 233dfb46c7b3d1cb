//! Checks of a pull connector: its resource types, their search and read interactions and
//! parameters (token systems, string modifiers), their own mappings, batch fan-out and the
//! answer cache.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::context::{Ctx, segs};
use super::mappings::{OwnMapping, compile_mapping};
use super::source::{query, request};
use crate::config::spec::{ConnectorSpec, ParamSpec, ParamType, RequestSpec};
use crate::model::mapping::is_resource_type;
use crate::model::search_params::{MODIFIERS, token};
use crate::model::template::{Table, Templates};
use crate::model::vocabulary::FhirVersion;
use crate::model::{Cache, Param, Pull, PullResource, Read, Search};

/// Checks the `pull` section.
pub fn pull(
    ctx: &mut Ctx<'_>,
    spec: &ConnectorSpec,
    fhir_source: bool,
    templates: &mut Templates,
    tables: &BTreeMap<String, Table>,
    version: FhirVersion,
    own: &mut Vec<OwnMapping>,
) -> Option<Pull> {
    let p = spec.pull.as_ref()?;
    let resources = p
        .resources
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let out = pull_resource(ctx, i, r, fhir_source, templates, tables);
            own_mappings(ctx, i, r, templates, tables, version, own);
            out
        })
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
    Some(Pull {
        resources: resources.into_iter().flatten().collect(),
        batch: p.batch,
        cache,
    })
}

fn pull_resource(
    ctx: &mut Ctx<'_>,
    i: usize,
    r: &crate::config::spec::PullResourceSpec,
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
            param(ctx, &p_at, name, p);
            params.insert(
                name.clone(),
                Param {
                    kind: p.kind,
                    required: p.required,
                    default: p.default.clone(),
                    max: p.max,
                    description: p.description.clone(),
                    systems: p.systems.clone(),
                    other_system: p.other_systems.unwrap_or_default(),
                    modifiers: p.modifiers.clone(),
                },
            );
        }
        if let Some(req) = &s.request {
            token_templates(ctx, &at(&["search", "request"]), req, &s.params);
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
        mapping: None,
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
            Some((Some(records), request)) => Some(Read {
                request,
                records,
                mapping: None,
            }),
            Some(_) => return None,
            None => None,
        },
    })
}

/// Checks one declared search parameter at `p_at`.
fn param(ctx: &mut Ctx<'_>, p_at: &[&str], name: &str, p: &ParamSpec) {
    let sub = |k: &'static str| -> Vec<&str> { p_at.iter().copied().chain([k]).collect() };
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-:.".contains(c));
    if !valid {
        ctx.error(
            p_at,
            format!("`{name}` is not a search parameter name"),
            None,
        );
    }
    if name == MODIFIERS {
        ctx.error(
            p_at,
            format!("`{MODIFIERS}` is where templates read the modifiers given: not a parameter"),
            None,
        );
    }
    if p.max.is_some() && p.kind != ParamType::Integer {
        ctx.error(p_at, "`max` is for parameters of `type: integer`", None);
    }
    if p.kind == ParamType::Integer && p.default.as_ref().is_some_and(|d| !d.is_i64()) {
        ctx.error(
            &sub("default"),
            "the default of an integer parameter must be an integer",
            None,
        );
    }
    if p.kind != ParamType::Token && !p.systems.is_empty() {
        ctx.error(
            &sub("systems"),
            "`systems` is for parameters of `type: token`",
            None,
        );
    }
    if p.other_systems.is_some() && p.systems.is_empty() {
        ctx.error(
            &sub("otherSystems"),
            "`otherSystems` says what a system outside `systems` gets: declare `systems`",
            None,
        );
    }
    for (i, system) in p.systems.iter().enumerate() {
        if system.is_empty()
            || system.contains(['|', ',', '\\'])
            || system.contains(char::is_whitespace)
        {
            let idx = i.to_string();
            let at: Vec<&str> = p_at
                .iter()
                .copied()
                .chain(["systems", idx.as_str()])
                .collect();
            ctx.error(
                &at,
                format!("`{system}` is not a code system URI"),
                Some("a system is a URI such as `http://snomed.info/sct`".into()),
            );
        }
    }
    if !p.modifiers.is_empty() && p.kind != ParamType::String {
        ctx.error(
            &sub("modifiers"),
            "`modifiers` (`exact`, `contains`) are for parameters of `type: string`",
            None,
        );
    }
    if p.kind == ParamType::Token
        && let Some(d) = &p.default
    {
        let ok = d.as_str().is_some_and(|t| token(t).is_ok());
        if !ok {
            ctx.error(
                &sub("default"),
                "the default of a token parameter is a token: `system|code`, `|code` or `code`",
                None,
            );
        }
    }
}

/// A token parameter is an object in templates: `{{params.NAME}}` alone would fail at every
/// request, so it is an error here.
fn token_templates(
    ctx: &mut Ctx<'_>,
    at: &[&str],
    req: &RequestSpec,
    params: &BTreeMap<String, ParamSpec>,
) {
    let tokens: Vec<&str> = params
        .iter()
        .filter(|(_, p)| p.kind == ParamType::Token)
        .map(|(n, _)| n.as_str())
        .collect();
    if tokens.is_empty() {
        return;
    }
    let mut texts: Vec<(Vec<String>, &str)> = vec![(segs(&[at, &["path"]].concat()), &req.path)];
    for (k, v) in &req.query {
        texts.push((segs(&[at, &["query", k.as_str()]].concat()), v));
    }
    for (k, v) in &req.headers {
        texts.push((segs(&[at, &["headers", k.as_str()]].concat()), v));
    }
    for (where_, text) in texts {
        for name in &tokens {
            let bare = format!("params.{name}");
            let found = text.split("{{").skip(1).any(|inside| {
                inside
                    .split("}}")
                    .next()
                    .is_some_and(|expr| expr.trim() == bare)
            });
            if found {
                ctx.error_owned(
                    &where_,
                    format!(
                        "`{bare}` is a token parameter: an object with `system`, `code` and `text`"
                    ),
                    Some(format!(
                        "write `{{{{{bare}.code}}}}` (and `{{{{{bare}.system}}}}`), or `{{{{{bare}.text}}}}` for the value as the caller wrote it"
                    )),
                );
            }
        }
    }
}

/// Compiles a resource type's own mapping and its read's, each checked against the FHIR
/// version and this one type.
fn own_mappings(
    ctx: &mut Ctx<'_>,
    i: usize,
    r: &crate::config::spec::PullResourceSpec,
    templates: &mut Templates,
    tables: &BTreeMap<String, Table>,
    version: FhirVersion,
    own: &mut Vec<OwnMapping>,
) {
    let idx = i.to_string();
    let given = [
        (
            false,
            r.mapping.is_some(),
            segs(&["spec", "pull", "resources", &idx, "mapping"]),
        ),
        (
            true,
            r.read.as_ref().is_some_and(|rd| rd.mapping.is_some()),
            segs(&["spec", "pull", "resources", &idx, "read", "mapping"]),
        ),
    ];
    for (read, on, at) in given {
        if !on {
            continue;
        }
        let Some(root) = compile_mapping(ctx, &at, templates, tables) else {
            continue;
        };
        super::fhir_check::check(
            ctx,
            &root,
            &at,
            version,
            &[r.resource_type.as_str()],
            tables,
        );
        own.push(OwnMapping {
            resource_type: r.resource_type.clone(),
            read,
            root,
        });
    }
}
