//! A source's answer parsed keeping only what the definition reads (issue 16, part 5): every
//! example's and shipped definition's own tests map their input alike parsed whole and parsed
//! with the route's shape; and a real `engine serve` searching a 127.0.0.1 source whose large
//! answer it reads little of answers what the full parse gives, in bounded memory.

use std::path::PathBuf;
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::get;
use engine::config::secrets::ProcessEnvironment;
use engine::config::validate::{Options, validate};
use engine::model::decode::json_reading;
use engine::model::reads::Reads;
use engine::model::vocabulary::Interaction;
use engine::model::{Connector, Test};
use engine::runtime::pull::projection::document_reads;
use serde_json::{Value, json};

use crate::engine_under_test::definitions;
use crate::local_http::{bind, client, send, spawn_app};
use crate::serve_process::ServeProcess;

/// Longest one request of a test may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a definition test's run reads of its input, as the route (or the mapping of a
/// document) would parse it.
fn test_reads(c: &Connector, t: &Test) -> Reads {
    match c.pull_resource(t.resource_type.as_deref(), t.interaction) {
        Some(res) => match (t.interaction, &res.search, &res.read) {
            (Interaction::Read, _, Some(read)) => document_reads(
                c,
                Some(&read.records),
                c.mapping_for(res, Interaction::Read),
            ),
            (Interaction::Search, Some(search), _) => document_reads(
                c,
                Some(&search.records),
                c.mapping_for(res, Interaction::Search),
            ),
            _ => document_reads(c, c.records(), c.mapping.as_ref()),
        },
        None => document_reads(c, c.records(), c.mapping.as_ref()),
    }
}

/// `t` with another input.
fn with_input(t: &Test, input: Value) -> Test {
    Test {
        name: t.name.clone(),
        at: t.at.clone(),
        input,
        params: t.params.clone(),
        resource_type: t.resource_type.clone(),
        interaction: t.interaction,
        id: t.id.clone(),
        expect: t.expect.clone(),
        match_mode: t.match_mode,
        expect_error: t.expect_error.clone(),
    }
}

/// Every test of every connector in `dir` runs alike on its input parsed whole and parsed
/// with its shape; gives how many tests ran and how many read less than everything.
fn same_with_projection(dir: PathBuf) -> (usize, usize) {
    let (files, errors) =
        engine::config::load::read_all(std::slice::from_ref(&dir)).expect("definitions");
    let opts = Options {
        allow_unresolved: true,
        // The tests are read (and run, as `engine validate` runs them) only when asked.
        run_tests: true,
        fhir_schema: None,
        env: &ProcessEnvironment,
    };
    let model = validate(&files, errors, &opts)
        .model
        .unwrap_or_else(|| panic!("{} is valid", dir.display()));
    let (mut ran, mut projected) = (0, 0);
    for c in &model.connectors {
        for t in &c.tests {
            let reads = test_reads(c, t);
            let text = serde_json::to_vec(&t.input).expect("JSON");
            let shaped = json_reading(&text, &reads).expect("the input parses with its shape");
            if !reads.is_all() {
                projected += 1;
            }
            let whole = c.run_test(t).map_err(|e| e.to_string());
            let parts = c
                .run_test(&with_input(t, shaped))
                .map_err(|e| e.to_string());
            assert_eq!(
                parts, whole,
                "{} test `{}`: the projected parse maps differently",
                c.name, t.name
            );
            ran += 1;
        }
    }
    (ran, projected)
}

#[test]
fn every_example_and_shipped_test_maps_alike_with_the_projected_parse() {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let mut ran = 0;
    let mut projected = 0;
    let examples = std::fs::read_dir(root.join("examples")).expect("examples");
    let mut dirs: Vec<PathBuf> = examples
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.push(root.join("connectors.d"));
    for dir in dirs {
        let (r, p) = same_with_projection(dir);
        ran += r;
        projected += p;
    }
    assert!(ran >= 15, "the definitions' tests ran ({ran})");
    assert!(
        projected * 2 >= ran,
        "most tests read less than their whole input ({projected} of {ran})"
    );
}

/// An answer of `n` records, each with an unread member of about 20 KB of small values (the
/// costliest to build: a key and a value per 10 bytes of text), an `$each` over codes and a
/// flag the mapping reads.
fn large_answer(n: usize) -> Bytes {
    let blob: String = (0..2_000)
        .map(|k| format!("\"k{k:04}\":{k}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut body = String::from(r#"{"meta":{"note":"unread"},"results":["#);
    for i in 0..n {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"id":"r{i}","name":"Name {i}","active":{},"codes":[{{"c":"a{i}","x":"unread"}},{{"c":"b{i}"}}],"blob":{{{blob}}},"text":{{"div":"<div>unread narrative {i}</div>"}}}}"#,
            i % 2 == 0
        ));
    }
    body.push_str("]}");
    Bytes::from(body)
}

/// The peak resident set (VmHWM) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmHWM line")
}

const LARGE: &str = r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: large }
spec:
  strategy: pull
  source: { url: "API", timeout: 50s, retries: 0, maxAnswer: 128MiB, maxValues: 20000000 }
  pull:
    resources:
      - type: Patient
        search:
          request: { path: /records }
          records: $.results[*]
  mapping:
    resourceType: Patient
    id: { $path: $.id }
    active: { $path: $.active }
    name:
      - text: "{{record.name}}"
    identifier:
      - $each: $.codes[*]
        $do:
          value: { $path: "@.c" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_read_little_of_is_mapped_as_parsed_whole_in_bounded_memory() {
    const RECORDS: usize = 2_000;
    let answer = large_answer(RECORDS);
    let size = answer.len();
    assert!(size > 40 << 20, "the answer is large ({size} bytes)");
    let (listener, api) = bind().await;
    let app = axum::Router::new().route(
        "/records",
        get(move || {
            let body = answer.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let _api = spawn_app(listener, app);
    let defs = definitions(&LARGE.replace("API", &api));
    let state = tempfile::tempdir().expect("state");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.arg("serve")
        .arg(defs.path())
        .arg("--state-dir")
        .arg(state.path())
        .arg("--request-timeout")
        .arg("55s")
        .env_remove("ENGINE_PUBLIC_URL");
    let server = ServeProcess::start(cmd, Duration::from_secs(20)).await;
    let pid = server.child.id().expect("a running engine");
    let before = peak_rss_kib(pid);

    let http = client(CLIENT_TIMEOUT);
    let got = send(http.get(format!("{}/fhir/large/Patient?_count=50", server.base))).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let bundle = got.json();
    let peak = peak_rss_kib(pid);

    // What the full parse makes of the same answer, mapped by the same definition.
    let model = crate::engine_under_test::load(defs.path());
    let connector = model.connector("large").expect("connector");
    let res = connector
        .pull_resource(Some("Patient"), Interaction::Search)
        .expect("Patient");
    let whole: Value = serde_json::from_slice(&large_answer(RECORDS)).expect("JSON");
    let mut expected = connector.map_search(res, &whole, &json!({})).expect("maps");
    expected.truncate(50);
    let entries: Vec<Value> = bundle["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["resource"].clone())
        .collect();
    assert_eq!(entries.len(), 50, "{}", got.text);
    assert_eq!(entries, expected, "the answer is the full parse's");
    assert_eq!(
        entries[1]["identifier"],
        json!([{"value": "a1"}, {"value": "b1"}])
    );

    // The answer's bytes are held while it is parsed; parsed whole, its unread members would
    // take some ten times their text (a key and a value per 10 bytes).
    let grew = peak.saturating_sub(before);
    eprintln!(
        "peak RSS grew by {} MiB for an answer of {} MiB",
        grew / 1024,
        size >> 20
    );
    assert!(
        grew < 3 * (size as u64 / 1024),
        "the search grew the peak RSS by {} MiB for an answer of {} MiB",
        grew / 1024,
        size >> 20
    );
}
