//! End-to-end tests of the connector definitions the image ships, `connectors.d/` itself (never
//! a copy with edits): each test loads that directory with an environment of its own (the
//! `${env:NAME:-default}` references resolved through `engine::config::secrets::Environment`, so no
//! process environment variable is set), pointing the definitions at servers on 127.0.0.1:
//!
//! - Helios FHIR Server (R5 for the ePI server, R4 for the IPS server), started by the tests
//!   as a child process exactly as in `helios`
//!   (at `$HFS_BIN`, else `${FOSPS_TOOLS:-$HOME/.local/share/fosps-tools}/hfs-r4-r5/bin/hfs`;
//!   without it these tests fail, they do not skip), as the ePI and IPS FHIR servers;
//! - stand-ins as small axum apps: the HL7 Europe sandbox (the FHIR source of
//!   `fhir_standin`), and, written here, the supporting-material REST API and, for the
//!   label webhook only, a FHIR sink.
//!
//! Helios is R4: `MedicinalProductDefinition` is an R5-only type that it refuses (404). So the
//! stand-in sandbox holds only R4-valid resources (Organization, Patient, Observation, Bundle,
//! Composition) and answers `MedicinalProductDefinition` searches with an empty searchset, and
//! the label webhook (which maps to `MedicinalProductDefinition`) writes to a stand-in sink.
//!
//! Every wait is a poll with a deadline.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use engine::config::secrets::Environment;
use engine::config::validate::{Options, validate};
use engine::model::Model;
use engine::runtime::run::{RunReport, Stage};
use serde_json::{Value, json};

use crate::engine_router::{EngineRouter, open_admin};
use crate::engine_under_test::{
    Drainer, Exit, assert_searched_from_watermarks, engine_run_command, exit_of, run_with_deadline,
    runner, signed_push, wait_until, watermarks,
};
use crate::fhir_package::package_tgz;
use crate::fhir_resources::{entries_of, key_of, references, without_meta};
use crate::fhir_standin::{FhirSource, fhir_json, operation_outcome};
use crate::helios_client::{get_json, read_all, search_all, seed};
use crate::helios_server::{Db, Fhir, Helios};
use crate::local_http::{DeadUrl, assert_outcome, bind, client, dead_url, send, spawn_app};

/// Longest any single HTTP request of a test may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest one cron run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a run of the `engine` binary may take.
const BINARY_TIMEOUT: Duration = Duration::from_secs(20);
/// Most pages one search of Helios may take before its paging counts as endless.
const MOST_PAGES: usize = 50;

/// The environment variables the shipped definitions read, all of them.
const SHIPPED_VARIABLES: [&str; 9] = [
    "EPI_FHIR_URL",
    "IPS_GUIDE",
    "EPI_GUIDE",
    "LENSES_BASE_URL",
    "IPS_FHIR_URL",
    "HL7_SANDBOX_FHIR_URL",
    "SUPPORTING_MATERIAL_API_URL",
    "SUPPORTING_MATERIAL_API_KEY",
    "LABEL_WEBHOOK_SECRET",
];
/// The API key the stand-in supporting-material API requires.
const API_KEY: &str = "shipped-test-api-key-0123456789";
/// The HMAC secret given to the label webhook.
const WEBHOOK_SECRET: &str = "shipped-test-webhook-secret-0123456789";

// ------------------------------------------------------------------------------------------
// The shipped definitions, loaded with the test's environment
// ------------------------------------------------------------------------------------------

/// `connectors.d/` of the project.
fn shipped_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../connectors.d")).to_path_buf()
}

/// The environment of one test: the variables it sets (and nothing else), files from disk,
/// and the names the definitions asked for.
struct TestEnv {
    vars: BTreeMap<&'static str, String>,
    asked: Mutex<BTreeSet<String>>,
    /// The URLs where nothing listens, kept (so nothing listens there) as long as the test.
    _nowhere: Vec<DeadUrl>,
}

impl TestEnv {
    /// Every variable of the shipped definitions set: URLs where nothing listens, and test
    /// secrets; a test then points the ones it uses at its servers.
    fn new() -> TestEnv {
        let mut vars = BTreeMap::new();
        let mut nowhere = Vec::new();
        for name in SHIPPED_VARIABLES {
            let dead = dead_url();
            vars.insert(name, dead.to_string());
            nowhere.push(dead);
        }
        vars.insert("SUPPORTING_MATERIAL_API_KEY", API_KEY.to_owned());
        vars.insert("LABEL_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned());
        TestEnv {
            vars,
            asked: Mutex::new(BTreeSet::new()),
            _nowhere: nowhere,
        }
    }

    fn with(mut self, name: &'static str, value: &str) -> TestEnv {
        assert!(SHIPPED_VARIABLES.contains(&name), "{name} is not shipped");
        self.vars.insert(name, value.to_owned());
        self
    }
}

impl Environment for TestEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.asked
            .lock()
            .expect("asked names")
            .insert(name.to_owned());
        self.vars.get(name).cloned()
    }

    fn read(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// Loads and validates `connectors.d/` with `env`; every variable it reads is one the test
/// set (so no embedded default, which points at 127.0.0.1:8081 and such, is used).
fn load_shipped(env: &TestEnv) -> Model {
    let (files, read_errors) =
        engine::config::load::read_all(&[shipped_dir()]).expect("connectors.d is readable");
    let names: BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.path.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    assert_eq!(
        names,
        [
            "fosps-proxy.yaml",
            "guide-import.yaml",
            "hl7-fhir-sync.yaml",
            "label-webhook.yaml",
            "lenses.yaml",
            "sinks.yaml",
            "supporting-material.yaml"
        ]
        .map(str::to_owned)
        .into(),
        "the shipped definition files"
    );
    let opts = Options {
        allow_unresolved: false,
        run_tests: false,
        fhir_schema: None,
        env,
    };
    let outcome = validate(&files, read_errors, &opts);
    let model = outcome.model.unwrap_or_else(|| {
        panic!(
            "the shipped definitions are invalid: {:#?}",
            outcome.diagnostics
        )
    });
    let asked = env.asked.lock().expect("asked names").clone();
    let known: BTreeSet<String> = SHIPPED_VARIABLES.map(str::to_owned).into();
    assert_eq!(
        asked, known,
        "the shipped definitions read exactly the documented environment variables"
    );
    model
}

/// Runs `engine run NAME -d connectors.d --state-dir STATE --sink-dir STATE/ndjson` with the
/// test's variables passed to the child process.
async fn engine_run(env: &TestEnv, name: &str, state: &Path) -> Exit {
    let mut cmd = engine_run_command(&shipped_dir(), name, state);
    cmd.arg("--sink-dir")
        .arg(state.join("ndjson"))
        .envs(env.vars.iter().map(|(k, v)| (*k, v.as_str())));
    exit_of(cmd, BINARY_TIMEOUT).await
}

/// One run of a shipped cron connector, loaded with `env`, by a new runner on `state`.
async fn run_once(env: &TestEnv, name: &str, state: &Path) -> RunReport {
    run_with_deadline(&runner(&load_shipped(env), name, state), RUN_TIMEOUT).await
}

// ------------------------------------------------------------------------------------------
// Stand-in HL7 Europe sandbox (a FHIR R5 server's search API)
// ------------------------------------------------------------------------------------------

/// Largest page the stand-in sandbox answers, whatever `_count` asks (so that `next` links
/// are followed).
const SANDBOX_PAGE: usize = 3;

/// The stand-in sandbox: a FHIR source (answering
/// `GET /{Type}?_count=N[&_lastUpdated=gtX]` with `searchset` Bundles paged through absolute
/// `next` links) holding `resources`, each put as a new version with a newer
/// `meta.lastUpdated`. A MedicinalProductDefinition search finds nothing: it holds none
/// (Helios, the sink, is R4 and would refuse them).
async fn start_sandbox(resources: &[Value]) -> FhirSource {
    let sandbox = FhirSource::with_largest_page(SANDBOX_PAGE).await;
    for r in resources {
        sandbox.put_version(r.clone());
    }
    sandbox
}

/// The types `hl7-fhir-sync` copies that Helios (R4) stores.
const SYNC_TYPES: [&str; 5] = [
    "Organization",
    "Patient",
    "Observation",
    "Bundle",
    "Composition",
];

/// R4-valid resources of every type the sync copies except MedicinalProductDefinition.
fn sandbox_resources() -> Vec<Value> {
    let mut out = Vec::new();
    for i in 1..=2 {
        out.push(json!({
            "resourceType": "Organization",
            "id": format!("org-{i}"),
            "active": true,
            "name": format!("Marketing authorisation holder {i}")
        }));
    }
    for i in 1..=4 {
        out.push(json!({
            "resourceType": "Patient",
            "id": format!("pat-{i}"),
            "active": true,
            "name": [{"family": format!("Family{i}"), "given": ["Ana"]}],
            "gender": if i % 2 == 0 { "female" } else { "male" },
            "birthDate": format!("19{}0-0{i}-1{i}", 5 + i)
        }));
    }
    for i in 1..=4 {
        out.push(json!({
            "resourceType": "Observation",
            "id": format!("obs-{i}"),
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}]},
            "subject": {"reference": format!("Patient/pat-{i}")},
            "effectiveDateTime": format!("2025-0{i}-10T08:30:00Z"),
            "valueQuantity": {"value": 60 + i, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
        }));
    }
    let composition = |i: usize| {
        json!({
            "resourceType": "Composition",
            "id": format!("comp-{i}"),
            "status": "final",
            "type": {"coding": [{"system": "http://loinc.org", "code": "60593-1"}]},
            "subject": {"reference": format!("Patient/pat-{i}")},
            "date": "2026-01-15T10:00:00Z",
            "author": [{"reference": format!("Organization/org-{i}")}],
            "title": format!("Electronic product information {i}"),
            "section": [{
                "title": "Measurements",
                "entry": [{"reference": format!("Observation/obs-{i}")}]
            }]
        })
    };
    out.push(composition(1));
    out.push(composition(2));
    out.push(json!({
        "resourceType": "Bundle",
        "id": "epi-doc-1",
        "identifier": {"system": "https://sandbox.example/epi", "value": "epi-doc-1"},
        "type": "document",
        "timestamp": "2026-01-15T10:00:00Z",
        "entry": [
            {
                "fullUrl": "urn:uuid:5d2a0b4e-6f3c-4b8e-9d1a-2c3b4d5e6f70",
                "resource": {
                    "resourceType": "Composition",
                    "id": "doc-comp",
                    "status": "final",
                    "type": {"coding": [{"system": "http://loinc.org", "code": "60593-1"}]},
                    "date": "2026-01-15T10:00:00Z",
                    "author": [{"reference": "urn:uuid:7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"}],
                    "title": "Package leaflet"
                }
            },
            {
                "fullUrl": "urn:uuid:7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
                "resource": {"resourceType": "Organization", "id": "doc-org", "name": "Holder"}
            }
        ]
    }));
    out
}

// ------------------------------------------------------------------------------------------
// 1. hl7-fhir-sync: the stand-in sandbox into Helios
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hl7_fhir_sync_copies_the_sandbox_into_helios_then_only_what_changed_and_fails_whole() {
    let resources = sandbox_resources();
    // The ePI server is R5, as the `epi` sink says.
    let (helios, sandbox) = tokio::join!(Helios::start_r5(Db::Memory), start_sandbox(&resources));
    let env = TestEnv::new()
        .with("EPI_FHIR_URL", &helios.url)
        .with("HL7_SANDBOX_FHIR_URL", &sandbox.url);
    let state = tempfile::tempdir().expect("state");
    let c = client(CLIENT_TIMEOUT);
    let name = "hl7-fhir-sync";

    // First run: every resource of the sandbox.
    let seeded = sandbox.all();
    assert_eq!(seeded.len(), 13);
    let r1 = runner(&load_shipped(&env), name, state.path());
    let report = run_with_deadline(&r1, RUN_TIMEOUT).await;
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!(
        (report.records_read, report.resources_written),
        (seeded.len(), seeded.len()),
        "{report:#?}"
    );
    let requests = sandbox.requests();
    for t in SYNC_TYPES
        .iter()
        .chain(std::iter::once(&"MedicinalProductDefinition"))
    {
        assert!(
            requests.iter().any(|r| r.starts_with(&format!("{t}?"))),
            "{t} is searched: {requests:#?}"
        );
    }
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("Patient?") && r.contains("_offset=3")),
        "the `next` links are followed: {requests:#?}"
    );
    let copied = read_all(&c, &helios, &SYNC_TYPES, MOST_PAGES).await;
    let want: BTreeMap<String, Value> = seeded
        .iter()
        .map(|r| (key_of(r), without_meta(r)))
        .collect();
    assert_eq!(
        copied.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "Helios holds exactly the sandbox's resources"
    );
    for (k, r) in &want {
        assert_eq!(&without_meta(&copied[k]), r, "{k}");
    }
    let marks = watermarks(state.path(), name);
    for t in SYNC_TYPES {
        assert_eq!(
            marks.get(t),
            sandbox.newest(t).as_ref(),
            "the watermark of {t} is its newest lastUpdated"
        );
    }
    assert!(
        !marks.contains_key("MedicinalProductDefinition"),
        "nothing read, no watermark: {marks:?}"
    );
    drop(r1);

    // Two resources change at the sandbox.
    let mut p = seeded
        .iter()
        .find(|r| key_of(r) == "Patient/pat-2")
        .map(without_meta)
        .expect("Patient/pat-2");
    p["name"][0]["family"] = json!("Changed");
    let mut o = seeded
        .iter()
        .find(|r| key_of(r) == "Observation/obs-3")
        .map(without_meta)
        .expect("Observation/obs-3");
    o["valueQuantity"]["value"] = json!(99);
    sandbox.put_version(p.clone());
    sandbox.put_version(o.clone());

    // Second run, by a new runner on the same state: only what changed, no duplicates.
    let before = sandbox.requests().len();
    let r2 = runner(&load_shipped(&env), name, state.path());
    let report = run_with_deadline(&r2, RUN_TIMEOUT).await;
    assert!(report.ok(), "{:#?}", report.failures);
    let second = sandbox.requests()[before..].to_vec();
    assert_eq!(
        (report.records_read, report.resources_written),
        (2, 2),
        "only the 2 changed resources are read and written; sandbox requests: {second:#?}"
    );
    assert_searched_from_watermarks(&second, "", &SYNC_TYPES, &marks);
    let copied = read_all(&c, &helios, &SYNC_TYPES, MOST_PAGES).await;
    assert_eq!(
        copied.len(),
        seeded.len(),
        "no duplicates, nothing missing: {:?}",
        copied.keys().collect::<Vec<_>>()
    );
    for r in sandbox.all() {
        let k = key_of(&r);
        assert_eq!(without_meta(&copied[&k]), without_meta(&r), "{k}");
    }
    assert_eq!(without_meta(&copied["Patient/pat-2"]), p);
    assert_eq!(without_meta(&copied["Observation/obs-3"]), o);
    let marks = watermarks(state.path(), name);
    drop(r2);

    // Third run: one more change, and the sandbox answers 500 for Observation searches. The
    // run fails and writes nothing, by the library and by `engine run`.
    let mut org = sandbox
        .all()
        .into_iter()
        .find(|r| key_of(r) == "Organization/org-1")
        .map(|r| without_meta(&r))
        .expect("Organization/org-1");
    org["name"] = json!("Renamed holder");
    sandbox.put_version(org);
    sandbox.fail(Some("Observation"), 500);
    let snapshot = read_all(&c, &helios, &SYNC_TYPES, MOST_PAGES).await;
    let r3 = runner(&load_shipped(&env), name, state.path());
    let report = run_with_deadline(&r3, RUN_TIMEOUT).await;
    assert!(!report.ok(), "a run that cannot read fails: {report:#?}");
    assert!(
        report.failures.iter().any(|f| f.stage == Stage::Read
            && f.subject == "Observation"
            && f.message.contains("500")),
        "{:#?}",
        report.failures
    );
    assert_eq!((report.resources_written, report.sink_calls), (0, 0));
    assert_eq!(
        read_all(&c, &helios, &SYNC_TYPES, MOST_PAGES).await,
        snapshot,
        "nothing is written (every version in Helios is the same)"
    );
    assert_eq!(watermarks(state.path(), name), marks, "the watermark stays");

    let out = engine_run(&env, name, state.path()).await;
    println!(
        "`engine run {name}`: exit {:?}\nstdout: {}\nstderr: {}",
        out.code, out.stdout, out.stderr
    );
    assert_ne!(out.code, Some(0), "`engine run {name}` fails: {out:#?}");
    assert!(
        out.stderr.contains("Observation") && out.stderr.contains("500"),
        "the failed read on stderr: {out:#?}"
    );
    assert_eq!(
        read_all(&c, &helios, &SYNC_TYPES, MOST_PAGES).await,
        snapshot,
        "nothing is written by `engine run` either"
    );
    assert_eq!(watermarks(state.path(), name), marks, "the watermark stays");
}

// ------------------------------------------------------------------------------------------
// 2. proxy: fan-out over two Helios servers, and the runner API
// ------------------------------------------------------------------------------------------

fn patient(id: &str, family: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "id": id,
        "active": true,
        "name": [{"family": family}]
    })
}

fn ids_of(resources: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = resources
        .iter()
        .map(|r| r["id"].as_str().unwrap_or("").to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_keeps_r4_and_r5_servers_apart_names_a_dead_one_and_serves_the_runner_api() {
    let sandbox_org = [json!({
        "resourceType": "Organization",
        "id": "org-from-sandbox",
        "name": "Copied by a run on demand"
    })];
    let (epi, mut ips, sandbox) = tokio::join!(
        Helios::start_r5(Db::Memory),
        Helios::start(Db::Memory),
        start_sandbox(&sandbox_org)
    );
    let c = client(CLIENT_TIMEOUT);
    let epi_patients = [
        patient("e1", "Epi One"),
        patient("e2", "Epi Two"),
        patient("e3", "Epi Three"),
    ];
    let ips_patients = [patient("i1", "Ips One"), patient("i2", "Ips Two")];
    seed(&c, &epi.url, &epi_patients).await;
    seed(&c, &ips.url, &ips_patients).await;
    let env = TestEnv::new()
        .with("EPI_FHIR_URL", &epi.url)
        .with("IPS_FHIR_URL", &ips.url)
        .with("HL7_SANDBOX_FHIR_URL", &sandbox.url);
    let state = tempfile::tempdir().expect("state");
    let served = EngineRouter::with_limits(
        load_shipped(&env),
        state.path(),
        open_admin(),
        CLIENT_TIMEOUT,
    );

    // Both servers up. The ePI server is R5 and the IPS server R4: the versionless base
    // mixes nothing and names each version's base; each base answers with its own server's.
    let got = served
        .get(format!("{}/fhir/proxy/Patient", served.base))
        .send()
        .await;
    assert_outcome(&got, 404, &["/fhir/proxy/R4", "/fhir/proxy/R5"]);
    let seeded: BTreeMap<String, Value> = epi_patients
        .iter()
        .chain(&ips_patients)
        .map(|p| (key_of(p), p.clone()))
        .collect();
    let mut search = String::new();
    for (version, ids) in [("R5", &["e1", "e2", "e3"][..]), ("R4", &["i1", "i2"][..])] {
        search = format!("{}/fhir/proxy/{version}/Patient", served.base);
        let got = served.get(&search).send().await;
        assert_eq!(got.status, 200, "{}", got.text);
        assert_eq!(got.header("content-type"), "application/fhir+json");
        let b = got.json();
        assert_eq!(
            (&b["resourceType"], &b["type"]),
            (&json!("Bundle"), &json!("searchset")),
            "{b}"
        );
        let matches = entries_of(&b, "match");
        assert_eq!(ids_of(&matches), ids, "{b}");
        for m in &matches {
            assert_eq!(without_meta(m), seeded[&key_of(m)], "{m}");
        }
        assert!(entries_of(&b, "outcome").is_empty(), "{b}");
        assert_eq!(b["total"], ids.len(), "{b}");
    }

    // A read finds the resource on the server of its version.
    for (path, id, family) in [("R5", "e2", "Epi Two"), ("R4", "i1", "Ips One")] {
        let got = served
            .get(format!("{}/fhir/proxy/{path}/Patient/{id}", served.base))
            .send()
            .await;
        assert_eq!(got.status, 200, "{}", got.text);
        assert_eq!(without_meta(&got.json()), patient(id, family));
    }

    // The shipped connectors, listed.
    let got = served
        .get(format!("{}/connectors/list", served.base))
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let listed: BTreeMap<String, Value> = got
        .json()
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| (c["name"].as_str().unwrap_or("").to_owned(), c.clone()))
        .collect();
    let strategies: BTreeMap<&str, &str> = listed
        .iter()
        .map(|(n, c)| (n.as_str(), c["strategy"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        strategies,
        BTreeMap::from([
            ("epi-guide-import", "cron"),
            ("hl7-fhir-sync", "cron"),
            ("ips-guide-import", "cron"),
            ("label-webhook", "push"),
            ("lenses", "cron"),
            ("proxy", "pull"),
            ("supporting-material", "cron"),
        ]),
        "{}",
        got.text
    );
    assert_eq!(listed["proxy"]["sources"], json!(["epi", "ips"]));
    assert_eq!(listed["proxy"]["routes"], "/fhir/proxy");
    assert_eq!(listed["hl7-fhir-sync"]["run"]["schedule"], "0 2 * * *");
    assert_eq!(listed["hl7-fhir-sync"]["run"]["timeZone"], "Europe/Madrid");
    assert_eq!(
        listed["supporting-material"]["run"]["schedule"],
        "30 3 * * *"
    );
    assert_eq!(
        listed["label-webhook"]["push"]["path"],
        "/push/label-changed"
    );

    // The IPS server killed; the cached answers dropped (they would be served fresh for 5
    // minutes): the R4 base fails with an OperationOutcome naming `ips`; the R5 base answers.
    ips.kill();
    let got = served
        .delete(format!("{}/connectors/proxy/cache", served.base))
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let got = served.get(&search).send().await;
    assert_eq!(
        got.json()["resourceType"],
        "OperationOutcome",
        "{}",
        got.text
    );
    let text = got.json()["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        got.status >= 500 && text.contains("`ips`") && !text.contains("`epi`"),
        "the outcome names the failed source only: {} {text}",
        got.status
    );
    let got = served
        .get(format!("{}/fhir/proxy/R5/Patient", served.base))
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let b = got.json();
    assert_eq!(ids_of(&entries_of(&b, "match")), ["e1", "e2", "e3"], "{b}");

    // The FOSPS runner API: a run of `hl7-fhir-sync` on demand, started in the background.
    let got = served
        .post(format!("{}/connectors/hl7-fhir-sync/run", served.base))
        .send()
        .await;
    assert_eq!(got.status, 202, "{}", got.text);
    assert_eq!(
        got.json(),
        json!({"connector": "hl7-fhir-sync", "status": "started"})
    );
    let job = served.engine.crons["hl7-fhir-sync"].clone();
    wait_until(
        Duration::from_secs(15),
        "the run on demand ends",
        move || !job.status()["lastRun"].is_null() && !job.is_running(),
    )
    .await;
    let got = served
        .get(format!("{}/connectors/hl7-fhir-sync", served.base))
        .send()
        .await;
    let last = &got.json()["run"]["lastRun"];
    assert_eq!(last["failures"], json!([]), "{last}");
    assert_eq!(
        (&last["records_read"], &last["resources_written"]),
        (&json!(1), &json!(1)),
        "{last}"
    );
    let (status, org) = get_json(&c, &format!("{}/Organization/org-from-sandbox", epi.url)).await;
    assert_eq!(status, 200, "the run wrote into the ePI server: {org}");
    assert_eq!(org["name"], "Copied by a run on demand");
}

// ------------------------------------------------------------------------------------------
// 3. supporting-material: a paged REST API with an API key into Helios
// ------------------------------------------------------------------------------------------

/// Largest page the stand-in API answers, whatever `pageSize` asks.
const API_PAGE: usize = 3;

struct ApiInner {
    rows: Mutex<Vec<Value>>,
    /// The `page` parameter (absent: `None`) and the full query of every authorised request.
    pages: Mutex<Vec<(Option<String>, String)>>,
    refused: AtomicUsize,
}

/// The supporting-material REST API: `GET /materials?page=N&pageSize=M` with `X-Api-Key`
/// (401 without it), `{"page": N, "items": [...]}`; pages start at 1 (a request without
/// `page` is page 1) and a page after the last is empty.
#[derive(Clone)]
struct MaterialsApi {
    url: String,
    inner: Arc<ApiInner>,
}

impl MaterialsApi {
    async fn start(rows: Vec<Value>) -> MaterialsApi {
        let (listener, url) = bind().await;
        let inner = Arc::new(ApiInner {
            rows: Mutex::new(rows),
            pages: Mutex::new(Vec::new()),
            refused: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/materials", get(materials))
            .with_state(inner.clone());
        spawn_app(listener, app);
        MaterialsApi { url, inner }
    }

    fn pages(&self) -> Vec<(Option<String>, String)> {
        self.inner.pages.lock().expect("API log").clone()
    }

    fn change(&self, id: i64, field: &str, value: Value) {
        let mut rows = self.inner.rows.lock().expect("rows");
        let row = rows
            .iter_mut()
            .find(|r| r["id"] == id)
            .expect("the row to change");
        row[field] = value;
    }
}

async fn materials(
    State(s): State<Arc<ApiInner>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(API_KEY) {
        s.refused.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "a valid X-Api-Key header is required"})),
        )
            .into_response();
    }
    let query = query.unwrap_or_default();
    let pairs: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let page_param = pairs.get("page").cloned();
    s.pages
        .lock()
        .expect("API log")
        .push((page_param.clone(), query.clone()));
    let Some(page) = page_param
        .as_deref()
        .map_or(Some(1), |p| p.parse::<usize>().ok())
    else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "page is a number"})),
        )
            .into_response();
    };
    let size = pairs
        .get("pageSize")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(API_PAGE)
        .clamp(1, API_PAGE);
    let rows = s.rows.lock().expect("rows").clone();
    let items: Vec<Value> = rows
        .into_iter()
        .skip(page.saturating_sub(1) * size)
        .take(size)
        .collect();
    axum::Json(json!({"page": page, "items": items})).into_response()
}

/// The category system of the Gravitate-Health IG.
const CATEGORY_SYSTEM: &str =
    "http://hl7.eu/fhir/ig/gravitate-health/CodeSystem/DocumentReferenceCategory";
const MATERIAL_SYSTEM: &str = "https://fosps.gravitate-health.eu/supporting-material";

fn shipped_json(rel: &str) -> Value {
    let path = shipped_dir().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The material id of a DocumentReference, from its identifier.
fn material_id(r: &Value) -> String {
    r["identifier"]
        .as_array()
        .and_then(|ids| ids.iter().find(|i| i["system"] == MATERIAL_SYSTEM))
        .and_then(|i| i["value"].as_str())
        .unwrap_or("?")
        .to_owned()
}

fn category_of(r: &Value) -> (String, String) {
    let coding = &r["category"][0]["coding"][0];
    (
        coding["system"].as_str().unwrap_or("").to_owned(),
        coding["code"].as_str().unwrap_or("").to_owned(),
    )
}

/// The DocumentReferences in Helios, by material id.
async fn documents(c: &reqwest::Client, h: &Helios) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for r in search_all(c, h, "DocumentReference", MOST_PAGES).await {
        let id = material_id(&r);
        assert!(out.insert(id.clone(), r).is_none(), "material {id} twice");
    }
    out
}

fn versions(docs: &BTreeMap<String, Value>) -> BTreeMap<String, String> {
    docs.iter()
        .map(|(k, r)| {
            (
                k.clone(),
                r["meta"]["versionId"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supporting_material_pages_with_the_api_key_translates_categories_and_writes_only_changes()
{
    // The rows of connectors.d/tests/supporting-material.input.json and two more, served in
    // two pages of three.
    let input = shipped_json("tests/supporting-material.input.json");
    let mut rows = input["items"].as_array().expect("items").clone();
    rows.push(json!({"id": 105, "title": "Safety alert", "category": "safety-alert", "productId": "mpd-ibuprofen-200", "updatedAt": "2026-10-05", "url": "https://materials.example/105"}));
    rows.push(json!({"id": 106, "title": "Additional monitoring", "category": "MDM", "productId": "mpd-salbutamol-100", "updatedAt": "2026-10-06", "url": "https://materials.example/106", "language": "de"}));
    let ids: Vec<String> = rows.iter().map(|r| r["id"].to_string()).collect();
    let (helios, api) = tokio::join!(
        Helios::start_r5(Db::Memory),
        MaterialsApi::start(rows.clone())
    );
    let c = client(CLIENT_TIMEOUT);
    let name = "supporting-material";

    // The API refuses a request without the key.
    let got = send(c.get(format!("{}/materials", api.url))).await;
    assert_eq!(got.status, 401, "{}", got.text);

    // A run with a wrong key fails and writes nothing.
    let wrong = TestEnv::new()
        .with("EPI_FHIR_URL", &helios.url)
        .with("SUPPORTING_MATERIAL_API_URL", &api.url)
        .with("SUPPORTING_MATERIAL_API_KEY", "not-the-key");
    let state = tempfile::tempdir().expect("state");
    let report = run_once(&wrong, name, state.path()).await;
    assert!(!report.ok(), "{report:#?}");
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.stage == Stage::Read && f.message.contains("401")),
        "{:#?}",
        report.failures
    );
    assert_eq!(report.resources_written, 0);
    assert!(documents(&c, &helios).await.is_empty());

    // First run: every row, one DocumentReference each.
    let env = TestEnv::new()
        .with("EPI_FHIR_URL", &helios.url)
        .with("SUPPORTING_MATERIAL_API_URL", &api.url);
    let state = tempfile::tempdir().expect("state");
    let report = run_once(&env, name, state.path()).await;
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!(
        (
            report.records_read,
            report.resources_written,
            report.resources_unchanged
        ),
        (6, 6, 0),
        "{report:#?}"
    );
    let pages = api.pages();
    let asked: Vec<Option<&str>> = pages.iter().map(|(p, _)| p.as_deref()).collect();
    assert_eq!(
        asked,
        [None, Some("2"), Some("3")],
        "pages 1 (the first request), 2, then 3 (empty: the end): {pages:?}"
    );
    for (_, q) in &pages {
        assert!(q.contains("pageSize=100"), "{q}");
    }
    let docs = documents(&c, &helios).await;
    assert_eq!(docs.keys().cloned().collect::<Vec<_>>(), ids);
    // The rows of the shipped test input become exactly the shipped expected resources.
    let expected = shipped_json("tests/supporting-material.expected.json");
    for e in expected.as_array().expect("expected resources") {
        let id = material_id(e);
        assert_eq!(without_meta(&docs[&id]), *e, "material {id}");
    }
    let codes: BTreeMap<String, (String, String)> = docs
        .iter()
        .map(|(k, r)| (k.clone(), category_of(r)))
        .collect();
    let want = |code: &str| (CATEGORY_SYSTEM.to_owned(), code.to_owned());
    assert_eq!(
        codes,
        BTreeMap::from([
            ("101".to_owned(), want("AE")),
            ("102".to_owned(), want("STO")),
            ("103".to_owned(), want("MU")),
            ("104".to_owned(), want("OTHER")),
            ("105".to_owned(), want("SA")),
            ("106".to_owned(), want("MDM")),
        ]),
        "adverse-event, storage, video, press-release (default), safety-alert, MDM"
    );
    let first_versions = versions(&docs);

    // Second run, rows unchanged: nothing written.
    let report = run_once(&env, name, state.path()).await;
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!(
        (
            report.records_read,
            report.resources_written,
            report.resources_unchanged,
            report.sink_calls
        ),
        (6, 0, 6, 0),
        "{report:#?}"
    );
    assert_eq!(versions(&documents(&c, &helios).await), first_versions);

    // One row changes: exactly one resource written.
    api.change(102, "title", json!("Storing your medicine safely"));
    let report = run_once(&env, name, state.path()).await;
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!(
        (
            report.records_read,
            report.resources_written,
            report.resources_unchanged
        ),
        (6, 1, 5),
        "{report:#?}"
    );
    let docs = documents(&c, &helios).await;
    assert_eq!(docs["102"]["type"]["text"], "Storing your medicine safely");
    let mut want_versions = first_versions.clone();
    let bumped = docs["102"]["meta"]["versionId"]
        .as_str()
        .expect("a versionId")
        .to_owned();
    assert_ne!(bumped, first_versions["102"], "material 102 is rewritten");
    want_versions.insert("102".to_owned(), bumped);
    assert_eq!(versions(&docs), want_versions, "only material 102 changes");
    assert_eq!(
        api.inner.refused.load(Ordering::SeqCst),
        2,
        "only the keyless request and the wrong-key run were refused"
    );
}

// ------------------------------------------------------------------------------------------
// 4. label-webhook: a signed notification, queued, drained into a stand-in sink
// ------------------------------------------------------------------------------------------

/// A FHIR sink stand-in that records the transaction and batch Bundles it receives and
/// answers each `PUT` entry 201. Used instead of Helios for the label webhook only: the
/// webhook writes `MedicinalProductDefinition`, an R5-only type Helios (R4) refuses with 404.
#[derive(Clone)]
struct RecordingSink {
    url: String,
    bundles: Arc<Mutex<Vec<Value>>>,
}

impl RecordingSink {
    async fn start() -> RecordingSink {
        let (listener, url) = bind().await;
        let bundles = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/", post(record_bundle))
            .with_state(bundles.clone());
        spawn_app(listener, app);
        RecordingSink { url, bundles }
    }

    fn bundles(&self) -> Vec<Value> {
        self.bundles.lock().expect("sink log").clone()
    }
}

async fn record_bundle(State(log): State<Arc<Mutex<Vec<Value>>>>, body: Bytes) -> Response {
    let Ok(bundle) = serde_json::from_slice::<Value>(&body) else {
        return fhir_json(400, &operation_outcome("structure", "the body is not JSON"));
    };
    let kind = bundle["type"].as_str().unwrap_or("").to_owned();
    if kind != "transaction" && kind != "batch" {
        return fhir_json(
            400,
            &operation_outcome("invalid", "a transaction or batch Bundle is expected"),
        );
    }
    let answers: Vec<Value> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            json!({"response": {
                "status": "201 Created",
                "location": format!("{}/_history/1", e["request"]["url"].as_str().unwrap_or(""))
            }})
        })
        .collect();
    log.lock().expect("sink log").push(bundle);
    fhir_json(
        200,
        &json!({"resourceType": "Bundle", "type": format!("{kind}-response"), "entry": answers}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_webhook_accepts_a_signed_notification_and_writes_the_product_to_the_sink() {
    let sink = RecordingSink::start().await;
    let env = TestEnv::new().with("EPI_FHIR_URL", &sink.url);
    let state = tempfile::tempdir().expect("state");
    let served = EngineRouter::new(load_shipped(&env), state.path(), CLIENT_TIMEOUT);
    let ep = served.engine.pushes["label-webhook"].clone();
    let drainer = Drainer::start(ep.clone());
    let url = format!("{}/push/label-changed", served.base);
    let body = serde_json::to_vec(&json!({
        "event": "label.updated",
        "product": {"name": "Painaway 200 mg tablets"},
        "label": {
            "setId": "0a1b2c3d-1111-2222-3333-444455556666",
            "version": 4,
            "effectiveTime": "20261101",
            "withdrawn": false,
            "documents": ["DocumentReference/leaflet-4"]
        }
    }))
    .expect("JSON");

    // Unsigned, and signed with another secret: 401, nothing queued.
    let got = served
        .post(&url)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await;
    assert_eq!(got.status, 401, "{}", got.text);
    assert_eq!(
        got.json()["resourceType"],
        "OperationOutcome",
        "{}",
        got.text
    );
    let ts = Utc::now().timestamp();
    let got = signed_push(&served, &url, "not-the-secret-0123456789", ts, &body)
        .send()
        .await;
    assert_eq!(got.status, 401, "{}", got.text);
    assert_eq!(ep.depths(), (0, 0));

    // Signed with the secret given: accepted and queued.
    let ts = Utc::now().timestamp();
    let got = signed_push(&served, &url, WEBHOOK_SECRET, ts, &body)
        .send()
        .await;
    assert_eq!(got.status, 202, "{}", got.text);
    assert_eq!(got.json()["status"], "queued", "{}", got.text);

    // The drainer writes the mapped MedicinalProductDefinition to the sink.
    let (s, e) = (sink.clone(), ep.clone());
    wait_until(
        Duration::from_secs(15),
        "the drainer writes the notification",
        move || !s.bundles().is_empty() && e.depths().0 == 0,
    )
    .await;
    assert_eq!(ep.depths(), (0, 0), "{:?}", ep.dead_letters().await);
    let bundles = sink.bundles();
    assert_eq!(bundles.len(), 1, "{bundles:#?}");
    assert_eq!(bundles[0]["type"], "transaction", "{}", bundles[0]);
    let entries = bundles[0]["entry"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{}", bundles[0]);
    let id = "fd490434-05ae-5f10-88dd-41dea17bee75";
    assert_eq!(
        entries[0]["request"],
        json!({"method": "PUT", "url": format!("MedicinalProductDefinition/{id}")})
    );
    assert_eq!(
        entries[0]["resource"],
        json!({
            "resourceType": "MedicinalProductDefinition",
            "id": id,
            "identifier": [{
                "system": "https://regulator.example/set-id",
                "value": "0a1b2c3d-1111-2222-3333-444455556666"
            }],
            "version": "4",
            "status": {"coding": [{"system": "http://hl7.org/fhir/publication-status", "code": "active"}]},
            "statusDate": "2026-11-01",
            "name": [{"productName": "Painaway 200 mg tablets"}],
            "attachedDocument": [{"reference": "DocumentReference/leaflet-4"}]
        })
    );
    drainer.stop().await;

    // Into a real R5 server, as the `epi` sink is: the product (an R5-only type) read back.
    let helios = Helios::start_r5(Db::Memory).await;
    let env = TestEnv::new().with("EPI_FHIR_URL", &helios.url);
    let state = tempfile::tempdir().expect("state");
    let served = EngineRouter::new(load_shipped(&env), state.path(), CLIENT_TIMEOUT);
    let ep = served.engine.pushes["label-webhook"].clone();
    let drainer = Drainer::start(ep.clone());
    let url = format!("{}/push/label-changed", served.base);
    let ts = Utc::now().timestamp();
    let got = signed_push(&served, &url, WEBHOOK_SECRET, ts, &body)
        .send()
        .await;
    assert_eq!(got.status, 202, "{}", got.text);
    let e = ep.clone();
    wait_until(
        Duration::from_secs(15),
        "the drainer writes the notification into Helios",
        move || e.depths() == (0, 0),
    )
    .await;
    assert!(ep.dead_letters().await.is_empty());
    let c = client(CLIENT_TIMEOUT);
    let (status, product) = get_json(
        &c,
        &format!("{}/MedicinalProductDefinition/{id}", helios.url),
    )
    .await;
    assert_eq!(status, 200, "{product}");
    assert_eq!(product["name"][0]["productName"], "Painaway 200 mg tablets");
    assert_eq!(product["status"]["coding"][0]["code"], "active");
    drainer.stop().await;
}

// ------------------------------------------------------------------------------------------
// lenses
// ------------------------------------------------------------------------------------------

/// A lens file as the stand-in serves it: a Library with its identifier and no id.
fn lens(file: &str, version: &str) -> Value {
    let name = file.trim_end_matches(".json");
    json!({
        "resourceType": "Library",
        "identifier": [{"system": "https://gravitate-health.eu/lenses", "value": name}],
        "name": name,
        "version": version,
        "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/library-type", "code": "logic-library"}]},
        "content": [{"contentType": "application/javascript", "data": "ZnVuY3Rpb24gZW5oYW5jZSgpIHt9"}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenses_are_upserted_by_identifier_and_never_duplicated() {
    let files = [
        "pregnancy-lens.json",
        "conditions-lens.json",
        "allergy-lens.json",
        "interaction-lens.json",
    ];
    let version = Arc::new(Mutex::new("1.0.0".to_owned()));
    let served = version.clone();
    let (listener, base) = bind().await;
    let app = axum::Router::new().route(
        "/lenses/{file}",
        axum::routing::get(
            move |axum::extract::Path(file): axum::extract::Path<String>| {
                let v = served.lock().expect("version").clone();
                async move {
                    if files.contains(&file.as_str()) {
                        fhir_json(200, &lens(&file, &v))
                    } else {
                        fhir_json(404, &operation_outcome("not-found", &file))
                    }
                }
            },
        ),
    );
    let _api = spawn_app(listener, app);
    // The R5 ePI server: the upsert by identifier searches with the R5 core's parameters.
    let helios = Helios::start_r5(Db::Memory).await;
    let env = TestEnv::new()
        .with("EPI_FHIR_URL", &helios.url)
        .with("LENSES_BASE_URL", &format!("{base}/lenses"));
    let state = tempfile::tempdir().expect("state");
    let c = client(CLIENT_TIMEOUT);
    for round in 0..2 {
        if round == 1 {
            *version.lock().expect("version") = "1.1.0".to_owned();
        }
        let report = run_once(&env, "lenses", state.path()).await;
        assert!(report.ok(), "{report:#?}");
        assert_eq!(
            (report.records_read, report.resources_written),
            (4, 4),
            "{report:#?}"
        );
        let libraries = search_all(&c, &helios, "Library", MOST_PAGES).await;
        assert_eq!(
            libraries.len(),
            4,
            "one Library per lens after run {}: {libraries:#?}",
            round + 1
        );
        for f in files {
            let name = f.trim_end_matches(".json");
            let found: Vec<&Value> = libraries
                .iter()
                .filter(|l| l["identifier"][0]["value"] == name)
                .collect();
            assert_eq!(found.len(), 1, "{name} is there once");
            let expected = if round == 0 { "1.0.0" } else { "1.1.0" };
            assert_eq!(
                found[0]["version"], expected,
                "{name} holds the served version"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// ips-guide-import and epi-guide-import: a guide directory and a package by URL
// ------------------------------------------------------------------------------------------

/// Every `Type/id` of a guide directory, as a server should hold them once each Bundle is
/// split: the entries of Bundles, the other resources as they are.
fn guide_resources(dir: &Path) -> BTreeMap<String, Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the guide directory")
        .map(|e| e.expect("an entry").path())
        .collect();
    files.sort();
    let mut out = BTreeMap::new();
    for f in files {
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(&f).expect("a file")).expect("JSON");
        if r["resourceType"] == "Bundle" {
            for e in r["entry"].as_array().into_iter().flatten() {
                out.insert(key_of(&e["resource"]), e["resource"].clone());
            }
        } else {
            out.insert(key_of(&r), r);
        }
    }
    out
}

fn is_type_and_id(r: &str) -> bool {
    r.split_once('/').is_some_and(|(t, id)| {
        t.starts_with(|c: char| c.is_ascii_uppercase())
            && t.chars().all(|c| c.is_ascii_alphabetic())
            && !id.is_empty()
            && !id.contains('/')
    })
}

/// Every `Type/id` a resource refers to (other forms, such as a bare id the guide itself
/// has once, are not references a server resolves).
fn local_references(v: &Value) -> Vec<String> {
    let mut refs = Vec::new();
    references(v, &mut refs);
    refs.retain(|r| is_type_and_id(r));
    refs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ips_guide_import_writes_the_guide_as_resources_whose_references_resolve_and_reruns_write_nothing()
 {
    let guide_dir = crate::helios_server::testdata("fhir-r4/gravitate-ips");
    let expected = guide_resources(&guide_dir);
    let types: BTreeSet<&str> = expected
        .values()
        .filter_map(|r| r["resourceType"].as_str())
        .collect();
    let types: Vec<&str> = types.into_iter().collect();
    assert!(
        expected.len() > 300 && !types.contains(&"Bundle"),
        "{types:?}"
    );
    let helios = Helios::start(Db::Memory).await;
    let env = TestEnv::new()
        .with("IPS_FHIR_URL", &helios.url)
        .with("IPS_GUIDE", guide_dir.to_str().expect("a UTF-8 path"));
    let state = tempfile::tempdir().expect("state");
    let c = client(CLIENT_TIMEOUT);

    let report = run_once(&env, "ips-guide-import", state.path()).await;
    assert!(report.ok(), "{report:#?}");
    assert_eq!(report.records_read, 30, "every file of the guide is read");
    assert_eq!(report.resources_written, expected.len(), "{report:#?}");
    // Two Compositions are given twice with different content by the guide itself: that is
    // reported, not silently resolved.
    let conflicts: BTreeSet<&str> = report.skipped.iter().map(|s| s.subject.as_str()).collect();
    assert_eq!(
        conflicts,
        BTreeSet::from(["Composition/gravitate-Alicia", "Composition/ips-example-2"]),
        "{:#?}",
        report.skipped
    );

    let stored = read_all(&c, &helios, &types, MOST_PAGES).await;
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "Helios holds every resource of the guide once"
    );
    assert!(
        search_all(&c, &helios, "Bundle", MOST_PAGES)
            .await
            .is_empty(),
        "IPS document Bundles are written as their entries"
    );
    let mut dangling = Vec::new();
    for (k, r) in &stored {
        dangling.extend(
            local_references(r)
                .into_iter()
                .filter(|t| !stored.contains_key(t))
                .map(|t| format!("{k} -> {t}")),
        );
    }
    assert!(
        dangling.is_empty(),
        "references that do not resolve: {dangling:#?}"
    );
    // Separate resources are what patient-level operations work on.
    for patient in stored.keys().filter(|k| k.starts_with("Patient/")) {
        let (status, b) = get_json(&c, &format!("{}/{patient}/$everything", helios.url)).await;
        assert_eq!(status, 200, "{patient}/$everything: {b}");
        let kinds: BTreeSet<&str> = b["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["resource"]["resourceType"].as_str())
            .collect();
        assert!(
            kinds.contains("Patient") && kinds.len() > 1,
            "{patient}/$everything finds its resources: {kinds:?}"
        );
    }

    // The second run finds nothing changed: nothing is written, nothing is duplicated.
    let again = run_once(&env, "ips-guide-import", state.path()).await;
    assert!(again.ok(), "{again:#?}");
    assert_eq!(
        (
            again.resources_written,
            again.resources_unchanged,
            again.sink_calls
        ),
        (0, expected.len(), 0),
        "{again:#?}"
    );
    let after = read_all(&c, &helios, &types, MOST_PAGES).await;
    assert_eq!(after.len(), expected.len());
    for (k, r) in &after {
        assert_eq!(
            r["meta"]["versionId"], stored[k]["meta"]["versionId"],
            "{k} was not written again"
        );
    }
}

/// An ePI guide package: an ePI document Bundle and its List, the guide's ImplementationGuide,
/// an R5-only MedicinalProductDefinition, the package's own files, and files that are not
/// FHIR resources.
pub(crate) fn epi_package() -> Vec<u8> {
    let json = |v: Value| serde_json::to_vec(&v).expect("JSON");
    let bundle = json!({
        "resourceType": "Bundle", "id": "epi-1", "type": "document",
        "identifier": {"system": "https://gravitate-health.eu/epi", "value": "epi-1"},
        "timestamp": "2026-01-01T00:00:00Z",
        "entry": [
            {"fullUrl": "urn:uuid:2b7f6a3e-0000-4000-8000-000000000001", "resource": {
                "resourceType": "Composition", "id": "epi-1-composition", "status": "final",
                "type": {"text": "Package leaflet"}, "date": "2026-01-01", "title": "Leaflet",
                "author": [{"reference": "urn:uuid:2b7f6a3e-0000-4000-8000-000000000002"}]}},
            {"fullUrl": "urn:uuid:2b7f6a3e-0000-4000-8000-000000000002", "resource": {
                "resourceType": "Organization", "id": "epi-1-holder", "name": "Holder"}}
        ]
    });
    let list = json!({
        "resourceType": "List", "id": "epi-list", "status": "current", "mode": "working",
        "entry": [{"item": {"reference": "Bundle/epi-1"}}]
    });
    let guide = json!({
        "resourceType": "ImplementationGuide", "id": "gh-epi", "url": "http://example.org/ig",
        "name": "GhEpi", "status": "draft", "packageId": "gh.epi", "fhirVersion": ["4.0.1"]
    });
    let product = json!({
        "resourceType": "MedicinalProductDefinition", "id": "mpd-1",
        "name": [{"productName": "Product"}]
    });
    package_tgz(&[
        (
            "package.json",
            json(json!({"name": "gh.epi", "version": "0.1.0"})),
        ),
        (
            ".index.json",
            json(json!({"index-version": 2, "files": []})),
        ),
        ("ImplementationGuide-gh-epi.json", json(guide)),
        ("example/Bundle-epi-1.json", json(bundle)),
        ("example/List-epi-list.json", json(list)),
        (
            "example/MedicinalProductDefinition-mpd-1.json",
            json(product),
        ),
        (
            "openapi/epi.openapi.json",
            json(json!({"openapi": "3.0.0"})),
        ),
        ("other/spec.internals", b"not JSON".to_vec()),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epi_guide_import_reads_a_package_by_url_keeps_documents_whole_and_names_what_it_leaves_out()
 {
    let package = Arc::new(epi_package());
    let (listener, base) = bind().await;
    let served = package.clone();
    let app = axum::Router::new().route(
        "/ig/package.tgz",
        get(move || {
            let body = served.as_ref().clone();
            async move { ([(header::CONTENT_TYPE, "application/gzip")], body).into_response() }
        }),
    );
    let _ig = spawn_app(listener, app);
    // The ePI server is R5, as the `epi` sink says; an R4 server given as the same sink by
    // mistake refuses what only R5 has.
    let (helios, r4) = tokio::join!(
        Helios::start_as(Db::Memory, None, Fhir::R5),
        Helios::start(Db::Memory)
    );
    let guide = format!("{base}/ig/package.tgz");
    let env = TestEnv::new()
        .with("EPI_FHIR_URL", &helios.url)
        .with("EPI_GUIDE", &guide);
    let state = tempfile::tempdir().expect("state");
    let c = client(CLIENT_TIMEOUT);

    // Into R5: every resource of the guide, the R5-only one too, written and read back.
    let report = run_once(&env, "epi-guide-import", state.path()).await;
    assert!(report.ok(), "{report:#?}");
    assert_eq!(report.resources_written, 3, "{report:#?}");
    let (status, product) = get_json(
        &c,
        &format!("{}/MedicinalProductDefinition/mpd-1", helios.url),
    )
    .await;
    assert_eq!(
        (status, product["name"][0]["productName"].clone()),
        (200, json!("Product")),
        "{product}"
    );

    // Into an R4 server: it refuses the R5-only type: the run fails and says which resource,
    // with the server's OperationOutcome, instead of skipping it.
    let r4_env = TestEnv::new()
        .with("EPI_FHIR_URL", &r4.url)
        .with("EPI_GUIDE", &guide);
    let r4_state = tempfile::tempdir().expect("state");
    let report = run_once(&r4_env, "epi-guide-import", r4_state.path()).await;
    assert!(!report.ok(), "{report:#?}");
    assert_eq!(report.failures.len(), 1, "{report:#?}");
    let f = &report.failures[0];
    assert_eq!(
        (f.stage, f.subject.as_str()),
        (Stage::Write, "MedicinalProductDefinition/mpd-1")
    );
    assert_eq!(
        f.outcome.as_ref().map(|o| o["resourceType"].clone()),
        Some(json!("OperationOutcome")),
        "{f:#?}"
    );
    assert_eq!(report.resources_written, 2, "{report:#?}");
    let mut skipped: Vec<(String, usize)> = report
        .skipped
        .iter()
        .map(|s| (s.subject.clone(), s.count))
        .collect();
    skipped.sort();
    assert_eq!(
        skipped,
        [
            (".index.json", 1),
            ("ImplementationGuide", 1),
            ("files not ending in `.json`", 1),
            ("openapi/epi.openapi.json", 1),
            ("package.json", 1),
        ]
        .map(|(s, n)| (s.to_owned(), n))
        .to_vec(),
        "{:#?}",
        report.skipped
    );
    // The ePI stays one document Bundle; its List refers to it; the guide's own description
    // is left out, as the shipped deny-list says.
    let (status, bundle) = get_json(&c, &format!("{}/Bundle/epi-1", helios.url)).await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(bundle["type"], "document");
    assert_eq!(
        bundle["entry"].as_array().map(Vec::len),
        Some(2),
        "{bundle}"
    );
    let (status, list) = get_json(&c, &format!("{}/List/epi-list", helios.url)).await;
    assert_eq!(
        (status, list["entry"][0]["item"]["reference"].clone()),
        (200, json!("Bundle/epi-1"))
    );
    assert!(
        search_all(&c, &helios, "ImplementationGuide", MOST_PAGES)
            .await
            .is_empty()
    );

    // `engine run`, as a CronJob runs it, exits 1 and prints what it left out and what failed.
    let exit = engine_run(&r4_env, "epi-guide-import", r4_state.path()).await;
    assert_eq!(exit.code, Some(1), "{exit:#?}");
    assert!(
        exit.stderr
            .contains("left out: ImplementationGuide: excluded by `import.exclude.types`")
            && exit
                .stderr
                .contains("error: write MedicinalProductDefinition/mpd-1"),
        "{exit:#?}"
    );

    // A package that cannot be downloaded fails the run, which writes nothing.
    let env = TestEnv::new()
        .with("EPI_FHIR_URL", &helios.url)
        .with("EPI_GUIDE", &format!("{base}/ig/missing.tgz"));
    let missing = run_once(&env, "epi-guide-import", state.path()).await;
    assert_eq!(missing.failures.len(), 1, "{missing:#?}");
    assert_eq!(
        (missing.failures[0].stage, missing.resources_written),
        (Stage::Read, 0)
    );
    assert!(
        missing.failures[0].message.contains("404"),
        "{:#?}",
        missing.failures
    );
}
