//! The manifest of a finished FHIR Bulk Data export: its `transactionTime` (the next run's
//! `_since`), whether files need the access token, and its `output`, `error` and `deleted`
//! files, each checked to be on the source's origin or one the definition declares.

use serde_json::Value;

/// Most files one manifest may list.
pub const MAX_FILES: usize = 10_000;

/// One file of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// The resource type it holds (`OperationOutcome` for an error file).
    pub kind: String,
    pub url: url::Url,
}

/// A checked manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub transaction_time: String,
    pub requires_access_token: bool,
    pub output: Vec<FileRef>,
    pub error: Vec<FileRef>,
    /// Files of deleted resources (Bulk Data 2.0 `deleted`): Bundles of `DELETE` requests.
    pub deleted: Vec<FileRef>,
}

/// Why a manifest was refused. No variant holds a URL (it may carry a signature).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is not a JSON object")]
    NotObject,
    #[error("the manifest has no `transactionTime` instant")]
    NoTransactionTime,
    #[error("the manifest's `{0}` is not a list of files with `type` and an absolute `url`")]
    Files(&'static str),
    #[error("the manifest lists more than {MAX_FILES} files")]
    TooMany,
    #[error(
        "the manifest names a file on another origin ({0}), which is refused: declare the origin in `bulkExport.fileOrigins` to allow it"
    )]
    OtherOrigin(String),
}

impl Manifest {
    /// Reads a manifest; every file must be on one of `origins`.
    pub fn read(body: &Value, origins: &[url::Origin]) -> Result<Manifest, ManifestError> {
        let o = body.as_object().ok_or(ManifestError::NotObject)?;
        let transaction_time = o
            .get("transactionTime")
            .and_then(Value::as_str)
            .filter(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok())
            .ok_or(ManifestError::NoTransactionTime)?
            .to_owned();
        let files = |key: &'static str| -> Result<Vec<FileRef>, ManifestError> {
            let list = match o.get(key) {
                None | Some(Value::Null) => return Ok(Vec::new()),
                Some(Value::Array(a)) => a,
                Some(_) => return Err(ManifestError::Files(key)),
            };
            if list.len() > MAX_FILES {
                return Err(ManifestError::TooMany);
            }
            list.iter()
                .map(|f| {
                    let kind = f["type"].as_str().ok_or(ManifestError::Files(key))?;
                    let url = f["url"]
                        .as_str()
                        .and_then(|u| url::Url::parse(u).ok())
                        .filter(|u| matches!(u.scheme(), "http" | "https"))
                        .ok_or(ManifestError::Files(key))?;
                    if !origins.contains(&url.origin()) {
                        return Err(ManifestError::OtherOrigin(
                            url.origin().ascii_serialization(),
                        ));
                    }
                    Ok(FileRef {
                        kind: kind.to_owned(),
                        url,
                    })
                })
                .collect()
        };
        let output = files("output")?;
        let error = files("error")?;
        let deleted = files("deleted")?;
        if output.len() + error.len() + deleted.len() > MAX_FILES {
            return Err(ManifestError::TooMany);
        }
        Ok(Manifest {
            transaction_time,
            requires_access_token: o
                .get("requiresAccessToken")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            output,
            error,
            deleted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn origin(u: &str) -> url::Origin {
        url::Url::parse(u).map(|u| u.origin()).expect("a URL")
    }

    #[test]
    fn files_on_other_origins_are_refused() {
        let body = json!({
            "transactionTime": "2026-01-01T00:00:00Z",
            "output": [{"type": "Patient", "url": "http://a.test/f/1"}],
        });
        let read = Manifest::read(&body, &[origin("http://a.test")]).expect("a manifest");
        assert_eq!(read.output.len(), 1);
        assert!(!read.requires_access_token);
        assert_eq!(
            Manifest::read(&body, &[origin("http://b.test")]),
            Err(ManifestError::OtherOrigin("http://a.test".into()))
        );
        // Another port is another origin.
        assert!(Manifest::read(&body, &[origin("http://a.test:8080")]).is_err());
    }

    #[test]
    fn a_manifest_needs_its_transaction_time_and_absolute_urls() {
        let o = [origin("http://a.test")];
        assert_eq!(
            Manifest::read(&json!({"output": []}), &o),
            Err(ManifestError::NoTransactionTime)
        );
        assert_eq!(
            Manifest::read(
                &json!({"transactionTime": "2026-01-01T00:00:00Z", "output": [{"type": "Patient", "url": "/f/1"}]}),
                &o
            ),
            Err(ManifestError::Files("output"))
        );
    }
}
