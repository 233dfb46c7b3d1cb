//! Handlebars string templates: one registry per connector, strict mode, no HTML escaping
//! (a template's result is a string value placed in a JSON structure, so the serializer does
//! the JSON escaping), and the engine's small set of helpers.

use std::collections::BTreeMap;
use std::sync::Arc;

use handlebars::template::{Parameter, Template, TemplateElement};
use handlebars::{
    Context, Handlebars, Helper, HelperDef, JsonValue, RenderContext, RenderError,
    RenderErrorReason, ScopedJson, handlebars_helper,
};
use serde_json::Value;

use crate::fhir;

/// Helpers of the engine, documented in the README ("Template helpers").
pub const ENGINE_HELPERS: [&str; 11] = [
    "upper",
    "lower",
    "trim",
    "join",
    "default",
    "concat",
    "date",
    "dateTime",
    "uuid5",
    "translate",
    "json",
];
/// Helpers that come with Handlebars.
pub const BUILTIN_HELPERS: [&str; 17] = [
    "if", "unless", "each", "with", "lookup", "raw", "log", "eq", "ne", "gt", "gte", "lt", "lte",
    "and", "or", "not", "len",
];

/// A translation table as the `translate` helper and `$translate` see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub map: BTreeMap<String, Value>,
    pub default: Option<Value>,
}

impl Table {
    /// The value for `code`, or an error naming the table when it is unmapped.
    pub fn translate(&self, name: &str, code: &str) -> Result<Value, String> {
        match self.map.get(code).or(self.default.as_ref()) {
            Some(v) => Ok(v.clone()),
            None => Err(format!(
                "code `{code}` is not in table `{name}` and the table has no default"
            )),
        }
    }
}

/// A compiled template: a constant or a registered Handlebars template.
#[derive(Debug, Clone, PartialEq)]
pub enum Text {
    Const(String),
    Template(String),
}

/// The Handlebars registry of one connector.
pub struct Templates {
    registry: Handlebars<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("count", &self.registry.get_templates().len())
            .finish()
    }
}

/// A template that does not compile, with the position inside the template text.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateError {
    pub message: String,
    /// 1-based line and column inside the template text, when known.
    pub position: Option<(usize, usize)>,
}

impl Templates {
    pub fn new(tables: Arc<BTreeMap<String, Table>>) -> Self {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(handlebars::no_escape);
        registry.register_helper("upper", Box::new(upper));
        registry.register_helper("lower", Box::new(lower));
        registry.register_helper("trim", Box::new(trim));
        registry.register_helper("join", Box::new(join));
        registry.register_helper("concat", Box::new(concat));
        registry.register_helper("date", Box::new(date));
        registry.register_helper("dateTime", Box::new(date_time));
        registry.register_helper("uuid5", Box::new(uuid5));
        registry.register_helper("json", Box::new(json));
        registry.register_helper("default", Box::new(DefaultHelper));
        registry.register_helper("translate", Box::new(TranslateHelper(tables)));
        Templates { registry }
    }

    /// Compiles `source` under `name`; a string without `{{` is a constant.
    pub fn compile(&mut self, name: &str, source: &str) -> Result<Text, TemplateError> {
        if !source.contains("{{") && !source.contains("\\{{") {
            return Ok(Text::Const(source.to_owned()));
        }
        let template = Template::compile(source).map_err(|e| TemplateError {
            message: e.reason().to_string(),
            position: e.pos(),
        })?;
        if let Some((helper, position)) = unknown_helper(&template) {
            let mut known: Vec<&str> = ENGINE_HELPERS.to_vec();
            known.extend(BUILTIN_HELPERS);
            let hint = crate::diagnostic::did_you_mean(&helper, known)
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            return Err(TemplateError {
                message: format!("unknown helper `{helper}`{hint}"),
                position,
            });
        }
        self.registry.register_template(name, template);
        Ok(Text::Template(name.to_owned()))
    }

    /// Renders a compiled template against a context.
    pub fn render(&self, text: &Text, ctx: &Context) -> Result<String, RenderError> {
        match text {
            Text::Const(s) => Ok(s.clone()),
            Text::Template(name) => self.registry.render_with_context(name, ctx),
        }
    }
}

/// Says what went wrong in a render, with the template's line and column.
pub fn describe(e: &RenderError) -> String {
    let place = match (e.line_no, e.column_no) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c} of the template"),
        _ => String::new(),
    };
    let reason = match e.reason() {
        RenderErrorReason::MissingVariable(Some(v)) => format!("`{v}` is missing from the input"),
        RenderErrorReason::MissingVariable(None) => "a variable is missing from the input".into(),
        other => other.to_string(),
    };
    format!("{reason}{place}")
}

fn unknown_helper(t: &Template) -> Option<(String, Option<(usize, usize)>)> {
    for (i, el) in t.elements.iter().enumerate() {
        let pos = t.mapping.get(i).map(|m| (m.0, m.1));
        if let Some(name) = element_unknown_helper(el) {
            return Some((name, pos));
        }
    }
    None
}

fn element_unknown_helper(el: &TemplateElement) -> Option<String> {
    let h = match el {
        TemplateElement::Expression(h)
        | TemplateElement::HtmlExpression(h)
        | TemplateElement::HelperBlock(h) => h,
        _ => return None,
    };
    let is_call = h.block || !h.params.is_empty() || !h.hash.is_empty();
    if let Parameter::Name(name) = &h.name
        && is_call
        && !ENGINE_HELPERS.contains(&name.as_str())
        && !BUILTIN_HELPERS.contains(&name.as_str())
    {
        return Some(name.clone());
    }
    let nested = h
        .params
        .iter()
        .chain(h.hash.values())
        .find_map(|p| match p {
            Parameter::Subexpression(s) => element_unknown_helper(&s.element),
            _ => None,
        });
    nested.or_else(|| {
        [&h.template, &h.inverse]
            .into_iter()
            .flatten()
            .find_map(|t| unknown_helper(t).map(|(n, _)| n))
    })
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

handlebars_helper!(upper: |s: Json| text_of(s).to_uppercase());
handlebars_helper!(lower: |s: Json| text_of(s).to_lowercase());
handlebars_helper!(trim: |s: Json| text_of(s).trim().to_owned());
handlebars_helper!(json: |v: Json| v.to_string());
handlebars_helper!(join: |items: Json, sep: str| match items {
    Value::Array(a) => a.iter().map(text_of).collect::<Vec<_>>().join(sep),
    other => text_of(other),
});
handlebars_helper!(concat: |*args| args.iter().map(|v| text_of(v)).collect::<String>());
handlebars_helper!(uuid5: |*args| fhir::uuid5(&args.iter().map(|v| text_of(v)).collect::<Vec<_>>()));

/// `{{date x}}`: a FHIR `date`, or an error for text that is not a date.
#[derive(Clone, Copy)]
struct DateHelper(bool);

#[allow(non_upper_case_globals)]
const date: DateHelper = DateHelper(false);
#[allow(non_upper_case_globals)]
const date_time: DateHelper = DateHelper(true);

impl HelperDef for DateHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let name = if self.0 { "dateTime" } else { "date" };
        let v = h.param(0).filter(|p| !p.is_value_missing()).ok_or(
            RenderErrorReason::ParamNotFoundForIndex(if self.0 { "dateTime" } else { "date" }, 0),
        )?;
        let out = if self.0 {
            fhir::date_time(v.value())
        } else {
            fhir::date(v.value())
        };
        out.map(|s| ScopedJson::Derived(JsonValue::String(s)))
            .map_err(|e| RenderErrorReason::Other(format!("{name}: {e}")).into())
    }
}

/// `{{default x "fallback"}}`: `x` unless it is missing, null or empty.
struct DefaultHelper;

impl HelperDef for DefaultHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let chosen = h
            .params()
            .iter()
            .find(|p| !p.is_value_missing() && !fhir::is_empty(p.value()));
        Ok(ScopedJson::Derived(
            chosen.map(|p| p.value().clone()).unwrap_or(Value::Null),
        ))
    }
}

/// `{{translate "table" code}}`: the code looked up in one of the connector's tables.
struct TranslateHelper(Arc<BTreeMap<String, Table>>);

impl HelperDef for TranslateHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let table = h
            .param(0)
            .and_then(|p| p.value().as_str())
            .unwrap_or_default();
        let code = h
            .param(1)
            .filter(|p| !p.is_value_missing())
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("translate", 1))?;
        let t = self
            .0
            .get(table)
            .ok_or_else(|| RenderErrorReason::Other(format!("translate: no table `{table}`")))?;
        let v = t
            .translate(table, &text_of(code.value()))
            .map_err(RenderErrorReason::Other)?;
        Ok(ScopedJson::Derived(v))
    }
}
