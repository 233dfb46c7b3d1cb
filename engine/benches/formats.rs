//! Benchmark: the same lab records as JSON, NDJSON, CSV and XML, each decoded
//! (`model::decode`) and mapped to Observation by the mapping of `examples/lab-export-csv`,
//! in the same run: three interleaved repetitions (the formats take turns going first), each
//! the best of a few rounds. Prints each format's rate and, as `ratio:` lines that
//! `scripts/bench.sh` collects, the time of NDJSON, CSV and XML against JSON.
//! Run: `cargo bench -p engine --bench formats`.

#[path = "example/mod.rs"]
mod example;
#[path = "timing/mod.rs"]
mod timing;

use std::time::Duration;

use engine::model::decode::{CsvFormat, Format, Limits, Step, XmlFormat, decode};
use serde_json::{Value, json};
use timing::best;

const RECORDS: usize = 20_000;
const ROUNDS: usize = 3;
const REPS: usize = 3;

/// One record's fields, in column order.
fn fields(i: usize) -> [(&'static str, String); 6] {
    [
        ("patient", format!("p{i}")),
        ("loinc", "718-7".to_owned()),
        ("test", format!("Hemoglobin {i}")),
        ("value", format!("{}.{}", 10 + i % 7, i % 10)),
        ("unit", "g/dL".to_owned()),
        ("taken", format!("2024-01-{:02}T10:00:00Z", 1 + i % 28)),
    ]
}

/// The same records in the four formats.
fn documents() -> Vec<(&'static str, Format, Vec<u8>)> {
    let rows: Vec<_> = (0..RECORDS).map(fields).collect();
    let objects: Vec<Value> = rows
        .iter()
        .map(|r| Value::Object(r.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect()))
        .collect();
    let json_doc = serde_json::to_vec(&objects).expect("json");
    let ndjson: Vec<u8> = objects
        .iter()
        .flat_map(|o| {
            let mut line = serde_json::to_vec(o).expect("json");
            line.push(b'\n');
            line
        })
        .collect();
    let mut csv = String::from("patient,loinc,test,value,unit,taken\n");
    let mut xml = String::from("<?xml version=\"1.0\"?>\n<results xmlns=\"urn:example:labs\">\n");
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(|(_, v)| v.as_str()).collect();
        csv.push_str(&cells.join(","));
        csv.push('\n');
        xml.push_str("  <result>");
        for (k, v) in r {
            xml.push_str(&format!("<{k}>{v}</{k}>"));
        }
        xml.push_str("</result>\n");
    }
    xml.push_str("</results>\n");
    let xml_format = XmlFormat {
        records: ["results", "result"]
            .iter()
            .map(|l| Step {
                namespace: None,
                local: (*l).to_owned(),
            })
            .collect(),
        ..XmlFormat::default()
    };
    vec![
        ("JSON", Format::Json, json_doc),
        ("NDJSON", Format::Ndjson, ndjson),
        ("CSV", Format::Csv(CsvFormat::default()), csv.into_bytes()),
        ("XML", Format::Xml(xml_format), xml.into_bytes()),
    ]
}

fn main() {
    let connector = example::connector("lab-export-csv/connector.yaml", "lab-export-csv");
    let params = json!({});
    let docs = documents();
    let limits = Limits {
        max_values: usize::MAX,
    };
    let run = |format: &Format, bytes: &[u8]| {
        best(ROUNDS, || {
            let doc = decode(format, bytes, limits).expect("decodes");
            let out = connector.map_document(&doc, &params).expect("maps");
            assert_eq!(out.len(), RECORDS);
            out.len()
        })
    };
    // Interleaved: each repetition starts with another format.
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); docs.len()];
    for rep in 0..REPS {
        for k in 0..docs.len() {
            let i = (rep + k) % docs.len();
            let (_, format, bytes) = &docs[i];
            times[i].push(run(format, bytes));
        }
    }
    println!(
        "records: {RECORDS}, {REPS} interleaved repetitions of the best of {ROUNDS} rounds (decode + records + mapping)"
    );
    let rate = |d: &Duration| RECORDS as f64 / d.as_secs_f64();
    for (i, (name, _, bytes)) in docs.iter().enumerate() {
        let mut rates: Vec<f64> = times[i].iter().map(rate).collect();
        rates.sort_by(f64::total_cmp);
        println!(
            "{name:>6}: {:>10.0} records/s ({} bytes)",
            rates[rates.len() / 2],
            bytes.len()
        );
    }
    for (i, (name, ..)) in docs.iter().enumerate().skip(1) {
        let mut ratios: Vec<f64> = (0..REPS)
            .map(|r| times[i][r].as_secs_f64() / times[0][r].as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        let mut own: Vec<f64> = times[i].iter().map(rate).collect();
        own.sort_by(f64::total_cmp);
        let mut anchor: Vec<f64> = times[0].iter().map(rate).collect();
        anchor.sort_by(f64::total_cmp);
        println!(
            "ratio: {name} / JSON decode+map (time) = {:.2}x (spread {:.2}-{:.2}; engine {:.0} records/s, anchor JSON {:.0} records/s)",
            ratios[REPS / 2],
            ratios[0],
            ratios[REPS - 1],
            own[REPS / 2],
            anchor[REPS / 2]
        );
    }
}
