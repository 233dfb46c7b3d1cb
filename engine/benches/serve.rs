//! Benchmark of `engine serve` (the release binary) against the systems a user would otherwise
//! reach for (issue 16), each pair run interleaved and repeated: cached search against nginx
//! `proxy_cache` HIT (c=1, c=32), `/healthz` against nginx `return 200`, a miss that fills the
//! cache against nginx `proxy_cache` MISS on the same source (and the CPU time of each per
//! miss), fan-out over two 20 ms sources against the ideal, a hung and a refusing source against
//! their timeout and a failed connect, and queued push acceptance against the figure of
//! 2026-11-27. Each result is one `ratio:` line (`scripts/bench.sh` collects them).
//!
//! Run: `scripts/bench.sh` (installs nginx and wrk, pins the engine and nginx to core 0 and
//! this process, its stand-in sources and wrk to core 1). Directly: `cargo bench -p engine
//! --bench serve`, with `BENCH_REPS` (default 3), `BENCH_SECONDS` (per wrk run, default 5)
//! and `BENCH_SUT_CPU` (the core for the engine and nginx; unset: not pinned).

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::extract::RawQuery;
use axum::routing::get;
use serde_json::json;

/// The token of the push connector.
const PUSH_TOKEN: &str = "bench-token-0123456789";
/// Queued push acceptance measured for issue 16 (2026-11-27), the anchor of that line.
const PUSH_BEFORE: f64 = 1444.0;
/// The delay of the slow sources of the fan-out, and the ideal time of a request over them.
const SLOW: Duration = Duration::from_millis(20);
const IDEAL_FANOUT: Duration = Duration::from_millis(21);
/// The hung source's timeout (the issue's 10 s scaled down to keep the run short).
const HUNG_TIMEOUT: Duration = Duration::from_secs(2);
/// The anchor of a refusing source: a failed connect and a partial answer, under 5 ms.
const REFUSED_ANCHOR: Duration = Duration::from_millis(5);

struct Opts {
    reps: usize,
    seconds: u64,
    sut_cpu: Option<String>,
}

impl Opts {
    fn from_env() -> Opts {
        let num = |k: &str, d: u64| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        Opts {
            reps: num("BENCH_REPS", 3).max(1) as usize,
            seconds: num("BENCH_SECONDS", 5).max(1),
            sut_cpu: std::env::var("BENCH_SUT_CPU")
                .ok()
                .filter(|v| !v.is_empty()),
        }
    }

    /// A command for the system under test, pinned to its core when one is given.
    fn sut(&self, program: &Path) -> Command {
        match &self.sut_cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpu]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A FHIR searchset of one Patient.
fn searchset(q: &str) -> serde_json::Value {
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "entry": [{"resource": {"resourceType": "Patient", "id": format!("p{}", q.len()), "active": true}}]
    })
}

/// The stand-in sources, on one runtime of this process: the regulator API (about 1 KB of
/// JSON per query), FHIR servers answering at once (`/fast`) and after 20 ms (`/slow`), and a
/// source that accepts connections and never answers. Gives (labels port, FHIR port, hung port).
fn standins() -> (u16, u16, u16) {
    let labels = TcpListener::bind("127.0.0.1:0").expect("bind");
    let fhir = TcpListener::bind("127.0.0.1:0").expect("bind");
    let hung = TcpListener::bind("127.0.0.1:0").expect("bind");
    let ports = [&labels, &fhir, &hung].map(|l| l.local_addr().expect("addr").port());
    for l in [&labels, &fhir, &hung] {
        l.set_nonblocking(true).expect("nonblocking");
    }
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
            let fhir_app = axum::Router::new()
                .route(
                    "/fast/Patient",
                    get(|RawQuery(q): RawQuery| async move {
                        axum::Json(searchset(&q.unwrap_or_default()))
                    }),
                )
                .route(
                    "/slow/Patient",
                    get(|RawQuery(q): RawQuery| async move {
                        tokio::time::sleep(SLOW).await;
                        axum::Json(searchset(&q.unwrap_or_default()))
                    }),
                );
            let labels = tokio::net::TcpListener::from_std(labels).expect("listener");
            let fhir = tokio::net::TcpListener::from_std(fhir).expect("listener");
            let hung = tokio::net::TcpListener::from_std(hung).expect("listener");
            tokio::spawn(async move { axum::serve(labels, app).await.expect("stand-in") });
            tokio::spawn(async move { axum::serve(fhir, fhir_app).await.expect("stand-in") });
            // Hung: every connection accepted, read and never answered.
            loop {
                let Ok((mut s, _)) = hung.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                });
            }
        });
    });
    (ports[0], ports[1], ports[2])
}

/// The definitions the engine serves: `labels` (a cached search over the regulator API),
/// `fanout` (two 20 ms FHIR sources, no cache), `hung-N` and `refused-N` (a quick source and a
/// failing one, one connector per repetition so that no breaker carries over), `hook` (queued
/// push, NDJSON sink).
fn definitions(labels: u16, fhir: u16, hung: u16, refused: u16, reps: usize) -> String {
    let mut text = format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: labels }}
spec:
  strategy: pull
  fhirVersion: R5
  source: {{ url: "http://127.0.0.1:{labels}", timeout: 10s, concurrency: 256 }}
  pull:
    resources:
      - type: MedicinalProductDefinition
        search:
          params: {{ name: {{}} }}
          request: {{ path: /drug/label.json, query: {{ search: "brand:{{{{params.name}}}}" }} }}
          records: $.results[*]
          total: $.meta.results.total
  cache: {{ ttl: 1h, maxEntries: 100000, maxBytes: 512MiB }}
  mapping:
    resourceType: MedicinalProductDefinition
    id: {{ $path: $.set_id }}
    name:
      - $each: "$.openfda.brand_name[*]"
        $do: {{ productName: "{{{{item}}}}" }}
    description: {{ $path: "$.indications_and_usage[0]" }}
    statusDate: {{ $dateTime: {{ $path: $.effective_time }} }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: hook }}
spec:
  strategy: push
  push:
    auth: {{ bearer: {{ token: {PUSH_TOKEN} }} }}
    mode: queued
  mapping: {{ resourceType: Patient, id: {{ $path: $.id }} }}
---
"#
    );
    let source = |name: &str, url: String, extra: &str| {
        format!(
            "apiVersion: fosps.gravitate-health.eu/v1\nkind: Source\nmetadata: {{ name: {name} }}\nspec:\n  type: fhir\n  url: \"{url}\"\n{extra}---\n"
        )
    };
    let connector = |name: &str, sources: &str| {
        format!(
            "apiVersion: fosps.gravitate-health.eu/v1\nkind: Connector\nmetadata: {{ name: {name} }}\nspec:\n  strategy: pull\n  sources: [{sources}]\n  pull:\n    resources:\n      - type: Patient\n        search:\n          params:\n            _count: {{ type: integer, default: 20, max: 100 }}\n---\n"
        )
    };
    let slow = format!("http://127.0.0.1:{fhir}/slow");
    let fast = format!("http://127.0.0.1:{fhir}/fast");
    text += &source("slow-a", slow.clone(), "");
    text += &source("slow-b", slow, "");
    text += &connector("fanout", "slow-a, slow-b");
    let t = HUNG_TIMEOUT.as_secs();
    for i in 0..reps {
        text += &source(&format!("fast-h{i}"), fast.clone(), "");
        text += &source(
            &format!("hung-{i}"),
            format!("http://127.0.0.1:{hung}"),
            &format!("  timeout: {t}s\n  retries: 2\n"),
        );
        text += &connector(&format!("hung-{i}"), &format!("fast-h{i}, hung-{i}"));
        text += &source(&format!("fast-r{i}"), fast.clone(), "");
        text += &source(
            &format!("refused-{i}"),
            format!("http://127.0.0.1:{refused}"),
            "  timeout: 10s\n  retries: 2\n",
        );
        text += &connector(&format!("refused-{i}"), &format!("fast-r{i}, refused-{i}"));
    }
    text
}

/// A child process killed and waited for when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// User plus system CPU time so far (`/proc/PID/stat`).
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).expect("stat");
        // Fields after the command name (which is in parentheses): utime is the 12th, stime 13th.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
        Duration::from_secs_f64(ticks as f64 / clock_ticks())
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn wait_ok(url: &str, what: &str) {
    for _ in 0..200 {
        if get_status(url).is_some_and(|c| (200..300).contains(&c)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not start");
}

fn start_engine(opts: &Opts, dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let child = opts
        .sut(Path::new(env!("CARGO_BIN_EXE_engine")))
        .args(["serve"])
        .arg(dir.join("defs"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--log", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("engine starts");
    let p = Proc(child);
    wait_ok(&format!("http://127.0.0.1:{port}/healthz"), "the engine");
    (p, port)
}

/// nginx as a caching proxy in front of the regulator stand-in, with `return 200` at
/// `/healthz`, in a temporary directory, as the current user, one worker process, no
/// access log (the engine runs with `--log warn`, so neither writes a line per request).
fn start_nginx(opts: &Opts, dir: &Path, upstream: u16) -> (Proc, u16) {
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    proxy_cache_path {d}/cache levels=1:2 keys_zone=answers:32m max_size=2g inactive=1h use_temp_path=off;
    upstream source {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location = /healthz {{ default_type application/json; return 200 '{{"status":"ok"}}'; }}
        location / {{
            proxy_pass http://source;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache answers;
            proxy_cache_valid 200 1h;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
}}
"#
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
    let child = opts
        .sut(Path::new(&which("nginx")))
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("nginx starts");
    let p = Proc(child);
    wait_ok(&format!("http://127.0.0.1:{port}/healthz"), "nginx");
    (p, port)
}

fn which(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// One wrk run: requests per second and the number of requests.
struct Run {
    rate: f64,
    requests: f64,
}

fn wrk(url: &str, connections: u32, seconds: u64, script: Option<&Path>) -> Run {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c", &connections.to_string(), "-d"])
        .arg(format!("{seconds}s"));
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("wrk runs (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.contains("Non-2xx"), "wrk saw errors on {url}: {text}");
    if let Some(l) = text.lines().find(|l| l.contains("Socket errors")) {
        eprintln!("note: {url}: {}", l.trim());
    }
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk output: {text}"));
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk output: {text}"));
    Run { rate, requests }
}

/// A plain blocking GET over std: the status, if any answer came.
fn get_status(url: &str) -> Option<u16> {
    use std::io::Read;
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Prints one result: the ratios of each repetition, and the engine's and anchor's medians.
fn ratio(measure: &str, ratios: &[f64], engine: (f64, &str), anchor: (&str, f64, &str)) {
    let (lo, hi) = ratios
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), r| {
            (a.min(*r), b.max(*r))
        });
    println!(
        "ratio: {measure} = {:.2}x (spread {lo:.2}-{hi:.2}; engine {} {}, anchor {} {} {})",
        median(ratios),
        fmt(engine.0),
        engine.1,
        anchor.0,
        fmt(anchor.1),
        anchor.2
    );
    let _ = std::io::stdout().flush();
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// Engine and anchor throughput, interleaved, `reps` times each: (engine rates, anchor rates).
fn pair(
    opts: &Opts,
    engine: &str,
    anchor: &str,
    connections: u32,
    script: Option<&Path>,
) -> (Vec<f64>, Vec<f64>) {
    let (mut e, mut a) = (Vec::new(), Vec::new());
    for _ in 0..opts.reps {
        e.push(wrk(engine, connections, opts.seconds, script).rate);
        a.push(wrk(anchor, connections, opts.seconds, script).rate);
    }
    (e, a)
}

fn throughput(measure: &str, anchor_name: &str, (e, a): (Vec<f64>, Vec<f64>)) {
    let ratios: Vec<f64> = e.iter().zip(&a).map(|(e, a)| e / a).collect();
    ratio(
        measure,
        &ratios,
        (median(&e), "req/s"),
        (anchor_name, median(&a), "req/s"),
    );
}

/// The wall time of one request.
fn timed(url: &str) -> Duration {
    let started = Instant::now();
    let status = get_status(url);
    let took = started.elapsed();
    assert!(
        status.is_some_and(|s| s < 500 || s == 504),
        "{url}: {status:?}"
    );
    took
}

fn main() {
    for (tool, package) in [("wrk", "wrk"), ("nginx", "nginx")] {
        if !which(tool).exists() && Command::new(tool).arg("-v").output().is_err() {
            eprintln!("{tool} is needed: apt-get install {package} (scripts/bench.sh does it)");
            std::process::exit(2);
        }
    }
    let opts = Opts::from_env();
    let refused = free_port();
    let (labels, fhir, hung) = standins();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("defs")).expect("defs");
    std::fs::write(
        dir.path().join("defs/bench.yaml"),
        definitions(labels, fhir, hung, refused, opts.reps),
    )
    .expect("write");
    let ngx_dir = dir.path().join("nginx");
    std::fs::create_dir_all(&ngx_dir).expect("nginx dir");
    let (engine, eport) = start_engine(&opts, dir.path());
    let (nginx, nport) = start_nginx(&opts, &ngx_dir, labels);
    let e = format!("http://127.0.0.1:{eport}");
    let n = format!("http://127.0.0.1:{nport}");
    println!(
        "reps {}, {} s per wrk run, system under test on core {}; engine {e}, nginx {n}",
        opts.reps,
        opts.seconds,
        opts.sut_cpu.as_deref().unwrap_or("(not pinned)")
    );

    // Cache hits: one search, warmed, against nginx's cached answer of the same source.
    let hit = format!("{e}/fhir/labels/MedicinalProductDefinition?name=Painaway");
    let nhit = format!("{n}/drug/label.json?search=brand:Painaway");
    wait_ok(&hit, "the warm-up search");
    wait_ok(&nhit, "nginx's warm-up");
    throughput(
        "cached search c=1",
        "nginx proxy_cache HIT",
        pair(&opts, &hit, &nhit, 1, None),
    );
    throughput(
        "cached search c=32",
        "nginx proxy_cache HIT",
        pair(&opts, &hit, &nhit, 32, None),
    );
    throughput(
        "/healthz c=32",
        "nginx return 200",
        pair(
            &opts,
            &format!("{e}/healthz"),
            &format!("{n}/healthz"),
            32,
            None,
        ),
    );

    // Misses that fill the cache: a new query each request, on both.
    let script = dir.path().join("unique.lua");
    std::fs::write(
        &script,
        "counter = 0\nrequest = function()\n  counter = counter + 1\n  return wrk.format(nil, wrk.path .. counter .. '-' .. math.random(1, 1000000000))\nend\n",
    )
    .expect("script");
    let (mut er, mut nr, mut ecpu, mut ncpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.reps {
        let c0 = engine.cpu();
        let r = wrk(
            &format!("{e}/fhir/labels/MedicinalProductDefinition?name=m"),
            1,
            opts.seconds,
            Some(&script),
        );
        er.push(r.rate);
        ecpu.push((engine.cpu() - c0).as_secs_f64() * 1e6 / r.requests);
        let c0 = nginx.cpu();
        let r = wrk(
            &format!("{n}/drug/label.json?search=brand:m"),
            1,
            opts.seconds,
            Some(&script),
        );
        nr.push(r.rate);
        ncpu.push((nginx.cpu() - c0).as_secs_f64() * 1e6 / r.requests);
    }
    throughput("cache-filling miss c=1", "nginx proxy_cache MISS", (er, nr));
    let ratios: Vec<f64> = ecpu.iter().zip(&ncpu).map(|(e, a)| e / a).collect();
    ratio(
        "CPU per miss (lower is better)",
        &ratios,
        (median(&ecpu), "us"),
        ("nginx proxy_cache MISS", median(&ncpu), "us"),
    );

    // Fan-out over two 20 ms sources, no cache, 32 connections.
    let fan = format!("{e}/fhir/fanout/Patient?_count=10");
    wait_ok(&fan, "the fan-out search");
    let ideal = 32.0 / IDEAL_FANOUT.as_secs_f64();
    let (mut rates, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..opts.reps {
        let c0 = engine.cpu();
        let r = wrk(&fan, 32, opts.seconds, None);
        rates.push(r.rate);
        cpu.push((engine.cpu() - c0).as_secs_f64() * 1e6 / r.requests);
    }
    ratio(
        "fan-out over 2 sources of 20 ms c=32",
        &rates.iter().map(|r| r / ideal).collect::<Vec<_>>(),
        (median(&rates), "req/s"),
        ("ideal (32 / 21 ms)", ideal, "req/s"),
    );
    // What the time over the ideal is made of: 32 requests arrive and their 64 source answers
    // come back at about the same moment, and the engine's one core serves them in turn, so a
    // request waits on average for about half of 32 requests' CPU.
    let per = median(&cpu);
    println!(
        "note: fan-out CPU per request {per:.0} us (engine user + system); half of 32 of them {:.2} ms, against {:.2} ms per request over the ideal",
        per * 16.0 / 1000.0,
        (32.0 / median(&rates) - IDEAL_FANOUT.as_secs_f64()) * 1000.0,
    );

    // Faults: one request each, on a connector of its own per repetition.
    let hung_times: Vec<f64> = (0..opts.reps)
        .map(|i| timed(&format!("{e}/fhir/hung-{i}/Patient")).as_secs_f64())
        .collect();
    ratio(
        &format!(
            "search with one source hung (timeout {}s, retries 2), lower is better",
            HUNG_TIMEOUT.as_secs()
        ),
        &hung_times
            .iter()
            .map(|t| t / HUNG_TIMEOUT.as_secs_f64())
            .collect::<Vec<_>>(),
        (median(&hung_times), "s"),
        ("the source's timeout", HUNG_TIMEOUT.as_secs_f64(), "s"),
    );
    let refused_times: Vec<f64> = (0..opts.reps)
        .map(|i| timed(&format!("{e}/fhir/refused-{i}/Patient")).as_secs_f64() * 1000.0)
        .collect();
    let anchor_ms = REFUSED_ANCHOR.as_secs_f64() * 1000.0;
    ratio(
        "search with one source refusing connections, lower is better",
        &refused_times
            .iter()
            .map(|t| t / anchor_ms)
            .collect::<Vec<_>>(),
        (median(&refused_times), "ms"),
        ("a failed connect", anchor_ms, "ms"),
    );

    // Queued push acceptance: a new payload each request, each flushed before its 202.
    let push = dir.path().join("push.lua");
    std::fs::write(
        &push,
        format!(
            "counter = 0\nrequest = function()\n  counter = counter + 1\n  local body = '{{\"id\":\"p' .. counter .. '-' .. math.random(1, 1000000000) .. '\"}}'\n  return wrk.format('POST', nil, {{['Content-Type'] = 'application/json', ['Authorization'] = 'Bearer {PUSH_TOKEN}'}}, body)\nend\n"
        ),
    )
    .expect("script");
    let rates: Vec<f64> = (0..opts.reps)
        .map(|_| wrk(&format!("{e}/push/hook"), 16, opts.seconds, Some(&push)).rate)
        .collect();
    ratio(
        "queued push acceptance c=16",
        &rates.iter().map(|r| r / PUSH_BEFORE).collect::<Vec<_>>(),
        (median(&rates), "req/s"),
        ("2026-11-27 figure", PUSH_BEFORE, "req/s"),
    );
    drop(engine);
    drop(nginx);
}
