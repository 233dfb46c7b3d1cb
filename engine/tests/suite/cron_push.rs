//! End-to-end tests of cron runs and push endpoints: the engine (its `Runner`, its router called
//! in-process with push drainers and cron schedules, or the `engine` binary) between stand-in
//! servers on 127.0.0.1 written here as small axum apps with in-memory state:
//!
//! - a FHIR *source* (`fhir_standin::FhirSource`) answering
//!   `GET /{Type}?_count=N[&_lastUpdated=gtX]` with `searchset` Bundles paged through absolute
//!   `next` links, counting calls and calls in flight, and able to be slow or to fail;
//! - a FHIR *sink* applying `transaction` and `batch` Bundles of `PUT Type/id` and
//!   `PUT Type?identifier=system|value` to a store, refusing resources marked
//!   `"invalid": true` with an `OperationOutcome`, switchable down (503), counting POSTs and
//!   recording the order of writes;
//! - a JSON API for `fetch` connectors.
//!
//! Every wait is a poll with a deadline; no sleep stands for an assertion of speed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{TimeZone, Utc};
use engine::runtime::clock::Clock;
use engine::runtime::engine::{Engine, Limits};
use engine::runtime::run::Stage;
use serde_json::{Value, json};

use crate::engine_router::{EngineRouter, open_admin, open_engine};
use crate::engine_under_test::{
    Drainer, Exit, assert_searched_from_watermarks, definitions, dirs_in, engine_run_command,
    exit_of, load, patient_payload, run_with_deadline, runner_with_sink_dir, signed_push,
    wait_until, watermarks,
};
use crate::fhir_resources::{instant, key_of, references, without_meta};
use crate::fhir_standin::{FhirSource, fhir_json, operation_outcome};
use crate::local_http::{Got, assert_outcome, bind, client, dead_url, send, spawn_app};

/// Longest any single HTTP request of a test may take before the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one cron run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a run of the `engine` binary may take before the test fails.
const BINARY_TIMEOUT: Duration = Duration::from_secs(30);
/// The HMAC secret of the push connectors.
const SECRET: &str = "push-secret-0123456789abcdef";

// ------------------------------------------------------------------------------------------
// Stand-in FHIR sink
// ------------------------------------------------------------------------------------------

#[derive(Default)]
struct Store {
    /// `Type/id` to the stored resource (with the sink's own `meta`).
    resources: BTreeMap<String, Value>,
    /// `Type/id` of every applied write, in order.
    applied: Vec<String>,
    /// Writes per `Type/id`.
    writes: HashMap<String, usize>,
    /// Writes of a resource whose reference did not resolve yet when it was written.
    dangling: Vec<String>,
    /// Ids given to resources created by a conditional update.
    created: u64,
}

struct SinkInner {
    store: Mutex<Store>,
    posts: AtomicUsize,
    refused: AtomicUsize,
    down: AtomicBool,
    /// Time taken to answer each POST.
    delay_ms: AtomicU64,
    /// `type` and number of entries of every Bundle received.
    bundles: Mutex<Vec<(String, usize)>>,
}

#[derive(Clone)]
struct FhirSink {
    url: String,
    inner: Arc<SinkInner>,
}

impl FhirSink {
    async fn start() -> FhirSink {
        let (listener, url) = bind().await;
        let inner = Arc::new(SinkInner {
            store: Mutex::new(Store::default()),
            posts: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            bundles: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/", post(sink_post))
            .with_state(inner.clone());
        spawn_app(listener, app);
        FhirSink { url, inner }
    }

    fn posts(&self) -> usize {
        self.inner.posts.load(Ordering::SeqCst)
    }

    /// POSTs answered 503 because the sink was down.
    fn refused(&self) -> usize {
        self.inner.refused.load(Ordering::SeqCst)
    }

    fn down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
    }

    fn delay(&self, d: Duration) {
        self.inner
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.inner.store.lock().expect("sink store")
    }

    fn count(&self) -> usize {
        self.store().resources.len()
    }

    fn get(&self, key: &str) -> Option<Value> {
        self.store().resources.get(key).cloned()
    }

    fn bundles(&self) -> Vec<(String, usize)> {
        self.inner.bundles.lock().expect("sink log").clone()
    }
}

/// Where a `PUT` goes.
enum Target {
    Id {
        rtype: String,
        id: String,
    },
    Identifier {
        rtype: String,
        system: String,
        value: String,
    },
}

/// Checks one entry of a Bundle; the error is an `OperationOutcome`.
fn check_entry(e: &Value) -> Result<(Target, Value), Value> {
    let bad = |m: String| operation_outcome("invalid", &m);
    let req = &e["request"];
    let url = req["url"].as_str().unwrap_or("");
    if req["method"] != "PUT" {
        return Err(bad(format!("only PUT is supported, not {}", req["method"])));
    }
    let r = e["resource"].clone();
    let rtype = r["resourceType"].as_str().unwrap_or("").to_owned();
    let target = match url.split_once('?') {
        Some((t, q)) => {
            let pairs: Vec<(String, String)> = url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect();
            let [(k, v)] = pairs.as_slice() else {
                return Err(bad(format!("`{url}`: one search parameter expected")));
            };
            let Some((system, value)) = v.split_once('|').filter(|_| k == "identifier") else {
                return Err(bad(format!("`{url}`: identifier=system|value expected")));
            };
            let has = r["identifier"].as_array().is_some_and(|ids| {
                ids.iter()
                    .any(|i| i["system"] == system && i["value"] == value)
            });
            if !has {
                return Err(bad(format!("`{url}`: the resource lacks that identifier")));
            }
            Target::Identifier {
                rtype: t.to_owned(),
                system: system.to_owned(),
                value: value.to_owned(),
            }
        }
        None => {
            let Some((t, id)) = url.split_once('/').filter(|(_, id)| !id.is_empty()) else {
                return Err(bad(format!("`{url}` is not Type/id")));
            };
            if r["id"] != id {
                return Err(bad(format!("`{url}`: the resource id is {}", r["id"])));
            }
            Target::Id {
                rtype: t.to_owned(),
                id: id.to_owned(),
            }
        }
    };
    let t = match &target {
        Target::Id { rtype, .. } | Target::Identifier { rtype, .. } => rtype,
    };
    if *t != rtype {
        return Err(bad(format!("`{url}`: the resource is a {rtype}")));
    }
    if r["invalid"] == true {
        return Err(bad(format!(
            "{}: the element `invalid` is not allowed (refused by the sink stand-in)",
            key_of(&r)
        )));
    }
    Ok((target, r))
}

/// Applies a checked write; gives the entry's `response`.
fn apply(store: &mut Store, target: Target, mut r: Value) -> Value {
    let (rtype, id) = match target {
        Target::Id { rtype, id } => (rtype, id),
        Target::Identifier {
            rtype,
            system,
            value,
        } => {
            let found = store.resources.values().find(|x| {
                x["resourceType"] == rtype.as_str()
                    && x["identifier"].as_array().is_some_and(|ids| {
                        ids.iter()
                            .any(|i| i["system"] == system.as_str() && i["value"] == value.as_str())
                    })
            });
            let id = match found {
                Some(x) => x["id"].as_str().unwrap_or("").to_owned(),
                None => {
                    store.created += 1;
                    format!("created-{}", store.created)
                }
            };
            (rtype, id)
        }
    };
    let key = format!("{rtype}/{id}");
    let mut refs = Vec::new();
    references(&r, &mut refs);
    for reference in refs {
        if reference != key && !store.resources.contains_key(&reference) {
            store.dangling.push(format!("{key} -> {reference}"));
        }
    }
    let version = store
        .resources
        .get(&key)
        .and_then(|x| x["meta"]["versionId"].as_str())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    let existed = store.resources.contains_key(&key);
    r["id"] = json!(id);
    r["meta"] = json!({"versionId": version.to_string(), "lastUpdated": Utc::now().to_rfc3339()});
    store.resources.insert(key.clone(), r);
    store.applied.push(key.clone());
    *store.writes.entry(key.clone()).or_default() += 1;
    json!({
        "status": if existed { "200 OK" } else { "201 Created" },
        "location": format!("{key}/_history/{version}"),
        "etag": format!("W/\"{version}\"")
    })
}

async fn sink_post(State(s): State<Arc<SinkInner>>, body: Bytes) -> Response {
    s.posts.fetch_add(1, Ordering::SeqCst);
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if s.down.load(Ordering::SeqCst) {
        s.refused.fetch_add(1, Ordering::SeqCst);
        return fhir_json(
            503,
            &operation_outcome("transient", "the sink stand-in is down"),
        );
    }
    let Ok(bundle) = serde_json::from_slice::<Value>(&body) else {
        return fhir_json(400, &operation_outcome("structure", "the body is not JSON"));
    };
    let kind = bundle["type"].as_str().unwrap_or("").to_owned();
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    s.bundles
        .lock()
        .expect("sink log")
        .push((kind.clone(), entries.len()));
    let mut store = s.store.lock().expect("sink store");
    match kind.as_str() {
        "transaction" => {
            // All or nothing: every entry is checked before any is applied.
            let mut checked = Vec::new();
            for e in &entries {
                match check_entry(e) {
                    Ok(c) => checked.push(c),
                    Err(outcome) => return fhir_json(400, &outcome),
                }
            }
            let answers: Vec<Value> = checked
                .into_iter()
                .map(|(t, r)| json!({"response": apply(&mut store, t, r)}))
                .collect();
            fhir_json(
                200,
                &json!({"resourceType": "Bundle", "type": "transaction-response", "entry": answers}),
            )
        }
        "batch" => {
            let answers: Vec<Value> = entries
                .iter()
                .map(|e| match check_entry(e) {
                    Ok((t, r)) => json!({"response": apply(&mut store, t, r)}),
                    Err(outcome) => json!({"response": {"status": "400", "outcome": outcome}}),
                })
                .collect();
            fhir_json(
                200,
                &json!({"resourceType": "Bundle", "type": "batch-response", "entry": answers}),
            )
        }
        other => fhir_json(
            400,
            &operation_outcome(
                "invalid",
                &format!("a transaction or batch Bundle is expected, not `{other}`"),
            ),
        ),
    }
}

// ------------------------------------------------------------------------------------------
// Stand-in JSON API (for `fetch`)
// ------------------------------------------------------------------------------------------

struct JsonInner {
    items: Mutex<Vec<Value>>,
    queries: Mutex<Vec<String>>,
}

#[derive(Clone)]
struct JsonApi {
    url: String,
    inner: Arc<JsonInner>,
}

impl JsonApi {
    async fn start(items: Vec<Value>) -> JsonApi {
        let (listener, url) = bind().await;
        let inner = Arc::new(JsonInner {
            items: Mutex::new(items),
            queries: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/items", get(json_items))
            .with_state(inner.clone());
        spawn_app(listener, app);
        JsonApi { url, inner }
    }

    fn add(&self, item: Value) {
        self.inner.items.lock().expect("items").push(item);
    }

    fn queries(&self) -> Vec<String> {
        self.inner.queries.lock().expect("log").clone()
    }
}

/// `{"items": [...]}`, only those with `updated` greater than `since` when it is given.
async fn json_items(State(s): State<Arc<JsonInner>>, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    s.queries.lock().expect("log").push(query.clone());
    let since: Option<i64> = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "since")
        .and_then(|(_, v)| v.parse().ok());
    let items: Vec<Value> = s
        .items
        .lock()
        .expect("items")
        .iter()
        .filter(|i| since.is_none_or(|s| i["updated"].as_i64().is_some_and(|u| u > s)))
        .cloned()
        .collect();
    axum::Json(json!({"items": items})).into_response()
}

// ------------------------------------------------------------------------------------------
// The engine under test
// ------------------------------------------------------------------------------------------

/// Runs `engine run NAME -d DEFS --state-dir STATE --sink-dir SINK [--dry-run]`.
async fn engine_run(defs: &Path, name: &str, state: &Path, sink: &Path, dry_run: bool) -> Exit {
    let mut cmd = engine_run_command(defs, name, state);
    cmd.arg("--sink-dir").arg(sink);
    if dry_run {
        cmd.arg("--dry-run");
    }
    exit_of(cmd, BINARY_TIMEOUT).await
}

/// Sends a push signed with `secret` at `ts`, with an optional idempotency key.
async fn push(
    to: &EngineRouter,
    url: &str,
    secret: &str,
    ts: i64,
    body: &[u8],
    key: Option<&str>,
) -> Got {
    let mut req = signed_push(to, url, secret, ts, body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    req.send().await
}

fn sink_doc(name: &str, url: &str, mode: &str, retries: u32) -> String {
    format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata: {{ name: {name} }}
spec:
  fhir: {{ url: \"{url}\", version: R4, batchSize: 100, mode: {mode}, retries: {retries}, timeout: 5s }}
---
"
    )
}

fn sync_doc(name: &str, source_url: &str, sink: &str, types: &str, page_size: u32) -> String {
    format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: {name} }}
spec:
  strategy: cron
  schedule: {{ cron: \"0 2 * * *\" }}
  source: {{ type: fhir, url: \"{source_url}\", retries: 1, timeout: 5s }}
  sync: {{ resourceTypes: [{types}], incremental: true, pageSize: {page_size} }}
  sink: {sink}
---
"
    )
}

// ------------------------------------------------------------------------------------------
// 1. FHIR-to-FHIR sync
// ------------------------------------------------------------------------------------------

fn patient(i: usize, t: i64) -> Value {
    json!({
        "resourceType": "Patient",
        "id": format!("pat-{i:04}"),
        "meta": {"versionId": "3", "lastUpdated": instant(t), "source": "#source"},
        "active": true,
        "name": [{"family": format!("Family{i}"), "given": ["Ann"]}],
        "birthDate": "1970-01-01"
    })
}

fn organization(i: usize, t: i64) -> Value {
    json!({
        "resourceType": "Organization",
        "id": format!("org-{i:04}"),
        "meta": {"versionId": "1", "lastUpdated": instant(t)},
        "name": format!("Clinic {i}")
    })
}

fn observation(i: usize, t: i64) -> Value {
    json!({
        "resourceType": "Observation",
        "id": format!("obs-{i:04}"),
        "meta": {"versionId": "1", "lastUpdated": instant(t)},
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": format!("Patient/pat-{:04}", (i * 7) % 400)},
        "performer": [{"reference": format!("Organization/org-{:04}", i % 300)}],
        "valueQuantity": {"value": 60 + (i % 40), "unit": "kg"}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_sync_copies_1100_resources_in_few_calls_then_only_what_changed() {
    let source = FhirSource::start().await;
    let sink = FhirSink::start().await;
    let mut t = 0;
    // Observations are listed first in `resourceTypes` and read first, so the sink sees
    // them after their Patients and Organizations only if the engine orders the writes.
    for i in 0..400 {
        t += 1;
        source.put(observation(i, t));
    }
    for i in 0..400 {
        t += 1;
        source.put(patient(i, t));
    }
    for i in 0..300 {
        t += 1;
        source.put(organization(i, t));
    }
    let yaml = sink_doc("store", &sink.url, "transaction", 3)
        + &sync_doc(
            "copy",
            &source.url,
            "store",
            "Observation, Patient, Organization",
            100,
        );
    let defs = definitions(&yaml);
    let state = tempfile::tempdir().expect("state");
    let ndjson = tempfile::tempdir().expect("ndjson");

    // First run: everything.
    let r1 = runner_with_sink_dir(&load(defs.path()), "copy", state.path(), ndjson.path());
    let report = run_with_deadline(&r1, RUN_TIMEOUT).await;
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!(report.records_read, 1100);
    assert_eq!(report.resources_written, 1100);
    assert_eq!(
        report.source_calls,
        source.calls(),
        "the report counts source calls"
    );
    assert_eq!(
        report.sink_calls,
        sink.posts(),
        "the report counts sink calls"
    );
    let ratio = (report.source_calls + report.sink_calls) as f64 / report.resources_written as f64;
    println!(
        "calls per resource: ({} source + {} sink) / {} resources written = {ratio:.4}",
        report.source_calls, report.sink_calls, report.resources_written
    );
    assert!(ratio <= 0.05, "{ratio} calls per resource");
    assert!(
        sink.bundles()
            .iter()
            .all(|(kind, n)| kind == "transaction" && *n <= 100),
        "transactions of at most batchSize entries: {:?}",
        sink.bundles()
    );
    {
        let store = sink.store();
        assert_eq!(store.resources.len(), 1100);
        for r in source.all() {
            let got = store
                .resources
                .get(&key_of(&r))
                .unwrap_or_else(|| panic!("{} is in the sink", key_of(&r)));
            assert_eq!(without_meta(got), without_meta(&r), "{}", key_of(&r));
        }
        assert!(
            store.dangling.is_empty(),
            "resources written before those they reference: {:?}",
            &store.dangling[..store.dangling.len().min(10)]
        );
    }
    let expected_marks: BTreeMap<String, String> = ["Observation", "Patient", "Organization"]
        .iter()
        .map(|t| {
            (
                (*t).to_owned(),
                source.newest(t).expect("resources of the type"),
            )
        })
        .collect();
    assert_eq!(watermarks(state.path(), "copy"), expected_marks);
    drop(r1);

    // Five resources change at the source.
    let changed = [
        {
            let mut p = patient(3, 10_001);
            p["name"][0]["family"] = json!("Changed");
            p
        },
        {
            let mut p = patient(250, 10_002);
            p["active"] = json!(false);
            p
        },
        {
            let mut o = observation(10, 10_003);
            o["valueQuantity"]["value"] = json!(99);
            o
        },
        {
            let mut o = observation(399, 10_004);
            o["status"] = json!("amended");
            o
        },
        {
            let mut o = organization(100, 10_005);
            o["name"] = json!("Renamed clinic");
            o
        },
    ];
    for c in &changed {
        source.put(c.clone());
    }

    // Second run, by a new runner on the same state directory: only what changed.
    let before = source.requests().len();
    let posts_before = sink.posts();
    let r2 = runner_with_sink_dir(&load(defs.path()), "copy", state.path(), ndjson.path());
    let report = run_with_deadline(&r2, RUN_TIMEOUT).await;
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!(
        report.records_read, 5,
        "only the changed resources are read"
    );
    assert_eq!(report.resources_written, 5);
    let second: Vec<String> = source.requests()[before..].to_vec();
    let types: Vec<&str> = expected_marks.keys().map(String::as_str).collect();
    assert_searched_from_watermarks(&second, "", &types, &expected_marks);
    assert_eq!(sink.posts() - posts_before, 1, "5 resources in one Bundle");
    assert_eq!(sink.count(), 1100, "no duplicates");
    for c in &changed {
        let got = sink.get(&key_of(c)).expect("in the sink");
        assert_eq!(without_meta(&got), without_meta(c));
    }
    assert_eq!(
        sink.store().writes.values().filter(|n| **n == 2).count(),
        5,
        "each changed resource written twice, every other once"
    );
    assert!(sink.store().dangling.is_empty());

    // Third run: nothing changed, nothing read or written.
    let posts_before = sink.posts();
    let report = run_with_deadline(&r2, RUN_TIMEOUT).await;
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!((report.records_read, report.resources_written), (0, 0));
    assert_eq!(sink.posts(), posts_before);
}

// ------------------------------------------------------------------------------------------
// 2. `engine run`
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_run_exit_codes_outcomes_and_dry_run() {
    let source = FhirSource::start().await;
    let sink = FhirSink::start().await;
    for i in 0..5 {
        source.put(patient(i, i as i64 + 1));
    }
    let yaml = sink_doc("store", &sink.url, "transaction", 0)
        + &sync_doc("cli-sync", &source.url, "store", "Patient", 100);
    let defs = definitions(&yaml);
    let state = tempfile::tempdir().expect("state");
    let ndjson = tempfile::tempdir().expect("ndjson");

    // --dry-run: the FHIR on stdout, nothing written, no watermark.
    let out = engine_run(defs.path(), "cli-sync", state.path(), ndjson.path(), true).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let printed: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is JSON ({e}): {}", out.stdout));
    let printed = printed.as_array().expect("a list of resources");
    let mut want: Vec<Value> = source.all().iter().map(without_meta).collect();
    want.sort_by_key(key_of);
    let mut got = printed.clone();
    got.sort_by_key(key_of);
    assert_eq!(got, want, "the dry run prints what it would write");
    assert_eq!(sink.posts(), 0, "a dry run writes nothing");
    assert!(watermarks(state.path(), "cli-sync").is_empty());

    // A clean run exits 0.
    let out = engine_run(defs.path(), "cli-sync", state.path(), ndjson.path(), false).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(sink.count(), 5);
    let mark = watermarks(state.path(), "cli-sync");
    assert_eq!(mark.get("Patient"), Some(&instant(5)));

    // The sink refuses a resource: non-zero, and the server's OperationOutcome on stderr.
    let mut bad = patient(99, 100);
    bad["invalid"] = json!(true);
    source.put(bad);
    source.put(patient(98, 101));
    let out = engine_run(defs.path(), "cli-sync", state.path(), ndjson.path(), false).await;
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stderr.contains("\"OperationOutcome\"")
            && out.stderr.contains(
                "Patient/pat-0099: the element `invalid` is not allowed (refused by the sink stand-in)"
            ),
        "the server's OperationOutcome on stderr: {}",
        out.stderr
    );
    assert!(sink.get("Patient/pat-0099").is_none());
    assert_eq!(
        watermarks(state.path(), "cli-sync"),
        mark,
        "a failed run does not advance the watermark"
    );
}

// ------------------------------------------------------------------------------------------
// 3. A run that cannot read
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_that_cannot_read_fails_writes_nothing_and_keeps_its_watermark() {
    let source = FhirSource::start().await;
    let sink = FhirSink::start().await;
    for i in 0..20 {
        source.put(patient(i, i as i64 + 1));
    }
    for i in 0..10 {
        source.put(organization(i, 100 + i as i64));
    }
    let name = "reader";
    let yaml = sink_doc("store", &sink.url, "transaction", 0)
        + &sync_doc(name, &source.url, "store", "Patient, Organization", 8);
    let defs = definitions(&yaml);
    let state = tempfile::tempdir().expect("state");
    let ndjson = tempfile::tempdir().expect("ndjson");
    let model = load(defs.path());
    let r = runner_with_sink_dir(&model, name, state.path(), ndjson.path());
    let report = run_with_deadline(&r, RUN_TIMEOUT).await;
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!(sink.count(), 30);
    let marks = watermarks(state.path(), name);
    assert_eq!(marks.len(), 2, "{marks:?}");

    // Three resources change, and the source answers 500 for Organization searches.
    let mut p = patient(1, 1_000);
    p["active"] = json!(false);
    source.put(p.clone());
    let mut p2 = patient(2, 1_001);
    p2["active"] = json!(false);
    source.put(p2.clone());
    let mut o = organization(3, 1_002);
    o["name"] = json!("Moved");
    source.put(o.clone());
    source.fail(Some("Organization"), 500);
    let posts = sink.posts();
    let report = run_with_deadline(&r, RUN_TIMEOUT).await;
    assert!(!report.ok(), "a run that cannot read fails");
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.stage == Stage::Read && f.subject == "Organization"),
        "{:#?}",
        report.failures
    );
    assert_eq!(report.resources_written, 0);
    assert_eq!(sink.posts(), posts, "nothing is written");
    assert_eq!(watermarks(state.path(), name), marks, "the watermark stays");

    // The binary exits non-zero on the same failure, writing nothing.
    let out = engine_run(defs.path(), name, state.path(), ndjson.path(), false).await;
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stderr.contains("error: read Organization"),
        "{}",
        out.stderr
    );
    assert_eq!(sink.posts(), posts, "nothing is written");
    assert_eq!(watermarks(state.path(), name), marks, "the watermark stays");

    // The source down altogether (connection refused): the same, by library and binary.
    let nowhere = dead_url();
    let down_yaml = sink_doc("store", &sink.url, "transaction", 0)
        + &sync_doc(name, &nowhere, "store", "Patient, Organization", 8);
    let down_defs = definitions(&down_yaml);
    let down = runner_with_sink_dir(&load(down_defs.path()), name, state.path(), ndjson.path());
    let report = run_with_deadline(&down, RUN_TIMEOUT).await;
    assert!(!report.ok());
    assert!(
        report.failures.iter().all(|f| f.stage == Stage::Read),
        "{:#?}",
        report.failures
    );
    // Every attempt counts as a source call, refused connections and retries included.
    assert!(report.source_calls >= 2, "{}", report.source_calls);
    let out = engine_run(down_defs.path(), name, state.path(), ndjson.path(), false).await;
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert_eq!(sink.posts(), posts, "nothing is written");
    assert_eq!(watermarks(state.path(), name), marks, "the watermark stays");

    // Healed: the next run reads exactly what changed since the last successful run.
    source.heal();
    let report = run_with_deadline(&r, RUN_TIMEOUT).await;
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!(report.records_read, 3);
    assert_eq!(report.resources_written, 3);
    for c in [&p, &p2, &o] {
        assert_eq!(
            without_meta(&sink.get(&key_of(c)).expect("written")),
            without_meta(c)
        );
    }
    assert_eq!(sink.count(), 30);
}

// ------------------------------------------------------------------------------------------
// 4. The default NDJSON sink
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_fetch_writes_ndjson_files_one_resource_per_line() {
    let api = JsonApi::start(vec![
        json!({"id": "a1", "family": "Rossi", "weight": "71.5", "updated": 1}),
        json!({"id": "a2", "family": "Bianchi", "weight": "80", "updated": 2}),
        json!({"id": "a3", "family": "Verdi", "weight": "65", "updated": 3}),
    ])
    .await;
    let yaml = r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: clinic-feed }
spec:
  strategy: cron
  schedule: { cron: "0 2 * * *" }
  source: { url: "@URL@", retries: 0, timeout: 5s }
  fetch:
    request: { path: /items }
    records: $.items[*]
    incremental: { cursor: $.updated, param: since }
  mapping:
    - resourceType: Patient
      id: { $path: $.id }
      name: [ { family: { $path: $.family } } ]
    - resourceType: Observation
      id: "obs-{{record.id}}"
      status: final
      code: { text: body weight }
      subject: { $reference: Patient, $id: { $path: $.id } }
      valueQuantity: { value: { $number: { $path: $.weight } }, unit: kg }
"#
    .replace("@URL@", &api.url);
    let defs = definitions(&yaml);
    let state = tempfile::tempdir().expect("state");
    let out_dir = tempfile::tempdir().expect("ndjson");
    let r = runner_with_sink_dir(
        &load(defs.path()),
        "clinic-feed",
        state.path(),
        out_dir.path(),
    );
    let report = run_with_deadline(&r, RUN_TIMEOUT).await;
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!((report.records_read, report.resources_written), (3, 6));

    let lines = |t: &str| -> Vec<Value> {
        let text = std::fs::read_to_string(out_dir.path().join(format!("{t}.ndjson")))
            .unwrap_or_else(|e| panic!("{t}.ndjson: {e}"));
        assert!(text.ends_with('\n'), "{t}.ndjson ends with a newline");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a JSON line ({e}): {l}")))
            .collect()
    };
    let patients = lines("Patient");
    assert_eq!(
        patients,
        vec![
            json!({"resourceType": "Patient", "id": "a1", "name": [{"family": "Rossi"}]}),
            json!({"resourceType": "Patient", "id": "a2", "name": [{"family": "Bianchi"}]}),
            json!({"resourceType": "Patient", "id": "a3", "name": [{"family": "Verdi"}]}),
        ]
    );
    let observations = lines("Observation");
    assert_eq!(observations.len(), 3);
    assert_eq!(
        observations[0],
        json!({
            "resourceType": "Observation", "id": "obs-a1", "status": "final",
            "code": {"text": "body weight"}, "subject": {"reference": "Patient/a1"},
            "valueQuantity": {"value": 71.5, "unit": "kg"}
        })
    );
    let files: BTreeSet<String> = std::fs::read_dir(out_dir.path())
        .expect("the sink directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files,
        BTreeSet::from(["Observation.ndjson".to_owned(), "Patient.ndjson".to_owned()])
    );
    assert_eq!(
        watermarks(state.path(), "clinic-feed").get("records"),
        Some(&"3".to_owned())
    );

    // Next run: only records after the watermark, appended as whole lines.
    api.add(json!({"id": "a4", "family": "Neri", "weight": "90", "updated": 4}));
    let report = run_with_deadline(&r, RUN_TIMEOUT).await;
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!((report.records_read, report.resources_written), (1, 2));
    assert_eq!(api.queries().last().map(String::as_str), Some("since=3"));
    let patients = lines("Patient");
    assert_eq!(patients.len(), 4);
    assert_eq!(patients[3]["id"], "a4");
    assert_eq!(lines("Observation").len(), 4);
}

// ------------------------------------------------------------------------------------------
// 5. Push, sync mode
// ------------------------------------------------------------------------------------------

fn push_yaml(name: &str, sink_url: &str, mode: &str, extra: &str) -> String {
    sink_doc("store", sink_url, "batch", 0)
        + &format!(
            "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: {name} }}
spec:
  strategy: push
  sink: store
  push:
    auth: {{ hmac: {{ secret: \"{SECRET}\", tolerance: 60s }} }}
    mode: {mode}
{extra}"
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_sync_authenticates_bounds_deduplicates_dead_letters_and_reports_sink_down() {
    let sink = FhirSink::start().await;
    let yaml = push_yaml(
        "admissions",
        &sink.url,
        "sync",
        "    maxBody: 1KiB
  tables:
    sex: { map: { M: male, F: female } }
  mapping:
    resourceType: Patient
    id: { $path: $.id }
    name: [ { family: { $path: $.family } } ]
    gender: { $translate: { $path: $.sex }, $table: sex }
",
    );
    let (served, _defs, _state) = open_engine(&yaml, CLIENT_TIMEOUT);
    let url = format!("{}/push/admissions", served.base);
    let now = Utc::now().timestamp();

    // Correctly signed: written.
    let body1 = br#"{"id":"adm-1","family":"Rossi","sex":"F"}"#;
    let got = push(&served, &url, SECRET, now, body1, None).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json()["status"], "written");
    assert_eq!(
        without_meta(&sink.get("Patient/adm-1").expect("written to the sink")),
        json!({"resourceType": "Patient", "id": "adm-1", "name": [{"family": "Rossi"}], "gender": "female"})
    );
    let posts = sink.posts();
    assert_eq!(posts, 1);

    // Refused, writing nothing: a bad signature, a tampered body, an old timestamp, too big.
    let body2 = br#"{"id":"adm-2","family":"Bianchi","sex":"M"}"#;
    let got = push(&served, &url, "another-secret-0123456789", now, body2, None).await;
    assert_outcome(&got, 401, &[]);
    let tampered = served
        .post(&url)
        .header("content-type", "application/json")
        .header("X-Timestamp", now.to_string())
        .header(
            "X-Signature",
            engine::runtime::push::sign(SECRET, now, body1),
        )
        .body(body2.to_vec())
        .send()
        .await;
    assert_outcome(&tampered, 401, &[]);
    let got = push(&served, &url, SECRET, now - 600, body2, None).await;
    assert_outcome(&got, 401, &[]);
    let big = serde_json::to_vec(&json!({"id": "adm-big", "family": "x".repeat(2000), "sex": "F"}))
        .expect("JSON");
    let got = push(&served, &url, SECRET, now, &big, None).await;
    assert_outcome(&got, 413, &[]);
    assert_eq!(sink.posts(), posts, "refused pushes write nothing");
    assert!(sink.get("Patient/adm-2").is_none() && sink.get("Patient/adm-big").is_none());

    // Replays: the same delivery, the same body signed later, the same idempotency key.
    let got = push(&served, &url, SECRET, now, body1, None).await;
    assert_eq!(
        (got.status, got.json()["status"].clone()),
        (200, json!("duplicate"))
    );
    let got = push(&served, &url, SECRET, now + 1, body1, None).await;
    assert_eq!(
        (got.status, got.json()["status"].clone()),
        (200, json!("duplicate"))
    );
    let body3 = br#"{"id":"adm-3","family":"Verdi","sex":"M"}"#;
    let got = push(&served, &url, SECRET, now, body3, Some("delivery-77")).await;
    assert_eq!(
        (got.status, got.json()["status"].clone()),
        (200, json!("written"))
    );
    let body4 = br#"{"id":"adm-4","family":"Neri","sex":"F"}"#;
    let got = push(&served, &url, SECRET, now, body4, Some("delivery-77")).await;
    assert_eq!(
        (got.status, got.json()["status"].clone()),
        (200, json!("duplicate"))
    );
    assert_eq!(sink.posts(), posts + 1, "replays are not written again");
    assert!(sink.get("Patient/adm-3").is_some() && sink.get("Patient/adm-4").is_none());
    assert_eq!(sink.store().writes.get("Patient/adm-1"), Some(&1));

    // A payload the mapping cannot map: 422, and a dead letter.
    let posts = sink.posts();
    let body5 = br#"{"id":"adm-5","family":"Gialli","sex":"Q"}"#;
    let got = push(&served, &url, SECRET, now, body5, None).await;
    assert_outcome(&got, 422, &[]);
    assert_eq!(sink.posts(), posts);
    let dead = served
        .get(format!(
            "{}/connectors/admissions/dead-letters",
            served.base
        ))
        .send()
        .await;
    assert_eq!(dead.status, 200, "{}", dead.text);
    let dead = dead.json();
    let dead = dead.as_array().expect("a list");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("mapping failed")),
        "{dead:?}"
    );
    let shown = served
        .get(format!("{}/connectors/admissions", served.base))
        .send()
        .await;
    assert_eq!(shown.json()["push"]["deadLetters"], 1, "{}", shown.text);

    // The sink down: 503 with Retry-After, nothing written; sent again later, written.
    sink.down(true);
    let body6 = br#"{"id":"adm-6","family":"Blu","sex":"M"}"#;
    let got = push(&served, &url, SECRET, now, body6, None).await;
    assert_outcome(&got, 503, &[]);
    assert!(!got.header("retry-after").is_empty(), "{got:?}");
    assert!(sink.get("Patient/adm-6").is_none());
    sink.down(false);
    let got = push(&served, &url, SECRET, Utc::now().timestamp(), body6, None).await;
    assert_eq!(
        (got.status, got.json()["status"].clone()),
        (200, json!("written")),
        "{}",
        got.text
    );
    assert!(sink.get("Patient/adm-6").is_some());
}

// ------------------------------------------------------------------------------------------
// 6. Push, queued mode
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_queued_acknowledges_500_and_delivers_each_exactly_once_across_a_sink_outage() {
    let sink = FhirSink::start().await;
    let yaml = push_yaml("queued-feed", &sink.url, "queued", "");
    let (served, _defs, _state) = open_engine(&yaml, CLIENT_TIMEOUT);
    let ep = served.engine.pushes["queued-feed"].clone();
    let drainer = Drainer::start(ep);
    let url = format!("{}/push/queued-feed", served.base);

    let ids: Vec<String> = (0..500).map(|i| format!("q-{i:04}")).collect();
    let mut acknowledged = Vec::new();
    for (chunk_no, chunk) in ids.chunks(10).enumerate() {
        let sent = chunk_no * 10;
        if sent == 150 {
            sink.down(true);
        }
        if sent == 350 {
            // The drainer has met the outage (payloads were queued while the sink was down).
            let s = sink.clone();
            wait_until(
                Duration::from_secs(10),
                "the drainer meets the outage",
                move || s.refused() > 0,
            )
            .await;
            sink.down(false);
        }
        let answers = futures_util::future::join_all(chunk.iter().map(|id| {
            let body = patient_payload(id);
            let served = &served;
            let url = url.clone();
            async move { push(served, &url, SECRET, Utc::now().timestamp(), &body, None).await }
        }))
        .await;
        for (id, got) in chunk.iter().zip(answers) {
            assert_eq!(got.status, 202, "{id}: {}", got.text);
            assert_eq!(got.json()["status"], "queued");
            acknowledged.push(id.clone());
        }
    }
    assert_eq!(acknowledged.len(), 500);

    let s = sink.clone();
    wait_until(
        Duration::from_secs(30),
        "the drainer catches up",
        move || s.count() >= 500,
    )
    .await;
    let e = served.engine.pushes["queued-feed"].clone();
    wait_until(Duration::from_secs(10), "the queue empties", move || {
        e.depths().0 == 0
    })
    .await;
    println!(
        "queued: {} sink POSTs, {} refused while down",
        sink.posts(),
        sink.refused()
    );
    {
        let store = sink.store();
        let want: BTreeSet<String> = acknowledged
            .iter()
            .map(|id| format!("Patient/{id}"))
            .collect();
        let have: BTreeSet<String> = store.resources.keys().cloned().collect();
        let missing: Vec<&String> = want.difference(&have).collect();
        let extra: Vec<&String> = have.difference(&want).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "missing {missing:?}, extra {extra:?}"
        );
        let twice: Vec<(&String, &usize)> = store.writes.iter().filter(|(_, n)| **n != 1).collect();
        assert!(twice.is_empty(), "written more than once: {twice:?}");
        for id in &acknowledged {
            let r = &store.resources[&format!("Patient/{id}")];
            assert_eq!(
                without_meta(r),
                serde_json::from_slice::<Value>(&patient_payload(id)).expect("JSON")
            );
        }
    }
    let shown = served
        .get(format!("{}/connectors/queued-feed", served.base))
        .send()
        .await;
    assert_eq!(shown.json()["push"]["queued"], 0, "{}", shown.text);
    assert_eq!(shown.json()["push"]["deadLetters"], 0, "{}", shown.text);
    drainer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_queue_survives_a_restart_and_drains_in_order() {
    let sink = FhirSink::start().await;
    let yaml = push_yaml("durable-feed", &sink.url, "queued", "");
    let defs = definitions(&yaml);
    let state = tempfile::tempdir().expect("state");

    // With the sink down, ten payloads are acknowledged and the drainer cannot write them.
    sink.down(true);
    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    let drainer = Drainer::start(served.engine.pushes["durable-feed"].clone());
    let url = format!("{}/push/durable-feed", served.base);
    let ids: Vec<String> = (0..10).map(|i| format!("d-{i:02}")).collect();
    for id in &ids {
        let got = push(
            &served,
            &url,
            SECRET,
            Utc::now().timestamp(),
            &patient_payload(id),
            None,
        )
        .await;
        assert_eq!(got.status, 202, "{}", got.text);
    }
    let s = sink.clone();
    wait_until(
        Duration::from_secs(10),
        "the drainer tries the sink",
        move || s.refused() > 0,
    )
    .await;
    assert_eq!(
        served.engine.pushes["durable-feed"].depths(),
        (10, 0),
        "the queue depth counts the payloads as they are queued"
    );

    // The engine stops: its drainer, then the engine.
    drainer.stop().await;
    drop(served);
    assert_eq!(sink.count(), 0);

    // A new engine on the same state directory finds the ten payloads queued.
    let served = EngineRouter::with_limits(
        load(defs.path()),
        state.path(),
        open_admin(),
        CLIENT_TIMEOUT,
    );
    let shown = served
        .get(format!("{}/connectors/durable-feed", served.base))
        .send()
        .await;
    assert_eq!(shown.json()["push"]["queued"], 10, "{}", shown.text);
    sink.down(false);
    let drainer = Drainer::start(served.engine.pushes["durable-feed"].clone());
    let s = sink.clone();
    wait_until(
        Duration::from_secs(15),
        "the new drainer delivers",
        move || s.count() >= 10,
    )
    .await;
    let applied = sink.store().applied.clone();
    let want: Vec<String> = ids.iter().map(|id| format!("Patient/{id}")).collect();
    assert_eq!(applied, want, "every payload once, in order");
    let e = served.engine.pushes["durable-feed"].clone();
    wait_until(Duration::from_secs(5), "the queue empties", move || {
        e.depths().0 == 0
    })
    .await;
    drainer.stop().await;
}

// ------------------------------------------------------------------------------------------
// 7. Cron schedule
// ------------------------------------------------------------------------------------------

/// On paused tokio time, with the engine's clock following it: the schedule fires every
/// second of that clock, and no test waits on the wall clock.
#[tokio::test(start_paused = true)]
async fn schedule_skips_ticks_while_a_slow_run_goes_and_never_overlaps() {
    let source = FhirSource::start().await;
    source.put(patient(1, 1));
    source.delay(Duration::from_millis(1500));
    let yaml = format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: every-second }}
spec:
  strategy: cron
  schedule: {{ cron: \"* * * * * *\" }}
  source: {{ type: fhir, url: \"{}\", retries: 0, timeout: 10s }}
  sync: {{ resourceTypes: [Patient] }}
",
        source.url
    );
    let defs = definitions(&yaml);
    let state = tempfile::tempdir().expect("state");
    let start = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("time");
    let engine = Engine::with_clock(
        Arc::new(load(defs.path())),
        Limits::default(),
        &dirs_in(state.path()),
        Clock::following_tokio(start),
    )
    .expect("an engine");
    let job = engine.crons["every-second"].clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let scheduler = engine
        .tasks
        .spawn(job.clone().schedule(stopped, engine.tasks.clone()));

    let (j, s) = (job.clone(), source.clone());
    wait_until(
        Duration::from_secs(10),
        "two runs and two skipped ticks",
        move || {
            let status = j.status();
            s.calls() >= 2 && status["skippedTicks"].as_u64().unwrap_or(0) >= 2
        },
    )
    .await;
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), scheduler)
        .await
        .expect("the schedule stops")
        .expect("the schedule ends cleanly");
    let j = job.clone();
    wait_until(Duration::from_secs(5), "the last run ends", move || {
        !j.is_running()
    })
    .await;
    let status = job.status();
    println!("schedule status: {status}");
    assert!(status["skippedTicks"].as_u64().unwrap_or(0) > 0, "{status}");
    assert!(status["lastRun"].is_object(), "{status}");
    assert_eq!(
        source.max_in_flight(),
        1,
        "the source saw two calls at once: runs overlapped"
    );
    assert!(
        std::fs::read_to_string(state.path().join("ndjson").join("Patient.ndjson"))
            .is_ok_and(|t| t.lines().count() >= 1),
        "the runs wrote to the default NDJSON sink"
    );
}

/// A run started by `POST /connectors/{name}/run` is not cut by a shutdown: the sink answers
/// slowly, the shutdown comes while the run writes, and `serve` returns only once the write
/// reached the sink and the watermark is saved (well within the grace period).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_run_on_demand_finish_its_write_and_save_its_watermark() {
    let source = FhirSource::start().await;
    source.put(patient(1, 1));
    let sink = FhirSink::start().await;
    sink.delay(Duration::from_secs(2));
    let yaml = sink_doc("slow", &sink.url, "transaction", 0)
        + &sync_doc("on-demand", &source.url, "slow", "Patient", 50);
    let defs = definitions(&yaml);
    let state = tempfile::tempdir().expect("state");
    let built = Engine::new(
        Arc::new(load(defs.path())),
        open_admin(),
        &dirs_in(state.path()),
    )
    .expect("an engine");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port on 127.0.0.1");
    let base = format!("http://{}", listener.local_addr().expect("its address"));
    let (shut_down, shutdown) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        engine::http::server::serve(
            built,
            listener,
            engine::http::server::Stop {
                grace: Duration::from_secs(60),
                delay: Duration::ZERO,
            },
            false,
            None,
            async {
                let _ = shutdown.await;
            },
        )
        .await
    });
    let c = client(CLIENT_TIMEOUT);
    let up = tokio::time::Instant::now() + Duration::from_secs(10);
    while send(c.get(format!("{base}/healthz"))).await.status != 200 {
        assert!(tokio::time::Instant::now() < up, "the engine serves");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let got = send(c.post(format!("{base}/connectors/on-demand/run"))).await;
    assert_eq!(got.status, 202, "{}", got.text);
    let s = sink.clone();
    wait_until(Duration::from_secs(10), "the run writes", move || {
        s.posts() >= 1
    })
    .await;
    assert_eq!(sink.count(), 0, "the sink is still answering the write");
    let _ = shut_down.send(());
    tokio::time::timeout(Duration::from_secs(30), serving)
        .await
        .expect("serve returns within the grace period")
        .expect("serve ends cleanly")
        .expect("serve stops without error");

    assert!(
        sink.get("Patient/pat-0001").is_some(),
        "the run's write reached the sink before serve returned"
    );
    assert_eq!(
        watermarks(state.path(), "on-demand").get("Patient"),
        Some(&instant(1)),
        "the run saved its watermark before serve returned"
    );
}

// ------------------------------------------------------------------------------------------
// Beyond the list: concurrent replays, and writes by identifier
// ------------------------------------------------------------------------------------------

/// A sender that times out and retries while the first delivery is still being written sends
/// the same delivery twice at once: it must still be written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_sync_concurrent_replays_are_written_once() {
    let sink = FhirSink::start().await;
    sink.delay(Duration::from_millis(500));
    let yaml = push_yaml("slow-sync", &sink.url, "sync", "");
    let defs = definitions(&yaml);
    let state = tempfile::tempdir().expect("state");
    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    let url = format!("{}/push/slow-sync", served.base);
    let now = Utc::now().timestamp();

    // The same body twice at once.
    let body = patient_payload("twice-1");
    let (a, b) = tokio::join!(
        push(&served, &url, SECRET, now, &body, None),
        push(&served, &url, SECRET, now, &body, None)
    );
    let same_body = (
        [&a, &b]
            .iter()
            .filter(|g| g.status == 200 && g.json()["status"] == "written")
            .count(),
        sink.store()
            .writes
            .get("Patient/twice-1")
            .copied()
            .unwrap_or(0),
    );
    let same_body_answers = format!("{} {} / {} {}", a.status, a.text, b.status, b.text);

    // Two bodies with the same idempotency key at once.
    let (body_a, body_b) = (patient_payload("key-a"), patient_payload("key-b"));
    let (a, b) = tokio::join!(
        push(&served, &url, SECRET, now, &body_a, Some("same-key")),
        push(&served, &url, SECRET, now, &body_b, Some("same-key"))
    );
    let same_key = (
        [&a, &b]
            .iter()
            .filter(|g| g.status == 200 && g.json()["status"] == "written")
            .count(),
        {
            let store = sink.store();
            store.writes.get("Patient/key-a").copied().unwrap_or(0)
                + store.writes.get("Patient/key-b").copied().unwrap_or(0)
        },
    );
    let same_key_answers = format!("{} {} / {} {}", a.status, a.text, b.status, b.text);

    // (deliveries answered `written`, writes in the sink) for each pair.
    assert_eq!(
        (same_body, same_key),
        ((1, 1), (1, 1)),
        "one delivery written, the replay not; same body: {same_body_answers}; same key: {same_key_answers}"
    );
}

/// A delivery whose request is cut (answered 504 after the engine's request timeout while the
/// sink is slow) is not left reserved: its write goes on to its end (a resend meanwhile is
/// told 409, "being processed"), and sent again after, it is acknowledged as a duplicate:
/// never refused for ever, never written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_cut_by_the_request_timeout_can_be_sent_again() {
    let sink = FhirSink::start().await;
    sink.delay(Duration::from_secs(1));
    let yaml = push_yaml("cut-sync", &sink.url, "sync", "");
    let defs = definitions(&yaml);
    let state = tempfile::tempdir().expect("state");
    let limits = Limits {
        timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let served = EngineRouter::with_limits(load(defs.path()), state.path(), limits, CLIENT_TIMEOUT);
    let url = format!("{}/push/cut-sync", served.base);
    let body = patient_payload("cut-1");

    let got = push(&served, &url, SECRET, Utc::now().timestamp(), &body, None).await;
    assert_eq!(got.status, 504, "{}", got.text);
    sink.delay(Duration::ZERO);
    let mut answers = Vec::new();
    let got = loop {
        let got = push(&served, &url, SECRET, Utc::now().timestamp(), &body, None).await;
        answers.push(got.status);
        if got.status != 409 || answers.len() >= 50 {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(got.status, 200, "{answers:?} {}", got.text);
    assert_eq!(got.json()["status"], "duplicate", "{}", got.text);
    assert_eq!(sink.store().writes.get("Patient/cut-1"), Some(&1));
}

/// `write.identifierSystem` of a cron connector: conditional updates, so a changed record
/// updates the resource the server created, with no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_writes_by_identifier_and_updates_without_duplicates() {
    let api = JsonApi::start(vec![
        json!({"mrn": "m1", "family": "Rossi", "updated": 1}),
        json!({"mrn": "m2", "family": "Bianchi", "updated": 2}),
        json!({"mrn": "m3", "family": "Verdi", "updated": 3}),
    ])
    .await;
    let sink = FhirSink::start().await;
    let yaml = sink_doc("store", &sink.url, "batch", 0)
        + &r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: by-identifier }
spec:
  strategy: cron
  schedule: { cron: "0 2 * * *" }
  source: { url: "@URL@", retries: 0, timeout: 5s }
  fetch:
    request: { path: /items }
    records: $.items[*]
    incremental: { cursor: $.updated, param: since }
  sink: store
  write: { identifierSystem: "urn:mrn" }
  mapping:
    resourceType: Patient
    identifier: [ { system: "urn:mrn", value: { $path: $.mrn } } ]
    name: [ { family: { $path: $.family } } ]
"#
        .replace("@URL@", &api.url);
    let defs = definitions(&yaml);
    let state = tempfile::tempdir().expect("state");
    let ndjson = tempfile::tempdir().expect("ndjson");
    let r = runner_with_sink_dir(
        &load(defs.path()),
        "by-identifier",
        state.path(),
        ndjson.path(),
    );
    let report = run_with_deadline(&r, RUN_TIMEOUT).await;
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!(report.resources_written, 3);
    assert_eq!(sink.count(), 3);
    let id_of = |mrn: &str| -> (String, Value) {
        let store = sink.store();
        let (k, v) = store
            .resources
            .iter()
            .find(|(_, r)| r["identifier"][0]["value"] == mrn)
            .unwrap_or_else(|| panic!("{mrn} in the sink"));
        (k.clone(), v.clone())
    };
    let (key, _) = id_of("m2");

    api.add(json!({"mrn": "m2", "family": "Changed", "updated": 4}));
    let report = run_with_deadline(&r, RUN_TIMEOUT).await;
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!((report.records_read, report.resources_written), (1, 1));
    assert_eq!(sink.count(), 3, "updated in place, no duplicate");
    let (key2, updated) = id_of("m2");
    assert_eq!(key2, key, "the same resource");
    assert_eq!(updated["name"][0]["family"], "Changed");
}

/// `write.identifierSystem` is accepted on push connectors: their writes must honour it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_writes_by_identifier_when_the_connector_asks() {
    let sink = FhirSink::start().await;
    let yaml = push_yaml(
        "by-identifier-push",
        &sink.url,
        "sync",
        "  write: { identifierSystem: \"urn:mrn\" }\n",
    );
    let defs = definitions(&yaml);
    let state = tempfile::tempdir().expect("state");
    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    let url = format!("{}/push/by-identifier-push", served.base);
    let now = Utc::now().timestamp();
    for family in ["First", "Second"] {
        let body = serde_json::to_vec(&json!({
            "resourceType": "Patient",
            "identifier": [{"system": "urn:mrn", "value": "123"}],
            "name": [{"family": family}]
        }))
        .expect("JSON");
        let got = push(&served, &url, SECRET, now, &body, None).await;
        assert_eq!(got.status, 200, "{}", got.text);
        assert_eq!(got.json()["status"], "written", "{}", got.text);
    }
    let store = sink.store();
    assert_eq!(store.resources.len(), 1, "{:?}", store.resources.keys());
    let only = store.resources.values().next().expect("one resource");
    assert_eq!(only["name"][0]["family"], "Second");
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_bearer_tokens_and_api_keys_are_checked() {
    let sink = FhirSink::start().await;
    let connector = |name: &str, auth: &str| {
        format!(
            "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: {name} }}
spec:
  strategy: push
  sink: store
  push:
    auth: {auth}
    mode: sync
"
        )
    };
    let yaml = sink_doc("store", &sink.url, "batch", 0)
        + &connector("by-token", "{ bearer: { token: token-0123456789 } }")
        + "---\n"
        + &connector(
            "by-key",
            "{ apiKey: { header: X-Api-Key, value: key-0123456789 } }",
        );
    let defs = definitions(&yaml);
    let state = tempfile::tempdir().expect("state");
    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    let body = |id: &str| json!({"resourceType": "Patient", "id": id}).to_string();
    let post = |connector: &str, header: Option<(&str, &str)>, id: &str| {
        let mut req = served
            .post(format!("/push/{connector}"))
            .header("content-type", "application/json")
            .body(body(id));
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        req.send()
    };

    let bearer = "authorization";
    for (given, id) in [
        (None, "t-none"),
        (Some((bearer, "Bearer token-012345678")), "t-shorter"),
        (Some((bearer, "Bearer token-0123456780")), "t-other"),
        (Some((bearer, "token-0123456789")), "t-no-scheme"),
        (Some(("x-api-key", "token-0123456789")), "t-wrong-header"),
    ] {
        assert_outcome(&post("by-token", given, id).await, 401, &[]);
    }
    for (given, id) in [
        (None, "k-none"),
        (Some(("x-api-key", "key-01234567890")), "k-longer"),
        (Some(("x-api-key", "Key-0123456789")), "k-other"),
        (Some((bearer, "Bearer key-0123456789")), "k-wrong-header"),
    ] {
        assert_outcome(&post("by-key", given, id).await, 401, &[]);
    }
    assert!(
        sink.store().resources.is_empty(),
        "refused pushes write nothing"
    );

    let got = post(
        "by-token",
        Some((bearer, "Bearer token-0123456789")),
        "t-ok",
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let got = post("by-key", Some(("X-Api-Key", "key-0123456789")), "k-ok").await;
    assert_eq!(got.status, 200, "{}", got.text);
    let written: Vec<String> = sink.store().resources.keys().cloned().collect();
    assert_eq!(written, ["Patient/k-ok", "Patient/t-ok"]);
}

// ------------------------------------------------------------------------------------------
// Guide imports: the allow- and deny-lists
// ------------------------------------------------------------------------------------------

/// The Gravitate-Health IPS guide's resources (`tests/data/`).
fn ips_guide() -> std::path::PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/fhir-r4/gravitate-ips"
    ))
    .to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_import_lists_allow_and_deny_files_and_types_and_count_what_they_leave_out() {
    let guide = ips_guide();
    let defs = definitions(&format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: ips-subset }}
spec:
  strategy: cron
  schedule: {{ cron: \"0 3 * * *\" }}
  import:
    guide: \"{}\"
    include:
      files: [\"Bundle-gravitate-*.json\", \"ValueSet-*.json\", \"Questionnaire-*.json\"]
      types: [Patient, Composition, Condition, ValueSet, Questionnaire]
    exclude:
      files: [Bundle-gravitate-ips-jp.json, \"ValueSet-eq5d-*.json\"]
  splitBundles: true
",
        guide.display()
    ));
    let types = [
        "Patient",
        "Composition",
        "Condition",
        "ValueSet",
        "Questionnaire",
    ];
    // What the lists should let through, worked out here from the files themselves.
    let mut names: Vec<String> = std::fs::read_dir(&guide)
        .expect("the guide")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    let included_file = |n: &str| {
        (n.starts_with("Bundle-gravitate-")
            || n.starts_with("ValueSet-")
            || n.starts_with("Questionnaire-"))
            && n != "Bundle-gravitate-ips-jp.json"
            && !n.starts_with("ValueSet-eq5d-")
    };
    let mut expected = BTreeSet::new();
    let mut other_types: BTreeMap<String, usize> = BTreeMap::new();
    for n in names.iter().filter(|n| included_file(n)) {
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(guide.join(n)).expect("a file"))
                .expect("JSON");
        let resources: Vec<Value> = if r["resourceType"] == "Bundle" {
            r["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["resource"].clone())
                .collect()
        } else {
            vec![r]
        };
        for r in resources {
            let t = r["resourceType"].as_str().expect("a type").to_owned();
            if types.contains(&t.as_str()) {
                expected.insert(key_of(&r));
            } else {
                *other_types.entry(t).or_default() += 1;
            }
        }
    }
    assert!(
        expected.len() > 30 && other_types.len() > 3,
        "{expected:?} {other_types:?}"
    );

    let state = tempfile::tempdir().expect("state");
    let ndjson = tempfile::tempdir().expect("ndjson");
    let r = runner_with_sink_dir(
        &load(defs.path()),
        "ips-subset",
        state.path(),
        ndjson.path(),
    );
    let report = run_with_deadline(&r, RUN_TIMEOUT).await;
    assert!(report.ok(), "{report:#?}");
    assert_eq!(report.resources_written, expected.len(), "{report:#?}");

    // The sink holds exactly what the lists let through.
    let mut written = BTreeSet::new();
    for entry in std::fs::read_dir(ndjson.path()).expect("the sink") {
        let path = entry.expect("an entry").path();
        for line in std::fs::read_to_string(&path).expect("a file").lines() {
            let r: Value = serde_json::from_str(line).expect("an NDJSON line");
            assert!(written.insert(key_of(&r)), "{} written twice", key_of(&r));
        }
    }
    assert_eq!(written, expected);

    // Everything left out is in the report: each file, each type with its count.
    let reasons: BTreeMap<&str, &str> = report
        .skipped
        .iter()
        .filter(|s| s.subject.ends_with(".json"))
        .map(|s| (s.subject.as_str(), s.reason.as_str()))
        .collect();
    for n in &names {
        match reasons.get(n.as_str()) {
            None => assert!(included_file(n), "{n} left out without a word"),
            Some(why) => {
                assert!(!included_file(n), "{n} should have been read: {why}");
                let expected_reason = if n == "Bundle-gravitate-ips-jp.json" {
                    "excluded by `Bundle-gravitate-ips-jp.json` of `import.exclude.files`"
                } else if n.starts_with("ValueSet-eq5d-") {
                    "excluded by `ValueSet-eq5d-*.json` of `import.exclude.files`"
                } else {
                    "not in `import.include.files`"
                };
                assert_eq!(*why, expected_reason, "{n}");
            }
        }
    }
    let by_type: BTreeMap<String, usize> = report
        .skipped
        .iter()
        .filter(|s| s.reason == "not in `import.include.types`")
        .map(|s| (s.subject.clone(), s.count))
        .collect();
    assert_eq!(by_type, other_types, "{:#?}", report.skipped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_import_writes_referenced_resources_first_across_transactions() {
    let guide = ips_guide();
    let sink = FhirSink::start().await;
    // Batches of 100 resources: the guide's ~390 resources take several transactions, and a
    // resource may only be written once what it refers to is there.
    let defs = definitions(&format!(
        "{}apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: ips-all }}
spec:
  strategy: cron
  schedule: {{ cron: \"0 3 * * *\" }}
  import: {{ guide: \"{}\" }}
  splitBundles: true
  sink: store
",
        sink_doc("store", &sink.url, "transaction", 1),
        guide.display()
    ));
    let state = tempfile::tempdir().expect("state");
    let ndjson = tempfile::tempdir().expect("ndjson");
    let r = runner_with_sink_dir(&load(defs.path()), "ips-all", state.path(), ndjson.path());
    let report = run_with_deadline(&r, RUN_TIMEOUT).await;
    assert!(report.ok(), "{report:#?}");
    assert!(report.sink_calls >= 4, "several transactions: {report:#?}");
    let store = sink.store();
    assert_eq!(store.resources.len(), report.resources_written);
    // Nothing was written before what it refers to. The one reference written to nothing
    // is the guide's own: a bare id, which no server resolves.
    assert_eq!(
        store.dangling,
        ["Composition/Ovl-alicia-comp -> Ovl-Alicia-pregnancy"],
        "written before what they refer to"
    );
}

// ------------------------------------------------------------------------------------------
// 7. Outputs checked against the connector's FHIR version (`validation`)
// ------------------------------------------------------------------------------------------

/// A push connector whose mapping's `$path` values are only judged when they arrive: a
/// Patient with a `birthDate` and an Observation about it.
fn validating_push_yaml(sink_url: &str, validation: &str) -> String {
    push_yaml(
        "births",
        sink_url,
        "sync",
        &format!(
            "  {validation}
  mapping:
    - resourceType: Patient
      id: {{ $path: $.id }}
      birthDate: {{ $path: $.born }}
    - resourceType: Observation
      id: \"obs-{{{{record.id}}}}\"
      status: final
      code: {{ text: birth weight }}
      subject: {{ $reference: Patient, $id: {{ $path: $.id }} }}
"
        ),
    )
}

async fn dead_letters(served: &EngineRouter, connector: &str) -> Vec<Value> {
    let dead = served
        .get(format!(
            "{}/connectors/{connector}/dead-letters",
            served.base
        ))
        .send()
        .await;
    assert_eq!(dead.status, 200, "{}", dead.text);
    dead.json().as_array().cloned().expect("a list")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_push_dead_letters_an_invalid_resource_and_writes_the_valid_one() {
    let sink = FhirSink::start().await;
    let (served, _defs, _state) = open_engine(
        &validating_push_yaml(&sink.url, "validation: strict"),
        CLIENT_TIMEOUT,
    );
    let url = format!("{}/push/births", served.base);
    let now = Utc::now().timestamp();

    let got = push(
        &served,
        &url,
        SECRET,
        now,
        br#"{"id":"b1","born":"2024-02-29"}"#,
        None,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert!(sink.get("Patient/b1").is_some() && sink.get("Observation/obs-b1").is_some());

    // 30 February does not exist: the Patient is refused, the Observation written.
    let got = push(
        &served,
        &url,
        SECRET,
        now,
        br#"{"id":"b2","born":"2024-02-30"}"#,
        None,
    )
    .await;
    assert_outcome(&got, 422, &["Patient/b2", "Patient.birthDate"]);
    assert!(
        sink.get("Patient/b2").is_none(),
        "an invalid resource is never written"
    );
    assert!(sink.get("Observation/obs-b2").is_some(), "the valid one is");
    let dead = dead_letters(&served, "births").await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let reason = dead[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("Patient.birthDate"), "{dead:?}");
    let outcome = got.json();
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{}", got.text);
    assert!(got.text.contains("Patient.birthDate"), "{}", got.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_push_writes_an_invalid_resource_and_counts_it() {
    let sink = FhirSink::start().await;
    // No `validation`: the default, warn.
    let (served, _defs, _state) = open_engine(&validating_push_yaml(&sink.url, ""), CLIENT_TIMEOUT);
    let url = format!("{}/push/births", served.base);
    let now = Utc::now().timestamp();
    for (i, born) in ["2024-02-30", "1990-13-01"].iter().enumerate() {
        let body = format!(r#"{{"id":"w{i}","born":"{born}"}}"#);
        let got = push(&served, &url, SECRET, now, body.as_bytes(), None).await;
        assert_eq!(got.status, 200, "{}", got.text);
        assert_eq!(
            sink.get(&format!("Patient/w{i}")).expect("written")["birthDate"],
            *born
        );
    }
    assert!(dead_letters(&served, "births").await.is_empty());
    let metrics = served.get(format!("{}/metrics", served.base)).send().await;
    assert!(
        metrics.text.contains(
            "engine_fhir_invalid_resources_total{connector=\"births\",outcome=\"written\"} 2\n"
        ),
        "{}",
        metrics.text
    );
}

/// A cron connector over a JSON API whose Observation's `valueQuantity` loses its value
/// when a record has no weight (a null leaves it half made).
fn validating_cron_yaml(url: &str, validation: &str) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: weights }}
spec:
  strategy: cron
  {validation}
  schedule: {{ cron: "0 2 * * *" }}
  source: {{ url: "{url}", retries: 0, timeout: 5s }}
  run: {{ onRecordError: skip }}
  fetch:
    request: {{ path: /items }}
    records: $.items[*]
  mapping:
    - resourceType: Patient
      id: {{ $path: $.id }}
    - resourceType: Observation
      id: "obs-{{{{record.id}}}}"
      status: final
      code: {{ text: body weight }}
      subject: {{ $reference: Patient, $id: {{ $path: $.id }} }}
      valueQuantity: {{ value: {{ $number: {{ $path: $.weight }} }}, unit: kg }}
"#
    )
}

fn weights() -> Vec<Value> {
    vec![
        json!({"id": "a1", "weight": "71.5", "updated": 1}),
        json!({"id": "a2", "updated": 2}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_cron_dead_letters_the_record_of_an_invalid_resource() {
    let api = JsonApi::start(weights()).await;
    let defs = definitions(&validating_cron_yaml(&api.url, "validation: strict"));
    let state = tempfile::tempdir().expect("state");
    let out_dir = tempfile::tempdir().expect("ndjson");
    let r = runner_with_sink_dir(&load(defs.path()), "weights", state.path(), out_dir.path());
    let report = run_with_deadline(&r, RUN_TIMEOUT).await;
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!(
        (
            report.records_read,
            report.resources_written,
            report.records_dead_lettered
        ),
        (2, 2, 1)
    );
    let observations = std::fs::read_to_string(out_dir.path().join("Observation.ndjson"))
        .expect("Observation.ndjson");
    assert_eq!(observations.lines().count(), 1);
    assert!(observations.contains("\"obs-a1\"") && !observations.contains("obs-a2"));
    let dead_dir = state.path().join("cron/weights/dead");
    let dead: Vec<Value> = std::fs::read_dir(&dead_dir)
        .expect("dead letters")
        .map(|e| {
            serde_json::from_slice(&std::fs::read(e.expect("entry").path()).expect("read"))
                .expect("JSON")
        })
        .collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["record"]["id"], "a2");
    assert_eq!(dead[0]["outcome"]["resourceType"], "OperationOutcome");
    assert_eq!(
        dead[0]["outcome"]["issue"][0]["expression"],
        json!(["Observation.valueQuantity"]),
        "{dead:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_cron_writes_the_half_made_resource_with_a_warning() {
    let api = JsonApi::start(weights()).await;
    let defs = definitions(&validating_cron_yaml(&api.url, "validation: warn"));
    let state = tempfile::tempdir().expect("state");
    let out_dir = tempfile::tempdir().expect("ndjson");
    let r = runner_with_sink_dir(&load(defs.path()), "weights", state.path(), out_dir.path());
    let report = run_with_deadline(&r, RUN_TIMEOUT).await;
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!(
        (report.resources_written, report.records_dead_lettered),
        (4, 0)
    );
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(
        report.warnings[0].contains("Observation/obs-a2")
            && report.warnings[0].contains("Observation.valueQuantity"),
        "{:?}",
        report.warnings
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_cron_lists_a_bounded_number_of_invalid_resources() {
    let records = (0..150)
        .map(|i| json!({"id": format!("r{i}"), "updated": i}))
        .collect();
    let api = JsonApi::start(records).await;
    let defs = definitions(&validating_cron_yaml(&api.url, ""));
    let state = tempfile::tempdir().expect("state");
    let out_dir = tempfile::tempdir().expect("ndjson");
    let r = runner_with_sink_dir(&load(defs.path()), "weights", state.path(), out_dir.path());
    let report = run_with_deadline(&r, RUN_TIMEOUT).await;
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!(report.resources_written, 300);
    assert_eq!(report.warnings.len(), 101, "{:?}", report.warnings.last());
    assert_eq!(
        report.warnings.last().map(String::as_str),
        Some("records: 50 more resources not valid FHIR written (`validation: warn`)")
    );
}
