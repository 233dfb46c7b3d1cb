//! `engine serve`: binds the listener, serves the current engine's router, runs cron schedules
//! and push queue drainers, reloads the definitions when their files change (a mounted
//! ConfigMap's `..data` swap included), when a file they compiled in changes (a table file, a
//! `${file:...}` secret), or on SIGHUP, and shuts down gracefully on SIGTERM or
//! SIGINT: no new run, drain or reload starts, and the requests, runs and queue drains in
//! flight finish, for at most the grace period. Every task is spawned on the engine's task
//! tracker, so the shutdown knows what it waits for.
//!
//! A reload validates the new set first: an invalid set is refused (its diagnostics are logged
//! and shown by `/readyz` and `/reload`) and the old set keeps serving. A valid set replaces
//! the old one atomically: requests in flight finish on the old router, and connectors whose
//! definitions did not change keep their caches, queues and schedules.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::IntoResponse;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::http::app;
use crate::http::guard::Guard;
use crate::model::Model;
use crate::model::digest::content_digest;
use crate::runtime::engine::{Dirs, Engine};

/// Loads and validates the definitions again: the model, or the diagnostics as text.
pub type Loader = Arc<dyn Fn() -> Result<Model, String> + Send + Sync>;

/// How to reload the definitions.
pub struct Reload {
    pub paths: Vec<PathBuf>,
    pub load: Loader,
    pub dirs: Dirs,
    /// How often the files are compared with the served set.
    pub poll: Duration,
    /// The digest (`definitions_digest`) of the files taken before the served set was read
    /// from them, so that a change made meanwhile is not missed.
    pub served: String,
}

/// The background tasks of cron and push connectors, by connector, with the fingerprint of
/// the definition they run. When a push connector's definition changes, its old drainer is
/// told to stop and the new one is started at once: the new one waits for the queue's drain
/// lock (shared through `Engine::with_previous`), so it starts writing only once the old one
/// has finished its payload in flight.
struct Tasks {
    run_schedules: bool,
    running: HashMap<String, (String, watch::Sender<bool>)>,
    /// Set by the shutdown: no task starts any more.
    stopped: bool,
}

impl Tasks {
    /// Starts the tasks of new or changed connectors and stops those of changed or removed
    /// ones; unchanged ones go on. The tasks are spawned on the engine's tracker.
    fn sync(&mut self, engine: &Engine) {
        if self.stopped {
            return;
        }
        let mut wanted: HashMap<String, String> = HashMap::new();
        for c in &engine.model.connectors {
            let runs = (self.run_schedules && engine.crons.contains_key(&c.name))
                || engine.pushes.contains_key(&c.name);
            if runs {
                wanted.insert(c.name.clone(), c.fingerprint.clone());
            }
        }
        self.running.retain(|name, (fingerprint, stop)| {
            let keep = wanted.get(name) == Some(fingerprint);
            if !keep {
                let _ = stop.send(true);
            }
            keep
        });
        for (name, fingerprint) in wanted {
            if self.running.contains_key(&name) {
                continue;
            }
            let (stop, stopped) = watch::channel(false);
            if let Some(job) = engine.crons.get(&name) {
                engine
                    .tasks
                    .spawn(job.clone().schedule(stopped, engine.tasks.clone()));
            } else if let Some(ep) = engine.pushes.get(&name) {
                engine.tasks.spawn(ep.clone().drain(stopped));
            }
            self.running.insert(name, (fingerprint, stop));
        }
    }

    fn stop_all(&mut self) {
        self.stopped = true;
        for (_, (_, stop)) in self.running.drain() {
            let _ = stop.send(true);
        }
    }
}

/// The listener of `listen` (`0.0.0.0:8080`); the error says why it cannot be had.
pub async fn bind(listen: &str) -> Result<tokio::net::TcpListener, ServeError> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| ServeError::Address(listen.to_owned()))?;
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(ServeError::Listener)
}

/// How the engine stops on a shutdown signal.
#[derive(Debug, Clone, Copy)]
pub struct Stop {
    /// Time given to requests, runs and drains in flight once the engine stops accepting.
    pub grace: Duration,
    /// Time the engine goes on serving after the signal while `/readyz` says not ready, so
    /// that a load balancer sends new traffic elsewhere first.
    pub delay: Duration,
}

/// Serves on `listener` until `shutdown` (`shutdown_signal` in production) ends, then drains
/// within `stop.grace`; the error says why it could not start.
pub async fn serve(
    engine: Arc<Engine>,
    listener: tokio::net::TcpListener,
    stop_how: Stop,
    run_schedules: bool,
    reload: Option<Reload>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let local = listener.local_addr().map_err(ServeError::Listener)?;
    tracing::info!(address = %local, connectors = engine.model.connectors.len(), "serving");

    let current: Current = Arc::new(RwLock::new((engine.clone(), app(engine.clone()))));
    let tracker = engine.tasks.clone();
    let tasks = Arc::new(Mutex::new(Tasks {
        run_schedules,
        running: HashMap::new(),
        stopped: false,
    }));
    if let Ok(mut t) = tasks.lock() {
        t.sync(&engine);
    }
    let (stop, stopped) = watch::channel(false);
    if let Some(r) = reload {
        tracker.spawn(watch_definitions(
            r,
            current.clone(),
            tasks.clone(),
            stopped.clone(),
        ));
    }

    let serving = current.clone();
    let app = tower::service_fn(move |mut req: Request| {
        // The guard's direct answers (`/healthz`) first, without the router's clone and
        // middleware; every other request through the router.
        let served = match serving.read() {
            Ok(g) => match g.1.1.direct(&mut req) {
                Some(answer) => Ok(answer),
                None => Err(Some(g.1.0.clone())),
            },
            Err(_) => Err(None),
        };
        async move {
            match served {
                Ok(answer) => Ok(answer),
                Err(Some(r)) => r.oneshot(req).await,
                Err(None) => Ok(axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()),
            }
        }
    });

    let readiness = engine.readiness.clone();
    let delay = stop_how.delay;
    let signal = async move {
        shutdown.await;
        readiness.shut_down();
        if !delay.is_zero() {
            tracing::info!(
                delay_seconds = delay.as_secs_f64(),
                "shutdown signal: not ready; serving on before stopping"
            );
            tokio::time::sleep(delay).await;
        }
    };
    let connections = crate::http::listener::accept(listener, app, &engine.limits, signal).await;
    tracing::info!(
        grace_seconds = stop_how.grace.as_secs_f64(),
        "shutting down: no new runs; finishing requests, runs and queue drains in flight"
    );
    let _ = stop.send(true);
    if let Ok(mut t) = tasks.lock() {
        t.stop_all();
    }
    tracker.close();
    let drained = tokio::time::timeout(stop_how.grace, async {
        connections.shutdown().await;
        tracker.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            tasks = tracker.len(),
            "grace period over: requests, runs and drains still going are dropped"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// Why `engine serve` could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address is not an address.
    #[error("`{0}` is not an address such as 0.0.0.0:8080")]
    Address(String),
    /// The address could not be bound, or the listener could not be read.
    #[error("cannot listen: {0}")]
    Listener(#[source] std::io::Error),
}

/// A digest of the definition files as they are now.
pub fn definitions_digest(paths: &[PathBuf]) -> String {
    match crate::config::load::read_all(paths) {
        Ok((files, errors)) => {
            let mut parts: Vec<String> = files
                .iter()
                .map(|f| format!("{}\u{1e}{}", f.path.display(), f.text))
                .collect();
            parts.extend(
                errors
                    .iter()
                    .map(|d| format!("{}\u{1e}{}", d.file.display(), d.message)),
            );
            content_digest(&parts)
        }
        Err(e) => e.to_string(),
    }
}

/// The engine served, its router and the router's guard.
type Current = Arc<RwLock<(Arc<Engine>, (Router, Arc<Guard>))>>;

/// A digest of the files besides the definitions that a model was compiled from, as they are
/// now (`Model::inputs`): a file gone, unreadable, no longer a regular file or over the
/// largest size a definition may have counts as changed.
fn inputs_digest(inputs: &[PathBuf]) -> String {
    let parts: Vec<String> = inputs
        .iter()
        .map(|p| {
            let now =
                crate::config::load::read_regular(p, crate::config::load::MAX_DEFINITION_BYTES)
                    .map(|bytes| content_digest(&[bytes]))
                    .unwrap_or_default();
            format!("{}\u{1e}{now}", p.display())
        })
        .collect();
    content_digest(&parts)
}

/// The digest `inputs_digest` gives while the inputs are as the model read them.
fn inputs_digest_as_read(model: &Model) -> String {
    let parts: Vec<String> = model
        .inputs
        .iter()
        .map(|(p, digest)| format!("{}\u{1e}{digest}", p.display()))
        .collect();
    content_digest(&parts)
}

/// The digest of the definition files and of the served model's other inputs, read on the
/// blocking pool; `None` if that stopped.
async fn digest_of(paths: &[PathBuf], inputs: Vec<PathBuf>) -> Option<String> {
    let paths = paths.to_vec();
    tokio::task::spawn_blocking(move || {
        content_digest(&[definitions_digest(&paths), inputs_digest(&inputs)])
    })
    .await
    .ok()
}

/// Reloads when the files change or SIGHUP arrives, until `stop`. Reading, validating and
/// building the new set run on the blocking pool.
async fn watch_definitions(
    r: Reload,
    current: Current,
    tasks: Arc<Mutex<Tasks>>,
    mut stop: watch::Receiver<bool>,
) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    // The served set as it was read: its definition files and its other inputs.
    let mut last = match current.read() {
        Ok(g) => content_digest(&[r.served.clone(), inputs_digest_as_read(&g.0.model)]),
        Err(_) => return,
    };
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<()>();
        let forced = tokio::select! {
            () = hup => true,
            () = tokio::time::sleep(r.poll) => false,
            _ = stop.wait_for(|s| *s) => return,
        };
        let inputs: Vec<PathBuf> = match current.read() {
            Ok(g) => g.0.model.inputs.keys().cloned().collect(),
            Err(_) => return,
        };
        let Some(now) = digest_of(&r.paths, inputs).await else {
            continue;
        };
        if !forced && now == last {
            continue;
        }
        last = now;
        let old = match current.read() {
            Ok(g) => g.0.clone(),
            Err(_) => return,
        };
        let (load, dirs, previous) = (r.load.clone(), r.dirs.clone(), old.clone());
        let result = tokio::task::spawn_blocking(move || {
            load().and_then(|model| {
                Engine::with_previous(
                    Arc::new(model),
                    previous.limits.clone(),
                    &dirs,
                    Some(&previous),
                )
                .map_err(|e| e.to_string())
            })
        })
        .await
        .unwrap_or_else(|e| Err(format!("the reload stopped: {e}")));
        if *stop.borrow() {
            return;
        }
        match result {
            Ok(new) => {
                if let Ok(mut g) = current.write() {
                    *g = (new.clone(), app(new.clone()));
                }
                if let Ok(mut t) = tasks.lock() {
                    t.sync(&new);
                }
                if let Ok(mut e) = new.reload.error.lock() {
                    *e = None;
                }
                tracing::info!(
                    connectors = new.model.connectors.len(),
                    "definitions reloaded"
                );
            }
            Err(text) => {
                tracing::error!("definitions not reloaded, the old set keeps serving:\n{text}");
                if let Ok(mut e) = old.reload.error.lock() {
                    *e = Some(text);
                }
            }
        }
    }
}

/// SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
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
