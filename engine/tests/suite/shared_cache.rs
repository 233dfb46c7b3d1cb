//! The shared cache tier: three `engine serve` processes on 127.0.0.1 sharing one real
//! `redis-server` (Debian's, installed by `scripts/tools.sh`, started here on 127.0.0.1 with a
//! temp dir): one source call for 300 concurrent cold requests across them, a push to one
//! engine invalidating the cached answers of all three, every request answered when Redis is
//! killed mid-run, and a cron tick run once across the three.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::fhir_standin::FhirSource;
use crate::local_http::{bind, client, spawn_app};
use crate::serve_process::ServeProcess;

/// Longest the test waits for a process to start, or for a condition.
const WAIT: Duration = Duration::from_secs(30);
/// The base every engine writes in its links, so the three share cache keys.
const PUBLIC: &str = "http://fosps.test/api";
const TOKEN: &str = "push-token-0123456789";

/// A `redis-server` on 127.0.0.1, killed when dropped. Also used by `push_stream_queue`,
/// whose servers keep an append-only file flushed at every write in their temp dir.
pub(crate) struct Redis {
    child: Child,
    pub(crate) url: String,
    port: u16,
    durable: Option<&'static str>,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts Debian's `redis-server` without persistence on a free port (chosen by binding
    /// port 0 and given back; a start that loses the port to another process is retried on
    /// another one).
    pub(crate) async fn start() -> Redis {
        Redis::start_with(None).await
    }

    /// Starts a `redis-server` as a push queue needs it: AOF on, `appendfsync always`, no
    /// eviction, the password `password`, `DEBUG` allowed from 127.0.0.1 (to make it slow).
    pub(crate) async fn start_durable(password: &'static str) -> Redis {
        Redis::start_with(Some(password)).await
    }

    async fn start_with(durable: Option<&'static str>) -> Redis {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
                l.local_addr().expect("addr").port()
            };
            if let Some(child) = spawn_redis(port, dir.path(), durable).await {
                let url = match durable {
                    Some(p) => format!("redis://:{p}@127.0.0.1:{port}"),
                    None => format!("redis://127.0.0.1:{port}"),
                };
                return Redis {
                    child,
                    url,
                    port,
                    durable,
                    dir,
                };
            }
        }
        panic!("redis-server did not start on 127.0.0.1 in five tries");
    }

    pub(crate) async fn kill(&mut self) {
        self.child.kill().await.expect("redis-server killed");
    }

    /// Starts the server again after `kill`, on the same port and directory (its AOF read
    /// back).
    pub(crate) async fn restart(&mut self) {
        self.child = spawn_redis(self.port, self.dir.path(), self.durable)
            .await
            .expect("redis-server starts again on its port");
    }
}

/// A `redis-server` on `port` with its files in `dir`, once it accepts connections.
async fn spawn_redis(port: u16, dir: &Path, durable: Option<&str>) -> Option<Child> {
    let bin = which_redis();
    let mut cmd = Command::new(&bin);
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()]);
    match durable {
        None => cmd.args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ]),
        Some(password) => cmd
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args([
                "--maxmemory-policy",
                "noeviction",
                "--requirepass",
                password,
            ])
            .args(["--enable-debug-command", "local"]),
    };
    let mut child = cmd
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("Ready to accept connections") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if ready {
        // Keep reading, so that redis never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        return Some(child);
    }
    let _ = child.kill().await;
    None
}

fn which_redis() -> std::path::PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file());
    found.expect(
        "redis-server is not installed: run scripts/tools.sh, which installs Debian's redis-server",
    )
}

pub(crate) fn definitions(dir: &Path, yaml: &str) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("defs.yaml"), yaml).expect("write");
}

/// A cached pull connector over `url` and a push connector whose Patients invalidate it.
pub(crate) fn pull_and_push(url: &str, sink: &Path) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata: {{ name: out }}
spec:
  ndjson: {{ dir: "{sink}" }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: mirror }}
spec:
  strategy: pull
  source: {{ type: fhir, url: "{url}", timeout: 5s, retries: 0 }}
  cache: {{ ttl: 10m, staleIfError: 10m }}
  pull:
    resources:
      - type: Patient
        search:
          params:
            name: {{}}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: feed }}
spec:
  strategy: push
  sink: out
  push:
    auth: {{ bearer: {{ token: "{TOKEN}" }} }}
    mode: sync
  mapping:
    resourceType: Patient
    id: {{ $path: $.id }}
    name: [ {{ family: {{ $path: $.family }} }} ]
"#,
        sink = sink.display()
    )
}

/// `engine serve` of the definitions in `dir`, sharing `redis`.
pub(crate) async fn engine(dir: &Path, redis: &str) -> ServeProcess {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.arg("serve")
        .arg(dir.join("defs"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--public-url", PUBLIC])
        .env("ENGINE_SHARED_CACHE", redis)
        .env_remove("ENGINE_STATE_DIR")
        .env_remove("ENGINE_SINK_DIR");
    ServeProcess::start(cmd, WAIT).await
}

/// Three engines over the same definitions (each its own state directory) sharing `redis`.
async fn three(root: &Path, yaml: &str, redis: &str) -> Vec<ServeProcess> {
    let mut out = Vec::new();
    for i in 0..3 {
        let dir = root.join(format!("e{i}"));
        definitions(&dir.join("defs"), yaml);
        out.push(engine(&dir, redis).await);
    }
    out
}

/// The families in a searchset, sorted.
pub(crate) fn families(bundle: &Value) -> Vec<String> {
    let mut out: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            e["resource"]["name"][0]["family"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    out.sort();
    out
}

pub(crate) async fn search(http: &reqwest::Client, base: &str, query: &str) -> (u16, Value) {
    let r = http
        .get(format!("{base}/fhir/mirror/Patient{query}"))
        .send()
        .await
        .expect("the engine answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_engines_make_one_source_call_for_300_cold_requests() {
    let redis = Redis::start().await;
    let source = FhirSource::start().await;
    source.put(json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Ng"}]}));
    // Slow enough that the 300 requests are all waiting while the one call is made.
    source.delay(Duration::from_millis(300));
    let root = tempfile::tempdir().expect("tempdir");
    let engines = three(
        root.path(),
        &pull_and_push(&source.url, &root.path().join("out")),
        &redis.url,
    )
    .await;
    let http = client(WAIT);
    let mut calls = Vec::new();
    for i in 0..300 {
        let base = engines[i % 3].base.clone();
        let http = http.clone();
        calls.push(tokio::spawn(async move {
            search(&http, &base, "?name=Ng").await
        }));
    }
    let mut bodies = std::collections::BTreeSet::new();
    for c in calls {
        let (status, body) = c.await.expect("request");
        assert_eq!(status, 200, "{body}");
        assert_eq!(families(&body), ["Ng"]);
        bodies.insert(body.to_string());
    }
    assert_eq!(bodies.len(), 1, "one answer for everyone");
    assert_eq!(
        source.calls(),
        1,
        "one source call across the three engines"
    );
    // The answer is in Redis, compressed: a fourth engine answers it without the source.
    let fourth = root.path().join("e3");
    definitions(
        &fourth.join("defs"),
        &pull_and_push(&source.url, &root.path().join("out")),
    );
    let late = engine(&fourth, &redis.url).await;
    let (status, body) = search(&http, &late.base, "?name=Ng").await;
    assert_eq!((status, families(&body)), (200, vec!["Ng".to_owned()]));
    assert_eq!(source.calls(), 1, "the late engine read the shared tier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_one_engine_invalidates_the_answers_of_all_three() {
    let redis = Redis::start().await;
    let source = FhirSource::start().await;
    source.put(json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Ng"}]}));
    let root = tempfile::tempdir().expect("tempdir");
    let engines = three(
        root.path(),
        &pull_and_push(&source.url, &root.path().join("out")),
        &redis.url,
    )
    .await;
    let http = client(WAIT);
    for e in &engines {
        let (status, body) = search(&http, &e.base, "").await;
        assert_eq!((status, families(&body)), (200, vec!["Ng".to_owned()]));
    }
    // The source changes; every engine still answers from its cache.
    source.put(json!({"resourceType": "Patient", "id": "p2", "name": [{"family": "Okafor"}]}));
    let before = source.calls();
    for e in &engines {
        let (_, body) = search(&http, &e.base, "").await;
        assert_eq!(families(&body), ["Ng"], "cached");
    }
    assert_eq!(source.calls(), before);
    // A push of a Patient to the first engine.
    let pushed = http
        .post(format!("{}/push/feed", engines[0].base))
        .bearer_auth(TOKEN)
        .json(&json!({"id": "p3", "family": "Silva"}))
        .send()
        .await
        .expect("push answered");
    assert!(
        pushed.status().is_success(),
        "push: {}",
        pushed.text().await.unwrap_or_default()
    );
    // Every engine, the two that only heard of it too, answers what the source now has.
    let end = Instant::now() + WAIT;
    for e in &engines {
        loop {
            let (status, body) = search(&http, &e.base, "").await;
            if status == 200 && families(&body) == ["Ng", "Okafor"] {
                break;
            }
            assert!(
                Instant::now() < end,
                "{} still answers {body} after the push",
                e.base
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_answered_when_redis_is_killed_mid_run() {
    let mut redis = Redis::start().await;
    let source = FhirSource::start().await;
    for (id, family) in [("p1", "Ng"), ("p2", "Okafor"), ("p3", "Silva")] {
        source.put(json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]}));
    }
    let root = tempfile::tempdir().expect("tempdir");
    let engines = three(
        root.path(),
        &pull_and_push(&source.url, &root.path().join("out")),
        &redis.url,
    )
    .await;
    let bases: Vec<String> = engines.iter().map(|e| e.base.clone()).collect();
    let http = client(WAIT);
    let answered = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    const PER_WORKER: usize = 60;
    let mut workers = Vec::new();
    for w in 0..12 {
        let (http, bases, answered, failures) = (
            http.clone(),
            bases.clone(),
            answered.clone(),
            failures.clone(),
        );
        workers.push(tokio::spawn(async move {
            for i in 0..PER_WORKER {
                // Keys seen before the kill, and keys first asked after it.
                let names = ["Ng", "Okafor", "Silva"];
                let query = format!("?name={}&_count={}", names[i % 3], 1 + (w + i) % 20);
                let base = &bases[(w + i) % 3];
                let (status, body) = search(&http, base, &query).await;
                if status != 200 || families(&body).is_empty() {
                    failures.lock().expect("failures").push(format!(
                        "{base}{query}: {status} {}",
                        body.to_string().chars().take(200).collect::<String>()
                    ));
                }
                answered.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        }));
    }
    let a = answered.clone();
    crate::engine_under_test::wait_until(WAIT, "a third answered", move || {
        a.load(Ordering::SeqCst) >= 12 * PER_WORKER / 3
    })
    .await;
    redis.kill().await;
    for w in workers {
        w.await.expect("worker");
    }
    assert_eq!(answered.load(Ordering::SeqCst), 12 * PER_WORKER);
    let failures = failures.lock().expect("failures").clone();
    assert!(
        failures.is_empty(),
        "{} not answered, the first: {:?}",
        failures.len(),
        failures.first()
    );
    // The engines said so, in a metric, and answered new keys from the source meanwhile.
    let mut away = 0;
    for b in &bases {
        away += unavailable(&http, b).await;
    }
    assert!(
        away > 0,
        "requests served without the shared tier were counted"
    );
    // A fresh key after the kill: still answered.
    let (status, body) = search(&http, &bases[1], "?name=Ng&_count=99").await;
    assert_eq!(
        (status, families(&body)),
        (
            200,
            vec!["Ng".to_owned(), "Okafor".to_owned(), "Silva".to_owned()]
        )
    );
    drop(engines);
}

/// The `unavailable` count of `engine_shared_cache_operations_total` in an engine's metrics.
async fn unavailable(http: &reqwest::Client, base: &str) -> usize {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|l| {
            l.starts_with("engine_shared_cache_operations_total")
                && l.contains("outcome=\"unavailable\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_accepts_and_never_answers_costs_requests_only_a_short_wait() {
    // A hung "Redis": connections accepted, held open, never answered.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = hung.local_addr().expect("addr").port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            open.push(socket);
        }
    });
    let source = FhirSource::start().await;
    source.put(json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Ng"}]}));
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("e0");
    definitions(
        &dir.join("defs"),
        &pull_and_push(&source.url, &root.path().join("out")),
    );
    // With a password, which no log line may show.
    let e = engine(&dir, &format!("redis://:s3cret-pass@127.0.0.1:{port}")).await;
    // Each answered within a bound far below the 60 s request timeout, from the source or
    // from memory.
    let http = client(Duration::from_secs(5));
    for i in 0..20 {
        let (status, body) = search(&http, &e.base, &format!("?name=n{}", i % 4)).await;
        assert_eq!((status, families(&body)), (200, vec!["Ng".to_owned()]));
    }
    assert_eq!(source.calls(), 4, "one call per key, then memory");
    assert!(
        unavailable(&http, &e.base).await > 0,
        "counted as unavailable"
    );
    held.abort();
    let mut e = e;
    e.child.start_kill().expect("SIGKILL");
    let (_, log) = e.exit(WAIT).await;
    assert!(log.contains("shared cache tier unreachable"), "{log}");
    assert!(log.contains(&format!("127.0.0.1:{port}")), "{log}");
    assert!(!log.contains("s3cret-pass"), "{log}");
}

/// A source that records when it is called.
async fn clocked_source() -> (String, Arc<Mutex<Vec<Instant>>>) {
    let called = Arc::new(Mutex::new(Vec::new()));
    let seen = called.clone();
    let app = axum::Router::new().route(
        "/items",
        axum::routing::get(move || {
            let seen = seen.clone();
            async move {
                seen.lock().expect("calls").push(Instant::now());
                axum::Json(json!({"items": [{"id": "a", "family": "Ng"}]}))
            }
        }),
    );
    let (listener, url) = bind().await;
    spawn_app(listener, app);
    (url, called)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_tick_with_three_engines_runs_once() {
    let redis = Redis::start().await;
    let (url, called) = clocked_source().await;
    let root = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata: {{ name: out }}
spec:
  ndjson: {{ dir: "{sink}" }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: tick }}
spec:
  strategy: cron
  schedule: {{ cron: "*/2 * * * * *" }}
  source: {{ url: "{url}", retries: 0, timeout: 5s }}
  fetch:
    request: {{ path: /items }}
    records: $.items[*]
  sink: out
  mapping:
    resourceType: Patient
    id: {{ $path: $.id }}
    name: [ {{ family: {{ $path: $.family }} }} ]
"#,
        sink = root.path().join("out").display()
    );
    let engines = three(root.path(), &yaml, &redis.url).await;
    // Ticks every two seconds; wait for four runs after all three engines are up.
    let started = called.lock().expect("calls").len();
    let c = called.clone();
    crate::engine_under_test::wait_until(WAIT, "four runs", move || {
        c.lock().expect("calls").len() >= started + 4
    })
    .await;
    drop(engines);
    let calls = called.lock().expect("calls").clone();
    for pair in calls.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap > Duration::from_millis(1000),
            "two runs {gap:?} apart: one tick ran twice ({} runs in all)",
            calls.len()
        );
    }
}
