//! Exactly once for pushes: queued payloads written once across `kill -9` of `engine serve`
//! and reloads of the connector's definition while its queue drains; replays of a signed
//! delivery and re-sent bodies that differ only in whitespace or key order acknowledged as
//! duplicates; the deliveries remembered bounded and `seen.jsonl` compacted; `.tmp` leftovers
//! of the queue removed; no absolute state path in a caller's answer; and the Provenance of a
//! delivery or of a cron run written in the same transaction as what it is about; and
//! concurrent queued pushes grouped into fewer flushes of the queue than payloads, none
//! acknowledged lost or written twice across `kill -9` in the midst of them; the queue's
//! segments: a torn tail truncated at open, a damaged record dead-lettered with the rest
//! written, and a queue of the earlier file-per-payload layout drained first.
//!
//! The sink is a stand-in FHIR server written here (an axum app on 127.0.0.1): it applies
//! `transaction` Bundles all or nothing, counts the writes of each `Type/id`, answers
//! `GET /Provenance/{id}`, and can hold the answer of its next transaction after applying it,
//! so that a `kill -9` lands while the engine waits for that answer (the worst moment: written,
//! not known to be written). Helios FHIR Server checks that a real server takes the
//! Provenance. Every wait is a condition polled with a deadline.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::response::Response;
use axum::routing::{get, post};
use chrono::Utc;
use engine::runtime::engine::{Engine, Limits};
use engine::runtime::push::Reply;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::engine_router::{EngineRouter, RouterCall};
use crate::engine_under_test::{
    Drainer, definitions, dirs_in, load, patient_payload, run_with_deadline, runner_with_sink_dir,
    signed_push, wait_until,
};
use crate::fhir_standin::{FhirSource, fhir_json, operation_outcome};
use crate::helios_client::get_json;
use crate::helios_server::{Db, Helios};
use crate::local_http::{bind, client, spawn_app};
use crate::serve_process::ServeProcess;

/// Longest one request of a test may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the test waits for the engine to start, or for a condition.
const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "push-secret-0123456789abcdef";
const TOKEN: &str = "push-token-0123456789abcdef";

// ------------------------------------------------------------------------------------------
// Stand-in FHIR sink
// ------------------------------------------------------------------------------------------

#[derive(Default)]
struct Store {
    /// `Type/id` to the stored resource.
    resources: BTreeMap<String, Value>,
    /// Writes per `Type/id`.
    writes: HashMap<String, usize>,
    /// `Type/id` and the resource of every applied write, in order.
    applied: Vec<(String, Value)>,
    /// Every Bundle received: its type and its entries.
    bundles: Vec<(String, Vec<Value>)>,
}

struct SinkInner {
    store: Mutex<Store>,
    delay_ms: u64,
    /// Hold the answer of the next transaction after applying it.
    hold: AtomicBool,
    /// Told when a transaction was applied and its answer is held.
    held: Notify,
    /// Lets the held answer go.
    release: Notify,
    /// Transactions being answered now.
    in_flight: AtomicUsize,
    /// `GET /Provenance/{id}` answered.
    lookups: AtomicUsize,
    /// Answer 200 with another resource to every look-up.
    lying: AtomicBool,
}

#[derive(Clone)]
struct Sink {
    url: String,
    inner: Arc<SinkInner>,
}

impl Sink {
    async fn start(delay: Duration) -> Sink {
        let (listener, url) = bind().await;
        let inner = Arc::new(SinkInner {
            store: Mutex::new(Store::default()),
            delay_ms: delay.as_millis() as u64,
            hold: AtomicBool::new(false),
            held: Notify::new(),
            release: Notify::new(),
            in_flight: AtomicUsize::new(0),
            lookups: AtomicUsize::new(0),
            lying: AtomicBool::new(false),
        });
        let app = axum::Router::new()
            .route("/", post(sink_post))
            .route("/Provenance/{id}", get(sink_provenance))
            .with_state(inner.clone());
        spawn_app(listener, app);
        Sink { url, inner }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.inner.store.lock().expect("sink store")
    }

    /// Distinct Patients written.
    fn patients(&self) -> usize {
        self.store()
            .resources
            .keys()
            .filter(|k| k.starts_with("Patient/"))
            .count()
    }

    /// Writes of Patients, repeats included.
    fn patient_writes(&self) -> usize {
        self.store()
            .applied
            .iter()
            .filter(|(k, _)| k.starts_with("Patient/"))
            .count()
    }

    /// Lets a held answer go.
    fn release(&self) {
        self.inner.release.notify_one();
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// Applies the next transaction, then holds its answer; returns once it is held.
    /// (The hold is set at once; the future waits for the transaction.)
    fn hold_next(&self) -> impl Future<Output = ()> + use<> {
        self.inner.hold.store(true, Ordering::SeqCst);
        let inner = self.inner.clone();
        async move {
            tokio::time::timeout(WAIT, inner.held.notified())
                .await
                .expect("a transaction reaches the sink");
        }
    }
}

async fn sink_provenance(
    State(s): State<Arc<SinkInner>>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    s.lookups.fetch_add(1, Ordering::SeqCst);
    if s.lying.load(Ordering::SeqCst) {
        return fhir_json(200, &json!({"resourceType": "Patient", "id": id}));
    }
    let found = s
        .store
        .lock()
        .expect("sink store")
        .resources
        .get(&format!("Provenance/{id}"))
        .cloned();
    match found {
        Some(p) => fhir_json(200, &p),
        None => fhir_json(404, &operation_outcome("not-found", "no such Provenance")),
    }
}

/// Decrements the transactions in flight when an answer ends (also when it is dropped).
struct Answering(Arc<SinkInner>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn sink_post(State(s): State<Arc<SinkInner>>, body: Bytes) -> Response {
    s.in_flight.fetch_add(1, Ordering::SeqCst);
    let _answering = Answering(s.clone());
    if s.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(s.delay_ms)).await;
    }
    let Ok(bundle) = serde_json::from_slice::<Value>(&body) else {
        return fhir_json(400, &operation_outcome("structure", "not JSON"));
    };
    let kind = bundle["type"].as_str().unwrap_or("").to_owned();
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    let answers: Vec<Value> = {
        let mut store = s.store.lock().expect("sink store");
        store.bundles.push((kind.clone(), entries.clone()));
        for e in &entries {
            let url = e["request"]["url"].as_str().unwrap_or("");
            if e["request"]["method"] != "PUT" || url.split('/').count() != 2 {
                return fhir_json(400, &operation_outcome("invalid", "PUT Type/id expected"));
            }
        }
        entries
            .iter()
            .map(|e| {
                let key = e["request"]["url"].as_str().unwrap_or("").to_owned();
                let existed = store.resources.contains_key(&key);
                store.resources.insert(key.clone(), e["resource"].clone());
                *store.writes.entry(key.clone()).or_default() += 1;
                store.applied.push((key, e["resource"].clone()));
                json!({"response": {"status": if existed { "200 OK" } else { "201 Created" }}})
            })
            .collect()
    };
    if kind == "transaction" && s.hold.swap(false, Ordering::SeqCst) {
        // Written, and the answer comes only when released (or never: the engine is killed
        // meanwhile).
        s.held.notify_one();
        s.release.notified().await;
    }
    fhir_json(
        200,
        &json!({"resourceType": "Bundle", "type": format!("{kind}-response"), "entry": answers}),
    )
}

// ------------------------------------------------------------------------------------------
// Definitions
// ------------------------------------------------------------------------------------------

fn sink_doc(url: &str, mode: &str, provenance: bool) -> String {
    format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata: {{ name: store }}
spec:
  fhir: {{ url: \"{url}\", version: R4, batchSize: 100, mode: {mode}, retries: 0, timeout: 5s, provenance: {provenance} }}
---
"
    )
}

/// A push connector `feed` writing Patients whose `given` name is `marker`.
fn feed_doc(auth: &str, mode: &str, marker: &str, extra: &str) -> String {
    format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: feed }}
spec:
  strategy: push
  sink: store
  push:
    auth: {auth}
    mode: {mode}
{extra}  mapping:
    resourceType: Patient
    id: {{ $path: $.id }}
    name: [ {{ family: {{ $path: \"$.name[0].family\" }}, given: [ {marker} ] }} ]
"
    )
}

fn hmac_auth() -> String {
    format!("{{ hmac: {{ secret: \"{SECRET}\", tolerance: 300s }} }}")
}

fn bearer_auth() -> String {
    format!("{{ bearer: {{ token: \"{TOKEN}\" }} }}")
}

// ------------------------------------------------------------------------------------------
// 1. Queued pushes across kill -9 and a reload
// ------------------------------------------------------------------------------------------

/// The connector's state as `/connectors/feed` shows it, if the engine answers.
async fn queued_of(http: &reqwest::Client, base: &str) -> Option<u64> {
    let v: Value = http
        .get(format!("{base}/connectors/feed"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["push"]["queued"].as_u64()
}

fn serve(defs: &Path, state: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"));
    // The admin API open: the test reads the queue's depth from `/connectors/feed`.
    cmd.arg("serve")
        .arg(defs)
        .arg("--state-dir")
        .arg(state)
        .arg("--admin-open")
        .env_remove("ENGINE_STATE_DIR")
        .env_remove("ENGINE_SINK_DIR");
    cmd
}

/// `kill -9`, then waits for the process to be gone.
async fn kill_9(mut p: ServeProcess) {
    p.child.start_kill().expect("SIGKILL");
    let (status, _) = p.exit(WAIT).await;
    assert!(!status.success(), "killed: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_pushes_are_written_once_across_three_kill_9_and_a_reload() {
    const N: usize = 1000;
    let sink = Sink::start(Duration::from_millis(3)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let defs = dir.path().join("defs");
    std::fs::create_dir(&defs).expect("mkdir");
    let state = dir.path().join("state");
    let file = defs.join("feed.yaml");
    let v1 = sink_doc(&sink.url, "transaction", true) + &feed_doc(&hmac_auth(), "queued", "v1", "");
    std::fs::write(&file, &v1).expect("write");

    let engine = ServeProcess::start(serve(&defs, &state), WAIT).await;
    let base = Arc::new(RwLock::new(engine.base.clone()));
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicUsize::new(0));
    let resent = Arc::new(AtomicUsize::new(0));

    // Callers: each payload signed once, sent again on a failed connection, a 409 or a 5xx
    // until it is acknowledged (202, or 200 `duplicate`).
    let http = client(CLIENT_TIMEOUT);
    let mut callers = Vec::new();
    for _ in 0..8 {
        let (http, base, next, acked, resent) = (
            http.clone(),
            base.clone(),
            next.clone(),
            acked.clone(),
            resent.clone(),
        );
        callers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= N {
                    return;
                }
                let body = patient_payload(&format!("p-{i:04}"));
                let ts = Utc::now().timestamp();
                let sig = engine::runtime::push::sign(SECRET, ts, &body);
                loop {
                    let url = format!("{}/push/feed", base.read().expect("base"));
                    let answer = http
                        .post(url)
                        .header("content-type", "application/json")
                        .header("X-Timestamp", ts.to_string())
                        .header("X-Signature", &sig)
                        .body(body.clone())
                        .send()
                        .await;
                    match answer.map(|a| a.status().as_u16()) {
                        Ok(200 | 202) => break,
                        Ok(s) if s == 409 || s >= 500 => {}
                        Ok(s) => panic!("p-{i:04}: answered {s}"),
                        Err(_) => {}
                    }
                    resent.fetch_add(1, Ordering::SeqCst);
                    // A caller's back-off before sending again (the engine may be restarting).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                acked.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }

    // Kill 1, while accepting.
    let a = acked.clone();
    wait_until(WAIT, "300 acknowledged", move || {
        a.load(Ordering::SeqCst) >= 300
    })
    .await;
    kill_9(engine).await;
    let accepted_at_kill = acked.load(Ordering::SeqCst);
    let engine = ServeProcess::start(serve(&defs, &state), WAIT).await;
    *base.write().expect("base") = engine.base.clone();

    // Kill 2, while draining: a transaction applied by the sink, its answer not received.
    let a = acked.clone();
    wait_until(WAIT, "all acknowledged", move || {
        a.load(Ordering::SeqCst) >= N
    })
    .await;
    for c in callers {
        c.await.expect("caller");
    }
    sink.hold_next().await;
    assert!(sink.patients() < N, "the queue is still draining");
    kill_9(engine).await;
    let engine = ServeProcess::start(serve(&defs, &state), WAIT).await;

    // A reload while draining: the mapping changes from `v1` to `v2`.
    let before = sink.patient_writes();
    let s = sink.clone();
    wait_until(WAIT, "the drain goes on", move || {
        s.patient_writes() >= before + 20
    })
    .await;
    let v2 = sink_doc(&sink.url, "transaction", true) + &feed_doc(&hmac_auth(), "queued", "v2", "");
    std::fs::write(&file, &v2).expect("write");
    let s = sink.clone();
    wait_until(
        WAIT,
        "a payload written with the new definition",
        move || {
            s.store()
                .applied
                .iter()
                .any(|(_, r)| r["name"][0]["given"][0] == "v2")
        },
    )
    .await;

    // Kill 3, while draining after the reload.
    sink.hold_next().await;
    assert!(sink.patients() < N, "the queue is still draining");
    kill_9(engine).await;
    let engine = ServeProcess::start(serve(&defs, &state), WAIT).await;
    let s = sink.clone();
    wait_until(WAIT, "every payload written", move || s.patients() >= N).await;
    let b = engine.base.clone();
    tokio::time::timeout(WAIT, async {
        while queued_of(&http, &b).await != Some(0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the queue empties");

    {
        let lookups = sink.inner.lookups.load(Ordering::SeqCst);
        let store = sink.store();
        println!(
            "{N} payloads: {} acknowledged at the first kill, {} sent again by callers, {lookups} Provenance look-ups, {} Patient writes, {} Bundles",
            accepted_at_kill,
            resent.load(Ordering::SeqCst),
            store
                .applied
                .iter()
                .filter(|(k, _)| k.starts_with("Patient/"))
                .count(),
            store.bundles.len()
        );
        let missing: Vec<String> = (0..N)
            .map(|i| format!("Patient/p-{i:04}"))
            .filter(|k| !store.resources.contains_key(k))
            .collect();
        assert!(missing.is_empty(), "lost: {missing:?}");
        let twice: Vec<(&String, &usize)> = store
            .writes
            .iter()
            .filter(|(k, n)| k.starts_with("Patient/") && **n != 1)
            .collect();
        assert!(twice.is_empty(), "written more than once: {twice:?}");
        assert!(
            lookups >= 2,
            "the payloads in flight at the kills while draining were looked up ({lookups})"
        );
        // After the first payload written with the new definition, none with the old one.
        let markers: Vec<&Value> = store
            .applied
            .iter()
            .filter(|(k, _)| k.starts_with("Patient/"))
            .map(|(_, r)| &r["name"][0]["given"][0])
            .collect();
        let first_v2 = markers.iter().position(|m| *m == "v2").expect("a v2 write");
        assert!(
            markers[first_v2..].iter().all(|m| *m == "v2"),
            "written with the old definition after the hand-over"
        );
    }
    kill_9(engine).await;
}

/// The value of counter `name` for connector `feed` in a `/metrics` text.
fn feed_counter(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains("connector=\"feed\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_queued_pushes_share_flushes_and_none_acknowledged_is_lost_across_kill_9() {
    const N: usize = 800;
    const CALLERS: usize = 32;
    let sink = Sink::start(Duration::from_millis(1)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let defs = dir.path().join("defs");
    std::fs::create_dir(&defs).expect("mkdir");
    let state = dir.path().join("state");
    let doc =
        sink_doc(&sink.url, "transaction", true) + &feed_doc(&bearer_auth(), "queued", "g", "");
    std::fs::write(defs.join("feed.yaml"), &doc).expect("write");

    let engine = ServeProcess::start(serve(&defs, &state), WAIT).await;
    let base = Arc::new(RwLock::new(engine.base.clone()));
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(Vec::<usize>::new()));
    // Callers: each payload sent until it is acknowledged (202, or 200 `duplicate`), again
    // on a failed connection, a 409 or a 5xx.
    let http = client(CLIENT_TIMEOUT);
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let (http, base, next, acked) = (http.clone(), base.clone(), next.clone(), acked.clone());
        callers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= N {
                    return;
                }
                let body = patient_payload(&format!("g-{i:04}"));
                loop {
                    let url = format!("{}/push/feed", base.read().expect("base"));
                    let answer = http
                        .post(url)
                        .header("content-type", "application/json")
                        .header("authorization", format!("Bearer {TOKEN}"))
                        .body(body.clone())
                        .send()
                        .await;
                    match answer.map(|a| a.status().as_u16()) {
                        Ok(200 | 202) => break,
                        Ok(s) if s == 409 || s >= 500 => {}
                        Ok(s) => panic!("g-{i:04}: answered {s}"),
                        Err(_) => {}
                    }
                    // A caller's back-off before sending again (the engine may be restarting).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                acked.lock().expect("acked").push(i);
            }
        }));
    }

    // While the callers push: the group commits so far, then kill -9 (mid-commit, as likely
    // as not, with 32 callers pushing).
    let a = acked.clone();
    wait_until(WAIT, "300 acknowledged", move || {
        a.lock().expect("acked").len() >= 300
    })
    .await;
    let metrics = http
        .get(format!("{}/metrics", engine.base))
        .send()
        .await
        .expect("/metrics")
        .text()
        .await
        .expect("/metrics text");
    kill_9(engine).await;
    let acked_at_kill = acked.lock().expect("acked").clone();
    // The queue as the kill left it: records in segment files appended to by the group
    // commits, not a file per payload.
    let (segs, files) = (segments(&state), payload_files(&state));
    println!(
        "at the kill: {} segment(s), {} payload files",
        segs.len(),
        files.len()
    );
    assert!(
        !segs.is_empty() && files.is_empty(),
        "segments {segs:?}, payload files {files:?}"
    );
    let commits = feed_counter(&metrics, "engine_push_queue_commits_total");
    let committed = feed_counter(&metrics, "engine_push_queue_committed_total");
    println!(
        "{} acknowledged at the kill; before it, {committed:?} payloads queued in {commits:?} group commits",
        acked_at_kill.len()
    );
    let (Some(commits), Some(committed)) = (commits, committed) else {
        panic!("no group commit counters for `feed` in /metrics:\n{metrics}");
    };
    assert!(
        committed >= 300 && commits < committed,
        "{committed} payloads queued in {commits} flushes of the queue: not grouped"
    );

    let engine = ServeProcess::start(serve(&defs, &state), WAIT).await;
    *base.write().expect("base") = engine.base.clone();
    for c in callers {
        tokio::time::timeout(WAIT, c)
            .await
            .expect("the callers finish")
            .expect("caller");
    }
    let s = sink.clone();
    wait_until(WAIT, "every payload written", move || s.patients() >= N).await;
    let b = engine.base.clone();
    tokio::time::timeout(WAIT, async {
        while queued_of(&http, &b).await != Some(0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the queue empties");
    {
        let store = sink.store();
        let lost: Vec<String> = acked_at_kill
            .iter()
            .map(|i| format!("Patient/g-{i:04}"))
            .filter(|k| !store.resources.contains_key(k))
            .collect();
        assert!(
            lost.is_empty(),
            "acknowledged before the kill, lost: {lost:?}"
        );
        let missing = (0..N)
            .filter(|i| !store.resources.contains_key(&format!("Patient/g-{i:04}")))
            .count();
        assert_eq!(
            missing, 0,
            "every payload acknowledged in the end is written"
        );
        let twice: Vec<(&String, &usize)> = store
            .writes
            .iter()
            .filter(|(k, n)| k.starts_with("Patient/") && **n != 1)
            .collect();
        assert!(twice.is_empty(), "written more than once: {twice:?}");
    }
    kill_9(engine).await;
}

/// In-process, the reload as the server does it: a new engine built on the previous one, the
/// new drainer started and the old one told to stop while its payload is in flight. The new
/// drainer must not write until the old one has finished that payload and stopped, and a
/// delivery that a request still on the old router queued is a duplicate for the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_while_draining_hands_the_queue_to_one_drainer() {
    let sink = Sink::start(Duration::ZERO).await;
    let doc = |marker: &str| {
        sink_doc(&sink.url, "transaction", true) + &feed_doc(&bearer_auth(), "queued", marker, "")
    };
    let (v1, v2) = (definitions(&doc("v1")), definitions(&doc("v2")));
    let state = tempfile::tempdir().expect("state");
    let served = EngineRouter::new(load(v1.path()), state.path(), CLIENT_TIMEOUT);
    for i in 0..60 {
        let got = bearer_push(&served)
            .body(patient_payload(&format!("h-{i:02}")))
            .send()
            .await;
        assert_eq!(got.status, 202, "{}", got.text);
    }
    let held = sink.hold_next();
    let old = Drainer::start(served.engine.pushes["feed"].clone());
    held.await;
    let next = Engine::with_previous(
        Arc::new(load(v2.path())),
        Limits::default(),
        &dirs_in(state.path()),
        Some(&served.engine),
    )
    .expect("the reloaded engine");
    // A delivery taken by the old router during the reload is known to the new endpoint.
    let got = bearer_push(&served)
        .body(patient_payload("h-60"))
        .send()
        .await;
    assert_eq!(got.status, 202, "{}", got.text);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "content-type",
        reqwest::header::HeaderValue::from_static("application/json"),
    );
    let again = next.pushes["feed"]
        .deliver(&headers, &patient_payload("h-60"), None)
        .await
        .expect("an answer");
    assert!(matches!(again, Reply::Duplicate), "{again:?}");
    let new = Drainer::start(next.pushes["feed"].clone());
    let stopping = tokio::spawn(old.stop());
    // While the old drainer's payload is in flight, no other write reaches the sink: the
    // window is bounded, and a second drainer on the queue shows within it.
    let s = sink.clone();
    let second = tokio::time::timeout(Duration::from_millis(500), async move {
        while s.in_flight() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    sink.release();
    stopping.await.expect("the old drainer stops");
    let s = sink.clone();
    wait_until(WAIT, "the new drainer writes the rest", move || {
        s.patient_writes() >= 61
    })
    .await;
    let e = next.pushes["feed"].clone();
    wait_until(WAIT, "the queue empties", move || e.depths().0 == 0).await;
    new.stop().await;
    assert!(second.is_err(), "two drainers wrote at once");
    let store = sink.store();
    let twice: Vec<(&String, &usize)> = store
        .writes
        .iter()
        .filter(|(k, n)| k.starts_with("Patient/") && **n != 1)
        .collect();
    assert!(twice.is_empty(), "written more than once: {twice:?}");
    let markers: Vec<&Value> = store
        .applied
        .iter()
        .filter(|(k, _)| k.starts_with("Patient/"))
        .map(|(_, r)| &r["name"][0]["given"][0])
        .collect();
    assert_eq!(markers.len(), 61);
    assert_eq!(
        markers[0], "v1",
        "the payload in flight, with the old definition"
    );
    assert!(
        markers[1..].iter().all(|m| *m == "v2"),
        "after the hand-over, the new definition"
    );
}

/// After a crash mid-write (the in-flight record names the first queued payload), a sink
/// that answers 200 with something else than the Provenance to the look-up does not make the
/// payload be taken as written: it stays queued, and is written once the look-up says 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_look_up_answered_with_something_else_does_not_drop_the_payload() {
    let sink = Sink::start(Duration::ZERO).await;
    let defs = definitions(
        &(sink_doc(&sink.url, "transaction", true) + &feed_doc(&bearer_auth(), "queued", "v1", "")),
    );
    let state = tempfile::tempdir().expect("state");
    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    let got = bearer_push(&served)
        .body(patient_payload("l-1"))
        .send()
        .await;
    assert_eq!(got.status, 202, "{}", got.text);
    // As a crash leaves it: the payload recorded in flight, its write not known to be done.
    std::fs::write(
        state.path().join("push/feed/inflight.json"),
        json!({"file": "00000000000000000000.json", "ndjson": {}}).to_string(),
    )
    .expect("write");
    sink.inner.lying.store(true, Ordering::SeqCst);
    let drainer = Drainer::start(served.engine.pushes["feed"].clone());
    let s = sink.clone();
    wait_until(WAIT, "the payload is looked up", move || {
        s.inner.lookups.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert_eq!(
        served.engine.pushes["feed"].depths(),
        (1, 0),
        "still queued"
    );
    assert_eq!(sink.patient_writes(), 0);
    sink.inner.lying.store(false, Ordering::SeqCst);
    let s = sink.clone();
    wait_until(WAIT, "written once the look-up says 404", move || {
        s.patient_writes() >= 1
    })
    .await;
    let e = served.engine.pushes["feed"].clone();
    wait_until(WAIT, "the queue empties", move || e.depths().0 == 0).await;
    drainer.stop().await;
    assert_eq!(sink.store().writes.get("Patient/l-1"), Some(&1));
}

// ------------------------------------------------------------------------------------------
// 2. Replays and re-sent bodies
// ------------------------------------------------------------------------------------------

async fn status_of(got: &crate::local_http::Got) -> (u16, Value) {
    (got.status, got.json()["status"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_delivery_replayed_with_a_new_idempotency_key_is_a_duplicate() {
    let sink = Sink::start(Duration::ZERO).await;
    let defs = definitions(
        &(sink_doc(&sink.url, "transaction", false) + &feed_doc(&hmac_auth(), "sync", "v1", "")),
    );
    let state = tempfile::tempdir().expect("state");
    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    let url = format!("{}/push/feed", served.base);
    let ts = Utc::now().timestamp();
    let body = patient_payload("r-1");
    let mut answers = Vec::new();
    for key in [None, Some("replay-1"), Some("replay-2")] {
        let mut req = signed_push(&served, &url, SECRET, ts, &body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        answers.push(status_of(&req.send().await).await);
    }
    assert_eq!(
        answers,
        vec![
            (200, json!("written")),
            (200, json!("duplicate")),
            (200, json!("duplicate"))
        ]
    );
    assert_eq!(sink.store().writes.get("Patient/r-1"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_again_with_other_whitespace_or_key_order_is_a_duplicate() {
    let sink = Sink::start(Duration::ZERO).await;
    let defs = definitions(
        &(sink_doc(&sink.url, "transaction", false) + &feed_doc(&bearer_auth(), "sync", "v1", "")),
    );
    let state = tempfile::tempdir().expect("state");
    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    let variants: [&[u8]; 3] = [
        br#"{"resourceType":"Patient","id":"w-1","name":[{"family":"Rossi"}]}"#,
        b"{ \"resourceType\": \"Patient\",\n  \"id\": \"w-1\",\n  \"name\": [ { \"family\": \"Rossi\" } ] }\n",
        br#"{"name":[{"family":"Rossi"}],"id":"w-1","resourceType":"Patient"}"#,
    ];
    let mut answers = Vec::new();
    for body in variants {
        let got = bearer_push(&served).body(body.to_vec()).send().await;
        answers.push(status_of(&got).await);
    }
    assert_eq!(
        answers,
        vec![
            (200, json!("written")),
            (200, json!("duplicate")),
            (200, json!("duplicate"))
        ]
    );
    assert_eq!(sink.store().writes.get("Patient/w-1"), Some(&1));
}

/// A crash after a payload's queue file was flushed and before its delivery was remembered
/// (`seen.jsonl` without it): the caller, who got no answer, sends it again to the restarted
/// engine, which knows it from the queue file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_a_crash_before_the_delivery_was_remembered_is_a_duplicate() {
    let sink = Sink::start(Duration::ZERO).await;
    let defs = definitions(
        &(sink_doc(&sink.url, "transaction", false) + &feed_doc(&hmac_auth(), "queued", "v1", "")),
    );
    let state = tempfile::tempdir().expect("state");
    let ts = Utc::now().timestamp();
    let body = patient_payload("c-1");
    let send = |served: &EngineRouter| {
        signed_push(
            served,
            &format!("{}/push/feed", served.base),
            SECRET,
            ts,
            &body,
        )
        .send()
    };
    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    assert_eq!(send(&served).await.status, 202);
    drop(served);
    // The crash came before the delivery was remembered in `seen.jsonl` (a queued payload
    // gets its line when it is drained, so there may be no file yet).
    match std::fs::remove_file(state.path().join("push/feed/seen.jsonl")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("seen.jsonl: {e}"),
        _ => {}
    }

    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    let got = send(&served).await;
    assert_eq!(status_of(&got).await, (200, json!("duplicate")));
    assert_eq!(served.engine.pushes["feed"].depths(), (1, 0), "queued once");
}

// ------------------------------------------------------------------------------------------
// 3. The remembered deliveries: bounded and compacted
// ------------------------------------------------------------------------------------------

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// `seen.jsonl` of `state` with 5,000 deliveries remembered a day ago and 10 a minute ago.
fn stale_memory(state: &Path) -> std::path::PathBuf {
    let seen = state.join("push/feed/seen.jsonl");
    std::fs::create_dir_all(seen.parent().expect("dir")).expect("mkdir");
    let now = Utc::now().timestamp();
    let mut text = String::new();
    for i in 0..5000 {
        text.push_str(&format!(
            "{}\n",
            json!({"key": format!("key:old-{i}"), "at": now - 86_400})
        ));
    }
    for i in 0..10 {
        text.push_str(&format!(
            "{}\n",
            json!({"key": format!("key:recent-{i}"), "at": now - 60})
        ));
    }
    std::fs::write(&seen, text).expect("write");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seen_jsonl_is_compacted_at_start_to_the_deliveries_within_the_window() {
    let sink = Sink::start(Duration::ZERO).await;
    let defs = definitions(
        &(sink_doc(&sink.url, "transaction", false)
            + &feed_doc(&bearer_auth(), "sync", "v1", "    dedupWindow: 1h\n")),
    );
    let state = tempfile::tempdir().expect("state");
    let seen = stale_memory(state.path());
    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    assert_eq!(lines(&seen), 10, "compacted at start to the live entries");
    let got = bearer_push(&served)
        .header("Idempotency-Key", "recent-3")
        .body(patient_payload("x"))
        .send()
        .await;
    assert_eq!(status_of(&got).await, (200, json!("duplicate")));
    assert!(sink.store().writes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_deliveries_are_bounded_and_seen_jsonl_is_compacted() {
    let sink = Sink::start(Duration::ZERO).await;
    let defs = definitions(
        &(sink_doc(&sink.url, "transaction", false)
            + &feed_doc(
                &bearer_auth(),
                "sync",
                "v1",
                "    dedupWindow: 1h\n    dedupLimit: 50\n",
            )),
    );
    let state = tempfile::tempdir().expect("state");
    let seen = stale_memory(state.path());

    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    assert_eq!(lines(&seen), 10, "compacted at start to the live entries");
    let push = |key: String, id: String| {
        bearer_push(&served)
            .header("Idempotency-Key", key)
            .body(patient_payload(&id))
            .send()
    };
    // A recent delivery is still a duplicate.
    let got = push("recent-3".into(), "x".into()).await;
    assert_eq!(status_of(&got).await, (200, json!("duplicate")));
    // 400 new deliveries: the file stays within a multiple of the limit.
    let mut longest = 0;
    for i in 0..400 {
        let got = push(format!("new-{i}"), format!("n-{i}")).await;
        assert_eq!(status_of(&got).await, (200, json!("written")), "{i}");
        longest = longest.max(lines(&seen));
    }
    println!("seen.jsonl: at most {longest} lines for a limit of 50 over 400 deliveries");
    assert!(longest <= 150, "seen.jsonl grew to {longest} lines");
    // The newest deliveries are remembered.
    let got = push("new-399".into(), "n-399".into()).await;
    assert_eq!(status_of(&got).await, (200, json!("duplicate")));
    assert_eq!(sink.store().writes.get("Patient/n-399"), Some(&1));
}

// ------------------------------------------------------------------------------------------
// 4. Leftovers and paths
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmp_leftovers_of_the_queue_are_removed_at_start() {
    let sink = Sink::start(Duration::ZERO).await;
    let defs = definitions(
        &(sink_doc(&sink.url, "transaction", false)
            + &feed_doc(&bearer_auth(), "queued", "v1", "")),
    );
    let state = tempfile::tempdir().expect("state");
    let feed = state.path().join("push/feed");
    for sub in ["queue", "dead"] {
        std::fs::create_dir_all(feed.join(sub)).expect("mkdir");
        std::fs::write(
            feed.join(sub).join(".00000000000000000007.json.tmp"),
            b"{\"key\":\"key:cut",
        )
        .expect("write");
    }
    // Building the engine opens the queue.
    let _served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    for sub in ["queue", "dead"] {
        let left: Vec<String> = std::fs::read_dir(feed.join(sub))
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        assert!(left.is_empty(), "{sub}: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_that_cannot_take_a_payload_answers_503_naming_no_state_path() {
    let sink = Sink::start(Duration::ZERO).await;
    let defs = definitions(
        &(sink_doc(&sink.url, "transaction", false)
            + &feed_doc(&bearer_auth(), "queued", "v1", "")),
    );
    let state = tempfile::tempdir().expect("state");
    let feed = state.path().join("push/feed");
    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    // The queue cannot take a payload: a 503 whose text names no path of the state directory.
    std::fs::remove_dir(feed.join("queue")).expect("rmdir");
    std::fs::write(feed.join("queue"), b"not a directory").expect("write");
    let got = bearer_push(&served)
        .body(patient_payload("t-1"))
        .send()
        .await;
    assert_eq!(got.status, 503, "{}", got.text);
    let root = state.path().to_string_lossy().into_owned();
    assert!(!got.text.contains(&root), "{}", got.text);
    assert!(!got.text.contains("/push/feed"), "{}", got.text);
}

// ------------------------------------------------------------------------------------------
// 5. Provenance
// ------------------------------------------------------------------------------------------

/// The Provenance entries of a Bundle, and the `Type/id` of its other entries.
fn split_provenance(entries: &[Value]) -> (Vec<Value>, Vec<String>) {
    let mut provenance = Vec::new();
    let mut others = Vec::new();
    for e in entries {
        if e["resource"]["resourceType"] == "Provenance" {
            provenance.push(e["resource"].clone());
        } else {
            others.push(e["request"]["url"].as_str().unwrap_or("").to_owned());
        }
    }
    (provenance, others)
}

fn targets(p: &Value) -> Vec<String> {
    p["target"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|r| r["reference"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provenance_is_written_in_the_same_transaction() {
    // A push: one Provenance in the delivery's transaction, targeting what it wrote.
    let sink = Sink::start(Duration::ZERO).await;
    let defs = definitions(
        &(sink_doc(&sink.url, "transaction", true) + &feed_doc(&bearer_auth(), "sync", "v1", "")),
    );
    let state = tempfile::tempdir().expect("state");
    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    let got = bearer_push(&served)
        .body(patient_payload("pv-1"))
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let bundles = sink.store().bundles.clone();
    assert_eq!(bundles.len(), 1, "one transaction");
    let (kind, entries) = &bundles[0];
    assert_eq!(kind, "transaction");
    let (provenance, others) = split_provenance(entries);
    assert_eq!(others, vec!["Patient/pv-1"]);
    assert_eq!(provenance.len(), 1, "{entries:?}");
    let p = &provenance[0];
    assert_eq!(targets(p), vec!["Patient/pv-1"]);
    assert!(
        p["recorded"].is_string() && p["agent"][0]["who"].is_object(),
        "{p}"
    );
    assert!(p["entity"][0]["role"] == "source", "{p}");
    let id = p["id"].as_str().expect("an id");
    let http = client(CLIENT_TIMEOUT);
    let fetched = http
        .get(format!("{}/Provenance/{id}", sink.url))
        .send()
        .await
        .expect("GET");
    assert_eq!(fetched.status().as_u16(), 200);

    // A cron run: one Provenance per transaction chunk, targeting the chunk's resources.
    let source = FhirSource::start().await;
    for i in 0..150 {
        source.put(json!({"resourceType": "Patient", "id": format!("c-{i:03}")}));
    }
    let cron_sink = Sink::start(Duration::ZERO).await;
    let yaml = sink_doc(&cron_sink.url, "transaction", true)
        + &format!(
            "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: copy }}
spec:
  strategy: cron
  schedule: {{ cron: \"0 0 2 * * *\" }}
  source: {{ type: fhir, url: \"{}\", retries: 0, timeout: 10s }}
  sink: store
  sync: {{ resourceTypes: [Patient] }}
",
            source.url
        );
    let defs = definitions(&yaml);
    let cron_state = tempfile::tempdir().expect("state");
    let r = runner_with_sink_dir(
        &load(defs.path()),
        "copy",
        cron_state.path(),
        &cron_state.path().join("ndjson"),
    );
    let report = run_with_deadline(&r, WAIT).await;
    assert!(report.ok(), "{:#?}", report.failures);
    let bundles = cron_sink.store().bundles.clone();
    assert_eq!(bundles.len(), 2, "150 resources in chunks of 100");
    let mut ids = Vec::new();
    for (kind, entries) in &bundles {
        assert_eq!(kind, "transaction");
        let (provenance, others) = split_provenance(entries);
        assert_eq!(provenance.len(), 1, "one Provenance per chunk");
        let mut t = targets(&provenance[0]);
        let mut o = others.clone();
        t.sort();
        o.sort();
        assert_eq!(t, o, "the Provenance targets its chunk");
        ids.push(provenance[0]["id"].clone());
    }
    assert_ne!(ids[0], ids[1]);
    assert_eq!(report.resources_written, 150, "Provenances are not counted");
}

/// Helios FHIR Server, a real R4 server, takes the Provenance in the delivery's transaction,
/// and answers the engine's look-up of it (`GET Provenance/{id}`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helios_takes_the_provenance_of_a_delivery() {
    let helios = Helios::start(Db::Memory).await;
    let defs = definitions(
        &(sink_doc(&helios.url, "transaction", true) + &feed_doc(&bearer_auth(), "sync", "v1", "")),
    );
    let state = tempfile::tempdir().expect("state");
    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    let got = bearer_push(&served)
        .body(patient_payload("hx-1"))
        .send()
        .await;
    assert_eq!(got.status, 200, "{}\n{}", got.text, helios.log());
    let http = client(CLIENT_TIMEOUT);
    let (status, found) = get_json(&http, &format!("{}/Provenance", helios.url)).await;
    assert_eq!(status, 200, "{found}");
    let entries = found["entry"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 1, "{found}");
    let p = &entries[0]["resource"];
    assert_eq!(targets(p), vec!["Patient/hx-1"], "{p}");
    let id = p["id"].as_str().expect("an id");
    let (status, read) = get_json(&http, &format!("{}/Provenance/{id}", helios.url)).await;
    assert_eq!((status, &read["id"]), (200, &json!(id)), "{read}");
    let (status, _) = get_json(
        &http,
        &format!(
            "{}/Provenance/{}",
            helios.url, "0c1e5b1e-0000-5000-8000-000000000000"
        ),
    )
    .await;
    assert_eq!(status, 404, "an unknown Provenance is not found");
}

/// A JSON push to the `feed` connector of `served` with the bearer token.
fn bearer_push(served: &EngineRouter) -> RouterCall {
    served
        .post(format!("{}/push/feed", served.base))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {TOKEN}"))
}

// ------------------------------------------------------------------------------------------
// 6. The queue's segments: torn tails, damage, the earlier layout
// ------------------------------------------------------------------------------------------

/// The segment files of `feed`'s queue in `state`, in order.
fn segments(state: &Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(state.join("push/feed/queue"))
        .map(|r| {
            r.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// The queue files of the earlier layout (a `.json` per payload) in `feed`'s queue.
fn payload_files(state: &Path) -> Vec<String> {
    std::fs::read_dir(state.join("push/feed/queue"))
        .map(|r| {
            r.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default()
}

/// `n` queued pushes `{prefix}-{i}` to a fresh engine on `state` (no drainer), each 202.
async fn queue_payloads(defs: &Path, state: &Path, prefix: &str, n: usize) {
    let served = EngineRouter::new(load(defs), state, CLIENT_TIMEOUT);
    for i in 0..n {
        let got = bearer_push(&served)
            .body(patient_payload(&format!("{prefix}-{i}")))
            .send()
            .await;
        assert_eq!(got.status, 202, "{}", got.text);
    }
}

/// The Patients the sink was sent, in order of their writes.
fn written_ids(sink: &Sink) -> Vec<String> {
    sink.store()
        .applied
        .iter()
        .filter(|(k, _)| k.starts_with("Patient/"))
        .map(|(k, _)| k.trim_start_matches("Patient/").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_of_the_queue_is_truncated_at_open_and_no_record_before_it_lost() {
    let sink = Sink::start(Duration::ZERO).await;
    let defs = definitions(
        &(sink_doc(&sink.url, "transaction", true) + &feed_doc(&bearer_auth(), "queued", "v1", "")),
    );
    let state = tempfile::tempdir().expect("state");
    queue_payloads(defs.path(), state.path(), "t", 3).await;
    let segs = segments(state.path());
    assert_eq!(segs.len(), 1, "three payloads in one segment: {segs:?}");
    let whole = std::fs::read(&segs[0]).expect("segment");
    // Half of a fourth record, as a group commit cut by `kill -9` leaves it: a header that
    // announces 400 bytes (length, checksum, sequence) and 100 of them.
    let mut torn = whole.clone();
    torn.extend(400u32.to_le_bytes());
    torn.extend(0x5eed_u32.to_le_bytes());
    torn.extend(3u64.to_le_bytes());
    torn.extend(&patient_payload("t-3")[..60]);
    torn.extend([b' '; 40]);
    std::fs::write(&segs[0], &torn).expect("write");

    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    assert_eq!(
        std::fs::read(&segs[0]).expect("segment").len(),
        whole.len(),
        "the torn tail is truncated at open"
    );
    let endpoint = served.engine.pushes["feed"].clone();
    assert_eq!(
        endpoint.depths(),
        (3, 0),
        "the three records before it queued"
    );
    // A payload accepted after the truncation goes on being queued, after them.
    let got = bearer_push(&served)
        .body(patient_payload("t-4"))
        .send()
        .await;
    assert_eq!(got.status, 202, "{}", got.text);
    let drainer = Drainer::start(endpoint.clone());
    let e = endpoint.clone();
    wait_until(WAIT, "the queue empties", move || e.depths().0 == 0).await;
    drainer.stop().await;
    assert_eq!(written_ids(&sink), ["t-0", "t-1", "t-2", "t-4"]);
    drop(served);

    // Reopened after the drain: the records settled are not written again, and the
    // segments that held only them are deleted.
    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    let endpoint = served.engine.pushes["feed"].clone();
    assert_eq!(endpoint.depths(), (0, 0));
    assert!(
        segments(state.path()).is_empty(),
        "{:?}",
        segments(state.path())
    );
    let drainer = Drainer::start(endpoint.clone());
    let got = bearer_push(&served)
        .body(patient_payload("t-5"))
        .send()
        .await;
    assert_eq!(got.status, 202, "{}", got.text);
    let e = endpoint.clone();
    wait_until(WAIT, "the queue empties", move || e.depths().0 == 0).await;
    drainer.stop().await;
    assert_eq!(written_ids(&sink), ["t-0", "t-1", "t-2", "t-4", "t-5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_in_the_middle_of_a_segment_becomes_a_dead_letter_and_the_rest_is_written()
{
    let sink = Sink::start(Duration::ZERO).await;
    let defs = definitions(
        &(sink_doc(&sink.url, "transaction", true) + &feed_doc(&bearer_auth(), "queued", "v1", "")),
    );
    let state = tempfile::tempdir().expect("state");
    queue_payloads(defs.path(), state.path(), "m", 5).await;
    let segs = segments(state.path());
    assert_eq!(segs.len(), 1, "{segs:?}");
    // Disk damage: one byte of the third payload changed (`m-2` becomes `m-X`).
    let mut bytes = std::fs::read(&segs[0]).expect("segment");
    let at = bytes
        .windows(5)
        .position(|w| w == b"\"m-2\"")
        .expect("the third payload's id");
    bytes[at + 3] = b'X';
    std::fs::write(&segs[0], &bytes).expect("write");

    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    let endpoint = served.engine.pushes["feed"].clone();
    assert_eq!(
        endpoint.depths(),
        (4, 1),
        "four records queued, the damaged one a dead letter"
    );
    let metrics =
        served
            .engine
            .metrics
            .render(std::iter::empty(), std::iter::empty(), std::iter::empty());
    assert_eq!(
        feed_counter(&metrics, "engine_push_queue_damaged_total"),
        Some(1),
        "{metrics}"
    );
    let letters = endpoint.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let reason = letters[0]["reason"].as_str().unwrap_or_default().to_owned();
    let root = state.path().to_string_lossy().into_owned();
    assert!(
        reason.contains("push/feed/queue/") && reason.contains(".seg") && !reason.contains(&root),
        "the reason names the segment within the state directory: {reason}"
    );
    let (_, shown) = endpoint.dead_letters_shown(10).await;
    assert!(
        shown[0]["payload"]
            .as_str()
            .is_some_and(|p| p.contains("m-X")),
        "the damaged bytes are kept as read: {shown:?}"
    );
    let drainer = Drainer::start(endpoint.clone());
    let e = endpoint.clone();
    wait_until(WAIT, "the queue empties", move || e.depths().0 == 0).await;
    drainer.stop().await;
    assert_eq!(written_ids(&sink), ["m-0", "m-1", "m-3", "m-4"]);
    drop(served);
    // Opened again: the damage is not dead-lettered twice.
    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    assert_eq!(served.engine.pushes["feed"].depths(), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_of_the_file_per_payload_layout_is_drained_first_after_an_upgrade() {
    let sink = Sink::start(Duration::ZERO).await;
    let defs = definitions(
        &(sink_doc(&sink.url, "transaction", true) + &feed_doc(&bearer_auth(), "queued", "v1", "")),
    );
    let state = tempfile::tempdir().expect("state");
    // What the earlier engine left: a file per queued payload, named by its sequence.
    let queue = state.path().join("push/feed/queue");
    std::fs::create_dir_all(&queue).expect("mkdir");
    let received = Utc::now().to_rfc3339();
    for i in 0..3 {
        let payload: Value =
            serde_json::from_slice(&patient_payload(&format!("old-{i}"))).expect("JSON");
        let item = json!({"key": format!("key:old-{i}"), "keys": [format!("key:old-{i}")], "received": received, "payload": payload});
        std::fs::write(queue.join(format!("{:020}.json", 40 + i)), item.to_string())
            .expect("write");
    }

    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    let endpoint = served.engine.pushes["feed"].clone();
    assert_eq!(
        endpoint.depths(),
        (3, 0),
        "the earlier layout's payloads queued"
    );
    // Their keys are known: a resend is a duplicate.
    let got = bearer_push(&served)
        .header("Idempotency-Key", "old-1")
        .body(patient_payload("old-1"))
        .send()
        .await;
    assert_eq!(status_of(&got).await, (200, json!("duplicate")));
    for i in 0..2 {
        let got = bearer_push(&served)
            .body(patient_payload(&format!("new-{i}")))
            .send()
            .await;
        assert_eq!(got.status, 202, "{}", got.text);
    }
    assert_eq!(segments(state.path()).len(), 1, "new payloads in a segment");
    assert_eq!(payload_files(state.path()).len(), 3);
    let drainer = Drainer::start(endpoint.clone());
    let e = endpoint.clone();
    wait_until(WAIT, "the queue empties", move || e.depths().0 == 0).await;
    drainer.stop().await;
    assert_eq!(
        written_ids(&sink),
        ["old-0", "old-1", "old-2", "new-0", "new-1"],
        "the earlier payloads first, each once"
    );
    assert!(
        payload_files(state.path()).is_empty(),
        "{:?}",
        payload_files(state.path())
    );
    drop(served);
    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    assert_eq!(served.engine.pushes["feed"].depths(), (0, 0));
}
