//! Pieces of the stand-in FHIR servers that the end-to-end tests write as small axum apps: a
//! FHIR JSON answer, an `OperationOutcome`, and a FHIR *source* answering searches of the
//! resources it holds page by page as a FHIR server does (`_count`, `_offset`,
//! `_lastUpdated=gtX`, absolute `self` and `next` links). The source also answers reads
//! (`GET /{Type}/{id}`) and batches of searches and reads (`POST /`). Used by most subjects
//! that stand in for a FHIR server: `cron_push` (its FHIR source and sink), `shipped` (the
//! HL7 sandbox, the recording sink, the lenses), `durability`, `versions`, `faults`,
//! `fanout`, `edge`, `ui`, ...

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::DateTime;
use serde_json::{Value, json};

use crate::fhir_resources::{instant, key_of};
use crate::local_http::{bind, spawn_app};

/// `body` as `application/fhir+json`, with this status.
pub fn fhir_json(status: u16, body: &Value) -> Response {
    (
        StatusCode::from_u16(status).expect("a status code"),
        [(header::CONTENT_TYPE, "application/fhir+json")],
        serde_json::to_vec(body).expect("JSON"),
    )
        .into_response()
}

/// An `OperationOutcome` of one error issue.
pub fn operation_outcome(code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]
    })
}

fn parse_instant(s: &str) -> Option<DateTime<chrono::FixedOffset>> {
    DateTime::parse_from_rfc3339(s).ok()
}

/// The answer to `GET {base}/{rtype}?{query}` over `resources` (all of type `rtype`): a
/// `searchset` Bundle of those whose `meta.lastUpdated` is after `_lastUpdated=gtX` when it is
/// given, oldest first (then by id), `_count` of them (50 when it is not given, at least 1, at
/// most `largest_page`) from `_offset`, with absolute `self` and `next` links that keep `_count`
/// and `_lastUpdated`; 400 with an `OperationOutcome` for a bad `_lastUpdated`.
fn search_page(
    base: &str,
    rtype: &str,
    query: &str,
    resources: Vec<Value>,
    largest_page: usize,
) -> Response {
    let pairs: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let count: usize = pairs
        .get("_count")
        .and_then(|c| c.parse().ok())
        .unwrap_or(50)
        .clamp(1, largest_page);
    let offset: usize = pairs
        .get("_offset")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let since = match pairs.get("_lastUpdated") {
        None => None,
        Some(v) => match v.strip_prefix("gt").and_then(parse_instant) {
            Some(t) => Some(t),
            None => {
                return fhir_json(
                    400,
                    &operation_outcome("invalid", &format!("bad _lastUpdated `{v}`")),
                );
            }
        },
    };
    let mut matching: Vec<Value> = resources
        .into_iter()
        .filter(|r| {
            let updated = r["meta"]["lastUpdated"].as_str().and_then(parse_instant);
            since.is_none_or(|since| updated.is_some_and(|u| u > since))
        })
        .collect();
    matching.sort_by_key(|r| {
        (
            r["meta"]["lastUpdated"].as_str().and_then(parse_instant),
            r["id"].as_str().unwrap_or("").to_owned(),
        )
    });
    let page_url = |offset: usize| {
        let mut u = url::Url::parse(&format!("{base}/{rtype}")).expect("a URL");
        {
            let mut q = u.query_pairs_mut();
            q.append_pair("_count", &count.to_string());
            if let Some(v) = pairs.get("_lastUpdated") {
                q.append_pair("_lastUpdated", v);
            }
            q.append_pair("_offset", &offset.to_string());
        }
        u.to_string()
    };
    let end = (offset + count).min(matching.len());
    let page = matching.get(offset..end).unwrap_or_default();
    let mut link = vec![json!({"relation": "self", "url": page_url(offset)})];
    if end < matching.len() {
        link.push(json!({"relation": "next", "url": page_url(end)}));
    }
    let entry: Vec<Value> = page
        .iter()
        .map(|r| {
            json!({
                "fullUrl": format!("{base}/{}", key_of(r)),
                "resource": r,
                "search": {"mode": "match"}
            })
        })
        .collect();
    fhir_json(
        200,
        &json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "total": matching.len(),
            "link": link,
            "entry": entry
        }),
    )
}

struct SourceInner {
    base: String,
    largest_page: usize,
    /// Resources by type, in insertion order.
    resources: Mutex<BTreeMap<String, Vec<Value>>>,
    /// Seconds after `2026-01-01T00:00:00Z` of the last version put by `put_version`.
    clock: AtomicU64,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    delay_ms: AtomicU64,
    /// Answer this status (for one type, or for all) instead of searching.
    failing: Mutex<Option<(Option<String>, u16)>>,
    /// `Type?query` of every request, in arrival order.
    requests: Mutex<Vec<String>>,
}

/// Decrements the calls in flight when a request ends (also when it is cancelled).
struct InFlight(Arc<SourceInner>);

impl InFlight {
    fn enter(s: &Arc<SourceInner>) -> InFlight {
        let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(s.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A FHIR source stand-in: answers `GET /{Type}?_count=N[&_lastUpdated=gtX]` over the
/// resources it holds with `searchset` Bundles paged through absolute `next` links (see
/// `search_page`), counting its calls and the calls in flight, logging them, and able to be
/// slow or to fail.
#[derive(Clone)]
pub struct FhirSource {
    pub url: String,
    inner: Arc<SourceInner>,
}

impl FhirSource {
    /// A source whose pages are as large as `_count` asks.
    pub async fn start() -> FhirSource {
        FhirSource::with_largest_page(usize::MAX).await
    }

    /// A source whose pages hold `largest_page` resources at most, whatever `_count` asks.
    pub async fn with_largest_page(largest_page: usize) -> FhirSource {
        let (listener, url) = bind().await;
        let inner = Arc::new(SourceInner {
            base: url.clone(),
            largest_page,
            resources: Mutex::new(BTreeMap::new()),
            clock: AtomicU64::new(0),
            calls: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            delay_ms: AtomicU64::new(0),
            failing: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/", axum::routing::post(source_batch))
            .route("/{rtype}", get(source_search))
            .route("/{rtype}/{id}", get(source_read))
            .with_state(inner.clone());
        spawn_app(listener, app);
        FhirSource { url, inner }
    }

    /// Adds a resource as it is, or replaces the one of the same type and id.
    pub fn put(&self, r: Value) {
        let t = r["resourceType"]
            .as_str()
            .expect("a resourceType")
            .to_owned();
        let mut all = self.inner.resources.lock().expect("source store");
        let list = all.entry(t).or_default();
        match list.iter_mut().find(|x| x["id"] == r["id"]) {
            Some(slot) => *slot = r,
            None => list.push(r),
        }
    }

    /// Adds a resource, or replaces the one of the same type and id, as a new version: its
    /// `meta` is the next `versionId` and a `lastUpdated` newer than any put so before.
    pub fn put_version(&self, mut r: Value) {
        let tick = self.inner.clock.fetch_add(1, Ordering::SeqCst) as i64 + 1;
        let t = r["resourceType"].as_str().expect("a resourceType");
        let version = self
            .inner
            .resources
            .lock()
            .expect("source store")
            .get(t)
            .and_then(|list| list.iter().find(|x| x["id"] == r["id"]))
            .and_then(|x| x["meta"]["versionId"].as_str())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        r["meta"] = json!({"versionId": version.to_string(), "lastUpdated": instant(tick)});
        self.put(r);
    }

    pub fn all(&self) -> Vec<Value> {
        self.inner
            .resources
            .lock()
            .expect("source store")
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    /// The largest `meta.lastUpdated` of a type, if it has resources.
    pub fn newest(&self, t: &str) -> Option<String> {
        self.inner
            .resources
            .lock()
            .expect("source store")
            .get(t)?
            .iter()
            .filter_map(|r| r["meta"]["lastUpdated"].as_str())
            .max_by_key(|s| DateTime::parse_from_rfc3339(s).expect("an instant"))
            .map(str::to_owned)
    }

    pub fn calls(&self) -> usize {
        self.inner.calls.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }

    /// `Type?query` of every request, in arrival order.
    pub fn requests(&self) -> Vec<String> {
        self.inner.requests.lock().expect("source log").clone()
    }

    /// Answers `status` with an `OperationOutcome` to searches of `only` (or of every type).
    pub fn fail(&self, only: Option<&str>, status: u16) {
        *self.inner.failing.lock().expect("source switch") =
            Some((only.map(str::to_owned), status));
    }

    pub fn heal(&self) {
        *self.inner.failing.lock().expect("source switch") = None;
    }

    /// Takes `d` to answer each request.
    pub fn delay(&self, d: Duration) {
        self.inner
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }
}

async fn source_search(
    State(s): State<Arc<SourceInner>>,
    UrlPath(rtype): UrlPath<String>,
    RawQuery(query): RawQuery,
) -> Response {
    s.calls.fetch_add(1, Ordering::SeqCst);
    let _guard = InFlight::enter(&s);
    let query = query.unwrap_or_default();
    s.requests
        .lock()
        .expect("source log")
        .push(format!("{rtype}?{query}"));
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let failing = s.failing.lock().expect("source switch").clone();
    if let Some((only, status)) = failing
        && only.as_deref().is_none_or(|t| t == rtype)
    {
        return fhir_json(
            status,
            &operation_outcome("exception", "the source stand-in is failing"),
        );
    }
    let resources = s
        .resources
        .lock()
        .expect("source store")
        .get(&rtype)
        .cloned()
        .unwrap_or_default();
    search_page(&s.base, &rtype, &query, resources, s.largest_page)
}

/// `GET /{Type}/{id}`: the resource, or 404 with an `OperationOutcome`.
async fn source_read(
    State(s): State<Arc<SourceInner>>,
    UrlPath((rtype, id)): UrlPath<(String, String)>,
) -> Response {
    s.calls.fetch_add(1, Ordering::SeqCst);
    s.requests
        .lock()
        .expect("source log")
        .push(format!("{rtype}/{id}"));
    match read_one(&s, &rtype, &id) {
        Some(r) => fhir_json(200, &r),
        None => fhir_json(404, &operation_outcome("not-found", "no such resource")),
    }
}

fn read_one(s: &SourceInner, rtype: &str, id: &str) -> Option<Value> {
    s.resources
        .lock()
        .expect("source store")
        .get(rtype)?
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
}

/// `POST /` with a batch Bundle of `GET Type` (all of that type) and `GET Type/id` requests:
/// a batch-response, each entry with the source's own `fullUrl`s.
async fn source_batch(State(s): State<Arc<SourceInner>>, body: axum::body::Bytes) -> Response {
    s.calls.fetch_add(1, Ordering::SeqCst);
    let Ok(bundle) = serde_json::from_slice::<Value>(&body) else {
        return fhir_json(400, &operation_outcome("invalid", "not JSON"));
    };
    let entries: Vec<Value> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let url = e["request"]["url"].as_str().unwrap_or("");
            let path = url.split('?').next().unwrap_or("");
            match path.split_once('/') {
                Some((rtype, id)) => match read_one(&s, rtype, id) {
                    Some(r) => json!({
                        "fullUrl": format!("{}/{}", s.base, key_of(&r)),
                        "resource": r,
                        "response": {"status": "200 OK"}
                    }),
                    None => json!({"response": {"status": "404 Not Found"}}),
                },
                None => {
                    let all = s
                        .resources
                        .lock()
                        .expect("source store")
                        .get(path)
                        .cloned()
                        .unwrap_or_default();
                    let entry: Vec<Value> = all
                        .iter()
                        .map(|r| json!({"fullUrl": format!("{}/{}", s.base, key_of(r)), "resource": r, "search": {"mode": "match"}}))
                        .collect();
                    json!({
                        "resource": {"resourceType": "Bundle", "type": "searchset", "total": all.len(), "entry": entry},
                        "response": {"status": "200 OK"}
                    })
                }
            }
        })
        .collect();
    fhir_json(
        200,
        &json!({"resourceType": "Bundle", "type": "batch-response", "entry": entries}),
    )
}

/// The definition of a FHIR source `name` at `url` (default `concurrency`, `timeout: 10s`),
/// ending in a document separator.
pub fn fhir_source(name: &str, url: &str) -> String {
    format!(
        "apiVersion: fosps.gravitate-health.eu/v1\nkind: Source\nmetadata: {{ name: {name} }}\nspec:\n  type: fhir\n  url: \"{url}\"\n  timeout: 10s\n---\n"
    )
}

/// A pull connector `both` searching `Patient` over sources `a` and `b`, without a cache:
/// every request calls both.
pub const SEARCH_OVER_A_AND_B: &str = r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: both }
spec:
  strategy: pull
  sources: [a, b]
  pull:
    resources:
      - type: Patient
        search:
          params:
            _count: { type: integer, default: 20, max: 100 }
"#;
