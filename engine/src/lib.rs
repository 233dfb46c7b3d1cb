//! The FOSPS connector engine: declarative YAML connectors turned into FHIR routes (pull),
//! webhooks (push) and schedules (cron). See ARCHITECTURE.md for the map of modules.

pub mod cache;
pub mod cli;
pub mod diagnostic;
pub mod fhir;
pub mod fhir_schema;
pub mod guide;
pub mod http;
pub mod jsonpath;
pub mod load;
pub mod manifests;
pub mod mapping;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod pull;
pub mod push;
pub mod reference;
pub mod request;
pub mod run;
pub mod schedule;
pub mod schema;
pub mod secrets;
pub mod serve;
pub mod sink;
pub mod spec;
pub mod state;
pub mod template;
pub mod upstream;
pub mod validate;
pub mod yaml;
