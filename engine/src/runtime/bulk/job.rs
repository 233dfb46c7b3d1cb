//! The job of a FHIR Bulk Data export on the source: the kick-off (`202 Accepted` and the
//! `Content-Location` of its status), the status polls (`Retry-After` as seconds or a date,
//! cut to the longest poll interval, never past the export's deadline; `X-Progress` logged),
//! and the `DELETE` of the job, at the end or, when a run is dropped midway, from a task.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use super::error::BulkError;
use crate::model::BulkExport;
use crate::model::vocabulary::BulkLevel;
use crate::runtime::outbound;
use crate::runtime::trace_context::TraceContext;
use crate::runtime::upstream::SourceClient;

/// Longest `X-Progress` text logged.
const MAX_PROGRESS: usize = 100;

/// The kick-off URL of an export: the level's `$export` with `_type`, `_typeFilter`,
/// `_outputFormat` and `_since`.
pub fn kick_off_url(base: &url::Url, bulk: &BulkExport, since: Option<&str>) -> url::Url {
    let mut url = base.clone();
    let root = base.path().trim_end_matches('/');
    let path = match (bulk.level, &bulk.group) {
        (BulkLevel::Group, Some(g)) => format!("{root}/Group/{g}/$export"),
        (BulkLevel::Patient, _) => format!("{root}/Patient/$export"),
        _ => format!("{root}/$export"),
    };
    url.set_path(&path);
    url.set_query(None);
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("_outputFormat", &bulk.output_format);
        if !bulk.types.is_empty() {
            q.append_pair("_type", &bulk.types.join(","));
        }
        for f in &bulk.type_filters {
            q.append_pair("_typeFilter", f);
        }
        if let Some(s) = since {
            q.append_pair("_since", s);
        }
    }
    url
}

/// An export job on the source, deleted when dropped undeleted (from a task).
pub struct Job {
    pub client: Arc<SourceClient>,
    /// Where its status is polled (and where it is deleted).
    pub status: url::Url,
    trace: TraceContext,
    deleted: bool,
}

fn accept(v: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(reqwest::header::ACCEPT, HeaderValue::from_static(v));
    h
}

/// What an error answer of the source says: its message and `OperationOutcome`, if any.
async fn error_of(
    resp: reqwest::Response,
    cap: u64,
    timeout: Duration,
) -> (Option<String>, Option<Value>) {
    match outbound::read_body(resp, cap, timeout).await {
        Ok(body) => outbound::message_of(&body),
        Err(_) => (None, None),
    }
}

/// The wait a `Retry-After` asks for (seconds or an HTTP date), at most `cap`.
pub fn retry_after(h: &HeaderMap, cap: Duration) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs.min(cap.as_secs().saturating_add(1))),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
            // The source's date, against the wall clock.
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
        }
    };
    Some(wait.min(cap))
}

/// True for an error status the Bulk Data IG says to poll again after: 429, and a 5xx whose
/// `OperationOutcome` has a `transient` issue (503 without one too).
fn transient(status: StatusCode, outcome: Option<&Value>) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::SERVICE_UNAVAILABLE
        || (status.is_server_error()
            && outcome.is_some_and(|o| {
                o["issue"]
                    .as_array()
                    .is_some_and(|i| i.iter().any(|x| x["code"] == "transient"))
            }))
}

impl Job {
    /// Kicks the export off: `GET` with `Prefer: respond-async`, answered `202 Accepted` with
    /// the `Content-Location` of the job's status (on the source's origin or a declared one).
    pub async fn kick_off(
        client: Arc<SourceClient>,
        url: url::Url,
        origins: &[url::Origin],
        trace: &TraceContext,
        deadline: Instant,
    ) -> Result<Job, BulkError> {
        let s = client.source.clone();
        let timeout = s.timeout.min(left(deadline)?);
        let mut headers = accept("application/fhir+json");
        headers.insert("prefer", HeaderValue::from_static("respond-async"));
        let resp = client
            .open(
                Method::GET,
                url.clone(),
                headers,
                true,
                (timeout, timeout),
                trace,
            )
            .await
            .map(|o| o.response)
            .map_err(|f| BulkError::KickOff {
                message: f.reason,
                outcome: None,
            })?;
        let status = resp.status();
        if status != StatusCode::ACCEPTED {
            let (message, outcome) = error_of(resp, s.max_answer, timeout).await;
            return Err(BulkError::KickOff {
                message: format!(
                    "answered {}{}",
                    status.as_u16(),
                    message.map(|m| format!(": {m}")).unwrap_or_default()
                ),
                outcome,
            });
        }
        let location = resp
            .headers()
            .get(reqwest::header::CONTENT_LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| url.join(v.trim()).ok())
            .ok_or(BulkError::NoStatus)?;
        if !origins.contains(&location.origin()) {
            return Err(BulkError::StatusElsewhere(
                location.origin().ascii_serialization(),
            ));
        }
        Ok(Job {
            client,
            status: location,
            trace: trace.clone(),
            deleted: false,
        })
    }

    /// Polls the job's status until it is complete, and gives the manifest's JSON. Each poll
    /// adds to `calls`; `X-Progress` is logged.
    pub async fn wait(
        &self,
        bulk: &BulkExport,
        connector: &str,
        deadline: Instant,
        mut polled: impl FnMut(),
    ) -> Result<Value, BulkError> {
        let s = &self.client.source;
        // Without `Retry-After`: 1s (or the longest interval, when shorter), doubling.
        let floor = Duration::from_secs(1).min(bulk.max_poll_interval);
        let mut next = floor;
        let too_late = || BulkError::Deadline(bulk.max_duration);
        loop {
            let timeout = s.timeout.min(left(deadline).map_err(|_| too_late())?);
            let resp = self
                .client
                .open(
                    Method::GET,
                    self.status.clone(),
                    accept("application/json"),
                    true,
                    (timeout, timeout),
                    &self.trace,
                )
                .await
                .map(|o| o.response);
            polled();
            let wait = match resp {
                Err(f) if deadline <= Instant::now() => {
                    tracing::debug!(connector, reason = %f, "status poll cut by the deadline");
                    return Err(too_late());
                }
                // A poll that got no answer is tried again, as a 503 would be.
                Err(f) if f.status.is_none() => {
                    tracing::warn!(connector, reason = %f, "bulk export status poll failed; polling again");
                    next
                }
                Err(f) => return Err(BulkError::Status(f.reason)),
                Ok(resp) if resp.status() == StatusCode::OK => {
                    let body = outbound::read_body(resp, s.max_answer, timeout)
                        .await
                        .map_err(|e| BulkError::Status(e.to_string()))?;
                    return outbound::json(&body).map_err(|e| BulkError::Status(e.to_string()));
                }
                Ok(resp) if resp.status() == StatusCode::ACCEPTED => {
                    if let Some(p) = resp
                        .headers()
                        .get("x-progress")
                        .and_then(|v| v.to_str().ok())
                    {
                        let p: String = outbound::clean(p).chars().take(MAX_PROGRESS).collect();
                        tracing::info!(connector, progress = %p, "bulk export in progress");
                    }
                    retry_after(resp.headers(), bulk.max_poll_interval).unwrap_or(next)
                }
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    let (message, outcome) = error_of(resp, s.max_answer, timeout).await;
                    if !transient(status, outcome.as_ref()) {
                        return Err(BulkError::Failed {
                            message: format!(
                                "answered {}{}",
                                status.as_u16(),
                                message.map(|m| format!(": {m}")).unwrap_or_default()
                            ),
                            outcome,
                        });
                    }
                    retry_after(&headers, bulk.max_poll_interval).unwrap_or(next)
                }
            };
            next = (next * 2).min(bulk.max_poll_interval);
            let wait = wait.max(floor);
            if Instant::now() + wait >= deadline {
                return Err(too_late());
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Deletes the job (`DELETE` of its status URL); says why not when it could not.
    pub async fn delete(&mut self) -> Result<(), String> {
        self.deleted = true;
        delete(&self.client, self.status.clone(), &self.trace).await
    }
}

impl Drop for Job {
    /// A run dropped midway (cancelled, or its task ended) still deletes its job.
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (client, url, trace) =
                (self.client.clone(), self.status.clone(), self.trace.clone());
            rt.spawn(async move {
                if let Err(why) = delete(&client, url, &trace).await {
                    tracing::warn!(source = %client.source.name, "the bulk export job of a stopped run was not deleted: {why}");
                }
            });
        }
    }
}

async fn delete(client: &SourceClient, url: url::Url, trace: &TraceContext) -> Result<(), String> {
    let t = client.source.timeout;
    match client
        .open(Method::DELETE, url, HeaderMap::new(), true, (t, t), trace)
        .await
        .map(|o| o.response)
    {
        Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => Ok(()),
        Ok(r) => Err(format!("answered {}", r.status().as_u16())),
        Err(f) => Err(f.reason),
    }
}

/// Time left before `deadline`, or the deadline error.
fn left(deadline: Instant) -> Result<Duration, BulkError> {
    let l = deadline.saturating_duration_since(Instant::now());
    if l.is_zero() {
        Err(BulkError::Deadline(Duration::ZERO))
    } else {
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_capped_in_both_forms() {
        let cap = Duration::from_secs(60);
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("31536000"));
        assert_eq!(retry_after(&h, cap), Some(cap));
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, cap), Some(Duration::from_secs(7)));
        let in_a_year = (chrono::Utc::now() + chrono::Duration::days(365)).to_rfc2822();
        h.insert(
            "retry-after",
            HeaderValue::from_str(&in_a_year).expect("a header value"),
        );
        assert_eq!(retry_after(&h, cap), Some(cap));
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, cap), None);
    }
}
