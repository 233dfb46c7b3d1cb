//! Hot reload of the real binary under load: a valid change serves within 2 s with no failed
//! request; an invalid change is refused, reported, and the old definitions keep answering.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::local_http::free_port;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const EXTRA: &str = r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: extra }
spec:
  strategy: pull
  source: { url: "http://127.0.0.1:9", timeout: 1s }
  pull:
    resources:
      - type: Patient
        search: { request: { path: /patients }, records: "$[*]" }
  mapping: { resourceType: Patient, id: { $path: $.id } }
"#;

async fn status(client: &reqwest::Client, url: &str) -> Option<u16> {
    client
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let defs = dir.path().join("defs");
    std::fs::create_dir(&defs).expect("mkdir");
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../connectors.d/fosps-proxy.yaml"
    );
    std::fs::copy(shipped, defs.join("proxy.yaml")).expect("copy");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_engine"))
            .args([
                "serve",
                defs.to_str().expect("path"),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--log",
                "warn",
            ])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("engine starts"),
    );
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&client, &format!("{base}/healthz")).await != Some(200) {
        assert!(Instant::now() < deadline, "the engine did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Load: a steady stream of requests to a connector present before and after.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, url, stop, ok, failed) = (
            client.clone(),
            format!("{base}/connectors/proxy"),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match status(&client, &url).await {
                    Some(200) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    // A valid change: a new connector, serving within 2 s.
    assert_eq!(
        status(&client, &format!("{base}/connectors/extra")).await,
        Some(404)
    );
    let changed = Instant::now();
    std::fs::write(defs.join("extra.yaml"), EXTRA).expect("write");
    while status(&client, &format!("{base}/connectors/extra")).await != Some(200) {
        assert!(
            changed.elapsed() < Duration::from_secs(2),
            "the new connector is not served within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "valid change serving after {} ms",
        changed.elapsed().as_millis()
    );

    // An invalid change: refused, reported by /readyz, and the old set keeps answering.
    std::fs::write(
        defs.join("extra.yaml"),
        "apiVersion: fosps.gravitate-health.eu/v1\nkind: Connector\nmetadata: { name: extra\n",
    )
    .expect("write");
    let refused = Instant::now();
    loop {
        let readyz: serde_json::Value = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz")
            .json()
            .await
            .expect("json");
        if readyz["reload"]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("error: YAML syntax"))
        {
            assert_eq!(readyz["status"], "ready");
            break;
        }
        assert!(
            refused.elapsed() < Duration::from_secs(10),
            "the refused set is not reported: {readyz}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status(&client, &format!("{base}/connectors/extra")).await,
        Some(200),
        "the old set still serves"
    );

    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("load task");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("requests during the reloads: {ok} answered, {failed} failed");
    assert!(ok > 0, "the load ran");
    assert_eq!(failed, 0, "no request failed during the reloads");
}
