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

/// Every fixture with expected FHIR, through both outputs of the one evaluation: the
/// resources written as JSON text directly (what the pull route sends) parse to exactly the
/// `Value`s `apply` builds (what validation and definition tests read), member order
/// included, and to the fixture's expected FHIR; each written resource's `Type/id` is the
/// one its value has.
#[test]
fn written_json_and_values_agree_on_every_fixture() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir("tests/fixtures/mapping")
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("expected.json").exists())
        .collect();
    cases.sort();
    let mut failures = Vec::new();
    let mut resources = 0;
    for dir in &cases {
        let name = dir.display();
        let (files, read_errors) =
            engine::config::load::read_all(&[dir.join("connector.yaml")]).expect("read");
        let opts = Options {
            allow_unresolved: true,
            run_tests: false,
            fhir_schema: None,
            env: &ProcessEnvironment,
        };
        let model = validate(&files, read_errors, &opts).model.expect("valid");
        let connector = model.connectors.first().expect("a connector");
        let input: Value = engine::cli::read_input(&dir.join("input.json")).expect("input");
        let params = std::fs::read_to_string(dir.join("params.json"))
            .ok()
            .map(|t| serde_json::from_str(&t).expect("params.json is JSON"))
            .unwrap_or(Value::Object(Default::default()));
        let selected: Vec<(String, &Value)> = match connector.records() {
            Some(q) => q
                .locate(&input, &input)
                .into_iter()
                .zip(q.select(&input, &input))
                .collect(),
            None => vec![("$".to_owned(), &input)],
        };
        let mapping = connector.mapping.as_ref();
        let values = connector
            .map_records_with(mapping, selected.clone(), &params)
            .expect("maps to values");
        let written = connector
            .write_records_with(mapping, selected, &params)
            .expect("maps to JSON text");
        let want: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("expected.json")).expect("expected.json"),
        )
        .expect("expected.json");
        // Member order counts: compare the texts of the values, not the values.
        let texts: Vec<String> = written
            .iter()
            .map(|w| String::from_utf8(w.json.clone()).expect("UTF-8"))
            .collect();
        let value_texts: Vec<String> = values.iter().map(Value::to_string).collect();
        if texts != value_texts {
            failures.push(format!(
                "{name}: written {texts:?}\n  values {value_texts:?}"
            ));
        }
        let parsed: Vec<Value> = texts
            .iter()
            .map(|t| serde_json::from_str(t).expect("written JSON parses"))
            .collect();
        if Value::Array(parsed) != want {
            failures.push(format!("{name}: written JSON is not the expected FHIR"));
        }
        for (w, v) in written.iter().zip(&values) {
            if w.local != engine::model::fhir::local_reference(v) {
                failures.push(format!("{name}: Type/id {:?} of {v}", w.local));
            }
        }
        resources += written.len();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        cases.len() >= 25 && resources >= cases.len(),
        "{} fixtures, {resources} resources",
        cases.len()
    );
}

/// A record whose structure copied by `$path` is mostly empty parts (nulls, empty strings,
/// arrays and objects of nothing, nested deep) is written without them, as `apply` copies
/// it; a record where nothing is left makes the same nothing both ways.
#[test]
fn written_json_prunes_selected_structure_as_values_do() {
    let defs = crate::engine_under_test::definitions(
        "apiVersion: fosps.gravitate-health.eu/v1\nkind: Connector\nmetadata: { name: prune }\n\
         spec:\n  strategy: push\n  push:\n    auth: { bearer: { token: \"${env:MAPWRITE_TOKEN:-token-1234567890}\" } }\n  mapping:\n    resourceType: Basic\n    id: { $path: $.id }\n\
         \x20   extension: { $paths: '$.ext[*]' }\n    code: { $path: $.code }\n",
    );
    let model = crate::engine_under_test::load(defs.path());
    let connector = model.connectors.first().expect("a connector");
    // Nested 100 deep: `{"a": {"a": ... {"a": [null, "", {}, []]}}}`.
    let mut deep = serde_json::json!([null, "", {}, []]);
    for _ in 0..100 {
        deep = serde_json::json!({ "a": deep, "b": null });
    }
    let records = [
        serde_json::json!({
            "id": "x1",
            "ext": [null, {"url": "u", "valueString": ""}, {"url": "", "x": [null]}, deep.clone(),
                    {"url": "v", "nested": {"k": [1, null, "", {"z": null}], "e": {}}}],
            "code": {"text": "", "coding": [{"code": "c", "display": null}, {}], "deep": deep},
        }),
        serde_json::json!({ "id": "x2", "ext": [null, "", [], {}], "code": {"a": [null]} }),
        serde_json::json!({ "ext": [deep], "code": "" }),
    ];
    for record in &records {
        let selected = vec![("$".to_owned(), record)];
        let values =
            connector.map_records_with(connector.mapping.as_ref(), selected.clone(), &Value::Null);
        let written =
            connector.write_records_with(connector.mapping.as_ref(), selected, &Value::Null);
        match (values, written) {
            (Ok(values), Ok(written)) => {
                let texts: Vec<&str> = written
                    .iter()
                    .map(|w| std::str::from_utf8(&w.json).expect("UTF-8"))
                    .collect();
                let value_texts: Vec<String> = values.iter().map(Value::to_string).collect();
                assert_eq!(texts, value_texts, "record {record}");
                assert!(
                    !texts.iter().any(|t| t.contains("null")
                        || t.contains("\"\"")
                        || t.contains("{}")
                        || t.contains("[]")),
                    "{texts:?}"
                );
            }
            (a, b) => panic!("record {record}: values {a:?}, written {b:?}"),
        }
    }
}

/// The searchset written around resources already written as text is, byte for byte, the
/// compact JSON of the same Bundle built as a value (members in the same order), with or
/// without a total, matches, `fullUrl`s or outcomes, and with text that needs escaping.
#[test]
fn searchset_written_around_resources_is_the_bundle_value_s_json() {
    use engine::model::fhir::Searchset;
    use serde_json::json;
    let resource =
        json!({"resourceType": "Patient", "id": "p\"1", "name": [{"text": "Zoë \u{1F600} \\ \n"}]});
    let outcome = json!({"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "timeout", "diagnostics": "source `a\"b` </script>"}]});
    let links = vec![
        json!({"relation": "self", "url": "http://127.0.0.1:1/fhir/x/Patient?name=%22a"}),
        json!({"relation": "next", "url": "http://127.0.0.1:1/fhir/x/Patient?_offset=2"}),
    ];
    for (total, with_url, matches, outcomes) in [
        (Some(2), true, 2, 1),
        (None, false, 1, 0),
        (Some(0), false, 0, 0),
        (None, true, 0, 2),
    ] {
        let url = with_url.then(|| "http://h/fhir/x/Patient/p\"1".to_owned());
        let bundle = Searchset {
            total,
            links: links.clone(),
            matches: (0..matches)
                .map(|_| (url.clone(), resource.to_string().into_bytes()))
                .collect(),
            outcomes: vec![outcome.clone(); outcomes],
        };
        let mut entries: Vec<Value> = (0..matches)
            .map(|_| {
                let mut e = serde_json::Map::new();
                if let Some(u) = &url {
                    e.insert("fullUrl".into(), json!(u));
                }
                e.insert("resource".into(), resource.clone());
                e.insert("search".into(), json!({"mode": "match"}));
                Value::Object(e)
            })
            .collect();
        entries.extend(
            (0..outcomes).map(|_| json!({"resource": outcome, "search": {"mode": "outcome"}})),
        );
        let mut b = serde_json::Map::new();
        b.insert("resourceType".into(), json!("Bundle"));
        b.insert("type".into(), json!("searchset"));
        if let Some(t) = total {
            b.insert("total".into(), json!(t));
        }
        b.insert("link".into(), Value::Array(links.clone()));
        if !entries.is_empty() {
            b.insert("entry".into(), Value::Array(entries));
        }
        let want = serde_json::to_vec(&Value::Object(b)).expect("json");
        assert_eq!(
            String::from_utf8(bundle.to_vec()).expect("utf-8"),
            String::from_utf8(want).expect("utf-8")
        );
    }
}
