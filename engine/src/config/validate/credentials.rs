//! Checks of outbound credentials that go beyond a header: OAuth2 client credentials, SMART
//! Backend Services (a private key of the declared algorithm, tried by signing), mutual TLS
//! (certificate and key parsed), token URLs (`https`, or `http` only to this machine), and
//! secrets that must come from a reference, never written in the definition.

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::context::Ctx;
use crate::config::spec::{OAuth2Spec, SmartBackendSpec, TlsSpec};
use crate::model::vocabulary::SigningAlg;
use crate::model::{OAuth2, Secret, SmartBackend, Tls};

/// The check of an absolute `http(s)` URL (`source::url`, handed in by the caller so that
/// this file does not import the one that imports it).
pub type UrlCheck = fn(&mut Ctx<'_>, &[&str], &str) -> Option<url::Url>;

fn with<'p>(base: &[&'p str], more: &[&'p str]) -> Vec<&'p str> {
    base.iter().chain(more.iter()).copied().collect()
}

/// Checks OAuth2 client credentials.
pub fn oauth2(ctx: &mut Ctx<'_>, at: &[&str], o: &OAuth2Spec, url: UrlCheck) -> Option<OAuth2> {
    let errors = ctx.diags.len();
    let token_url = secure_url(ctx, &with(at, &["tokenUrl"]), &o.token_url, url);
    referenced(ctx, &with(at, &["clientSecret"]), "clientSecret");
    (ctx.diags.len() == errors).then(|| OAuth2 {
        token_url: token_url.unwrap_or_else(placeholder_url),
        client_id: o.client_id.clone(),
        client_secret: Secret(o.client_secret.clone()),
        scopes: o.scopes.clone(),
        audience: o.audience.clone(),
    })
}

/// Checks SMART Backend Services credentials: the key must sign with the declared algorithm.
pub fn smart_backend(
    ctx: &mut Ctx<'_>,
    at: &[&str],
    s: &SmartBackendSpec,
    url: UrlCheck,
) -> Option<SmartBackend> {
    let errors = ctx.diags.len();
    let token_url = secure_url(ctx, &with(at, &["tokenUrl"]), &s.token_url, url);
    let jku = s
        .jku
        .as_deref()
        .and_then(|j| secure_url(ctx, &with(at, &["jku"]), j, url));
    let key_at = with(at, &["privateKey"]);
    if referenced(ctx, &key_at, "privateKey")
        && !ctx.unresolved(&key_at)
        && let Err(why) = signing_key(&s.private_key, s.alg)
    {
        ctx.error(
            &key_at,
            format!("the private key cannot sign {:?}: {why}", s.alg),
            Some(match s.alg {
                SigningAlg::RS384 => "give an RSA private key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), e.g. from `openssl genpkey -algorithm RSA`".into(),
                SigningAlg::ES384 => "give a P-384 EC private key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), e.g. from `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384`".into(),
            }),
        );
    }
    (ctx.diags.len() == errors).then(|| SmartBackend {
        token_url: token_url.unwrap_or_else(placeholder_url),
        client_id: s.client_id.clone(),
        private_key: Secret(s.private_key.clone()),
        alg: s.alg,
        kid: s.kid.clone(),
        jku,
        scopes: s.scopes.clone(),
    })
}

/// The signing key of `pem` for `alg`, tried by signing a claim (which catches a key of
/// another type or curve); the reason when it cannot sign, without the key's text.
pub fn signing_key(pem: &str, alg: SigningAlg) -> Result<EncodingKey, String> {
    let (key, algorithm) = match alg {
        SigningAlg::RS384 => (EncodingKey::from_rsa_pem(pem.as_bytes()), Algorithm::RS384),
        SigningAlg::ES384 => (EncodingKey::from_ec_pem(pem.as_bytes()), Algorithm::ES384),
    };
    let key = key.map_err(|e| e.to_string())?;
    jsonwebtoken::encode(&Header::new(algorithm), &serde_json::json!({}), &key)
        .map_err(|e| e.to_string())?;
    Ok(key)
}

/// Checks mutual TLS settings: the certificate and key make an identity, the CA parses.
pub fn tls(ctx: &mut Ctx<'_>, at: &[&str], t: &TlsSpec) -> Option<Tls> {
    let errors = ctx.diags.len();
    let cert_at = with(at, &["clientCert"]);
    let key_at = with(at, &["clientKey"]);
    let identity = match (&t.client_cert, &t.client_key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            ctx.error(at, "`clientCert` and `clientKey` go together", None);
            None
        }
    };
    if let Some((cert, key)) = identity
        && referenced(ctx, &key_at, "clientKey")
        && !ctx.unresolved(&key_at)
        && !ctx.unresolved(&cert_at)
    {
        let mut pem = cert.clone().into_bytes();
        pem.push(b'\n');
        pem.extend_from_slice(key.as_bytes());
        if reqwest::Identity::from_pem(&pem).is_err() {
            ctx.error(
                at,
                "`clientCert` and `clientKey` are not a PEM certificate and its private key",
                Some("give them as `${file:PATH}` of PEM files (`-----BEGIN CERTIFICATE-----`, `-----BEGIN PRIVATE KEY-----`)".into()),
            );
        }
    }
    let ca_at = with(at, &["ca"]);
    if let Some(ca) = &t.ca
        && !ctx.unresolved(&ca_at)
        && reqwest::Certificate::from_pem_bundle(ca.as_bytes()).map_or(true, |c| c.is_empty())
    {
        ctx.error(
            &ca_at,
            "`ca` is not a PEM certificate",
            Some("give it as `${file:PATH}` of a PEM file (`-----BEGIN CERTIFICATE-----`)".into()),
        );
    }
    (ctx.diags.len() == errors).then(|| Tls {
        identity: identity.map(|(c, k)| (Secret(c.clone()), Secret(k.clone()))),
        ca: t.ca.clone().map(Secret),
    })
}

/// True when the value at `at` came from a reference; otherwise a diagnostic: a secret is
/// never written in a definition.
fn referenced(ctx: &mut Ctx<'_>, at: &[&str], field: &str) -> bool {
    if ctx.is_referenced(at) {
        return true;
    }
    ctx.error(
        at,
        format!("`{field}` is a secret: it is read from `${{env:NAME}}` or `${{file:PATH}}`, never written in the definition"),
        Some(format!("e.g. `{field}: ${{file:/run/secrets/{}}}`", file_hint(field))),
    );
    false
}

fn file_hint(field: &str) -> &'static str {
    match field {
        "privateKey" => "smart-key.pem",
        "clientKey" => "client.key",
        _ => "client-secret",
    }
}

/// An `https` URL, or an `http` one to this machine (`127.0.0.1`, `localhost`, `[::1]`).
fn secure_url(ctx: &mut Ctx<'_>, at: &[&str], text: &str, url: UrlCheck) -> Option<url::Url> {
    let u = url(ctx, at, text)?;
    let local = matches!(
        u.host(),
        Some(url::Host::Domain("localhost"))
            | Some(url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST))
            | Some(url::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST))
    );
    if u.scheme() != "https" && !local {
        ctx.error(
            at,
            format!(
                "{} is not https: credentials go only over TLS (or to this machine)",
                ctx.show(at, text)
            ),
            Some("use an `https://` URL".into()),
        );
        return None;
    }
    Some(u)
}

/// The URL used for a value whose secret is unresolved (validation only, never served).
fn placeholder_url() -> url::Url {
    url::Url::parse("http://unresolved.invalid/").expect("a valid URL")
}
