//! Benchmark: records per second through a realistic mapping (openFDA-like drug labels to
//! MedicinalProductDefinition, `examples/drug-labels`), against plain serde_json parse plus
//! serialise of the same records in the same run. Prints both rates and their ratio.
//! Run: `cargo bench -p engine --bench mapping`.

#[path = "timing/mod.rs"]
mod timing;

use std::path::PathBuf;
use std::time::Duration;

use engine::config::secrets::ProcessEnvironment;
use engine::config::validate::{Options, validate};
use serde_json::{Value, json};
use timing::best;

const RECORDS: usize = 20_000;
const ROUNDS: usize = 5;

fn records() -> Vec<String> {
    (0..RECORDS)
        .map(|i| {
            json!({
                "set_id": format!("0a1b2c3d-1111-2222-3333-{i:012}"),
                "effective_time": "20240105",
                "indications_and_usage": [format!("Relief of minor aches and pains, label {i}.")],
                "warnings": ["Do not exceed the stated dose.", "Keep out of reach of children."],
                "openfda": {
                    "brand_name": [format!("Painaway {i}"), format!("Painaway Extra {i}")],
                    "generic_name": ["IBUPROFEN"],
                    "manufacturer_name": ["Example Pharma"],
                    "route": ["ORAL"]
                }
            })
            .to_string()
        })
        .collect()
}

fn main() {
    let root = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/drug-labels/connector.yaml"
    ));
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
    let connector = model.connector("drug-labels").expect("connector");
    let mapping = connector.mapping.as_ref().expect("mapping");
    let texts = records();
    let params = json!({});

    let baseline = best(ROUNDS, || {
        let mut bytes = 0;
        for t in &texts {
            let v: Value = serde_json::from_str(t).expect("json");
            bytes += serde_json::to_string(&v).expect("json").len();
        }
        bytes
    });
    let mapped = best(ROUNDS, || {
        let mut bytes = 0;
        for t in &texts {
            let v: Value = serde_json::from_str(t).expect("json");
            let input = engine::model::mapping::Input {
                record: &v,
                vars: &connector.vars,
                params: &params,
            };
            let out = mapping.apply(input).expect("maps");
            bytes += serde_json::to_string(&out).expect("json").len();
        }
        bytes
    });
    let rate = |d: Duration| RECORDS as f64 / d.as_secs_f64();
    println!("records: {RECORDS}, best of {ROUNDS} rounds");
    println!(
        "baseline (parse + serialise): {:>10.0} records/s",
        rate(baseline)
    );
    println!(
        "mapping (parse + map + serialise): {:>10.0} records/s",
        rate(mapped)
    );
    println!(
        "ratio mapping/baseline time: {:.2} (target <= 3)",
        mapped.as_secs_f64() / baseline.as_secs_f64()
    );
}
