//! Implementation guide imports: the FHIR JSON files of a built guide, read from a directory,
//! a FHIR package (`package.tgz`) file, or a package downloaded by URL; filtered by the
//! import's file patterns; parsed. Every file left out is accounted for in the report.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::model::{GuideLocation, Import};
use crate::run::Skipped;

/// Most files a guide may hold.
const MAX_FILES: usize = 100_000;
/// Deepest folder nesting read in a guide directory.
const MAX_DEPTH: usize = 32;
/// Files of a FHIR package that describe the package, not FHIR resources.
const PACKAGE_FILES: [&str; 2] = ["package.json", ".index.json"];

/// The resources of a guide, each with its file, and what was left out.
#[derive(Debug, Default)]
pub struct Guide {
    pub resources: Vec<(String, Value)>,
    pub skipped: Vec<Skipped>,
}

/// Reads the guide of an import. A guide that cannot be read, or a `.json` file that is not
/// JSON, fails the whole read: nothing of a guide read in part is written.
pub async fn read(import: &Import) -> Result<Guide, String> {
    let files = match &import.guide {
        GuideLocation::Url(url) => {
            let bytes = download(url, import.max_bytes, import.timeout).await?;
            let max = import.max_bytes;
            blocking(move || unpack(&bytes, max)).await?
        }
        GuideLocation::Path(path) => {
            let path = path.clone();
            let max = import.max_bytes;
            blocking(move || read_path(&path, max)).await?
        }
    };
    select(import, files)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("the guide reader stopped: {e}"))?
}

/// Files of the guide by their path in it, in path order.
type Files = Vec<(String, Vec<u8>)>;

/// Filters by file pattern, then parses; a file that is not a FHIR resource is skipped and
/// counted, one that is not JSON is an error.
fn select(import: &Import, files: Files) -> Result<Guide, String> {
    let mut guide = Guide::default();
    let mut not_json = 0;
    for (path, bytes) in files {
        let name = path.rsplit('/').next().unwrap_or(&path);
        if !name.ends_with(".json") {
            not_json += 1;
            continue;
        }
        let skip = |reason: &str| Skipped::one(&path, reason);
        if !import.include_files.is_empty()
            && !import.include_files.iter().any(|g| g.matches(&path))
        {
            guide.skipped.push(skip("not in `import.include.files`"));
            continue;
        }
        if let Some(g) = import.exclude_files.iter().find(|g| g.matches(&path)) {
            guide.skipped.push(skip(&format!(
                "excluded by `{}` of `import.exclude.files`",
                g.pattern
            )));
            continue;
        }
        if PACKAGE_FILES.contains(&name) {
            guide.skipped.push(skip("package metadata"));
            continue;
        }
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("`{path}` is not JSON: {e}"))?;
        if value.get("resourceType").is_some_and(Value::is_string) {
            guide.resources.push((path, value));
        } else {
            guide
                .skipped
                .push(skip("not a FHIR resource (no `resourceType`)"));
        }
    }
    if not_json > 0 {
        guide.skipped.push(Skipped {
            subject: "files not ending in `.json`".into(),
            reason: "only FHIR JSON is imported".into(),
            count: not_json,
        });
    }
    Ok(guide)
}

/// Downloads a package, refusing answers larger than `max` bytes.
async fn download(url: &url::Url, max: u64, timeout: Duration) -> Result<Vec<u8>, String> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("fosps-engine/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match fetch(&client, url, max).await {
            Ok(bytes) => return Ok(bytes),
            Err((transient, message)) if !transient || attempt > 2 => {
                return Err(format!(
                    "cannot download the guide package {url}: {message}"
                ));
            }
            Err(_) => tokio::time::sleep(crate::upstream::backoff(attempt)).await,
        }
    }
}

/// One download attempt; the error says whether another attempt may succeed.
async fn fetch(
    client: &reqwest::Client,
    url: &url::Url,
    max: u64,
) -> Result<Vec<u8>, (bool, String)> {
    let mut resp = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| (true, crate::upstream::without_url(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        let transient = status.is_server_error() || status.as_u16() == 429;
        return Err((transient, format!("the server answered {status}")));
    }
    let too_large = || {
        (
            false,
            format!("the package is larger than {max} bytes (`import.maxSize`)"),
        )
    };
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| (true, crate::upstream::without_url(&e)))?
    {
        if (body.len() + chunk.len()) as u64 > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads a guide directory, or a package file.
fn read_path(path: &Path, max: u64) -> Result<Files, String> {
    let meta = std::fs::metadata(path).map_err(|e| cannot_read(path, &e))?;
    if meta.is_dir() {
        return read_dir(path, max);
    }
    if meta.len() > max {
        return Err(format!(
            "the package {} is larger than {max} bytes (`import.maxSize`)",
            path.display()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| cannot_read(path, &e))?;
    unpack(&bytes, max).map_err(|e| format!("{}: {e}", path.display()))
}

fn cannot_read(path: &Path, e: &std::io::Error) -> String {
    format!(
        "cannot read {}: {}",
        path.display(),
        crate::load::io_reason(e)
    )
}

/// Every file below `root` (symbolic links followed, Kubernetes' `..data` folders of a
/// mounted ConfigMap left out), by its path relative to `root`.
fn read_dir(root: &Path, max: u64) -> Result<Files, String> {
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut stack: Vec<(PathBuf, String, usize)> = vec![(root.to_path_buf(), String::new(), 0)];
    while let Some((dir, prefix, depth)) = stack.pop() {
        let cannot = |e: std::io::Error| cannot_read(&dir, &e);
        for entry in std::fs::read_dir(&dir).map_err(cannot)? {
            let entry = entry.map_err(cannot)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("..") {
                continue;
            }
            let path = entry.path();
            let rel = format!("{prefix}{name}");
            let meta = std::fs::metadata(&path).map_err(|e| cannot_read(&path, &e))?;
            if meta.is_dir() {
                if depth + 1 > MAX_DEPTH {
                    return Err(format!(
                        "{} is nested deeper than {MAX_DEPTH} folders",
                        path.display()
                    ));
                }
                stack.push((path, format!("{rel}/"), depth + 1));
                continue;
            }
            if !name.ends_with(".json") {
                files.push((rel, Vec::new()));
            } else {
                total += meta.len();
                if total > max {
                    return Err(format!(
                        "the guide {} holds more than {max} bytes of JSON (`import.maxSize`)",
                        root.display()
                    ));
                }
                let bytes = std::fs::read(&path).map_err(|e| cannot_read(&path, &e))?;
                files.push((rel, bytes));
            }
            if files.len() > MAX_FILES {
                return Err(format!(
                    "the guide {} holds more than {MAX_FILES} files",
                    root.display()
                ));
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// The regular files of a gzipped tar (a FHIR package), by path below `package/`, refusing
/// archives that unpack to more than `max` bytes. Nothing is written to disk.
fn unpack(bytes: &[u8], max: u64) -> Result<Files, String> {
    let not_package = |e: std::io::Error| format!("not a gzipped tar package: {e}");
    let too_large = || format!("the package unpacks to more than {max} bytes (`import.maxSize`)");
    // The sizes the entries declare are checked before they are read; the cap on the
    // decompressed stream also bounds what the headers themselves take.
    let cap = max.saturating_add(1024 * (MAX_FILES as u64 + 1));
    let gz = flate2::read::GzDecoder::new(bytes).take(cap);
    let mut archive = tar::Archive::new(gz);
    let mut files = Vec::new();
    let mut total = 0u64;
    for entry in archive.entries().map_err(not_package)? {
        let mut entry = entry.map_err(not_package)?;
        total = total.saturating_add(entry.size());
        if total > max {
            return Err(too_large());
        }
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(not_package)?
            .to_string_lossy()
            .replace('\\', "/");
        let rel = path.strip_prefix("package/").unwrap_or(&path).to_owned();
        let mut content = Vec::new();
        if rel.ends_with(".json") {
            entry.read_to_end(&mut content).map_err(not_package)?;
        }
        files.push((rel, content));
        if files.len() > MAX_FILES {
            return Err(format!("the package holds more than {MAX_FILES} files"));
        }
    }
    if archive.into_inner().limit() == 0 {
        return Err(too_large());
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

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

    fn tgz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, content) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            builder.append_data(&mut h, path, *content).expect("append");
        }
        builder
            .into_inner()
            .and_then(|gz| gz.finish())
            .expect("tgz")
    }

    #[test]
    fn packages_unpack_below_package_and_refuse_bombs() {
        let bytes = tgz(&[
            ("package/package.json", b"{}"),
            (
                "package/example/Patient-a.json",
                br#"{"resourceType":"Patient","id":"a"}"#,
            ),
            ("package/other/readme.txt", b"text"),
        ]);
        let files = unpack(&bytes, 1 << 20).expect("unpacks");
        let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["example/Patient-a.json", "other/readme.txt", "package.json"]
        );
        let zeros = vec![0u8; 200_000];
        let bomb = tgz(&[("package/big.json", &zeros)]);
        assert!(bomb.len() < 10_000, "the bomb compresses");
        let err = unpack(&bomb, 100_000).expect_err("too large");
        assert!(err.contains("more than 100000 bytes"), "{err}");
        let err = unpack(b"not gzip", 1 << 20).expect_err("not a package");
        assert!(err.starts_with("not a gzipped tar package"), "{err}");
    }
}
