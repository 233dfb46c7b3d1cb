//! The HTTP surface of `engine serve`: pull routes under `/fhir/{connector}`, the admin API
//! under `/connectors` and the status page under `/ui/` (both behind `auth`), and operations
//! (`/healthz`, `/readyz`, `/metrics`).
//! `router` is a function of the engine's state, so tests drive it without a socket.

mod admin;
mod auth;
mod guard;
mod listener;
pub mod outcome;
mod routes;
pub mod server;
mod ui;

use std::sync::Arc;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::middleware;
use axum::routing::{delete, get, post};
use axum::{Extension, Router};

use crate::runtime::engine::Engine;
use admin::{
    dead_letter, dead_letters, delete_dead_letter, healthz, invalidate, list, metrics, openapi,
    readyz, reload_status, replay_dead_letter, run_now, show,
};
use guard::{Guard, RequestId, not_found};
use routes::{batch, push, scoped_read, search, search_or_read, version_batch};

/// The application.
pub fn router(engine: Arc<Engine>) -> Router {
    app(engine).0
}

/// The application and its guard, whose direct answers (`Guard::direct`) `engine serve`
/// gives before the router.
fn app(engine: Arc<Engine>) -> (Router, Arc<Guard>) {
    let guard = Arc::new(Guard::new(engine.clone()));
    let mut app = Router::new();
    for ep in engine.pushes.values() {
        let ep = ep.clone();
        let path = ep.path().to_owned();
        app = app.route(
            &path,
            post(
                move |id: Option<Extension<RequestId>>, headers: HeaderMap, body: Body| {
                    push(ep, id.map(|Extension(i)| i), headers, body)
                },
            ),
        );
    }
    // The admin API: its callers are checked (`auth`) before any handler runs.
    let admin = Router::new()
        .route("/connectors/{name}/run", post(run_now))
        .route("/connectors/{name}/dead-letters", get(dead_letters))
        .route(
            "/connectors/{name}/dead-letters/{id}",
            get(dead_letter).delete(delete_dead_letter),
        )
        .route(
            "/connectors/{name}/dead-letters/{id}/replay",
            post(replay_dead_letter),
        )
        .route("/reload", get(reload_status))
        .route("/connectors", get(list))
        .route("/connectors/list", get(list))
        .route("/connectors/{name}", get(show))
        .route("/connectors/{name}/cache", delete(invalidate))
        .merge(ui::routes())
        .route_layer(middleware::from_fn_with_state(engine.clone(), auth::admin));
    let app = app
        .merge(admin)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/fhir/{connector}", post(batch))
        .route(
            "/fhir/{connector}/{resource_type}",
            get(search).post(version_batch),
        )
        .route(
            "/fhir/{connector}/{resource_type}/{id}",
            get(search_or_read),
        )
        .route(
            "/fhir/{connector}/{scope}/{resource_type}/{id}",
            get(scoped_read),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(guard.clone(), guard::guard))
        .with_state(engine);
    (app, guard)
}
