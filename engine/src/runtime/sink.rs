//! Sinks: where cron and push connectors write. A FHIR server gets transaction or batch
//! Bundles of many resources (`PUT Type/id`, or a conditional update on a declared
//! identifier), in an order where references resolve, with transient failures retried and
//! every per-entry failure reported with the server's `OperationOutcome`. The embedded default
//! is an NDJSON directory (FHIR Bulk Data layout) written so that a crash never leaves a torn
//! line.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::model::vocabulary::BundleMode;
use crate::model::{FhirSink, Sink, SinkRef};
use crate::runtime::build_error::{BuildError, Party};
use crate::runtime::outbound::{self, OutboundError, RetryPolicy};
use crate::runtime::outbound_auth::credentials::{self, with_header};
use crate::runtime::outbound_auth::{Credentials, TokenError};
use crate::runtime::state::StateError;

/// One resource that could not be written, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteFailure {
    /// `Type/id` (or the position when there is no id).
    pub resource: String,
    pub status: Option<u16>,
    pub message: String,
    /// The server's `OperationOutcome`, when it sent one.
    pub outcome: Option<Box<Value>>,
    /// True when trying again later may succeed (the sink was unreachable or overloaded).
    pub transient: bool,
}

/// What a write did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteReport {
    pub written: usize,
    pub failures: Vec<WriteFailure>,
    /// HTTP calls made to the sink.
    pub calls: usize,
    pub retries: usize,
}

impl WriteReport {
    /// Nothing of `count` resources written, for a reason that may pass (a transient failure).
    fn none_written(count: usize, message: String) -> WriteReport {
        WriteReport {
            failures: vec![WriteFailure {
                resource: format!("{count} resources"),
                status: None,
                message,
                outcome: None,
                transient: true,
            }],
            ..WriteReport::default()
        }
    }
}

/// How resources are identified when written.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Conditional update on this identifier system instead of `PUT Type/id`.
    pub identifier_system: Option<String>,
    /// The resource types the connector declares (`None`: any type); others are refused.
    pub declared_types: Option<std::collections::BTreeSet<String>>,
    /// The Provenance of each Bundle, written when the FHIR sink asks for it (`provenance`).
    pub provenance: Option<ProvenanceOf>,
    /// The trace the write belongs to: each Bundle posted to a FHIR sink carries it
    /// (`traceparent` with the post's own span id, `tracestate`), and its span is exported
    /// with `--otlp-endpoint`.
    pub trace: Option<crate::runtime::trace_context::Trace>,
}

/// What the Provenance written in each Bundle says, and what makes its id: a UUID v5 of the
/// connector, the occasion and the Bundle's position, so that the same write has the same id
/// when it is tried again.
#[derive(Debug, Clone, Default)]
pub struct ProvenanceOf {
    /// The connector that wrote (the `agent`, with the engine).
    pub connector: String,
    /// What happened: a push delivery's key and arrival, a cron run's start.
    pub occasion: String,
    /// Where the data came from (the `entity`): a source's name, or the push endpoint.
    pub source: String,
    /// When (`recorded`), from the engine's clock.
    pub recorded: String,
    /// Looks each Bundle's Provenance up before sending the Bundle (transaction mode), and
    /// counts the Bundle as written when it is there: set when a write may have reached the
    /// sink before a crash.
    pub check_written: bool,
}

impl ProvenanceOf {
    /// The id of the Provenance of the `n`th Bundle.
    pub fn id(&self, n: usize) -> String {
        crate::model::fhir::uuid5(&[self.connector.clone(), self.occasion.clone(), n.to_string()])
    }

    /// The Bundle entry of the Provenance of the `n`th Bundle, about `targets` (`Type/id`, or
    /// the conditional reference of a conditional update).
    fn entry(&self, n: usize, targets: Vec<String>) -> Value {
        let id = self.id(n);
        let target: Vec<Value> = targets
            .into_iter()
            .map(|t| json!({"reference": t}))
            .collect();
        json!({
            "resource": {
                "resourceType": "Provenance",
                "id": id,
                "target": target,
                "recorded": self.recorded,
                "activity": {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": "UPDATE"
                }]},
                "agent": [{
                    "type": {"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                        "code": "assembler"
                    }]},
                    "who": {"display": format!(
                        "fosps-engine {} connector {}",
                        env!("CARGO_PKG_VERSION"),
                        self.connector
                    )}
                }],
                "entity": [{"role": "source", "what": {"display": self.source}}]
            },
            "request": {"method": "PUT", "url": format!("Provenance/{id}")}
        })
    }
}

/// The HTTP client of a FHIR sink (with its TLS identity, when it has one) and its
/// credentials (`runtime::outbound_auth`, as sources'), tokens kept for the writer's life.
pub struct SinkClient {
    http: reqwest::Client,
    auth: Credentials,
}

/// A ready sink.
#[allow(clippy::large_enum_variant)] // one per connector build; boxing would only add indirection
pub enum Writer {
    Fhir { sink: FhirSink, client: SinkClient },
    Ndjson { dir: PathBuf },
}

impl Writer {
    /// The writer of a connector's sink; the default is NDJSON under `default_dir`.
    pub fn new(sink: &SinkRef, default_dir: &Path) -> Result<Writer, BuildError> {
        match sink {
            SinkRef::Default => Ok(Writer::Ndjson {
                dir: default_dir.to_path_buf(),
            }),
            SinkRef::Named(s) => match s.as_ref() {
                Sink::Ndjson { dir, .. } => Ok(Writer::Ndjson { dir: dir.clone() }),
                Sink::Fhir(f) => {
                    let party = Party::Sink(f.name.clone());
                    let http = credentials::client(&party, f.tls.as_ref())?;
                    let auth = Credentials::new(&party, f.auth.as_ref(), f.timeout, &http)?;
                    Ok(Writer::Fhir {
                        sink: clone_fhir(f),
                        client: SinkClient { http, auth },
                    })
                }
            },
        }
    }

    /// Deletes resources (`Type/id` references) at a FHIR sink: a `batch` Bundle of
    /// `DELETE` entries per `batchSize` (each entry on its own, so one resource already gone
    /// does not undo the others; 404 and 410 count as deleted). `written` counts the
    /// resources deleted. `None` for the NDJSON sink, which only appends.
    pub async fn delete(
        &self,
        references: &[String],
        trace: Option<&crate::runtime::trace_context::Trace>,
    ) -> Option<WriteReport> {
        let Writer::Fhir { sink, client } = self else {
            return None;
        };
        let mut report = WriteReport::default();
        for chunk in references.chunks(sink.batch_size.max(1) as usize) {
            let entries: Vec<Value> = chunk
                .iter()
                .map(|r| json!({"request": {"method": "DELETE", "url": r}}))
                .collect();
            let refs: Vec<&Value> = entries.iter().collect();
            match send_bundle(
                sink,
                client,
                BundleMode::Batch,
                &refs,
                &mut report,
                trace,
                None,
            )
            .await
            {
                Err((status, message, outcome, transient)) => {
                    report.failures.push(WriteFailure {
                        resource: format!("{} deletions", chunk.len()),
                        status,
                        message,
                        outcome: outcome.map(Box::new),
                        transient,
                    });
                    return Some(report);
                }
                Ok(answers) => {
                    for (r, a) in chunk.iter().zip(answers) {
                        let status = a["response"]["status"]
                            .as_str()
                            .and_then(|s| s.split_whitespace().next())
                            .and_then(|s| s.parse::<u16>().ok());
                        match status {
                            Some(200..=299 | 404 | 410) => report.written += 1,
                            other => report.failures.push(WriteFailure {
                                resource: r.clone(),
                                status: other,
                                message: format!(
                                    "the server did not delete it ({})",
                                    other.map_or("no status".to_owned(), |s| s.to_string())
                                ),
                                outcome: a["response"].get("outcome").cloned().map(Box::new),
                                transient: other.is_some_and(|s| s >= 500 || s == 429),
                            }),
                        }
                    }
                }
            }
        }
        Some(report)
    }

    /// A short description for logs and reports.
    pub fn describe(&self) -> String {
        match self {
            Writer::Fhir { sink, .. } => format!("FHIR sink `{}`", sink.name),
            Writer::Ndjson { .. } => "the NDJSON sink".to_owned(),
        }
    }

    /// Writes resources; every failure is in the report.
    pub async fn write(&self, resources: Vec<Value>, opts: &WriteOptions) -> WriteReport {
        let (resources, refused) = admit(resources, opts);
        let report = self.write_checked(resources, opts).await;
        with_refused(refused, report)
    }

    async fn write_checked(&self, resources: Vec<Value>, opts: &WriteOptions) -> WriteReport {
        match self {
            Writer::Ndjson { dir } => {
                // Appends and fsyncs: on the blocking pool, off the async workers.
                let dir = dir.clone();
                let count = resources.len();
                tokio::task::spawn_blocking(move || {
                    let lock = ndjson_lock(&dir);
                    let _alone = lock.lock();
                    write_ndjson(&dir, &resources)
                })
                .await
                .unwrap_or_else(|e| {
                    WriteReport::none_written(count, format!("the NDJSON writer stopped: {e}"))
                })
            }
            Writer::Fhir { sink, client } => {
                write_fhir(sink, client, reference_order(resources), opts).await
            }
        }
    }
}

impl Writer {
    /// Writes as `write` does, after `record` has durably recorded the write as in flight
    /// (given the lengths of the NDJSON files it appends to; none for a FHIR sink). `cut`
    /// holds the lengths recorded by an earlier try of the same write, cut short: each file
    /// is cut back to its length first when what follows it is (a part of) this write, or
    /// left as it is, and not written again, when this write is whole there. For NDJSON, the
    /// record, the cut and the write happen under the directory's lock, so no other write
    /// of the process comes between them.
    pub async fn write_recorded(
        &self,
        resources: Vec<Value>,
        opts: &WriteOptions,
        cut: Option<BTreeMap<String, u64>>,
        record: impl FnOnce(&BTreeMap<String, u64>) -> Result<(), StateError> + Send + 'static,
    ) -> WriteReport {
        // The reason only: the report's texts reach logs and callers, which see no path.
        let unrecorded = |why: String, count: usize| {
            WriteReport::none_written(count, format!("cannot record the write in flight: {why}"))
        };
        let (resources, refused) = admit(resources, opts);
        let report = match self {
            Writer::Fhir { .. } => {
                let count = resources.len();
                match tokio::task::spawn_blocking(move || record(&BTreeMap::new())).await {
                    Ok(Ok(())) => self.write_checked(resources, opts).await,
                    Ok(Err(e)) => unrecorded(e.reason(), count),
                    Err(e) => unrecorded(e.to_string(), count),
                }
            }
            Writer::Ndjson { dir } => {
                let dir = dir.clone();
                let count = resources.len();
                tokio::task::spawn_blocking(move || {
                    let lock = ndjson_lock(&dir);
                    let _alone = lock.lock();
                    let mut resources = resources;
                    if let Some(cut) = cut {
                        match cut_back(&dir, &cut, &resources) {
                            Ok(whole) => resources.retain(|r| {
                                r["resourceType"]
                                    .as_str()
                                    .is_none_or(|t| !whole.contains(t))
                            }),
                            Err(e) => return unrecorded(format!("cutting back: {e}"), count),
                        }
                    }
                    let lengths = ndjson_lengths(&dir, &resources);
                    if let Err(e) = record(&lengths) {
                        return unrecorded(e.reason(), count);
                    }
                    let mut report = write_ndjson(&dir, &resources);
                    report.written = report
                        .written
                        .max(count.saturating_sub(report.failures.len()));
                    report
                })
                .await
                .unwrap_or_else(|e| unrecorded(e.to_string(), count))
            }
        };
        with_refused(refused, report)
    }
}

/// The resources that may be written, and a failure for each of the others. Checked before
/// anything reaches the sink: an id that breaks FHIR's id rule would become part of the sink's
/// URL, and a type the connector does not declare is not its to write. A refusal is permanent,
/// with the reason.
fn admit(resources: Vec<Value>, opts: &WriteOptions) -> (Vec<Value>, Vec<WriteFailure>) {
    let mut refused = Vec::new();
    let admitted = resources
        .into_iter()
        .enumerate()
        .filter_map(
            |(i, r)| match crate::model::fhir::writable(&r, opts.declared_types.as_ref()) {
                Ok(()) => Some(r),
                Err(e) => {
                    refused.push(WriteFailure {
                        resource: safe_label(&r, i),
                        status: None,
                        message: format!("not written: {e}"),
                        outcome: None,
                        transient: false,
                    });
                    None
                }
            },
        )
        .collect();
    (admitted, refused)
}

/// A write's report with the refused resources' failures first.
fn with_refused(mut refused: Vec<WriteFailure>, mut report: WriteReport) -> WriteReport {
    refused.append(&mut report.failures);
    report.failures = refused;
    report
}

/// The lock of an NDJSON directory: writes to one directory are serialised in the process.
fn ndjson_lock(dir: &Path) -> std::sync::Arc<std::sync::Mutex<()>> {
    static LOCKS: std::sync::OnceLock<
        std::sync::Mutex<HashMap<PathBuf, std::sync::Arc<std::sync::Mutex<()>>>>,
    > = std::sync::OnceLock::new();
    let locks = LOCKS.get_or_init(Default::default);
    let mut map = locks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    map.entry(dir.to_path_buf()).or_default().clone()
}

/// The bytes `write_ndjson` appends to each file for these resources.
fn ndjson_bytes(resources: &[Value]) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for r in resources {
        if let Some(t) = r["resourceType"]
            .as_str()
            .filter(|t| crate::model::mapping::is_resource_type(t))
        {
            let buf = out.entry(format!("{t}.ndjson")).or_default();
            if serde_json::to_writer(&mut *buf, r).is_ok() {
                buf.push(b'\n');
            }
        }
    }
    out
}

/// The lengths of the files these resources go to (0 for a file not there yet).
fn ndjson_lengths(dir: &Path, resources: &[Value]) -> BTreeMap<String, u64> {
    ndjson_bytes(resources)
        .into_keys()
        .map(|f| {
            let len = std::fs::metadata(dir.join(&f)).map_or(0, |m| m.len());
            (f, len)
        })
        .collect()
}

/// Cuts each file back to its recorded length when what follows is a part of what these
/// resources append to it; gives the types whose lines are there whole already.
fn cut_back(
    dir: &Path,
    lengths: &BTreeMap<String, u64>,
    resources: &[Value],
) -> std::io::Result<HashSet<String>> {
    let mut whole = HashSet::new();
    for (file, ours) in ndjson_bytes(resources) {
        let Some(&len) = lengths.get(&file) else {
            continue;
        };
        let path = dir.join(&file);
        let mut tail = Vec::new();
        match std::fs::File::open(&path) {
            Ok(mut f) => {
                f.seek(SeekFrom::Start(len))?;
                f.read_to_end(&mut tail)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        if tail.is_empty() {
            continue;
        }
        if ours.starts_with(&tail) && tail.len() < ours.len() {
            let f = std::fs::OpenOptions::new().write(true).open(&path)?;
            f.set_len(len)?;
            f.sync_all()?;
        } else if tail.starts_with(&ours) {
            whole.insert(file.trim_end_matches(".ndjson").to_owned());
        }
        // Otherwise another write came after a part of this one that a torn-tail repair
        // removed: this one is written again.
    }
    Ok(whole)
}

fn clone_fhir(f: &FhirSink) -> FhirSink {
    FhirSink {
        name: f.name.clone(),
        url: f.url.clone(),
        version: f.version,
        auth: f.auth.clone(),
        tls: f.tls.clone(),
        timeout: f.timeout,
        batch_size: f.batch_size,
        concurrency: f.concurrency,
        mode: f.mode,
        retries: f.retries,
        provenance: f.provenance,
    }
}

/// `Type/id` of a resource whose id is a FHIR id, or `Type` and its position.
pub fn safe_label(r: &Value, i: usize) -> String {
    let t = r
        .get("resourceType")
        .and_then(Value::as_str)
        .filter(|t| crate::model::fhir::is_resource_type(t))
        .unwrap_or("resource");
    match r.get("id").and_then(Value::as_str) {
        Some(id) if crate::model::fhir::is_id(id) => format!("{t}/{id}"),
        _ => format!("{t} #{}", i + 1),
    }
}

/// `Type/id` of a resource, or a placeholder.
pub fn label(r: &Value, i: usize) -> String {
    crate::model::fhir::local_reference(r).unwrap_or_else(|| {
        format!(
            "resource {i} ({})",
            r["resourceType"].as_str().unwrap_or("?")
        )
    })
}

/// Each `Type/id` once, as its last version (a transaction may not touch one resource
/// twice), in the order of those last versions; resources without an id all kept.
pub fn last_versions(resources: Vec<Value>) -> Vec<Value> {
    let mut last: HashMap<String, usize> = HashMap::new();
    for (i, r) in resources.iter().enumerate() {
        if let Some(l) = crate::model::fhir::local_reference(r) {
            last.insert(l, i);
        }
    }
    resources
        .into_iter()
        .enumerate()
        .filter(|(i, r)| {
            crate::model::fhir::local_reference(r).is_none_or(|l| last.get(&l) == Some(i))
        })
        .map(|(_, r)| r)
        .collect()
}

/// Orders resources so that those referenced by others come first (cycles keep their order),
/// each `Type/id` once, as its last version.
pub fn reference_order(resources: Vec<Value>) -> Vec<Value> {
    let resources = last_versions(resources);
    let index: HashMap<String, usize> = resources
        .iter()
        .enumerate()
        .filter_map(|(i, r)| crate::model::fhir::local_reference(r).map(|l| (l, i)))
        .collect();
    let deps: Vec<Vec<usize>> = resources
        .iter()
        .map(|r| {
            let mut refs = Vec::new();
            collect_refs(r, &mut refs);
            refs.iter().filter_map(|l| index.get(l).copied()).collect()
        })
        .collect();
    let mut done = vec![false; resources.len()];
    let mut visiting = vec![false; resources.len()];
    let mut order = Vec::with_capacity(resources.len());
    fn visit(
        i: usize,
        deps: &[Vec<usize>],
        done: &mut [bool],
        visiting: &mut [bool],
        order: &mut Vec<usize>,
    ) {
        if done[i] || visiting[i] {
            return;
        }
        visiting[i] = true;
        for &d in &deps[i] {
            visit(d, deps, done, visiting, order);
        }
        visiting[i] = false;
        done[i] = true;
        order.push(i);
    }
    for i in 0..resources.len() {
        visit(i, &deps, &mut done, &mut visiting, &mut order);
    }
    let mut slots: Vec<Option<Value>> = resources.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, c) in o {
                match (k.as_str(), c) {
                    ("reference", Value::String(s)) => out.push(s.clone()),
                    _ => collect_refs(c, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| collect_refs(c, out)),
        _ => {}
    }
}

fn write_ndjson(dir: &Path, resources: &[Value]) -> WriteReport {
    let mut report = WriteReport::default();
    let mut by_type: BTreeMap<String, Vec<(usize, &Value)>> = BTreeMap::new();
    for (i, r) in resources.iter().enumerate() {
        match r["resourceType"]
            .as_str()
            .filter(|t| crate::model::fhir::is_resource_type(t))
        {
            Some(t) => by_type.entry(t.to_owned()).or_default().push((i, r)),
            None => report.failures.push(WriteFailure {
                resource: label(r, i),
                status: None,
                message: "not a FHIR resource (no valid resourceType)".into(),
                outcome: None,
                transient: false,
            }),
        }
    }
    for (t, items) in by_type {
        let path = dir.join(format!("{t}.ndjson"));
        match append_lines(&path, items.iter().map(|(_, r)| *r)) {
            Ok(()) => report.written += items.len(),
            Err(e) => report
                .failures
                .extend(items.iter().map(|(i, r)| WriteFailure {
                    resource: label(r, *i),
                    status: None,
                    message: format!("{t}.ndjson: {e}"),
                    outcome: None,
                    transient: true,
                })),
        }
    }
    report
}

/// Appends one JSON line per value in one write, then flushes it to disk. A line torn by an
/// earlier crash (a file not ending in a newline) is cut off first.
pub fn append_lines<'a>(
    path: &Path,
    values: impl Iterator<Item = &'a Value>,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let mut len = f.metadata()?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1))?;
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            len = last_newline(&mut f, len)?;
            f.set_len(len)?;
        }
    }
    let mut buf = Vec::new();
    for v in values {
        serde_json::to_writer(&mut buf, v)?;
        buf.push(b'\n');
    }
    // A write that fails part-way (a full disk, a file size limit) is taken back, so that no
    // torn line is left for a reader until the next append.
    f.write_all(&buf).inspect_err(|_| {
        let _ = f.set_len(len);
    })?;
    f.sync_data()
}

/// The length of the file up to and including its last newline.
fn last_newline(f: &mut std::fs::File, len: u64) -> std::io::Result<u64> {
    let mut pos = len;
    let mut chunk = vec![0u8; 8192];
    while pos > 0 {
        let start = pos.saturating_sub(chunk.len() as u64);
        let n = (pos - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut chunk[..n])?;
        if let Some(i) = chunk[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        pos = start;
    }
    Ok(0)
}

async fn write_fhir(
    sink: &FhirSink,
    client: &SinkClient,
    resources: Vec<Value>,
    opts: &WriteOptions,
) -> WriteReport {
    let mut report = WriteReport::default();
    let mut entries = Vec::with_capacity(resources.len());
    for (i, r) in resources.into_iter().enumerate() {
        match entry(&r, i, opts) {
            Ok(request) => entries.push((label(&r, i), json!({"resource": r, "request": request}))),
            Err(f) => report.failures.push(f),
        }
    }
    let provenance = opts.provenance.as_ref().filter(|_| sink.provenance);
    let chunks: Vec<&[(String, Value)]> = entries.chunks(sink.batch_size.max(1) as usize).collect();
    let in_flight = (sink.concurrency.max(1) as usize).min(chunks.len().max(1));
    let after = if in_flight > 1 {
        bundles_referenced(&chunks)
    } else {
        Vec::new()
    };
    // Bundles in flight, at most `in_flight`; a Bundle that references resources of an
    // earlier one waits until that one is answered. The reports are merged in Bundle order.
    let mut reports: Vec<Option<WriteReport>> = vec![None; chunks.len()];
    let mut running = futures_util::stream::FuturesUnordered::new();
    for (n, chunk) in chunks.iter().enumerate() {
        let waits = after.get(n).map_or(&[][..], Vec::as_slice);
        while running.len() >= in_flight || waits.iter().any(|&d| reports[d].is_none()) {
            let Some((done, r)) = futures_util::StreamExt::next(&mut running).await else {
                break;
            };
            reports[done] = Some(r);
        }
        let trace = opts.trace.as_ref();
        running.push(async move {
            (
                n,
                write_bundle(sink, client, n, chunk, provenance, trace).await,
            )
        });
    }
    while let Some((done, r)) = futures_util::StreamExt::next(&mut running).await {
        reports[done] = Some(r);
    }
    for r in reports.into_iter().flatten() {
        report.written += r.written;
        report.calls += r.calls;
        report.retries += r.retries;
        report.failures.extend(r.failures);
    }
    report
}

/// For each Bundle, the earlier Bundles holding resources it references (which must be
/// answered before it is posted, so that references resolve as with one Bundle at a time).
fn bundles_referenced(chunks: &[&[(String, Value)]]) -> Vec<Vec<usize>> {
    let mut home: HashMap<&str, usize> = HashMap::new();
    for (n, chunk) in chunks.iter().enumerate() {
        for (l, _) in chunk.iter() {
            home.insert(l.as_str(), n);
        }
    }
    chunks
        .iter()
        .enumerate()
        .map(|(n, chunk)| {
            let mut refs = Vec::new();
            for (_, e) in chunk.iter() {
                collect_refs(&e["resource"], &mut refs);
            }
            let mut earlier: Vec<usize> = refs
                .iter()
                .filter_map(|r| home.get(r.as_str()).copied())
                .filter(|&d| d < n)
                .collect();
            earlier.sort_unstable();
            earlier.dedup();
            earlier
        })
        .collect()
}

/// Writes the `n`th Bundle of a write (with its Provenance when asked): its own report.
async fn write_bundle(
    sink: &FhirSink,
    client: &SinkClient,
    n: usize,
    chunk: &[(String, Value)],
    provenance: Option<&ProvenanceOf>,
    trace: Option<&crate::runtime::trace_context::Trace>,
) -> WriteReport {
    let mut report = WriteReport::default();
    let labels: Vec<&String> = chunk.iter().map(|(l, _)| l).collect();
    let mut bodies: Vec<&Value> = chunk.iter().map(|(_, e)| e).collect();
    let provenance_entry;
    if let Some(p) = provenance {
        if p.check_written && sink.mode == BundleMode::Transaction {
            match written_before(sink, client, &p.id(n), &mut report).await {
                Ok(true) => {
                    report.written += chunk.len();
                    return report;
                }
                Ok(false) => {}
                Err(e) => {
                    report.failures.extend(labels.iter().map(|l| WriteFailure {
                        resource: (*l).clone(),
                        status: e.status(),
                        message: e.to_string(),
                        outcome: None,
                        transient: true,
                    }));
                    return report;
                }
            }
        }
        let targets = bodies
            .iter()
            .filter_map(|e| e["request"]["url"].as_str().map(str::to_owned))
            .collect();
        provenance_entry = p.entry(n, targets);
        bodies.push(&provenance_entry);
    }
    // A transaction carrying its Provenance: before it is sent again (after a timeout, a cut
    // answer, a 5xx), the Provenance says whether the first one was applied after all.
    let applied_if = provenance
        .filter(|_| sink.mode == BundleMode::Transaction)
        .map(|p| p.id(n));
    let mut result = send_bundle(
        sink,
        client,
        sink.mode,
        &bodies,
        &mut report,
        trace,
        applied_if.as_deref(),
    )
    .await;
    if sink.mode == BundleMode::Transaction
        && let Err((Some(status), ..)) = &result
        && (400..500).contains(status)
        && !matches!(status, 401 | 403)
    {
        // A transaction is all or nothing: send the entries as a batch to learn (and
        // keep) what each one does; not when the credentials were refused, which a batch
        // would only meet again. Without the Provenance: a batch may be applied in part,
        // and the Provenance on the sink is what a later try takes as the proof that the
        // whole Bundle was applied (it would then not write the entries that failed).
        result = send_bundle(
            sink,
            client,
            BundleMode::Batch,
            &bodies[..labels.len()],
            &mut report,
            trace,
            None,
        )
        .await;
    }
    match result {
        Ok(answers) => {
            for (i, label) in labels.iter().enumerate() {
                let resp = answers.get(i).map(|a| &a["response"]);
                let status = resp
                    .and_then(|r| r["status"].as_str())
                    .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok());
                match status {
                    Some(s) if (200..300).contains(&s) => report.written += 1,
                    _ => report.failures.push(WriteFailure {
                        resource: (*label).clone(),
                        status,
                        message: format!(
                            "the server answered {}",
                            status.map_or("nothing".into(), |s| s.to_string())
                        ),
                        outcome: resp
                            .map(|r| r["outcome"].clone())
                            .filter(|o| o.is_object())
                            .map(Box::new),
                        transient: status.is_some_and(|s| s >= 500 || s == 429),
                    }),
                }
            }
        }
        Err((status, message, outcome, transient)) => {
            report.failures.extend(labels.iter().map(|l| WriteFailure {
                resource: (*l).clone(),
                status,
                message: message.clone(),
                outcome: outcome.clone().map(Box::new),
                transient,
            }));
        }
    }
    report
}

/// Why the look-up of an earlier write (its Provenance) could not tell whether it was applied.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// No answer, an error status other than 404 and 410, or an answer too large.
    #[error("the look-up of an earlier write failed: the server {}", sink_text(.0))]
    Failed(OutboundError),
    /// A 2xx that is not the Provenance asked for: the write is not taken as done.
    #[error(
        "the server answered the look-up of an earlier write with something else than its Provenance"
    )]
    NotIt,
    #[error("the sink URL cannot take a path")]
    Url,
    /// No token from the sink's token endpoint.
    #[error("no token for the sink: {0}")]
    Token(TokenError),
}

impl LookupError {
    fn status(&self) -> Option<u16> {
        match self {
            LookupError::Failed(e) => e.status(),
            _ => None,
        }
    }
}

/// Whether the Provenance `id` is on the sink (a transaction that carried it was applied).
async fn written_before(
    sink: &FhirSink,
    client: &SinkClient,
    id: &str,
    report: &mut WriteReport,
) -> Result<bool, LookupError> {
    let mut url = sink.url.clone();
    url.path_segments_mut()
        .map_err(|()| LookupError::Url)?
        .pop_if_empty()
        .extend(["Provenance", id]);
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let answer = client
        .auth
        .send(|header| {
            calls.fetch_add(1, Ordering::Relaxed);
            let req = with_header(
                client
                    .http
                    .get(url.clone())
                    .timeout(sink.timeout)
                    .header("accept", "application/fhir+json"),
                header,
            );
            outbound::exchange(req, crate::model::DEFAULT_MAX_ANSWER, sink.timeout)
        })
        .await;
    report.calls += calls.load(Ordering::Relaxed);
    match answer.map_err(LookupError::Token)? {
        Ok(got) => {
            // Only the Provenance asked for says the write was applied: a server (or a proxy
            // in front of it) answering 200 to anything must not make a payload be dropped.
            let found = outbound::json(&got.body)
                .is_ok_and(|p| p["resourceType"] == "Provenance" && p["id"].as_str() == Some(id));
            if found {
                Ok(true)
            } else {
                Err(LookupError::NotIt)
            }
        }
        Err(e) if matches!(e.status(), Some(404 | 410)) => Ok(false),
        Err(e) => Err(LookupError::Failed(e)),
    }
}

/// The `request` of a Bundle entry for a resource.
fn entry(r: &Value, i: usize, opts: &WriteOptions) -> Result<Value, WriteFailure> {
    let fail = |message: String| WriteFailure {
        resource: label(r, i),
        status: None,
        message,
        outcome: None,
        transient: false,
    };
    let t = r["resourceType"]
        .as_str()
        .filter(|t| crate::model::fhir::is_resource_type(t))
        .ok_or_else(|| fail("not a FHIR resource (no valid resourceType)".into()))?;
    if let Some(system) = &opts.identifier_system {
        let value = r["identifier"]
            .as_array()
            .and_then(|ids| ids.iter().find(|id| id["system"] == system.as_str()))
            .and_then(|id| id["value"].as_str())
            .ok_or_else(|| {
                fail(format!(
                    "no identifier with system `{system}` for the conditional update"
                ))
            })?;
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("identifier", &format!("{system}|{value}"))
            .finish();
        return Ok(json!({"method": "PUT", "url": format!("{t}?{query}")}));
    }
    let id = r["id"].as_str().ok_or_else(|| {
        fail(
            "the resource has no id: give it a deterministic id (`$uuid`) or write by identifier"
                .into(),
        )
    })?;
    Ok(json!({"method": "PUT", "url": format!("{t}/{id}")}))
}

/// Why a Bundle was not written: the status, the message, the server's `OperationOutcome`,
/// and whether sending it later may succeed.
type SendError = (Option<u16>, String, Option<Value>, bool);

/// Posts one Bundle over the outbound layer (its redirect policy, body cap and retry policy),
/// retrying transient failures; gives the answer's entries.
async fn send_bundle(
    sink: &FhirSink,
    client: &SinkClient,
    mode: BundleMode,
    entries: &[&Value],
    report: &mut WriteReport,
    trace: Option<&crate::runtime::trace_context::Trace>,
    applied_if: Option<&str>,
) -> Result<Vec<Value>, SendError> {
    let body = bundle_bytes(mode, entries);
    // Set when a retry found the Bundle's Provenance (`applied_if`) on the sink: the Bundle
    // was applied before its answer was lost, and is not sent again.
    let applied = std::sync::atomic::AtomicBool::new(false);
    let lookups = std::sync::atomic::AtomicUsize::new(0);
    let policy = RetryPolicy {
        retries: sink.retries,
        statuses: &crate::model::DEFAULT_RETRY_STATUSES,
    };
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let result = client
        .auth
        .send(|header| {
            let calls = &calls;
            let body = &body;
            let policy = &policy;
            let (applied, lookups) = (&applied, &lookups);
            async move {
                let mut n = 0;
                let result = policy
                    .run(None, &mut n, |attempt| {
                        // Each post its own span, a child of the write's trace.
                        let span_id = crate::runtime::trace_context::new_span_id();
                        let mut req = with_header(
                            client
                                .http
                                .post(sink.url.clone())
                                .timeout(sink.timeout)
                                .header("content-type", "application/fhir+json")
                                .header("accept", "application/fhir+json")
                                // Only each entry's status and outcome are read: no copies
                                // of the resources back.
                                .header("prefer", "return=minimal")
                                .body(body.clone()),
                            header.clone(),
                        );
                        if let Some(t) = trace {
                            req = req.header("traceparent", t.outbound_as(span_id));
                            if let Some(state) = &t.state {
                                req = req.header("tracestate", state.clone());
                            }
                        }
                        let began = (trace.is_some() && crate::runtime::otlp::enabled())
                            .then(std::time::SystemTime::now);
                        async move {
                            if attempt > 0
                                && let Some(id) = applied_if
                            {
                                let mut looked = WriteReport::default();
                                let found = written_before(sink, client, id, &mut looked).await;
                                lookups.fetch_add(looked.calls, Ordering::Relaxed);
                                // Not found, or not known (the look-up failed): sent again,
                                // as before (at least once).
                                if matches!(found, Ok(true)) {
                                    applied.store(true, Ordering::Relaxed);
                                    return Ok(outbound::Exchanged {
                                        status: 200,
                                        headers: reqwest::header::HeaderMap::new(),
                                        body: bytes::Bytes::new(),
                                    });
                                }
                            }
                            let got = outbound::exchange(
                                req,
                                crate::model::DEFAULT_MAX_ANSWER,
                                sink.timeout,
                            )
                            .await;
                            if let (Some(began), Some(t)) = (began, trace) {
                                post_span(sink, t, span_id, (attempt, began), &got);
                            }
                            got
                        }
                    })
                    .await;
                calls.fetch_add(n, Ordering::Relaxed);
                result
            }
        })
        .await
        .map_err(|e| {
            let transient = e.transient();
            let text = outbound::redact(
                &format!("no token for the sink: {e}"),
                &credentials::secret_values(sink.auth.as_ref()),
            );
            (None, text, None, transient)
        })?;
    // An attempt that found its Bundle applied posted nothing.
    let applied = applied.load(Ordering::Relaxed) && result.is_ok();
    let calls = calls.load(Ordering::Relaxed) - usize::from(applied);
    report.calls += calls + lookups.load(Ordering::Relaxed);
    report.retries += calls.saturating_sub(1);
    if applied {
        return Ok(entries
            .iter()
            .map(|_| json!({"response": {"status": "200 OK"}}))
            .collect());
    }
    // The sink's words without its credentials (a server may echo the token it refused):
    // they reach run reports, dead letters, logs and a sync push's caller.
    let secrets = credentials::secret_values(sink.auth.as_ref());
    let result = result.map_err(|e| e.redacted(&secrets));
    let got = result.map_err(|e| {
        let outcome = match e.last() {
            OutboundError::Status { outcome, .. } => outcome.as_deref().cloned(),
            _ => None,
        };
        let transient = e.transient();
        (
            e.status(),
            format!("the server {}", sink_text(&e)),
            outcome,
            transient,
        )
    })?;
    let status = Some(got.status);
    let mut json = outbound::json(&got.body)
        .map_err(|e| (status, format!("the server's {e}"), None, false))?;
    let answers = match json.get_mut("entry").map(Value::take) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    if answers.len() != entries.len() {
        return Err((
            status,
            format!(
                "the server answered {} entries for {}",
                answers.len(),
                entries.len()
            ),
            None,
            false,
        ));
    }
    Ok(answers)
}

/// The exported span of one post of a Bundle: the sink's origin only, the answer's status (or
/// timeout, error), the attempt (0 the first).
fn post_span(
    sink: &FhirSink,
    trace: &crate::runtime::trace_context::Trace,
    span_id: u64,
    (attempt, began): (u32, std::time::SystemTime),
    got: &Result<outbound::Exchanged, OutboundError>,
) {
    use crate::runtime::otlp::{Attr, Kind, Span, record};
    let (status, error) = match got {
        Ok(g) => (Attr::Int(i64::from(g.status)), g.status >= 400),
        Err(e) => match e.status() {
            Some(code) => (Attr::Int(i64::from(code)), true),
            None if matches!(e, OutboundError::Timeout(_) | OutboundError::Deadline) => {
                (Attr::Str("timeout".into()), true)
            }
            None => (Attr::Str("error".into()), true),
        },
    };
    record(Span {
        trace_id: trace.trace_id,
        span_id,
        parent: Some(trace.span_id),
        name: "POST sink".into(),
        kind: Kind::Client,
        start: began,
        end: std::time::SystemTime::now(),
        attributes: vec![
            (
                "server.origin",
                Attr::Str(sink.url.origin().ascii_serialization()),
            ),
            ("http.request.method", Attr::Str("POST".into())),
            ("http.response.status_code", status),
            ("fosps.attempt", Attr::Int(i64::from(attempt))),
        ],
        error,
    });
}

/// The JSON text of a Bundle of `mode` holding `entries`, written straight from the entries
/// (no Bundle value copied from them first).
fn bundle_bytes(mode: BundleMode, entries: &[&Value]) -> bytes::Bytes {
    let kind = match mode {
        BundleMode::Transaction => "transaction",
        BundleMode::Batch => "batch",
    };
    let mut out = Vec::with_capacity(256 * entries.len() + 64);
    out.extend_from_slice(b"{\"resourceType\":\"Bundle\",\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"entry\":[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing a `Value` into memory cannot fail.
        let _ = serde_json::to_writer(&mut out, e);
    }
    out.extend_from_slice(b"]}");
    bytes::Bytes::from(out)
}

/// What went wrong, as the continuation of "the server ...".
fn sink_text(e: &OutboundError) -> String {
    match e {
        OutboundError::Timeout(_)
        | OutboundError::Deadline
        | OutboundError::Connect
        | OutboundError::Send(_) => {
            format!("could not be reached: {e}")
        }
        OutboundError::Status { .. } | OutboundError::InBody(_) => e.to_string(),
        OutboundError::PastDeadline { last, .. } => sink_text(last),
        _ => format!("gave an unusable answer: {e}"),
    }
}

/// Distinct `Type` names of resources, for cache invalidation.
pub fn types_of(resources: &[Value]) -> HashSet<String> {
    resources
        .iter()
        .filter_map(|r| r["resourceType"].as_str().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referenced_resources_come_first() {
        let r = vec![
            json!({"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/p"}}),
            json!({"resourceType": "Composition", "id": "c", "entry": [{"reference": "Observation/o"}]}),
            json!({"resourceType": "Patient", "id": "p"}),
        ];
        let order: Vec<String> = reference_order(r).iter().map(|r| label(r, 0)).collect();
        assert_eq!(order, vec!["Patient/p", "Observation/o", "Composition/c"]);
        let twice = vec![
            json!({"resourceType": "Patient", "id": "p", "v": 1}),
            json!({"resourceType": "Patient", "id": "p", "v": 2}),
        ];
        assert_eq!(
            reference_order(twice),
            vec![json!({"resourceType": "Patient", "id": "p", "v": 2})]
        );
    }

    #[test]
    fn ndjson_repairs_a_torn_tail_and_appends_whole_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("Patient.ndjson");
        std::fs::write(
            &path,
            "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"resourceType\":\"Pat",
        )
        .expect("write");
        let report = write_ndjson(dir.path(), &[json!({"resourceType": "Patient", "id": "b"})]);
        assert_eq!(report.written, 1);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(
            text,
            "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"resourceType\":\"Patient\",\"id\":\"b\"}\n"
        );
    }

    #[test]
    fn entries_put_by_id_or_by_identifier() {
        let r = json!({"resourceType": "Library", "id": "x", "identifier": [{"system": "urn:s", "value": "v 1"}]});
        assert_eq!(
            entry(&r, 0, &WriteOptions::default()).expect("put"),
            json!({"method": "PUT", "url": "Library/x"})
        );
        let by_id = WriteOptions {
            identifier_system: Some("urn:s".into()),
            ..WriteOptions::default()
        };
        assert_eq!(
            entry(&r, 0, &by_id).expect("put"),
            json!({"method": "PUT", "url": "Library?identifier=urn%3As%7Cv+1"})
        );
        let no_id = json!({"resourceType": "Library"});
        assert!(entry(&no_id, 3, &WriteOptions::default()).is_err());
    }

    /// A write of two Patients cut short by a crash (one line and a torn one after the
    /// recorded length), tried again: the file is cut back and holds each line once; a write
    /// that was whole is not written again; one followed by another write is left alone.
    #[tokio::test]
    async fn ndjson_write_cut_short_is_cut_back_before_it_is_written_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("Patient.ndjson");
        let before = "{\"resourceType\":\"Patient\",\"id\":\"old\"}\n";
        let ours = vec![
            json!({"resourceType": "Patient", "id": "a"}),
            json!({"resourceType": "Patient", "id": "b"}),
        ];
        let writer = Writer::Ndjson {
            dir: dir.path().to_path_buf(),
        };
        let lines = || {
            std::fs::read_to_string(&path)
                .expect("read")
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let recorded = BTreeMap::from([("Patient.ndjson".to_owned(), before.len() as u64)]);
        let opts = WriteOptions::default();
        let want = vec![
            before.trim_end().to_owned(),
            "{\"resourceType\":\"Patient\",\"id\":\"a\"}".to_owned(),
            "{\"resourceType\":\"Patient\",\"id\":\"b\"}".to_owned(),
        ];

        // Cut mid-write: one whole line of ours and a torn one.
        std::fs::write(
            &path,
            format!("{before}{{\"resourceType\":\"Patient\",\"id\":\"a\"}}\n{{\"resourceTy"),
        )
        .expect("write");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let s = seen.clone();
        let report = writer
            .write_recorded(ours.clone(), &opts, Some(recorded.clone()), move |l| {
                *s.lock().expect("seen") = Some(l.clone());
                Ok(())
            })
            .await;
        assert!(report.failures.is_empty(), "{report:?}");
        assert_eq!(lines(), want);
        assert_eq!(
            seen.lock().expect("seen").clone(),
            Some(recorded.clone()),
            "the lengths before the write are recorded"
        );

        // Cut after the write was whole: not written again.
        let report = writer
            .write_recorded(ours.clone(), &opts, Some(recorded.clone()), |_| Ok(()))
            .await;
        assert_eq!(report.written, 2, "{report:?}");
        assert_eq!(lines(), want);

        // The record cannot be kept: nothing is written.
        let report = writer
            .write_recorded(ours, &opts, None, |_| {
                Err(StateError::Stopped("disk full".into()))
            })
            .await;
        assert!(report.failures.iter().all(|f| f.transient), "{report:?}");
        assert_eq!(lines(), want);
    }
}
