//! NDJSON: one JSON value per line (blank lines skipped, a byte-order mark at a line's start
//! dropped); the document is the array of them.

use serde_json::Value;

use super::format::{DecodeError, Limits, TextEncoding};
use super::text::{Budget, count, json_reason, text};

/// Decodes NDJSON (UTF-8) into an array of its lines' values.
pub(super) fn decode(bytes: &[u8], limits: Limits) -> Result<Value, DecodeError> {
    let text = text(bytes, TextEncoding::default())?;
    let mut budget = Budget::new(limits);
    budget.take(1)?;
    let mut out = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        // Files joined with `cat` carry each one's byte-order mark at the start of a line.
        let line = line.strip_prefix('\u{feff}').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| DecodeError::Ndjson {
            line: i + 1,
            column: e.column(),
            message: json_reason(&e),
        })?;
        budget.take(count(&v))?;
        out.push(v);
    }
    Ok(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: Limits = Limits { max_values: 100 };

    #[test]
    fn lines_become_an_array_and_blank_lines_are_skipped() {
        let got = decode(b"{\"a\":1}\r\n\n  \n{\"a\":2}\n", LIMITS).expect("decoded");
        assert_eq!(got, json!([{"a": 1}, {"a": 2}]));
    }

    #[test]
    fn a_bad_line_is_named_by_its_number() {
        let err = decode(b"{\"a\":1}\n{\"a\":\n", LIMITS).expect_err("bad line");
        assert!(matches!(err, DecodeError::Ndjson { line: 2, .. }), "{err}");
    }

    #[test]
    fn the_value_cap_holds_across_lines() {
        let body = "{\"a\":1}\n".repeat(60);
        let err = decode(body.as_bytes(), LIMITS).expect_err("over the cap");
        assert_eq!(err, DecodeError::TooManyValues { max: 100 });
    }
}
