//! The documents a connector may refer to by name (sources and sinks), and the check of a
//! connector's `sink` reference against them.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::context::Ctx;
use crate::config::spec::ConnectorSpec;
use crate::model::hint::did_you_mean;
use crate::model::{Sink, SinkRef, Source};

/// The named documents a connector may refer to.
pub struct Names<'a> {
    pub sources: &'a BTreeMap<String, Arc<Source>>,
    pub sinks: &'a BTreeMap<String, Arc<Sink>>,
    /// Documents that exist but failed their schema check.
    pub broken: &'a HashSet<(String, String)>,
    /// Read and check the definitions' test files (not needed by `map`, `serve`, `run`).
    pub tests: bool,
}

/// The sink a connector writes to: the embedded default, or a `Sink` document by name.
pub fn sink_ref(ctx: &mut Ctx<'_>, spec: &ConnectorSpec, names: &Names<'_>) -> Option<SinkRef> {
    match &spec.sink {
        None => Some(SinkRef::Default),
        Some(s) => match names.sinks.get(s) {
            Some(sink) => Some(SinkRef::Named(sink.clone())),
            None if names.broken.contains(&("Sink".into(), s.clone())) => None,
            None => {
                let hint = did_you_mean(s, names.sinks.keys().map(String::as_str));
                ctx.error(&["spec", "sink"], format!("no Sink named `{s}`"), hint);
                None
            }
        },
    }
}
