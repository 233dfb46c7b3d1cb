//! Outbound authentication (issue 13, part 1): a pull source behind OAuth2 client
//! credentials or SMART Backend Services, and one behind mutual TLS. Real servers on
//! 127.0.0.1: a token endpoint stand-in that checks the client's secret, or the assertion's
//! signature with the public key and its claims (`iss`, `sub`, `aud`, `exp` not past and at
//! most five minutes ahead, `jti` never reused, `kid`, `jku`), and issues short-lived tokens;
//! a resource server that takes only live tokens and answers 401 to any other; a TLS server
//! that requires a client certificate of its CA (`tests/data/outbound-auth/`). Hostile token
//! endpoints: hung, 2 MB, not JSON, no `expires_in`, echoing the secret.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use engine::runtime::engine::Limits;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::engine_router::{EngineRouter, open_admin};
use crate::engine_under_test::{definitions, load};
use crate::local_http::{Got, assert_outcome, bind, spawn_app};

/// Longest any request of these tests may take before the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The engine's request timeout in these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);
const CLIENT_ID: &str = "engine-client";
const SECRET: &str = "s3cr3t-Client-Value-9f2c";

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/outbound-auth")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(data(name)).expect("test data")
}

/// What the token endpoint does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Checks the client and issues tokens of `lifetime`.
    Issue,
    /// Never answers.
    Hang,
    /// Answers 503: the token endpoint is down.
    Down,
    /// Answers 2 MB of JSON.
    Huge,
    /// Answers 200 with HTML.
    NotJson,
    /// Issues tokens without `expires_in`.
    NoExpiry,
}

/// How the client must authenticate.
enum Expect {
    /// HTTP basic with this secret; a refusal echoes the secret it was given.
    Secret(&'static str),
    /// A client assertion verified with this public key and algorithm.
    Assertion {
        key: DecodingKey,
        alg: Algorithm,
        kid: &'static str,
        jku: Option<String>,
    },
}

struct Stand {
    mode: Mode,
    expect: Expect,
    lifetime: Duration,
    /// The token URL, the assertion's expected `aud`.
    token_url: Mutex<String>,
    /// Tokens issued and until when each is live.
    live: Mutex<HashMap<String, Instant>>,
    jtis: Mutex<HashSet<String>>,
    token_requests: AtomicUsize,
    refused_clients: AtomicUsize,
    resource_calls: AtomicUsize,
    resource_401s: AtomicUsize,
    /// The resource server refuses every token (a token revoked, or a server that never
    /// takes one).
    refuse_all: std::sync::atomic::AtomicBool,
    /// Bundles the FHIR sink (`/fhir`) took, and the ones it refused with a 401.
    sink_posts: AtomicUsize,
    sink_401s: AtomicUsize,
    /// Guide packages (`/package.tgz`) served.
    packages: AtomicUsize,
}

/// A token endpoint (`/token`) and a resource server (`/items`) on one 127.0.0.1 port.
struct Servers {
    url: String,
    stand: Arc<Stand>,
}

impl Servers {
    /// A token endpoint issuing 5-minute tokens for the client secret `SECRET`, and the
    /// resources behind it.
    async fn issuing() -> Servers {
        Servers::start(
            Mode::Issue,
            Expect::Secret(SECRET),
            Duration::from_secs(300),
        )
        .await
    }

    async fn start(mode: Mode, expect: Expect, lifetime: Duration) -> Servers {
        let (listener, url) = bind().await;
        let stand = Arc::new(Stand {
            mode,
            expect,
            lifetime,
            token_url: Mutex::new(format!("{url}/token")),
            live: Mutex::new(HashMap::new()),
            jtis: Mutex::new(HashSet::new()),
            token_requests: AtomicUsize::new(0),
            refused_clients: AtomicUsize::new(0),
            resource_calls: AtomicUsize::new(0),
            resource_401s: AtomicUsize::new(0),
            refuse_all: false.into(),
            sink_posts: AtomicUsize::new(0),
            sink_401s: AtomicUsize::new(0),
            packages: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/token", post(token))
            .route("/items", get(items))
            .route("/fhir", post(fhir_sink))
            .route("/package.tgz", get(guide_package))
            .with_state(stand.clone());
        spawn_app(listener, app);
        Servers { url, stand }
    }

    fn tokens(&self) -> usize {
        self.stand.token_requests.load(Ordering::SeqCst)
    }
}

fn invalid_client(why: String) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"error": "invalid_client", "error_description": why})),
    )
        .into_response()
}

async fn token(State(s): State<Arc<Stand>>, headers: HeaderMap, body: String) -> Response {
    s.token_requests.fetch_add(1, Ordering::SeqCst);
    match s.mode {
        Mode::Hang => std::future::pending::<()>().await,
        Mode::Down => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Mode::Huge => {
            let big = "x".repeat(2 << 20);
            return axum::Json(json!({"access_token": big, "expires_in": 60})).into_response();
        }
        Mode::NotJson => return "<html>login</html>".into_response(),
        Mode::Issue | Mode::NoExpiry => {}
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    if let Err(why) = check_client(&s, &headers, &form) {
        s.refused_clients.fetch_add(1, Ordering::SeqCst);
        return invalid_client(why);
    }
    let n = s.token_requests.load(Ordering::SeqCst);
    let token = format!("tok-{n}-{}", uuid::Uuid::new_v4());
    s.live
        .lock()
        .expect("lock")
        .insert(token.clone(), Instant::now() + s.lifetime);
    let mut answer =
        json!({"access_token": token, "token_type": "Bearer", "scope": form.get("scope")});
    if s.mode == Mode::Issue {
        answer["expires_in"] = json!(s.lifetime.as_secs_f64());
    }
    axum::Json(answer).into_response()
}

/// The client's authentication, as a real server checks it.
fn check_client(
    s: &Stand,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<(), String> {
    match &s.expect {
        Expect::Secret(secret) => {
            let basic = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Basic "))
                .ok_or("no basic credentials")?;
            let pair = base64::engine::general_purpose::STANDARD
                .decode(basic)
                .map_err(|_| "bad basic")?;
            let pair = String::from_utf8(pair).map_err(|_| "bad basic")?;
            let (id, given) = pair.split_once(':').ok_or("bad basic")?;
            if form.get("scope").map(String::as_str) != Some("system/Basic.rs labs.read") {
                return Err(format!("scope {:?}", form.get("scope")));
            }
            if form.get("audience").map(String::as_str) != Some("https://labs.example") {
                return Err("audience".into());
            }
            // A careless server that echoes what it was given.
            if id != CLIENT_ID || given != *secret {
                return Err(format!("client {id} with secret {given} is not known"));
            }
            Ok(())
        }
        Expect::Assertion { key, alg, kid, jku } => {
            if form.get("client_assertion_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return Err("client_assertion_type".into());
            }
            if form.get("scope").map(String::as_str) != Some("system/Basic.rs") {
                return Err("scope".into());
            }
            let jwt = form.get("client_assertion").ok_or("no assertion")?;
            let header = jsonwebtoken::decode_header(jwt).map_err(|e| e.to_string())?;
            if header.kid.as_deref() != Some(kid) || header.jku != *jku {
                return Err("kid or jku".into());
            }
            let aud = s.token_url.lock().expect("lock").clone();
            let mut v = Validation::new(*alg);
            v.set_audience(&[aud]);
            v.set_issuer(&[CLIENT_ID]);
            v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
            v.leeway = 0;
            let claims = jsonwebtoken::decode::<Value>(jwt, key, &v)
                .map_err(|e| format!("assertion refused: {e}"))?
                .claims;
            if claims["sub"] != CLIENT_ID {
                return Err("sub".into());
            }
            let now = chrono::Utc::now().timestamp();
            let exp = claims["exp"].as_i64().ok_or("exp")?;
            if exp > now + 300 {
                return Err("exp more than 5 minutes ahead".into());
            }
            let jti = claims["jti"].as_str().ok_or("no jti")?.to_owned();
            if !s.jtis.lock().expect("lock").insert(jti) {
                return Err("jti reused".into());
            }
            Ok(())
        }
    }
}

async fn items(State(s): State<Arc<Stand>>, headers: HeaderMap) -> Response {
    s.resource_calls.fetch_add(1, Ordering::SeqCst);
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let live = s
        .live
        .lock()
        .expect("lock")
        .get(token)
        .is_some_and(|until| *until > Instant::now());
    if !live || s.refuse_all.load(Ordering::SeqCst) {
        s.resource_401s.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_token"})),
        )
            .into_response();
    }
    axum::Json(json!({"results": [{"id": "a1", "name": "Aspirin"}]})).into_response()
}

/// True when the call carries a token the endpoint issued and that is still live.
fn live_bearer(s: &Stand, headers: &HeaderMap) -> bool {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let live = s
        .live
        .lock()
        .expect("lock")
        .get(token)
        .is_some_and(|until| *until > Instant::now());
    live && !s.refuse_all.load(Ordering::SeqCst)
}

/// A FHIR server's transaction endpoint that takes only live tokens: every entry answered
/// `201 Created`.
async fn fhir_sink(State(s): State<Arc<Stand>>, headers: HeaderMap, body: String) -> Response {
    if !live_bearer(&s, &headers) {
        s.sink_401s.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login", "diagnostics": "invalid token"}]})),
        )
            .into_response();
    }
    s.sink_posts.fetch_add(1, Ordering::SeqCst);
    let bundle: Value = serde_json::from_str(&body).expect("a Bundle");
    let entries: Vec<Value> = bundle["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|_| json!({"response": {"status": "201 Created"}}))
        .collect();
    axum::Json(json!({"resourceType": "Bundle", "type": "transaction-response", "entry": entries}))
        .into_response()
}

/// A FHIR package behind live tokens: one StructureDefinition.
async fn guide_package(State(s): State<Arc<Stand>>, headers: HeaderMap) -> Response {
    if !live_bearer(&s, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    s.packages.fetch_add(1, Ordering::SeqCst);
    let sd = json!({"resourceType": "StructureDefinition", "id": "guarded", "url": "http://example.org/sd/guarded"});
    crate::fhir_package::package_tgz(&[(
        "package/StructureDefinition-guarded.json",
        serde_json::to_vec(&sd).expect("json"),
    )])
    .into_response()
}

/// A source named `labs` at `url` with `extra` (YAML lines at the spec's indent) and
/// a pull connector over it.
fn definitions_of(url: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Source
metadata: {{ name: labs }}
spec:
  url: "{url}"
  timeout: 2s
  retries: 0
{extra}
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: lab }}
spec:
  strategy: pull
  sources: [labs]
  pull:
    resources:
      - type: Basic
        search:
          params:
            name: {{}}
          request:
            path: /items
            query: {{ q: "{{{{params.name}}}}" }}
          records: $.results[*]
  mapping:
    resourceType: Basic
    id: {{ $path: $.id }}
    code: {{ text: {{ $path: $.name }} }}
"#
    )
}

/// The engine of `yaml` (written beside `files`, each a name and its text for `${file:}`).
fn engine_of(yaml: &str, files: &[(&str, &str)]) -> (EngineRouter, tempfile::TempDir) {
    let defs = definitions("");
    let mut yaml = yaml.to_owned();
    for (name, text) in files {
        let path = defs.path().join(name);
        std::fs::write(&path, text).expect("write secret file");
        yaml = yaml.replace(&format!("@{name}"), &path.display().to_string());
    }
    std::fs::write(defs.path().join("definitions.yaml"), yaml).expect("write definitions");
    let limits = Limits {
        timeout: REQUEST_TIMEOUT,
        ..open_admin()
    };
    let engine = EngineRouter::with_limits(
        load(defs.path()),
        &defs.path().join("state"),
        limits,
        CLIENT_TIMEOUT,
    );
    (engine, defs)
}

fn oauth2_auth(url: &str) -> String {
    format!(
        r#"  auth:
    oauth2:
      tokenUrl: "{url}/token"
      clientId: {CLIENT_ID}
      clientSecret: "${{file:@secret}}"
      scopes: [system/Basic.rs, labs.read]
      audience: https://labs.example"#
    )
}

/// An OAuth2 engine over `servers`, presenting `secret`.
fn oauth2_engine(servers: &Servers, secret: &str) -> (EngineRouter, tempfile::TempDir) {
    let yaml = definitions_of(&servers.url, &oauth2_auth(&servers.url));
    engine_of(&yaml, &[("secret", secret)])
}

async fn search(engine: &EngineRouter, name: &str) -> Got {
    engine
        .get(format!("{}/fhir/lab/Basic?name={name}", engine.base))
        .send()
        .await
}

fn assert_found(got: &Got) {
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(
        got.json()["entry"][0]["resource"]["id"],
        "a1",
        "{}",
        got.text
    );
}

#[tokio::test]
async fn oauth2_token_fetched_once_for_many_calls() {
    let servers = Servers::issuing().await;
    let (engine, _defs) = oauth2_engine(&servers, SECRET);
    // Eight at once: one token request, the others wait for its token.
    let searches = (0..8).map(|i| {
        let engine = &engine;
        async move { search(engine, &format!("n{i}")).await }
    });
    for got in futures_util::future::join_all(searches).await {
        assert_found(&got);
    }
    for i in 0..4 {
        assert_found(&search(&engine, &format!("m{i}")).await);
    }
    assert_eq!(servers.tokens(), 1, "one token for twelve calls");
    assert_eq!(servers.stand.resource_calls.load(Ordering::SeqCst), 12);
    assert_eq!(servers.stand.resource_401s.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn oauth2_token_renewed_before_it_expires() {
    let lifetime = Duration::from_millis(1500);
    let servers = Servers::start(Mode::Issue, Expect::Secret(SECRET), lifetime).await;
    let (engine, _defs) = oauth2_engine(&servers, SECRET);
    assert_found(&search(&engine, "a").await);
    assert_found(&search(&engine, "b").await);
    assert_eq!(servers.tokens(), 1);
    // Expiry is what is tested: the first token's lifetime passes.
    tokio::time::sleep(lifetime).await;
    assert_found(&search(&engine, "c").await);
    assert_eq!(servers.tokens(), 2, "a new token after expiry");
    assert_eq!(
        servers.stand.resource_401s.load(Ordering::SeqCst),
        0,
        "renewed before the source had to refuse it"
    );
}

#[tokio::test]
async fn oauth2_token_renewed_once_on_a_401_then_the_401_stands() {
    let servers = Servers::issuing().await;
    let (engine, _defs) = oauth2_engine(&servers, SECRET);
    assert_found(&search(&engine, "a").await);
    // The server forgets its tokens (a restart, a revocation): the next call's 401 renews.
    servers.stand.live.lock().expect("lock").clear();
    assert_found(&search(&engine, "b").await);
    assert_eq!(servers.tokens(), 2);
    assert_eq!(servers.stand.resource_401s.load(Ordering::SeqCst), 1);
    // A server that refuses every token: renewed once, then its 401 stands.
    servers.stand.refuse_all.store(true, Ordering::SeqCst);
    let got = search(&engine, "c").await;
    assert_outcome(&got, 502, &["labs", "401"]);
    assert_eq!(servers.tokens(), 3, "one renewal, no more");
    assert_eq!(servers.stand.resource_401s.load(Ordering::SeqCst), 3);
}

/// A writer the log goes to, kept for reading.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_wrong_secret_fails_clearly_without_the_secret_in_the_answer_or_the_log() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let servers = Servers::issuing().await;
    let wrong = "wrong-Secret-Value-77ab";
    let (engine, _defs) = oauth2_engine(&servers, wrong);
    let got = search(&engine, "a").await;
    assert_outcome(
        &got,
        502,
        &["labs", "token endpoint", "invalid_client", "is not known"],
    );
    assert!(!got.text.contains(wrong), "{}", got.text);
    assert_eq!(servers.stand.refused_clients.load(Ordering::SeqCst), 1);
    assert_eq!(servers.stand.resource_calls.load(Ordering::SeqCst), 0);
    let text = String::from_utf8(log.0.lock().expect("lock").clone()).expect("utf-8 log");
    assert!(text.contains("lab"), "the request was logged: {text}");
    assert!(!text.contains(wrong), "the secret is in the log: {text}");
}

fn smart_auth(url: &str, alg: &str, key_file: &str, jku: Option<&str>) -> String {
    let jku = jku.map(|j| format!("\n      jku: {j}")).unwrap_or_default();
    format!(
        r#"  auth:
    smartBackend:
      tokenUrl: "{url}/token"
      clientId: {CLIENT_ID}
      privateKey: "${{file:{}}}"
      alg: {alg}
      kid: key-1{jku}
      scopes: [system/Basic.rs]"#,
        data(key_file).display()
    )
}

async fn smart(alg: Algorithm, key: DecodingKey, key_file: &str, jku: Option<&str>) -> Servers {
    let servers = Servers::start(
        Mode::Issue,
        Expect::Assertion {
            key,
            alg,
            kid: "key-1",
            jku: jku.map(str::to_owned),
        },
        Duration::from_secs(300),
    )
    .await;
    let name = format!("{alg:?}");
    let yaml = definitions_of(
        &servers.url,
        &smart_auth(&servers.url, &name, key_file, jku),
    );
    let (engine, _defs) = engine_of(&yaml, &[]);
    assert_found(&search(&engine, "a").await);
    // A second token, so a second assertion: its `jti` must differ.
    servers.stand.live.lock().expect("lock").clear();
    assert_found(&search(&engine, "b").await);
    assert_eq!(servers.tokens(), 2);
    assert_eq!(servers.stand.refused_clients.load(Ordering::SeqCst), 0);
    servers
}

#[tokio::test]
async fn smart_assertion_accepted_with_rs384() {
    let key = DecodingKey::from_rsa_pem(read("rsa.pub.pem").as_bytes()).expect("public key");
    smart(
        Algorithm::RS384,
        key,
        "rsa.pem",
        Some("https://client.example/jwks.json"),
    )
    .await;
}

#[tokio::test]
async fn smart_assertion_accepted_with_es384() {
    let key = DecodingKey::from_ec_pem(read("ec-p384.pub.pem").as_bytes()).expect("public key");
    smart(Algorithm::ES384, key, "ec-p384.pem", None).await;
}

#[tokio::test]
async fn smart_assertion_refused_with_a_wrong_key() {
    let key = DecodingKey::from_rsa_pem(read("rsa.pub.pem").as_bytes()).expect("public key");
    let servers = Servers::start(
        Mode::Issue,
        Expect::Assertion {
            key,
            alg: Algorithm::RS384,
            kid: "key-1",
            jku: None,
        },
        Duration::from_secs(300),
    )
    .await;
    let yaml = definitions_of(
        &servers.url,
        &smart_auth(&servers.url, "RS384", "rsa-other.pem", None),
    );
    let (engine, _defs) = engine_of(&yaml, &[]);
    let got = search(&engine, "a").await;
    assert_outcome(&got, 502, &["labs", "invalid_client", "InvalidSignature"]);
    assert_eq!(servers.stand.refused_clients.load(Ordering::SeqCst), 1);
    assert_eq!(servers.stand.resource_calls.load(Ordering::SeqCst), 0);
}

/// A token endpoint in `mode` and a search through it: its answer and how long it took.
async fn hostile(mode: Mode) -> (Got, Duration, Servers) {
    let servers = Servers::start(mode, Expect::Secret(SECRET), Duration::from_secs(300)).await;
    let (engine, _defs) = oauth2_engine(&servers, SECRET);
    let started = Instant::now();
    let got = search(&engine, "a").await;
    (got, started.elapsed(), servers)
}

#[tokio::test]
async fn a_hung_token_endpoint_fails_by_the_source_timeout() {
    let (got, took, servers) = hostile(Mode::Hang).await;
    assert_outcome(&got, 504, &["labs", "token endpoint"]);
    assert!(
        took < REQUEST_TIMEOUT,
        "bounded by the source's 2s: {took:?}"
    );
    assert_eq!(servers.stand.resource_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_token_endpoint_that_is_down_opens_the_source_s_breaker() {
    let servers =
        Servers::start(Mode::Down, Expect::Secret(SECRET), Duration::from_secs(300)).await;
    let yaml = definitions_of(
        &servers.url,
        &format!(
            "{}\n  breaker: {{ failures: 2, coolDown: 30s }}",
            oauth2_auth(&servers.url)
        ),
    );
    let (engine, _defs) = engine_of(&yaml, &[("secret", SECRET)]);
    for _ in 0..2 {
        let got = search(&engine, "a").await;
        assert_outcome(&got, 502, &["labs", "token endpoint"]);
    }
    let asked = servers.tokens();
    assert!(asked >= 2, "the token endpoint was asked: {asked}");
    // Two failures of the token endpoint open the breaker: the next call is refused at once,
    // without asking the token endpoint or the source.
    let started = Instant::now();
    let got = search(&engine, "a").await;
    assert!(got.status >= 500, "{}", got.text);
    assert!(
        got.text.contains("circuit") || got.text.contains("breaker"),
        "{}",
        got.text
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(servers.tokens(), asked);
    assert_eq!(servers.stand.resource_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_huge_token_answer_is_refused_at_its_cap() {
    let (got, _, servers) = hostile(Mode::Huge).await;
    assert_outcome(&got, 502, &["labs", "token endpoint", "larger than"]);
    assert_eq!(servers.stand.resource_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_token_answer_that_is_not_json_is_refused() {
    let (got, _, servers) = hostile(Mode::NotJson).await;
    assert_outcome(&got, 502, &["labs", "token endpoint", "not JSON"]);
    assert_eq!(servers.stand.resource_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_token_without_expires_in_is_kept_for_a_short_default() {
    let servers = Servers::start(
        Mode::NoExpiry,
        Expect::Secret(SECRET),
        Duration::from_secs(300),
    )
    .await;
    let (engine, _defs) = oauth2_engine(&servers, SECRET);
    assert_found(&search(&engine, "a").await);
    assert_found(&search(&engine, "b").await);
    assert_eq!(servers.tokens(), 1, "kept without expires_in");
}

/// A TLS server on 127.0.0.1 that requires a client certificate of the test CA, answering
/// `/items` as the resource server does to any caller it let in.
async fn mtls_server() -> String {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(data("ca.crt")).expect("CA"))
        .expect("CA added");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(data("server.crt"))
        .expect("server cert")
        .collect::<Result<_, _>>()
        .expect("server cert");
    let key = PrivateKeyDer::from_pem_file(data("server.key")).expect("server key");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (listener, url) = bind().await;
    let app = axum::Router::new().route(
        "/items",
        get(|| async { axum::Json(json!({"results": [{"id": "a1", "name": "Aspirin"}]})) }),
    );
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                // A handshake without a client certificate fails here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    url.replace("http://", "https://")
}

#[tokio::test]
async fn mtls_source_answers_with_the_certificate_and_refuses_without() {
    let url = mtls_server().await;
    let with_cert = format!(
        "  tls:\n    clientCert: \"${{file:{}}}\"\n    clientKey: \"${{file:{}}}\"\n    ca: \"${{file:{}}}\"",
        data("client.crt").display(),
        data("client.key").display(),
        data("ca.crt").display()
    );
    let (engine, _defs) = engine_of(&definitions_of(&url, &with_cert), &[]);
    assert_found(&search(&engine, "a").await);

    // The same server trusted, but no certificate presented: the handshake is refused.
    let without = format!("  tls:\n    ca: \"${{file:{}}}\"", data("ca.crt").display());
    let (engine, _defs) = engine_of(&definitions_of(&url, &without), &[]);
    let got = search(&engine, "a").await;
    assert_outcome(&got, 502, &["labs"]);

    // A certificate of the CA that is not for clients (the server's own): refused too.
    let wrong = format!(
        "  tls:\n    clientCert: \"${{file:{}}}\"\n    clientKey: \"${{file:{}}}\"\n    ca: \"${{file:{}}}\"",
        data("server.crt").display(),
        data("server.key").display(),
        data("ca.crt").display()
    );
    let (engine, _defs) = engine_of(&definitions_of(&url, &wrong), &[]);
    let got = search(&engine, "a").await;
    assert_outcome(&got, 502, &["labs"]);
}

// Sinks and guide downloads (issue 13, part 1 for the other outbound parties): the same `auth`
// as sources, through the same code.

/// A FHIR sink `store` at `servers`'s `/fhir` with `auth` (YAML at the spec's `fhir` indent),
/// and the writer the engine builds for it.
fn sink_writer(
    servers: &Servers,
    auth: &str,
    files: &[(&str, &str)],
) -> (engine::runtime::sink::Writer, tempfile::TempDir) {
    let mut yaml = format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata: {{ name: store }}
spec:
  fhir:
    url: "{}/fhir"
    version: R4
    timeout: 2s
    retries: 0
{auth}
"#,
        servers.url
    );
    let defs = definitions("");
    for (name, text) in files {
        let path = defs.path().join(name);
        std::fs::write(&path, text).expect("write secret file");
        yaml = yaml.replace(&format!("@{name}"), &path.display().to_string());
    }
    std::fs::write(defs.path().join("definitions.yaml"), yaml).expect("write definitions");
    let model = load(defs.path());
    let sink = model.sinks.get("store").expect("the sink").clone();
    let writer = engine::runtime::sink::Writer::new(
        &engine::model::SinkRef::Named(sink),
        &defs.path().join("ndjson"),
    )
    .expect("a writer");
    (writer, defs)
}

fn patients(ids: &[&str]) -> Vec<Value> {
    ids.iter()
        .map(|id| json!({"resourceType": "Patient", "id": id}))
        .collect()
}

fn sink_oauth2(url: &str) -> String {
    oauth2_auth(url)
        .lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn a_fhir_sink_writes_with_an_oauth2_token_kept_and_renewed_once_on_a_401() {
    let servers = Servers::issuing().await;
    let (writer, _defs) = sink_writer(&servers, &sink_oauth2(&servers.url), &[("secret", SECRET)]);
    let opts = engine::runtime::sink::WriteOptions::default();
    let report = writer.write(patients(&["p1", "p2"]), &opts).await;
    assert_eq!(report.written, 2, "{report:?}");
    let report = writer.write(patients(&["p3"]), &opts).await;
    assert_eq!(report.written, 1, "{report:?}");
    assert_eq!(servers.tokens(), 1, "one token for both writes");
    assert_eq!(servers.stand.sink_posts.load(Ordering::SeqCst), 2);

    // The server forgets its tokens (a restart): the next write is refused once, renews the
    // token, and goes through.
    servers.stand.live.lock().expect("lock").clear();
    let report = writer.write(patients(&["p4"]), &opts).await;
    assert_eq!(report.written, 1, "{report:?}");
    assert_eq!(servers.tokens(), 2, "renewed once");
    assert_eq!(servers.stand.sink_401s.load(Ordering::SeqCst), 1);

    // A server that refuses every token: renewed once, then the 401 stands.
    servers.stand.refuse_all.store(true, Ordering::SeqCst);
    let report = writer.write(patients(&["p5"]), &opts).await;
    assert_eq!(report.written, 0);
    assert_eq!(report.failures[0].status, Some(401), "{report:?}");
    assert_eq!(servers.tokens(), 3, "one renewal, not a loop");
    assert_eq!(servers.stand.sink_401s.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_fhir_sink_signs_a_smart_backend_assertion() {
    let key = DecodingKey::from_rsa_pem(read("rsa.pub.pem").as_bytes()).expect("public key");
    let servers = smart(Algorithm::RS384, key, "rsa.pem", None).await;
    let auth = smart_auth(&servers.url, "RS384", "rsa.pem", None)
        .lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    let (writer, _defs) = sink_writer(&servers, &auth, &[]);
    let report = writer
        .write(
            patients(&["p1"]),
            &engine::runtime::sink::WriteOptions::default(),
        )
        .await;
    assert_eq!(report.written, 1, "{report:?}");
    assert_eq!(servers.stand.refused_clients.load(Ordering::SeqCst), 0);
}

/// A write to a sink whose token endpoint is in `mode`: the report and how long it took.
async fn sink_write_with_token_endpoint(
    mode: Mode,
) -> (engine::runtime::sink::WriteReport, Duration, Servers) {
    let servers = Servers::start(mode, Expect::Secret(SECRET), Duration::from_secs(300)).await;
    let (writer, _defs) = sink_writer(&servers, &sink_oauth2(&servers.url), &[("secret", SECRET)]);
    let started = Instant::now();
    let report = tokio::time::timeout(
        CLIENT_TIMEOUT,
        writer.write(
            patients(&["p1"]),
            &engine::runtime::sink::WriteOptions::default(),
        ),
    )
    .await
    .expect("the write ends");
    (report, started.elapsed(), servers)
}

#[tokio::test]
async fn a_sink_token_endpoint_that_hangs_fails_the_write_by_its_timeout_as_transient() {
    let (report, took, servers) = sink_write_with_token_endpoint(Mode::Hang).await;
    assert_eq!(report.written, 0);
    let f = &report.failures[0];
    assert!(f.transient, "a hung endpoint may answer later: {f:?}");
    assert!(f.message.contains("token endpoint"), "{}", f.message);
    assert!(
        took < Duration::from_secs(4),
        "bounded by the sink's 2s: {took:?}"
    );
    assert_eq!(servers.stand.sink_posts.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_sink_token_answer_of_garbage_fails_the_write_for_good() {
    for (mode, words) in [(Mode::NotJson, "not JSON"), (Mode::Huge, "larger than")] {
        let (report, _, servers) = sink_write_with_token_endpoint(mode).await;
        assert_eq!(report.written, 0);
        let f = &report.failures[0];
        assert!(!f.transient, "{f:?}");
        assert!(f.message.contains(words), "{}", f.message);
        assert_eq!(servers.stand.sink_posts.load(Ordering::SeqCst), 0);
        assert_eq!(
            servers.stand.sink_401s.load(Ordering::SeqCst),
            0,
            "nothing sent"
        );
    }
}

#[tokio::test]
async fn a_sink_refused_by_its_token_endpoint_never_shows_the_secret() {
    let servers = Servers::issuing().await;
    let wrong = "wrong-Secret-Value-1234";
    let (writer, _defs) = sink_writer(&servers, &sink_oauth2(&servers.url), &[("secret", wrong)]);
    let report = writer
        .write(
            patients(&["p1"]),
            &engine::runtime::sink::WriteOptions::default(),
        )
        .await;
    let f = &report.failures[0];
    assert!(f.message.contains("invalid_client"), "{}", f.message);
    assert!(
        !f.message.contains(wrong),
        "the echoed secret is blanked: {}",
        f.message
    );
    assert_eq!(servers.stand.sink_posts.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_guide_package_is_downloaded_with_an_oauth2_token() {
    let servers = Servers::issuing().await;
    let auth = oauth2_auth(&servers.url)
        .lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    let yaml = format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: guarded-guide }}
spec:
  strategy: cron
  schedule: {{ cron: "0 3 * * *" }}
  import:
    guide: "{}/package.tgz"
    timeout: 5s
{auth}
"#,
        servers.url
    );
    let defs = definitions("");
    let secret = defs.path().join("secret");
    std::fs::write(&secret, SECRET).expect("secret");
    std::fs::write(
        defs.path().join("definitions.yaml"),
        yaml.replace("@secret", &secret.display().to_string()),
    )
    .expect("write");
    let model = load(defs.path());
    let engine::model::Strategy::Cron(cron) =
        &model.connector("guarded-guide").expect("c").strategy
    else {
        panic!("a cron connector");
    };
    let engine::model::CronRead::Import(import) = &cron.read else {
        panic!("an import");
    };
    let guide = engine::runtime::guide::read(import)
        .await
        .expect("the guide");
    assert_eq!(guide.resources.len(), 1, "{:?}", guide.skipped);
    assert_eq!(guide.resources[0].1["id"], "guarded");
    assert_eq!(servers.tokens(), 1);
    assert_eq!(servers.stand.packages.load(Ordering::SeqCst), 1);
}

/// A FHIR sink `store` whose `auth` or `tls` the HTTP layer refuses (a checked model has
/// none: the checks refuse such values first; the build still says whose they are).
fn refused_sink(
    auth: Option<engine::model::Auth>,
    tls: Option<engine::model::Tls>,
) -> engine::model::SinkRef {
    engine::model::SinkRef::Named(Arc::new(engine::model::Sink::Fhir(
        engine::model::FhirSink {
            name: "store".into(),
            url: url::Url::parse("http://127.0.0.1:9/fhir").expect("a URL"),
            version: engine::model::vocabulary::FhirVersion::R4,
            auth,
            tls,
            timeout: Duration::from_secs(2),
            batch_size: 10,
            concurrency: 1,
            mode: engine::model::vocabulary::BundleMode::Transaction,
            retries: 0,
            provenance: false,
        },
    )))
}

#[test]
fn a_sink_that_cannot_be_built_is_named_as_a_sink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = |s: &str| engine::model::Secret(s.to_owned());
    let header = refused_sink(
        Some(engine::model::Auth::ApiKey {
            header: "X-Key".into(),
            value: secret("line\nbreak"),
        }),
        None,
    );
    let tls = refused_sink(
        None,
        Some(engine::model::Tls {
            identity: None,
            ca: Some(secret(
                "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----",
            )),
        }),
    );
    for (sink, want) in [
        (header, "sink `store`: invalid credential"),
        (tls, "sink `store`: invalid TLS "),
    ] {
        let got = match engine::runtime::sink::Writer::new(&sink, dir.path()) {
            Ok(_) => panic!("the sink is built"),
            Err(e) => e.to_string(),
        };
        assert!(got.starts_with(want), "{got}");
        assert!(!got.contains("source"), "{got}");
    }
}
