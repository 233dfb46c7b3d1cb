//! File patterns of guide imports: `*` and `?` within a name, `**` across folders, matched
//! by dynamic programming (no backtracking blow-up).

/// A file pattern: `*` and `?` match within one name, `**` across folders. Without `/` it
/// matches a file's name in any folder; with `/`, the whole path.
#[derive(Debug, Clone)]
pub struct Glob {
    pub pattern: String,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob {
            pattern: pattern.trim_start_matches('/').to_owned(),
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        let subject = if self.pattern.contains('/') {
            path
        } else {
            path.rsplit('/').next().unwrap_or(path)
        };
        wildcard(self.pattern.as_bytes(), subject.as_bytes())
    }
}

/// Wildcard matching by dynamic programming over (pattern, text) positions: no recursion, no
/// backtracking blow-up.
fn wildcard(p: &[u8], t: &[u8]) -> bool {
    // ok[j]: the pattern read so far matches t[..j].
    let mut ok = vec![false; t.len() + 1];
    ok[0] = true;
    let mut i = 0;
    while i < p.len() {
        let mut next = vec![false; t.len() + 1];
        if p[i] == b'*' {
            let across = p.get(i + 1) == Some(&b'*');
            let step = if across { 2 } else { 1 };
            // `**/` also matches no folder at all.
            let slash = across && p.get(i + 2) == Some(&b'/');
            for j in 0..=t.len() {
                next[j] = ok[j] || (j > 0 && next[j - 1] && (across || t[j - 1] != b'/'));
            }
            if slash {
                let mut after = vec![false; t.len() + 1];
                for j in 0..t.len() {
                    after[j + 1] = next[j] && t[j] == b'/';
                }
                for j in 0..=t.len() {
                    after[j] = after[j] || ok[j];
                }
                next = after;
                i += 1;
            }
            i += step;
        } else {
            for j in 0..t.len() {
                next[j + 1] = ok[j] && (p[i] == t[j] || (p[i] == b'?' && t[j] != b'/'));
            }
            i += 1;
        }
        ok = next;
    }
    ok[t.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names_anywhere_and_paths_from_the_root() {
        let g = |p: &str, path: &str| Glob::new(p).matches(path);
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
        assert!(g("**/openapi/*.json", "openapi/a.json"));
        assert!(g("**/openapi/*.json", "x/y/openapi/a.json"));
        assert!(!g("**/openapi/*.json", "x/openapi-a.json"));
        assert!(g("a/**/b.json", "a/b.json"));
        assert!(g("a/**/b.json", "a/x/y/b.json"));
        assert!(!g("a/*/b.json", "a/x/y/b.json"));
        assert!(g("/example/*.json", "example/Patient-a.json"));
    }

    #[test]
    fn many_stars_stay_fast() {
        let pattern = "*a".repeat(50) + "b";
        let text = "a".repeat(5_000);
        assert!(!Glob::new(&pattern).matches(&text));
    }
}
