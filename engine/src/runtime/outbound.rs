//! The one outbound HTTP layer of sources, sinks and guide downloads: one client (rustls, one
//! pool, no `Referer`, redirects followed only within the first URL's origin), one body reader
//! with one cap that also refuses an answer cut short of its `Content-Length`, one retry policy
//! (`Retry-After` as seconds or a date, bounded, never past the caller's deadline), the
//! source's own message out of an error answer, and `OutboundError`, why an exchange failed.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio::time::Instant;

/// Most redirects followed for one request (each within the first URL's origin).
pub const MAX_REDIRECTS: usize = 5;
/// Longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Longest message taken from an answer.
const MAX_MESSAGE: usize = 200;

/// Why a redirect was not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RedirectRefused {
    #[error("redirected to another origin, which is never followed")]
    OtherOrigin,
    #[error("redirected to a URL that is not http or https")]
    NotHttp,
    #[error("redirected more than {MAX_REDIRECTS} times")]
    TooMany,
    #[error("answered a redirect that was not followed")]
    NotFollowed,
}

/// Why an exchange with a source, a sink or a package server failed. No variant carries a URL
/// (which may hold caller values or credentials).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// No answer within the time allowed (the per-request timeout or the caller's deadline).
    #[error("no answer within {}", humanize(*.0))]
    Timeout(Duration),
    /// The caller's deadline came before an answer, or before a free concurrency slot.
    #[error("no answer before the request's deadline")]
    Deadline,
    /// The connection could not be made.
    #[error("connection failed")]
    Connect,
    /// The request could not be sent, or the answer's head could not be read.
    #[error("request failed: {0}")]
    Send(String),
    /// An error status; `message` is the server's own text, `outcome` its `OperationOutcome`.
    #[error("answered {}{}", status_text(*status), message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status {
        status: u16,
        message: Option<String>,
        retry_after: Option<Duration>,
        outcome: Option<Box<Value>>,
    },
    /// A redirect that leaves the origin, is not http(s), or is one too many.
    #[error("{0}")]
    Redirect(RedirectRefused),
    /// More bytes than the cap (announced or sent).
    #[error("answer larger than {} (`maxAnswer`)", size_text(*.0))]
    TooLarge(u64),
    /// The body ended before its length, or broke off.
    #[error("answer cut short: {0}")]
    Cut(String),
    /// A success status (other than `204 No Content`) with no body at all: a source that
    /// answers data requests never means "nothing" so (a proxy or server that broke), and
    /// reading it as no data would hide the failure.
    #[error("answered {} with an empty body", status_text(*.0))]
    Empty(u16),
    /// The body is not JSON.
    #[error("answer is not JSON: {0}")]
    NotJson(String),
    /// The body is not in the source's declared `format` (CSV, XML, NDJSON...).
    #[error("answer is not {format}: {error}")]
    Format {
        format: &'static str,
        error: crate::model::decode::DecodeError,
    },
    /// More JSON values than the source's cap, counted before parsing.
    #[error("answer refused: it holds more than {0} JSON values (the source's `maxValues`)")]
    TooManyValues(usize),
    /// A 2xx body that `statuses.errorWhen` reads as an error: the matched text.
    #[error("answered an error: {0}")]
    InBody(String),
    /// An answer a classification rule reads as a transient failure (`retry`) or as the
    /// source throttling (`rateLimited`): sent again after `wait` (backoff when `None`).
    #[error("answered {message}")]
    Retry {
        message: String,
        wait: Option<Duration>,
    },
    /// Not sent: the source's rate budget (`rate`) had no request left before the deadline;
    /// the wait the next would have needed.
    #[error("not sent: no request left in the source's rate budget (`rate`) before the deadline; the next in {}", humanize(*.0))]
    RateLimited(Duration),
    /// A retry the source asked for (or backoff) that would pass the call's deadline (the
    /// source's `timeout` or the caller's deadline), or leave too little of it.
    #[error("{last}; not retried: waiting {} would pass the call's deadline", humanize(*wait))]
    PastDeadline {
        last: Box<OutboundError>,
        wait: Duration,
    },
}

impl OutboundError {
    /// The status the server answered, if it answered one.
    pub fn status(&self) -> Option<u16> {
        match self {
            OutboundError::Status { status, .. } => Some(*status),
            OutboundError::PastDeadline { last, .. } => last.status(),
            _ => None,
        }
    }

    /// True when sending the same request later may succeed: the server was unreachable,
    /// slow, overloaded or broke off; false for what it will answer again (a client error, a
    /// refused redirect, an answer too large or not JSON).
    pub fn transient(&self) -> bool {
        match self {
            OutboundError::Timeout(_)
            | OutboundError::Deadline
            | OutboundError::Connect
            | OutboundError::Send(_)
            | OutboundError::Cut(_)
            | OutboundError::Retry { .. } => true,
            OutboundError::Status { status, .. } => *status >= 500 || *status == 429,
            OutboundError::Redirect(_)
            | OutboundError::TooLarge(_)
            | OutboundError::Empty(_)
            | OutboundError::NotJson(_)
            | OutboundError::Format { .. }
            | OutboundError::TooManyValues(_)
            | OutboundError::InBody(_)
            | OutboundError::RateLimited(_) => false,
            OutboundError::PastDeadline { last, .. } => last.transient(),
        }
    }

    /// The error an exchange ended with, behind any deadline wrapping.
    pub fn last(&self) -> &OutboundError {
        match self {
            OutboundError::PastDeadline { last, .. } => last.last(),
            other => other,
        }
    }

    /// The error with every one of `secrets` (a party's credentials and configured header
    /// values) taken out of the texts it holds from the server (its message, its
    /// `OperationOutcome`, the matched text of a 2xx error): a server that echoes the key it
    /// was sent (`invalid api key ...`) must not hand it on to a caller, a report or a log.
    pub fn redacted(self, secrets: &[String]) -> OutboundError {
        if secrets.is_empty() {
            return self;
        }
        let text = |t: String| redact(&t, secrets);
        match self {
            OutboundError::Status {
                status,
                message,
                retry_after,
                outcome,
            } => OutboundError::Status {
                status,
                message: message.map(text),
                retry_after,
                outcome: outcome.map(|mut o| {
                    redact_value(&mut o, secrets);
                    o
                }),
            },
            OutboundError::Send(t) => OutboundError::Send(text(t)),
            OutboundError::Cut(t) => OutboundError::Cut(text(t)),
            OutboundError::NotJson(t) => OutboundError::NotJson(text(t)),
            OutboundError::InBody(t) => OutboundError::InBody(text(t)),
            OutboundError::Retry { message, wait } => OutboundError::Retry {
                message: text(message),
                wait,
            },
            OutboundError::PastDeadline { last, wait } => OutboundError::PastDeadline {
                last: Box::new(last.redacted(secrets)),
                wait,
            },
            other => other,
        }
    }

    /// The error of a reqwest failure, read without its URL.
    pub fn of(e: &reqwest::Error, timeout: Duration) -> OutboundError {
        if e.is_timeout() {
            return OutboundError::Timeout(timeout);
        }
        if e.is_redirect() {
            return OutboundError::Redirect(redirect_reason(e).unwrap_or(RedirectRefused::TooMany));
        }
        if let Some(r) = redirect_reason(e) {
            return OutboundError::Redirect(r);
        }
        if e.is_connect() {
            return OutboundError::Connect;
        }
        if e.is_body() || e.is_decode() {
            return OutboundError::Cut(without_url(e));
        }
        OutboundError::Send(without_url(e))
    }
}

fn redirect_reason(e: &reqwest::Error) -> Option<RedirectRefused> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<RedirectRefused>() {
            return Some(*r);
        }
        source = s.source();
    }
    None
}

fn status_text(status: u16) -> String {
    StatusCode::from_u16(status).map_or_else(|_| status.to_string(), |s| s.to_string())
}

fn size_text(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

/// A duration as people write it: `30s`, `1500ms`.
pub fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A reqwest error's text without its URL (which may carry caller values or credentials).
pub fn without_url(e: &reqwest::Error) -> String {
    let mut text = format!("{e}");
    if let Some(u) = e.url() {
        text = text.replace(u.as_str(), "<url>");
    }
    text
}

/// The client every outbound exchange uses: rustls, pooled connections, the engine's
/// `User-Agent`, no `Referer`, and redirects followed only to the origin (scheme, host, port)
/// of the request's first URL, at most `MAX_REDIRECTS` of them. Credentials and configured
/// headers therefore never reach another origin.
pub fn client() -> reqwest::Result<reqwest::Client> {
    builder().build()
}

/// The settings of `client()`, for a client that adds its own (a source's mutual TLS).
pub fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!("fosps-engine/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(90))
        .referer(false)
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let refused = match attempt.previous().first() {
                _ if !matches!(attempt.url().scheme(), "http" | "https") => {
                    Some(RedirectRefused::NotHttp)
                }
                Some(first) if first.origin() != attempt.url().origin() => {
                    Some(RedirectRefused::OtherOrigin)
                }
                _ if attempt.previous().len() > MAX_REDIRECTS => Some(RedirectRefused::TooMany),
                _ => None,
            };
            match refused {
                Some(r) => attempt.error(r),
                None => attempt.follow(),
            }
        }))
}

/// An answer read whole: its status, headers and body.
#[derive(Debug, Clone)]
pub struct Exchanged {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Sends a request (with its timeout already set) and reads the answer, at most `cap` bytes.
/// A 2xx is the answer; any other status is an error: a 3xx that was not followed is a
/// refused redirect, an error status carries the server's message and `Retry-After`.
pub async fn exchange(
    req: reqwest::RequestBuilder,
    cap: u64,
    timeout: Duration,
) -> Result<Exchanged, OutboundError> {
    exchange_keeping(req, cap, timeout, &[]).await
}

/// As `exchange`, giving the answers of the error statuses in `keep` whole too (a source's
/// classification rules read them), their bodies under the same cap.
pub async fn exchange_keeping(
    req: reqwest::RequestBuilder,
    cap: u64,
    timeout: Duration,
    keep: &[u16],
) -> Result<Exchanged, OutboundError> {
    let resp = req
        .send()
        .await
        .map_err(|e| OutboundError::of(&e, timeout))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    if status.is_redirection() {
        return Err(OutboundError::Redirect(RedirectRefused::NotFollowed));
    }
    if !status.is_success() && !keep.contains(&status.as_u16()) {
        let body = read_body(resp, cap, timeout).await.ok();
        return Err(status_error(
            status.as_u16(),
            &headers,
            body.as_deref().unwrap_or_default(),
        ));
    }
    let body = read_body(resp, cap, timeout).await?;
    Ok(Exchanged {
        status: status.as_u16(),
        headers,
        body,
    })
}

/// The error of an answer with error status `status`: the server's message and outcome out
/// of its body, its `Retry-After`.
pub fn status_error(status: u16, headers: &HeaderMap, body: &[u8]) -> OutboundError {
    let (message, outcome) = if body.is_empty() {
        (None, None)
    } else {
        message_of(body)
    };
    OutboundError::Status {
        status,
        message,
        retry_after: retry_after(headers),
        outcome: outcome.map(Box::new),
    }
}

/// Reads a body of at most `cap` bytes: an announced length above the cap is refused before
/// reading, a body that grows past it is cut off there, and one whose length differs from its
/// `Content-Length` (cut short, or a connection that broke) is an error.
pub async fn read_body(
    mut resp: reqwest::Response,
    cap: u64,
    timeout: Duration,
) -> Result<Bytes, OutboundError> {
    let announced = resp.content_length();
    if announced.is_some_and(|n| n > cap) {
        return Err(OutboundError::TooLarge(cap));
    }
    // The first chunk is kept as it is (a small answer is one chunk: no copy); a second one
    // starts a buffer holding both.
    let mut first: Option<Bytes> = None;
    let mut bytes = Vec::new();
    let mut len = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| OutboundError::of(&e, timeout))?
    {
        len += chunk.len() as u64;
        if len > cap {
            return Err(OutboundError::TooLarge(cap));
        }
        match first.take() {
            None if bytes.is_empty() => first = Some(chunk),
            None => bytes.extend_from_slice(&chunk),
            Some(f) => {
                bytes.reserve(f.len() + chunk.len());
                bytes.extend_from_slice(&f);
                bytes.extend_from_slice(&chunk);
            }
        }
    }
    if let Some(n) = announced
        && n != len
    {
        return Err(OutboundError::Cut(format!(
            "{len} bytes of the {n} its Content-Length announced"
        )));
    }
    Ok(first.unwrap_or_else(|| Bytes::from(bytes)))
}

/// A JSON body; an empty one is `null`.
pub fn json(body: &[u8]) -> Result<Value, OutboundError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| OutboundError::NotJson(e.to_string()))
}

/// A JSON body parsed keeping what `reads` reads (`decode::json_reading`: the members no one
/// reads skipped, not built; the same errors as `json`); an empty one is `null`.
pub fn json_reading(
    body: &[u8],
    reads: &crate::model::reads::Reads,
) -> Result<Value, OutboundError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    crate::model::decode::json_reading(body, reads)
        .map_err(|e| OutboundError::NotJson(e.to_string()))
}

/// The server's own message in an error answer, and its `OperationOutcome` when it sent one:
/// the outcome's text, a `message`, `error` (or `error.message`) or `detail` string of a JSON
/// body, or the start of a text body; at most 200 characters, without control characters.
pub fn message_of(body: &[u8]) -> (Option<String>, Option<Value>) {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if v["resourceType"] == "OperationOutcome" {
            let text = crate::model::fhir::issue_text(&v).map(|t| clean(&t));
            return (text, Some(v));
        }
        let text = [
            &v["message"],
            &v["error"],
            &v["error"]["message"],
            &v["detail"],
        ]
        .into_iter()
        .find_map(|m| m.as_str().filter(|s| !s.trim().is_empty()))
        .map(clean)
        .or_else(|| (!v.is_null()).then(|| clean(&v.to_string())));
        return (text, None);
    }
    let text = clean(&String::from_utf8_lossy(body));
    (Some(text).filter(|t| !t.is_empty()), None)
}

/// At most 200 characters of `text`, control characters (line breaks included) as spaces,
/// trimmed.
pub fn clean(text: &str) -> String {
    let cleaned: String = text
        .trim()
        .chars()
        .take(MAX_MESSAGE)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    cleaned.trim().to_owned()
}

/// Shortest secret taken out of texts: a shorter value (`1`, `on`) is no credential, and
/// taking it out would only garble the text.
const MIN_SECRET: usize = 4;
/// What stands for a secret taken out of a text.
const REDACTED: &str = "[redacted]";

/// `text` with every occurrence of each of `secrets` (of at least `MIN_SECRET` bytes)
/// replaced by `[redacted]`, and a tail that begins one of them (a message cut at its
/// 200 characters mid-secret) too.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| s.len() >= MIN_SECRET) {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), REDACTED);
        }
    }
    for s in secrets.iter().filter(|s| s.len() >= MIN_SECRET) {
        let cut = (MIN_SECRET..s.len())
            .rev()
            .filter(|n| s.is_char_boundary(*n))
            .find(|n| out.ends_with(&s[..*n]));
        if let Some(n) = cut {
            out.truncate(out.len() - n);
            out.push_str(REDACTED);
        }
    }
    out
}

/// Every string (and object key) of `v` with `secrets` taken out, as `redact` does.
pub fn redact_value(v: &mut Value, secrets: &[String]) {
    match v {
        Value::String(s) => *s = redact(s, secrets),
        Value::Array(items) => items.iter_mut().for_each(|i| redact_value(i, secrets)),
        Value::Object(map) => {
            let old = std::mem::take(map);
            for (k, mut item) in old {
                redact_value(&mut item, secrets);
                map.insert(redact(&k, secrets), item);
            }
        }
        _ => {}
    }
}

/// The wait a `Retry-After` asks for, as seconds or an HTTP date, at most `MAX_RETRY_AFTER`.
pub fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
            // The one read of the wall clock besides `runtime::clock`: the date is the
            // source's.
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Exponential backoff with full jitter before retry `attempt` (1 for the first retry): a
/// random wait up to 200 ms, then up to 400 ms, 800 ms ... (at most 5 s).
pub fn backoff(attempt: u32) -> Duration {
    let cap_ms = 100u64.saturating_mul(1 << attempt.min(6)).min(5_000);
    Duration::from_millis(fastrand::u64(..=cap_ms))
}

/// When a failed exchange is sent again: at most `retries` more times, after a timeout, a
/// connection failure, a body cut short, or one of `statuses`.
#[derive(Debug, Clone)]
pub struct RetryPolicy<'a> {
    pub retries: u32,
    pub statuses: &'a [u16],
}

/// What a refused (or otherwise failed) connection is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectRetry {
    /// As any transient failure: with backoff, up to `retries` times.
    #[default]
    Backoff,
    /// Once, at once: a refused connect costs well under a millisecond, and one immediate
    /// retry covers a listener that is restarting; more would only add waits.
    OnceAtOnce,
    /// Not at all (the source is known to be failing already).
    Never,
}

/// How retries fit a call: what a connection failure gets, and how much of the time allowed
/// must be left after a wait for a retry to be worth sending.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryFit {
    pub connect: ConnectRetry,
    /// A retry goes only when at least this much is left before the deadline after its wait.
    pub min_left: Duration,
}

impl RetryPolicy<'_> {
    /// The wait before retry `attempt` (1 for the first) after `e`, or `None` for no retry.
    pub fn wait(&self, e: &OutboundError, attempt: u32) -> Option<Duration> {
        self.wait_fit(e, attempt, RetryFit::default())
    }

    /// As `wait`, with `fit`'s rule for connection failures.
    pub fn wait_fit(&self, e: &OutboundError, attempt: u32, fit: RetryFit) -> Option<Duration> {
        if attempt > self.retries {
            return None;
        }
        match e {
            OutboundError::Connect => match fit.connect {
                ConnectRetry::Backoff => Some(backoff(attempt)),
                ConnectRetry::OnceAtOnce => (attempt == 1).then_some(Duration::ZERO),
                ConnectRetry::Never => None,
            },
            OutboundError::Timeout(_) | OutboundError::Cut(_) => Some(backoff(attempt)),
            OutboundError::Retry { wait, .. } => Some(wait.unwrap_or_else(|| backoff(attempt))),
            OutboundError::Status {
                status,
                retry_after,
                ..
            } if self.statuses.contains(status) => {
                Some(retry_after.unwrap_or_else(|| backoff(attempt)))
            }
            _ => None,
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or has been retried `retries` times,
    /// sleeping between attempts (the attempt holds nothing meanwhile: a concurrency permit
    /// is taken inside it). A wait that would pass `deadline` is not waited: the last error is
    /// given at once. Every attempt is added to `calls`.
    pub async fn run<T, F, Fut>(
        &self,
        deadline: Option<Instant>,
        calls: &mut usize,
        attempt: F,
    ) -> Result<T, OutboundError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, OutboundError>>,
    {
        self.run_fit(RetryFit::default(), deadline, calls, attempt)
            .await
    }

    /// As `run`, retrying as `fit` says: a retry goes only when `fit.min_left` is left before
    /// `deadline` after its wait.
    pub async fn run_fit<T, F, Fut>(
        &self,
        fit: RetryFit,
        deadline: Option<Instant>,
        calls: &mut usize,
        mut attempt: F,
    ) -> Result<T, OutboundError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, OutboundError>>,
    {
        let mut n = 0;
        loop {
            *calls += 1;
            let e = match attempt(n).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            n += 1;
            let Some(wait) = self.wait_fit(&e, n, fit) else {
                return Err(e);
            };
            if deadline.is_some_and(|d| Instant::now() + wait + fit.min_left >= d) {
                return Err(OutboundError::PastDeadline {
                    last: Box::new(e),
                    wait,
                });
            }
            tracing::debug!(
                attempt = n,
                wait_ms = wait.as_millis() as u64,
                "retrying: {e}"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_jittered() {
        for attempt in 1..20 {
            assert!(backoff(attempt) <= Duration::from_secs(5));
        }
        let waits: std::collections::HashSet<Duration> = (0..50).map(|_| backoff(6)).collect();
        assert!(
            waits.len() > 1,
            "50 waits drawn from 0..=5000 ms are not all equal"
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_bounded() {
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().expect("value"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(reqwest::header::RETRY_AFTER, "3600".parse().expect("value"));
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(20)).to_rfc2822();
        h.insert(reqwest::header::RETRY_AFTER, later.parse().expect("value"));
        let wait = retry_after(&h).expect("a date");
        assert!(wait > Duration::from_secs(15) && wait <= Duration::from_secs(20));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Thu, 01 Jan 1970 00:00:00 GMT".parse().expect("value"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().expect("value"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn messages_come_from_outcomes_json_or_text_and_are_cleaned() {
        let oo = br#"{"resourceType":"OperationOutcome","issue":[{"diagnostics":"no such path"}]}"#;
        let (m, o) = message_of(oo);
        assert_eq!(m.as_deref(), Some("no such path"));
        assert!(o.is_some());
        assert_eq!(
            message_of(br#"{"error":{"code":"X","message":"bad key"}}"#)
                .0
                .as_deref(),
            Some("bad key")
        );
        assert_eq!(
            message_of(br#"{"message":"quota\nexceeded"}"#).0.as_deref(),
            Some("quota exceeded")
        );
        let long = "x".repeat(1000);
        assert_eq!(
            message_of(long.as_bytes()).0.map(|m| m.len()),
            Some(MAX_MESSAGE)
        );
        assert_eq!(message_of(b"").0, None);
    }

    #[test]
    fn secrets_are_taken_out_whole_and_when_cut_at_the_end() {
        let secrets = vec!["k3y-0f-the-source".to_owned(), "on".to_owned()];
        assert_eq!(
            redact(
                "bad key k3y-0f-the-source, twice k3y-0f-the-source",
                &secrets
            ),
            "bad key [redacted], twice [redacted]"
        );
        assert_eq!(redact("cut at k3y-0f", &secrets), "cut at [redacted]");
        assert_eq!(redact("turned on", &secrets), "turned on");
        let e = OutboundError::PastDeadline {
            last: Box::new(OutboundError::Status {
                status: 401,
                message: Some("key k3y-0f-the-source".into()),
                retry_after: None,
                outcome: Some(Box::new(
                    serde_json::json!({"issue": [{"diagnostics": "k3y-0f-the-source"}]}),
                )),
            }),
            wait: Duration::from_secs(1),
        }
        .redacted(&secrets);
        assert!(!format!("{e}").contains("k3y"), "{e}");
        let OutboundError::Status { outcome, .. } = e.last() else {
            panic!("a status")
        };
        assert!(
            !outcome
                .as_ref()
                .expect("outcome")
                .to_string()
                .contains("k3y")
        );
    }

    #[test]
    fn refused_redirects_and_unusable_answers_are_not_transient() {
        let status = |s| OutboundError::Status {
            status: s,
            message: None,
            retry_after: None,
            outcome: None,
        };
        assert!(status(503).transient() && status(429).transient());
        assert!(!status(400).transient());
        assert!(!OutboundError::Redirect(RedirectRefused::OtherOrigin).transient());
        assert!(!OutboundError::TooLarge(1).transient());
        assert!(OutboundError::Connect.transient());
        let late = OutboundError::PastDeadline {
            last: Box::new(status(429)),
            wait: Duration::from_secs(30),
        };
        assert!(late.transient());
        assert_eq!(late.status(), Some(429));
    }

    #[test]
    fn retries_follow_the_statuses_and_the_count() {
        let p = RetryPolicy {
            retries: 2,
            statuses: &[429],
        };
        let status = |s| OutboundError::Status {
            status: s,
            message: None,
            retry_after: Some(Duration::from_secs(3)),
            outcome: None,
        };
        assert_eq!(p.wait(&status(429), 1), Some(Duration::from_secs(3)));
        assert_eq!(p.wait(&status(429), 3), None);
        assert_eq!(p.wait(&status(503), 1), None);
        assert_eq!(p.wait(&OutboundError::NotJson("x".into()), 1), None);
        assert!(p.wait(&OutboundError::Connect, 2).is_some());
        let once = RetryFit {
            connect: ConnectRetry::OnceAtOnce,
            min_left: Duration::ZERO,
        };
        assert_eq!(
            p.wait_fit(&OutboundError::Connect, 1, once),
            Some(Duration::ZERO)
        );
        assert_eq!(p.wait_fit(&OutboundError::Connect, 2, once), None);
        let never = RetryFit {
            connect: ConnectRetry::Never,
            ..once
        };
        assert_eq!(p.wait_fit(&OutboundError::Connect, 1, never), None);
    }
}
