//! FHIR Bulk Data `$export` (Bulk Data Access IG 2.0) as a cron read: the job kicked off and
//! polled (`job`), its manifest checked (`manifest`), its `output` files streamed line by line
//! (`ndjson`) to the runner in batches, its `deleted` files (Bundles of `DELETE` requests)
//! handed over as references, its `error` files read into the run report, and the job
//! deleted at the end, after a failure too. The runner maps and writes each batch
//! (`Consumer`); nothing of an export is held whole.

pub mod error;
pub mod job;
pub mod manifest;
pub mod ndjson;

use std::future::Future;
use std::sync::Arc;

use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use crate::model::BulkExport;
use crate::runtime::report::{Phase, Progress, RunReport};
use crate::runtime::trace_context::TraceContext;
use crate::runtime::upstream::SourceClient;
pub use error::BulkError;
use job::Job;
use manifest::{FileRef, Manifest};
use ndjson::{Lines, Text};

/// Most server errors (lines of the `error` files) listed in a run report.
const LISTED_ERRORS: usize = 100;

/// One line of an exported file, for the runner: where it is and what it holds.
#[derive(Debug)]
pub struct Line {
    /// `Patient file 1, line 7`.
    pub subject: String,
    pub text: Text,
}

/// What takes the lines of an export: the runner, which maps and writes each batch.
pub trait Consumer {
    /// Maps and writes one batch of lines; false when the run must stop (its report says
    /// why).
    fn take(
        &mut self,
        batch: Vec<Line>,
        report: &mut RunReport,
    ) -> impl Future<Output = bool> + Send;

    /// Applies one batch of deletions (`Type/id` references of resources the server deleted);
    /// false when the run must stop.
    fn delete(
        &mut self,
        references: Vec<String>,
        report: &mut RunReport,
    ) -> impl Future<Output = bool> + Send;
}

/// The `Type/id` a `DELETE` entry of a deleted file names (its `request.url`, relative, or
/// absolute ending in `Type/id`), when it names one.
pub fn deleted_reference(entry: &serde_json::Value) -> Option<String> {
    let request = &entry["request"];
    if request["method"].as_str() != Some("DELETE") {
        return None;
    }
    let url = request["url"].as_str()?.trim();
    let path = url.split(['?', '#']).next()?.trim_end_matches('/');
    let mut parts = path.rsplit('/');
    let id = parts.next()?;
    let kind = parts.next()?;
    (crate::model::fhir::is_resource_type(kind) && crate::model::fhir::is_id(id))
        .then(|| format!("{kind}/{id}"))
}

/// One export of a cron run.
pub struct Export<'a> {
    pub client: &'a Arc<SourceClient>,
    pub bulk: &'a BulkExport,
    /// `_since`: the watermark (less the lookback), if any.
    pub since: Option<String>,
    pub trace: &'a TraceContext,
    pub progress: &'a Progress,
    pub connector: &'a str,
}

impl Export<'_> {
    /// Runs the export: kick-off, polls, every output file through `consumer`, the error
    /// files into the report's warnings, the job deleted. Gives the manifest's
    /// `transactionTime` when all of it succeeded (the next watermark).
    pub async fn run(
        &self,
        report: &mut RunReport,
        consumer: &mut (impl Consumer + Send),
    ) -> Option<String> {
        let deadline = Instant::now() + self.bulk.max_duration;
        let source = &self.client.source;
        let mut origins = vec![source.url.origin()];
        origins.extend(self.bulk.file_origins.iter().cloned());
        let url = job::kick_off_url(&source.url, self.bulk, self.since.as_deref());
        report.source_calls += 1;
        let mut job =
            match Job::kick_off(self.client.clone(), url, &origins, self.trace, deadline).await {
                Ok(j) => j,
                Err(e) => {
                    report.failures.push(e.into_failure());
                    return None;
                }
            };
        let result = self
            .follow(&job, &origins, deadline, report, consumer)
            .await;
        report.source_calls += 1;
        if let Err(why) = job.delete().await {
            let text = format!("the `$export` job could not be deleted: {why}");
            tracing::warn!(connector = self.connector, "{text}");
            report.warnings.push(text);
        }
        match result {
            Ok(t) if report.failures.is_empty() => Some(t),
            Ok(_) | Err(BulkError::Stopped) => None,
            Err(e) => {
                report.failures.push(e.into_failure());
                None
            }
        }
    }

    /// Polls the job, then reads its files.
    async fn follow(
        &self,
        job: &Job,
        origins: &[url::Origin],
        deadline: Instant,
        report: &mut RunReport,
        consumer: &mut (impl Consumer + Send),
    ) -> Result<String, BulkError> {
        let polled = job
            .wait(self.bulk, self.connector, deadline, || {
                report.source_calls += 1;
                self.progress.observe(Phase::Reading, report);
            })
            .await;
        let manifest = Manifest::read(&polled?, origins)?;
        let mut per_type = std::collections::BTreeMap::<&str, usize>::new();
        for f in &manifest.output {
            let n = per_type.entry(f.kind.as_str()).or_default();
            *n += 1;
            let name = format!("{} file {n}", f.kind);
            self.file(&manifest, f, &name, deadline, report, consumer)
                .await?;
        }
        for (i, f) in manifest.deleted.iter().enumerate() {
            let name = format!("deleted file {}", i + 1);
            self.deleted(&manifest, f, &name, deadline, report, consumer)
                .await?;
        }
        self.errors(&manifest, deadline, report).await?;
        Ok(manifest.transaction_time)
    }

    /// Reads one file of deleted resources (each line a Bundle of `DELETE` entries) and hands
    /// its references to the consumer in batches. An entry that is not a `DELETE` of
    /// `Type/id` is left alone and counted in a warning; a line that is not a Bundle fails
    /// the run.
    async fn deleted(
        &self,
        manifest: &Manifest,
        f: &FileRef,
        name: &str,
        deadline: Instant,
        report: &mut RunReport,
        consumer: &mut (impl Consumer + Send),
    ) -> Result<(), BulkError> {
        report.source_calls += 1;
        let mut lines = self
            .open(manifest, f, name, deadline)
            .await
            .map_err(|(e, _)| e)?;
        let failed = |n: usize, reason: String| BulkError::File {
            file: name.to_owned(),
            reason: format!("line {n}: {reason}"),
        };
        let (mut n, mut ignored) = (0usize, 0usize);
        let mut batch = Vec::new();
        while let Some(text) = lines.next().await.map_err(|e| match e {
            ndjson::ReadError::Deadline => BulkError::Deadline(self.bulk.max_duration),
            e => failed(n, e.to_string()),
        })? {
            n += 1;
            let bytes = match text {
                Text::Line(b) if b.iter().all(u8::is_ascii_whitespace) => continue,
                Text::Line(b) => b,
                Text::TooLong(len) => {
                    return Err(failed(
                        n,
                        format!("{len} bytes, longer than `bulkExport.maxLine`"),
                    ));
                }
            };
            let bundle: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| failed(n, format!("not JSON: {e}")))?;
            let Some(entries) = bundle["entry"]
                .as_array()
                .filter(|_| bundle["resourceType"] == "Bundle")
            else {
                return Err(failed(n, "not a Bundle with entries".into()));
            };
            for e in entries {
                match deleted_reference(e) {
                    Some(r) => batch.push(r),
                    None => ignored += 1,
                }
            }
            if batch.len() >= self.bulk.batch_size
                && !consumer.delete(std::mem::take(&mut batch), report).await
            {
                return Err(BulkError::Stopped);
            }
        }
        if !batch.is_empty() && !consumer.delete(batch, report).await {
            return Err(BulkError::Stopped);
        }
        if ignored > 0 {
            let text = format!(
                "{name}: {ignored} entries are not a `DELETE` of `Type/id` and are left alone"
            );
            tracing::warn!(connector = self.connector, "{text}");
            report.warnings.push(text);
        }
        Ok(())
    }

    /// Opens a file of the manifest (with the access token when it requires one).
    async fn open(
        &self,
        manifest: &Manifest,
        f: &FileRef,
        name: &str,
        deadline: Instant,
    ) -> Result<Lines, (BulkError, bool)> {
        let s = &self.client.source;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err((BulkError::Deadline(self.bulk.max_duration), false));
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/fhir+ndjson"),
        );
        // Bulk servers may compress files for a client that says it reads gzip.
        headers.insert(
            reqwest::header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip"),
        );
        let failed = |reason: String| BulkError::File {
            file: name.to_owned(),
            reason,
        };
        let opened = self
            .client
            .open(
                Method::GET,
                f.url.clone(),
                headers,
                manifest.requires_access_token,
                (s.timeout.min(left), left),
                self.trace,
            )
            .await
            .map_err(|e| {
                let transient = e.status.is_none();
                (failed(e.reason), transient)
            })?;
        let status = opened.response.status();
        if !status.is_success() {
            let transient = status.is_server_error() || status.as_u16() == 429;
            return Err((failed(format!("answered {}", status.as_u16())), transient));
        }
        let encoding = opened
            .response
            .headers()
            .get(reqwest::header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
        let gzip = match encoding.as_deref() {
            None | Some("" | "identity") => false,
            Some("gzip" | "x-gzip") => true,
            Some(other) => {
                let other: String = other.chars().take(40).collect();
                return Err((
                    failed(format!(
                        "sent with `Content-Encoding: {other}`, which is not read (gzip is)"
                    )),
                    false,
                ));
            }
        };
        Ok(Lines::new(
            opened,
            (self.bulk.max_line, self.bulk.max_file_size),
            gzip,
            s.timeout,
            deadline,
        ))
    }

    /// Streams one output file through the consumer in batches. A file cut off midway is
    /// read again (as often as the source's `retries`), skipping the lines already taken.
    async fn file(
        &self,
        manifest: &Manifest,
        f: &FileRef,
        name: &str,
        deadline: Instant,
        report: &mut RunReport,
        consumer: &mut (impl Consumer + Send),
    ) -> Result<(), BulkError> {
        let retries = self.client.source.retries;
        let mut taken = 0usize;
        let mut attempt = 0u32;
        loop {
            report.source_calls += 1;
            let failure = match self.open(manifest, f, name, deadline).await {
                Err(e) => e,
                Ok(mut lines) => {
                    match self
                        .lines(&mut lines, name, &mut taken, report, consumer)
                        .await
                    {
                        Ok(()) => return Ok(()),
                        Err((BulkError::Stopped, _)) => return Err(BulkError::Stopped),
                        Err(failed) => failed,
                    }
                }
            };
            let (e, transient) = failure;
            if !transient || attempt >= retries {
                return Err(e);
            }
            attempt += 1;
            let text = format!("{e}; read again from line {}", taken + 1);
            tracing::warn!(connector = self.connector, "{text}");
            report.warnings.push(text);
        }
    }

    /// Reads the lines of an open file past the first `taken`, handing them over in batches;
    /// an error says whether reading the file again may succeed.
    async fn lines(
        &self,
        lines: &mut Lines,
        name: &str,
        taken: &mut usize,
        report: &mut RunReport,
        consumer: &mut (impl Consumer + Send),
    ) -> Result<(), (BulkError, bool)> {
        let stopped = || (BulkError::Stopped, false);
        let mut n = 0usize;
        let mut batch = Vec::new();
        loop {
            let next = lines.next().await.map_err(|e| match e {
                ndjson::ReadError::Deadline => (BulkError::Deadline(self.bulk.max_duration), false),
                e => (
                    BulkError::File {
                        file: name.to_owned(),
                        reason: format!("{e} after line {n}"),
                    },
                    e.transient(),
                ),
            })?;
            let Some(text) = next else { break };
            n += 1;
            if n <= *taken || text == Text::Line(Vec::new()) {
                continue;
            }
            batch.push(Line {
                subject: format!("{name}, line {n}"),
                text,
            });
            if batch.len() >= self.bulk.batch_size {
                if !consumer.take(std::mem::take(&mut batch), report).await {
                    return Err(stopped());
                }
                *taken = n;
            }
        }
        if !batch.is_empty() && !consumer.take(batch, report).await {
            return Err(stopped());
        }
        *taken = n;
        Ok(())
    }

    /// Reads the error files (`OperationOutcome`s) into the report's warnings: what the
    /// server could not export. They do not fail the run, which would meet them again.
    async fn errors(
        &self,
        manifest: &Manifest,
        deadline: Instant,
        report: &mut RunReport,
    ) -> Result<(), BulkError> {
        let mut seen = 0usize;
        for (i, f) in manifest.error.iter().enumerate() {
            let name = format!("error file {}", i + 1);
            report.source_calls += 1;
            let mut lines = self
                .open(manifest, f, &name, deadline)
                .await
                .map_err(|(e, _)| e)?;
            while let Some(text) = lines.next().await.map_err(|e| BulkError::File {
                file: name.clone(),
                reason: e.to_string(),
            })? {
                let Text::Line(bytes) = text else { continue };
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                seen += 1;
                if seen <= LISTED_ERRORS {
                    let (message, _) = crate::runtime::outbound::message_of(&bytes);
                    let text = format!(
                        "the server could not export: {}",
                        message.unwrap_or_else(|| "(no text)".into())
                    );
                    tracing::warn!(connector = self.connector, "{text}");
                    report.warnings.push(text);
                }
            }
        }
        if seen > LISTED_ERRORS {
            report.warnings.push(format!(
                "the server could not export {} more (its error files)",
                seen - LISTED_ERRORS
            ));
        }
        Ok(())
    }
}
