//! File patterns of guide imports and file sources (`path`), compiled by `globset` to a
//! regular expression automaton (matching is linear in the path: no backtracking blow-up);
//! `GlobError`, why a pattern does not compile.

use globset::GlobBuilder;

/// Why a pattern does not compile (globset's reason, without the pattern: the caller shows it
/// where it was written).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GlobError(globset::ErrorKind);

/// A file pattern: `*` and `?` match within one name, `**` as a whole folder name across
/// folders, `[abc]` one of a set, `{a,b}` either. Without `/` it matches a file's name in any
/// folder; with `/`, the whole path.
#[derive(Debug, Clone)]
pub struct Glob {
    pub pattern: String,
    matcher: globset::GlobMatcher,
    /// Whether the pattern is matched against the file name only.
    name_only: bool,
}

impl Glob {
    /// Compiles a pattern; the error says what is wrong with it.
    pub fn new(pattern: &str) -> Result<Glob, GlobError> {
        let pattern = pattern.trim_start_matches('/');
        let matcher = GlobBuilder::new(pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| GlobError(e.kind().clone()))?
            .compile_matcher();
        Ok(Glob {
            pattern: pattern.to_owned(),
            matcher,
            name_only: !pattern.contains('/'),
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        let subject = if self.name_only {
            path.rsplit('/').next().unwrap_or(path)
        } else {
            path
        };
        self.matcher.is_match(subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(p: &str) -> Glob {
        Glob::new(p).expect("a valid pattern")
    }

    #[test]
    fn globs_match_names_anywhere_and_paths_from_the_root() {
        let g = |p: &str, path: &str| glob(p).matches(path);
        assert!(g("*.json", "Patient-a.json"));
        assert!(g("*.json", "example/Patient-a.json"));
        assert!(!g("*.json", "example/Patient-a.xml"));
        assert!(g(
            "ImplementationGuide-*.json",
            "x/ImplementationGuide-ips.json"
        ));
        assert!(g("Bundle-gravitate-?le.json", "Bundle-gravitate-ole.json"));
        assert!(!g(
            "Bundle-gravitate-?le.json",
            "Bundle-gravitate-pole.json"
        ));
        assert!(g("example/*.json", "example/Patient-a.json"));
        assert!(!g("example/*.json", "example/deep/Patient-a.json"));
        assert!(!g("example/*.json", "other/example/Patient-a.json"));
        assert!(g("example/**", "example/deep/Patient-a.json"));
        assert!(!g("example/**", "example"));
        assert!(g("**/openapi/*.json", "openapi/a.json"));
        assert!(g("**/openapi/*.json", "x/y/openapi/a.json"));
        assert!(!g("**/openapi/*.json", "x/openapi-a.json"));
        assert!(g("a/**/b.json", "a/b.json"));
        assert!(g("a/**/b.json", "a/x/y/b.json"));
        assert!(!g("a/*/b.json", "a/x/y/b.json"));
        assert!(!g("a/?/b.json", "a///b.json"));
        assert!(g("/example/*.json", "example/Patient-a.json"));
        assert!(g("Patient-[ab].json", "x/Patient-b.json"));
        assert!(!g("Patient-[ab].json", "x/Patient-c.json"));
        assert!(g("{Patient,Practitioner}-*.json", "Practitioner-x.json"));
    }

    #[test]
    fn invalid_patterns_say_why() {
        for p in ["Patient-[ab.json", "{a,b.json", "a/**/b/[z-a]"] {
            let e = Glob::new(p).expect_err(p);
            assert!(!e.to_string().is_empty(), "{p}");
        }
    }

    #[test]
    fn many_stars_stay_fast() {
        let pattern = "*a".repeat(50) + "b";
        let text = "a".repeat(5_000);
        assert!(!glob(&pattern).matches(&text));
    }
}
