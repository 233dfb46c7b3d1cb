//! Push signature schemes (`push.auth.hmac`: `signed`, `encoding`, `prefix`), pushed to the
//! engine's real router: GitHub's body-only `sha256=<hex>`, base64 digests, and the
//! refusals (a changed byte, the wrong encoding, a missing header or prefix, an old
//! timestamp), each a 401 `OperationOutcome` that shows neither secret nor digest.

use std::time::Duration;

use base64::Engine as _;
use chrono::Utc;
use hmac::{KeyInit, Mac};

use crate::engine_router::{EngineRouter, open_engine};
use crate::local_http::{Got, assert_outcome};

const TIMEOUT: Duration = Duration::from_secs(10);
const SECRET: &str = "signature-secret-0123456789";

/// A queued push connector `hook` (its sink is the embedded default) with this `hmac`.
fn engine_with(hmac: &str) -> (EngineRouter, tempfile::TempDir, tempfile::TempDir) {
    open_engine(
        &format!(
            "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: hook }}
spec:
  strategy: push
  push:
    auth:
      hmac: {{ secret: \"{SECRET}\", {hmac} }}
  mapping: {{ resourceType: Patient, id: {{ $path: $.id }} }}
"
        ),
        TIMEOUT,
    )
}

/// The raw HMAC-SHA256 of `message` under `secret`.
fn mac(secret: &str, message: &[u8]) -> Vec<u8> {
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("a key");
    m.update(message);
    m.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Posts `body` to the connector with these headers.
async fn post(to: &EngineRouter, headers: &[(&str, &str)], body: &[u8]) -> Got {
    let mut call = to
        .post(format!("{}/push/hook", to.base))
        .header("content-type", "application/json");
    for (name, value) in headers {
        call = call.header(name, value);
    }
    call.body(body.to_vec()).send().await
}

/// A 401 `OperationOutcome` that shows neither the secret nor any of `digests`.
fn assert_refused(got: &Got, digests: &[&str]) {
    assert_outcome(got, 401, &[]);
    for hidden in std::iter::once(&SECRET).chain(digests) {
        assert!(!got.text.contains(hidden), "{} shows {hidden:?}", got.text);
    }
}

fn assert_queued(got: &Got) {
    assert_eq!(got.status, 202, "{}", got.text);
    assert_eq!(got.json()["status"], "queued");
}

/// The body with its first `1` made a `2`: one byte changed, still JSON.
fn one_byte_changed(body: &[u8]) -> Vec<u8> {
    let mut changed = body.to_vec();
    let at = changed.iter().position(|&b| b == b'1').expect("a digit");
    changed[at] = b'2';
    changed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_style_body_only_hex_with_sha256_prefix() {
    let (engine, _defs, _state) =
        engine_with("signed: body, header: X-Hub-Signature-256, prefix: \"sha256=\"");
    let body = br#"{"id":"gh-1"}"#;
    let digest = hex(&mac(SECRET, body));
    let header = format!("sha256={digest}");

    assert_queued(&post(&engine, &[("X-Hub-Signature-256", &header)], body).await);

    // One byte of the body changed, same signature.
    let changed = one_byte_changed(body);
    let got = post(&engine, &[("X-Hub-Signature-256", &header)], &changed).await;
    assert_refused(&got, &[&digest]);
    // The digest without the required prefix.
    let got = post(&engine, &[("X-Hub-Signature-256", &digest)], body).await;
    assert_refused(&got, &[&digest]);
    // The right digest in the wrong encoding.
    let wrong = format!("sha256={}", b64(&mac(SECRET, body)));
    let got = post(&engine, &[("X-Hub-Signature-256", &wrong)], body).await;
    assert_refused(&got, &[&digest, &wrong]);
    // Today's scheme (timestamp.body) does not pass for a body-only connector.
    let now = Utc::now().timestamp().to_string();
    let timed = format!(
        "sha256={}",
        hex(&mac(
            SECRET,
            format!("{now}.{}", "{\"id\":\"gh-2\"}").as_bytes()
        ))
    );
    let got = post(
        &engine,
        &[("X-Hub-Signature-256", &timed), ("X-Timestamp", &now)],
        br#"{"id":"gh-2"}"#,
    )
    .await;
    assert_refused(&got, &[&timed]);
    // No signature header; the signature in another header; a huge header.
    assert_refused(&post(&engine, &[], body).await, &[]);
    let got = post(&engine, &[("X-Signature", &header)], body).await;
    assert_refused(&got, &[&digest]);
    let huge = format!("sha256={}", "ab".repeat(4000));
    assert_refused(
        &post(&engine, &[("X-Hub-Signature-256", &huge)], body).await,
        &[],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base64_digest_of_the_body() {
    let (engine, _defs, _state) = engine_with("signed: body, encoding: base64");
    let body = br#"{"id":"b64-1"}"#;
    let digest = b64(&mac(SECRET, body));

    assert_queued(&post(&engine, &[("X-Signature", &digest)], body).await);

    let changed = one_byte_changed(body);
    let got = post(&engine, &[("X-Signature", &digest)], &changed).await;
    assert_refused(&got, &[&digest]);
    // The right digest in hex.
    let in_hex = hex(&mac(SECRET, body));
    let got = post(&engine, &[("X-Signature", &in_hex)], body).await;
    assert_refused(&got, &[&in_hex]);
    // Not base64 at all, and none.
    let got = post(&engine, &[("X-Signature", "%%not base64%%")], body).await;
    assert_refused(&got, &[]);
    assert_refused(&post(&engine, &[], body).await, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base64_digest_of_timestamp_and_body_keeps_the_window() {
    let (engine, _defs, _state) = engine_with("encoding: base64, prefix: \"v1=\", tolerance: 60s");
    let body = br#"{"id":"ts-1"}"#;
    let signed = |ts: i64, body: &[u8]| {
        let mut message = format!("{ts}.").into_bytes();
        message.extend_from_slice(body);
        format!("v1={}", b64(&mac(SECRET, &message)))
    };
    let now = Utc::now().timestamp();
    let header = signed(now, body);
    let ts = now.to_string();

    assert_queued(
        &post(
            &engine,
            &[("X-Signature", &header), ("X-Timestamp", &ts)],
            body,
        )
        .await,
    );

    let changed = one_byte_changed(body);
    let got = post(
        &engine,
        &[("X-Signature", &header), ("X-Timestamp", &ts)],
        &changed,
    )
    .await;
    assert_refused(&got, &[&header]);
    // Signed ten minutes ago: outside the 60 s window.
    let old = (now - 600).to_string();
    let late = signed(now - 600, body);
    let got = post(
        &engine,
        &[("X-Signature", &late), ("X-Timestamp", &old)],
        body,
    )
    .await;
    assert_refused(&got, &[&late]);
    // The body alone signed: the timestamp is part of what is signed.
    let body_only = format!("v1={}", b64(&mac(SECRET, body)));
    let got = post(
        &engine,
        &[("X-Signature", &body_only), ("X-Timestamp", &ts)],
        body,
    )
    .await;
    assert_refused(&got, &[&body_only]);
    // No timestamp.
    assert_refused(&post(&engine, &[("X-Signature", &header)], body).await, &[]);
}
