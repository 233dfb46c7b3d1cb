//! The command line's words: the commands, their flags and the values they take (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::diagnostic::Format;

/// FOSPS connector engine: YAML connector definitions turned into FHIR routes, webhooks and
/// schedules.
#[derive(Debug, Parser)]
#[command(name = "engine", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The main job: load the definitions and serve their routes, the admin API and
    /// operations endpoints. Refuses to start on invalid definitions.
    Serve(Box<ServeArgs>),
    /// Run one cron connector once and exit: non-zero on any failure (for Kubernetes
    /// CronJobs).
    Run {
        /// Name of the cron connector.
        name: String,
        /// Definitions to load.
        #[arg(long = "definitions", short = 'd', default_value = "connectors.d")]
        definitions: Vec<PathBuf>,
        /// Read and map, and print the FHIR that would be written, writing nothing.
        #[arg(long)]
        dry_run: bool,
        /// What goes to standard output: `text` (the FHIR of a dry run; the report as lines on
        /// standard error) or `json` (the run report as one JSON object, with the FHIR of a dry
        /// run in its `resources`, for scripts). The progress goes to standard error either
        /// way: drawn live on a terminal, as plain `progress:` lines otherwise.
        #[arg(long, value_enum, default_value = "text")]
        output: RunOutput,
        #[command(flatten)]
        dirs: DirArgs,
        #[command(flatten)]
        otlp: OtlpArgs,
    },
    /// Check definitions without network: schema, meaning, expressions, templates, cron,
    /// references, routes, and the definitions' own tests. Exit 0 valid, 1 invalid, 2
    /// unusable invocation.
    Validate {
        /// Files and directories of definitions.
        #[arg(default_value = "connectors.d")]
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
        /// Fail on warnings too.
        #[arg(long)]
        deny_warnings: bool,
        /// Unresolvable `${env:...}` / `${file:...}` are warnings (CI runs without secrets).
        #[arg(long)]
        allow_unresolved: bool,
        /// Skip the definitions' `tests:`.
        #[arg(long)]
        no_tests: bool,
        /// Check the FHIR produced by tests against this FHIR R4 JSON Schema file.
        #[arg(long, value_name = "FILE")]
        fhir_schema: Option<PathBuf>,
    },
    /// Check that one connector's outside parts answer: each source is called once (the first
    /// page of the connector's own request, parameters from `--param` or its first test that
    /// has some) and a FHIR sink is asked for its `metadata` (its FHIR version against the
    /// connector's), with the real credentials. One line per part: status, latency, content
    /// type, FHIR version, or what failed (dns, refused, tls, unauthorized, forbidden,
    /// timeout). Exit 0 when all answered, 1 otherwise, 2 unusable invocation.
    Check {
        /// Name of the connector.
        name: String,
        /// Definitions to load.
        #[arg(long = "definitions", short = 'd', default_value = "connectors.d")]
        definitions: Vec<PathBuf>,
        /// Caller parameters of a pull search request, as NAME=VALUE.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// `text` (one line per part) or `json` (one object, for scripts).
        #[arg(long, value_enum, default_value = "text")]
        output: RunOutput,
    },
    /// Work with one push or cron connector's dead letters on a running engine, through its
    /// admin API: `list` (a page: id, received, size, reason), `show ID` (payload, reason and
    /// the OperationOutcome kept with it), `replay ID` (sent again through the current
    /// definition; removed once written, kept with the new reason when not), `delete ID`. The
    /// bearer token is read from `ENGINE_ADMIN_TOKEN`. Exit 0 done, 1 the engine could not (no
    /// such letter, busy, not written), 2 unusable invocation (bad URL, no answer, token
    /// refused).
    DeadLetters {
        /// Name of the push or cron connector.
        name: String,
        #[command(subcommand)]
        action: DeadLetterAction,
        /// Base URL of the engine's admin API.
        #[arg(
            long,
            env = "ENGINE_URL",
            default_value = "http://127.0.0.1:8080",
            global = true
        )]
        url: String,
        /// `text` (lines for people) or `json` (the engine's answers, for scripts).
        #[arg(long, value_enum, default_value = "text", global = true)]
        output: RunOutput,
    },
    /// Check that an engine answers: GET an `http://` URL, exit 0 on a 2xx answer (the
    /// image's health check, which has no curl).
    Probe {
        /// URL to get.
        #[arg(default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
    /// Generate the per-connector Kubernetes and Istio manifests (ConfigMap of the
    /// definitions, VirtualService routes, AuthorizationPolicy, CronJobs).
    Manifests {
        /// Files and directories of definitions.
        #[arg(default_value = "connectors.d")]
        paths: Vec<PathBuf>,
        /// Directory the files are written to.
        #[arg(long, default_value = "deploy/base")]
        out: PathBuf,
        /// Only compare with the files in `--out`; exit 1 when they differ.
        #[arg(long)]
        check: bool,
        /// Public path prefix on the gateway.
        #[arg(long, default_value = "/connector/api/")]
        prefix: String,
        /// Image of the CronJobs.
        #[arg(long, default_value = "gravitatehealth/fosps-connector-engine:latest")]
        image: String,
    },
    /// Print the OpenAPI document of the configured routes.
    Openapi {
        /// Files and directories of definitions.
        #[arg(default_value = "connectors.d")]
        paths: Vec<PathBuf>,
        /// Public path prefix the routes are reached under (e.g. `/connector/api`).
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Print the JSON Schema (2020-12) of the definition format, or its Markdown reference.
    Schema {
        /// `json` (the schema) or `markdown` (the format reference).
        #[arg(long, value_enum, default_value = "json")]
        format: SchemaFormat,
    },
    /// Apply one connector's mapping to a sample input and print the FHIR.
    Map {
        /// Name of the connector.
        #[arg(long)]
        connector: String,
        /// Input JSON file (a source answer or a push payload); `-` reads standard input.
        #[arg(long)]
        input: PathBuf,
        /// Definitions to load.
        #[arg(long = "definitions", short = 'd', default_value = "connectors.d")]
        definitions: Vec<PathBuf>,
        /// What of a pull connector is mapped: which type, search or read, with what.
        #[command(flatten)]
        target: MapTarget,
        /// Print a Bundle of this type instead of a list of resources.
        #[arg(long, value_enum)]
        bundle: Option<BundleArg>,
        /// Check the output against this FHIR R4 JSON Schema file.
        #[arg(long, value_name = "FILE")]
        fhir_schema: Option<PathBuf>,
        /// Check the output against the structure of the connector's FHIR version; exit 1
        /// with the problems when a resource is invalid.
        #[arg(long)]
        check: bool,
    },
}

/// What `engine map` runs of a pull connector: a search of a resource type (its parameters
/// read as the route reads a caller's query) or a read of one id.
#[derive(Debug, Clone, clap::Args)]
pub struct MapTarget {
    /// Caller parameters of a pull search, as NAME=VALUE, as a caller writes them in the
    /// query (`code=http://sys|123`, `name:exact=Foo`), checked as the route checks them.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// The pull resource type whose search or read is mapped (default: the first that has
    /// the interaction).
    #[arg(long = "type", value_name = "TYPE")]
    pub resource_type: Option<String>,
    /// Map the input as the answer of a read of this id (with the read's mapping), printing
    /// the one resource the read answers.
    #[arg(long, value_name = "ID", conflicts_with = "params")]
    pub read: Option<String>,
}

/// What `engine dead-letters` does.
#[derive(Debug, Clone, Subcommand)]
pub enum DeadLetterAction {
    /// A page of the dead letters, oldest first.
    List {
        /// Most letters listed (1 to 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
        /// List the letters after this id (the next page).
        #[arg(long, value_name = "ID")]
        after: Option<String>,
    },
    /// One letter: its payload, reason and OperationOutcome.
    Show { id: String },
    /// Send a letter again through the connector's current definition.
    Replay { id: String },
    /// Remove a letter.
    Delete { id: String },
}

/// The OTLP export of spans, for `serve` and `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct OtlpArgs {
    /// An OTLP/HTTP collector (`http://HOST:4318`; `/v1/traces` is added) that gets a span
    /// per inbound request, per source call attempt and per sink post, with the W3C trace ids the engine
    /// carries, as OTLP JSON in background batches. A collector that is down or slow costs
    /// requests nothing: spans that do not fit the bounded queue are dropped and counted
    /// (`engine_otlp_spans_total{outcome="dropped"}`). Spans still queued when the
    /// process ends are posted first, for at most 3 s.
    #[arg(long, env = "ENGINE_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Most spans waiting for the OTLP collector; more are dropped and counted.
    #[arg(long, env = "ENGINE_OTLP_QUEUE", default_value_t = crate::runtime::otlp::DEFAULT_QUEUE, value_parser = clap::value_parser!(usize))]
    pub otlp_queue: usize,
}

/// Where local state and the embedded NDJSON sink live.
#[derive(Debug, Clone, clap::Args)]
pub struct DirArgs {
    /// Local state: watermarks, push queues and dead letters.
    #[arg(long, env = "ENGINE_STATE_DIR", default_value = ".engine-state")]
    pub state_dir: PathBuf,
    /// Directory of the embedded NDJSON sink (default: `ndjson` in the state directory).
    #[arg(long, env = "ENGINE_SINK_DIR")]
    pub sink_dir: Option<PathBuf>,
}

impl DirArgs {
    pub(super) fn dirs(&self) -> crate::runtime::engine::Dirs {
        crate::runtime::engine::Dirs {
            state: self.state_dir.clone(),
            sink: self
                .sink_dir
                .clone()
                .unwrap_or_else(|| self.state_dir.join("ndjson")),
        }
    }
}

/// Output of `engine run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RunOutput {
    Text,
    Json,
}

/// Log formats of `engine serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Output of `engine schema`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaFormat {
    Json,
    Markdown,
}

/// Bundle types `engine map --bundle` assembles.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BundleArg {
    Collection,
    Transaction,
    Batch,
    Searchset,
}

/// Who may call the admin API of `engine serve` (`/connectors...`, `/reload`). With none of
/// these flags the admin API is closed: every request to it is answered 403.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// File holding a static bearer token (at least 16 characters) that allows every admin
    /// request; for local use and scripts. A file, not a flag value, so that the token does not
    /// show in `ps`.
    #[arg(long, env = "ENGINE_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// OIDC issuer whose access tokens (JWT, RS256 or ES256) are accepted, e.g.
    /// `https://HOST/auth/realms/GravitateHealth`.
    #[arg(
        long,
        env = "ENGINE_OIDC_ISSUER",
        value_name = "URL",
        requires = "oidc_audience"
    )]
    pub oidc_issuer: Option<String>,
    /// The audience (`aud`) an access token must name (the Keycloak client of the engine);
    /// that client's roles count as roles too.
    #[arg(long, env = "ENGINE_OIDC_AUDIENCE", requires = "oidc_issuer")]
    pub oidc_audience: Option<String>,
    /// The issuer's JWKS (default: the `jwks_uri` of its
    /// `/.well-known/openid-configuration`), e.g. Keycloak's address inside the cluster.
    #[arg(
        long,
        env = "ENGINE_OIDC_JWKS_URL",
        value_name = "URL",
        requires = "oidc_issuer"
    )]
    pub oidc_jwks_url: Option<String>,
    /// Role (Keycloak realm role, client role of the audience, or scope) that allows every
    /// admin request: reading, starting runs, emptying caches.
    #[arg(long, env = "ENGINE_ADMIN_ROLE", default_value = crate::generate::manifests::ADMIN_ROLE)]
    pub admin_role: String,
    /// Role that allows the reading admin requests only: listings, `/reload`, dead letters.
    #[arg(long, env = "ENGINE_ADMIN_READ_ROLE", default_value = crate::generate::manifests::ADMIN_READ_ROLE)]
    pub admin_read_role: String,
    /// Open the admin API to every caller, without authentication: for local use only
    /// (logged as a warning).
    #[arg(
        long,
        env = "ENGINE_ADMIN_OPEN",
        conflicts_with_all = ["admin_token_file", "oidc_issuer"]
    )]
    pub admin_open: bool,
}

/// The flags of `engine serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Files and directories of definitions.
    #[arg(default_value = "connectors.d")]
    pub paths: Vec<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "ENGINE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// Log format.
    #[arg(long, env = "ENGINE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter (`info`, `debug`, `engine=debug,warn`).
    #[arg(long, env = "ENGINE_LOG", default_value = "info")]
    pub log: String,
    /// Public base URL used in links (e.g. `https://fosps.example/connector/api`); by
    /// default the `Host` header.
    #[arg(long, env = "ENGINE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Longest time a request may take before it is answered 504.
    #[arg(long, env = "ENGINE_REQUEST_TIMEOUT", default_value = "60s")]
    pub request_timeout: String,
    /// Largest request body.
    #[arg(long, env = "ENGINE_MAX_BODY", default_value = "10MiB")]
    pub max_body: String,
    #[command(flatten)]
    pub dirs: DirArgs,
    /// Run the cron schedules in this process (off when Kubernetes CronJobs run them).
    #[arg(long, env = "ENGINE_RUN_SCHEDULES", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_schedules: bool,
    /// Time given to requests in flight when a shutdown signal arrives.
    #[arg(long, env = "ENGINE_SHUTDOWN_GRACE", default_value = "10s")]
    pub shutdown_grace: String,
    /// Time the engine goes on serving after a shutdown signal, with `/readyz` answering 503,
    /// before it stops accepting (so that a load balancer sends traffic elsewhere first).
    #[arg(long, env = "ENGINE_SHUTDOWN_DELAY", default_value = "0s")]
    pub shutdown_delay: String,
    /// Longest wait for a request's headers, also on an idle kept-alive connection; then the
    /// connection is closed.
    #[arg(long, env = "ENGINE_HEADER_READ_TIMEOUT", default_value = "10s")]
    pub header_read_timeout: String,
    /// Most connections served at once; more wait to be accepted.
    #[arg(long, env = "ENGINE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// A cache tier shared by replicas, `redis://[user:password@]HOST:PORT[/DB]`: behind each
    /// in-memory pull cache (one source call per key across replicas, invalidations reaching
    /// every replica), and claiming each schedule tick so that it runs in one replica. When
    /// Redis is away, the engine serves from memory and the sources. The URL is never shown.
    #[arg(long, env = "ENGINE_SHARED_CACHE", hide_env_values = true)]
    pub shared_cache: Option<String>,
    #[command(flatten)]
    pub otlp: OtlpArgs,
    /// Queued pushes on Redis Streams shared by replicas, `redis://[user:password@]HOST:PORT[/DB]`,
    /// instead of each pod's state directory: a 202 means Redis has the payload (on disk when
    /// the server runs `appendonly yes` and `appendfsync always`, checked at start), any
    /// replica drains, and a dead replica's entries are taken over. Its own setting, apart
    /// from `--shared-cache`: a cache server may evict, a queue's must not. The URL is never
    /// shown.
    #[arg(long, env = "ENGINE_PUSH_QUEUE", hide_env_values = true)]
    pub push_queue: Option<String>,
    /// Most payloads waiting in one connector's Redis queue; more are answered 503.
    #[arg(long, env = "ENGINE_PUSH_QUEUE_LIMIT", default_value_t = 100_000)]
    pub push_queue_limit: usize,
    /// Idle time after which a replica takes over the Redis queue entries another replica
    /// read and did not acknowledge (a replica that died); a live replica keeps the entry it
    /// writes touched, so this needs not exceed the longest write.
    #[arg(long, env = "ENGINE_PUSH_QUEUE_CLAIM_AFTER", default_value = "30s")]
    pub push_queue_claim_after: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}
