//! The JSON Schema (2020-12) of the definition format, generated from the spec types, and the
//! check of documents against it, with its findings turned into located diagnostics.

use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use schemars::{SchemaGenerator, generate::SchemaSettings};
use serde_json::{Map, Value, json};

use crate::config::spec::{self, ConnectorDoc, SinkDoc, SourceDoc};
use crate::config::yaml::pointer_segments;

/// The published schema: one document of any kind, dispatched on `kind`, where every typed
/// scalar (integers, numbers, booleans, enums, durations, sizes) also accepts a string with a
/// `${env:...}`/`${file:...}` reference, resolved and typed when the definition is loaded.
pub fn generate() -> Value {
    let mut root = generate_strict();
    let mut reference = json!({
        "type": "string",
        "pattern": REFERENCE_PATTERN,
        "description": "A string with an `${env:NAME}`, `${env:NAME:-default}` or `${file:PATH}` reference, resolved when the definition is loaded and then read as the field's type.",
    });
    if let Some(defs) = root.get_mut("$defs").and_then(Value::as_object_mut) {
        let enums: Vec<String> = defs
            .iter()
            .filter(|(n, d)| is_enum(d) && !UNREFERENCEABLE.contains(&n.as_str()))
            .map(|(n, _)| format!("#/$defs/{n}"))
            .collect();
        for (name, def) in defs.iter_mut() {
            if !UNREFERENCEABLE.contains(&name.as_str()) {
                accept_references(def, &enums);
            }
        }
        defs.insert("Reference".into(), reference.take());
    }
    root
}

/// A string that holds a reference somewhere (the published schema's alternative of typed
/// scalars).
pub const REFERENCE_PATTERN: &str = "\\$\\{(env:[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?|file:[^}]+)\\}";

/// Definitions whose fields are never resolved (the document's identity, the tests).
const UNREFERENCEABLE: [&str; 6] = [
    "ApiVersion",
    "ConnectorKind",
    "SourceKind",
    "SinkKind",
    "Metadata",
    "TestSpec",
];

fn is_enum(def: &Value) -> bool {
    def.get("enum").is_some()
        || def.get("const").is_some()
        || def.get("oneOf").and_then(Value::as_array).is_some_and(|o| {
            o.iter()
                .all(|v| v.get("const").is_some() || v.get("enum").is_some())
        })
}

/// True for the schema of a typed scalar: not a plain string, not a collection.
fn is_typed_scalar(p: &Value, enums: &[String]) -> bool {
    let scalar_type = |t: &Value| matches!(t.as_str(), Some("integer" | "number" | "boolean"));
    let typed = match p.get("type") {
        Some(Value::Array(ts)) => ts.iter().any(scalar_type),
        Some(t) => scalar_type(t) || (t == "string" && p.get("pattern").is_some()),
        None => false,
    };
    let enum_ref = p
        .get("$ref")
        .and_then(Value::as_str)
        .is_some_and(|r| enums.iter().any(|e| e == r));
    typed || enum_ref || is_enum(p)
}

/// Wraps every typed scalar among the fields of `def` (at any depth) as `anyOf: [the type,
/// a reference]`, keeping its description, default and examples outside.
fn accept_references(def: &mut Value, enums: &[String]) {
    let Value::Object(o) = def else { return };
    if let Some(Value::Object(props)) = o.get_mut("properties") {
        for p in props.values_mut() {
            wrap_or_descend(p, enums);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(p) = o.get_mut(key).filter(|p| p.is_object()) {
            wrap_or_descend(p, enums);
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(items)) = o.get_mut(key) {
            items.iter_mut().for_each(|i| accept_references(i, enums));
        }
    }
}

fn wrap_or_descend(p: &mut Value, enums: &[String]) {
    if !is_typed_scalar(p, enums) {
        accept_references(p, enums);
        return;
    }
    let Value::Object(inner) = p.take() else {
        return;
    };
    let mut outer = Map::new();
    let mut inner = inner;
    for k in ["description", "default", "examples", "title"] {
        if let Some(v) = inner.remove(k) {
            outer.insert(k.into(), v);
        }
    }
    outer.insert(
        "anyOf".into(),
        json!([Value::Object(inner), {"$ref": "#/$defs/Reference"}]),
    );
    *p = Value::Object(outer);
}

/// The schema documents are checked against once their references are resolved: typed
/// scalars take only their type.
fn generate_strict() -> Value {
    let mut generator = SchemaGenerator::new(SchemaSettings::draft2020_12());
    let connector = generator.subschema_for::<ConnectorDoc>();
    let source = generator.subschema_for::<SourceDoc>();
    let sink = generator.subschema_for::<SinkDoc>();
    let defs: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    let branch = |kind: &str, schema: schemars::Schema| json!({"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]}, "then": schema});
    let mut root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://fosps.gravitate-health.eu/schemas/connector.schema.json",
        "title": "FOSPS connector engine definition",
        "description": format!("One document of apiVersion {}: a Connector, a Source or a Sink.", spec::API_VERSION),
        "type": "object",
        "required": ["kind"],
        "properties": {"kind": {"enum": spec::KINDS}},
        "allOf": [branch("Connector", connector), branch("Source", source), branch("Sink", sink)],
        "$defs": defs,
    });
    drop_null(&mut root);
    root
}

/// Optional fields are written or left out; an explicit null is not a value, so the
/// `null` alternatives schemars adds for `Option` are removed.
fn drop_null(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let Some(Value::Array(types)) = o.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    o.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(any)) = o.get("anyOf") {
                let rest: Vec<Value> = any
                    .iter()
                    .filter(|s| **s != json!({"type": "null"}))
                    .cloned()
                    .collect();
                if rest.len() == 1 && any.len() == 2 {
                    o.remove("anyOf");
                    if let Value::Object(inner) = &rest[0] {
                        for (k, val) in inner {
                            o.entry(k.clone()).or_insert(val.clone());
                        }
                    }
                }
            }
            if o.get("default") == Some(&Value::Null) {
                o.remove("default");
            }
            o.values_mut().for_each(drop_null);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_null),
        _ => {}
    }
}

fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(generate_strict)
}

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR
        .get_or_init(|| jsonschema::validator_for(schema()).expect("the generated schema compiles"))
}

/// A schema finding: where (JSON pointer segments), what, and an optional hint. `key` is set
/// when the finding is about a key rather than a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub at: Vec<String>,
    pub key: bool,
    pub message: String,
    pub hint: Option<String>,
    /// What the value should have been, for a value of the wrong type or form (`an integer`,
    /// `a duration`, `one of: a, b`), so that a value read from a reference can be explained.
    pub expected: Option<String>,
    /// The key a `missing required key` finding is about.
    pub missing: Option<String>,
}

/// Checks one document; findings are in document order of their paths.
pub fn check(doc: &Value) -> Vec<Finding> {
    let mut out = Vec::new();
    for e in validator().iter_errors(doc) {
        let at = pointer_segments(e.instance_path().as_str());
        let found = value_at(doc, &at);
        match e.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let known = known_keys(doc, &at);
                for k in unexpected {
                    let mut key_at = at.clone();
                    key_at.push(k.clone());
                    let hint =
                        crate::model::hint::did_you_mean(k, known.iter().map(String::as_str))
                            .or_else(|| {
                                (!known.is_empty())
                                    .then(|| format!("known keys: {}", known.join(", ")))
                            });
                    out.push(Finding {
                        at: key_at,
                        key: true,
                        message: format!("unknown key `{k}`"),
                        hint,
                        expected: None,
                        missing: None,
                    });
                }
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or_default();
                out.push(Finding {
                    at,
                    key: false,
                    message: format!("missing required key `{name}`"),
                    hint: None,
                    expected: None,
                    missing: Some(name.to_owned()),
                });
            }
            ValidationErrorKind::Type { kind } => {
                let expected = match kind {
                    TypeKind::Single(t) => format!("{t}"),
                    TypeKind::Multiple(set) => format!("{set:?}"),
                };
                let what = found.map_or("nothing", yaml_kind);
                out.push(Finding {
                    at,
                    key: false,
                    message: format!("expected {}, found {what}", article(&expected)),
                    hint: None,
                    expected: Some(article(&expected)),
                    missing: None,
                });
            }
            ValidationErrorKind::Enum { options }
            | ValidationErrorKind::Constant {
                expected_value: options,
            } => {
                let options: Vec<String> = match options.as_ref() {
                    Value::Array(a) => a.iter().map(text).collect(),
                    other => vec![text(other)],
                };
                let shown = found.map(text).unwrap_or_default();
                let hint =
                    crate::model::hint::did_you_mean(&shown, options.iter().map(String::as_str));
                out.push(Finding {
                    at,
                    key: false,
                    message: format!("`{shown}` is not one of: {}", options.join(", ")),
                    hint,
                    expected: Some(format!("one of: {}", options.join(", "))),
                    missing: None,
                });
            }
            ValidationErrorKind::Pattern { pattern } => {
                let shown = found.map(text).unwrap_or_default();
                let message = match pattern.as_str() {
                    spec::DURATION_PATTERN => format!("`{shown}` is not a duration"),
                    spec::SIZE_PATTERN => format!("`{shown}` is not a size"),
                    spec::NAME_PATTERN => format!("`{shown}` is not a DNS label"),
                    spec::RESOURCE_TYPE_PATTERN => {
                        format!("`{shown}` is not a FHIR resource type name")
                    }
                    _ => format!("`{shown}` does not match `{pattern}`"),
                };
                let expected = match pattern.as_str() {
                    spec::DURATION_PATTERN => "a duration".to_owned(),
                    spec::SIZE_PATTERN => "a size".to_owned(),
                    spec::NAME_PATTERN => "a DNS label".to_owned(),
                    spec::RESOURCE_TYPE_PATTERN => "a FHIR resource type name".to_owned(),
                    _ => format!("text matching `{pattern}`"),
                };
                let hint = match pattern.as_str() {
                    spec::DURATION_PATTERN => Some("write a number and a unit: `500ms`, `30s`, `10m`, `1h`, `1d`".into()),
                    spec::SIZE_PATTERN => Some("write bytes, or a number and a unit: `512KiB`, `1MiB`".into()),
                    spec::NAME_PATTERN => {
                        Some("use lower-case letters, digits and `-`, at most 63 characters, starting and ending with a letter or digit".into())
                    }
                    _ => None,
                };
                out.push(Finding {
                    at,
                    key: false,
                    message,
                    hint,
                    expected: Some(expected),
                    missing: None,
                });
            }
            _ => out.push(Finding {
                at,
                key: false,
                message: e.to_string(),
                hint: None,
                expected: None,
                missing: None,
            }),
        }
    }
    // The same finding may come from two schema branches.
    let mut seen = Vec::new();
    out.retain(|f| {
        let key = (f.at.clone(), f.message.clone());
        let fresh = !seen.contains(&key);
        seen.push(key);
        fresh
    });
    out
}

/// The YAML word for the type of a value, for messages about definitions.
pub fn yaml_kind(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
        other => crate::model::fhir::kind(other),
    }
}

fn article(t: &str) -> String {
    match t {
        "object" => "a mapping".into(),
        "array" => "a sequence".into(),
        "integer" => "an integer".into(),
        "string" => "a string".into(),
        "boolean" => "a boolean".into(),
        "number" => "a number".into(),
        other => other.into(),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn value_at<'a>(doc: &'a Value, at: &[String]) -> Option<&'a Value> {
    at.iter().try_fold(doc, |v, s| match v {
        Value::Object(o) => o.get(s),
        Value::Array(a) => s.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// The keys the schema allows in the mapping at `at` (for did-you-mean hints).
pub fn known_keys(doc: &Value, at: &[String]) -> Vec<String> {
    let root = schema();
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    let def = match kind {
        "Connector" => "ConnectorDoc",
        "Source" => "SourceDoc",
        "Sink" => "SinkDoc",
        _ => {
            return vec![
                "apiVersion".into(),
                "kind".into(),
                "metadata".into(),
                "spec".into(),
            ];
        }
    };
    let mut node = &root["$defs"][def];
    for s in at {
        node = deref(root, node);
        node = if let Some(p) = node.get("properties").and_then(|p| p.get(s)) {
            p
        } else if let Some(i) = node.get("items") {
            i
        } else if let Some(a) = node.get("additionalProperties").filter(|a| a.is_object()) {
            a
        } else {
            return Vec::new();
        };
    }
    deref(root, node)
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

fn deref<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        Some(name) => &root["$defs"][name],
        None => node,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_2020_12_and_has_no_null_alternatives() {
        let s = generate();
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
        let text = s.to_string();
        assert!(!text.contains("\"null\""), "explicit nulls are not values");
        let timeout = &s["$defs"]["SourceSpec"]["properties"]["timeout"];
        assert_eq!(timeout["anyOf"][0]["type"], "string");
        assert_eq!(timeout["anyOf"][0]["pattern"], spec::DURATION_PATTERN);
        assert_eq!(timeout["anyOf"][1]["$ref"], "#/$defs/Reference");
        assert!(
            timeout["description"].is_string(),
            "the description stays outside"
        );
        let strict = generate_strict();
        assert_eq!(
            strict["$defs"]["SourceSpec"]["properties"]["timeout"]["type"], "string",
            "documents are checked once resolved, against the plain types"
        );
    }

    #[test]
    fn unknown_keys_get_did_you_mean() {
        let doc = json!({"apiVersion": "fosps.gravitate-health.eu/v1", "kind": "Source",
            "metadata": {"name": "s"}, "spec": {"url": "http://x", "timout": "1s"}});
        let f = check(&doc);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].at, vec!["spec", "timout"]);
        assert_eq!(f[0].message, "unknown key `timout`");
        assert_eq!(f[0].hint.as_deref(), Some("did you mean `timeout`?"));
    }
}
