//! Whether the engine should be sent traffic: not while it shuts down, and not while its state
//! directory cannot be written (queued pushes, watermarks and dead letters would fail). Shared
//! by every generation of the engine, so a reload does not make a stopping engine ready again.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How long the outcome of a write probe of the state directory is reused, so that frequent
/// probes by Kubernetes do not each touch the disk.
const PROBE_REUSED_FOR: Duration = Duration::from_secs(2);

/// Why the engine is not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// A shutdown signal arrived: requests in flight finish, new ones go elsewhere.
    #[error("shutting down")]
    ShuttingDown,
    /// The state directory cannot be written. The text names no path: callers of `/readyz`
    /// are not told where the engine keeps its files.
    #[error("the state directory cannot be written ({0})")]
    StateNotWritable(String),
}

/// The readiness of the engine.
#[derive(Debug)]
pub struct Readiness {
    state_dir: PathBuf,
    shutting_down: AtomicBool,
    /// When the state directory was last probed, and what the probe found.
    probed: Mutex<Option<(Instant, Result<(), NotReady>)>>,
}

impl Readiness {
    pub fn new(state_dir: &Path) -> Readiness {
        Readiness {
            state_dir: state_dir.to_path_buf(),
            shutting_down: AtomicBool::new(false),
            probed: Mutex::new(None),
        }
    }

    /// From now on the engine reports not ready.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Ready, or why not. Probes the state directory at most once per `PROBE_REUSED_FOR`, on
    /// the blocking pool.
    pub async fn check(&self) -> Result<(), NotReady> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(NotReady::ShuttingDown);
        }
        let now = Instant::now();
        if let Ok(p) = self.probed.lock()
            && let Some((at, found)) = p.as_ref()
            && now.duration_since(*at) < PROBE_REUSED_FOR
        {
            return found.clone();
        }
        let dir = self.state_dir.clone();
        let found = tokio::task::spawn_blocking(move || probe_writable(&dir))
            .await
            .unwrap_or_else(|e| Err(NotReady::StateNotWritable(e.to_string())));
        if let Ok(mut p) = self.probed.lock() {
            *p = Some((now, found.clone()));
        }
        found
    }
}

/// Creates the directory if needed, then writes, flushes and removes a small file in it.
pub fn probe_writable(dir: &Path) -> Result<(), NotReady> {
    let probe = dir.join(".ready-probe");
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b"ok"))
        .and_then(|()| std::fs::File::open(&probe)?.sync_all())
        .and_then(|()| std::fs::remove_file(&probe));
    written.map_err(|e| NotReady::StateNotWritable(e.kind().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_writable_directory_is_ready_and_a_file_in_its_place_is_not() {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let dir = tmp.path().join("state");
        let r = Readiness::new(&dir);
        assert_eq!(r.check().await, Ok(()));
        assert!(
            !dir.join(".ready-probe").exists(),
            "the probe file is removed"
        );

        let blocked = tmp.path().join("blocked");
        std::fs::write(&blocked, b"a file, not a directory").expect("write");
        let r = Readiness::new(&blocked.join("state"));
        assert!(matches!(
            r.check().await,
            Err(NotReady::StateNotWritable(_))
        ));
        let text = r.check().await.expect_err("not ready").to_string();
        assert!(
            !text.contains(tmp.path().to_str().expect("utf-8")),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_shut_down_engine_is_not_ready() {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let r = Readiness::new(tmp.path());
        r.shut_down();
        assert_eq!(r.check().await, Err(NotReady::ShuttingDown));
    }
}
