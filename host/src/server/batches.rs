//! Routes of sealed batches: the scientists' (`/api/v1/endpoints/{name}/batches…`,
//! `…/total`) and the peers' (`/peer/v1/endpoints/{name}/…`). The protocol itself is
//! in `seal`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;

use super::auth::{Caller, Peer, need};
use super::error::ApiError;
use super::extract::Json;
use super::metrics::RejectLabels;
use super::registry::LiveEndpoint;
use super::routes::{Answer, json, timestamp, unknown_endpoint};
use super::{AppState, seal};
use crate::storage::BatchInfo;

fn live(state: &AppState, name: &str) -> Result<Arc<LiveEndpoint>, ApiError> {
    state
        .registry
        .endpoint(name)
        .ok_or_else(|| unknown_endpoint(name))
}

#[derive(Serialize)]
struct BatchView {
    batch_id: String,
    count: u64,
    sealed_at: String,
}

impl From<BatchInfo> for BatchView {
    fn from(info: BatchInfo) -> Self {
        Self {
            batch_id: hex::encode(info.batch_id),
            count: info.count,
            sealed_at: timestamp(info.sealed_at),
        }
    }
}

/// `POST /api/v1/endpoints/{name}/batches`: seal a batch (server 0 only).
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
    let sealed = seal::seal(&state, &live).await;
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

/// `GET /api/v1/endpoints/{name}/batches`.
pub(super) async fn list_batches(
    State(state): State<Arc<AppState>>,
    _caller: Caller<need::Scientist>,
    Path(name): Path<String>,
) -> Answer {
    let live = live(&state, &name)?;
    let batches: Vec<BatchView> = state
        .storage
        .list_batches(live.endpoint.id)
        .await?
        .into_iter()
        .map(BatchView::from)
        .collect();
    json(StatusCode::OK, serde_json::json!({ "batches": batches }))
}

/// `GET /api/v1/endpoints/{name}/batches/{batch_id}`: this server's released share.
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
        serde_json::json!({
            "batch_id": hex::encode(batch.info.batch_id),
            "count": batch.info.count,
            "sealed_at": timestamp(batch.info.sealed_at),
            "server_index": state.config.server.index,
            "share": BASE64.encode(&batch.share),
        }),
    )
}

/// `GET /api/v1/endpoints/{name}/total`: the merge of every released batch.
pub(super) async fn total(
    State(state): State<Arc<AppState>>,
    _caller: Caller<need::Scientist>,
    Path(name): Path<String>,
) -> Answer {
    let live = live(&state, &name)?;
    let batches = state.storage.all_batches(live.endpoint.id).await?;
    let count: u64 = batches.iter().map(|b| b.info.count).sum();
    let n = batches.len();
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
        serde_json::json!({
            "batches": n,
            "count": count,
            "server_index": state.config.server.index,
            "share": BASE64.encode(share),
        }),
    )
}

/// `POST /peer/v1/endpoints/{name}/prepare`.
pub(super) async fn peer_prepare(
    State(state): State<Arc<AppState>>,
    _peer: Peer,
    Path(name): Path<String>,
    Json(body): Json<seal::Prepare>,
) -> Answer {
    let live = live(&state, &name)?;
    json(StatusCode::OK, seal::prepare(&state, &live, body).await?)
}

/// `POST /peer/v1/endpoints/{name}/commit`.
pub(super) async fn peer_commit(
    State(state): State<Arc<AppState>>,
    _peer: Peer,
    Path(name): Path<String>,
    Json(body): Json<seal::Commit>,
) -> Answer {
    let live = live(&state, &name)?;
    json(StatusCode::OK, seal::commit(&state, &live, body).await?)
}

/// `POST /peer/v1/endpoints/{name}/abort`.
pub(super) async fn peer_abort(
    State(state): State<Arc<AppState>>,
    _peer: Peer,
    Path(name): Path<String>,
    Json(body): Json<seal::Abort>,
) -> Answer {
    let live = live(&state, &name)?;
    json(StatusCode::OK, seal::abort(&state, &live, body).await?)
}
