//! Record formats end to end: CSV, XML (an SPL-like drug label with namespaces), FHIR XML and
//! NDJSON answers, bodies and files, read by the engine's real router and cron runner from
//! stand-in HTTP servers on 127.0.0.1 and from files; and the hostile cases (a
//! billion-laughs document, an unterminated quote, bytes that are not the declared encoding,
//! an answer over `maxAnswer` or `maxValues`, a body whose `Content-Type` contradicts the
//! declared format), each an `OperationOutcome` or a failed run that names the line or record.

use std::path::Path;
use std::time::Duration;

use axum::http::header;
use axum::routing::get;
use serde_json::{Value, json};

use crate::engine_router::{EngineRouter, open_engine};
use crate::engine_under_test::{definitions, load, run_with_deadline, runner_with_sink_dir};
use crate::local_http::{assert_outcome, bind, spawn_app};

const TIMEOUT: Duration = Duration::from_secs(20);

fn data(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/formats")
            .join(name),
    )
    .expect("test data")
}

/// A stand-in export server: each path answers fixed bytes with a content type.
async fn export_server(files: Vec<(&'static str, &'static str, Vec<u8>)>) -> String {
    let mut app = axum::Router::new();
    for (path, media, body) in files {
        app = app.route(
            path,
            get(move || {
                let body = body.clone();
                async move { ([(header::CONTENT_TYPE, media)], body) }
            }),
        );
    }
    let (listener, url) = bind().await;
    spawn_app(listener, app);
    url
}

/// A billion-laughs document: nine levels of ten-fold entity references.
fn billion_laughs() -> Vec<u8> {
    let mut doc =
        String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n <!ENTITY lol \"lol\">\n");
    for i in 1..10 {
        let prev = if i == 1 {
            "lol".to_owned()
        } else {
            format!("lol{}", i - 1)
        };
        doc.push_str(&format!(
            " <!ENTITY lol{i} \"{}\">\n",
            format!("&{prev};").repeat(10)
        ));
    }
    doc.push_str("]>\n<document>&lol9;</document>\n");
    doc.into_bytes()
}

const LAB_MAPPING: &str = "
  mapping:
    resourceType: Observation
    id: \"{{record.patient}}-{{record.loinc}}\"
    status: final
    code:
      coding: [ { system: http://loinc.org, code: { $path: $.loinc }, display: { $path: $.test } } ]
    subject: { reference: \"Patient/{{record.patient}}\" }
    effectiveDateTime: { $path: $.taken }
    valueQuantity: { value: { $number: { $path: $.value } }, unit: { $path: $.unit } }";

/// Pull connectors over a CSV export, an XML label service and a FHIR XML server.
fn pull_definitions(url: &str) -> String {
    format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: labs }}
spec:
  strategy: pull
  source:
    url: {url}
    maxAnswer: 64KiB
    maxValues: 5000
    format: {{ type: csv, delimiter: \";\", encoding: windows-1252 }}
  pull:
    resources:
      - type: Observation
        search:
          params: {{ file: {{}} }}
          request: {{ path: \"/{{{{params.file}}}}\" }}
          records: $[*]
{LAB_MAPPING}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: labels }}
spec:
  strategy: pull
  fhirVersion: R5
  source:
    url: {url}
    format:
      type: xml
      records: [v3:document]
      namespaces: {{ v3: \"urn:hl7-org:v3\" }}
      arrays: [component]
  pull:
    resources:
      - type: MedicinalProductDefinition
        search:
          params: {{ file: {{}} }}
          request: {{ path: \"/{{{{params.file}}}}\" }}
          records: $[*]
  mapping:
    resourceType: MedicinalProductDefinition
    id: {{ $path: \"$.setId['@root']\" }}
    name: [ {{ productName: {{ $path: $.title }} }} ]
    description: {{ $path: \"$.component[0].structuredBody.component[?@.section.code['@code'] == '34067-9'].section.text\" }}
    statusDate: {{ $dateTime: {{ $path: \"$.effectiveTime['@value']\" }} }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: fhirxml }}
spec:
  strategy: pull
  source:
    url: {url}
    format: {{ type: fhirXml }}
  pull:
    resources:
      - type: Patient
        search:
          request: {{ path: /Patient }}
          records: $.entry[*].resource
"
    )
}

async fn pull_engine() -> (EngineRouter, tempfile::TempDir, tempfile::TempDir) {
    let url = export_server(vec![
        (
            "/labs.csv",
            "text/csv; charset=windows-1252",
            data("labs-windows-1252.csv"),
        ),
        ("/label.xml", "application/xml", data("spl-label.xml")),
        (
            "/Patient",
            "application/fhir+xml",
            data("patient-bundle.xml"),
        ),
        ("/laughs.xml", "application/xml", billion_laughs()),
        (
            "/open.csv",
            "text/csv",
            b"patient;loinc\np1;1\np2;\"2\np3;3\n".to_vec(),
        ),
        (
            "/latin.xml",
            "application/xml",
            b"<document xmlns='urn:hl7-org:v3'>\n<title>M\xfcller</title></document>".to_vec(),
        ),
        (
            "/huge.csv",
            "text/csv",
            format!("patient;loinc\n{}", "p;1\n".repeat(40_000)).into_bytes(),
        ),
        (
            "/many.csv",
            "text/csv",
            format!("patient;loinc\n{}", "p;1\n".repeat(2_000)).into_bytes(),
        ),
    ])
    .await;
    open_engine(&pull_definitions(&url), TIMEOUT)
}

fn resources(bundle: &Value) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .map(|e| e.iter().map(|e| e["resource"].clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_windows_1252_csv_export_is_served_as_observations() {
    let (engine, _defs, _state) = pull_engine().await;
    let got = engine
        .get(format!(
            "{}/fhir/labs/Observation?file=labs.csv",
            engine.base
        ))
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let obs = resources(&got.json());
    assert_eq!(obs.len(), 2, "{}", got.text);
    assert_eq!(obs[0]["id"], "p1-718-7");
    assert_eq!(obs[0]["code"]["coding"][0]["display"], "Hämoglobin");
    assert_eq!(
        obs[0]["valueQuantity"],
        json!({"value": 13.5, "unit": "g/dL"})
    );
    assert_eq!(
        obs[1]["code"]["coding"][0]["display"],
        "Glucose \"nüchtern\""
    );
    assert_eq!(obs[1]["subject"]["reference"], "Patient/p2");
}

#[tokio::test]
async fn an_spl_like_xml_label_is_read_through_its_namespace() {
    let (engine, _defs, _state) = pull_engine().await;
    let got = engine
        .get(format!(
            "{}/fhir/labels/MedicinalProductDefinition?file=label.xml",
            engine.base
        ))
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let labels = resources(&got.json());
    assert_eq!(labels.len(), 1, "{}", got.text);
    assert_eq!(labels[0]["id"], "a1b2c3d4-1111-4222-8333-444455556666");
    assert_eq!(
        labels[0]["name"][0]["productName"],
        "ASPIRINA 500 mg tablets"
    );
    assert_eq!(labels[0]["description"], "Relief of mild to moderate pain.");
    assert_eq!(labels[0]["statusDate"], "2024-01-05");
}

#[tokio::test]
async fn a_fhir_xml_bundle_is_served_as_fhir_json() {
    let (engine, _defs, _state) = pull_engine().await;
    let got = engine
        .get(format!("{}/fhir/fhirxml/Patient", engine.base))
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let patients = resources(&got.json());
    assert_eq!(patients.len(), 2, "{}", got.text);
    assert_eq!(patients[0]["resourceType"], "Patient");
    assert_eq!(patients[0]["active"], true);
    assert_eq!(patients[0]["name"][0]["given"], json!(["Jane", "Q."]));
    assert_eq!(
        patients[0]["text"]["div"],
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Jane Doe</p></div>"
    );
    assert_eq!(patients[1]["multipleBirthInteger"], 2);
    assert_eq!(patients[1]["name"], json!([{"family": "Roe"}]));
}

#[tokio::test]
async fn hostile_answers_are_outcomes_that_name_their_place() {
    let (engine, _defs, _state) = pull_engine().await;
    let ask = |connector: &str, kind: &str, file: &str| {
        format!("{}/fhir/{connector}/{kind}?file={file}", engine.base)
    };
    let cases: [(&str, &str, &str, &[&str]); 5] = [
        (
            "labels",
            "MedicinalProductDefinition",
            "laughs.xml",
            &["DOCTYPE", "line 2"],
        ),
        (
            "labs",
            "Observation",
            "open.csv",
            &["never closed", "record 2", "line 3"],
        ),
        (
            "labels",
            "MedicinalProductDefinition",
            "latin.xml",
            &["not UTF-8", "line 2"],
        ),
        ("labs", "Observation", "huge.csv", &["maxAnswer"]),
        ("labs", "Observation", "many.csv", &["5000", "maxValues"]),
    ];
    for (connector, kind, file, words) in cases {
        let started = std::time::Instant::now();
        let got = engine.get(ask(connector, kind, file)).send().await;
        assert_outcome(&got, 502, words);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{file} took {:?}",
            started.elapsed()
        );
    }
}

const NDJSON_PUSH: &str = "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: prom }
spec:
  strategy: push
  push:
    auth: { bearer: { token: push-token-0123456789 } }
    mode: sync
    format: { type: ndjson }
    records: $[*]
  mapping:
    resourceType: QuestionnaireResponse
    id: { $path: $.id }
    status: completed
    authored: { $path: $.at }
";

#[tokio::test]
async fn an_ndjson_push_is_decoded_and_a_contradicting_content_type_is_415() {
    let (engine, _defs, state) = open_engine(NDJSON_PUSH, TIMEOUT);
    let post = |media: &'static str, body: &'static [u8]| {
        engine
            .post(format!("{}/push/prom", engine.base))
            .header("authorization", "Bearer push-token-0123456789")
            .header("content-type", media)
            .body(body.to_vec())
            .send()
    };
    let body: &[u8] =
        b"{\"id\":\"r1\",\"at\":\"2024-01-05T10:00:00Z\"}\n\n{\"id\":\"r2\",\"at\":\"2024-01-06T10:00:00Z\"}\n";
    let got = post("application/json", body).await;
    assert_outcome(&got, 415, &["application/x-ndjson"]);
    let got = post("application/x-ndjson", b"{\"id\":\"r1\"}\n{\"id\":\n").await;
    assert_outcome(&got, 400, &["NDJSON line 2"]);
    let got = post("application/x-ndjson", body).await;
    assert!(
        got.status == 200 || got.status == 201,
        "{} {}",
        got.status,
        got.text
    );
    let written = ndjson_lines(&state.path().join("ndjson"), "QuestionnaireResponse");
    let ids: Vec<&str> = written.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, ["r1", "r2"]);
}

/// The resources of type `kind` in an NDJSON sink directory.
fn ndjson_lines(dir: &Path, kind: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)
        .expect("the sink directory")
        .flatten()
    {
        if !entry.file_name().to_string_lossy().starts_with(kind) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).expect("an NDJSON file");
        out.extend(
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("JSON")),
        );
    }
    out
}

fn file_cron(path: &str) -> String {
    format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: lab-files }}
spec:
  strategy: cron
  schedule: {{ cron: \"0 2 * * *\" }}
  source:
    path: {path}
    format: {{ type: csv, delimiter: \";\", encoding: windows-1252 }}
  fetch:
    request: {{ path: / }}
    records: $[*]
{LAB_MAPPING}
"
    )
}

#[tokio::test]
async fn a_file_source_reads_its_glob_on_every_run() {
    let defs = definitions(&file_cron("exports/labs-*.csv"));
    let exports = defs.path().join("exports");
    std::fs::create_dir(&exports).expect("exports");
    std::fs::write(exports.join("labs-1.csv"), data("labs-windows-1252.csv")).expect("write");
    std::fs::write(exports.join("notes.txt"), b"not matched").expect("write");
    let state = tempfile::tempdir().expect("state");
    let sink = tempfile::tempdir().expect("sink");

    let runner = runner_with_sink_dir(&load(defs.path()), "lab-files", state.path(), sink.path());
    let report = run_with_deadline(&runner, TIMEOUT).await;
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!(report.records_read, 2);

    // A second export arrives: the next run reads both files.
    std::fs::write(
        exports.join("labs-2.csv"),
        b"patient;loinc;test;value;unit;taken\np3;718-7;Hb;12.1;g/dL;2024-02-01T09:00:00Z\n",
    )
    .expect("write");
    let report = run_with_deadline(&runner, TIMEOUT).await;
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!(report.records_read, 3);
    let ids: std::collections::BTreeSet<String> = ndjson_lines(sink.path(), "Observation")
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect();
    assert!(
        ids.contains("p3-718-7") && ids.contains("p1-718-7"),
        "{ids:?}"
    );

    // A broken export fails the run, naming the file and its line, not the folder.
    std::fs::write(exports.join("labs-3.csv"), b"patient;loinc\np4;\"open\n").expect("write");
    let report = run_with_deadline(&runner, TIMEOUT).await;
    assert!(!report.ok());
    let reasons = format!("{:?}", report.failures);
    assert!(
        reasons.contains("labs-3.csv") && reasons.contains("line 2"),
        "{reasons}"
    );
    assert!(
        !reasons.contains(&defs.path().display().to_string()),
        "{reasons}"
    );
}

#[tokio::test]
async fn a_pull_route_over_a_file_source_reads_the_file_and_names_a_missing_one() {
    let yaml = "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: local-patients }
spec:
  strategy: pull
  source:
    path: data/patients.ndjson
    format: { type: ndjson }
  pull:
    resources:
      - type: Patient
        search:
          request: { path: / }
          records: $[*]
";
    let (engine, defs, _state) = open_engine(yaml, TIMEOUT);
    let data_dir = defs.path().join("data");
    std::fs::create_dir(&data_dir).expect("data");
    std::fs::write(
        data_dir.join("patients.ndjson"),
        "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"resourceType\":\"Patient\",\"id\":\"b\"}\n",
    )
    .expect("write");
    let url = format!("{}/fhir/local-patients/Patient", engine.base);
    let got = engine.get(&url).send().await;
    assert_eq!(got.status, 200, "{}", got.text);
    let ids: Vec<Value> = resources(&got.json())
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids, [json!("a"), json!("b")]);

    std::fs::remove_file(data_dir.join("patients.ndjson")).expect("remove");
    let got = engine.get(&url).send().await;
    assert_outcome(&got, 502, &["data/patients.ndjson", "not found"]);
    assert!(
        !got.text.contains(&defs.path().display().to_string()),
        "{}",
        got.text
    );
}

#[test]
fn engine_map_reads_a_csv_input_in_the_connectors_format() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let map = |input: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
            .current_dir(&root)
            .args([
                "map",
                "-d",
                "examples",
                "--connector",
                "lab-export-csv",
                "--input",
            ])
            .arg(input)
            .output()
            .expect("engine map runs")
    };
    let out = map(Path::new(
        "examples/lab-export-csv/exports/labs-2024-01.csv",
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let expected: Value = serde_json::from_slice(
        &std::fs::read(root.join("examples/lab-export-csv/expected.json")).expect("expected"),
    )
    .expect("JSON");
    assert_eq!(got, expected);

    let bad = tempfile::NamedTempFile::new().expect("a file");
    std::fs::write(bad.path(), b"patient;loinc\np1;1;extra\n").expect("write");
    let out = map(bad.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CSV record 1 (line 2)"), "{stderr}");
}
