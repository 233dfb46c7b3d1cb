//! The credentials of one outbound party: a fixed header (`bearer`, `apiKey`, `basic`) or
//! tokens from a token endpoint (`oauth2`, `smartBackend`), and the client that presents its
//! TLS identity. Sources, FHIR sinks and guide downloads all send through these (a source's
//! client adds its own limits around them); a token is renewed once after a 401.

use std::future::Future;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderName, HeaderValue};

use super::tls;
use super::token::{TokenError, Tokens};
use crate::model::{Auth, Tls};
use crate::runtime::build_error::{BuildError, Party};
use crate::runtime::outbound::{self, OutboundError};

/// A header that authenticates a request (marked sensitive: never logged).
pub type AuthHeader = (HeaderName, HeaderValue);

/// The fixed header of `auth` (of party `name`), when it is a fixed credential: `bearer`,
/// `apiKey` or `basic`. Token auth gives none: its header is asked for per call.
pub fn fixed_header(name: &str, auth: Option<&Auth>) -> Result<Option<AuthHeader>, BuildError> {
    header_of(&Party::Source(name.to_owned()), auth)
}

/// The values of `auth` that must never be shown: the bearer token, API key, password (and
/// the `user:password` pair as sent), client secret; for `smartBackend` none is sent (its
/// private key signs, and the assertion is new for each token).
pub fn secret_values(auth: Option<&Auth>) -> Vec<String> {
    match auth {
        None | Some(Auth::SmartBackend(_)) => Vec::new(),
        Some(Auth::Bearer(t)) => vec![t.0.clone()],
        Some(Auth::ApiKey { value, .. }) => vec![value.0.clone()],
        Some(Auth::Basic { username, password }) => vec![
            password.0.clone(),
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", username.0, password.0)),
        ],
        Some(Auth::OAuth2(o)) => vec![o.client_secret.0.clone()],
    }
}

/// The fixed header of `auth` of `party`, as `fixed_header` makes a source's.
fn header_of(party: &Party, auth: Option<&Auth>) -> Result<Option<AuthHeader>, BuildError> {
    let bad = |what: &'static str| BuildError::Header {
        party: party.clone(),
        what,
    };
    let (header, value) = match auth {
        None | Some(Auth::OAuth2(_) | Auth::SmartBackend(_)) => return Ok(None),
        Some(Auth::Bearer(t)) => (reqwest::header::AUTHORIZATION, format!("Bearer {}", t.0)),
        Some(Auth::ApiKey { header, value }) => (
            HeaderName::from_bytes(header.as_bytes()).map_err(|_| bad("API key header"))?,
            value.0.clone(),
        ),
        Some(Auth::Basic { username, password }) => {
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", username.0, password.0));
            (reqwest::header::AUTHORIZATION, format!("Basic {token}"))
        }
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| bad("credential"))?;
    value.set_sensitive(true);
    Ok(Some((header, value)))
}

/// The client of a party with `tls` (its certificate and extra CA), or the one shared client.
pub fn client(party: &Party, tls: Option<&Tls>) -> Result<reqwest::Client, BuildError> {
    match tls {
        Some(t) => tls::client_of(party, t),
        None => outbound::client().map_err(|e| BuildError::Client(e.to_string())),
    }
}

/// The credentials of one party (a sink, a guide download).
pub struct Credentials {
    fixed: Option<AuthHeader>,
    tokens: Option<Tokens>,
}

impl Credentials {
    /// The credentials of `auth` for `party`, tokens fetched with `client`, each token
    /// request bounded by `timeout`.
    pub fn new(
        party: &Party,
        auth: Option<&Auth>,
        timeout: Duration,
        client: &reqwest::Client,
    ) -> Result<Credentials, BuildError> {
        Ok(Credentials {
            fixed: header_of(party, auth)?,
            tokens: Tokens::for_auth(party, auth, timeout, client)?,
        })
    }

    /// Calls `send` with the header to authenticate with (none without auth), and, when a
    /// token was refused with a 401, once more with a renewed token (then the 401 stands).
    /// `Err` when no token could be had.
    pub async fn send<T, F, Fut>(&self, mut send: F) -> Result<Result<T, OutboundError>, TokenError>
    where
        F: FnMut(Option<AuthHeader>) -> Fut,
        Fut: Future<Output = Result<T, OutboundError>>,
    {
        let Some(tokens) = &self.tokens else {
            return Ok(send(self.fixed.clone()).await);
        };
        let bearer = tokens.bearer(None).await?;
        match send(Some((reqwest::header::AUTHORIZATION, bearer.clone()))).await {
            Err(e) if e.status() == Some(401) => {
                let renewed = tokens.renew(&bearer, None).await?;
                Ok(send(Some((reqwest::header::AUTHORIZATION, renewed))).await)
            }
            other => Ok(other),
        }
    }
}

/// A request with `header` when there is one.
pub fn with_header(
    req: reqwest::RequestBuilder,
    header: Option<AuthHeader>,
) -> reqwest::RequestBuilder {
    match header {
        Some((name, value)) => req.header(name, value),
        None => req,
    }
}

impl TokenError {
    /// True when asking again later may give a token: the endpoint was slow, unreachable,
    /// overloaded or broke off; false for a refusal of the client or an unusable answer.
    pub fn transient(&self) -> bool {
        match self {
            TokenError::Deadline => true,
            TokenError::Exchange(e) => e.transient(),
            TokenError::Refused { status, .. } => *status >= 500 || *status == 429,
            TokenError::Unusable(_) | TokenError::Sign(_) => false,
        }
    }
}
