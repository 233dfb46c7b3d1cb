//! Search at run time: the caller's parameters checked against the declared ones and
//! normalised (FHIR's search semantics, `model::search_params`), the search fanned out to
//! every source (none when it can match nothing), each answer mapped with the resource type's
//! mapping, and the searchset Bundle assembled.

use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};

use super::{PullRuntime, RequestInfo, Scope, SourceError, all_failed, mapping_failure};
use crate::model::PullResource;
use crate::model::fhir::{Searchset, outcome};
use crate::model::jsonpath::Query;
use crate::model::search_params::{self, SearchParamError};
use crate::model::vocabulary::{Interaction, NotFoundReading, SourceType};
use crate::runtime::cache::Answer;
use crate::runtime::problem::{Problem, ProblemKind};
use crate::runtime::upstream::{Call, SourceClient};

/// Most upstream pages read for one answer.
const MAX_PAGES: u32 = 50;

pub use crate::model::search_params::SearchQuery;

/// A caller's parameters that cannot be read are the caller's error (400).
impl From<SearchParamError> for Problem {
    fn from(e: SearchParamError) -> Problem {
        Problem::invalid(e.to_string())
    }
}

impl PullRuntime {
    /// Checks a caller's search parameters against the declared ones, with FHIR's search
    /// semantics (`model::search_params`).
    pub fn parse_search(
        &self,
        res: &PullResource,
        raw: &[(String, String)],
    ) -> Result<SearchQuery, Problem> {
        let search = res.search.as_ref().ok_or_else(|| {
            Problem::new(
                ProblemKind::NotSupported,
                format!("`{}` has no search here", res.resource_type),
            )
        })?;
        Ok(search_params::parse(&search.params, raw)?)
    }

    /// A searchset Bundle from the sources of `scope`.
    pub async fn search(
        &self,
        res: &PullResource,
        q: &SearchQuery,
        info: &RequestInfo,
        scope: &Scope,
    ) -> Result<Answer, Problem> {
        let Some(search) = &res.search else {
            return Err(Problem::not_found("no search"));
        };
        let clients = self.having_type(self.clients_in(scope)?, &res.resource_type)?;
        if q.matches_nothing {
            // A token of a system this parameter answers empty for: no source can match.
            let bundle = searchset(info, q, Vec::new(), Vec::new(), Some(0), false);
            return Ok(Answer::new(200, bundle.to_vec(), true));
        }
        // A page past the first is skipped to by the one source when its request carries
        // `_offset`; else here, over the sources' records from their start, one source's
        // after another's (in declared order): that is the one list every page is cut from,
        // so following `next` gives each record once, whatever the sources can skip.
        let skip_here = q.offset > 0
            && match clients.as_slice() {
                [one] => !self.asks_offset(one, res, q),
                _ => true,
            };
        let from_start;
        let (asked, want) = if skip_here {
            if q.offset > MAX_SKIPPED {
                return Err(Problem::invalid(format!(
                    "`_offset` past {MAX_SKIPPED} is not served here: this search's sources cannot skip to it; narrow the search"
                )));
            }
            from_start = window_from_start(q);
            (&from_start, q.offset + q.count + 1)
        } else {
            (&q.params, q.count + 1)
        };
        let mapping = self.connector.mapping_for(res, Interaction::Search);
        let results = join_all(clients.iter().map(|client| async move {
            let call = self
                .search_call(client, res, asked)
                .map_err(|e| SourceError::Problem(e.into()))?;
            let pages = match client
                .pages(
                    call,
                    &search.records,
                    Some(want),
                    MAX_PAGES.min(client.source.max_pages),
                    &info.trace,
                    info.deadline,
                    self.reads.search(&client.source.name, &res.resource_type),
                )
                .await
            {
                // A search's 404 is an error (a wrong path or base URL must show) unless the
                // source declares it "no data" or "not found".
                Err(f) if f.status == Some(404) => match client.source.statuses.not_found {
                    Some(NotFoundReading::Empty) => return Ok((Vec::new(), Some(0), Vec::new())),
                    Some(NotFoundReading::NotFound) => {
                        return Err(SourceError::Problem(Problem::not_found(f.to_string())));
                    }
                    Some(NotFoundReading::Error) | None => return Err(SourceError::Failed(f)),
                },
                other => other.map_err(SourceError::Failed)?,
            };
            let (records, reply, _) = pages;
            let total_query = search.total.as_ref().or_else(|| {
                (client.source.kind == SourceType::Fhir)
                    .then(fhir_total)
                    .flatten()
            });
            let mut total = total_query.and_then(|t| {
                t.select(&reply.body, &reply.body)
                    .first()
                    .and_then(|v| v.as_u64())
            });
            if total.is_none() && records.len() < want && (q.offset == 0 || skip_here) {
                total = Some(records.len() as u64);
            }
            // Mapped lazily: only the records the answer needs (one more than `_count`, to
            // know whether there is a next page), never every record a source sent; each
            // resource written as JSON text directly (no `Value` built for it).
            // A resource whose id breaks FHIR's id rule, or a second one with the `Type/id`
            // of an earlier one (a source repeating a record, pages overlapping), is left
            // out, and said so in the Bundle: a caller is never served an id that is not
            // one, nor two entries with one `fullUrl`.
            let mut mapped = Vec::new();
            let mut left_out = LeftOut::default();
            let mut seen = std::collections::HashSet::new();
            for (i, r) in records.iter().enumerate() {
                if mapped.len() >= want {
                    break;
                }
                let resources = self
                    .connector
                    .write_records_with(mapping, [(format!("$[{i}]"), r)], &q.params)
                    .map_err(|e| mapping_failure(client, &e))?;
                for w in resources {
                    if let Some(shown) = &w.bad_id {
                        left_out.bad_ids.note(i, shown);
                    } else if let Some(local) = &w.local
                        && !seen.insert(local.clone())
                    {
                        left_out.repeated.note(i, local);
                    } else {
                        mapped.push((client.source.name.as_str(), w));
                    }
                }
            }
            let notes = left_out.outcomes(&client.source.name);
            Ok::<_, SourceError>((mapped, total, notes))
        }))
        .await;

        let mut matches = Vec::new();
        let mut outcomes = Vec::new();
        let mut failures = Vec::new();
        let mut total = Some(0u64);
        for r in results {
            match r {
                Ok((resources, t, notes)) => {
                    matches.extend(resources);
                    outcomes.extend(notes);
                    total = total.zip(t).map(|(a, b)| a + b);
                }
                Err(SourceError::Problem(p)) => return Err(p),
                Err(SourceError::Failed(f)) => {
                    outcomes.push(outcome("warning", f.kind.problem().code(), &f.to_string()));
                    failures.push(f);
                }
            }
        }
        if !failures.is_empty() && failures.len() == clients.len() {
            return Err(all_failed(&failures));
        }
        if skip_here {
            matches.drain(..q.offset.min(matches.len()));
        }
        // `_count=0` asks for no entries: a `next` link would name this same page again.
        let more = q.count > 0
            && (matches.len() > q.count || total.is_some_and(|t| t > (q.offset + q.count) as u64));
        matches.truncate(q.count);
        let total = if failures.is_empty() { total } else { None };
        let matches = matches
            .into_iter()
            .map(|(source, r)| (self.full_url_of(info, source, r.local.as_deref()), r.json))
            .collect();
        let bundle = searchset(info, q, matches, outcomes, total, more);
        Ok(Answer::new(200, bundle.to_vec(), failures.is_empty()))
    }
}

/// Most records a search skips itself for a caller's `_offset` (when its sources cannot):
/// each source is then read from its start, so a deeper page is refused rather than read.
const MAX_SKIPPED: usize = 10_000;

/// The parameters that ask a source for the records of pages up to `q`'s from its start:
/// `_offset` 0 and `_count` the records of those pages.
fn window_from_start(q: &SearchQuery) -> Value {
    let mut params = q.params.clone();
    if let Value::Object(o) = &mut params {
        o.insert("_offset".into(), Value::from(0));
        o.insert("_count".into(), Value::from(q.offset + q.count));
    }
    params
}

impl PullRuntime {
    /// The call of a search of `client` with `params`: its request template, or a FHIR search.
    fn search_call(
        &self,
        client: &SourceClient,
        res: &PullResource,
        params: &Value,
    ) -> Result<Call, crate::runtime::request::RequestError> {
        match res.search.as_ref().and_then(|s| s.request.as_ref()) {
            Some(r) => {
                crate::runtime::request::build(&self.connector, &client.source.url, r, params, None)
            }
            None => Ok(fhir_search_call(client, &res.resource_type, params)),
        }
    }

    /// Whether `client` is asked for `q`'s offset (its request changes with `_offset`), so that
    /// it skips to the page itself: not a file source (it reads no request), nor a template
    /// that does not name the offset (the source would send the first page for every page).
    fn asks_offset(&self, client: &SourceClient, res: &PullResource, q: &SearchQuery) -> bool {
        if client.source.files.is_some() {
            return false;
        }
        let mut first = q.params.clone();
        if let Value::Object(o) = &mut first {
            o.insert("_offset".into(), Value::from(0));
        }
        match (
            self.search_call(client, res, &q.params),
            self.search_call(client, res, &first),
        ) {
            (Ok(a), Ok(b)) => {
                a.method != b.method || a.url != b.url || a.headers != b.headers || a.body != b.body
            }
            // The build's error is the caller's answer, given when the search is sent.
            _ => true,
        }
    }
}

/// What one source's answer had that a searchset must not hold, for the Bundle's warnings.
#[derive(Default)]
struct LeftOut {
    bad_ids: Seen,
    repeated: Seen,
}

/// How many were left out for one reason, and the first (its record and what it was).
#[derive(Default)]
struct Seen {
    count: usize,
    first: Option<(usize, String)>,
}

impl Seen {
    fn note(&mut self, record: usize, what: &str) {
        self.count += 1;
        self.first.get_or_insert_with(|| (record, what.to_owned()));
    }
}

impl LeftOut {
    /// One warning per reason (not one per resource: a source may repeat thousands).
    fn outcomes(&self, source: &str) -> Vec<Value> {
        let mut out = Vec::new();
        if let Some((i, id)) = &self.bad_ids.first {
            out.push(outcome(
                "warning",
                "value",
                &format!(
                    "source `{source}`: {} resource(s) with an id that breaks FHIR's id rule (1 to 64 of A-Z, a-z, 0-9, `-`, `.`) left out; the first, of record $[{i}], had id {id}",
                    self.bad_ids.count
                ),
            ));
        }
        if let Some((i, local)) = &self.repeated.first {
            out.push(outcome(
                "warning",
                "duplicate",
                &format!(
                    "source `{source}`: {} resource(s) repeating one answered before left out (the first kept); the first repeat, of record $[{i}], was {local}",
                    self.repeated.count
                ),
            ));
        }
        out
    }
}

/// A FHIR searchset's `$.total`, compiled once (not per source call).
fn fhir_total() -> Option<&'static Query> {
    static TOTAL: std::sync::OnceLock<Option<Query>> = std::sync::OnceLock::new();
    TOTAL.get_or_init(|| Query::parse("$.total").ok()).as_ref()
}

fn fhir_search_call(client: &SourceClient, resource_type: &str, params: &Value) -> Call {
    let base = &client.source.url;
    let mut url = base.clone();
    url.set_path(&format!(
        "{}/{resource_type}",
        base.path().trim_end_matches('/')
    ));
    let pairs = search_params::fhir_query(params);
    if !pairs.is_empty() {
        let mut q = url.query_pairs_mut();
        for (k, v) in &pairs {
            q.append_pair(k, v);
        }
    }
    Call {
        method: Method::GET,
        url,
        headers: Vec::new(),
        body: None,
    }
}

/// A searchset Bundle of `matches`, each with its `fullUrl` when it has one.
fn searchset(
    info: &RequestInfo,
    q: &SearchQuery,
    matches: Vec<(Option<String>, Vec<u8>)>,
    outcomes: Vec<Value>,
    total: Option<u64>,
    more: bool,
) -> Searchset {
    let mut links = vec![json!({"relation": "self", "url": info.self_url})];
    if more && let Ok(mut next) = url::Url::parse(&info.self_url) {
        crate::runtime::upstream::set_query(
            &mut next,
            &[(&"_offset".to_owned(), (q.offset + q.count).to_string())],
        );
        links.push(json!({"relation": "next", "url": next.as_str()}));
    }
    Searchset {
        total,
        links,
        matches,
        outcomes,
    }
}
