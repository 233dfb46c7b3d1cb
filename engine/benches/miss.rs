//! Benchmark of cache misses of `engine serve` (issue 16, part 2): a search fanned out over two
//! FHIR sources that each answer in 20 ms, driven by `wrk` at c=32 with no cache, so that
//! every request is a miss. Printed: throughput as a ratio to the ideal (c / (latency + 1 ms):
//! every request waiting for its sources once, in parallel, and for nothing else), and the
//! engine's CPU time per miss (user + system, from `/proc/PID/stat`, over every miss of a
//! wrk run). With `ENGINE_BASELINE_BIN=/path/to/an/earlier/engine`, that binary is measured in
//! the same run, alternating, and this one's CPU per miss printed as a ratio to it.
//! Run: `cargo bench -p engine --bench miss` (needs `wrk`). `ENGINE_BIN` measures another
//! build of this engine (a debug one, say) instead of the release binary cargo builds.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::routing::get;
use serde_json::json;

const WRK_SECONDS: &str = "6s";
const CONNECTIONS: usize = 32;
const REPEATS: usize = 3;

fn latency() -> Duration {
    Duration::from_millis(
        std::env::var("MISS_LATENCY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A FHIR source stand-in answering every `GET /Patient` after `latency` with one Patient.
fn source(latency: Duration) -> u16 {
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
                "/Patient",
                get(move || async move {
                    tokio::time::sleep(latency).await;
                    (
                        [("content-type", "application/fhir+json")],
                        json!({
                            "resourceType": "Bundle", "type": "searchset", "total": 1,
                            "entry": [{"resource": {"resourceType": "Patient", "id": format!("p{port}"),
                                "name": [{"family": "Doe", "given": ["Jane"]}], "birthDate": "1970-01-01"}}]
                        })
                        .to_string(),
                    )
                }),
            );
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(listener, app).await.expect("stand-in");
        });
    });
    port
}

/// Two sources and a connector searching both, with no cache and the default `concurrency`.
fn definitions(a: u16, b: u16) -> String {
    let src = |name: &str, port: u16| {
        format!(
            "apiVersion: fosps.gravitate-health.eu/v1\nkind: Source\nmetadata: {{ name: {name} }}\nspec:\n  type: fhir\n  url: \"http://127.0.0.1:{port}\"\n  timeout: 10s\n---\n"
        )
    };
    src("a", a)
        + &src("b", b)
        + "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: both }
spec:
  strategy: pull
  sources: [a, b]
  pull:
    resources:
      - type: Patient
        search:
          params:
            _count: { type: integer, default: 20, max: 100 }
"
}

struct Engine(Child, u16);

/// Pauses (`STOP`) or resumes (`CONT`) a process: the engine not being measured is paused,
/// so that its background work (a push queue draining) does not take the other's CPU.
fn signal(e: &Engine, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &e.0.id().to_string()])
        .status();
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(bin: &Path, defs: &Path, state: &Path) -> Engine {
    let port = free_port();
    let mut child = Command::new(bin)
        .arg("serve")
        .arg(defs)
        .arg("--state-dir")
        .arg(state)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--log", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the engine starts");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Engine(child, port);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the engine did not listen");
}

/// User + system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // The fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').expect("stat") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    // Clock ticks per second: 100 on Linux.
    ticks / 100.0
}

/// Requests per second and requests done, of a wrk run.
fn wrk(url: &str) -> (f64, f64) {
    let out = Command::new("wrk")
        .args(["-t1", "-c", &CONNECTIONS.to_string(), "-d", WRK_SECONDS])
        .arg(url)
        .output()
        .expect("wrk runs (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let done = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    if text.contains("Non-2xx") {
        eprintln!("wrk saw errors:\n{text}");
    }
    (rate, done)
}

/// Throughput and CPU seconds per miss of one wrk run against `e`.
fn measure(e: &Engine) -> (f64, f64) {
    let url = format!("http://127.0.0.1:{}/fhir/both/Patient", e.1);
    let before = cpu_seconds(e.0.id());
    let (rate, done) = wrk(&url);
    let cpu = cpu_seconds(e.0.id()) - before;
    (rate, cpu / done.max(1.0))
}

fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn main() {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk is needed: apt-get install wrk");
        std::process::exit(2);
    }
    let latency = latency();
    let (a, b) = (source(latency), source(latency));
    let dir = tempfile::tempdir().expect("tempdir");
    let defs = dir.path().join("defs");
    std::fs::create_dir(&defs).expect("mkdir");
    std::fs::write(defs.join("miss.yaml"), definitions(a, b)).expect("write");
    let bin = std::env::var("ENGINE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_BIN_EXE_engine")));
    let engine = start(&bin, &defs, &dir.path().join("state"));
    let baseline = std::env::var("ENGINE_BASELINE_BIN")
        .ok()
        .map(|b| start(Path::new(&b), &defs, &dir.path().join("state-baseline")));
    // Warm-up: connections to the sources opened.
    measure(&engine);
    if let Some(b) = &baseline {
        measure(b);
    }
    let ideal = CONNECTIONS as f64 / (latency.as_secs_f64() + 0.001);
    let (mut rates, mut cpus, mut old_rates, mut old_cpus) = (vec![], vec![], vec![], vec![]);
    for _ in 0..REPEATS {
        if let Some(b) = &baseline {
            signal(&engine, "STOP");
            let (r, c) = measure(b);
            signal(&engine, "CONT");
            old_rates.push(r);
            old_cpus.push(c);
        }
        let (r, c) = measure(&engine);
        rates.push(r);
        cpus.push(c);
    }
    let ratios: Vec<f64> = rates.iter().map(|r| r / ideal).collect();
    let (m, lo, hi) = spread(&ratios);
    println!(
        "ratio: fan-out over 2 sources of {} ms, c={CONNECTIONS} = {m:.2}x (spread {lo:.2}-{hi:.2}; engine {:.0} req/s, anchor ideal {ideal:.0} req/s)",
        latency.as_millis(),
        spread(&rates).0
    );
    let (cpu, ..) = spread(&cpus);
    println!(
        "figure: engine CPU per miss = {:.1} us (user + system, median of {REPEATS} wrk runs)",
        cpu * 1e6
    );
    if baseline.is_some() {
        let (old_cpu, ..) = spread(&old_cpus);
        let per: Vec<f64> = cpus.iter().zip(&old_cpus).map(|(n, o)| n / o).collect();
        let (m, lo, hi) = spread(&per);
        println!(
            "ratio: CPU per miss against the baseline = {m:.2}x (spread {lo:.2}-{hi:.2}; engine {:.1} us, anchor baseline {:.1} us)",
            cpu * 1e6,
            old_cpu * 1e6
        );
        let per: Vec<f64> = rates.iter().zip(&old_rates).map(|(n, o)| n / o).collect();
        let (m, lo, hi) = spread(&per);
        println!(
            "ratio: fan-out throughput against the baseline = {m:.2}x (spread {lo:.2}-{hi:.2}; engine {:.0} req/s, anchor baseline {:.0} req/s)",
            spread(&rates).0,
            spread(&old_rates).0
        );
    }
}
