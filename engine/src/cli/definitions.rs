//! Definitions as the commands load them: read and validated with the process environment,
//! turned into the model or into the exit of the command (2 for an unusable invocation, 1 with
//! the diagnostics for invalid definitions).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::diagnostic::Format;
use crate::config::fhir_schema::FhirSchema;
use crate::config::load;
use crate::config::secrets::ProcessEnvironment;
use crate::config::validate::{self, Options, Outcome};

pub(super) fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

/// The model of valid definitions, or the exit of a command that needs one: an unusable path
/// exits 2, invalid definitions print their diagnostics and exit 1.
pub(super) fn model_of(
    loaded: Result<Outcome, load::UnusablePath>,
) -> Result<crate::model::Model, ExitCode> {
    let outcome = loaded.map_err(|e| usage(&e.to_string()))?;
    outcome.model.ok_or_else(|| {
        let text = crate::config::diagnostic::render(&outcome.diagnostics, Format::Human, &|p| {
            outcome.texts.get(p).cloned()
        });
        eprint!("{text}");
        ExitCode::from(1)
    })
}

/// Reads and validates definitions with the process environment.
pub fn load_and_validate(
    paths: &[PathBuf],
    allow_unresolved: bool,
    run_tests: bool,
    fhir_schema: Option<&FhirSchema>,
) -> Result<Outcome, load::UnusablePath> {
    let (files, read_errors) = load::read_all(paths)?;
    let opts = Options {
        allow_unresolved,
        run_tests,
        fhir_schema,
        env: &ProcessEnvironment,
    };
    Ok(validate::validate(&files, read_errors, &opts))
}
