//! The end-to-end tests' own requests to a Helios FHIR Server (`helios_server`): a read as
//! JSON, seeding with a transaction Bundle, and every resource of some types by following the
//! searches' `next` links. Used by every subject that writes into Helios (`helios`, `shipped`,
//! `durability`, `bulk_export`, `fhir_versions_helios`, `outside_12`, `push_stream_queue`).

use std::collections::{BTreeMap, HashSet};

use serde_json::{Value, json};

use crate::fhir_resources::key_of;
use crate::helios_server::Helios;

/// `GET url` as FHIR JSON: the status and the body (`null` when it is not JSON).
pub async fn get_json(c: &reqwest::Client, url: &str) -> (u16, Value) {
    let resp = c
        .get(url)
        .header("accept", "application/fhir+json")
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Writes resources with one transaction Bundle of `PUT Type/id`; every entry must succeed.
pub async fn seed(c: &reqwest::Client, base: &str, resources: &[Value]) {
    let entry: Vec<Value> = resources
        .iter()
        .map(|r| json!({"resource": r, "request": {"method": "PUT", "url": key_of(r)}}))
        .collect();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entry});
    let resp = c
        .post(base)
        .header("content-type", "application/fhir+json")
        .header("accept", "application/fhir+json")
        .body(serde_json::to_vec(&bundle).expect("JSON"))
        .send()
        .await
        .expect("Helios answers a transaction");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, 200, "the seeding transaction: {text}");
    let answer: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("a JSON answer to the seeding transaction ({e}): {text}"));
    assert_eq!(answer["type"], "transaction-response", "{answer}");
    let answers = answer["entry"].as_array().expect("entries");
    assert_eq!(answers.len(), resources.len(), "{answer}");
    for a in answers {
        let s = a["response"]["status"].as_str().unwrap_or("");
        assert!(s.starts_with('2'), "a seeding entry failed: {a}");
    }
}

/// Every resource of a type, by following the search's `next` links (made to reach the
/// server directly); fails when the paging goes past `most_pages` pages or comes back to a
/// page.
pub async fn search_all(
    c: &reqwest::Client,
    h: &Helios,
    rtype: &str,
    most_pages: usize,
) -> Vec<Value> {
    let mut next = Some(format!("{}/{rtype}?_count=500", h.url));
    let mut visited = HashSet::new();
    let mut out = Vec::new();
    while let Some(url) = next.take() {
        assert!(
            visited.insert(url.clone()) && visited.len() <= most_pages,
            "the paging of {rtype} does not end: {url}"
        );
        let (status, b) = get_json(c, &url).await;
        assert_eq!(status, 200, "{url}: {b}");
        assert_eq!(b["type"], "searchset", "{url}: {b}");
        for e in b["entry"].as_array().into_iter().flatten() {
            if e["resource"]["resourceType"] == rtype {
                out.push(e["resource"].clone());
            }
        }
        next = b["link"]
            .as_array()
            .and_then(|ls| ls.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str())
            .map(|l| h.direct(l));
    }
    out
}

/// Every resource of some types, by `Type/id` (with meta); fails on an id listed twice (a
/// duplicate).
pub async fn read_all(
    c: &reqwest::Client,
    h: &Helios,
    types: &[&str],
    most_pages: usize,
) -> BTreeMap<String, Value> {
    let mut all = BTreeMap::new();
    for t in types {
        for r in search_all(c, h, t, most_pages).await {
            let k = key_of(&r);
            assert!(
                all.insert(k.clone(), r).is_none(),
                "{k} is listed twice by the search: a duplicate"
            );
        }
    }
    all
}
