//! Checks of an implementation guide import: where the guide is, its allow- and deny-lists,
//! and its limits.

use std::time::Duration;

use super::context::Ctx;
use super::credentials;
use super::source::{auth, url};
use crate::config::spec::{GuideFilterSpec, ImportSpec};
use crate::model::glob::Glob;
use crate::model::mapping::is_resource_type;
use crate::model::{GuideLocation, Import};

/// Checks an implementation guide import.
pub fn import(ctx: &mut Ctx<'_>, i: &ImportSpec) -> Option<Import> {
    let at = ["spec", "import", "guide"];
    let guide = if i.guide.starts_with("http://") || i.guide.starts_with("https://") {
        url(ctx, &at, &i.guide).map(GuideLocation::Url)
    } else if i.guide.contains("://") {
        ctx.error(
            &at,
            format!(
                "{} is neither a path nor an http(s) URL",
                ctx.show(&at, &i.guide)
            ),
            None,
        );
        None
    } else if i.guide.trim().is_empty() {
        ctx.error(&at, "the guide is empty", None);
        None
    } else {
        let dir = ctx.doc.file.parent().unwrap_or(std::path::Path::new(""));
        Some(GuideLocation::Path(dir.join(&i.guide)))
    };
    let (include_files, include_types) = list(ctx, i.include.as_ref(), "include");
    let (exclude_files, exclude_types) = list(ctx, i.exclude.as_ref(), "exclude");
    for (n, t) in exclude_types.iter().enumerate() {
        if include_types.contains(t) {
            ctx.error(
                &["spec", "import", "exclude", "types", &n.to_string()],
                format!("`{t}` is both included and excluded"),
                None,
            );
        }
    }
    let max_bytes = ctx.size(
        &["spec", "import", "maxSize"],
        i.max_size.as_deref(),
        512 << 20,
    );
    let timeout = ctx.duration(
        &["spec", "import", "timeout"],
        i.timeout.as_deref(),
        Duration::from_secs(300),
    );
    let auth = i
        .auth
        .as_ref()
        .and_then(|a| auth(ctx, &["spec", "import", "auth"], a));
    let tls = i
        .tls
        .as_ref()
        .and_then(|t| credentials::tls(ctx, &["spec", "import", "tls"], t));
    if let Some(GuideLocation::Path(_)) = &guide {
        for (key, given) in [("auth", i.auth.is_some()), ("tls", i.tls.is_some())] {
            if given {
                ctx.error_key(
                    &["spec", "import", key],
                    format!("`{key}` is for a guide downloaded by URL; this guide is a path"),
                    None,
                );
            }
        }
    }
    Some(Import {
        guide: guide?,
        auth,
        tls,
        include_files,
        include_types,
        exclude_files,
        exclude_types,
        max_bytes,
        timeout,
    })
}

/// Checks an allow- or deny-list (`key` is `include` or `exclude`): its patterns and types.
fn list(ctx: &mut Ctx<'_>, f: Option<&GuideFilterSpec>, key: &str) -> (Vec<Glob>, Vec<String>) {
    let Some(f) = f else {
        return (Vec::new(), Vec::new());
    };
    let mut files = Vec::new();
    for (n, p) in f.files.iter().enumerate() {
        let at = ["spec", "import", key, "files", &n.to_string()];
        if p.trim().is_empty() {
            ctx.error(&at, "the pattern is empty", None);
            continue;
        }
        match Glob::new(p) {
            Ok(g) => files.push(g),
            Err(e) => {
                let message = format!("{} is not a valid pattern: {e}", ctx.show(&at, p));
                ctx.error(&at, message, None);
            }
        }
    }
    for (n, t) in f.types.iter().enumerate() {
        if !is_resource_type(t) {
            ctx.error(
                &["spec", "import", key, "types", &n.to_string()],
                format!("`{t}` is not a FHIR resource type name"),
                None,
            );
        }
    }
    (files, f.types.clone())
}
