//! The operations and admin handlers: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`,
//! `/reload`, and the `/connectors` API (list, detail, cache delete, run, dead letters).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::model::Strategy;
use crate::runtime::engine::Engine;
use crate::runtime::problem::{Problem, ProblemKind, RETRY_AFTER};

pub(super) async fn openapi(State(engine): State<Arc<Engine>>) -> Response {
    let prefix = engine
        .limits
        .public_url
        .as_deref()
        .and_then(|u| url::Url::parse(u).ok())
        .map(|u| u.path().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    axum::Json(crate::generate::openapi::document(&engine.model, &prefix)).into_response()
}

pub(super) async fn reload_status(State(engine): State<Arc<Engine>>) -> Response {
    axum::Json(engine.reload.json()).into_response()
}

/// The process is alive: a constant answer, made without allocating.
pub(super) async fn healthz() -> Response {
    health()
}

/// The liveness answer (also given by the guard without the router: `Guard::direct`).
pub(super) fn health() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
        .into_response()
}

pub(super) async fn readyz(State(engine): State<Arc<Engine>>) -> Response {
    let found = engine.readiness.check().await;
    let mut body = json!({
        "status": if found.is_ok() { "ready" } else { "not ready" },
        "connectors": engine.model.connectors.len(),
        "reload": engine.reload.summary(),
    });
    if let Err(why) = &found {
        body["reason"] = json!(why.to_string());
    }
    let status = if found.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

pub(super) async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    let caches = engine
        .pulls
        .iter()
        .filter_map(|(name, p)| Some((name.as_str(), p.cache.as_ref()?.stats())));
    let queues = engine
        .pushes
        .iter()
        .map(|(name, ep)| (name.as_str(), ep.depths()));
    let text = engine.metrics.render(caches, queues);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

pub(super) fn summary(engine: &Engine, c: &crate::model::Connector) -> Value {
    let strategy = match &c.strategy {
        Strategy::Pull(_) => "pull",
        Strategy::Push(_) => "push",
        Strategy::Cron(_) => "cron",
    };
    let mut v = json!({
        "name": c.name,
        "description": c.description,
        "strategy": strategy,
        "labels": c.labels,
        "sources": c.sources.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
    });
    if let Strategy::Pull(p) = &c.strategy {
        v["resources"] = p
            .resources
            .iter()
            .map(|r| {
                json!({
                    "type": r.resource_type,
                    "search": r.search.is_some(),
                    "read": r.read.is_some(),
                })
            })
            .collect();
        v["routes"] = json!(format!("/fhir/{}", c.name));
    }
    v["breakers"] = c
        .sources
        .iter()
        .filter_map(|s| {
            let b = engine.metrics.breaker_view(&s.name)?;
            Some(json!({
                "source": s.name,
                "state": b.state.name(),
                "failuresInARow": b.failures,
                "opens": b.opens,
            }))
        })
        .collect();
    if let Some(cache) = engine.pulls.get(&c.name).and_then(|p| p.cache.as_ref()) {
        v["cache"] = serde_json::to_value(cache.stats()).unwrap_or(Value::Null);
    }
    if let Some(job) = engine.crons.get(&c.name) {
        v["run"] = job.status();
    }
    if let Some(ep) = engine.pushes.get(&c.name) {
        let (queued, dead) = ep.depths();
        v["push"] = json!({"path": ep.path(), "queued": queued, "deadLetters": dead});
    }
    v
}

pub(super) async fn run_now(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
) -> Response {
    let Some(job) = engine.crons.get(&name).cloned() else {
        return Problem::not_found(format!("no cron connector `{name}`")).into_response();
    };
    if engine.tasks.is_closed() {
        return Problem::new(
            ProblemKind::Unavailable {
                retry_after: RETRY_AFTER,
            },
            "the engine is shutting down: no new runs start",
        )
        .into_response();
    }
    if job.is_running() {
        return Problem::new(
            ProblemKind::Conflict,
            format!("`{name}` is running already"),
        )
        .into_response();
    }
    // Tracked: a shutdown lets the run finish within its grace period.
    engine.tasks.spawn(async move { job.run_now().await });
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"connector": name, "status": "started"})),
    )
        .into_response()
}

pub(super) async fn dead_letters(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
) -> Response {
    if let Some(ep) = engine.pushes.get(&name) {
        return axum::Json(ep.dead_letters().await).into_response();
    }
    match engine.crons.get(&name) {
        Some(job) => axum::Json(job.runner.dead_letters().await).into_response(),
        None => Problem::not_found(format!("no push or cron connector `{name}`")).into_response(),
    }
}

pub(super) async fn list(State(engine): State<Arc<Engine>>) -> Response {
    let all: Vec<Value> = engine
        .model
        .connectors
        .iter()
        .map(|c| summary(&engine, c))
        .collect();
    axum::Json(all).into_response()
}

pub(super) async fn show(State(engine): State<Arc<Engine>>, Path(name): Path<String>) -> Response {
    match engine.model.connector(&name) {
        Some(c) => axum::Json(summary(&engine, c)).into_response(),
        None => Problem::not_found(format!("no connector `{name}`")).into_response(),
    }
}

pub(super) async fn invalidate(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
) -> Response {
    match engine.pulls.get(&name).and_then(|p| p.cache.as_ref()) {
        Some(cache) => axum::Json(json!({"connector": name, "invalidated": cache.invalidate()}))
            .into_response(),
        None => Problem::not_found(format!("no cache for connector `{name}`")).into_response(),
    }
}
