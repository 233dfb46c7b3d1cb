//! FHIR packages (`package.tgz`): downloaded with a size cap, unpacked in memory (flate2 and
//! tar) with caps on bytes and files; nothing is written to disk.

use std::io::Read;
use std::time::Duration;

use super::error::{GuideError, MAX_FILES};
use crate::model::{Auth, Tls};
use crate::runtime::build_error::Party;
use crate::runtime::outbound::{self, OutboundError, RetryPolicy};
use crate::runtime::outbound_auth::Credentials;
use crate::runtime::outbound_auth::credentials::{self, with_header};

/// Files of the guide by their path in it, in path order.
pub(super) type Files = Vec<(String, Vec<u8>)>;

/// Downloads a package over the outbound layer (its redirect policy, body reader and retry
/// policy) with the import's credentials and TLS identity (`runtime::outbound_auth`, as a
/// source's), refusing answers larger than `max` bytes.
pub(super) async fn download(
    url: &url::Url,
    max: u64,
    timeout: Duration,
    auth: Option<&Auth>,
    tls: Option<&Tls>,
) -> Result<Vec<u8>, GuideError> {
    let party = Party::GuideDownload;
    let client = credentials::client(&party, tls).map_err(|e| GuideError::Client(e.to_string()))?;
    let creds = Credentials::new(&party, auth, timeout, &client)
        .map_err(|e| GuideError::Client(e.to_string()))?;
    let policy = RetryPolicy {
        retries: 2,
        statuses: &crate::model::DEFAULT_RETRY_STATUSES,
    };
    let sent = creds
        .send(|header| {
            let (client, policy) = (&client, &policy);
            async move {
                policy
                    .run(None, &mut 0, |_| {
                        let req =
                            with_header(client.get(url.clone()).timeout(timeout), header.clone());
                        outbound::exchange(req, max, timeout)
                    })
                    .await
            }
        })
        .await
        .map_err(|e| GuideError::Download {
            url: url.to_string(),
            message: format!("no token: {e}"),
        })?;
    sent.map(|got| got.body.to_vec())
        .map_err(|e| match e.last() {
            OutboundError::TooLarge(_) => GuideError::TooLarge {
                what: format!("the package is larger than {max} bytes"),
            },
            _ => GuideError::Download {
                url: url.to_string(),
                message: e.to_string(),
            },
        })
}

/// The regular files of a gzipped tar (a FHIR package), by path below `package/`, refusing
/// archives that unpack to more than `max` bytes. Nothing is written to disk.
pub(super) fn unpack(bytes: &[u8], max: u64) -> Result<Files, GuideError> {
    let not_package = |e: std::io::Error| GuideError::NotPackage {
        where_: String::new(),
        message: e.to_string(),
    };
    let too_large = || GuideError::TooLarge {
        what: format!("the package unpacks to more than {max} bytes"),
    };
    // The sizes the entries declare are checked before they are read; the cap on the
    // decompressed stream also bounds what the headers themselves take.
    let cap = max.saturating_add(1024 * (MAX_FILES as u64 + 1));
    let gz = flate2::read::GzDecoder::new(bytes).take(cap);
    let mut archive = tar::Archive::new(gz);
    let mut files = Vec::new();
    let mut total = 0u64;
    for entry in archive.entries().map_err(not_package)? {
        let mut entry = entry.map_err(not_package)?;
        total = total.saturating_add(entry.size());
        if total > max {
            return Err(too_large());
        }
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(not_package)?
            .to_string_lossy()
            .replace('\\', "/");
        let rel = path.strip_prefix("package/").unwrap_or(&path).to_owned();
        let mut content = Vec::new();
        if rel.ends_with(".json") {
            entry.read_to_end(&mut content).map_err(not_package)?;
        }
        files.push((rel, content));
        if files.len() > MAX_FILES {
            return Err(GuideError::TooManyFiles("the package".into()));
        }
    }
    if archive.into_inner().limit() == 0 {
        return Err(too_large());
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tgz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, content) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            builder.append_data(&mut h, path, *content).expect("append");
        }
        builder
            .into_inner()
            .and_then(|gz| gz.finish())
            .expect("tgz")
    }

    #[test]
    fn packages_unpack_below_package_and_refuse_bombs() {
        let bytes = tgz(&[
            ("package/package.json", b"{}"),
            (
                "package/example/Patient-a.json",
                br#"{"resourceType":"Patient","id":"a"}"#,
            ),
            ("package/other/readme.txt", b"text"),
        ]);
        let files = unpack(&bytes, 1 << 20).expect("unpacks");
        let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["example/Patient-a.json", "other/readme.txt", "package.json"]
        );
        let zeros = vec![0u8; 200_000];
        let bomb = tgz(&[("package/big.json", &zeros)]);
        assert!(bomb.len() < 10_000, "the bomb compresses");
        let err = unpack(&bomb, 100_000).expect_err("too large");
        assert!(
            matches!(&err, GuideError::TooLarge { what } if what.contains("more than 100000 bytes")),
            "{err}"
        );
        let err = unpack(b"not gzip", 1 << 20).expect_err("not a package");
        assert!(matches!(err, GuideError::NotPackage { .. }), "{err}");
        assert!(
            err.to_string().starts_with("not a gzipped tar package"),
            "{err}"
        );
    }
}
