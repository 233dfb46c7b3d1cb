//! The clients of sources, over the one outbound layer (`runtime::outbound`: client,
//! redirects, retries, body cap): per source a timeout that bounds a whole call (retries
//! included), a circuit breaker, a concurrency limit (a permit per HTTP attempt, never held
//! while waiting to retry), authentication, how its statuses read; and pagination across
//! pages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::model::reads::Reads;
use crate::model::vocabulary::RuleAction;
use crate::model::{Pagination, ResponseRule, Source};
use crate::runtime::breaker::{Breaker, Refused, Ticket};
use crate::runtime::build_error::{BuildError, Party};
use crate::runtime::metrics::{Answer, Metrics};
use crate::runtime::outbound::{self, ConnectRetry, OutboundError, RetryFit, RetryPolicy};
use crate::runtime::outbound_auth::{self, TokenError, Tokens};
use crate::runtime::problem::ProblemKind;
use crate::runtime::rate::{Bucket, RateLimited};
use crate::runtime::trace_context::TraceContext;

/// The trace headers of every attempt, as names made once (not parsed from text per call).
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Why a call to a source failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub source: String,
    pub reason: String,
    pub kind: FailureKind,
    /// The upstream status, when it answered.
    pub status: Option<u16>,
}

/// What kind of failure a source call met: a timeout is answered 504 to callers, the others 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No answer within the source's timeout.
    Timeout,
    /// The connection could not be made or the request could not be sent.
    NoAnswer,
    /// The source answered an error status, or an answer that does not fit the request.
    Refused,
    /// The answer could not be used: too large, not JSON, or not mappable to FHIR.
    Unusable,
    /// Not called: the source's circuit breaker is open.
    Open,
    /// Not called: the source's rate budget had no request left before the deadline.
    RateLimited,
}

impl Failure {
    /// The failure of an exchange with source `source`.
    pub fn of(source: &str, e: OutboundError) -> Failure {
        let kind = match e.last() {
            OutboundError::Timeout(_) | OutboundError::Deadline => FailureKind::Timeout,
            OutboundError::Connect | OutboundError::Send(_) => FailureKind::NoAnswer,
            OutboundError::Status { .. }
            | OutboundError::Redirect(_)
            | OutboundError::Retry { .. } => FailureKind::Refused,
            OutboundError::RateLimited(_) => FailureKind::RateLimited,
            OutboundError::TooLarge(_)
            | OutboundError::Cut(_)
            | OutboundError::Empty(_)
            | OutboundError::NotJson(_)
            | OutboundError::Format { .. }
            | OutboundError::TooManyValues(_)
            | OutboundError::InBody(_)
            | OutboundError::PastDeadline { .. } => FailureKind::Unusable,
        };
        Failure {
            source: source.to_owned(),
            status: e.status(),
            reason: e.to_string(),
            kind,
        }
    }
}

impl Failure {
    /// The failure of a call whose source's token endpoint gave no token.
    pub fn of_token(source: &str, e: &TokenError) -> Failure {
        Failure {
            source: source.to_owned(),
            reason: e.to_string(),
            kind: if e.timed_out() {
                FailureKind::Timeout
            } else {
                FailureKind::Refused
            },
            status: None,
        }
    }
}

impl FailureKind {
    /// What a caller is answered for a source that failed so: a timeout 504, a source whose
    /// rate budget is spent 503 (sending again in a second may fit it), the others 502.
    pub fn problem(self) -> ProblemKind {
        match self {
            FailureKind::Timeout => ProblemKind::Timeout,
            FailureKind::RateLimited => ProblemKind::Unavailable { retry_after: 1 },
            FailureKind::NoAnswer
            | FailureKind::Refused
            | FailureKind::Unusable
            | FailureKind::Open => ProblemKind::SourceFailed,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "source `{}`: {}", self.source, self.reason)
    }
}

/// An upstream answer: status, headers and JSON body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

/// A request to a source, already built and encoded.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub url: url::Url,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<Value>,
}

/// What a paged read gives.
#[derive(Debug)]
pub struct Paged {
    /// The records kept: the first `want`, or all.
    pub records: Vec<Value>,
    /// The first page's reply.
    pub first: Reply,
    /// Reading stopped at the page limit while the source had a next page.
    pub pages_left: bool,
}

/// An answer of `SourceClient::open`, unread, holding one of the source's concurrency
/// permits until it is dropped.
pub struct Opened {
    pub response: reqwest::Response,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// The client of one source.
pub struct SourceClient {
    pub source: Arc<Source>,
    client: reqwest::Client,
    limit: Arc<Semaphore>,
    fixed: HeaderMap,
    metrics: Arc<Metrics>,
    breaker: Arc<Breaker>,
    /// The source's requests-per-second budget (`rate`), shared by every caller of the
    /// source and kept across reloads.
    rate: Option<Arc<Bucket>>,
    /// The error statuses the source's classification rules read (their answers are read
    /// whole rather than as error statuses).
    kept: Vec<u16>,
    /// Access tokens, for `oauth2` and `smartBackend` auth (`runtime::outbound_auth`).
    tokens: Option<Tokens>,
    /// What the source's own settings read of every JSON answer (`statuses`, `errorWhen`,
    /// the pagination's next link or cursor): a part of every projection of its answers.
    reads: Reads,
    /// The values the source is sent that no one else may see (its credentials and
    /// configured header values): taken out of its failures' texts.
    secrets: Vec<String>,
}

/// Clients of every source, sharing one connection pool.
#[derive(Clone, Default)]
pub struct Upstreams {
    clients: HashMap<String, Arc<SourceClient>>,
}

impl Upstreams {
    /// Builds clients (no IO yet) for the given sources, keyed by name.
    pub fn new(
        sources: impl IntoIterator<Item = Arc<Source>>,
        metrics: Arc<Metrics>,
    ) -> Result<Upstreams, BuildError> {
        let client = outbound::client().map_err(|e| BuildError::Client(e.to_string()))?;
        let mut clients = HashMap::new();
        for s in sources {
            let fixed = fixed_headers(&s)?;
            let breaker = metrics.breaker(&s.name, s.breaker);
            let rate = s.rate.map(|r| metrics.rate(&s.name, r));
            let mut kept: Vec<u16> = s
                .statuses
                .rules
                .iter()
                .flat_map(|r| r.statuses.iter().copied())
                .filter(|code| !(200..300).contains(code))
                .collect();
            kept.sort_unstable();
            kept.dedup();
            // Outbound auth hook: a source with mutual TLS has a client of its own.
            let client = match &s.tls {
                Some(tls) => outbound_auth::tls::client(&s.name, tls)?,
                None => client.clone(),
            };
            let tokens = Tokens::of(&s, &client)?;
            let reads = source_reads(&s);
            let secrets = s
                .headers
                .iter()
                .map(|(_, v)| v.0.clone())
                .chain(outbound_auth::credentials::secret_values(s.auth.as_ref()))
                .collect();
            clients.insert(
                s.name.clone(),
                Arc::new(SourceClient {
                    limit: Arc::new(Semaphore::new(s.concurrency as usize)),
                    source: s,
                    client,
                    fixed,
                    tokens,
                    breaker,
                    rate,
                    kept,
                    reads,
                    secrets,
                    metrics: metrics.clone(),
                }),
            );
        }
        Ok(Upstreams { clients })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<SourceClient>> {
        self.clients.get(name)
    }
}

fn fixed_headers(s: &Source) -> Result<HeaderMap, BuildError> {
    let mut h = HeaderMap::new();
    let bad = |what: &'static str| BuildError::Header {
        party: Party::Source(s.name.clone()),
        what,
    };
    for (k, v) in &s.headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad("header name"))?;
        let mut value = HeaderValue::from_str(&v.0).map_err(|_| bad("header value"))?;
        value.set_sensitive(true);
        h.insert(name, value);
    }
    if let Some((name, value)) = outbound_auth::credentials::fixed_header(&s.name, s.auth.as_ref())?
    {
        h.insert(name, value);
    }
    Ok(h)
}

impl SourceClient {
    /// Sends a call with the source's headers, limits, timeout and retries, and reads the
    /// answer (JSON, at most `maxAnswer` bytes). A GET is retried after connection errors,
    /// timeouts and the statuses of `statuses.retry`; other methods are sent once. Any status
    /// but 2xx is a failure with the source's own message; so is a 2xx body that
    /// `statuses.errorWhen` matches. Nothing waits past `deadline`.
    pub async fn send(
        &self,
        call: &Call,
        trace: &TraceContext,
        deadline: Option<Instant>,
    ) -> Result<Reply, Failure> {
        self.send_counted(call, trace, deadline, &mut 0).await
    }

    /// As `send`, adding every HTTP attempt (retries included) to `calls`. The source's
    /// `timeout` is the budget of the whole call: each attempt has what is left of it (or of
    /// the caller's deadline, when earlier), and a retry goes only while a quarter of it is
    /// left after its wait. The source's breaker may refuse the call at once, and hears how
    /// it ended.
    pub async fn send_counted(
        &self,
        call: &Call,
        trace: &TraceContext,
        deadline: Option<Instant>,
        calls: &mut usize,
    ) -> Result<Reply, Failure> {
        self.send_reading(call, &Reads::All, trace, deadline, calls)
            .await
    }

    /// As `send_counted`, a JSON answer parsed keeping only what `reads` reads (which holds
    /// what the source's own settings read, `SourceClient::reads`): the members no one
    /// reads are skipped by the parser, never built.
    pub async fn send_reading(
        &self,
        call: &Call,
        reads: &Reads,
        trace: &TraceContext,
        deadline: Option<Instant>,
        calls: &mut usize,
    ) -> Result<Reply, Failure> {
        if let Some(files) = &self.source.files {
            *calls += 1;
            return self.read_files(files, deadline).await;
        }
        // Outbound auth hook: a token per call, renewed once after a 401 (then the 401 stands).
        let Some(tokens) = &self.tokens else {
            return self
                .send_as(call, reads, trace, deadline, calls, None)
                .await;
        };
        let bearer = self.token(tokens.bearer(deadline)).await?;
        match self
            .send_as(call, reads, trace, deadline, calls, Some(&bearer))
            .await
        {
            Err(f) if f.status == Some(401) => {
                let renewed = self.token(tokens.renew(&bearer, deadline)).await?;
                self.send_as(call, reads, trace, deadline, calls, Some(&renewed))
                    .await
            }
            other => other,
        }
    }

    /// A token for a call, through the source's breaker: refused at once while it is open
    /// (the token endpoint not asked either), and a token endpoint that is down, slow or
    /// answering 5xx/429 counts as a failure of the source (its calls cannot be made), so that
    /// the breaker opens for it as for the source itself. A token in hand, or a failure that
    /// says nothing of the endpoint's health (the caller's deadline, an unusable answer),
    /// leaves the breaker as it was; the call then takes its own ticket.
    async fn token(
        &self,
        fetch: impl std::future::Future<Output = Result<HeaderValue, TokenError>>,
    ) -> Result<HeaderValue, Failure> {
        let ticket = self.breaker.admit().map_err(|e| self.refused(&e))?;
        fetch.await.map_err(|e| self.token_failed(ticket, &e))
    }

    /// A token that could not be had under `ticket`: an endpoint down, slow or answering
    /// 5xx/429 counts as a failure of the source; the caller's deadline or an unusable
    /// answer leaves the breaker as it was.
    fn token_failed(&self, ticket: Ticket<'_>, e: &TokenError) -> Failure {
        if e.transient() && !matches!(e, TokenError::Deadline) {
            ticket.failed();
        }
        Failure::of_token(&self.source.name, e)
    }

    /// As `send_counted`, with `bearer` as the `Authorization` of every attempt.
    async fn send_as(
        &self,
        call: &Call,
        reads: &Reads,
        trace: &TraceContext,
        deadline: Option<Instant>,
        calls: &mut usize,
        bearer: Option<&HeaderValue>,
    ) -> Result<Reply, Failure> {
        let s = &self.source;
        let ticket = self.breaker.admit().map_err(|e| self.refused(&e))?;
        let policy = RetryPolicy {
            retries: if call.method == Method::GET {
                s.retries
            } else {
                0
            },
            statuses: &s.statuses.retry,
        };
        let fit = RetryFit {
            connect: if ticket.failing {
                ConnectRetry::Never
            } else {
                ConnectRetry::OnceAtOnce
            },
            min_left: s.timeout / 4,
        };
        let budget = Instant::now() + s.timeout;
        let result = policy
            .run_fit(fit, Some(budget), calls, |n| {
                self.attempt(call, reads, trace, budget, deadline, (bearer, n))
            })
            .await;
        match &result {
            // Ended by the caller, or never sent: nothing learnt of the source.
            Err(e)
                if matches!(
                    e.last(),
                    OutboundError::Deadline | OutboundError::RateLimited(_)
                ) =>
            {
                drop(ticket)
            }
            Err(e) if e.last().transient() => ticket.failed(),
            _ => ticket.succeeded(),
        }
        result.map_err(|e| Failure::of(&s.name, e.redacted(&self.secrets_with(bearer))))
    }

    /// The source's secrets, and the token of this call when it has one.
    fn secrets_with(&self, bearer: Option<&HeaderValue>) -> Vec<String> {
        let token = bearer
            .and_then(|b| b.to_str().ok())
            .map(|b| b.strip_prefix("Bearer ").unwrap_or(b).to_owned());
        self.secrets.iter().cloned().chain(token).collect()
    }

    /// A file source's call: its files read and decoded on the blocking pool, within the
    /// source's `timeout` (or the caller's deadline); the request's path and query are not
    /// read.
    async fn read_files(
        &self,
        files: &crate::model::Files,
        deadline: Option<Instant>,
    ) -> Result<Reply, Failure> {
        let budget = Instant::now() + self.source.timeout;
        let end = deadline.map_or(budget, |d| d.min(budget));
        let (source, files) = (self.source.clone(), files.clone());
        let work =
            tokio::task::spawn_blocking(move || crate::runtime::file_source::read(&source, &files));
        let failure = |kind, reason: String| Failure {
            source: self.source.name.clone(),
            reason,
            kind,
            status: None,
        };
        match tokio::time::timeout_at(end, work).await {
            Err(_) => Err(failure(
                FailureKind::Timeout,
                OutboundError::Timeout(self.source.timeout).to_string(),
            )),
            Ok(Err(e)) => Err(failure(
                FailureKind::NoAnswer,
                format!("reading failed: {e}"),
            )),
            Ok(Ok(Err(e))) => {
                let kind = if e.unusable() {
                    FailureKind::Unusable
                } else {
                    FailureKind::NoAnswer
                };
                Err(failure(kind, e.to_string()))
            }
            Ok(Ok(Ok(body))) => Ok(Reply {
                status: 200,
                headers: HeaderMap::new(),
                body,
            }),
        }
    }

    /// What the source's own settings read of each of its JSON answers (`source_reads`).
    pub fn reads(&self) -> &Reads {
        &self.reads
    }

    /// The failure of a call the breaker refused.
    fn refused(&self, e: &Refused) -> Failure {
        Failure {
            source: self.source.name.clone(),
            reason: e.to_string(),
            kind: FailureKind::Open,
            status: None,
        }
    }

    /// One HTTP exchange: a token of the source's rate budget first (waited for only while
    /// the wait fits), then one of its concurrency permits, held while the exchange lasts; it
    /// ends by `budget` (the call's) or the caller's `deadline`, whichever comes first.
    async fn attempt(
        &self,
        call: &Call,
        reads: &Reads,
        trace: &TraceContext,
        budget: Instant,
        deadline: Option<Instant>,
        (bearer, attempt): (Option<&HeaderValue>, u32),
    ) -> Result<Reply, OutboundError> {
        let s = &self.source;
        // The call's own span (exported with `--otlp-endpoint`), a child of the request's.
        let span_id = crate::runtime::trace_context::new_span_id();
        let by_caller = deadline.is_some_and(|d| d < budget);
        let end = deadline.map_or(budget, |d| d.min(budget));
        let out_of_time = || {
            if by_caller {
                OutboundError::Deadline
            } else {
                OutboundError::Timeout(s.timeout)
            }
        };
        if let Some(rate) = &self.rate {
            rate.take(end)
                .await
                .map_err(|RateLimited(wait)| OutboundError::RateLimited(wait))?;
        }
        let permit = tokio::time::timeout_at(end, self.limit.acquire())
            .await
            .map_err(|_| out_of_time())?;
        let _permit = permit.map_err(|_| OutboundError::Send("the client is closed".into()))?;
        let timeout = end.saturating_duration_since(Instant::now());
        if timeout.is_zero() {
            return Err(out_of_time());
        }
        let mut req = self
            .client
            .request(call.method.clone(), call.url.clone())
            .timeout(timeout)
            .headers(self.fixed.clone())
            .header(X_REQUEST_ID, trace.request_id.as_str())
            .header(TRACEPARENT, trace.trace.outbound_as(span_id))
            .header(reqwest::header::ACCEPT, accept(s));
        for (k, v) in &call.headers {
            req = req.header(k, v);
        }
        if let Some(state) = &trace.trace.state {
            req = req.header(TRACESTATE, state.clone());
        }
        if let Some(bearer) = bearer {
            req = req.header(reqwest::header::AUTHORIZATION, bearer.clone());
        }
        if let Some(body) = &call.body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, content_type(s))
                .body(serde_json::to_vec(body).unwrap_or_default());
        }
        let started = Instant::now();
        let began = crate::runtime::otlp::enabled().then(std::time::SystemTime::now);
        let result = match outbound::exchange_keeping(req, s.max_answer, timeout, &self.kept).await
        {
            // Cut short by the caller's deadline, or the end of the call's time.
            Err(OutboundError::Timeout(_)) => Err(out_of_time()),
            other => other,
        };
        let answer = match &result {
            Ok(r) => Answer::Status(r.status),
            Err(e) => match e.status() {
                Some(status) => Answer::Status(status),
                None if matches!(e, OutboundError::Timeout(_) | OutboundError::Deadline) => {
                    Answer::Timeout
                }
                None => Answer::Error,
            },
        };
        self.metrics.upstream(&s.name, answer, started.elapsed());
        if let Some(began) = began {
            self.call_span(trace, span_id, call, (attempt, answer), began);
        }
        let got = result?;
        let success = (200..300).contains(&got.status);
        let body = match &s.format {
            crate::model::decode::Format::Json => {
                // Counted before parsing: a parsed value costs far more memory than its text.
                crate::runtime::json_count::count_values(&got.body, s.max_values)
                    .map_err(|e| OutboundError::TooManyValues(e.max))?;
                if success {
                    outbound::json_reading(&got.body, reads)?
                } else {
                    // An error status a rule reads: its body may well not be JSON.
                    outbound::json_reading(&got.body, reads).unwrap_or(Value::Null)
                }
            }
            // Other formats count their values as they decode.
            format if success => decode_answer(format, &got.body, s.max_values)?,
            format => decode_answer(format, &got.body, s.max_values).unwrap_or(Value::Null),
        };
        if success
            && let Some(q) = &s.statuses.error_when
            && let Some(text) = error_text(q, &body)
        {
            return Err(OutboundError::InBody(text));
        }
        let rule = s
            .statuses
            .rules
            .iter()
            .find(|r| holds(r, got.status, &got.headers, &body));
        match rule {
            // No rule reads it: a 2xx with nothing in it is a failure, never "no data".
            None if success
                && got.status != 204
                && got.body.iter().all(u8::is_ascii_whitespace) =>
            {
                Err(OutboundError::Empty(got.status))
            }
            None if success => Ok(Reply {
                status: got.status,
                headers: got.headers,
                body,
            }),
            None => Err(outbound::status_error(got.status, &got.headers, &got.body)),
            Some(r) => classified(r, got.status, got.headers, body, &got.body),
        }
    }

    /// The exported span of one attempt of a source call: the source, its origin only (a URL
    /// may hold caller values or credentials), the answer's status (or timeout, error), the
    /// attempt (0 the first).
    fn call_span(
        &self,
        trace: &TraceContext,
        span_id: u64,
        call: &Call,
        (attempt, answer): (u32, Answer),
        began: std::time::SystemTime,
    ) {
        use crate::runtime::otlp::{Attr, Kind, Span, record};
        let (status, error) = match answer {
            Answer::Status(code) => (Attr::Int(i64::from(code)), code >= 400),
            Answer::Timeout => (Attr::Str("timeout".into()), true),
            Answer::Error => (Attr::Str("error".into()), true),
        };
        record(Span {
            trace_id: trace.trace.trace_id,
            span_id,
            parent: Some(trace.trace.span_id),
            name: format!("{} source {}", call.method, self.source.name),
            kind: Kind::Client,
            start: began,
            end: std::time::SystemTime::now(),
            attributes: vec![
                ("fosps.source", Attr::Str(self.source.name.clone())),
                (
                    "server.origin",
                    Attr::Str(call.url.origin().ascii_serialization()),
                ),
                ("http.request.method", Attr::Str(call.method.to_string())),
                ("http.response.status_code", status),
                ("fosps.attempt", Attr::Int(i64::from(attempt))),
            ],
            error,
        });
    }

    /// Sends one request (a Bulk Data kick-off, status poll, file download or job
    /// delete) with the source's client and trace headers and, when `credentials`, its
    /// configured headers and auth (a token renewed once after a 401), and gives the answer
    /// unread: its status not judged, its body left to stream. Not retried; like every call
    /// to the source, it goes through the source's circuit breaker (refused at once while it
    /// is open; a 5xx, a 429 or no answer count as failures), its rate budget and its
    /// concurrency limit, whose permit the answer holds until it is dropped (a file download
    /// counts while it streams). `head` bounds the wait for the answer's head; `total` the
    /// whole exchange, body included.
    pub async fn open(
        &self,
        method: Method,
        url: url::Url,
        headers: HeaderMap,
        credentials: bool,
        (head, total): (std::time::Duration, std::time::Duration),
        trace: &TraceContext,
    ) -> Result<Opened, Failure> {
        let ticket = self.breaker.admit().map_err(|e| self.refused(&e))?;
        let end = Instant::now() + head;
        let not_sent = |e: OutboundError| Failure::of(&self.source.name, e);
        if let Some(rate) = &self.rate {
            rate.take(end)
                .await
                .map_err(|RateLimited(wait)| not_sent(OutboundError::RateLimited(wait)))?;
        }
        let permit = tokio::time::timeout_at(end, self.limit.clone().acquire_owned())
            .await
            .map_err(|_| not_sent(OutboundError::Timeout(head)))?
            .map_err(|_| not_sent(OutboundError::Send("the client is closed".into())))?;
        // A token endpoint that is down counts against the source, as for its other calls.
        let bearer = match (&self.tokens, credentials) {
            (Some(tokens), true) => match tokens.bearer(Some(end)).await {
                Ok(bearer) => Some(bearer),
                Err(e) => return Err(self.token_failed(ticket, &e)),
            },
            _ => None,
        };
        let send = |bearer: Option<HeaderValue>| {
            let mut req = self
                .client
                .request(method.clone(), url.clone())
                .timeout(total)
                .header(X_REQUEST_ID, trace.request_id.as_str())
                .header(TRACEPARENT, trace.trace.outbound())
                .headers(headers.clone());
            if credentials {
                req = req.headers(self.fixed.clone());
            }
            if let Some(b) = bearer {
                req = req.header(reqwest::header::AUTHORIZATION, b);
            }
            async move {
                let started = Instant::now();
                let got = tokio::time::timeout(head, req.send())
                    .await
                    .map_err(|_| OutboundError::Timeout(head))
                    .and_then(|r| r.map_err(|e| OutboundError::of(&e, head)));
                let answer = match &got {
                    Ok(r) => Answer::Status(r.status().as_u16()),
                    Err(OutboundError::Timeout(_)) => Answer::Timeout,
                    Err(_) => Answer::Error,
                };
                self.metrics
                    .upstream(&self.source.name, answer, started.elapsed());
                got
            }
        };
        let mut got = send(bearer.clone()).await;
        if let (Some(tokens), Some(stale), Ok(resp)) = (&self.tokens, bearer, &got)
            && resp.status() == reqwest::StatusCode::UNAUTHORIZED
        {
            let renewed = match tokens.renew(&stale, Some(end)).await {
                Ok(renewed) => renewed,
                Err(e) => return Err(self.token_failed(ticket, &e)),
            };
            got = send(Some(renewed)).await;
        }
        match &got {
            Ok(r)
                if r.status().is_server_error()
                    || r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS =>
            {
                ticket.failed()
            }
            Ok(_) => ticket.succeeded(),
            Err(e) if e.transient() => ticket.failed(),
            Err(_) => drop(ticket),
        }
        let response = got.map_err(not_sent)?;
        Ok(Opened {
            response,
            _permit: permit,
        })
    }

    /// Sends the first call and follows the source's pagination, collecting the records
    /// `records` selects from each page, until `want` records (when given), the last page or
    /// the page limit. Gives the records and the first page's reply.
    /// Each page parsed keeping what `reads` reads (the records query composed with what
    /// the mapping reads, and the rest the caller reads of a page; see `send_reading`).
    #[allow(clippy::too_many_arguments)] // a paged read: each argument is a distinct part of it
    pub async fn pages(
        &self,
        first: Call,
        records: &crate::model::jsonpath::Query,
        want: Option<usize>,
        max_pages: u32,
        trace: &TraceContext,
        deadline: Option<Instant>,
        reads: &Reads,
    ) -> Result<(Vec<Value>, Reply, usize), Failure> {
        let pagination = self.source.pagination.clone();
        let mut calls = 0;
        let Paged { records, first, .. } = self
            .pages_with(
                first,
                records,
                want,
                max_pages,
                pagination.as_ref(),
                trace,
                deadline,
                &mut calls,
                reads,
            )
            .await?;
        Ok((records, first, calls))
    }

    /// As `pages`, with the given pagination instead of the source's, adding every HTTP
    /// attempt (failed ones and retries included) to `calls`. An answer with an error status
    /// is a failure (with its status), as `send` reads it. Only the records kept are cloned
    /// out of a page (the first `want`, or all), and each page is dropped once read. Each
    /// page is parsed keeping what `reads` reads (`Reads::All`: whole).
    #[allow(clippy::too_many_arguments)] // a paged read: each argument is a distinct part of it
    pub async fn pages_with(
        &self,
        first: Call,
        records: &crate::model::jsonpath::Query,
        want: Option<usize>,
        max_pages: u32,
        pagination: Option<&Pagination>,
        trace: &TraceContext,
        deadline: Option<Instant>,
        calls: &mut usize,
        reads: &Reads,
    ) -> Result<Paged, Failure> {
        let mut call = first;
        let mut out = Vec::new();
        let mut first_reply = None;
        let mut offset = 0u64;
        let mut page = 0u32;
        let mut pages_left = false;
        loop {
            let reply = self
                .send_reading(&call, reads, trace, deadline, calls)
                .await?;
            // References first: only the records still wanted are cloned.
            let found = records.select(&reply.body, &reply.body);
            let n = found.len();
            let room = want.map_or(n, |w| w.saturating_sub(out.len()));
            out.extend(found.into_iter().take(room).cloned());
            page += 1;
            let next = match pagination
                .and_then(|p| self.next_call(p, &call, &reply, n, &mut offset, page))
            {
                Some(Ok(c)) => Some(c),
                // A next page that cannot be followed, when more records are wanted: the
                // read is not whole, and ending it there would pass for the last page.
                Some(Err(reason)) if n > 0 && want.is_none_or(|w| out.len() < w) => {
                    return Err(Failure {
                        source: self.source.name.clone(),
                        reason: reason.to_owned(),
                        kind: FailureKind::Unusable,
                        status: None,
                    });
                }
                Some(Err(_)) | None => None,
            };
            if first_reply.is_none() {
                first_reply = Some(reply);
            }
            match next {
                Some(c) if want.is_none_or(|w| out.len() < w) && page < max_pages && n > 0 => {
                    call = c
                }
                Some(_) if page >= max_pages && n > 0 && want.is_none_or(|w| out.len() < w) => {
                    pages_left = true;
                    break;
                }
                _ => break,
            }
        }
        let first = first_reply.ok_or_else(|| Failure {
            source: self.source.name.clone(),
            reason: "no page".into(),
            kind: FailureKind::Refused,
            status: None,
        })?;
        Ok(Paged {
            records: out,
            first,
            pages_left,
        })
    }

    /// The call of the page after `reply`, if there is one; an error (why it is not
    /// followed) for a next link that leads to another origin or back to the page just read.
    fn next_call(
        &self,
        pagination: &Pagination,
        call: &Call,
        reply: &Reply,
        found: usize,
        offset: &mut u64,
        page: u32,
    ) -> Option<Result<Call, &'static str>> {
        let with_url = |u: url::Url| {
            // Only follow links to the source's own origin, so that an answer cannot send
            // credentials elsewhere; a link elsewhere is an error, not the last page.
            Some(if u.origin() != self.source.url.origin() {
                Err("the link to the next page leads to another origin, which is never followed")
            } else if u == call.url {
                Err("the link to the next page is the page just read (a pagination loop)")
            } else {
                Ok(Call {
                    url: u,
                    ..call.clone()
                })
            })
        };
        match pagination {
            Pagination::NextUrl(q) => {
                let next = q
                    .select(&reply.body, &reply.body)
                    .into_iter()
                    .next()?
                    .as_str()?;
                with_url(call.url.join(next).ok()?)
            }
            Pagination::Fhir => {
                let links = reply.body.get("link")?.as_array()?;
                let next = links
                    .iter()
                    .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))?;
                with_url(call.url.join(next.get("url")?.as_str()?).ok()?)
            }
            Pagination::LinkHeader => {
                let header = reply
                    .headers
                    .get_all(reqwest::header::LINK)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect::<Vec<_>>()
                    .join(",");
                with_url(call.url.join(&link_next(&header)?).ok()?)
            }
            Pagination::Offset {
                param,
                limit_param,
                limit,
            } => {
                if found < *limit as usize {
                    return None;
                }
                *offset += u64::from(*limit);
                let mut u = call.url.clone();
                set_query(
                    &mut u,
                    &[
                        (param, offset.to_string()),
                        (limit_param, limit.to_string()),
                    ],
                );
                Some(Ok(Call {
                    url: u,
                    ..call.clone()
                }))
            }
            Pagination::Page { param, start } => {
                let mut u = call.url.clone();
                set_query(&mut u, &[(param, (start + page).to_string())]);
                Some(Ok(Call {
                    url: u,
                    ..call.clone()
                }))
            }
            Pagination::Cursor { path, param } => {
                let cursor = path.select(&reply.body, &reply.body).into_iter().next()?;
                let text = match cursor {
                    Value::String(s) if !s.is_empty() => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                let mut u = call.url.clone();
                set_query(&mut u, &[(param, text)]);
                Some(if u == call.url {
                    Err("the next cursor is the one just sent (a pagination loop)")
                } else {
                    Ok(Call {
                        url: u,
                        ..call.clone()
                    })
                })
            }
        }
    }
}

/// What a source's own settings read of each of its JSON answers: the queries of its
/// `statuses` rules (`path`, `message`, `delayPath`) and `errorWhen`, and its pagination's
/// next link (`nextUrl`, a FHIR Bundle's `link`) or cursor, each selected node whole.
fn source_reads(s: &Source) -> Reads {
    let mut reads = Reads::nothing();
    let queries = s
        .statuses
        .rules
        .iter()
        .flat_map(|r| [&r.path, &r.message, &r.delay_path])
        .chain([&s.statuses.error_when])
        .flatten();
    for q in queries {
        reads.add(q.reads(Reads::All));
    }
    match &s.pagination {
        Some(Pagination::NextUrl(q)) | Some(Pagination::Cursor { path: q, .. }) => {
            reads.add(q.reads(Reads::All))
        }
        Some(Pagination::Fhir) => reads.add(Reads::at(
            &[crate::model::reads::Step::Member("link".into())],
            Reads::All,
        )),
        Some(Pagination::LinkHeader | Pagination::Offset { .. } | Pagination::Page { .. })
        | None => {}
    }
    reads
}

/// Sets query parameters, replacing earlier values of the same names.
pub fn set_query(u: &mut url::Url, pairs: &[(&String, String)]) {
    let kept: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| !pairs.iter().any(|(p, _)| p.as_str() == k))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut q = u.query_pairs_mut();
    q.clear();
    for (k, v) in kept {
        q.append_pair(&k, &v);
    }
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
}

/// The target of the first `rel="next"` link of a `Link` header (RFC 8288 section 3). A
/// target may hold commas and semicolons; a parameter value may be a token or a quoted string
/// (with `\` escapes, commas and semicolons); `rel` may name several relation types; names and
/// relation types are case-insensitive; only the first `rel` of a link counts. A header that
/// breaks the grammar before the end of its `next` link gives none.
fn link_next(header: &str) -> Option<String> {
    const OWS: [char; 2] = [' ', '\t'];
    // Empty list elements are allowed.
    let mut rest = header.trim_start_matches([' ', '\t', ',']);
    while !rest.is_empty() {
        let (target, after) = rest.strip_prefix('<')?.split_once('>')?;
        rest = after.trim_start_matches(OWS);
        let mut rel = None;
        while let Some(param) = rest.strip_prefix(';') {
            let param = param.trim_start_matches(OWS);
            let end = param
                .find(['=', ';', ',', ' ', '\t'])
                .unwrap_or(param.len());
            let (name, after) = param.split_at(end);
            rest = after.trim_start_matches(OWS);
            let mut value = String::new();
            if let Some(v) = rest.strip_prefix('=') {
                (value, rest) = param_value(v.trim_start_matches(OWS))?;
                rest = rest.trim_start_matches(OWS);
            }
            if rel.is_none() && name.eq_ignore_ascii_case("rel") {
                rel = Some(value);
            }
        }
        let next = rel.is_some_and(|r| {
            r.split_ascii_whitespace()
                .any(|t| t.eq_ignore_ascii_case("next"))
        });
        if next {
            return Some(target.to_owned());
        }
        // The link ends at a comma or at the end of the header.
        if !rest.is_empty() {
            rest = rest.strip_prefix(',')?.trim_start_matches([' ', '\t', ',']);
        }
    }
    None
}

/// A parameter value at the start of `s` (a quoted string unescaped, or a token), and what
/// follows it.
fn param_value(s: &str) -> Option<(String, &str)> {
    let Some(quoted) = s.strip_prefix('"') else {
        let end = s.find([';', ',', ' ', '\t']).unwrap_or(s.len());
        return Some((s[..end].to_owned(), &s[end..]));
    };
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &quoted[i + 1..])),
            '\\' => value.push(chars.next()?.1),
            c => value.push(c),
        }
    }
    None
}

/// An answer in a declared format other than JSON, decoded (an empty body is no document).
fn decode_answer(
    format: &crate::model::decode::Format,
    body: &[u8],
    max_values: usize,
) -> Result<Value, OutboundError> {
    use crate::model::decode::{DecodeError, Limits, decode};
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    decode(format, body, Limits { max_values }).map_err(|e| match e {
        DecodeError::TooManyValues { max } => OutboundError::TooManyValues(max),
        error => OutboundError::Format {
            format: format.name(),
            error,
        },
    })
}

fn accept(s: &Source) -> &'static str {
    match &s.format {
        crate::model::decode::Format::Json => {}
        crate::model::decode::Format::Ndjson => {
            return "application/x-ndjson, application/fhir+ndjson;q=0.9";
        }
        crate::model::decode::Format::Csv(_) => return "text/csv, text/plain;q=0.5",
        crate::model::decode::Format::Xml(_) => return "application/xml, text/xml;q=0.9",
        crate::model::decode::Format::FhirXml(_) => {
            return "application/fhir+xml, application/xml;q=0.9";
        }
    }
    match s.kind {
        crate::model::vocabulary::SourceType::Fhir => {
            "application/fhir+json, application/json;q=0.9"
        }
        crate::model::vocabulary::SourceType::Json => {
            "application/json, application/fhir+json;q=0.9"
        }
    }
}

fn content_type(s: &Source) -> &'static str {
    match s.kind {
        crate::model::vocabulary::SourceType::Fhir => "application/fhir+json",
        crate::model::vocabulary::SourceType::Json => "application/json",
    }
}

/// True when an answer meets every condition of rule `r`.
fn holds(r: &ResponseRule, status: u16, headers: &HeaderMap, body: &Value) -> bool {
    let status_holds = if r.statuses.is_empty() {
        (200..300).contains(&status)
    } else {
        r.statuses.contains(&status)
    };
    status_holds
        && r.header
            .as_ref()
            .is_none_or(|h| headers.contains_key(h.as_str()))
        && r.path.as_ref().is_none_or(|q| {
            let found = q.select(body, body);
            match &r.equals {
                Some(want) => found.contains(&want),
                None => found.iter().any(|v| truthy(v)),
            }
        })
}

/// A value that says something: not `null`, `false` or an empty string.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.trim().is_empty(),
        _ => true,
    }
}

/// What an answer that rule `r` matched is: a failure, one to send again (after the delay it
/// gives), or no data.
fn classified(
    r: &ResponseRule,
    status: u16,
    headers: HeaderMap,
    body: Value,
    raw: &[u8],
) -> Result<Reply, OutboundError> {
    let message = || {
        r.message
            .as_ref()
            .or(r.path.as_ref())
            .and_then(|q| error_text(q, &body))
            .or_else(|| outbound::message_of(raw).0)
            .unwrap_or_else(|| format!("status {status}"))
    };
    match r.action {
        RuleAction::Empty => Ok(Reply {
            status,
            headers,
            body: Value::Null,
        }),
        RuleAction::Error => Err(OutboundError::InBody(message())),
        RuleAction::Retry => Err(OutboundError::Retry {
            message: format!("an error to send again: {}", message()),
            wait: delay(r, &headers, &body),
        }),
        RuleAction::RateLimited => Err(OutboundError::Retry {
            message: "that it is rate-limiting".to_owned(),
            wait: delay(r, &headers, &body).or_else(|| outbound::retry_after(&headers)),
        }),
    }
}

/// The wait a matched answer asks for: seconds at the rule's `delayPath` in the body, or in
/// its `delayHeader`; at most `outbound::MAX_RETRY_AFTER`.
fn delay(r: &ResponseRule, headers: &HeaderMap, body: &Value) -> Option<Duration> {
    let seconds = |v: &Value| match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    let secs = match (&r.delay_path, &r.delay_header) {
        (Some(q), _) => q.select(body, body).into_iter().find_map(seconds),
        (None, Some(h)) => headers
            .get(h.as_str())
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok()),
        (None, None) => None,
    }?;
    (secs.is_finite() && secs >= 0.0)
        .then(|| Duration::from_secs_f64(secs.min(outbound::MAX_RETRY_AFTER.as_secs_f64())))
}

/// The text of the first value `q` matches in a 2xx body, unless it is `null`, `false` or
/// an empty string: the message of a failure that `statuses.errorWhen` finds.
fn error_text(q: &crate::model::jsonpath::Query, body: &Value) -> Option<String> {
    let found = q.select(body, body).into_iter().find(|v| truthy(v))?;
    Some(match found {
        Value::String(s) => outbound::clean(s),
        other => outbound::message_of(other.to_string().as_bytes())
            .0
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers_give_next() {
        let h = r#"<https://x/p?page=1>; rel="prev", <https://x/p?page=3>; rel="next""#;
        assert_eq!(link_next(h).as_deref(), Some("https://x/p?page=3"));
        assert_eq!(link_next(r#"<https://x/p>; rel="last""#), None);
        assert_eq!(link_next(""), None);
    }

    #[test]
    fn link_targets_may_hold_commas_and_semicolons() {
        let h = r#"<https://x/p?ids=1,2;v=3&page=1>; rel=prev, <https://x/p?ids=1,2;v=3&page=3>; rel=next"#;
        assert_eq!(
            link_next(h).as_deref(),
            Some("https://x/p?ids=1,2;v=3&page=3")
        );
    }

    #[test]
    fn link_parameters_may_be_quoted_with_commas_semicolons_and_escapes() {
        let h = r#"<https://x/a>; title="a, b; \"c\", ü"; rel="prev", <https://x/b>; title = "x,y" ; rel = next"#;
        assert_eq!(link_next(h).as_deref(), Some("https://x/b"));
        let h = r#"<https://x/a>; rel="next"; title="never closed"#;
        assert_eq!(link_next(h), None);
        let h = r#"<https://x/a>; title="never closed, <https://x/b>; rel=next"#;
        assert_eq!(link_next(h), None);
    }

    #[test]
    fn link_relations_are_lists_case_insensitive_and_counted_once() {
        let next = link_next;
        assert_eq!(
            next(r#"<https://x/a>; rel="last next""#).as_deref(),
            Some("https://x/a")
        );
        assert_eq!(
            next(r#"<https://x/a>; REL=NEXT"#).as_deref(),
            Some("https://x/a")
        );
        assert_eq!(next(r#"<https://x/a>; rel="nextpage""#), None);
        assert_eq!(next(r#"<https://x/a>; rel="prev"; rel="next""#), None);
        assert_eq!(next(r##"<https://x/a>; anchor="#next""##), None);
        assert_eq!(
            next(r#", ,<https://x/a>; rel=prev,, <https://x/b>;rel=next,"#).as_deref(),
            Some("https://x/b")
        );
    }

    #[test]
    fn broken_link_headers_give_no_next() {
        for h in [
            r#"https://x/a; rel=next"#,
            r#"<https://x/a; rel=next"#,
            r#"<https://x/a> rel=next"#,
            r#"<https://x/a>; rel=prev <https://x/b>; rel=next"#,
        ] {
            assert_eq!(link_next(h), None, "{h}");
        }
    }

    #[test]
    fn query_values_are_replaced() {
        let mut u = url::Url::parse("http://x/p?a=1&skip=0").expect("url");
        set_query(&mut u, &[(&"skip".to_owned(), "20".into())]);
        assert_eq!(u.as_str(), "http://x/p?a=1&skip=20");
    }
}
