//! A FHIR sink posting several Bundles at once (`concurrency`): up to that many in flight, a
//! Bundle that references resources of an earlier one posted only once that one is answered,
//! and a Bundle that fails among concurrent ones retried and reported on its own. Against a
//! stand-in FHIR server on 127.0.0.1 that logs when each Bundle arrives and is answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::local_http::{bind, spawn_app};

/// Longest a Bundle is held waiting for the others a test expects in flight with it.
const HOLD: Duration = Duration::from_secs(5);

/// What the stand-in saw, in order: `arrived FIRST` and `answered FIRST` per Bundle (named by
/// the `Type/id` of its first entry).
#[derive(Default)]
struct Log {
    events: Vec<String>,
    in_flight: usize,
    most_in_flight: usize,
    /// Posts of each Bundle so far.
    tries: HashMap<String, usize>,
}

struct Server {
    log: Mutex<Log>,
    /// Posts arrived so far, for holds to await.
    arrived: watch::Sender<usize>,
    /// Bundles (by first entry) held until this many posts have arrived.
    hold: HashMap<String, usize>,
    /// Bundles (by first entry) answered 503 on their first `n` posts.
    unavailable: HashMap<String, usize>,
}

fn first_of(bundle: &Value) -> String {
    let r = &bundle["entry"][0]["resource"];
    format!(
        "{}/{}",
        r["resourceType"].as_str().unwrap_or("?"),
        r["id"].as_str().unwrap_or("?")
    )
}

async fn sink_post(State(s): State<Arc<Server>>, body: String) -> axum::response::Response {
    let bundle: Value = serde_json::from_str(&body).expect("a Bundle");
    let first = first_of(&bundle);
    let try_no = {
        let mut log = s.log.lock().expect("log");
        log.events.push(format!("arrived {first}"));
        log.in_flight += 1;
        log.most_in_flight = log.most_in_flight.max(log.in_flight);
        s.arrived.send_modify(|n| *n += 1);
        let t = log.tries.entry(first.clone()).or_default();
        *t += 1;
        *t
    };
    if let Some(&want) = s.hold.get(&first) {
        let mut rx = s.arrived.subscribe();
        // Bounded: a sink that never sends the others lets the Bundle go after HOLD, and the
        // test's assertions on the log say what happened.
        let _ = tokio::time::timeout(HOLD, rx.wait_for(|n| *n >= want)).await;
    }
    let refuse = s.unavailable.get(&first).is_some_and(|&n| try_no <= n);
    {
        let mut log = s.log.lock().expect("log");
        log.events.push(format!("answered {first}"));
        log.in_flight -= 1;
    }
    if refuse {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "application/fhir+json")],
            json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "transient", "diagnostics": "busy"}]}).to_string(),
        )
            .into_response();
    }
    let n = bundle["entry"].as_array().map_or(0, Vec::len);
    let entries: Vec<Value> = (0..n)
        .map(|_| json!({"response": {"status": "201 Created"}}))
        .collect();
    (
        [("content-type", "application/fhir+json")],
        json!({"resourceType": "Bundle", "type": "transaction-response", "entry": entries})
            .to_string(),
    )
        .into_response()
}

async fn start(hold: &[(&str, usize)], unavailable: &[(&str, usize)]) -> (Arc<Server>, String) {
    let (listener, url) = bind().await;
    let server = Arc::new(Server {
        log: Mutex::new(Log::default()),
        arrived: watch::channel(0).0,
        hold: hold.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        unavailable: unavailable
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect(),
    });
    let app = axum::Router::new()
        .route("/", post(sink_post))
        .with_state(server.clone());
    spawn_app(listener, app);
    (server, url)
}

/// The writer of a FHIR sink defined in YAML with these settings.
fn writer(url: &str, settings: &str) -> (engine::runtime::sink::Writer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("sink.yaml"),
        format!(
            "apiVersion: fosps.gravitate-health.eu/v1\nkind: Sink\nmetadata: {{ name: target }}\nspec: {{ fhir: {{ url: \"{url}\", version: R4, {settings} }} }}\n---\n\
             apiVersion: fosps.gravitate-health.eu/v1\nkind: Connector\nmetadata: {{ name: hook }}\nspec:\n  strategy: push\n  push: {{ auth: {{ hmac: {{ secret: test-secret-0123456789 }} }} }}\n  sink: target\n  mapping: {{ resourceType: Patient, id: {{ $path: $.id }} }}\n"
        ),
    )
    .expect("write");
    let (files, errors) =
        engine::config::load::read_all(&[dir.path().to_path_buf()]).expect("read");
    let opts = engine::config::validate::Options {
        allow_unresolved: false,
        run_tests: false,
        fhir_schema: None,
        env: &engine::config::secrets::ProcessEnvironment,
    };
    let outcome = engine::config::validate::validate(&files, errors, &opts);
    let model = outcome
        .model
        .unwrap_or_else(|| panic!("{:?}", outcome.diagnostics));
    let sink = model.sinks.get("target").expect("the sink").clone();
    let w = engine::runtime::sink::Writer::new(&engine::model::SinkRef::Named(sink), dir.path())
        .expect("writer");
    (w, dir)
}

fn patients(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"resourceType": "Patient", "id": format!("{prefix}{i}")}))
        .collect()
}

fn position(events: &[String], e: &str) -> usize {
    events
        .iter()
        .position(|x| x == e)
        .unwrap_or_else(|| panic!("no `{e}` in {events:?}"))
}

/// Eight Bundles with `concurrency: 4`: four are in flight together (the first four are held
/// until four are), never more, and every resource is written.
#[tokio::test]
async fn bundles_are_posted_up_to_the_concurrency_at_once() {
    let first_four = [
        ("Patient/a0", 4),
        ("Patient/a10", 4),
        ("Patient/a20", 4),
        ("Patient/a30", 4),
    ];
    let (server, url) = start(&first_four, &[]).await;
    let (w, _dir) = writer(&url, "batchSize: 10, concurrency: 4");
    let report = w
        .write(
            patients("a", 80),
            &engine::runtime::sink::WriteOptions::default(),
        )
        .await;
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!((report.written, report.calls), (80, 8));
    let log = server.log.lock().expect("log");
    assert_eq!(log.most_in_flight, 4, "{:?}", log.events);
    let first_answer = log
        .events
        .iter()
        .position(|e| e.starts_with("answered"))
        .expect("answers");
    assert_eq!(
        first_answer, 4,
        "four Bundles arrived before any was answered: {:?}",
        log.events
    );
}

/// A Bundle of Observations that reference the Patients of the first Bundle is posted only
/// after the first is answered, while an unrelated Bundle goes at once.
#[tokio::test]
async fn a_bundle_referencing_an_earlier_one_waits_for_its_answer() {
    // The Patients' Bundle is held until the unrelated one is in flight with it.
    let (server, url) = start(&[("Patient/p0", 2)], &[]).await;
    let (w, _dir) = writer(&url, "batchSize: 10, concurrency: 4");
    let mut resources = patients("p", 10);
    resources.extend(patients("q", 10));
    resources.extend((0..10).map(|i| {
        json!({"resourceType": "Observation", "id": format!("o{i}"), "status": "final",
            "code": {"text": "x"}, "subject": {"reference": format!("Patient/p{i}")}})
    }));
    let report = w
        .write(resources, &engine::runtime::sink::WriteOptions::default())
        .await;
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(report.written, 30);
    let log = server.log.lock().expect("log");
    let events = &log.events;
    let patients_answered = position(events, "answered Patient/p0");
    assert!(
        position(events, "arrived Patient/q0") < patients_answered,
        "the unrelated Bundle went along: {events:?}"
    );
    assert!(
        position(events, "arrived Observation/o0") > patients_answered,
        "the Observations waited for their Patients: {events:?}"
    );
}

/// Among four Bundles in flight, one answered 503 twice and one answered 503 for good: the
/// first is retried until written, the second is retried as often as `retries` allows and its
/// resources are reported as transient failures; the others are written.
#[tokio::test]
async fn a_failing_bundle_among_concurrent_ones_is_retried_and_reported() {
    let (server, url) = start(&[], &[("Patient/b10", 2), ("Patient/b20", 100)]).await;
    let (w, _dir) = writer(&url, "batchSize: 10, concurrency: 4, retries: 2");
    let report = w
        .write(
            patients("b", 40),
            &engine::runtime::sink::WriteOptions::default(),
        )
        .await;
    assert_eq!(report.written, 30, "{report:?}");
    let failed: Vec<&str> = report
        .failures
        .iter()
        .map(|f| f.resource.as_str())
        .collect();
    let want: Vec<String> = (20..30).map(|i| format!("Patient/b{i}")).collect();
    assert_eq!(failed, want.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        report
            .failures
            .iter()
            .all(|f| f.transient && f.status == Some(503))
    );
    // 4 Bundles; b10 posted 3 times, b20 posted 1 + 2 retries.
    assert_eq!((report.calls, report.retries), (8, 4), "{report:?}");
    let log = server.log.lock().expect("log");
    assert_eq!(log.tries.get("Patient/b10"), Some(&3));
    assert_eq!(log.tries.get("Patient/b20"), Some(&3));
}
