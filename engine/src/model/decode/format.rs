//! The record formats and their settings, the bounds of a decoding and its errors: the words
//! the decoders and their callers share.

use std::collections::BTreeMap;

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
    #[error("CSV {} (line {line}): {message}", csv_place(*.record))]
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

/// A CSV error's place: the header row is record 0, the data rows count from 1.
fn csv_place(record: usize) -> String {
    if record == 0 {
        "header".to_owned()
    } else {
        format!("record {record}")
    }
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
