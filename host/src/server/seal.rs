//! Sealing batches across servers (DESIGN.md section 6).
//!
//! Server 0 coordinates; every other server follows. For one endpoint, at most one
//! seal runs at a time on each server (a per-endpoint lock), and:
//!
//! 1. **Prepare.** The coordinator numbers the seal (increasing per endpoint) and
//!    proposes its oldest unbatched report ids under a fresh batch id, a page of
//!    at most `max_batch` ids per call (a binary body, read by the follower as it
//!    arrives). Each follower checks the coordinator's signature, the endpoint's
//!    `config_hash` and the seal number (never older than the seal it holds or
//!    last saw: `stale_seal`), reserves the proposed reports it holds unbatched
//!    (the pages of one seal add up) and answers with a bitmap over the page.
//!    Pages go on until `max_batch` reports are agreed or the coordinator's
//!    unbatched reports are all proposed, so reports only it holds never block.
//! 2. **Decide.** The coordinator intersects the bitmaps into S. Below `min_batch`,
//!    below `min_batch` distinct users (with authentication on and
//!    `endpoints.distinct_users`), or if a follower failed, it aborts every
//!    reservation and nothing is sealed. Otherwise it persists the decision (S as a
//!    bitmap over the proposal, its own rows of S, the batch id, the seal number)
//!    before telling anyone.
//! 3. **Commit.** Every server commits exactly S at once (idempotent by batch id);
//!    followers receive S as the bitmap and find their rows in their reservation
//!    of that seal. The coordinator drops the decision once every server answered.
//!    A decision found pending (after a crash, a timeout, a follower down) is
//!    driven to completion before any new seal of that endpoint, by the next
//!    request or by the background retry.
//!
//! Every peer request is signed by its sender ([`crate::auth::identity`]); a
//! follower acts only on steps signed by the coordinator for it.
//!
//! Memory stays proportional to one page of ids and the agreed rows on the
//! coordinator (plus a bit per proposed report), and to its unbatched ids and its
//! reservation on a follower, never to copies of them.
//!
//! Committing folds the shares of S with `accumulate` in chunks on the blocking
//! pool, runs `release` once with a fresh seed, and stores the released share, the
//! batch and the batched marks (deleting the shares) in one transaction. Every server
//! checks on its own: the config hash, `min_batch` (and its distinct users), that
//! each report of S is held unbatched (so no report is ever in two batches) and
//! the batch's count.

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

use sha2::{Digest as _, Sha256};

use super::AppState;
use super::auth::Peer;
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

/// A seal's state shared by the handlers: per-endpoint locks, seal numbers and the
/// peer client.
pub(super) struct Sealer {
    locks: Mutex<HashMap<EndpointId, Arc<tokio::sync::Mutex<()>>>>,
    /// Per endpoint, the highest seal number used (coordinator) or seen in a
    /// prepare (follower): numbers only go up.
    seal_numbers: Mutex<HashMap<EndpointId, u64>>,
    client: reqwest::Client,
    /// Base URL of every server, by index.
    peers: Vec<String>,
    /// The transport credential presented to peers, if configured.
    secret: Option<String>,
    /// This server's key pair and its peers' public keys: every peer request is
    /// signed by its sender.
    pub(super) identity: crate::auth::PeerIdentity,
    index: u32,
    max_batch: usize,
    /// Whether a batch needs reports of `min_batch` distinct users (authentication
    /// on and `endpoints.distinct_users`).
    distinct_users: bool,
    crash_before_commit: bool,
}

/// Ids proposed per prepare call: `max_batch`, rounded down to whole bytes of the
/// bitmaps (at least 8), so that every page but the last starts a new byte.
fn page_len(max_batch: usize) -> usize {
    (max_batch - max_batch % 8).max(8)
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
    /// The coordinator's number of this seal, increasing per endpoint: a prepare of
    /// a lower number than the reservation held is refused (`stale_seal`).
    seal: u64,
    /// How many ids of this seal's proposal came in earlier pages (0 for the first):
    /// a proposal larger than `max_batch` comes in several prepare calls, whose
    /// reservations add up.
    #[serde(default)]
    offset: u64,
    /// The fewest distinct users the coordinator requires of the batch (0 when it
    /// does not count them); a follower that would require more refuses now rather
    /// than at commit.
    #[serde(default)]
    min_users: u64,
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
    /// The seal's number, as in its prepare.
    seal: u64,
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
    /// The seal's number, as in its prepare.
    seal: u64,
}

/// Whether anything was dropped.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = PeerAborted)]
pub(super) struct Aborted {
    /// Whether a reservation for this batch was dropped.
    aborted: bool,
}

/// A request to the followers, encoded (and its body hashed) once for all of them.
struct Outgoing {
    /// The query string, signed as sent.
    query: String,
    content_type: &'static str,
    body: Bytes,
    body_sha256: [u8; 32],
}

impl Outgoing {
    fn new(query: String, content_type: &'static str, body: Bytes) -> Outgoing {
        let body_sha256 = Sha256::digest(&body).into();
        Outgoing {
            query,
            content_type,
            body,
            body_sha256,
        }
    }

    fn json(body: &impl Serialize) -> Outgoing {
        let body = serde_json::to_vec(body).expect("peer messages serialise");
        Outgoing::new(String::new(), "application/json", body.into())
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
}

impl Sealer {
    pub(super) fn new(config: &crate::config::Config) -> anyhow::Result<Sealer> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(config.endpoints.peer_timeout())
            .build()?;
        let identity = crate::auth::PeerIdentity::from_config(&config.server)?;
        tracing::info!(public_key = %identity.public_key(), "this server's peer key (server.peer_keys)");
        if !identity.is_configured() {
            tracing::warn!(
                "server.peer_keys is not set: peer calls are refused and nothing can be sealed"
            );
        }
        Ok(Sealer {
            locks: Mutex::new(HashMap::new()),
            seal_numbers: Mutex::new(HashMap::new()),
            client,
            peers: config.server.peers.clone(),
            secret: crate::auth::peer::peer_secret(&config.auth)?,
            identity,
            index: config.server.index,
            max_batch: config.endpoints.max_batch_len(),
            distinct_users: config.endpoints.distinct_users && !config.auth.disabled,
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

    /// The coordinator's number for a new seal of `endpoint`: the time in
    /// microseconds, or one more than the last if the clock did not move on, so
    /// numbers keep increasing across restarts as long as the clock does.
    fn next_seal_number(&self, endpoint: EndpointId) -> u64 {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let mut numbers = self
            .seal_numbers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let last = numbers.entry(endpoint).or_default();
        *last = now.max(*last + 1);
        *last
    }

    /// Follower: the highest seal number of `endpoint` seen since start.
    fn seen_seal_number(&self, endpoint: EndpointId) -> u64 {
        self.seal_numbers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&endpoint)
            .copied()
            .unwrap_or(0)
    }

    /// Follower: remembers that seal `number` of `endpoint` was prepared.
    fn saw_seal_number(&self, endpoint: EndpointId, number: u64) {
        let mut numbers = self
            .seal_numbers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let seen = numbers.entry(endpoint).or_default();
        *seen = (*seen).max(number);
    }

    /// Whether batches need reports of distinct users here, so reports keep who
    /// posted them.
    pub(super) fn counts_users(&self) -> bool {
        self.distinct_users
    }

    /// The fewest distinct users a batch of an endpoint with `min_batch` needs on
    /// this server (0: not counted).
    fn min_users(&self, min_batch: u64) -> u64 {
        if self.distinct_users { min_batch } else { 0 }
    }

    fn followers(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.peers.len() as u32).filter(move |i| *i != self.index)
    }

    /// The coordinator's URL, for errors sent to clients that called a follower.
    pub(super) fn coordinator_url(&self) -> &str {
        self.peers.first().map_or("server 0", String::as_str)
    }

    /// Calls `step` of `endpoint` on follower `index`, signed by this server.
    async fn call<T: serde::de::DeserializeOwned>(
        self: Arc<Self>,
        endpoint: String,
        step: &'static str,
        index: u32,
        outgoing: Arc<Outgoing>,
    ) -> Result<T, ApiError> {
        let mut url = format!(
            "{}/peer/v1/endpoints/{endpoint}/{step}",
            self.peers[index as usize].trim_end_matches('/')
        );
        if !outgoing.query.is_empty() {
            url = format!("{url}?{}", outgoing.query);
        }
        let signature = self.identity.sign(&crate::auth::identity::PeerMessage {
            sender: self.index,
            receiver: index,
            endpoint: &endpoint,
            step,
            query: &outgoing.query,
            body_sha256: &outgoing.body_sha256,
        });
        let down = |why: String| {
            ApiError::unavailable(
                "peer_unavailable",
                format!(
                    "server {index} ({url}) is unavailable: {why}; nothing was sealed, retry later"
                ),
            )
        };
        let mut request = self
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, outgoing.content_type)
            .header(crate::auth::identity::SENDER_HEADER, self.index)
            .header(crate::auth::identity::SIGNATURE_HEADER, signature)
            .body(outgoing.body.clone());
        if let Some(secret) = &self.secret {
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
        self: &Arc<Self>,
        endpoint: &str,
        step: &'static str,
        outgoing: Outgoing,
    ) -> Vec<(u32, Result<T, ApiError>)>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let outgoing = Arc::new(outgoing);
        let mut calls = JoinSet::new();
        for index in self.followers() {
            let call = self
                .clone()
                .call(endpoint.to_owned(), step, index, outgoing.clone());
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
    fn abort_all(self: &Arc<Self>, endpoint: &str, batch_id: [u8; 16], seal: u64) {
        let sealer = self.clone();
        let endpoint = endpoint.to_owned();
        tokio::spawn(async move {
            let abort = Outgoing::json(&Abort {
                batch_id: hex::encode(batch_id),
                seal,
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
        "bad_peer_credential"
        | "missing_token"
        | "missing_peer_signature"
        | "no_peer_keys"
        | "unknown_peer"
        | "bad_peer_signature" => (StatusCode::BAD_GATEWAY, "peer_credential_refused"),
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

fn too_few_users(users: u64, needed: u64) -> ApiError {
    ApiError::conflict(
        "too_few_users",
        format!(
            "the reports held by every server come from only {users} distinct users; this endpoint releases batches of at least {needed} users' reports"
        ),
    )
    .with_detail("users", users)
    .with_detail("needed", needed)
}

/// Seals a batch of `live`'s endpoint; called on the coordinator.
///
/// If a decided seal of the endpoint is pending, completes it and answers with it
/// instead: a client retrying after a `seal_incomplete` gets its batch.
///
/// The proposal goes a page at a time (at most `max_batch` ids a page), oldest
/// first, until `max_batch` reports are agreed or this server's unbatched reports
/// are all proposed: reports that only this server holds, however many, never
/// keep the reports every server holds out of a batch.
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
    let min_users = sealer.min_users(needed);
    let batch_id: [u8; 16] = rand::random();
    let number = sealer.next_seal_number(endpoint.id);
    let name = &endpoint.record.name;
    let page = page_len(sealer.max_batch);
    // Bit i: proposed report i is agreed (over every page).
    let mut agreed = Vec::new();
    let mut rows = Vec::new();
    let (mut proposed, mut after_row) = (0usize, 0i64);
    loop {
        let proposal = state
            .storage
            .unbatched_reports(endpoint.id, after_row, page)
            .await?;
        let Some(last) = proposal.last() else { break };
        after_row = last.row;
        let mut ids = Vec::with_capacity(16 * proposal.len());
        for report in &proposal {
            ids.extend_from_slice(&report.report_id);
        }
        let query = format!(
            "batch_id={}&config_hash={}&seal={number}&offset={proposed}&min_users={min_users}",
            hex::encode(batch_id),
            hex::encode(endpoint.record.config_hash),
        );
        let prepare = Outgoing::new(query, "application/octet-stream", ids.into());
        let mut held_by_all = bits::all(proposal.len());
        let mut failure = None;
        for (index, answer) in sealer.broadcast::<Prepared>(name, "prepare", prepare).await {
            let bitmap = answer.and_then(|prepared| {
                BASE64
                    .decode(prepared.held)
                    .ok()
                    .filter(|held| held.len() == held_by_all.len())
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
                    for (all, held) in held_by_all.iter_mut().zip(held) {
                        *all &= held;
                    }
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(failure) = failure {
            sealer.abort_all(name, batch_id, number);
            return Err(failure);
        }
        for (position, report) in proposal.iter().enumerate() {
            if rows.len() < sealer.max_batch && bits::get(&held_by_all, position) {
                bits::set(&mut agreed, proposed + position);
                rows.push(report.row);
            }
        }
        proposed += proposal.len();
        if proposal.len() < page || rows.len() >= sealer.max_batch {
            break;
        }
    }
    agreed.resize(proposed.div_ceil(8), 0);
    let count = rows.len() as u64;
    if count < needed {
        if proposed > 0 {
            sealer.abort_all(name, batch_id, number);
        }
        return Err(too_small(count, needed));
    }
    if min_users > 0 {
        let users = state
            .storage
            .distinct_posters(endpoint.id, rows.clone(), min_users)
            .await?;
        if users < min_users {
            sealer.abort_all(name, batch_id, number);
            return Err(too_few_users(users, min_users));
        }
    }
    let decision = Seal {
        endpoint: endpoint.id,
        batch_id,
        seal_number: number,
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
        seal_number,
        positions,
        rows,
        ..
    } = decision;
    let count = rows.len() as u64;
    let batch_hex = hex::encode(batch_id);
    let commit = Outgoing::json(&Commit {
        batch_id: batch_hex.clone(),
        seal: seal_number,
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

/// Follower: reserves the proposed reports this server holds; `body` is one page
/// of the proposal's ids, read (and hashed for the signature) as they arrive.
/// Nothing is stored before the coordinator's signature over the whole request
/// has been checked.
pub(super) async fn prepare(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    peer: Peer,
    query: Prepare,
    body: Body,
) -> Result<Prepared, ApiError> {
    follower_only(state)?;
    let endpoint = live.endpoint.id;
    let name = &live.endpoint.record.name;
    let lock = state.sealer.lock(endpoint);
    let _sealing = lock.lock().await;
    // Sorted by id and searched, rather than hashed: a third of the memory for
    // a million reports.
    let mut held = state
        .storage
        .unbatched_reports(endpoint, 0, usize::MAX)
        .await?;
    held.sort_unstable_by_key(|report| report.report_id);
    let max = page_len(state.sealer.max_batch);
    let mut positions = Vec::new();
    // At most every held report, allocated once.
    let mut rows = Vec::with_capacity(held.len().min(max));
    let mut proposed = 0;
    let mut visit = |id: &[u8]| {
        if proposed == max {
            return Err(ApiError::bad_request(
                "too_many_reports",
                format!("a prepare takes at most {max} report ids (endpoints.max_batch)"),
            ));
        }
        if let Ok(at) = held.binary_search_by(|report| report.report_id.as_slice().cmp(id)) {
            bits::set(&mut positions, proposed);
            rows.push(held[at].row);
        }
        proposed += 1;
        Ok(())
    };
    let mut digest = Sha256::new();
    let mut stream = body.into_data_stream();
    let mut carry = Vec::with_capacity(16);
    while let Some(chunk) = std::future::poll_fn(|cx| Pin::new(&mut stream).poll_frame(cx)).await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request("bad_body", format!("reading the proposal: {e}")))?
            .into_data()
            .unwrap_or_default();
        digest.update(&chunk);
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
    peer.verify(state, name, "prepare", &digest.finalize().into())?;
    check_config(live, &query.config_hash)?;
    let batch_id = parse_batch_id(&query.batch_id)?;
    if !carry.is_empty() {
        return Err(ApiError::bad_request(
            "bad_request",
            "the proposal must be whole 16-byte report ids",
        ));
    }
    let ours = state
        .sealer
        .min_users(live.endpoint.record.min_batch.max(1));
    if query.min_users < ours {
        return Err(ApiError::conflict(
            "config_mismatch",
            format!(
                "this server requires batches of {ours} distinct users (endpoints.distinct_users) but the coordinator requires {}: the operators must agree on endpoints.distinct_users",
                query.min_users
            ),
        ));
    }
    positions.resize(proposed.div_ceil(8), 0);
    let count = rows.len() as u64;
    let page_bits = BASE64.encode(&positions);
    let reservation = match state.storage.pending_seal(endpoint).await? {
        // A later page of the seal reserved here: the reservation grows.
        Some(mut reserved)
            if query.offset > 0
                && reserved.batch_id == batch_id
                && reserved.seal_number == query.seal =>
        {
            if query.offset != reserved.positions.len() as u64 * 8 {
                return Err(ApiError::conflict(
                    "seal_mismatch",
                    format!(
                        "batch {}: this page starts at proposed report {}, the reservation here covers {}",
                        query.batch_id,
                        query.offset,
                        reserved.positions.len() * 8
                    ),
                ));
            }
            reserved.positions.extend_from_slice(&positions);
            reserved.rows.extend_from_slice(&rows);
            reserved
        }
        Some(reserved) if reserved.seal_number >= query.seal => {
            return Err(stale_seal(&query, reserved.seal_number));
        }
        _ if query.offset > 0 => {
            return Err(ApiError::conflict(
                "unknown_seal",
                format!(
                    "this server holds no reservation for the earlier pages of batch {}",
                    query.batch_id
                ),
            ));
        }
        _ if state.sealer.seen_seal_number(endpoint) >= query.seal => {
            return Err(stale_seal(&query, state.sealer.seen_seal_number(endpoint)));
        }
        _ => Seal {
            endpoint,
            batch_id,
            seal_number: query.seal,
            decided: false,
            positions,
            rows,
            created_at: SystemTime::now(),
        },
    };
    state.storage.put_seal(&reservation).await?;
    state.sealer.saw_seal_number(endpoint, query.seal);
    Ok(Prepared {
        held: page_bits,
        count,
    })
}

/// A prepare older than (or as old as) the seal this follower already took part in.
fn stale_seal(query: &Prepare, newer: u64) -> ApiError {
    ApiError::conflict(
        "stale_seal",
        format!(
            "seal {} (batch {}) is not newer than seal {newer} seen here: a late or replayed prepare never replaces a newer reservation",
            query.seal, query.batch_id
        ),
    )
}

/// Follower: commits exactly the agreed reports of the proposal, reserved before.
pub(super) async fn commit(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    peer: Peer,
    bytes: Bytes,
) -> Result<Committed, ApiError> {
    follower_only(state)?;
    peer.verify(
        state,
        &live.endpoint.record.name,
        "commit",
        &Sha256::digest(&bytes).into(),
    )?;
    let body: Commit = super::extract::parse_json(&bytes)?;
    drop(bytes);
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
        .filter(|seal| seal.batch_id == batch_id && seal.seal_number == body.seal)
        .ok_or_else(|| {
            ApiError::conflict(
                "unknown_seal",
                format!(
                    "this server holds no reservation for batch {} of seal {}: it was aborted or replaced by a newer proposal",
                    body.batch_id, body.seal
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
    let min_users = state.sealer.min_users(needed);
    if min_users > 0 {
        let users = state
            .storage
            .distinct_posters(endpoint, rows.clone(), min_users)
            .await?;
        if users < min_users {
            return Err(too_few_users(users, min_users));
        }
    }
    commit_locally(state, live, batch_id, rows)
        .await
        .map(committed)
}

/// Follower: forgets the reservation of an aborted seal (only that seal's).
pub(super) async fn abort(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    peer: Peer,
    bytes: Bytes,
) -> Result<Aborted, ApiError> {
    follower_only(state)?;
    peer.verify(
        state,
        &live.endpoint.record.name,
        "abort",
        &Sha256::digest(&bytes).into(),
    )?;
    let body: Abort = super::extract::parse_json(&bytes)?;
    let batch_id = parse_batch_id(&body.batch_id)?;
    let endpoint = live.endpoint.id;
    let lock = state.sealer.lock(endpoint);
    let _sealing = lock.lock().await;
    let ours = state
        .storage
        .pending_seal(endpoint)
        .await?
        .is_some_and(|seal| seal.batch_id == batch_id && seal.seal_number == body.seal);
    let aborted = ours && state.storage.drop_seal(endpoint, batch_id).await?;
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

/// Expires unbatched reports past the retention, until shutdown: one endpoint at
/// a time under its seal lock, so that a proposal being made or answered is never
/// expired under a seal (and a seal in progress keeps its reports).
pub(super) async fn expire_reports(state: Arc<AppState>) {
    let retention = state.config.endpoints.report_retention();
    let every = (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        let Some(before) = SystemTime::now().checked_sub(retention) else {
            continue;
        };
        for live in state.registry.endpoints() {
            let endpoint = live.endpoint.id;
            let lock = state.sealer.lock(endpoint);
            let _sealing = lock.lock().await;
            match state.storage.expire_reports(endpoint, before).await {
                Ok(0) => {}
                Ok(expired) => {
                    tracing::info!(endpoint = %live.endpoint.record.name, expired, "unbatched reports expired");
                }
                Err(crate::storage::StorageError::Closed) => return,
                Err(e) => tracing::warn!(error = %e, "expiring reports failed"),
            }
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
