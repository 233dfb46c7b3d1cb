//! OTLP/HTTP export of spans (`--otlp-endpoint`) by a real `engine serve`: a collector
//! stand-in on 127.0.0.1 decodes the OTLP JSON it gets and the test checks the spans of an
//! inbound request with two source calls (one trace, the caller's; the request's span a child
//! of the caller's, each source call's a child of the request's, the ids the sources got in
//! `traceparent`); a log line written inside a request carries its trace id; and a collector
//! that hangs or is down costs the requests nothing (answered as before, spans dropped and
//! counted, each export given up after its bounded time).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde_json::{Value, json};

use crate::dead_letters::{PUSH_TOKEN, push_yaml};
use crate::engine_under_test::definitions;
use crate::fhir_standin::{SEARCH_OVER_A_AND_B, fhir_json, fhir_source};
use crate::local_http::{bind, client, send, spawn_app};
use crate::serve_process::ServeProcess;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// A collector stand-in: the spans of every export it took, decoded.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Collector {
    async fn start() -> (Collector, String) {
        let c = Collector::default();
        let kept = c.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let kept = kept.clone();
                async move {
                    assert_eq!(
                        headers.get("content-type").and_then(|v| v.to_str().ok()),
                        Some("application/json")
                    );
                    let v: Value = serde_json::from_str(&body).expect("OTLP JSON");
                    for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                        assert_eq!(
                            rs["resource"]["attributes"][0]["value"]["stringValue"],
                            "fosps-connector-engine"
                        );
                        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                            let spans = ss["spans"].as_array().cloned().unwrap_or_default();
                            kept.spans.lock().expect("spans").extend(spans);
                        }
                    }
                    axum::Json(json!({}))
                }
            }),
        );
        let (listener, url) = bind().await;
        spawn_app(listener, app);
        (c, url)
    }

    fn of_trace(&self, trace: &str) -> Vec<Value> {
        self.spans
            .lock()
            .expect("spans")
            .iter()
            .filter(|s| s["traceId"] == trace)
            .cloned()
            .collect()
    }
}

/// A FHIR source answering every search with one Patient `id`, keeping each call's
/// `traceparent`.
async fn source(id: &'static str, seen: Arc<Mutex<Vec<String>>>) -> String {
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let seen = seen.clone();
        async move {
            if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
                seen.lock().expect("seen").push(tp.to_owned());
            }
            fhir_json(
                200,
                &json!({"resourceType": "Bundle", "type": "searchset",
                        "entry": [{"resource": {"resourceType": "Patient", "id": id}}]}),
            )
        }
    });
    let (listener, url) = bind().await;
    spawn_app(listener, app);
    url
}

async fn serve(defs: &std::path::Path, state: &std::path::Path, flags: &[&str]) -> ServeProcess {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.arg("serve")
        .arg(defs)
        .arg("--state-dir")
        .arg(state)
        .args(flags)
        .env_remove("ENGINE_OTLP_ENDPOINT")
        .env_remove("ENGINE_OTLP_QUEUE")
        .env_remove("ENGINE_STATE_DIR")
        .env_remove("ENGINE_SINK_DIR");
    ServeProcess::start(cmd, Duration::from_secs(10)).await
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    span["attributes"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["key"] == key))
        .map_or(&Value::Null, |x| &x["value"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_and_its_two_source_calls_are_exported_as_linked_spans() {
    let (collector, collector_url) = Collector::start().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let a = source("from-a", seen.clone()).await;
    let b = source("from-b", seen.clone()).await;
    let yaml = format!(
        "{}{}{SEARCH_OVER_A_AND_B}---\n{}",
        fhir_source("a", &a),
        fhir_source("b", &b),
        push_yaml("$.id")
    );
    let defs = definitions(&yaml);
    let state = tempfile::tempdir().expect("state");
    let server = serve(
        defs.path(),
        state.path(),
        &["--otlp-endpoint", &collector_url],
    )
    .await;
    let c = client(CLIENT_TIMEOUT);
    let got = send(
        c.get(format!("{}/fhir/both/Patient", server.base))
            .header("traceparent", CALLER),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);

    let deadline = Instant::now() + Duration::from_secs(15);
    let spans = loop {
        let spans = collector.of_trace(CALLER_TRACE);
        if spans.len() >= 3 {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "three spans of the trace within 15 s: {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let server_spans: Vec<&Value> = spans.iter().filter(|s| s["kind"] == 2).collect();
    assert_eq!(server_spans.len(), 1, "{spans:#?}");
    let request = server_spans[0];
    assert_eq!(request["parentSpanId"], CALLER_SPAN, "{request}");
    assert_eq!(
        attr(request, "http.response.status_code")["intValue"],
        "200"
    );
    assert_eq!(attr(request, "fosps.connector")["stringValue"], "both");
    assert_eq!(attr(request, "http.request.method")["stringValue"], "GET");
    let start: u128 = request["startTimeUnixNano"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("a start");
    let end: u128 = request["endTimeUnixNano"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("an end");
    assert!(start > 0 && end >= start, "{request}");
    let request_span = request["spanId"].as_str().expect("a span id");
    assert_eq!(request_span.len(), 16);

    let mut sources = Vec::new();
    let sent = seen.lock().expect("seen").clone();
    for call in spans.iter().filter(|s| s["kind"] == 3) {
        assert_eq!(call["parentSpanId"], request_span, "{call}");
        assert_eq!(attr(call, "http.response.status_code")["intValue"], "200");
        assert_eq!(attr(call, "fosps.attempt")["intValue"], "0");
        let origin = attr(call, "server.origin")["stringValue"]
            .as_str()
            .expect("an origin");
        assert!(
            (origin == a || origin == b) && !origin.contains("/Patient"),
            "the origin only: {origin}"
        );
        sources.push(attr(call, "fosps.source")["stringValue"].clone());
        // The source got this span's id as the parent id of its `traceparent`.
        let id = call["spanId"].as_str().expect("a span id");
        assert!(
            sent.iter()
                .any(|tp| tp == &format!("00-{CALLER_TRACE}-{id}-01")),
            "{id} in {sent:?}"
        );
    }
    sources.sort_by_key(Value::to_string);
    assert_eq!(sources, vec![json!("a"), json!("b")]);

    // A log line written inside a request carries the request's trace id.
    let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let got = send(
        c.post(format!("{}/push/inbox", server.base))
            .bearer_auth(PUSH_TOKEN)
            .header("traceparent", other)
            .header("content-type", "application/json")
            .body(r#"{"id": "bad id"}"#),
    )
    .await;
    assert_eq!(got.status, 422, "{}", got.text);
    let log = server.log();
    let line: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("payload dead-lettered"))
        })
        .unwrap_or_else(|| panic!("the dead-letter warning in the log:\n{log}"));
    assert_eq!(
        line["span"]["trace_id"], "0af7651916cd43dd8448eb211c80319c",
        "{line}"
    );
}

/// `engine_otlp_*` counters of a running engine.
async fn counters(c: &reqwest::Client, base: &str) -> (f64, f64) {
    let text = send(c.get(format!("{base}/metrics"))).await.text;
    let value = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("engine_otlp_spans_total{outcome=\"dropped\"}"),
        value("engine_otlp_export_failures_total"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_hangs_or_is_down_costs_the_requests_nothing() {
    // A collector that takes connections and never answers.
    let (listener, hanging) = bind().await;
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let seen = Arc::new(Mutex::new(Vec::new()));
    let a = source("from-a", seen.clone()).await;
    let b = source("from-b", seen).await;
    let yaml = format!(
        "{}{}{SEARCH_OVER_A_AND_B}",
        fhir_source("a", &a),
        fhir_source("b", &b)
    );
    let defs = definitions(&yaml);
    let c = client(CLIENT_TIMEOUT);
    let down = crate::local_http::dead_url();
    // The hanging one holds each export for its whole bounded time, so the queue fills and
    // spans are dropped; the one that is down refuses at once, so exports fail.
    for (collector, drops) in [(hanging.clone(), true), (down.to_string(), false)] {
        let state = tempfile::tempdir().expect("state");
        let server = serve(
            defs.path(),
            state.path(),
            &["--otlp-endpoint", &collector, "--otlp-queue", "16"],
        )
        .await;
        // Requests go on being answered as ever while spans are dropped.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut answered = 0;
        loop {
            let got = send(c.get(format!("{}/fhir/both/Patient", server.base))).await;
            assert_eq!(got.status, 200, "{collector}: {}", got.text);
            assert_eq!(
                got.json()["entry"].as_array().map(Vec::len),
                Some(2),
                "{}",
                got.text
            );
            answered += 1;
            let (dropped, failed) = counters(&c, &server.base).await;
            if failed > 0.0 && (dropped > 0.0 || !drops) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{collector}: spans dropped and an export given up within 30 s ({dropped}, {failed})"
            );
        }
        assert!(answered >= 1);
        let log = server.log();
        assert!(
            log.contains("spans not exported"),
            "{collector}: the failed export is logged:\n{log}"
        );
    }
    held.abort();
}

/// A FHIR sink stand-in taking transactions, keeping each post's `traceparent`.
async fn sink(seen: Arc<Mutex<Vec<String>>>) -> String {
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: String| {
        let seen = seen.clone();
        async move {
            if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
                seen.lock().expect("seen").push(tp.to_owned());
            }
            let bundle: Value = serde_json::from_str(&body).unwrap_or_default();
            let answers: Vec<Value> = bundle["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|_| json!({"response": {"status": "201 Created"}}))
                .collect();
            fhir_json(
                200,
                &json!({"resourceType": "Bundle", "type": "transaction-response", "entry": answers}),
            )
        }
    });
    let (listener, url) = bind().await;
    spawn_app(listener, app);
    url
}

/// A cron connector `copy` syncing Patients from a FHIR source at `a` into a FHIR sink at
/// `store`.
fn copy_yaml(a: &str, store: &str) -> String {
    format!(
        r#"{}apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata: {{ name: store }}
spec:
  fhir: {{ url: "{store}", version: R4, mode: transaction, retries: 0, timeout: 5s }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: copy }}
spec:
  strategy: cron
  schedule: {{ cron: "0 2 * * *" }}
  sources: [a]
  sync: {{ resourceTypes: [Patient] }}
  sink: store
"#,
        fhir_source("a", a)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_run_s_source_calls_and_sink_posts_share_its_trace() {
    let (collector, collector_url) = Collector::start().await;
    let from_source = Arc::new(Mutex::new(Vec::new()));
    let at_sink = Arc::new(Mutex::new(Vec::new()));
    let a = source("from-a", from_source.clone()).await;
    let store = sink(at_sink.clone()).await;
    let defs = definitions(&copy_yaml(&a, &store));
    let state = tempfile::tempdir().expect("state");
    let server = serve(
        defs.path(),
        state.path(),
        &["--otlp-endpoint", &collector_url, "--admin-open"],
    )
    .await;
    let c = client(CLIENT_TIMEOUT);
    let got = send(c.post(format!("{}/connectors/copy/run", server.base))).await;
    assert_eq!(got.status, 202, "{}", got.text);

    // The sink's post carries the run's trace, as the source's call does.
    let deadline = Instant::now() + Duration::from_secs(15);
    let posted = loop {
        if let Some(tp) = at_sink.lock().expect("seen").first().cloned() {
            break tp;
        }
        assert!(
            Instant::now() < deadline,
            "the run posts to the sink within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let called = from_source.lock().expect("seen")[0].clone();
    let trace = &posted[3..35];
    assert_eq!(&called[3..35], trace, "{called} / {posted}");
    // Both exported, children of the run's span.
    let spans = loop {
        let spans = collector.of_trace(trace);
        if spans.len() >= 2 {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "two spans within 15 s: {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let post = spans
        .iter()
        .find(|s| s["name"] == "POST sink")
        .unwrap_or_else(|| panic!("the sink's span: {spans:#?}"));
    let call = spans
        .iter()
        .find(|s| attr(s, "fosps.source")["stringValue"] == "a")
        .unwrap_or_else(|| panic!("the source's span: {spans:#?}"));
    assert_eq!(post["parentSpanId"], call["parentSpanId"], "{spans:#?}");
    assert_eq!(&posted[36..52], post["spanId"], "{posted}: {post}");
    assert_eq!(attr(post, "server.origin")["stringValue"], store.as_str());
    assert_eq!(attr(post, "http.response.status_code")["intValue"], "200");
}

/// An `engine run` exits right after its run; the spans it queued reach the collector first
/// (flushed at exit, within a short deadline), though the exporter would have waited up to a
/// second to fill its batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_run_s_spans_arrive_although_it_exits_right_after() {
    let (collector, collector_url) = Collector::start().await;
    let from_source = Arc::new(Mutex::new(Vec::new()));
    let at_sink = Arc::new(Mutex::new(Vec::new()));
    let a = source("from-a", from_source.clone()).await;
    let store = sink(at_sink.clone()).await;
    let defs = definitions(&copy_yaml(&a, &store));
    let state = tempfile::tempdir().expect("state");
    let mut cmd = crate::engine_under_test::engine_run_command(defs.path(), "copy", state.path());
    cmd.arg("--otlp-endpoint").arg(&collector_url);
    let exit = crate::engine_under_test::exit_of(cmd, Duration::from_secs(30)).await;
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);

    // Already there when the process has ended: nothing is awaited after the exit.
    let posted = at_sink.lock().expect("seen").first().cloned();
    let posted = posted.unwrap_or_else(|| panic!("the run posted to the sink: {}", exit.stderr));
    let spans = collector.of_trace(&posted[3..35]);
    assert!(
        spans.iter().any(|s| s["name"] == "POST sink"),
        "the sink post's span was exported before the exit: {spans:#?}\n{}",
        exit.stderr
    );
    assert!(
        spans
            .iter()
            .any(|s| attr(s, "fosps.source")["stringValue"] == "a"),
        "the source call's span was exported before the exit: {spans:#?}"
    );
}

/// A sync push connector `inbox` writing Patients to a FHIR sink at `store`.
fn sync_push_yaml(store: &str) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata: {{ name: store }}
spec:
  fhir: {{ url: "{store}", version: R4, mode: transaction, retries: 0, timeout: 5s }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: inbox }}
spec:
  strategy: push
  push:
    auth: {{ bearer: {{ token: {PUSH_TOKEN} }} }}
    mode: sync
  sink: store
  mapping:
    resourceType: Patient
    id: {{ $path: $.id }}
"#
    )
}

/// A sync push's sink post belongs to the push request's trace: its `traceparent` carries the
/// caller's trace id, and its span is a child of the request's span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_push_s_sink_post_is_a_child_of_the_request() {
    let (collector, collector_url) = Collector::start().await;
    let at_sink = Arc::new(Mutex::new(Vec::new()));
    let store = sink(at_sink.clone()).await;
    let defs = definitions(&sync_push_yaml(&store));
    let state = tempfile::tempdir().expect("state");
    let server = serve(
        defs.path(),
        state.path(),
        &["--otlp-endpoint", &collector_url],
    )
    .await;
    let c = client(CLIENT_TIMEOUT);
    let got = send(
        c.post(format!("{}/push/inbox", server.base))
            .bearer_auth(PUSH_TOKEN)
            .header("traceparent", CALLER)
            .header("content-type", "application/json")
            .body(r#"{"id": "p1"}"#),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let posted = at_sink.lock().expect("seen").first().cloned();
    let posted = posted.unwrap_or_else(|| panic!("the push posted to the sink"));
    assert_eq!(
        &posted[3..35],
        CALLER_TRACE,
        "the sink post's traceparent: {posted}"
    );

    let deadline = Instant::now() + Duration::from_secs(15);
    let spans = loop {
        let spans = collector.of_trace(CALLER_TRACE);
        if spans.iter().any(|s| s["kind"] == 2) && spans.iter().any(|s| s["name"] == "POST sink") {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "the request's and the sink post's spans within 15 s: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let request = spans
        .iter()
        .find(|s| s["kind"] == 2)
        .unwrap_or_else(|| panic!("the request's span: {spans:#?}"));
    assert_eq!(request["parentSpanId"], CALLER_SPAN, "{request}");
    let post = spans
        .iter()
        .find(|s| s["name"] == "POST sink")
        .unwrap_or_else(|| panic!("the sink's span: {spans:#?}"));
    assert_eq!(post["parentSpanId"], request["spanId"], "{spans:#?}");
    assert_eq!(&posted[36..52], post["spanId"], "{posted}: {post}");
}
