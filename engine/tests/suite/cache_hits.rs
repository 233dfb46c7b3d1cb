//! The cache-hit path of the `engine serve` binary, read off the wire: a hit is the miss's
//! answer again (the same bytes, ETag, type and length), `HEAD` gives the same headers and no
//! body, `If-None-Match` (in a list, or on a second header line) answers 304, the request ids
//! the engine makes are distinct UUIDs and a caller's is echoed, and the resolved metric
//! handles count into the same series as before.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::engine_under_test::definitions;
use crate::fhir_standin::FhirSource;
use crate::serve_process::ServeProcess;

const WAIT: Duration = Duration::from_secs(20);

/// An answer as it came on the wire.
struct Wire {
    status: u16,
    /// Header names in lower case, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The headers, but those that differ between any two answers (date, request id) or
    /// between a hit and a miss (x-cache).
    fn stable_headers(&self) -> Vec<(String, String)> {
        let mut h: Vec<_> = self
            .headers
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "date" | "x-request-id" | "x-cache"))
            .cloned()
            .collect();
        h.sort();
        h
    }
}

/// Sends `method target` with `extra` header lines on a connection of its own and reads the
/// answer until the engine closes it.
async fn wire(base: &str, method: &str, target: &str, extra: &[(&str, &str)]) -> Wire {
    let host = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(host).await.expect("connect");
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("an answer in time")
        .expect("read");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Wire {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_is_the_stored_answer_with_its_headers_head_and_304() {
    let source = FhirSource::start().await;
    source.put(json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Ng"}]}));
    let defs = definitions(&format!(
        r#"
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: mirror }}
spec:
  strategy: pull
  source: {{ type: fhir, url: "{}", timeout: 5s, retries: 0 }}
  cache: {{ ttl: 10m }}
  pull:
    resources:
      - type: Patient
        search:
          params:
            name: {{}}
"#,
        source.url
    ));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.arg("serve")
        .arg(defs.path().join("definitions.yaml"))
        .arg("--state-dir")
        .arg(defs.path().join("state"));
    let engine = ServeProcess::start(cmd, WAIT).await;
    let target = "/fhir/mirror/Patient?name=Ng";

    let miss = wire(&engine.base, "GET", target, &[]).await;
    assert_eq!(miss.status, 200, "{}", String::from_utf8_lossy(&miss.body));
    assert_eq!(miss.header("x-cache"), Some("miss"));
    let hit = wire(&engine.base, "GET", target, &[]).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.header("x-cache"), Some("hit"));
    assert_eq!(hit.body, miss.body, "a hit sends the stored bytes");
    assert_eq!(hit.stable_headers(), miss.stable_headers());
    let etag = hit.header("etag").expect("an ETag").to_owned();
    assert!(etag.starts_with("W/\""), "{etag}");
    assert_eq!(hit.header("content-type"), Some("application/fhir+json"));
    assert_eq!(
        hit.header("content-length"),
        Some(hit.body.len().to_string().as_str())
    );

    // HEAD: the same headers, the length of the body it does not send.
    let head = wire(&engine.base, "HEAD", target, &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "{:?}", head.body);
    assert_eq!(head.stable_headers(), hit.stable_headers());

    // If-None-Match: the tag in a list, or on a second header line, answers 304 with the tag
    // and no body; another tag gets the answer.
    for extra in [
        vec![("If-None-Match", format!("W/\"other\", {etag}"))],
        vec![
            ("If-None-Match", "W/\"other\"".to_owned()),
            ("If-None-Match", etag.clone()),
        ],
        vec![("If-None-Match", "*".to_owned())],
    ] {
        let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let not_modified = wire(&engine.base, "GET", target, &extra).await;
        assert_eq!(not_modified.status, 304, "{extra:?}");
        assert_eq!(not_modified.header("etag"), Some(etag.as_str()));
        assert!(not_modified.body.is_empty());
    }
    let other = wire(
        &engine.base,
        "GET",
        target,
        &[("If-None-Match", "W/\"other\"")],
    )
    .await;
    assert_eq!(other.status, 200);
    assert_eq!(other.body, miss.body);
    assert_eq!(source.calls(), 1, "one call to the source for all of them");

    // Request ids: made ones are distinct UUIDs; a caller's usable one is echoed, and an
    // unusable one (a space) replaced.
    let ids: Vec<String> = [&miss, &hit, &head, &other]
        .iter()
        .map(|w| w.header("x-request-id").unwrap_or_default().to_owned())
        .collect();
    for id in &ids {
        assert!(is_uuid(id), "{id}");
    }
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "{ids:?}");
    let given = wire(&engine.base, "GET", target, &[("X-Request-Id", "abc-123")]).await;
    assert_eq!(given.header("x-request-id"), Some("abc-123"));
    let bad = wire(&engine.base, "GET", target, &[("X-Request-Id", "a b")]).await;
    assert!(is_uuid(bad.header("x-request-id").unwrap_or_default()));

    // The metrics count every one of them in its series: 200s (miss, hit, HEAD, other,
    // given, bad) and 304s.
    let metrics = wire(&engine.base, "GET", "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    for line in [
        "engine_requests_total{connector=\"mirror\",route=\"search\",status=\"200\"} 6\n",
        "engine_requests_total{connector=\"mirror\",route=\"search\",status=\"304\"} 3\n",
        "engine_request_duration_seconds_count{connector=\"mirror\",route=\"search\"} 9\n",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}
