//! Helios FHIR Server, the real R4 FHIR server of the end-to-end tests: started on 127.0.0.1
//! as a child process (in memory, or on a SQLite file that survives a restart), ready once
//! `GET /metadata` answers, and killed when dropped. Used by `helios` and `shipped`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::time::Instant;

/// Longest Helios may take to answer `GET /metadata` after it is started.
pub const HELIOS_START: Duration = Duration::from_secs(30);

/// A file of the test data from outside the project (`tests/data/`, see its README.md).
pub fn testdata(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data")).join(rel)
}

/// The Helios binary; fails the test when it is not installed.
pub fn helios_binary() -> PathBuf {
    let path = match std::env::var_os("HFS_BIN").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("FOSPS_TOOLS")
            .filter(|t| !t.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                    .join(".local/share/fosps-tools")
            })
            .join("hfs/bin/hfs"),
    };
    assert!(
        path.is_file(),
        "Helios FHIR Server is not installed at {}: run scripts/tools.sh, which installs it \
         (or set HFS_BIN to an `hfs` binary)",
        path.display()
    );
    path
}

/// A port free now (taken and given back).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind on 127.0.0.1");
    l.local_addr().expect("a local address").port()
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
    child: Option<Child>,
}

impl Helios {
    pub async fn start(db: Db) -> Helios {
        Helios::start_behind(db, None).await
    }

    /// Starts a server whose public base URL is `public` (a proxy in front of it).
    pub async fn start_behind(db: Db, public: Option<String>) -> Helios {
        let bin = helios_binary();
        let work = tempfile::tempdir().expect("a working directory for Helios");
        let data = work.path().join("data");
        std::fs::create_dir_all(&data).expect("the data directory of Helios");
        for f in [
            "search-parameters-r4.json",
            "compartment-definitions-r4.json",
        ] {
            let from = testdata("hfs-data").join(f);
            std::fs::copy(&from, data.join(f))
                .unwrap_or_else(|e| panic!("{}: {e} (missing from tests/data/)", from.display()));
        }
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let database = match db {
            Db::Memory => ":memory:".to_owned(),
            Db::File => work.path().join("helios.sqlite").display().to_string(),
        };
        let mut h = Helios {
            bin,
            work,
            port,
            url: url.clone(),
            public: public.unwrap_or(url),
            database,
            child: None,
        };
        h.spawn().await;
        h
    }

    /// Starts the process and waits until `GET /metadata` answers 200.
    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.path().join("helios.log"))
            .expect("the Helios log file");
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
                panic!(
                    "Helios exited ({status}) before answering; its log:\n{}",
                    self.log()
                );
            }
            if let Ok(r) = c
                .get(format!("{}/metadata", self.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && r.status() == StatusCode::OK
            {
                return;
            }
            assert!(
                Instant::now() < end,
                "Helios did not answer GET /metadata within {HELIOS_START:?}; its log:\n{}",
                self.log()
            );
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

    /// Starts it again on the same port and database.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
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
