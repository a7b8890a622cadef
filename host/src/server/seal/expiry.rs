//! The report window in the background: deletes the reports older than it (with
//! their shares and ids, batched or not), never under a seal in progress.
//!
//! Ingest refuses a report whose id is older than the window
//! (`server::report_time`), so what is older is needed neither to seal nor to
//! catch a replay. Storage then stops growing once the window is full: the pages
//! of deleted reports take the new ones.
//!
//! Replicas of one server over one database: only the replica holding the
//! `driver` lease collects (this task also holds that lease, see
//! [`super::lease`]), each step under the endpoint's seal lease, so that no
//! seal running on another replica loses a report under it.

use std::sync::Arc;
use std::time::Duration;

use super::lease::{hold_driver_lease, seal_lease};
use crate::server::AppState;

/// Most reports deleted per transaction: a few milliseconds of the writer, so
/// that report groups commit in between.
const PER_TRANSACTION: usize = 2_000;

/// Holds (or waits for) the `driver` lease and, while this replica holds it,
/// collects reports past the window, until shutdown.
pub(in crate::server) async fn expire_reports(state: Arc<AppState>) {
    tokio::join!(hold_driver_lease(state.clone()), collect(state));
}

/// Collects reports past the window, until shutdown: every tenth of the window
/// (100 ms to a minute, on the server's clock), one endpoint at a time under its
/// seal lock and lease, one small transaction at a time, so that a proposal being
/// made or answered never loses a report under it (a seal in progress keeps its
/// reports).
async fn collect(state: Arc<AppState>) {
    let window = state.config.endpoints.report_window();
    let every = (window.max_age / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        state.clock.sleep_until(state.clock.now() + every).await;
        let now = state.clock.now();
        let keep_from = window.keep_from(now);
        let received_before = now.checked_sub(window.max_age).unwrap_or(now);
        if !state.sealer.driving() {
            continue;
        }
        for live in state.registry.endpoints() {
            let endpoint = live.endpoint.id;
            let mut collected = 0;
            loop {
                let step = {
                    let sealing = state.sealer.lock(endpoint).lock_owned().await;
                    match state
                        .sealer
                        .take_lease(&state.storage, seal_lease(endpoint))
                        .await
                    {
                        Ok(Some(mut lease)) => {
                            lease.hold(sealing);
                            state
                                .storage
                                .collect_reports(
                                    endpoint,
                                    keep_from,
                                    received_before,
                                    PER_TRANSACTION,
                                )
                                .await
                        }
                        // A seal of it runs on another replica: the next round.
                        Ok(None) => break,
                        Err(e) => Err(e),
                    }
                };
                match step {
                    Ok(step) => {
                        collected += step.reports;
                        if !step.more {
                            break;
                        }
                    }
                    Err(crate::storage::StorageError::Closed) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "collecting reports past the window failed");
                        break;
                    }
                }
                // Let the requests queued meanwhile go first.
                tokio::task::yield_now().await;
            }
            if collected > 0 {
                tracing::info!(
                    endpoint = %live.endpoint.record.name,
                    collected,
                    "reports past the report window deleted"
                );
            }
        }
    }
}
