//! Sealing batches across servers (DESIGN.md section 6).
//!
//! Server 0 coordinates; every other server follows. For one endpoint, at most one
//! seal runs at a time on each server (a per-endpoint lock), and:
//!
//! 1. **Prepare.** The coordinator proposes its oldest unbatched report ids under a
//!    fresh batch id (the ids as a binary body, read by the follower as they
//!    arrive). Each follower checks the endpoint's `config_hash`, reserves the
//!    proposed reports it holds unbatched (replacing any older reservation, since
//!    only the coordinator proposes and it runs one seal at a time) and answers with
//!    a bitmap over the proposal.
//! 2. **Decide.** The coordinator intersects the bitmaps into S. Below `min_batch`,
//!    or if a follower failed, it aborts every reservation and nothing is sealed.
//!    Otherwise it persists the decision (S as a bitmap over the proposal, its own
//!    rows of S, the batch id) before telling anyone.
//! 3. **Commit.** Every server commits exactly S at once (idempotent by batch id);
//!    followers receive S as the bitmap and find their rows in their reservation.
//!    The coordinator drops the decision once every server answered. A decision
//!    found pending (after a crash, a timeout, a follower down) is driven to
//!    completion before any new seal of that endpoint, by the next request or by the
//!    background retry.
//!
//! Memory stays proportional to the proposal's ids and rows (24 bytes a report on
//! the coordinator, a reservation of 8 bytes a report on a follower plus its
//! unbatched ids while it matches), never to copies of them.
//!
//! Committing folds the shares of S with `accumulate` in chunks on the blocking
//! pool, runs `release` once with a fresh seed, and stores the released share, the
//! batch and the batched marks (deleting the shares) in one transaction. Every server
//! checks on its own: the config hash, `min_batch`, that each report of S is held
//! unbatched (so no report is ever in two batches) and the batch's count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use std::pin::Pin;

use axum::body::{Body, Bytes, HttpBody as _};
use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::ApiError;
use super::registry::LiveEndpoint;
use crate::storage::{BatchInfo, EndpointId, NewBatch, Seal};

/// Shares read and folded per `accumulate` call: bounds the memory a seal holds
/// (the chunk, and the plugin's copy of it) and lets other plugin calls interleave.
const FOLD_CHUNK: usize = 16_384;

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

/// The query of `POST /peer/v1/endpoints/{name}/prepare`. Its body is the proposed
/// report ids, 16 bytes each, concatenated (`application/octet-stream`): a million
/// ids are 16 MB on the wire and read as they arrive.
#[derive(Debug, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct Prepare {
    /// The batch's id.
    #[param(pattern = "^[0-9a-fA-F]{32}$")]
    batch_id: String,
    /// The endpoint's `config_hash` on the coordinator.
    #[param(pattern = "^[0-9a-fA-F]{64}$")]
    config_hash: String,
}

/// Which proposed reports a follower reserved.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = PeerPrepared)]
pub(super) struct Prepared {
    /// Bit i (least significant first in each byte) is set when this server holds
    /// and reserved proposed report i; base64.
    #[schema(format = Byte)]
    held: String,
    /// How many proposed reports it reserved.
    count: u64,
}

/// The coordinator's decision: commit exactly the agreed reports of the proposal.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = PeerCommit)]
pub(super) struct Commit {
    /// The batch's id.
    #[schema(pattern = "^[0-9a-fA-F]{32}$")]
    batch_id: String,
    /// The endpoint's `config_hash` on the coordinator.
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    config_hash: String,
    /// Bit i (least significant first in each byte) is set when proposed report i
    /// is in the batch; base64.
    #[schema(format = Byte)]
    agreed: String,
    /// How many bits are set: the batch's count.
    count: u64,
}

/// The batch as the follower stored it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = PeerCommitted)]
pub(super) struct Committed {
    /// The batch's id.
    #[schema(pattern = "^[0-9a-fA-F]{32}$")]
    batch_id: String,
    /// How many reports the batch folds here.
    count: u64,
}

/// Drop the reservation of this batch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = PeerAbort)]
pub(super) struct Abort {
    /// The batch's id.
    #[schema(pattern = "^[0-9a-fA-F]{32}$")]
    batch_id: String,
}

/// Whether anything was dropped.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = PeerAborted)]
pub(super) struct Aborted {
    /// Whether a reservation for this batch was dropped.
    aborted: bool,
}

/// A request to the followers, encoded once for all of them.
struct Outgoing {
    query: Vec<(&'static str, String)>,
    content_type: &'static str,
    body: Bytes,
}

impl Outgoing {
    fn json(body: &impl Serialize) -> Outgoing {
        Outgoing {
            query: Vec::new(),
            content_type: "application/json",
            body: serde_json::to_vec(body)
                .expect("peer messages serialise")
                .into(),
        }
    }
}

/// Bitmaps over a proposal: bit i is bit `i % 8` (least significant first) of
/// byte `i / 8`.
mod bits {
    /// `n` bits, all set.
    pub(super) fn all(n: usize) -> Vec<u8> {
        let mut bits = vec![0xff; n.div_ceil(8)];
        if let Some(last) = bits.last_mut()
            && !n.is_multiple_of(8)
        {
            *last = (1 << (n % 8)) - 1;
        }
        bits
    }

    pub(super) fn get(bits: &[u8], i: usize) -> bool {
        bits[i / 8] & (1 << (i % 8)) != 0
    }

    pub(super) fn set(bits: &mut Vec<u8>, i: usize) {
        if bits.len() <= i / 8 {
            bits.resize(i / 8 + 1, 0);
        }
        bits[i / 8] |= 1 << (i % 8);
    }

    pub(super) fn count(bits: &[u8]) -> u64 {
        bits.iter().map(|byte| u64::from(byte.count_ones())).sum()
    }
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
    async fn call<T: serde::de::DeserializeOwned>(
        client: reqwest::Client,
        url: String,
        secret: Option<String>,
        index: u32,
        outgoing: Arc<Outgoing>,
    ) -> Result<T, ApiError> {
        let down = |why: String| {
            ApiError::unavailable(
                "peer_unavailable",
                format!(
                    "server {index} ({url}) is unavailable: {why}; nothing was sealed, retry later"
                ),
            )
        };
        let mut request = client
            .post(&url)
            .query(&outgoing.query)
            .header(reqwest::header::CONTENT_TYPE, outgoing.content_type)
            .body(outgoing.body.clone());
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

    /// Sends `outgoing` to `step` on every follower at once; answers in index order.
    async fn broadcast<T>(
        &self,
        endpoint: &str,
        step: &str,
        outgoing: Outgoing,
    ) -> Vec<(u32, Result<T, ApiError>)>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let outgoing = Arc::new(outgoing);
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
                outgoing.clone(),
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
            let abort = Outgoing::json(&Abort {
                batch_id: hex::encode(batch_id),
            });
            for (index, answer) in sealer.broadcast::<Aborted>(&endpoint, "abort", abort).await {
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
    let mut ids = Vec::with_capacity(16 * proposal.len());
    for report in &proposal {
        ids.extend_from_slice(&report.report_id);
    }
    let prepare = Outgoing {
        query: vec![
            ("batch_id", hex::encode(batch_id)),
            ("config_hash", hex::encode(endpoint.record.config_hash)),
        ],
        content_type: "application/octet-stream",
        body: ids.into(),
    };
    let name = &endpoint.record.name;
    let mut agreed = bits::all(proposal.len());
    let mut failure = None;
    for (index, answer) in sealer.broadcast::<Prepared>(name, "prepare", prepare).await {
        let bitmap = answer.and_then(|prepared| {
            BASE64
                .decode(prepared.held)
                .ok()
                .filter(|held| held.len() == agreed.len())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "peer_refused",
                        format!("server {index} answered the proposal with a malformed bitmap"),
                    )
                })
        });
        match bitmap {
            Ok(held) => {
                for (agreed, held) in agreed.iter_mut().zip(held) {
                    *agreed &= held;
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
    let count = bits::count(&agreed);
    if count < needed {
        sealer.abort_all(name, batch_id);
        return Err(too_small(count, needed));
    }
    let mut rows = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for (position, report) in proposal.iter().enumerate() {
        if bits::get(&agreed, position) {
            rows.push(report.row);
        }
    }
    drop(proposal);
    let decision = Seal {
        endpoint: endpoint.id,
        batch_id,
        decided: true,
        positions: agreed,
        rows,
        created_at: SystemTime::now(),
    };
    state.storage.put_seal(&decision).await?;
    tracing::info!(endpoint = %name, batch = %hex::encode(batch_id), count, "seal decided");
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
    let Seal {
        endpoint,
        batch_id,
        positions,
        rows,
        ..
    } = decision;
    let count = rows.len() as u64;
    let batch_hex = hex::encode(batch_id);
    let commit = Outgoing::json(&Commit {
        batch_id: batch_hex.clone(),
        config_hash: hex::encode(record.config_hash),
        agreed: BASE64.encode(&positions),
        count,
    });
    drop(positions);
    let broadcast = sealer.broadcast::<Committed>(&record.name, "commit", commit);
    if sealer.crash_before_commit {
        broadcast.await;
        tracing::error!("{FAULT_VAR}: aborting before the coordinator commits");
        std::process::abort();
    }
    let (answers, local) = tokio::join!(broadcast, commit_locally(state, live, batch_id, rows));
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
    state.storage.drop_seal(endpoint, batch_id).await?;
    Ok(info)
}

/// Folds, releases and stores the batch of the reports at `rows` on this server; a
/// no-op if already stored.
async fn commit_locally(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    batch_id: [u8; 16],
    mut rows: Vec<i64>,
) -> Result<BatchInfo, ApiError> {
    let endpoint = live.endpoint.id;
    if let Some(batch) = state.storage.get_batch(endpoint, batch_id).await? {
        return Ok(batch.info);
    }
    let count = rows.len() as u64;
    // Folding is order-free; reading is fastest in storage order.
    rows.sort_unstable();
    let registry = &state.registry;
    let call_live = live.clone();
    let mut agg = registry
        .call("init", move || {
            call_live.plugin.init(&call_live.endpoint.record.config)
        })
        .await?;
    for chunk in rows.chunks(FOLD_CHUNK) {
        let (data, ends) = state.storage.read_shares(endpoint, chunk.to_vec()).await?;
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
            rows,
        )
        .await?;
    tracing::info!(endpoint = %live.endpoint.record.name, batch = %hex::encode(batch_id), count, "batch committed");
    Ok(outcome.info())
}

/// Follower: reserves the proposed reports this server holds; `body` is the
/// proposal's ids, read as they arrive.
pub(super) async fn prepare(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    query: Prepare,
    body: Body,
) -> Result<Prepared, ApiError> {
    follower_only(state)?;
    check_config(live, &query.config_hash)?;
    let batch_id = parse_batch_id(&query.batch_id)?;
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
    let max = state.sealer.max_batch;
    let mut positions = Vec::new();
    // At most every held report, allocated once.
    let mut rows = Vec::with_capacity(held.len().min(max));
    let mut proposed = 0;
    let mut visit = |id: &[u8]| {
        if proposed == max {
            return Err(ApiError::bad_request(
                "too_many_reports",
                format!("a seal takes at most {max} reports (endpoints.max_batch)"),
            ));
        }
        if let Ok(at) = held.binary_search_by(|report| report.report_id.as_slice().cmp(id)) {
            bits::set(&mut positions, proposed);
            rows.push(held[at].row);
        }
        proposed += 1;
        Ok(())
    };
    let mut stream = body.into_data_stream();
    let mut carry = Vec::with_capacity(16);
    while let Some(chunk) = std::future::poll_fn(|cx| Pin::new(&mut stream).poll_frame(cx)).await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request("bad_body", format!("reading the proposal: {e}")))?
            .into_data()
            .unwrap_or_default();
        let mut chunk = &chunk[..];
        if !carry.is_empty() {
            let take = (16 - carry.len()).min(chunk.len());
            carry.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if carry.len() == 16 {
                visit(&carry)?;
                carry.clear();
            }
        }
        let mut ids = chunk.chunks_exact(16);
        for id in &mut ids {
            visit(id)?;
        }
        carry.extend_from_slice(ids.remainder());
    }
    drop(held);
    if !carry.is_empty() {
        return Err(ApiError::bad_request(
            "bad_request",
            "the proposal must be whole 16-byte report ids",
        ));
    }
    positions.resize(proposed.div_ceil(8), 0);
    let count = rows.len() as u64;
    let reservation = Seal {
        endpoint,
        batch_id,
        decided: false,
        positions,
        rows,
        created_at: SystemTime::now(),
    };
    state.storage.put_seal(&reservation).await?;
    Ok(Prepared {
        held: BASE64.encode(&reservation.positions),
        count,
    })
}

/// Follower: commits exactly the agreed reports of the proposal, reserved before.
pub(super) async fn commit(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    body: Commit,
) -> Result<Committed, ApiError> {
    follower_only(state)?;
    check_config(live, &body.config_hash)?;
    let batch_id = parse_batch_id(&body.batch_id)?;
    let agreed = BASE64
        .decode(&body.agreed)
        .map_err(|_| ApiError::bad_request("bad_request", "agreed must be base64"))?;
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
    let mismatch = |why: String| {
        ApiError::conflict("seal_mismatch", format!("batch {}: {why}", body.batch_id))
    };
    if agreed.len() != reservation.positions.len() {
        return Err(mismatch(format!(
            "the decision covers {} proposed reports, the reservation here {}",
            agreed.len() * 8,
            reservation.positions.len() * 8
        )));
    }
    // The reserved rows are in proposal order: walk the held bits, keep the agreed.
    let mut reserved = reservation.rows.iter();
    let mut rows = Vec::with_capacity(reservation.rows.len());
    for (byte, (&agreed, &held)) in agreed.iter().zip(&reservation.positions).enumerate() {
        if agreed & !held != 0 {
            let bit = (agreed & !held).trailing_zeros() as usize;
            return Err(mismatch(format!(
                "proposed report {} is in the decision but was not reserved here",
                byte * 8 + bit
            )));
        }
        for bit in 0..8 {
            if held & (1 << bit) != 0 {
                let row = *reserved.next().ok_or_else(|| {
                    let corrupt = std::io::Error::other("fewer rows than reserved bits");
                    ApiError::internal("reading a reservation", &corrupt)
                })?;
                if agreed & (1 << bit) != 0 {
                    rows.push(row);
                }
            }
        }
    }
    drop(reservation);
    if rows.len() as u64 != body.count {
        return Err(mismatch(format!(
            "the decision says {} reports but sets {} bits",
            body.count,
            rows.len()
        )));
    }
    let needed = live.endpoint.record.min_batch.max(1);
    if (rows.len() as u64) < needed {
        return Err(too_small(rows.len() as u64, needed));
    }
    commit_locally(state, live, batch_id, rows)
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
