//! The durable queue of a push connector (`state/push/{connector}`): payloads appended to
//! segment files in `queue/` (see `segment`) and drained in order, dead letters in `dead/`,
//! the deduplication memory, and the drain's record (`inflight.json`: the last payload
//! settled, and the payload being written). All of it belongs to the directory, not to one
//! definition generation: a reload hands the same `Queue` to the new endpoint, so there is one
//! drain lock (one drainer at a time: a new one waits until the old one has finished its
//! payload in flight and stopped), one sequence counter and one memory.
//!
//! Payloads are queued by group commit (`commit`): the payloads that arrive while a commit is
//! being flushed wait for the next one, which appends them to the active segment as records
//! (each numbered by the queue's sequence, length-prefixed and checksummed) with one `write`
//! and one `fdatasync`, plus the directory's fsync when the segment was created for it.
//! Each waiter hears only after that: a payload is acknowledged only once its record is on
//! disk. A segment is rolled past 16 MiB, and deleted once the drainer has settled every
//! record in it.
//!
//! The drain's record is flushed before a payload is written to the sink (naming it) and
//! after (the last settled): a payload that it names when a drainer starts may or may not
//! have reached the sink, and is looked up there (FHIR, by its Provenance) or cut back (NDJSON,
//! to the recorded file lengths) before it is written again; the records up to the last
//! settled are never written again, even if their segment was not deleted yet.
//!
//! At open: leftover `.tmp` files are removed; each segment is read back, a torn tail (a
//! group cut by `kill -9` or a power loss, never acknowledged) truncated, and a damaged
//! record (a wrong checksum or length with readable records after it: disk damage of a
//! payload that may have been acknowledged) moved to the dead letters with its bytes, logged
//! with its segment and offset and counted (`engine_push_queue_damaged_total`), the segment
//! rewritten without it; the keys of queued and dead-lettered payloads are learnt. A queue of
//! the earlier layout (a `queue/{seq:020}.json` file per payload) is drained first, file by
//! file, in the same order. The functions here block: the endpoint calls them on the
//! blocking pool.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};

use super::dedup::Memory;
use super::segment::{self, Record};
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
    /// The next sequence number (of records and dead letters).
    seq: AtomicU64,
    /// Payloads queued and not settled.
    pub(super) queued: AtomicUsize,
    /// Payloads in the dead-letter directory.
    pub(super) dead: AtomicUsize,
    /// Payloads waiting for the next group commit.
    group: Mutex<Group>,
    /// The segment being appended to: the committer's alone.
    active: Mutex<Option<Active>>,
    /// The payloads queued, in order, and which segment is being appended to.
    log: Mutex<Log>,
    /// The last payload settled (written or dead-lettered), if one was.
    settled: Mutex<Option<u64>>,
    /// Counts group commits (`engine_push_queue_commits`) and damaged records.
    metrics: Arc<Metrics>,
    connector: String,
}

/// Most payloads one group commit takes (the rest wait for the next).
const MAX_GROUP: usize = 1024;
/// Most bytes one group commit takes (unless its first payload alone is larger).
const MAX_GROUP_BYTES: usize = 8 << 20;
/// A segment is rolled once it is this long.
const SEGMENT_BYTES: u64 = 16 << 20;
/// Largest record body.
const MAX_RECORD: usize = 1 << 30;

/// The payloads waiting for a commit, and whether a committer is at work.
#[derive(Default)]
struct Group {
    waiting: Vec<Waiting>,
    committing: bool,
}

/// A payload waiting for its group commit: its record's body, the keys to learn once it is
/// flushed, and who hears the end.
struct Waiting {
    bytes: Vec<u8>,
    learn: Learn,
    done: tokio::sync::oneshot::Sender<Result<(), StateError>>,
}

/// A queued delivery's keys, learnt by the deduplication memory once its record is flushed
/// (`at`, within `window`, at most `limit` remembered): by the committer, so that they are
/// learnt even when the caller has gone meanwhile (its connection cut, its time limit
/// passed), and a resend of that payload is a duplicate. The request's reservation of the
/// keys is the committer's too, released after the flush (or its failure): until then a
/// resend is "being processed", never queued again.
pub(super) struct Learn {
    pub(super) keys: Vec<String>,
    pub(super) at: i64,
    pub(super) window: i64,
    pub(super) limit: usize,
}

/// The segment being appended to.
struct Active {
    /// Its name: the sequence of its first record.
    first: u64,
    file: std::fs::File,
    len: u64,
}

/// The queued payloads in order, and the segment being appended to (never deleted).
#[derive(Default)]
struct Log {
    entries: VecDeque<Entry>,
    active: Option<u64>,
}

/// A queued payload: its sequence and where it is.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) seq: u64,
    place: Place,
}

#[derive(Debug, Clone)]
enum Place {
    /// A file of the earlier layout, `queue/{seq:020}.json`.
    File(PathBuf),
    /// A record of segment `segment`.
    Record { segment: u64, record: Record },
}

impl Entry {
    fn segment(&self) -> Option<u64> {
        match self.place {
            Place::Record { segment, .. } => Some(segment),
            Place::File(_) => None,
        }
    }
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

/// A queued payload as its record holds it.
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

/// The keys of a queued payload or dead letter (`keys`, or the `key` of earlier versions).
fn keys_of(v: &Value) -> Vec<String> {
    match v["keys"].as_array() {
        Some(keys) => keys
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect(),
        None => v["key"].as_str().map(str::to_owned).into_iter().collect(),
    }
}

/// What a queued payload gave.
pub(super) enum Read {
    Item(Item),
    /// Taken off the queue meanwhile.
    Gone,
    /// Not what the engine writes (or not readable): the bytes read, if any.
    Unreadable(Option<Vec<u8>>),
}

/// What `inflight.json` names: the payload being written and, for an NDJSON sink, the
/// lengths its files had before.
pub(super) struct InFlight {
    pub(super) seq: u64,
    pub(super) ndjson: BTreeMap<String, u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Queue {
    /// Opens (creating) the queue of `connector` under `state_dir`: leftovers removed,
    /// segments read back (torn tails truncated, damaged records dead-lettered), the memory
    /// read back (with the keys of the payloads queued or dead-lettered), the counters
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
        let queue_dir = dir.join("queue");
        let relative = |p: &Path| {
            p.strip_prefix(state_dir)
                .map_or_else(|_| String::new(), |p| p.display().to_string())
        };
        let settled = std::fs::read(dir.join("inflight.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["settled"].as_u64());
        let is_settled = |seq: u64| settled.is_some_and(|s| seq <= s);
        let mut next = settled.map_or(0, |s| s + 1);
        let mut entries = Vec::new();
        let mut also = Vec::new();
        let mut learn = |bytes: &[u8]| {
            if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
                let at = v["received"]
                    .as_str()
                    .and_then(|r| chrono::DateTime::parse_from_rfc3339(r).ok())
                    .map_or(now, |t| t.timestamp());
                also.extend(keys_of(&v).into_iter().map(|k| (k, at)));
            }
        };
        // The earlier layout: a file per payload, drained first.
        for f in files(&queue_dir) {
            let Some(seq) = seq_of(&f) else {
                tracing::warn!(connector, file = %relative(&f), "a file of the queue directory that the engine did not name is left alone");
                continue;
            };
            next = next.max(seq + 1);
            if is_settled(seq) {
                let _ = std::fs::remove_file(&f);
                continue;
            }
            if let Ok(bytes) = std::fs::read(&f) {
                learn(&bytes);
            }
            entries.push(Entry {
                seq,
                place: Place::File(f),
            });
        }
        // The segments: read back, their tails and damage seen to.
        let segments = segments(&queue_dir);
        let mut damaged = Vec::new();
        for (i, (first, path)) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            next = next.max(first + 1);
            let bytes = std::fs::read(path).map_err(|e| StateError::io(path, e))?;
            let scanned = segment::scan(&bytes, *first, last);
            if let Some(at) = scanned.torn {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|f| f.set_len(at).and_then(|()| f.sync_data()))
                    .map_err(|e| StateError::io(path, e))?;
                tracing::warn!(connector, segment = %relative(path), offset = at, bytes = bytes.len() as u64 - at, "the torn tail of a queue segment (a group commit cut short, never acknowledged) was truncated");
            }
            if let Some(r) = scanned.records.last() {
                next = next.max(r.seq + 1);
            }
            if !scanned.damaged.is_empty() {
                damaged.push((*first, path.clone(), bytes, scanned));
                continue;
            }
            let mut live = 0;
            for r in scanned.records.iter().filter(|r| !is_settled(r.seq)) {
                learn(&bytes[r.offset as usize + segment::HEADER..r.end() as usize]);
                entries.push(Entry {
                    seq: r.seq,
                    place: Place::Record {
                        segment: *first,
                        record: *r,
                    },
                });
                live += 1;
            }
            if live == 0 {
                let _ = std::fs::remove_file(path);
            }
        }
        let dead_files = files(&dir.join("dead"));
        for f in &dead_files {
            if let Ok(bytes) = std::fs::read(f) {
                learn(&bytes);
            }
        }
        next = next.max(next_seq(&dead_files));
        let mut dead = dead_files.len();
        // Damaged records: each span a dead letter with its bytes, then the segment
        // rewritten without them.
        let received = chrono::DateTime::from_timestamp(now, 0)
            .unwrap_or_default()
            .to_rfc3339();
        for (first, path, bytes, scanned) in damaged {
            for span in &scanned.damaged {
                let (from, to) = (span.offset as usize, (span.offset + span.len) as usize);
                let letter = dir.join("dead").join(format!("{next:020}.json"));
                next += 1;
                let reason = format!(
                    "damaged on disk: bytes {from} to {to} of queue segment {} hold no readable record (a wrong checksum or length); kept here as read",
                    relative(&path)
                );
                let item = json!({"keys": [], "received": received, "reason": reason, "payload": String::from_utf8_lossy(&bytes[from..to])});
                state::write_atomic(&letter, &serde_json::to_vec(&item).unwrap_or_default())?;
                dead += 1;
                metrics.push_queue_damaged(connector);
                tracing::error!(connector, segment = %relative(&path), offset = span.offset, bytes = span.len, "a damaged record of a queue segment was moved to the dead letters");
            }
            let mut clean = segment::MAGIC.to_vec();
            for r in &scanned.records {
                clean.extend_from_slice(&bytes[r.offset as usize..r.end() as usize]);
            }
            state::write_atomic(&path, &clean)?;
            let mut live = 0;
            for r in segment::scan(&clean, first, false)
                .records
                .into_iter()
                .filter(|r| !is_settled(r.seq))
            {
                learn(&clean[r.offset as usize + segment::HEADER..r.end() as usize]);
                entries.push(Entry {
                    seq: r.seq,
                    place: Place::Record {
                        segment: first,
                        record: r,
                    },
                });
                live += 1;
            }
            if live == 0 {
                let _ = std::fs::remove_file(&path);
            }
        }
        entries.sort_by_key(|e| e.seq);
        let memory = Memory::open(&dir, also, now, window, limit)?;
        Ok(Queue {
            root: state_dir.to_path_buf(),
            memory,
            drain: Arc::new(tokio::sync::Mutex::new(())),
            wake: tokio::sync::Notify::new(),
            seq: AtomicU64::new(next),
            queued: AtomicUsize::new(entries.len()),
            dead: AtomicUsize::new(dead),
            group: Mutex::default(),
            active: Mutex::new(None),
            log: Mutex::new(Log {
                entries: entries.into(),
                active: None,
            }),
            settled: Mutex::new(settled),
            metrics,
            connector: connector.to_owned(),
            dir,
        })
    }

    /// An error's text for a log line: paths relative to the state directory.
    pub(super) fn why(&self, e: &StateError) -> String {
        e.within(&self.root)
    }

    /// The path of the next file of `sub` (`dead`).
    pub(super) fn next_file(&self, sub: &str) -> PathBuf {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        self.dir.join(sub).join(format!("{seq:020}.json"))
    }

    fn segment_path(&self, first: u64) -> PathBuf {
        self.dir
            .join("queue")
            .join(format!("{first:020}.{}", segment::EXTENSION))
    }

    /// Queues a payload's record body by group commit: returns once its record is flushed,
    /// together with those of the payloads that arrived meanwhile, in their order of arrival,
    /// and its keys learnt (`learn`; also when the caller has stopped waiting).
    pub(super) async fn commit(
        self: &Arc<Self>,
        bytes: Vec<u8>,
        learn: Learn,
    ) -> Result<(), StateError> {
        if bytes.len() > MAX_RECORD {
            self.memory.release(&learn.keys);
            return Err(StateError::Stopped(format!(
                "a payload of {} bytes is larger than a queue record",
                bytes.len()
            )));
        }
        let (done, heard) = tokio::sync::oneshot::channel();
        let lead = {
            let mut g = match self.group.lock() {
                Ok(g) => g,
                Err(e) => {
                    self.memory.release(&learn.keys);
                    return Err(StateError::Stopped(e.to_string()));
                }
            };
            g.waiting.push(Waiting { bytes, learn, done });
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
                let mut g = lock(&self.group);
                if g.waiting.is_empty() {
                    g.committing = false;
                    return;
                }
                let (mut n, mut bytes) = (0, 0);
                while n < g.waiting.len().min(MAX_GROUP) && (n == 0 || bytes < MAX_GROUP_BYTES) {
                    bytes += g.waiting[n].bytes.len();
                    n += 1;
                }
                g.waiting.drain(..n).collect::<Vec<_>>()
            };
            let result = self.commit_group(&group);
            if result.is_ok() {
                self.metrics.push_queue_commit(&self.connector, group.len());
                for w in &group {
                    let l = &w.learn;
                    if let Err(e) = self.memory.learn(&l.keys, l.at, l.at, l.window, l.limit) {
                        tracing::warn!(connector = %self.connector, "cannot record a delivery: {}", self.why(&e));
                    }
                }
            }
            for w in group {
                // The request's reservation, handed over with the payload: released now that
                // the keys are learnt (or the flush failed and a resend may be taken).
                self.memory.release(&w.learn.keys);
                let r = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(again(e)),
                };
                let _ = w.done.send(r);
            }
            if result.is_ok() {
                self.wake.notify_one();
            }
        }
    }

    /// One group commit: the group's records appended to the active segment (a new one when
    /// there is none or it is full) with one write and one `fdatasync`, and the directory's
    /// fsync when the segment is new; then the records are queued for the drainer. Blocks.
    /// On a failure, the segment is cut back to where the group began and closed (the next
    /// group starts a new one); nothing of the group is answered 202.
    fn commit_group(&self, group: &[Waiting]) -> Result<(), StateError> {
        let mut active = lock(&self.active);
        let first = self.seq.fetch_add(group.len() as u64, Ordering::SeqCst);
        let queue_dir = self.dir.join("queue");
        let created = match active.as_ref() {
            Some(a) if a.len < SEGMENT_BYTES => false,
            _ => {
                let path = self.segment_path(first);
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .and_then(|mut f| f.write_all(segment::MAGIC).map(|()| f))
                    .map_err(|e| StateError::io(&path, e))?;
                *active = Some(Active {
                    first,
                    file,
                    len: segment::MAGIC.len() as u64,
                });
                true
            }
        };
        let Some(a) = active.as_mut() else {
            return Err(StateError::Stopped("no active segment".into()));
        };
        let size: usize = group.iter().map(|w| segment::HEADER + w.bytes.len()).sum();
        let mut buf = Vec::with_capacity(size);
        let mut records = Vec::with_capacity(group.len());
        for (seq, w) in (first..).zip(group) {
            let offset = a.len + buf.len() as u64;
            segment::encode(&mut buf, seq, &w.bytes);
            records.push(Record {
                seq,
                offset,
                len: w.bytes.len() as u32,
            });
        }
        let path = self.segment_path(a.first);
        let flushed = a
            .file
            .write_all(&buf)
            .and_then(|()| a.file.sync_data())
            .map_err(|e| StateError::io(&path, e))
            .and_then(|()| match created {
                true => state::sync_dir(&queue_dir),
                false => Ok(()),
            });
        if let Err(e) = flushed {
            let _ = a.file.set_len(a.len);
            *active = None;
            return Err(e);
        }
        a.len += buf.len() as u64;
        let segment = a.first;
        let mut log = lock(&self.log);
        if created
            && let Some(previous) = log.active.replace(segment)
            && !log.entries.iter().any(|e| e.segment() == Some(previous))
        {
            let _ = std::fs::remove_file(self.segment_path(previous));
        }
        log.entries.extend(records.into_iter().map(|record| Entry {
            seq: record.seq,
            place: Place::Record { segment, record },
        }));
        self.queued.fetch_add(group.len(), Ordering::SeqCst);
        Ok(())
    }

    /// The first payload queued, if one is.
    pub(super) fn front(&self) -> Option<Entry> {
        lock(&self.log).entries.front().cloned()
    }

    /// A queued payload.
    pub(super) fn read(&self, entry: &Entry) -> Read {
        match &entry.place {
            Place::File(file) => match std::fs::read(file) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Read::Gone,
                Err(_) => Read::Unreadable(None),
                Ok(bytes) => Item::parse(&bytes).map_or(Read::Unreadable(None), Read::Item),
            },
            Place::Record { segment, record } => {
                let mut bytes = vec![0; segment::HEADER + record.len as usize];
                let read = std::fs::File::open(self.segment_path(*segment))
                    .and_then(|f| f.read_exact_at(&mut bytes, record.offset));
                if read.is_err() {
                    return Read::Unreadable(None);
                }
                match segment::body_of(&bytes, record) {
                    None => Read::Unreadable(Some(bytes)),
                    Some(body) => match Item::parse(&body) {
                        Some(item) => Read::Item(item),
                        None => Read::Unreadable(Some(body)),
                    },
                }
            }
        }
    }

    /// The drain's record (`inflight.json`): the last settled payload and, while one is
    /// written, that payload.
    fn record_path(&self) -> PathBuf {
        self.dir.join("inflight.json")
    }

    /// The payload named in flight, if one is.
    pub(super) fn inflight(&self) -> Option<InFlight> {
        let v: Value = serde_json::from_slice(&std::fs::read(self.record_path()).ok()?).ok()?;
        // `file`: the in-flight record of the earlier layout, naming its queue file.
        let seq = v["seq"]
            .as_u64()
            .or_else(|| v["file"].as_str().and_then(|f| seq_of(Path::new(f))))?;
        Some(InFlight {
            seq,
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

    /// Records, durably, that payload `seq` is being written (with the NDJSON files'
    /// lengths).
    pub(super) fn record_inflight(
        &self,
        seq: u64,
        ndjson: &BTreeMap<String, u64>,
    ) -> Result<(), StateError> {
        let settled = *lock(&self.settled);
        let bytes = serde_json::to_vec(&json!({"settled": settled, "seq": seq, "ndjson": ndjson}))
            .unwrap_or_default();
        state::write_atomic(&self.record_path(), &bytes)
    }

    /// Takes a written (or dead-lettered) payload off the queue: recorded durably as the
    /// last settled, then its file (the earlier layout) or its segment, once every record
    /// in it is settled, removed.
    pub(super) fn settle(&self, entry: &Entry) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(&json!({"settled": entry.seq})).unwrap_or_default();
        state::write_atomic(&self.record_path(), &bytes)?;
        *lock(&self.settled) = Some(entry.seq);
        let finished = {
            let mut log = lock(&self.log);
            if log.entries.front().is_some_and(|e| e.seq == entry.seq) {
                log.entries.pop_front();
            }
            entry.segment().filter(|s| {
                log.active != Some(*s)
                    && log.entries.front().is_none_or(|e| e.segment() != Some(*s))
            })
        };
        if let Place::File(file) = &entry.place {
            let _ = std::fs::remove_file(file);
        }
        if let Some(segment) = finished {
            let _ = std::fs::remove_file(self.segment_path(segment));
        }
        Ok(())
    }

    /// Moves an unreadable queued payload to the dead letters (a file of the earlier layout
    /// as it is; a record's bytes, as text, in a new letter dated `received`), then settles
    /// it.
    pub(super) fn bury(
        &self,
        entry: &Entry,
        bytes: Option<Vec<u8>>,
        received: &str,
    ) -> Result<(), StateError> {
        match &entry.place {
            Place::File(file) => {
                let to = self
                    .dir
                    .join("dead")
                    .join(file.file_name().unwrap_or_default());
                std::fs::rename(file, &to).map_err(|e| StateError::io(file, e))?;
                state::sync_dir(&self.dir.join("dead"))?;
            }
            Place::Record { segment, record } => {
                let path = self.segment_path(*segment);
                let reason = format!(
                    "unreadable: the record at byte {} of queue segment {} could not be read back (its checksum, length or JSON is wrong); kept here as read",
                    record.offset,
                    path.strip_prefix(&self.root)
                        .map_or_else(|_| String::new(), |p| p.display().to_string())
                );
                let text = bytes.map(|b| String::from_utf8_lossy(&b).into_owned());
                let item =
                    json!({"keys": [], "received": received, "reason": reason, "payload": text});
                let letter = self.next_file("dead");
                state::write_atomic(&letter, &serde_json::to_vec(&item).unwrap_or_default())?;
            }
        }
        self.settle(entry)
    }

    /// A queued payload's record body.
    pub(super) fn item_bytes(keys: &[String], received: &str, payload: &Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "key": keys.first(),
            "keys": keys,
            "received": received,
            "payload": payload
        }))
        .unwrap_or_default()
    }
}

/// The same error again, for each waiter of a failed group: what the disk said (a full disk,
/// a file size limit) and the file, not "the file work stopped".
fn again(e: &StateError) -> StateError {
    match e {
        StateError::Io { path, source } => StateError::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        StateError::Corrupt { path, message } => StateError::Corrupt {
            path: path.clone(),
            message: message.clone(),
        },
        StateError::Stopped(why) => StateError::Stopped(why.clone()),
    }
}

/// The sequence a file of the queue is named by (`{seq:020}.json`).
fn seq_of(file: &Path) -> Option<u64> {
    file.file_stem()?.to_str()?.parse().ok()
}

/// The segments of a queue directory, by the sequence of their first record.
fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == segment::EXTENSION))
                .filter_map(|p| Some((seq_of(&p)?, p)))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
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
