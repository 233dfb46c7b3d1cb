//! Golden tests of `engine validate` on the corpus of invalid definitions in `tests/invalid/`:
//! each case (a file, or a directory of files) with its exact expected human output in
//! `<case>.expected`. `scripts/regenerate.sh` rewrites the goldens (with `UPDATE_GOLDEN=1`).

use std::path::{Path, PathBuf};

use engine::config::diagnostic::{Format, render};
use engine::config::secrets::Environment;
use engine::config::validate::{Options, validate};

/// The environment of the corpus: `PRESENT` is set, nothing else.
struct CorpusEnv;

impl Environment for CorpusEnv {
    fn var(&self, name: &str) -> Option<String> {
        (name == "PRESENT").then(|| "present-value".to_owned())
    }

    fn read(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

fn output(case: &Path) -> String {
    let (files, read_errors) = match engine::config::load::read_all(&[case.to_path_buf()]) {
        Ok(x) => x,
        Err(e) => return format!("unusable: {e}\n"),
    };
    let opts = Options {
        allow_unresolved: false,
        run_tests: true,
        fhir_schema: None,
        env: &CorpusEnv,
    };
    let outcome = validate(&files, read_errors, &opts);
    render(&outcome.diagnostics, Format::Human, &|p: &Path| {
        outcome.texts.get(p).cloned()
    })
}

#[test]
fn invalid_definitions_give_their_exact_diagnostics() {
    let dir = Path::new("tests/invalid");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("tests/invalid")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_none_or(|x| x != "expected"))
        .collect();
    cases.sort();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let got = output(case);
        let golden = PathBuf::from(format!("{}.expected", case.display()));
        if update {
            std::fs::write(&golden, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if got != want {
            failures.push(format!("--- {}\n+++ got\n{got}", golden.display()));
        }
        assert!(
            got.contains("error: ") || got.contains("warning: ") || got.starts_with("unusable"),
            "{}: every case in the corpus must produce a diagnostic:\n{got}",
            case.display()
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} goldens differ (if the new output is right, run scripts/regenerate.sh):\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(
        cases.len() >= 40,
        "the corpus has {} cases; at least 40 are expected",
        cases.len()
    );
}
