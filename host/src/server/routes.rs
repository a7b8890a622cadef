//! The public API's handlers (DESIGN section 5). Each declares its role through
//! its [`Caller`] argument, and its method, path, bodies and every status it
//! answers through `#[utoipa::path]`: the OpenAPI document is built from these
//! (see `openapi`), and every body is a typed struct deriving `ToSchema`.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::AppState;
use super::auth::{Caller, need};
use super::error::{ApiError, ErrorBody};
use super::extract::{Body, Json, Path, Query};
use super::openapi::{AuthErrors, RoleErrors, STORAGE_500, STORAGE_503};
use super::paging::{PageQuery, cut, listed_json, page};
use super::rate_limit::ClientIp;
use super::registry::LiveEndpoint;
use crate::storage::{
    CreateEndpointOutcome, Endpoint, EndpointCounts, EndpointRecord, InsertReportOutcome,
    PluginInfo, SealSchedule, UserQuota,
};

pub(super) type Answer = Result<Response, ApiError>;

pub(super) fn json(status: StatusCode, value: impl Serialize) -> Answer {
    Ok((status, axum::Json(value)).into_response())
}

pub(super) fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

// ---------------------------------------------------------------- health

/// Answer of `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub(super) struct Health {
    /// Always `ok`: the process serves HTTP.
    #[schema(example = "ok")]
    status: &'static str,
}

/// Answer of `GET /readyz`.
#[derive(Serialize, ToSchema)]
pub(super) struct Ready {
    /// Always `ready`: storage answers reads.
    #[schema(example = "ready")]
    status: &'static str,
    /// This server's index among the share servers (0 coordinates seals).
    server_index: u32,
    /// How many share servers the deployment has.
    servers: u32,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive.", body = Health)))]
pub(super) async fn healthz() -> Answer {
    json(StatusCode::OK, Health { status: "ok" })
}

/// Readiness: storage answers a read and can write.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready to serve.", body = Ready),
        (status = 500, description = "Storage failed: `internal`.", body = ErrorBody),
        (status = 503, description = "Shutting down: `shutting_down`; or storage cannot \
            write (`storage_unavailable`, the reason in the message).", body = ErrorBody),
    ))]
pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> Answer {
    if let Some(reason) = state.storage.write_failure() {
        return Err(ApiError::unavailable(
            "storage_unavailable",
            format!("this server cannot write to its storage: {reason}"),
        ));
    }
    state.storage.list_endpoints().await?;
    json(
        StatusCode::OK,
        Ready {
            status: "ready",
            server_index: state.config.server.index,
            servers: state.config.server.servers,
        },
    )
}

/// Prometheus metrics, in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "The metrics.", body = String,
        content_type = "application/openmetrics-text")))]
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

/// Answer of `GET /api/v1/me`.
#[derive(Serialize, ToSchema)]
pub(super) struct Me {
    /// The token's subject.
    sub: String,
    /// The roles the token grants (`admin` implies every other).
    #[schema(example = json!(["user"]))]
    roles: Vec<&'static str>,
}

/// Who the token belongs to and which roles it grants.
#[utoipa::path(get, path = "/me", tag = "health", security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller.", body = Me),
        AuthErrors,
        (status = 503, description = "The issuer's keys cannot be fetched: `keys_unavailable`.",
            body = ErrorBody),
    ))]
pub(super) async fn me(caller: Caller<need::AnyRole>) -> Answer {
    let roles = caller.principal.roles.iter().map(|r| r.as_str()).collect();
    json(
        StatusCode::OK,
        Me {
            sub: caller.principal.sub,
            roles,
        },
    )
}

// ---------------------------------------------------------------- plugins

/// A stored plugin.
#[derive(Serialize, ToSchema)]
#[schema(as = Plugin)]
pub(super) struct PluginView {
    /// SHA-256 of the component, 64 hex digits: the plugin's identity.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    digest: String,
    /// The name the plugin declares.
    name: String,
    /// The version the plugin declares.
    version: String,
    /// What the plugin computes, in its own words.
    description: String,
    /// JSON Schema of the plugin's `params` (null if the plugin's is not JSON).
    /// Left out of listings when longer than 1 KiB: fetch the plugin for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    params_schema: Option<Value>,
    /// Whether it is one of the plugins built into the server.
    builtin: bool,
    /// Whether this server's operator approves it (`plugins.approved`; built-ins
    /// always): only then can endpoints use it, and clients shard with it only
    /// when every server approves it.
    approved: bool,
    /// Size of the component in bytes.
    size: u64,
    /// When it was stored (RFC 3339).
    created_at: String,
}

/// Answer of `GET /api/v1/plugins`.
#[derive(Serialize, ToSchema)]
pub(super) struct PluginList {
    /// A page of the stored plugins, built-ins included, by digest.
    plugins: Vec<PluginView>,
    /// The `after` of the next page; null after the last.
    next: Option<String>,
}

impl PluginView {
    fn new(info: PluginInfo, state: &AppState) -> Self {
        let params_schema = Some(serde_json::from_str(&info.params_schema).unwrap_or(Value::Null));
        Self::with_schema(info, params_schema, state)
    }

    /// As a list item: without a bulky schema.
    fn listed(info: PluginInfo, state: &AppState) -> Self {
        let params_schema = listed_json(&info.params_schema);
        Self::with_schema(info, params_schema, state)
    }

    fn with_schema(info: PluginInfo, params_schema: Option<Value>, state: &AppState) -> Self {
        Self {
            approved: state.registry.is_approved(&info.digest),
            digest: hex::encode(info.digest),
            name: info.name,
            version: info.version,
            description: info.description,
            params_schema,
            builtin: info.builtin,
            size: info.wasm_len,
            created_at: timestamp(info.created_at),
        }
    }
}

/// How a route's path names a plugin.
const PLUGIN_REFERENCE: &str = "The plugin: its digest (64 hex digits), a built-in's \
    name or `name@version`, or an uploaded plugin's `name@version` or `name` (when one \
    plugin has it). A built-in's name always means the built-in.";

/// `unknown_plugin`, as the routes that take a plugin answer it.
const UNKNOWN_PLUGIN: &str = "No such plugin: `unknown_plugin`, listing the \
    `name@version` and digest of the plugins of that name this server holds (or the \
    names it knows).";

/// `ambiguous_plugin`, as the routes that take a plugin answer it.
const AMBIGUOUS_PLUGIN: &str = "The name (or `name@version`) fits several uploaded \
    plugins: `ambiguous_plugin`, listing each one's `name@version` and digest.";

/// Uploads a plugin: the body is the `.wasm` component. It is compiled and
/// type-checked before it is stored.
#[utoipa::path(post, path = "/plugins", tag = "plugins", security(("bearer" = [])),
    request_body(description = "The plugin's WebAssembly component.",
        content(
            (Wasm = "application/wasm"),
            (Wasm = "application/octet-stream"),
        )),
    responses(
        (status = 201, description = "Stored.", body = PluginView),
        (status = 200, description = "Already stored.", body = PluginView),
        (status = 400, description = "Empty or unreadable body: `empty_body`, `bad_body`.",
            body = ErrorBody),
        RoleErrors,
        (status = 404, description = "The plugin vanished while being stored: `unknown_plugin`.",
            body = ErrorBody),
        (status = 413, description = "Larger than `limits.max_plugin_bytes`: `body_too_large`.",
            body = ErrorBody),
        (status = 422, description = "Not a plugin this server can run: `invalid_plugin`, with \
            the reason; `invalid_plugin_info` (a control character in its name, version or \
            description); `plugin_too_complex` (compiling it took longer than \
            `limits.plugin_compile_timeout_ms`).", body = ErrorBody),
        (status = 500, description = STORAGE_500, body = ErrorBody),
        (status = 503, description = STORAGE_503, body = ErrorBody),
    ))]
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
    json(status, PluginView::new(info, &state))
}

/// Lists the plugins, a page at a time.
#[utoipa::path(get, path = "/plugins", tag = "plugins", security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of the plugins.", body = PluginList),
        (status = 400, description = "`bad_query`, `bad_limit`.", body = ErrorBody),
        RoleErrors,
        (status = 500, description = STORAGE_500, body = ErrorBody),
        (status = 503, description = STORAGE_503, body = ErrorBody),
    ))]
pub(super) async fn list_plugins(
    State(state): State<Arc<AppState>>,
    _caller: Caller<need::DeveloperOrScientist>,
    query: Result<Query<PageQuery>, ApiError>,
) -> Answer {
    let Query(query) = query?;
    let mut plugins = state.storage.list_plugins().await?;
    plugins.sort_unstable_by_key(|info| info.digest);
    let (plugins, next) = page(plugins, |info| hex::encode(info.digest), &query)?;
    let plugins = plugins
        .into_iter()
        .map(|info| PluginView::listed(info, &state))
        .collect();
    json(StatusCode::OK, PluginList { plugins, next })
}

/// Shows one plugin, named by digest, `name@version` or `name` (see
/// [`PLUGIN_REFERENCE`]).
#[utoipa::path(get, path = "/plugins/{digest}", tag = "plugins", security(("bearer" = [])),
    params(("digest" = String, Path, description = PLUGIN_REFERENCE)),
    responses(
        (status = 200, description = "The plugin.", body = PluginView),
        (status = 400, description = "`invalid_path`.", body = ErrorBody),
        RoleErrors,
        (status = 404, description = UNKNOWN_PLUGIN, body = ErrorBody),
        (status = 409, description = AMBIGUOUS_PLUGIN, body = ErrorBody),
        (status = 500, description = STORAGE_500, body = ErrorBody),
        (status = 503, description = STORAGE_503, body = ErrorBody),
    ))]
pub(super) async fn get_plugin(
    State(state): State<Arc<AppState>>,
    _caller: Caller<need::DeveloperOrScientist>,
    Path(reference): Path<String>,
) -> Answer {
    let digest = state.registry.resolve(&reference)?;
    match state.storage.get_plugin(digest).await? {
        Some(info) => json(StatusCode::OK, PluginView::new(info, &state)),
        None => Err(ApiError::not_found(
            "unknown_plugin",
            "no plugin with this digest",
        )),
    }
}

/// A WebAssembly component's bytes, answered as `application/wasm`.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub(super) struct Wasm(Vec<u8>);

impl IntoResponse for Wasm {
    fn into_response(self) -> Response {
        (
            [(axum::http::header::CONTENT_TYPE, "application/wasm")],
            self.0,
        )
            .into_response()
    }
}

/// The component itself, so clients shard and unshard with exactly the code
/// the servers run. Named like `GET /plugins/{digest}`; clients that must get
/// exact bytes name it by digest (and check it).
#[utoipa::path(get, path = "/plugins/{digest}/wasm", tag = "plugins", security(("bearer" = [])),
    params(("digest" = String, Path, description = PLUGIN_REFERENCE)),
    responses(
        (status = 200, description = "The component's bytes.", body = Wasm,
            content_type = "application/wasm"),
        (status = 400, description = "`invalid_path`.", body = ErrorBody),
        AuthErrors,
        (status = 404, description = UNKNOWN_PLUGIN, body = ErrorBody),
        (status = 409, description = AMBIGUOUS_PLUGIN, body = ErrorBody),
        (status = 500, description = STORAGE_500, body = ErrorBody),
        (status = 503, description = STORAGE_503, body = ErrorBody),
    ))]
pub(super) async fn get_plugin_wasm(
    State(state): State<Arc<AppState>>,
    _caller: Caller<need::AnyRole>,
    Path(reference): Path<String>,
) -> Answer {
    let digest = state.registry.resolve(&reference)?;
    match state.storage.plugin_wasm(digest).await? {
        Some(wasm) => Ok(Wasm(wasm).into_response()),
        None => Err(ApiError::not_found(
            "unknown_plugin",
            "no plugin with this digest",
        )),
    }
}

// ---------------------------------------------------------------- endpoints

/// Body of `POST /api/v1/endpoints`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateEndpoint {
    /// The endpoint's name, used in URLs: 1 to 64 of `a-z 0-9 - _ .`, starting
    /// with a letter or digit.
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,63}$", example = "demo")]
    name: String,
    /// The plugin: a built-in's name (`sum`, `count`, `histogram`, `mean`, …),
    /// or an uploaded plugin's `name@version`, `name` (when one plugin has it)
    /// or 64-hex digest. A built-in's name always means the built-in.
    #[schema(example = "sum")]
    plugin: String,
    /// The plugin's parameters (its `params_schema`); `{}` when left out.
    #[serde(default = "empty_object")]
    #[schema(example = json!({"length": 4}))]
    params: Value,
    /// The smallest batch a seal may release; the server's
    /// `endpoints.default_min_batch` when left out. Every server refuses one below
    /// its `endpoints.min_batch_floor` (at least 2).
    #[schema(minimum = 2)]
    min_batch: Option<u64>,
    /// Most reports one user (token `sub`) may hold in this endpoint on a server
    /// before they are sealed into a batch: the next post answers 429
    /// `user_quota_exceeded` until a seal. No limit when left out. Blunts one
    /// user flooding a batch.
    #[schema(minimum = 1)]
    max_reports_per_user: Option<u64>,
    /// Server 0 seals the endpoint by itself every this many seconds (counted
    /// from its last seal attempt); a seal below `min_batch` waits for the next
    /// one. Only when asked if left out (as without `seal_at`).
    #[schema(minimum = 1, example = 3600)]
    seal_every: Option<u64>,
    /// Server 0 seals the endpoint by itself as soon as this many reports are
    /// held by every server (at least `min_batch`); a seal takes at least this
    /// many.
    #[schema(minimum = 2, example = 10000)]
    seal_at: Option<u64>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// An endpoint: a plugin with its parameters, collecting reports.
#[derive(Serialize, ToSchema)]
#[schema(as = Endpoint)]
pub(super) struct EndpointView {
    /// The endpoint's name.
    name: String,
    /// The plugin's declared name.
    plugin: String,
    /// The plugin's digest, 64 hex digits.
    plugin_digest: String,
    /// Whether this server's operator approves the plugin (`plugins.approved`;
    /// built-ins always). False after an approval was revoked: the endpoint then
    /// refuses reports, and clients refuse to shard for it.
    approved: bool,
    /// The parameters, as stored (canonical JSON). Left out of listings when
    /// longer than 1 KiB: fetch the endpoint for them.
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<Value>,
    /// The smallest batch a seal releases.
    min_batch: u64,
    /// Most unsealed reports one user may hold in this endpoint on a server; left
    /// out when there is no such limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    max_reports_per_user: Option<u64>,
    /// Server 0 seals the endpoint by itself every this many seconds; left out
    /// when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    seal_every: Option<u64>,
    /// Server 0 seals the endpoint by itself as soon as this many reports are
    /// held by every server; left out when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 2)]
    seal_at: Option<u64>,
    /// SHA-256 over the plugin, its configuration, `min_batch`,
    /// `max_reports_per_user`, `seal_every` and `seal_at`, 64 hex digits: equal
    /// on every server of a deployment.
    config_hash: String,
    /// When the endpoint was created (RFC 3339).
    created_at: String,
    /// Report counts; left out in the answer to a creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    reports: Option<ReportCounts>,
}

/// How many reports an endpoint holds, by state.
#[derive(Serialize, ToSchema)]
pub(super) struct ReportCounts {
    /// Stored and not yet in a batch.
    unbatched: u64,
    /// Folded into a sealed batch.
    batched: u64,
    /// Dropped unbatched after `endpoints.report_retention_secs`.
    expired: u64,
    /// Failed verification in a seal (robust endpoints): in no batch.
    rejected: u64,
    /// Sealed batches.
    batches: u64,
}

/// Answer of `GET /api/v1/endpoints`.
#[derive(Serialize, ToSchema)]
pub(super) struct EndpointList {
    /// A page of the endpoints, by name, with their report counts.
    endpoints: Vec<EndpointView>,
    /// The `after` of the next page; null after the last.
    next: Option<String>,
}

impl EndpointView {
    fn new(endpoint: &Endpoint, counts: Option<EndpointCounts>, state: &AppState) -> Self {
        let params = Some(serde_json::from_str(&endpoint.record.params).unwrap_or(Value::Null));
        Self::with_params(endpoint, counts, params, state)
    }

    /// As a list item: without bulky params (parsed only when kept).
    fn listed(endpoint: &Endpoint, counts: Option<EndpointCounts>, state: &AppState) -> Self {
        let params = listed_json(&endpoint.record.params);
        Self::with_params(endpoint, counts, params, state)
    }

    fn with_params(
        endpoint: &Endpoint,
        counts: Option<EndpointCounts>,
        params: Option<Value>,
        state: &AppState,
    ) -> Self {
        let record = &endpoint.record;
        Self {
            name: record.name.clone(),
            plugin: record.plugin_name.clone(),
            plugin_digest: hex::encode(record.plugin_digest),
            approved: state.registry.is_approved(&record.plugin_digest),
            params,
            min_batch: record.min_batch,
            max_reports_per_user: record.max_reports_per_user,
            seal_every: record.schedule.every_secs,
            seal_at: record.schedule.at,
            config_hash: hex::encode(record.config_hash),
            created_at: timestamp(record.created_at),
            reports: counts.map(|c| ReportCounts {
                unbatched: c.unbatched,
                batched: c.batched,
                expired: c.expired,
                rejected: c.rejected,
                batches: c.batches,
            }),
        }
    }
}

/// The answer when a plugin this server's operator did not approve would collect
/// reports: it names the plugin by its full digest and says how an operator
/// approves it.
pub(super) fn not_approved(status: StatusCode, what: &str, digest: &[u8; 32]) -> ApiError {
    let digest = hex::encode(digest);
    ApiError::new(
        status,
        "plugin_not_approved",
        format!(
            "{what}: plugin {digest} is not approved on this server. A plugin's shard decides \
             what each server sees, so every operator approves it after reviewing it: add the \
             digest to plugins.approved (GUARDIAN_PLUGINS_APPROVED={digest}) and restart the \
             server"
        ),
    )
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
/// its canonical configuration, the minimum batch and the per-user quota.
///
/// Without a quota the hash is the one endpoints had before quotas existed, so
/// their hashes do not change; with one, another prefix keeps the two forms
/// apart (the configuration, of any length, comes last in both).
pub fn config_hash(
    plugin_digest: &[u8; 32],
    config: &[u8],
    min_batch: u64,
    max_reports_per_user: Option<u64>,
) -> [u8; 32] {
    let mut hasher = Sha256::new();
    match max_reports_per_user {
        None => hasher.update(b"guardian:endpoint:v1\0"),
        Some(_) => hasher.update(b"guardian:endpoint:v2\0"),
    }
    hasher.update(plugin_digest);
    hasher.update(min_batch.to_le_bytes());
    if let Some(max) = max_reports_per_user {
        hasher.update(max.to_le_bytes());
    }
    hasher.update(config);
    hasher.finalize().into()
}

/// [`config_hash`] of an endpoint with a seal schedule.
///
/// Without one it is [`config_hash`], so the hashes of endpoints created before
/// schedules existed do not change; with one, another prefix keeps the forms
/// apart, and each optional value is a presence byte and 8 bytes.
pub fn scheduled_config_hash(
    plugin_digest: &[u8; 32],
    config: &[u8],
    min_batch: u64,
    max_reports_per_user: Option<u64>,
    schedule: &SealSchedule,
) -> [u8; 32] {
    if schedule.is_manual() {
        return config_hash(plugin_digest, config, min_batch, max_reports_per_user);
    }
    let mut hasher = Sha256::new();
    hasher.update(b"guardian:endpoint:v3\0");
    hasher.update(plugin_digest);
    hasher.update(min_batch.to_le_bytes());
    for value in [max_reports_per_user, schedule.every_secs, schedule.at] {
        hasher.update([u8::from(value.is_some())]);
        hasher.update(value.unwrap_or(0).to_le_bytes());
    }
    hasher.update(config);
    hasher.finalize().into()
}

/// Creates an endpoint; the same definition again is not an error.
#[utoipa::path(post, path = "/endpoints", tag = "endpoints", security(("bearer" = [])),
    request_body = CreateEndpoint,
    responses(
        (status = 201, description = "Created.", body = EndpointView),
        (status = 200, description = "An identical endpoint exists.", body = EndpointView),
        (status = 400, description = "Malformed request: `malformed_json`, `bad_body`, \
            `invalid_endpoint_name`, `invalid_max_reports_per_user`, `invalid_seal_every`, \
            `invalid_seal_at` (below `min_batch` or above `endpoints.max_batch`), \
            `params_too_deep`, or \
            `invalid_min_batch` (below `endpoints.min_batch_floor` or above \
            `endpoints.max_batch`).",
            body = ErrorBody),
        AuthErrors,
        (status = 403, description = "The token lacks the developer role: `missing_role`. Or \
            the plugin is an uploaded one this server's operator has not approved: \
            `plugin_not_approved`, with the digest and how to approve it \
            (`plugins.approved`, `GUARDIAN_PLUGINS_APPROVED`).", body = ErrorBody),
        (status = 404, description = UNKNOWN_PLUGIN, body = ErrorBody),
        (status = 409, description = "An endpoint of this name exists with another \
            definition: `endpoint_conflict`; or the server holds `limits.max_endpoints`: \
            `too_many_endpoints`; or `plugin` names several uploaded plugins: \
            `ambiguous_plugin`, listing each one's `name@version` and digest.",
            body = ErrorBody),
        (status = 413, description = "Larger than `limits.max_body_bytes`: `body_too_large`; \
            params longer than `limits.max_params_bytes`: `params_too_large`.",
            body = ErrorBody),
        (status = 422, description = "The plugin refused the parameters: its own code (e.g. \
            `invalid_params`), `plugin_internal`, or the limit its `configure` hit.",
            body = ErrorBody),
        (status = 500, description = STORAGE_500, body = ErrorBody),
        (status = 503, description = "Retry later: `plugin_unavailable`, `shutting_down`, \
            `keys_unavailable`.", body = ErrorBody),
    ))]
pub(super) async fn create_endpoint(
    State(state): State<Arc<AppState>>,
    _caller: Caller<need::Developer>,
    Json(body): Json<CreateEndpoint>,
) -> Answer {
    check_endpoint_name(&body.name)?;
    let min_batch = body
        .min_batch
        .unwrap_or(state.config.endpoints.default_min_batch);
    // A developer token alone must not set up batches of one report (which release
    // that user's value): the operator's floor bounds every endpoint.
    let floor = state.config.endpoints.min_batch_floor;
    if min_batch < floor {
        return Err(ApiError::bad_request(
            "invalid_min_batch",
            format!(
                "min_batch must be at least {floor}, this server's floor (endpoints.min_batch_floor): a smaller batch would release too few users' values"
            ),
        ));
    }
    // A larger minimum could never be sealed (and would not fit storage's integers).
    let most = state.config.endpoints.max_batch.min(i64::MAX as u64);
    if min_batch > most {
        return Err(ApiError::bad_request(
            "invalid_min_batch",
            format!(
                "min_batch must be at most {most}, the most reports one seal takes (endpoints.max_batch)"
            ),
        ));
    }
    // Stored as a SQLite integer.
    if body
        .max_reports_per_user
        .is_some_and(|max| max == 0 || max > i64::MAX as u64)
    {
        return Err(ApiError::bad_request(
            "invalid_max_reports_per_user",
            format!(
                "max_reports_per_user must be between 1 and {}, or left out for no limit",
                i64::MAX
            ),
        ));
    }
    let schedule = check_schedule(
        body.seal_every,
        body.seal_at,
        min_batch,
        state.config.endpoints.max_batch,
    )?;
    let plugin = state.registry.plugin_or_load(&body.plugin).await?;
    if !state.registry.is_approved(&plugin.digest()) {
        return Err(not_approved(
            StatusCode::FORBIDDEN,
            &format!("cannot create endpoint {:?}", body.name),
            &plugin.digest(),
        ));
    }
    // serde_json keeps object keys sorted: this text is canonical.
    let params = body.params.to_string();
    check_params(&body.params, &params, state.config.limits.max_params_bytes)?;
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
        config_hash: scheduled_config_hash(
            &plugin.digest(),
            &config,
            min_batch,
            body.max_reports_per_user,
            &schedule,
        ),
        config,
        min_batch,
        max_reports_per_user: body.max_reports_per_user,
        created_at: state.clock.now(),
        schedule,
    };
    // Counted and created under one lock, so the cap holds with creations at once.
    let _creating = state.registry.creating().await;
    let most = state.config.limits.max_endpoints;
    if state.storage.get_endpoint(&record.name).await?.is_none()
        && state.storage.endpoint_count().await? >= most as u64
    {
        return Err(ApiError::conflict(
            "too_many_endpoints",
            format!(
                "this server holds {most} endpoints, its most (limits.max_endpoints): delete one first"
            ),
        ));
    }
    match state.storage.create_endpoint(record).await? {
        CreateEndpointOutcome::Created(endpoint) => {
            state.registry.set_endpoint(endpoint.clone(), plugin);
            state.sealer.endpoint_created();
            json(
                StatusCode::CREATED,
                EndpointView::new(&endpoint, None, &state),
            )
        }
        CreateEndpointOutcome::Identical(endpoint) => {
            json(StatusCode::OK, EndpointView::new(&endpoint, None, &state))
        }
        CreateEndpointOutcome::Conflict(existing) => Err(ApiError::conflict(
            "endpoint_conflict",
            format!(
                "an endpoint named {:?} already exists with another definition (plugin {}, params {}, min_batch {}, max_reports_per_user {}); delete it first or pick another name",
                existing.record.name,
                existing.record.plugin_name,
                existing.record.params,
                existing.record.min_batch,
                existing
                    .record
                    .max_reports_per_user
                    .map_or_else(|| "none".to_owned(), |max| max.to_string()),
            ),
        )),
    }
}

/// An endpoint's seal schedule, checked: `seal_every` at least a second,
/// `seal_at` between `min_batch` (a smaller batch is never sealed) and
/// `max_batch` (a seal takes no more), both within storage's integers.
fn check_schedule(
    seal_every: Option<u64>,
    seal_at: Option<u64>,
    min_batch: u64,
    max_batch: u64,
) -> Result<SealSchedule, ApiError> {
    let most = i64::MAX as u64;
    if seal_every.is_some_and(|every| every == 0 || every > most) {
        return Err(ApiError::bad_request(
            "invalid_seal_every",
            format!(
                "seal_every is a number of seconds between 1 and {most}, or left out to seal only when asked"
            ),
        ));
    }
    let max_batch = max_batch.min(most);
    if seal_at.is_some_and(|at| at < min_batch || at > max_batch) {
        return Err(ApiError::bad_request(
            "invalid_seal_at",
            format!(
                "seal_at is a number of reports between the endpoint's min_batch ({min_batch}) and {max_batch}, the most one seal takes (endpoints.max_batch), or left out"
            ),
        ));
    }
    Ok(SealSchedule {
        every_secs: seal_every,
        at: seal_at,
    })
}

/// Lists the endpoints with their report counts, a page at a time.
#[utoipa::path(get, path = "/endpoints", tag = "endpoints", security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of the endpoints.", body = EndpointList),
        (status = 400, description = "`bad_query`, `bad_limit`.", body = ErrorBody),
        AuthErrors,
        (status = 500, description = STORAGE_500, body = ErrorBody),
        (status = 503, description = STORAGE_503, body = ErrorBody),
    ))]
pub(super) async fn list_endpoints(
    State(state): State<Arc<AppState>>,
    _caller: Caller<need::AnyRole>,
    query: Result<Query<PageQuery>, ApiError>,
) -> Answer {
    let Query(query) = query?;
    let limit = query.limit()?;
    let mut endpoints = state
        .storage
        .endpoints_after(query.after().map(str::to_owned), limit + 1)
        .await?;
    let (endpoints, next) = cut(&mut endpoints, limit, |e| e.record.name.clone());
    let mut views = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let counts = state.storage.endpoint_counts(&endpoint.record.name).await?;
        views.push(EndpointView::listed(&endpoint, counts, &state));
    }
    json(
        StatusCode::OK,
        EndpointList {
            endpoints: views,
            next,
        },
    )
}

/// Deepest nesting of arrays and objects accepted in an endpoint's `params`:
/// what every client can parse back (serde_json stops at 128 levels, with the
/// listing around it).
const MAX_PARAMS_DEPTH: usize = 32;

/// Refuses params that could not be served back: longer than `max_bytes` as
/// JSON (413 `params_too_large`) or nested deeper than [`MAX_PARAMS_DEPTH`]
/// (400 `params_too_deep`).
fn check_params(params: &Value, text: &str, max_bytes: usize) -> Result<(), ApiError> {
    if text.len() > max_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "params_too_large",
            format!(
                "params are {} bytes as JSON; this server takes at most {max_bytes} (limits.max_params_bytes)",
                text.len()
            ),
        ));
    }
    // Iterative: a deep value must not deepen this server's stack.
    let mut stack = vec![(params, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(fields) => Box::new(fields.values()),
            _ => continue,
        };
        if depth + 1 > MAX_PARAMS_DEPTH {
            return Err(ApiError::bad_request(
                "params_too_deep",
                format!("params nest arrays and objects more than {MAX_PARAMS_DEPTH} levels deep"),
            ));
        }
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    Ok(())
}

pub(super) fn unknown_endpoint(name: &str) -> ApiError {
    ApiError::not_found("unknown_endpoint", format!("no endpoint named {name:?}"))
}

/// Shows one endpoint with its report counts.
#[utoipa::path(get, path = "/endpoints/{name}", tag = "endpoints", security(("bearer" = [])),
    params(("name" = String, Path, description = "The endpoint's name.", example = "demo")),
    responses(
        (status = 200, description = "The endpoint.", body = EndpointView),
        (status = 400, description = "Undecodable path: `invalid_path`.", body = ErrorBody),
        AuthErrors,
        (status = 404, description = "No such endpoint: `unknown_endpoint`.", body = ErrorBody),
        (status = 500, description = STORAGE_500, body = ErrorBody),
        (status = 503, description = STORAGE_503, body = ErrorBody),
    ))]
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
    json(StatusCode::OK, EndpointView::new(&endpoint, counts, &state))
}

/// Removes an endpoint with its reports and batches.
#[utoipa::path(delete, path = "/endpoints/{name}", tag = "endpoints", security(("bearer" = [])),
    params(("name" = String, Path, description = "The endpoint's name.", example = "demo")),
    responses(
        (status = 204, description = "Removed."),
        (status = 400, description = "Undecodable path: `invalid_path`.", body = ErrorBody),
        RoleErrors,
        (status = 404, description = "No such endpoint: `unknown_endpoint`.", body = ErrorBody),
        (status = 500, description = STORAGE_500, body = ErrorBody),
        (status = 503, description = STORAGE_503, body = ErrorBody),
    ))]
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

/// Body of `POST /api/v1/endpoints/{name}/reports`: one user's share.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PostReport {
    /// The report's id, 32 hex digits (16 bytes), the same on every server: a
    /// retry with the same id and share is acknowledged again. Its first 48 bits
    /// are the time the client made it (big-endian Unix milliseconds), the rest
    /// random (UUIDv7 layout); servers take it only within their report window.
    #[schema(
        pattern = "^[0-9a-fA-F]{32}$",
        example = "019af5e2a1c07d3e8f4a112233445566"
    )]
    pub(super) report_id: String,
    /// This server's share of the measurement, base64.
    #[schema(format = Byte, example = "AAAAAAAAAAA=")]
    share: String,
    /// The report's public share, base64: the same bytes posted to every server
    /// (robust plugins, contract 0.2.0; absent or empty otherwise).
    #[serde(default)]
    #[schema(format = Byte)]
    public_share: Option<String>,
}

/// Answer to a posted report.
#[derive(Serialize, ToSchema)]
pub(super) struct ReportAccepted {
    /// The report's id, as posted.
    report_id: String,
    /// Whether it was stored now or had been before.
    status: ReportStatus,
}

/// What happened to a posted report.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum ReportStatus {
    /// Stored now (201).
    Stored,
    /// The same report was stored before (200).
    Duplicate,
}

/// Posts one share. It is acknowledged only once durably stored.
#[utoipa::path(post, path = "/endpoints/{name}/reports", tag = "reports",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "The endpoint's name.", example = "demo")),
    request_body = PostReport,
    responses(
        (status = 201, description = "Stored.", body = ReportAccepted),
        (status = 200, description = "The same report was stored before.", body = ReportAccepted),
        (status = 400, description = "Malformed request: `malformed_json`, `bad_body`, \
            `invalid_report_id`, `invalid_share_encoding`, `invalid_path`. Or the report id's \
            time (its first 48 bits, Unix milliseconds) is outside the server's report window: \
            `report_too_old` (older than `endpoints.report_retention_secs`), \
            `report_from_future` (ahead by more than `endpoints.report_max_future_skew_secs`).",
            body = ErrorBody),
        RoleErrors,
        (status = 404, description = "No such endpoint: `unknown_endpoint`.", body = ErrorBody),
        (status = 409, description = "This report id was posted with another share: \
            `report_conflict`. Or the endpoint's plugin is no longer approved on this server \
            (its operator revoked it): `plugin_not_approved`, until it is approved again; \
            stored reports stay and can still be sealed.", body = ErrorBody),
        (status = 413, description = "Larger than `limits.max_body_bytes`: `body_too_large`.",
            body = ErrorBody),
        (status = 422, description = "The plugin rejected the share: its own code and message, \
            `plugin_internal`, or the limit its `validate` hit.", body = ErrorBody),
        (status = 429, description = "Posting too fast: `rate_limited` (per user, \
            `limits.reports_per_second_per_user`, or per client address, \
            `limits.reports_per_second_per_ip`; the message says which), with `Retry-After`. \
            Or this user already holds the endpoint's `max_reports_per_user` reports waiting \
            for a seal: `user_quota_exceeded`, with the limit as `max_reports_per_user`, no \
            `Retry-After` (it lasts until the next seal).", body = ErrorBody,
            headers(("Retry-After" = u64, description = "With `rate_limited`: whole seconds \
                until this client may post again (at least 1)."))),
        (status = 500, description = STORAGE_500, body = ErrorBody),
        (status = 503, description = "Retry later: `plugin_unavailable`, `shutting_down`, \
            `keys_unavailable`, `storage_unavailable` (this server cannot write now: full or \
            failing disk; with `Retry-After`; nothing was stored).", body = ErrorBody),
    ))]
pub(super) async fn post_report(
    State(state): State<Arc<AppState>>,
    ClientIp(ip): ClientIp,
    caller: Caller<need::User>,
    Path(name): Path<String>,
    body: Result<Json<PostReport>, ApiError>,
) -> Answer {
    let endpoint = state.registry.endpoint_or_load(&name).await?;
    // With authentication off every caller is the same "anonymous": no per-user limit.
    let user = (!state.config.auth.disabled).then_some(caller.principal.sub.as_str());
    // Every post counts against the limits, whatever becomes of it.
    let result = match (state.rate_limits.check(user, ip), &endpoint, body) {
        (Err(e), _, _) => Err(e),
        (Ok(()), None, _) => Err(unknown_endpoint(&name)),
        (Ok(()), Some(endpoint), _) if !endpoint.approved => Err(not_approved(
            StatusCode::CONFLICT,
            &format!("endpoint {name:?} takes no reports"),
            &endpoint.endpoint.record.plugin_digest,
        )),
        (Ok(()), Some(_), Err(e)) => Err(e),
        (Ok(()), Some(endpoint), Ok(Json(report))) => {
            store_report(&state, endpoint, &caller.principal.sub, report).await
        }
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

/// The body of `POST /api/v1/endpoints/{name}/reports` read as [`post_report`]
/// reads it: the [`Json`] extractor's parse, then [`decode_report`]. What the
/// report fuzz target drives; the handler itself gets its JSON from the extractor.
pub(crate) fn parse_report_body(body: &[u8]) -> Result<DecodedReport, ApiError> {
    decode_report(&super::extract::parse_json::<PostReport>(body)?)
}

/// A report's id, share and public share (empty when absent) as bytes.
pub(crate) type DecodedReport = ([u8; 16], Vec<u8>, Vec<u8>);

/// A report's id (32 hex digits), its share and public share (base64) as bytes,
/// before any plugin sees them.
pub(super) fn decode_report(report: &PostReport) -> Result<DecodedReport, ApiError> {
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
    let public_share = match &report.public_share {
        Some(public_share) => BASE64.decode(public_share.as_bytes()).map_err(|e| {
            ApiError::bad_request(
                "invalid_share_encoding",
                format!("public_share is not valid base64: {e}"),
            )
        })?,
        None => Vec::new(),
    };
    Ok((report_id, share, public_share))
}

async fn store_report(
    state: &AppState,
    live: &Arc<LiveEndpoint>,
    sub: &str,
    report: PostReport,
) -> Answer {
    let (report_id, share, public_share) = decode_report(&report)?;
    super::report_time::check_report_time(state, &report_id)?;
    let index = state.config.server.index;
    let share = state
        .registry
        .validate(live, public_share, share, index)
        .await?;
    let endpoint = live.endpoint.id;
    let now = state.clock.now();
    let outcome = match live.endpoint.record.max_reports_per_user {
        // Who posted it, so that a batch can be required to hold many users.
        None if state.sealer.counts_users() => {
            let poster = state.storage.user_key(sub);
            state
                .storage
                .insert_report_from(endpoint, report_id, share, now, poster)
                .await
        }
        None => {
            state
                .storage
                .insert_report(endpoint, report_id, share, now)
                .await
        }
        Some(max) => {
            let quota = UserQuota {
                user: state.storage.user_key(sub),
                max,
            };
            state
                .storage
                .insert_report_for_user(endpoint, report_id, share, now, quota)
                .await
        }
    };
    if matches!(outcome, Ok(InsertReportOutcome::Stored)) {
        state.sealer.reports_stored(&live.endpoint, 1);
    }
    match outcome {
        Ok(InsertReportOutcome::Stored) => json(
            StatusCode::CREATED,
            ReportAccepted {
                report_id: report.report_id,
                status: ReportStatus::Stored,
            },
        ),
        Ok(InsertReportOutcome::Duplicate) => json(
            StatusCode::OK,
            ReportAccepted {
                report_id: report.report_id,
                status: ReportStatus::Duplicate,
            },
        ),
        Ok(InsertReportOutcome::Conflict) => Err(ApiError::conflict(
            "report_conflict",
            "this report_id was already posted with a different share (or public share)",
        )),
        Ok(InsertReportOutcome::UserQuotaExceeded { max }) => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "user_quota_exceeded",
            format!(
                "you already have {max} reports in endpoint {:?} waiting for a batch, its most per user; post again after the next seal",
                live.endpoint.record.name
            ),
        )
        .with_detail("max_reports_per_user", max)),
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

/// The OpenAPI document, serialised once when the router is built.
#[derive(Clone)]
pub(super) struct OpenApiJson(pub(super) axum::body::Bytes);

/// This API's OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "The OpenAPI 3.1 document of this server.",
        body = Object)))]
pub(super) async fn openapi(axum::Extension(doc): axum::Extension<OpenApiJson>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.0,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quota_enters_the_config_hash_only_when_set() {
        let (digest, config) = ([7u8; 32], b"{\"length\":3}");
        // The hash endpoints had before quotas existed.
        let mut before = Sha256::new();
        before.update(b"guardian:endpoint:v1\0");
        before.update(digest);
        before.update(10u64.to_le_bytes());
        before.update(config);
        let before: [u8; 32] = before.finalize().into();
        assert_eq!(config_hash(&digest, config, 10, None), before);
        let capped = config_hash(&digest, config, 10, Some(5));
        assert_ne!(capped, before);
        assert_ne!(capped, config_hash(&digest, config, 10, Some(6)));
        // The quota's bytes cannot pass for the start of a configuration.
        let mut shifted = 5u64.to_le_bytes().to_vec();
        shifted.extend_from_slice(config);
        assert_ne!(capped, config_hash(&digest, &shifted, 10, None));
    }
}
