//! The `engine` binary as users run it: exit codes, output formats, the shipped definitions,
//! and the committed schema and reference that must equal what the code generates.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use engine::cli::{SchemaFormat, schema_text};

fn engine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env_remove("LABELS_API_URL")
        .output()
        .expect("engine runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `text` written to a file `name` of a new temporary directory (removed when dropped).
fn file_in_tempdir(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(name);
    std::fs::write(&file, text).expect("write");
    (dir, file)
}

/// `engine map -d examples --connector CONNECTOR --input INPUT`, from the project's root.
fn map(connector: &str, input: &str) -> Output {
    engine(&[
        "map",
        "-d",
        "examples",
        "--connector",
        connector,
        "--input",
        input,
    ])
}

#[test]
fn shipped_definitions_and_examples_are_valid() {
    let o = engine(&["validate", "connectors.d", "examples", "--deny-warnings"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("valid: "), "{}", stdout(&o));
}

#[test]
fn committed_schema_and_reference_are_current() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let schema =
        std::fs::read_to_string(root.join("schemas/connector.schema.json")).unwrap_or_default();
    assert!(
        schema == schema_text(SchemaFormat::Json),
        "schemas/connector.schema.json is stale: run scripts/regenerate.sh"
    );
    let reference = std::fs::read_to_string(root.join("docs/reference.md")).unwrap_or_default();
    assert!(
        reference == schema_text(SchemaFormat::Markdown),
        "docs/reference.md is stale: run scripts/regenerate.sh"
    );
    assert_eq!(
        stdout(&engine(&["schema"])),
        schema,
        "`engine schema` prints the committed schema"
    );
}

#[test]
fn exit_codes_say_valid_invalid_or_unusable() {
    assert_eq!(engine(&["validate", "no/such/path"]).status.code(), Some(2));
    let (_dir, file) = file_in_tempdir(
        "broken.yaml",
        "apiVersion: fosps.gravitate-health.eu/v1\nkind: Connector\nmetadata: { name: broken\n",
    );
    let o = engine(&["validate", file.to_str().expect("path")]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("error: YAML syntax: "),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        engine(&["validate", "--format", "xml"]).status.code(),
        Some(2)
    );
    assert_eq!(engine(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn json_and_github_formats() {
    let (_dir, file) = file_in_tempdir(
        "c.yaml",
        "apiVersion: fosps.gravitate-health.eu/v1\nkind: Source\nmetadata: {name: s}\nspec: {url: 'http://x', timout: 1s}\n",
    );
    let path = file.to_str().expect("utf-8 path");
    let o = engine(&["validate", path, "--format", "json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON output");
    assert_eq!(
        v,
        serde_json::json!([{"file": path, "line": 4, "column": 25, "path": "spec.timout", "severity": "error",
            "message": "unknown key `timout`", "hint": "did you mean `timeout`?"}])
    );
    let o = engine(&["validate", path, "--format", "github"]);
    assert_eq!(
        stdout(&o),
        format!(
            "::error file={path},line=4,col=25,title=engine validate::spec.timout: unknown key `timout` (hint: did you mean `timeout`?)\n"
        )
    );
}

#[test]
fn warnings_fail_only_when_denied() {
    let (_dir, file) = file_in_tempdir(
        "s.yaml",
        "apiVersion: fosps.gravitate-health.eu/v1\nkind: Source\nmetadata: {name: lonely}\nspec: {url: 'http://x'}\n",
    );
    let path = file.to_str().expect("utf-8 path");
    let o = engine(&["validate", path]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("warning: source `lonely` is not used by any connector"));
    assert_eq!(
        engine(&["validate", path, "--deny-warnings"]).status.code(),
        Some(1)
    );
}

#[test]
fn map_prints_fhir_and_fails_clearly() {
    let o = map("drug-labels", "examples/drug-labels/label.json");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(out[0]["resourceType"], "MedicinalProductDefinition");

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{not json").expect("write");
    let o = map("drug-labels", bad.to_str().expect("path"));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not JSON: key must be a string at line 1 column 2"));

    let deep = dir.path().join("deep.json");
    std::fs::write(&deep, "[".repeat(10_000) + &"]".repeat(10_000)).expect("write");
    let o = map("drug-labels", deep.to_str().expect("path"));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("recursion limit exceeded"));

    let wrong = dir.path().join("wrong.json");
    std::fs::write(
        &wrong,
        r#"{"results": [{"set_id": "a", "effective_time": {"x": 1}}]}"#,
    )
    .expect("write");
    let o = map("drug-labels", wrong.to_str().expect("path"));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "error: mapping failed: rule spec.mapping.statusDate: expected a dateTime, found an object (input $['results'][0]['effective_time'])\n"
    );

    let o = map("drug-lables", "examples/drug-labels/label.json");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("did you mean `drug-labels`?"));
}

#[test]
fn map_check_refuses_output_invalid_for_the_connectors_version() {
    let definition = "engine/tests/invalid/fhir-53-test-output-invalid.yaml";
    let run = |input: &str, check: bool| {
        let (_dir, file) = file_in_tempdir("input.json", input);
        let mut args = vec![
            "map",
            "-d",
            definition,
            "--connector",
            "documents",
            "--input",
            file.to_str().expect("path"),
        ];
        if check {
            args.push("--check");
        }
        engine(&args)
    };
    let invalid = r#"{"results": [{"id": "d1", "published": "2024-05-01", "url": "u"}]}"#;
    let o = run(invalid, true);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        "error: resource 0 is not valid FHIR R5: `2024-05-01` is not a FHIR `instant` (a date and time to the second with its zone, e.g. 2024-05-01T10:00:00Z), as `DocumentReference.date` needs\n\
         error: resource 0 is not valid FHIR R5: DocumentReference.type.coding[0]: a Coding without its `code` (half made, e.g. by a null)\n"
    );
    // The FHIR is still printed, for the author to see.
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(out[0]["date"], "2024-05-01");
    // Without `--check` the output is printed as before; valid output passes the check.
    assert_eq!(run(invalid, false).status.code(), Some(0));
    let valid = r#"{"results": [{"id": "d1", "published": "2024-05-01T10:00:00Z",
        "url": "https://x.example/d1", "loinc": "34133-9"}]}"#;
    let o = run(valid, true);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn committed_deploy_matches_the_generator() {
    let o = engine(&[
        "manifests",
        "connectors.d",
        "--out",
        "deploy/base",
        "--check",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "deploy/base is stale: run scripts/regenerate.sh\n{}",
        stderr(&o)
    );
}

#[test]
fn openapi_describes_routes_and_holds_no_secret() {
    let o = engine(&[
        "openapi",
        "connectors.d",
        "examples",
        "--prefix",
        "/connector/api",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    let doc: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(doc["openapi"], "3.0.3");
    assert_eq!(doc["servers"][0]["url"], "/connector/api");
    let search = &doc["paths"]["/fhir/drug-labels/MedicinalProductDefinition"]["get"];
    let names: Vec<&str> = search["parameters"]
        .as_array()
        .expect("params")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, vec!["name", "_count", "_offset"]);
    // The proxy's sources are R5 (ePI) and R4 (IPS): a base per version, no versionless
    // one, and the source-qualified read its entries' fullUrls name.
    for base in ["/fhir/proxy/R4", "/fhir/proxy/R5"] {
        assert!(
            doc["paths"][base]["post"].is_object(),
            "the proxy takes batches at {base}"
        );
        assert!(doc["paths"][format!("{base}/Bundle")]["get"].is_object());
    }
    assert!(doc["paths"]["/fhir/proxy"].is_null());
    assert!(doc["paths"]["/fhir/proxy/Bundle"].is_null());
    assert_eq!(
        doc["paths"]["/fhir/proxy/{source}/Bundle/{id}"]["get"]["parameters"][0]["schema"]["enum"],
        serde_json::json!(["epi", "ips"])
    );
    assert!(
        !text.contains("example-labels-api-key"),
        "a secret leaked into the OpenAPI document"
    );
}
