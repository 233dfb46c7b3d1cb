//! Data-driven mapping fixtures in `tests/fixtures/mapping/<case>/`: `connector.yaml` (one
//! connector), `input.json`, optional `params.json`, and either `expected.json` (the FHIR,
//! which must also be valid against the FHIR R4 JSON Schema) or `expected-error.txt` (the
//! exact error). `scripts/regenerate.sh` rewrites the expectations (with `UPDATE_GOLDEN=1`).

use std::path::{Path, PathBuf};

use engine::config::fhir_schema::FhirSchema;
use engine::config::secrets::ProcessEnvironment;
use engine::config::validate::{Options, validate};
use serde_json::Value;

const FHIR_SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/fhir-r4/fhir.schema.json"
);

fn fhir_schema() -> FhirSchema {
    FhirSchema::load(Path::new(FHIR_SCHEMA))
        .unwrap_or_else(|e| panic!("the FHIR R4 schema is needed: {e}"))
}

fn run_case(dir: &Path) -> Result<Vec<Value>, String> {
    let (files, read_errors) =
        engine::config::load::read_all(&[dir.join("connector.yaml")]).map_err(|e| e.to_string())?;
    let opts = Options {
        allow_unresolved: true,
        run_tests: true,
        fhir_schema: None,
        env: &ProcessEnvironment,
    };
    let outcome = validate(&files, read_errors, &opts);
    let model = outcome
        .model
        .ok_or_else(|| format!("invalid definition: {:?}", outcome.diagnostics))?;
    let connector = model.connectors.first().ok_or("no connector")?;
    let input: Value = engine::cli::read_input(&dir.join("input.json"))?;
    let params = std::fs::read_to_string(dir.join("params.json"))
        .ok()
        .map(|t| serde_json::from_str(&t).expect("params.json is JSON"))
        .unwrap_or(Value::Object(Default::default()));
    connector
        .map_document(&input, &params)
        .map_err(|e| e.to_string())
}

#[test]
fn mapping_fixtures_produce_their_expected_fhir() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir("tests/fixtures/mapping")
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let schema = fhir_schema();
    let mut failures = Vec::new();
    for dir in &cases {
        let name = dir.display();
        let error_file = dir.join("expected-error.txt");
        let expects_error = error_file.exists();
        match (run_case(dir), expects_error) {
            (Ok(got), false) => {
                let file = dir.join("expected.json");
                if update {
                    let text = serde_json::to_string_pretty(&got).expect("json") + "\n";
                    std::fs::write(&file, text).expect("write");
                }
                let want: Value =
                    serde_json::from_str(&std::fs::read_to_string(&file).unwrap_or_default())
                        .unwrap_or(Value::Null);
                if Value::Array(got.clone()) != want {
                    failures.push(format!(
                        "{name}: got {}",
                        serde_json::to_string_pretty(&got).unwrap_or_default()
                    ));
                }
                for (i, r) in want.as_array().into_iter().flatten().enumerate() {
                    for problem in schema.check(r) {
                        failures.push(format!(
                            "{name}: expected resource {i} is not valid FHIR R4: {problem}"
                        ));
                    }
                }
                if want.as_array().is_none_or(Vec::is_empty) {
                    failures.push(format!(
                        "{name}: expected.json must list at least one resource"
                    ));
                }
            }
            (Err(e), true) => {
                if update {
                    std::fs::write(&error_file, format!("{e}\n")).expect("write");
                }
                let want = std::fs::read_to_string(&error_file).unwrap_or_default();
                if want.trim_end() != e {
                    failures.push(format!(
                        "{name}: error was\n  {e}\nexpected\n  {}",
                        want.trim_end()
                    ));
                }
            }
            (Ok(got), true) => failures.push(format!(
                "{name}: expected an error, got {} resources",
                got.len()
            )),
            (Err(e), false) => failures.push(format!("{name}: failed: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(if the new output is right, run scripts/regenerate.sh)",
        failures.join("\n")
    );
    let ok = cases
        .iter()
        .filter(|d| d.join("expected.json").exists())
        .count();
    assert!(
        ok >= 25,
        "{ok} mapping fixtures with expected FHIR; at least 25 are expected"
    );
}
