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
//! Any number of replicas of one server (`guardian serve` processes with the same
//! index over one PostgreSQL database) act as one: everything a seal carries from
//! one request to the next is in the database (the reservation or decision, the
//! seal numbers, a follower's verifier messages), so a follower's steps may reach
//! different replicas; one seal per endpoint runs at a time across them (the
//! endpoint's seal lease, beside the in-process lock), and the replica holding the
//! `driver` lease runs the background work ([`lease`]).
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
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::task::JoinSet;
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;
use super::registry::LiveEndpoint;
use crate::storage::EndpointId;

mod coordinator;
mod expiry;
mod fold;
mod follower;
mod lease;
mod schedule;
mod verify;

pub(super) use self::coordinator::{retry_decided, seal};
pub(super) use self::expiry::expire_reports;
pub(super) use self::follower::{abort, commit, prepare, recommit};
pub(super) use self::schedule::run as run_schedule;
pub(super) use self::verify::{
    Messages, Received, Verified, Verify, messages, stored_report, verify,
};

/// How often the coordinator retries the decided seals that did not complete.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// Environment variable naming a fault to inject, for the crash tests only: the
/// process aborts at that point of a seal.
///
/// - `crash_before_coordinator_commit`: the coordinator, after every follower
///   committed a seal and before it commits it itself;
/// - `crash_during_verification`: the coordinator, once the followers answered
///   the first chunk of a verification round;
/// - `crash_in_verify`: a follower, when asked for verifier shares;
/// - `crash_in_commit`: a follower, when a robust batch's commit arrives (after
///   its verifier messages).
pub const FAULT_VAR: &str = "GUARDIAN_FAULT";

/// A seal's state shared by the handlers: per-endpoint locks, the leases of this
/// replica and the peer client. Everything a seal needs across requests (the
/// reservation, the decision, seal numbers, a follower's verifier messages) is in
/// the database, so that replicas of one server over one database act as one.
pub(super) struct Sealer {
    /// Per endpoint, the lock serialising its seals in this process; across
    /// replicas, the endpoint's seal lease does ([`lease`]).
    locks: Mutex<HashMap<EndpointId, Arc<tokio::sync::Mutex<()>>>>,
    /// This process's id as a lease holder, drawn at start.
    holder: Arc<str>,
    /// How long a lease outlives a replica that stopped renewing it
    /// (`storage.lease_ttl_ms`).
    lease_ttl: Duration,
    /// Whether this replica holds the `driver` lease of the background work.
    driver: lease::Driver,
    client: reqwest::Client,
    /// Longest a peer call may take (`endpoints.peer_timeout_ms`).
    peer_timeout: Duration,
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
    /// `endpoints.min_batch_floor`: also enforced on endpoints created before it
    /// was raised.
    min_batch_floor: u64,
    /// The fault to inject ([`FAULT_VAR`]), if any.
    fault: Option<String>,
    /// Coordinator: what wakes the seal scheduler.
    wakeups: schedule::Wakeups,
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
    /// Robust endpoints: bit i is set when proposed report i failed
    /// verification (it goes into no batch); base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    rejected: Option<String>,
}

/// The query of `POST /peer/v1/endpoints/{name}/recommit`: a decided batch sent
/// by its report ids (the body: 16 bytes each, concatenated) to a follower that
/// answered its commit with `unknown_seal`.
#[derive(Debug, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct Recommit {
    /// The batch's id.
    #[param(pattern = "^[0-9a-fA-F]{32}$")]
    batch_id: String,
    /// The seal's number, as in its prepare.
    seal: u64,
    /// The endpoint's `config_hash` on the coordinator.
    #[param(pattern = "^[0-9a-fA-F]{64}$")]
    config_hash: String,
    /// How many report ids the body holds: the batch's count.
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
        // Peers over https trust what the issuer's key fetches trust (crate::tls).
        let roots = crate::tls::ExtraRoots::from_config(config.auth.ca_file.as_deref())?;
        let client = crate::tls::client_builder(&roots)
            .connect_timeout(Duration::from_secs(3))
            .timeout(config.endpoints.peer_timeout())
            // Idle connections are dropped well before a peer with the same
            // settings closes them (`limits.header_read_timeout_ms`), so a step is
            // rarely sent on a connection that is going away.
            .pool_idle_timeout(config.limits.header_read_timeout() / 2)
            .build()?;
        let identity = crate::auth::PeerIdentity::from_config(&config.server)?;
        tracing::info!(public_key = %identity.public_key(), "this server's peer key (server.peer_keys)");
        Ok(Sealer {
            locks: Mutex::new(HashMap::new()),
            holder: hex::encode(rand::random::<[u8; 16]>()).into(),
            lease_ttl: config.storage.lease_ttl(),
            driver: lease::Driver::default(),
            client,
            peer_timeout: config.endpoints.peer_timeout(),
            peers: config.server.peers.clone(),
            secret: crate::auth::peer::peer_secret(&config.auth)?,
            identity,
            index: config.server.index,
            max_batch: config.endpoints.max_batch_len(),
            distinct_users: config.endpoints.distinct_users && !config.auth.disabled,
            min_batch_floor: config.endpoints.min_batch_floor.max(2),
            fault: std::env::var(FAULT_VAR).ok(),
            wakeups: schedule::Wakeups::default(),
        })
    }

    /// Aborts the process if the fault injected for the crash tests is `point`.
    fn crash_at(&self, point: &str) {
        if self.fault.as_deref() == Some(point) {
            tracing::error!("{FAULT_VAR}: aborting at {point}");
            std::process::abort();
        }
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

    /// The fewest reports a batch of an endpoint with `min_batch` needs here: never
    /// below the operator's floor, whatever the endpoint says.
    fn needed(&self, min_batch: u64) -> u64 {
        min_batch.max(self.min_batch_floor)
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

    /// How many share servers there are.
    fn servers(&self) -> u32 {
        self.peers.len() as u32
    }

    fn followers(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.peers.len() as u32).filter(move |i| *i != self.index)
    }

    /// The coordinator's URL, for errors sent to clients that called a follower.
    pub(super) fn coordinator_url(&self) -> &str {
        self.peers.first().map_or("server 0", String::as_str)
    }

    /// Calls `step` of `endpoint` on follower `index`, signed by this server,
    /// waiting at most `endpoints.peer_timeout_ms` and never past `deadline`.
    /// Commits and aborts, idempotent, are sent once more on a fresh connection
    /// when the first attempt failed before any answer (e.g. a kept-alive
    /// connection the follower had just closed).
    async fn call<T: serde::de::DeserializeOwned>(
        self: Arc<Self>,
        endpoint: String,
        step: &'static str,
        index: u32,
        outgoing: Arc<Outgoing>,
        deadline: Instant,
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
                format!("server {index} ({url}) is unavailable: {why}"),
            )
        };
        let send = || {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut request = self
                .client
                .post(&url)
                .timeout(left.min(self.peer_timeout))
                .header(reqwest::header::CONTENT_TYPE, outgoing.content_type)
                .header(crate::auth::identity::SENDER_HEADER, self.index)
                .header(crate::auth::identity::SIGNATURE_HEADER, &signature)
                .body(outgoing.body.clone());
            if let Some(secret) = &self.secret {
                request = request.bearer_auth(secret);
            }
            (left, request.send())
        };
        let (left, sent) = send();
        if left.is_zero() {
            return Err(down("the seal ran out of time before this step".to_owned()));
        }
        let sent = match sent.await {
            Err(e)
                if step != "prepare" && (e.is_connect() || e.is_request()) && !e.is_timeout() =>
            {
                tracing::debug!(server = index, step, error = %e, "peer call failed before an answer; sending it once more");
                send().1.await
            }
            sent => sent,
        };
        let response = sent.map_err(|e| down(e.without_url().to_string()))?;
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

    /// Sends `outgoing` to `step` on every follower at once, waiting for none past
    /// `deadline`; answers in index order.
    async fn broadcast<T>(
        self: &Arc<Self>,
        endpoint: &str,
        step: &'static str,
        outgoing: Outgoing,
        deadline: Instant,
    ) -> Vec<(u32, Result<T, ApiError>)>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let outgoing = Arc::new(outgoing);
        let mut calls = JoinSet::new();
        for index in self.followers() {
            let call =
                self.clone()
                    .call(endpoint.to_owned(), step, index, outgoing.clone(), deadline);
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
            let deadline = Instant::now() + sealer.peer_timeout;
            for (index, answer) in sealer
                .broadcast::<Aborted>(&endpoint, "abort", abort, deadline)
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
        "bad_peer_credential"
        | "missing_token"
        | "missing_peer_signature"
        | "no_peer_keys"
        | "unknown_peer"
        | "bad_peer_signature" => (StatusCode::BAD_GATEWAY, "peer_credential_refused"),
        // The coordinator then sends the decision by report ids.
        "unknown_seal" => (StatusCode::BAD_GATEWAY, "peer_unknown_seal"),
        "verify_key_mismatch" => (StatusCode::CONFLICT, "verify_key_mismatch"),
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
