//! What is generated from the definitions: `manifests` (Kubernetes and Istio parts, or a check
//! that they are current), `openapi` (the routes' OpenAPI document) and `schema`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::args::SchemaFormat;
use super::definitions::{load_and_validate, model_of, usage};
use crate::config::load;
use crate::config::secrets::ProcessEnvironment;
use crate::config::validate::{self, Options};

/// `engine manifests`: writes the generated files, or with `check` compares them.
pub(super) fn manifests(
    paths: Vec<PathBuf>,
    out: PathBuf,
    check: bool,
    prefix: String,
    image: String,
) -> ExitCode {
    let (files, read_errors) = match load::read_all(&paths) {
        Ok(x) => x,
        Err(e) => return usage(&e.to_string()),
    };
    let opts = Options {
        allow_unresolved: true,
        run_tests: false,
        fhir_schema: None,
        env: &ProcessEnvironment,
    };
    let model = match model_of(Ok(validate::validate(&files, read_errors, &opts))) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let opts = crate::generate::manifests::Options {
        prefix,
        image,
        ..Default::default()
    };
    let generated = match crate::generate::manifests::generate(&model, &files, &opts) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let mut stale = Vec::new();
    for (name, text) in &generated {
        let path = out.join(name);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(path.display().to_string());
            }
        } else if let Err(e) =
            std::fs::create_dir_all(&out).and_then(|()| std::fs::write(&path, text))
        {
            return usage(&format!("{}: {e}", path.display()));
        }
    }
    if stale.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("stale (run `engine manifests`): {}", stale.join(", "));
        ExitCode::from(1)
    }
}

/// `engine openapi`: prints the OpenAPI document of the configured routes.
pub(super) fn openapi(paths: Vec<PathBuf>, prefix: String) -> ExitCode {
    let model = match model_of(load_and_validate(&paths, true, false, None)) {
        Ok(m) => m,
        Err(code) => return code,
    };
    super::output::stdout(&format!(
        "{}\n",
        serde_json::to_string_pretty(&crate::generate::openapi::document(&model, &prefix))
            .unwrap_or_default()
    ));
    ExitCode::SUCCESS
}

/// What `engine schema` prints (also the committed `schemas/` and `docs/reference.md`).
pub fn schema_text(format: SchemaFormat) -> String {
    let schema = crate::config::schema::generate();
    match format {
        SchemaFormat::Json => serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n",
        SchemaFormat::Markdown => crate::generate::reference::markdown(&schema),
    }
}
