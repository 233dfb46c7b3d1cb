//! The engine as the end-to-end tests drive it: definitions written to a temporary directory
//! and loaded into a model; a runner of a cron connector, a run with a deadline, and the
//! watermarks it keeps; the `engine run` binary with a deadline (`Exit`); the engine's
//! directories; signed pushes (to the router of `engine_router`) and the drainer of queued
//! ones; and polls with a deadline for its background work. Used by most of the suite's
//! subjects.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use engine::config::secrets::ProcessEnvironment;
use engine::config::validate::{Options, validate};
use engine::model::Model;
use engine::runtime::engine::Dirs;
use engine::runtime::push::PushEndpoint;
use engine::runtime::run::{RunReport, Runner};
use engine::runtime::state::StateDir;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::engine_router::{EngineRouter, RouterCall};

/// Writes definitions to `definitions.yaml` of a new temporary directory.
pub fn definitions(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("definitions.yaml"), yaml).expect("write definitions");
    dir
}

/// Loads and validates the definitions of a directory, with the process environment.
pub fn load(dir: &Path) -> Model {
    let (files, read_errors) =
        engine::config::load::read_all(&[dir.to_path_buf()]).expect("readable definitions");
    let opts = Options {
        allow_unresolved: false,
        run_tests: false,
        fhir_schema: None,
        env: &ProcessEnvironment,
    };
    let outcome = validate(&files, read_errors, &opts);
    outcome
        .model
        .unwrap_or_else(|| panic!("invalid definitions: {:#?}", outcome.diagnostics))
}

/// A runner of a cron connector, on its own clients, whose NDJSON sink is `STATE/ndjson`.
pub fn runner(model: &Model, name: &str, state: &Path) -> Runner {
    runner_with_sink_dir(model, name, state, &state.join("ndjson"))
}

/// A runner of a cron connector, on its own clients, whose NDJSON sink is `sink_dir`.
pub fn runner_with_sink_dir(model: &Model, name: &str, state: &Path, sink_dir: &Path) -> Runner {
    let connector = model.connector(name).expect("the connector").clone();
    let metrics = Arc::new(engine::runtime::metrics::Metrics::default());
    let upstreams = engine::runtime::upstream::Upstreams::new(
        connector.sources.iter().cloned(),
        metrics.clone(),
    )
    .expect("upstream clients");
    Runner::new(
        connector,
        &upstreams,
        StateDir::new(state),
        sink_dir,
        metrics,
        engine::runtime::clock::Clock::system(),
    )
    .expect("a runner")
}

/// One run (not a dry run); fails the test when it takes longer than `deadline`.
pub async fn run_with_deadline(r: &Runner, deadline: Duration) -> RunReport {
    tokio::time::timeout(deadline, r.run(false))
        .await
        .expect("the run ends in time")
        .0
}

/// The watermarks a connector keeps in a state directory.
pub fn watermarks(state: &Path, name: &str) -> BTreeMap<String, String> {
    StateDir::new(state)
        .load(name)
        .expect("readable state")
        .watermarks
}

/// Asserts that an incremental sync searched each of `types` from its watermark in `marks`
/// (which must have one): the first request of the type in `requests` (lines
/// `{prefix}{Type}?{query}`) carries `_lastUpdated=gt{watermark}`, and no other
/// `_lastUpdated`.
pub fn assert_searched_from_watermarks(
    requests: &[String],
    prefix: &str,
    types: &[&str],
    marks: &BTreeMap<String, String>,
) {
    for t in types {
        let mark = marks
            .get(*t)
            .unwrap_or_else(|| panic!("no watermark for {t}: {marks:?}"));
        let first = requests
            .iter()
            .find(|l| l.starts_with(&format!("{prefix}{t}?")))
            .unwrap_or_else(|| panic!("{t} searched in {requests:?}"));
        let query = first.split_once('?').map_or("", |(_, q)| q);
        let since: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
            .filter(|(k, _)| k == "_lastUpdated")
            .map(|(_, v)| v.into_owned())
            .collect();
        assert_eq!(
            since,
            vec![format!("gt{mark}")],
            "{t} is searched from its watermark: {first}"
        );
    }
}

/// What the `engine` binary did.
#[derive(Debug)]
pub struct Exit {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// `engine run NAME -d DEFS --state-dir STATE`, blind to the `ENGINE_STATE_DIR` and
/// `ENGINE_SINK_DIR` of the test's environment and killed if dropped; a test adds the
/// arguments and variables it passes besides.
pub fn engine_run_command(defs: &Path, name: &str, state: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.arg("run")
        .arg(name)
        .arg("-d")
        .arg(defs)
        .arg("--state-dir")
        .arg(state)
        .env_remove("ENGINE_STATE_DIR")
        .env_remove("ENGINE_SINK_DIR")
        .kill_on_drop(true);
    cmd
}

/// Runs an `engine run` command to its end; fails the test when it takes longer than
/// `deadline`.
pub async fn exit_of(mut cmd: tokio::process::Command, deadline: Duration) -> Exit {
    let out = tokio::time::timeout(deadline, cmd.output())
        .await
        .expect("`engine run` ends in time")
        .expect("`engine run` starts");
    Exit {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The engine's directories in `state`: its state there, its NDJSON sink in `STATE/ndjson`.
pub fn dirs_in(state: &Path) -> Dirs {
    Dirs {
        state: state.to_path_buf(),
        sink: state.join("ndjson"),
    }
}

/// The drainer of a push endpoint in queued mode, running in a task until it is stopped.
pub struct Drainer {
    stop: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drainer {
    pub fn start(endpoint: Arc<PushEndpoint>) -> Drainer {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        Drainer {
            stop,
            task: tokio::spawn(endpoint.drain(stopped)),
        }
    }

    /// Stops it; fails the test when it does not end, cleanly, within 10 s.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the drainer stops")
            .expect("the drainer ends cleanly");
    }
}

/// A push to `url` of the engine signed with `secret` at `ts` (`X-Timestamp`,
/// `X-Signature`).
pub fn signed_push(to: &EngineRouter, url: &str, secret: &str, ts: i64, body: &[u8]) -> RouterCall {
    to.post(url)
        .header("content-type", "application/json")
        .header("X-Timestamp", ts.to_string())
        .header("X-Signature", engine::runtime::push::sign(secret, ts, body))
        .body(body.to_vec())
}

/// A push payload: a Patient with this id and a family name made of it, as JSON.
pub fn patient_payload(id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "resourceType": "Patient",
        "id": id,
        "name": [{"family": format!("Family {id}")}]
    }))
    .expect("JSON")
}

/// Polls `check` every 20 ms until it holds; fails the test after `deadline`.
pub async fn wait_until(deadline: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    loop {
        if check() {
            return;
        }
        assert!(Instant::now() < end, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `engine ARGS` in `dir` (standard input closed), its output collected; fails the test
/// when it takes longer than `limit`.
pub async fn engine_in(dir: &Path, args: &[&str], limit: Duration) -> std::process::Output {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("engine starts");
    tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`engine {}` took longer than {limit:?}", args.join(" ")))
        .expect("engine runs")
}

/// What a run printed: its standard output, then its standard error.
pub fn printed(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
