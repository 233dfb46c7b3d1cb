//! A source's requests-per-second budget (`rate`, issue 13 part 7): a stand-in that records
//! when each request arrives, searched through two connectors at once. The arrivals keep to
//! the bucket (the burst at once, then one per interval) across both connectors and across a
//! reload; a request whose token would come after its deadline fails at once as rate-limited
//! (503 with `Retry-After`), without reaching the source.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use engine::runtime::engine::Engine;
use serde_json::json;
use tokio::time::Instant;

use crate::engine_router::{EngineRouter, open_admin, open_engine};
use crate::engine_under_test::{dirs_in, load};
use crate::local_http::{assert_outcome, bind, spawn_app};

/// Longest any request of these tests may take before the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// A JSON source that records when each request arrived.
struct Counting {
    url: String,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl Counting {
    async fn start() -> Counting {
        let (listener, url) = bind().await;
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/items", get(items))
            .with_state(arrivals.clone());
        spawn_app(listener, app);
        Counting { url, arrivals }
    }

    /// Arrival times since `start`, in order.
    fn since(&self, start: Instant) -> Vec<Duration> {
        let mut at: Vec<Duration> = self
            .arrivals
            .lock()
            .expect("lock")
            .iter()
            .map(|t| t.saturating_duration_since(start))
            .collect();
        at.sort();
        at
    }
}

async fn items(State(arrivals): State<Arc<Mutex<Vec<Instant>>>>) -> axum::Json<serde_json::Value> {
    arrivals.lock().expect("lock").push(Instant::now());
    axum::Json(json!({"results": [{"id": "a1"}]}))
}

/// A source `paced` at `url` with `rate` and `timeout`, and two pull connectors over it.
fn definitions_of(url: &str, rate: &str, timeout: &str) -> String {
    let connector = |name: &str| {
        format!(
            r#"---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: {name} }}
spec:
  strategy: pull
  sources: [paced]
  pull:
    resources:
      - type: Basic
        search:
          params:
            n: {{}}
          request:
            path: /items
            query: {{ n: "{{{{params.n}}}}" }}
          records: $.results[*]
  mapping:
    resourceType: Basic
    id: {{ $path: $.id }}
"#
        )
    };
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Source
metadata: {{ name: paced }}
spec:
  url: "{url}"
  timeout: {timeout}
  retries: 0
  rate: {rate}
{}{}"#,
        connector("one"),
        connector("two")
    )
}

async fn search(engine: &EngineRouter, connector: &str, n: usize) -> crate::local_http::Got {
    engine
        .get(format!("{}/fhir/{connector}/Basic?n={n}", engine.base))
        .send()
        .await
}

/// Checks that the `k`th arrival (from 0) came no earlier than the bucket allows: the
/// `burst` first at once, then one each `interval`; a little early is the clock's grain.
fn assert_paced(at: &[Duration], burst: usize, interval: Duration) {
    let grain = Duration::from_millis(30);
    for (k, d) in at.iter().enumerate().skip(burst) {
        let earliest = interval * (k + 1 - burst) as u32;
        assert!(
            *d + grain >= earliest,
            "arrival {k} at {d:?}, before {earliest:?}: {at:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_through_two_connectors_share_the_sources_budget() {
    let source = Counting::start().await;
    let yaml = definitions_of(&source.url, "{ perSecond: 5, burst: 2 }", "10s");
    let (engine, _defs, _state) = open_engine(&yaml, CLIENT_TIMEOUT);
    let start = Instant::now();
    let calls = (0..12).map(|n| {
        let connector = if n % 2 == 0 { "one" } else { "two" };
        search(&engine, connector, n)
    });
    let answers = futures_util::future::join_all(calls).await;
    for got in &answers {
        assert_eq!(got.status, 200, "{}", got.text);
    }
    let at = source.since(start);
    assert_eq!(at.len(), 12, "each search called the source once");
    let early = at
        .iter()
        .filter(|d| **d < Duration::from_millis(150))
        .count();
    assert_eq!(early, 2, "only the burst at once: {at:?}");
    assert_paced(&at, 2, Duration::from_millis(200));
    // Every 1-second window holds at most the burst and a second's rate.
    for (i, from) in at.iter().enumerate() {
        let n = at[i..]
            .iter()
            .take_while(|d| **d < *from + Duration::from_secs(1))
            .count();
        assert!(
            n <= 2 + 5,
            "{n} requests in the second from {from:?}: {at:?}"
        );
    }
    assert!(
        at[11] >= Duration::from_millis(1970),
        "10 after the burst at 5 a second: {at:?}"
    );
}

#[tokio::test]
async fn a_request_whose_token_would_come_past_its_deadline_fails_at_once() {
    let source = Counting::start().await;
    // One request every 5 s, a 1 s timeout: the second cannot fit.
    let yaml = definitions_of(&source.url, "{ perSecond: 0.2, burst: 1 }", "1s");
    let (engine, _defs, _state) = open_engine(&yaml, CLIENT_TIMEOUT);
    let first = search(&engine, "one", 1).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let started = Instant::now();
    let second = search(&engine, "two", 2).await;
    let took = started.elapsed();
    assert_outcome(&second, 503, &["paced", "rate budget"]);
    assert_eq!(second.header("retry-after"), "1", "{second:?}");
    assert!(took < Duration::from_millis(500), "failed fast: {took:?}");
    assert_eq!(
        source.since(started).len(),
        1,
        "the refused one never reached the source"
    );
}

#[tokio::test]
async fn the_budget_is_kept_across_a_reload() {
    let source = Counting::start().await;
    let yaml = definitions_of(&source.url, "{ perSecond: 0.2, burst: 2 }", "1s");
    let defs = crate::engine_under_test::definitions(&yaml);
    let state = tempfile::tempdir().expect("state");
    let limits = open_admin();
    let first = EngineRouter::with_limits(
        load(defs.path()),
        state.path(),
        limits.clone(),
        CLIENT_TIMEOUT,
    );
    for n in 0..2 {
        assert_eq!(search(&first, "one", n).await.status, 200);
    }
    // A reload that changes the connectors (not the source's budget): the budget spent
    // before stays spent.
    let changed = yaml.replace("query: { n: ", "query: { m: ");
    std::fs::write(defs.path().join("definitions.yaml"), &changed).expect("rewrite");
    let engine = Engine::with_previous(
        Arc::new(load(defs.path())),
        limits,
        &dirs_in(state.path()),
        Some(&first.engine),
    )
    .expect("the reloaded engine");
    let second = EngineRouter::of(engine, CLIENT_TIMEOUT);
    let got = search(&second, "two", 3).await;
    assert_outcome(&got, 503, &["rate budget"]);
    assert_eq!(source.arrivals.lock().expect("lock").len(), 2);
}
