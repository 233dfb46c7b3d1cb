//! The shared cache tier on Redis, for replicas: a second level behind each pull connector's
//! in-memory cache (one source call per key across replicas by a fill lock, `SET NX PX`, freed
//! only by its holder; the others read the answer when it lands), answers stored compressed
//! (deflate) with their freshness (the key's own expiry, the stale window in the entry),
//! invalidations sent to every replica (keys deleted, then a message on a pub/sub channel that
//! makes each engine drop its in-memory entries). Redis being away is never an error: every call has a short
//! timeout, a failed call makes the tier step aside for a second (a log line when it goes and
//! comes back, a metric per call), and the caller is served from memory or the source.

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::model::digest::content_digest;
use crate::runtime::cache::{Answer, Filled, SecondLevel};
use crate::runtime::metrics::Metrics;
use crate::runtime::problem::Problem;

/// Longest wait for one Redis call; past it the tier is taken as away.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// How long the tier steps aside after a failed call before Redis is tried again.
const AWAY_FOR: Duration = Duration::from_secs(1);
/// First and longest pause between two looks of a replica waiting for another's fill.
const POLL_FIRST: Duration = Duration::from_millis(5);
const POLL_MOST: Duration = Duration::from_millis(50);
/// The channel on which invalidations reach every replica.
const CHANNEL: &str = "fosps:v1:invalidate";
/// Largest answer body read back from Redis (a lying or corrupted entry stops there).
const LARGEST_BODY: u64 = 256 << 20;
/// Invalidations waiting to be sent; more are dropped (with a log line), never waited for.
const QUEUED_INVALIDATIONS: usize = 1024;
/// First byte of a stored answer, for the format of this version.
const FORMAT: u8 = 1;
/// The statuses of the answers this version stores (a complete read or search).
const STORED_STATUSES: [u16; 2] = [200, 404];

/// Why the shared cache cannot be set up from its URL. The URL itself is never quoted: it may
/// hold a password.
#[derive(Debug, thiserror::Error)]
pub enum SharedCacheError {
    #[error("the shared cache must be a `redis://HOST:PORT` URL")]
    Scheme,
    #[error("the shared cache URL is not a valid Redis URL")]
    Url,
}

/// The shared tier, cheap to clone; one per process, kept by every generation of the engine.
#[derive(Clone)]
pub struct SharedTier {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    /// `HOST:PORT`, what logs may show.
    shown: String,
    conn: OnceLock<ConnectionManager>,
    /// Until when the tier steps aside after a failed call.
    away_until: Mutex<Option<Instant>>,
    away: AtomicBool,
    /// Per connector, a counter that every invalidation heard from another replica moves on.
    epochs: Mutex<HashMap<String, Arc<AtomicU64>>>,
    outbox: OnceLock<mpsc::Sender<String>>,
    /// This process's token, so that a lock is freed only by its holder.
    token: String,
}

impl std::fmt::Debug for SharedTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTier")
            .field("redis", &self.inner.shown)
            .finish()
    }
}

impl SharedTier {
    /// The tier of `url` (`redis://[user:password@]HOST:PORT[/DB]`); nothing is connected yet.
    pub fn new(url: &str) -> Result<SharedTier, SharedCacheError> {
        let parsed = url::Url::parse(url).map_err(|_| SharedCacheError::Url)?;
        if parsed.scheme() != "redis" {
            return Err(SharedCacheError::Scheme);
        }
        let host = parsed.host_str().ok_or(SharedCacheError::Url)?;
        let shown = format!("{host}:{}", parsed.port().unwrap_or(6379));
        let client = redis::Client::open(url).map_err(|_| SharedCacheError::Url)?;
        Ok(SharedTier {
            inner: Arc::new(Inner {
                client,
                shown,
                conn: OnceLock::new(),
                away_until: Mutex::new(None),
                away: AtomicBool::new(false),
                epochs: Mutex::default(),
                outbox: OnceLock::new(),
                token: uuid::Uuid::new_v4().to_string(),
            }),
        })
    }

    /// `HOST:PORT` of the Redis server (no credentials), for logs.
    pub fn shown(&self) -> &str {
        &self.inner.shown
    }

    /// Starts listening for other replicas' invalidations and sending this one's; called once
    /// inside the runtime before serving. The two tasks end when the tier is dropped.
    pub fn start(&self) {
        let (tx, rx) = mpsc::channel(QUEUED_INVALIDATIONS);
        if self.inner.outbox.set(tx).is_err() {
            return;
        }
        tokio::spawn(send_invalidations(Arc::downgrade(&self.inner), rx));
        tokio::spawn(hear_invalidations(Arc::downgrade(&self.inner)));
        tracing::info!(redis = %self.inner.shown, "shared cache tier set");
    }

    /// The second level of connector `connector`'s cache, whose definition has `fingerprint`
    /// (replicas share answers only between identical definitions); a fill lock is held at
    /// most `lock_for` (the longest a request may take).
    pub fn level(
        &self,
        connector: &str,
        fingerprint: &str,
        metrics: Arc<Metrics>,
        lock_for: Duration,
    ) -> SharedLevel {
        let epoch = self.epoch(connector);
        let seen = epoch.load(Ordering::Acquire);
        SharedLevel {
            tier: self.clone(),
            connector: connector.to_owned(),
            prefix: format!(
                "{}{}:",
                answers_prefix(connector),
                &fingerprint[..fingerprint.len().min(16)]
            ),
            epoch,
            seen: AtomicU64::new(seen),
            metrics,
            lock_for: lock_for.max(Duration::from_secs(1)),
        }
    }

    fn epoch(&self, connector: &str) -> Arc<AtomicU64> {
        let mut epochs = self
            .inner
            .epochs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        epochs.entry(connector.to_owned()).or_default().clone()
    }

    /// The connection, unless the tier is stepping aside after a failure.
    fn conn(&self) -> Option<ConnectionManager> {
        if self.inner.away.load(Ordering::Relaxed) {
            let mut until = self
                .inner
                .away_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match *until {
                Some(t) if Instant::now() < t => return None,
                _ => *until = None,
            }
        }
        if let Some(c) = self.inner.conn.get() {
            return Some(c.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(AWAY_FOR);
        match ConnectionManager::new_lazy_with_config(self.inner.client.clone(), config) {
            Ok(c) => Some(self.inner.conn.get_or_init(|| c).clone()),
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    /// One Redis call within the call timeout; on failure the tier steps aside.
    pub(crate) async fn call<T, F, Fut>(&self, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.conn()?;
        match tokio::time::timeout(CALL_TIMEOUT, f(conn)).await {
            Ok(Ok(v)) => {
                if self.inner.away.swap(false, Ordering::Relaxed) {
                    tracing::info!(redis = %self.inner.shown, "shared cache tier is back");
                }
                Some(v)
            }
            Ok(Err(e)) => {
                self.failed(&e);
                None
            }
            Err(_) => {
                self.failed(&"no answer in time");
                None
            }
        }
    }

    fn failed(&self, why: &dyn std::fmt::Display) {
        *self
            .inner
            .away_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now() + AWAY_FOR);
        if !self.inner.away.swap(true, Ordering::Relaxed) {
            tracing::warn!(redis = %self.inner.shown, "shared cache tier unreachable, serving from memory and sources: {why}");
        }
    }

    /// This process's token: what a lock it holds is set to.
    pub(crate) fn token(&self) -> &str {
        &self.inner.token
    }
}

/// The keys of connector `connector`'s answers start with this.
fn answers_prefix(connector: &str) -> String {
    format!("fosps:v1:answer:{connector}:")
}

/// `text` with the glob characters of `SCAN MATCH` escaped.
fn glob_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Sends this replica's invalidations: the connector's keys deleted, then the message that
/// makes the other replicas drop their in-memory entries.
async fn send_invalidations(inner: Weak<Inner>, mut rx: mpsc::Receiver<String>) {
    while let Some(connector) = rx.recv().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let tier = SharedTier { inner };
        let pattern = format!("{}*", glob_escaped(&answers_prefix(&connector)));
        let mut cursor = 0u64;
        loop {
            let pattern = pattern.clone();
            let found: Option<(u64, Vec<String>)> = tier
                .call(|mut c| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(500)
                        .query_async(&mut c)
                        .await
                })
                .await;
            let Some((next, keys)) = found else { break };
            if !keys.is_empty() {
                let _: Option<u64> = tier.call(|mut c| async move { c.unlink(keys).await }).await;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let message = connector.clone();
        let sent: Option<u64> = tier
            .call(|mut c| async move { c.publish(CHANNEL, message).await })
            .await;
        if sent.is_none() {
            tracing::warn!(connector = %connector, "an invalidation did not reach the other replicas (the shared cache tier is away)");
        }
    }
}

/// Hears the other replicas' invalidations, reconnecting after a loss; every (re)connection
/// moves every connector's epoch on, since messages may have been missed meanwhile.
async fn hear_invalidations(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let client = strong.client.clone();
        drop(strong);
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(CHANNEL).await?;
            redis::RedisResult::Ok(pubsub)
        };
        if let Ok(Ok(pubsub)) = tokio::time::timeout(CALL_TIMEOUT * 4, subscribed).await {
            if let Some(strong) = inner.upgrade() {
                bump_all(&strong);
            }
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                let Some(strong) = inner.upgrade() else {
                    return;
                };
                // Only connectors this process has (a message cannot grow the map).
                if let Ok(connector) = msg.get_payload::<String>()
                    && let Some(epoch) = strong
                        .epochs
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get(&connector)
                {
                    epoch.fetch_add(1, Ordering::AcqRel);
                }
            }
            if let Some(strong) = inner.upgrade() {
                SharedTier { inner: strong }.failed(&"the invalidation channel closed");
            }
        }
        tokio::time::sleep(AWAY_FOR).await;
    }
}

fn bump_all(inner: &Inner) {
    let epochs = inner
        .epochs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for e in epochs.values() {
        e.fetch_add(1, Ordering::AcqRel);
    }
}

/// A stored answer read back.
enum Stored {
    Fresh(Answer, Duration),
    Stale(Answer, Duration),
}

/// The second level of one pull connector's cache.
pub struct SharedLevel {
    tier: SharedTier,
    connector: String,
    prefix: String,
    epoch: Arc<AtomicU64>,
    seen: AtomicU64,
    metrics: Arc<Metrics>,
    lock_for: Duration,
}

impl SecondLevel for SharedLevel {
    /// True once after another replica invalidated this connector (or the tier reconnected):
    /// the in-memory entries must go.
    fn invalidated(&self) -> bool {
        let now = self.epoch.load(Ordering::Acquire);
        self.seen.load(Ordering::Acquire) != now && self.seen.swap(now, Ordering::AcqRel) != now
    }

    /// Drops this connector's shared answers and tells the other replicas to drop theirs
    /// (sent in the background; never waited for).
    fn invalidate_everywhere(&self) {
        if let Some(tx) = self.tier.inner.outbox.get()
            && tx.try_send(self.connector.clone()).is_err()
        {
            tracing::warn!(connector = %self.connector, "too many invalidations queued for the shared cache tier; this one is dropped");
        }
    }

    fn fill<'a>(
        &'a self,
        key: &'a str,
        skip_fresh: bool,
        ttl: Duration,
        stale_window: Duration,
        load: BoxFuture<'a, Result<Answer, Problem>>,
    ) -> BoxFuture<'a, Filled> {
        Box::pin(self.fill_from(key, skip_fresh, ttl, stale_window, load))
    }
}

impl SharedLevel {
    fn count(&self, outcome: &'static str) {
        self.metrics.shared_cache(&self.connector, outcome);
    }

    /// The answer for `key` after the in-memory cache missed: a fresh one from the shared tier
    /// (unless `skip_fresh`), or loaded by `load` in the one replica that holds the key's fill
    /// lock while the others wait for it to land. Without Redis, `load` is awaited at once.
    async fn fill_from(
        &self,
        key: &str,
        skip_fresh: bool,
        ttl: Duration,
        stale_window: Duration,
        load: BoxFuture<'_, Result<Answer, Problem>>,
    ) -> Filled {
        let digest = &content_digest(&[key.as_bytes()])[..32];
        let answer_key = format!("{}{digest}", self.prefix);
        let lock_key = format!("fosps:v1:fill:{}:{digest}", self.connector);
        // Waiters give up on a holder that never lands its answer (a replica that died
        // mid-fill) halfway through the lock's life, and call the source themselves.
        let deadline = Instant::now() + self.lock_for / 2;
        let mut stale = None;
        let mut pause = POLL_FIRST;
        let mut waited = false;
        loop {
            match self.read(&answer_key).await {
                Err(()) => break,
                Ok(Some(Stored::Fresh(answer, fresh_for))) if !skip_fresh => {
                    self.count(if waited { "waited" } else { "hit" });
                    return Filled {
                        result: Ok(answer),
                        fresh_for: Some(fresh_for),
                        stale,
                    };
                }
                Ok(Some(Stored::Stale(answer, left))) => stale = Some((answer, left)),
                Ok(_) => {}
            }
            let token = self.tier.inner.token.clone();
            let lock_ms = self.lock_for.as_millis() as u64;
            let lk = lock_key.clone();
            let locked: Option<Option<String>> = self
                .tier
                .call(|mut c| async move {
                    redis::cmd("SET")
                        .arg(lk)
                        .arg(token)
                        .arg("NX")
                        .arg("PX")
                        .arg(lock_ms)
                        .query_async(&mut c)
                        .await
                })
                .await;
            match locked {
                None => break,
                Some(Some(_)) => {
                    self.count("filled");
                    let result = load.await;
                    if let Ok(answer) = &result
                        && answer.complete
                    {
                        self.store(&answer_key, answer, ttl, stale_window).await;
                    }
                    self.unlock(&lock_key).await;
                    return Filled {
                        result,
                        fresh_for: None,
                        stale,
                    };
                }
                Some(None) => {
                    if Instant::now() >= deadline {
                        break;
                    }
                    waited = true;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(POLL_MOST);
                }
            }
        }
        // Redis is away, or the holder of the lock never landed an answer: the source.
        self.count("unavailable");
        Filled {
            result: load.await,
            fresh_for: None,
            stale,
        }
    }

    /// The stored answer of `key` with its freshness; `Err` when Redis is away.
    async fn read(&self, key: &str) -> Result<Option<Stored>, ()> {
        let k = key.to_owned();
        let got: Option<(Option<Vec<u8>>, i64)> = self
            .tier
            .call(|mut c| async move {
                redis::pipe()
                    .get(&k)
                    .cmd("PTTL")
                    .arg(&k)
                    .query_async(&mut c)
                    .await
            })
            .await;
        let Some((value, pttl)) = got else {
            return Err(());
        };
        let (Some(bytes), Ok(left)) = (value, u64::try_from(pttl)) else {
            return Ok(None);
        };
        match decode(&bytes) {
            Some((answer, stale_ms)) if left > stale_ms => Ok(Some(Stored::Fresh(
                answer,
                Duration::from_millis(left - stale_ms),
            ))),
            Some((answer, _)) => Ok(Some(Stored::Stale(answer, Duration::from_millis(left)))),
            None => {
                self.count("unreadable");
                tracing::warn!(connector = %self.connector, "an entry of the shared cache tier could not be read; it is ignored");
                Ok(None)
            }
        }
    }

    async fn store(&self, key: &str, answer: &Answer, ttl: Duration, stale_window: Duration) {
        let stale_ms = stale_window.as_millis() as u64;
        let life_ms = (ttl.as_millis() as u64).saturating_add(stale_ms).max(1);
        let Some(bytes) = encode(answer, stale_ms) else {
            return;
        };
        let k = key.to_owned();
        let _: Option<()> = self
            .tier
            .call(|mut c| async move { c.pset_ex(k, bytes, life_ms).await })
            .await;
    }

    async fn unlock(&self, lock_key: &str) {
        let k = lock_key.to_owned();
        let token = self.tier.inner.token.clone();
        let _: Option<i64> = self
            .tier
            .call(|mut c| async move {
                redis::Script::new(
                    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end",
                )
                .key(k)
                .arg(token)
                .invoke_async(&mut c)
                .await
            })
            .await;
    }
}

/// A stored answer: the format byte, the status, the stale window in milliseconds, then the
/// body deflated.
fn encode(answer: &Answer, stale_ms: u64) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(11 + answer.body.len() / 4);
    out.push(FORMAT);
    out.extend_from_slice(&answer.status.to_be_bytes());
    out.extend_from_slice(&stale_ms.to_be_bytes());
    let mut z = flate2::write::DeflateEncoder::new(out, flate2::Compression::fast());
    z.write_all(&answer.body).ok()?;
    z.finish().ok()
}

/// A stored answer and its stale window in milliseconds; `None` when it is not one (another
/// format, cut short, a status this version never stores, or a body past the largest allowed).
fn decode(bytes: &[u8]) -> Option<(Answer, u64)> {
    let (&format, rest) = bytes.split_first()?;
    if format != FORMAT || rest.len() < 10 {
        return None;
    }
    let status = u16::from_be_bytes([rest[0], rest[1]]);
    // Only complete answers are stored, and those are a read's or a search's 200 or 404: any
    // other status (a 500, a redirect, a 0 served as 200) is a corrupt or foreign entry.
    if !STORED_STATUSES.contains(&status) {
        return None;
    }
    let stale_ms = u64::from_be_bytes(rest[2..10].try_into().ok()?);
    let mut body = Vec::new();
    flate2::read::DeflateDecoder::new(&rest[10..])
        .take(LARGEST_BODY + 1)
        .read_to_end(&mut body)
        .ok()?;
    if body.len() as u64 > LARGEST_BODY {
        return None;
    }
    Some((Answer::new(status, body, true), stale_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_back_as_stored_and_hostile_entries_are_refused() {
        let body = br#"{"resourceType":"Bundle","total":0}"#.repeat(100);
        let a = Answer::new(200, body.clone(), true);
        let bytes = encode(&a, 30_000).expect("encodes");
        assert!(bytes.len() < body.len() / 4, "compressed: {}", bytes.len());
        let (back, stale) = decode(&bytes).expect("decodes");
        assert_eq!(
            (back.status, back.body.as_ref(), stale),
            (200, &body[..], 30_000)
        );
        assert_eq!(back.etag, a.etag);
        let not_found = Answer::new(404, b"{}".to_vec(), true);
        let bytes404 = encode(&not_found, 0).expect("encodes");
        assert_eq!(decode(&bytes404).map(|(a, _)| a.status), Some(404));
        // Another format, cut short, not deflate, and a bomb past the largest body.
        assert!(decode(&[2, 0, 200]).is_none());
        assert!(decode(&bytes[..5]).is_none());
        assert!(decode(&[1, 0, 200, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]).is_none());
        let mut z = flate2::write::DeflateEncoder::new(
            vec![FORMAT, 0, 200, 0, 0, 0, 0, 0, 0, 0, 0],
            flate2::Compression::best(),
        );
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(LARGEST_BODY >> 20) + 1 {
            z.write_all(&zeros).expect("deflates");
        }
        assert!(decode(&z.finish().expect("deflated")).is_none());
    }

    #[test]
    fn an_entry_with_a_status_this_version_never_stores_is_not_served() {
        // A corrupt or foreign entry in the right format: a 500, a redirect, a 0 that the
        // router would send as 200, a status past 599 it would send as is.
        for status in [0, 100, 302, 500, 503, 999, u16::MAX] {
            let a = Answer::new(status, br#"{"resourceType":"Bundle"}"#.to_vec(), true);
            let bytes = encode(&a, 1_000).expect("encodes");
            assert!(decode(&bytes).is_none(), "status {status} read back");
        }
    }

    #[test]
    fn a_password_in_the_url_is_never_shown() {
        let t = SharedTier::new("redis://user:hunter2@cache.local:6380/0").expect("valid");
        assert_eq!(t.shown(), "cache.local:6380");
        assert!(!format!("{t:?}").contains("hunter2"));
        assert!(matches!(
            SharedTier::new("http://cache.local"),
            Err(SharedCacheError::Scheme)
        ));
        let e = SharedTier::new("redis://user:hunter2@[bad").expect_err("invalid");
        assert!(!e.to_string().contains("hunter2"));
    }
}
