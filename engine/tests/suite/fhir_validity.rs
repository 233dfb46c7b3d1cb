//! The FHIR the repository commits and its connectors make, checked by an outside validator
//! against each connector's own FHIR version: `validator-cli` of helios-fhir-validator (R4 and
//! R5; installed by `scripts/tools.sh`). What is checked: the expected outputs of the mapping
//! fixtures (`tests/fixtures/mapping/*/expected.json`), what every connector of
//! `connectors.d/` and `examples/` makes of the inputs of its own `tests:`, and what every
//! guide import of `connectors.d/` would write from the guides the tests hold (the IPS guide
//! directory `tests/data/fhir-r4/gravitate-ips`, the ePI guide package of the shipped tests),
//! and the engine's own `OperationOutcome`s (of every problem kind, and of a resource the
//! run-time check refuses), in both versions.
//! All resources of one version go to the validator in one collection Bundle, so it starts
//! once per version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use engine::config::secrets::{Environment, ProcessEnvironment};
use engine::config::validate::{Options, validate};
use engine::model::vocabulary::FhirVersion;
use engine::model::{CronRead, Model, Strategy};
use serde_json::{Value, json};

use crate::outside_tools::installed_tool;

/// The models of definition files or directories, with unresolved secrets allowed (the
/// definitions' own tests need none), and with their `tests:` (read only when they run).
fn model_of(paths: &[PathBuf]) -> Model {
    model_in(paths, &ProcessEnvironment)
}

fn model_in(paths: &[PathBuf], env: &dyn Environment) -> Model {
    let (files, read_errors) = engine::config::load::read_all(paths).expect("readable");
    let opts = Options {
        allow_unresolved: true,
        run_tests: true,
        fhir_schema: None,
        env,
    };
    let outcome = validate(&files, read_errors, &opts);
    outcome
        .model
        .unwrap_or_else(|| panic!("invalid definitions {paths:?}: {:#?}", outcome.diagnostics))
}

fn root(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(rel)
}

/// Resources to check, by version: where each came from, and the resource.
type Corpus = BTreeMap<&'static str, Vec<(String, Value)>>;

fn version_name(v: FhirVersion) -> &'static str {
    match v {
        FhirVersion::R4 => "R4",
        FhirVersion::R4B => "R4B",
        FhirVersion::R5 => "R5",
    }
}

/// The expected outputs of the mapping fixtures, at their connector's version.
fn fixtures(corpus: &mut Corpus) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mapping");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    cases.sort();
    for case in cases {
        let model = model_of(&[case.join("connector.yaml")]);
        let connector = model.connectors.first().expect("a connector");
        let want: Value = serde_json::from_str(
            &std::fs::read_to_string(case.join("expected.json")).expect("expected.json"),
        )
        .expect("JSON");
        let name = case
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        for (i, r) in want.as_array().into_iter().flatten().enumerate() {
            corpus
                .entry(version_name(connector.fhir_version))
                .or_default()
                .push((format!("fixture {name} [{i}]"), r.clone()));
        }
    }
}

/// What each shipped and example connector makes of the inputs of its own tests (each test
/// must make something: a test that cannot map is a failure, not a skip).
fn shipped(corpus: &mut Corpus) {
    let mut tested = 0;
    for dir in ["connectors.d", "examples"] {
        let model = model_of(&[root(dir)]);
        for c in &model.connectors {
            for t in c.tests.iter().filter(|t| t.expect_error.is_none()) {
                let resources = c
                    .run_test(t)
                    .unwrap_or_else(|e| panic!("{}: test `{}` does not map: {e}", c.name, t.name));
                assert!(!resources.is_empty(), "{}: test `{}`", c.name, t.name);
                tested += 1;
                for (i, r) in resources.into_iter().enumerate() {
                    corpus
                        .entry(version_name(c.fhir_version))
                        .or_default()
                        .push((format!("{dir}: {} test `{}` [{i}]", c.name, t.name), r));
                }
            }
        }
    }
    // label-webhook, supporting-material and drug-labels have tests today.
    assert!(tested >= 3, "only {tested} definition tests made resources");
}

/// The process environment, with some variables set for the definitions read.
struct WithVars(BTreeMap<&'static str, String>);

impl Environment for WithVars {
    fn var(&self, name: &str) -> Option<String> {
        self.0
            .get(name)
            .cloned()
            .or_else(|| ProcessEnvironment.var(name))
    }

    fn read(&self, path: &Path) -> std::io::Result<String> {
        ProcessEnvironment.read(path)
    }
}

/// What each guide import of `connectors.d/` writes from the guide the tests hold for it, as
/// its run writes it (files filtered, Bundles split when it asks, types left out). Every
/// guide import must have one.
fn guide_imports(corpus: &mut Corpus) {
    let work = tempfile::tempdir().expect("a temporary directory");
    let epi = work.path().join("package.tgz");
    std::fs::write(&epi, crate::shipped::epi_package()).expect("write the ePI package");
    let ips = crate::helios_server::testdata("fhir-r4/gravitate-ips");
    let guides = BTreeMap::from([
        ("ips-guide-import", ("IPS_GUIDE", ips)),
        ("epi-guide-import", ("EPI_GUIDE", epi)),
    ]);
    let env = WithVars(
        guides
            .values()
            .map(|(var, path)| (*var, path.to_str().expect("a UTF-8 path").to_owned()))
            .collect(),
    );
    let model = model_in(&[root("connectors.d")], &env);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut imported = 0;
    for c in &model.connectors {
        let Strategy::Cron(cron) = &c.strategy else {
            continue;
        };
        let CronRead::Import(import) = &cron.read else {
            continue;
        };
        assert!(
            guides.contains_key(c.name.as_str()),
            "no guide in the tests for the import `{}`",
            c.name
        );
        let guide = runtime
            .block_on(engine::runtime::guide::read(import))
            .unwrap_or_else(|e| panic!("{}: the guide cannot be read: {e}", c.name));
        let out = engine::runtime::guide::resources(c, import, guide);
        assert!(out.unmapped.is_empty(), "{}: {:?}", c.name, out.unmapped);
        assert!(!out.resources.is_empty(), "{} writes nothing", c.name);
        for r in out.resources {
            let from = format!("connectors.d: {} writes {}", c.name, key_of(&r));
            corpus
                .entry(version_name(c.fhir_version))
                .or_default()
                .push((from, r));
        }
        imported += 1;
    }
    assert_eq!(imported, guides.len(), "guide imports found");
}

/// The `OperationOutcome`s the engine answers with (one per kind of problem) and puts in the
/// dead letters (a resource the run-time check refuses, one issue per element at fault), in
/// each version: the engine gives the same to R4 and R5 callers.
fn engine_outcomes(corpus: &mut Corpus) {
    use engine::runtime::fhir_validation::Invalid;
    use engine::runtime::problem::{Problem, ProblemKind as K};
    let kinds = [
        K::Invalid,
        K::Unauthorized,
        K::Forbidden,
        K::NotFound,
        K::NotSupported,
        K::Conflict,
        K::TooLarge,
        K::UriTooLong,
        K::UnsupportedMedia,
        K::Unprocessable,
        K::HeadersTooLarge,
        K::Internal,
        K::SourceFailed,
        K::Unavailable { retry_after: 30 },
        K::Timeout,
    ];
    for version in [FhirVersion::R4, FhirVersion::R5] {
        let bad = json!({"resourceType": "Composition", "status": "done",
            "subject": [{"reference": "Patient/p"}], "date": "2024-02-30"});
        let problems = engine::model::fhir_structure::structure(version)
            .expect("the structure")
            .check_instance(&bad);
        assert!(!problems.is_empty());
        let refused = Invalid {
            label: "Composition/c".into(),
            problems,
        };
        let list = corpus.entry(version_name(version)).or_default();
        list.push((
            "the engine: a refused resource's outcome".into(),
            refused.outcome(),
        ));
        for k in kinds {
            let outcome = Problem::new(k, "what went wrong").outcome();
            list.push((format!("the engine: outcome of {k:?}"), outcome));
        }
    }
}

fn key_of(r: &Value) -> String {
    format!(
        "{}/{}",
        r["resourceType"].as_str().unwrap_or("?"),
        r["id"].as_str().unwrap_or("?")
    )
}

/// The validator's errors on a collection Bundle of `resources`, each named by where its
/// resource came from.
fn errors(validator: &Path, version: &str, resources: &[(String, Value)]) -> Vec<String> {
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": resources.iter().map(|(_, r)| json!({"resource": r})).collect::<Vec<_>>(),
    });
    let file = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(file.path(), bundle.to_string()).expect("write");
    let out = std::process::Command::new(validator)
        .args(["--fhir-version", version, "--output", "json"])
        .arg(file.path())
        .output()
        .expect("validator-cli runs");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "validator-cli gave no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    report["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let path = e["path"].as_str().unwrap_or_default();
            let at = path
                .strip_prefix("Bundle.entry.")
                .and_then(|p| p.split('.').next())
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| resources.get(n))
                .map_or("the Bundle", |(from, _)| from.as_str());
            format!(
                "{version} {at}: {path}: {}",
                e["message"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

#[test]
fn committed_and_made_fhir_is_valid_for_its_version() {
    let validator = installed_tool(
        "VALIDATOR_CLI",
        "validator/bin/validator-cli",
        "validator-cli",
    );
    let mut corpus = Corpus::new();
    fixtures(&mut corpus);
    shipped(&mut corpus);
    guide_imports(&mut corpus);
    engine_outcomes(&mut corpus);
    let checked: usize = corpus.values().map(Vec::len).sum();
    assert!(checked > 100, "only {checked} resources found to check");
    let mut found = Vec::new();
    for (version, resources) in &corpus {
        // The validator knows R4 and R5; R4B is checked by the engine's own structure.
        if *version == "R4B" {
            continue;
        }
        let errors = errors(&validator, version, resources);
        eprintln!(
            "{version}: {} resources validated, {} invalid findings",
            resources.len(),
            errors.len()
        );
        found.extend(errors);
    }
    assert!(
        found.is_empty(),
        "{} of the {checked} resources' checks failed:\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn the_validator_refuses_invalid_fhir_of_either_version() {
    let validator = installed_tool(
        "VALIDATOR_CLI",
        "validator/bin/validator-cli",
        "validator-cli",
    );
    let bad = vec![(
        "a Patient whose `active` is a string".to_owned(),
        json!({"resourceType": "Patient", "id": "p", "active": "yes"}),
    )];
    for version in ["R4", "R5"] {
        let found = errors(&validator, version, &bad);
        assert!(
            found.iter().any(|e| e.contains("a Patient whose `active`")),
            "{version}: {found:?}"
        );
    }
}
