//! Checks of a push connector: its endpoint, caller authentication, limits and
//! deduplication.

use std::time::Duration;

use super::context::Ctx;
use super::names::{Names, sink_ref};
use super::source::{exactly_one, query};
use crate::config::spec::{ApiKeySpec, BearerSpec, ConnectorSpec, HmacSpec, PushMode};
use crate::model::vocabulary::HmacSigned;
use crate::model::{Push, PushAuth, Secret};

/// Checks the `push` section.
pub fn push(
    ctx: &mut Ctx<'_>,
    spec: &ConnectorSpec,
    name: &str,
    names: &Names<'_>,
) -> Option<Push> {
    let p = spec.push.as_ref()?;
    let auth = push_auth(ctx, &p.auth)?;
    let records = query(
        ctx,
        &["spec", "push", "records"],
        p.records.as_deref().unwrap_or("$"),
    )?;
    Some(Push {
        path: p.path.clone().unwrap_or_else(|| format!("/push/{name}")),
        auth,
        max_body: ctx.size(&["spec", "push", "maxBody"], p.max_body.as_deref(), 1 << 20),
        mode: p.mode.unwrap_or(PushMode::Queued),
        records,
        max_records: p
            .max_records
            .map_or(1000, |n| usize::try_from(n).unwrap_or(usize::MAX)),
        max_values: p
            .max_values
            .map_or(500_000, |n| usize::try_from(n).unwrap_or(usize::MAX)),
        format: super::format::format(
            ctx,
            &["spec", "push", "format"],
            p.format.as_ref(),
            spec.fhir_version
                .unwrap_or(crate::model::vocabulary::FhirVersion::R4),
        ),
        idempotency_header: p
            .idempotency_header
            .clone()
            .unwrap_or_else(|| "Idempotency-Key".into()),
        dedup_window: ctx.duration(
            &["spec", "push", "dedupWindow"],
            p.dedup_window.as_deref(),
            Duration::from_secs(86_400),
        ),
        dedup_limit: p.dedup_limit.unwrap_or(100_000).max(1) as usize,
        sink: sink_ref(ctx, spec, names)?,
        identifier_system: spec
            .write
            .as_ref()
            .and_then(|w| w.identifier_system.clone()),
    })
}

fn push_auth(ctx: &mut Ctx<'_>, a: &crate::config::spec::PushAuthSpec) -> Option<PushAuth> {
    let at = ["spec", "push", "auth"];
    enum Kind<'a> {
        Hmac(&'a HmacSpec),
        Bearer(&'a BearerSpec),
        ApiKey(&'a ApiKeySpec),
    }
    let kind = exactly_one(
        ctx,
        &at,
        "push auth",
        vec![
            ("hmac", a.hmac.as_ref().map(Kind::Hmac)),
            ("bearer", a.bearer.as_ref().map(Kind::Bearer)),
            ("apiKey", a.api_key.as_ref().map(Kind::ApiKey)),
        ],
    )?;
    Some(match kind {
        Kind::Hmac(h) => {
            if !ctx.unresolved(&["spec", "push", "auth", "hmac", "secret"]) && h.secret.len() < 16 {
                ctx.error(
                    &["spec", "push", "auth", "hmac", "secret"],
                    "an HMAC secret needs at least 16 characters",
                    None,
                );
            }
            let signed = h.signed.unwrap_or_default();
            if signed == HmacSigned::Body {
                for (field, set) in [
                    ("timestampHeader", h.timestamp_header.is_some()),
                    ("tolerance", h.tolerance.is_some()),
                ] {
                    if set {
                        ctx.error_key(
                            &["spec", "push", "auth", "hmac", field],
                            format!("`{field}` applies only to `signed: timestamp.body`; with `signed: body` no timestamp is signed"),
                            Some("remove it, or sign `timestamp.body`".into()),
                        );
                    }
                }
            }
            PushAuth::Hmac {
                secret: Secret(h.secret.clone()),
                signed,
                encoding: h.encoding.unwrap_or_default(),
                prefix: h.prefix.clone(),
                header: h.header.clone().unwrap_or_else(|| "X-Signature".into()),
                timestamp_header: h
                    .timestamp_header
                    .clone()
                    .unwrap_or_else(|| "X-Timestamp".into()),
                tolerance: ctx.duration(
                    &["spec", "push", "auth", "hmac", "tolerance"],
                    h.tolerance.as_deref(),
                    Duration::from_secs(300),
                ),
            }
        }
        Kind::Bearer(b) => PushAuth::Bearer(Secret(b.token.clone())),
        Kind::ApiKey(k) => PushAuth::ApiKey {
            header: k.header.clone(),
            value: Secret(k.value.clone()),
        },
    })
}
