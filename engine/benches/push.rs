//! Benchmark of queued push acceptance of `engine serve` (issue 16, part 4): `wrk` posting a
//! distinct payload per request (a Lua script) to a queued push connector with an NDJSON sink,
//! each answered 202 only once its payload is flushed to the local queue. Printed: payloads
//! accepted per second at each concurrency (`PUSH_CONNECTIONS`, default `1,32,256`); with
//! `ENGINE_BASELINE_BIN=/path/to/an/earlier/engine`, that binary is measured in the same run,
//! alternating, three times (the one not measured paused, so that its queue's drain takes
//! nothing from the other), and each rate printed as a ratio to it.
//! Run: `cargo bench -p engine --bench push` (needs `wrk`). `ENGINE_BIN` measures another
//! build of this engine (a debug one, say) instead of the release binary cargo builds.
//!
//! When Debian's `redis-server` is installed, a second engine of the same build queues on
//! Redis Streams (`--push-queue`, a server started here with AOF and `appendfsync always` in
//! a temp dir), measured alternately with the local-queue engine in the same run (the other
//! paused), and its rate printed as a ratio to the local queue's.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const WRK_SECONDS: &str = "5s";
const REPEATS: usize = 3;
const TOKEN: &str = "bench-token-0123456789abcdef";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn definitions(sink_dir: &Path) -> String {
    format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata: {{ name: files }}
spec:
  ndjson: {{ dir: \"{}\" }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: feed }}
spec:
  strategy: push
  sink: files
  push:
    auth: {{ bearer: {{ token: \"{TOKEN}\" }} }}
    mode: queued
  mapping:
    resourceType: Patient
    id: {{ $path: $.id }}
    name: [ {{ family: {{ $path: \"$.name\" }} }} ]
",
        sink_dir.display()
    )
}

/// A wrk script posting `{"id": "<run>-<n>", "name": ...}`, a new `n` per request.
fn script(dir: &Path, run: &str) -> PathBuf {
    let path = dir.join(format!("push-{run}.lua"));
    std::fs::write(
        &path,
        format!(
            r#"local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {TOKEN}"
request = function()
  n = n + 1
  return wrk.format(nil, "/push/feed", nil, '{{"id": "{run}-' .. n .. '", "name": "Family {run} ' .. n .. '"}}')
end
"#
        ),
    )
    .expect("write the script");
    path
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
    start_with(bin, defs, state, &[])
}

fn start_with(bin: &Path, defs: &Path, state: &Path, extra: &[&str]) -> Engine {
    let port = free_port();
    let mut child = Command::new(bin)
        .arg("serve")
        .arg(defs)
        .arg("--state-dir")
        .arg(state)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--log", "warn"])
        .args(extra)
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

/// Accepted (2xx) payloads per second of one wrk run.
fn wrk(e: &Engine, connections: usize, script: &Path) -> f64 {
    let out = Command::new("wrk")
        .args(["-t1", "-c", &connections.to_string(), "-d", WRK_SECONDS])
        .arg("-s")
        .arg(script)
        .arg(format!("http://127.0.0.1:{}/push/feed", e.1))
        .output()
        .expect("wrk runs (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if text.contains("Non-2xx") {
        eprintln!("wrk saw refused payloads:\n{text}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A `redis-server` as a push queue needs it (AOF, `appendfsync always`, no eviction) on a
/// free port with its files in `dir`, once it answers; killed when dropped.
struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis(dir: &Path) -> Option<Redis> {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .args(["--maxmemory-policy", "noeviction", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let redis = Redis(child, port);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(redis);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
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
    let connections: Vec<usize> = std::env::var("PUSH_CONNECTIONS")
        .unwrap_or_else(|_| "1,32,256".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let defs = dir.path().join("defs");
    std::fs::create_dir(&defs).expect("mkdir");
    std::fs::write(
        defs.join("push.yaml"),
        definitions(&dir.path().join("ndjson")),
    )
    .expect("write");
    let bin = std::env::var("ENGINE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_BIN_EXE_engine")));
    let engine = start(&bin, &defs, &dir.path().join("state"));
    let baseline = std::env::var("ENGINE_BASELINE_BIN")
        .ok()
        .map(|b| start(Path::new(&b), &defs, &dir.path().join("state-baseline")));
    let redis_dir = dir.path().join("redis");
    std::fs::create_dir(&redis_dir).expect("mkdir");
    let redis = start_redis(&redis_dir);
    if redis.is_none() {
        eprintln!("note: redis-server is not installed: the Redis queue is not measured");
    }
    let on_redis = redis.as_ref().map(|r| {
        let url = format!("redis://127.0.0.1:{}", r.1);
        start_with(
            &bin,
            &defs,
            &dir.path().join("state-redis"),
            &["--push-queue", &url],
        )
    });
    let mut run = 0;
    let mut next_script = || {
        run += 1;
        script(dir.path(), &format!("r{run}"))
    };
    for c in connections {
        let (mut new, mut old, mut streams) = (Vec::new(), Vec::new(), Vec::new());
        let all: Vec<&Engine> = [Some(&engine), baseline.as_ref(), on_redis.as_ref()]
            .into_iter()
            .flatten()
            .collect();
        // One engine measured at a time, the others paused.
        let mut alone = |e: &Engine| {
            for other in all.iter().filter(|o| !std::ptr::eq(**o, e)) {
                signal(other, "STOP");
            }
            let rate = wrk(e, c, &next_script());
            for other in all.iter().filter(|o| !std::ptr::eq(**o, e)) {
                signal(other, "CONT");
            }
            rate
        };
        for _ in 0..REPEATS {
            if let Some(b) = &baseline {
                old.push(alone(b));
            }
            if let Some(r) = &on_redis {
                streams.push(alone(r));
            }
            new.push(alone(&engine));
        }
        let (m, lo, hi) = spread(&new);
        println!(
            "figure: queued push acceptance, c={c} = {m:.0} payloads/s (spread {lo:.0}-{hi:.0})"
        );
        if !streams.is_empty() {
            let per: Vec<f64> = streams.iter().zip(&new).map(|(r, l)| r / l).collect();
            let (r, lo, hi) = spread(&per);
            println!(
                "ratio: queued push acceptance on Redis vs the local queue, c={c} = {r:.2}x (spread {lo:.2}-{hi:.2}; engine {:.0} payloads/s, anchor local queue {m:.0} payloads/s)",
                spread(&streams).0
            );
        }
        if baseline.is_some() {
            let per: Vec<f64> = new.iter().zip(&old).map(|(n, o)| n / o).collect();
            let (r, lo, hi) = spread(&per);
            println!(
                "ratio: queued push acceptance, c={c} = {r:.2}x (spread {lo:.2}-{hi:.2}; engine {m:.0} payloads/s, anchor baseline {:.0} payloads/s)",
                spread(&old).0
            );
        }
    }
}
