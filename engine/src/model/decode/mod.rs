//! Record formats: decoders that turn the bytes of a source answer, a push body or a file into
//! the JSON value the records query and the mapping already read (`serde_json::Value`), so
//! that a mapping is the same whatever the format. Pure functions over bytes already bounded
//! by the caller's size cap, each bounded again by a count of values and a nesting depth;
//! every failure is a `DecodeError` with its line and column or record number.

mod csv;
mod fhir_xml;
mod ndjson;
mod xml;

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::Value;

use crate::model::vocabulary::FhirVersion;

/// How bytes are read as records.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Format {
    /// One JSON document (the default).
    #[default]
    Json,
    /// One JSON value per line: the document is the array of them.
    Ndjson,
    /// Comma (or other) separated values: the document is an array of objects, one per row.
    Csv(CsvFormat),
    /// XML: the document is the root element (or the array of the elements `records` selects)
    /// in the convention of `docs/formats.md`.
    Xml(XmlFormat),
    /// FHIR XML, read as the FHIR JSON of the same resource.
    FhirXml(FhirVersion),
}

/// The settings of a CSV format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvFormat {
    /// The first row names the columns (and is not a record).
    pub header: bool,
    /// Column names; when given they name the fields (a header row, if any, is skipped).
    pub columns: Vec<String>,
    pub delimiter: u8,
    pub quote: u8,
    pub encoding: TextEncoding,
}

impl Default for CsvFormat {
    fn default() -> Self {
        CsvFormat {
            header: true,
            columns: Vec::new(),
            delimiter: b',',
            quote: b'"',
            encoding: TextEncoding::default(),
        }
    }
}

/// The settings of an XML format.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct XmlFormat {
    /// The path of element names from the root to the record elements; empty: the root is
    /// the document. A step is `local` (any namespace) or `prefix:local`.
    pub records: Vec<Step>,
    /// Prefixes of the definition and their namespace URIs.
    pub namespaces: BTreeMap<String, String>,
    /// Element local names that are always arrays, even when they occur once.
    pub arrays: Vec<String>,
    pub encoding: TextEncoding,
}

/// One step of an XML records path: a local name, in a namespace when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub namespace: Option<String>,
    pub local: String,
}

/// The character encoding of text formats (a WHATWG label: `utf-8`, `latin1`,
/// `windows-1252`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextEncoding(pub &'static encoding_rs::Encoding);

impl Default for TextEncoding {
    fn default() -> Self {
        TextEncoding(encoding_rs::UTF_8)
    }
}

impl TextEncoding {
    /// The encoding a label names, if any.
    pub fn for_label(label: &str) -> Option<TextEncoding> {
        encoding_rs::Encoding::for_label(label.trim().as_bytes()).map(TextEncoding)
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }
}

/// Bounds of one decoding.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most JSON values the decoded document may hold (objects, arrays, keys, strings, ...).
    pub max_values: usize,
}

/// Deepest element nesting read from XML.
pub const MAX_DEPTH: usize = 128;

/// Why bytes could not be read in their declared format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not JSON at line {line}, column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("NDJSON line {line} is not JSON (column {column}): {message}")]
    Ndjson {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("CSV record {record} (line {line}): {message}")]
    Csv {
        record: usize,
        line: usize,
        message: String,
    },
    #[error("XML at line {line}, column {column}: {message}")]
    Xml {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("not {encoding} text at line {line}, column {column} (byte {offset})")]
    Encoding {
        encoding: &'static str,
        offset: usize,
        line: usize,
        column: usize,
    },
    #[error("more than {max} values (the `maxValues` cap)")]
    TooManyValues { max: usize },
}

impl Format {
    /// The media types an answer or body of this format may be declared with (`Accept` of
    /// source requests, and the push bodies accepted); the first is the one asked for.
    pub fn media_types(&self) -> &'static [&'static str] {
        match self {
            Format::Json => &["application/json", "application/fhir+json"],
            Format::Ndjson => &[
                "application/x-ndjson",
                "application/fhir+ndjson",
                "application/ndjson",
                "application/jsonl",
            ],
            Format::Csv(_) => &["text/csv", "application/csv", "text/plain"],
            Format::Xml(_) => &["application/xml", "text/xml"],
            Format::FhirXml(_) => &["application/fhir+xml", "application/xml", "text/xml"],
        }
    }

    /// The name a definition writes.
    pub fn name(&self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Ndjson => "ndjson",
            Format::Csv(_) => "csv",
            Format::Xml(_) => "xml",
            Format::FhirXml(_) => "fhirXml",
        }
    }

    /// Whether a declared `Content-Type` (its media type, parameters ignored) may carry
    /// this format. A body without one is read in the declared format; `+json`, `+xml`
    /// suffixes count as their base.
    pub fn accepts_media_type(&self, content_type: &str) -> bool {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if self.media_types().contains(&media.as_str()) {
            return true;
        }
        match self {
            Format::Json => media.ends_with("+json"),
            Format::Xml(_) | Format::FhirXml(_) => media.ends_with("+xml"),
            _ => false,
        }
    }
}

/// Decodes `bytes` as `format`: the JSON document the records query runs over.
pub fn decode(format: &Format, bytes: &[u8], limits: Limits) -> Result<Value, DecodeError> {
    match format {
        Format::Json => serde_json::from_slice(bytes).map_err(|e| DecodeError::Json {
            line: e.line(),
            column: e.column(),
            message: json_reason(&e),
        }),
        Format::Ndjson => ndjson::decode(bytes, limits),
        Format::Csv(f) => csv::decode(f, bytes, limits),
        Format::Xml(f) => xml::decode(f, bytes, limits),
        Format::FhirXml(v) => fhir_xml::decode(*v, bytes, limits),
    }
}

/// A JSON parse error's reason without its position (given apart).
fn json_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// The text of `bytes` in `encoding`, a byte-order mark dropped; malformed bytes are an
/// error naming their place (never replaced silently).
pub(crate) fn text(bytes: &[u8], encoding: TextEncoding) -> Result<Cow<'_, str>, DecodeError> {
    let enc = encoding.0;
    if enc == encoding_rs::UTF_8 {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        return match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Cow::Borrowed(s)),
            Err(e) => Err(bad_encoding(bytes, e.valid_up_to(), enc)),
        };
    }
    match enc.decode_without_bom_handling_and_without_replacement(bytes) {
        Some(s) => Ok(s),
        None => {
            // Find the first malformed byte for the message.
            let mut decoder = enc.new_decoder_without_bom_handling();
            let mut out = String::with_capacity(bytes.len() * 2 + 16);
            let (result, read) =
                decoder.decode_to_string_without_replacement(bytes, &mut out, true);
            let offset = match result {
                encoding_rs::DecoderResult::Malformed(len, _) => {
                    read.saturating_sub(usize::from(len))
                }
                _ => read,
            };
            Err(bad_encoding(bytes, offset, enc))
        }
    }
}

fn bad_encoding(bytes: &[u8], offset: usize, enc: &'static encoding_rs::Encoding) -> DecodeError {
    let (line, column) = position(bytes, offset);
    DecodeError::Encoding {
        encoding: enc.name(),
        offset,
        line,
        column,
    }
}

/// The 1-based line and column (in bytes) of `offset` in `bytes`.
pub(crate) fn position(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = match before.iter().rposition(|b| *b == b'\n') {
        Some(nl) => before.len() - nl,
        None => before.len() + 1,
    };
    (line, column)
}

/// A count of values against `Limits::max_values`.
pub(crate) struct Budget {
    left: usize,
    max: usize,
}

impl Budget {
    pub(crate) fn new(limits: Limits) -> Budget {
        Budget {
            left: limits.max_values,
            max: limits.max_values,
        }
    }

    /// Takes `n` values, or fails once the cap is passed.
    pub(crate) fn take(&mut self, n: usize) -> Result<(), DecodeError> {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(DecodeError::TooManyValues { max: self.max }),
        }
    }
}

/// The number of JSON values in `v` (each key counts as one, as `json_count` counts them).
pub(crate) fn count(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(count).sum::<usize>(),
        Value::Object(o) => 1 + o.iter().map(|(_, v)| 1 + count(v)).sum::<usize>(),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_and_windows_1252_are_read_and_bad_utf8_is_placed() {
        let latin1 = TextEncoding::for_label("latin1").expect("a label");
        assert_eq!(text(b"M\xFCller", latin1).expect("text"), "Müller");
        let cp1252 = TextEncoding::for_label("windows-1252").expect("a label");
        assert_eq!(text(b"\x80 5", cp1252).expect("text"), "€ 5");
        let err = text(b"ok\nM\xFCller", TextEncoding::default()).expect_err("not UTF-8");
        assert_eq!(
            err,
            DecodeError::Encoding {
                encoding: "UTF-8",
                offset: 4,
                line: 2,
                column: 2
            }
        );
    }

    #[test]
    fn media_types_match_their_format() {
        assert!(Format::Ndjson.accepts_media_type("application/fhir+ndjson; charset=utf-8"));
        assert!(Format::Json.accepts_media_type("application/fhir+json"));
        assert!(!Format::Json.accepts_media_type("text/csv"));
        assert!(Format::Xml(XmlFormat::default()).accepts_media_type("application/hl7-v3+xml"));
        assert!(!Format::Csv(CsvFormat::default()).accepts_media_type("application/json"));
    }
}
