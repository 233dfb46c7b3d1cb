//! FHIR `OperationOutcome` answers: the one place that turns errors into HTTP responses on
//! FHIR routes. Client errors say what was wrong; internal errors say little to the caller and
//! everything to the log.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::runtime::problem::{Problem, ProblemKind};

/// The media type of every FHIR answer.
pub const FHIR_JSON: &str = "application/fhir+json";

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(
                status = status.as_u16(),
                code = self.kind.code(),
                "{}",
                self.diagnostics
            );
        }
        let mut answer = fhir_response(status, &self.outcome());
        if let ProblemKind::Unavailable { retry_after } = self.kind {
            answer
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        answer
    }
}

/// A FHIR JSON answer.
pub fn fhir_response(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, serde_json::to_vec(body).unwrap_or_default()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    r
}
