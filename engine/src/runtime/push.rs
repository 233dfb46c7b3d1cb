//! Push endpoints: callers authenticated (HMAC-SHA256 of `timestamp.body` within a tolerance,
//! or a bearer token or API key, compared in constant time), bodies bounded, payloads mapped
//! and written, and acknowledged only when durable: written to the sink (sync mode), or
//! appended and flushed to a local queue drained in order with backoff, also after a restart
//! (queued mode). Payloads that can never be written go to a dead-letter directory with the
//! reason. Repeated deliveries (same idempotency key, or same body within the window) are
//! acknowledged without writing twice.
//!
//! Every file operation (payload and dead-letter files, their fsyncs and the directory's, the
//! deduplication memory `seen.jsonl`, directory listings) runs on tokio's blocking pool, and no
//! lock is held across one. The queue depths shown by `/metrics` are counters kept by enqueue,
//! drain and dead-letter (counted from the directories once, at start), so a scrape lists no
//! directory.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::model::digest::{content_digest, hex};
use crate::model::vocabulary::PushMode;
use crate::model::{Connector, Push, PushAuth, Strategy};
use crate::runtime::build_error::BuildError;
use crate::runtime::clock::Clock;
use crate::runtime::metrics::Metrics;
use crate::runtime::problem::{Problem, ProblemKind, RETRY_AFTER};
use crate::runtime::sink::{WriteOptions, Writer};
use crate::runtime::state::{self, StateError};

/// What the endpoint answers, before it becomes HTTP.
#[derive(Debug)]
pub enum Reply {
    Written(usize),
    Queued,
    Duplicate,
}

/// Called with the resource types a push wrote, to drop pull answers they make stale.
pub type Invalidate = Arc<dyn Fn(&HashSet<String>) + Send + Sync>;

/// A push connector at run time.
pub struct PushEndpoint {
    pub connector: Arc<Connector>,
    writer: Writer,
    dir: PathBuf,
    dedup: std::sync::Mutex<Dedup>,
    wake: tokio::sync::Notify,
    seq: AtomicU64,
    /// Payloads in the queue directory.
    queued: AtomicUsize,
    /// Payloads in the dead-letter directory.
    dead: AtomicUsize,
    metrics: Arc<Metrics>,
    invalidate: Invalidate,
    /// Reads HMAC timestamps and deduplication windows, and dates queued payloads.
    clock: Clock,
}

/// What the endpoint knows of deliveries, under one lock so that the decision to process one
/// is race-free: a delivery is reserved (`in_flight`) while it is written or queued, then
/// remembered (`seen`) once durable, or released when it failed.
#[derive(Default)]
struct Dedup {
    /// Keys of durable deliveries and when they came (Unix seconds).
    seen: HashMap<String, i64>,
    /// Keys of deliveries being processed now (a concurrent repeat is refused with 409).
    in_flight: HashSet<String>,
}

/// What the deduplication memory says of a delivery.
enum Reservation<'a> {
    /// Seen within the window: acknowledged without writing again.
    Seen,
    /// Being processed now by another request.
    Busy,
    /// Reserved for this request until the claim is dropped.
    Claimed(Claim<'a>),
}

/// A delivery reserved for one request; dropping it releases the reservation, also when the
/// request is cancelled midway (a timeout, a closed connection).
struct Claim<'a> {
    endpoint: &'a PushEndpoint,
    key: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Ok(mut d) = self.endpoint.dedup.lock() {
            d.in_flight.remove(&self.key);
        }
    }
}

impl PushEndpoint {
    /// Prepares the endpoint: its directories under `state/push/{name}` and the deliveries
    /// remembered from earlier runs.
    pub fn new(
        connector: Arc<Connector>,
        state_dir: &Path,
        sink_dir: &Path,
        metrics: Arc<Metrics>,
        invalidate: Invalidate,
        clock: Clock,
    ) -> Result<PushEndpoint, BuildError> {
        let push = push_of(&connector).ok_or_else(|| BuildError::Strategy {
            connector: connector.name.clone(),
            strategy: "push",
        })?;
        let writer = Writer::new(&push.sink, sink_dir)?;
        let dir = state_dir.join("push").join(&connector.name);
        for sub in ["queue", "dead"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| StateError::io(&dir.join(sub), e))?;
        }
        let now = clock.now().timestamp();
        let window = push.dedup_window.as_secs() as i64;
        let mut seen = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(dir.join("seen.jsonl")) {
            for line in text.lines() {
                if let Ok(v) = serde_json::from_str::<Value>(line)
                    && let (Some(k), Some(t)) = (v["key"].as_str(), v["at"].as_i64())
                    && now - t < window
                {
                    seen.insert(k.to_owned(), t);
                }
            }
        }
        let (queue, dead) = (queued(&dir.join("queue")), queued(&dir.join("dead")));
        let seq = next_seq(&queue).max(next_seq(&dead));
        Ok(PushEndpoint {
            connector,
            writer,
            dir,
            dedup: std::sync::Mutex::new(Dedup {
                seen,
                in_flight: HashSet::new(),
            }),
            wake: tokio::sync::Notify::new(),
            seq: AtomicU64::new(seq),
            queued: AtomicUsize::new(queue.len()),
            dead: AtomicUsize::new(dead.len()),
            metrics,
            invalidate,
            clock,
        })
    }

    fn push(&self) -> &Push {
        push_of(&self.connector).expect("a push endpoint holds a push connector")
    }

    /// The route of the endpoint.
    pub fn path(&self) -> &str {
        &self.push().path
    }

    pub fn max_body(&self) -> usize {
        self.push().max_body as usize
    }

    /// Checks who is calling; the error is a 401.
    pub fn authenticate(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Problem> {
        let deny = |why: &str| Problem::new(ProblemKind::Unauthorized, why);
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        match &self.push().auth {
            PushAuth::Bearer(token) => {
                let given = header("authorization")
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or_default();
                if bool::from(given.as_bytes().ct_eq(token.0.as_bytes())) {
                    Ok(())
                } else {
                    Err(deny("missing or wrong bearer token"))
                }
            }
            PushAuth::ApiKey {
                header: name,
                value,
            } => {
                let given = header(name).unwrap_or_default();
                if bool::from(given.as_bytes().ct_eq(value.0.as_bytes())) {
                    Ok(())
                } else {
                    Err(deny("missing or wrong API key"))
                }
            }
            PushAuth::Hmac {
                secret,
                header: sig_header,
                timestamp_header,
                tolerance,
            } => {
                let ts = header(timestamp_header).ok_or_else(|| deny("missing timestamp"))?;
                let t: i64 = ts
                    .trim()
                    .parse()
                    .map_err(|_| deny("the timestamp is not Unix seconds"))?;
                let age = (self.clock.now().timestamp() - t).abs();
                if age as u64 > tolerance.as_secs() {
                    return Err(deny("the timestamp is outside the tolerance window"));
                }
                let sig = header(sig_header).ok_or_else(|| deny("missing signature"))?;
                let sig = sig.trim().strip_prefix("sha256=").unwrap_or(sig.trim());
                let given = hex_decode(sig).ok_or_else(|| deny("the signature is not hex"))?;
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.0.as_bytes())
                    .map_err(|_| deny("bad key"))?;
                mac.update(ts.trim().as_bytes());
                mac.update(b".");
                mac.update(body);
                mac.verify_slice(&given)
                    .map_err(|_| deny("the signature does not match"))
            }
        }
    }

    /// Handles an authenticated delivery.
    pub async fn deliver(&self, headers: &HeaderMap, body: &[u8]) -> Result<Reply, Problem> {
        let media = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !(media.starts_with("application/json") || media.starts_with("application/fhir+json")) {
            return Err(Problem::new(
                ProblemKind::UnsupportedMedia,
                "send application/json or application/fhir+json",
            ));
        }
        let push = self.push();
        crate::runtime::json_count::count_values(body, push.max_values).map_err(|e| {
            Problem::new(
                ProblemKind::TooLarge,
                format!("the payload is refused: {e} (this endpoint's `push.maxValues`)"),
            )
        })?;
        let payload: Value = serde_json::from_slice(body)
            .map_err(|e| Problem::invalid(format!("the body is not JSON: {e}")))?;
        let records = push.records.select(&payload, &payload).len();
        if records > push.max_records {
            return Err(Problem::new(
                ProblemKind::TooLarge,
                format!(
                    "the payload holds {records} records; this endpoint takes at most {} (`push.maxRecords`)",
                    push.max_records
                ),
            ));
        }
        let key = headers
            .get(self.push().idempotency_header.as_str())
            .and_then(|v| v.to_str().ok())
            .filter(|k| !k.is_empty() && k.len() <= 200)
            .map_or_else(
                || format!("sha256:{}", content_digest(&[body])),
                |k| format!("key:{k}"),
            );
        let claim = match self.reserve(key) {
            Reservation::Seen => {
                self.count("duplicate");
                return Ok(Reply::Duplicate);
            }
            Reservation::Busy => {
                self.count("concurrent-repeat");
                return Err(Problem::new(
                    ProblemKind::Conflict,
                    "the same delivery is being processed now; send again later if it is not acknowledged",
                ));
            }
            Reservation::Claimed(claim) => claim,
        };
        // The claim is released when this returns (or is cancelled), after `accept` has
        // remembered a durable delivery.
        self.accept(&claim.key, &payload).await
    }

    /// Writes (sync) or queues (queued) a claimed delivery; remembers it once durable.
    async fn accept(&self, key: &str, payload: &Value) -> Result<Reply, Problem> {
        let (key, payload) = (key.to_owned(), payload);
        match self.push().mode {
            PushMode::Queued => {
                self.enqueue(&key, payload).await?;
                self.remember(&key).await;
                self.count("queued");
                self.wake.notify_one();
                Ok(Reply::Queued)
            }
            PushMode::Sync => match self.process(payload).await {
                Ok(n) => {
                    self.remember(&key).await;
                    self.count("written");
                    Ok(Reply::Written(n))
                }
                Err(Outcome::Transient(why)) => {
                    self.count("sink-unavailable");
                    Err(Problem::new(
                        ProblemKind::Unavailable {
                            retry_after: RETRY_AFTER,
                        },
                        format!("{why}; send again later (retry after {RETRY_AFTER} s)"),
                    ))
                }
                Err(Outcome::Permanent(why, outcome)) => {
                    self.dead_letter(payload, &why, outcome.as_ref()).await;
                    self.remember(&key).await;
                    Err(Problem::new(ProblemKind::Unprocessable, why))
                }
            },
        }
    }

    /// Maps and writes one payload.
    async fn process(&self, payload: &Value) -> Result<usize, Outcome> {
        // Up to `maxRecords` records: mapped on the blocking pool, off the async workers.
        let (connector, document) = (self.connector.clone(), payload.clone());
        let resources =
            tokio::task::spawn_blocking(move || connector.map_document(&document, &json!({})))
                .await
                .map_err(|e| Outcome::Permanent(format!("the mapping stopped: {e}"), None))?
                .map_err(|e| Outcome::Permanent(format!("mapping failed: {e}"), None))?;
        let types = crate::runtime::sink::types_of(&resources);
        let opts = WriteOptions {
            identifier_system: self.push().identifier_system.clone(),
            declared_types: self.connector.declared_types(),
        };
        let report = self.writer.write(resources, &opts).await;
        self.metrics
            .push_sink_retries(&self.connector.name, report.retries);
        if let Some(f) = report.failures.iter().find(|f| f.transient) {
            return Err(Outcome::Transient(format!(
                "{}: {}",
                self.writer.describe(),
                f.message
            )));
        }
        if let Some(f) = report.failures.first() {
            return Err(Outcome::Permanent(
                format!(
                    "{} rejected {}: {}",
                    self.writer.describe(),
                    f.resource,
                    f.message
                ),
                f.outcome.as_deref().cloned(),
            ));
        }
        (self.invalidate)(&types);
        Ok(report.written)
    }

    /// Writes queued payloads in order until `stop`: a transient failure waits (backing off)
    /// and tries the same payload again; a permanent one moves it to the dead letters. The
    /// queue is listed once per batch; a stop lets the payload being written finish.
    pub async fn drain(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let queue = self.dir.join("queue");
        let mut backoff = Duration::from_millis(500);
        loop {
            if *stop.borrow() {
                return;
            }
            let dir = queue.clone();
            let files = state::blocking(move || Ok(queued(&dir)))
                .await
                .unwrap_or_default();
            if files.is_empty() {
                tokio::select! {
                    () = self.wake.notified() => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            for file in files {
                loop {
                    if *stop.borrow() {
                        return;
                    }
                    let Err(why) = self.drain_one(&file).await else {
                        backoff = Duration::from_millis(500);
                        break;
                    };
                    tracing::warn!(connector = %self.connector.name, wait_ms = backoff.as_millis() as u64, "queued payload not written yet: {why}");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// Writes one queued payload and takes it off the queue, or moves it to the dead letters;
    /// the error is a transient failure, the payload staying queued.
    async fn drain_one(&self, file: &Path) -> Result<(), String> {
        let bytes = match tokio::fs::read(file).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Taken off the queue meanwhile (by the drainer of an earlier definition).
                decrement(&self.queued);
                return Ok(());
            }
            read => read.ok(),
        };
        let item: Option<Value> = bytes.and_then(|b| serde_json::from_slice(&b).ok());
        let Some(item) = item else {
            let (from, to) = (
                file.to_path_buf(),
                self.dir
                    .join("dead")
                    .join(file.file_name().unwrap_or_default()),
            );
            if state::blocking(move || {
                std::fs::rename(&from, &to).map_err(|e| StateError::io(&from, e))
            })
            .await
            .is_ok()
            {
                decrement(&self.queued);
                self.dead.fetch_add(1, Ordering::SeqCst);
            }
            return Ok(());
        };
        match self.process(&item["payload"]).await {
            Ok(_) => {}
            Err(Outcome::Permanent(why, outcome)) => {
                self.dead_letter(&item["payload"], &why, outcome.as_ref())
                    .await;
            }
            Err(Outcome::Transient(why)) => return Err(why),
        }
        let (path, dir) = (file.to_path_buf(), self.dir.join("queue"));
        let removed = state::blocking(move || {
            std::fs::remove_file(&path).map_err(|e| StateError::io(&path, e))?;
            state::sync_dir(&dir)
        })
        .await;
        if let Err(e) = removed {
            tracing::warn!(connector = %self.connector.name, "a written payload stays queued: {e}");
        } else {
            decrement(&self.queued);
        }
        Ok(())
    }

    async fn enqueue(&self, key: &str, payload: &Value) -> Result<(), Problem> {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let item =
            json!({"key": key, "received": self.clock.now().to_rfc3339(), "payload": payload});
        let path = self.dir.join("queue").join(format!("{seq:020}.json"));
        let bytes = serde_json::to_vec(&item).unwrap_or_default();
        state::blocking(move || state::write_atomic(&path, &bytes))
            .await
            .map_err(|e| {
                Problem::new(
                    ProblemKind::Unavailable {
                        retry_after: RETRY_AFTER,
                    },
                    format!("the local queue cannot take the payload: {e}"),
                )
            })?;
        self.queued.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn dead_letter(&self, payload: &Value, reason: &str, outcome: Option<&Value>) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let item = json!({"received": self.clock.now().to_rfc3339(), "reason": reason, "outcome": outcome, "payload": payload});
        let path = self.dir.join("dead").join(format!("{seq:020}.json"));
        let bytes = serde_json::to_vec(&item).unwrap_or_default();
        match state::blocking(move || state::write_atomic(&path, &bytes)).await {
            Ok(()) => {
                self.dead.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                tracing::error!(connector = %self.connector.name, "cannot keep a dead letter: {e}");
            }
        }
        tracing::warn!(connector = %self.connector.name, "payload dead-lettered: {reason}");
        self.count("dead-letter");
    }

    /// Dead letters: id, when received, and why.
    pub async fn dead_letters(&self) -> Vec<Value> {
        let dir = self.dir.join("dead");
        state::blocking(move || Ok(read_dead_letters(&dir)))
            .await
            .unwrap_or_default()
    }

    /// Payloads waiting in the queue, and dead letters (counted, not listed).
    pub fn depths(&self) -> (usize, usize) {
        (
            self.queued.load(Ordering::SeqCst),
            self.dead.load(Ordering::SeqCst),
        )
    }

    /// Decides, under the lock, whether this request processes the delivery `key`.
    fn reserve(&self, key: String) -> Reservation<'_> {
        let window = self.push().dedup_window.as_secs() as i64;
        let now = self.clock.now().timestamp();
        let Ok(mut d) = self.dedup.lock() else {
            return Reservation::Busy;
        };
        if d.seen.get(&key).is_some_and(|t| now - t < window) {
            return Reservation::Seen;
        }
        if !d.in_flight.insert(key.clone()) {
            return Reservation::Busy;
        }
        Reservation::Claimed(Claim {
            endpoint: self,
            key,
        })
    }

    /// Remembers a durable delivery: in memory under the lock, then appended and flushed to
    /// `seen.jsonl` outside it.
    async fn remember(&self, key: &str) {
        let now = self.clock.now().timestamp();
        if let Ok(mut d) = self.dedup.lock() {
            d.seen.insert(key.to_owned(), now);
        }
        let line = format!("{}\n", json!({"key": key, "at": now}));
        let path = self.dir.join("seen.jsonl");
        let appended = state::blocking(move || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(line.as_bytes()).and_then(|()| f.sync_data()))
                .map_err(|e| StateError::io(&path, e))
        })
        .await;
        if let Err(e) = appended {
            tracing::warn!(connector = %self.connector.name, "cannot record a delivery: {e}");
        }
    }

    fn count(&self, outcome: &'static str) {
        self.metrics.push_delivery(&self.connector.name, outcome);
    }
}

/// Why a payload was not written.
enum Outcome {
    Transient(String),
    Permanent(String, Option<Value>),
}

fn push_of(c: &Connector) -> Option<&Push> {
    match &c.strategy {
        Strategy::Push(p) => Some(p),
        _ => None,
    }
}

/// Files of a queue directory in order.
pub(crate) fn queued(dir: &Path) -> Vec<PathBuf> {
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

/// Id, when received, and why, of each dead letter in a directory.
pub(crate) fn read_dead_letters(dir: &Path) -> Vec<Value> {
    queued(dir)
        .into_iter()
        .filter_map(|p| {
            let v: Value = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
            let id = p.file_stem()?.to_str()?.to_owned();
            Some(json!({"id": id, "received": v["received"], "reason": v["reason"], "outcome": v["outcome"]}))
        })
        .collect()
}

/// One file fewer (never below zero).
fn decrement(count: &AtomicUsize) {
    let _ = count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
        Some(n.saturating_sub(1))
    });
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The signature a caller sends for `body` at `timestamp` (for tests and clients).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_both_ways() {
        assert_eq!(hex_decode("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(hex_decode("0g"), None);
        assert_eq!(hex_decode(&hex(&[0, 255])), Some(vec![0, 255]));
    }
}
