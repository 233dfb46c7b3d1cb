//! `${env:NAME}` and `${file:PATH}` references, resolved inside string values after parsing
//! (never by text substitution), through a small seam so that tests choose the environment.
//! `${env:NAME:-default}` gives a default; `$${` writes a literal `${`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::model::digest::content_digest;

/// Where references are looked up.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
    fn read(&self, path: &Path) -> std::io::Result<String>;
}

/// The process environment and file system.
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    /// Only a regular file of at most `MAX_SECRET_BYTES` (a named pipe would hold the reader
    /// until a writer came).
    fn read(&self, path: &Path) -> std::io::Result<String> {
        use crate::config::load::{FileReadError, read_regular};
        let bytes = read_regular(path, MAX_SECRET_BYTES).map_err(|e| match e {
            FileReadError::Io(e) => e,
            e => std::io::Error::other(e.to_string()),
        })?;
        String::from_utf8(bytes).map_err(|_| std::io::Error::other("not UTF-8 text"))
    }
}

/// The largest file a `${file:...}` reference reads.
pub const MAX_SECRET_BYTES: u64 = 1024 * 1024;

/// An environment that notes the files read through it, with the SHA-256 of each as read, so
/// that the model can name the files it was compiled from (`Model::inputs`).
pub struct Recording<'a> {
    inner: &'a dyn Environment,
    read: RefCell<BTreeMap<PathBuf, String>>,
}

impl<'a> Recording<'a> {
    pub fn new(inner: &'a dyn Environment) -> Self {
        Recording {
            inner,
            read: RefCell::new(BTreeMap::new()),
        }
    }

    /// The files read, by path, each with the digest of its content.
    pub fn into_read(self) -> BTreeMap<PathBuf, String> {
        self.read.into_inner()
    }
}

impl Environment for Recording<'_> {
    fn var(&self, name: &str) -> Option<String> {
        self.inner.var(name)
    }

    fn read(&self, path: &Path) -> std::io::Result<String> {
        let text = self.inner.read(path)?;
        self.read
            .borrow_mut()
            .insert(path.to_path_buf(), content_digest(&[text.as_bytes()]));
        Ok(text)
    }
}

/// True when a string contains a reference (so its resolved value must never be shown).
pub fn has_reference(s: &str) -> bool {
    s.replace("$${", "").contains("${")
}

/// True for a field that holds a credential (under `auth`, a header, or a key named like a
/// token, a password, a secret or a key), given its path: a value read into it from a
/// reference is never shown, even when it is wrong.
pub fn is_secret_field(path: &[String]) -> bool {
    path.iter().any(|segment| {
        let k = segment.to_ascii_lowercase();
        [
            "auth",
            "headers",
            "token",
            "password",
            "secret",
            "key",
            "credential",
            "assertion",
        ]
        .iter()
        .any(|w| k.contains(w))
    })
}

/// Why a reference could not be resolved; the message names the reference, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unresolved {
    /// Well formed, but the variable is not set here.
    #[error("environment variable `{0}` is not set")]
    VariableNotSet(String),
    /// Well formed, but the file cannot be read here.
    #[error("secret file `{path}` cannot be read: {reason}")]
    FileUnreadable { path: String, reason: String },
    /// `${` without its `}`.
    #[error("unclosed `${{` (write `$${{` for a literal `${{`)")]
    Unclosed,
    /// `${env:NAME}` whose name is not a variable name.
    #[error("`${{{reference}}}`: `{name}` is not an environment variable name")]
    BadVariableName { reference: String, name: String },
    /// `${env:}` (or `${env::-default}`).
    #[error("`${{{0}}}` names no environment variable")]
    NoVariable(String),
    /// `${file:}`.
    #[error("`${{file:}}` names no file")]
    NoFile,
    /// A reference inside a reference (`${env:A:-${env:B}}`): references are resolved once,
    /// never inside one another.
    #[error("`${{{0}` holds a reference inside a reference: references do not nest")]
    Nested(String),
    /// A reference of an unknown kind (`${vault:x}`).
    #[error("unknown reference `${{{0}}}`: use `${{env:NAME}}` or `${{file:PATH}}`")]
    UnknownKind(String),
}

impl Unresolved {
    /// Well formed but not available here (a variable not set, a file not readable): the
    /// definition may be right where it runs. The other kinds are definition errors anywhere.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Unresolved::VariableNotSet(_) | Unresolved::FileUnreadable { .. }
        )
    }
}

/// Resolves the references of `s`. Relative file paths are relative to `base`; a file's
/// trailing newline is dropped. The error names the reference, never a value.
pub fn resolve(s: &str, env: &dyn Environment, base: &Path) -> Result<String, Unresolved> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after.find('}').ok_or(Unresolved::Unclosed)?;
            let reference = &after[..end];
            if reference.contains("${") {
                return Err(Unresolved::Nested(reference.to_owned()));
            }
            out.push_str(&lookup(reference, env, base)?);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn lookup(reference: &str, env: &dyn Environment, base: &Path) -> Result<String, Unresolved> {
    if let Some(spec) = reference.strip_prefix("env:") {
        let (name, default) = match spec.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (spec, None),
        };
        if name.is_empty() {
            return Err(Unresolved::NoVariable(reference.to_owned()));
        }
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(Unresolved::BadVariableName {
                reference: reference.to_owned(),
                name: name.to_owned(),
            });
        }
        env.var(name)
            .or_else(|| default.map(str::to_owned))
            .ok_or_else(|| Unresolved::VariableNotSet(name.to_owned()))
    } else if let Some(path) = reference.strip_prefix("file:") {
        if path.is_empty() {
            return Err(Unresolved::NoFile);
        }
        let full = base.join(path);
        env.read(&full)
            .map(|mut text| {
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                text
            })
            .map_err(|e| Unresolved::FileUnreadable {
                path: path.to_owned(),
                reason: crate::config::load::io_reason(&e),
            })
    } else {
        Err(Unresolved::UnknownKind(reference.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fake(HashMap<&'static str, &'static str>);

    impl Environment for Fake {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|s| s.to_string())
        }
        fn read(&self, path: &Path) -> std::io::Result<String> {
            match path.to_str() {
                Some("/s/token") => Ok("t0k3n\n".into()),
                _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
            }
        }
    }

    #[test]
    fn resolves_env_files_and_escapes() {
        let env = Fake(HashMap::from([("A", "alpha")]));
        let base = Path::new("/s");
        assert_eq!(
            resolve("x ${env:A} y", &env, base).as_deref(),
            Ok("x alpha y")
        );
        assert_eq!(
            resolve("Bearer ${file:token}", &env, base).as_deref(),
            Ok("Bearer t0k3n")
        );
        assert_eq!(
            resolve("$${env:A} costs $5", &env, base).as_deref(),
            Ok("${env:A} costs $5")
        );
        assert_eq!(
            resolve("${env:B}", &env, base),
            Err(Unresolved::VariableNotSet("B".into()))
        );
        assert_eq!(
            resolve("${env:B:-http://b:1}/x", &env, base).as_deref(),
            Ok("http://b:1/x")
        );
        assert_eq!(
            resolve("${env:A:-other}", &env, base).as_deref(),
            Ok("alpha")
        );
        assert_eq!(
            resolve("${file:nope}", &env, base),
            Err(Unresolved::FileUnreadable {
                path: "nope".into(),
                reason: "not found".into()
            })
        );
        assert_eq!(
            resolve("${vault:x}", &env, base),
            Err(Unresolved::UnknownKind("vault:x".into()))
        );
        assert_eq!(
            resolve("${env:B}", &env, base).map_err(|e| e.to_string()),
            Err("environment variable `B` is not set".into())
        );
        assert_eq!(
            resolve("a ${env:A", &env, base).map_err(|e| e.to_string()),
            Err("unclosed `${` (write `$${` for a literal `${`)".into())
        );
        assert_eq!(
            resolve("${env:}", &env, base).map_err(|e| e.to_string()),
            Err("`${env:}` names no environment variable".into())
        );
        assert!(has_reference("a ${env:A}") && !has_reference("a $${env:A}"));
    }
}
