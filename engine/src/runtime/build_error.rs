//! Why the runtime of a checked model could not be built: a client that cannot be made, a
//! header a source's definition cannot send, a connector given to the wrong builder, a state
//! folder that cannot be made. A reload that meets one keeps the old engine serving.

use crate::runtime::state::StateError;

/// Who sends with the headers or TLS settings a build error is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Party {
    Source(String),
    Sink(String),
    GuideDownload,
}

impl std::fmt::Display for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Party::Source(name) => write!(f, "source `{name}`"),
            Party::Sink(name) => write!(f, "sink `{name}`"),
            Party::GuideDownload => f.write_str("guide download"),
        }
    }
}

/// Why a part of the engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The HTTP client could not be made (its TLS setup).
    #[error("HTTP client: {0}")]
    Client(String),
    /// A header of a source, sink or guide download that HTTP cannot carry (a checked model
    /// has none).
    #[error("{party}: invalid {what}")]
    Header { party: Party, what: &'static str },
    /// Mutual TLS settings that the TLS layer refuses (a checked model has none).
    #[error("{party}: invalid TLS {what}")]
    Tls { party: Party, what: &'static str },
    /// A connector handed to the builder of another strategy.
    #[error("`{connector}` is not a {strategy} connector")]
    Strategy {
        connector: String,
        strategy: &'static str,
    },
    /// A cron connector that reads a source, without one.
    #[error("`{0}` has no source")]
    NoSource(String),
    /// A source no client was built for.
    #[error("no client for source `{0}`")]
    NoClient(String),
    /// A folder of the state directory that cannot be made.
    #[error(transparent)]
    State(#[from] StateError),
}
