//! Committing a batch on this server: fold the shares of the agreed reports in
//! chunks, release once, store.

use std::sync::Arc;

use crate::server::AppState;
use crate::server::error::ApiError;
use crate::server::registry::LiveEndpoint;
use guardian_sdk::raw::Batch;

use super::verify::fold_verified;
use crate::storage::{BatchInfo, NewBatch};

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

/// What the verification round of a robust endpoint's seal decided, as a server
/// needs it to commit: the verifier message of each committed report (in the
/// order of its rows) and the rows of the rejected reports.
pub(super) struct Checked {
    pub(super) messages: Batch,
    pub(super) rejected_rows: Vec<i64>,
}

/// Folds, releases and stores the batch of the reports at `rows` on this server
/// (verified with `checked` for a robust endpoint); a no-op if already stored.
pub(super) async fn commit_locally(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    batch_id: [u8; 16],
    mut rows: Vec<i64>,
    checked: Option<Checked>,
) -> Result<BatchInfo, ApiError> {
    let endpoint = live.endpoint.id;
    // Held, or released and deleted by an admin since: never released again.
    if let Some(info) = state.storage.committed_batch(endpoint, batch_id).await? {
        return Ok(info);
    }
    let count = rows.len() as u64;
    let registry = &state.registry;
    let call_live = live.clone();
    let mut agg = registry
        .call("init", move || {
            call_live.plugin.init(&call_live.endpoint.record.config)
        })
        .await?;
    let rejected_rows = match checked {
        Some(checked) => {
            agg = fold_verified(state, live, agg, &rows, &checked.messages).await?;
            checked.rejected_rows
        }
        None => {
            // Folding is order-free; reading is fastest in storage order.
            rows.sort_unstable();
            agg = fold(state, live, agg, &rows).await?;
            Vec::new()
        }
    };
    // Drawn once: the released share is stored and never computed again. The
    // seed is this server's secret function of the batch, so a server restored
    // from a backup that releases the batch again (from the same reports)
    // releases the same bytes rather than a second draw of the noise.
    let seed = state.storage.release_seed(endpoint, batch_id);
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
                sealed_at: state.clock.now(),
                rejected_rows,
            },
            rows,
        )
        .await?;
    tracing::info!(endpoint = %live.endpoint.record.name, batch = %hex::encode(batch_id), count, "batch committed");
    Ok(outcome.info())
}

/// Folds the shares of the reports at `rows` (ascending) into `agg`.
async fn fold(
    state: &Arc<AppState>,
    live: &Arc<LiveEndpoint>,
    mut agg: Vec<u8>,
    rows: &[i64],
) -> Result<Vec<u8>, ApiError> {
    let endpoint = live.endpoint.id;
    for chunk in rows.chunks(FOLD_CHUNK) {
        let (data, ends) = state.storage.read_shares(endpoint, chunk.to_vec()).await?;
        let call_live = live.clone();
        agg = state
            .registry
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
    Ok(agg)
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
