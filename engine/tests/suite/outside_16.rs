//! Issue 16's behaviours tried from outside with cases its own tests did not have: deadlines
//! against sources that hang, trickle, ask to be called again in 30 s or redirect to a hung
//! one; the circuit breaker against 4xx, 429, concurrent probes and a stale cache; the cached
//! answer's `If-None-Match`, `HEAD` and parameter spellings; `/healthz` spelt otherwise; the
//! queue's group commit when the disk refuses, with repeated keys and damaged drain records.
//! Real stand-ins on 127.0.0.1 (a small axum app here, `fhir_standin`), the engine's router
//! in-process (`engine_router`) or the binary (`serve_process`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use engine::runtime::engine::Limits;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::engine_router::{EngineRouter, open_admin};
use crate::engine_under_test::{definitions, load};
use crate::fhir_standin::{FhirSource, fhir_json};
use crate::local_http::{Got, assert_outcome, bind, spawn_app};

/// Longest any request of these tests may take before the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

// ------------------------------------------------------------------------------------------
// A misbehaving source
// ------------------------------------------------------------------------------------------

/// Calls the misbehaving source received, by path kind.
#[derive(Default)]
struct Calls {
    hang: AtomicUsize,
    trickle: AtomicUsize,
    busy: AtomicUsize,
    redirect: AtomicUsize,
    status: AtomicUsize,
}

/// A source whose bases each misbehave in one way: `/hang` accepts and never answers,
/// `/trickle` sends its headers then a byte a second, `/busy` answers 503 with
/// `Retry-After: 30`, `/redirect/{n}` redirects `n` times within its origin and then hangs,
/// `/status/{code}` answers that status with an `OperationOutcome`.
struct Misbehaving {
    url: String,
    calls: Arc<Calls>,
}

impl Misbehaving {
    async fn start() -> Misbehaving {
        let (listener, url) = bind().await;
        let calls = Arc::new(Calls::default());
        let app = axum::Router::new()
            .route("/hang/{*rest}", any(hang))
            .route("/trickle/{*rest}", any(trickle))
            .route("/busy/{*rest}", any(busy))
            .route("/redirect/{n}/{*rest}", any(redirect))
            .route("/status/{code}/{*rest}", any(status))
            .with_state(calls.clone());
        spawn_app(listener, app);
        Misbehaving { url, calls }
    }

    fn base(&self, kind: &str) -> String {
        format!("{}/{kind}", self.url)
    }
}

async fn hang(State(c): State<Arc<Calls>>) -> Response {
    c.hang.fetch_add(1, Ordering::SeqCst);
    std::future::pending::<()>().await;
    StatusCode::OK.into_response()
}

async fn trickle(State(c): State<Arc<Calls>>) -> Response {
    c.trickle.fetch_add(1, Ordering::SeqCst);
    let text = br#"{"resourceType":"Bundle","type":"searchset","entry":[]}"#.to_vec();
    let bytes = futures_util::stream::unfold(0usize, move |i| {
        let text = text.clone();
        async move {
            if i > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            text.get(i)
                .map(|b| (Ok::<_, std::io::Error>(vec![*b]), i + 1))
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/fhir+json")
        .body(Body::from_stream(bytes))
        .expect("a response")
}

async fn busy(State(c): State<Arc<Calls>>) -> Response {
    c.busy.fetch_add(1, Ordering::SeqCst);
    let mut r = fhir_json(
        503,
        &crate::fhir_standin::operation_outcome("transient", "busy, come back later"),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("30"));
    r
}

async fn redirect(
    State(c): State<Arc<Calls>>,
    UrlPath((n, rest)): UrlPath<(u32, String)>,
) -> Response {
    c.redirect.fetch_add(1, Ordering::SeqCst);
    let to = match n {
        0 => format!("/hang/{rest}"),
        n => format!("/redirect/{}/{rest}", n - 1),
    };
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

async fn status(State(c): State<Arc<Calls>>, UrlPath((code, _)): UrlPath<(u16, String)>) -> Response {
    c.status.fetch_add(1, Ordering::SeqCst);
    fhir_json(
        code,
        &crate::fhir_standin::operation_outcome("processing", &format!("answered {code}")),
    )
}

// ------------------------------------------------------------------------------------------
// Definitions and reading answers
// ------------------------------------------------------------------------------------------

/// A FHIR source document; `extra` lines go in its spec.
fn source(name: &str, url: &str, extra: &str) -> String {
    format!(
        "apiVersion: fosps.gravitate-health.eu/v1\nkind: Source\nmetadata: {{ name: {name} }}\nspec:\n  type: fhir\n  url: \"{url}\"\n{extra}\n---\n"
    )
}

/// A pull connector searching and reading `Patient` over `sources` (comma-separated), with
/// batches; `extra` lines go in its `spec`.
fn connector(name: &str, sources: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: {name} }}
spec:
  strategy: pull
  sources: [{sources}]
{extra}  pull:
    batch: true
    resources:
      - type: Patient
        read: {{}}
        search:
          params:
            _count: {{ type: integer, default: 20, max: 100 }}
            family: {{ type: string }}
---
"#
    )
}

/// The engine of `yaml` in-process, its request timeout `timeout`, the admin API open.
fn engine_of(yaml: &str, timeout: Duration) -> (EngineRouter, tempfile::TempDir) {
    let defs = definitions(yaml);
    let limits = Limits {
        timeout,
        ..open_admin()
    };
    let engine = EngineRouter::with_limits(
        load(defs.path()),
        &defs.path().join("state"),
        limits,
        CLIENT_TIMEOUT,
    );
    (engine, defs)
}

/// A FHIR source holding one patient, `id`.
async fn holding(id: &str) -> FhirSource {
    let s = FhirSource::start().await;
    s.put(json!({"resourceType": "Patient", "id": id, "name": [{"family": "Smith"}]}));
    s
}

/// `GET` of `path` on the engine: the answer and the time it took.
async fn timed_get(engine: &EngineRouter, path: &str) -> (Got, Duration) {
    let started = Instant::now();
    let got = engine.get(format!("{}{path}", engine.base)).send().await;
    (got, started.elapsed())
}

/// The resources of a Bundle's entries whose search mode is `mode`.
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

/// The diagnostics of a Bundle's outcome entries.
fn outcome_texts(bundle: &Value) -> Vec<String> {
    entries(bundle, "outcome")
        .iter()
        .map(|o| o["issue"][0]["diagnostics"].as_str().unwrap_or("").to_owned())
        .collect()
}

// ------------------------------------------------------------------------------------------
// 1. Deadlines
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_trickling_busy_and_redirected_sources_each_end_by_their_timeout_named() {
    let good = holding("g1").await;
    let bad = Misbehaving::start().await;
    let slow = "  timeout: 1s\n  retries: 2";
    let yaml = [
        source("good", &good.url, "  timeout: 5s"),
        source("hung", &bad.base("hang"), slow),
        source("trickling", &bad.base("trickle"), slow),
        source("busy", &bad.base("busy"), slow),
        source("redirected", &bad.base("redirect/3"), slow),
        connector("all", "good, hung, trickling, busy, redirected", ""),
    ]
    .concat();
    let (engine, _defs) = engine_of(&yaml, Duration::from_secs(10));

    let (got, took) = timed_get(&engine, "/fhir/all/Patient").await;
    assert_eq!(got.status, 200, "{}", got.text);
    let b = got.json();
    let ids: Vec<&str> = entries(&b, "match")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, ["g1"], "{b}");
    let texts = outcome_texts(&b);
    assert_eq!(texts.len(), 4, "{b}");
    for (name, words) in [
        ("hung", "within 1s"),
        ("trickling", "within 1s"),
        ("busy", "503"),
        ("redirected", "within 1s"),
    ] {
        let text = texts
            .iter()
            .find(|t| t.contains(&format!("`{name}`")))
            .unwrap_or_else(|| panic!("no outcome names `{name}`: {texts:?}"));
        assert!(text.contains(words), "{name}: {text}");
        assert!(!text.contains(&bad.url), "no URL in {text}");
    }
    assert!(
        took < Duration::from_millis(1_800),
        "every source has 1 s, retries and a Retry-After of 30 s included: took {took:?}"
    );
    assert_eq!(
        bad.calls.busy.load(Ordering::SeqCst),
        1,
        "a Retry-After past the deadline is not waited"
    );
}

/// A search, a read or a batch (`n` modulo 3) of `both`: its answer and the time it took.
async fn interaction(engine: &EngineRouter, n: usize) -> (Got, Duration) {
    let started = Instant::now();
    let got = match n % 3 {
        0 => engine.get(format!("{}/fhir/both/Patient", engine.base)).send().await,
        1 => engine.get(format!("{}/fhir/both/Patient/g1", engine.base)).send().await,
        _ => {
            let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"request": {"method": "GET", "url": "Patient/g1"}}
            ]});
            engine
                .post(format!("{}/fhir/both", engine.base))
                .header("content-type", "application/fhir+json")
                .body(batch.to_string())
                .send()
                .await
        }
    };
    (got, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_slower_than_the_request_gives_the_partial_answer_every_time_never_a_504() {
    let good = holding("g1").await;
    let bad = Misbehaving::start().await;
    let yaml = [
        source("good", &good.url, "  timeout: 5s"),
        source("hung", &bad.base("hang"), "  timeout: 1h\n  retries: 2"),
        connector("both", "good, hung", ""),
    ]
    .concat();
    let (engine, _defs) = engine_of(&yaml, Duration::from_millis(150));
    let engine = Arc::new(engine);
    // Concurrent searches, reads and batches, each cut by the request's deadline: the
    // guard's time limit and the sources' deadline fell on the same instant, and the guard's
    // 504 (which loses the good source's answer) won now and then (2 in 40 before).
    let tasks: Vec<_> = (0..90)
        .map(|n| {
            let e = engine.clone();
            tokio::spawn(async move { (n, interaction(&e, n).await) })
        })
        .collect();
    let mut refused = Vec::new();
    for t in tasks {
        let (n, (got, took)) = t.await.expect("an interaction");
        assert!(took < Duration::from_millis(1_000), "took {took:?}");
        if got.status != 200 {
            refused.push((n % 3, got.status));
            continue;
        }
        assert!(got.text.contains("g1"), "{}", got.text);
        if n % 3 != 1 {
            assert!(got.text.contains("`hung`"), "{}", got.text);
        }
    }
    assert!(refused.is_empty(), "(interaction, status): {refused:?}");
}

// ------------------------------------------------------------------------------------------
// 2. The circuit breaker
// ------------------------------------------------------------------------------------------

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_4xx_leave_the_breaker_closed_and_429_opens_it() {
    let bad = Misbehaving::start().await;
    let breaker = "  timeout: 2s\n  retries: 0\n  breaker: { failures: 2, coolDown: 1m }";
    let mut yaml = String::new();
    for code in [404, 400, 422, 410, 429] {
        yaml += &source(&format!("s{code}"), &bad.base(&format!("status/{code}")), breaker);
        yaml += &connector(&format!("c{code}"), &format!("s{code}"), "");
    }
    let (engine, _defs) = engine_of(&yaml, Duration::from_secs(10));
    for code in [404, 400, 422, 410] {
        for _ in 0..4 {
            let (got, _) = timed_get(&engine, &format!("/fhir/c{code}/Patient")).await;
            assert_ne!(got.status, 200, "{}", got.text);
            assert!(!got.text.contains("circuit breaker"), "{code}: {}", got.text);
        }
        let b = breaker_detail(&engine, &format!("c{code}"), &format!("s{code}")).await;
        assert_eq!(b["state"], "closed", "{code}: {b}");
    }
    assert_eq!(bad.calls.status.load(Ordering::SeqCst), 16, "every 4xx was called");
    for _ in 0..2 {
        timed_get(&engine, "/fhir/c429/Patient").await;
    }
    let (got, _) = timed_get(&engine, "/fhir/c429/Patient").await;
    assert_outcome(&got, 502, &["circuit breaker is open"]);
    assert_eq!(bad.calls.status.load(Ordering::SeqCst), 18);
    let b = breaker_detail(&engine, "c429", "s429").await;
    assert_eq!(b["state"], "open", "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_while_half_open_send_one_probe() {
    let sick = holding("s1").await;
    sick.fail(None, 503);
    let yaml = [
        source(
            "sick",
            &sick.url,
            "  timeout: 3s\n  retries: 0\n  breaker: { failures: 1, coolDown: 300ms }",
        ),
        connector("alone", "sick", ""),
    ]
    .concat();
    let (engine, _defs) = engine_of(&yaml, Duration::from_secs(10));
    let (got, _) = timed_get(&engine, "/fhir/alone/Patient").await;
    assert_outcome(&got, 502, &["503"]);
    assert_eq!(sick.calls(), 1);
    // Healed but slow: the probe takes 500 ms, and 16 callers come meanwhile.
    sick.heal();
    sick.delay(Duration::from_millis(500));
    tokio::time::sleep(Duration::from_millis(350)).await;
    let engine = Arc::new(engine);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let e = engine.clone();
            tokio::spawn(async move { timed_get(&e, "/fhir/alone/Patient").await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let (got, took) = t.await.expect("a request");
        if got.status == 200 {
            ok += 1;
        } else {
            assert_outcome(&got, 502, &["circuit breaker"]);
            assert!(took < Duration::from_millis(100), "refused at once: {took:?}");
        }
    }
    assert_eq!(sick.calls(), 2, "one probe reached the source");
    assert_eq!(ok, 1, "the probe's caller got the answer");
    assert_eq!(breaker_detail(&engine, "alone", "sick").await["state"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_serves_the_stale_answer_within_stale_if_error() {
    let sick = holding("s1").await;
    let yaml = [
        source(
            "sick",
            &sick.url,
            "  timeout: 2s\n  retries: 0\n  breaker: { failures: 1, coolDown: 1m }",
        ),
        connector(
            "cached",
            "sick",
            "  cache: { ttl: 200ms, staleIfError: 1m }\n",
        ),
    ]
    .concat();
    let (engine, _defs) = engine_of(&yaml, Duration::from_secs(10));
    let (got, _) = timed_get(&engine, "/fhir/cached/Patient").await;
    assert_eq!(got.status, 200, "{}", got.text);
    let fresh = got.text.clone();
    sick.fail(None, 503);
    tokio::time::sleep(Duration::from_millis(250)).await;
    // The failed call opens the breaker; stale is served; then again while it is open.
    for _ in 0..2 {
        let (got, _) = timed_get(&engine, "/fhir/cached/Patient").await;
        assert_eq!(got.status, 200, "{}", got.text);
        assert_eq!(got.header("x-cache"), "stale");
        assert_eq!(got.text, fresh);
    }
    assert_eq!(breaker_detail(&engine, "cached", "sick").await["state"], "open");
    assert_eq!(sick.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_removed_by_a_reload_leaves_no_breaker_in_metrics() {
    let sick = holding("s1").await;
    sick.fail(None, 503);
    let well = holding("w1").await;
    let breaker = "  timeout: 2s\n  retries: 0\n  breaker: { failures: 1, coolDown: 1h }";
    let keep = source("well", &well.url, breaker) + &connector("kept", "well", "");
    let yaml = source("sick", &sick.url, breaker) + &connector("gone", "sick", "") + &keep;
    let (engine, defs) = engine_of(&yaml, Duration::from_secs(10));
    let (got, _) = timed_get(&engine, "/fhir/gone/Patient").await;
    assert_outcome(&got, 502, &["503"]);
    let (got, _) = timed_get(&engine, "/metrics").await;
    assert!(
        got.text.contains("engine_source_breaker_state{source=\"sick\"} 1\n"),
        "{}",
        got.text
    );
    // The operator removes the source and its connector: a reload.
    let next_defs = definitions(&keep);
    let next = engine::runtime::engine::Engine::with_previous(
        Arc::new(load(next_defs.path())),
        Limits {
            timeout: Duration::from_secs(10),
            ..open_admin()
        },
        &crate::engine_under_test::dirs_in(&defs.path().join("state")),
        Some(&engine.engine),
    )
    .expect("the reloaded engine");
    drop(engine);
    let engine = EngineRouter::of(next, CLIENT_TIMEOUT);
    let (got, _) = timed_get(&engine, "/metrics").await;
    assert!(
        got.text.contains("engine_source_breaker_state{source=\"well\"} 0\n"),
        "{}",
        got.text
    );
    // Not a breaker "open" for an hour (then "half-open" for ever) of a source that is not
    // configured: `FospsSourceBreakerOpen` would fire for it.
    assert!(
        !got.text.contains("breaker_state{source=\"sick\"}"),
        "{}",
        got.text
    );
}

// ------------------------------------------------------------------------------------------
// 3. Cache hits
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_search_answers_weak_tags_head_and_other_spellings_of_its_parameters() {
    let src = holding("p1").await;
    let yaml = [
        source("src", &src.url, "  timeout: 5s"),
        connector("cached", "src", "  cache: { ttl: 1m }\n"),
    ]
    .concat();
    let (engine, _defs) = engine_of(&yaml, Duration::from_secs(10));
    // The first caller adds `_format` (ignored: every answer is JSON) with a text of its own.
    let (got, _) = timed_get(
        &engine,
        "/fhir/cached/Patient?family=Smith&_format=http%3A%2F%2Fevil.example%2F&_count=5",
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.header("x-cache"), "miss");
    assert_eq!(
        got.json()["link"][0]["url"],
        "http://engine.test/fhir/cached/Patient?family=Smith&_count=5",
        "the self link holds what the search read"
    );
    let tag = got.header("etag").to_owned();
    let opaque = tag.trim_start_matches("W/").to_owned();
    assert!(opaque.starts_with('"') && opaque.ends_with('"'), "{tag}");

    // Another order, another percent-encoding: the same entry (documented: normalised).
    for q in ["_count=5&family=Smith", "family=Sm%69th&_count=5", "family=Smith&_count=05"] {
        let (got, _) = timed_get(&engine, &format!("/fhir/cached/Patient?{q}")).await;
        assert_eq!(got.status, 200, "{q}: {}", got.text);
        assert_eq!(got.header("x-cache"), "hit", "{q}");
        assert_eq!(got.header("etag"), tag, "{q}");
        assert!(!got.text.contains("evil"), "another caller's text: {}", got.text);
    }
    assert_eq!(src.calls(), 1);

    // If-None-Match: the tag, a list holding it, and the same opaque tag without `W/` (RFC
    // 9110: If-None-Match compares weakly, as a proxy that drops the `W/` sends it) give 304.
    for inm in [tag.clone(), format!("\"other\", {tag}"), opaque.clone(), format!("\"x\",{opaque}")] {
        let got = engine
            .get(format!("{}/fhir/cached/Patient?family=Smith&_count=5", engine.base))
            .header("if-none-match", &inm)
            .send()
            .await;
        assert_eq!(got.status, 304, "If-None-Match: {inm}");
        assert!(got.text.is_empty());
        assert_eq!(got.header("etag"), tag);
    }
    // HEAD: the headers of the hit, no body.
    let got = engine
        .raw(
            axum::http::Method::HEAD,
            "/fhir/cached/Patient?family=Smith&_count=5",
        )
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.header("etag"), tag);
    assert_eq!(got.header("x-cache"), "hit");
    // no-cache: loads again (allowNoCache's default).
    let got = engine
        .get(format!("{}/fhir/cached/Patient?family=Smith&_count=5", engine.base))
        .header("cache-control", "no-cache")
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.header("x-cache"), "miss");
    assert_eq!(src.calls(), 2);
}

// ------------------------------------------------------------------------------------------
// 4. /healthz spelt otherwise
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_head_and_a_query_and_refuses_post_with_allow() {
    let src = holding("p1").await;
    let yaml = [
        source("src", &src.url, "  timeout: 5s"),
        connector("c", "src", ""),
    ]
    .concat();
    let (engine, _defs) = engine_of(&yaml, Duration::from_secs(10));
    let got = engine
        .raw(axum::http::Method::HEAD, "/healthz")
        .send()
        .await;
    assert_eq!(got.status, 200);
    assert!(got.text.is_empty());
    assert!(!got.header("x-request-id").is_empty());
    let (got, _) = timed_get(&engine, "/healthz?probe=1").await;
    assert_eq!(got.status, 200, "{}", got.text);
    let got = engine.post(format!("{}/healthz", engine.base)).send().await;
    assert_outcome(&got, 405, &["POST"]);
    assert!(got.header("allow").contains("GET"), "{:?}", got.headers);
    let (got, _) = timed_get(&engine, "/healthz/").await;
    assert_outcome(&got, 404, &["/healthz/"]);
}

// ------------------------------------------------------------------------------------------
// 5. Queued pushes: group commit against a refusing disk, repeated keys, the drain's record
// ------------------------------------------------------------------------------------------

const PUSH_TOKEN: &str = "push-token-0123456789";

/// A queued push connector `inbox` into the embedded NDJSON sink, Observations whose id is
/// the payload's `id`; bodies of at most `max_body`.
fn inbox_yaml(max_body: &str) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: inbox }}
spec:
  strategy: push
  push:
    auth: {{ bearer: {{ token: {PUSH_TOKEN} }} }}
    mode: queued
    maxBody: {max_body}
  mapping:
    resourceType: Observation
    id: {{ $path: "$.id" }}
    status: final
    code: {{ text: {{ $path: "$.text" }} }}
"#
    )
}

/// A push of `body` to the in-process engine, with `key` as its idempotency key if given.
async fn push_to(engine: &EngineRouter, body: &str, key: Option<&str>) -> Got {
    let mut call = engine
        .post(format!("{}/push/inbox", engine.base))
        .header("authorization", format!("Bearer {PUSH_TOKEN}"))
        .header("content-type", "application/json");
    if let Some(k) = key {
        call = call.header("idempotency-key", k);
    }
    call.body(body.to_owned()).send().await
}

/// A payload `{"id": id, "text": ...}` whose text is `pad` bytes long.
fn payload(id: &str, pad: usize) -> String {
    json!({"id": id, "text": "a".repeat(pad)}).to_string()
}

/// The in-process engine of `inbox` on `state` (no drainer: payloads stay queued).
fn inbox_engine(defs: &std::path::Path, state: &std::path::Path) -> EngineRouter {
    EngineRouter::with_limits(load(defs), state, open_admin(), CLIENT_TIMEOUT)
}

/// The Observation ids the NDJSON sink of `state` holds, in order.
fn written(state: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(state.join("ndjson/Observation.ndjson"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("an NDJSON line");
            v["id"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

/// `engine serve` of `defs` on `state`, the admin API open; `fsize_kib`: the file size
/// limit (`ulimit -f`, in KiB through bash) of the process, if any.
fn serve_cmd(
    defs: &std::path::Path,
    state: &std::path::Path,
    fsize_kib: Option<u32>,
) -> tokio::process::Command {
    let engine = env!("CARGO_BIN_EXE_engine");
    let mut cmd = match fsize_kib {
        Some(kib) => {
            let mut c = tokio::process::Command::new("bash");
            c.arg("-c")
                .arg(format!("ulimit -f {kib} && exec \"$0\" \"$@\""))
                .arg(engine);
            c
        }
        None => tokio::process::Command::new(engine),
    };
    cmd.arg("serve")
        .arg(defs)
        .arg("--state-dir")
        .arg(state)
        .arg("--admin-open")
        .env_remove("ENGINE_STATE_DIR")
        .env_remove("ENGINE_SINK_DIR");
    cmd
}

/// Waits (at most 10 s) until the sink of `state` holds `n` Observations.
async fn await_written(state: &std::path::Path, n: usize) -> Vec<String> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let ids = written(state);
        if ids.len() >= n || Instant::now() > until {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_size_limit_gives_503s_not_a_dead_engine_and_loses_nothing_acknowledged() {
    let defs = definitions(&inbox_yaml("1MiB"));
    let state = tempfile::tempdir().expect("state");
    // 64 KiB a file: the queue's segment (and the sink's file) reach it after a few pushes.
    let p = crate::serve_process::ServeProcess::start(
        serve_cmd(defs.path(), state.path(), Some(64)),
        Duration::from_secs(10),
    )
    .await;
    let http = crate::local_http::client(CLIENT_TIMEOUT);
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for i in 0..14 {
        let id = format!("o{i}");
        let got = crate::local_http::send(
            http.post(format!("{}/push/inbox", p.base))
                .header("authorization", format!("Bearer {PUSH_TOKEN}"))
                .header("content-type", "application/json")
                .body(payload(&id, 10_000)),
        )
        .await;
        match got.status {
            202 => acknowledged.push(id),
            _ => {
                assert_outcome(&got, 503, &["queue", "File too large"]);
                assert!(!got.text.contains("stopped"), "{}", got.text);
                let root = state.path().to_string_lossy().into_owned();
                assert!(!got.text.contains(&root), "{}", got.text);
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "64 KiB cannot take 14 payloads of 10 kB");
    let got = crate::local_http::send(http.get(format!("{}/healthz", p.base))).await;
    assert_eq!(got.status, 200, "the engine lives on");
    // The log names the file, relative to the state directory, and no absolute path.
    let log = p.log();
    assert!(log.contains("push/inbox/queue/"), "{log}");
    assert!(!log.contains(&*state.path().to_string_lossy()), "{log}");
    drop(p);

    // Restarted without the limit: every acknowledged payload written, once, in order.
    let p = crate::serve_process::ServeProcess::start(
        serve_cmd(defs.path(), state.path(), None),
        Duration::from_secs(10),
    )
    .await;
    let ids = await_written(state.path(), acknowledged.len()).await;
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique, acknowledged, "{:?}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_in_one_group_is_queued_once_and_a_body_at_the_cap_is_taken() {
    let defs = definitions(&inbox_yaml("20000B"));
    let state = tempfile::tempdir().expect("state");
    let engine = Arc::new(inbox_engine(defs.path(), state.path()));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let e = engine.clone();
            tokio::spawn(async move {
                push_to(&e, &payload(&format!("k{i}"), 10), Some("same-key")).await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("a push").status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [202, 200, 409].contains(s)),
        "{statuses:?}"
    );
    // A body of exactly the cap is taken; one byte more is 413.
    let at_cap = payload("cap", 0);
    let at_cap = payload("cap", 20_000 - at_cap.len());
    assert_eq!(at_cap.len(), 20_000);
    let got = push_to(&engine, &at_cap, None).await;
    assert_eq!(got.status, 202, "{}", got.text);
    let over = payload("over", 20_001 - payload("over", 0).len());
    let got = push_to(&engine, &over, None).await;
    assert_outcome(&got, 413, &["20000"]);
    let got = engine
        .get(format!("{}/connectors/inbox", engine.base))
        .send()
        .await;
    assert_eq!(got.json()["push"]["queued"], 2, "{}", got.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_of_a_long_outage_and_a_garbage_drain_record_drain_in_order_once() {
    let defs = definitions(&inbox_yaml("1MiB"));
    let state = tempfile::tempdir().expect("state");
    // Three engines one after another (each opens a new segment), three payloads each.
    let mut sent = Vec::new();
    for round in 0..3 {
        let engine = inbox_engine(defs.path(), state.path());
        for i in 0..3 {
            let id = format!("r{round}-{i}");
            let got = push_to(&engine, &payload(&id, 10), None).await;
            assert_eq!(got.status, 202, "{}", got.text);
            sent.push(id);
        }
    }
    let segments = std::fs::read_dir(state.path().join("push/inbox/queue"))
        .expect("the queue")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "seg"))
        })
        .count();
    assert_eq!(segments, 3);
    // The drain's record damaged (a torn write by another tool, or garbage).
    std::fs::write(state.path().join("push/inbox/inflight.json"), b"{\"settled\": 1")
        .expect("write");
    let p = crate::serve_process::ServeProcess::start(
        serve_cmd(defs.path(), state.path(), None),
        Duration::from_secs(10),
    )
    .await;
    let ids = await_written(state.path(), sent.len()).await;
    assert_eq!(ids, sent, "{}", p.log());
    // Every segment settled and deleted: a restart has nothing to write again.
    let http = crate::local_http::client(CLIENT_TIMEOUT);
    let got = crate::local_http::send(http.get(format!("{}/connectors/inbox", p.base))).await;
    assert_eq!(got.json()["push"]["queued"], 0, "{}", got.text);
    let until = Instant::now() + Duration::from_secs(5);
    while std::fs::read_dir(state.path().join("push/inbox/queue"))
        .expect("the queue")
        .count()
        > 0
    {
        assert!(Instant::now() < until, "segments left after the drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_too_long_to_keep_is_refused_not_silently_ignored() {
    let defs = definitions(&inbox_yaml("1MiB"));
    let state = tempfile::tempdir().expect("state");
    let engine = inbox_engine(defs.path(), state.path());
    // The longest key kept: a retry with a changed body is a duplicate.
    let key = "k".repeat(200);
    let got = push_to(&engine, &payload("a1", 10), Some(&key)).await;
    assert_eq!(got.status, 202, "{}", got.text);
    let got = push_to(&engine, &payload("a1", 11), Some(&key)).await;
    assert_eq!((got.status, got.json()["status"].clone()), (200, json!("duplicate")));
    // One more character: refused, rather than dropped (two bodies, two writes).
    let longer = "k".repeat(201);
    for pad in [10, 11] {
        let got = push_to(&engine, &payload("b1", pad), Some(&longer)).await;
        assert_outcome(&got, 400, &["Idempotency-Key", "200"]);
    }
    let got = engine
        .get(format!("{}/connectors/inbox", engine.base))
        .send()
        .await;
    assert_eq!(got.json()["push"]["queued"], 1, "{}", got.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duration_past_what_the_clock_can_add_is_refused_not_a_panic_at_the_first_call() {
    // 200,000,000,000,000 days fit in a `Duration` but not in an instant of the clock: taken,
    // the source's first call (or a breaker's opening, a cache entry) panicked.
    let huge = "200000000000000d";
    let yaml = source("s", "http://127.0.0.1:9/", &format!("  timeout: {huge}"))
        + &connector("c", "s", &format!("  cache: {{ ttl: {huge} }}\n"));
    let defs = definitions(&yaml);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .arg("validate")
        .arg(defs.path())
        .output()
        .await
        .expect("engine validate");
    let text = String::from_utf8_lossy(&out.stdout).into_owned()
        + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    for path in ["spec.timeout", "spec.cache.ttl"] {
        assert!(text.contains(path), "{path}: {text}");
    }
    assert!(text.contains("at most 100 years"), "{text}");
    // The flags too: `--request-timeout` is added to every request's start.
    let serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["serve", "--listen", "127.0.0.1:0", "--request-timeout", huge])
        .arg(defs.path())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), serve)
        .await
        .expect("engine serve refuses the flag at once")
        .expect("engine serve");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--request-timeout"),
        "{out:?}"
    );
}
