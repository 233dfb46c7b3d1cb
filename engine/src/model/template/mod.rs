//! String templates: Handlebars syntax, one registry per connector, strict (a missing value is
//! an error), no HTML escaping (a template's result is a string value placed in a JSON
//! structure, so the serializer does the JSON escaping). Templates made only of text,
//! variables and the engine's functions are rendered directly, without building a
//! Handlebars context; the rest go through Handlebars.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

mod dates;
mod functions;
mod numbers;
mod text;

use handlebars::template::{Parameter, Template, TemplateElement};
use handlebars::{Context, Handlebars, Path, PathSeg, RenderError, RenderErrorReason};
use serde_json::Value;

use functions::AsHelper;
pub use functions::{CallError, Env, Function, Table};
pub use text::{Patterns, shown};

/// Helpers that come with Handlebars.
pub const BUILTIN_HELPERS: [&str; 17] = [
    "if", "unless", "each", "with", "lookup", "raw", "log", "eq", "ne", "gt", "gte", "lt", "lte",
    "and", "or", "not", "len",
];

/// A compiled template.
#[derive(Debug, Clone, PartialEq)]
pub enum Text {
    /// No `{{`: the string itself.
    Const(String),
    /// Text, variables and function calls, rendered directly without Handlebars.
    Direct(Vec<Piece>),
    /// Anything else (blocks, built-in helpers, subexpressions): a registered Handlebars
    /// template.
    Template(String),
}

/// A part of a directly rendered template.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Raw(String),
    /// A variable, and its line and column in the template.
    Var(Var, (usize, usize)),
    /// A function call, and its line and column in the template.
    Call(Function, Vec<Arg>, (usize, usize)),
}

/// An argument of a function call.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Var(Var),
    Literal(Value),
}

/// A variable path such as `record.brand_name.[0]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Var {
    raw: String,
    root: String,
    rest: Vec<String>,
}

impl Var {
    fn parse(raw: &str) -> Option<Var> {
        let mut parts = raw.split('.');
        let root = parts.next()?;
        let ident = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                && !s.starts_with(|c: char| c.is_ascii_digit())
        };
        if !ident(root) || root == "this" {
            return None;
        }
        let rest = parts
            .map(|p| {
                let p = p
                    .strip_prefix('[')
                    .and_then(|q| q.strip_suffix(']'))
                    .unwrap_or(p);
                (!p.is_empty() && !p.contains(['[', ']', '/', '@'])).then(|| p.to_owned())
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Var {
            raw: raw.to_owned(),
            root: root.to_owned(),
            rest,
        })
    }

    fn resolve<'a>(&self, scope: &'a dyn Scope) -> Option<&'a Value> {
        self.within(scope.value(&self.root)?)
    }

    /// The top-level name the variable starts from (`record`, `item`, `vars`, ...).
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The segments after the top-level name (`brand_name`, `0` of `record.brand_name.[0]`):
    /// each a member name, or an element's index when it is a number.
    pub fn segments(&self) -> &[String] {
        &self.rest
    }

    /// The variable's value inside `root`, the value of its top-level name (what `resolve`
    /// reads, for callers whose scope lends values longer than itself).
    pub fn within<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        self.rest.iter().try_fold(root, |v, seg| match v {
            Value::Object(o) => crate::model::jsonpath::member(o, seg),
            Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        })
    }
}

impl Text {
    /// The variable a direct template is made of alone (`{{vars.system}}`): when its value
    /// is a string, the rendered text is that string, which a caller may borrow instead of
    /// rendering a copy.
    pub fn lone_var(&self) -> Option<&Var> {
        match self {
            Text::Direct(pieces) => match pieces.as_slice() {
                [Piece::Var(v, _)] => Some(v),
                _ => None,
            },
            _ => None,
        }
    }
}

/// What templates read: named values, and (for Handlebars templates) a whole context.
pub trait Scope {
    /// The value of a top-level name (`record`, `item`, `vars`, ...).
    fn value(&self, name: &str) -> Option<&Value>;
    /// The Handlebars context of the scope.
    fn context(&self) -> &Context;
}

/// The Handlebars registry of one connector, and the context names its templates read.
pub struct Templates {
    registry: Handlebars<'static>,
    tables: Arc<BTreeMap<String, Table>>,
    /// The zone of local times in the records (`timeZone`); UTC when `None`.
    zone: Option<chrono_tz::Tz>,
    /// The regular expressions of `match` and `capture` calls, compiled as templates are.
    patterns: Arc<Patterns>,
    /// Top-level context names the Handlebars templates read; `None` when some template may
    /// read the whole context (`this`, `..`, `@root`), so contexts must hold everything.
    needs: Option<BTreeSet<String>>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("handlebars", &self.registry.get_templates().len())
            .finish()
    }
}

/// A template that does not compile, with the position inside the template text.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateError {
    pub message: String,
    /// 1-based line and column inside the template text, when known.
    pub position: Option<(usize, usize)>,
    pub hint: Option<String>,
}

impl Templates {
    /// The templates of a connector with these tables, reading local times in `zone` (UTC
    /// when `None`).
    pub fn new(tables: Arc<BTreeMap<String, Table>>, zone: Option<chrono_tz::Tz>) -> Self {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(handlebars::no_escape);
        registry.register_helper(TEXT, Box::new(TextOf));
        let mut templates = Templates {
            registry,
            tables,
            zone,
            patterns: Arc::default(),
            needs: Some(BTreeSet::new()),
        };
        templates.register_helpers();
        templates
    }

    /// Registers the engine's functions as Handlebars helpers (again when a pattern was
    /// added, so that the helpers see it).
    fn register_helpers(&mut self) {
        for (name, function) in Function::ALL {
            self.registry.register_helper(
                name,
                Box::new(AsHelper {
                    function,
                    tables: self.tables.clone(),
                    zone: self.zone,
                    patterns: self.patterns.clone(),
                }),
            );
        }
    }

    /// What the functions read besides their arguments.
    pub fn env(&self) -> Env<'_> {
        Env {
            tables: &self.tables,
            zone: self.zone,
            patterns: &self.patterns,
        }
    }

    /// Checks a call of `f` whose arguments are `literals` (`None` for one that is not a
    /// literal), as definitions are checked: compiles its regular expression for later calls.
    pub fn check_call(
        &mut self,
        f: Function,
        literals: &[Option<&Value>],
    ) -> Result<(), CallError> {
        let before = self.patterns.len();
        let mut patterns = (*self.patterns).clone();
        f.check(literals, &mut patterns, &self.tables)?;
        if patterns.len() != before {
            self.patterns = Arc::new(patterns);
            self.register_helpers();
        }
        Ok(())
    }

    /// The value of a call of `f` in a structural template (`{ $split: [...] }`): typed, not
    /// text (an array, a number).
    pub fn call_value(
        &self,
        f: Function,
        args: &[Option<&Value>],
        names: &dyn Fn(usize) -> Option<String>,
    ) -> Result<Value, String> {
        f.call(args, names, &self.env())
    }

    /// The zone of local times in the records; UTC when `None`.
    pub fn zone(&self) -> Option<chrono_tz::Tz> {
        self.zone
    }

    /// The connector's code tables.
    pub fn tables(&self) -> &BTreeMap<String, Table> {
        &self.tables
    }

    /// True when a Handlebars template may read the context name `name` (contexts leave out
    /// the rest, which saves copying the record for templates that never read it).
    pub fn needs(&self, name: &str) -> bool {
        self.needs.as_ref().is_none_or(|n| n.contains(name))
    }

    /// Compiles `source` under `name`: a constant, a direct template, or Handlebars.
    pub fn compile(&mut self, name: &str, source: &str) -> Result<Text, TemplateError> {
        if !source.contains("{{") {
            return Ok(Text::Const(source.to_owned()));
        }
        let template = Template::compile(source).map_err(|e| syntax_error(source, &e))?;
        if let Some((helper, position)) = unknown_helper(&template) {
            let mut known: Vec<&str> = Function::ALL.iter().map(|(n, _)| *n).collect();
            known.extend(BUILTIN_HELPERS);
            let hint = crate::model::hint::did_you_mean(&helper, known.iter().copied())
                .or_else(|| Some(format!("helpers: {}", known.join(", "))));
            return Err(TemplateError {
                message: format!("unknown helper `{helper}`"),
                position,
                hint,
            });
        }
        let mut inline = BTreeSet::new();
        inline_partials(&template, &mut inline);
        check_partials(&template, &inline)?;
        self.check_calls(&template)?;
        if let Some(pieces) = direct(&template) {
            return Ok(Text::Direct(pieces));
        }
        if let Some(needs) = &mut self.needs
            && !collect_names(&template, false, needs)
        {
            self.needs = None;
        }
        let mut template = template;
        text_calls(&mut template);
        self.registry.register_template(name, template);
        Ok(Text::Template(name.to_owned()))
    }

    /// Renders a compiled template in a scope; the error says what is missing or wrong.
    pub fn render(&self, text: &Text, scope: &dyn Scope) -> Result<String, String> {
        match text {
            Text::Const(s) => Ok(s.clone()),
            Text::Template(name) => {
                let mut out = Bounded::default();
                match self
                    .registry
                    .render_with_context_to_write(name, scope.context(), &mut out)
                {
                    Ok(()) => String::from_utf8(out.bytes)
                        .map_err(|_| "the template wrote text that is not UTF-8".to_owned()),
                    Err(_) if out.full => Err(format!(
                        "the template's text is longer than {MAX_TEMPLATE_TEXT} bytes"
                    )),
                    Err(e) => Err(describe(&e)),
                }
            }
            Text::Direct(pieces) => {
                if let [Piece::Call(f, args, at)] = pieces.as_slice() {
                    // A template that is one call: its text is the result, not a copy of it.
                    return match self.call(*f, args, *at, scope)? {
                        Value::String(s) => Ok(s),
                        value => {
                            let mut out = String::new();
                            push_text(&mut out, &value, "the result of a helper")
                                .map_err(|m| format!("{m}{}", place(*at)))?;
                            Ok(out)
                        }
                    };
                }
                let mut out = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Raw(s) => out.push_str(s),
                        Piece::Var(v, at) => {
                            let value = v
                                .resolve(scope)
                                .ok_or_else(|| format!("{}{}", missing(&v.raw), place(*at)))?;
                            push_text(&mut out, value, &v.raw)
                                .map_err(|m| format!("{m}{}", place(*at)))?;
                        }
                        Piece::Call(f, args, at) => {
                            let value = self.call(*f, args, *at, scope)?;
                            push_text(&mut out, &value, "the result of a helper")
                                .map_err(|m| format!("{m}{}", place(*at)))?;
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    /// A function call of a directly rendered template.
    fn call(
        &self,
        f: Function,
        args: &[Arg],
        at: (usize, usize),
        scope: &dyn Scope,
    ) -> Result<Value, String> {
        fn value<'a>(a: &'a Arg, scope: &'a dyn Scope) -> Option<&'a Value> {
            match a {
                Arg::Var(v) => v.resolve(scope),
                Arg::Literal(l) => Some(l),
            }
        }
        // The arguments' values, on the stack for the usual few (no allocation per call).
        let mut few: [Option<&Value>; FEW] = [None; FEW];
        let many: Vec<Option<&Value>>;
        let values: &[Option<&Value>] = if args.len() <= FEW {
            for (slot, a) in few.iter_mut().zip(args) {
                *slot = value(a, scope);
            }
            &few[..args.len()]
        } else {
            many = args.iter().map(|a| value(a, scope)).collect();
            &many
        };
        let names = |i: usize| {
            args.get(i).map(|a| match a {
                Arg::Var(v) => v.raw.clone(),
                Arg::Literal(l) => l.to_string(),
            })
        };
        f.call_text(values, &names, &self.env())
            .map_err(|m| format!("{m}{}", place(at)))
    }

    /// Checks every call of an engine function in a template (arity, literal arguments).
    fn check_calls(&mut self, t: &Template) -> Result<(), TemplateError> {
        for (i, el) in t.elements.iter().enumerate() {
            let pos = t.mapping.get(i).map(|m| (m.0, m.1));
            match el {
                TemplateElement::Expression(h)
                | TemplateElement::HtmlExpression(h)
                | TemplateElement::HelperBlock(h) => self.check_helper(h, pos)?,
                TemplateElement::DecoratorBlock(d) | TemplateElement::PartialBlock(d) => {
                    if let Some(inner) = &d.template {
                        self.check_calls(inner)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_helper(
        &mut self,
        h: &handlebars::template::HelperTemplate,
        pos: Option<(usize, usize)>,
    ) -> Result<(), TemplateError> {
        for p in h.params.iter().chain(h.hash.values()) {
            if let Parameter::Subexpression(s) = p
                && let TemplateElement::Expression(inner) = s.element.as_ref()
            {
                self.check_helper(inner, pos)?;
            }
        }
        // A function or helper named alone (`{{upper}}`) is a call without arguments too:
        // Handlebars calls it, so its arity is checked as any call's.
        let name = match &h.name {
            Parameter::Name(n) => Some(n.as_str()),
            // `{{upper}}` alone parses as a path of one name.
            Parameter::Path(Path::Relative((segs, raw)))
                if matches!(segs.as_slice(), [PathSeg::Named(_)]) =>
            {
                Some(raw.as_str())
            }
            _ => None,
        };
        if let Some(n) = name
            && let Some((min, max)) = builtin_arity(n)
            && !(min..=max).contains(&h.params.len())
        {
            let takes = match (min, max) {
                (1, 1) => "1 argument".to_owned(),
                (m, usize::MAX) => {
                    format!("at least {m} argument{}", if m == 1 { "" } else { "s" })
                }
                (m, _) => format!("{m} arguments"),
            };
            return Err(TemplateError {
                message: format!("`{n}` takes {takes}, found {}", h.params.len()),
                position: pos,
                hint: None,
            });
        }
        if let Some(n) = name
            && let Some(f) = Function::by_name(n)
        {
            let literals: Vec<Option<&Value>> = h
                .params
                .iter()
                .map(|p| match p {
                    Parameter::Literal(l) => Some(l),
                    _ => None,
                })
                .collect();
            self.check_call(f, &literals).map_err(|e| TemplateError {
                message: e.to_string(),
                position: pos,
                hint: None,
            })?;
        }
        for t in [&h.template, &h.inverse].into_iter().flatten() {
            self.check_calls(t)?;
        }
        Ok(())
    }
}

/// The most text one Handlebars template may write for one value (a block over a large
/// array inside another could otherwise write gigabytes from a record within its limits).
pub const MAX_TEMPLATE_TEXT: usize = 16 * 1024 * 1024;

/// Text written by Handlebars, refused past `MAX_TEMPLATE_TEXT`.
#[derive(Default)]
struct Bounded {
    bytes: Vec<u8>,
    full: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_TEMPLATE_TEXT {
            self.full = true;
            return Err(std::io::Error::other("the template's text is too long"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The helper a plain `{{path}}` of a Handlebars template is compiled to (`text_calls`): the
/// value as text, and an error for an object or array, as the direct renderer says (Handlebars
/// itself writes `[object]` and `[a, b]`). A user cannot call it: it is no known helper.
const TEXT: &str = "__text";

struct TextOf;

impl handlebars::HelperDef for TextOf {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &handlebars::Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut handlebars::RenderContext<'reg, 'rc>,
        out: &mut dyn handlebars::Output,
    ) -> handlebars::HelperResult {
        let Some(p) = h.param(0) else {
            return Ok(());
        };
        let raw = p.relative_path().cloned().unwrap_or_else(|| "value".into());
        if p.is_value_missing() {
            return Err(RenderErrorReason::MissingVariable(Some(raw)).into());
        }
        let mut text = String::new();
        push_text(&mut text, p.value(), &raw).map_err(RenderErrorReason::Other)?;
        out.write(&text)
            .map_err(|e| RenderErrorReason::Other(e.to_string()).into())
    }
}

/// Turns each plain `{{path}}` (no helper, no arguments) of a template, inside blocks too,
/// into a call of `TEXT`.
fn text_calls(t: &mut Template) {
    for el in &mut t.elements {
        match el {
            TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h)
                if !h.block
                    && h.params.is_empty()
                    && h.hash.is_empty()
                    && matches!(h.name, Parameter::Path(_)) =>
            {
                let path = std::mem::replace(&mut h.name, Parameter::Name(TEXT.into()));
                h.params.push(path);
            }
            TemplateElement::HelperBlock(h) => {
                for inner in [&mut h.template, &mut h.inverse].into_iter().flatten() {
                    text_calls(inner);
                }
            }
            TemplateElement::DecoratorBlock(d) | TemplateElement::PartialBlock(d) => {
                if let Some(inner) = &mut d.template {
                    text_calls(inner);
                }
            }
            _ => {}
        }
    }
}

/// How many arguments each of Handlebars' own helpers takes (at least, at most), for those
/// that check theirs only when they run.
fn builtin_arity(name: &str) -> Option<(usize, usize)> {
    match name {
        "if" | "unless" | "with" | "each" | "not" | "len" => Some((1, 1)),
        "lookup" | "eq" | "ne" | "gt" | "gte" | "lt" | "lte" => Some((2, 2)),
        "and" | "or" => Some((1, usize::MAX)),
        _ => None,
    }
}

/// A template that does not compile, said in the engine's words: a block closed by another
/// name's `{{/...}}`, a block left open (pointing at where it opens), or a `{{` without `}}`.
fn syntax_error(source: &str, e: &handlebars::TemplateError) -> TemplateError {
    use handlebars::TemplateErrorReason as R;
    let unclosed = || {
        TemplateError {
        message: "invalid Handlebars syntax: each `{{` needs a closing `}}` around a path or a helper call".into(),
        position: e.pos(),
        hint: Some("write `\\{{` for a literal `{{`".into()),
    }
    };
    match e.reason() {
        R::MismatchingClosedHelper(open, close) | R::MismatchingClosedDecorator(open, close) => {
            TemplateError {
                message: format!("`{{{{#{open}}}}}` is closed by `{{{{/{close}}}}}`"),
                position: e.pos(),
                hint: Some(format!("close it with `{{{{/{open}}}}}`")),
            }
        }
        _ => match open_block(source) {
            Some((name, at)) => TemplateError {
                message: format!("`{{{{#{name}}}}}` is never closed"),
                position: Some(at),
                hint: Some(format!("end the block with `{{{{/{name}}}}}`")),
            },
            None => unclosed(),
        },
    }
}

/// The innermost block a template opens and never closes, with its line and column, when
/// every `{{` of it is closed (so the syntax error is the block's).
fn open_block(source: &str) -> Option<(String, (usize, usize))> {
    let mut open: Vec<(String, usize)> = Vec::new();
    let mut rest = 0;
    while let Some(i) = source[rest..].find("{{").map(|i| rest + i) {
        let end = source[i..].find("}}").map(|e| i + e)?;
        let tag = source[i + 2..end]
            .trim_start_matches(['{', '~'])
            .trim_start();
        let name = |t: &str| {
            t.split(|c: char| c.is_whitespace() || c == '}' || c == '~')
                .next()
                .unwrap_or("")
                .to_owned()
        };
        let escaped = i > 0 && source.as_bytes()[i - 1] == b'\\';
        if !escaped {
            if let Some(t) = tag.strip_prefix('#') {
                open.push((name(t.trim_start_matches(['*', '>'])), i));
            } else if tag.starts_with('/') {
                open.pop();
            }
        }
        rest = end + 2;
    }
    let (name, at) = open.pop()?;
    let before = &source[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((name, (line, column)))
}

/// The names `{{#*inline "name"}}` defines anywhere in a template.
fn inline_partials(t: &Template, out: &mut BTreeSet<String>) {
    for el in &t.elements {
        match el {
            TemplateElement::DecoratorBlock(d) | TemplateElement::PartialBlock(d) => {
                if matches!(&d.name, Parameter::Name(n) if n == "inline")
                    && let Some(Parameter::Literal(Value::String(name))) = d.params.first()
                {
                    out.insert(name.clone());
                }
                if let Some(inner) = &d.template {
                    inline_partials(inner, out);
                }
            }
            TemplateElement::HelperBlock(h) => {
                for inner in [&h.template, &h.inverse].into_iter().flatten() {
                    inline_partials(inner, out);
                }
            }
            _ => {}
        }
    }
}

/// A partial (`{{> name}}`) must be one the template defines with `{{#*inline}}`: the
/// engine registers none, so any other fails every render.
fn check_partials(t: &Template, inline: &BTreeSet<String>) -> Result<(), TemplateError> {
    for (i, el) in t.elements.iter().enumerate() {
        let pos = t.mapping.get(i).map(|m| (m.0, m.1));
        match el {
            TemplateElement::PartialExpression(d) | TemplateElement::PartialBlock(d) => {
                let name = match &d.name {
                    Parameter::Name(n) => n.clone(),
                    Parameter::Literal(Value::String(n)) => n.clone(),
                    _ => String::new(),
                };
                if !inline.contains(&name) {
                    return Err(TemplateError {
                        message: format!("no partial `{name}`: the engine has no partials but those a template defines"),
                        position: pos,
                        hint: Some("define it in the same template with `{{#*inline \"NAME\"}}...{{/inline}}`, or write its text in place".into()),
                    });
                }
                if let Some(inner) = &d.template {
                    check_partials(inner, inline)?;
                }
            }
            TemplateElement::DecoratorBlock(d) => {
                if let Some(inner) = &d.template {
                    check_partials(inner, inline)?;
                }
            }
            TemplateElement::HelperBlock(h) => {
                for inner in [&h.template, &h.inverse].into_iter().flatten() {
                    check_partials(inner, inline)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Most arguments a function call's values are kept on the stack for.
const FEW: usize = 4;

fn place((line, column): (usize, usize)) -> String {
    format!(" at line {line}, column {column} of the template")
}

fn missing(raw: &str) -> String {
    format!("`{raw}` is missing from the input")
}

/// Appends a value as text; objects and arrays have no text form, so they are errors.
pub(super) fn push_text(out: &mut String, value: &Value, what: &str) -> Result<(), String> {
    match value {
        Value::String(s) => out.push_str(s),
        Value::Object(_) | Value::Array(_) => {
            return Err(format!(
                "`{what}` is {}, not text: use `$path` to copy structure, or `{{{{json {what}}}}}`",
                crate::model::fhir::kind(value)
            ));
        }
        other => out.push_str(&functions::text(other)),
    }
    Ok(())
}

/// The pieces of a template made only of text, variables and engine functions over
/// variables and literals; `None` when Handlebars is needed.
fn direct(t: &Template) -> Option<Vec<Piece>> {
    let var = |p: &Parameter| match p {
        Parameter::Name(n) => Var::parse(n),
        Parameter::Path(Path::Relative((segs, raw)))
            if segs.iter().all(|s| matches!(s, PathSeg::Named(_))) =>
        {
            Var::parse(raw)
        }
        _ => None,
    };
    let mut pieces = Vec::new();
    for (i, el) in t.elements.iter().enumerate() {
        let at = t.mapping.get(i).map_or((1, 1), |m| (m.0, m.1));
        match el {
            TemplateElement::RawString(s) => pieces.push(Piece::Raw(s.clone())),
            TemplateElement::Comment(_) => {}
            TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h)
                if !h.block && h.hash.is_empty() =>
            {
                if h.params.is_empty() {
                    if let Parameter::Name(n) = &h.name
                        && (Function::by_name(n).is_some() || BUILTIN_HELPERS.contains(&n.as_str()))
                    {
                        return None;
                    }
                    pieces.push(Piece::Var(var(&h.name)?, at));
                } else {
                    let Parameter::Name(n) = &h.name else {
                        return None;
                    };
                    let f = Function::by_name(n)?;
                    let args = h
                        .params
                        .iter()
                        .map(|p| match p {
                            Parameter::Literal(l) => Some(Arg::Literal(l.clone())),
                            other => var(other).map(Arg::Var),
                        })
                        .collect::<Option<Vec<_>>>()?;
                    pieces.push(Piece::Call(f, args, at));
                }
            }
            _ => return None,
        }
    }
    Some(pieces)
}

/// Says what went wrong in a Handlebars render, with the template's line and column.
pub fn describe(e: &RenderError) -> String {
    let place = match (e.line_no, e.column_no) {
        (Some(l), Some(c)) => place((l, c)),
        _ => String::new(),
    };
    let reason = match e.reason() {
        RenderErrorReason::MissingVariable(Some(v)) => missing(v),
        RenderErrorReason::MissingVariable(None) => "a variable is missing from the input".into(),
        RenderErrorReason::Other(m) => m.clone(),
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
        && Function::by_name(name).is_none()
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

/// Adds the top-level names a template reads to `out`; false when it may read anything.
/// Inside `each` and `with` blocks, plain paths are relative to the block's value.
fn collect_names(t: &Template, in_block: bool, out: &mut BTreeSet<String>) -> bool {
    t.elements.iter().all(|el| match el {
        TemplateElement::Expression(h)
        | TemplateElement::HtmlExpression(h)
        | TemplateElement::HelperBlock(h) => {
            let is_call = h.block || !h.params.is_empty() || !h.hash.is_empty();
            let name_ok = match &h.name {
                Parameter::Name(n) if !is_call => {
                    param_names(&Parameter::Name(n.clone()), in_block, out)
                }
                Parameter::Name(_) => true,
                other => param_names(other, in_block, out),
            };
            let inner_block = in_block
                || matches!(&h.name, Parameter::Name(n) if h.block && (n == "each" || n == "with"));
            name_ok
                && h.params
                    .iter()
                    .chain(h.hash.values())
                    .all(|p| param_names(p, in_block, out))
                && [&h.template, &h.inverse]
                    .into_iter()
                    .flatten()
                    .all(|t| collect_names(t, inner_block, out))
        }
        TemplateElement::RawString(_) | TemplateElement::Comment(_) => true,
        _ => false,
    })
}

fn param_names(p: &Parameter, in_block: bool, out: &mut BTreeSet<String>) -> bool {
    match p {
        Parameter::Literal(_) => true,
        Parameter::Name(n) => {
            if !in_block {
                out.insert(n.clone());
            }
            true
        }
        Parameter::Path(Path::Relative((segs, raw))) => match segs.first() {
            Some(PathSeg::Named(n)) => {
                if !in_block {
                    out.insert(n.clone());
                }
                true
            }
            // `this` inside a block is the block's value; `..` climbs out of it.
            _ => in_block && !raw.starts_with(".."),
        },
        Parameter::Path(Path::Local((_, name, _))) => in_block && name != "root",
        Parameter::Subexpression(s) => match s.element.as_ref() {
            TemplateElement::Expression(h) => h
                .params
                .iter()
                .chain(h.hash.values())
                .all(|p| param_names(p, in_block, out)),
            _ => false,
        },
        _ => false,
    }
}
