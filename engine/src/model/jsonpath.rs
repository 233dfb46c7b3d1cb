//! JSONPath (RFC 9535) queries, compiled once: `$`-rooted queries read the record, `@`-rooted
//! ones the current element of an iteration. Queries made only of member names, indexes and
//! wildcards (`$.a.b`, `@.c[0]`, `$.d[*].e`), the common case of mappings, are also compiled
//! to a list of steps walked directly over the value, without the general evaluator's
//! intermediate node lists; every other query goes through `serde_json_path`.

use serde_json::{Map, Value};
use serde_json_path::JsonPath;

use crate::model::reads::{self, Reads};

/// Objects of at most this many members are searched by scanning their names rather than
/// by hashing the name: cheaper for the small objects most records are made of.
const SCAN: usize = 8;

/// The member `name` of an object. Names are unique in an object, so scanning gives what a
/// look-up gives; small objects are scanned (comparing a few short names costs less than
/// hashing one with the map's SipHash), larger ones looked up.
pub fn member<'a>(o: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if o.len() <= SCAN {
        o.iter().find(|(k, _)| k.as_str() == name).map(|(_, v)| v)
    } else {
        o.get(name)
    }
}

/// A compiled query.
#[derive(Debug, Clone)]
pub struct Query {
    text: String,
    path: JsonPath,
    relative: bool,
    /// The steps of a query made only of names, indexes and wildcards; `None` for the rest.
    steps: Option<Vec<Step>>,
}

/// One step of a simple query.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// `.name`: the member of an object.
    Name(String),
    /// `[n]`: the element of an array, from the end when negative.
    Index(i64),
    /// `[*]` or `.*`: every element of an array, every member value of an object.
    Wildcard,
}

/// What a query expected to select one value selected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Single<'a> {
    Nothing,
    One(&'a Value),
    /// More than one: how many.
    Many(usize),
}

/// The steps of `text` (after its root) when it is made only of dot names (ASCII letters,
/// digits, `_`, not starting with a digit), `[n]` indexes and wildcards; `None` otherwise.
fn simple_steps(rest: &str) -> Option<Vec<Step>> {
    let (steps, complete) = leading_steps(rest);
    complete.then_some(steps)
}

/// The simple steps `rest` starts with (as `simple_steps` reads them), and whether they are
/// all of it. A name counts only when a step or the end follows it (`$.aé` is one name,
/// not `a`), so the steps given are always the query's own first segments.
fn leading_steps(rest: &str) -> (Vec<Step>, bool) {
    let mut steps = Vec::new();
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'.' if b.get(i + 1) == Some(&b'*') => {
                steps.push(Step::Wildcard);
                i += 2;
            }
            b'.' => {
                let start = i + 1;
                let mut end = start;
                while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
                    end += 1;
                }
                let ends = end == b.len() || b[end] == b'.' || b[end] == b'[';
                if end == start || b[start].is_ascii_digit() || !ends {
                    return (steps, false);
                }
                steps.push(Step::Name(rest[start..end].to_owned()));
                i = end;
            }
            b'[' => {
                let Some(close) = rest[i..].find(']').map(|c| i + c) else {
                    return (steps, false);
                };
                let inner = &rest[i + 1..close];
                if inner == "*" {
                    steps.push(Step::Wildcard);
                } else {
                    let digits = inner.strip_prefix('-').unwrap_or(inner);
                    let canonical = !digits.is_empty()
                        && digits.bytes().all(|c| c.is_ascii_digit())
                        && (digits == "0" || !digits.starts_with('0'))
                        && inner != "-0";
                    match inner.parse() {
                        Ok(n) if canonical => steps.push(Step::Index(n)),
                        _ => return (steps, false),
                    }
                }
                i = close + 1;
            }
            _ => return (steps, false),
        }
    }
    (steps, true)
}

/// Walks `steps` from `v`, calling `out` with each selected node in document order.
fn walk<'a>(v: &'a Value, steps: &[Step], out: &mut impl FnMut(&'a Value)) {
    let Some((step, rest)) = steps.split_first() else {
        out(v);
        return;
    };
    match (step, v) {
        (Step::Name(n), Value::Object(o)) => {
            if let Some(c) = member(o, n) {
                walk(c, rest, out);
            }
        }
        (Step::Index(i), Value::Array(a)) => {
            let at = if *i < 0 {
                usize::try_from(i.unsigned_abs())
                    .ok()
                    .and_then(|k| a.len().checked_sub(k))
            } else {
                usize::try_from(*i).ok()
            };
            if let Some(c) = at.and_then(|k| a.get(k)) {
                walk(c, rest, out);
            }
        }
        (Step::Wildcard, Value::Array(a)) => a.iter().for_each(|c| walk(c, rest, out)),
        (Step::Wildcard, Value::Object(o)) => o.values().for_each(|c| walk(c, rest, out)),
        _ => {}
    }
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

/// serde_json_path (0.7) says a function's argument count the wrong way round: `length(@.a,
/// 1)` gets "expected 2 args, but received 1" (its validator passes the count it received
/// as `expected`). Turned into what the function takes and what it was given.
fn arity_said_right(message: &str) -> String {
    const SAID: &str = "expected ";
    let Some(at) = message.find(SAID) else {
        return message.to_owned();
    };
    let counts = message[at + SAID.len()..]
        .split_once(" args, but received ")
        .and_then(|(given, rest)| {
            let takes: String = rest.chars().take_while(char::is_ascii_digit).collect();
            Some((
                given.parse::<usize>().ok()?,
                takes.parse::<usize>().ok()?,
                takes.len(),
            ))
        });
    match counts {
        Some((given, takes, digits)) => {
            let end =
                at + SAID.len() + given.to_string().len() + " args, but received ".len() + digits;
            let plural = if takes == 1 { "" } else { "s" };
            format!(
                "{}the function takes {takes} argument{plural}, not {given}{}",
                &message[..at],
                &message[end..]
            )
        }
        None => message.to_owned(),
    }
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
            message: arity_said_right(e.message()),
        })?;
        Ok(Query {
            text: text.to_owned(),
            path,
            relative,
            steps: simple_steps(&source[1..]),
        })
    }

    /// The path this query walks from its root, as steps of what it reads, and whether
    /// that is the whole query: `false` when a step that is not a plain name, index or
    /// wildcard (a filter, `..`, a slice, a quoted name) follows, from which everything is read.
    pub fn read_path(&self) -> (Vec<reads::Step>, bool) {
        // After the root (`$` or `@`, one byte).
        let (steps, complete) = leading_steps(&self.text[1..]);
        let path = steps
            .into_iter()
            .map(|s| match s {
                Step::Name(n) => reads::Step::Member(n),
                Step::Index(_) => reads::Step::Element,
                Step::Wildcard => reads::Step::Any,
            })
            .collect();
        (path, complete)
    }

    /// What this query reads of its root when `tail` is read of each node it selects
    /// (everything from the first step that is not a plain name, index or wildcard).
    pub fn reads(&self, tail: Reads) -> Reads {
        let (path, complete) = self.read_path();
        Reads::at(&path, if complete { tail } else { Reads::All })
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
        let root = if self.relative { current } else { record };
        match &self.steps {
            Some(steps) => {
                let mut out = Vec::new();
                walk(root, steps, &mut |v| out.push(v));
                out
            }
            None => self.path.query(root).all(),
        }
    }

    /// The node selected where one is expected: nothing, one, or how many.
    pub fn single<'a>(&self, record: &'a Value, current: &'a Value) -> Single<'a> {
        let root = if self.relative { current } else { record };
        match &self.steps {
            Some(steps) => {
                let (mut first, mut count) = (None, 0);
                walk(root, steps, &mut |v| {
                    first.get_or_insert(v);
                    count += 1;
                });
                match (first, count) {
                    (None, _) => Single::Nothing,
                    (Some(v), 1) => Single::One(v),
                    (_, n) => Single::Many(n),
                }
            }
            None => match self.path.query(root).all().as_slice() {
                [] => Single::Nothing,
                [one] => Single::One(one),
                many => Single::Many(many.len()),
            },
        }
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

    /// Scanned (small) or looked up (large), a member is found exactly when the map has it,
    /// also for names that share a length or a prefix with another.
    #[test]
    fn members_are_found_by_scan_and_by_look_up_alike() {
        for size in [0, 1, 2, SCAN - 1, SCAN, SCAN + 1, 3 * SCAN] {
            let mut o = Map::new();
            for i in 0..size {
                o.insert(format!("k{i:02}"), json!(i));
            }
            for i in 0..size + 2 {
                for name in [format!("k{i:02}"), format!("k{i:02}x"), format!("k{i}")] {
                    assert_eq!(member(&o, &name), o.get(&name), "{name} in {size} members");
                }
            }
            if size > 0 {
                assert_eq!(member(&o, "k00"), Some(&json!(0)), "{size} members");
            }
        }
    }

    /// serde_json_path's own arity message is backwards; this fails when an upgrade turns it
    /// round (then `arity_said_right` must go).
    #[test]
    fn function_arity_is_said_as_the_function_takes_it() {
        let said = |q: &str| {
            Query::parse(q)
                .map(|_| ())
                .expect_err("invalid")
                .to_string()
        };
        assert!(
            said("$[?length(@.a, 1)]").ends_with("the function takes 1 argument, not 2"),
            "{}",
            said("$[?length(@.a, 1)]")
        );
        assert!(
            said("$[?match(@.a)]").ends_with("the function takes 2 arguments, not 1"),
            "{}",
            said("$[?match(@.a)]")
        );
    }

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

    /// The direct walk takes the queries mappings mostly use, gives what the general
    /// evaluator gives, and leaves the rest to it.
    #[test]
    fn simple_queries_are_walked_directly_with_the_same_result() {
        let doc = json!({"a": {"b": [1, {"c": "x"}, [2, 3]], "d": null}, "e": [], "f_1": {"g": 4}});
        for q in [
            "$",
            "$.a",
            "$.a.b",
            "$.a.b[1].c",
            "$.a.b[-1][0]",
            "$.a.b[-4]",
            "$.a.b[9]",
            "$.a.*",
            "$.a.b[*]",
            "$[*]",
            "$.*.b",
            "$.e[0]",
            "$.f_1.g",
            "$.a.d",
            "$.nothing.deeper",
        ] {
            let query = Query::parse(q).expect(q);
            assert!(query.steps.is_some(), "{q} is walked directly");
            assert_eq!(
                query.select(&doc, &doc),
                query.path.query(&doc).all(),
                "{q}"
            );
        }
        for q in [
            "$..c",
            "$['a']",
            "$.a.b[0:2]",
            "$.a.b[?@ == 1]",
            "$.a.b[ 0 ]",
            "$.a.b[01]",
            "$.a.b[-0]",
            "$.a.b[0,1]",
            "$.é",
        ] {
            if let Ok(query) = Query::parse(q) {
                assert!(
                    query.steps.is_none(),
                    "{q} is left to the general evaluator"
                );
            }
        }
        let one = Query::parse("$.a.b[1].c").expect("valid");
        assert_eq!(one.single(&doc, &doc), Single::One(&json!("x")));
        let many = Query::parse("$.a.b[*]").expect("valid");
        assert_eq!(many.single(&doc, &doc), Single::Many(3));
        let none = Query::parse("$.a.x").expect("valid");
        assert_eq!(none.single(&doc, &doc), Single::Nothing);
        let general = Query::parse("$..c").expect("valid");
        assert_eq!(general.single(&doc, &doc), Single::One(&json!("x")));
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
            if q.steps.is_some() && q.select(doc, doc) != q.path.query(doc).all() {
                failures.push(format!("{name}: {selector} walked directly differs"));
            }
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
