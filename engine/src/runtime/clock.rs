//! The one clock of the calendar: the current UTC time for what is about dates (cron
//! schedules, HMAC timestamp windows, deduplication windows, run reports, dead letters). In
//! production it reads the system; in tests it follows tokio's clock from a fixed start, so
//! that `tokio::time::pause` and `advance` move it too and cron tests never wait on the wall
//! clock. Durations (timeouts, TTLs, sleeps) are measured by `tokio::time` itself.

use chrono::{DateTime, TimeDelta, Utc};
use tokio::time::Instant;

/// Where the current UTC time comes from. Cheap to copy; every part of a built engine holds
/// the same one.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Source);

#[derive(Debug, Clone, Copy)]
enum Source {
    /// The system's wall clock.
    System,
    /// `start` at `at`, then as far as tokio's clock has moved since.
    Tokio { start: DateTime<Utc>, at: Instant },
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// A clock that reads `start` now and then moves with tokio's clock: paused, advanced or
    /// running. For tests.
    pub fn following_tokio(start: DateTime<Utc>) -> Clock {
        Clock(Source::Tokio {
            start,
            at: Instant::now(),
        })
    }

    /// The current time.
    pub fn now(&self) -> DateTime<Utc> {
        match self.0 {
            Source::System => Utc::now(),
            Source::Tokio { start, at } => TimeDelta::from_std(at.elapsed())
                .ok()
                .and_then(|d| start.checked_add_signed(d))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_test_clock_moves_with_paused_tokio_time_only() {
        let start = Utc
            .with_ymd_and_hms(2026, 3, 1, 12, 0, 0)
            .single()
            .expect("time");
        let clock = Clock::following_tokio(start);
        assert_eq!(clock.now(), start);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), start + TimeDelta::seconds(90));
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(clock.now(), start + TimeDelta::seconds(3690));
    }
}
