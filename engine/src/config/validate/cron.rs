//! Checks of a cron connector: its schedule (cron expression and time zone) and what it
//! reads (`fetch`, `sync`, `import` or `bulkExport`), sink and write options.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use super::context::Ctx;
use super::names::{Names, sink_ref};
use super::source::{exactly_one, query, request};
use crate::config::spec::{ConnectorSpec, FetchSpec, ImportSpec, SyncSpec};
use crate::model::hint::did_you_mean;
use crate::model::mapping::is_resource_type;
use crate::model::template::{Table, Templates};
use crate::model::{Cron, CronRead, Parent, Schedule};

pub fn cron(
    ctx: &mut Ctx<'_>,
    spec: &ConnectorSpec,
    names: &Names<'_>,
    fhir_source: bool,
    templates: &mut Templates,
    tables: &BTreeMap<String, Table>,
) -> Option<Cron> {
    let s = spec.schedule.as_ref()?;
    let schedule = schedule(ctx, &s.cron, s.time_zone.as_deref());
    enum Read<'a> {
        Fetch(&'a FetchSpec),
        Sync(&'a SyncSpec),
        Import(&'a ImportSpec),
        BulkExport(&'a crate::config::spec::BulkExportSpec),
    }
    let read = exactly_one(
        ctx,
        &["spec"],
        "a cron connector",
        vec![
            ("fetch", spec.fetch.as_ref().map(Read::Fetch)),
            ("sync", spec.sync.as_ref().map(Read::Sync)),
            ("import", spec.import.as_ref().map(Read::Import)),
            (
                "bulkExport",
                spec.bulk_export.as_ref().map(Read::BulkExport),
            ),
        ],
    );
    let read = match read? {
        Read::Fetch(f) => {
            let request = request(
                ctx,
                &["spec", "fetch", "request"],
                &f.request,
                templates,
                tables,
            );
            let records = query(ctx, &["spec", "fetch", "records"], &f.records);
            let incremental = match &f.incremental {
                Some(i) => Some((
                    query(ctx, &["spec", "fetch", "incremental", "cursor"], &i.cursor)?,
                    i.param.clone(),
                )),
                None => None,
            };
            let parent = match &f.parent {
                None => None,
                Some(p) => {
                    if !f.each.is_empty() {
                        ctx.error_key(
                            &["spec", "fetch", "parent"],
                            "`parent` and `each` both say what the request runs for: give one",
                            None,
                        );
                    }
                    let parent_request = super::source::request(
                        ctx,
                        &["spec", "fetch", "parent", "request"],
                        &p.request,
                        templates,
                        tables,
                    );
                    let parent_records =
                        query(ctx, &["spec", "fetch", "parent", "records"], &p.records);
                    Some(Parent {
                        request: parent_request?,
                        records: parent_records?,
                        max_children: p.max_children.unwrap_or(1000) as usize,
                    })
                }
            };
            CronRead::Fetch {
                request: request?,
                records: records?,
                incremental,
                each: f.each.clone(),
                parent,
            }
        }
        Read::Import(i) => CronRead::Import(super::guide::import(ctx, i)?),
        Read::BulkExport(b) => {
            CronRead::BulkExport(super::bulk_export::bulk_export(ctx, b, fhir_source)?)
        }
        Read::Sync(y) => {
            if !fhir_source {
                ctx.error(
                    &["spec", "sync"],
                    "a sync reads FHIR sources only",
                    Some("give the connector a source of `type: fhir`".into()),
                );
            }
            for (i, t) in y.resource_types.iter().enumerate() {
                if !is_resource_type(t) {
                    ctx.error(
                        &["spec", "sync", "resourceTypes", &i.to_string()],
                        format!("`{t}` is not a FHIR resource type name"),
                        None,
                    );
                }
            }
            CronRead::Sync {
                resource_types: y.resource_types.clone(),
                incremental: y.incremental,
                page_size: y.page_size.unwrap_or(100),
            }
        }
    };
    let run = spec.run.as_ref();
    let lookback = ctx.duration(
        &["spec", "run", "lookback"],
        run.and_then(|r| r.lookback.as_deref()),
        Duration::ZERO,
    );
    let max_clock_skew = ctx.duration(
        &["spec", "run", "maxClockSkew"],
        run.and_then(|r| r.max_clock_skew.as_deref()),
        Duration::from_secs(300),
    );
    if let CronRead::Import(_) = read
        && run.is_some_and(|r| r.lookback.is_some())
    {
        ctx.error(
            &["spec", "run", "lookback"],
            "an import has no watermark to look back from",
            None,
        );
    }
    let sink = sink_ref(ctx, spec, names)?;
    let write = spec.write.as_ref();
    Some(Cron {
        schedule: schedule?,
        read,
        sink,
        identifier_system: write.and_then(|w| w.identifier_system.clone()),
        only_changed: write.is_some_and(|w| w.only_changed),
        on_record_error: run.and_then(|r| r.on_record_error).unwrap_or_default(),
        max_records: run
            .and_then(|r| r.max_records)
            .map_or(100_000, |n| usize::try_from(n).unwrap_or(usize::MAX)),
        lookback,
        max_clock_skew,
    })
}

/// Checks a cron expression (5 fields, or 6 with seconds) and its time zone, reporting both.
pub fn schedule(ctx: &mut Ctx<'_>, cron: &str, tz: Option<&str>) -> Option<Schedule> {
    let parsed = match parse_cron(cron) {
        Ok(c) => Some(c),
        Err(message) => {
            ctx.error(&["spec", "schedule", "cron"], message, None);
            None
        }
    };
    let time_zone = match tz {
        None => Some(chrono_tz::UTC),
        Some(name) => match chrono_tz::Tz::from_str(name) {
            Ok(z) => Some(z),
            Err(_) => {
                let hint = did_you_mean(name, chrono_tz::TZ_VARIANTS.iter().map(|z| z.name()));
                ctx.error(
                    &["spec", "schedule", "timeZone"],
                    format!("`{name}` is not an IANA time zone"),
                    hint.or(Some("e.g. `Europe/Madrid`, `UTC`".into())),
                );
                None
            }
        },
    };
    Some(Schedule {
        cron: cron.trim().to_owned(),
        parsed: parsed?,
        time_zone: time_zone?,
    })
}

/// A 5- or 6-field cron expression parsed (seconds first), or what is wrong with it.
pub fn parse_cron(cron: &str) -> Result<croner::Cron, String> {
    const FIELDS: [(&str, u32, u32); 6] = [
        ("second", 0, 59),
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day of month", 1, 31),
        ("month", 1, 12),
        ("day of week", 0, 7),
    ];
    let fields: Vec<&str> = cron.split_whitespace().collect();
    let full = match fields.len() {
        5 => std::iter::once("0")
            .chain(fields.iter().copied())
            .collect::<Vec<_>>(),
        6 => fields.clone(),
        n => {
            return Err(format!(
                "`{cron}` has {n} fields; cron takes 5 (minute hour day month weekday) or 6 (seconds first)"
            ));
        }
    };
    for (field, (name, lo, hi)) in full.iter().zip(FIELDS) {
        for part in field.split(',') {
            let (range, step) = part
                .split_once('/')
                .map_or((part, None), |(r, s)| (r, Some(s)));
            if let Some(step) = step
                && step.parse::<u32>().is_ok_and(|s| s == 0)
            {
                return Err(format!(
                    "`{cron}`: the {name} step `{part}` must be at least 1"
                ));
            }
            for n in range.split('-').filter_map(|x| x.parse::<u32>().ok()) {
                if n < lo || n > hi {
                    return Err(format!("`{cron}`: {name} `{n}` is outside {lo}-{hi}"));
                }
            }
        }
    }
    let with_seconds = full.join(" ");
    Schedule::parse_cron(&with_seconds)
        .map_err(|e| format!("`{cron}` is not a valid cron expression: {e}"))
}
