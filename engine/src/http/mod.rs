//! The HTTP surface of `engine serve`: pull routes under `/fhir/{connector}`, the admin API
//! under `/connectors`, and operations (`/healthz`, `/readyz`, `/metrics`). `router` is a
//! function of the engine's state, so tests drive it without a socket.

mod admin;
pub mod outcome;
mod routes;
pub mod server;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use std::collections::HashSet;
use std::path::PathBuf;

use crate::model::{Model, Strategy};
use crate::runtime::clock::Clock;
use crate::runtime::metrics::Metrics;
use crate::runtime::pull::PullRuntime;
use crate::runtime::push::PushEndpoint;
use crate::runtime::run::Runner;
use crate::runtime::schedule::CronJob;
use crate::runtime::state::StateDir;
use crate::runtime::upstream::Upstreams;
use admin::{
    dead_letters, healthz, invalidate, list, metrics, openapi, readyz, reload_status, run_now, show,
};
use outcome::Problem;
use routes::{batch, push, read, search};

/// Limits on requests, and how the engine is reached from outside.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body.
    pub body: usize,
    /// Largest total size of request headers.
    pub headers: usize,
    /// Longest a request may take before it is answered 504.
    pub timeout: Duration,
    /// Public base URL for links (`https://host/prefix`); without it, the `Host` header.
    pub public_url: Option<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body: 10 << 20,
            headers: 16 << 10,
            timeout: Duration::from_secs(60),
            public_url: None,
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
    pub ready: AtomicBool,
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
    pub fn json(&self) -> Value {
        json!({
            "generation": self.generation.load(Ordering::Relaxed),
            "lastError": self.error.lock().ok().and_then(|e| e.clone()),
        })
    }
}

impl Engine {
    pub fn new(model: Arc<Model>, limits: Limits, dirs: &Dirs) -> Result<Arc<Engine>, String> {
        Self::with_clock(model, limits, dirs, Clock::system())
    }

    /// A new engine whose schedules, push windows and reports read `clock`.
    pub fn with_clock(
        model: Arc<Model>,
        limits: Limits,
        dirs: &Dirs,
        clock: Clock,
    ) -> Result<Arc<Engine>, String> {
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
    ) -> Result<Arc<Engine>, String> {
        let clock = previous.map_or_else(Clock::system, |p| p.clock);
        Self::build(model, limits, dirs, previous, clock)
    }

    fn build(
        model: Arc<Model>,
        limits: Limits,
        dirs: &Dirs,
        previous: Option<&Engine>,
        clock: Clock,
    ) -> Result<Arc<Engine>, String> {
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
                _ => PullRuntime::new(c.clone(), &upstreams).map(|p| (c.name.clone(), Arc::new(p))),
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
                    crons.insert(
                        c.name.clone(),
                        Arc::new(CronJob::new(runner, cron.schedule.clone(), clock)),
                    );
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
                    let ep = PushEndpoint::new(
                        c.clone(),
                        &dirs.state,
                        &dirs.sink,
                        metrics.clone(),
                        invalidate,
                        clock,
                    )?;
                    pushes.insert(c.name.clone(), Arc::new(ep));
                }
                Strategy::Pull(_) => {}
            }
        }
        let reload =
            previous.map_or_else(|| Arc::new(ReloadStatus::default()), |p| p.reload.clone());
        reload.generation.fetch_add(1, Ordering::Relaxed);
        let tasks = previous.map_or_else(TaskTracker::new, |p| p.tasks.clone());
        Ok(Arc::new(Engine {
            model,
            pulls,
            crons,
            pushes,
            metrics,
            limits,
            ready: AtomicBool::new(true),
            reload,
            clock,
            tasks,
        }))
    }

    fn pull(&self, name: &str) -> Result<&Arc<PullRuntime>, Problem> {
        self.pulls
            .get(name)
            .ok_or_else(|| Problem::not_found(format!("no pull connector `{name}`")))
    }
}

/// The application.
pub fn router(engine: Arc<Engine>) -> Router {
    let mut app = Router::new();
    for ep in engine.pushes.values() {
        let ep = ep.clone();
        let path = ep.path().to_owned();
        app = app.route(
            &path,
            post(move |headers: HeaderMap, body: Body| push(ep, headers, body)),
        );
    }
    app.route("/connectors/{name}/run", post(run_now))
        .route("/connectors/{name}/dead-letters", get(dead_letters))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/reload", get(reload_status))
        .route("/connectors", get(list))
        .route("/connectors/list", get(list))
        .route("/connectors/{name}", get(show))
        .route("/connectors/{name}/cache", delete(invalidate))
        .route("/fhir/{connector}", post(batch))
        .route("/fhir/{connector}/{resource_type}", get(search))
        .route("/fhir/{connector}/{resource_type}/{id}", get(read))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(engine.clone(), guard))
        .with_state(engine)
}

/// The request id of a request (from `X-Request-Id`, or made here).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Every request: an id, a header size limit, a time limit answered 504, metrics and a log line.
async fn guard(State(engine): State<Arc<Engine>>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let (connector, route) = route_of(req.uri().path());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = if header_bytes > engine.limits.headers {
        let mut p = Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too-long",
            "the request headers are too large",
        );
        p.diagnostics = format!(
            "{} (at most {} bytes)",
            p.diagnostics, engine.limits.headers
        );
        p.into_response()
    } else {
        match tokio::time::timeout(engine.limits.timeout, next.run(req)).await {
            Ok(r) => r,
            Err(_) => Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!("no answer within {} s", engine.limits.timeout.as_secs_f64()),
            )
            .into_response(),
        }
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    let labels = vec![
        ("connector", connector.clone()),
        ("route", route.to_owned()),
    ];
    let mut with_status = labels.clone();
    with_status.push(("status", status.to_string()));
    engine.metrics.add(
        "engine_requests_total",
        "HTTP requests answered.",
        with_status,
        1.0,
    );
    engine.metrics.observe(
        "engine_request_duration_seconds",
        "Time to answer HTTP requests.",
        labels,
        start.elapsed(),
    );
    tracing::info!(request_id = %id, %method, %path, status, ms = start.elapsed().as_secs_f64() * 1000.0, "request");
    resp
}

/// The connector and route name of a path, for metrics labels (bounded: unknown paths are
/// `other`).
fn route_of(path: &str) -> (String, &'static str) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["fhir", c] => ((*c).to_owned(), "batch"),
        ["fhir", c, _] => ((*c).to_owned(), "search"),
        ["fhir", c, _, _] => ((*c).to_owned(), "read"),
        ["healthz"] => (String::new(), "healthz"),
        ["readyz"] => (String::new(), "readyz"),
        ["metrics"] => (String::new(), "metrics"),
        ["reload"] => (String::new(), "admin"),
        ["connectors", ..] => (String::new(), "admin"),
        ["push", c] => ((*c).to_owned(), "push"),
        _ => (String::new(), "other"),
    }
}

async fn not_found(req: Request) -> Response {
    Problem::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
    .into_response()
}
