//! The upstream client: reqwest with rustls and pooled connections; per source a timeout,
//! bounded retries with exponential backoff and jitter on idempotent requests (honouring
//! `Retry-After`), a concurrency limit and authentication; and pagination across pages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::model::{Auth, Pagination, Source};
use crate::runtime::build_error::BuildError;
use crate::runtime::metrics::{Answer, Metrics};
use crate::runtime::problem::ProblemKind;

/// Largest upstream answer read, so that a source cannot exhaust memory.
pub const MAX_ANSWER: usize = 32 << 20;
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

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
}

impl Failure {
    /// A source that answered an error status: the status, and the text of its
    /// `OperationOutcome` when it sent one.
    pub fn answered(source: &str, reply: &Reply) -> Failure {
        let detail = crate::model::fhir::issue_text(&reply.body)
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        Failure {
            source: source.to_owned(),
            reason: format!("answered {}{detail}", reply.status),
            kind: FailureKind::Refused,
            status: Some(reply.status),
        }
    }
}

impl FailureKind {
    /// What a caller is answered for a source that failed so: a timeout 504, the others 502.
    pub fn problem(self) -> ProblemKind {
        match self {
            FailureKind::Timeout => ProblemKind::Timeout,
            FailureKind::NoAnswer | FailureKind::Refused | FailureKind::Unusable => {
                ProblemKind::SourceFailed
            }
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

/// The client of one source.
pub struct SourceClient {
    pub source: Arc<Source>,
    client: reqwest::Client,
    limit: Semaphore,
    fixed: HeaderMap,
    metrics: Arc<Metrics>,
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
        let client = reqwest::Client::builder()
            .user_agent(concat!("fosps-engine/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| BuildError::Client(e.to_string()))?;
        let mut clients = HashMap::new();
        for s in sources {
            let fixed = fixed_headers(&s)?;
            clients.insert(
                s.name.clone(),
                Arc::new(SourceClient {
                    limit: Semaphore::new(s.concurrency as usize),
                    source: s,
                    client: client.clone(),
                    fixed,
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
        source_name: s.name.clone(),
        what,
    };
    for (k, v) in &s.headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad("header name"))?;
        let mut value = HeaderValue::from_str(&v.0).map_err(|_| bad("header value"))?;
        value.set_sensitive(true);
        h.insert(name, value);
    }
    let (name, value) = match &s.auth {
        None => return Ok(h),
        Some(Auth::Bearer(t)) => (reqwest::header::AUTHORIZATION, format!("Bearer {}", t.0)),
        Some(Auth::ApiKey { header, value }) => (
            HeaderName::from_bytes(header.as_bytes()).map_err(|_| bad("API key header"))?,
            value.0.clone(),
        ),
        Some(Auth::Basic { username, password }) => {
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", username.0, password.0));
            (reqwest::header::AUTHORIZATION, format!("Basic {token}"))
        }
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| bad("credential"))?;
    value.set_sensitive(true);
    h.insert(name, value);
    Ok(h)
}

impl SourceClient {
    /// Sends a call with the source's headers, limits, timeout and retries. A GET is retried
    /// after connection errors, timeouts, 5xx and 429; other methods are sent once.
    pub async fn send(&self, call: &Call, request_id: &str) -> Result<Reply, Failure> {
        self.send_counted(call, request_id, &mut 0).await
    }

    /// As `send`, adding every HTTP attempt (retries included) to `calls`.
    pub async fn send_counted(
        &self,
        call: &Call,
        request_id: &str,
        calls: &mut usize,
    ) -> Result<Reply, Failure> {
        let s = &self.source;
        let fail = |reason: String, kind: FailureKind, status: Option<u16>| Failure {
            source: s.name.clone(),
            reason,
            kind,
            status,
        };
        let _permit = self
            .limit
            .acquire()
            .await
            .map_err(|_| fail("closed".into(), FailureKind::NoAnswer, None))?;
        let retries = if call.method == Method::GET {
            s.retries
        } else {
            0
        };
        let mut attempt = 0;
        loop {
            let mut req = self
                .client
                .request(call.method.clone(), call.url.clone())
                .timeout(s.timeout)
                .headers(self.fixed.clone())
                .header("x-request-id", request_id)
                .header(reqwest::header::ACCEPT, accept(s));
            for (k, v) in &call.headers {
                req = req.header(k, v);
            }
            if let Some(body) = &call.body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, content_type(s))
                    .body(serde_json::to_vec(body).unwrap_or_default());
            }
            *calls += 1;
            let started = tokio::time::Instant::now();
            let sent = req.send().await;
            let answer = match &sent {
                Ok(r) => Answer::Status(r.status().as_u16()),
                Err(e) if e.is_timeout() => Answer::Timeout,
                Err(_) => Answer::Error,
            };
            self.metrics.upstream(&s.name, answer, started.elapsed());
            let outcome: Result<std::convert::Infallible, (Failure, Option<Duration>)> = match sent
            {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                        Err((
                            fail(
                                format!("answered {status}"),
                                FailureKind::Refused,
                                Some(status.as_u16()),
                            ),
                            retry_after(&headers),
                        ))
                    } else {
                        match read_body(resp, s.max_values).await {
                            Ok(body) => {
                                return Ok(Reply {
                                    status: status.as_u16(),
                                    headers,
                                    body,
                                });
                            }
                            Err(e) => {
                                return Err(fail(e, FailureKind::Unusable, Some(status.as_u16())));
                            }
                        }
                    }
                }
                Err(e) if e.is_timeout() => Err((
                    fail(
                        format!("no answer within {}", humanize(s.timeout)),
                        FailureKind::Timeout,
                        None,
                    ),
                    None,
                )),
                Err(e) if e.is_connect() => Err((
                    fail("connection failed".into(), FailureKind::NoAnswer, None),
                    None,
                )),
                Err(e) => Err((
                    fail(
                        format!("request failed: {}", without_url(&e)),
                        FailureKind::NoAnswer,
                        None,
                    ),
                    None,
                )),
            };
            let Err((failure, after)) = outcome;
            if attempt >= retries {
                return Err(failure);
            }
            attempt += 1;
            let wait = after.unwrap_or_else(|| backoff(attempt));
            tracing::debug!(source = %s.name, attempt, wait_ms = wait.as_millis() as u64, "retrying: {}", failure.reason);
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends the first call and follows the source's pagination, collecting the records
    /// `records` selects from each page, until `want` records (when given), the last page or
    /// the page limit. Gives the records and the first page's reply.
    pub async fn pages(
        &self,
        first: Call,
        records: &crate::model::jsonpath::Query,
        want: Option<usize>,
        max_pages: u32,
        request_id: &str,
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
                request_id,
                &mut calls,
            )
            .await?;
        Ok((records, first, calls))
    }

    /// As `pages`, with the given pagination instead of the source's, adding every HTTP
    /// attempt (failed ones and retries included) to `calls`. An answer with an error status
    /// is a failure (with its status). Only the records kept are cloned out of a page (the
    /// first `want`, or all), and each page is dropped once read.
    #[allow(clippy::too_many_arguments)] // a paged read: each argument is a distinct part of it
    pub async fn pages_with(
        &self,
        first: Call,
        records: &crate::model::jsonpath::Query,
        want: Option<usize>,
        max_pages: u32,
        pagination: Option<&Pagination>,
        request_id: &str,
        calls: &mut usize,
    ) -> Result<Paged, Failure> {
        let mut call = first;
        let mut out = Vec::new();
        let mut first_reply = None;
        let mut offset = 0u64;
        let mut page = 0u32;
        let mut pages_left = false;
        loop {
            let reply = self.send_counted(&call, request_id, calls).await?;
            if reply.status >= 400 {
                return Err(Failure::answered(&self.source.name, &reply));
            }
            // References first: only the records still wanted are cloned.
            let found = records.select(&reply.body, &reply.body);
            let n = found.len();
            let room = want.map_or(n, |w| w.saturating_sub(out.len()));
            out.extend(found.into_iter().take(room).cloned());
            page += 1;
            let next =
                pagination.and_then(|p| self.next_call(p, &call, &reply, n, &mut offset, page));
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

    fn next_call(
        &self,
        pagination: &Pagination,
        call: &Call,
        reply: &Reply,
        found: usize,
        offset: &mut u64,
        page: u32,
    ) -> Option<Call> {
        let with_url = |u: url::Url| {
            // Only follow links to the source's own origin, so that an answer cannot send
            // credentials elsewhere.
            (u.origin() == self.source.url.origin()).then(|| Call {
                url: u,
                ..call.clone()
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
                Some(Call {
                    url: u,
                    ..call.clone()
                })
            }
            Pagination::Page { param, start } => {
                let mut u = call.url.clone();
                set_query(&mut u, &[(param, (start + page).to_string())]);
                Some(Call {
                    url: u,
                    ..call.clone()
                })
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
                Some(Call {
                    url: u,
                    ..call.clone()
                })
            }
        }
    }
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

fn accept(s: &Source) -> &'static str {
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

async fn read_body(mut resp: reqwest::Response, max_values: usize) -> Result<Value, String> {
    if resp.content_length().is_some_and(|n| n > MAX_ANSWER as u64) {
        return Err(format!("answer larger than {} MiB", MAX_ANSWER >> 20));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("answer cut: {}", without_url(&e)))?
    {
        if bytes.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("answer larger than {} MiB", MAX_ANSWER >> 20));
        }
        bytes.extend_from_slice(&chunk);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    // Counted before parsing: a parsed value costs far more memory than its text.
    crate::runtime::json_count::count_values(&bytes, max_values)
        .map_err(|e| format!("answer refused: {e} (the source's `maxValues`)"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("answer is not JSON: {e}"))
}

/// A reqwest error without its URL (which may carry caller values or credentials).
pub(crate) fn without_url(e: &reqwest::Error) -> String {
    let mut e2 = format!("{e}");
    if let Some(u) = e.url() {
        e2 = e2.replace(u.as_str(), "<url>");
    }
    e2
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let wait = match v.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(v.trim()).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Exponential backoff with full jitter before retry `attempt` (1 for the first retry): a
/// random wait up to 200 ms, then up to 400 ms, 800 ms ... (at most 5 s).
pub(crate) fn backoff(attempt: u32) -> Duration {
    let cap_ms = 100u64.saturating_mul(1 << attempt.min(6)).min(5_000);
    Duration::from_millis(fastrand::u64(..=cap_ms))
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
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
    fn query_values_are_replaced() {
        let mut u = url::Url::parse("http://x/p?a=1&skip=0").expect("url");
        set_query(&mut u, &[(&"skip".to_owned(), "20".into())]);
        assert_eq!(u.as_str(), "http://x/p?a=1&skip=20");
    }
}
