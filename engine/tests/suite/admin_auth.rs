//! The admin API authenticates its callers: Keycloak-style access tokens (JWT) checked
//! against the issuer's JWKS, served by a stand-in Keycloak on 127.0.0.1 and signed here with
//! the test keys of `tests/data/admin-auth/`; a static token read from a file; closed by
//! default; the operations endpoints open. Also the issuer that lies, stalls, redirects or
//! answers without end, and the binary's flags.

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use engine::runtime::admin_access::{AdminAccess, OidcSettings, Roles};
use engine::runtime::engine::Limits;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::engine_router::EngineRouter;
use crate::engine_under_test::{definitions, load};
use crate::local_http::{Got, bind, client, send, spawn_app};
use crate::serve_process::ServeProcess;

const REALM_PATH: &str = "/auth/realms/GravitateHealth";
const AUDIENCE: &str = "fosps-connector-engine";
const OPERATOR: &str = "connector-admin";
const READER: &str = "connector-reader";
/// Longest one request to the engine may take before the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

fn data(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/admin-auth")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The public JWK of a test key (`rsa-1`, `rsa-2`, `ec-1`).
fn public_jwk(kid: &str) -> Value {
    let all: Value = serde_json::from_slice(&data("public-jwks.json")).expect("JSON");
    all[kid].clone()
}

/// A token signed with the test key `kid` (RS256 for `rsa-*`, ES256 for `ec-*`).
fn signed(kid: &str, claims: &Value) -> String {
    let pem = data(&format!("{kid}.pem"));
    let (alg, key) = if kid.starts_with("ec") {
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&pem).expect("an EC key"),
        )
    } else {
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&pem).expect("an RSA key"),
        )
    };
    let mut h = Header::new(alg);
    h.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&h, claims, &key).expect("a signed token")
}

/// Base64url without padding, as JWTs write their parts.
fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Claims as Keycloak writes them: realm roles in `realm_access.roles`, valid 5 minutes.
fn claims(issuer: &str, realm_roles: &[&str]) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "iss": issuer,
        "aud": [AUDIENCE, "account"],
        "sub": "0b7f4a1e-test-user",
        "iat": now,
        "exp": now + 300,
        "realm_access": {"roles": realm_roles},
        "scope": "openid profile",
    })
}

/// What the stand-in Keycloak does when asked for its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keys {
    /// Serves the JWKS.
    Serve,
    /// Never answers.
    Stall,
    /// Answers without end (chunked, no length).
    Endless,
    /// Redirects to another path that serves the same keys.
    Redirect,
    /// Starts the JWKS, then drops the connection.
    DieMidway,
}

struct KeycloakState {
    base: String,
    jwks: Mutex<Value>,
    keys: Mutex<Keys>,
    /// The `jwks_uri` its discovery document names.
    jwks_uri: Mutex<String>,
    discovery_calls: AtomicUsize,
    jwks_calls: AtomicUsize,
    redirected_calls: AtomicUsize,
}

/// A stand-in Keycloak realm: a discovery document and a JWKS.
struct Keycloak {
    issuer: String,
    state: Arc<KeycloakState>,
    _task: tokio::task::JoinHandle<()>,
}

impl Keycloak {
    async fn start(kids: &[&str]) -> Keycloak {
        let (listener, base) = bind().await;
        let issuer = format!("{base}{REALM_PATH}");
        let state = Arc::new(KeycloakState {
            jwks_uri: Mutex::new(format!("{issuer}/protocol/openid-connect/certs")),
            base,
            jwks: Mutex::new(Value::Null),
            keys: Mutex::new(Keys::Serve),
            discovery_calls: AtomicUsize::new(0),
            jwks_calls: AtomicUsize::new(0),
            redirected_calls: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route(
                &format!("{REALM_PATH}/.well-known/openid-configuration"),
                get(discovery),
            )
            .route(
                &format!("{REALM_PATH}/protocol/openid-connect/certs"),
                get(certs),
            )
            .route("/moved/certs", get(moved))
            .with_state(state.clone());
        let kc = Keycloak {
            issuer,
            state,
            _task: spawn_app(listener, app),
        };
        kc.serve_keys(kids);
        kc
    }

    /// Serves these keys from now on (a rotation).
    fn serve_keys(&self, kids: &[&str]) {
        let keys: Vec<Value> = kids.iter().map(|k| public_jwk(k)).collect();
        *self.state.jwks.lock().expect("jwks") = json!({"keys": keys});
    }

    fn behave(&self, keys: Keys) {
        *self.state.keys.lock().expect("keys") = keys;
    }

    fn jwks_calls(&self) -> usize {
        self.state.jwks_calls.load(Ordering::SeqCst)
    }

    fn discovery_calls(&self) -> usize {
        self.state.discovery_calls.load(Ordering::SeqCst)
    }

    /// The engine's setting for this issuer: default fetch rules, but a 1 s timeout.
    fn settings(&self) -> OidcSettings {
        OidcSettings {
            timeout: Duration::from_secs(1),
            ..OidcSettings::new(&self.issuer, AUDIENCE)
        }
    }
}

async fn discovery(State(s): State<Arc<KeycloakState>>) -> Response {
    s.discovery_calls.fetch_add(1, Ordering::SeqCst);
    let issuer = format!("{}{REALM_PATH}", s.base);
    let jwks_uri = s.jwks_uri.lock().expect("jwks_uri").clone();
    axum::Json(json!({"issuer": issuer, "jwks_uri": jwks_uri})).into_response()
}

async fn certs(State(s): State<Arc<KeycloakState>>) -> Response {
    s.jwks_calls.fetch_add(1, Ordering::SeqCst);
    let behaviour = *s.keys.lock().expect("keys");
    match behaviour {
        Keys::Serve => axum::Json(s.jwks.lock().expect("jwks").clone()).into_response(),
        Keys::Stall => std::future::pending::<Response>().await,
        Keys::Endless => {
            let chunk = Bytes::from(vec![b' '; 8192]);
            let body = Body::from_stream(futures_util::stream::repeat_with(move || {
                Ok::<_, Infallible>(chunk.clone())
            }));
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        Keys::DieMidway => {
            let parts: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from_static(br#"{"keys": [{"kty": "RSA", "#)),
                Err(std::io::Error::other("the issuer died midway")),
            ];
            let body = Body::from_stream(futures_util::stream::iter(parts));
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        Keys::Redirect => (
            StatusCode::FOUND,
            [(header::LOCATION, format!("{}/moved/certs", s.base))],
        )
            .into_response(),
    }
}

async fn moved(State(s): State<Arc<KeycloakState>>) -> Response {
    s.redirected_calls.fetch_add(1, Ordering::SeqCst);
    axum::Json(s.jwks.lock().expect("jwks").clone()).into_response()
}

/// A pull connector with a cache (its source is never called): something for every admin
/// route to act on.
const DEFINITIONS: &str = r#"
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata:
  name: labels
spec:
  strategy: pull
  fhirVersion: R5
  source:
    url: http://127.0.0.1:9
    timeout: 1s
    retries: 0
  pull:
    resources:
      - type: MedicinalProductDefinition
        search:
          params: { name: {} }
          request: { path: /labels, query: { name: "{{params.name}}" } }
          records: $.results[*]
  cache: { ttl: 10m }
  mapping:
    resourceType: MedicinalProductDefinition
    id: { $path: $.id }
"#;

fn roles() -> Roles {
    Roles {
        operator: OPERATOR.into(),
        reader: READER.into(),
    }
}

/// The engine of `DEFINITIONS` whose admin API is guarded by `admin`.
fn engine_with(admin: AdminAccess) -> (EngineRouter, tempfile::TempDir) {
    let defs = definitions(DEFINITIONS);
    let engine = EngineRouter::with_limits(
        load(defs.path()),
        &defs.path().join("state"),
        Limits {
            admin,
            ..Limits::default()
        },
        CLIENT_TIMEOUT,
    );
    (engine, defs)
}

/// `GET /connectors` with `Authorization: Bearer token`.
async fn list_with(engine: &EngineRouter, token: &str) -> Got {
    engine
        .get("/connectors")
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
}

/// `DELETE /connectors/labels/cache` with `Authorization: Bearer token`.
async fn empty_cache_with(engine: &EngineRouter, token: &str) -> Got {
    engine
        .delete("/connectors/labels/cache")
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
}

/// An `OperationOutcome` answer with this status whose diagnostics hold `words`.
fn assert_refused(got: &Got, status: u16, words: &str, what: &str) {
    assert_eq!(got.status, status, "{what}: {}", got.text);
    assert_eq!(
        got.header("content-type"),
        "application/fhir+json",
        "{what}"
    );
    let body = got.json();
    assert_eq!(body["resourceType"], "OperationOutcome", "{what}: {body}");
    let diagnostics = body["issue"][0]["diagnostics"].as_str().unwrap_or("");
    assert!(
        diagnostics.contains(words),
        "{what}: {diagnostics:?} should say {words:?}"
    );
    if status == 401 {
        assert!(
            got.header("www-authenticate").starts_with("Bearer "),
            "{what}: a 401 names the Bearer scheme: {:?}",
            got.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_are_checked_against_the_issuers_keys_and_roles() {
    let kc = Keycloak::start(&["rsa-1", "ec-1"]).await;
    let access = AdminAccess::new(None, Some(kc.settings()), roles()).expect("admin access");
    let (engine, _defs) = engine_with(access);
    let iss = kc.issuer.clone();

    // No token, a token of another scheme, garbage.
    let got = engine.get("/connectors").send().await;
    assert_refused(&got, 401, "needs a bearer token", "no token");
    let got = engine
        .get("/connectors")
        .header("authorization", "Basic YWRtaW46YWRtaW4=")
        .send()
        .await;
    assert_refused(&got, 401, "needs a bearer token", "basic auth");
    let long = "x".repeat(10_000);
    for garbage in [
        "garbage",
        "a.b.c",
        "eyJhbGciOiJSUzI1NiJ9.e30.",
        long.as_str(),
    ] {
        let got = list_with(&engine, garbage).await;
        assert_refused(&got, 401, "not valid", "garbage");
    }

    // Expired (beyond the leeway), wrong issuer, wrong audience, not valid yet, no exp.
    let mut expired = claims(&iss, &[OPERATOR]);
    expired["exp"] = json!(chrono::Utc::now().timestamp() - 120);
    let got = list_with(&engine, &signed("rsa-1", &expired)).await;
    assert_refused(&got, 401, "expired", "expired");
    let mut other_issuer = claims(&iss, &[OPERATOR]);
    other_issuer["iss"] = json!("https://elsewhere.example/auth/realms/GravitateHealth");
    let got = list_with(&engine, &signed("rsa-1", &other_issuer)).await;
    assert_refused(&got, 401, "not valid", "wrong issuer");
    let mut other_audience = claims(&iss, &[OPERATOR]);
    other_audience["aud"] = json!("another-client");
    let got = list_with(&engine, &signed("rsa-1", &other_audience)).await;
    assert_refused(&got, 401, "not valid", "wrong audience");
    let mut early = claims(&iss, &[OPERATOR]);
    early["nbf"] = json!(chrono::Utc::now().timestamp() + 600);
    let got = list_with(&engine, &signed("rsa-1", &early)).await;
    assert_refused(&got, 401, "not valid", "not valid yet");
    let mut no_exp = claims(&iss, &[OPERATOR]);
    no_exp.as_object_mut().expect("claims").remove("exp");
    let got = list_with(&engine, &signed("rsa-1", &no_exp)).await;
    assert_refused(&got, 401, "not valid", "no exp");

    // `alg: none`, and HS256 with the public key as its secret (algorithm confusion).
    let admin_claims = claims(&iss, &[OPERATOR]);
    let payload = b64(&serde_json::to_vec(&admin_claims).expect("JSON"));
    for header in [
        json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"}),
        json!({"alg": "None", "typ": "JWT", "kid": "rsa-1"}),
    ] {
        let none = format!("{}.{payload}.", b64(header.to_string().as_bytes()));
        let got = list_with(&engine, &none).await;
        assert_refused(&got, 401, "not valid", "alg none");
    }
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("rsa-1".into());
    let confused = jsonwebtoken::encode(
        &hs,
        &admin_claims,
        &EncodingKey::from_secret(&data("rsa-1.pub.pem")),
    )
    .expect("an HS256 token");
    let got = list_with(&engine, &confused).await;
    assert_refused(&got, 401, "not valid", "HS256 with the public key");
    // A good token whose signature was changed, and one signed by a key the realm lacks
    // under the kid of one it has.
    let good = signed("rsa-1", &admin_claims);
    let (head, sig) = good.rsplit_once('.').expect("a JWT");
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    let got = list_with(&engine, &format!("{head}.{flipped}{}", &sig[1..])).await;
    assert_refused(&got, 401, "not valid", "tampered signature");
    let forged = {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("rsa-1".into());
        let key = EncodingKey::from_rsa_pem(&data("rsa-2.pem")).expect("an RSA key");
        jsonwebtoken::encode(&h, &admin_claims, &key).expect("a token")
    };
    let got = list_with(&engine, &forged).await;
    assert_refused(&got, 401, "not valid", "signed by another key");

    // Valid, but without a role that allows it: 403 (reading and acting).
    let nobody = signed("rsa-1", &claims(&iss, &["offline_access"]));
    let got = list_with(&engine, &nobody).await;
    assert_refused(&got, 403, "reader or operator role", "no role");
    let reader = signed("rsa-1", &claims(&iss, &[READER]));
    let got = empty_cache_with(&engine, &reader).await;
    assert_refused(&got, 403, "operator role", "a reader empties a cache");

    // With the roles: a reader reads, an operator reads and acts.
    let got = list_with(&engine, &reader).await;
    assert_eq!(got.status, 200, "reader lists: {}", got.text);
    assert_eq!(got.json()[0]["name"], "labels", "{}", got.text);
    for path in ["/connectors/list", "/connectors/labels", "/reload"] {
        let got = engine
            .get(path)
            .header("authorization", format!("Bearer {reader}"))
            .send()
            .await;
        assert_eq!(got.status, 200, "reader: {path}: {}", got.text);
    }
    let got = empty_cache_with(&engine, &good).await;
    assert_eq!(got.status, 200, "operator empties the cache: {}", got.text);
    assert_eq!(got.json()["connector"], "labels", "{}", got.text);
    // Within the leeway, an expired-seconds-ago token still passes.
    let mut just = claims(&iss, &[OPERATOR]);
    just["exp"] = json!(chrono::Utc::now().timestamp() - 5);
    let got = list_with(&engine, &signed("rsa-1", &just)).await;
    assert_eq!(got.status, 200, "within the leeway: {}", got.text);

    // The role as a client role of the audience, or as a scope; ES256.
    let mut client_role = claims(&iss, &[]);
    client_role["resource_access"] = json!({AUDIENCE: {"roles": [OPERATOR]}});
    let got = empty_cache_with(&engine, &signed("rsa-1", &client_role)).await;
    assert_eq!(got.status, 200, "client role: {}", got.text);
    let mut other_client = claims(&iss, &[]);
    other_client["resource_access"] = json!({"another-client": {"roles": [OPERATOR]}});
    let got = empty_cache_with(&engine, &signed("rsa-1", &other_client)).await;
    assert_refused(&got, 403, "operator role", "another client's role");
    let mut scope = claims(&iss, &[]);
    scope["scope"] = json!(format!("openid {READER}"));
    let got = list_with(&engine, &signed("rsa-1", &scope)).await;
    assert_eq!(got.status, 200, "scope: {}", got.text);
    let got = empty_cache_with(&engine, &signed("ec-1", &admin_claims)).await;
    assert_eq!(got.status, 200, "ES256: {}", got.text);

    // One discovery and one JWKS fetch served all of it.
    assert_eq!(kc.discovery_calls(), 1);
    assert_eq!(kc.jwks_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_needs_the_reader_role_and_its_run_button_the_operator_role() {
    let kc = Keycloak::start(&["rsa-1"]).await;
    let access = AdminAccess::new(None, Some(kc.settings()), roles()).expect("admin access");
    let (engine, _defs) = engine_with(access);
    let iss = kc.issuer.clone();
    let page = |token: String| {
        engine
            .get("/ui/")
            .header("authorization", format!("Bearer {token}"))
            .send()
    };
    let reader = signed("rsa-1", &claims(&iss, &[READER]));
    let operator = signed("rsa-1", &claims(&iss, &[OPERATOR]));
    let nobody = signed("rsa-1", &claims(&iss, &["offline_access"]));
    let got = engine.get("/ui/").send().await;
    assert_refused(
        &got,
        401,
        "needs a bearer token",
        "the page without a token",
    );
    let got = page(nobody.clone()).await;
    assert_refused(
        &got,
        403,
        "reader or operator role",
        "the page without a role",
    );
    for token in [&reader, &operator] {
        let got = page(token.clone()).await;
        assert_eq!(got.status, 200, "{}", got.text);
        assert!(got.text.contains("id=\"c-labels\""), "{}", got.text);
    }
    // The button, from the page's own origin: the reader is refused before anything runs;
    // the operator reaches the run (and `labels`, a pull connector, has none to start).
    let press = |token: String| {
        engine
            .post("/ui/connectors/labels/run")
            .header("authorization", format!("Bearer {token}"))
            .header("sec-fetch-site", "same-origin")
            .send()
    };
    let got = press(reader).await;
    assert_refused(&got, 403, "operator role", "the reader presses the button");
    let got = press(operator).await;
    assert_refused(
        &got,
        404,
        "no cron connector",
        "the operator presses the button",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_read_by_a_reader_and_replayed_or_deleted_by_an_operator_only() {
    let kc = Keycloak::start(&["rsa-1"]).await;
    let access = AdminAccess::new(None, Some(kc.settings()), roles()).expect("admin access");
    let (engine, _defs) = engine_with(access);
    let reader = signed("rsa-1", &claims(&kc.issuer, &[READER]));
    let operator = signed("rsa-1", &claims(&kc.issuer, &[OPERATOR]));
    let letter = "/connectors/labels/dead-letters/00000000000000000001";
    // `labels` is a pull connector: a caller let through hears that it has no dead letters.
    for token in [&reader, &operator] {
        let got = engine
            .get(letter)
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await;
        assert_refused(&got, 404, "no push or cron connector", "a letter read");
    }
    for (method, path) in [
        ("POST", format!("{letter}/replay")),
        ("DELETE", letter.to_owned()),
    ] {
        let call = |token: Option<&str>| {
            let call = match method {
                "POST" => engine.post(&path),
                _ => engine.delete(&path),
            };
            match token {
                Some(t) => call.header("authorization", format!("Bearer {t}")),
                None => call,
            }
        };
        let got = call(None).send().await;
        assert_refused(&got, 401, "needs a bearer token", &path);
        let got = call(Some(&reader)).send().await;
        assert_refused(&got, 403, "operator role", &path);
        let got = call(Some(&operator)).send().await;
        assert_refused(&got, 404, "no push or cron connector", &path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_fetched_once_and_made_up_kids_do_not_reach_the_issuer() {
    let kc = Keycloak::start(&["rsa-1"]).await;
    let access = AdminAccess::new(None, Some(kc.settings()), roles()).expect("admin access");
    let (engine, _defs) = engine_with(access);
    let old = signed("rsa-1", &claims(&kc.issuer, &[READER]));
    let got = list_with(&engine, &old).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(kc.jwks_calls(), 1);

    // The realm rotates its key: rsa-2 replaces rsa-1.
    kc.serve_keys(&["rsa-2"]);
    let new = signed("rsa-2", &claims(&kc.issuer, &[READER]));
    let got = list_with(&engine, &new).await;
    assert_eq!(got.status, 200, "the new key after one fetch: {}", got.text);
    assert_eq!(kc.jwks_calls(), 2, "one more fetch for the new kid");
    let got = list_with(&engine, &new).await;
    assert_eq!(got.status, 200, "{}", got.text);
    // The retired key is no longer accepted.
    let got = list_with(&engine, &old).await;
    assert_refused(&got, 401, "not valid", "the retired key");

    // A flood of made-up kids: refused, and the issuer is not asked again.
    let floods = (0..50).map(|i| {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(format!("made-up-{i}"));
        let key = EncodingKey::from_rsa_pem(&data("rsa-1.pem")).expect("an RSA key");
        jsonwebtoken::encode(&h, &claims(&kc.issuer, &[OPERATOR]), &key).expect("a token")
    });
    for token in floods {
        let got = list_with(&engine, &token).await;
        assert_refused(&got, 401, "not valid", "made-up kid");
    }
    assert_eq!(kc.jwks_calls(), 2, "made-up kids fetched nothing");
    assert_eq!(kc.discovery_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_that_stalls_redirects_dies_answers_without_end_or_lies_is_not_trusted() {
    let kc = Keycloak::start(&["rsa-1"]).await;
    let token = signed("rsa-1", &claims(&kc.issuer, &[OPERATOR]));

    // Each case with an engine of its own (nothing fetched yet), and its keys' URL given.
    let jwks_url = format!("{}/protocol/openid-connect/certs", kc.issuer);
    let cases = [
        (Keys::Stall, "stalls"),
        (Keys::Endless, "answers without end"),
        (Keys::Redirect, "redirects"),
        (Keys::DieMidway, "dies midway"),
    ];
    for (behaviour, what) in cases {
        kc.behave(behaviour);
        let settings = OidcSettings {
            jwks_url: Some(jwks_url.clone()),
            ..kc.settings()
        };
        let access = AdminAccess::new(None, Some(settings), roles()).expect("admin access");
        let (engine, _defs) = engine_with(access);
        let calls = kc.jwks_calls();
        let started = tokio::time::Instant::now();
        let got = list_with(&engine, &token).await;
        assert_refused(&got, 503, "cannot be checked now", what);
        assert!(
            !got.header("retry-after").is_empty(),
            "{what}: a 503 says when to retry"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: answered within the fetch timeout, took {:?}",
            started.elapsed()
        );
        // Right after a failed fetch, requests do not make the engine fetch again.
        for _ in 0..10 {
            let got = list_with(&engine, &token).await;
            assert_eq!(got.status, 503, "{what}: {}", got.text);
        }
        assert_eq!(kc.jwks_calls(), calls + 1, "{what}: one fetch only");
    }
    assert_eq!(
        kc.state.redirected_calls.load(Ordering::SeqCst),
        0,
        "the redirect was not followed"
    );

    // A discovery document that sends the engine to another origin for its keys.
    kc.behave(Keys::Serve);
    let (_other, elsewhere) = bind().await;
    *kc.state.jwks_uri.lock().expect("jwks_uri") = format!("{elsewhere}/certs");
    let access = AdminAccess::new(None, Some(kc.settings()), roles()).expect("admin access");
    let (engine, _defs) = engine_with(access);
    let got = list_with(&engine, &token).await;
    assert_refused(&got, 503, "cannot be checked now", "a foreign jwks_uri");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_token_allows_everything_and_a_wrong_one_is_refused() {
    let secret = "local-admin-token-0123456789";
    let access = AdminAccess::new(Some(engine::model::Secret(secret.into())), None, roles())
        .expect("admin access");
    let (engine, _defs) = engine_with(access);
    let got = list_with(&engine, secret).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let got = empty_cache_with(&engine, secret).await;
    assert_eq!(got.status, 200, "{}", got.text);
    for wrong in [
        "local-admin-token-0123456788",
        "local-admin-token-012345678",
        "local-admin-token-0123456789x",
        "",
    ] {
        let got = empty_cache_with(&engine, wrong).await;
        assert_eq!(got.status, 401, "{wrong:?}: {}", got.text);
        assert!(!got.text.contains(secret), "{}", got.text);
    }
    // Two Authorization headers, one of them right: refused.
    let got = engine
        .get("/connectors")
        .header("authorization", format!("Bearer {secret}"))
        .header("authorization", "Bearer other")
        .send()
        .await;
    assert_refused(&got, 401, "not valid", "two headers");
    // A short token is refused at start.
    assert!(AdminAccess::new(Some(engine::model::Secret("short".into())), None, roles()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_by_default_while_operations_and_fhir_routes_stay_open() {
    let (engine, _defs) = engine_with(Limits::default().admin);
    for (method, path) in [
        ("GET", "/connectors"),
        ("GET", "/connectors/list"),
        ("GET", "/connectors/labels"),
        ("GET", "/connectors/labels/dead-letters"),
        ("GET", "/reload"),
        ("POST", "/connectors/labels/run"),
        ("DELETE", "/connectors/labels/cache"),
    ] {
        let call = match method {
            "GET" => engine.get(path),
            "POST" => engine.post(path),
            _ => engine.delete(path),
        };
        let got = call
            .header("authorization", "Bearer anything-at-all-0123456789")
            .send()
            .await;
        assert_refused(&got, 403, "closed", path);
    }
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let got = engine.get(path).send().await;
        assert_eq!(got.status, 200, "{path}: {}", got.text);
    }
    // A pull route is not the admin API's business (its source is down here: 502 or 504).
    let got = engine
        .get("/fhir/labels/MedicinalProductDefinition?name=x")
        .send()
        .await;
    assert!(
        ![401, 403].contains(&got.status),
        "a FHIR route is not behind the admin check: {}",
        got.text
    );
    // Open, on request.
    let (engine, _defs) = engine_with(AdminAccess::open());
    let got = engine.get("/connectors").send().await;
    assert_eq!(got.status, 200, "{}", got.text);
}

/// `engine serve` of `DEFINITIONS` with `flags`, its admin environment cleared.
async fn serve_binary(defs: &Path, state: &Path, flags: &[&str]) -> ServeProcess {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"));
    cmd.arg("serve").arg(defs).arg("--state-dir").arg(state);
    cmd.args(flags);
    for var in [
        "ENGINE_ADMIN_TOKEN_FILE",
        "ENGINE_OIDC_ISSUER",
        "ENGINE_OIDC_AUDIENCE",
        "ENGINE_OIDC_JWKS_URL",
        "ENGINE_ADMIN_ROLE",
        "ENGINE_ADMIN_READ_ROLE",
        "ENGINE_ADMIN_OPEN",
        "ENGINE_PUBLIC_URL",
    ] {
        cmd.env_remove(var);
    }
    ServeProcess::start(cmd, Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_takes_its_admin_flags_and_never_logs_a_token() {
    let defs = definitions(DEFINITIONS);
    let state = tempfile::tempdir().expect("tempdir");
    let c = client(CLIENT_TIMEOUT);
    let secret = "file-admin-token-abcdefghijkl";
    let token_file = defs.path().join("admin-token");
    std::fs::write(&token_file, format!("{secret}\n")).expect("write the token file");
    // Beside the definitions, but not a definition.
    let defs_dir = defs.path().join("connectors.d");
    std::fs::create_dir(&defs_dir).expect("a folder");
    std::fs::write(defs_dir.join("labels.yaml"), DEFINITIONS).expect("write");

    // --admin-token-file: the token read from the file works; a wrong one does not.
    let token_path = token_file.to_string_lossy().into_owned();
    let server = serve_binary(
        &defs_dir,
        state.path(),
        &["--admin-token-file", &token_path],
    )
    .await;
    let base = server.base.clone();
    let got = send(c.get(format!("{base}/connectors")).bearer_auth(secret)).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let wrong = "wrong-admin-token-abcdefghijkl";
    let got = send(
        c.delete(format!("{base}/connectors/labels/cache"))
            .bearer_auth(wrong),
    )
    .await;
    assert_eq!(got.status, 401, "{}", got.text);
    let got = send(c.get(format!("{base}/connectors"))).await;
    assert_eq!(got.status, 401, "{}", got.text);
    let got = send(c.get(format!("{base}/healthz"))).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let mut server = server;
    server.child.start_kill().expect("kill");
    let (_, log) = server.exit(Duration::from_secs(10)).await;
    assert!(log.contains("admin request refused"), "{log}");
    assert!(
        !log.contains(secret) && !log.contains(wrong),
        "a token in the log:\n{log}"
    );

    // No admin flag: closed (and it says so); --admin-open: open, with a warning.
    let server = serve_binary(&defs_dir, state.path(), &[]).await;
    let got = send(
        c.get(format!("{}/connectors", server.base))
            .bearer_auth(secret),
    )
    .await;
    assert_eq!(got.status, 403, "{}", got.text);
    let mut server = server;
    server.child.start_kill().expect("kill");
    let (_, log) = server.exit(Duration::from_secs(10)).await;
    assert!(log.contains("the admin API is closed"), "{log}");
    let server = serve_binary(&defs_dir, state.path(), &["--admin-open"]).await;
    let got = send(c.get(format!("{}/connectors", server.base))).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let mut server = server;
    server.child.start_kill().expect("kill");
    let (_, log) = server.exit(Duration::from_secs(10)).await;
    assert!(log.contains("open to every caller"), "{log}");

    // Flags that cannot work are refused before serving.
    for flags in [
        vec![
            "--oidc-issuer",
            "https://kc.example/auth/realms/GravitateHealth",
        ],
        vec!["--admin-open", "--admin-token-file", token_path.as_str()],
        vec!["--oidc-issuer", "not a url", "--oidc-audience", AUDIENCE],
    ] {
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::process::Command::new(env!("CARGO_BIN_EXE_engine"))
                .arg("serve")
                .arg(&defs_dir)
                .args(["--listen", "127.0.0.1:0"])
                .args(&flags)
                .env_remove("ENGINE_ADMIN_OPEN")
                .env_remove("ENGINE_ADMIN_TOKEN_FILE")
                .env_remove("ENGINE_OIDC_AUDIENCE")
                .output(),
        )
        .await
        .expect("the engine exits in time")
        .expect("the engine runs");
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {out:?}");
    }
}

/// A file of `deploy/base/` as JSON (its one YAML document, the generated header skipped).
fn deployed(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/base")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let parsed = engine::config::yaml::parse(&text);
    assert!(parsed.errors.is_empty(), "{name}: {:?}", parsed.errors);
    parsed.documents[0].to_json()
}

#[test]
fn the_mesh_requires_the_roles_and_only_the_gateway_and_clients_reach_the_pods() {
    // `cli::committed_deploy_matches_the_generator` holds these files to the generator.
    let policy = deployed("authorizationpolicy.yaml");
    let rules = policy["spec"]["rules"].as_array().expect("rules");
    let roles_claim = "request.auth.claims[realm_access][roles]";
    let is_admin = |p: &str| p == "/reload" || p.starts_with("/connectors");
    let mut acting = 0;
    let mut reading = 0;
    let mut acting_paths = Vec::new();
    let mut reading_paths = Vec::new();
    for rule in rules {
        for to in rule["to"].as_array().expect("to") {
            let methods: Vec<&str> = to["operation"]["methods"]
                .as_array()
                .expect("methods")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let paths: Vec<&str> = to["operation"]["paths"]
                .as_array()
                .expect("paths")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            if !paths.iter().any(|p| is_admin(p)) || methods == ["OPTIONS"] {
                continue;
            }
            // An admin path: only for a JWT of the realm carrying the role.
            assert_eq!(
                rule["from"][0]["source"]["requestPrincipals"],
                json!(["*"]),
                "{rule}"
            );
            assert_eq!(rule["when"][0]["key"], roles_claim, "{rule}");
            let allowed = &rule["when"][0]["values"];
            if methods.iter().any(|m| *m == "POST" || *m == "DELETE") {
                assert_eq!(
                    allowed,
                    &json!([OPERATOR]),
                    "acting needs the operator: {rule}"
                );
                acting += paths.len();
                acting_paths.extend(paths.iter().map(|p| (p.to_string(), methods.clone())));
            } else {
                assert_eq!(methods, ["GET"], "{rule}");
                assert_eq!(allowed, &json!([READER, OPERATOR]), "{rule}");
                reading += paths.len();
                reading_paths.extend(paths.iter().map(|p| p.to_string()));
            }
        }
    }
    assert!(acting >= 5, "runs and cache deletes are in the policy");
    assert!(
        reading >= 4,
        "listings, /reload and dead letters are in the policy"
    );
    // A dead letter is read by a reader, replayed (POST) or deleted (DELETE) by an operator.
    let letters = "/connectors/label-webhook/dead-letters/*";
    assert!(
        reading_paths.iter().any(|p| p == letters),
        "{reading_paths:?}"
    );
    assert!(
        acting_paths
            .iter()
            .any(|(p, m)| p == letters && m.contains(&"POST") && m.contains(&"DELETE")),
        "{acting_paths:?}"
    );

    let net = deployed("networkpolicy.yaml");
    assert_eq!(net["kind"], "NetworkPolicy");
    assert_eq!(net["spec"]["policyTypes"], json!(["Ingress"]));
    let ingress = net["spec"]["ingress"].as_array().expect("ingress");
    assert_eq!(ingress.len(), 1, "{net}");
    assert_eq!(
        ingress[0]["from"],
        json!([
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "istio-system"}},
                "podSelector": {"matchLabels": {"app": "istio-ingressgateway"}}
            },
            {"podSelector": {"matchLabels": {"eu.gravitate-health.fosps.connector-client": "true"}}}
        ])
    );
    assert_eq!(
        ingress[0]["ports"],
        json!([{"protocol": "TCP", "port": 8080}])
    );

    // Kustomize applies it, and the engine is told its issuer and audience.
    let kustomization = deployed("kustomization.yaml");
    assert!(
        kustomization["resources"]
            .as_array()
            .expect("resources")
            .contains(&json!("networkpolicy.yaml")),
        "{kustomization}"
    );
    let deployment = deployed("deployment.yaml");
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    for var in ["ENGINE_OIDC_ISSUER", "ENGINE_OIDC_AUDIENCE"] {
        assert!(env.contains(var), "{var} in {env}");
    }
}
