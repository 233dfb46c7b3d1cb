//! XML read as JSON, one convention (see `docs/formats.md`): an element with neither
//! attributes nor child elements is its text; any other element is an object whose keys are
//! `@name` for each attribute, the local name of each child element, and `#text` for its text.
//! A child element that occurs more than once, or whose name is in `arrays`, is an array.
//! Text is trimmed and whitespace-only text dropped. With `records`, only the elements at that
//! path (from the root) are built, each a record of the array the document becomes; the rest
//! of the document is streamed past. Only the five XML entities and character references are
//! read: a DOCTYPE that declares entities is refused, so nothing is ever expanded.

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;
use serde_json::{Map, Value};

use super::format::{DecodeError, Limits, MAX_DEPTH, XmlFormat};
use super::text::{Budget, text, xml_error};

/// An element being built.
struct Frame {
    obj: Map<String, Value>,
    text: String,
    children: bool,
    /// A child element came since the last text: the next piece is a new word.
    gap: bool,
}

impl Frame {
    /// Adds a piece of text. Pieces that a child element parts (`Take <b>two</b> daily`) are
    /// joined by one space, whatever white space was around the child; pieces of one run
    /// (text, an entity, CDATA) are joined as they are.
    fn push_text(&mut self, piece: &str) {
        if self.gap {
            let piece = piece.trim_start();
            if piece.is_empty() {
                return;
            }
            let kept = self.text.trim_end().len();
            self.text.truncate(kept);
            if !self.text.is_empty() {
                self.text.push(' ');
            }
            self.gap = false;
            self.text.push_str(piece);
        } else {
            self.text.push_str(piece);
        }
    }
}

/// Decodes XML into the root element's JSON, or the array of the records at `f.records`.
pub(super) fn decode(f: &XmlFormat, bytes: &[u8], limits: Limits) -> Result<Value, DecodeError> {
    let text = text(bytes, f.encoding)?;
    let src = text.as_bytes();
    let mut reader = NsReader::from_str(&text);
    let mut budget = Budget::new(limits);
    budget.take(1)?;
    let mut path: Vec<(Option<String>, String)> = Vec::new();
    // Elements being built: empty when outside any record.
    let mut building: Vec<(String, Frame)> = Vec::new();
    let mut records = Vec::new();
    let mut root: Option<Value> = None;
    let mut seen_root = false;
    let at = |offset: u64, message: String| xml_error(src, offset, message);
    loop {
        // Errors of an event are placed where it starts.
        let before = reader.buffer_position();
        let (ns, event) = reader
            .read_resolved_event()
            .map(|(ns, e)| {
                let ns = match ns {
                    ResolveResult::Bound(n) => Ok(Some(String::from_utf8_lossy(n.0).into_owned())),
                    ResolveResult::Unbound => Ok(None),
                    ResolveResult::Unknown(p) => Err(String::from_utf8_lossy(&p).into_owned()),
                };
                (ns, e)
            })
            .map_err(|e| at(reader.error_position(), e.to_string()))?;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let ns =
                    ns.map_err(|p| at(before, format!("undeclared namespace prefix `{p}`")))?;
                let empty = matches!(event, Event::Empty(_));
                let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if path.is_empty() {
                    if seen_root {
                        return Err(at(
                            before,
                            format!("a second root element, <{local}>: a document has one"),
                        ));
                    }
                    seen_root = true;
                }
                path.push((ns, local.clone()));
                if path.len() > MAX_DEPTH {
                    return Err(at(
                        before,
                        format!("elements nested deeper than {MAX_DEPTH}"),
                    ));
                }
                let starts_record = building.is_empty()
                    && if f.records.is_empty() {
                        path.len() == 1
                    } else {
                        path.len() == f.records.len()
                            && path.iter().zip(&f.records).all(|((ns, local), step)| {
                                *local == step.local
                                    && step
                                        .namespace
                                        .as_ref()
                                        .is_none_or(|want| ns.as_deref() == Some(want.as_str()))
                            })
                    };
                if starts_record || !building.is_empty() {
                    budget.take(2)?;
                    let frame = frame(e, &mut budget).map_err(|m| at(before, m))?;
                    if let Some((_, parent)) = building.last_mut() {
                        parent.children = true;
                        parent.gap = true;
                    }
                    building.push((local, frame));
                }
                if empty {
                    close(f, &mut path, &mut building, &mut records, &mut root);
                }
            }
            Event::End(_) => close(f, &mut path, &mut building, &mut records, &mut root),
            Event::Text(t) => {
                if let Some((_, frame)) = building.last_mut() {
                    let s = t.xml_content().map_err(|e| at(before, e.to_string()))?;
                    frame.push_text(&s);
                } else if path.is_empty() {
                    // Placed at its first character, past the line break before it.
                    let raw: &[u8] = AsRef::<[u8]>::as_ref(&*t);
                    if let Some(lead) = raw.iter().position(|b| !b.is_ascii_whitespace()) {
                        return Err(at(
                            before + lead as u64,
                            "text outside the root element".into(),
                        ));
                    }
                }
            }
            Event::CData(t) => {
                if let Some((_, frame)) = building.last_mut() {
                    let s = t.xml_content().map_err(|e| at(before, e.to_string()))?;
                    frame.push_text(&s);
                } else if path.is_empty() {
                    return Err(at(before, "text outside the root element".into()));
                }
            }
            Event::GeneralRef(r) => {
                let name = r.xml_content().map_err(|e| at(before, e.to_string()))?;
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => quick_xml::escape::resolve_predefined_entity(&name)
                        .ok_or_else(|| {
                            at(
                                before,
                                format!(
                                    "the entity `&{name};` is not read: only the five XML entities and character references are"
                                ),
                            )
                        })?
                        .to_owned(),
                    Err(e) => return Err(at(before, e.to_string())),
                };
                if let Some((_, frame)) = building.last_mut() {
                    frame.push_text(&resolved);
                } else if path.is_empty() {
                    return Err(at(before, "text outside the root element".into()));
                }
            }
            Event::DocType(d) => {
                if AsRef::<[u8]>::as_ref(&*d)
                    .windows(8)
                    .any(|w| w == b"<!ENTITY")
                {
                    return Err(at(
                        before,
                        "a DOCTYPE that declares entities is refused (entities are never expanded)"
                            .into(),
                    ));
                }
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
        }
    }
    if let Some((_, local)) = path.last() {
        return Err(at(
            reader.buffer_position(),
            format!("the document ends inside <{local}>"),
        ));
    }
    if f.records.is_empty() {
        root.ok_or_else(|| at(reader.buffer_position(), "no root element".into()))
    } else {
        Ok(Value::Array(records))
    }
}

/// A new element's frame: its attributes as `@name` (namespace declarations left out).
fn frame(e: &BytesStart<'_>, budget: &mut Budget) -> Result<Frame, String> {
    let mut obj = Map::new();
    for a in e.attributes() {
        let a = a.map_err(|e| e.to_string())?;
        let key = a.key;
        if key.as_namespace_binding().is_some() {
            continue;
        }
        let value = a.unescape_value().map_err(|e| match e {
            quick_xml::Error::Escape(quick_xml::escape::EscapeError::UnrecognizedEntity(_, n)) => {
                format!("the entity `&{n};` is not read: only the five XML entities and character references are")
            }
            other => other.to_string(),
        })?;
        budget.take(2).map_err(|e| e.to_string())?;
        let name = format!("@{}", String::from_utf8_lossy(key.local_name().as_ref()));
        // `a` and `x:a` share a key: the second would replace the first without a word.
        if obj.contains_key(&name) {
            return Err(format!(
                "two attributes named `{}` (in different namespaces): their JSON key `{name}` \
                 would hold only one",
                &name[1..]
            ));
        }
        obj.insert(name, Value::String(value.into_owned()));
    }
    Ok(Frame {
        obj,
        text: String::new(),
        children: false,
        gap: false,
    })
}

/// Closes the innermost element: its value goes to its parent, or becomes a record.
fn close(
    f: &XmlFormat,
    path: &mut Vec<(Option<String>, String)>,
    building: &mut Vec<(String, Frame)>,
    records: &mut Vec<Value>,
    root: &mut Option<Value>,
) {
    let depth = path.len();
    path.pop();
    let record_depth = if f.records.is_empty() {
        1
    } else {
        f.records.len()
    };
    // Only elements at or below the record depth are built.
    if building.is_empty() || depth < record_depth {
        return;
    }
    let Some((name, frame)) = building.pop() else {
        return;
    };
    let text = frame.text.trim();
    let value = if frame.obj.is_empty() && !frame.children {
        Value::String(text.to_owned())
    } else {
        let mut obj = frame.obj;
        if !text.is_empty() {
            obj.insert("#text".into(), Value::String(text.to_owned()));
        }
        Value::Object(obj)
    };
    match building.last_mut() {
        Some((_, parent)) => {
            let always = f.arrays.contains(&name);
            match parent.obj.get_mut(&name) {
                Some(Value::Array(items)) => items.push(value),
                Some(existing) => {
                    let first = existing.take();
                    *existing = Value::Array(vec![first, value]);
                }
                None if always => {
                    parent.obj.insert(name, Value::Array(vec![value]));
                }
                None => {
                    parent.obj.insert(name, value);
                }
            }
        }
        None if f.records.is_empty() => *root = Some(value),
        None => records.push(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decode::format::Step;
    use serde_json::json;

    const LIMITS: Limits = Limits { max_values: 1000 };

    fn records(path: &[(&str, Option<&str>)]) -> XmlFormat {
        XmlFormat {
            records: path
                .iter()
                .map(|(l, ns)| Step {
                    local: (*l).into(),
                    namespace: ns.map(str::to_owned),
                })
                .collect(),
            ..XmlFormat::default()
        }
    }

    #[test]
    fn elements_attributes_text_and_repeats_follow_the_convention() {
        let xml = br#"<?xml version="1.0"?>
            <label id="L1" xmlns:x="urn:x"><title>Aspirin &amp; more &#x263A;</title>
              <code code="123" x:system="s">Text</code>
              <ingredient>A</ingredient><ingredient>B</ingredient><empty/>
              <note><![CDATA[<b>raw</b>]]></note></label>"#;
        let got = decode(&XmlFormat::default(), xml, LIMITS).expect("decoded");
        assert_eq!(
            got,
            json!({
                "@id": "L1",
                "title": "Aspirin & more \u{263A}",
                "code": {"@code": "123", "@system": "s", "#text": "Text"},
                "ingredient": ["A", "B"],
                "empty": "",
                "note": "<b>raw</b>"
            })
        );
    }

    #[test]
    fn records_are_selected_by_path_and_namespace() {
        let xml = br#"<doc xmlns="urn:hl7-org:v3" xmlns:o="urn:other">
            <component><section><title>One</title></section></component>
            <o:component><section><title>Other</title></section></o:component>
            <component><section><title>Two</title><line>1</line></section></component>
          </doc>"#;
        let mut f = records(&[
            ("doc", None),
            ("component", Some("urn:hl7-org:v3")),
            ("section", None),
        ]);
        f.arrays = vec!["line".into()];
        let got = decode(&f, xml, LIMITS).expect("decoded");
        assert_eq!(
            got,
            json!([{"title": "One"}, {"title": "Two", "line": ["1"]}])
        );
    }

    #[test]
    fn billion_laughs_is_refused_and_unknown_entities_are_never_expanded() {
        let laughs = br#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]>
<lolz>&lol2;</lolz>"#;
        let err = decode(&XmlFormat::default(), laughs, LIMITS).expect_err("refused");
        assert!(
            matches!(&err, DecodeError::Xml { line: 2, message, .. } if message.contains("DOCTYPE")),
            "{err}"
        );
        let err = decode(&XmlFormat::default(), b"<a>&ext;</a>", LIMITS).expect_err("unknown");
        assert!(err.to_string().contains("`&ext;` is not read"), "{err}");
        let err = decode(&XmlFormat::default(), b"<a b='&ext;'/>", LIMITS).expect_err("unknown");
        assert!(err.to_string().contains("`&ext;` is not read"), "{err}");
    }

    #[test]
    fn malformed_deep_truncated_and_large_documents_are_errors() {
        let err = decode(&XmlFormat::default(), b"<a>\n<b></c></a>", LIMITS).expect_err("bad");
        assert!(matches!(err, DecodeError::Xml { line: 2, .. }), "{err}");
        let deep = "<a>".repeat(MAX_DEPTH + 1);
        let err = decode(&XmlFormat::default(), deep.as_bytes(), LIMITS).expect_err("deep");
        assert!(err.to_string().contains("deeper"), "{err}");
        let err = decode(&XmlFormat::default(), b"<a><b>x</b>", LIMITS).expect_err("cut");
        assert!(err.to_string().contains("ends inside <a>"), "{err}");
        let many = format!("<a>{}</a>", "<b>x</b>".repeat(600));
        let err = decode(&XmlFormat::default(), many.as_bytes(), LIMITS).expect_err("many");
        assert_eq!(err, DecodeError::TooManyValues { max: 1000 });
        let err = decode(&XmlFormat::default(), b"<a>\xFF</a>", LIMITS).expect_err("not UTF-8");
        assert!(matches!(err, DecodeError::Encoding { .. }), "{err}");
    }
}
