//! Building and running the model: outbound HTTP to sources, the answer cache, pull
//! interactions, push endpoints and their queues, cron runs and schedules, guide imports,
//! sinks, the state directory and metrics. It reads the checked model only, never a spec type,
//! and knows nothing of the HTTP server that calls it.

pub mod admin_access;
pub mod breaker;
pub mod build_error;
pub mod bulk;
pub mod cache;
pub mod clock;
pub mod connectivity;
pub mod dead_letters;
pub mod engine;
pub mod fhir_validation;
pub mod file_source;
pub mod guide;
pub mod json_count;
pub mod log_trace;
pub mod metrics;
pub mod otlp;
pub mod outbound;
pub mod outbound_auth;
pub mod problem;
pub mod pull;
pub mod push;
pub mod rate;
pub mod readiness;
pub mod report;
pub mod request;
pub mod run;
pub mod schedule;
pub mod shared_cache;
pub mod shared_lock;
pub mod sink;
pub mod state;
pub mod trace_context;
pub mod upstream;
