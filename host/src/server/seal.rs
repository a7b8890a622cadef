//! Sealing batches across servers (DESIGN.md section 6).
//!
//! Server 0 coordinates; every other server follows. For one endpoint, at most one
//! seal runs at a time on each server (a per-endpoint lock), and:
//!
//! 1. **Prepare.** The coordinator proposes its oldest unbatched report ids under a
//!    fresh batch id. Each follower checks the endpoint's `config_hash`, reserves the
//!    proposed reports it holds unbatched (replacing any older reservation, since
//!    only the coordinator proposes and it runs one seal at a time) and answers with
//!    a bitmap over the proposal.
//! 2. **Decide.** The coordinator intersects the bitmaps into S. Below `min_batch`,
//!    or if a follower failed, it aborts every reservation and nothing is sealed.
//!    Otherwise it persists the decision (S and the batch id) before telling anyone.
//! 3. **Commit.** Every follower commits exactly S (idempotent by batch id), then the
//!    coordinator does; its commit deletes the decision in the same transaction. A
//!    decision found pending (after a crash, a timeout, a follower down) is driven to
//!    completion before any new seal of that endpoint, by the next request or by the
//!    background retry.
//!
//! Committing folds the shares of S with `accumulate` in chunks on the blocking
//! pool, runs `release` once with a fresh seed, and stores the released share, the
//! batch and the batched marks (deleting the shares) in one transaction. Every server
//! checks on its own: the config hash, `min_batch`, that each report of S is held
//! unbatched (so no report is ever in two batches) and the batch's count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::AppState;
use super::error::ApiError;
use super::registry::LiveEndpoint;
use crate::storage::{BatchInfo, EndpointId, NewBatch, Seal, SealReport};

/// Shares folded per `accumulate` call: bounds the memory a seal holds and lets
/// other plugin calls interleave.
const FOLD_CHUNK: usize = 65_536;

/// Most share bytes passed to one `accumulate` call.
const FOLD_BYTES: usize = 8 << 20;

/// Cuts concatenated shares (`ends` as `accumulate` takes them) into slices of at
/// most `max_bytes` each (a single longer share makes a slice of its own), with
/// their ends rebased to the slice.
fn fold_slices<'a>(data: &'a [u8], ends: &[u32], max_bytes: usize) -> Vec<(&'a [u8], Vec<u32>)> {
    let mut slices = Vec::new();
    let (mut start, mut slice_ends) = (0usize, Vec::new());
    for &end in ends {
        let end = end as usize;
        if !slice_ends.is_empty() && end - start > max_bytes {
            let stop = *slice_ends.last().expect("not empty") as usize + start;
            slices.push((&data[start..stop], std::mem::take(&mut slice_ends)));
            start = stop;
        }
        slice_ends.push(u32::try_from(end - start).expect("within a u32 chunk"));
    }
    if !slice_ends.is_empty() {
        slices.push((&data[start..], slice_ends));
    }
    slices
}

/// How often the coordinator retries the decided seals that did not complete.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// Environment variable naming a fault to inject, for the crash tests only:
/// `crash_before_coordinator_commit` aborts the coordinator's process after every
/// follower committed a seal and before it commits it itself.
pub const FAULT_VAR: &str = "GUARDIAN_FAULT";

/// A seal's state shared by the handlers: per-endpoint locks and the peer client.
pub(super) struct Sealer {
    locks: Mutex<HashMap<EndpointId, Arc<tokio::sync::Mutex<()>>>>,
    client: reqwest::Client,
    /// Base URL of every server, by index.
    peers: Vec<String>,
    /// The credential presented to peers.
    secret: Option<String>,
    index: u32,
    max_batch: usize,
    crash_before_commit: bool,
}

/// `POST /peer/v1/endpoints/{name}/prepare`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Prepare {
    batch_id: String,
    config_hash: String,
    /// The proposed report ids, 16 bytes each, concatenated, base64.
    reports: String,
}

/// Answer to [`Prepare`].
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Prepared {
    /// Bit i (least significant first in each byte) is set when the follower holds
    /// and reserved proposed report i; base64.
    held: String,
    count: u64,
}

/// `POST /peer/v1/endpoints/{name}/commit`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Commit {
    batch_id: String,
    config_hash: String,
    /// The report ids of S, concatenated, base64.
    reports: String,
}

/// Answer to [`Commit`]: the batch as the follower stored it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Committed {
    batch_id: String,
    count: u64,
}

/// `POST /peer/v1/endpoints/{name}/abort`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Abort {
    batch_id: String,
}

/// Answer to [`Abort`].
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Aborted {
    aborted: bool,
}

impl Sealer {
    pub(super) fn new(config: &crate::config::Config) -> anyhow::Result<Sealer> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(config.endpoints.peer_timeout())
            .build()?;
        Ok(Sealer {
            locks: Mutex::new(HashMap::new()),
            client,
            peers: config.server.peers.clone(),
            secret: crate::auth::peer::peer_secret(&config.auth)?,
            index: config.server.index,
            max_batch: config.endpoints.max_batch_len(),
            crash_before_commit: std::env::var(FAULT_VAR)
                .is_ok_and(|v| v == "crash_before_coordinator_commit"),
        })
    }

    /// The lock serialising seals of one endpoint on this server.
    fn lock(&self, endpoint: EndpointId) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(endpoint)
            .or_default()
            .clone()
    }

    fn followers(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.peers.len() as u32).filter(move |i| *i != self.index)
    }

    /// The coordinator's URL, for errors sent to clients that called a follower.
    pub(super) fn coordinator_url(&self) -> &str {
        self.peers.first().map_or("server 0", String::as_str)
    }

    /// Calls `step` of `endpoint` on follower `index`.
    async fn call<B: Serialize, T: serde::de::DeserializeOwned>(
        client: reqwest::Client,
        url: String,
        secret: Option<String>,
        index: u32,
        body: Arc<B>,
    ) -> Result<T, ApiError> {
        let down = |why: String| {
            ApiError::unavailable(
                "peer_unavailable",
                format!(
                    "server {index} ({url}) is unavailable: {why}; nothing was sealed, retry later"
                ),
            )
        };
        let mut request = client.post(&url).json(&*body);
        if let Some(secret) = &secret {
            request = request.bearer_auth(secret);
        }
        let response = request
            .send()
            .await
            .map_err(|e| down(e.without_url().to_string()))?;
        let status = response.status();
        if status.is_success() {
            return response
                .json()
                .await
                .map_err(|e| down(format!("unreadable answer ({})", e.without_url())));
        }
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned();
        let message = body["error"]["message"].as_str().unwrap_or("").to_owned();
        if status.is_server_error() {
            return Err(down(format!("it answered {status} {code}: {message}")));
        }
        Err(peer_refusal(index, &code, &message))
    }

    /// Sends `body` to `step` on every follower at once; answers in index order.
    async fn broadcast<B, T>(
        &self,
        endpoint: &str,
        step: &str,
        body: B,
    ) -> Vec<(u32, Result<T, ApiError>)>
    where
        B: Serialize + Send + Sync + 'static,
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let body = Arc::new(body);
        let mut calls = JoinSet::new();
        for index in self.followers() {
            let url = format!(
                "{}/peer/v1/endpoints/{endpoint}/{step}",
                self.peers[index as usize].trim_end_matches('/')
            );
            let call = Self::call(
                self.client.clone(),
                url,
                self.secret.clone(),
                index,
                body.clone(),
            );
            calls.spawn(async move { (index, call.await) });
        }
        let mut answers = Vec::new();
        while let Some(answer) = calls.join_next().await {
            match answer {
                Ok(answer) => answers.push(answer),
                Err(e) => tracing::error!(error = %e, "a peer call task failed"),
            }
        }
        answers.sort_by_key(|(index, _)| *index);
        answers
    }

    /// Tells every follower to drop its reservation for `batch_id`, in the
    /// background: a follower that misses it drops it at the next proposal.
    fn abort_all(self: &Arc<Self>, endpoint: &str, batch_id: [u8; 16]) {
        let sealer = self.clone();
        let endpoint = endpoint.to_owned();
        tokio::spawn(async move {
            let body = Abort {
                batch_id: hex::encode(batch_id),
            };
            for (index, answer) in sealer
                .broadcast::<_, Aborted>(&endpoint, "abort", body)
                .await
            {
                if let Err(e) = answer {
                    tracing::warn!(server = index, %endpoint, error = %e, "a follower missed an abort; its reservation goes at the next proposal");
                }
            }
        });
    }
}

/// A follower's 4xx answer, as this server answers its own client.
fn peer_refusal(index: u32, code: &str, message: &str) -> ApiError {
    let (status, code) = match code {
        "config_mismatch" => (StatusCode::CONFLICT, "config_mismatch"),
        "unknown_endpoint" => (StatusCode::CONFLICT, "endpoint_missing_on_peer"),
        "bad_peer_credential" | "no_peer_credential" | "missing_token" => {
            (StatusCode::BAD_GATEWAY, "peer_credential_refused")
        }
        _ => (StatusCode::BAD_GATEWAY, "peer_refused"),
    };
    ApiError::new(
        status,
        code,
        format!("server {index} refused: {code}: {message}"),
    )
}

fn decode_id<const N: usize>(text: &str, what: &str) -> Result<[u8; N], ApiError> {
    let mut out = [0; N];
    hex::decode_to_slice(text, &mut out).map_err(|_| {
        ApiError::bad_request(
            "bad_request",
            format!("{what} must be {} hex characters", 2 * N),
        )
    })?;
    Ok(out)
}

/// Parses a batch id given in a URL or a body.
pub(super) fn parse_batch_id(text: &str) -> Result<[u8; 16], ApiError> {
    let mut out = [0; 16];
    hex::decode_to_slice(text, &mut out)
        .map_err(|_| ApiError::bad_request("bad_batch_id", "a batch id is 32 hex characters"))?;
    Ok(out)
}

fn decode_ids(text: &str, max: usize) -> Result<Vec<[u8; 16]>, ApiError> {
    let bytes = BASE64
        .decode(text)
        .map_err(|_| ApiError::bad_request("bad_request", "reports must be base64"))?;
    if !bytes.len().is_multiple_of(16) {
        return Err(ApiError::bad_request(
            "bad_request",
            "reports must be whole 16-byte report ids",
        ));
    }
    if bytes.len() / 16 > max {
        return Err(ApiError::bad_request(
            "too_many_reports",
            format!("a seal takes at most {max} reports (endpoints.max_batch)"),
        ));
    }
    Ok(bytes
        .chunks_exact(16)
        .map(|id| id.try_into().expect("16 bytes"))
        .collect())
}

fn encode_ids(reports: &[SealReport]) -> String {
    let bytes: Vec<u8> = reports.iter().flat_map(|r| r.report_id).collect();
    BASE64.encode(bytes)
}

fn check_config(live: &LiveEndpoint, config_hash: &str) -> Result<(), ApiError> {
    let theirs: [u8; 32] = decode_id(config_hash, "config_hash")?;
    if theirs != live.endpoint.record.config_hash {
        return Err(ApiError::conflict(
            "config_mismatch",
            format!(
                "endpoint {:?} has config hash {} here but {} on the coordinator: recreate it identically on every server",
                live.endpoint.record.name,
                hex::encode(live.endpoint.record.config_hash),
                config_hash
            ),
        ));
    }
    Ok(())
}

fn too_small(agreed: u64, needed: u64) -> ApiError {
    ApiError::conflict(
        "batch_too_small",
        format!(
            "only {agreed} unbatched reports are held by every server; this endpoint releases batches of at least {needed}"
        ),
    )
    .with_detail("agreed", agreed)
    .with_detail("needed", needed)
}

/// Seals a batch of `live`'s endpoint; called on the coordinator.
///
/// If a decided seal of the endpoint is pending, completes it and answers with it
/// instead: a client retrying after a `seal_incomplete` gets its batch.
pub(super) async fn seal(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
) -> Result<BatchInfo, ApiError> {
    let sealer = &state.sealer;
    let endpoint = &live.endpoint;
    let lock = sealer.lock(endpoint.id);
    let _sealing = lock.lock().await;
    if let Some(pending) = state.storage.pending_seal(endpoint.id).await? {
        if pending.decided {
            return finish(state, live, pending).await;
        }
        // Only followers reserve; a reservation here is left from a time this server
        // had another index.
        state
            .storage
            .drop_seal(endpoint.id, pending.batch_id)
            .await?;
    }
    let needed = endpoint.record.min_batch.max(1);
    let proposal = state
        .storage
        .unbatched_reports(endpoint.id, sealer.max_batch)
        .await?;
    if proposal.is_empty() {
        return Err(too_small(0, needed));
    }
    let batch_id: [u8; 16] = rand::random();
    let prepare = Prepare {
        batch_id: hex::encode(batch_id),
        config_hash: hex::encode(endpoint.record.config_hash),
        reports: encode_ids(&proposal),
    };
    let name = &endpoint.record.name;
    let mut agreed = vec![true; proposal.len()];
    let mut failure = None;
    for (index, answer) in sealer
        .broadcast::<_, Prepared>(name, "prepare", prepare)
        .await
    {
        let bitmap = answer.and_then(|prepared| {
            BASE64
                .decode(prepared.held)
                .ok()
                .filter(|bits| bits.len() == proposal.len().div_ceil(8))
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "peer_refused",
                        format!("server {index} answered the proposal with a malformed bitmap"),
                    )
                })
        });
        match bitmap {
            Ok(bits) => {
                for (i, agreed) in agreed.iter_mut().enumerate() {
                    *agreed &= bits[i / 8] & (1 << (i % 8)) != 0;
                }
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(failure) = failure {
        sealer.abort_all(name, batch_id);
        return Err(failure);
    }
    let reports: Vec<SealReport> = proposal
        .into_iter()
        .zip(agreed)
        .filter_map(|(report, agreed)| agreed.then_some(report))
        .collect();
    if (reports.len() as u64) < needed {
        sealer.abort_all(name, batch_id);
        return Err(too_small(reports.len() as u64, needed));
    }
    let decision = Seal {
        endpoint: endpoint.id,
        batch_id,
        decided: true,
        reports,
        created_at: SystemTime::now(),
    };
    state.storage.put_seal(decision.clone()).await?;
    tracing::info!(endpoint = %name, batch = %hex::encode(batch_id), count = decision.reports.len(), "seal decided");
    finish(state, live, decision).await
}

/// Drives a decided seal to completion: every server commits it (the followers and
/// this one at the same time), then the decision is dropped.
async fn finish(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    decision: Seal,
) -> Result<BatchInfo, ApiError> {
    let sealer = &state.sealer;
    let record = &live.endpoint.record;
    let count = decision.reports.len() as u64;
    let batch_hex = hex::encode(decision.batch_id);
    let commit = Commit {
        batch_id: batch_hex.clone(),
        config_hash: hex::encode(record.config_hash),
        reports: encode_ids(&decision.reports),
    };
    let broadcast = sealer.broadcast::<_, Committed>(&record.name, "commit", commit);
    if sealer.crash_before_commit {
        broadcast.await;
        tracing::error!("{FAULT_VAR}: aborting before the coordinator commits");
        std::process::abort();
    }
    let (answers, local) = tokio::join!(
        broadcast,
        commit_locally(state, live, decision.batch_id, decision.reports)
    );
    let info = local?;
    for (index, answer) in answers {
        match answer {
            Ok(committed) if committed.count == count => {}
            Ok(committed) => {
                tracing::error!(server = index, batch = %batch_hex, theirs = committed.count, ours = count, "a follower holds this batch with another count");
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "batch_mismatch",
                    format!(
                        "server {index} holds batch {batch_hex} with {} reports, this server decided {count}",
                        committed.count
                    ),
                ));
            }
            Err(e) => {
                return Err(ApiError::unavailable(
                    "seal_incomplete",
                    format!(
                        "batch {batch_hex} of {count} reports is decided but server {index} has not committed it ({}); it completes as soon as server {index} answers: retry this request, or wait for the automatic retry",
                        e.message
                    ),
                ));
            }
        }
    }
    state
        .storage
        .drop_seal(decision.endpoint, decision.batch_id)
        .await?;
    Ok(info)
}

/// Folds, releases and stores a batch on this server; a no-op if already stored.
async fn commit_locally(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    batch_id: [u8; 16],
    reports: Vec<SealReport>,
) -> Result<BatchInfo, ApiError> {
    let endpoint = live.endpoint.id;
    if let Some(batch) = state.storage.get_batch(endpoint, batch_id).await? {
        return Ok(batch.info);
    }
    let count = reports.len() as u64;
    // Folding is order-free; reading is fastest in storage order.
    let mut sorted = reports.clone();
    sorted.sort_unstable();
    let registry = &state.registry;
    let call_live = live.clone();
    let mut agg = registry
        .call("init", move || {
            call_live.plugin.init(&call_live.endpoint.record.config)
        })
        .await?;
    for chunk in sorted.chunks(FOLD_CHUNK) {
        let (data, ends) = state.storage.read_shares(chunk.to_vec()).await?;
        let call_live = live.clone();
        agg = registry
            .call("accumulate", move || {
                let config = &call_live.endpoint.record.config;
                let mut agg = agg;
                // Long shares: keep each call's input well inside the plugin's memory.
                for (data, ends) in fold_slices(&data, &ends, FOLD_BYTES) {
                    agg = call_live.plugin.accumulate(config, &agg, data, &ends)?;
                }
                Ok(agg)
            })
            .await?;
    }
    // Drawn once: the released share is stored and never computed again.
    let seed: [u8; 32] = rand::random();
    let index = state.sealer.index;
    let call_live = live.clone();
    let share = registry
        .call("release", move || {
            call_live
                .plugin
                .release(&call_live.endpoint.record.config, &agg, count, index, &seed)
        })
        .await?;
    let outcome = state
        .storage
        .commit_batch(
            endpoint,
            NewBatch {
                batch_id,
                share,
                sealed_at: SystemTime::now(),
            },
            reports,
        )
        .await?;
    tracing::info!(endpoint = %live.endpoint.record.name, batch = %hex::encode(batch_id), count, "batch committed");
    Ok(outcome.info())
}

/// Follower: reserves the proposed reports this server holds.
pub(super) async fn prepare(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    body: Prepare,
) -> Result<Prepared, ApiError> {
    follower_only(state)?;
    check_config(live, &body.config_hash)?;
    let batch_id = parse_batch_id(&body.batch_id)?;
    let proposal = decode_ids(&body.reports, state.sealer.max_batch)?;
    let endpoint = live.endpoint.id;
    let lock = state.sealer.lock(endpoint);
    let _sealing = lock.lock().await;
    // Sorted by id and searched, rather than hashed: a third of the memory for
    // a million reports.
    let mut held = state
        .storage
        .unbatched_reports(endpoint, usize::MAX)
        .await?;
    held.sort_unstable_by_key(|report| report.report_id);
    let mut bits = vec![0u8; proposal.len().div_ceil(8)];
    let mut reserved = Vec::new();
    for (i, id) in proposal.iter().enumerate() {
        if let Ok(at) = held.binary_search_by_key(id, |report| report.report_id) {
            bits[i / 8] |= 1 << (i % 8);
            reserved.push(held[at]);
        }
    }
    drop(held);
    let count = reserved.len() as u64;
    state
        .storage
        .put_seal(Seal {
            endpoint,
            batch_id,
            decided: false,
            reports: reserved,
            created_at: SystemTime::now(),
        })
        .await?;
    Ok(Prepared {
        held: BASE64.encode(bits),
        count,
    })
}

/// Follower: commits exactly the coordinator's S, reserved before.
pub(super) async fn commit(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    body: Commit,
) -> Result<Committed, ApiError> {
    follower_only(state)?;
    check_config(live, &body.config_hash)?;
    let batch_id = parse_batch_id(&body.batch_id)?;
    let ids = decode_ids(&body.reports, state.sealer.max_batch)?;
    let endpoint = live.endpoint.id;
    let lock = state.sealer.lock(endpoint);
    let _sealing = lock.lock().await;
    let committed = |info: BatchInfo| Committed {
        batch_id: hex::encode(info.batch_id),
        count: info.count,
    };
    if let Some(batch) = state.storage.get_batch(endpoint, batch_id).await? {
        return Ok(committed(batch.info));
    }
    let reservation = state
        .storage
        .pending_seal(endpoint)
        .await?
        .filter(|seal| seal.batch_id == batch_id)
        .ok_or_else(|| {
            ApiError::conflict(
                "unknown_seal",
                format!(
                    "this server holds no reservation for batch {}: it was aborted or replaced by a newer proposal",
                    body.batch_id
                ),
            )
        })?;
    let mut reserved = reservation.reports;
    reserved.sort_unstable_by_key(|report| report.report_id);
    let reports = ids
        .iter()
        .map(|id| {
            reserved
                .binary_search_by_key(id, |report| report.report_id)
                .map(|at| reserved[at])
                .map_err(|_| {
                    ApiError::conflict(
                        "seal_mismatch",
                        format!(
                            "report {} of the commit was not reserved here for batch {}",
                            hex::encode(id),
                            body.batch_id
                        ),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    drop(reserved);
    let needed = live.endpoint.record.min_batch.max(1);
    if (reports.len() as u64) < needed {
        return Err(too_small(reports.len() as u64, needed));
    }
    commit_locally(state, live, batch_id, reports)
        .await
        .map(committed)
}

/// Follower: forgets the reservation of an aborted seal.
pub(super) async fn abort(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    body: Abort,
) -> Result<Aborted, ApiError> {
    follower_only(state)?;
    let batch_id = parse_batch_id(&body.batch_id)?;
    let lock = state.sealer.lock(live.endpoint.id);
    let _sealing = lock.lock().await;
    let aborted = state.storage.drop_seal(live.endpoint.id, batch_id).await?;
    Ok(Aborted { aborted })
}

fn follower_only(state: &AppState) -> Result<(), ApiError> {
    if state.config.server.is_coordinator() {
        return Err(ApiError::conflict(
            "coordinator",
            "server 0 coordinates seals and takes no proposals",
        ));
    }
    Ok(())
}

/// Coordinator: retries the decided seals that did not complete, until shutdown.
pub(super) async fn retry_decided(state: Arc<AppState>) {
    loop {
        match state.storage.decided_seals().await {
            Ok(decided) => {
                for decision in decided {
                    let Some(live) = state.registry.endpoint_by_id(decision.endpoint) else {
                        continue;
                    };
                    let lock = state.sealer.lock(decision.endpoint);
                    let _sealing = lock.lock().await;
                    // Completed meanwhile by a request? A decision keeps its batch
                    // id until it is dropped, so the id tells it is still this one.
                    let pending = match state.storage.pending_seal(decision.endpoint).await {
                        Ok(Some(pending))
                            if pending.decided && pending.batch_id == decision.batch_id =>
                        {
                            pending
                        }
                        _ => continue,
                    };
                    match finish(&state, &live, pending).await {
                        Ok(info) => {
                            tracing::info!(endpoint = %live.endpoint.record.name, batch = %hex::encode(info.batch_id), "pending seal completed")
                        }
                        Err(e) => {
                            tracing::warn!(endpoint = %live.endpoint.record.name, error = %e, "pending seal still incomplete")
                        }
                    }
                }
            }
            Err(crate::storage::StorageError::Closed) => return,
            Err(e) => tracing::warn!(error = %e, "reading pending seals failed"),
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// Expires unbatched reports past the retention, until shutdown.
pub(super) async fn expire_reports(state: Arc<AppState>) {
    let retention = state.config.endpoints.report_retention();
    let every = (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        let Some(before) = SystemTime::now().checked_sub(retention) else {
            continue;
        };
        match state.storage.expire_reports(before).await {
            Ok(0) => {}
            Ok(expired) => tracing::info!(expired, "unbatched reports expired"),
            Err(crate::storage::StorageError::Closed) => return,
            Err(e) => tracing::warn!(error = %e, "expiring reports failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fold_slices;

    #[test]
    fn fold_slices_cut_at_share_boundaries() {
        let data: Vec<u8> = (0..10).collect();
        // Shares of 3, 3, 4 bytes.
        let ends = [3, 6, 10];
        let whole = fold_slices(&data, &ends, 100);
        assert_eq!(whole, vec![(&data[..], vec![3, 6, 10])]);
        let cut = fold_slices(&data, &ends, 6);
        assert_eq!(cut, vec![(&data[..6], vec![3, 6]), (&data[6..], vec![4])]);
        // A share longer than the limit still goes, alone.
        let alone = fold_slices(&data, &ends, 2);
        assert_eq!(
            alone,
            vec![
                (&data[..3], vec![3]),
                (&data[3..6], vec![3]),
                (&data[6..], vec![4])
            ]
        );
        assert!(fold_slices(&data, &[], 5).is_empty());
    }
}
