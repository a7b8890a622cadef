//! Expiry of unbatched reports, never under a seal in progress.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::server::AppState;

/// Expires unbatched reports past the retention, until shutdown: one endpoint at
/// a time under its seal lock, so that a proposal being made or answered is never
/// expired under a seal (and a seal in progress keeps its reports).
pub(in crate::server) async fn expire_reports(state: Arc<AppState>) {
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
