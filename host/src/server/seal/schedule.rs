//! Sealing by schedule: server 0 seals the endpoints created with `seal_every`
//! and/or `seal_at` by itself, through the very seal a scientist's request runs
//! ([`super::coordinator::seal_at_least`]), so the one-seal-per-endpoint lock,
//! the agreement and every server's own checks hold as for a manual seal.
//!
//! - `seal_every` D: due D after the last seal attempt (the last batch, or the
//!   endpoint's creation, when this server starts), by the server's clock, waited
//!   for with [`crate::clock::Clock::sleep_until`] so tests move time instead of
//!   sleeping.
//! - `seal_at` K: server 0 knows only its own count, so it tries as soon as it
//!   holds K unbatched reports (woken by every report it stores, not by polling),
//!   and the seal commits only if at least K are held by every server. When the
//!   followers lag behind, it tries again shortly, sooner while reports still
//!   arrive.
//!
//! A seal that finds too few reports simply waits for the next tick or report:
//! it is logged at debug level, and counted only among the scheduler's tries
//! (`guardian_scheduled_seals_total`, outcome `waiting`), not as a refusal.
//!
//! Replicas of server 0 over one database: only the replica holding the
//! `driver` lease schedules (see [`super::lease`]); it counts the reports of a
//! `seal_at` endpoint again at every rescan, since the other replicas store
//! reports it is not told of.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use super::Sealer;
use super::coordinator::seal_at_least;
use crate::server::AppState;
use crate::server::error::ApiError;
use crate::server::metrics::RejectLabels;
use crate::server::registry::LiveEndpoint;
use crate::storage::{Endpoint, EndpointId};

/// First wait before trying a `seal_at` endpoint again when the followers did
/// not hold K reports yet; doubled after every try up to [`RETRY_MOST`].
const RETRY_FIRST: Duration = Duration::from_millis(100);

/// Longest wait between two tries of a `seal_at` endpoint whose followers lag
/// (or are down).
const RETRY_MOST: Duration = Duration::from_secs(5);

/// How often the scheduler looks at the endpoints even when nothing woke it
/// (endpoints deleted, a schedule whose wake-up was missed).
const RESCAN_EVERY: Duration = Duration::from_secs(5);

/// What wakes the scheduler: reports stored in endpoints with `seal_at`, and
/// endpoints created.
#[derive(Default)]
pub(super) struct Wakeups {
    /// Per endpoint, the reports stored since the scheduler last looked.
    stored: Mutex<HashMap<EndpointId, u64>>,
    /// Set whenever something above changed; the scheduler waits on it.
    wake: Notify,
}

impl Wakeups {
    fn take(&self) -> HashMap<EndpointId, u64> {
        std::mem::take(&mut *self.stored.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Sealer {
    /// Tells the scheduler that `n` reports of `endpoint` were stored here: on
    /// server 0 an endpoint with `seal_at` may now be due.
    pub(in crate::server) fn reports_stored(&self, endpoint: &Endpoint, n: u64) {
        if self.index != 0 || endpoint.record.schedule.at.is_none() || n == 0 {
            return;
        }
        *self
            .wakeups
            .stored
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(endpoint.id)
            .or_default() += n;
        self.wakeups.wake.notify_one();
    }

    /// Tells the scheduler that an endpoint was created (it may have a schedule).
    pub(in crate::server) fn endpoint_created(&self) {
        self.wakeups.wake.notify_one();
    }
}

/// What the scheduler knows of one scheduled endpoint.
struct Due {
    /// `seal_every`: when the last seal attempt was, by the server's clock.
    last_attempt: SystemTime,
    /// `seal_at`: unbatched reports held here, as last counted plus those stored
    /// since (seals and expiry only lower it: a recount before sealing corrects).
    held: u64,
    /// `seal_at`: not before this instant, after a try the followers were behind.
    retry_at: Option<Instant>,
    /// `seal_at`: the wait after the next try that comes up short.
    backoff: Duration,
}

/// Server 0: seals the scheduled endpoints when they are due, until shutdown.
pub(in crate::server) async fn run(state: Arc<AppState>) {
    let mut known: HashMap<EndpointId, Due> = HashMap::new();
    // Whether the scheduler looks again after a rescan's wait, not a wake-up.
    let mut rescan = true;
    loop {
        if !state.sealer.driving() {
            // Another replica schedules (or this one's lease lapsed for a
            // moment). What this one knew stays: a last attempt older than
            // another replica's only makes the next attempt come sooner, and
            // the counts of `seal_at` endpoints are read again (`rescan`).
            state.sealer.wakeups.take();
            tokio::time::sleep(state.sealer.driver_poll()).await;
            rescan = true;
            continue;
        }
        let stored = state.sealer.wakeups.take();
        let endpoints: Vec<_> = state
            .registry
            .endpoints()
            .into_iter()
            .filter(|live| !live.endpoint.record.schedule.is_manual())
            .collect();
        // A deleted endpoint (or one recreated under a new id) is forgotten.
        known.retain(|id, _| endpoints.iter().any(|live| live.endpoint.id == *id));
        let mut next_due: Option<SystemTime> = None;
        let mut next_retry = Instant::now() + RESCAN_EVERY;
        let mut again = false;
        for live in endpoints {
            let id = live.endpoint.id;
            let due = match known.entry(id) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    match first_sight(&state, &live).await {
                        Some(due) => entry.insert(due),
                        None => continue,
                    }
                }
            };
            if stored.contains_key(&id) {
                // New reports: lagging followers may have caught up.
                due.backoff = RETRY_FIRST;
            }
            due.held += stored.get(&id).copied().unwrap_or(0);
            if rescan && live.endpoint.record.schedule.at.is_some() {
                // Reports stored by other replicas of this server.
                due.held = recount(&state, &live).await.unwrap_or(due.held);
            }
            let outcome = tick(&state, &live, due).await;
            if let Some(when) = outcome.next_due {
                next_due = Some(next_due.map_or(when, |next| next.min(when)));
            }
            if let Some(at) = due.retry_at {
                next_retry = next_retry.min(at);
            }
            again |= outcome.again;
        }
        if again {
            tokio::task::yield_now().await;
            continue;
        }
        let clock = state.clock.clone();
        let due_wait = async move {
            match next_due {
                Some(when) => clock.sleep_until(when).await,
                None => std::future::pending().await,
            }
        };
        let driver_poll = state.sealer.driver_poll();
        rescan = tokio::select! {
            () = state.sealer.wakeups.wake.notified() => false,
            () = due_wait => false,
            () = tokio::time::sleep_until(next_retry.into()) => true,
            // Still the driver? (A replica that lost the lease stops here.)
            () = tokio::time::sleep(driver_poll) => true,
        };
    }
}

/// What one look at an endpoint found.
struct Tick {
    /// `seal_every`: when it is due next.
    next_due: Option<SystemTime>,
    /// A seal took a full batch and more reports may be waiting: look again now.
    again: bool,
}

/// How the scheduler starts on an endpoint: the last seal attempt is taken to
/// be its latest batch, or its creation, so a restart does not put off a seal.
async fn first_sight(state: &Arc<AppState>, live: &LiveEndpoint) -> Option<Due> {
    let endpoint = &live.endpoint;
    let held = match state.storage.endpoint_counts(&endpoint.record.name).await {
        Ok(counts) => counts.map_or(0, |c| c.unbatched),
        Err(e) => {
            tracing::warn!(endpoint = %endpoint.record.name, error = %e, "cannot count the reports of a scheduled endpoint; trying again later");
            return None;
        }
    };
    let last_batch = match state.storage.list_batches(endpoint.id).await {
        Ok(batches) => batches.last().map(|batch| batch.sealed_at),
        Err(e) => {
            tracing::warn!(endpoint = %endpoint.record.name, error = %e, "cannot list the batches of a scheduled endpoint; trying again later");
            return None;
        }
    };
    Some(Due {
        last_attempt: last_batch.map_or(endpoint.record.created_at, |sealed| {
            sealed.max(endpoint.record.created_at)
        }),
        held,
        retry_at: None,
        backoff: RETRY_FIRST,
    })
}

/// Seals `live`'s endpoint if it is due.
async fn tick(state: &Arc<AppState>, live: &Arc<LiveEndpoint>, due: &mut Due) -> Tick {
    let schedule = live.endpoint.record.schedule;
    let now = state.clock.now();
    let mut tick = Tick {
        next_due: None,
        again: false,
    };
    let every_due = schedule.every_secs.map(|every| {
        let when = due.last_attempt + Duration::from_secs(every);
        (now >= when, when)
    });
    let at_least = match (every_due, schedule.at) {
        // A tick seals whatever every server holds (at least `min_batch`).
        (Some((true, _)), _) => Some(0),
        (_, Some(k)) if due.held >= k && due.retry_at.is_none_or(|at| Instant::now() >= at) => {
            // Count again: seals and expiry lower the count behind our back.
            match recount(state, live).await {
                Some(held) => {
                    due.held = held;
                    (held >= k).then_some(k)
                }
                None => None,
            }
        }
        _ => None,
    };
    if let Some(at_least) = at_least {
        if schedule.every_secs.is_some() {
            due.last_attempt = now;
        }
        let sealed = attempt(state, live, at_least).await;
        if schedule.at.is_some() {
            due.held = recount(state, live).await.unwrap_or(due.held);
            match sealed {
                Some(_) => {
                    due.retry_at = None;
                    due.backoff = RETRY_FIRST;
                }
                None => {
                    due.retry_at = Some(Instant::now() + due.backoff);
                    due.backoff = (due.backoff * 2).min(RETRY_MOST);
                }
            }
            tick.again = sealed.is_some() && schedule.at.is_some_and(|k| due.held >= k);
        }
    }
    if let Some(every) = schedule.every_secs {
        tick.next_due = Some(due.last_attempt + Duration::from_secs(every));
    }
    tick
}

/// The unbatched reports of `live`'s endpoint held here, or `None` (logged) when
/// storage cannot tell now.
async fn recount(state: &Arc<AppState>, live: &LiveEndpoint) -> Option<u64> {
    let name = &live.endpoint.record.name;
    match state.storage.endpoint_counts(name).await {
        Ok(counts) => Some(counts.map_or(0, |c| c.unbatched)),
        Err(e) => {
            tracing::warn!(endpoint = %name, error = %e, "cannot count the reports of a scheduled endpoint");
            None
        }
    }
}

/// One scheduled seal; the batch, or `None` when nothing was sealed (logged: at
/// debug level when there were only too few reports).
async fn attempt(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    at_least: u64,
) -> Option<crate::storage::BatchInfo> {
    let name = &live.endpoint.record.name;
    let started = Instant::now();
    let deadline = started + state.config.limits.request_timeout() * 9 / 10;
    let sealed = seal_at_least(state, live, deadline, at_least).await;
    let outcome = match &sealed {
        Ok(_) => "sealed",
        Err(e) if waits(e) => "waiting",
        Err(_) => "failed",
    };
    state.metrics.scheduled_seal(name, outcome);
    match sealed {
        Ok(batch) => {
            state
                .metrics
                .seal_seconds
                .observe(started.elapsed().as_secs_f64());
            let labels = RejectLabels {
                endpoint: name.clone(),
                reason: "sealed".to_owned(),
            };
            state.metrics.seals.get_or_create(&labels).inc();
            tracing::info!(endpoint = %name, batch = %hex::encode(batch.batch_id), count = batch.count, "scheduled seal");
            Some(batch)
        }
        Err(e) if waits(&e) => {
            tracing::debug!(endpoint = %name, code = e.code, "scheduled seal waits: {}", e.message);
            None
        }
        Err(e) => {
            tracing::warn!(endpoint = %name, code = e.code, error = %e.message, "scheduled seal failed; trying again at the next tick");
            None
        }
    }
}

/// Whether a seal failed only because it is not time yet: too few reports or
/// users, or a seal of the endpoint already running.
fn waits(e: &ApiError) -> bool {
    matches!(
        e.code,
        "batch_too_small" | "too_few_users" | "seal_in_progress"
    )
}
