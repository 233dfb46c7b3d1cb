//! Several mappings per pull connector and FHIR search semantics on pull routes, through the
//! engine's real routes against a stand-in drug API on 127.0.0.1 that records every request
//! it gets: the shipped `examples/medications` connector (Medication and MedicationKnowledge
//! from one source, each with its own mapping, a read with its own), `token` parameters
//! (`system|code`, `|code`, `code`, `%7C`, escapes; declared systems refused or answered
//! empty without a call), `:exact` and `:contains` where declared, and the hostile values
//! (`|` alone, `a|b|c`, empty codes, AND, OR, 10,000 characters, unknown modifiers) each
//! answered with an `OperationOutcome` and never sent to the source. `engine map --type` and
//! `--read` on the example.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::engine_router::{EngineRouter, open_engine};
use crate::fhir_standin::fhir_json;
use crate::local_http::{Got, assert_outcome, bind, spawn_app};

/// Longest any single request of a test may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(10);
const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";

/// One request the stand-in received: its path and decoded query pairs.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    query: Vec<(String, String)>,
}

impl Seen {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A drug API like RxNav's: `GET /v1/drugs?rxcui=&name=&match=exact|contains|` (prefix
/// when no `match`) and `GET /v1/drugs/{rxcui}` (with synonyms); it records every request.
#[derive(Clone)]
struct DrugApi {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn drugs() -> Vec<Value> {
    vec![
        json!({"rxcui": "1049221", "name": "acetaminophen 325 MG Oral Tablet", "form": "Oral Tablet",
               "synonyms": ["APAP 325 MG Oral Tablet"]}),
        json!({"rxcui": "197361", "name": "amlodipine 5 MG Oral Tablet", "form": "Oral Tablet",
               "synonyms": []}),
        json!({"rxcui": "a|b", "name": "a drug whose code holds a bar", "form": "Oral Tablet",
               "synonyms": []}),
    ]
}

async fn drug_search(State(api): State<DrugApi>, RawQuery(q): RawQuery) -> Response {
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let seen = Seen {
        path: "/v1/drugs".into(),
        query,
    };
    let rxcui = seen.param("rxcui").map(str::to_owned);
    let name = seen.param("name").map(str::to_lowercase);
    let mode = seen.param("match").unwrap_or("").to_owned();
    api.seen.lock().expect("log").push(seen);
    let found: Vec<Value> = drugs()
        .into_iter()
        .filter(|d| rxcui.as_deref().is_none_or(|c| d["rxcui"] == c))
        .filter(|d| {
            let n = d["name"].as_str().unwrap_or("").to_lowercase();
            name.as_deref().is_none_or(|want| match mode.as_str() {
                "exact" => n == want,
                "contains" => n.contains(want),
                _ => n.starts_with(want),
            })
        })
        .collect();
    axum::Json(json!({"total": found.len(), "drugs": found})).into_response()
}

async fn drug_detail(State(api): State<DrugApi>, Path(id): Path<String>) -> Response {
    api.seen.lock().expect("log").push(Seen {
        path: format!("/v1/drugs/{id}"),
        query: Vec::new(),
    });
    match drugs().into_iter().find(|d| d["rxcui"] == id.as_str()) {
        Some(d) => axum::Json(json!({"drug": d})).into_response(),
        None => (
            axum::http::StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "no such drug"})),
        )
            .into_response(),
    }
}

impl DrugApi {
    async fn start() -> DrugApi {
        let (listener, url) = bind().await;
        let api = DrugApi {
            url,
            seen: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/v1/drugs", get(drug_search))
            .route("/v1/drugs/{id}", get(drug_detail))
            .with_state(api.clone());
        spawn_app(listener, app);
        api
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("log").clone()
    }

    fn last(&self) -> Seen {
        self.seen().pop().expect("the stand-in received a request")
    }
}

/// The shipped example, its source the stand-in.
fn example(api: &str) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/medications/connector.yaml"
    ))
    .expect("the example");
    let from = "${env:DRUGS_API_URL:-http://127.0.0.1:9102}";
    assert!(text.contains(from), "the example's source URL changed");
    text.replace(from, api)
}

/// A connector over the stand-in whose `code` refuses other systems and whose `name`
/// declares no modifier.
fn refusing(api: &str) -> String {
    format!(
        r#"
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: strict-drugs }}
spec:
  strategy: pull
  source: {{ url: "{api}", retries: 0 }}
  pull:
    resources:
      - type: Medication
        search:
          params:
            code: {{ type: token, systems: ["{RXNORM}"] }}
            name: {{}}
          request:
            path: /v1/drugs
            query:
              rxcui: '{{{{default params.code.code ""}}}}'
              system: '{{{{default params.code.system "any"}}}}'
              name: '{{{{default params.name ""}}}}' 
          records: $.drugs[*]
  mapping:
    resourceType: Medication
    id: {{ $path: $.rxcui }}
    code: {{ text: {{ $path: $.name }} }}
"#
    )
}

fn search_url(connector: &str, rtype: &str, pairs: &[(&str, &str)]) -> String {
    let mut u =
        url::Url::parse(&format!("http://engine.test/fhir/{connector}/{rtype}")).expect("a URL");
    if !pairs.is_empty() {
        u.query_pairs_mut().extend_pairs(pairs);
    }
    u.to_string()
}

fn matches(got: &Got) -> Vec<Value> {
    assert_eq!(got.status, 200, "{}", got.text);
    let b = got.json();
    assert_eq!(b["type"], "searchset", "{b}");
    b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"].clone())
        .collect()
}

async fn engine_of(yaml: &str) -> (EngineRouter, tempfile::TempDir, tempfile::TempDir) {
    open_engine(yaml, TIMEOUT)
}

#[tokio::test]
async fn one_source_serves_two_types_each_with_its_own_mapping() {
    let api = DrugApi::start().await;
    let (engine, _d, _s) = engine_of(&example(&api.url)).await;
    let code = format!("{RXNORM}|1049221");

    let meds = matches(
        &engine
            .get(search_url(
                "medications",
                "Medication",
                &[("code", code.as_str())],
            ))
            .send()
            .await,
    );
    assert_eq!(meds.len(), 1, "{meds:?}");
    assert_eq!(meds[0]["resourceType"], "Medication");
    assert_eq!(meds[0]["id"], "1049221");
    assert_eq!(meds[0]["form"]["text"], "Oral Tablet", "{}", meds[0]);

    let known = matches(
        &engine
            .get(search_url(
                "medications",
                "MedicationKnowledge",
                &[("code", code.as_str())],
            ))
            .send()
            .await,
    );
    assert_eq!(known.len(), 1, "{known:?}");
    assert_eq!(known[0]["resourceType"], "MedicationKnowledge");
    assert_eq!(known[0]["doseForm"]["text"], "Oral Tablet", "{}", known[0]);
    assert!(known[0].get("synonym").is_none(), "{}", known[0]);

    // The read has its own mapping, over the detail endpoint's answer.
    let read = engine
        .get("/fhir/medications/MedicationKnowledge/1049221")
        .send()
        .await;
    assert_eq!(read.status, 200, "{}", read.text);
    let r = read.json();
    assert_eq!(r["resourceType"], "MedicationKnowledge");
    assert_eq!(r["id"], "1049221");
    assert_eq!(r["synonym"], json!(["APAP 325 MG Oral Tablet"]), "{r}");
    assert_eq!(api.last().path, "/v1/drugs/1049221");

    // Medication has no read: the type's routes are what it declares.
    let no_read = engine
        .get("/fhir/medications/Medication/1049221")
        .send()
        .await;
    assert_outcome(&no_read, 405, &["no read"]);
}

#[tokio::test]
async fn token_forms_reach_the_request_templates_as_system_and_code() {
    let api = DrugApi::start().await;
    let (engine, _d, _s) = engine_of(&refusing(&api.url)).await;

    // `system|code`: both parts; the source is asked by code.
    let pairs = [("code", format!("{RXNORM}|1049221"))];
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let got = engine
        .get(search_url("strict-drugs", "Medication", &pairs))
        .send()
        .await;
    assert_eq!(matches(&got).len(), 1, "{}", got.text);
    let seen = api.last();
    assert_eq!(seen.param("rxcui"), Some("1049221"), "{seen:?}");
    assert_eq!(seen.param("system"), Some(RXNORM), "{seen:?}");

    // `code`: any system (no `system` for the template).
    engine
        .get(search_url(
            "strict-drugs",
            "Medication",
            &[("code", "197361")],
        ))
        .send()
        .await;
    let seen = api.last();
    assert_eq!(seen.param("rxcui"), Some("197361"), "{seen:?}");
    assert_eq!(seen.param("system"), Some("any"), "{seen:?}");

    // A `|` written raw and one percent-encoded (`%7C`) are the same separator.
    for target in [
        format!("/fhir/strict-drugs/Medication?code={RXNORM}|197361"),
        format!("/fhir/strict-drugs/Medication?code={RXNORM}%7C197361"),
    ] {
        let got = engine.raw(Method::GET, &target).send().await;
        assert_eq!(matches(&got).len(), 1, "{target}: {}", got.text);
        let seen = api.last();
        assert_eq!(seen.param("rxcui"), Some("197361"), "{target}: {seen:?}");
        assert_eq!(seen.param("system"), Some(RXNORM), "{target}: {seen:?}");
    }

    // `\|` is a `|` inside the code, not a separator.
    let got = engine
        .get(search_url(
            "strict-drugs",
            "Medication",
            &[("code", r"a\|b")],
        ))
        .send()
        .await;
    assert_eq!(api.last().param("rxcui"), Some("a|b"));
    // The source answered the drug of that code, whose id (`a|b`, its code) is no FHIR id:
    // not served, and said in the Bundle.
    assert!(matches(&got).is_empty(), "{}", got.text);
    let said: Vec<Value> = got.json()["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "outcome")
        .map(|e| e["resource"].clone())
        .collect();
    assert_eq!(said.len(), 1, "{}", got.text);
    assert!(said[0].to_string().contains("a|b"), "{said:?}");
}

#[tokio::test]
async fn another_system_is_refused_or_answered_empty_as_declared_without_a_call() {
    let api = DrugApi::start().await;
    let yaml = format!("{}\n---\n{}", example(&api.url), refusing(&api.url));
    let (engine, _d, _s) = engine_of(&yaml).await;
    let snomed = [("code", "http://snomed.info/sct|387517004")];
    let none = [("code", "|1049221")];

    // `otherSystems: empty` (the example): an empty searchset, the source not asked.
    for pairs in [&snomed, &none] {
        let got = engine
            .get(search_url("medications", "Medication", pairs))
            .send()
            .await;
        assert!(matches(&got).is_empty(), "{}", got.text);
        assert_eq!(got.json()["total"], 0, "{}", got.text);
    }
    // The default, `refuse`: 400 naming the parameter and the accepted systems.
    let got = engine
        .get(search_url("strict-drugs", "Medication", &snomed))
        .send()
        .await;
    assert_outcome(&got, 400, &["`code`", "http://snomed.info/sct", RXNORM]);
    let got = engine
        .get(search_url("strict-drugs", "Medication", &none))
        .send()
        .await;
    assert_outcome(&got, 400, &["`code`", "(none)", RXNORM]);
    // A long system is quoted back cut short.
    let long = format!("http://{}|1", "s".repeat(4_000));
    let got = engine
        .get(search_url(
            "strict-drugs",
            "Medication",
            &[("code", long.as_str())],
        ))
        .send()
        .await;
    assert_outcome(&got, 400, &["`code`", "sss..."]);
    assert!(got.text.len() < 2_000, "{} bytes", got.text.len());
    assert!(api.seen().is_empty(), "{:?}", api.seen());
}

#[tokio::test]
async fn hostile_tokens_and_modifiers_get_an_operation_outcome_and_never_reach_the_source() {
    let api = DrugApi::start().await;
    let (engine, _d, _s) = engine_of(&example(&api.url)).await;
    let mk = "/fhir/medications/MedicationKnowledge";
    let cases: Vec<(String, u16, Vec<&str>)> = vec![
        (
            format!("{mk}?code=%7C"),
            400,
            vec!["`code`", "neither a system nor a code"],
        ),
        (
            format!("{mk}?code=|"),
            400,
            vec!["`code`", "neither a system nor a code"],
        ),
        (
            format!("{mk}?code=a|b|c"),
            400,
            vec!["`code`", "more than one `|`"],
        ),
        (format!("{mk}?code="), 400, vec!["`code`", "empty"]),
        (
            format!("{mk}?code={RXNORM}|"),
            400,
            vec!["`code`", "no code after `|`"],
        ),
        (
            format!("{mk}?code=1&code=2"),
            400,
            vec!["`code`", "more than once", "AND"],
        ),
        (
            format!("{mk}?code=1,2"),
            400,
            vec!["`code`", "comma list (OR)"],
        ),
        (
            format!("{mk}?code=1%2C2"),
            400,
            vec!["`code`", "comma list (OR)"],
        ),
        (
            format!("{mk}?code=a%5Cn"),
            400,
            vec!["`code`", "escapes only"],
        ),
        (format!("{mk}?code:text=1"), 400, vec!["`code`", "`:text`"]),
        (format!("{mk}?code:not=1"), 400, vec!["`code`", "`:not`"]),
        (
            format!("{mk}?name:text=x"),
            400,
            vec!["`name`", "`:text`", "`:exact`"],
        ),
        (format!("{mk}?name:=x"), 400, vec!["`name`"]),
        (
            format!("{mk}?name=a&name:exact=b"),
            400,
            vec!["`name`", "more than once"],
        ),
        (
            format!("{mk}?_count:exact=1"),
            400,
            vec!["`_count`", "no modifier"],
        ),
        (
            format!("{mk}?form:exact=x"),
            400,
            vec!["`form`", "accepted"],
        ),
        (format!("{mk}?code={}", "9".repeat(10_000)), 414, vec![]),
    ];
    for (target, status, words) in &cases {
        let got = engine.raw(Method::GET, target).send().await;
        let shown: String = target.chars().take(80).collect();
        assert_eq!(got.status, *status, "{shown}: {}", got.text);
        assert_outcome(&got, *status, words);
        // The caller's huge value is never echoed whole.
        assert!(got.text.len() < 2_000, "{shown}: {} bytes", got.text.len());
    }
    // A long token within the target limit, of another system: answered empty, not sent.
    let long = format!("{mk}?code={}|1", "s".repeat(4_000));
    let got = engine.raw(Method::GET, &long).send().await;
    assert!(matches(&got).is_empty(), "{}", got.text);
    assert!(api.seen().is_empty(), "{:?}", api.seen());
}

#[tokio::test]
async fn string_modifiers_reach_the_source_where_declared() {
    let api = DrugApi::start().await;
    let (engine, _d, _s) = engine_of(&example(&api.url)).await;
    let mk = |pairs: &[(&str, &str)]| search_url("medications", "MedicationKnowledge", pairs);

    // All three drugs start with "a"; the third's code `a|b` is its id, which is no FHIR id:
    // it is left out of the searchset (and said there, see `token_forms_...`).
    let prefix = matches(&engine.get(mk(&[("name", "a")])).send().await);
    assert_eq!(prefix.len(), 2, "{prefix:?}");
    assert_eq!(
        api.last().param("match"),
        None,
        "no modifier: `match` left out"
    );

    let exact = matches(
        &engine
            .get(mk(&[("name:exact", "amlodipine 5 MG Oral Tablet")]))
            .send()
            .await,
    );
    assert_eq!(exact.len(), 1, "{exact:?}");
    assert_eq!(exact[0]["id"], "197361");
    let seen = api.last();
    assert_eq!(seen.param("match"), Some("exact"), "{seen:?}");
    assert_eq!(seen.param("name"), Some("amlodipine 5 MG Oral Tablet"));

    let contains = matches(&engine.get(mk(&[("name:contains", "325 mg")])).send().await);
    assert_eq!(contains.len(), 1, "{contains:?}");
    assert_eq!(api.last().param("match"), Some("contains"));
    // A plain search after a modified one asks without `match` again.
    let again = matches(&engine.get(mk(&[("name", "amlodipine")])).send().await);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(api.last().param("match"), None);
}

/// A FHIR server stand-in that records its searches and answers an empty searchset.
async fn recording_fhir() -> (String, Arc<Mutex<Vec<String>>>) {
    let (listener, url) = bind().await;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |RawQuery(q): RawQuery| {
        let log = log.clone();
        async move {
            log.lock().expect("log").push(q.unwrap_or_default());
            fhir_json(
                200,
                &json!({"resourceType": "Bundle", "type": "searchset", "total": 0}),
            )
        }
    });
    spawn_app(listener, app);
    (url, seen)
}

#[tokio::test]
async fn a_fhir_source_gets_tokens_and_modifiers_as_fhir_writes_them() {
    let (url, seen) = recording_fhir().await;
    let yaml = format!(
        r#"
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: fhir-meds }}
spec:
  strategy: pull
  source: {{ type: fhir, url: "{url}/fhir", retries: 0 }}
  pull:
    resources:
      - type: Medication
        search:
          params:
            code: {{ type: token }}
            name: {{ modifiers: [contains] }}
"#
    );
    let (engine, _d, _s) = engine_of(&yaml).await;
    let got = engine
        .get(search_url(
            "fhir-meds",
            "Medication",
            &[("code", r"http://sys|a\,b"), ("name:contains", "para")],
        ))
        .send()
        .await;
    assert!(matches(&got).is_empty(), "{}", got.text);
    let q = seen.lock().expect("log").pop().expect("a search");
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect();
    assert!(
        pairs.contains(&("code".into(), r"http://sys|a\,b".into())),
        "{pairs:?}"
    );
    assert!(
        pairs.contains(&("name:contains".into(), "para".into())),
        "{pairs:?}"
    );
    assert!(
        !pairs.iter().any(|(k, _)| k.starts_with("_modifiers")),
        "{pairs:?}"
    );
}

fn engine_map(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_engine"))
        .arg("map")
        .args(["-d", "examples/medications", "--connector", "medications"])
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env_remove("DRUGS_API_URL")
        .output()
        .expect("engine runs")
}

#[test]
fn engine_map_runs_a_types_search_or_its_read() {
    let read = engine_map(&[
        "--type",
        "MedicationKnowledge",
        "--read",
        "1049221",
        "--input",
        "examples/medications/detail.json",
        "--check",
    ]);
    assert!(read.status.success(), "{read:?}");
    let out: Value = serde_json::from_slice(&read.stdout).expect("JSON");
    assert_eq!(out[0]["resourceType"], "MedicationKnowledge", "{out}");
    assert_eq!(
        out[0]["synonym"][1], "Paracetamol 325 MG Oral Tablet",
        "{out}"
    );

    let search = engine_map(&[
        "--type",
        "Medication",
        "--param",
        "code=1049221",
        "--input",
        "examples/medications/search.json",
    ]);
    assert!(search.status.success(), "{search:?}");
    let out: Value = serde_json::from_slice(&search.stdout).expect("JSON");
    assert_eq!(out[0]["resourceType"], "Medication", "{out}");

    let refused = engine_map(&[
        "--type",
        "Medication",
        "--param",
        "code=a|b|c",
        "--input",
        "examples/medications/search.json",
    ]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("search parameter `code`"), "{err}");
    assert!(err.contains("more than one `|`"), "{err}");

    let unknown = engine_map(&[
        "--type",
        "Patient",
        "--input",
        "examples/medications/search.json",
    ]);
    assert_eq!(unknown.status.code(), Some(2), "{unknown:?}");
}

#[test]
fn openapi_lists_token_forms_and_each_declared_modifier() {
    let o = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["openapi", "examples/medications"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env_remove("DRUGS_API_URL")
        .output()
        .expect("engine runs");
    assert!(o.status.success(), "{o:?}");
    let doc: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let params = |path: &str| -> Vec<Value> {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("{path} has parameters"))
    };
    let mk = params("/fhir/medications/MedicationKnowledge");
    let names: Vec<&str> = mk.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "code",
            "name",
            "name:exact",
            "name:contains",
            "_count",
            "_offset"
        ]
    );
    let code = mk.iter().find(|p| p["name"] == "code").expect("code");
    let text = code["schema"]["description"].as_str().unwrap_or_default();
    assert!(text.contains("`system|code`"), "{text}");
    assert!(text.contains(RXNORM), "{text}");
    // Medication has no read: its path is not offered.
    assert!(doc["paths"]["/fhir/medications/Medication/{id}"].is_null());
    assert!(doc["paths"]["/fhir/medications/MedicationKnowledge/{id}"]["get"].is_object());
}

#[test]
fn references_are_left_as_written_in_a_types_and_a_reads_own_mapping() {
    let dir = tempfile::tempdir().expect("a directory");
    let text = r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: drugs }
spec:
  strategy: pull
  source: { url: "https://api.example.org" }
  pull:
    resources:
      - type: Medication
        search: { request: { path: /drugs }, records: "$.drugs[*]" }
        read:
          request: { path: "/drugs/{{id}}" }
          mapping:
            resourceType: Medication
            id: { $path: $.id }
            code: { text: "read ${env:MM_UNSET_VARIABLE}" }
        mapping:
          resourceType: Medication
          id: { $path: $.id }
          code: { text: "search ${env:MM_UNSET_VARIABLE}" }
  tests:
    - name: a read's mapping keeps the text as written
      type: Medication
      interaction: read
      id: "1"
      input: { id: "1" }
      expect: [{ resourceType: Medication, id: "1", code: { text: "read ${env:MM_UNSET_VARIABLE}" } }]
    - name: the type's mapping keeps it too
      type: Medication
      input: { drugs: [{ id: "2" }] }
      expect: [{ resourceType: Medication, id: "2", code: { text: "search ${env:MM_UNSET_VARIABLE}" } }]
"#;
    std::fs::write(dir.path().join("drugs.yaml"), text).expect("write");
    let o = Command::new(env!("CARGO_BIN_EXE_engine"))
        .arg("validate")
        .arg(dir.path())
        .env_remove("MM_UNSET_VARIABLE")
        .output()
        .expect("engine runs");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("2 definition tests passed"), "{out}");
}
