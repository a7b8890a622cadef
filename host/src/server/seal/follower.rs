//! A follower's side of a seal: reserve what it holds of each page of a proposal,
//! commit exactly the decided reports of its reservation, or forget it.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes, HttpBody as _};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest as _, Sha256};

use super::fold::{Checked, commit_locally};
use super::lease::seal_lease;
use super::{
    Abort, Aborted, Commit, Committed, Prepare, Prepared, Recommit, bits, check_config, page_len,
    parse_batch_id, too_few_users, too_small,
};
use crate::server::AppState;
use crate::server::auth::Peer;
use crate::server::error::ApiError;
use crate::server::registry::LiveEndpoint;
use crate::storage::{BatchInfo, EndpointId, Seal, SealReport};

/// Follower: reserves the proposed reports this server holds; `body` is one page
/// of the proposal's ids, read (and hashed for the signature) as they arrive.
/// Nothing is stored before the coordinator's signature over the whole request
/// has been checked.
pub(in crate::server) async fn prepare(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    peer: Peer,
    query: Prepare,
    body: Body,
) -> Result<Prepared, ApiError> {
    follower_only(state)?;
    let endpoint = live.endpoint.id;
    let name = &live.endpoint.record.name;
    let sealing = state.sealer.lock(endpoint).lock_owned().await;
    // Across replicas, the report window's collection waits while this page's
    // reports are read and reserved (the peer call waits at most half its time).
    let deadline = Instant::now() + state.sealer.peer_timeout / 2;
    let mut lease = state
        .sealer
        .wait_lease(&state.storage, seal_lease(endpoint), deadline)
        .await?;
    lease.hold(sealing);
    let held = held_by_id(state, endpoint).await?;
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
    let (digest, whole) = read_ids(body, &mut visit).await?;
    drop(held);
    peer.verify(state, name, "prepare", &digest)?;
    check_config(live, &query.config_hash)?;
    let batch_id = parse_batch_id(&query.batch_id)?;
    whole?;
    let ours = state
        .sealer
        .min_users(state.sealer.needed(live.endpoint.record.min_batch));
    if query.min_users < ours {
        return Err(ApiError::conflict(
            "config_mismatch",
            format!(
                "this server requires batches of {ours} distinct users (endpoints.distinct_users, min_batch and its floor) but the coordinator requires {}: the operators must agree on both",
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
        _ => {
            // The highest number seen is shared by the replicas: checked and
            // stored in one statement.
            if let Some(seen) = state
                .storage
                .claim_seal_number(endpoint, query.seal)
                .await?
            {
                return Err(stale_seal(&query, seen));
            }
            Seal {
                endpoint,
                batch_id,
                seal_number: query.seal,
                decided: false,
                positions,
                rows,
                created_at: state.clock.now(),
                verification: None,
            }
        }
    };
    state.storage.put_seal(&reservation).await?;
    drop(lease);
    Ok(Prepared {
        held: page_bits,
        count,
    })
}

/// Every unbatched report of `endpoint` held here, sorted by id to be searched
/// rather than hashed: a third of the memory for a million reports.
async fn held_by_id(state: &AppState, endpoint: EndpointId) -> Result<Vec<SealReport>, ApiError> {
    let mut held = state
        .storage
        .unbatched_reports(endpoint, 0, usize::MAX)
        .await?;
    held.sort_unstable_by_key(|report| report.report_id);
    Ok(held)
}

/// Reads a body of concatenated 16-byte report ids as it arrives, calling `visit`
/// with each; returns the SHA-256 of the body (for the signature), and whether
/// it was whole ids, to be checked once the signature is.
async fn read_ids(
    body: Body,
    visit: &mut impl FnMut(&[u8]) -> Result<(), ApiError>,
) -> Result<([u8; 32], Result<(), ApiError>), ApiError> {
    let mut digest = Sha256::new();
    let mut stream = body.into_data_stream();
    let mut carry = Vec::with_capacity(16);
    while let Some(chunk) = std::future::poll_fn(|cx| Pin::new(&mut stream).poll_frame(cx)).await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request("bad_body", format!("reading the report ids: {e}")))?
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
    let whole = if carry.is_empty() {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "bad_request",
            "the body must be whole 16-byte report ids",
        ))
    };
    Ok((digest.finalize().into(), whole))
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
pub(in crate::server) async fn commit(
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
    let body: Commit = crate::server::extract::parse_json(&bytes)?;
    drop(bytes);
    check_config(live, &body.config_hash)?;
    let batch_id = parse_batch_id(&body.batch_id)?;
    let agreed = BASE64
        .decode(&body.agreed)
        .map_err(|_| ApiError::bad_request("bad_request", "agreed must be base64"))?;
    let rejected = body
        .rejected
        .as_deref()
        .map(|rejected| BASE64.decode(rejected))
        .transpose()
        .map_err(|_| ApiError::bad_request("bad_request", "rejected must be base64"))?;
    let endpoint = live.endpoint.id;
    let lock = state.sealer.lock(endpoint);
    let _sealing = lock.lock().await;
    if let Some(info) = state.storage.committed_batch(endpoint, batch_id).await? {
        super::verify::drop_messages(state, live).await;
        return Ok(committed(info));
    }
    let reservation = reserved_seal(state, endpoint, batch_id, body.seal, &body.batch_id).await?;
    let rows = reserved_rows(&agreed, &reservation, &body.batch_id)?;
    let verified = match (live.plugin.robust(), rejected) {
        (false, None) => None,
        (true, Some(rejected)) => {
            state.sealer.crash_at("crash_in_commit");
            let rejected_rows = reserved_rows(&rejected, &reservation, &body.batch_id)?;
            let messages =
                super::verify::held_messages(state, endpoint, (batch_id, body.seal), body.count)
                    .await?;
            Some(Checked {
                messages,
                rejected_rows,
            })
        }
        (robust, _) => {
            return Err(ApiError::conflict(
                "seal_mismatch",
                format!(
                    "batch {}: the endpoint's plugin is {}robust here, and the decision {} verification",
                    body.batch_id,
                    if robust { "" } else { "not " },
                    if robust { "lacks" } else { "carries" }
                ),
            ));
        }
    };
    drop(reservation);
    let outcome = commit_decided(state, live, batch_id, rows, body.count, verified).await;
    if outcome.is_ok() {
        super::verify::drop_messages(state, live).await;
    }
    outcome
}

/// This follower's reservation for batch `batch_id` of seal `seal`.
pub(super) async fn reserved_seal(
    state: &AppState,
    endpoint: EndpointId,
    batch_id: [u8; 16],
    seal: u64,
    batch_hex: &str,
) -> Result<Seal, ApiError> {
    state
        .storage
        .pending_seal(endpoint)
        .await?
        .filter(|reserved| reserved.batch_id == batch_id && reserved.seal_number == seal)
        .ok_or_else(|| {
            ApiError::conflict(
                "unknown_seal",
                format!(
                    "this server holds no reservation for batch {batch_hex} of seal {seal}: it was aborted or replaced by a newer proposal"
                ),
            )
        })
}

/// This follower's rows of the proposed reports whose bits are set in `chosen`
/// (a bitmap over the proposal), in proposal order; each must be reserved here.
pub(super) fn reserved_rows(
    chosen: &[u8],
    reservation: &Seal,
    batch_hex: &str,
) -> Result<Vec<i64>, ApiError> {
    let mismatch =
        |why: String| ApiError::conflict("seal_mismatch", format!("batch {batch_hex}: {why}"));
    if chosen.len() != reservation.positions.len() {
        return Err(mismatch(format!(
            "the decision covers {} proposed reports, the reservation here {}",
            chosen.len() * 8,
            reservation.positions.len() * 8
        )));
    }
    // The reserved rows are in proposal order: walk the held bits, keep the chosen.
    let mut reserved = reservation.rows.iter();
    let mut rows = Vec::new();
    for (byte, (&chosen, &held)) in chosen.iter().zip(&reservation.positions).enumerate() {
        if chosen & !held != 0 {
            let bit = (chosen & !held).trailing_zeros() as usize;
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
                if chosen & (1 << bit) != 0 {
                    rows.push(row);
                }
            }
        }
    }
    Ok(rows)
}

/// Follower: commits a decided batch given by its report ids, for a follower
/// that holds no reservation of it (`unknown_seal` to its commit): the
/// reservation was replaced by an older version of this server (which let a late
/// prepare replace it) or lost. Every report must be held here unbatched, and the
/// batch passes the same checks as a commit.
pub(in crate::server) async fn recommit(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    peer: Peer,
    query: Recommit,
    body: Body,
) -> Result<Committed, ApiError> {
    follower_only(state)?;
    if live.plugin.robust() {
        // A robust batch needs its verifier messages and rejections, which only a
        // reservation of its seal can place.
        return Err(ApiError::conflict(
            "seal_mismatch",
            format!(
                "batch {}: a robust endpoint's batch cannot be committed by report ids",
                query.batch_id
            ),
        ));
    }
    let max = state.sealer.max_batch;
    let mut ids = Vec::new();
    let mut visit = |id: &[u8]| {
        if ids.len() == 16 * max {
            return Err(ApiError::bad_request(
                "too_many_reports",
                format!("a batch has at most {max} reports (endpoints.max_batch)"),
            ));
        }
        ids.extend_from_slice(id);
        Ok(())
    };
    let (digest, whole) = read_ids(body, &mut visit).await?;
    peer.verify(state, &live.endpoint.record.name, "recommit", &digest)?;
    check_config(live, &query.config_hash)?;
    let batch_id = parse_batch_id(&query.batch_id)?;
    whole?;
    let endpoint = live.endpoint.id;
    let lock = state.sealer.lock(endpoint);
    let _sealing = lock.lock().await;
    if let Some(info) = state.storage.committed_batch(endpoint, batch_id).await? {
        return Ok(committed(info));
    }
    let held = held_by_id(state, endpoint).await?;
    let mut rows = Vec::with_capacity(ids.len() / 16);
    let mut missing = 0u64;
    for id in ids.chunks_exact(16) {
        match held.binary_search_by(|report| report.report_id.as_slice().cmp(id)) {
            Ok(at) => rows.push(held[at].row),
            Err(_) => missing += 1,
        }
    }
    drop((held, ids));
    if missing > 0 {
        return Err(ApiError::conflict(
            "seal_mismatch",
            format!(
                "batch {}: {missing} of its reports are not held unbatched here",
                query.batch_id
            ),
        ));
    }
    tracing::warn!(endpoint = %live.endpoint.record.name, batch = %query.batch_id, seal = query.seal, "committing a decided batch by its report ids: the reservation of it was gone");
    commit_decided(state, live, batch_id, rows, query.count, None).await
}

fn committed(info: BatchInfo) -> Committed {
    Committed {
        batch_id: hex::encode(info.batch_id),
        count: info.count,
    }
}

/// The checks a follower makes of a decided batch on its own (the count the
/// coordinator states, `min_batch` and its distinct users), then its commit.
async fn commit_decided(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    batch_id: [u8; 16],
    rows: Vec<i64>,
    count: u64,
    verified: Option<Checked>,
) -> Result<Committed, ApiError> {
    if rows.len() as u64 != count {
        return Err(ApiError::conflict(
            "seal_mismatch",
            format!(
                "batch {}: the decision says {count} reports but names {}",
                hex::encode(batch_id),
                rows.len()
            ),
        ));
    }
    let needed = state.sealer.needed(live.endpoint.record.min_batch);
    if count < needed {
        return Err(too_small(count, needed));
    }
    let min_users = state.sealer.min_users(needed);
    if min_users > 0 {
        let users = state
            .storage
            .distinct_posters(live.endpoint.id, rows.clone(), min_users)
            .await?;
        if users < min_users {
            return Err(too_few_users(users, min_users));
        }
    }
    commit_locally(state, live, batch_id, rows, verified)
        .await
        .map(committed)
}

/// Follower: forgets the reservation of an aborted seal (only that seal's).
pub(in crate::server) async fn abort(
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
    let body: Abort = crate::server::extract::parse_json(&bytes)?;
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
    if aborted {
        super::verify::drop_messages(state, live).await;
    }
    Ok(Aborted { aborted })
}

pub(super) fn follower_only(state: &AppState) -> Result<(), ApiError> {
    if state.config.server.is_coordinator() {
        return Err(ApiError::conflict(
            "coordinator",
            "server 0 coordinates seals and takes no proposals",
        ));
    }
    Ok(())
}
