//! Push endpoints: callers authenticated (HMAC-SHA256 of `timestamp.body` within a tolerance
//! or of the body alone, hex or base64,
//! or a bearer token or API key, compared in constant time), bodies bounded, payloads mapped
//! and written, and acknowledged only when durable: written to the sink (sync mode), or
//! written and flushed to a local queue drained in order with backoff, also after a restart
//! (queued mode). Payloads that can never be written go to a dead-letter directory with the
//! reason. Repeated deliveries (see `dedup`) are acknowledged without writing twice.
//!
//! Queued payloads are written exactly once under the conditions README's push section
//! states: one drainer per queue across reloads (`queue`), the payload in flight recorded
//! before it is written and looked up at the sink (its Provenance) or cut back (NDJSON) after
//! a crash, and the keys of queued payloads remembered from their files after a crash.
//!
//! Every file operation (queue segments and dead-letter files, their fsyncs and the
//! directory's, the deduplication memory `seen.jsonl`, the drain's record, directory
//! listings) runs on tokio's blocking pool. The queue depths shown by `/metrics` are counters
//! kept by enqueue, drain and dead-letter (counted once, at start), so a scrape lists no
//! directory.

mod dedup;
/// The queue directory's layout, also the layout of cron dead letters (`run.rs`).
pub(crate) mod queue;
mod segment;
mod stream_drain;
mod stream_letters;
mod stream_queue;

pub use self::stream_queue::{StreamBackend, StreamQueueError};

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use self::dedup::Verdict;
use self::queue::{Entry, Queue, Read, decrement};
use crate::model::digest::hex;
use crate::model::vocabulary::{HmacEncoding, HmacSigned, PushMode};
use crate::model::{Connector, Push, PushAuth, Strategy};
use crate::runtime::build_error::BuildError;
use crate::runtime::clock::Clock;
use crate::runtime::dead_letters::{DeadLetterStore, DeadLetters, DirStore, Letter, Resend};
use crate::runtime::metrics::Metrics;
use crate::runtime::problem::{Problem, ProblemKind, RETRY_AFTER};
use crate::runtime::sink::{ProvenanceOf, WriteOptions, Writer};
use crate::runtime::state;
use crate::runtime::trace_context::Trace;

/// What the endpoint answers, before it becomes HTTP.
#[derive(Debug)]
pub enum Reply {
    Written(usize),
    Queued,
    Duplicate,
}

/// Called with the resource types a push wrote, to drop pull answers they make stale.
pub type Invalidate = Arc<dyn Fn(&HashSet<String>) + Send + Sync>;

/// A push connector at run time: one definition generation over its connector's queue.
pub struct PushEndpoint {
    pub connector: Arc<Connector>,
    writer: Writer,
    /// The queue directory's state, handed from one generation to the next.
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    invalidate: Invalidate,
    /// Reads HMAC timestamps and deduplication windows, and dates queued payloads.
    clock: Clock,
    /// The dead letters of the queue directory, for operators (`dead_letters`).
    letters: DirStore,
    /// The connector's queue on Redis Streams (`--push-queue`), instead of the directory's.
    stream: Option<Arc<stream_queue::StreamQueue>>,
    /// That queue's dead letters, for operators, instead of the directory's.
    stream_letters: Option<stream_letters::StreamLetters>,
}

/// A delivery reserved for one request; dropping it releases the reservation, also when the
/// request is cancelled midway (a timeout, a closed connection), unless it was handed over
/// to the local queue's committer (`hand_over`), which releases it once the payload's record
/// is flushed and its keys learnt, or the flush failed: a caller that leaves during the flush
/// does not open the way for its own resend to be queued a second time.
struct Claim<'a> {
    endpoint: &'a PushEndpoint,
    keys: Vec<String>,
    handed: std::sync::atomic::AtomicBool,
}

impl Claim<'_> {
    /// The reservation is the queue's from now on.
    fn hand_over(&self) {
        self.handed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !*self.handed.get_mut() {
            self.endpoint.queue.memory.release(&self.keys);
        }
    }
}

/// Longest idempotency key a caller may send, in bytes.
const MAX_IDEMPOTENCY_KEY: usize = 200;

impl PushEndpoint {
    /// Prepares the endpoint: its directories under `state/push/{name}` and the deliveries
    /// remembered from earlier runs, or, on a reload, the queue of `previous` (the endpoint of
    /// the same connector in the previous generation), so that both share one drain lock, one
    /// sequence and one memory.
    pub fn new(
        connector: Arc<Connector>,
        state_dir: &Path,
        sink_dir: &Path,
        metrics: Arc<Metrics>,
        invalidate: Invalidate,
        clock: Clock,
        previous: Option<&PushEndpoint>,
    ) -> Result<PushEndpoint, BuildError> {
        let push = push_of(&connector).ok_or_else(|| BuildError::Strategy {
            connector: connector.name.clone(),
            strategy: "push",
        })?;
        let writer = Writer::new(&push.sink, sink_dir)?;
        let queue = match previous {
            Some(p) => p.queue.clone(),
            None => Arc::new(Queue::open(
                state_dir,
                &connector.name,
                clock.now().timestamp(),
                push.dedup_window.as_secs() as i64,
                push.dedup_limit,
                metrics.clone(),
            )?),
        };
        let letters = DirStore::new(queue.dir.join("dead"), queue.root.clone());
        Ok(PushEndpoint {
            connector,
            writer,
            letters,
            queue,
            metrics,
            invalidate,
            clock,
            stream: None,
            stream_letters: None,
        })
    }

    /// The endpoint with its queued payloads on Redis Streams (`backend`) instead of the
    /// queue directory; on a reload, the stream of `previous` is kept.
    pub fn with_stream_queue(
        mut self,
        backend: &StreamBackend,
        previous: Option<&PushEndpoint>,
    ) -> PushEndpoint {
        let push = self.push();
        self.stream = Some(match previous.and_then(|p| p.stream.clone()) {
            Some(kept) => kept,
            None => backend.queue(&self.connector.name, push.dedup_window, push.dedup_limit),
        });
        self.stream_letters = self
            .stream
            .clone()
            .map(|queue| stream_letters::StreamLetters { queue });
        self
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
                signed,
                encoding,
                header: sig_header,
                prefix,
                timestamp_header,
                tolerance,
            } => {
                let ts = match signed {
                    HmacSigned::Body => None,
                    HmacSigned::TimestampBody => {
                        let ts =
                            header(timestamp_header).ok_or_else(|| deny("missing timestamp"))?;
                        let t: i64 = ts
                            .trim()
                            .parse()
                            .map_err(|_| deny("the timestamp is not Unix seconds"))?;
                        let age = (self.clock.now().timestamp() - t).abs();
                        if age as u64 > tolerance.as_secs() {
                            return Err(deny("the timestamp is outside the tolerance window"));
                        }
                        Some(ts.trim())
                    }
                };
                let sig = header(sig_header).ok_or_else(|| deny("missing signature"))?;
                let digest = signature_digest(sig, prefix.as_deref())
                    .ok_or_else(|| deny("the signature lacks its prefix"))?;
                let given = match encoding {
                    HmacEncoding::Hex => {
                        hex_decode(digest).ok_or_else(|| deny("the signature is not hex"))?
                    }
                    HmacEncoding::Base64 => base64::engine::general_purpose::STANDARD
                        .decode(digest)
                        .map_err(|_| deny("the signature is not base64"))?,
                };
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.0.as_bytes())
                    .map_err(|_| deny("bad key"))?;
                if let Some(ts) = ts {
                    mac.update(ts.as_bytes());
                    mac.update(b".");
                }
                mac.update(body);
                // `verify_slice` compares in constant time.
                mac.verify_slice(&given)
                    .map_err(|_| deny("the signature does not match"))
            }
        }
    }

    /// Handles an authenticated delivery; a sync write's sink posts belong to `trace` (the
    /// inbound request's), when given.
    pub async fn deliver(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        trace: Option<&Trace>,
    ) -> Result<Reply, Problem> {
        let media = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let push = self.push();
        let payload = decode_body(&push.format, media, body, push.max_values)?;
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
        let keys = self.keys(headers, &payload)?;
        let (now, window) = (self.clock.now().timestamp(), self.window());
        match self.queue.memory.reserve(&keys, now, window) {
            Verdict::Seen => {
                self.count("duplicate");
                Ok(Reply::Duplicate)
            }
            Verdict::Busy => {
                self.count("concurrent-repeat");
                Err(Problem::new(
                    ProblemKind::Conflict,
                    "the same delivery is being processed now; send again later if it is not acknowledged",
                ))
            }
            Verdict::Reserved => {
                // Released when this returns (or is cancelled), after `accept` has remembered
                // a durable delivery.
                let claim = Claim {
                    endpoint: self,
                    keys,
                    handed: false.into(),
                };
                self.accept(&claim, &payload, trace).await
            }
        }
    }

    /// The keys of a delivery: what an HMAC signature covers, and the caller's idempotency
    /// key or else the digest of the canonical JSON. An idempotency key that cannot be kept
    /// (longer than `MAX_IDEMPOTENCY_KEY` bytes, or not printable ASCII) is refused with 400:
    /// left out, the delivery would be told apart by its content alone, and a retry whose
    /// body changed (a new timestamp) would be written twice.
    fn keys(&self, headers: &HeaderMap, payload: &Value) -> Result<Vec<String>, Problem> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let mut keys = Vec::new();
        if let PushAuth::Hmac {
            signed: HmacSigned::TimestampBody,
            header: sig,
            prefix,
            timestamp_header,
            ..
        } = &self.push().auth
            && let (Some(ts), Some(sig)) = (header(timestamp_header), header(sig))
            && let Some(digest) = signature_digest(sig, prefix.as_deref())
        {
            keys.push(dedup::signed_key(ts, digest));
        }
        let name = self.push().idempotency_header.as_str();
        match headers.get(name).map(|v| v.as_bytes()) {
            Some(k)
                if k.len() > MAX_IDEMPOTENCY_KEY
                    || !k.iter().all(|b| (b' '..=b'~').contains(b)) =>
            {
                return Err(Problem::invalid(format!(
                    "the `{name}` header must be at most {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
                )));
            }
            Some(k) if !k.is_empty() => {
                keys.push(format!("key:{}", String::from_utf8_lossy(k)));
            }
            _ => keys.push(dedup::content_key(payload)),
        }
        Ok(keys)
    }

    fn window(&self) -> i64 {
        self.push().dedup_window.as_secs() as i64
    }

    /// Writes (sync) or queues (queued) a claimed delivery; remembers it once durable.
    async fn accept(
        &self,
        claim: &Claim<'_>,
        payload: &Value,
        trace: Option<&Trace>,
    ) -> Result<Reply, Problem> {
        let keys = claim.keys.as_slice();
        match self.push().mode {
            PushMode::Queued => {
                if let Some(stream) = &self.stream {
                    let accepted = stream
                        .enqueue(&self.connector.name, keys, self.clock.now(), payload)
                        .await;
                    return match accepted {
                        Ok(stream_queue::Accepted::Duplicate) => {
                            self.count("duplicate");
                            Ok(Reply::Duplicate)
                        }
                        Ok(_) => {
                            self.count("queued");
                            Ok(Reply::Queued)
                        }
                        Err(p) => {
                            self.count("queue-unavailable");
                            Err(p)
                        }
                    };
                }
                // Learnt in memory by the commit, once flushed: the queue file holds the keys
                // (a restart learns them from it) until the drainer remembers them in
                // `seen.jsonl`. The reservation is released by the committer after that.
                self.enqueue(claim, payload).await?;
                self.count("queued");
                Ok(Reply::Queued)
            }
            PushMode::Sync => {
                let provenance = self.provenance(keys, &self.clock.now().to_rfc3339(), false);
                match self.process(payload, provenance, None, trace).await {
                    Ok(n) => {
                        self.remember(keys).await;
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
                        self.dead_letter(keys, payload, &why, outcome.as_ref())
                            .await;
                        self.remember(keys).await;
                        Err(Problem::new(ProblemKind::Unprocessable, why))
                    }
                }
            }
        }
    }

    /// The Provenance of a delivery: its id made of the delivery's first key and arrival.
    fn provenance(&self, keys: &[String], received: &str, check_written: bool) -> ProvenanceOf {
        ProvenanceOf {
            connector: self.connector.name.clone(),
            occasion: format!("{} {received}", keys.first().map_or("", String::as_str)),
            source: format!("push endpoint {}", self.push().path),
            recorded: self.clock.now().to_rfc3339(),
            check_written,
        }
    }

    /// Maps and writes one payload; with `inflight` (a queued payload: its sequence, and
    /// the NDJSON lengths recorded by an earlier try cut short), the write is recorded in
    /// flight first. The sink's posts belong to `trace` (a sync push's request), else to a
    /// trace of their own.
    async fn process(
        &self,
        payload: &Value,
        provenance: ProvenanceOf,
        inflight: Option<(u64, Option<BTreeMap<String, u64>>)>,
        trace: Option<&Trace>,
    ) -> Result<usize, Outcome> {
        // Up to `maxRecords` records: mapped on the blocking pool, off the async workers.
        let (connector, document) = (self.connector.clone(), payload.clone());
        let resources =
            tokio::task::spawn_blocking(move || connector.map_document(&document, &json!({})))
                .await
                .map_err(|e| Outcome::Permanent(format!("the mapping stopped: {e}"), None))?
                .map_err(|e| Outcome::Permanent(format!("mapping failed: {e}"), None))?;
        // Checked against the connector's FHIR version (`validation`) before the sink.
        let screened = crate::runtime::fhir_validation::screen(&self.connector, resources);
        let name = &self.connector.name;
        self.metrics
            .fhir_invalid(name, "written", screened.warned.len());
        self.metrics
            .fhir_invalid(name, "refused", screened.refused.len());
        let first = screened.refused.first().or(screened.warned.first());
        crate::runtime::fhir_validation::log(
            &self.connector,
            screened.refused.len() + screened.warned.len(),
            first.map(|b| b.reason()).as_deref(),
        );
        let (resources, refused) = (screened.admitted, screened.refused);
        let types = crate::runtime::sink::types_of(&resources);
        let opts = WriteOptions {
            identifier_system: self.push().identifier_system.clone(),
            declared_types: self.connector.declared_types(),
            provenance: Some(provenance),
            // The request's trace (a sync push), else its own: the sink's posts carry it.
            trace: Some(trace.cloned().unwrap_or_else(Trace::fresh)),
        };
        let report = match inflight {
            None => self.writer.write(resources, &opts).await,
            Some((seq, cut)) => {
                let queue = self.queue.clone();
                let record =
                    move |ndjson: &BTreeMap<String, u64>| queue.record_inflight(seq, ndjson);
                self.writer
                    .write_recorded(resources, &opts, cut, record)
                    .await
            }
        };
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
        if let Some(bad) = refused.first() {
            // The valid resources are written; the payload goes to the dead letters.
            return Err(Outcome::Permanent(
                format!(
                    "{} of the payload's resources not written (`validation: strict`): {}",
                    refused.len(),
                    bad.reason()
                ),
                Some(bad.outcome()),
            ));
        }
        Ok(report.written)
    }

    /// Writes queued payloads in order until `stop`: a transient failure waits (backing off)
    /// and tries the same payload again; a permanent one moves it to the dead letters. A stop
    /// lets the payload being written finish. Only one drainer of a queue runs at a time: a
    /// drainer of a newer generation waits here until the one before has stopped.
    pub async fn drain(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let lock = self.queue.drain.clone();
        let _turn = tokio::select! {
            turn = lock.lock_owned() => turn,
            _ = stop.wait_for(|s| *s) => return,
        };
        if let Some(stream) = self.stream.clone() {
            return stream.drain(self.as_ref(), stop).await;
        }
        let mut backoff = Duration::from_millis(500);
        loop {
            if *stop.borrow() {
                return;
            }
            let Some(entry) = self.queue.front() else {
                tokio::select! {
                    () = self.queue.wake.notified() => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            };
            loop {
                if *stop.borrow() {
                    return;
                }
                let Err(why) = self.drain_one(&entry).await else {
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

    /// Writes one queued payload and takes it off the queue, or moves it to the dead letters;
    /// the error is a transient failure, the payload staying queued. A payload that the
    /// in-flight record names may have reached the sink already: it is looked up there (its
    /// Provenance) or its NDJSON files are cut back before it is written again.
    async fn drain_one(&self, entry: &Entry) -> Result<(), String> {
        let (queue, at) = (self.queue.clone(), entry.clone());
        let read = state::blocking(move || {
            Ok((
                queue.read(&at),
                queue.inflight().filter(|r| r.seq == at.seq),
            ))
        })
        .await
        .map_err(|e| self.queue.why(&e))?;
        let (item, earlier) = read;
        let item = match item {
            Read::Item(item) => item,
            Read::Gone => {
                // Taken off the queue meanwhile.
                return self.settle(entry).await;
            }
            Read::Unreadable(bytes) => {
                let (queue, at, now) = (self.queue.clone(), entry.clone(), self.clock.now());
                let buried =
                    state::blocking(move || queue.bury(&at, bytes, &now.to_rfc3339())).await;
                return match buried {
                    Ok(()) => {
                        decrement(&self.queue.queued);
                        self.queue.dead.fetch_add(1, Ordering::SeqCst);
                        self.count("dead-letter");
                        tracing::warn!(connector = %self.connector.name, "an unreadable queued payload was moved to the dead letters");
                        Ok(())
                    }
                    Err(e) => Err(self.queue.why(&e)),
                };
            }
        };
        let recovering = earlier.is_some();
        if recovering {
            tracing::info!(connector = %self.connector.name, "a payload whose write was cut short is looked up at the sink before it is written again");
        }
        let provenance = self.provenance(&item.keys, &item.received, recovering);
        let cut = earlier.map(|r| r.ndjson);
        match self
            .process(&item.payload, provenance, Some((entry.seq, cut)), None)
            .await
        {
            Ok(_) => {}
            Err(Outcome::Permanent(why, outcome)) => {
                self.dead_letter(&item.keys, &item.payload, &why, outcome.as_ref())
                    .await;
            }
            Err(Outcome::Transient(why)) => return Err(why),
        }
        // Remembered in `seen.jsonl` (dated when it was received) before it is settled,
        // after which a restart no longer learns its keys from its record.
        let received = chrono::DateTime::parse_from_rfc3339(&item.received)
            .map_or_else(|_| self.clock.now().timestamp(), |t| t.timestamp());
        self.remember_at(&item.keys, received).await;
        self.settle(entry).await
    }

    /// Takes a written payload off the queue (see `Queue::settle`). When that cannot be
    /// recorded, the payload stays first in the queue, still named in flight, so that it is
    /// looked up (or cut back) before it is written again.
    async fn settle(&self, entry: &Entry) -> Result<(), String> {
        let (queue, at) = (self.queue.clone(), entry.clone());
        match state::blocking(move || queue.settle(&at)).await {
            Ok(()) => {
                decrement(&self.queue.queued);
                Ok(())
            }
            Err(e) => Err(format!(
                "a written payload stays queued: {}",
                self.queue.why(&e)
            )),
        }
    }

    /// Queues a payload by group commit (see `queue`): answered once it is flushed.
    async fn enqueue(&self, claim: &Claim<'_>, payload: &Value) -> Result<(), Problem> {
        let keys = claim.keys.as_slice();
        let bytes = Queue::item_bytes(keys, &self.clock.now().to_rfc3339(), payload);
        // Counted in the queue's depth, and the drainer woken, by the commit.
        let learn = queue::Learn {
            keys: keys.to_vec(),
            at: self.clock.now().timestamp(),
            window: self.window(),
            limit: self.push().dedup_limit,
        };
        claim.hand_over();
        if let Err(e) = self.queue.commit(bytes, learn).await {
            tracing::error!(connector = %self.connector.name, "the queue cannot take a payload: {}", self.queue.why(&e));
            return Err(Problem::new(
                ProblemKind::Unavailable {
                    retry_after: RETRY_AFTER,
                },
                format!("the local queue cannot take the payload: {}", e.reason()),
            ));
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        keys: &[String],
        payload: &Value,
        reason: &str,
        outcome: Option<&Value>,
    ) {
        let path = self.queue.next_file("dead");
        let item = json!({"keys": keys, "received": self.clock.now().to_rfc3339(), "reason": reason, "outcome": outcome, "payload": payload});
        let bytes = serde_json::to_vec(&item).unwrap_or_default();
        match state::blocking(move || state::write_atomic(&path, &bytes)).await {
            Ok(()) => {
                self.queue.dead.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                tracing::error!(connector = %self.connector.name, "cannot keep a dead letter: {}", self.queue.why(&e));
            }
        }
        tracing::warn!(connector = %self.connector.name, "payload dead-lettered: {reason}");
        self.count("dead-letter");
    }

    /// Dead letters: id, when received, and why.
    pub async fn dead_letters(&self) -> Vec<Value> {
        if let Some(stream) = &self.stream {
            return stream.dead_letters_listed(&self.connector.name).await;
        }
        let dir = self.queue.dir.join("dead");
        state::blocking(move || Ok(read_dead_letters(&dir)))
            .await
            .unwrap_or_default()
    }

    /// How many dead letters there are, and the first `limit` with their payloads (see
    /// `dead_letters_shown`).
    pub async fn dead_letters_shown(&self, limit: usize) -> (usize, Vec<Value>) {
        if let Some(stream) = &self.stream {
            return stream
                .dead_letters_shown(&self.connector.name, limit, SHOWN_DEAD_LETTER_BYTES)
                .await;
        }
        let dir = self.queue.dir.join("dead");
        state::blocking(move || Ok(dead_letters_shown(&dir, limit)))
            .await
            .unwrap_or_default()
    }

    /// When the oldest payload waiting in the queue was received (RFC 3339), if one waits.
    pub async fn oldest_queued(&self) -> Option<String> {
        if let Some(stream) = &self.stream {
            return stream.oldest().await;
        }
        let queue = self.queue.clone();
        state::blocking(move || {
            let oldest = queue.front().and_then(|e| match queue.read(&e) {
                Read::Item(item) => Some(item.received),
                _ => None,
            });
            Ok(oldest)
        })
        .await
        .ok()
        .flatten()
    }

    /// Sends dead letter `id` of the Redis queue back to its stream, where any replica's
    /// drainer writes it: `Ok(false)` when there is no such letter, or when the queue is the
    /// directory's (whose letters the dead-letter API handles); 503 when Redis is away.
    pub async fn requeue_dead_letter(&self, id: &str) -> Result<bool, Problem> {
        match &self.stream {
            Some(stream) => stream.requeue_dead_letter(&self.connector.name, id).await,
            None => Ok(false),
        }
    }

    /// Deletes dead letter `id` of the Redis queue: `Ok(false)` as `requeue_dead_letter`.
    pub async fn delete_stream_dead_letter(&self, id: &str) -> Result<bool, Problem> {
        match &self.stream {
            Some(stream) => stream.delete_dead_letter(&self.connector.name, id).await,
            None => Ok(false),
        }
    }

    /// Payloads waiting in the queue, and dead letters (counted, not listed).
    pub fn depths(&self) -> (usize, usize) {
        if let Some(stream) = &self.stream {
            return stream.depths();
        }
        (
            self.queue.queued.load(Ordering::SeqCst),
            self.queue.dead.load(Ordering::SeqCst),
        )
    }

    /// Remembers a durable delivery: appended and flushed to `seen.jsonl`, then in memory.
    async fn remember(&self, keys: &[String]) {
        self.remember_at(keys, self.clock.now().timestamp()).await;
    }

    /// Remembers a durable delivery received at `at` (Unix seconds).
    async fn remember_at(&self, keys: &[String], at: i64) {
        let now = self.clock.now().timestamp();
        let (window, limit) = (self.window(), self.push().dedup_limit);
        let (queue, keys) = (self.queue.clone(), keys.to_vec());
        let remembered =
            state::blocking(move || queue.memory.remember(&keys, at, now, window, limit)).await;
        if let Err(e) = remembered {
            tracing::warn!(connector = %self.connector.name, "cannot record a delivery: {}", self.queue.why(&e));
        }
    }

    fn count(&self, outcome: &'static str) {
        self.metrics.push_delivery(&self.connector.name, outcome);
    }
}

/// An operator's replays and deletions of the endpoint's dead letters: a replay goes through
/// this (current) definition's mapping and sink, as a sync delivery would, under the
/// delivery's own Provenance.
impl DeadLetters for PushEndpoint {
    fn connector_name(&self) -> &str {
        &self.connector.name
    }

    fn store(&self) -> &dyn DeadLetterStore {
        match &self.stream_letters {
            Some(redis) => redis,
            None => &self.letters,
        }
    }

    fn resend<'a>(
        &'a self,
        letter: &'a Letter,
    ) -> futures_util::future::BoxFuture<'a, Result<usize, Resend>> {
        Box::pin(async move {
            let received = letter
                .received
                .clone()
                .unwrap_or_else(|| self.clock.now().to_rfc3339());
            let provenance = self.provenance(&letter.keys, &received, false);
            match self.process(&letter.payload, provenance, None, None).await {
                Ok(n) => Ok(n),
                Err(Outcome::Transient(why)) => Err(Resend::Transient(why)),
                Err(Outcome::Permanent(why, outcome)) => Err(Resend::Permanent(why, outcome)),
            }
        })
    }

    fn gone(&self) {
        decrement(&self.queue.dead);
    }

    fn now(&self) -> String {
        self.clock.now().to_rfc3339()
    }
}

/// The Redis queue's drainer writes through the endpoint.
impl stream_drain::Writes for PushEndpoint {
    fn connector(&self) -> &str {
        &self.connector.name
    }

    fn write<'a>(
        &'a self,
        keys: &'a [String],
        received: &'a str,
        payload: &'a Value,
        recovering: bool,
    ) -> futures_util::future::BoxFuture<'a, Result<(), stream_drain::Failure>> {
        Box::pin(async move {
            let provenance = self.provenance(keys, received, recovering);
            match self.process(payload, provenance, None, None).await {
                Ok(_) => Ok(()),
                Err(Outcome::Transient(why)) => Err(stream_drain::Failure::Transient(why)),
                Err(Outcome::Permanent(why, outcome)) => {
                    Err(stream_drain::Failure::Permanent(why, outcome))
                }
            }
        })
    }

    fn count(&self, outcome: &'static str) {
        PushEndpoint::count(self, outcome);
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

/// Id, when received, and why, of each dead letter in a directory.
pub(crate) fn read_dead_letters(dir: &Path) -> Vec<Value> {
    queue::files(dir)
        .into_iter()
        .filter_map(|p| {
            let v: Value = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
            let id = p.file_stem()?.to_str()?.to_owned();
            Some(json!({"id": id, "received": v["received"], "reason": v["reason"], "outcome": v["outcome"]}))
        })
        .collect()
}

/// Largest dead-letter file whose payload the status page is given.
const SHOWN_DEAD_LETTER_BYTES: u64 = 64 * 1024;

/// How many dead letters `dir` holds, and the first `limit` of them with their payload (a
/// push's `payload`, a cron run's `record`), for the status page: a payload whose file is
/// larger than 64 KiB is left out (`tooLarge`) and its size given (`payloadBytes`), so that a
/// page holds at most `limit` small payloads, and files are read one at a time.
pub(crate) fn dead_letters_shown(dir: &Path, limit: usize) -> (usize, Vec<Value>) {
    let files = queue::files(dir);
    let shown = files
        .iter()
        .take(limit)
        .filter_map(|p| {
            let bytes = std::fs::read(p).ok()?;
            let v: Value = serde_json::from_slice(&bytes).ok()?;
            let id = p.file_stem()?.to_str()?.to_owned();
            let too_large = bytes.len() as u64 > SHOWN_DEAD_LETTER_BYTES;
            let payload = match too_large {
                true => Value::Null,
                false => v
                    .get("payload")
                    .or_else(|| v.get("record"))
                    .cloned()
                    .unwrap_or_default(),
            };
            Some(json!({"id": id, "received": v["received"], "reason": v["reason"], "payload": payload, "payloadBytes": bytes.len(), "tooLarge": too_large}))
        })
        .collect();
    (files.len(), shown)
}

/// The digest in a signature header's value: after the required `prefix`, or after an
/// optional `sha256=` when there is none; `None` when a required prefix is missing.
fn signature_digest<'a>(value: &'a str, prefix: Option<&str>) -> Option<&'a str> {
    let value = value.trim();
    match prefix {
        Some(p) => value.strip_prefix(p),
        None => Some(value.strip_prefix("sha256=").unwrap_or(value)),
    }
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

/// A push body read in the endpoint's declared format. JSON needs a JSON `Content-Type`
/// (as before formats); another format takes a body without one, and refuses one that names
/// another format (415). Values are counted before JSON is parsed, and as other formats are
/// decoded (413 past `push.maxValues`); a malformed body is a 400 naming its line or record.
fn decode_body(
    format: &crate::model::decode::Format,
    media: &str,
    body: &[u8],
    max_values: usize,
) -> Result<Value, Problem> {
    use crate::model::decode::{DecodeError, Format, Limits, decode};
    let declared = format.media_types().join(" or ");
    let fits = match format {
        Format::Json => format.accepts_media_type(media),
        _ => media.trim().is_empty() || format.accepts_media_type(media),
    };
    if !fits {
        return Err(Problem::new(
            ProblemKind::UnsupportedMedia,
            format!("send {declared} (this endpoint reads `{}`)", format.name()),
        ));
    }
    let too_many = |e: &dyn std::fmt::Display| {
        Problem::new(
            ProblemKind::TooLarge,
            format!("the payload is refused: {e} (this endpoint's `push.maxValues`)"),
        )
    };
    if *format == Format::Json {
        crate::runtime::json_count::count_values(body, max_values).map_err(|e| too_many(&e))?;
        return serde_json::from_slice(body)
            .map_err(|e| Problem::invalid(format!("the body is not JSON: {e}")));
    }
    decode(format, body, Limits { max_values }).map_err(|e| match e {
        DecodeError::TooManyValues { .. } => too_many(&e),
        e => Problem::invalid(format!("the body is not {}: {e}", format.name())),
    })
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
