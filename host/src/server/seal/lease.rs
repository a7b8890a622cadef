//! Leases: what one replica of a share server at a time may do, when several
//! `guardian serve` processes with the same index share one database.
//!
//! A lease is a row of the database's `leases` table (see
//! [`crate::storage::Storage::try_lease`]), held by a random id drawn per
//! process and expiring after the lease TTL (the database's clock) unless its
//! holder renews it; a replica that dies loses its leases when they expire.
//!
//! - `seal:<endpoint id>`: held through a seal of the endpoint on server 0 (from
//!   the proposal to the drop of the decision), around a follower's reservation of
//!   a proposal page, and around each step of the report window's collection, so
//!   that these never overlap across replicas as the in-process lock keeps them
//!   apart within one.
//! - `driver`: the replica holding it runs the background work (on server 0 the
//!   completion of decided seals and the scheduled seals; on every server the
//!   report window's collection). It is taken and renewed by
//!   [`hold_driver_lease`], a few times per TTL; when its holder dies, another
//!   replica takes it once it expired.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Sealer;
use crate::server::AppState;
use crate::server::error::ApiError;
use crate::storage::{EndpointId, Storage, StorageError};

/// The name of the lease of the background work.
const DRIVER: &str = "driver";

/// The name of the lease of `endpoint`'s seals.
pub(super) fn seal_lease(endpoint: EndpointId) -> String {
    Storage::seal_lease(endpoint)
}

/// Whether this replica holds the `driver` lease, as its holder task last saw it.
#[derive(Default)]
pub(super) struct Driver {
    /// Until when the lease is surely ours: the TTL counted from before the
    /// statement that took or renewed it.
    until: Mutex<Option<Instant>>,
}

/// A lease held by this replica, renewed in the background until dropped, then
/// released.
///
/// The holder is this process, so the same lease taken again by this process is
/// renewed, not refused: a lease therefore keeps the in-process lock of what it
/// guards ([`Lease::hold`]) until its release is done, so that the next taker in
/// this process starts after the release, not before it.
pub(super) struct Lease {
    name: String,
    storage: Storage,
    holder: Arc<str>,
    ttl: Duration,
    /// Set when a renewal found the lease taken by another replica (this one
    /// stalled past the TTL).
    lost: Arc<AtomicBool>,
    renewals: tokio::task::JoinHandle<()>,
    /// The in-process lock of what the lease guards, released after the lease.
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Lease {
    /// Keeps `guard` (the in-process lock of what the lease guards) until the
    /// lease is released.
    pub(super) fn hold(&mut self, guard: tokio::sync::OwnedMutexGuard<()>) {
        self.guard = Some(guard);
    }

    /// Renews the lease now; whether it is still this replica's. Called before a
    /// step that must not be taken by two replicas, such as storing a decision.
    pub(super) async fn renew(&self) -> Result<bool, StorageError> {
        if self.lost.load(Ordering::SeqCst) {
            return Ok(false);
        }
        self.storage
            .try_lease(&self.name, &self.holder, self.ttl)
            .await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewals.abort();
        let (storage, name, holder, guard) = (
            self.storage.clone(),
            std::mem::take(&mut self.name),
            self.holder.clone(),
            self.guard.take(),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = storage.release_lease(&name, &holder).await {
                    tracing::debug!(lease = %name, error = %e, "releasing a lease failed; it expires by itself");
                }
                drop(guard);
            });
        }
    }
}

impl Sealer {
    /// Takes lease `name` if no other replica holds it: `None` when one does.
    pub(super) async fn take_lease(
        &self,
        storage: &Storage,
        name: String,
    ) -> Result<Option<Lease>, StorageError> {
        if !storage
            .try_lease(&name, &self.holder, self.lease_ttl)
            .await?
        {
            return Ok(None);
        }
        let lost = Arc::new(AtomicBool::new(false));
        let renewals = tokio::spawn({
            let (storage, name, holder, ttl, lost) = (
                storage.clone(),
                name.clone(),
                self.holder.clone(),
                self.lease_ttl,
                lost.clone(),
            );
            async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    match storage.try_lease(&name, &holder, ttl).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(lease = %name, "another replica took a lease this one held: it stalled past the lease TTL");
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(lease = %name, error = %e, "renewing a lease failed");
                        }
                    }
                }
            }
        });
        Ok(Some(Lease {
            name,
            storage: storage.clone(),
            holder: self.holder.clone(),
            ttl: self.lease_ttl,
            lost,
            renewals,
            guard: None,
        }))
    }

    /// Takes lease `name`, waiting for another replica's to end until `deadline`;
    /// then 503 `seal_in_progress`.
    pub(super) async fn wait_lease(
        &self,
        storage: &Storage,
        name: String,
        deadline: Instant,
    ) -> Result<Lease, ApiError> {
        let mut pause = Duration::from_millis(10);
        loop {
            if let Some(lease) = self.take_lease(storage, name.clone()).await? {
                return Ok(lease);
            }
            if Instant::now() + pause >= deadline {
                return Err(in_progress_elsewhere());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.lease_ttl / 4);
        }
    }

    /// Whether this replica drives the background work now (holds the `driver`
    /// lease, see [`hold_driver_lease`]).
    pub(super) fn driving(&self) -> bool {
        self.driver
            .until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| Instant::now() < until)
    }

    /// How often the background work looks whether this replica drives it.
    pub(super) fn driver_poll(&self) -> Duration {
        self.lease_ttl / 3
    }
}

/// 503 `seal_in_progress`: another replica of this server holds the endpoint's
/// seal lease.
pub(super) fn in_progress_elsewhere() -> ApiError {
    ApiError::unavailable(
        "seal_in_progress",
        "another seal of this endpoint is in progress on another replica of this server (or one that stopped, until its lease expires); retry in a moment",
    )
    .with_retry_after(1)
}

/// Takes and renews the `driver` lease every third of the TTL, until storage
/// closes; [`Sealer::driving`] tells the background work whether it holds it.
pub(in crate::server) async fn hold_driver_lease(state: Arc<AppState>) {
    let sealer = &state.sealer;
    let mut driving = false;
    loop {
        let asked = Instant::now();
        match state
            .storage
            .try_lease(DRIVER, &sealer.holder, sealer.lease_ttl)
            .await
        {
            Ok(held) => {
                *sealer
                    .driver
                    .until
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) =
                    held.then_some(asked + sealer.lease_ttl);
                if held != driving {
                    driving = held;
                    if held {
                        tracing::info!(holder = %sealer.holder, "this replica drives the background work (lease `driver`)");
                    } else {
                        tracing::info!(holder = %sealer.holder, "another replica drives the background work (lease `driver`)");
                    }
                }
            }
            Err(StorageError::Closed) => return,
            Err(e) => tracing::warn!(error = %e, "taking or renewing the driver lease failed"),
        }
        tokio::time::sleep(sealer.lease_ttl / 3).await;
    }
}
