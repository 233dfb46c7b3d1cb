//! What a compiled mapping reads of its record (`Mapping::reads`): every query, template
//! variable, function argument and condition of the tree, each from where it starts (the
//! record, the current element of an `$each`, a name an `$each` binds), as one `Reads`.
//! A value an expression made (`$each` over `{ $split: ... }`) is not the record: reads of it
//! read nothing of the record.

use super::tree::{Expr, Kind};
use crate::model::jsonpath::Query;
use crate::model::reads::{Reads, Step};
use crate::model::template::{Arg, Piece, Templates, Text, Var};

/// Where a value of the scope comes from.
#[derive(Debug, Clone)]
enum Origin {
    /// The record, at the end of this path.
    Record(Vec<Step>),
    /// Somewhere inside a part already read whole: reading it adds nothing.
    Whole,
    /// A value an expression made, not part of the record.
    Made,
}

impl Origin {
    /// The origin of what `path` (complete or not) selects from here.
    fn then(&self, path: Vec<Step>, complete: bool) -> Origin {
        match self {
            Origin::Record(p) if complete => {
                let mut p = p.clone();
                p.extend(path);
                Origin::Record(p)
            }
            Origin::Record(_) | Origin::Whole => Origin::Whole,
            Origin::Made => Origin::Made,
        }
    }
}

/// The scope of a node: the current element and the names bound by enclosing `$each`es.
#[derive(Clone)]
struct Scope<'e> {
    current: Origin,
    bindings: Vec<(&'e str, Origin)>,
}

impl Scope<'_> {
    /// The origin of a template's top-level name, as the evaluator looks names up.
    fn name(&self, name: &str) -> Option<Origin> {
        match name {
            "record" => Some(Origin::Record(Vec::new())),
            "item" => Some(self.current.clone()),
            "vars" | "params" | "index" => None,
            other => self
                .bindings
                .iter()
                .rev()
                .find(|(n, _)| *n == other)
                .map(|(_, o)| o.clone()),
        }
    }
}

/// The walk over a mapping tree, gathering what it reads.
struct Walk<'t> {
    templates: &'t Templates,
    reads: Reads,
}

/// What `e` reads of the record, with `templates` (whose Handlebars templates read whole
/// what they name).
pub fn reads_of(e: &Expr, templates: &Templates) -> Reads {
    let mut walk = Walk {
        templates,
        reads: Reads::nothing(),
    };
    let scope = Scope {
        current: Origin::Record(Vec::new()),
        bindings: Vec::new(),
    };
    walk.expr(e, &scope);
    walk.reads
}

impl<'e> Walk<'_> {
    /// `tail` read at `origin` followed by `path`.
    fn read(&mut self, origin: &Origin, path: Vec<Step>, tail: Reads) {
        if let Origin::Record(p) = origin {
            let mut full = p.clone();
            full.extend(path);
            self.reads.add(Reads::at(&full, tail));
        }
    }

    /// A query evaluated in `scope`, `tail` read of each node it selects; gives the origin
    /// of those nodes.
    fn query(&mut self, q: &Query, scope: &Scope<'_>, tail: Reads) -> Origin {
        let root = if q.is_relative() {
            scope.current.clone()
        } else {
            Origin::Record(Vec::new())
        };
        let (path, complete) = q.read_path();
        let tail = if complete { tail } else { Reads::All };
        self.read(&root, path.clone(), tail);
        root.then(path, complete)
    }

    fn var(&mut self, v: &Var, scope: &Scope<'_>) {
        if let Some(origin) = scope.name(v.root()) {
            let path = v
                .segments()
                .iter()
                .map(|s| Step::MemberOrIndex(s.clone()))
                .collect();
            self.read(&origin, path, Reads::All);
        }
    }

    fn text(&mut self, t: &Text, scope: &Scope<'_>) {
        match t {
            Text::Const(_) => {}
            Text::Direct(pieces) => {
                for p in pieces {
                    match p {
                        Piece::Raw(_) => {}
                        Piece::Var(v, _) => self.var(v, scope),
                        Piece::Call(_, args, _) => {
                            for a in args {
                                if let Arg::Var(v) = a {
                                    self.var(v, scope);
                                }
                            }
                        }
                    }
                }
            }
            // A Handlebars template reads whole every name its context holds (the names
            // the connector's Handlebars templates read; all of them when unknown).
            Text::Template(_) => {
                let t = self.templates;
                if t.needs("record") {
                    self.read(&Origin::Record(Vec::new()), Vec::new(), Reads::All);
                }
                if t.needs("item") {
                    self.read(&scope.current, Vec::new(), Reads::All);
                }
                for (name, origin) in &scope.bindings {
                    if t.needs(name) {
                        self.read(origin, Vec::new(), Reads::All);
                    }
                }
            }
        }
    }

    fn expr(&mut self, e: &'e Expr, scope: &Scope<'e>) {
        match &e.kind {
            Kind::Literal(_) => {}
            Kind::Text(t) => self.text(t, scope),
            Kind::Object(fields) => fields.iter().for_each(|(_, f)| self.expr(f, scope)),
            Kind::Array(items) => items.iter().for_each(|i| self.expr(i, scope)),
            Kind::Path { query, default } => {
                self.query(query, scope, Reads::All);
                if let Some(d) = default {
                    self.expr(d, scope);
                }
            }
            Kind::Paths(query) => {
                self.query(query, scope, Reads::All);
            }
            Kind::Each { query, name, body } => {
                // The selected nodes are kept (their count makes the output) with what the
                // body reads of them.
                let at = self.query(query, scope, Reads::nothing());
                let mut child = scope.clone();
                child.current = at.clone();
                if let Some(n) = name {
                    child.bindings.push((n.as_str(), at));
                }
                self.expr(body, &child);
            }
            Kind::EachOf { value, name, body } => {
                self.expr(value, scope);
                let mut child = scope.clone();
                child.current = Origin::Made;
                if let Some(n) = name {
                    child.bindings.push((n.as_str(), Origin::Made));
                }
                self.expr(body, &child);
            }
            Kind::If {
                query,
                then,
                otherwise,
                ..
            } => {
                self.query(query, scope, Reads::All);
                self.expr(then, scope);
                if let Some(o) = otherwise {
                    self.expr(o, scope);
                }
            }
            Kind::Translate { value, default, .. } => {
                self.expr(value, scope);
                if let Some(d) = default {
                    self.expr(d, scope);
                }
            }
            Kind::Call { args, .. } => args.iter().for_each(|a| self.expr(a, scope)),
            Kind::Uuid(parts) => parts.iter().for_each(|p| self.expr(p, scope)),
            Kind::Date { value, .. } | Kind::Instant { value } | Kind::Convert { value, .. } => {
                self.expr(value, scope)
            }
            Kind::Reference { id, .. } => self.expr(id, scope),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::model::template::Function;

    fn q(text: &str) -> Query {
        Query::parse(text).expect("query")
    }

    fn e(kind: Kind) -> Expr {
        Expr {
            rule: "mapping".into(),
            kind,
        }
    }

    fn path(text: &str) -> Expr {
        e(Kind::Path {
            query: q(text),
            default: None,
        })
    }

    fn text(t: &mut Templates, source: &str) -> Expr {
        e(Kind::Text(t.compile(source, source).expect("template")))
    }

    fn object(fields: Vec<(&str, Expr)>) -> Expr {
        e(Kind::Object(
            fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        ))
    }

    fn each(query: &str, name: Option<&str>, body: Expr) -> Expr {
        e(Kind::Each {
            query: q(query),
            name: name.map(str::to_owned),
            body: Box::new(body),
        })
    }

    /// What `query` reads, `tail` at what it selects: the expected shapes, written as queries.
    fn r(query: &str, tail: Reads) -> Reads {
        q(query).reads(tail)
    }

    fn union(all: impl IntoIterator<Item = Reads>) -> Reads {
        all.into_iter().fold(Reads::nothing(), Reads::union)
    }

    fn templates() -> Templates {
        Templates::new(Arc::new(BTreeMap::new()), None)
    }

    #[test]
    fn queries_conditions_and_operators_read_what_they_select_whole() {
        let mut t = templates();
        let tree = object(vec![
            ("literal", e(Kind::Literal(json!("x")))),
            ("path", path("$.a.b")),
            (
                "default",
                e(Kind::Path {
                    query: q("$.c[0]"),
                    default: Some(Box::new(path("$.d"))),
                }),
            ),
            ("paths", e(Kind::Paths(q("$.e[*].f")))),
            (
                "if",
                e(Kind::If {
                    query: q("$.flag"),
                    equals: Some(json!(true)),
                    then: Box::new(path("$.g")),
                    otherwise: Some(Box::new(text(&mut t, "{{record.h.[1]}}"))),
                }),
            ),
            (
                "call",
                e(Kind::Call {
                    function: Function::by_name("split").expect("split"),
                    args: vec![path("$.i"), e(Kind::Literal(json!(",")))],
                }),
            ),
            (
                "date",
                e(Kind::Date {
                    value: Box::new(path("$.j")),
                    time: true,
                }),
            ),
            (
                "uuid",
                e(Kind::Uuid(vec![text(
                    &mut t,
                    "{{vars.s}}-{{upper record.k}}",
                )])),
            ),
            (
                "ref",
                e(Kind::Reference {
                    resource_type: "Patient".into(),
                    id: Box::new(path("$.l")),
                }),
            ),
        ]);
        let expected = union([
            r("$.a.b", Reads::All),
            r("$.c[0]", Reads::All),
            r("$.d", Reads::All),
            r("$.e[*].f", Reads::All),
            r("$.flag", Reads::All),
            r("$.g", Reads::All),
            Reads::at(
                &[Step::Member("h".into()), Step::MemberOrIndex("1".into())],
                Reads::All,
            ),
            r("$.i", Reads::All),
            r("$.j", Reads::All),
            r("$.k", Reads::All),
            r("$.l", Reads::All),
        ]);
        assert_eq!(reads_of(&tree, &t), expected);
        assert_eq!(
            reads_of(&e(Kind::Literal(json!({"a": 1}))), &t),
            Reads::nothing()
        );
    }

    #[test]
    fn each_reads_its_nodes_with_the_body_relative_shape_and_named_bindings() {
        let mut t = templates();
        let inner = object(vec![
            ("id", path("@.id")),
            ("group", text(&mut t, "{{g.name}}")),
            ("top", text(&mut t, "{{record.top}}")),
        ]);
        let tree = object(vec![
            (
                "outer",
                each(
                    "$.groups[*]",
                    Some("g"),
                    object(vec![
                        ("members", each("@.members[*]", None, inner)),
                        ("first", text(&mut t, "{{item.codes.[0]}}")),
                    ]),
                ),
            ),
            ("count", each("$.rows[*]", None, e(Kind::Literal(json!(1))))),
        ]);
        let expected = union([
            r("$.groups[*]", Reads::nothing()),
            r("$.groups[*].members[*]", Reads::nothing()),
            r("$.groups[*].members[*].id", Reads::All),
            r("$.groups[*].name", Reads::All),
            r("$.top", Reads::All),
            Reads::at(
                &[
                    Step::Member("groups".into()),
                    Step::Any,
                    Step::MemberOrIndex("codes".into()),
                    Step::MemberOrIndex("0".into()),
                ],
                Reads::All,
            ),
            // Read bare, the rows still count: each is kept, nothing of it read.
            r("$.rows[*]", Reads::nothing()),
        ]);
        assert_eq!(reads_of(&tree, &t), expected);
    }

    #[test]
    fn filters_descendants_and_slices_read_everything_from_their_step() {
        let t = templates();
        let tree = object(vec![
            (
                "filter",
                e(Kind::Paths(q("$.results[?@.active == true].name"))),
            ),
            ("slice", e(Kind::Paths(q("$.a.b[0:2].c")))),
            ("quoted", path("$.d['e f']")),
            ("each", each("$.x..y", Some("n"), path("@.z"))),
        ]);
        let expected = union([
            r("$.results", Reads::All),
            r("$.a.b", Reads::All),
            r("$.d", Reads::All),
            r("$.x", Reads::All),
        ]);
        assert_eq!(reads_of(&tree, &t), expected);
        let everything = path("$..id");
        assert_eq!(reads_of(&everything, &t), Reads::All);
    }

    #[test]
    fn each_of_a_made_value_reads_the_record_only_through_record() {
        let mut t = templates();
        let tree = e(Kind::EachOf {
            value: Box::new(e(Kind::Call {
                function: Function::by_name("split").expect("split"),
                args: vec![path("$.csv"), e(Kind::Literal(json!(",")))],
            })),
            name: Some("part".into()),
            body: Box::new(object(vec![
                ("code", text(&mut t, "{{part}}")),
                ("item", text(&mut t, "{{item}}")),
                ("rel", path("@.x")),
                ("abs", path("$.system")),
                ("rec", text(&mut t, "{{record.display}}")),
            ])),
        });
        let expected = union([
            r("$.csv", Reads::All),
            r("$.system", Reads::All),
            r("$.display", Reads::All),
        ]);
        assert_eq!(reads_of(&tree, &t), expected);
    }

    #[test]
    fn handlebars_templates_read_whole_the_names_they_may_read() {
        // Reads `item` only: inside an `$each`, the selected elements are read whole.
        let mut t = templates();
        let body = text(&mut t, "{{#each item.list}}{{this}}{{/each}}");
        assert!(matches!(body.kind, Kind::Text(Text::Template(_))));
        let tree = object(vec![
            ("each", each("$.rows[*]", Some("row"), body)),
            ("other", path("$.o.p")),
        ]);
        assert_eq!(
            reads_of(&tree, &t),
            union([r("$.rows[*]", Reads::All), r("$.o.p", Reads::All)])
        );
        // A template that reads `record`: the whole record.
        let mut t = templates();
        let tree = object(vec![
            ("t", text(&mut t, "{{#if record.a}}{{record.a}}{{/if}}")),
            ("p", path("$.b")),
        ]);
        assert_eq!(reads_of(&tree, &t), Reads::All);
        // A bound name read by Handlebars: that binding's nodes whole.
        let mut t = templates();
        let tree = each(
            "$.rows[*]",
            Some("row"),
            each(
                "@.cells[*]",
                None,
                text(&mut t, "{{#if row.k}}{{row.k}}{{/if}}"),
            ),
        );
        assert_eq!(reads_of(&tree, &t), r("$.rows[*]", Reads::All));
        // A template whose names are unknown (`@root`): everything.
        let mut t = templates();
        let tree = each(
            "$.rows[*]",
            None,
            text(&mut t, "{{#with @root}}{{this.x}}{{/with}}"),
        );
        assert_eq!(reads_of(&tree, &t), Reads::All);
    }
}
