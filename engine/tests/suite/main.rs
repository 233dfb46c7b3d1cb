//! The integration tests, one binary (the dependency graph is linked once, not once per test
//! file): each module below is one subject, and the modules after them are the pieces those
//! share. A test's full name is `module::test`, so `cargo test --test suite -- serve::` runs
//! one subject and `--skip helios::` leaves one out.

// The subjects.
mod admin_auth;
mod alerts;
mod architecture;
mod bounded;
mod bulk_export;
mod cache_hits;
mod cli;
mod connectivity;
mod cron_push;
mod dead_letters;
mod durability;
mod edge;
mod env_references;
mod fanout;
mod faults;
mod fhir_validity;
mod fhir_versions_helios;
mod formats;
mod helios;
mod hostile;
mod invalid;
mod log_trace;
mod mapping;
mod mapping_functions;
mod otlp_export;
mod outbound_auth;
mod outside_11;
mod outside_12;
mod outside_13;
mod outside_15;
mod outside_16;
mod outside_23;
mod outside_45;
mod outside_67;
mod parent_child;
mod projection;
mod push_signatures;
mod push_stream_queue;
mod rate_budget;
mod reload;
mod response_rules;
mod run_progress;
mod search_semantics;
mod serve;
mod shared_cache;
mod shipped;
mod sink_concurrency;
mod source_records;
mod tracing_context;
mod ui;
mod versions;

// What they share.
mod bulk_standin;
mod engine_router;
mod engine_under_test;
mod fhir_package;
mod fhir_resources;
mod fhir_standin;
mod headless_chromium;
mod helios_client;
mod helios_server;
mod hostile_source;
mod local_http;
mod outside_tools;
mod serve_process;
