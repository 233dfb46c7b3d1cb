//! The shipped example connectors the in-process benchmarks measure, loaded and validated as
//! `engine validate` does (secrets left unresolved). Shared by `benches/mapping.rs` and
//! `benches/formats.rs`.

use std::path::PathBuf;
use std::sync::Arc;

use engine::config::secrets::ProcessEnvironment;
use engine::config::validate::{Options, validate};
use engine::model::Connector;

/// Connector `name` of `examples/{file}` (a path inside `examples/`), checked.
pub fn connector(file: &str, name: &str) -> Arc<Connector> {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")).join(file);
    let (files, errors) = engine::config::load::read_all(&[root]).expect("example");
    let opts = Options {
        allow_unresolved: true,
        run_tests: false,
        fhir_schema: None,
        env: &ProcessEnvironment,
    };
    let model = validate(&files, errors, &opts)
        .model
        .expect("valid example");
    model.connector(name).expect("connector").clone()
}
