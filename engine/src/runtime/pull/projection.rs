//! What each pull route reads of a source's JSON answer, made once per connector build: a
//! search the records its `records` query selects (read as its mapping reads them), its
//! `total`; a read the record its `records` selects; a batch the answer's `entry`; and, for
//! every route, what the source's own settings read (`SourceClient::reads`). The answer is
//! parsed with it: the members no one reads are skipped by the parser, never built.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::jsonpath::Query;
use crate::model::mapping::Mapping;
use crate::model::reads::{Reads, Step};
use crate::model::vocabulary::{Interaction, SourceType};
use crate::model::{Connector, Pull};
use crate::runtime::upstream::SourceClient;

/// The shapes of one connector's routes, by source name and resource type.
pub(super) struct RouteReads {
    by_source: HashMap<String, SourceReads>,
}

/// The shapes of one source's answers to each route.
struct SourceReads {
    search: HashMap<String, Reads>,
    read: HashMap<String, Reads>,
    batch: Reads,
}

impl RouteReads {
    pub(super) fn new(connector: &Connector, pull: &Pull, clients: &[Arc<SourceClient>]) -> Self {
        let by_source = clients
            .iter()
            .map(|c| {
                let own = c.reads();
                let mut search = HashMap::new();
                let mut read = HashMap::new();
                for res in &pull.resources {
                    if let Some(s) = &res.search {
                        let mapping = connector.mapping_for(res, Interaction::Search);
                        let mut r =
                            document_reads(connector, Some(&s.records), mapping).union(own.clone());
                        let total = s.total.as_ref().map(|t| t.reads(Reads::All)).or_else(|| {
                            (c.source.kind == SourceType::Fhir)
                                .then(|| Reads::at(&[Step::Member("total".into())], Reads::All))
                        });
                        if let Some(t) = total {
                            r.add(t);
                        }
                        search.insert(res.resource_type.clone(), r);
                    }
                    if let Some(rd) = &res.read {
                        let mapping = connector.mapping_for(res, Interaction::Read);
                        read.insert(
                            res.resource_type.clone(),
                            document_reads(connector, Some(&rd.records), mapping)
                                .union(own.clone()),
                        );
                    }
                }
                let batch =
                    Reads::at(&[Step::Member("entry".into())], Reads::All).union(own.clone());
                (
                    c.source.name.clone(),
                    SourceReads {
                        search,
                        read,
                        batch,
                    },
                )
            })
            .collect();
        RouteReads { by_source }
    }

    /// What a search of `resource_type` reads of `source`'s answers (everything when not
    /// known).
    pub(super) fn search(&self, source: &str, resource_type: &str) -> &Reads {
        self.by_source
            .get(source)
            .and_then(|s| s.search.get(resource_type))
            .unwrap_or(&Reads::All)
    }

    /// What a read of `resource_type` reads of `source`'s answers.
    pub(super) fn read(&self, source: &str, resource_type: &str) -> &Reads {
        self.by_source
            .get(source)
            .and_then(|s| s.read.get(resource_type))
            .unwrap_or(&Reads::All)
    }

    /// What a batch reads of `source`'s answers.
    pub(super) fn batch(&self, source: &str) -> &Reads {
        self.by_source.get(source).map_or(&Reads::All, |s| &s.batch)
    }
}

/// What is read of one record: what its mapping reads; the whole record when there is no
/// mapping (it is taken as a FHIR resource) or when Bundles are split (each entry's
/// resource taken, references rewritten, ids made from its text).
pub fn record_reads(connector: &Connector, mapping: Option<&Mapping>) -> Reads {
    match mapping {
        Some(m) if !connector.split_bundles => m.reads(),
        _ => Reads::All,
    }
}

/// What mapping a document reads of it: the records `records` selects (the document itself
/// when `None`), each read as `mapping` reads it (`record_reads`). What a route reads of an
/// answer besides (its `total`, the source's own settings) is added by `RouteReads`.
pub fn document_reads(
    connector: &Connector,
    records: Option<&Query>,
    mapping: Option<&Mapping>,
) -> Reads {
    let record = record_reads(connector, mapping);
    match records {
        Some(q) => q.reads(record),
        None => record,
    }
}
