//! Why a request to the engine failed, as a typed value: the runtime returns it, and
//! `http::outcome` alone turns it into an `OperationOutcome` answer with its status. The kind
//! is what callers and tests match on; the diagnostics are the text the caller reads.

use crate::model::fhir;

/// Seconds a caller is asked to wait before sending again when the engine cannot take a
/// request now (`Retry-After` of `ProblemKind::Unavailable`).
pub const RETRY_AFTER: u32 = 30;

/// What kind of failure a request met; each kind has one HTTP status and FHIR issue code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// The request is wrong: a parameter, an id, a body (400, `invalid`).
    Invalid,
    /// The caller did not authenticate (401, `login`).
    Unauthorized,
    /// The caller authenticated but may not do this (403, `forbidden`).
    Forbidden,
    /// What was asked for is not there (404, `not-found`).
    NotFound,
    /// The connector does not offer this interaction (405, `not-supported`).
    NotSupported,
    /// The same thing is under way already (409, `conflict`).
    Conflict,
    /// The body is larger than allowed (413, `too-long`).
    TooLarge,
    /// The request target is longer than allowed (414, `too-long`).
    UriTooLong,
    /// The body's media type is not one the endpoint reads (415, `not-supported`).
    UnsupportedMedia,
    /// The body was read but cannot be processed, and sending it again will not help (422,
    /// `processing`).
    Unprocessable,
    /// The request's headers are larger than allowed (431, `too-long`).
    HeadersTooLarge,
    /// The engine itself failed (500, `exception`).
    Internal,
    /// Every source failed (502, `transient`).
    SourceFailed,
    /// The engine cannot take the request now; the caller may send it again after the given
    /// seconds (503, `transient`, with `Retry-After`).
    Unavailable { retry_after: u32 },
    /// No answer in time: the sources' or the request's own deadline (504, `timeout`).
    Timeout,
}

/// A failed request: its kind and what the caller is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{diagnostics}")]
pub struct Problem {
    pub kind: ProblemKind,
    pub diagnostics: String,
}

impl ProblemKind {
    /// The HTTP status of the answer.
    pub fn status(self) -> u16 {
        match self {
            ProblemKind::Invalid => 400,
            ProblemKind::Unauthorized => 401,
            ProblemKind::Forbidden => 403,
            ProblemKind::NotFound => 404,
            ProblemKind::NotSupported => 405,
            ProblemKind::Conflict => 409,
            ProblemKind::TooLarge => 413,
            ProblemKind::UriTooLong => 414,
            ProblemKind::UnsupportedMedia => 415,
            ProblemKind::Unprocessable => 422,
            ProblemKind::HeadersTooLarge => 431,
            ProblemKind::Internal => 500,
            ProblemKind::SourceFailed => 502,
            ProblemKind::Unavailable { .. } => 503,
            ProblemKind::Timeout => 504,
        }
    }

    /// The FHIR issue type of the `OperationOutcome`.
    pub fn code(self) -> &'static str {
        match self {
            ProblemKind::Invalid => "invalid",
            ProblemKind::Unauthorized => "login",
            ProblemKind::Forbidden => "forbidden",
            ProblemKind::NotFound => "not-found",
            ProblemKind::NotSupported | ProblemKind::UnsupportedMedia => "not-supported",
            ProblemKind::Conflict => "conflict",
            ProblemKind::TooLarge | ProblemKind::UriTooLong | ProblemKind::HeadersTooLarge => {
                "too-long"
            }
            ProblemKind::Unprocessable => "processing",
            ProblemKind::Internal => "exception",
            ProblemKind::SourceFailed | ProblemKind::Unavailable { .. } => "transient",
            ProblemKind::Timeout => "timeout",
        }
    }
}

impl ProblemKind {
    /// The kind of an error status another layer answered (axum's rejections, its 405): the
    /// kind of that status, or for a status no kind has, the nearest one by class.
    pub fn of_status(status: u16) -> ProblemKind {
        match status {
            401 => ProblemKind::Unauthorized,
            404 => ProblemKind::NotFound,
            405 => ProblemKind::NotSupported,
            409 => ProblemKind::Conflict,
            413 => ProblemKind::TooLarge,
            414 => ProblemKind::UriTooLong,
            415 => ProblemKind::UnsupportedMedia,
            422 => ProblemKind::Unprocessable,
            431 => ProblemKind::HeadersTooLarge,
            502 => ProblemKind::SourceFailed,
            503 => ProblemKind::Unavailable {
                retry_after: RETRY_AFTER,
            },
            504 => ProblemKind::Timeout,
            400..=499 => ProblemKind::Invalid,
            _ => ProblemKind::Internal,
        }
    }
}

impl Problem {
    pub fn new(kind: ProblemKind, diagnostics: impl Into<String>) -> Self {
        Problem {
            kind,
            diagnostics: diagnostics.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(ProblemKind::NotFound, what)
    }

    pub fn invalid(what: impl Into<String>) -> Self {
        Self::new(ProblemKind::Invalid, what)
    }

    /// The `OperationOutcome` resource of this problem.
    pub fn outcome(&self) -> serde_json::Value {
        fhir::outcome("error", self.kind.code(), &self.diagnostics)
    }
}
