//! Benchmark of `engine serve` (the release binary) against the systems a user would otherwise
//! reach for (issue 16), each pair run interleaved and repeated: cached search against nginx
//! `proxy_cache` HIT (c=1, c=32), `/healthz` against nginx `return 200`, a miss that fills the
//! cache against nginx `proxy_cache` MISS on the same source (and the CPU time of each per
//! miss), fan-out over two 20 ms sources against the ideal, a hung and a refusing source against
//! their timeout and a failed connect, and queued push acceptance against the figure of
//! 2026-11-27. Each result is one `ratio:` line (`scripts/bench.sh` collects them).
//!
//! The cached search at one connection and the cache-filling miss are also measured against
//! their floors (`floor`): a bare hyper server answering the engine's cached answer as fixed
//! bytes, and one forwarding each miss to the same source with hyper-util's pooled client,
//! both pinned like the engine and taking turns with it and nginx. The engine over its floor
//! is what the engine adds; the floor is what the HTTP stack and the kernel cost.
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

/// A floor anchor (`floor`): this bench binary again, pinned like the engine, serving `kind`
/// with `envs` on a port of its own; `probe` is a path it answers 200 once it is up.
fn start_floor(opts: &Opts, kind: &str, envs: &[(&str, String)], probe: &str) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = opts.sut(&std::env::current_exe().expect("this bench's path"));
    cmd.env("BENCH_FLOOR", kind)
        .env("BENCH_FLOOR_PORT", port.to_string());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the floor starts");
    let p = Proc(child);
    wait_ok(&format!("http://127.0.0.1:{port}{probe}"), "a floor anchor");
    (p, port)
}

/// Rates and CPU per request of wrk runs against several servers taking turns, `reps` rounds.
struct Turns {
    rates: Vec<Vec<f64>>,
    cpu_us: Vec<Vec<f64>>,
}

fn turns(opts: &Opts, sides: &[(&Proc, String)], connections: u32, script: Option<&Path>) -> Turns {
    let mut t = Turns {
        rates: vec![Vec::new(); sides.len()],
        cpu_us: vec![Vec::new(); sides.len()],
    };
    for _ in 0..opts.reps {
        for (i, (proc_, url)) in sides.iter().enumerate() {
            let c0 = proc_.cpu();
            let r = wrk(url, connections, opts.seconds, script);
            t.rates[i].push(r.rate);
            t.cpu_us[i].push((proc_.cpu() - c0).as_secs_f64() * 1e6 / r.requests);
        }
    }
    t
}

/// The paired ratios of `a` to `b`, round by round.
fn per_round(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| a / b).collect()
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
    String::from_utf8_lossy(&get_raw(url)?)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
}

/// A plain blocking GET over std: the answer's bytes as they came, if the connection was made.
fn get_raw(url: &str) -> Option<Vec<u8>> {
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
    Some(buf)
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
    if let Some((port, mode)) = floor::from_env() {
        floor::serve(port, mode);
        return;
    }
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
    // The floors: the engine's cached answer, captured once, served as fixed bytes by a bare
    // hyper server (hit), and a hyper server forwarding each miss to the same source with
    // hyper-util's client (miss).
    let answer = dir.path().join("cached-answer");
    std::fs::write(&answer, get_raw(&hit).expect("the cached answer")).expect("answer");
    let (hit_floor, hport) = start_floor(
        &opts,
        "hit",
        &[("BENCH_FLOOR_ANSWER", answer.display().to_string())],
        "/",
    );
    let (miss_floor, mport) = start_floor(
        &opts,
        "miss",
        &[("BENCH_FLOOR_UPSTREAM", labels.to_string())],
        "/?name=warm",
    );
    let fhit =
        format!("http://127.0.0.1:{hport}/fhir/labels/MedicinalProductDefinition?name=Painaway");
    let t = turns(
        &opts,
        &[
            (&engine, hit.clone()),
            (&nginx, nhit.clone()),
            (&hit_floor, fhit),
        ],
        1,
        None,
    );
    throughput(
        "cached search c=1",
        "nginx proxy_cache HIT",
        (t.rates[0].clone(), t.rates[1].clone()),
    );
    throughput(
        "cached search c=1, engine / floor",
        "hit floor (hyper, fixed bytes)",
        (t.rates[0].clone(), t.rates[2].clone()),
    );
    ratio(
        "CPU per cached search c=1, engine / floor (lower is better)",
        &per_round(&t.cpu_us[0], &t.cpu_us[2]),
        (median(&t.cpu_us[0]), "us"),
        ("hit floor (hyper, fixed bytes)", median(&t.cpu_us[2]), "us"),
    );
    println!(
        "note: cached search c=1: engine {:.0} req/s, {:.1} us CPU per request; hit floor {:.0} req/s, {:.1} us; nginx HIT {:.0} req/s, {:.1} us",
        median(&t.rates[0]),
        median(&t.cpu_us[0]),
        median(&t.rates[2]),
        median(&t.cpu_us[2]),
        median(&t.rates[1]),
        median(&t.cpu_us[1]),
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
    let t = turns(
        &opts,
        &[
            (
                &engine,
                format!("{e}/fhir/labels/MedicinalProductDefinition?name=m"),
            ),
            (&nginx, format!("{n}/drug/label.json?search=brand:m")),
            (
                &miss_floor,
                format!("http://127.0.0.1:{mport}/fhir/labels/MedicinalProductDefinition?name=m"),
            ),
        ],
        1,
        Some(&script),
    );
    throughput(
        "cache-filling miss c=1",
        "nginx proxy_cache MISS",
        (t.rates[0].clone(), t.rates[1].clone()),
    );
    ratio(
        "CPU per miss (lower is better)",
        &per_round(&t.cpu_us[0], &t.cpu_us[1]),
        (median(&t.cpu_us[0]), "us"),
        ("nginx proxy_cache MISS", median(&t.cpu_us[1]), "us"),
    );
    ratio(
        "CPU per miss, engine / floor (lower is better)",
        &per_round(&t.cpu_us[0], &t.cpu_us[2]),
        (median(&t.cpu_us[0]), "us"),
        (
            "miss floor (hyper server + client)",
            median(&t.cpu_us[2]),
            "us",
        ),
    );
    println!(
        "note: cache-filling miss c=1: engine {:.0} req/s, {:.1} us CPU per miss; miss floor {:.0} req/s, {:.1} us; nginx MISS {:.0} req/s, {:.1} us; half of the first measured 104 us is 52 us",
        median(&t.rates[0]),
        median(&t.cpu_us[0]),
        median(&t.rates[2]),
        median(&t.cpu_us[2]),
        median(&t.rates[1]),
        median(&t.cpu_us[1]),
    );
    drop(hit_floor);
    drop(miss_floor);

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

/// The floor anchors: the least a Rust HTTP server on this stack (tokio's current-thread
/// runtime, hyper 1's HTTP/1 server, hyper-util's pooled client) can spend on the bench's two
/// requests. Each runs as this bench binary started again with `BENCH_FLOOR` set, so that it is
/// a process of its own, pinned to the engine's core like the engine, and its CPU is counted
/// the same way (`/proc/PID/stat`).
mod floor {
    use std::convert::Infallible;
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::body::Incoming;
    use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::{Request, Response, StatusCode};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    /// What the floor answers.
    pub enum Mode {
        /// Every request: the same status line, headers and body (the engine's cached answer,
        /// captured once), written by hyper with its `Date` and `Content-Length`.
        Hit {
            headers: Vec<(HeaderName, HeaderValue)>,
            body: Bytes,
        },
        /// Every request: its `name` query value sent to the source as the engine's `labels`
        /// search sends it (`/drug/label.json?search=brand:NAME`) over one pooled client, and
        /// the source's body returned as it came (no mapping, no cache).
        Miss { upstream: u16 },
    }

    /// The floor's mode from the environment of a `BENCH_FLOOR` start, if this is one.
    pub fn from_env() -> Option<(u16, Mode)> {
        let kind = std::env::var("BENCH_FLOOR").ok()?;
        let port = std::env::var("BENCH_FLOOR_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .expect("BENCH_FLOOR_PORT");
        let mode = match kind.as_str() {
            "hit" => {
                let raw = std::fs::read(std::env::var("BENCH_FLOOR_ANSWER").expect("answer"))
                    .expect("the captured answer");
                let (headers, body) = parse_answer(&raw);
                Mode::Hit { headers, body }
            }
            "miss" => Mode::Miss {
                upstream: std::env::var("BENCH_FLOOR_UPSTREAM")
                    .ok()
                    .and_then(|p| p.parse().ok())
                    .expect("BENCH_FLOOR_UPSTREAM"),
            },
            other => panic!("BENCH_FLOOR={other}: hit or miss"),
        };
        Some((port, mode))
    }

    /// The headers (but those hyper writes itself, and `Connection`) and body of a raw HTTP/1.1
    /// answer with a `Content-Length`.
    fn parse_answer(raw: &[u8]) -> (Vec<(HeaderName, HeaderValue)>, Bytes) {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an answer head");
        let head = std::str::from_utf8(&raw[..end]).expect("an ASCII head");
        let mut headers = Vec::new();
        for line in head.split("\r\n").skip(1) {
            let (k, v) = line.split_once(':').expect("a header line");
            let k = k.trim().to_ascii_lowercase();
            assert!(k != "transfer-encoding", "the cached answer is not chunked");
            if matches!(k.as_str(), "date" | "content-length" | "connection") {
                continue;
            }
            headers.push((
                HeaderName::from_bytes(k.as_bytes()).expect("a header name"),
                HeaderValue::from_str(v.trim()).expect("a header value"),
            ));
        }
        (headers, Bytes::copy_from_slice(&raw[end + 4..]))
    }

    /// Serves `mode` on 127.0.0.1:`port` until killed.
    pub fn serve(port: u16, mode: Mode) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
                .await
                .expect("the floor's port");
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            let client: Client<HttpConnector, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build(connector);
            let mode = std::sync::Arc::new(mode);
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (mode, client) = (mode.clone(), client.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (mode, client) = (mode.clone(), client.clone());
                    async move { Ok::<_, Infallible>(answer(&mode, &client, req).await) }
                });
                tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }

    async fn answer(
        mode: &Mode,
        client: &Client<HttpConnector, Empty<Bytes>>,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        match mode {
            Mode::Hit { headers, body } => {
                let mut resp = Response::new(Full::new(body.clone()));
                for (k, v) in headers {
                    resp.headers_mut().insert(k, v.clone());
                }
                resp
            }
            Mode::Miss { upstream } => {
                let name = req
                    .uri()
                    .query()
                    .unwrap_or_default()
                    .split('&')
                    .find_map(|p| p.strip_prefix("name="))
                    .unwrap_or_default();
                let uri =
                    format!("http://127.0.0.1:{upstream}/drug/label.json?search=brand:{name}");
                let sent = client
                    .request(Request::get(uri).body(Empty::new()).expect("a request"))
                    .await;
                let failed = || {
                    let mut r = Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = StatusCode::BAD_GATEWAY;
                    r
                };
                let Ok(resp) = sent else {
                    return failed();
                };
                let (parts, body) = resp.into_parts();
                let Ok(body) = body.collect().await else {
                    return failed();
                };
                let mut r = Response::new(Full::new(body.to_bytes()));
                *r.status_mut() = parts.status;
                if let Some(t) = parts.headers.get(CONTENT_TYPE) {
                    r.headers_mut().insert(CONTENT_TYPE, t.clone());
                }
                r
            }
        }
    }
}
