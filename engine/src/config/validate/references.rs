//! `${env:...}` / `${file:...}` references in a document: resolved inside string values
//! before anything is typed, then checked against the schema, where a resolved value that a
//! typed field (an integer, a boolean, a duration, a size, an enum) needs is read as YAML
//! reads plain text, and a value still of the wrong kind is explained by the reference that
//! gave it (its value shown unless it came from a file or the field holds a credential).

use std::path::Path;

use serde_json::Value;

use crate::config::diagnostic::{Diagnostic, Location};
use crate::config::schema::{self, Finding};
use crate::config::secrets::{self, Unresolved};
use crate::config::yaml::{self, display_path};

use super::context::Doc;

/// Where references are looked up, and whether one that cannot be is only a warning.
pub(super) struct Lookup<'a> {
    pub env: &'a dyn secrets::Environment,
    pub allow_unresolved: bool,
    pub base: &'a Path,
}

/// Longest resolved value shown in a diagnostic; longer ones are cut.
const SHOWN_CHARS: usize = 40;

/// Resolves `${env:...}` / `${file:...}` in string values outside the mappings
/// (`spec.mapping`, a pull resource type's or read's `mapping`) and `spec.tests` (templates
/// and samples, where `${` has no meaning).
pub(super) fn resolve(
    v: &mut Value,
    at: &mut Vec<String>,
    doc: &mut Doc,
    diags: &mut Vec<Diagnostic>,
    lookup: &Lookup<'_>,
) {
    if at.len() == 2 && at[0] == "spec" && (at[1] == "mapping" || at[1] == "tests") {
        return;
    }
    let own_mapping = match at.as_slice() {
        [s, p, r, _, m] => [s, p, r, m] == ["spec", "pull", "resources", "mapping"],
        [s, p, r, _, rd, m] => [s, p, r, rd, m] == ["spec", "pull", "resources", "read", "mapping"],
        _ => false,
    };
    if own_mapping {
        return;
    }
    match v {
        Value::String(s) if secrets::has_reference(s) || s.contains("$${") => {
            let pointer = format!("/{}", at.join("/"));
            match secrets::resolve(s, lookup.env, lookup.base) {
                Ok(resolved) => {
                    if secrets::has_reference(s) {
                        doc.secret.insert(pointer);
                    }
                    *s = resolved;
                }
                Err(unresolved) => {
                    let node = doc.node.descend(at);
                    let loc = Location {
                        line: node.line,
                        column: node.column,
                        path: display_path(at),
                    };
                    let message = unresolved.to_string();
                    let d = match unresolved {
                        u if !u.is_unavailable() => Diagnostic::error(&doc.file, &loc, message),
                        _ if lookup.allow_unresolved => {
                            Diagnostic::warning(&doc.file, &loc, message)
                        }
                        u => {
                            let what = match u {
                                Unresolved::VariableNotSet(_) => "set the variable",
                                _ => "provide the file",
                            };
                            Diagnostic::error(&doc.file, &loc, message).with_hint(Some(format!(
                                "{what}, or run `engine validate --allow-unresolved` where secrets are absent"
                            )))
                        }
                    };
                    diags.push(d);
                    doc.secret.insert(pointer.clone());
                    doc.unresolved.insert(pointer);
                }
            }
        }
        Value::Object(o) => {
            for (k, child) in o.iter_mut() {
                at.push(k.clone());
                resolve(child, at, doc, diags, lookup);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter_mut().enumerate() {
                at.push(i.to_string());
                resolve(child, at, doc, diags, lookup);
                at.pop();
            }
        }
        _ => {}
    }
}

/// The schema check of a resolved document.
pub(super) struct Typed {
    /// What is wrong, those at a resolved reference explained by it.
    pub findings: Vec<Finding>,
    /// A required value came from a reference that could not be resolved (already reported):
    /// the document cannot be checked further.
    pub incomplete: bool,
}

/// Checks the resolved document against the schema. A resolved value where a typed scalar is
/// expected is read as plain YAML text; a value whose reference could not be resolved is left
/// out (its field checked as if not written: the reference is already reported).
pub(super) fn check_typed(json: &mut Value, doc: &Doc) -> Typed {
    let mut removed = Vec::new();
    // Each round types or removes at least one value, so this ends; the bound is a guard.
    for _ in 0..8 {
        let findings = schema::check(json);
        let mut changed = false;
        for f in &findings {
            let pointer = format!("/{}", f.at.join("/"));
            if doc.unresolved.contains(&pointer) && !f.key {
                if remove(json, &f.at) {
                    removed.push(pointer);
                    changed = true;
                }
            } else if doc.secret.contains(&pointer)
                && let Some(Value::String(s)) = json.pointer(&pointer)
            {
                let typed = yaml::plain_json(s);
                if !typed.is_string()
                    && let Some(slot) = json.pointer_mut(&pointer)
                {
                    *slot = typed;
                    changed = true;
                }
            }
        }
        if !changed {
            let before = findings.len();
            let findings: Vec<Finding> = findings
                .into_iter()
                .filter(|f| {
                    !f.missing.as_ref().is_some_and(|k| {
                        removed.contains(&format!(
                            "/{}",
                            [&f.at[..], std::slice::from_ref(k)].concat().join("/")
                        ))
                    })
                })
                .map(|f| explain(f, json, doc))
                .collect();
            let incomplete = findings.len() < before;
            return Typed {
                findings,
                incomplete,
            };
        }
    }
    Typed {
        findings: schema::check(json),
        incomplete: false,
    }
}

fn remove(json: &mut Value, at: &[String]) -> bool {
    let Some((last, parent)) = at.split_last() else {
        return false;
    };
    let pointer = format!("/{}", parent.join("/"));
    match json.pointer_mut(&pointer) {
        Some(Value::Object(o)) => o.remove(last).is_some(),
        _ => false,
    }
}

/// A finding at a value read from a reference, said in terms of the reference.
fn explain(mut f: Finding, json: &Value, doc: &Doc) -> Finding {
    let pointer = format!("/{}", f.at.join("/"));
    if f.key || !doc.secret.contains(&pointer) {
        return f;
    }
    let Some(written) = doc.node.descend(&f.at).as_str() else {
        return f;
    };
    let field = f.at.last().cloned().unwrap_or_default();
    // A file's text is never shown: `${file:}` is how credentials are mounted.
    let gave = if secrets::is_secret_field(&f.at) || written.contains("${file:") {
        "a value (not shown)".to_owned()
    } else {
        match json.pointer(&pointer) {
            Some(Value::String(s)) if s.chars().count() > SHOWN_CHARS => {
                let cut: String = s.chars().take(SHOWN_CHARS).collect();
                format!("`{cut}...`")
            }
            Some(Value::String(s)) => format!("`{s}`"),
            Some(other) => format!("`{other}`"),
            None => "nothing".to_owned(),
        }
    };
    f.message = match &f.expected {
        Some(expected) => format!("{field}: {written} gave {gave}, not {expected}"),
        None => format!("{field}: {written} gave {gave}: {}", f.message),
    };
    f
}
