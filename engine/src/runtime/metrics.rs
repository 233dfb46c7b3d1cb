//! Prometheus metrics: counters and latency histograms with labels, rendered in the text
//! exposition format at `/metrics`. Small on purpose: a map of series behind a mutex.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The engine's metrics.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, Labels), f64>>,
    histograms: Mutex<BTreeMap<(&'static str, Labels), Histogram>>,
    help: Mutex<BTreeMap<&'static str, (&'static str, &'static str)>>,
}

impl Metrics {
    /// Adds `by` to a counter.
    pub fn add(&self, name: &'static str, help: &'static str, labels: Labels, by: f64) {
        self.describe(name, help, "counter");
        if let Ok(mut c) = self.counters.lock() {
            *c.entry((name, labels)).or_default() += by;
        }
    }

    /// Records a duration in a histogram.
    pub fn observe(&self, name: &'static str, help: &'static str, labels: Labels, d: Duration) {
        self.describe(name, help, "histogram");
        let secs = d.as_secs_f64();
        if let Ok(mut h) = self.histograms.lock() {
            let h = h.entry((name, labels)).or_default();
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        }
    }

    fn describe(&self, name: &'static str, help: &'static str, kind: &'static str) {
        if let Ok(mut m) = self.help.lock() {
            m.entry(name).or_insert((help, kind));
        }
    }

    /// The exposition text, with `extra` series (name, help, type, labels, value) read at
    /// scrape time, sorted by name.
    pub fn render(&self, extra: &[(&str, &str, &str, Labels, f64)]) -> String {
        let mut out = String::new();
        let help = self.help.lock().map(|h| h.clone()).unwrap_or_default();
        let mut last = "";
        if let Ok(counters) = self.counters.lock() {
            for ((name, labels), v) in counters.iter() {
                header(&mut out, &mut last, name, &help);
                let _ = writeln!(out, "{name}{} {v}", fmt_labels(labels, None));
            }
        }
        if let Ok(hs) = self.histograms.lock() {
            for ((name, labels), h) in hs.iter() {
                header(&mut out, &mut last, name, &help);
                for (i, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {}",
                        fmt_labels(labels, Some(&b.to_string())),
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    fmt_labels(labels, Some("+Inf")),
                    h.count
                );
                let _ = writeln!(out, "{name}_sum{} {}", fmt_labels(labels, None), h.sum);
                let _ = writeln!(out, "{name}_count{} {}", fmt_labels(labels, None), h.count);
            }
        }
        for (name, text, kind, labels, v) in extra {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
                last = name;
            }
            let _ = writeln!(out, "{name}{} {v}", fmt_labels(labels, None));
        }
        out
    }
}

fn header<'a>(
    out: &mut String,
    last: &mut &'a str,
    name: &'a str,
    help: &BTreeMap<&str, (&str, &str)>,
) {
    if *last != name {
        let (text, kind) = help.get(name).copied().unwrap_or(("", "untyped"));
        let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
        *last = name;
    }
}

fn fmt_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.add(
            "engine_requests_total",
            "Requests.",
            vec![("route", "search".into())],
            2.0,
        );
        m.observe(
            "engine_request_seconds",
            "Latency.",
            vec![],
            Duration::from_millis(3),
        );
        let text = m.render(&[(
            "engine_cache_entries",
            "Entries.",
            "gauge",
            vec![("connector", "a\"b".into())],
            5.0,
        )]);
        assert!(
            text.contains(
                "# TYPE engine_requests_total counter\nengine_requests_total{route=\"search\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("engine_request_seconds_bucket{le=\"0.0025\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("engine_request_seconds_bucket{le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("engine_request_seconds_count 1\n"), "{text}");
        assert!(
            text.contains("engine_cache_entries{connector=\"a\\\"b\"} 5\n"),
            "{text}"
        );
    }
}
