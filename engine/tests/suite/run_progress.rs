//! `engine run`'s progress and output for scripts: the real binary against a stand-in FHIR
//! source (`fhir_standin`, paged), writing to the embedded NDJSON sink. Its standard error is
//! a pipe here, not a terminal, so the progress comes as plain `progress:` lines (no cursor
//! movement, no colour); `--output json` puts the run report on standard output as one JSON
//! object, also for a dry run and a failed run.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::engine_under_test::{Exit, definitions, engine_run_command, exit_of};
use crate::fhir_resources::instant;
use crate::fhir_standin::FhirSource;

/// Longest a run of the `engine` binary may take before the test fails.
const BINARY_TIMEOUT: Duration = Duration::from_secs(30);

fn sync_yaml(source: &str) -> String {
    format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: nightly }}
spec:
  strategy: cron
  schedule: {{ cron: \"0 2 * * *\" }}
  fhirVersion: R4
  source: {{ type: fhir, url: \"{source}\", retries: 0, timeout: 5s }}
  sync: {{ resourceTypes: [Patient], incremental: true, pageSize: 2 }}
"
    )
}

fn patient(i: usize) -> Value {
    serde_json::json!({
        "resourceType": "Patient",
        "id": format!("p-{i}"),
        "meta": {"lastUpdated": instant(i as i64 + 1)},
        "name": [{"family": format!("Family{i}")}]
    })
}

async fn engine_run(defs: &Path, state: &Path, args: &[&str]) -> Exit {
    let mut cmd = engine_run_command(defs, "nightly", state);
    cmd.args(args);
    exit_of(cmd, BINARY_TIMEOUT).await
}

/// The `progress:` lines of `stderr`.
fn progress_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("progress: "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_the_progress_is_plain_lines_ending_with_the_totals() {
    let source = FhirSource::start().await;
    for i in 0..5 {
        source.put(patient(i));
    }
    let defs = definitions(&sync_yaml(&source.url));
    let state = tempfile::tempdir().expect("state");

    let out = engine_run(defs.path(), state.path(), &[]).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(
        out.stdout.is_empty(),
        "text output writes nothing on stdout: {out:#?}"
    );
    assert!(
        !out.stderr.contains('\r') && !out.stderr.contains('\u{1b}'),
        "no cursor movement or colour when stderr is not a terminal: {:?}",
        out.stderr
    );
    let lines = progress_lines(&out.stderr);
    // Five patients in pages of two: three pages (the last one without a `next`).
    let done = lines
        .iter()
        .find(|l| l.starts_with("progress: nightly: done: "))
        .unwrap_or_else(|| panic!("a last line with the totals: {}", out.stderr));
    assert!(
        done.starts_with("progress: nightly: done: 3 pages, 5 records, 5 written, 0 failures, "),
        "{done}"
    );
    assert!(done.ends_with(" records/s"), "{done}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("progress: nightly: reading: 3 pages, 5 records, 0 written")),
        "a line once the source is read, before the write: {lines:?}"
    );
    // The report as before, after the progress.
    assert!(
        out.stderr
            .contains("nightly: read 5 records, wrote 5 resources"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_json_prints_the_run_report_for_scripts() {
    let source = FhirSource::start().await;
    for i in 0..3 {
        source.put(patient(i));
    }
    let defs = definitions(&sync_yaml(&source.url));
    let state = tempfile::tempdir().expect("state");

    // A dry run: the report, and the FHIR it would write in `resources`.
    let out = engine_run(
        defs.path(),
        state.path(),
        &["--dry-run", "--output", "json"],
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let report: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is one JSON object ({e}): {}", out.stdout));
    assert_eq!(report["connector"], "nightly");
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["records_read"], 3);
    assert_eq!(
        report["resources"].as_array().map(Vec::len),
        Some(3),
        "{report:#}"
    );

    // A run that writes.
    let out = engine_run(defs.path(), state.path(), &["--output", "json"]).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let report: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is one JSON object ({e}): {}", out.stdout));
    assert_eq!(report["resources_written"], 3, "{report:#}");
    assert_eq!(report["source_calls"], 2, "{report:#}");
    assert_eq!(report["failures"], serde_json::json!([]));
    assert!(
        report.get("resources").is_none(),
        "no resources when it writes"
    );
    assert!(
        report["started"].as_str().is_some() && report["finished"].as_str().is_some(),
        "{report:#}"
    );

    // The source fails: exit 1, and the failure in the JSON.
    source.fail(None, 500);
    let out = engine_run(defs.path(), state.path(), &["--output", "json"]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    let report: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is one JSON object ({e}): {}", out.stdout));
    let failures = report["failures"].as_array().expect("failures");
    assert_eq!(failures.len(), 1, "{report:#}");
    assert_eq!(failures[0]["stage"], "read");
    assert_eq!(failures[0]["subject"], "Patient");
    assert_eq!(report["resources_written"], 0);
    assert!(
        progress_lines(&out.stderr)
            .iter()
            .any(|l| l.starts_with("progress: nightly: done: ") && l.contains(" 1 failures")),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_the_progress_is_drawn_live_and_cleared() {
    let source = FhirSource::start().await;
    for i in 0..5 {
        source.put(patient(i));
    }
    // Slow pages, so that the live line is drawn while the run reads.
    source.delay(Duration::from_millis(300));
    let defs = definitions(&sync_yaml(&source.url));
    let state = tempfile::tempdir().expect("state");
    // `script` (util-linux, in every Debian) runs the command on a pseudo-terminal and copies
    // what it shows to its own stdout.
    let command = format!(
        "{} run nightly -d {} --state-dir {}",
        env!("CARGO_BIN_EXE_engine"),
        defs.path().display(),
        state.path().display()
    );
    let mut cmd = tokio::process::Command::new("script");
    cmd.args(["-q", "-e", "-c", &command, "/dev/null"])
        .env_remove("ENGINE_STATE_DIR")
        .env_remove("ENGINE_SINK_DIR")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = exit_of(cmd, BINARY_TIMEOUT).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let shown = out.stdout;
    assert!(
        shown.contains("nightly") && shown.contains("reading: "),
        "the live line names the connector and its phase: {shown:?}"
    );
    assert!(
        shown.contains('\u{1b}'),
        "drawn with terminal control sequences: {shown:?}"
    );
    assert!(
        progress_lines(&shown).is_empty(),
        "no plain progress lines on a terminal: {shown:?}"
    );
    assert!(
        shown.contains("nightly: read 5 records, wrote 5 resources"),
        "the report follows: {shown:?}"
    );
}
