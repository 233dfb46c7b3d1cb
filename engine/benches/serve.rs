//! Benchmark of `engine serve` (the release binary) with `wrk`, against baselines measured in
//! the same run: (a) cache-hit throughput of a pull search against the engine's own `/healthz`
//! with the same wrk settings; (b) latency of cache misses against calling the stand-in
//! upstream directly, p50 and p99; (c) resident memory idle with 100 connectors loaded, and
//! with 10,000 cached answers. The stand-in upstream runs in this process on 127.0.0.1.
//! Run: `cargo bench -p engine --bench serve` (needs `wrk`: `apt-get install wrk`). With
//! `ENGINE_BASELINE_BIN=/path/to/an/earlier/engine`, (a) also measures that binary's cache hits
//! in the same run, alternating, and prints this one's throughput and latency as ratios to it.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::extract::RawQuery;
use axum::routing::get;
use serde_json::json;

const WRK_SECONDS: &str = "8s";
const WRK_CONNECTIONS: &str = "32";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The stand-in regulator API: one label per query, about 1 KB of JSON.
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

fn connector(name: &str, upstream: u16) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: {name} }}
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
    statusDate: {{ $dateTime: {{ $path: $.effective_time }} }}
---
"#
    )
}

struct Engine(Child, u16);

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_engine(dir: &Path) -> Engine {
    start_binary(Path::new(env!("CARGO_BIN_EXE_engine")), dir)
}

fn start_binary(bin: &Path, dir: &Path) -> Engine {
    let port = free_port();
    let child = Command::new(bin)
        .args([
            "serve",
            dir.to_str().expect("path"),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log",
            "warn",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("engine starts");
    // Owned at once, so that the process is killed and waited for on every path.
    let engine = Engine(child, port);
    for _ in 0..100 {
        if get_ok(&format!("http://127.0.0.1:{port}/healthz")) {
            return engine;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the engine did not start");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Runs wrk; gives requests per second and the p50 and p99 latencies (ms).
fn wrk(url: &str, connections: &str, script: Option<&Path>) -> (f64, f64, f64) {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c", connections, "-d", WRK_SECONDS, "--latency"]);
    if let Some(s) = script {
        cmd.args(["-s", s.to_str().expect("path")]);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("wrk runs (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk output: {text}"));
    let pct = |p: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(p))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(ms)
            .unwrap_or(f64::NAN)
    };
    if text.contains("Non-2xx") {
        panic!("wrk saw errors: {text}");
    }
    (rate, pct("50%"), pct("99%"))
}

fn ms(v: &str) -> f64 {
    let (n, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
    let n: f64 = n.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

/// A plain blocking GET over std (the probes need no async client): true on a 2xx answer.
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

fn main() {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk is needed: apt-get install wrk");
        std::process::exit(2);
    }
    let upstream = standin();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("labels.yaml"),
        connector("labels", upstream),
    )
    .expect("write");
    let engine = start_engine(dir.path());
    let base = format!("http://127.0.0.1:{}", engine.1);

    // (a) Cache hits against /healthz, same wrk settings.
    let hit_url = format!("{base}/fhir/labels/MedicinalProductDefinition?name=Painaway");
    assert!(get_ok(&hit_url), "the warm-up search answers 200");
    let (health, _, _) = wrk(&format!("{base}/healthz"), WRK_CONNECTIONS, None);
    let (hits, hit50, hit99) = wrk(&hit_url, WRK_CONNECTIONS, None);
    println!(
        "(a) /healthz: {health:.0} req/s; cache-hit search: {hits:.0} req/s (p50 {hit50:.3} ms, p99 {hit99:.3} ms)"
    );
    println!(
        "    ratio cache-hit / healthz: {:.2} (target >= 0.7)",
        hits / health
    );

    // (a, against an earlier build) Cache hits of this binary and of the baseline, alternating
    // three times each, in the same run; the medians compared.
    if let Some(bin) = std::env::var_os("ENGINE_BASELINE_BIN") {
        let baseline = start_binary(Path::new(&bin), dir.path());
        let old_url = format!(
            "http://127.0.0.1:{}/fhir/labels/MedicinalProductDefinition?name=Painaway",
            baseline.1
        );
        assert!(
            get_ok(&old_url),
            "the baseline's warm-up search answers 200"
        );
        let (mut new, mut old) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            new.push(wrk(&hit_url, WRK_CONNECTIONS, None));
            old.push(wrk(&old_url, WRK_CONNECTIONS, None));
        }
        let median = |v: &mut Vec<(f64, f64, f64)>, f: fn(&(f64, f64, f64)) -> f64| {
            let mut xs: Vec<f64> = v.iter().map(f).collect();
            xs.sort_by(f64::total_cmp);
            xs[xs.len() / 2]
        };
        let (n_rate, o_rate) = (median(&mut new, |r| r.0), median(&mut old, |r| r.0));
        let (n50, o50) = (median(&mut new, |r| r.1), median(&mut old, |r| r.1));
        let (n99, o99) = (median(&mut new, |r| r.2), median(&mut old, |r| r.2));
        println!(
            "(a) baseline {}: cache hits {o_rate:.0} req/s (p50 {o50:.3} ms, p99 {o99:.3} ms); this build {n_rate:.0} req/s (p50 {n50:.3} ms, p99 {n99:.3} ms)",
            bin.to_string_lossy()
        );
        println!(
            "    ratio this / baseline: throughput {:.2}, p50 {:.2}, p99 {:.2}",
            n_rate / o_rate,
            n50 / o50,
            n99 / o99
        );
        drop(baseline);
    }

    // (b) Cache misses (a new name each request) against the stand-in called directly.
    let script = dir.path().join("unique.lua");
    std::fs::write(
        &script,
        "counter = 0\nrequest = function()\n  counter = counter + 1\n  return wrk.format(nil, wrk.path .. counter .. '-' .. math.random(1, 1000000000))\nend\n",
    )
    .expect("script");
    let (_, direct50, direct99) = wrk(
        &format!("http://127.0.0.1:{upstream}/drug/label.json?search=brand:x"),
        "1",
        Some(&script),
    );
    let (_, miss50, miss99) = wrk(
        &format!("{base}/fhir/labels/MedicinalProductDefinition?name=x"),
        "1",
        Some(&script),
    );
    println!(
        "(b) stand-in direct: p50 {direct50:.3} ms, p99 {direct99:.3} ms; through the engine (cache misses): p50 {miss50:.3} ms, p99 {miss99:.3} ms"
    );
    println!(
        "    added by the engine: p50 {:.3} ms (target <= 1 ms), p99 {:.3} ms",
        miss50 - direct50,
        miss99 - direct99
    );
    drop(engine);

    // (c) Memory: 100 connectors idle, then 10,000 cached answers.
    let many = tempfile::tempdir().expect("tempdir");
    let text: String = (0..100)
        .map(|i| connector(&format!("labels-{i}"), upstream))
        .collect();
    std::fs::write(many.path().join("many.yaml"), text).expect("write");
    let engine = start_engine(many.path());
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss_kib(engine.0.id());
    let base = format!("http://127.0.0.1:{}", engine.1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut set = tokio::task::JoinSet::new();
        for worker in 0..16 {
            let client = client.clone();
            let base = base.clone();
            set.spawn(async move {
                for i in (worker..10_000).step_by(16) {
                    let url = format!("{base}/fhir/labels-0/MedicinalProductDefinition?name=n{i}");
                    let r = client.get(url).send().await.expect("request");
                    assert!(r.status().is_success());
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.expect("worker");
        }
    });
    let full = rss_kib(engine.0.id());
    println!(
        "(c) RSS with 100 connectors idle: {:.1} MiB; with 10,000 cached answers: {:.1} MiB",
        idle as f64 / 1024.0,
        full as f64 / 1024.0
    );
}
