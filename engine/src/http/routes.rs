//! The connectors' own routes: pull routes under `/fhir/{connector}` (search, read, batch;
//! cache lookup, ETag/304) and the webhooks of push connectors.
//!
//! A pull connector's FHIR bases: `/fhir/{connector}` (every source, when they share one FHIR
//! version), `/fhir/{connector}/{version}` (`R4`, `R4B`, `R5`: the sources of that version),
//! and, for reads, `/fhir/{connector}/{source}` (one source: the `fullUrl`s of a connector
//! with several sources). Version names are upper case and definition names lower case, so a
//! segment is never both.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, RawQuery, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::guard::RequestId;
use super::outcome::{FHIR_JSON, fhir_response};
use crate::model::search_params::SearchQuery;
use crate::runtime::cache::{Answer, Source as CacheSource};
use crate::runtime::engine::Engine;
use crate::runtime::problem::{Problem, ProblemKind};
use crate::runtime::pull::{PullRuntime, RequestInfo, Scope, is_version_name};
use crate::runtime::push::{PushEndpoint, Reply};
use crate::runtime::trace_context::{Trace, TraceContext};

/// A push webhook; a sync write's sink posts are children of the request's span (`id`, from
/// the guard). The delivery runs in a task of the engine's (`tasks`), so that a caller that
/// leaves, or the request's time limit (504), never cuts a sync write midway: the write goes
/// on to its end and its keys are remembered once it is done, so that the caller's resend is
/// a duplicate (409 while the write still runs), never a second write.
pub(super) async fn push(
    ep: Arc<PushEndpoint>,
    tasks: tokio_util::task::TaskTracker,
    id: Option<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = ep.max_body();
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return Problem::new(
            ProblemKind::TooLarge,
            format!("the body is larger than {limit} bytes"),
        )
        .into_response();
    };
    if let Err(p) = ep.authenticate(&headers, &bytes) {
        return p.into_response();
    }
    let trace = id.map(|i| i.1);
    // Its log lines carry the request's trace id, as the request's own do.
    let logged_as = crate::runtime::log_trace::current();
    let delivered = tasks
        .spawn(async move {
            let delivery = ep.deliver(&headers, &bytes, trace.as_ref());
            match logged_as {
                Some(t) => crate::runtime::log_trace::with_trace(t, delivery).await,
                None => delivery.await,
            }
        })
        .await;
    let delivered = delivered.unwrap_or_else(|e| {
        Err(Problem::new(
            ProblemKind::Internal,
            format!("the delivery stopped: {e}"),
        ))
    });
    match delivered {
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
        Err(p) => p.into_response(),
    }
}

/// The base URL of links in answers: `--public-url`, else the one the caller reached.
fn base_of(engine: &Engine, headers: &HeaderMap) -> String {
    match &engine.limits.public_url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => forwarded_base(headers),
    }
}

/// What an interaction that calls sources needs of its request; made only on a miss.
fn request_info(
    engine: &Engine,
    base: &str,
    path_and_query: &str,
    id: &RequestId,
    trace: &Trace,
) -> RequestInfo {
    RequestInfo {
        trace: TraceContext {
            request_id: id.as_str().to_owned(),
            trace: trace.clone(),
        },
        self_url: format!("{base}{path_and_query}"),
        base: base.to_owned(),
        deadline: Some(sources_deadline(engine, id)),
    }
}

/// Most time kept, between the sources' deadline and the request's, to make the partial
/// answer.
const ANSWER_MARGIN: std::time::Duration = std::time::Duration::from_millis(100);

/// When the sources of a request stop: a tenth of the request's time limit (at most
/// `ANSWER_MARGIN`) before the guard answers 504, so that a source slower than the request
/// gives the partial answer (the others' resources and an outcome naming it) rather than a
/// 504 that loses them all: on the same instant, the guard's timer fired first now and then.
fn sources_deadline(engine: &Engine, id: &RequestId) -> tokio::time::Instant {
    let margin = (engine.limits.timeout / 10).min(ANSWER_MARGIN);
    id.2.checked_sub(margin).unwrap_or(id.2)
}

/// The base URL callers reach the engine at, without `--public-url`: a proxy's
/// `X-Forwarded-Proto` (`http` or `https`, nothing else) and `X-Forwarded-Host` (its first
/// value), else the `Host` header, each used only when it is a plain host with an optional
/// port (no user, path, query or other scheme); else `http://localhost`.
fn forwarded_base(headers: &HeaderMap) -> String {
    let first = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let scheme = match first(header::HeaderName::from_static("x-forwarded-proto")) {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    [
        first(header::HeaderName::from_static("x-forwarded-host")),
        first(header::HOST),
    ]
    .into_iter()
    .flatten()
    .find_map(|host| plain_host(scheme, host))
    .unwrap_or_else(|| format!("{scheme}://localhost"))
}

/// Longest forwarded host (and port) taken: a DNS name's 253 characters, a port and brackets.
const MAX_HOST: usize = 253 + 8;

/// `scheme://host[:port]` when `host` is a host with an optional port and nothing else.
/// The last host seen is remembered per thread, since callers mostly send the same one: its
/// base is then found without parsing a URL.
fn plain_host(scheme: &'static str, host: &str) -> Option<String> {
    type Seen = Option<(&'static str, String, Option<String>)>;
    thread_local! {
        static LAST: std::cell::RefCell<Seen> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| {
        if let Some((s, h, base)) = last.as_ref()
            && *s == scheme
            && h == host
        {
            return base.clone();
        }
        let base = parse_plain_host(scheme, host);
        *last = Some((scheme, host.to_owned(), base.clone()));
        base
    })
}

fn parse_plain_host(scheme: &str, host: &str) -> Option<String> {
    // A host name is at most 253 characters (RFC 1035), with a port and brackets a little
    // more: a longer value is no host, and would be copied into every link of the answer.
    if host.len() > MAX_HOST
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    {
        return None;
    }
    let u = url::Url::parse(&format!("{scheme}://{host}")).ok()?;
    let name = u.host_str()?;
    // Port 0 reaches nothing.
    (u.username().is_empty() && u.path() == "/" && u.query().is_none() && u.port() != Some(0)).then(
        || match u.port() {
            Some(p) => format!("{scheme}://{name}:{p}"),
            None => format!("{scheme}://{name}"),
        },
    )
}

/// An entity tag without its weakness mark: what RFC 9110's weak comparison compares.
fn opaque(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// A pull answer as sent: the stored bytes (shared, not copied) and the prepared entity tag,
/// or 304 when the caller holds that tag (`If-None-Match` compares weakly: `W/"x"` and `"x"`
/// match, as a proxy that drops or adds the `W/` sends them). `HEAD` gets the same headers
/// (hyper drops the body).
fn answer(a: &Answer, how: CacheSource, req_headers: &HeaderMap) -> Response {
    let tag = opaque(a.etag.as_bytes());
    let matches = req_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|t| {
            let t = t.trim_ascii();
            t == b"*" || opaque(t) == tag
        });
    let mut resp = if matches && a.status == 200 {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Body::from(a.body.clone()));
        *r.status_mut() = StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK);
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        r
    };
    let cache = match how {
        CacheSource::Hit => "hit",
        CacheSource::Miss => "miss",
        CacheSource::Stale => "stale",
        CacheSource::Uncached => "none",
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, a.etag.clone());
    h.insert(
        header::HeaderName::from_static("x-cache"),
        HeaderValue::from_static(cache),
    );
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

/// `GET /fhir/{connector}/{Type}`: a search of every source.
pub(super) async fn search(
    call: Call,
    Path((connector, resource_type)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    search_in(call, &connector, &Scope::All, &resource_type, query).await
}

/// `GET /fhir/{connector}/{a}/{b}`: a search of one version's sources when `a` names a FHIR
/// version (`/fhir/proxy/R5/Bundle`), else a read of every source (`/fhir/proxy/Patient/1`).
pub(super) async fn search_or_read(
    call: Call,
    Path((connector, a, b)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    if is_version_name(&a) {
        search_in(call, &connector, &Scope::Version(a), &b, query).await
    } else {
        read_in(call, &connector, &Scope::All, &a, &b).await
    }
}

/// `GET /fhir/{connector}/{scope}/{Type}/{id}`: a read of one version's sources, or of the
/// one source a `fullUrl` names.
pub(super) async fn scoped_read(
    call: Call,
    Path((connector, scope, resource_type, rid)): Path<(String, String, String, String)>,
) -> Result<Response, Problem> {
    read_in(
        call,
        &connector,
        &Scope::of_segment(&scope),
        &resource_type,
        &rid,
    )
    .await
}

/// What every pull request carries to its interaction: the engine, the request id the guard
/// gave it, and the caller's headers (taken from the request, not copied: no extractor after
/// this one reads them).
pub(super) struct Call {
    engine: Arc<Engine>,
    id: RequestId,
    trace: Trace,
    headers: HeaderMap,
    /// The search `cached_search` parsed before the router, if it did.
    searched: Option<Searched>,
}

impl FromRequestParts<Arc<Engine>> for Call {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        engine: &Arc<Engine>,
    ) -> Result<Self, Self::Rejection> {
        let id = parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| {
                RequestId(
                    HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                        .unwrap_or_else(|_| HeaderValue::from_static("-")),
                    Trace::fresh(),
                    tokio::time::Instant::now() + engine.limits.timeout,
                )
            });
        Ok(Call {
            engine: engine.clone(),
            trace: id.1.clone(),
            id,
            headers: std::mem::take(&mut parts.headers),
            searched: parts.extensions.remove::<Searched>(),
        })
    }
}

async fn search_in(
    call: Call,
    connector: &str,
    scope: &Scope,
    resource_type: &str,
    query: Option<String>,
) -> Result<Response, Problem> {
    let Call {
        engine,
        id,
        trace,
        headers,
        searched,
    } = call;
    let rt = engine.pull(connector)?.clone();
    let res = rt.resource(resource_type)?;
    let base = base_of(&engine, &headers);
    let (q, key, pairs) = match searched {
        // Parsed by `cached_search` from this request's path, query and headers.
        Some(Searched { q, key, pairs }) if matches!(scope, Scope::All) => (q, key, pairs),
        _ => {
            let pairs: Vec<(String, String)> =
                url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
                    .into_owned()
                    .collect();
            let q = rt.parse_search(res, &pairs)?;
            let key = search_key(&base, scope, &q, resource_type);
            (q, key, pairs)
        }
    };
    let (engine, rt_ref, q, id, trace, base) = (&engine, &rt, &q, &id, &trace, &base);
    let pairs = &pairs;
    let load = move || async move {
        let path = format!("/fhir/{connector}/{}{resource_type}", scope.prefix());
        let path_and_query = match self_query(pairs) {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let info = request_info(engine, base, &path_and_query, id, trace);
        rt_ref.search(res, q, &info, scope).await
    };
    cached(&rt, &key, &headers, load).await
}

/// The query of a search's `self` link: the caller's parameters that the search reads, in the
/// caller's order, encoded again. A parameter the search ignores (`_format`: every answer is
/// JSON) is left out: the key does not hold it, so a cached answer would otherwise carry one
/// caller's text in the links served to every caller of that entry.
fn self_query(pairs: &[(String, String)]) -> Option<String> {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (k, v) in pairs
        .iter()
        .filter(|(k, _)| k != crate::model::search_params::IGNORED)
    {
        q.append_pair(k, v);
        any = true;
    }
    any.then(|| q.finish())
}

/// The cache key of a search: the base the caller reached, the scope, the search.
fn search_key(base: &str, scope: &Scope, q: &SearchQuery, resource_type: &str) -> String {
    format!("{base} {}{}", scope.prefix(), q.key(resource_type))
}

/// A search of every source parsed, and its cache key, by `cached_search` for a request it
/// could not answer: left in the request's extensions, so that `search_in` does not parse it
/// again.
#[derive(Clone)]
pub(super) struct Searched {
    q: SearchQuery,
    key: String,
    pairs: Vec<(String, String)>,
}

/// A fresh cached answer to `GET /fhir/{connector}/{Type}?{query}` (every source: the
/// request's path is that), found without the router (`Guard::direct`): the key and the
/// answer `search_in` gives on a hit. `None` for anything else (no cache, nothing fresh, a
/// caller's `no-cache`, parameters refused), which then goes through the router and
/// `search_in`; when the search was parsed, it is left in the request (`Searched`).
pub(super) fn cached_search(engine: &Engine, req: &mut Request) -> Option<Response> {
    let (rt, resource_type) = {
        let mut parts = req.uri().path().strip_prefix("/fhir/")?.split('/');
        let rt = engine.pull(parts.next()?).ok()?;
        (rt, parts.next()?.to_owned())
    };
    let cache = rt.cache.as_ref()?;
    let res = rt.resource(&resource_type).ok()?;
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let q = rt.parse_search(res, &pairs).ok()?;
    let headers = req.headers();
    let key = search_key(&base_of(engine, headers), &Scope::All, &q, &resource_type);
    let fresh = if no_cache(headers) && rt.cache_allows_no_cache() {
        None
    } else {
        cache.fresh(&key)
    };
    match fresh {
        Some(a) => Some(answer(&a, CacheSource::Hit, headers)),
        None => {
            req.extensions_mut().insert(Searched { q, key, pairs });
            None
        }
    }
}

/// The answer to a pull request: through the connector's cache when it has one. The key
/// starts with the base URL the caller reached, since the links in a cached body are made
/// from it: one caller's `Host` never shapes another caller's links.
async fn cached<F, Fut>(
    rt: &PullRuntime,
    key: &str,
    headers: &HeaderMap,
    load: F,
) -> Result<Response, Problem>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Answer, Problem>> + Send,
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

async fn read_in(
    call: Call,
    connector: &str,
    scope: &Scope,
    resource_type: &str,
    rid: &str,
) -> Result<Response, Problem> {
    let Call {
        engine,
        id,
        trace,
        headers,
        ..
    } = call;
    let rt = engine.pull(connector)?.clone();
    let res = rt.resource(resource_type)?;
    if !crate::model::fhir::is_id(rid) {
        return Err(Problem::invalid(format!("`{rid}` is not a FHIR id")));
    }
    let base = base_of(&engine, &headers);
    let key = format!("{base} {}read|{resource_type}|{rid}", scope.prefix());
    let (engine, rt_ref, id, trace, base) = (&engine, &rt, &id, &trace, &base);
    let load = move || async move {
        let path = format!("/fhir/{connector}/{}{resource_type}/{rid}", scope.prefix());
        let info = request_info(engine, base, &path, id, trace);
        rt_ref.read(res, rid, &info, scope).await
    };
    cached(&rt, &key, &headers, load).await
}

/// `POST /fhir/{connector}`: a batch to every source.
pub(super) async fn batch(
    call: Call,
    Path(connector): Path<String>,
    body: Body,
) -> Result<Response, Problem> {
    batch_in(call, &connector, &Scope::All, body).await
}

/// `POST /fhir/{connector}/{version}`: a batch to the sources of one FHIR version.
pub(super) async fn version_batch(
    call: Call,
    Path((connector, version)): Path<(String, String)>,
    body: Body,
) -> Result<Response, Problem> {
    if !is_version_name(&version) {
        return Err(Problem::new(
            ProblemKind::NotSupported,
            format!("`POST /fhir/{connector}/{version}` is not a FHIR interaction here"),
        ));
    }
    batch_in(call, &connector, &Scope::Version(version), body).await
}

async fn batch_in(
    call: Call,
    connector: &str,
    scope: &Scope,
    body: Body,
) -> Result<Response, Problem> {
    let Call {
        engine,
        id,
        trace,
        headers,
        ..
    } = call;
    let rt = engine.pull(connector)?.clone();
    let bytes = axum::body::to_bytes(body, engine.limits.body)
        .await
        .map_err(|_| {
            Problem::new(
                ProblemKind::TooLarge,
                format!("the body is larger than {} bytes", engine.limits.body),
            )
        })?;
    let bundle: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Problem::invalid(format!("the body is not JSON: {e}")))?;
    let path = format!("/fhir/{connector}/{}", scope.prefix());
    let info = request_info(
        &engine,
        &base_of(&engine, &headers),
        path.trim_end_matches('/'),
        &id,
        &trace,
    );
    let out = rt.batch(&bundle, &info, scope).await?;
    Ok(fhir_response(StatusCode::OK, &out))
}
