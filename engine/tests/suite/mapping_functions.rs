//! The mapping functions (issue 13, part 4): each gives the same in a directly rendered
//! template, inside a Handlebars block and as a function operator; hostile table files are
//! refused when definitions load; and the shipped legacy-lab example serves its Observations
//! end to end through a pull route from a stand-in of the lab's export.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::get;
use serde_json::{Value, json};

use crate::engine_router::EngineRouter;
use crate::engine_under_test::{definitions, load};
use crate::local_http::{bind, spawn_app};
use engine::config::diagnostic::{Format, render};
use engine::config::secrets::ProcessEnvironment;
use engine::config::validate::{Options, validate};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A push connector whose mapping is `mapping` (YAML, indented under `mapping:`).
fn push_connector(mapping: &str, extra: &str) -> String {
    format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: fns }}
spec:
  strategy: push
  timeZone: Europe/Vienna
  push:
    auth: {{ bearer: {{ token: token-0123456789 }} }}
{extra}  mapping:
{mapping}"
    )
}

/// The human diagnostics of validating the definitions in `dir`.
fn diagnostics(dir: &Path) -> String {
    let (files, read_errors) =
        engine::config::load::read_all(&[dir.to_path_buf()]).expect("readable definitions");
    let opts = Options {
        allow_unresolved: false,
        run_tests: true,
        fhir_schema: None,
        env: &ProcessEnvironment,
    };
    let outcome = validate(&files, read_errors, &opts);
    render(&outcome.diagnostics, Format::Human, &|p: &Path| {
        outcome.texts.get(p).cloned()
    })
}

#[test]
fn every_function_gives_the_same_in_both_renderers_and_as_an_operator() {
    // (call as template arguments, the same as operator arguments, the text it gives)
    let cases: [(&str, &str, &str); 22] = [
        (
            "base64Encode record.s",
            "[{ $path: $.s }]",
            "R3LDvMOfZSA/Pg==",
        ),
        (
            "base64UrlEncode record.s",
            "[{ $path: $.s }]",
            "R3LDvMOfZSA_Pg",
        ),
        ("base64Decode record.b64", "[{ $path: $.b64 }]", "Grüße ?>"),
        (
            "base64UrlDecode record.b64url",
            "[{ $path: $.b64url }]",
            "Grüße ?>",
        ),
        (
            "replace record.s 'ß' 'ss'",
            "[{ $path: $.s }, ß, ss]",
            "Grüsse ?>",
        ),
        (
            "match record.code '^[A-Z]{3}-[0-9]+$'",
            "[{ $path: $.code }, '^[A-Z]{3}-[0-9]+$']",
            "true",
        ),
        (
            "capture record.code '-([0-9]+)'",
            "[{ $path: $.code }, '-([0-9]+)']",
            "0042",
        ),
        (
            "capture record.code '(?<p>[A-Z]+)' 'p'",
            "[{ $path: $.code }, '(?<p>[A-Z]+)', p]",
            "LAB",
        ),
        ("substring record.s 2 3", "[{ $path: $.s }, 2, 3]", "üße"),
        (
            "padLeft record.n 6 '0'",
            "[{ $path: $.n }, 6, '0']",
            "000042",
        ),
        (
            "padRight record.n 4 '·'",
            "[{ $path: $.n }, 4, '·']",
            "42··",
        ),
        (
            "titleCase record.name",
            "[{ $path: $.name }]",
            "Anna-Maria Von Trapp",
        ),
        (
            "capitalize record.lowered",
            "[{ $path: $.lowered }]",
            "Éclair au chocolat",
        ),
        (
            "parseDate record.dotted '%d.%m.%Y'",
            "[{ $path: $.dotted }, '%d.%m.%Y']",
            "2024-01-05",
        ),
        (
            "parseDate record.named '%d %b %Y'",
            "[{ $path: $.named }, '%d %b %Y']",
            "2024-01-05",
        ),
        (
            "parseDateTime record.compact '%Y%m%d%H%M%S%z'",
            "[{ $path: $.compact }, '%Y%m%d%H%M%S%z']",
            "2024-01-05T21:30:00+01:00",
        ),
        (
            "parseInstant record.millis 'unixMillis' 'UTC'",
            "[{ $path: $.millis }, unixMillis, UTC]",
            "2024-01-05T21:30:00.123+00:00",
        ),
        (
            "parseDateTime record.local '%d/%m/%Y %H:%M'",
            "[{ $path: $.local }, '%d/%m/%Y %H:%M']",
            "2024-07-05T08:30:00+02:00",
        ),
        (
            "add record.a record.b",
            "[{ $path: $.a }, { $path: $.b }]",
            "0.3",
        ),
        ("subtract record.a 1", "[{ $path: $.a }, 1]", "-0.9"),
        ("multiply record.price 3", "[{ $path: $.price }, 3]", "4.5"),
        ("divide 1 8", "[1, 8]", "0.125"),
    ];
    let record = json!({
        "s": "Grüße ?>", "b64": "R3LDvMOfZSA/Pg==", "b64url": "R3LDvMOfZSA_Pg",
        "code": "LAB-0042", "n": 42, "name": "anna-maria VON trapp", "lowered": "éclair au chocolat",
        "dotted": "05.01.2024", "named": "5 Jan 2024", "compact": "20240105213000+0100",
        "millis": "1704490200123", "local": "05/07/2024 08:30", "a": "0.1", "b": 0.2,
        "price": "1.5"
    });
    let mut mapping =
        String::from("    resourceType: Basic\n    code: { text: functions }\n    identifier:\n");
    for (i, (call, args, _)) in cases.iter().enumerate() {
        let name = call.split(' ').next().unwrap_or_default();
        mapping.push_str(&format!(
            "      - {{ system: direct-{i}, value: \"{{{{{call}}}}}\" }}\n\
             \x20     - {{ system: handlebars-{i}, value: \"{{{{#if record}}}}{{{{{call}}}}}{{{{/if}}}}\" }}\n\
             \x20     - {{ system: operator-{i}, value: {{ $string: {{ ${name}: {args} }} }} }}\n"
        ));
    }
    let defs = definitions(&push_connector(&mapping, ""));
    let model = load(defs.path());
    let connector = model.connector("fns").expect("the connector");
    let out = connector
        .map_document(&record, &json!({}))
        .unwrap_or_else(|e| panic!("{e}"));
    let ids = out[0]["identifier"].as_array().expect("identifiers");
    let value = |system: String| {
        ids.iter()
            .find(|i| i["system"] == system.as_str())
            .and_then(|i| i["value"].as_str())
            .unwrap_or_else(|| panic!("no {system} in {ids:?}"))
            .to_owned()
    };
    for (i, (call, _, want)) in cases.iter().enumerate() {
        for form in ["direct", "handlebars", "operator"] {
            assert_eq!(value(format!("{form}-{i}")), *want, "`{call}` as {form}");
        }
    }
    // The arithmetic keeps a decimal's places where it writes text, and is a JSON number in
    // structure.
    let defs = definitions(&push_connector(
        "    resourceType: Observation\n    status: final\n    code: { text: \"{{multiply record.price 2}}\" }\n    valueQuantity: { value: { $multiply: [{ $path: $.price }, 2] } }\n",
        "",
    ));
    let out = load(defs.path())
        .connector("fns")
        .expect("the connector")
        .map_document(&json!({"price": "1.50"}), &json!({}))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out[0]["code"]["text"], "3.00");
    assert_eq!(out[0]["valueQuantity"]["value"], json!(3.0));
}

#[test]
fn hostile_table_files_are_refused_where_the_definition_names_them() {
    let mapping =
        "    resourceType: Basic\n    code: { text: \"{{translate 'units' record.u}}\" }\n";
    let tables = |file: &str| format!("  tables:\n    units: {{ file: {file} }}\n");
    // Huge: over the 4 MiB cap (never read whole).
    let defs = definitions(&push_connector(mapping, &tables("units.csv")));
    let mut big = String::from("local,ucum\n");
    let mut i = 0;
    while big.len() <= 5 << 20 {
        big.push_str(&format!("u{i},unit-{i}\n"));
        i += 1;
    }
    std::fs::write(defs.path().join("units.csv"), &big).expect("write");
    let got = diagnostics(defs.path());
    assert!(
        got.contains("`units.csv` is larger than 4194304 bytes"),
        "{got}"
    );
    assert!(
        got.contains("definitions.yaml:10:"),
        "at the file's line: {got}"
    );
    // Too many codes, within the bytes.
    let few_bytes: String = std::iter::once("k,v\n".to_owned())
        .chain((0..100_001).map(|i| format!("{i},x\n")))
        .collect();
    std::fs::write(defs.path().join("units.csv"), few_bytes).expect("write");
    let got = diagnostics(defs.path());
    assert!(got.contains("holds more than 100000 codes"), "{got}");
    // Missing, with no absolute path in the message.
    std::fs::remove_file(defs.path().join("units.csv")).expect("remove");
    let got = diagnostics(defs.path());
    assert!(got.contains("cannot read `units.csv`: not found"), "{got}");
    let message = got.lines().next().unwrap_or_default();
    assert!(
        !message.contains(&defs.path().display().to_string()),
        "{got}"
    );
    // Not UTF-8, and a quote left open.
    std::fs::write(defs.path().join("units.csv"), b"local,ucum\n\xff\xfe,x\n").expect("write");
    assert!(diagnostics(defs.path()).contains("is not UTF-8 text"));
    std::fs::write(defs.path().join("units.csv"), "local,ucum\n\"mg,mg\n").expect("write");
    let got = diagnostics(defs.path());
    assert!(got.contains("units.csv"), "{got}");
    // A well-formed file loads and maps.
    std::fs::write(
        defs.path().join("units.csv"),
        "local,ucum\nmg,mg\nmmol/l,mmol/L\n",
    )
    .expect("write");
    let out = load(defs.path())
        .connector("fns")
        .expect("the connector")
        .map_document(&json!({"u": "mmol/l"}), &json!({}))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out[0]["code"]["text"], "mmol/L");
}

#[test]
fn a_slow_pattern_on_a_huge_input_stays_linear() {
    // `(a|aa)+$` backtracks exponentially elsewhere; the regex crate matches in linear time.
    let defs = definitions(&push_connector(
        "    resourceType: Basic\n    code: { text: { $string: { $match: [{ $path: $.s }, '^(a|aa)+$'] } } }\n",
        "",
    ));
    let model = load(defs.path());
    let connector = model.connector("fns").expect("the connector");
    let record = json!({ "s": format!("{}b", "a".repeat(200_000)) });
    let started = std::time::Instant::now();
    let out = connector
        .map_document(&record, &json!({}))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out[0]["code"]["text"], "false");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_split_into_too_many_parts_is_an_error_not_a_huge_array() {
    let defs = definitions(&push_connector(
        r#"    resourceType: Basic
    code: { text: functions }
    identifier:
      $each: { $split: [{ $path: $.s }, ","] }
      $do: { value: "{{item}}" }
"#,
        "",
    ));
    let model = load(defs.path());
    let connector = model.connector("fns").expect("the connector");
    let few = connector
        .map_document(&json!({ "s": "a,b" }), &json!({}))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        few[0]["identifier"],
        json!([{ "value": "a" }, { "value": "b" }])
    );
    let e = connector
        .map_document(&json!({ "s": ",".repeat(200_000) }), &json!({}))
        .expect_err("refused");
    assert!(e.to_string().contains("more than 100000 parts"), "{e}");
}

/// The legacy lab's export: the records of `patient`, or one that lies about its content.
async fn export(
    State(asked): State<Arc<Mutex<Vec<String>>>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> axum::Json<Value> {
    let patient = q.get("patient").cloned().unwrap_or_default();
    asked.lock().expect("lock").push(patient.clone());
    let example: Value = serde_json::from_str(
        &std::fs::read_to_string("../examples/lab-results-legacy/result.json")
            .expect("the example's sample"),
    )
    .expect("JSON");
    let mut record = example["results"][0].clone();
    if patient == "P-BROKEN" {
        record["taken"] = json!("2024-01-05 21:30");
        record["comment"] = json!("not base64 at all!");
    }
    record["patient"] = json!(patient);
    axum::Json(json!({ "results": [record] }))
}

/// The shipped example, its source pointed at `url`, in a new directory with its tables.
fn example_at(url: &str) -> tempfile::TempDir {
    let example = Path::new("../examples/lab-results-legacy");
    let yaml = std::fs::read_to_string(example.join("connector.yaml"))
        .expect("the example")
        .replace("${env:LEGACY_LAB_URL:-http://127.0.0.1:9103}", url);
    assert!(yaml.contains(url), "the example's source URL is replaced");
    let dir = definitions(&yaml);
    std::fs::create_dir(dir.path().join("tables")).expect("mkdir");
    for f in ["tests.json", "units.csv"] {
        std::fs::copy(
            example.join("tables").join(f),
            dir.path().join("tables").join(f),
        )
        .expect("copy a table");
    }
    for f in ["result.json", "expected.json"] {
        std::fs::copy(example.join(f), dir.path().join(f)).expect("copy a sample");
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_lab_example_serves_mapped_observations_through_a_pull_route() {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let (listener, url) = bind().await;
    let app = axum::Router::new()
        .route("/export/results", get(export))
        .with_state(asked.clone());
    let _server = spawn_app(listener, app);
    let defs = example_at(&url);
    let state = tempfile::tempdir().expect("state");
    let served = EngineRouter::new(load(defs.path()), state.path(), CLIENT_TIMEOUT);

    let got = served
        .get("/fhir/lab-results-legacy/Observation?patient=P-77")
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let bundle = got.json();
    assert_eq!(bundle["resourceType"], "Bundle");
    let obs = &bundle["entry"][0]["resource"];
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(defs.path().join("expected.json")).expect("expected"),
    )
    .expect("JSON");
    assert_eq!(
        obs, &expected[0],
        "the route serves what the example's test expects"
    );
    assert_eq!(obs["effectiveDateTime"], "2024-01-05T21:30:00+01:00");
    assert_eq!(
        obs["code"]["coding"][0]["code"], "15074-8",
        "looked up in tests.json"
    );
    assert_eq!(
        obs["valueQuantity"]["code"], "mmol/L",
        "looked up in units.csv"
    );
    assert_eq!(obs["component"][0]["valueQuantity"]["value"], json!(109.9));
    assert_eq!(asked.lock().expect("lock").as_slice(), ["P-77"]);

    // A record the functions cannot read: an OperationOutcome naming the function and the
    // format, with no local path.
    let got = served
        .get("/fhir/lab-results-legacy/Observation?patient=P-BROKEN")
        .send()
        .await;
    assert!(got.status >= 400, "{} {}", got.status, got.text);
    let body = got.json();
    assert_eq!(body["resourceType"], "OperationOutcome", "{}", got.text);
    let text = body["issue"][0]["diagnostics"].as_str().unwrap_or_default();
    assert!(
        text.contains("`%Y%m%d%H%M%S%z`") && text.contains("2024-01-05 21:30"),
        "{text}"
    );
    assert!(!text.contains(&defs.path().display().to_string()), "{text}");
}
