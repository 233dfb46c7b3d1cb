//! Mutual TLS with a source: a client of the one outbound layer's settings that presents the
//! source's certificate and trusts its extra CA besides the system's roots.

use crate::model::Tls;
use crate::runtime::build_error::{BuildError, Party};
use crate::runtime::outbound;

/// The client of a source with `tls`: the certificate and key as its identity, the extra CA
/// trusted. Errors name no file and quote no key.
pub fn client(source: &str, tls: &Tls) -> Result<reqwest::Client, BuildError> {
    client_of(&Party::Source(source.to_owned()), tls)
}

/// The client of `party` with `tls`, as `client` makes a source's.
pub fn client_of(party: &Party, tls: &Tls) -> Result<reqwest::Client, BuildError> {
    let bad = |what: &'static str| BuildError::Tls {
        party: party.clone(),
        what,
    };
    let mut builder = outbound::builder();
    if let Some((cert, key)) = &tls.identity {
        let mut pem = cert.0.clone().into_bytes();
        pem.push(b'\n');
        pem.extend_from_slice(key.0.as_bytes());
        let identity =
            reqwest::Identity::from_pem(&pem).map_err(|_| bad("client certificate or key"))?;
        builder = builder.identity(identity);
    }
    if let Some(ca) = &tls.ca {
        let ca = reqwest::Certificate::from_pem_bundle(ca.0.as_bytes()).map_err(|_| bad("CA"))?;
        builder = builder.tls_certs_merge(ca);
    }
    builder.build().map_err(|_| bad("client settings"))
}
