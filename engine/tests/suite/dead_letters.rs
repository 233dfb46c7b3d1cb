//! Dead letters an operator works with, through the admin API of the engine's router: listed a
//! page at a time and light (no payload), read whole (payload, reason, outcome; no header
//! kept), replayed through the *current* definition (kept with the new reason when it still
//! fails, removed once written: eight concurrent replays write it once, counted at the NDJSON
//! sink), deleted (204, then 404), hostile ids refused without touching a file outside the
//! dead letters, and the counters and the dead-letter gauge in `/metrics`. Push and cron. And
//! `engine dead-letters` against a real `engine serve`, also into a closed pipe.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::engine_router::{EngineRouter, open_admin};
use crate::engine_under_test::{definitions, load};
use crate::fhir_resources::instant;
use crate::fhir_standin::FhirSource;
use crate::local_http::Got;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
pub(crate) const PUSH_TOKEN: &str = "push-token-0123456789";
/// A header value that must never be kept with a dead letter.
const HEADER_SECRET: &str = "header-secret-9f8e7d6c";

/// A sync push connector `inbox` into the embedded NDJSON sink, its Observation id taken from
/// `id_path` (a payload whose id breaks the id rule is dead-lettered).
pub(crate) fn push_yaml(id_path: &str) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: inbox }}
spec:
  strategy: push
  push:
    auth: {{ bearer: {{ token: {PUSH_TOKEN} }} }}
    mode: sync
  mapping:
    resourceType: Observation
    id: {{ $path: "{id_path}" }}
    status: final
    code: {{ text: reading }}
"#
    )
}

/// The engine of `yaml` with its state in `state` (the admin API open).
fn engine_of(yaml: &str, state: &Path) -> (EngineRouter, tempfile::TempDir) {
    let defs = definitions(yaml);
    let served = EngineRouter::with_limits(load(defs.path()), state, open_admin(), CLIENT_TIMEOUT);
    (served, defs)
}

async fn push(served: &EngineRouter, body: &Value) -> Got {
    served
        .post("/push/inbox")
        .header("authorization", format!("Bearer {PUSH_TOKEN}"))
        .header("x-forwarded-secret", HEADER_SECRET)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
}

fn assert_outcome(got: &Got, status: u16, words: &str) {
    assert_eq!(got.status, status, "{}", got.text);
    let v = got.json();
    assert_eq!(v["resourceType"], "OperationOutcome", "{}", got.text);
    assert!(
        got.text.contains(words),
        "`{words}` not in {status}: {}",
        got.text
    );
}

fn ndjson_lines(state: &Path, file: &str) -> Vec<Value> {
    std::fs::read_to_string(state.join("ndjson").join(file))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("an NDJSON line"))
        .collect()
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_dead_letter_is_read_replayed_through_the_current_definition_and_written_once() {
    let state = tempfile::tempdir().expect("state");
    let (served, _defs) = engine_of(&push_yaml("$.id"), state.path());
    let payload = json!({"id": "bad id", "code": "obs-1", "note": "the caller's own data"});
    let got = push(&served, &payload).await;
    assert_outcome(&got, 422, "id");

    // Listed light: id, received, reason and size; no payload.
    let got = served.get("/connectors/inbox/dead-letters").send().await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.header("x-total-count"), "1");
    let listed = got.json();
    let first = &listed[0];
    let id = first["id"].as_str().expect("an id").to_owned();
    assert!(first["reason"].as_str().is_some_and(|r| r.contains("id")));
    assert!(first["received"].is_string(), "{first}");
    assert!(first["bytes"].as_u64().is_some_and(|b| b > 0), "{first}");
    assert!(
        first.get("payload").is_none(),
        "no payload in a listing: {first}"
    );

    // Read whole: the payload as received, the reason; no header kept, in the answer or on disk.
    let got = served
        .get(format!("/connectors/inbox/dead-letters/{id}"))
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let letter = got.json();
    assert_eq!(letter["payload"], payload, "{letter}");
    assert_eq!(letter["reason"], first["reason"]);
    assert!(letter.get("keys").is_none(), "{letter}");
    let on_disk = std::fs::read_to_string(
        state
            .path()
            .join("push/inbox/dead")
            .join(format!("{id}.json")),
    )
    .expect("the letter's file");
    for text in [&got.text, &on_disk] {
        assert!(!text.contains(HEADER_SECRET), "{text}");
        assert!(!text.contains(PUSH_TOKEN), "{text}");
    }

    // Replayed through the same definition: not written, kept with the new reason.
    let got = served
        .post(format!("/connectors/inbox/dead-letters/{id}/replay"))
        .send()
        .await;
    assert_outcome(&got, 422, "the dead letter stays");
    let kept = served
        .get(format!("/connectors/inbox/dead-letters/{id}"))
        .send()
        .await
        .json();
    assert!(kept["lastReplay"].is_string(), "{kept}");
    assert!(ndjson_lines(state.path(), "Observation.ndjson").is_empty());
    drop(served);

    // A fixed definition (the id from `code`): eight concurrent replays write it once.
    let (served, _defs2) = engine_of(&push_yaml("$.code"), state.path());
    let replays = (0..8).map(|_| {
        served
            .post(format!("/connectors/inbox/dead-letters/{id}/replay"))
            .send()
    });
    let answers = futures_util::future::join_all(replays).await;
    let written: Vec<&Got> = answers.iter().filter(|g| g.status == 200).collect();
    assert_eq!(
        written.len(),
        1,
        "{:?}",
        answers
            .iter()
            .map(|g| (g.status, &g.text))
            .collect::<Vec<_>>()
    );
    assert_eq!(written[0].json()["status"], "written");
    assert_eq!(written[0].json()["resources"], 1);
    for other in answers.iter().filter(|g| g.status != 200) {
        assert!([404, 409].contains(&other.status), "{}", other.text);
        assert_eq!(other.json()["resourceType"], "OperationOutcome");
    }
    let lines = ndjson_lines(state.path(), "Observation.ndjson");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["id"], "obs-1");
    let got = served
        .get(format!("/connectors/inbox/dead-letters/{id}"))
        .send()
        .await;
    assert_outcome(&got, 404, "no dead letter");
    let listed = served.get("/connectors/inbox/dead-letters").send().await;
    assert_eq!(listed.json(), json!([]));

    let metrics = served.get("/metrics").send().await.text;
    assert_eq!(
        metric(
            &metrics,
            "engine_dead_letter_replays_total{connector=\"inbox\",outcome=\"written\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "engine_push_dead_letters{connector=\"inbox\"}"),
        Some(0.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_page_deletions_remove_and_hostile_ids_touch_nothing() {
    let state = tempfile::tempdir().expect("state");
    let (served, _defs) = engine_of(&push_yaml("$.id"), state.path());
    for i in 0..5 {
        let got = push(&served, &json!({"id": format!("bad id {i}")})).await;
        assert_eq!(got.status, 422, "{}", got.text);
    }
    // Pages of two: 2, 2, 1, each pointing at the next.
    let mut url = "/connectors/inbox/dead-letters?limit=2".to_owned();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let got = served.get(&url).send().await;
        assert_eq!(got.status, 200, "{}", got.text);
        assert_eq!(got.header("x-total-count"), "5");
        pages += 1;
        for l in got.json().as_array().expect("a page") {
            seen.push(l["id"].as_str().expect("an id").to_owned());
        }
        let link = got.header("link").to_owned();
        if link.is_empty() {
            break;
        }
        let target = link
            .split(';')
            .next()
            .and_then(|t| t.trim().strip_prefix('<')?.strip_suffix('>'))
            .expect("a link target");
        url = format!("/connectors/inbox/{target}");
        assert!(pages < 5, "the pages end");
    }
    assert_eq!(pages, 3);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "every letter once, in order");
    assert_eq!(seen.len(), 5);
    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "after=..%2Fx",
        "colour=red",
    ] {
        let got = served
            .get(format!("/connectors/inbox/dead-letters?{bad}"))
            .send()
            .await;
        assert_outcome(&got, 400, "");
    }

    // A file beside the dead letters that an id must never reach.
    let planted = state.path().join("push/inbox/planted.json");
    std::fs::write(&planted, r#"{"reason":"planted","payload":"do-not-read"}"#).expect("plant");
    let overlong = "9".repeat(200);
    for target in [
        "..%2Fplanted".to_owned(),
        "%2E%2E%2Fplanted".to_owned(),
        "%2Fetc%2Fpasswd".to_owned(),
        "a%00b".to_owned(),
        "..".to_owned(),
        overlong,
    ] {
        for (method, path) in [
            (
                axum::http::Method::GET,
                format!("/connectors/inbox/dead-letters/{target}"),
            ),
            (
                axum::http::Method::DELETE,
                format!("/connectors/inbox/dead-letters/{target}"),
            ),
            (
                axum::http::Method::POST,
                format!("/connectors/inbox/dead-letters/{target}/replay"),
            ),
        ] {
            let got = served.raw(method.clone(), &path).send().await;
            assert!(
                [400, 404].contains(&got.status),
                "{method} {path}: {} {}",
                got.status,
                got.text
            );
            assert_eq!(got.json()["resourceType"], "OperationOutcome", "{path}");
            assert!(!got.text.contains("do-not-read"), "{path}: {}", got.text);
            assert!(
                !got.text.contains(&state.path().display().to_string()),
                "no local path: {}",
                got.text
            );
        }
    }
    assert!(planted.exists(), "the planted file is untouched");
    let got = served
        .get("/connectors/inbox/dead-letters/..%2Fplanted")
        .send()
        .await;
    assert_outcome(&got, 400, "not a dead-letter id");

    // The status page's delete button: from another site refused, from the page itself done.
    let form = format!("/ui/connectors/inbox/dead-letters/{}/delete", seen[1]);
    let got = served
        .post(&form)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await;
    assert_outcome(&got, 403, "own origin");
    let got = served
        .post(&form)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await;
    assert_eq!(got.status, 303, "{}", got.text);
    assert!(
        got.header("location")
            .starts_with("../../../../?connector=inbox&letter="),
        "{}",
        got.header("location")
    );

    // Deleted: 204, then 404; the gauge and the counter follow.
    let got = served
        .delete(format!("/connectors/inbox/dead-letters/{}", seen[0]))
        .send()
        .await;
    assert_eq!(got.status, 204, "{}", got.text);
    let got = served
        .delete(format!("/connectors/inbox/dead-letters/{}", seen[0]))
        .send()
        .await;
    assert_outcome(&got, 404, "no dead letter");
    let got = served
        .delete("/connectors/inbox/dead-letters/00000000000000099999")
        .send()
        .await;
    assert_outcome(&got, 404, "no dead letter");
    let got = served
        .delete("/connectors/nowhere/dead-letters/00000000000000000001")
        .send()
        .await;
    assert_outcome(&got, 404, "no push or cron connector");
    let listed = served.get("/connectors/inbox/dead-letters").send().await;
    assert_eq!(listed.header("x-total-count"), "3");
    let metrics = served.get("/metrics").send().await.text;
    assert_eq!(
        metric(
            &metrics,
            "engine_dead_letter_deletions_total{connector=\"inbox\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "engine_push_dead_letters{connector=\"inbox\"}"),
        Some(3.0),
        "{metrics}"
    );
}

/// A cron sync of `source` into the NDJSON sink, skipping records it cannot write; with
/// `mapping`, its mapping.
fn cron_yaml(source: &str, mapping: &str) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Source
metadata: {{ name: registry }}
spec: {{ type: fhir, url: "{source}", retries: 0, timeout: 5s }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: nightly }}
spec:
  strategy: cron
  schedule: {{ cron: "0 2 * * *" }}
  sources: [registry]
  sync: {{ resourceTypes: [Patient] }}
  run: {{ onRecordError: skip }}
{mapping}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_dead_letter_is_replayed_through_the_current_mapping() {
    let source = FhirSource::start().await;
    source
        .put(json!({"resourceType": "Patient", "id": "p-1", "meta": {"lastUpdated": instant(1)}}));
    source.put(json!({"resourceType": "Patient", "id": "bad id", "meta": {"lastUpdated": instant(2)}, "identifier": [{"value": "repaired-1"}]}));
    let state = tempfile::tempdir().expect("state");
    let (served, _defs) = engine_of(&cron_yaml(&source.url, ""), state.path());
    let runner = &served.engine.crons.get("nightly").expect("the job").runner;
    let (report, _) = runner.run(false).await;
    assert_eq!(report.records_dead_lettered, 1, "{report:#?}");
    // The gauge counts the letters kept, as the push queue's does.
    let metrics = served.get("/metrics").send().await.text;
    assert_eq!(
        metric(&metrics, "engine_cron_dead_letters{connector=\"nightly\"}"),
        Some(1.0),
        "{metrics}"
    );
    let listed = served
        .get("/connectors/nightly/dead-letters")
        .send()
        .await
        .json();
    let id = listed[0]["id"].as_str().expect("an id").to_owned();
    let letter = served
        .get(format!("/connectors/nightly/dead-letters/{id}"))
        .send()
        .await
        .json();
    assert_eq!(letter["payload"]["id"], "bad id", "{letter}");
    assert_eq!(ndjson_lines(state.path(), "Patient.ndjson").len(), 1);
    drop(served);

    // The definition now maps the id from the identifier: the replay writes it.
    let mapping =
        "  mapping:\n    resourceType: Patient\n    id: { $path: \"$.identifier[0].value\" }\n";
    let (served, _defs2) = engine_of(&cron_yaml(&source.url, mapping), state.path());
    let got = served
        .post(format!("/connectors/nightly/dead-letters/{id}/replay"))
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json()["resources"], 1, "{}", got.text);
    let lines = ndjson_lines(state.path(), "Patient.ndjson");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[1]["id"], "repaired-1");
    let listed = served.get("/connectors/nightly/dead-letters").send().await;
    assert_eq!(listed.json(), json!([]), "{}", listed.text);
    let metrics = served.get("/metrics").send().await.text;
    assert_eq!(
        metric(&metrics, "engine_cron_dead_letters{connector=\"nightly\"}"),
        Some(0.0),
        "{metrics}"
    );
}

/// `engine dead-letters ARGS` against `url` with `token` in `ENGINE_ADMIN_TOKEN`: its exit
/// code, standard output and standard error.
async fn cli(url: &str, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.arg("dead-letters")
        .args(args)
        .args(["--url", url])
        .env_remove("ENGINE_ADMIN_TOKEN")
        .env_remove("ENGINE_URL")
        .kill_on_drop(true);
    if let Some(t) = token {
        cmd.env("ENGINE_ADMIN_TOKEN", t);
    }
    let out = tokio::time::timeout(CLIENT_TIMEOUT, cmd.output())
        .await
        .expect("the command ends in time")
        .expect("the command runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_shows_replays_and_deletes_against_a_running_engine() {
    const ADMIN: &str = "cli-admin-token-0123456789";
    let defs = definitions(&push_yaml("$.id"));
    let state = tempfile::tempdir().expect("state");
    let token_file = state.path().join("admin-token");
    std::fs::write(&token_file, ADMIN).expect("the token file");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.arg("serve")
        .arg(defs.path())
        .arg("--state-dir")
        .arg(state.path())
        .arg("--admin-token-file")
        .arg(&token_file)
        .env_remove("ENGINE_STATE_DIR")
        .env_remove("ENGINE_SINK_DIR")
        .env_remove("ENGINE_ADMIN_OPEN")
        .env_remove("ENGINE_OIDC_ISSUER");
    let server = crate::serve_process::ServeProcess::start(cmd, Duration::from_secs(10)).await;
    let base = server.base.clone();
    let c = crate::local_http::client(CLIENT_TIMEOUT);
    for i in 0..2 {
        let got = crate::local_http::send(
            c.post(format!("{base}/push/inbox"))
                .bearer_auth(PUSH_TOKEN)
                .header("content-type", "application/json")
                .body(json!({"id": format!("bad id {i}")}).to_string()),
        )
        .await;
        assert_eq!(got.status, 422, "{}", got.text);
    }

    let (code, out, err) = cli(&base, Some(ADMIN), &["inbox", "list", "--output", "json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let listed: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(listed["total"], 2, "{listed}");
    let ids: Vec<String> = listed["letters"]
        .as_array()
        .expect("letters")
        .iter()
        .map(|l| l["id"].as_str().expect("an id").to_owned())
        .collect();
    let (code, out, err) = cli(&base, Some(ADMIN), &["inbox", "list", "--limit", "1"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with(&ids[0]), "{out}");
    assert!(err.contains(&format!("--after {}", ids[0])), "{err}");

    let (code, out, err) = cli(&base, Some(ADMIN), &["inbox", "show", &ids[0]]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("bad id 0") && out.contains("reason:"), "{out}");
    let (code, out, _) = cli(
        &base,
        Some(ADMIN),
        &["inbox", "show", &ids[0], "--output", "json"],
    )
    .await;
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(shown["payload"]["id"], "bad id 0");

    // Replayed through the same definition: not written, exit 1, the letter stays.
    let (code, out, err) = cli(&base, Some(ADMIN), &["inbox", "replay", &ids[0]]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("the dead letter stays"), "{err}");
    // Deleted: exit 0; again: exit 1; an unusable id: exit 1 with the engine's reason.
    let (code, out, err) = cli(&base, Some(ADMIN), &["inbox", "delete", &ids[0]]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("deleted"), "{out}");
    let (code, _, err) = cli(&base, Some(ADMIN), &["inbox", "delete", &ids[0]]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no dead letter"), "{err}");
    let (code, _, err) = cli(&base, Some(ADMIN), &["inbox", "show", "../../etc/passwd"]).await;
    assert_eq!(code, 1, "{err}");
    // No token, a wrong one, an engine that does not answer, a URL that is none: exit 2.
    let (code, _, err) = cli(&base, None, &["inbox", "list"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ENGINE_ADMIN_TOKEN"), "{err}");
    let (code, _, err) = cli(&base, Some("wrong-token-0123456789"), &["inbox", "list"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("wrong-token-0123456789"), "{err}");
    let down = crate::local_http::dead_url();
    let (code, _, err) = cli(&down.to_string(), Some(ADMIN), &["inbox", "list"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains(ADMIN), "{err}");
    let (code, _, _) = cli("not a url", Some(ADMIN), &["inbox", "list"]).await;
    assert_eq!(code, 2);
    let (code, out, err) = cli(&base, Some(ADMIN), &["inbox", "list", "--output", "json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("JSON")["total"],
        1
    );
}

/// `engine dead-letters ... | head` closes the pipe early: a letter shown (or listed) past the
/// pipe's buffer was printed with `println!`, which panicked on the closed pipe (exit 101,
/// "failed printing to stdout"). Now the rest of the output is dropped quietly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_into_a_closed_pipe_does_not_panic() {
    use std::process::Stdio;
    const ADMIN: &str = "cli-admin-token-0123456789";
    let defs = definitions(&push_yaml("$.id"));
    let state = tempfile::tempdir().expect("state");
    let token_file = state.path().join("admin-token");
    std::fs::write(&token_file, ADMIN).expect("the token file");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.arg("serve")
        .arg(defs.path())
        .arg("--state-dir")
        .arg(state.path())
        .arg("--admin-token-file")
        .arg(&token_file)
        .env_remove("ENGINE_STATE_DIR")
        .env_remove("ENGINE_SINK_DIR")
        .env_remove("ENGINE_ADMIN_OPEN")
        .env_remove("ENGINE_OIDC_ISSUER");
    let server = crate::serve_process::ServeProcess::start(cmd, Duration::from_secs(10)).await;
    let base = server.base.clone();
    // A payload of 512 KiB, far past a pipe's 64 KiB buffer, dead-lettered for its id.
    let c = crate::local_http::client(CLIENT_TIMEOUT);
    let got = crate::local_http::send(
        c.post(format!("{base}/push/inbox"))
            .bearer_auth(PUSH_TOKEN)
            .header("content-type", "application/json")
            .body(json!({"id": "bad id", "note": "n".repeat(512 << 10)}).to_string()),
    )
    .await;
    assert_eq!(got.status, 422, "{}", got.text);
    let (code, out, err) = cli(&base, Some(ADMIN), &["inbox", "list", "--output", "json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let listed: Value = serde_json::from_str(&out).expect("JSON");
    let id = listed["letters"][0]["id"]
        .as_str()
        .expect("an id")
        .to_owned();

    for output in ["text", "json"] {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(["dead-letters", "inbox", "show", &id, "--output", output])
            .args(["--url", &base])
            .env("ENGINE_ADMIN_TOKEN", ADMIN)
            .env_remove("ENGINE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("engine dead-letters starts");
        // The reader leaves before anything is written.
        drop(child.stdout.take());
        let o = tokio::time::timeout(CLIENT_TIMEOUT, child.wait_with_output())
            .await
            .expect("engine dead-letters ends in time")
            .expect("engine dead-letters runs");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{output}: {err}");
        assert_eq!(o.status.code(), Some(0), "{output}: {err}");
    }
}
