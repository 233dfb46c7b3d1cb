//! Checks of sources, sinks, authentication, pagination and request templates.

use std::path::PathBuf;
use std::time::Duration;

use super::context::{Ctx, segs};
use crate::config::spec::{
    AuthSpec, BundleMode, Method, PaginationSpec, RequestSpec, SinkSpec, SourceSpec,
};
use crate::model::jsonpath::Query;
use crate::model::template::Templates;
use crate::model::{Auth, FhirSink, Pagination, Request, Secret, Sink, Source};

fn with<'p>(base: &[&'p str], more: &[&'p str]) -> Vec<&'p str> {
    base.iter().chain(more.iter()).copied().collect()
}

/// Checks a source written at `at` (`spec` of a Source, `spec.source` of a Connector).
pub fn source(ctx: &mut Ctx<'_>, name: &str, s: &SourceSpec, at: &[&str]) -> Option<Source> {
    let errors = ctx.diags.len();
    let url_at = with(at, &["url"]);
    let url = url(ctx, &url_at, &s.url);
    let mut headers = Vec::new();
    for (k, v) in &s.headers {
        let h = with(at, &["headers", k]);
        header(ctx, &h, k, v);
        headers.push((k.clone(), Secret(v.clone())));
    }
    let auth = s
        .auth
        .as_ref()
        .and_then(|a| auth(ctx, &with(at, &["auth"]), a));
    let timeout = ctx.duration(
        &with(at, &["timeout"]),
        s.timeout.as_deref(),
        Duration::from_secs(30),
    );
    let pagination = s
        .pagination
        .as_ref()
        .and_then(|p| pagination(ctx, &with(at, &["pagination"]), p));
    if s.fhir_version.is_some() && s.kind != crate::config::spec::SourceType::Fhir {
        ctx.error(
            &with(at, &["fhirVersion"]),
            "`fhirVersion` is for sources of `type: fhir`",
            None,
        );
    }
    (ctx.diags.len() == errors).then(|| Source {
        name: name.to_owned(),
        url: url.unwrap_or_else(placeholder_url),
        kind: s.kind,
        fhir_version: s.fhir_version,
        headers,
        auth,
        timeout,
        retries: s.retries.unwrap_or(2),
        concurrency: s.concurrency.unwrap_or(16),
        pagination,
    })
}

/// The URL used for a value whose secret is unresolved (validation only, never served).
fn placeholder_url() -> url::Url {
    url::Url::parse("http://unresolved.invalid/").expect("a valid URL")
}

/// Checks an absolute `http(s)` URL.
pub fn url(ctx: &mut Ctx<'_>, at: &[&str], text: &str) -> Option<url::Url> {
    if ctx.unresolved(at) {
        return None;
    }
    match url::Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            if u.fragment().is_some() {
                ctx.error(
                    at,
                    format!(
                        "{} has a fragment (`#...`), which is never sent",
                        ctx.show(at, text)
                    ),
                    None,
                );
            }
            Some(u)
        }
        Ok(_) => {
            ctx.error(
                at,
                format!("{} is not an http or https URL", ctx.show(at, text)),
                Some("use an `http://` or `https://` URL".into()),
            );
            None
        }
        Err(e) => {
            let hint =
                (!text.contains("://")).then(|| "write the scheme: `https://host/path`".to_owned());
            ctx.error(
                at,
                format!("{} is not a valid URL: {e}", ctx.show(at, text)),
                hint,
            );
            None
        }
    }
}

fn header(ctx: &mut Ctx<'_>, at: &[&str], name: &str, value: &str) {
    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
        ctx.error_key(at, format!("`{name}` is not a valid header name"), None);
    }
    if !ctx.unresolved(at) && reqwest::header::HeaderValue::from_str(value).is_err() {
        ctx.error(
            at,
            format!(
                "{} is not a valid header value (it has control characters)",
                ctx.show(at, value)
            ),
            None,
        );
    }
}

/// Names the keys of an exactly-one-of object that are set, and reports zero or several.
pub fn exactly_one(
    ctx: &mut Ctx<'_>,
    at: &[&str],
    what: &str,
    set: &[(&str, bool)],
) -> Option<usize> {
    let chosen: Vec<usize> = set
        .iter()
        .enumerate()
        .filter(|(_, (_, on))| *on)
        .map(|(i, _)| i)
        .collect();
    let names: Vec<&str> = set.iter().map(|(n, _)| *n).collect();
    match chosen.as_slice() {
        [one] => Some(*one),
        [] => {
            ctx.error(
                at,
                format!("{what} needs one of: {}", names.join(", ")),
                None,
            );
            None
        }
        many => {
            let given: Vec<&str> = many.iter().map(|i| names[*i]).collect();
            ctx.error(
                at,
                format!(
                    "{what} takes exactly one of {}, found {}",
                    names.join(", "),
                    given.join(" and ")
                ),
                None,
            );
            None
        }
    }
}

/// Checks outbound authentication.
pub fn auth(ctx: &mut Ctx<'_>, at: &[&str], a: &AuthSpec) -> Option<Auth> {
    let which = exactly_one(
        ctx,
        at,
        "auth",
        &[
            ("bearer", a.bearer.is_some()),
            ("apiKey", a.api_key.is_some()),
            ("basic", a.basic.is_some()),
        ],
    )?;
    match which {
        0 => a
            .bearer
            .as_ref()
            .map(|b| Auth::Bearer(Secret(b.token.clone()))),
        1 => a.api_key.as_ref().map(|k| {
            header(ctx, &with(at, &["apiKey", "value"]), &k.header, &k.value);
            Auth::ApiKey {
                header: k.header.clone(),
                value: Secret(k.value.clone()),
            }
        }),
        _ => a.basic.as_ref().map(|b| Auth::Basic {
            username: Secret(b.username.clone()),
            password: Secret(b.password.clone()),
        }),
    }
}

fn pagination(ctx: &mut Ctx<'_>, at: &[&str], p: &PaginationSpec) -> Option<Pagination> {
    let which = exactly_one(
        ctx,
        at,
        "pagination",
        &[
            ("nextUrl", p.next_url.is_some()),
            ("linkHeader", p.link_header == Some(true)),
            ("fhir", p.fhir == Some(true)),
            ("offset", p.offset.is_some()),
            ("page", p.page.is_some()),
            ("cursor", p.cursor.is_some()),
        ],
    )?;
    Some(match which {
        0 => Pagination::NextUrl(query(
            ctx,
            &with(at, &["nextUrl"]),
            p.next_url.as_deref().unwrap_or("$"),
        )?),
        1 => Pagination::LinkHeader,
        2 => Pagination::Fhir,
        3 => {
            let o = p.offset.as_ref()?;
            Pagination::Offset {
                param: o.param.clone(),
                limit_param: o.limit_param.clone(),
                limit: o.limit,
            }
        }
        4 => {
            let pg = p.page.as_ref()?;
            Pagination::Page {
                param: pg.param.clone(),
                start: pg.start.unwrap_or(1),
            }
        }
        _ => {
            let c = p.cursor.as_ref()?;
            Pagination::Cursor {
                path: query(ctx, &with(at, &["cursor", "path"]), &c.path)?,
                param: c.param.clone(),
            }
        }
    })
}

/// Compiles a JSONPath query written at `at`.
pub fn query(ctx: &mut Ctx<'_>, at: &[&str], text: &str) -> Option<Query> {
    match Query::parse(text) {
        Ok(q) => Some(q),
        Err(e) => {
            ctx.error(
                at,
                e.to_string(),
                Some("JSONPath as in RFC 9535, e.g. `$.results[*]`".into()),
            );
            None
        }
    }
}

/// Compiles a request's templates into the connector's registry.
pub fn request(
    ctx: &mut Ctx<'_>,
    at: &[&str],
    r: &RequestSpec,
    templates: &mut Templates,
    compiler_tables: &std::collections::BTreeMap<String, crate::model::template::Table>,
) -> Option<Request> {
    let errors = ctx.diags.len();
    let mut text = |ctx: &mut Ctx<'_>, path: Vec<&str>, source: &str| {
        let name = crate::config::yaml::display_path(&segs(&path));
        match templates.compile(&name, source) {
            Ok(t) => Some(t),
            Err(e) => {
                let place = e
                    .position
                    .map(|(l, c)| format!(" (template line {l}, column {c})"))
                    .unwrap_or_default();
                ctx.error(&path, format!("{}{place}", e.message), e.hint);
                None
            }
        }
    };
    if !r.path.starts_with('/') {
        ctx.error(
            &with(at, &["path"]),
            format!("`{}` must start with `/`", r.path),
            None,
        );
    }
    let path = text(ctx, with(at, &["path"]), &r.path);
    let mut query = Vec::new();
    for (k, v) in &r.query {
        if let Some(t) = text(ctx, with(at, &["query", k]), v) {
            query.push((k.clone(), t));
        }
    }
    let mut headers = Vec::new();
    for (k, v) in &r.headers {
        if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
            ctx.error_key(
                &with(at, &["headers", k]),
                format!("`{k}` is not a valid header name"),
                None,
            );
        }
        if let Some(t) = text(ctx, with(at, &["headers", k]), v) {
            headers.push((k.clone(), t));
        }
    }
    let body = match &r.body {
        None => None,
        Some(_) => {
            let body_at = segs(&with(at, &["body"]));
            let node = ctx.doc.node.descend(&body_at).clone();
            let mut compiler = crate::config::mapping::Compiler {
                templates,
                tables: compiler_tables,
                errors: Vec::new(),
            };
            let expr = compiler.compile(&node, &body_at);
            for e in compiler.errors {
                ctx.error_owned(&e.at, e.message, e.hint);
            }
            Some(expr)
        }
    };
    let method = r.method.unwrap_or(Method::Get);
    if method == Method::Get && r.body.is_some() {
        ctx.error(
            &with(at, &["body"]),
            "a GET request has no body",
            Some("set `method: POST`".into()),
        );
    }
    (ctx.diags.len() == errors).then(|| Request {
        method,
        path: path.unwrap_or(crate::model::template::Text::Const("/".into())),
        query,
        headers,
        body,
    })
}

/// Checks a sink document.
pub fn sink(ctx: &mut Ctx<'_>, name: &str, s: &SinkSpec) -> Option<Sink> {
    let which = exactly_one(
        ctx,
        &["spec"],
        "a sink",
        &[("fhir", s.fhir.is_some()), ("ndjson", s.ndjson.is_some())],
    )?;
    let errors = ctx.diags.len();
    let sink = if which == 0 {
        let f = s.fhir.as_ref()?;
        let url = url(ctx, &["spec", "fhir", "url"], &f.url);
        let auth = f
            .auth
            .as_ref()
            .and_then(|a| auth(ctx, &["spec", "fhir", "auth"], a));
        let timeout = ctx.duration(
            &["spec", "fhir", "timeout"],
            f.timeout.as_deref(),
            Duration::from_secs(60),
        );
        Sink::Fhir(FhirSink {
            name: name.to_owned(),
            url: url.unwrap_or_else(placeholder_url),
            version: f.version,
            auth,
            timeout,
            batch_size: f.batch_size.unwrap_or(100),
            mode: f.mode.unwrap_or(BundleMode::Transaction),
            retries: f.retries.unwrap_or(3),
            provenance: f.provenance.unwrap_or(false),
        })
    } else {
        let dir = &s.ndjson.as_ref()?.dir;
        if dir.is_empty() {
            ctx.error(&["spec", "ndjson", "dir"], "the directory is empty", None);
        }
        Sink::Ndjson {
            name: name.to_owned(),
            dir: PathBuf::from(dir),
        }
    };
    (ctx.diags.len() == errors).then_some(sink)
}
