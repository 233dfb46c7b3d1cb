//! The HTTP surface of `engine serve`: pull routes under `/fhir/{connector}`, the admin API
//! under `/connectors` and the status page under `/ui/` (both behind `auth`), and operations
//! (`/healthz`, `/readyz`, `/metrics`).
//! `router` is a function of the engine's state, so tests drive it without a socket.

mod admin;
mod auth;
mod guard;
mod listener;
pub mod outcome;
mod routes;
pub mod server;
mod ui;

use std::sync::Arc;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::middleware;
use axum::routing::{delete, get, post};
use axum::{Extension, Router};

use crate::runtime::engine::Engine;
use admin::{
    dead_letter, dead_letters, delete_dead_letter, healthz, invalidate, list, metrics, openapi,
    readyz, reload_status, replay_dead_letter, run_now, show,
};
use guard::{Guard, RequestId, not_found};
use routes::{batch, push, scoped_read, search, search_or_read, version_batch};

/// The application.
pub fn router(engine: Arc<Engine>) -> Router {
    app(engine).0
}

/// The application and its guard, whose direct answers (`Guard::direct`) `engine serve`
/// gives before the router.
fn app(engine: Arc<Engine>) -> (Router, Arc<Guard>) {
    let guard = Arc::new(Guard::new(engine.clone(), routes::cached_search));
    let mut app = Router::new();
    for ep in engine.pushes.values() {
        let (ep, tasks) = (ep.clone(), engine.tasks.clone());
        let path = ep.path().to_owned();
        app = app.route(
            &path,
            post(
                move |id: Option<Extension<RequestId>>, headers: HeaderMap, body: Body| {
                    push(ep, tasks, id.map(|Extension(i)| i), headers, body)
                },
            ),
        );
    }
    // The admin API: its callers are checked (`auth`) before any handler runs.
    let admin = Router::new()
        .route("/connectors/{name}/run", post(run_now))
        .route("/connectors/{name}/dead-letters", get(dead_letters))
        .route(
            "/connectors/{name}/dead-letters/{id}",
            get(dead_letter).delete(delete_dead_letter),
        )
        .route(
            "/connectors/{name}/dead-letters/{id}/replay",
            post(replay_dead_letter),
        )
        .route("/reload", get(reload_status))
        .route("/connectors", get(list))
        .route("/connectors/list", get(list))
        .route("/connectors/{name}", get(show))
        .route("/connectors/{name}/cache", delete(invalidate))
        .merge(ui::routes())
        .route_layer(middleware::from_fn_with_state(engine.clone(), auth::admin));
    let app = app
        .merge(admin)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/fhir/{connector}", post(batch))
        .route(
            "/fhir/{connector}/{resource_type}",
            get(search).post(version_batch),
        )
        .route(
            "/fhir/{connector}/{resource_type}/{id}",
            get(search_or_read),
        )
        .route(
            "/fhir/{connector}/{scope}/{resource_type}/{id}",
            get(scoped_read),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(guard.clone(), guard::guard))
        .with_state(engine);
    (app, guard)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use std::sync::atomic::Ordering;

    use axum::extract::Request;
    use axum::http::{HeaderValue, Method, header};
    use axum::response::Response;
    use tower::ServiceExt;

    use super::*;
    use crate::runtime::engine::{Dirs, Limits};

    const X_REQUEST_ID: &str = "x-request-id";

    /// A FHIR source on 127.0.0.1 answering every Patient search with one Patient; counts its
    /// calls.
    async fn source(calls: Arc<AtomicUsize>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let app = axum::Router::new().route(
            "/Patient",
            axum::routing::get(move || {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    axum::Json(serde_json::json!({
                        "resourceType": "Bundle", "type": "searchset", "total": 1,
                        "entry": [{"resource": {"resourceType": "Patient", "id": "p1"}}]
                    }))
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        port
    }

    /// The engine of one cached pull connector `c` over `port`, in `dir`.
    fn engine(port: u16, dir: &std::path::Path) -> Arc<Engine> {
        let yaml = format!(
            "apiVersion: fosps.gravitate-health.eu/v1\nkind: Source\nmetadata: {{ name: s }}\nspec: {{ type: fhir, url: \"http://127.0.0.1:{port}\" }}\n---\napiVersion: fosps.gravitate-health.eu/v1\nkind: Connector\nmetadata: {{ name: c }}\nspec:\n  strategy: pull\n  sources: [s]\n  cache: {{ ttl: 1h, allowNoCache: true }}\n  pull:\n    resources:\n      - type: Patient\n        search:\n          params:\n            _count: {{ type: integer, default: 20, max: 100 }}\n"
        );
        std::fs::write(dir.join("defs.yaml"), yaml).expect("definitions");
        let (files, errors) =
            crate::config::load::read_all(&[dir.join("defs.yaml")]).expect("readable");
        let outcome = crate::config::validate::validate(
            &files,
            errors,
            &crate::config::validate::Options {
                allow_unresolved: false,
                run_tests: false,
                fhir_schema: None,
                env: &crate::config::secrets::ProcessEnvironment,
            },
        );
        let model = outcome
            .model
            .unwrap_or_else(|| panic!("invalid: {:?}", outcome.diagnostics));
        let dirs = Dirs {
            state: dir.join("state"),
            sink: dir.join("sink"),
        };
        Engine::with_previous(Arc::new(model), Limits::default(), &dirs, None).expect("built")
    }

    fn get(target: &str, headers: &[(&str, &str)]) -> Request {
        let mut b = Request::builder().uri(target).header("host", "engine.test");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).expect("request")
    }

    async fn whole(r: Response) -> (u16, HeaderMapOf, Vec<u8>) {
        let (parts, body) = r.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
        (parts.status.as_u16(), parts.headers, bytes.to_vec())
    }

    type HeaderMapOf = axum::http::HeaderMap;

    #[tokio::test]
    async fn a_fresh_cached_search_is_answered_before_the_router_as_the_router_answers_it() {
        let calls = Arc::new(AtomicUsize::new(0));
        let port = source(calls.clone()).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = engine(port, dir.path());
        let (router, guard) = app(engine.clone());
        let target = "/fhir/c/Patient?_count=5";

        // A miss is not answered directly: the router loads it, with the search parsed here.
        let mut first = get(target, &[]);
        assert!(guard.direct(&mut first).is_none());
        let (status, headers, body) =
            whole(router.clone().oneshot(first).await.expect("answer")).await;
        assert_eq!(
            (status, &headers["x-cache"]),
            (200, &HeaderValue::from_static("miss"))
        );

        // The hit: the same status, body, type and ETag as the router's, marked a hit, with
        // its own request id, counted in the cache and the route's metrics.
        let (hit_status, hit_headers, hit_body) = whole(
            guard
                .direct(&mut get(target, &[]))
                .expect("answered directly"),
        )
        .await;
        assert_eq!(hit_status, 200);
        assert_eq!(hit_body, body);
        for h in [header::CONTENT_TYPE, header::ETAG] {
            assert_eq!(hit_headers.get(&h), headers.get(&h), "{h}");
        }
        assert_eq!(hit_headers["x-cache"], "hit");
        assert_ne!(hit_headers[X_REQUEST_ID], headers[X_REQUEST_ID]);
        let routed_hit = whole(
            router
                .clone()
                .oneshot(get(target, &[]))
                .await
                .expect("answer"),
        )
        .await;
        assert_eq!((routed_hit.0, &routed_hit.2), (200, &body));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the source called once");
        let cache = engine.pulls["c"].cache.as_ref().expect("a cache");
        assert_eq!((cache.stats().hits, cache.stats().misses), (2, 1));
        let metrics = engine.metrics.render(
            std::iter::empty::<(&str, crate::runtime::cache::Stats)>(),
            std::iter::empty::<(&str, (usize, usize))>(),
            std::iter::empty::<(&str, usize)>(),
        );
        let counted = |l: &&str| {
            ["connector=\"c\"", "route=\"search\"", "status=\"200\""]
                .iter()
                .all(|p| l.contains(p))
                && !l.contains("_bucket")
        };
        assert!(
            metrics.lines().any(|l| counted(&l) && l.ends_with(" 3")),
            "three searches answered 200 (a miss, two hits): {metrics}"
        );

        // If-None-Match with the ETag: 304, as the router answers it.
        let etag = headers[header::ETAG].to_str().expect("etag").to_owned();
        let (s304, _, b304) = whole(
            guard
                .direct(&mut get(target, &[("if-none-match", &etag)]))
                .expect("answered directly"),
        )
        .await;
        assert_eq!((s304, b304.len()), (304, 0));

        // What the router must settle is not answered here: another search (a miss), the
        // caller's no-cache, another base (its links differ), another method, a percent-encoded
        // segment, a version's or a source's base, a path of no pull connector.
        // Malformed or oversized requests are the router's too (it answers 400, 414, 431).
        let long = format!("{target}&x={}", "a".repeat(Limits::default().uri));
        let big = "b".repeat(Limits::default().headers);
        for (target, headers, method) in [
            ("/fhir/c/Patient?_count=5&_count=5", vec![], Method::GET),
            ("/fhir/c/Patient?_count=many", vec![], Method::GET),
            ("/fhir/c/Patient?_count=5&%FF=1", vec![], Method::GET),
            (long.as_str(), vec![], Method::GET),
            (target, vec![("x-big", big.as_str())], Method::GET),
            ("/fhir/c/Patient?_count=6", vec![], Method::GET),
            (target, vec![("cache-control", "no-cache")], Method::GET),
            (
                target,
                vec![("x-forwarded-host", "other.test")],
                Method::GET,
            ),
            (target, vec![], Method::HEAD),
            ("/fhir/%63/Patient?_count=5", vec![], Method::GET),
            ("/fhir/c/R5/Patient?_count=5", vec![], Method::GET),
            ("/fhir/nope/Patient?_count=5", vec![], Method::GET),
            ("/healthz?x=1", vec![], Method::GET),
        ] {
            let mut req = get(target, &headers);
            *req.method_mut() = method.clone();
            assert!(
                guard.direct(&mut req).is_none(),
                "{method} {target} {headers:?}"
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let refused = whole(
            router
                .clone()
                .oneshot(get("/fhir/c/Patient?_count=5&_count=5", &[]))
                .await
                .expect("answer"),
        )
        .await;
        assert_eq!(refused.0, 400);

        // A caller's no-cache, left to the router with its search parsed: loaded again.
        let mut again = get(target, &[("cache-control", "no-cache")]);
        assert!(guard.direct(&mut again).is_none());
        let (status, reloaded, body_again) =
            whole(router.oneshot(again).await.expect("answer")).await;
        assert_eq!(
            (status, &reloaded["x-cache"]),
            (200, &HeaderValue::from_static("miss"))
        );
        assert_eq!(body_again, body);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
