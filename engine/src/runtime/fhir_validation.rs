//! The run-time check of what a push or cron connector is about to write against its FHIR
//! version (`validation`): `strict` refuses an invalid resource, `warn` lets it through with
//! a warning, `off` does not look.

use serde_json::{Value, json};

use crate::model::Connector;
use crate::model::fhir_structure::{self, instance::InstanceProblem};
use crate::model::vocabulary::Validation;

/// Most problems named in one refusal (its text and its `OperationOutcome`).
const MAX_NAMED: usize = 10;

/// A resource the check found invalid.
#[derive(Debug, Clone)]
pub struct Invalid {
    /// `Type/id`, or its position when it has no usable id.
    pub label: String,
    pub problems: Vec<InstanceProblem>,
}

impl Invalid {
    /// One line naming each element at fault (at most [`MAX_NAMED`]).
    pub fn reason(&self) -> String {
        let named: Vec<String> = self
            .problems
            .iter()
            .take(MAX_NAMED)
            .map(ToString::to_string)
            .collect();
        let more = self.problems.len().saturating_sub(MAX_NAMED);
        format!(
            "{} is not valid FHIR: {}{}",
            self.label,
            named.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        )
    }

    /// An `OperationOutcome` with one issue per problem, its `expression` the element.
    pub fn outcome(&self) -> Value {
        let issues: Vec<Value> = self
            .problems
            .iter()
            .take(MAX_NAMED)
            .map(|p| {
                json!({
                    "severity": "error",
                    "code": "structure",
                    "diagnostics": format!("{}: {p}", self.label),
                    "expression": [p.path()],
                })
            })
            .collect();
        json!({"resourceType": "OperationOutcome", "issue": issues})
    }
}

/// What the check made of a batch of resources.
#[derive(Debug, Default)]
pub struct Screened {
    /// The resources to write (all of them unless `strict`).
    pub admitted: Vec<Value>,
    /// Invalid resources refused (`strict`).
    pub refused: Vec<Invalid>,
    /// Invalid resources let through (`warn`).
    pub warned: Vec<Invalid>,
}

/// The problems of one resource under the connector's setting: `None` when it is to be
/// written as it is (valid, or `off`).
pub fn judge(connector: &Connector, resource: &Value, position: usize) -> Option<Invalid> {
    if connector.validation == Validation::Off {
        return None;
    }
    let structure = fhir_structure::structure(connector.fhir_version).ok()?;
    let problems = structure.check_instance(resource);
    (!problems.is_empty()).then(|| Invalid {
        label: crate::runtime::sink::safe_label(resource, position),
        problems,
    })
}

/// Checks each resource (the caller logs: one line per batch, not per resource).
pub fn screen(connector: &Connector, resources: Vec<Value>) -> Screened {
    let mut out = Screened::default();
    for (i, r) in resources.into_iter().enumerate() {
        match judge(connector, &r, i) {
            None => out.admitted.push(r),
            Some(bad) => {
                if connector.validation == Validation::Strict {
                    out.refused.push(bad);
                } else {
                    out.admitted.push(r);
                    out.warned.push(bad);
                }
            }
        }
    }
    out
}

/// One warning in the log for `n` invalid resources of a batch, with the first one's reason
/// (paths and the values at fault, no local path): a run of many bad records logs one line.
pub fn log(connector: &Connector, n: usize, first: Option<&str>) {
    let Some(first) = first.filter(|_| n > 0) else {
        return;
    };
    let action = if connector.validation == Validation::Strict {
        "refused"
    } else {
        "written anyway"
    };
    tracing::warn!(
        connector = %connector.name,
        fhir_version = connector.fhir_version.name(),
        invalid = n,
        "{n} resources not valid FHIR ({action}); the first: {first}"
    );
}
