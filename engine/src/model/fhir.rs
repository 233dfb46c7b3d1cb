//! FHIR rules the mapping relies on: empty values, deterministic ids, date, dateTime and instant
//! normalisation (local times read in a declared zone), Bundle assembly and splitting a Bundle
//! into entries with references rewritten; the id rule and `writable` (a resource's id and
//! type checked before any write), the searchset written around resources already serialised
//! (`Searchset`), and `OperationOutcome` resources.

use std::collections::HashMap;

use chrono::{DateTime, LocalResult, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// Namespace of the engine's UUID v5 ids.
const NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a57_9d3e_4b8a_a0c4_52e1_0f7d_93b6);

/// True for values FHIR does not allow: null, "", [] and {}.
pub fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// JSON equality, with numbers compared by value (`1` equals `1.0`).
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// A deterministic UUID v5 of the parts (joined with a separator that cannot be confused).
pub fn uuid5(parts: &[String]) -> String {
    Uuid::new_v5(&NAMESPACE, parts.join("\u{1f}").as_bytes()).to_string()
}

/// Normalises a value to a FHIR `date` (`YYYY`, `YYYY-MM` or `YYYY-MM-DD`).
pub fn date(v: &Value) -> Result<String, DateError> {
    match v {
        Value::String(s) => {
            let s = s.trim();
            let bad = || DateError::NotADate(s.to_owned());
            if let Some(d) = partial_date(s) {
                return fhir_year(d, bad);
            }
            if let Some(d) = parse_date(s) {
                return fhir_year(ymd(d), bad);
            }
            // The date as written at the source, in its own offset.
            parse_date_time(s)
                .map(|(dt, offset)| match offset {
                    Some(o) => dt.with_timezone(&o).format("%Y-%m-%d").to_string(),
                    None => dt.format("%Y-%m-%d").to_string(),
                })
                .ok_or_else(bad)
                .and_then(|d| fhir_year(d, bad))
        }
        Value::Number(_) => epoch(v).map(|dt| dt.format("%Y-%m-%d").to_string()),
        other => Err(DateError::Expected {
            what: "a date",
            found: kind(other),
        }),
    }
}

/// Normalises a value to a FHIR `dateTime`: a date alone stays a date; a time without a zone
/// is taken as UTC.
pub fn date_time(v: &Value) -> Result<String, DateError> {
    date_time_in(v, None)
}

/// Normalises a value to a FHIR `dateTime`: a date alone stays a date; a time with an offset
/// keeps it; a local time (no offset) is read in `zone` and written with that zone's offset at
/// that time (UTC, written `Z`, when `zone` is `None`).
pub fn date_time_in(v: &Value, zone: Option<Tz>) -> Result<String, DateError> {
    match v {
        Value::String(s) => {
            let s = s.trim();
            let bad = || DateError::NotADateTime(s.to_owned());
            if let Some(d) = partial_date(s) {
                return fhir_year(d, bad);
            }
            if let Some(d) = parse_date(s) {
                return fhir_year(ymd(d), bad);
            }
            stamp(s, zone, bad).and_then(|d| fhir_year(d, bad))
        }
        Value::Number(_) => epoch(v).map(|dt| dt.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        other => Err(DateError::Expected {
            what: "a dateTime",
            found: kind(other),
        }),
    }
}

/// Normalises a value to a FHIR `instant`: a date with a time to the second (or finer) and a
/// zone. A time with an offset keeps it; a local time is read in `zone` (UTC when `None`); a
/// number is seconds (or milliseconds) since 1970 in UTC. A date without a time is refused: an
/// instant made from it would claim a time nobody recorded.
pub fn instant(v: &Value, zone: Option<Tz>) -> Result<String, DateError> {
    match v {
        Value::String(s) => {
            let s = s.trim();
            if partial_date(s).is_some() || parse_date(s).is_some() {
                return Err(DateError::NoTime(s.to_owned()));
            }
            let bad = || DateError::NotAnInstant(s.to_owned());
            stamp(s, zone, bad).and_then(|d| fhir_year(d, bad))
        }
        Value::Number(_) => epoch(v).map(|dt| dt.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        other => Err(DateError::Expected {
            what: "an instant",
            found: kind(other),
        }),
    }
}

/// A date and time written with seconds and a zone: its own offset when it has one, else read
/// in `zone` (UTC, written `Z`, when `None`).
fn stamp(s: &str, zone: Option<Tz>, bad: impl Fn() -> DateError) -> Result<String, DateError> {
    if let Some(dt) = with_offset(s) {
        return Ok(dt.to_rfc3339_opts(SecondsFormat::AutoSi, false));
    }
    let local = local_date_time(s).ok_or_else(bad)?;
    match zone {
        None => Ok(Utc
            .from_utc_datetime(&local)
            .to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        Some(z) => match z.from_local_datetime(&local) {
            LocalResult::Single(t) => Ok(t
                .fixed_offset()
                .to_rfc3339_opts(SecondsFormat::AutoSi, false)),
            // The hour a clock goes back happens twice: the first of the two (as java.time
            // and most calendars read it).
            LocalResult::Ambiguous(first, _) => Ok(first
                .fixed_offset()
                .to_rfc3339_opts(SecondsFormat::AutoSi, false)),
            LocalResult::None => Err(DateError::NoSuchLocalTime {
                time: s.to_owned(),
                zone: z.name().to_owned(),
            }),
        },
    }
}

/// A date FHIR can write: its year four digits from 0001 to 9999 (chrono reads `0000` and
/// signed years, which FHIR's date types do not have).
fn fhir_year(d: String, bad: impl Fn() -> DateError) -> Result<String, DateError> {
    let b = d.as_bytes();
    let four = b.len() >= 4 && b[..4].iter().all(u8::is_ascii_digit);
    if four && b.get(4).is_none_or(|c| !c.is_ascii_digit()) && &d[..4] != "0000" {
        Ok(d)
    } else {
        Err(bad())
    }
}

/// The JSON type of a value, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn partial_date(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .is_some_and(|x| x.iter().all(u8::is_ascii_digit))
    };
    match b.len() {
        4 if digits(0..4) => Some(s.to_owned()),
        7 if digits(0..4)
            && b[4] == b'-'
            && digits(5..7)
            && (1..=12).contains(&s[5..7].parse::<u8>().ok()?) =>
        {
            Some(s.to_owned())
        }
        _ => None,
    }
}

fn parse_date(s: &str) -> Option<NaiveDate> {
    // The usual `YYYY-MM-DD` and `YYYYMMDD` read without chrono's format parser (the same
    // result, a few times faster); anything else, or an invalid day, goes through it.
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b[r].iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let ymd = match b.len() {
        10 if b[4] == b'-' && b[7] == b'-' => digits(0..4).zip(digits(5..7)).zip(digits(8..10)),
        8 => digits(0..4).zip(digits(4..6)).zip(digits(6..8)),
        _ => None,
    };
    if let Some(d) = ymd.and_then(|((y, m), d)| NaiveDate::from_ymd_opt(y as i32, m, d)) {
        return Some(d);
    }
    ["%Y-%m-%d", "%Y%m%d", "%Y/%m/%d"]
        .iter()
        .find_map(|f| NaiveDate::parse_from_str(s, f).ok())
}

/// A date as FHIR writes it (`YYYY-MM-DD`).
fn ymd(d: NaiveDate) -> String {
    use chrono::Datelike;
    if let Ok(year) = u32::try_from(d.year())
        && year <= 9999
    {
        // Written digit by digit: `format!` costs more than the rest of a date mapping.
        let mut out = String::with_capacity(10);
        for (n, width) in [(year, 4), (d.month(), 2), (d.day(), 2)] {
            if width == 2 {
                out.push('-');
            }
            for k in (0..width).rev() {
                out.push(char::from(b'0' + (n / 10u32.pow(k) % 10) as u8));
            }
        }
        out
    } else {
        d.format("%Y-%m-%d").to_string()
    }
}

fn parse_date_time(s: &str) -> Option<(DateTime<Utc>, Option<chrono::FixedOffset>)> {
    if let Some(dt) = with_offset(s) {
        return Some((dt.with_timezone(&Utc), Some(*dt.offset())));
    }
    local_date_time(s).map(|n| (Utc.from_utc_datetime(&n), None))
}

/// A date and time written with its offset (RFC 3339 or RFC 2822).
fn with_offset(s: &str) -> Option<DateTime<chrono::FixedOffset>> {
    DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_rfc2822(s))
        .ok()
}

/// A date and time written without an offset (a local time).
fn local_date_time(s: &str) -> Option<NaiveDateTime> {
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
        "%Y%m%d%H%M%S",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
}

fn epoch(v: &Value) -> Result<DateTime<Utc>, DateError> {
    let n = v.as_f64().ok_or(DateError::Expected {
        what: "a number",
        found: kind(v),
    })?;
    let seconds = if n.abs() > 1e11 { n / 1000.0 } else { n };
    DateTime::from_timestamp_millis((seconds * 1000.0) as i64).ok_or(DateError::NotATime(n))
}

/// Why a value is not a FHIR date or dateTime.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DateError {
    #[error("`{0}` is not a date")]
    NotADate(String),
    #[error("`{0}` is not a date or dateTime")]
    NotADateTime(String),
    #[error("`{0}` is not an instant (a date and time)")]
    NotAnInstant(String),
    /// A date without a time where an instant is needed.
    #[error("`{0}` is a date without a time, not an instant")]
    NoTime(String),
    /// A local time that the zone's clocks skip (the hour they go forward).
    #[error("`{time}` does not exist in {zone} (the clocks skip it)")]
    NoSuchLocalTime { time: String, zone: String },
    /// A number of seconds (or milliseconds) outside the calendar.
    #[error("{0} is not a time")]
    NotATime(f64),
    #[error("expected {what}, found {found}")]
    Expected {
        what: &'static str,
        found: &'static str,
    },
}

/// Why a Bundle cannot be split into its resources.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("Bundle.entry is not an array")]
    EntryNotArray,
    #[error("Bundle.entry[{0}] has no resource")]
    NoResource(usize),
    #[error("Bundle.entry[{0}].resource has no resourceType")]
    NoResourceType(usize),
}

/// Kinds of Bundle the engine assembles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    Collection,
    Transaction,
    Batch,
    Searchset,
}

impl BundleKind {
    fn as_str(self) -> &'static str {
        match self {
            BundleKind::Collection => "collection",
            BundleKind::Transaction => "transaction",
            BundleKind::Batch => "batch",
            BundleKind::Searchset => "searchset",
        }
    }
}

/// The `Type/id` of a resource, when it has both.
pub fn local_reference(resource: &Value) -> Option<String> {
    let t = resource.get("resourceType")?.as_str()?;
    let id = resource.get("id")?.as_str()?;
    Some(format!("{t}/{id}"))
}

/// Assembles a Bundle. `fullUrl`s are `{base}/Type/id` with a base, else `urn:uuid:` ids
/// derived from `Type/id`; transactions and batches `PUT Type/id` (or `POST` without an id).
pub fn bundle(kind: BundleKind, resources: Vec<Value>, base: Option<&str>) -> Value {
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let local = local_reference(&r);
            let full_url = match (&local, base) {
                (Some(l), Some(b)) => format!("{}/{l}", b.trim_end_matches('/')),
                (Some(l), None) => format!("urn:uuid:{}", uuid5(std::slice::from_ref(l))),
                (None, _) => format!("urn:uuid:{}", uuid5(&[r.to_string()])),
            };
            let mut entry = Map::new();
            entry.insert("fullUrl".into(), Value::String(full_url));
            let request = match (kind, &local) {
                (BundleKind::Transaction | BundleKind::Batch, Some(l)) => {
                    Some(json!({"method": "PUT", "url": l}))
                }
                (BundleKind::Transaction | BundleKind::Batch, None) => {
                    let t = r
                        .get("resourceType")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    Some(json!({"method": "POST", "url": t}))
                }
                _ => None,
            };
            entry.insert("resource".into(), r);
            if kind == BundleKind::Searchset {
                entry.insert("search".into(), json!({"mode": "match"}));
            }
            if let Some(req) = request {
                entry.insert("request".into(), req);
            }
            Value::Object(entry)
        })
        .collect();
    let mut b = Map::new();
    b.insert("resourceType".into(), json!("Bundle"));
    b.insert("type".into(), json!(kind.as_str()));
    if kind == BundleKind::Searchset {
        b.insert("total".into(), json!(entries.len()));
    }
    if !entries.is_empty() {
        b.insert("entry".into(), Value::Array(entries));
    }
    Value::Object(b)
}

/// The resources of a Bundle, each with an id (kept, taken from a `urn:uuid:` full URL, or
/// derived from the full URL), and references between entries rewritten to `Type/id`.
pub fn split_bundle(bundle: &Value) -> Result<Vec<Value>, BundleError> {
    let entries = match bundle.get("entry") {
        None => return Ok(Vec::new()),
        Some(Value::Array(e)) => e,
        Some(_) => return Err(BundleError::EntryNotArray),
    };
    let mut out = Vec::with_capacity(entries.len());
    let mut rewrite: HashMap<String, String> = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let Some(resource) = entry.get("resource").filter(|r| r.is_object()) else {
            return Err(BundleError::NoResource(i));
        };
        let mut resource = resource.clone();
        if resource
            .get("resourceType")
            .and_then(Value::as_str)
            .is_none()
        {
            return Err(BundleError::NoResourceType(i));
        }
        let full_url = entry.get("fullUrl").and_then(Value::as_str);
        if resource.get("id").and_then(Value::as_str).is_none() {
            let id = match full_url {
                Some(u) if u.starts_with("urn:uuid:") => u["urn:uuid:".len()..].to_owned(),
                Some(u) => uuid5(&[u.to_owned()]),
                None => uuid5(&[resource.to_string()]),
            };
            resource["id"] = Value::String(id);
        }
        let local = local_reference(&resource).unwrap_or_default();
        if let Some(u) = full_url {
            rewrite.insert(u.to_owned(), local.clone());
        }
        out.push(resource);
    }
    for r in &mut out {
        rewrite_references(r, &rewrite);
    }
    Ok(out)
}

fn rewrite_references(v: &mut Value, map: &HashMap<String, String>) {
    match v {
        Value::Object(o) => {
            for (k, child) in o.iter_mut() {
                if k == "reference"
                    && let Value::String(s) = child
                {
                    if let Some(local) = map.get(s.as_str()) {
                        *s = local.clone();
                    }
                    continue;
                }
                rewrite_references(child, map);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| rewrite_references(c, map)),
        _ => {}
    }
}

/// The text of the first issue of an `OperationOutcome` (its `diagnostics`, else its
/// `details.text`), at most 200 characters.
pub fn issue_text(outcome: &Value) -> Option<String> {
    let issue = &outcome["issue"][0];
    let text = issue["diagnostics"]
        .as_str()
        .or_else(|| issue["details"]["text"].as_str())?;
    Some(text.chars().take(200).collect())
}

/// An `OperationOutcome` with one issue.
pub fn outcome(severity: &str, code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}]
    })
}

/// Why a resource cannot be written to a sink: its id breaks FHIR's id rule (so that it
/// cannot become a path like `Patient/../Patient/victim` or carry a query like
/// `x?_cascade=delete`), or its type is not one the connector declares.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unwritable {
    #[error("the resource has no `resourceType` naming a FHIR type")]
    NoType,
    #[error("id {0} breaks FHIR's id rule (1 to 64 of A-Z, a-z, 0-9, `-`, `.`)")]
    Id(String),
    #[error("`{found}` is not a type this connector writes (it declares {declared})")]
    Type { found: String, declared: String },
}

/// True for a FHIR resource type name.
pub fn is_resource_type(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_alphabetic())
        && s.len() >= 2
}

/// True for a FHIR id: 1 to 64 characters of `A-Z`, `a-z`, `0-9`, `-` and `.`, and not `.`
/// or `..` (which the rule's pattern allows, but which a URL resolves away: `Patient/..` would
/// name the server's base).
pub fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Checks a resource before it is written: its `resourceType` names a type, one of
/// `declared` when given; its `id`, when it has one, is a FHIR id.
pub fn writable(
    resource: &Value,
    declared: Option<&std::collections::BTreeSet<String>>,
) -> Result<(), Unwritable> {
    let t = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .filter(|t| is_resource_type(t))
        .ok_or(Unwritable::NoType)?;
    if let Some(types) = declared
        && !types.contains(t)
    {
        return Err(Unwritable::Type {
            found: t.to_owned(),
            declared: types
                .iter()
                .map(|t| format!("`{t}`"))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    match bad_id(resource.get("id")) {
        None => Ok(()),
        Some(shown) => Err(Unwritable::Id(shown)),
    }
}

/// A resource's `id` (`None`: it has none) when it breaks FHIR's id rule (not text, or text
/// `is_id` refuses), shown as JSON and cut: the id came from outside and may be long or hold
/// anything.
pub fn bad_id(id: Option<&Value>) -> Option<String> {
    match id? {
        Value::String(id) if is_id(id) => None,
        other => {
            let mut shown = other.to_string();
            if shown.len() > 80 {
                let cut = (0..=80)
                    .rev()
                    .find(|&i| shown.is_char_boundary(i))
                    .unwrap_or(0);
                shown.truncate(cut);
                shown.push_str("...");
            }
            Some(shown)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_normalise() {
        assert_eq!(date(&json!("20240105")).as_deref(), Ok("2024-01-05"));
        assert_eq!(date(&json!("2024-01")).as_deref(), Ok("2024-01"));
        assert_eq!(
            date(&json!("2024-01-05T23:30:00+02:00")).as_deref(),
            Ok("2024-01-05")
        );
        assert_eq!(
            date(&json!("2024-01-08T00:30:00+01:00")).as_deref(),
            Ok("2024-01-08")
        );
        assert_eq!(
            date(&json!("2024-01-07T23:30:00-05:00")).as_deref(),
            Ok("2024-01-07")
        );
        assert_eq!(
            date_time(&json!("2024-01-05 10:00:00")).as_deref(),
            Ok("2024-01-05T10:00:00Z")
        );
        assert_eq!(
            date_time(&json!("2024-01-05T10:00:00+02:00")).as_deref(),
            Ok("2024-01-05T10:00:00+02:00")
        );
        assert_eq!(
            date_time(&json!(1704448800000_i64)).as_deref(),
            Ok("2024-01-05T10:00:00Z")
        );
        assert_eq!(
            date(&json!("05/01/2024")),
            Err(DateError::NotADate("05/01/2024".into()))
        );
        assert_eq!(
            date(&json!({})).map_err(|e| e.to_string()),
            Err("expected a date, found an object".into())
        );
    }

    #[test]
    fn uuid5_is_stable_and_separates_parts() {
        assert_eq!(
            uuid5(&["a".into(), "b".into()]),
            uuid5(&["a".into(), "b".into()])
        );
        assert_ne!(uuid5(&["ab".into()]), uuid5(&["a".into(), "b".into()]));
    }

    #[test]
    fn split_rewrites_internal_references() {
        let b = json!({"resourceType": "Bundle", "type": "document", "entry": [
            {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111", "resource": {"resourceType": "Patient"}},
            {"fullUrl": "http://x/Observation/o1", "resource": {"resourceType": "Observation", "id": "o1",
              "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"},
              "focus": [{"reference": "Patient/other"}]}}
        ]});
        let parts = split_bundle(&b).expect("splits");
        assert_eq!(parts[0]["id"], "11111111-1111-1111-1111-111111111111");
        assert_eq!(
            parts[1]["subject"]["reference"],
            "Patient/11111111-1111-1111-1111-111111111111"
        );
        assert_eq!(parts[1]["focus"][0]["reference"], "Patient/other");
    }

    #[test]
    fn transaction_bundles_put_by_id() {
        let b = bundle(
            BundleKind::Transaction,
            vec![json!({"resourceType": "Patient", "id": "p"})],
            None,
        );
        assert_eq!(
            b["entry"][0]["request"],
            json!({"method": "PUT", "url": "Patient/p"})
        );
        assert!(
            b["entry"][0]["fullUrl"]
                .as_str()
                .is_some_and(|u| u.starts_with("urn:uuid:"))
        );
    }

    #[test]
    fn ids_follow_the_fhir_rule() {
        for good in ["a", "A-1.b", &"x".repeat(64)] {
            assert!(is_id(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "x?_cascade=delete",
            "a/b",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(!is_id(bad), "{bad}");
        }
        let p = json!({"resourceType": "Patient", "id": "../Patient/victim"});
        assert!(matches!(writable(&p, None), Err(Unwritable::Id(_))));
        let p = json!({"resourceType": "Patient", "id": ".."});
        assert!(matches!(writable(&p, None), Err(Unwritable::Id(_))));
        let types = std::collections::BTreeSet::from(["Observation".to_owned()]);
        assert!(matches!(
            writable(&json!({"resourceType": "Patient", "id": "p"}), Some(&types)),
            Err(Unwritable::Type { .. })
        ));
        assert_eq!(
            writable(
                &json!({"resourceType": "Observation", "id": "o"}),
                Some(&types)
            ),
            Ok(())
        );
    }
}

/// A searchset Bundle whose matches are resources already written as JSON text (a mapping's
/// `Written`), written around them without turning them back into values. Members in the
/// order FHIR servers write them: `resourceType`, `type`, `total` (when known), `link`,
/// `entry` (when there is one: the matches, each with its `fullUrl` when it has one, then the
/// outcomes); compact, as `serde_json::to_vec` writes a `Value`.
#[derive(Debug)]
pub struct Searchset {
    pub total: Option<u64>,
    pub links: Vec<Value>,
    /// Each match's `fullUrl` and its resource as JSON text (one JSON object).
    pub matches: Vec<(Option<String>, Vec<u8>)>,
    pub outcomes: Vec<Value>,
}

impl Searchset {
    /// The Bundle as JSON text.
    pub fn to_vec(&self) -> Vec<u8> {
        let size: usize = self
            .matches
            .iter()
            .map(|(u, r)| r.len() + u.as_ref().map_or(0, String::len) + 64)
            .sum();
        let mut out = Vec::with_capacity(size + 256);
        out.extend_from_slice(br#"{"resourceType":"Bundle","type":"searchset""#);
        if let Some(t) = self.total {
            out.extend_from_slice(format!(r#","total":{t}"#).as_bytes());
        }
        out.extend_from_slice(br#","link":"#);
        write_json(&mut out, &self.links);
        if !self.matches.is_empty() || !self.outcomes.is_empty() {
            out.extend_from_slice(br#","entry":["#);
            let mut first = true;
            for (full_url, resource) in &self.matches {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.push(b'{');
                if let Some(u) = full_url {
                    out.extend_from_slice(br#""fullUrl":"#);
                    write_json(&mut out, u);
                    out.push(b',');
                }
                out.extend_from_slice(br#""resource":"#);
                out.extend_from_slice(resource);
                out.extend_from_slice(br#","search":{"mode":"match"}}"#);
            }
            for o in &self.outcomes {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(br#"{"resource":"#);
                write_json(&mut out, o);
                out.extend_from_slice(br#","search":{"mode":"outcome"}}"#);
            }
            out.push(b']');
        }
        out.push(b'}');
        out
    }
}

/// Appends a value as compact JSON (writing to memory cannot fail, nor can a `Value` or a
/// string be refused by the serialiser).
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    if serde_json::to_writer(&mut *out, v).is_err() {
        out.extend_from_slice(b"null");
    }
}
