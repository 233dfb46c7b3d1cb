//! The checked model: what `validate` makes of the specs. Names are checked, durations are
//! `Duration`s, queries and templates are compiled, cron is parsed, references are resolved;
//! runtime code reads only these types.

pub mod decode;
pub mod digest;
pub mod fhir;
pub mod fhir_structure;
pub mod glob;
pub mod hint;
pub mod jsonpath;
pub mod mapping;
pub mod reads;
pub mod search_params;
pub mod template;
pub mod vocabulary;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::model::glob::Glob;
use crate::model::jsonpath::Query;
use crate::model::mapping::{Input, MapError, Mapping};
pub use crate::model::search_params::Param;
use crate::model::template::{Templates, Text};
use crate::model::vocabulary::{
    BundleMode, FhirVersion, HmacEncoding, HmacSigned, Interaction, MatchMode, NotFoundReading,
    PushMode, RecordErrorPolicy, SigningAlg, SourceType,
};

/// A string whose value may come from a secret: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Every checked document of a set of definition files.
#[derive(Debug, Default)]
pub struct Model {
    pub connectors: Vec<Arc<Connector>>,
    pub sources: BTreeMap<String, Arc<Source>>,
    pub sinks: BTreeMap<String, Arc<Sink>>,
    /// The files besides the definitions that the model was compiled from (table files,
    /// `${file:...}` references), each with the SHA-256 of its bytes as they were read: a
    /// served engine reloads when one of them changes.
    pub inputs: BTreeMap<std::path::PathBuf, String>,
}

impl Model {
    pub fn connector(&self, name: &str) -> Option<&Arc<Connector>> {
        self.connectors.iter().find(|c| c.name == name)
    }
}

/// A checked connector.
#[derive(Debug)]
pub struct Connector {
    pub name: String,
    /// Digest of the connector's resolved definition and of the sources and sink it names:
    /// equal fingerprints mean a reload leaves the connector as it is.
    pub fingerprint: String,
    pub description: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub file: PathBuf,
    pub strategy: Strategy,
    pub sources: Vec<Arc<Source>>,
    pub vars: Value,
    pub split_bundles: bool,
    /// The zone of local times in the records (`timeZone`); UTC when `None`.
    pub time_zone: Option<chrono_tz::Tz>,
    /// The FHIR version the connector reads and writes: from its FHIR sink, its FHIR sources
    /// or its own `fhirVersion`, which all agree; R4 when none says.
    pub fhir_version: FhirVersion,
    /// What push and cron runs do with a resource invalid for `fhir_version`.
    pub validation: crate::model::vocabulary::Validation,
    /// The connector's mapping (`spec.mapping`): every record's, or, in a pull connector, that
    /// of the resource types and reads without their own.
    pub mapping: Option<Mapping>,
    pub templates: Arc<Templates>,
    pub tests: Vec<Test>,
}

/// What drives a connector, with what that strategy needs.
#[allow(clippy::large_enum_variant)] // built once per load; boxing would only add indirection
#[derive(Debug)]
pub enum Strategy {
    Pull(Pull),
    Push(Push),
    Cron(Cron),
}

/// A source's default `concurrency`: above the worker pools FHIR servers serve with by
/// default (Tomcat's 200 threads behind HAPI FHIR), so that a server's own limit (its queue,
/// or a 429 or 503 that the retries honour) throttles before the engine does, while a burst
/// still cannot open an unbounded number of connections to one source.
pub const DEFAULT_SOURCE_CONCURRENCY: u32 = 256;

/// A checked source.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub url: url::Url,
    pub kind: SourceType,
    pub fhir_version: Option<FhirVersion>,
    pub headers: Vec<(String, Secret)>,
    pub auth: Option<Auth>,
    /// Mutual TLS with the source.
    pub tls: Option<Tls>,
    pub timeout: Duration,
    pub retries: u32,
    /// Most calls in flight to the source at once (`concurrency`, default
    /// `DEFAULT_SOURCE_CONCURRENCY`).
    pub concurrency: u32,
    pub pagination: Option<Pagination>,
    /// Most pages read for one answer or one stream of a run (`pagination.maxPages`).
    pub max_pages: u32,
    /// Most JSON values in one answer, counted before it is parsed (`maxValues`).
    pub max_values: usize,
    /// Largest answer read, in bytes.
    pub max_answer: u64,
    /// How the source's statuses and bodies read.
    pub statuses: Statuses,
    /// When calls to the source stop being sent after repeated failures.
    pub breaker: BreakerSettings,
    /// The source's requests-per-second budget (`rate`), if it has one.
    pub rate: Option<Rate>,
    /// How its answers (or files) are read (`format`).
    pub format: crate::model::decode::Format,
    /// A file source: the files read instead of calling `url` (`path`).
    pub files: Option<Files>,
}

/// A requests-per-second budget: a token bucket of `burst` tokens refilled at `per_second`
/// (more than 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

/// The files of a file source: `dir` (absolute, or relative to the working directory as the
/// definition's path is), and a pattern below it; no pattern: `dir` is the one file.
#[derive(Debug, Clone)]
pub struct Files {
    pub dir: PathBuf,
    pub pattern: Option<Glob>,
    /// The path as the definition writes it, for messages (never resolved further).
    pub shown: String,
}

/// A source's circuit breaker: `failures` failed calls in a row open it; while open, calls
/// fail at once; after `cool_down` one probe call is let through, which closes it again or
/// re-opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    pub failures: u32,
    pub cool_down: Duration,
}

/// Failed calls in a row that open a source's breaker unless a definition says otherwise.
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// How long a source's breaker stays open before a probe unless a definition says otherwise.
pub const DEFAULT_BREAKER_COOL_DOWN: Duration = Duration::from_secs(30);

/// Largest answer read from a source or a sink unless a definition says otherwise.
pub const DEFAULT_MAX_ANSWER: u64 = 32 << 20;
/// Statuses after which an idempotent request is sent again unless a source says otherwise.
pub const DEFAULT_RETRY_STATUSES: [u16; 4] = [429, 502, 503, 504];

/// How a source's answers read: what a 404 means, which statuses are retried, and which
/// 2xx bodies are errors.
#[derive(Debug, Clone)]
pub struct Statuses {
    /// What a 404 means; `None` is the interaction's default (a search: an error; a read:
    /// not found).
    pub not_found: Option<NotFoundReading>,
    /// Statuses after which an idempotent request is sent again.
    pub retry: Vec<u16>,
    /// A query whose match on a 2xx body makes the answer a failure.
    pub error_when: Option<Query>,
    /// Response classification rules, in order (`statuses.rules`).
    pub rules: Vec<ResponseRule>,
}

/// A response classification rule: its conditions (all that are set must hold) and action.
#[derive(Debug, Clone)]
pub struct ResponseRule {
    /// Statuses it applies to; empty: any 2xx.
    pub statuses: Vec<u16>,
    /// A query whose match (a value that is not `null`, `false` or `""`, or equal to
    /// `equals`) the body must have.
    pub path: Option<Query>,
    pub equals: Option<Value>,
    /// A header the answer must carry (lower case).
    pub header: Option<String>,
    pub action: crate::model::vocabulary::RuleAction,
    /// Where the failure's message is.
    pub message: Option<Query>,
    /// Where the wait before sending again is: seconds in the body, or in a header.
    pub delay_path: Option<Query>,
    pub delay_header: Option<String>,
}

/// Outbound authentication.
#[derive(Debug, Clone)]
pub enum Auth {
    Bearer(Secret),
    ApiKey {
        header: String,
        value: Secret,
    },
    Basic {
        username: Secret,
        password: Secret,
    },
    /// A token from an OAuth2 token endpoint (client credentials grant).
    OAuth2(Box<OAuth2>),
    /// A token from a SMART Backend Services token endpoint (private key JWT assertion).
    SmartBackend(Box<SmartBackend>),
}

/// OAuth2 client credentials.
#[derive(Debug, Clone)]
pub struct OAuth2 {
    pub token_url: url::Url,
    pub client_id: String,
    pub client_secret: Secret,
    pub scopes: Vec<String>,
    pub audience: Option<String>,
}

/// SMART Backend Services credentials: the private key is PEM text (checked to be a key of
/// `alg`).
#[derive(Debug, Clone)]
pub struct SmartBackend {
    pub token_url: url::Url,
    pub client_id: String,
    pub private_key: Secret,
    pub alg: SigningAlg,
    pub kid: String,
    pub jku: Option<url::Url>,
    pub scopes: Vec<String>,
}

/// TLS with a source, a sink or a guide server: the client certificate (chain) and its key (mutual TLS), and an extra
/// CA, all PEM text (checked to parse).
#[derive(Debug, Clone)]
pub struct Tls {
    /// The client certificate and its key.
    pub identity: Option<(Secret, Secret)>,
    pub ca: Option<Secret>,
}

/// How a source pages.
#[derive(Debug, Clone)]
pub enum Pagination {
    NextUrl(Query),
    LinkHeader,
    Fhir,
    Offset {
        param: String,
        limit_param: String,
        limit: u32,
    },
    Page {
        param: String,
        start: u32,
    },
    Cursor {
        path: Query,
        param: String,
    },
}

/// A checked sink.
#[allow(clippy::large_enum_variant)] // built once per load; boxing would only add indirection
#[derive(Debug)]
pub enum Sink {
    Fhir(FhirSink),
    Ndjson { name: String, dir: PathBuf },
}

/// A FHIR server sink.
#[derive(Debug)]
pub struct FhirSink {
    pub name: String,
    pub url: url::Url,
    pub version: FhirVersion,
    pub auth: Option<Auth>,
    /// Mutual TLS with the sink.
    pub tls: Option<Tls>,
    pub timeout: Duration,
    pub batch_size: u32,
    /// Bundles of one write in flight at once (1 or more).
    pub concurrency: u32,
    pub mode: BundleMode,
    pub retries: u32,
    pub provenance: bool,
}

/// Pull routes.
#[derive(Debug)]
pub struct Pull {
    pub resources: Vec<PullResource>,
    pub batch: bool,
    pub cache: Option<Cache>,
}

/// One resource type of a pull connector.
#[derive(Debug)]
pub struct PullResource {
    pub resource_type: String,
    pub search: Option<Search>,
    pub read: Option<Read>,
    /// This type's own mapping (`pull.resources[].mapping`), else the connector's.
    pub mapping: Option<Mapping>,
}

/// A search interaction.
#[derive(Debug)]
pub struct Search {
    pub params: BTreeMap<String, Param>,
    pub request: Option<Request>,
    pub records: Query,
    pub total: Option<Query>,
}

/// A read interaction.
#[derive(Debug)]
pub struct Read {
    pub request: Option<Request>,
    pub records: Query,
    /// The read's own mapping (`read.mapping`), else its resource type's.
    pub mapping: Option<Mapping>,
}

/// An upstream request built from templates.
#[derive(Debug)]
pub struct Request {
    pub method: crate::model::vocabulary::Method,
    pub path: Text,
    pub query: Vec<(String, Text)>,
    pub headers: Vec<(String, Text)>,
    pub body: Option<crate::model::mapping::Expr>,
}

/// The pull answer cache.
#[derive(Debug, Clone)]
pub struct Cache {
    pub ttl: Duration,
    pub max_entries: u64,
    pub max_bytes: u64,
    pub stale_if_error: Duration,
    pub allow_no_cache: bool,
}

/// A push endpoint.
#[derive(Debug)]
pub struct Push {
    pub path: String,
    pub auth: PushAuth,
    pub max_body: u64,
    pub mode: PushMode,
    pub records: Query,
    /// Most records one payload may hold (`push.maxRecords`).
    pub max_records: usize,
    /// Most JSON values one payload may hold, counted before it is parsed (`push.maxValues`).
    pub max_values: usize,
    /// How a payload is read (`push.format`).
    pub format: crate::model::decode::Format,
    pub idempotency_header: String,
    pub dedup_window: Duration,
    /// The most deliveries remembered at once (`dedupLimit`).
    pub dedup_limit: usize,
    pub sink: SinkRef,
    /// Write by conditional update on this identifier system (`write.identifierSystem`).
    pub identifier_system: Option<String>,
}

/// Push caller authentication.
#[derive(Debug, Clone)]
pub enum PushAuth {
    Hmac {
        secret: Secret,
        /// What the signature covers.
        signed: HmacSigned,
        /// How the digest is written.
        encoding: HmacEncoding,
        header: String,
        /// Text that must precede the digest; `None`: an optional `sha256=`.
        prefix: Option<String>,
        /// Used only when `signed` is `timestamp.body`.
        timestamp_header: String,
        tolerance: Duration,
    },
    Bearer(Secret),
    ApiKey {
        header: String,
        value: Secret,
    },
}

/// The sink of a connector: a named one, or the embedded NDJSON default.
#[derive(Debug, Clone)]
pub enum SinkRef {
    Named(Arc<Sink>),
    Default,
}

/// A cron connector.
#[derive(Debug)]
pub struct Cron {
    pub schedule: Schedule,
    pub read: CronRead,
    pub sink: SinkRef,
    pub identifier_system: Option<String>,
    pub only_changed: bool,
    /// What a run does with a record it cannot map or write (`run.onRecordError`).
    pub on_record_error: RecordErrorPolicy,
    /// Most records one run reads (`run.maxRecords`).
    pub max_records: usize,
    /// Subtracted from a date watermark when the source is asked (`run.lookback`).
    pub lookback: Duration,
    /// How far past now a date watermark may go (`run.maxClockSkew`).
    pub max_clock_skew: Duration,
}

/// A checked schedule: the expression as written, parsed (seconds first), and its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub cron: String,
    pub parsed: croner::Cron,
    pub time_zone: chrono_tz::Tz,
}

impl Schedule {
    /// A cron expression of six fields, seconds first, parsed as the engine reads every
    /// schedule (no year field).
    pub fn parse_cron(six_fields: &str) -> Result<croner::Cron, croner::errors::CronError> {
        croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(six_fields)
    }
}

/// What a cron run reads.
#[allow(clippy::large_enum_variant)] // built once per load; boxing would only add indirection
#[derive(Debug)]
pub enum CronRead {
    Fetch {
        request: Request,
        records: Query,
        incremental: Option<(Query, String)>,
        /// Values the request runs once for each (`params.item`); empty: once.
        each: Vec<Value>,
        /// A parent request whose records the request runs once for each (`params.parent`).
        parent: Option<Parent>,
    },
    Sync {
        resource_types: Vec<String>,
        incremental: bool,
        page_size: u32,
    },
    Import(Import),
    /// A FHIR Bulk Data `$export` from the connector's FHIR source.
    BulkExport(BulkExport),
}

/// A checked FHIR Bulk Data export (`bulkExport`).
#[derive(Debug, Clone)]
pub struct BulkExport {
    /// `system`, `patient` or `group` (with `group`, the Group's id).
    pub level: crate::model::vocabulary::BulkLevel,
    pub group: Option<String>,
    /// `_type`; empty: every type.
    pub types: Vec<String>,
    /// `_typeFilter` queries, each `Type?params`.
    pub type_filters: Vec<String>,
    pub since: crate::model::vocabulary::BulkSince,
    /// `_outputFormat`.
    pub output_format: String,
    /// Longest the whole export may take (`maxDuration`).
    pub max_duration: Duration,
    /// Longest wait between two status polls (`maxPollInterval`).
    pub max_poll_interval: Duration,
    /// Longest NDJSON line, in bytes (`maxLine`).
    pub max_line: usize,
    /// Largest file, in bytes, counted inflated when it comes compressed (`maxFileSize`).
    pub max_file_size: u64,
    /// Records mapped and written together (`batchSize`).
    pub batch_size: usize,
    /// Origins besides the source's own that files may come from (`fileOrigins`).
    pub file_origins: Vec<url::Origin>,
}

/// The parent request of a fetch, where its records are, and the most it may give.
#[derive(Debug)]
pub struct Parent {
    pub request: Request,
    pub records: Query,
    pub max_children: usize,
}

/// A checked implementation guide import.
#[derive(Debug)]
pub struct Import {
    pub guide: GuideLocation,
    /// Authentication of the package download (a guide given by URL).
    pub auth: Option<Auth>,
    /// Mutual TLS with the package server.
    pub tls: Option<Tls>,
    /// The allow-list; empty lists allow all.
    pub include_files: Vec<Glob>,
    pub include_types: Vec<String>,
    /// The deny-list.
    pub exclude_files: Vec<Glob>,
    pub exclude_types: Vec<String>,
    pub max_bytes: u64,
    pub timeout: Duration,
}

/// Where a guide is.
#[derive(Debug, Clone)]
pub enum GuideLocation {
    /// A package to download.
    Url(url::Url),
    /// A directory of FHIR JSON, or a package file.
    Path(PathBuf),
}

/// A definition test.
#[derive(Debug)]
pub struct Test {
    pub name: String,
    /// YAML path of the test, for diagnostics.
    pub at: Vec<String>,
    pub input: Value,
    pub params: Value,
    /// In a pull connector: the resource type whose search or read the test runs (`None`:
    /// the first that has the interaction).
    pub resource_type: Option<String>,
    /// `search` (the default) or `read` (of `id`).
    pub interaction: Interaction,
    /// The id a read test asks for.
    pub id: Option<String>,
    pub expect: Option<Value>,
    pub match_mode: MatchMode,
    pub expect_error: Option<String>,
}

impl Connector {
    /// The format of the documents this connector maps: its push endpoint's, or its first
    /// source's (JSON when it has none).
    pub fn input_format(&self) -> crate::model::decode::Format {
        match &self.strategy {
            Strategy::Push(p) => p.format.clone(),
            _ => self
                .sources
                .first()
                .map(|s| s.format.clone())
                .unwrap_or_default(),
        }
    }

    /// The records selector of the documents this connector maps.
    pub fn records(&self) -> Option<&Query> {
        match &self.strategy {
            Strategy::Pull(p) => p
                .resources
                .iter()
                .find_map(|r| r.search.as_ref().map(|s| &s.records)),
            Strategy::Push(p) => Some(&p.records),
            Strategy::Cron(c) => match &c.read {
                CronRead::Fetch { records, .. } => Some(records),
                CronRead::Sync { .. } | CronRead::Import(_) | CronRead::BulkExport(_) => None,
            },
        }
    }

    /// The resource types this connector writes, when it declares them: a sync's
    /// `resourceTypes` (the mapping's, when it has one), or the literal `resourceType`s of
    /// the mapping. `None` (any type) for an import, whose guide decides, and for a mapping
    /// that computes its `resourceType`.
    pub fn declared_types(&self) -> Option<std::collections::BTreeSet<String>> {
        if let Strategy::Cron(Cron {
            read: CronRead::Import(_),
            ..
        }) = &self.strategy
        {
            return None;
        }
        match (&self.mapping, &self.strategy) {
            (Some(m), _) => m.output_types(),
            (
                None,
                Strategy::Cron(Cron {
                    read: CronRead::Sync { resource_types, .. },
                    ..
                }),
            ) if !self.split_bundles => Some(resource_types.iter().cloned().collect()),
            (None, _) => None,
        }
    }

    /// Maps a whole input document: records selected, Bundles split when asked, then each
    /// record mapped (or taken as a resource when there is no mapping). In a pull connector,
    /// the records and mapping are those of the first resource type's search.
    pub fn map_document(&self, document: &Value, params: &Value) -> Result<Vec<Value>, MapError> {
        let selected = select(self.records(), document);
        self.map_records(selected, params)
    }

    /// The pull resource type `resource_type`, or (`None`) the first one that has the
    /// interaction.
    pub fn pull_resource(
        &self,
        resource_type: Option<&str>,
        interaction: Interaction,
    ) -> Option<&PullResource> {
        let Strategy::Pull(p) = &self.strategy else {
            return None;
        };
        p.resources.iter().find(|r| match resource_type {
            Some(t) => r.resource_type == t,
            None => match interaction {
                Interaction::Search => r.search.is_some(),
                Interaction::Read => r.read.is_some(),
            },
        })
    }

    /// The mapping an interaction of a pull resource type applies: the read's own, else the
    /// type's own, else the connector's.
    pub fn mapping_for<'a>(
        &'a self,
        res: &'a PullResource,
        interaction: Interaction,
    ) -> Option<&'a Mapping> {
        let read = match interaction {
            Interaction::Read => res.read.as_ref().and_then(|r| r.mapping.as_ref()),
            Interaction::Search => None,
        };
        read.or(res.mapping.as_ref()).or(self.mapping.as_ref())
    }

    /// What a search of `res` makes of one source answer: its records selected by the
    /// search's `records`, each mapped with the type's mapping.
    pub fn map_search(
        &self,
        res: &PullResource,
        document: &Value,
        params: &Value,
    ) -> Result<Vec<Value>, MapError> {
        let selected = select(res.search.as_ref().map(|s| &s.records), document);
        self.map_records_with(self.mapping_for(res, Interaction::Search), selected, params)
    }

    /// What a read of `res` `id` makes of one source answer: the resource of the type with
    /// that id, from the first record `read.records` selects that makes one (each mapped with
    /// the read's mapping, in order, until one does); `None` when none does (a 404). A
    /// resource with another id is not the one asked for, even when the source answered it
    /// alone (a read made as a search that matched loosely, a source ignoring the query).
    pub fn map_read(
        &self,
        res: &PullResource,
        id: &str,
        document: &Value,
    ) -> Result<Option<Value>, MapError> {
        let Some(read) = &res.read else {
            return Ok(None);
        };
        let mapping = self.mapping_for(res, Interaction::Read);
        let params = Value::Object(serde_json::Map::new());
        for record in read.records.select(document, document) {
            let mapped = self.map_records_with(mapping, [("$".to_owned(), record)], &params)?;
            if let Some(found) = mapped
                .into_iter()
                .find(|r| r["resourceType"] == res.resource_type.as_str() && r["id"] == id)
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// What a definition test makes of its input: in a pull connector, the search (its
    /// `params` read as a caller's query, refused as a caller would be) or the read of its
    /// resource type; elsewhere, the connector's mapping of the document.
    pub fn run_test(&self, t: &Test) -> Result<Vec<Value>, TestRunError> {
        let Some(res) = self.pull_resource(t.resource_type.as_deref(), t.interaction) else {
            return Ok(self.map_document(&t.input, &t.params)?);
        };
        match (t.interaction, &res.search) {
            (Interaction::Read, _) => {
                let id = t.id.as_deref().unwrap_or_default();
                Ok(self.map_read(res, id, &t.input)?.into_iter().collect())
            }
            (Interaction::Search, Some(search)) => {
                let raw: Vec<(String, String)> = match &t.params {
                    Value::Object(o) => o
                        .iter()
                        .map(|(k, v)| {
                            let text = match v {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            (k.clone(), text)
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                let q = search_params::parse(&search.params, &raw)?;
                if q.matches_nothing {
                    return Ok(Vec::new());
                }
                Ok(self.map_search(res, &t.input, &q.params)?)
            }
            (Interaction::Search, None) => Ok(self.map_document(&t.input, &t.params)?),
        }
    }

    /// Maps records already selected, each with its path in the input (for errors), with the
    /// connector's mapping.
    pub fn map_records<'a>(
        &self,
        selected: impl IntoIterator<Item = (String, &'a Value)>,
        params: &Value,
    ) -> Result<Vec<Value>, MapError> {
        self.map_records_with(self.mapping.as_ref(), selected, params)
    }

    /// Maps records already selected, each with its path in the input (for errors), with
    /// `mapping` (`None`: records are taken as FHIR resources).
    pub fn map_records_with<'a>(
        &self,
        mapping: Option<&Mapping>,
        selected: impl IntoIterator<Item = (String, &'a Value)>,
        params: &Value,
    ) -> Result<Vec<Value>, MapError> {
        self.records_through(mapping, selected, params, Mapping::apply, |r| Ok(r.clone()))
    }

    /// What `map_records_with` makes, each resource written as JSON text directly (the
    /// same evaluation, without building `Value`s): for answers that only send them.
    pub fn write_records_with<'a>(
        &self,
        mapping: Option<&Mapping>,
        selected: impl IntoIterator<Item = (String, &'a Value)>,
        params: &Value,
    ) -> Result<Vec<mapping::Written>, MapError> {
        self.records_through(mapping, selected, params, Mapping::write, |r| {
            mapping::Written::of_value(r).map_err(|e| MapError {
                rule: "spec".into(),
                input: None,
                message: format!("could not be written as JSON: {e}"),
            })
        })
    }

    /// Records already selected, Bundles split when asked, each through `map` (with
    /// `mapping`) or, without a mapping, taken as a resource by `take`.
    fn records_through<'a, T>(
        &self,
        mapping: Option<&Mapping>,
        selected: impl IntoIterator<Item = (String, &'a Value)>,
        params: &Value,
        map: impl Fn(&Mapping, Input<'_>) -> Result<Vec<T>, MapError>,
        take: impl Fn(&Value) -> Result<T, MapError>,
    ) -> Result<Vec<T>, MapError> {
        let mut out = Vec::new();
        for (path, record) in selected {
            let split;
            let records: Vec<&Value> = if self.split_bundles
                && record.get("resourceType") == Some(&Value::from("Bundle"))
            {
                split = crate::model::fhir::split_bundle(record).map_err(|m| MapError {
                    rule: "spec.splitBundles".into(),
                    input: Some(path.clone()),
                    message: m.to_string(),
                })?;
                split.iter().collect()
            } else {
                vec![record]
            };
            for r in records {
                match mapping {
                    Some(m) => {
                        let input = Input {
                            record: r,
                            vars: &self.vars,
                            params,
                        };
                        out.extend(map(m, input).map_err(|mut e| {
                            e.input = Some(match e.input.take() {
                                Some(inner) => format!("{path}{}", inner.trim_start_matches('$')),
                                None => path.clone(),
                            });
                            e
                        })?);
                    }
                    None if r.get("resourceType").is_some_and(Value::is_string) => {
                        out.push(take(r)?)
                    }
                    None => {
                        return Err(MapError {
                            rule: "spec".into(),
                            input: Some(path.clone()),
                            message:
                                "the record is not a FHIR resource and the connector has no mapping"
                                    .into(),
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The records `records` selects in `document`, each with its path; the document itself
/// when there is no selector.
fn select<'a>(records: Option<&Query>, document: &'a Value) -> Vec<(String, &'a Value)> {
    match records {
        Some(q) => q
            .locate(document, document)
            .into_iter()
            .zip(q.select(document, document))
            .collect(),
        None => vec![("$".to_owned(), document)],
    }
}

/// Why a definition test made no FHIR: its search parameters are refused (as a caller's
/// would be, with 400), or the mapping failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TestRunError {
    #[error("the search is refused: {0}")]
    Refused(#[from] search_params::SearchParamError),
    #[error(transparent)]
    Map(#[from] MapError),
}
