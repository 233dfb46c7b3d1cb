//! FHIR versions and identities through the pull proxy, against two FHIR stand-ins
//! (`fhir_standin::FhirSource`): the same `Patient/1` on two servers gives two entries whose
//! `fullUrl`s differ and each read back that very resource (search and batch); R4 and R5
//! sources are never merged into one answer unannounced, and each version has its own base
//! (`/fhir/{connector}/R4`, `/R5`), cached apart.

use std::time::Duration;

use serde_json::{Value, json};

use crate::engine_router::EngineRouter;
use crate::engine_under_test::{definitions, load};
use crate::fhir_resources::entries_of;
use crate::fhir_standin::FhirSource;
use crate::local_http::assert_outcome;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

fn patient(id: &str, family: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]})
}

/// Two named FHIR sources (`a` and `b`, with these `fhirVersion`s; none when empty) and one
/// pull connector `proxy` over both, serving Patient search and read and batches, with a
/// cache.
fn proxy_yaml(a: &FhirSource, a_version: &str, b: &FhirSource, b_version: &str) -> String {
    let source = |name: &str, url: &str, version: &str| {
        let version = if version.is_empty() {
            String::new()
        } else {
            format!("fhirVersion: {version}, ")
        };
        format!(
            "apiVersion: fosps.gravitate-health.eu/v1\nkind: Source\nmetadata: {{ name: {name} }}\n\
             spec: {{ type: fhir, {version}url: \"{url}\", retries: 0, timeout: 5s }}\n---\n"
        )
    };
    format!(
        "{}{}{}",
        source("a", &a.url, a_version),
        source("b", &b.url, b_version),
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: proxy }
spec:
  strategy: pull
  sources: [a, b]
  pull:
    batch: true
    resources:
      - type: Patient
        search: { params: { _count: { type: integer, default: 20, max: 100 } } }
        read: {}
  cache: { ttl: 5m, maxEntries: 100 }
"#
    )
}

fn engine_of(yaml: &str) -> (EngineRouter, tempfile::TempDir) {
    let defs = definitions(yaml);
    let engine = EngineRouter::new(
        load(defs.path()),
        &defs.path().join("state"),
        CLIENT_TIMEOUT,
    );
    (engine, defs)
}

/// The `fullUrl` and resource of every match of a searchset.
fn matches(bundle: &Value) -> Vec<(String, Value)> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| {
            (
                e["fullUrl"].as_str().unwrap_or("").to_owned(),
                e["resource"].clone(),
            )
        })
        .collect()
}

/// Reads every `fullUrl` through the engine and checks each gives back its own resource.
async fn assert_read_back(engine: &EngineRouter, entries: &[(String, Value)]) {
    for (url, resource) in entries {
        assert!(
            url.starts_with(&format!("{}/fhir/proxy/", engine.base)),
            "a fullUrl of the engine: {url}"
        );
        let got = engine.get(url).send().await;
        assert_eq!(got.status, 200, "{url}: {}", got.text);
        assert_eq!(&got.json(), resource, "{url} reads back its own resource");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_on_two_servers_gives_two_full_urls_each_reading_back_its_own() {
    let (a, b) = tokio::join!(FhirSource::start(), FhirSource::start());
    a.put(patient("1", "From A"));
    b.put(patient("1", "From B"));
    b.put(patient("2", "Only B"));
    let (engine, _defs) = engine_of(&proxy_yaml(&a, "R4", &b, ""));

    let got = engine.get("/fhir/proxy/Patient").send().await;
    assert_eq!(got.status, 200, "{}", got.text);
    let b_json = got.json();
    let found = matches(&b_json);
    assert_eq!(found.len(), 3, "{b_json}");
    // bdl-7: no two entries share a fullUrl (they have no versionId).
    let mut urls: Vec<&str> = found.iter().map(|(u, _)| u.as_str()).collect();
    urls.sort_unstable();
    urls.dedup();
    assert_eq!(urls.len(), 3, "distinct fullUrls: {b_json}");
    assert_read_back(&engine, &found).await;
    assert_eq!(
        found.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(),
        [
            "http://engine.test/fhir/proxy/a/Patient/1",
            "http://engine.test/fhir/proxy/b/Patient/1",
            "http://engine.test/fhir/proxy/b/Patient/2",
        ]
    );

    // A source-qualified read asks that source only: `Patient/2` is not on `a`, and an unknown
    // source is not found without any upstream call.
    let before = (a.calls(), b.calls());
    let got = engine.get("/fhir/proxy/a/Patient/2").send().await;
    assert_outcome(&got, 404, &[]);
    assert_eq!(b.calls(), before.1, "`b` is not asked for a's resource");
    let got = engine.get("/fhir/proxy/nowhere/Patient/1").send().await;
    assert_outcome(&got, 404, &["nowhere"]);
    assert_eq!((a.calls(), b.calls()), (before.0 + 1, before.1));
    // A hostile id through the source route is refused before any call.
    let got = engine.get("/fhir/proxy/a/Patient/a%2F..%2Fb").send().await;
    assert_outcome(&got, 400, &[]);
    assert_eq!((a.calls(), b.calls()), (before.0 + 1, before.1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_gives_each_resource_a_full_url_that_reads_it_back() {
    let (a, b) = tokio::join!(FhirSource::start(), FhirSource::start());
    a.put(patient("1", "From A"));
    b.put(patient("1", "From B"));
    let (engine, _defs) = engine_of(&proxy_yaml(&a, "", &b, ""));
    let batch = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Patient"}},
            {"request": {"method": "GET", "url": "Patient/1"}}
        ]
    });
    let got = engine
        .post("/fhir/proxy")
        .header("content-type", "application/fhir+json")
        .body(batch.to_string())
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let answer = got.json();
    let search = &answer["entry"][0]["resource"];
    let found = matches(search);
    assert_eq!(found.len(), 2, "{answer}");
    assert_ne!(found[0].0, found[1].0, "{answer}");
    assert_read_back(&engine, &found).await;
    // The read's entry is the first source's resource, under that source's engine URL (never
    // the source's own address).
    let read = &answer["entry"][1];
    let url = read["fullUrl"].as_str().unwrap_or("");
    assert_eq!(url, "http://engine.test/fhir/proxy/a/Patient/1", "{answer}");
    assert_read_back(&engine, &[(url.to_owned(), read["resource"].clone())]).await;
    assert!(!answer.to_string().contains(&a.url), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_and_r5_sources_are_never_mixed_unannounced() {
    let (r4, r5) = tokio::join!(FhirSource::start(), FhirSource::start());
    r4.put(patient("1", "From R4"));
    r5.put(patient("1", "From R5"));
    r5.put(patient("5", "Only R5"));
    let (engine, _defs) = engine_of(&proxy_yaml(&r4, "R4", &r5, "R5"));

    // The versionless base mixes nothing: it names the versions' bases, and asks no source.
    for got in [
        engine.get("/fhir/proxy/Patient").send().await,
        engine.get("/fhir/proxy/Patient/1").send().await,
        engine
            .post("/fhir/proxy")
            .body(json!({"resourceType": "Bundle", "type": "batch", "entry": []}).to_string())
            .send()
            .await,
    ] {
        assert_outcome(&got, 404, &["/fhir/proxy/R4", "/fhir/proxy/R5"]);
    }
    assert_eq!((r4.calls(), r5.calls()), (0, 0));

    // Each version's base answers from its own sources only; its cache is its own.
    let got = engine.get("/fhir/proxy/R5/Patient").send().await;
    assert_eq!(got.status, 200, "{}", got.text);
    let five = got.json();
    let found = matches(&five);
    assert_eq!(
        found
            .iter()
            .map(|(_, r)| r["name"][0]["family"].clone())
            .collect::<Vec<_>>(),
        [json!("From R5"), json!("Only R5")],
        "{five}"
    );
    assert_read_back(&engine, &found).await;
    assert_eq!(r4.calls(), 0, "the R4 source is not asked for R5");
    assert_eq!(
        five["link"][0]["url"],
        "http://engine.test/fhir/proxy/R5/Patient"
    );

    let got = engine.get("/fhir/proxy/R4/Patient").send().await;
    assert_eq!(got.status, 200, "{}", got.text);
    let four = got.json();
    assert_eq!(
        entries_of(&four, "match"),
        [patient("1", "From R4")],
        "{four}"
    );

    // Reads per version; `Patient/5` is on the R5 server only.
    let got = engine.get("/fhir/proxy/R5/Patient/1").send().await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json(), patient("1", "From R5"));
    let got = engine.get("/fhir/proxy/R4/Patient/5").send().await;
    assert_outcome(&got, 404, &[]);
    // A version the connector has no source of.
    let got = engine.get("/fhir/proxy/R4B/Patient").send().await;
    assert_outcome(&got, 404, &["R4B"]);

    // A batch per version.
    let got = engine
        .post("/fhir/proxy/R5")
        .body(
            json!({"resourceType": "Bundle", "type": "batch",
                   "entry": [{"request": {"method": "GET", "url": "Patient"}}]})
            .to_string(),
        )
        .send()
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let batch = got.json();
    assert_eq!(matches(&batch["entry"][0]["resource"]).len(), 2, "{batch}");
    assert!(!batch.to_string().contains("From R4"), "{batch}");
}

/// A pull connector over one FHIR source whose Observations carry local times (no offset),
/// mapped with `$dateTime` and `$instant`, in the zone `zone` (none when empty).
fn local_times_yaml(source: &FhirSource, zone: &str) -> String {
    let zone = if zone.is_empty() {
        String::new()
    } else {
        format!("  timeZone: {zone}\n")
    };
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: readings }}
spec:
  strategy: pull
{zone}  source: {{ type: fhir, url: "{}", retries: 0, timeout: 5s }}
  pull:
    resources:
      - type: Observation
        search: {{ params: {{}} }}
  mapping:
    resourceType: Observation
    id: {{ $path: $.id }}
    status: final
    code: {{ text: glucose }}
    effectiveDateTime: {{ $dateTime: {{ $path: $.effectiveDateTime }} }}
    issued: {{ $instant: {{ $path: $.issued }} }}
"#,
        source.url
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_times_are_read_in_the_declared_zone_and_instants_have_seconds_and_a_zone() {
    let source = FhirSource::start().await;
    // A legacy server that keeps Vienna wall-clock times without an offset.
    for (id, taken, issued) in [
        ("winter", "2026-01-15T08:30", "2026-01-15 08:31"),
        ("summer", "2026-07-15T08:30:00", "2026-07-15T08:31:02.5"),
        (
            "offset",
            "2026-07-15T08:30:00-04:00",
            "2026-07-15T08:31:00Z",
        ),
    ] {
        source.put(json!({
            "resourceType": "Observation", "id": id,
            "effectiveDateTime": taken, "issued": issued
        }));
    }
    let (engine, _defs) = engine_of(&local_times_yaml(&source, "Europe/Vienna"));
    let got = engine.get("/fhir/readings/Observation").send().await;
    assert_eq!(got.status, 200, "{}", got.text);
    let bundle = got.json();
    // The stand-in answers in id order: offset, summer, winter.
    let times: Vec<(Value, Value)> = entries_of(&bundle, "match")
        .iter()
        .map(|r| (r["effectiveDateTime"].clone(), r["issued"].clone()))
        .collect();
    assert_eq!(
        times,
        [
            (
                json!("2026-07-15T08:30:00-04:00"),
                json!("2026-07-15T08:31:00+00:00")
            ),
            (
                json!("2026-07-15T08:30:00+02:00"),
                json!("2026-07-15T08:31:02.500+02:00")
            ),
            (
                json!("2026-01-15T08:30:00+01:00"),
                json!("2026-01-15T08:31:00+01:00")
            ),
        ],
        "{bundle}"
    );

    // A local time the zone's clocks skip fails that source's answer, naming the time and
    // the zone; an instant from a date alone is refused, never made up as midnight.
    source.put(json!({
        "resourceType": "Observation", "id": "skipped",
        "effectiveDateTime": "2026-03-29T02:30", "issued": "2026-03-29T04:00:00Z"
    }));
    let got = engine
        .get("/fhir/readings/Observation")
        .header("cache-control", "no-cache")
        .send()
        .await;
    assert_outcome(&got, 502, &["2026-03-29T02:30", "Europe/Vienna"]);
    let (engine, _defs) = engine_of(&local_times_yaml(&source, ""));
    source.put(json!({
        "resourceType": "Observation", "id": "skipped",
        "effectiveDateTime": "2026-03-29T02:30", "issued": "2026-03-29"
    }));
    let got = engine.get("/fhir/readings/Observation").send().await;
    assert_outcome(&got, 502, &["2026-03-29", "not an instant"]);
}
