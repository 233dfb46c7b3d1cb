//! The connectivity check of one connector (`engine check NAME`): each source is called once
//! (the first page of the connector's own request, with the real credentials, its timeout
//! bounding the call) and a FHIR sink is asked `GET [base]/metadata`, whose FHIR version is
//! compared with the connector's. What answered is reported per part; a failure is named by
//! what failed (DNS, refused, TLS, 401/403, timeout, another status, an unusable answer). No
//! URL path, query or credential appears in a report: only the origin.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use serde_json::Value;

use crate::model::vocabulary::{FhirVersion, SourceType};
use crate::model::{
    BreakerSettings, Connector, CronRead, FhirSink, Sink, SinkRef, Source, Statuses, Strategy,
};
use crate::runtime::metrics::Metrics;
use crate::runtime::trace_context::TraceContext;
use crate::runtime::upstream::{Call, Failure, FailureKind, Upstreams};

/// What one part (a source or the sink) answered.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PartReport {
    /// `source NAME` or `sink NAME`.
    pub part: String,
    /// The origin called (`https://host:port`), never a path, query or credential.
    pub origin: String,
    /// True when the part answered as it should.
    pub ok: bool,
    /// The status it answered, when it answered.
    pub status: Option<u16>,
    /// Time to the whole answer (or to the failure), in milliseconds.
    pub latency_ms: u64,
    pub content_type: Option<String>,
    /// The FHIR version the part reports (`fhirVersion` of its CapabilityStatement).
    pub fhir_version: Option<String>,
    /// What failed: `dns`, `refused`, `tls`, `unauthorized`, `forbidden`, `timeout`,
    /// `status`, `unusable`, `version`, `request`.
    pub failure: Option<String>,
    /// One line on the failure, for people.
    pub detail: Option<String>,
}

/// Why the check could not be made for a part.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot build the clients: {0}")]
    Build(#[from] crate::runtime::build_error::BuildError),
}

/// Checks every source of `connector` and its FHIR sink, once each. `params` are the caller
/// parameters of a pull search request.
pub async fn check(
    connector: &Arc<Connector>,
    params: &Value,
) -> Result<Vec<PartReport>, CheckError> {
    let metrics = Arc::new(Metrics::default());
    let upstreams = Upstreams::new(connector.sources.iter().cloned(), metrics.clone())?;
    let mut out = Vec::new();
    for source in &connector.sources {
        let Some(client) = upstreams.get(&source.name) else {
            continue;
        };
        let part = format!("source {}", source.name);
        let call = match source_call(connector, source, params) {
            Ok(call) => call,
            Err(e) => {
                out.push(failed(&part, &source.url, "request", e, 0, None));
                continue;
            }
        };
        let fhir = source.kind == SourceType::Fhir && call.url.path().ends_with("/metadata");
        let started = Instant::now();
        let answer = client
            .send(&call, &TraceContext::fresh("connectivity-check"), None)
            .await;
        let elapsed = started.elapsed();
        out.push(
            report(
                &part,
                &source.url,
                answer,
                elapsed,
                fhir.then_some(connector.fhir_version),
            )
            .await,
        );
    }
    if let Some(sink) = sink_of(connector) {
        out.push(check_sink(sink, connector.fhir_version, metrics).await?);
    }
    Ok(out)
}

fn sink_of(connector: &Connector) -> Option<&FhirSink> {
    let sink = match &connector.strategy {
        Strategy::Cron(c) => &c.sink,
        Strategy::Push(p) => &p.sink,
        Strategy::Pull(_) => return None,
    };
    match sink {
        SinkRef::Named(s) => match s.as_ref() {
            Sink::Fhir(f) => Some(f),
            Sink::Ndjson { .. } => None,
        },
        SinkRef::Default => None,
    }
}

/// The call that checks a source: the connector's first request (a pull search, a cron
/// fetch), or a FHIR source's `metadata`.
fn source_call(connector: &Connector, source: &Source, params: &Value) -> Result<Call, String> {
    let request = match &connector.strategy {
        Strategy::Pull(p) => p
            .resources
            .iter()
            .find_map(|r| r.search.as_ref().and_then(|s| s.request.as_ref())),
        Strategy::Cron(c) => match &c.read {
            CronRead::Fetch { request, .. } => Some(request),
            _ => None,
        },
        Strategy::Push(_) => None,
    };
    match request {
        Some(r) if source.kind != SourceType::Fhir => {
            let mut params = params.clone();
            if params.get("watermark").is_none()
                && let Value::Object(o) = &mut params
            {
                o.insert("watermark".into(), Value::String(String::new()));
            }
            crate::runtime::request::build(connector, &source.url, r, &params, None)
                .map_err(|e| e.to_string())
        }
        _ => Ok(metadata_call(&source.url)),
    }
}

fn metadata_call(base: &url::Url) -> Call {
    let mut url = base.clone();
    let path = format!("{}/metadata", base.path().trim_end_matches('/'));
    url.set_path(&path);
    url.set_query(None);
    Call {
        method: Method::GET,
        url,
        headers: vec![(ACCEPT, HeaderValue::from_static("application/fhir+json"))],
        body: None,
    }
}

/// Asks a FHIR sink for its CapabilityStatement, with its credentials and timeout.
async fn check_sink(
    sink: &FhirSink,
    want: FhirVersion,
    metrics: Arc<Metrics>,
) -> Result<PartReport, CheckError> {
    // The sink is called as a source would be: the same client, headers, auth and limits.
    let as_source = Arc::new(Source {
        name: sink.name.clone(),
        url: sink.url.clone(),
        kind: SourceType::Fhir,
        fhir_version: Some(sink.version),
        headers: Vec::new(),
        auth: sink.auth.clone(),
        tls: sink.tls.clone(),
        timeout: sink.timeout,
        retries: 0,
        concurrency: 1,
        pagination: None,
        max_pages: 1,
        max_values: 1_000_000,
        max_answer: crate::model::DEFAULT_MAX_ANSWER,
        statuses: Statuses {
            not_found: None,
            retry: Vec::new(),
            error_when: None,
            rules: Vec::new(),
        },
        breaker: BreakerSettings {
            failures: u32::MAX,
            cool_down: Duration::from_secs(1),
        },
        rate: None,
        format: crate::model::decode::Format::Json,
        files: None,
    });
    let upstreams = Upstreams::new([as_source], metrics)?;
    let part = format!("sink {}", sink.name);
    let Some(client) = upstreams.get(&sink.name) else {
        return Ok(failed(
            &part,
            &sink.url,
            "request",
            "no client".into(),
            0,
            None,
        ));
    };
    let started = Instant::now();
    let answer = client
        .send(
            &metadata_call(&sink.url),
            &TraceContext::fresh("connectivity-check"),
            None,
        )
        .await;
    Ok(report(&part, &sink.url, answer, started.elapsed(), Some(want)).await)
}

async fn report(
    part: &str,
    url: &url::Url,
    answer: Result<crate::runtime::upstream::Reply, Failure>,
    elapsed: Duration,
    want: Option<FhirVersion>,
) -> PartReport {
    let latency_ms = elapsed.as_millis().try_into().unwrap_or(u64::MAX);
    match answer {
        Ok(reply) => {
            let content_type = reply
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let reported = want.and(reply.body.get("fhirVersion").and_then(Value::as_str));
            let mut r = PartReport {
                part: part.to_owned(),
                origin: origin(url),
                ok: true,
                status: Some(reply.status),
                latency_ms,
                content_type,
                fhir_version: reported.map(str::to_owned),
                failure: None,
                detail: None,
            };
            if let Some(want) = want {
                let got = reported.and_then(release);
                if got != Some(want) {
                    r.ok = false;
                    r.failure = Some("version".into());
                    r.detail = Some(match reported {
                        Some(v) => format!("reports FHIR {v}, the connector is {want:?}"),
                        None => format!("reports no FHIR version, the connector is {want:?}"),
                    });
                }
            }
            r
        }
        Err(f) => {
            let (word, detail) = classify(url, &f).await;
            let mut r = failed(part, url, word, detail, latency_ms, f.status);
            r.status = f.status;
            r
        }
    }
}

fn failed(
    part: &str,
    url: &url::Url,
    failure: &str,
    detail: String,
    latency_ms: u64,
    status: Option<u16>,
) -> PartReport {
    PartReport {
        part: part.to_owned(),
        origin: origin(url),
        ok: false,
        status,
        latency_ms,
        content_type: None,
        fhir_version: None,
        failure: Some(failure.to_owned()),
        detail: Some(detail),
    }
}

/// The FHIR release of a `fhirVersion` such as `4.0.1`.
fn release(v: &str) -> Option<FhirVersion> {
    if v.starts_with("4.0") {
        Some(FhirVersion::R4)
    } else if v.starts_with("4.3") {
        Some(FhirVersion::R4B)
    } else if v.starts_with("5.0") {
        Some(FhirVersion::R5)
    } else {
        None
    }
}

/// Names a failure; a connection that was not made is looked at again to say why: the name
/// does not resolve, nothing listens, or (HTTPS) the TLS handshake failed.
async fn classify(url: &url::Url, f: &Failure) -> (&'static str, String) {
    match (f.kind, f.status) {
        (_, Some(401)) => (
            "unauthorized",
            "answered 401: the credentials were refused".into(),
        ),
        (_, Some(403)) => (
            "forbidden",
            "answered 403: the credentials lack access".into(),
        ),
        (FailureKind::Timeout, _) => ("timeout", f.reason.clone()),
        (FailureKind::NoAnswer, _) => {
            let host = url.host_str().unwrap_or_default().to_owned();
            let port = url.port_or_known_default().unwrap_or(80);
            let bound = Duration::from_secs(5);
            let addrs =
                tokio::time::timeout(bound, tokio::net::lookup_host((host.as_str(), port))).await;
            let addrs: Vec<_> = match addrs {
                Ok(Ok(a)) => a.collect(),
                _ => return ("dns", format!("the name `{host}` does not resolve")),
            };
            let Some(addr) = addrs.first() else {
                return ("dns", format!("the name `{host}` does not resolve"));
            };
            match tokio::time::timeout(bound, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) if url.scheme() == "https" => ("tls", "the TLS handshake failed".into()),
                Ok(Ok(_)) => ("refused", f.reason.clone()),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => (
                    "refused",
                    "connection refused: nothing listens there".into(),
                ),
                _ => ("refused", f.reason.clone()),
            }
        }
        (FailureKind::Refused, Some(s)) => ("status", format!("answered {s}: {}", f.reason)),
        _ => ("unusable", f.reason.clone()),
    }
}

/// The origin of a URL: scheme, host and port, never user, path or query.
fn origin(url: &url::Url) -> String {
    url.origin().ascii_serialization()
}
