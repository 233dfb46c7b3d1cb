//! Spec types of record formats: how a source's answers, a push body or a file source's files
//! are read (JSON, NDJSON, CSV, XML, FHIR XML).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

/// The formats a source answer, a push body or a file may be written in.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum FormatKind {
    /// One JSON document.
    #[default]
    Json,
    /// One JSON value per line (`application/x-ndjson`, `application/fhir+ndjson`): the
    /// document is the array of the lines' values.
    Ndjson,
    /// Comma (or other) separated values: the document is an array of objects, one per row,
    /// keyed by column name; every value a string, an empty cell left out.
    Csv,
    /// XML: the document is the root element, or the array of the elements at `records`, in
    /// the convention of `docs/formats.md` (`@name` attributes, `#text`, repeated elements as
    /// arrays).
    Xml,
    /// FHIR XML (`application/fhir+xml`), read as the FHIR JSON of the same resource, by the
    /// structure of the connector's FHIR version.
    FhirXml,
}

/// How bytes are read as records: `type` and its settings. The records query (`records`)
/// then runs over the decoded document, and the mapping is written as for JSON. A row format
/// (NDJSON, CSV, XML with `records`) decodes to an array: select its items with
/// `records: $[*]`. Every format is bounded by the source's `maxAnswer` (or the push's
/// `maxBody`) and `maxValues`; a malformed document is an error naming its line (and column)
/// or record.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FormatSpec {
    /// `json` (default), `ndjson`, `csv`, `xml` or `fhirXml`.
    #[serde(default, rename = "type")]
    pub kind: FormatKind,
    /// CSV: the first row names the columns (default `true` unless `columns` is given).
    #[serde(default)]
    pub header: Option<bool>,
    /// CSV: the column names, in order; with `header: true` the file's header row is
    /// skipped and these names used instead.
    #[serde(default)]
    #[schemars(length(max = 1000))]
    #[schemars(extend("examples" = [["patientId", "loinc", "value", "unit", "takenAt"]]))]
    pub columns: Vec<String>,
    /// CSV: the character between cells, one ASCII character (default `,`; `\t` for tabs).
    #[serde(default)]
    #[schemars(extend("examples" = [";"]))]
    pub delimiter: Option<String>,
    /// CSV: the quote character, one ASCII character (default `"`); a quote inside a quoted
    /// cell is written twice.
    #[serde(default)]
    pub quote: Option<String>,
    /// CSV and XML: the character encoding of the text (default `utf-8`): any WHATWG label,
    /// e.g. `latin1`, `iso-8859-15`, `windows-1252`. Bytes that are not valid in it are an
    /// error (never replaced). XML's own `encoding` declaration is not read.
    #[serde(default)]
    #[schemars(extend("examples" = ["windows-1252"]))]
    pub encoding: Option<String>,
    /// XML: the path of element names from the root to the record elements, e.g.
    /// `[document, component, structuredBody, component, section]`; each such element is one
    /// item of the decoded array, and the rest of the document is streamed past. A name is
    /// `local` (any namespace) or `prefix:local` with a prefix of `namespaces`. Without it,
    /// the decoded document is the root element.
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[schemars(extend("examples" = [["hl7:document", "hl7:component", "hl7:structuredBody"]]))]
    pub records: Vec<String>,
    /// XML: namespace prefixes used in `records`, and their URIs.
    #[serde(default)]
    #[schemars(extend("examples" = [{"hl7": "urn:hl7-org:v3"}]))]
    pub namespaces: BTreeMap<String, String>,
    /// XML: local names of elements that are always arrays, even where they occur once (by
    /// default an element is an array only where it repeats).
    #[serde(default)]
    #[schemars(extend("examples" = [["component", "ingredient"]]))]
    pub arrays: Vec<String>,
}
