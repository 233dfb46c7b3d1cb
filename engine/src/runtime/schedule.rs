//! Cron schedules: each connector's next run computed with croner in its own time zone (so
//! daylight-saving changes move the wall-clock time, not the schedule), runs that never
//! overlap (a tick that finds the last run still going is skipped and counted), and runs on
//! demand. With the shared tier set, each tick is claimed first, so it runs in one replica.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};
use tokio_util::task::TaskTracker;

use crate::model::Schedule;
use crate::runtime::clock::Clock;
use crate::runtime::run::{RunReport, Runner};
use crate::runtime::shared_lock::TickClaim;

/// The next time a schedule fires after `after`.
pub fn next_after(schedule: &Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let local = after.with_timezone(&schedule.time_zone);
    schedule
        .parsed
        .find_next_occurrence(&local, false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// What a schedule runs: a cron connector's runner (a stand-in in the tests below).
pub trait Job: Send + Sync + 'static {
    /// The connector's name, for logs.
    fn name(&self) -> &str;
    /// One run that writes (never a dry run).
    fn run_once(&self) -> impl Future<Output = RunReport> + Send;
}

impl Job for Runner {
    fn name(&self) -> &str {
        &self.connector.name
    }

    async fn run_once(&self) -> RunReport {
        self.run(false).await.0
    }
}

/// A cron connector's turn to run: no other run starts while it is held.
pub struct Turn {
    _held: tokio::sync::OwnedMutexGuard<()>,
}

/// A cron connector at run time.
pub struct CronJob<J = Runner> {
    pub runner: J,
    pub schedule: Schedule,
    clock: Clock,
    running: Arc<Mutex<()>>,
    last: std::sync::Mutex<Option<RunReport>>,
    next: std::sync::Mutex<Option<DateTime<Utc>>>,
    skipped: AtomicU64,
    /// With replicas sharing a tier: the claim that makes each tick run in one of them.
    once: Option<TickClaim>,
}

impl<J: Job> CronJob<J> {
    /// A job whose schedule reads the time from `clock`.
    pub fn new(runner: J, schedule: Schedule, clock: Clock) -> CronJob<J> {
        CronJob {
            runner,
            schedule,
            clock,
            running: Arc::new(Mutex::new(())),
            last: std::sync::Mutex::new(None),
            next: std::sync::Mutex::new(None),
            skipped: AtomicU64::new(0),
            once: None,
        }
    }

    /// This job with its ticks claimed in the shared tier, so that each runs once across the
    /// replicas (runs on demand are not claimed).
    pub fn once_across_replicas(mut self, claim: TickClaim) -> CronJob<J> {
        self.once = Some(claim);
        self
    }

    /// Runs now unless a run is going; `None` (and a skip counted) when one is.
    pub async fn run_now(&self) -> Option<RunReport> {
        let Some(turn) = self.turn() else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(connector = %self.runner.name(), "run skipped: the last run is still going");
            return None;
        };
        Some(self.run_in(turn).await)
    }

    /// The turn to run, unless a run is going: taken at once, so that a run asked for
    /// (`POST /connectors/{name}/run`) holds it before its answer, and a second request
    /// meanwhile is refused rather than told "started" and then skipped.
    pub fn turn(&self) -> Option<Turn> {
        self.running
            .clone()
            .try_lock_owned()
            .ok()
            .map(|held| Turn { _held: held })
    }

    /// Runs in the turn taken by `turn`.
    pub async fn run_in(&self, turn: Turn) -> RunReport {
        let _turn = turn;
        tracing::info!(connector = %self.runner.name(), "run started");
        let report = self.runner.run_once().await;
        if report.ok() {
            tracing::info!(connector = %report.connector, read = report.records_read, written = report.resources_written, "run finished");
        } else {
            for f in &report.failures {
                tracing::error!(connector = %report.connector, stage = %f.stage, subject = %f.subject, "run failure: {}", f.message);
            }
        }
        if let Ok(mut last) = self.last.lock() {
            *last = Some(report.clone());
        }
        report
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

    /// Fires the schedule until `stop` turns true: the next run is computed from the job's
    /// clock and waited for on tokio's timers. Runs are spawned on `tasks`, so that a shutdown
    /// lets them finish, and a long run does not delay the next tick, which is then skipped.
    pub async fn schedule(self: Arc<Self>, mut stop: watch::Receiver<bool>, tasks: TaskTracker) {
        let mut fired: Option<DateTime<Utc>> = None;
        loop {
            let now = self.clock.now();
            // Never the same tick twice, even when the wall clock lags the timer a little.
            let after = fired.map_or(now, |f| f.max(now));
            let Some(next) = next_after(&self.schedule, after) else {
                tracing::error!(connector = %self.runner.name(), "the schedule has no next run");
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
            fired = Some(next);
            let job = self.clone();
            // The claim lasts until the tick after this one.
            let hold = next_after(&self.schedule, next)
                .and_then(|after| (after - next).to_std().ok())
                .unwrap_or_default();
            tasks.spawn(async move {
                if let Some(once) = &job.once
                    && !once.claim(job.runner.name(), next, hold).await
                {
                    return;
                }
                job.run_now().await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// A schedule as validation makes it (seconds first; `seconds` prepended to 5 fields).
    fn schedule(cron: &str, tz: chrono_tz::Tz) -> Schedule {
        let with_seconds = match cron.split_whitespace().count() {
            5 => format!("0 {cron}"),
            _ => cron.to_owned(),
        };
        Schedule {
            cron: cron.into(),
            parsed: Schedule::parse_cron(&with_seconds).expect("a valid cron"),
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
        let s = schedule("*/15 * * * * *", chrono_tz::UTC);
        let t = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 7)
            .single()
            .expect("time");
        assert_eq!(
            next_after(&s, t),
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 15).single()
        );
    }

    /// A job that takes `takes` (of tokio's time) per run, counting runs and runs at once.
    struct Sleeper {
        takes: std::time::Duration,
        runs: AtomicU64,
        going: AtomicU64,
        most_at_once: AtomicU64,
    }

    impl Sleeper {
        fn taking(secs: u64) -> Sleeper {
            Sleeper {
                takes: std::time::Duration::from_secs(secs),
                runs: AtomicU64::new(0),
                going: AtomicU64::new(0),
                most_at_once: AtomicU64::new(0),
            }
        }
    }

    impl Job for Sleeper {
        fn name(&self) -> &str {
            "sleeper"
        }

        async fn run_once(&self) -> RunReport {
            self.runs.fetch_add(1, Ordering::SeqCst);
            let now = self.going.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_at_once.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.takes).await;
            self.going.fetch_sub(1, Ordering::SeqCst);
            let t = Utc.timestamp_opt(0, 0).single().expect("time");
            RunReport::new("sleeper", t, false)
        }
    }

    /// Every 5 s from 2026-01-01T00:00:00Z on the clock that follows tokio's paused time, the
    /// job's runs each taking `takes` seconds; the schedule stops (and its runs end) after
    /// `for_secs` of tokio's time.
    async fn scheduled(takes: u64, for_secs: f64) -> (Arc<CronJob<Sleeper>>, DateTime<Utc>) {
        let start = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("time");
        let every_5s = schedule("*/5 * * * * *", chrono_tz::UTC);
        let job = Arc::new(CronJob::new(
            Sleeper::taking(takes),
            every_5s,
            Clock::following_tokio(start),
        ));
        let tasks = TaskTracker::new();
        let (stop, stopped) = watch::channel(false);
        tasks.spawn(job.clone().schedule(stopped, tasks.clone()));
        tokio::time::sleep(std::time::Duration::from_secs_f64(for_secs)).await;
        let _ = stop.send(true);
        tasks.close();
        tokio::time::timeout(std::time::Duration::from_secs(60), tasks.wait())
            .await
            .expect("the schedule and its runs end");
        (job, start)
    }

    #[tokio::test(start_paused = true)]
    async fn a_schedule_runs_once_per_period_of_paused_time() {
        // 12 periods and a half: runs at 5 s, 10 s, ... 60 s, each over after 1 s.
        let (job, start) = scheduled(1, 62.5).await;
        assert_eq!(job.runner.runs.load(Ordering::SeqCst), 12);
        assert_eq!(job.runner.most_at_once.load(Ordering::SeqCst), 1);
        let status = job.status();
        assert_eq!(status["skippedTicks"], 0, "{status}");
        assert!(status["lastRun"].is_object(), "{status}");
        assert_eq!(
            status["nextRun"],
            json!(start + chrono::TimeDelta::seconds(65)),
            "the next run is read from the clock that follows tokio's time: {status}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_longer_than_the_period_skips_ticks_instead_of_overlapping() {
        // Runs of 12 s every 5 s: a run at 5 s (to 17 s), ticks at 10 s and 15 s skipped, a
        // run at 20 s (to 32 s), ticks at 25 s and 30 s skipped.
        let (job, _) = scheduled(12, 32.5).await;
        assert_eq!(job.runner.runs.load(Ordering::SeqCst), 2);
        assert_eq!(job.runner.most_at_once.load(Ordering::SeqCst), 1);
        assert_eq!(job.status()["skippedTicks"], 4, "{}", job.status());
    }
}
