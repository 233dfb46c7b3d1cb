//! Reading definition files: files and directories (recursively, in name order, `*.yaml` and
//! `*.yml`), skipping hidden entries so that a mounted ConfigMap's `..data` layout is read once.

use std::path::{Path, PathBuf};

use crate::config::diagnostic::{Diagnostic, Location};

/// The text of one definition file.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

/// A path given on the command line that cannot be used at all (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct UnusablePath {
    pub path: String,
    pub reason: String,
}

/// The largest definition file read.
pub const MAX_DEFINITION_BYTES: u64 = 16 * 1024 * 1024;

/// Why a file could not be read (its words follow "cannot read ...: ").
#[derive(Debug, thiserror::Error)]
pub enum FileReadError {
    #[error("{}", io_reason(.0))]
    Io(#[from] std::io::Error),
    #[error("a folder, not a file")]
    Folder,
    #[error("not a regular file (a pipe, socket or device)")]
    NotRegular,
    #[error("larger than {max} bytes")]
    TooLarge { max: u64 },
}

/// Reads a regular file of at most `max` bytes. Anything else is refused before it is
/// opened: a named pipe would hold the reader until a writer came, a device could be endless.
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, FileReadError> {
    use std::io::Read;
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        return Err(FileReadError::Folder);
    }
    if !meta.is_file() {
        return Err(FileReadError::NotRegular);
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(FileReadError::TooLarge { max });
    }
    Ok(bytes)
}

/// Short, stable words for an I/O error.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "not found".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::IsADirectory => "is a directory".into(),
        _ => e.to_string(),
    }
}

/// Reads every definition file under `paths`. Files that cannot be read or are not UTF-8
/// become diagnostics; a path that does not exist is unusable.
pub fn read_all(paths: &[PathBuf]) -> Result<(Vec<SourceFile>, Vec<Diagnostic>), UnusablePath> {
    let mut files = Vec::new();
    let mut loops = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| UnusablePath {
            path: p.display().to_string(),
            reason: io_reason(&e),
        })?;
        if meta.is_dir() {
            walk(p, &mut Vec::new(), &mut files, &mut loops).map_err(|e| UnusablePath {
                path: p.display().to_string(),
                reason: io_reason(&e),
            })?;
        } else {
            files.push(p.clone());
        }
    }
    let mut out = Vec::with_capacity(files.len());
    let mut diags: Vec<Diagnostic> = loops
        .iter()
        .map(|dir| {
            Diagnostic::error(
                dir,
                &Location {
                    line: 1,
                    column: 1,
                    path: String::new(),
                },
                "a folder that links back to a folder it is inside (a symbolic link loop): not read again",
            )
        })
        .collect();
    for path in files {
        match read_one(&path) {
            Ok(text) => out.push(SourceFile { path, text }),
            Err(d) => diags.push(d),
        }
    }
    Ok((out, diags))
}

/// Adds the definition files under `dir` to `files`; `inside` holds the real paths of the
/// folders being walked, so that a link back to one of them is noted in `loops` once, not
/// followed until the path is too long.
fn walk(
    dir: &Path,
    inside: &mut Vec<PathBuf>,
    files: &mut Vec<PathBuf>,
    loops: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let real = std::fs::canonicalize(dir)?;
    if inside.contains(&real) {
        loops.push(dir.to_path_buf());
        return Ok(());
    }
    inside.push(real);
    let walked = walk_entries(dir, inside, files, loops);
    inside.pop();
    walked
}

fn walk_entries(
    dir: &Path,
    inside: &mut Vec<PathBuf>,
    files: &mut Vec<PathBuf>,
    loops: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let is_yaml = path.extension().is_some_and(|x| x == "yaml" || x == "yml");
        // Follows symlinks, as a ConfigMap's files are links into `..data`.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() && !is_yaml => walk(&path, inside, files, loops)?,
            _ if is_yaml => files.push(path),
            _ => {}
        }
    }
    Ok(())
}

fn read_one(path: &Path) -> Result<String, Diagnostic> {
    let at = |line, column| Location {
        line,
        column,
        path: String::new(),
    };
    let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if link && let Err(e) = std::fs::metadata(path) {
        // ELOOP: the link leads back to itself through other links.
        let why = if e.raw_os_error() == Some(40) {
            "cannot read the file: it is a symbolic link loop"
        } else {
            "cannot read the file: it is a symbolic link to nothing"
        };
        return Err(Diagnostic::error(path, &at(1, 1), why));
    }
    let bytes = read_regular(path, MAX_DEFINITION_BYTES)
        .map_err(|e| Diagnostic::error(path, &at(1, 1), format!("cannot read the file: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let valid = String::from_utf8_lossy(good);
        let line = valid.matches('\n').count() + 1;
        let column = valid.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Diagnostic::error(path, &at(line, column), "the file is not UTF-8 text")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configmap_layout_is_read_once_in_name_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("..2026_11_27_00_00_00.123");
        std::fs::create_dir(&data).expect("mkdir");
        std::fs::write(data.join("b.yaml"), "b: 1\n").expect("write");
        std::fs::write(data.join("a.yml"), "a: 1\n").expect("write");
        std::fs::write(data.join("notes.txt"), "x").expect("write");
        std::os::unix::fs::symlink(&data, dir.path().join("..data")).expect("link");
        for f in ["b.yaml", "a.yml", "notes.txt"] {
            std::os::unix::fs::symlink(Path::new("..data").join(f), dir.path().join(f))
                .expect("link");
        }
        let (files, diags) = read_all(&[dir.path().to_path_buf()]).expect("usable");
        assert!(diags.is_empty());
        let names: Vec<_> = files
            .iter()
            .map(|f| f.path.file_name().map(|n| n.to_owned()))
            .collect();
        assert_eq!(names, vec![Some("a.yml".into()), Some("b.yaml".into())]);
    }

    #[test]
    fn unreadable_and_non_utf8_files_are_located() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("bad.yaml"), b"a: 1\nb: \xff\n").expect("write");
        std::os::unix::fs::symlink("missing", dir.path().join("gone.yaml")).expect("link");
        let (files, diags) = read_all(&[dir.path().to_path_buf()]).expect("usable");
        assert!(files.is_empty());
        let found: Vec<_> = diags
            .iter()
            .map(|d| (d.line, d.column, d.message.as_str()))
            .collect();
        assert_eq!(
            found,
            vec![
                (2, 4, "the file is not UTF-8 text"),
                (
                    1,
                    1,
                    "cannot read the file: it is a symbolic link to nothing"
                )
            ]
        );
    }

    #[test]
    fn a_missing_path_is_unusable() {
        let err = read_all(&[PathBuf::from("/no/such/dir")]).expect_err("an error");
        assert_eq!(err.to_string(), "/no/such/dir: not found");
    }
}
