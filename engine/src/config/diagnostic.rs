//! Diagnostics: located problems in definitions, collected all at once and rendered for people,
//! for machines (JSON) and for GitHub workflow annotations.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A place in a definition file: 1-based line and column, and the YAML path of the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
    pub path: String,
}

/// One problem, with everything needed to find and fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub path: String,
    pub severity: Severity,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn error(file: &Path, at: &Location, message: impl Into<String>) -> Self {
        Self::new(file, at, Severity::Error, message)
    }

    pub fn warning(file: &Path, at: &Location, message: impl Into<String>) -> Self {
        Self::new(file, at, Severity::Warning, message)
    }

    fn new(file: &Path, at: &Location, severity: Severity, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            line: at.line,
            column: at.column,
            path: at.path.clone(),
            severity,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
}

/// The output formats of `engine validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
    Github,
}

/// Sorts diagnostics by file, position and message so that output is stable.
pub fn sort(diags: &mut [Diagnostic]) {
    diags.sort_by(|a, b| {
        (&a.file, a.line, a.column, a.severity, &a.message)
            .cmp(&(&b.file, b.line, b.column, b.severity, &b.message))
    });
}

/// Renders diagnostics; `source` gives the text of a file for the snippet under a human message.
pub fn render(
    diags: &[Diagnostic],
    format: Format,
    source: &dyn Fn(&Path) -> Option<String>,
) -> String {
    match format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(diags).unwrap_or_else(|_| "[]".into());
            s.push('\n');
            s
        }
        Format::Github => diags.iter().map(github).collect(),
        Format::Human => {
            let mut out = String::new();
            // Each file read and split into lines once, not once per diagnostic: a
            // definition with thousands of findings renders in linear time.
            let mut file: Option<(&Path, Vec<String>)> = None;
            for d in diags {
                if file.as_ref().map(|(p, _)| *p) != Some(d.file.as_path()) {
                    let lines = source(&d.file)
                        .map(|s| lines_of(&s).map(str::to_owned).collect())
                        .unwrap_or_default();
                    file = Some((&d.file, lines));
                }
                let line = file
                    .as_ref()
                    .and_then(|(_, lines)| lines.get(d.line.wrapping_sub(1)));
                human(&mut out, d, line.map(String::as_str));
            }
            if !diags.is_empty() {
                out.push_str(&summary(diags));
            }
            out
        }
    }
}

/// One line that counts errors and warnings.
pub fn summary(diags: &[Diagnostic]) -> String {
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diags.len() - errors;
    let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
    format!(
        "{}, {}\n",
        plural(errors, "error"),
        plural(warnings, "warning")
    )
}

/// One diagnostic; `line` is the text of its line, for the snippet.
fn human(out: &mut String, d: &Diagnostic, line: Option<&str>) {
    let level = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let _ = writeln!(out, "{level}: {}", d.message);
    let path = if d.path.is_empty() {
        String::new()
    } else {
        format!(" at {}", d.path)
    };
    let _ = writeln!(
        out,
        "  --> {}:{}:{}{path}",
        d.file.display(),
        d.line,
        d.column
    );
    if let Some(text) = line {
        let number = d.line.to_string();
        let pad = " ".repeat(number.len());
        let (shown, caret) = snippet(text, d.column);
        let _ = writeln!(
            out,
            "{pad} |\n{number} | {shown}\n{pad} | {}^",
            " ".repeat(caret)
        );
    }
    if let Some(hint) = &d.hint {
        let _ = writeln!(out, "  = hint: {hint}");
    }
    out.push('\n');
}

/// The lines of a text, broken as YAML breaks them: at `\r\n`, `\n` or a lone `\r` (which
/// `str::lines` does not break at); none past the last line break.
fn lines_of(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text).filter(|t| !t.is_empty());
    std::iter::from_fn(move || {
        let now = rest?;
        match now.find(['\n', '\r']) {
            Some(end) => {
                let skip = if now[end..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&now[end + skip..]).filter(|r| !r.is_empty());
                Some(&now[..end])
            }
            None => {
                rest = None;
                Some(now)
            }
        }
    })
}

/// Most characters of a source line shown under a message.
const SNIPPET: usize = 100;

/// The part of a line shown (around the column, control characters replaced) and the
/// caret's offset in it.
fn snippet(line: &str, column: usize) -> (String, usize) {
    let chars: Vec<char> = line.chars().collect();
    let at = column.saturating_sub(1).min(chars.len());
    let start = at
        .saturating_sub(SNIPPET / 2)
        .min(chars.len().saturating_sub(SNIPPET));
    let start = if at < SNIPPET { 0 } else { start };
    let end = (start + SNIPPET).min(chars.len());
    let mut shown = String::new();
    if start > 0 {
        shown.push_str("...");
    }
    shown.extend(chars[start..end].iter().map(|c| {
        if c.is_control() && *c != '\t' {
            '\u{fffd}'
        } else {
            *c
        }
    }));
    if end < chars.len() {
        shown.push_str("...");
    }
    (shown, at - start + if start > 0 { 3 } else { 0 })
}

fn github(d: &Diagnostic) -> String {
    let level = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let mut message = d.message.clone();
    if !d.path.is_empty() {
        message = format!("{}: {message}", d.path);
    }
    if let Some(hint) = &d.hint {
        message.push_str(&format!(" (hint: {hint})"));
    }
    format!(
        "::{level} file={},line={},col={},title=engine validate::{}\n",
        escape_property(&d.file.display().to_string()),
        d.line,
        d.column,
        escape_data(&message)
    )
}

fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_are_windowed_and_printable() {
        assert_eq!(snippet("a: 1", 4), ("a: 1".to_owned(), 3));
        assert_eq!(
            snippet("\u{7f}ELF\u{0}x", 5),
            ("\u{fffd}ELF\u{fffd}x".to_owned(), 4)
        );
        let long = "x".repeat(300);
        let (shown, caret) = snippet(&long, 250);
        assert_eq!(shown.chars().count(), 106);
        assert_eq!(shown.chars().nth(caret), Some('x'));
        assert_eq!(caret, 53);
    }

    #[test]
    fn github_annotations_escape_newlines_and_separators() {
        let d = Diagnostic::error(
            Path::new("a,b:c.yaml"),
            &Location {
                line: 3,
                column: 4,
                path: "spec".into(),
            },
            "two\nlines",
        );
        assert_eq!(
            github(&d),
            "::error file=a%2Cb%3Ac.yaml,line=3,col=4,title=engine validate::spec: two%0Alines\n"
        );
    }
}
