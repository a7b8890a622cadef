//! Seals and batches on PostgreSQL: the storage steps of the seal protocol, with
//! the outcomes of the SQLite backend (`storage::sqlite::sql`) and the same
//! encodings of a seal's rows, positions and messages.
//!
//! Several replicas of one server share the database and may run steps of the
//! same seal at once (a retried commit arriving at another replica), so every
//! step that checks before it writes is one transaction holding a lock on what it
//! checks: [`PgBackend::commit_batch`] and [`PgBackend::delete_batch`] lock the
//! endpoint's row (`FOR NO KEY UPDATE`, which the foreign key checks of ingest
//! never wait for), [`PgBackend::put_seal`] is one upsert that locks the
//! endpoint's seal. Rows travel as `bigint[]` parameters a chunk at a time, never
//! as one statement per row, and long reads come a page at a time, so a seal of a
//! million reports holds no more than a page of driver rows.

use std::time::SystemTime;

use deadpool_postgres::{Client, Transaction};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use super::PgBackend;
use crate::storage::sqlite::sql::{
    decode_batch, decode_rows, encode_batch, encode_rows, from_millis, to_millis,
};
use crate::storage::*;

/// `reports.batch_id` of a report whose validity proof failed.
const REJECTED: i64 = -2;

/// Most rows named in one statement (a `bigint[]` of 128 KiB), and most rows
/// read per round trip.
const CHUNK: usize = 16_384;

/// Most rows marked by one statement of a commit: fewer round trips for the
/// million rows of a large batch, at 512 KiB per parameter.
const MARK_CHUNK: usize = 65_536;

const SEAL_COLUMNS: &str = "endpoint_id, batch_id, decided, positions, rows, created_at, \
     seal_number, rejected_positions, rejected_rows, messages";

const BATCH_COLUMNS: &str = "batch_id, count, sealed_at, rejected, first_report_at, last_report_at";

/// A 16-byte id read from the database.
fn id16(bytes: &[u8], what: &'static str) -> Result<[u8; 16], StorageError> {
    <[u8; 16]>::try_from(bytes).map_err(|_| StorageError::OutOfRange(what))
}

fn seal(row: &Row) -> Result<Seal, StorageError> {
    let verification = match (
        row.try_get::<_, Option<Vec<u8>>>(7)?,
        row.try_get::<_, Option<&[u8]>>(8)?,
        row.try_get::<_, Option<&[u8]>>(9)?,
    ) {
        (Some(rejected_positions), Some(rejected_rows), Some(messages)) => Some(Verification {
            rejected_positions,
            rejected_rows: decode_rows(rejected_rows)?,
            messages: decode_batch(messages)?,
        }),
        _ => None,
    };
    Ok(Seal {
        endpoint: EndpointId(row.try_get(0)?),
        batch_id: id16(row.try_get(1)?, "a batch id")?,
        decided: row.try_get(2)?,
        positions: row.try_get(3)?,
        rows: decode_rows(row.try_get(4)?)?,
        created_at: from_millis(row.try_get(5)?),
        seal_number: u64::try_from(row.try_get::<_, i64>(6)?).unwrap_or(0),
        verification,
    })
}

fn batch_info(row: &Row) -> Result<BatchInfo, StorageError> {
    let first: Option<i64> = row.try_get(4)?;
    let last: Option<i64> = row.try_get(5)?;
    Ok(BatchInfo {
        batch_id: id16(row.try_get(0)?, "a batch id")?,
        count: u64::try_from(row.try_get::<_, i64>(1)?).unwrap_or(0),
        sealed_at: from_millis(row.try_get(2)?),
        rejected: u64::try_from(row.try_get::<_, i64>(3)?).unwrap_or(0),
        span: first
            .zip(last)
            .map(|(f, l)| (from_millis(f), from_millis(l))),
    })
}

fn batch(row: &Row) -> Result<Batch, StorageError> {
    Ok(Batch {
        info: batch_info(row)?,
        share: row.try_get(6)?,
    })
}

/// Visits the stored rows `rows` (ascending) of an endpoint with `column` read
/// (column 1 of the visited row), a chunk per statement; `visit` answers whether
/// to go on. Fails with [`StorageError::ReportUnavailable`] if a wanted row is not
/// the endpoint's (or the rows were not sorted, or one is listed twice), as
/// SQLite's `visit_rows`.
///
/// A chunk whose rows are dense (a seal's usually are: arrival order) is read
/// as one range of the primary key, the rows in it not wanted skipped here;
/// a sparse one by its list, one index probe per row.
async fn visit_rows(
    client: &Client,
    endpoint: EndpointId,
    rows: &[i64],
    column: &str,
    mut visit: impl FnMut(&Row) -> Result<bool, StorageError>,
) -> Result<(), StorageError> {
    if rows.is_empty() {
        return Ok(());
    }
    let listed = client
        .prepare_cached(&format!(
            "SELECT id, {column} FROM reports WHERE id = ANY($1::bigint[]) AND endpoint_id = $2 \
             ORDER BY id"
        ))
        .await?;
    let ranged = client
        .prepare_cached(&format!(
            "SELECT id, {column} FROM reports WHERE id BETWEEN $1 AND $2 AND endpoint_id = $3 \
             ORDER BY id"
        ))
        .await?;
    let mut wanted = rows.iter().peekable();
    for chunk in rows.chunks(CHUNK) {
        let (first, last) = (chunk[0], chunk[chunk.len() - 1]);
        let dense = last
            .checked_sub(first)
            .is_some_and(|span| span < 2 * chunk.len() as i64);
        let stored = if dense {
            client.query(&ranged, &[&first, &last, &endpoint.0]).await?
        } else {
            client.query(&listed, &[&chunk, &endpoint.0]).await?
        };
        for row in &stored {
            let Some(&&next) = wanted.peek() else { break };
            let id: i64 = row.try_get(0)?;
            if id < next {
                continue;
            }
            // Rows only go up: a wanted row passed over is not the endpoint's.
            if id > next {
                return Err(StorageError::ReportUnavailable);
            }
            if !visit(row)? {
                return Ok(());
            }
            wanted.next();
        }
    }
    if wanted.peek().is_some() {
        return Err(StorageError::ReportUnavailable);
    }
    Ok(())
}

/// What [`mark_rows`] marked: how many, and the earliest and latest time they were
/// received (Unix milliseconds).
#[derive(Default)]
struct Marked {
    count: u64,
    span: Option<(i64, i64)>,
}

/// Marks the unbatched reports at `rows` of an endpoint with `batch_id` (a batch's
/// row, or [`REJECTED`]), deleting what they no longer need, in `tx`. A row
/// another transaction marks first is waited for and then skipped (no longer
/// unbatched), so a report never ends in two batches.
async fn mark_rows(
    tx: &Transaction<'_>,
    endpoint: EndpointId,
    rows: &[i64],
    batch_id: i64,
) -> Result<Marked, StorageError> {
    let mut marked = Marked::default();
    if rows.is_empty() {
        return Ok(marked);
    }
    let statement = tx
        .prepare_cached(
            "WITH marked AS (UPDATE reports SET batch_id = $1, share = NULL, user_key = NULL, \
             poster = NULL WHERE id = ANY($2::bigint[]) AND endpoint_id = $3 \
             AND batch_id IS NULL RETURNING received_at) \
             SELECT count(*), min(received_at), max(received_at) FROM marked",
        )
        .await?;
    for chunk in rows.chunks(MARK_CHUNK) {
        let row = tx
            .query_one(&statement, &[&batch_id, &chunk, &endpoint.0])
            .await?;
        let count: i64 = row.try_get(0)?;
        marked.count += u64::try_from(count).unwrap_or(0);
        if let (Some(low), Some(high)) = (row.try_get::<_, Option<i64>>(1)?, row.try_get(2)?) {
            marked.span = Some(
                marked
                    .span
                    .map_or((low, high), |(l, h)| (l.min(low), h.max(high))),
            );
        }
    }
    Ok(marked)
}

/// Marks the unbatched reports at `rows` of an endpoint as rejected and counts
/// them in the endpoint's `rejected`, in `tx`; returns how many were marked.
async fn reject_in(
    tx: &Transaction<'_>,
    endpoint: EndpointId,
    rows: &[i64],
) -> Result<u64, StorageError> {
    let marked = mark_rows(tx, endpoint, rows, REJECTED).await?.count;
    if marked > 0 {
        tx.execute(
            "UPDATE endpoints SET rejected = rejected + $1 WHERE id = $2",
            &[&(marked as i64), &endpoint.0],
        )
        .await?;
    }
    Ok(marked)
}

/// Locks the endpoint's row until `tx` ends, so that steps checking its batches
/// run one at a time across replicas; whether the endpoint exists. `NO KEY`: the
/// foreign key checks of reports being stored meanwhile do not wait for it.
async fn lock_endpoint(tx: &Transaction<'_>, endpoint: EndpointId) -> Result<bool, StorageError> {
    Ok(tx
        .query_opt(
            "SELECT 1 FROM endpoints WHERE id = $1 FOR NO KEY UPDATE",
            &[&endpoint.0],
        )
        .await?
        .is_some())
}

/// A batch committed on this server, held or deleted by an admin since.
async fn committed_in(
    client: &impl deadpool_postgres::GenericClient,
    endpoint: EndpointId,
    batch_id: &[u8; 16],
) -> Result<Option<BatchInfo>, StorageError> {
    client
        .query_opt(
            &format!(
                "SELECT {BATCH_COLUMNS} FROM batches WHERE endpoint_id = $1 AND batch_id = $2 \
                 UNION ALL \
                 SELECT {BATCH_COLUMNS} FROM deleted_batches WHERE endpoint_id = $1 \
                 AND batch_id = $2 LIMIT 1"
            ),
            &[&endpoint.0, &&batch_id[..]],
        )
        .await?
        .as_ref()
        .map(batch_info)
        .transpose()
}

impl PgBackend {
    /// See [`crate::storage::Storage::unbatched_reports`].
    pub(crate) async fn unbatched_reports(
        &self,
        endpoint: EndpointId,
        after_row: i64,
        limit: usize,
    ) -> Result<Vec<SealReport>, StorageError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT id, report_id FROM reports WHERE endpoint_id = $1 AND batch_id IS NULL \
                 AND id > $2 ORDER BY id LIMIT $3",
            )
            .await?;
        // A page per round trip from the partial index, so that the driver holds
        // one page of rows, not a million.
        let mut reports = Vec::new();
        let mut after = after_row;
        while reports.len() < limit {
            let page = (limit - reports.len()).min(CHUNK);
            let found = client
                .query(&statement, &[&endpoint.0, &after, &(page as i64)])
                .await?;
            reports.reserve(found.len());
            for row in &found {
                reports.push(SealReport {
                    row: row.try_get(0)?,
                    report_id: id16(row.try_get(1)?, "a report id")?,
                });
            }
            match reports.last() {
                Some(last) if found.len() == page => after = last.row,
                _ => break,
            }
        }
        Ok(reports)
    }

    /// See [`crate::storage::Storage::distinct_posters`].
    pub(crate) async fn distinct_posters(
        &self,
        endpoint: EndpointId,
        rows: Vec<i64>,
        enough: u64,
    ) -> Result<u64, StorageError> {
        let client = self.client().await?;
        let mut seen = std::collections::HashSet::new();
        let mut anonymous = 0u64;
        let mut count = 0;
        visit_rows(&client, endpoint, &rows, "poster", |row| {
            match row.try_get::<_, Option<&[u8]>>(1)? {
                Some(poster) => {
                    seen.insert(<[u8; 16]>::try_from(poster).unwrap_or_default());
                }
                None => anonymous += 1,
            }
            count = seen.len() as u64 + anonymous;
            Ok(count < enough)
        })
        .await?;
        Ok(count)
    }

    /// See [`crate::storage::Storage::put_seal`].
    pub(crate) async fn put_seal(&self, seal: &Seal) -> Result<(), StorageError> {
        let seal_number = i64::try_from(seal.seal_number).unwrap_or(i64::MAX);
        let rows = encode_rows(&seal.rows);
        let created_at = to_millis(seal.created_at);
        let verification = seal.verification.as_ref().map(|v| {
            (
                v.rejected_positions.clone(),
                encode_rows(&v.rejected_rows),
                encode_batch(&v.messages),
            )
        });
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Inserts, or replaces an undecided seal; a decided one stays, locked
        // (the upsert locks the row it leaves) until this transaction ends.
        let stored = tx
            .execute(
                "INSERT INTO seals (endpoint_id, batch_id, decided, positions, rows, created_at, \
                 seal_number, rejected_positions, rejected_rows, messages) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (endpoint_id) DO UPDATE SET batch_id = EXCLUDED.batch_id, \
                 decided = EXCLUDED.decided, positions = EXCLUDED.positions, \
                 rows = EXCLUDED.rows, created_at = EXCLUDED.created_at, \
                 seal_number = EXCLUDED.seal_number, \
                 rejected_positions = EXCLUDED.rejected_positions, \
                 rejected_rows = EXCLUDED.rejected_rows, messages = EXCLUDED.messages \
                 WHERE NOT seals.decided",
                &[
                    &seal.endpoint.0,
                    &&seal.batch_id[..],
                    &seal.decided,
                    &seal.positions,
                    &rows,
                    &created_at,
                    &seal_number,
                    &verification.as_ref().map(|v| &v.0),
                    &verification.as_ref().map(|v| &v.1),
                    &verification.as_ref().map(|v| &v.2),
                ],
            )
            .await;
        let stored = match stored {
            Ok(stored) => stored,
            Err(error) if error.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                return Err(StorageError::UnknownEndpoint);
            }
            Err(error) => return Err(error.into()),
        };
        if stored == 0 {
            // A decided seal is pending: storing it again is a no-op, another one
            // must be completed first.
            let pending: Vec<u8> = tx
                .query_one(
                    "SELECT batch_id FROM seals WHERE endpoint_id = $1",
                    &[&seal.endpoint.0],
                )
                .await?
                .try_get(0)?;
            if pending != seal.batch_id {
                return Err(StorageError::SealPending);
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// See [`crate::storage::Storage::pending_seal`].
    pub(crate) async fn pending_seal(
        &self,
        endpoint: EndpointId,
    ) -> Result<Option<Seal>, StorageError> {
        let client = self.client().await?;
        client
            .query_opt(
                &format!("SELECT {SEAL_COLUMNS} FROM seals WHERE endpoint_id = $1"),
                &[&endpoint.0],
            )
            .await?
            .as_ref()
            .map(seal)
            .transpose()
    }

    /// See [`crate::storage::Storage::decided_seals`].
    pub(crate) async fn decided_seals(&self) -> Result<Vec<Seal>, StorageError> {
        let client = self.client().await?;
        client
            .query(
                &format!("SELECT {SEAL_COLUMNS} FROM seals WHERE decided ORDER BY created_at"),
                &[],
            )
            .await?
            .iter()
            .map(seal)
            .collect()
    }

    /// See [`crate::storage::Storage::drop_seal`].
    pub(crate) async fn drop_seal(
        &self,
        endpoint: EndpointId,
        batch_id: [u8; 16],
    ) -> Result<bool, StorageError> {
        let client = self.client().await?;
        let dropped = client
            .execute(
                "DELETE FROM seals WHERE endpoint_id = $1 AND batch_id = $2",
                &[&endpoint.0, &&batch_id[..]],
            )
            .await?;
        Ok(dropped == 1)
    }

    /// See [`crate::storage::Storage::read_shares`].
    pub(crate) async fn read_shares(
        &self,
        endpoint: EndpointId,
        rows: Vec<i64>,
    ) -> Result<(Vec<u8>, Vec<u32>), StorageError> {
        let client = self.client().await?;
        let mut data = Vec::new();
        let mut ends = Vec::with_capacity(rows.len());
        visit_rows(&client, endpoint, &rows, "share", |row| {
            // A report's share is NULL exactly when it is batched, expired or
            // rejected.
            let share = row
                .try_get::<_, Option<&[u8]>>(1)?
                .ok_or(StorageError::ReportUnavailable)?;
            data.extend_from_slice(share);
            let end = u32::try_from(data.len())
                .map_err(|_| StorageError::OutOfRange("shares of one chunk"))?;
            ends.push(end);
            Ok(true)
        })
        .await?;
        Ok((data, ends))
    }

    /// See [`crate::storage::Storage::report_ids`].
    pub(crate) async fn report_ids(
        &self,
        endpoint: EndpointId,
        rows: Vec<i64>,
    ) -> Result<Vec<[u8; 16]>, StorageError> {
        let client = self.client().await?;
        let mut ids = Vec::with_capacity(rows.len());
        visit_rows(&client, endpoint, &rows, "report_id", |row| {
            ids.push(id16(row.try_get(1)?, "a report id")?);
            Ok(true)
        })
        .await?;
        Ok(ids)
    }

    /// See [`crate::storage::Storage::commit_batch`].
    pub(crate) async fn commit_batch(
        &self,
        endpoint: EndpointId,
        batch: NewBatch,
        mut rows: Vec<i64>,
    ) -> Result<CommitOutcome, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // A second commit of this batch (from another replica) waits here for the
        // first to end, and then finds its batch.
        let known = lock_endpoint(&tx, endpoint).await?;
        if let Some(existing) = committed_in(&tx, endpoint, &batch.batch_id).await? {
            return Ok(CommitOutcome::AlreadyCommitted(existing));
        }
        if rows.is_empty() {
            return Err(StorageError::OutOfRange("an empty batch"));
        }
        if !known {
            return Err(StorageError::UnknownEndpoint);
        }
        let count = rows.len() as u64;
        let rejected = batch.rejected_rows.len() as u64;
        let sealed_at = to_millis(batch.sealed_at);
        let batch_row: i64 = tx
            .query_one(
                "INSERT INTO batches (endpoint_id, batch_id, count, sealed_at, share, rejected) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[
                    &endpoint.0,
                    &&batch.batch_id[..],
                    &(count as i64),
                    &sealed_at,
                    &batch.share,
                    &(rejected as i64),
                ],
            )
            .await?
            .try_get(0)?;
        rows.sort_unstable();
        let marked = mark_rows(&tx, endpoint, &rows, batch_row).await?;
        if marked.count != count {
            // A report is already batched, gone, not the endpoint's or listed
            // twice: dropping the transaction keeps nothing of this batch.
            return Err(StorageError::ReportUnavailable);
        }
        if let Some((first, last)) = marked.span {
            tx.execute(
                "UPDATE batches SET first_report_at = $1, last_report_at = $2 WHERE id = $3",
                &[&first, &last, &batch_row],
            )
            .await?;
        }
        let mut rejected_rows = batch.rejected_rows;
        rejected_rows.sort_unstable();
        if reject_in(&tx, endpoint, &rejected_rows).await? != rejected {
            return Err(StorageError::ReportUnavailable);
        }
        // A reservation for this batch is done with; a decision stays until the
        // coordinator knows every follower committed too.
        tx.execute(
            "DELETE FROM seals WHERE endpoint_id = $1 AND batch_id = $2 AND NOT decided",
            &[&endpoint.0, &&batch.batch_id[..]],
        )
        .await?;
        tx.commit().await?;
        Ok(CommitOutcome::Committed(BatchInfo {
            batch_id: batch.batch_id,
            count,
            rejected,
            sealed_at: from_millis(sealed_at),
            span: marked.span.map(|(f, l)| (from_millis(f), from_millis(l))),
        }))
    }

    /// See [`crate::storage::Storage::reject_reports`].
    pub(crate) async fn reject_reports(
        &self,
        endpoint: EndpointId,
        rows: Vec<i64>,
    ) -> Result<u64, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The endpoint's row first, as a commit takes it: a rejection and a
        // commit of overlapping rows then wait for each other instead of
        // deadlocking (rows, then the endpoint's count, against the reverse).
        lock_endpoint(&tx, endpoint).await?;
        let marked = reject_in(&tx, endpoint, &rows).await?;
        tx.commit().await?;
        Ok(marked)
    }

    /// See [`crate::storage::Storage::verify_key`].
    pub(crate) async fn verify_key(
        &self,
        endpoint: EndpointId,
        proposed: Option<[u8; 32]>,
    ) -> Result<Option<[u8; 32]>, StorageError> {
        let client = self.client().await?;
        if let Some(proposed) = proposed {
            // Set once: of two replicas proposing at once, the second finds the
            // first one's key (the row lock makes it re-check `IS NULL`).
            client
                .execute(
                    "UPDATE endpoints SET verify_key = $1 WHERE id = $2 AND verify_key IS NULL",
                    &[&&proposed[..], &endpoint.0],
                )
                .await?;
        }
        let row = client
            .query_opt(
                "SELECT verify_key FROM endpoints WHERE id = $1",
                &[&endpoint.0],
            )
            .await?
            .ok_or(StorageError::UnknownEndpoint)?;
        row.try_get::<_, Option<&[u8]>>(0)?
            .map(|key| <[u8; 32]>::try_from(key).map_err(|_| StorageError::OutOfRange("a key")))
            .transpose()
    }

    /// See [`crate::storage::Storage::list_batches`].
    pub(crate) async fn list_batches(
        &self,
        endpoint: EndpointId,
    ) -> Result<Vec<BatchInfo>, StorageError> {
        let client = self.client().await?;
        client
            .query(
                &format!("SELECT {BATCH_COLUMNS} FROM batches WHERE endpoint_id = $1 ORDER BY id"),
                &[&endpoint.0],
            )
            .await?
            .iter()
            .map(batch_info)
            .collect()
    }

    /// See [`crate::storage::Storage::get_batch`].
    pub(crate) async fn get_batch(
        &self,
        endpoint: EndpointId,
        batch_id: [u8; 16],
    ) -> Result<Option<Batch>, StorageError> {
        let client = self.client().await?;
        client
            .query_opt(
                &format!(
                    "SELECT {BATCH_COLUMNS}, share FROM batches \
                     WHERE endpoint_id = $1 AND batch_id = $2"
                ),
                &[&endpoint.0, &&batch_id[..]],
            )
            .await?
            .as_ref()
            .map(batch)
            .transpose()
    }

    /// See [`crate::storage::Storage::all_batches`].
    pub(crate) async fn all_batches(
        &self,
        endpoint: EndpointId,
    ) -> Result<Vec<Batch>, StorageError> {
        let client = self.client().await?;
        client
            .query(
                &format!(
                    "SELECT {BATCH_COLUMNS}, share FROM batches WHERE endpoint_id = $1 ORDER BY id"
                ),
                &[&endpoint.0],
            )
            .await?
            .iter()
            .map(batch)
            .collect()
    }

    /// See [`crate::storage::Storage::delete_batch`].
    pub(crate) async fn delete_batch(
        &self,
        endpoint: EndpointId,
        batch_id: [u8; 16],
        now: SystemTime,
    ) -> Result<DeleteBatchOutcome, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // One at a time with commits of the endpoint's batches.
        lock_endpoint(&tx, endpoint).await?;
        let sealing: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM seals WHERE endpoint_id = $1 AND batch_id = $2 \
                 AND decided)",
                &[&endpoint.0, &&batch_id[..]],
            )
            .await?
            .try_get(0)?;
        if sealing {
            return Ok(DeleteBatchOutcome::NotReleased);
        }
        let deleted = tx
            .query_opt(
                &format!(
                    "WITH gone AS (DELETE FROM batches WHERE endpoint_id = $1 AND batch_id = $2 \
                     RETURNING endpoint_id, {BATCH_COLUMNS}) \
                     INSERT INTO deleted_batches (endpoint_id, batch_id, count, sealed_at, \
                     rejected, first_report_at, last_report_at, deleted_at) \
                     SELECT endpoint_id, {BATCH_COLUMNS}, $3 FROM gone \
                     RETURNING {BATCH_COLUMNS}"
                ),
                &[&endpoint.0, &&batch_id[..], &to_millis(now)],
            )
            .await?;
        let outcome = match deleted.as_ref().map(batch_info).transpose()? {
            Some(info) => DeleteBatchOutcome::Deleted(info),
            None => DeleteBatchOutcome::Unknown,
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// See [`crate::storage::Storage::committed_batch`].
    pub(crate) async fn committed_batch(
        &self,
        endpoint: EndpointId,
        batch_id: [u8; 16],
    ) -> Result<Option<BatchInfo>, StorageError> {
        let client = self.client().await?;
        committed_in(&client, endpoint, &batch_id).await
    }
}
