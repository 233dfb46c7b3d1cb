//! Checks of a pull connector: its resource types, their search and read interactions and
//! parameters, batch fan-out and the answer cache.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::context::Ctx;
use super::source::{query, request};
use crate::config::spec::{ConnectorSpec, ParamType};
use crate::model::mapping::is_resource_type;
use crate::model::template::{Table, Templates};
use crate::model::{Cache, Param, Pull, PullResource, Read, Search};

/// Checks the `pull` section.
pub fn pull(
    ctx: &mut Ctx<'_>,
    spec: &ConnectorSpec,
    fhir_source: bool,
    templates: &mut Templates,
    tables: &BTreeMap<String, Table>,
) -> Option<Pull> {
    let p = spec.pull.as_ref()?;
    let resources = p
        .resources
        .iter()
        .enumerate()
        .map(|(i, r)| pull_resource(ctx, i, r, fhir_source, templates, tables))
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
