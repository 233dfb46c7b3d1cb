//! The FOSPS connector engine: declarative YAML connectors turned into FHIR routes (pull),
//! webhooks (push) and schedules (cron). The folders are the phases, and the arrows point down:
//! `cli` uses everything; `http` serves what `runtime` built; `generate` writes what `config`
//! and `model` describe; `config` reads and checks definitions into the `model`; `runtime`
//! builds and runs the `model`. See ARCHITECTURE.md.

pub mod cli;
pub mod config;
pub mod generate;
pub mod http;
pub mod model;
pub mod runtime;
