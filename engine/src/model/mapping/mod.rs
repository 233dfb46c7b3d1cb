//! Structural templates: the FHIR resource written as YAML, compiled once into an expression
//! tree (JSONPath queries, Handlebars strings, operators) and evaluated per record. Output is
//! built as a structure, never printed as JSON text, and empty values are left out.
//!
//! `tree.rs` defines the expression tree (which `config::mapping` compiles from YAML nodes);
//! `eval.rs` evaluates it per record.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::Value;

use crate::model::fhir;
use crate::model::template::{Table, Templates};

mod eval;
mod tree;

pub use eval::Evaluator;
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

    /// The FHIR resources made from one record.
    pub fn apply(&self, input: Input<'_>) -> Result<Vec<Value>, MapError> {
        let evaluator = Evaluator {
            templates: &self.templates,
            tables: &self.tables,
        };
        let out = evaluator.evaluate(&self.root, input)?;
        let resources = match out {
            None => Vec::new(),
            Some(Value::Array(items)) => items,
            Some(v) => vec![v],
        };
        for r in &resources {
            let kind = r
                .as_object()
                .and_then(|o| crate::model::jsonpath::member(o, "resourceType"));
            if !kind.is_some_and(Value::is_string) {
                return Err(MapError {
                    rule: self.root.rule.to_string(),
                    input: None,
                    message: format!(
                        "produced {} without a `resourceType`, not a FHIR resource",
                        fhir::kind(r)
                    ),
                });
            }
        }
        Ok(resources)
    }
}
