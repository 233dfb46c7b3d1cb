//! SMART Backend Services client assertions: a JWT signed with the client's private key, `iss`
//! and `sub` the client id, `aud` the token URL, `exp` a few minutes ahead (at most five, as
//! the specification allows), a `jti` never used before, and the key's `kid` (and `jku` when
//! set) in its header.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::model::SmartBackend;
use crate::model::vocabulary::SigningAlg;
use crate::runtime::clock::Clock;

/// How far ahead an assertion expires: under the five minutes servers accept, leaving room for
/// a server clock somewhat ahead of ours.
const LIFETIME_SECS: i64 = 240;

/// The media type of a JWT bearer client assertion (RFC 7523).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    iat: i64,
    jti: String,
}

/// The signer of one client's assertions.
pub struct Signer {
    key: EncodingKey,
    header: Header,
    client_id: String,
    audience: String,
    clock: Clock,
}

/// The key could not sign (a key of another type: validation refuses it first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the private key cannot sign {0:?}")]
pub struct SignError(pub SigningAlg);

impl Signer {
    /// The signer of `smart`'s assertions, dated by `clock`.
    pub fn new(smart: &SmartBackend, clock: Clock) -> Result<Signer, SignError> {
        let fail = |_| SignError(smart.alg);
        let (key, alg) = match smart.alg {
            SigningAlg::RS384 => (
                EncodingKey::from_rsa_pem(smart.private_key.0.as_bytes()).map_err(fail)?,
                Algorithm::RS384,
            ),
            SigningAlg::ES384 => (
                EncodingKey::from_ec_pem(smart.private_key.0.as_bytes()).map_err(fail)?,
                Algorithm::ES384,
            ),
        };
        let mut header = Header::new(alg);
        header.kid = Some(smart.kid.clone());
        header.jku = smart.jku.as_ref().map(|u| u.to_string());
        Ok(Signer {
            key,
            header,
            client_id: smart.client_id.clone(),
            audience: smart.token_url.to_string(),
            clock,
        })
    }

    /// A fresh assertion.
    pub fn sign(&self) -> Result<String, SignError> {
        let now = self.clock.now().timestamp();
        let claims = Claims {
            iss: &self.client_id,
            sub: &self.client_id,
            aud: &self.audience,
            exp: now + LIFETIME_SECS,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let alg = match self.header.alg {
            Algorithm::ES384 => SigningAlg::ES384,
            _ => SigningAlg::RS384,
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key).map_err(|_| SignError(alg))
    }
}
