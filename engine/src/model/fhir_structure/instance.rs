//! A resource instance (the JSON the engine made) checked against the structure of its FHIR
//! version: unknown elements at any depth, cardinality, primitive forms, required codes,
//! choice names, reference targets, required elements and elements a null left half-made.

use serde_json::{Map, Value};

use super::{Element, Elements, LiteralProblem, Structure, check_literal};

/// Most problems reported for one resource (a hostile instance cannot make an endless list).
pub const MAX_PROBLEMS: usize = 50;

/// Deepest nesting followed (FHIR resources are far shallower; `contained` and
/// `Questionnaire.item.item` recurse).
const MAX_DEPTH: usize = 64;

/// One way an instance is not valid for its FHIR version, at its element path
/// (`Composition.subject`, `Patient.name[0].given`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstanceProblem {
    #[error("{path}: not a FHIR resource (no `resourceType`)")]
    NotAResource { path: String },
    #[error("{path}: `{name}` is not a resource type of FHIR {version}")]
    UnknownResourceType {
        path: String,
        name: String,
        version: &'static str,
    },
    #[error("{path}: no such element in FHIR {version}")]
    UnknownElement { path: String, version: &'static str },
    #[error("{path}: `{name}` is not a type `{base}[x]` can take")]
    WrongChoice {
        path: String,
        name: String,
        base: String,
    },
    #[error("{path}: a list where the element takes one value (0..1)")]
    ListForSingle { path: String },
    #[error("{path}: a single value where the element is a list")]
    SingleForList { path: String },
    #[error("{path}: {kind} where a `{type_name}` object is needed")]
    NotAnObject {
        path: String,
        type_name: String,
        kind: &'static str,
    },
    #[error("{problem}")]
    Primitive {
        path: String,
        problem: LiteralProblem,
    },
    #[error("{path}: code `{code}` is not in the required value set {value_set}")]
    CodeOutsideBinding {
        path: String,
        code: String,
        value_set: String,
    },
    #[error("{path}: cannot refer to `{target}` (it may refer to {allowed})")]
    ReferenceTarget {
        path: String,
        target: String,
        allowed: String,
    },
    #[error("{path}: required (min 1) and missing")]
    Missing { path: String },
    #[error(
        "{path}: {extras} items beside the {values} of `{name}`: a list's `_{name}` gives one \
         item (or null) for each of its values, in order"
    )]
    Misaligned {
        path: String,
        name: String,
        values: usize,
        extras: usize,
    },
    #[error(
        "{path}: {} {type_name} without its `{field}` (half made, e.g. by a null)",
        article(type_name)
    )]
    HalfMade {
        path: String,
        type_name: &'static str,
        field: &'static str,
    },
}

impl InstanceProblem {
    /// The FHIRPath-like path of the element at fault.
    pub fn path(&self) -> &str {
        match self {
            InstanceProblem::NotAResource { path }
            | InstanceProblem::UnknownResourceType { path, .. }
            | InstanceProblem::UnknownElement { path, .. }
            | InstanceProblem::WrongChoice { path, .. }
            | InstanceProblem::ListForSingle { path }
            | InstanceProblem::SingleForList { path }
            | InstanceProblem::NotAnObject { path, .. }
            | InstanceProblem::Primitive { path, .. }
            | InstanceProblem::CodeOutsideBinding { path, .. }
            | InstanceProblem::ReferenceTarget { path, .. }
            | InstanceProblem::Missing { path }
            | InstanceProblem::Misaligned { path, .. }
            | InstanceProblem::HalfMade { path, .. } => path,
        }
    }
}

/// `a` or `an` before a type's name (`an Identifier`, `an Extension`).
fn article(type_name: &str) -> &'static str {
    if type_name.starts_with(['A', 'E', 'I', 'O', 'U']) {
        "an"
    } else {
        "a"
    }
}

/// Data types whose value is the point: written without it, they say nothing.
const HALF_MADE: [(&str, &str); 9] = [
    ("Coding", "code"),
    ("Identifier", "value"),
    ("Quantity", "value"),
    ("SimpleQuantity", "value"),
    ("Age", "value"),
    ("Duration", "value"),
    ("Distance", "value"),
    ("Count", "value"),
    ("MoneyQuantity", "value"),
];

impl Structure {
    /// Checks one resource instance; empty when it is valid for this version (as far as the
    /// structure goes: profiles and invariants are not judged). At most [`MAX_PROBLEMS`].
    pub fn check_instance(&self, resource: &Value) -> Vec<InstanceProblem> {
        let mut w = Walk {
            s: self,
            out: Vec::new(),
        };
        w.resource(resource, None, 0);
        w.out.truncate(MAX_PROBLEMS);
        w.out
    }
}

struct Walk<'s> {
    s: &'s Structure,
    out: Vec<InstanceProblem>,
}

impl Walk<'_> {
    fn push(&mut self, p: InstanceProblem) {
        if self.out.len() <= MAX_PROBLEMS {
            self.out.push(p);
        }
    }

    fn full(&self) -> bool {
        self.out.len() > MAX_PROBLEMS
    }

    /// A resource, at the top (`path` None) or nested (`contained[0]`, `entry[0].resource`).
    fn resource(&mut self, v: &Value, path: Option<&str>, depth: usize) {
        let here = path.unwrap_or("Resource").to_owned();
        let Some(obj) = v.as_object() else {
            return self.push(InstanceProblem::NotAnObject {
                path: here,
                type_name: "Resource".into(),
                kind: crate::model::fhir::kind(v),
            });
        };
        let Some(name) = obj.get("resourceType").and_then(Value::as_str) else {
            return self.push(InstanceProblem::NotAResource { path: here });
        };
        let Some(def) = self.s.resource(name) else {
            return self.push(InstanceProblem::UnknownResourceType {
                path: path.map_or_else(|| name.to_owned(), str::to_owned),
                name: name.to_owned(),
                version: self.s.version.name(),
            });
        };
        let prefix = path.map_or_else(|| name.to_owned(), str::to_owned);
        let fields: Map<String, Value> = obj
            .iter()
            .filter(|(k, _)| *k != "resourceType")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.object(&fields, &def.elements, &def.required, &prefix, depth);
    }

    /// The fields of an object against the elements of its type, then its required elements.
    fn object(
        &mut self,
        obj: &Map<String, Value>,
        elements: &Elements,
        required: &[String],
        prefix: &str,
        depth: usize,
    ) {
        if depth > MAX_DEPTH || self.full() {
            return;
        }
        for (name, v) in obj {
            let path = format!("{prefix}.{name}");
            if let Some(base) = name.strip_prefix('_') {
                // `_birthDate`: the id and extensions of a primitive element, checked as an
                // `Element` (a list's nulls keep the places of items without them).
                match elements.get(base).map(|e| (e, self.s.primitive_extras(e))) {
                    Some((_, Some(extras))) => match v {
                        Value::Array(items) if extras.array => {
                            for (i, item) in items.iter().enumerate() {
                                if !item.is_null() {
                                    self.item(item, extras, &format!("{path}[{i}]"), depth + 1);
                                }
                            }
                        }
                        _ => self.value(v, extras, &path, depth),
                    },
                    Some((_, None)) => self.push(InstanceProblem::UnknownElement {
                        path,
                        version: self.s.version.name(),
                    }),
                    None => self.unknown(base, elements, &format!("{prefix}.{base}")),
                }
                continue;
            }
            match elements.get(name) {
                Some(e) if !e.choices.is_empty() => self.push(InstanceProblem::WrongChoice {
                    path,
                    name: name.clone(),
                    base: name.clone(),
                }),
                Some(e) => self.value(v, e, &path, depth),
                None => self.unknown(name, elements, &path),
            }
        }
        // `given` and `_given`: the same length, each id or extension at its value's place
        // (nulls left out of `_given` would move them onto other values).
        for (name, v) in obj {
            if let (Some(base), Value::Array(extras)) = (name.strip_prefix('_'), v)
                && let Some(Value::Array(values)) = obj.get(base)
                && values.len() != extras.len()
            {
                self.push(InstanceProblem::Misaligned {
                    path: format!("{prefix}.{name}"),
                    name: base.to_owned(),
                    values: values.len(),
                    extras: extras.len(),
                });
            }
        }
        for r in required {
            let present = obj.iter().any(|(k, _)| {
                k == r
                    || elements
                        .get(k)
                        .is_some_and(|e| e.choice_of.as_deref() == Some(r.as_str()))
            });
            if !present {
                self.push(InstanceProblem::Missing {
                    path: format!("{prefix}.{r}"),
                });
            }
        }
    }

    fn unknown(&mut self, name: &str, elements: &Elements, path: &str) {
        let choice = elements.iter().find(|(base, e)| {
            !e.choices.is_empty()
                && name.len() > base.len()
                && name.starts_with(base.as_str())
                && name[base.len()..].starts_with(|c: char| c.is_ascii_uppercase())
        });
        self.push(match choice {
            Some((base, _)) => InstanceProblem::WrongChoice {
                path: path.to_owned(),
                name: name.to_owned(),
                base: base.clone(),
            },
            None => InstanceProblem::UnknownElement {
                path: path.to_owned(),
                version: self.s.version.name(),
            },
        });
    }

    /// A value for an element: its cardinality, then each item.
    fn value(&mut self, v: &Value, e: &Element, path: &str, depth: usize) {
        match (v, e.array) {
            (Value::Array(items), true) => {
                for (i, item) in items.iter().enumerate() {
                    self.item(item, e, &format!("{path}[{i}]"), depth + 1);
                }
            }
            (Value::Array(_), false) => self.push(InstanceProblem::ListForSingle {
                path: path.to_owned(),
            }),
            (_, true) => self.push(InstanceProblem::SingleForList {
                path: path.to_owned(),
            }),
            (_, false) => self.item(v, e, path, depth + 1),
        }
    }

    fn item(&mut self, v: &Value, e: &Element, path: &str, depth: usize) {
        if depth > MAX_DEPTH || self.full() {
            return;
        }
        let type_name = e.type_name.as_deref().unwrap_or("BackboneElement");
        if type_name == "Resource" {
            return self.resource(v, Some(path), depth + 1);
        }
        if self.s.is_primitive(type_name) {
            if let Err(problem) = check_literal(path, type_name, v) {
                return self.push(InstanceProblem::Primitive {
                    path: path.to_owned(),
                    problem,
                });
            }
            if type_name == "code"
                && let (Some(b), Some(code)) = (&e.binding, v.as_str())
                && b.required
                && let Some(codes) = self.s.codes(&b.value_set)
                && !codes.iter().any(|c| c == code)
            {
                self.push(InstanceProblem::CodeOutsideBinding {
                    path: path.to_owned(),
                    code: code.to_owned(),
                    value_set: b.value_set.clone(),
                });
            }
            return;
        }
        let Some(obj) = v.as_object() else {
            return self.push(InstanceProblem::NotAnObject {
                path: path.to_owned(),
                type_name: type_name.to_owned(),
                kind: crate::model::fhir::kind(v),
            });
        };
        if type_name == "Reference"
            && let Some(r) = obj.get("reference").and_then(Value::as_str)
            && let Some((t, _)) = r.split_once('/')
            && !t.contains(':')
            && !r.starts_with('#')
        {
            self.target(t, e, path);
        }
        if let Some((_, field)) = HALF_MADE.iter().find(|(t, _)| *t == type_name)
            && !obj.contains_key(*field)
        {
            self.push(InstanceProblem::HalfMade {
                path: path.to_owned(),
                type_name: HALF_MADE
                    .iter()
                    .find(|(t, _)| *t == type_name)
                    .map_or("element", |(t, _)| t),
                field,
            });
        }
        // An extension says nothing without a value or extensions of its own (ext-1): the
        // one a null left with its `url` alone is half made.
        if type_name == "Extension"
            && !obj
                .keys()
                .any(|k| k == "extension" || k.starts_with("value"))
        {
            self.push(InstanceProblem::HalfMade {
                path: path.to_owned(),
                type_name: "Extension",
                field: "value[x]",
            });
        }
        if let Some(b) = e.binding.as_ref().filter(|b| b.required) {
            self.coded(obj, type_name, &b.value_set, path);
        }
        if let Some((elements, required)) = self.s.children(e) {
            self.object(obj, elements, required, path, depth);
        }
    }

    /// A `Coding` or `CodeableConcept` bound `required` to a value set the packs hold: the
    /// Coding's code (of its system, when it gives one) must be in it; a CodeableConcept with
    /// codings needs one of them in it (the others may translate it).
    fn coded(&mut self, obj: &Map<String, Value>, type_name: &str, value_set: &str, path: &str) {
        let s = self.s;
        let in_set = |c: &'_ Map<String, Value>| -> Option<(String, bool)> {
            let code = c.get("code").and_then(Value::as_str)?;
            let system = c.get("system").and_then(Value::as_str);
            Some((code.to_owned(), s.has_code(value_set, system, code)?))
        };
        let outside = match type_name {
            "Coding" => in_set(obj)
                .filter(|(_, ok)| !ok)
                .map(|(code, _)| (format!("{path}.code"), code)),
            "CodeableConcept" => {
                let codings: Vec<(String, bool)> = obj
                    .get("coding")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|c| in_set(c.as_object()?))
                    .collect();
                match codings.first() {
                    Some((code, _)) if codings.iter().all(|(_, ok)| !ok) => {
                        Some((format!("{path}.coding[0].code"), code.clone()))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some((path, code)) = outside {
            self.push(InstanceProblem::CodeOutsideBinding {
                path,
                code,
                value_set: value_set.to_owned(),
            });
        }
    }

    fn target(&mut self, t: &str, e: &Element, path: &str) {
        if self.s.resource(t).is_none() {
            return self.push(InstanceProblem::UnknownResourceType {
                path: format!("{path}.reference"),
                name: t.to_owned(),
                version: self.s.version.name(),
            });
        }
        if e.refers.is_empty() || e.refers.iter().any(|r| r == t || r == "Resource") {
            return;
        }
        self.push(InstanceProblem::ReferenceTarget {
            path: format!("{path}.reference"),
            target: t.to_owned(),
            allowed: format!("`{}`", e.refers.join("`, `")),
        });
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::fhir_structure::structure;
    use crate::model::vocabulary::FhirVersion;

    fn check(v: FhirVersion, r: Value) -> Vec<String> {
        structure(v)
            .expect("structure")
            .check_instance(&r)
            .iter()
            .map(|p| p.path().to_owned())
            .collect()
    }

    #[test]
    fn a_valid_resource_has_no_problem_in_r4_and_r5() {
        let obs = json!({
            "resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}], "text": "x"},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-02-29T10:00:00Z",
            "valueQuantity": {"value": 3.5, "unit": "mg"},
            "_status": {"extension": []},
            "component": [{"code": {"text": "c"}, "valueString": "s"}]
        });
        for v in [FhirVersion::R4, FhirVersion::R5] {
            assert_eq!(check(v, obs.clone()), Vec::<String>::new(), "{v:?}");
        }
    }

    #[test]
    fn each_problem_names_its_element_r4() {
        let r = json!({
            "resourceType": "Composition",
            "status": "done",
            "type": {"coding": [{"system": "http://loinc.org", "display": "no code"}]},
            "subject": [{"reference": "Patient/p1"}],
            "date": "2024-02-30",
            "author": {"reference": "Patient/p1"},
            "title": "t",
            "confidentiality": "N",
            "section": [{"title": 3, "colour": "red", "entry": [{"reference": "Nothing/1"}]}],
            "identifier": {"system": "urn:x"}
        });
        let got = check(FhirVersion::R4, r);
        assert_eq!(
            got,
            vec![
                "Composition.status",
                "Composition.type.coding[0]",
                "Composition.subject",
                "Composition.date",
                "Composition.author",
                "Composition.section[0].title",
                "Composition.section[0].colour",
                "Composition.section[0].entry[0].reference",
                "Composition.identifier",
            ]
        );
    }

    #[test]
    fn r5_rules_differ_from_r4() {
        // R5 made `DocumentReference.date` an instant and removed `Observation.valueQuantity`'s
        // nothing; `Ingredient` exists only in R5.
        let doc = json!({"resourceType": "DocumentReference", "status": "current",
            "date": "2024-01-01", "content": [{"attachment": {"url": "http://x"}}]});
        assert_eq!(
            check(FhirVersion::R5, doc.clone()),
            vec!["DocumentReference.date"]
        );
        let ing = json!({"resourceType": "Ingredient", "status": "active",
            "role": {"text": "r"}, "substance": {"code": {"concept": {"text": "s"}}}});
        assert_eq!(check(FhirVersion::R5, ing.clone()), Vec::<String>::new());
        assert_eq!(check(FhirVersion::R4, ing), vec!["Ingredient"]);
        let wrong = json!({"resourceType": "Observation", "status": "final", "code": {"text": "c"},
            "valueBool": true, "encounter": {"reference": "Medication/m"},
            "valueQuantity": {"unit": "mg"}, "subject": {"identifier": {"system": "urn:s"}}});
        let problems = structure(FhirVersion::R5)
            .expect("R5")
            .check_instance(&wrong);
        assert!(problems.iter().any(|p| matches!(p,
            InstanceProblem::WrongChoice { path, .. } if path == "Observation.valueBool")));
        assert!(problems.iter().any(|p| matches!(p,
            InstanceProblem::ReferenceTarget { path, .. } if path == "Observation.encounter.reference")));
        assert!(problems.iter().any(|p| matches!(p,
            InstanceProblem::HalfMade { path, field: "value", .. } if path == "Observation.valueQuantity")));
        assert!(problems.iter().any(|p| matches!(p,
            InstanceProblem::HalfMade { path, .. } if path == "Observation.subject.identifier")));
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn codings_are_checked_against_required_bindings_not_extensible_ones() {
        let clinical = "http://terminology.hl7.org/CodeSystem/condition-clinical";
        let condition = |coding: Value| {
            json!({"resourceType": "Condition", "subject": {"reference": "Patient/p"},
                "clinicalStatus": {"coding": coding},
                // `Condition.code` is bound `example`; `severity` `preferred`.
                "code": {"coding": [{"system": "urn:x", "code": "anything"}]},
                "severity": {"coding": [{"system": "urn:x", "code": "huge"}]}})
        };
        // R4: `Condition.clinicalStatus` is a CodeableConcept bound `required`.
        let ok = condition(json!([{"system": clinical, "code": "active"}]));
        assert_eq!(check(FhirVersion::R4, ok), Vec::<String>::new());
        // A local coding beside one from the value set is a translation, not a fault.
        let translated = condition(json!([{"system": "urn:local", "code": "A"},
            {"system": clinical, "code": "resolved"}]));
        assert_eq!(check(FhirVersion::R4, translated), Vec::<String>::new());
        let outside = condition(json!([{"system": clinical, "code": "cured"}]));
        assert_eq!(
            check(FhirVersion::R4, outside),
            vec!["Condition.clinicalStatus.coding[0].code"]
        );
        // The right code in the wrong system is outside too.
        let wrong_system =
            condition(json!([{"system": "http://snomed.info/sct", "code": "active"}]));
        assert_eq!(
            check(FhirVersion::R4, wrong_system),
            vec!["Condition.clinicalStatus.coding[0].code"]
        );
        // R5: a Coding bound `required`, deep inside backbone elements.
        let appointment = |day: &str| {
            json!({"resourceType": "Appointment", "status": "proposed",
                "participant": [{"status": "accepted", "actor": {"reference": "Patient/p"}}],
                "recurrenceTemplate": [{"recurrenceType": {"text": "monthly"},
                    "monthlyTemplate": {"monthInterval": 1,
                        "dayOfWeek": {"system": "http://hl7.org/fhir/days-of-week", "code": day}}}]})
        };
        assert_eq!(
            check(FhirVersion::R5, appointment("mon")),
            Vec::<String>::new()
        );
        assert_eq!(
            check(FhirVersion::R5, appointment("monday")),
            vec!["Appointment.recurrenceTemplate[0].monthlyTemplate.dayOfWeek.code"]
        );
    }

    #[test]
    fn a_concept_of_many_codings_is_judged_once() {
        // 100,000 codings, none in the value set: one problem, not one per coding.
        let codings: Vec<Value> = (0..100_000)
            .map(|i| json!({"system": "urn:x", "code": format!("c{i}")}))
            .collect();
        let r = json!({"resourceType": "Condition", "subject": {"reference": "Patient/p"},
            "clinicalStatus": {"coding": codings}});
        assert_eq!(
            check(FhirVersion::R4, r),
            vec!["Condition.clinicalStatus.coding[0].code"]
        );
    }

    #[test]
    fn hostile_instances_are_bounded() {
        let many: serde_json::Map<String, Value> =
            (0..10_000).map(|i| (format!("x{i}"), json!(1))).collect();
        let mut r = Value::Object(many);
        r["resourceType"] = json!("Patient");
        assert_eq!(
            structure(FhirVersion::R4)
                .expect("R4")
                .check_instance(&r)
                .len(),
            MAX_PROBLEMS
        );
        let mut deep = json!({"resourceType": "Patient"});
        for _ in 0..500 {
            deep = json!({"resourceType": "Patient", "contained": [deep]});
        }
        let problems = structure(FhirVersion::R4)
            .expect("R4")
            .check_instance(&deep);
        assert!(problems.len() <= MAX_PROBLEMS);
        assert_eq!(check(FhirVersion::R4, json!([1])), vec!["Resource"]);
    }
}
