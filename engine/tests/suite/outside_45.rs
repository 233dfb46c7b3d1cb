//! Issues 4 and 5's behaviours tried again from outside as a hostile tester, each test a case
//! their own tests did not have and that failed before its fix: a search's `next` links
//! followed to the end over two sources (the second source's first records were never
//! served) and over a source whose request does not carry `_offset` (every page was the
//! first, and `next` never ended); an answer far below the cache's `maxBytes` never kept on
//! a machine with several cores; a queued push whose transaction was refused and whose batch
//! was applied in part, taken as written whole on its next try; a sync push cut at the
//! request's time limit, its write applied and its resend written again; and runs asked for
//! at once, several told "started". Real stand-ins on 127.0.0.1 (`fhir_standin`, small axum
//! apps here), the engine's router in-process (`engine_router`) with a push endpoint's
//! drainer (`engine_under_test::Drainer`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::any;
use serde_json::{Value, json};

use crate::engine_router::{EngineRouter, open_engine};
use crate::engine_under_test::{Drainer, wait_until};
use crate::fhir_standin::{FhirSource, SEARCH_OVER_A_AND_B, fhir_source};
use crate::local_http::{Got, bind, spawn_app};

/// Longest any request of these tests may take before the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// Most pages a test follows before it calls the `next` links endless.
const MOST_PAGES: usize = 12;

/// Every page of a search, from `first` along its `next` links: each page's answer, until a
/// page has no `next` (or `MOST_PAGES` were read: the test then fails).
async fn every_page(engine: &EngineRouter, first: &str) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut url = Some(format!("{}{first}", engine.base));
    while let Some(u) = url.take() {
        assert!(
            pages.len() < MOST_PAGES,
            "`next` still leads on after {MOST_PAGES} pages: {u}"
        );
        let got = engine.get(&u).send().await;
        assert_eq!(got.status, 200, "{u}: {}", got.text);
        let page = got.json();
        url = page["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_owned);
        pages.push(page);
    }
    pages
}

/// The ids of the resources of every page, in order.
fn ids_of(pages: &[Value]) -> Vec<String> {
    pages
        .iter()
        .flat_map(|p| p["entry"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect()
}

// ------------------------------------------------------------------------------------------
// 1. `next` links followed to the end
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_links_over_two_sources_give_every_record_once() {
    let (a, b) = (FhirSource::start().await, FhirSource::start().await);
    for (s, prefix) in [(&a, "a"), (&b, "b")] {
        for n in 1..=3 {
            s.put(json!({"resourceType": "Patient", "id": format!("{prefix}{n}")}));
        }
    }
    let yaml = fhir_source("a", &a.url) + &fhir_source("b", &b.url) + SEARCH_OVER_A_AND_B;
    let (engine, _defs, _state) = open_engine(&yaml, CLIENT_TIMEOUT);
    let pages = every_page(&engine, "/fhir/both/Patient?_count=2").await;
    let mut ids = ids_of(&pages);
    // Before: the second page asked each source for its own third record on (`_offset=2`),
    // so `b1` and `b2` were never on any page.
    ids.sort();
    assert_eq!(ids, ["a1", "a2", "a3", "b1", "b2", "b3"], "{pages:#?}");
    assert!(
        pages
            .iter()
            .all(|p| p["entry"].as_array().map_or(0, Vec::len) <= 2),
        "{pages:#?}"
    );
    let total = &pages[0]["total"];
    assert_eq!(total, &json!(6), "{pages:#?}");
}

/// A JSON API that answers `GET /people` with the same five people, whatever the query.
async fn five_people() -> String {
    let people: Vec<Value> = (1..=5).map(|n| json!({"id": format!("p{n}")})).collect();
    let (listener, url) = bind().await;
    spawn_app(
        listener,
        axum::Router::new().route(
            "/people",
            axum::routing::get(move || {
                let people = people.clone();
                async move { axum::Json(people) }
            }),
        ),
    );
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_links_over_a_source_that_cannot_skip_end_and_repeat_nothing() {
    let url = five_people().await;
    let yaml = format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: people }}
spec:
  strategy: pull
  source: {{ url: "{url}", timeout: 5s }}
  pull:
    resources:
      - type: Patient
        search:
          params:
            _count: {{ type: integer, default: 20, max: 100 }}
          request: {{ path: /people }}
          records: $[*]
  mapping:
    resourceType: Patient
    id: {{ $path: $.id }}
"#
    );
    let (engine, _defs, _state) = open_engine(&yaml, CLIENT_TIMEOUT);
    // Before: the request does not carry `_offset`, so every page was the first two people
    // with a `next` link, for ever.
    let pages = every_page(&engine, "/fhir/people/Patient?_count=2").await;
    assert_eq!(ids_of(&pages), ["p1", "p2", "p3", "p4", "p5"], "{pages:#?}");
    // A page past the end is empty, with no `next`.
    let got = engine
        .get(format!(
            "{}/fhir/people/Patient?_count=2&_offset=7",
            engine.base
        ))
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(ids_of(&[got.json()]), Vec::<String>::new(), "{}", got.text);
    assert!(!got.text.contains("\"next\""), "{}", got.text);
}

// ------------------------------------------------------------------------------------------
// 2. The cache's largest answer
// ------------------------------------------------------------------------------------------

/// `GET` of `path`: the answer.
async fn get(engine: &EngineRouter, path: &str) -> Got {
    engine.get(format!("{}{path}", engine.base)).send().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_of_a_fifth_of_max_bytes_is_kept_and_a_larger_one_served_whole() {
    let source = FhirSource::start().await;
    let name = |c: char, len: usize| json!([{"family": c.to_string().repeat(len)}]);
    // About 1.5 MiB: a fifth of `maxBytes`; and about 3 MiB, past what one answer may take.
    source.put(json!({"resourceType": "Patient", "id": "big", "name": name('p', 3 << 19)}));
    source.put(json!({"resourceType": "Practitioner", "id": "huge", "name": name('q', 3 << 20)}));
    let yaml = fhir_source("s", &source.url)
        + r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: big }
spec:
  strategy: pull
  sources: [s]
  cache: { ttl: 1h, maxBytes: 8MiB }
  pull:
    resources:
      - type: Patient
        search: { params: { _count: { type: integer, default: 20, max: 100 } } }
      - type: Practitioner
        search: { params: { _count: { type: integer, default: 20, max: 100 } } }
"#;
    let (engine, _defs, _state) = open_engine(&yaml, CLIENT_TIMEOUT);
    let first = get(&engine, "/fhir/big/Patient").await;
    assert_eq!((first.status, first.header("x-cache")), (200, "miss"));
    assert!(first.text.len() > 3 << 19, "{}", first.text.len());
    // The one larger than a shard's share of `maxBytes` is served whole, each time from the
    // source, and takes nothing from the cache.
    for _ in 0..2 {
        let got = get(&engine, "/fhir/big/Practitioner").await;
        assert_eq!((got.status, got.header("x-cache")), (200, "miss"));
        assert!(got.text.len() > 3 << 20, "{}", got.text.len());
        assert!(got.text.ends_with('}'), "served whole");
    }
    // Before: quick_cache's default of four shards per core gave each 1 MiB of the 8 MiB on
    // two cores, and an answer larger than a shard's share was never kept.
    let again = get(&engine, "/fhir/big/Patient").await;
    assert_eq!(
        (again.status, again.header("x-cache")),
        (200, "hit"),
        "calls to the source: {}",
        source.calls()
    );
    assert_eq!(again.text, first.text);
    assert_eq!(source.calls(), 3, "{:?}", source.requests());
}

// ------------------------------------------------------------------------------------------
// 3. A refused transaction, its batch applied in part
// ------------------------------------------------------------------------------------------

/// A FHIR sink that refuses every transaction (422) and applies batches entry by entry,
/// answering the first `Patient/p2` with 503 (not applied); it answers `GET Type/id` with
/// what it holds. Gives its URL and what it holds by `Type/id`.
async fn picky_sink() -> (String, Arc<Mutex<BTreeMap<String, Value>>>) {
    #[derive(Clone, Default)]
    struct Sink {
        held: Arc<Mutex<BTreeMap<String, Value>>>,
        p2_tries: Arc<AtomicUsize>,
    }
    let sink = Sink::default();
    let held = sink.held.clone();
    let fhir = |status: u16, v: Value| {
        (
            StatusCode::from_u16(status).expect("a status"),
            [("content-type", "application/fhir+json")],
            v.to_string(),
        )
            .into_response()
    };
    let app = axum::Router::new()
        .fallback(any(
            move |State(s): State<Sink>,
                  method: axum::http::Method,
                  uri: axum::http::Uri,
                  body: axum::body::Bytes| async move {
                if method == axum::http::Method::GET {
                    let key = uri.path().trim_start_matches('/').to_owned();
                    return match s.held.lock().expect("held").get(&key) {
                        Some(r) => fhir(200, r.clone()),
                        None => fhir(404, json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]})),
                    };
                }
                let bundle: Value = serde_json::from_slice(&body).expect("a Bundle");
                if bundle["type"] == "transaction" {
                    return fhir(422, json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing", "diagnostics": "this server takes no transaction now"}]}));
                }
                let answers: Vec<Value> = bundle["entry"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        let url = e["request"]["url"].as_str().unwrap_or_default().to_owned();
                        if url == "Patient/p2" && s.p2_tries.fetch_add(1, Ordering::SeqCst) == 0 {
                            return json!({"response": {"status": "503 Service Unavailable"}});
                        }
                        s.held.lock().expect("held").insert(url, e["resource"].clone());
                        json!({"response": {"status": "201 Created"}})
                    })
                    .collect();
                fhir(200, json!({"resourceType": "Bundle", "type": "batch-response", "entry": answers}))
            },
        ))
        .with_state(sink);
    let (listener, url) = bind().await;
    spawn_app(listener, app);
    (url, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_push_whose_batch_was_applied_in_part_is_written_whole_on_its_next_try() {
    let (sink_url, held) = picky_sink().await;
    let yaml = format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata: {{ name: store }}
spec:
  fhir: {{ url: "{sink_url}", version: R4, mode: transaction, provenance: true, retries: 0, timeout: 2s }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: feed }}
spec:
  strategy: push
  sink: store
  push:
    auth: {{ bearer: {{ token: push-token-0123456789 }} }}
    mode: queued
    records: $[*]
  mapping:
    resourceType: Patient
    id: {{ $path: $.id }}
"#
    );
    let (engine, _defs, _state) = open_engine(&yaml, CLIENT_TIMEOUT);
    let got = engine
        .post(format!("{}/push/feed", engine.base))
        .header("content-type", "application/json")
        .header("authorization", "Bearer push-token-0123456789")
        .body(br#"[{"id":"p1"},{"id":"p2"}]"#.to_vec())
        .send()
        .await;
    assert_eq!(got.status, 202, "{}", got.text);
    let endpoint = engine.engine.pushes["feed"].clone();
    let drainer = Drainer::start(endpoint.clone());
    let e = endpoint.clone();
    wait_until(Duration::from_secs(10), "the queue empties", move || {
        e.depths().0 == 0
    })
    .await;
    drainer.stop().await;
    let held = held.lock().expect("held").clone();
    // Before: the first try's batch carried the delivery's Provenance, applied beside
    // `Patient/p1`; the second try found it and took the whole payload as written.
    assert!(
        held.contains_key("Patient/p2"),
        "Patient/p2 was never written: {:?}",
        held.keys().collect::<Vec<_>>()
    );
    assert!(held.contains_key("Patient/p1"), "{:?}", held.keys());
    assert_eq!(endpoint.depths().1, 0, "nothing dead-lettered");
}

// ------------------------------------------------------------------------------------------
// 4. A sync push past the request's time limit
// ------------------------------------------------------------------------------------------

/// A FHIR sink that applies each Bundle as it arrives and answers it after `late`; it
/// answers `GET` with 404. Gives its URL and the `url` of every entry it applied.
async fn slow_sink(late: Duration) -> (String, Arc<Mutex<Vec<String>>>) {
    let applied = Arc::new(Mutex::new(Vec::new()));
    let log = applied.clone();
    let app = axum::Router::new().fallback(any(
        move |method: axum::http::Method, body: axum::body::Bytes| {
            let log = log.clone();
            async move {
                let fhir = |status: StatusCode, v: Value| {
                    (status, [("content-type", "application/fhir+json")], v.to_string())
                        .into_response()
                };
                if method != axum::http::Method::POST {
                    return fhir(StatusCode::NOT_FOUND, json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]}));
                }
                let bundle: Value = serde_json::from_slice(&body).expect("a Bundle");
                let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
                log.lock().expect("applied").extend(
                    entries
                        .iter()
                        .filter_map(|e| e["request"]["url"].as_str().map(str::to_owned)),
                );
                tokio::time::sleep(late).await;
                let answers: Vec<Value> = entries
                    .iter()
                    .map(|_| json!({"response": {"status": "201 Created"}}))
                    .collect();
                fhir(StatusCode::OK, json!({"resourceType": "Bundle", "type": "transaction-response", "entry": answers}))
            }
        },
    ));
    let (listener, url) = bind().await;
    spawn_app(listener, app);
    (url, applied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_push_past_the_time_limit_is_written_once_and_its_resend_is_a_duplicate() {
    let (sink_url, applied) = slow_sink(Duration::from_millis(1500)).await;
    let yaml = format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata: {{ name: store }}
spec:
  fhir: {{ url: "{sink_url}", version: R4, mode: transaction, retries: 0, timeout: 5s }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: feed }}
spec:
  strategy: push
  sink: store
  push:
    auth: {{ bearer: {{ token: push-token-0123456789 }} }}
    mode: sync
  mapping:
    resourceType: Patient
    id: {{ $path: $.id }}
"#
    );
    let limits = engine::runtime::engine::Limits {
        timeout: Duration::from_millis(500),
        ..crate::engine_router::open_admin()
    };
    let (engine, _defs) = crate::engine_router::engine_with(&yaml, limits, CLIENT_TIMEOUT);
    let push = || {
        engine
            .post(format!("{}/push/feed", engine.base))
            .header("content-type", "application/json")
            .header("authorization", "Bearer push-token-0123456789")
            .body(br#"{"id":"s1"}"#.to_vec())
            .send()
    };
    let first = push().await;
    crate::local_http::assert_outcome(&first, 504, &["0.5 s"]);
    // The caller sends it again, as a 504 asks; while the first write runs, it is told so
    // (409). Before: the write was cut at the 504, its keys never remembered, and the resend
    // was written again.
    let mut answers = Vec::new();
    let resend = loop {
        let got = push().await;
        answers.push(got.status);
        if got.status != 409 || answers.len() >= 40 {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (resend.status, resend.json()["status"].clone()),
        (200, json!("duplicate")),
        "answers: {answers:?}, {}",
        resend.text
    );
    let applied = applied.lock().expect("applied").clone();
    assert_eq!(applied, ["Patient/s1"], "written once");
}

// ------------------------------------------------------------------------------------------
// 5. Runs asked for at once
// ------------------------------------------------------------------------------------------

/// A JSON API that answers `GET /records` with one record after `late`, counting its calls.
async fn slow_records(late: Duration) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let (listener, url) = bind().await;
    spawn_app(
        listener,
        axum::Router::new().route(
            "/records",
            axum::routing::get(move || {
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(late).await;
                    axum::Json(json!([{"id": "r1"}]))
                }
            }),
        ),
    );
    (url, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_asked_for_at_once_start_one_and_refuse_the_others() {
    let (url, calls) = slow_records(Duration::from_millis(150)).await;
    let yaml = format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: slow }}
spec:
  strategy: cron
  schedule: {{ cron: "0 2 * * *" }}
  source: {{ url: "{url}", timeout: 5s }}
  fetch:
    request: {{ path: /records }}
    records: $[*]
  mapping:
    resourceType: Patient
    id: {{ $path: $.id }}
"#
    );
    let (engine, _defs, _state) = open_engine(&yaml, CLIENT_TIMEOUT);
    let engine = Arc::new(engine);
    // Rounds of requests at once (a double click, two operators, a script's retry), each
    // round once the run before has ended.
    for round in 1..=10 {
        let asks: Vec<_> = (0..16)
            .map(|_| {
                let e = engine.clone();
                tokio::spawn(async move {
                    e.post(format!("{}/connectors/slow/run", e.base))
                        .send()
                        .await
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for a in asks {
            statuses.push(a.await.expect("an answer").status);
        }
        // Before: the turn was taken by the spawned run, after the answer: now and then two
        // requests were told "started" (202), and one of those runs was then skipped.
        let started = statuses.iter().filter(|s| **s == 202).count();
        let refused = statuses.iter().filter(|s| **s == 409).count();
        assert_eq!((started, refused), (1, 15), "round {round}: {statuses:?}");
        let e = engine.clone();
        wait_until(Duration::from_secs(10), "the run ends", move || {
            !e.engine.crons["slow"].is_running()
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), round, "one run per round");
    }
}
