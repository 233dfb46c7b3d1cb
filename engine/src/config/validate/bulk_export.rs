//! Checks of a cron connector's FHIR Bulk Data export (`bulkExport`): a FHIR source, the
//! level and its Group, resource types and type filters, NDJSON output, the bounds of the
//! job (durations, line and file sizes, batch size) and the origins files may come from.

use std::time::Duration;

use super::context::Ctx;
use crate::config::spec::BulkExportSpec;
use crate::model::BulkExport;
use crate::model::fhir::{is_id, is_resource_type};
use crate::model::vocabulary::BulkLevel;

/// Output formats the engine reads (all NDJSON).
const NDJSON_FORMATS: [&str; 3] = ["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// Checks a `bulkExport` and makes its model; `fhir_source` tells whether the connector's
/// source is a FHIR server.
pub fn bulk_export(ctx: &mut Ctx<'_>, b: &BulkExportSpec, fhir_source: bool) -> Option<BulkExport> {
    let at = |k: &'static str| ["spec", "bulkExport", k];
    let mut ok = true;
    if !fhir_source {
        ctx.error(
            &["spec", "bulkExport"],
            "a bulk export reads FHIR sources only",
            Some("give the connector a source of `type: fhir`".into()),
        );
        ok = false;
    }
    let level = b.level.unwrap_or_default();
    match (level, &b.group) {
        (BulkLevel::Group, None) => {
            ctx.error(
                &["spec", "bulkExport"],
                "`level: group` needs the Group's id in `group`",
                None,
            );
            ok = false;
        }
        (BulkLevel::Group, Some(g)) if !is_id(g) => {
            ctx.error(
                &at("group"),
                format!("{} is not a FHIR id", ctx.show(&at("group"), g)),
                Some("1 to 64 letters, digits, `-` and `.`".into()),
            );
            ok = false;
        }
        (BulkLevel::System | BulkLevel::Patient, Some(_)) => {
            ctx.error(&at("group"), "`group` is for `level: group` only", None);
            ok = false;
        }
        _ => {}
    }
    for (i, t) in b.types.iter().enumerate() {
        if !is_resource_type(t) {
            ctx.error(
                &["spec", "bulkExport", "types", &i.to_string()],
                format!("`{t}` is not a FHIR resource type name"),
                None,
            );
            ok = false;
        }
    }
    for (i, f) in b.type_filter.iter().enumerate() {
        let path = ["spec", "bulkExport", "typeFilter", &i.to_string()];
        let good = f
            .split_once('?')
            .is_some_and(|(t, q)| is_resource_type(t) && !q.is_empty());
        if !good {
            ctx.error(
                &path,
                format!("`{f}` is not a search query `Type?params`"),
                Some("e.g. `Observation?category=laboratory`".into()),
            );
            ok = false;
        }
    }
    let output_format = b
        .output_format
        .clone()
        .unwrap_or_else(|| NDJSON_FORMATS[0].to_owned());
    if !NDJSON_FORMATS.contains(&output_format.as_str()) {
        ctx.error(
            &at("outputFormat"),
            format!("`{output_format}` is not NDJSON, the one format a bulk export is read in"),
            Some(format!("one of {}", NDJSON_FORMATS.join(", "))),
        );
        ok = false;
    }
    let max_duration = ctx.duration(
        &at("maxDuration"),
        b.max_duration.as_deref(),
        Duration::from_secs(3600),
    );
    let max_poll_interval = ctx.duration(
        &at("maxPollInterval"),
        b.max_poll_interval.as_deref(),
        Duration::from_secs(60),
    );
    let max_line = ctx.size(&at("maxLine"), b.max_line.as_deref(), 4 << 20);
    let max_file_size = ctx.size(&at("maxFileSize"), b.max_file_size.as_deref(), 1 << 30);
    let mut file_origins = Vec::new();
    for (i, o) in b.file_origins.iter().enumerate() {
        let path = ["spec", "bulkExport", "fileOrigins", &i.to_string()];
        match url::Url::parse(o) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && u.query().is_none()
                    && u.username().is_empty()
                    && u.password().is_none() =>
            {
                file_origins.push(u.origin());
            }
            _ => {
                ctx.error(
                    &path,
                    format!("`{o}` is not an origin"),
                    Some(
                        "an http or https scheme, host and port only: `https://files.example.org`"
                            .into(),
                    ),
                );
                ok = false;
            }
        }
    }
    ok.then(|| BulkExport {
        level,
        group: b.group.clone(),
        types: b.types.clone(),
        type_filters: b.type_filter.clone(),
        since: b.since.unwrap_or_default(),
        output_format,
        max_duration,
        max_poll_interval,
        max_line: usize::try_from(max_line).unwrap_or(usize::MAX),
        max_file_size,
        batch_size: b.batch_size.map_or(1000, |n| n as usize),
        file_origins,
    })
}
