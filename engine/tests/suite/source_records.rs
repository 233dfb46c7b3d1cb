//! Records a source answers that a pull route must not serve as they are: resources whose id
//! breaks FHIR's id rule (path characters, a number, 70 characters) and records repeated in
//! one answer are left out of a searchset, said in its `OperationOutcome` entries; a read
//! answered with a record of another id (a source ignoring the query, a loose match) is not
//! that resource: 404, or the record that has the id when the answer holds several.

use std::time::Duration;

use serde_json::{Value, json};

use crate::engine_router::{EngineRouter, open_engine};
use crate::local_http::{bind, spawn_app};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// A source answering `answer` to every request at `/labels`; its base URL.
async fn answering(answer: Value) -> String {
    let (listener, url) = bind().await;
    let app = axum::Router::new().route(
        "/labels",
        axum::routing::get(move || {
            let answer = answer.clone();
            async move { axum::Json(answer) }
        }),
    );
    spawn_app(listener, app);
    url
}

/// A pull connector `labels` serving `Basic` from `url`, search and read alike reading
/// `$.results[*]`, each record's `id` the resource's.
fn engine_of(url: &str) -> (EngineRouter, tempfile::TempDir, tempfile::TempDir) {
    let yaml = format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: labels }}
spec:
  strategy: pull
  source: {{ url: "{url}" }}
  pull:
    resources:
      - type: Basic
        search:
          request: {{ path: /labels }}
          records: $.results[*]
        read:
          request: {{ path: /labels, query: {{ id: "{{{{id}}}}" }} }}
          records: $.results[*]
  mapping:
    resourceType: Basic
    id: {{ $path: $.id }}
    code: {{ text: {{ $path: $.name }} }}
"#
    );
    open_engine(&yaml, CLIENT_TIMEOUT)
}

fn record(id: Value, name: &str) -> Value {
    json!({"id": id, "name": name})
}

#[tokio::test]
async fn ids_that_are_no_fhir_ids_and_repeated_records_are_left_out_of_a_search_and_said() {
    let long = "a".repeat(70);
    let url = answering(json!({"results": [
        record(json!("../x y"), "path"),
        record(json!("ok-1"), "first"),
        record(json!(12345), "number"),
        record(json!("ok-1"), "again"),
        record(json!(long), "long"),
        record(json!("ok-2"), "second"),
        record(json!("ok-1"), "thrice"),
    ]}))
    .await;
    let (engine, _defs, _state) = engine_of(&url);
    let got = engine
        .get(format!("{}/fhir/labels/Basic", engine.base))
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let bundle = got.json();
    let entries = bundle["entry"].as_array().expect("entries");
    let served: Vec<(&str, &str)> = entries
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Basic")
        .map(|e| {
            (
                e["resource"]["id"].as_str().unwrap_or("?"),
                e["resource"]["code"]["text"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(served, [("ok-1", "first"), ("ok-2", "second")], "{bundle}");
    let full_urls: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["fullUrl"].as_str())
        .collect();
    assert!(
        full_urls
            .iter()
            .all(|u| !u.contains(' ') && !u.contains("..")),
        "{full_urls:?}"
    );
    let said: Vec<String> = entries
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "OperationOutcome")
        .map(|e| e["resource"]["issue"][0].to_string())
        .collect();
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(
        said[0].contains("\"value\"")
            && said[0].contains("3 resource(s)")
            && said[0].contains("$[0]"),
        "{said:?}"
    );
    assert!(
        said[1].contains("duplicate")
            && said[1].contains("2 resource(s)")
            && said[1].contains("Basic/ok-1"),
        "{said:?}"
    );
}

#[tokio::test]
async fn a_read_answered_with_another_record_is_not_found_and_the_record_with_the_id_is_taken() {
    let url = answering(json!({"results": [record(json!("other"), "not asked")]})).await;
    let (engine, _defs, _state) = engine_of(&url);
    let got = engine
        .get(format!("{}/fhir/labels/Basic/wanted", engine.base))
        .send()
        .await;
    assert_eq!(got.status, 404, "{}", got.text);
    assert_eq!(got.json()["resourceType"], "OperationOutcome");

    let url = answering(json!({"results": [
        record(json!("other"), "not asked"),
        record(json!("wanted"), "asked"),
    ]}))
    .await;
    let (engine, _defs, _state) = engine_of(&url);
    let got = engine
        .get(format!("{}/fhir/labels/Basic/wanted", engine.base))
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let resource = got.json();
    assert_eq!(resource["id"], "wanted");
    assert_eq!(resource["code"]["text"], "asked");
}
