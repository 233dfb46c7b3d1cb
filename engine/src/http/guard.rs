//! What every request goes through: an id (from `X-Request-Id`, or made here), a W3C trace
//! (from `traceparent`, or started here), limits on the
//! target's length and the headers' size, a time limit answered 504, every error answer made
//! an `OperationOutcome` (also those of axum's own rejections and its 405), metrics by
//! configured route, and one log line; and the answer to a path no route takes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::outcome::{FHIR_JSON, fhir_response};
use crate::runtime::engine::Engine;
use crate::runtime::metrics::RouteMetrics;
use crate::runtime::problem::{Problem, ProblemKind};
use crate::runtime::trace_context::{Trace, TraceId};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request id of a request (from `X-Request-Id`, or made here), kept as the header value
/// it is sent back as, its W3C trace (from `traceparent`, or started here), and the end of
/// its time limit (when the guard answers 504): one request extension, so that the trace
/// costs the hit path no allocation of its own.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue, pub Trace, pub Instant);

impl RequestId {
    /// The id as text (always ASCII: a caller's id is taken only when it is printable ASCII).
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

/// A caller's `X-Request-Id` when it is usable (1 to 128 printable ASCII characters), else a
/// new id: a random UUID drawn once per process whose last 48 bits count the requests, so
/// that making one costs an atomic increment and a hexadecimal encoding rather than a call to
/// the system's random source and a formatted string.
fn request_id(given: Option<&HeaderValue>) -> HeaderValue {
    if let Some(v) = given.filter(|v| {
        !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(u8::is_ascii_graphic)
    }) {
        return v.clone();
    }
    static BASE: OnceLock<u128> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    const LOW: u128 = (1 << 48) - 1;
    let base = *BASE.get_or_init(|| uuid::Uuid::new_v4().as_u128());
    let n = u128::from(NEXT.fetch_add(1, Ordering::Relaxed)) & LOW;
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::from_u128((base & !LOW) | n)
        .hyphenated()
        .encode_lower(&mut buf);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// A pull search's fresh cached answer, if there is one (`routes::cached_search`, handed to
/// the guard by the router's maker so that the guard does not import the routes, which import
/// it); what it parsed for a request it cannot answer is left in the request for the router.
pub(super) type CachedSearch = fn(&Engine, &mut Request) -> Option<Response>;

/// The per-router state of the guard: the engine, the metrics of every route it can count,
/// resolved when the router is made, and the look-up of a cached search.
pub(super) struct Guard {
    engine: Arc<Engine>,
    cached_search: CachedSearch,
    pulls: HashMap<String, [RouteMetrics; 3]>,
    pushes: HashMap<String, RouteMetrics>,
    healthz: RouteMetrics,
    readyz: RouteMetrics,
    metrics: RouteMetrics,
    admin: RouteMetrics,
    other: RouteMetrics,
}

impl Guard {
    pub(super) fn new(engine: Arc<Engine>, cached_search: CachedSearch) -> Guard {
        let m = &engine.metrics;
        let pulls = engine
            .pulls
            .keys()
            .map(|c| {
                let routes = ["batch", "search", "read"].map(|r| m.route(c, r));
                (c.clone(), routes)
            })
            .collect();
        let pushes = engine
            .pushes
            .keys()
            .map(|c| (c.clone(), m.route(c, "push")))
            .collect();
        Guard {
            cached_search,
            pulls,
            pushes,
            healthz: m.route("", "healthz"),
            readyz: m.route("", "readyz"),
            metrics: m.route("", "metrics"),
            admin: m.route("", "admin"),
            other: m.route("", "other"),
            engine,
        }
    }

    /// The answers made here without the router and its middleware: `GET /healthz` (no
    /// query), the liveness probe, the most frequent request, whose answer never changes; and
    /// a pull search's fresh cached answer (`GET /fhir/{connector}/{Type}?...`, every source:
    /// `CachedSearch`), the hit path, which needs no future, no routing and no time
    /// limit. Each gets what the guard gives every request (its id, its count in the route's
    /// metrics, the log line). `None` for every other request (over a limit, a segment
    /// percent-encoded, anything but a fresh hit), which goes through the router.
    pub(super) fn direct(&self, req: &mut Request) -> Option<Response> {
        let uri = req.uri().clone();
        if req.method() != Method::GET
            || uri.path_and_query().map_or(0, |p| p.as_str().len()) > self.engine.limits.uri
            || header_bytes(req) > self.engine.limits.headers
        {
            return None;
        }
        let start = Instant::now();
        let path = uri.path();
        let (resp, route) = if path == "/healthz" {
            if uri.query().is_some() {
                return None;
            }
            (super::admin::health(), &self.healthz)
        } else {
            let mut parts = path.strip_prefix("/fhir/")?.split('/');
            let (connector, resource_type) = (parts.next()?, parts.next()?);
            if parts.next().is_some() || connector.contains('%') || resource_type.contains('%') {
                return None;
            }
            let routes = self.pulls.get(connector)?;
            ((self.cached_search)(&self.engine, req)?, &routes[1])
        };
        let h = req.headers();
        let id = request_id(h.get(X_REQUEST_ID));
        let trace = Trace::from_caller(
            h.get("traceparent").map(HeaderValue::as_bytes),
            h.get("tracestate"),
        );
        Some(finish(
            resp,
            route,
            start,
            id,
            SpanOf::of(&trace),
            &Method::GET,
            path,
        ))
    }

    /// The metrics of a path's route. Bounded: a connector's series only for a configured
    /// connector, and paths of no known route are `other`, so callers cannot make new series.
    fn route_of(&self, path: &str) -> &RouteMetrics {
        let mut parts = path.strip_prefix('/').unwrap_or(path).split('/');
        let p = [(); 5].map(|()| parts.next());
        let pull = |c: &str, i: usize| self.pulls.get(c).map_or(&self.other, |r| &r[i]);
        match p {
            [Some("fhir"), Some(c), None, ..] => pull(c, 0),
            [Some("fhir"), Some(c), Some(_), None, _] => pull(c, 1),
            [Some("fhir"), Some(c), Some(_), Some(_), None] => pull(c, 2),
            [Some("healthz"), None, ..] => &self.healthz,
            [Some("readyz"), None, ..] => &self.readyz,
            [Some("metrics"), None, ..] => &self.metrics,
            [Some("reload"), None, ..] | [Some("connectors"), ..] => &self.admin,
            [Some("push"), Some(c), None, ..] => self.pushes.get(c).unwrap_or(&self.other),
            _ => &self.other,
        }
    }
}

/// Every request: an id, a header size limit, a time limit answered 504, metrics and a log line.
pub(super) async fn guard(State(g): State<Arc<Guard>>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let engine = &g.engine;
    let id = request_id(req.headers().get(X_REQUEST_ID));
    let route = g.route_of(req.uri().path());
    // Both cheap: a standard method is an enum, and a URI shares its bytes.
    let method = req.method().clone();
    let uri = req.uri().clone();
    let header_bytes = header_bytes(&req);
    let h = req.headers();
    let trace = Trace::from_caller(
        h.get("traceparent").map(HeaderValue::as_bytes),
        h.get("tracestate"),
    );
    let span = SpanOf::of(&trace);
    let trace_id = span.trace_id;
    let ends = start + engine.limits.timeout;
    req.extensions_mut()
        .insert(RequestId(id.clone(), trace, ends));
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len());
    let resp = if target > engine.limits.uri {
        Problem::new(
            ProblemKind::UriTooLong,
            format!(
                "the request target is too long (at most {} bytes)",
                engine.limits.uri
            ),
        )
        .into_response()
    } else if header_bytes > engine.limits.headers {
        Problem::new(
            ProblemKind::HeadersTooLarge,
            format!(
                "the request headers are too large (at most {} bytes)",
                engine.limits.headers
            ),
        )
        .into_response()
    } else {
        // Every log line of the request carries its trace id (`log_trace`: a thread-local
        // set around each poll, read only when a line is written; no span per request).
        let answered = tokio::time::timeout_at(ends, next.run(req));
        match crate::runtime::log_trace::with_trace(trace_id, answered).await {
            Ok(r) if r.status().as_u16() >= 400 && !is_json(&r) => {
                as_outcome(r, &method, uri.path()).await
            }
            Ok(r) => r,
            Err(_) => Problem::new(
                ProblemKind::Timeout,
                format!("no answer within {} s", engine.limits.timeout.as_secs_f64()),
            )
            .into_response(),
        }
    };
    finish(resp, route, start, id, span, &method, uri.path())
}

/// The size of a request's headers as the limit counts it (names, values, `: ` and CRLF).
fn header_bytes(req: &Request) -> usize {
    req.headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum()
}

/// What a request's exported span needs: its trace, its own span id and the caller's, and when
/// it began (only when OTLP export is on).
struct SpanOf {
    trace_id: TraceId,
    span_id: u64,
    parent: Option<u64>,
    began: Option<std::time::SystemTime>,
}

impl SpanOf {
    fn of(trace: &Trace) -> SpanOf {
        SpanOf {
            trace_id: trace.id(),
            span_id: trace.span_id,
            parent: trace.parent_span,
            began: crate::runtime::otlp::enabled().then(std::time::SystemTime::now),
        }
    }
}

/// The end of every request: counted in its route's metrics, logged, its id sent back.
fn finish(
    mut resp: Response,
    route: &RouteMetrics,
    start: Instant,
    id: HeaderValue,
    span: SpanOf,
    method: &Method,
    path: &str,
) -> Response {
    let status = resp.status().as_u16();
    let took = start.elapsed();
    route.request(status, took);
    if let Some(began) = span.began {
        let (connector, kind) = route.names();
        server_span(
            (span.trace_id.0, span.span_id, span.parent),
            (method, kind, connector),
            status,
            (began, began + took),
        );
    }
    let trace_id = span.trace_id;
    tracing::info!(request_id = id.to_str().unwrap_or_default(), trace_id = %trace_id, %method, path, status, ms = took.as_secs_f64() * 1000.0, "request");
    resp.headers_mut().insert(X_REQUEST_ID, id);
    resp
}

/// The exported span of an inbound request: its route (the kind, and the connector), method
/// and status; an error when answered 5xx.
fn server_span(
    (trace_id, span_id, parent): (u128, u64, Option<u64>),
    (method, route, connector): (&Method, &'static str, &str),
    status: u16,
    (start, end): (std::time::SystemTime, std::time::SystemTime),
) {
    use crate::runtime::otlp::{Attr, Kind, Span, record};
    let mut attributes = vec![
        ("http.request.method", Attr::Str(method.as_str().to_owned())),
        ("http.route", Attr::Str(route.to_owned())),
        ("http.response.status_code", Attr::Int(i64::from(status))),
    ];
    if !connector.is_empty() {
        attributes.push(("fosps.connector", Attr::Str(connector.to_owned())));
    }
    record(Span {
        trace_id,
        span_id,
        parent,
        name: format!("{method} {route}"),
        kind: Kind::Server,
        start,
        end,
        attributes,
        error: status >= 500,
    });
}

/// True when an answer is JSON: an `OperationOutcome`, or an operations endpoint's own
/// document (`/readyz` not ready). Other error answers (empty, or axum's plain text) are not.
fn is_json(r: &Response) -> bool {
    r.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.starts_with(FHIR_JSON.as_bytes()) || v.starts_with(b"application/json")
    })
}

/// An error answer of another layer (axum's rejections, its 405) as an `OperationOutcome`
/// with the same status and headers, its text kept as the diagnostics.
async fn as_outcome(r: Response, method: &Method, path: &str) -> Response {
    let (mut parts, body) = r.into_parts();
    let status = parts.status;
    let text = axum::body::to_bytes(body, 2048)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    let text = text.trim();
    let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
    let diagnostics = match (status, parts.headers.get(header::ALLOW)) {
        (StatusCode::METHOD_NOT_ALLOWED, Some(allow)) => format!(
            "{method} is not allowed on {path}; allowed: {}",
            allow.to_str().unwrap_or("?")
        ),
        (StatusCode::METHOD_NOT_ALLOWED, None) => format!("{method} is not allowed on {path}"),
        _ if text.is_empty() => reason,
        _ => format!("{reason}: {text}"),
    };
    let kind = ProblemKind::of_status(status.as_u16());
    let mut answer = fhir_response(
        status,
        &crate::model::fhir::outcome("error", kind.code(), &diagnostics),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    for (k, v) in &parts.headers {
        answer.headers_mut().append(k, v.clone());
    }
    answer
}

pub(super) async fn not_found(req: Request) -> Response {
    Problem::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
    .into_response()
}
