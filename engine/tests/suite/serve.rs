//! End-to-end tests of `engine serve`: the engine's router, called in-process (no socket: see
//! `engine_router`), or the `engine` binary, in front of stand-in upstream servers on
//! 127.0.0.1, small axum apps that count their calls, record what they received, and can be
//! made to fail, to be slow or to be down.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use engine::runtime::engine::Limits;
use serde_json::{Value, json};

use crate::engine_router::{EngineRouter, engine_with, open_admin};
use crate::fhir_resources::entries_of;
use crate::local_http::{Got, assert_outcome, bind, client, dead_url, send, spawn_app};
use crate::serve_process::ServeProcess;

/// Longest any single request of a test may take before the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

// ------------------------------------------------------------------------------------------
// Stand-in upstream servers
// ------------------------------------------------------------------------------------------

/// One request a stand-in received, as it arrived on the wire.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// The raw (still percent-encoded) path.
    path: String,
    /// The raw query, without `?`.
    query: Option<String>,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Seen {
    fn query_pairs(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.query.as_deref().unwrap_or("").as_bytes())
            .into_owned()
            .collect()
    }

    fn param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    fn body_json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

type Answerer = dyn Fn(&Seen) -> (u16, Value) + Send + Sync;

struct StubState {
    calls: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    fail: AtomicBool,
    delay_ms: AtomicU64,
    answer: Box<Answerer>,
}

/// A stand-in upstream: answers every request with `answer`, after `delay`, or 503 when failing.
#[derive(Clone)]
struct Stub {
    url: String,
    state: Arc<StubState>,
}

impl Stub {
    async fn start(answer: impl Fn(&Seen) -> (u16, Value) + Send + Sync + 'static) -> Stub {
        let (listener, url) = bind().await;
        let state = Arc::new(StubState {
            calls: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            fail: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            answer: Box::new(answer),
        });
        let app = axum::Router::new()
            .fallback(stub_handler)
            .with_state(state.clone());
        spawn_app(listener, app);
        Stub { url, state }
    }

    fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("stand-in log").clone()
    }

    fn last(&self) -> Seen {
        self.seen().pop().expect("the stand-in received a request")
    }

    fn fail(&self, on: bool) {
        self.state.fail.store(on, Ordering::SeqCst);
    }

    fn delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }
}

async fn stub_handler(State(s): State<Arc<StubState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let seen = Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
    };
    s.calls.fetch_add(1, Ordering::SeqCst);
    s.seen.lock().expect("stand-in log").push(seen.clone());
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if s.fail.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":"down for maintenance"}"#,
        )
            .into_response();
    }
    let (status, value) = (s.answer)(&seen);
    (
        StatusCode::from_u16(status).expect("a status code"),
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&value).expect("JSON"),
    )
        .into_response()
}

// ------------------------------------------------------------------------------------------
// The engine under test
// ------------------------------------------------------------------------------------------

/// The engine of `yaml`, called in-process; the definitions, and the engine's state beside
/// them, are in the directory given with it.
fn engine_of(yaml: &str, limits: Limits) -> (EngineRouter, tempfile::TempDir) {
    engine_with(yaml, limits, CLIENT_TIMEOUT)
}

async fn get(engine: &EngineRouter, url: &str) -> Got {
    engine.get(url).send().await
}

/// `url` with these query parameters, form-encoded.
fn with_query(url: &str, pairs: &[(&str, &str)]) -> String {
    let mut u = url::Url::parse(url).expect("a URL");
    u.query_pairs_mut().extend_pairs(pairs);
    u.to_string()
}

/// Decodes `%XX` escapes (and nothing else).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(h) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The ids of the resources of a Bundle's entries whose search mode is `mode`, in order.
fn ids_of(bundle: &Value, mode: &str) -> Vec<String> {
    entries_of(bundle, mode)
        .iter()
        .map(|r| r["id"].as_str().unwrap_or("").to_owned())
        .collect()
}

// ------------------------------------------------------------------------------------------
// Definitions and stand-in data
// ------------------------------------------------------------------------------------------

const SET_ID_1: &str = "0a1b2c3d-1111-2222-3333-444455556666";
const SET_ID_2: &str = "0a1b2c3d-7777-8888-9999-000011112222";

fn label_1() -> Value {
    json!({
        "set_id": SET_ID_1,
        "effective_time": "20240105",
        "indications_and_usage": ["Relief of minor aches and pains."],
        "openfda": { "brand_name": ["Painaway", "Painaway Extra"], "generic_name": ["IBUPROFEN"] }
    })
}

fn label_2() -> Value {
    json!({
        "set_id": SET_ID_2,
        "effective_time": "20230301",
        "indications_and_usage": ["Relief of pain at night."],
        "openfda": { "brand_name": ["Painaway Night"], "generic_name": ["IBUPROFEN"] }
    })
}

/// The FHIR the drug-labels mapping makes of `label_1`.
fn expected_product_1() -> Value {
    json!({
        "resourceType": "MedicinalProductDefinition",
        "id": SET_ID_1,
        "identifier": [
            { "system": "https://api.regulator.example/set-id", "value": SET_ID_1 }
        ],
        "name": [ { "productName": "PAINAWAY" }, { "productName": "PAINAWAY EXTRA" } ],
        "description": "Relief of minor aches and pains.",
        "statusDate": "2024-01-05"
    })
}

/// An openFDA-like label API: `search=openfda.brand_name:"Painaway"` finds two labels,
/// `search=set_id:"..."` one; anything else is 404 as openFDA answers.
async fn label_api() -> Stub {
    Stub::start(|seen| {
        if seen.path != "/drug/label.json" {
            return (404, json!({"error": {"code": "NOT_FOUND"}}));
        }
        let search = seen.param("search").unwrap_or_default();
        let results = match search.as_str() {
            r#"openfda.brand_name:"Painaway""# => vec![label_1(), label_2()],
            s if s == format!(r#"set_id:"{SET_ID_1}""#) => vec![label_1()],
            s if s == format!(r#"set_id:"{SET_ID_2}""#) => vec![label_2()],
            _ => return (404, json!({"error": {"code": "NOT_FOUND"}})),
        };
        (
            200,
            json!({"meta": {"results": {"total": results.len()}}, "results": results}),
        )
    })
    .await
}

/// The drug-labels connector of `examples/drug-labels` over `url`, with a `cache` line.
fn drug_labels_yaml(url: &str, cache: &str) -> String {
    r#"
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata:
  name: drug-labels
  description: Drug labels from a regulator's REST API as MedicinalProductDefinition
spec:
  strategy: pull
  fhirVersion: R5
  source:
    url: "@URL@"
    auth:
      apiKey: { header: X-Api-Key, value: test-key }
    timeout: 5s
    retries: 0
  pull:
    resources:
      - type: MedicinalProductDefinition
        search:
          params:
            name: { description: Brand name }
            route: {}
            form: { default: tablet }
            _count: { type: integer, default: 20, max: 100 }
          request:
            path: /drug/label.json
            query:
              search: 'openfda.brand_name:"{{params.name}}"'
              limit: "{{params._count}}"
          records: $.results[*]
          total: $.meta.results.total
        read:
          request:
            path: /drug/label.json
            query: { search: 'set_id:"{{id}}"' }
          records: $.results[0]
  @CACHE@
  vars:
    system: https://api.regulator.example/set-id
  mapping:
    resourceType: MedicinalProductDefinition
    id: { $path: $.set_id }
    identifier:
      - system: "{{vars.system}}"
        value: { $path: $.set_id }
    name:
      - $each: $.openfda.brand_name[*]
        $do:
          productName: "{{upper item}}"
    description: { $path: "$.indications_and_usage[0]" }
    statusDate: { $dateTime: { $path: $.effective_time } }
"#
    .replace("@URL@", url)
    .replace("@CACHE@", cache)
}

fn patient(id: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "name": [{"family": format!("Family-{id}")}]})
}

fn searchset(resources: &[Value]) -> Value {
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": resources.len(),
        "entry": resources.iter().map(|r| json!({
            "fullUrl": format!("http://upstream.example/{}/{}", r["resourceType"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or("")),
            "resource": r,
            "search": {"mode": "match"}
        })).collect::<Vec<_>>()
    })
}

/// A FHIR server with `ids` as its patients under `/fhir`: search, read and batch.
async fn fhir_server(ids: &'static [&'static str]) -> Stub {
    Stub::start(move |seen| {
        let all: Vec<Value> = ids.iter().map(|i| patient(i)).collect();
        match (seen.method.as_str(), seen.path.as_str()) {
            ("GET", "/fhir/Patient") => (200, searchset(&all)),
            ("GET", p) if p.starts_with("/fhir/Patient/") => {
                let id = &p["/fhir/Patient/".len()..];
                match all.iter().find(|r| r["id"] == id) {
                    Some(r) => (200, r.clone()),
                    None => (
                        404,
                        json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found", "diagnostics": "gone"}]}),
                    ),
                }
            }
            ("POST", "/fhir") => {
                let n = seen.body_json()["entry"].as_array().map_or(0, Vec::len);
                let entries: Vec<Value> = (0..n)
                    .map(|_| json!({"resource": searchset(&all), "response": {"status": "200 OK"}}))
                    .collect();
                (
                    200,
                    json!({"resourceType": "Bundle", "type": "batch-response", "entry": entries}),
                )
            }
            _ => (
                404,
                json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found", "diagnostics": "no route"}]}),
            ),
        }
    })
    .await
}

// ------------------------------------------------------------------------------------------
// 1. A pull connector over a JSON API
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_api_connector_answers_searchset_and_read() {
    let api = label_api().await;
    let (engine, _defs) = engine_of(
        &drug_labels_yaml(&api.url, "cache: { ttl: 10m, staleIfError: 1h }"),
        Limits::default(),
    );
    let route = format!(
        "{}/fhir/drug-labels/MedicinalProductDefinition",
        engine.base
    );

    let got = get(&engine, &format!("{route}?name=Painaway")).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.header("content-type"), "application/fhir+json");
    let b = got.json();
    assert_eq!(b["resourceType"], "Bundle");
    assert_eq!(b["type"], "searchset");
    assert_eq!(b["total"], 2, "{b}");
    let links = b["link"].as_array().expect("links");
    assert!(
        links
            .iter()
            .any(|l| l["relation"] == "self"
                && l["url"] == format!("{route}?name=Painaway").as_str()),
        "{b}"
    );
    let entries = b["entry"].as_array().expect("entries");
    assert_eq!(entries.len(), 2, "{b}");
    for e in entries {
        assert_eq!(e["search"]["mode"], "match", "{e}");
        let id = e["resource"]["id"].as_str().expect("id");
        assert_eq!(e["fullUrl"], format!("{route}/{id}").as_str(), "{e}");
        assert_eq!(e["resource"]["resourceType"], "MedicinalProductDefinition");
    }
    assert_eq!(entries[0]["resource"], expected_product_1());
    assert_eq!(entries[1]["resource"]["id"], SET_ID_2);
    assert_eq!(
        entries[1]["resource"]["name"],
        json!([{"productName": "PAINAWAY NIGHT"}])
    );

    // What the API received: the templated path and query, and the source's credential.
    let seen = api.last();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path, "/drug/label.json");
    assert_eq!(
        seen.param("search").as_deref(),
        Some(r#"openfda.brand_name:"Painaway""#)
    );
    assert_eq!(seen.param("limit").as_deref(), Some("20"));
    assert_eq!(
        seen.headers.get("x-api-key").and_then(|v| v.to_str().ok()),
        Some("test-key")
    );

    // Read.
    let got = get(&engine, &format!("{route}/{SET_ID_1}")).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.header("content-type"), "application/fhir+json");
    assert_eq!(got.json(), expected_product_1());
    assert_eq!(
        api.last().param("search"),
        Some(format!(r#"set_id:"{SET_ID_1}""#))
    );

    // Read of an unknown id.
    let got = get(&engine, &format!("{route}/no-such-label")).await;
    assert_outcome(&got, 404, &["no-such-label"]);
    assert_eq!(got.json()["issue"][0]["code"], "not-found");
}

// ------------------------------------------------------------------------------------------
// 2. A pull connector over a FHIR source
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_source_connector_searches_and_reads_upstream() {
    let fhir = fhir_server(&["p1", "p2"]).await;
    let yaml = r#"
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: patients }
spec:
  strategy: pull
  source:
    type: fhir
    url: "@URL@/fhir"
    timeout: 5s
    retries: 0
  pull:
    resources:
      - type: Patient
        search:
          params:
            identifier: { type: token }
            family: {}
            _count: { type: integer, default: 20, max: 100 }
        read: {}
"#
    .replace("@URL@", &fhir.url);
    let (engine, _defs) = engine_of(&yaml, Limits::default());
    let route = format!("{}/fhir/patients/Patient", engine.base);

    let got = engine
        .get(with_query(&route, &[("identifier", "http://sys|123")]))
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.header("content-type"), "application/fhir+json");
    let b = got.json();
    assert_eq!(b["type"], "searchset");
    assert_eq!(ids_of(&b, "match"), ["p1", "p2"], "{b}");
    assert_eq!(b["total"], 2, "{b}");
    assert_eq!(b["entry"][0]["resource"], patient("p1"));
    assert_eq!(b["entry"][0]["fullUrl"], format!("{route}/p1").as_str());

    let seen = fhir.last();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path, "/fhir/Patient");
    assert_eq!(
        seen.param("identifier").as_deref(),
        Some("http://sys|123"),
        "{seen:?}"
    );
    assert_eq!(seen.param("family"), None);

    let got = get(&engine, &format!("{route}/p2")).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.header("content-type"), "application/fhir+json");
    assert_eq!(got.json(), patient("p2"));
    assert_eq!(fhir.last().path, "/fhir/Patient/p2");

    let got = get(&engine, &format!("{route}/p9")).await;
    assert_outcome(&got, 404, &["p9"]);
    assert_eq!(fhir.last().path, "/fhir/Patient/p9");
}

// ------------------------------------------------------------------------------------------
// 3. One upstream call for concurrent identical requests; normalised cache keys
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_requests_make_one_upstream_call() {
    let api = label_api().await;
    api.delay(Duration::from_millis(200));
    let (engine, _defs) = engine_of(
        &drug_labels_yaml(&api.url, "cache: { ttl: 10m, staleIfError: 1h }"),
        Limits::default(),
    );
    let route = format!(
        "{}/fhir/drug-labels/MedicinalProductDefinition",
        engine.base
    );
    let url = format!("{route}?name=Painaway&route=oral");

    let answers = futures_util::future::join_all((0..100).map(|_| engine.get(&url).send())).await;
    assert_eq!(api.calls(), 1, "upstream calls for 100 identical requests");
    let first = &answers[0];
    for a in &answers {
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.text, first.text);
    }
    let misses = answers
        .iter()
        .filter(|a| a.header("x-cache") == "miss")
        .count();
    let hits = answers
        .iter()
        .filter(|a| a.header("x-cache") == "hit")
        .count();
    assert_eq!((misses, hits), (1, 99));
    assert_eq!(first.json()["total"], 2);

    // Another order, and defaults written out: the same cache entry.
    let got = get(
        &engine,
        &format!("{route}?route=oral&_count=20&form=tablet&name=Painaway"),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.header("x-cache"), "hit");
    assert_eq!(api.calls(), 1);

    // A different search is a different entry.
    let got = get(
        &engine,
        &format!("{route}?name=Painaway&route=oral&_count=5"),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.header("x-cache"), "miss");
    assert_eq!(api.calls(), 2);
}

// ------------------------------------------------------------------------------------------
// 4. Stale answers while the upstream is down
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_answer_is_served_while_upstream_fails() {
    let api = label_api().await;
    let (engine, _defs) = engine_of(
        &drug_labels_yaml(&api.url, "cache: { ttl: 10m, staleIfError: 1h }"),
        Limits::default(),
    );
    let route = format!(
        "{}/fhir/drug-labels/MedicinalProductDefinition",
        engine.base
    );
    let url = format!("{route}?name=Painaway");

    let fresh = get(&engine, &url).await;
    assert_eq!(fresh.status, 200, "{}", fresh.text);
    assert_eq!(fresh.header("x-cache"), "miss");
    assert_eq!(api.calls(), 1);

    api.fail(true);
    let stale = engine
        .get(&url)
        .header("cache-control", "no-cache")
        .send()
        .await;
    assert_eq!(api.calls(), 2, "no-cache must force a reload");
    assert_eq!(stale.status, 200, "{}", stale.text);
    assert_eq!(stale.header("x-cache"), "stale");
    assert_eq!(stale.header("content-type"), "application/fhir+json");
    assert_eq!(stale.text, fresh.text);

    // Nothing cached for this search: the failure itself, naming the source.
    let got = get(&engine, &format!("{route}?name=Other")).await;
    assert_eq!(api.calls(), 3);
    assert_outcome(&got, 502, &["drug-labels", "503"]);
}

// ------------------------------------------------------------------------------------------
// 5. Fan-out over two FHIR sources, partial answers, batch
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_merges_sources_and_names_failed_ones() {
    let epi = fhir_server(&["e1", "e2"]).await;
    let ips = fhir_server(&["i1"]).await;
    let slow = fhir_server(&["s1"]).await;
    slow.delay(Duration::from_secs(2));
    let down = dead_url();
    let source = |name: &str, url: &str, timeout: &str| {
        format!(
            "apiVersion: fosps.gravitate-health.eu/v1\nkind: Source\nmetadata: {{ name: {name} }}\nspec:\n  type: fhir\n  url: \"{url}/fhir\"\n  timeout: {timeout}\n  retries: 0\n---\n"
        )
    };
    let connector = |name: &str, sources: &str| {
        format!(
            r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: {name} }}
spec:
  strategy: pull
  sources: [{sources}]
  pull:
    batch: true
    resources:
      - type: Patient
        search:
          params:
            identifier: {{ type: token }}
            _count: {{ type: integer, default: 20, max: 100 }}
        read: {{}}
---
"#
        )
    };
    let yaml = [
        source("epi", &epi.url, "5s"),
        source("ips", &ips.url, "5s"),
        source("down", &down, "5s"),
        source("slow", &slow.url, "300ms"),
        connector("both", "epi, ips"),
        connector("with-down", "epi, down"),
        connector("with-slow", "epi, slow"),
    ]
    .concat();
    let (engine, _defs) = engine_of(&yaml, Limits::default());

    // Both up: merged.
    let got = get(&engine, &format!("{}/fhir/both/Patient", engine.base)).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let b = got.json();
    let mut ids = ids_of(&b, "match");
    ids.sort();
    assert_eq!(ids, ["e1", "e2", "i1"], "{b}");
    assert!(entries_of(&b, "outcome").is_empty(), "{b}");
    assert_eq!(b["total"], 3, "{b}");
    assert_eq!((epi.calls(), ips.calls()), (1, 1));

    // One refuses connections: the other's results and an outcome naming it.
    let got = get(&engine, &format!("{}/fhir/with-down/Patient", engine.base)).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let b = got.json();
    assert_eq!(ids_of(&b, "match"), ["e1", "e2"], "{b}");
    let outcomes = entries_of(&b, "outcome");
    assert_eq!(outcomes.len(), 1, "{b}");
    assert_eq!(outcomes[0]["resourceType"], "OperationOutcome");
    let text = outcomes[0]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or("");
    assert!(text.contains("`down`"), "{text}");
    assert!(!text.contains("`epi`"), "{text}");

    // One too slow: the same, saying it did not answer in time.
    let got = get(&engine, &format!("{}/fhir/with-slow/Patient", engine.base)).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let b = got.json();
    assert_eq!(ids_of(&b, "match"), ["e1", "e2"], "{b}");
    let outcomes = entries_of(&b, "outcome");
    assert_eq!(outcomes.len(), 1, "{b}");
    assert_eq!(outcomes[0]["resourceType"], "OperationOutcome");
    assert_eq!(outcomes[0]["issue"][0]["code"], "timeout", "{b}");
    let text = outcomes[0]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or("");
    assert!(text.contains("`slow`"), "{text}");
    assert!(text.contains("no answer within 300ms"), "{text}");

    // Batch: two searches, each answered by both sources, merged entry by entry.
    let batch = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Patient?identifier=a"}},
            {"request": {"method": "GET", "url": "Patient?identifier=b"}}
        ]
    });
    let (epi_before, ips_before) = (epi.calls(), ips.calls());
    let got = engine
        .post(format!("{}/fhir/both", engine.base))
        .header("content-type", "application/fhir+json")
        .body(batch.to_string())
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.header("content-type"), "application/fhir+json");
    let b = got.json();
    assert_eq!(b["resourceType"], "Bundle");
    assert_eq!(b["type"], "batch-response");
    let entries = b["entry"].as_array().expect("entries");
    assert_eq!(entries.len(), 2, "{b}");
    for e in entries {
        assert!(
            e["response"]["status"]
                .as_str()
                .is_some_and(|s| s.starts_with("200")),
            "{e}"
        );
        let mut ids = ids_of(&e["resource"], "match");
        ids.sort();
        assert_eq!(ids, ["e1", "e2", "i1"], "{e}");
        assert_eq!(e["resource"]["total"], 3, "{e}");
    }
    assert_eq!((epi.calls(), ips.calls()), (epi_before + 1, ips_before + 1));
    for stub in [&epi, &ips] {
        let seen = stub.last();
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            ("POST", "/fhir")
        );
        assert_eq!(seen.body_json(), batch);
    }

    // Batch with one source down: still 200, naming it.
    let got = engine
        .post(format!("{}/fhir/with-down", engine.base))
        .header("content-type", "application/fhir+json")
        .body(batch.to_string())
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let b = got.json();
    assert_eq!(b["type"], "batch-response");
    let entries = b["entry"].as_array().expect("entries");
    assert_eq!(entries.len(), 2, "{b}");
    for e in entries {
        assert_eq!(ids_of(&e["resource"], "match"), ["e1", "e2"], "{e}");
        let outcomes = entries_of(&e["resource"], "outcome");
        assert_eq!(outcomes.len(), 1, "{e}");
        let text = outcomes[0]["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or("");
        assert!(text.contains("`down`"), "{text}");
    }
}

// ------------------------------------------------------------------------------------------
// 6. Caller values cannot change the upstream host, path or headers
// ------------------------------------------------------------------------------------------

const INJECTION_YAML: &str = r#"
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: labels }
spec:
  strategy: pull
  fhirVersion: R5
  source:
    url: "@URL@/api"
    timeout: 5s
    retries: 0
  pull:
    resources:
      - type: MedicinalProductDefinition
        search:
          params:
            name: { required: true }
          request:
            path: /labels/by-name/{{params.name}}
            query:
              q: "{{params.name}}"
            headers:
              X-Name: "{{params.name}}"
          records: $.results[*]
        read:
          request:
            path: /labels/{{id}}
          records: $
  mapping:
    resourceType: MedicinalProductDefinition
    id: { $path: $.id }
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: fhir-labels }
spec:
  strategy: pull
  source: { type: fhir, url: "@URL@/fhir-api", timeout: 5s, retries: 0 }
  pull:
    resources:
      - type: Patient
        read: {}
"#;

/// Why a raw upstream path is not `prefix` followed by exactly one segment that decodes to
/// `value`, if it is not.
fn segment_problem(path: &str, prefix: &str, value: &str) -> Option<String> {
    let Some(rest) = path.strip_prefix(prefix) else {
        return Some(format!(
            "value {value:?}: upstream path {path:?} does not start with {prefix:?}"
        ));
    };
    if rest.contains('/') {
        return Some(format!(
            "value {value:?}: upstream path {path:?} has more segments than the template"
        ));
    }
    if percent_decode(rest) != value {
        return Some(format!(
            "value {value:?}: upstream path {path:?} does not carry the value in its last segment"
        ));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_values_cannot_change_upstream_host_path_or_headers() {
    // A read answers the record of the id its path asks (a read is answered with the resource
    // of the id asked, or 404).
    let asked = |path: &str| percent_decode(path.rsplit('/').next().unwrap_or_default());
    let api = Stub::start(move |seen| {
        if seen.path.starts_with("/api/labels/by-name/") {
            (200, json!({"results": []}))
        } else if seen.path.starts_with("/fhir-api/") {
            (200, patient(&asked(&seen.path)))
        } else {
            (200, json!({"id": asked(&seen.path)}))
        }
    })
    .await;
    let (engine, _defs) = engine_of(
        &INJECTION_YAML.replace("@URL@", &api.url),
        Limits::default(),
    );
    let route = format!("{}/fhir/labels/MedicinalProductDefinition", engine.base);

    let values = [
        "a/b",
        "a?b=c",
        "a#frag",
        "..",
        ".",
        "../../admin",
        "%2F",
        "%2e%2e",
        "a&q=evil&x=1",
        "http://evil.example/x",
        "//evil.example/x",
        "a b+c",
    ];
    // Every violation is collected, so that one run shows them all.
    let mut problems = Vec::new();
    for v in values {
        let before = api.calls();
        let got = engine.get(with_query(&route, &[("name", v)])).send().await;
        if got.status == 400 && v.bytes().all(|b| b == b'.') {
            // Refusing a value that can only be a dot segment is safe too.
            assert_eq!(api.calls(), before, "value {v:?} refused but sent");
            continue;
        }
        assert_eq!(got.status, 200, "value {v:?}: {}", got.text);
        assert_eq!(api.calls(), before + 1, "value {v:?}: one upstream call");
        let seen = api.last();
        // The path: exactly the template's segments, the value inside the last one.
        problems.extend(
            segment_problem(&seen.path, "/api/labels/by-name/", v).map(|p| format!("search: {p}")),
        );
        // The query: the value intact in `q`, and nothing else.
        if seen.query_pairs() != [("q".to_owned(), v.to_owned())] {
            problems.push(format!("value {v:?}: upstream query {:?}", seen.query));
        }
        // The header: exactly one, the value verbatim, and no other header made of it.
        let names: Vec<&str> = seen
            .headers
            .get_all("x-name")
            .iter()
            .map(|h| h.to_str().unwrap_or("?"))
            .collect();
        if names != [v] {
            problems.push(format!("value {v:?}: upstream X-Name headers {names:?}"));
        }
        if seen.headers.keys().any(|k| k.as_str().contains("evil")) {
            problems.push(format!("value {v:?}: upstream headers {:?}", seen.headers));
        }
    }

    // A line break meant for a header: refused, nothing sent.
    for v in ["a\r\nX-Injected: 1", "a\nX-Injected: 1", "a\rb"] {
        let before = api.calls();
        let got = engine.get(with_query(&route, &[("name", v)])).send().await;
        assert_outcome(&got, 400, &["X-Name"]);
        assert_eq!(api.calls(), before, "value {v:?} reached the stand-in");
    }

    // Reads: valid ids stay inside one segment, including the dot segments (`.` and `..`
    // are FHIR ids by the id pattern; refusing them with 400 before any call is also safe),
    // through a request template and through a FHIR source's default read.
    for (connector, prefix) in [
        ("labels/MedicinalProductDefinition", "/api/labels/"),
        ("fhir-labels/Patient", "/fhir-api/Patient/"),
    ] {
        for id in ["abc-1.2", "x1", "..", "."] {
            let before = api.calls();
            let got = engine
                .raw(Method::GET, &format!("/fhir/{connector}/{id}"))
                .send()
                .await;
            if got.status == 400 && id.bytes().all(|b| b == b'.') {
                assert_eq!(api.calls(), before, "id {id:?} refused but sent");
                continue;
            }
            assert_eq!(got.status, 200, "{connector} id {id:?}: {}", got.text);
            assert_eq!(api.calls(), before + 1, "id {id:?}");
            let seen = api.last();
            problems.extend(
                segment_problem(&seen.path, prefix, id).map(|p| format!("read {connector}: {p}")),
            );
            if seen.query.is_some() {
                problems.push(format!("id {id:?}: upstream query {:?}", seen.query));
            }
        }
    }
    // Invalid ids: 400 before any upstream call.
    let long = "a".repeat(65);
    for id in [
        "a%2Fb",
        "a%2F..%2F..%2Fadmin",
        "a%3Fb",
        "a%23b",
        "a%0D%0Ab",
        "http:%2F%2Fevil.example%2Fx",
        long.as_str(),
    ] {
        let before = api.calls();
        let got = get(&engine, &format!("{route}/{id}")).await;
        assert_outcome(&got, 400, &[]);
        assert_eq!(got.json()["issue"][0]["code"], "invalid");
        assert_eq!(api.calls(), before, "id {id:?} reached the stand-in");
    }
    let ok = "a".repeat(64);
    let got = get(&engine, &format!("{route}/{ok}")).await;
    assert_eq!(got.status, 200, "a 64-character id is valid: {}", got.text);

    assert!(
        problems.is_empty(),
        "caller values changed the upstream request:\n{}",
        problems.join("\n")
    );

    // Every request the stand-in ever got went to its own paths.
    for seen in api.seen() {
        assert!(
            seen.path.starts_with("/api/labels/") || seen.path.starts_with("/fhir-api/Patient/"),
            "{seen:?}"
        );
        assert!(seen.headers.get("x-injected").is_none(), "{seen:?}");
    }
}

// ------------------------------------------------------------------------------------------
// 7. Conditional requests, errors, operations and admin endpoints
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etags_errors_operations_and_admin_endpoints() {
    let api = label_api().await;
    let fhir = fhir_server(&["p1"]).await;
    let yaml = format!(
        "{}---\n{}",
        drug_labels_yaml(&api.url, "cache: { ttl: 10m, staleIfError: 1h }"),
        r#"
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: patients }
spec:
  strategy: pull
  source: { type: fhir, url: "@URL@/fhir", retries: 0 }
  pull:
    resources:
      - type: Patient
        read: {}
"#
        .replace("@URL@", &fhir.url)
    );
    let (engine, _defs) = engine_of(&yaml, open_admin());
    let route = format!(
        "{}/fhir/drug-labels/MedicinalProductDefinition",
        engine.base
    );
    let url = format!("{route}?name=Painaway");

    // ETag and If-None-Match.
    let got = get(&engine, &url).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let etag = got.header("etag").to_owned();
    assert!(!etag.is_empty(), "an ETag: {:?}", got.headers);
    let again = engine.get(&url).header("if-none-match", &etag).send().await;
    assert_eq!(again.status, 304, "{}", again.text);
    assert_eq!(again.text, "");
    assert_eq!(again.header("etag"), etag);
    let other = engine
        .get(&url)
        .header("if-none-match", "W/\"something-else\"")
        .send()
        .await;
    assert_eq!(other.status, 200);
    assert_eq!(other.text, got.text);
    assert_eq!(api.calls(), 1);

    // Unknown routes.
    for path in [
        "/nothing/here",
        "/fhir/no-such-connector/Patient",
        "/fhir/drug-labels/Observation",
        "/fhir/drug-labels/Observation/x",
    ] {
        let got = get(&engine, &format!("{}{path}", engine.base)).await;
        assert_outcome(&got, 404, &[]);
        assert_eq!(got.json()["issue"][0]["code"], "not-found", "{path}");
    }

    // Unknown search parameter: 400 naming the accepted ones.
    let got = get(&engine, &format!("{route}?name=Painaway&colour=red")).await;
    assert_outcome(
        &got,
        400,
        &["colour", "name", "route", "form", "_count", "_offset"],
    );
    assert_eq!(api.calls(), 1);

    // Operations.
    let got = get(&engine, &format!("{}/healthz", engine.base)).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let got = get(&engine, &format!("{}/readyz", engine.base)).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let got = get(&engine, &format!("{}/metrics", engine.base)).await;
    assert_eq!(got.status, 200);
    for name in [
        "engine_requests_total",
        "engine_cache_hits_total",
        "engine_upstream_requests_total",
    ] {
        assert!(got.text.contains(name), "{name} missing from\n{}", got.text);
    }
    assert!(
        got.text
            .lines()
            .any(|l| l.starts_with("engine_cache_hits_total{") && l.ends_with(" 2")),
        "two cache hits so far:\n{}",
        got.text
    );

    // Metrics labels name configured connectors only: paths made up by callers add no series.
    let series = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("engine_requests_total{"))
            .count()
    };
    let before = series(&got.text);
    for i in 0..20 {
        for path in [
            format!("/fhir/made-up-{i}/Patient"),
            format!("/fhir/made-up-{i}/Patient/1"),
            format!("/push/made-up-{i}"),
        ] {
            let got = get(&engine, &format!("{}{path}", engine.base)).await;
            assert_eq!(got.status, 404, "{path}: {}", got.text);
        }
    }
    let got = get(&engine, &format!("{}/metrics", engine.base)).await;
    assert!(!got.text.contains("made-up"), "{}", got.text);
    assert!(
        series(&got.text) <= before + 2,
        "60 requests to made-up paths added at most the `other` route's series:\n{}",
        got.text
    );

    // Admin.
    for path in ["/connectors", "/connectors/list"] {
        let got = get(&engine, &format!("{}{path}", engine.base)).await;
        assert_eq!(got.status, 200, "{path}: {}", got.text);
        let mut names: Vec<String> = got
            .json()
            .as_array()
            .expect("a list")
            .iter()
            .map(|c| c["name"].as_str().unwrap_or("").to_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["drug-labels", "patients"], "{path}");
    }
    let got = get(&engine, &format!("{}/connectors/drug-labels", engine.base)).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json()["name"], "drug-labels");
    assert_eq!(got.json()["cache"]["entries"], 1, "{}", got.text);

    // Invalidation: the next request is a miss.
    let got = engine
        .delete(format!("{}/connectors/drug-labels/cache", engine.base))
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json()["invalidated"], 1, "{}", got.text);
    let got = get(&engine, &url).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-cache"), "miss");
    assert_eq!(api.calls(), 2);
    let got = engine
        .delete(format!("{}/connectors/patients/cache", engine.base))
        .send()
        .await;
    assert_outcome(&got, 404, &["patients"]);
}

// ------------------------------------------------------------------------------------------
// 8. Limits on time, body and headers
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_on_time_body_and_headers() {
    let api = label_api().await;
    api.delay(Duration::from_secs(2));
    let fhir = fhir_server(&["p1"]).await;
    let yaml = format!(
        "{}---\n{}",
        drug_labels_yaml(&api.url, "").replace("timeout: 5s", "timeout: 10s"),
        r#"
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: proxy }
spec:
  strategy: pull
  source: { type: fhir, url: "@URL@/fhir", retries: 0 }
  pull:
    batch: true
    resources:
      - type: Patient
        search: { params: { identifier: { type: token } } }
"#
        .replace("@URL@", &fhir.url)
    );
    let limits = Limits {
        timeout: Duration::from_millis(300),
        body: 1024,
        headers: 2048,
        ..Limits::default()
    };
    let (engine, _defs) = engine_of(&yaml, limits);

    // Time.
    let got = get(
        &engine,
        &format!(
            "{}/fhir/drug-labels/MedicinalProductDefinition?name=Painaway",
            engine.base
        ),
    )
    .await;
    assert_outcome(&got, 504, &[]);
    assert_eq!(got.json()["issue"][0]["code"], "timeout");
    assert_eq!(api.calls(), 1);

    // Body.
    let big = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": format!("Patient?identifier={}", "x".repeat(4096))}}]
    });
    let got = engine
        .post(format!("{}/fhir/proxy", engine.base))
        .header("content-type", "application/fhir+json")
        .body(big.to_string())
        .send()
        .await;
    assert_outcome(&got, 413, &[]);
    assert_eq!(fhir.calls(), 0);
    // A small batch still goes through.
    let small = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": "Patient"}}]
    });
    let got = engine
        .post(format!("{}/fhir/proxy", engine.base))
        .body(small.to_string())
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(fhir.calls(), 1);

    // Headers.
    let got = engine
        .get(format!("{}/fhir/proxy/Patient", engine.base))
        .header("x-filler", "f".repeat(4096))
        .send()
        .await;
    assert_eq!(got.status, 431, "{}", got.text);
    assert_eq!(got.json()["resourceType"], "OperationOutcome");
    assert_eq!(fhir.calls(), 1);
}

// ------------------------------------------------------------------------------------------
// 9. The binary: graceful shutdown, and refusing invalid definitions
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_finishes_in_flight_requests_on_sigterm_and_refuses_invalid_definitions() {
    let api = label_api().await;
    api.delay(Duration::from_millis(500));
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("labels.yaml"),
        drug_labels_yaml(&api.url, ""),
    )
    .expect("write");
    let state = tempfile::tempdir().expect("tempdir");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.arg("serve")
        .arg(dir.path())
        .arg("--state-dir")
        .arg(state.path())
        .env_remove("ENGINE_PUBLIC_URL")
        .env_remove("ENGINE_REQUEST_TIMEOUT")
        .env_remove("ENGINE_SHUTDOWN_GRACE");
    let mut server = ServeProcess::start(cmd, Duration::from_secs(10)).await;
    let pid = server.child.id().expect("a pid");
    let base = server.base.clone();
    let c = client(CLIENT_TIMEOUT);

    // Up: /healthz answers.
    let up = async {
        loop {
            if let Ok(r) = c.get(format!("{base}/healthz")).send().await
                && r.status() == 200
            {
                return;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("the engine exited early: {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), up)
        .await
        .expect("/healthz answers");

    // A request in flight while SIGTERM arrives.
    let in_flight = tokio::spawn({
        let c = c.clone();
        let url = format!("{base}/fhir/drug-labels/MedicinalProductDefinition?name=Painaway");
        async move { send(c.get(url)).await }
    });
    tokio::time::timeout(Duration::from_secs(5), async {
        while api.calls() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the request reaches the stand-in");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());

    let got = tokio::time::timeout(CLIENT_TIMEOUT, in_flight)
        .await
        .expect("the in-flight request is answered")
        .expect("the request task");
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json()["total"], 2);

    let (status, log) = server.exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{log}");

    // Invalid definitions: exit 1 with the diagnostics on stderr.
    let bad = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        bad.path().join("broken.yaml"),
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: broken }
spec:
  strategy: pull
  sources: [no-such-source]
  pull:
    resources:
      - type: Patient
        read: {}
"#,
    )
    .expect("write");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .arg("serve")
        .arg(bad.path())
        .args(["--listen", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(state.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the engine starts");
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("the engine exits on invalid definitions")
        .expect("exit status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("broken.yaml"), "{stderr}");
    assert!(
        stderr.contains("no Source named `no-such-source`"),
        "{stderr}"
    );
    assert!(stderr.contains("not starting"), "{stderr}");
}
