//! Routes of sealed batches: the scientists' (`/api/v1/endpoints/{name}/batches…`,
//! `…/total`) and the peers' (`/peer/v1/endpoints/{name}/…`). The protocol itself,
//! with its messages, is in `seal`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{Caller, Peer, need};
use super::error::{ApiError, ErrorBody};
use super::extract::{Body, Path, Query};
use super::metrics::RejectLabels;
use super::openapi::{PeerAuthErrors, RoleErrors, STORAGE_500, STORAGE_503};
use super::paging::{PageQuery, cut};
use super::registry::LiveEndpoint;
use super::routes::{Answer, json, timestamp, unknown_endpoint};
use super::{AppState, seal};
use crate::storage::{BatchInfo, DeleteBatchOutcome};

fn live(state: &AppState, name: &str) -> Result<Arc<LiveEndpoint>, ApiError> {
    state
        .registry
        .endpoint(name)
        .ok_or_else(|| unknown_endpoint(name))
}

/// A sealed batch.
#[derive(Serialize, ToSchema)]
#[schema(as = Batch)]
pub(super) struct BatchView {
    /// The batch's id, 32 hex digits, the same on every server.
    #[schema(pattern = "^[0-9a-f]{32}$")]
    batch_id: String,
    /// How many reports it folds.
    count: u64,
    /// How many reports the seal that made it rejected because their validity
    /// proofs failed (robust endpoints; 0 otherwise).
    rejected: u64,
    /// When this server committed it (RFC 3339).
    sealed_at: String,
    /// The earliest report time among its reports (RFC 3339); left out for
    /// batches sealed before spans were recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    reports_from: Option<String>,
    /// The latest report time among its reports (RFC 3339); left out with
    /// `reports_from`.
    #[serde(skip_serializing_if = "Option::is_none")]
    reports_to: Option<String>,
}

/// The query of `GET /api/v1/endpoints/{name}/batches` beside its paging.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SinceQuery {
    /// Only the batches this server sealed at or after this time (RFC 3339, e.g.
    /// `2026-01-31T00:00:00Z`): what a scientist reads without sealing.
    #[param(example = "2026-01-31T00:00:00Z")]
    since: Option<String>,
}

impl SinceQuery {
    /// The time asked for; 400 `bad_since` when it is not RFC 3339.
    fn since(&self) -> Result<Option<std::time::SystemTime>, ApiError> {
        self.since
            .as_deref()
            .map(|since| {
                humantime::parse_rfc3339_weak(since).map_err(|e| {
                    ApiError::bad_request(
                        "bad_since",
                        format!(
                            "since must be a time in RFC 3339 form such as 2026-01-31T00:00:00Z, not {since:?} ({e})"
                        ),
                    )
                })
            })
            .transpose()
    }
}

/// Answer of `GET /api/v1/endpoints/{name}/batches`.
#[derive(Serialize, ToSchema)]
pub(super) struct BatchList {
    /// A page of the endpoint's sealed batches, oldest first.
    batches: Vec<BatchView>,
    /// The `after` of the next page (the last batch id of this one); null after
    /// the last.
    next: Option<String>,
}

/// Answer of `GET /api/v1/endpoints/{name}/batches/{batch_id}`.
#[derive(Serialize, ToSchema)]
pub(super) struct BatchShare {
    /// The batch's id, 32 hex digits.
    #[schema(pattern = "^[0-9a-f]{32}$")]
    batch_id: String,
    /// How many reports it folds.
    count: u64,
    /// How many reports its seal rejected (failed validity proofs).
    rejected: u64,
    /// When this server committed it (RFC 3339).
    sealed_at: String,
    /// The earliest report time among its reports (RFC 3339); left out for
    /// batches sealed before spans were recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    reports_from: Option<String>,
    /// The latest report time among its reports (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    reports_to: Option<String>,
    /// This server's index: add the shares of every index with the plugin's `unshard`.
    server_index: u32,
    /// This server's released share of the batch's aggregate, base64; it never changes.
    #[schema(format = Byte)]
    share: String,
}

/// Answer of `GET /api/v1/endpoints/{name}/total`.
#[derive(Serialize, ToSchema)]
pub(super) struct Total {
    /// How many batches are merged.
    batches: u64,
    /// How many reports they fold.
    count: u64,
    /// How many reports their seals rejected (failed validity proofs).
    rejected: u64,
    /// This server's index.
    server_index: u32,
    /// The merge of this server's released shares of every batch, base64.
    #[schema(format = Byte)]
    share: String,
}

impl From<BatchInfo> for BatchView {
    fn from(info: BatchInfo) -> Self {
        Self {
            batch_id: hex::encode(info.batch_id),
            count: info.count,
            rejected: info.rejected,
            sealed_at: timestamp(info.sealed_at),
            reports_from: info.span.map(|(first, _)| timestamp(first)),
            reports_to: info.span.map(|(_, last)| timestamp(last)),
        }
    }
}

/// Seals a batch: every server folds exactly the same reports, the oldest
/// unbatched ones that every server holds, and releases its share of the
/// aggregate. Only server 0 seals.
#[utoipa::path(post, path = "/endpoints/{name}/batches", tag = "batches",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The endpoint's name.", example = "demo")),
    responses(
        (status = 201, description = "Sealed (or a pending seal completed).", body = BatchView),
        (status = 400, description = "Undecodable path: `invalid_path`.", body = ErrorBody),
        RoleErrors,
        (status = 404, description = "No such endpoint: `unknown_endpoint`.", body = ErrorBody),
        (status = 409, description = "Nothing sealed: `batch_too_small` (with integers \
            `agreed`, reports held by every server, and `needed`, the endpoint's \
            `min_batch`), `too_few_users` (with integers `users`, the distinct users \
            of those reports, and `needed`), `not_coordinator` (send it to server 0), `config_mismatch` or \
            `endpoint_missing_on_peer` (the endpoint differs between servers), \
            `seal_pending`, `report_unavailable`.", body = ErrorBody),
        (status = 422, description = "The plugin failed folding: its own code, \
            `plugin_internal`, or the limit it hit.", body = ErrorBody),
        (status = 500, description = STORAGE_500, body = ErrorBody),
        (status = 502, description = "Another server refused: `peer_refused`, \
            `peer_credential_refused`, `batch_mismatch`.", body = ErrorBody),
        (status = 503, description = "`peer_unavailable` (nothing sealed), `seal_incomplete` \
            (decided; finishes by itself), `seal_in_progress` (with `Retry-After`), \
            `plugin_unavailable`, `shutting_down`, `keys_unavailable`.", body = ErrorBody),
    ))]
pub(super) async fn seal_batch(
    State(state): State<Arc<AppState>>,
    _caller: Caller<need::Scientist>,
    Path(name): Path<String>,
) -> Answer {
    let live = live(&state, &name)?;
    if !state.config.server.is_coordinator() {
        return Err(ApiError::conflict(
            "not_coordinator",
            format!(
                "only server 0 seals batches: send this request to {}",
                state.sealer.coordinator_url()
            ),
        ));
    }
    let started = std::time::Instant::now();
    // Inside the request's own timeout, so that the answer is the seal's.
    let deadline = started + state.config.limits.request_timeout() * 9 / 10;
    let sealed = seal::seal(&state, &live, deadline).await;
    state
        .metrics
        .seal_seconds
        .observe(started.elapsed().as_secs_f64());
    let labels = RejectLabels {
        endpoint: name,
        reason: match &sealed {
            Ok(_) => "sealed".to_owned(),
            Err(e) => e.code.to_owned(),
        },
    };
    state.metrics.seals.get_or_create(&labels).inc();
    json(StatusCode::CREATED, BatchView::from(sealed?))
}

/// Lists the endpoint's sealed batches, oldest first, a page at a time.
#[utoipa::path(get, path = "/endpoints/{name}/batches", tag = "batches",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The endpoint's name.", example = "demo"),
        PageQuery, SinceQuery),
    responses(
        (status = 200, description = "A page of the batches.", body = BatchList),
        (status = 400, description = "Undecodable path: `invalid_path`; `bad_query`, \
            `bad_limit`, `bad_since`, `bad_batch_id` (the cursor), `unknown_batch` (a \
            cursor that is no batch of the listing).", body = ErrorBody),
        RoleErrors,
        (status = 404, description = "No such endpoint: `unknown_endpoint`.", body = ErrorBody),
        (status = 500, description = STORAGE_500, body = ErrorBody),
        (status = 503, description = STORAGE_503, body = ErrorBody),
    ))]
pub(super) async fn list_batches(
    State(state): State<Arc<AppState>>,
    _caller: Caller<need::Scientist>,
    Path(name): Path<String>,
    query: Result<Query<PageQuery>, ApiError>,
    since: Result<Query<SinceQuery>, ApiError>,
) -> Answer {
    let live = live(&state, &name)?;
    let Query(query) = query?;
    let limit = query.limit()?;
    let since = since?.0.since()?;
    let mut batches = state.storage.list_batches(live.endpoint.id).await?;
    if let Some(since) = since {
        batches.retain(|batch| batch.sealed_at >= since);
    }
    // Oldest first, so the cursor is a position: just after the batch it names.
    let start = match query.after() {
        None => 0,
        Some(after) => {
            let after = seal::parse_batch_id(after)?;
            1 + batches
                .iter()
                .position(|batch| batch.batch_id == after)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "unknown_batch",
                        "after names no batch of this endpoint: pass the next of the previous page",
                    )
                })?
        }
    };
    let mut page: Vec<_> = batches.drain(start..).take(limit + 1).collect();
    let (page, next) = cut(&mut page, limit, |batch| hex::encode(batch.batch_id));
    let batches = page.into_iter().map(BatchView::from).collect();
    json(StatusCode::OK, BatchList { batches, next })
}

/// This server's released share of one batch.
#[utoipa::path(get, path = "/endpoints/{name}/batches/{batch_id}", tag = "batches",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "The endpoint's name.", example = "demo"),
        ("batch_id" = String, Path, description = "The batch's id: 32 hex digits.",
            pattern = "^[0-9a-fA-F]{32}$"),
    ),
    responses(
        (status = 200, description = "The batch and this server's share.", body = BatchShare),
        (status = 400, description = "Not 32 hex digits: `bad_batch_id`, `invalid_path`.",
            body = ErrorBody),
        RoleErrors,
        (status = 404, description = "No such endpoint or batch: `unknown_endpoint`, \
            `unknown_batch`.", body = ErrorBody),
        (status = 500, description = STORAGE_500, body = ErrorBody),
        (status = 503, description = STORAGE_503, body = ErrorBody),
    ))]
pub(super) async fn get_batch(
    State(state): State<Arc<AppState>>,
    _caller: Caller<need::Scientist>,
    Path((name, batch_id)): Path<(String, String)>,
) -> Answer {
    let live = live(&state, &name)?;
    let id = seal::parse_batch_id(&batch_id)?;
    let batch = state
        .storage
        .get_batch(live.endpoint.id, id)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                "unknown_batch",
                format!("endpoint {name:?} has no batch {batch_id} on this server"),
            )
        })?;
    json(
        StatusCode::OK,
        BatchShare {
            batch_id: hex::encode(batch.info.batch_id),
            count: batch.info.count,
            rejected: batch.info.rejected,
            sealed_at: timestamp(batch.info.sealed_at),
            reports_from: batch.info.span.map(|(first, _)| timestamp(first)),
            reports_to: batch.info.span.map(|(_, last)| timestamp(last)),
            server_index: state.config.server.index,
            share: BASE64.encode(&batch.share),
        },
    )
}

/// Deletes one released batch on this server: its row and its share, so it
/// leaves the listings and the total. Its reports stay batched (never sealed
/// again) and a retried commit of it stays answered; run it on every server.
#[utoipa::path(delete, path = "/endpoints/{name}/batches/{batch_id}", tag = "batches",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "The endpoint's name.", example = "demo"),
        ("batch_id" = String, Path, description = "The batch's id: 32 hex digits.",
            pattern = "^[0-9a-fA-F]{32}$"),
    ),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, description = "Not 32 hex digits: `bad_batch_id`, `invalid_path`.",
            body = ErrorBody),
        RoleErrors,
        (status = 404, description = "No such endpoint or batch (or deleted before): \
            `unknown_endpoint`, `unknown_batch`.", body = ErrorBody),
        (status = 409, description = "`batch_not_released`: its seal is not finished on \
            every server yet (it completes by itself; try again then).", body = ErrorBody),
        (status = 500, description = STORAGE_500, body = ErrorBody),
        (status = 503, description = STORAGE_503, body = ErrorBody),
    ))]
pub(super) async fn delete_batch(
    State(state): State<Arc<AppState>>,
    _caller: Caller<need::Admin>,
    Path((name, batch_id)): Path<(String, String)>,
) -> Answer {
    let live = live(&state, &name)?;
    let id = seal::parse_batch_id(&batch_id)?;
    let now = state.clock.now();
    match state
        .storage
        .delete_batch(live.endpoint.id, id, now)
        .await?
    {
        DeleteBatchOutcome::Deleted(info) => {
            tracing::info!(endpoint = %name, batch = %hex::encode(info.batch_id), count = info.count, "released batch deleted");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        DeleteBatchOutcome::NotReleased => Err(ApiError::conflict(
            "batch_not_released",
            format!(
                "the seal of batch {batch_id} of endpoint {name:?} is not finished on every server yet: it completes by itself; delete it then"
            ),
        )),
        DeleteBatchOutcome::Unknown => Err(ApiError::not_found(
            "unknown_batch",
            format!("endpoint {name:?} has no batch {batch_id} on this server (or it was deleted)"),
        )),
    }
}

/// The merge of this server's released shares of every batch.
#[utoipa::path(get, path = "/endpoints/{name}/total", tag = "batches",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The endpoint's name.", example = "demo")),
    responses(
        (status = 200, description = "The merged share.", body = Total),
        (status = 400, description = "Undecodable path: `invalid_path`.", body = ErrorBody),
        RoleErrors,
        (status = 404, description = "No such endpoint: `unknown_endpoint`.", body = ErrorBody),
        (status = 422, description = "The plugin failed merging: its own code, \
            `plugin_internal`, or the limit it hit.", body = ErrorBody),
        (status = 500, description = STORAGE_500, body = ErrorBody),
        (status = 503, description = "Retry later: `plugin_unavailable`, `shutting_down`, \
            `keys_unavailable`.", body = ErrorBody),
    ))]
pub(super) async fn total(
    State(state): State<Arc<AppState>>,
    _caller: Caller<need::Scientist>,
    Path(name): Path<String>,
) -> Answer {
    let live = live(&state, &name)?;
    let batches = state.storage.all_batches(live.endpoint.id).await?;
    let count: u64 = batches.iter().map(|b| b.info.count).sum();
    let rejected: u64 = batches.iter().map(|b| b.info.rejected).sum();
    let n = batches.len() as u64;
    let call_live = live.clone();
    let share = state
        .registry
        .call("merge", move || {
            let plugin = &call_live.plugin;
            let config = &call_live.endpoint.record.config;
            let mut total = plugin.init(config)?;
            for batch in &batches {
                total = plugin.merge(config, &total, &batch.share)?;
            }
            Ok(total)
        })
        .await?;
    json(
        StatusCode::OK,
        Total {
            batches: n,
            count,
            rejected,
            server_index: state.config.server.index,
            share: BASE64.encode(share),
        },
    )
}

/// Follower: reserves the proposed reports it holds and answers which.
#[utoipa::path(post, path = "/endpoints/{name}/prepare", tag = "peer",
    security(("peer" = [])),
    params(("name" = String, Path, description = "The endpoint's name.", example = "demo"),
        seal::Prepare),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The proposed report ids, 16 bytes each, concatenated."),
    responses(
        (status = 200, description = "Reserved.", body = seal::Prepared),
        (status = 400, description = "Malformed request: `bad_query`, `bad_body`, \
            `bad_request`, `bad_batch_id`, `too_many_reports`, `invalid_path`.",
            body = ErrorBody),
        PeerAuthErrors,
        (status = 404, description = "No such endpoint: `unknown_endpoint`.", body = ErrorBody),
        (status = 403, description = "Sent by a server other than the coordinator: \
            `not_coordinator`.", body = ErrorBody),
        (status = 409, description = "`coordinator` (server 0 takes no proposals), \
            `config_mismatch`, `stale_seal` (not newer than the seal seen here), \
            `seal_mismatch`, `unknown_seal` (a later page of a seal not reserved here), \
            `seal_pending`.", body = ErrorBody),
        (status = 500, description = STORAGE_500, body = ErrorBody),
        (status = 503, description = "Shutting down: `shutting_down`.", body = ErrorBody),
    ))]
pub(super) async fn peer_prepare(
    State(state): State<Arc<AppState>>,
    peer: Peer,
    Path(name): Path<String>,
    query: Result<Query<seal::Prepare>, ApiError>,
    body: axum::body::Body,
) -> Answer {
    let live = live(&state, &name)?;
    let Query(query) = query?;
    json(
        StatusCode::OK,
        seal::prepare(&state, &live, peer, query, body).await?,
    )
}

/// Follower: commits exactly the decided reports, reserved before.
#[utoipa::path(post, path = "/endpoints/{name}/commit", tag = "peer",
    security(("peer" = [])),
    params(("name" = String, Path, description = "The endpoint's name.", example = "demo")),
    request_body = seal::Commit,
    responses(
        (status = 200, description = "Committed (now or before).", body = seal::Committed),
        (status = 400, description = "Malformed request: `malformed_json`, `bad_body`, \
            `bad_request`, `bad_batch_id`, `too_many_reports`, `invalid_path`.",
            body = ErrorBody),
        PeerAuthErrors,
        (status = 404, description = "No such endpoint: `unknown_endpoint`.", body = ErrorBody),
        (status = 403, description = "Sent by a server other than the coordinator: \
            `not_coordinator`.", body = ErrorBody),
        (status = 409, description = "`coordinator`, `config_mismatch`, `unknown_seal`, \
            `seal_mismatch`, `batch_too_small` (with `agreed` and `needed`), \
            `too_few_users` (with `users` and `needed`), `seal_pending`, \
            `report_unavailable`, `messages_missing` (a robust batch's verifier messages \
            are not all held here: send them, then the commit).", body = ErrorBody),
        (status = 413, description = "Body too large: `body_too_large`.", body = ErrorBody),
        (status = 422, description = "The plugin failed folding: its own code, \
            `plugin_internal`, or the limit it hit.", body = ErrorBody),
        (status = 500, description = STORAGE_500, body = ErrorBody),
        (status = 503, description = "Retry later: `plugin_unavailable`, `shutting_down`.",
            body = ErrorBody),
    ))]
pub(super) async fn peer_commit(
    State(state): State<Arc<AppState>>,
    peer: Peer,
    Path(name): Path<String>,
    Body(body): Body,
) -> Answer {
    let live = live(&state, &name)?;
    json(
        StatusCode::OK,
        seal::commit(&state, &live, peer, body).await?,
    )
}

/// Follower: its verifier shares of a chunk of the reports every server holds, in
/// a robust endpoint's seal.
#[utoipa::path(post, path = "/endpoints/{name}/verify", tag = "peer",
    security(("peer" = [])),
    params(("name" = String, Path, description = "The endpoint's name.", example = "demo")),
    request_body = seal::Verify,
    responses(
        (status = 200, description = "This server's verifier shares of the chunk.",
            body = seal::Verified),
        (status = 400, description = "Malformed request: `malformed_json`, `bad_body`, \
            `bad_request`, `bad_batch_id`, `invalid_path`.", body = ErrorBody),
        PeerAuthErrors,
        (status = 404, description = "No such endpoint: `unknown_endpoint`.", body = ErrorBody),
        (status = 403, description = "Sent by a server other than the coordinator: \
            `not_coordinator`.", body = ErrorBody),
        (status = 409, description = "`coordinator`, `config_mismatch`, `not_robust`, \
            `unknown_seal`, `seal_mismatch`, `verify_key_mismatch` (the endpoint's \
            verification key here differs: it never changes), `report_unavailable`.",
            body = ErrorBody),
        (status = 422, description = "The plugin failed: its own code, `plugin_internal`, \
            or the limit it hit.", body = ErrorBody),
        (status = 500, description = STORAGE_500, body = ErrorBody),
        (status = 503, description = "Retry later: `plugin_unavailable`, `shutting_down`.",
            body = ErrorBody),
    ))]
pub(super) async fn peer_verify(
    State(state): State<Arc<AppState>>,
    peer: Peer,
    Path(name): Path<String>,
    Body(body): Body,
) -> Answer {
    let live = live(&state, &name)?;
    json(
        StatusCode::OK,
        seal::verify(&state, &live, peer, body).await?,
    )
}

/// Follower: holds verifier messages of a robust endpoint's decided batch until
/// its commit.
#[utoipa::path(post, path = "/endpoints/{name}/messages", tag = "peer",
    security(("peer" = [])),
    params(("name" = String, Path, description = "The endpoint's name.", example = "demo"),
        seal::Messages),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "Verifier messages, in proposal order: a little-endian u32 length, \
            then the bytes, each."),
    responses(
        (status = 200, description = "Held.", body = seal::Received),
        (status = 400, description = "Malformed request: `bad_query`, `bad_body`, \
            `bad_batch_id`, `invalid_path`.", body = ErrorBody),
        PeerAuthErrors,
        (status = 404, description = "No such endpoint: `unknown_endpoint`.", body = ErrorBody),
        (status = 403, description = "Sent by a server other than the coordinator: \
            `not_coordinator`.", body = ErrorBody),
        (status = 409, description = "`coordinator`, `not_robust`, `unknown_seal`, \
            `messages_missing` (the earlier messages are not held here: send them from \
            the first).", body = ErrorBody),
        (status = 413, description = "Body too large: `body_too_large`.", body = ErrorBody),
        (status = 500, description = STORAGE_500, body = ErrorBody),
    ))]
pub(super) async fn peer_messages(
    State(state): State<Arc<AppState>>,
    peer: Peer,
    Path(name): Path<String>,
    query: Result<Query<seal::Messages>, ApiError>,
    Body(body): Body,
) -> Answer {
    let live = live(&state, &name)?;
    let Query(query) = query?;
    json(
        StatusCode::OK,
        seal::messages(&state, &live, peer, query, body).await?,
    )
}

/// Follower: commits a decided batch given by its report ids (when it answered
/// the commit `unknown_seal`: its reservation of the seal is gone).
#[utoipa::path(post, path = "/endpoints/{name}/recommit", tag = "peer",
    security(("peer" = [])),
    params(("name" = String, Path, description = "The endpoint's name.", example = "demo"),
        seal::Recommit),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The report ids of the batch, 16 bytes each, concatenated."),
    responses(
        (status = 200, description = "Committed (now or before).", body = seal::Committed),
        (status = 400, description = "Malformed request: `bad_query`, `bad_body`, \
            `bad_request`, `bad_batch_id`, `too_many_reports`, `invalid_path`.",
            body = ErrorBody),
        PeerAuthErrors,
        (status = 404, description = "No such endpoint: `unknown_endpoint`.", body = ErrorBody),
        (status = 403, description = "Sent by a server other than the coordinator: \
            `not_coordinator`.", body = ErrorBody),
        (status = 409, description = "`coordinator`, `config_mismatch`, `seal_mismatch` \
            (a report of the batch is not held unbatched here, or the count differs), \
            `batch_too_small`, `too_few_users`, `report_unavailable`.", body = ErrorBody),
        (status = 422, description = "The plugin failed folding: its own code, \
            `plugin_internal`, or the limit it hit.", body = ErrorBody),
        (status = 500, description = STORAGE_500, body = ErrorBody),
        (status = 503, description = "Retry later: `plugin_unavailable`, `shutting_down`.",
            body = ErrorBody),
    ))]
pub(super) async fn peer_recommit(
    State(state): State<Arc<AppState>>,
    peer: Peer,
    Path(name): Path<String>,
    query: Result<Query<seal::Recommit>, ApiError>,
    body: axum::body::Body,
) -> Answer {
    let live = live(&state, &name)?;
    let Query(query) = query?;
    json(
        StatusCode::OK,
        seal::recommit(&state, &live, peer, query, body).await?,
    )
}

/// Follower: forgets the reservation of an aborted seal.
#[utoipa::path(post, path = "/endpoints/{name}/abort", tag = "peer",
    security(("peer" = [])),
    params(("name" = String, Path, description = "The endpoint's name.", example = "demo")),
    request_body = seal::Abort,
    responses(
        (status = 200, description = "Forgotten (or there was nothing to forget).",
            body = seal::Aborted),
        (status = 400, description = "Malformed request: `malformed_json`, `bad_body`, \
            `bad_batch_id`, `invalid_path`.", body = ErrorBody),
        PeerAuthErrors,
        (status = 404, description = "No such endpoint: `unknown_endpoint`.", body = ErrorBody),
        (status = 403, description = "Sent by a server other than the coordinator: \
            `not_coordinator`.", body = ErrorBody),
        (status = 409, description = "`coordinator`: server 0 takes no aborts.",
            body = ErrorBody),
        (status = 413, description = "Body too large: `body_too_large`.", body = ErrorBody),
        (status = 500, description = STORAGE_500, body = ErrorBody),
        (status = 503, description = "Shutting down: `shutting_down`.", body = ErrorBody),
    ))]
pub(super) async fn peer_abort(
    State(state): State<Arc<AppState>>,
    peer: Peer,
    Path(name): Path<String>,
    Body(body): Body,
) -> Answer {
    let live = live(&state, &name)?;
    json(
        StatusCode::OK,
        seal::abort(&state, &live, peer, body).await?,
    )
}
