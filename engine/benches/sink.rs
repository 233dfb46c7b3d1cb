//! Benchmark of writes into a real FHIR server (Helios FHIR Server, fresh in-memory instances
//! on 127.0.0.1), against a baseline measured in the same run: resources per second written
//! by a cron FHIR-to-FHIR sync (transaction Bundles of 100) against the same resources sent
//! as single `PUT`s by a plain loop; and push requests per second accepted in queued mode
//! (each payload flushed to the local queue before its 202).
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

const RESOURCES: usize = 2000;
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let all = Arc::new(resources());
    let src = source(all.clone()).await;

    // Baseline: a plain loop of single PUTs into a fresh Helios.
    let plain = Helios::start(Db::Memory).await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    for r in all.iter() {
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
    let loop_time = started.elapsed();
    drop(plain);

    // The engine: one cron sync run into another fresh Helios.
    let sink = Helios::start(Db::Memory).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("sync.yaml"),
        format!(
            "apiVersion: fosps.gravitate-health.eu/v1\nkind: Source\nmetadata: {{ name: origin }}\nspec: {{ type: fhir, url: \"{src}\" }}\n---\n\
             apiVersion: fosps.gravitate-health.eu/v1\nkind: Sink\nmetadata: {{ name: target }}\nspec: {{ fhir: {{ url: \"{}\", version: R4, batchSize: 100 }} }}\n---\n\
             apiVersion: fosps.gravitate-health.eu/v1\nkind: Connector\nmetadata: {{ name: sync }}\nspec:\n  strategy: cron\n  schedule: {{ cron: \"0 2 * * *\" }}\n  sources: [origin]\n  sync: {{ resourceTypes: [Patient], pageSize: 100 }}\n  sink: target\n",
            sink.url
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
    let sync_time = started.elapsed();
    assert!(report.ok(), "{:?}", report.failures);
    assert_eq!(report.resources_written, RESOURCES);
    let rate = |d: Duration| RESOURCES as f64 / d.as_secs_f64();
    println!("resources: {RESOURCES} Patients into Helios FHIR Server (fresh, in memory)");
    println!(
        "plain loop of single PUTs: {:>8.0} resources/s ({} HTTP calls)",
        rate(loop_time),
        RESOURCES
    );
    println!(
        "engine cron sync:          {:>8.0} resources/s ({} source + {} sink calls)",
        rate(sync_time),
        report.source_calls,
        report.sink_calls
    );
    println!(
        "ratio sync / plain loop: {:.2}",
        loop_time.as_secs_f64() / sync_time.as_secs_f64()
    );
    drop(sink);

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
