//! Fan-out limited by the sources, not by the engine (issue 16, part 2): concurrent searches
//! over slow sources are all in flight at once with a source's default `concurrency`, so
//! they finish in about one source latency, not in rounds. Real FHIR stand-ins
//! (`fhir_standin`) on 127.0.0.1, each call held 200 ms; the engine's router in-process
//! (`engine_router`). The bound is generous (two latencies, where the old default of 16
//! needed two rounds for 32 requests), and the calls in flight are counted at the sources.

use std::time::Duration;

use engine::runtime::engine::Limits;
use futures_util::future::join_all;
use serde_json::json;
use tokio::time::Instant;

use crate::engine_router::{EngineRouter, open_admin};
use crate::engine_under_test::{definitions, load};
use crate::fhir_standin::{FhirSource, SEARCH_OVER_A_AND_B as CONNECTOR, fhir_source as source};

/// Longest any request may take before the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
/// What each source call takes.
const LATENCY: Duration = Duration::from_millis(200);
/// Concurrent searches.
const CALLERS: usize = 32;

async fn slow_source(id: &str) -> FhirSource {
    let s = FhirSource::start().await;
    s.put(json!({"resourceType": "Patient", "id": id}));
    s.delay(LATENCY);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_searches_over_slow_sources_finish_in_about_one_source_latency() {
    let (a, b) = (slow_source("pa").await, slow_source("pb").await);
    let yaml = source("a", &a.url) + &source("b", &b.url) + CONNECTOR;
    let defs = definitions(&yaml);
    let limits = Limits {
        timeout: CLIENT_TIMEOUT,
        ..open_admin()
    };
    let engine = EngineRouter::with_limits(
        load(defs.path()),
        &defs.path().join("state"),
        limits,
        CLIENT_TIMEOUT,
    );
    // Distinct `_count`s (of at least 2: one patient from each source): distinct searches,
    // none answered from another's call.
    let started = Instant::now();
    let answers = join_all((2..CALLERS + 2).map(|n| {
        engine
            .get(format!("{}/fhir/both/Patient?_count={n}", engine.base))
            .send()
    }))
    .await;
    let took = started.elapsed();
    for got in &answers {
        assert_eq!(got.status, 200, "{}", got.text);
        assert_eq!(
            got.json()["entry"].as_array().map(Vec::len),
            Some(2),
            "{}",
            got.text
        );
    }
    println!(
        "{CALLERS} searches over 2 sources of {LATENCY:?}: {took:?}; most calls in flight: a {}, b {}",
        a.max_in_flight(),
        b.max_in_flight()
    );
    assert_eq!(
        (a.max_in_flight(), b.max_in_flight()),
        (CALLERS, CALLERS),
        "every search's call was in flight at once at each source"
    );
    assert!(
        took < 2 * LATENCY,
        "{CALLERS} searches took {took:?}: serialised behind the engine, not the sources"
    );
}
