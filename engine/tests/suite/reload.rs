//! Hot reload of the real binary under load: a valid change is served with no failed
//! request; an invalid change is refused, reported, and the old definitions keep answering.
//! How soon a change is served is measured (printed, and in BENCHMARKS.md), not asserted: the
//! deadlines below only bound how long the test waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::serve_process::ServeProcess;

/// Longest the test waits for the engine to start, or for a reload to take effect.
const WAIT: Duration = Duration::from_secs(30);

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
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.arg("serve")
        .arg(&defs)
        .arg("--admin-open")
        .arg("--state-dir")
        .arg(dir.path().join("state"));
    let server = ServeProcess::start(cmd, WAIT).await;
    let base = server.base.clone();
    let client = reqwest::Client::new();
    tokio::time::timeout(WAIT, async {
        while status(&client, &format!("{base}/healthz")).await != Some(200) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the engine answers /healthz");

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

    // A valid change: a new connector, served once the engine has seen the file.
    assert_eq!(
        status(&client, &format!("{base}/connectors/extra")).await,
        Some(404)
    );
    let changed = Instant::now();
    std::fs::write(defs.join("extra.yaml"), EXTRA).expect("write");
    tokio::time::timeout(WAIT, async {
        while status(&client, &format!("{base}/connectors/extra")).await != Some(200) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the new connector is served");
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
        if readyz["reload"]["lastReloadRefused"] == true {
            // `/readyz` says only that: the diagnostics quote the definitions, and are on
            // `/reload`, an admin route.
            assert_eq!(readyz["status"], "ready");
            assert!(readyz["reload"].get("lastError").is_none(), "{readyz}");
            let reload: serde_json::Value = client
                .get(format!("{base}/reload"))
                .send()
                .await
                .expect("reload")
                .json()
                .await
                .expect("json");
            assert!(
                reload["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("error: YAML syntax")),
                "{reload}"
            );
            break;
        }
        assert!(
            refused.elapsed() < WAIT,
            "the refused set is not reported (waited {WAIT:?}): {readyz}"
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

/// A pull connector whose mapping reads a table file and whose source header is a
/// `${file:...}` secret: what the route answers depends on both files.
const TABLE_CONNECTOR: &str = r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: coded }
spec:
  strategy: pull
  source:
    url: "@URL@"
    timeout: 5s
    auth:
      apiKey: { header: X-Key, value: "${file:key.txt}" }
  tables:
    genders: { file: genders.csv }
  pull:
    resources:
      - type: Patient
        search: { request: { path: /patients }, records: "$[*]" }
  mapping:
    resourceType: Patient
    id: { $path: $.id }
    gender: "{{translate 'genders' record.g}}"
    name:
      - text: { $path: $.key }
"#;

/// The first Patient of a search on `url`: its gender and name text, once it answers 200.
async fn coded_patient(client: &reqwest::Client, url: &str) -> Option<(String, String)> {
    let got = client.get(url).send().await.ok()?;
    if got.status() != 200 {
        return None;
    }
    let bundle: serde_json::Value = got.json().await.ok()?;
    let p = &bundle["entry"][0]["resource"];
    Some((
        p["gender"].as_str()?.to_owned(),
        p["name"][0]["text"].as_str()?.to_owned(),
    ))
}

/// Waits until the route answers `want`; the last answer when it does not within `WAIT`.
async fn wait_for_patient(
    client: &reqwest::Client,
    url: &str,
    want: (&str, &str),
) -> Result<(), Option<(String, String)>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = coded_patient(client, url).await;
        if got
            .as_ref()
            .is_some_and(|(g, k)| g == want.0 && k == want.1)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(got);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A table file or a `${file:...}` secret changed alone, the YAML untouched, is served: the
/// engine reloads on the files a definition compiled in, not only on the definitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_table_file_or_secret_file_reloads() {
    use axum::http::HeaderMap;
    let (listener, source) = crate::local_http::bind().await;
    let app = axum::Router::new().route(
        "/patients",
        axum::routing::get(|headers: HeaderMap| async move {
            let key = headers
                .get("x-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            axum::Json(serde_json::json!([{ "id": "p1", "g": "F", "key": key }]))
        }),
    );
    let _source = crate::local_http::spawn_app(listener, app);

    let dir = tempfile::tempdir().expect("tempdir");
    let defs = dir.path().join("defs");
    std::fs::create_dir(&defs).expect("mkdir");
    std::fs::write(
        defs.join("coded.yaml"),
        TABLE_CONNECTOR.replace("@URL@", &source),
    )
    .expect("write");
    std::fs::write(defs.join("genders.csv"), "code,gender\nF,female\n").expect("write");
    std::fs::write(defs.join("key.txt"), "first-key\n").expect("write");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.arg("serve")
        .arg(&defs)
        .arg("--state-dir")
        .arg(dir.path().join("state"));
    let server = ServeProcess::start(cmd, WAIT).await;
    let url = format!("{}/fhir/coded/Patient", server.base);
    let client = reqwest::Client::new();
    wait_for_patient(&client, &url, ("female", "first-key"))
        .await
        .expect("served from the files as they were at start");

    // The table file changes; the YAML does not.
    std::fs::write(defs.join("genders.csv"), "code,gender\nF,other\n").expect("write");
    if let Err(got) = wait_for_patient(&client, &url, ("other", "first-key")).await {
        panic!(
            "the changed table is not served within {WAIT:?}: {got:?}\n{}",
            server.log()
        );
    }
    // The secret file changes; nothing else does.
    std::fs::write(defs.join("key.txt"), "second-key\n").expect("write");
    if let Err(got) = wait_for_patient(&client, &url, ("other", "second-key")).await {
        panic!(
            "the changed secret file is not used within {WAIT:?}: {got:?}\n{}",
            server.log()
        );
    }
    drop(server);
}
