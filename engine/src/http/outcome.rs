//! FHIR `OperationOutcome` answers: the one place that turns errors into HTTP responses on
//! FHIR routes. Client errors say what was wrong; internal errors say little to the caller and
//! everything to the log.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The media type of every FHIR answer.
pub const FHIR_JSON: &str = "application/fhir+json";

/// An error answered as an `OperationOutcome`.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    /// FHIR issue type (`not-found`, `invalid`, `timeout`, `transient`, `exception`, ...).
    pub code: &'static str,
    pub diagnostics: String,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, diagnostics: impl Into<String>) -> Self {
        Problem {
            status,
            code,
            diagnostics: diagnostics.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", what)
    }

    pub fn invalid(what: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", what)
    }

    /// The outcome resource of this problem.
    pub fn outcome(&self) -> Value {
        outcome("error", self.code, &self.diagnostics)
    }
}

/// The text of the first issue of an `OperationOutcome` (its `diagnostics`, else its
/// `details.text`), at most 200 characters.
pub fn issue_text(outcome: &Value) -> Option<String> {
    let issue = &outcome["issue"][0];
    let text = issue["diagnostics"]
        .as_str()
        .or_else(|| issue["details"]["text"].as_str())?;
    Some(text.chars().take(200).collect())
}

/// An `OperationOutcome` with one issue.
pub fn outcome(severity: &str, code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}]
    })
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(
                status = self.status.as_u16(),
                code = self.code,
                "{}",
                self.diagnostics
            );
        }
        fhir_response(self.status, &self.outcome())
    }
}

/// A FHIR JSON answer.
pub fn fhir_response(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, serde_json::to_vec(body).unwrap_or_default()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    r
}
