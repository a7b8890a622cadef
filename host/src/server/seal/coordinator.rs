//! The coordinator's side of a seal: propose in pages, decide, drive the decision
//! to completion on every server (now, or later by the background retry).

use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::fold::{Checked, commit_locally};
use super::lease::{in_progress_elsewhere, seal_lease};
use super::{
    Commit, Committed, Outgoing, Prepared, RETRY_EVERY, bits, page_len, too_few_users, too_small,
    verify,
};
use crate::server::AppState;
use crate::server::error::ApiError;
use crate::server::registry::LiveEndpoint;
use crate::storage::{BatchInfo, Seal};

/// Seals a batch of `live`'s endpoint; called on the coordinator.
///
/// If a decided seal of the endpoint is pending, completes it and answers with it
/// instead: a client retrying after a `seal_incomplete` gets its batch.
///
/// The proposal goes a page at a time (at most `max_batch` ids a page), oldest
/// first, until `max_batch` reports are agreed or this server's unbatched reports
/// are all proposed: reports that only this server holds, however many, never
/// keep the reports every server holds out of a batch.
///
/// Everything it waits for ends before `deadline` (set inside the request's own
/// timeout), so the answer is always the seal's: 503 `peer_unavailable` (nothing
/// sealed) or `seal_incomplete` (decided, finishing by itself), never a 408.
pub(in crate::server) async fn seal(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    deadline: Instant,
) -> Result<BatchInfo, ApiError> {
    seal_at_least(state, live, deadline, 0).await
}

/// [`seal`], deciding a batch only if at least `at_least` reports (and the
/// endpoint's `min_batch`) are held by every server: the scheduled seal of an
/// endpoint with `seal_at`. Below that nothing is sealed (`batch_too_small`).
pub(in crate::server) async fn seal_at_least(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    deadline: Instant,
    at_least: u64,
) -> Result<BatchInfo, ApiError> {
    let sealer = &state.sealer;
    let endpoint = &live.endpoint;
    let lock = sealer.lock(endpoint.id);
    let Ok(sealing) = tokio::time::timeout_at(deadline.into(), lock.lock_owned()).await else {
        return Err(ApiError::unavailable(
            "seal_in_progress",
            "another seal of this endpoint is in progress on this server; retry in a moment",
        )
        .with_retry_after(RETRY_EVERY.as_secs()));
    };
    // Across replicas of this server: answered at once, the other replica's seal
    // answers its own client.
    let Some(mut lease) = sealer
        .take_lease(&state.storage, seal_lease(endpoint.id))
        .await?
    else {
        return Err(in_progress_elsewhere());
    };
    lease.hold(sealing);
    if let Some(pending) = state.storage.pending_seal(endpoint.id).await? {
        if pending.decided {
            return finish(state, live, pending, deadline).await;
        }
        // Only followers reserve; a reservation here is left from a time this server
        // had another index.
        state
            .storage
            .drop_seal(endpoint.id, pending.batch_id)
            .await?;
    }
    let needed = sealer.needed(endpoint.record.min_batch);
    let min_users = sealer.min_users(needed);
    let needed = needed.max(at_least);
    let batch_id: [u8; 16] = rand::random();
    let number = state.storage.next_seal_number(endpoint.id).await?;
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
        let answers = sealer
            .broadcast::<Prepared>(name, "prepare", prepare, deadline)
            .await;
        for (index, answer) in answers {
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
        if let Some(mut failure) = failure {
            sealer.abort_all(name, batch_id, number);
            failure.message = format!("{}; nothing was sealed", failure.message);
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
    if (rows.len() as u64) < needed {
        if proposed > 0 {
            sealer.abort_all(name, batch_id, number);
        }
        return Err(too_small(rows.len() as u64, needed));
    }
    // Robust endpoints: only the reports whose proofs hold go on.
    let verification = if live.plugin.robust() {
        let verdict =
            match verify::round(state, live, (batch_id, number), &agreed, &rows, deadline).await {
                Ok(verdict) => verdict,
                Err(mut failure) => {
                    sealer.abort_all(name, batch_id, number);
                    failure.message = format!("{}; nothing was sealed", failure.message);
                    return Err(failure);
                }
            };
        (agreed, rows) = (verdict.positions, verdict.rows);
        let count = rows.len() as u64;
        if count < needed {
            // Never proposed again by this server; the followers' copies expire.
            let rejected = verdict.verification.rejected_rows;
            state.storage.reject_reports(endpoint.id, rejected).await?;
            sealer.abort_all(name, batch_id, number);
            return Err(too_small(count, needed));
        }
        Some(verdict.verification)
    } else {
        None
    };
    let count = rows.len() as u64;
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
        created_at: state.clock.now(),
        verification,
    };
    // A replica that stalled past the lease TTL may have been replaced by
    // another's seal: it decides nothing then.
    if !lease.renew().await? {
        sealer.abort_all(name, batch_id, number);
        return Err(in_progress_elsewhere());
    }
    state.storage.put_seal(&decision).await?;
    tracing::info!(endpoint = %name, batch = %hex::encode(batch_id), count, "seal decided");
    let outcome = finish(state, live, decision, deadline).await;
    drop(lease);
    outcome
}

/// Drives a decided seal to completion: every server commits it (the followers and
/// this one at the same time), then the decision is dropped. Called with the
/// endpoint's seal lock held.
async fn finish(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    decision: Seal,
    deadline: Instant,
) -> Result<BatchInfo, ApiError> {
    let sealer = &state.sealer;
    let (endpoint, batch_id, count) = (
        decision.endpoint,
        decision.batch_id,
        decision.rows.len() as u64,
    );
    let broadcast = commit_followers(state, live, &decision, deadline);
    if sealer.fault.as_deref() == Some("crash_before_coordinator_commit") {
        broadcast.await;
        sealer.crash_at("crash_before_coordinator_commit");
        unreachable!("the fault aborts the process");
    }
    let checked = checked(&decision);
    let (answers, local) = tokio::join!(
        broadcast,
        commit_locally(state, live, batch_id, decision.rows, checked)
    );
    let info = local?;
    followers_committed(answers, batch_id, count)?;
    state.storage.drop_seal(endpoint, batch_id).await?;
    Ok(info)
}

/// What a robust decision's verification round found, as its commit needs it.
fn checked(decision: &Seal) -> Option<Checked> {
    decision.verification.as_ref().map(|v| Checked {
        messages: v.messages.clone(),
        rejected_rows: v.rejected_rows.clone(),
    })
}

/// Sends the decision to every follower (a robust one's verifier messages first);
/// their answers in index order. The message is encoded at once, so the decision
/// is free again when this returns.
///
/// A follower that holds no reservation of the seal (`unknown_seal`: an older
/// version of it let a late prepare replace the reservation) is sent the
/// decision by its report ids instead, read from the stored decision.
fn commit_followers<'a>(
    state: &'a Arc<AppState>,
    live: &'a LiveEndpoint,
    decision: &Seal,
    deadline: Instant,
) -> impl Future<Output = Vec<(u32, Result<Committed, ApiError>)>> + 'a {
    let record = &live.endpoint.record;
    let count = decision.rows.len() as u64;
    let (batch_id, seal) = (decision.batch_id, decision.seal_number);
    let commit = Outgoing::json(&Commit {
        batch_id: hex::encode(batch_id),
        seal,
        config_hash: hex::encode(record.config_hash),
        agreed: BASE64.encode(&decision.positions),
        count,
        rejected: decision
            .verification
            .as_ref()
            .map(|v| BASE64.encode(&v.rejected_positions)),
    });
    let messages = decision.verification.as_ref().map(|v| v.messages.clone());
    async move {
        let unsent = match &messages {
            Some(messages) => {
                verify::send_messages(state, live, (batch_id, seal), messages, deadline).await
            }
            None => Vec::new(),
        };
        let mut answers = state
            .sealer
            .broadcast::<Committed>(&record.name, "commit", commit, deadline)
            .await;
        for (index, answer) in &mut answers {
            // The messages' failure says more than the commit's `messages_missing`.
            if let Some((_, e)) = unsent.iter().find(|(i, _)| i == index) {
                *answer = Err(e.clone());
                continue;
            }
            if messages.is_none() && matches!(answer, Err(e) if e.code == "peer_unknown_seal") {
                tracing::warn!(server = *index, endpoint = %record.name, batch = %hex::encode(batch_id), "the follower holds no reservation of this decided seal; sending it by report ids");
                *answer = recommit(state, live, *index, (batch_id, seal, count), deadline).await;
            }
        }
        answers
    }
}

/// Sends decided batch `batch_id` of seal `seal` (`count` reports) to follower
/// `index` by its report ids.
async fn recommit(
    state: &Arc<AppState>,
    live: &LiveEndpoint,
    index: u32,
    (batch_id, seal, count): ([u8; 16], u64, u64),
    deadline: Instant,
) -> Result<Committed, ApiError> {
    let endpoint = &live.endpoint;
    let decision = state
        .storage
        .pending_seal(endpoint.id)
        .await?
        .filter(|pending| pending.decided && pending.batch_id == batch_id)
        .ok_or_else(|| {
            ApiError::unavailable(
                "seal_in_progress",
                "the decision was completed meanwhile; retry in a moment",
            )
        })?;
    let mut rows = decision.rows;
    rows.sort_unstable();
    let ids = state.storage.report_ids(endpoint.id, rows).await?;
    let query = format!(
        "batch_id={}&seal={seal}&config_hash={}&count={count}",
        hex::encode(batch_id),
        hex::encode(endpoint.record.config_hash),
    );
    let recommit = Outgoing::new(query, "application/octet-stream", ids.concat().into());
    state
        .sealer
        .clone()
        .call(
            endpoint.record.name.clone(),
            "recommit",
            index,
            Arc::new(recommit),
            deadline,
        )
        .await
}

/// `Ok` when every follower committed batch `batch_id` with `count` reports.
fn followers_committed(
    answers: Vec<(u32, Result<Committed, ApiError>)>,
    batch_id: [u8; 16],
    count: u64,
) -> Result<(), ApiError> {
    let batch_hex = hex::encode(batch_id);
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
                        "batch {batch_hex} of {count} reports is decided (this seal cannot be undone) but server {index} has not committed it yet ({}); it completes by itself as soon as server {index} answers (retried every {} s), or when this request is sent again; then every server lists batch {batch_hex}",
                        e.message,
                        RETRY_EVERY.as_secs()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Coordinator: retries the decided seals that did not complete, until shutdown;
/// on the replica that holds the `driver` lease only (see [`super::lease`]), so
/// a seal decided on a replica that died completes through another.
///
/// The followers' commits (idempotent by batch id) are sent without the
/// endpoint's seal lock, so a seal request is never kept waiting behind a peer
/// that does not answer; only the local commit and dropping the decision, once
/// every follower committed, happen under the lock.
pub(in crate::server) async fn retry_decided(state: Arc<AppState>) {
    loop {
        if !state.sealer.driving() {
            tokio::time::sleep(state.sealer.driver_poll().min(RETRY_EVERY)).await;
            continue;
        }
        match state.storage.decided_seals().await {
            Ok(decided) => {
                for decision in decided {
                    let Some(live) = state.registry.endpoint_by_id(decision.endpoint) else {
                        continue;
                    };
                    let name = &live.endpoint.record.name;
                    let deadline = Instant::now() + state.config.endpoints.peer_timeout();
                    let (batch_id, count) = (decision.batch_id, decision.rows.len() as u64);
                    let answers = commit_followers(&state, &live, &decision, deadline).await;
                    if let Err(e) = followers_committed(answers, batch_id, count) {
                        tracing::warn!(endpoint = %name, error = %e, "pending seal still incomplete");
                        continue;
                    }
                    let sealing = state.sealer.lock(decision.endpoint).lock_owned().await;
                    // A seal of the endpoint on another replica completes it first.
                    let mut lease = match state
                        .sealer
                        .take_lease(&state.storage, seal_lease(decision.endpoint))
                        .await
                    {
                        Ok(Some(lease)) => lease,
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::warn!(endpoint = %name, error = %e, "pending seal still incomplete");
                            continue;
                        }
                    };
                    lease.hold(sealing);
                    // Completed meanwhile by a request? A decision keeps its batch
                    // id until it is dropped, so the id tells it is still this one.
                    match state.storage.pending_seal(decision.endpoint).await {
                        Ok(Some(pending)) if pending.decided && pending.batch_id == batch_id => {}
                        _ => continue,
                    }
                    let checked = checked(&decision);
                    let completed = async {
                        commit_locally(&state, &live, batch_id, decision.rows, checked).await?;
                        state.storage.drop_seal(decision.endpoint, batch_id).await?;
                        Ok::<_, ApiError>(())
                    };
                    let completed = completed.await;
                    drop(lease);
                    match completed {
                        Ok(()) => {
                            tracing::info!(endpoint = %name, batch = %hex::encode(batch_id), "pending seal completed")
                        }
                        Err(e) => {
                            tracing::warn!(endpoint = %name, error = %e, "pending seal still incomplete")
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
