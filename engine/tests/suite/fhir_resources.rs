//! FHIR resources as the end-to-end tests handle them, as `serde_json` values: a resource's
//! `Type/id`, the resource without its server-managed `meta`, the `reference` strings inside
//! a value, the entries of a search Bundle, and FHIR instants counted from a fixed time.
//! Used by the subjects that read FHIR answers (`cron_push`, `helios`, `shipped`, `serve`,
//! `versions`, ...), and by `fhir_standin` and `helios_client`.

use chrono::{TimeZone, Utc};
use serde_json::Value;

/// `Type/id` of a resource (`?` for what it lacks).
pub fn key_of(r: &Value) -> String {
    format!(
        "{}/{}",
        r["resourceType"].as_str().unwrap_or("?"),
        r["id"].as_str().unwrap_or("?")
    )
}

/// A resource without its `meta` (server-managed metadata).
pub fn without_meta(r: &Value) -> Value {
    let mut c = r.clone();
    if let Some(o) = c.as_object_mut() {
        o.remove("meta");
    }
    c
}

/// Every `reference` string inside a value, in document order.
pub fn references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, c) in o {
                match (k.as_str(), c) {
                    ("reference", Value::String(s)) => out.push(s.clone()),
                    _ => references(c, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| references(c, out)),
        _ => {}
    }
}

/// The resources of a Bundle's entries whose search mode is `mode` (`match`, `outcome`).
pub fn entries_of(bundle: &Value, mode: &str) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == mode)
        .map(|e| e["resource"].clone())
        .collect()
}

/// `2026-01-01T00:00:00Z` plus `seconds`, as a FHIR instant.
pub fn instant(seconds: i64) -> String {
    let t = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("a time")
        + chrono::TimeDelta::seconds(seconds);
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
