//! What evaluating a mapping makes: a tree that borrows its object keys from the compiled
//! mapping and the values it copies from the record, so one evaluation can either be written
//! as JSON text directly (`serde::Serialize`, no `Value` built) or turned into an owned
//! `serde_json::Value` for callers that inspect it. Both read the same tree, so they cannot
//! disagree.

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Value};

use crate::model::fhir;

/// A non-empty value made by a mapping (an empty one is never made: FHIR allows none).
/// Kept small (32 bytes: a `Value` is 80), as evaluation moves these through every level.
#[derive(Debug, Clone)]
pub enum Out<'a> {
    /// Text the mapping computed (a rendered template, a date, a function's text).
    Text(String),
    /// Any other value the mapping computed (a number, an array, an object), kept as it is;
    /// boxed, as these are rarer than text and a `Value` is large.
    Made(Box<Value>),
    /// A literal of the mapping, or a variable's text borrowed from the input, kept as it is.
    Literal(&'a Value),
    /// A value selected from the input, written without its empty parts (`null`, `""`, `[]`,
    /// `{}`, recursively); it has something left.
    Selected(&'a Value),
    /// An object of the mapping: its members in the mapping's order.
    Object(Vec<(&'a str, Out<'a>)>),
    Array(Vec<Out<'a>>),
}

impl<'a> Out<'a> {
    /// A selected value, `None` when nothing is left of it without its empty parts.
    pub(super) fn selected(v: &'a Value) -> Option<Out<'a>> {
        (!prunes_to_nothing(v)).then_some(Out::Selected(v))
    }

    /// A made value, `None` when it is empty.
    pub(super) fn made(v: Value) -> Option<Out<'a>> {
        (!fhir::is_empty(&v)).then(|| Out::of(v))
    }

    /// Made text, `None` when it is empty.
    pub(super) fn text(s: String) -> Option<Out<'a>> {
        (!s.is_empty()).then_some(Out::Text(s))
    }

    /// A made value as it is (text kept as text).
    pub(super) fn of(v: Value) -> Out<'a> {
        match v {
            Value::String(s) => Out::Text(s),
            other => Out::Made(Box::new(other)),
        }
    }

    /// The value as an owned JSON value (copying what is borrowed, pruning what was
    /// selected).
    pub fn into_value(self) -> Value {
        match self {
            Out::Text(s) => Value::String(s),
            Out::Made(v) => *v,
            Out::Literal(v) => v.clone(),
            Out::Selected(v) => pruned(v).unwrap_or(Value::Null),
            Out::Object(fields) => {
                let mut m = Map::with_capacity(fields.len());
                for (k, v) in fields {
                    m.insert(k.to_owned(), v.into_value());
                }
                Value::Object(m)
            }
            Out::Array(items) => Value::Array(items.into_iter().map(Out::into_value).collect()),
        }
    }

    /// The same value with nothing borrowed (for values made from what an expression built,
    /// which does not outlive the expression).
    pub(super) fn into_owned(self) -> Out<'static> {
        match self {
            Out::Text(s) => Out::Text(s),
            other => Out::of(other.into_value()),
        }
    }

    /// Adds this value to an array being built: an array's elements are added one by one
    /// (`$each` bodies and spliced values), anything else as one element.
    pub(super) fn splice_into(self, out: &mut Vec<Out<'a>>) {
        match self {
            Out::Array(items) => out.extend(items),
            Out::Made(v) if v.is_array() => {
                if let Value::Array(items) = *v {
                    out.extend(items.into_iter().map(Out::of))
                }
            }
            Out::Literal(Value::Array(items)) => out.extend(items.iter().map(Out::Literal)),
            Out::Selected(Value::Array(items)) => {
                out.extend(items.iter().filter_map(Out::selected))
            }
            other => out.push(other),
        }
    }

    /// A scalar member of an object (`resourceType`, `id`), as text when it is a string.
    pub fn member_str(&self, name: &str) -> Option<&str> {
        match self {
            Out::Object(fields) => fields
                .iter()
                .find(|(k, _)| *k == name)
                .and_then(|(_, v)| v.as_str()),
            Out::Made(v) => match &**v {
                Value::Object(o) => crate::model::jsonpath::member(o, name).and_then(Value::as_str),
                _ => None,
            },
            Out::Literal(Value::Object(o)) => {
                crate::model::jsonpath::member(o, name).and_then(Value::as_str)
            }
            Out::Selected(Value::Object(o)) => crate::model::jsonpath::member(o, name)
                .filter(|v| !prunes_to_nothing(v))
                .and_then(Value::as_str),
            _ => None,
        }
    }

    /// A member of an object, copied as a JSON value (for the rarer checks that read a
    /// member that is not text).
    pub fn member_value(&self, name: &str) -> Option<Value> {
        match self {
            Out::Object(fields) => fields
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone().into_value()),
            Out::Made(v) => v.get(name).cloned(),
            Out::Literal(v) => v.get(name).cloned(),
            Out::Selected(v) => v.get(name).and_then(pruned),
            Out::Text(_) | Out::Array(_) => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Out::Text(s) | Out::Literal(Value::String(s)) | Out::Selected(Value::String(s)) => {
                Some(s)
            }
            _ => None,
        }
    }

    /// Whether this is an object (a resource must be one).
    pub fn is_object(&self) -> bool {
        match self {
            Out::Object(_) => true,
            Out::Text(_) => false,
            Out::Made(v) => v.is_object(),
            Out::Literal(v) | Out::Selected(v) => v.is_object(),
            Out::Array(_) => false,
        }
    }

    /// What kind of JSON value this is (for errors).
    pub fn kind(&self) -> &'static str {
        match self {
            Out::Object(_) => fhir::kind(&Value::Object(Map::new())),
            Out::Array(_) => fhir::kind(&Value::Array(Vec::new())),
            Out::Text(_) => fhir::kind(&Value::String(String::new())),
            Out::Made(v) => fhir::kind(v),
            Out::Literal(v) | Out::Selected(v) => fhir::kind(v),
        }
    }
}

impl Serialize for Out<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Out::Text(t) => s.serialize_str(t),
            Out::Made(v) => v.serialize(s),
            Out::Literal(v) => v.serialize(s),
            Out::Selected(v) => Pruned(v).serialize(s),
            Out::Object(fields) => {
                let mut m = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
            Out::Array(items) => {
                let mut a = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    a.serialize_element(i)?;
                }
                a.end()
            }
        }
    }
}

/// A selected value written without its empty parts (what `pruned` copies).
struct Pruned<'a>(&'a Value);

impl Serialize for Pruned<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(o) => {
                let mut m = s.serialize_map(None)?;
                for (k, v) in o {
                    if !prunes_to_nothing(v) {
                        m.serialize_entry(k, &Pruned(v))?;
                    }
                }
                m.end()
            }
            Value::Array(a) => {
                let mut seq = s.serialize_seq(None)?;
                for v in a {
                    if !prunes_to_nothing(v) {
                        seq.serialize_element(&Pruned(v))?;
                    }
                }
                seq.end()
            }
            other => other.serialize(s),
        }
    }
}

/// Whether nothing is left of a value without its empty parts.
fn prunes_to_nothing(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Object(o) => o.values().all(prunes_to_nothing),
        Value::Array(a) => a.iter().all(prunes_to_nothing),
        _ => false,
    }
}

/// A copy of a selected value without its empty values, as FHIR allows none (`None` when
/// nothing is left); only what is kept is copied.
fn pruned(v: &Value) -> Option<Value> {
    let v = match v {
        Value::Object(o) => {
            let mut m = Map::with_capacity(o.len());
            for (k, c) in o {
                if let Some(c) = pruned(c) {
                    m.insert(k.clone(), c);
                }
            }
            Value::Object(m)
        }
        Value::Array(a) => Value::Array(a.iter().filter_map(pruned).collect()),
        Value::Null => return None,
        Value::String(s) if s.is_empty() => return None,
        other => other.clone(),
    };
    Some(v).filter(|v| !fhir::is_empty(v))
}

#[cfg(test)]
mod tests {
    use super::Out;

    #[test]
    fn a_made_value_is_a_third_of_a_json_value() {
        // Evaluation moves these through every level of a mapping: a variant holding a
        // `Value` itself (80 bytes with `preserve_order`) would make every move that size.
        assert!(std::mem::size_of::<Out<'_>>() <= 32);
        assert!(std::mem::size_of::<serde_json::Value>() >= 2 * 32);
    }
}
