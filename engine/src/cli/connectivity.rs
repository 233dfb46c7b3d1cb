//! `engine check NAME`: calls each source of one connector once and its FHIR sink's
//! `metadata`, with the real credentials, and prints what answered, one line per part (or one
//! JSON object with `--output json`). Exit 0 when every part answered as it should, 1
//! otherwise, 2 for an unusable invocation.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Map, Value, json};

use super::args::RunOutput;
use super::definitions::{load_and_validate, model_of, usage};
use crate::runtime::connectivity::{self, PartReport};

/// Runs the check of connector `name`.
pub(super) fn check(
    name: String,
    definitions: Vec<PathBuf>,
    params: Vec<String>,
    output: RunOutput,
) -> ExitCode {
    // Validated as `engine validate` does, tests included: their parameters make the request.
    let model = match model_of(load_and_validate(&definitions, false, true, None)) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let Some(connector) = model.connector(&name).cloned() else {
        let names: Vec<&str> = model.connectors.iter().map(|c| c.name.as_str()).collect();
        let hint = crate::model::hint::did_you_mean(&name, names.iter().copied())
            .unwrap_or_else(|| format!("connectors: {}", names.join(", ")));
        return usage(&format!("no connector `{name}` ({hint})"));
    };
    let params = if params.is_empty() {
        // The definition's own tests say what a request needs.
        connector
            .tests
            .iter()
            .map(|t| &t.params)
            .find(|p| p.as_object().is_some_and(|o| !o.is_empty()))
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new()))
    } else {
        let mut values = Map::new();
        for p in &params {
            let Some((k, v)) = p.split_once('=') else {
                return usage(&format!("`{p}` is not NAME=VALUE"));
            };
            values.insert(k.to_owned(), Value::String(v.to_owned()));
        }
        Value::Object(values)
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return usage(&format!("runtime: {e}")),
    };
    let parts = match runtime.block_on(connectivity::check(&connector, &params)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let ok = parts.iter().all(|p| p.ok);
    match output {
        RunOutput::Json => super::output::line(format_args!(
            "{}",
            json!({"connector": name, "ok": ok, "parts": parts})
        )),
        RunOutput::Text => {
            for p in &parts {
                super::output::line(format_args!("{}", line(p)));
            }
            if parts.is_empty() {
                super::output::line(format_args!(
                    "{name}: nothing to call (no source, no FHIR sink)"
                ));
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// One part in one line: `ok   source labels  http://127.0.0.1:9101  200  12 ms  application/json`.
fn line(p: &PartReport) -> String {
    let mut out = format!(
        "{} {} {} ",
        if p.ok { "ok    " } else { "FAILED" },
        p.part,
        p.origin
    );
    if let Some(s) = p.status {
        out.push_str(&format!("{s} "));
    }
    out.push_str(&format!("{} ms", p.latency_ms));
    if let Some(ct) = &p.content_type {
        out.push_str(&format!(" {ct}"));
    }
    if let Some(v) = &p.fhir_version {
        out.push_str(&format!(" FHIR {v}"));
    }
    if let (Some(f), Some(d)) = (&p.failure, &p.detail) {
        out.push_str(&format!(" {f}: {d}"));
    }
    out
}
