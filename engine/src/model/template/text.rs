//! Text functions of templates: base64, split, replace, regular expressions (compiled once,
//! bounded), substring and padding by characters, title case.

use std::collections::HashMap;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use regex::{Regex, RegexBuilder};

/// The widest `padLeft`/`padRight` result, in characters: a pad width is an allocation, and a
/// FHIR string element needs far less.
pub const MAX_PAD: usize = 10_000;

/// The most memory a compiled regular expression may take (its program and its lazy DFA's
/// cache each): a pattern that needs more (`(a{1000}){1000}`) is refused when it is compiled.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The longest pattern accepted, in bytes.
pub const MAX_PATTERN: usize = 1_000;

/// The longest text `replace` makes, in bytes: a replacement taken from the record could
/// otherwise multiply an input many times over.
pub const MAX_REPLACED: usize = 16 << 20;

/// The most parts `split` makes: each is a JSON value, which costs far more than its text.
pub const MAX_PARTS: usize = 100_000;

/// Regular expressions by their text, compiled when definitions are checked.
pub type Patterns = HashMap<String, Regex>;

/// Why a text function failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("`{input}` is not {alphabet} base64 ({reason})")]
    NotBase64 {
        input: String,
        alphabet: &'static str,
        reason: String,
    },
    #[error("the base64 `{0}` decodes to bytes that are not UTF-8 text")]
    NotUtf8(String),
    #[error("the regular expression `{pattern}` is refused: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error(
        "the regular expression `{0}` was not compiled when definitions were checked; write it as a literal string"
    )]
    NotCompiled(String),
    #[error("`{pattern}` has no group `{group}`")]
    NoGroup { pattern: String, group: String },
    #[error("{what} must be a whole number from 0 to {max}, found `{found}`")]
    Count {
        what: &'static str,
        max: usize,
        found: String,
    },
    #[error("the padding must be one character, found `{0}`")]
    PadChar(String),
    #[error("the {0} must not be empty")]
    Empty(&'static str),
    #[error("the replaced text would be longer than {0} bytes")]
    TooLong(usize),
    #[error("the text splits into more than {0} parts")]
    TooManyParts(usize),
}

/// Every `from` in `s` replaced by `to` (literal text); a result over [`MAX_REPLACED`] bytes
/// is an error, found before it is built.
pub fn replace(s: &str, from: &str, to: &str) -> Result<String, TextError> {
    if from.is_empty() {
        return Err(TextError::Empty("text that `replace` looks for"));
    }
    if to.len() > from.len() {
        let n = s.matches(from).count();
        let grown = n
            .saturating_mul(to.len() - from.len())
            .saturating_add(s.len());
        if grown > MAX_REPLACED {
            return Err(TextError::TooLong(MAX_REPLACED));
        }
    }
    Ok(s.replace(from, to))
}

/// At most 60 characters of an input, for messages.
pub fn shown(s: &str) -> String {
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// Standard (`+/`) or URL-safe (`-_`) base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alphabet {
    Standard,
    UrlSafe,
}

fn engine(a: Alphabet, pad: bool) -> GeneralPurpose {
    let config = GeneralPurposeConfig::new()
        .with_encode_padding(pad)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent);
    match a {
        Alphabet::Standard => GeneralPurpose::new(&alphabet::STANDARD, config),
        Alphabet::UrlSafe => GeneralPurpose::new(&alphabet::URL_SAFE, config),
    }
}

/// The UTF-8 bytes of `s` in base64: standard with `=` padding, URL-safe without (as JWTs and
/// URLs write it).
pub fn base64_encode(s: &str, a: Alphabet) -> String {
    engine(a, a == Alphabet::Standard).encode(s.as_bytes())
}

/// The text that `s` encodes in base64; padding is optional and white space (line breaks of
/// MIME-wrapped data) is ignored. Bytes that are not UTF-8 are an error: a FHIR string is
/// text (binary content stays base64 in `Attachment.data`).
pub fn base64_decode(s: &str, a: Alphabet) -> Result<String, TextError> {
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = engine(a, false)
        .decode(compact.as_bytes())
        .map_err(|e| TextError::NotBase64 {
            input: shown(s),
            alphabet: match a {
                Alphabet::Standard => "standard",
                Alphabet::UrlSafe => "URL-safe",
            },
            reason: e.to_string(),
        })?;
    String::from_utf8(bytes).map_err(|_| TextError::NotUtf8(shown(s)))
}

/// A regular expression compiled with explicit limits (size of the program and of the DFA
/// cache, nesting depth, pattern length). The `regex` crate matches in time linear in the
/// input whatever the pattern, so no pattern can backtrack catastrophically.
pub fn compile_pattern(pattern: &str) -> Result<Regex, TextError> {
    let refuse = |reason: String| TextError::BadPattern {
        pattern: shown(pattern),
        reason,
    };
    if pattern.len() > MAX_PATTERN {
        return Err(refuse(format!("longer than {MAX_PATTERN} bytes")));
    }
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .nest_limit(50)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => {
                refuse(format!("it compiles to more than {limit} bytes"))
            }
            regex::Error::Syntax(s) => refuse(
                s.lines()
                    .rfind(|l| l.starts_with("error:"))
                    .unwrap_or("invalid syntax")
                    .trim_start_matches("error: ")
                    .to_owned(),
            ),
            other => refuse(other.to_string()),
        })
}

/// The compiled pattern `pattern` from `patterns`.
pub fn pattern<'p>(patterns: &'p Patterns, pattern: &str) -> Result<&'p Regex, TextError> {
    patterns
        .get(pattern)
        .ok_or_else(|| TextError::NotCompiled(shown(pattern)))
}

/// Which group `capture` gives: by number or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Group {
    Index(usize),
    Name(String),
}

impl Group {
    /// Checks that `re` has this group.
    pub fn check(&self, re: &Regex) -> Result<(), TextError> {
        let has = match self {
            Group::Index(i) => *i < re.captures_len(),
            Group::Name(n) => re.capture_names().flatten().any(|c| c == n),
        };
        has.then_some(()).ok_or_else(|| TextError::NoGroup {
            pattern: shown(re.as_str()),
            group: match self {
                Group::Index(i) => i.to_string(),
                Group::Name(n) => n.clone(),
            },
        })
    }
}

/// The text of `group` in the first match of `re` in `s` (`None` when it does not match or the
/// group took no part); without a group, the first group when the pattern has one, else the
/// whole match.
pub fn capture(re: &Regex, s: &str, group: Option<&Group>) -> Result<Option<String>, TextError> {
    let group = match group {
        Some(g) => {
            g.check(re)?;
            g.clone()
        }
        None => Group::Index(usize::from(re.captures_len() > 1)),
    };
    let Some(caps) = re.captures(s) else {
        return Ok(None);
    };
    let m = match &group {
        Group::Index(i) => caps.get(*i),
        Group::Name(n) => caps.name(n),
    };
    Ok(m.map(|m| m.as_str().to_owned()))
}

/// The characters of `s` from `start` (0-based), `len` of them or to the end; counted in
/// characters, never splitting one.
pub fn substring(s: &str, start: usize, len: Option<usize>) -> String {
    let rest = s.chars().skip(start);
    match len {
        Some(n) => rest.take(n).collect(),
        None => rest.collect(),
    }
}

/// `s` padded with `fill` to `width` characters, on the left or the right; longer text is
/// left as it is.
pub fn pad(s: &str, width: usize, fill: char, left: bool) -> Result<String, TextError> {
    if width > MAX_PAD {
        return Err(TextError::Count {
            what: "the pad width",
            max: MAX_PAD,
            found: width.to_string(),
        });
    }
    let have = s.chars().count();
    let fill: String = std::iter::repeat_n(fill, width.saturating_sub(have)).collect();
    Ok(if left {
        format!("{fill}{s}")
    } else {
        format!("{s}{fill}")
    })
}

/// Each word's first letter in upper case and the rest in lower case (`mARIA von TRAPP` ->
/// `Maria Von Trapp`); words are separated by anything that is not a letter, a digit or a
/// combining mark (text in decomposed form writes `é` as `e` and U+0301, inside its word).
pub fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if combining(c) {
            out.push(c);
        } else if c.is_alphanumeric() {
            if start {
                out.extend(c.to_uppercase());
            } else {
                out.extend(c.to_lowercase());
            }
            start = false;
        } else {
            out.push(c);
            start = true;
        }
    }
    out
}

/// Whether `c` is a combining mark of the blocks that accent letters (diacritical marks and
/// their supplements and extensions, those for symbols, and the half marks).
fn combining(c: char) -> bool {
    matches!(
        c,
        '\u{0300}'..='\u{036F}'
            | '\u{1AB0}'..='\u{1AFF}'
            | '\u{1DC0}'..='\u{1DFF}'
            | '\u{20D0}'..='\u{20FF}'
            | '\u{FE20}'..='\u{FE2F}'
    )
}

/// The first character in upper case, the rest as it is.
pub fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_both_alphabets_round_trip_and_refuse_garbage() {
        let s = "Grüße?>>";
        let std = base64_encode(s, Alphabet::Standard);
        let url = base64_encode(s, Alphabet::UrlSafe);
        assert_eq!(std, "R3LDvMOfZT8+Pg==");
        assert_eq!(url, "R3LDvMOfZT8-Pg");
        assert_eq!(base64_decode(&std, Alphabet::Standard).expect("a value"), s);
        assert_eq!(base64_decode(&url, Alphabet::UrlSafe).expect("a value"), s);
        // Line breaks of MIME-wrapped data and missing padding are fine.
        assert_eq!(
            base64_decode("R3LDvMOf\r\nZT8+Pg", Alphabet::Standard).expect("a value"),
            s
        );
        let bad = base64_decode("R3LD*MOf", Alphabet::Standard).expect_err("an error");
        assert!(bad.to_string().contains("is not standard base64"), "{bad}");
        // The URL-safe alphabet refuses the standard one's `+`.
        assert!(base64_decode(&std, Alphabet::UrlSafe).is_err());
        // Bytes that are not text.
        let e = base64_decode("//79", Alphabet::Standard).expect_err("an error");
        assert!(matches!(e, TextError::NotUtf8(_)), "{e}");
        // A huge bad input is not echoed whole.
        let huge = "*".repeat(100_000);
        assert!(
            base64_decode(&huge, Alphabet::Standard)
                .expect_err("an error")
                .to_string()
                .len()
                < 300
        );
    }

    #[test]
    fn hostile_patterns_are_refused_or_linear() {
        // Catastrophic for a backtracking engine; linear here.
        let re = compile_pattern("^(a+)+$").expect("a value");
        let input = format!("{}b", "a".repeat(100_000));
        let t = std::time::Instant::now();
        assert!(!re.is_match(&input));
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
        // Too big once compiled.
        let e = compile_pattern("(a{1000}){1000}").expect_err("an error");
        assert!(e.to_string().contains("compiles to more than"), "{e}");
        // Invalid syntax names the problem.
        let e = compile_pattern("(unclosed").expect_err("an error");
        assert!(e.to_string().contains("unclosed group"), "{e}");
        // Too long.
        assert!(compile_pattern(&"a".repeat(MAX_PATTERN + 1)).is_err());
        // Too deep.
        assert!(compile_pattern(&format!("{}a{}", "(".repeat(60), ")".repeat(60))).is_err());
    }

    #[test]
    fn capture_by_default_index_and_name() {
        let re = compile_pattern(r"(?<mg>\d+(?:\.\d+)?)\s*mg").expect("a value");
        assert_eq!(
            capture(&re, "Ibuprofen 400 mg", None)
                .expect("a value")
                .as_deref(),
            Some("400")
        );
        let g = Group::Name("mg".into());
        assert_eq!(
            capture(&re, "x 2.5mg", Some(&g))
                .expect("a value")
                .as_deref(),
            Some("2.5")
        );
        assert_eq!(capture(&re, "none", None).expect("a value"), None);
        assert!(capture(&re, "1 mg", Some(&Group::Index(3))).is_err());
        let whole = compile_pattern(r"\d+").expect("a value");
        assert_eq!(
            capture(&whole, "ab 12", None).expect("a value").as_deref(),
            Some("12")
        );
    }

    #[test]
    fn substring_and_pad_count_characters() {
        assert_eq!(substring("Zoë Müller", 2, Some(3)), "ë M");
        assert_eq!(substring("abc", 10, None), "");
        assert_eq!(pad("7", 3, '0', true).expect("a value"), "007");
        assert_eq!(pad("ü", 3, '·', false).expect("a value"), "ü··");
        assert_eq!(pad("long", 2, ' ', true).expect("a value"), "long");
        let e = pad("x", MAX_PAD + 1, ' ', true).expect_err("an error");
        assert!(e.to_string().contains("pad width"), "{e}");
    }

    #[test]
    fn replace_is_literal_and_bounded() {
        assert_eq!(replace("a.b.c", ".", "-").expect("replaced"), "a-b-c");
        assert!(replace("abc", "", "x").is_err());
        // 1 MiB of `a`, each replaced by 1 KiB: refused before 1 GiB is built.
        let e = replace(&"a".repeat(1 << 20), "a", &"b".repeat(1024)).expect_err("too long");
        assert_eq!(e, TextError::TooLong(MAX_REPLACED));
    }

    #[test]
    fn title_and_capitalize() {
        assert_eq!(title("mARIA von-TRAPP"), "Maria Von-Trapp");
        assert_eq!(capitalize("élan vital"), "Élan vital");
        assert_eq!(capitalize(""), "");
    }
}
