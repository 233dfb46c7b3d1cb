//! Reading and checking definitions: files and directories, the located YAML tree, the JSON
//! Schema, secrets, the spec types, and the checks that turn them into the model or into
//! diagnostics. Everything `engine validate` needs, and nothing that runs.

pub mod diagnostic;
pub mod fhir_schema;
pub mod load;
pub mod mapping;
pub mod schema;
pub mod secrets;
pub mod spec;
pub mod validate;
pub mod yaml;
