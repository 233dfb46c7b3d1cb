//! `engine check NAME` against real servers on 127.0.0.1: a healthy source and FHIR sink
//! (the real credentials sent, none printed), a source where nothing listens, a source that
//! answers 401, a sink that reports R5 for an R4 connector, a source that never answers,
//! bounded by its timeout, and a report printed into a closed pipe. Each run of the binary is
//! bounded in time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::local_http;

const TOKEN: &str = "s3cr3t-token-0123456789";

/// A cron connector reading `source_url` (with a bearer token from `${env:CHECK_TOKEN}` and
/// `timeout`) and writing to a FHIR sink at `sink_url`.
fn definitions(source_url: &str, sink_url: &str, timeout: &str) -> tempfile::TempDir {
    let yaml = format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata: {{ name: store }}
spec:
  fhir: {{ url: "{sink_url}", version: R4, timeout: 5s, auth: {{ bearer: {{ token: "${{env:CHECK_TOKEN}}" }} }} }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: feed }}
spec:
  strategy: cron
  schedule: {{ cron: "0 2 * * *" }}
  source:
    url: "{source_url}"
    retries: 0
    timeout: {timeout}
    auth: {{ bearer: {{ token: "${{env:CHECK_TOKEN}}" }} }}
  fetch:
    request: {{ path: /items, query: {{ page: "1" }} }}
    records: $.items[*]
  sink: store
  mapping:
    resourceType: Patient
    id: {{ $path: $.id }}
"#
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("feed.yaml"), yaml).expect("write definitions");
    dir
}

/// What `engine check feed` printed and its exit code, within a bound.
struct Checked {
    code: Option<i32>,
    stdout: String,
    took: Duration,
}

async fn check(dir: &tempfile::TempDir, json: bool) -> Checked {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.arg("check")
        .arg("feed")
        .arg("-d")
        .arg(dir.path())
        .env("CHECK_TOKEN", TOKEN)
        .kill_on_drop(true);
    if json {
        cmd.args(["--output", "json"]);
    }
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("engine check ends within 60s")
        .expect("engine check runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stdout.contains(TOKEN) && !stderr.contains(TOKEN),
        "the token is printed:\n{stdout}\n{stderr}"
    );
    Checked {
        code: out.status.code(),
        stdout,
        took: started.elapsed(),
    }
}

/// A source answering `status` with a page of items, remembering the Authorization headers.
async fn source(
    status: u16,
    seen: Arc<Mutex<Vec<String>>>,
) -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().route(
        "/items",
        axum::routing::get(move |headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                seen.lock().expect("lock").push(auth);
                let status = axum::http::StatusCode::from_u16(status).expect("a status");
                (status, axum::Json(json!({"items": [{"id": "a"}]}))).into_response()
            }
        }),
    );
    let (listener, url) = local_http::bind().await;
    (url, local_http::spawn_app(listener, app))
}

/// A FHIR server stand-in whose CapabilityStatement says `fhir_version`.
async fn sink(fhir_version: &'static str) -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().route(
        "/fhir/metadata",
        axum::routing::get(move || async move {
            (
                [("content-type", "application/fhir+json")],
                axum::Json(
                    json!({"resourceType": "CapabilityStatement", "status": "active",
                    "kind": "instance", "fhirVersion": fhir_version, "format": ["json"]}),
                ),
            )
        }),
    );
    let (listener, url) = local_http::bind().await;
    (format!("{url}/fhir"), local_http::spawn_app(listener, app))
}

#[tokio::test]
async fn a_healthy_source_and_sink_answer_with_status_latency_type_and_version() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (source_url, a) = source(200, seen.clone()).await;
    let (sink_url, b) = sink("4.0.1").await;
    let dir = definitions(&source_url, &sink_url, "5s");
    let text = check(&dir, false).await;
    assert_eq!(text.code, Some(0), "{}", text.stdout);
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", text.stdout);
    assert!(
        lines[0].starts_with("ok") && lines[0].contains("source feed"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(" 200 ") && lines[0].contains("application/json"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("ok") && lines[1].contains("sink store"),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains("FHIR 4.0.1"), "{}", lines[1]);
    assert!(
        !text.stdout.contains("/items"),
        "only origins: {}",
        text.stdout
    );
    let json_run = check(&dir, true).await;
    assert_eq!(json_run.code, Some(0));
    let report: Value = serde_json::from_str(&json_run.stdout).expect("JSON");
    assert_eq!(report["ok"], true);
    assert_eq!(report["parts"][0]["status"], 200);
    assert_eq!(report["parts"][1]["fhir_version"], "4.0.1");
    assert!(report["parts"][0]["latency_ms"].is_u64());
    // The real credentials were sent, once per run.
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen, vec![format!("Bearer {TOKEN}"); 2]);
    a.abort();
    b.abort();
}

#[tokio::test]
async fn a_source_where_nothing_listens_is_refused() {
    let dead = local_http::dead_url();
    let (sink_url, b) = sink("4.0.1").await;
    let dir = definitions(&dead, &sink_url, "5s");
    let got = check(&dir, true).await;
    assert_eq!(got.code, Some(1), "{}", got.stdout);
    let report: Value = serde_json::from_str(&got.stdout).expect("JSON");
    assert_eq!(report["parts"][0]["failure"], "refused", "{report}");
    assert_eq!(report["parts"][1]["ok"], true, "{report}");
    b.abort();
}

#[tokio::test]
async fn a_source_answering_401_is_unauthorized() {
    let (source_url, a) = source(401, Arc::new(Mutex::new(Vec::new()))).await;
    let (sink_url, b) = sink("4.0.1").await;
    let dir = definitions(&source_url, &sink_url, "5s");
    let got = check(&dir, false).await;
    assert_eq!(got.code, Some(1), "{}", got.stdout);
    let first = got.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("FAILED") && first.contains("401"),
        "{first}"
    );
    assert!(first.contains("unauthorized"), "{first}");
    a.abort();
    b.abort();
}

#[tokio::test]
async fn a_sink_reporting_r5_for_an_r4_connector_fails() {
    let (source_url, a) = source(200, Arc::new(Mutex::new(Vec::new()))).await;
    let (sink_url, b) = sink("5.0.0").await;
    let dir = definitions(&source_url, &sink_url, "5s");
    let got = check(&dir, true).await;
    assert_eq!(got.code, Some(1), "{}", got.stdout);
    let report: Value = serde_json::from_str(&got.stdout).expect("JSON");
    assert_eq!(report["parts"][0]["ok"], true, "{report}");
    assert_eq!(report["parts"][1]["failure"], "version", "{report}");
    assert_eq!(report["parts"][1]["fhir_version"], "5.0.0", "{report}");
    a.abort();
    b.abort();
}

#[tokio::test]
async fn a_hanging_source_is_bounded_by_its_timeout() {
    // Accepts connections and never answers.
    let (listener, url) = local_http::bind().await;
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let (sink_url, b) = sink("4.0.1").await;
    let dir = definitions(&url, &sink_url, "1s");
    let got = check(&dir, true).await;
    assert_eq!(got.code, Some(1), "{}", got.stdout);
    let report: Value = serde_json::from_str(&got.stdout).expect("JSON");
    assert_eq!(report["parts"][0]["failure"], "timeout", "{report}");
    assert!(got.took < Duration::from_secs(20), "took {:?}", got.took);
    held.abort();
    b.abort();
}

/// A pull connector whose search asks `/labels?name=...`, with a test that gives `name`.
fn pull_definitions(source_url: &str) -> tempfile::TempDir {
    let yaml = format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: feed }}
spec:
  strategy: pull
  source: {{ url: "{source_url}", retries: 0, timeout: 5s, auth: {{ bearer: {{ token: "${{env:CHECK_TOKEN}}" }} }} }}
  pull:
    resources:
      - type: Patient
        search:
          params: {{ name: {{}} }}
          request: {{ path: /items, query: {{ name: "{{{{params.name}}}}" }} }}
          records: $.items[*]
  mapping:
    resourceType: Patient
    id: {{ $path: $.id }}
  tests:
    - name: one item
      params: {{ name: from-the-test }}
      input: {{ items: [{{ id: a }}] }}
      expect: [{{ resourceType: Patient, id: a }}]
"#
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("feed.yaml"), yaml).expect("write definitions");
    dir
}

#[tokio::test]
async fn a_pull_source_is_asked_with_the_tests_params_or_the_given_ones() {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = asked.clone();
    let app = axum::Router::new().route(
        "/items",
        axum::routing::get(move |q: axum::extract::RawQuery| {
            seen.lock().expect("lock").push(q.0.unwrap_or_default());
            async { axum::Json(json!({"items": [{"id": "a"}]})) }
        }),
    );
    let (listener, url) = local_http::bind().await;
    let server = local_http::spawn_app(listener, app);
    let dir = pull_definitions(&url);
    let from_test = check(&dir, false).await;
    assert_eq!(from_test.code, Some(0), "{}", from_test.stdout);
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.args(["check", "feed", "--param", "name=given", "-d"])
        .arg(dir.path())
        .env("CHECK_TOKEN", TOKEN)
        .kill_on_drop(true);
    let given = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("ends within 60s")
        .expect("runs");
    assert_eq!(given.status.code(), Some(0));
    assert_eq!(
        asked.lock().expect("lock").clone(),
        vec!["name=from-the-test".to_owned(), "name=given".to_owned()]
    );
    server.abort();
}

/// `engine check ... | head -0`: the reader closed the pipe before the report was printed,
/// and `println!` panicked on it (exit 101) instead of the check's own exit code.
#[tokio::test]
async fn a_report_into_a_closed_pipe_does_not_panic() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (source_url, a) = source(200, seen).await;
    let (sink_url, b) = sink("4.0.1").await;
    let dir = definitions(&source_url, &sink_url, "5s");
    for output in ["text", "json"] {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(["check", "feed", "-d"])
            .arg(dir.path())
            .args(["--output", output])
            .env("CHECK_TOKEN", TOKEN)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("engine check starts");
        drop(child.stdout.take());
        let o = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("engine check ends within 60s")
            .expect("engine check runs");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{output}: {err}");
        assert_eq!(o.status.code(), Some(0), "{output}: {err}");
    }
    a.abort();
    b.abort();
}
