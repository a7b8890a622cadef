//! The public API's handlers (DESIGN section 5). Each declares its role through
//! its [`Caller`] argument.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::AppState;
use super::auth::{Caller, need};
use super::error::ApiError;
use super::extract::{Body, Json};
use super::registry::{LiveEndpoint, parse_digest};
use crate::storage::{
    CreateEndpointOutcome, Endpoint, EndpointCounts, EndpointRecord, InsertReportOutcome,
    PluginInfo,
};

pub(super) type Answer = Result<Response, ApiError>;

pub(super) fn json(status: StatusCode, value: impl Serialize) -> Answer {
    Ok((status, axum::Json(value)).into_response())
}

pub(super) fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

// ---------------------------------------------------------------- health

pub(super) async fn healthz() -> Answer {
    json(StatusCode::OK, serde_json::json!({"status": "ok"}))
}

pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> Answer {
    // Ready when storage answers a read.
    state.storage.list_endpoints().await?;
    json(
        StatusCode::OK,
        serde_json::json!({
            "status": "ready",
            "server_index": state.config.server.index,
            "servers": state.config.server.servers,
        }),
    )
}

pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state
        .metrics
        .observe_runtime(state.registry.runtime_stats());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

pub(super) async fn me(caller: Caller<need::AnyRole>) -> Answer {
    let roles: Vec<&str> = caller.principal.roles.iter().map(|r| r.as_str()).collect();
    json(
        StatusCode::OK,
        serde_json::json!({"sub": caller.principal.sub, "roles": roles}),
    )
}

// ---------------------------------------------------------------- plugins

#[derive(Serialize)]
struct PluginView {
    digest: String,
    name: String,
    version: String,
    description: String,
    params_schema: Value,
    builtin: bool,
    size: u64,
    created_at: String,
}

impl From<PluginInfo> for PluginView {
    fn from(info: PluginInfo) -> Self {
        Self {
            digest: hex::encode(info.digest),
            name: info.name,
            version: info.version,
            description: info.description,
            params_schema: serde_json::from_str(&info.params_schema).unwrap_or(Value::Null),
            builtin: info.builtin,
            size: info.wasm_len,
            created_at: timestamp(info.created_at),
        }
    }
}

pub(super) async fn upload_plugin(
    State(state): State<Arc<AppState>>,
    _caller: Caller<need::Developer>,
    Body(wasm): Body,
) -> Answer {
    if wasm.is_empty() {
        return Err(ApiError::bad_request(
            "empty_body",
            "the body must be the plugin's .wasm component",
        ));
    }
    let (plugin, inserted) = state.registry.upload(&state.storage, wasm.to_vec()).await?;
    let info = state
        .storage
        .get_plugin(plugin.digest())
        .await?
        .ok_or_else(|| {
            ApiError::not_found("unknown_plugin", "the plugin vanished while being stored")
        })?;
    let status = if inserted {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json(status, PluginView::from(info))
}

pub(super) async fn list_plugins(
    State(state): State<Arc<AppState>>,
    _caller: Caller<need::DeveloperOrScientist>,
) -> Answer {
    let plugins: Vec<PluginView> = state
        .storage
        .list_plugins()
        .await?
        .into_iter()
        .map(PluginView::from)
        .collect();
    json(StatusCode::OK, serde_json::json!({"plugins": plugins}))
}

pub(super) async fn get_plugin(
    State(state): State<Arc<AppState>>,
    _caller: Caller<need::DeveloperOrScientist>,
    Path(digest): Path<String>,
) -> Answer {
    let digest = parse_digest(&digest).ok_or_else(|| {
        ApiError::bad_request("invalid_digest", "a plugin digest is 64 hex digits")
    })?;
    match state.storage.get_plugin(digest).await? {
        Some(info) => json(StatusCode::OK, PluginView::from(info)),
        None => Err(ApiError::not_found(
            "unknown_plugin",
            "no plugin with this digest",
        )),
    }
}

/// The component itself, so clients shard and unshard with exactly the code
/// the servers run.
pub(super) async fn get_plugin_wasm(
    State(state): State<Arc<AppState>>,
    _caller: Caller<need::AnyRole>,
    Path(digest): Path<String>,
) -> Answer {
    let digest = parse_digest(&digest).ok_or_else(|| {
        ApiError::bad_request("invalid_digest", "a plugin digest is 64 hex digits")
    })?;
    match state.storage.plugin_wasm(digest).await? {
        Some(wasm) => Ok((
            [(axum::http::header::CONTENT_TYPE, "application/wasm")],
            wasm,
        )
            .into_response()),
        None => Err(ApiError::not_found(
            "unknown_plugin",
            "no plugin with this digest",
        )),
    }
}

// ---------------------------------------------------------------- endpoints

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateEndpoint {
    name: String,
    plugin: String,
    #[serde(default = "empty_object")]
    params: Value,
    min_batch: Option<u64>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

#[derive(Serialize)]
struct EndpointView {
    name: String,
    plugin: String,
    plugin_digest: String,
    params: Value,
    min_batch: u64,
    config_hash: String,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reports: Option<ReportCounts>,
}

#[derive(Serialize)]
struct ReportCounts {
    unbatched: u64,
    batched: u64,
    expired: u64,
    batches: u64,
}

impl EndpointView {
    fn new(endpoint: &Endpoint, counts: Option<EndpointCounts>) -> Self {
        let record = &endpoint.record;
        Self {
            name: record.name.clone(),
            plugin: record.plugin_name.clone(),
            plugin_digest: hex::encode(record.plugin_digest),
            params: serde_json::from_str(&record.params).unwrap_or(Value::Null),
            min_batch: record.min_batch,
            config_hash: hex::encode(record.config_hash),
            created_at: timestamp(record.created_at),
            reports: counts.map(|c| ReportCounts {
                unbatched: c.unbatched,
                batched: c.batched,
                expired: c.expired,
                batches: c.batches,
            }),
        }
    }
}

/// Endpoint names appear in URLs: 1–64 of `a-z 0-9 - _ .`, starting with a
/// letter or digit.
fn check_endpoint_name(name: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_endpoint_name",
            format!(
                "endpoint names are 1 to 64 characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit; got {name:?}"
            ),
        ))
    }
}

/// What every server must agree on for an endpoint: the plugin's exact code,
/// its canonical configuration and the minimum batch.
pub fn config_hash(plugin_digest: &[u8; 32], config: &[u8], min_batch: u64) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"guardian:endpoint:v1\0");
    hasher.update(plugin_digest);
    hasher.update(min_batch.to_le_bytes());
    hasher.update(config);
    hasher.finalize().into()
}

pub(super) async fn create_endpoint(
    State(state): State<Arc<AppState>>,
    _caller: Caller<need::Developer>,
    Json(body): Json<CreateEndpoint>,
) -> Answer {
    check_endpoint_name(&body.name)?;
    let min_batch = body
        .min_batch
        .unwrap_or(state.config.endpoints.default_min_batch);
    if min_batch == 0 {
        return Err(ApiError::bad_request(
            "invalid_min_batch",
            "min_batch must be at least 1",
        ));
    }
    let plugin = state.registry.plugin(&body.plugin).ok_or_else(|| {
        ApiError::not_found(
            "unknown_plugin",
            format!(
                "no plugin named {:?}: give a built-in name or an uploaded plugin's digest",
                body.plugin
            ),
        )
    })?;
    // serde_json keeps object keys sorted: this text is canonical.
    let params = body.params.to_string();
    let config = {
        let (plugin, params) = (plugin.clone(), params.clone());
        state
            .registry
            .call("configure", move || plugin.configure(&params))
            .await?
    };
    let record = EndpointRecord {
        name: body.name.clone(),
        plugin_digest: plugin.digest(),
        plugin_name: plugin.info().name.clone(),
        params,
        config_hash: config_hash(&plugin.digest(), &config, min_batch),
        config,
        min_batch,
        created_at: SystemTime::now(),
    };
    match state.storage.create_endpoint(record).await? {
        CreateEndpointOutcome::Created(endpoint) => {
            state.registry.set_endpoint(endpoint.clone(), plugin);
            json(StatusCode::CREATED, EndpointView::new(&endpoint, None))
        }
        CreateEndpointOutcome::Identical(endpoint) => {
            json(StatusCode::OK, EndpointView::new(&endpoint, None))
        }
        CreateEndpointOutcome::Conflict(existing) => Err(ApiError::conflict(
            "endpoint_conflict",
            format!(
                "an endpoint named {:?} already exists with another definition (plugin {}, params {}, min_batch {}); delete it first or pick another name",
                existing.record.name,
                existing.record.plugin_name,
                existing.record.params,
                existing.record.min_batch
            ),
        )),
    }
}

pub(super) async fn list_endpoints(
    State(state): State<Arc<AppState>>,
    _caller: Caller<need::AnyRole>,
) -> Answer {
    let mut views = Vec::new();
    for endpoint in state.storage.list_endpoints().await? {
        let counts = state.storage.endpoint_counts(&endpoint.record.name).await?;
        views.push(EndpointView::new(&endpoint, counts));
    }
    json(StatusCode::OK, serde_json::json!({"endpoints": views}))
}

pub(super) fn unknown_endpoint(name: &str) -> ApiError {
    ApiError::not_found("unknown_endpoint", format!("no endpoint named {name:?}"))
}

pub(super) async fn get_endpoint(
    State(state): State<Arc<AppState>>,
    _caller: Caller<need::AnyRole>,
    Path(name): Path<String>,
) -> Answer {
    let endpoint = state
        .storage
        .get_endpoint(&name)
        .await?
        .ok_or_else(|| unknown_endpoint(&name))?;
    let counts = state.storage.endpoint_counts(&name).await?;
    json(StatusCode::OK, EndpointView::new(&endpoint, counts))
}

pub(super) async fn delete_endpoint(
    State(state): State<Arc<AppState>>,
    _caller: Caller<need::Admin>,
    Path(name): Path<String>,
) -> Answer {
    if !state.storage.delete_endpoint(&name).await? {
        return Err(unknown_endpoint(&name));
    }
    state.registry.remove_endpoint(&name);
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------- reports

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PostReport {
    report_id: String,
    share: String,
}

pub(super) async fn post_report(
    State(state): State<Arc<AppState>>,
    _caller: Caller<need::User>,
    Path(name): Path<String>,
    body: Result<Json<PostReport>, ApiError>,
) -> Answer {
    let endpoint = state.registry.endpoint(&name);
    let result = match (&endpoint, body) {
        (None, _) => Err(unknown_endpoint(&name)),
        (Some(_), Err(e)) => Err(e),
        (Some(endpoint), Ok(Json(report))) => store_report(&state, endpoint, report).await,
    };
    // Label by endpoint only when it exists, so made-up names cannot grow the metrics.
    let label = endpoint
        .as_ref()
        .map_or("", |e| e.endpoint.record.name.as_str());
    match &result {
        Ok(_) => state.metrics.accepted(label),
        Err(e) => state.metrics.rejected(label, e.code),
    }
    result
}

async fn store_report(state: &AppState, live: &Arc<LiveEndpoint>, report: PostReport) -> Answer {
    let mut report_id = [0u8; 16];
    if report.report_id.len() != 32
        || hex::decode_to_slice(&report.report_id, &mut report_id).is_err()
    {
        return Err(ApiError::bad_request(
            "invalid_report_id",
            "report_id must be 32 hex digits (16 random bytes)",
        ));
    }
    let share = BASE64.decode(report.share.as_bytes()).map_err(|e| {
        ApiError::bad_request(
            "invalid_share_encoding",
            format!("share is not valid base64: {e}"),
        )
    })?;
    let index = state.config.server.index;
    let share = state.registry.validate(live, share, index).await?;
    let outcome = state
        .storage
        .insert_report(live.endpoint.id, report_id, share, SystemTime::now())
        .await;
    match outcome {
        Ok(InsertReportOutcome::Stored) => json(
            StatusCode::CREATED,
            serde_json::json!({"report_id": report.report_id, "status": "stored"}),
        ),
        Ok(InsertReportOutcome::Duplicate) => json(
            StatusCode::OK,
            serde_json::json!({"report_id": report.report_id, "status": "duplicate"}),
        ),
        Ok(InsertReportOutcome::Conflict) => Err(ApiError::conflict(
            "report_conflict",
            "this report_id was already posted with a different share",
        )),
        Err(crate::storage::StorageError::UnknownEndpoint) => {
            Err(unknown_endpoint(&live.endpoint.record.name))
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn not_found() -> ApiError {
    ApiError::not_found("no_route", "no such route")
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take this method",
    )
}
