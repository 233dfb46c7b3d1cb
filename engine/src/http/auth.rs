//! The admin routes' layer: every request to the admin API (`/connectors...`, `/reload`) is
//! checked by the engine's `AdminAccess` before its handler runs. Reading (GET) needs the
//! reader or operator role, acting (POST run, DELETE cache, a dead letter's replay or delete)
//! the operator role. Refusals are
//! `OperationOutcome`s: 401 with `WWW-Authenticate: Bearer` when the token is missing, expired
//! or not valid (the caller learns which of the three, nothing more), 403 when a valid token
//! lacks the role or the API is closed, 503 when the issuer's keys cannot be had. The token
//! never reaches a log; the reason of a refusal and the subject of an operation do.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::runtime::admin_access::{Need, Refusal};
use crate::runtime::engine::Engine;
use crate::runtime::problem::{Problem, ProblemKind};

/// The realm named in `WWW-Authenticate`.
const REALM: &str = "fosps-connector-engine";
/// Seconds a caller is asked to wait when the issuer's keys cannot be had.
const KEYS_RETRY_AFTER: u32 = 10;

/// Lets the request through to its admin handler only when its caller may do what it asks.
pub(super) async fn admin(State(engine): State<Arc<Engine>>, req: Request, next: Next) -> Response {
    let need = if matches!(*req.method(), Method::GET | Method::HEAD) {
        Need::Read
    } else {
        Need::Operate
    };
    let checked = {
        let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
        match (values.next(), values.next()) {
            (_, Some(_)) => Err(Refusal::Invalid("several Authorization headers")),
            (None, None) => {
                engine
                    .limits
                    .admin
                    .check(None, need, engine.clock.now())
                    .await
            }
            (Some(v), None) => match v.to_str() {
                Ok(v) => {
                    engine
                        .limits
                        .admin
                        .check(Some(v), need, engine.clock.now())
                        .await
                }
                Err(_) => Err(Refusal::Invalid("not text")),
            },
        }
    };
    match checked {
        Ok(caller) => {
            if need == Need::Operate {
                tracing::info!(caller = %caller.subject, method = %req.method(), path = %req.uri().path(), "admin operation");
            }
            next.run(req).await
        }
        Err(refusal) => {
            tracing::info!(method = %req.method(), path = %req.uri().path(), reason = %refusal, "admin request refused");
            answer(&refusal)
        }
    }
}

/// The answer to a refused admin request.
fn answer(refusal: &Refusal) -> Response {
    let (kind, text, challenge) = match refusal {
        Refusal::Closed => (
            ProblemKind::Forbidden,
            "the admin API is closed on this engine: it has no admin authentication configured",
            None,
        ),
        Refusal::Missing => (
            ProblemKind::Unauthorized,
            "this admin request needs a bearer token",
            Some(format!("Bearer realm=\"{REALM}\"")),
        ),
        Refusal::Expired => (
            ProblemKind::Unauthorized,
            "the bearer token has expired",
            Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"the token has expired\""
            )),
        ),
        Refusal::Invalid(_) => (
            ProblemKind::Unauthorized,
            "the bearer token is not valid",
            Some(format!("Bearer realm=\"{REALM}\", error=\"invalid_token\"")),
        ),
        Refusal::Forbidden(need) => (
            ProblemKind::Forbidden,
            match need {
                Need::Read => "the bearer token does not carry the reader or operator role",
                Need::Operate => "the bearer token does not carry the operator role",
            },
            Some(format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\""
            )),
        ),
        Refusal::KeysUnavailable(_) => (
            ProblemKind::Unavailable {
                retry_after: KEYS_RETRY_AFTER,
            },
            "the bearer token cannot be checked now: the issuer's keys cannot be had",
            None,
        ),
    };
    let mut response = Problem::new(kind, text).into_response();
    if let Some(v) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}
