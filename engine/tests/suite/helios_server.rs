//! Helios FHIR Server, the real R4 and R5 FHIR server of the end-to-end tests: started on
//! 127.0.0.1 as a child process (in memory, or on a SQLite file that survives a restart),
//! serving R4 or R5 by default, ready once `GET /metadata` answers as this server in that
//! version, and killed when dropped. One binary, built with both versions by
//! `scripts/tools.sh`, serves both: each request in the version its `fhirVersion` MIME
//! parameter names, and without one (as the engine writes) in `HFS_DEFAULT_FHIR_VERSION`.
//! Used by every subject that writes into Helios (`helios`, `shipped`, `durability`,
//! `bulk_export`, `fhir_validity`, `fhir_versions_helios`, `outside_12`, `push_stream_queue`),
//! and by `benches/sink.rs` (which includes this file).
//!
//! Helios must be told its port, so the port is taken free and given back before Helios binds
//! it, and another process of the machine (or another test of the run) may bind it in between.
//! So a start that fails (Helios exits, as it does when the port is taken, or another server
//! answers there, or nothing answers in time) is tried again on another port, a few times,
//! and the last failure reports Helios's own output.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::Value;
use tokio::time::Instant;

/// Longest Helios may take to answer `GET /metadata` after it is started.
pub const HELIOS_START: Duration = Duration::from_secs(30);
/// The stack of each of Helios's threads, in bytes.
const HELIOS_STACK: usize = 32 << 20;
/// Starts tried, each on another port, before a test fails.
const START_ATTEMPTS: usize = 4;

/// A file of the test data from outside the project (`tests/data/`, see its README.md).
pub fn testdata(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data")).join(rel)
}

/// The Helios binary; fails the test when it is not installed.
pub fn helios_binary() -> PathBuf {
    crate::outside_tools::installed_tool("HFS_BIN", "hfs-r4-r5/bin/hfs", "Helios FHIR Server")
}

/// A port free now (taken and given back: see the module's note).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind on 127.0.0.1");
    l.local_addr().expect("a local address").port()
}

/// The FHIR version a Helios server serves requests that name none in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fhir {
    R4,
    R5,
}

impl Fhir {
    /// Its name for `HFS_DEFAULT_FHIR_VERSION`.
    fn name(self) -> &'static str {
        match self {
            Fhir::R4 => "R4",
            Fhir::R5 => "R5",
        }
    }

    /// The `fhirVersion` of the server's CapabilityStatement.
    fn release(self) -> &'static str {
        match self {
            Fhir::R4 => "4.0.1",
            Fhir::R5 => "5.0.0",
        }
    }
}

/// Where a Helios server keeps its data.
#[derive(Clone, Copy)]
pub enum Db {
    Memory,
    /// A SQLite file in the server's working directory: kept across restarts.
    File,
}

/// A running Helios server, killed (and waited for) on drop.
pub struct Helios {
    bin: PathBuf,
    work: tempfile::TempDir,
    port: u16,
    /// Where it listens.
    pub url: String,
    /// Its public base URL (`HFS_BASE_URL`): the base of the links it writes.
    pub public: String,
    database: String,
    fhir: Fhir,
    child: Option<Child>,
}

impl Helios {
    pub async fn start(db: Db) -> Helios {
        Helios::start_behind(db, None).await
    }

    /// Starts an R5 server (the ePI servers), with the search parameters of the R5 core.
    pub async fn start_r5(db: Db) -> Helios {
        Helios::start_as(db, None, Fhir::R5).await
    }

    /// Starts an R4 server whose public base URL is `public` (a proxy in front of it).
    pub async fn start_behind(db: Db, public: Option<String>) -> Helios {
        Helios::start_as(db, public, Fhir::R4).await
    }

    /// Starts a server of version `fhir` whose public base URL is `public`, or its own.
    pub async fn start_as(db: Db, public: Option<String>, fhir: Fhir) -> Helios {
        let bin = helios_binary();
        let work = tempfile::tempdir().expect("a working directory for Helios");
        let data = work.path().join("data");
        std::fs::create_dir_all(&data).expect("the data directory of Helios");
        for f in [
            "search-parameters-r4.json",
            "compartment-definitions-r4.json",
            "search-parameters-r5.json",
            "compartment-definitions-r5.json",
        ] {
            let from = testdata("hfs-data").join(f);
            std::fs::copy(&from, data.join(f))
                .unwrap_or_else(|e| panic!("{}: {e} (missing from tests/data/)", from.display()));
        }
        let database = match db {
            Db::Memory => ":memory:".to_owned(),
            Db::File => work.path().join("helios.sqlite").display().to_string(),
        };
        let mut h = Helios {
            bin,
            work,
            port: 0,
            url: String::new(),
            public: String::new(),
            database,
            fhir,
            child: None,
        };
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            h.port = free_port();
            h.url = format!("http://127.0.0.1:{}", h.port);
            h.public = public.clone().unwrap_or_else(|| h.url.clone());
            match h.spawn().await {
                Ok(()) => return h,
                Err(why) => {
                    h.kill();
                    failures.push(format!("attempt {attempt}, port {}: {why}", h.port));
                }
            }
        }
        panic!(
            "Helios did not start:\n{}\nits output:\n{}",
            failures.join("\n"),
            h.log()
        );
    }

    /// Starts the process on `self.port` and waits until `GET /metadata` answers 200 as this
    /// server (its `implementation.url` is its public base URL) in its version; says why not,
    /// the process left running for the caller to kill.
    async fn spawn(&mut self) -> Result<(), String> {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.path().join("helios.log"))
            .expect("the Helios log file");
        writeln!(log, "--- started on port {}", self.port).expect("the Helios log file");
        let mut cmd = Command::new(&self.bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("HFS_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--database-url")
            .arg(&self.database)
            .arg("--log-level")
            .arg("warn")
            .current_dir(self.work.path())
            .env("HFS_BASE_URL", &self.public)
            .env("HFS_DEFAULT_FHIR_VERSION", self.fhir.name())
            // Built unoptimised (`scripts/tools.sh`), its request threads need more than the
            // default 2 MiB stack for an R5 transaction (a Library in one overflowed it).
            .env("RUST_MIN_STACK", HELIOS_STACK.to_string())
            // Startup in well under a second: no conformance resources copied into storage
            // (searches use the SearchParameters of `data/` all the same), no web UI.
            .env("HFS_SEED_CONFORMANCE", "false")
            .env("HFS_UI_ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the Helios log file"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        let c = reqwest::Client::new();
        let end = Instant::now() + HELIOS_START;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("Helios exited ({status}) before answering"));
            }
            if let Ok(r) = c
                .get(format!("{}/metadata", self.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && r.status() == StatusCode::OK
            {
                let metadata: Value = r.json().await.unwrap_or_default();
                let base = metadata["implementation"]["url"].as_str().unwrap_or("");
                let release = metadata["fhirVersion"].as_str().unwrap_or("");
                return if base.trim_end_matches('/') != self.public.trim_end_matches('/') {
                    Err(format!(
                        "another server answers there (its implementation.url is {base:?})"
                    ))
                } else if release != self.fhir.release() {
                    Err(format!(
                        "it serves FHIR {release:?}, not {} ({}): install the Helios that \
                         scripts/tools.sh builds with R4 and R5",
                        self.fhir.release(),
                        self.fhir.name()
                    ))
                } else {
                    Ok(())
                };
            }
            if Instant::now() >= end {
                return Err(format!(
                    "no answer to GET /metadata within {HELIOS_START:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process (SIGKILL: no chance to finish anything) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (the definitions under test name it) and database.
    pub async fn restart(&mut self) {
        self.kill();
        if let Err(why) = self.spawn().await {
            panic!(
                "Helios did not start again on port {}: {why}; its output:\n{}",
                self.port,
                self.log()
            );
        }
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.work.path().join("helios.log")).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text.get(start..).unwrap_or(&text).to_owned()
    }

    /// A link Helios wrote (on its public base), made to reach it directly.
    pub fn direct(&self, link: &str) -> String {
        match link.strip_prefix(&self.public) {
            Some(rest) => format!("{}{rest}", self.url),
            None => link.to_owned(),
        }
    }
}

impl Drop for Helios {
    fn drop(&mut self) {
        self.kill();
    }
}
