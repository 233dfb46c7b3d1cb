//! The status page (`/ui/`) of a real `engine serve` (`serve_process`) behind a static admin
//! token: in a real headless Chromium (`headless_chromium`), the page lists the connectors, its
//! run button starts a run and the page then shows the run's report, with a connector
//! description and a dead letter holding markup shown as text, never run; once the definition
//! is fixed, the dead letter's replay button writes it and its row disappears; screenshots are
//! kept under the target directory. Over plain HTTP: reading needs a token, the run form is taken
//! only from the page's own origin, and a refused reload's diagnostics are shown with the
//! secret they quote masked.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::engine_under_test::definitions;
use crate::fhir_resources::instant;
use crate::fhir_standin::FhirSource;
use crate::headless_chromium::Chromium;
use crate::local_http::{Got, client, send};
use crate::serve_process::ServeProcess;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The static admin token of these tests (`--admin-token-file`).
const TOKEN: &str = "ui-admin-token-0123456789";
/// Markup in a connector's description and in a record that ends up a dead letter.
const MARKUP: &str = "<script>window.pwned = 1</script><img src=x onerror=\"window.pwned = 2\">";

fn definitions_yaml(source: &str) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Source
metadata: {{ name: registry }}
spec: {{ type: fhir, url: "{source}", retries: 0, timeout: 5s }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: nightly, description: {description}, labels: {{ team: {description} }} }}
spec:
  strategy: cron
  schedule: {{ cron: "0 2 * * *" }}
  sources: [registry]
  sync: {{ resourceTypes: [Patient] }}
  run: {{ onRecordError: skip }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: patients }}
spec:
  strategy: pull
  sources: [registry]
  pull:
    resources:
      - type: Patient
        search:
          params:
            _count: {{ type: integer, default: 20, max: 100 }}
  cache: {{ ttl: 10m }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: inbox }}
spec:
  strategy: push
  push:
    auth: {{ bearer: {{ token: push-token-0123456789 }} }}
    mode: queued
  mapping:
    resourceType: Observation
    id: {{ $path: $.id }}
    status: final
    code: {{ text: reading }}
"#,
        description = json!(MARKUP),
    )
}

/// A FHIR source with three good patients and one whose id breaks FHIR's id rule and holds
/// markup: the run writes three and dead-letters that one.
async fn source() -> FhirSource {
    let source = FhirSource::start().await;
    for i in 0..3 {
        source.put(json!({
            "resourceType": "Patient", "id": format!("p-{i}"),
            "meta": {"lastUpdated": instant(i + 1)}, "name": [{"family": format!("Family{i}")}]
        }));
    }
    source.put(json!({
        "resourceType": "Patient", "id": "bad id",
        "meta": {"lastUpdated": instant(9)}, "name": [{"family": MARKUP}]
    }));
    source
}

/// `engine serve` on `defs` with the static token, its state in `state`.
async fn serve(defs: &Path, state: &Path) -> ServeProcess {
    let token_file = state.join("admin-token");
    std::fs::write(&token_file, TOKEN).expect("the token file");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.arg("serve")
        .arg(defs)
        .arg("--state-dir")
        .arg(state)
        .arg("--admin-token-file")
        .arg(&token_file)
        .env_remove("ENGINE_STATE_DIR")
        .env_remove("ENGINE_SINK_DIR")
        .env_remove("ENGINE_ADMIN_OPEN")
        .env_remove("ENGINE_OIDC_ISSUER");
    ServeProcess::start(cmd, Duration::from_secs(10)).await
}

/// Where the screenshot goes: `ui-artefacts/` in the target directory of the test binary.
fn artefact(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary");
    // target/debug/deps/suite-HASH
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    target.join("ui-artefacts").join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_the_page_lists_the_connectors_runs_one_and_shows_its_report() {
    let source = source().await;
    let defs = definitions(&definitions_yaml(&source.url));
    let state = tempfile::tempdir().expect("state");
    let server = serve(defs.path(), state.path()).await;
    let mut browser = Chromium::start(Duration::from_secs(30)).await;
    // The token as a gateway in front of the engine would add it to the browser's requests.
    browser
        .extra_headers(json!({"Authorization": format!("Bearer {TOKEN}")}))
        .await;
    browser.navigate(&format!("{}/ui/", server.base)).await;
    browser
        .wait_for(
            "document.querySelector('#connectors') !== null",
            Duration::from_secs(10),
            "the page loads",
        )
        .await;
    let listed = browser
        .eval("[...document.querySelectorAll('#connectors td:first-child')].map(e => e.innerText)")
        .await
        .expect("the listed connectors");
    assert_eq!(listed, json!(["nightly", "patients", "inbox"]));
    let strategies = browser
        .eval("[...document.querySelectorAll('#connectors td:nth-child(2)')].map(e => e.innerText)")
        .await
        .expect("the strategies");
    assert_eq!(strategies, json!(["cron", "pull", "push"]));
    assert_eq!(
        browser
            .eval("document.querySelector('#no-report') !== null")
            .await,
        Ok(json!(true)),
        "no report before the first run"
    );

    // The run button: the run starts, the page follows it and shows its report.
    browser.click("#run-nightly").await;
    browser
        .wait_for(
            "document.querySelector('#report-nightly') !== null && document.querySelector('#started') === null",
            Duration::from_secs(20),
            "the report of the run",
        )
        .await;
    let cells = browser
        .eval("[...document.querySelectorAll('#report-nightly table td')].map(e => e.innerText)")
        .await
        .expect("the report's cells");
    // started, finished, read, written, unchanged, source calls, sink calls, retries, dead-lettered
    assert_eq!(cells[2], "4", "{cells}");
    assert_eq!(cells[3], "3", "{cells}");
    assert_eq!(cells[8], "1", "{cells}");
    let left_out = browser
        .eval("document.querySelector('#report-nightly .skipped').innerText")
        .await
        .expect("what the run left out");
    assert!(
        left_out.as_str().is_some_and(|t| t.contains("bad id")),
        "{left_out}"
    );

    // The markup of the description and of the dead letter is text on the page, not markup.
    let description = browser
        .eval("document.querySelector('#c-nightly .description').textContent")
        .await
        .expect("the description");
    assert_eq!(description, json!(MARKUP));
    let letters = browser
        .eval("document.querySelector('#c-nightly .dead-letters').textContent")
        .await
        .expect("the dead letters");
    assert!(
        letters
            .as_str()
            .is_some_and(|t| t.contains("<script>window.pwned = 1</script>")),
        "{letters}"
    );
    assert_eq!(
        browser
            .eval("[document.scripts.length, document.images.length, typeof window.pwned]")
            .await,
        Ok(json!([0, 0, "undefined"])),
        "no script or image made of the markup, none run"
    );
    let shot = artefact("status-page.png");
    browser.screenshot(&shot).await;
    println!("screenshot of the status page: {}", shot.display());

    // The definition now gives the record an id of its own; the dead letter's replay button
    // sends it through that definition: written, it disappears from the page.
    let c = client(CLIENT_TIMEOUT);
    let listed = send(
        c.get(format!("{}/connectors/nightly/dead-letters", server.base))
            .bearer_auth(TOKEN),
    )
    .await;
    let id = listed.json()[0]["id"]
        .as_str()
        .expect("the dead letter's id")
        .to_owned();
    std::fs::write(
        defs.path().join("definitions.yaml"),
        definitions_yaml(&source.url).replace(
            "  run: { onRecordError: skip }\n",
            "  run: { onRecordError: skip }\n  mapping:\n    resourceType: Patient\n    id: repaired-1\n",
        ),
    )
    .expect("the new definitions");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reload = send(c.get(format!("{}/reload", server.base)).bearer_auth(TOKEN)).await;
        if reload.json()["generation"].as_u64() >= Some(2) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new definitions are served within 20 s: {}",
            reload.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.navigate(&format!("{}/ui/", server.base)).await;
    let row = format!("#letter-nightly-{id}");
    browser
        .wait_for(
            &format!("document.querySelector('{row}') !== null"),
            Duration::from_secs(10),
            "the dead letter's row",
        )
        .await;
    browser.click(&format!("#replay-nightly-{id}")).await;
    browser
        .wait_for(
            &format!(
                "document.querySelector('#letter-done') !== null && document.querySelector('{row}') === null"
            ),
            Duration::from_secs(20),
            "the replayed letter gone from the page",
        )
        .await;
    let notice = browser
        .eval("document.querySelector('#letter-done').innerText")
        .await
        .expect("the notice");
    assert!(
        notice.as_str().is_some_and(|t| t.contains("written")),
        "{notice}"
    );
    let written = std::fs::read_to_string(state.path().join("ndjson/Patient.ndjson"))
        .expect("the NDJSON sink");
    assert_eq!(
        written
            .lines()
            .filter(|l| l.contains("\"repaired-1\""))
            .count(),
        1,
        "{written}"
    );
    let shot = artefact("status-page-replayed.png");
    browser.screenshot(&shot).await;
    println!("screenshot after the replay: {}", shot.display());
}

/// A POST to the run form with the token and `headers`; its answer, redirects not followed.
async fn post_run(base: &str, headers: &[(&str, &str)]) -> Got {
    let no_redirects = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client");
    let mut req = no_redirects
        .post(format!("{base}/ui/connectors/nightly/run"))
        .bearer_auth(TOKEN);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_needs_the_token_and_its_form_its_own_origin() {
    let source = source().await;
    let defs = definitions(&definitions_yaml(&source.url));
    let state = tempfile::tempdir().expect("state");
    let server = serve(defs.path(), state.path()).await;
    let base = server.base.clone();
    let c = client(CLIENT_TIMEOUT);

    let got = send(c.get(format!("{base}/ui/"))).await;
    assert_eq!(got.status, 401, "{}", got.text);
    assert!(got.text.contains("OperationOutcome"), "{}", got.text);
    let got = send(c.get(format!("{base}/ui/")).bearer_auth(TOKEN)).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert!(got.header("content-type").starts_with("text/html"));
    assert!(
        got.header("content-security-policy")
            .contains("default-src 'none'"),
        "{:?}",
        got.header("content-security-policy")
    );
    assert_eq!(got.header("x-frame-options"), "DENY");

    // Without the token, even from the page's origin: 401, nothing runs.
    let got = send(
        c.post(format!("{base}/ui/connectors/nightly/run"))
            .header("sec-fetch-site", "same-origin"),
    )
    .await;
    assert_eq!(got.status, 401, "{}", got.text);
    // With the token but from another site, or from nowhere said: refused.
    let host = base.trim_start_matches("http://");
    for headers in [
        vec![("sec-fetch-site", "cross-site")],
        vec![("origin", "http://evil.example")],
        vec![("origin", "null")],
        vec![],
    ] {
        let got = post_run(&base, &headers).await;
        assert_eq!(got.status, 403, "{headers:?}: {}", got.text);
        assert!(got.text.contains("own origin"), "{}", got.text);
    }
    let detail = send(
        c.get(format!("{base}/connectors/nightly"))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(detail.json()["run"]["running"], false);
    assert!(
        detail.json()["run"]["lastRun"].is_null(),
        "no run was started"
    );

    // From its own origin: 303 back to the page, which says the run started.
    let origin = format!("http://{host}");
    let got = post_run(&base, &[("origin", origin.as_str())]).await;
    assert_eq!(got.status, 303, "{}", got.text);
    assert_eq!(got.header("location"), "../../?started=nightly");
    let mut ran = false;
    for _ in 0..250 {
        let d = send(
            c.get(format!("{base}/connectors/nightly"))
                .bearer_auth(TOKEN),
        )
        .await;
        if d.json()["run"]["lastRun"].is_object() {
            ran = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ran, "the run started by the form ends within 5 s");
    // Not a cron connector: the admin API's OperationOutcome.
    let got = send(
        c.post(format!("{base}/ui/connectors/patients/run"))
            .bearer_auth(TOKEN)
            .header("sec-fetch-site", "same-origin"),
    )
    .await;
    assert_eq!(got.status, 404, "{}", got.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_is_shown_with_its_secrets_masked() {
    let source = source().await;
    let defs = definitions(&definitions_yaml(&source.url));
    let state = tempfile::tempdir().expect("state");
    let server = serve(defs.path(), state.path()).await;
    let base = server.base.clone();
    let c = client(CLIENT_TIMEOUT);
    let secret = "clear-text-secret-4242";
    std::fs::write(
        defs.path().join("zz-broken.yaml"),
        format!(
            "apiVersion: fosps.gravitate-health.eu/v1\nkind: Source\nmetadata: {{ name: broken }}\nspec: {{ type: fhir, url: \"http://127.0.0.1:9\", auth: {{ bearer: {{ token: {secret}, tokn: 1 }} }} }}\n"
        ),
    )
    .expect("a broken definition");
    let mut refused = String::new();
    for _ in 0..500 {
        let got = send(c.get(format!("{base}/reload")).bearer_auth(TOKEN)).await;
        if let Some(e) = got.json()["lastError"].as_str() {
            refused = e.to_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!refused.is_empty(), "the reload is refused within 10 s");
    // `engine serve` quotes no definition line (qa67): the admin API's diagnostics neither.
    assert!(
        !refused.contains(secret) && refused.contains("tokn"),
        "the admin API's diagnostics name the key, not the line with the secret: {refused}"
    );
    let page = send(c.get(format!("{base}/ui/")).bearer_auth(TOKEN)).await;
    assert_eq!(page.status, 200);
    assert!(
        page.text.contains("the last reload was refused"),
        "{}",
        page.text
    );
    assert!(
        page.text.contains("tokn"),
        "the diagnostics are shown: {}",
        page.text
    );
    assert!(!page.text.contains(secret), "{}", page.text);
    let defs_dir = defs.path().to_string_lossy().into_owned();
    assert!(
        !refused.contains(&defs_dir) && !page.text.contains(&defs_dir),
        "the API and the page name the file without its directory: {refused} {}",
        page.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_and_huge_dead_letters_keep_the_page_small() {
    let source = source().await;
    let defs = definitions(&definitions_yaml(&source.url));
    let state = tempfile::tempdir().expect("state");
    let server = serve(defs.path(), state.path()).await;
    let base = server.base.clone();
    let c = client(CLIENT_TIMEOUT);
    // 25 queued pushes whose ids break FHIR's id rule: the drainer dead-letters each. The
    // first one carries 512 KiB of text (pushes take 1 MiB at most).
    let huge = "x".repeat(512 << 10);
    for i in 0..25 {
        let body = if i == 0 {
            json!({"id": "bad id 0", "note": huge})
        } else {
            json!({"id": format!("bad id {i}")})
        };
        let got = send(
            c.post(format!("{base}/push/inbox"))
                .bearer_auth("push-token-0123456789")
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await;
        assert_eq!(got.status, 202, "{}", got.text);
    }
    let mut dead = 0;
    for _ in 0..500 {
        let got = send(c.get(format!("{base}/connectors/inbox")).bearer_auth(TOKEN)).await;
        dead = got.json()["push"]["deadLetters"].as_u64().unwrap_or(0);
        if dead == 25 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(dead, 25, "every push is dead-lettered within 10 s");
    let page = send(c.get(format!("{base}/ui/")).bearer_auth(TOKEN)).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("Dead letters (25)"), "{}", page.text);
    assert!(
        page.text.contains("The first 20 of 25 are listed."),
        "{}",
        page.text
    );
    assert!(
        page.text.contains("bytes: too large to show here"),
        "the huge payload is named by its size: {}",
        page.text
    );
    assert!(
        !page.text.contains("bad id 24") && page.text.contains("bad id 19"),
        "the first 20 are listed"
    );
    assert!(
        page.text.len() < 200_000,
        "the page stays small: {} bytes",
        page.text.len()
    );
}

/// The text of the first `<td class="CLASS">` after `after` in `page`.
fn cell<'a>(page: &'a str, after: &str, class: &str) -> &'a str {
    let from = page.find(after).expect("the section");
    let open = format!("<td class=\"{class}\">");
    let start = from + page[from..].find(&open).expect("the cell") + open.len();
    let end = start + page[start..].find('<').expect("the cell's end");
    &page[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_queue_whose_sink_is_down_shows_its_depth_and_oldest_payload() {
    let source = source().await;
    let down = crate::local_http::dead_url();
    let yaml = definitions_yaml(&source.url)
        + &format!(
            r#"---
apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata: {{ name: down }}
spec:
  fhir: {{ url: "{}", version: R4, batchSize: 10, mode: batch, retries: 0, timeout: 1s }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: stuck }}
spec:
  strategy: push
  push:
    auth: {{ bearer: {{ token: push-token-0123456789 }} }}
    mode: queued
  sink: down
  mapping:
    resourceType: Observation
    id: {{ $path: $.id }}
    status: final
    code: {{ text: reading }}
"#,
            down
        );
    let defs = definitions(&yaml);
    let state = tempfile::tempdir().expect("state");
    let server = serve(defs.path(), state.path()).await;
    let base = server.base.clone();
    let c = client(CLIENT_TIMEOUT);
    let before = chrono::Utc::now();
    for i in 0..3 {
        let got = send(
            c.post(format!("{base}/push/stuck"))
                .bearer_auth("push-token-0123456789")
                .header("content-type", "application/json")
                .body(json!({"id": format!("o-{i}")}).to_string()),
        )
        .await;
        assert_eq!(got.status, 202, "{}", got.text);
    }
    let page = send(c.get(format!("{base}/ui/")).bearer_auth(TOKEN)).await;
    assert_eq!(page.status, 200);
    // The drainer holds at most one payload in flight; the others wait in the queue.
    let depth: u64 = cell(&page.text, "id=\"c-stuck\"", "depth")
        .parse()
        .expect("a depth");
    assert!((2..=3).contains(&depth), "{depth}: {}", page.text);
    let oldest = cell(&page.text, "id=\"c-stuck\"", "oldest");
    let oldest = chrono::DateTime::parse_from_rfc3339(oldest)
        .unwrap_or_else(|e| panic!("{oldest:?} is a time ({e})"));
    assert!(
        oldest >= before - chrono::TimeDelta::seconds(1) && oldest <= chrono::Utc::now(),
        "{oldest} is when the first push came"
    );
    assert_eq!(
        cell(&page.text, "id=\"c-inbox\"", "oldest"),
        "nothing waits"
    );
}
