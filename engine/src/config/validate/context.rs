//! The checking context of one document: turns YAML paths into locations and collects
//! diagnostics, and knows which values came from secrets (never shown) or are unresolved.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::config::diagnostic::{Diagnostic, Location};
use crate::config::yaml::{Node, display_path};

/// One document after the schema check and secret resolution.
pub struct Doc {
    pub file: PathBuf,
    pub node: Node,
    pub json: Value,
    /// JSON pointers of strings that held references (values never shown).
    pub secret: HashSet<String>,
    /// JSON pointers of strings whose references could not be resolved.
    pub unresolved: HashSet<String>,
}

/// Checks one document, pushing diagnostics.
pub struct Ctx<'a> {
    pub doc: &'a Doc,
    pub diags: &'a mut Vec<Diagnostic>,
}

/// Owned path segments from string slices.
pub fn segs(path: &[&str]) -> Vec<String> {
    path.iter().map(|s| (*s).to_owned()).collect()
}

impl<'a> Ctx<'a> {
    pub fn new(doc: &'a Doc, diags: &'a mut Vec<Diagnostic>) -> Self {
        Ctx { doc, diags }
    }

    /// The location of the node at `path` (or of its nearest written ancestor).
    pub fn at(&self, path: &[&str]) -> Location {
        self.at_owned(&segs(path))
    }

    pub fn at_owned(&self, path: &[String]) -> Location {
        let (line, column) = self.doc.node.locate(path, false);
        Location {
            line,
            column,
            path: display_path(path),
        }
    }

    pub fn error(&mut self, path: &[&str], message: impl Into<String>, hint: Option<String>) {
        let at = self.at(path);
        self.diags
            .push(Diagnostic::error(&self.doc.file, &at, message).with_hint(hint));
    }

    /// An error about the key (not the value) at `path`.
    pub fn error_key(&mut self, path: &[&str], message: impl Into<String>, hint: Option<String>) {
        let segments = segs(path);
        let (line, column) = self.doc.node.locate(&segments, true);
        let at = Location {
            line,
            column,
            path: display_path(&segments),
        };
        self.diags
            .push(Diagnostic::error(&self.doc.file, &at, message).with_hint(hint));
    }

    pub fn error_owned(
        &mut self,
        path: &[String],
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let at = self.at_owned(path);
        self.diags
            .push(Diagnostic::error(&self.doc.file, &at, message).with_hint(hint));
    }

    pub fn warning(&mut self, path: &[&str], message: impl Into<String>, hint: Option<String>) {
        let at = self.at(path);
        self.diags
            .push(Diagnostic::warning(&self.doc.file, &at, message).with_hint(hint));
    }

    fn pointer(path: &[&str]) -> String {
        format!("/{}", path.join("/"))
    }

    /// True when the value at `path` came from an unresolved reference (not checkable).
    pub fn unresolved(&self, path: &[&str]) -> bool {
        self.doc.unresolved.contains(&Self::pointer(path))
    }

    /// True when the value at `path` came from a `${env:}`/`${file:}` reference.
    pub fn is_referenced(&self, path: &[&str]) -> bool {
        self.doc.secret.contains(&Self::pointer(path))
    }

    /// How to show the value at `path` in a message: quoted, or hidden when it is a secret.
    pub fn show(&self, path: &[&str], value: &str) -> String {
        if self.doc.secret.contains(&Self::pointer(path)) {
            "the value (from a secret reference)".into()
        } else {
            format!("`{value}`")
        }
    }

    /// A duration; the schema already checked its form.
    pub fn duration(&mut self, path: &[&str], value: Option<&str>, default: Duration) -> Duration {
        let Some(text) = value else { return default };
        match parse_duration(text) {
            Some(d) if !d.is_zero() => d,
            Some(_) => {
                self.error(path, "a duration of zero is not allowed here", None);
                default
            }
            None => {
                self.error(
                    path,
                    format!(
                        "{} is not a duration of at most 100 years (36500d)",
                        self.show(path, text)
                    ),
                    None,
                );
                default
            }
        }
    }

    /// A size in bytes; the schema already checked its form.
    pub fn size(&mut self, path: &[&str], value: Option<&str>, default: u64) -> u64 {
        let Some(text) = value else { return default };
        match parse_size(text) {
            Some(0) | None => {
                self.error(
                    path,
                    format!("{} is not a size above zero", self.show(path, text)),
                    None,
                );
                default
            }
            Some(n) => n,
        }
    }
}

/// Longest duration a definition or flag may give: 100 years. Longer ones (up to `u64`
/// seconds parse) would overflow the clock's instants when added to now, a panic at the
/// first request, run or open of a breaker.
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

/// Parses `500ms`, `30s`, `10m`, `1h30m`, `1d`; `None` past `MAX_DURATION`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = [("ms", 2), ("s", 1), ("m", 1), ("h", 1), ("d", 1)]
            .into_iter()
            .find(|(u, _)| rest.starts_with(u))?;
        rest = &rest[len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            _ => Duration::from_secs(n.checked_mul(86400)?),
        };
        total = total.checked_add(part)?;
    }
    (total <= MAX_DURATION).then_some(total)
}

/// Parses `1048576`, `512KiB`, `1MiB`, `1MB`.
pub fn parse_size(s: &str) -> Option<u64> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..digits].parse().ok()?;
    let unit = match &s[digits..] {
        "" | "B" => 1,
        "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        "GiB" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("10 m"), None);
        assert_eq!(parse_duration("99999999999999999999d"), None);
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("1XB"), None);
    }
}
