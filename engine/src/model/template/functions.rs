//! The engine's template functions (`upper`, `join`, `date`, `translate`, ...): one plain
//! implementation each, called both by Handlebars (as helpers) and by the direct renderer.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono_tz::Tz;
use handlebars::{
    Context, Handlebars, Helper, HelperDef, RenderContext, RenderError, RenderErrorReason,
    ScopedJson,
};
use serde_json::Value;

use super::dates::{self, DateFormatError};
use super::numbers::{self, NumberError};
use super::text::{self, Patterns, TextError};
use crate::model::fhir;

/// A translation table as the `translate` helper and `$translate` see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub map: BTreeMap<String, Value>,
    pub default: Option<Value>,
    /// The file the table was read from, as the definition names it (`None`: its `map`).
    pub file: Option<String>,
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

/// A function's arguments: `None` for an argument missing from the input.
pub type Args<'a> = [Option<&'a Value>];

/// What functions read besides their arguments: the connector's tables, the zone of local
/// times (UTC when `None`) and the regular expressions compiled when definitions were checked.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    pub tables: &'a BTreeMap<String, Table>,
    pub zone: Option<Tz>,
    pub patterns: &'a Patterns,
}

/// A call that cannot work, found when definitions are checked (its literal arguments).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("`{name}` takes {expected}, found {found}")]
    Arity {
        name: &'static str,
        expected: String,
        found: usize,
    },
    #[error("{what} of `{name}` must be written as a literal string")]
    NotLiteral {
        name: &'static str,
        what: &'static str,
    },
    #[error("{0}")]
    Text(#[from] TextError),
    #[error("{0}")]
    Date(#[from] DateFormatError),
    #[error("{0}")]
    Number(#[from] NumberError),
    #[error("no table `{0}` in spec.tables")]
    NoTable(String),
    /// The error of one argument (0-based), for its position.
    #[error("{error}")]
    Argument { index: usize, error: Box<CallError> },
}

/// A template function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Upper,
    Lower,
    Trim,
    Title,
    Capitalize,
    Join,
    Concat,
    Default,
    Date,
    DateTime,
    Instant,
    Uuid5,
    Translate,
    Json,
    Base64Encode,
    Base64Decode,
    Base64UrlEncode,
    Base64UrlDecode,
    Split,
    Replace,
    Match,
    Capture,
    Substring,
    PadLeft,
    PadRight,
    ParseDate,
    ParseDateTime,
    ParseInstant,
    Add,
    Subtract,
    Multiply,
    Divide,
    Round,
}

impl Function {
    /// All functions with their names in templates.
    pub const ALL: [(&'static str, Function); 33] = [
        ("upper", Function::Upper),
        ("lower", Function::Lower),
        ("trim", Function::Trim),
        ("titleCase", Function::Title),
        ("capitalize", Function::Capitalize),
        ("join", Function::Join),
        ("concat", Function::Concat),
        ("default", Function::Default),
        ("date", Function::Date),
        ("dateTime", Function::DateTime),
        ("instant", Function::Instant),
        ("uuid5", Function::Uuid5),
        ("translate", Function::Translate),
        ("json", Function::Json),
        ("base64Encode", Function::Base64Encode),
        ("base64Decode", Function::Base64Decode),
        ("base64UrlEncode", Function::Base64UrlEncode),
        ("base64UrlDecode", Function::Base64UrlDecode),
        ("split", Function::Split),
        ("replace", Function::Replace),
        ("match", Function::Match),
        ("capture", Function::Capture),
        ("substring", Function::Substring),
        ("padLeft", Function::PadLeft),
        ("padRight", Function::PadRight),
        ("parseDate", Function::ParseDate),
        ("parseDateTime", Function::ParseDateTime),
        ("parseInstant", Function::ParseInstant),
        ("add", Function::Add),
        ("subtract", Function::Subtract),
        ("multiply", Function::Multiply),
        ("divide", Function::Divide),
        ("round", Function::Round),
    ];

    pub fn by_name(name: &str) -> Option<Function> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    /// The function's name in templates.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(n, _)| n)
    }

    /// The function of the structural operator `$NAME` (`{ $split: [VALUE, ","] }`): every
    /// function but those whose operator already exists with its own options (`$date`,
    /// `$dateTime`, `$instant`, `$translate`) or is an option (`$default`).
    pub fn by_operator(op: &str) -> Option<Function> {
        let f = Self::by_name(op.strip_prefix('$')?)?;
        (!matches!(
            f,
            Function::Date
                | Function::DateTime
                | Function::Instant
                | Function::Translate
                | Function::Default
        ))
        .then_some(f)
    }

    /// The least and most arguments (`None`: any number).
    pub fn arity(self) -> (usize, Option<usize>) {
        use Function as F;
        match self {
            F::Upper | F::Lower | F::Trim | F::Title | F::Capitalize | F::Json => (1, Some(1)),
            F::Date | F::DateTime | F::Instant => (1, Some(1)),
            F::Base64Encode | F::Base64Decode | F::Base64UrlEncode | F::Base64UrlDecode => {
                (1, Some(1))
            }
            F::Join => (1, Some(2)),
            F::Concat | F::Default | F::Uuid5 => (1, None),
            F::Translate => (2, Some(3)),
            F::Split | F::Match => (2, Some(2)),
            F::Replace => (3, Some(3)),
            F::Capture | F::Substring | F::PadLeft | F::PadRight => (2, Some(3)),
            F::ParseDate | F::ParseDateTime | F::ParseInstant => (2, Some(3)),
            F::Add | F::Subtract | F::Multiply | F::Divide => (2, Some(2)),
            F::Round => (1, Some(2)),
        }
    }

    /// Checks a call as definitions are checked: the number of arguments, and each argument
    /// written as a literal (`Some`; `None` for a variable or subexpression): a regular
    /// expression compiled into `patterns` (it must be literal), a date format and zone, a
    /// width, a count, a number, a table name.
    pub fn check(
        self,
        args: &[Option<&Value>],
        patterns: &mut Patterns,
        tables: &BTreeMap<String, Table>,
    ) -> Result<(), CallError> {
        use Function as F;
        let name = self.name();
        let (min, max) = self.arity();
        if args.len() < min || max.is_some_and(|m| args.len() > m) {
            let expected = match max {
                Some(m) if m == min => plural(min),
                Some(m) => format!("{min} to {m} arguments"),
                None => format!("at least {}", plural(min)),
            };
            return Err(CallError::Arity {
                name,
                expected,
                found: args.len(),
            });
        }
        let arg = |i: usize| args.get(i).copied().flatten();
        let at = |index: usize, error: CallError| CallError::Argument {
            index,
            error: Box::new(error),
        };
        match self {
            F::Match | F::Capture => {
                let Some(Value::String(p)) = arg(1) else {
                    return Err(at(
                        1,
                        CallError::NotLiteral {
                            name,
                            what: "the regular expression (argument 2)",
                        },
                    ));
                };
                let re = match patterns.get(p) {
                    Some(re) => re.clone(),
                    None => {
                        let re = text::compile_pattern(p).map_err(|e| at(1, e.into()))?;
                        patterns.insert(p.clone(), re.clone());
                        re
                    }
                };
                if let Some(g) = arg(2) {
                    group(g)
                        .and_then(|g| g.check(&re))
                        .map_err(|e| at(2, e.into()))?;
                }
            }
            F::Substring => {
                for (i, what) in [(1, "the start"), (2, "the length")] {
                    if let Some(v) = arg(i) {
                        count(v, what, MAX_COUNT).map_err(|e| at(i, e.into()))?;
                    }
                }
            }
            F::PadLeft | F::PadRight => {
                if let Some(w) = arg(1) {
                    count(w, "the pad width", text::MAX_PAD).map_err(|e| at(1, e.into()))?;
                }
                if let Some(c) = arg(2) {
                    pad_char(c).map_err(|e| at(2, e.into()))?;
                }
            }
            F::Split | F::Replace => {
                if let Some(v) = arg(1)
                    && text(v).is_empty()
                {
                    return Err(at(
                        1,
                        TextError::Empty(if self == F::Split {
                            "separator of `split`"
                        } else {
                            "text that `replace` looks for"
                        })
                        .into(),
                    ));
                }
            }
            F::ParseDate | F::ParseDateTime | F::ParseInstant => {
                if let Some(f) = arg(1) {
                    dates::check(&text(f), self.output()).map_err(|e| at(1, e.into()))?;
                }
                if let Some(z) = arg(2) {
                    dates::zone(&text(z)).map_err(|e| at(2, e.into()))?;
                }
            }
            F::Add | F::Subtract | F::Multiply | F::Divide => {
                for i in [0, 1] {
                    if let Some(v) = arg(i) {
                        let d = numbers::decimal(v).map_err(|e| at(i, e.into()))?;
                        if self == F::Divide && i == 1 && d.is_zero() {
                            return Err(at(1, NumberError::DivisionByZero.into()));
                        }
                    }
                }
            }
            F::Round => {
                if let Some(v) = arg(1) {
                    numbers::places(v).map_err(|e| at(1, e.into()))?;
                }
            }
            F::Translate => {
                if let Some(t) = arg(0)
                    && !tables.contains_key(&text(t))
                {
                    return Err(at(0, CallError::NoTable(text(t))));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn output(self) -> dates::Output {
        match self {
            Function::ParseDate => dates::Output::Date,
            Function::ParseInstant => dates::Output::Instant,
            _ => dates::Output::DateTime,
        }
    }

    /// Applies the function; `names` says how each argument was written, for messages (asked
    /// only when there is one to write).
    pub fn call(
        self,
        args: &Args<'_>,
        names: &dyn Fn(usize) -> Option<String>,
        env: &Env<'_>,
    ) -> Result<Value, String> {
        self.run(args, names, env, false)
    }

    fn run(
        self,
        args: &Args<'_>,
        names: &dyn Fn(usize) -> Option<String>,
        env: &Env<'_>,
        written: bool,
    ) -> Result<Value, String> {
        use Function as F;
        let name = self.name();
        if self != Function::Default
            && let Some(i) = args.iter().position(Option::is_none)
        {
            let what = names(i).map_or("an argument".to_owned(), |n| format!("`{n}`"));
            return Err(format!(
                "{what} is missing from the input (argument {} of `{name}`)",
                i + 1
            ));
        }
        let given: Vec<&Value> = args.iter().flatten().copied().collect();
        let one = || {
            given
                .first()
                .copied()
                .ok_or_else(|| format!("`{name}` takes one argument"))
        };
        let nth = |i: usize| {
            given
                .get(i)
                .copied()
                .ok_or_else(|| format!("`{name}` needs argument {}", i + 1))
        };
        let fail = |e: &dyn std::fmt::Display| format!("{name}: {e}");
        let s = |t: String| Value::String(t);
        let number = |d: rust_decimal::Decimal| {
            if written {
                Value::String(d.to_string())
            } else {
                numbers::to_value(d)
            }
        };
        Ok(match self {
            F::Upper => s(as_text(one()?).to_uppercase()),
            F::Lower => s(as_text(one()?).to_lowercase()),
            F::Trim => s(text(one()?).trim().to_owned()),
            F::Title => s(text::title(&as_text(one()?))),
            F::Capitalize => s(text::capitalize(&as_text(one()?))),
            F::Json => s(one()?.to_string()),
            F::Join => {
                let sep = given.get(1).map(|s| text(s)).unwrap_or_default();
                match one()? {
                    Value::Array(a) => s(a.iter().map(text).collect::<Vec<_>>().join(&sep)),
                    other => s(text(other)),
                }
            }
            F::Concat => s(given.iter().map(|v| text(v)).collect()),
            F::Uuid5 => s(fhir::uuid5(
                &given.iter().map(|v| text(v)).collect::<Vec<_>>(),
            )),
            F::Date => s(fhir::date(one()?).map_err(|e| format!("date: {e}"))?),
            F::DateTime => {
                s(fhir::date_time_in(one()?, env.zone).map_err(|e| format!("dateTime: {e}"))?)
            }
            F::Instant => s(fhir::instant(one()?, env.zone).map_err(|e| format!("instant: {e}"))?),
            F::Default => args
                .iter()
                .flatten()
                .find(|v| !fhir::is_empty(v))
                .map_or(Value::Null, |v| (*v).clone()),
            F::Translate => {
                let (table, code) = (text(nth(0)?), text(nth(1)?));
                let t = env
                    .tables
                    .get(&table)
                    .ok_or_else(|| format!("translate: no table `{table}`"))?;
                match (t.map.get(&code), given.get(2)) {
                    (Some(v), _) => v.clone(),
                    (None, Some(default)) => (*default).clone(),
                    (None, None) => t.translate(&table, &code)?,
                }
            }
            F::Base64Encode | F::Base64UrlEncode => {
                s(text::base64_encode(&as_text(one()?), alphabet(self)))
            }
            F::Base64Decode | F::Base64UrlDecode => {
                s(text::base64_decode(&as_text(one()?), alphabet(self)).map_err(|e| fail(&e))?)
            }
            F::Split => {
                let (v, sep) = (as_text(nth(0)?), text(nth(1)?));
                if sep.is_empty() {
                    return Err(fail(&TextError::Empty("separator of `split`")));
                }
                if v.matches(sep.as_str()).count() >= text::MAX_PARTS {
                    return Err(fail(&TextError::TooManyParts(text::MAX_PARTS)));
                }
                Value::Array(if v.is_empty() {
                    Vec::new()
                } else {
                    v.split(sep.as_str()).map(|p| s(p.to_owned())).collect()
                })
            }
            F::Replace => {
                let (v, from, to) = (as_text(nth(0)?), text(nth(1)?), text(nth(2)?));
                s(text::replace(&v, &from, &to).map_err(|e| fail(&e))?)
            }
            F::Match => {
                let re = text::pattern(env.patterns, &text(nth(1)?)).map_err(|e| fail(&e))?;
                Value::Bool(re.is_match(&as_text(nth(0)?)))
            }
            F::Capture => {
                let re = text::pattern(env.patterns, &text(nth(1)?)).map_err(|e| fail(&e))?;
                let g = given
                    .get(2)
                    .map(|g| group(g))
                    .transpose()
                    .map_err(|e| fail(&e))?;
                text::capture(re, &as_text(nth(0)?), g.as_ref())
                    .map_err(|e| fail(&e))?
                    .map_or(Value::Null, s)
            }
            F::Substring => {
                let start = count(nth(1)?, "the start", MAX_COUNT).map_err(|e| fail(&e))?;
                let len = given
                    .get(2)
                    .map(|l| count(l, "the length", MAX_COUNT))
                    .transpose()
                    .map_err(|e| fail(&e))?;
                s(text::substring(&as_text(nth(0)?), start, len))
            }
            F::PadLeft | F::PadRight => {
                let width = count(nth(1)?, "the pad width", text::MAX_PAD).map_err(|e| fail(&e))?;
                let fill = match given.get(2) {
                    Some(c) => pad_char(c).map_err(|e| fail(&e))?,
                    None => ' ',
                };
                s(
                    text::pad(&as_text(nth(0)?), width, fill, self == F::PadLeft)
                        .map_err(|e| fail(&e))?,
                )
            }
            F::ParseDate | F::ParseDateTime | F::ParseInstant => {
                let zone = match given.get(2) {
                    Some(z) => Some(dates::zone(&text(z)).map_err(|e| fail(&e))?),
                    None => env.zone,
                };
                s(
                    dates::parse_with(&as_text(nth(0)?), &text(nth(1)?), zone, self.output())
                        .map_err(|e| fail(&e))?,
                )
            }
            F::Add | F::Subtract | F::Multiply | F::Divide => {
                let op = match self {
                    F::Add => numbers::Op::Add,
                    F::Subtract => numbers::Op::Subtract,
                    F::Multiply => numbers::Op::Multiply,
                    _ => numbers::Op::Divide,
                };
                number(numbers::apply(op, nth(0)?, nth(1)?).map_err(|e| fail(&e))?)
            }
            F::Round => {
                let places = match given.get(1) {
                    Some(p) => numbers::places(p).map_err(|e| fail(&e))?,
                    None => 0,
                };
                number(numbers::round(one()?, places).map_err(|e| fail(&e))?)
            }
        })
    }

    /// The call as a template writes it: the same as [`Function::call`], but the arithmetic
    /// functions give their exact decimal as text, with its places (`2.50`, not `2.5`).
    pub fn call_text(
        self,
        args: &Args<'_>,
        names: &dyn Fn(usize) -> Option<String>,
        env: &Env<'_>,
    ) -> Result<Value, String> {
        self.run(args, names, env, true)
    }
}

/// The largest start or length of `substring`.
const MAX_COUNT: usize = 1_000_000_000;

fn plural(n: usize) -> String {
    if n == 1 {
        "1 argument".into()
    } else {
        format!("{n} arguments")
    }
}

fn alphabet(f: Function) -> text::Alphabet {
    match f {
        Function::Base64UrlEncode | Function::Base64UrlDecode => text::Alphabet::UrlSafe,
        _ => text::Alphabet::Standard,
    }
}

/// A count argument (a start, a length, a width): a whole number from 0 to `max`, written as
/// a number or as text.
fn count(v: &Value, what: &'static str, max: usize) -> Result<usize, TextError> {
    let bad = || TextError::Count {
        what,
        max,
        found: text::shown(&text(v)),
    };
    let n = match v {
        Value::Number(n) => n.as_u64().ok_or_else(bad)?,
        Value::String(s) => s.trim().parse::<u64>().map_err(|_| bad())?,
        _ => return Err(bad()),
    };
    usize::try_from(n)
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(bad)
}

/// The group argument of `capture`: a number, or a name.
fn group(v: &Value) -> Result<text::Group, TextError> {
    match v {
        Value::Number(_) => Ok(text::Group::Index(count(v, "the group", 1_000)?)),
        other => Ok(text::Group::Name(text(other))),
    }
}

/// The padding argument: one character.
fn pad_char(v: &Value) -> Result<char, TextError> {
    let t = text(v);
    let mut chars = t.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Ok(c),
        _ => Err(TextError::PadChar(text::shown(&t))),
    }
}

/// A value as template text, borrowed when it is a string.
fn as_text(v: &Value) -> std::borrow::Cow<'_, str> {
    match v {
        Value::String(s) => std::borrow::Cow::Borrowed(s),
        other => std::borrow::Cow::Owned(text(other)),
    }
}

/// A value as template text: strings as they are, numbers and booleans written out, null as
/// nothing.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A template function registered as a Handlebars helper.
pub struct AsHelper {
    pub function: Function,
    pub tables: Arc<BTreeMap<String, Table>>,
    pub zone: Option<Tz>,
    pub patterns: Arc<Patterns>,
}

impl HelperDef for AsHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let args: Vec<Option<&Value>> = h
            .params()
            .iter()
            .map(|p| (!p.is_value_missing()).then(|| p.value()))
            .collect();
        let names: Vec<String> = h
            .params()
            .iter()
            .map(|p| {
                p.relative_path()
                    .cloned()
                    .unwrap_or_else(|| p.value().to_string())
            })
            .collect();
        let env = Env {
            tables: &self.tables,
            zone: self.zone,
            patterns: &self.patterns,
        };
        self.function
            .call_text(&args, &|i| names.get(i).cloned(), &env)
            .map(ScopedJson::Derived)
            .map_err(|e| RenderErrorReason::Other(e).into())
    }

    /// Written into the text (not a subexpression's value): an array or object has no text
    /// form, so it is an error, as in the direct renderer (Handlebars would write `[a, b]`
    /// or `[object]` into the resource).
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn handlebars::Output,
    ) -> handlebars::HelperResult {
        let value = self.call_inner(h, r, ctx, rc)?;
        let written = match value.as_json() {
            v @ (Value::Array(_) | Value::Object(_)) => {
                return Err(RenderErrorReason::Other(format!(
                    "the result of `{name}` is {}, not text: use the operator `${name}` to keep it, or `join`",
                    fhir::kind(v),
                    name = h.name()
                ))
                .into());
            }
            v => text(v),
        };
        out.write(&written)
            .map_err(|e| RenderErrorReason::Other(e.to_string()).into())
    }
}
