//! The trace id in the log lines written while a request is served, at the log level of
//! production (`warn`, the request's own `info` line off): a real `engine serve` whose push
//! connector dead-letters a payload inside the request (a warning) writes that warning with
//! the caller's trace id, and with a new trace's id when the caller sent none, and the line of
//! a later request carries its own id, never the one before.

use std::time::Duration;

use serde_json::Value;

use crate::dead_letters::{PUSH_TOKEN, push_yaml};
use crate::engine_under_test::definitions;
use crate::local_http::{client, send};
use crate::serve_process::ServeProcess;

/// The dead-letter warnings of a log, in order.
fn warnings(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("payload dead-lettered"))
        })
        .collect()
}

#[tokio::test]
async fn warnings_inside_a_request_carry_its_trace_id_at_the_warn_level() {
    let defs = definitions(&push_yaml("$.id"));
    let state = tempfile::tempdir().expect("state dir");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.arg("serve")
        .arg(defs.path())
        .arg("--state-dir")
        .arg(state.path())
        .env_remove("ENGINE_OTLP_ENDPOINT")
        .env_remove("ENGINE_STATE_DIR")
        .env_remove("ENGINE_SINK_DIR");
    // `warn` for everything but the line that says where it listens.
    let server = ServeProcess::start_logging(
        cmd,
        Duration::from_secs(10),
        "warn,engine::http::server=info",
    )
    .await;
    let c = client(Duration::from_secs(20));
    // Two payloads (the same one twice would be answered as a duplicate).
    let push = |traceparent: Option<&'static str>, body: &'static str| {
        let mut req = c
            .post(format!("{}/push/inbox", server.base))
            .bearer_auth(PUSH_TOKEN)
            .header("content-type", "application/json")
            .body(body);
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        send(req)
    };
    let got = push(
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        r#"{"id": "bad id"}"#,
    )
    .await;
    assert_eq!(got.status, 422, "{}", got.text);
    let got = push(None, r#"{"id": "another bad id"}"#).await;
    assert_eq!(got.status, 422, "{}", got.text);

    // Both warnings are written before their answers; read the log once both are in.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = warnings(&server.log());
        if lines.len() >= 2 || tokio::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 2, "two warnings in:\n{}", server.log());
    assert_eq!(
        lines[0]["span"]["trace_id"], "0af7651916cd43dd8448eb211c80319c",
        "{}",
        lines[0]
    );
    let fresh = lines[1]["span"]["trace_id"].as_str().unwrap_or_default();
    assert!(
        fresh.len() == 32
            && fresh.bytes().all(|b| b.is_ascii_hexdigit())
            && fresh != "0af7651916cd43dd8448eb211c80319c",
        "a new trace's id: {}",
        lines[1]
    );
    // The request's own `info` line is off at this level.
    assert!(
        !server.log().contains("\"message\":\"request\""),
        "{}",
        server.log()
    );
}
