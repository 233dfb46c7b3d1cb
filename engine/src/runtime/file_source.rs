//! File sources: the files a source's `path` names, read on tokio's blocking pool, each
//! bounded by the source's `maxAnswer` and decoded in its `format`, all of them together by
//! its `maxValues`. One file gives its document; a glob gives its files' documents
//! concatenated in name order (an array's items, or the document itself).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::model::decode::{self, DecodeError, Format, Limits};
use crate::model::{Files, Source};

/// Most files one read of a glob takes.
pub const MAX_FILES: usize = 10_000;

/// Why a file source could not be read. Paths are shown relative to the source's `path`
/// as written, never resolved.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read `{name}`: {reason}")]
    Io { name: String, reason: String },
    #[error("`{name}` is larger than {max} bytes (`maxAnswer`)")]
    TooLarge { name: String, max: u64 },
    #[error("`{name}` is not {format}: {source}")]
    Decode {
        name: String,
        format: &'static str,
        source: DecodeError,
    },
    #[error("more than {MAX_FILES} files match `{pattern}`")]
    TooManyFiles { pattern: String },
}

impl FileError {
    /// Whether the files were there but unusable (as against missing or unreadable).
    pub fn unusable(&self) -> bool {
        !matches!(self, FileError::Io { .. })
    }
}

/// Reads a file source's files (blocking: call on the blocking pool).
pub fn read(source: &Source, files: &Files) -> Result<Value, FileError> {
    let mut left = source.max_values;
    let Some(pattern) = &files.pattern else {
        return one(source, &files.dir, &files.shown, &mut left);
    };
    let mut found = Vec::new();
    let recursive = pattern.pattern.contains('/');
    walk(&files.dir, "", recursive, &mut found, files)?;
    found.retain(|(rel, _)| pattern.matches(rel));
    found.sort();
    let mut out = Vec::new();
    for (rel, path) in found {
        match one(source, &path, &rel, &mut left)? {
            Value::Array(items) => out.extend(items),
            other => out.push(other),
        }
    }
    Ok(Value::Array(out))
}

/// The files below `dir` (hidden ones and symbolic links to folders left out), with their
/// paths relative to the source's folder.
fn walk(
    dir: &Path,
    rel: &str,
    recursive: bool,
    out: &mut Vec<(String, PathBuf)>,
    files: &Files,
) -> Result<(), FileError> {
    let io = |e: std::io::Error| FileError::Io {
        name: if rel.is_empty() {
            files.shown.clone()
        } else {
            rel.to_owned()
        },
        reason: reason(&e),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        // A folder that is not there holds no files.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let here = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let kind = entry.file_type().map_err(io)?;
        if kind.is_dir() {
            if recursive {
                walk(&entry.path(), &here, recursive, out, files)?;
            }
        } else if !regular(&entry.path()) {
            // A named pipe, socket or device (or a link to one, or to a folder) is no export:
            // opening a pipe would wait for a writer for ever.
            continue;
        } else {
            if out.len() >= MAX_FILES {
                return Err(FileError::TooManyFiles {
                    pattern: files.shown.clone(),
                });
            }
            out.push((here, entry.path()));
        }
    }
    Ok(())
}

/// One file, read up to the cap and decoded; `left` is what remains of `maxValues`.
fn one(source: &Source, path: &Path, name: &str, left: &mut usize) -> Result<Value, FileError> {
    let io = |e: std::io::Error| FileError::Io {
        name: name.to_owned(),
        reason: reason(&e),
    };
    // Only a regular file is opened: a named pipe would block the read until a writer came.
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(FileError::Io {
                name: name.to_owned(),
                reason: "is a folder, not a file".into(),
            });
        }
        Ok(m) if !m.is_file() => {
            return Err(FileError::Io {
                name: name.to_owned(),
                reason: "not a regular file (a pipe, socket or device)".into(),
            });
        }
        Ok(_) => {}
        Err(e) => return Err(io(e)),
    }
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(source.max_answer.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > source.max_answer {
        return Err(FileError::TooLarge {
            name: name.to_owned(),
            max: source.max_answer,
        });
    }
    let decode_error = |e| FileError::Decode {
        name: name.to_owned(),
        format: source.format.name(),
        source: e,
    };
    if source.format == Format::Json {
        // Counted before parsing, as an answer is.
        crate::runtime::json_count::count_values(&bytes, *left)
            .map_err(|e| decode_error(DecodeError::TooManyValues { max: e.max }))?;
    }
    let value = decode::decode(&source.format, &bytes, Limits { max_values: *left })
        .map_err(decode_error)?;
    *left = left.saturating_sub(decode::count(&value));
    Ok(value)
}

/// Whether `path` is a regular file, following a symbolic link.
fn regular(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// Why a file could not be read, without its path.
fn reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "not found".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::IsADirectory => "is a directory".into(),
        _ => e.kind().to_string(),
    }
}
