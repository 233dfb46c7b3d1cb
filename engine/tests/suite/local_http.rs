//! Servers and clients on 127.0.0.1, as the end-to-end tests use them: a listener on a free
//! port with its URL, a small axum app served in a task, a URL where nothing listens, and the
//! tests' HTTP client with the answers it gets (`Got`, from `send`).
//!
//! No port is taken and given back for someone else to bind later (another test of the same
//! run could take it meanwhile): a server binds port 0 and is asked its address, and the URL
//! where nothing listens keeps its port bound.
//! Used by nearly every subject of the suite, and by `benches/bulk.rs`.

use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

/// A listener on a free port of 127.0.0.1, and its URL.
pub async fn bind() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind on 127.0.0.1");
    let addr = listener.local_addr().expect("a local address");
    (listener, format!("http://{addr}"))
}

/// Serves `app` on `listener` in a spawned task.
pub fn spawn_app(listener: TcpListener, app: axum::Router) -> JoinHandle<()> {
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

/// A URL of 127.0.0.1 where nothing listens: connections are refused for as long as it is
/// kept, since its port stays bound (without listening, and without `SO_REUSEADDR`, so no
/// server can bind it meanwhile).
pub struct DeadUrl {
    url: String,
    _port: TcpSocket,
}

impl std::ops::Deref for DeadUrl {
    type Target = str;

    fn deref(&self) -> &str {
        &self.url
    }
}

impl std::fmt::Display for DeadUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// A URL where nothing listens (connection refused), until it is dropped.
pub fn dead_url() -> DeadUrl {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(([127, 0, 0, 1], 0).into())
        .expect("bind on 127.0.0.1");
    let addr = socket.local_addr().expect("a local address");
    DeadUrl {
        url: format!("http://{addr}"),
        _port: socket,
    }
}

/// An HTTP client whose every request fails after `timeout`.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("an HTTP client")
}

/// An answer of a server.
#[derive(Debug, Clone)]
pub struct Got {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Got {
    /// The body as JSON; fails the test when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text))
    }

    /// A header's value (empty when it is absent or not text).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends a request and reads its answer whole; fails the test when there is none.
pub async fn send(req: reqwest::RequestBuilder) -> Got {
    let resp = req.send().await.expect("an answer");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("a body");
    Got {
        status,
        headers,
        text,
    }
}

/// Checks that an answer is an `OperationOutcome` with this status whose diagnostics hold
/// every one of `words`.
pub fn assert_outcome(got: &Got, status: u16, words: &[&str]) {
    assert_eq!(got.status, status, "{}", got.text);
    assert_eq!(
        got.header("content-type"),
        "application/fhir+json",
        "{got:?}"
    );
    let body = got.json();
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    let diagnostics = body["issue"][0]["diagnostics"].as_str();
    assert!(diagnostics.is_some(), "{body}");
    let diagnostics = diagnostics.unwrap_or_default();
    for w in words {
        assert!(
            diagnostics.contains(w),
            "diagnostics {diagnostics:?} should mention {w:?}"
        );
    }
}
