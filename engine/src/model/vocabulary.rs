//! The closed sets of words a definition chooses from (source and parameter types, FHIR
//! versions, HTTP methods, write modes): valid as soon as they parse, so the spec types and the
//! checked model share these enums, and the runtime reads them through the model.

use schemars::JsonSchema;
use serde::Deserialize;

/// The kind of a source.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceType {
    #[default]
    Json,
    Fhir,
}

/// A FHIR version: `R4` (4.0.1), `R4B` (4.3.0) or `R5` (5.0.0).
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum FhirVersion {
    R4,
    R4B,
    R5,
}

/// The signing algorithm of a SMART Backend Services client assertion.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum SigningAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-384 (an RSA key).
    RS384,
    /// ECDSA on P-384 with SHA-384 (an EC P-384 key).
    ES384,
}

/// HTTP methods of source requests.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum Method {
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "POST")]
    Post,
}

/// How a source's 404 reads.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum NotFoundReading {
    /// No data: a search answers an empty searchset (which may be cached), a read 404.
    Empty,
    /// What was asked for is not there: the caller gets 404 with the source's message.
    NotFound,
    /// The source failed (a wrong path or base URL): 502 with the source's message, never
    /// cached.
    Error,
}

/// What a source's answer that a `statuses.rules` rule matches is taken for.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RuleAction {
    /// A failure (502 to a caller) with the rule's `message`: not retried.
    Error,
    /// A transient failure: the request is sent again, as after a retried status, within
    /// the source's `retries` and `timeout`; the last failure stands when they run out.
    Retry,
    /// No data: a search finds nothing (an empty searchset), a run reads no records.
    Empty,
    /// The source is throttling: sent again after the delay it gives (`delayPath`,
    /// `delayHeader`, else `Retry-After`, else backoff; at most 30 s), within `retries` and
    /// `timeout`.
    RateLimited,
}

/// How a sink groups writes.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BundleMode {
    Transaction,
    Batch,
}

/// Types of search parameters.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    #[default]
    String,
    Integer,
    Date,
    Token,
}

/// Push answer modes.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PushMode {
    Sync,
    Queued,
}

/// What an HMAC signature covers: `body` (the body alone, as GitHub's
/// `X-Hub-Signature-256`) or `timestamp.body` (the timestamp header's value, a dot, then the
/// body; the default).
// No doc comments on the variants: the schema stays a plain `enum`, so an unknown value is
// diagnosed as "not one of" with a did-you-mean hint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum HmacSigned {
    #[serde(rename = "body")]
    Body,
    #[default]
    #[serde(rename = "timestamp.body")]
    TimestampBody,
}

/// How an HMAC digest is written: `hex` (either case; the default) or `base64` (standard
/// alphabet, padded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HmacEncoding {
    #[default]
    Hex,
    Base64,
}

/// What a cron run does with a record its mapping cannot handle, or whose resource has an id
/// or type that cannot be written.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RecordErrorPolicy {
    /// The run fails: nothing is written and the watermark stays (the default).
    #[default]
    Fail,
    /// The record goes to the connector's dead letters with the reason, is counted in the
    /// run report and in metrics, and the run goes on without it.
    Skip,
}

/// What the engine does at run time with a resource that is not valid for the connector's
/// FHIR version (its elements, cardinality, primitive forms, required codes, references, and
/// elements a null left half made, such as a Coding without a code): `strict` never writes it
/// (a push payload goes to the dead letters with an `OperationOutcome` naming the element; a
/// cron record follows `run.onRecordError`, `skip` putting it in the dead letters); `warn`
/// (the default) writes it, with a warning in the log and the run report, counted in
/// `engine_fhir_invalid_resources_total`; `off` does not check.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Validation {
    Strict,
    #[default]
    Warn,
    Off,
}

/// How expected FHIR is compared.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MatchMode {
    #[default]
    Exact,
    Subset,
}

/// What a `token` search parameter with a declared `systems` list does when a caller names
/// another system (`other|123`, or `|123`, no system): `refuse` answers 400 with an
/// `OperationOutcome` naming the accepted systems (the default: a caller learns their search
/// cannot match); `empty` answers an empty searchset without calling the source (FHIR's
/// reading: no resource of this source has a code in that system).
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OtherSystem {
    #[default]
    Refuse,
    Empty,
}

/// A FHIR modifier a `string` search parameter may accept (`name:exact=...`,
/// `name:contains=...`), when the source can search that way.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum StringModifier {
    Exact,
    Contains,
}

impl StringModifier {
    /// The modifier as FHIR writes it after the `:`.
    pub fn name(self) -> &'static str {
        match self {
            StringModifier::Exact => "exact",
            StringModifier::Contains => "contains",
        }
    }
}

/// The FHIR interaction a definition test runs: `search` (the default) or `read`.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Interaction {
    #[default]
    Search,
    Read,
}

/// The level of a FHIR Bulk Data export: every resource the server exports (`system`,
/// `[base]/$export`), the data of all its patients (`patient`, `[base]/Patient/$export`), or
/// of the members of one Group (`group`, `[base]/Group/{id}/$export`).
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BulkLevel {
    #[default]
    System,
    Patient,
    Group,
}

/// What a FHIR Bulk Data export asks for: `watermark` (the default) only what changed since
/// the `transactionTime` of the last successful run (`_since`; everything on the first run),
/// `none` everything on every run.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BulkSince {
    #[default]
    Watermark,
    None,
}
