//! What every request goes through: an id (from `X-Request-Id`, or made here), limits on the
//! target's length and the headers' size, a time limit answered 504, every error answer made
//! an `OperationOutcome` (also those of axum's own rejections and its 405), metrics by
//! configured route, and one log line; and the answer to a path no route takes.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::outcome::{FHIR_JSON, fhir_response};
use crate::runtime::engine::Engine;
use crate::runtime::problem::{Problem, ProblemKind};

/// The request id of a request (from `X-Request-Id`, or made here).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Every request: an id, a header size limit, a time limit answered 504, metrics and a log line.
pub(super) async fn guard(
    State(engine): State<Arc<Engine>>,
    mut req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let (connector, route) = route_of(req.uri().path(), &engine);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    req.extensions_mut().insert(RequestId(id.clone()));
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let mut resp = if target > engine.limits.uri {
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
        match tokio::time::timeout(engine.limits.timeout, next.run(req)).await {
            Ok(r) if r.status().as_u16() >= 400 && !is_json(&r) => {
                as_outcome(r, &method, &path).await
            }
            Ok(r) => r,
            Err(_) => Problem::new(
                ProblemKind::Timeout,
                format!("no answer within {} s", engine.limits.timeout.as_secs_f64()),
            )
            .into_response(),
        }
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    engine
        .metrics
        .request(&connector, route, status, start.elapsed());
    tracing::info!(request_id = %id, %method, %path, status, ms = start.elapsed().as_secs_f64() * 1000.0, "request");
    resp
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

/// The connector and route name of a path, for metrics labels. Bounded: a connector label
/// only for a configured connector, and paths of no known route are `other`, so callers
/// cannot make new series.
fn route_of(path: &str, engine: &Engine) -> (String, &'static str) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let pull = |c: &str, route| {
        if engine.pulls.contains_key(c) {
            (c.to_owned(), route)
        } else {
            (String::new(), "other")
        }
    };
    match parts.as_slice() {
        ["fhir", c] => pull(c, "batch"),
        ["fhir", c, _] => pull(c, "search"),
        ["fhir", c, _, _] => pull(c, "read"),
        ["healthz"] => (String::new(), "healthz"),
        ["readyz"] => (String::new(), "readyz"),
        ["metrics"] => (String::new(), "metrics"),
        ["reload"] => (String::new(), "admin"),
        ["connectors", ..] => (String::new(), "admin"),
        ["push", c] if engine.pushes.contains_key(*c) => ((*c).to_owned(), "push"),
        _ => (String::new(), "other"),
    }
}

pub(super) async fn not_found(req: Request) -> Response {
    Problem::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
    .into_response()
}
