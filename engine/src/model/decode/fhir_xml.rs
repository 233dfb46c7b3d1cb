//! FHIR XML read as the FHIR JSON of the same resource, by the structure of its FHIR version
//! (`model::fhir_structure`): the root element's name is the `resourceType`; an element that
//! may repeat is an array, one that may not is a value; a primitive's `value` attribute gives
//! its JSON type (booleans, integers and decimals as JSON numbers and booleans, the rest as
//! strings); a primitive's `id` and `extension` go to `_name` (arrays kept aligned with
//! `null`); `div` is kept as its XHTML text; `contained`, `Bundle.entry.resource` and every
//! other element of type `Resource` hold the resource inside them. Unknown elements are
//! errors with their line, as are DOCTYPE entity declarations (nothing is expanded).

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;
use serde_json::{Map, Value};

use super::format::{DecodeError, Limits, MAX_DEPTH, TextEncoding};
use super::text::{Budget, text, xml_error};
use crate::model::fhir_structure::{self, Elements, Structure};
use crate::model::vocabulary::FhirVersion;

const FHIR_NS: &[u8] = b"http://hl7.org/fhir";

/// An element being read.
enum Frame<'s> {
    /// A resource, data type or backbone element: its fields, by the elements of its type.
    Object {
        name: String,
        array: bool,
        obj: Map<String, Value>,
        elements: &'s Elements,
        resource: bool,
    },
    /// A primitive: its value and its `id` and extensions.
    Primitive {
        name: String,
        array: bool,
        type_name: &'s str,
        value: Option<Value>,
        ext: Map<String, Value>,
    },
    /// An element of type `Resource`: holds one resource.
    Slot {
        name: String,
        array: bool,
        resource: Option<Value>,
    },
}

/// Decodes one FHIR XML resource into FHIR JSON.
pub(super) fn decode(
    version: FhirVersion,
    bytes: &[u8],
    limits: Limits,
) -> Result<Value, DecodeError> {
    let structure = fhir_structure::structure(version).map_err(|e| DecodeError::Xml {
        line: 1,
        column: 1,
        message: e.to_string(),
    })?;
    let text = text(bytes, TextEncoding::default())?;
    let src = text.as_bytes();
    let mut reader = NsReader::from_str(&text);
    let mut budget = Budget::new(limits);
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut result = None;
    let err_at = |offset: u64, message: String| xml_error(src, offset, message);
    loop {
        let before = reader.buffer_position();
        let (ns, event) = reader
            .read_resolved_event()
            .map(|(ns, e)| (matches!(ns, ResolveResult::Bound(n) if n.0 == FHIR_NS), e))
            .map_err(|e| err_at(reader.error_position(), e.to_string()))?;
        let at = |message: String| err_at(before, message);
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                if stack.len() >= MAX_DEPTH {
                    return Err(at(format!("elements nested deeper than {MAX_DEPTH}")));
                }
                budget.take(2)?;
                let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                let opened = match stack.last() {
                    None | Some(Frame::Slot { .. }) => {
                        if !ns {
                            return Err(at(format!(
                                "<{local}> is not in the FHIR namespace `http://hl7.org/fhir`"
                            )));
                        }
                        if let Some(Frame::Slot {
                            resource: Some(_), ..
                        }) = stack.last()
                        {
                            return Err(at(format!(
                                "a second resource, <{local}>, where one is allowed"
                            )));
                        }
                        resource(structure, &local, version).map_err(at)?
                    }
                    // Every element but the XHTML `div` is in the FHIR namespace.
                    Some(Frame::Primitive { .. }) | Some(Frame::Object { .. })
                        if !ns && local != "div" =>
                    {
                        return Err(at(format!(
                            "<{local}> is not in the FHIR namespace `http://hl7.org/fhir`"
                        )));
                    }
                    Some(Frame::Primitive { name, .. }) => {
                        if local != "extension" {
                            return Err(at(format!(
                                "<{local}> inside the primitive <{name}>, which holds only `extension`"
                            )));
                        }
                        let ext = structure
                            .type_def("Extension")
                            .ok_or_else(|| at("no Extension type".into()))?;
                        Frame::Object {
                            name: local,
                            array: true,
                            obj: Map::new(),
                            elements: &ext.elements,
                            resource: false,
                        }
                    }
                    Some(Frame::Object {
                        elements,
                        name: parent,
                        ..
                    }) => {
                        let Some(element) = elements.get(&local) else {
                            return Err(at(format!("<{local}> is not an element of <{parent}>")));
                        };
                        let type_name = element.type_name.as_deref().unwrap_or("");
                        if type_name == "xhtml" {
                            let outer = if empty {
                                text[before as usize..reader.buffer_position() as usize].to_owned()
                            } else {
                                reader
                                    .read_to_end(e.name())
                                    .map_err(|e| err_at(reader.error_position(), e.to_string()))?;
                                text[before as usize..reader.buffer_position() as usize].to_owned()
                            };
                            insert(
                                stack.last_mut(),
                                &local,
                                element.array,
                                Value::String(outer),
                            )
                            .map_err(at)?;
                            continue;
                        }
                        if type_name == "Resource" {
                            Frame::Slot {
                                name: local,
                                array: element.array,
                                resource: None,
                            }
                        } else if structure.is_primitive(type_name) {
                            Frame::Primitive {
                                name: local,
                                array: element.array,
                                type_name,
                                value: None,
                                ext: Map::new(),
                            }
                        } else {
                            let Some((children, _)) = structure.children(element) else {
                                return Err(at(format!("<{local}> has no known type")));
                            };
                            Frame::Object {
                                name: local,
                                array: element.array,
                                obj: Map::new(),
                                elements: children,
                                resource: false,
                            }
                        }
                    }
                };
                let opened = attributes(opened, e, &mut budget).map_err(at)?;
                stack.push(opened);
                if empty {
                    close(&mut stack, &mut result).map_err(at)?;
                }
            }
            Event::End(_) => close(&mut stack, &mut result).map_err(at)?,
            Event::Text(t) => {
                if !AsRef::<[u8]>::as_ref(&*t)
                    .iter()
                    .all(u8::is_ascii_whitespace)
                {
                    return Err(at(
                        "text where FHIR XML has only elements and `value` attributes".into(),
                    ));
                }
            }
            Event::GeneralRef(_) | Event::CData(_) => {
                return Err(at(
                    "text where FHIR XML has only elements and `value` attributes".into(),
                ));
            }
            Event::DocType(_) => {
                return Err(at(
                    "a DOCTYPE is refused in FHIR XML (entities are never expanded)".into(),
                ));
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(err_at(
            reader.buffer_position(),
            "the document ends inside an element".into(),
        ));
    }
    result.ok_or_else(|| err_at(0, "no resource".into()))
}

/// The frame of a resource element `<Patient>`.
fn resource<'s>(
    structure: &'s Structure,
    name: &str,
    version: FhirVersion,
) -> Result<Frame<'s>, String> {
    let def = structure
        .resource(name)
        .ok_or_else(|| format!("<{name}> is not a FHIR {} resource type", version.name()))?;
    let mut obj = Map::new();
    obj.insert("resourceType".into(), Value::String(name.to_owned()));
    Ok(Frame::Object {
        name: name.to_owned(),
        array: false,
        obj,
        elements: &def.elements,
        resource: true,
    })
}

/// Reads the attributes of an element into its frame: `value` and `id` of a primitive, `id`
/// and `url` of other elements. Any other attribute without a prefix is an error (a misspelt
/// `valu` would otherwise drop the value unseen); prefixed ones (`xsi:schemaLocation`) are
/// left out.
fn attributes<'s>(
    mut frame: Frame<'s>,
    e: &BytesStart<'_>,
    budget: &mut Budget,
) -> Result<Frame<'s>, String> {
    for a in e.attributes() {
        let a = a.map_err(|e| e.to_string())?;
        if a.key.as_namespace_binding().is_some() || a.key.prefix().is_some() {
            continue;
        }
        let key = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
        let value = a.unescape_value().map_err(|e| match e {
            quick_xml::Error::Escape(quick_xml::escape::EscapeError::UnrecognizedEntity(_, n)) => {
                format!("the entity `&{n};` is not read: only the five XML entities and character references are")
            }
            other => other.to_string(),
        })?;
        budget.take(2).map_err(|e| e.to_string())?;
        match &mut frame {
            Frame::Primitive {
                name,
                type_name,
                value: v,
                ext,
                ..
            } => match key.as_str() {
                "value" => *v = Some(typed(type_name, name, &value)?),
                "id" => {
                    ext.insert("id".into(), Value::String(value.into_owned()));
                }
                _ => {
                    return Err(format!(
                        "<{name}> has no attribute `{key}`: a primitive takes `value` and `id`"
                    ));
                }
            },
            Frame::Object {
                obj,
                resource: false,
                ..
            } if key == "id" || key == "url" => {
                obj.insert(key, Value::String(value.into_owned()));
            }
            Frame::Object {
                name,
                resource: false,
                ..
            } => {
                return Err(format!(
                    "<{name}> has no attribute `{key}`: it is not a primitive, so it takes only \
                     `id` and `url`, its values in child elements"
                ));
            }
            Frame::Object { name, .. } | Frame::Slot { name, .. } => {
                return Err(format!(
                    "<{name}> has no attribute `{key}` (a resource's id is its <id value=\"...\"/>)"
                ));
            }
        }
    }
    Ok(frame)
}

/// A primitive's `value` attribute in its JSON type (FHIR JSON: booleans, integers and
/// decimals are JSON literals and numbers; `integer64` and the rest are strings). White space
/// around the value of any type but `string` and `markdown` is dropped, as the FHIR schema's
/// XML types (`xs:boolean`, `xs:int`, `xs:token`...) collapse it; an integer is FHIR's 32-bit
/// one, in its written form (`-?(0|[1-9][0-9]*)`), and in its type's range.
fn typed(type_name: &str, element: &str, value: &str) -> Result<Value, String> {
    let bad = || format!("`{value}` is not a FHIR {type_name}, as <{element}> needs");
    let kept = match type_name {
        "string" | "markdown" => value,
        _ => value.trim_matches([' ', '\t', '\r', '\n']),
    };
    match type_name {
        "boolean" => match kept {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(bad()),
        },
        "integer" | "positiveInt" | "unsignedInt" => {
            let digits = kept.strip_prefix('-').unwrap_or(kept);
            let written = !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && (digits == "0" || !digits.starts_with('0'));
            let n = written
                .then(|| kept.parse::<i32>().ok())
                .flatten()
                .ok_or_else(bad)?;
            let least = match type_name {
                "positiveInt" => 1,
                "unsignedInt" => 0,
                _ => i32::MIN,
            };
            if n < least {
                return Err(bad());
            }
            Ok(Value::from(n))
        }
        "decimal" => match serde_json::from_str::<Value>(kept) {
            Ok(n @ Value::Number(_)) => Ok(n),
            _ => Err(bad()),
        },
        _ => Ok(Value::String(kept.to_owned())),
    }
}

/// Closes the innermost element and puts its value in its parent (or makes it the result).
fn close(stack: &mut Vec<Frame<'_>>, result: &mut Option<Value>) -> Result<(), String> {
    let Some(frame) = stack.pop() else {
        return Ok(());
    };
    let (name, array, value, ext) = match frame {
        Frame::Object {
            name,
            array,
            mut obj,
            ..
        } => {
            align(&mut obj);
            (name, array, Some(Value::Object(obj)), Map::new())
        }
        Frame::Primitive {
            name,
            array,
            value,
            ext,
            ..
        } => (name, array, value, ext),
        Frame::Slot {
            name,
            array,
            resource,
        } => (
            name.clone(),
            array,
            Some(resource.ok_or_else(|| format!("<{name}> holds no resource"))?),
            Map::new(),
        ),
    };
    match stack.last_mut() {
        None => {
            *result = value;
            Ok(())
        }
        Some(Frame::Slot { resource, .. }) => {
            *resource = value;
            Ok(())
        }
        Some(Frame::Primitive { ext: parent, .. }) => {
            let list = parent
                .entry("extension")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let (Value::Array(items), Some(v)) = (list, value) {
                items.push(v);
            }
            Ok(())
        }
        parent @ Some(Frame::Object { .. }) => {
            let Some(Frame::Object { obj, .. }) = parent else {
                return Ok(());
            };
            let under = format!("_{name}");
            if array {
                let items = obj
                    .entry(name.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                let index = items.as_array().map_or(0, Vec::len);
                if let Value::Array(items) = items {
                    items.push(value.unwrap_or(Value::Null));
                }
                if !ext.is_empty() {
                    let extras = obj.entry(under).or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(extras) = extras {
                        extras.resize(index, Value::Null);
                        extras.push(Value::Object(ext));
                    }
                }
                Ok(())
            } else {
                if obj.contains_key(&name) || obj.contains_key(&under) {
                    return Err(format!("<{name}> repeats where FHIR allows one"));
                }
                if let Some(v) = value {
                    obj.insert(name, v);
                }
                if !ext.is_empty() {
                    obj.insert(under, Value::Object(ext));
                }
                Ok(())
            }
        }
    }
}

/// Pads each `_name` array with `null` to the length of its `name` array.
fn align(obj: &mut Map<String, Value>) {
    let lengths: Vec<(String, usize)> = obj
        .iter()
        .filter(|(k, _)| k.starts_with('_'))
        .filter_map(|(k, _)| {
            let n = obj.get(&k[1..])?.as_array()?.len();
            Some((k.clone(), n))
        })
        .collect();
    for (k, n) in lengths {
        if let Some(Value::Array(extras)) = obj.get_mut(&k) {
            extras.resize(n, Value::Null);
        }
    }
}

/// Inserts a value that needs no frame (an XHTML `div`) into the open object.
fn insert(parent: Option<&mut Frame<'_>>, name: &str, array: bool, v: Value) -> Result<(), String> {
    let Some(Frame::Object { obj, .. }) = parent else {
        return Ok(());
    };
    if array {
        if let Value::Array(items) = obj
            .entry(name.to_owned())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            items.push(v);
        }
    } else if obj.insert(name.to_owned(), v).is_some() {
        return Err(format!("<{name}> repeats where FHIR allows one"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: Limits = Limits { max_values: 10_000 };

    #[test]
    fn a_patient_reads_as_its_fhir_json() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir">
  <id value="p1"/>
  <text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><p>Jane &amp; <b>Doe</b></p></div></text>
  <active value="true"/>
  <name>
    <family value="Doe"/>
    <given value="Jane"/>
    <given id="g2" value="J."><extension url="http://example.org/x"><valueString value="nick"/></extension></given>
  </name>
  <birthDate value="1970-01-01"><extension url="http://example.org/t"><valueDateTime value="1970-01-01T10:00:00Z"/></extension></birthDate>
  <multipleBirthInteger value="2"/>
  <contained><Organization><id value="o1"/><name value="Org"/></Organization></contained>
</Patient>"#;
        let got = decode(FhirVersion::R4, xml, LIMITS).expect("decoded");
        assert_eq!(
            got,
            json!({
                "resourceType": "Patient",
                "id": "p1",
                "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Jane &amp; <b>Doe</b></p></div>"},
                "active": true,
                "name": [{
                    "family": "Doe",
                    "given": ["Jane", "J."],
                    "_given": [null, {"id": "g2", "extension": [{"url": "http://example.org/x", "valueString": "nick"}]}]
                }],
                "birthDate": "1970-01-01",
                "_birthDate": {"extension": [{"url": "http://example.org/t", "valueDateTime": "1970-01-01T10:00:00Z"}]},
                "multipleBirthInteger": 2,
                "contained": [{"resourceType": "Organization", "id": "o1", "name": "Org"}]
            })
        );
        let structure = fhir_structure::structure(FhirVersion::R4).expect("R4");
        let problems = structure.check_instance(&got);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn bundle_entries_hold_their_resources_and_decimals_are_numbers() {
        let xml = br#"<Bundle xmlns="http://hl7.org/fhir"><type value="collection"/>
  <entry><fullUrl value="urn:uuid:1"/><resource><Observation><status value="final"/>
    <code><text value="Hb"/></code><valueQuantity><value value="13.5"/><unit value="g/dL"/></valueQuantity>
  </Observation></resource></entry></Bundle>"#;
        let got = decode(FhirVersion::R4, xml, LIMITS).expect("decoded");
        assert_eq!(got["entry"][0]["resource"]["resourceType"], "Observation");
        assert_eq!(
            got["entry"][0]["resource"]["valueQuantity"]["value"],
            json!(13.5)
        );
    }

    #[test]
    fn unknown_elements_bad_values_and_entities_are_errors_with_their_line() {
        let err = decode(
            FhirVersion::R4,
            b"<Patient xmlns=\"http://hl7.org/fhir\">\n<nickname value=\"x\"/></Patient>",
            LIMITS,
        )
        .expect_err("unknown");
        assert!(
            matches!(&err, DecodeError::Xml { line: 2, message, .. } if message.contains("not an element of <Patient>")),
            "{err}"
        );
        let err = decode(
            FhirVersion::R4,
            b"<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"yes\"/></Patient>",
            LIMITS,
        )
        .expect_err("bad boolean");
        assert!(err.to_string().contains("not a FHIR boolean"), "{err}");
        let err = decode(
            FhirVersion::R4,
            b"<!DOCTYPE p [<!ENTITY x \"y\">]><Patient xmlns=\"http://hl7.org/fhir\"/>",
            LIMITS,
        )
        .expect_err("doctype");
        assert!(err.to_string().contains("DOCTYPE"), "{err}");
        let err = decode(FhirVersion::R4, b"<Patient/>", LIMITS).expect_err("no namespace");
        assert!(err.to_string().contains("FHIR namespace"), "{err}");
    }
}
