//! Cron schedules: each connector's next run computed with croner in its own time zone (so
//! daylight-saving changes move the wall-clock time, not the schedule), runs that never
//! overlap (a tick that finds the last run still going is skipped and counted), and runs on
//! demand.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};
use tokio_util::task::TaskTracker;

use crate::model::Schedule;
use crate::runtime::run::{RunReport, Runner};

/// The next time a schedule fires after `after`.
pub fn next_after(schedule: &Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(&schedule.cron_with_seconds)
        .ok()?;
    let local = after.with_timezone(&schedule.time_zone);
    cron.find_next_occurrence(&local, false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A cron connector at run time.
pub struct CronJob {
    pub runner: Runner,
    pub schedule: Schedule,
    running: Mutex<()>,
    last: std::sync::Mutex<Option<RunReport>>,
    next: std::sync::Mutex<Option<DateTime<Utc>>>,
    skipped: AtomicU64,
}

impl CronJob {
    pub fn new(runner: Runner, schedule: Schedule) -> CronJob {
        CronJob {
            runner,
            schedule,
            running: Mutex::new(()),
            last: std::sync::Mutex::new(None),
            next: std::sync::Mutex::new(None),
            skipped: AtomicU64::new(0),
        }
    }

    /// Runs now unless a run is going; `None` (and a skip counted) when one is.
    pub async fn run_now(&self) -> Option<RunReport> {
        let Ok(_guard) = self.running.try_lock() else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(connector = %self.runner.connector.name, "run skipped: the last run is still going");
            return None;
        };
        tracing::info!(connector = %self.runner.connector.name, "run started");
        let (report, _) = self.runner.run(false).await;
        if report.ok() {
            tracing::info!(connector = %report.connector, read = report.records_read, written = report.resources_written, "run finished");
        } else {
            for f in &report.failures {
                tracing::error!(connector = %report.connector, stage = f.stage, subject = %f.subject, "run failure: {}", f.message);
            }
        }
        if let Ok(mut last) = self.last.lock() {
            *last = Some(report.clone());
        }
        Some(report)
    }

    pub fn is_running(&self) -> bool {
        self.running.try_lock().is_err()
    }

    /// Last run, next run, and skipped ticks, for the admin API.
    pub fn status(&self) -> Value {
        json!({
            "schedule": self.schedule.cron,
            "timeZone": self.schedule.time_zone.name(),
            "running": self.is_running(),
            "lastRun": self.last.lock().ok().and_then(|l| l.clone()),
            "nextRun": self.next.lock().ok().and_then(|n| *n),
            "skippedTicks": self.skipped.load(Ordering::Relaxed),
        })
    }

    /// Fires the schedule until `stop` turns true. Runs are spawned on `tasks`, so that a
    /// shutdown lets them finish, and a long run does not delay the next tick, which is then
    /// skipped.
    pub async fn schedule(self: Arc<Self>, mut stop: watch::Receiver<bool>, tasks: TaskTracker) {
        loop {
            let now = Utc::now();
            let Some(next) = next_after(&self.schedule, now) else {
                tracing::error!(connector = %self.runner.connector.name, "the schedule has no next run");
                return;
            };
            if let Ok(mut n) = self.next.lock() {
                *n = Some(next);
            }
            let wait = (next - now).to_std().unwrap_or_default();
            let ticked = tokio::select! {
                () = tokio::time::sleep(wait) => true,
                _ = stop.wait_for(|s| *s) => false,
            };
            if !ticked || *stop.borrow() {
                return;
            }
            let job = self.clone();
            tasks.spawn(async move {
                job.run_now().await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn schedule(cron: &str, tz: chrono_tz::Tz) -> Schedule {
        Schedule {
            cron: cron.into(),
            cron_with_seconds: format!("0 {cron}"),
            time_zone: tz,
        }
    }

    #[test]
    fn next_runs_follow_the_time_zone_across_daylight_saving() {
        let s = schedule("0 2 * * *", chrono_tz::Europe::Madrid);
        // Winter: 02:00 in Madrid is 01:00 UTC.
        let winter = Utc
            .with_ymd_and_hms(2026, 1, 10, 12, 0, 0)
            .single()
            .expect("time");
        assert_eq!(
            next_after(&s, winter),
            Utc.with_ymd_and_hms(2026, 1, 11, 1, 0, 0).single()
        );
        // Summer: 02:00 in Madrid is 00:00 UTC.
        let summer = Utc
            .with_ymd_and_hms(2026, 7, 10, 12, 0, 0)
            .single()
            .expect("time");
        assert_eq!(
            next_after(&s, summer),
            Utc.with_ymd_and_hms(2026, 7, 11, 0, 0, 0).single()
        );
    }

    #[test]
    fn seconds_fields_are_honoured() {
        let s = Schedule {
            cron: "*/15 * * * * *".into(),
            cron_with_seconds: "*/15 * * * * *".into(),
            time_zone: chrono_tz::UTC,
        };
        let t = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 7)
            .single()
            .expect("time");
        assert_eq!(
            next_after(&s, t),
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 15).single()
        );
    }
}
