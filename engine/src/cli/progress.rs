//! The progress of `engine run` on standard error: on a terminal, a live line drawn by
//! `indicatif` (pages read, records, resources written, failures, records per second); when
//! standard error is not a terminal (a CronJob's log, a pipe), plain `progress:` lines, one
//! per step of the run, with no cursor movement or colour.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;

use crate::runtime::report::{Counts, Phase};

/// How the progress is shown.
enum Display {
    Live(ProgressBar),
    Lines,
}

/// Shows the counters of one run as they change, until `finish`.
pub(super) struct Shown {
    display: Display,
    started: Instant,
    connector: String,
}

impl Shown {
    /// Live when standard error is a terminal, plain lines otherwise.
    pub(super) fn new(connector: &str) -> Shown {
        let display = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {elapsed_precise} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(connector.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            Display::Live(bar)
        } else {
            Display::Lines
        };
        Shown {
            display,
            started: Instant::now(),
            connector: connector.to_owned(),
        }
    }

    /// Shows every change of `counts` until the run is done or its runner is dropped.
    pub(super) async fn follow(&self, mut counts: watch::Receiver<Counts>) {
        loop {
            let now = *counts.borrow_and_update();
            self.show(&now);
            if now.phase == Phase::Done || counts.changed().await.is_err() {
                return;
            }
        }
    }

    fn show(&self, c: &Counts) {
        if c.phase == Phase::Starting {
            return;
        }
        let text = describe(c, self.started.elapsed());
        match &self.display {
            Display::Live(bar) => bar.set_message(text),
            Display::Lines => eprintln!("progress: {}: {text}", self.connector),
        }
    }

    /// Clears the live line (the report follows it); plain lines stay as they are.
    pub(super) fn finish(self) {
        if let Display::Live(bar) = self.display {
            bar.finish_and_clear();
        }
    }
}

/// One line of counters: `reading: 3 pages, 250 records, 0 written, 0 failures, 125.0
/// records/s`.
pub(super) fn describe(c: &Counts, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        c.records as f64 / secs
    } else {
        0.0
    };
    format!(
        "{}: {} pages, {} records, {} written, {} failures, {rate:.1} records/s",
        c.phase, c.pages, c.records, c.written, c.failures
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_every_counter_and_the_rate() {
        let c = Counts {
            phase: Phase::Writing,
            pages: 3,
            records: 250,
            written: 240,
            failures: 1,
        };
        assert_eq!(
            describe(&c, Duration::from_secs(2)),
            "writing: 3 pages, 250 records, 240 written, 1 failures, 125.0 records/s"
        );
        assert!(describe(&c, Duration::ZERO).ends_with(" 0.0 records/s"));
    }
}
