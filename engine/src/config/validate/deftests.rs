//! The definitions' own tests: checked (names, inputs and expectations, inline or from files,
//! and in a pull connector the resource type and interaction, search or read, they run), then
//! each input mapped as its route would map it and compared with the expected FHIR, exactly or
//! as a subset, with a readable diff on failure.

use std::collections::HashSet;

use serde_json::Value;

use super::context::{Ctx, segs};
use super::source::exactly_one;
use crate::config::diagnostic::Diagnostic;
use crate::config::fhir_schema::FhirSchema;
use crate::config::spec::{ConnectorSpec, Interaction, MatchMode, Strategy, TestSpec};
use crate::model::decode::{Format, Limits};
use crate::model::hint::did_you_mean;
use crate::model::{Connector, Test, fhir_structure};

/// Most values a test's input file may decode to.
const MAX_INPUT_VALUES: usize = 10_000_000;
/// The largest file a definition test reads (an input or an expected output).
const MAX_INPUT_BYTES: u64 = 64 * 1024 * 1024;

/// Most difference lines shown for one test.
const MAX_LINES: usize = 20;

/// Runs the tests of one connector, reporting failures at each test.
pub fn run(ctx: &mut Ctx<'_>, c: &Connector, schema: Option<&FhirSchema>) {
    for t in &c.tests {
        let at = ctx.at_owned(&t.at);
        let mut fail = |message: String| {
            ctx.diags
                .push(Diagnostic::error(&ctx.doc.file, &at, message))
        };
        let result = c.run_test(t);
        let got = match (result, &t.expect_error) {
            (Err(e), Some(want)) if e.to_string().contains(want.as_str()) => continue,
            (Err(e), Some(want)) => {
                fail(format!(
                    "test `{}`: expected an error containing `{want}`, got: {e}",
                    t.name
                ));
                continue;
            }
            (Ok(_), Some(want)) => {
                fail(format!(
                    "test `{}`: expected an error containing `{want}`, but the mapping succeeded",
                    t.name
                ));
                continue;
            }
            (Err(e), None) => {
                fail(format!("test `{}`: the mapping failed: {e}", t.name));
                continue;
            }
            (Ok(got), None) => got,
        };
        check_output(c, &got, &t.name, &mut fail);
        if let Some(schema) = schema {
            for (i, r) in got.iter().enumerate() {
                for problem in schema.check(r).into_iter().take(5) {
                    fail(format!(
                        "test `{}`: resource {i} is not valid FHIR R4: {problem}",
                        t.name
                    ));
                }
            }
        }
        let expected = match &t.expect {
            Some(Value::Array(a)) => Value::Array(a.clone()),
            Some(one) => Value::Array(vec![one.clone()]),
            None => continue,
        };
        let mut lines = Vec::new();
        diff(
            "$",
            &expected,
            &Value::Array(got),
            t.match_mode == MatchMode::Subset,
            &mut lines,
        );
        if !lines.is_empty() {
            let more = lines.len().saturating_sub(MAX_LINES);
            lines.truncate(MAX_LINES);
            if more > 0 {
                lines.push(format!("... and {more} more"));
            }
            fail(format!(
                "test `{}`: the output differs from the expected FHIR:\n    {}",
                t.name,
                lines.join("\n    ")
            ));
        }
    }
}

/// The FHIR a test made, checked against the connector's version (no schema file needed).
fn check_output(c: &Connector, got: &[Value], test: &str, fail: &mut impl FnMut(String)) {
    let Ok(structure) = fhir_structure::structure(c.fhir_version) else {
        return;
    };
    for (i, r) in got.iter().enumerate() {
        for problem in structure.check_instance(r).into_iter().take(5) {
            fail(format!(
                "test `{test}`: resource {i} is not valid FHIR {}: {problem}",
                c.fhir_version.name()
            ));
        }
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(77).collect::<String>())
    } else {
        s
    }
}

/// Differences between expected and actual output, one line each, by JSONPath.
pub fn diff(path: &str, expected: &Value, got: &Value, subset: bool, out: &mut Vec<String>) {
    match (expected, got) {
        (Value::Object(e), Value::Object(g)) => {
            for (k, ev) in e {
                let p = format!("{path}.{k}");
                match g.get(k) {
                    Some(gv) => diff(&p, ev, gv, subset, out),
                    None => out.push(format!("{p}: missing (expected {})", short(ev))),
                }
            }
            if !subset {
                for (k, gv) in g.iter().filter(|(k, _)| !e.contains_key(*k)) {
                    out.push(format!("{path}.{k}: not expected (got {})", short(gv)));
                }
            }
        }
        (Value::Array(e), Value::Array(g)) => {
            for i in 0..e.len().max(g.len()) {
                let p = format!("{path}[{i}]");
                match (e.get(i), g.get(i)) {
                    (Some(ev), Some(gv)) => diff(&p, ev, gv, subset, out),
                    (Some(ev), None) => out.push(format!("{p}: missing (expected {})", short(ev))),
                    (None, Some(gv)) if !subset => {
                        out.push(format!("{p}: not expected (got {})", short(gv)))
                    }
                    _ => {}
                }
            }
        }
        _ if expected != got => out.push(format!(
            "{path}: expected {}, got {}",
            short(expected),
            short(got)
        )),
        _ => {}
    }
}

/// How a test gives its input or its expected output: inline, in a file, or (for the
/// expectation) as an error message (kept on the test as it is).
enum Given<'a> {
    Inline(&'a Value),
    File(&'a str),
    Error,
}

/// Checks the `tests` of a connector and reads their files: the tests `run` runs.
pub fn tests(ctx: &mut Ctx<'_>, spec: &ConnectorSpec, format: &Format) -> Vec<Test> {
    let dir = ctx
        .doc
        .file
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for (i, t) in spec.tests.iter().enumerate() {
        let idx = i.to_string();
        let at = ["spec", "tests", idx.as_str()];
        if !names.insert(t.name.clone()) {
            ctx.error(
                &["spec", "tests", &idx, "name"],
                format!("test name `{}` is used twice", t.name),
                None,
            );
        }
        let input = match exactly_one(
            ctx,
            &at,
            "a test",
            vec![
                ("input", t.input.as_ref().map(Given::Inline)),
                ("inputFile", t.input_file.as_deref().map(Given::File)),
            ],
        ) {
            Some(Given::Inline(v)) => Some(v.clone()),
            Some(Given::File(f)) => {
                input_file(ctx, &["spec", "tests", &idx, "inputFile"], &dir, f, format)
            }
            Some(Given::Error) | None => None,
        };
        let expect = match exactly_one(
            ctx,
            &at,
            "a test",
            vec![
                ("expect", t.expect.as_ref().map(Given::Inline)),
                ("expectFile", t.expect_file.as_deref().map(Given::File)),
                ("expectError", t.expect_error.as_ref().map(|_| Given::Error)),
            ],
        ) {
            Some(Given::Inline(v)) => Some(v.clone()),
            Some(Given::File(f)) => json_file(ctx, &["spec", "tests", &idx, "expectFile"], &dir, f),
            Some(Given::Error) | None => None,
        };
        let interaction = target(ctx, spec, t, &idx);
        if let Some(input) = input {
            out.push(Test {
                resource_type: t.resource_type.clone(),
                interaction,
                id: t.id.clone(),
                name: t.name.clone(),
                at: segs(&at),
                input,
                params: Value::Object(
                    t.params
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
                expect,
                match_mode: t.match_mode,
                expect_error: t.expect_error.clone(),
            });
        }
    }
    out
}

/// Checks what a test runs: in a pull connector, a served resource type with the interaction
/// (a read with its `id`, a search with its `params`); elsewhere none of these.
fn target(ctx: &mut Ctx<'_>, spec: &ConnectorSpec, t: &TestSpec, idx: &str) -> Interaction {
    let at = |k: &'static str| ["spec", "tests", idx, k];
    let interaction = t.interaction.unwrap_or_default();
    let pull = match (&spec.pull, spec.strategy) {
        (Some(p), Strategy::Pull) => p,
        _ => {
            for (key, on) in [
                ("type", t.resource_type.is_some()),
                ("interaction", t.interaction.is_some()),
                ("id", t.id.is_some()),
            ] {
                if on {
                    ctx.error(
                        &at(key),
                        format!("`{key}` is for the tests of pull connectors"),
                        None,
                    );
                }
            }
            return interaction;
        }
    };
    let own = pull
        .resources
        .iter()
        .any(|r| r.mapping.is_some() || r.read.as_ref().is_some_and(|rd| rd.mapping.is_some()));
    let types = || pull.resources.iter().map(|r| r.resource_type.as_str());
    let res = match &t.resource_type {
        Some(name) => {
            let found = pull.resources.iter().find(|r| &r.resource_type == name);
            if found.is_none() {
                let hint = did_you_mean(name, types()).or_else(|| {
                    Some(format!(
                        "the routes serve `{}`",
                        types().collect::<Vec<_>>().join("`, `")
                    ))
                });
                ctx.error(&at("type"), format!("no route serves `{name}`"), hint);
            }
            found
        }
        None if own && pull.resources.len() > 1 => {
            ctx.error(
                &["spec", "tests", idx],
                "this connector maps its resource types differently: say which one the test runs with `type`",
                Some(format!("one of `{}`", types().collect::<Vec<_>>().join("`, `"))),
            );
            None
        }
        None => pull.resources.iter().find(|r| match interaction {
            Interaction::Search => r.search.is_some(),
            Interaction::Read => r.read.is_some(),
        }),
    };
    match interaction {
        Interaction::Read => {
            match &t.id {
                Some(id) if crate::model::fhir::is_id(id) => {}
                Some(id) => ctx.error(&at("id"), format!("`{id}` is not a FHIR id"), None),
                None => ctx.error(
                    &["spec", "tests", idx],
                    "a read test needs the `id` it asks for",
                    None,
                ),
            }
            if !t.params.is_empty() {
                ctx.error(&at("params"), "a read takes no search parameters", None);
            }
            if let Some(r) = res
                && r.read.is_none()
            {
                ctx.error(
                    &at("interaction"),
                    format!("`{}` has no read", r.resource_type),
                    None,
                );
            }
        }
        Interaction::Search => {
            if t.id.is_some() {
                ctx.error(&at("id"), "`id` is for `interaction: read`", None);
            }
            if let Some(r) = res
                && r.search.is_none()
            {
                ctx.error(
                    &at("type"),
                    format!(
                        "`{}` has no search: write `interaction: read`",
                        r.resource_type
                    ),
                    None,
                );
            }
        }
    }
    interaction
}

fn json_file(ctx: &mut Ctx<'_>, at: &[&str], dir: &std::path::Path, name: &str) -> Option<Value> {
    let bytes = read_input(ctx, at, dir, name)?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            ctx.error(at, format!("`{name}` is not JSON: {e}"), None);
            None
        }
    }
}

/// The bytes of a test's file: a regular file of at most `MAX_INPUT_BYTES`.
fn read_input(
    ctx: &mut Ctx<'_>,
    at: &[&str],
    dir: &std::path::Path,
    name: &str,
) -> Option<Vec<u8>> {
    match crate::config::load::read_regular(&dir.join(name), MAX_INPUT_BYTES) {
        Ok(b) => Some(b),
        Err(e) => {
            ctx.error(
                at,
                format!("cannot read `{name}`: {e}"),
                Some(format!("paths are relative to {}", dir.display())),
            );
            None
        }
    }
}

/// A test's input file, read in the connector's input format (JSON by default).
fn input_file(
    ctx: &mut Ctx<'_>,
    at: &[&str],
    dir: &std::path::Path,
    name: &str,
    format: &Format,
) -> Option<Value> {
    if *format == Format::Json {
        return json_file(ctx, at, dir, name);
    }
    let bytes = read_input(ctx, at, dir, name)?;
    let limits = Limits {
        max_values: MAX_INPUT_VALUES,
    };
    match crate::model::decode::decode(format, &bytes, limits) {
        Ok(v) => Some(v),
        Err(e) => {
            ctx.error(at, format!("`{name}` is not {}: {e}", format.name()), None);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_names_each_difference() {
        let mut out = Vec::new();
        diff(
            "$",
            &json!([{"a": 1, "b": [1, 2]}]),
            &json!([{"a": 2, "b": [1], "c": true}]),
            false,
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                "$[0].a: expected 1, got 2",
                "$[0].b[1]: missing (expected 2)",
                "$[0].c: not expected (got true)"
            ]
        );
        let mut sub = Vec::new();
        diff(
            "$",
            &json!([{"a": 1}]),
            &json!([{"a": 1, "c": true}, {}]),
            true,
            &mut sub,
        );
        assert!(sub.is_empty());
    }
}
