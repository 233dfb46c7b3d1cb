//! Queued pushes on Redis Streams (`--push-queue`): a real `redis-server` (Debian's, started
//! by `shared_cache::Redis` with AOF and `appendfsync always` in its own temp dir, a password
//! and no eviction) shared by three `engine serve` processes writing into Helios FHIR Server:
//! 1,000 queued pushes spread across them, one engine killed with `kill -9` mid-drain and its
//! state directory deleted, the others take over its entries: every Patient once at Helios,
//! each at version 1. Redis killed and restarted mid-accept: every 202 written (NDJSON sink,
//! one engine). Hostile: a body past the cap never reaches Redis, a slow Redis is answered 503
//! in bounded time and the resend is a duplicate, a full queue is a 503, the password is never
//! logged; dead letters kept in Redis, listed, sent back and deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use engine::runtime::engine::Limits;
use engine::runtime::push::StreamBackend;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::process::Command;
use tokio::time::Instant;

use crate::engine_router::{EngineRouter, open_admin};
use crate::engine_under_test::{Drainer, definitions, load, patient_payload};
use crate::fhir_standin::{fhir_json, operation_outcome};
use crate::helios_client::read_all;
use crate::helios_server::{Db, Helios};
use crate::local_http::{bind, client, dead_url, spawn_app};
use crate::serve_process::ServeProcess;
use crate::shared_cache::Redis;

/// Longest the test waits for a process to start, or for a condition.
const WAIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "push-token-0123456789";
/// The Redis password: it must appear in no log line.
const PASSWORD: &str = "queue-secret-Zq83x";
/// The stream of connector `feed`.
const STREAM: &str = "fosps:v1:push:feed:queue";
pub(crate) const DEAD: &str = "fosps:v1:push:feed:dead";

/// A sink document `store` and a queued push connector `feed` writing Patients into it.
pub(crate) fn feed(sink: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata: {{ name: store }}
spec:
  {sink}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: feed }}
spec:
  strategy: push
  sink: store
  push:
    auth: {{ bearer: {{ token: "{TOKEN}" }} }}
    mode: queued
{extra}  mapping:
    resourceType: Patient
    id: {{ $path: $.id }}
    name: [ {{ family: {{ $path: "$.name[0].family" }} }} ]
"#
    )
}

pub(crate) fn fhir_sink(url: &str) -> String {
    format!(
        "fhir: {{ url: \"{url}\", version: R4, batchSize: 100, mode: transaction, retries: 0, timeout: 10s, provenance: true }}"
    )
}

/// `engine serve` of `defs` with its state in `state`, its pushes queued on `redis`.
async fn engine(defs: &Path, state: &Path, redis: &str, extra: &[&str]) -> ServeProcess {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.arg("serve")
        .arg(defs)
        .arg("--state-dir")
        .arg(state)
        .args(["--push-queue-claim-after", "2s"])
        .args(extra)
        .env("ENGINE_PUSH_QUEUE", redis)
        .env_remove("ENGINE_SHARED_CACHE")
        .env_remove("ENGINE_STATE_DIR")
        .env_remove("ENGINE_SINK_DIR");
    ServeProcess::start(cmd, WAIT).await
}

/// A connection of the test's own to `redis` (calls wait for as long as Redis sleeps).
pub(crate) async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(WAIT));
    redis::Client::open(url)
        .expect("a Redis URL")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("Redis answers")
}

pub(crate) async fn xlen(c: &mut redis::aio::MultiplexedConnection, key: &str) -> usize {
    redis::cmd("XLEN")
        .arg(key)
        .query_async(c)
        .await
        .expect("XLEN")
}

/// Polls `check` every 50 ms until it holds; fails the test after `deadline`.
pub(crate) async fn until<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    while !check().await {
        assert!(Instant::now() < end, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A push of Patient `id` to `base`: the status, the `Retry-After` header and the body.
async fn push(http: &reqwest::Client, base: &str, id: &str) -> (u16, Option<String>, Value) {
    push_body(http, base, patient_payload(id)).await
}

async fn push_body(
    http: &reqwest::Client,
    base: &str,
    body: Vec<u8>,
) -> (u16, Option<String>, Value) {
    match http
        .post(format!("{base}/push/feed"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(body)
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (status, retry, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => panic!("the engine answers every push: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_engines_lose_one_to_kill_9_and_write_1000_queued_pushes_once() {
    let redis = Redis::start_durable(PASSWORD).await;
    let helios = Helios::start(Db::Memory).await;
    let root = tempfile::tempdir().expect("tempdir");
    let yaml = feed(&fhir_sink(&helios.url), "");
    let mut engines = Vec::new();
    for i in 0..3 {
        let defs = root.path().join(format!("e{i}/defs"));
        std::fs::create_dir_all(&defs).expect("mkdir");
        std::fs::write(defs.join("defs.yaml"), &yaml).expect("write");
        let state = root.path().join(format!("e{i}/state"));
        engines.push(engine(&defs, &state, &redis.url, &[]).await);
    }
    let bases: Vec<String> = engines.iter().map(|e| e.base.clone()).collect();
    let http = client(WAIT);
    let answers: Vec<(usize, u16, Value)> = futures_util::stream::iter(0..1000usize)
        .map(|i| {
            let (http, base) = (http.clone(), bases[i % 3].clone());
            async move {
                let (status, _, body) = push(&http, &base, &format!("q{i}")).await;
                (i, status, body)
            }
        })
        .buffer_unordered(24)
        .collect()
        .await;
    for (i, status, body) in &answers {
        assert_eq!(*status, 202, "push {i}: {body}");
    }
    let mut conn = redis_conn(&redis.url).await;
    // Mid-drain: some written, most waiting.
    until(WAIT, "the engines start draining", || {
        let mut c = conn.clone();
        async move { xlen(&mut c, STREAM).await <= 900 }
    })
    .await;
    let mut dead = engines.remove(0);
    dead.child.start_kill().expect("kill -9");
    dead.child.wait().await.expect("the engine is gone");
    std::fs::remove_dir_all(root.path().join("e0/state")).expect("its state directory deleted");
    let waiting = xlen(&mut conn, STREAM).await;
    assert!(waiting > 0, "the kill came after the drain had ended");
    let end = Instant::now() + Duration::from_secs(180);
    loop {
        let left = xlen(&mut conn, STREAM).await;
        if left == 0 {
            break;
        }
        if Instant::now() > end {
            let mut logs = String::new();
            for mut e in engines {
                e.child.start_kill().expect("stop");
                logs += &e.exit(WAIT).await.1;
            }
            panic!("the two others did not drain the queue ({left} left); their logs:\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pending_count: usize = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg("drainers")
        .query_async::<(usize, redis::Value, redis::Value, redis::Value)>(&mut conn)
        .await
        .expect("XPENDING")
        .0;
    assert_eq!(pending_count, 0, "every entry acknowledged");
    // What Helios has: each Patient once, at its first version (no second write of it).
    let all = read_all(&client(WAIT), &helios, &["Patient", "Provenance"], 50).await;
    let patients: BTreeMap<&String, &Value> = all
        .iter()
        .filter(|(k, _)| k.starts_with("Patient/"))
        .collect();
    let wanted: BTreeSet<String> = (0..1000).map(|i| format!("Patient/q{i}")).collect();
    let got: BTreeSet<String> = patients.keys().map(|k| (*k).clone()).collect();
    assert_eq!(got.len(), 1000, "0 lost: {:?}", wanted.difference(&got));
    assert_eq!(got, wanted);
    let rewritten: Vec<(&String, &Value)> = patients
        .iter()
        .filter(|(_, p)| p["meta"]["versionId"] != "1")
        .map(|(k, p)| (*k, &p["meta"]["versionId"]))
        .collect();
    assert!(rewritten.is_empty(), "0 duplicated: {rewritten:?}");
    let provenances = all.keys().filter(|k| k.starts_with("Provenance/")).count();
    assert_eq!(provenances, 1000, "one Provenance per delivery");
    let mut taken_over = 0;
    for mut e in engines {
        e.child.start_kill().expect("stop");
        let (_, log) = e.exit(WAIT).await;
        assert!(
            !log.contains(PASSWORD),
            "the Redis password is never logged"
        );
        taken_over += log.matches("taken over").count();
    }
    eprintln!(
        "entries waiting at the kill: {waiting}; entries of the killed engine taken over: {taken_over}"
    );
}

/// The Patients of an NDJSON sink directory, with how many lines each has.
fn ndjson_patients(dir: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for f in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(f.path()).unwrap_or_default();
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line)
                && v["resourceType"] == "Patient"
                && let Some(id) = v["id"].as_str()
            {
                *out.entry(id.to_owned()).or_default() += 1;
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_mid_accept_keeps_every_202() {
    let mut redis = Redis::start_durable(PASSWORD).await;
    let root = tempfile::tempdir().expect("tempdir");
    let out = root.path().join("out");
    let yaml = feed(&format!("ndjson: {{ dir: \"{}\" }}", out.display()), "");
    let defs = definitions(&yaml);
    let e = engine(defs.path(), &root.path().join("state"), &redis.url, &[]).await;
    let http = client(WAIT);
    let accepted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (http, base) = (http.clone(), e.base.clone());
        let (accepted, refused) = (accepted.clone(), refused.clone());
        tokio::spawn(async move {
            futures_util::stream::iter(0..400usize)
                .map(|i| {
                    let (http, base) = (http.clone(), base.clone());
                    let (accepted, refused) = (accepted.clone(), refused.clone());
                    async move {
                        let (status, retry, body) = push(&http, &base, &format!("r{i}")).await;
                        match status {
                            202 => {
                                accepted.fetch_add(1, Ordering::SeqCst);
                            }
                            503 => {
                                assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
                                assert!(retry.is_some(), "a 503 says when to come back");
                                refused.fetch_add(1, Ordering::SeqCst);
                                // Not too fast, so that the outage spans many pushes.
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            other => panic!("push r{i}: {other} {body}"),
                        }
                        (i, status)
                    }
                })
                .buffer_unordered(8)
                .collect::<Vec<_>>()
                .await
        })
    };
    until(WAIT, "100 pushes accepted", || {
        let n = accepted.load(Ordering::SeqCst);
        async move { n >= 100 }
    })
    .await;
    redis.kill().await;
    until(WAIT, "pushes refused while Redis is away", || {
        let n = refused.load(Ordering::SeqCst);
        async move { n >= 10 }
    })
    .await;
    redis.restart().await;
    let answers = tokio::time::timeout(Duration::from_secs(120), sender)
        .await
        .expect("every push answered")
        .expect("the sender");
    let first_202: BTreeSet<String> = answers
        .iter()
        .filter(|(_, s)| *s == 202)
        .map(|(i, _)| format!("r{i}"))
        .collect();
    // The refused are sent again: queued now, or duplicates of an XADD that landed anyway.
    for (i, status) in &answers {
        if *status != 202 {
            let id = format!("r{i}");
            let mut again = push(&http, &e.base, &id).await;
            let end = Instant::now() + WAIT;
            while again.0 == 503 && Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(100)).await;
                again = push(&http, &e.base, &id).await;
            }
            assert!(matches!(again.0, 200 | 202), "{id}: {again:?}");
        }
    }
    until(Duration::from_secs(120), "all 400 written", || {
        let n = ndjson_patients(&out).len();
        async move { n >= 400 }
    })
    .await;
    let written = ndjson_patients(&out);
    let missing: Vec<&String> = first_202
        .iter()
        .filter(|id| !written.contains_key(*id))
        .collect();
    assert!(missing.is_empty(), "a 202 not kept: {missing:?}");
    let twice: Vec<(&String, &usize)> = written.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "written twice: {twice:?}");
    assert_eq!(written.len(), 400);
    eprintln!(
        "accepted before and after the restart: {}; refused while Redis was away: {}",
        first_202.len(),
        refused.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_huge_payloads_slow_redis_and_a_full_queue_are_refused() {
    let redis = Redis::start_durable(PASSWORD).await;
    let root = tempfile::tempdir().expect("tempdir");
    // The sink is away: nothing is drained, so entries stay queued.
    let away = dead_url();
    let yaml = feed(&fhir_sink(&away), "    maxBody: 64KiB\n");
    let defs = definitions(&yaml);
    let e = engine(
        defs.path(),
        &root.path().join("state"),
        &redis.url,
        &["--push-queue-limit", "3"],
    )
    .await;
    let http = client(WAIT);
    let mut conn = redis_conn(&redis.url).await;
    // A body past the cap is refused before Redis sees it.
    let huge = serde_json::to_vec(&json!({"id": "big", "name": [{"family": "x".repeat(1 << 20)}]}))
        .expect("JSON");
    let (status, _, body) = push_body(&http, &e.base, huge).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(xlen(&mut conn, STREAM).await, 0, "nothing queued");
    // Redis slow: answered 503 in bounded time, before Redis wakes up.
    let mut sleeper = redis_conn(&redis.url).await;
    let sleep = tokio::spawn(async move {
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(6)
            .query_async::<()>(&mut sleeper)
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let (status, retry, body) = push(&http, &e.base, "s1").await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert!(retry.is_some());
    assert!(
        took < Duration::from_secs(5),
        "answered before Redis woke up: {took:?}"
    );
    sleep
        .await
        .expect("DEBUG SLEEP")
        .expect("DEBUG SLEEP answered");
    // Its resend is taken once: the XADD sent to the sleeping Redis may have landed.
    let (status, _, body) = push(&http, &e.base, "s1").await;
    assert!(matches!(status, 200 | 202), "{status} {body}");
    let (status, _, body) = push(&http, &e.base, "s1").await;
    assert_eq!(status, 200, "a duplicate: {body}");
    assert_eq!(xlen(&mut conn, STREAM).await, 1, "s1 queued once");
    // The bound: 3 entries, then 503.
    for id in ["s2", "s3"] {
        let (status, _, body) = push(&http, &e.base, id).await;
        assert_eq!(status, 202, "{id}: {body}");
    }
    let (status, retry, body) = push(&http, &e.base, "s4").await;
    assert_eq!(status, 503, "full: {body}");
    assert!(retry.is_some());
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .is_some_and(|d| d.contains("full")),
        "{body}"
    );
    assert_eq!(xlen(&mut conn, STREAM).await, 3);
    let mut e = e;
    e.child.start_kill().expect("stop");
    let (_, log) = e.exit(WAIT).await;
    assert!(!log.contains(PASSWORD), "the password is never logged");
    assert!(
        log.contains("127.0.0.1"),
        "logs name the server by HOST:PORT"
    );
    assert!(log.contains("AOF fsync always"), "checked at start: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_may_lose_acknowledged_pushes_is_named_at_start() {
    // No AOF: what it acknowledges is lost with it.
    let redis = Redis::start().await;
    let root = tempfile::tempdir().expect("tempdir");
    let out = root.path().join("out");
    let defs = definitions(&feed(
        &format!("ndjson: {{ dir: \"{}\" }}", out.display()),
        "",
    ));
    let mut e = engine(defs.path(), &root.path().join("state"), &redis.url, &[]).await;
    let (status, _, body) = push(&client(WAIT), &e.base, "w1").await;
    assert_eq!(status, 202, "{body}");
    e.child.start_kill().expect("stop");
    let (_, log) = e.exit(WAIT).await;
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("may lose or evict acknowledged pushes"))
        .collect();
    assert_eq!(warnings.len(), 2, "appendonly and appendfsync: {log}");
    assert!(warnings[0].contains("appendonly yes"), "{}", warnings[0]);
    assert!(
        warnings[1].contains("appendfsync always"),
        "{}",
        warnings[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_kept_in_redis_listed_sent_back_and_deleted() {
    let redis = Redis::start_durable(PASSWORD).await;
    // A sink that refuses every write for good.
    let (listener, sink) = bind().await;
    let refusals = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/",
        axum::routing::post({
            let refusals = refusals.clone();
            move || {
                refusals.fetch_add(1, Ordering::SeqCst);
                async { fhir_json(422, &operation_outcome("invalid", "no such thing")) }
            }
        }),
    );
    spawn_app(listener, app);
    let defs = definitions(&feed(&fhir_sink(&sink), ""));
    let state = tempfile::tempdir().expect("state");
    let limits = Limits {
        push_queue: Some(
            StreamBackend::new(&redis.url, 100, Duration::from_secs(2)).expect("backend"),
        ),
        ..open_admin()
    };
    let served = EngineRouter::with_limits(load(defs.path()), state.path(), limits, WAIT);
    let ep = served.engine.pushes["feed"].clone();
    let drainer = Drainer::start(ep.clone());
    for id in ["d1", "d2"] {
        let got = served
            .post(format!("{}/push/feed", served.base))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(patient_payload(id))
            .send()
            .await;
        assert_eq!(got.status, 202, "{}", got.text);
    }
    let mut conn = redis_conn(&redis.url).await;
    until(WAIT, "both dead-lettered", || {
        let mut c = conn.clone();
        async move { xlen(&mut c, DEAD).await == 2 }
    })
    .await;
    assert_eq!(xlen(&mut conn, STREAM).await, 0, "acknowledged and deleted");
    let got = served
        .get(format!("{}/connectors/feed/dead-letters", served.base))
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let listed = got.json();
    let letters = listed.as_array().expect("a list");
    assert_eq!(letters.len(), 2, "{listed}");
    assert!(
        letters[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("rejected")),
        "{listed}"
    );
    let (count, shown) = ep.dead_letters_shown(10).await;
    assert_eq!(count, 2);
    assert_eq!(shown[0]["payload"]["id"], "d1", "{shown:?}");
    let first = letters[0]["id"].as_str().expect("an id").to_owned();
    let second = letters[1]["id"].as_str().expect("an id").to_owned();
    // Sent back: written again (refused again, so dead-lettered again).
    let before = refusals.load(Ordering::SeqCst);
    assert!(ep.requeue_dead_letter(&first).await.expect("Redis answers"));
    until(WAIT, "the letter is tried again", || {
        let n = refusals.load(Ordering::SeqCst);
        async move { n > before }
    })
    .await;
    until(WAIT, "and kept again", || {
        let mut c = conn.clone();
        async move { xlen(&mut c, DEAD).await == 2 }
    })
    .await;
    assert!(
        ep.delete_stream_dead_letter(&second)
            .await
            .expect("Redis answers")
    );
    assert!(
        !ep.delete_stream_dead_letter(&second)
            .await
            .expect("Redis answers")
    );
    assert!(
        !ep.requeue_dead_letter("../../etc")
            .await
            .expect("not an id")
    );
    assert_eq!(xlen(&mut conn, DEAD).await, 1);
    assert_eq!(ep.depths(), (0, 1));
    // The same letters through the admin API, as an operator works with them.
    let got = served
        .get(format!("{}/connectors/feed/dead-letters", served.base))
        .send()
        .await;
    let left = got.json()[0]["id"].as_str().expect("an id").to_owned();
    let got = served
        .get(format!(
            "{}/connectors/feed/dead-letters/{left}",
            served.base
        ))
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json()["payload"]["id"], "d1", "{}", got.text);
    // Replayed through the definition: refused again, kept with the sink's reason.
    let before = refusals.load(Ordering::SeqCst);
    let got = served
        .post(format!(
            "{}/connectors/feed/dead-letters/{left}/replay",
            served.base
        ))
        .send()
        .await;
    assert_eq!(got.status, 422, "{}", got.text);
    assert!(
        refusals.load(Ordering::SeqCst) > before,
        "the sink was asked again"
    );
    assert_eq!(xlen(&mut conn, DEAD).await, 1, "kept, once");
    let got = served
        .get(format!("{}/connectors/feed/dead-letters", served.base))
        .send()
        .await;
    let kept = got.json()[0]["id"].as_str().expect("an id").to_owned();
    let got = served
        .delete(format!(
            "{}/connectors/feed/dead-letters/{kept}",
            served.base
        ))
        .send()
        .await;
    assert_eq!(got.status, 204, "{}", got.text);
    assert_eq!(xlen(&mut conn, DEAD).await, 0);
    let got = served
        .delete(format!(
            "{}/connectors/feed/dead-letters/{kept}",
            served.base
        ))
        .send()
        .await;
    assert_eq!(got.status, 404, "{}", got.text);
    drainer.stop().await;
}
