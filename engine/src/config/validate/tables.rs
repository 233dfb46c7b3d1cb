//! A connector's code tables: written in `map`, or read from a CSV or JSON `file` beside the
//! definition (size-capped, each code once), into the model's [`Table`]s.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::context::Ctx;
use crate::config::spec::{ConnectorSpec, TableSpec};
use crate::model::digest::content_digest;
use crate::model::template::Table;

/// The largest table file read.
pub const MAX_TABLE_BYTES: u64 = 4 << 20;

/// The most codes a table file may hold.
pub const MAX_TABLE_ENTRIES: usize = 100_000;

/// Why a table file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TableFileError {
    #[error("cannot read `{file}`: {reason}")]
    Unreadable { file: String, reason: String },
    #[error("`{file}` is larger than {max} bytes")]
    TooLarge { file: String, max: u64 },
    #[error("`{file}` holds more than {max} codes")]
    TooMany { file: String, max: usize },
    #[error("`{file}` is not UTF-8 text")]
    NotUtf8 { file: String },
    #[error("`{file}` is not a JSON object of code to value: {reason}")]
    Json { file: String, reason: String },
    #[error("`{file}` is not valid CSV: {reason}")]
    Csv { file: String, reason: String },
    #[error("`{file}` has no column `{column}`; its columns: {columns}")]
    NoColumn {
        file: String,
        column: String,
        columns: String,
    },
    #[error("`{file}` needs a header row and at least two columns (a code and its value)")]
    Columns { file: String },
    #[error("`{file}` line {line}: the code `{code}` is written twice")]
    Duplicate {
        file: String,
        line: u64,
        code: String,
    },
    #[error("`{file}` line {line}: the code is empty")]
    EmptyCode { file: String, line: u64 },
    #[error("`{file}` is neither `.csv` nor `.json`")]
    Extension { file: String },
}

/// The tables of a connector; errors are reported at the table's `file` or `map`.
/// Each file read is noted in `inputs` with the digest of its bytes.
pub fn tables(
    ctx: &mut Ctx<'_>,
    spec: &ConnectorSpec,
    inputs: &mut BTreeMap<PathBuf, String>,
) -> BTreeMap<String, Table> {
    let base = ctx
        .doc
        .file
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut out = BTreeMap::new();
    for (name, t) in &spec.tables {
        let map = match (&t.map, &t.file) {
            (Some(map), None) => map.clone(),
            (None, Some(file)) => match read(&base, file, t) {
                Ok((map, digest)) => {
                    inputs.insert(base.join(file), digest);
                    map
                }
                Err(e) => {
                    ctx.error(&["spec", "tables", name, "file"], e.to_string(), None);
                    continue;
                }
            },
            (map, _) => {
                let both = map.is_some();
                ctx.error(
                    &["spec", "tables", name],
                    if both {
                        format!("table `{name}` has both `map` and `file`; give one")
                    } else {
                        format!("table `{name}` needs `map` or `file`")
                    },
                    None,
                );
                continue;
            }
        };
        if t.file.is_none() {
            for key in ["key", "value"] {
                let set = if key == "key" { &t.key } else { &t.value };
                if set.is_some() {
                    ctx.error(
                        &["spec", "tables", name, key],
                        format!("`{key}` names a CSV column, so it goes with a `.csv` `file`"),
                        None,
                    );
                }
            }
        }
        out.insert(
            name.clone(),
            Table {
                map,
                default: t.default.clone(),
                file: t.file.clone(),
            },
        );
    }
    out
}

/// The codes and values of a table file, and the digest of its bytes.
pub fn read(
    base: &Path,
    file: &str,
    spec: &TableSpec,
) -> Result<(BTreeMap<String, Value>, String), TableFileError> {
    let shown = file.to_owned();
    let csv = if file.ends_with(".csv") {
        true
    } else if file.ends_with(".json") {
        false
    } else {
        return Err(TableFileError::Extension { file: shown });
    };
    let unreadable = |e: std::io::Error| TableFileError::Unreadable {
        file: shown.clone(),
        reason: match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".into(),
            std::io::ErrorKind::PermissionDenied => "permission denied".into(),
            _ => e.kind().to_string(),
        },
    };
    let f = std::fs::File::open(base.join(file)).map_err(unreadable)?;
    let mut bytes = Vec::new();
    f.take(MAX_TABLE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_TABLE_BYTES {
        return Err(TableFileError::TooLarge {
            file: shown,
            max: MAX_TABLE_BYTES,
        });
    }
    let digest = content_digest(&[&bytes]);
    let text = String::from_utf8(bytes).map_err(|_| TableFileError::NotUtf8 {
        file: shown.clone(),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let map = if csv {
        read_csv(text, &shown, spec)?
    } else if spec.key.is_some() || spec.value.is_some() {
        return Err(TableFileError::Json {
            file: shown,
            reason: "`key` and `value` name CSV columns; a JSON table maps codes directly".into(),
        });
    } else {
        read_json(text, &shown)?
    };
    if map.len() > MAX_TABLE_ENTRIES {
        return Err(TableFileError::TooMany {
            file: shown,
            max: MAX_TABLE_ENTRIES,
        });
    }
    Ok((map, digest))
}

fn read_json(text: &str, file: &str) -> Result<BTreeMap<String, Value>, TableFileError> {
    let bad = |reason: String| TableFileError::Json {
        file: file.to_owned(),
        reason,
    };
    // Counted before parsing: parsed values cost far more memory than their text.
    match serde_json::from_str::<Value>(text).map_err(|e| bad(e.to_string()))? {
        Value::Object(o) => {
            if o.len() > MAX_TABLE_ENTRIES {
                return Err(TableFileError::TooMany {
                    file: file.to_owned(),
                    max: MAX_TABLE_ENTRIES,
                });
            }
            if o.keys().any(String::is_empty) {
                return Err(bad("a code is empty".into()));
            }
            Ok(o.into_iter().collect())
        }
        other => Err(bad(format!("found {}", crate::model::fhir::kind(&other)))),
    }
}

fn read_csv(
    text: &str,
    file: &str,
    spec: &TableSpec,
) -> Result<BTreeMap<String, Value>, TableFileError> {
    let bad = |e: csv::Error| TableFileError::Csv {
        file: file.to_owned(),
        reason: e.to_string(),
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers = reader.headers().map_err(bad)?.clone();
    if headers.len() < 2 {
        return Err(TableFileError::Columns {
            file: file.to_owned(),
        });
    }
    let column = |name: &Option<String>, default: usize| match name {
        None => Ok(default),
        Some(n) => {
            headers
                .iter()
                .position(|h| h.trim() == n)
                .ok_or_else(|| TableFileError::NoColumn {
                    file: file.to_owned(),
                    column: n.clone(),
                    columns: headers.iter().collect::<Vec<_>>().join(", "),
                })
        }
    };
    let (k, v) = (column(&spec.key, 0)?, column(&spec.value, 1)?);
    let mut map = BTreeMap::new();
    for record in reader.records() {
        let record = record.map_err(bad)?;
        let line = record.position().map_or(0, csv::Position::line);
        let code = record.get(k).unwrap_or_default().trim();
        if code.is_empty() {
            return Err(TableFileError::EmptyCode {
                file: file.to_owned(),
                line,
            });
        }
        let value = Value::String(record.get(v).unwrap_or_default().trim().to_owned());
        if map.insert(code.to_owned(), value).is_some() {
            return Err(TableFileError::Duplicate {
                file: file.to_owned(),
                line,
                code: crate::model::template::shown(code),
            });
        }
        if map.len() > MAX_TABLE_ENTRIES {
            return Err(TableFileError::TooMany {
                file: file.to_owned(),
                max: MAX_TABLE_ENTRIES,
            });
        }
    }
    Ok(map)
}
