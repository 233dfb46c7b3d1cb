//! The located YAML tree: definitions parsed into nodes that remember their line and column,
//! with duplicate keys, depth and alias expansion checked, then turned into JSON for the schema.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_json::{Map, Value};

/// Deepest nesting accepted; definitions are shallow, so this only stops abuse.
pub const MAX_DEPTH: usize = 128;
/// Most nodes one file may expand to, aliases included (stops "billion laughs").
pub const MAX_NODES: usize = 500_000;

/// A YAML node and where it starts (1-based line and column).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: NodeValue,
    pub line: usize,
    pub column: usize,
}

/// The value of a node, after YAML 1.2 core-schema resolution of plain scalars.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A mapping key and where it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub line: usize,
    pub column: usize,
}

/// A problem found while reading YAML.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub line: usize,
    pub column: usize,
    /// YAML path of the node concerned, when known.
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

/// Every document of a text, and the problems found. A syntax error ends parsing.
#[derive(Debug, Default)]
pub struct Parsed {
    pub documents: Vec<Node>,
    pub errors: Vec<YamlError>,
}

enum Frame {
    Seq {
        node: Node,
        items: Vec<Node>,
        anchor: usize,
    },
    Map {
        node: Node,
        entries: Vec<(Key, Node)>,
        /// Where each key of `entries` is (duplicates found without scanning: a file may hold
        /// hundreds of thousands of keys).
        names: HashMap<String, usize>,
        key: Option<Key>,
        /// The key being read is a plain `<<`: its value is merged.
        merging: bool,
        /// What `<<` keys gave, in order (an explicit key wins over a merged one).
        merged: Vec<(Key, Node)>,
        anchor: usize,
    },
}

/// Parses all documents of `text`.
pub fn parse(text: &str) -> Parsed {
    let mut out = Parsed::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, (Node, usize)> = HashMap::new();
    let mut budget = MAX_NODES;
    for event in Parser::new_from_str(text) {
        let (event, span) = match event {
            Ok(e) => e,
            Err(e) => {
                out.errors.push(syntax_error(
                    text,
                    e.marker().line(),
                    e.marker().col() + 1,
                    e.info(),
                ));
                return out;
            }
        };
        let at = |v: NodeValue| Node {
            value: v,
            line: span.start.line(),
            column: span.start.col() + 1,
        };
        let complete = match event {
            Event::DocumentStart(_) => {
                anchors.clear();
                None
            }
            Event::Scalar(text, style, anchor, tag) => {
                if let Some(Frame::Map {
                    key: None, merging, ..
                }) = stack.last_mut()
                {
                    *merging = style == ScalarStyle::Plain && tag.is_none() && text == "<<";
                }
                let core_str = tag
                    .as_ref()
                    .is_some_and(|t| t.handle == "tag:yaml.org,2002:" && t.suffix == "str");
                let value = if style == ScalarStyle::Plain && !core_str {
                    resolve_plain(&text)
                } else {
                    NodeValue::Str(text.into_owned())
                };
                Some((at(value), anchor))
            }
            Event::SequenceStart(anchor, _) => {
                stack.push(Frame::Seq {
                    node: at(NodeValue::Null),
                    items: Vec::new(),
                    anchor,
                });
                None
            }
            Event::MappingStart(anchor, _) => {
                if matches!(stack.last(), Some(Frame::Map { key: None, .. })) {
                    out.errors.push(error_at(
                        &span,
                        "a mapping key must be a plain value, not a collection",
                    ));
                    return out;
                }
                stack.push(Frame::Map {
                    node: at(NodeValue::Null),
                    entries: Vec::new(),
                    names: HashMap::new(),
                    key: None,
                    merging: false,
                    merged: Vec::new(),
                    anchor,
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq {
                    mut node,
                    items,
                    anchor,
                }) => {
                    node.value = NodeValue::Seq(items);
                    Some((node, anchor))
                }
                Some(Frame::Map {
                    mut node,
                    mut entries,
                    mut names,
                    merged,
                    anchor,
                    ..
                }) => {
                    for (k, v) in merged {
                        if !names.contains_key(&k.name) {
                            names.insert(k.name.clone(), entries.len());
                            entries.push((k, v));
                        }
                    }
                    node.value = NodeValue::Map(entries);
                    Some((node, anchor))
                }
                None => None,
            },
            Event::Alias(id) => match anchors.get(&id) {
                Some((node, size)) if *size <= budget => {
                    budget -= size;
                    let mut copy = node.clone();
                    copy.line = span.start.line();
                    copy.column = span.start.col() + 1;
                    Some((copy, 0))
                }
                Some(_) => {
                    out.errors.push(error_at(
                        &span,
                        &format!("aliases expand to more than {MAX_NODES} nodes (an alias bomb?)"),
                    ));
                    return out;
                }
                None => {
                    out.errors
                        .push(error_at(&span, "alias to an unknown anchor"));
                    return out;
                }
            },
            _ => None,
        };
        if stack.len() > MAX_DEPTH {
            out.errors.push(error_at(
                &span,
                &format!("nesting deeper than {MAX_DEPTH} levels"),
            ));
            return out;
        }
        let Some((node, anchor)) = complete else {
            continue;
        };
        if budget == 0 {
            out.errors.push(error_at(
                &span,
                &format!("more than {MAX_NODES} nodes in one file"),
            ));
            return out;
        }
        budget -= 1;
        if anchor > 0 {
            let size = count(&node);
            anchors.insert(anchor, (node.clone(), size));
        }
        match stack.last_mut() {
            None => out.documents.push(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                names,
                key,
                merging,
                merged,
                ..
            }) => match key.take() {
                Some(k) if std::mem::take(merging) => {
                    if let Err(e) = merge(&k, node, merged) {
                        out.errors.push(e);
                        return out;
                    }
                }
                Some(k) => {
                    if let Some(&first) = names.get(&k.name) {
                        out.errors.push(YamlError {
                            line: k.line,
                            column: k.column,
                            path: String::new(),
                            message: format!("duplicate key `{}`", k.name),
                            hint: Some(format!("first written at line {}", entries[first].0.line)),
                        });
                    } else {
                        names.insert(k.name.clone(), entries.len());
                        entries.push((k, node));
                    }
                }
                None => {
                    let name = match node.value {
                        NodeValue::Str(s) => s,
                        NodeValue::Null => "null".into(),
                        NodeValue::Bool(b) => b.to_string(),
                        NodeValue::Int(i) => i.to_string(),
                        NodeValue::Float(f) => f.to_string(),
                        NodeValue::Seq(_) | NodeValue::Map(_) => {
                            out.errors.push(error_at(
                                &span,
                                "a mapping key must be a plain value, not a collection",
                            ));
                            return out;
                        }
                    };
                    *key = Some(Key {
                        name,
                        line: node.line,
                        column: node.column,
                    });
                }
            },
        }
    }
    out
}

/// A merge key's value (YAML 1.1 `<<`, as Kubernetes and Compose files use it): a mapping, or
/// a sequence of mappings (the earlier winning), whose entries the enclosing mapping takes
/// where it writes no key of the same name.
fn merge(key: &Key, value: Node, merged: &mut Vec<(Key, Node)>) -> Result<(), YamlError> {
    let maps = match value.value {
        NodeValue::Map(entries) => vec![entries],
        NodeValue::Seq(items) => items
            .into_iter()
            .map(|item| match item.value {
                NodeValue::Map(entries) => Some(entries),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| merge_error(key))?,
        _ => return Err(merge_error(key)),
    };
    // Kept in order; the first of a name wins when the mapping ends.
    merged.extend(maps.into_iter().flatten());
    Ok(())
}

fn merge_error(key: &Key) -> YamlError {
    YamlError {
        line: key.line,
        column: key.column,
        path: String::new(),
        message: "a merge key `<<` takes a mapping or a list of mappings".into(),
        hint: Some("write `<<: *anchor` where `&anchor` names a mapping, or quote `\"<<\"` for a key of that name".into()),
    }
}

fn count(node: &Node) -> usize {
    match &node.value {
        NodeValue::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        NodeValue::Map(entries) => 1 + entries.iter().map(|(_, n)| count(n)).sum::<usize>(),
        _ => 1,
    }
}

fn error_at(span: &Span, message: &str) -> YamlError {
    YamlError {
        line: span.start.line(),
        column: span.start.col() + 1,
        path: String::new(),
        message: message.into(),
        hint: None,
    }
}

fn syntax_error(text: &str, line: usize, column: usize, info: &str) -> YamlError {
    let written = text.lines().nth(line.wrapping_sub(1)).unwrap_or("");
    let indented_with_tab = written
        .chars()
        .take_while(|c| c.is_whitespace())
        .any(|c| c == '\t');
    let tab = written.contains('\t');
    // saphyr points past the tab that follows a `:`; the tab is what to change.
    let after_tab = column >= 2 && written.chars().nth(column - 2) == Some('\t');
    YamlError {
        line,
        column: if after_tab && info.contains("':'") {
            column - 1
        } else {
            column
        },
        path: String::new(),
        message: if info.contains("recursion limit") {
            format!("nesting deeper than {MAX_DEPTH} levels")
        } else {
            format!("YAML syntax: {info}")
        },
        hint: if indented_with_tab {
            Some("YAML does not allow tabs for indentation: use spaces".into())
        } else if tab && info.contains("':'") {
            Some(
                "the YAML reader takes no tab between a key's `:` and its value: use a space"
                    .into(),
            )
        } else if info.contains("flow") {
            Some("inside `{ }` or `[ ]`, quote values that contain `[`, `]`, `{`, `}` or `,` (such as JSONPath queries)".into())
        } else {
            None
        },
    }
}

/// A resolved reference's text read as YAML reads the same text written plainly (`5` an
/// integer, `true` a boolean, `1.5` a number), as JSON; anything else stays text.
pub fn plain_json(s: &str) -> Value {
    match resolve_plain(s) {
        NodeValue::Float(f) if !f.is_finite() => Value::String(s.to_owned()),
        NodeValue::Null => Value::String(s.to_owned()),
        value => Node {
            value,
            line: 0,
            column: 0,
        }
        .to_json(),
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
fn resolve_plain(s: &str) -> NodeValue {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return NodeValue::Null,
        "true" | "True" | "TRUE" => return NodeValue::Bool(true),
        "false" | "False" | "FALSE" => return NodeValue::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return NodeValue::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return NodeValue::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return NodeValue::Float(f64::NAN),
        _ => {}
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(i) = s.parse::<i64>()
    {
        return NodeValue::Int(i);
    }
    if let Some(hex) = s.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return NodeValue::Int(i);
    }
    if let Some(oct) = s.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return NodeValue::Int(i);
    }
    if is_core_float(digits)
        && let Ok(f) = s.parse::<f64>()
    {
        return NodeValue::Float(f);
    }
    NodeValue::Str(s.to_owned())
}

fn is_core_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut parts = mantissa.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next();
    let ok_int = int.bytes().all(|b| b.is_ascii_digit());
    let ok_frac = frac.is_none_or(|f| f.bytes().all(|b| b.is_ascii_digit()));
    let has_digits = !int.is_empty() || frac.is_some_and(|f| !f.is_empty());
    let ok_exp = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
    });
    ok_int && ok_frac && has_digits && ok_exp && (frac.is_some() || exponent.is_some())
}

impl Node {
    /// The node as JSON (non-finite floats become null, which the schema then rejects).
    pub fn to_json(&self) -> Value {
        match &self.value {
            NodeValue::Null => Value::Null,
            NodeValue::Bool(b) => Value::Bool(*b),
            NodeValue::Int(i) => Value::from(*i),
            NodeValue::Float(f) => Value::from(*f),
            NodeValue::Str(s) => Value::String(s.clone()),
            NodeValue::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeValue::Map(entries) => {
                let mut map = Map::with_capacity(entries.len());
                for (k, v) in entries {
                    map.insert(k.name.clone(), v.to_json());
                }
                Value::Object(map)
            }
        }
    }

    /// The child under a key or index.
    pub fn child(&self, segment: &str) -> Option<&Node> {
        match &self.value {
            NodeValue::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.name == segment)
                .map(|(_, v)| v),
            NodeValue::Seq(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        }
    }

    /// The key written for `segment` in this mapping.
    pub fn key(&self, segment: &str) -> Option<&Key> {
        match &self.value {
            NodeValue::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.name == segment)
                .map(|(k, _)| k),
            _ => None,
        }
    }

    /// The deepest node along `segments` (as far as the path exists).
    pub fn descend<'a>(&'a self, segments: &[String]) -> &'a Node {
        let mut node = self;
        for s in segments {
            match node.child(s) {
                Some(n) => node = n,
                None => break,
            }
        }
        node
    }

    /// Where to point for the node at `segments` (or its nearest written ancestor): at its
    /// key when `key` is set or the node is a collection (a block collection starts at its
    /// first entry, so its key is the clearer place), else at the value.
    pub fn locate(&self, segments: &[String], key: bool) -> (usize, usize) {
        let mut node = self;
        let mut last_key = None;
        for s in segments {
            match node.child(s) {
                Some(n) => {
                    last_key = node.key(s);
                    node = n;
                }
                None => break,
            }
        }
        let collection = matches!(node.value, NodeValue::Map(_) | NodeValue::Seq(_));
        match last_key {
            Some(k) if key || collection => (k.line, k.column),
            _ => (node.line, node.column),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A YAML path for people: `spec.tests[0].input`, `spec.vars["a.b"]`.
pub fn display_path(segments: &[String]) -> String {
    let mut out = String::new();
    for s in segments {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{s}]"));
        } else if s
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '$')
            && !s.is_empty()
        {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(s);
        } else {
            out.push_str(&format!("[{}]", serde_json::Value::String(s.clone())));
        }
    }
    out
}

/// Splits a JSON pointer (`/spec/tests/0`) into segments.
pub fn pointer_segments(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        let p = parse(text);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        p.documents.into_iter().next().expect("a document")
    }

    #[test]
    fn core_schema_scalars() {
        let n =
            one("a: 1\nb: '1'\nc: 1.5\nd: true\ne: ~\nf: 0x1F\ng: 1e3\nh: .5\ni: abc\nj: 1.2.3\n");
        let json = n.to_json();
        assert_eq!(
            json,
            serde_json::json!({"a":1,"b":"1","c":1.5,"d":true,"e":null,"f":31,"g":1000.0,"h":0.5,"i":"abc","j":"1.2.3"})
        );
    }

    #[test]
    fn locations_are_one_based() {
        let n = one("spec:\n  source:\n    url: x\n");
        let url = n.descend(&["spec".into(), "source".into(), "url".into()]);
        assert_eq!((url.line, url.column), (3, 10));
        let key = n
            .descend(&["spec".into(), "source".into()])
            .key("url")
            .expect("key");
        assert_eq!((key.line, key.column), (3, 5));
    }

    #[test]
    fn duplicate_keys_are_reported_with_the_first() {
        let p = parse("a: 1\nb: 2\na: 3\n");
        assert_eq!(p.errors.len(), 1);
        assert_eq!(p.errors[0].message, "duplicate key `a`");
        assert_eq!((p.errors[0].line, p.errors[0].column), (3, 1));
        assert_eq!(p.errors[0].hint.as_deref(), Some("first written at line 1"));
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow() {
        let text = "[".repeat(20_000);
        let p = parse(&text);
        assert_eq!(p.errors.len(), 1);
        assert!(
            p.errors[0].message.contains("nesting deeper"),
            "{:?}",
            p.errors
        );
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        let p = parse(&text);
        assert_eq!(p.errors.len(), 1);
        assert!(p.errors[0].message.contains("alias bomb"), "{:?}", p.errors);
    }

    #[test]
    fn paths_read_like_yaml() {
        let segs: Vec<String> = ["spec", "tests", "0", "a.b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(display_path(&segs), "spec.tests[0][\"a.b\"]");
    }
}
