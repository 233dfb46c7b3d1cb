//! Issue 15's operator features tried from outside like a hostile tester: the dead-letter
//! admin API given a parameter twice, and the dead-letter CLI pointed at servers that are not
//! the engine (an HTML page answering 200, a gateway's 404 page), at one that lies with
//! terminal control characters, and given a URL holding a password; the shared cache tier
//! holding an entry in its format with a status no engine stores (a corrupt or foreign value).

use std::time::Duration;

use axum::http::Method;
use axum::routing::{get, post};
use serde_json::json;

use crate::dead_letters::{PUSH_TOKEN, push_yaml};
use crate::engine_router::{EngineRouter, open_admin};
use crate::engine_under_test::{definitions, load};
use crate::local_http::{assert_outcome, bind, spawn_app};

const TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_parameter_given_twice_is_refused() {
    let state = tempfile::tempdir().expect("state");
    let defs = definitions(&push_yaml("$.id"));
    let served = EngineRouter::with_limits(load(defs.path()), state.path(), open_admin(), TIMEOUT);
    for i in 0..3 {
        let got = served
            .post("/push/inbox")
            .header("authorization", format!("Bearer {PUSH_TOKEN}"))
            .header("content-type", "application/json")
            .body(json!({"id": format!("bad id {i}")}).to_string())
            .send()
            .await;
        assert_eq!(got.status, 422, "{}", got.text);
    }
    let got = served.get("/connectors/inbox/dead-letters").send().await;
    assert_eq!(got.header("x-total-count"), "3", "{}", got.text);
    for q in [
        "limit=1&limit=1000",
        "after=00000000000000000000&after=00000000000000000001",
        "limit=2&after=00000000000000000000&limit=2",
    ] {
        let got = served
            .get(format!("/connectors/inbox/dead-letters?{q}"))
            .send()
            .await;
        assert_outcome(&got, 400, &["more than once"]);
    }
}

/// `engine dead-letters ARGS --url URL` with `token`: exit code, standard output and error.
async fn cli(url: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::time::timeout(
        TIMEOUT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"))
            .arg("dead-letters")
            .args(args)
            .args(["--url", url])
            .env("ENGINE_ADMIN_TOKEN", token)
            .env_remove("ENGINE_URL")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the command ends in time")
    .expect("the command runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_does_not_take_another_server_or_a_lying_one_for_the_engine() {
    const TOKEN: &str = "cli-token-secret-0123456789";
    const HTML: &str = "<!doctype html><title>Some other site</title>";
    let page = || async { ([("content-type", "text/html")], HTML) };
    let missing = || async {
        (
            axum::http::StatusCode::NOT_FOUND,
            [("content-type", "text/html")],
            "<h1>404 Not Found</h1>",
        )
    };
    let lying = || async {
        axum::Json(json!([{
            "id": "1-0",
            "received": "2026-01-01T00:00:00Z",
            "reason": "\u{1b}[2J\u{1b}[31mall is fine\u{7}",
            "bytes": 3
        }]))
    };
    let app = axum::Router::new()
        .route("/html/connectors/inbox/dead-letters", get(page))
        .route(
            "/html/connectors/inbox/dead-letters/{id}",
            get(page).delete(page),
        )
        .route(
            "/html/connectors/inbox/dead-letters/{id}/replay",
            post(page),
        )
        .route("/gateway/connectors/inbox/dead-letters", get(missing))
        .route("/lying/connectors/inbox/dead-letters", get(lying));
    let (listener, base) = bind().await;
    let _server = spawn_app(listener, app);

    // A 200 page of another site: not "0 dead letters listed", not "replayed", exit 2.
    for args in [
        &["inbox", "list"][..],
        &["inbox", "show", "1-0"],
        &["inbox", "replay", "1-0"],
        &["inbox", "delete", "1-0"],
    ] {
        let (code, out, err) = cli(&format!("{base}/html"), TOKEN, args).await;
        assert_eq!(code, 2, "{args:?}: {out} {err}");
        assert!(err.contains("is --url the engine?"), "{args:?}: {err}");
        assert!(
            !out.contains("listed") && !out.contains("replayed") && !out.contains("deleted"),
            "{args:?}: {out}"
        );
        assert!(!format!("{out}{err}").contains(TOKEN), "{out} {err}");
    }
    // A gateway's 404 page: a wrong URL (2), not "the engine has no such letter" (1).
    let (code, out, err) = cli(&format!("{base}/gateway"), TOKEN, &["inbox", "list"]).await;
    assert_eq!(code, 2, "{out} {err}");
    assert!(err.contains("404"), "{err}");

    // A server's text reaches the terminal without control characters.
    let (code, out, err) = cli(&format!("{base}/lying"), TOKEN, &["inbox", "list"]).await;
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("all is fine"), "{out}");
    assert!(
        !out.chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'),
        "{out:?}"
    );

    // A URL with a password that does not parse is not quoted back.
    let (code, out, err) = cli(
        "http://admin:hunter2-secret@127.0.0.1:99999/",
        TOKEN,
        &["inbox", "list"],
    )
    .await;
    assert_eq!(code, 2, "{out} {err}");
    assert!(
        !format!("{out}{err}").contains("hunter2-secret"),
        "{out} {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_cache_entry_with_a_status_never_stored_is_not_served() {
    use crate::fhir_standin::FhirSource;
    use crate::shared_cache::{Redis, definitions, engine, families, pull_and_push, search};

    let redis = Redis::start().await;
    let source = FhirSource::start().await;
    source.put(json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Ng"}]}));
    let root = tempfile::tempdir().expect("tempdir");
    let yaml = pull_and_push(&source.url, &root.path().join("out"));
    let mut engines = Vec::new();
    for i in 0..2 {
        let dir = root.path().join(format!("e{i}"));
        definitions(&dir.join("defs"), &yaml);
        engines.push(engine(&dir, &redis.url).await);
    }
    let http = crate::local_http::client(TIMEOUT);
    let (status, body) = search(&http, &engines[0].base, "?name=Ng").await;
    assert_eq!((status, families(&body)), (200, vec!["Ng".to_owned()]));
    assert_eq!(source.calls(), 1);

    // The one stored answer rewritten in the same format with a status no engine stores (a
    // corrupt or foreign entry), its expiry kept.
    let mut c = crate::push_stream_queue::redis_conn(&redis.url).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("fosps:v1:answer:mirror:*")
        .query_async(&mut c)
        .await
        .expect("KEYS");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let mut stored: Vec<u8> = redis::cmd("GET")
        .arg(&keys[0])
        .query_async(&mut c)
        .await
        .expect("GET");
    assert!(stored.len() > 11, "a stored answer");
    stored[1..3].copy_from_slice(&500u16.to_be_bytes());
    let () = redis::cmd("SET")
        .arg(&keys[0])
        .arg(&stored)
        .arg("KEEPTTL")
        .query_async(&mut c)
        .await
        .expect("SET");
    // Another engine, whose memory is cold, asks: the source answers, not the entry.
    let (status, body) = search(&http, &engines[1].base, "?name=Ng").await;
    assert_eq!(
        (status, families(&body)),
        (200, vec!["Ng".to_owned()]),
        "{body}"
    );
    assert_eq!(source.calls(), 2, "the source was asked again");
    let text = http
        .get(format!("{}/metrics", engines[1].base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("a text");
    let unreadable = text
        .lines()
        .find(|l| {
            l.starts_with("engine_shared_cache_operations_total")
                && l.contains("connector=\"mirror\"")
                && l.contains("outcome=\"unreadable\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(unreadable, Some(1.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_dead_letter_listing_after_an_id_it_cannot_hold_is_refused_not_restarted() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use engine::runtime::engine::Limits;
    use engine::runtime::push::StreamBackend;

    use crate::engine_under_test::{Drainer, patient_payload};
    use crate::fhir_standin::{fhir_json, operation_outcome};
    use crate::push_stream_queue::{DEAD, feed, fhir_sink, redis_conn, until, xlen};
    use crate::shared_cache::Redis;

    let redis = Redis::start().await;
    // A sink that refuses every write for good: every push becomes a dead letter.
    let (listener, sink) = bind().await;
    let refusals = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/",
        post({
            let refusals = refusals.clone();
            move || {
                refusals.fetch_add(1, Ordering::SeqCst);
                async { fhir_json(422, &operation_outcome("invalid", "no such thing")) }
            }
        }),
    );
    let _sink = spawn_app(listener, app);
    let defs = definitions(&feed(&fhir_sink(&sink), ""));
    let state = tempfile::tempdir().expect("state");
    let limits = Limits {
        push_queue: Some(
            StreamBackend::new(&redis.url, 100, Duration::from_secs(2)).expect("backend"),
        ),
        ..open_admin()
    };
    let served = EngineRouter::with_limits(load(defs.path()), state.path(), limits, TIMEOUT);
    let _drainer = Drainer::start(served.engine.pushes["feed"].clone());
    for id in ["d1", "d2", "d3"] {
        let got = served
            .post("/push/feed")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {PUSH_TOKEN}"))
            .body(patient_payload(id))
            .send()
            .await;
        assert_eq!(got.status, 202, "{}", got.text);
    }
    let conn = redis_conn(&redis.url).await;
    until(TIMEOUT, "three dead letters", || {
        let mut c = conn.clone();
        async move { xlen(&mut c, DEAD).await == 3 }
    })
    .await;
    let got = served.get("/connectors/feed/dead-letters").send().await;
    assert_eq!(got.status, 200, "{}", got.text);
    let ids: Vec<String> = got
        .json()
        .as_array()
        .expect("a page")
        .iter()
        .map(|l| l["id"].as_str().expect("an id").to_owned())
        .collect();
    assert_eq!(ids.len(), 3);

    // After a letter deleted meanwhile: the ones after it, not the first page again.
    let got = served
        .delete(format!("/connectors/feed/dead-letters/{}", ids[1]))
        .send()
        .await;
    assert_eq!(got.status, 204, "{}", got.text);
    let got = served
        .get(format!("/connectors/feed/dead-letters?after={}", ids[1]))
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let after: Vec<String> = got
        .json()
        .as_array()
        .expect("a page")
        .iter()
        .filter_map(|l| l["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(after, [ids[2].clone()], "{}", got.text);

    // A cursor this queue could never have given (a typo, another store's id): refused,
    // rather than silently answered with the first page (a paging client would loop).
    for bad in [
        "zzzz",
        "00000000000000000001",
        "1-x",
        "99999999999999999999-0",
    ] {
        let got = served
            .get(format!("/connectors/feed/dead-letters?after={bad}"))
            .send()
            .await;
        assert_outcome(&got, 400, &["not a dead-letter id"]);
    }
    // An id past what Redis takes: no such letter, not a 500.
    for method in [Method::GET, Method::DELETE] {
        let got = served
            .raw(
                method,
                "/connectors/feed/dead-letters/99999999999999999999-0",
            )
            .send()
            .await;
        assert_outcome(&got, 404, &["no dead letter"]);
    }
    let got = served
        .post("/connectors/feed/dead-letters/99999999999999999999-0/replay")
        .send()
        .await;
    assert_outcome(&got, 404, &["no dead letter"]);
}
