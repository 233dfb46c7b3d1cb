//! Upstream calls built from a definition's request templates. Caller values are
//! percent-encoded as whole path segments where a template puts them in a path, encoded as
//! query values by the URL, and refused in headers when they hold line breaks: they cannot
//! change the upstream host, add path segments or add headers.

use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::model::mapping::{Evaluator, Input};
use crate::model::template::Scope;
use crate::model::{Connector, Request};
use crate::runtime::problem::Problem;
use crate::runtime::upstream::Call;

/// Why an upstream call cannot be built from a request template and the caller's values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("cannot build the upstream request: {0}")]
    Template(String),
    /// A caller value made only of dots would move the request to another path.
    #[error("a value in the upstream path cannot be `.` or `..`")]
    DotSegment,
    #[error("bad header name `{0}`")]
    HeaderName(String),
    #[error("a value for header `{0}` has characters a header cannot carry")]
    HeaderValue(String),
    #[error("cannot build the upstream request body: {0}")]
    Body(crate::model::mapping::MapError),
}

/// The caller's values cannot make the call: the caller's request is wrong (400).
impl From<RequestError> for Problem {
    fn from(e: RequestError) -> Problem {
        Problem::invalid(e.to_string())
    }
}

/// The call of `r` against the source at `base`, for caller `params` (and `id` of a read).
/// The error says what cannot be built.
pub fn build(
    connector: &Connector,
    base: &url::Url,
    r: &Request,
    params: &Value,
    id: Option<&str>,
) -> Result<Call, RequestError> {
    let templates = &connector.templates;
    let vars = &connector.vars;
    let id_value = id.map(|i| Value::String(i.to_owned()));
    let raw = Values::new(params, vars, id_value.as_ref());
    let encoded_params = encode_values(params);
    let encoded_id = id.map(|i| Value::String(encode_segment(i)));
    let in_path = Values::new(&encoded_params, vars, encoded_id.as_ref());
    let render = |t, scope: &Values<'_>| templates.render(t, scope).map_err(RequestError::Template);
    let path = render(&r.path, &in_path)?;
    let mut url = base.clone();
    let wanted = format!("{}{path}", base.path().trim_end_matches('/'));
    url.set_path(&wanted);
    if url.path() != wanted {
        // `.` and `..` segments (also percent-encoded) are removed by URL normalisation: a
        // caller value made only of dots would move the request to another path.
        return Err(RequestError::DotSegment);
    }
    for (k, t) in &r.query {
        let v = render(t, &raw)?;
        if !v.is_empty() {
            url.query_pairs_mut().append_pair(k, &v);
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    let mut headers = Vec::new();
    for (k, t) in &r.headers {
        let v = render(t, &raw)?;
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| RequestError::HeaderName(k.clone()))?;
        let value = HeaderValue::from_str(&v).map_err(|_| RequestError::HeaderValue(k.clone()))?;
        headers.push((name, value));
    }
    let body = match &r.body {
        None => None,
        Some(expr) => {
            let evaluator = Evaluator {
                templates,
                tables: templates.tables(),
            };
            let input = Input {
                record: &Value::Null,
                vars,
                params,
            };
            evaluator
                .evaluate(expr, input)
                .map_err(RequestError::Body)?
        }
    };
    let method = match r.method {
        crate::model::vocabulary::Method::Get => Method::GET,
        crate::model::vocabulary::Method::Post => Method::POST,
    };
    Ok(Call {
        method,
        url,
        headers,
        body,
    })
}

/// Template values of an upstream request.
struct Values<'a> {
    params: &'a Value,
    vars: &'a Value,
    id: Option<&'a Value>,
    context: std::cell::OnceCell<handlebars::Context>,
}

impl<'a> Values<'a> {
    fn new(params: &'a Value, vars: &'a Value, id: Option<&'a Value>) -> Self {
        Values {
            params,
            vars,
            id,
            context: std::cell::OnceCell::new(),
        }
    }
}

impl Scope for Values<'_> {
    fn value(&self, name: &str) -> Option<&Value> {
        match name {
            "params" => Some(self.params),
            "vars" => Some(self.vars),
            "id" => self.id,
            _ => None,
        }
    }

    fn context(&self) -> &handlebars::Context {
        self.context.get_or_init(|| {
            let mut m = Map::new();
            m.insert("params".into(), self.params.clone());
            m.insert("vars".into(), self.vars.clone());
            if let Some(id) = self.id {
                m.insert("id".into(), id.clone());
            }
            handlebars::Context::from(Value::Object(m))
        })
    }
}

/// Percent-encodes everything but the unreserved characters (letters, digits, `-`, `.`, `_`,
/// `~`), so that `/`, `?`, `#`, `%` and line breaks cannot act in a path. A value made only
/// of dots is still a dot segment: `build` refuses the call then.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encode_values(params: &Value) -> Value {
    match params {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), encode_values(v)))
                .collect(),
        ),
        Value::String(s) => Value::String(encode_segment(s)),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_values_cannot_escape_their_segment() {
        assert_eq!(encode_segment("a/b?c#d"), "a%2Fb%3Fc%23d");
        assert_eq!(encode_segment("lens.json"), "lens.json");
        assert_eq!(encode_segment("%2F"), "%252F");
        assert_eq!(encode_segment("x\r\ny"), "x%0D%0Ay");
        assert_eq!(
            encode_segment("http://evil.example/"),
            "http%3A%2F%2Fevil.example%2F"
        );
    }
}
