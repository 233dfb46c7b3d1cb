//! The build phase: from a checked model, the engine's runtime state (source clients, pull
//! runtimes and their caches, cron jobs, push endpoints), nothing spawned. Connectors whose
//! fingerprint did not change keep the runtime of the previous engine, so a reload leaves their
//! caches, queues and schedules as they are; a push connector whose definition changed gets a
//! new endpoint over the same queue (its drain lock, sequence and deduplication memory), so
//! that its new drainer takes over from the old one.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::task::TaskTracker;

use crate::model::{Model, Strategy};
use crate::runtime::build_error::BuildError;
use crate::runtime::clock::Clock;
use crate::runtime::metrics::Metrics;
use crate::runtime::problem::Problem;
use crate::runtime::pull::PullRuntime;
use crate::runtime::push::PushEndpoint;
use crate::runtime::readiness::Readiness;
use crate::runtime::run::Runner;
use crate::runtime::schedule::CronJob;
use crate::runtime::shared_lock::TickClaim;
use crate::runtime::state::StateDir;
use crate::runtime::upstream::Upstreams;

/// Limits on requests, and how the engine is reached from outside.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body.
    pub body: usize,
    /// Largest total size of request headers.
    pub headers: usize,
    /// Longest a request may take before it is answered 504.
    pub timeout: Duration,
    /// Public base URL for links (`https://host/prefix`); without it, the `Host` header
    /// (or a proxy's `X-Forwarded-Host` and `X-Forwarded-Proto`, when they are well formed).
    pub public_url: Option<String>,
    /// Longest request target (path and query), in bytes; longer is answered 414.
    pub uri: usize,
    /// Longest wait for a request's headers, also between requests on a kept-alive
    /// connection; then the connection is closed (slow or idle clients hold no slot).
    pub header_read_timeout: Duration,
    /// Most connections served at once; more wait to be accepted.
    pub connections: usize,
    /// Who may call the admin API (closed by default).
    pub admin: crate::runtime::admin_access::AdminAccess,
    /// The cache tier shared by replicas (Redis), behind each pull cache, also claiming
    /// schedule ticks; none by default.
    pub shared: Option<crate::runtime::shared_cache::SharedTier>,
    /// Where queued pushes wait: Redis Streams shared by replicas (`--push-queue`), or, by
    /// default (`None`), each connector's directory under the state directory.
    pub push_queue: Option<crate::runtime::push::StreamBackend>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body: 10 << 20,
            headers: 16 << 10,
            timeout: Duration::from_secs(60),
            public_url: None,
            uri: 8 << 10,
            header_read_timeout: Duration::from_secs(10),
            connections: 1024,
            admin: Default::default(),
            shared: None,
            push_queue: None,
        }
    }
}

/// Where the engine keeps local state, and the embedded NDJSON sink.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub state: PathBuf,
    pub sink: PathBuf,
}

impl Default for Dirs {
    fn default() -> Self {
        Dirs {
            state: PathBuf::from(".engine-state"),
            sink: PathBuf::from(".engine-state/ndjson"),
        }
    }
}

/// Everything the routes need, built once from a model (nothing spawned).
pub struct Engine {
    pub model: Arc<Model>,
    pub pulls: HashMap<String, Arc<PullRuntime>>,
    pub crons: HashMap<String, Arc<CronJob>>,
    pub pushes: HashMap<String, Arc<PushEndpoint>>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Whether traffic should come (shutdown, writable state directory), shared by every
    /// generation of the engine.
    pub readiness: Arc<Readiness>,
    /// Outcome of definition reloads, shared by every generation of the engine.
    pub reload: Arc<ReloadStatus>,
    /// The calendar's clock of every part, kept by every generation of the engine.
    pub clock: Clock,
    /// The runs, drains and watchers spawned while serving, shared by every generation of the
    /// engine, so that a shutdown lets them finish.
    pub tasks: TaskTracker,
}

/// What the last reload of the definitions did.
#[derive(Debug, Default)]
pub struct ReloadStatus {
    /// Definition sets served so far (1 for the first).
    pub generation: std::sync::atomic::AtomicU64,
    /// Diagnostics of the last refused set, until a valid set is loaded.
    pub error: std::sync::Mutex<Option<String>>,
}

impl ReloadStatus {
    /// The generation, and whether the last reload was refused, without its diagnostics:
    /// what anyone who can reach `/readyz` may see (a diagnostic quotes definition lines).
    pub fn summary(&self) -> Value {
        json!({
            "generation": self.generation.load(Ordering::Relaxed),
            "lastReloadRefused": self.error.lock().ok().is_some_and(|e| e.is_some()),
        })
    }

    /// The generation and the diagnostics of the last refused set.
    pub fn json(&self) -> Value {
        json!({
            "generation": self.generation.load(Ordering::Relaxed),
            "lastError": self.error.lock().ok().and_then(|e| e.clone()),
        })
    }
}

impl Engine {
    pub fn new(model: Arc<Model>, limits: Limits, dirs: &Dirs) -> Result<Arc<Engine>, BuildError> {
        Self::with_clock(model, limits, dirs, Clock::system())
    }

    /// A new engine whose schedules, push windows and reports read `clock`.
    pub fn with_clock(
        model: Arc<Model>,
        limits: Limits,
        dirs: &Dirs,
        clock: Clock,
    ) -> Result<Arc<Engine>, BuildError> {
        Self::build(model, limits, dirs, None, clock)
    }

    /// A new engine for `model`, on the clock of `previous`; connectors unchanged since
    /// `previous` (same fingerprint) keep their runtime, so their caches, queues and schedules
    /// survive.
    pub fn with_previous(
        model: Arc<Model>,
        limits: Limits,
        dirs: &Dirs,
        previous: Option<&Engine>,
    ) -> Result<Arc<Engine>, BuildError> {
        let clock = previous.map_or_else(Clock::system, |p| p.clock);
        Self::build(model, limits, dirs, previous, clock)
    }

    fn build(
        model: Arc<Model>,
        limits: Limits,
        dirs: &Dirs,
        previous: Option<&Engine>,
        clock: Clock,
    ) -> Result<Arc<Engine>, BuildError> {
        let metrics = previous.map_or_else(|| Arc::new(Metrics::default()), |p| p.metrics.clone());
        let unchanged = |name: &str, fingerprint: &str| {
            previous
                .and_then(|p| p.model.connector(name))
                .is_some_and(|c| c.fingerprint == fingerprint)
        };
        let sources = model
            .connectors
            .iter()
            .flat_map(|c| c.sources.iter().cloned());
        let upstreams = Upstreams::new(sources, metrics.clone())?;
        let pulls: HashMap<String, Arc<PullRuntime>> = model
            .connectors
            .iter()
            .filter_map(|c| match previous.and_then(|p| p.pulls.get(&c.name)) {
                Some(kept) if unchanged(&c.name, &c.fingerprint) => {
                    Some((c.name.clone(), kept.clone()))
                }
                _ => PullRuntime::new(c.clone(), &upstreams).map(|mut p| {
                    if let Some(tier) = &limits.shared {
                        p.cache = p.cache.take().map(|cache| {
                            cache.with_shared(tier.level(
                                &c.name,
                                &c.fingerprint,
                                metrics.clone(),
                                limits.timeout,
                            ))
                        });
                    }
                    (c.name.clone(), Arc::new(p))
                }),
            })
            .collect();
        let mut crons = HashMap::new();
        let mut pushes = HashMap::new();
        let state = StateDir::new(&dirs.state);
        for c in &model.connectors {
            if unchanged(&c.name, &c.fingerprint)
                && let Some(p) = previous
            {
                if let Some(job) = p.crons.get(&c.name) {
                    crons.insert(c.name.clone(), job.clone());
                    continue;
                }
                if let Some(ep) = p.pushes.get(&c.name) {
                    pushes.insert(c.name.clone(), ep.clone());
                    continue;
                }
            }
            match &c.strategy {
                Strategy::Cron(cron) => {
                    let runner = Runner::new(
                        c.clone(),
                        &upstreams,
                        state.clone(),
                        &dirs.sink,
                        metrics.clone(),
                        clock,
                    )?;
                    let mut job = CronJob::new(runner, cron.schedule.clone(), clock);
                    if let Some(tier) = &limits.shared {
                        job =
                            job.once_across_replicas(TickClaim::new(tier.clone(), metrics.clone()));
                    }
                    crons.insert(c.name.clone(), Arc::new(job));
                }
                Strategy::Push(_) => {
                    let caches: Vec<(HashSet<String>, Arc<PullRuntime>)> = pulls
                        .values()
                        .map(|p| (p.resource_types(), p.clone()))
                        .collect();
                    let invalidate: crate::runtime::push::Invalidate =
                        Arc::new(move |types: &HashSet<String>| {
                            for (served, p) in &caches {
                                if served.iter().any(|t| types.contains(t))
                                    && let Some(cache) = &p.cache
                                {
                                    cache.invalidate();
                                }
                            }
                        });
                    // A changed definition takes over the queue of the one it replaces.
                    let replaced = previous
                        .and_then(|p| p.pushes.get(&c.name))
                        .map(Arc::as_ref);
                    let mut ep = PushEndpoint::new(
                        c.clone(),
                        &dirs.state,
                        &dirs.sink,
                        metrics.clone(),
                        invalidate,
                        clock,
                        replaced,
                    )?;
                    if let Some(backend) = &limits.push_queue {
                        ep = ep.with_stream_queue(backend, replaced);
                    }
                    pushes.insert(c.name.clone(), Arc::new(ep));
                }
                Strategy::Pull(_) => {}
            }
        }
        let reload =
            previous.map_or_else(|| Arc::new(ReloadStatus::default()), |p| p.reload.clone());
        reload.generation.fetch_add(1, Ordering::Relaxed);
        let tasks = previous.map_or_else(TaskTracker::new, |p| p.tasks.clone());
        let readiness = previous.map_or_else(
            || Arc::new(Readiness::new(&dirs.state)),
            |p| p.readiness.clone(),
        );
        Ok(Arc::new(Engine {
            model,
            pulls,
            crons,
            pushes,
            metrics,
            limits,
            readiness,
            reload,
            clock,
            tasks,
        }))
    }

    pub fn pull(&self, name: &str) -> Result<&Arc<PullRuntime>, Problem> {
        self.pulls
            .get(name)
            .ok_or_else(|| Problem::not_found(format!("no pull connector `{name}`")))
    }
}
