//! A trustworthy data path, bounded: memory bounded by records and values rather than bytes
//! (a real `engine serve` against an answer of many tiny records, its peak RSS read from
//! `/proc`), pushes capped by records and values, cron runs with a per-record error policy,
//! a watermark that a date in 2099 cannot carry away, page limits honoured and reported, a
//! lookback, ids and resource types checked before anything reaches a sink, and `onlyChanged`
//! that sees a change of `meta.profile`.
//!
//! Stand-ins are small axum apps on 127.0.0.1: a JSON API of tiny records, a FHIR source
//! (`fhir_standin`, or a fixed searchset here), and a FHIR sink that records every entry it is
//! sent. Every wait is bounded; no sleep stands for a condition.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use chrono::DateTime;
use serde_json::{Value, json};

use crate::engine_router::{EngineRouter, open_admin, open_engine};
use crate::engine_under_test::{
    Drainer, definitions, load, run_with_deadline, runner_with_sink_dir, wait_until, watermarks,
};
use crate::fhir_resources::instant;
use crate::fhir_standin::{FhirSource, fhir_json};
use crate::local_http::{bind, client, send, spawn_app};
use crate::serve_process::ServeProcess;

/// Longest one request of a test may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one cron run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// A JSON API answering every `GET /records` with the same body.
async fn records_api(body: Bytes) -> String {
    slow_records_api(body, Duration::ZERO).await
}

/// A JSON API answering every `GET /records` with the same body, after `delay` (a slow
/// source: the search is in flight at least that long).
async fn slow_records_api(body: Bytes, delay: Duration) -> String {
    let (listener, url) = bind().await;
    let app = axum::Router::new()
        .route(
            "/records",
            get(move |State(b): State<Bytes>| async move {
                tokio::time::sleep(delay).await;
                ([("content-type", "application/json")], b)
            }),
        )
        .with_state(body);
    spawn_app(listener, app);
    url
}

/// `[{"id":"x"},{"id":"x"},...]` of about `mib` MiB.
fn tiny_records(mib: usize) -> Bytes {
    let record = br#"{"id":"x"},"#;
    let n = (mib << 20) / record.len();
    let mut body = Vec::with_capacity(mib << 20);
    body.push(b'[');
    for _ in 1..n {
        body.extend_from_slice(record);
    }
    body.extend_from_slice(br#"{"id":"x"}]"#);
    Bytes::from(body)
}

/// The peak resident set (VmHWM) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmHWM line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_of_8_mib_of_tiny_records_keeps_serve_under_300_mb_and_healthz_answering() {
    // Slow to answer, so that `/healthz` is asked while the search is in flight.
    let api = slow_records_api(tiny_records(8), Duration::from_millis(500)).await;
    let defs = definitions(&format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: tiny }}
spec:
  strategy: pull
  source: {{ url: "{api}", timeout: 20s, retries: 0 }}
  pull:
    resources:
      - type: Patient
        search:
          request: {{ path: /records }}
          records: $[*]
  mapping:
    resourceType: Patient
    id: {{ $path: $.id }}
"#
    ));
    let state = tempfile::tempdir().expect("state");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.arg("serve")
        .arg(defs.path())
        .arg("--state-dir")
        .arg(state.path())
        .arg("--request-timeout")
        .arg("25s")
        .env_remove("ENGINE_PUBLIC_URL");
    let server = ServeProcess::start(cmd, Duration::from_secs(20)).await;
    let pid = server.child.id().expect("a running engine");
    let http = client(CLIENT_TIMEOUT);

    // `/healthz` is asked all along the search; each answer must come within 2 s.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = tokio::spawn({
        let (done, base) = (done.clone(), server.base.clone());
        async move {
            let quick = client(Duration::from_secs(2));
            let mut answered = 0;
            loop {
                let got = quick.get(format!("{base}/healthz")).send().await;
                assert!(
                    got.as_ref().is_ok_and(|r| r.status() == 200),
                    "/healthz answers within 2 s during the search: {got:?}"
                );
                answered += 1;
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    return answered;
                }
                // The pace of the probe, not a wait for a condition.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let got = send(http.get(format!("{}/fhir/tiny/Patient", server.base))).await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let answered = probe.await.expect("the probe");
    assert!(
        answered >= 2,
        "/healthz was asked during the search ({answered} times)"
    );
    let body = got.json();
    match got.status {
        200 => assert_eq!(body["resourceType"], "Bundle", "{}", got.text),
        _ => {
            assert_eq!(body["resourceType"], "OperationOutcome", "{}", got.text);
            let text = body["issue"][0]["diagnostics"].as_str().unwrap_or("");
            assert!(
                text.contains("`tiny`") && text.contains("maxValues"),
                "the OperationOutcome names the source and the cap: {text}"
            );
        }
    }
    let peak = peak_rss_kib(pid);
    assert!(
        peak < 300 * 1024,
        "peak RSS {} MiB for an answer of 8 MiB of tiny records (limit 300 MiB)",
        peak / 1024
    );
}

fn push_doc(extra: &str) -> String {
    format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: inbox }}
spec:
  strategy: push
  push:
    auth: {{ bearer: {{ token: token-0123456789 }} }}
    mode: sync
    records: $[*]
    maxBody: 8MiB
{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_of_many_records_is_refused_with_413_before_anything_is_written() {
    let defs = definitions(&push_doc(""));
    let state = tempfile::tempdir().expect("state");
    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);
    let push = |body: Vec<u8>| {
        served
            .post("/push/inbox")
            .header("authorization", "Bearer token-0123456789")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // 5,000 small Patients: more records than the default `maxRecords` (1,000).
    let many: Vec<Value> = (0..5000)
        .map(|i| json!({"resourceType": "Patient", "id": format!("p{i}")}))
        .collect();
    let got = push(serde_json::to_vec(&many).expect("JSON")).await;
    assert_eq!(got.status, 413, "{}", got.text);
    assert_eq!(got.json()["resourceType"], "OperationOutcome");
    assert!(got.text.contains("maxRecords"), "{}", got.text);
    // 4 MiB of `{"id":"x"}`: more values than the default `maxValues`, refused unparsed.
    let got = push(tiny_records(4).to_vec()).await;
    assert_eq!(got.status, 413, "{}", got.text);
    assert!(got.text.contains("maxValues"), "{}", got.text);
    let sink = state.path().join("ndjson").join("Patient.ndjson");
    assert!(!sink.exists(), "nothing was written");
    // A payload within the caps is written.
    let few: Vec<Value> = many.into_iter().take(10).collect();
    let got = push(serde_json::to_vec(&few).expect("JSON")).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let lines = std::fs::read_to_string(&sink).expect("the NDJSON sink");
    assert_eq!(lines.lines().count(), 10);
}

/// A JSON API of records with a `born` date and an `updated` cursor, the second unmappable.
fn dated_records() -> Bytes {
    Bytes::from(
        json!([
            {"id": "a", "born": "1970-01-01", "updated": "2026-01-01T00:00:01Z"},
            {"id": "b", "born": "not a date", "updated": "2026-01-01T00:00:02Z"},
            {"id": "c", "born": "1980-02-02", "updated": "2026-01-01T00:00:03Z"}
        ])
        .to_string(),
    )
}

fn fetch_doc(name: &str, api: &str, policy: &str) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: {name} }}
spec:
  strategy: cron
  schedule: {{ cron: "0 2 * * *" }}
  source: {{ url: "{api}", retries: 0, timeout: 5s }}
  run: {{ onRecordError: {policy} }}
  fetch:
    request: {{ path: /records }}
    records: $[*]
    incremental: {{ cursor: $.updated, param: since }}
  mapping:
    resourceType: Patient
    id: {{ $path: $.id }}
    birthDate: {{ $date: {{ $path: $.born }} }}
---
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_record_is_dead_lettered_with_skip_and_the_watermark_passes_it_and_fail_fails() {
    let api = records_api(dated_records()).await;
    let defs =
        definitions(&(fetch_doc("skipping", &api, "skip") + &fetch_doc("failing", &api, "fail")));
    let state = tempfile::tempdir().expect("state");
    let served = EngineRouter::with_limits(
        load(defs.path()),
        state.path(),
        open_admin(),
        CLIENT_TIMEOUT,
    );

    let job = served.engine.crons.get("skipping").expect("the cron job");
    let report = tokio::time::timeout(RUN_TIMEOUT, job.runner.run(false))
        .await
        .expect("the run ends in time")
        .0;
    assert!(report.ok(), "{:?}", report.failures);
    assert_eq!(report.records_read, 3);
    assert_eq!(report.records_dead_lettered, 1);
    assert_eq!(report.resources_written, 2);
    assert!(
        report.skipped.iter().any(|s| s.subject == "records[1]"),
        "{:?}",
        report.skipped
    );
    assert_eq!(
        watermarks(state.path(), "skipping")
            .get("records")
            .map(String::as_str),
        Some("2026-01-01T00:00:03Z"),
        "the watermark passes the bad record"
    );
    let got = served.get("/connectors/skipping/dead-letters").send().await;
    assert_eq!(got.status, 200, "{}", got.text);
    let letters = got.json();
    assert_eq!(letters.as_array().map(Vec::len), Some(1), "{letters}");
    let reason = letters[0]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("records[1]") && reason.contains("not a date"),
        "{reason}"
    );
    let kept = std::fs::read_dir(state.path().join("cron/skipping/dead"))
        .expect("the dead letters")
        .next()
        .expect("one dead letter")
        .expect("an entry");
    let letter: Value =
        serde_json::from_slice(&std::fs::read(kept.path()).expect("read")).expect("JSON");
    assert_eq!(letter["record"]["id"], "b", "the record itself is kept");
    let metrics = served.get("/metrics").send().await;
    assert!(
        metrics
            .text
            .contains("engine_records_dead_lettered_total{connector=\"skipping\"} 1"),
        "{}",
        metrics.text
    );

    let job = served.engine.crons.get("failing").expect("the cron job");
    let report = tokio::time::timeout(RUN_TIMEOUT, job.runner.run(false))
        .await
        .expect("the run ends in time")
        .0;
    assert!(!report.ok(), "with `fail` the run fails");
    assert_eq!(report.resources_written, 0);
    assert!(watermarks(state.path(), "failing").is_empty());
}

fn sync_doc(name: &str, source: &str, pagination: &str, run: &str, write: &str) -> String {
    let section = |key: &str, body: &str| {
        if body.is_empty() {
            String::new()
        } else {
            format!("  {key}: {{ {body} }}\n")
        }
    };
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: {name} }}
spec:
  strategy: cron
  schedule: {{ cron: "0 2 * * *" }}
  source: {{ type: fhir, url: "{source}", retries: 0, timeout: 5s{pagination} }}
  sync: {{ resourceTypes: [Patient], incremental: true, pageSize: 2 }}
{}{}---
"#,
        section("run", run),
        section("write", write)
    )
}

fn patient(id: &str, updated: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "meta": {"versionId": "1", "lastUpdated": updated}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_updated_in_2099_does_not_carry_the_watermark_away_and_is_reported() {
    let source = FhirSource::start().await;
    source.put(patient("p1", &instant(1)));
    source.put(patient("p2", &instant(2)));
    source.put(patient("future", "2099-01-01T00:00:00Z"));
    let defs = definitions(&sync_doc("copy", &source.url, "", "", ""));
    let state = tempfile::tempdir().expect("state");
    let runner = runner_with_sink_dir(
        &load(defs.path()),
        "copy",
        state.path(),
        &state.path().join("ndjson"),
    );
    let report = run_with_deadline(&runner, RUN_TIMEOUT).await;
    assert!(report.ok(), "{:?}", report.failures);
    assert_eq!(report.resources_written, 3, "the record itself is written");
    let mark = watermarks(state.path(), "copy")
        .get("Patient")
        .cloned()
        .expect("a watermark");
    let now = chrono::Utc::now();
    let mark_at = DateTime::parse_from_rfc3339(&mark).expect("an instant");
    assert!(
        mark_at <= now + chrono::Duration::minutes(5),
        "the watermark {mark} is not past now + 5 min"
    );
    assert_eq!(
        mark,
        instant(2),
        "the largest date that is not in the future"
    );
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("2099-01-01T00:00:00Z")),
        "the held watermark is reported: {:?}",
        report.warnings
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_runs_honour_pagination_max_pages_and_report_hitting_it() {
    let source = FhirSource::start().await;
    for i in 0..7 {
        source.put(patient(&format!("p{i}"), &instant(i + 1)));
    }
    let pagination = ", pagination: { fhir: true, maxPages: 2 }";
    let defs = definitions(&sync_doc("copy", &source.url, pagination, "", ""));
    let state = tempfile::tempdir().expect("state");
    let runner = runner_with_sink_dir(
        &load(defs.path()),
        "copy",
        state.path(),
        &state.path().join("ndjson"),
    );
    let report = run_with_deadline(&runner, RUN_TIMEOUT).await;
    assert_eq!(source.calls(), 2, "two pages of two, of four");
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.subject == "Patient" && f.message.contains("maxPages")),
        "hitting the limit is reported: {:?}",
        report.failures
    );
    assert_eq!(
        report.resources_written, 0,
        "nothing of a partial read is written"
    );
    assert!(watermarks(state.path(), "copy").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookback_asks_the_source_from_the_watermark_less_the_lookback() {
    let source = FhirSource::start().await;
    source.put(patient("p1", &instant(3600)));
    let defs = definitions(&sync_doc("copy", &source.url, "", "lookback: 10m", ""));
    let state = tempfile::tempdir().expect("state");
    let model = load(defs.path());
    let ndjson = state.path().join("ndjson");
    let report = run_with_deadline(
        &runner_with_sink_dir(&model, "copy", state.path(), &ndjson),
        RUN_TIMEOUT,
    )
    .await;
    assert!(report.ok(), "{:?}", report.failures);
    let mark = watermarks(state.path(), "copy")["Patient"].clone();
    assert_eq!(mark, instant(3600));
    let before = source.requests().len();
    let report = run_with_deadline(
        &runner_with_sink_dir(&model, "copy", state.path(), &ndjson),
        RUN_TIMEOUT,
    )
    .await;
    assert!(report.ok(), "{:?}", report.failures);
    assert_eq!(
        report.records_read, 1,
        "the record within the lookback is read again"
    );
    let second = &source.requests()[before];
    let query = second.split_once('?').map_or("", |(_, q)| q);
    let since: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "_lastUpdated")
        .map(|(_, v)| v.into_owned())
        .collect();
    assert_eq!(since.len(), 1, "{second}");
    let asked =
        DateTime::parse_from_rfc3339(since[0].trim_start_matches("gt")).expect("an instant");
    let expected = DateTime::parse_from_rfc3339(&instant(3000)).expect("an instant");
    assert_eq!(
        asked, expected,
        "asked from the watermark less 10 minutes: {second}"
    );
}

/// A FHIR sink that records the `request.url` of every entry it is sent and accepts them all.
async fn recording_sink() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (listener, url) = bind().await;
    let app = axum::Router::new()
        .route(
            "/",
            post(
                |State(seen): State<Arc<Mutex<Vec<String>>>>, body: Bytes| async move {
                    let bundle: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
                    let mut answers = Vec::new();
                    for e in &entries {
                        seen.lock()
                            .expect("sink log")
                            .push(e["request"]["url"].as_str().unwrap_or("").to_owned());
                        answers.push(json!({"response": {"status": "200 OK"}}));
                    }
                    let kind = format!("{}-response", bundle["type"].as_str().unwrap_or("batch"));
                    let answer: Response = fhir_json(
                        200,
                        &json!({"resourceType": "Bundle", "type": kind, "entry": answers}),
                    );
                    answer
                },
            ),
        )
        .with_state(seen.clone());
    spawn_app(listener, app);
    (url, seen)
}

/// A FHIR source whose every Observation search answers the same page: a good Observation,
/// two with ids made to escape a sink's URL, and a Patient.
async fn hostile_observations() -> String {
    let page = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": {"resourceType": "Observation", "id": "ok-1", "status": "final"}},
            {"resource": {"resourceType": "Observation", "id": "../Patient/victim", "status": "final"}},
            {"resource": {"resourceType": "Observation", "id": "x?_cascade=delete", "status": "final"}},
            {"resource": {"resourceType": "Patient", "id": "intruder"}}
        ]
    });
    let (listener, url) = bind().await;
    let app = axum::Router::new().route(
        "/Observation",
        get(move || {
            let page = page.clone();
            async move { fhir_json(200, &page) }
        }),
    );
    spawn_app(listener, app);
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_escape_a_url_and_undeclared_types_never_reach_the_sink() {
    let (sink, seen) = recording_sink().await;
    let source = hostile_observations().await;
    let yaml = format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata: {{ name: store }}
spec:
  fhir: {{ url: "{sink}", version: R4, batchSize: 10, mode: batch, retries: 0, timeout: 5s }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: copy }}
spec:
  strategy: cron
  schedule: {{ cron: "0 2 * * *" }}
  source: {{ type: fhir, url: "{source}", retries: 0, timeout: 5s }}
  sync: {{ resourceTypes: [Observation] }}
  run: {{ onRecordError: skip }}
  sink: store
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: inbox }}
spec:
  strategy: push
  push:
    auth: {{ bearer: {{ token: token-0123456789 }} }}
    mode: sync
  sink: store
  mapping:
    resourceType: Observation
    id: {{ $path: $.id }}
    status: final
"#
    );
    let (served, _defs, _state) = open_engine(&yaml, CLIENT_TIMEOUT);
    let job = served.engine.crons.get("copy").expect("the cron job");
    let report = tokio::time::timeout(RUN_TIMEOUT, job.runner.run(false))
        .await
        .expect("the run ends in time")
        .0;
    assert!(report.ok(), "{:?}", report.failures);
    assert_eq!(report.resources_written, 1);
    assert_eq!(report.records_dead_lettered, 3, "{:?}", report.skipped);
    assert_eq!(
        *seen.lock().expect("sink log"),
        vec!["Observation/ok-1".to_owned()],
        "only the good Observation reaches the sink"
    );
    let letters = served
        .get("/connectors/copy/dead-letters")
        .send()
        .await
        .json();
    let reasons: Vec<&str> = letters
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|l| l["reason"].as_str())
        .collect();
    assert!(
        reasons.iter().filter(|r| r.contains("id rule")).count() == 2,
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("`Patient`")),
        "{reasons:?}"
    );

    // A push: the same check before the sink, answered 422 and dead-lettered.
    for id in ["../Patient/victim", "x?_cascade=delete"] {
        let got = served
            .post("/push/inbox")
            .header("authorization", "Bearer token-0123456789")
            .header("content-type", "application/json")
            .body(json!({"id": id}).to_string())
            .send()
            .await;
        assert_eq!(got.status, 422, "{}", got.text);
        assert!(got.text.contains("id rule"), "{}", got.text);
    }
    assert_eq!(
        seen.lock().expect("sink log").len(),
        1,
        "no push reached the sink"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_changed_writes_a_change_of_meta_profile_alone() {
    let source = FhirSource::start().await;
    source.put(patient("p1", &instant(1)));
    let defs = definitions(&sync_doc("copy", &source.url, "", "", "onlyChanged: true"));
    let state = tempfile::tempdir().expect("state");
    let model = load(defs.path());
    let ndjson = state.path().join("ndjson");
    let run = || async {
        run_with_deadline(
            &runner_with_sink_dir(&model, "copy", state.path(), &ndjson),
            RUN_TIMEOUT,
        )
        .await
    };
    let first = run().await;
    assert_eq!(first.resources_written, 1);
    let mut profiled = patient("p1", &instant(2));
    profiled["meta"]["profile"] = json!(["http://example.org/StructureDefinition/p"]);
    source.put(profiled);
    let second = run().await;
    assert!(second.ok(), "{:?}", second.failures);
    assert_eq!(second.records_read, 1);
    assert_eq!(
        (second.resources_written, second.resources_unchanged),
        (1, 0),
        "a change of meta.profile alone is written"
    );
    // The server's own metadata alone is no change.
    source.put(json!({"resourceType": "Patient", "id": "p1", "meta": {"versionId": "9", "lastUpdated": instant(3), "profile": ["http://example.org/StructureDefinition/p"]}}));
    let third = run().await;
    assert_eq!((third.resources_written, third.resources_unchanged), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_push_with_a_bad_id_is_dead_lettered_and_never_reaches_the_ndjson_sink() {
    let (served, _defs, state) = open_engine(
        r#"
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: inbox }
spec:
  strategy: push
  push:
    auth: { bearer: { token: token-0123456789 } }
    mode: queued
  mapping:
    resourceType: Observation
    id: { $path: $.id }
    status: final
"#,
        CLIENT_TIMEOUT,
    );
    let endpoint = served
        .engine
        .pushes
        .get("inbox")
        .expect("the endpoint")
        .clone();
    for id in ["../Patient/victim", "x?_cascade=delete", "good-1"] {
        let got = served
            .post("/push/inbox")
            .header("authorization", "Bearer token-0123456789")
            .header("content-type", "application/json")
            .body(json!({"id": id}).to_string())
            .send()
            .await;
        assert_eq!(got.status, 202, "{}", got.text);
    }
    let drainer = Drainer::start(endpoint.clone());
    let ep = endpoint.clone();
    wait_until(Duration::from_secs(10), "the queue drains", move || {
        ep.depths() == (0, 2)
    })
    .await;
    drainer.stop().await;
    let written = std::fs::read_to_string(state.path().join("ndjson/Observation.ndjson"))
        .expect("the good Observation is written");
    assert_eq!(written.lines().count(), 1, "{written}");
    assert!(written.contains("good-1"), "{written}");
    let letters = served
        .get("/connectors/inbox/dead-letters")
        .send()
        .await
        .json();
    let reasons: Vec<&str> = letters
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|l| l["reason"].as_str())
        .collect();
    assert_eq!(reasons.len(), 2, "{letters}");
    assert!(reasons.iter().all(|r| r.contains("id rule")), "{reasons:?}");
}
