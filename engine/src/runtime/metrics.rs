//! Prometheus metrics over `prometheus-client`: counters and latency histograms with typed
//! label sets, and the sizes read at scrape time, rendered in the text exposition format at
//! `/metrics`. Every metric's name, help and labels are declared here. The sources' circuit
//! breakers and rate budgets are kept here too, by source name, since metrics outlive
//! reloads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::prometheus_text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

use crate::model::{BreakerSettings, Rate};
use crate::runtime::breaker::{Breaker, BreakerView};
use crate::runtime::cache::Stats;
use crate::runtime::rate::Bucket;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectorLabel {
    connector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    connector: String,
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    #[prometheus(flatten)]
    route: RouteLabels,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpanLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    connector: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnswerLabels {
    source: String,
    outcome: Answer,
}

/// How a source answered a call: its status, or no answer in time, or none at all.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Answer {
    Status(u16),
    Timeout,
    Error,
}

impl EncodeLabelValue for Answer {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        match self {
            Answer::Status(s) => s.encode(encoder),
            Answer::Timeout => "timeout".encode(encoder),
            Answer::Error => "error".encode(encoder),
        }
    }
}

type Latency<S> = Family<S, Histogram, fn() -> Histogram>;

/// The statuses whose request counters a `RouteMetrics` keeps resolved; a request answered
/// with another status looks its counter up by labels.
const STATUSES: [u16; 17] = [
    200, 202, 204, 304, 400, 401, 403, 404, 405, 413, 414, 429, 431, 500, 502, 503, 504,
];

/// The request metrics of one route of one connector, resolved once (per router) so that
/// counting a request takes no label hashing, lookup, allocation or formatting: each series is
/// still made on its first request, so `/metrics` shows only the series that were used.
pub struct RouteMetrics {
    labels: RouteLabels,
    requests: Family<StatusLabels, Counter>,
    seconds: Latency<RouteLabels>,
    histogram: OnceLock<Histogram>,
    by_status: [OnceLock<Counter>; STATUSES.len()],
}

impl RouteMetrics {
    /// The connector (empty for routes of none) and the kind of route.
    pub fn names(&self) -> (&str, &'static str) {
        (&self.labels.connector, self.labels.route)
    }

    /// An HTTP request of this route answered with `status` after `took`.
    pub fn request(&self, status: u16, took: Duration) {
        self.histogram
            .get_or_init(|| self.seconds.get_or_create(&self.labels).clone())
            .observe(took.as_secs_f64());
        let labels = || StatusLabels {
            route: self.labels.clone(),
            status,
        };
        match STATUSES.iter().position(|s| *s == status) {
            Some(i) => self.by_status[i]
                .get_or_init(|| self.requests.get_or_create(&labels()).clone())
                .inc(),
            None => self.requests.get_or_create(&labels()).inc(),
        };
    }
}

fn latency<S: Clone + std::hash::Hash + Eq>() -> Latency<S> {
    Family::new_with_constructor(|| Histogram::new(BUCKETS))
}

/// Registers `metric` (the registry appends a full stop to the help text, and `_total` to the
/// names of counters) and gives it back.
fn add<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

/// The engine's metrics (one per process, kept across reloads).
pub struct Metrics {
    registry: Registry,
    requests: Family<StatusLabels, Counter>,
    request_seconds: Latency<RouteLabels>,
    upstream_requests: Family<AnswerLabels, Counter>,
    upstream_seconds: Latency<SourceLabel>,
    runs: Family<OutcomeLabels, Counter>,
    records_read: Family<ConnectorLabel, Counter>,
    resources_written: Family<ConnectorLabel, Counter>,
    write_failures: Family<ConnectorLabel, Counter>,
    sink_retries: Family<ConnectorLabel, Counter>,
    records_dead_lettered: Family<ConnectorLabel, Counter>,
    push_sink_retries: Family<ConnectorLabel, Counter>,
    dead_letter_replays: Family<OutcomeLabels, Counter>,
    dead_letter_deletions: Family<ConnectorLabel, Counter>,
    push_deliveries: Family<OutcomeLabels, Counter>,
    push_queue_commits: Family<ConnectorLabel, Counter>,
    push_queue_committed: Family<ConnectorLabel, Counter>,
    push_queue_damaged: Family<ConnectorLabel, Counter>,
    fhir_invalid: Family<OutcomeLabels, Counter>,
    shared_cache: Family<OutcomeLabels, Counter>,
    breakers: Mutex<BTreeMap<String, Arc<Breaker>>>,
    /// Sources' rate budgets, by name, kept across reloads as the breakers are.
    rates: Mutex<BTreeMap<String, Arc<Bucket>>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut r = Registry::default();
        Metrics {
            requests: add(
                &mut r,
                "engine_requests",
                "HTTP requests answered",
                Family::default(),
            ),
            request_seconds: add(
                &mut r,
                "engine_request_duration_seconds",
                "Time to answer HTTP requests",
                latency(),
            ),
            upstream_requests: add(
                &mut r,
                "engine_upstream_requests",
                "Calls to sources, by answer status (or timeout, error)",
                Family::default(),
            ),
            upstream_seconds: add(
                &mut r,
                "engine_upstream_duration_seconds",
                "Time sources took to answer",
                latency(),
            ),
            runs: add(
                &mut r,
                "engine_runs",
                "Cron runs, by outcome",
                Family::default(),
            ),
            records_read: add(
                &mut r,
                "engine_records_read",
                "Records read by cron runs",
                Family::default(),
            ),
            resources_written: add(
                &mut r,
                "engine_resources_written",
                "Resources written to sinks",
                Family::default(),
            ),
            write_failures: add(
                &mut r,
                "engine_write_failures",
                "Failures of cron runs",
                Family::default(),
            ),
            sink_retries: add(
                &mut r,
                "engine_sink_retries",
                "Retried writes to sinks",
                Family::default(),
            ),
            records_dead_lettered: add(
                &mut r,
                "engine_records_dead_lettered",
                "Records cron runs skipped to the dead letters (`run.onRecordError: skip`)",
                Family::default(),
            ),
            push_sink_retries: add(
                &mut r,
                "engine_push_sink_retries",
                "Retried writes of push connectors",
                Family::default(),
            ),
            dead_letter_replays: add(
                &mut r,
                "engine_dead_letter_replays",
                "Dead letters replayed by an operator, by outcome: `written` (and removed), `kept` (not written: kept with the new reason)",
                Family::default(),
            ),
            dead_letter_deletions: add(
                &mut r,
                "engine_dead_letter_deletions",
                "Dead letters deleted by an operator",
                Family::default(),
            ),
            push_deliveries: add(
                &mut r,
                "engine_push_deliveries",
                "Push deliveries, by outcome",
                Family::default(),
            ),
            push_queue_commits: add(
                &mut r,
                "engine_push_queue_commits",
                "Group commits of push queues: one write and flush of the queue segment for the payloads that arrived together",
                Family::default(),
            ),
            push_queue_committed: add(
                &mut r,
                "engine_push_queue_committed",
                "Payloads queued by the group commits of push queues",
                Family::default(),
            ),
            push_queue_damaged: add(
                &mut r,
                "engine_push_queue_damaged",
                "Damaged records (a wrong checksum or length) found in push queue segments at open, each moved to the dead letters with its bytes",
                Family::default(),
            ),
            fhir_invalid: add(
                &mut r,
                "engine_fhir_invalid_resources",
                "Resources invalid for their connector's FHIR version, by what became of them (`written` under `validation: warn`, `refused` under `strict`)",
                Family::default(),
            ),
            shared_cache: add(
                &mut r,
                "engine_shared_cache_operations",
                "Work of the shared cache tier (Redis), by outcome: `hit`, `waited` (another replica's fill read), `filled` (this replica called the source), `unavailable` (Redis away or no answer landed: the source called without it), `unreadable`, and schedule ticks `tick_claimed`, `tick_taken` (run by another replica), `tick_unclaimed` (run here with Redis away)",
                Family::default(),
            ),
            breakers: Mutex::default(),
            rates: Mutex::default(),
            registry: r,
        }
    }
}

impl Metrics {
    /// The request metrics of a route (`route` the kind of route, `connector` empty for
    /// routes of no connector), to be resolved once and counted into per request.
    pub fn route(&self, connector: &str, route: &'static str) -> RouteMetrics {
        RouteMetrics {
            labels: RouteLabels {
                connector: connector.to_owned(),
                route,
            },
            requests: self.requests.clone(),
            seconds: self.request_seconds.clone(),
            histogram: OnceLock::new(),
            by_status: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// An HTTP request answered (looked up by labels: `route` gives the resolved handle).
    pub fn request(&self, connector: &str, route: &'static str, status: u16, took: Duration) {
        self.route(connector, route).request(status, took);
    }

    /// A call to a source.
    pub fn upstream(&self, source: &str, answer: Answer, took: Duration) {
        let source = SourceLabel {
            source: source.to_owned(),
        };
        self.upstream_seconds
            .get_or_create(&source)
            .observe(took.as_secs_f64());
        let labels = AnswerLabels {
            source: source.source,
            outcome: answer,
        };
        self.upstream_requests.get_or_create(&labels).inc();
    }

    /// Work of the shared cache tier for `connector`.
    pub fn shared_cache(&self, connector: &str, outcome: &'static str) {
        self.shared_cache
            .get_or_create(&OutcomeLabels {
                connector: connector.to_owned(),
                outcome,
            })
            .inc();
    }

    /// A finished cron run and its counts.
    pub fn run(
        &self,
        connector: &str,
        ok: bool,
        read: usize,
        written: usize,
        failures: usize,
        retries: usize,
    ) {
        let outcome = if ok { "success" } else { "failure" };
        let labels = OutcomeLabels {
            connector: connector.to_owned(),
            outcome,
        };
        self.runs.get_or_create(&labels).inc();
        let c = ConnectorLabel {
            connector: labels.connector,
        };
        for (family, n) in [
            (&self.records_read, read),
            (&self.resources_written, written),
            (&self.write_failures, failures),
            (&self.sink_retries, retries),
        ] {
            family.get_or_create(&c).inc_by(n as u64);
        }
    }

    /// Records a cron run skipped to its dead letters.
    pub fn dead_lettered(&self, connector: &str, n: usize) {
        self.records_dead_lettered
            .get_or_create(&ConnectorLabel {
                connector: connector.to_owned(),
            })
            .inc_by(n as u64);
    }

    /// Resources invalid for their FHIR version: `written` (warn) or `refused` (strict).
    pub fn fhir_invalid(&self, connector: &str, outcome: &'static str, n: usize) {
        if n == 0 {
            return;
        }
        let labels = OutcomeLabels {
            connector: connector.to_owned(),
            outcome,
        };
        self.fhir_invalid.get_or_create(&labels).inc_by(n as u64);
    }

    /// A dead letter replayed: `written` or `kept`.
    pub fn dead_letter_replay(&self, connector: &str, outcome: &'static str) {
        let labels = OutcomeLabels {
            connector: connector.to_owned(),
            outcome,
        };
        self.dead_letter_replays.get_or_create(&labels).inc();
    }

    /// A dead letter deleted.
    pub fn dead_letter_deletion(&self, connector: &str) {
        let c = ConnectorLabel {
            connector: connector.to_owned(),
        };
        self.dead_letter_deletions.get_or_create(&c).inc();
    }

    /// A push delivery and its outcome.
    pub fn push_delivery(&self, connector: &str, outcome: &'static str) {
        let labels = OutcomeLabels {
            connector: connector.to_owned(),
            outcome,
        };
        self.push_deliveries.get_or_create(&labels).inc();
    }

    /// A group commit of a push queue, of `payloads` payloads.
    pub fn push_queue_commit(&self, connector: &str, payloads: usize) {
        let c = ConnectorLabel {
            connector: connector.to_owned(),
        };
        self.push_queue_commits.get_or_create(&c).inc();
        self.push_queue_committed
            .get_or_create(&c)
            .inc_by(payloads as u64);
    }

    /// A damaged record of a push queue's segment, moved to the dead letters.
    pub fn push_queue_damaged(&self, connector: &str) {
        let c = ConnectorLabel {
            connector: connector.to_owned(),
        };
        self.push_queue_damaged.get_or_create(&c).inc();
    }

    /// Retried writes of one push delivery.
    pub fn push_sink_retries(&self, connector: &str, retries: usize) {
        let c = ConnectorLabel {
            connector: connector.to_owned(),
        };
        self.push_sink_retries
            .get_or_create(&c)
            .inc_by(retries as u64);
    }

    /// The circuit breaker of source `source`, made with `settings` the first time, kept (with
    /// the new settings) across reloads.
    pub fn breaker(&self, source: &str, settings: BreakerSettings) -> Arc<Breaker> {
        let mut all = self
            .breakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let b = all
            .entry(source.to_owned())
            .or_insert_with(|| Arc::new(Breaker::new(settings)));
        b.set(settings);
        b.clone()
    }

    /// The rate budget of source `source`, made full with `settings` the first time, kept
    /// (with the new settings and the tokens it had) across reloads.
    pub fn rate(&self, source: &str, settings: Rate) -> Arc<Bucket> {
        let mut all = self
            .rates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let b = all
            .entry(source.to_owned())
            .or_insert_with(|| Arc::new(Bucket::new(settings)));
        b.set(settings);
        b.clone()
    }

    /// What the breaker of source `source` shows, if it has one.
    pub fn breaker_view(&self, source: &str) -> Option<BreakerView> {
        let all = self
            .breakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        all.get(source).map(|b| b.view())
    }

    /// The exposition text, with the sizes read at scrape time: each cached connector's cache,
    /// each push connector's queue and dead letters (waiting, dead), and each cron
    /// connector's dead letters.
    pub fn render<'a>(
        &self,
        caches: impl IntoIterator<Item = (&'a str, Stats)>,
        queues: impl IntoIterator<Item = (&'a str, (usize, usize))>,
        cron_dead: impl IntoIterator<Item = (&'a str, usize)>,
    ) -> String {
        let mut r = Registry::default();
        let gauges = Family::<ConnectorLabel, Gauge>::default;
        let counters = Family::<ConnectorLabel, Counter>::default;
        let entries = add(
            &mut r,
            "engine_cache_entries",
            "Answers in the cache",
            gauges(),
        );
        let bytes = add(
            &mut r,
            "engine_cache_bytes",
            "Weight of the cache in bytes",
            gauges(),
        );
        let hits = add(
            &mut r,
            "engine_cache_hits",
            "Answers served fresh from the cache",
            counters(),
        );
        let misses = add(
            &mut r,
            "engine_cache_misses",
            "Answers loaded from the sources",
            counters(),
        );
        let stale = add(
            &mut r,
            "engine_cache_stale",
            "Stale answers served because a source failed",
            counters(),
        );
        let evictions = add(
            &mut r,
            "engine_cache_evictions",
            "Answers evicted for capacity",
            counters(),
        );
        let waiting = add(
            &mut r,
            "engine_push_queue_depth",
            "Push payloads waiting in the local queue",
            gauges(),
        );
        let dead = add(
            &mut r,
            "engine_push_dead_letters",
            "Push payloads that can never be written",
            gauges(),
        );
        let cron_dead_letters = add(
            &mut r,
            "engine_cron_dead_letters",
            "Records cron runs dead-lettered (`run.onRecordError: skip`) and still kept",
            gauges(),
        );
        for (name, n) in cron_dead {
            let c = ConnectorLabel {
                connector: name.to_owned(),
            };
            cron_dead_letters.get_or_create(&c).set(gauge(n));
        }
        let sources = Family::<SourceLabel, Gauge>::default;
        let breaker_state = add(
            &mut r,
            "engine_source_breaker_state",
            "Circuit breaker of each source: 0 closed, 1 open, 2 half-open",
            sources(),
        );
        let breaker_opens = add(
            &mut r,
            "engine_source_breaker_opens",
            "Times each source's circuit breaker opened",
            Family::<SourceLabel, Counter>::default(),
        );
        let views: Vec<(String, BreakerView)> = self
            .breakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            // Only the breakers of sources some engine still calls: one a reload removed is
            // held by this map alone, and would show its last state (open, then half-open
            // for ever, since no probe comes) for a source that is not configured.
            .filter(|(_, b)| Arc::strong_count(b) > 1)
            .map(|(name, b)| (name.clone(), b.view()))
            .collect();
        for (source, v) in views {
            let l = SourceLabel { source };
            breaker_state.get_or_create(&l).set(v.state.code());
            breaker_opens.get_or_create(&l).inc_by(v.opens);
        }
        for (name, s) in caches {
            let c = ConnectorLabel {
                connector: name.to_owned(),
            };
            entries.get_or_create(&c).set(gauge(s.entries));
            bytes.get_or_create(&c).set(gauge(s.bytes));
            hits.get_or_create(&c).inc_by(s.hits);
            misses.get_or_create(&c).inc_by(s.misses);
            stale.get_or_create(&c).inc_by(s.stale);
            evictions.get_or_create(&c).inc_by(s.evictions);
        }
        for (name, (queued, dead_letters)) in queues {
            let c = ConnectorLabel {
                connector: name.to_owned(),
            };
            waiting.get_or_create(&c).set(gauge(queued));
            dead.get_or_create(&c).set(gauge(dead_letters));
        }
        let otlp = crate::runtime::otlp::counts();
        let span_counters = Family::<SpanLabels, Counter>::default();
        r.register(
            "engine_otlp_spans",
            "Spans for the OTLP collector (`--otlp-endpoint`), by outcome: `exported`, `dropped` (the queue was full: a collector down or slow)",
            span_counters.clone(),
        );
        for (outcome, n) in [("exported", otlp.exported), ("dropped", otlp.dropped)] {
            span_counters
                .get_or_create(&SpanLabels { outcome })
                .inc_by(n);
        }
        let failed_exports = add(
            &mut r,
            "engine_otlp_export_failures",
            "Exports of spans the OTLP collector did not take (down, refusing, no answer in 5 s)",
            Counter::<u64>::default(),
        );
        failed_exports.inc_by(otlp.failed_exports);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        let _ = encode(&mut out, &r);
        out
    }
}

fn gauge(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_scraped_series() {
        let m = Metrics::default();
        m.request("a", "search", 200, Duration::from_millis(3));
        m.request("a", "search", 200, Duration::from_millis(3));
        // A resolved handle counts into the same series, also for a status it does not keep.
        let handle = m.route("a", "search");
        handle.request(200, Duration::from_millis(3));
        handle.request(418, Duration::from_millis(3));
        handle.request(418, Duration::from_millis(3));
        m.upstream("s", Answer::Timeout, Duration::from_millis(3));
        let stats = Stats {
            entries: 5,
            ..Stats::default()
        };
        let text = m.render([("a\"b", stats)], [("p", (2, 0))], [("c", 3)]);
        for line in [
            "# HELP engine_requests_total HTTP requests answered.\n",
            "# TYPE engine_requests_total counter\n",
            "engine_requests_total{connector=\"a\",route=\"search\",status=\"200\"} 3\n",
            "engine_requests_total{connector=\"a\",route=\"search\",status=\"418\"} 2\n",
            "engine_request_duration_seconds_bucket{connector=\"a\",route=\"search\",le=\"0.0025\"} 0\n",
            "engine_request_duration_seconds_bucket{connector=\"a\",route=\"search\",le=\"0.005\"} 5\n",
            "engine_request_duration_seconds_count{connector=\"a\",route=\"search\"} 5\n",
            "engine_upstream_requests_total{source=\"s\",outcome=\"timeout\"} 1\n",
            "# TYPE engine_cache_entries gauge\n",
            "engine_cache_entries{connector=\"a\\\"b\"} 5\n",
            "engine_push_queue_depth{connector=\"p\"} 2\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
