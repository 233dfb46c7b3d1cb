//! Why a FHIR Bulk Data export failed (`BulkError`), and the run failure each error makes,
//! with the server's `OperationOutcome` when it sent one.

use std::time::Duration;

use serde_json::Value;

use super::manifest::ManifestError;
use crate::runtime::outbound::humanize;
use crate::runtime::report::{Failure, Stage};

/// Why an export failed. No variant holds a URL.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BulkError {
    #[error("the `$export` kick-off failed: {message}")]
    KickOff {
        message: String,
        outcome: Option<Value>,
    },
    #[error("the `$export` kick-off was accepted without a `Content-Location` to poll")]
    NoStatus,
    #[error(
        "the `$export` status is on another origin ({0}), which is refused: declare it in `bulkExport.fileOrigins` to allow it"
    )]
    StatusElsewhere(String),
    #[error("the `$export` status could not be read: {0}")]
    Status(String),
    #[error("the export failed: the status {message}")]
    Failed {
        message: String,
        outcome: Option<Value>,
    },
    #[error("the export did not finish within {} (`bulkExport.maxDuration`)", humanize(*.0))]
    Deadline(Duration),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{file}: {reason}")]
    File { file: String, reason: String },
    /// The runner stopped the export (its report says why).
    #[error("stopped by the run")]
    Stopped,
}

impl BulkError {
    /// The failure of a run that met this error, with the server's `OperationOutcome`.
    pub fn into_failure(self) -> Failure {
        let subject = match &self {
            BulkError::File { file, .. } => file.clone(),
            _ => "$export".to_owned(),
        };
        let outcome = match &self {
            BulkError::KickOff { outcome, .. } | BulkError::Failed { outcome, .. } => {
                outcome.clone()
            }
            _ => None,
        };
        Failure {
            stage: Stage::Read,
            subject,
            message: self.to_string(),
            outcome,
        }
    }
}
