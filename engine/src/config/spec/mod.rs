//! Spec types: the definition format v1 as written in YAML. They mirror the documents, hold no
//! logic, and are the source of the published JSON Schema; each field's doc comment is its
//! user documentation.

mod connector;
mod format;
mod source;

pub use connector::*;
pub use format::*;
pub use source::*;

pub use crate::model::vocabulary::*;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

/// The only API version of the format.
pub const API_VERSION: &str = "fosps.gravitate-health.eu/v1";
/// Pattern of a duration: one or more of a number and a unit (`ms`, `s`, `m`, `h`, `d`).
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h|d))+$";
/// Pattern of a size in bytes: a number and an optional unit.
pub const SIZE_PATTERN: &str = "^[0-9]+(B|KB|MB|GB|KiB|MiB|GiB)?$";
/// Pattern of a name: a DNS label (RFC 1123).
pub const NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
/// Pattern of a FHIR resource type name.
pub const RESOURCE_TYPE_PATTERN: &str = "^[A-Z][A-Za-z]{1,63}$";

/// The `apiVersion` every document carries.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum ApiVersion {
    #[serde(rename = "fosps.gravitate-health.eu/v1")]
    V1,
}

/// Who the document is, and what it is for.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Unique name among all documents of its kind: a DNS label (lower case letters, digits
    /// and `-`, at most 63 characters). Connector names appear in routes: `/fhir/{name}`.
    #[schemars(extend("pattern" = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", "examples" = ["drug-labels"]))]
    pub name: String,
    /// What the document does, for people and the admin API.
    #[serde(default)]
    pub description: Option<String>,
    /// Free labels, shown by the admin API and copied to generated manifests.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A connector: turns one outside source into FHIR routes (pull), a webhook (push) or a
/// schedule (cron).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectorDoc {
    /// Always `fosps.gravitate-health.eu/v1`.
    pub api_version: ApiVersion,
    /// `Connector`.
    pub kind: ConnectorKind,
    pub metadata: Metadata,
    pub spec: ConnectorSpec,
}

/// A named source that connectors share by listing it in `spec.sources`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourceDoc {
    /// Always `fosps.gravitate-health.eu/v1`.
    pub api_version: ApiVersion,
    /// `Source`.
    pub kind: SourceKind,
    pub metadata: Metadata,
    pub spec: SourceSpec,
}

/// A named sink that cron and push connectors write to (`spec.sink`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SinkDoc {
    /// Always `fosps.gravitate-health.eu/v1`.
    pub api_version: ApiVersion,
    /// `Sink`.
    pub kind: SinkKind,
    pub metadata: Metadata,
    pub spec: SinkSpec,
}

/// The kind `Connector`.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum ConnectorKind {
    Connector,
}

/// The kind `Source`.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum SourceKind {
    Source,
}

/// The kind `Sink`.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum SinkKind {
    Sink,
}

/// The kinds of document, by their `kind` value.
pub const KINDS: [&str; 3] = ["Connector", "Source", "Sink"];
