//! `engine serve`: binds the listener, serves the router, runs cron schedules and push queue
//! drainers, and shuts down gracefully on SIGTERM or SIGINT (in-flight requests finish, for
//! at most the grace period).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::http::{Engine, router};

/// Serves until a shutdown signal; the error says why it could not start.
pub async fn serve(
    engine: Arc<Engine>,
    listen: &str,
    grace: Duration,
    run_schedules: bool,
) -> Result<(), String> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| format!("`{listen}` is not an address such as 0.0.0.0:8080"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(address = %local, connectors = engine.model.connectors.len(), "serving");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    if run_schedules {
        for job in engine.crons.values() {
            tokio::spawn(job.clone().schedule(stopped.clone()));
        }
    }
    for ep in engine.pushes.values() {
        tokio::spawn(ep.clone().drain(stopped.clone()));
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, router(engine.clone())).with_graceful_shutdown(async move {
        shutdown_signal().await;
        let _ = tx.send(true);
    });
    let mut signalled = rx.clone();
    let deadline = async move {
        let _ = signalled.wait_for(|s| *s).await;
        tracing::info!(
            grace_seconds = grace.as_secs_f64(),
            "shutting down: finishing requests in flight"
        );
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        r = server => r.map_err(|e| format!("server: {e}"))?,
        () = deadline => tracing::warn!("grace period over: requests still in flight are dropped"),
    }
    let _ = stop.send(true);
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
