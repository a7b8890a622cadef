//! The verification round of a robust endpoint's seal (plugins of contract
//! 0.2.0): the servers check every agreed report's validity proof together
//! before anything is folded.
//!
//! Between the intersection and the decision, the coordinator asks every follower
//! for its verifier shares of the agreed reports, a chunk at a time (`verify`),
//! computes its own at the same time, and runs the plugin's `combine` on each
//! report whose every server produced a verifier share from the same public
//! share (compared by SHA-256). A report whose proof fails is rejected: it goes
//! into no batch, on any server. The decision keeps the verifier message of
//! each valid report; before the commit the coordinator sends them to every
//! follower (`messages`, held in the follower's database until the commit, so
//! that a commit reaching another replica of the follower finds them; sent again
//! when a commit finds them missing), and each server folds the output shares `verify-finish` makes of
//! its shares with them.
//!
//! Nothing of the round is stored before the decision but the endpoint's
//! verification key: a crash anywhere in it leaves reservations that the next
//! seal replaces, as a crash during the proposal does.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use guardian_sdk::raw::{Batch, Started};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::follower::{follower_only, reserved_rows, reserved_seal};
use super::{Outgoing, bits, check_config, parse_batch_id};
use crate::runtime::CallError;
use crate::server::AppState;
use crate::server::auth::Peer;
use crate::server::error::ApiError;
use crate::server::registry::LiveEndpoint;
use crate::storage::{EndpointId, Verification};

/// Agreed reports per `verify` call.
const VERIFY_CHUNK: usize = 16_384;

/// Most reports per plugin call.
const PLUGIN_SLICE: usize = 1_024;

/// Most share bytes per plugin call: with [`PLUGIN_SLICE`], keeps each call's
/// input, output and time well inside the plugin's limits however long the
/// reports are (a Prio3 histogram of a thousand buckets has 16 KB shares).
const SLICE_BYTES: usize = 1 << 20;

/// Cuts reports `0..n` (of the given share bytes each) into ranges of at most
/// [`PLUGIN_SLICE`] reports and [`SLICE_BYTES`] bytes (a longer report makes a
/// range of its own).
fn slices(sizes: impl Iterator<Item = usize>) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut bytes, mut end) = (0, 0, 0);
    for (i, size) in sizes.enumerate() {
        if i > start && (i - start == PLUGIN_SLICE || bytes + size > SLICE_BYTES) {
            ranges.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
        end = i + 1;
    }
    if end > start {
        ranges.push(start..end);
    }
    ranges
}

/// Most message bytes per `messages` call (well under the peer body limit).
const MESSAGES_BYTES: usize = 1 << 20;

/// A report's verifier share marked missing in a [`Verified`] answer.
const INVALID: u32 = u32::MAX;

/// Body of `POST /peer/v1/endpoints/{name}/verify`: compute this server's
/// verifier shares of agreed reports `from..from + len`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = PeerVerify)]
pub(in crate::server) struct Verify {
    /// The batch's id, as in its prepare.
    #[schema(pattern = "^[0-9a-fA-F]{32}$")]
    batch_id: String,
    /// The seal's number, as in its prepare.
    seal: u64,
    /// The endpoint's `config_hash` on the coordinator.
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    config_hash: String,
    /// The endpoint's verification key (32 bytes, base64): stored by the follower
    /// the first time, refused if it ever differs (`verify_key_mismatch`).
    #[schema(format = Byte)]
    key: String,
    /// Bit i is set when proposed report i is held by every server; base64.
    #[schema(format = Byte)]
    agreed: String,
    /// The first agreed report of this chunk (counting agreed reports only).
    from: u64,
    /// How many agreed reports this chunk has.
    len: u64,
}

/// A follower's verifier shares of a chunk.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = PeerVerified)]
pub(in crate::server) struct Verified {
    /// Per report, a little-endian u32 length then the verifier share (length
    /// 2^32 - 1 and no bytes: the share or public share does not decode); base64.
    #[schema(format = Byte)]
    shares: String,
    /// Per report, the SHA-256 of the public share this server holds; base64.
    #[schema(format = Byte)]
    public_digests: String,
}

/// The query of `POST /peer/v1/endpoints/{name}/messages`. The body is verifier
/// messages of the decided batch, a little-endian u32 length then the bytes each.
#[derive(Debug, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(in crate::server) struct Messages {
    /// The batch's id.
    #[param(pattern = "^[0-9a-fA-F]{32}$")]
    batch_id: String,
    /// The seal's number, as in its prepare.
    seal: u64,
    /// How many messages of the batch came in earlier calls (0: the first).
    from: u64,
}

/// How many messages of the batch the follower holds.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = PeerMessagesReceived)]
pub(in crate::server) struct Received {
    /// Messages held for the batch, this call's included.
    received: u64,
}

/// What one server computed for a chunk of reports.
struct Shares {
    /// Its copy of each report's public share.
    public: Batch,
    /// Its verifier share of each report; `None` when the report cannot be valid.
    shares: Vec<Option<Vec<u8>>>,
    /// SHA-256 of each public share.
    digests: Vec<[u8; 32]>,
}

impl Shares {
    fn encode(&self) -> Verified {
        let mut shares = Vec::new();
        for share in &self.shares {
            match share {
                Some(share) => {
                    shares.extend_from_slice(&(share.len() as u32).to_le_bytes());
                    shares.extend_from_slice(share);
                }
                None => shares.extend_from_slice(&INVALID.to_le_bytes()),
            }
        }
        Verified {
            shares: BASE64.encode(shares),
            public_digests: BASE64.encode(self.digests.concat()),
        }
    }

    /// Follower `index`'s answer for a chunk of `len` reports.
    fn decode(index: u32, answer: Verified, len: usize) -> Result<Shares, ApiError> {
        let malformed = |why: &str| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "peer_refused",
                format!("server {index} answered the verification with {why}"),
            )
        };
        let bytes = BASE64
            .decode(answer.shares)
            .map_err(|_| malformed("shares that are not base64"))?;
        let digests = BASE64
            .decode(answer.public_digests)
            .map_err(|_| malformed("digests that are not base64"))?;
        if digests.len() != 32 * len {
            return Err(malformed("the wrong number of digests"));
        }
        let mut shares = Vec::with_capacity(len);
        let mut rest = &bytes[..];
        while let Some((length, tail)) = rest.split_first_chunk::<4>() {
            let length = u32::from_le_bytes(*length);
            if length == INVALID {
                shares.push(None);
                rest = tail;
                continue;
            }
            let (share, tail) = tail
                .split_at_checked(length as usize)
                .ok_or_else(|| malformed("a truncated share"))?;
            shares.push(Some(share.to_vec()));
            rest = tail;
        }
        if !rest.is_empty() || shares.len() != len {
            return Err(malformed("the wrong number of shares"));
        }
        Ok(Shares {
            public: Batch::default(),
            shares,
            digests: digests
                .chunks_exact(32)
                .map(|d| d.try_into().expect("32 bytes"))
                .collect(),
        })
    }
}

/// What the round decided about the agreed reports.
pub(super) struct Verdict {
    /// Bit i: proposed report i is valid (and goes into the batch).
    pub(super) positions: Vec<u8>,
    /// This server's rows of the valid reports, in proposal order.
    pub(super) rows: Vec<i64>,
    /// The rejected reports and the valid reports' messages.
    pub(super) verification: Verification,
}

/// A robust report as stored: a little-endian u32 length, the public share, then
/// this server's share. Identical retries compare equal as a whole.
pub(in crate::server) fn stored_report(public_share: &[u8], share: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(4 + public_share.len() + share.len());
    stored.extend_from_slice(&(public_share.len() as u32).to_le_bytes());
    stored.extend_from_slice(public_share);
    stored.extend_from_slice(share);
    stored
}

/// The public share and the share of a stored robust report.
fn split_report(stored: &[u8]) -> Option<(&[u8], &[u8])> {
    let (length, rest) = stored.split_first_chunk::<4>()?;
    rest.split_at_checked(u32::from_le_bytes(*length) as usize)
}

/// The reports at `rows` of an endpoint, in the order given: ids, public shares
/// and shares. Read in storage order, which the rows of a follower's reservation
/// are not.
async fn read_reports(
    state: &AppState,
    endpoint: EndpointId,
    rows: &[i64],
) -> Result<(Vec<u8>, Batch, Batch), ApiError> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_unstable_by_key(|&i| rows[i]);
    let sorted: Vec<i64> = order.iter().map(|&i| rows[i]).collect();
    let ids = state.storage.report_ids(endpoint, sorted.clone()).await?;
    let (data, ends) = state.storage.read_shares(endpoint, sorted).await?;
    let stored = Batch { data, ends };
    let stored = stored
        .items()
        .map_err(|e| ApiError::internal("reading reports", &std::io::Error::other(e.message())))?;
    let mut at = vec![0; rows.len()];
    for (sorted_at, &i) in order.iter().enumerate() {
        at[i] = sorted_at;
    }
    let (mut out_ids, mut public, mut shares) = (
        Vec::with_capacity(16 * rows.len()),
        Batch::default(),
        Batch::default(),
    );
    for &k in &at {
        out_ids.extend_from_slice(&ids[k]);
        let (p, s) = split_report(stored[k]).ok_or_else(|| {
            ApiError::internal(
                "reading reports",
                &std::io::Error::other("a robust report without its public share"),
            )
        })?;
        public.push(p);
        shares.push(s);
    }
    Ok((out_ids, public, shares))
}

/// This server's verifier shares of the reports at `rows`.
async fn verifier_shares(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    key: [u8; 32],
    rows: &[i64],
) -> Result<Shares, ApiError> {
    let (ids, public, shares) = read_reports(state, live.endpoint.id, rows).await?;
    let (servers, index) = (state.sealer.servers(), state.sealer.index);
    let call_live = live.clone();
    state
        .registry
        .call("verify_init", move || {
            let (publics, inputs) = (items(&public), items(&shares));
            let mut out = Shares {
                shares: Vec::with_capacity(publics.len()),
                digests: publics.iter().map(|p| Sha256::digest(p).into()).collect(),
                public: Batch::default(),
            };
            let reports = (&ids[..], &publics[..], &inputs[..]);
            start_in_slices(&call_live, &key, (servers, index), reports, |_, started| {
                out.shares.extend(started.into_iter().map(|s| match s {
                    Started::Ready { verifier_share, .. } => Some(verifier_share),
                    Started::Invalid(_) => None,
                }));
                Ok(())
            })?;
            out.public = public;
            Ok(out)
        })
        .await
}

fn items(batch: &Batch) -> Vec<&[u8]> {
    batch.items().expect("packed by this server")
}

/// `verify-init` of `reports` (ids, public shares, shares), cut into
/// [`slices`]: `each` is given every slice's range and what the plugin made of
/// it.
fn start_in_slices(
    live: &LiveEndpoint,
    key: &[u8; 32],
    (servers, index): (u32, u32),
    (ids, publics, inputs): (&[u8], &[&[u8]], &[&[u8]]),
    mut each: impl FnMut(Range<usize>, Vec<Started>) -> Result<(), CallError>,
) -> Result<(), CallError> {
    let config = &live.endpoint.record.config;
    let sizes = publics.iter().zip(inputs).map(|(p, s)| p.len() + s.len());
    for Range { start, end } in slices(sizes) {
        let started = live.plugin.verify_init(
            config,
            key,
            servers,
            index,
            &ids[16 * start..16 * end],
            &Batch::pack(&publics[start..end]),
            &Batch::pack(&inputs[start..end]),
        )?;
        each(start..end, started)?;
    }
    Ok(())
}

/// Coordinator: the verification round over the agreed reports (`agreed`, a
/// bitmap over the proposal; `rows`, this server's rows of them in proposal
/// order).
pub(super) async fn round(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    (batch_id, seal): ([u8; 16], u64),
    agreed: &[u8],
    rows: &[i64],
    deadline: Instant,
) -> Result<Verdict, ApiError> {
    let endpoint = &live.endpoint;
    let key = state
        .storage
        .verify_key(endpoint.id, Some(rand::random()))
        .await?
        .expect("a key was proposed");
    let positions: Vec<usize> = (0..agreed.len() * 8)
        .filter(|&i| bits::get(agreed, i))
        .collect();
    let agreed_b64 = BASE64.encode(agreed);
    let mut verdict = Verdict {
        positions: Vec::new(),
        rows: Vec::with_capacity(rows.len()),
        verification: Verification::default(),
    };
    for (c, chunk) in rows.chunks(VERIFY_CHUNK).enumerate() {
        let from = c * VERIFY_CHUNK;
        let request = Outgoing::json(&Verify {
            batch_id: hex::encode(batch_id),
            seal,
            config_hash: hex::encode(endpoint.record.config_hash),
            key: BASE64.encode(key),
            agreed: agreed_b64.clone(),
            from: from as u64,
            len: chunk.len() as u64,
        });
        let (answers, ours) = tokio::join!(
            state
                .sealer
                .broadcast::<Verified>(&endpoint.record.name, "verify", request, deadline),
            verifier_shares(state, live, key, chunk),
        );
        let ours = ours?;
        state.sealer.crash_at("crash_during_verification");
        let mut theirs = Vec::with_capacity(answers.len());
        for (index, answer) in answers {
            theirs.push(Shares::decode(index, answer?, chunk.len())?);
        }
        let outcomes = combine(state, live, ours, theirs).await?;
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let position = positions[from + i];
            match outcome {
                Some(message) => {
                    bits::set(&mut verdict.positions, position);
                    verdict.rows.push(chunk[i]);
                    verdict.verification.messages.push(&message);
                }
                None => {
                    bits::set(&mut verdict.verification.rejected_positions, position);
                    verdict.verification.rejected_rows.push(chunk[i]);
                }
            }
        }
    }
    verdict.positions.resize(agreed.len(), 0);
    verdict
        .verification
        .rejected_positions
        .resize(agreed.len(), 0);
    let rejected = verdict.verification.rejected_rows.len();
    if rejected > 0 {
        state
            .metrics
            .verification_rejected(&endpoint.record.name, rejected as u64);
        tracing::info!(endpoint = %endpoint.record.name, batch = %hex::encode(batch_id), rejected, "reports failed verification");
    }
    Ok(verdict)
}

/// Per report of a chunk, its verifier message, or `None` when it is rejected: a
/// server could not start it, the servers hold different public shares, or the
/// plugin's `combine` finds the proof invalid.
async fn combine(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    ours: Shares,
    theirs: Vec<Shares>,
) -> Result<Vec<Option<Vec<u8>>>, ApiError> {
    let len = ours.shares.len();
    let candidates: Vec<usize> = (0..len)
        .filter(|&i| {
            ours.shares[i].is_some()
                && theirs
                    .iter()
                    .all(|t| t.shares[i].is_some() && t.digests[i] == ours.digests[i])
        })
        .collect();
    let call_live = live.clone();
    state
        .registry
        .call("combine", move || {
            let config = &call_live.endpoint.record.config;
            let publics = items(&ours.public);
            let mut outcomes = vec![None; len];
            let sizes = candidates.iter().map(|&i| {
                let shares = std::iter::once(&ours).chain(&theirs);
                publics[i].len()
                    + shares
                        .map(|server| server.shares[i].as_ref().map_or(0, Vec::len))
                        .sum::<usize>()
            });
            for range in slices(sizes) {
                let slice = &candidates[range];
                let public = Batch::pack(slice.iter().map(|&i| publics[i]));
                let by_server: Vec<Batch> = std::iter::once(&ours)
                    .chain(&theirs)
                    .map(|server| {
                        Batch::pack(
                            slice
                                .iter()
                                .map(|&i| server.shares[i].as_deref().expect("a candidate")),
                        )
                    })
                    .collect();
                // The runtime refuses an answer of another length.
                let combined = call_live.plugin.combine(config, &public, &by_server)?;
                for (&i, outcome) in slice.iter().zip(combined) {
                    outcomes[i] = outcome.ok();
                }
            }
            Ok(outcomes)
        })
        .await
}

/// Follower: this server's verifier shares of a chunk of the agreed reports of
/// the seal it reserved for.
pub(in crate::server) async fn verify(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    peer: Peer,
    bytes: Bytes,
) -> Result<Verified, ApiError> {
    follower_only(state)?;
    state.sealer.crash_at("crash_in_verify");
    let name = &live.endpoint.record.name;
    peer.verify(state, name, "verify", &Sha256::digest(&bytes).into())?;
    let body: Verify = crate::server::extract::parse_json(&bytes)?;
    drop(bytes);
    check_config(live, &body.config_hash)?;
    not_robust(live)?;
    let batch_id = parse_batch_id(&body.batch_id)?;
    let key: [u8; 32] = BASE64
        .decode(&body.key)
        .ok()
        .and_then(|key| key.try_into().ok())
        .ok_or_else(|| ApiError::bad_request("bad_request", "key must be 32 bytes in base64"))?;
    let agreed = BASE64
        .decode(&body.agreed)
        .map_err(|_| ApiError::bad_request("bad_request", "agreed must be base64"))?;
    let endpoint = live.endpoint.id;
    let lock = state.sealer.lock(endpoint);
    let _sealing = lock.lock().await;
    let reservation = reserved_seal(state, endpoint, batch_id, body.seal, &body.batch_id).await?;
    let rows = reserved_rows(&agreed, &reservation, &body.batch_id)?;
    drop(reservation);
    let chunk = usize::try_from(body.from)
        .ok()
        .zip(usize::try_from(body.len).ok())
        .and_then(|(from, len)| rows.get(from..from.checked_add(len)?))
        .ok_or_else(|| {
            ApiError::bad_request(
                "bad_request",
                format!(
                    "reports {}..+{} are not within the {} agreed",
                    body.from,
                    body.len,
                    rows.len()
                ),
            )
        })?;
    let stored = state.storage.verify_key(endpoint, Some(key)).await?;
    if stored != Some(key) {
        return Err(ApiError::conflict(
            "verify_key_mismatch",
            format!(
                "endpoint {name:?} has another verification key here: the key is set once, by the coordinator's first verification, and never changes"
            ),
        ));
    }
    Ok(verifier_shares(state, live, key, chunk).await?.encode())
}

fn not_robust(live: &LiveEndpoint) -> Result<(), ApiError> {
    if !live.plugin.robust() {
        return Err(ApiError::conflict(
            "not_robust",
            format!(
                "endpoint {:?} runs a plugin without verification (guardian:plugin@0.1.0)",
                live.endpoint.record.name
            ),
        ));
    }
    Ok(())
}

/// Follower: holds a part of the verifier messages of a decided batch until its
/// commit.
pub(in crate::server) async fn messages(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    peer: Peer,
    query: Messages,
    bytes: Bytes,
) -> Result<Received, ApiError> {
    follower_only(state)?;
    peer.verify(
        state,
        &live.endpoint.record.name,
        "messages",
        &Sha256::digest(&bytes).into(),
    )?;
    not_robust(live)?;
    let batch_id = parse_batch_id(&query.batch_id)?;
    let part = decode_messages(&bytes)
        .ok_or_else(|| ApiError::bad_request("bad_body", "a truncated message"))?;
    let endpoint = live.endpoint.id;
    let lock = state.sealer.lock(endpoint);
    let _sealing = lock.lock().await;
    if state
        .storage
        .committed_batch(endpoint, batch_id)
        .await?
        .is_some()
    {
        // Committed already (the coordinator missed the answer): nothing to hold.
        return Ok(Received {
            received: query.from + part.len() as u64,
        });
    }
    reserved_seal(state, endpoint, batch_id, query.seal, &query.batch_id).await?;
    let held = state
        .storage
        .hold_messages(
            endpoint,
            (batch_id, query.seal),
            query.from,
            part.len() as u64,
            bytes.to_vec(),
        )
        .await?;
    match held {
        Ok(received) => Ok(Received { received }),
        Err(held) => Err(ApiError::conflict(
            "messages_missing",
            format!(
                "batch {}: these messages start at {}, but this server holds {held} of them; send them again from the first",
                query.batch_id, query.from,
            ),
        )),
    }
}

/// Messages as a `messages` body carries them (a little-endian u32 length, then
/// the bytes, each), or `None` when one is truncated.
fn decode_messages(bytes: &[u8]) -> Option<Batch> {
    let mut messages = Batch::default();
    let mut rest = bytes;
    while let Some((length, tail)) = rest.split_first_chunk::<4>() {
        let (message, tail) = tail.split_at_checked(u32::from_le_bytes(*length) as usize)?;
        messages.push(message);
        rest = tail;
    }
    rest.is_empty().then_some(messages)
}

/// Follower: the verifier messages held for batch `batch_id` of seal `seal`, if
/// all `count` of them came (to this replica or another of this server).
pub(super) async fn held_messages(
    state: &AppState,
    endpoint: EndpointId,
    (batch_id, seal): ([u8; 16], u64),
    count: u64,
) -> Result<Batch, ApiError> {
    let missing = || {
        ApiError::conflict(
            "messages_missing",
            format!(
                "this server does not hold the {count} verifier messages of batch {} (they were not sent, or replaced by another batch's): send them, then the commit",
                hex::encode(batch_id)
            ),
        )
    };
    let (held, parts) = state
        .storage
        .held_messages(endpoint, (batch_id, seal))
        .await?;
    if held != count {
        return Err(missing());
    }
    let mut messages = Batch::default();
    for part in parts {
        let part = decode_messages(&part).ok_or_else(missing)?;
        for message in part.items().map_err(|_| missing())? {
            messages.push(message);
        }
    }
    if messages.len() as u64 != count {
        return Err(missing());
    }
    Ok(messages)
}

/// Follower: forgets the messages held for `endpoint`'s seal once it is
/// committed or aborted (left over, they are replaced by the next batch's).
pub(super) async fn drop_messages(state: &AppState, live: &LiveEndpoint) {
    if !live.plugin.robust() {
        return;
    }
    if let Err(e) = state.storage.drop_held_messages(live.endpoint.id).await {
        tracing::warn!(endpoint = %live.endpoint.record.name, error = %e, "forgetting held verifier messages failed; the next batch's replace them");
    }
}

/// Coordinator: sends the verifier messages of a decided batch to every
/// follower, in parts; the followers that failed, with why.
pub(super) async fn send_messages(
    state: &Arc<AppState>,
    live: &LiveEndpoint,
    (batch_id, seal): ([u8; 16], u64),
    messages: &Batch,
    deadline: Instant,
) -> Vec<(u32, ApiError)> {
    let name = &live.endpoint.record.name;
    let mut failed: Vec<(u32, ApiError)> = Vec::new();
    let items = items(messages);
    let mut from = 0usize;
    while from < items.len() || from == 0 {
        let mut body = Vec::new();
        let mut to = from;
        while to < items.len()
            && (body.is_empty() || body.len() + 4 + items[to].len() <= MESSAGES_BYTES)
        {
            body.extend_from_slice(&(items[to].len() as u32).to_le_bytes());
            body.extend_from_slice(items[to]);
            to += 1;
        }
        let query = format!("batch_id={}&seal={seal}&from={from}", hex::encode(batch_id));
        let part = Outgoing::new(query, "application/octet-stream", body.into());
        for (index, answer) in state
            .sealer
            .broadcast::<Received>(name, "messages", part, deadline)
            .await
        {
            match answer {
                Ok(received) if received.received == to as u64 => {}
                Ok(received) => failed.push((
                    index,
                    ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "peer_refused",
                        format!(
                            "server {index} holds {} verifier messages, {to} were sent",
                            received.received
                        ),
                    ),
                )),
                Err(e) => failed.push((index, e)),
            }
        }
        if !failed.is_empty() || to == items.len() {
            break;
        }
        from = to;
    }
    failed
}

/// Folds the verified reports at `rows` (with `messages`, in the same order) into
/// `agg`: `verify-init` again for this server's states, `verify-finish` with the
/// messages into output shares, `accumulate`.
pub(super) async fn fold_verified(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    mut agg: Vec<u8>,
    rows: &[i64],
    messages: &Batch,
) -> Result<Vec<u8>, ApiError> {
    let endpoint = live.endpoint.id;
    let key = state
        .storage
        .verify_key(endpoint, None)
        .await?
        .ok_or_else(|| {
            ApiError::conflict(
                "verify_key_mismatch",
                "this robust endpoint has no verification key here: its reports were never verified",
            )
        })?;
    let (servers, index) = (state.sealer.servers(), state.sealer.index);
    let messages = items(messages);
    if messages.len() != rows.len() {
        return Err(ApiError::conflict(
            "messages_missing",
            format!("{} messages for {} reports", messages.len(), rows.len()),
        ));
    }
    for (c, chunk) in rows.chunks(VERIFY_CHUNK).enumerate() {
        let (ids, public, shares) = read_reports(state, endpoint, chunk).await?;
        let from = c * VERIFY_CHUNK;
        let chunk_messages = Batch::pack(&messages[from..from + chunk.len()]);
        let call_live = live.clone();
        agg = state
            .registry
            .call("verify_finish", move || {
                let config = &call_live.endpoint.record.config;
                let (publics, inputs, messages) =
                    (items(&public), items(&shares), items(&chunk_messages));
                let mut agg = agg;
                let reports = (&ids[..], &publics[..], &inputs[..]);
                start_in_slices(
                    &call_live,
                    &key,
                    (servers, index),
                    reports,
                    |range, started| {
                        let mut states = Batch::default();
                        for started in started {
                            match started {
                                Started::Ready { state, .. } => states.push(&state),
                                Started::Invalid(why) => {
                                    return Err(CallError::Rejected(
                                        guardian_sdk::Error::invalid_state(format!(
                                            "a report verified before no longer starts: {why}"
                                        )),
                                    ));
                                }
                            }
                        }
                        let output = call_live.plugin.verify_finish(
                            config,
                            servers,
                            index,
                            &states,
                            &Batch::pack(&messages[range]),
                        )?;
                        agg = call_live.plugin.accumulate(
                            config,
                            &agg,
                            &output.data,
                            &output.ends,
                        )?;
                        Ok(())
                    },
                )?;
                Ok(agg)
            })
            .await?;
    }
    Ok(agg)
}

#[cfg(test)]
mod tests {
    use super::{PLUGIN_SLICE, SLICE_BYTES, slices};

    #[test]
    fn plugin_calls_are_cut_by_reports_and_by_bytes() {
        assert!(slices(std::iter::empty()).is_empty());
        // Small reports: whole slices of PLUGIN_SLICE, then the rest.
        let small = slices(std::iter::repeat_n(10, PLUGIN_SLICE + 3));
        assert_eq!(small, [0..PLUGIN_SLICE, PLUGIN_SLICE..PLUGIN_SLICE + 3]);
        // Long reports: as many as fit in SLICE_BYTES.
        let long = slices(std::iter::repeat_n(SLICE_BYTES / 4, 9));
        assert_eq!(long, [0..4, 4..8, 8..9]);
        // A report longer than SLICE_BYTES goes alone.
        let huge = slices([1, SLICE_BYTES + 1, 1].into_iter());
        assert_eq!(huge, [0..1, 1..2, 2..3]);
    }
}
