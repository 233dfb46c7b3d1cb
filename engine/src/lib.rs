//! The FOSPS connector engine: declarative YAML connectors turned into FHIR routes (pull),
//! webhooks (push) and schedules (cron). See ARCHITECTURE.md for the map of modules.

pub mod cli;
pub mod diagnostic;
pub mod fhir;
pub mod fhir_schema;
pub mod jsonpath;
pub mod load;
pub mod mapping;
pub mod model;
pub mod reference;
pub mod schema;
pub mod secrets;
pub mod spec;
pub mod template;
pub mod validate;
pub mod yaml;
