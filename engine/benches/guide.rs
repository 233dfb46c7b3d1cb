//! Benchmark: a guide import's read and preparation (a `package.tgz` file unpacked in memory,
//! file patterns applied, JSON parsed, IPS Bundles split, type lists applied), against plain
//! serde_json parsing of the same files already in memory, in the same run. Prints both rates
//! and their ratio. Run: `cargo bench -p engine --bench guide`.

#[path = "../tests/suite/fhir_package.rs"]
mod fhir_package;
#[path = "timing/mod.rs"]
mod timing;

use std::path::{Path, PathBuf};
use std::time::Duration;

use engine::config::secrets::ProcessEnvironment;
use engine::config::validate::{Options, validate};
use engine::model::{GuideLocation, Import, Strategy};
use serde_json::Value;
use timing::best;

/// Copies of the guide's files in the package.
const COPIES: usize = 40;
const ROUNDS: usize = 5;

/// The Gravitate-Health IPS guide's files (`tests/data/`), each `COPIES` times under
/// another folder.
fn guide_files() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/fhir-r4/gravitate-ips"
    ));
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the test data of tests/data/")
        .map(|e| e.expect("an entry").path())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for copy in 0..COPIES {
        for path in &names {
            let name = path.file_name().expect("a name").to_string_lossy();
            out.push((
                format!("copy-{copy}/{name}"),
                std::fs::read(path).expect("a file"),
            ));
        }
    }
    out
}

fn main() {
    let files = guide_files();
    let bytes: usize = files.iter().map(|(_, c)| c.len()).sum();
    let work = tempfile::tempdir().expect("a temporary directory");
    let tgz = work.path().join("package.tgz");
    std::fs::write(&tgz, fhir_package::package_tgz(&files)).expect("the package");
    let yaml = format!(
        "apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: {{ name: ips }}
spec:
  strategy: cron
  schedule: {{ cron: \"0 1 * * *\" }}
  import:
    guide: \"{}\"
    exclude: {{ files: [\"ValueSet-eq5d-*.json\"], types: [Questionnaire] }}
  splitBundles: true
",
        tgz.display()
    );
    let defs = work.path().join("defs");
    std::fs::create_dir(&defs).expect("defs");
    std::fs::write(defs.join("ips.yaml"), yaml).expect("the definition");
    let (sources, errors) = engine::config::load::read_all(&[defs]).expect("the definition");
    let opts = Options {
        allow_unresolved: false,
        run_tests: false,
        fhir_schema: None,
        env: &ProcessEnvironment,
    };
    let model = validate(&sources, errors, &opts)
        .model
        .expect("a valid definition");
    let connector = model.connector("ips").expect("the connector").clone();
    let Strategy::Cron(cron) = &connector.strategy else {
        panic!("a cron connector")
    };
    let engine::model::CronRead::Import(import) = &cron.read else {
        panic!("an import")
    };
    assert!(matches!(import.guide, GuideLocation::Path(_)));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let import: &Import = import;

    let baseline = best(ROUNDS, || {
        files
            .iter()
            .map(|(_, c)| serde_json::from_slice::<Value>(c).expect("JSON"))
            .collect::<Vec<Value>>()
            .len()
    });
    let mut written = 0;
    let engine = best(ROUNDS, || {
        let guide = runtime
            .block_on(engine::runtime::guide::read(import))
            .expect("the guide reads");
        let imported = engine::runtime::guide::resources(&connector, import, guide);
        written = imported.resources.len();
        written
    });
    let rate = |d: Duration| files.len() as f64 / d.as_secs_f64();
    println!(
        "guide: {} files ({:.1} MiB of JSON) in a package, {written} resources prepared",
        files.len(),
        bytes as f64 / (1 << 20) as f64
    );
    println!(
        "baseline: serde_json parse of the files in memory: {:.0} files/s ({:.1} ms)",
        rate(baseline),
        baseline.as_secs_f64() * 1e3
    );
    println!(
        "engine: package read, unpacked, filtered, parsed, split, type lists: {:.0} files/s ({:.1} ms)",
        rate(engine),
        engine.as_secs_f64() * 1e3
    );
    println!(
        "ratio of times (import / baseline): {:.2}",
        engine.as_secs_f64() / baseline.as_secs_f64()
    );
}
