//! Issue 13's features tried from outside, as a hostile tester would: CSV, XML, FHIR XML and
//! NDJSON inputs with the quirks real exports have (byte-order marks, CRLF, UTF-16, mixed
//! content, two roots, padded FHIR values), the mapping functions at their edges (leap
//! seconds, DST gaps, huge Unix times, numbers past 28 digits), token search edges, and
//! `engine validate` on malformed definitions of these features.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::engine_under_test::{definitions, load};
use engine::model::decode::{
    CsvFormat, DecodeError, Format, Limits, Step, TextEncoding, XmlFormat, decode,
};
use engine::model::vocabulary::FhirVersion;

const LIMITS: Limits = Limits {
    max_values: 500_000,
};

fn csv(bytes: &[u8]) -> Result<Value, DecodeError> {
    decode(&Format::Csv(CsvFormat::default()), bytes, LIMITS)
}

fn xml(bytes: &[u8]) -> Result<Value, DecodeError> {
    decode(&Format::Xml(XmlFormat::default()), bytes, LIMITS)
}

fn fhir_xml(bytes: &[u8]) -> Result<Value, DecodeError> {
    decode(&Format::FhirXml(FhirVersion::R4), bytes, LIMITS)
}

fn utf16le_with_bom(s: &str) -> Vec<u8> {
    let mut out = vec![0xFF, 0xFE];
    for u in s.encode_utf16() {
        out.extend_from_slice(&u.to_le_bytes());
    }
    out
}

#[test]
fn csv_with_a_bom_crlf_quoted_newlines_and_a_blank_last_line() {
    let got = csv(b"\xEF\xBB\xBFid,note\r\n1,\"two\r\nlines\"\r\n2,x\r\n\r\n").expect("decoded");
    assert_eq!(
        got,
        json!([{"id": "1", "note": "two\r\nlines"}, {"id": "2", "note": "x"}])
    );
    assert_eq!(csv(b"id,name\r\n").expect("header only"), json!([]));
    assert_eq!(csv(b"id,name").expect("header, no newline"), json!([]));
}

#[test]
fn csv_in_utf16_or_with_a_bom_of_another_encoding_reads_the_bom() {
    // Excel's "Unicode text" export: UTF-16LE with its BOM, declared as such.
    let f = CsvFormat {
        encoding: TextEncoding::for_label("utf-16le").expect("label"),
        ..CsvFormat::default()
    };
    let bytes = utf16le_with_bom("id,name\r\n1,Müller\r\n");
    let got = decode(&Format::Csv(f), &bytes, LIMITS).expect("decoded");
    assert_eq!(got, json!([{"id": "1", "name": "Müller"}]));
    // A UTF-8 file (with its BOM) declared windows-1252: the BOM says what it is.
    let f = CsvFormat {
        encoding: TextEncoding::for_label("windows-1252").expect("label"),
        ..CsvFormat::default()
    };
    let got = decode(
        &Format::Csv(f),
        "\u{feff}id,name\n1,Müller\n".as_bytes(),
        LIMITS,
    )
    .expect("decoded");
    assert_eq!(got, json!([{"id": "1", "name": "Müller"}]));
}

#[test]
fn csv_errors_name_the_data_record_and_its_line() {
    // A blank line before the open quote is not a record.
    let err = csv(b"id,name\n\n1,ok\n2,\"open\n3,x\n").expect_err("open quote");
    assert_eq!(
        err.to_string(),
        "CSV record 2 (line 4): a quoted field is never closed"
    );
    // Old Mac line ends (a lone CR): an open quote was read to the end without a word.
    let err = csv(b"id,name\r1,ok\r2,\"open\r3,x\r").expect_err("open quote, CR lines");
    assert_eq!(
        err.to_string(),
        "CSV record 2 (line 3): a quoted field is never closed"
    );
    let err = csv(b"a,b\n1\n").expect_err("short row");
    assert_eq!(
        err.to_string(),
        "CSV record 1 (line 2): 1 cell where the header has 2 columns"
    );
    let err = csv(b"a,b\n1,2,3\n").expect_err("long row");
    assert_eq!(
        err.to_string(),
        "CSV record 1 (line 2): 3 cells where the header has 2 columns"
    );
    let err = csv(b"a, a \n1,2\n").expect_err("a column twice after trimming");
    assert_eq!(
        err.to_string(),
        "CSV header (line 1): the header names column `a` twice"
    );
    let err = csv(b"id\nok\nM\xFCller\n").expect_err("latin1 declared utf-8");
    assert_eq!(
        err.to_string(),
        "not UTF-8 text at line 3, column 2 (byte 7)"
    );
}

#[test]
fn xml_mixed_content_cdata_comments_and_entities_in_attributes() {
    let got = xml(br#"<?xml version="1.0"?><?app keep?>
<p lang="de" v="&amp;&#x41;&lt;">Take <b>two</b> daily<!-- c --><?pi x?> <![CDATA[<with food>]]></p>"#)
    .expect("decoded");
    assert_eq!(
        got,
        json!({"@lang": "de", "@v": "&A<", "b": "two", "#text": "Take daily <with food>"})
    );
}

#[test]
fn xml_namespaces_redeclared_and_default_select_records() {
    let doc = br#"<r:root xmlns:r="urn:a" xmlns="urn:a">
  <item><n>1</n></item>
  <item xmlns="urn:b"><n>other</n></item>
  <x:item xmlns:x="urn:a"><n>2</n></x:item>
</r:root>"#;
    let mut f = XmlFormat {
        records: vec![
            Step {
                namespace: None,
                local: "root".into(),
            },
            Step {
                namespace: Some("urn:a".into()),
                local: "item".into(),
            },
        ],
        ..XmlFormat::default()
    };
    f.namespaces.insert("a".into(), "urn:a".into());
    let got = decode(&Format::Xml(f.clone()), doc, LIMITS).expect("decoded");
    assert_eq!(got, json!([{"n": "1"}, {"n": "2"}]));
    f.records[1].local = "nothing".into();
    assert_eq!(
        decode(&Format::Xml(f), doc, LIMITS).expect("decoded"),
        json!([])
    );
}

#[test]
fn xml_in_utf16_with_a_bom_is_read() {
    let bytes = utf16le_with_bom("<?xml version=\"1.0\" encoding=\"UTF-16\"?><a><b>Grüße</b></a>");
    assert_eq!(xml(&bytes).expect("decoded"), json!({"b": "Grüße"}));
}

#[test]
fn xml_with_two_roots_or_text_outside_the_root_is_an_error() {
    let err = xml(b"<a>1</a>\n<a>2</a>").expect_err("two roots");
    assert!(
        matches!(&err, DecodeError::Xml { line: 2, column: 1, message } if message.contains("second root")),
        "{err}"
    );
    let err = xml(b"<a>1</a>\ntrailing words").expect_err("text after the root");
    assert!(
        matches!(&err, DecodeError::Xml { line: 2, column: 1, message } if message.contains("outside the root")),
        "{err}"
    );
}

#[test]
fn xml_a_10_mb_text_node_is_read_in_bounded_time() {
    let big = "x".repeat(10 << 20);
    let doc = format!("<a><b>{big}</b></a>");
    let started = Instant::now();
    let got = xml(doc.as_bytes()).expect("decoded");
    assert_eq!(got["b"].as_str().map(str::len), Some(10 << 20));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn fhir_xml_repeating_primitives_with_extensions_padded_values_and_nested_bundles() {
    let doc = br#"<Bundle xmlns="http://hl7.org/fhir"><type value=" collection "/>
<entry><resource><Bundle><type value="collection"/><entry><resource>
<Patient><id value="p1"/><active value=" true "/>
<name><given><extension url="http://e/x"><valueString value="a"/></extension></given><given value="Jo"/></name>
<multipleBirthInteger value=" 2 "/>
<contained><Organization><id value="o1"/></Organization></contained>
</Patient></resource></entry></Bundle></resource></entry></Bundle>"#;
    let got = fhir_xml(doc).expect("decoded");
    assert_eq!(got["type"], "collection");
    let p = &got["entry"][0]["resource"]["entry"][0]["resource"];
    assert_eq!(p["active"], json!(true));
    assert_eq!(p["multipleBirthInteger"], json!(2));
    assert_eq!(p["name"][0]["given"], json!([null, "Jo"]));
    assert_eq!(
        p["name"][0]["_given"],
        json!([{"extension": [{"url": "http://e/x", "valueString": "a"}]}, null])
    );
    assert_eq!(p["contained"][0]["id"], "o1");
}

#[test]
fn fhir_xml_integers_outside_their_fhir_range_and_foreign_elements_are_errors() {
    let patient = |inner: &str| {
        format!("<Patient xmlns=\"http://hl7.org/fhir\">\n{inner}</Patient>").into_bytes()
    };
    let err = fhir_xml(&patient("<multipleBirthInteger value=\"3000000000\"/>"))
        .expect_err("over 32 bits");
    assert!(err.to_string().contains("not a FHIR integer"), "{err}");
    let err = fhir_xml(&patient("<multipleBirthInteger value=\"+2\"/>")).expect_err("a sign");
    assert!(err.to_string().contains("not a FHIR integer"), "{err}");
    let err = fhir_xml(&patient("<x:gender xmlns:x=\"urn:other\" value=\"male\"/>"))
        .expect_err("another namespace");
    assert!(
        matches!(&err, DecodeError::Xml { line: 2, message, .. } if message.contains("FHIR namespace")),
        "{err}"
    );
}

#[test]
fn ndjson_with_a_bom_crlf_blank_lines_and_no_last_newline() {
    let got = decode(
        &Format::Ndjson,
        b"\xEF\xBB\xBF{\"a\":1}\r\n\r\n   \r\n{\"a\":2}",
        LIMITS,
    )
    .expect("decoded");
    assert_eq!(got, json!([{"a": 1}, {"a": 2}]));
}

/// A push connector in `Europe/Vienna` whose Basic's `code.text` is `text` (a YAML value).
fn mapped(text: &str, record: &Value) -> Result<String, String> {
    let defs = definitions(&format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: edge }}
spec:
  strategy: push
  timeZone: Europe/Vienna
  push:
    auth: {{ bearer: {{ token: token-0123456789 }} }}
  mapping:
    resourceType: Basic
    code: {{ text: {text} }}
"
    ));
    let model = load(defs.path());
    let connector = model.connector("edge").expect("the connector");
    connector
        .map_document(record, &json!({}))
        .map(|out| match &out[0]["code"]["text"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .map_err(|e| e.to_string())
}

fn parse_date_time(input: &str, format: &str) -> Result<String, String> {
    mapped(
        &format!("{{ $parseDateTime: [{{ $path: $.t }}, '{format}'] }}"),
        &json!({ "t": input }),
    )
}

#[test]
fn dates_at_their_edges() {
    // A leap second is a FHIR time (seconds 60 are allowed).
    assert_eq!(
        parse_date_time("2016-12-31 23:59:60 +0000", "%Y-%m-%d %H:%M:%S %z").as_deref(),
        Ok("2016-12-31T23:59:60+00:00")
    );
    assert_eq!(
        parse_date_time("29.02.2024", "%d.%m.%Y").as_deref(),
        Ok("2024-02-29")
    );
    let e = parse_date_time("29.02.2023", "%d.%m.%Y").expect_err("no such day");
    assert!(e.contains("`29.02.2023` does not match"), "{e}");
    // The hour Vienna's clocks skip, and the one they repeat.
    let e = parse_date_time("29.03.2026 02:30", "%d.%m.%Y %H:%M").expect_err("skipped");
    assert!(e.contains("the clocks skip it"), "{e}");
    assert_eq!(
        parse_date_time("25.10.2026 02:30", "%d.%m.%Y %H:%M").as_deref(),
        Ok("2026-10-25T02:30:00+02:00")
    );
    // Two-digit years: 70 to 99 are 19xx, 00 to 69 are 20xx, with a day or without.
    assert_eq!(
        parse_date_time("05.01.70", "%d.%m.%y").as_deref(),
        Ok("1970-01-05")
    );
    assert_eq!(
        parse_date_time("05.01.69", "%d.%m.%y").as_deref(),
        Ok("2069-01-05")
    );
    assert_eq!(parse_date_time("01/69", "%m/%y").as_deref(), Ok("2069-01"));
    assert_eq!(parse_date_time("01/70", "%m/%y").as_deref(), Ok("1970-01"));
    // Unix times before 1970, and ones too large for any calendar.
    assert_eq!(
        parse_date_time("-1", "unix").as_deref(),
        Ok("1970-01-01T00:59:59+01:00")
    );
    let e = parse_date_time("99999999999999", "unix").expect_err("huge");
    assert!(e.contains("outside FHIR's years 1 to 9999"), "{e}");
    let e = parse_date_time("-99999999999999999", "unixMillis").expect_err("huge");
    assert!(e.contains("outside FHIR's years 1 to 9999"), "{e}");
}

fn op(expr: &str) -> Result<String, String> {
    mapped(&format!("{{ $string: {expr} }}"), &json!({}))
}

#[test]
fn numbers_at_their_edges() {
    let e = mapped(
        "{ $string: { $divide: [1, { $path: $.zero }] } }",
        &json!({ "zero": "0.000" }),
    )
    .expect_err("division by zero");
    assert!(e.contains("division by zero"), "{e}");
    assert_eq!(op("{ $round: ['2.5'] }").as_deref(), Ok("3"));
    assert_eq!(op("{ $round: ['-2.5'] }").as_deref(), Ok("-3"));
    assert_eq!(op("{ $round: ['0.125', 2] }").as_deref(), Ok("0.13"));
    // 28 digits are exact where the result is text (an operator's JSON number is a double).
    assert_eq!(
        mapped("\"{{add '9999999999999999999999999999' 0}}\"", &json!({})).as_deref(),
        Ok("9999999999999999999999999999")
    );
    // Past 28 digits: an error that says so, never "not a number".
    let big = json!({ "n": "123456789012345678901234567890", "m": "9999999999999999999999999999" });
    let e = mapped("{ $string: { $add: [{ $path: $.n }, 1] } }", &big).expect_err("30 digits");
    assert!(e.contains("too large for a decimal of 28 digits"), "{e}");
    let e = mapped("{ $string: { $multiply: [{ $path: $.m }, 10] } }", &big).expect_err("overflow");
    assert!(e.contains("too large for a decimal of 28 digits"), "{e}");
    // Two signs are no number, however many digits follow.
    let e = mapped(
        "{ $string: { $add: [{ $path: $.bad }, 1] } }",
        &json!({ "bad": "+-5" }),
    )
    .expect_err("two signs");
    assert!(e.contains("`+-5` is not a number"), "{e}");
}

#[test]
fn text_functions_at_their_edges() {
    // Decomposed text (`é` as `e` + U+0301, as macOS and some exports write it) stays one word.
    assert_eq!(
        mapped(
            "{ $titleCase: { $path: $.n } }",
            &json!({ "n": "he\u{301}le\u{300}ne de\u{301}LAGE" })
        )
        .as_deref(),
        Ok("He\u{301}le\u{300}ne De\u{301}lage")
    );
    let record = json!({ "s": "Grüße, Ωμέγα" });
    assert_eq!(
        mapped("{ $capture: [{ $path: $.s }, '(\\p{Greek}+)'] }", &record).as_deref(),
        Ok("Ωμέγα")
    );
    assert_eq!(
        mapped(
            "{ $string: { $match: [{ $path: $.s }, '^\\w+,'] } }",
            &record
        )
        .as_deref(),
        Ok("true")
    );
}

fn token_param(systems: &[&str]) -> engine::model::search_params::Param {
    engine::model::search_params::Param {
        kind: engine::model::vocabulary::ParamType::Token,
        required: false,
        default: None,
        max: None,
        description: None,
        systems: systems.iter().map(|s| (*s).to_owned()).collect(),
        other_system: engine::model::vocabulary::OtherSystem::Refuse,
        modifiers: Vec::new(),
    }
}

#[test]
fn token_search_with_unicode_escapes_and_count_edges() {
    use engine::model::search_params::{MAX_COUNT, parse};
    let declared = [("code".to_owned(), token_param(&["urn:sys|a"]))].into();
    let q = |pairs: &[(&str, &str)]| {
        let raw: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse(&declared, &raw)
    };
    // A `|` inside the system written `\|`, a comma inside the code written `\,`, unicode.
    let got = q(&[("code", "urn:sys\\|a|Grüße\\,ß")]).expect("read");
    assert_eq!(
        got.params["code"],
        json!({"system": "urn:sys|a", "code": "Grüße,ß", "text": "urn:sys\\|a|Grüße\\,ß"})
    );
    // `_count=0` asks for no entries; a huge `_count` is capped, as a smaller one over the cap.
    assert_eq!(q(&[("_count", "0")]).expect("zero").count, 0);
    assert_eq!(
        q(&[("_count", "99999999999999999999999")])
            .expect("huge")
            .count,
        MAX_COUNT as usize
    );
    let e = q(&[("_count", "-99999999999999999999999")]).expect_err("negative");
    assert!(e.to_string().contains("cannot be negative"), "{e}");
}

/// The human diagnostics of validating the definitions in `dir`.
fn diagnostics(dir: &std::path::Path) -> String {
    use engine::config::diagnostic::{Format, render};
    use engine::config::validate::{Options, validate};
    let (files, read_errors) =
        engine::config::load::read_all(&[dir.to_path_buf()]).expect("readable definitions");
    let opts = Options {
        allow_unresolved: false,
        run_tests: true,
        fhir_schema: None,
        env: &engine::config::secrets::ProcessEnvironment,
    };
    let outcome = validate(&files, read_errors, &opts);
    render(
        &outcome.diagnostics,
        Format::Human,
        &|p: &std::path::Path| outcome.texts.get(p).cloned(),
    )
}

/// A cron connector over a file source with `format` and `extra` under `spec`.
fn file_connector(path: &str, format: &str, extra: &str, text: &str) -> String {
    format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: files }}
spec:
  strategy: cron
  schedule: {{ cron: \"0 3 * * *\" }}
  source:
    path: {path}
    format: {format}
  fetch:
    request: {{ path: / }}
    records: $[*]
{extra}  mapping:
    resourceType: Basic
    code: {{ text: {text} }}
"
    )
}

#[test]
fn validate_places_malformed_format_table_path_and_pattern_settings() {
    let dir = definitions(&file_connector(
        "in/*.csv",
        "{ type: csv, delimter: \";\" }",
        "",
        "x",
    ));
    let got = diagnostics(dir.path());
    assert!(got.contains("delimter"), "{got}");
    assert!(got.contains("definitions.yaml:9:"), "{got}");
    // A table file that is a folder.
    let dir = definitions(&file_connector(
        "in/*.csv",
        "{ type: csv }",
        "  tables:\n    units: { file: units.csv }\n",
        "\"{{translate 'units' record.u}}\"",
    ));
    std::fs::create_dir(dir.path().join("units.csv")).expect("a folder");
    let got = diagnostics(dir.path());
    assert!(got.contains("definitions.yaml:14:"), "{got}");
    let message = got.lines().next().unwrap_or_default();
    assert!(message.contains("`units.csv`"), "{got}");
    assert!(
        !message.contains(&dir.path().display().to_string()),
        "{got}"
    );
    // A lookahead, which the regex crate does not have.
    let dir = definitions(&file_connector(
        "in/*.csv",
        "{ type: csv }",
        "",
        "{ $capture: [{ $path: $.s }, 'a(?=b)'] }",
    ));
    let got = diagnostics(dir.path());
    assert!(got.contains("definitions.yaml:15:48"), "{got}");
    assert!(got.contains("look-around"), "{got}");
}

/// Makes a named pipe at `path` (`mkfifo`, of coreutils).
fn fifo(path: &std::path::Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo (coreutils) runs");
    assert!(status.success(), "mkfifo failed");
}

#[tokio::test]
async fn a_named_pipe_among_the_files_never_blocks_a_run() {
    use crate::engine_under_test::{run_with_deadline, runner_with_sink_dir};
    const DEADLINE: Duration = Duration::from_secs(20);
    // A glob over a folder where a pipe matches too: the pipe is no file, the CSV is read.
    let defs = definitions(&file_connector(
        "in/*.csv",
        "{ type: csv }",
        "",
        "\"{{record.code}}\"",
    ));
    let dir = defs.path().join("in");
    std::fs::create_dir(&dir).expect("in/");
    std::fs::write(dir.join("a.csv"), "code\nx1\nx2\n").expect("write");
    fifo(&dir.join("b.csv"));
    let state = tempfile::tempdir().expect("state");
    let sink = tempfile::tempdir().expect("sink");
    let runner = runner_with_sink_dir(&load(defs.path()), "files", state.path(), sink.path());
    let started = Instant::now();
    let report = run_with_deadline(&runner, DEADLINE).await;
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!(report.records_read, 2);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // A path naming the pipe itself fails at once, named as the definition writes it.
    let defs = definitions(&file_connector("in/b.csv", "{ type: csv }", "", "x"));
    std::fs::create_dir(defs.path().join("in")).expect("in/");
    fifo(&defs.path().join("in/b.csv"));
    let runner = runner_with_sink_dir(&load(defs.path()), "files", state.path(), sink.path());
    let started = Instant::now();
    let report = run_with_deadline(&runner, DEADLINE).await;
    assert!(!report.ok());
    let reasons = format!("{:?}", report.failures);
    assert!(
        reasons.contains("in/b.csv") && reasons.contains("not a regular file"),
        "{reasons}"
    );
    assert!(
        !reasons.contains(&defs.path().display().to_string()),
        "{reasons}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// A pull connector serving Patients from the file `data/{file}` in `format`.
fn patients_from_file(file: &str, format: &str) -> String {
    format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: local }}
spec:
  strategy: pull
  source:
    path: data/{file}
    format: {format}
  pull:
    resources:
      - type: Patient
        search:
          request: {{ path: / }}
          records: $[*]
"
    )
}

#[tokio::test]
async fn count_zero_and_huge_counts_over_a_file_source() {
    use crate::engine_router::open_engine;
    use crate::local_http::assert_outcome;
    let (engine, defs, _state) = open_engine(
        &patients_from_file("p.ndjson", "{ type: ndjson }"),
        Duration::from_secs(20),
    );
    std::fs::create_dir(defs.path().join("data")).expect("data");
    let rows: String = ["a", "b", "c"]
        .iter()
        .map(|id| format!("{{\"resourceType\":\"Patient\",\"id\":\"{id}\"}}\r\n"))
        .collect();
    std::fs::write(defs.path().join("data/p.ndjson"), rows).expect("write");
    let url = |query: &str| format!("{}/fhir/local/Patient?{query}", engine.base);
    // `_count=0`: no entries and no `next` link (which would name this same page again).
    let got = engine.get(url("_count=0")).send().await;
    assert_eq!(got.status, 200, "{}", got.text);
    let bundle = got.json();
    assert!(
        bundle.get("entry").is_none_or(|e| e == &json!([])),
        "{bundle}"
    );
    let links = bundle["link"].as_array().cloned().unwrap_or_default();
    assert!(links.iter().all(|l| l["relation"] != "next"), "{bundle}");
    // A `_count` past 64 bits is the cap: every row.
    let got = engine
        .get(url("_count=99999999999999999999999"))
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json()["entry"].as_array().map(Vec::len), Some(3));
    let got = engine
        .get(url("_count=-99999999999999999999999"))
        .send()
        .await;
    assert_outcome(&got, 400, &["cannot be negative"]);
}

#[tokio::test]
async fn a_pull_route_over_a_malformed_xml_file_names_its_line() {
    use crate::engine_router::open_engine;
    use crate::local_http::assert_outcome;
    let (engine, defs, _state) = open_engine(
        &patients_from_file("p.xml", "{ type: xml, records: [patients, Patient] }"),
        Duration::from_secs(20),
    );
    std::fs::create_dir(defs.path().join("data")).expect("data");
    std::fs::write(
        defs.path().join("data/p.xml"),
        "<patients><Patient><resourceType>Patient</resourceType><id>a</id></Patient></patients>\n<patients/>\n",
    )
    .expect("write");
    let got = engine
        .get(format!("{}/fhir/local/Patient", engine.base))
        .send()
        .await;
    assert_outcome(
        &got,
        502,
        &["data/p.xml", "line 2, column 1", "second root"],
    );
    assert!(
        !got.text.contains(&defs.path().display().to_string()),
        "{}",
        got.text
    );
}

#[test]
fn fhir_xml_attributes_it_does_not_read_are_errors_not_silently_dropped() {
    let patient = |inner: &str| {
        format!(
            "<Patient xmlns=\"http://hl7.org/fhir\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:schemaLocation=\"http://hl7.org/fhir fhir-all.xsd\">\n{inner}</Patient>"
        )
        .into_bytes()
    };
    // A misspelt `value`: the birth date would be gone without a word.
    let err = fhir_xml(&patient("<birthDate valu=\"1970-01-01\"/>")).expect_err("valu");
    assert!(
        matches!(&err, DecodeError::Xml { line: 2, message, .. } if message.contains("<birthDate> has no attribute `valu`")),
        "{err}"
    );
    // A `value` on an element that is not a primitive.
    let err = fhir_xml(&patient("<maritalStatus value=\"M\"/>")).expect_err("not a primitive");
    assert!(
        err.to_string()
            .contains("<maritalStatus> has no attribute `value`"),
        "{err}"
    );
    // The schema location (a prefixed attribute) is fine.
    let got = fhir_xml(&patient("<birthDate value=\"1970-01-01\"/>")).expect("read");
    assert_eq!(got["birthDate"], "1970-01-01");
}

#[test]
fn declared_csv_columns_are_trimmed_as_a_header_rows_are() {
    let dir = definitions(&file_connector(
        "in/*.csv",
        "{ type: csv, columns: [a, \" a\"] }",
        "",
        "x",
    ));
    let got = diagnostics(dir.path());
    assert!(got.contains("column `a` is named twice"), "{got}");
    assert!(got.contains("definitions.yaml:9:"), "{got}");
    let dir = definitions(&file_connector(
        "in/*.csv",
        "{ type: csv, header: false, columns: [\"code \", \" name\"] }",
        "",
        "x",
    ));
    let model = load(dir.path());
    let source = &model.connector("files").expect("the connector").sources[0];
    let Format::Csv(f) = &source.format else {
        panic!("{:?}", source.format)
    };
    assert_eq!(f.columns, ["code", "name"]);
}

#[test]
fn ndjson_files_joined_with_their_byte_order_marks_and_clashing_xml_attributes() {
    // Two exports joined with `cat`: the second one's mark starts line 2.
    let got = decode(
        &Format::Ndjson,
        b"\xEF\xBB\xBF{\"a\":1}\n\xEF\xBB\xBF{\"a\":2}\n",
        LIMITS,
    )
    .expect("decoded");
    assert_eq!(got, json!([{"a": 1}, {"a": 2}]));
    // `type` and `xsi:type` share the key `@type`: one would be lost.
    let err = xml(b"<a xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n<v type=\"x\" xsi:type=\"PQ\"/></a>")
        .expect_err("a clash");
    assert!(
        matches!(&err, DecodeError::Xml { line: 2, message, .. } if message.contains("two attributes named `type`")),
        "{err}"
    );
}

/// `diagnostics` of `dir`, or a panic when they take longer than 20 seconds.
fn diagnostics_in_time(dir: &std::path::Path) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(diagnostics(&dir));
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("validation ends in time")
}

#[test]
fn table_files_that_are_pipes_or_leave_a_quote_open_are_refused() {
    let mapping = "\"{{translate 'units' record.u}}\"";
    let tables = "  tables:\n    units: { file: units.csv }\n";
    // A named pipe: opening it waits for a writer, for ever.
    let dir = definitions(&file_connector(
        "in/*.csv",
        "{ type: csv }",
        tables,
        mapping,
    ));
    fifo(&dir.path().join("units.csv"));
    let got = diagnostics_in_time(dir.path());
    assert!(got.contains("definitions.yaml:14:"), "{got}");
    assert!(got.contains("`units.csv`: not a regular file"), "{got}");
    // A quote left open in the last column swallows the rows after it into one value.
    let dir = definitions(&file_connector(
        "in/*.csv",
        "{ type: csv }",
        tables,
        mapping,
    ));
    std::fs::write(dir.path().join("units.csv"), "local,ucum\nmg,\"mg\nl,L\n").expect("write");
    let got = diagnostics_in_time(dir.path());
    assert!(got.contains("definitions.yaml:14:"), "{got}");
    assert!(
        got.contains("record 1 (line 2): a quoted field is never closed"),
        "{got}"
    );
}

#[test]
fn pipes_among_definitions_test_files_and_secrets_and_tables_above_the_folder_are_refused() {
    // A table file above the definition's folder is refused as a file source's path is.
    let mapping = "\"{{translate 'units' record.u}}\"";
    let dir = definitions(&file_connector(
        "in/*.csv",
        "{ type: csv }",
        "  tables:\n    units: { file: ../units.csv }\n",
        mapping,
    ));
    let got = diagnostics_in_time(dir.path());
    assert!(got.contains("definitions.yaml:14:"), "{got}");
    assert!(
        got.contains("`../units.csv` leaves the definition's directory"),
        "{got}"
    );
    // A definition test whose input file is a named pipe, in a format read as bytes and in
    // JSON: each refused, neither waits for a writer.
    for (format, name) in [("{ type: csv }", "in.csv"), ("{ type: json }", "in.json")] {
        let text = file_connector("in/*.csv", format, "", "x")
            + &format!("  tests:\n    - name: piped\n      inputFile: {name}\n      expect: []\n");
        let dir = definitions(&text);
        fifo(&dir.path().join(name));
        let got = diagnostics_in_time(dir.path());
        assert!(
            got.contains(&format!("cannot read `{name}`: not a regular file")),
            "{got}"
        );
    }
    // A `${file:}` secret that is a named pipe.
    let dir = definitions(
        "apiVersion: fosps.gravitate-health.eu/v1\nkind: Connector\nmetadata: { name: inbox }\n\
         spec:\n  strategy: push\n  push:\n    auth: { bearer: { token: \"${file:token.txt}\" } }\n\
         \x20 mapping: { resourceType: Basic, code: { text: x } }\n",
    );
    fifo(&dir.path().join("token.txt"));
    let got = diagnostics_in_time(dir.path());
    assert!(
        got.contains("token.txt") && got.contains("not a regular file"),
        "{got}"
    );
    // A definition file that is a named pipe.
    let dir = definitions(&file_connector("in/*.csv", "{ type: csv }", "", "x"));
    fifo(&dir.path().join("piped.yaml"));
    let got = diagnostics_in_time(dir.path());
    assert!(
        got.contains("piped.yaml:1:1") && got.contains("not a regular file"),
        "{got}"
    );
}
