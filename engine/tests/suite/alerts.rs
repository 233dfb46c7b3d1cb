//! The dashboard and alerting rules of `deploy/monitoring/`: the rules pass `promtool check
//! rules` and their unit tests (`promtool test rules`, Debian's `prometheus` package, installed
//! by `scripts/tools.sh`), and every metric the rules and the dashboard name is one that a
//! running `engine serve` exposes on `/metrics` (pull, push and cron connectors, a source with
//! a circuit breaker, after a request, a push and a run).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::engine_under_test::definitions;
use crate::fhir_resources::instant;
use crate::fhir_standin::FhirSource;
use crate::local_http::{client, send};
use crate::serve_process::ServeProcess;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

fn monitoring(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/monitoring")
        .join(file)
}

/// `promtool`, or a test failure that says how to install it.
fn promtool() -> std::process::Command {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "promtool is not installed: run scripts/tools.sh (Debian package `prometheus`)"
    );
    std::process::Command::new("promtool")
}

#[test]
fn the_alerting_rules_pass_promtool_and_their_unit_tests() {
    for args in [
        ["check", "rules", "alerts.yaml"],
        ["test", "rules", "alerts.test.yaml"],
    ] {
        let out = promtool()
            .args(args)
            .current_dir(monitoring(""))
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// PromQL words that are not metric names.
const KEYWORDS: [&str; 21] = [
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "bool",
    "offset",
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
];

/// The metric names a PromQL expression reads: its identifiers, less label matchers (`{...}`),
/// ranges (`[...]`), strings, Grafana's `$variables`, the label lists of `by (...)` and its
/// kin, function names (followed by `(`), aggregations, keywords, numbers and durations.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' | '[' | '"' => {
                let close = match c {
                    '{' => '}',
                    '[' => ']',
                    _ => '"',
                };
                i += 1;
                while i < chars.len() && chars[i] != close {
                    i += 1;
                }
                i += 1;
            }
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || "_{}".contains(chars[i])) {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            '(' if skip_group => {
                skip_group = false;
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i]))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j] == ' ' {
                    j += 1;
                }
                let call = chars.get(j) == Some(&'(');
                if [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&word.as_str())
                {
                    skip_group = true;
                } else if !call && !KEYWORDS.contains(&word.as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The sample names `/metrics` offers: its samples, and for each `# TYPE` line the names its
/// samples take (`_total` of a counter, `_bucket`, `_sum`, `_count` of a histogram).
fn exposed(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{s}"));
                    }
                }
                _ => {
                    names.insert(name.to_owned());
                }
            }
        } else if !line.starts_with('#')
            && let Some(name) = line.split(['{', ' ']).next().filter(|n| !n.is_empty())
        {
            names.insert(name.to_owned());
        }
    }
    names
}

/// Every PromQL expression of the rules and the dashboard, with where it is.
fn expressions() -> Vec<(String, String)> {
    let mut found = Vec::new();
    let rules = std::fs::read_to_string(monitoring("alerts.yaml")).expect("alerts.yaml");
    // `expr:` values: one line, or a `|` block of the lines indented below it.
    let lines: Vec<&str> = rules.lines().collect();
    for (n, line) in lines.iter().enumerate() {
        let Some(at) = line.find("expr:") else {
            continue;
        };
        let value = line[at + 5..].trim();
        let expr = if value == "|" {
            let indent = line.len() - line.trim_start().len();
            lines[n + 1..]
                .iter()
                .take_while(|l| l.len() - l.trim_start().len() > indent)
                .copied()
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            value.to_owned()
        };
        found.push((format!("alerts.yaml line {}", n + 1), expr));
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring("dashboard.json")).expect("dashboard.json"),
    )
    .expect("the dashboard is JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("an expr").to_owned();
            found.push((format!("panel `{}`", panel["title"]), expr));
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        // `label_values(METRIC, LABEL)`: the metric is the first argument.
        if let Some(q) = var["query"]["query"].as_str() {
            let metric = q
                .strip_prefix("label_values(")
                .and_then(|r| r.split(',').next())
                .expect("a label_values query");
            found.push((format!("variable `{}`", var["name"]), metric.to_owned()));
        }
    }
    found
}

fn engine_yaml(source: &str) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Source
metadata: {{ name: registry }}
spec: {{ type: fhir, url: "{source}", retries: 0, timeout: 5s, breaker: {{ failures: 5, coolDown: 10s }} }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: patients }}
spec:
  strategy: pull
  sources: [registry]
  pull:
    resources:
      - type: Patient
        search:
          params:
            _count: {{ type: integer, default: 20, max: 100 }}
  cache: {{ ttl: 10m }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: nightly }}
spec:
  strategy: cron
  schedule: {{ cron: "0 2 * * *" }}
  sources: [registry]
  sync: {{ resourceTypes: [Patient] }}
  run: {{ onRecordError: skip }}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: inbox }}
spec:
  strategy: push
  push:
    auth: {{ bearer: {{ token: token-0123456789 }} }}
    mode: queued
  mapping:
    resourceType: Observation
    id: {{ $path: $.id }}
    status: final
    code: {{ text: reading }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_name_is_exposed_by_a_running_engine() {
    let source = FhirSource::start().await;
    source.put(serde_json::json!({
        "resourceType": "Patient", "id": "p-1", "meta": {"lastUpdated": instant(1)}
    }));
    // Outside FHIR's id rule: the run puts it in the dead letters.
    source.put(serde_json::json!({
        "resourceType": "Patient", "id": "bad id", "meta": {"lastUpdated": instant(2)}
    }));
    let defs = definitions(&engine_yaml(&source.url));
    let state = tempfile::tempdir().expect("state");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.arg("serve")
        .arg(defs.path())
        .arg("--state-dir")
        .arg(state.path())
        .arg("--admin-open")
        .env_remove("ENGINE_STATE_DIR")
        .env_remove("ENGINE_SINK_DIR");
    let server = ServeProcess::start(cmd, Duration::from_secs(10)).await;
    let base = server.base.clone();
    let c = client(CLIENT_TIMEOUT);
    // A search (a source call, a cache miss), a push, a run.
    let got = send(c.get(format!("{base}/fhir/patients/Patient"))).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let got = send(
        c.post(format!("{base}/push/inbox"))
            .bearer_auth("token-0123456789")
            .header("content-type", "application/json")
            .body(r#"{"id": "o-1"}"#),
    )
    .await;
    assert_eq!(got.status, 202, "{}", got.text);
    let got = send(c.post(format!("{base}/connectors/nightly/run"))).await;
    assert_eq!(got.status, 202, "{}", got.text);
    let mut ran = false;
    for _ in 0..250 {
        let got = send(c.get(format!("{base}/connectors/nightly"))).await;
        if got.json()["run"]["lastRun"].is_object() {
            ran = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ran, "the run ends within 5 s");
    let metrics = send(c.get(format!("{base}/metrics"))).await;
    assert_eq!(metrics.status, 200);
    let offered = exposed(&metrics.text);

    let mut used = BTreeSet::new();
    let mut missing = Vec::new();
    for (place, expr) in expressions() {
        for name in metric_names(&expr) {
            if !offered.contains(&name) {
                missing.push(format!("{place}: {name}"));
            }
            used.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "metrics the engine does not expose: {missing:#?}\nit exposes: {offered:#?}"
    );
    // What an operator is promised: run failures, dead letters, queue depth, source errors,
    // breakers and the cache, each read by the rules or the dashboard.
    for needed in [
        "engine_runs_total",
        "engine_push_dead_letters",
        "engine_records_dead_lettered_total",
        "engine_push_queue_depth",
        "engine_upstream_requests_total",
        "engine_source_breaker_state",
        "engine_cache_hits_total",
        "engine_cache_misses_total",
    ] {
        assert!(used.contains(needed), "nothing reads {needed}: {used:?}");
    }
}
