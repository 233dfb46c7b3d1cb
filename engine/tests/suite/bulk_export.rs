//! FHIR Bulk Data `$export` as a cron read (issue 13, part 3), against the Bulk Data stand-in
//! (`bulk_standin`: async kick-off, polls with `Retry-After` and `X-Progress`, a manifest,
//! NDJSON files, `DELETE` recorded) and against Helios (`hfs` 0.2.7 serves `$export` itself):
//! an export polled, streamed and written into Helios, its `_since` from the last run's
//! `transactionTime`, the job deleted; Helios as the exporting server; and the hostile cases:
//! a job that never finishes (the export's deadline), a `Retry-After` of a year (capped), a
//! file on another origin (refused), malformed and huge lines (their records fail, the rest
//! go on), a file cut midway (read again, nothing written twice), failures at kick-off and of
//! the job (reported with their `OperationOutcome`), `engine run` killed mid-export (the
//! watermark stays, the rerun exports again, each resource once at the sink), and an OAuth2
//! token endpoint that is down (it opens the source's breaker).

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::bulk_standin::{Behaviour, BulkServer, RUN_BOUND, observation_line, patient_line};
use engine::runtime::run::Runner;

use crate::engine_under_test::{
    definitions, engine_run_command, load, run_with_deadline, runner, runner_with_sink_dir,
    wait_until, watermarks,
};
use crate::helios_client::{read_all, seed};
use crate::helios_server::{Db, Helios};

const TOKEN: &str = "token-0123456789";

/// A FHIR source `bulk` at `url` (bearer token, 5s timeout, 2 retries), a connector `export`
/// with `bulk` (the YAML of its `bulkExport`, indented under it) and `extra` (more of its
/// spec, such as `run:` or `sink:`), and `more` documents (a sink).
fn defs(url: &str, bulk: &str, extra: &str, more: &str) -> String {
    format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Source
metadata: {{ name: bulk }}
spec:
  type: fhir
  url: \"{url}\"
  timeout: 5s
  retries: 2
  auth: {{ bearer: {{ token: {TOKEN} }} }}
---
{more}apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: export }}
spec:
  strategy: cron
  sources: [bulk]
  fhirVersion: R4
  schedule: {{ cron: \"0 3 * * *\" }}
  bulkExport:
{bulk}
{extra}"
    )
}

/// The runner of connector `export` of `yaml`, on a new state directory (its NDJSON sink in
/// `STATE/ndjson`), with the state and definitions directories it lives on.
fn export_runner(yaml: &str) -> (Runner, tempfile::TempDir, tempfile::TempDir) {
    let defs = definitions(yaml);
    let model = load(defs.path());
    let state = tempfile::tempdir().expect("state");
    let r = runner(&model, "export", state.path());
    (r, state, defs)
}

fn helios_sink(url: &str) -> String {
    format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata: {{ name: helios }}
spec:
  fhir: {{ url: \"{url}\", version: R4, batchSize: 100, mode: transaction, retries: 2, timeout: 30s, provenance: true }}
---
"
    )
}

/// The lines of the NDJSON sink's file of a type (none when it is not there).
fn written(state: &std::path::Path, t: &str) -> Vec<Value> {
    std::fs::read_to_string(state.join("ndjson").join(format!("{t}.ndjson")))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect()
}

fn ids(resources: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = resources
        .iter()
        .map(|r| r["id"].as_str().unwrap_or("").to_owned())
        .collect();
    ids.sort();
    ids
}

fn failures(report: &engine::runtime::run::RunReport) -> String {
    report
        .failures
        .iter()
        .map(|f| format!("{}: {}", f.subject, f.message))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn an_export_is_polled_streamed_into_helios_and_deleted_and_the_next_asks_since_it() {
    let helios = Helios::start(Db::Memory).await;
    let server = BulkServer::start(Behaviour {
        polls_before_done: 2,
        retry_after: vec!["1".into()],
        files: vec![
            (
                "Patient".into(),
                (0..3).map(|i| patient_line(&format!("p{i}"))).collect(),
            ),
            (
                "Observation".into(),
                vec![observation_line("o0", "p0"), observation_line("o1", "p1")],
            ),
        ],
        errors: vec![
            crate::fhir_standin::operation_outcome("processing", "Patient/p9 could not be read")
                .to_string(),
        ],
        file_token: Some(TOKEN.into()),
        ..Behaviour::default()
    })
    .await;
    let (r, state, _defs) = export_runner(&defs(
        &server.url,
        "    types: [Patient, Observation]\n    batchSize: 2\n    maxPollInterval: 5s",
        "  sink: helios",
        &helios_sink(&helios.url),
    ));

    let report = run_with_deadline(&r, RUN_BOUND).await;
    assert!(report.ok(), "{}", failures(&report));
    assert_eq!(report.records_read, 5);
    assert_eq!(report.resources_written, 5);
    // The server's error file, in the report.
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("Patient/p9 could not be read")),
        "{:?}",
        report.warnings
    );
    let c = reqwest::Client::new();
    let all = read_all(&c, &helios, &["Patient", "Observation"], 10).await;
    assert_eq!(
        all.keys().cloned().collect::<Vec<_>>(),
        [
            "Observation/o0",
            "Observation/o1",
            "Patient/p0",
            "Patient/p1",
            "Patient/p2"
        ]
    );
    // One Provenance per batch (two of the Patient file, one of the Observation file), none
    // replacing another.
    let provenances = crate::helios_client::search_all(&c, &helios, "Provenance", 10).await;
    assert_eq!(provenances.len(), 3, "{provenances:#?}");
    // Kick-off as the IG says, two polls answered 202, the manifest, the files with the
    // token, the job deleted.
    let headers = server.kick_off_headers();
    assert_eq!(headers[0]["prefer"], "respond-async");
    assert_eq!(headers[0]["accept"], "application/fhir+json");
    let q = server.last_kick_off_query();
    assert!(
        q.contains(&("_type".into(), "Patient,Observation".into())),
        "{q:?}"
    );
    assert!(!q.iter().any(|(k, _)| k == "_since"), "{q:?}");
    let requests = server.requests_with_auth();
    let polls = requests.iter().filter(|(r, _)| r == "GET /jobs/1").count();
    assert_eq!(polls, 3, "{requests:?}");
    assert!(
        requests
            .iter()
            .filter(|(r, _)| r.starts_with("GET /files/"))
            .all(|(_, auth)| auth == &format!("Bearer {TOKEN}")),
        "{requests:?}"
    );
    assert_eq!(server.deletes(), 1, "{requests:?}");
    assert_eq!(
        watermarks(state.path(), "export")
            .get("$export")
            .map(String::as_str),
        Some("2026-03-01T10:00:00Z")
    );
    // The next run asks only for what changed since the last transactionTime.
    server.set(|b| {
        b.polls_before_done = 0;
        b.transaction_time = "2026-03-02T10:00:00Z".into();
    });
    let report = run_with_deadline(&r, RUN_BOUND).await;
    assert!(report.ok(), "{}", failures(&report));
    let q = server.last_kick_off_query();
    assert!(
        q.contains(&("_since".into(), "2026-03-01T10:00:00Z".into())),
        "{q:?}"
    );
    assert_eq!(server.deletes(), 2);
    assert_eq!(
        watermarks(state.path(), "export")
            .get("$export")
            .map(String::as_str),
        Some("2026-03-02T10:00:00Z")
    );
}

#[tokio::test]
async fn helios_exports_into_the_engine_and_the_next_run_reads_only_what_changed() {
    let helios = Helios::start(Db::File).await;
    let c = reqwest::Client::new();
    let patients: Vec<Value> = (0..4)
        .map(|i| serde_json::from_str(&patient_line(&format!("h{i}"))).expect("JSON"))
        .collect();
    seed(&c, &helios.url, &patients).await;
    let (r, state, _defs) = export_runner(&defs(
        &helios.url,
        "    types: [Patient]\n    maxPollInterval: 1s",
        "",
        "",
    ));

    let report = run_with_deadline(&r, RUN_BOUND).await;
    assert!(report.ok(), "{}\n{}", failures(&report), helios.log());
    assert_eq!(
        ids(&written(state.path(), "Patient")),
        ["h0", "h1", "h2", "h3"]
    );
    let mark = watermarks(state.path(), "export")
        .get("$export")
        .cloned()
        .expect("the transactionTime kept");
    // One more patient: the next run exports it alone.
    let more: Value = serde_json::from_str(&patient_line("h4")).expect("JSON");
    seed(&c, &helios.url, &[more]).await;
    let report = run_with_deadline(&r, RUN_BOUND).await;
    assert!(report.ok(), "{}", failures(&report));
    assert_eq!(report.records_read, 1, "exported since {mark}");
    assert_eq!(
        ids(&written(state.path(), "Patient")),
        ["h0", "h1", "h2", "h3", "h4"]
    );
}

#[tokio::test]
async fn a_job_that_never_finishes_fails_at_the_exports_deadline_and_is_deleted() {
    let server = BulkServer::start(Behaviour {
        polls_before_done: usize::MAX,
        retry_after: vec!["1".into()],
        ..Behaviour::default()
    })
    .await;
    let (r, state, _defs) = export_runner(&defs(
        &server.url,
        "    maxDuration: 3s\n    maxPollInterval: 1s",
        "",
        "",
    ));

    let started = Instant::now();
    let report = run_with_deadline(&r, RUN_BOUND).await;
    let took = started.elapsed();
    assert!(!report.ok());
    assert!(
        failures(&report).contains("did not finish within 3s (`bulkExport.maxDuration`)"),
        "{}",
        failures(&report)
    );
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert_eq!(server.deletes(), 1, "{:?}", server.requests());
    assert!(watermarks(state.path(), "export").is_empty());
}

#[tokio::test]
async fn a_run_dropped_midway_still_deletes_its_job() {
    let server = BulkServer::start(Behaviour {
        polls_before_done: usize::MAX,
        retry_after: vec!["1".into()],
        ..Behaviour::default()
    })
    .await;
    let (r, state, _defs) = export_runner(&defs(&server.url, "    maxPollInterval: 1s", "", ""));

    // Dropped (as a shutdown drops a run's task) once it polls.
    let mut run = Box::pin(r.run(false));
    let polled = async {
        while !server.requests().iter().any(|q| q == "GET /jobs/1") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        _ = &mut run => panic!("the run never ends on its own within its bound"),
        _ = tokio::time::timeout(RUN_BOUND, polled) => {}
    }
    drop(run);
    wait_until(
        Duration::from_secs(10),
        "the dropped run's job deleted",
        || server.deletes() == 1,
    )
    .await;
    assert!(watermarks(state.path(), "export").is_empty());
}

#[tokio::test]
async fn a_retry_after_of_a_year_is_cut_to_the_longest_poll_interval() {
    let in_a_year = (chrono::Utc::now() + chrono::Duration::days(365)).to_rfc2822();
    let server = BulkServer::start(Behaviour {
        polls_before_done: 2,
        retry_after: vec!["31536000".into(), in_a_year],
        files: vec![("Patient".into(), vec![patient_line("y0")])],
        ..Behaviour::default()
    })
    .await;
    let (r, state, _defs) = export_runner(&defs(&server.url, "    maxPollInterval: 1s", "", ""));

    let report = run_with_deadline(&r, RUN_BOUND).await;
    assert!(report.ok(), "{}", failures(&report));
    assert_eq!(ids(&written(state.path(), "Patient")), ["y0"]);
    let polls = server
        .requests()
        .iter()
        .filter(|r| *r == "GET /jobs/1")
        .count();
    assert_eq!(polls, 3);
}

#[tokio::test]
async fn a_file_on_another_origin_is_refused_before_any_download() {
    let other = BulkServer::start(Behaviour {
        files: vec![("Patient".into(), vec![patient_line("x")])],
        ..Behaviour::default()
    })
    .await;
    let server = BulkServer::start(Behaviour {
        files: vec![("Patient".into(), vec![patient_line("a")])],
        foreign_file: Some(format!("{}/files/0", other.url)),
        file_token: Some(TOKEN.into()),
        ..Behaviour::default()
    })
    .await;
    let (r, state, _defs) = export_runner(&defs(&server.url, "    maxPollInterval: 1s", "", ""));

    let report = run_with_deadline(&r, RUN_BOUND).await;
    assert!(!report.ok());
    let text = failures(&report);
    assert!(text.contains("another origin"), "{text}");
    assert!(text.contains("bulkExport.fileOrigins"), "{text}");
    assert!(!text.contains("/files/0"), "no URL in the report: {text}");
    assert!(other.requests().is_empty(), "{:?}", other.requests());
    assert_eq!(server.downloads(), 0);
    assert_eq!(server.deletes(), 1);
    assert!(written(state.path(), "Patient").is_empty());
    assert!(watermarks(state.path(), "export").is_empty());
}

#[tokio::test]
async fn malformed_and_huge_lines_fail_their_records_and_the_rest_goes_on() {
    let lines = vec![
        patient_line("m0"),
        "{\"resourceType\": \"Patient\", oops".to_owned(),
        "[1, 2]".to_owned(),
        format!(
            "{{\"resourceType\":\"Patient\",\"id\":\"big\",\"text\":\"{}\"}}",
            "x".repeat(64 << 10)
        ),
        String::new(),
        patient_line("m1"),
    ];
    let server = BulkServer::start(Behaviour {
        files: vec![("Patient".into(), lines)],
        ..Behaviour::default()
    })
    .await;
    let bulk = "    maxLine: 1KiB\n    batchSize: 2";
    let (r, state, _defs) = export_runner(&defs(
        &server.url,
        bulk,
        "  run: { onRecordError: skip }",
        "",
    ));

    let report = run_with_deadline(&r, RUN_BOUND).await;
    assert!(report.ok(), "{}", failures(&report));
    assert_eq!(ids(&written(state.path(), "Patient")), ["m0", "m1"]);
    assert_eq!(report.records_dead_lettered, 3, "{:?}", report.skipped);
    let skipped: Vec<String> = report
        .skipped
        .iter()
        .map(|s| format!("{}: {}", s.subject, s.reason))
        .collect();
    for (line, why) in [
        (2, "not JSON"),
        (3, "not a JSON object"),
        (4, "longer than `bulkExport.maxLine`"),
    ] {
        assert!(
            skipped
                .iter()
                .any(|s| s.starts_with(&format!("Patient file 1, line {line}:")) && s.contains(why)),
            "{skipped:?}"
        );
    }
    assert!(watermarks(state.path(), "export").contains_key("$export"));
    // With `onRecordError: fail` (the default) the same export fails, and keeps no watermark.
    let (r, state, _defs) = export_runner(&defs(&server.url, bulk, "", ""));
    let report = run_with_deadline(&r, RUN_BOUND).await;
    assert!(!report.ok());
    assert!(
        failures(&report).contains("line 2"),
        "{}",
        failures(&report)
    );
    assert!(watermarks(state.path(), "export").is_empty());
}

#[tokio::test]
async fn a_file_cut_midway_is_read_again_and_nothing_is_written_twice() {
    let n = 250;
    let server = BulkServer::start(Behaviour {
        files: vec![(
            "Patient".into(),
            (0..n).map(|i| patient_line(&format!("c{i}"))).collect(),
        )],
        cut_once_after: Some(120),
        ..Behaviour::default()
    })
    .await;
    let (r, state, _defs) = export_runner(&defs(&server.url, "    batchSize: 50", "", ""));

    let report = run_with_deadline(&r, RUN_BOUND).await;
    assert!(report.ok(), "{}", failures(&report));
    assert_eq!(server.downloads(), 2);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("Patient file 1") && w.contains("read again from line 101")),
        "{:?}",
        report.warnings
    );
    let got = ids(&written(state.path(), "Patient"));
    let mut want: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    want.sort();
    assert_eq!(got, want, "each resource written once");
    assert_eq!(report.records_read, n);
}

#[tokio::test]
async fn kick_off_and_job_failures_are_reported_with_their_outcome() {
    let server = BulkServer::start(Behaviour {
        kick_off_error: Some((
            400,
            crate::fhir_standin::operation_outcome("invalid", "_typeFilter is not supported"),
        )),
        ..Behaviour::default()
    })
    .await;
    let (r, state, _defs) = export_runner(&defs(&server.url, "    maxPollInterval: 1s", "", ""));

    let report = run_with_deadline(&r, RUN_BOUND).await;
    let f = report.failures.first().expect("a failure");
    assert!(
        f.message
            .contains("kick-off failed: answered 400: _typeFilter is not supported"),
        "{}",
        f.message
    );
    assert_eq!(
        f.outcome.as_ref().map(|o| o["issue"][0]["code"].clone()),
        Some("invalid".into())
    );
    // The job fails on the server: its 500 and OperationOutcome; the job is deleted.
    server.set(|b| {
        b.kick_off_error = None;
        b.polls_before_done = 1;
        b.job_error = Some((
            500,
            crate::fhir_standin::operation_outcome("exception", "the export ran out of disk"),
        ));
    });
    let report = run_with_deadline(&r, RUN_BOUND).await;
    let f = report.failures.first().expect("a failure");
    assert!(
        f.message.contains("export failed") && f.message.contains("ran out of disk"),
        "{}",
        f.message
    );
    assert!(f.outcome.is_some());
    assert_eq!(server.deletes(), 1);
    assert!(watermarks(state.path(), "export").is_empty());
}

#[tokio::test]
async fn engine_run_killed_mid_export_keeps_its_watermark_and_the_rerun_writes_each_resource_once()
{
    let helios = Helios::start(Db::Memory).await;
    let n = 40;
    let server = BulkServer::start(Behaviour {
        files: vec![(
            "Patient".into(),
            (0..n).map(|i| patient_line(&format!("k{i}"))).collect(),
        )],
        hang_after: Some(25),
        ..Behaviour::default()
    })
    .await;
    let dir = definitions(&defs(
        &server.url,
        "    batchSize: 10",
        "  sink: helios",
        &helios_sink(&helios.url),
    ));
    let state = tempfile::tempdir().expect("state");
    let mut child = engine_run_command(dir.path(), "export", state.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("`engine run` starts");
    let c = reqwest::Client::new();
    // Killed once two batches are in Helios and the file hangs.
    let end = Instant::now() + RUN_BOUND;
    loop {
        // Helios answers 503 to a read while it writes: that poll does not count.
        let (status, page) =
            crate::helios_client::get_json(&c, &format!("{}/Patient?_count=500", helios.url)).await;
        let got = page["entry"].as_array().map_or(0, Vec::len);
        if status == 200 && got >= 20 {
            break;
        }
        assert!(Instant::now() < end, "two batches written: {got}");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("`engine run` ended before it was killed: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.start_kill().expect("kill");
    let _ = child.wait().await;
    assert!(watermarks(state.path(), "export").is_empty());
    // The rerun exports everything again (no `_since`), and each resource is there once.
    server.set(|b| b.hang_after = None);
    let exit = crate::engine_under_test::exit_of(
        engine_run_command(dir.path(), "export", state.path()),
        RUN_BOUND,
    )
    .await;
    assert_eq!(exit.code, Some(0), "{}\n{}", exit.stdout, exit.stderr);
    assert!(
        !server
            .last_kick_off_query()
            .iter()
            .any(|(k, _)| k == "_since")
    );
    let all = read_all(&c, &helios, &["Patient"], 10).await;
    assert_eq!(all.len(), n);
    assert!(watermarks(state.path(), "export").contains_key("$export"));
    // The killed run could not delete its job; the rerun deleted its own.
    assert_eq!(server.deletes(), 1);
}

#[tokio::test]
async fn a_dry_run_writes_nothing_and_keeps_no_watermark() {
    let server = BulkServer::start(Behaviour {
        files: vec![(
            "Patient".into(),
            vec![patient_line("d0"), patient_line("d1")],
        )],
        ..Behaviour::default()
    })
    .await;
    let dir = definitions(&defs(&server.url, "    since: none", "", ""));
    let model = load(dir.path());
    let state = tempfile::tempdir().expect("state");
    let sink = tempfile::tempdir().expect("sink");
    let r = runner_with_sink_dir(&model, "export", state.path(), sink.path());
    let (report, would) = tokio::time::timeout(RUN_BOUND, r.run(true))
        .await
        .expect("the run ends in time");
    assert!(report.ok(), "{}", failures(&report));
    assert_eq!(ids(&would), ["d0", "d1"]);
    assert!(
        std::fs::read_dir(sink.path())
            .expect("sink")
            .next()
            .is_none()
    );
    assert!(watermarks(state.path(), "export").is_empty());
    assert_eq!(server.deletes(), 1);
}

#[test]
fn definitions_of_bulk_exports_are_checked() {
    let json_source = "apiVersion: fosps.gravitate-health.eu/v1
kind: Source
metadata: { name: api }
spec: { type: json, url: \"http://127.0.0.1:1\" }
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: wrong }
spec:
  strategy: cron
  sources: [api]
  schedule: { cron: \"0 3 * * *\" }
  bulkExport:
    level: group
    types: [patient]
    typeFilter: [\"category=laboratory\"]
    outputFormat: text/csv
    fileOrigins: [\"https://files.example.org/exports\"]
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: grouped }
spec:
  strategy: cron
  sources: [api]
  schedule: { cron: \"0 3 * * *\" }
  bulkExport: { level: system, group: g1, maxDuration: 0s }
";
    let dir = definitions(json_source);
    let (files, read_errors) =
        engine::config::load::read_all(&[dir.path().to_path_buf()]).expect("readable");
    let outcome = engine::config::validate::validate(
        &files,
        read_errors,
        &engine::config::validate::Options {
            allow_unresolved: false,
            run_tests: false,
            fhir_schema: None,
            env: &engine::config::secrets::ProcessEnvironment,
        },
    );
    let messages: Vec<String> = outcome
        .diagnostics
        .iter()
        .map(|d| format!("{}: {}", d.path, d.message))
        .collect();
    for want in [
        "a bulk export reads FHIR sources only",
        "`level: group` needs the Group's id in `group`",
        "`patient` is not a FHIR resource type name",
        "`category=laboratory` is not a search query `Type?params`",
        "`text/csv` is not NDJSON",
        "`https://files.example.org/exports` is not an origin",
        "`group` is for `level: group` only",
        "a duration of zero is not allowed here",
    ] {
        assert!(
            messages.iter().any(|m| m.contains(want)),
            "{want} in {messages:#?}"
        );
    }
    assert!(outcome.model.is_none());
}

/// Files sent gzip-compressed (the engine asks for gzip) are inflated as they stream, and
/// `maxLine` counts the inflated bytes: a line of 64 KiB that compresses to a few hundred
/// bytes is still too long.
#[tokio::test]
async fn gzip_files_are_inflated_as_they_stream_and_max_line_counts_inflated_bytes() {
    let n = 300;
    let mut lines: Vec<String> = (0..n).map(|i| patient_line(&format!("g{i}"))).collect();
    lines.insert(
        7,
        format!(
            "{{\"resourceType\":\"Patient\",\"id\":\"big\",\"text\":\"{}\"}}",
            "x".repeat(64 << 10)
        ),
    );
    let server = BulkServer::start(Behaviour {
        files: vec![("Patient".into(), lines)],
        gzip: true,
        ..Behaviour::default()
    })
    .await;
    let (r, state, _defs) = export_runner(&defs(
        &server.url,
        "    maxLine: 8KiB\n    batchSize: 50",
        "  run: { onRecordError: skip }",
        "",
    ));
    let report = run_with_deadline(&r, RUN_BOUND).await;
    assert!(report.ok(), "{}", failures(&report));
    assert_eq!(
        server.gzipped(),
        1,
        "the engine asked for gzip, and read it"
    );
    let got = ids(&written(state.path(), "Patient"));
    let mut want: Vec<String> = (0..n).map(|i| format!("g{i}")).collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(report.records_dead_lettered, 1, "{:?}", report.skipped);
    assert!(
        report
            .skipped
            .iter()
            .any(|s| s.subject.contains("line 8") && s.reason.contains("maxLine")),
        "{:?}",
        report.skipped
    );
}

/// A gzip bomb (under 1 MiB that inflates to 256 MiB) fails its file at `maxFileSize`,
/// counted inflated, without being read again; the job is deleted.
#[tokio::test]
async fn a_gzip_bomb_fails_at_max_file_size_and_is_not_read_again() {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![b'0'; 1 << 20];
    for _ in 0..256 {
        std::io::Write::write_all(&mut gz, &zeros).expect("gzip");
    }
    let bomb = gz.finish().expect("gzip");
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let server = BulkServer::start(Behaviour {
        files: vec![("Patient".into(), vec![patient_line("never")])],
        gzip_body: Some(std::sync::Arc::new(bomb)),
        ..Behaviour::default()
    })
    .await;
    let (r, state, _defs) = export_runner(&defs(&server.url, "    maxFileSize: 4MiB", "", ""));
    let started = std::time::Instant::now();
    let report = run_with_deadline(&r, RUN_BOUND).await;
    let why = failures(&report);
    assert!(
        why.contains("Patient file 1") && why.contains("maxFileSize"),
        "{why}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.downloads(), 1, "a bomb is not downloaded again");
    assert_eq!(server.deletes(), 1);
    assert!(written(state.path(), "Patient").is_empty());
    assert!(watermarks(state.path(), "export").is_empty());
}

/// A Bulk kick-off goes through the source's circuit breaker: once a failed kick-off has
/// opened it, the next run is refused without calling the server.
#[tokio::test]
async fn an_open_breaker_stops_a_bulk_kick_off_without_calling_the_server() {
    let server = BulkServer::start(Behaviour {
        kick_off_error: Some((
            500,
            crate::fhir_standin::operation_outcome("exception", "the server is down"),
        )),
        ..Behaviour::default()
    })
    .await;
    let yaml = defs(&server.url, "    maxPollInterval: 1s", "", "").replace(
        "  retries: 2\n",
        "  retries: 2\n  breaker: { failures: 1, coolDown: 1h }\n",
    );
    assert!(yaml.contains("coolDown"));
    let (r, _state, _defs) = export_runner(&yaml);

    let report = run_with_deadline(&r, RUN_BOUND).await;
    assert!(
        failures(&report).contains("answered 500"),
        "{}",
        failures(&report)
    );
    let kick_offs = || {
        server
            .requests()
            .iter()
            .filter(|q| q.contains("$export"))
            .count()
    };
    assert_eq!(kick_offs(), 1);
    let report = run_with_deadline(&r, RUN_BOUND).await;
    let why = failures(&report);
    assert!(
        why.contains("kick-off failed") && why.contains("open"),
        "{why}"
    );
    assert_eq!(
        kick_offs(),
        1,
        "the open breaker kept the kick-off from the server"
    );
}

/// The export of a Patient and of the deletion of two others (one there, one already gone)
/// and of an entry that is not a `DELETE`.
fn export_with_deletions() -> Behaviour {
    Behaviour {
        files: vec![("Patient".into(), vec![patient_line("kept-new")])],
        deleted: vec![
            crate::bulk_standin::deleted_line(&["Patient/gone-1"]),
            crate::bulk_standin::deleted_line(&["http://elsewhere.test/fhir/Patient/never-there"]),
            json!({"resourceType": "Bundle", "type": "transaction",
                   "entry": [{"request": {"method": "POST", "url": "Patient"}}]})
            .to_string(),
        ],
        ..Behaviour::default()
    }
}

/// The manifest's `deleted` files (Bulk Data 2.0) are applied to a FHIR sink as `DELETE`s:
/// the resource deleted at the source is gone from Helios, one never there counts as
/// deleted, and an entry that is not a `DELETE` is left alone with a warning.
#[tokio::test]
async fn deleted_resources_of_an_export_are_deleted_at_a_fhir_sink() {
    let helios = Helios::start(Db::Memory).await;
    let c = reqwest::Client::new();
    seed(
        &c,
        &helios.url,
        &[
            json!({"resourceType": "Patient", "id": "gone-1", "active": true}),
            json!({"resourceType": "Patient", "id": "stays", "active": true}),
        ],
    )
    .await;
    let server = BulkServer::start(export_with_deletions()).await;
    let (r, _state, _defs) = export_runner(&defs(
        &server.url,
        "    types: [Patient]",
        "  sink: helios",
        &helios_sink(&helios.url),
    ));
    let report = run_with_deadline(&r, RUN_BOUND).await;
    assert!(report.ok(), "{}", failures(&report));
    assert_eq!(report.resources_written, 1);
    assert_eq!(report.resources_deleted, 2, "{report:?}");
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("deleted file 1: 1 entries are not a `DELETE`")),
        "{:?}",
        report.warnings
    );
    let all = read_all(&c, &helios, &["Patient"], 10).await;
    assert_eq!(
        all.keys().cloned().collect::<Vec<_>>(),
        ["Patient/kept-new", "Patient/stays"]
    );
}

/// Into the NDJSON sink, which only appends, deletions are counted in a warning, not applied.
#[tokio::test]
async fn deleted_resources_into_the_ndjson_sink_are_counted_in_a_warning() {
    let server = BulkServer::start(export_with_deletions()).await;
    let (r, state, _defs) = export_runner(&defs(&server.url, "    types: [Patient]", "", ""));
    let report = run_with_deadline(&r, RUN_BOUND).await;
    assert!(report.ok(), "{}", failures(&report));
    assert_eq!(report.resources_deleted, 0);
    assert!(
        report.warnings.iter().any(|w| w.contains(
            "2 resources the export lists as deleted are not deleted at the sink: the NDJSON sink only appends"
        )),
        "{:?}",
        report.warnings
    );
    assert_eq!(ids(&written(state.path(), "Patient")), ["kept-new"]);
}

/// A Bulk source whose OAuth2 token endpoint is down: the failed token counts against the
/// source's breaker as a failed call would, so the next run is refused at once, without
/// asking the token endpoint again or calling the server.
#[tokio::test]
async fn a_token_endpoint_that_is_down_opens_a_bulk_source_s_breaker() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let server = BulkServer::start(Behaviour::default()).await;
    let asked = Arc::new(AtomicUsize::new(0));
    let counted = asked.clone();
    let (listener, token_url) = crate::local_http::bind().await;
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async {
                (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "down for maintenance",
                )
            }
        }),
    );
    let _token_server = crate::local_http::spawn_app(listener, app);
    let defs_dir = definitions("");
    let secret = defs_dir.path().join("secret");
    std::fs::write(&secret, "client-secret-0123456789").expect("secret");
    let auth = format!(
        "  auth:\n    oauth2:\n      tokenUrl: \"{token_url}/token\"\n      clientId: exporter\n      clientSecret: \"${{file:{}}}\"\n",
        secret.display()
    );
    let yaml = defs(&server.url, "    maxPollInterval: 1s", "", "").replace(
        &format!("  auth: {{ bearer: {{ token: {TOKEN} }} }}\n"),
        &format!("{auth}  breaker: {{ failures: 1, coolDown: 1h }}\n"),
    );
    assert!(
        yaml.contains("tokenUrl") && yaml.contains("coolDown"),
        "{yaml}"
    );
    std::fs::write(defs_dir.path().join("definitions.yaml"), &yaml).expect("definitions");
    let model = load(defs_dir.path());
    let state = tempfile::tempdir().expect("state");
    let r = runner(&model, "export", state.path());

    let report = run_with_deadline(&r, RUN_BOUND).await;
    assert!(
        failures(&report).contains("token endpoint"),
        "{}",
        failures(&report)
    );
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    let report = run_with_deadline(&r, RUN_BOUND).await;
    let why = failures(&report);
    assert!(why.contains("open"), "{why}");
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "the open breaker kept the token endpoint from being asked again"
    );
    assert!(
        server.requests().iter().all(|q| !q.contains("$export")),
        "{:?}",
        server.requests()
    );
}
