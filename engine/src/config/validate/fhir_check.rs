//! The static checks of a compiled mapping against the FHIR structure of the connector's
//! version: resource types, elements at any depth, cardinality, primitive literals, choice
//! names, required bindings (of codes, Codings and CodeableConcepts, literal or made by a
//! `$translate` table), reference targets, operator results, required elements; each located
//! at the mapping rule (or table value) that is wrong.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use super::context::Ctx;
use crate::config::diagnostic::{Diagnostic, Location};
use crate::config::yaml::{NodeValue, display_path};
use crate::model::fhir_structure::{
    Binding, Element, Elements, Structure, check_literal, structure,
};
use crate::model::hint::did_you_mean;
use crate::model::mapping::{Conversion, Expr, Kind};
use crate::model::template::{Function, Table};
use crate::model::vocabulary::FhirVersion;

const VERSIONS: [FhirVersion; 3] = [FhirVersion::R4, FhirVersion::R4B, FhirVersion::R5];

/// Checks a compiled mapping (at YAML path `at`) against FHIR `version`; `routes` are the
/// resource types a pull connector serves (empty for other strategies); `tables` are the
/// connector's `$translate` tables, whose values are checked where they are written.
pub fn check(
    ctx: &mut Ctx<'_>,
    root: &Expr,
    at: &[String],
    version: FhirVersion,
    routes: &[&str],
    tables: &BTreeMap<String, Table>,
) {
    let s = match structure(version) {
        Ok(s) => s,
        Err(e) => {
            let loc = ctx.at_owned(at);
            ctx.diags.push(Diagnostic::error(
                &ctx.doc.file,
                &loc,
                format!("the mapping cannot be checked: {e}"),
            ));
            return;
        }
    };
    Checker {
        ctx,
        s,
        routes,
        tables,
        nested: 0,
        told: HashSet::new(),
    }
    .resources(Val::Expr(root), at.to_vec());
}

/// A pull connector's route types (`spec.pull.resources[i].type`, each with its index) against
/// the FHIR versions its answers come in (its sources' versions, or its own): a type must be a
/// resource type of at least one, else no answer holding it is valid FHIR. Each refusal is
/// located at the type, with the closest name or the versions that have it.
pub fn route_types(ctx: &mut Ctx<'_>, types: &[(usize, &str)], versions: &[FhirVersion]) {
    let has = |v: FhirVersion, t: &str| structure(v).is_ok_and(|s| s.resource(t).is_some());
    for (i, t) in types {
        if versions.iter().any(|v| has(*v, t)) {
            continue;
        }
        let at = ["spec", "pull", "resources", &i.to_string(), "type"];
        let names: Vec<&str> = versions.iter().map(|v| v.name()).collect();
        let elsewhere: Vec<&str> = VERSIONS
            .iter()
            .filter(|v| has(**v, t))
            .map(|v| v.name())
            .collect();
        if elsewhere.is_empty() {
            let known = versions
                .iter()
                .filter_map(|v| structure(*v).ok())
                .flat_map(|s| s.resource_names());
            ctx.error(
                &at,
                format!("`{t}` is not a FHIR resource type"),
                did_you_mean(t, known),
            );
        } else {
            ctx.error(
                &at,
                format!(
                    "`{t}` is not a resource type of FHIR {} (only of {})",
                    names.join(" or "),
                    elsewhere.join(" and ")
                ),
                Some(format!(
                    "the connector's answers are FHIR {} (from its sources or its `fhirVersion`)",
                    names.join(" and ")
                )),
            );
        }
    }
}

/// A value of the mapping: a compiled node, or a part of a literal.
#[derive(Clone, Copy)]
enum Val<'a> {
    Expr(&'a Expr),
    Json(&'a Value),
}

struct Checker<'c, 'd> {
    ctx: &'c mut Ctx<'d>,
    s: &'static Structure,
    routes: &'c [&'c str],
    tables: &'c BTreeMap<String, Table>,
    /// How deep inside another resource (`contained`, `Bundle.entry.resource`) the walk is.
    nested: usize,
    /// Table values already reported against a value set (a table used twice is told once).
    told: HashSet<(Vec<String>, String)>,
}

/// A code a rule makes (with its Coding's system), where it is written, and the `$translate`
/// table it comes from.
struct Made {
    system: Option<String>,
    code: String,
    at: Vec<String>,
    table: Option<String>,
}

fn push(at: &[String], s: &str) -> Vec<String> {
    let mut v = at.to_vec();
    v.push(s.to_owned());
    v
}

impl<'c> Checker<'c, '_> {
    fn report(
        &mut self,
        at: &[String],
        key: bool,
        warning: bool,
        message: String,
        hint: Option<String>,
    ) {
        let (line, column) = self.ctx.doc.node.locate(at, key);
        let loc = Location {
            line,
            column,
            path: display_path(at),
        };
        let d = if warning {
            Diagnostic::warning(&self.ctx.doc.file, &loc, message)
        } else {
            Diagnostic::error(&self.ctx.doc.file, &loc, message)
        };
        self.ctx.diags.push(d.with_hint(hint));
    }

    fn error(&mut self, at: &[String], message: String, hint: Option<String>) {
        self.report(at, false, false, message, hint);
    }

    /// Where a literal's value is written: under `$literal` when the rule used it.
    fn literal_at(&self, at: &[String]) -> Vec<String> {
        match &self.ctx.doc.node.descend(at).value {
            NodeValue::Map(entries) if entries.iter().any(|(k, _)| k.name == "$literal") => {
                push(at, "$literal")
            }
            _ => at.to_vec(),
        }
    }

    /// A value that makes resources: one, a list of them, or operators that choose them.
    fn resources(&mut self, v: Val<'_>, at: Vec<String>) {
        match v {
            Val::Expr(e) => match &e.kind {
                Kind::Object(fields) => {
                    let fields: Vec<_> = fields
                        .iter()
                        .map(|(k, x)| (k.as_str(), Val::Expr(x), push(&at, k)))
                        .collect();
                    self.resource(fields, &at);
                }
                Kind::Array(items) => {
                    for (i, x) in items.iter().enumerate() {
                        self.resources(Val::Expr(x), push(&at, &i.to_string()));
                    }
                }
                Kind::Each { body, .. } | Kind::EachOf { body, .. } => {
                    self.resources(Val::Expr(body), push(&at, "$do"))
                }
                Kind::If {
                    then, otherwise, ..
                } => {
                    self.resources(Val::Expr(then), push(&at, "$then"));
                    if let Some(o) = otherwise {
                        self.resources(Val::Expr(o), push(&at, "$else"));
                    }
                }
                Kind::Literal(json) => {
                    let at = self.literal_at(&at);
                    self.resources(Val::Json(json), at);
                }
                _ => {}
            },
            Val::Json(Value::Object(map)) => {
                let fields: Vec<_> = map
                    .iter()
                    .map(|(k, x)| (k.as_str(), Val::Json(x), push(&at, k)))
                    .collect();
                self.resource(fields, &at);
            }
            Val::Json(Value::Array(items)) => {
                for (i, x) in items.iter().enumerate() {
                    self.resources(Val::Json(x), push(&at, &i.to_string()));
                }
            }
            Val::Json(_) => {}
        }
    }

    /// One resource: its type, then its elements.
    fn resource(&mut self, fields: Vec<(&str, Val<'_>, Vec<String>)>, at: &[String]) {
        let Some((_, type_val, type_at)) = fields.iter().find(|(k, _, _)| *k == "resourceType")
        else {
            return;
        };
        let name = match type_val {
            Val::Expr(Expr {
                kind: Kind::Literal(Value::String(t)),
                ..
            })
            | Val::Json(Value::String(t)) => t.clone(),
            // A type a table gives: each of its values must be a type of the version.
            Val::Expr(Expr {
                kind: Kind::Translate { table, .. },
                ..
            }) => {
                for (v, at) in self.table_values(table) {
                    if let Value::String(t) = v
                        && self.s.resource(t).is_none()
                    {
                        self.unknown_type(t, &at);
                    }
                }
                return;
            }
            // A type chosen at run time is checked when the resource is made.
            _ => return,
        };
        let type_at = type_at.clone();
        let Some(def) = self.s.resource(&name) else {
            self.unknown_type(&name, &type_at);
            return;
        };
        if self.nested == 0 && !self.routes.is_empty() && !self.routes.contains(&name.as_str()) {
            let hint = did_you_mean(&name, self.routes.iter().copied())
                .or_else(|| Some(format!("the routes serve `{}`", self.routes.join("`, `"))));
            self.error(
                &type_at,
                format!("the mapping makes `{name}`, but no pull route serves that type"),
                hint,
            );
        }
        let owner = name.clone();
        let fields: Vec<_> = fields
            .into_iter()
            .filter(|(k, _, _)| *k != "resourceType")
            .collect();
        self.fields(fields, &def.elements, &def.required, &owner, at);
    }

    /// A resource type that is not one of the version: of another version, or none.
    fn unknown_type(&mut self, name: &str, type_at: &[String]) {
        let version = self.s.version.name();
        let elsewhere: Vec<&str> = VERSIONS
            .iter()
            .filter(|v| structure(**v).is_ok_and(|s| s.resource(name).is_some()))
            .map(|v| v.name())
            .collect();
        if elsewhere.is_empty() {
            let hint = did_you_mean(name, self.s.resource_names());
            self.error(
                type_at,
                format!("`{name}` is not a FHIR resource type"),
                hint,
            );
        } else {
            self.error(
                type_at,
                format!(
                    "`{name}` is not a resource type of FHIR {version} (only of {})",
                    elsewhere.join(" and ")
                ),
                Some(format!(
                    "the connector writes FHIR {version} (from its sink, its FHIR sources or its `fhirVersion`)"
                )),
            );
        }
    }

    /// The fields of an object against the elements of its type.
    fn fields(
        &mut self,
        fields: Vec<(&str, Val<'_>, Vec<String>)>,
        elements: &'static Elements,
        required: &'static [String],
        owner: &str,
        at: &[String],
    ) {
        for (name, v, field_at) in &fields {
            let label = format!("{owner}.{name}");
            if let Some(base) = name.strip_prefix('_') {
                // `_birthDate`: the id and extensions of a primitive element, an `Element`.
                match elements.get(base).map(|e| (e, self.s.primitive_extras(e))) {
                    Some((_, Some(extras))) => self.value(*v, extras, field_at.clone(), &label),
                    Some((e, None)) => self.error(
                        field_at,
                        format!(
                            "`{name}` holds the id and extensions of a primitive element, but `{owner}.{base}` is {}",
                            match e.type_name.as_deref() {
                                Some(t) => format!("a `{t}`"),
                                None => "a choice".to_owned(),
                            }
                        ),
                        Some(format!("write `id` and `extension` inside `{base}` itself")),
                    ),
                    None => self.unknown(base, elements, owner, field_at),
                }
                continue;
            }
            match elements.get(*name) {
                Some(e) if !e.choices.is_empty() => {
                    self.report(
                        field_at,
                        true,
                        false,
                        format!("`{label}` is a choice: its name says its type"),
                        Some(format!("one of `{}`", e.choices.join("`, `"))),
                    );
                }
                Some(e) => self.value(*v, e, field_at.clone(), &label),
                None => self.unknown(name, elements, owner, field_at),
            }
        }
        for r in required {
            let made = fields.iter().any(|(k, _, _)| {
                *k == r.as_str()
                    || elements
                        .get(*k)
                        .is_some_and(|e| e.choice_of.as_deref() == Some(r.as_str()))
            });
            if !made {
                self.report(
                    at,
                    false,
                    true,
                    format!("`{owner}.{r}` is required (min 1) and no rule makes it"),
                    None,
                );
            }
        }
    }

    /// An element name the type does not have: a wrongly named choice, or unknown.
    fn unknown(&mut self, name: &str, elements: &Elements, owner: &str, at: &[String]) {
        let choice = elements.iter().find(|(base, e)| {
            !e.choices.is_empty()
                && name.len() > base.len()
                && name.starts_with(base.as_str())
                && name[base.len()..].starts_with(|c: char| c.is_ascii_uppercase())
        });
        if let Some((base, e)) = choice {
            let hint = did_you_mean(name, e.choices.iter().map(String::as_str))
                .or_else(|| Some(format!("one of `{}`", e.choices.join("`, `"))));
            self.report(
                at,
                true,
                false,
                format!("`{name}` is not a type `{owner}.{base}[x]` can take"),
                hint,
            );
            return;
        }
        let hint = did_you_mean(
            name,
            elements
                .iter()
                .filter(|(_, e)| e.choices.is_empty())
                .map(|(k, _)| k.as_str()),
        );
        self.report(
            at,
            true,
            false,
            format!(
                "`{owner}` has no element `{name}` in FHIR {}",
                self.s.version.name()
            ),
            hint,
        );
    }

    /// A value for an element: its cardinality, then each item.
    fn value(&mut self, v: Val<'_>, e: &'static Element, at: Vec<String>, label: &str) {
        let many = match v {
            Val::Expr(x) => match &x.kind {
                Kind::Literal(Value::Null) => return,
                Kind::If {
                    then, otherwise, ..
                } => {
                    self.value(Val::Expr(then), e, push(&at, "$then"), label);
                    if let Some(o) = otherwise {
                        self.value(Val::Expr(o), e, push(&at, "$else"), label);
                    }
                    return;
                }
                Kind::Literal(Value::Array(_))
                | Kind::Array(_)
                | Kind::Each { .. }
                | Kind::EachOf { .. } => Some(true),
                Kind::Call { function, .. } => Some(*function == Function::Split),
                Kind::Paths(_) => Some(true),
                Kind::Path { .. } | Kind::Translate { .. } => None,
                _ => Some(false),
            },
            Val::Json(Value::Null) => return,
            Val::Json(j) => Some(j.is_array()),
        };
        match many {
            Some(true) if !e.array => {
                self.error(
                    &at,
                    format!("a list where `{label}` takes one value (0..1)"),
                    Some("write one value, e.g. the list's first item".into()),
                );
                return;
            }
            Some(false) if e.array => {
                self.report(
                    &at,
                    false,
                    true,
                    format!("one value where `{label}` is a list (0..*)"),
                    Some("write it as a list of one item (`- ...`)".into()),
                );
            }
            _ => {}
        }
        self.items(v, e, at, label);
    }

    /// Each item of a value (a list's items, an `$each` body) against the element's type.
    fn items(&mut self, v: Val<'_>, e: &'static Element, at: Vec<String>, label: &str) {
        match v {
            Val::Expr(x) => match &x.kind {
                Kind::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let item_at = push(&at, &i.to_string());
                        match &item.kind {
                            // Spliced into the list.
                            Kind::Each { .. } | Kind::EachOf { .. } => {
                                self.items(Val::Expr(item), e, item_at, label)
                            }
                            Kind::Paths(_) => {}
                            _ => self.item(Val::Expr(item), e, item_at, label),
                        }
                    }
                }
                // A list made by the body is spliced into the list.
                Kind::Each { body, .. } | Kind::EachOf { body, .. } => {
                    self.items(Val::Expr(body), e, push(&at, "$do"), label)
                }
                Kind::Literal(Value::Array(items)) => {
                    let at = self.literal_at(&at);
                    for (i, item) in items.iter().enumerate() {
                        self.item(Val::Json(item), e, push(&at, &i.to_string()), label);
                    }
                }
                _ => self.item(v, e, at, label),
            },
            Val::Json(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    self.item(Val::Json(item), e, push(&at, &i.to_string()), label);
                }
            }
            Val::Json(_) => self.item(v, e, at, label),
        }
    }

    /// One item against the element's type.
    fn item(&mut self, v: Val<'_>, e: &'static Element, at: Vec<String>, label: &str) {
        let type_name = e.type_name.as_deref().unwrap_or("BackboneElement");
        if type_name == "Resource" {
            // `contained`, `Bundle.entry.resource`: a resource of any type.
            self.nested += 1;
            self.resources(v, at);
            self.nested -= 1;
            return;
        }
        let primitive = self.s.is_primitive(type_name);
        let x = match v {
            Val::Json(j) => return self.literal(j, e, type_name, primitive, at, label),
            Val::Expr(x) => x,
        };
        match &x.kind {
            Kind::Literal(j) => {
                let at = self.literal_at(&at);
                self.literal(j, e, type_name, primitive, at, label)
            }
            Kind::If {
                then, otherwise, ..
            } => {
                self.item(Val::Expr(then), e, push(&at, "$then"), label);
                if let Some(o) = otherwise {
                    self.item(Val::Expr(o), e, push(&at, "$else"), label);
                }
            }
            Kind::Object(fields) => {
                if primitive {
                    return self.error(
                        &at,
                        format!("an object where `{label}` is a FHIR `{type_name}`"),
                        None,
                    );
                }
                if type_name == "Reference" {
                    let literal = fields.iter().find_map(|(k, f)| match &f.kind {
                        Kind::Literal(Value::String(r)) if k == "reference" => Some(r),
                        _ => None,
                    });
                    if let Some((t, _)) = literal
                        .and_then(|r| r.split_once('/'))
                        .filter(|(t, _)| !t.contains(':'))
                    {
                        self.target(t, e, push(&at, "reference"), label);
                    }
                }
                self.coded(v, e, type_name, &at, label);
                let Some((elements, required)) = self.s.children(e) else {
                    return;
                };
                let fields: Vec<_> = fields
                    .iter()
                    .map(|(k, f)| (k.as_str(), Val::Expr(f), push(&at, k)))
                    .collect();
                self.fields(fields, elements, required, label, &at);
            }
            Kind::Text(_) | Kind::Uuid(_) => {
                let what = if matches!(x.kind, Kind::Uuid(_)) {
                    "`$uuid` makes a string"
                } else {
                    "a text template makes a string"
                };
                if !primitive {
                    self.error(
                        &at,
                        format!("{what}, but `{label}` is a `{type_name}` (an object)"),
                        None,
                    );
                } else if !takes_string(type_name) {
                    self.error(
                        &at,
                        format!("{what}, but `{label}` is a FHIR `{type_name}`"),
                        conversion_hint(type_name),
                    );
                }
            }
            Kind::Date { time, .. } => {
                let head = if *time { "$dateTime" } else { "$date" };
                let made = if *time { "a dateTime" } else { "a date" };
                let fits = match type_name {
                    "date" => !time,
                    "dateTime" | "string" => true,
                    _ => false,
                };
                if *time && type_name == "instant" {
                    self.report(
                        &push(&at, head),
                        false,
                        true,
                        format!("`$dateTime` makes a date alone from a date, but `{label}` is a FHIR `instant`"),
                        Some("an instant needs a time to the second with its zone: make sure the source always gives one".into()),
                    );
                } else if !fits {
                    let hint = match (type_name, time) {
                        ("instant", _) => Some(
                            "an instant needs a time to the second with its zone; `$date` makes a date alone".into(),
                        ),
                        ("date", true) => Some("use `$date`".into()),
                        _ => None,
                    };
                    self.error(
                        &push(&at, head),
                        format!("`{head}` makes {made}, but `{label}` is a FHIR `{type_name}`"),
                        hint,
                    );
                }
            }
            Kind::Instant { .. } => {
                // Date, time to the second and zone: an `instant`, and a `dateTime` too.
                if !matches!(type_name, "instant" | "dateTime" | "string") {
                    self.error(
                        &push(&at, "$instant"),
                        format!(
                            "`$instant` makes an instant, but `{label}` is a FHIR `{type_name}`"
                        ),
                        (type_name == "date").then(|| "use `$date`".into()),
                    );
                }
            }
            Kind::Convert { to, .. } => {
                let (head, fits) = match to {
                    Conversion::Number => ("$number", type_name == "decimal"),
                    Conversion::Integer => (
                        "$integer",
                        matches!(
                            type_name,
                            "integer" | "decimal" | "unsignedInt" | "positiveInt"
                        ),
                    ),
                    Conversion::Boolean => ("$boolean", type_name == "boolean"),
                    Conversion::String => ("$string", primitive && takes_string(type_name)),
                };
                if !fits {
                    self.error(
                        &push(&at, head),
                        format!("`{head}` cannot make `{label}`, a FHIR `{type_name}`"),
                        conversion_hint(type_name),
                    );
                }
            }
            Kind::Reference { resource_type, .. } => {
                if type_name != "Reference" {
                    return self.error(
                        &push(&at, "$reference"),
                        format!(
                            "`$reference` makes a Reference, but `{label}` is a FHIR `{type_name}`"
                        ),
                        None,
                    );
                }
                self.target(resource_type, e, push(&at, "$reference"), label);
            }
            Kind::Array(_) => {
                self.error(&at, format!("a list inside the list `{label}`"), None);
            }
            Kind::Translate { table, default, .. } => {
                self.translated(table, e, type_name, label);
                if let Some(d) = default {
                    self.item(Val::Expr(d), e, push(&at, "$default"), label);
                }
            }
            Kind::Each { .. }
            | Kind::EachOf { .. }
            | Kind::Call { .. }
            | Kind::Paths(_)
            | Kind::Path { .. } => {}
        }
    }

    /// The required binding of an element, when the packs hold its value set.
    fn required_set(&self, e: &'static Element) -> Option<&'static Binding> {
        e.binding
            .as_ref()
            .filter(|b| b.required && self.s.codes(&b.value_set).is_some())
    }

    /// Each value a `$translate` table can give an element bound `required`: a code, or a
    /// Coding or CodeableConcept object, checked where the table writes it.
    fn translated(&mut self, table: &str, e: &'static Element, type_name: &str, label: &str) {
        let Some(b) = self.required_set(e) else {
            return;
        };
        for (v, at) in self.table_values(table) {
            match v {
                Value::String(code) if self.s.is_primitive(type_name) => {
                    let made = Made {
                        system: None,
                        code: code.clone(),
                        at,
                        table: Some(table.to_owned()),
                    };
                    self.outside(b, &made, label);
                }
                Value::Object(_) => self.coded(Val::Json(v), e, type_name, &at, label),
                _ => {}
            }
        }
    }

    /// The values of a table (each `map` value, then its `default`), with their YAML paths.
    fn table_values(&self, table: &str) -> Vec<(&'c Value, Vec<String>)> {
        let tables: &'c BTreeMap<String, Table> = self.tables;
        let Some(t) = tables.get(table) else {
            return Vec::new();
        };
        let base = ["spec", "tables", table].map(str::to_owned).to_vec();
        // A file's codes are named under `file`, where a diagnostic points.
        let within = if t.file.is_some() { "file" } else { "map" };
        let mut out: Vec<_> = t
            .map
            .iter()
            .map(|(k, v)| (v, push(&push(&base, within), k)))
            .collect();
        if let Some(d) = &t.default {
            out.push((d, push(&base, "default")));
        }
        out
    }

    /// A Coding or CodeableConcept object against its element's required binding.
    fn coded(
        &mut self,
        v: Val<'_>,
        e: &'static Element,
        type_name: &str,
        at: &[String],
        label: &str,
    ) {
        let Some(b) = self.required_set(e) else {
            return;
        };
        match type_name {
            "Coding" => {
                for m in self.coding_made(v, at).unwrap_or_default() {
                    self.outside(b, &m, label);
                }
            }
            "CodeableConcept" => self.concept(v, at, b, label),
            _ => {}
        }
    }

    /// A CodeableConcept bound `required`: one of its codings must always be in the value set
    /// (the others may translate it). When none is, the codes of the codings of the value
    /// set's systems (or without a system) are reported. Codings from the record are not
    /// judged here (they are at run time).
    fn concept(&mut self, v: Val<'_>, at: &[String], b: &'static Binding, label: &str) {
        let Some((coding, coding_at)) = field(v, at, "coding") else {
            return;
        };
        let items: Vec<(Val<'_>, Vec<String>)> = match coding {
            Val::Expr(Expr {
                kind: Kind::Array(xs),
                ..
            }) => xs
                .iter()
                .enumerate()
                .map(|(i, x)| (Val::Expr(x), push(&coding_at, &i.to_string())))
                .collect(),
            Val::Expr(Expr {
                kind: Kind::Literal(Value::Array(xs)),
                ..
            }) => {
                let list_at = self.literal_at(&coding_at);
                xs.iter()
                    .enumerate()
                    .map(|(i, x)| (Val::Json(x), push(&list_at, &i.to_string())))
                    .collect()
            }
            Val::Json(Value::Array(xs)) => xs
                .iter()
                .enumerate()
                .map(|(i, x)| (Val::Json(x), push(&coding_at, &i.to_string())))
                .collect(),
            _ => return,
        };
        // Each coding: the codes it can have (several when a table makes it).
        let mut codings: Vec<Vec<Made>> = Vec::new();
        for (x, x_at) in items {
            let made = match x {
                Val::Expr(Expr {
                    kind: Kind::Translate { table, .. },
                    ..
                }) => {
                    let mut all = Vec::new();
                    for (v, at) in self.table_values(table) {
                        all.extend(self.coding_made(Val::Json(v), &at).unwrap_or_default());
                    }
                    Some(all)
                }
                _ => self.coding_made(x, &x_at),
            };
            let Some(made) = made else {
                return;
            };
            codings.push(made);
        }
        let vs = b.value_set.as_str();
        let always_in = codings.iter().any(|codes| {
            !codes.is_empty()
                && codes
                    .iter()
                    .all(|m| self.s.has_code(vs, m.system.as_deref(), &m.code) != Some(false))
        });
        if always_in {
            return;
        }
        let of_set = |m: &Made| m.system.as_deref().is_none_or(|s| self.s.has_system(vs, s));
        let judged: Vec<&Made> = if codings.iter().flatten().any(of_set) {
            codings.iter().flatten().filter(|m| of_set(m)).collect()
        } else {
            codings.first().into_iter().flatten().collect()
        };
        for m in judged {
            self.outside(b, m, label);
        }
    }

    /// The codes a Coding object makes, each with the Coding's system (absent: `None`); `None`
    /// when either comes from the record or the value is not an object.
    fn coding_made(&self, v: Val<'_>, at: &[String]) -> Option<Vec<Made>> {
        if !matches!(
            v,
            Val::Expr(Expr {
                kind: Kind::Object(_),
                ..
            }) | Val::Json(Value::Object(_))
        ) {
            return None;
        }
        let system = match field(v, at, "system") {
            None => None,
            Some((
                Val::Expr(Expr {
                    kind: Kind::Literal(j),
                    ..
                })
                | Val::Json(j),
                _,
            )) => match j {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                _ => return None,
            },
            Some(_) => return None,
        };
        let codes = match field(v, at, "code") {
            None => Vec::new(),
            Some((Val::Expr(x), code_at)) => match &x.kind {
                Kind::Literal(Value::String(c)) => vec![Made {
                    system: system.clone(),
                    code: c.clone(),
                    at: self.literal_at(&code_at),
                    table: None,
                }],
                Kind::Literal(Value::Null) => Vec::new(),
                Kind::Translate { table, .. } => self
                    .table_values(table)
                    .into_iter()
                    .filter_map(|(v, at)| {
                        Some(Made {
                            system: system.clone(),
                            code: v.as_str()?.to_owned(),
                            at,
                            table: Some(table.clone()),
                        })
                    })
                    .collect(),
                _ => return None,
            },
            Some((Val::Json(Value::String(c)), code_at)) => vec![Made {
                system: system.clone(),
                code: c.clone(),
                at: code_at,
                table: None,
            }],
            Some((Val::Json(Value::Null), _)) => Vec::new(),
            Some((Val::Json(_), _)) => return None,
        };
        Some(codes)
    }

    /// Reports a code (of `system`, when the Coding gives one) outside a required binding.
    fn outside(&mut self, b: &Binding, m: &Made, label: &str) {
        let vs = b.value_set.as_str();
        let system = m.system.as_deref();
        if self.s.has_code(vs, system, &m.code) != Some(false) {
            return;
        }
        if m.table.is_some() && !self.told.insert((m.at.clone(), vs.to_owned())) {
            return;
        }
        let code = &m.code;
        let mut what = match system {
            Some(sys) => format!("`{code}` of `{sys}`"),
            None => format!("`{code}`"),
        };
        if let Some(t) = &m.table {
            what = format!("{what}, a value of table `{t}`,");
        }
        let codes = self.s.codes(vs).unwrap_or_default();
        let elsewhere = self.s.systems_of(vs, code);
        let hint = match elsewhere.first() {
            Some(other) if system.is_some() => Some(format!("`{code}` is a code of `{other}`")),
            _ => did_you_mean(code, codes.iter().map(String::as_str)).or_else(|| {
                (codes.len() <= 12).then(|| format!("one of `{}`", codes.join("`, `")))
            }),
        };
        self.error(
            &m.at,
            format!("{what} is not a code of `{vs}`, which `{label}` requires"),
            hint,
        );
    }

    /// A literal item: JSON type and form of a primitive, its code, or an object's fields.
    fn literal(
        &mut self,
        j: &Value,
        e: &'static Element,
        type_name: &str,
        primitive: bool,
        at: Vec<String>,
        label: &str,
    ) {
        if crate::model::fhir::is_empty(j) {
            // Empty values are left out of what the mapping makes.
            return;
        }
        if primitive {
            if let Err(p) = check_literal(label, type_name, j) {
                let hint = matches!(j, Value::String(_))
                    .then(|| conversion_hint(type_name))
                    .flatten();
                return self.error(&at, p.to_string(), hint);
            }
            if let (Some(b), Value::String(code)) = (self.required_set(e), j) {
                let made = Made {
                    system: None,
                    code: code.clone(),
                    at,
                    table: None,
                };
                self.outside(b, &made, label);
            }
            return;
        }
        let Value::Object(map) = j else {
            return self.error(
                &at,
                format!(
                    "{} where `{label}` is a `{type_name}` (an object)",
                    crate::model::fhir::kind(j)
                ),
                None,
            );
        };
        if type_name == "Reference"
            && let Some(Value::String(r)) = map.get("reference")
            && let Some((t, _)) = r.split_once('/').filter(|(t, _)| !t.contains(':'))
        {
            self.target(t, e, push(&at, "reference"), label);
        }
        self.coded(Val::Json(j), e, type_name, &at, label);
        let Some((elements, required)) = self.s.children(e) else {
            return;
        };
        let fields: Vec<_> = map
            .iter()
            .map(|(k, f)| (k.as_str(), Val::Json(f), push(&at, k)))
            .collect();
        self.fields(fields, elements, required, label, &at);
    }

    /// A reference's target type against the element's allowed targets.
    fn target(&mut self, t: &str, e: &Element, at: Vec<String>, label: &str) {
        if self.s.resource(t).is_none() {
            let hint = did_you_mean(t, self.s.resource_names());
            return self.error(
                &at,
                format!(
                    "`{t}` is not a resource type of FHIR {}",
                    self.s.version.name()
                ),
                hint,
            );
        }
        if e.refers.is_empty() || e.refers.iter().any(|r| r == t || r == "Resource") {
            return;
        }
        let hint = did_you_mean(t, e.refers.iter().map(String::as_str))
            .or_else(|| Some(format!("it may refer to `{}`", e.refers.join("`, `"))));
        self.error(&at, format!("`{label}` cannot refer to `{t}`"), hint);
    }
}

/// A field of an object the mapping makes (compiled or literal), with its YAML path.
fn field<'v>(v: Val<'v>, at: &[String], name: &str) -> Option<(Val<'v>, Vec<String>)> {
    match v {
        Val::Expr(Expr {
            kind: Kind::Object(fields),
            ..
        }) => fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(k, x)| (Val::Expr(x), push(at, k))),
        Val::Json(Value::Object(m)) => m.get(name).map(|x| (Val::Json(x), push(at, name))),
        _ => None,
    }
}

/// Primitive types whose JSON form is a string.
fn takes_string(type_name: &str) -> bool {
    !matches!(
        type_name,
        "boolean" | "integer" | "decimal" | "positiveInt" | "unsignedInt"
    )
}

/// The operator that makes a value of a primitive type from a string.
fn conversion_hint(type_name: &str) -> Option<String> {
    match type_name {
        "boolean" => Some("write `true` or `false`, or convert with `$boolean`".into()),
        "integer" | "positiveInt" | "unsignedInt" => {
            Some("write a number, or convert with `$integer`".into())
        }
        "decimal" => Some("write a number, or convert with `$number`".into()),
        _ => None,
    }
}
