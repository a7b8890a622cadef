//! What the replicas of one share server coordinate through the database:
//! leases (one seal per endpoint, one replica driving the background work),
//! the seal numbers of each endpoint, and the verifier messages a follower holds
//! for a robust batch's commit, which may reach another replica than its
//! messages did.
//!
//! Only plain statements and row locks: an upsert whose `WHERE` decides who
//! holds a lease (`INSERT … ON CONFLICT … DO UPDATE … WHERE`), conditional
//! `UPDATE … RETURNING` for the seal numbers, `SELECT … FOR UPDATE` of the
//! endpoint's row to serialise the parts of one batch's messages. Times are the
//! database's clock (`clock_timestamp()`), so the replicas' clocks never have to
//! agree.

use std::time::Duration;

use super::PgBackend;
use crate::storage::{EndpointId, StorageError};

/// The database's clock in Unix milliseconds.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// The database's clock in Unix microseconds.
const NOW_US: &str = "(extract(epoch from clock_timestamp()) * 1000000)::bigint";

/// A number as stored in a `bigint` column.
fn stored(value: u64, what: &'static str) -> Result<i64, StorageError> {
    i64::try_from(value).map_err(|_| StorageError::OutOfRange(what))
}

impl PgBackend {
    /// See [`crate::storage::Storage::try_lease`].
    pub(crate) async fn try_lease(
        &self,
        name: String,
        holder: String,
        ttl: Duration,
    ) -> Result<bool, StorageError> {
        let ttl = i64::try_from(ttl.as_millis()).map_err(|_| StorageError::OutOfRange("ttl"))?;
        let client = self.client().await?;
        // The conflicting row is locked and the WHERE evaluated on its latest
        // version: of two replicas taking a free lease at once, one wins.
        let changed = client
            .execute(
                &format!(
                    "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, {NOW_MS} + $3) \
                     ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, \
                         expires_at = EXCLUDED.expires_at \
                     WHERE leases.holder = EXCLUDED.holder OR leases.expires_at <= {NOW_MS}"
                ),
                &[&name, &holder, &ttl],
            )
            .await?;
        Ok(changed == 1)
    }

    /// See [`crate::storage::Storage::release_lease`].
    pub(crate) async fn release_lease(
        &self,
        name: String,
        holder: String,
    ) -> Result<bool, StorageError> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "DELETE FROM leases WHERE name = $1 AND holder = $2",
                &[&name, &holder],
            )
            .await?;
        Ok(changed == 1)
    }

    /// See [`crate::storage::Storage::next_seal_number`].
    pub(crate) async fn next_seal_number(&self, endpoint: EndpointId) -> Result<u64, StorageError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE endpoints SET seal_number = GREATEST(seal_number + 1, {NOW_US}) \
                     WHERE id = $1 RETURNING seal_number"
                ),
                &[&endpoint.0],
            )
            .await?
            .ok_or(StorageError::UnknownEndpoint)?;
        Ok(row.try_get::<_, i64>(0)?.max(0) as u64)
    }

    /// See [`crate::storage::Storage::claim_seal_number`].
    pub(crate) async fn claim_seal_number(
        &self,
        endpoint: EndpointId,
        number: u64,
    ) -> Result<Option<u64>, StorageError> {
        let number = stored(number, "seal number")?;
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE endpoints SET seal_number = $2 WHERE id = $1 AND seal_number < $2",
                &[&endpoint.0, &number],
            )
            .await?;
        if changed == 1 {
            return Ok(None);
        }
        let row = client
            .query_opt(
                "SELECT seal_number FROM endpoints WHERE id = $1",
                &[&endpoint.0],
            )
            .await?
            .ok_or(StorageError::UnknownEndpoint)?;
        Ok(Some(row.try_get::<_, i64>(0)?.max(0) as u64))
    }

    /// See [`crate::storage::Storage::hold_messages`].
    pub(crate) async fn hold_messages(
        &self,
        endpoint: EndpointId,
        (batch_id, seal): ([u8; 16], u64),
        from: u64,
        count: u64,
        messages: Vec<u8>,
    ) -> Result<Result<u64, u64>, StorageError> {
        let (seal, first, count) = (
            stored(seal, "seal number")?,
            stored(from, "message position")?,
            stored(count, "message count")?,
        );
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The endpoint's row lock orders the parts of one batch, whichever
        // replicas receive them.
        tx.query_opt(
            "SELECT 1 FROM endpoints WHERE id = $1 FOR UPDATE",
            &[&endpoint.0],
        )
        .await?
        .ok_or(StorageError::UnknownEndpoint)?;
        if first == 0 {
            tx.execute(
                "DELETE FROM held_messages WHERE endpoint_id = $1",
                &[&endpoint.0],
            )
            .await?;
        } else {
            let row = tx
                .query_one(
                    "SELECT coalesce(sum(count) FILTER (WHERE batch_id = $2 AND seal_number = $3), 0)::bigint, \
                         count(*) FILTER (WHERE batch_id <> $2 OR seal_number <> $3) \
                     FROM held_messages WHERE endpoint_id = $1",
                    &[&endpoint.0, &&batch_id[..], &seal],
                )
                .await?;
            let (held, others): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
            if others > 0 || held != first {
                return Ok(Err(held.max(0) as u64));
            }
        }
        tx.execute(
            "INSERT INTO held_messages (endpoint_id, first, batch_id, seal_number, count, messages) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&endpoint.0, &first, &&batch_id[..], &seal, &count, &messages],
        )
        .await?;
        tx.commit().await?;
        Ok(Ok((first + count) as u64))
    }

    /// See [`crate::storage::Storage::held_messages`].
    pub(crate) async fn held_messages(
        &self,
        endpoint: EndpointId,
        (batch_id, seal): ([u8; 16], u64),
    ) -> Result<(u64, Vec<Vec<u8>>), StorageError> {
        let seal = stored(seal, "seal number")?;
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT count, messages FROM held_messages \
                 WHERE endpoint_id = $1 AND batch_id = $2 AND seal_number = $3 ORDER BY first",
                &[&endpoint.0, &&batch_id[..], &seal],
            )
            .await?;
        let (mut count, mut parts) = (0u64, Vec::with_capacity(rows.len()));
        for row in rows {
            count += row.try_get::<_, i64>(0)?.max(0) as u64;
            parts.push(row.try_get(1)?);
        }
        Ok((count, parts))
    }

    /// See [`crate::storage::Storage::drop_held_messages`].
    pub(crate) async fn drop_held_messages(
        &self,
        endpoint: EndpointId,
    ) -> Result<(), StorageError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM held_messages WHERE endpoint_id = $1",
                &[&endpoint.0],
            )
            .await?;
        Ok(())
    }
}
