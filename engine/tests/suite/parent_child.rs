//! Parent and child requests of a cron fetch (`fetch.parent`, issue 13 part 7): a list of
//! patients, then each patient's observations, against a stand-in that records every call.
//! The children keep to the source's rate budget; a failing child is reported for its parent
//! record (skipped with `onRecordError: skip`, the run partial; failing the run otherwise);
//! a parent answer of 1,000,000 records stops at `maxChildren` after one page, before any
//! child is sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::time::Instant;

use crate::engine_under_test::{definitions, load, run_with_deadline, runner};
use crate::local_http::{bind, spawn_app};

const RUN_DEADLINE: Duration = Duration::from_secs(20);

/// What the stand-in saw: the parent pages asked, and when each child call came.
#[derive(Default)]
struct Seen {
    parent_pages: Mutex<usize>,
    children: Mutex<Vec<(String, Instant)>>,
}

struct Clinic {
    url: String,
    seen: Arc<Seen>,
}

/// A clinic API: `/patients` lists `total` patients, 100 a page (a cursor), and
/// `/patients/{id}/observations` gives two observations each (500 for `p2`).
async fn clinic(total: usize) -> Clinic {
    let (listener, url) = bind().await;
    let seen = Arc::new(Seen::default());
    let app = axum::Router::new()
        .route("/patients", get(patients))
        .route("/patients/{id}/observations", get(observations))
        .with_state((seen.clone(), total));
    spawn_app(listener, app);
    Clinic { url, seen }
}

async fn patients(
    State((seen, total)): State<(Arc<Seen>, usize)>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    *seen.parent_pages.lock().expect("lock") += 1;
    let from: usize = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let to = (from + 100).min(total);
    let page: Vec<_> = (from..to)
        .map(|n| json!({"id": format!("p{}", n + 1)}))
        .collect();
    let next = (to < total).then(|| to.to_string());
    axum::Json(json!({"patients": page, "next": next})).into_response()
}

async fn observations(
    State((seen, _)): State<(Arc<Seen>, usize)>,
    Path(id): Path<String>,
) -> Response {
    seen.children
        .lock()
        .expect("lock")
        .push((id.clone(), Instant::now()));
    if id == "p2" {
        return (StatusCode::INTERNAL_SERVER_ERROR, "store down").into_response();
    }
    axum::Json(json!({"results": [{"id": format!("{id}-a")}, {"id": format!("{id}-b")}]}))
        .into_response()
}

fn connector(url: &str, on_record_error: &str, max_children: u32) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Source
metadata: {{ name: clinic }}
spec:
  url: "{url}"
  timeout: 2s
  retries: 0
  rate: {{ perSecond: 10, burst: 1 }}
  pagination:
    cursor: {{ path: $.next, param: after }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: observations }}
spec:
  strategy: cron
  sources: [clinic]
  schedule: {{ cron: "0 3 * * *" }}
  fetch:
    parent:
      request: {{ path: /patients }}
      records: $.patients[*]
      maxChildren: {max_children}
    request:
      path: "/patients/{{{{params.parent.id}}}}/observations"
    records: $.results[*]
  run: {{ onRecordError: {on_record_error} }}
  mapping:
    resourceType: Basic
    id: {{ $path: $.id }}
"#
    )
}

#[tokio::test]
async fn each_parent_record_makes_one_child_request_within_the_rate_budget() {
    let clinic = clinic(4).await;
    let defs = definitions(&connector(&clinic.url, "skip", 10));
    let state = tempfile::tempdir().expect("state");
    let report = run_with_deadline(
        &runner(&load(defs.path()), "observations", state.path()),
        RUN_DEADLINE,
    )
    .await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    // p1, p3, p4: two observations each; p2's child failed and was skipped.
    assert_eq!(report.resources_written, 6, "{report:?}");
    assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
    assert!(
        report.skipped[0].subject.contains("p2") && report.skipped[0].reason.contains("500"),
        "{:?}",
        report.skipped
    );
    let children = clinic.seen.children.lock().expect("lock").clone();
    let ids: Vec<&str> = children.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["p1", "p2", "p3", "p4"]);
    // 10 a second, burst 1: the parent took the burst, so the children's tokens came 100 ms
    // apart, 300 ms from the first to the fourth (arrivals are measured at the server, where
    // a loaded machine's latency moves each a little: allow a third of it).
    let span = children[3].1 - children[0].1;
    assert!(
        span >= Duration::from_millis(200),
        "{span:?} for 3 intervals of 100 ms"
    );
}

#[tokio::test]
async fn a_failing_child_fails_the_run_for_its_parent_record_by_default() {
    let clinic = clinic(3).await;
    let defs = definitions(&connector(&clinic.url, "fail", 10));
    let state = tempfile::tempdir().expect("state");
    let report = run_with_deadline(
        &runner(&load(defs.path()), "observations", state.path()),
        RUN_DEADLINE,
    )
    .await;
    assert_eq!(report.resources_written, 0, "nothing written: {report:?}");
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert!(
        report.failures[0].subject.contains("parent `p2`"),
        "{:?}",
        report.failures
    );
    // The other children were still read, so the report is whole.
    assert_eq!(clinic.seen.children.lock().expect("lock").len(), 3);
}

#[tokio::test]
async fn a_parent_answer_of_a_million_records_stops_at_max_children() {
    let clinic = clinic(1_000_000).await;
    let defs = definitions(&connector(&clinic.url, "skip", 50));
    let state = tempfile::tempdir().expect("state");
    let started = Instant::now();
    let report = run_with_deadline(
        &runner(&load(defs.path()), "observations", state.path()),
        RUN_DEADLINE,
    )
    .await;
    assert_eq!(report.resources_written, 0);
    assert!(
        report.failures[0].message.contains("maxChildren"),
        "{:?}",
        report.failures
    );
    assert_eq!(
        *clinic.seen.parent_pages.lock().expect("lock"),
        1,
        "one page read"
    );
    assert!(
        clinic.seen.children.lock().expect("lock").is_empty(),
        "no child sent"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}
