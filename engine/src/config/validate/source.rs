//! Checks of sources, sinks, authentication, pagination and request templates.

use std::path::PathBuf;
use std::time::Duration;

use super::context::{Ctx, segs};
use super::credentials;
use crate::config::spec::{
    ApiKeySpec, AuthSpec, BasicSpec, BearerSpec, BundleMode, CursorSpec, FhirSinkSpec, Method,
    NdjsonSinkSpec, OffsetSpec, PageSpec, PaginationSpec, RequestSpec, ResponseRuleSpec,
    RuleAction, SinkSpec, SourceSpec, StatusesSpec,
};
use crate::model::jsonpath::Query;
use crate::model::template::Templates;
use crate::model::{
    Auth, BreakerSettings, DEFAULT_BREAKER_COOL_DOWN, DEFAULT_BREAKER_FAILURES, FhirSink,
    Pagination, Rate, Request, ResponseRule, Secret, Sink, Source, Statuses,
};

fn with<'p>(base: &[&'p str], more: &[&'p str]) -> Vec<&'p str> {
    base.iter().chain(more.iter()).copied().collect()
}

/// Checks a source written at `at` (`spec` of a Source, `spec.source` of a Connector).
pub fn source(ctx: &mut Ctx<'_>, name: &str, s: &SourceSpec, at: &[&str]) -> Option<Source> {
    let errors = ctx.diags.len();
    let url_at = with(at, &["url"]);
    enum Where<'a> {
        Url(&'a str),
        Path(&'a str),
    }
    let (url, files) = match exactly_one(
        ctx,
        at,
        "a source",
        vec![
            ("url", s.url.as_deref().map(Where::Url)),
            ("path", s.path.as_deref().map(Where::Path)),
        ],
    ) {
        Some(Where::Url(u)) => (url(ctx, &url_at, u), None),
        Some(Where::Path(p)) => {
            let files = super::format::files(ctx, &with(at, &["path"]), p);
            if s.pagination.is_some() {
                ctx.error_key(
                    &with(at, &["pagination"]),
                    "a file source has no pages",
                    None,
                );
            }
            // Never called over HTTP: a URL that names no host.
            (url::Url::parse("file:///").ok(), files)
        }
        None => (None, None),
    };
    let format = super::format::format(
        ctx,
        &with(at, &["format"]),
        s.format.as_ref(),
        s.fhir_version
            .unwrap_or(crate::model::vocabulary::FhirVersion::R4),
    );
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
    let tls = s
        .tls
        .as_ref()
        .and_then(|t| credentials::tls(ctx, &with(at, &["tls"]), t));
    let timeout = ctx.duration(
        &with(at, &["timeout"]),
        s.timeout.as_deref(),
        Duration::from_secs(30),
    );
    let pagination = s
        .pagination
        .as_ref()
        .and_then(|p| pagination(ctx, &with(at, &["pagination"]), p));
    let max_answer = ctx.size(
        &with(at, &["maxAnswer"]),
        s.max_answer.as_deref(),
        crate::model::DEFAULT_MAX_ANSWER,
    );
    let statuses = statuses(ctx, &with(at, &["statuses"]), s.statuses.as_ref());
    let breaker = breaker(ctx, &with(at, &["breaker"]), s.breaker.as_ref());
    let rate = s
        .rate
        .as_ref()
        .and_then(|r| rate(ctx, &with(at, &["rate"]), r));
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
        tls,
        timeout,
        retries: s.retries.unwrap_or(2),
        concurrency: s
            .concurrency
            .unwrap_or(crate::model::DEFAULT_SOURCE_CONCURRENCY),
        pagination,
        max_pages: s
            .pagination
            .as_ref()
            .and_then(|p| p.max_pages)
            .unwrap_or(DEFAULT_MAX_PAGES),
        max_values: s.max_values.map_or(DEFAULT_MAX_VALUES, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        }),
        max_answer,
        statuses,
        breaker,
        rate,
        format,
        files,
    })
}

/// Most requests a second a `rate` may give.
const MAX_RATE: f64 = 100_000.0;

/// Checks a source's requests-per-second budget: a rate above 0 (a rate of 0 would make every
/// request wait forever, or fail), at most `MAX_RATE`; the burst defaults to the rate rounded
/// up.
fn rate(ctx: &mut Ctx<'_>, at: &[&str], r: &crate::config::spec::RateSpec) -> Option<Rate> {
    let per_second = r.per_second;
    if !(per_second.is_finite() && per_second > 0.0 && per_second <= MAX_RATE) {
        ctx.error(
            &with(at, &["perSecond"]),
            format!("`perSecond` is {per_second}: it must be more than 0 and at most 100000"),
            Some(
                "e.g. `rate: { perSecond: 10, burst: 20 }`, or leave `rate` out for no budget"
                    .into(),
            ),
        );
        return None;
    }
    let burst = r
        .burst
        .unwrap_or_else(|| (per_second.ceil() as u32).max(1))
        .max(1);
    Some(Rate { per_second, burst })
}

/// A source's circuit breaker settings, defaults where unset.
fn breaker(
    ctx: &mut Ctx<'_>,
    at: &[&str],
    b: Option<&crate::config::spec::BreakerSpec>,
) -> BreakerSettings {
    BreakerSettings {
        // The schema holds it to at least 1.
        failures: b
            .and_then(|b| b.failures)
            .unwrap_or(DEFAULT_BREAKER_FAILURES),
        cool_down: ctx.duration(
            &with(at, &["coolDown"]),
            b.and_then(|b| b.cool_down.as_deref()),
            DEFAULT_BREAKER_COOL_DOWN,
        ),
    }
}

/// Most pages read for one answer or run when `pagination.maxPages` is not given.
const DEFAULT_MAX_PAGES: u32 = 1000;
/// Most JSON values in one answer when `maxValues` is not given: some 100 MiB parsed at worst
/// (one-key objects), and room for a page of 1,000 FHIR resources of 500 values each.
const DEFAULT_MAX_VALUES: usize = 500_000;

/// Checks how a source's answers read: retried statuses are error statuses, and `errorWhen`
/// is a JSONPath query.
fn statuses(ctx: &mut Ctx<'_>, at: &[&str], s: Option<&StatusesSpec>) -> Statuses {
    let retry = match s.and_then(|s| s.retry.as_ref()) {
        None => crate::model::DEFAULT_RETRY_STATUSES.to_vec(),
        Some(list) => {
            for (i, code) in list.iter().enumerate() {
                if !(400..=599).contains(code) {
                    let index = i.to_string();
                    ctx.error(
                        &with(at, &["retry", &index]),
                        format!("{code} is not an error status: only 400 to 599 are retried"),
                        Some("e.g. `retry: [429, 503]`".into()),
                    );
                }
            }
            list.clone()
        }
    };
    let error_when = s
        .and_then(|s| s.error_when.as_deref())
        .and_then(|q| query(ctx, &with(at, &["errorWhen"]), q));
    let rules = s.map_or_else(Vec::new, |s| {
        s.rules
            .iter()
            .enumerate()
            .filter_map(|(n, r)| rule(ctx, &with(at, &["rules", &n.to_string()]), r))
            .collect()
    });
    Statuses {
        not_found: s.and_then(|s| s.not_found),
        retry,
        error_when,
        rules,
    }
}

/// Checks a response classification rule: at least one condition, statuses from 200 to 599,
/// JSONPath queries, header names, and only the settings its action reads.
fn rule(ctx: &mut Ctx<'_>, at: &[&str], r: &ResponseRuleSpec) -> Option<ResponseRule> {
    let errors = ctx.diags.len();
    if r.status.is_none() && r.path.is_none() && r.header.is_none() {
        ctx.error(
            at,
            "a rule needs at least one condition: `status`, `path` or `header`",
            Some("e.g. `{ path: $.error.code, equals: THROTTLED, action: rateLimited }`".into()),
        );
    }
    let statuses = r.status.clone().unwrap_or_default();
    for (i, code) in statuses.iter().enumerate() {
        if !(200..=599).contains(code) {
            let index = i.to_string();
            ctx.error(
                &with(at, &["status", &index]),
                format!("{code} is not a status a rule can read: only 200 to 599"),
                None,
            );
        }
    }
    if let Some(v) = &r.equals {
        if r.path.is_none() {
            ctx.error_key(&with(at, &["equals"]), "`equals` needs a `path`", None);
        }
        if v.is_object() || v.is_array() || v.is_null() {
            ctx.error(
                &with(at, &["equals"]),
                "`equals` is a string, a number or a boolean",
                None,
            );
        }
    }
    let path = r
        .path
        .as_deref()
        .and_then(|q| query(ctx, &with(at, &["path"]), q));
    let message = r
        .message
        .as_deref()
        .and_then(|q| query(ctx, &with(at, &["message"]), q));
    let delay_path = r
        .delay_path
        .as_deref()
        .and_then(|q| query(ctx, &with(at, &["delayPath"]), q));
    let header_name = |ctx: &mut Ctx<'_>, key: &str, name: &Option<String>| {
        let name = name.as_ref()?;
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            ctx.error(
                &with(at, &[key]),
                format!("`{name}` is not a valid header name"),
                None,
            );
            return None;
        }
        Some(name.to_ascii_lowercase())
    };
    let header = header_name(ctx, "header", &r.header);
    let delay_header = header_name(ctx, "delayHeader", &r.delay_header);
    let waits = matches!(r.action, RuleAction::Retry | RuleAction::RateLimited);
    for (key, given) in [
        ("delayPath", r.delay_path.is_some()),
        ("delayHeader", r.delay_header.is_some()),
    ] {
        if given && !waits {
            ctx.error_key(
                &with(at, &[key]),
                format!("`{key}` is for `retry` and `rateLimited` rules"),
                None,
            );
        }
    }
    if r.message.is_some() && !matches!(r.action, RuleAction::Error | RuleAction::Retry) {
        ctx.error_key(
            &with(at, &["message"]),
            "`message` is for `error` and `retry` rules",
            None,
        );
    }
    (ctx.diags.len() == errors).then(|| ResponseRule {
        statuses,
        path,
        equals: r.equals.clone(),
        header,
        action: r.action,
        message,
        delay_path,
        delay_header,
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

/// The one choice of an exactly-one-of object that is set, or a diagnostic for none or
/// several. Each choice is a key and, when it is set, what the caller makes of it (typically a
/// variant of a local enum, so that the caller's `match` is checked for every choice).
pub fn exactly_one<T>(
    ctx: &mut Ctx<'_>,
    at: &[&str],
    what: &str,
    choices: Vec<(&str, Option<T>)>,
) -> Option<T> {
    let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
    let mut given: Vec<(&str, T)> = choices
        .into_iter()
        .filter_map(|(n, c)| c.map(|c| (n, c)))
        .collect();
    if let [_] = given.as_slice() {
        return given.pop().map(|(_, c)| c);
    }
    let message = if given.is_empty() {
        format!("{what} needs one of: {}", names.join(", "))
    } else {
        let keys: Vec<&str> = given.iter().map(|(n, _)| *n).collect();
        format!(
            "{what} takes exactly one of {}, found {}",
            names.join(", "),
            keys.join(" and ")
        )
    };
    ctx.error(at, message, None);
    None
}

/// Checks outbound authentication.
pub fn auth(ctx: &mut Ctx<'_>, at: &[&str], a: &AuthSpec) -> Option<Auth> {
    enum Kind<'a> {
        Bearer(&'a BearerSpec),
        ApiKey(&'a ApiKeySpec),
        Basic(&'a BasicSpec),
        OAuth2(&'a crate::config::spec::OAuth2Spec),
        Smart(&'a crate::config::spec::SmartBackendSpec),
    }
    let kind = exactly_one(
        ctx,
        at,
        "auth",
        vec![
            ("bearer", a.bearer.as_ref().map(Kind::Bearer)),
            ("apiKey", a.api_key.as_ref().map(Kind::ApiKey)),
            ("basic", a.basic.as_ref().map(Kind::Basic)),
            ("oauth2", a.oauth2.as_ref().map(Kind::OAuth2)),
            ("smartBackend", a.smart_backend.as_ref().map(Kind::Smart)),
        ],
    )?;
    Some(match kind {
        Kind::Bearer(b) => Auth::Bearer(Secret(b.token.clone())),
        Kind::ApiKey(k) => {
            header(ctx, &with(at, &["apiKey", "value"]), &k.header, &k.value);
            Auth::ApiKey {
                header: k.header.clone(),
                value: Secret(k.value.clone()),
            }
        }
        Kind::Basic(b) => Auth::Basic {
            username: Secret(b.username.clone()),
            password: Secret(b.password.clone()),
        },
        Kind::OAuth2(o) => Auth::OAuth2(Box::new(credentials::oauth2(
            ctx,
            &with(at, &["oauth2"]),
            o,
            url,
        )?)),
        Kind::Smart(s) => Auth::SmartBackend(Box::new(credentials::smart_backend(
            ctx,
            &with(at, &["smartBackend"]),
            s,
            url,
        )?)),
    })
}

fn pagination(ctx: &mut Ctx<'_>, at: &[&str], p: &PaginationSpec) -> Option<Pagination> {
    enum Kind<'a> {
        NextUrl(&'a str),
        LinkHeader,
        Fhir,
        Offset(&'a OffsetSpec),
        Page(&'a PageSpec),
        Cursor(&'a CursorSpec),
    }
    let kind = exactly_one(
        ctx,
        at,
        "pagination",
        vec![
            ("nextUrl", p.next_url.as_deref().map(Kind::NextUrl)),
            (
                "linkHeader",
                (p.link_header == Some(true)).then_some(Kind::LinkHeader),
            ),
            ("fhir", (p.fhir == Some(true)).then_some(Kind::Fhir)),
            ("offset", p.offset.as_ref().map(Kind::Offset)),
            ("page", p.page.as_ref().map(Kind::Page)),
            ("cursor", p.cursor.as_ref().map(Kind::Cursor)),
        ],
    )?;
    Some(match kind {
        Kind::NextUrl(next) => Pagination::NextUrl(query(ctx, &with(at, &["nextUrl"]), next)?),
        Kind::LinkHeader => Pagination::LinkHeader,
        Kind::Fhir => Pagination::Fhir,
        Kind::Offset(o) => Pagination::Offset {
            param: o.param.clone(),
            limit_param: o.limit_param.clone(),
            limit: o.limit,
        },
        Kind::Page(pg) => Pagination::Page {
            param: pg.param.clone(),
            start: pg.start.unwrap_or(1),
        },
        Kind::Cursor(c) => Pagination::Cursor {
            path: query(ctx, &with(at, &["cursor", "path"]), &c.path)?,
            param: c.param.clone(),
        },
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
    enum Kind<'a> {
        Fhir(&'a FhirSinkSpec),
        Ndjson(&'a NdjsonSinkSpec),
    }
    let kind = exactly_one(
        ctx,
        &["spec"],
        "a sink",
        vec![
            ("fhir", s.fhir.as_ref().map(Kind::Fhir)),
            ("ndjson", s.ndjson.as_ref().map(Kind::Ndjson)),
        ],
    )?;
    let errors = ctx.diags.len();
    let sink = match kind {
        Kind::Fhir(f) => {
            let url = url(ctx, &["spec", "fhir", "url"], &f.url);
            let auth = f
                .auth
                .as_ref()
                .and_then(|a| auth(ctx, &["spec", "fhir", "auth"], a));
            let tls = f
                .tls
                .as_ref()
                .and_then(|t| credentials::tls(ctx, &["spec", "fhir", "tls"], t));
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
                tls,
                timeout,
                batch_size: f.batch_size.unwrap_or(100),
                concurrency: f.concurrency.unwrap_or(1),
                mode: f.mode.unwrap_or(BundleMode::Transaction),
                retries: f.retries.unwrap_or(3),
                provenance: f.provenance.unwrap_or(false),
            })
        }
        Kind::Ndjson(n) => {
            if n.dir.is_empty() {
                ctx.error(&["spec", "ndjson", "dir"], "the directory is empty", None);
            }
            Sink::Ndjson {
                name: name.to_owned(),
                dir: PathBuf::from(&n.dir),
            }
        }
    };
    (ctx.diags.len() == errors).then_some(sink)
}
