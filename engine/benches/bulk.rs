//! Benchmark of a FHIR Bulk Data import: `engine run` (the release binary, a child process)
//! of a cron connector whose `bulkExport` reads 10,000 and 100,000 Patients (files of 25,000
//! lines, and one of 10,000) from the Bulk Data stand-in of the tests (`bulk_standin`, in this
//! process, on 127.0.0.1) into the embedded NDJSON sink: wall time from start to exit, and
//! peak RSS of the engine (its `VmHWM`). Against two anchors measured in the same run,
//! interleaved: the wall time of reading the same files with a plain HTTP client, line by line,
//! each line parsed as JSON (the floor of any import), and the peak RSS of the 10,000 run (an
//! import that holds what it reads grows ten times; a streamed one stays flat).
//! The NDJSON sink, not Helios: the measure is the engine's reading, mapping and writing;
//! Helios's own ingestion is the sink bench's subject (`benches/sink.rs`).
//! Run: `cargo bench -p engine --bench bulk`. `BENCH_REPS` sets the repetitions (default 3).

#[allow(
    dead_code,
    reason = "the tests' Bulk Data stand-in; the bench uses its plain files only"
)]
#[path = "../tests/suite/bulk_standin.rs"]
mod bulk_standin;
#[allow(
    dead_code,
    reason = "the tests' servers on 127.0.0.1; the stand-in binds through it"
)]
#[path = "../tests/suite/local_http.rs"]
mod local_http;

use std::time::{Duration, Instant};

use bulk_standin::{Behaviour, BulkServer, patient_line};

const SMALL: usize = 10_000;
const LARGE: usize = 100_000;
const FILE_LINES: usize = 25_000;

fn files(n: usize) -> Vec<(String, Vec<String>)> {
    let ids: Vec<String> = (0..n).map(|i| patient_line(&format!("p{i}"))).collect();
    ids.chunks(FILE_LINES)
        .map(|c| ("Patient".to_owned(), c.to_vec()))
        .collect()
}

fn definitions(url: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Source
metadata: {{ name: bulk }}
spec: {{ type: fhir, url: \"{url}\", timeout: 30s }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: export }}
spec:
  strategy: cron
  sources: [bulk]
  fhirVersion: R4
  validation: off
  schedule: {{ cron: \"0 3 * * *\" }}
  bulkExport: {{ types: [Patient], batchSize: 1000, since: none, maxPollInterval: 1s }}
  run: {{ maxRecords: 1000000 }}
"
    );
    std::fs::write(dir.path().join("defs.yaml"), yaml).expect("definitions");
    dir
}

/// The peak resident set of a process, in KiB (`VmHWM`), while it lives.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// One `engine run` of the export: wall time and peak RSS (KiB).
async fn engine_import(defs: &std::path::Path, n: usize) -> (Duration, u64) {
    let state = tempfile::tempdir().expect("state");
    let started = Instant::now();
    // On the system's core when `scripts/bench.sh` names one (`taskset` execs the engine:
    // same pid).
    let mut cmd = match std::env::var("BENCH_SUT_CPU") {
        Ok(cpu) if !cpu.is_empty() => {
            let mut c = tokio::process::Command::new("taskset");
            c.args(["-c", &cpu, env!("CARGO_BIN_EXE_engine")]);
            c
        }
        _ => tokio::process::Command::new(env!("CARGO_BIN_EXE_engine")),
    };
    let mut child = cmd
        .args(["run", "export", "-d"])
        .arg(defs)
        .arg("--state-dir")
        .arg(state.path())
        .env_remove("ENGINE_STATE_DIR")
        .env_remove("ENGINE_SINK_DIR")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("engine run");
    let pid = child.id().expect("a pid");
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = peak_rss(pid) {
            peak = peak.max(kib);
        }
        tokio::select! {
            s = child.wait() => break s.expect("engine run ends"),
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    };
    let took = started.elapsed();
    assert!(status.success(), "engine run failed: {status}");
    let written = std::fs::read_to_string(state.path().join("ndjson/Patient.ndjson"))
        .expect("the sink's file")
        .lines()
        .count();
    assert_eq!(written, n, "every Patient written once");
    (took, peak)
}

/// The anchor: the same files read with a plain client, line by line, each line parsed.
async fn plain_read(server: &BulkServer, files: usize) -> Duration {
    let c = reqwest::Client::new();
    let started = Instant::now();
    let mut lines = 0usize;
    for i in 0..files {
        let mut resp = c
            .get(format!("{}/files/{i}", server.url))
            .send()
            .await
            .expect("a file");
        let mut buf = Vec::new();
        while let Some(chunk) = resp.chunk().await.expect("a chunk") {
            buf.extend_from_slice(&chunk);
            while let Some(at) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=at).collect();
                let v: serde_json::Value = serde_json::from_slice(&line).expect("JSON");
                std::hint::black_box(v);
                lines += 1;
            }
        }
    }
    assert!(lines > 0);
    started.elapsed()
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

#[tokio::main]
async fn main() {
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let small = BulkServer::start(Behaviour {
        files: files(SMALL),
        ..Behaviour::default()
    })
    .await;
    let large = BulkServer::start(Behaviour {
        files: files(LARGE),
        ..Behaviour::default()
    })
    .await;
    let (small_defs, large_defs) = (definitions(&small.url), definitions(&large.url));
    let mut wall = Vec::new();
    let mut rss = Vec::new();
    let mut seen: [Vec<f64>; 4] = Default::default();
    for rep in 0..reps {
        let anchor = plain_read(&large, LARGE.div_ceil(FILE_LINES)).await;
        let (t_small, rss_small) = engine_import(small_defs.path(), SMALL).await;
        let (t_large, rss_large) = engine_import(large_defs.path(), LARGE).await;
        eprintln!(
            "rep {rep}: plain read {:.2}s; engine 10k {:.2}s {} MiB, 100k {:.2}s {} MiB",
            anchor.as_secs_f64(),
            t_small.as_secs_f64(),
            rss_small / 1024,
            t_large.as_secs_f64(),
            rss_large / 1024
        );
        wall.push(t_large.as_secs_f64() / anchor.as_secs_f64());
        rss.push(rss_large as f64 / rss_small as f64);
        for (v, x) in seen.iter_mut().zip([
            t_large.as_secs_f64(),
            anchor.as_secs_f64(),
            rss_large as f64 / 1024.0,
            rss_small as f64 / 1024.0,
        ]) {
            v.push(x);
        }
    }
    let [engine_s, anchor_s, large_mib, small_mib] = seen.map(|v| median(v).0);
    let (m, lo, hi) = median(wall);
    println!(
        "ratio: bulk import of 100000 Patients, wall time against a plain read = {m:.1}x (spread {lo:.1}-{hi:.1}; engine {engine_s:.2} s, anchor plain-read {anchor_s:.2} s)"
    );
    let (m, lo, hi) = median(rss);
    println!(
        "ratio: bulk import peak RSS, 100000 against 10000 Patients = {m:.2}x (spread {lo:.2}-{hi:.2}; engine {large_mib:.0} MiB, anchor 10000-run {small_mib:.0} MiB)"
    );
}
