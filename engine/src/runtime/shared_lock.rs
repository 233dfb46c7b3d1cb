//! Locks in the shared tier (Redis) for schedules: the claim of a connector's tick, so that
//! with several replicas each tick runs once across them (`SET NX PX`, keyed by connector and
//! tick time, expiring after the time to the next tick).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::runtime::metrics::Metrics;
use crate::runtime::shared_cache::SharedTier;

/// The claim of schedule ticks across replicas.
pub struct TickClaim {
    tier: SharedTier,
    metrics: Arc<Metrics>,
}

impl TickClaim {
    /// The claim of schedule ticks on `tier`, each run once across the replicas sharing it.
    pub fn new(tier: SharedTier, metrics: Arc<Metrics>) -> TickClaim {
        TickClaim { tier, metrics }
    }

    /// Whether this replica runs connector `connector`'s tick `tick`: the first replica to
    /// claim it does; the claim expires after `hold` (the time to the next tick). When Redis
    /// is away the tick runs here (a run twice is better than none; the sinks' writes are
    /// keyed by resource id).
    pub async fn claim(&self, connector: &str, tick: DateTime<Utc>, hold: Duration) -> bool {
        let key = format!("fosps:v1:tick:{connector}:{}", tick.timestamp_millis());
        let token = self.tier.token().to_owned();
        let hold_ms = hold.as_millis().clamp(1000, 86_400_000) as u64;
        let claimed: Option<Option<String>> = self
            .tier
            .call(|mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(hold_ms)
                    .query_async(&mut c)
                    .await
            })
            .await;
        let outcome = match claimed {
            Some(Some(_)) => "tick_claimed",
            Some(None) => "tick_taken",
            None => "tick_unclaimed",
        };
        self.metrics.shared_cache(connector, outcome);
        match claimed {
            Some(None) => {
                tracing::info!(connector = %connector, "tick run by another replica");
                false
            }
            Some(Some(_)) => true,
            None => {
                tracing::warn!(connector = %connector, "the shared tier is away: this tick runs here without a claim");
                true
            }
        }
    }
}
