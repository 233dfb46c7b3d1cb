//! Faults cost little (issue 16, part 3): a source's `timeout` bounds a whole call, retries
//! included, so a hung source gives the partial answer by its timeout; a refused connection
//! is not retried with backoff; a circuit breaker per source answers at once without calling
//! a failing source, probes it after its cool-down and closes when it heals, its state in
//! `/metrics` and in the connector detail. Real FHIR stand-ins (`fhir_standin`) on 127.0.0.1,
//! the engine's router in-process (`engine_router`).

use std::time::Duration;

use engine::runtime::engine::Limits;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::engine_router::{EngineRouter, engine_with, open_admin};
use crate::engine_under_test::{definitions, load};
use crate::fhir_standin::FhirSource;
use crate::local_http::{Got, dead_url};

/// Longest any request of these tests may take before the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The engine's request timeout in these tests: longer than any source's.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);

/// A FHIR source document; `extra` lines go in its spec.
fn source(name: &str, url: &str, extra: &str) -> String {
    format!(
        "apiVersion: fosps.gravitate-health.eu/v1\nkind: Source\nmetadata: {{ name: {name} }}\nspec:\n  type: fhir\n  url: \"{url}\"\n{extra}\n---\n"
    )
}

/// A pull connector searching `Patient` over `sources` (a comma-separated list).
fn connector(name: &str, sources: &str) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: {name} }}
spec:
  strategy: pull
  sources: [{sources}]
  pull:
    resources:
      - type: Patient
        search:
          params:
            _count: {{ type: integer, default: 20, max: 100 }}
---
"#
    )
}

fn engine_of(yaml: &str) -> (EngineRouter, tempfile::TempDir) {
    let limits = Limits {
        timeout: REQUEST_TIMEOUT,
        ..open_admin()
    };
    engine_with(yaml, limits, CLIENT_TIMEOUT)
}

/// A FHIR source holding one patient, `id`.
async fn holding(id: &str) -> FhirSource {
    let s = FhirSource::start().await;
    s.put(json!({"resourceType": "Patient", "id": id}));
    s
}

/// Searches `connector`, giving the answer and the time it took.
async fn search(engine: &EngineRouter, connector: &str) -> (Got, Duration) {
    let started = Instant::now();
    let got = engine
        .get(format!("{}/fhir/{connector}/Patient", engine.base))
        .send()
        .await;
    (got, started.elapsed())
}

fn entries<'a>(bundle: &'a Value, mode: &str) -> Vec<&'a Value> {
    bundle["entry"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter(|e| e["search"]["mode"] == mode)
                .map(|e| &e["resource"])
                .collect()
        })
        .unwrap_or_default()
}

/// Checks a partial answer: the patients of the sources that answered, and one outcome naming
/// `failed` whose diagnostics hold `words`.
fn assert_partial(got: &Got, ids: &[&str], failed: &str, words: &[&str]) {
    assert_eq!(got.status, 200, "{}", got.text);
    let b = got.json();
    let found: Vec<&str> = entries(&b, "match")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(found, ids, "{b}");
    let outcomes = entries(&b, "outcome");
    assert_eq!(outcomes.len(), 1, "{b}");
    let text = outcomes[0]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains(&format!("`{failed}`")), "{text}");
    for w in words {
        assert!(text.contains(w), "{w:?} missing from {text:?}");
    }
}

async fn metrics(engine: &EngineRouter) -> String {
    let got = engine.get(format!("{}/metrics", engine.base)).send().await;
    assert_eq!(got.status, 200, "{}", got.text);
    got.text
}

/// The breaker of `source` in the detail of `connector`.
async fn breaker_detail(engine: &EngineRouter, connector: &str, source: &str) -> Value {
    let got = engine
        .get(format!("{}/connectors/{connector}", engine.base))
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let detail = got.json();
    detail["breakers"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["source"] == source))
        .cloned()
        .unwrap_or_else(|| panic!("no breaker of `{source}` in {detail}"))
}

/// Waits (at most 5 s) until the detail shows the breaker of `source` in `state`.
async fn await_breaker(engine: &EngineRouter, connector: &str, source: &str, state: &str) {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let b = breaker_detail(engine, connector, source).await;
        if b["state"] == state {
            return;
        }
        assert!(Instant::now() < until, "breaker never {state}: {b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_source_gives_the_partial_answer_by_its_timeout_retries_included() {
    let good = holding("g1").await;
    let hung = holding("h1").await;
    hung.delay(Duration::from_secs(60));
    let yaml = [
        source("good", &good.url, "  timeout: 5s"),
        source("hung", &hung.url, "  timeout: 1s\n  retries: 2"),
        connector("both", "good, hung"),
    ]
    .concat();
    let (engine, _defs) = engine_of(&yaml);

    let (got, took) = search(&engine, "both").await;
    assert_partial(&got, &["g1"], "hung", &["no answer within 1s"]);
    // One second for the call, retries included (today: three attempts, over 3 s).
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(1_600),
        "took {took:?}"
    );
    assert_eq!(hung.calls(), 1, "no retry fits once the timeout is spent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_costs_little() {
    let good = holding("g1").await;
    let down = dead_url();
    let yaml = [
        source("good", &good.url, "  timeout: 5s"),
        source("down", &down, "  timeout: 5s\n  retries: 2"),
        connector("with-down", "good, down"),
    ]
    .concat();
    let (engine, _defs) = engine_of(&yaml);

    // Today each costs two backoff waits (up to 200 ms and 400 ms, drawn at random): three
    // in a row under 100 ms would be luck of about 1 in 4000.
    for _ in 0..3 {
        let (got, took) = search(&engine, "with-down").await;
        assert_partial(&got, &["g1"], "down", &["connection failed"]);
        assert!(took < Duration::from_millis(100), "took {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_answers_at_once_without_the_source_and_a_probe_closes_it() {
    let good = holding("g1").await;
    let sick = holding("s1").await;
    sick.fail(None, 503);
    let yaml = [
        source("good", &good.url, "  timeout: 5s"),
        source(
            "sick",
            &sick.url,
            "  timeout: 2s\n  retries: 0\n  breaker: { failures: 2, coolDown: 400ms }",
        ),
        connector("alone", "sick"),
        connector("both", "good, sick"),
    ]
    .concat();
    let (engine, _defs) = engine_of(&yaml);
    assert_eq!(
        breaker_detail(&engine, "alone", "sick").await["state"],
        "closed"
    );

    // Two failed calls open it.
    for n in 1..=2 {
        let (got, _) = search(&engine, "alone").await;
        crate::local_http::assert_outcome(&got, 502, &["`sick`", "503"]);
        assert_eq!(sick.calls(), n);
    }

    // Open: answered at once, without calling the source, saying why.
    let mut took = Vec::new();
    for _ in 0..5 {
        let (got, t) = search(&engine, "alone").await;
        crate::local_http::assert_outcome(&got, 502, &["`sick`", "circuit breaker is open"]);
        took.push(t);
    }
    took.sort();
    assert!(took[2] < Duration::from_millis(5), "took {took:?}");
    let (got, _) = search(&engine, "both").await;
    assert_partial(&got, &["g1"], "sick", &["circuit breaker is open"]);
    assert_eq!(sick.calls(), 2, "an open breaker calls nobody");

    let text = metrics(&engine).await;
    assert!(
        text.contains("engine_source_breaker_state{source=\"sick\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("engine_source_breaker_opens_total{source=\"sick\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("engine_source_breaker_state{source=\"good\"} 0\n"),
        "{text}"
    );
    let b = breaker_detail(&engine, "both", "sick").await;
    assert_eq!(
        (&b["state"], &b["opens"]),
        (&json!("open"), &json!(1)),
        "{b}"
    );

    // After the cool-down, one probe: still failing, it re-opens.
    await_breaker(&engine, "alone", "sick", "halfOpen").await;
    assert!(
        metrics(&engine)
            .await
            .contains("engine_source_breaker_state{source=\"sick\"} 2\n")
    );
    let (got, _) = search(&engine, "alone").await;
    crate::local_http::assert_outcome(&got, 502, &["`sick`", "503"]);
    assert_eq!(sick.calls(), 3);
    let b = breaker_detail(&engine, "alone", "sick").await;
    assert_eq!(
        (&b["state"], &b["opens"]),
        (&json!("open"), &json!(2)),
        "{b}"
    );

    // Healed: the next probe closes it, and calls go again.
    sick.heal();
    await_breaker(&engine, "alone", "sick", "halfOpen").await;
    let (got, _) = search(&engine, "both").await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert!(entries(&got.json(), "outcome").is_empty(), "{}", got.text);
    assert_eq!(sick.calls(), 4);
    assert_eq!(
        breaker_detail(&engine, "alone", "sick").await["state"],
        "closed"
    );
    let (got, _) = search(&engine, "alone").await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(sick.calls(), 5);
    assert!(
        metrics(&engine)
            .await
            .contains("engine_source_breaker_state{source=\"sick\"} 0\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_error_does_not_open_the_breaker() {
    let picky = holding("p1").await;
    picky.fail(None, 400);
    let yaml = [
        source(
            "picky",
            &picky.url,
            "  timeout: 2s\n  breaker: { failures: 1, coolDown: 30s }",
        ),
        connector("alone", "picky"),
    ]
    .concat();
    let (engine, _defs) = engine_of(&yaml);
    for n in 1..=3 {
        let (got, _) = search(&engine, "alone").await;
        assert_ne!(got.status, 200, "{}", got.text);
        assert_eq!(
            picky.calls(),
            n,
            "a 400 is the caller's: the source is still called"
        );
    }
    assert_eq!(
        breaker_detail(&engine, "alone", "picky").await["state"],
        "closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_run_whose_breaker_is_open_fails_at_once_and_says_so() {
    let sick = holding("s1").await;
    sick.fail(None, 503);
    let yaml = format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: nightly }}
spec:
  strategy: cron
  schedule: {{ cron: "0 2 * * *" }}
  source: {{ type: fhir, url: "{}", retries: 0, timeout: 5s, breaker: {{ failures: 1, coolDown: 10m }} }}
  sync: {{ resourceTypes: [Patient], pageSize: 10 }}
---
"#,
        sick.url
    );
    let defs = definitions(&yaml);
    let r = crate::engine_under_test::runner(&load(defs.path()), "nightly", defs.path());
    let report = crate::engine_under_test::run_with_deadline(&r, CLIENT_TIMEOUT).await;
    assert!(!report.ok(), "{report:?}");
    assert_eq!(sick.calls(), 1);

    let started = Instant::now();
    let report = crate::engine_under_test::run_with_deadline(&r, CLIENT_TIMEOUT).await;
    let took = started.elapsed();
    assert!(!report.ok(), "{report:?}");
    let text = format!("{:?}", report.failures);
    assert!(text.contains("circuit breaker is open"), "{text}");
    assert_eq!(sick.calls(), 1, "an open breaker calls nobody");
    assert!(took < Duration::from_millis(50), "took {took:?}");
}
