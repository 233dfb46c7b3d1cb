//! Search at run time: the caller's parameters checked against the declared ones and
//! normalised, the search fanned out to every source, and the searchset Bundle assembled.

use std::collections::BTreeMap;

use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::{PullRuntime, RequestInfo, Scope, SourceError, all_failed, mapping_failure};
use crate::model::PullResource;
use crate::model::fhir::outcome;
use crate::model::jsonpath::Query;
use crate::model::vocabulary::{NotFoundReading, ParamType, SourceType};
use crate::runtime::cache::Answer;
use crate::runtime::problem::{Problem, ProblemKind};
use crate::runtime::upstream::{Call, SourceClient};

/// Default `_count` of a search that declares none.
const DEFAULT_COUNT: i64 = 20;
/// Largest `_count` of a search that declares no `max`.
const MAX_COUNT: i64 = 1000;
/// Most upstream pages read for one answer.
const MAX_PAGES: u32 = 50;

/// A checked search: parameters with defaults applied (a JSON object), `_count`, `_offset`.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    pub params: Value,
    pub count: usize,
    pub offset: usize,
}

impl SearchQuery {
    /// The cache key: parameter order and defaults do not split entries.
    pub fn key(&self, resource_type: &str) -> String {
        format!("search|{resource_type}|{}", self.params)
    }
}

impl PullRuntime {
    /// Checks a caller's search parameters against the declared ones.
    pub fn parse_search(
        &self,
        res: &PullResource,
        raw: &[(String, String)],
    ) -> Result<SearchQuery, Problem> {
        let search = res.search.as_ref().ok_or_else(|| {
            Problem::new(
                ProblemKind::NotSupported,
                format!("`{}` has no search here", res.resource_type),
            )
        })?;
        let mut given: BTreeMap<&str, &str> = BTreeMap::new();
        for (k, v) in raw {
            if k == "_format" {
                continue;
            }
            if given.insert(k, v).is_some() {
                return Err(Problem::invalid(format!(
                    "search parameter `{k}` is given twice"
                )));
            }
        }
        let mut params = Map::new();
        for (name, spec) in &search.params {
            let value = match given.remove(name.as_str()) {
                Some(text) => Some(typed(name, spec.kind, spec.max, text)?),
                None => spec.default.clone(),
            };
            match value {
                Some(v) => {
                    params.insert(name.clone(), v);
                }
                None if spec.required => {
                    return Err(Problem::invalid(format!(
                        "search parameter `{name}` is required"
                    )));
                }
                None => {}
            }
        }
        let count_spec = search.params.get("_count");
        let max = count_spec.and_then(|p| p.max).unwrap_or(MAX_COUNT);
        let count = match given.remove("_count") {
            Some(text) => typed("_count", ParamType::Integer, None, text)?
                .as_i64()
                .unwrap_or(DEFAULT_COUNT)
                .min(max),
            None => params
                .get("_count")
                .and_then(Value::as_i64)
                .unwrap_or(DEFAULT_COUNT)
                .min(max),
        };
        let offset = match given.remove("_offset") {
            Some(text) => typed("_offset", ParamType::Integer, None, text)?
                .as_i64()
                .unwrap_or(0),
            None => 0,
        };
        if let Some(unknown) = given.keys().next() {
            let mut accepted: Vec<&str> = search.params.keys().map(String::as_str).collect();
            accepted.extend(["_count", "_offset"]);
            accepted.sort_unstable();
            accepted.dedup();
            return Err(Problem::invalid(format!(
                "unknown search parameter `{unknown}`; accepted: {}",
                accepted.join(", ")
            )));
        }
        if count < 0 || offset < 0 {
            return Err(Problem::invalid(
                "`_count` and `_offset` cannot be negative",
            ));
        }
        params.insert("_count".into(), Value::from(count));
        params.insert("_offset".into(), Value::from(offset));
        Ok(SearchQuery {
            params: Value::Object(params),
            count: count as usize,
            offset: offset as usize,
        })
    }

    /// A searchset Bundle from the sources of `scope`.
    pub async fn search(
        &self,
        res: &PullResource,
        q: &SearchQuery,
        info: &RequestInfo,
        scope: &Scope,
    ) -> Result<Answer, Problem> {
        let Some(search) = &res.search else {
            return Err(Problem::not_found("no search"));
        };
        let clients = self.clients_in(scope)?;
        let want = q.count + 1;
        let results = join_all(clients.iter().map(|client| async move {
            let call = match &search.request {
                Some(r) => crate::runtime::request::build(
                    &self.connector,
                    &client.source.url,
                    r,
                    &q.params,
                    None,
                )
                .map_err(|e| SourceError::Problem(e.into()))?,
                None => fhir_search_call(client, &res.resource_type, &q.params),
            };
            let pages = match client
                .pages(
                    call,
                    &search.records,
                    Some(want),
                    MAX_PAGES.min(client.source.max_pages),
                    &info.trace,
                    info.deadline,
                )
                .await
            {
                // A search's 404 is an error (a wrong path or base URL must show) unless the
                // source declares it "no data" or "not found".
                Err(f) if f.status == Some(404) => match client.source.statuses.not_found {
                    Some(NotFoundReading::Empty) => return Ok((Vec::new(), Some(0))),
                    Some(NotFoundReading::NotFound) => {
                        return Err(SourceError::Problem(Problem::not_found(f.to_string())));
                    }
                    Some(NotFoundReading::Error) | None => return Err(SourceError::Failed(f)),
                },
                other => other.map_err(SourceError::Failed)?,
            };
            let (records, reply, _) = pages;
            let total_query = search.total.clone().or_else(|| {
                (client.source.kind == SourceType::Fhir)
                    .then(|| Query::parse("$.total").ok())
                    .flatten()
            });
            let mut total = total_query.and_then(|t| {
                t.select(&reply.body, &reply.body)
                    .first()
                    .and_then(|v| v.as_u64())
            });
            if total.is_none() && records.len() < want && q.offset == 0 {
                total = Some(records.len() as u64);
            }
            // Mapped lazily: only the records the answer needs (one more than `_count`, to
            // know whether there is a next page), never every record a source sent.
            let mut mapped = Vec::new();
            for (i, r) in records.iter().enumerate() {
                if mapped.len() >= want {
                    break;
                }
                let resources = self
                    .connector
                    .map_records([(format!("$[{i}]"), r)], &q.params)
                    .map_err(|e| mapping_failure(client, &e))?;
                mapped.extend(
                    resources
                        .into_iter()
                        .map(|r| (client.source.name.as_str(), r)),
                );
            }
            Ok::<_, SourceError>((mapped, total))
        }))
        .await;

        let mut matches = Vec::new();
        let mut outcomes = Vec::new();
        let mut failures = Vec::new();
        let mut total = Some(0u64);
        for r in results {
            match r {
                Ok((resources, t)) => {
                    matches.extend(resources);
                    total = total.zip(t).map(|(a, b)| a + b);
                }
                Err(SourceError::Problem(p)) => return Err(p),
                Err(SourceError::Failed(f)) => {
                    outcomes.push(outcome("warning", f.kind.problem().code(), &f.to_string()));
                    failures.push(f);
                }
            }
        }
        if !failures.is_empty() && failures.len() == clients.len() {
            return Err(all_failed(&failures));
        }
        let more =
            matches.len() > q.count || total.is_some_and(|t| t > (q.offset + q.count) as u64);
        matches.truncate(q.count);
        let total = if failures.is_empty() { total } else { None };
        let matches = matches
            .into_iter()
            .map(|(source, r)| (self.full_url(info, source, &r), r))
            .collect();
        let bundle = searchset(info, q, matches, outcomes, total, more);
        Ok(Answer::new(
            200,
            serde_json::to_vec(&bundle).unwrap_or_default(),
            failures.is_empty(),
        ))
    }
}

fn typed(name: &str, kind: ParamType, max: Option<i64>, text: &str) -> Result<Value, Problem> {
    match kind {
        ParamType::Integer => {
            let n: i64 = text.trim().parse().map_err(|_| {
                Problem::invalid(format!("search parameter `{name}` must be an integer"))
            })?;
            if let Some(m) = max
                && n > m
                && name != "_count"
            {
                return Err(Problem::invalid(format!(
                    "search parameter `{name}` must be at most {m}"
                )));
            }
            Ok(Value::from(n))
        }
        ParamType::Date => {
            let bare = text.get(2..).filter(|_| {
                ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]
                    .iter()
                    .any(|p| text.starts_with(p))
            });
            crate::model::fhir::date_time(&Value::String(bare.unwrap_or(text).to_owned()))
                .map_err(|_| {
                    Problem::invalid(format!("search parameter `{name}` must be a date"))
                })?;
            Ok(Value::String(text.to_owned()))
        }
        ParamType::String | ParamType::Token => Ok(Value::String(text.to_owned())),
    }
}

fn fhir_search_call(client: &SourceClient, resource_type: &str, params: &Value) -> Call {
    let base = &client.source.url;
    let mut url = base.clone();
    url.set_path(&format!(
        "{}/{resource_type}",
        base.path().trim_end_matches('/')
    ));
    if let Value::Object(o) = params {
        let mut q = url.query_pairs_mut();
        for (k, v) in o {
            if k == "_offset" && v.as_i64() == Some(0) {
                continue;
            }
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            q.append_pair(k, &text);
        }
    }
    Call {
        method: Method::GET,
        url,
        headers: Vec::new(),
        body: None,
    }
}

/// A searchset Bundle of `matches`, each with its `fullUrl` when it has one.
fn searchset(
    info: &RequestInfo,
    q: &SearchQuery,
    matches: Vec<(Option<String>, Value)>,
    outcomes: Vec<Value>,
    total: Option<u64>,
    more: bool,
) -> Value {
    let mut links = vec![json!({"relation": "self", "url": info.self_url})];
    if more && let Ok(mut next) = url::Url::parse(&info.self_url) {
        crate::runtime::upstream::set_query(
            &mut next,
            &[(&"_offset".to_owned(), (q.offset + q.count).to_string())],
        );
        links.push(json!({"relation": "next", "url": next.as_str()}));
    }
    let mut entries: Vec<Value> = matches
        .into_iter()
        .map(|(full_url, r)| {
            let mut e = Map::new();
            if let Some(u) = full_url {
                e.insert("fullUrl".into(), Value::String(u));
            }
            e.insert("resource".into(), r);
            e.insert("search".into(), json!({"mode": "match"}));
            Value::Object(e)
        })
        .collect();
    entries.extend(
        outcomes
            .into_iter()
            .map(|o| json!({"resource": o, "search": {"mode": "outcome"}})),
    );
    let mut b = Map::new();
    b.insert("resourceType".into(), json!("Bundle"));
    b.insert("type".into(), json!("searchset"));
    if let Some(t) = total {
        b.insert("total".into(), json!(t));
    }
    b.insert("link".into(), Value::Array(links));
    if !entries.is_empty() {
        b.insert("entry".into(), Value::Array(entries));
    }
    Value::Object(b)
}
