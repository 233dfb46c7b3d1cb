//! A FHIR Bulk Data export server stand-in (Bulk Data Access IG 2.0), an axum app on
//! 127.0.0.1: `GET /$export` (also `/Patient/$export`, `/Group/{id}/$export`) answers
//! `202 Accepted` with the `Content-Location` of the job's status; the status answers `202`
//! with `Retry-After` and `X-Progress` a given number of times (or for ever), then the
//! manifest; the NDJSON files it lists are served from `/files/{n}` (streamed, a chunk per 64
//! lines), optionally cut off midway once, or left hanging after some lines, or gzip-compressed
//! for a client that accepts gzip, or replaced by given gzip bytes (a bomb); `DELETE` of the
//! status is recorded. Every request is recorded as `METHOD path?query`, with the
//! `Authorization` it carried. Used by `bulk_export` and by `benches/bulk.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{OriginalUri, Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::{Value, json};

/// How the stand-in behaves; changed by a test between runs through `BulkServer::set`.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// `202` answers to status polls before the manifest; `usize::MAX`: never done.
    pub polls_before_done: usize,
    /// The `Retry-After` of each `202` in turn (the last repeated); none when empty.
    pub retry_after: Vec<String>,
    /// The kick-off's answer instead of `202`: status and body.
    pub kick_off_error: Option<(u16, Value)>,
    /// The status's answer instead of the manifest (after the polls): status and body.
    pub job_error: Option<(u16, Value)>,
    /// The output files: resource type and lines (each written with its `\n`).
    pub files: Vec<(String, Vec<String>)>,
    /// Lines of the one error file (none when empty).
    pub errors: Vec<String>,
    /// Lines of the one file of deleted resources (Bundles of `DELETE`s; none when empty).
    pub deleted: Vec<String>,
    /// A file of the manifest on another origin (its URL).
    pub foreign_file: Option<String>,
    /// The token the files require (`requiresAccessToken: true`); `None`: no token.
    pub file_token: Option<String>,
    /// The first download of file 0 breaks off after this many lines.
    pub cut_once_after: Option<usize>,
    /// Every download of file 0 stops sending after this many lines, without ending.
    pub hang_after: Option<usize>,
    /// Files are sent gzip-compressed (`Content-Encoding: gzip`) to a client that sends
    /// `Accept-Encoding: gzip`.
    pub gzip: bool,
    /// File 0's body instead of its lines: these bytes, sent as `Content-Encoding: gzip`.
    pub gzip_body: Option<Arc<Vec<u8>>>,
    pub transaction_time: String,
}

impl Default for Behaviour {
    fn default() -> Behaviour {
        Behaviour {
            polls_before_done: 0,
            retry_after: Vec::new(),
            kick_off_error: None,
            job_error: None,
            files: Vec::new(),
            errors: Vec::new(),
            deleted: Vec::new(),
            foreign_file: None,
            file_token: None,
            cut_once_after: None,
            hang_after: None,
            gzip: false,
            gzip_body: None,
            transaction_time: "2026-03-01T10:00:00Z".to_owned(),
        }
    }
}

struct Shared {
    base: String,
    behaviour: Mutex<Behaviour>,
    /// `METHOD path?query`, with the `Authorization` header (or empty), in order.
    requests: Mutex<Vec<(String, String)>>,
    /// Request headers of each kick-off.
    kick_offs: Mutex<Vec<HeaderMap>>,
    polls: AtomicUsize,
    downloads: AtomicUsize,
    /// Downloads sent gzip-compressed (the client asked for gzip).
    gzipped: AtomicUsize,
    cuts: AtomicUsize,
}

/// A running stand-in.
#[derive(Clone)]
pub struct BulkServer {
    pub url: String,
    shared: Arc<Shared>,
}

impl BulkServer {
    pub async fn start(behaviour: Behaviour) -> BulkServer {
        let (listener, url) = crate::local_http::bind().await;
        let shared = Arc::new(Shared {
            base: url.clone(),
            behaviour: Mutex::new(behaviour),
            requests: Mutex::default(),
            kick_offs: Mutex::default(),
            polls: AtomicUsize::new(0),
            downloads: AtomicUsize::new(0),
            gzipped: AtomicUsize::new(0),
            cuts: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/$export", get(kick_off))
            .route("/Patient/$export", get(kick_off))
            .route("/Group/{id}/$export", get(kick_off))
            .route("/jobs/{id}", any(status))
            .route("/files/{n}", get(file))
            .route("/errors", get(errors))
            .route("/deleted", get(deleted))
            .layer(axum::middleware::from_fn_with_state(shared.clone(), record))
            .with_state(shared.clone());
        crate::local_http::spawn_app(listener, app);
        BulkServer { url, shared }
    }

    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.shared.behaviour.lock().expect("the behaviour"));
        self.shared.polls.store(0, Ordering::SeqCst);
    }

    /// Every request so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared
            .requests
            .lock()
            .expect("requests")
            .iter()
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Every request so far with the `Authorization` it carried.
    pub fn requests_with_auth(&self) -> Vec<(String, String)> {
        self.shared.requests.lock().expect("requests").clone()
    }

    /// The headers of each kick-off so far.
    pub fn kick_off_headers(&self) -> Vec<HeaderMap> {
        self.shared.kick_offs.lock().expect("kick-offs").clone()
    }

    /// The query parameters of the last kick-off.
    pub fn last_kick_off_query(&self) -> Vec<(String, String)> {
        let last = self
            .requests()
            .into_iter()
            .rfind(|r| r.contains("$export"))
            .expect("a kick-off");
        let q = last.split_once('?').map_or("", |(_, q)| q).to_owned();
        url::form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .collect()
    }

    /// `DELETE`s of a job so far.
    pub fn deletes(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.starts_with("DELETE /jobs/"))
            .count()
    }

    /// Downloads of output files begun so far.
    pub fn downloads(&self) -> usize {
        self.shared.downloads.load(Ordering::SeqCst)
    }

    /// Downloads sent gzip-compressed so far.
    pub fn gzipped(&self) -> usize {
        self.shared.gzipped.load(Ordering::SeqCst)
    }
}

async fn record(
    State(s): State<Arc<Shared>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    s.requests
        .lock()
        .expect("requests")
        .push((format!("{method} {uri}"), auth));
    next.run(req).await
}

fn fhir(status: u16, body: &Value) -> Response {
    (
        StatusCode::from_u16(status).expect("a status code"),
        [(header::CONTENT_TYPE, "application/fhir+json")],
        body.to_string(),
    )
        .into_response()
}

async fn kick_off(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    s.kick_offs.lock().expect("kick-offs").push(headers);
    let b = s.behaviour.lock().expect("the behaviour").clone();
    if let Some((status, body)) = &b.kick_off_error {
        return fhir(*status, body);
    }
    s.polls.store(0, Ordering::SeqCst);
    (
        StatusCode::ACCEPTED,
        [(header::CONTENT_LOCATION, format!("{}/jobs/1", s.base))],
    )
        .into_response()
}

async fn status(State(s): State<Arc<Shared>>, method: Method) -> Response {
    if method == Method::DELETE {
        return StatusCode::ACCEPTED.into_response();
    }
    let b = s.behaviour.lock().expect("the behaviour").clone();
    let n = s.polls.fetch_add(1, Ordering::SeqCst);
    if n < b.polls_before_done {
        let mut resp = StatusCode::ACCEPTED.into_response();
        let h = resp.headers_mut();
        h.insert(
            "x-progress",
            format!("poll {} of {}", n + 1, b.polls_before_done)
                .parse()
                .expect("a header"),
        );
        if let Some(r) = b.retry_after.get(n).or(b.retry_after.last()) {
            h.insert(header::RETRY_AFTER, r.parse().expect("a header"));
        }
        return resp;
    }
    if let Some((status, body)) = &b.job_error {
        return fhir(*status, body);
    }
    let mut output: Vec<Value> = b
        .files
        .iter()
        .enumerate()
        .map(|(i, (t, lines))| {
            json!({"type": t, "url": format!("{}/files/{i}", s.base), "count": lines.len()})
        })
        .collect();
    if let Some(u) = &b.foreign_file {
        output.push(json!({"type": "Patient", "url": u}));
    }
    let deleted: Vec<Value> = if b.deleted.is_empty() {
        Vec::new()
    } else {
        vec![json!({"type": "Bundle", "url": format!("{}/deleted", s.base)})]
    };
    let error: Vec<Value> = if b.errors.is_empty() {
        Vec::new()
    } else {
        vec![json!({"type": "OperationOutcome", "url": format!("{}/errors", s.base)})]
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        json!({
            "transactionTime": b.transaction_time,
            "request": format!("{}/$export", s.base),
            "requiresAccessToken": b.file_token.is_some(),
            "output": output,
            "error": error,
            "deleted": deleted,
        })
        .to_string(),
    )
        .into_response()
}

/// Lines per chunk of an NDJSON body.
const CHUNK_LINES: usize = 64;

/// Lines as an NDJSON body, in chunks of up to 64 lines; with `cut`, an error after that many
/// lines (the connection breaks); with `hang`, nothing more after that many lines, never
/// ending.
fn ndjson(lines: Vec<String>, cut: Option<usize>, hang: Option<usize>) -> Response {
    let lines = Arc::new(lines);
    let stream = futures_util::stream::unfold(0usize, move |i| {
        let lines = lines.clone();
        async move {
            if cut == Some(i) {
                // Pending once, so that the server sends what came before: the cut falls
                // after the answer's head and first lines, mid-download.
                tokio::task::yield_now().await;
                return Some((Err(std::io::Error::other("cut off")), usize::MAX));
            }
            if hang == Some(i) {
                std::future::pending::<()>().await;
            }
            if i >= lines.len() {
                return None;
            }
            let stop = [cut, hang]
                .into_iter()
                .flatten()
                .filter(|s| *s > i)
                .fold((i + CHUNK_LINES).min(lines.len()), usize::min);
            let mut chunk = Vec::new();
            for line in &lines[i..stop] {
                chunk.extend_from_slice(line.as_bytes());
                chunk.push(b'\n');
            }
            Some((Ok::<_, std::io::Error>(chunk), stop))
        }
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/fhir+ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn file(
    State(s): State<Arc<Shared>>,
    UrlPath(n): UrlPath<usize>,
    headers: HeaderMap,
) -> Response {
    let b = s.behaviour.lock().expect("the behaviour").clone();
    if let Some(t) = &b.file_token {
        let got = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if got != Some(format!("Bearer {t}").as_str()) {
            let outcome = json!({"resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "login", "diagnostics": "no token"}]});
            return fhir(401, &outcome);
        }
    }
    let Some((_, lines)) = b.files.get(n) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    s.downloads.fetch_add(1, Ordering::SeqCst);
    let accepts_gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim() == "gzip"));
    if let Some(body) = b.gzip_body.as_ref().filter(|_| n == 0) {
        return gzipped((**body).clone());
    }
    if b.gzip && accepts_gzip {
        s.gzipped.fetch_add(1, Ordering::SeqCst);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for line in lines {
            std::io::Write::write_all(&mut gz, line.as_bytes()).expect("gzip");
            std::io::Write::write_all(&mut gz, b"\n").expect("gzip");
        }
        return gzipped(gz.finish().expect("gzip"));
    }
    let cut = match b.cut_once_after {
        Some(c) if n == 0 && s.cuts.fetch_add(1, Ordering::SeqCst) == 0 => Some(c),
        _ => None,
    };
    let hang = b.hang_after.filter(|_| n == 0);
    ndjson(lines.clone(), cut, hang)
}

/// `body` as a gzip-compressed NDJSON answer, in chunks of 16 KiB.
fn gzipped(body: Vec<u8>) -> Response {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(16 << 10).map(|c| Ok(c.to_vec())).collect();
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/fhir+ndjson"),
            (header::CONTENT_ENCODING, "gzip"),
        ],
        Body::from_stream(futures_util::stream::iter(chunks)),
    )
        .into_response()
}

async fn deleted(State(s): State<Arc<Shared>>) -> Response {
    let b = s.behaviour.lock().expect("the behaviour").clone();
    ndjson(b.deleted, None, None)
}

/// A Bundle of `DELETE` requests, one line of a file of deleted resources.
pub fn deleted_line(urls: &[&str]) -> String {
    let entry: Vec<Value> = urls
        .iter()
        .map(|u| json!({"request": {"method": "DELETE", "url": u}}))
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entry}).to_string()
}

async fn errors(State(s): State<Arc<Shared>>) -> Response {
    let b = s.behaviour.lock().expect("the behaviour").clone();
    ndjson(b.errors, None, None)
}

/// A Patient as one NDJSON line.
pub fn patient_line(id: &str) -> String {
    json!({"resourceType": "Patient", "id": id, "active": true, "name": [{"family": format!("Family {id}")}],
        "meta": {"versionId": "3", "lastUpdated": "2026-02-01T00:00:00Z"}})
    .to_string()
}

/// An Observation of a patient as one NDJSON line.
pub fn observation_line(id: &str, patient: &str) -> String {
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "valueQuantity": {"value": 72, "unit": "/min"}})
    .to_string()
}

/// How long a stand-in that never finishes keeps a test waiting at most: its runs' bound.
pub const RUN_BOUND: Duration = Duration::from_secs(60);
