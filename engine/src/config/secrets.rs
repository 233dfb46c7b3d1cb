//! `${env:NAME}` and `${file:PATH}` references, resolved inside string values after parsing
//! (never by text substitution), through a small seam so that tests choose the environment.
//! `${env:NAME:-default}` gives a default; `$${` writes a literal `${`.

use std::path::Path;

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

    fn read(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// True when a string contains a reference (so its resolved value must never be shown).
pub fn has_reference(s: &str) -> bool {
    s.replace("$${", "").contains("${")
}

/// Why a reference could not be resolved; the message names the reference, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// Well formed, but the variable is not set or the file cannot be read here.
    Unavailable(String),
    /// Not a valid reference: a definition error wherever it is checked.
    Malformed(String),
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
            let end = after.find('}').ok_or_else(|| {
                Unresolved::Malformed("unclosed `${` (write `$${` for a literal `${`)".into())
            })?;
            let reference = &after[..end];
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
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(Unresolved::Malformed(format!(
                "`${{{reference}}}`: `{name}` is not an environment variable name"
            )));
        }
        env.var(name)
            .or_else(|| default.map(str::to_owned))
            .ok_or_else(|| {
                Unresolved::Unavailable(format!("environment variable `{name}` is not set"))
            })
    } else if let Some(path) = reference.strip_prefix("file:") {
        if path.is_empty() {
            return Err(Unresolved::Malformed("`${file:}` names no file".into()));
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
            .map_err(|e| {
                Unresolved::Unavailable(format!(
                    "secret file `{path}` cannot be read: {}",
                    crate::config::load::io_reason(&e)
                ))
            })
    } else {
        Err(Unresolved::Malformed(format!(
            "unknown reference `${{{reference}}}`: use `${{env:NAME}}` or `${{file:PATH}}`"
        )))
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
            Err(Unresolved::Unavailable(
                "environment variable `B` is not set".into()
            ))
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
            Err(Unresolved::Unavailable(
                "secret file `nope` cannot be read: not found".into()
            ))
        );
        assert!(
            matches!(resolve("${vault:x}", &env, base), Err(Unresolved::Malformed(m)) if m.starts_with("unknown reference"))
        );
        assert!(has_reference("a ${env:A}") && !has_reference("a $${env:A}"));
    }
}
