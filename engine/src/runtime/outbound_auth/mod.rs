//! Outbound authentication beyond a fixed header: access tokens from an OAuth2 token endpoint
//! (client credentials, `token`) with a SMART Backend Services client assertion when the
//! source says so (`assertion`), and mutual TLS (`tls`); `credentials` puts them together
//! for sinks and guide downloads. A source's client asks `Tokens` for
//! a bearer before each call and renews it once after a 401.

mod assertion;
pub mod credentials;
pub mod tls;
mod token;

pub use credentials::{AuthHeader, Credentials};
pub use token::{TokenError, Tokens};
