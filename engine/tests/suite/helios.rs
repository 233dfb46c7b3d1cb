//! End-to-end tests where the FHIR servers are real: Helios FHIR Server (R4), started by each
//! test as a child process on 127.0.0.1 (in memory, or on a SQLite file when it must keep its
//! data across a restart) and killed when the test ends.
//!
//! Helios is installed by `scripts/tools.sh` (at `$HFS_BIN`, else
//! `${FOSPS_TOOLS:-$HOME/.local/share/fosps-tools}/hfs-r4-r5/bin/hfs`); without it these tests fail,
//! they do not skip. They assert only what the FHIR specification requires of a server
//! (reads, searches paged by `next` links, `_lastUpdated`, transaction and batch Bundles, an
//! `OperationOutcome` for a refused write), not what one server happens to do.
//!
//! Where calls are counted, the Helios server sits behind a small counting proxy that is also
//! its public base URL, so the `next` links it writes (and the engine follows) pass through
//! the proxy too.
//!
//! Every wait is a poll with a deadline.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::engine_router::{EngineRouter, open_engine};
use crate::engine_under_test::{
    Drainer, assert_searched_from_watermarks, definitions, engine_run_command, exit_of, load,
    patient_payload, run_with_deadline, runner, signed_push, wait_until, watermarks,
};
use crate::fhir_resources::{key_of, references, without_meta};
use crate::helios_client::{get_json, read_all, search_all, seed};
use crate::helios_server::{Db, Helios, testdata};
use crate::local_http::{Got, bind, client, spawn_app};

/// Longest any single HTTP request of a test may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest one cron run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(40);
/// Longest a run of the `engine` binary may take.
const BINARY_TIMEOUT: Duration = Duration::from_secs(40);
/// Most pages one search of Helios may take before its paging counts as endless.
const MOST_PAGES: usize = 200;
/// The HMAC secret of the push connectors.
const SECRET: &str = "helios-push-secret-0123456789";

// ------------------------------------------------------------------------------------------
// Talking to Helios
// ------------------------------------------------------------------------------------------

/// `PUT Type/id` of a resource; the status and the answer.
async fn put(c: &reqwest::Client, base: &str, r: &Value) -> (u16, Value) {
    let url = format!("{base}/{}", key_of(r));
    let resp = c
        .put(&url)
        .header("content-type", "application/fhir+json")
        .header("accept", "application/fhir+json")
        .body(serde_json::to_vec(r).expect("JSON"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn count_of(all: &BTreeMap<String, Value>, rtype: &str) -> usize {
    all.keys()
        .filter(|k| k.split('/').next() == Some(rtype))
        .count()
}

/// The text of the first issue of an `OperationOutcome`.
fn outcome_text(o: &Value) -> Option<String> {
    let issue = &o["issue"][0];
    issue["details"]["text"]
        .as_str()
        .or_else(|| issue["diagnostics"].as_str())
        .map(str::to_owned)
}

/// A relative literal reference `Type/id` (FHIR's resource type and id syntax), if it is one.
fn type_and_id(reference: &str) -> Option<(&str, &str)> {
    let (t, id) = reference.split_once('/')?;
    let type_ok = t.len() >= 2
        && t.starts_with(|c: char| c.is_ascii_uppercase())
        && t.chars().all(|c| c.is_ascii_alphabetic());
    let id_ok = (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    (type_ok && id_ok).then_some((t, id))
}

// ------------------------------------------------------------------------------------------
// Small servers of the tests: a counting proxy, a JSON API
// ------------------------------------------------------------------------------------------

struct ProxyInner {
    target: String,
    client: reqwest::Client,
    /// `METHOD /path?query` of every request, in arrival order.
    log: Mutex<Vec<String>>,
}

/// Forwards every request to a server and counts them.
#[derive(Clone)]
struct Proxy {
    inner: Arc<ProxyInner>,
}

impl Proxy {
    fn start(listener: TcpListener, target: &str) -> Proxy {
        let inner = Arc::new(ProxyInner {
            target: target.to_owned(),
            client: client(CLIENT_TIMEOUT),
            log: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(inner.clone());
        spawn_app(listener, app);
        Proxy { inner }
    }

    fn calls(&self) -> usize {
        self.inner.log.lock().expect("proxy log").len()
    }

    fn log_from(&self, from: usize) -> Vec<String> {
        self.inner.log.lock().expect("proxy log")[from..].to_vec()
    }
}

async fn forward(
    State(p): State<Arc<ProxyInner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    p.log
        .lock()
        .expect("proxy log")
        .push(format!("{method} {path}"));
    let mut req = p
        .client
        .request(method, format!("{}{path}", p.target))
        .body(body.to_vec());
    for name in [header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(v) = headers.get(&name) {
            req = req.header(name, v.clone());
        }
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            let ct = resp.headers().get(header::CONTENT_TYPE).cloned();
            let bytes = resp.bytes().await.unwrap_or_default();
            let mut out = (status, bytes).into_response();
            if let Some(ct) = ct {
                out.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            out
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("proxy: {e}")).into_response(),
    }
}

/// Serves fixed JSON documents at some paths; gives the base URL.
async fn json_api(docs: Vec<(&str, Value)>) -> String {
    let (listener, url) = bind().await;
    let mut app = axum::Router::new();
    for (path, doc) in docs {
        let doc = Arc::new(doc);
        app = app.route(
            path,
            get(move || {
                let doc = doc.clone();
                async move { axum::Json((*doc).clone()) }
            }),
        );
    }
    spawn_app(listener, app);
    url
}

/// A FHIR server stand-in that answers every search `GET /{Type}` with one `searchset` page of
/// its resources of that type; gives the base URL.
async fn fhir_r5_standin(resources: Vec<Value>) -> String {
    let (listener, url) = bind().await;
    let all = Arc::new(resources);
    let base = url.clone();
    let app = axum::Router::new().route(
        "/{rtype}",
        get(move |UrlPath(rtype): UrlPath<String>| {
            let all = all.clone();
            let base = base.clone();
            async move {
                let entry: Vec<Value> = all
                    .iter()
                    .filter(|r| r["resourceType"] == rtype.as_str())
                    .map(|r| json!({"fullUrl": format!("{base}/{}", key_of(r)), "resource": r, "search": {"mode": "match"}}))
                    .collect();
                let bundle = json!({
                    "resourceType": "Bundle",
                    "type": "searchset",
                    "link": [{"relation": "self", "url": format!("{base}/{rtype}")}],
                    "entry": entry
                });
                (
                    [(header::CONTENT_TYPE, "application/fhir+json")],
                    serde_json::to_vec(&bundle).expect("JSON"),
                )
            }
        }),
    );
    spawn_app(listener, app);
    url
}

// ------------------------------------------------------------------------------------------
// The engine under test
// ------------------------------------------------------------------------------------------

/// The `Sink` document `helios`.
fn sink_doc(url: &str, mode: &str, retries: u32) -> String {
    format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata: {{ name: helios }}
spec:
  fhir: {{ url: \"{url}\", version: R4, batchSize: 100, mode: {mode}, retries: {retries}, timeout: 30s }}
---
"
    )
}

/// Sends a push to the engine signed now with the connectors' secret.
async fn push(to: &EngineRouter, url: &str, body: &[u8]) -> Got {
    push_signed(to, url, SECRET, body).await
}

/// Sends a push to the engine signed now with `secret`.
async fn push_signed(to: &EngineRouter, url: &str, secret: &str, body: &[u8]) -> Got {
    signed_push(to, url, secret, Utc::now().timestamp(), body)
        .send()
        .await
}

// ------------------------------------------------------------------------------------------
// 1. FHIR-to-FHIR sync between two Helios servers
// ------------------------------------------------------------------------------------------

const SYNC_TYPES: [&str; 3] = ["Observation", "Patient", "Organization"];

fn patient(i: usize) -> Value {
    json!({
        "resourceType": "Patient",
        "id": format!("pat-{i:04}"),
        "active": true,
        "name": [{"family": format!("Family{i}"), "given": ["Ann"]}],
        "gender": if i.is_multiple_of(2) { "female" } else { "male" },
        "birthDate": format!("19{:02}-0{}-1{}", 40 + i % 60, 1 + i % 9, i % 10)
    })
}

fn organization(i: usize) -> Value {
    json!({
        "resourceType": "Organization",
        "id": format!("org-{i:04}"),
        "active": true,
        "name": format!("Clinic {i}")
    })
}

fn observation(i: usize) -> Value {
    json!({
        "resourceType": "Observation",
        "id": format!("obs-{i:04}"),
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}]},
        "subject": {"reference": format!("Patient/pat-{:04}", (i * 7) % 400)},
        "performer": [{"reference": format!("Organization/org-{:04}", i % 300)}],
        "effectiveDateTime": format!("2025-0{}-1{}T08:30:00Z", 1 + i % 9, i % 10),
        "valueQuantity": {"value": 60 + (i % 40), "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_sync_copies_1100_resources_between_two_helios_servers_then_only_what_changed() {
    let (source_listener, source_public) = bind().await;
    let (sink_listener, sink_public) = bind().await;
    let (source, sink) = tokio::join!(
        Helios::start_behind(Db::Memory, Some(source_public.clone())),
        Helios::start_behind(Db::Memory, Some(sink_public.clone()))
    );
    let source_proxy = Proxy::start(source_listener, &source.url);
    let sink_proxy = Proxy::start(sink_listener, &sink.url);
    let c = client(CLIENT_TIMEOUT);

    // The source holds 400 Patients, 300 Organizations and 400 Observations that reference
    // them, written with transaction Bundles of 100.
    let patients: Vec<Value> = (0..400).map(patient).collect();
    let organizations: Vec<Value> = (0..300).map(organization).collect();
    let observations: Vec<Value> = (0..400).map(observation).collect();
    for chunk in patients
        .chunks(100)
        .chain(organizations.chunks(100))
        .chain(observations.chunks(100))
    {
        seed(&c, &source.url, chunk).await;
    }
    let seeded = read_all(&c, &source, &SYNC_TYPES, MOST_PAGES).await;
    assert_eq!(seeded.len(), 1100, "the source holds what was seeded");

    let yaml = sink_doc(&sink_public, "transaction", 3)
        + &format!(
            "apiVersion: fosps.gravitate-health.eu/v1
kind: Source
metadata: {{ name: origin }}
spec: {{ type: fhir, fhirVersion: R4, url: \"{source_public}\", retries: 1, timeout: 30s }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: copy }}
spec:
  strategy: cron
  schedule: {{ cron: \"0 2 * * *\" }}
  sources: [origin]
  sync: {{ resourceTypes: [{}], incremental: true, pageSize: 100 }}
  sink: helios
",
            SYNC_TYPES.join(", ")
        );
    let defs = definitions(&yaml);
    let state = tempfile::tempdir().expect("state");

    // First run: everything.
    let (source_before, sink_before) = (source_proxy.calls(), sink_proxy.calls());
    let r1 = runner(&load(defs.path()), "copy", state.path());
    let report = run_with_deadline(&r1, RUN_TIMEOUT).await;
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!(
        (report.records_read, report.resources_written),
        (1100, 1100)
    );
    let source_log = source_proxy.log_from(source_before);
    assert_eq!(
        report.source_calls,
        source_log.len(),
        "the report counts every call the source received: {source_log:#?}"
    );
    let sink_log = sink_proxy.log_from(sink_before);
    assert_eq!(
        report.sink_calls,
        sink_log.len(),
        "the report counts every call the sink received: {sink_log:#?}"
    );
    assert!(
        sink_log.iter().all(|l| l == "POST /"),
        "the sink gets Bundles only: {sink_log:?}"
    );
    let ratio = (report.source_calls + report.sink_calls) as f64 / report.resources_written as f64;
    println!(
        "calls per resource (Helios to Helios): ({} source + {} sink) / {} resources written = {ratio:.4}",
        report.source_calls, report.sink_calls, report.resources_written
    );
    assert!(ratio <= 0.05, "{ratio} calls per resource");

    let copied = read_all(&c, &sink, &SYNC_TYPES, MOST_PAGES).await;
    assert_eq!(
        copied.keys().collect::<Vec<_>>(),
        seeded.keys().collect::<Vec<_>>(),
        "the sink holds exactly the source's resources"
    );
    for (k, r) in &seeded {
        assert_eq!(without_meta(&copied[k]), without_meta(r), "{k}");
    }
    let marks = watermarks(state.path(), "copy");
    for t in SYNC_TYPES {
        let newest = seeded
            .values()
            .filter(|r| r["resourceType"] == t)
            .filter_map(|r| r["meta"]["lastUpdated"].as_str())
            .max_by_key(|s| chrono::DateTime::parse_from_rfc3339(s).expect("an instant"))
            .expect("resources of the type");
        assert_eq!(
            marks.get(t).map(String::as_str),
            Some(newest),
            "the watermark of {t} is the newest lastUpdated read"
        );
    }
    drop(r1);

    // Five resources change at the source.
    let mut changed = vec![patients[3].clone(), patients[250].clone()];
    changed[0]["name"][0]["family"] = json!("Changed");
    changed[1]["active"] = json!(false);
    let mut o1 = observations[10].clone();
    o1["valueQuantity"]["value"] = json!(99);
    let mut o2 = observations[399].clone();
    o2["status"] = json!("amended");
    let mut org = organizations[100].clone();
    org["name"] = json!("Renamed clinic");
    changed.extend([o1, o2, org]);
    for r in &changed {
        let (status, answer) = put(&c, &source.url, r).await;
        assert!(
            (200..300).contains(&status),
            "update at the source: {answer}"
        );
    }

    // Second run, by a new runner on the same state directory: exactly what changed.
    let (source_before, sink_before) = (source_proxy.calls(), sink_proxy.calls());
    let r2 = runner(&load(defs.path()), "copy", state.path());
    let report = run_with_deadline(&r2, RUN_TIMEOUT).await;
    assert!(report.ok(), "{:#?}", report.failures);
    let second = source_proxy.log_from(source_before);
    assert_eq!(
        (report.records_read, report.resources_written),
        (5, 5),
        "only the 5 changed resources are read and written; source calls: {second:#?}"
    );
    assert_searched_from_watermarks(&second, "GET /", &SYNC_TYPES, &marks);
    assert_eq!(
        sink_proxy.calls() - sink_before,
        1,
        "5 resources in one Bundle"
    );

    // The sink: every resource once, each type counted by paging; the 5 updated.
    let copied = read_all(&c, &sink, &SYNC_TYPES, MOST_PAGES).await;
    let counts: Vec<usize> = SYNC_TYPES.iter().map(|t| count_of(&copied, t)).collect();
    println!("sink after the second run: {SYNC_TYPES:?} = {counts:?}");
    assert_eq!(
        counts,
        vec![400, 400, 300],
        "no duplicates, nothing missing"
    );
    let source_now = read_all(&c, &source, &SYNC_TYPES, MOST_PAGES).await;
    assert_eq!(source_now.len(), 1100);
    for (k, r) in &source_now {
        assert_eq!(
            without_meta(&copied[k]),
            without_meta(r),
            "{k} in the sink equals the source's"
        );
    }
    for r in &changed {
        assert_eq!(without_meta(&copied[&key_of(r)]), *r);
    }
}

// ------------------------------------------------------------------------------------------
// 2. IPS document Bundles imported into Helios as separate resources
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ips_bundles_split_into_helios_resolve_every_reference() {
    let dir = testdata("fhir-r4/gravitate-ips");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (missing from tests/data/)", dir.display()))
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    let read = |n: &String| -> Value {
        let text = std::fs::read_to_string(dir.join(n)).expect("a test data file");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{n}: {e}"))
    };
    let bundles: Vec<(String, Value)> = names
        .iter()
        .filter(|n| n.starts_with("Bundle-"))
        .map(|n| (n.clone(), read(n)))
        .collect();
    // The IG's other examples (not in any Bundle): some documents reference them
    // (Bundle-Ovl-gravitate-Alicia's Composition lists AllergyIntolerance/Ovl-Alicia-medication-allergy,
    // Observation/tobacco-use-example, Observation/alcohol-use-example), so they are served
    // too, as records that are resources already.
    let others: Vec<Value> = names
        .iter()
        .filter(|n| !n.starts_with("Bundle-"))
        .map(read)
        .collect();
    assert!(bundles.len() >= 17, "the IPS Bundles: {names:?}");
    for (n, b) in &bundles {
        assert_eq!(b["resourceType"], "Bundle", "{n}");
    }

    // Every entry of every Bundle, by `Type/id`: the versions found (a few ids are shared by
    // two Bundles, some with different content), and the entries' full URLs.
    let mut expected: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut full_urls = BTreeSet::new();
    let mut entries = 0;
    for (n, b) in &bundles {
        for e in b["entry"]
            .as_array()
            .unwrap_or_else(|| panic!("{n}: no entries"))
        {
            let r = &e["resource"];
            assert!(r["id"].is_string(), "{n}: an entry without an id");
            let versions = expected.entry(key_of(r)).or_default();
            if !versions.contains(r) {
                versions.push(r.clone());
            }
            if let Some(u) = e["fullUrl"].as_str() {
                full_urls.insert(u.to_owned());
            }
            entries += 1;
        }
    }
    for r in &others {
        expected.entry(key_of(r)).or_default().push(r.clone());
    }

    let helios = Helios::start(Db::Memory).await;
    let mut records: Vec<Value> = bundles.iter().map(|(_, b)| b.clone()).collect();
    records.extend(others.iter().cloned());
    let api = json_api(vec![("/bundles", json!({ "bundles": records }))]).await;
    // No mapping: records that are FHIR resources already pass through (docs/mapping.md,
    // docs/reference.md `spec.mapping`), Bundles split into their entries.
    let yaml = sink_doc(&helios.url, "transaction", 1)
        + &format!(
            "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: ips-import }}
spec:
  strategy: cron
  schedule: {{ cron: \"0 3 * * *\" }}
  source: {{ url: \"{api}\", retries: 0, timeout: 10s }}
  fetch:
    request: {{ path: /bundles }}
    records: $.bundles[*]
  splitBundles: true
  sink: helios
"
        );
    let defs = definitions(&yaml);
    let state = tempfile::tempdir().expect("state");
    let r = runner(&load(defs.path()), "ips-import", state.path());
    let report = run_with_deadline(&r, RUN_TIMEOUT).await;
    println!(
        "IPS import: {} records read, {} resources written ({} Bundle entries + {} other resources, {} distinct), {} sink calls",
        report.records_read,
        report.resources_written,
        entries,
        others.len(),
        expected.len(),
        report.sink_calls
    );
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!(report.records_read, records.len());
    // A `Type/id` in several Bundles is written once per run (its last version).
    assert_eq!(report.resources_written, expected.len());

    // Every entry is a resource of Helios, equal (apart from meta) to a version of it.
    let c = client(CLIENT_TIMEOUT);
    let mut stored: BTreeMap<String, Value> = BTreeMap::new();
    for (k, versions) in &expected {
        let (status, got) = get_json(&c, &format!("{}/{k}", helios.url)).await;
        assert_eq!(status, 200, "GET {k}: {got}");
        let got = without_meta(&got);
        assert!(
            versions.iter().any(|v| without_meta(v) == got),
            "{k} in Helios is none of the versions imported: {got}"
        );
        stored.insert(k.clone(), got);
    }

    // Every reference of every stored resource resolves: the documents can be rebuilt.
    let mut resolved: HashMap<String, u16> = HashMap::new();
    let mut unresolved = Vec::new();
    let mut not_literal = BTreeSet::new();
    let mut checked = 0;
    for (k, r) in &stored {
        let mut refs = Vec::new();
        references(r, &mut refs);
        for reference in refs {
            assert!(
                !full_urls.contains(&reference) || type_and_id(&reference).is_some(),
                "{k} still refers to the entry full URL `{reference}`: not rewritten"
            );
            let Some((t, id)) = type_and_id(&reference) else {
                not_literal.insert(format!("{k} -> {reference}"));
                continue;
            };
            let target = format!("{t}/{id}");
            let status = match resolved.get(&target) {
                Some(s) => *s,
                None => {
                    let (s, _) = get_json(&c, &format!("{}/{target}", helios.url)).await;
                    resolved.insert(target.clone(), s);
                    s
                }
            };
            checked += 1;
            if status != 200 {
                unresolved.push(format!("{k} -> {target}: {status}"));
            }
        }
    }
    println!(
        "{checked} Type/id references checked ({} distinct targets); not Type/id, left out: {not_literal:?}",
        resolved.len()
    );
    assert!(checked > 300, "only {checked} references checked");
    assert!(
        unresolved.is_empty(),
        "references that do not resolve in Helios: {unresolved:#?}"
    );
    // Each document's Composition and every resource its sections list are there.
    for (n, b) in &bundles {
        let comp = &b["entry"][0]["resource"];
        assert_eq!(comp["resourceType"], "Composition", "{n}");
        let (status, _) = get_json(&c, &format!("{}/{}", helios.url, key_of(comp))).await;
        assert_eq!(status, 200, "{n}: its Composition");
    }
}

// ------------------------------------------------------------------------------------------
// 3. Push into Helios: sync, then queued across a Helios restart
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_into_helios_sync_then_queued_across_a_helios_restart() {
    let mut helios = Helios::start(Db::File).await;
    let yaml = sink_doc(&helios.url, "batch", 0)
        + &format!(
            "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: admissions }}
spec:
  strategy: push
  sink: helios
  push:
    auth: {{ hmac: {{ secret: \"{SECRET}\", tolerance: 60s }} }}
    mode: sync
  tables:
    sex: {{ map: {{ M: male, F: female }} }}
  mapping:
    resourceType: Patient
    id: {{ $path: $.id }}
    name: [ {{ family: {{ $path: $.family }} }} ]
    gender: {{ $translate: {{ $path: $.sex }}, $table: sex }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: feed }}
spec:
  strategy: push
  sink: helios
  push:
    auth: {{ hmac: {{ secret: \"{SECRET}\", tolerance: 60s }} }}
    mode: queued
"
        );
    let (served, _defs, _state) = open_engine(&yaml, CLIENT_TIMEOUT);
    let c = client(CLIENT_TIMEOUT);

    // Sync: a signed payload is mapped, written, and read back from Helios; one signed with
    // another secret is refused and written nowhere.
    let admissions = format!("{}/push/admissions", served.base);
    let got = push_signed(
        &served,
        &admissions,
        "not-the-secret-0123456789",
        br#"{"id":"adm-0","family":"Bianchi","sex":"M"}"#,
    )
    .await;
    assert_eq!(got.status, 401, "{}", got.text);
    let (status, _) = get_json(&c, &format!("{}/Patient/adm-0", helios.url)).await;
    assert_eq!(status, 404, "a refused push is not written");
    let got = push(
        &served,
        &admissions,
        br#"{"id":"adm-1","family":"Rossi","sex":"F"}"#,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json()["status"], "written", "{}", got.text);
    let (status, read) = get_json(&c, &format!("{}/Patient/adm-1", helios.url)).await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(
        without_meta(&read),
        json!({"resourceType": "Patient", "id": "adm-1", "name": [{"family": "Rossi"}], "gender": "female"})
    );

    // Queued: 500 pushes; Helios is killed after 150 and started again after 350.
    let ep = served.engine.pushes["feed"].clone();
    let drainer = Drainer::start(ep.clone());
    let url = format!("{}/push/feed", served.base);
    let ids: Vec<String> = (0..500).map(|i| format!("q-{i:04}")).collect();
    let mut acknowledged = Vec::new();
    let mut down_at = None;
    for (chunk_no, chunk) in ids.chunks(10).enumerate() {
        let sent = chunk_no * 10;
        if sent == 150 {
            helios.kill();
            down_at = Some(Instant::now());
        }
        if sent == 350 {
            // Nothing can have been written while Helios was down: at least the 200 payloads
            // acknowledged since are still queued.
            let queued = ep.depths().0;
            assert!(
                queued >= 200,
                "{queued} payloads queued while the sink was down"
            );
            helios.restart().await;
            println!(
                "Helios down for {:?}, {queued} payloads queued",
                down_at.map(|t| t.elapsed())
            );
        }
        let answers = futures_util::future::join_all(chunk.iter().map(|id| {
            let body = patient_payload(id);
            let served = &served;
            let url = url.clone();
            async move { push(served, &url, &body).await }
        }))
        .await;
        for (id, got) in chunk.iter().zip(answers) {
            assert_eq!(got.status, 202, "{id}: {}", got.text);
            assert_eq!(got.json()["status"], "queued", "{id}: {}", got.text);
            acknowledged.push(id.clone());
        }
    }
    assert_eq!(acknowledged.len(), 500);
    let started = Instant::now();
    let e = ep.clone();
    wait_until(
        Duration::from_secs(40),
        "the drainer catches up",
        move || e.depths().0 == 0,
    )
    .await;
    println!("queue drained {:?} after the last push", started.elapsed());
    assert_eq!(
        ep.depths().1,
        0,
        "no dead letters: {:?}",
        ep.dead_letters().await
    );
    let shown = served
        .get(format!("{}/connectors/feed", served.base))
        .send()
        .await;
    assert_eq!(shown.json()["push"]["queued"], 0, "{}", shown.text);
    assert_eq!(shown.json()["push"]["deadLetters"], 0, "{}", shown.text);

    // Every acknowledged payload is in Helios exactly once, and nothing else is.
    let patients = search_all(&c, &helios, "Patient", MOST_PAGES).await;
    let mut by_id: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for p in &patients {
        by_id
            .entry(p["id"].as_str().unwrap_or("?").to_owned())
            .or_default()
            .push(p);
    }
    let twice: Vec<&String> = by_id
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, _)| k)
        .collect();
    assert!(twice.is_empty(), "listed more than once: {twice:?}");
    let want: BTreeSet<String> = acknowledged
        .iter()
        .cloned()
        .chain(["adm-1".to_owned()])
        .collect();
    let have: BTreeSet<String> = by_id.keys().cloned().collect();
    let missing: Vec<&String> = want.difference(&have).collect();
    let extra: Vec<&String> = have.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    for id in &acknowledged {
        assert_eq!(
            without_meta(by_id[id][0]),
            serde_json::from_slice::<Value>(&patient_payload(id)).expect("JSON"),
            "Patient/{id}"
        );
    }
    drainer.stop().await;
}

// ------------------------------------------------------------------------------------------
// 4. `engine run` when Helios refuses a resource
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_run_fails_and_prints_the_outcome_when_helios_refuses_a_resource() {
    let helios = Helios::start(Db::Memory).await;
    let c = client(CLIENT_TIMEOUT);

    // What Helios answers for each R5-only type, asked directly.
    let mut refusals = BTreeMap::new();
    for t in ["RegulatedAuthorization", "InventoryItem"] {
        let (status, answer) =
            put(&c, &helios.url, &json!({"resourceType": t, "id": "probe"})).await;
        assert!(
            (400..500).contains(&status),
            "an R4 server refuses a {t}: {status} {answer}"
        );
        assert_eq!(answer["resourceType"], "OperationOutcome", "{answer}");
        let text = outcome_text(&answer).expect("an issue text");
        refusals.insert(t, text);
    }

    // A JSON API whose record a mapping turns into a RegulatedAuthorization, and an R5 FHIR
    // server (a stand-in) holding a Patient and an InventoryItem, copied as they are. Neither
    // says its version, so `engine validate` (which refuses an R5 type or source for an R4
    // sink it knows of) lets them through to Helios.
    let api = json_api(vec![(
        "/authorizations",
        json!({"items": [{"id": "ra-1", "type": "RegulatedAuthorization", "subject": "MedicinalProductDefinition/mp-1"}]}),
    )])
    .await;
    let r5 = fhir_r5_standin(vec![
        json!({"resourceType": "Patient", "id": "ok-1", "active": true}),
        json!({"resourceType": "InventoryItem", "id": "inv-1", "status": "active"}),
    ])
    .await;
    let yaml = sink_doc(&helios.url, "transaction", 0)
        + &format!(
            "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: to-r5-type }}
spec:
  strategy: cron
  schedule: {{ cron: \"0 4 * * *\" }}
  source: {{ url: \"{api}\", retries: 0, timeout: 10s }}
  fetch:
    request: {{ path: /authorizations }}
    records: $.items[*]
  sink: helios
  mapping:
    # The type comes from the record, so `engine validate` cannot refuse it: Helios does.
    resourceType: {{ $path: $.type }}
    id: {{ $path: $.id }}
    subject: [ {{ reference: {{ $path: $.subject }} }} ]
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: from-r5-server }}
spec:
  strategy: cron
  schedule: {{ cron: \"0 4 * * *\" }}
  source: {{ type: fhir, url: \"{r5}\", retries: 0, timeout: 10s }}
  sync: {{ resourceTypes: [Patient, InventoryItem] }}
  sink: helios
"
        );
    let defs = definitions(&yaml);

    for (name, t, refused) in [
        (
            "to-r5-type",
            "RegulatedAuthorization",
            "RegulatedAuthorization/ra-1",
        ),
        ("from-r5-server", "InventoryItem", "InventoryItem/inv-1"),
    ] {
        let state = tempfile::tempdir().expect("state");
        let out = exit_of(
            engine_run_command(defs.path(), name, state.path()),
            BINARY_TIMEOUT,
        )
        .await;
        println!(
            "`engine run {name}`: exit {:?}\nstdout: {}\nstderr: {}",
            out.code, out.stdout, out.stderr
        );
        assert_ne!(out.code, Some(0), "{out:#?}");
        let text = &refusals[&t];
        let escaped = serde_json::to_string(text).expect("JSON");
        let escaped = escaped.trim_matches('"');
        assert!(
            out.stderr.contains(text.as_str()) || out.stderr.contains(escaped),
            "Helios's OperationOutcome text `{text}` on stderr: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("OperationOutcome") && out.stderr.contains(refused),
            "the OperationOutcome, and the resource refused ({refused}), on stderr: {}",
            out.stderr
        );
    }
}
