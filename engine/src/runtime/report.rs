//! The report of a cron run: what it read, wrote and left unchanged, what it left out and why,
//! and every failure. Made by `run` and by guide imports; printed by `engine run`, logged by
//! schedules, answered by the admin API. `Progress` carries a run's counters while it goes,
//! for whoever shows them (`engine run` on a terminal).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub connector: String,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub records_read: usize,
    pub resources_written: usize,
    pub resources_unchanged: usize,
    /// Resources deleted at the sink because a bulk export listed them as deleted.
    pub resources_deleted: usize,
    /// HTTP calls to the source and to the sink.
    pub source_calls: usize,
    pub sink_calls: usize,
    pub sink_retries: usize,
    pub failures: Vec<Failure>,
    /// Files and resources read but deliberately not written, and why.
    pub skipped: Vec<Skipped>,
    /// Records put in the connector's dead letters (`run.onRecordError: skip`).
    pub records_dead_lettered: usize,
    /// What the run did not fail on but an operator should know (a watermark held back).
    pub warnings: Vec<String>,
    pub dry_run: bool,
}

/// Something a run read and did not write: a file, a resource or a resource type.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Skipped {
    pub subject: String,
    pub reason: String,
    pub count: usize,
}

impl Skipped {
    pub fn one(subject: &str, reason: &str) -> Skipped {
        Skipped {
            subject: subject.to_owned(),
            reason: reason.to_owned(),
            count: 1,
        }
    }
}

/// The stage of a run where a failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Reading the source, the guide or the run's state.
    Read,
    /// Mapping what was read to FHIR.
    Map,
    /// Writing to the sink, or saving the run's state.
    Write,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Read => "read",
            Stage::Map => "map",
            Stage::Write => "write",
        })
    }
}

/// One failure of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub stage: Stage,
    /// The resource or stream concerned.
    pub subject: String,
    pub message: String,
    /// The server's `OperationOutcome` for a rejected write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Value>,
}

impl RunReport {
    /// The report of a run of `connector` started at `started`, with nothing done yet.
    pub fn new(connector: &str, started: DateTime<Utc>, dry_run: bool) -> RunReport {
        RunReport {
            connector: connector.to_owned(),
            started,
            finished: started,
            records_read: 0,
            resources_written: 0,
            resources_unchanged: 0,
            source_calls: 0,
            sink_calls: 0,
            sink_retries: 0,
            failures: Vec::new(),
            skipped: Vec::new(),
            records_dead_lettered: 0,
            resources_deleted: 0,
            warnings: Vec::new(),
            dry_run,
        }
    }

    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Not started yet.
    #[default]
    Starting,
    /// Reading the source or the guide, and mapping.
    Reading,
    /// Writing to the sink.
    Writing,
    /// Over; the report is final.
    Done,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Starting => "starting",
            Phase::Reading => "reading",
            Phase::Writing => "writing",
            Phase::Done => "done",
        })
    }
}

/// A run's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct Counts {
    pub phase: Phase,
    /// Pages read: HTTP calls to the source.
    pub pages: usize,
    pub records: usize,
    pub written: usize,
    pub failures: usize,
}

/// A run's counters while it goes: the runner sends them at each step (each stream read, the
/// write, the end), and whoever shows the progress watches them. Sending costs nothing when
/// nobody watches.
#[derive(Debug)]
pub struct Progress {
    counts: watch::Sender<Counts>,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            counts: watch::Sender::new(Counts::default()),
        }
    }
}

impl Progress {
    /// Takes the counters of `report`, now in `phase`.
    pub fn observe(&self, phase: Phase, report: &RunReport) {
        let now = Counts {
            phase,
            pages: report.source_calls,
            records: report.records_read,
            written: report.resources_written,
            failures: report.failures.len(),
        };
        self.counts.send_if_modified(|c| {
            let changed = *c != now;
            *c = now;
            changed
        });
    }

    /// The counters as they are.
    pub fn counts(&self) -> Counts {
        *self.counts.borrow()
    }

    /// A receiver told of every change.
    pub fn watch(&self) -> watch::Receiver<Counts> {
        self.counts.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_follows_the_report_and_tells_its_watchers() {
        let progress = Progress::default();
        let mut seen = progress.watch();
        let mut report = RunReport::new("c", Utc::now(), false);
        report.source_calls = 3;
        report.records_read = 250;
        progress.observe(Phase::Reading, &report);
        assert!(seen.has_changed().unwrap_or(false));
        let c = *seen.borrow_and_update();
        assert_eq!(
            (c.phase, c.pages, c.records, c.written),
            (Phase::Reading, 3, 250, 0)
        );
        // The same counters again: nobody is woken.
        progress.observe(Phase::Reading, &report);
        assert!(!seen.has_changed().unwrap_or(true));
        report.resources_written = 240;
        report.failures.push(Failure {
            stage: Stage::Write,
            subject: "Patient/x".into(),
            message: "refused".into(),
            outcome: None,
        });
        progress.observe(Phase::Done, &report);
        assert_eq!(progress.counts().written, 240);
        assert_eq!(progress.counts().failures, 1);
        assert_eq!(progress.counts().phase, Phase::Done);
    }
}
