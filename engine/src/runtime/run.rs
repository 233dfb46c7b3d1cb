//! Cron runs: read the source (every page, incrementally from a watermark), map, write to the
//! sink, and report. A run that cannot read fails; the watermark and the digests of written
//! resources advance only when every write succeeded. A record that cannot be mapped or
//! written fails the run, or with `run.onRecordError: skip` goes to the connector's dead
//! letters; a run stops at its page and record limits and says so; a date watermark never
//! moves past now plus the allowed clock skew, and is asked from less the lookback.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use serde_json::{Value, json};

use crate::model::digest::content_digest;
use crate::model::jsonpath::Query;
use crate::model::reads::Reads;
use crate::model::vocabulary::RecordErrorPolicy;
use crate::model::{
    BulkExport, Connector, Cron, CronRead, Import, Pagination, Parent, Request, Strategy,
};
use crate::runtime::build_error::BuildError;
use crate::runtime::clock::Clock;
use crate::runtime::dead_letters::{DeadLetterStore, DeadLetters, DirStore, Letter, Resend};
use crate::runtime::metrics::Metrics;
pub use crate::runtime::report::{Failure, Phase, Progress, RunReport, Skipped, Stage};
use crate::runtime::sink::{ProvenanceOf, WriteFailure, WriteOptions, Writer};
use crate::runtime::state::{self, ConnectorState, StateDir};
use crate::runtime::trace_context::TraceContext;
use crate::runtime::upstream::{Call, SourceClient, Upstreams};

/// How a parent record is named in a run report: its `id` when it has a short one, else its
/// position.
fn parent_label(record: &Value, n: usize) -> String {
    match record.get("id") {
        Some(Value::String(id)) if id.len() <= 64 => {
            format!("parent `{}`", crate::runtime::outbound::clean(id))
        }
        Some(Value::Number(id)) => format!("parent `{id}`"),
        _ => format!("parent record {n}"),
    }
}

/// Most record failures listed one by one in a run report; the rest are counted in one.
const LISTED_FAILURES: usize = 100;

/// What a fetch reads: its request template, where the records are, its incremental cursor
/// and parameter, and the items of `each`.
struct Fetch<'a> {
    request: &'a Request,
    records: &'a Query,
    incremental: Option<&'a (Query, String)>,
    each: &'a [Value],
    parent: Option<&'a Parent>,
}

/// One stream of a run: where its records are in each page, its name (the key of its
/// watermark: `records` for a fetch, the resource type for a sync), and its cursor.
struct Stream<'a> {
    records: &'a Query,
    name: &'a str,
    cursor: Option<&'a Query>,
    /// The resource type a sync searched for: the only type its records may have.
    resource_type: Option<&'a str>,
}

/// A record that could not be mapped or written, and why.
struct Rejected {
    subject: String,
    reason: String,
    record: Value,
    /// Why, as an `OperationOutcome` naming the elements (a resource invalid for its FHIR
    /// version under `validation: strict`).
    outcome: Option<Value>,
}

/// What the records of one stream gave: resources, and the records rejected.
struct Mapped {
    resources: Vec<Value>,
    rejected: Vec<Rejected>,
    /// Resources invalid for the connector's FHIR version, written anyway (`validation: warn`).
    warned: Vec<String>,
}

/// Maps each record of a stream (on the blocking pool: a run's records are many), checking
/// every resource it gives against FHIR's id rule and the declared types. A record whose
/// mapping fails, or which gives a resource that cannot be written, is rejected whole.
fn map_stream(
    connector: &Connector,
    stream: &str,
    found: Vec<Value>,
    declared: Option<&BTreeSet<String>>,
) -> Mapped {
    let named = found
        .into_iter()
        .enumerate()
        .map(|(i, record)| (format!("{stream}[{i}]"), record));
    map_named(connector, named, declared)
}

/// As `map_stream`, each record named by its subject (a bulk export's `file, line`).
fn map_named(
    connector: &Connector,
    named: impl IntoIterator<Item = (String, Value)>,
    declared: Option<&BTreeSet<String>>,
) -> Mapped {
    let mut mapped = Mapped {
        resources: Vec::new(),
        rejected: Vec::new(),
        warned: Vec::new(),
    };
    for (subject, record) in named {
        let result = connector
            .map_records([(subject.clone(), &record)], &json!({}))
            .map_err(|e| (e.to_string(), None))
            .and_then(|resources| {
                for (j, r) in resources.iter().enumerate() {
                    crate::model::fhir::writable(r, declared).map_err(|e| {
                        (
                            format!("{}: {e}", crate::runtime::sink::safe_label(r, j)),
                            None,
                        )
                    })?;
                }
                // Checked against the connector's FHIR version (`validation`): under
                // `strict`, one invalid resource rejects its record whole.
                let screened = crate::runtime::fhir_validation::screen(connector, resources);
                if let Some(bad) = screened.refused.first() {
                    return Err((bad.reason(), Some(bad.outcome())));
                }
                mapped.warned.extend(
                    screened
                        .warned
                        .iter()
                        .map(|w| format!("{subject}: {}", w.reason())),
                );
                Ok(screened.admitted)
            });
        match result {
            Ok(resources) => mapped.resources.extend(resources),
            Err((reason, outcome)) => mapped.rejected.push(Rejected {
                subject,
                reason,
                record,
                outcome,
            }),
        }
    }
    mapped
}

/// The watermark a run asks the source from: a date watermark less the lookback, others as
/// they are.
fn asked_from(watermark: &str, lookback: Duration) -> String {
    match (
        DateTime::parse_from_rfc3339(watermark),
        chrono::Duration::from_std(lookback),
    ) {
        (Ok(at), Ok(back)) if !lookback.is_zero() => {
            (at - back).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        }
        _ => watermark.to_owned(),
    }
}

/// Resources without the source server's own metadata (`versionId`, `lastUpdated`, `source`):
/// the sink keeps its own.
fn without_server_meta(mut resources: Vec<Value>) -> Vec<Value> {
    for r in &mut resources {
        if let Some(meta) = r.get_mut("meta").and_then(Value::as_object_mut) {
            meta.remove("versionId");
            meta.remove("lastUpdated");
            meta.remove("source");
        }
        if r.get("meta")
            .and_then(Value::as_object)
            .is_some_and(|m| m.is_empty())
            && let Some(o) = r.as_object_mut()
        {
            o.remove("meta");
        }
    }
    resources
}

/// The resources to write: all of them, or with `onlyChanged` those whose digest differs from
/// the one written last (the others are counted unchanged), with their labels and digests
/// (worked out with `onlyChanged` only).
fn changed(
    resources: Vec<Value>,
    cron: &Cron,
    state: &ConnectorState,
    report: &mut RunReport,
) -> (Vec<Value>, Vec<(String, String)>) {
    let mut to_write = Vec::new();
    let mut digests = Vec::new();
    if !cron.only_changed {
        // Digests are kept for `onlyChanged` only: without it, none is worked out.
        return (resources, Vec::new());
    }
    for (i, r) in resources.into_iter().enumerate() {
        let label = crate::runtime::sink::label(&r, i);
        let d = digest(&r);
        if state.written.get(&label) == Some(&d) {
            report.resources_unchanged += 1;
        } else {
            to_write.push(r);
            digests.push((label, d));
        }
    }
    (to_write, digests)
}

/// Runs one cron connector.
pub struct Runner {
    pub connector: Arc<Connector>,
    /// The client of the source; an import has none.
    client: Option<Arc<SourceClient>>,
    writer: Writer,
    state: StateDir,
    metrics: Arc<Metrics>,
    /// Dates the reports.
    clock: Clock,
    /// The counters of the run going on, for whoever shows its progress.
    pub progress: Arc<Progress>,
    /// The records its runs dead-lettered, for operators.
    letters: DirStore,
}

impl Runner {
    pub fn new(
        connector: Arc<Connector>,
        upstreams: &Upstreams,
        state: StateDir,
        sink_dir: &std::path::Path,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Result<Runner, BuildError> {
        let Strategy::Cron(cron) = &connector.strategy else {
            return Err(BuildError::Strategy {
                connector: connector.name.clone(),
                strategy: "cron",
            });
        };
        let client = match (&cron.read, connector.sources.first()) {
            (CronRead::Import(_), _) => None,
            (_, None) => return Err(BuildError::NoSource(connector.name.clone())),
            (_, Some(source)) => Some(
                upstreams
                    .get(&source.name)
                    .cloned()
                    .ok_or_else(|| BuildError::NoClient(source.name.clone()))?,
            ),
        };
        let writer = Writer::new(&cron.sink, sink_dir)?;
        let letters = DirStore::new(
            dead_letter_dir(&state, &connector.name),
            state.path().to_path_buf(),
        );
        Ok(Runner {
            letters,
            connector,
            client,
            writer,
            state,
            metrics,
            clock,
            progress: Arc::default(),
        })
    }

    /// One run. With `dry_run`, nothing is written and the resources are returned instead.
    pub async fn run(&self, dry_run: bool) -> (RunReport, Vec<Value>) {
        let mut report = RunReport::new(&self.connector.name, self.clock.now(), dry_run);
        self.progress.observe(Phase::Reading, &report);
        let Strategy::Cron(cron) = &self.connector.strategy else {
            return (report, Vec::new());
        };
        let Some(mut state) = self.load_state(&mut report).await else {
            return (self.finish(report), Vec::new());
        };
        if let CronRead::BulkExport(bulk) = &cron.read {
            // Streamed: written batch by batch as the files are read.
            return self.bulk_export(cron, bulk, state, report).await;
        }
        let mut watermarks = state.watermarks.clone();
        // One trace (and request id) for all the source calls and sink posts of the run.
        let trace = TraceContext::fresh(uuid::Uuid::new_v4().to_string());
        let resources = self
            .read(cron, &trace, &state, &mut report, &mut watermarks)
            .await;
        if !report.failures.is_empty() {
            // Nothing is written from a run that could not read everything.
            return (self.finish(report), resources);
        }
        // One version of each `Type/id` is written: the last read.
        let resources = crate::runtime::sink::last_versions(without_server_meta(resources));
        let (to_write, digests) = changed(resources, cron, &state, &mut report);
        if dry_run {
            return (self.finish(report), to_write);
        }
        self.progress.observe(Phase::Writing, &report);
        self.write(cron, (to_write, &trace), digests, &mut state, &mut report)
            .await;
        if report.failures.is_empty() {
            state.watermarks = watermarks;
        }
        self.save_state(state, &mut report).await;
        (self.finish(report), Vec::new())
    }

    /// The connector's state (watermarks, digests of written resources), or a failure.
    async fn load_state(&self, report: &mut RunReport) -> Option<ConnectorState> {
        let dir = self.state.clone();
        let connector = self.connector.name.clone();
        match state::blocking(move || dir.load(&connector)).await {
            Ok(s) => Some(s),
            Err(e) => {
                report.failures.push(Failure {
                    stage: Stage::Read,
                    subject: "state".into(),
                    message: e.to_string(),
                    outcome: None,
                });
                None
            }
        }
    }

    /// Saves the connector's state; a failure to save is a failure of the run.
    async fn save_state(&self, state: ConnectorState, report: &mut RunReport) {
        let dir = self.state.clone();
        let name = self.connector.name.clone();
        if let Err(e) = state::blocking(move || dir.save(&name, &state)).await {
            report.failures.push(Failure {
                stage: Stage::Write,
                subject: "state".into(),
                message: e.to_string(),
                outcome: None,
            });
        }
    }

    /// Everything the run reads, mapped to FHIR: an import, a fetch or a sync.
    async fn read(
        &self,
        cron: &Cron,
        trace: &TraceContext,
        state: &ConnectorState,
        report: &mut RunReport,
        watermarks: &mut BTreeMap<String, String>,
    ) -> Vec<Value> {
        let mut resources = Vec::new();
        match (&cron.read, &self.client) {
            (CronRead::Import(import), _) => {
                self.import(import, report, &mut resources).await;
            }
            // Run by `bulk_export` instead, batch by batch.
            (CronRead::BulkExport(_), _) => {}
            (_, None) => report.failures.push(Failure {
                stage: Stage::Read,
                subject: "source".into(),
                message: "the connector has no source".into(),
                outcome: None,
            }),
            (
                CronRead::Fetch {
                    request,
                    records,
                    incremental,
                    each,
                    parent,
                },
                Some(client),
            ) => {
                let fetch = Fetch {
                    request,
                    records,
                    incremental: incremental.as_ref(),
                    each,
                    parent: parent.as_ref(),
                };
                let out = (&mut resources, watermarks);
                self.fetch(cron, (client, trace), fetch, state, report, out)
                    .await;
            }
            (
                CronRead::Sync {
                    resource_types,
                    incremental,
                    page_size,
                },
                Some(client),
            ) => {
                let sync = (resource_types.as_slice(), *incremental, *page_size);
                let out = (&mut resources, watermarks);
                self.sync(cron, (client, trace), sync, state, report, out)
                    .await;
            }
        }
        resources
    }

    /// A fetch: one request (or one per `each` item) built from the template, paged.
    async fn fetch(
        &self,
        cron: &Cron,
        (client, trace): (&SourceClient, &TraceContext),
        fetch: Fetch<'_>,
        state: &ConnectorState,
        report: &mut RunReport,
        (resources, watermarks): (&mut Vec<Value>, &mut BTreeMap<String, String>),
    ) {
        let watermark = state
            .watermarks
            .get("records")
            .map(|w| asked_from(w, cron.lookback));
        let parents = match fetch.parent {
            None => None,
            Some(p) => {
                let params = json!({"watermark": watermark.clone().unwrap_or_default()});
                match self.parents(p, (client, trace), &params, report).await {
                    Some(found) => Some(found),
                    None => return,
                }
            }
        };
        let items: Vec<Option<&Value>> = match &parents {
            Some(found) => found.iter().map(Some).collect(),
            None if fetch.each.is_empty() => vec![None],
            None => fetch.each.iter().map(Some).collect(),
        };
        for (n, item) in items.into_iter().enumerate() {
            let mut params = json!({"watermark": watermark.clone().unwrap_or_default()});
            let key = if parents.is_some() { "parent" } else { "item" };
            if let Some(v) = item {
                params[key] = v.clone();
            }
            let subject = match item {
                None => "request".to_owned(),
                Some(v) if parents.is_some() => format!("child request for {}", parent_label(v, n)),
                Some(v) => format!("request for {v}"),
            };
            match crate::runtime::request::build(
                &self.connector,
                &client.source.url,
                fetch.request,
                &params,
                None,
            ) {
                Err(m) => report.failures.push(Failure {
                    stage: Stage::Read,
                    subject,
                    message: m.to_string(),
                    outcome: None,
                }),
                Ok(mut call) => {
                    if let (Some((_, param)), Some(wm)) = (fetch.incremental, &watermark) {
                        crate::runtime::upstream::set_query(&mut call.url, &[(param, wm.clone())]);
                    }
                    let cursor = fetch.incremental.map(|(q, _)| q);
                    let stream = Stream {
                        records: fetch.records,
                        name: "records",
                        cursor,
                        resource_type: None,
                    };
                    let out = (&mut *resources, &mut *watermarks);
                    let source_failed = self
                        .read_stream(cron, (client, trace), call, stream, report, out)
                        .await;
                    // A child that failed is its parent record's failure: skipped, and the
                    // run goes on, when records may be skipped.
                    if source_failed
                        && parents.is_some()
                        && let Some(f) = report.failures.pop()
                    {
                        let reason = format!("the child request failed: {}", f.message);
                        if cron.on_record_error == RecordErrorPolicy::Skip {
                            report.skipped.push(Skipped::one(&subject, &reason));
                        } else {
                            report.failures.push(Failure {
                                subject: subject.clone(),
                                message: reason,
                                ..f
                            });
                        }
                    }
                }
            }
        }
    }

    /// The records of a fetch's parent request, at most its `maxChildren`; `None` (with the
    /// run's failure reported) when it could not be read or held more.
    async fn parents(
        &self,
        parent: &Parent,
        (client, trace): (&SourceClient, &TraceContext),
        params: &Value,
        report: &mut RunReport,
    ) -> Option<Vec<Value>> {
        let fail = |message: String| Failure {
            stage: Stage::Read,
            subject: "parent request".into(),
            message,
            outcome: None,
        };
        let call = match crate::runtime::request::build(
            &self.connector,
            &client.source.url,
            &parent.request,
            params,
            None,
        ) {
            Ok(c) => c,
            Err(e) => {
                report.failures.push(fail(e.to_string()));
                return None;
            }
        };
        let max_pages = match &client.source.pagination {
            Some(_) => client.source.max_pages,
            None => 1,
        };
        // One record more than the cap, to know that there are too many; no more is kept.
        let paged = client
            .pages_with(
                call,
                &parent.records,
                Some(parent.max_children.saturating_add(1)),
                max_pages,
                client.source.pagination.as_ref(),
                trace,
                None,
                &mut report.source_calls,
                &Reads::All,
            )
            .await;
        let paged = match paged {
            Ok(p) => p,
            Err(f) => {
                report.failures.push(fail(f.to_string()));
                return None;
            }
        };
        if paged.records.len() > parent.max_children || paged.pages_left {
            report.failures.push(fail(format!(
                "the parent answer holds more than {} records (`fetch.parent.maxChildren`) or more pages than the source's `pagination.maxPages`; no child request was sent and nothing is written",
                parent.max_children
            )));
            return None;
        }
        Some(paged.records)
    }

    /// A sync: a FHIR search per resource type, from each type's watermark when incremental.
    async fn sync(
        &self,
        cron: &Cron,
        (client, trace): (&SourceClient, &TraceContext),
        (resource_types, incremental, page_size): (&[String], bool, u32),
        state: &ConnectorState,
        report: &mut RunReport,
        (resources, watermarks): (&mut Vec<Value>, &mut BTreeMap<String, String>),
    ) {
        let (Ok(entries), Ok(last_updated)) = (
            Query::parse("$.entry[*].resource"),
            Query::parse("@.meta.lastUpdated"),
        ) else {
            return;
        };
        for t in resource_types {
            let base = &client.source.url;
            let mut url = base.clone();
            url.set_path(&format!("{}/{t}", base.path().trim_end_matches('/')));
            url.query_pairs_mut()
                .append_pair("_count", &page_size.to_string());
            if incremental && let Some(wm) = state.watermarks.get(t) {
                url.query_pairs_mut().append_pair(
                    "_lastUpdated",
                    &format!("gt{}", asked_from(wm, cron.lookback)),
                );
            }
            let call = Call {
                method: reqwest::Method::GET,
                url,
                headers: Vec::new(),
                body: None,
            };
            let stream = Stream {
                records: &entries,
                name: t,
                cursor: incremental.then_some(&last_updated),
                resource_type: Some(t),
            };
            let out = (&mut *resources, &mut *watermarks);
            self.read_stream(cron, (client, trace), call, stream, report, out)
                .await;
        }
    }

    /// Writes what changed; the digests of what was written are kept for `onlyChanged`.
    async fn write(
        &self,
        cron: &Cron,
        (to_write, trace): (Vec<Value>, &TraceContext),
        digests: Vec<(String, String)>,
        state: &mut ConnectorState,
        report: &mut RunReport,
    ) {
        let sources: Vec<&str> = self
            .connector
            .sources
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        let opts = WriteOptions {
            identifier_system: cron.identifier_system.clone(),
            declared_types: self.connector.declared_types(),
            // One Provenance per Bundle of the run, when the sink asks for it.
            provenance: Some(ProvenanceOf {
                connector: self.connector.name.clone(),
                // A bulk export's later batches are other occasions: the Provenance of a
                // batch's first Bundle does not replace the one of the batch before.
                occasion: match report.sink_calls {
                    0 => format!("run {}", report.started.to_rfc3339()),
                    n => format!("run {} after call {n}", report.started.to_rfc3339()),
                },
                source: if sources.is_empty() {
                    "an implementation guide import".to_owned()
                } else {
                    format!("source {}", sources.join(", "))
                },
                recorded: self.clock.now().to_rfc3339(),
                check_written: false,
            }),
            trace: Some(trace.trace.clone()),
        };
        let w = self.writer.write(to_write, &opts).await;
        // Added up: a bulk export writes batch by batch.
        report.resources_written += w.written;
        report.sink_calls += w.calls;
        report.sink_retries += w.retries;
        self.progress.observe(Phase::Writing, report);
        let failed: std::collections::HashSet<String> =
            w.failures.iter().map(|f| f.resource.clone()).collect();
        report
            .failures
            .extend(w.failures.into_iter().map(write_failure));
        for (label, d) in digests {
            if !failed.contains(&label) && cron.only_changed {
                state.written.insert(label, d);
            }
        }
    }

    /// Reads every page of one stream within the run's page and record limits, advances its
    /// watermark candidate, and maps its records (on the blocking pool) into `out`; records
    /// that cannot be mapped or written follow `run.onRecordError`.
    async fn read_stream(
        &self,
        cron: &Cron,
        (client, trace): (&SourceClient, &TraceContext),
        call: Call,
        Stream {
            records,
            name: stream,
            cursor,
            resource_type,
        }: Stream<'_>,
        report: &mut RunReport,
        (out, watermarks): (&mut Vec<Value>, &mut BTreeMap<String, String>),
    ) -> bool {
        let max_pages = match &client.source.pagination {
            Some(_) => client.source.max_pages,
            None if stream != "records" => client.source.max_pages,
            None => 1,
        };
        let before = client.source.pagination.is_none() && stream != "records";
        // FHIR syncs follow the Bundle's `next` links whatever the source says.
        let pagination = if before {
            Some(Pagination::Fhir)
        } else {
            client.source.pagination.clone()
        };
        // One record more than the run may still read, to know that it has too many.
        let room = cron.max_records.saturating_sub(report.records_read);
        let result = client
            .pages_with(
                call,
                records,
                Some(room.saturating_add(1)),
                max_pages,
                pagination.as_ref(),
                trace,
                None,
                &mut report.source_calls,
                &Reads::All,
            )
            .await;
        let read_failure = |message: String| Failure {
            stage: Stage::Read,
            subject: stream.to_owned(),
            message,
            outcome: None,
        };
        let paged = match result {
            Err(f) => {
                report.failures.push(read_failure(f.to_string()));
                return true;
            }
            Ok(p) => p,
        };
        // A run that hit a limit has not read everything: like a run that could not read,
        // it fails and writes nothing, so that no watermark passes what it did not read.
        if paged.pages_left {
            report.failures.push(read_failure(format!(
                "stopped after {max_pages} pages with more to read (the source's `pagination.maxPages`); nothing is written"
            )));
            return false;
        }
        if paged.records.len() > room {
            report.failures.push(read_failure(format!(
                "more than {} records in one run (`run.maxRecords`); nothing is written",
                cron.max_records
            )));
            return false;
        }
        let found = paged.records;
        report.records_read += found.len();
        self.progress.observe(Phase::Reading, report);
        if let Some(c) = cursor {
            self.advance(cron, c, &found, stream, report, watermarks);
        }
        let connector = self.connector.clone();
        let declared = match resource_type {
            Some(t) if connector.mapping.is_none() && !connector.split_bundles => {
                Some(BTreeSet::from([t.to_owned()]))
            }
            _ => connector.declared_types(),
        };
        let name = stream.to_owned();
        let mapped = tokio::task::spawn_blocking(move || {
            map_stream(&connector, &name, found, declared.as_ref())
        })
        .await;
        match mapped {
            Ok(m) => {
                out.extend(m.resources);
                let name = &self.connector.name;
                self.metrics.fhir_invalid(name, "written", m.warned.len());
                let refused: Vec<&Rejected> =
                    m.rejected.iter().filter(|r| r.outcome.is_some()).collect();
                self.metrics.fhir_invalid(name, "refused", refused.len());
                let first = refused
                    .first()
                    .map(|r| format!("{}: {}", r.subject, r.reason))
                    .or_else(|| m.warned.first().cloned());
                crate::runtime::fhir_validation::log(
                    &self.connector,
                    refused.len() + m.warned.len(),
                    first.as_deref(),
                );
                // The run report lists a few; the metric counts them all.
                let more = m.warned.len().saturating_sub(LISTED_FAILURES);
                report
                    .warnings
                    .extend(m.warned.into_iter().take(LISTED_FAILURES));
                if more > 0 {
                    report.warnings.push(format!(
                        "{stream}: {more} more resources not valid FHIR written (`validation: warn`)"
                    ));
                }
                self.rejected(cron, m.rejected, report).await;
            }
            Err(e) => report.failures.push(Failure {
                stage: Stage::Map,
                subject: stream.to_owned(),
                message: format!("the mapping stopped: {e}"),
                outcome: None,
            }),
        }
        false
    }

    /// Moves a stream's watermark candidate to the largest cursor read, except cursors dated
    /// later than now plus the allowed clock skew: those are reported, and left behind.
    fn advance(
        &self,
        cron: &Cron,
        cursor: &Query,
        found: &[Value],
        stream: &str,
        report: &mut RunReport,
        watermarks: &mut BTreeMap<String, String>,
    ) {
        let skew = chrono::Duration::from_std(cron.max_clock_skew).unwrap_or_default();
        let limit = self.clock.now() + skew;
        let mut future: Vec<String> = Vec::new();
        let values: Vec<String> = found
            .iter()
            .filter_map(|r| cursor.select(r, r).into_iter().next().and_then(cursor_text))
            .collect();
        // The watermark's kind: dates when any value (or the watermark kept) is a date, else
        // numbers when any is one. A value of a lesser kind (`yesterday` among dates) would
        // win or lose by its text alone: it is left out, and reported.
        let kind = values
            .iter()
            .chain(watermarks.get(stream))
            .map(|v| CursorKind::of(v))
            .max()
            .unwrap_or(CursorKind::Text);
        let mut odd: Vec<&str> = Vec::new();
        let best = values
            .iter()
            .filter(|v| {
                let fits = CursorKind::of(v) == kind;
                if !fits {
                    odd.push(v);
                }
                fits
            })
            .filter(|v| match instant(v) {
                Some(at) if at > limit => {
                    future.push((*v).clone());
                    false
                }
                _ => true,
            })
            .max_by(|a, b| compare(a, b))
            .cloned();
        if let Some(first) = odd.first() {
            let shown: String = first.chars().take(64).collect();
            let message = format!(
                "{} records whose cursor is not {} like the others (the first `{shown}`): left out of the watermark",
                odd.len(),
                kind.name()
            );
            tracing::warn!(connector = %self.connector.name, stream, "{message}");
            report.warnings.push(format!("{stream}: {message}"));
        }
        if let Some(latest) = future.iter().max_by(|a, b| compare(a, b)) {
            let message = format!(
                "{} records dated later than now + {}s (the latest `{latest}`): the watermark does not move past now + {}s (`run.maxClockSkew`)",
                future.len(),
                cron.max_clock_skew.as_secs(),
                cron.max_clock_skew.as_secs()
            );
            tracing::warn!(connector = %self.connector.name, stream, "{message}");
            report.warnings.push(format!("{stream}: {message}"));
        }
        if let Some(b) = best {
            let keep = watermarks.get(stream).is_some_and(|old| {
                CursorKind::of(old) == kind && compare(old, &b) != std::cmp::Ordering::Less
            });
            if !keep {
                watermarks.insert(stream.to_owned(), b);
            }
        }
    }

    /// Records that could not be mapped or written: failures of the run, or with
    /// `run.onRecordError: skip`, dead letters (kept unless a dry run) counted in the report.
    async fn rejected(&self, cron: &Cron, rejected: Vec<Rejected>, report: &mut RunReport) {
        if rejected.is_empty() {
            return;
        }
        let n = rejected.len();
        if cron.on_record_error == RecordErrorPolicy::Fail {
            for r in rejected.into_iter().take(LISTED_FAILURES) {
                report.failures.push(Failure {
                    stage: Stage::Map,
                    subject: r.subject,
                    message: r.reason,
                    outcome: None,
                });
            }
            if n > LISTED_FAILURES {
                report.failures.push(Failure {
                    stage: Stage::Map,
                    subject: "records".into(),
                    message: format!("{} more records failed", n - LISTED_FAILURES),
                    outcome: None,
                });
            }
            return;
        }
        for r in rejected.iter().take(LISTED_FAILURES) {
            report.skipped.push(Skipped::one(
                &r.subject,
                &format!("dead-lettered: {}", r.reason),
            ));
        }
        if n > LISTED_FAILURES {
            report.skipped.push(Skipped {
                subject: "records".into(),
                reason: "dead-lettered".into(),
                count: n - LISTED_FAILURES,
            });
        }
        report.records_dead_lettered += n;
        if report.dry_run {
            return;
        }
        let dir = self.dead_letter_dir();
        let received = self.clock.now().to_rfc3339();
        let kept = state::blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| state::StateError::io(&dir, e))?;
            let first =
                crate::runtime::push::queue::next_seq(&crate::runtime::push::queue::files(&dir));
            for (seq, r) in (first..).zip(rejected) {
                let mut item = json!({
                    "received": received,
                    "reason": format!("{}: {}", r.subject, r.reason),
                    "record": r.record,
                });
                if let Some(outcome) = r.outcome {
                    item["outcome"] = outcome;
                }
                let path = dir.join(format!("{seq:020}.json"));
                state::write_atomic(&path, &serde_json::to_vec(&item).unwrap_or_default())?;
            }
            Ok(())
        })
        .await;
        match kept {
            Ok(()) => {
                tracing::warn!(connector = %self.connector.name, records = n, "records dead-lettered");
                self.metrics.dead_lettered(&self.connector.name, n);
            }
            // A record that cannot be kept is not dropped: the run fails instead.
            Err(e) => report.failures.push(Failure {
                stage: Stage::Write,
                subject: "dead letters".into(),
                message: e.to_string(),
                outcome: None,
            }),
        }
    }

    /// Where the records this connector's runs skipped are kept.
    fn dead_letter_dir(&self) -> PathBuf {
        dead_letter_dir(&self.state, &self.connector.name)
    }

    /// The dead letters of this connector's runs: id, when, and why.
    pub async fn dead_letters(&self) -> Vec<Value> {
        let dir = self.dead_letter_dir();
        state::blocking(move || Ok(crate::runtime::push::read_dead_letters(&dir)))
            .await
            .unwrap_or_default()
    }

    /// How many dead letters this connector's runs left, and the first `limit` with the
    /// records (see `push::dead_letters_shown`).
    pub async fn dead_letters_shown(&self, limit: usize) -> (usize, Vec<Value>) {
        let dir = self.dead_letter_dir();
        state::blocking(move || Ok(crate::runtime::push::dead_letters_shown(&dir, limit)))
            .await
            .unwrap_or_default()
    }

    /// Reads an implementation guide and maps it (see `guide::resources`).
    async fn import(&self, import: &Import, report: &mut RunReport, out: &mut Vec<Value>) {
        let guide = match crate::runtime::guide::read(import).await {
            Ok(g) => g,
            Err(e) => {
                report.failures.push(Failure {
                    stage: Stage::Read,
                    subject: "guide".into(),
                    message: e.to_string(),
                    outcome: None,
                });
                return;
            }
        };
        report.records_read += guide.resources.len();
        self.progress.observe(Phase::Reading, report);
        let imported = crate::runtime::guide::resources(&self.connector, import, guide);
        for s in &imported.skipped {
            tracing::info!(
                connector = %self.connector.name,
                subject = %s.subject,
                reason = %s.reason,
                count = s.count,
                "import left this out"
            );
        }
        report.skipped.extend(imported.skipped);
        report.failures.extend(
            imported
                .unmapped
                .into_iter()
                .map(|(file, message)| Failure {
                    stage: Stage::Map,
                    subject: file,
                    message,
                    outcome: None,
                }),
        );
        out.extend(imported.resources);
    }

    /// A FHIR Bulk Data export (`runtime::bulk`): its files mapped and written batch by batch
    /// (`BulkBatches`), the manifest's `transactionTime` kept as the watermark only when the
    /// whole run succeeded. A dry run writes nothing and gives what it would write.
    async fn bulk_export(
        &self,
        cron: &Cron,
        bulk: &BulkExport,
        mut state: ConnectorState,
        mut report: RunReport,
    ) -> (RunReport, Vec<Value>) {
        let Some(client) = &self.client else {
            return (self.finish(report), Vec::new());
        };
        let since = match bulk.since {
            crate::model::vocabulary::BulkSince::Watermark => state
                .watermarks
                .get(BULK_WATERMARK)
                .map(|w| asked_from(w, cron.lookback)),
            crate::model::vocabulary::BulkSince::None => None,
        };
        let trace = TraceContext::fresh(uuid::Uuid::new_v4().to_string());
        let export = crate::runtime::bulk::Export {
            client,
            bulk,
            since,
            trace: &trace,
            progress: &self.progress,
            connector: &self.connector.name,
        };
        let dry_run = report.dry_run;
        let mut batches = BulkBatches {
            runner: self,
            cron,
            state: &mut state,
            trace: &trace,
            kept: Vec::new(),
            not_deleted: 0,
        };
        let done = export.run(&mut report, &mut batches).await;
        if batches.not_deleted > 0
            && let Some(why) = batches.why_not_deleted(dry_run)
        {
            let text = format!(
                "{} resources the export lists as deleted are not deleted at the sink: {why}",
                batches.not_deleted
            );
            tracing::warn!(connector = %self.connector.name, "{text}");
            report.warnings.push(text);
        }
        let kept = std::mem::take(&mut batches.kept);
        if dry_run {
            return (self.finish(report), kept);
        }
        if let Some(t) = done
            && report.failures.is_empty()
        {
            state.watermarks.insert(BULK_WATERMARK.to_owned(), t);
        }
        self.save_state(state, &mut report).await;
        (self.finish(report), kept)
    }

    fn finish(&self, mut report: RunReport) -> RunReport {
        report.finished = self.clock.now();
        self.progress.observe(Phase::Done, &report);
        self.metrics.run(
            &report.connector,
            report.ok(),
            report.records_read,
            report.resources_written,
            report.failures.len(),
            report.sink_retries,
        );
        report
    }
}

/// Where the records the runs of connector `name` skipped are kept.
fn dead_letter_dir(state: &StateDir, name: &str) -> PathBuf {
    state.path().join("cron").join(name).join("dead")
}

/// An operator's replays and deletions of the records the runs dead-lettered: a replay maps
/// the record with this (current) definition, checks what it gives as a run would, and writes
/// it to the sink.
impl DeadLetters for Runner {
    fn connector_name(&self) -> &str {
        &self.connector.name
    }

    fn store(&self) -> &dyn DeadLetterStore {
        &self.letters
    }

    fn resend<'a>(
        &'a self,
        letter: &'a Letter,
    ) -> futures_util::future::BoxFuture<'a, Result<usize, Resend>> {
        Box::pin(async move {
            let Strategy::Cron(cron) = &self.connector.strategy else {
                return Err(Resend::Permanent("not a cron connector".into(), None));
            };
            let (connector, record) = (self.connector.clone(), letter.payload.clone());
            let subject = format!("dead letter {}", letter.id);
            let mapped = tokio::task::spawn_blocking(move || {
                let declared = connector.declared_types();
                map_stream(&connector, &subject, vec![record], declared.as_ref())
            })
            .await
            .map_err(|e| Resend::Permanent(format!("the mapping stopped: {e}"), None))?;
            if let Some(r) = mapped.rejected.into_iter().next() {
                return Err(Resend::Permanent(r.reason, r.outcome));
            }
            let resources =
                crate::runtime::sink::last_versions(without_server_meta(mapped.resources));
            let sources: Vec<&str> = self
                .connector
                .sources
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            let opts = WriteOptions {
                identifier_system: cron.identifier_system.clone(),
                declared_types: self.connector.declared_types(),
                provenance: Some(ProvenanceOf {
                    connector: self.connector.name.clone(),
                    occasion: format!("replay of dead letter {}", letter.id),
                    source: format!("source {}", sources.join(", ")),
                    recorded: self.clock.now().to_rfc3339(),
                    check_written: false,
                }),
                trace: Some(crate::runtime::trace_context::Trace::fresh()),
            };
            let w = self.writer.write(resources, &opts).await;
            if let Some(f) = w.failures.iter().find(|f| f.transient) {
                return Err(Resend::Transient(format!(
                    "{}: {}",
                    self.writer.describe(),
                    f.message
                )));
            }
            if let Some(f) = w.failures.into_iter().next() {
                return Err(Resend::Permanent(
                    format!(
                        "{} rejected {}: {}",
                        self.writer.describe(),
                        f.resource,
                        f.message
                    ),
                    f.outcome.map(|o| *o),
                ));
            }
            Ok(w.written)
        })
    }

    fn gone(&self) {}

    fn now(&self) -> String {
        self.clock.now().to_rfc3339()
    }
}

/// The key of a bulk export's watermark (the last `transactionTime`) in the connector's
/// state.
const BULK_WATERMARK: &str = "$export";

/// Maps and writes the batches of a bulk export as they come.
struct BulkBatches<'a> {
    runner: &'a Runner,
    cron: &'a Cron,
    state: &'a mut ConnectorState,
    /// The run's trace, carried to the sink's posts.
    trace: &'a TraceContext,
    /// What a dry run would write.
    kept: Vec<Value>,
    /// Resources the export listed as deleted and the run did not delete (a dry run, a
    /// mapped connector, the NDJSON sink).
    not_deleted: usize,
}

impl BulkBatches<'_> {
    /// Why resources deleted at the source are not deleted by this run, if they are not.
    fn why_not_deleted(&self, dry_run: bool) -> Option<&'static str> {
        if dry_run {
            Some("a dry run deletes nothing")
        } else if self.runner.connector.mapping.is_some() {
            Some(
                "the connector's mapping makes the ids it writes, so they are not deleted by the source's ids",
            )
        } else if matches!(self.runner.writer, Writer::Ndjson { .. }) {
            Some("the NDJSON sink only appends")
        } else {
            None
        }
    }
}

impl crate::runtime::bulk::Consumer for BulkBatches<'_> {
    async fn delete(&mut self, references: Vec<String>, report: &mut RunReport) -> bool {
        let runner = self.runner;
        if self.why_not_deleted(report.dry_run).is_some() {
            self.not_deleted += references.len();
            return true;
        }
        runner.progress.observe(Phase::Writing, report);
        let Some(w) = runner
            .writer
            .delete(&references, Some(&self.trace.trace))
            .await
        else {
            self.not_deleted += references.len();
            return true;
        };
        report.resources_deleted += w.written;
        report.sink_calls += w.calls;
        report.sink_retries += w.retries;
        let failed: std::collections::HashSet<String> =
            w.failures.iter().map(|f| f.resource.clone()).collect();
        // A deleted resource written again later is not "unchanged".
        if w.failures.is_empty() {
            for r in &references {
                self.state.written.remove(r);
            }
        } else {
            for r in references.iter().filter(|r| !failed.contains(*r)) {
                self.state.written.remove(r);
            }
        }
        report
            .failures
            .extend(w.failures.into_iter().map(write_failure));
        report.failures.is_empty()
    }

    async fn take(
        &mut self,
        batch: Vec<crate::runtime::bulk::Line>,
        report: &mut RunReport,
    ) -> bool {
        let runner = self.runner;
        let cron = self.cron;
        report.records_read += batch.len();
        if report.records_read > cron.max_records {
            report.failures.push(Failure {
                stage: Stage::Read,
                subject: "$export".into(),
                message: format!(
                    "more than {} records in one run (`run.maxRecords`); the rest is not read",
                    cron.max_records
                ),
                outcome: None,
            });
            return false;
        }
        runner.progress.observe(Phase::Reading, report);
        let connector = runner.connector.clone();
        let mapped = tokio::task::spawn_blocking(move || {
            let mut bad = Vec::new();
            let mut good = Vec::new();
            for line in batch {
                let why = match line.text {
                    crate::runtime::bulk::ndjson::Text::TooLong(n) => {
                        format!("a line of {n} bytes, longer than `bulkExport.maxLine`")
                    }
                    crate::runtime::bulk::ndjson::Text::Line(bytes) => {
                        match serde_json::from_slice::<Value>(&bytes) {
                            Ok(v) if v.is_object() => {
                                good.push((line.subject, v));
                                continue;
                            }
                            Ok(_) => "the line is not a JSON object".to_owned(),
                            Err(e) => format!("the line is not JSON: {e}"),
                        }
                    }
                };
                bad.push(Rejected {
                    record: json!({"line": line.subject}),
                    subject: line.subject,
                    reason: why,
                    outcome: None,
                });
            }
            let mut m = map_named(&connector, good, connector.declared_types().as_ref());
            bad.append(&mut m.rejected);
            m.rejected = bad;
            m
        })
        .await;
        let m = match mapped {
            Ok(m) => m,
            Err(e) => {
                report.failures.push(Failure {
                    stage: Stage::Map,
                    subject: "$export".into(),
                    message: format!("the mapping stopped: {e}"),
                    outcome: None,
                });
                return false;
            }
        };
        let name = &runner.connector.name;
        runner.metrics.fhir_invalid(name, "written", m.warned.len());
        let refused = m.rejected.iter().filter(|r| r.outcome.is_some()).count();
        runner.metrics.fhir_invalid(name, "refused", refused);
        let room = LISTED_FAILURES.saturating_sub(report.warnings.len());
        report.warnings.extend(m.warned.into_iter().take(room));
        runner.rejected(cron, m.rejected, report).await;
        if !report.failures.is_empty() {
            return false;
        }
        let resources = crate::runtime::sink::last_versions(without_server_meta(m.resources));
        let (to_write, digests) = changed(resources, cron, self.state, report);
        if report.dry_run {
            self.kept.extend(to_write);
            return true;
        }
        runner.progress.observe(Phase::Writing, report);
        runner
            .write(cron, (to_write, self.trace), digests, self.state, report)
            .await;
        report.failures.is_empty()
    }
}

fn write_failure(f: WriteFailure) -> Failure {
    Failure {
        stage: Stage::Write,
        subject: f.resource,
        message: f.message,
        outcome: f.outcome.map(|o| *o),
    }
}

/// A content digest of a resource without its server metadata (`meta.versionId`,
/// `meta.lastUpdated`, `meta.source`): a change in `meta.profile`, `meta.tag` or
/// `meta.security` is a change of content.
pub fn digest(r: &Value) -> String {
    let copy = without_server_meta(vec![r.clone()]);
    content_digest(&[copy.first().unwrap_or(&Value::Null).to_string()])
}

fn cursor_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Orders watermarks: numbers by value, instants by time, other text as text.
fn compare(a: &str, b: &str) -> std::cmp::Ordering {
    if let (Ok(x), Ok(y)) = (a.parse::<f64>(), b.parse::<f64>()) {
        return x.total_cmp(&y);
    }
    if let (Some(x), Some(y)) = (instant(a), instant(b)) {
        return x.cmp(&y);
    }
    a.cmp(b)
}

/// The instant a cursor value names: an RFC 3339 date-time, or one without its zone, or a
/// date alone (both read as UTC, the start of the day for a date), as sources write them.
fn instant(v: &str) -> Option<DateTime<chrono::Utc>> {
    use chrono::{NaiveDate, NaiveDateTime};
    if let Ok(at) = DateTime::parse_from_rfc3339(v) {
        return Some(at.to_utc());
    }
    if let Ok(at) = NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(at.and_utc());
    }
    NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|at| at.and_utc())
}

/// What a cursor value is, in the order a watermark's kind is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum CursorKind {
    Text,
    Number,
    Date,
}

impl CursorKind {
    fn of(v: &str) -> CursorKind {
        if instant(v).is_some() {
            CursorKind::Date
        } else if v.parse::<f64>().is_ok() {
            CursorKind::Number
        } else {
            CursorKind::Text
        }
    }

    fn name(self) -> &'static str {
        match self {
            CursorKind::Text => "text",
            CursorKind::Number => "a number",
            CursorKind::Date => "a date",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_dates_are_read_with_or_without_zone_or_time() {
        assert_eq!(CursorKind::of("2025-01-02"), CursorKind::Date);
        assert_eq!(CursorKind::of("2025-01-02T03:04:05.6"), CursorKind::Date);
        assert_eq!(
            CursorKind::of("2025-01-02T03:04:05-01:00"),
            CursorKind::Date
        );
        assert_eq!(CursorKind::of("1767225600"), CursorKind::Number);
        assert_eq!(CursorKind::of("yesterday"), CursorKind::Text);
        assert_eq!(
            compare("2025-01-02", "2025-01-01T23:00:00-02:00"),
            std::cmp::Ordering::Less
        );
    }

    #[test]
    fn watermarks_compare_by_kind() {
        use std::cmp::Ordering::*;
        assert_eq!(compare("9", "10"), Less);
        assert_eq!(
            compare("2026-01-01T10:00:00+02:00", "2026-01-01T09:00:00Z"),
            Less
        );
        assert_eq!(compare("b", "a"), Greater);
    }

    #[test]
    fn lookback_moves_date_watermarks_only() {
        let ten = Duration::from_secs(600);
        assert_eq!(
            asked_from("2026-01-01T01:00:00Z", ten),
            "2026-01-01T00:50:00Z"
        );
        assert_eq!(
            asked_from("2026-01-01T01:00:00.123+02:00", ten),
            "2026-01-01T00:50:00.123+02:00"
        );
        assert_eq!(asked_from("42", ten), "42");
        assert_eq!(
            asked_from("2026-01-01T01:00:00Z", Duration::ZERO),
            "2026-01-01T01:00:00Z"
        );
    }

    #[test]
    fn digests_ignore_server_meta_only() {
        let a = json!({"resourceType": "Patient", "id": "p", "meta": {"versionId": "1"}});
        let b = json!({"resourceType": "Patient", "id": "p", "meta": {"versionId": "2", "lastUpdated": "2026-01-01T00:00:00Z", "source": "x"}});
        assert_eq!(digest(&a), digest(&b));
        let profiled =
            json!({"resourceType": "Patient", "id": "p", "meta": {"profile": ["urn:p"]}});
        assert_ne!(digest(&a), digest(&profiled));
        assert_ne!(
            digest(&a),
            digest(&json!({"resourceType": "Patient", "id": "q"}))
        );
    }
}
