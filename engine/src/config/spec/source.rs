//! Spec types of the outside world: sources (HTTP APIs and FHIR servers), their
//! authentication and pagination, request templates, and sinks.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::model::vocabulary::{
    BundleMode, FhirVersion, Method, NotFoundReading, RuleAction, SigningAlg, SourceType,
};

/// Where data comes from: a JSON HTTP API or a FHIR server.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourceSpec {
    /// Base URL (`http` or `https`); request paths are appended to it. Use either `url` or
    /// `path`.
    #[serde(default)]
    #[schemars(extend("examples" = ["https://api.regulator.example", "${env:EPI_FHIR_URL}"]))]
    pub url: Option<String>,
    /// A file source: a file, or a glob of files (`*`, `?`, `**`, `[abc]`, `{a,b}` in the
    /// file part), read instead of calling a URL; each file is decoded with `format`. A
    /// relative path is relative to the definition's directory and may not leave it (`..`);
    /// an absolute path may be anywhere (a mounted export). A cron run reads the files anew
    /// on each run; a pull route reads them on each answer it does not have cached (set
    /// `cache`), and ignores its request's path and query. With a glob the files are read in
    /// name order and their documents concatenated (an array's items, or the document
    /// itself), so `records: $[*]` selects the rows of all of them; no file matching is an
    /// empty array. Each file is bounded by `maxAnswer`, and all by `maxValues`.
    #[serde(default)]
    #[schemars(extend("examples" = ["exports/labs-*.csv", "/mnt/exports/**/*.ndjson"]))]
    pub path: Option<String>,
    /// How the source's answers (or files) are read: `json` by default (see `FormatSpec`).
    #[serde(default)]
    pub format: Option<super::format::FormatSpec>,
    /// `json` (default) for a JSON HTTP API, `fhir` for a FHIR server (searches, reads and
    /// batches pass through; FHIR `next` links are followed).
    #[serde(default, rename = "type")]
    pub kind: SourceType,
    /// FHIR version of a `fhir` source.
    #[serde(default)]
    pub fhir_version: Option<FhirVersion>,
    /// Headers sent with every request (values may use `${env:NAME}` / `${file:PATH}`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Authentication sent with every request.
    #[serde(default)]
    pub auth: Option<AuthSpec>,
    /// Mutual TLS: the client certificate and key presented to the source, and an extra CA
    /// to trust for it.
    #[serde(default)]
    pub tls: Option<TlsSpec>,
    /// Time allowed for one call to the source, e.g. `10s` (default `30s`): the first attempt
    /// and all its retries (backoff waits included) fit inside it, so a hung source fails
    /// after `timeout`, not `timeout` times `1 + retries`. Each attempt has what is left; the
    /// caller's own deadline, when earlier, cuts it shorter. Each page of a paged read is
    /// one call.
    #[serde(default)]
    #[schemars(extend("pattern" = "^([0-9]+(ms|s|m|h|d))+$"))]
    pub timeout: Option<String>,
    /// Retries of an idempotent request after a connection error, a timeout or a status of
    /// `statuses.retry` (default 2), with exponential backoff and jitter, honouring
    /// `Retry-After` (seconds or an HTTP date, at most 30 s), all within `timeout`. A retry
    /// is sent only while at least a quarter of `timeout` is left after its wait; a wait that
    /// would pass the caller's deadline is not waited: the request fails at once with the
    /// source's status. A refused connection is retried once, at once, and not at all while
    /// the source's `breaker` has counted failures already.
    #[serde(default)]
    #[schemars(range(max = 10))]
    pub retries: Option<u32>,
    /// Most requests in flight to this source at once (default 256: above the worker pools
    /// FHIR servers serve with by default, so that the server throttles before the engine
    /// does; set it lower for a source that cannot take that many).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1024))]
    pub concurrency: Option<u32>,
    /// A requests-per-second budget for this source, beside `concurrency`: a token bucket
    /// that holds `burst` requests and refills at `perSecond`. Every HTTP request to the
    /// source takes a token (retries, pages and each record's request included), whatever the
    /// route, run or connector that sends it; the budget is kept across reloads while the
    /// source keeps its name. A request waits for its token only while the wait fits its
    /// deadline (the source's `timeout`, or the caller's, when earlier); otherwise it fails
    /// at once as rate-limited (503 to a caller, with `Retry-After`), without being sent.
    /// Unset: no budget.
    #[serde(default)]
    pub rate: Option<RateSpec>,
    /// Most JSON values (objects, arrays, strings and object keys, numbers, literals) one
    /// answer of this source may hold (default 500000). They are counted on the answer's bytes
    /// before it is parsed, since a parsed value takes tens to hundreds of bytes of memory
    /// whatever its size in the text: an answer over the cap fails (502 to a caller, naming the
    /// source and the cap) before it takes memory. This also caps the records of a page.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_values: Option<u64>,
    /// How the source splits long answers into pages.
    #[serde(default)]
    pub pagination: Option<PaginationSpec>,
    /// Largest answer read from the source, e.g. `8MiB` (default `32MiB`). A larger answer,
    /// or one whose length differs from its `Content-Length`, is a failure (502).
    #[serde(default)]
    #[schemars(extend("pattern" = "^[0-9]+(B|KB|MB|GB|KiB|MiB|GiB)?$"))]
    pub max_answer: Option<String>,
    /// How the source's statuses and bodies read. Without it, a 404 on a search is an error
    /// (502 with the source's message, so that a wrong path is seen), a 404 on a read is
    /// "not found" (404), and 429, 502, 503 and 504 are retried.
    #[serde(default)]
    pub statuses: Option<StatusesSpec>,
    /// The source's circuit breaker (on by default: 5 failures, 30 s cool-down).
    #[serde(default)]
    pub breaker: Option<BreakerSpec>,
}

/// A token bucket: `perSecond` requests a second on average, `burst` at once after a quiet
/// spell.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateSpec {
    /// Requests a second, more than 0 (a fraction for slower budgets: `0.5` is one request
    /// every two seconds), at most 100000.
    #[schemars(extend("examples" = [10, 0.5]))]
    pub per_second: f64,
    /// Requests that may go at once when the bucket is full, 1 to 100000 (default: `perSecond`
    /// rounded up, at least 1).
    #[serde(default)]
    #[schemars(range(min = 1, max = 100000))]
    pub burst: Option<u32>,
}

/// A circuit breaker: after `failures` failed calls in a row the source is not called for
/// `coolDown`; calls fail at once meanwhile (a search answers without the source, naming it
/// in its `OperationOutcome`; a cron run fails at once). Then one probe call is let through:
/// its success closes the breaker, its failure opens it for another `coolDown`. A failure is
/// a timeout, a connection failure, a broken answer, or a status of 500 and above or 429; a
/// 4xx the caller caused, or an answer that cannot be used, is not.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BreakerSpec {
    /// Failed calls in a row that open the breaker (default 5).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub failures: Option<u32>,
    /// How long the breaker stays open before a probe call, e.g. `10s` (default `30s`).
    #[serde(default)]
    #[schemars(extend("pattern" = "^([0-9]+(ms|s|m|h|d))+$"))]
    pub cool_down: Option<String>,
}

/// How a source's answers read.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StatusesSpec {
    /// What a 404 means: `empty` (no data: an empty searchset, which may be cached; a read
    /// answers 404), `notFound` (404 to the caller with the source's message) or `error` (502
    /// with the source's message, never cached). Default: `error` for a search, `notFound`
    /// for a read.
    #[serde(default)]
    pub not_found: Option<NotFoundReading>,
    /// Statuses after which an idempotent request is sent again (default `[429, 502, 503,
    /// 504]`); each from 400 to 599.
    #[serde(default)]
    #[schemars(length(max = 200))]
    #[schemars(extend("examples" = [[429, 503]]))]
    pub retry: Option<Vec<u16>>,
    /// JSONPath over a 2xx answer: when it matches a value other than `null`, `false` or an
    /// empty string, the answer is a failure (502) whose message is the matched text, e.g.
    /// `$.error` or `$.status[?@ == 'error']`.
    #[serde(default)]
    #[schemars(extend("examples" = ["$.error"]))]
    pub error_when: Option<String>,
    /// How answers are classified, beyond their status: rules tried in order (after
    /// `errorWhen`, a shorthand for a rule with `path` and `action: error`), the first whose
    /// conditions all hold deciding what the answer is. At most 50.
    #[serde(default)]
    #[schemars(length(max = 50))]
    pub rules: Vec<ResponseRuleSpec>,
}

/// A response classification rule: conditions (at least one of `status`, `path`, `header`;
/// all that are given must hold) and the `action` taken on an answer that meets them. As
/// Airbyte's `response_filters`, for sources that answer `200` with an error inside.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResponseRuleSpec {
    /// Statuses the rule applies to, each from 200 to 599 (default: any 2xx). An error
    /// status listed here is read through the rule (its body and headers too) instead of as
    /// an error status.
    #[serde(default)]
    #[schemars(length(max = 100))]
    #[schemars(extend("examples" = [[200], [404]]))]
    pub status: Option<Vec<u16>>,
    /// JSONPath over the answer's body: the rule holds when it matches a value other than
    /// `null`, `false` or an empty string (or, with `equals`, when a value it matches equals
    /// `equals`).
    #[serde(default)]
    #[schemars(extend("examples" = ["$.error.code", "$.status"]))]
    pub path: Option<String>,
    /// The value `path` must match (a string, number or boolean).
    #[serde(default)]
    #[schemars(extend("examples" = ["THROTTLED"]))]
    pub equals: Option<Value>,
    /// A header the answer must carry (any value), e.g. `X-Error`.
    #[serde(default)]
    pub header: Option<String>,
    /// What the answer is then.
    pub action: RuleAction,
    /// JSONPath to the failure's message (for `error` and `retry`; default: the text `path`
    /// matched, or the source's own message).
    #[serde(default)]
    #[schemars(extend("examples" = ["$.error.message"]))]
    pub message: Option<String>,
    /// JSONPath to the seconds to wait before sending again (`rateLimited`, `retry`), a
    /// number or a numeric string.
    #[serde(default)]
    #[schemars(extend("examples" = ["$.error.retryAfter"]))]
    pub delay_path: Option<String>,
    /// A header holding the seconds to wait before sending again (`rateLimited`, `retry`);
    /// default `Retry-After`.
    #[serde(default)]
    #[schemars(extend("examples" = ["X-RateLimit-Reset-After"]))]
    pub delay_header: Option<String>,
}

/// Authentication of outbound requests: exactly one of `bearer`, `apiKey`, `basic`,
/// `oauth2`, `smartBackend`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthSpec {
    /// `Authorization: Bearer <token>`.
    #[serde(default)]
    pub bearer: Option<BearerSpec>,
    /// A key in a header of its own.
    #[serde(default)]
    pub api_key: Option<ApiKeySpec>,
    /// HTTP basic authentication.
    #[serde(default)]
    pub basic: Option<BasicSpec>,
    /// OAuth2 client credentials grant.
    #[serde(default)]
    pub oauth2: Option<OAuth2Spec>,
    /// SMART Backend Services: a client assertion signed with a private key.
    #[serde(default)]
    pub smart_backend: Option<SmartBackendSpec>,
}

/// OAuth2 client credentials (RFC 6749, section 4.4): the engine asks `tokenUrl` for an access
/// token, authenticating with HTTP basic (`clientId`:`clientSecret`), and sends it as
/// `Authorization: Bearer`. The token is kept until shortly before it expires (`expires_in`
/// less a tenth of it, at most 30 s; 60 s when the endpoint gives no `expires_in`); one token
/// request at a time per source, concurrent calls wait for it. A 401 from the source renews
/// the token once and sends the call again; a second 401 stands. The token endpoint's answer
/// is bounded (64 KiB, the source's `timeout`); its refusal fails the call with the endpoint's
/// `error` and `error_description`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OAuth2Spec {
    /// The token endpoint: `https`, or `http` only to `127.0.0.1` or `localhost`.
    #[schemars(extend("examples" = ["https://auth.example.org/oauth2/token"]))]
    pub token_url: String,
    /// The client id.
    pub client_id: String,
    /// The client secret: only as `${env:NAME}` or `${file:PATH}`, never written literally.
    #[schemars(extend("examples" = ["${env:LABS_CLIENT_SECRET}"]))]
    pub client_secret: String,
    /// Scopes asked for (sent space-separated as `scope`).
    #[serde(default)]
    #[schemars(length(max = 100))]
    pub scopes: Vec<String>,
    /// The `audience` parameter some servers require (Auth0 and others).
    #[serde(default)]
    pub audience: Option<String>,
}

/// SMART Backend Services (HL7 SMART App Launch, client credentials with a private key JWT):
/// for each token the engine signs a client assertion (`iss` and `sub` the client id, `aud`
/// the token URL, `exp` 4 minutes ahead, a unique `jti`, header `kid` and `jku` when set) and
/// posts it with `grant_type=client_credentials` and `scope`. Tokens are kept, shared and
/// renewed as for `oauth2`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SmartBackendSpec {
    /// The token endpoint: `https`, or `http` only to `127.0.0.1` or `localhost`.
    pub token_url: String,
    /// The client id registered with the server.
    pub client_id: String,
    /// The private key, PKCS#8 PEM (RSA for `RS384`, P-384 for `ES384`): only as
    /// `${file:PATH}` or `${env:NAME}`, never written literally.
    #[schemars(extend("examples" = ["${file:/run/secrets/smart-key.pem}"]))]
    pub private_key: String,
    /// The signing algorithm of the assertion.
    pub alg: SigningAlg,
    /// The key id of the public key the server has registered (JWT header `kid`).
    pub kid: String,
    /// The URL of the client's JWK Set (JWT header `jku`), when the server needs it.
    #[serde(default)]
    pub jku: Option<String>,
    /// Scopes asked for, e.g. `system/Patient.rs` (sent space-separated as `scope`).
    #[serde(default)]
    #[schemars(length(max = 100))]
    pub scopes: Vec<String>,
}

/// TLS with a source, a sink or a guide server: a client certificate (mutual TLS) and an extra
/// CA to trust, PEM text, normally `${file:PATH}`. A party with `tls` has a connection pool of
/// its own.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsSpec {
    /// The client certificate (chain), PEM; with `clientKey`.
    #[serde(default)]
    #[schemars(extend("examples" = ["${file:/run/secrets/client.crt}"]))]
    pub client_cert: Option<String>,
    /// The client certificate's private key, PEM: only as `${file:PATH}` or `${env:NAME}`;
    /// with `clientCert`.
    #[serde(default)]
    #[schemars(extend("examples" = ["${file:/run/secrets/client.key}"]))]
    pub client_key: Option<String>,
    /// CA certificates (PEM, one or more) trusted for this source besides the system's roots.
    #[serde(default)]
    #[schemars(extend("examples" = ["${file:/etc/ssl/labs-ca.pem}"]))]
    pub ca: Option<String>,
}

/// A bearer token.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BearerSpec {
    /// The token, normally `${env:NAME}` or `${file:PATH}`.
    #[schemars(extend("examples" = ["${env:LABELS_TOKEN}"]))]
    pub token: String,
}

/// An API key sent in a header.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    /// Header name, e.g. `X-Api-Key`.
    pub header: String,
    /// The key, normally `${env:NAME}` or `${file:PATH}`.
    pub value: String,
}

/// A user name and password.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicSpec {
    pub username: String,
    pub password: String,
}

/// Pagination: exactly one of `nextUrl`, `linkHeader`, `fhir`, `offset`, `page`, `cursor`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PaginationSpec {
    /// JSONPath to the URL of the next page in the answer body.
    #[serde(default)]
    pub next_url: Option<String>,
    /// Follow `Link: <...>; rel="next"` headers.
    #[serde(default)]
    pub link_header: Option<bool>,
    /// Follow a FHIR Bundle's `link` with relation `next`.
    #[serde(default)]
    pub fhir: Option<bool>,
    /// Offset and limit query parameters.
    #[serde(default)]
    pub offset: Option<OffsetSpec>,
    /// Page number query parameter.
    #[serde(default)]
    pub page: Option<PageSpec>,
    /// A cursor taken from the answer and sent back as a query parameter.
    #[serde(default)]
    pub cursor: Option<CursorSpec>,
    /// Most pages read for one answer or run (default 1000).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_pages: Option<u32>,
}

/// Offset pagination.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OffsetSpec {
    /// Query parameter of the offset, e.g. `skip`.
    pub param: String,
    /// Query parameter of the page size, e.g. `limit`.
    pub limit_param: String,
    /// Page size.
    #[schemars(range(min = 1))]
    pub limit: u32,
}

/// Page-number pagination.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PageSpec {
    /// Query parameter of the page number.
    pub param: String,
    /// Number of the first page (default 1).
    #[serde(default)]
    pub start: Option<u32>,
}

/// Cursor pagination.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CursorSpec {
    /// JSONPath to the next cursor in the answer; none or null ends the pages.
    pub path: String,
    /// Query parameter that carries the cursor.
    pub param: String,
}

/// A request to a source, built from templates. Strings are Handlebars templates over
/// `params` (caller values, encoded), `vars` and `id`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestSpec {
    /// HTTP method (default `GET`).
    #[serde(default)]
    pub method: Option<Method>,
    /// Path appended to the source URL; values from templates are percent-encoded as one
    /// path segment each.
    #[schemars(extend("examples" = ["/drug/label.json", "/labels/{{id}}"]))]
    pub path: String,
    /// Query parameters; a parameter whose value renders empty is left out.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Extra headers for this request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A JSON body, written as a structural template.
    #[serde(default)]
    pub body: Option<Value>,
}

/// Where cron and push connectors write: exactly one of `fhir`, `ndjson`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SinkSpec {
    /// A FHIR server.
    #[serde(default)]
    pub fhir: Option<FhirSinkSpec>,
    /// A directory of NDJSON files, one per resource type (FHIR Bulk Data layout).
    #[serde(default)]
    pub ndjson: Option<NdjsonSinkSpec>,
}

/// A FHIR server sink.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FhirSinkSpec {
    /// Base URL of the FHIR server.
    #[schemars(extend("examples" = ["${env:EPI_FHIR_URL}"]))]
    pub url: String,
    /// FHIR version of the server (`R4` or `R5`; the ePI server is R5).
    pub version: FhirVersion,
    /// Authentication of writes, as a source's: `bearer`, `apiKey`, `basic`, or a token from
    /// `oauth2` or `smartBackend` (kept until shortly before it expires, renewed once after a
    /// 401; asking for it is bounded by `timeout`; a token endpoint that refuses or cannot be
    /// reached fails the write with its reason, a transient one to be tried again).
    #[serde(default)]
    pub auth: Option<AuthSpec>,
    /// Mutual TLS with the server: a client certificate and key, and an extra CA, as a
    /// source's `tls`.
    #[serde(default)]
    pub tls: Option<TlsSpec>,
    /// Time allowed for one write, e.g. `60s` (default `60s`).
    #[serde(default)]
    #[schemars(extend("pattern" = "^([0-9]+(ms|s|m|h|d))+$"))]
    pub timeout: Option<String>,
    /// Resources per Bundle (default 100).
    #[serde(default)]
    #[schemars(range(min = 1, max = 10000))]
    pub batch_size: Option<u32>,
    /// Bundles of one write posted at once (default 1: one after the other). Raise it only
    /// for a server that applies transactions in parallel: one that serialises them (Helios
    /// on SQLite answers 503 to a transaction that arrives while another runs) gains nothing
    /// and retries. Order still holds where it matters: a Bundle whose resources reference
    /// resources of an earlier Bundle is posted only once that Bundle is answered; each
    /// Bundle is retried and reported on its own, as with 1.
    #[serde(default)]
    #[schemars(range(min = 1, max = 32))]
    pub concurrency: Option<u32>,
    /// `transaction` (default: all or nothing per Bundle) or `batch`.
    #[serde(default)]
    pub mode: Option<BundleMode>,
    /// Retries of a Bundle after a transient failure (default 3).
    #[serde(default)]
    #[schemars(range(max = 10))]
    pub retries: Option<u32>,
    /// Write a Provenance resource in each Bundle (default `false`): one per push delivery,
    /// one per cron run's Bundle, targeting the resources written with it (`agent`: the
    /// engine and connector, `entity`: the source). Its id is deterministic, so a queued push
    /// whose write was cut by a crash is looked up (`GET Provenance/{id}`) before it is written
    /// again: with `mode: transaction` this makes queued pushes exactly once.
    #[serde(default)]
    pub provenance: Option<bool>,
}

/// An NDJSON directory sink.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NdjsonSinkSpec {
    /// Directory of the files (created when missing).
    pub dir: String,
}
