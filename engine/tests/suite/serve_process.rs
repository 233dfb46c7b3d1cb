//! The `engine serve` binary as a child process, for the tests that need the real binary
//! (signals, reloads): it listens on `127.0.0.1:0`, a port it binds itself, and the test
//! learns the address from its `serving` log line, so no port is taken and given back for
//! another test to bind meanwhile. Its stderr (JSON log lines) is read all along, so the
//! process never blocks on a full pipe, and kept for the test's messages. Used by every
//! subject that needs the real binary (`serve`, `reload`, `durability`, `edge`, `ui`,
//! `shared_cache`, ...).

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// A running `engine serve`, killed if dropped.
pub struct ServeProcess {
    pub child: Child,
    /// Where it listens: `http://127.0.0.1:PORT`.
    pub base: String,
    log: Arc<Mutex<String>>,
    reader: JoinHandle<()>,
}

/// The address of a `serving` log line (JSON format).
fn serving_address(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    (v["fields"]["message"] == "serving")
        .then(|| v["fields"]["address"].as_str().map(str::to_owned))
        .flatten()
}

impl ServeProcess {
    /// Starts `cmd`, an `engine serve` command with its definitions and flags (but no
    /// `--listen`, `--log` or `--log-format`, given here), and waits until it says where it
    /// listens; fails the test, with its log, when it exits first or has not said so within
    /// `deadline`.
    pub async fn start(cmd: Command, deadline: Duration) -> ServeProcess {
        ServeProcess::start_logging(cmd, deadline, "warn,engine=info").await
    }

    /// As `start`, with `--log filter` (which must keep the `serving` line of
    /// `engine::http::server` at `info`).
    pub async fn start_logging(mut cmd: Command, deadline: Duration, filter: &str) -> ServeProcess {
        cmd.args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--log", filter])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("the engine starts");
        let stderr = child.stderr.take().expect("the engine's stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (listening, address) = tokio::sync::oneshot::channel();
        let reader = tokio::spawn({
            let log = log.clone();
            async move {
                let mut listening = Some(listening);
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(addr) = serving_address(&line)
                        && let Some(tx) = listening.take()
                    {
                        let _ = tx.send(addr);
                    }
                    let mut log = log.lock().expect("the engine's log");
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let addr = match tokio::time::timeout(deadline, address).await {
            Ok(Ok(addr)) => addr,
            Ok(Err(_)) => {
                let status = child.wait().await.expect("the engine's exit status");
                let _ = reader.await;
                panic!(
                    "the engine exited ({status}) before listening; its log:\n{}",
                    log.lock().expect("the engine's log")
                );
            }
            Err(_) => panic!(
                "the engine did not say where it listens within {deadline:?}; its log:\n{}",
                log.lock().expect("the engine's log")
            ),
        };
        ServeProcess {
            child,
            base: format!("http://{addr}"),
            log,
            reader,
        }
    }

    /// Its log so far (JSON lines).
    pub fn log(&self) -> String {
        self.log.lock().expect("the engine's log").clone()
    }

    /// Waits for the process to exit (after a signal, say): its status and its whole log;
    /// fails the test when it has not exited within `deadline`.
    pub async fn exit(mut self, deadline: Duration) -> (ExitStatus, String) {
        let status = tokio::time::timeout(deadline, self.child.wait())
            .await
            .expect("the engine exits in time")
            .expect("the engine's exit status");
        tokio::time::timeout(deadline, &mut self.reader)
            .await
            .expect("the engine's log ends")
            .expect("the log reader");
        let log = self.log.lock().expect("the engine's log").clone();
        (status, log)
    }
}
