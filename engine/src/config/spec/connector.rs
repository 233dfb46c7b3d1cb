//! Spec types of a connector: its strategy and what each strategy needs (pull routes, push
//! endpoint, schedule), the mapping, code tables, the cache and the definition's own tests.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::source::{AuthSpec, RequestSpec, SourceSpec, TlsSpec};
use crate::model::vocabulary::{
    FhirVersion, HmacEncoding, HmacSigned, Interaction, MatchMode, OtherSystem, ParamType,
    PushMode, RecordErrorPolicy, StringModifier, Validation,
};

/// What a connector does and with what.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectorSpec {
    /// `pull` (FHIR routes answered from the source), `push` (a webhook) or `cron` (a
    /// schedule that reads the source and writes to a sink).
    pub strategy: Strategy,
    /// The source, written inline. Use either `source` or `sources`.
    #[serde(default)]
    pub source: Option<SourceSpec>,
    /// Names of `Source` documents. Several FHIR sources make a fan-out proxy.
    #[serde(default)]
    #[schemars(extend("examples" = [["epi", "ips"]]))]
    pub sources: Option<Vec<String>>,
    /// Connector-level values, available to templates as `vars.NAME` (strings may use
    /// `${env:NAME}` / `${file:PATH}`).
    #[serde(default)]
    pub vars: BTreeMap<String, Value>,
    /// Code translation tables used by `$translate` in the mapping.
    #[serde(default)]
    pub tables: BTreeMap<String, TableSpec>,
    /// Replace each record that is a FHIR Bundle by its entries' resources, rewriting
    /// references between entries (`urn:uuid:` full URLs) to `Type/id`.
    #[serde(default)]
    pub split_bundles: bool,
    /// The IANA time zone of the local times in this connector's records (a time written
    /// without an offset, such as `2026-03-29 10:30`): `$dateTime`, `$instant` and the
    /// `dateTime` and `instant` template functions read such a time in this zone and write it
    /// with the zone's offset at that time (`2026-03-29T10:30:00+02:00`). The hour the clocks
    /// skip is an error; the hour they repeat reads as its first occurrence. Times written
    /// with an offset keep theirs. Without `timeZone`, a local time is read as UTC.
    #[serde(default)]
    #[schemars(extend("examples" = ["Europe/Vienna"]))]
    pub time_zone: Option<String>,
    /// The structural template of the FHIR produced from one record (see "Mapping"). A
    /// sequence at the top produces several resources per record (a push payload or a cron
    /// record that yields two resource types is one mapping making both). Without a mapping,
    /// records are expected to be FHIR resources already. In a pull connector it maps the
    /// resource types (and reads) that have no `mapping` of their own: one source serving
    /// `Medication` and `MedicationKnowledge` gives each `pull.resources` entry its own.
    #[serde(default)]
    pub mapping: Option<Value>,
    /// The FHIR version of what the connector makes (`R4`, `R4B` or `R5`), against which its
    /// mapping is checked. Its FHIR sink and FHIR sources give it already; write it when
    /// nothing else does (a pull connector over a JSON API, the embedded NDJSON sink), or
    /// to say it where it must agree with them. Without any of these: `R4`.
    #[serde(default)]
    pub fhir_version: Option<FhirVersion>,
    /// What push and cron connectors do with a resource their mapping made that is not valid
    /// for their FHIR version: `strict` never writes it (a push payload goes to the dead
    /// letters with an `OperationOutcome` naming the element; a cron record follows
    /// `run.onRecordError`), `warn` writes it with a warning and counts it, `off` does not
    /// check. Default: `warn`.
    #[serde(default)]
    #[schemars(extend("examples" = ["strict"]))]
    pub validation: Option<Validation>,
    /// Pull routes (strategy `pull`).
    #[serde(default)]
    pub pull: Option<PullSpec>,
    /// Push endpoint (strategy `push`).
    #[serde(default)]
    pub push: Option<PushSpec>,
    /// When a cron connector runs (strategy `cron`).
    #[serde(default)]
    pub schedule: Option<ScheduleSpec>,
    /// How a cron connector's runs treat bad records, limits and watermarks.
    #[serde(default)]
    pub run: Option<RunSpec>,
    /// What a cron connector reads from a JSON source.
    #[serde(default)]
    pub fetch: Option<FetchSpec>,
    /// What a cron connector copies from a FHIR source (FHIR-to-FHIR sync).
    #[serde(default)]
    pub sync: Option<SyncSpec>,
    /// The implementation guide a cron connector imports (no source: the guide is read
    /// from a directory or a FHIR package).
    #[serde(default)]
    pub import: Option<ImportSpec>,
    /// What a cron connector exports from a FHIR source with FHIR Bulk Data `$export`: the
    /// NDJSON files of the export streamed through the mapping into the sink, in batches.
    #[serde(default)]
    pub bulk_export: Option<BulkExportSpec>,
    /// How resources are written to the sink.
    #[serde(default)]
    pub write: Option<WriteSpec>,
    /// Answer cache of pull routes.
    #[serde(default)]
    pub cache: Option<CacheSpec>,
    /// Name of the `Sink` document that cron and push connectors write to (default: the
    /// embedded NDJSON sink in the state directory).
    #[serde(default)]
    pub sink: Option<String>,
    /// The definition's own tests, run by `engine validate`.
    #[serde(default)]
    pub tests: Vec<TestSpec>,
}

/// How a connector is driven.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Pull,
    Push,
    Cron,
}

/// A code translation table (ConceptMap-like), written in `map` or read from a `file`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// Source code to target value (a code, a Coding, any JSON). Give `map` or `file`, not
    /// both.
    #[serde(default)]
    #[schemars(extend("examples" = [{"AE": "AE", "adverse-event": "AE"}]))]
    pub map: Option<BTreeMap<String, Value>>,
    /// A file holding the table, relative to this definition's file, read and checked when
    /// definitions load (at most 4 MiB and 100,000 codes, UTF-8): `.json` is an object of
    /// code to value (any JSON, such as whole Codings); `.csv` has a header row, and the
    /// `key` column's codes map to the `value` column's text. A code written twice is an
    /// error.
    #[serde(default)]
    #[schemars(extend("examples" = ["tables/units.csv"]))]
    pub file: Option<String>,
    /// The CSV column of the codes. Default: the first.
    #[serde(default)]
    #[schemars(extend("examples" = ["local"]))]
    pub key: Option<String>,
    /// The CSV column of the values. Default: the second.
    #[serde(default)]
    #[schemars(extend("examples" = ["ucum"]))]
    pub value: Option<String>,
    /// Value for codes not in the table; without it an unmapped code is a mapping error
    /// (unless the lookup gives its own default).
    #[serde(default)]
    pub default: Option<Value>,
}

/// FHIR interactions served under `/fhir/{connector}`. One answer never mixes FHIR versions:
/// when the sources' `fhirVersion`s differ (R4 when a source declares none), the interactions
/// are served per version only, under `/fhir/{connector}/R4`, `/fhir/{connector}/R5`. With
/// several sources, each entry's `fullUrl` is `/fhir/{connector}/{source}/{type}/{id}`, which
/// reads that source's resource.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PullSpec {
    /// The resource types served, and how.
    #[schemars(length(min = 1))]
    pub resources: Vec<PullResourceSpec>,
    /// Accept `POST /fhir/{connector}` with a batch Bundle, fanned out to every FHIR source.
    #[serde(default)]
    pub batch: bool,
}

/// One resource type of a pull connector.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PullResourceSpec {
    /// FHIR resource type, e.g. `MedicinalProductDefinition`.
    #[serde(rename = "type")]
    #[schemars(extend("pattern" = "^[A-Z][A-Za-z]{1,63}$"))]
    pub resource_type: String,
    /// Search: `GET /fhir/{connector}/{type}?...`.
    #[serde(default)]
    pub search: Option<SearchSpec>,
    /// Read: `GET /fhir/{connector}/{type}/{id}`.
    #[serde(default)]
    pub read: Option<ReadSpec>,
    /// This type's own mapping (a structural template, as `spec.mapping`), used by its search
    /// and read instead of the connector's: it must make resources of this `type`. Several
    /// types over one source each get theirs here, beside the request and records they map.
    #[serde(default)]
    pub mapping: Option<Value>,
}

/// A search interaction.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SearchSpec {
    /// Accepted search parameters; others are refused with 400.
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
    /// The upstream request (FHIR sources default to the same search upstream).
    #[serde(default)]
    pub request: Option<RequestSpec>,
    /// JSONPath to the records in the answer (default `$` for one record; FHIR sources
    /// default to the Bundle's entries).
    #[serde(default)]
    pub records: Option<String>,
    /// JSONPath to the total number of matches in the answer.
    #[serde(default)]
    pub total: Option<String>,
}

/// A read interaction.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReadSpec {
    /// The upstream request; `{{id}}` is the requested id.
    #[serde(default)]
    pub request: Option<RequestSpec>,
    /// JSONPath to the record in the answer (default `$`): of the records it selects, the one
    /// whose resource has the id asked is answered (a source answering a loose match may send
    /// others too); none gives 404.
    #[serde(default)]
    pub records: Option<String>,
    /// The read's own mapping, where the read's answer differs from the search's records
    /// (e.g. a detail endpoint): used instead of the type's (or connector's) mapping.
    #[serde(default)]
    pub mapping: Option<Value>,
}

/// A search parameter.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParamSpec {
    /// Value type (default `string`).
    #[serde(default, rename = "type")]
    pub kind: ParamType,
    /// Refuse requests without it.
    #[serde(default)]
    pub required: bool,
    /// Value when the caller gives none.
    #[serde(default)]
    pub default: Option<Value>,
    /// Largest accepted value of an `integer` parameter.
    #[serde(default)]
    pub max: Option<i64>,
    /// Shown in the OpenAPI document.
    #[serde(default)]
    pub description: Option<String>,
    /// For a `token` parameter: the code systems the source searches. A caller's value is
    /// read as FHIR writes it: `system|code`, `|code` (a code without a system) or `code`
    /// (any system); templates read `params.NAME.system` (when the caller wrote a `|`, `""`
    /// for none), `params.NAME.code` and `params.NAME.text` (the value as written). Without
    /// `systems` any system is passed on; with it, another system (or none) gets what
    /// `otherSystems` says.
    #[serde(default)]
    #[schemars(extend("examples" = [["http://www.nlm.nih.gov/research/umls/rxnorm"]]))]
    pub systems: Vec<String>,
    /// What a `token` of a system not in `systems` gets: `refuse` (400 with an
    /// `OperationOutcome` naming the accepted systems; the default) or `empty` (an empty
    /// searchset, the source not called).
    #[serde(default)]
    pub other_systems: Option<OtherSystem>,
    /// For a `string` parameter: the FHIR modifiers the source can do, `exact` and
    /// `contains` (`name:exact=...`). Templates read the one given in
    /// `params._modifiers.NAME` (`""` when none). Any other modifier, and any modifier on a
    /// parameter that declares none, is refused with 400 naming the parameter.
    #[serde(default)]
    #[schemars(extend("examples" = [["exact", "contains"]]))]
    pub modifiers: Vec<StringModifier>,
}

/// A push endpoint.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PushSpec {
    /// Route of the endpoint (default `/push/{connector}`).
    #[serde(default)]
    #[schemars(extend("pattern" = "^/[A-Za-z0-9._~/-]*$"))]
    pub path: Option<String>,
    /// How callers prove who they are.
    pub auth: PushAuthSpec,
    /// Largest accepted body (default `1MiB`).
    #[serde(default)]
    #[schemars(extend("pattern" = "^[0-9]+(B|KB|MB|GB|KiB|MiB|GiB)?$"))]
    pub max_body: Option<String>,
    /// `sync` (answer after the sink wrote) or `queued` (answer after a durable local queue
    /// has the payload; default).
    #[serde(default)]
    pub mode: Option<PushMode>,
    /// JSONPath to the records in a payload (default `$`).
    #[serde(default)]
    pub records: Option<String>,
    /// How a payload is read: `json` by default (see `FormatSpec`). A body whose
    /// `Content-Type` names another format is refused with 415; one without a
    /// `Content-Type` is read in this format.
    #[serde(default)]
    pub format: Option<super::format::FormatSpec>,
    /// Most records one payload may hold (default 1000): a payload with more is refused
    /// with 413 and an `OperationOutcome` before anything is mapped or queued.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_records: Option<u64>,
    /// Most JSON values (objects, arrays, strings and object keys, numbers, literals) one
    /// payload may hold (default 500000), counted on the body before it is parsed: a payload
    /// with more is refused with 413 before it takes memory.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_values: Option<u64>,
    /// Header with the caller's idempotency key (default `Idempotency-Key`): at most 200
    /// printable ASCII characters; a longer key is refused with 400.
    #[serde(default)]
    pub idempotency_header: Option<String>,
    /// How long a delivery is remembered to acknowledge repeats without writing (default
    /// `24h`).
    #[serde(default)]
    #[schemars(extend("pattern" = "^([0-9]+(ms|s|m|h|d))+$"))]
    pub dedup_window: Option<String>,
    /// The most deliveries remembered at once (default `100000`): past it, the oldest are
    /// forgotten before their window ends, so the memory and `seen.jsonl` stay bounded.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub dedup_limit: Option<u64>,
}

/// Authentication of push callers: exactly one of `hmac`, `bearer`, `apiKey`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PushAuthSpec {
    /// HMAC-SHA256 signature of `timestamp.body` (the default) or of the body alone.
    #[serde(default)]
    pub hmac: Option<HmacSpec>,
    /// A bearer token.
    #[serde(default)]
    pub bearer: Option<super::source::BearerSpec>,
    /// A key in a header.
    #[serde(default)]
    pub api_key: Option<super::source::ApiKeySpec>,
}

/// HMAC-SHA256 signature settings. The defaults verify a hex digest of `<timestamp>.<body>`
/// in `X-Signature` (optionally prefixed `sha256=`) with the timestamp in `X-Timestamp`.
/// GitHub's scheme (`X-Hub-Signature-256: sha256=<hex of the body>`) is
/// `{ secret: ..., signed: body, header: X-Hub-Signature-256, prefix: "sha256=" }`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HmacSpec {
    /// The shared secret, normally `${env:NAME}` or `${file:PATH}`.
    pub secret: String,
    /// What the sender signs: `timestamp.body` (the default: the timestamp header's value, a
    /// dot, then the body, within `tolerance`) or `body` (the body alone, as GitHub does;
    /// there is then no timestamp, so a captured delivery can be replayed: deduplication
    /// answers a replay of the same body as a duplicate).
    #[serde(default)]
    pub signed: Option<HmacSigned>,
    /// How the digest is written in the header: `hex` (the default, either case) or
    /// `base64` (standard alphabet, padded).
    #[serde(default)]
    pub encoding: Option<HmacEncoding>,
    /// Header with the signature (default `X-Signature`).
    #[serde(default)]
    #[schemars(extend("examples" = ["X-Hub-Signature-256"]))]
    pub header: Option<String>,
    /// Text that must precede the digest in the header, e.g. `sha256=` or `v1=`; a header
    /// without it is refused. Without `prefix`, a leading `sha256=` is optional.
    #[serde(default)]
    #[schemars(extend("examples" = ["sha256="]))]
    pub prefix: Option<String>,
    /// Header with the Unix timestamp that was signed (default `X-Timestamp`); only with
    /// `signed: timestamp.body`.
    #[serde(default)]
    pub timestamp_header: Option<String>,
    /// Largest accepted age of the timestamp (default `5m`); only with
    /// `signed: timestamp.body`.
    #[serde(default)]
    #[schemars(extend("pattern" = "^([0-9]+(ms|s|m|h|d))+$"))]
    pub tolerance: Option<String>,
}

/// A schedule.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScheduleSpec {
    /// Cron expression: 5 fields (minute hour day month weekday) or 6 with seconds first.
    #[schemars(extend("examples" = ["0 2 * * *", "*/30 * * * * *"]))]
    pub cron: String,
    /// IANA time zone of the schedule (default `UTC`).
    #[serde(default)]
    #[schemars(extend("examples" = ["Europe/Madrid"]))]
    pub time_zone: Option<String>,
}

/// How a cron connector's runs treat bad records, limits and watermarks.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RunSpec {
    /// A record the mapping cannot handle, or whose resource has an id that breaks FHIR's id
    /// rule or a type the connector does not declare: `fail` fails the run (nothing is
    /// written, the watermark stays; the default), `skip` puts it in the connector's dead
    /// letters with the reason (`GET /connectors/{name}/dead-letters`), counts it in the run
    /// report and in metrics, and goes on, so the watermark can pass it.
    #[serde(default)]
    pub on_record_error: Option<RecordErrorPolicy>,
    /// Most records one run reads (default 100000); a run that would read more fails, naming
    /// the limit, and writes nothing.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_records: Option<u64>,
    /// Subtracted from a date watermark when a run asks the source for what changed since it
    /// (default none), e.g. `10m`: for sources that date a change before it can be read (a
    /// late commit, a replica behind) or whose `since` is coarser than their dates. Records
    /// read again are written again, or counted unchanged with `write.onlyChanged`.
    #[serde(default)]
    #[schemars(extend("pattern" = "^([0-9]+(ms|s|m|h|d))+$"))]
    pub lookback: Option<String>,
    /// How far past the engine's clock a date watermark may go (default `5m`): a record dated
    /// later (a `lastUpdated` in 2099, say) does not move the watermark, and the run reports
    /// it as skipped, so one bad date cannot stop the sync.
    #[serde(default)]
    #[schemars(extend("pattern" = "^([0-9]+(ms|s|m|h|d))+$"))]
    pub max_clock_skew: Option<String>,
}

/// A cron read from a JSON source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FetchSpec {
    /// The request of the first page.
    pub request: RequestSpec,
    /// JSONPath to the records in each answer.
    pub records: String,
    /// Run the request once for each of these values (available to its templates as
    /// `params.item`), e.g. the files of a list of lenses; the records of every answer are
    /// read.
    #[serde(default)]
    #[schemars(extend("examples" = [["pregnancy-lens.json", "allergy-lens.json"]]))]
    pub each: Vec<Value>,
    /// Parent and child requests: `parent.request` is read first (paged as any request of the
    /// source), and `request` then runs once for each record `parent.records` selects in it,
    /// with the record as `params.parent` (e.g. `/patients/{{params.parent.id}}/observations`);
    /// the records of every child answer are read. Children are sent one after the other,
    /// each within the source's `concurrency`, `rate` and `timeout`. A parent answer with more
    /// than `parent.maxChildren` records fails the run before any child is sent (nothing is
    /// written, as for `run.maxRecords`). A child that fails is reported for its parent
    /// record: with `run.onRecordError: skip` it is skipped and the run goes on (partial),
    /// with `fail` (the default) the run fails. Not with `each`.
    #[serde(default)]
    pub parent: Option<ParentSpec>,
    /// Read only what changed since the last successful run.
    #[serde(default)]
    pub incremental: Option<IncrementalSpec>,
}

/// The parent request of a fetch: its answers' records each make one child request.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentSpec {
    /// The parent request (its templates see `params.watermark`).
    pub request: RequestSpec,
    /// JSONPath to the parent records in its answers, e.g. `$.patients[*]`.
    pub records: String,
    /// Most parent records, so most child requests, of one run (default 1000).
    #[serde(default)]
    #[schemars(range(min = 1, max = 100000))]
    pub max_children: Option<u32>,
}

/// Incremental reads with a watermark kept in the state directory.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IncrementalSpec {
    /// JSONPath, relative to a record, to the value that orders changes (the watermark is
    /// the largest value written).
    pub cursor: String,
    /// Query parameter that carries the watermark of the last successful run.
    pub param: String,
}

/// A FHIR-to-FHIR sync.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SyncSpec {
    /// Resource types copied, in this order.
    #[schemars(length(min = 1))]
    pub resource_types: Vec<String>,
    /// Read only resources changed since the last successful run (`_lastUpdated`).
    #[serde(default)]
    pub incremental: bool,
    /// `_count` of each search (default 100).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub page_size: Option<u32>,
}

/// A FHIR Bulk Data `$export` (Bulk Data Access IG 2.0) from the connector's FHIR source: a
/// kick-off (`Prefer: respond-async`), status polls that honour `Retry-After` (bounded by
/// `maxPollInterval` and `maxDuration`) and log `X-Progress`, then the manifest's `output`
/// files read line by line (never held whole) and mapped and written to the sink in batches
/// of `batchSize`; its `error` files are read as `OperationOutcome`s into the run report's
/// warnings. The job is deleted at the end, after a failure too. The `transactionTime` of
/// the manifest becomes the watermark (`_since` of the next run) only when the whole run
/// succeeded; a failed or killed run is exported again from the same point, and a FHIR
/// sink's writes by id make the second write of a resource replace the first. A malformed
/// or too long line is a failed record (`run.onRecordError`); a file cut off mid-download
/// is read again, skipping the lines already taken, as often as the source's `retries`.
/// `run.maxRecords` bounds the lines of one run. See `docs/bulk-export.md`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BulkExportSpec {
    /// `system` (`[base]/$export`, the default), `patient` (`[base]/Patient/$export`) or
    /// `group` (`[base]/Group/{group}/$export`).
    #[serde(default)]
    pub level: Option<crate::model::vocabulary::BulkLevel>,
    /// The id of the Group exported, with `level: group` (and only then).
    #[serde(default)]
    #[schemars(extend("examples" = ["diabetes-cohort"]))]
    pub group: Option<String>,
    /// Resource types exported (`_type`); empty: every type the server exports.
    #[serde(default)]
    #[schemars(extend("examples" = [["Patient", "Observation"]]))]
    pub types: Vec<String>,
    /// FHIR search queries that narrow a type's resources (`_typeFilter`), each
    /// `Type?params`, e.g. `Observation?category=laboratory`.
    #[serde(default)]
    #[schemars(extend("examples" = [["Observation?category=laboratory"]]))]
    pub type_filter: Vec<String>,
    /// `watermark` (the default): only what changed since the `transactionTime` of the last
    /// successful run (`_since`, less `run.lookback`); `none`: everything on every run.
    #[serde(default)]
    pub since: Option<crate::model::vocabulary::BulkSince>,
    /// `_outputFormat`: `application/fhir+ndjson` (the default), `application/ndjson` or
    /// `ndjson`; the engine reads NDJSON only.
    #[serde(default)]
    #[schemars(extend("examples" = ["application/fhir+ndjson"]))]
    pub output_format: Option<String>,
    /// Longest the whole export may take, from the kick-off to the last line of the last
    /// file (default `1h`): a server that never finishes, or a file that drips, fails the
    /// run when it passes, and the job is deleted.
    #[serde(default)]
    #[schemars(extend("pattern" = "^([0-9]+(ms|s|m|h|d))+$"))]
    pub max_duration: Option<String>,
    /// Longest wait between two status polls (default `1m`): a longer `Retry-After` (in
    /// seconds or as a date) is cut to it. Without `Retry-After`, polls wait 1s, then twice
    /// as long each time, up to this.
    #[serde(default)]
    #[schemars(extend("pattern" = "^([0-9]+(ms|s|m|h|d))+$"))]
    pub max_poll_interval: Option<String>,
    /// Longest line of an NDJSON file (default `4MiB`): a longer line is a failed record
    /// (`run.onRecordError`), read past without being held.
    #[serde(default)]
    #[schemars(extend("pattern" = "^[0-9]+(B|KB|MB|GB|KiB|MiB|GiB)?$"))]
    pub max_line: Option<String>,
    /// Largest output or error file (default `1GiB`), counted in the bytes it holds once
    /// inflated when the server sends it gzip-compressed (`Content-Encoding: gzip`, which the
    /// engine asks for): a larger file, a gzip bomb among them, fails the run without being
    /// read again.
    #[serde(default)]
    #[schemars(extend("pattern" = "^[0-9]+(B|KB|MB|GB|KiB|MiB|GiB)?$"))]
    pub max_file_size: Option<String>,
    /// Records mapped and written together (default 1000): what a run holds at once.
    #[serde(default)]
    #[schemars(range(min = 1, max = 100000))]
    pub batch_size: Option<u32>,
    /// Origins besides the source's own (`https://files.example.org`) that the manifest's
    /// files may be downloaded from; a file anywhere else fails the run before any download.
    /// The source's credentials go with a download only when the manifest says
    /// `requiresAccessToken: true`.
    #[serde(default)]
    #[schemars(extend("examples" = [["https://exports.example.org"]]))]
    pub file_origins: Vec<String>,
}

/// An implementation guide import: every FHIR resource of a built guide, written to the
/// sink in dependency order. Every file and resource left out is counted in the run report.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImportSpec {
    /// The guide: a directory of FHIR JSON files, a FHIR package (`package.tgz`) file, or
    /// the `http`/`https` URL of a package. Paths are relative to the definition's directory.
    #[schemars(extend("examples" = [
        "${env:IPS_GUIDE:-https://build.fhir.org/ig/hl7-eu/gravitate-health-ips/package.tgz}",
        "/guides/ips/fsh-generated/resources"
    ]))]
    pub guide: String,
    /// The allow-list: only files matching one of `files`, and only resources of one of
    /// `types`, are imported (an empty list allows all).
    #[serde(default)]
    pub include: Option<GuideFilterSpec>,
    /// The deny-list: files matching one of `files`, and resources of one of `types`, are
    /// not imported.
    #[serde(default)]
    pub exclude: Option<GuideFilterSpec>,
    /// Largest package download, and largest guide once unpacked (default `512MiB`).
    #[serde(default)]
    #[schemars(extend("pattern" = "^[0-9]+(B|KB|MB|GB|KiB|MiB|GiB)?$"))]
    pub max_size: Option<String>,
    /// Time allowed for the package download (default `5m`); a token request of `auth` is
    /// bounded by it too.
    #[serde(default)]
    #[schemars(extend("pattern" = "^([0-9]+(ms|s|m|h|d))+$"))]
    pub timeout: Option<String>,
    /// Authentication of the package download, as a source's (`bearer`, `apiKey`, `basic`,
    /// `oauth2`, `smartBackend`; secrets only from references): for a guide given by URL.
    #[serde(default)]
    pub auth: Option<AuthSpec>,
    /// Mutual TLS with the package server, as a source's `tls`: for a guide given by URL.
    #[serde(default)]
    pub tls: Option<TlsSpec>,
}

/// Files and resource types of a guide import's allow- or deny-list.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GuideFilterSpec {
    /// File patterns: `*` and `?` within a name, `**` (a whole folder name) across folders,
    /// `[abc]` one of a set, `{a,b}` either. A pattern without `/` matches the file name in
    /// any folder; one with `/` matches the path in the guide (in a package, the path below
    /// `package/`).
    #[serde(default)]
    #[schemars(extend("examples" = [["ImplementationGuide-*.json", "example/**"]]))]
    pub files: Vec<String>,
    /// FHIR resource types, matched after `splitBundles` and the mapping.
    #[serde(default)]
    #[schemars(extend("examples" = [["StructureDefinition", "ImplementationGuide"]]))]
    pub types: Vec<String>,
}

/// How resources are written.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WriteSpec {
    /// Conditional update on this identifier system (`PUT Type?identifier=system|value`)
    /// instead of `PUT Type/id`.
    #[serde(default)]
    pub identifier_system: Option<String>,
    /// Skip resources whose content has not changed since they were last written.
    #[serde(default)]
    pub only_changed: bool,
}

/// The answer cache of a pull connector.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CacheSpec {
    /// How long an answer is fresh, e.g. `10m`.
    #[schemars(extend("pattern" = "^([0-9]+(ms|s|m|h|d))+$"))]
    pub ttl: String,
    /// Most answers kept (default 10000).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_entries: Option<u64>,
    /// Most bytes kept (default `64MiB`).
    #[serde(default)]
    #[schemars(extend("pattern" = "^[0-9]+(B|KB|MB|GB|KiB|MiB|GiB)?$"))]
    pub max_bytes: Option<String>,
    /// How long past its TTL an answer may be served when the source fails.
    #[serde(default)]
    #[schemars(extend("pattern" = "^([0-9]+(ms|s|m|h|d))+$"))]
    pub stale_if_error: Option<String>,
    /// Honour a caller's `Cache-Control: no-cache` (default true).
    #[serde(default)]
    pub allow_no_cache: Option<bool>,
}

/// A test of the mapping: an input and the FHIR expected from it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TestSpec {
    /// Name shown in results.
    pub name: String,
    /// The input, inline (a source answer, or a payload for push).
    #[serde(default)]
    pub input: Option<Value>,
    /// The input, as a file relative to the definition, in the format of the connector's
    /// input (its source's or push endpoint's `format`: a CSV export, an XML answer, ...).
    #[serde(default)]
    pub input_file: Option<String>,
    /// Caller parameters of a pull search, as a caller writes them in the query (`code:
    /// "http://sys|123"`, `"name:exact": Foo`), read and checked as the route reads them, so
    /// a refused search is this test's error (`expectError`); available as `params.NAME`.
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    /// In a pull connector: the resource type whose search or read is tested (default: the
    /// first that has the interaction). Needed when the connector's types map differently.
    #[serde(default, rename = "type")]
    #[schemars(extend("pattern" = "^[A-Z][A-Za-z]{1,63}$"))]
    pub resource_type: Option<String>,
    /// In a pull connector: `search` (the default: the input is a search answer) or `read`
    /// (the input is a read answer; the expected FHIR is the one resource the read answers,
    /// or nothing for a 404).
    #[serde(default)]
    pub interaction: Option<Interaction>,
    /// The id a `read` test asks for.
    #[serde(default)]
    #[schemars(extend("examples" = ["1049221"]))]
    pub id: Option<String>,
    /// The expected FHIR, inline: a list of resources.
    #[serde(default)]
    pub expect: Option<Value>,
    /// The expected FHIR, as a JSON file relative to the definition.
    #[serde(default)]
    pub expect_file: Option<String>,
    /// `exact` (default) or `subset` (every expected value present; more allowed).
    #[serde(default, rename = "match")]
    pub match_mode: MatchMode,
    /// The mapping is expected to fail with a message containing this text.
    #[serde(default)]
    pub expect_error: Option<String>,
}
