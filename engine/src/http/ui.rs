//! The status page at `/ui/`: server-rendered HTML (no script, no build step) of the same data
//! the admin API gives (`admin::summary` of every connector, dead letters, `/reload`), every
//! value escaped. It sits behind the admin layer (`auth`): reading it needs the reader role,
//! its actions (form POSTs: a cron run; a dead letter's replay and delete) the operator role.
//! Since a browser that holds a token (a gateway that adds it, say) sends it on any site's
//! form too, an action also needs the request to come from the page's own origin
//! (`Sec-Fetch-Site`, else `Origin`): a cross-site form is refused. The answers forbid
//! scripts, framing and caching.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

use crate::model::Strategy;
use crate::runtime::engine::Engine;
use crate::runtime::problem::{Problem, ProblemKind};

const PAGE: &str = include_str!("ui/page.html");
const STYLE: &str = include_str!("ui/style.css");
/// Most dead letters listed per connector (the count says how many there are).
const LISTED_DEAD_LETTERS: usize = 20;
/// Most characters of a dead letter's payload shown.
const SHOWN_PAYLOAD: usize = 2000;
/// Seconds between reloads of the page while a run is going.
const RUNNING_REFRESH: u32 = 2;
/// What the answers allow: styles from the page's own origin, forms sent to it, nothing else.
const POLICY: &str = "default-src 'none'; style-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";
/// Words that name a secret in a definition line quoted by a diagnostic.
const SECRET_WORDS: [&str; 9] = [
    "secret",
    "token",
    "password",
    "passwd",
    "apikey",
    "api-key",
    "api_key",
    "authorization",
    "credential",
];

/// The page's routes, merged into the admin routes (so behind `auth`).
pub(super) fn routes() -> Router<Arc<Engine>> {
    Router::new()
        .route("/ui", get(to_page))
        .route("/ui/", get(page))
        .route("/ui/style.css", get(style))
        .route("/ui/connectors/{name}/run", post(run))
        .route(
            "/ui/connectors/{name}/dead-letters/{id}/replay",
            post(replay_letter),
        )
        .route(
            "/ui/connectors/{name}/dead-letters/{id}/delete",
            post(delete_letter),
        )
}

/// `/ui` to `/ui/`, so that the page's relative links resolve below it.
async fn to_page() -> Response {
    (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, "ui/")]).into_response()
}

async fn style() -> Response {
    let mut r = ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response();
    guard_headers(&mut r);
    r
}

/// `?started=NAME`, after the run button: the page says so and looks again shortly.
/// `?connector=NAME&letter=ID&done=replayed|kept|deleted`, after a dead letter's button: the
/// page says what became of it.
#[derive(serde::Deserialize)]
struct Shown {
    started: Option<String>,
    connector: Option<String>,
    letter: Option<String>,
    done: Option<String>,
}

/// What a dead letter's button did, said on the page.
fn letter_notice(engine: &Engine, shown: &Shown) -> Option<String> {
    let (Some(name), Some(letter), Some(done)) = (&shown.connector, &shown.letter, &shown.done)
    else {
        return None;
    };
    if !(engine.pushes.contains_key(name) || engine.crons.contains_key(name)) {
        return None;
    }
    let letter = crate::runtime::dead_letters::LetterId::parse(letter).ok()?;
    let what = match done.as_str() {
        "replayed" => "was replayed: written, and removed from the dead letters",
        "kept" => "was replayed but not written: it stays, with the new reason",
        "deleted" => "was deleted",
        _ => return None,
    };
    Some(format!(
        "<p class=\"notice\" id=\"letter-done\">Dead letter <strong>{}</strong> of <strong>{}</strong> {what}.</p>",
        esc(letter.as_str()),
        esc(name)
    ))
}

async fn page(State(engine): State<Arc<Engine>>, Query(shown): Query<Shown>) -> Response {
    let started = shown
        .started
        .clone()
        .filter(|name| engine.crons.contains_key(name));
    let running = engine.crons.values().any(|j| j.is_running());
    let mut body = String::new();
    if let Some(name) = &started {
        let _ = write!(
            body,
            "<p class=\"notice\" id=\"started\">A run of <strong>{}</strong> was started; this page reloads until it is over.</p>",
            esc(name)
        );
    }
    if let Some(notice) = letter_notice(&engine, &shown) {
        body.push_str(&notice);
    }
    body.push_str(&reload_section(&engine));
    let mut sections = String::new();
    let mut rows = String::new();
    for c in &engine.model.connectors {
        let summary = super::admin::summary(&engine, c);
        rows.push_str(&overview_row(&summary));
        let letters = match (
            &c.strategy,
            engine.pushes.get(&c.name),
            engine.crons.get(&c.name),
        ) {
            (Strategy::Push(_), Some(ep), _) => {
                Some(ep.dead_letters_shown(LISTED_DEAD_LETTERS).await)
            }
            (Strategy::Cron(_), _, Some(job)) => {
                Some(job.runner.dead_letters_shown(LISTED_DEAD_LETTERS).await)
            }
            _ => None,
        };
        let oldest = match engine.pushes.get(&c.name) {
            Some(ep) => ep.oldest_queued().await,
            None => None,
        };
        sections.push_str(&connector_section(&summary, letters.as_ref(), oldest));
    }
    let _ = write!(
        body,
        "<h2>Connectors</h2><table id=\"connectors\"><tr><th>connector</th><th>strategy</th><th>sources</th><th>routes</th><th>state</th></tr>{rows}</table>{sections}"
    );
    let refresh = match (&started, running) {
        (Some(_), _) => "<meta http-equiv=\"refresh\" content=\"1; url=./\">\n".to_owned(),
        (None, true) => format!("<meta http-equiv=\"refresh\" content=\"{RUNNING_REFRESH}\">\n"),
        (None, false) => String::new(),
    };
    let html = PAGE
        .replace("{{refresh}}", &refresh)
        .replace("{{now}}", &esc(&engine.clock.now().to_rfc3339()))
        .replace("{{body}}", &body);
    let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    guard_headers(&mut r);
    r
}

/// The run button: the same as `POST /connectors/{name}/run`, from the page's own origin
/// only; then back to the page, which follows the run.
async fn run(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !same_origin(&headers, engine.limits.public_url.as_deref()) {
        tracing::info!(path = %format!("/ui/connectors/{name}/run"), "cross-site form refused");
        return Problem::new(
            ProblemKind::Forbidden,
            "this form is taken only from the status page itself (its own origin); scripts use POST /connectors/{name}/run",
        )
        .into_response();
    }
    let answer = super::admin::run_now(State(engine), Path(name.clone())).await;
    if answer.status() != StatusCode::ACCEPTED {
        return answer;
    }
    // From `/ui/connectors/NAME/run` back to `/ui/`, relative: the page may sit behind a
    // gateway's prefix.
    let to = format!("../../?started={}", query_value(&name));
    match HeaderValue::from_str(&to) {
        Ok(v) => (StatusCode::SEE_OTHER, [(header::LOCATION, v)]).into_response(),
        Err(_) => answer,
    }
}

/// A dead letter's replay button: the same as `POST /connectors/{name}/dead-letters/{id}/replay`,
/// from the page's own origin only; then back to the page, which says what became of it.
async fn replay_letter(
    State(engine): State<Arc<Engine>>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = cross_site(&engine, &headers, "replay") {
        return refused;
    }
    match super::admin::replay(&engine, &name, &id).await {
        Ok(crate::runtime::dead_letters::Replayed::Written { .. }) => {
            back_to_page(&name, &id, "replayed")
        }
        Ok(crate::runtime::dead_letters::Replayed::Kept { .. }) => back_to_page(&name, &id, "kept"),
        Err(p) => p.into_response(),
    }
}

/// A dead letter's delete button: the same as `DELETE /connectors/{name}/dead-letters/{id}`
/// (a form can only POST), from the page's own origin only; then back to the page.
async fn delete_letter(
    State(engine): State<Arc<Engine>>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = cross_site(&engine, &headers, "delete") {
        return refused;
    }
    match super::admin::delete(&engine, &name, &id).await {
        Ok(()) => back_to_page(&name, &id, "deleted"),
        Err(p) => p.into_response(),
    }
}

/// The refusal of a dead-letter form that does not come from the page's own origin.
fn cross_site(engine: &Engine, headers: &HeaderMap, action: &str) -> Option<Response> {
    if same_origin(headers, engine.limits.public_url.as_deref()) {
        return None;
    }
    tracing::info!(action, "cross-site dead-letter form refused");
    Some(
        Problem::new(
            ProblemKind::Forbidden,
            "this form is taken only from the status page itself (its own origin); scripts use the /connectors/{name}/dead-letters API",
        )
        .into_response(),
    )
}

/// From `/ui/connectors/NAME/dead-letters/ID/ACTION` back to `/ui/`, relative, saying what
/// became of the letter.
fn back_to_page(name: &str, id: &str, done: &str) -> Response {
    let to = format!(
        "../../../../?connector={}&letter={}&done={done}#c-{}",
        query_value(name),
        query_value(id),
        query_value(name)
    );
    match HeaderValue::from_str(&to) {
        Ok(v) => (StatusCode::SEE_OTHER, [(header::LOCATION, v)]).into_response(),
        Err(_) => StatusCode::SEE_OTHER.into_response(),
    }
}

/// Whether a form POST comes from the page's own origin: `Sec-Fetch-Site: same-origin` where
/// the browser sends it, else an `Origin` whose host is the request's `Host` (or the public
/// URL's). A request with neither is refused: every browser sends one of them with a form.
fn same_origin(headers: &HeaderMap, public_url: Option<&str>) -> bool {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        return site == "same-origin";
    }
    let Some(origin) = text(header::ORIGIN).and_then(|o| url::Url::parse(o).ok()) else {
        return false;
    };
    let Some(host) = origin.host_str() else {
        return false;
    };
    let authority = match origin.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    let own_host = text(header::HOST).is_some_and(|h| h.eq_ignore_ascii_case(&authority));
    let public = public_url
        .and_then(|u| url::Url::parse(u).ok())
        .is_some_and(|u| u.origin() == origin.origin());
    own_host || public
}

fn guard_headers(r: &mut Response) {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// The reload state: the generation, and the diagnostics of a refused set, secrets masked.
fn reload_section(engine: &Engine) -> String {
    let reload = engine.reload.json();
    let generation = reload["generation"].as_u64().unwrap_or(0);
    let mut out =
        format!("<h2>Definitions</h2><p id=\"reload\">Definition set {generation} served; ");
    match reload["lastError"].as_str() {
        Some(diagnostics) => {
            let _ = write!(
                out,
                "<span class=\"bad\">the last reload was refused</span>; the set before it is served. Its diagnostics:</p><pre id=\"reload-diagnostics\">{}</pre>",
                esc(&mask_secrets(diagnostics))
            );
        }
        None => out.push_str("<span class=\"ok\">no reload refused</span>.</p>"),
    }
    out
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn list_of(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().map(text_of).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

/// A connector's state in a few words.
fn state_of(s: &Value) -> String {
    let mut parts = Vec::new();
    for b in s["breakers"].as_array().into_iter().flatten() {
        if b["state"] != "closed" {
            parts.push(format!(
                "<span class=\"bad\">breaker of {} {}</span>",
                esc(&text_of(&b["source"])),
                esc(&text_of(&b["state"]))
            ));
        }
    }
    if s["run"]["running"] == true {
        parts.push("<span class=\"warn\">running</span>".to_owned());
    }
    if let Some(last) = s["run"]["lastRun"].as_object() {
        let failures = last
            .get("failures")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        parts.push(if failures == 0 {
            "<span class=\"ok\">last run ok</span>".to_owned()
        } else {
            format!("<span class=\"bad\">last run failed ({failures})</span>")
        });
    }
    if let Some(p) = s["push"].as_object() {
        parts.push(format!(
            "{} queued, {} dead letters",
            esc(&text_of(&p["queued"])),
            esc(&text_of(&p["deadLetters"]))
        ));
    }
    if parts.is_empty() {
        parts.push("<span class=\"ok\">ready</span>".to_owned());
    }
    parts.join("; ")
}

fn overview_row(s: &Value) -> String {
    let name = text_of(&s["name"]);
    let routes = [&s["routes"], &s["push"]["path"]]
        .into_iter()
        .map(text_of)
        .filter(|r| !r.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "<tr><td><a href=\"#c-{id}\">{name}</a></td><td>{strategy}</td><td>{sources}</td><td>{routes}</td><td>{state}</td></tr>",
        id = esc(&name),
        name = esc(&name),
        strategy = esc(&text_of(&s["strategy"])),
        sources = esc(&list_of(&s["sources"])),
        routes = esc(&routes),
        state = state_of(s),
    )
}

fn connector_section(
    s: &Value,
    letters: Option<&(usize, Vec<Value>)>,
    oldest: Option<String>,
) -> String {
    let name = text_of(&s["name"]);
    let mut out = format!(
        "<section class=\"connector\" id=\"c-{}\"><h2>{} <small>({})</small></h2>",
        esc(&name),
        esc(&name),
        esc(&text_of(&s["strategy"]))
    );
    let description = text_of(&s["description"]);
    if !description.is_empty() {
        let _ = write!(out, "<p class=\"description\">{}</p>", esc(&description));
    }
    let sources = match list_of(&s["sources"]) {
        none if none.is_empty() => "none (its callers push)".to_owned(),
        some => some,
    };
    let _ = write!(
        out,
        "<p>Sources: {}. State: {}.</p>",
        esc(&sources),
        state_of(s)
    );
    if let Some(labels) = s["labels"].as_object().filter(|l| !l.is_empty()) {
        let text = labels
            .iter()
            .map(|(k, v)| format!("{k}={}", text_of(v)))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = write!(out, "<p>Labels: {}</p>", esc(&text));
    }
    if let Some(breakers) = s["breakers"].as_array().filter(|b| !b.is_empty()) {
        out.push_str("<h3>Circuit breakers</h3><table><tr><th>source</th><th>state</th><th>failures in a row</th><th>opens</th></tr>");
        for b in breakers {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&text_of(&b["source"])),
                esc(&text_of(&b["state"])),
                esc(&text_of(&b["failuresInARow"])),
                esc(&text_of(&b["opens"]))
            );
        }
        out.push_str("</table>");
    }
    if let Some(resources) = s["resources"].as_array() {
        let _ = write!(
            out,
            "<h3>Routes</h3><p>Base <code>{}</code></p><table><tr><th>resource type</th><th>search</th><th>read</th></tr>",
            esc(&text_of(&s["routes"]))
        );
        for r in resources {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&text_of(&r["type"])),
                yes(&r["search"]),
                yes(&r["read"])
            );
        }
        out.push_str("</table>");
    }
    if let Some(cache) = s["cache"].as_object() {
        out.push_str("<h3>Cache</h3><table class=\"cache\"><tr>");
        for k in cache.keys() {
            let _ = write!(out, "<th>{}</th>", esc(k));
        }
        out.push_str("</tr><tr>");
        for v in cache.values() {
            let _ = write!(out, "<td>{}</td>", esc(&text_of(v)));
        }
        out.push_str("</tr></table>");
    }
    if s["run"].is_object() {
        out.push_str(&run_part(&name, &s["run"]));
    }
    if let Some(p) = s["push"].as_object() {
        let _ = write!(
            out,
            "<h3>Push queue</h3><table><tr><th>webhook</th><th>depth</th><th>oldest waiting since</th><th>dead letters</th></tr><tr><td><code>{}</code></td><td class=\"depth\">{}</td><td class=\"oldest\">{}</td><td>{}</td></tr></table>",
            esc(&text_of(&p["path"])),
            esc(&text_of(&p["queued"])),
            esc(oldest.as_deref().unwrap_or("nothing waits")),
            esc(&text_of(&p["deadLetters"]))
        );
    }
    if let Some((count, letters)) = letters {
        out.push_str(&dead_letters_part(&name, *count, letters));
    }
    out.push_str("</section>");
    out
}

fn yes(v: &Value) -> &'static str {
    if v == true { "yes" } else { "no" }
}

/// A cron connector's runs: schedule, last and next run, the last report, the run button.
fn run_part(name: &str, run: &Value) -> String {
    let mut out = format!(
        "<h3>Runs</h3><table><tr><th>schedule</th><th>time zone</th><th>next run</th><th>running</th><th>skipped ticks</th></tr><tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        esc(&text_of(&run["schedule"])),
        esc(&text_of(&run["timeZone"])),
        esc(&text_of(&run["nextRun"])),
        yes(&run["running"]),
        esc(&text_of(&run["skippedTicks"]))
    );
    let _ = write!(
        out,
        "<form method=\"post\" action=\"connectors/{}/run\"><button type=\"submit\" id=\"run-{}\">Run now</button></form>",
        esc(&query_value(name)),
        esc(name)
    );
    let Some(last) = run["lastRun"].as_object() else {
        out.push_str("<p class=\"note\" id=\"no-report\">No run since the engine started.</p>");
        return out;
    };
    let failures = last
        .get("failures")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let field = |k: &str| esc(&last.get(k).map(text_of).unwrap_or_default());
    let _ = write!(
        out,
        "<div class=\"report\" id=\"report-{id}\"><h3>Last run: <span class=\"{class}\">{verdict}</span></h3><table><tr><th>started</th><th>finished</th><th>records read</th><th>written</th><th>unchanged</th><th>source calls</th><th>sink calls</th><th>sink retries</th><th>dead-lettered</th></tr><tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        field("started"),
        field("finished"),
        field("records_read"),
        field("resources_written"),
        field("resources_unchanged"),
        field("source_calls"),
        field("sink_calls"),
        field("sink_retries"),
        field("records_dead_lettered"),
        id = esc(name),
        class = if failures.is_empty() { "ok" } else { "bad" },
        verdict = if failures.is_empty() {
            "ok".to_owned()
        } else {
            format!("{} failures", failures.len())
        },
    );
    if !failures.is_empty() {
        out.push_str("<h3>Failures</h3><table class=\"failures\"><tr><th>stage</th><th>subject</th><th>message</th><th>outcome</th></tr>");
        for f in &failures {
            let outcome = match &f["outcome"] {
                Value::Null => String::new(),
                o => format!("<pre>{}</pre>", esc(&shown_json(o))),
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{outcome}</td></tr>",
                esc(&text_of(&f["stage"])),
                esc(&text_of(&f["subject"])),
                esc(&text_of(&f["message"]))
            );
        }
        out.push_str("</table>");
    }
    let skipped = last
        .get("skipped")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !skipped.is_empty() {
        out.push_str("<h3>Left out</h3><table class=\"skipped\"><tr><th>what</th><th>why</th><th>times</th></tr>");
        for k in &skipped {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&text_of(&k["subject"])),
                esc(&text_of(&k["reason"])),
                esc(&text_of(&k["count"]))
            );
        }
        out.push_str("</table>");
    }
    for w in last
        .get("warnings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let _ = write!(out, "<p class=\"warn\">warning: {}</p>", esc(&text_of(w)));
    }
    out.push_str("</div>");
    out
}

fn dead_letters_part(name: &str, count: usize, letters: &[Value]) -> String {
    let mut out = format!(
        "<h3>Dead letters ({count})</h3><p class=\"note\">Replay sends a letter again through the connector's current definition: written, it is removed; not written, it stays with the new reason.</p>"
    );
    if letters.is_empty() {
        return out;
    }
    out.push_str("<table class=\"dead-letters\"><tr><th>id</th><th>received</th><th>reason</th><th>payload</th><th>actions</th></tr>");
    for l in letters {
        let payload = match &l["payload"] {
            _ if l["tooLarge"] == true => format!(
                "<span class=\"note\">{} bytes: too large to show here</span>",
                esc(&text_of(&l["payloadBytes"]))
            ),
            p => format!("<pre>{}</pre>", esc(&shown_json(p))),
        };
        let id = text_of(&l["id"]);
        // Relative to `/ui/`: the page may sit behind a gateway's prefix.
        let action = format!(
            "connectors/{}/dead-letters/{}",
            query_value(name),
            query_value(&id)
        );
        let _ = write!(
            out,
            "<tr id=\"letter-{key}\"><td>{}</td><td>{}</td><td>{}</td><td>{payload}</td><td class=\"actions\"><form method=\"post\" action=\"{action}/replay\"><button type=\"submit\" id=\"replay-{key}\">Replay</button></form><form method=\"post\" action=\"{action}/delete\"><button type=\"submit\" id=\"delete-{key}\">Delete</button></form></td></tr>",
            esc(&id),
            esc(&text_of(&l["received"])),
            esc(&text_of(&l["reason"])),
            key = esc(&format!("{name}-{id}")),
            action = esc(&action),
        );
    }
    out.push_str("</table>");
    if count > letters.len() {
        let _ = write!(
            out,
            "<p class=\"note\">The first {} of {count} are listed.</p>",
            letters.len()
        );
    }
    out
}

/// Pretty JSON, cut to `SHOWN_PAYLOAD` characters.
fn shown_json(v: &Value) -> String {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    match text.char_indices().nth(SHOWN_PAYLOAD) {
        Some((at, _)) => format!("{}\n… (cut: {} bytes in all)", &text[..at], text.len()),
        None => text,
    }
}

/// Text made safe inside HTML elements and quoted attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A value percent-encoded for a path segment or a query value.
fn query_value(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Diagnostics with the values of secret-looking keys masked (`token: ****`): a refused set
/// may quote a definition line that holds a secret written in clear. References
/// (`${env:...}`) stay: they name where a secret is, not what it is.
fn mask_secrets(text: &str) -> String {
    text.lines()
        .map(|l| mask_line(&without_directories(l)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A diagnostic's location line (`--> /etc/engine/defs/a.yaml:3:5 ...`) with the file's name
/// only: the page does not tell where the engine's files are.
fn without_directories(line: &str) -> String {
    let Some(at) = line.find("--> ") else {
        return line.to_owned();
    };
    let (head, path) = line.split_at(at + 4);
    let end = path.find(' ').unwrap_or(path.len());
    let (file, tail) = path.split_at(end);
    let name = file.rsplit('/').next().unwrap_or(file);
    format!("{head}{name}{tail}")
}

fn mask_line(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find([':', '=']) {
        let (before, after) = rest.split_at(at + 1);
        out.push_str(before);
        let key: String = before[..at]
            .trim_end_matches(['"', '\'', ' '])
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<String>()
            .to_ascii_lowercase();
        let secret = SECRET_WORDS.iter().any(|w| key.contains(w));
        let value_len = after.find([',', '}']).unwrap_or(after.len());
        let value = &after[..value_len];
        if secret && !value.trim().is_empty() && !value.trim().starts_with("${") {
            // The spaces after the value stay, so that the line keeps its shape.
            out.push_str(" ****");
            out.push_str(&value[value.trim_end().len()..]);
            rest = &after[value_len..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_every_character_that_opens_markup() {
        assert_eq!(
            esc("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }

    #[test]
    fn masks_secret_values_but_not_references() {
        let text = "  3 |     auth: { bearer: { token: abcdefghijklmnop } }\n  4 |     apiKey: \"s3cr3t\"\n  5 |     password: ${env:DB_PASSWORD}\n  6 |     url: http://x:1/";
        let masked = mask_secrets(text);
        assert!(!masked.contains("abcdefghijklmnop"), "{masked}");
        assert!(!masked.contains("s3cr3t"), "{masked}");
        assert!(masked.contains("token: **** } }"), "{masked}");
        assert!(masked.contains("${env:DB_PASSWORD}"), "{masked}");
        assert!(masked.contains("url: http://x:1/"), "{masked}");
        assert_eq!(
            mask_secrets("  --> /srv/engine/defs/a.yaml:3:5 at spec.auth"),
            "  --> a.yaml:3:5 at spec.auth"
        );
    }

    #[test]
    fn only_the_page_s_own_origin_may_send_its_form() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(same_origin(
            &with(&[("sec-fetch-site", "same-origin"), ("host", "e:8080")]),
            None
        ));
        assert!(!same_origin(
            &with(&[("sec-fetch-site", "cross-site")]),
            None
        ));
        assert!(!same_origin(
            &with(&[("sec-fetch-site", "same-site")]),
            None
        ));
        assert!(same_origin(
            &with(&[("origin", "http://e:8080"), ("host", "e:8080")]),
            None
        ));
        assert!(!same_origin(
            &with(&[("origin", "http://evil.example"), ("host", "e:8080")]),
            None
        ));
        assert!(!same_origin(
            &with(&[("origin", "null"), ("host", "e")]),
            None
        ));
        assert!(same_origin(
            &with(&[("origin", "https://fosps.example"), ("host", "engine:8080")]),
            Some("https://fosps.example/connector/api")
        ));
        assert!(!same_origin(&with(&[("host", "e:8080")]), None));
    }
}
