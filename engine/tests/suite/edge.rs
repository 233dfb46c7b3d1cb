//! The HTTP edge against hostile callers: forwarded headers that would put foreign links in
//! cached answers, error answers of the HTTP layer (400, 405, 414, 431) as `OperationOutcome`s,
//! slowloris and idle connections closed after the header-read timeout, the connection cap,
//! and `/readyz`: not ready while shutting down or when the state directory cannot be written,
//! and never quoting a refused definition.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::engine_router::EngineRouter;
use crate::engine_under_test::{definitions, load};
use crate::fhir_standin::FhirSource;
use crate::local_http::{Got, assert_outcome, client, send};
use crate::serve_process::ServeProcess;

const WAIT: Duration = Duration::from_secs(20);

/// A cached pull connector over a FHIR source at `url`.
fn mirror_yaml(url: &str) -> String {
    format!(
        r#"
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata:
  name: mirror
  description: A cached FHIR search
spec:
  strategy: pull
  source:
    type: fhir
    url: "{url}"
    timeout: 5s
    retries: 0
  cache: {{ ttl: 10m }}
  pull:
    resources:
      - type: Patient
        search:
          params:
            name: {{}}
"#
    )
}

/// Every link and full URL of a searchset.
fn urls(bundle: &Value) -> Vec<String> {
    let mut out: Vec<String> = bundle["link"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["url"].as_str().map(str::to_owned))
        .collect();
    out.extend(
        bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["fullUrl"].as_str().map(str::to_owned)),
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_checked_and_one_hosts_links_never_reach_another() {
    let source = FhirSource::start().await;
    source.put(json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Ng"}]}));
    let defs = definitions(&mirror_yaml(&source.url));
    let engine = EngineRouter::new(
        load(defs.path()),
        &defs.path().join("state"),
        Duration::from_secs(10),
    );
    let route = format!("{}/fhir/mirror/Patient?name=Ng", engine.base);

    // A scheme other than http or https, and a host that is not a host: not used.
    for (proto, host) in [
        ("javascript", "engine.test"),
        ("https", "x\"><script>alert(1)</script>"),
        ("http", "user@evil.example"),
        ("http", "evil.example/path"),
    ] {
        let got = engine
            .get(&route)
            .header("x-forwarded-proto", proto)
            .header("x-forwarded-host", host)
            .header("cache-control", "no-cache")
            .send()
            .await;
        assert_eq!(got.status, 200, "{}", got.text);
        for u in urls(&got.json()) {
            assert!(
                u.starts_with("http://engine.test/") || u.starts_with("https://engine.test/"),
                "{proto} {host}: {u}"
            );
        }
    }

    // A well-formed forwarded host shapes the links of its own callers only.
    let got = engine
        .get(&route)
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "other.example:8443")
        .send()
        .await;
    assert!(
        urls(&got.json())
            .iter()
            .all(|u| u.starts_with("https://other.example:8443/fhir/mirror/")),
        "{}",
        got.text
    );
    let plain = engine.get(&route).send().await;
    assert_eq!(plain.status, 200, "{}", plain.text);
    for u in urls(&plain.json()) {
        assert!(u.starts_with("http://engine.test/"), "{u}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_layers_own_errors_are_operation_outcomes() {
    let defs = definitions(&mirror_yaml("http://127.0.0.1:9/fhir"));
    let engine = EngineRouter::new(
        load(defs.path()),
        &defs.path().join("state"),
        Duration::from_secs(10),
    );
    let got = engine.post(format!("{}/healthz", engine.base)).send().await;
    assert_outcome(&got, 405, &["POST", "/healthz"]);

    let got = engine
        .get(format!("{}/fhir/%FF%FE/Patient", engine.base))
        .send()
        .await;
    assert_outcome(&got, 400, &[]);

    let long = "a".repeat(9 << 10);
    let got = engine
        .get(format!("{}/fhir/mirror/Patient?name={long}", engine.base))
        .send()
        .await;
    assert_outcome(&got, 414, &["too long"]);

    let got = engine
        .get(format!("{}/fhir/mirror/Patient", engine.base))
        .header("x-padding", "b".repeat(20 << 10))
        .send()
        .await;
    assert_outcome(&got, 431, &["too large"]);
}

/// An `engine serve` of the mirror connector with these extra flags.
async fn serve(extra: &[&str]) -> (ServeProcess, tempfile::TempDir) {
    let defs = definitions(&mirror_yaml("http://127.0.0.1:9/fhir"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.arg("serve")
        .arg(defs.path().join("definitions.yaml"))
        .arg("--state-dir")
        .arg(defs.path().join("state"))
        .args(extra);
    (ServeProcess::start(cmd, WAIT).await, defs)
}

/// Gets `url` until `done` holds for the answer, for at most `within`: the answer that did.
async fn get_until(url: &str, within: Duration, done: impl Fn(&Got) -> bool) -> Option<Got> {
    let c = client(WAIT);
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        let got = send(c.get(url)).await;
        if done(&got) {
            return Some(got);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn address(base: &str) -> String {
    base.trim_start_matches("http://").to_owned()
}

/// True when the server closed `conn` (a read gives end of file or an error) within `within`.
async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_and_connections_are_capped() {
    let (engine, _defs) = serve(&["--header-read-timeout", "1s", "--max-connections", "8"]).await;
    let addr = address(&engine.base);
    // Slowloris: headers begun and never finished. Idle: a kept-alive connection after one
    // answer. Both hold one of the 8 slots.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(&addr).await.expect("connect");
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .expect("write");
        slow.push(c);
    }
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(&addr).await.expect("connect");
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).await.expect("an answer");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        idle.push(c);
    }
    // Every slot is held: a ninth connection waits until the timeout frees them.
    let started = tokio::time::Instant::now();
    let got = send(client(WAIT).get(format!("{}/healthz", engine.base))).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "answered after {:?}, while 8 of 8 connections were held",
        started.elapsed()
    );
    for c in slow.iter_mut().chain(idle.iter_mut()) {
        assert!(
            closed_within(c, Duration::from_secs(5)).await,
            "a slow or idle connection is closed after the header-read timeout"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_not_ready_while_shutting_down() {
    let (engine, _defs) = serve(&["--shutdown-delay", "3s"]).await;
    let c = client(WAIT);
    let got = send(c.get(format!("{}/readyz", engine.base))).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let pid = engine.child.id().expect("a pid");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let base = engine.base.clone();
    let got = get_until(&format!("{base}/readyz"), Duration::from_secs(3), |g| {
        g.status == 503
    })
    .await
    .expect("/readyz answers 503 during the shutdown delay");
    assert_eq!(got.json()["reason"], "shutting down", "{}", got.text);
    let health = send(c.get(format!("{base}/healthz"))).await;
    assert_eq!(health.status, 200, "still alive while not ready");
    let (status, log) = engine.exit(WAIT).await;
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_state_directory_is_refused_at_start_and_not_ready_later() {
    let defs = definitions(&mirror_yaml("http://127.0.0.1:9/fhir"));
    let blocker = defs.path().join("a-file");
    std::fs::write(&blocker, b"not a directory").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .arg("serve")
        .arg(defs.path().join("definitions.yaml"))
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(blocker.join("state"))
        .output()
        .expect("engine serve");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("state directory"), "{err}");

    let (engine, defs) = serve(&[]).await;
    let c = client(WAIT);
    assert_eq!(
        send(c.get(format!("{}/readyz", engine.base))).await.status,
        200
    );
    let state = defs.path().join("state");
    std::fs::remove_dir_all(&state).expect("remove the state directory");
    std::fs::write(&state, b"a file where the state directory was").expect("write");
    let got = get_until(
        &format!("{}/readyz", engine.base),
        Duration::from_secs(10),
        |g| g.status == 503,
    )
    .await
    .expect("/readyz answers 503 once the state directory cannot be written");
    let reason = got.json()["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("state directory"), "{}", got.text);
    assert!(
        !got.text.contains(defs.path().to_str().expect("utf-8")),
        "no local path: {}",
        got.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_never_quotes_a_refused_definition() {
    let (engine, defs) = serve(&[]).await;
    let file = defs.path().join("definitions.yaml");
    let mut text = std::fs::read_to_string(&file).expect("read");
    text.push_str("    unknownKey: \"sk-live-0123456789-secret\"\n");
    std::fs::write(&file, text).expect("write");
    let got = get_until(&format!("{}/readyz", engine.base), WAIT, |g| {
        g.json()["reload"]["lastReloadRefused"] == true
    })
    .await
    .expect("/readyz says the reload was refused");
    assert_eq!(got.status, 200, "the old set keeps serving: {}", got.text);
    assert!(!got.text.contains("sk-live"), "{}", got.text);
}
