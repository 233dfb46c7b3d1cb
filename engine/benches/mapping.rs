//! Benchmark: records per second through a realistic mapping (openFDA-like drug labels to
//! MedicinalProductDefinition, `examples/drug-labels`), against plain serde_json parse plus
//! serialise of the same records in the same run: three interleaved repetitions, each the
//! best of a few rounds per side. Prints both rates and the ratio of times (median and
//! spread), as a `ratio:` line that `scripts/bench.sh` collects. The mapping side runs what
//! the pull route runs per record: the record parsed with what the mapping reads of it
//! (`decode::json_reading` with `Mapping::reads`, the members no one reads skipped), then
//! `Mapping::write` (resources written as JSON text). A `note:` line gives the same ratio
//! with the record parsed whole, measured in the same repetitions.
//! Run: `cargo bench -p engine --bench mapping`.

#[path = "example/mod.rs"]
mod example;
#[path = "timing/mod.rs"]
mod timing;

use std::time::Duration;

use serde_json::{Value, json};
use timing::best;

const RECORDS: usize = 20_000;
const ROUNDS: usize = 3;
const REPS: usize = 3;

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
    let connector = example::connector("drug-labels/connector.yaml", "drug-labels");
    let mapping = connector.mapping.as_ref().expect("mapping");
    let texts = records();
    let params = json!({});

    let baseline = || {
        best(ROUNDS, || {
            let mut bytes = 0;
            for t in &texts {
                let v: Value = serde_json::from_str(t).expect("json");
                bytes += serde_json::to_string(&v).expect("json").len();
            }
            bytes
        })
    };
    let reads = mapping.reads();
    let mapped = |projected: bool| {
        best(ROUNDS, || {
            let mut bytes = 0;
            for t in &texts {
                // As the pull route parses a source's answer: what the mapping reads.
                let v: Value = if projected {
                    engine::model::decode::json_reading(t.as_bytes(), &reads).expect("json")
                } else {
                    serde_json::from_str(t).expect("json")
                };
                let input = engine::model::mapping::Input {
                    record: &v,
                    vars: &connector.vars,
                    params: &params,
                };
                // What the pull route does per record: each resource written as JSON
                // text (with its `Type/id` for the `fullUrl`), no `Value` built.
                for r in mapping.write(input).expect("maps") {
                    bytes += r.json.len() + r.local.map_or(0, |l| l.len());
                }
            }
            bytes
        })
    };
    // Interleaved: the two sides take turns going first.
    let (mut base, mut map, mut ratios) = (vec![], vec![], vec![]);
    let (mut whole, mut whole_ratios) = (vec![], vec![]);
    for rep in 0..REPS {
        let (b, m, w) = if rep % 2 == 0 {
            let b = baseline();
            let m = mapped(true);
            (b, m, mapped(false))
        } else {
            let w = mapped(false);
            let m = mapped(true);
            (baseline(), m, w)
        };
        base.push(rate(b));
        map.push(rate(m));
        whole.push(rate(w));
        ratios.push(m.as_secs_f64() / b.as_secs_f64());
        whole_ratios.push(w.as_secs_f64() / b.as_secs_f64());
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let (b, ..) = median(base);
    let (m, ..) = median(map);
    let (w, ..) = median(whole);
    let (wr, wlo, whi) = median(whole_ratios);
    let (r, lo, hi) = median(ratios);
    // The parse alone, projected against whole, interleaved: what the projection saves.
    let parse = |projected: bool| {
        best(ROUNDS, || {
            let mut n = 0;
            for t in &texts {
                let v: Value = if projected {
                    engine::model::decode::json_reading(t.as_bytes(), &reads).expect("json")
                } else {
                    serde_json::from_str(t).expect("json")
                };
                n += usize::from(v.is_object());
            }
            n
        })
    };
    let mut parse_ratios = vec![];
    for rep in 0..REPS {
        let (p, w) = if rep % 2 == 0 {
            let p = parse(true);
            (p, parse(false))
        } else {
            let w = parse(false);
            (parse(true), w)
        };
        parse_ratios.push(p.as_secs_f64() / w.as_secs_f64());
    }
    let (pr, plo, phi) = median(parse_ratios);
    println!("records: {RECORDS}, {REPS} interleaved repetitions of the best of {ROUNDS} rounds");
    println!(
        "note: the record parsed with what the mapping reads / parsed whole (time) = {pr:.2}x (spread {plo:.2}-{phi:.2})"
    );
    println!("baseline (parse + serialise): {b:>10.0} records/s");
    println!("mapping (projected parse + map + serialise): {m:>10.0} records/s");
    println!("mapping (whole parse + map + serialise): {w:>10.0} records/s");
    println!(
        "note: mapping with the record parsed whole / serde parse+serialise (time) = {wr:.2}x (spread {wlo:.2}-{whi:.2})"
    );
    println!(
        "ratio: mapping / serde parse+serialise (time) = {r:.2}x (spread {lo:.2}-{hi:.2}; engine {m:.0} records/s, anchor serde_json {b:.0} records/s)"
    );
}

fn rate(d: Duration) -> f64 {
    RECORDS as f64 / d.as_secs_f64()
}
