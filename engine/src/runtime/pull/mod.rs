//! Pull connectors at run time: caller parameters checked and normalised, upstream calls built
//! from the definition's templates (caller values encoded so that they cannot change the host,
//! the path segments or the headers), fanned out to every source in parallel, and the answers
//! mapped and assembled into FHIR: searchset Bundles, resources and batch responses. A failing
//! source gives a partial answer with an `OperationOutcome` naming it.
//!
//! Each interaction lives with its upstream calls and its answer: `search.rs` (parameters,
//! searchset Bundles), `read.rs` and `batch.rs` (batch-response merged entry by entry);
//! `projection.rs` what each reads of a source's JSON answer, which is parsed with it.
//!
//! FHIR versions are kept apart: an interaction asks the sources of a [`Scope`]. A connector
//! whose sources are all of one FHIR version answers at `/fhir/{connector}`; one whose sources
//! differ answers per version only (`/fhir/{connector}/R4`, `/fhir/{connector}/R5`), never one
//! Bundle of both. When a connector has more than one source, each entry's `fullUrl` names its
//! source (`/fhir/{connector}/{source}/{Type}/{id}`), a URL that reads back that very resource.

use std::sync::Arc;

use serde_json::Value;

use crate::model::vocabulary::FhirVersion;
use crate::model::{Connector, Pull, PullResource, Source, Strategy};
use crate::runtime::cache::AnswerCache;
use crate::runtime::problem::{Problem, ProblemKind};
use crate::runtime::upstream::{Failure, FailureKind, SourceClient, Upstreams};

mod batch;
pub mod projection;
mod read;
mod search;

/// Where a request came from, for links in answers and for the upstream request id.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// The request id and trace that the request's source calls carry.
    pub trace: crate::runtime::trace_context::TraceContext,
    /// Public base URL of the engine (`http://host`, or as forwarded by a proxy).
    pub base: String,
    /// The URL of this request as the caller sent it.
    pub self_url: String,
    /// When the caller's answer is due (the engine's request timeout): no source call, retry
    /// or wait for a source's concurrency slot goes past it.
    pub deadline: Option<tokio::time::Instant>,
}

/// Which of a connector's sources an interaction asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every source (`/fhir/{connector}`): refused when they are of different FHIR versions.
    All,
    /// The sources of one FHIR version, by its name (`R4`, `R4B`, `R5`):
    /// `/fhir/{connector}/{version}`.
    Version(String),
    /// One source by its name: `/fhir/{connector}/{source}/{Type}/{id}`.
    Source(String),
}

impl Scope {
    /// The scope a route segment names: a FHIR version (`R4`, `R4B`, `R5`: upper case, so
    /// never a definition's name, which is a lower case DNS label), else a source.
    pub fn of_segment(segment: &str) -> Scope {
        if is_version_name(segment) {
            Scope::Version(segment.to_owned())
        } else {
            Scope::Source(segment.to_owned())
        }
    }

    /// Part of a cache key and of the routes: `` (all), `R4/`, `src/`.
    pub fn prefix(&self) -> String {
        match self {
            Scope::All => String::new(),
            Scope::Version(v) | Scope::Source(v) => format!("{v}/"),
        }
    }
}

/// True for the names of FHIR versions a route may carry.
pub fn is_version_name(segment: &str) -> bool {
    matches!(segment, "R4" | "R4B" | "R5")
}

/// The FHIR version of a source's resources, by name: its declared `fhirVersion`, else R4
/// (the version a connector has when nothing says).
pub fn version_of(source: &Source) -> String {
    format!("{:?}", source.fhir_version.unwrap_or(FhirVersion::R4))
}

/// A pull connector ready to answer.
pub struct PullRuntime {
    pub connector: Arc<Connector>,
    pub cache: Option<AnswerCache>,
    clients: Vec<Arc<SourceClient>>,
    /// What each route reads of each source's JSON answers, made once: the answers are
    /// parsed with it (`projection`).
    reads: projection::RouteReads,
}

impl PullRuntime {
    pub fn new(connector: Arc<Connector>, upstreams: &Upstreams) -> Option<PullRuntime> {
        let Strategy::Pull(pull) = &connector.strategy else {
            return None;
        };
        let cache = pull.cache.as_ref().map(AnswerCache::new);
        let clients: Vec<Arc<SourceClient>> = connector
            .sources
            .iter()
            .filter_map(|s| upstreams.get(&s.name).cloned())
            .collect();
        let reads = projection::RouteReads::new(&connector, pull, &clients);
        Some(PullRuntime {
            connector,
            cache,
            clients,
            reads,
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

    /// The FHIR versions of this connector's sources, each once, in declared order.
    pub fn versions(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in &self.connector.sources {
            let v = version_of(s);
            if !out.contains(&v) {
                out.push(v);
            }
        }
        out
    }

    /// True when entries must name their source in their `fullUrl`: more than one source.
    fn qualified(&self) -> bool {
        self.connector.sources.len() > 1
    }

    /// The sources an interaction in `scope` asks, in declared order; a problem when the
    /// scope is unknown or would mix FHIR versions.
    fn clients_in(&self, scope: &Scope) -> Result<Vec<&Arc<SourceClient>>, Problem> {
        let name = &self.connector.name;
        let chosen: Vec<&Arc<SourceClient>> = match scope {
            Scope::All => {
                let versions = self.versions();
                if versions.len() > 1 {
                    let bases = versions
                        .iter()
                        .map(|v| format!("/fhir/{name}/{v}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(Problem::not_found(format!(
                        "connector `{name}` has sources of FHIR {}: one answer never mixes \
                         versions; ask one version's base: {bases}",
                        versions.join(" and ")
                    )));
                }
                self.clients.iter().collect()
            }
            Scope::Version(v) => self
                .clients
                .iter()
                .filter(|c| version_of(&c.source) == *v)
                .collect(),
            Scope::Source(s) => self
                .clients
                .iter()
                .filter(|c| c.source.name == *s)
                .collect(),
        };
        if chosen.is_empty() {
            return Err(Problem::not_found(match scope {
                Scope::Version(v) => format!(
                    "connector `{name}` has no FHIR {v} source; its versions: {}",
                    self.versions().join(", ")
                ),
                Scope::Source(s) => format!("connector `{name}` has no source `{s}`"),
                Scope::All => format!("connector `{name}` has no source"),
            }));
        }
        Ok(chosen)
    }

    /// The `fullUrl` of a resource that `source` answered: a URL that reads it back.
    fn full_url(&self, info: &RequestInfo, source: &str, resource: &Value) -> Option<String> {
        let local = crate::model::fhir::local_reference(resource)?;
        self.full_url_of(info, source, Some(local.as_str()))
    }

    /// The `fullUrl` of a resource whose `Type/id` is `local` (`None`: it has none, or a
    /// source gave it an id that is no FHIR id, which no URL of the engine reads back: `a b`,
    /// `../../x`).
    fn full_url_of(&self, info: &RequestInfo, source: &str, local: Option<&str>) -> Option<String> {
        let local = local?;
        let (t, id) = local.split_once('/')?;
        if !crate::model::mapping::is_resource_type(t) || !crate::model::fhir::is_id(id) {
            return None;
        }
        let base = format!(
            "{}/fhir/{}",
            info.base.trim_end_matches('/'),
            self.connector.name
        );
        Some(if self.qualified() {
            format!("{base}/{source}/{local}")
        } else {
            format!("{base}/{local}")
        })
    }

    /// The sources of `clients` whose FHIR version has `resource_type`; a 404 naming the
    /// versions that have it when none does (`Ingredient` asked of `/fhir/proxy/R4`: an R4
    /// answer holding an R5-only resource would be valid in no version).
    fn having_type<'c>(
        &self,
        clients: Vec<&'c Arc<SourceClient>>,
        resource_type: &str,
    ) -> Result<Vec<&'c Arc<SourceClient>>, Problem> {
        let of = |c: &SourceClient| c.source.fhir_version.unwrap_or(self.connector.fhir_version);
        let has = |v: FhirVersion| {
            crate::model::fhir_structure::structure(v)
                .map_or(true, |s| s.resource(resource_type).is_some())
        };
        let Some(asked) = clients.first().map(|c| of(c)) else {
            return Ok(clients);
        };
        let kept: Vec<_> = clients.into_iter().filter(|c| has(of(c))).collect();
        if !kept.is_empty() {
            return Ok(kept);
        }
        let elsewhere: Vec<String> = self
            .versions()
            .into_iter()
            .filter(|v| {
                self.clients
                    .iter()
                    .any(|c| version_of(&c.source) == *v && has(of(c)))
            })
            .map(|v| format!("/fhir/{}/{v}", self.connector.name))
            .collect();
        Err(Problem::not_found(format!(
            "`{resource_type}` is not a resource type of FHIR {}{}",
            asked.name(),
            if elsewhere.is_empty() {
                String::new()
            } else {
                format!("; ask {}", elsewhere.join(", "))
            }
        )))
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
    let rate_limited = failures.iter().all(|f| f.kind == FailureKind::RateLimited);
    let text = failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if timeout {
        Problem::new(ProblemKind::Timeout, text)
    } else if rate_limited && !failures.is_empty() {
        Problem::new(FailureKind::RateLimited.problem(), text)
    } else {
        Problem::new(ProblemKind::SourceFailed, text)
    }
}
