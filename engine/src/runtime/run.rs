//! Cron runs: read the source (every page, incrementally from a watermark), map, write to the
//! sink, and report. A run that cannot read fails; the watermark and the digests of written
//! resources advance only when every write succeeded.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::DateTime;
use serde_json::{Value, json};

use crate::model::digest::content_digest;
use crate::model::jsonpath::Query;
use crate::model::{Connector, Cron, CronRead, Import, Pagination, Request, Strategy};
use crate::runtime::build_error::BuildError;
use crate::runtime::clock::Clock;
use crate::runtime::metrics::Metrics;
pub use crate::runtime::report::{Failure, RunReport, Skipped, Stage};
use crate::runtime::sink::{ProvenanceOf, WriteFailure, WriteOptions, Writer};
use crate::runtime::state::{self, ConnectorState, StateDir};
use crate::runtime::upstream::{Call, SourceClient, Upstreams};

/// Most pages read per stream in one run.
const MAX_PAGES: u32 = 10_000;

/// What a fetch reads: its request template, where the records are, its incremental cursor
/// and parameter, and the items of `each`.
struct Fetch<'a> {
    request: &'a Request,
    records: &'a Query,
    incremental: Option<&'a (Query, String)>,
    each: &'a [Value],
}

/// One stream of a run: where its records are in each page, its name (the key of its
/// watermark: `records` for a fetch, the resource type for a sync), and its cursor.
struct Stream<'a> {
    records: &'a Query,
    name: &'a str,
    cursor: Option<&'a Query>,
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

/// The resources to write, with their labels and digests: all of them, or with `onlyChanged`
/// those whose digest differs from the one written last (the others are counted unchanged).
fn changed(
    resources: Vec<Value>,
    cron: &Cron,
    state: &ConnectorState,
    report: &mut RunReport,
) -> (Vec<Value>, Vec<(String, String)>) {
    let mut to_write = Vec::new();
    let mut digests = Vec::new();
    for (i, r) in resources.into_iter().enumerate() {
        let label = crate::runtime::sink::label(&r, i);
        let d = digest(&r);
        if cron.only_changed && state.written.get(&label) == Some(&d) {
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
        Ok(Runner {
            connector,
            client,
            writer,
            state,
            metrics,
            clock,
        })
    }

    /// One run. With `dry_run`, nothing is written and the resources are returned instead.
    pub async fn run(&self, dry_run: bool) -> (RunReport, Vec<Value>) {
        let mut report = RunReport::new(&self.connector.name, self.clock.now(), dry_run);
        let Strategy::Cron(cron) = &self.connector.strategy else {
            return (report, Vec::new());
        };
        let Some(mut state) = self.load_state(&mut report).await else {
            return (self.finish(report), Vec::new());
        };
        let mut watermarks = state.watermarks.clone();
        let resources = self.read(cron, &state, &mut report, &mut watermarks).await;
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
        self.write(cron, to_write, digests, &mut state, &mut report)
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
        state: &ConnectorState,
        report: &mut RunReport,
        watermarks: &mut BTreeMap<String, String>,
    ) -> Vec<Value> {
        let mut resources = Vec::new();
        match (&cron.read, &self.client) {
            (CronRead::Import(import), _) => {
                self.import(import, report, &mut resources).await;
            }
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
                },
                Some(client),
            ) => {
                let fetch = Fetch {
                    request,
                    records,
                    incremental: incremental.as_ref(),
                    each,
                };
                self.fetch(client, fetch, state, report, &mut resources, watermarks)
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
                self.sync(client, sync, state, report, &mut resources, watermarks)
                    .await;
            }
        }
        resources
    }

    /// A fetch: one request (or one per `each` item) built from the template, paged.
    async fn fetch(
        &self,
        client: &SourceClient,
        fetch: Fetch<'_>,
        state: &ConnectorState,
        report: &mut RunReport,
        resources: &mut Vec<Value>,
        watermarks: &mut BTreeMap<String, String>,
    ) {
        let watermark = state.watermarks.get("records").cloned();
        let items: Vec<Option<&Value>> = if fetch.each.is_empty() {
            vec![None]
        } else {
            fetch.each.iter().map(Some).collect()
        };
        for item in items {
            let mut params = json!({"watermark": watermark.clone().unwrap_or_default()});
            if let Some(v) = item {
                params["item"] = v.clone();
            }
            let subject = item.map_or_else(|| "request".to_owned(), |v| format!("request for {v}"));
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
                    };
                    self.read_stream(client, call, stream, report, resources, watermarks)
                        .await;
                }
            }
        }
    }

    /// A sync: a FHIR search per resource type, from each type's watermark when incremental.
    async fn sync(
        &self,
        client: &SourceClient,
        (resource_types, incremental, page_size): (&[String], bool, u32),
        state: &ConnectorState,
        report: &mut RunReport,
        resources: &mut Vec<Value>,
        watermarks: &mut BTreeMap<String, String>,
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
                url.query_pairs_mut()
                    .append_pair("_lastUpdated", &format!("gt{wm}"));
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
            };
            self.read_stream(client, call, stream, report, resources, watermarks)
                .await;
        }
    }

    /// Writes what changed; the digests of what was written are kept for `onlyChanged`.
    async fn write(
        &self,
        cron: &Cron,
        to_write: Vec<Value>,
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
            // One Provenance per Bundle of the run, when the sink asks for it.
            provenance: Some(ProvenanceOf {
                connector: self.connector.name.clone(),
                occasion: format!("run {}", report.started.to_rfc3339()),
                source: if sources.is_empty() {
                    "an implementation guide import".to_owned()
                } else {
                    format!("source {}", sources.join(", "))
                },
                recorded: self.clock.now().to_rfc3339(),
                check_written: false,
            }),
        };
        let w = self.writer.write(to_write, &opts).await;
        report.resources_written = w.written;
        report.sink_calls = w.calls;
        report.sink_retries = w.retries;
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

    /// Reads every page of one stream into `out`, advancing its watermark candidate.
    async fn read_stream(
        &self,
        client: &SourceClient,
        call: Call,
        Stream {
            records,
            name: stream,
            cursor,
        }: Stream<'_>,
        report: &mut RunReport,
        out: &mut Vec<Value>,
        watermarks: &mut BTreeMap<String, String>,
    ) {
        let max_pages = match &client.source.pagination {
            Some(_) => MAX_PAGES,
            None if stream != "records" => MAX_PAGES,
            None => 1,
        };
        let before = client.source.pagination.is_none() && stream != "records";
        let request_id = uuid::Uuid::new_v4().to_string();
        // FHIR syncs follow the Bundle's `next` links whatever the source says.
        let pagination = if before {
            Some(Pagination::Fhir)
        } else {
            client.source.pagination.clone()
        };
        let result = client
            .pages_with(
                call,
                records,
                None,
                max_pages,
                pagination.as_ref(),
                &request_id,
                None,
                &mut report.source_calls,
            )
            .await;
        match result {
            Err(f) => report.failures.push(Failure {
                stage: Stage::Read,
                subject: stream.to_owned(),
                message: f.to_string(),
                outcome: None,
            }),
            Ok((found, _)) => {
                report.records_read += found.len();
                if let Some(c) = cursor {
                    let best = found
                        .iter()
                        .filter_map(|r| c.select(r, r).into_iter().next().and_then(cursor_text))
                        .max_by(|a, b| compare(a, b));
                    if let Some(b) = best {
                        let keep = watermarks
                            .get(stream)
                            .is_some_and(|old| compare(old, &b) != std::cmp::Ordering::Less);
                        if !keep {
                            watermarks.insert(stream.to_owned(), b);
                        }
                    }
                }
                let selected = found
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (format!("{stream}[{i}]"), r));
                match self.connector.map_records(selected, &json!({})) {
                    Ok(resources) => out.extend(resources),
                    Err(e) => report.failures.push(Failure {
                        stage: Stage::Map,
                        subject: stream.to_owned(),
                        message: e.to_string(),
                        outcome: None,
                    }),
                }
            }
        }
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

    fn finish(&self, mut report: RunReport) -> RunReport {
        report.finished = self.clock.now();
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

fn write_failure(f: WriteFailure) -> Failure {
    Failure {
        stage: Stage::Write,
        subject: f.resource,
        message: f.message,
        outcome: f.outcome.map(|o| *o),
    }
}

/// A content digest of a resource without its server metadata.
pub fn digest(r: &Value) -> String {
    let mut copy = r.clone();
    if let Some(o) = copy.as_object_mut() {
        o.remove("meta");
    }
    content_digest(&[copy.to_string()])
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
    if let (Ok(x), Ok(y)) = (
        DateTime::parse_from_rfc3339(a),
        DateTime::parse_from_rfc3339(b),
    ) {
        return x.cmp(&y);
    }
    a.cmp(b)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn digests_ignore_meta() {
        let a = json!({"resourceType": "Patient", "id": "p", "meta": {"versionId": "1"}});
        let b = json!({"resourceType": "Patient", "id": "p", "meta": {"versionId": "2"}});
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(
            digest(&a),
            digest(&json!({"resourceType": "Patient", "id": "q"}))
        );
    }
}
