//! The engine's router as the end-to-end tests call it: in-process, through
//! `tower::ServiceExt::oneshot`, with no socket (the app is a function of the engine). Each
//! request reaches the router as a server hands it over: its target in origin form, the
//! authority of the URL as its `Host` header, the headers an HTTP client adds (`accept`,
//! `content-length`), and it runs in a task of its own, as a connection would; the answer is
//! read whole into a `Got`, as `local_http::send` reads a server's. Stand-in upstreams stay
//! real servers on 127.0.0.1; the tests of the `engine` binary use `serve_process`. Used by
//! most of the suite's subjects.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, header};
use engine::http::router;
use engine::model::Model;
use engine::runtime::engine::{Engine, Limits};
use tower::ServiceExt;

use crate::engine_under_test::dirs_in;
use crate::local_http::Got;

/// The default limits, but with the admin API open to every caller (`--admin-open`): for the
/// tests of what the admin routes do, not of who may call them (that is `admin_auth`).
pub fn open_admin() -> Limits {
    Limits {
        admin: engine::runtime::admin_access::AdminAccess::open(),
        ..Limits::default()
    }
}

/// The engine of the definitions `yaml` with its admin API open, its router, and its two
/// directories (the definitions', and the state), kept for as long as the test holds them; a
/// request fails the test when it takes longer than `timeout`.
pub fn open_engine(
    yaml: &str,
    timeout: Duration,
) -> (EngineRouter, tempfile::TempDir, tempfile::TempDir) {
    let defs = crate::engine_under_test::definitions(yaml);
    let state = tempfile::tempdir().expect("a state directory");
    let served = EngineRouter::with_limits(
        crate::engine_under_test::load(defs.path()),
        state.path(),
        open_admin(),
        timeout,
    );
    (served, defs, state)
}

/// The engine of the definitions `yaml` with `limits`, called in-process, and the directory
/// that holds the definitions and, beside them, the engine's state; a request fails the test
/// when it takes longer than `timeout`.
pub fn engine_with(
    yaml: &str,
    limits: Limits,
    timeout: Duration,
) -> (EngineRouter, tempfile::TempDir) {
    let defs = crate::engine_under_test::definitions(yaml);
    let engine = EngineRouter::with_limits(
        crate::engine_under_test::load(defs.path()),
        &defs.path().join("state"),
        limits,
        timeout,
    );
    (engine, defs)
}

/// The engine of a model and its router.
pub struct EngineRouter {
    /// The base of the URLs the tests write: `http://engine.test` (its host reaches the
    /// router as `Host`, from which the engine writes its links).
    pub base: String,
    pub engine: Arc<Engine>,
    router: axum::Router,
    /// Longest one request may take before the test fails.
    timeout: Duration,
}

impl EngineRouter {
    /// The engine of `model`, with the default limits and its directories in `state`; a
    /// request fails the test when it takes longer than `timeout`.
    pub fn new(model: Model, state: &Path, timeout: Duration) -> EngineRouter {
        EngineRouter::with_limits(model, state, Limits::default(), timeout)
    }

    /// The router of an engine already built (a reload's, made `with_previous`).
    pub fn of(engine: Arc<Engine>, timeout: Duration) -> EngineRouter {
        EngineRouter {
            base: "http://engine.test".to_owned(),
            router: router(engine.clone()),
            engine,
            timeout,
        }
    }

    /// The engine of `model`, with `limits` and its directories in `state`.
    pub fn with_limits(
        model: Model,
        state: &Path,
        limits: Limits,
        timeout: Duration,
    ) -> EngineRouter {
        let engine = Engine::new(Arc::new(model), limits, &dirs_in(state)).expect("an engine");
        EngineRouter {
            base: "http://engine.test".to_owned(),
            router: router(engine.clone()),
            engine,
            timeout,
        }
    }

    pub fn get(&self, url: impl AsRef<str>) -> RouterCall {
        self.call(Method::GET, url.as_ref())
    }

    pub fn post(&self, url: impl AsRef<str>) -> RouterCall {
        self.call(Method::POST, url.as_ref())
    }

    pub fn delete(&self, url: impl AsRef<str>) -> RouterCall {
        self.call(Method::DELETE, url.as_ref())
    }

    /// A request to `url` (absolute, or a path of `base`), read as an HTTP client reads it
    /// (the `url` crate's parsing: dot segments resolved, characters encoded).
    fn call(&self, method: Method, url: &str) -> RouterCall {
        let absolute = if url.starts_with('/') {
            format!("{}{url}", self.base)
        } else {
            url.to_owned()
        };
        let u = url::Url::parse(&absolute).unwrap_or_else(|e| panic!("{absolute}: {e}"));
        let target = match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        };
        let host = match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => panic!("{absolute}: no host"),
        };
        self.request(method, &target, &host)
    }

    /// A request whose target is given as it goes on the wire, untouched (`.` and `..`
    /// segments included, which an HTTP client would resolve).
    pub fn raw(&self, method: Method, target: &str) -> RouterCall {
        let host = self.base.trim_start_matches("http://").to_owned();
        self.request(method, target, &host)
    }

    fn request(&self, method: Method, target: &str, host: &str) -> RouterCall {
        RouterCall {
            router: self.router.clone(),
            timeout: self.timeout,
            request: Request::builder()
                .method(method)
                .uri(target)
                .header(header::HOST, host)
                .header(header::ACCEPT, "*/*"),
            body: None,
        }
    }
}

/// One request to the router, built as with an HTTP client, then sent.
pub struct RouterCall {
    router: axum::Router,
    timeout: Duration,
    request: axum::http::request::Builder,
    body: Option<Vec<u8>>,
}

impl RouterCall {
    pub fn header(mut self, name: &str, value: impl AsRef<str>) -> RouterCall {
        self.request = self.request.header(name, value.as_ref());
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> RouterCall {
        self.body = Some(body.into());
        self
    }

    /// Sends it and reads the answer whole; fails the test when there is none within the
    /// router's timeout.
    pub async fn send(self) -> Got {
        let RouterCall {
            router,
            timeout,
            mut request,
            body,
        } = self;
        if let Some(body) = &body {
            request = request.header(header::CONTENT_LENGTH, body.len());
        }
        let request = request
            .body(Body::from(body.unwrap_or_default()))
            .expect("a valid request");
        let mut task = tokio::spawn(async move {
            let answer = router.oneshot(request).await.expect("an answer");
            let (parts, body) = answer.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX)
                .await
                .expect("a whole body");
            (parts, body)
        });
        let (parts, body) = match tokio::time::timeout(timeout, &mut task).await {
            Ok(done) => done.expect("the request's task"),
            Err(_) => {
                task.abort();
                panic!("the engine did not answer within {timeout:?}")
            }
        };
        Got {
            status: parts.status.as_u16(),
            headers: parts.headers,
            text: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}
