//! JSON parsed with a shape (`Reads`): the `Value` the full parse gives with every part no
//! one reads left out, each skipped member checked by the same parser without being built
//! (no key, string or map allocated). Errors are the full parse's (same message, line and
//! column, a syntax error inside a skipped member included), duplicate keys keep the last,
//! and the nesting limit is the parser's, skipped parts included.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::model::reads::{Parts, Reads};

/// `bytes` parsed as one JSON document keeping what `reads` reads; `serde_json::from_slice`
/// when it reads everything.
pub fn json_reading(bytes: &[u8], reads: &Reads) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Shaped(reads).deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// A value parsed with its shape.
struct Shaped<'r>(&'r Reads);

impl<'de> DeserializeSeed<'de> for Shaped<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0 {
            Reads::All => de::Deserialize::deserialize(d),
            Reads::Parts(p) => d.deserialize_any(PartsVisitor(p)),
        }
    }
}

/// Builds the parts read of an object or array; a scalar as the full parse makes it.
struct PartsVisitor<'r>(&'r Parts);

impl<'de> Visitor<'de> for PartsVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        match self.0.elements() {
            Some(r) => {
                while let Some(v) = seq.next_element_seed(Shaped(r))? {
                    out.push(v);
                }
            }
            // No element is read: each kept as `null`, so that indexes stay.
            None => {
                while seq.next_element::<Skip>()?.is_some() {
                    out.push(Value::Null);
                }
            }
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        // Sized once when the shape names every member that can be kept (a record of an
        // answer usually keeps a few): a map grown member by member re-hashes as it grows.
        let mut out = match self.0.most_members() {
            Some(n) => Map::with_capacity(n),
            None => Map::new(),
        };
        while let Some(key) = map.next_key_seed(KeySeed(self.0))? {
            match key {
                Key::Kept(name, r) => {
                    // As the full parse: a repeated key keeps its place and the last value.
                    let v = map.next_value_seed(Shaped(r))?;
                    out.insert(name, v);
                }
                Key::Skipped => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// A member's key: kept (its name, allocated, and its shape) or skipped (not allocated).
enum Key<'r> {
    Kept(String, &'r Reads),
    Skipped,
}

struct KeySeed<'r>(&'r Parts);

impl<'de, 'r> DeserializeSeed<'de> for KeySeed<'r> {
    type Value = Key<'r>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key<'r>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'r> Visitor<'de> for KeySeed<'r> {
    type Value = Key<'r>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E>(self, v: &str) -> Result<Key<'r>, E> {
        Ok(match self.0.member(v) {
            Some(r) => Key::Kept(v.to_owned(), r),
            None => Key::Skipped,
        })
    }
}

/// A value parsed and checked, nothing built: every string, number and nesting level read
/// by the same parser as the full parse (so the same errors and depth limit), without
/// allocating.
struct Skip;

impl<'de> de::Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Skip, D::Error> {
        d.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_none<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_key::<Skip>()?.is_some() {
            map.next_value::<Skip>()?;
        }
        Ok(Skip)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::jsonpath::Query;

    /// The shape `query` reads, `tail` at each node it selects.
    fn reading(query: &str, tail: Reads) -> Reads {
        Query::parse(query).expect("query").reads(tail)
    }

    fn both(text: &str, reads: &Reads) -> (Result<Value, String>, Result<Value, String>) {
        (
            serde_json::from_slice::<Value>(text.as_bytes()).map_err(|e| e.to_string()),
            json_reading(text.as_bytes(), reads).map_err(|e| e.to_string()),
        )
    }

    #[test]
    fn unread_members_are_left_out_and_arrays_keep_their_length() {
        let reads = reading("$.a[*].b", Reads::All).union(reading("$.c", Reads::nothing()));
        let text = r#"{"a":[{"b":1,"x":"gone"},7,[1,2],{"y":{"z":[]}}],"c":{"d":1},"e":[1,2,3]}"#;
        let got = json_reading(text.as_bytes(), &reads).expect("parses");
        assert_eq!(got, json!({"a": [{"b": 1}, 7, [null, null], {}], "c": {}}));
        let whole = json_reading(text.as_bytes(), &Reads::All).expect("parses");
        assert_eq!(whole, serde_json::from_str::<Value>(text).expect("json"));
    }

    #[test]
    fn a_syntax_error_inside_a_skipped_member_is_the_full_parse_error() {
        let reads = reading("$.kept", Reads::All);
        for text in [
            r#"{"kept": 1, "skipped": {"a": [1, 2,, 3]}}"#,
            r#"{"kept": 1, "skipped": "bad \q escape"}"#,
            "{\"kept\": 1, \"skipped\": \"a control \u{1} char\"}",
            r#"{"kept": 1, "skipped": {"a": tru}}"#,
            r#"{"kept": 1, "skipped": [1, 2}"#,
            r#"{"kept": 1, "skipped": 01}"#,
            r#"{"kept": 1, "skipped": 1e999}"#,
            r#"{"kept": 1, "skipped": {"a": 1}"#,
            r#"{"kept": 1} trailing"#,
            r#"{"skipped": {1: 2}, "kept": 1}"#,
        ] {
            let (full, shaped) = both(text, &reads);
            assert!(full.is_err(), "{text} is malformed");
            assert_eq!(shaped, full, "{text}");
        }
        let bad_utf8 = b"{\"kept\": 1, \"skipped\": \"\xff\xfe\"}";
        assert_eq!(
            json_reading(bad_utf8, &reads).map_err(|e| e.to_string()),
            serde_json::from_slice::<Value>(bad_utf8).map_err(|e| e.to_string()),
        );
    }

    #[test]
    fn a_skipped_member_nested_past_the_limit_is_an_error_without_overflow() {
        let reads = reading("$.kept", Reads::All);
        let depth = 100_000;
        let text = format!(
            r#"{{"kept": 1, "deep": {}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let (full, shaped) = both(&text, &reads);
        assert!(
            full.as_ref()
                .is_err_and(|e| e.starts_with("recursion limit exceeded")),
            "{full:?}"
        );
        assert_eq!(shaped, full);
        let objects = format!(
            r#"{{"kept": 1, "deep": {}1{}}}"#,
            r#"{"a":"#.repeat(depth),
            "}".repeat(depth)
        );
        let (full, shaped) = both(&objects, &reads);
        assert!(full.is_err());
        assert_eq!(shaped, full);
        // Under the limit, a deep skipped member is fine.
        let shallow = format!(
            r#"{{"kept": 1, "deep": {}{}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert_eq!(
            json_reading(shallow.as_bytes(), &reads).expect("parses"),
            json!({"kept": 1})
        );
    }

    #[test]
    fn duplicate_keys_keep_the_last_value_in_the_first_place() {
        let reads = reading("$.a", Reads::All).union(reading("$.b", Reads::All));
        let text = r#"{"a": 1, "b": 2, "x": 0, "a": {"n": 3}, "x": 9}"#;
        let (full, shaped) = both(text, &reads);
        assert_eq!(shaped.expect("parses"), json!({"a": {"n": 3}, "b": 2}));
        let full = full.expect("parses");
        let keys: Vec<&String> = full.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["a", "b", "x"], "the full parse's order");
        let shaped = json_reading(text.as_bytes(), &reads).expect("parses");
        let keys: Vec<&String> = shaped.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["a", "b"]);
    }

    #[test]
    fn a_huge_skipped_string_and_numbers_past_u64_read_as_parsed() {
        let reads = reading("$.n", Reads::All).union(reading("$.m[*]", Reads::All));
        let huge = "x".repeat(8 << 20);
        let text = format!(
            r#"{{"big": "{huge}", "n": 18446744073709551616, "m": [-9223372036854775809, 18446744073709551615, 1.5e300], "skipped": 123456789012345678901234567890}}"#
        );
        let (full, shaped) = both(&text, &reads);
        let full = full.expect("parses");
        assert_eq!(
            shaped.expect("parses"),
            json!({"n": full["n"].clone(), "m": full["m"].clone()})
        );
        assert_eq!(full["n"].as_f64(), Some(18446744073709551616.0));
        assert_eq!(full["m"][1].as_u64(), Some(u64::MAX));
    }

    /// `$.*.id` selects nothing inside `p`, an array (`.id` of an array is nothing): its
    /// element is not read.
    #[test]
    fn escaped_keys_and_wildcards_are_matched_by_their_text() {
        let reads = reading("$.*.id", Reads::All).union(reading("$.na_me", Reads::All));
        let text = r#"{"na\u005fme": "kept", "o": {"id": 1, "x": 2}, "p": [{"id": 3, "y": 4}]}"#;
        assert_eq!(
            json_reading(text.as_bytes(), &reads).expect("parses"),
            json!({"na_me": "kept", "o": {"id": 1}, "p": [null]})
        );
    }
}
