//! The architecture invariants of ARCHITECTURE.md, checked by reading the sources: no import
//! cycle between files, the phases' arrows only point down (`cli` > `http` > `generate` >
//! `config` and `runtime` > `model`), `config` and `runtime` never import each other (so the
//! runtime never sees a spec type), and only `http/` names axum.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The phase folders of `src/`, lowest first: a file may use its own folder and the folders of
/// a lower rank, never a folder of its own rank or a higher one.
const PHASES: [(&str, u8); 6] = [
    ("model", 0),
    ("config", 1),
    ("runtime", 1),
    ("generate", 2),
    ("http", 3),
    ("cli", 4),
];

/// Crates that only the named folder may use.
const CONFINED: [(&str, &str); 1] = [("axum", "http")];

#[test]
fn no_file_imports_in_a_cycle() {
    let files = sources();
    let graph = graph(&files);
    let cycles = cycles(&graph);
    let mut shown = String::new();
    for files in &cycles {
        shown.push_str(&format!("\n{}:\n", files.join(", ")));
        for from in files {
            for to in graph[from].iter().filter(|t| files.contains(t)) {
                shown.push_str(&format!("  {from} uses {to}\n"));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "files that import each other, in a cycle:{shown}"
    );
}

#[test]
fn arrows_between_phases_only_point_down() {
    let files = sources();
    let mut wrong = Vec::new();
    for (from, to) in graph(&files)
        .iter()
        .flat_map(|(f, ts)| ts.iter().map(move |t| (f, t)))
    {
        let (Some(a), Some(b)) = (phase(from), phase(to)) else {
            continue;
        };
        if a.0 != b.0 && a.1 <= b.1 {
            wrong.push(format!("{from} uses {to}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "arrows that point up or sideways:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn confined_crates_are_used_only_in_their_folder() {
    let mut wrong = Vec::new();
    for (name, text) in sources() {
        for (krate, folder) in CONFINED {
            let inside = name.starts_with(&format!("{folder}/"));
            if !inside && uses_crate(&text, krate) {
                wrong.push(format!("{name} uses {krate}, which only {folder}/ may use"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The checker itself: a cycle, an upward arrow and a confined crate are all found in a small
/// made-up tree, so the tests above cannot pass by finding nothing.
#[test]
fn the_checker_finds_what_it_looks_for() {
    let files: BTreeMap<String, String> = [
        ("lib.rs", "pub mod model; pub mod runtime; pub mod config;"),
        ("model/mod.rs", "pub mod a; pub mod b;"),
        (
            "model/a.rs",
            "use super::b::X;\nfn f() { crate::runtime::go(); }\nmod tests { use super::*; }",
        ),
        (
            "model/b.rs",
            "use crate::model::{a::Y, mod_free};\n// crate::config::not_code\n",
        ),
        (
            "runtime/mod.rs",
            "use axum::Router; fn g() { let s = \"crate::config\"; }",
        ),
        (
            "config/mod.rs",
            "use crate::model::a;\nmod tests { use super::super::runtime::X; }",
        ),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_owned(), t.to_owned()))
    .collect();
    let graph = graph(&files);
    assert_eq!(
        cycles(&graph),
        vec![vec!["model/a.rs".to_owned(), "model/b.rs".to_owned()]]
    );
    assert!(graph["model/a.rs"].contains("runtime/mod.rs"));
    assert!(!graph["model/b.rs"].contains("config/mod.rs"));
    assert!(!graph["runtime/mod.rs"].contains("config/mod.rs"));
    assert!(graph["config/mod.rs"].contains("model/a.rs"));
    assert!(graph["config/mod.rs"].contains("runtime/mod.rs"));
    assert!(!graph["model/a.rs"].contains("model/mod.rs"));
    assert!(uses_crate(&files["runtime/mod.rs"], "axum"));
    assert!(!uses_crate(&files["config/mod.rs"], "axum"));
}

/// Every `.rs` file below `src/`, by its path relative to `src/`, with comments and string
/// literals blanked out.
fn sources() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
            let path: PathBuf = entry.expect("src/ entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let name = path
                    .strip_prefix(&root)
                    .expect("below src/")
                    .to_string_lossy()
                    .replace('\\', "/");
                let text = std::fs::read_to_string(&path).expect("source is UTF-8");
                out.insert(name, text);
            }
        }
    }
    assert!(out.len() > 40, "found only {} source files", out.len());
    out
}

/// The module path of a file (`model/mapping/mod.rs` is `model::mapping`).
fn module_of(file: &str) -> Vec<String> {
    let trimmed = file.trim_end_matches(".rs");
    let mut segs: Vec<String> = trimmed.split('/').map(str::to_owned).collect();
    if matches!(
        segs.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        segs.pop();
    }
    segs
}

/// The code of a file with comments, strings and character literals blanked out.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == 'r'
            && matches!(next, Some('#' | '"'))
            && !ident_char(chars.get(i.wrapping_sub(1)))
        {
            let mut hashes = 0;
            let mut j = i + 1;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|h| chars.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            out.push_str("' '");
            i += 3;
        } else if c == '\'' && next == Some('\\') {
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_char(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// Every path the code names: `use` trees expanded (`a::{b, c::d}` gives `a::b` and
/// `a::c::d`), and the paths written inline.
fn paths_in(code: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = find_word(&code[from..], "use") {
        let start = from + at + 3;
        let end = code[start..].find(';').map_or(code.len(), |e| start + e);
        let mut paths = Vec::new();
        expand(code[start..end].trim(), &mut Vec::new(), &mut paths);
        out.extend(paths.into_iter().map(|p| (start, p)));
        from = end;
    }
    let chars: Vec<(usize, char)> = code.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|(_, c)| *c);
    let mut i = 0;
    while i < chars.len() {
        if ident_char(at(i).as_ref()) && !ident_char(i.checked_sub(1).and_then(at).as_ref()) {
            let mut j = i;
            let mut segs = Vec::new();
            loop {
                let start = j;
                while ident_char(at(j).as_ref()) {
                    j += 1;
                }
                segs.push(chars[start..j].iter().map(|(_, c)| *c).collect::<String>());
                if at(j) == Some(':') && at(j + 1) == Some(':') && ident_char(at(j + 2).as_ref()) {
                    j += 2;
                } else {
                    break;
                }
            }
            if segs.len() > 1 {
                out.push((chars[i].0, segs));
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

fn find_word(text: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = text[from..].find(word) {
        let at = from + p;
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        if !ident_char(before.as_ref()) && after.is_some_and(char::is_whitespace) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// Expands one `use` tree into its paths.
fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let depth = prefix.len();
        prefix.extend(head);
        let mut level = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => level += 1,
                '}' => level -= 1,
                ',' if level == 0 => {
                    expand(&inner[start..i], prefix, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], prefix, out);
        prefix.truncate(depth);
    } else if !tree.is_empty() {
        let name = tree.split(" as ").next().unwrap_or(tree);
        let mut path = prefix.clone();
        path.extend(
            name.split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty() && *s != "*" && *s != "self")
                .map(str::to_owned),
        );
        out.push(path);
    }
}

/// The inline modules of a file (`mod tests { ... }`): each one's name and the byte range of its
/// body, so that `super::` inside it is read from the right place.
fn inline_modules(code: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = find_word(&code[from..], "mod") {
        let start = from + at + 3;
        from = start;
        let rest = &code[start..];
        let name: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let after_name = rest.trim_start()[name.len()..].trim_start();
        if name.is_empty() || !after_name.starts_with('{') {
            continue;
        }
        let open = start + (rest.len() - after_name.len());
        let mut depth = 0usize;
        let mut close = code.len();
        for (i, c) in code[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push((name, open..close));
    }
    out
}

/// The files each file uses (itself left out).
fn graph(files: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeMap<Vec<String>, String> = files
        .keys()
        .filter(|f| f.as_str() != "main.rs")
        .map(|f| (module_of(f), f.clone()))
        .collect();
    let mut graph = BTreeMap::new();
    for (file, text) in files {
        let here = module_of(file);
        let code = code_only(text);
        let inline = inline_modules(&code);
        let mut uses = BTreeSet::new();
        for (at, path) in paths_in(&code) {
            let mut here = here.clone();
            here.extend(
                inline
                    .iter()
                    .filter(|(_, body)| body.contains(&at))
                    .map(|(name, _)| name.clone()),
            );
            let absolute: Vec<String> = match path[0].as_str() {
                "crate" => path[1..].to_vec(),
                "super" => {
                    let mut base = here.clone();
                    let mut rest = &path[..];
                    while rest.first().is_some_and(|s| s == "super") {
                        base.pop();
                        rest = &rest[1..];
                    }
                    base.extend(rest.iter().cloned());
                    base
                }
                "self" => here.iter().chain(&path[1..]).cloned().collect(),
                child => {
                    let mut candidate = here.clone();
                    candidate.push(child.to_owned());
                    if !modules.contains_key(&candidate) {
                        continue;
                    }
                    here.iter().chain(&path[..]).cloned().collect()
                }
            };
            let target = (0..=absolute.len())
                .rev()
                .find_map(|n| modules.get(&absolute[..n]));
            if let Some(target) = target
                && target != file
                && !absolute.is_empty()
            {
                uses.insert(target.clone());
            }
        }
        graph.insert(file.clone(), uses);
    }
    graph
}

/// The cycles of the graph: each strongly connected component of more than one file, its
/// files in name order.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let names: Vec<&String> = graph.keys().collect();
    let index: BTreeMap<&String, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let reach = |from: usize| -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from];
        while let Some(n) = stack.pop() {
            for t in &graph[names[n]] {
                if let Some(&ti) = index.get(t)
                    && seen.insert(ti)
                {
                    stack.push(ti);
                }
            }
        }
        seen
    };
    let reaches: Vec<BTreeSet<usize>> = (0..names.len()).map(reach).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for i in 0..names.len() {
        if done.contains(&i) || !reaches[i].contains(&i) {
            continue;
        }
        let component: Vec<usize> = (0..names.len())
            .filter(|&j| reaches[i].contains(&j) && reaches[j].contains(&i))
            .collect();
        done.extend(component.iter().copied());
        out.push(component.iter().map(|&j| names[j].clone()).collect());
    }
    out
}

/// The phase folder of a file and its rank (`lib.rs` and `main.rs` have none).
fn phase(file: &str) -> Option<(&'static str, u8)> {
    let top = file.split('/').next()?;
    PHASES.iter().find(|(name, _)| *name == top).copied()
}

fn uses_crate(text: &str, krate: &str) -> bool {
    paths_in(&code_only(text))
        .iter()
        .any(|(_, p)| p.first().is_some_and(|s| s == krate))
}
