//! The answer cache of a pull connector (quick_cache): a TTL kept with each entry, capacity in
//! entries and bytes, one upstream call for concurrent misses of a key (the guarded entry API),
//! a stale window served when the upstream fails, and hit, miss, stale and eviction counters.
//! A second level (`SecondLevel`, the shared tier of `runtime::shared_cache`) may fill its
//! misses and carry its invalidations to every replica.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};
use reqwest::header::HeaderValue;
use tokio::time::Instant;

use crate::model::digest::content_digest;
use crate::runtime::problem::{Problem, ProblemKind};
use futures_util::future::BoxFuture;

/// How long a failure is shared with requests for the same key, so that a failing upstream
/// sees one call per key and second rather than one per request.
const FAILURE_SHARED_FOR: Duration = Duration::from_secs(1);

/// A finished answer, kept as it is sent: status, FHIR JSON body (the bytes written to every
/// caller, shared, never serialised again) and its entity tag, made once as the header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    pub etag: HeaderValue,
    /// False when a source failed: such an answer is served but never cached.
    pub complete: bool,
}

impl Answer {
    pub fn new(status: u16, body: Vec<u8>, complete: bool) -> Answer {
        let etag = format!("W/\"{}\"", &content_digest(&[&body])[..32]);
        Answer {
            status,
            body: Bytes::from(body),
            // A weak tag of hexadecimal digits: always a valid header value.
            etag: HeaderValue::from_str(&etag)
                .unwrap_or_else(|_| HeaderValue::from_static("W/\"\"")),
            complete,
        }
    }
}

#[derive(Debug)]
enum State {
    Fresh {
        until: Instant,
        stale_until: Instant,
    },
    /// The upstream failed; the stale answer (if any) is served until `retry_at`.
    Failed {
        retry_at: Instant,
        stale_until: Instant,
        problem: Problem,
    },
}

#[derive(Debug)]
struct Entry {
    answer: Option<Arc<Answer>>,
    state: State,
}

/// How an answer was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Hit,
    Miss,
    Stale,
    /// Not cacheable (a partial answer) or the connector has no cache.
    Uncached,
}

#[derive(Clone)]
struct Weigh {
    /// Every entry weighs at least this, so that the byte capacity also bounds the count.
    floor: u64,
}

impl Weighter<String, Arc<Entry>> for Weigh {
    fn weight(&self, key: &String, val: &Arc<Entry>) -> u64 {
        let bytes = key.len() as u64 + val.answer.as_ref().map_or(0, |a| a.body.len() as u64);
        bytes.max(self.floor)
    }
}

#[derive(Clone, Default)]
struct Evictions(Arc<AtomicU64>);

impl Lifecycle<String, Arc<Entry>> for Evictions {
    type RequestState = ();

    fn on_evict(&self, _: &mut (), _: String, _: Arc<Entry>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a second level gave for a key the in-memory cache missed.
pub struct Filled {
    /// The answer (from the second level or the source), or the source's failure.
    pub result: Result<Answer, Problem>,
    /// For an answer read from the second level: how long it stays fresh.
    pub fresh_for: Option<Duration>,
    /// A stale answer found in the second level and the rest of its stale window, for when
    /// the source fails.
    pub stale: Option<(Answer, Duration)>,
}

/// A level behind the in-memory cache, shared with other replicas.
pub trait SecondLevel: Send + Sync {
    /// True once after this cache's entries were invalidated elsewhere: they must go.
    fn invalidated(&self) -> bool;
    /// Carries an invalidation of this cache to the second level and the other replicas.
    fn invalidate_everywhere(&self);
    /// The answer for `key`, missed in memory: from the second level (a fresh one, unless
    /// `skip_fresh`), or by awaiting `load`.
    fn fill<'a>(
        &'a self,
        key: &'a str,
        skip_fresh: bool,
        ttl: Duration,
        stale_window: Duration,
        load: BoxFuture<'a, Result<Answer, Problem>>,
    ) -> BoxFuture<'a, Filled>;
}

/// Counters and size of a cache, for the admin API and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub entries: u64,
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub stale: u64,
    pub evictions: u64,
}

/// The cache of one connector.
pub struct AnswerCache {
    cache: Cache<String, Arc<Entry>, Weigh, DefaultHashBuilder, Evictions>,
    ttl: Duration,
    stale_if_error: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    evictions: Arc<AtomicU64>,
    /// The second level, shared by replicas, when the engine has one.
    shared: Option<Box<dyn SecondLevel>>,
}

/// Shards of the cache: an answer larger than `maxBytes / SHARDS` is served but not kept.
const SHARDS: usize = 4;

impl AnswerCache {
    pub fn new(spec: &crate::model::Cache) -> AnswerCache {
        let evictions = Evictions::default();
        let floor = (spec.max_bytes / spec.max_entries.max(1)).max(1);
        let options = quick_cache::OptionsBuilder::new()
            // Each shard holds its share of `maxBytes` and never keeps an answer larger than
            // that share: quick_cache's default, four shards per core, kept no answer over
            // 1 MiB of the default 64 MiB on a 16-core node. A fixed number keeps the
            // largest answer kept (a quarter of `maxBytes`) the same on every machine.
            .shards(SHARDS)
            .estimated_items_capacity(spec.max_entries.min(1 << 20) as usize)
            .weight_capacity(spec.max_bytes)
            .build()
            .expect("valid cache options");
        AnswerCache {
            cache: Cache::with_options(
                options,
                Weigh { floor },
                DefaultHashBuilder::default(),
                evictions.clone(),
            ),
            ttl: spec.ttl,
            stale_if_error: spec.stale_if_error,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            evictions: evictions.0,
            shared: None,
        }
    }

    /// This cache with `level` behind it.
    pub fn with_shared(mut self, level: impl SecondLevel + 'static) -> AnswerCache {
        self.shared = Some(Box::new(level));
        self
    }

    /// The answer for `key`: fresh from the cache, or loaded by exactly one of the
    /// concurrent callers, or stale when loading fails within the stale window. `bypass`
    /// (a caller's `Cache-Control: no-cache`) skips a fresh entry but still shares the load.
    pub async fn get_or_load<F, Fut>(
        &self,
        key: &str,
        bypass: bool,
        load: F,
    ) -> Result<(Arc<Answer>, Source), Problem>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Answer, Problem>> + Send,
    {
        let mut load = Some(load);
        // The answer kept as a stale fallback, and the end of its stale window.
        let mut previous: Option<(Arc<Answer>, Instant)> = None;
        let mut bypass = bypass;
        let skip_fresh = bypass;
        if let Some(shared) = &self.shared
            && shared.invalidated()
        {
            self.cache.clear();
        }
        loop {
            let now = Instant::now();
            match self.cache.get_value_or_guard_async(key).await {
                Ok(entry) => {
                    match &entry.state {
                        State::Fresh { until, .. } if now < *until && !bypass => {
                            if let Some(a) = &entry.answer {
                                self.hits.fetch_add(1, Ordering::Relaxed);
                                return Ok((a.clone(), Source::Hit));
                            }
                        }
                        State::Failed {
                            retry_at,
                            stale_until,
                            problem,
                        } if now < *retry_at => {
                            return match &entry.answer {
                                Some(a) if now < *stale_until => {
                                    self.stale.fetch_add(1, Ordering::Relaxed);
                                    Ok((a.clone(), Source::Stale))
                                }
                                _ => Err(problem.clone()),
                            };
                        }
                        _ => {}
                    }
                    // Expired (or bypassed): keep it as the stale fallback and load anew.
                    let stale_until = match &entry.state {
                        State::Fresh { stale_until, .. } | State::Failed { stale_until, .. } => {
                            *stale_until
                        }
                    };
                    if now < stale_until
                        && let Some(a) = &entry.answer
                    {
                        previous = Some((a.clone(), stale_until));
                    }
                    self.cache.remove_if(key, |v| Arc::ptr_eq(v, &entry));
                    bypass = false;
                }
                Err(guard) => {
                    let Some(load) = load.take() else {
                        return Err(Problem::new(ProblemKind::Internal, "cache load ran twice"));
                    };
                    self.misses.fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now();
                    let (loaded, fresh_for) = match &self.shared {
                        None => (load().await, None),
                        Some(shared) => {
                            let filled = shared
                                .fill(
                                    key,
                                    skip_fresh,
                                    self.ttl,
                                    self.stale_if_error,
                                    Box::pin(load()),
                                )
                                .await;
                            if previous.is_none()
                                && let Some((a, left)) = filled.stale
                            {
                                previous = Some((Arc::new(a), now + left));
                            }
                            (filled.result, filled.fresh_for)
                        }
                    };
                    return match loaded {
                        Ok(answer) => {
                            let answer = Arc::new(answer);
                            if answer.complete {
                                let until = now + fresh_for.unwrap_or(self.ttl).min(self.ttl);
                                let entry = Entry {
                                    answer: Some(answer.clone()),
                                    state: State::Fresh {
                                        until,
                                        stale_until: until + self.stale_if_error,
                                    },
                                };
                                let _ = guard.insert(Arc::new(entry));
                                Ok((answer, Source::Miss))
                            } else {
                                drop(guard);
                                Ok((answer, Source::Uncached))
                            }
                        }
                        Err(problem) => {
                            let stale_until = previous.as_ref().map_or(now, |(_, until)| *until);
                            let entry = Entry {
                                answer: previous.as_ref().map(|(a, _)| a.clone()),
                                state: State::Failed {
                                    retry_at: now + FAILURE_SHARED_FOR,
                                    stale_until,
                                    problem: problem.clone(),
                                },
                            };
                            let _ = guard.insert(Arc::new(entry));
                            match previous {
                                Some((a, until)) if now < until => {
                                    self.stale.fetch_add(1, Ordering::Relaxed);
                                    Ok((a, Source::Stale))
                                }
                                _ => Err(problem),
                            }
                        }
                    };
                }
            }
        }
    }

    /// The answer for `key` when the cache holds a fresh one, counted as a hit; `None` for
    /// anything else (absent, being loaded, expired, failed: `get_or_load` settles those).
    /// Synchronous, so that a hit can be answered without a future (`http::guard`'s direct
    /// answers).
    pub fn fresh(&self, key: &str) -> Option<Arc<Answer>> {
        if let Some(shared) = &self.shared
            && shared.invalidated()
        {
            self.cache.clear();
            return None;
        }
        let entry = self.cache.get(key)?;
        match &entry.state {
            State::Fresh { until, .. } if Instant::now() < *until => {
                let answer = entry.answer.clone()?;
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(answer)
            }
            _ => None,
        }
    }

    /// Drops every entry; gives how many there were.
    pub fn invalidate(&self) -> usize {
        let n = self.cache.len();
        self.cache.clear();
        if let Some(shared) = &self.shared {
            shared.invalidate_everywhere();
        }
        n
    }

    pub fn stats(&self) -> Stats {
        Stats {
            entries: self.cache.len() as u64,
            bytes: self.cache.weight(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn spec(ttl: u64, stale: u64) -> crate::model::Cache {
        crate::model::Cache {
            ttl: Duration::from_secs(ttl),
            max_entries: 100,
            max_bytes: 1 << 20,
            stale_if_error: Duration::from_secs(stale),
            allow_no_cache: true,
        }
    }

    fn answer(text: &str) -> Answer {
        Answer::new(200, text.as_bytes().to_vec(), true)
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl() {
        let cache = AnswerCache::new(&spec(60, 0));
        let calls = AtomicUsize::new(0);
        let load = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(answer("one"))
        };
        assert_eq!(
            cache.get_or_load("k", false, load).await.expect("loads").1,
            Source::Miss
        );
        tokio::time::advance(Duration::from_secs(59)).await;
        let (_, how) = cache
            .get_or_load("k", false, || async { Ok(answer("two")) })
            .await
            .expect("hit");
        assert_eq!(how, Source::Hit);
        tokio::time::advance(Duration::from_secs(2)).await;
        let (a, how) = cache
            .get_or_load("k", false, || async { Ok(answer("two")) })
            .await
            .expect("reload");
        assert_eq!((how, a.body.as_ref()), (Source::Miss, b"two".as_ref()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.stats().hits, 1);
        assert_eq!(cache.stats().misses, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_answers_cover_failures_within_the_window() {
        let cache = AnswerCache::new(&spec(10, 60));
        cache
            .get_or_load("k", false, || async { Ok(answer("old")) })
            .await
            .expect("loads");
        tokio::time::advance(Duration::from_secs(30)).await;
        let down = || async { Err(Problem::new(ProblemKind::SourceFailed, "down")) };
        let (a, how) = cache.get_or_load("k", false, down).await.expect("stale");
        assert_eq!((how, a.body.as_ref()), (Source::Stale, b"old".as_ref()));
        tokio::time::advance(Duration::from_secs(45)).await;
        let e = cache
            .get_or_load("k", false, down)
            .await
            .expect_err("past the stale window");
        assert_eq!(e.diagnostics, "down");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_shared_briefly_then_retried() {
        let cache = AnswerCache::new(&spec(10, 0));
        let calls = AtomicUsize::new(0);
        for _ in 0..3 {
            let r = cache
                .get_or_load("k", false, || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(Problem::new(ProblemKind::SourceFailed, "down"))
                })
                .await;
            assert!(r.is_err());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(FAILURE_SHARED_FOR).await;
        let (_, how) = cache
            .get_or_load("k", false, || async { Ok(answer("back")) })
            .await
            .expect("retried");
        assert_eq!(how, Source::Miss);
    }

    #[tokio::test(start_paused = true)]
    async fn bypass_reloads_and_partial_answers_are_not_kept() {
        let cache = AnswerCache::new(&spec(60, 0));
        cache
            .get_or_load("k", false, || async { Ok(answer("a")) })
            .await
            .expect("loads");
        let (a, how) = cache
            .get_or_load("k", true, || async { Ok(answer("b")) })
            .await
            .expect("reloads");
        assert_eq!((how, a.body.as_ref()), (Source::Miss, b"b".as_ref()));
        let partial = || async { Ok(Answer::new(200, b"p".to_vec(), false)) };
        assert_eq!(
            cache
                .get_or_load("p", false, partial)
                .await
                .expect("served")
                .1,
            Source::Uncached
        );
        assert_eq!(
            cache
                .get_or_load("p", false, partial)
                .await
                .expect("served")
                .1,
            Source::Uncached
        );
        assert_eq!(cache.invalidate(), 1);
    }

    #[tokio::test]
    async fn capacity_bounds_entries_and_counts_evictions() {
        let mut s = spec(60, 0);
        s.max_entries = 10;
        s.max_bytes = 10_000;
        let cache = AnswerCache::new(&s);
        for i in 0..100 {
            cache
                .get_or_load(&format!("k{i}"), false, || async { Ok(answer("x")) })
                .await
                .expect("loads");
        }
        let stats = cache.stats();
        assert!(stats.entries <= 10, "{stats:?}");
        assert!(stats.evictions >= 90, "{stats:?}");
    }
}
