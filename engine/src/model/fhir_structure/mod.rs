//! The FHIR structure of R4, R4B and R5 inside the binary: resources and data types with their
//! elements (types, cardinality, choice types, reference targets, bindings) and the codes of
//! the value sets they bind, decoded once per version from the packs in `engine/data/fhir/`.

pub mod instance;
mod primitive;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::LazyLock;

use serde::Deserialize;

pub use self::primitive::{LiteralProblem, check_literal};
use crate::model::vocabulary::FhirVersion;

/// Why the embedded structure of a version could not be decoded (a broken build, never input).
#[derive(Debug, thiserror::Error)]
pub enum StructureError {
    #[error("the embedded FHIR {version} structure data is not gzip: {source}")]
    Gzip {
        version: &'static str,
        source: std::io::Error,
    },
    #[error("the embedded FHIR {version} structure data is not what was expected: {source}")]
    Json {
        version: &'static str,
        source: serde_json::Error,
    },
}

/// What a type is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeKind {
    Primitive,
    Complex,
    Resource,
    Logical,
}

/// A resource or data type of one FHIR version.
#[derive(Debug)]
pub struct TypeDef {
    pub name: String,
    pub kind: TypeKind,
    /// Abstract types (`Resource`, `DomainResource`, ...) are never written themselves.
    pub is_abstract: bool,
    pub elements: Elements,
    /// Elements with a minimum cardinality of 1.
    pub required: Vec<String>,
}

/// Elements by name, as they appear in JSON (choice elements once per type, `valueString`,
/// and once by their base name, `value[x]` as `value`, listing the choices).
pub type Elements = BTreeMap<String, Element>;

/// One element of a type or of a backbone element.
#[derive(Debug, Default)]
pub struct Element {
    /// The type, e.g. `CodeableConcept`, `boolean`, `BackboneElement`; `None` for the base
    /// name of a choice and for an element that reuses another's definition.
    pub type_name: Option<String>,
    pub array: bool,
    /// For `valueString`: `value`.
    pub choice_of: Option<String>,
    /// For `value`: `valueString`, `valueQuantity`, ...
    pub choices: Vec<String>,
    pub binding: Option<Binding>,
    /// Resource types a `Reference` may point to (empty: any).
    pub refers: Vec<String>,
    /// The children of a backbone element, written inline.
    pub elements: Option<Elements>,
    /// Required children of a backbone element.
    pub required: Vec<String>,
    /// The element whose definition this one reuses (`Questionnaire.item.item`).
    pub element_reference: Option<Vec<String>>,
}

/// A binding of a coded element to a value set.
#[derive(Debug)]
pub struct Binding {
    /// The value set's canonical URL, without its `|version`.
    pub value_set: String,
    pub required: bool,
}

/// The structure of one FHIR version.
#[derive(Debug)]
pub struct Structure {
    pub version: FhirVersion,
    types: HashMap<String, TypeDef>,
    value_sets: HashMap<String, ValueSet>,
    /// What `_birthDate` (`_given`) holds, the id and extensions of a primitive element: an
    /// element of type `Element`, taking one value (0) or a list (1) as its primitive does.
    primitive_extras: [Element; 2],
}

/// The codes of one value set, with the systems of each.
#[derive(Debug)]
struct ValueSet {
    codes: Vec<String>,
    /// Each code's systems (a code may be in the set in several), for lookups in constant
    /// time whatever the size of the set or of the instance.
    systems: HashMap<String, Vec<String>>,
}

const R4: (&[u8], &[u8]) = (
    include_bytes!("../../../data/fhir/fhir_schemas_r4.json.gz"),
    include_bytes!("../../../data/fhir/terminology_r4.json.gz"),
);
const R4B: (&[u8], &[u8]) = (
    include_bytes!("../../../data/fhir/fhir_schemas_r4b.json.gz"),
    include_bytes!("../../../data/fhir/terminology_r4b.json.gz"),
);
const R5: (&[u8], &[u8]) = (
    include_bytes!("../../../data/fhir/fhir_schemas_r5.json.gz"),
    include_bytes!("../../../data/fhir/terminology_r5.json.gz"),
);

type Loaded = Result<Structure, StructureError>;

static STRUCTURE_R4: LazyLock<Loaded> = LazyLock::new(|| decode(FhirVersion::R4, R4));
static STRUCTURE_R4B: LazyLock<Loaded> = LazyLock::new(|| decode(FhirVersion::R4B, R4B));
static STRUCTURE_R5: LazyLock<Loaded> = LazyLock::new(|| decode(FhirVersion::R5, R5));

/// The structure of a FHIR version, decoded on first use.
pub fn structure(version: FhirVersion) -> Result<&'static Structure, &'static StructureError> {
    match version {
        FhirVersion::R4 => &*STRUCTURE_R4,
        FhirVersion::R4B => &*STRUCTURE_R4B,
        FhirVersion::R5 => &*STRUCTURE_R5,
    }
    .as_ref()
}

impl Structure {
    /// A type by name (`Patient`, `CodeableConcept`, `boolean`).
    pub fn type_def(&self, name: &str) -> Option<&TypeDef> {
        self.types.get(name)
    }

    /// A concrete resource type by name.
    pub fn resource(&self, name: &str) -> Option<&TypeDef> {
        self.types
            .get(name)
            .filter(|t| t.kind == TypeKind::Resource && !t.is_abstract)
    }

    /// The names of every concrete resource type.
    pub fn resource_names(&self) -> impl Iterator<Item = &str> {
        self.types
            .values()
            .filter(|t| t.kind == TypeKind::Resource && !t.is_abstract)
            .map(|t| t.name.as_str())
    }

    /// True when `name` is a primitive type (`boolean`, `date`, `code`, ...).
    pub fn is_primitive(&self, name: &str) -> bool {
        self.types
            .get(name)
            .is_some_and(|t| t.kind == TypeKind::Primitive)
    }

    /// The children of an element: written inline (backbone), reused from another element,
    /// or those of its data type. `None` for a primitive or an unknown type.
    pub fn children<'a>(&'a self, element: &'a Element) -> Option<(&'a Elements, &'a [String])> {
        if let Some(els) = &element.elements {
            return Some((els, &element.required));
        }
        if let Some(path) = &element.element_reference {
            return self.referenced(path);
        }
        let t = self.types.get(element.type_name.as_deref()?)?;
        (t.kind != TypeKind::Primitive).then_some((&t.elements, &t.required[..]))
    }

    /// The element `_name` stands for beside a primitive element `name` (`_birthDate` beside
    /// `birthDate`): its id and extensions, one or a list as the primitive. `None` when
    /// `element` is not of a primitive type (`_name` beside a `HumanName` is no element).
    pub fn primitive_extras(&self, element: &Element) -> Option<&Element> {
        let primitive = element
            .type_name
            .as_deref()
            .is_some_and(|t| self.is_primitive(t));
        primitive.then(|| &self.primitive_extras[usize::from(element.array)])
    }

    /// The element an `elementReference` names: `[Type, "elements", name, "elements", ...]`.
    fn referenced(&self, path: &[String]) -> Option<(&Elements, &[String])> {
        let (first, rest) = path.split_first()?;
        let t = self.types.get(first)?;
        let mut elements = &t.elements;
        let mut required: &[String] = &t.required;
        for pair in rest.chunks(2) {
            let [key, name] = pair else { return None };
            if key != "elements" {
                return None;
            }
            let e = elements.get(name)?;
            required = &e.required;
            elements = e.elements.as_ref()?;
        }
        Some((elements, required))
    }

    /// The codes of a value set (any system), when the packs hold it.
    pub fn codes(&self, value_set: &str) -> Option<&[String]> {
        self.value_sets.get(value_set).map(|v| v.codes.as_slice())
    }

    /// Whether `code` of `system` (any system when `None`) is in a value set; `None` when the
    /// packs do not hold the value set.
    pub fn has_code(&self, value_set: &str, system: Option<&str>, code: &str) -> Option<bool> {
        let vs = self.value_sets.get(value_set)?;
        Some(
            vs.systems
                .get(code)
                .is_some_and(|systems| system.is_none_or(|want| systems.iter().any(|s| s == want))),
        )
    }

    /// Whether a value set holds any code of `system`.
    pub fn has_system(&self, value_set: &str, system: &str) -> bool {
        self.value_sets
            .get(value_set)
            .is_some_and(|vs| vs.systems.values().flatten().any(|s| s == system))
    }

    /// The systems a value set gives `code` in (empty when the code is not in it).
    pub fn systems_of<'a>(&'a self, value_set: &str, code: &'a str) -> Vec<&'a str> {
        self.value_sets
            .get(value_set)
            .and_then(|vs| vs.systems.get(code))
            .map_or_else(Vec::new, |s| s.iter().map(String::as_str).collect())
    }
}

impl FhirVersion {
    /// The version's name as definitions write it.
    pub fn name(self) -> &'static str {
        match self {
            FhirVersion::R4 => "R4",
            FhirVersion::R4B => "R4B",
            FhirVersion::R5 => "R5",
        }
    }
}

#[derive(Deserialize)]
struct RawType {
    name: String,
    kind: String,
    #[serde(default)]
    derivation: Option<String>,
    #[serde(default, rename = "abstract")]
    is_abstract: Option<bool>,
    #[serde(default)]
    elements: BTreeMap<String, RawElement>,
    #[serde(default)]
    required: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawElement {
    #[serde(default, rename = "type")]
    type_name: Option<String>,
    #[serde(default)]
    array: bool,
    #[serde(default)]
    choice_of: Option<String>,
    #[serde(default)]
    choices: Vec<String>,
    #[serde(default)]
    binding: Option<RawBinding>,
    #[serde(default)]
    refers: Vec<String>,
    #[serde(default)]
    elements: Option<BTreeMap<String, RawElement>>,
    #[serde(default)]
    required: Vec<String>,
    #[serde(default)]
    element_reference: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawBinding {
    #[serde(default, rename = "valueSet")]
    value_set: Option<String>,
    #[serde(default)]
    strength: Option<String>,
}

/// Abstract types the packs do not mark.
const ABSTRACT: [&str; 5] = [
    "Resource",
    "DomainResource",
    "CanonicalResource",
    "MetadataResource",
    "Base",
];

fn gunzip(version: &'static str, bytes: &[u8]) -> Result<Vec<u8>, StructureError> {
    let mut out = Vec::with_capacity(bytes.len() * 12);
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|source| StructureError::Gzip { version, source })?;
    Ok(out)
}

fn decode(version: FhirVersion, (schemas, terminology): (&[u8], &[u8])) -> Loaded {
    let name = version.name();
    let json = |source| StructureError::Json {
        version: name,
        source,
    };
    let raw: Vec<RawType> = serde_json::from_slice(&gunzip(name, schemas)?).map_err(json)?;
    let types = raw
        .into_iter()
        // Base definitions only: profiles and extension definitions constrain these.
        .filter(|t| t.derivation.as_deref() != Some("constraint") && t.kind != "extension")
        .map(|t| {
            let kind = match t.kind.as_str() {
                "primitive-type" => TypeKind::Primitive,
                "resource" => TypeKind::Resource,
                "logical" => TypeKind::Logical,
                _ => TypeKind::Complex,
            };
            let mut elements = elements(t.elements);
            // A resource's logical id is typed `string` in the packs (FHIRPath's System.String,
            // its pattern in an extension they leave out), but it is FHIR's `id`: 1 to 64
            // letters, digits, `-` and `.`.
            if kind == TypeKind::Resource
                && let Some(id) = elements.get_mut("id")
                && id.type_name.as_deref() == Some("string")
            {
                id.type_name = Some("id".to_owned());
            }
            let def = TypeDef {
                is_abstract: t.is_abstract.unwrap_or(false) || ABSTRACT.contains(&t.name.as_str()),
                name: t.name.clone(),
                kind,
                elements,
                required: t.required,
            };
            (t.name, def)
        })
        .collect();
    let sets: Vec<(String, Vec<(String, String)>)> =
        serde_json::from_slice(&gunzip(name, terminology)?).map_err(json)?;
    let value_sets = sets
        .into_iter()
        .map(|(url, coded)| {
            let codes = coded.iter().map(|(_, code)| code.clone()).collect();
            let mut systems: HashMap<String, Vec<String>> = HashMap::new();
            for (system, code) in coded {
                systems.entry(code).or_default().push(system);
            }
            (url, ValueSet { codes, systems })
        })
        .collect();
    let extras = |array| Element {
        type_name: Some("Element".to_owned()),
        array,
        ..Element::default()
    };
    Ok(Structure {
        version,
        types,
        value_sets,
        primitive_extras: [extras(false), extras(true)],
    })
}

fn elements(raw: BTreeMap<String, RawElement>) -> Elements {
    raw.into_iter()
        .map(|(name, e)| {
            let binding = e.binding.and_then(|b| {
                let url = b.value_set?;
                Some(Binding {
                    value_set: url.split('|').next().unwrap_or_default().to_owned(),
                    required: b.strength.as_deref() == Some("required"),
                })
            });
            let element = Element {
                type_name: e.type_name,
                array: e.array,
                choice_of: e.choice_of,
                choices: e.choices,
                binding,
                refers: e
                    .refers
                    .iter()
                    .map(|u| u.rsplit('/').next().unwrap_or(u).to_owned())
                    .collect(),
                elements: e.elements.map(elements),
                required: e.required,
                element_reference: e.element_reference,
            };
            (name, element)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(v: FhirVersion) -> &'static Structure {
        structure(v).expect("embedded structure decodes")
    }

    #[test]
    fn every_version_decodes_with_its_resources_and_data_types() {
        for v in [FhirVersion::R4, FhirVersion::R4B, FhirVersion::R5] {
            let s = get(v);
            assert!(s.resource("Patient").is_some(), "{v:?} Patient");
            assert!(s.resource("DomainResource").is_none(), "{v:?} abstract");
            assert!(s.is_primitive("boolean"));
            let coding = s.type_def("Coding").expect("Coding");
            assert!(coding.elements.contains_key("system"));
        }
        // R5 added resources R4 never had, and removed some.
        assert!(get(FhirVersion::R4).resource("Ingredient").is_none());
        assert!(get(FhirVersion::R5).resource("Ingredient").is_some());
        assert!(get(FhirVersion::R4).resource("MedicinalProduct").is_some());
        assert!(get(FhirVersion::R5).resource("MedicinalProduct").is_none());
    }

    #[test]
    fn elements_carry_cardinality_choices_references_and_bindings() {
        let s = get(FhirVersion::R4);
        let obs = s.resource("Observation").expect("Observation");
        assert!(obs.required.contains(&"status".to_owned()));
        let subject = &obs.elements["subject"];
        assert!(!subject.array);
        assert!(subject.refers.contains(&"Patient".to_owned()));
        assert!(!subject.refers.contains(&"Medication".to_owned()));
        assert!(
            obs.elements["value"]
                .choices
                .contains(&"valueQuantity".to_owned())
        );
        let status = obs.elements["status"].binding.as_ref().expect("binding");
        assert!(status.required);
        let codes = s.codes(&status.value_set).expect("codes");
        assert!(codes.contains(&"final".to_owned()));
        assert!(obs.elements["identifier"].array);
        // Backbone elements inline, and elements that reuse another's definition.
        let (component, _) = s.children(&obs.elements["component"]).expect("backbone");
        assert!(component.contains_key("code"));
        let q = s.resource("Questionnaire").expect("Questionnaire");
        let (item, _) = s.children(&q.elements["item"]).expect("item");
        let (nested, _) = s.children(&item["item"]).expect("item.item");
        assert!(nested.contains_key("linkId"));
    }
}
