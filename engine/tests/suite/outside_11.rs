//! Issue 11's behaviours tried from outside as a hostile tester, each test a case its own
//! tests did not have and that failed before its fix: a source or a FHIR sink that echoes
//! the credentials it was sent in its error message (the key reached the caller's
//! `OperationOutcome`), a
//! `200` with an empty body (an empty searchset, cached), and a next page that cannot be
//! followed (a link to another origin, or back to the same page) read as the last page, so
//! that a cron run wrote a partial read as whole; and a FHIR sink that applies a
//! transaction and answers too late, which the engine sent again (written twice, under the
//! conditions of the exactly-once promise); and cron cursors in odd formats (a date alone or
//! a date-time without its zone far in the future, a word among dates) that carried the
//! watermark where no later record can pass it; and a forwarded host longer than any host
//! name, or with port 0, taken into every link of the answer. Real stand-ins on 127.0.0.1 (`Scripted`, a
//! source whose answer the test sets and which records what reached it), the engine's router
//! in-process (`engine_router`) and a cron runner (`engine_under_test`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use engine::runtime::engine::Limits;

use crate::engine_router::{EngineRouter, engine_with};
use crate::engine_under_test::{definitions, load, run_with_deadline, runner};
use crate::hostile::{API_KEY, TENANT, source};
use crate::local_http::{Got, assert_outcome, bind, spawn_app};

/// Longest any request of these tests may take before the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The engine's request timeout in these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a cron run of these tests may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(15);

/// A cached pull connector whose search and read call `/x` of `source`.
fn connector(name: &str, source: &str) -> String {
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
            path: /x
            query: {{ q: "{{{{params.name}}}}" }}
          records: $.results[*]
        read:
          request:
            path: /x
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

fn engine_of(yaml: &str) -> (EngineRouter, tempfile::TempDir) {
    let limits = Limits {
        timeout: REQUEST_TIMEOUT,
        ..Limits::default()
    };
    engine_with(yaml, limits, CLIENT_TIMEOUT)
}

/// The answer a `Scripted` source gives: status, headers, and a body in which `{KEY}` and
/// `{TENANT}` stand for the values of the request's `X-Api-Key` and `X-Tenant` (a source
/// that echoes what it was sent).
type Script = (u16, Vec<(String, String)>, String);

/// A source answering every request as its script says, recording each request's target.
#[derive(Clone, Default)]
struct Scripted {
    script: Arc<Mutex<Script>>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    async fn start() -> (Scripted, String) {
        async fn serve(State(s): State<Scripted>, req: Request) -> Response {
            s.seen.lock().expect("seen").push(req.uri().to_string());
            let (status, headers, body) = s.script.lock().expect("script").clone();
            let echo = |name: &str| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            let body = body
                .replace("{KEY}", &echo("x-api-key"))
                .replace("{TENANT}", &echo("x-tenant"));
            let mut resp = (StatusCode::from_u16(status).expect("a status"), body).into_response();
            for (k, v) in headers {
                resp.headers_mut().insert(
                    axum::http::HeaderName::from_bytes(k.as_bytes()).expect("a header name"),
                    axum::http::HeaderValue::from_str(&v).expect("a header value"),
                );
            }
            resp
        }
        let s = Scripted::default();
        s.answer(200, "application/json", "{}");
        let (listener, url) = bind().await;
        spawn_app(
            listener,
            axum::Router::new()
                .fallback(any(serve))
                .with_state(s.clone()),
        );
        (s, url)
    }

    fn answer(&self, status: u16, content_type: &str, body: &str) {
        *self.script.lock().expect("script") = (
            status,
            vec![("content-type".to_owned(), content_type.to_owned())],
            body.to_owned(),
        );
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("seen").clone()
    }
}

/// The whole answer must not hold the source's credentials, whole or in part.
fn assert_no_secret(got: &Got) {
    for secret in [API_KEY, TENANT, &API_KEY[..8], &TENANT[..8]] {
        assert!(!got.text.contains(secret), "{secret:?} shown: {}", got.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_echoing_its_credentials_never_hands_them_to_the_caller() {
    let (src, url) = Scripted::start().await;
    let yaml = [
        source("s", &url, "  statuses: { errorWhen: \"$.error\" }"),
        connector("c", "s"),
    ]
    .concat();
    let (engine, _defs) = engine_of(&yaml);
    // The message is cut at 200 characters: this one is cut inside the key.
    let padded = format!(r#"{{"message":"{} {{KEY}}"}}"#, "x".repeat(190));
    let cases: [(u16, &str, &str, &str); 5] = [
        (
            401,
            "application/json",
            r#"{"message":"invalid api key {KEY} for tenant {TENANT}"}"#,
            "invalid api key",
        ),
        (
            500,
            "text/plain",
            "upstream said: key={KEY} tenant={TENANT}",
            "upstream said",
        ),
        (
            200,
            "application/json",
            r#"{"error":"bad key {KEY}","results":[]}"#,
            "bad key",
        ),
        (
            400,
            "application/fhir+json",
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"security","diagnostics":"key {KEY} refused"}]}"#,
            "refused",
        ),
        (403, "application/json", &padded, "xxxx"),
    ];
    for (i, (status, content_type, body, words)) in cases.into_iter().enumerate() {
        src.answer(status, content_type, body);
        let got = engine.get(format!("/fhir/c/Basic?name=n{i}")).send().await;
        assert_outcome(&got, 502, &["source `s`", words, "[redacted]"]);
        assert_no_secret(&got);
    }
    assert_eq!(src.seen().len(), 5, "each case reached the source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_with_an_empty_body_is_a_failure_never_an_empty_cached_searchset() {
    let (src, url) = Scripted::start().await;
    let yaml = [source("s", &url, ""), connector("c", "s")].concat();
    let (engine, _defs) = engine_of(&yaml);
    src.answer(200, "application/json", "");
    for _ in 0..2 {
        let got = engine.get("/fhir/c/Basic?name=a").send().await;
        assert_outcome(&got, 502, &["source `s`", "200 OK with an empty body"]);
    }
    let read = engine.get("/fhir/c/Basic/a").send().await;
    assert_outcome(&read, 502, &["empty body"]);
    // The source heals: its answer is served once the failure's one second of sharing has
    // passed (the README's cache rules), since no empty answer was kept for the TTL.
    src.answer(
        200,
        "application/json",
        r#"{"results":[{"id":"a","name":"x"}]}"#,
    );
    let healed = tokio::time::Instant::now() + Duration::from_secs(5);
    let got = loop {
        let got = engine.get("/fhir/c/Basic?name=a").send().await;
        if got.status == 200 || tokio::time::Instant::now() > healed {
            break got;
        }
        // The pace of the polling, not a wait for a condition.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(
        got.json()["entry"][0]["resource"]["id"],
        "a",
        "{}",
        got.text
    );
    // `204 No Content` says "nothing" on purpose: an empty searchset.
    src.answer(204, "application/json", "");
    let got = engine.get("/fhir/c/Basic?name=b").send().await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json()["total"], 0, "{}", got.text);
}

/// A cron fetch of `url`'s `/records`, paged by the answer's `next` link.
fn paged_fetch(url: &str) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: paged }}
spec:
  strategy: cron
  schedule: {{ cron: "0 2 * * *" }}
  source: {{ url: "{url}", retries: 0, timeout: 2s, pagination: {{ nextUrl: $.next }} }}
  fetch:
    request: {{ path: /records }}
    records: $.records[*]
  mapping:
    resourceType: Patient
    id: {{ $path: $.id }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_page_elsewhere_or_the_same_page_again_fails_the_run_and_writes_nothing() {
    let (elsewhere, other_url) = Scripted::start().await;
    let (src, url) = Scripted::start().await;
    let defs = definitions(&paged_fetch(&url));
    let model = load(defs.path());
    for (next, why) in [
        (format!("{other_url}/records?page=2"), "another origin"),
        (format!("{url}/records"), "pagination loop"),
    ] {
        src.answer(
            200,
            "application/json",
            &format!(r#"{{"records":[{{"id":"p1"}}],"next":"{next}"}}"#),
        );
        let before = src.seen().len();
        let state = tempfile::tempdir().expect("state");
        let report = run_with_deadline(&runner(&model, "paged", state.path()), RUN_TIMEOUT).await;
        assert!(
            report.failures.iter().any(|f| f.message.contains(why)),
            "the run names why it stopped ({why}): {:?}",
            report.failures
        );
        assert_eq!(report.resources_written, 0, "a partial read is not written");
        assert!(
            src.seen().len() - before <= 2,
            "a loop is seen at once, not after `maxPages` calls: {}",
            src.seen().len() - before
        );
    }
    assert!(
        elsewhere.seen().is_empty(),
        "nothing reached the other origin"
    );
}

/// A FHIR sink that applies every transaction at once, but answers the first one only after
/// `late` (past the sink's timeout); it answers `GET Type/id` with what it holds. Gives its
/// URL and the `method url` of every entry it applied, in order.
async fn late_sink(late: Duration) -> (String, Arc<Mutex<Vec<String>>>) {
    #[derive(Clone, Default)]
    struct Sink {
        applied: Arc<Mutex<Vec<String>>>,
        held: Arc<Mutex<std::collections::HashMap<String, serde_json::Value>>>,
        posts: Arc<std::sync::atomic::AtomicUsize>,
    }
    let sink = Sink::default();
    let applied = sink.applied.clone();
    let app = axum::Router::new()
        .fallback(any(
            move |State(s): State<Sink>, method: axum::http::Method, uri: axum::http::Uri, body: axum::body::Bytes| async move {
                let fhir = |status: u16, v: serde_json::Value| {
                    (
                        StatusCode::from_u16(status).expect("a status"),
                        [("content-type", "application/fhir+json")],
                        v.to_string(),
                    )
                        .into_response()
                };
                if method == axum::http::Method::GET {
                    let key = uri.path().trim_start_matches('/').to_owned();
                    return match s.held.lock().expect("held").get(&key) {
                        Some(r) => fhir(200, r.clone()),
                        None => fhir(404, serde_json::json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]})),
                    };
                }
                let bundle: serde_json::Value = serde_json::from_slice(&body).expect("a Bundle");
                let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
                for e in &entries {
                    let url = e["request"]["url"].as_str().unwrap_or_default().to_owned();
                    s.applied.lock().expect("applied").push(format!("{} {url}", e["request"]["method"].as_str().unwrap_or_default()));
                    s.held.lock().expect("held").insert(url, e["resource"].clone());
                }
                if s.posts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    // Applied, then answered too late: the answer is lost to the engine.
                    tokio::time::sleep(late).await;
                }
                let answers: Vec<serde_json::Value> = entries.iter().map(|_| serde_json::json!({"response": {"status": "201 Created"}})).collect();
                fhir(200, serde_json::json!({"resourceType": "Bundle", "type": "transaction-response", "entry": answers}))
            },
        ))
        .with_state(sink);
    let (listener, url) = bind().await;
    spawn_app(listener, app);
    (url, applied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_applied_but_answered_too_late_is_not_written_again() {
    let (sink_url, applied) = late_sink(Duration::from_millis(1500)).await;
    let yaml = format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata: {{ name: store }}
spec:
  fhir: {{ url: "{sink_url}", version: R4, mode: transaction, provenance: true, retries: 2, timeout: 1s }}
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
    let (engine, _defs) = engine_of(&yaml);
    let got = engine
        .post(format!("{}/push/feed", engine.base))
        .header("content-type", "application/json")
        .header("authorization", "Bearer push-token-0123456789")
        .body(br#"{"id":"p1"}"#.to_vec())
        .send()
        .await;
    assert!(
        (200..300).contains(&got.status),
        "{} {}",
        got.status,
        got.text
    );
    let applied = applied.lock().expect("applied").clone();
    let patients = applied.iter().filter(|e| *e == "PUT Patient/p1").count();
    assert_eq!(patients, 1, "the Patient was written once: {applied:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_in_odd_formats_never_carry_the_watermark_away() {
    let (src, url) = Scripted::start().await;
    let yaml = format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: odd }}
spec:
  strategy: cron
  schedule: {{ cron: "0 2 * * *" }}
  source: {{ url: "{url}", retries: 0, timeout: 2s }}
  fetch:
    request: {{ path: /records }}
    records: $[*]
    incremental: {{ cursor: $.u, param: since }}
  mapping:
    resourceType: Patient
    id: {{ $path: $.id }}
"#
    );
    let defs = definitions(&yaml);
    let model = load(defs.path());
    for (odd, why) in [
        ("yesterday", "not a date like the others"),
        ("2999-12-31", "later than now"),
        ("2999-01-01T00:00:00", "later than now"),
    ] {
        let records = serde_json::json!([
            {"id": "a", "u": "2025-01-01T00:00:00Z"},
            {"id": "b", "u": odd},
            {"id": "c", "u": "2025-03-01T10:00:00+01:00"},
        ]);
        src.answer(200, "application/json", &records.to_string());
        let state = tempfile::tempdir().expect("state");
        let r = runner(&model, "odd", state.path());
        let report = run_with_deadline(&r, RUN_TIMEOUT).await;
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert_eq!(report.resources_written, 3, "every record is written");
        let marks = crate::engine_under_test::watermarks(state.path(), "odd");
        assert_eq!(
            marks.get("records").map(String::as_str),
            Some("2025-03-01T10:00:00+01:00"),
            "the latest real date, not `{odd}`"
        );
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains(odd) && w.contains(why)),
            "`{odd}` is reported: {:?}",
            report.warnings
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_host_longer_than_a_host_name_or_on_port_0_is_not_taken_into_links() {
    let (src, url) = Scripted::start().await;
    src.answer(
        200,
        "application/json",
        r#"{"results":[{"id":"a","name":"x"}]}"#,
    );
    let yaml = [source("s", &url, ""), connector("c", "s")].concat();
    let (engine, _defs) = engine_of(&yaml);
    let long = format!("{}.test", "a".repeat(10_000));
    for (i, host) in [long.as_str(), "proxy.test:0"].into_iter().enumerate() {
        let got = engine
            .get(format!("/fhir/c/Basic?name=h{i}"))
            .header("x-forwarded-host", host)
            .send()
            .await;
        assert_eq!(got.status, 200, "{}", got.text);
        let link = got.json()["link"][0]["url"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            link.starts_with(&format!("{}/fhir/c/Basic", engine.base)),
            "the links keep the Host, not `{}`: {}",
            &host[..host.len().min(20)],
            &link[..link.len().min(80)]
        );
    }
    // A plain forwarded host and port still make the links.
    let got = engine
        .get("/fhir/c/Basic?name=h2")
        .header("x-forwarded-host", "proxy.test:8443")
        .send()
        .await;
    assert!(
        got.json()["link"][0]["url"]
            .as_str()
            .is_some_and(|l| l.starts_with("http://proxy.test:8443/fhir/c/Basic")),
        "{}",
        got.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_echoing_its_token_never_hands_it_to_a_push_caller() {
    const SINK_TOKEN: &str = "sink-t0ken-8830";
    let (sink, sink_url) = Scripted::start().await;
    sink.answer(
        403,
        "application/json",
        &format!(r#"{{"message":"token {SINK_TOKEN} may not write"}}"#),
    );
    let yaml = format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata: {{ name: store }}
spec:
  fhir: {{ url: "{sink_url}", version: R4, retries: 0, timeout: 2s, auth: {{ bearer: {{ token: {SINK_TOKEN} }} }} }}
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
    let (engine, _defs) = engine_of(&yaml);
    let got = engine
        .post(format!("{}/push/feed", engine.base))
        .header("content-type", "application/json")
        .header("authorization", "Bearer push-token-0123456789")
        .body(br#"{"id":"p1"}"#.to_vec())
        .send()
        .await;
    assert!(got.status >= 400, "{} {}", got.status, got.text);
    assert!(got.text.contains("may not write"), "{}", got.text);
    assert!(!got.text.contains(&SINK_TOKEN[..10]), "{}", got.text);
    assert!(!sink.seen().is_empty(), "the write reached the sink");
}
