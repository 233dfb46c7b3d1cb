//! `engine dead-letters NAME list|show ID|replay ID|delete ID`: one connector's dead letters
//! on a running engine, through its admin API (the state directory belongs to the serving
//! pod). The bearer token comes from `ENGINE_ADMIN_TOKEN` (an environment variable, not a
//! flag, so that it does not show in `ps`) and is never printed. Exit 0 when done, 1 when the
//! engine answered that it could not (no such letter, busy, replayed but not written), 2 for an
//! unusable invocation (a bad URL, an engine that does not answer, a refused token, a server
//! that answers but not as the engine's admin API does). What the server says is printed
//! without control characters; the URL is never quoted (it may hold a password).

use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use super::args::{DeadLetterAction, RunOutput};
use super::definitions::usage;

/// Longest wait for the engine's answer (a replay writes to the sink).
const TIMEOUT: Duration = Duration::from_secs(120);
/// The environment variable holding the admin API's bearer token.
const TOKEN_VAR: &str = "ENGINE_ADMIN_TOKEN";

/// Runs one dead-letter action against the engine at `base`.
pub(super) fn dead_letters(
    name: String,
    action: DeadLetterAction,
    base: String,
    output: RunOutput,
) -> ExitCode {
    // The URL is never quoted back: it may hold a password (`http://user:pass@host`).
    let Ok(mut url) = url::Url::parse(&base) else {
        return usage("--url is not a URL");
    };
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return usage("--url is not an http:// or https:// URL");
    }
    let (method, id) = match &action {
        DeadLetterAction::List { .. } => (reqwest::Method::GET, None),
        DeadLetterAction::Show { id } => (reqwest::Method::GET, Some(id.as_str())),
        DeadLetterAction::Replay { id } => (reqwest::Method::POST, Some(id.as_str())),
        DeadLetterAction::Delete { id } => (reqwest::Method::DELETE, Some(id.as_str())),
    };
    if let Ok(mut segments) = url.path_segments_mut() {
        segments
            .pop_if_empty()
            .extend(["connectors", &name, "dead-letters"]);
        if let Some(id) = id {
            segments.push(id);
        }
        if matches!(action, DeadLetterAction::Replay { .. }) {
            segments.push("replay");
        }
    }
    if let DeadLetterAction::List { limit, after } = &action {
        let mut q = url.query_pairs_mut();
        q.append_pair("limit", &limit.to_string());
        if let Some(a) = after {
            q.append_pair("after", a);
        }
    }
    let token = std::env::var(TOKEN_VAR).ok().filter(|t| !t.is_empty());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return usage(&format!("runtime: {e}")),
    };
    let answer = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let mut req = client.request(method, url.clone());
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        let got = req.send().await?;
        let status = got.status().as_u16();
        let next = got
            .headers()
            .get("link")
            .and_then(|v| v.to_str().ok())
            .and_then(next_after);
        let total = got
            .headers()
            .get("x-total-count")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = got.text().await?;
        Ok::<_, reqwest::Error>((status, text, next, total))
    });
    let (status, text, next, total) = match answer {
        Ok(a) => a,
        Err(e) => {
            return usage(&format!(
                "the engine at {} does not answer: {}",
                url.origin().ascii_serialization(),
                e.without_url()
            ));
        }
    };
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let origin = url.origin().ascii_serialization();
    if !(200..300).contains(&status) {
        let Some(why) = body["issue"][0]["diagnostics"].as_str() else {
            // Not the engine's `OperationOutcome`: another server, a gateway, a wrong URL.
            return usage(&format!(
                "{origin} answered {status}, not as the engine's admin API does (is --url the engine?)"
            ));
        };
        let why = shown(why);
        if output == RunOutput::Json && body.is_object() {
            super::output::line(format_args!("{body}"));
        }
        eprintln!("error: {why}");
        return match status {
            401 | 403 => {
                if token.is_none() {
                    eprintln!("hint: set {TOKEN_VAR} to a bearer token of the admin API");
                }
                ExitCode::from(2)
            }
            _ => ExitCode::from(1),
        };
    }
    if !answers_as_engine(&action, status, &body) {
        return usage(&format!(
            "{origin} answered {status} with something other than the engine's admin API answers (is --url the engine?)"
        ));
    }
    if output == RunOutput::Json {
        match &action {
            DeadLetterAction::Delete { id } => {
                super::output::line(format_args!(
                    "{}",
                    serde_json::json!({"connector": name, "id": id, "status": "deleted"})
                ));
            }
            DeadLetterAction::List { .. } => super::output::line(format_args!(
                "{}",
                serde_json::json!({"letters": body, "total": total.and_then(|t| t.parse::<u64>().ok()), "next": next})
            )),
            _ => super::output::line(format_args!("{body}")),
        }
        return ExitCode::SUCCESS;
    }
    match &action {
        DeadLetterAction::List { .. } => {
            let letters = body.as_array().cloned().unwrap_or_default();
            for l in &letters {
                super::output::line(format_args!(
                    "{}\t{}\t{} bytes\t{}",
                    text_of(&l["id"]),
                    text_of(&l["received"]),
                    text_of(&l["bytes"]),
                    text_of(&l["reason"])
                ));
            }
            let total = total.unwrap_or_else(|| letters.len().to_string());
            match next {
                Some(n) => eprintln!(
                    "{} of {total} dead letters listed; the next page: --after {n}",
                    letters.len()
                ),
                None => eprintln!("{} of {total} dead letters listed", letters.len()),
            }
        }
        DeadLetterAction::Show { .. } => {
            super::output::line(format_args!("id: {}", text_of(&body["id"])));
            super::output::line(format_args!("received: {}", text_of(&body["received"])));
            super::output::line(format_args!("reason: {}", text_of(&body["reason"])));
            if !body["lastReplay"].is_null() {
                super::output::line(format_args!(
                    "last replay: {}",
                    text_of(&body["lastReplay"])
                ));
            }
            if !body["outcome"].is_null() {
                super::output::line(format_args!(
                    "outcome:\n{}",
                    serde_json::to_string_pretty(&body["outcome"]).unwrap_or_default()
                ));
            }
            super::output::line(format_args!(
                "payload:\n{}",
                serde_json::to_string_pretty(&body["payload"]).unwrap_or_default()
            ));
        }
        DeadLetterAction::Replay { id } => super::output::line(format_args!(
            "dead letter {id} replayed: {} resources written; removed",
            text_of(&body["resources"])
        )),
        DeadLetterAction::Delete { id } => {
            super::output::line(format_args!("dead letter {id} deleted"))
        }
    }
    ExitCode::SUCCESS
}

/// The `after` of a `Link: <...?after=ID&limit=N>; rel="next"` header.
fn next_after(link: &str) -> Option<String> {
    let target = link.split(';').next()?.trim();
    let target = target.strip_prefix('<')?.strip_suffix('>')?;
    let query = target.split_once('?')?.1;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "after")
        .map(|(_, v)| v.into_owned())
}

/// Whether a 2xx answer has the shape the engine gives for `action`: a listing is an array,
/// a letter or a replay an object, a deletion 204 (another server's 200 page is none of these).
fn answers_as_engine(action: &DeadLetterAction, status: u16, body: &Value) -> bool {
    match action {
        DeadLetterAction::List { .. } => body.is_array(),
        DeadLetterAction::Show { .. } => body["id"].is_string(),
        DeadLetterAction::Replay { .. } => body["status"].is_string(),
        DeadLetterAction::Delete { .. } => status == 204,
    }
}

/// A text from the server as printed on a terminal: without control characters, so that an
/// answer cannot move the cursor, recolour or rewrite what the operator sees.
fn shown(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => shown(s),
        Value::Null => String::new(),
        other => shown(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_page_is_read_from_the_link_header() {
        assert_eq!(
            next_after("<dead-letters?after=00000000000000000007&limit=5>; rel=\"next\""),
            Some("00000000000000000007".to_owned())
        );
        assert_eq!(next_after("garbage"), None);
    }
}
