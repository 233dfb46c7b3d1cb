//! Pull connectors at run time: caller parameters checked and normalised, upstream calls built
//! from the definition's templates (caller values encoded so that they cannot change the host,
//! the path segments or the headers), fanned out to every source in parallel, and the answers
//! mapped and assembled into FHIR: searchset Bundles, resources and batch responses. A failing
//! source gives a partial answer with an `OperationOutcome` naming it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::{Method, StatusCode};
use futures_util::future::join_all;
use serde_json::{Map, Value, json};

use crate::cache::{Answer, AnswerCache};
use crate::http::outcome::{Problem, outcome};
use crate::jsonpath::Query;
use crate::model::{Connector, Pull, PullResource, Strategy};
use crate::spec::{ParamType, SourceType};
use crate::upstream::{Call, Failure, SourceClient, Upstreams};

/// Default `_count` of a search that declares none.
const DEFAULT_COUNT: i64 = 20;
/// Largest `_count` of a search that declares no `max`.
const MAX_COUNT: i64 = 1000;
/// Most upstream pages read for one answer.
const MAX_PAGES: u32 = 50;

/// Where a request came from, for links in answers and for the upstream request id.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    pub request_id: String,
    /// Public base URL of the engine (`http://host`, or as forwarded by a proxy).
    pub base: String,
    /// The URL of this request as the caller sent it.
    pub self_url: String,
}

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

/// A pull connector ready to answer.
pub struct PullRuntime {
    pub connector: Arc<Connector>,
    pub cache: Option<AnswerCache>,
    clients: Vec<Arc<SourceClient>>,
}

impl PullRuntime {
    pub fn new(connector: Arc<Connector>, upstreams: &Upstreams) -> Option<PullRuntime> {
        let Strategy::Pull(pull) = &connector.strategy else {
            return None;
        };
        let cache = pull.cache.as_ref().map(AnswerCache::new);
        let clients = connector
            .sources
            .iter()
            .filter_map(|s| upstreams.get(&s.name).cloned())
            .collect();
        Some(PullRuntime {
            connector,
            cache,
            clients,
        })
    }

    /// The resource types this connector serves.
    pub fn resource_types(&self) -> std::collections::HashSet<String> {
        self.pull()
            .map(|p| {
                p.resources
                    .iter()
                    .map(|r| r.resource_type.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// True when callers may skip the cache with `Cache-Control: no-cache`.
    pub fn cache_allows_no_cache(&self) -> bool {
        self.pull()
            .and_then(|p| p.cache.as_ref())
            .is_some_and(|c| c.allow_no_cache)
    }

    fn pull(&self) -> Option<&Pull> {
        match &self.connector.strategy {
            Strategy::Pull(p) => Some(p),
            _ => None,
        }
    }

    /// The declared resource type.
    pub fn resource(&self, resource_type: &str) -> Result<&PullResource, Problem> {
        self.pull()
            .and_then(|p| {
                p.resources
                    .iter()
                    .find(|r| r.resource_type == resource_type)
            })
            .ok_or_else(|| {
                Problem::not_found(format!(
                    "connector `{}` serves no `{resource_type}`",
                    self.connector.name
                ))
            })
    }

    /// Checks a caller's search parameters against the declared ones.
    pub fn parse_search(
        &self,
        res: &PullResource,
        raw: &[(String, String)],
    ) -> Result<SearchQuery, Problem> {
        let search = res.search.as_ref().ok_or_else(|| {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "not-supported",
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

    /// A searchset Bundle from every source.
    pub async fn search(
        &self,
        res: &PullResource,
        q: &SearchQuery,
        info: &RequestInfo,
    ) -> Result<Answer, Problem> {
        let Some(search) = &res.search else {
            return Err(Problem::not_found("no search"));
        };
        let want = q.count + 1;
        let results = join_all(self.clients.iter().map(|client| async move {
            let call = match &search.request {
                Some(r) => {
                    crate::request::build(&self.connector, &client.source.url, r, &q.params, None)
                        .map_err(|m| SourceError::Problem(Problem::invalid(m)))?
                }
                None => fhir_search_call(client, &res.resource_type, &q.params),
            };
            let pages = match client
                .pages(
                    call,
                    &search.records,
                    Some(want),
                    MAX_PAGES,
                    &info.request_id,
                )
                .await
            {
                Err(f) if f.status == Some(404) && client.source.kind == SourceType::Json => {
                    return Ok((Vec::new(), Some(0)));
                }
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
            let mapped = self
                .connector
                .map_records(
                    records
                        .iter()
                        .enumerate()
                        .map(|(i, r)| (format!("$[{i}]"), r)),
                    &q.params,
                )
                .map_err(|e| {
                    SourceError::Failed(Failure {
                        source: client.source.name.clone(),
                        reason: format!("mapping failed: {e}"),
                        timeout: false,
                        status: None,
                    })
                })?;
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
                    outcomes.push(outcome(
                        "warning",
                        if f.timeout { "timeout" } else { "transient" },
                        &f.to_string(),
                    ));
                    failures.push(f);
                }
            }
        }
        if !failures.is_empty() && failures.len() == self.clients.len() {
            return Err(all_failed(&failures));
        }
        let more =
            matches.len() > q.count || total.is_some_and(|t| t > (q.offset + q.count) as u64);
        matches.truncate(q.count);
        let total = if failures.is_empty() { total } else { None };
        let bundle = searchset(
            &self.connector.name,
            info,
            q,
            matches,
            outcomes,
            total,
            more,
        );
        Ok(Answer::new(
            200,
            serde_json::to_vec(&bundle).unwrap_or_default(),
            failures.is_empty(),
        ))
    }

    /// The resource `Type/id` from the first source that has it.
    pub async fn read(
        &self,
        res: &PullResource,
        id: &str,
        info: &RequestInfo,
    ) -> Result<Answer, Problem> {
        let Some(read) = &res.read else {
            return Err(Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "not-supported",
                format!("`{}` has no read here", res.resource_type),
            ));
        };
        let params = json!({});
        let results = join_all(self.clients.iter().map(|client| {
            let params = &params;
            async move {
                let call = match &read.request {
                    Some(r) => crate::request::build(
                        &self.connector,
                        &client.source.url,
                        r,
                        params,
                        Some(id),
                    )
                    .map_err(|m| SourceError::Problem(Problem::invalid(m)))?,
                    None => fhir_read_call(client, &res.resource_type, id),
                };
                let reply = match client.send(&call, &info.request_id).await {
                    Ok(r) if r.status == 404 || r.status == 410 => return Ok(None),
                    Ok(r) if r.status >= 400 => {
                        return Err(SourceError::Failed(status_failure(client, &r)));
                    }
                    Ok(r) => r,
                    Err(f) => return Err(SourceError::Failed(f)),
                };
                let Some(record) = read
                    .records
                    .select(&reply.body, &reply.body)
                    .into_iter()
                    .next()
                else {
                    return Ok(None);
                };
                let mapped = self
                    .connector
                    .map_records([("$".to_owned(), record)], params)
                    .map_err(|e| {
                        SourceError::Failed(Failure {
                            source: client.source.name.clone(),
                            reason: format!("mapping failed: {e}"),
                            timeout: false,
                            status: None,
                        })
                    })?;
                let pick = mapped
                    .iter()
                    .position(|r| r["resourceType"] == res.resource_type.as_str() && r["id"] == id)
                    .or_else(|| {
                        mapped
                            .iter()
                            .position(|r| r["resourceType"] == res.resource_type.as_str())
                    });
                Ok(pick.map(|i| mapped[i].clone()))
            }
        }))
        .await;
        let mut failures = Vec::new();
        for r in results {
            match r {
                Ok(Some(resource)) => {
                    return Ok(Answer::new(
                        200,
                        serde_json::to_vec(&resource).unwrap_or_default(),
                        true,
                    ));
                }
                Ok(None) => {}
                Err(SourceError::Problem(p)) => return Err(p),
                Err(SourceError::Failed(f)) => failures.push(f),
            }
        }
        if !failures.is_empty() {
            return Err(all_failed(&failures));
        }
        let p = Problem::not_found(format!("{}/{id} is not known", res.resource_type));
        Ok(Answer::new(
            404,
            serde_json::to_vec(&p.outcome()).unwrap_or_default(),
            true,
        ))
    }

    /// A batch Bundle sent to every FHIR source, the answers merged entry by entry.
    pub async fn batch(&self, bundle: &Value, info: &RequestInfo) -> Result<Value, Problem> {
        if !self.pull().is_some_and(|p| p.batch) {
            return Err(Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "not-supported",
                format!("connector `{}` takes no batch", self.connector.name),
            ));
        }
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle")
            || bundle.get("type").and_then(Value::as_str) != Some("batch")
        {
            return Err(Problem::invalid(
                "the body must be a Bundle of type `batch`",
            ));
        }
        let requests = bundle
            .get("entry")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let results = join_all(self.clients.iter().map(|client| async move {
            let call = Call {
                method: Method::POST,
                url: client.source.url.clone(),
                headers: Vec::new(),
                body: Some(bundle.clone()),
            };
            let reply = client.send(&call, &info.request_id).await?;
            if reply.status >= 400 {
                return Err(status_failure(client, &reply));
            }
            let entries = reply
                .body
                .get("entry")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if entries.len() != requests {
                return Err(Failure {
                    source: client.source.name.clone(),
                    reason: format!("answered {} entries for {requests} requests", entries.len()),
                    timeout: false,
                    status: Some(reply.status),
                });
            }
            Ok(entries)
        }))
        .await;
        let mut answers = Vec::new();
        let mut failures = Vec::new();
        for r in results {
            match r {
                Ok(entries) => answers.push(entries),
                Err(f) => failures.push(f),
            }
        }
        if answers.is_empty() {
            return Err(all_failed(&failures));
        }
        let entries: Vec<Value> = (0..requests)
            .map(|i| merge_entry(answers.iter().map(|a| &a[i]).collect(), &failures))
            .collect();
        let _ = info;
        Ok(json!({"resourceType": "Bundle", "type": "batch-response", "entry": entries}))
    }
}

/// Why one source gave no answer: it failed (a partial answer), or the caller's request was
/// wrong (the whole answer is that problem).
enum SourceError {
    Failed(Failure),
    Problem(Problem),
}

impl From<Failure> for SourceError {
    fn from(f: Failure) -> Self {
        SourceError::Failed(f)
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
            crate::fhir::date_time(&Value::String(bare.unwrap_or(text).to_owned())).map_err(
                |_| Problem::invalid(format!("search parameter `{name}` must be a date")),
            )?;
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

fn fhir_read_call(client: &SourceClient, resource_type: &str, id: &str) -> Call {
    let base = &client.source.url;
    let mut url = base.clone();
    url.set_path(&format!(
        "{}/{resource_type}/{}",
        base.path().trim_end_matches('/'),
        crate::request::encode_segment(id)
    ));
    Call {
        method: Method::GET,
        url,
        headers: Vec::new(),
        body: None,
    }
}

fn status_failure(client: &SourceClient, reply: &crate::upstream::Reply) -> Failure {
    let detail = crate::http::outcome::issue_text(&reply.body)
        .map(|d| format!(": {d}"))
        .unwrap_or_default();
    Failure {
        source: client.source.name.clone(),
        reason: format!("answered {}{detail}", reply.status),
        timeout: false,
        status: Some(reply.status),
    }
}

fn all_failed(failures: &[Failure]) -> Problem {
    let timeout = failures.iter().all(|f| f.timeout);
    let text = failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if timeout {
        Problem::new(StatusCode::GATEWAY_TIMEOUT, "timeout", text)
    } else {
        Problem::new(StatusCode::BAD_GATEWAY, "transient", text)
    }
}

fn searchset(
    connector: &str,
    info: &RequestInfo,
    q: &SearchQuery,
    matches: Vec<Value>,
    outcomes: Vec<Value>,
    total: Option<u64>,
    more: bool,
) -> Value {
    let mut links = vec![json!({"relation": "self", "url": info.self_url})];
    if more && let Ok(mut next) = url::Url::parse(&info.self_url) {
        crate::upstream::set_query(
            &mut next,
            &[(&"_offset".to_owned(), (q.offset + q.count).to_string())],
        );
        links.push(json!({"relation": "next", "url": next.as_str()}));
    }
    let base = format!("{}/fhir/{connector}", info.base.trim_end_matches('/'));
    let mut entries: Vec<Value> = matches
        .into_iter()
        .map(|r| {
            let mut e = Map::new();
            if let Some(local) = crate::fhir::local_reference(&r) {
                e.insert("fullUrl".into(), Value::String(format!("{base}/{local}")));
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

/// One entry of merged batch responses: searchsets are joined, other answers taken from the
/// first source that succeeded; failed sources are named in the entry's outcome.
fn merge_entry(answers: Vec<&Value>, failures: &[Failure]) -> Value {
    let ok = |e: &&Value| {
        e["response"]["status"]
            .as_str()
            .is_some_and(|s| s.starts_with('2'))
    };
    let good: Vec<&Value> = answers.iter().copied().filter(ok).collect();
    let mut entry = match good.as_slice() {
        [] => answers.first().map(|e| (*e).clone()).unwrap_or(json!({})),
        [one] => (*one).clone(),
        many if many.iter().all(|e| e["resource"]["type"] == "searchset") => {
            let mut merged = many[0].clone();
            let all: Vec<Value> = many
                .iter()
                .flat_map(|e| {
                    e["resource"]["entry"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .collect();
            let totals: Option<u64> = many.iter().map(|e| e["resource"]["total"].as_u64()).sum();
            merged["resource"]["entry"] = Value::Array(all);
            match totals {
                Some(t) => merged["resource"]["total"] = json!(t),
                None => {
                    if let Some(o) = merged["resource"].as_object_mut() {
                        o.remove("total");
                    }
                }
            }
            merged
        }
        many => many[0].clone(),
    };
    if !failures.is_empty() {
        let text = failures
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        if entry["resource"]["type"] == "searchset" {
            if let Some(list) = entry["resource"]["entry"].as_array_mut() {
                list.push(json!({"resource": outcome("warning", "transient", &text), "search": {"mode": "outcome"}}));
            } else {
                entry["resource"]["entry"] = json!([{"resource": outcome("warning", "transient", &text), "search": {"mode": "outcome"}}]);
            }
        } else if entry["response"].is_object() && entry["response"].get("outcome").is_none() {
            entry["response"]["outcome"] = outcome("warning", "transient", &text);
        }
    }
    entry
}
