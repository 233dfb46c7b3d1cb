//! Issue 16's behaviours tried from outside as a hostile tester, each test a case its own
//! tests did not have and that failed before its fix: a source slower than the request (the
//! guard's 504 raced the partial answer), a breaker left in `/metrics` by a reload that
//! removed its source, a cached search's weak entity tag and the links of its first caller,
//! a file size limit that killed the engine mid-push, a queued push whose caller left during
//! its flush (its resend queued again), an idempotency key too long to keep, and durations
//! past what the clock can add. Real stand-ins on 127.0.0.1 (a source that
//! never answers here, `fhir_standin`), the engine's router in-process (`engine_router`) or
//! the binary (`serve_process`).

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use engine::runtime::engine::Limits;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::engine_router::{EngineRouter, engine_with, open_admin};
use crate::engine_under_test::{definitions, load};
use crate::fhir_standin::FhirSource;
use crate::local_http::{Got, assert_outcome, bind, spawn_app};

/// Longest any request of these tests may take before the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// A source that accepts every request and never answers; its base URL.
async fn hung_source() -> String {
    async fn hang() -> Response {
        std::future::pending::<()>().await;
        StatusCode::OK.into_response()
    }
    let (listener, url) = bind().await;
    spawn_app(listener, axum::Router::new().fallback(any(hang)));
    url
}

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
    let limits = Limits {
        timeout,
        ..open_admin()
    };
    engine_with(yaml, limits, CLIENT_TIMEOUT)
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

// ------------------------------------------------------------------------------------------
// 1. Deadlines
// ------------------------------------------------------------------------------------------

/// A search, a read or a batch (`n` modulo 3) of `both`: its answer and the time it took.
async fn interaction(engine: &EngineRouter, n: usize) -> (Got, Duration) {
    let started = Instant::now();
    let got = match n % 3 {
        0 => {
            engine
                .get(format!("{}/fhir/both/Patient", engine.base))
                .send()
                .await
        }
        1 => {
            engine
                .get(format!("{}/fhir/both/Patient/g1", engine.base))
                .send()
                .await
        }
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
    let hung = hung_source().await;
    let yaml = [
        source("good", &good.url, "  timeout: 5s"),
        source("hung", &hung, "  timeout: 1h\n  retries: 2"),
        connector("both", "good, hung", ""),
    ]
    .concat();
    let (engine, _defs) = engine_of(&yaml, Duration::from_secs(1));
    let engine = Arc::new(engine);
    // Concurrent searches, reads and batches, each cut by the request's deadline: the
    // guard's time limit and the sources' deadline fell on the same instant, and the guard's
    // 504 (which loses the good source's answer) won now and then (2 or 3 in 90 before).
    let tasks: Vec<_> = (0..90)
        .map(|n| {
            let e = engine.clone();
            tokio::spawn(async move { (n, interaction(&e, n).await) })
        })
        .collect();
    let mut refused = Vec::new();
    for t in tasks {
        let (n, (got, took)) = t.await.expect("an interaction");
        assert!(took < Duration::from_millis(2_500), "took {took:?}");
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
        got.text
            .contains("engine_source_breaker_state{source=\"sick\"} 1\n"),
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
        got.text
            .contains("engine_source_breaker_state{source=\"well\"} 0\n"),
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
async fn a_cached_search_matches_weak_tags_and_links_only_what_it_read() {
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
    for q in [
        "_count=5&family=Smith",
        "family=Sm%69th&_count=5",
        "family=Smith&_count=05",
    ] {
        let (got, _) = timed_get(&engine, &format!("/fhir/cached/Patient?{q}")).await;
        assert_eq!(got.status, 200, "{q}: {}", got.text);
        assert_eq!(got.header("x-cache"), "hit", "{q}");
        assert_eq!(got.header("etag"), tag, "{q}");
        assert!(
            !got.text.contains("evil"),
            "another caller's text: {}",
            got.text
        );
    }
    assert_eq!(src.calls(), 1);

    // If-None-Match: the tag, a list holding it, and the same opaque tag without `W/` (RFC
    // 9110: If-None-Match compares weakly, as a proxy that drops the `W/` sends it) give 304.
    for inm in [
        tag.clone(),
        format!("\"other\", {tag}"),
        opaque.clone(),
        format!("\"x\",{opaque}"),
    ] {
        let got = engine
            .get(format!(
                "{}/fhir/cached/Patient?family=Smith&_count=5",
                engine.base
            ))
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
        .get(format!(
            "{}/fhir/cached/Patient?family=Smith&_count=5",
            engine.base
        ))
        .header("cache-control", "no-cache")
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.header("x-cache"), "miss");
    assert_eq!(src.calls(), 2);
}

// ------------------------------------------------------------------------------------------
// 4. Queued pushes: a disk that refuses, idempotency keys; durations
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
    // Only whole lines: a line the engine is writing now may be read half-written.
    std::fs::read_to_string(state.join("ndjson/Observation.ndjson"))
        .unwrap_or_default()
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
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
async fn an_idempotency_key_too_long_to_keep_is_refused_not_silently_ignored() {
    let defs = definitions(&inbox_yaml("1MiB"));
    let state = tempfile::tempdir().expect("state");
    let engine = inbox_engine(defs.path(), state.path());
    // The longest key kept: a retry with a changed body is a duplicate.
    let key = "k".repeat(200);
    let got = push_to(&engine, &payload("a1", 10), Some(&key)).await;
    assert_eq!(got.status, 202, "{}", got.text);
    let got = push_to(&engine, &payload("a1", 11), Some(&key)).await;
    assert_eq!(
        (got.status, got.json()["status"].clone()),
        (200, json!("duplicate"))
    );
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
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    for path in ["spec.timeout", "spec.cache.ttl"] {
        assert!(text.contains(path), "{path}: {text}");
    }
    assert!(text.contains("at most 100 years"), "{text}");
    // The flags too: `--request-timeout` is added to every request's start.
    let serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--request-timeout",
            huge,
        ])
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_whose_caller_left_during_the_flush_is_a_duplicate_when_sent_again() {
    let defs = definitions(&inbox_yaml("1MiB"));
    let state = tempfile::tempdir().expect("state");
    let engine = inbox_engine(defs.path(), state.path());
    let endpoint = engine.engine.pushes["inbox"].clone();
    // The caller goes (its connection cut, its handler dropped) while the group commit is
    // being flushed: the payload is queued all the same. A delivery whose flush ended
    // within its first poll is not cut: the next one, under another key, is tried.
    let mut cut = None;
    for n in 0..50 {
        let key = format!("left-early-{n}");
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("content-type", "application/json".parse().expect("a value"));
        headers.insert("idempotency-key", key.parse().expect("a value"));
        let body = payload(&format!("gone{n}"), 10);
        let before = endpoint.depths().0;
        // Polled once, then dropped: the caller leaves as soon as its delivery waits (a
        // zero timeout is not that: its timer fires at the driver's next millisecond tick,
        // after a fast flush has ended).
        let polled = {
            let mut delivery = std::pin::pin!(endpoint.deliver(&headers, body.as_bytes(), None));
            std::future::poll_fn(|cx| std::task::Poll::Ready(delivery.as_mut().poll(cx))).await
        };
        let until = Instant::now() + Duration::from_secs(5);
        while endpoint.depths().0 == before {
            assert!(Instant::now() < until, "the payload was never queued");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if polled.is_pending() {
            cut = Some((key, body));
            break;
        }
    }
    let (key, body) = cut.expect("a delivery cut while its group was flushed");
    let queued = endpoint.depths().0;
    // It sends it again with the same key: a duplicate, not a second payload queued.
    let got = push_to(&engine, &body, Some(&key)).await;
    assert_eq!(
        (got.status, got.json()["status"].clone()),
        (200, json!("duplicate")),
        "{}",
        got.text
    );
    assert_eq!(endpoint.depths().0, queued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_during_the_flush_its_caller_left_is_never_queued_again() {
    use engine::runtime::push::Reply;
    let defs = definitions(&inbox_yaml("1MiB"));
    let state = tempfile::tempdir().expect("state");
    let engine = inbox_engine(defs.path(), state.path());
    let endpoint = engine.engine.pushes["inbox"].clone();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().expect("a value"));
    headers.insert(
        "idempotency-key",
        "left-then-resent".parse().expect("a value"),
    );
    let body = payload("resent", 10);
    let before = endpoint.depths().0;
    // The caller goes as soon as its delivery waits for the flush (polled once, dropped)...
    let first = {
        let mut delivery = std::pin::pin!(endpoint.deliver(&headers, body.as_bytes(), None));
        std::future::poll_fn(|cx| std::task::Poll::Ready(delivery.as_mut().poll(cx))).await
    };
    assert!(first.is_pending(), "the first delivery waits for its flush");
    // ... and sends it again at once, while that flush may still be running: the delivery is
    // being processed (409) or already a duplicate, never a second payload queued.
    let again = {
        let mut delivery = std::pin::pin!(endpoint.deliver(&headers, body.as_bytes(), None));
        std::future::poll_fn(|cx| std::task::Poll::Ready(delivery.as_mut().poll(cx))).await
    };
    match again {
        std::task::Poll::Ready(Ok(Reply::Duplicate)) => {}
        std::task::Poll::Ready(Err(p)) => assert_eq!(p.kind.status(), 409, "{p:?}"),
        other => panic!("the resend was taken again: {other:?}"),
    }
    let until = Instant::now() + Duration::from_secs(5);
    while endpoint.depths().0 == before {
        assert!(Instant::now() < until, "the first payload was never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Once flushed, a later resend is a duplicate.
    let got = push_to(&engine, &body, Some("left-then-resent")).await;
    assert_eq!(got.json()["status"], json!("duplicate"), "{}", got.text);
    assert_eq!(endpoint.depths().0, before + 1);
}
