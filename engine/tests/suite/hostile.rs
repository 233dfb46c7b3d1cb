//! Hostile sources and sinks (`hostile_source`, real servers on 127.0.0.1) against the
//! engine's one outbound layer: redirects never leave the origin nor carry credentials, a
//! source's failure never reads as "no data" (and is never cached), declared status readings,
//! a 429 storm that holds no slot and ends within the request's deadline, broken answers (a
//! lying length, a cut, a drip, malformed JSON, too large) each a clear `OperationOutcome`
//! in time, and the sink client under the same redirect policy and body cap.

use std::path::Path;
use std::time::Duration;

use engine::model::SinkRef;
use engine::runtime::engine::Limits;
use engine::runtime::sink::{WriteOptions, Writer};
use serde_json::json;
use tokio::time::Instant;

use crate::engine_router::{EngineRouter, engine_with};
use crate::engine_under_test::{definitions, load, run_with_deadline, runner};
use crate::hostile_source::HostileSource;
use crate::local_http::Got;

/// Longest any request of these tests may take before the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The engine's request timeout in these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

pub const API_KEY: &str = "secret-key-123";
pub const TENANT: &str = "tenant-secret-456";

/// A source document over `url`, with an API key, a configured header and `extra` lines of
/// its spec.
pub fn source(name: &str, url: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Source
metadata: {{ name: {name} }}
spec:
  url: "{url}"
  auth: {{ apiKey: {{ header: X-Api-Key, value: {API_KEY} }} }}
  headers: {{ X-Tenant: {TENANT} }}
  timeout: 1s
  retries: 0
{extra}
---
"#
    )
}

/// A cached pull connector whose search and read call `path` of `source`.
fn connector(name: &str, source: &str, path: &str) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: {name} }}
spec:
  strategy: pull
  sources: [{source}]
  cache: {{ ttl: 10m }}
  pull:
    resources:
      - type: Basic
        search:
          params:
            name: {{}}
          request:
            path: {path}
            query: {{ q: "{{{{params.name}}}}" }}
          records: $.results[*]
        read:
          request:
            path: {path}
            query: {{ id: "{{{{id}}}}" }}
          records: $.results[0]
  mapping:
    resourceType: Basic
    id: {{ $path: $.id }}
    code: {{ text: {{ $path: $.name }} }}
---
"#
    )
}

/// The engine of `yaml` with the tests' request timeout, and its definitions' directory.
fn engine_of(yaml: &str) -> (EngineRouter, tempfile::TempDir) {
    let limits = Limits {
        timeout: REQUEST_TIMEOUT,
        ..Limits::default()
    };
    engine_with(yaml, limits, CLIENT_TIMEOUT)
}

async fn search(engine: &EngineRouter, connector: &str) -> Got {
    engine
        .get(format!("/fhir/{connector}/Basic?name=private-caller-value"))
        .send()
        .await
}

/// Checks that an answer is an `OperationOutcome` with this status whose diagnostics hold
/// every one of `words` and none of the secrets.
fn assert_outcome(got: &Got, status: u16, words: &[&str]) {
    crate::local_http::assert_outcome(got, status, words);
    let diagnostics = got.json()["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for secret in [API_KEY, TENANT, "private-caller-value", "127.0.0.1"] {
        assert!(
            !diagnostics.contains(secret),
            "diagnostics {diagnostics:?} show {secret:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_stay_within_the_sources_origin_and_carry_nothing_away() {
    let hostile = HostileSource::start().await;
    let elsewhere = HostileSource::start().await;
    hostile.redirect_to(&elsewhere.url);
    let yaml = [
        source("hostile", &hostile.url, ""),
        connector("away", "hostile", "/redirect/elsewhere"),
        connector("file", "hostile", "/redirect/file"),
        connector("same", "hostile", "/redirect/same"),
        connector("loop", "hostile", "/redirect/loop"),
    ]
    .concat();
    let (engine, _defs) = engine_of(&yaml);

    // To another origin: refused before anything is sent there.
    let got = search(&engine, "away").await;
    assert_outcome(&got, 502, &["`hostile`", "another origin"]);
    let got = engine.get("/fhir/away/Basic/r1").send().await;
    assert_outcome(&got, 502, &["`hostile`", "another origin"]);
    for seen in elsewhere.seen() {
        for name in ["x-api-key", "x-tenant", "referer", "authorization"] {
            assert!(
                !seen.headers.contains_key(name),
                "{name} reached another origin: {seen:?}"
            );
        }
    }
    assert!(
        elsewhere.seen().is_empty(),
        "another origin was called: {:?}",
        elsewhere.seen()
    );

    // To `file:`: an error, twice (never an empty answer, never cached).
    for _ in 0..2 {
        let got = search(&engine, "file").await;
        assert_outcome(&got, 502, &["`hostile`", "redirect"]);
        assert_ne!(got.header("x-cache"), "hit");
    }

    // In a loop: a few hops, then an error.
    let got = search(&engine, "loop").await;
    assert_outcome(&got, 502, &["`hostile`", "more than 5 times"]);
    let hops = hostile
        .seen()
        .iter()
        .filter(|s| s.target.starts_with("/redirect/loop"))
        .count();
    assert!(hops <= 6, "{hops} requests for one search");

    // Within the origin: followed, with the answer of the page redirected to.
    let got = search(&engine, "same").await;
    assert_eq!(got.status, 200, "{}", got.text);
    let bundle = got.json();
    assert_eq!(bundle["entry"][0]["resource"]["id"], "r1", "{bundle}");
    assert!(
        hostile
            .seen()
            .iter()
            .any(|s| s.target == "/records"
                && s.headers.get("x-api-key").is_some_and(|v| v == API_KEY)),
        "the same-origin hop keeps the source's credentials"
    );
    assert!(
        hostile
            .seen()
            .iter()
            .all(|s| !s.headers.contains_key("referer"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_on_a_search_is_a_502_with_the_sources_message_and_is_not_cached() {
    let hostile = HostileSource::start().await;
    let yaml = [
        source("hostile", &hostile.url, ""),
        connector("typo", "hostile", "/recrods"),
    ]
    .concat();
    let (engine, _defs) = engine_of(&yaml);
    // Until the source is asked again (a failure is shared for a moment, never kept as an
    // answer), every answer is the 502, never an empty searchset.
    let started = Instant::now();
    let calls = || {
        hostile
            .seen()
            .iter()
            .filter(|s| s.target.starts_with("/recrods"))
            .count()
    };
    while calls() < 2 {
        let got = search(&engine, "typo").await;
        assert_outcome(&got, 502, &["`hostile`", "404", "no endpoint /recrods"]);
        assert_ne!(got.header("x-cache"), "hit");
        assert!(
            started.elapsed() < CLIENT_TIMEOUT,
            "the source was not asked again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A read's 404 is "not found".
    let got = engine.get("/fhir/typo/Basic/r1").send().await;
    assert_outcome(&got, 404, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_readings_make_404_empty_and_errors_in_200_failures() {
    let hostile = HostileSource::start().await;
    let yaml = [
        source("lenient", &hostile.url, "  statuses: { notFound: empty }"),
        source(
            "checked",
            &hostile.url,
            "  statuses: { errorWhen: \"$.error\" }",
        ),
        source("strict", &hostile.url, "  statuses: { notFound: error }"),
        source("plain", &hostile.url, "  statuses: { notFound: notFound }"),
        connector("none-here", "lenient", "/nothing"),
        connector("strict", "strict", "/nothing"),
        connector("plain", "plain", "/nothing"),
        connector("quota", "checked", "/error-in-200"),
        connector("fine", "checked", "/records"),
    ]
    .concat();
    let (engine, _defs) = engine_of(&yaml);

    let got = search(&engine, "none-here").await;
    assert_eq!(got.status, 200, "{}", got.text);
    let bundle = got.json();
    assert_eq!(bundle["type"], "searchset", "{bundle}");
    assert_eq!(bundle["total"], 0, "{bundle}");
    assert!(bundle.get("entry").is_none(), "{bundle}");

    // A read of a source that declares 404 an error is a 502; a search of one that declares
    // it "not found" is a 404; both with the source's message.
    let got = engine.get("/fhir/strict/Basic/r1").send().await;
    assert_outcome(&got, 502, &["`strict`", "no endpoint /nothing"]);
    let got = search(&engine, "plain").await;
    assert_outcome(&got, 404, &["`plain`", "no endpoint /nothing"]);

    let got = search(&engine, "quota").await;
    assert_outcome(&got, 502, &["`checked`", "daily quota exceeded"]);

    let got = search(&engine, "fine").await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json()["entry"][0]["resource"]["id"], "r1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_holds_no_slot_and_fails_within_the_deadline() {
    let hostile = HostileSource::start().await;
    let yaml = [
        source("busy", &hostile.url, "  concurrency: 1"),
        connector("storm", "busy", "/storm"),
        connector("calm", "busy", "/records"),
    ]
    .concat()
    .replace("retries: 0", "retries: 3");
    let (engine, _defs) = engine_of(&yaml);
    let storming = {
        let call = engine.get("/fhir/storm/Basic?name=a");
        tokio::spawn(async move {
            let started = Instant::now();
            (call.send().await, started.elapsed())
        })
    };
    let polls = Instant::now();
    while hostile.storm_calls() == 0 {
        assert!(
            polls.elapsed() < CLIENT_TIMEOUT,
            "the storming request never reached the source"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let got = search(&engine, "calm").await;
    let calm = started.elapsed();
    assert_eq!(got.status, 200, "{}", got.text);
    assert!(
        calm < Duration::from_secs(2),
        "an unrelated request waited {calm:?} behind the storm"
    );
    let (got, took) = storming.await.expect("the storming request");
    assert_outcome(&got, 502, &["`busy`", "429", "slow down", "deadline"]);
    assert!(
        took <= REQUEST_TIMEOUT,
        "the storming request took {took:?}"
    );
    assert_eq!(hostile.storm_calls(), 1, "no retry past the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_answers_are_clear_outcomes_in_time_while_healthz_answers() {
    let hostile = HostileSource::start().await;
    let yaml = [
        source("broken", &hostile.url, ""),
        source("small", &hostile.url, "  maxAnswer: 1MiB"),
        connector("lying", "broken", "/lying-length"),
        connector("overlong", "broken", "/overlong"),
        connector("cut", "broken", "/cut"),
        connector("drip", "broken", "/drip"),
        connector("malformed", "broken", "/malformed"),
        connector("huge", "broken", "/huge/40"),
        connector("small", "small", "/huge/2"),
    ]
    .concat();
    let (engine, _defs) = engine_of(&yaml);
    let cases: [(&str, u16, &[&str]); 7] = [
        ("lying", 502, &["`broken`", "cut short"]),
        ("overlong", 502, &["`broken`", "not JSON"]),
        ("cut", 502, &["`broken`", "cut short"]),
        ("drip", 504, &["`broken`", "no answer within 1s"]),
        ("malformed", 502, &["`broken`", "not JSON"]),
        ("huge", 502, &["`broken`", "larger than 32 MiB"]),
        ("small", 502, &["`small`", "larger than 1 MiB", "maxAnswer"]),
    ];
    for (connector, status, words) in cases {
        let started = Instant::now();
        let (got, health) = tokio::join!(search(&engine, connector), async {
            engine.get("/healthz").send().await
        });
        let took = started.elapsed();
        assert_outcome(&got, status, words);
        assert!(
            took <= REQUEST_TIMEOUT + Duration::from_millis(500),
            "{connector} took {took:?}"
        );
        assert_eq!(
            health.status, 200,
            "/healthz during {connector}: {}",
            health.text
        );
    }
}

/// A sink document named `name` writing to `url`, with a bearer token.
fn sink(name: &str, url: &str) -> String {
    format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata: {{ name: {name} }}
spec:
  fhir: {{ url: \"{url}\", version: R4, retries: 0, timeout: 5s, auth: {{ bearer: {{ token: {API_KEY} }} }} }}
---
"
    )
}

async fn write_one(
    model: &engine::model::Model,
    name: &str,
    dir: &Path,
) -> engine::runtime::sink::WriteReport {
    let target = SinkRef::Named(model.sinks[name].clone());
    let writer = Writer::new(&target, dir).expect("a writer");
    let started = Instant::now();
    let report = writer
        .write(
            vec![json!({"resourceType": "Patient", "id": "p1"})],
            &WriteOptions::default(),
        )
        .await;
    assert!(
        started.elapsed() < CLIENT_TIMEOUT,
        "the write took too long"
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_client_keeps_the_same_redirect_policy_and_body_cap() {
    let hostile = HostileSource::start().await;
    let elsewhere = HostileSource::start().await;
    hostile.redirect_to(&elsewhere.url);
    let yaml = [
        sink("direct", &format!("{}/sink", hostile.url)),
        sink("moved", &format!("{}/sink/elsewhere", hostile.url)),
        sink("huge", &format!("{}/huge/100", hostile.url)),
    ]
    .concat();
    let defs = definitions(&yaml);
    let model = load(defs.path());

    let report = write_one(&model, "direct", defs.path()).await;
    assert_eq!(report.written, 1, "{report:?}");

    let report = write_one(&model, "moved", defs.path()).await;
    assert_eq!(report.written, 0, "{report:?}");
    let message = &report.failures[0].message;
    assert!(message.contains("another origin"), "{message}");
    assert!(
        !report.failures[0].transient,
        "a refused redirect is refused again: {report:?}"
    );
    assert!(
        !message.contains(API_KEY) && !message.contains("127.0.0.1"),
        "{message}"
    );
    assert!(
        elsewhere.seen().is_empty(),
        "the sink's write reached another origin: {:?}",
        elsewhere.seen()
    );

    let report = write_one(&model, "huge", defs.path()).await;
    assert_eq!(report.written, 0, "{report:?}");
    let message = &report.failures[0].message;
    assert!(message.contains("larger than 32 MiB"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guide_download_keeps_the_same_redirect_policy() {
    let hostile = HostileSource::start().await;
    let elsewhere = HostileSource::start().await;
    hostile.redirect_to(&elsewhere.url);
    let defs = definitions(&format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: guide }}
spec:
  strategy: cron
  schedule: {{ cron: \"0 3 * * *\" }}
  import: {{ guide: \"{}/redirect/elsewhere\", timeout: 5s }}
",
        hostile.url
    ));
    let state = tempfile::tempdir().expect("state");
    let runner = runner(&load(defs.path()), "guide", state.path());
    let report = run_with_deadline(&runner, CLIENT_TIMEOUT).await;
    assert_eq!(report.resources_written, 0, "{report:#?}");
    let messages: Vec<&str> = report.failures.iter().map(|f| f.message.as_str()).collect();
    assert!(
        messages.iter().any(|m| m.contains("another origin")),
        "{messages:?}"
    );
    assert!(
        elsewhere.seen().is_empty(),
        "the download reached another origin: {:?}",
        elsewhere.seen()
    );
}
