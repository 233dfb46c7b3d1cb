//! The outside tools the tests run (Helios FHIR Server, validator-cli), installed by
//! `scripts/tools.sh` under `$FOSPS_TOOLS` (default `~/.local/share/fosps-tools`), or named by
//! an environment variable. Used by `helios_server` (also in the sink benchmark),
//! `fhir_validity` and `outside_12`.

use std::path::PathBuf;

/// The tool at `rel` in the tools directory, or the file the variable `env` names; fails the
/// test, saying how to install it, when it is not there.
pub fn installed_tool(env: &str, rel: &str, what: &str) -> PathBuf {
    let path = match std::env::var_os(env).filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("FOSPS_TOOLS")
            .filter(|t| !t.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                    .join(".local/share/fosps-tools")
            })
            .join(rel),
    };
    assert!(
        path.is_file(),
        "{what} is not installed at {}: run scripts/tools.sh, which installs it (or set {env} \
         to the binary)",
        path.display()
    );
    path
}
