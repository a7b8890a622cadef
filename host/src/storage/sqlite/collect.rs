//! Collection of what the report window no longer needs: the rows, shares and ids
//! of reports made before the window (see [`crate::report_id`]), batched or not,
//! a few thousand per transaction so that report groups commit in between.
//!
//! Servers refuse a report whose id is older than the window, so once a report
//! is that old its id is no longer needed to catch a replay, and its row and share
//! go too (a batched report's contribution lives on in its batch's released share;
//! an unbatched one can no longer be sealed everywhere). Because ids start with
//! their time, the ids to delete are one range of `report_ids`' primary key, plus
//! those still waiting in the writer's memory. Rows stored before ids carried
//! their time (up to `report_window.legacy_through`) are collected by their arrival
//! time instead. Nothing is collected while the endpoint has a seal in progress: a
//! proposed, reserved or decided report stays until its seal ends.

use std::time::SystemTime;

use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::ids::ReportIds;
use super::writer::Command;
use super::{SqliteBackend, sql};
use crate::storage::{Collected, EndpointId, StorageError};

/// Deletes at most `limit` reports of `endpoint` made before `keep_from` (and
/// legacy rows received before `received_before`, Unix milliseconds) in one
/// transaction, then forgets their ids; drops the id filters of spans before
/// `keep_from`.
pub(crate) fn collect(
    conn: &mut Connection,
    ids: &mut ReportIds,
    endpoint: EndpointId,
    keep_from: &[u8; 16],
    received_before: i64,
    limit: usize,
) -> Result<Collected, StorageError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let sealing: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM seals WHERE endpoint_id = ?1)")?
        .query_row([endpoint.0], |row| row.get(0))?;
    if sealing {
        return Ok(Collected {
            reports: 0,
            more: false,
        });
    }
    let legacy_through: i64 = tx
        .prepare_cached("SELECT legacy_through FROM report_window WHERE singleton = 0")?
        .query_row([], |row| row.get(0))?;
    let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
    // The ids older than the window: a range of the primary key. Legacy rows'
    // random ids may fall in it too; they go by their arrival time below.
    let mut doomed: Vec<([u8; 16], i64)> = tx
        .prepare_cached(
            "SELECT report_id, row FROM report_ids \
             WHERE endpoint_id = ?1 AND report_id < ?2 AND row > ?3 LIMIT ?4",
        )?
        .query_map(
            params![endpoint.0, &keep_from[..], legacy_through, limit_sql],
            |row| Ok((row.get::<_, [u8; 16]>(0)?, row.get(1)?)),
        )?
        .collect::<rusqlite::Result<_>>()?;
    let room = limit.saturating_sub(doomed.len());
    doomed.extend(ids.waiting_before(endpoint, keep_from, legacy_through, room));
    let room = limit.saturating_sub(doomed.len());
    if room > 0 && legacy_through > 0 {
        let legacy: Vec<([u8; 16], i64)> = tx
            .prepare_cached(
                "SELECT report_id, id FROM reports \
                 WHERE endpoint_id = ?1 AND id <= ?2 AND received_at < ?3 LIMIT ?4",
            )?
            .query_map(
                params![
                    endpoint.0,
                    legacy_through,
                    received_before,
                    i64::try_from(room).unwrap_or(i64::MAX)
                ],
                |row| Ok((row.get::<_, [u8; 16]>(0)?, row.get(1)?)),
            )?
            .collect::<rusqlite::Result<_>>()?;
        doomed.extend(legacy);
    }
    let mut deleted = 0u64;
    {
        let mut delete_row =
            tx.prepare_cached("DELETE FROM reports WHERE id = ?1 AND endpoint_id = ?2")?;
        let mut delete_id = tx.prepare_cached(
            "DELETE FROM report_ids WHERE endpoint_id = ?1 AND report_id = ?2 AND row = ?3",
        )?;
        for (report_id, row) in &doomed {
            deleted += delete_row.execute(params![row, endpoint.0])? as u64;
            delete_id.execute(params![endpoint.0, &report_id[..], row])?;
        }
    }
    if deleted > 0 {
        tx.prepare_cached("UPDATE endpoints SET collected = collected + ?1 WHERE id = ?2")?
            .execute(params![deleted, endpoint.0])?;
    }
    tx.commit()?;
    let forgotten: Vec<[u8; 16]> = doomed.iter().map(|(report_id, _)| *report_id).collect();
    ids.forget(endpoint, &forgotten);
    ids.forget_before(keep_from);
    Ok(Collected {
        reports: deleted,
        more: doomed.len() >= limit,
    })
}

impl SqliteBackend {
    /// See [`crate::storage::Storage::collect_reports`].
    pub(crate) async fn collect_reports(
        &self,
        endpoint: EndpointId,
        keep_from: [u8; 16],
        received_before: SystemTime,
        limit: usize,
    ) -> Result<Collected, StorageError> {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StorageError::Closed);
        }
        let received_before = sql::to_millis(received_before);
        let (reply, result) = oneshot::channel();
        self.commands
            .send(Command::IdsJob(Box::new(move |conn, ids| {
                let _ = reply.send(collect(
                    conn,
                    ids,
                    endpoint,
                    &keep_from,
                    received_before,
                    limit,
                ));
            })))
            .await
            .map_err(|_| StorageError::Closed)?;
        result.await.map_err(|_| StorageError::Closed)?
    }

    /// How many spans of id time the writer keeps filters for (tests: memory
    /// follows the window).
    #[cfg(test)]
    pub(crate) async fn id_filter_spans(&self) -> Result<usize, StorageError> {
        let (reply, result) = oneshot::channel();
        self.commands
            .send(Command::IdsJob(Box::new(move |_, ids| {
                let _ = reply.send(ids.filter_spans());
            })))
            .await
            .map_err(|_| StorageError::Closed)?;
        result.await.map_err(|_| StorageError::Closed)
    }
}
