//! The local state directory: small JSON documents per connector (watermarks, digests of what
//! was written), each written atomically (a temporary file, flushed, renamed, the directory
//! flushed), so that a crash leaves the old or the new version, never a torn one. The functions
//! here block: async code calls them through `blocking`, on tokio's blocking pool.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the engine remembers about one connector between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorState {
    /// Watermark per stream (a resource type for syncs, `records` for fetches): the largest
    /// `meta.lastUpdated` or cursor value written by a successful run.
    #[serde(default)]
    pub watermarks: BTreeMap<String, String>,
    /// Digest of the last written content of each resource (`Type/id`), for `onlyChanged`.
    #[serde(default)]
    pub written: BTreeMap<String, String>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> StateDir {
        StateDir { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, connector: &str) -> PathBuf {
        self.dir
            .join("connectors")
            .join(format!("{connector}.json"))
    }

    /// The state of a connector (empty when there is none yet).
    pub fn load(&self, connector: &str) -> Result<ConnectorState, StateError> {
        let path = self.file(connector);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConnectorState::default()),
            Err(e) => Err(StateError::io(&path, e)),
        }
    }

    /// Saves the state of a connector atomically.
    pub fn save(&self, connector: &str, state: &ConnectorState) -> Result<(), StateError> {
        let path = self.file(connector);
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| StateError::Corrupt {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        write_atomic(&path, &bytes)
    }
}

/// Why state on disk could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file or folder that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A state document that is not the JSON the engine writes.
    #[error("{path}: {message}")]
    Corrupt { path: String, message: String },
    /// The file work stopped before it finished (its task panicked or was cancelled).
    #[error("the file work stopped: {0}")]
    Stopped(String),
}

impl StateError {
    pub fn io(path: &Path, source: std::io::Error) -> StateError {
        StateError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// The error with its path relative to `base` (the state directory), for log lines: no
    /// absolute local path is logged.
    pub fn within(&self, base: &Path) -> String {
        let relative = |path: &str| {
            Path::new(path).strip_prefix(base).map_or_else(
                |_| "(a file outside the state directory)".to_owned(),
                |p| p.display().to_string(),
            )
        };
        match self {
            StateError::Io { path, source } => format!("{}: {source}", relative(path)),
            StateError::Corrupt { path, message } => format!("{}: {message}", relative(path)),
            StateError::Stopped(why) => format!("the file work stopped: {why}"),
        }
    }

    /// Why, without any path: for a caller's answer.
    pub fn reason(&self) -> String {
        match self {
            StateError::Io { source, .. } => source.to_string(),
            StateError::Corrupt { message, .. } => message.clone(),
            StateError::Stopped(why) => format!("the file work stopped: {why}"),
        }
    }
}

/// Removes the temporary files (`*.tmp`) that `write_atomic` left in `dir` when a crash cut
/// it short; gives how many there were. Call it before anything writes to `dir`.
pub fn remove_leftovers(dir: &Path) -> Result<usize, StateError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StateError::io(dir, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let path = entry.map_err(|e| StateError::io(dir, e))?.path();
        if path.extension().is_some_and(|x| x == "tmp") && path.is_file() {
            std::fs::remove_file(&path).map_err(|e| StateError::io(&path, e))?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// Runs file work (reads, writes, fsyncs, listings) on tokio's blocking pool, off the async
/// workers; an error is the work's own, or says that the work stopped.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StateError> + Send + 'static,
) -> Result<T, StateError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StateError::Stopped(e.to_string()))?
}

/// Writes a file atomically and durably: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path
        .parent()
        .ok_or_else(|| StateError::io(path, std::io::Error::other("no directory")))?;
    std::fs::create_dir_all(dir).map_err(|e| StateError::io(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    let mut f = std::fs::File::create(&tmp).map_err(|e| StateError::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| StateError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| StateError::io(path, e))?;
    sync_dir(dir)
}

/// Flushes a directory's entries (new and renamed files) to disk.
pub fn sync_dir(dir: &Path) -> Result<(), StateError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StateError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_survives_a_new_handle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = StateDir::new(dir.path());
        assert_eq!(s.load("c").expect("empty"), ConnectorState::default());
        let mut st = ConnectorState::default();
        st.watermarks
            .insert("Patient".into(), "2026-01-01T00:00:00Z".into());
        s.save("c", &st).expect("saved");
        assert_eq!(StateDir::new(dir.path()).load("c").expect("loaded"), st);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("connectors"))
            .expect("dir")
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left");
    }
}
