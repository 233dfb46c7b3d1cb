//! The HTTP surface of `engine serve`: pull routes under `/fhir/{connector}`, the admin API
//! under `/connectors`, and operations (`/healthz`, `/readyz`, `/metrics`). `router` is a
//! function of the engine's state, so tests drive it without a socket.

pub mod outcome;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};
use tokio::time::Instant;

use std::collections::HashSet;
use std::path::PathBuf;

use crate::cache::{Answer, Source as CacheSource};
use crate::metrics::Metrics;
use crate::model::{Model, Strategy};
use crate::pull::{PullRuntime, RequestInfo};
use crate::push::{PushEndpoint, Reply};
use crate::run::Runner;
use crate::schedule::CronJob;
use crate::state::StateDir;
use crate::upstream::Upstreams;
use outcome::{FHIR_JSON, Problem, fhir_response};

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
        Self::with_previous(model, limits, dirs, None)
    }

    /// A new engine for `model`; connectors unchanged since `previous` (same fingerprint)
    /// keep their runtime, so their caches, queues and schedules survive.
    pub fn with_previous(
        model: Arc<Model>,
        limits: Limits,
        dirs: &Dirs,
        previous: Option<&Engine>,
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
                    )?;
                    crons.insert(
                        c.name.clone(),
                        Arc::new(CronJob::new(runner, cron.schedule.clone())),
                    );
                }
                Strategy::Push(_) => {
                    let caches: Vec<(HashSet<String>, Arc<PullRuntime>)> = pulls
                        .values()
                        .map(|p| (p.resource_types(), p.clone()))
                        .collect();
                    let invalidate: crate::push::Invalidate =
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
                    )?;
                    pushes.insert(c.name.clone(), Arc::new(ep));
                }
                Strategy::Pull(_) => {}
            }
        }
        let reload =
            previous.map_or_else(|| Arc::new(ReloadStatus::default()), |p| p.reload.clone());
        reload.generation.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(Engine {
            model,
            pulls,
            crons,
            pushes,
            metrics,
            limits,
            ready: AtomicBool::new(true),
            reload,
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

async fn openapi(State(engine): State<Arc<Engine>>) -> Response {
    let prefix = engine
        .limits
        .public_url
        .as_deref()
        .and_then(|u| url::Url::parse(u).ok())
        .map(|u| u.path().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    axum::Json(crate::openapi::document(&engine.model, &prefix)).into_response()
}

async fn reload_status(State(engine): State<Arc<Engine>>) -> Response {
    axum::Json(engine.reload.json()).into_response()
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(engine): State<Arc<Engine>>) -> Response {
    let ready = engine.ready.load(Ordering::Relaxed);
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "connectors": engine.model.connectors.len(),
        "reload": engine.reload.json(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    let mut series = Vec::new();
    for (name, p) in &engine.pulls {
        if let Some(c) = &p.cache {
            let s = c.stats();
            let l = || vec![("connector", name.clone())];
            series.push((
                "engine_cache_entries",
                "Answers in the cache.",
                "gauge",
                l(),
                s.entries as f64,
            ));
            series.push((
                "engine_cache_bytes",
                "Weight of the cache in bytes.",
                "gauge",
                l(),
                s.bytes as f64,
            ));
            series.push((
                "engine_cache_hits_total",
                "Answers served fresh from the cache.",
                "counter",
                l(),
                s.hits as f64,
            ));
            series.push((
                "engine_cache_misses_total",
                "Answers loaded from the sources.",
                "counter",
                l(),
                s.misses as f64,
            ));
            series.push((
                "engine_cache_stale_total",
                "Stale answers served because a source failed.",
                "counter",
                l(),
                s.stale as f64,
            ));
            series.push((
                "engine_cache_evictions_total",
                "Answers evicted for capacity.",
                "counter",
                l(),
                s.evictions as f64,
            ));
        }
    }
    for (name, ep) in &engine.pushes {
        let (queued, dead) = ep.depths();
        let l = || vec![("connector", name.clone())];
        series.push((
            "engine_push_queue_depth",
            "Push payloads waiting in the local queue.",
            "gauge",
            l(),
            queued as f64,
        ));
        series.push((
            "engine_push_dead_letters",
            "Push payloads that can never be written.",
            "gauge",
            l(),
            dead as f64,
        ));
    }
    series.sort_by(|a, b| a.0.cmp(b.0));
    let text = engine.metrics.render(&series);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

fn summary(engine: &Engine, c: &crate::model::Connector) -> Value {
    let strategy = match &c.strategy {
        Strategy::Pull(_) => "pull",
        Strategy::Push(_) => "push",
        Strategy::Cron(_) => "cron",
    };
    let mut v = json!({
        "name": c.name,
        "description": c.description,
        "strategy": strategy,
        "labels": c.labels,
        "sources": c.sources.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
    });
    if let Strategy::Pull(p) = &c.strategy {
        v["resources"] = p
            .resources
            .iter()
            .map(|r| {
                json!({
                    "type": r.resource_type,
                    "search": r.search.is_some(),
                    "read": r.read.is_some(),
                })
            })
            .collect();
        v["routes"] = json!(format!("/fhir/{}", c.name));
    }
    if let Some(cache) = engine.pulls.get(&c.name).and_then(|p| p.cache.as_ref()) {
        v["cache"] = serde_json::to_value(cache.stats()).unwrap_or(Value::Null);
    }
    if let Some(job) = engine.crons.get(&c.name) {
        v["run"] = job.status();
    }
    if let Some(ep) = engine.pushes.get(&c.name) {
        let (queued, dead) = ep.depths();
        v["push"] = json!({"path": ep.path(), "queued": queued, "deadLetters": dead});
    }
    v
}

async fn run_now(State(engine): State<Arc<Engine>>, Path(name): Path<String>) -> Response {
    let Some(job) = engine.crons.get(&name).cloned() else {
        return Problem::not_found(format!("no cron connector `{name}`")).into_response();
    };
    if job.is_running() {
        return Problem::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("`{name}` is running already"),
        )
        .into_response();
    }
    tokio::spawn(async move { job.run_now().await });
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"connector": name, "status": "started"})),
    )
        .into_response()
}

async fn dead_letters(State(engine): State<Arc<Engine>>, Path(name): Path<String>) -> Response {
    match engine.pushes.get(&name) {
        Some(ep) => axum::Json(ep.dead_letters()).into_response(),
        None => Problem::not_found(format!("no push connector `{name}`")).into_response(),
    }
}

async fn push(ep: Arc<PushEndpoint>, headers: HeaderMap, body: Body) -> Response {
    let limit = ep.max_body();
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-long",
            format!("the body is larger than {limit} bytes"),
        )
        .into_response();
    };
    if let Err(p) = ep.authenticate(&headers, &bytes) {
        return p.into_response();
    }
    match ep.deliver(&headers, &bytes).await {
        Ok(Reply::Written(n)) => (
            StatusCode::OK,
            axum::Json(json!({"status": "written", "resources": n})),
        )
            .into_response(),
        Ok(Reply::Queued) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({"status": "queued"})),
        )
            .into_response(),
        Ok(Reply::Duplicate) => {
            (StatusCode::OK, axum::Json(json!({"status": "duplicate"}))).into_response()
        }
        Err(p) if p.status == StatusCode::SERVICE_UNAVAILABLE => {
            let mut r = p.into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
            r
        }
        Err(p) => p.into_response(),
    }
}

async fn list(State(engine): State<Arc<Engine>>) -> Response {
    let all: Vec<Value> = engine
        .model
        .connectors
        .iter()
        .map(|c| summary(&engine, c))
        .collect();
    axum::Json(all).into_response()
}

async fn show(State(engine): State<Arc<Engine>>, Path(name): Path<String>) -> Response {
    match engine.model.connector(&name) {
        Some(c) => axum::Json(summary(&engine, c)).into_response(),
        None => Problem::not_found(format!("no connector `{name}`")).into_response(),
    }
}

async fn invalidate(State(engine): State<Arc<Engine>>, Path(name): Path<String>) -> Response {
    match engine.pulls.get(&name).and_then(|p| p.cache.as_ref()) {
        Some(cache) => axum::Json(json!({"connector": name, "invalidated": cache.invalidate()}))
            .into_response(),
        None => Problem::not_found(format!("no cache for connector `{name}`")).into_response(),
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

fn request_info(
    engine: &Engine,
    headers: &HeaderMap,
    path_and_query: &str,
    id: &str,
) -> RequestInfo {
    let base = match &engine.limits.public_url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => {
            let proto = headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("http");
            let host = headers
                .get("x-forwarded-host")
                .or_else(|| headers.get(header::HOST))
                .and_then(|v| v.to_str().ok())
                .filter(|h| {
                    h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".:-[]".contains(&b))
                })
                .unwrap_or("localhost");
            format!("{proto}://{host}")
        }
    };
    RequestInfo {
        request_id: id.to_owned(),
        self_url: format!("{base}{path_and_query}"),
        base,
    }
}

fn answer(a: &Answer, how: CacheSource, req_headers: &HeaderMap) -> Response {
    let etag = HeaderValue::from_str(&a.etag).ok();
    let matches = req_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == a.etag || t.trim() == "*"));
    let mut resp = if matches && a.status == 200 {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = (
            StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK),
            Body::from(a.body.clone()),
        )
            .into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        r
    };
    if let Some(e) = etag {
        resp.headers_mut().insert(header::ETAG, e);
    }
    let cache = match how {
        CacheSource::Hit => "hit",
        CacheSource::Miss => "miss",
        CacheSource::Stale => "stale",
        CacheSource::Uncached => "none",
    };
    resp.headers_mut()
        .insert("x-cache", HeaderValue::from_static(cache));
    resp
}

fn no_cache(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|d| matches!(d.trim(), "no-cache" | "no-store" | "max-age=0"))
        })
}

async fn search(
    State(engine): State<Arc<Engine>>,
    Path((connector, resource_type)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    axum::Extension(RequestId(id)): axum::Extension<RequestId>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let rt = engine.pull(&connector)?.clone();
    let res = rt.resource(&resource_type)?;
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let q = rt.parse_search(res, &pairs)?;
    let path_and_query = match &query {
        Some(q) if !q.is_empty() => format!("/fhir/{connector}/{resource_type}?{q}"),
        _ => format!("/fhir/{connector}/{resource_type}"),
    };
    let info = request_info(&engine, &headers, &path_and_query, &id);
    cached(&rt, &q.key(&resource_type), &headers, || {
        rt.search(res, &q, &info)
    })
    .await
}

/// The answer to a pull request: through the connector's cache when it has one.
async fn cached<F, Fut>(
    rt: &PullRuntime,
    key: &str,
    headers: &HeaderMap,
    load: F,
) -> Result<Response, Problem>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Answer, Problem>>,
{
    let (a, how) = match &rt.cache {
        Some(cache) => {
            cache
                .get_or_load(key, no_cache(headers) && rt.cache_allows_no_cache(), load)
                .await?
        }
        None => (Arc::new(load().await?), CacheSource::Uncached),
    };
    Ok(answer(&a, how, headers))
}

async fn read(
    State(engine): State<Arc<Engine>>,
    Path((connector, resource_type, rid)): Path<(String, String, String)>,
    axum::Extension(RequestId(id)): axum::Extension<RequestId>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let rt = engine.pull(&connector)?.clone();
    let res = rt.resource(&resource_type)?;
    if rid == "."
        || rid == ".."
        || rid.is_empty()
        || rid.len() > 64
        || !rid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(Problem::invalid(format!("`{rid}` is not a FHIR id")));
    }
    let info = request_info(
        &engine,
        &headers,
        &format!("/fhir/{connector}/{resource_type}/{rid}"),
        &id,
    );
    cached(
        &rt,
        &format!("read|{resource_type}|{rid}"),
        &headers,
        || rt.read(res, &rid, &info),
    )
    .await
}

async fn batch(
    State(engine): State<Arc<Engine>>,
    Path(connector): Path<String>,
    axum::Extension(RequestId(id)): axum::Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let rt = engine.pull(&connector)?.clone();
    let bytes = axum::body::to_bytes(body, engine.limits.body)
        .await
        .map_err(|_| {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-long",
                format!("the body is larger than {} bytes", engine.limits.body),
            )
        })?;
    let bundle: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Problem::invalid(format!("the body is not JSON: {e}")))?;
    let info = request_info(&engine, &headers, &format!("/fhir/{connector}"), &id);
    let out = rt.batch(&bundle, &info).await?;
    Ok(fhir_response(StatusCode::OK, &out))
}
