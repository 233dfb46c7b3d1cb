//! The drainer of a push connector's queue on Redis Streams (`stream_queue`), and what the
//! endpoint asks of that queue: a payload queued (or a duplicate, or a 503 with
//! `Retry-After`), entries drained as one consumer of the group (reclaimed entries of dead
//! consumers first, each written through `Writes`, the endpoint, then acknowledged or
//! dead-lettered, kept touched while written), and the dead letters listed, sent back and
//! deleted.

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use super::stream_queue::{Accepted, Entry, StreamQueue, StreamQueueError, is_entry_id};
use crate::runtime::problem::{Problem, ProblemKind, RETRY_AFTER};

/// Longest pause of a drainer between two tries after a failure.
const LONGEST_BACKOFF: Duration = Duration::from_secs(30);

/// Why an entry was not written.
pub(super) enum Failure {
    /// Trying again later may succeed (the sink away).
    Transient(String),
    /// It can never be written as it is: to the dead letters, with the sink's answer.
    Permanent(String, Option<Value>),
}

/// What a drainer writes entries through: the connector's push endpoint.
pub(super) trait Writes: Send + Sync {
    fn connector(&self) -> &str;
    /// Maps and writes a payload under its delivery's Provenance, looked up at the sink
    /// first when `recovering` (it may have been written before a crash).
    fn write<'a>(
        &'a self,
        keys: &'a [String],
        received: &'a str,
        payload: &'a Value,
        recovering: bool,
    ) -> BoxFuture<'a, Result<(), Failure>>;
    /// Counts a delivery's outcome (`engine_push_deliveries_total`).
    fn count(&self, outcome: &'static str);
}

/// A 503 with `Retry-After`, saying `why`.
fn unavailable(why: &str) -> Problem {
    Problem::new(
        ProblemKind::Unavailable {
            retry_after: RETRY_AFTER,
        },
        format!("{why}; send again later (retry after {RETRY_AFTER} s)"),
    )
}

impl StreamQueue {
    /// Queues a payload received `now` for connector `connector`: queued once Redis has it,
    /// a duplicate when a key was seen within the window on any replica; 503 (with
    /// `Retry-After`) when Redis is away, slow or the stream is full.
    pub(super) async fn enqueue(
        &self,
        connector: &str,
        keys: &[String],
        now: chrono::DateTime<chrono::Utc>,
        payload: &Value,
    ) -> Result<Accepted, Problem> {
        match self
            .accept(keys, &now.to_rfc3339(), now.timestamp_millis(), payload)
            .await
        {
            Ok(Accepted::Full) => Err(unavailable(&format!(
                "the push queue of this connector is full ({} payloads wait)",
                self.backend.inner.limit
            ))),
            Ok(done) => Ok(done),
            Err(e) => {
                tracing::error!(connector = %connector, redis = %self.backend.shown(), "the push queue cannot take a payload: {e}");
                Err(unavailable("the push queue cannot take the payload now"))
            }
        }
    }

    /// Drains the stream as one consumer of its group until `stop`, writing through
    /// `writer`: entries of dead consumers reclaimed first, then new ones; each written, then
    /// acknowledged (or dead-lettered). A transient failure waits (backing off, the entry
    /// kept touched) and tries the same entry again; Redis away waits and resumes.
    pub(super) async fn drain(
        &self,
        writer: &dyn Writes,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(200);
        let mut reader = None;
        loop {
            if *stop.borrow() {
                return;
            }
            let step = async {
                if reader.is_none() {
                    self.ensure_group().await?;
                    reader = Some(self.backend.reader()?);
                }
                self.refresh_depths().await?;
                match reader.as_mut() {
                    Some(r) => self.next(r).await,
                    None => Ok(None),
                }
            };
            let next = tokio::select! {
                n = step => n,
                _ = stop.wait_for(|s| *s) => return,
            };
            match next {
                Ok(Some((entry, reclaimed))) => {
                    self.away(false, &"");
                    backoff = Duration::from_millis(200);
                    if reclaimed {
                        tracing::info!(connector = %writer.connector(), "an entry of a consumer that stopped is taken over; it is looked up at the sink before it is written again");
                    }
                    self.drain_entry(writer, entry, reclaimed, &mut stop).await;
                }
                Ok(None) => self.away(false, &""),
                Err(e) => {
                    self.away(true, &e);
                    if matches!(e, StreamQueueError::Redis(ref t) if t.starts_with("NOGROUP")) {
                        // The stream was deleted at Redis: made again on the next turn.
                        reader = None;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    backoff = (backoff * 2).min(LONGEST_BACKOFF);
                }
            }
        }
    }

    /// Writes one entry until it is written or dead-lettered, then acknowledges it; a stop
    /// lets a write in progress finish but ends the waits between tries (the entry stays
    /// pending, and is taken over by another consumer).
    async fn drain_entry(
        &self,
        writer: &dyn Writes,
        entry: Entry,
        reclaimed: bool,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(500);
        let mut recovering = reclaimed;
        loop {
            let outcome = match &entry.payload {
                None => Err(Failure::Permanent(
                    "the queued entry is not a payload the engine wrote".into(),
                    None,
                )),
                Some(payload) => {
                    let work = writer.write(&entry.keys, &entry.received, payload, recovering);
                    touching(self, &entry.id, work).await
                }
            };
            let why = match outcome {
                Ok(()) => {
                    self.acknowledge(&entry, stop).await;
                    return;
                }
                Err(Failure::Permanent(why, outcome)) => {
                    let raw = entry
                        .payload
                        .as_ref()
                        .map(|p| p.to_string().into_bytes())
                        .unwrap_or_default();
                    match self.bury(&entry, raw, &why, outcome.as_ref()).await {
                        Ok(()) => {
                            tracing::warn!(connector = %writer.connector(), "payload dead-lettered: {why}");
                            writer.count("dead-letter");
                            return;
                        }
                        Err(e) => format!("cannot keep a dead letter: {e}"),
                    }
                }
                Err(Failure::Transient(why)) => why,
            };
            // A write that failed may have reached the sink in part: looked up next time.
            recovering = true;
            tracing::warn!(connector = %writer.connector(), wait_ms = backoff.as_millis() as u64, "queued payload not written yet: {why}");
            let wait = touching(self, &entry.id, tokio::time::sleep(backoff));
            tokio::select! {
                () = wait => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(LONGEST_BACKOFF);
        }
    }

    /// Acknowledges a written entry, trying again while Redis is away (until `stop`: the
    /// entry then stays pending, and another consumer writes it again after its look-up).
    async fn acknowledge(&self, entry: &Entry, stop: &mut tokio::sync::watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.ack(&entry.id).await {
                Ok(()) => {
                    self.away(false, &"");
                    return;
                }
                Err(e) => {
                    self.away(true, &e);
                    let wait = touching(self, &entry.id, tokio::time::sleep(backoff));
                    tokio::select! {
                        () = wait => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    backoff = (backoff * 2).min(LONGEST_BACKOFF);
                }
            }
        }
    }

    /// Sends dead letter `id` back to the stream, where any replica's drainer writes it
    /// (under its delivery's Provenance, its keys kept): `Ok(false)` when there is no such
    /// letter; 503 when Redis is away.
    pub(super) async fn requeue_dead_letter(
        &self,
        connector: &str,
        id: &str,
    ) -> Result<bool, Problem> {
        let done = self
            .replay_dead(id)
            .await
            .map_err(|e| self.redis_away(connector, &e))?;
        if done {
            tracing::info!(connector = %connector, "a dead letter was sent back to the queue");
        }
        Ok(done)
    }

    /// Deletes dead letter `id`: `Ok(false)` when there is no such letter.
    pub(super) async fn delete_dead_letter(
        &self,
        connector: &str,
        id: &str,
    ) -> Result<bool, Problem> {
        if !is_entry_id(id) {
            return Ok(false);
        }
        self.delete_dead(id)
            .await
            .map_err(|e| self.redis_away(connector, &e))
    }

    /// A 503 for a Redis call that failed (logged with the reason, never the URL).
    fn redis_away(&self, connector: &str, e: &StreamQueueError) -> Problem {
        tracing::warn!(connector = %connector, redis = %self.backend.shown(), "the push queue's Redis cannot be used now: {e}");
        unavailable("the push queue's Redis cannot be used now")
    }

    /// The dead letters as the endpoint's `dead_letters` lists them: id, received, reason,
    /// outcome.
    pub(super) async fn dead_letters_listed(&self, connector: &str) -> Vec<Value> {
        match self.dead_letters(usize::MAX >> 1).await {
            Ok((_, letters)) => letters
                .into_iter()
                .map(|e| json!({"id": e.id, "received": e.received, "reason": e.reason, "outcome": e.outcome}))
                .collect(),
            Err(e) => {
                tracing::warn!(connector = %connector, "cannot list the dead letters in Redis: {e}");
                Vec::new()
            }
        }
    }

    /// How many dead letters there are, and the first `limit` with their payloads, a payload
    /// larger than `largest` bytes left out (`tooLarge`), as `dead_letters_shown` shows them.
    pub(super) async fn dead_letters_shown(
        &self,
        connector: &str,
        limit: usize,
        largest: u64,
    ) -> (usize, Vec<Value>) {
        match self.dead_letters(limit).await {
            Ok((count, letters)) => (
                count,
                letters
                    .into_iter()
                    .map(|e| {
                        let too_large = e.size as u64 > largest;
                        let payload = if too_large { Value::Null } else { e.payload.unwrap_or_default() };
                        json!({"id": e.id, "received": e.received, "reason": e.reason, "payload": payload, "payloadBytes": e.size, "tooLarge": too_large})
                    })
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(connector = %connector, "cannot list the dead letters in Redis: {e}");
                (0, Vec::new())
            }
        }
    }
}

/// Runs `work` while touching entry `id` every third of `claim_after`, so that no other
/// consumer takes it over while it is being written.
async fn touching<T>(stream: &StreamQueue, id: &str, work: impl Future<Output = T>) -> T {
    let every = stream.backend.inner.claim_after / 3;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tick.tick() => stream.touch(id).await,
        }
    }
}
