//! JSONPath (RFC 9535) queries, compiled once: `$`-rooted queries read the record, `@`-rooted
//! ones the current element of an iteration.

use serde_json::Value;
use serde_json_path::JsonPath;

/// A compiled query.
#[derive(Debug, Clone)]
pub struct Query {
    text: String,
    path: JsonPath,
    relative: bool,
}

impl PartialEq for Query {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// Why a query does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("a JSONPath query starts with `$` (the record) or `@` (the current element)")]
    NoRoot,
    /// The parser's message, and the (1-based) character where it stopped.
    #[error("invalid JSONPath at character {character}: {message}")]
    Invalid { character: usize, message: String },
}

impl Query {
    /// Compiles a query; the error says what is wrong and at which character (1-based).
    pub fn parse(text: &str) -> Result<Query, QueryError> {
        let (source, relative) = match text.strip_prefix('@') {
            Some(rest) => (format!("${rest}"), true),
            None => (text.to_owned(), false),
        };
        if !source.starts_with('$') {
            return Err(QueryError::NoRoot);
        }
        let path = JsonPath::parse(&source).map_err(|e| QueryError::Invalid {
            character: e.position() + 1,
            message: e.message().to_string(),
        })?;
        Ok(Query {
            text: text.to_owned(),
            path,
            relative,
        })
    }

    /// True for a query of the current element (`@...`).
    pub fn is_relative(&self) -> bool {
        self.relative
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The selected nodes, in document order.
    pub fn select<'a>(&self, record: &'a Value, current: &'a Value) -> Vec<&'a Value> {
        self.path
            .query(if self.relative { current } else { record })
            .all()
    }

    /// The normalized paths of the selected nodes (for error messages).
    pub fn locate(&self, record: &Value, current: &Value) -> Vec<String> {
        self.path
            .query_located(if self.relative { current } else { record })
            .into_iter()
            .map(|n| n.location().to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn relative_and_absolute() {
        let record = json!({"a": [{"b": 1}, {"b": 2}]});
        let item = json!({"b": 3});
        let q = Query::parse("$.a[*].b").expect("valid");
        assert_eq!(q.select(&record, &item), vec![&json!(1), &json!(2)]);
        let r = Query::parse("@.b").expect("valid");
        assert_eq!(r.select(&record, &item), vec![&json!(3)]);
        assert_eq!(
            q.locate(&record, &item),
            vec!["$['a'][0]['b']", "$['a'][1]['b']"]
        );
    }

    #[test]
    fn errors_name_the_position() {
        assert_eq!(
            Query::parse("a.b").expect_err("an error").to_string(),
            "a JSONPath query starts with `$` (the record) or `@` (the current element)"
        );
        let e = Query::parse("$.a[").expect_err("an error");
        assert!(
            matches!(e, QueryError::Invalid { character, .. } if (1..=5).contains(&character)),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("invalid JSONPath at character"));
    }

    /// All 703 cases of the RFC 9535 compliance suite through this layer.
    #[test]
    fn rfc9535_compliance_suite() {
        let file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/jsonpath-cts/cts.json"
        );
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("{file}: {e} (the compliance suite is needed)"));
        let suite: Value = serde_json::from_str(&text).expect("cts.json is JSON");
        let tests = suite["tests"].as_array().expect("tests");
        let mut failures = Vec::new();
        for case in tests {
            let name = case["name"].as_str().unwrap_or("?");
            let selector = case["selector"].as_str().unwrap_or_default();
            let parsed = Query::parse(selector);
            if case["invalid_selector"].as_bool() == Some(true) {
                if parsed.is_ok() {
                    failures.push(format!("{name}: accepted invalid {selector}"));
                }
                continue;
            }
            let Ok(q) = parsed else {
                failures.push(format!("{name}: rejected valid {selector}"));
                continue;
            };
            let doc = &case["document"];
            let got: Vec<Value> = q.select(doc, doc).into_iter().cloned().collect();
            let got = Value::Array(got);
            let ok = match (case.get("result"), case.get("results")) {
                (Some(r), _) => &got == r,
                (_, Some(Value::Array(any))) => any.contains(&got),
                _ => false,
            };
            if !ok {
                failures.push(format!("{name}: {selector} gave {got}"));
            }
        }
        assert_eq!(tests.len(), 703, "the suite has 703 cases");
        assert!(
            failures.is_empty(),
            "{} of 703 failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}
