//! Structural templates: the FHIR resource written as YAML, compiled once into an expression
//! tree (JSONPath queries, Handlebars strings, operators) and evaluated per record. Output is
//! built as a structure (never by printing JSON text from templates), and empty values are
//! left out.
//!
//! `tree.rs` defines the expression tree (which `config::mapping` compiles from YAML nodes);
//! `eval.rs` evaluates it per record into `output.rs`'s tree, which borrows its keys and the
//! values it copies; that tree is written as JSON directly (`Mapping::resources`, where the
//! result is only sent) or turned into `serde_json::Value`s (`Mapping::apply`); `reads.rs`
//! what the tree reads of a record (`Mapping::reads`), the shape its answer is parsed with.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::Value;

use crate::model::fhir;
use crate::model::template::{Table, Templates};

mod eval;
mod output;
mod reads;
mod tree;

pub use eval::Evaluator;
pub use output::Out;
pub use reads::reads_of;
pub use tree::{CompileError, Conversion, Expr, Input, Kind, MapError, is_resource_type};

/// A connector's compiled mapping.
#[derive(Debug)]
pub struct Mapping {
    pub root: Expr,
    pub templates: Arc<Templates>,
    pub tables: Arc<BTreeMap<String, Table>>,
}

impl Mapping {
    /// The resource types this mapping can produce, when every resource it makes has a
    /// literal `resourceType` (through sequences, `$each` and `$if`); `None` when one is
    /// computed from the record.
    pub fn output_types(&self) -> Option<BTreeSet<String>> {
        fn types(e: &Expr, out: &mut BTreeSet<String>) -> bool {
            match &e.kind {
                Kind::Object(fields) => match fields.iter().find(|(k, _)| k == "resourceType") {
                    Some((
                        _,
                        Expr {
                            kind: Kind::Literal(Value::String(t)),
                            ..
                        },
                    )) => {
                        out.insert(t.clone());
                        true
                    }
                    _ => false,
                },
                Kind::Array(items) => items.iter().all(|i| types(i, out)),
                Kind::Each { body, .. } => types(body, out),
                Kind::If {
                    then, otherwise, ..
                } => types(then, out) && otherwise.as_ref().is_none_or(|o| types(o, out)),
                _ => false,
            }
        }
        let mut out = BTreeSet::new();
        types(&self.root, &mut out).then_some(out)
    }

    /// What this mapping reads of a record (`reads::reads_of`): the shape a record may be
    /// parsed with and map the same as parsed whole.
    pub fn reads(&self) -> crate::model::reads::Reads {
        reads_of(&self.root, &self.templates)
    }

    /// The FHIR resources made from one record, as JSON values.
    pub fn apply(&self, input: Input<'_>) -> Result<Vec<Value>, MapError> {
        Ok(self
            .resources(input)?
            .into_iter()
            .map(Out::into_value)
            .collect())
    }

    /// The FHIR resources made from one record, each written as JSON text directly (no
    /// `Value` built), with its `Type/id`: what the pull route's Bundle sends.
    pub fn write(&self, input: Input<'_>) -> Result<Vec<Written>, MapError> {
        self.resources(input)?
            .iter()
            .map(|r| {
                let id = r.member_str("id");
                let local = match (r.member_str("resourceType"), id) {
                    // Joined by hand: `format!`'s machinery was 2% of a mapped record.
                    (Some(t), Some(id)) => {
                        let mut local = String::with_capacity(t.len() + 1 + id.len());
                        local.push_str(t);
                        local.push('/');
                        local.push_str(id);
                        Some(local)
                    }
                    _ => None,
                };
                // An id that is fine is text: the rarer others are looked at closer.
                let bad_id = match id {
                    Some(id) if fhir::is_id(id) => None,
                    _ => fhir::bad_id(r.member_value("id").as_ref()),
                };
                // Sized for a usual resource: one allocation, not a few as it grows.
                let mut json = Vec::with_capacity(WRITE_CAPACITY);
                serde_json::to_writer(&mut json, r).map_err(|e| MapError {
                    rule: self.root.rule.to_string(),
                    input: None,
                    message: format!("could not be written as JSON: {e}"),
                })?;
                Ok(Written {
                    local,
                    bad_id,
                    json,
                })
            })
            .collect()
    }

    /// The FHIR resources made from one record, borrowing from the record and the mapping:
    /// serialised directly (what the pull route's Bundle does) or turned into `Value`s
    /// (`apply`); the same evaluation either way.
    pub fn resources<'r>(&'r self, input: Input<'r>) -> Result<Vec<Out<'r>>, MapError> {
        let evaluator = Evaluator {
            templates: &self.templates,
            tables: &self.tables,
        };
        let mut resources = Vec::new();
        if let Some(out) = evaluator.made(&self.root, input)? {
            out.splice_into(&mut resources);
        }
        for r in &resources {
            if r.member_str("resourceType").is_none() {
                return Err(MapError {
                    rule: self.root.rule.to_string(),
                    input: None,
                    message: format!(
                        "produced {} without a `resourceType`, not a FHIR resource",
                        r.kind()
                    ),
                });
            }
        }
        Ok(resources)
    }
}

/// A FHIR resource written as JSON text, and its `Type/id` when it has both (as
/// `fhir::local_reference` reads it).
#[derive(Debug)]
pub struct Written {
    pub local: Option<String>,
    /// The resource's id when it breaks FHIR's id rule (`fhir::bad_id`: a number, `../x`,
    /// 65 characters), shown as JSON and cut: not an id to serve or write.
    pub bad_id: Option<String>,
    /// The resource as compact JSON text (one object), UTF-8: the serialiser's bytes, kept
    /// as bytes since they are sent as bytes (not checked again as a `String` would be).
    pub json: Vec<u8>,
}

/// The room a written resource starts with.
const WRITE_CAPACITY: usize = 512;

impl Written {
    /// A resource that is already a JSON value (a record taken as it is).
    pub fn of_value(resource: &Value) -> Result<Written, serde_json::Error> {
        Ok(Written {
            local: fhir::local_reference(resource),
            bad_id: fhir::bad_id(resource.get("id")),
            json: serde_json::to_vec(resource)?,
        })
    }
}
