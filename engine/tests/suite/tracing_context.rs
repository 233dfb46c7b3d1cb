//! W3C trace context through the engine (issue 15, part 6): a caller's valid `traceparent`
//! reaches the sources as the same trace with a new span id per call (and `tracestate`
//! passed through); a missing, malformed or huge one starts a fresh trace and the request is
//! answered normally; each cron run has its own trace. Real stand-in FHIR sources on
//! 127.0.0.1 record the headers of every call; the engine's router in-process
//! (`engine_router`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use serde_json::json;

use crate::engine_router::{EngineRouter, open_admin};
use crate::engine_under_test::{definitions, load};
use crate::fhir_standin::{SEARCH_OVER_A_AND_B as CONNECTOR, fhir_json, fhir_source as source};
use crate::local_http::{bind, spawn_app};

const TIMEOUT: Duration = Duration::from_secs(20);
const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A FHIR source answering every search with one `Patient`, keeping the headers of each call.
struct Recorder {
    url: String,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

impl Recorder {
    async fn start(patient: &'static str) -> Recorder {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let kept = seen.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let kept = kept.clone();
            async move {
                kept.lock().expect("the recorder lock").push(headers);
                let t = uri.path().rsplit('/').next().unwrap_or_default().to_owned();
                let bundle = json!({"resourceType": "Bundle", "type": "searchset", "entry": [
                    {"resource": {"resourceType": t, "id": patient}}]});
                let r: Response = fhir_json(200, &bundle);
                r
            }
        });
        let (listener, url) = bind().await;
        spawn_app(listener, app);
        Recorder { url, seen }
    }

    fn calls(&self) -> usize {
        self.seen.lock().expect("the recorder lock").len()
    }

    /// The `traceparent` and `tracestate` of every call so far, taking them.
    fn take(&self) -> Vec<(String, Option<String>)> {
        let text = |h: &HeaderMap, n: &str| {
            h.get(n)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        std::mem::take(&mut *self.seen.lock().expect("the recorder lock"))
            .iter()
            .map(|h| {
                (
                    text(h, "traceparent").unwrap_or_default(),
                    text(h, "tracestate"),
                )
            })
            .collect()
    }
}

/// `(trace id, parent id, flags)` of a valid version-00 `traceparent`; fails the test else.
fn parts(tp: &str) -> (String, String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    assert!(
        p.len() == 4
            && p[0] == "00"
            && hex(p[1], 32)
            && hex(p[2], 16)
            && hex(p[3], 2)
            && p[1].bytes().any(|b| b != b'0')
            && p[2].bytes().any(|b| b != b'0'),
        "not a valid traceparent: {tp:?}"
    );
    (p[1].to_owned(), p[2].to_owned(), p[3].to_owned())
}

async fn setup() -> (Recorder, Recorder, EngineRouter, tempfile::TempDir) {
    let (a, b) = (Recorder::start("pa").await, Recorder::start("pb").await);
    let defs = definitions(&(source("a", &a.url) + &source("b", &b.url) + CONNECTOR));
    let engine = EngineRouter::with_limits(
        load(defs.path()),
        &defs.path().join("state"),
        open_admin(),
        TIMEOUT,
    );
    (a, b, engine, defs)
}

/// Searches once with `headers`; the answer has both patients; gives the calls both sources
/// saw.
async fn search(
    engine: &EngineRouter,
    a: &Recorder,
    b: &Recorder,
    n: usize,
    headers: &[(&str, &str)],
) -> Vec<(String, Option<String>)> {
    let mut call = engine.get(format!("/fhir/both/Patient?_count={n}"));
    for (k, v) in headers {
        call = call.header(k, v);
    }
    let got = call.send().await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(
        got.json()["entry"].as_array().map(Vec::len),
        Some(2),
        "{}",
        got.text
    );
    assert!(
        got.headers.get("traceparent").is_none(),
        "answers carry no traceparent"
    );
    let mut seen = a.take();
    seen.extend(b.take());
    assert_eq!(seen.len(), 2, "one call to each source: {seen:?}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_trace_reaches_every_source_with_a_new_span_per_call() {
    let (a, b, engine, _defs) = setup().await;
    let seen = search(
        &engine,
        &a,
        &b,
        2,
        &[
            ("traceparent", CALLER),
            ("tracestate", "vendor=abc,other=1"),
        ],
    )
    .await;
    let spans: Vec<String> = seen
        .iter()
        .map(|(tp, state)| {
            let (trace, span, flags) = parts(tp);
            assert_eq!(trace, CALLER_TRACE);
            assert_ne!(span, "00f067aa0ba902b7", "a new parent id");
            assert_eq!(flags, "01");
            assert_eq!(state.as_deref(), Some("vendor=abc,other=1"));
            span
        })
        .collect();
    assert_ne!(spans[0], spans[1], "each outbound call has its own span id");

    // A `tracestate` over 512 bytes is dropped; the trace still goes on.
    let long = format!("v={}", "x".repeat(600));
    let seen = search(
        &engine,
        &a,
        &b,
        3,
        &[("traceparent", CALLER), ("tracestate", &long)],
    )
    .await;
    for (tp, state) in &seen {
        assert_eq!(parts(tp).0, CALLER_TRACE);
        assert_eq!(state, &None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_malformed_traceparent_starts_a_fresh_trace() {
    let (a, b, engine, _defs) = setup().await;
    let huge = format!("00-{}-00f067aa0ba902b7-01", "a".repeat(10 * 1024));
    let malformed = [
        "",
        "garbage",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        huge.as_str(),
    ];
    let mut traces = Vec::new();
    let mut cases: Vec<Option<&str>> = vec![None];
    cases.extend(malformed.iter().map(|m| Some(*m)));
    for (i, case) in cases.iter().enumerate() {
        let mut headers = vec![("tracestate", "vendor=abc")];
        if let Some(tp) = case {
            headers.push(("traceparent", tp));
        }
        let seen = search(&engine, &a, &b, i + 2, &headers).await;
        let (t0, s0, _) = parts(&seen[0].0);
        let (t1, s1, _) = parts(&seen[1].0);
        assert_eq!(t0, t1, "one trace per request ({case:?})");
        assert_ne!(s0, s1, "one span per call ({case:?})");
        assert_ne!(t0, CALLER_TRACE);
        assert_ne!(t0, "0".repeat(32));
        for (_, state) in &seen {
            assert_eq!(state, &None, "no tracestate without a valid traceparent");
        }
        traces.push(t0);
    }
    let mut distinct = traces.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        traces.len(),
        "a fresh trace each time: {traces:?}"
    );
}

/// A cron connector syncing two resource types from source `a`: two source calls per run.
const CRON: &str = r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: nightly }
spec:
  strategy: cron
  schedule: { cron: "0 2 * * *" }
  sources: [a]
  sync: { resourceTypes: [Patient, Organization] }
  run: { onRecordError: skip }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cron_run_has_its_own_trace() {
    let a = Recorder::start("r1").await;
    let defs = definitions(&(source("a", &a.url) + CRON));
    let engine = EngineRouter::with_limits(
        load(defs.path()),
        &defs.path().join("state"),
        open_admin(),
        TIMEOUT,
    );
    let mut runs = Vec::new();
    for _ in 0..2 {
        let got = engine
            .post("/connectors/nightly/run")
            .header("traceparent", CALLER)
            .send()
            .await;
        assert_eq!(got.status, 202, "{}", got.text);
        let until = tokio::time::Instant::now() + TIMEOUT;
        while a.calls() < 2 {
            assert!(
                tokio::time::Instant::now() < until,
                "the run made no two calls"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let seen = a.take();
        assert_eq!(seen.len(), 2, "{seen:?}");
        let (t0, s0, _) = parts(&seen[0].0);
        let (t1, s1, _) = parts(&seen[1].0);
        assert_eq!(t0, t1, "one trace for the calls of a run");
        assert_ne!(s0, s1);
        assert_ne!(t0, CALLER_TRACE, "a run starts its own trace");
        runs.push(t0);
        // The run is over before the next one is asked for.
        let until = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let got = engine.get("/connectors/nightly").send().await;
            if got.json()["run"]["lastRun"].is_object() && got.json()["run"]["running"] != true {
                break;
            }
            assert!(tokio::time::Instant::now() < until, "the run did not end");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_ne!(runs[0], runs[1], "each run its own trace");
}
