//! OTLP/HTTP export of spans (`--otlp-endpoint`): a span per inbound request, per source call
//! attempt, each with the W3C trace the engine already carries (`trace_context`), sent in the
//! background as OTLP JSON to `{endpoint}/v1/traces`.
//!
//! A small exporter of the OTLP JSON encoding over reqwest rather than the `opentelemetry`
//! crates: the encoding is stable and small (hex ids, nanosecond strings, typed attribute
//! values), the spans are made where the engine already has their ids, and the exporter needs
//! none of the SDK's context propagation, samplers or processors.
//!
//! Recording a span never waits and never fails a request: it is put on a bounded queue, or
//! dropped and counted when the queue is full (a collector that is down or hangs fills it).
//! One background task takes spans off the queue in batches (up to 512, or what came within a
//! second) and posts each batch within a bounded time; a failed post is counted and logged,
//! its spans are not tried again. At the end of the process (`engine serve` stopping,
//! `engine run` done) `flush` posts what is still queued, bounded by a short deadline, so that
//! the last spans of a run are not lost with the process. Span times are read from the system clock (OTLP wants Unix
//! nanoseconds), the only other read of it beside a source's `Retry-After` date.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

/// Spans waiting for export by default (`--otlp-queue`); more are dropped.
pub const DEFAULT_QUEUE: usize = 4096;
/// Most spans in one export.
const BATCH: usize = 512;
/// Longest a span waits for its batch to fill.
const LINGER: Duration = Duration::from_secs(1);
/// Longest one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the process waits at its end for the spans still queued to be posted.
pub const FLUSH_DEADLINE: Duration = Duration::from_secs(3);

/// Why `--otlp-endpoint` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("not an http:// or https:// URL")]
    NotHttp,
    #[error("the exporter is started already")]
    Started,
    #[error("the HTTP client cannot be built: {0}")]
    Client(String),
}

/// What a span stands for (OTLP's `SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An inbound request.
    Server,
    /// A call to a source or a sink.
    Client,
}

/// A value of a span attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
}

/// A finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent: Option<u64>,
    pub name: String,
    pub kind: Kind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Attr)>,
    pub error: bool,
}

/// Counts of the exporter's work since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub exported: u64,
    pub dropped: u64,
    pub failed_exports: u64,
}

static QUEUED: OnceLock<mpsc::Sender<Span>> = OnceLock::new();
/// Asks the exporter to post every span queued now, answering on the sender once it has.
static FLUSHES: OnceLock<mpsc::Sender<oneshot::Sender<()>>> = OnceLock::new();
static EXPORTED: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// The traces URL of an endpoint: `{endpoint}/v1/traces`, unless it names that path already.
pub fn traces_url(endpoint: &str) -> Result<url::Url, OtlpError> {
    let mut url = url::Url::parse(endpoint).map_err(|_| OtlpError::NotHttp)?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(OtlpError::NotHttp);
    }
    if !url.path().ends_with("/v1/traces") {
        let path = format!("{}/v1/traces", url.path().trim_end_matches('/'));
        url.set_path(&path);
    }
    Ok(url)
}

/// Starts the exporter to `endpoint`, with room for `queue` spans waiting (once per process;
/// inside a tokio runtime). Its task ends when the process does: `flush` first posts the spans
/// still queued.
pub fn start(endpoint: &str, queue: usize) -> Result<(), OtlpError> {
    let url = traces_url(endpoint)?;
    let client = reqwest::Client::builder()
        .timeout(EXPORT_TIMEOUT)
        .connect_timeout(EXPORT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| OtlpError::Client(e.to_string()))?;
    let (tx, rx) = mpsc::channel(queue.max(1));
    let (flush_tx, flushes) = mpsc::channel(4);
    QUEUED.set(tx).map_err(|_| OtlpError::Started)?;
    let _ = FLUSHES.set(flush_tx);
    tracing::info!(collector = %url.origin().ascii_serialization(), "spans are exported over OTLP/HTTP");
    tokio::spawn(export(rx, flushes, client, url));
    Ok(())
}

/// Posts the spans queued now (the batch being filled included), waiting at most `deadline`
/// (`FLUSH_DEADLINE` at the end of a process); nothing to do when no exporter runs. Whether
/// the exporter said it was done in time.
pub async fn flush(deadline: Duration) -> bool {
    let Some(flushes) = FLUSHES.get() else {
        return true;
    };
    let (done, finished) = oneshot::channel();
    let asked = async { flushes.send(done).await.is_ok() && finished.await.is_ok() };
    match tokio::time::timeout(deadline, asked).await {
        Ok(done) => done,
        Err(_) => {
            tracing::warn!(
                deadline_seconds = deadline.as_secs_f64(),
                "spans still queued for the OTLP collector are dropped at exit"
            );
            false
        }
    }
}

/// Whether spans are exported (so that callers make them only then).
pub fn enabled() -> bool {
    QUEUED.get().is_some()
}

/// Queues a span for export; dropped (and counted) when the queue is full. Never waits.
pub fn record(span: Span) {
    if let Some(tx) = QUEUED.get()
        && tx.try_send(span).is_err()
    {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the exporter did so far.
pub fn counts() -> Counts {
    Counts {
        exported: EXPORTED.load(Ordering::Relaxed),
        dropped: DROPPED.load(Ordering::Relaxed),
        failed_exports: FAILED.load(Ordering::Relaxed),
    }
}

/// Takes spans off the queue in batches and posts them; on a flush, posts at once the batch
/// being filled and every span queued, then says so.
async fn export(
    mut rx: mpsc::Receiver<Span>,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    client: reqwest::Client,
    url: url::Url,
) {
    loop {
        let mut batch = Vec::new();
        let mut flush = None;
        tokio::select! {
            asked = flushes.recv() => match asked {
                Some(done) => flush = Some(done),
                None => return,
            },
            first = rx.recv() => match first {
                Some(s) => batch.push(s),
                None => return,
            },
        }
        if flush.is_none() {
            let until = tokio::time::Instant::now() + LINGER;
            while batch.len() < BATCH {
                tokio::select! {
                    next = tokio::time::timeout_at(until, rx.recv()) => match next {
                        Ok(Some(s)) => batch.push(s),
                        Ok(None) | Err(_) => break,
                    },
                    asked = flushes.recv() => {
                        flush = asked;
                        break;
                    }
                }
            }
        }
        if !batch.is_empty() {
            post(&client, &url, &batch).await;
        }
        if let Some(done) = flush {
            // Everything queued by now, in batches.
            loop {
                let mut rest = Vec::new();
                while rest.len() < BATCH {
                    match rx.try_recv() {
                        Ok(s) => rest.push(s),
                        Err(_) => break,
                    }
                }
                if rest.is_empty() {
                    break;
                }
                post(&client, &url, &rest).await;
            }
            let _ = done.send(());
        }
    }
}

/// Posts one batch; a failure is counted and logged, its spans are not tried again.
async fn post(client: &reqwest::Client, url: &url::Url, batch: &[Span]) {
    let n = batch.len() as u64;
    let body = serde_json::to_vec(&encode(batch)).unwrap_or_default();
    let sent = client
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => {
            EXPORTED.fetch_add(n, Ordering::Relaxed);
        }
        Ok(r) => {
            FAILED.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                spans = n,
                status = r.status().as_u16(),
                "the OTLP collector refused spans"
            );
        }
        Err(e) => {
            FAILED.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(spans = n, "spans not exported: {}", e.without_url());
        }
    }
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .to_string()
}

/// Spans in OTLP's JSON encoding (`ExportTraceServiceRequest`).
pub fn encode(spans: &[Span]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let attributes: Vec<Value> = s
                .attributes
                .iter()
                .map(|(k, v)| {
                    let value = match v {
                        Attr::Str(t) => json!({"stringValue": t}),
                        Attr::Int(i) => json!({"intValue": i.to_string()}),
                    };
                    json!({"key": k, "value": value})
                })
                .collect();
            let mut v = json!({
                "traceId": format!("{:032x}", s.trace_id),
                "spanId": format!("{:016x}", s.span_id),
                "name": s.name,
                "kind": match s.kind { Kind::Server => 2, Kind::Client => 3 },
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": attributes,
                "status": {"code": if s.error { 2 } else { 0 }},
            });
            if let Some(p) = s.parent {
                v["parentSpanId"] = json!(format!("{p:016x}"));
            }
            v
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "fosps-connector-engine"}},
            {"key": "service.version", "value": {"stringValue": env!("CARGO_PKG_VERSION")}}
        ]},
        "scopeSpans": [{"scope": {"name": "engine"}, "spans": spans}]
    }]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_url_and_the_encoding() {
        assert_eq!(
            traces_url("http://c:4318").map(|u| u.to_string()).ok(),
            Some("http://c:4318/v1/traces".to_owned())
        );
        assert_eq!(
            traces_url("https://c/otel/v1/traces")
                .map(|u| u.to_string())
                .ok(),
            Some("https://c/otel/v1/traces".to_owned())
        );
        assert!(traces_url("file:///x").is_err());
        let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_500);
        let v = encode(&[Span {
            trace_id: 0xab,
            span_id: 0xcd,
            parent: Some(1),
            name: "GET search".into(),
            kind: Kind::Server,
            start: at,
            end: at,
            attributes: vec![("http.response.status_code", Attr::Int(200))],
            error: false,
        }]);
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "000000000000000000000000000000ab");
        assert_eq!(s["spanId"], "00000000000000cd");
        assert_eq!(s["parentSpanId"], "0000000000000001");
        assert_eq!(s["startTimeUnixNano"], "1500");
        assert_eq!(s["attributes"][0]["value"]["intValue"], "200");
    }
}
