//! Checks of record formats (`format`) and of file sources (`path`): settings that belong to
//! the declared type, one-character delimiters and quotes, known encodings, XML record paths
//! with declared prefixes, and paths that stay inside the definition's directory.

use std::path::{Component, Path, PathBuf};

use super::context::Ctx;
use crate::config::spec::{FormatKind, FormatSpec};
use crate::model::Files;
use crate::model::decode::{CsvFormat, Format, Step, TextEncoding, XmlFormat};
use crate::model::glob::Glob;
use crate::model::vocabulary::FhirVersion;

fn with<'p>(base: &[&'p str], more: &[&'p str]) -> Vec<&'p str> {
    base.iter().chain(more.iter()).copied().collect()
}

/// Checks a `format` written at `at`; `fhir` is the version FHIR XML is read in.
pub fn format(ctx: &mut Ctx<'_>, at: &[&str], f: Option<&FormatSpec>, fhir: FhirVersion) -> Format {
    let Some(f) = f else {
        return Format::Json;
    };
    let set: [(&str, bool, &[FormatKind]); 8] = [
        ("header", f.header.is_some(), &[FormatKind::Csv]),
        ("columns", !f.columns.is_empty(), &[FormatKind::Csv]),
        ("delimiter", f.delimiter.is_some(), &[FormatKind::Csv]),
        ("quote", f.quote.is_some(), &[FormatKind::Csv]),
        (
            "encoding",
            f.encoding.is_some(),
            &[FormatKind::Csv, FormatKind::Xml],
        ),
        ("records", !f.records.is_empty(), &[FormatKind::Xml]),
        ("namespaces", !f.namespaces.is_empty(), &[FormatKind::Xml]),
        ("arrays", !f.arrays.is_empty(), &[FormatKind::Xml]),
    ];
    for (key, given, kinds) in set {
        if given && !kinds.contains(&f.kind) {
            let names: Vec<&str> = kinds.iter().map(|k| kind_name(*k)).collect();
            ctx.error_key(
                &with(at, &[key]),
                format!(
                    "`{key}` applies to `type: {}` only, not `{}`",
                    names.join("` or `type: "),
                    kind_name(f.kind)
                ),
                None,
            );
        }
    }
    let encoding = match f.encoding.as_deref() {
        None => TextEncoding::default(),
        Some(label) => TextEncoding::for_label(label).unwrap_or_else(|| {
            ctx.error(
                &with(at, &["encoding"]),
                format!("`{label}` is not a character encoding"),
                Some("e.g. `utf-8`, `latin1`, `windows-1252`".into()),
            );
            TextEncoding::default()
        }),
    };
    match f.kind {
        FormatKind::Json => Format::Json,
        FormatKind::Ndjson => Format::Ndjson,
        FormatKind::FhirXml => Format::FhirXml(fhir),
        FormatKind::Csv => {
            let delimiter = one_byte(ctx, &with(at, &["delimiter"]), f.delimiter.as_deref(), b',');
            let quote = one_byte(ctx, &with(at, &["quote"]), f.quote.as_deref(), b'"');
            if delimiter == quote {
                ctx.error(
                    &with(at, &["quote"]),
                    "the quote character is the delimiter",
                    None,
                );
            }
            let header = f.header.unwrap_or(f.columns.is_empty());
            if !header && f.columns.is_empty() {
                ctx.error(
                    &with(at, &["header"]),
                    "without a header row the columns need names",
                    Some("write `columns: [a, b, ...]`, or `header: true`".into()),
                );
            }
            // Names are trimmed, as a header row's are: ` a` and `a` name one column.
            let columns: Vec<String> = f.columns.iter().map(|c| c.trim().to_owned()).collect();
            for (i, c) in columns.iter().enumerate() {
                let index = i.to_string();
                if c.is_empty() {
                    ctx.error(
                        &with(at, &["columns", &index]),
                        "a column name is empty",
                        None,
                    );
                } else if columns[..i].contains(c) {
                    ctx.error(
                        &with(at, &["columns", &index]),
                        format!("column `{c}` is named twice"),
                        None,
                    );
                }
            }
            Format::Csv(CsvFormat {
                header,
                columns,
                delimiter,
                quote,
                encoding,
            })
        }
        FormatKind::Xml => {
            for (prefix, uri) in &f.namespaces {
                if prefix.is_empty() || prefix.contains(':') || uri.trim().is_empty() {
                    ctx.error(
                        &with(at, &["namespaces", prefix]),
                        format!("`{prefix}: {uri}` is not a namespace prefix and URI"),
                        None,
                    );
                }
            }
            let mut records = Vec::new();
            for (i, step) in f.records.iter().enumerate() {
                let index = i.to_string();
                let (namespace, local) = match step.split_once(':') {
                    Some((prefix, local)) => match f.namespaces.get(prefix) {
                        Some(uri) => (Some(uri.clone()), local),
                        None => {
                            ctx.error(
                                &with(at, &["records", &index]),
                                format!("the prefix `{prefix}` is not in `namespaces`"),
                                Some(format!("declare it: `namespaces: {{{prefix}: URI}}`")),
                            );
                            (None, local)
                        }
                    },
                    None => (None, step.as_str()),
                };
                if local.is_empty() || local.contains(['/', ' ', '<', '>']) {
                    ctx.error(
                        &with(at, &["records", &index]),
                        format!("`{step}` is not an element name"),
                        None,
                    );
                }
                records.push(Step {
                    namespace,
                    local: local.to_owned(),
                });
            }
            Format::Xml(XmlFormat {
                records,
                namespaces: f.namespaces.clone(),
                arrays: f.arrays.clone(),
                encoding,
            })
        }
    }
}

fn kind_name(k: FormatKind) -> &'static str {
    match k {
        FormatKind::Json => "json",
        FormatKind::Ndjson => "ndjson",
        FormatKind::Csv => "csv",
        FormatKind::Xml => "xml",
        FormatKind::FhirXml => "fhirXml",
    }
}

/// One ASCII character (`\t` written as such allowed), or the default.
fn one_byte(ctx: &mut Ctx<'_>, at: &[&str], text: Option<&str>, default: u8) -> u8 {
    let Some(text) = text else {
        return default;
    };
    let text = if text == "\\t" { "\t" } else { text };
    match text.as_bytes() {
        [b] if b.is_ascii() && *b != b'\n' && *b != b'\r' => *b,
        _ => {
            ctx.error(
                at,
                format!("`{text}` is not one ASCII character"),
                Some("e.g. `;` or `\\t`".into()),
            );
            default
        }
    }
}

/// Checks the `path` of a file source: relative to the definition's directory (never above
/// it) or absolute; a glob only in its file part.
pub fn files(ctx: &mut Ctx<'_>, at: &[&str], text: &str) -> Option<Files> {
    if ctx.unresolved(at) {
        return None;
    }
    let path = Path::new(text);
    if text.trim().is_empty() {
        ctx.error(at, "the path is empty", None);
        return None;
    }
    if !path.is_absolute() && path.components().any(|c| c == Component::ParentDir) {
        ctx.error(
            at,
            format!(
                "{} leaves the definition's directory (`..`)",
                ctx.show(at, text)
            ),
            Some("write an absolute path for files elsewhere".into()),
        );
        return None;
    }
    // The fixed folders first; the rest (from the first component with a glob character) is
    // the pattern.
    let mut dir = PathBuf::new();
    let mut rest: Vec<String> = Vec::new();
    for c in path.components() {
        let part = c.as_os_str().to_string_lossy();
        if rest.is_empty() && !part.contains(['*', '?', '[', '{']) {
            dir.push(c.as_os_str());
        } else {
            rest.push(part.into_owned());
        }
    }
    let base = ctx.doc.file.parent().unwrap_or(Path::new(""));
    let dir = if dir.is_absolute() {
        dir
    } else {
        base.join(dir)
    };
    let pattern = if rest.is_empty() {
        None
    } else {
        match Glob::new(&rest.join("/")) {
            Ok(g) => Some(g),
            Err(e) => {
                let message = format!("{} is not a valid pattern: {e}", ctx.show(at, text));
                ctx.error(at, message, None);
                return None;
            }
        }
    };
    Some(Files {
        dir,
        pattern,
        shown: text.to_owned(),
    })
}
