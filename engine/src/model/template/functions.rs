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

use crate::model::fhir;

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

/// A function's arguments: `None` for an argument missing from the input.
pub type Args<'a> = [Option<&'a Value>];

/// A template function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Upper,
    Lower,
    Trim,
    Join,
    Concat,
    Default,
    Date,
    DateTime,
    Instant,
    Uuid5,
    Translate,
    Json,
}

impl Function {
    /// All functions with their names in templates.
    pub const ALL: [(&'static str, Function); 12] = [
        ("upper", Function::Upper),
        ("lower", Function::Lower),
        ("trim", Function::Trim),
        ("join", Function::Join),
        ("concat", Function::Concat),
        ("default", Function::Default),
        ("date", Function::Date),
        ("dateTime", Function::DateTime),
        ("instant", Function::Instant),
        ("uuid5", Function::Uuid5),
        ("translate", Function::Translate),
        ("json", Function::Json),
    ];

    pub fn by_name(name: &str) -> Option<Function> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(n, _)| n)
    }

    /// Applies the function; `names` says how each argument was written, for messages (asked
    /// only when there is one to write); `zone` is the zone of local times (`dateTime`,
    /// `instant`), UTC when `None`.
    pub fn call(
        self,
        args: &Args<'_>,
        names: &dyn Fn(usize) -> Option<String>,
        tables: &BTreeMap<String, Table>,
        zone: Option<Tz>,
    ) -> Result<Value, String> {
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
        Ok(match self {
            Function::Upper => Value::String(as_text(one()?).to_uppercase()),
            Function::Lower => Value::String(as_text(one()?).to_lowercase()),
            Function::Trim => Value::String(text(one()?).trim().to_owned()),
            Function::Json => Value::String(one()?.to_string()),
            Function::Join => {
                let sep = given.get(1).map(|s| text(s)).unwrap_or_default();
                match one()? {
                    Value::Array(a) => {
                        Value::String(a.iter().map(text).collect::<Vec<_>>().join(&sep))
                    }
                    other => Value::String(text(other)),
                }
            }
            Function::Concat => Value::String(given.iter().map(|v| text(v)).collect()),
            Function::Uuid5 => Value::String(fhir::uuid5(
                &given.iter().map(|v| text(v)).collect::<Vec<_>>(),
            )),
            Function::Date => Value::String(fhir::date(one()?).map_err(|e| format!("date: {e}"))?),
            Function::DateTime => Value::String(
                fhir::date_time_in(one()?, zone).map_err(|e| format!("dateTime: {e}"))?,
            ),
            Function::Instant => {
                Value::String(fhir::instant(one()?, zone).map_err(|e| format!("instant: {e}"))?)
            }
            Function::Default => args
                .iter()
                .flatten()
                .find(|v| !fhir::is_empty(v))
                .map_or(Value::Null, |v| (*v).clone()),
            Function::Translate => {
                let [table, code] = given.as_slice() else {
                    return Err("`translate` takes a table name and a code".into());
                };
                let table = text(table);
                let t = tables
                    .get(&table)
                    .ok_or_else(|| format!("translate: no table `{table}`"))?;
                t.translate(&table, &text(code))?
            }
        })
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
        self.function
            .call(&args, &|i| names.get(i).cloned(), &self.tables, self.zone)
            .map(ScopedJson::Derived)
            .map_err(|e| RenderErrorReason::Other(e).into())
    }
}
