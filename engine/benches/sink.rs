//! Benchmark of writes into a real FHIR server (Helios FHIR Server, fresh in-memory instances
//! on 127.0.0.1): resources per second written by a cron FHIR-to-FHIR sync through the engine's
//! sink (transaction Bundles of 100), against Helios's own ingestion of the same transaction
//! Bundles, built beforehand and posted directly with the same number in flight (the sink's
//! ceiling); three interleaved repetitions, each side into a fresh server. Also: a plain loop
//! of single `PUT`s (the way without the engine), and push requests per second accepted in
//! queued mode (each payload flushed to the local queue before its 202).
//! Run: `cargo bench -p engine --bench sink` (needs Helios: `source scripts/tools.sh`).

#[allow(
    dead_code,
    reason = "the tests' Helios launcher, the one place that knows how to run Helios; the bench starts in-memory servers only"
)]
#[path = "../tests/suite/helios_server.rs"]
mod helios_server;
#[path = "../tests/suite/outside_tools.rs"]
mod outside_tools;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::routing::get;
use helios_server::{Db, Helios};
use serde_json::{Value, json};

const RESOURCES: usize = 3000;
const BATCH: usize = 100;
/// Bundles in flight at once, for the sink (`concurrency`) and for the direct posts: one, as
/// Helios (SQLite) answers 503 to a transaction that arrives while another runs.
const IN_FLIGHT: usize = 1;
const REPS: usize = 3;
const PUTS: usize = 1000;
const PUSHES: usize = 2000;

fn resources() -> Vec<Value> {
    (0..RESOURCES)
        .map(|i| {
            json!({"resourceType": "Patient", "id": format!("p{i}"), "active": true,
                "name": [{"family": format!("Family{i}"), "given": ["Ana", "Maria"]}],
                "birthDate": "1980-01-01", "meta": {"lastUpdated": "2026-01-01T00:00:00Z"}})
        })
        .collect()
}

/// The transaction Bundles the sink writes for these resources (the source's `meta` left
/// out, `PUT Type/id`, `BATCH` a Bundle), as bytes ready to post.
fn bundles(all: &[Value]) -> Vec<bytes::Bytes> {
    all.chunks(BATCH)
        .map(|chunk| {
            let entries: Vec<Value> = chunk
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    if let Some(o) = r.as_object_mut() {
                        o.remove("meta");
                    }
                    let url = format!("Patient/{}", r["id"].as_str().unwrap_or_default());
                    json!({"resource": r, "request": {"method": "PUT", "url": url}})
                })
                .collect();
            let b = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
            bytes::Bytes::from(serde_json::to_vec(&b).expect("json"))
        })
        .collect()
}

/// Posts the Bundles directly, `IN_FLIGHT` at a time, each checked to be wholly written.
async fn post_direct(client: &reqwest::Client, url: &str, bundles: &[bytes::Bytes]) -> Duration {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut next = bundles.iter();
    loop {
        while set.len() < IN_FLIGHT {
            let Some(body) = next.next() else { break };
            let req = client
                .post(url)
                .header("content-type", "application/fhir+json")
                .header("accept", "application/fhir+json")
                .header("prefer", "return=minimal")
                .body(body.clone());
            set.spawn(async move {
                let resp = req.send().await.expect("POST");
                assert!(
                    resp.status().is_success(),
                    "POST answered {}",
                    resp.status()
                );
                let answer: Value = resp.json().await.expect("a Bundle");
                let entries = answer["entry"].as_array().map_or(0, Vec::len);
                assert_eq!(entries, BATCH, "every entry answered");
            });
        }
        match set.join_next().await {
            Some(r) => r.expect("post"),
            None => break,
        }
    }
    started.elapsed()
}

/// A stand-in FHIR source: `GET /Patient` pages of `_count`, `next` links by offset.
async fn source(all: Arc<Vec<Value>>) -> String {
    #[derive(serde::Deserialize)]
    struct Q {
        #[serde(rename = "_count")]
        count: Option<usize>,
        offset: Option<usize>,
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let link_base = base.clone();
    let app = axum::Router::new()
        .route(
            "/Patient",
            get(move |State(all): State<Arc<Vec<Value>>>, Query(q): Query<Q>| {
                let link_base = link_base.clone();
                async move {
                    let (count, offset) = (q.count.unwrap_or(100), q.offset.unwrap_or(0));
                    let page: Vec<Value> = all.iter().skip(offset).take(count).map(|r| json!({"resource": r})).collect();
                    let mut links = vec![];
                    if offset + count < all.len() {
                        links.push(json!({"relation": "next", "url": format!("{link_base}/Patient?_count={count}&offset={}", offset + count)}));
                    }
                    axum::Json(json!({"resourceType": "Bundle", "type": "searchset", "link": links, "entry": page}))
                }
            }),
        )
        .with_state(all);
    tokio::spawn(async move { axum::serve(listener, app).await.expect("source") });
    base
}

fn model(dir: &std::path::Path) -> engine::model::Model {
    let (files, errors) =
        engine::config::load::read_all(&[dir.to_path_buf()]).expect("definitions");
    let opts = engine::config::validate::Options {
        allow_unresolved: false,
        run_tests: false,
        fhir_schema: None,
        env: &engine::config::secrets::ProcessEnvironment,
    };
    let outcome = engine::config::validate::validate(&files, errors, &opts);
    outcome
        .model
        .unwrap_or_else(|| panic!("{:?}", outcome.diagnostics))
}

/// One cron sync run from `src` into the server at `sink_url`: its time and report.
async fn engine_sync(src: &str, sink_url: &str) -> (Duration, engine::runtime::report::RunReport) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("sync.yaml"),
        format!(
            "apiVersion: fosps.gravitate-health.eu/v1\nkind: Source\nmetadata: {{ name: origin }}\nspec: {{ type: fhir, url: \"{src}\" }}\n---\n\
             apiVersion: fosps.gravitate-health.eu/v1\nkind: Sink\nmetadata: {{ name: target }}\nspec: {{ fhir: {{ url: \"{sink_url}\", version: R4, batchSize: {BATCH}, concurrency: {IN_FLIGHT} }} }}\n---\n\
             apiVersion: fosps.gravitate-health.eu/v1\nkind: Connector\nmetadata: {{ name: sync }}\nspec:\n  strategy: cron\n  schedule: {{ cron: \"0 2 * * *\" }}\n  sources: [origin]\n  sync: {{ resourceTypes: [Patient], pageSize: {BATCH} }}\n  sink: target\n",
        ),
    )
    .expect("write");
    let m = model(dir.path());
    let connector = m.connector("sync").expect("connector").clone();
    let metrics = Arc::new(engine::runtime::metrics::Metrics::default());
    let upstreams = engine::runtime::upstream::Upstreams::new(
        connector.sources.iter().cloned(),
        metrics.clone(),
    )
    .expect("clients");
    let state = tempfile::tempdir().expect("state");
    let runner = engine::runtime::run::Runner::new(
        connector,
        &upstreams,
        engine::runtime::state::StateDir::new(state.path()),
        state.path(),
        metrics,
        engine::runtime::clock::Clock::system(),
    )
    .expect("runner");
    let started = Instant::now();
    let (report, _) = runner.run(false).await;
    let took = started.elapsed();
    assert!(report.ok(), "{:?}", report.failures);
    assert_eq!(report.resources_written, RESOURCES);
    (took, report)
}

/// The median, smallest and largest of some figures.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let all = Arc::new(resources());
    let src = source(all.clone()).await;
    let prepared = bundles(&all);
    let client = reqwest::Client::new();
    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();

    // Interleaved: the direct posts and the engine's sync take turns going first, each into
    // a fresh in-memory server.
    let (mut direct, mut synced, mut ratios) = (vec![], vec![], vec![]);
    let mut calls = (0, 0);
    for rep in 0..REPS {
        let mut pair = [Duration::ZERO; 2];
        for side in [rep % 2, 1 - rep % 2] {
            let helios = Helios::start(Db::Memory).await;
            if side == 0 {
                pair[0] = post_direct(&client, &helios.url, &prepared).await;
            } else {
                let (took, report) = engine_sync(&src, &helios.url).await;
                calls = (report.source_calls, report.sink_calls);
                pair[1] = took;
            }
        }
        direct.push(rate(RESOURCES, pair[0]));
        synced.push(rate(RESOURCES, pair[1]));
        ratios.push(pair[0].as_secs_f64() / pair[1].as_secs_f64());
    }
    let (d, ..) = spread(direct);
    let (s, ..) = spread(synced);
    let (r, lo, hi) = spread(ratios);
    println!(
        "resources: {RESOURCES} Patients into Helios FHIR Server (fresh, in memory), Bundles of {BATCH}, {IN_FLIGHT} in flight; {REPS} interleaved repetitions"
    );
    println!(
        "engine cron sync: {s:.0} resources/s ({} source + {} sink calls); the same Bundles posted directly: {d:.0} resources/s",
        calls.0, calls.1
    );
    println!(
        "ratio: sync into Helios / Helios direct = {r:.2}x (spread {lo:.2}-{hi:.2}; engine {s:.0} resources/s, anchor helios-direct-bundles {d:.0} resources/s)"
    );

    // The way without the engine: a plain loop of single PUTs.
    let plain = Helios::start(Db::Memory).await;
    let started = Instant::now();
    for r in all.iter().take(PUTS) {
        let url = format!(
            "{}/Patient/{}",
            plain.url,
            r["id"].as_str().unwrap_or_default()
        );
        let resp = client
            .put(url)
            .header("content-type", "application/fhir+json")
            .json(r)
            .send()
            .await
            .expect("PUT");
        assert!(resp.status().is_success(), "PUT answered {}", resp.status());
    }
    let loop_rate = rate(PUTS, started.elapsed());
    drop(plain);
    println!(
        "plain loop of single PUTs: {loop_rate:.0} resources/s ({PUTS} HTTP calls); engine sync / loop: {:.2}",
        s / loop_rate
    );

    // Push requests accepted per second in queued mode (NDJSON sink, queue flushed per push).
    let pdir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        pdir.path().join("push.yaml"),
        "apiVersion: fosps.gravitate-health.eu/v1\nkind: Connector\nmetadata: { name: hook }\nspec:\n  strategy: push\n  push:\n    auth: { hmac: { secret: bench-secret-0123456789 } }\n    mode: queued\n  mapping: { resourceType: Patient, id: { $path: $.id } }\n",
    )
    .expect("write");
    let m = Arc::new(model(pdir.path()));
    let state = tempfile::tempdir().expect("state");
    let dirs = engine::runtime::engine::Dirs {
        state: state.path().join("state"),
        sink: state.path().join("ndjson"),
    };
    let eng =
        engine::runtime::engine::Engine::new(m, engine::runtime::engine::Limits::default(), &dirs)
            .expect("engine");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let app = engine::http::router(eng);
    tokio::spawn(async move { axum::serve(listener, app).await.expect("engine") });
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let (client, base) = (client.clone(), base.clone());
        set.spawn(async move {
            for i in (worker..PUSHES).step_by(16) {
                let body = json!({"id": format!("n{i}")}).to_string();
                let ts = chrono::Utc::now().timestamp();
                let sig =
                    engine::runtime::push::sign("bench-secret-0123456789", ts, body.as_bytes());
                let r = client
                    .post(format!("{base}/push/hook"))
                    .header("content-type", "application/json")
                    .header("x-timestamp", ts.to_string())
                    .header("x-signature", sig)
                    .body(body)
                    .send()
                    .await
                    .expect("push");
                assert_eq!(r.status().as_u16(), 202);
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("worker");
    }
    let push_time = started.elapsed();
    println!(
        "push, queued mode: {PUSHES} signed pushes, 16 at a time: {:.0} accepted/s",
        PUSHES as f64 / push_time.as_secs_f64()
    );
}
