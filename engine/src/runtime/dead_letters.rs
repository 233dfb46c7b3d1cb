//! Dead letters an operator works with: listed a page at a time (id, when, why, size), read
//! one by one (payload, reason, the `OperationOutcome` kept with it), replayed through the
//! connector's *current* definition (removed once written, kept with the new reason when
//! not), and deleted.
//!
//! The store is an interface (`DeadLetterStore`) so that a queue backend other than the local
//! directory can keep its own; `DirStore` is the directory one (`state/push/{name}/dead`,
//! `state/cron/{name}/dead`, a JSON file per letter named by its sequence number). The owner
//! of a connector's letters (`DeadLetters`, a push endpoint or a cron runner) says how one is
//! sent again; `replay` and `delete` are the same for every owner.
//!
//! A letter is replayed or deleted by one caller at a time: it is taken first (a process-wide
//! set of taken letters, since the state directory belongs to one process), and a second
//! replay or a deletion of a taken letter is refused as busy, so two concurrent replays write
//! it once. Ids are opaque to callers and checked before any store sees them (letters, digits,
//! `-` and `_`, at most 64), so that no id names another file.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;

use crate::runtime::metrics::Metrics;
use crate::runtime::state::{self, StateError};

/// Longest dead-letter id.
const MAX_ID: usize = 64;
/// Most letters one page lists.
pub const MAX_PAGE: usize = 1000;

/// Why a dead-letter operation could not be done.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("`{0}` is not a dead-letter id (letters, digits, `-` and `_`, at most 64)")]
    InvalidId(String),
    #[error("no dead letter `{0}`")]
    NotFound(String),
    #[error("dead letter `{0}` is being replayed or deleted now")]
    Busy(String),
    #[error("the dead letters cannot be read or changed: {0}")]
    Storage(String),
}

/// A dead letter's id: checked, so that it names nothing but a letter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct LetterId(String);

impl LetterId {
    /// The id in `text`, or why it is none. What a caller sends is quoted back cut short and
    /// without control characters.
    pub fn parse(text: &str) -> Result<LetterId, DeadLetterError> {
        let ok = !text.is_empty()
            && text.len() <= MAX_ID
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(LetterId(text.to_owned()))
        } else {
            let shown: String = text
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_ID)
                .collect();
            Err(DeadLetterError::InvalidId(shown))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for LetterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A letter as a listing shows it: no payload.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub id: LetterId,
    pub received: Option<String>,
    pub reason: Option<String>,
    /// Size of the kept letter in bytes.
    pub bytes: u64,
}

/// One page of a listing.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// Letters in all.
    pub total: usize,
    pub letters: Vec<Summary>,
    /// The id to list after for the next page, when there is one.
    pub next: Option<LetterId>,
}

/// A whole letter.
#[derive(Debug, Clone, Serialize)]
pub struct Letter {
    pub id: LetterId,
    pub received: Option<String>,
    pub reason: Option<String>,
    /// The `OperationOutcome` kept with the reason (a sink's answer, a validation's finding).
    pub outcome: Option<Value>,
    /// What was received (a push) or read (a cron run's record).
    pub payload: Value,
    /// The delivery's keys (a push), for its Provenance; never shown.
    #[serde(skip)]
    pub keys: Vec<String>,
    /// When it was last replayed, if it was.
    #[serde(rename = "lastReplay")]
    pub last_replay: Option<String>,
    pub bytes: u64,
}

/// A letter taken for a replay: no other replay or deletion gets it until this is dropped.
pub struct Taken {
    pub letter: Letter,
    key: PathBuf,
}

impl Taken {
    /// Claims the letter a store knows as `key` for one request, and reads it with `read`;
    /// `Busy` when another request has it, and the claim released again when `read` fails.
    pub async fn claim<F>(key: PathBuf, id: &LetterId, read: F) -> Result<Taken, DeadLetterError>
    where
        F: Future<Output = Result<Letter, DeadLetterError>>,
    {
        if !claim(&key) {
            return Err(DeadLetterError::Busy(id.0.clone()));
        }
        match read.await {
            Ok(letter) => Ok(Taken { letter, key }),
            Err(e) => {
                release(&key);
                Err(e)
            }
        }
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        release(&self.key);
    }
}

/// Where a connector's dead letters are kept.
pub trait DeadLetterStore: Send + Sync {
    /// Up to `limit` letters after `after` (from the first when `None`), in order.
    fn page(
        &self,
        after: Option<LetterId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, DeadLetterError>>;
    /// One letter whole.
    fn get(&self, id: LetterId) -> BoxFuture<'_, Result<Letter, DeadLetterError>>;
    /// Takes a letter for a replay (`Busy` when it is taken already).
    fn take(&self, id: LetterId) -> BoxFuture<'_, Result<Taken, DeadLetterError>>;
    /// A taken letter that was written: removed for good.
    fn settle(&self, taken: Taken) -> BoxFuture<'_, Result<(), DeadLetterError>>;
    /// A taken letter that was not written: kept, with the new reason and outcome, dated `at`.
    fn keep(
        &self,
        taken: Taken,
        reason: String,
        outcome: Option<Value>,
        at: String,
    ) -> BoxFuture<'_, Result<(), DeadLetterError>>;
    /// Removes a letter (`Busy` while it is being replayed).
    fn remove(&self, id: LetterId) -> BoxFuture<'_, Result<(), DeadLetterError>>;
}

/// Why a letter sent again was not written.
#[derive(Debug)]
pub enum Resend {
    /// Trying later may succeed (the sink away or overloaded).
    Transient(String),
    /// It cannot be written as it is, with the `OperationOutcome` saying why when there is one.
    Permanent(String, Option<Value>),
}

/// The owner of a connector's dead letters: a push endpoint or a cron runner of the current
/// definition.
pub trait DeadLetters: Send + Sync {
    /// The connector's name (metrics labels, logs).
    fn connector_name(&self) -> &str;
    fn store(&self) -> &dyn DeadLetterStore;
    /// Sends a letter's payload through the current mapping and sink; the resources written.
    fn resend<'a>(&'a self, letter: &'a Letter) -> BoxFuture<'a, Result<usize, Resend>>;
    /// Told when a letter is gone (replayed or deleted), for its counters.
    fn gone(&self);
    /// Now, as RFC 3339 (the engine's clock).
    fn now(&self) -> String;
}

/// What a replay did.
#[derive(Debug)]
pub enum Replayed {
    /// Written, and removed from the dead letters.
    Written { resources: usize },
    /// Not written: still a dead letter, with this new reason.
    Kept {
        transient: bool,
        reason: String,
        outcome: Option<Value>,
    },
}

/// Replays letter `id` of `owner` through its current definition: removed once written, kept
/// with the new reason when not. Counted in `engine_dead_letter_replays_total`.
pub async fn replay(
    owner: &dyn DeadLetters,
    metrics: &Metrics,
    id: LetterId,
) -> Result<Replayed, DeadLetterError> {
    let store = owner.store();
    let taken = store.take(id).await?;
    let name = owner.connector_name();
    match owner.resend(&taken.letter).await {
        Ok(resources) => {
            let id = taken.letter.id.clone();
            store.settle(taken).await?;
            owner.gone();
            metrics.dead_letter_replay(name, "written");
            tracing::info!(connector = %name, letter = %id, resources, "dead letter replayed and removed");
            Ok(Replayed::Written { resources })
        }
        Err(failed) => {
            let (transient, reason, outcome) = match failed {
                Resend::Transient(r) => (true, r, None),
                Resend::Permanent(r, o) => (false, r, o),
            };
            let id = taken.letter.id.clone();
            store
                .keep(taken, reason.clone(), outcome.clone(), owner.now())
                .await?;
            metrics.dead_letter_replay(name, "kept");
            tracing::warn!(connector = %name, letter = %id, "dead letter replayed, not written: {reason}");
            Ok(Replayed::Kept {
                transient,
                reason,
                outcome,
            })
        }
    }
}

/// Deletes letter `id` of `owner`. Counted in `engine_dead_letter_deletions_total`.
pub async fn delete(
    owner: &dyn DeadLetters,
    metrics: &Metrics,
    id: LetterId,
) -> Result<(), DeadLetterError> {
    owner.store().remove(id.clone()).await?;
    owner.gone();
    metrics.dead_letter_deletion(owner.connector_name());
    tracing::info!(connector = %owner.connector_name(), letter = %id, "dead letter deleted");
    Ok(())
}

/// Letters taken now, by file.
static TAKEN: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(Mutex::default);

/// Takes `key`; false when it is taken already.
fn claim(key: &Path) -> bool {
    let mut taken = TAKEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    taken.insert(key.to_path_buf())
}

fn release(key: &Path) {
    let mut taken = TAKEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    taken.remove(key);
}

/// Dead letters in a directory of the state directory: a JSON file per letter, `{id}.json`,
/// holding `received`, `reason`, `outcome` and the `payload` (a push) or `record` (a cron
/// run), and a push's `keys`. Its file work runs on the blocking pool.
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
    /// The state directory: errors name files relative to it.
    root: PathBuf,
}

/// A letter file's fields other than its payload, read without building the payload.
#[derive(serde::Deserialize)]
struct Head {
    received: Option<String>,
    reason: Option<String>,
}

impl DirStore {
    pub fn new(dir: PathBuf, root: PathBuf) -> DirStore {
        DirStore { dir, root }
    }

    fn path(&self, id: &LetterId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn storage(&self, e: &StateError) -> DeadLetterError {
        DeadLetterError::Storage(e.within(&self.root))
    }

    fn read(path: &Path, id: &LetterId) -> Result<(Letter, Value), StateError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => return Err(StateError::io(path, e)),
        };
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let text = |k: &str| v[k].as_str().map(str::to_owned);
        let payload = v
            .get("payload")
            .or_else(|| v.get("record"))
            .cloned()
            .unwrap_or(Value::Null);
        let keys = v["keys"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let letter = Letter {
            id: id.clone(),
            received: text("received"),
            reason: text("reason"),
            outcome: v.get("outcome").filter(|o| !o.is_null()).cloned(),
            last_replay: text("lastReplay"),
            payload,
            keys,
            bytes: bytes.len() as u64,
        };
        Ok((letter, v))
    }
}

fn not_found(e: &StateError) -> bool {
    matches!(e, StateError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

impl DeadLetterStore for DirStore {
    fn page(
        &self,
        after: Option<LetterId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, DeadLetterError>> {
        let dir = self.dir.clone();
        Box::pin(async move {
            let limit = limit.clamp(1, MAX_PAGE);
            let page = state::blocking(move || {
                let files = crate::runtime::push::queue::files(&dir);
                let ids: Vec<(LetterId, PathBuf)> = files
                    .into_iter()
                    .filter_map(|p| {
                        let id = LetterId::parse(p.file_stem()?.to_str()?).ok()?;
                        Some((id, p))
                    })
                    .collect();
                let total = ids.len();
                let start = match &after {
                    Some(a) => ids.partition_point(|(id, _)| id <= a),
                    None => 0,
                };
                let mut letters = Vec::new();
                for (id, p) in ids.iter().skip(start).take(limit) {
                    // A letter taken off meanwhile is left out.
                    let Ok(bytes) = std::fs::read(p) else {
                        continue;
                    };
                    let head: Option<Head> = serde_json::from_slice(&bytes).ok();
                    letters.push(Summary {
                        id: id.clone(),
                        received: head.as_ref().and_then(|h| h.received.clone()),
                        reason: head.and_then(|h| h.reason),
                        bytes: bytes.len() as u64,
                    });
                }
                let next = (start + limit < total)
                    .then(|| letters.last().map(|l| l.id.clone()))
                    .flatten();
                Ok(Page {
                    total,
                    letters,
                    next,
                })
            })
            .await
            .map_err(|e| self.storage(&e))?;
            Ok(page)
        })
    }

    fn get(&self, id: LetterId) -> BoxFuture<'_, Result<Letter, DeadLetterError>> {
        let path = self.path(&id);
        Box::pin(async move {
            let shown = id.clone();
            match state::blocking(move || DirStore::read(&path, &id)).await {
                Ok((letter, _)) => Ok(letter),
                Err(e) if not_found(&e) => Err(DeadLetterError::NotFound(shown.0)),
                Err(e) => Err(self.storage(&e)),
            }
        })
    }

    fn take(&self, id: LetterId) -> BoxFuture<'_, Result<Taken, DeadLetterError>> {
        let path = self.path(&id);
        Box::pin(async move {
            if !claim(&path) {
                return Err(DeadLetterError::Busy(id.0));
            }
            // Released by `taken` from here on, whatever happens.
            let key = path.clone();
            let shown = id.clone();
            let read = state::blocking(move || DirStore::read(&path, &id)).await;
            match read {
                Ok((letter, _)) => Ok(Taken { letter, key }),
                Err(e) => {
                    release(&key);
                    if not_found(&e) {
                        Err(DeadLetterError::NotFound(shown.0))
                    } else {
                        Err(self.storage(&e))
                    }
                }
            }
        })
    }

    fn settle(&self, taken: Taken) -> BoxFuture<'_, Result<(), DeadLetterError>> {
        let (path, dir) = (self.path(&taken.letter.id), self.dir.clone());
        Box::pin(async move {
            let removed = state::blocking(move || {
                std::fs::remove_file(&path).map_err(|e| StateError::io(&path, e))?;
                state::sync_dir(&dir)
            })
            .await;
            drop(taken);
            removed.map_err(|e| self.storage(&e))
        })
    }

    fn keep(
        &self,
        taken: Taken,
        reason: String,
        outcome: Option<Value>,
        at: String,
    ) -> BoxFuture<'_, Result<(), DeadLetterError>> {
        let (path, id) = (self.path(&taken.letter.id), taken.letter.id.clone());
        Box::pin(async move {
            let kept = state::blocking(move || {
                let (_, mut v) = DirStore::read(&path, &id)?;
                v["reason"] = Value::String(reason);
                v["outcome"] = outcome.unwrap_or(Value::Null);
                v["lastReplay"] = Value::String(at);
                let bytes = serde_json::to_vec(&v).unwrap_or_default();
                state::write_atomic(&path, &bytes)
            })
            .await;
            drop(taken);
            kept.map_err(|e| self.storage(&e))
        })
    }

    fn remove(&self, id: LetterId) -> BoxFuture<'_, Result<(), DeadLetterError>> {
        let (path, dir) = (self.path(&id), self.dir.clone());
        Box::pin(async move {
            if !claim(&path) {
                return Err(DeadLetterError::Busy(id.0));
            }
            let key = path.clone();
            let removed = state::blocking(move || {
                std::fs::remove_file(&path).map_err(|e| StateError::io(&path, e))?;
                state::sync_dir(&dir)
            })
            .await;
            release(&key);
            match removed {
                Ok(()) => Ok(()),
                Err(e) if not_found(&e) => Err(DeadLetterError::NotFound(id.0)),
                Err(e) => Err(self.storage(&e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_nothing_but_a_letter() {
        assert!(LetterId::parse("00000000000000000042").is_ok());
        assert!(LetterId::parse("1700000000000-0").is_ok());
        let long = "9".repeat(65);
        for bad in [
            "",
            "../x",
            "..",
            "/etc/passwd",
            "a/b",
            "a\0b",
            ".hidden",
            "a.json",
            "a b",
            &long,
        ] {
            assert!(
                matches!(LetterId::parse(bad), Err(DeadLetterError::InvalidId(_))),
                "{bad:?}"
            );
        }
        let Err(e) = LetterId::parse("a\0\u{1b}[31mb") else {
            panic!("refused")
        };
        assert!(!e.to_string().chars().any(char::is_control), "{e}");
    }
}
