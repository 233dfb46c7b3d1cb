//! Response classification (`statuses.rules`, issue 13 part 7): a source that answers `200`
//! with an error inside, throttles in its body, answers 404 in HTML for "nothing", or flags
//! errors in a header. Each rule's action against a stand-in that counts the calls: `error`
//! (with the message the rule points at; `errorWhen` still its shorthand), `rateLimited`
//! (sent again after the body's delay), `retry` (a rule that matches every answer is a retry
//! storm bounded by `retries`), `empty` (no data).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::time::Instant;

use crate::engine_router::{EngineRouter, open_engine};
use crate::local_http::{Got, assert_outcome, bind, spawn_app};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Default)]
struct Calls {
    all: AtomicUsize,
    quota: AtomicUsize,
}

/// A source with a way to fail for each path.
async fn picky_source() -> (String, Arc<Calls>) {
    let (listener, url) = bind().await;
    let calls = Arc::new(Calls::default());
    let app = axum::Router::new()
        .route("/{kind}", get(answer))
        .with_state(calls.clone());
    spawn_app(listener, app);
    (url, calls)
}

async fn answer(State(calls): State<Arc<Calls>>, Path(kind): Path<String>) -> Response {
    calls.all.fetch_add(1, Ordering::SeqCst);
    let found = json!({"results": [{"id": "a1"}]});
    match kind.as_str() {
        // Throttles twice, in its body, asking for a second's wait; then answers.
        "quota" => {
            if calls.quota.fetch_add(1, Ordering::SeqCst) < 2 {
                axum::Json(json!({"error": {"code": "THROTTLED", "retryAfter": 1}})).into_response()
            } else {
                axum::Json(found).into_response()
            }
        }
        "busy" => axum::Json(json!({"state": "busy"})).into_response(),
        "broken" => {
            axum::Json(json!({"status": "error", "detail": {"text": "patient store offline"}}))
                .into_response()
        }
        "fault" => axum::Json(json!({"fault": "disk full"})).into_response(),
        "missing" => (StatusCode::NOT_FOUND, "<html>no such thing</html>").into_response(),
        "flagged" => ([("x-upstream-error", "1")], axum::Json(found)).into_response(),
        _ => axum::Json(found).into_response(),
    }
}

fn engine_over(url: &str) -> (EngineRouter, tempfile::TempDir, tempfile::TempDir) {
    let yaml = format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Source
metadata: {{ name: picky }}
spec:
  url: "{url}"
  timeout: 6s
  retries: 2
  statuses:
    errorWhen: $.fault
    rules:
      - path: $.error.code
        equals: THROTTLED
        action: rateLimited
        delayPath: $.error.retryAfter
      - path: $.state
        equals: busy
        action: retry
      - status: [404]
        action: empty
      - path: $.status
        equals: error
        action: error
        message: $.detail.text
      - header: X-Upstream-Error
        action: error
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: picky }}
spec:
  strategy: pull
  sources: [picky]
  pull:
    resources:
      - type: Basic
        search:
          params:
            kind: {{}}
          request:
            path: "/{{{{params.kind}}}}"
          records: $.results[*]
  mapping:
    resourceType: Basic
    id: {{ $path: $.id }}
"#
    );
    open_engine(&yaml, CLIENT_TIMEOUT)
}

async fn search(engine: &EngineRouter, kind: &str) -> Got {
    engine
        .get(format!("{}/fhir/picky/Basic?kind={kind}", engine.base))
        .send()
        .await
}

#[tokio::test]
async fn an_error_in_a_200_body_fails_with_the_rules_message_and_is_not_retried() {
    let (url, calls) = picky_source().await;
    let (engine, _d, _s) = engine_over(&url);
    let got = search(&engine, "broken").await;
    assert_outcome(&got, 502, &["picky", "patient store offline"]);
    assert_eq!(
        calls.all.load(Ordering::SeqCst),
        1,
        "an error is not retried"
    );
    // `errorWhen` is still the shorthand of such a rule.
    let got = search(&engine, "fault").await;
    assert_outcome(&got, 502, &["picky", "disk full"]);
    // A header can say it too.
    let got = search(&engine, "flagged").await;
    assert_eq!(got.status, 502, "{}", got.text);
    assert_eq!(calls.all.load(Ordering::SeqCst), 3);
    // An answer no rule matches is data.
    let got = search(&engine, "plain").await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json()["entry"][0]["resource"]["id"], "a1");
}

#[tokio::test]
async fn a_throttled_answer_is_sent_again_after_the_delay_in_its_body() {
    let (url, calls) = picky_source().await;
    let (engine, _d, _s) = engine_over(&url);
    let started = Instant::now();
    let got = search(&engine, "quota").await;
    let took = started.elapsed();
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json()["entry"][0]["resource"]["id"], "a1");
    assert_eq!(
        calls.all.load(Ordering::SeqCst),
        3,
        "two throttled, one served"
    );
    // Two waits of the body's second (backoff alone would wait at most 0.6 s in all).
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn a_rule_that_matches_every_answer_retries_only_within_the_retry_budget() {
    let (url, calls) = picky_source().await;
    let (engine, _d, _s) = engine_over(&url);
    let started = Instant::now();
    let got = search(&engine, "busy").await;
    assert_outcome(&got, 502, &["picky", "an error to send again"]);
    assert_eq!(
        calls.all.load(Ordering::SeqCst),
        3,
        "the first call and `retries: 2`, no more"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "within the source's timeout"
    );
}

#[tokio::test]
async fn a_404_read_as_empty_is_an_empty_searchset() {
    let (url, calls) = picky_source().await;
    let (engine, _d, _s) = engine_over(&url);
    let got = search(&engine, "missing").await;
    assert_eq!(got.status, 200, "{}", got.text);
    let body = got.json();
    assert_eq!(body["resourceType"], "Bundle", "{body}");
    assert!(body["entry"].as_array().is_none_or(Vec::is_empty), "{body}");
    assert_eq!(calls.all.load(Ordering::SeqCst), 1);
}
