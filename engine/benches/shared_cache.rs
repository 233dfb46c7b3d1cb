//! Benchmark of the shared cache tier (Redis) with `wrk` and a real `redis-server`, against
//! anchors measured in the same run, interleaved: (a) cache-hit throughput of an engine with
//! the shared tier against the same engine without it (in-memory cache alone) and against its
//! own `/healthz`, five rounds each, medians; (b) a replica's first read of answers another
//! replica put in Redis, against reading them from its memory and against a cold engine
//! without the tier calling the source (one request at a time, 500 keys).
//! Run: `cargo bench -p engine --bench shared_cache` (needs `wrk` and `redis-server`).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::extract::RawQuery;
use axum::routing::get;
use serde_json::json;

const WRK_SECONDS: &str = "5s";
const WRK_CONNECTIONS: &str = "32";
const ROUNDS: usize = 5;
const KEYS: usize = 500;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The stand-in source, about 1 KB of JSON per query, 2 ms per call (a fast real source).
fn standin() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/drug/label.json",
                get(|RawQuery(q): RawQuery| async move {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let q = q.unwrap_or_default();
                    axum::Json(json!({
                        "meta": {"results": {"total": 1}},
                        "results": [{
                            "set_id": format!("id-{}", q.len()),
                            "effective_time": "20240105",
                            "indications_and_usage": [format!("Relief of minor aches and pains ({q}).")],
                            "warnings": ["Do not exceed the stated dose.", "Keep out of reach of children."],
                            "openfda": {"brand_name": [format!("Painaway {q}")], "generic_name": ["IBUPROFEN"]}
                        }]
                    }))
                }),
            );
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(listener, app).await.expect("stand-in");
        });
    });
    port
}

fn connector(upstream: u16) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: labels }}
spec:
  strategy: pull
  fhirVersion: R5
  source: {{ url: "http://127.0.0.1:{upstream}", timeout: 10s, concurrency: 256 }}
  pull:
    resources:
      - type: MedicinalProductDefinition
        search:
          params: {{ name: {{}} }}
          request: {{ path: /drug/label.json, query: {{ search: "brand:{{{{params.name}}}}" }} }}
          records: $.results[*]
          total: $.meta.results.total
  cache: {{ ttl: 1h, maxEntries: 20000, maxBytes: 256MiB }}
  mapping:
    resourceType: MedicinalProductDefinition
    id: {{ $path: $.set_id }}
    name:
      - $each: "$.openfda.brand_name[*]"
        $do: {{ productName: "{{{{item}}}}" }}
    description: {{ $path: "$.indications_and_usage[0]" }}
---
"#
    )
}

/// A child process killed and waited for when dropped.
struct Proc(Child, u16);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis(dir: &Path) -> Proc {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts (apt-get install redis-server)");
    let redis = Proc(child, port);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return redis;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("redis-server did not start");
}

fn start_engine(dir: &Path, state: &Path, shared: Option<u16>) -> Proc {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.args(["serve", dir.to_str().expect("path")])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--log", "warn"])
        .args(["--public-url", "http://fosps.bench"])
        .arg("--state-dir")
        .arg(state)
        .env_remove("ENGINE_SHARED_CACHE")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(r) = shared {
        cmd.args(["--shared-cache", &format!("redis://127.0.0.1:{r}")]);
    }
    let engine = Proc(cmd.spawn().expect("engine starts"), port);
    for _ in 0..100 {
        if get_ok(&format!("http://127.0.0.1:{port}/healthz")) {
            return engine;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the engine did not start");
}

/// Runs wrk; gives requests per second.
fn wrk(url: &str) -> f64 {
    let out = Command::new("wrk")
        .args(["-t1", "-c", WRK_CONNECTIONS, "-d", WRK_SECONDS])
        .arg(url)
        .output()
        .expect("wrk runs (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if text.contains("Non-2xx") {
        panic!("wrk saw errors: {text}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk output: {text}"))
}

/// A plain blocking GET over std: true on a 2xx answer.
fn get_ok(url: &str) -> bool {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let Ok(mut s) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .is_some_and(|c| (200..300).contains(&c))
}

/// Median, lowest and highest of `xs`.
fn spread(xs: &mut [f64]) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
}

fn ratio_line(measure: &str, engine: &[f64], anchor: &[f64], unit: &str, anchor_name: &str) {
    let mut ratios: Vec<f64> = engine.iter().zip(anchor).map(|(e, a)| e / a).collect();
    let (r, lo, hi) = spread(&mut ratios);
    let (e, _, _) = spread(&mut engine.to_vec());
    let (a, _, _) = spread(&mut anchor.to_vec());
    println!(
        "ratio: {measure} = {r:.2}x (spread {lo:.2}-{hi:.2}; engine {e:.1} {unit}, anchor {anchor_name} {a:.1} {unit})"
    );
}

/// Mean time of one GET of each key, one at a time.
fn sequential(base: &str, keys: std::ops::Range<usize>) -> f64 {
    let n = keys.len();
    let t = Instant::now();
    for i in keys {
        let url = format!("{base}/fhir/labels/MedicinalProductDefinition?name=k{i}");
        assert!(get_ok(&url), "{url} answers 200");
    }
    t.elapsed().as_secs_f64() * 1000.0 / n as f64
}

fn main() {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk is needed: apt-get install wrk");
        std::process::exit(2);
    }
    let upstream = standin();
    let dir = tempfile::tempdir().expect("tempdir");
    let defs = dir.path().join("defs");
    std::fs::create_dir(&defs).expect("mkdir");
    std::fs::write(defs.join("labels.yaml"), connector(upstream)).expect("write");
    let redis = start_redis(dir.path());
    let state = |n: &str| dir.path().join(n);
    let memory = start_engine(&defs, &state("memory"), None);
    let shared = start_engine(&defs, &state("shared"), Some(redis.1));
    let url = |p: u16| {
        format!("http://127.0.0.1:{p}/fhir/labels/MedicinalProductDefinition?name=Painaway")
    };
    assert!(get_ok(&url(memory.1)) && get_ok(&url(shared.1)), "warm-up");

    // (a) Cache hits, interleaved rounds.
    let (mut health, mut mem, mut sh) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        health.push(wrk(&format!("http://127.0.0.1:{}/healthz", shared.1)));
        mem.push(wrk(&url(memory.1)));
        sh.push(wrk(&url(shared.1)));
    }
    ratio_line(
        "cache-hit throughput, shared tier / in-memory alone",
        &sh,
        &mem,
        "req/s",
        "in-memory",
    );
    ratio_line(
        "cache-hit throughput, shared tier / healthz",
        &sh,
        &health,
        "req/s",
        "healthz",
    );
    ratio_line(
        "cache-hit throughput, in-memory alone / healthz",
        &mem,
        &health,
        "req/s",
        "healthz",
    );

    // (b) Per-request latency: a second replica's first read from Redis, against its memory
    // and against a cold engine without the tier (the source called). Fresh keys each round.
    let (mut from_redis, mut from_memory, mut from_source) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..3 {
        let keys = round * KEYS..(round + 1) * KEYS;
        // The first replica fills Redis.
        sequential(&format!("http://127.0.0.1:{}", shared.1), keys.clone());
        let second = start_engine(&defs, &state(&format!("second-{round}")), Some(redis.1));
        let base = format!("http://127.0.0.1:{}", second.1);
        from_redis.push(sequential(&base, keys.clone()));
        from_memory.push(sequential(&base, keys.clone()));
        let cold = start_engine(&defs, &state(&format!("cold-{round}")), None);
        from_source.push(sequential(&format!("http://127.0.0.1:{}", cold.1), keys));
    }
    ratio_line(
        "latency, first read from the shared tier / in-memory hit",
        &from_redis,
        &from_memory,
        "ms",
        "in-memory-hit",
    );
    ratio_line(
        "latency, first read from the shared tier / source miss",
        &from_redis,
        &from_source,
        "ms",
        "source-miss",
    );
}
