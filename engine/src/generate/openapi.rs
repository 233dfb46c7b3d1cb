//! The OpenAPI 3.0 document of the configured routes: pull interactions with their search
//! parameters, push endpoints with their bodies and authentication, the admin API (dead
//! letters by id included), the status page and the operations endpoints: every route
//! `engine serve` serves. It never holds a secret. A pull connector's paths are under its FHIR
//! bases: one per FHIR version of its sources (`/fhir/{connector}/R4`, `/R5`), and
//! `/fhir/{connector}` when they share one; one with several sources also has the
//! source-qualified read its entries' `fullUrl`s name.

use serde_json::{Map, Value, json};

use crate::model::vocabulary::{HmacEncoding, HmacSigned, ParamType};
use crate::model::{Model, PushAuth, Strategy};

fn outcome_responses(codes: &[(&str, &str)]) -> Map<String, Value> {
    codes
        .iter()
        .map(|(code, text)| {
            (
                (*code).to_owned(),
                json!({"description": text, "content": {"application/fhir+json": {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}}}),
            )
        })
        .collect()
}

fn fhir_ok(description: &str, schema: &str) -> Value {
    json!({"description": description, "content": {"application/fhir+json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn json_ok(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"type": "object"}}}})
}

/// The document; `prefix` is the public path prefix (e.g. `/connector/api`), used as the
/// server URL.
pub fn document(model: &Model, prefix: &str) -> Value {
    let mut paths = Map::new();
    let mut security_schemes = Map::new();
    for c in &model.connectors {
        match &c.strategy {
            Strategy::Pull(p) => {
                let tag = c.name.clone();
                let mut versions: Vec<String> = Vec::new();
                for s in &c.sources {
                    let v = crate::runtime::pull::version_of(s);
                    if !versions.contains(&v) {
                        versions.push(v);
                    }
                }
                // (path prefix after the connector, operationId suffix, summary suffix): each
                // version's base, served for every connector, and the versionless one when
                // the sources share one version.
                let mut bases: Vec<(String, String, String)> = versions
                    .iter()
                    .map(|v| (format!("/{v}"), format!("-{v}"), format!(" (FHIR {v})")))
                    .collect();
                if versions.len() == 1 {
                    bases.insert(0, (String::new(), String::new(), String::new()));
                }
                let sources: Vec<&str> = c.sources.iter().map(|s| s.name.as_str()).collect();
                for r in &p.resources {
                    let t = &r.resource_type;
                    if r.read.is_some() && sources.len() > 1 {
                        let mut responses = outcome_responses(&[
                            ("400", "invalid id"),
                            ("404", "not found, or no such source"),
                            ("502", "the source failed"),
                            ("504", "no answer in time"),
                        ]);
                        responses.insert("200".into(), fhir_ok(&format!("the {t}"), "Resource"));
                        paths.insert(
                            format!("/fhir/{}/{{source}}/{t}/{{id}}", c.name),
                            json!({"get": {
                                "tags": [tag], "summary": format!("Read {t} from one source (the fullUrl of a search entry)"),
                                "operationId": format!("read-{}-{t}-from-source", c.name),
                                "parameters": [
                                    {"name": "source", "in": "path", "required": true, "schema": {"type": "string", "enum": sources}},
                                    {"name": "id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z0-9\\-\\.]{1,64}$"}}
                                ],
                                "responses": responses
                            }}),
                        );
                    }
                    for (prefix, op, summary) in &bases {
                        if let Some(s) = &r.search {
                            let mut params: Vec<Value> = s
                                .params
                                .iter()
                                .filter(|(n, _)| n.as_str() != "_count")
                                .flat_map(|(n, spec)| {
                                    let schema = match spec.kind {
                                        ParamType::Integer => {
                                            let mut s = json!({"type": "integer"});
                                            if let Some(m) = spec.max {
                                                s["maximum"] = json!(m);
                                            }
                                            s
                                        }
                                        ParamType::Date => json!({"type": "string", "description": "a FHIR date, optionally with a prefix (ge, le, ...)"}),
                                        ParamType::Token => json!({"type": "string", "description": token_description(&spec.systems)}),
                                        ParamType::String => json!({"type": "string"}),
                                    };
                                    let mut p = json!({"name": n, "in": "query", "required": spec.required, "schema": schema});
                                    if let Some(d) = &spec.description {
                                        p["description"] = json!(d);
                                    }
                                    // A modifier is a parameter of its own name in the query.
                                    let with_modifiers = spec.modifiers.iter().map(|m| {
                                        let mut q = p.clone();
                                        q["name"] = json!(format!("{n}:{}", m.name()));
                                        q["required"] = json!(false);
                                        q
                                    });
                                    std::iter::once(p.clone()).chain(with_modifiers).collect::<Vec<_>>()
                                })
                                .collect();
                            let max = s.params.get("_count").and_then(|p| p.max).unwrap_or(1000);
                            params.push(json!({"name": "_count", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0, "maximum": max}}));
                            params.push(json!({"name": "_offset", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0}}));
                            let mut responses = outcome_responses(&[
                                ("400", "invalid parameters"),
                                ("502", "every source failed"),
                                ("504", "no answer in time"),
                            ]);
                            responses.insert("200".into(), fhir_ok("a searchset Bundle (with an OperationOutcome entry per failed source)", "Bundle"));
                            responses.insert(
                                "304".into(),
                                json!({"description": "not modified (If-None-Match)"}),
                            );
                            paths.insert(
                                format!("/fhir/{}{prefix}/{t}", c.name),
                                json!({"get": {"tags": [tag], "summary": format!("Search {t}{summary}"), "operationId": format!("search-{}{op}-{t}", c.name), "parameters": params, "responses": responses}}),
                            );
                        }
                        if r.read.is_some() {
                            let mut responses = outcome_responses(&[
                                ("400", "invalid id"),
                                ("404", "not found"),
                                ("502", "every source failed"),
                                ("504", "no answer in time"),
                            ]);
                            responses
                                .insert("200".into(), fhir_ok(&format!("the {t}"), "Resource"));
                            responses.insert(
                                "304".into(),
                                json!({"description": "not modified (If-None-Match)"}),
                            );
                            paths.insert(
                                format!("/fhir/{}{prefix}/{t}/{{id}}", c.name),
                                json!({"get": {
                                    "tags": [tag], "summary": format!("Read {t}{summary}"), "operationId": format!("read-{}{op}-{t}", c.name),
                                    "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z0-9\\-\\.]{1,64}$"}}],
                                    "responses": responses
                                }}),
                            );
                        }
                    }
                }
                if p.batch {
                    for (prefix, op, summary) in &bases {
                        let mut responses = outcome_responses(&[
                            ("400", "not a batch Bundle"),
                            ("413", "body too large"),
                            ("502", "every source failed"),
                        ]);
                        responses
                            .insert("200".into(), fhir_ok("a batch-response Bundle", "Bundle"));
                        paths.insert(
                        format!("/fhir/{}{prefix}", c.name),
                        json!({"post": {
                            "tags": [tag], "summary": format!("Batch over every FHIR source{summary}"), "operationId": format!("batch-{}{op}", c.name),
                            "requestBody": {"required": true, "content": {"application/fhir+json": {"schema": {"$ref": "#/components/schemas/Bundle"}}, "application/json": {"schema": {"$ref": "#/components/schemas/Bundle"}}}},
                            "responses": responses
                        }}),
                    );
                    }
                }
            }
            Strategy::Push(p) => {
                let scheme = format!("{}-auth", c.name);
                let mut parameters = Vec::new();
                let (definition, description) = match &p.auth {
                    PushAuth::Bearer(_) => (
                        json!({"type": "http", "scheme": "bearer"}),
                        "a bearer token",
                    ),
                    PushAuth::ApiKey { header, .. } => (
                        json!({"type": "apiKey", "in": "header", "name": header}),
                        "an API key",
                    ),
                    PushAuth::Hmac {
                        signed,
                        encoding,
                        header,
                        prefix,
                        timestamp_header,
                        ..
                    } => {
                        let covered = match signed {
                            HmacSigned::Body => "<body>".to_owned(),
                            HmacSigned::TimestampBody => {
                                parameters.push(json!({"name": timestamp_header, "in": "header", "required": true, "schema": {"type": "integer"}, "description": "Unix time in seconds of the signature"}));
                                format!("<{timestamp_header}>.<body>")
                            }
                        };
                        let encoding = match encoding {
                            HmacEncoding::Hex => "hex",
                            HmacEncoding::Base64 => "base64",
                        };
                        let prefix = match prefix {
                            Some(p) => format!("prefixed `{p}`"),
                            None => "optionally `sha256=`-prefixed".to_owned(),
                        };
                        (
                            json!({"type": "apiKey", "in": "header", "name": header, "description": format!("{encoding} HMAC-SHA256 ({prefix}) of `{covered}`")}),
                            "an HMAC-SHA256 signature",
                        )
                    }
                };
                parameters.push(json!({"name": p.idempotency_header, "in": "header", "required": false, "schema": {"type": "string"}, "description": "repeated deliveries with the same key are written once"}));
                security_schemes.insert(scheme.clone(), definition);
                let mut responses = outcome_responses(&[
                    ("400", "not JSON"),
                    ("401", "authentication failed"),
                    ("413", "body too large"),
                    ("415", "not JSON media type"),
                    ("422", "the payload can never be written (dead-lettered)"),
                    (
                        "503",
                        "the sink is unavailable: send again after Retry-After",
                    ),
                ]);
                responses.insert(
                    "200".into(),
                    json_ok("written (sync mode), or a repeated delivery"),
                );
                responses.insert("202".into(), json_ok("queued durably (queued mode)"));
                paths.insert(
                    p.path.clone(),
                    json!({"post": {
                        "tags": [c.name], "summary": format!("Push to {} ({description})", c.name), "operationId": format!("push-{}", c.name),
                        "security": [{scheme: []}],
                        "parameters": parameters,
                        "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}, "application/fhir+json": {"schema": {"type": "object"}}}},
                        "responses": responses
                    }}),
                );
            }
            Strategy::Cron(_) => {}
        }
    }
    let admin = ["admin"];
    let names: Vec<&str> = model.connectors.iter().map(|c| c.name.as_str()).collect();
    // An empty `enum` is no schema in OpenAPI 3.0 (`minItems: 1`): without connectors, any name.
    let name_schema = if names.is_empty() {
        json!({"type": "string"})
    } else {
        json!({"type": "string", "enum": names})
    };
    let name_param =
        json!([{"name": "name", "in": "path", "required": true, "schema": name_schema}]);
    let letter_params = json!([
        {"name": "name", "in": "path", "required": true, "schema": name_schema},
        {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}
    ]);
    let list = |what: &str| json!({"description": what, "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}}});
    let not_found = outcome_responses(&[("404", "no such connector")]);
    let with = |ok: (&str, Value), extra: &Map<String, Value>| {
        let mut m = extra.clone();
        m.insert(ok.0.to_owned(), ok.1);
        Value::Object(m)
    };
    paths.insert("/connectors".into(), json!({"get": {"tags": admin, "summary": "Connectors and their status", "operationId": "list-connectors", "responses": {"200": list("the connectors")}}}));
    paths.insert("/connectors/list".into(), json!({"get": {"tags": admin, "summary": "Connectors (the FOSPS runner API's name)", "operationId": "list-connectors-fosps", "responses": {"200": list("the connectors")}}}));
    paths.insert("/connectors/{name}".into(), json!({"get": {"tags": admin, "summary": "One connector: strategy, last and next run, cache, queue", "operationId": "show-connector", "parameters": name_param, "responses": with(("200", json_ok("the connector")), &not_found)}}));
    let mut run =
        outcome_responses(&[("404", "no such cron connector"), ("409", "a run is going")]);
    run.insert("202".into(), json_ok("the run started"));
    paths.insert("/connectors/{name}/run".into(), json!({"post": {"tags": admin, "summary": "Run a cron connector now", "operationId": "run-connector", "parameters": name_param, "responses": run}}));
    paths.insert("/connectors/{name}/cache".into(), json!({"delete": {"tags": admin, "summary": "Empty a pull connector's cache", "operationId": "invalidate-cache", "parameters": name_param, "responses": with(("200", json_ok("how many answers were dropped")), &not_found)}}));
    paths.insert("/connectors/{name}/dead-letters".into(), json!({"get": {"tags": admin, "summary": "Push payloads, or records of cron runs, that could not be written, with the reason", "operationId": "dead-letters", "parameters": name_param, "responses": with(("200", list("the dead letters")), &not_found)}}));
    let letter = outcome_responses(&[
        ("400", "not a dead letter id"),
        ("404", "no such connector or dead letter"),
        ("409", "a replay or deletion of it is going"),
    ]);
    let mut deleted = letter.clone();
    deleted.insert("204".into(), json!({"description": "deleted"}));
    let mut replayed = letter.clone();
    replayed.extend(outcome_responses(&[
        ("422", "replayed, not written: the dead letter stays"),
        (
            "503",
            "the sink is unavailable: the dead letter stays; replay after Retry-After",
        ),
    ]));
    paths.insert("/connectors/{name}/dead-letters/{id}".into(), json!({
        "get": {"tags": admin, "summary": "One dead letter: the reason and the payload or record", "operationId": "dead-letter", "parameters": letter_params, "responses": with(("200", json_ok("the dead letter")), &letter)},
        "delete": {"tags": admin, "summary": "Delete a dead letter", "operationId": "delete-dead-letter", "parameters": letter_params, "responses": deleted}
    }));
    paths.insert("/connectors/{name}/dead-letters/{id}/replay".into(), json!({"post": {"tags": admin, "summary": "Replay a dead letter through the current definition", "operationId": "replay-dead-letter", "parameters": letter_params, "responses": with(("200", json_ok("written: the dead letter removed")), &replayed)}}));
    // The status page (`http::ui`): HTML for browsers, its buttons' forms taken from its own
    // origin only (scripts use the API above); listed so that every route served is.
    let page = ["status page"];
    let html = |what: &str| json!({"description": what, "content": {"text/html": {"schema": {"type": "string"}}}});
    let moved = |what: &str| json!({"description": what, "headers": {"Location": {"schema": {"type": "string"}}}});
    let form = |what: &str, id: &str, params: &Value| {
        let mut responses = outcome_responses(&[("403", "not from the page's own origin")]);
        responses.insert("303".into(), moved("back to the page"));
        json!({"post": {"tags": page, "summary": what, "operationId": id, "parameters": params, "responses": responses}})
    };
    paths.insert("/ui".into(), json!({"get": {"tags": page, "summary": "To the status page", "operationId": "status-page-redirect", "responses": {"308": moved("to /ui/")}}}));
    paths.insert("/ui/".into(), json!({"get": {"tags": page, "summary": "The status page", "operationId": "status-page", "responses": {"200": html("the page")}}}));
    paths.insert("/ui/style.css".into(), json!({"get": {"tags": page, "summary": "The status page's style", "operationId": "status-page-style", "responses": {"200": {"description": "the style", "content": {"text/css": {"schema": {"type": "string"}}}}}}}));
    paths.insert(
        "/ui/connectors/{name}/run".into(),
        form("The page's run button", "status-page-run", &name_param),
    );
    paths.insert(
        "/ui/connectors/{name}/dead-letters/{id}/replay".into(),
        form(
            "The page's replay button",
            "status-page-replay",
            &letter_params,
        ),
    );
    paths.insert(
        "/ui/connectors/{name}/dead-letters/{id}/delete".into(),
        form(
            "The page's delete button",
            "status-page-delete",
            &letter_params,
        ),
    );
    paths.insert("/reload".into(), json!({"get": {"tags": admin, "summary": "Reloads of the definitions: generation, and the diagnostics of a refused set", "operationId": "reload-status", "responses": {"200": json_ok("the reload status")}}}));
    // The admin API checks its callers itself (`http::auth`): a bearer token, static or a JWT
    // of the configured issuer with the reader or operator role.
    security_schemes.insert(
        "admin".into(),
        json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "A JWT of the configured OIDC issuer with the reader role (reading) or the operator role (runs, cache deletes), or the static admin token"}),
    );
    let refusals = outcome_responses(&[
        (
            "401",
            "no valid admin token (missing, expired or not valid)",
        ),
        (
            "403",
            "the token lacks the role, or the admin API is closed",
        ),
        (
            "503",
            "the issuer's keys cannot be had: send again after Retry-After",
        ),
    ]);
    for (path, item) in paths.iter_mut() {
        if !(path.starts_with("/connectors") || path.starts_with("/ui") || path == "/reload") {
            continue;
        }
        for op in item
            .as_object_mut()
            .into_iter()
            .flat_map(|o| o.values_mut())
        {
            op["security"] = json!([{"admin": []}]);
            if let Some(responses) = op["responses"].as_object_mut() {
                for (code, r) in &refusals {
                    responses.entry(code.clone()).or_insert_with(|| r.clone());
                }
            }
        }
    }
    let ops = ["operations"];
    paths.insert("/healthz".into(), json!({"get": {"tags": ops, "summary": "Liveness", "operationId": "healthz", "responses": {"200": json_ok("alive")}}}));
    paths.insert("/readyz".into(), json!({"get": {"tags": ops, "summary": "Readiness", "operationId": "readyz", "responses": {"200": json_ok("ready"), "503": json_ok("not ready")}}}));
    paths.insert("/metrics".into(), json!({"get": {"tags": ops, "summary": "Prometheus metrics", "operationId": "metrics", "responses": {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}}));
    paths.insert("/openapi.json".into(), json!({"get": {"tags": ops, "summary": "This document", "operationId": "openapi", "responses": {"200": json_ok("the OpenAPI document")}}}));
    let server = if prefix.is_empty() {
        "/".to_owned()
    } else {
        format!("/{}", prefix.trim_matches('/'))
    };
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "FOSPS connector engine",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "FHIR routes, webhooks and the admin API of the configured connectors."
        },
        "servers": [{"url": server}],
        "paths": paths,
        "components": {
            "securitySchemes": security_schemes,
            "schemas": {
                "Resource": {"type": "object", "required": ["resourceType"], "properties": {"resourceType": {"type": "string"}, "id": {"type": "string"}}, "additionalProperties": true},
                "Bundle": {"type": "object", "required": ["resourceType", "type"], "properties": {"resourceType": {"type": "string", "enum": ["Bundle"]}, "type": {"type": "string"}, "total": {"type": "integer"}, "link": {"type": "array", "items": {"type": "object"}}, "entry": {"type": "array", "items": {"type": "object"}}}, "additionalProperties": true},
                "OperationOutcome": {"type": "object", "required": ["resourceType", "issue"], "properties": {"resourceType": {"type": "string", "enum": ["OperationOutcome"]}, "issue": {"type": "array", "items": {"type": "object", "required": ["severity", "code"], "properties": {"severity": {"type": "string"}, "code": {"type": "string"}, "diagnostics": {"type": "string"}}}}}, "additionalProperties": true}
            }
        }
    })
}

/// What the OpenAPI document says of a token parameter's values.
fn token_description(systems: &[String]) -> String {
    let forms = "a FHIR token: `system|code`, `|code` (no system) or `code` (any system)";
    if systems.is_empty() {
        forms.to_owned()
    } else {
        format!("{forms}; systems searched: {}", systems.join(", "))
    }
}
