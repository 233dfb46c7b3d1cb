//! Structural templates: the FHIR resource written as YAML, compiled once into an expression
//! tree (JSONPath queries, Handlebars strings, operators) and evaluated per record. Output is
//! built as a structure, never printed as JSON text, and empty values are left out.
//!
//! `compile.rs` turns YAML nodes into the tree defined here; `eval.rs` evaluates it per record.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::model::fhir;
use crate::model::jsonpath::Query;
use crate::model::template::{Table, Templates, Text};

mod eval;

pub use eval::Evaluator;

/// A compiled template node and the YAML path it came from (named in errors).
#[derive(Debug)]
pub struct Expr {
    pub rule: Arc<str>,
    pub kind: Kind,
}

/// What a template node does.
#[derive(Debug)]
pub enum Kind {
    Literal(Value),
    Text(Text),
    Object(Vec<(String, Expr)>),
    Array(Vec<Expr>),
    Path {
        query: Query,
        default: Option<Box<Expr>>,
    },
    Paths(Query),
    Each {
        query: Query,
        name: Option<String>,
        body: Box<Expr>,
    },
    If {
        query: Query,
        equals: Option<Value>,
        then: Box<Expr>,
        otherwise: Option<Box<Expr>>,
    },
    Translate {
        value: Box<Expr>,
        table: String,
    },
    Date {
        value: Box<Expr>,
        time: bool,
    },
    Uuid(Vec<Expr>),
    Reference {
        resource_type: String,
        id: Box<Expr>,
    },
    Convert {
        value: Box<Expr>,
        to: Conversion,
    },
}

/// The primitive a value is converted to by `$number`, `$integer`, `$boolean`, `$string`.
#[derive(Debug, Clone, Copy)]
pub enum Conversion {
    Number,
    Integer,
    Boolean,
    String,
}

/// A problem found while compiling a template: where, what, and a hint.
#[derive(Debug, Clone, PartialEq)]
pub struct CompileError {
    pub at: Vec<String>,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
}

/// A mapping failure: the rule (YAML path), the input path when known, and what went wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct MapError {
    pub rule: String,
    pub input: Option<String>,
    pub message: String,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {}: {}", self.rule, self.message)?;
        if let Some(input) = &self.input {
            write!(f, " (input {input})")?;
        }
        Ok(())
    }
}

impl std::error::Error for MapError {}

/// True for a FHIR resource type name.
pub fn is_resource_type(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_alphabetic())
        && s.len() >= 2
}

/// What a mapping reads: the record, connector values and caller parameters.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub record: &'a Value,
    pub vars: &'a Value,
    pub params: &'a Value,
}

/// A connector's compiled mapping.
#[derive(Debug)]
pub struct Mapping {
    pub root: Expr,
    pub templates: Arc<Templates>,
    pub tables: Arc<BTreeMap<String, Table>>,
}

impl Mapping {
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
            if !r.get("resourceType").is_some_and(Value::is_string) {
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
