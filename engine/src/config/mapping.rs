//! The template compiler: YAML nodes of a structural template checked (operators, their
//! options, JSONPath queries, Handlebars strings, tables) and turned into an expression tree.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::config::yaml::{Node, NodeValue, display_path};
use crate::model::jsonpath::Query;
use crate::model::mapping::{CompileError, Conversion, Expr, Kind, is_resource_type};
use crate::model::template::{Function, Table, Templates, Text};

/// The operators of structural templates; the first is the head, the rest its options.
const OPERATORS: [(&str, &[&str], &[&str]); 15] = [
    ("$path", &["$default"], &[]),
    ("$paths", &[], &[]),
    ("$each", &["$as"], &["$do"]),
    ("$if", &["$equals", "$else"], &["$then"]),
    ("$translate", &["$default"], &["$table"]),
    ("$date", &[], &[]),
    ("$dateTime", &[], &[]),
    ("$instant", &[], &[]),
    ("$uuid", &[], &[]),
    ("$reference", &[], &["$id"]),
    ("$literal", &[], &[]),
    ("$number", &[], &[]),
    ("$integer", &[], &[]),
    ("$boolean", &[], &[]),
    ("$string", &[], &[]),
];

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
        entries: &[(crate::config::yaml::Key, Node)],
        at: &[String],
        rule: Arc<str>,
    ) -> Expr {
        let names: Vec<&str> = entries.iter().map(|(k, _)| k.name.as_str()).collect();
        if let Some((key, value)) = entries
            .iter()
            .find(|(k, _)| Function::by_operator(&k.name).is_some())
        {
            return self.call(node, entries, key, value, at, rule);
        }
        let heads: Vec<_> = OPERATORS
            .iter()
            .filter(|(h, _, _)| names.contains(h))
            .collect();
        let functions: Vec<String> = Function::ALL
            .iter()
            .map(|(n, _)| format!("${n}"))
            .filter(|n| Function::by_operator(n).is_some())
            .collect();
        let known: Vec<&str> = OPERATORS
            .iter()
            .flat_map(|(h, o, r)| {
                std::iter::once(*h)
                    .chain(o.iter().copied())
                    .chain(r.iter().copied())
            })
            .chain(functions.iter().map(String::as_str))
            .collect();
        let [(head, optional, required)] = heads.as_slice() else {
            let first = names
                .iter()
                .find(|n| n.starts_with('$'))
                .copied()
                .unwrap_or_default();
            return if heads.is_empty() {
                let hint = crate::model::hint::did_you_mean(
                    first,
                    OPERATORS
                        .iter()
                        .map(|o| o.0)
                        .chain(functions.iter().map(String::as_str)),
                );
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
                let hint = crate::model::hint::did_you_mean(
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
            "$each" if matches!(value.value, NodeValue::Map(_)) => {
                let name = match self.each_name(get("$as"), at) {
                    Ok(n) => n,
                    Err(e) => return *e,
                };
                let body = get("$do").map(|n| self.compile(n, &push(at, "$do")));
                Kind::EachOf {
                    value: Box::new(self.compile(value, &value_at)),
                    name,
                    body: Box::new(body.unwrap_or(Expr {
                        rule: rule.clone(),
                        kind: Kind::Literal(Value::Null),
                    })),
                }
            }
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
                            e.to_string(),
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
                        let name = match self.each_name(get("$as"), at) {
                            Ok(n) => n,
                            Err(e) => return *e,
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
                    let hint = crate::model::hint::did_you_mean(
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
                    default: get("$default")
                        .map(|n| Box::new(self.compile(n, &push(at, "$default")))),
                }
            }
            "$date" | "$dateTime" => Kind::Date {
                value: Box::new(self.compile(value, &value_at)),
                time: *head == "$dateTime",
            },
            "$instant" => Kind::Instant {
                value: Box::new(self.compile(value, &value_at)),
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

impl Compiler<'_> {
    /// The name `$as` gives an `$each` element; the error expression when it is not one.
    fn each_name(
        &mut self,
        node: Option<&Node>,
        at: &[String],
    ) -> Result<Option<String>, Box<Expr>> {
        let Some(n) = node else {
            return Ok(None);
        };
        match n.as_str() {
            Some(s)
                if is_identifier(s)
                    && !["record", "item", "vars", "params", "index"].contains(&s) =>
            {
                Ok(Some(s.to_owned()))
            }
            _ => Err(Box::new(self.error(
                &push(at, "$as"),
                n,
                "`$as` takes a name (letters, digits, `_`) other than record, item, vars, params and index".into(),
                None,
            ))),
        }
    }

    /// A function operator, `{ $NAME: [ARG, ...] }` (or `{ $NAME: ARG }` for one argument):
    /// alone in its mapping, its arity and literal arguments checked (a regular expression
    /// compiled, a date format read), each error at the argument's line and column.
    fn call(
        &mut self,
        node: &Node,
        entries: &[(crate::config::yaml::Key, Node)],
        key: &crate::config::yaml::Key,
        value: &Node,
        at: &[String],
        rule: Arc<str>,
    ) -> Expr {
        let head = key.name.as_str();
        let Some(function) = Function::by_operator(head) else {
            return self.error(at, node, format!("unknown operator `{head}`"), None);
        };
        if let Some((other, _)) = entries.iter().find(|(k, _)| k.name != head) {
            let key_node = Node {
                value: NodeValue::Null,
                line: other.line,
                column: other.column,
            };
            return self.error(
                &push(at, &other.name),
                &key_node,
                format!("`{head}` takes its arguments as a list and no options; `{}` does not go with it", other.name),
                Some(format!("write `{head}: [VALUE, ...]`")),
            );
        }
        let value_at = push(at, head);
        let arg_nodes: Vec<(&Node, Vec<String>)> = match &value.value {
            NodeValue::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| (n, push(&value_at, &i.to_string())))
                .collect(),
            _ => vec![(value, value_at.clone())],
        };
        let errors = self.errors.len();
        let args: Vec<Expr> = arg_nodes.iter().map(|(n, a)| self.compile(n, a)).collect();
        if self.errors.len() != errors {
            return Expr {
                rule,
                kind: Kind::Literal(Value::Null),
            };
        }
        let literals: Vec<Option<&Value>> = args
            .iter()
            .map(|a| match &a.kind {
                Kind::Literal(v) => Some(v),
                _ => None,
            })
            .collect();
        if let Err(e) = self.templates.check_call(function, &literals) {
            // Point at the argument the error is about when it is one, else at the call.
            let (n, a) = arg_position(&e, &arg_nodes).unwrap_or((value, &value_at));
            let hint = match &e {
                crate::model::template::CallError::Argument { error, .. } => match error.as_ref() {
                    crate::model::template::CallError::NoTable(t) => {
                        crate::model::hint::did_you_mean(t, self.tables.keys().map(String::as_str))
                    }
                    _ => None,
                },
                _ => None,
            };
            return self.error(&a.clone(), n, e.to_string(), hint);
        }
        Expr {
            rule,
            kind: Kind::Call { function, args },
        }
    }
}

/// The argument a call error is about, when it is about one.
fn arg_position<'n>(
    e: &crate::model::template::CallError,
    args: &'n [(&'n Node, Vec<String>)],
) -> Option<(&'n Node, &'n Vec<String>)> {
    match e {
        crate::model::template::CallError::Argument { index, .. } => {
            args.get(*index).map(|(n, a)| (*n, a))
        }
        _ => None,
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
