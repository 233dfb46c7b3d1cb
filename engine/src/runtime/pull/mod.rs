//! Pull connectors at run time: caller parameters checked and normalised, upstream calls built
//! from the definition's templates (caller values encoded so that they cannot change the host,
//! the path segments or the headers), fanned out to every source in parallel, and the answers
//! mapped and assembled into FHIR: searchset Bundles, resources and batch responses. A failing
//! source gives a partial answer with an `OperationOutcome` naming it.
//!
//! Each interaction lives with its upstream calls and its answer: `search.rs` (parameters,
//! searchset Bundles), `read.rs` and `batch.rs` (batch-response merged entry by entry).

use std::sync::Arc;

use crate::model::{Connector, Pull, PullResource, Strategy};
use crate::runtime::cache::AnswerCache;
use crate::runtime::problem::{Problem, ProblemKind};
use crate::runtime::upstream::{Failure, FailureKind, SourceClient, Upstreams};

mod batch;
mod read;
mod search;

/// Where a request came from, for links in answers and for the upstream request id.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    pub request_id: String,
    /// Public base URL of the engine (`http://host`, or as forwarded by a proxy).
    pub base: String,
    /// The URL of this request as the caller sent it.
    pub self_url: String,
    /// When the caller's answer is due (the engine's request timeout): no source call, retry
    /// or wait for a source's concurrency slot goes past it.
    pub deadline: Option<tokio::time::Instant>,
}

/// A pull connector ready to answer.
pub struct PullRuntime {
    pub connector: Arc<Connector>,
    pub cache: Option<AnswerCache>,
    clients: Vec<Arc<SourceClient>>,
}

impl PullRuntime {
    pub fn new(connector: Arc<Connector>, upstreams: &Upstreams) -> Option<PullRuntime> {
        let Strategy::Pull(pull) = &connector.strategy else {
            return None;
        };
        let cache = pull.cache.as_ref().map(AnswerCache::new);
        let clients = connector
            .sources
            .iter()
            .filter_map(|s| upstreams.get(&s.name).cloned())
            .collect();
        Some(PullRuntime {
            connector,
            cache,
            clients,
        })
    }

    /// The resource types this connector serves.
    pub fn resource_types(&self) -> std::collections::HashSet<String> {
        self.pull()
            .map(|p| {
                p.resources
                    .iter()
                    .map(|r| r.resource_type.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// True when callers may skip the cache with `Cache-Control: no-cache`.
    pub fn cache_allows_no_cache(&self) -> bool {
        self.pull()
            .and_then(|p| p.cache.as_ref())
            .is_some_and(|c| c.allow_no_cache)
    }

    fn pull(&self) -> Option<&Pull> {
        match &self.connector.strategy {
            Strategy::Pull(p) => Some(p),
            _ => None,
        }
    }

    /// The declared resource type.
    pub fn resource(&self, resource_type: &str) -> Result<&PullResource, Problem> {
        self.pull()
            .and_then(|p| {
                p.resources
                    .iter()
                    .find(|r| r.resource_type == resource_type)
            })
            .ok_or_else(|| {
                Problem::not_found(format!(
                    "connector `{}` serves no `{resource_type}`",
                    self.connector.name
                ))
            })
    }
}

/// Why one source gave no answer: it failed (a partial answer), or the caller's request was
/// wrong (the whole answer is that problem).
enum SourceError {
    Failed(Failure),
    Problem(Problem),
}

impl From<Failure> for SourceError {
    fn from(f: Failure) -> Self {
        SourceError::Failed(f)
    }
}

/// A source whose answer the mapping could not turn into FHIR.
fn mapping_failure(client: &SourceClient, e: &crate::model::mapping::MapError) -> SourceError {
    SourceError::Failed(Failure {
        source: client.source.name.clone(),
        reason: format!("mapping failed: {e}"),
        kind: FailureKind::Unusable,
        status: None,
    })
}

fn all_failed(failures: &[Failure]) -> Problem {
    let timeout = failures.iter().all(|f| f.kind == FailureKind::Timeout);
    let text = failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if timeout {
        Problem::new(ProblemKind::Timeout, text)
    } else {
        Problem::new(ProblemKind::SourceFailed, text)
    }
}
