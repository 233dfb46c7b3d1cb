//! Implementation guide imports: the FHIR JSON files of a built guide, read from a directory,
//! a FHIR package (`package.tgz`) file, or a package downloaded by URL; filtered by the
//! import's file patterns and type lists. Every file and resource left out is accounted for.

mod error;
mod package;

pub use error::GuideError;
use error::{MAX_DEPTH, MAX_FILES};
use package::Files;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::model::{Connector, GuideLocation, Import};
use crate::runtime::report::Skipped;

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
pub async fn read(import: &Import) -> Result<Guide, GuideError> {
    let max = import.max_bytes;
    let files = match &import.guide {
        GuideLocation::Url(url) => {
            let bytes = package::download(
                url,
                max,
                import.timeout,
                import.auth.as_ref(),
                import.tls.as_ref(),
            )
            .await?;
            blocking(move || package::unpack(&bytes, max)).await?
        }
        GuideLocation::Path(path) => {
            let path = path.clone();
            blocking(move || read_path(&path, max)).await?
        }
    };
    select(import, files)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, GuideError> + Send + 'static,
) -> Result<T, GuideError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| GuideError::Stopped(e.to_string()))?
}

/// Filters by file pattern, then parses; a file that is not a FHIR resource is skipped and
/// counted, one that is not JSON is an error.
fn select(import: &Import, files: Files) -> Result<Guide, GuideError> {
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
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| GuideError::NotJson {
            file: path.clone(),
            message: e.to_string(),
        })?;
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

/// Reads a guide directory, or a package file.
fn read_path(path: &Path, max: u64) -> Result<Files, GuideError> {
    let meta = std::fs::metadata(path).map_err(|e| cannot_read(path, &e))?;
    if meta.is_dir() {
        return read_dir(path, max);
    }
    if meta.len() > max {
        return Err(GuideError::TooLarge {
            what: format!("the package {} is larger than {max} bytes", path.display()),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| cannot_read(path, &e))?;
    package::unpack(&bytes, max).map_err(|e| match e {
        GuideError::NotPackage { message, .. } => GuideError::NotPackage {
            where_: format!("{}: ", path.display()),
            message,
        },
        other => other,
    })
}

fn cannot_read(path: &Path, e: &std::io::Error) -> GuideError {
    GuideError::Read {
        path: path.display().to_string(),
        kind: e.kind(),
    }
}

/// Every file below `root` (symbolic links followed, Kubernetes' `..data` folders of a
/// mounted ConfigMap left out), by its path relative to `root`.
fn read_dir(root: &Path, max: u64) -> Result<Files, GuideError> {
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
                    return Err(GuideError::TooDeep(path.display().to_string()));
                }
                stack.push((path, format!("{rel}/"), depth + 1));
                continue;
            }
            if !name.ends_with(".json") {
                files.push((rel, Vec::new()));
            } else {
                total += meta.len();
                if total > max {
                    return Err(GuideError::TooLarge {
                        what: format!(
                            "the guide {} holds more than {max} bytes of JSON",
                            root.display()
                        ),
                    });
                }
                let bytes = std::fs::read(&path).map_err(|e| cannot_read(&path, &e))?;
                files.push((rel, bytes));
            }
            if files.len() > MAX_FILES {
                return Err(GuideError::TooManyFiles(format!(
                    "the guide {}",
                    root.display()
                )));
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// What an import writes, what it left out, and the files whose mapping failed.
#[derive(Debug, Default)]
pub struct Imported {
    pub resources: Vec<Value>,
    pub skipped: Vec<Skipped>,
    /// File and message of each mapping failure.
    pub unmapped: Vec<(String, String)>,
}

/// Maps each file's resources (Bundles split when the connector asks), applies the type lists
/// (counting what they leave out by type), and reports each `Type/id` the guide gives twice
/// with different content (the last in file order is written).
pub fn resources(connector: &Connector, import: &Import, guide: Guide) -> Imported {
    let mut out = Imported {
        skipped: guide.skipped,
        ..Imported::default()
    };
    let mut left_out: BTreeMap<(String, &str), usize> = BTreeMap::new();
    // `Type/id` to the file and the place in `out.resources` of its last version.
    let mut origin: HashMap<String, (String, usize)> = HashMap::new();
    for (file, record) in &guide.resources {
        let mapped = match connector.map_records([(file.clone(), record)], &json!({})) {
            Ok(m) => m,
            Err(e) => {
                out.unmapped.push((file.clone(), e.to_string()));
                continue;
            }
        };
        for r in mapped {
            let t = r["resourceType"].as_str().unwrap_or_default().to_owned();
            let reason = if !import.include_types.is_empty() && !import.include_types.contains(&t) {
                Some("not in `import.include.types`")
            } else if import.exclude_types.contains(&t) {
                Some("excluded by `import.exclude.types`")
            } else {
                None
            };
            if let Some(reason) = reason {
                *left_out.entry((t, reason)).or_default() += 1;
                continue;
            }
            if let Some(label) = crate::model::fhir::local_reference(&r) {
                if let Some((before, at)) = origin.get(&label)
                    && !same_content(&out.resources[*at], &r)
                {
                    out.skipped.push(Skipped::one(
                        &label,
                        &format!(
                            "the version in `{before}` is replaced by a different one in `{file}` (the last in file order is written)"
                        ),
                    ));
                }
                origin.insert(label, (file.clone(), out.resources.len()));
            }
            out.resources.push(r);
        }
    }
    out.skipped
        .extend(left_out.into_iter().map(|((t, reason), count)| Skipped {
            subject: t,
            reason: reason.to_owned(),
            count,
        }));
    out
}

/// Equal apart from `meta`.
fn same_content(a: &Value, b: &Value) -> bool {
    match (a.as_object(), b.as_object()) {
        (Some(x), Some(y)) => {
            let fields = |o: &'_ serde_json::Map<String, Value>| {
                o.len() - usize::from(o.contains_key("meta"))
            };
            fields(x) == fields(y)
                && x.iter()
                    .filter(|(k, _)| k.as_str() != "meta")
                    .all(|(k, v)| y.get(k) == Some(v))
        }
        _ => a == b,
    }
}
