//! Reports in PostgreSQL: the inserts, which go to the group-committing writer
//! (`writer`), and the report lifecycle outside seals: expiry and the report
//! window's collection, with the rules of SQLite's `sql::expire_reports` and
//! `collect`.

use std::time::SystemTime;

use tokio::sync::oneshot;

use super::PgBackend;
use super::writer::Answer;
use crate::storage::sqlite::sql::to_millis;
use crate::storage::{Collected, EndpointId, InsertReportOutcome, NewReport, StorageError};

/// `reports.batch_id` of a report that expired unbatched.
const EXPIRED: i64 = -1;

/// Awaits a queued report's outcome; a dropped reply means the writer task
/// ended before answering.
async fn outcome(queued: oneshot::Receiver<Answer>) -> Answer {
    queued.await.unwrap_or(Err(StorageError::Closed))
}

impl PgBackend {
    /// See [`crate::storage::Storage::close`].
    pub(crate) async fn close(&self) -> Result<(), StorageError> {
        self.writer.close().await?;
        self.pool.close();
        Ok(())
    }

    /// Stores one report: see [`crate::storage::Storage::insert_report`] and its
    /// `quota` and `poster` variants.
    pub(crate) async fn insert(
        &self,
        endpoint: EndpointId,
        received_at: SystemTime,
        report: NewReport,
    ) -> Result<InsertReportOutcome, StorageError> {
        let queued = self
            .writer
            .queue(
                endpoint,
                report.report_id,
                report.share,
                to_millis(received_at),
                report.quota,
                report.poster,
            )
            .await?;
        outcome(queued).await
    }

    /// See [`crate::storage::Storage::insert_reports`].
    pub(crate) async fn insert_reports(
        &self,
        endpoint: EndpointId,
        received_at: SystemTime,
        reports: Vec<NewReport>,
    ) -> Vec<Result<InsertReportOutcome, StorageError>> {
        let received_at = to_millis(received_at);
        // Everything is queued before anything is awaited, so the writers find the
        // reports together; a report that cannot be queued gets its error.
        let mut queued = Vec::with_capacity(reports.len());
        for report in reports {
            queued.push(
                self.writer
                    .queue(
                        endpoint,
                        report.report_id,
                        report.share,
                        received_at,
                        report.quota,
                        report.poster,
                    )
                    .await,
            );
        }
        let mut outcomes = Vec::with_capacity(queued.len());
        for queued in queued {
            outcomes.push(match queued {
                Ok(queued) => outcome(queued).await,
                Err(error) => Err(error),
            });
        }
        outcomes
    }

    /// See [`crate::storage::Storage::expire_reports`].
    ///
    /// One statement, whose `NOT EXISTS` on `seals` and update see one snapshot:
    /// nothing expires while the endpoint has a seal in progress.
    pub(crate) async fn expire_reports(
        &self,
        endpoint: EndpointId,
        before: SystemTime,
    ) -> Result<u64, StorageError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "UPDATE reports SET batch_id = $1, share = NULL, user_key = NULL, poster = NULL \
                 WHERE endpoint_id = $2 AND batch_id IS NULL AND received_at < $3 \
                   AND NOT EXISTS (SELECT 1 FROM seals WHERE endpoint_id = $2)",
            )
            .await?;
        let expired = client
            .execute(&statement, &[&EXPIRED, &endpoint.0, &to_millis(before)])
            .await?;
        Ok(expired)
    }

    /// See [`crate::storage::Storage::collect_reports`].
    ///
    /// One transaction deleting at most `limit` rows and counting them in
    /// `endpoints.collected`. Every report id stored here starts with its time
    /// (there are no rows from before ids carried it, which SQLite collects by
    /// arrival time against `received_before`), so the rows to delete are one
    /// range of the unique index: `report_id < keep_from`, compared bytewise as
    /// SQLite compares blobs. `received_before` thus has nothing to select here.
    pub(crate) async fn collect_reports(
        &self,
        endpoint: EndpointId,
        keep_from: [u8; 16],
        _received_before: SystemTime,
        limit: usize,
    ) -> Result<Collected, StorageError> {
        let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let delete = tx
            .prepare_cached(
                "WITH doomed AS ( \
                   SELECT id FROM reports \
                   WHERE endpoint_id = $1 AND report_id < $2 \
                     AND NOT EXISTS (SELECT 1 FROM seals WHERE endpoint_id = $1) \
                   LIMIT $3) \
                 DELETE FROM reports r USING doomed WHERE r.id = doomed.id",
            )
            .await?;
        let deleted = tx
            .execute(&delete, &[&endpoint.0, &&keep_from[..], &limit_sql])
            .await?;
        if deleted > 0 {
            let deleted_sql = i64::try_from(deleted).unwrap_or(i64::MAX);
            tx.execute(
                "UPDATE endpoints SET collected = collected + $1 WHERE id = $2",
                &[&deleted_sql, &endpoint.0],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Collected {
            reports: deleted,
            more: usize::try_from(deleted).unwrap_or(usize::MAX) >= limit,
        })
    }

    /// The report-id filters are SQLite's: PostgreSQL's unique index answers.
    #[cfg(test)]
    pub(crate) async fn id_filter_spans(&self) -> Result<usize, StorageError> {
        Ok(0)
    }

    /// See [`crate::storage::Storage::write_failure`].
    pub(crate) fn write_failure(&self) -> Option<String> {
        self.writer.failure()
    }
}
