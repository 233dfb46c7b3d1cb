//! FHIR versions end to end, against real Helios servers of each version (one `hfs` built with
//! R4 and R5, see `helios_server`): a connector whose mapping can make a type its server's
//! version does not have is refused by `engine validate` before it runs (no request to its
//! source, nothing written), and the same connector writes that type into an R5 server, which
//! gives it back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::routing::get;
use serde_json::{Value, json};

use crate::engine_under_test::{definitions, engine_run_command, exit_of};
use crate::helios_client::search_all;
use crate::helios_server::{Db, Helios};
use crate::local_http::{bind, client, spawn_app};

/// Longest one `engine run` may take.
const RUN: Duration = Duration::from_secs(30);
const PAGES: usize = 5;

/// A source of two records, a substance and an ingredient, counting the requests it gets.
async fn source() -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let (listener, base) = bind().await;
    let app = axum::Router::new().route(
        "/items",
        get(move || {
            seen.fetch_add(1, Ordering::SeqCst);
            async {
                axum::Json(json!([
                    {"kind": "substance", "id": "s1", "name": "Ibuprofen"},
                    {"kind": "ingredient", "id": "i1", "name": "Ibuprofen"}
                ]))
            }
        }),
    );
    (base, hits, spawn_app(listener, app))
}

/// A cron connector writing into the FHIR server at `sink` of `version`, the type of each
/// record given by a table (`ingredient` to `Ingredient`, which R4 does not have).
fn connector(source: &str, sink: &str, version: &str) -> String {
    format!(
        r#"apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata:
  name: server
spec:
  fhir:
    url: {sink}
    version: {version}
    mode: batch
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata:
  name: substances
spec:
  strategy: cron
  schedule:
    cron: "0 4 * * *"
  source:
    url: {source}
  fetch:
    request:
      path: /items
    records: $[*]
  tables:
    kind:
      map: {{ substance: Substance, ingredient: Ingredient }}
  mapping:
    resourceType: {{ $translate: {{ $path: $.kind }}, $table: kind }}
    id: {{ $path: $.id }}
    status: active
  sink: server
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r5_only_type_is_refused_for_an_r4_helios_before_the_run_and_written_into_r5() {
    let ((base, hits, _src), r4, r5) = tokio::join!(
        source(),
        Helios::start(Db::Memory),
        Helios::start_r5(Db::Memory)
    );
    let c = client(Duration::from_secs(10));

    // For an R4 server: refused where the table says it, before anything is read or written.
    let defs = definitions(&connector(&base, &r4.url, "R4"));
    let state = tempfile::tempdir().expect("state");
    let exit = exit_of(
        engine_run_command(defs.path(), "substances", state.path()),
        RUN,
    )
    .await;
    assert_ne!(exit.code, Some(0), "{exit:#?}");
    assert!(
        exit.stderr
            .contains("`Ingredient` is not a resource type of FHIR R4 (only of R4B and R5)")
            && exit.stderr.contains("spec.tables.kind.map.ingredient"),
        "{exit:#?}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the source was read");
    // (R4 Helios has no Ingredient to search.)
    let found: Vec<Value> = search_all(&c, &r4, "Substance", PAGES).await;
    assert!(found.is_empty(), "{found:?}");

    // The same connector for an R5 server runs: both resources written, and read back.
    let defs = definitions(&connector(&base, &r5.url, "R5"));
    let exit = exit_of(
        engine_run_command(defs.path(), "substances", state.path()),
        RUN,
    )
    .await;
    assert_eq!(exit.code, Some(0), "{exit:#?}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    for (t, id) in [("Substance", "s1"), ("Ingredient", "i1")] {
        let found = search_all(&c, &r5, t, PAGES).await;
        let ids: Vec<&str> = found.iter().filter_map(|r| r["id"].as_str()).collect();
        assert_eq!(ids, [id], "{t}: {found:?}");
        assert_eq!(found[0]["status"], "active");
    }
}
