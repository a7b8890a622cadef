//! Bulk upload: `POST /api/v1/endpoints/{name}/reports/bulk`, many users'
//! reports in one request, as a gateway forwarding them sends them.
//!
//! Each report goes through exactly what a single post goes through (the same
//! decoding, the plugin's `validate`, the same duplicate and conflict rules, the
//! per-user quota) and the answer is sent only once every stored report of the
//! request is durably committed. What differs is only the envelope: one result
//! per report, in order, instead of one status per request. A fault of one
//! report (a malformed id, a share the plugin refuses, a conflict) is that
//! report's result; a fault of the server (storage or plugin unavailable) fails
//! the whole request, which the client retries as it is: the reports already
//! stored then answer `duplicate`.

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::{Caller, need};
use super::error::{ApiError, ErrorBody};
use super::extract::{Json, Path};
use super::openapi::{RoleErrors, STORAGE_500};
use super::rate_limit::ClientIp;
use super::registry::LiveEndpoint;
use super::report_time::check_report_time;
use super::routes::{Answer, PostReport, decode_report, json, not_approved, unknown_endpoint};
use crate::storage::{InsertReportOutcome, NewReport, StorageError, UserQuota};

/// Body of `POST /api/v1/endpoints/{name}/reports/bulk`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PostReports {
    /// The reports, each as the body of a single post; at most
    /// `limits.max_bulk_reports`.
    reports: Vec<PostReport>,
}

/// Answer of a bulk upload: one result per posted report, in the posted order.
#[derive(Serialize, ToSchema)]
pub(super) struct BulkAccepted {
    /// The results, in the order of `reports`.
    results: Vec<BulkResult>,
}

/// What became of one report of a bulk upload.
#[derive(Serialize, ToSchema)]
pub(super) struct BulkResult {
    /// The report's id, as posted.
    report_id: String,
    /// Stored, duplicate, conflict or rejected.
    status: BulkStatus,
    /// Why it was not stored (`conflict` and `rejected` only): the code and
    /// message a single post of this report would have been answered with.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<BulkError>,
}

/// The status of one report of a bulk upload.
#[derive(Serialize, ToSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum BulkStatus {
    /// Stored now (a single post: 201).
    Stored,
    /// The same report was stored before (a single post: 200).
    Duplicate,
    /// This report id was stored with another share: `report_conflict` (409).
    Conflict,
    /// Not stored: a malformed id or share (`invalid_report_id`,
    /// `invalid_share_encoding`), an id outside the report window
    /// (`report_too_old`, `report_from_future`), the plugin's own code and
    /// message for a share it refused, or `user_quota_exceeded`.
    Rejected,
}

/// The error of one report of a bulk upload.
#[derive(Serialize, ToSchema)]
pub(super) struct BulkError {
    /// Stable machine code, as a single post would answer it.
    code: &'static str,
    /// What went wrong, for people.
    message: String,
}

/// Posts many reports at once. Answered once every stored one is durable.
#[utoipa::path(post, path = "/endpoints/{name}/reports/bulk", tag = "reports",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The endpoint's name.", example = "demo")),
    request_body = PostReports,
    responses(
        (status = 200, description = "One result per report, in order: `stored`, `duplicate`, \
            `conflict` (`report_conflict`) or `rejected` (the code and message a single post \
            of it would get: `invalid_report_id`, `invalid_share_encoding`, the plugin's own, \
            `user_quota_exceeded`). Every `stored` report is durably stored.",
            body = BulkAccepted),
        (status = 400, description = "Malformed request: `malformed_json`, `bad_body`, \
            `invalid_path`.", body = ErrorBody),
        RoleErrors,
        (status = 404, description = "No such endpoint: `unknown_endpoint`.", body = ErrorBody),
        (status = 409, description = "The endpoint's plugin is no longer approved on this \
            server: `plugin_not_approved`.", body = ErrorBody),
        (status = 413, description = "Larger than `limits.max_bulk_body_bytes`: \
            `body_too_large`; more reports than `limits.max_bulk_reports`, or than the \
            per-user or per-address burst lets through at once: `too_many_reports` (send \
            them in smaller requests). Nothing was stored.", body = ErrorBody),
        (status = 429, description = "Posting too fast: `rate_limited`, with `Retry-After`; \
            every report counts against the limits. Nothing was stored.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Whole seconds until this client \
                may post again (at least 1)."))),
        (status = 500, description = STORAGE_500, body = ErrorBody),
        (status = 503, description = "Retry the same request later: `plugin_unavailable`, \
            `shutting_down`, `keys_unavailable`, `storage_unavailable` (with `Retry-After`). \
            Some reports may be stored already; a retry answers them `duplicate`.",
            body = ErrorBody),
    ))]
pub(super) async fn post_reports(
    State(state): State<Arc<AppState>>,
    ClientIp(ip): ClientIp,
    caller: Caller<need::User>,
    Path(name): Path<String>,
    body: Result<Json<PostReports>, ApiError>,
) -> Answer {
    let endpoint = state.registry.endpoint_or_load(&name).await?;
    let label = endpoint
        .as_ref()
        .map_or("", |e| e.endpoint.record.name.as_str());
    let user = (!state.config.auth.disabled).then_some(caller.principal.sub.as_str());
    // Every report counts against the limits, whatever becomes of it; a body that
    // is not a list of reports counts as one.
    let count = body.as_ref().map_or(1, |Json(body)| body.reports.len());
    let max = state.config.limits.max_bulk_reports;
    let result = if count > max {
        Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_reports",
            format!(
                "{count} reports in one request; this server takes at most {max} (limits.max_bulk_reports): send them in smaller requests"
            ),
        )
        .with_detail("max_bulk_reports", max as u64))
    } else {
        let reports = NonZeroU32::new(u32::try_from(count).unwrap_or(u32::MAX));
        match (
            reports.map_or(Ok(()), |n| state.rate_limits.check_reports(user, ip, n)),
            &endpoint,
            body,
        ) {
            (Err(e), _, _) => Err(e),
            (Ok(()), None, _) => Err(unknown_endpoint(&name)),
            (Ok(()), Some(endpoint), _) if !endpoint.approved => Err(not_approved(
                StatusCode::CONFLICT,
                &format!("endpoint {name:?} takes no reports"),
                &endpoint.endpoint.record.plugin_digest,
            )),
            (Ok(()), Some(_), Err(e)) => Err(e),
            (Ok(()), Some(endpoint), Ok(Json(body))) => {
                store_reports(&state, endpoint, &caller.principal.sub, body.reports).await
            }
        }
    };
    match result {
        Ok(results) => {
            for result in &results {
                match &result.error {
                    None => state.metrics.accepted(label),
                    Some(error) => state.metrics.rejected(label, error.code),
                }
            }
            json(StatusCode::OK, BulkAccepted { results })
        }
        Err(error) => {
            for _ in 0..count.min(max) {
                state.metrics.rejected(label, error.code);
            }
            Err(error)
        }
    }
}

/// Validates and stores `reports`, one result each; an error only for a fault of
/// the server, which fails the whole request.
async fn store_reports(
    state: &AppState,
    live: &Arc<LiveEndpoint>,
    sub: &str,
    reports: Vec<PostReport>,
) -> Result<Vec<BulkResult>, ApiError> {
    let index = state.config.server.index;
    let record = &live.endpoint.record;
    let quota = record.max_reports_per_user.map(|max| UserQuota {
        user: state.storage.user_key(sub),
        max,
    });
    // Who posted it, so that a batch can be required to hold many users.
    let poster =
        (quota.is_none() && state.sealer.counts_users()).then(|| state.storage.user_key(sub));
    let mut results = Vec::with_capacity(reports.len());
    // The reports to store, with the index of their result.
    let mut to_store = Vec::with_capacity(reports.len());
    let mut at = Vec::with_capacity(reports.len());
    for report in reports {
        let checked = match decode_report(&report).and_then(|decoded| {
            check_report_time(state, &decoded.0)?;
            Ok(decoded)
        }) {
            Ok((report_id, share, public_share)) => state
                .registry
                .validate(live, public_share, share, index)
                .await
                .map(|share| (report_id, share)),
            Err(e) => Err(e),
        };
        match checked {
            Ok((report_id, share)) => {
                at.push(results.len());
                to_store.push(NewReport {
                    report_id,
                    share,
                    quota,
                    poster,
                });
                // Replaced by the storage's outcome below.
                results.push(BulkResult {
                    report_id: report.report_id,
                    status: BulkStatus::Stored,
                    error: None,
                });
            }
            // The share's fault (the plugin's 422, a malformed id): this report only.
            Err(e) if e.status.is_client_error() => results.push(BulkResult {
                report_id: report.report_id,
                status: BulkStatus::Rejected,
                error: Some(BulkError {
                    code: e.code,
                    message: e.message,
                }),
            }),
            // The server's (plugin unavailable): the request is retried whole.
            Err(e) => return Err(e),
        }
    }
    let now = state.clock.now();
    let outcomes = state
        .storage
        .insert_reports(live.endpoint.id, now, to_store)
        .await;
    let mut stored = 0u64;
    for (index, outcome) in at.into_iter().zip(outcomes) {
        let result = &mut results[index];
        match outcome {
            Ok(InsertReportOutcome::Stored) => {
                result.status = BulkStatus::Stored;
                stored += 1;
            }
            Ok(InsertReportOutcome::Duplicate) => result.status = BulkStatus::Duplicate,
            Ok(InsertReportOutcome::Conflict) => {
                result.status = BulkStatus::Conflict;
                result.error = Some(BulkError {
                    code: "report_conflict",
                    message:
                        "this report_id was already posted with a different share (or public share)"
                            .to_owned(),
                });
            }
            Ok(InsertReportOutcome::UserQuotaExceeded { max }) => {
                result.status = BulkStatus::Rejected;
                result.error = Some(BulkError {
                    code: "user_quota_exceeded",
                    message: format!(
                        "you already have {max} reports in endpoint {:?} waiting for a batch, its most per user; post again after the next seal",
                        record.name
                    ),
                });
            }
            Err(StorageError::UnknownEndpoint) => return Err(unknown_endpoint(&record.name)),
            Err(e) => return Err(e.into()),
        }
    }
    if stored > 0 {
        state.sealer.reports_stored(&live.endpoint, stored);
    }
    Ok(results)
}
