//! The operations and admin handlers: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`,
//! `/reload`, and the `/connectors` API (list, detail, cache delete, run, dead letters: listed a page at a
//! time, read, replayed, deleted).

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::model::Strategy;
use crate::runtime::dead_letters::{self, DeadLetterError, DeadLetters, LetterId, Replayed};
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
    // Each cron connector's dead letters, counted in its folder at scrape time.
    let mut cron_dead = Vec::with_capacity(engine.crons.len());
    for (name, job) in &engine.crons {
        cron_dead.push((name.as_str(), job.runner.dead_letters_shown(0).await.0));
    }
    let text = engine.metrics.render(caches, queues, cron_dead);
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
    // Taken here, before the answer: two requests at once start one run, not two "started".
    let Some(turn) = job.turn() else {
        return Problem::new(
            ProblemKind::Conflict,
            format!("`{name}` is running already"),
        )
        .into_response();
    };
    // Tracked: a shutdown lets the run finish within its grace period.
    engine.tasks.spawn(async move { job.run_in(turn).await });
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"connector": name, "status": "started"})),
    )
        .into_response()
}

/// The owner of connector `name`'s dead letters: its push endpoint or cron runner.
fn letters_of<'a>(engine: &'a Engine, name: &str) -> Result<&'a dyn DeadLetters, Problem> {
    if let Some(ep) = engine.pushes.get(name) {
        return Ok(ep.as_ref());
    }
    match engine.crons.get(name) {
        Some(job) => Ok(&job.runner),
        None => Err(Problem::not_found(format!(
            "no push or cron connector `{name}`"
        ))),
    }
}

/// A dead-letter error as the caller's answer.
fn letter_problem(e: DeadLetterError) -> Problem {
    let text = e.to_string();
    match e {
        DeadLetterError::InvalidId(_) => Problem::invalid(text),
        DeadLetterError::NotFound(_) => Problem::not_found(text),
        DeadLetterError::Busy(_) => Problem::new(ProblemKind::Conflict, text),
        DeadLetterError::Storage(_) => Problem::new(ProblemKind::Internal, text),
    }
}

/// Letters listed when the caller does not say how many.
const DEFAULT_PAGE: usize = 100;

/// `GET /connectors/{name}/dead-letters[?limit=N&after=ID]`: a page of the connector's dead
/// letters, light (id, received, reason, bytes; no payload), as a JSON array; the count of all
/// in `X-Total-Count`, the next page in `Link: <...>; rel="next"`.
pub(super) async fn dead_letters(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let owner = match letters_of(&engine, &name) {
        Ok(o) => o,
        Err(p) => return p.into_response(),
    };
    let (mut limit, mut after) = (DEFAULT_PAGE, None);
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        // A parameter given twice is refused, not read as its last (or first) value.
        if matches!(k.as_ref(), "limit" | "after") {
            if seen.iter().any(|s| *s == k) {
                return Problem::invalid(format!("`{k}` is given more than once")).into_response();
            }
            seen.push(k.clone().into_owned());
        }
        match k.as_ref() {
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=dead_letters::MAX_PAGE).contains(&n) => limit = n,
                _ => {
                    return Problem::invalid(format!(
                        "`limit` is a number from 1 to {}",
                        dead_letters::MAX_PAGE
                    ))
                    .into_response();
                }
            },
            "after" => match LetterId::parse(&v) {
                Ok(id) => after = Some(id),
                Err(e) => return letter_problem(e).into_response(),
            },
            other => {
                let other: String = other.chars().filter(|c| !c.is_control()).take(64).collect();
                return Problem::invalid(format!("unknown parameter `{other}` (`limit`, `after`)"))
                    .into_response();
            }
        }
    }
    let page = match owner.store().page(after, limit).await {
        Ok(p) => p,
        Err(e) => return letter_problem(e).into_response(),
    };
    let mut answer = axum::Json(&page.letters).into_response();
    let headers = answer.headers_mut();
    headers.insert("x-total-count", HeaderValue::from(page.total));
    if let Some(next) = &page.next
        && let Ok(v) = HeaderValue::from_str(&format!(
            "<dead-letters?after={next}&limit={limit}>; rel=\"next\""
        ))
    {
        headers.insert(header::LINK, v);
    }
    answer
}

/// `GET /connectors/{name}/dead-letters/{id}`: the letter whole: payload, reason, and the
/// `OperationOutcome` kept with it.
pub(super) async fn dead_letter(
    State(engine): State<Arc<Engine>>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    let found = async {
        let owner = letters_of(&engine, &name)?;
        let id = LetterId::parse(&id).map_err(letter_problem)?;
        owner.store().get(id).await.map_err(letter_problem)
    };
    match found.await {
        Ok(letter) => axum::Json(letter).into_response(),
        Err(p) => p.into_response(),
    }
}

/// `POST /connectors/{name}/dead-letters/{id}/replay`: the letter sent again through the
/// current definition. Written: 200 and `{"status": "written"}`, the letter removed. Not
/// written: an `OperationOutcome` (422, or 503 when the sink may take it later), the letter
/// kept with the new reason. 409 while another replay or deletion of it goes on.
pub(super) async fn replay_dead_letter(
    State(engine): State<Arc<Engine>>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    match replay(&engine, &name, &id).await {
        Ok(Replayed::Written { resources }) => axum::Json(json!({
            "connector": name,
            "id": id,
            "status": "written",
            "resources": resources,
        }))
        .into_response(),
        Ok(Replayed::Kept {
            transient, reason, ..
        }) => {
            let text = format!("replayed, not written; the dead letter stays: {reason}");
            let kind = if transient {
                ProblemKind::Unavailable {
                    retry_after: RETRY_AFTER,
                }
            } else {
                ProblemKind::Unprocessable
            };
            Problem::new(kind, text).into_response()
        }
        Err(p) => p.into_response(),
    }
}

/// A replay of letter `id` of connector `name` (shared by the API and the status page).
pub(super) async fn replay(engine: &Engine, name: &str, id: &str) -> Result<Replayed, Problem> {
    let owner = letters_of(engine, name)?;
    let id = LetterId::parse(id).map_err(letter_problem)?;
    dead_letters::replay(owner, &engine.metrics, id)
        .await
        .map_err(letter_problem)
}

/// A deletion of letter `id` of connector `name` (shared by the API and the status page).
pub(super) async fn delete(engine: &Engine, name: &str, id: &str) -> Result<(), Problem> {
    let owner = letters_of(engine, name)?;
    let id = LetterId::parse(id).map_err(letter_problem)?;
    dead_letters::delete(owner, &engine.metrics, id)
        .await
        .map_err(letter_problem)
}

/// `DELETE /connectors/{name}/dead-letters/{id}`: 204, the letter removed.
pub(super) async fn delete_dead_letter(
    State(engine): State<Arc<Engine>>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    match delete(&engine, &name, &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(p) => p.into_response(),
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
