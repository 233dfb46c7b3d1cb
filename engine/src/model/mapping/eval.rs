//! Evaluation of compiled templates per record: the scope (record, current element, `$each`
//! bindings, input paths for errors), the operators' semantics, pruning and conversions.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::BTreeMap;

use handlebars::Context;
use serde_json::{Map, Value};

use super::output::Out;
use super::tree::{Conversion, Expr, Input, Kind, MapError};
use crate::model::fhir;
use crate::model::jsonpath::{Query, Single};
use crate::model::template::{Table, Templates};

/// Where a mapping is evaluating: the record, the current element and the names bound by
/// enclosing `$each`es, and how the current element was reached (for error paths). `'r` is
/// what the values made may borrow (the input and the compiled mapping), `'s` the scope's
/// links.
struct Scope<'s, 'r> {
    input: Input<'r>,
    templates: &'s Templates,
    current: &'r Value,
    index: Option<Value>,
    bindings: Vec<(&'r str, &'r Value)>,
    /// The enclosing scope, the query that selected the current element, and its position.
    parent: Option<(&'s Scope<'s, 'r>, &'r Query, usize)>,
    context: OnceCell<Context>,
}

impl<'s, 'r> Scope<'s, 'r> {
    fn new(input: Input<'r>, templates: &'s Templates) -> Self {
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
        &'s self,
        query: &'r Query,
        current: &'r Value,
        index: usize,
        name: Option<&'r str>,
    ) -> Scope<'s, 'r> {
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

    /// A child scope over a value an expression made (not selected from the record, so it
    /// has no input path of its own).
    fn derived<'t>(
        &'t self,
        current: &'t Value,
        index: usize,
        name: Option<&'t str>,
    ) -> Scope<'t, 't>
    where
        'r: 't,
    {
        let mut bindings: Vec<(&'t str, &'t Value)> = self.bindings.clone();
        if let Some(n) = name {
            bindings.push((n, current));
        }
        Scope {
            input: self.input,
            templates: self.templates,
            current,
            index: Some(Value::from(index)),
            bindings,
            parent: None,
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

impl<'r> Scope<'_, 'r> {
    /// The value of a top-level name that is borrowed from the input (all but `index`,
    /// which the scope makes), for as long as the input lives.
    fn lent(&self, name: &str) -> Option<&'r Value> {
        match name {
            "record" => Some(self.input.record),
            "item" => Some(self.current),
            "vars" => Some(self.input.vars),
            "params" => Some(self.input.params),
            "index" => None,
            other => self
                .bindings
                .iter()
                .rev()
                .find(|(n, _)| *n == other)
                .map(|(_, v)| *v),
        }
    }
}

impl crate::model::template::Scope for Scope<'_, '_> {
    fn value(&self, name: &str) -> Option<&Value> {
        match name {
            "index" => self.index.as_ref(),
            other => self.lent(other),
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

/// Evaluates compiled expressions with a connector's templates and tables (the mapping, and
/// request bodies of pull connectors).
pub struct Evaluator<'a> {
    pub templates: &'a Templates,
    pub tables: &'a BTreeMap<String, Table>,
}

impl Evaluator<'_> {
    /// The value of an expression for one input; `None` when it is empty.
    pub fn evaluate(&self, e: &Expr, input: Input<'_>) -> Result<Option<Value>, MapError> {
        Ok(self.made(e, input)?.map(Out::into_value))
    }

    /// What an expression makes for one input, borrowing from the input and the expression
    /// (written as JSON directly, or turned into a `Value`); `None` when it is empty.
    pub fn made<'r>(&self, e: &'r Expr, input: Input<'r>) -> Result<Option<Out<'r>>, MapError> {
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

    fn eval<'r>(&self, e: &'r Expr, scope: &Scope<'_, 'r>) -> Result<Option<Out<'r>>, MapError> {
        Ok(match &e.kind {
            Kind::Literal(v) => (!fhir::is_empty(v)).then_some(Out::Literal(v)),
            Kind::Text(t) => {
                // A template that is one variable whose value is text: that text, borrowed
                // (what rendering would copy).
                if let Some(var) = t.lone_var()
                    && let Some(text @ Value::String(s)) =
                        scope.lent(var.root()).and_then(|root| var.within(root))
                {
                    return Ok((!s.is_empty()).then_some(Out::Literal(text)));
                }
                let s = self
                    .templates
                    .render(t, scope)
                    .map_err(|m| self.fail(e, m))?;
                Out::text(s)
            }
            Kind::Object(fields) => {
                let mut m = Vec::with_capacity(fields.len());
                for (k, f) in fields {
                    if let Some(v) = self.eval(f, scope)? {
                        m.push((k.as_str(), v));
                    }
                }
                (!m.is_empty()).then_some(Out::Object(m))
            }
            Kind::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    // `$each` and `$paths` items add their elements here, without an array
                    // of their own; an `$each` over what an expression makes splices its array.
                    match &item.kind {
                        Kind::Each { query, name, body } => {
                            self.each(query, name.as_deref(), body, scope, &mut out)?
                        }
                        Kind::Paths(query) => paths(query, scope, &mut out),
                        Kind::EachOf { .. } => {
                            if let Some(o) = self.eval(item, scope)? {
                                o.splice_into(&mut out)
                            }
                        }
                        _ => out.extend(self.eval(item, scope)?),
                    }
                }
                array(out)
            }
            Kind::Path { query, default } => {
                match query.single(scope.input.record, scope.current) {
                    Single::Nothing => match default {
                        Some(d) => self.eval(d, scope)?,
                        None => None,
                    },
                    Single::One(one) => match (Out::selected(one), default) {
                        (None, Some(d)) => self.eval(d, scope)?,
                        (value, _) => value,
                    },
                    Single::Many(many) => {
                        return Err(MapError {
                            rule: e.rule.to_string(),
                            input: scope.input_path(query, 0),
                            message: format!(
                                "`{}` selects {} values where one is expected; use `$paths` or `$each` for many",
                                query.as_str(),
                                many
                            ),
                        });
                    }
                }
            }
            Kind::Paths(query) => {
                let mut out = Vec::new();
                paths(query, scope, &mut out);
                array(out)
            }
            Kind::Each { query, name, body } => {
                let mut out = Vec::new();
                self.each(query, name.as_deref(), body, scope, &mut out)?;
                array(out)
            }
            Kind::EachOf { value, name, body } => {
                let items = match self.eval(value, scope)? {
                    None => return Ok(None),
                    Some(made) => match made.into_value() {
                        Value::Array(a) => a,
                        one => vec![one],
                    },
                };
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let child = scope.derived(item, i, name.as_deref());
                    // What the body makes may borrow the items, made here: it is copied.
                    if let Some(v) = self.eval(body, &child)? {
                        v.into_owned().splice_into(&mut out);
                    }
                }
                array(out)
            }
            Kind::Call { function, args } => {
                let mut values = Vec::with_capacity(args.len());
                for a in args {
                    match self.eval(a, scope)? {
                        Some(v) => values.push(v.into_value()),
                        // A missing argument makes nothing, as a missing value does for
                        // `$date` or `$translate`.
                        None => return Ok(None),
                    }
                }
                let refs: Vec<Option<&Value>> = values.iter().map(Some).collect();
                let value = self
                    .templates
                    .call_value(*function, &refs, &|_| None)
                    .map_err(|m| match args.first() {
                        Some(first) => self.with_input(e, first, scope, m),
                        None => self.fail(e, m),
                    })?;
                Out::made(value)
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
            Kind::Translate {
                value,
                table,
                default,
            } => match self.eval(value, scope)? {
                None => None,
                Some(made) => {
                    let v = view(made);
                    let code = match v.as_ref() {
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
                    if let Some(d) = default
                        && !t.map.contains_key(&code)
                    {
                        return self.eval(d, scope);
                    }
                    Out::made(
                        t.translate(table, &code)
                            .map_err(|m| self.with_input(e, value, scope, m))?,
                    )
                }
            },
            Kind::Date { value, time } => match self.eval(value, scope)? {
                None => None,
                Some(made) => {
                    let v = view(made);
                    let out = if *time {
                        fhir::date_time_in(&v, self.templates.zone())
                    } else {
                        fhir::date(&v)
                    };
                    Some(Out::Text(out.map_err(|m| {
                        self.with_input(e, value, scope, m.to_string())
                    })?))
                }
            },
            Kind::Instant { value } => match self.eval(value, scope)? {
                None => None,
                Some(made) => Some(Out::Text(
                    fhir::instant(&view(made), self.templates.zone())
                        .map_err(|m| self.with_input(e, value, scope, m.to_string()))?,
                )),
            },
            Kind::Uuid(parts) => {
                let mut texts = Vec::with_capacity(parts.len());
                for p in parts {
                    match self.eval(p, scope)?.map(Out::into_value) {
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
                Some(Out::Text(fhir::uuid5(&texts)))
            }
            Kind::Reference { resource_type, id } => match self.eval(id, scope)? {
                None => None,
                Some(made) => match view(made).as_ref() {
                    Value::String(s) => Some(Out::Made(Box::new(
                        serde_json::json!({"reference": format!("{resource_type}/{s}")}),
                    ))),
                    Value::Number(n) => Some(Out::Made(Box::new(
                        serde_json::json!({"reference": format!("{resource_type}/{n}")}),
                    ))),
                    other => {
                        return Err(self.with_input(
                            e,
                            id,
                            scope,
                            format!("a reference id must be text, found {}", fhir::kind(other)),
                        ));
                    }
                },
            },
            Kind::Convert { value, to } => match self.eval(value, scope)? {
                None => None,
                Some(made) => Some(Out::of(
                    convert(&view(made), *to).map_err(|m| self.with_input(e, value, scope, m))?,
                )),
            },
        })
    }

    /// `$each`: the body evaluated for every selected element, its values (an array's
    /// elements) added to `out`.
    fn each<'r>(
        &self,
        query: &'r Query,
        name: Option<&'r str>,
        body: &'r Expr,
        scope: &Scope<'_, 'r>,
        out: &mut Vec<Out<'r>>,
    ) -> Result<(), MapError> {
        let nodes = query.select(scope.input.record, scope.current);
        out.reserve(nodes.len());
        for (i, node) in nodes.into_iter().enumerate() {
            let child = scope.child(query, node, i, name);
            match self.eval(body, &child) {
                Ok(Some(v)) => v.splice_into(out),
                Ok(None) => {}
                Err(mut err) => {
                    if err.input.is_none() {
                        err.input = scope.input_path(query, i);
                    }
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// An error with the input path of `source` when it is a query.
    fn with_input(
        &self,
        e: &Expr,
        source: &Expr,
        scope: &Scope<'_, '_>,
        message: String,
    ) -> MapError {
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

/// An array of what was made, `None` when nothing was.
fn array(items: Vec<Out<'_>>) -> Option<Out<'_>> {
    (!items.is_empty()).then_some(Out::Array(items))
}

/// A made value as a JSON value for the operators that read one (`$date`, `$translate`,
/// ...): borrowed when it is one already, else owned (made text moved, a selected
/// structure copied without its empty parts).
fn view(made: Out<'_>) -> Cow<'_, Value> {
    match made {
        Out::Literal(v) => Cow::Borrowed(v),
        Out::Selected(v) if !v.is_object() && !v.is_array() => Cow::Borrowed(v),
        other => Cow::Owned(other.into_value()),
    }
}

/// `$paths`: the selected values, without their empty parts, added to `out`.
fn paths<'r>(query: &'r Query, scope: &Scope<'_, 'r>, out: &mut Vec<Out<'r>>) {
    out.extend(
        query
            .select(scope.input.record, scope.current)
            .into_iter()
            .filter_map(Out::selected),
    );
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use serde_json::{Value, json};

    use super::super::output::Out;
    use super::super::tree::{Expr, Input, Kind};
    use super::Evaluator;
    use crate::model::template::{Table, Templates};

    /// The compiled template `source`, as a mapping expression.
    fn text(templates: &mut Templates, source: &str) -> Expr {
        Expr {
            rule: "mapping.t".into(),
            kind: Kind::Text(templates.compile("t", source).expect("template")),
        }
    }

    #[test]
    fn a_lone_text_variable_is_borrowed_and_other_values_still_render() {
        let record = json!({"a": {"b": "x"}, "n": 5, "t": true, "e": ""});
        let (vars, params) = (json!({"s": "sys"}), json!({}));
        let input = Input {
            record: &record,
            vars: &vars,
            params: &params,
        };
        let tables: BTreeMap<String, Table> = BTreeMap::new();
        let mut templates = Templates::new(Arc::new(BTreeMap::new()), None);
        let borrowed = [
            (text(&mut templates, "{{vars.s}}"), &vars["s"]),
            (text(&mut templates, "{{record.a.b}}"), &record["a"]["b"]),
        ];
        let rendered = [
            (text(&mut templates, "{{record.n}}"), Some(json!("5"))),
            (text(&mut templates, "{{record.t}}"), Some(json!("true"))),
            (text(&mut templates, "{{record.e}}"), None),
            (text(&mut templates, "x{{record.a.b}}"), Some(json!("xx"))),
        ];
        let evaluator = Evaluator {
            templates: &templates,
            tables: &tables,
        };
        for (expr, value) in &borrowed {
            match evaluator.made(expr, input).expect("evaluates") {
                Some(Out::Literal(v)) => assert!(std::ptr::eq(v, *value), "{expr:?}"),
                other => panic!("{expr:?}: expected the borrowed text, made {other:?}"),
            }
        }
        for (expr, expected) in &rendered {
            let made: Option<Value> = evaluator
                .made(expr, input)
                .expect("evaluates")
                .map(Out::into_value);
            assert_eq!(&made, expected, "{expr:?}");
        }
        let missing = text(
            &mut Templates::new(Arc::new(BTreeMap::new()), None),
            "{{record.gone}}",
        );
        assert!(
            evaluator.made(&missing, input).is_err(),
            "a missing variable is an error"
        );
    }
}
