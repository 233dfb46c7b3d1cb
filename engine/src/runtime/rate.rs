//! A source's requests-per-second budget (`rate`): a token bucket shared by every route, run
//! and connector that calls the source, kept by source name across reloads (in
//! `runtime::metrics`, as the breaker is), on tokio's clock. A request waits for its token only
//! while the wait fits its deadline; otherwise it is refused at once, and takes no token.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::Rate;

/// No token before the request's deadline: the wait it would have needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no request left in the source's rate budget (`rate`) before the deadline; the next in {}", crate::runtime::outbound::humanize(*.0))]
pub struct RateLimited(pub Duration);

#[derive(Debug)]
struct Inner {
    settings: Rate,
    /// Tokens at `at`; below zero when waiters hold reservations.
    tokens: f64,
    at: Instant,
}

/// One source's token bucket.
#[derive(Debug)]
pub struct Bucket {
    inner: Mutex<Inner>,
}

impl Bucket {
    /// A full bucket.
    pub fn new(settings: Rate) -> Bucket {
        Bucket {
            inner: Mutex::new(Inner {
                settings,
                tokens: f64::from(settings.burst),
                at: Instant::now(),
            }),
        }
    }

    /// Takes new settings (a reload), keeping the tokens left (at most the new burst).
    pub fn set(&self, settings: Rate) {
        let mut i = lock(&self.inner);
        refill(&mut i, Instant::now());
        i.settings = settings;
        i.tokens = i.tokens.min(f64::from(settings.burst));
    }

    /// Takes a token: at once when the bucket has one, else after the wait for the next,
    /// when that wait ends by `end`. A wait that would pass `end` takes nothing and is refused
    /// at once. A token reserved for a waiter that is cancelled is spent.
    pub async fn take(&self, end: Instant) -> Result<(), RateLimited> {
        let ready = {
            let mut i = lock(&self.inner);
            let now = Instant::now();
            refill(&mut i, now);
            if i.tokens >= 1.0 {
                i.tokens -= 1.0;
                return Ok(());
            }
            let wait = Duration::from_secs_f64((1.0 - i.tokens) / i.settings.per_second);
            let ready = now + wait;
            if ready > end {
                return Err(RateLimited(wait));
            }
            i.tokens -= 1.0;
            ready
        };
        tokio::time::sleep_until(ready).await;
        Ok(())
    }
}

/// Adds the tokens earned since the last reading, up to the burst.
fn refill(i: &mut Inner, now: Instant) {
    let earned = now.saturating_duration_since(i.at).as_secs_f64() * i.settings.per_second;
    i.tokens = (i.tokens + earned).min(f64::from(i.settings.burst));
    i.at = now;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_goes_at_once_then_one_per_interval() {
        let b = Bucket::new(Rate {
            per_second: 4.0,
            burst: 3,
        });
        let start = Instant::now();
        for _ in 0..3 {
            b.take(far()).await.expect("a token of the burst");
        }
        assert_eq!(Instant::now(), start, "the burst waits for nothing");
        for n in 1..=4u32 {
            b.take(far()).await.expect("a token");
            assert_eq!(Instant::now() - start, Duration::from_millis(250) * n);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_takers_are_spread_over_the_rate() {
        let b = std::sync::Arc::new(Bucket::new(Rate {
            per_second: 10.0,
            burst: 2,
        }));
        let start = Instant::now();
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move {
                    b.take(far()).await.expect("a token");
                    Instant::now() - start
                })
            })
            .collect();
        let mut at = Vec::new();
        for t in tasks {
            at.push(t.await.expect("task"));
        }
        at.sort();
        assert_eq!(at.iter().filter(|d| d.is_zero()).count(), 2);
        assert_eq!(at[11], Duration::from_secs(1), "10 more at 10 a second");
        for (k, d) in at.iter().enumerate().skip(2) {
            assert_eq!(*d, Duration::from_millis(100) * (k as u32 - 1), "taker {k}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_the_deadline_is_refused_at_once_and_takes_nothing() {
        let b = Bucket::new(Rate {
            per_second: 1.0,
            burst: 1,
        });
        b.take(far()).await.expect("the burst");
        let start = Instant::now();
        let refused = b.take(start + Duration::from_millis(500)).await;
        assert_eq!(refused, Err(RateLimited(Duration::from_secs(1))));
        assert_eq!(Instant::now(), start, "refused without waiting");
        // The refusal took no token: the next one is still a second after the first.
        b.take(far()).await.expect("a token");
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn new_settings_keep_the_tokens_spent() {
        let b = Bucket::new(Rate {
            per_second: 1.0,
            burst: 5,
        });
        for _ in 0..5 {
            b.take(far()).await.expect("the burst");
        }
        b.set(Rate {
            per_second: 2.0,
            burst: 5,
        });
        let start = Instant::now();
        b.take(far()).await.expect("a token");
        assert_eq!(Instant::now() - start, Duration::from_millis(500));
    }
}
