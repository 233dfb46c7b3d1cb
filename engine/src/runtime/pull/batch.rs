//! Batch at run time: the caller's batch Bundle sent to every FHIR source of a scope (one FHIR
//! version's: a batch never mixes versions), and the answers merged entry by entry into one
//! batch-response (failed sources named in the outcomes). Each resource in the answer gets the
//! engine's `fullUrl` for it, naming its source when the connector has more than one, as a
//! search's entries do: two servers' `Patient/1` never share one.

use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};

use super::{PullRuntime, RequestInfo, Scope, all_failed};
use crate::model::fhir::outcome;
use crate::runtime::problem::{Problem, ProblemKind};
use crate::runtime::upstream::{Call, Failure, FailureKind};

impl PullRuntime {
    /// A batch Bundle sent to every FHIR source of `scope`, the answers merged entry by entry.
    pub async fn batch(
        &self,
        bundle: &Value,
        info: &RequestInfo,
        scope: &Scope,
    ) -> Result<Value, Problem> {
        if !self.pull().is_some_and(|p| p.batch) {
            return Err(Problem::new(
                ProblemKind::NotSupported,
                format!("connector `{}` takes no batch", self.connector.name),
            ));
        }
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle")
            || bundle.get("type").and_then(Value::as_str) != Some("batch")
        {
            return Err(Problem::invalid(
                "the body must be a Bundle of type `batch`",
            ));
        }
        let requests = bundle
            .get("entry")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let clients = self.clients_in(scope)?;
        let results = join_all(clients.iter().map(|client| async move {
            let call = Call {
                method: Method::POST,
                url: client.source.url.clone(),
                headers: Vec::new(),
                body: Some(bundle.clone()),
            };
            let reads = self.reads.batch(&client.source.name);
            let reply = client
                .send_reading(&call, reads, &info.trace, info.deadline, &mut 0)
                .await?;
            let mut entries = reply
                .body
                .get("entry")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if entries.len() != requests {
                return Err(Failure {
                    source: client.source.name.clone(),
                    reason: format!("answered {} entries for {requests} requests", entries.len()),
                    kind: FailureKind::Refused,
                    status: Some(reply.status),
                });
            }
            for e in &mut entries {
                self.own_full_urls(e, &client.source.name, info);
            }
            Ok(entries)
        }))
        .await;
        let mut answers = Vec::new();
        let mut failures = Vec::new();
        for r in results {
            match r {
                Ok(entries) => answers.push(entries),
                Err(f) => failures.push(f),
            }
        }
        if answers.is_empty() {
            return Err(all_failed(&failures));
        }
        let entries: Vec<Value> = (0..requests)
            .map(|i| merge_entry(answers.iter().map(|a| &a[i]).collect(), &failures))
            .collect();
        Ok(json!({"resourceType": "Bundle", "type": "batch-response", "entry": entries}))
    }
}

impl PullRuntime {
    /// Gives the resources of one source's batch-response entry the engine's `fullUrl`s
    /// (the entry's own, and those of a searchset's entries): the source's are its own
    /// addresses, which neither read back through the engine nor stay apart across sources.
    fn own_full_urls(&self, entry: &mut Value, source: &str, info: &RequestInfo) {
        fn set(rt: &PullRuntime, e: &mut Value, source: &str, info: &RequestInfo) {
            let Some(o) = e.as_object_mut() else { return };
            match o.get("resource").and_then(|r| rt.full_url(info, source, r)) {
                Some(u) => {
                    o.insert("fullUrl".into(), Value::String(u));
                }
                None => {
                    o.remove("fullUrl");
                }
            }
        }
        if entry["resource"]["resourceType"] == "Bundle"
            && entry["resource"]["type"] == "searchset"
            && let Some(inner) = entry["resource"]["entry"].as_array_mut()
        {
            for e in inner {
                set(self, e, source, info);
            }
        }
        if entry.get("fullUrl").is_some() {
            set(self, entry, source, info);
        }
    }
}

/// One entry of merged batch responses: searchsets are joined, other answers taken from the
/// first source that succeeded; failed sources are named in the entry's outcome.
fn merge_entry(answers: Vec<&Value>, failures: &[Failure]) -> Value {
    let ok = |e: &&Value| {
        e["response"]["status"]
            .as_str()
            .is_some_and(|s| s.starts_with('2'))
    };
    let good: Vec<&Value> = answers.iter().copied().filter(ok).collect();
    let mut entry = match good.as_slice() {
        [] => answers.first().map(|e| (*e).clone()).unwrap_or(json!({})),
        [one] => (*one).clone(),
        many if many.iter().all(|e| e["resource"]["type"] == "searchset") => {
            let mut merged = many[0].clone();
            let all: Vec<Value> = many
                .iter()
                .flat_map(|e| {
                    e["resource"]["entry"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .collect();
            let totals: Option<u64> = many.iter().map(|e| e["resource"]["total"].as_u64()).sum();
            merged["resource"]["entry"] = Value::Array(all);
            match totals {
                Some(t) => merged["resource"]["total"] = json!(t),
                None => {
                    if let Some(o) = merged["resource"].as_object_mut() {
                        o.remove("total");
                    }
                }
            }
            merged
        }
        many => many[0].clone(),
    };
    if !failures.is_empty() {
        let text = failures
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        if entry["resource"]["type"] == "searchset" {
            if let Some(list) = entry["resource"]["entry"].as_array_mut() {
                list.push(json!({"resource": outcome("warning", "transient", &text), "search": {"mode": "outcome"}}));
            } else {
                entry["resource"]["entry"] = json!([{"resource": outcome("warning", "transient", &text), "search": {"mode": "outcome"}}]);
            }
        } else if entry["response"].is_object() && entry["response"].get("outcome").is_none() {
            entry["response"]["outcome"] = outcome("warning", "transient", &text);
        }
    }
    entry
}
