//! The queue of push connectors on Redis Streams, for replicas (`--push-queue`): a payload is
//! acknowledged (202) only once Redis has answered its `XADD`, done in one Lua script with the
//! deduplication check (a sorted set of the deliveries' keys, bounded by the window and by
//! `dedupLimit`) and the bound on queued entries, so a repeat sent to any replica is a
//! duplicate and a full queue is a 503. With the server's AOF on `appendfsync always`, Redis
//! answers only after the entry is on disk: `check_durability` says at start when it is not.
//!
//! Each connector has one stream and one consumer group; each engine process is a consumer of
//! it (`XREADGROUP`), writes an entry to the sink, and only then acknowledges and deletes it
//! (`XACK` and `XDEL` in one transaction), so the stream holds only entries not yet written:
//! nothing acknowledged is kept, nothing unacknowledged is trimmed. While an entry is written
//! its consumer touches it (`XCLAIM ... JUSTID`), so its idle time stays short; the entries of
//! a consumer that died (`kill -9`, a lost pod) grow idle and are reclaimed by the others
//! after `claim_after` (`XAUTOCLAIM`). A reclaimed entry may have reached the sink before the
//! crash: it is written with its Provenance looked up first (`check_written`), so a FHIR sink
//! in transaction mode with `provenance` gets it once. Payloads that can never be written go
//! to the connector's dead-letter stream, in the same transaction as their acknowledgement.
//!
//! The drainer and what the endpoint asks of the queue are in `stream_drain`.
//!
//! Redis away: an accept answers 503 with `Retry-After` (never a 202 not kept; a 503 whose
//! `XADD` landed anyway makes the caller's resend a duplicate), and a drainer waits, backing
//! off, and resumes. Every call has a time limit. The URL, which may hold a password, is never
//! shown: logs name `HOST:PORT`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use redis::Value as Reply;
use redis::aio::ConnectionManager;
use serde_json::Value;

/// Longest wait for one Redis call of an accept or an acknowledgement.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a drainer's read waits for a new entry at Redis (`BLOCK`).
const READ_BLOCK: Duration = Duration::from_secs(2);
/// The consumer group of every connector's stream.
const GROUP: &str = "drainers";

/// Checks the deliveries' keys, the bound, then adds the entry and remembers the keys, at once.
const ACCEPT: &str = r"
local now = tonumber(ARGV[1])
local cutoff = now - tonumber(ARGV[2])
for i = 8, #ARGV do
  local t = redis.call('ZSCORE', KEYS[2], ARGV[i])
  if t and tonumber(t) > cutoff then return 'duplicate' end
end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[4]) then return 'full' end
redis.call('XADD', KEYS[1], '*', 'keys', ARGV[5], 'received', ARGV[6], 'payload', ARGV[7])
for i = 8, #ARGV do redis.call('ZADD', KEYS[2], now, ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1) end
return 'queued'
";

/// Why the Redis queue cannot be set up, or a call failed. The URL is never quoted: it may
/// hold a password.
#[derive(Debug, thiserror::Error)]
pub enum StreamQueueError {
    #[error("the push queue must be a `redis://HOST:PORT` URL")]
    Scheme,
    #[error("the push queue URL is not a valid Redis URL")]
    Url,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis refused the call: {0}")]
    Redis(String),
    #[error("Redis answered something that is not a queue entry")]
    Malformed,
}

impl From<redis::RedisError> for StreamQueueError {
    fn from(e: redis::RedisError) -> Self {
        // The kind and the server's words, never the address (which may carry credentials).
        let text = match (e.code(), e.detail()) {
            (Some(code), Some(detail)) => format!("{code}: {detail}"),
            (None, Some(detail)) => format!("{}: {detail}", e.category()),
            _ => e.category().to_owned(),
        };
        StreamQueueError::Redis(text)
    }
}

/// The Redis server of the push queues, one per process, cheap to clone.
#[derive(Clone)]
pub struct StreamBackend {
    pub(super) inner: Arc<BackendInner>,
}

pub(super) struct BackendInner {
    client: redis::Client,
    /// `HOST:PORT`, what logs may show.
    shown: String,
    /// The connection of accepts and acknowledgements (drainers' blocking reads have theirs).
    conn: tokio::sync::OnceCell<ConnectionManager>,
    /// Most entries waiting in one connector's stream; more are answered 503.
    pub(super) limit: usize,
    /// Idle time after which another consumer takes a consumer's unacknowledged entries.
    pub(super) claim_after: Duration,
    /// This process's name in every consumer group.
    consumer: String,
}

impl std::fmt::Debug for StreamBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamBackend")
            .field("redis", &self.inner.shown)
            .field("limit", &self.inner.limit)
            .field("claim_after", &self.inner.claim_after)
            .finish()
    }
}

impl StreamBackend {
    /// The queue backend of `url` (`redis://[user:password@]HOST:PORT[/DB]`), at most `limit`
    /// entries per connector, entries of a consumer idle for `claim_after` taken over by
    /// another; nothing is connected yet.
    pub fn new(
        url: &str,
        limit: usize,
        claim_after: Duration,
    ) -> Result<StreamBackend, StreamQueueError> {
        let parsed = url::Url::parse(url).map_err(|_| StreamQueueError::Url)?;
        if parsed.scheme() != "redis" {
            return Err(StreamQueueError::Scheme);
        }
        let host = parsed.host_str().ok_or(StreamQueueError::Url)?;
        let shown = format!("{host}:{}", parsed.port().unwrap_or(6379));
        let client = redis::Client::open(url).map_err(|_| StreamQueueError::Url)?;
        let host_name = std::env::var("HOSTNAME").unwrap_or_else(|_| "engine".into());
        let unique = uuid::Uuid::new_v4().simple().to_string();
        Ok(StreamBackend {
            inner: Arc::new(BackendInner {
                client,
                shown,
                conn: tokio::sync::OnceCell::new(),
                limit: limit.max(1),
                claim_after: claim_after.max(Duration::from_millis(100)),
                consumer: format!("{host_name}-{}", &unique[..12]),
            }),
        })
    }

    /// `HOST:PORT` of the Redis server (no credentials), for logs.
    pub fn shown(&self) -> &str {
        &self.inner.shown
    }

    /// The name of this process in the consumer groups.
    pub fn consumer(&self) -> &str {
        &self.inner.consumer
    }

    /// The queue of connector `connector`, deduplicating within `window` and `dedup_limit`.
    pub(super) fn queue(
        &self,
        connector: &str,
        window: Duration,
        dedup_limit: usize,
    ) -> Arc<StreamQueue> {
        let base = format!("fosps:v1:push:{connector}");
        Arc::new(StreamQueue {
            backend: self.clone(),
            stream: format!("{base}:queue"),
            dead: format!("{base}:dead"),
            seen: format!("{base}:seen"),
            window_ms: window.as_millis() as u64,
            dedup_limit: dedup_limit.max(1),
            queued: AtomicUsize::new(0),
            dead_count: AtomicUsize::new(0),
            away: AtomicBool::new(false),
        })
    }

    /// Says at start whether the server keeps what it acknowledges (`appendonly yes`,
    /// `appendfsync always`) and never evicts entries (`maxmemory-policy noeviction`); a
    /// warning for each setting that is not so, or when `CONFIG GET` is not permitted.
    /// Never fails: a Redis away now is waited for by the drainers.
    pub async fn check_durability(&self) {
        let shown = self.shown().to_owned();
        let wanted = [
            ("appendonly", "yes"),
            ("appendfsync", "always"),
            ("maxmemory-policy", "noeviction"),
        ];
        let got: Result<Vec<Vec<String>>, StreamQueueError> = self
            .call(|mut c| async move {
                let mut pipe = redis::pipe();
                for (name, _) in wanted {
                    pipe.cmd("CONFIG").arg("GET").arg(name);
                }
                pipe.query_async(&mut c).await
            })
            .await;
        let values = match got {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(redis = %shown, "cannot check that the push queue's Redis keeps what it acknowledges (want appendonly yes, appendfsync always, maxmemory-policy noeviction): {e}");
                return;
            }
        };
        let mut all = true;
        for ((name, want), v) in wanted.into_iter().zip(values) {
            let value = v.get(1).cloned().unwrap_or_default();
            if value != want {
                all = false;
                tracing::warn!(redis = %shown, setting = name, value = %value, wanted = want, "the push queue's Redis may lose or evict acknowledged pushes: set `{name} {want}` on the server");
            }
        }
        if all {
            tracing::info!(redis = %shown, consumer = %self.consumer(), "push queues on Redis Streams, AOF fsync always");
        }
    }

    /// The shared connection.
    async fn conn(&self) -> Result<ConnectionManager, StreamQueueError> {
        self.inner
            .conn
            .get_or_try_init(|| async {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CALL_TIMEOUT))
                    .set_response_timeout(Some(CALL_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                ConnectionManager::new_lazy_with_config(self.inner.client.clone(), config)
                    .map_err(StreamQueueError::from)
            })
            .await
            .cloned()
    }

    /// A connection of its own for a drainer's blocking reads.
    pub(super) fn reader(&self) -> Result<ConnectionManager, StreamQueueError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(READ_BLOCK + CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        ConnectionManager::new_lazy_with_config(self.inner.client.clone(), config)
            .map_err(StreamQueueError::from)
    }

    /// One call on the shared connection, within the call timeout.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, StreamQueueError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.conn().await?;
        match tokio::time::timeout(CALL_TIMEOUT, f(conn)).await {
            Ok(r) => r.map_err(StreamQueueError::from),
            Err(_) => Err(StreamQueueError::Timeout(CALL_TIMEOUT)),
        }
    }
}

/// One connector's queue on Redis: its stream, dead letters and deduplication keys.
pub(super) struct StreamQueue {
    pub(super) backend: StreamBackend,
    stream: String,
    dead: String,
    seen: String,
    window_ms: u64,
    dedup_limit: usize,
    /// Entries in the stream and dead letters, as last read (for `/metrics`).
    queued: AtomicUsize,
    dead_count: AtomicUsize,
    /// Whether the drainer is waiting for Redis (one log line when it goes and comes back).
    away: AtomicBool,
}

/// What an accept did.
pub(super) enum Accepted {
    Queued,
    Duplicate,
    Full,
}

/// An entry read from a stream: its id and fields.
pub(super) struct Entry {
    pub(super) id: String,
    pub(super) keys: Vec<String>,
    pub(super) received: String,
    /// The payload, or `None` when the entry is not what the engine writes.
    pub(super) payload: Option<Value>,
    pub(super) reason: Option<String>,
    pub(super) outcome: Option<Value>,
    /// Bytes of the payload as stored.
    pub(super) size: usize,
}

impl StreamQueue {
    /// Adds a payload unless a key of it was seen within the window or the stream is full.
    pub(super) async fn accept(
        &self,
        keys: &[String],
        received: &str,
        now_ms: i64,
        payload: &Value,
    ) -> Result<Accepted, StreamQueueError> {
        let payload = serde_json::to_vec(payload).map_err(|_| StreamQueueError::Malformed)?;
        let keys_json = serde_json::to_string(keys).map_err(|_| StreamQueueError::Malformed)?;
        let (stream, seen) = (self.stream.clone(), self.seen.clone());
        let (window, dedup, limit) = (self.window_ms, self.dedup_limit, self.backend.inner.limit);
        let keys = keys.to_vec();
        let received = received.to_owned();
        let said: String = self
            .backend
            .call(|mut c| async move {
                let script = redis::Script::new(ACCEPT);
                let mut call = script.key(stream);
                call.key(seen)
                    .arg(now_ms)
                    .arg(window)
                    .arg(dedup)
                    .arg(limit)
                    .arg(keys_json)
                    .arg(received)
                    .arg(payload);
                for k in keys {
                    call.arg(k);
                }
                call.invoke_async(&mut c).await
            })
            .await?;
        match said.as_str() {
            "queued" => {
                self.queued.fetch_add(1, Ordering::Relaxed);
                Ok(Accepted::Queued)
            }
            "duplicate" => Ok(Accepted::Duplicate),
            "full" => Ok(Accepted::Full),
            _ => Err(StreamQueueError::Malformed),
        }
    }

    /// Creates the consumer group (reading the stream from its start) unless it exists.
    pub(super) async fn ensure_group(&self) -> Result<(), StreamQueueError> {
        let stream = self.stream.clone();
        let made: Result<(), StreamQueueError> = self
            .backend
            .call(|mut c| async move {
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(stream)
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut c)
                    .await
            })
            .await;
        match made {
            Err(StreamQueueError::Redis(text)) if text.starts_with("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// The next entry for this consumer: one idle past `claim_after` at another (dead)
    /// consumer, reclaimed (`true`: it may have reached the sink already), else a new one,
    /// waiting up to `READ_BLOCK` for it.
    pub(super) async fn next(
        &self,
        reader: &mut ConnectionManager,
    ) -> Result<Option<(Entry, bool)>, StreamQueueError> {
        let inner = &self.backend.inner;
        let (stream, consumer) = (self.stream.clone(), inner.consumer.clone());
        let idle = inner.claim_after.as_millis() as u64;
        let claimed: Reply = self
            .backend
            .call(move |mut c| async move {
                redis::cmd("XAUTOCLAIM")
                    .arg(stream)
                    .arg(GROUP)
                    .arg(consumer)
                    .arg(idle)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if let Some(entry) = items(&claimed, 1).and_then(|e| e.into_iter().next()) {
            return Ok(Some((entry, true)));
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&inner.consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">");
        let read = cmd.query_async::<Reply>(reader);
        let read = tokio::time::timeout(READ_BLOCK + CALL_TIMEOUT, read)
            .await
            .map_err(|_| StreamQueueError::Timeout(READ_BLOCK + CALL_TIMEOUT))??;
        // [[stream, [entry, ...]]], or nil when nothing came.
        let entry = match &read {
            Reply::Array(streams) => streams
                .first()
                .and_then(|s| match s {
                    Reply::Array(pair) => pair.get(1).and_then(entries),
                    _ => None,
                })
                .and_then(|e| e.into_iter().next()),
            Reply::Map(streams) => streams
                .first()
                .and_then(|(_, e)| entries(e))
                .and_then(|e| e.into_iter().next()),
            _ => None,
        };
        Ok(entry.map(|e| (e, false)))
    }

    /// Resets the idle time of an entry this consumer is writing (unless another has taken
    /// it meanwhile: only an entry idle for half of `claim_after` is touched).
    pub(super) async fn touch(&self, id: &str) {
        let inner = &self.backend.inner;
        let (stream, consumer, id) = (self.stream.clone(), inner.consumer.clone(), id.to_owned());
        let idle = (inner.claim_after / 2).as_millis() as u64;
        let _: Result<Reply, _> = self
            .backend
            .call(|mut c| async move {
                redis::cmd("XCLAIM")
                    .arg(stream)
                    .arg(GROUP)
                    .arg(consumer)
                    .arg(idle)
                    .arg(id)
                    .arg("JUSTID")
                    .query_async(&mut c)
                    .await
            })
            .await;
    }

    /// Acknowledges a written entry and deletes it from the stream, at once.
    pub(super) async fn ack(&self, id: &str) -> Result<(), StreamQueueError> {
        let (stream, id) = (self.stream.clone(), id.to_owned());
        let _: Reply = self
            .backend
            .call(|mut c| async move {
                let mut pipe = redis::pipe();
                settled(pipe.atomic(), &stream, &id)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        crate::runtime::push::queue::decrement(&self.queued);
        Ok(())
    }

    /// Moves an entry to the dead letters with the reason, acknowledging it, at once.
    pub(super) async fn bury(
        &self,
        entry: &Entry,
        raw_payload: Vec<u8>,
        reason: &str,
        outcome: Option<&Value>,
    ) -> Result<(), StreamQueueError> {
        let letter = DeadFields::of(entry, raw_payload, reason, outcome)?;
        let (stream, dead, id) = (self.stream.clone(), self.dead.clone(), entry.id.clone());
        let _: Reply = self
            .backend
            .call(|mut c| async move {
                let mut pipe = redis::pipe();
                letter.add_to(pipe.atomic(), &dead);
                settled(&mut pipe, &stream, &id).query_async(&mut c).await
            })
            .await?;
        crate::runtime::push::queue::decrement(&self.queued);
        self.dead_count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Reads the lengths of the stream and of the dead letters.
    pub(super) async fn refresh_depths(&self) -> Result<(), StreamQueueError> {
        let (stream, dead) = (self.stream.clone(), self.dead.clone());
        let (q, d): (usize, usize) = self
            .backend
            .call(|mut c| async move {
                redis::pipe()
                    .cmd("XLEN")
                    .arg(stream)
                    .cmd("XLEN")
                    .arg(dead)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        self.queued.store(q, Ordering::Relaxed);
        self.dead_count.store(d, Ordering::Relaxed);
        Ok(())
    }

    /// Entries waiting, and dead letters, as last read.
    pub(super) fn depths(&self) -> (usize, usize) {
        (
            self.queued.load(Ordering::Relaxed),
            self.dead_count.load(Ordering::Relaxed),
        )
    }

    /// The first `count` entries of a stream (`-` to `+`).
    async fn range(&self, key: &str, count: usize) -> Result<Vec<Entry>, StreamQueueError> {
        let key = key.to_owned();
        let got: Reply = self
            .backend
            .call(|mut c| async move {
                redis::cmd("XRANGE")
                    .arg(key)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        entries(&got).ok_or(StreamQueueError::Malformed)
    }

    /// When the oldest waiting entry was received.
    pub(super) async fn oldest(&self) -> Option<String> {
        let first = self.range(&self.stream, 1).await.ok()?;
        first.into_iter().next().map(|e| e.received)
    }

    /// How many dead letters there are, and the first `limit` of them.
    pub(super) async fn dead_letters(
        &self,
        limit: usize,
    ) -> Result<(usize, Vec<Entry>), StreamQueueError> {
        let dead = self.dead.clone();
        let count: usize = self
            .backend
            .call(|mut c| async move { redis::cmd("XLEN").arg(dead).query_async(&mut c).await })
            .await?;
        self.dead_count.store(count, Ordering::Relaxed);
        Ok((count, self.range(&self.dead, limit).await?))
    }

    /// The key of the dead-letter stream.
    pub(super) fn dead_key(&self) -> &str {
        &self.dead
    }

    /// How many dead letters there are, and up to `count` of them after the id `after` (from
    /// the first when `None`), oldest first.
    pub(super) async fn dead_page(
        &self,
        after: Option<&str>,
        count: usize,
    ) -> Result<(usize, Vec<Entry>), StreamQueueError> {
        // Only an entry id reaches Redis as one: anything else starts from the first.
        let start = match after {
            Some(id) if is_entry_id(id) => format!("({id}"),
            _ => "-".to_owned(),
        };
        let dead = self.dead.clone();
        let (count_of, got): (usize, Reply) = self
            .backend
            .call(|mut c| async move {
                redis::pipe()
                    .cmd("XLEN")
                    .arg(&dead)
                    .cmd("XRANGE")
                    .arg(&dead)
                    .arg(start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        self.dead_count.store(count_of, Ordering::Relaxed);
        Ok((count_of, entries(&got).ok_or(StreamQueueError::Malformed)?))
    }

    /// A dead letter sent again and not written: kept with its new reason and outcome. An
    /// entry cannot change in a stream, so it is added again (a new id, at the end) and the
    /// old one deleted, at once.
    pub(super) async fn rebury(
        &self,
        id: &str,
        reason: &str,
        outcome: Option<&Value>,
    ) -> Result<(), StreamQueueError> {
        let Some(entry) = self.dead_letter(id).await? else {
            return Ok(());
        };
        let payload = entry
            .payload
            .as_ref()
            .map(|p| p.to_string().into_bytes())
            .unwrap_or_default();
        let letter = DeadFields::of(&entry, payload, reason, outcome)?;
        let (dead, id) = (self.dead.clone(), id.to_owned());
        let _: Reply = self
            .backend
            .call(|mut c| async move {
                let mut pipe = redis::pipe();
                letter.add_to(pipe.atomic(), &dead);
                pipe.cmd("XDEL")
                    .arg(&dead)
                    .arg(&id)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    /// Sends a dead letter back to the queue (its keys and arrival kept); false when there is
    /// no such dead letter.
    pub(super) async fn replay_dead(&self, id: &str) -> Result<bool, StreamQueueError> {
        let Some(entry) = self.dead_letter(id).await? else {
            return Ok(false);
        };
        let (stream, dead, id) = (self.stream.clone(), self.dead.clone(), id.to_owned());
        let keys = serde_json::to_string(&entry.keys).map_err(|_| StreamQueueError::Malformed)?;
        let payload = entry
            .payload
            .as_ref()
            .map(Value::to_string)
            .unwrap_or_default();
        let received = entry.received.clone();
        let (_, removed): (Reply, usize) = self
            .backend
            .call(|mut c| async move {
                redis::pipe()
                    .atomic()
                    .cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg("keys")
                    .arg(keys)
                    .arg("received")
                    .arg(received)
                    .arg("payload")
                    .arg(payload)
                    .cmd("XDEL")
                    .arg(&dead)
                    .arg(&id)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        self.refresh_depths().await?;
        Ok(removed > 0)
    }

    /// Deletes a dead letter; false when there is no such dead letter.
    pub(super) async fn delete_dead(&self, id: &str) -> Result<bool, StreamQueueError> {
        let (dead, id) = (self.dead.clone(), id.to_owned());
        let removed: usize = self
            .backend
            .call(|mut c| async move {
                redis::cmd("XDEL")
                    .arg(dead)
                    .arg(id)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        self.refresh_depths().await?;
        Ok(removed > 0)
    }

    /// One dead letter, by id.
    pub(super) async fn dead_letter(&self, id: &str) -> Result<Option<Entry>, StreamQueueError> {
        if !is_entry_id(id) {
            return Ok(None);
        }
        let (dead, id) = (self.dead.clone(), id.to_owned());
        let got: Reply = self
            .backend
            .call(|mut c| async move {
                redis::cmd("XRANGE")
                    .arg(dead)
                    .arg(&id)
                    .arg(&id)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(entries(&got).and_then(|e| e.into_iter().next()))
    }

    /// Logs, once, that Redis went away or came back.
    pub(super) fn away(&self, away: bool, why: &dyn std::fmt::Display) {
        if self.away.swap(away, Ordering::Relaxed) != away {
            let redis = self.backend.shown();
            match away {
                true => {
                    tracing::warn!(redis = %redis, "the push queue's Redis is away; draining waits: {why}")
                }
                false => tracing::info!(redis = %redis, "the push queue's Redis is back"),
            }
        }
    }
}

/// An entry of `stream` settled: acknowledged for the group and deleted, added to a pipeline
/// (in the same transaction as what else the pipeline does with it).
fn settled<'p>(pipe: &'p mut redis::Pipeline, stream: &str, id: &str) -> &'p mut redis::Pipeline {
    pipe.cmd("XACK")
        .arg(stream)
        .arg(GROUP)
        .arg(id)
        .cmd("XDEL")
        .arg(stream)
        .arg(id)
}

/// A dead letter's fields as the dead-letter stream keeps them.
struct DeadFields {
    keys: String,
    received: String,
    reason: String,
    outcome: String,
    payload: Vec<u8>,
}

impl DeadFields {
    fn of(
        entry: &Entry,
        payload: Vec<u8>,
        reason: &str,
        outcome: Option<&Value>,
    ) -> Result<DeadFields, StreamQueueError> {
        Ok(DeadFields {
            keys: serde_json::to_string(&entry.keys).map_err(|_| StreamQueueError::Malformed)?,
            received: entry.received.clone(),
            reason: reason.to_owned(),
            outcome: outcome.map(Value::to_string).unwrap_or_default(),
            payload,
        })
    }

    /// The `XADD` of the letter to the dead-letter stream `dead`, added to a pipeline.
    fn add_to(self, pipe: &mut redis::Pipeline, dead: &str) {
        pipe.cmd("XADD")
            .arg(dead)
            .arg("*")
            .arg("keys")
            .arg(self.keys)
            .arg("received")
            .arg(self.received)
            .arg("reason")
            .arg(self.reason)
            .arg("outcome")
            .arg(self.outcome)
            .arg("payload")
            .arg(self.payload);
    }
}

/// Whether `id` reads as a stream entry id (`MS-SEQ`, each part a 64-bit number, as Redis
/// takes them), so no caller text reaches Redis as one.
pub(super) fn is_entry_id(id: &str) -> bool {
    let mut parts = id.split('-');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u64>().is_ok())
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// The entries of an `XRANGE`-shaped reply (`[[id, [field, value, ...]], ...]`).
fn entries(v: &Reply) -> Option<Vec<Entry>> {
    let Reply::Array(items) = v else {
        return matches!(v, Reply::Nil).then(Vec::new);
    };
    Some(items.iter().filter_map(entry).collect())
}

/// The entries of element `at` of a reply (`XAUTOCLAIM` gives `[next, entries, deleted]`).
fn items(v: &Reply, at: usize) -> Option<Vec<Entry>> {
    match v {
        Reply::Array(parts) => entries(parts.get(at)?),
        _ => None,
    }
}

fn text(v: &Reply) -> Option<String> {
    match v {
        Reply::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Reply::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn entry(v: &Reply) -> Option<Entry> {
    let Reply::Array(pair) = v else { return None };
    let id = text(pair.first()?)?;
    let mut out = Entry {
        id,
        keys: Vec::new(),
        received: String::new(),
        payload: None,
        reason: None,
        outcome: None,
        size: 0,
    };
    let fields: Vec<(&Reply, &Reply)> = match pair.get(1)? {
        Reply::Array(f) => f
            .chunks(2)
            .filter_map(|c| Some((c.first()?, c.get(1)?)))
            .collect(),
        Reply::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        _ => Vec::new(),
    };
    for (k, v) in fields {
        match text(k).as_deref() {
            Some("keys") => {
                out.keys = text(v)
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or_default();
            }
            Some("received") => out.received = text(v).unwrap_or_default(),
            Some("reason") => out.reason = text(v),
            Some("outcome") => out.outcome = text(v).and_then(|t| serde_json::from_str(&t).ok()),
            Some("payload") => {
                if let Reply::BulkString(b) = v {
                    out.size = b.len();
                    out.payload = serde_json::from_slice(b).ok();
                }
            }
            _ => {}
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_password_in_the_url_is_never_shown() {
        let b = StreamBackend::new("redis://u:hunter2@queue.local:6380/1", 10, Duration::ZERO)
            .expect("valid");
        assert_eq!(b.shown(), "queue.local:6380");
        assert!(!format!("{b:?}").contains("hunter2"));
        assert!(matches!(
            StreamBackend::new("http://queue.local", 10, Duration::ZERO),
            Err(StreamQueueError::Scheme)
        ));
        let e =
            StreamBackend::new("redis://u:hunter2@[bad", 10, Duration::ZERO).expect_err("invalid");
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn entry_ids_are_checked_before_reaching_redis() {
        assert!(is_entry_id("1700000000000-0"));
        assert!(is_entry_id("18446744073709551615-18446744073709551615"));
        for bad in [
            "",
            "-",
            "1-",
            "1-2-3",
            "a-1",
            "+",
            "1700000000000-0 x",
            "+1-0",
            "18446744073709551616-0",
            "99999999999999999999-0",
        ] {
            assert!(!is_entry_id(bad), "{bad}");
        }
    }

    #[test]
    fn entries_are_read_from_both_reply_shapes() {
        let bulk = |s: &str| Reply::BulkString(s.as_bytes().to_vec());
        let one = Reply::Array(vec![
            bulk("1-0"),
            Reply::Array(vec![
                bulk("keys"),
                bulk(r#"["json:abc"]"#),
                bulk("received"),
                bulk("2026-01-01T00:00:00Z"),
                bulk("payload"),
                bulk(r#"{"id":"p1"}"#),
            ]),
        ]);
        let got = entries(&Reply::Array(vec![one.clone()])).expect("entries");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].keys, ["json:abc"]);
        assert_eq!(got[0].payload, Some(json!({"id": "p1"})));
        let claimed = Reply::Array(vec![
            bulk("0-0"),
            Reply::Array(vec![one]),
            Reply::Array(vec![]),
        ]);
        assert_eq!(items(&claimed, 1).expect("claimed").len(), 1);
        assert!(entries(&Reply::Nil).expect("nothing").is_empty());
    }
}
