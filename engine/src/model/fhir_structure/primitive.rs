//! The JSON forms of FHIR primitive types: whether a literal value can be a `boolean`, an
//! `integer`, a `date` that exists, an `instant` with its zone, and so on.

use chrono::NaiveDate;
use serde_json::Value;

use crate::model::fhir::kind;

/// Why a literal cannot be a value of a primitive type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LiteralProblem {
    #[error("{found} where `{element}` is a FHIR `{type_name}`, which is {wants}")]
    WrongJsonType {
        element: String,
        type_name: String,
        wants: &'static str,
        found: &'static str,
    },
    #[error("`{value}` is not a FHIR `{type_name}` ({wants}), as `{element}` needs")]
    WrongForm {
        element: String,
        type_name: String,
        value: String,
        wants: &'static str,
    },
}

/// Checks a literal against a primitive type; other types are not judged here.
pub fn check_literal(element: &str, type_name: &str, value: &Value) -> Result<(), LiteralProblem> {
    let wrong_type = |wants| LiteralProblem::WrongJsonType {
        element: element.to_owned(),
        type_name: type_name.to_owned(),
        wants,
        found: kind(value),
    };
    let wrong_form = |wants, shown: String| LiteralProblem::WrongForm {
        element: element.to_owned(),
        type_name: type_name.to_owned(),
        value: shown,
        wants,
    };
    match type_name {
        "boolean" => value
            .is_boolean()
            .then_some(())
            .ok_or(wrong_type("`true` or `false`")),
        "integer" | "positiveInt" | "unsignedInt" => {
            let wants = match type_name {
                "integer" => "a whole number",
                "positiveInt" => "a whole number above 0",
                _ => "a whole number from 0",
            };
            let Some(n) = value
                .as_i64()
                .or_else(|| value.as_u64().map(|u| i64::try_from(u).unwrap_or(i64::MAX)))
            else {
                return Err(if value.is_number() {
                    wrong_form(wants, value.to_string())
                } else {
                    wrong_type(wants)
                });
            };
            let fits = match type_name {
                "integer" => i32::try_from(n).is_ok(),
                "positiveInt" => n >= 1 && i32::try_from(n).is_ok(),
                _ => n >= 0 && i32::try_from(n).is_ok(),
            };
            fits.then_some(()).ok_or(wrong_form(wants, n.to_string()))
        }
        "decimal" => value
            .is_number()
            .then_some(())
            .ok_or(wrong_type("a number")),
        "integer64" => match value.as_str() {
            Some(s) if s.parse::<i64>().is_ok() => Ok(()),
            Some(s) => Err(wrong_form(
                "a whole number written as a string",
                s.to_owned(),
            )),
            None => Err(wrong_type("a whole number written as a string")),
        },
        "date" | "dateTime" | "instant" | "time" => {
            let Some(s) = value.as_str() else {
                return Err(wrong_type("a string"));
            };
            let (ok, wants) = match type_name {
                "date" => (
                    is_date(s),
                    "YYYY, YYYY-MM or YYYY-MM-DD, a date that exists",
                ),
                "dateTime" => (
                    is_date(s) || is_date_time(s),
                    "a date, or a date and time with its zone, e.g. 2024-05-01T10:00:00Z",
                ),
                "instant" => (
                    is_date_time(s),
                    "a date and time to the second with its zone, e.g. 2024-05-01T10:00:00Z",
                ),
                _ => (is_time(s), "hh:mm:ss"),
            };
            ok.then_some(()).ok_or(wrong_form(wants, s.to_owned()))
        }
        "string" | "markdown" | "uri" | "url" | "canonical" | "oid" | "uuid" | "code" | "id"
        | "base64Binary" | "xhtml" => {
            let Some(s) = value.as_str() else {
                return Err(wrong_type("a string"));
            };
            let ok = match type_name {
                // `[^\s]+( [^\s]+)*`: words joined by single spaces, no tab or line break.
                "code" => s
                    .split(' ')
                    .all(|w| !w.is_empty() && !w.contains(char::is_whitespace)),
                "id" => {
                    !s.is_empty()
                        && s.len() <= 64
                        && s.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                }
                "uri" | "url" | "canonical" => !s.is_empty() && !s.contains(char::is_whitespace),
                "oid" => s.starts_with("urn:oid:"),
                "uuid" => s.starts_with("urn:uuid:"),
                _ => !s.is_empty(),
            };
            let wants = match type_name {
                "code" => "words joined by single spaces, without leading or trailing spaces",
                "id" => "1 to 64 letters, digits, `-` and `.`",
                "uri" | "url" | "canonical" => "a URI without spaces",
                "oid" => "`urn:oid:` and the OID",
                "uuid" => "`urn:uuid:` and the UUID",
                _ => "text that is not empty",
            };
            ok.then_some(()).ok_or(wrong_form(wants, s.to_owned()))
        }
        _ => Ok(()),
    }
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD`, a date that exists: FHIR's years run from 0001 (its
/// pattern has no year 0000, which chrono takes for 1 BC).
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if s.get(0..4) == Some("0000") {
        return false;
    }
    match b.len() {
        4 => digits(0..4),
        7 => {
            digits(0..4)
                && b[4] == b'-'
                && digits(5..7)
                && (1..=12).contains(&s[5..7].parse::<u32>().unwrap_or(0))
        }
        10 => digits(0..4) && NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok(),
        _ => false,
    }
}

/// `YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm)`: a time is always to the second and zoned in FHIR.
fn is_date_time(s: &str) -> bool {
    let Some((date, time)) = s.split_once('T') else {
        return false;
    };
    if date.len() != 10 || !is_date(date) {
        return false;
    }
    let (clock, zone) = match time.find(['Z', '+', '-']) {
        Some(i) => time.split_at(i),
        None => return false,
    };
    // FHIR's offsets run from -14:00 to +14:00 (`(0[0-9]|1[0-3]):[0-5][0-9]|14:00`).
    let zone_ok = zone == "Z"
        || (zone.len() == 6
            && zone.as_bytes()[3] == b':'
            && chrono::NaiveTime::parse_from_str(&format!("{}:00", &zone[1..]), "%H:%M:%S")
                .is_ok()
            && (&zone[1..3] < "14" || &zone[1..] == "14:00"));
    zone_ok && is_time(clock)
}

/// `hh:mm:ss` with optional fractions, a time that exists.
fn is_time(s: &str) -> bool {
    let (whole, fraction) = s.split_once('.').unwrap_or((s, "0"));
    whole.len() == 8
        && !fraction.is_empty()
        && fraction.bytes().all(|b| b.is_ascii_digit())
        && chrono::NaiveTime::parse_from_str(whole, "%H:%M:%S").is_ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn literals_are_judged_by_their_primitive_type() {
        assert!(check_literal("active", "boolean", &json!(true)).is_ok());
        assert!(check_literal("active", "boolean", &json!("true")).is_err());
        assert!(check_literal("n", "integer", &json!("3")).is_err());
        assert!(check_literal("n", "positiveInt", &json!(0)).is_err());
        assert!(check_literal("n", "integer", &json!(3)).is_ok());
        assert!(check_literal("d", "date", &json!("2024-02-30")).is_err());
        for year_zero in ["0000", "0000-01", "0000-01-01"] {
            assert!(check_literal("d", "date", &json!(year_zero)).is_err());
        }
        assert!(check_literal("d", "date", &json!("0001-01-01")).is_ok());
        assert!(check_literal("d", "instant", &json!("0000-01-01T00:00:00Z")).is_err());
        for zone in ["+14:00", "-14:00", "+13:59", "-00:00"] {
            let t = format!("2024-05-01T10:00:00{zone}");
            assert!(check_literal("d", "instant", &json!(t)).is_ok(), "{t}");
        }
        for zone in ["+14:30", "+15:00", "-23:00"] {
            let t = format!("2024-05-01T10:00:00{zone}");
            assert!(check_literal("d", "dateTime", &json!(t)).is_err(), "{t}");
        }
        assert!(check_literal("d", "date", &json!("2024-02-29")).is_ok());
        assert!(check_literal("d", "date", &json!("2024-13")).is_err());
        assert!(check_literal("d", "dateTime", &json!("2024-02-29T10:00:00Z")).is_ok());
        assert!(check_literal("d", "dateTime", &json!("2024-02-29T10:00:00")).is_err());
        assert!(check_literal("d", "instant", &json!("2024-02-29")).is_err());
        assert!(check_literal("d", "instant", &json!("2024-02-29T25:00:00Z")).is_err());
        assert!(check_literal("d", "instant", &json!("2024-02-29T10:00:00.123+02:00")).is_ok());
        assert!(check_literal("c", "code", &json!({"a": 1})).is_err());
        assert!(check_literal("c", "code", &json!(" final")).is_err());
    }
}
