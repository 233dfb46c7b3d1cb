//! Access tokens of a source from its token endpoint (OAuth2 client credentials, RFC 6749
//! 4.4; or SMART Backend Services, whose client authenticates with a signed assertion): kept
//! until shortly before they expire, fetched by one caller at a time (the others wait for its
//! token), renewed once when the source answers 401. The endpoint's answer is bounded in
//! size and time as any outbound answer; its refusal is reported with its `error` and
//! `error_description`, never with the client's secret.

use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::assertion::{ASSERTION_TYPE, SignError, Signer};
use crate::model::{Auth, Secret, Source};
use crate::runtime::build_error::{BuildError, Party};
use crate::runtime::clock::Clock;
use crate::runtime::outbound::{self, OutboundError};

/// Largest token endpoint answer read.
pub const MAX_TOKEN_ANSWER: u64 = 64 << 10;
/// How long a token is kept when the endpoint does not say (`expires_in` is only
/// recommended): short, and a 401 renews it sooner.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// The longest a token is kept, whatever the endpoint says.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The most a token is renewed before it expires.
const MAX_MARGIN: Duration = Duration::from_secs(30);

/// Why no token could be had. No variant carries a URL or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The endpoint answered an error status, with its OAuth2 `error` and
    /// `error_description` when it gave them.
    #[error("the token endpoint refused: {status}{}", detail(error, description))]
    Refused {
        status: u16,
        error: Option<String>,
        description: Option<String>,
    },
    /// The exchange failed (timeout, connection, too large, cut short).
    #[error("the token endpoint: {0}")]
    Exchange(OutboundError),
    /// The endpoint answered 2xx with something that is not a usable token.
    #[error("the token endpoint's answer is not a usable token: {0}")]
    Unusable(String),
    /// The client assertion could not be signed.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// No time was left to ask for a token (the caller's deadline or the source's timeout).
    #[error("no token before the request's deadline")]
    Deadline,
}

impl TokenError {
    /// True when the endpoint did not answer in time.
    pub fn timed_out(&self) -> bool {
        matches!(
            self,
            TokenError::Deadline | TokenError::Exchange(OutboundError::Timeout(_))
        )
    }
}

fn detail(error: &Option<String>, description: &Option<String>) -> String {
    match (error, description) {
        (Some(e), Some(d)) => format!(": {e} ({d})"),
        (Some(e), None) => format!(": {e}"),
        (None, Some(d)) => format!(": {d}"),
        (None, None) => String::new(),
    }
}

/// How the client authenticates to the token endpoint.
enum Client {
    /// HTTP basic with the client id and secret (RFC 6749 2.3.1).
    Secret { basic: HeaderValue, secret: Secret },
    /// A signed client assertion (RFC 7523, SMART Backend Services).
    Assertion(Box<Signer>),
}

/// A token kept, and until when it is used.
struct Kept {
    bearer: HeaderValue,
    until: Instant,
}

/// The tokens of one source.
pub struct Tokens {
    client: reqwest::Client,
    token_url: url::Url,
    form: Vec<(&'static str, String)>,
    auth: Client,
    timeout: Duration,
    kept: Mutex<Option<Kept>>,
}

impl Tokens {
    /// The tokens of `source` when its auth takes them, fetched with `client`.
    pub fn of(source: &Source, client: &reqwest::Client) -> Result<Option<Tokens>, BuildError> {
        let party = Party::Source(source.name.clone());
        Tokens::for_auth(&party, source.auth.as_ref(), source.timeout, client)
    }

    /// The tokens of `auth` (of a source, a sink or a guide download) when it takes them,
    /// fetched with `client`, each token request bounded by `timeout`.
    pub fn for_auth(
        party: &Party,
        auth: Option<&Auth>,
        timeout: Duration,
        client: &reqwest::Client,
    ) -> Result<Option<Tokens>, BuildError> {
        let (token_url, auth, scopes, audience) = match auth {
            Some(Auth::OAuth2(o)) => {
                let enc = |s: &str| -> String {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
                };
                let pair = format!("{}:{}", enc(&o.client_id), enc(&o.client_secret.0));
                let mut basic = HeaderValue::from_str(&format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
                .map_err(|_| BuildError::Header {
                    party: party.clone(),
                    what: "OAuth2 client credentials",
                })?;
                basic.set_sensitive(true);
                let auth = Client::Secret {
                    basic,
                    secret: o.client_secret.clone(),
                };
                (&o.token_url, auth, &o.scopes, o.audience.clone())
            }
            Some(Auth::SmartBackend(s)) => {
                let signer = Signer::new(s, Clock::system()).map_err(|_| BuildError::Header {
                    party: party.clone(),
                    what: "SMART Backend Services private key",
                })?;
                (
                    &s.token_url,
                    Client::Assertion(Box::new(signer)),
                    &s.scopes,
                    None,
                )
            }
            _ => return Ok(None),
        };
        let mut form = vec![("grant_type", "client_credentials".to_owned())];
        if !scopes.is_empty() {
            form.push(("scope", scopes.join(" ")));
        }
        if let Some(a) = audience {
            form.push(("audience", a));
        }
        Ok(Some(Tokens {
            client: client.clone(),
            token_url: token_url.clone(),
            form,
            auth,
            timeout,
            kept: Mutex::new(None),
        }))
    }

    /// The `Authorization` value for a call: the token kept, or a new one. Concurrent callers
    /// wait for the one request in flight. Nothing waits past `deadline`.
    pub async fn bearer(&self, deadline: Option<Instant>) -> Result<HeaderValue, TokenError> {
        self.get(None, deadline).await
    }

    /// A token other than `stale` (which the source refused with a 401): a new one, unless
    /// another caller renewed it meanwhile.
    pub async fn renew(
        &self,
        stale: &HeaderValue,
        deadline: Option<Instant>,
    ) -> Result<HeaderValue, TokenError> {
        self.get(Some(stale), deadline).await
    }

    async fn get(
        &self,
        stale: Option<&HeaderValue>,
        deadline: Option<Instant>,
    ) -> Result<HeaderValue, TokenError> {
        let end = Instant::now() + self.timeout;
        let end = deadline.map_or(end, |d| d.min(end));
        let mut kept = tokio::time::timeout_at(end, self.kept.lock())
            .await
            .map_err(|_| TokenError::Deadline)?;
        if let Some(k) = kept.as_ref()
            && k.until > Instant::now()
            && stale != Some(&k.bearer)
        {
            return Ok(k.bearer.clone());
        }
        *kept = None;
        let (bearer, lifetime) = self.fetch(end).await?;
        let margin = (lifetime / 10).min(MAX_MARGIN);
        *kept = Some(Kept {
            bearer: bearer.clone(),
            until: Instant::now() + lifetime - margin,
        });
        Ok(bearer)
    }

    /// One token request, ending by `end`.
    async fn fetch(&self, end: Instant) -> Result<(HeaderValue, Duration), TokenError> {
        let timeout = end.saturating_duration_since(Instant::now());
        if timeout.is_zero() {
            return Err(TokenError::Deadline);
        }
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in &self.form {
                form.append_pair(k, v);
            }
            if let Client::Assertion(signer) = &self.auth {
                form.append_pair("client_assertion_type", ASSERTION_TYPE);
                form.append_pair("client_assertion", &signer.sign()?);
            }
            form.finish()
        };
        let mut req = self
            .client
            .post(self.token_url.clone())
            .timeout(timeout)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(reqwest::header::ACCEPT, "application/json");
        if let Client::Secret { basic, .. } = &self.auth {
            req = req.header(AUTHORIZATION, basic.clone());
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| TokenError::Exchange(OutboundError::of(&e, timeout)))?;
        let status = resp.status();
        let body = outbound::read_body(resp, MAX_TOKEN_ANSWER, timeout).await;
        if !status.is_success() {
            let v: Value = body
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            return Err(TokenError::Refused {
                status: status.as_u16(),
                error: self.text(&v["error"]),
                description: self.text(&v["error_description"]),
            });
        }
        let body = body.map_err(TokenError::Exchange)?;
        let v: Value =
            serde_json::from_slice(&body).map_err(|_| TokenError::Unusable("not JSON".into()))?;
        self.token_of(&v)
    }

    /// The bearer value and lifetime of a token answer.
    fn token_of(&self, v: &Value) -> Result<(HeaderValue, Duration), TokenError> {
        let token = v["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| TokenError::Unusable("no `access_token`".into()))?;
        if let Some(kind) = v.get("token_type").and_then(Value::as_str)
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(TokenError::Unusable(format!(
                "`token_type` is `{}`, not `Bearer`",
                outbound::clean(kind)
            )));
        }
        let mut bearer = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| TokenError::Unusable("the token is not a header value".into()))?;
        bearer.set_sensitive(true);
        let lifetime = match &v["expires_in"] {
            Value::Number(n) => n
                .as_f64()
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(|s| Duration::from_secs_f64(s.min(MAX_LIFETIME.as_secs_f64())))
                .ok_or_else(|| TokenError::Unusable("`expires_in` is not positive".into()))?,
            Value::String(s) => s
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(s).min(MAX_LIFETIME))
                .ok_or_else(|| TokenError::Unusable("`expires_in` is not a number".into()))?,
            _ => DEFAULT_LIFETIME,
        };
        Ok((bearer, lifetime))
    }

    /// A text of the endpoint's answer, cleaned and short, with the client's secret (should
    /// the endpoint echo it) blanked.
    fn text(&self, v: &Value) -> Option<String> {
        let raw = v.as_str()?;
        let text = match &self.auth {
            Client::Secret { secret, .. } if !secret.0.is_empty() => {
                outbound::clean(&raw.replace(&secret.0, "***"))
            }
            _ => outbound::clean(raw),
        };
        (!text.is_empty()).then_some(text)
    }
}
