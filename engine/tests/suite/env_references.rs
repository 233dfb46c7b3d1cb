//! `${env:}` and `${file:}` references in typed fields (durations, sizes, integers, booleans,
//! enums): a definition that uses them loads into the same model as the one with the resolved
//! values written out, and serves the same way; the published schema accepts a reference
//! where editors would otherwise flag the field; a changed variable changes the fingerprint,
//! so a reload rebuilds what it configures.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use engine::config::secrets::Environment;
use engine::config::validate::{Options, validate};
use engine::model::Model;
use serde_json::json;

use crate::engine_router::EngineRouter;
use crate::local_http;

/// Variables the test chooses; nothing else is set.
struct Vars(HashMap<&'static str, String>);

impl Environment for Vars {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
    fn read(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// A pull connector over `url` whose typed settings are `settings` (already indented).
fn definition(url: &str, settings: &Settings<'_>) -> String {
    let Settings {
        timeout,
        retries,
        max_answer,
        fhir_version,
        ttl,
        max_entries,
        max_bytes,
        allow_no_cache,
    } = settings;
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata:
  name: labels
spec:
  strategy: pull
  fhirVersion: {fhir_version}
  source:
    url: {url}
    timeout: {timeout}
    retries: {retries}
    maxAnswer: {max_answer}
  pull:
    resources:
      - type: MedicinalProductDefinition
        search:
          request:
            path: /labels
          records: $.results[*]
  mapping:
    resourceType: MedicinalProductDefinition
    id: {{ $path: $.id }}
    name: [{{ productName: {{ $path: $.name }} }}]
  cache:
    ttl: {ttl}
    maxEntries: {max_entries}
    maxBytes: {max_bytes}
    allowNoCache: {allow_no_cache}
"#
    )
}

struct Settings<'a> {
    timeout: &'a str,
    retries: &'a str,
    max_answer: &'a str,
    fhir_version: &'a str,
    ttl: &'a str,
    max_entries: &'a str,
    max_bytes: &'a str,
    allow_no_cache: &'a str,
}

const LITERALS: Settings<'static> = Settings {
    timeout: "7s",
    retries: "0",
    max_answer: "2MiB",
    fhir_version: "R4B",
    ttl: "10m",
    max_entries: "50",
    max_bytes: "1MiB",
    allow_no_cache: "false",
};

/// The same settings as references: some set, some from their `:-default`, one from a file.
const REFERENCES: Settings<'static> = Settings {
    timeout: "${env:SOURCE_TIMEOUT}",
    retries: "${env:SOURCE_RETRIES:-0}",
    max_answer: "\"${env:MAX_ANSWER}\"",
    fhir_version: "${env:FHIR_VERSION}",
    ttl: "${file:ttl.txt}",
    max_entries: "${env:CACHE_ENTRIES}",
    max_bytes: "${env:CACHE_BYTES:-1MiB}",
    allow_no_cache: "${env:ALLOW_NO_CACHE}",
};

fn vars(timeout: &str) -> Vars {
    Vars(HashMap::from([
        ("SOURCE_TIMEOUT", timeout.to_owned()),
        ("MAX_ANSWER", "2MiB".to_owned()),
        ("FHIR_VERSION", "R4B".to_owned()),
        ("CACHE_ENTRIES", "50".to_owned()),
        ("ALLOW_NO_CACHE", "false".to_owned()),
    ]))
}

/// Loads `yaml` (with `ttl.txt` beside it) in `env`: the model, or the diagnostics.
fn load(dir: &Path, yaml: &str, env: &dyn Environment) -> Result<Model, String> {
    std::fs::write(dir.join("connector.yaml"), yaml).expect("write the definition");
    std::fs::write(dir.join("ttl.txt"), "10m\n").expect("write the file");
    let (files, read_errors) = engine::config::load::read_all(&[dir.to_path_buf()]).expect("read");
    let opts = Options {
        allow_unresolved: false,
        run_tests: false,
        fhir_schema: None,
        env,
    };
    let outcome = validate(&files, read_errors, &opts);
    outcome
        .model
        .ok_or_else(|| format!("{:#?}", outcome.diagnostics))
}

/// What the connector was compiled into, as far as its settings go.
fn compiled(model: &Model) -> String {
    let c = model.connector("labels").expect("the connector");
    format!("{:?}\n{:?}\n{:?}", c.fhir_version, c.strategy, c.sources)
}

#[test]
fn references_in_typed_fields_load_as_their_resolved_literals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let literal = load(
        dir.path(),
        &definition("http://127.0.0.1:9", &LITERALS),
        &vars("7s"),
    )
    .expect("the literal definition loads");
    let referenced = load(
        dir.path(),
        &definition("http://127.0.0.1:9", &REFERENCES),
        &vars("7s"),
    )
    .expect("the definition with references loads");
    assert_eq!(compiled(&referenced), compiled(&literal));
    let c = referenced.connector("labels").expect("the connector");
    assert_eq!(
        c.fingerprint,
        literal
            .connector("labels")
            .expect("the connector")
            .fingerprint,
        "the resolved definition is the literal one"
    );
}

#[test]
fn a_changed_variable_changes_the_fingerprint_so_a_reload_rebuilds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = definition("http://127.0.0.1:9", &REFERENCES);
    let before = load(dir.path(), &yaml, &vars("7s")).expect("loads");
    let again = load(dir.path(), &yaml, &vars("7s")).expect("loads");
    let after = load(dir.path(), &yaml, &vars("9s")).expect("loads");
    let print = |m: &Model| {
        m.connector("labels")
            .expect("connector")
            .fingerprint
            .clone()
    };
    assert_eq!(print(&before), print(&again));
    assert_ne!(print(&before), print(&after));
    assert_ne!(compiled(&before), compiled(&after));
}

#[test]
fn the_published_schema_accepts_references_in_typed_fields_only_as_references() {
    let schema = engine::config::schema::generate();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let doc = |cache: serde_json::Value| {
        json!({"apiVersion": "fosps.gravitate-health.eu/v1", "kind": "Connector",
            "metadata": {"name": "labels"},
            "spec": {"strategy": "pull", "fhirVersion": "${env:FHIR_VERSION}",
                "source": {"url": "http://x", "timeout": "${env:T:-5s}", "retries": "${env:R}"},
                "pull": {"resources": [{"type": "Patient", "search": {"request": {"path": "/p"}}}]},
                "cache": cache}})
    };
    let with_refs = doc(
        json!({"ttl": "${env:CACHE_TTL:-1m}", "maxEntries": "${env:N}",
        "maxBytes": "${file:size.txt}", "allowNoCache": "${env:B}"}),
    );
    let errors: Vec<String> = validator
        .iter_errors(&with_refs)
        .map(|e| format!("{} {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    for (field, bad) in [
        ("maxEntries", json!("fifty")),
        ("allowNoCache", json!("yes")),
        ("ttl", json!("soon")),
        ("maxBytes", json!("${env:}")),
    ] {
        let mut cache = json!({"ttl": "1m"});
        cache[field] = bad.clone();
        assert!(
            !validator.is_valid(&doc(cache)),
            "{field}: {bad} must not be accepted"
        );
    }
}

#[tokio::test]
async fn a_cache_configured_by_references_serves_as_the_literal_one() {
    for settings in [&LITERALS, &REFERENCES] {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let app = axum::Router::new().route(
            "/labels",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { axum::Json(json!({"results": [{"id": "a", "name": "Painaway"}]})) }
            }),
        );
        let (listener, url) = local_http::bind().await;
        let server = local_http::spawn_app(listener, app);
        let dir = tempfile::tempdir().expect("tempdir");
        let model = load(dir.path(), &definition(&url, settings), &vars("7s")).expect("loads");
        let state = tempfile::tempdir().expect("tempdir");
        let engine = EngineRouter::new(model, state.path(), Duration::from_secs(20));
        for _ in 0..2 {
            let got = engine
                .get("/fhir/labels/MedicinalProductDefinition")
                .header("cache-control", "no-cache")
                .send()
                .await;
            assert_eq!(got.status, 200, "{}", got.text);
            assert_eq!(
                got.json()["entry"][0]["resource"]["id"],
                "a",
                "{}",
                got.text
            );
        }
        // `allowNoCache: false` (from `${env:ALLOW_NO_CACHE}`): the caller's no-cache is
        // ignored, so the second search is served from the cache.
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        server.abort();
    }
}
