//! A hostile source (and sink) on 127.0.0.1: an axum app whose paths each misbehave in one way
//! (redirects to another origin, to `file:`, within its origin, in a loop; a 404 with its own message; an
//! error inside a 200; a 429 storm with `Retry-After: 30`; a `Content-Length` that lies (short
//! or long); a body
//! cut mid-way; a body dripped a byte at a time; malformed JSON; a huge answer), and records
//! every request it receives with its headers, so that a test can see what reached it. A
//! second instance stands for "another origin". Used by `hostile`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures_util::stream;
use serde_json::json;

use crate::local_http::{bind, spawn_app};

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Path and query, as sent.
    pub target: String,
    pub headers: HeaderMap,
}

#[derive(Default)]
struct Hostile {
    seen: Mutex<Vec<Seen>>,
    /// Where `/redirect/elsewhere` and `/sink/elsewhere` send the client.
    elsewhere: Mutex<String>,
    storm_calls: AtomicUsize,
}

/// The hostile stand-in: its URL and what it received.
#[derive(Clone)]
pub struct HostileSource {
    pub url: String,
    state: Arc<Hostile>,
}

impl HostileSource {
    pub async fn start() -> HostileSource {
        let (listener, url) = bind().await;
        let state = Arc::new(Hostile::default());
        let app = axum::Router::new()
            .route("/records", any(records))
            .route("/redirect/elsewhere", any(redirect_elsewhere))
            .route("/redirect/same", any(redirect_same))
            .route("/redirect/file", any(redirect_file))
            .route("/redirect/loop", any(redirect_loop))
            .route("/sink/elsewhere", any(sink_elsewhere))
            .route("/sink", any(sink_answer))
            .route("/error-in-200", any(error_in_200))
            .route("/storm", any(storm))
            .route("/lying-length", any(lying_length))
            .route("/overlong", any(overlong))
            .route("/cut", any(cut))
            .route("/drip", any(drip))
            .route("/malformed", any(malformed))
            .route("/huge/{mib}", any(huge))
            .fallback(not_found)
            .layer(axum::middleware::from_fn_with_state(state.clone(), record))
            .with_state(state.clone());
        spawn_app(listener, app);
        HostileSource { url, state }
    }

    /// Sends `/redirect/elsewhere` and `/sink/elsewhere` to `url` (another origin).
    pub fn redirect_to(&self, url: &str) {
        *self.state.elsewhere.lock().expect("redirect target") = url.to_owned();
    }

    /// Every request received, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("request log").clone()
    }

    /// Requests received at `/storm`.
    pub fn storm_calls(&self) -> usize {
        self.state.storm_calls.load(Ordering::SeqCst)
    }
}

async fn record(
    State(s): State<Arc<Hostile>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(String::new, |p| p.as_str().to_owned());
    s.seen.lock().expect("request log").push(Seen {
        target,
        headers: req.headers().clone(),
    });
    next.run(req).await
}

fn json_answer(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn redirect(status: StatusCode, location: &str) -> Response {
    (status, [(header::LOCATION, location.to_owned())]).into_response()
}

async fn records() -> Response {
    json_answer(
        StatusCode::OK,
        json!({"results": [{"id": "r1", "name": "from the source"}]}),
    )
}

async fn redirect_elsewhere(State(s): State<Arc<Hostile>>) -> Response {
    let to = s.elsewhere.lock().expect("redirect target").clone();
    redirect(StatusCode::FOUND, &format!("{to}/records?stolen=1"))
}

async fn redirect_same() -> Response {
    redirect(StatusCode::FOUND, "/records")
}

async fn redirect_file() -> Response {
    redirect(StatusCode::FOUND, "file:///etc/passwd")
}

async fn redirect_loop() -> Response {
    redirect(StatusCode::FOUND, "/redirect/loop")
}

async fn sink_elsewhere(State(s): State<Arc<Hostile>>) -> Response {
    let to = s.elsewhere.lock().expect("redirect target").clone();
    redirect(StatusCode::TEMPORARY_REDIRECT, &format!("{to}/sink"))
}

/// A batch-response with one `201` entry per entry of the posted Bundle.
async fn sink_answer(body: Bytes) -> Response {
    let bundle: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let n = bundle["entry"].as_array().map_or(0, Vec::len);
    let entries: Vec<_> = (0..n)
        .map(|_| json!({"response": {"status": "201 Created"}}))
        .collect();
    json_answer(
        StatusCode::OK,
        json!({"resourceType": "Bundle", "type": "transaction-response", "entry": entries}),
    )
}

async fn not_found(req: Request) -> Response {
    json_answer(
        StatusCode::NOT_FOUND,
        json!({"message": format!("no endpoint {}", req.uri().path())}),
    )
}

async fn error_in_200() -> Response {
    json_answer(
        StatusCode::OK,
        json!({"status": "error", "error": "daily quota exceeded", "results": []}),
    )
}

async fn storm(State(s): State<Arc<Hostile>>) -> Response {
    s.storm_calls.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::TOO_MANY_REQUESTS,
        [
            (header::RETRY_AFTER, "30"),
            (header::CONTENT_TYPE, "application/json"),
        ],
        r#"{"message":"slow down"}"#,
    )
        .into_response()
}

/// The stream of `first`, then (after a pause, so that the head and `first` are on the wire)
/// the end of the body, or `error` when given.
fn then_end(first: Bytes, error: Option<std::io::Error>) -> Body {
    let items = stream::unfold(
        (Some(first), error, false),
        |(first, error, paused)| async move {
            if let Some(b) = first {
                return Some((Ok(b), (None, error, false)));
            }
            if !paused {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            error.map(|e| (Err(e), (None, None, true)))
        },
    );
    Body::from_stream(items)
}

/// Announces 5000 bytes, sends 100 and ends.
async fn lying_length() -> Response {
    let part = Bytes::from(format!("{{\"results\": [{}", " ".repeat(86)));
    let body = then_end(part, None);
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CONTENT_LENGTH, "5000"),
        ],
        body,
    )
        .into_response()
}

/// Announces 10 bytes and sends a whole answer (the client reads what was announced).
async fn overlong() -> Response {
    let whole = Bytes::from(json!({"results": [{"id": "r1"}]}).to_string());
    let body = then_end(whole, None);
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CONTENT_LENGTH, "10"),
        ],
        body,
    )
        .into_response()
}

/// A chunked body that breaks off after its first chunk.
async fn cut() -> Response {
    let body = then_end(
        Bytes::from_static(b"{\"results\": [{\"id\": \"r1\"},"),
        Some(std::io::Error::other("the source died")),
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// A body dripped one byte every 200 ms, for minutes.
async fn drip() -> Response {
    let body = Body::from_stream(stream::unfold(0u32, |n| async move {
        if n > 1000 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        Some((Ok::<_, Infallible>(Bytes::from_static(b" ")), n + 1))
    }));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn malformed() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"results": [{"id": "r1"},"#,
    )
        .into_response()
}

/// `mib` MiB of JSON whitespace, chunked (no `Content-Length` to refuse it by).
async fn huge(Path(mib): Path<usize>) -> Response {
    let chunk = Bytes::from(vec![b' '; 1 << 20]);
    let body = Body::from_stream(stream::iter(
        (0..mib).map(move |_| Ok::<_, Infallible>(chunk.clone())),
    ));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}
