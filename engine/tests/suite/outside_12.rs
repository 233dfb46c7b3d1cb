//! Issue 12's FHIR-aware definitions tried from outside like a hostile tester: a primitive's
//! `_element` (its id and extensions, `_birthDate`) written wrongly, given to the real
//! `engine validate`, to `engine map --check` and to a strict push connector writing into a
//! real Helios R4 (the outside `validator-cli` agreeing that what is refused is invalid); an
//! extension a null left with its `url` alone; a definition with 10,000 findings, whose
//! human diagnostics must come as fast as their JSON; year 0000 and offsets past 14:00; and
//! the pull proxy of an R4 and an R5 server (stand-ins) asked an R5-only type at its R4 base
//! and lied to with an id that is no FHIR id.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::engine_router::{EngineRouter, open_engine};
use crate::engine_under_test::{definitions, load};
use crate::fhir_standin::FhirSource;
use crate::helios_client::get_json;
use crate::helios_server::{Db, Helios};
use crate::local_http::{assert_outcome, client};
use crate::outside_tools::installed_tool;

/// Longest one command or request may take.
const TIMEOUT: Duration = Duration::from_secs(20);
const PUSH_TOKEN: &str = "push-token-0123456789abcdef";

/// A pull connector of `version` serving `rtype`, whose mapping's rules are `rules` (indented
/// by four spaces under `mapping:`).
fn pull_definition(version: &str, rtype: &str, rules: &str) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata:
  name: case
spec:
  strategy: pull
  fhirVersion: {version}
  source:
    url: https://api.example.org
  pull:
    resources:
      - type: {rtype}
        search:
          request: {{ path: /items }}
          records: $[*]
  mapping:
    resourceType: {rtype}
{rules}"#
    )
}

/// `engine ARGS` in `dir`: exit code, standard output and standard error.
async fn engine(dir: &Path, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("the engine starts");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .await
        .expect("stdin written");
    drop(input);
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .expect("the command ends in time")
        .expect("the command runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `yaml` as `case.yaml` in a new directory.
fn definition_dir(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a directory");
    std::fs::write(dir.path().join("case.yaml"), yaml).expect("written");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primitives_id_and_extensions_are_checked_by_engine_validate() {
    let cases = [
        // An extension of `_birthDate` with a misspelt value[x], at R4.
        (
            "R4",
            "Patient",
            "    birthDate: \"2020-01-01\"\n    _birthDate:\n      extension: [ { url: \"http://x\", valueStrng: a } ]\n",
            "20:39 at spec.mapping._birthDate.extension[0].valueStrng",
            "`valueStrng` is not a type `Patient._birthDate.extension.value[x]` can take",
            Some("did you mean `valueString`?"),
        ),
        // Inside a data type, through `$each`, at R5: an element `Element` does not have,
        // and an impossible date in an extension of the primitive.
        (
            "R5",
            "Patient",
            "    name:\n      $each: $.names\n      $do:\n        family: { $path: \"@.f\" }\n        _family: { extension: [ { url: \"http://x\", valueDate: \"2023-02-29\" } ], extensoin: [] }\n",
            "22:81 at spec.mapping.name.$do._family.extensoin",
            "`Patient.name._family` has no element `extensoin` in FHIR R5",
            Some("did you mean `extension`?"),
        ),
        (
            "R5",
            "Patient",
            "    name:\n      $each: $.names\n      $do:\n        family: { $path: \"@.f\" }\n        _family: { extension: [ { url: \"http://x\", valueDate: \"2023-02-29\" } ] }\n",
            "22:63 at spec.mapping.name.$do._family.extension[0].valueDate",
            "`2023-02-29` is not a FHIR `date`",
            None,
        ),
        // `_name` beside an element that is not a primitive is no element at all.
        (
            "R4B",
            "Patient",
            "    _name: { id: n1 }\n",
            "18:5 at spec.mapping._name",
            "`_name` holds the id and extensions of a primitive element, but `Patient.name` is a `HumanName`",
            Some("write `id` and `extension` inside `name` itself"),
        ),
    ];
    for (version, rtype, rules, at, message, hint) in cases {
        let dir = definition_dir(&pull_definition(version, rtype, rules));
        let (code, out, err) = engine(dir.path(), &["validate", "case.yaml"], None).await;
        let all = format!("{out}{err}");
        assert_eq!(code, 1, "{rules}: {all}");
        assert!(all.contains(&format!("case.yaml:{at}")), "{rules}: {all}");
        assert!(all.contains(message), "{rules}: {all}");
        if let Some(hint) = hint {
            assert!(all.contains(&format!("= hint: {hint}")), "{rules}: {all}");
        }
    }
    // What is right stays valid: an id and an extension beside a primitive, and the nulls
    // that keep the places of a list's items.
    let dir = definition_dir(&pull_definition(
        "R4",
        "Patient",
        "    birthDate: \"2020-01-01\"\n    _birthDate: { id: b1, extension: [ { url: \"http://x\", valueBoolean: true } ] }\n    name: [ { given: [a, b], _given: [ null, { id: g2 } ] } ]\n",
    ));
    let (code, out, err) = engine(dir.path(), &["validate", "case.yaml"], None).await;
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_map_check_looks_into_primitive_extensions_and_half_made_extensions() {
    let dir = definition_dir(&pull_definition(
        "R4",
        "Patient",
        "    id: { $path: $.id }\n    birthDate: { $path: $.born }\n    _birthDate: { $path: $.bornExtras }\n    extension: [ { url: \"http://example.org/nick\", valueString: { $path: $.nick } } ]\n",
    ));
    let check = [
        "map",
        "-d",
        "case.yaml",
        "--connector",
        "case",
        "--input",
        "-",
    ];
    // The record's extension of `birthDate` names an element FHIR does not have.
    let input = json!([{"id": "p1", "born": "2020-01-01", "nick": "Al",
        "bornExtras": {"extension": [{"url": "http://x", "valueStrng": "a"}]}}]);
    let (code, out, err) = engine(
        dir.path(),
        &[&check[..], &["--check"]].concat(),
        Some(&input.to_string()),
    )
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("Patient._birthDate.extension[0].valueStrng: `valueStrng` is not a type `value[x]` can take"),
        "{err}"
    );
    // A record without a nickname: the extension keeps its `url` alone (ext-1).
    let input = json!([{"id": "p2", "born": "2020-01-01"}]);
    let (code, out, err) = engine(
        dir.path(),
        &[&check[..], &["--check"]].concat(),
        Some(&input.to_string()),
    )
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("Patient.extension[0]: an Extension without its `value[x]` (half made"),
        "{err}"
    );
    // Both made right: valid.
    let input = json!([{"id": "p3", "born": "2020-01-01", "nick": "Al",
        "bornExtras": {"id": "b", "extension": [{"url": "http://x", "valueString": "a"}]}}]);
    let (code, out, err) = engine(
        dir.path(),
        &[&check[..], &["--check"]].concat(),
        Some(&input.to_string()),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
}

/// The outside validator's errors on one resource of FHIR `version`.
fn validator_errors(version: &str, resource: &Value) -> Vec<String> {
    let validator = installed_tool(
        "VALIDATOR_CLI",
        "validator/bin/validator-cli",
        "validator-cli",
    );
    let file = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(file.path(), resource.to_string()).expect("written");
    let out = std::process::Command::new(validator)
        .args(["--fhir-version", version, "--output", "json"])
        .arg(file.path())
        .output()
        .expect("validator-cli runs");
    let report: Value = serde_json::from_slice(&out.stdout).expect("validator-cli gives JSON");
    report["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| format!("{}: {}", e["path"], e["message"]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_push_never_writes_a_resource_whose_primitive_extension_is_invalid() {
    let helios = Helios::start(Db::Memory).await;
    let yaml = format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata: {{ name: store }}
spec:
  fhir: {{ url: "{url}", version: R4, mode: batch, retries: 0, timeout: 10s }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: births }}
spec:
  strategy: push
  sink: store
  validation: strict
  push:
    auth: {{ bearer: {{ token: {PUSH_TOKEN} }} }}
    mode: sync
  mapping:
    resourceType: Patient
    id: {{ $path: $.id }}
    birthDate: {{ $path: $.born }}
    _birthDate: {{ $path: $.bornExtras }}
"#,
        url = helios.url
    );
    let (served, _defs, _state) = open_engine(&yaml, TIMEOUT);
    let push = |body: Value| {
        served
            .post("/push/births")
            .header("authorization", format!("Bearer {PUSH_TOKEN}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let http = client(TIMEOUT);

    let bad = json!({"id": "x1", "born": "2020-01-01",
        "bornExtras": {"extension": [{"url": "http://x", "valueStrng": "a"}]}});
    // The outside validator refuses the resource this record makes.
    let made = json!({"resourceType": "Patient", "id": "x1", "birthDate": "2020-01-01",
        "_birthDate": bad["bornExtras"]});
    let outside = validator_errors("R4", &made);
    assert!(
        outside.iter().any(|e| e.contains("valueStrng")),
        "{outside:?}"
    );
    let got = push(bad).await;
    assert_outcome(&got, 422, &["Patient._birthDate.extension[0].valueStrng"]);
    let (status, body) = get_json(&http, &format!("{}/Patient/x1", helios.url)).await;
    assert_eq!(status, 404, "an invalid resource is never written: {body}");
    let dead = served.get("/connectors/births/dead-letters").send().await;
    assert_eq!(dead.status, 200, "{}", dead.text);
    assert!(
        dead.text
            .contains("Patient._birthDate.extension[0].valueStrng"),
        "{}",
        dead.text
    );

    // The same connector writes a valid one, extension and all.
    let good = json!({"id": "x2", "born": "2020-01-01",
        "bornExtras": {"extension": [{"url": "http://x", "valueString": "a"}]}});
    let got = push(good).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let (status, body) = get_json(&http, &format!("{}/Patient/x2", helios.url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["_birthDate"]["extension"][0]["valueString"], "a",
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_findings_print_as_fast_as_their_json() {
    let names: String = (0..10_000)
        .map(|i| format!("      - {{ family: f{i}, givn: [g] }}\n"))
        .collect();
    let dir = definition_dir(&pull_definition(
        "R4",
        "Patient",
        &format!("    name:\n{names}"),
    ));
    let timed = |format: &'static str| {
        let dir = dir.path().to_owned();
        async move {
            let started = Instant::now();
            let (code, out, _) =
                engine(&dir, &["validate", "case.yaml", "--format", format], None).await;
            (code, out, started.elapsed())
        }
    };
    // Interleaved, the best of two each: the machine is shared.
    let mut human = Duration::MAX;
    let mut json = Duration::MAX;
    for _ in 0..2 {
        let (code, out, took) = timed("json").await;
        assert_eq!(code, 1);
        assert_eq!(out.matches("no element `givn`").count(), 10_000);
        json = json.min(took);
        let (code, out, took) = timed("human").await;
        assert_eq!(code, 1);
        assert!(
            out.ends_with("10000 errors, 0 warnings\n"),
            "{}",
            &out[out.len().saturating_sub(200)..]
        );
        assert!(out.contains("case.yaml:10018:26 at spec.mapping.name[9999].givn"));
        human = human.min(took);
    }
    // Reading the definition and checking it is the same work in both; only the rendering
    // differs, and it must stay linear in the findings.
    assert!(
        human < json * 3,
        "human diagnostics took {human:?}, their JSON {json:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn year_zero_and_offsets_past_fourteen_hours_are_not_fhir() {
    // The outside validator refuses both, in R4 and R5.
    for version in ["R4", "R5"] {
        let made = json!({"resourceType": "Observation", "id": "o", "status": "final",
            "code": {"text": "x"}, "effectiveDateTime": "0000-12-31T23:59:59Z",
            "issued": "2024-05-01T10:00:00+14:30"});
        let outside = validator_errors(version, &made);
        assert!(
            outside.iter().any(|e| e.contains("effectiveDateTime"))
                && outside.iter().any(|e| e.contains("issued")),
            "{version}: {outside:?}"
        );
    }
    // engine validate refuses the literals, located.
    let dir = definition_dir(&pull_definition(
        "R4",
        "Observation",
        "    status: final\n    code: { text: x }\n    effectiveDateTime: \"0000-12-31T23:59:59Z\"\n    issued: \"2024-05-01T10:00:00+14:30\"\n    subject: { display: x }\n    meta: { lastUpdated: \"2024-05-01T10:00:00-15:00\" }\n",
    ));
    let (code, out, err) = engine(dir.path(), &["validate", "case.yaml"], None).await;
    let all = format!("{out}{err}");
    assert_eq!(code, 1, "{all}");
    for (at, value) in [
        (
            "20:24 at spec.mapping.effectiveDateTime",
            "`0000-12-31T23:59:59Z` is not a FHIR `dateTime`",
        ),
        (
            "21:13 at spec.mapping.issued",
            "`2024-05-01T10:00:00+14:30` is not a FHIR `instant`",
        ),
        (
            "23:26 at spec.mapping.meta.lastUpdated",
            "`2024-05-01T10:00:00-15:00` is not a FHIR `instant`",
        ),
    ] {
        assert!(all.contains(&format!("case.yaml:{at}")), "{at}: {all}");
        assert!(all.contains(value), "{value}: {all}");
    }
    // The run-time check refuses what `$instant` makes of a Unix time before year 1 and of an
    // offset FHIR has not.
    let dir = definition_dir(&pull_definition(
        "R4",
        "Observation",
        "    status: final\n    code: { text: x }\n    issued: { $instant: { $path: $.t } }\n",
    ));
    for (t, made) in [
        (json!(-62_135_596_801_i64), "0000-12-31T23:59:59Z"),
        (
            json!("2024-05-01T10:00:00+14:30"),
            "2024-05-01T10:00:00+14:30",
        ),
    ] {
        let input = json!([{ "t": t }]).to_string();
        let args = [
            "map",
            "-d",
            "case.yaml",
            "--connector",
            "case",
            "--input",
            "-",
            "--check",
        ];
        let (code, out, err) = engine(dir.path(), &args, Some(&input)).await;
        assert_eq!(code, 1, "{t}: {out}{err}");
        assert!(
            err.contains(&format!("`{made}` is not a FHIR `instant`")),
            "{t}: {err}"
        );
    }
}

/// A pull proxy over an R4 source `a` and an R5 source `b`, serving `Patient` and the R5-only
/// `Ingredient` (search and read).
fn mixed_proxy(r4: &FhirSource, r5: &FhirSource) -> String {
    let source = |name: &str, url: &str, version: &str| {
        format!(
            "apiVersion: fosps.gravitate-health.eu/v1\nkind: Source\nmetadata: {{ name: {name} }}\n\
             spec: {{ type: fhir, fhirVersion: {version}, url: \"{url}\", retries: 0, timeout: 5s }}\n---\n"
        )
    };
    format!(
        "{}{}{}",
        source("a", &r4.url, "R4"),
        source("b", &r5.url, "R5"),
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: proxy }
spec:
  strategy: pull
  sources: [a, b]
  pull:
    resources:
      - type: Patient
        search: { params: { _count: { type: integer, default: 20, max: 100 } } }
        read: {}
      - type: Ingredient
        search: { params: { _count: { type: integer, default: 20, max: 100 } } }
        read: {}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r5_only_type_asked_of_the_r4_base_is_not_found_and_asks_no_r4_server() {
    let (r4, r5) = tokio::join!(FhirSource::start(), FhirSource::start());
    // A server that holds what its version does not have (or a lying one).
    r4.put(json!({"resourceType": "Ingredient", "id": "i4", "role": {"text": "x"}}));
    r5.put(json!({"resourceType": "Ingredient", "id": "i5", "role": {"text": "x"}}));
    let defs = definitions(&mixed_proxy(&r4, &r5));
    let engine = EngineRouter::new(load(defs.path()), &defs.path().join("state"), TIMEOUT);

    for path in [
        "/fhir/proxy/R4/Ingredient",
        "/fhir/proxy/R4/Ingredient/i4",
        "/fhir/proxy/a/Ingredient/i4",
    ] {
        let got = engine.get(path).send().await;
        assert_outcome(
            &got,
            404,
            &[
                "`Ingredient` is not a resource type of FHIR R4",
                "/fhir/proxy/R5",
            ],
        );
    }
    assert_eq!(
        r4.calls(),
        0,
        "the R4 server is not asked for an R5-only type"
    );
    // The R5 base serves it.
    let got = engine.get("/fhir/proxy/R5/Ingredient").send().await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(
        got.json()["entry"][0]["resource"]["id"],
        "i5",
        "{}",
        got.text
    );
    let got = engine.get("/fhir/proxy/b/Ingredient/i5").send().await;
    assert_eq!(got.status, 200, "{}", got.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_lying_with_an_id_that_is_no_fhir_id_is_left_out_and_said() {
    let (r4, r5) = tokio::join!(FhirSource::start(), FhirSource::start());
    r4.put(json!({"resourceType": "Patient", "id": "1", "name": [{"family": "Honest"}]}));
    r4.put(json!({"resourceType": "Patient", "id": "a b/../../x", "name": [{"family": "Liar"}]}));
    let defs = definitions(&mixed_proxy(&r4, &r5));
    let engine = EngineRouter::new(load(defs.path()), &defs.path().join("state"), TIMEOUT);

    let got = engine.get("/fhir/proxy/R4/Patient").send().await;
    assert_eq!(got.status, 200, "{}", got.text);
    let bundle = got.json();
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    let patients: Vec<&Value> = entries
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Patient")
        .collect();
    // No URL of the engine reads the liar back, and a client resolving `../..` would land
    // elsewhere: it is not served, and the Bundle says so.
    assert_eq!(patients.len(), 1, "{bundle}");
    let url = patients[0]["fullUrl"].as_str().expect("a fullUrl");
    assert_eq!(url, "http://engine.test/fhir/proxy/a/Patient/1");
    // It reads back its own resource.
    let path = url.trim_start_matches("http://engine.test");
    let read = engine.get(path).send().await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.json()["name"][0]["family"], "Honest");
    let said = entries
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "OperationOutcome")
        .map(|e| e["resource"].to_string())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        said.contains("id rule") && said.contains("a b/../../x"),
        "{bundle}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_extension_moved_onto_another_value_by_a_left_out_null_is_reported() {
    // `_given: [null, {...}]` says the extension is the second given name's; the engine
    // leaves nulls out, so the written `_given` has one item, which FHIR reads as the first's.
    let dir = definition_dir(&pull_definition(
        "R4",
        "Patient",
        "    name:\n      - given: { $path: $.given }\n        _given: { $path: $._given }\n",
    ));
    let args = [
        "map",
        "-d",
        "case.yaml",
        "--connector",
        "case",
        "--input",
        "-",
        "--check",
    ];
    let input = json!([{"given": ["Ann", "Bea"],
        "_given": [null, {"extension": [{"url": "http://x", "valueString": "nick"}]}]}]);
    let (code, out, err) = engine(dir.path(), &args, Some(&input.to_string())).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("Patient.name[0]._given: 1 items beside the 2 of `given`"),
        "{err}"
    );
    // Aligned without a null: valid.
    let input = json!([{"given": ["Ann", "Bea"], "_given": [{"id": "a"}, {"id": "b"}]}]);
    let (code, out, err) = engine(dir.path(), &args, Some(&input.to_string())).await;
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_id_and_codes_with_control_characters_or_tabs_are_not_fhir() {
    // FHIR's `code`: "no whitespace other than single spaces in the contents"; a resource's
    // id: 1 to 64 letters, digits, `-` and `.` (validator-cli looks at neither).
    let dir = definition_dir(&pull_definition(
        "R4",
        "Patient",
        "    id: { $path: $.id }\n    language: { $path: $.lang }\n    gender: { $path: $.g }\n",
    ));
    let args = [
        "map",
        "-d",
        "case.yaml",
        "--connector",
        "case",
        "--input",
        "-",
        "--check",
    ];
    for (record, named) in [
        (
            json!({"id": "a\u{1}b", "g": "male"}),
            "`a\u{1}b` is not a FHIR `id`",
        ),
        (
            json!({"id": "a", "lang": "en\tUS"}),
            "`en\tUS` is not a FHIR `code`",
        ),
        (
            json!({"id": "a", "g": "ma  le"}),
            "`ma  le` is not a FHIR `code`",
        ),
        (
            json!({"id": "a", "lang": "en\nUS"}),
            "`en\nUS` is not a FHIR `code`",
        ),
    ] {
        let input = json!([record]).to_string();
        let (code, out, err) = engine(dir.path(), &args, Some(&input)).await;
        assert_eq!(code, 1, "{record}: {out}{err}");
        assert!(err.contains(named), "{record}: {err}");
    }
    // engine validate refuses a literal id that is no FHIR id, located.
    let dir = definition_dir(&pull_definition(
        "R4",
        "Patient",
        "    id: \"p 1\"\n    language: \"en US\"\n",
    ));
    let (code, out, err) = engine(dir.path(), &["validate", "case.yaml"], None).await;
    let all = format!("{out}{err}");
    assert_eq!(code, 1, "{all}");
    assert!(all.contains("case.yaml:18:9 at spec.mapping.id"), "{all}");
    assert!(all.contains("`p 1` is not a FHIR `id`"), "{all}");
    assert!(
        !all.contains("spec.mapping.language"),
        "`en US` is a code: {all}"
    );
}
