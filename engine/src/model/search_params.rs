//! FHIR search semantics of a pull route's parameters: what a caller's query means for a
//! declared search. Only declared parameters are taken; `token` values are read as FHIR
//! writes them (`system|code`, `|code` for no system, `code` for any system, `\|`, `\,`, `\$`
//! and `\\` as escapes) and checked against the declared systems; `string` modifiers
//! (`:exact`, `:contains`) are taken where declared and any other modifier is refused, as
//! FHIR requires of a server that does not support it; a repeated parameter (AND) and a
//! comma list (OR) in a token are refused. The runtime answers with what this makes, and a
//! definition test reads its `params` through the same rules.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::model::vocabulary::{OtherSystem, ParamType, StringModifier};

/// A declared search parameter.
#[derive(Debug, Clone)]
pub struct Param {
    pub kind: ParamType,
    pub required: bool,
    pub default: Option<Value>,
    pub max: Option<i64>,
    pub description: Option<String>,
    /// The systems a `token` parameter searches (empty: any system).
    pub systems: Vec<String>,
    /// What a `token` of another system gets.
    pub other_system: OtherSystem,
    /// The modifiers a `string` parameter accepts.
    pub modifiers: Vec<StringModifier>,
}

/// `_count` of a search when neither the caller nor the definition gives one.
pub const DEFAULT_COUNT: i64 = 20;
/// Largest `_count` of a search that declares no `max`.
pub const MAX_COUNT: i64 = 1000;
/// The key under `params` that holds each modifier-taking parameter's modifier.
pub const MODIFIERS: &str = "_modifiers";
/// The parameter a search takes and ignores (every answer is JSON): not in the parsed query,
/// its cache key or its links.
pub const IGNORED: &str = "_format";
/// Most characters of a caller's value quoted back in an error.
const SHOWN: usize = 60;

/// A checked search: parameters with defaults applied (a JSON object, as templates read it),
/// `_count`, `_offset`, and whether it can match nothing (a token of a system the parameter
/// answers empty for): then no source is asked.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    pub params: Value,
    pub count: usize,
    pub offset: usize,
    pub matches_nothing: bool,
}

impl SearchQuery {
    /// The cache key: parameter order and defaults do not split entries.
    pub fn key(&self, resource_type: &str) -> String {
        format!("search|{resource_type}|{}", self.params)
    }
}

/// Why a caller's search parameters are refused (a 400 to the caller). Caller values are
/// quoted cut to a few dozen characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchParamError {
    #[error(
        "search parameter `{0}` is given more than once: repeating a parameter (AND) is not \
         supported here"
    )]
    Repeated(String),
    #[error("unknown search parameter `{name}`; accepted: {accepted}")]
    Unknown { name: String, accepted: String },
    #[error("search parameter `{name}` does not support the modifier `:{modifier}`; {accepted}")]
    Modifier {
        name: String,
        modifier: String,
        accepted: String,
    },
    #[error("search parameter `{0}` is required")]
    Required(String),
    #[error("search parameter `{0}` must be an integer")]
    NotInteger(String),
    #[error("search parameter `{name}` must be at most {max}")]
    TooLarge { name: String, max: i64 },
    #[error("search parameter `{0}` must be a date")]
    NotDate(String),
    #[error("`_count` and `_offset` cannot be negative")]
    Negative,
    #[error("search parameter `{name}`: {problem}")]
    Token { name: String, problem: TokenProblem },
    #[error(
        "search parameter `{name}`: the system `{system}` is not searched here; accepted: {accepted}"
    )]
    System {
        name: String,
        system: String,
        accepted: String,
    },
}

/// Why a `token` value cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    #[error("the value is empty")]
    Empty,
    #[error("`|` alone names neither a system nor a code")]
    Bare,
    #[error("there is more than one `|`; write `\\|` for a `|` inside a system or code")]
    TooManyBars,
    #[error("no code after `|`: searching every code of a system is not supported here")]
    NoCode,
    #[error(
        "a comma list (OR) is not supported here; ask once per code, or write `\\,` for a comma \
         inside a code"
    )]
    OrList,
    #[error("`\\` escapes only `|`, `,`, `$` and `\\`")]
    BadEscape,
}

/// A token value read: its system (`None`: any system; `Some("")`: no system) and code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub system: Option<String>,
    pub code: String,
}

/// Reads a token as FHIR writes it: `[system]|[code]`, `|[code]`, `[code]`, with `\|`, `\,`,
/// `\$` and `\\` as escapes. Percent-encoding is undone before (`%7C` is a `|`).
pub fn token(text: &str) -> Result<Token, TokenProblem> {
    if text.is_empty() {
        return Err(TokenProblem::Empty);
    }
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('|' | ',' | '$' | '\\')) => parts.last_mut().into_iter().for_each(|p| {
                    p.push(e);
                }),
                _ => return Err(TokenProblem::BadEscape),
            },
            '|' => {
                if parts.len() == 2 {
                    return Err(TokenProblem::TooManyBars);
                }
                parts.push(String::new());
            }
            ',' => return Err(TokenProblem::OrList),
            c => parts.last_mut().into_iter().for_each(|p| p.push(c)),
        }
    }
    let code = parts.pop().unwrap_or_default();
    let system = parts.pop();
    match (&system, code.is_empty()) {
        (Some(s), true) if s.is_empty() => Err(TokenProblem::Bare),
        (Some(_), true) => Err(TokenProblem::NoCode),
        (None, true) => Err(TokenProblem::Empty),
        _ => Ok(Token { system, code }),
    }
}

/// A token as request templates and the mapping read it: `code`, `text` (as the caller wrote
/// it) and `system` when the caller wrote a `|` (`""` for no system).
pub fn token_value(t: &Token, text: &str) -> Value {
    let mut o = Map::new();
    if let Some(s) = &t.system {
        o.insert("system".into(), Value::String(s.clone()));
    }
    o.insert("code".into(), Value::String(t.code.clone()));
    o.insert("text".into(), Value::String(text.to_owned()));
    Value::Object(o)
}

fn shown(s: &str) -> String {
    if s.chars().count() > SHOWN {
        format!("{}...", s.chars().take(SHOWN).collect::<String>())
    } else {
        s.to_owned()
    }
}

/// Checks a caller's search parameters (`raw`, percent-decoded, in the order given) against
/// the declared ones of a search (`declared`, by name).
pub fn parse(
    declared: &BTreeMap<String, Param>,
    raw: &[(String, String)],
) -> Result<SearchQuery, SearchParamError> {
    // Each parameter by its declared name, with the modifier it was given with.
    let mut given: BTreeMap<&str, (Option<&str>, &str)> = BTreeMap::new();
    for (k, v) in raw {
        if k == IGNORED {
            continue;
        }
        let (name, modifier) = if declared.contains_key(k.as_str()) {
            (k.as_str(), None)
        } else {
            match k.split_once(':') {
                Some((n, m)) => (n, Some(m)),
                None => (k.as_str(), None),
            }
        };
        if given.insert(name, (modifier, v)).is_some() {
            return Err(SearchParamError::Repeated(shown(name)));
        }
    }
    let mut params = Map::new();
    let mut modifiers = Map::new();
    let mut matches_nothing = false;
    for (name, spec) in declared {
        if !spec.modifiers.is_empty() {
            modifiers.insert(name.clone(), Value::String(String::new()));
        }
        let value = match given.remove(name.as_str()) {
            Some((modifier, text)) => {
                if let Some(m) = modifier {
                    let m = accepted_modifier(name, spec, m)?;
                    modifiers.insert(name.clone(), Value::String(m.name().to_owned()));
                }
                let (v, nothing) = typed(name, spec, text)?;
                matches_nothing |= nothing;
                Some(v)
            }
            None => match (&spec.default, spec.kind) {
                (Some(Value::String(d)), ParamType::Token) => Some(typed(name, spec, d)?.0),
                (d, _) => d.clone(),
            },
        };
        match value {
            Some(v) => {
                params.insert(name.clone(), v);
            }
            None if spec.required => return Err(SearchParamError::Required(name.clone())),
            None => {}
        }
    }
    let count_spec = declared.get("_count");
    let max = count_spec.and_then(|p| p.max).unwrap_or(MAX_COUNT);
    let count = match given.remove("_count") {
        Some((m, text)) => {
            no_modifier("_count", m)?;
            saturating("_count", text)?.min(max)
        }
        None => params
            .get("_count")
            .and_then(Value::as_i64)
            .unwrap_or(DEFAULT_COUNT)
            .min(max),
    };
    let offset = match given.remove("_offset") {
        Some((m, text)) => {
            no_modifier("_offset", m)?;
            saturating("_offset", text)?
        }
        None => 0,
    };
    if let Some(unknown) = given.keys().next() {
        let mut accepted: Vec<&str> = declared.keys().map(String::as_str).collect();
        accepted.extend(["_count", "_offset"]);
        accepted.sort_unstable();
        accepted.dedup();
        return Err(SearchParamError::Unknown {
            name: shown(unknown),
            accepted: accepted.join(", "),
        });
    }
    if count < 0 || offset < 0 {
        return Err(SearchParamError::Negative);
    }
    params.insert("_count".into(), Value::from(count));
    params.insert("_offset".into(), Value::from(offset));
    if !modifiers.is_empty() {
        params.insert(MODIFIERS.into(), Value::Object(modifiers));
    }
    Ok(SearchQuery {
        params: Value::Object(params),
        count: count as usize,
        offset: offset as usize,
        matches_nothing,
    })
}

fn no_modifier(name: &str, modifier: Option<&str>) -> Result<(), SearchParamError> {
    match modifier {
        None => Ok(()),
        Some(m) => Err(SearchParamError::Modifier {
            name: name.to_owned(),
            modifier: shown(m),
            accepted: "it takes no modifier".into(),
        }),
    }
}

fn accepted_modifier(
    name: &str,
    spec: &Param,
    modifier: &str,
) -> Result<StringModifier, SearchParamError> {
    spec.modifiers
        .iter()
        .copied()
        .find(|m| m.name() == modifier)
        .ok_or_else(|| SearchParamError::Modifier {
            name: name.to_owned(),
            modifier: shown(modifier),
            accepted: if spec.modifiers.is_empty() {
                "it takes no modifier here".into()
            } else {
                format!(
                    "accepted: {}",
                    spec.modifiers
                        .iter()
                        .map(|m| format!("`:{}`", m.name()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        })
}

/// `_count` or `_offset`: an integer, one past 64 bits held at the end of the range (a huge
/// `_count` is capped as any over the cap is; a huge `_offset` is past every match).
fn saturating(name: &str, text: &str) -> Result<i64, SearchParamError> {
    let t = text.trim();
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(t.parse().unwrap_or(if t.starts_with('-') {
            i64::MIN
        } else {
            i64::MAX
        }));
    }
    integer(name, text)
}

fn integer(name: &str, text: &str) -> Result<i64, SearchParamError> {
    text.trim()
        .parse()
        .map_err(|_| SearchParamError::NotInteger(name.to_owned()))
}

/// A caller's value as its declared type reads it, and whether it can match nothing.
fn typed(name: &str, spec: &Param, text: &str) -> Result<(Value, bool), SearchParamError> {
    match spec.kind {
        ParamType::Integer => {
            let n = integer(name, text)?;
            if let Some(m) = spec.max
                && n > m
                && name != "_count"
            {
                return Err(SearchParamError::TooLarge {
                    name: name.to_owned(),
                    max: m,
                });
            }
            Ok((Value::from(n), false))
        }
        ParamType::Date => {
            let bare = text.get(2..).filter(|_| {
                ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]
                    .iter()
                    .any(|p| text.starts_with(p))
            });
            crate::model::fhir::date_time(&Value::String(bare.unwrap_or(text).to_owned()))
                .map_err(|_| SearchParamError::NotDate(name.to_owned()))?;
            Ok((Value::String(text.to_owned()), false))
        }
        ParamType::String => Ok((Value::String(text.to_owned()), false)),
        ParamType::Token => {
            let t = token(text).map_err(|problem| SearchParamError::Token {
                name: name.to_owned(),
                problem,
            })?;
            let other = match &t.system {
                Some(s) if !spec.systems.is_empty() && !spec.systems.contains(s) => Some(s),
                _ => None,
            };
            let nothing = match (other, spec.other_system) {
                (None, _) => false,
                (Some(_), OtherSystem::Empty) => true,
                (Some(s), OtherSystem::Refuse) => {
                    return Err(SearchParamError::System {
                        name: name.to_owned(),
                        system: if s.is_empty() {
                            "(none)".into()
                        } else {
                            shown(s)
                        },
                        accepted: spec.systems.join(", "),
                    });
                }
            };
            Ok((token_value(&t, text), nothing))
        }
    }
}

/// A search's parameters as a FHIR server takes them in a query (a FHIR source without a
/// request template): tokens as the caller wrote them, a string's modifier after its name,
/// `_offset` left out when 0.
pub fn fhir_query(params: &Value) -> Vec<(String, String)> {
    let Value::Object(o) = params else {
        return Vec::new();
    };
    let modifier = |k: &str| {
        o.get(MODIFIERS)
            .and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
    };
    let mut out = Vec::new();
    for (k, v) in o {
        if k == MODIFIERS || (k == "_offset" && v.as_i64() == Some(0)) {
            continue;
        }
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Object(t) => match t.get("text") {
                Some(Value::String(s)) => s.clone(),
                _ => continue,
            },
            other => other.to_string(),
        };
        let key = match modifier(k) {
            Some(m) => format!("{k}:{m}"),
            None => k.clone(),
        };
        out.push((key, text));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn param(kind: ParamType) -> Param {
        Param {
            kind,
            required: false,
            default: None,
            max: None,
            description: None,
            systems: Vec::new(),
            other_system: OtherSystem::Refuse,
            modifiers: Vec::new(),
        }
    }

    fn search(params: Vec<(&str, Param)>) -> BTreeMap<String, Param> {
        params.into_iter().map(|(k, p)| (k.to_owned(), p)).collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn tokens_read_as_fhir_writes_them() {
        let t = |s| token(s);
        assert_eq!(
            t("http://x|1"),
            Ok(Token {
                system: Some("http://x".into()),
                code: "1".into()
            })
        );
        assert_eq!(
            t("|1"),
            Ok(Token {
                system: Some(String::new()),
                code: "1".into()
            })
        );
        assert_eq!(
            t("1"),
            Ok(Token {
                system: None,
                code: "1".into()
            })
        );
        assert_eq!(
            t(r"a\|b\,c\$d\\e"),
            Ok(Token {
                system: None,
                code: r"a|b,c$d\e".into()
            })
        );
        assert_eq!(t("|"), Err(TokenProblem::Bare));
        assert_eq!(t("a|b|c"), Err(TokenProblem::TooManyBars));
        assert_eq!(t(""), Err(TokenProblem::Empty));
        assert_eq!(t("http://x|"), Err(TokenProblem::NoCode));
        assert_eq!(t("1,2"), Err(TokenProblem::OrList));
        assert_eq!(t(r"a\n"), Err(TokenProblem::BadEscape));
        assert_eq!(t("a\\"), Err(TokenProblem::BadEscape));
    }

    #[test]
    fn declared_systems_refuse_or_match_nothing() {
        let mut p = param(ParamType::Token);
        p.systems = vec!["http://rx".into()];
        let s = search(vec![("code", p.clone())]);
        let q = parse(&s, &pairs(&[("code", "http://rx|42")])).expect("accepted");
        assert_eq!(
            q.params["code"],
            json!({"system": "http://rx", "code": "42", "text": "http://rx|42"})
        );
        assert!(!q.matches_nothing);
        let any = parse(&s, &pairs(&[("code", "42")])).expect("any system");
        assert_eq!(any.params["code"], json!({"code": "42", "text": "42"}));
        let e = parse(&s, &pairs(&[("code", "http://snomed|42")])).expect_err("refused");
        assert!(e.to_string().contains("http://rx"), "{e}");
        let none = parse(&s, &pairs(&[("code", "|42")])).expect_err("no system");
        assert!(none.to_string().contains("(none)"), "{none}");
        p.other_system = OtherSystem::Empty;
        let s = search(vec![("code", p)]);
        let q = parse(&s, &pairs(&[("code", "http://snomed|42")])).expect("empty");
        assert!(q.matches_nothing);
    }

    #[test]
    fn modifiers_only_where_declared() {
        let mut name = param(ParamType::String);
        name.modifiers = vec![StringModifier::Exact];
        let s = search(vec![("name", name), ("code", param(ParamType::Token))]);
        let q = parse(&s, &pairs(&[("name:exact", "Foo")])).expect("exact");
        assert_eq!(q.params["name"], "Foo");
        assert_eq!(q.params[MODIFIERS]["name"], "exact");
        let plain = parse(&s, &pairs(&[("name", "Foo")])).expect("plain");
        assert_eq!(plain.params[MODIFIERS]["name"], "");
        let e = parse(&s, &pairs(&[("name:contains", "Foo")])).expect_err("undeclared");
        assert!(e.to_string().contains("`name`"), "{e}");
        assert!(e.to_string().contains("`:exact`"), "{e}");
        let e = parse(&s, &pairs(&[("code:text", "x")])).expect_err("token");
        assert!(e.to_string().contains("`code`"), "{e}");
        let e = parse(&s, &pairs(&[("name", "a"), ("name:exact", "b")])).expect_err("AND");
        assert_eq!(e, SearchParamError::Repeated("name".into()));
        assert_eq!(
            fhir_query(&q.params),
            vec![
                ("name:exact".to_owned(), "Foo".to_owned()),
                ("_count".to_owned(), "20".to_owned())
            ]
        );
    }
}
