//! Why a guide could not be read, and the limits that bound reading one.

/// Most files a guide may hold.
pub(super) const MAX_FILES: usize = 100_000;
/// Deepest folder nesting read in a guide directory.
pub(super) const MAX_DEPTH: usize = 32;

/// Why a guide could not be read; nothing of it is written then.
#[derive(Debug, thiserror::Error)]
pub enum GuideError {
    /// A file or folder that cannot be read (the kind, not the OS's text with its codes).
    #[error("cannot read {path}: {kind}")]
    Read {
        path: String,
        kind: std::io::ErrorKind,
    },
    /// More bytes than `import.maxSize`: `what` says which bytes.
    #[error("{what} (`import.maxSize`)")]
    TooLarge { what: String },
    #[error("{0} holds more than {MAX_FILES} files")]
    TooManyFiles(String),
    #[error("{0} is nested deeper than {MAX_DEPTH} folders")]
    TooDeep(String),
    #[error("`{file}` is not JSON: {message}")]
    NotJson { file: String, message: String },
    /// A package file (`where_` names it when it is a file) that is not a gzipped tar.
    #[error("{where_}not a gzipped tar package: {message}")]
    NotPackage { where_: String, message: String },
    #[error("cannot download the guide package {url}: {message}")]
    Download { url: String, message: String },
    #[error("cannot build an HTTP client: {0}")]
    Client(String),
    #[error("the guide reader stopped: {0}")]
    Stopped(String),
}
