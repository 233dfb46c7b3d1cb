//! What a compiled mapping reads of its record (`Mapping::reads`): every query, template
//! variable, function argument and condition of the tree, each from where it starts (the
//! record, the current element of an `$each`, a name an `$each` binds), as one `Reads`.
//! A value an expression made (`$each` over `{ $split: ... }`) is not the record: reads of it
//! read nothing of the record.

use super::Mapping;
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

impl Mapping {
    /// What this mapping reads of a record: the shape a record may be parsed with and map
    /// the same as parsed whole.
    pub fn reads(&self) -> Reads {
        reads_of(&self.root, &self.templates)
    }
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
