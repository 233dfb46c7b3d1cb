//! A source's circuit breaker: failed calls in a row open it, calls fail at once while it is
//! open, and after its cool-down one probe call closes it again or re-opens it. Kept by
//! source name across reloads (in `runtime::metrics`), on tokio's clock.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::BreakerSettings;
use crate::runtime::outbound::humanize;

/// Where a breaker stands: closed (calls go), open (calls fail at once) or half-open (one
/// probe call goes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The value of `engine_source_breaker_state`: 0 closed, 1 open, 2 half-open.
    pub fn code(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "halfOpen",
        }
    }
}

/// Why a call was not sent: the breaker is open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("not called: its circuit breaker is open after {failures} failed calls in a row; next probe in {}", humanize(*retry_in))]
    Open { failures: u32, retry_in: Duration },
    #[error("not called: its circuit breaker is half-open and a probe call is under way")]
    Probing,
}

#[derive(Debug, Default)]
struct Inner {
    /// Failed calls in a row.
    failures: u32,
    /// When open (or half-open): when the next probe may go.
    open_until: Option<Instant>,
    probing: bool,
    opens: u64,
}

/// One source's breaker.
#[derive(Debug)]
pub struct Breaker {
    settings: Mutex<BreakerSettings>,
    inner: Mutex<Inner>,
}

/// What a breaker shows: its state, failed calls in a row, and times it opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerView {
    pub state: BreakerState,
    pub failures: u32,
    pub opens: u64,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            settings: Mutex::new(settings),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Takes new settings (a reload), keeping the state.
    pub fn set(&self, settings: BreakerSettings) {
        *lock(&self.settings) = settings;
    }

    fn settings(&self) -> BreakerSettings {
        *lock(&self.settings)
    }

    /// Lets a call go (the probe, when the cool-down has passed), or refuses it at once.
    pub fn admit(&self) -> Result<Ticket<'_>, Refused> {
        let mut i = lock(&self.inner);
        let Some(until) = i.open_until else {
            return Ok(Ticket::new(self, false, i.failures > 0));
        };
        let now = Instant::now();
        if now < until {
            return Err(Refused::Open {
                failures: i.failures,
                retry_in: until - now,
            });
        }
        if i.probing {
            return Err(Refused::Probing);
        }
        i.probing = true;
        Ok(Ticket::new(self, true, true))
    }

    /// The state now: open until the cool-down has passed, then half-open.
    pub fn view(&self) -> BreakerView {
        let i = lock(&self.inner);
        let state = match i.open_until {
            None => BreakerState::Closed,
            Some(until) if Instant::now() < until && !i.probing => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        };
        BreakerView {
            state,
            failures: i.failures,
            opens: i.opens,
        }
    }

    fn succeeded(&self) {
        let mut i = lock(&self.inner);
        i.failures = 0;
        i.open_until = None;
        i.probing = false;
    }

    fn failed(&self, probe: bool) {
        let settings = self.settings();
        let mut i = lock(&self.inner);
        i.failures = i.failures.saturating_add(1);
        if probe {
            i.probing = false;
        }
        let opens = probe || (i.open_until.is_none() && i.failures >= settings.failures);
        if opens {
            i.open_until = Some(Instant::now() + settings.cool_down);
            i.opens += 1;
            tracing::warn!(
                failures = i.failures,
                cool_down_ms = settings.cool_down.as_millis() as u64,
                "source circuit breaker opened"
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A call the breaker let go; it reports how the call ended. Dropped without a report (the
/// call was cancelled, or ended in a way that says nothing of the source), it frees the probe
/// slot and changes nothing else.
#[derive(Debug)]
pub struct Ticket<'a> {
    breaker: &'a Breaker,
    probe: bool,
    /// The breaker had counted failures when the call went.
    pub failing: bool,
    done: bool,
}

impl<'a> Ticket<'a> {
    fn new(breaker: &'a Breaker, probe: bool, failing: bool) -> Ticket<'a> {
        Ticket {
            breaker,
            probe,
            failing,
            done: false,
        }
    }

    /// The source answered (whatever the status, but 5xx and 429).
    pub fn succeeded(mut self) {
        self.done = true;
        self.breaker.succeeded();
    }

    /// The source failed: a timeout, a connection failure, a broken answer, 5xx or 429.
    pub fn failed(mut self) {
        self.done = true;
        self.breaker.failed(self.probe);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.probe && !self.done {
            lock(&self.breaker.inner).probing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings {
            failures: 2,
            cool_down: Duration::from_secs(10),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_probes_after_cool_down_and_closes() {
        let b = breaker();
        b.admit().expect("closed").failed();
        assert_eq!(b.view().state, BreakerState::Closed);
        b.admit().expect("closed").failed();
        assert_eq!(b.view().state, BreakerState::Open);
        assert!(matches!(b.admit(), Err(Refused::Open { failures: 2, .. })));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.view().state, BreakerState::HalfOpen);
        let probe = b.admit().expect("the probe");
        assert_eq!(b.admit().err(), Some(Refused::Probing));
        probe.failed();
        assert_eq!(b.view().state, BreakerState::Open);
        assert_eq!(b.view().opens, 2);
        tokio::time::advance(Duration::from_secs(10)).await;
        b.admit().expect("the probe").succeeded();
        assert_eq!(b.view().state, BreakerState::Closed);
        assert_eq!(b.view().failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_frees_the_slot() {
        let b = breaker();
        b.admit().expect("closed").failed();
        b.admit().expect("closed").failed();
        tokio::time::advance(Duration::from_secs(11)).await;
        drop(b.admit().expect("the probe"));
        assert!(b.admit().is_ok(), "another probe may go");
    }
}
