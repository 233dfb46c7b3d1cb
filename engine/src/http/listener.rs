//! The accept loop: at most `Limits::connections` connections served at once (more wait in
//! the kernel's backlog), each closed when its request headers do not arrive within
//! `Limits::header_read_timeout` (a slowloris client, or a kept-alive connection left idle),
//! with header buffers bounded; every connection is watched, so a shutdown lets the requests
//! in flight finish and closes idle connections.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::{Service, ServiceExt};

use crate::runtime::engine::Limits;

/// Wait after a failed accept (out of file descriptors, most often) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The connections accepted so far, until they are shut down.
pub struct Connections {
    graceful: GracefulShutdown,
}

impl Connections {
    /// Lets the requests in flight finish, closes idle connections, and waits for all of them.
    pub async fn shutdown(self) {
        self.graceful.shutdown().await;
    }
}

/// Serves `app` on the connections of `listener` until `stop` ends; gives the connections
/// still open, to shut down.
pub async fn accept<S>(
    listener: TcpListener,
    app: S,
    limits: &Limits,
    stop: impl Future<Output = ()>,
) -> Connections
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Above the engine's own limits, so that a request over them reaches the router and
        // is answered with an `OperationOutcome` (414, 431); only what passes this far is cut
        // by hyper with an empty answer.
        .max_buf_size((limits.headers + limits.uri).max(64 << 10) * 4);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.headers * 4).unwrap_or(u32::MAX))
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout);
    let service = TowerToHyperService::new(
        app.map_request(|req: hyper::Request<Incoming>| req.map(Body::new)),
    );
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.connections.max(1)));
    let mut stop = std::pin::pin!(stop);
    loop {
        let slot = tokio::select! {
            biased;
            () = &mut stop => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service.clone())
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
            drop(slot);
        });
    }
    Connections { graceful }
}
