//! The durable queue of a push connector (`state/push/{connector}`): payload files in
//! `queue/` drained in order, dead letters in `dead/`, the deduplication memory, and the
//! record of the payload being written (`inflight.json`). All of it belongs to the directory,
//! not to one definition generation: a reload hands the same `Queue` to the new endpoint, so
//! there is one drain lock (one drainer at a time: a new one waits until the old one has
//! finished its payload in flight and stopped), one sequence counter and one memory.
//!
//! The in-flight record is flushed before a payload is written to the sink and removed after
//! its queue file is: a payload that it names when a drainer starts may or may not have
//! reached the sink, and is looked up there (FHIR, by its Provenance) or cut back (NDJSON, to
//! the recorded file lengths) before it is written again. Leftover `.tmp` files of an atomic
//! write cut by a crash are removed when the queue is opened. The functions here block: the
//! endpoint calls them on the blocking pool.
//!
//! Payloads are queued by group commit (`commit`): the payloads that arrive while a commit is
//! being flushed wait for the next one, which writes their files whole, renames them in
//! sequence order, and flushes them all at once (each file's fsync and the directory's, issued
//! together so that the file system commits them as one). Each waiter hears only after that:
//! a payload is acknowledged only once its file and name are on disk. A crash (even `kill -9`)
//! between the write and the flush leaves `.tmp` files (removed at open: not acknowledged, so
//! the caller sends again) or named files (queued, their keys learnt from them at open, so a
//! resend is a duplicate).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::dedup::Memory;
use crate::runtime::metrics::Metrics;
use crate::runtime::state::{self, StateError};

/// One queue directory, shared by the endpoints of every generation of its connector.
pub(super) struct Queue {
    /// `state/push/{connector}`.
    pub(super) dir: PathBuf,
    /// The state directory, for log lines that name files relative to it.
    pub(super) root: PathBuf,
    pub(super) memory: Memory,
    /// Held by the one drainer of the queue.
    pub(super) drain: Arc<tokio::sync::Mutex<()>>,
    /// Told when a payload is queued.
    pub(super) wake: tokio::sync::Notify,
    seq: AtomicU64,
    /// Payloads in the queue directory.
    pub(super) queued: AtomicUsize,
    /// Payloads in the dead-letter directory.
    pub(super) dead: AtomicUsize,
    /// Payloads waiting for the next group commit.
    group: Mutex<Group>,
    /// Counts group commits (`engine_push_queue_commits`).
    metrics: Arc<Metrics>,
    connector: String,
}

/// Most payloads one group commit takes (the rest wait for the next).
const MAX_GROUP: usize = 512;
/// Most threads that flush one group's files together.
const FLUSHERS: usize = 32;

/// The payloads waiting for a commit, and whether a committer is at work.
#[derive(Default)]
struct Group {
    waiting: Vec<Waiting>,
    committing: bool,
}

/// A payload waiting for its group commit: its queue file, content, and who hears the end.
struct Waiting {
    path: PathBuf,
    bytes: Vec<u8>,
    done: tokio::sync::oneshot::Sender<Result<(), StateError>>,
}

/// Held by the committer: if it stops midway (a panic), the next payload starts another,
/// and the waiters of the lost group hear that it stopped (their senders are dropped).
struct Committing<'a>(&'a Queue);

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut g = self.0.group.lock().unwrap_or_else(|e| e.into_inner());
            g.committing = false;
        }
    }
}

/// A queued payload as its file holds it.
pub(super) struct Item {
    /// The delivery's keys, the first one naming it.
    pub(super) keys: Vec<String>,
    /// When it was received (RFC 3339).
    pub(super) received: String,
    pub(super) payload: Value,
}

impl Item {
    fn parse(bytes: &[u8]) -> Option<Item> {
        let mut v: Value = serde_json::from_slice(bytes).ok()?;
        Some(Item {
            keys: keys_of(&v),
            received: v["received"].as_str().unwrap_or("").to_owned(),
            payload: v.get_mut("payload")?.take(),
        })
    }
}

/// The keys of a queue or dead-letter file (`keys`, or the `key` of earlier versions).
fn keys_of(v: &Value) -> Vec<String> {
    match v["keys"].as_array() {
        Some(keys) => keys
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect(),
        None => v["key"].as_str().map(str::to_owned).into_iter().collect(),
    }
}

/// What a queue file gave.
pub(super) enum Read {
    Item(Item),
    /// Taken off the queue meanwhile.
    Gone,
    /// Not what the engine writes (or not readable).
    Unreadable,
}

/// What `inflight.json` says: the queue file being written and, for an NDJSON sink, the
/// lengths its files had before.
pub(super) struct InFlight {
    pub(super) file: String,
    pub(super) ndjson: BTreeMap<String, u64>,
}

impl Queue {
    /// Opens (creating) the queue of `connector` under `state_dir`: leftovers removed, the
    /// memory read back (with the keys of the payloads queued or dead-lettered), the counters
    /// counted.
    pub(super) fn open(
        state_dir: &Path,
        connector: &str,
        now: i64,
        window: i64,
        limit: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Queue, StateError> {
        let dir = state_dir.join("push").join(connector);
        for sub in ["queue", "dead"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| StateError::io(&d, e))?;
            let removed = state::remove_leftovers(&d)?;
            if removed > 0 {
                tracing::info!(
                    connector,
                    removed,
                    "removed the temporary files of writes cut short in push/{connector}/{sub}"
                );
            }
        }
        state::remove_leftovers(&dir)?;
        let (queue, dead) = (files(&dir.join("queue")), files(&dir.join("dead")));
        let mut also = Vec::new();
        for f in queue.iter().chain(&dead) {
            if let Ok(bytes) = std::fs::read(f)
                && let Ok(v) = serde_json::from_slice::<Value>(&bytes)
            {
                let at = v["received"]
                    .as_str()
                    .and_then(|r| chrono::DateTime::parse_from_rfc3339(r).ok())
                    .map_or(now, |t| t.timestamp());
                also.extend(keys_of(&v).into_iter().map(|k| (k, at)));
            }
        }
        let memory = Memory::open(&dir, also, now, window, limit)?;
        let seq = next_seq(&queue).max(next_seq(&dead));
        Ok(Queue {
            root: state_dir.to_path_buf(),
            memory,
            drain: Arc::new(tokio::sync::Mutex::new(())),
            wake: tokio::sync::Notify::new(),
            seq: AtomicU64::new(seq),
            queued: AtomicUsize::new(queue.len()),
            dead: AtomicUsize::new(dead.len()),
            group: Mutex::default(),
            metrics,
            connector: connector.to_owned(),
            dir,
        })
    }

    /// An error's text for a log line: paths relative to the state directory.
    pub(super) fn why(&self, e: &StateError) -> String {
        e.within(&self.root)
    }

    /// The path of the next file of `sub` (`queue` or `dead`).
    pub(super) fn next_file(&self, sub: &str) -> PathBuf {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        self.dir.join(sub).join(format!("{seq:020}.json"))
    }

    /// Queues a payload's file content by group commit: returns once the file and its name
    /// are flushed, together with those of the payloads that arrived meanwhile. Its file
    /// takes the next sequence number now, so payloads keep their order of arrival.
    pub(super) async fn commit(self: &Arc<Self>, bytes: Vec<u8>) -> Result<(), StateError> {
        let (done, heard) = tokio::sync::oneshot::channel();
        let lead = {
            let mut g = self
                .group
                .lock()
                .map_err(|e| StateError::Stopped(e.to_string()))?;
            g.waiting.push(Waiting {
                path: self.next_file("queue"),
                bytes,
                done,
            });
            !std::mem::replace(&mut g.committing, true)
        };
        if lead {
            let queue = self.clone();
            tokio::task::spawn_blocking(move || queue.commit_groups());
        }
        heard
            .await
            .map_err(|_| StateError::Stopped("the queue's commit stopped".into()))?
    }

    /// Commits groups until none is waiting. Blocks.
    fn commit_groups(&self) {
        let _guard = Committing(self);
        loop {
            let group = {
                let mut g = self.group.lock().unwrap_or_else(|e| e.into_inner());
                if g.waiting.is_empty() {
                    g.committing = false;
                    return;
                }
                let n = g.waiting.len().min(MAX_GROUP);
                g.waiting.drain(..n).collect::<Vec<_>>()
            };
            let results = self.commit_group(&group);
            self.metrics.push_queue_commit(&self.connector, group.len());
            for (w, r) in group.into_iter().zip(results) {
                let _ = w.done.send(r);
            }
        }
    }

    /// One group commit: every file written whole under its temporary name and renamed, in
    /// sequence order; then one flush of them all: each file's fsync and the directory's,
    /// issued together so that the file system commits them at once. Blocks.
    ///
    /// A payload is answered only after that flush. A file is renamed only once it is
    /// written whole, so a drainer (or a restart after `kill -9`) never reads half of one;
    /// after a power loss within the flush, a named file of a payload not yet answered may
    /// be empty, and is moved to the dead letters when drained.
    fn commit_group(&self, group: &[Waiting]) -> Vec<Result<(), StateError>> {
        let mut written: Vec<Result<std::fs::File, StateError>> = group
            .iter()
            .map(|w| {
                let tmp = w.path.with_file_name(format!(
                    ".{}.tmp",
                    w.path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or("queued")
                ));
                let file = std::fs::File::create(&tmp)
                    .and_then(|mut f| f.write_all(&w.bytes).map(|()| f))
                    .and_then(|f| std::fs::rename(&tmp, &w.path).map(|()| f))
                    .map_err(|e| StateError::io(&tmp, e));
                if file.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                file
            })
            .collect();
        let dir = self.dir.join("queue");
        let dir_flushed = match tokio::runtime::Handle::try_current() {
            Ok(pool) => flush_on(&pool, &mut written, group, || state::sync_dir(&dir)),
            Err(_) => flush_scoped(&mut written, group, || state::sync_dir(&dir)),
        };
        written
            .into_iter()
            .map(|f| match (f, &dir_flushed) {
                (Err(e), _) => Err(e),
                (Ok(_), Ok(())) => Ok(()),
                // The names may not be on disk: no payload of the group is answered 202 (the
                // files stay queued, and are written).
                (Ok(_), Err(e)) => Err(StateError::io(&dir, std::io::Error::other(e.to_string()))),
            })
            .collect()
    }

    /// The queue's files in order.
    pub(super) fn listing(&self) -> Vec<PathBuf> {
        files(&self.dir.join("queue"))
    }

    /// A queue file's payload.
    pub(super) fn read(file: &Path) -> Read {
        match std::fs::read(file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Read::Gone,
            Err(_) => Read::Unreadable,
            Ok(bytes) => Item::parse(&bytes).map_or(Read::Unreadable, Read::Item),
        }
    }

    /// A queue file's content.
    pub(super) fn item_bytes(keys: &[String], received: &str, payload: &Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "key": keys.first(),
            "keys": keys,
            "received": received,
            "payload": payload
        }))
        .unwrap_or_default()
    }

    fn inflight_path(&self) -> PathBuf {
        self.dir.join("inflight.json")
    }

    /// The in-flight record, if there is one.
    pub(super) fn inflight(&self) -> Option<InFlight> {
        let v: Value = serde_json::from_slice(&std::fs::read(self.inflight_path()).ok()?).ok()?;
        Some(InFlight {
            file: v["file"].as_str()?.to_owned(),
            ndjson: v["ndjson"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, n)| Some((k.clone(), n.as_u64()?)))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// Records, durably, that `file` is being written (with the NDJSON files' lengths).
    pub(super) fn record_inflight(
        &self,
        file: &str,
        ndjson: &BTreeMap<String, u64>,
    ) -> Result<(), StateError> {
        let bytes =
            serde_json::to_vec(&json!({"file": file, "ndjson": ndjson})).unwrap_or_default();
        state::write_atomic(&self.inflight_path(), &bytes)
    }

    /// Takes a written payload off the queue, then clears the in-flight record.
    pub(super) fn remove(&self, file: &Path) -> Result<(), StateError> {
        match std::fs::remove_file(file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StateError::io(file, e));
            }
            _ => {}
        }
        state::sync_dir(&self.dir.join("queue"))?;
        let record = self.inflight_path();
        match std::fs::remove_file(&record) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StateError::io(&record, e)),
            _ => state::sync_dir(&self.dir),
        }
    }

    /// Moves an unreadable queue file to the dead letters.
    pub(super) fn bury(&self, file: &Path) -> Result<(), StateError> {
        let to = self
            .dir
            .join("dead")
            .join(file.file_name().unwrap_or_default());
        std::fs::rename(file, &to).map_err(|e| StateError::io(file, e))?;
        state::sync_dir(&self.dir.join("dead"))?;
        state::sync_dir(&self.dir.join("queue"))
    }
}

/// The written files' fsyncs, issued together on the runtime's blocking pool (its threads
/// are kept between groups: starting a thread per flusher cost more than many a flush),
/// with `also` (the directory's) on this thread meanwhile; a file whose flush fails, or
/// whose flusher stopped, becomes an error. Blocks until all are done.
fn flush_on<T>(
    pool: &tokio::runtime::Handle,
    written: &mut [Result<std::fs::File, StateError>],
    group: &[Waiting],
    also: impl FnOnce() -> T,
) -> T {
    let per = written.len().div_ceil(FLUSHERS).max(1);
    let (told, heard) = std::sync::mpsc::channel::<(usize, std::io::Result<()>)>();
    let mut asked = Vec::with_capacity(written.len());
    for (start, chunk) in (0..).step_by(per).zip(written.chunks(per)) {
        // The same open file (a second descriptor of it), flushed by another thread.
        let files: Vec<(usize, std::io::Result<std::fs::File>)> = chunk
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.as_ref().ok().map(|f| (start + i, f.try_clone())))
            .collect();
        if files.is_empty() {
            continue;
        }
        asked.extend(files.iter().map(|(i, _)| *i));
        let told = told.clone();
        pool.spawn_blocking(move || {
            for (i, file) in files {
                let _ = told.send((i, file.and_then(|f| f.sync_all())));
            }
        });
    }
    drop(told);
    let out = also();
    let mut flushed = vec![false; written.len()];
    // Ends once every flusher has ended (its sender dropped, also when it panicked).
    for (i, result) in heard {
        flushed[i] = true;
        if let Err(e) = result {
            written[i] = Err(StateError::io(&group[i].path, e));
        }
    }
    for i in asked {
        if !flushed[i] {
            written[i] = Err(StateError::Stopped(
                "the flush of a queued file stopped".into(),
            ));
        }
    }
    out
}

/// The same as `flush_on`, on threads of its own (outside a runtime).
fn flush_scoped<T>(
    written: &mut [Result<std::fs::File, StateError>],
    group: &[Waiting],
    also: impl FnOnce() -> T,
) -> T {
    let per = written.len().div_ceil(FLUSHERS).max(1);
    std::thread::scope(|s| {
        for (chunk, waiting) in written.chunks_mut(per).zip(group.chunks(per)) {
            s.spawn(move || {
                for (f, w) in chunk.iter_mut().zip(waiting) {
                    if let Ok(file) = f
                        && let Err(e) = file.sync_all()
                    {
                        *f = Err(StateError::io(&w.path, e));
                    }
                }
            });
        }
        also()
    })
}

/// Files of a queue directory in order.
pub(crate) fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The sequence number after the last of a queue directory's files.
pub(crate) fn next_seq(files: &[PathBuf]) -> u64 {
    files
        .last()
        .and_then(|p| p.file_stem()?.to_str()?.parse::<u64>().ok())
        .map_or(0, |n| n + 1)
}

/// One file fewer (never below zero).
pub(super) fn decrement(count: &AtomicUsize) {
    let _ = count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
        Some(n.saturating_sub(1))
    });
}
