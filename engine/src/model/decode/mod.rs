//! Record formats: decoders that turn the bytes of a source answer, a push body or a file into
//! the JSON value the records query and the mapping already read (`serde_json::Value`), so
//! that a mapping is the same whatever the format. Pure functions over bytes already bounded
//! by the caller's size cap, each bounded again by a count of values and a nesting depth;
//! every failure is a `DecodeError` with its line and column or record number.
//! `projection.rs` parses JSON keeping only what a definition reads (`json_reading`).

mod csv;
mod fhir_xml;
mod format;
mod ndjson;
mod projection;
mod text;
mod xml;

use serde_json::Value;

pub use self::format::{
    CsvFormat, DecodeError, Format, Limits, MAX_DEPTH, Step, TextEncoding, XmlFormat,
};
pub use self::projection::json_reading;
pub(crate) use self::text::count;
use self::text::json_reason;

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

/// An error when a quoted field of CSV `text` is left open (the `csv` crate reads it to the
/// end of the text, swallowing every row after it): for other readers of CSV, such as code
/// tables.
pub(crate) fn csv_open_quote(text: &str, f: &CsvFormat) -> Result<(), DecodeError> {
    csv::unterminated_quote(text, f)
}

#[cfg(test)]
mod tests {
    use super::text::text;
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
