//! The deduplication memory of a push queue: the keys of the deliveries acknowledged within
//! the window, in memory and in `seen.jsonl` (one line per remembered delivery, appended and
//! flushed before the delivery is known as remembered; a queued payload's keys are learnt in
//! memory when it is queued, held by its queue file meanwhile, and get their line when the
//! drainer takes it off the queue), and the keys being processed now.
//! It belongs to the queue directory, not to one definition generation, so requests in flight
//! on an older router see the same memory. It is bounded by the window and by a count
//! (`dedupLimit`, the oldest forgotten first), and `seen.jsonl` is rewritten with the live
//! entries at start and whenever it grows past twice their number.
//!
//! A delivery has several keys: for HMAC callers, what the signature covers (signature and
//! timestamp; an `Idempotency-Key` does not change it); and the caller's `Idempotency-Key`
//! when given, else the digest of the body's canonical JSON (keys sorted, no whitespace). It
//! is a repeat when any of them was seen.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use serde_json::{Value, json};

use crate::model::digest::content_digest;
use crate::runtime::state::{self, StateError};

/// What the memory holds, under one lock so that the decision to process a delivery is
/// race-free.
#[derive(Default)]
struct Keys {
    /// Keys of durable deliveries: when they came (Unix seconds), and the order in which
    /// they were learnt (which breaks ties of the same second).
    seen: HashMap<String, (i64, u64)>,
    /// The order of the next key learnt.
    next: u64,
    /// Keys of deliveries being processed now (a concurrent repeat is refused with 409).
    in_flight: HashSet<String>,
}

/// The memory of one queue directory.
pub(super) struct Memory {
    keys: Mutex<Keys>,
    /// `seen.jsonl`.
    path: PathBuf,
    /// Appends share it; a compaction (which replaces the file) takes it alone.
    file: RwLock<()>,
    /// Lines in `seen.jsonl`.
    lines: AtomicUsize,
}

/// What the memory says of a delivery.
pub(super) enum Verdict {
    /// Seen within the window: acknowledged without writing again.
    Seen,
    /// Being processed now by another request.
    Busy,
    /// Reserved for this request.
    Reserved,
}

impl Memory {
    /// Reads `seen.jsonl` of `dir`, adds `also` (the keys of queued and dead-lettered
    /// payloads, so that a crash between queueing a payload and remembering it cannot let a
    /// resend be queued twice), keeps what is live, and rewrites the file with it.
    pub(super) fn open(
        dir: &Path,
        also: Vec<(String, i64)>,
        now: i64,
        window: i64,
        limit: usize,
    ) -> Result<Memory, StateError> {
        let path = dir.join("seen.jsonl");
        let mut seen: HashMap<String, (i64, u64)> = HashMap::new();
        let mut next = 0;
        let mut learn = |seen: &mut HashMap<String, (i64, u64)>, k: String, t: i64| {
            next += 1;
            let at = seen.entry(k).or_insert((t, next));
            *at = (at.0.max(t), next);
        };
        let mut lines = 0;
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines() {
                    lines += 1;
                    if let Ok(v) = serde_json::from_str::<Value>(line)
                        && let (Some(k), Some(t)) = (v["key"].as_str(), v["at"].as_i64())
                    {
                        learn(&mut seen, k.to_owned(), t);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StateError::io(&path, e)),
        }
        for (k, t) in also {
            learn(&mut seen, k, t);
        }
        prune(&mut seen, now, window, limit);
        if lines != seen.len() {
            state::write_atomic(&path, &jsonl(&seen))?;
        }
        Ok(Memory {
            lines: AtomicUsize::new(seen.len()),
            keys: Mutex::new(Keys {
                seen,
                next,
                in_flight: HashSet::new(),
            }),
            path,
            file: RwLock::new(()),
        })
    }

    /// Whether `keys` are processed by this request: seen within the window, being
    /// processed by another, or reserved (until `release`).
    pub(super) fn reserve(&self, keys: &[String], now: i64, window: i64) -> Verdict {
        let Ok(mut k) = self.keys.lock() else {
            return Verdict::Busy;
        };
        if keys
            .iter()
            .any(|key| k.seen.get(key).is_some_and(|(t, _)| now - t < window))
        {
            return Verdict::Seen;
        }
        if keys.iter().any(|key| k.in_flight.contains(key)) {
            return Verdict::Busy;
        }
        k.in_flight.extend(keys.iter().cloned());
        Verdict::Reserved
    }

    pub(super) fn release(&self, keys: &[String]) {
        if let Ok(mut k) = self.keys.lock() {
            for key in keys {
                k.in_flight.remove(key);
            }
        }
    }

    /// Remembers a delivery: its lines appended to `seen.jsonl` and flushed, then the keys
    /// learnt (under the file's shared lock, so a compaction sees them); past the limit the
    /// oldest are forgotten, and the file is compacted when it has grown past twice the live
    /// entries. Blocks: call it on the blocking pool.
    pub(super) fn remember(
        &self,
        keys: &[String],
        at: i64,
        now: i64,
        window: i64,
        limit: usize,
    ) -> Result<(), StateError> {
        let text: String = keys
            .iter()
            .map(|k| format!("{}\n", json!({"key": k, "at": at})))
            .collect();
        let appended;
        let live = {
            let _shared = self
                .file
                .read()
                .map_err(|e| StateError::Stopped(e.to_string()))?;
            // Learnt in memory even when the file cannot take it, so that this process
            // still acknowledges a repeat.
            appended = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_data()))
                .map_err(|e| StateError::io(&self.path, e));
            self.lines.fetch_add(keys.len(), Ordering::SeqCst);
            self.learn(keys, at, now, window, limit)?
        };
        appended?;
        if self.lines.load(Ordering::SeqCst) > 2 * live + 16 {
            self.compact(now, window, limit)?;
        }
        Ok(())
    }

    /// Learns a delivery's keys in memory only, and returns the live entries: for a queued
    /// payload, whose file holds its keys until the drainer remembers it in `seen.jsonl`
    /// (a restart learns them from the file). Past the limit (with some slack, so the pruning
    /// is not done at every delivery), or every 256 deliveries, the expired and the oldest
    /// are forgotten.
    pub(super) fn learn(
        &self,
        keys: &[String],
        at: i64,
        now: i64,
        window: i64,
        limit: usize,
    ) -> Result<usize, StateError> {
        let mut k = self
            .keys
            .lock()
            .map_err(|e| StateError::Stopped(e.to_string()))?;
        for key in keys {
            k.next += 1;
            let n = k.next;
            k.seen.insert(key.clone(), (at, n));
        }
        if k.seen.len() > limit + limit / 16 || k.next % 256 < keys.len() as u64 {
            prune(&mut k.seen, now, window, limit);
        }
        Ok(k.seen.len())
    }

    /// Rewrites `seen.jsonl` with the live entries.
    fn compact(&self, now: i64, window: i64, limit: usize) -> Result<(), StateError> {
        let _alone = self
            .file
            .write()
            .map_err(|e| StateError::Stopped(e.to_string()))?;
        let live = {
            let mut k = self
                .keys
                .lock()
                .map_err(|e| StateError::Stopped(e.to_string()))?;
            prune(&mut k.seen, now, window, limit);
            k.seen.clone()
        };
        state::write_atomic(&self.path, &jsonl(&live))?;
        self.lines.store(live.len(), Ordering::SeqCst);
        Ok(())
    }
}

/// Keeps the keys seen within the window, and of those the `limit` newest.
fn prune(seen: &mut HashMap<String, (i64, u64)>, now: i64, window: i64, limit: usize) {
    seen.retain(|_, (t, _)| now - *t < window);
    if seen.len() > limit {
        let mut order: Vec<(i64, u64)> = seen.values().copied().collect();
        order.sort_unstable_by(|a, b| b.cmp(a));
        let oldest_kept = order[limit - 1];
        seen.retain(|_, at| *at >= oldest_kept);
    }
}

/// The lines of `seen.jsonl` for these entries, oldest first.
fn jsonl(seen: &HashMap<String, (i64, u64)>) -> Vec<u8> {
    let mut entries: Vec<(&String, &(i64, u64))> = seen.iter().collect();
    entries.sort_by_key(|(_, at)| **at);
    entries
        .into_iter()
        .map(|(k, (t, _))| format!("{}\n", json!({"key": k, "at": t})))
        .collect::<String>()
        .into_bytes()
}

/// The key of an HMAC delivery: a digest of what the signature covers (the timestamp, and
/// the signature, which covers the body), so `seen.jsonl` keeps no signature.
pub(super) fn signed_key(timestamp: &str, signature: &str) -> String {
    format!(
        "hmac:{}",
        content_digest(&[timestamp.trim(), &signature.trim().to_ascii_lowercase()])
    )
}

/// The key of a body without an idempotency key: the digest of its canonical JSON.
pub(super) fn content_key(payload: &Value) -> String {
    let mut text = String::new();
    canonical(payload, &mut text);
    format!("json:{}", content_digest(&[text]))
}

/// Canonical JSON: object keys sorted (by their bytes: any fixed order does here), no
/// whitespace, strings and numbers as `serde_json` writes them.
pub(super) fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&o[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_ignores_whitespace_and_key_order() {
        let a: Value = serde_json::from_str(r#"{"b":[1,{"y":2,"x":"s"}],"a":null}"#).expect("a");
        let b: Value =
            serde_json::from_str("{ \"a\" : null,\n \"b\": [ 1, { \"x\": \"s\", \"y\": 2 } ] }")
                .expect("b");
        let mut text = String::new();
        canonical(&a, &mut text);
        assert_eq!(text, r#"{"a":null,"b":[1,{"x":"s","y":2}]}"#);
        assert_eq!(content_key(&a), content_key(&b));
    }

    #[test]
    fn prune_keeps_the_window_and_the_newest_within_the_limit() {
        let mut seen: HashMap<String, (i64, u64)> =
            (0..10).map(|i| (format!("k{i}"), (i, 0))).collect();
        prune(&mut seen, 10, 8, 3);
        let mut kept: Vec<&String> = seen.keys().collect();
        kept.sort();
        assert_eq!(kept, vec!["k7", "k8", "k9"]);
        // Within one second, the last learnt are kept.
        let mut same: HashMap<String, (i64, u64)> =
            (0..10).map(|i| (format!("k{i}"), (5, i))).collect();
        prune(&mut same, 10, 8, 2);
        let mut kept: Vec<&String> = same.keys().collect();
        kept.sort();
        assert_eq!(kept, vec!["k8", "k9"]);
    }
}
