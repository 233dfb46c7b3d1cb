//! Who may call the admin API: nobody (the default), everybody (`--admin-open`, for local
//! use), or the holders of a static bearer token and of OIDC access tokens (JWTs) of one
//! issuer that carry a reader or an operator role. JWTs are checked against the issuer's
//! JWKS: RS256 or ES256 only, the key chosen by `kid`, `iss` and `aud` compared, `exp` and
//! `nbf` read on the engine's clock with a small leeway. The JWKS is fetched with its own
//! client (no redirects, a timeout, a size cap), kept for a TTL, and fetched again at most once
//! per interval for a `kid` it does not hold, so a key rotation is picked up at once and a
//! flood of made-up `kid`s does not reach the issuer. Nothing here sees axum: `http::auth`
//! reads the request and turns a `Refusal` into the answer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::model::Secret;

/// Seconds of clock difference accepted on `exp` and `nbf`.
pub const LEEWAY_SECONDS: i64 = 30;
/// Fewest characters of a static admin token.
pub const MIN_TOKEN_CHARS: usize = 16;
/// Longest bearer token read.
const MAX_TOKEN_BYTES: usize = 16 << 10;
/// Most keys of a JWKS kept (the rest are ignored).
const MAX_KEYS: usize = 64;
/// After a failed fetch of the issuer's keys, none is tried again for this long.
const FAILED_FETCH_PAUSE: Duration = Duration::from_secs(5);

/// What an admin request does: read (listings, reload status, dead letters) or act (start a
/// run, empty a cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Operate,
}

/// The role (or scope) names that allow admin requests: the operator role allows everything,
/// the reader role reading only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    pub operator: String,
    pub reader: String,
}

/// The OIDC issuer whose access tokens are accepted.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// The issuer (`iss`), e.g. `https://host/auth/realms/GravitateHealth`.
    pub issuer: String,
    /// The audience (`aud`) a token must name; its client roles count too.
    pub audience: String,
    /// The JWKS; by default the `jwks_uri` of the issuer's
    /// `/.well-known/openid-configuration` (which must be on the issuer's origin).
    pub jwks_url: Option<String>,
    /// Longest a fetch of the discovery document or the JWKS may take.
    pub timeout: Duration,
    /// How long fetched keys are used before they are fetched again.
    pub ttl: Duration,
    /// Least time between two fetches caused by a `kid` the keys do not hold.
    pub unknown_kid_interval: Duration,
    /// Largest discovery document or JWKS read.
    pub max_bytes: usize,
}

impl OidcSettings {
    /// The issuer and audience, with the default fetch rules: 10 s timeout, keys kept 10
    /// minutes, an unknown `kid` fetched again at most every 30 s, documents up to 256 KiB.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> OidcSettings {
        OidcSettings {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks_url: None,
            timeout: Duration::from_secs(10),
            ttl: Duration::from_secs(600),
            unknown_kid_interval: Duration::from_secs(30),
            max_bytes: 256 << 10,
        }
    }
}

/// Why the admin access could not be set up (a usage error of `engine serve`).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("the admin token file cannot be read: {0}")]
    TokenFile(std::io::ErrorKind),
    #[error("the admin token must have at least {MIN_TOKEN_CHARS} characters (and no spaces)")]
    WeakToken,
    #[error("{what} `{value}` is not an http(s) URL")]
    Url { what: &'static str, value: String },
    #[error("the OIDC audience is empty")]
    NoAudience,
    #[error("the admin roles must be non-empty names")]
    NoRole,
    #[error("the client that fetches the issuer's keys: {0}")]
    Client(String),
}

/// Why an admin request is refused. The texts are for the log: `http::auth` tells the caller
/// less.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No admin authentication is configured, and the API is not open.
    #[error("the admin API is closed (no admin authentication configured)")]
    Closed,
    /// No bearer token.
    #[error("no bearer token")]
    Missing,
    /// A well-signed token past its `exp`.
    #[error("the token has expired")]
    Expired,
    /// Anything else wrong with the token; the reason is for the log only.
    #[error("the token is not valid: {0}")]
    Invalid(&'static str),
    /// A valid token without the role the request needs.
    #[error("the token lacks the {0:?} role")]
    Forbidden(Need),
    /// The issuer's keys cannot be had, so no token can be checked now.
    #[error("the issuer's keys cannot be had: {0}")]
    KeysUnavailable(KeysError),
}

/// Why the issuer's keys could not be fetched (never with a URL or a token in the text).
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeysError {
    #[error("no answer in time")]
    Timeout,
    #[error("the connection failed: {0}")]
    Transport(String),
    #[error("answered {0}")]
    Status(u16),
    #[error("answered a redirect, which is not followed")]
    Redirected,
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the answer is not a JSON document of the expected shape")]
    NotJson,
    #[error("the discovery document names another issuer")]
    IssuerMismatch,
    #[error("the discovery document's jwks_uri is not on the issuer's origin")]
    CrossOrigin,
    #[error("the JWKS holds no RS256 or ES256 signing key")]
    NoKeys,
    #[error("a fetch failed moments ago; not tried again yet")]
    Paused,
}

/// Who was let in, for the audit log line of an admin operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`, or `admin-token`, or `anyone` when the API is open.
    pub subject: String,
}

/// How admin requests are checked. Cheap to clone: every generation of the engine shares one
/// (and its cache of the issuer's keys). The default is closed.
#[derive(Clone, Default)]
pub struct AdminAccess(Arc<Mode>);

#[derive(Default)]
enum Mode {
    #[default]
    Closed,
    Open,
    Checked {
        /// SHA-256 of the static token: compared in constant time, whatever the lengths.
        token: Option<[u8; 32]>,
        oidc: Option<Box<Oidc>>,
        roles: Roles,
    },
}

impl std::fmt::Debug for AdminAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0 {
            Mode::Closed => f.write_str("AdminAccess::Closed"),
            Mode::Open => f.write_str("AdminAccess::Open"),
            Mode::Checked { token, oidc, roles } => f
                .debug_struct("AdminAccess::Checked")
                .field("token", &token.map(|_| "***"))
                .field("issuer", &oidc.as_ref().map(|o| &o.settings.issuer))
                .field("roles", roles)
                .finish(),
        }
    }
}

impl AdminAccess {
    /// Nobody may call the admin API.
    pub fn closed() -> AdminAccess {
        AdminAccess::default()
    }

    /// Everybody may call the admin API (local use only).
    pub fn open() -> AdminAccess {
        AdminAccess(Arc::new(Mode::Open))
    }

    /// Callers with the static `token`, or with an access token of `oidc` carrying one of
    /// `roles`; closed when neither is given.
    pub fn new(
        token: Option<Secret>,
        oidc: Option<OidcSettings>,
        roles: Roles,
    ) -> Result<AdminAccess, SetupError> {
        if token.is_none() && oidc.is_none() {
            return Ok(AdminAccess::closed());
        }
        if [&roles.operator, &roles.reader]
            .iter()
            .any(|r| r.trim().is_empty() || r.contains(char::is_whitespace))
        {
            return Err(SetupError::NoRole);
        }
        let token = match token {
            Some(t)
                if t.0.chars().count() < MIN_TOKEN_CHARS || t.0.contains(char::is_whitespace) =>
            {
                return Err(SetupError::WeakToken);
            }
            Some(t) => Some(digest(t.0.as_bytes())),
            None => None,
        };
        let oidc = oidc.map(Oidc::new).transpose()?.map(Box::new);
        Ok(AdminAccess(Arc::new(Mode::Checked { token, oidc, roles })))
    }

    /// Whether nobody may call the admin API.
    pub fn is_closed(&self) -> bool {
        matches!(*self.0, Mode::Closed)
    }

    /// Checks the `Authorization` header of a request that does `need`, at `now` (the
    /// engine's clock).
    pub async fn check(
        &self,
        authorization: Option<&str>,
        need: Need,
        now: DateTime<Utc>,
    ) -> Result<Caller, Refusal> {
        let (token, oidc, roles) = match &*self.0 {
            Mode::Closed => return Err(Refusal::Closed),
            Mode::Open => {
                return Ok(Caller {
                    subject: "anyone".into(),
                });
            }
            Mode::Checked { token, oidc, roles } => (token, oidc, roles),
        };
        let bearer = bearer(authorization)?;
        if let Some(expected) = token
            && bool::from(digest(bearer.as_bytes()).ct_eq(expected))
        {
            return Ok(Caller {
                subject: "admin-token".into(),
            });
        }
        let Some(oidc) = oidc else {
            return Err(Refusal::Invalid("not the admin token"));
        };
        let claims = oidc.verify(bearer, now).await?;
        let has = |role: &str| claims.has_role(role, &oidc.settings.audience);
        let allowed = match need {
            Need::Operate => has(&roles.operator),
            Need::Read => has(&roles.reader) || has(&roles.operator),
        };
        if !allowed {
            return Err(Refusal::Forbidden(need));
        }
        Ok(Caller {
            subject: claims.sub.unwrap_or_else(|| "(no sub)".into()),
        })
    }
}

/// Reads a static admin token from `path` (a trailing line break dropped).
pub fn read_token_file(path: &Path) -> Result<Secret, SetupError> {
    let text = std::fs::read_to_string(path).map_err(|e| SetupError::TokenFile(e.kind()))?;
    Ok(Secret(text.trim_end_matches(['\n', '\r']).to_owned()))
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The token of a `Bearer` authorization.
fn bearer(authorization: Option<&str>) -> Result<&str, Refusal> {
    let Some(value) = authorization else {
        return Err(Refusal::Missing);
    };
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return Err(Refusal::Missing);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Refusal::Missing);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Refusal::Missing);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Refusal::Invalid("too long"));
    }
    Ok(token)
}

/// The claims read from an access token.
#[derive(Debug, Deserialize)]
struct Claims {
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    sub: Option<String>,
    /// OAuth scopes, space-separated.
    #[serde(default)]
    scope: Option<String>,
    /// Keycloak's realm roles.
    #[serde(default)]
    realm_access: Option<RoleList>,
    /// Keycloak's client roles, by client.
    #[serde(default)]
    resource_access: Option<HashMap<String, RoleList>>,
}

#[derive(Debug, Deserialize)]
struct RoleList {
    #[serde(default)]
    roles: Vec<String>,
}

impl Claims {
    /// Whether `role` is a realm role, a client role of `client`, or a scope of the token.
    fn has_role(&self, role: &str, client: &str) -> bool {
        let realm = self
            .realm_access
            .as_ref()
            .is_some_and(|r| r.roles.iter().any(|x| x == role));
        let own = self
            .resource_access
            .as_ref()
            .and_then(|r| r.get(client))
            .is_some_and(|r| r.roles.iter().any(|x| x == role));
        let scope = self
            .scope
            .as_deref()
            .is_some_and(|s| s.split(' ').any(|x| x == role));
        realm || own || scope
    }
}

/// The issuer, its keys and the client that fetches them.
struct Oidc {
    settings: OidcSettings,
    /// Where the discovery document is.
    discovery: url::Url,
    /// The configured JWKS URL, if any (otherwise discovered).
    configured_jwks: Option<url::Url>,
    client: reqwest::Client,
    keys: Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    jwks_url: Option<url::Url>,
    by_kid: HashMap<String, (Algorithm, DecodingKey)>,
    /// The last successful fetch.
    fetched: Option<Instant>,
    /// The last failed fetch.
    failed: Option<Instant>,
    /// The last fetch caused by an unknown `kid`.
    unknown_fetch: Option<Instant>,
}

fn http_url(what: &'static str, value: &str) -> Result<url::Url, SetupError> {
    url::Url::parse(value)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| SetupError::Url {
            what,
            value: value.to_owned(),
        })
}

impl Oidc {
    fn new(settings: OidcSettings) -> Result<Oidc, SetupError> {
        let issuer = http_url("the OIDC issuer", &settings.issuer)?;
        if settings.audience.trim().is_empty() {
            return Err(SetupError::NoAudience);
        }
        let discovery = http_url(
            "the OIDC issuer",
            &format!(
                "{}/.well-known/openid-configuration",
                issuer.as_str().trim_end_matches('/')
            ),
        )?;
        let configured_jwks = settings
            .jwks_url
            .as_deref()
            .map(|u| http_url("the JWKS URL", u))
            .transpose()?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .build()
            .map_err(|e| SetupError::Client(e.without_url().to_string()))?;
        Ok(Oidc {
            keys: Mutex::new(Keys {
                jwks_url: configured_jwks.clone(),
                ..Keys::default()
            }),
            settings,
            discovery,
            configured_jwks,
            client,
        })
    }

    /// The claims of a token signed by one of the issuer's keys, for the audience, not
    /// expired at `now`.
    async fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, Refusal> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| Refusal::Invalid("malformed"))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(Refusal::Invalid("algorithm not accepted"));
        }
        let kid = header.kid.ok_or(Refusal::Invalid("no key id"))?;
        let (alg, key) = self.key(&kid).await?;
        if alg != header.alg {
            return Err(Refusal::Invalid("algorithm does not match the key"));
        }
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| Refusal::Invalid(reason(e.kind())))?
            .claims;
        let now = now.timestamp();
        if now > claims.exp.saturating_add(LEEWAY_SECONDS) {
            return Err(Refusal::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| now.saturating_add(LEEWAY_SECONDS) < nbf)
        {
            return Err(Refusal::Invalid("not valid yet"));
        }
        Ok(claims)
    }

    /// The key of `kid`: from the keys kept, fetched when they are older than the TTL, or
    /// fetched once more for an unknown `kid` (at most once per interval).
    async fn key(&self, kid: &str) -> Result<(Algorithm, DecodingKey), Refusal> {
        let mut keys = self.keys.lock().await;
        let now = Instant::now();
        let paused = keys
            .failed
            .is_some_and(|t| now.duration_since(t) < FAILED_FETCH_PAUSE);
        let stale = keys
            .fetched
            .is_none_or(|t| now.duration_since(t) >= self.settings.ttl);
        let mut error = None;
        let mut fetched = false;
        if stale && !paused {
            match self.fetch(&mut keys).await {
                Ok(()) => fetched = true,
                Err(e) => error = Some(e),
            }
        }
        let may_refetch = keys
            .unknown_fetch
            .is_none_or(|t| now.duration_since(t) >= self.settings.unknown_kid_interval);
        if !keys.by_kid.contains_key(kid) && !fetched && error.is_none() && !paused && may_refetch {
            keys.unknown_fetch = Some(now);
            if let Err(e) = self.fetch(&mut keys).await {
                error = Some(e);
            }
        }
        if let Some(found) = keys.by_kid.get(kid) {
            return Ok(found.clone());
        }
        if keys.fetched.is_none() || error.is_some() {
            return Err(Refusal::KeysUnavailable(error.unwrap_or(KeysError::Paused)));
        }
        Err(Refusal::Invalid("unknown key id"))
    }

    /// Fetches the JWKS (discovering its URL first when needed) into `keys`.
    async fn fetch(&self, keys: &mut Keys) -> Result<(), KeysError> {
        let result = async {
            let url = match &keys.jwks_url {
                Some(u) => u.clone(),
                None => self.discover().await?,
            };
            let jwks = self.get_json(&url).await?;
            Ok::<_, KeysError>((url, signing_keys(&jwks)?))
        }
        .await;
        let now = Instant::now();
        match result {
            Ok((url, by_kid)) => {
                keys.jwks_url = Some(url);
                keys.by_kid = by_kid;
                keys.fetched = Some(now);
                keys.failed = None;
                Ok(())
            }
            Err(e) => {
                keys.failed = Some(now);
                keys.jwks_url = self.configured_jwks.clone();
                tracing::warn!("the OIDC issuer's keys were not fetched: {e}");
                Err(e)
            }
        }
    }

    /// The `jwks_uri` of the issuer's discovery document, which must name the issuer and
    /// stay on its origin.
    async fn discover(&self) -> Result<url::Url, KeysError> {
        let doc = self.get_json(&self.discovery).await?;
        if doc.get("issuer").and_then(Value::as_str) != Some(self.settings.issuer.as_str()) {
            return Err(KeysError::IssuerMismatch);
        }
        let jwks = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .and_then(|u| url::Url::parse(u).ok())
            .ok_or(KeysError::NotJson)?;
        if jwks.origin() != self.discovery.origin() {
            return Err(KeysError::CrossOrigin);
        }
        Ok(jwks)
    }

    /// A JSON document, read whole within the size cap; redirects are refused.
    async fn get_json(&self, url: &url::Url) -> Result<Value, KeysError> {
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                KeysError::Timeout
            } else {
                KeysError::Transport(e.without_url().to_string())
            }
        };
        let mut answer = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(transport)?;
        let status = answer.status();
        if status.is_redirection() {
            return Err(KeysError::Redirected);
        }
        if !status.is_success() {
            return Err(KeysError::Status(status.as_u16()));
        }
        let max = self.settings.max_bytes;
        if answer
            .content_length()
            .is_some_and(|n| n > u64::try_from(max).unwrap_or(u64::MAX))
        {
            return Err(KeysError::TooLarge(max));
        }
        let mut body = Vec::new();
        while let Some(chunk) = answer.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > max {
                return Err(KeysError::TooLarge(max));
            }
            body.extend_from_slice(&chunk);
        }
        let v: Value = serde_json::from_slice(&body).map_err(|_| KeysError::NotJson)?;
        if v.is_object() {
            Ok(v)
        } else {
            Err(KeysError::NotJson)
        }
    }
}

/// The RS256 and ES256 (P-256) signing keys of a JWKS, by `kid`; other keys (encryption
/// keys, other algorithms, malformed entries) are left out.
fn signing_keys(jwks: &Value) -> Result<HashMap<String, (Algorithm, DecodingKey)>, KeysError> {
    let entries = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(KeysError::NotJson)?;
    let mut out = HashMap::new();
    for entry in entries.iter().take(MAX_KEYS) {
        let field = |name: &str| entry.get(name).and_then(Value::as_str);
        let Some(kid) = field("kid").filter(|k| !k.is_empty() && k.len() <= 256) else {
            continue;
        };
        if field("use").is_some_and(|u| u != "sig") {
            continue;
        }
        let alg = match (field("kty"), field("alg"), field("crv")) {
            (Some("RSA"), None | Some("RS256"), _) => Algorithm::RS256,
            (Some("EC"), None | Some("ES256"), Some("P-256")) => Algorithm::ES256,
            _ => continue,
        };
        let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else {
            continue;
        };
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            out.insert(kid.to_owned(), (alg, key));
        }
    }
    if out.is_empty() {
        return Err(KeysError::NoKeys);
    }
    Ok(out)
}

/// The log's reason for a token `jsonwebtoken` refused.
fn reason(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature | K::Crypto(_) => "bad signature",
        K::InvalidIssuer => "wrong issuer",
        K::InvalidAudience => "wrong audience",
        K::MissingRequiredClaim(_) => "a required claim is missing",
        K::InvalidAlgorithm | K::MissingAlgorithm | K::InvalidAlgorithmName => {
            "algorithm not accepted"
        }
        K::Json(_) | K::Utf8(_) | K::Base64(_) => "claims not readable",
        _ => "refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_needs_the_scheme_and_a_token() {
        assert!(matches!(bearer(None), Err(Refusal::Missing)));
        assert!(matches!(bearer(Some("Basic abc")), Err(Refusal::Missing)));
        assert!(matches!(bearer(Some("Bearer ")), Err(Refusal::Missing)));
        assert_eq!(bearer(Some("bearer abc")).ok(), Some("abc"));
    }

    #[test]
    fn a_short_static_token_is_refused() {
        let roles = Roles {
            operator: "op".into(),
            reader: "rd".into(),
        };
        let weak = AdminAccess::new(Some(Secret("short".into())), None, roles);
        assert!(matches!(weak, Err(SetupError::WeakToken)));
    }

    #[test]
    fn signing_keys_leave_out_encryption_and_other_algorithms() {
        let jwks = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AQAB", "y": "AQAB"},
        ]});
        assert!(matches!(signing_keys(&jwks), Err(KeysError::NoKeys)));
    }
}
