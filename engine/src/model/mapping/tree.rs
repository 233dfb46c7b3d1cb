//! The compiled expression tree of a mapping: what each node does, the YAML rule it came
//! from, the input it reads, and the errors of compiling and evaluating it.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::model::jsonpath::Query;
use crate::model::template::{Function, Text};

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
        /// `$default`: the value of a code the table does not have (before the table's own).
        default: Option<Box<Expr>>,
    },
    /// `$each` over the array an expression makes (`$each: { $split: [...] }`) rather than
    /// over what a query selects.
    EachOf {
        value: Box<Expr>,
        name: Option<String>,
        body: Box<Expr>,
    },
    /// `{ $NAME: [ARG, ...] }`: a template function applied to values, typed (an array, a
    /// number); nothing when an argument is missing.
    Call {
        function: Function,
        args: Vec<Expr>,
    },
    Date {
        value: Box<Expr>,
        time: bool,
    },
    /// `$instant`: a FHIR `instant` (date, time with seconds, and zone).
    Instant {
        value: Box<Expr>,
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

pub use crate::model::fhir::is_resource_type;

/// What a mapping reads: the record, connector values and caller parameters.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub record: &'a Value,
    pub vars: &'a Value,
    pub params: &'a Value,
}
