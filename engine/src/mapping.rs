//! Structural templates: the FHIR resource written as YAML, compiled once into an expression
//! tree (JSONPath queries, Handlebars strings, operators) and evaluated per record. Output is
//! built as a structure, never printed as JSON text, and empty values are left out.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use handlebars::Context;
use serde_json::{Map, Value};

use crate::fhir;
use crate::jsonpath::Query;
use crate::template::{Table, Templates, Text};
use crate::yaml::{Node, NodeValue, display_path};

/// The operators of structural templates; the first is the head, the rest its options.
const OPERATORS: [(&str, &[&str], &[&str]); 14] = [
    ("$path", &["$default"], &[]),
    ("$paths", &[], &[]),
    ("$each", &["$as"], &["$do"]),
    ("$if", &["$equals", "$else"], &["$then"]),
    ("$translate", &[], &["$table"]),
    ("$date", &[], &[]),
    ("$dateTime", &[], &[]),
    ("$uuid", &[], &[]),
    ("$reference", &[], &["$id"]),
    ("$literal", &[], &[]),
    ("$number", &[], &[]),
    ("$integer", &[], &[]),
    ("$boolean", &[], &[]),
    ("$string", &[], &[]),
];

/// A compiled template node and the YAML path it came from (named in errors).
#[derive(Debug)]
pub struct Expr {
    rule: Arc<str>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
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

#[derive(Debug, Clone, Copy)]
enum Conversion {
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

/// Compiles templates of one connector into expressions.
pub struct Compiler<'a> {
    pub templates: &'a mut Templates,
    pub tables: &'a BTreeMap<String, Table>,
    pub errors: Vec<CompileError>,
}

impl Compiler<'_> {
    fn error(&mut self, at: &[String], node: &Node, message: String, hint: Option<String>) -> Expr {
        self.errors.push(CompileError {
            at: at.to_vec(),
            line: node.line,
            column: node.column,
            message,
            hint,
        });
        Expr {
            rule: display_path(at).into(),
            kind: Kind::Literal(Value::Null),
        }
    }

    /// Compiles a template node found at YAML path `at`.
    pub fn compile(&mut self, node: &Node, at: &[String]) -> Expr {
        let rule: Arc<str> = display_path(at).into();
        let kind = match &node.value {
            NodeValue::Str(s) => match self.templates.compile(&rule, s) {
                Ok(Text::Const(c)) => Kind::Literal(Value::String(c)),
                Ok(t) => Kind::Text(t),
                Err(e) => {
                    let place = e
                        .position
                        .map(|(l, c)| format!(" (template line {l}, column {c})"))
                        .unwrap_or_default();
                    return self.error(at, node, format!("{}{place}", e.message), e.hint);
                }
            },
            NodeValue::Seq(items) => Kind::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, n)| self.compile(n, &push(at, &i.to_string())))
                    .collect(),
            ),
            NodeValue::Map(entries) => {
                if entries.iter().any(|(k, _)| k.name.starts_with('$')) {
                    return self.operator(node, entries, at, rule);
                }
                Kind::Object(
                    entries
                        .iter()
                        .map(|(k, n)| (k.name.clone(), self.compile(n, &push(at, &k.name))))
                        .collect(),
                )
            }
            _ => Kind::Literal(node.to_json()),
        };
        Expr { rule, kind }
    }

    fn operator(
        &mut self,
        node: &Node,
        entries: &[(crate::yaml::Key, Node)],
        at: &[String],
        rule: Arc<str>,
    ) -> Expr {
        let names: Vec<&str> = entries.iter().map(|(k, _)| k.name.as_str()).collect();
        let heads: Vec<_> = OPERATORS
            .iter()
            .filter(|(h, _, _)| names.contains(h))
            .collect();
        let known: Vec<&str> = OPERATORS
            .iter()
            .flat_map(|(h, o, r)| {
                std::iter::once(*h)
                    .chain(o.iter().copied())
                    .chain(r.iter().copied())
            })
            .collect();
        let [(head, optional, required)] = heads.as_slice() else {
            let first = names
                .iter()
                .find(|n| n.starts_with('$'))
                .copied()
                .unwrap_or_default();
            return if heads.is_empty() {
                let hint = crate::diagnostic::did_you_mean(first, OPERATORS.iter().map(|o| o.0));
                self.error(at, node, format!("unknown operator `{first}`"), hint.or(Some("a key that starts with `$` is an operator; write `$literal: {...}` for a literal object".into())))
            } else {
                let found: Vec<&str> = heads.iter().map(|h| h.0).collect();
                self.error(
                    at,
                    node,
                    format!(
                        "one operator per mapping, found `{}`",
                        found.join("` and `")
                    ),
                    None,
                )
            };
        };
        for (k, _) in entries {
            let name = k.name.as_str();
            if name == *head || optional.contains(&name) || required.contains(&name) {
                continue;
            }
            let allowed: Vec<&str> = optional.iter().chain(required.iter()).copied().collect();
            let (message, hint) = if name.starts_with('$') {
                let hint = crate::diagnostic::did_you_mean(
                    name,
                    allowed.iter().copied().chain(known.iter().copied()),
                );
                (
                    format!("`{name}` does not go with `{head}`"),
                    hint.or_else(|| {
                        (!allowed.is_empty())
                            .then(|| format!("`{head}` takes {}", allowed.join(", ")))
                    }),
                )
            } else {
                (
                    format!("`{head}` cannot be mixed with the field `{name}`"),
                    Some("put the operator under its own key".into()),
                )
            };
            // Point at the key: it is the key that is wrong here.
            let key_node = Node {
                value: NodeValue::Null,
                line: k.line,
                column: k.column,
            };
            return self.error(&push(at, name), &key_node, message, hint);
        }
        for r in *required {
            if !names.contains(r) {
                return self.error(at, node, format!("`{head}` needs `{r}`"), None);
            }
        }
        let get = |name: &str| entries.iter().find(|(k, _)| k.name == name).map(|(_, n)| n);
        let value = get(head).unwrap_or(node);
        let value_at = push(at, head);
        let kind = match *head {
            "$path" | "$paths" | "$each" | "$if" => {
                let Some(text) = value.as_str() else {
                    return self.error(
                        &value_at,
                        value,
                        format!("`{head}` takes a JSONPath query"),
                        None,
                    );
                };
                let query = match Query::parse(text) {
                    Ok(q) => q,
                    Err(e) => {
                        return self.error(
                            &value_at,
                            value,
                            e,
                            Some("JSONPath as in RFC 9535, e.g. `$.results[*]` or `@.code`".into()),
                        );
                    }
                };
                match *head {
                    "$path" => Kind::Path {
                        query,
                        default: get("$default")
                            .map(|n| Box::new(self.compile(n, &push(at, "$default")))),
                    },
                    "$paths" => Kind::Paths(query),
                    "$each" => {
                        let name = match get("$as") {
                            None => None,
                            Some(n) => match n.as_str() {
                                Some(s) if is_identifier(s) && !["record", "item", "vars", "params", "index"].contains(&s) => Some(s.to_owned()),
                                _ => return self.error(&push(at, "$as"), n, "`$as` takes a name (letters, digits, `_`) other than record, item, vars, params and index".into(), None),
                            },
                        };
                        let body = get("$do").map(|n| self.compile(n, &push(at, "$do")));
                        Kind::Each {
                            query,
                            name,
                            body: Box::new(body.unwrap_or(Expr {
                                rule: rule.clone(),
                                kind: Kind::Literal(Value::Null),
                            })),
                        }
                    }
                    _ => Kind::If {
                        query,
                        equals: get("$equals").map(Node::to_json),
                        then: Box::new(
                            self.compile(get("$then").unwrap_or(node), &push(at, "$then")),
                        ),
                        otherwise: get("$else")
                            .map(|n| Box::new(self.compile(n, &push(at, "$else")))),
                    },
                }
            }
            "$translate" => {
                let table_node = get("$table").unwrap_or(node);
                let Some(table) = table_node.as_str() else {
                    return self.error(
                        &push(at, "$table"),
                        table_node,
                        "`$table` takes the name of a table".into(),
                        None,
                    );
                };
                if !self.tables.contains_key(table) {
                    let hint = crate::diagnostic::did_you_mean(
                        table,
                        self.tables.keys().map(String::as_str),
                    );
                    return self.error(
                        &push(at, "$table"),
                        table_node,
                        format!("no table `{table}` in spec.tables"),
                        hint,
                    );
                }
                Kind::Translate {
                    value: Box::new(self.compile(value, &value_at)),
                    table: table.to_owned(),
                }
            }
            "$date" | "$dateTime" => Kind::Date {
                value: Box::new(self.compile(value, &value_at)),
                time: *head == "$dateTime",
            },
            "$uuid" => match &value.value {
                NodeValue::Seq(items) => Kind::Uuid(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, n)| self.compile(n, &push(&value_at, &i.to_string())))
                        .collect(),
                ),
                _ => Kind::Uuid(vec![self.compile(value, &value_at)]),
            },
            "$reference" => {
                let Some(t) = value.as_str().filter(|t| is_resource_type(t)) else {
                    return self.error(
                        &value_at,
                        value,
                        "`$reference` takes a FHIR resource type, e.g. `Patient`".into(),
                        None,
                    );
                };
                let id = get("$id").unwrap_or(node);
                Kind::Reference {
                    resource_type: t.to_owned(),
                    id: Box::new(self.compile(id, &push(at, "$id"))),
                }
            }
            "$literal" => Kind::Literal(value.to_json()),
            conv => Kind::Convert {
                value: Box::new(self.compile(value, &value_at)),
                to: match conv {
                    "$number" => Conversion::Number,
                    "$integer" => Conversion::Integer,
                    "$boolean" => Conversion::Boolean,
                    _ => Conversion::String,
                },
            },
        };
        Expr { rule, kind }
    }
}

fn push(at: &[String], s: &str) -> Vec<String> {
    let mut v = at.to_vec();
    v.push(s.to_owned());
    v
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

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

/// Where a mapping is evaluating: the record, the current element and the names bound by
/// enclosing `$each`es, and how the current element was reached (for error paths).
struct Scope<'a> {
    input: Input<'a>,
    templates: &'a Templates,
    current: &'a Value,
    index: Option<Value>,
    bindings: Vec<(&'a str, &'a Value)>,
    /// The enclosing scope, the query that selected the current element, and its position.
    parent: Option<(&'a Scope<'a>, &'a Query, usize)>,
    context: OnceCell<Context>,
}

impl<'a> Scope<'a> {
    fn new(input: Input<'a>, templates: &'a Templates) -> Self {
        Scope {
            input,
            templates,
            current: input.record,
            index: None,
            bindings: Vec::new(),
            parent: None,
            context: OnceCell::new(),
        }
    }

    fn child(
        &'a self,
        query: &'a Query,
        current: &'a Value,
        index: usize,
        name: Option<&'a str>,
    ) -> Scope<'a> {
        let mut bindings = self.bindings.clone();
        if let Some(n) = name {
            bindings.push((n, current));
        }
        Scope {
            input: self.input,
            templates: self.templates,
            current,
            index: Some(Value::from(index)),
            bindings,
            parent: Some((self, query, index)),
            context: OnceCell::new(),
        }
    }

    /// The normalized path of the current element inside the record (`$` for the record).
    fn current_path(&self) -> String {
        match self.parent {
            None => "$".into(),
            Some((parent, query, i)) => parent.input_path(query, i).unwrap_or_else(|| "$".into()),
        }
    }

    /// The normalized path, inside the record, of the `i`th value `query` selects here.
    fn input_path(&self, query: &Query, i: usize) -> Option<String> {
        let located = query
            .locate(self.input.record, self.current)
            .into_iter()
            .nth(i)?;
        Some(if query.is_relative() {
            format!("{}{}", self.current_path(), &located[1..])
        } else {
            located
        })
    }
}

impl crate::template::Scope for Scope<'_> {
    fn value(&self, name: &str) -> Option<&Value> {
        match name {
            "record" => Some(self.input.record),
            "item" => Some(self.current),
            "vars" => Some(self.input.vars),
            "params" => Some(self.input.params),
            "index" => self.index.as_ref(),
            other => self
                .bindings
                .iter()
                .rev()
                .find(|(n, _)| *n == other)
                .map(|(_, v)| *v),
        }
    }

    /// The Handlebars context of this scope, built once and holding only what the
    /// connector's Handlebars templates read.
    fn context(&self) -> &Context {
        self.context.get_or_init(|| {
            let mut m = Map::new();
            let named = [
                ("record", self.input.record),
                ("item", self.current),
                ("vars", self.input.vars),
                ("params", self.input.params),
            ];
            for (name, value) in named.into_iter().chain(self.bindings.iter().copied()) {
                if self.templates.needs(name) {
                    m.insert(name.to_owned(), value.clone());
                }
            }
            if let Some(i) = &self.index {
                m.insert("index".into(), i.clone());
            }
            Context::from(Value::Object(m))
        })
    }
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

/// Evaluates compiled expressions with a connector's templates and tables (the mapping, and
/// request bodies of pull connectors).
pub struct Evaluator<'a> {
    pub templates: &'a Templates,
    pub tables: &'a BTreeMap<String, Table>,
}

impl Evaluator<'_> {
    /// The value of an expression for one input; `None` when it is empty.
    pub fn evaluate(&self, e: &Expr, input: Input<'_>) -> Result<Option<Value>, MapError> {
        let scope = Scope::new(input, self.templates);
        self.eval(e, &scope)
    }

    fn fail(&self, e: &Expr, message: impl Into<String>) -> MapError {
        MapError {
            rule: e.rule.to_string(),
            input: None,
            message: message.into(),
        }
    }

    fn eval(&self, e: &Expr, scope: &Scope<'_>) -> Result<Option<Value>, MapError> {
        Ok(match &e.kind {
            Kind::Literal(v) => Some(v.clone()).filter(|v| !fhir::is_empty(v)),
            Kind::Text(t) => {
                let s = self
                    .templates
                    .render(t, scope)
                    .map_err(|m| self.fail(e, m))?;
                Some(Value::String(s)).filter(|v| !fhir::is_empty(v))
            }
            Kind::Object(fields) => {
                let mut m = Map::with_capacity(fields.len());
                for (k, f) in fields {
                    if let Some(v) = self.eval(f, scope)? {
                        m.insert(k.clone(), v);
                    }
                }
                Some(Value::Object(m)).filter(|v| !fhir::is_empty(v))
            }
            Kind::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match (self.eval(item, scope)?, &item.kind) {
                        (Some(Value::Array(a)), Kind::Each { .. } | Kind::Paths(_)) => {
                            out.extend(a)
                        }
                        (Some(v), _) => out.push(v),
                        (None, _) => {}
                    }
                }
                Some(Value::Array(out)).filter(|v| !fhir::is_empty(v))
            }
            Kind::Path { query, default } => {
                let nodes = query.select(scope.input.record, scope.current);
                match nodes.as_slice() {
                    [] => match default {
                        Some(d) => self.eval(d, scope)?,
                        None => None,
                    },
                    [one] => match (prune((*one).clone()), default) {
                        (None, Some(d)) => self.eval(d, scope)?,
                        (value, _) => value,
                    },
                    many => {
                        return Err(MapError {
                            rule: e.rule.to_string(),
                            input: scope.input_path(query, 0),
                            message: format!(
                                "`{}` selects {} values where one is expected; use `$paths` or `$each` for many",
                                query.as_str(),
                                many.len()
                            ),
                        });
                    }
                }
            }
            Kind::Paths(query) => {
                let items: Vec<Value> = query
                    .select(scope.input.record, scope.current)
                    .into_iter()
                    .filter_map(|v| prune(v.clone()))
                    .collect();
                Some(Value::Array(items)).filter(|v| !fhir::is_empty(v))
            }
            Kind::Each { query, name, body } => {
                let nodes = query.select(scope.input.record, scope.current);
                let mut out = Vec::with_capacity(nodes.len());
                for (i, node) in nodes.into_iter().enumerate() {
                    let child = scope.child(query, node, i, name.as_deref());
                    match self.eval(body, &child) {
                        Ok(Some(Value::Array(a))) => out.extend(a),
                        Ok(Some(v)) => out.push(v),
                        Ok(None) => {}
                        Err(mut err) => {
                            if err.input.is_none() {
                                err.input = scope.input_path(query, i);
                            }
                            return Err(err);
                        }
                    }
                }
                Some(Value::Array(out)).filter(|v| !fhir::is_empty(v))
            }
            Kind::If {
                query,
                equals,
                then,
                otherwise,
            } => {
                let nodes = query.select(scope.input.record, scope.current);
                let holds = match equals {
                    Some(x) => nodes.iter().any(|n| fhir::same(n, x)),
                    None => nodes
                        .iter()
                        .any(|n| !fhir::is_empty(n) && **n != Value::Bool(false)),
                };
                match (holds, otherwise) {
                    (true, _) => self.eval(then, scope)?,
                    (false, Some(o)) => self.eval(o, scope)?,
                    (false, None) => None,
                }
            }
            Kind::Translate { value, table } => match self.eval(value, scope)? {
                None => None,
                Some(v) => {
                    let code = match &v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        other => {
                            return Err(self.with_input(
                                e,
                                value,
                                scope,
                                format!("cannot translate {}", fhir::kind(other)),
                            ));
                        }
                    };
                    let t = self
                        .tables
                        .get(table)
                        .ok_or_else(|| self.fail(e, format!("no table `{table}`")))?;
                    Some(
                        t.translate(table, &code)
                            .map_err(|m| self.with_input(e, value, scope, m))?,
                    )
                    .filter(|v| !fhir::is_empty(v))
                }
            },
            Kind::Date { value, time } => match self.eval(value, scope)? {
                None => None,
                Some(v) => {
                    let out = if *time {
                        fhir::date_time(&v)
                    } else {
                        fhir::date(&v)
                    };
                    Some(Value::String(
                        out.map_err(|m| self.with_input(e, value, scope, m))?,
                    ))
                }
            },
            Kind::Uuid(parts) => {
                let mut texts = Vec::with_capacity(parts.len());
                for p in parts {
                    match self.eval(p, scope)? {
                        Some(Value::String(s)) => texts.push(s),
                        Some(other) => texts.push(other.to_string()),
                        None => {
                            return Err(self.with_input(
                                e,
                                p,
                                scope,
                                "a part of the id is missing, so the id would not be deterministic"
                                    .into(),
                            ));
                        }
                    }
                }
                Some(Value::String(fhir::uuid5(&texts)))
            }
            Kind::Reference { resource_type, id } => match self.eval(id, scope)? {
                None => None,
                Some(Value::String(s)) => {
                    Some(serde_json::json!({"reference": format!("{resource_type}/{s}")}))
                }
                Some(Value::Number(n)) => {
                    Some(serde_json::json!({"reference": format!("{resource_type}/{n}")}))
                }
                Some(other) => {
                    return Err(self.with_input(
                        e,
                        id,
                        scope,
                        format!("a reference id must be text, found {}", fhir::kind(&other)),
                    ));
                }
            },
            Kind::Convert { value, to } => match self.eval(value, scope)? {
                None => None,
                Some(v) => Some(convert(&v, *to).map_err(|m| self.with_input(e, value, scope, m))?),
            },
        })
    }

    /// An error with the input path of `source` when it is a query.
    fn with_input(&self, e: &Expr, source: &Expr, scope: &Scope<'_>, message: String) -> MapError {
        let input = match &source.kind {
            Kind::Path { query, .. } => scope.input_path(query, 0),
            _ => None,
        };
        MapError {
            rule: e.rule.to_string(),
            input,
            message,
        }
    }
}

/// Removes empty values inside a selected value, as FHIR allows none.
fn prune(v: Value) -> Option<Value> {
    let v = match v {
        Value::Object(o) => Value::Object(
            o.into_iter()
                .filter_map(|(k, v)| prune(v).map(|v| (k, v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().filter_map(prune).collect()),
        other => other,
    };
    Some(v).filter(|v| !fhir::is_empty(v))
}

fn convert(v: &Value, to: Conversion) -> Result<Value, String> {
    let text = match v {
        Value::String(s) => s.trim().to_owned(),
        other => other.to_string(),
    };
    match to {
        Conversion::String => Ok(Value::String(match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })),
        Conversion::Number => text
            .parse::<serde_json::Number>()
            .map(Value::Number)
            .map_err(|_| format!("`{text}` is not a number")),
        Conversion::Integer => text
            .parse::<i64>()
            .ok()
            .or_else(|| {
                // A decimal without a fraction (`3.0`) converts without loss.
                let f = text.parse::<f64>().ok()?;
                (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
            })
            .map(Value::from)
            .ok_or_else(|| format!("`{text}` is not an integer")),
        Conversion::Boolean => match text.as_str() {
            "true" | "True" | "TRUE" | "1" | "yes" | "Y" | "y" => Ok(Value::Bool(true)),
            "false" | "False" | "FALSE" | "0" | "no" | "N" | "n" => Ok(Value::Bool(false)),
            _ => Err(format!("`{text}` is not a boolean")),
        },
    }
}
