//! The count of JSON values in a text, taken on the bytes before they are parsed: a parsed
//! value costs tens to hundreds of bytes of memory whatever its size in the text (a `0,` is two
//! bytes of text and 32 of `Value`; a `{"id":"x"},` eleven and some 400), so a byte cap alone
//! lets a small answer of tiny values take hundreds of megabytes. Source answers and push
//! payloads are counted against a cap before `serde_json` builds them.

/// A text that holds more JSON values than allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("it holds more than {max} JSON values")]
pub struct TooManyValues {
    pub max: usize,
}

/// The number of JSON values in `bytes` (objects, arrays, strings, object keys included, and
/// scalars), or `TooManyValues` as soon as there are more than `max`. The text is not
/// checked for being JSON: the parser that follows does that; a text that is not JSON is
/// counted as best it can be, never more than once per byte.
pub fn count_values(bytes: &[u8], max: usize) -> Result<usize, TooManyValues> {
    let mut n = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    // True where a scalar may start: at the start, after `[`, `{`, `,` and `:`.
    let mut value_next = true;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                value_next = false;
                n += 1;
            }
            b'{' | b'[' => {
                value_next = true;
                n += 1;
            }
            b',' | b':' => value_next = true,
            b'}' | b']' => value_next = false,
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ if value_next => {
                value_next = false;
                n += 1;
            }
            _ => {}
        }
        if n > max {
            return Err(TooManyValues { max });
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_value_is_counted_once() {
        let count = |t: &str| count_values(t.as_bytes(), usize::MAX).expect("within");
        assert_eq!(count("[0,0,0]"), 4);
        assert_eq!(count(r#"[{"id":"x"},{"id":"x"}]"#), 7);
        assert_eq!(count(r#"{"a": [true, false, null, -1.5e3]}"#), 7);
        assert_eq!(count(r#""a string with \" , [ { : inside""#), 1);
        assert_eq!(count("  "), 0);
    }

    #[test]
    fn text_that_is_not_json_is_counted_without_failing() {
        let count = |t: &[u8]| count_values(t, usize::MAX).expect("within");
        assert_eq!(count(br#"["never closed"#), 2);
        assert_eq!(count(br#"[1,2"#), 3);
        assert_eq!(count(b"\xff\xfe garbage"), 1);
        assert_eq!(count(br#""\"#), 1);
    }

    #[test]
    fn counting_stops_past_the_cap() {
        let text = "[0,0,0,0,0]";
        assert_eq!(count_values(text.as_bytes(), 6), Ok(6));
        assert_eq!(
            count_values(text.as_bytes(), 5),
            Err(TooManyValues { max: 5 })
        );
    }
}
