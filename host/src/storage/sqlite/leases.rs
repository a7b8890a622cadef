//! What replicas of one share server coordinate through the database, on SQLite:
//! leases, the seal numbers of each endpoint, and the verifier messages a
//! follower holds for a robust batch's commit. One process serves a SQLite file,
//! so these are rarely contended here; they keep the same semantics as on
//! PostgreSQL (`postgres::leases`), where replicas share them. Times come from
//! this process's clock.
//!
//! A SQLite file is served by one process at a time, so the leases a file holds
//! when it is opened were left by an earlier run (a crash, a kill): they are
//! forgotten at the first lease taken after opening, rather than waited out.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteBackend;
use super::sql::to_millis;
use super::writer::WriteHealth;
use crate::storage::{EndpointId, StorageError};

/// The open backends of this process that have forgotten their file's earlier
/// leases, each known by its writer's health (one per opening).
static FORGOTTEN: Mutex<Vec<Weak<WriteHealth>>> = Mutex::new(Vec::new());

/// A number as stored in an `INTEGER` column.
fn stored(value: u64, what: &'static str) -> Result<i64, StorageError> {
    i64::try_from(value).map_err(|_| StorageError::OutOfRange(what))
}

/// The stored seal number of `endpoint`, or [`StorageError::UnknownEndpoint`].
fn seal_number(conn: &Connection, endpoint: EndpointId) -> Result<u64, StorageError> {
    let number: Option<i64> = conn
        .prepare_cached("SELECT seal_number FROM endpoints WHERE id = ?1")?
        .query_row([endpoint.0], |row| row.get(0))
        .optional()?;
    number
        .map(|n| n.max(0) as u64)
        .ok_or(StorageError::UnknownEndpoint)
}

impl SqliteBackend {
    /// Whether this opening of the file has yet to forget the leases of earlier
    /// runs; answers true once.
    fn first_lease(&self) -> bool {
        let mut forgotten = FORGOTTEN.lock().unwrap_or_else(PoisonError::into_inner);
        forgotten.retain(|opened| opened.strong_count() > 0);
        let this = Arc::as_ptr(&self.health);
        if forgotten.iter().any(|opened| opened.as_ptr() == this) {
            return false;
        }
        forgotten.push(Arc::downgrade(&self.health));
        true
    }

    /// See [`crate::storage::Storage::try_lease`].
    pub(crate) async fn try_lease(
        &self,
        name: String,
        holder: String,
        ttl: Duration,
    ) -> Result<bool, StorageError> {
        let ttl = i64::try_from(ttl.as_millis()).map_err(|_| StorageError::OutOfRange("ttl"))?;
        let forget = self.first_lease();
        self.write(move |conn| {
            if forget {
                conn.prepare_cached("DELETE FROM leases")?.execute([])?;
            }
            let now = to_millis(SystemTime::now());
            let changed = conn
                .prepare_cached(
                    "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3 + ?4) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                         expires_at = excluded.expires_at \
                     WHERE leases.holder = excluded.holder OR leases.expires_at <= ?3",
                )?
                .execute(params![name, holder, now, ttl])?;
            Ok(changed == 1)
        })
        .await
    }

    /// See [`crate::storage::Storage::release_lease`].
    pub(crate) async fn release_lease(
        &self,
        name: String,
        holder: String,
    ) -> Result<bool, StorageError> {
        self.write(move |conn| {
            let changed = conn
                .prepare_cached("DELETE FROM leases WHERE name = ?1 AND holder = ?2")?
                .execute(params![name, holder])?;
            Ok(changed == 1)
        })
        .await
    }

    /// See [`crate::storage::Storage::next_seal_number`].
    pub(crate) async fn next_seal_number(&self, endpoint: EndpointId) -> Result<u64, StorageError> {
        self.write(move |conn| {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
            let number: Option<i64> = conn
                .prepare_cached(
                    "UPDATE endpoints SET seal_number = max(seal_number + 1, ?2) \
                     WHERE id = ?1 RETURNING seal_number",
                )?
                .query_row(params![endpoint.0, now], |row| row.get(0))
                .optional()?;
            number
                .map(|n| n.max(0) as u64)
                .ok_or(StorageError::UnknownEndpoint)
        })
        .await
    }

    /// See [`crate::storage::Storage::claim_seal_number`].
    pub(crate) async fn claim_seal_number(
        &self,
        endpoint: EndpointId,
        number: u64,
    ) -> Result<Option<u64>, StorageError> {
        let number = stored(number, "seal number")?;
        self.write(move |conn| {
            let changed = conn
                .prepare_cached(
                    "UPDATE endpoints SET seal_number = ?2 WHERE id = ?1 AND seal_number < ?2",
                )?
                .execute(params![endpoint.0, number])?;
            if changed == 1 {
                return Ok(None);
            }
            seal_number(conn, endpoint).map(Some)
        })
        .await
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
        self.write(move |conn| {
            seal_number(conn, endpoint)?;
            if first == 0 {
                conn.prepare_cached("DELETE FROM held_messages WHERE endpoint_id = ?1")?
                    .execute([endpoint.0])?;
            } else {
                let (held, others): (i64, i64) = conn
                    .prepare_cached(
                        "SELECT coalesce(sum(CASE WHEN batch_id = ?2 AND seal_number = ?3 \
                                 THEN count END), 0), \
                             count(*) FILTER (WHERE batch_id <> ?2 OR seal_number <> ?3) \
                         FROM held_messages WHERE endpoint_id = ?1",
                    )?
                    .query_row(params![endpoint.0, &batch_id[..], seal], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })?;
                if others > 0 || held != first {
                    return Ok(Err(held.max(0) as u64));
                }
            }
            conn.prepare_cached(
                "INSERT INTO held_messages \
                     (endpoint_id, first, batch_id, seal_number, count, messages) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                endpoint.0,
                first,
                &batch_id[..],
                seal,
                count,
                messages
            ])?;
            Ok(Ok((first + count) as u64))
        })
        .await
    }

    /// See [`crate::storage::Storage::held_messages`].
    pub(crate) async fn held_messages(
        &self,
        endpoint: EndpointId,
        (batch_id, seal): ([u8; 16], u64),
    ) -> Result<(u64, Vec<Vec<u8>>), StorageError> {
        let seal = stored(seal, "seal number")?;
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT count, messages FROM held_messages \
                 WHERE endpoint_id = ?1 AND batch_id = ?2 AND seal_number = ?3 ORDER BY first",
            )?;
            let mut rows = statement.query(params![endpoint.0, &batch_id[..], seal])?;
            let (mut count, mut parts) = (0u64, Vec::new());
            while let Some(row) = rows.next()? {
                count += row.get::<_, i64>(0)?.max(0) as u64;
                parts.push(row.get(1)?);
            }
            Ok((count, parts))
        })
        .await
    }

    /// See [`crate::storage::Storage::drop_held_messages`].
    pub(crate) async fn drop_held_messages(
        &self,
        endpoint: EndpointId,
    ) -> Result<(), StorageError> {
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM held_messages WHERE endpoint_id = ?1")?
                .execute([endpoint.0])?;
            Ok(())
        })
        .await
    }
}

/// The contract of the methods above ([`crate::storage::Storage::try_lease`] and
/// the rest), checked on both backends.
#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use crate::storage::test_backends::{TestDb, on_both_backends};
    use crate::storage::{
        CreateEndpointOutcome, EndpointId, EndpointRecord, PluginRecord, SealSchedule, Storage,
        StorageError,
    };

    /// A store with one endpoint; returns the endpoint's id.
    async fn with_endpoint(db: &TestDb) -> (Storage, EndpointId) {
        let storage = db.open().await;
        let wasm = b"lease test wasm".to_vec();
        let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&wasm).into();
        let created_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        storage
            .put_plugin(PluginRecord {
                digest,
                name: "sum".to_owned(),
                version: "1".to_owned(),
                description: String::new(),
                params_schema: "{}".to_owned(),
                wasm,
                builtin: false,
                created_at,
            })
            .await
            .unwrap();
        let outcome = storage
            .create_endpoint(EndpointRecord {
                name: "steps".to_owned(),
                plugin_digest: digest,
                plugin_name: "sum".to_owned(),
                params: "{}".to_owned(),
                config: b"config".to_vec(),
                config_hash: [7; 32],
                min_batch: 10,
                max_reports_per_user: None,
                created_at,
                schedule: SealSchedule::default(),
            })
            .await
            .unwrap();
        let CreateEndpointOutcome::Created(endpoint) = outcome else {
            panic!("not created: {outcome:?}")
        };
        (storage, endpoint.id)
    }

    async fn one_holder_at_a_time(db: TestDb) {
        let storage = db.open().await;
        let ttl = Duration::from_secs(60);
        assert!(storage.try_lease("driver", "a", ttl).await.unwrap());
        assert!(!storage.try_lease("driver", "b", ttl).await.unwrap());
        // Renewed by its holder; other leases are apart.
        assert!(storage.try_lease("driver", "a", ttl).await.unwrap());
        assert!(storage.try_lease("seal:1", "b", ttl).await.unwrap());
        // Released only by its holder.
        assert!(!storage.release_lease("driver", "b").await.unwrap());
        assert!(storage.release_lease("driver", "a").await.unwrap());
        assert!(storage.try_lease("driver", "b", ttl).await.unwrap());
        // An expired lease goes to whoever asks (a TTL of 0 expires at once).
        assert!(
            storage
                .try_lease("seal:2", "a", Duration::ZERO)
                .await
                .unwrap()
        );
        assert!(storage.try_lease("seal:2", "b", ttl).await.unwrap());
        assert!(!storage.try_lease("seal:2", "a", ttl).await.unwrap());
    }
    on_both_backends!(one_holder_at_a_time);

    async fn seal_numbers_only_go_up(db: TestDb) {
        let (storage, endpoint) = with_endpoint(&db).await;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let first = storage.next_seal_number(endpoint).await.unwrap();
        let second = storage.next_seal_number(endpoint).await.unwrap();
        assert!(
            first + 60_000_000 >= now,
            "{first} is not the time in µs ({now})"
        );
        assert!(second > first);
        // A follower's check: newer numbers pass once, older ones are stale.
        let newer = second + 1_000_000;
        assert_eq!(
            storage.claim_seal_number(endpoint, newer).await.unwrap(),
            None
        );
        assert_eq!(
            storage.claim_seal_number(endpoint, newer).await.unwrap(),
            Some(newer)
        );
        assert_eq!(
            storage.claim_seal_number(endpoint, second).await.unwrap(),
            Some(newer)
        );
        assert!(storage.next_seal_number(endpoint).await.unwrap() > newer);
        // Kept across a reopening.
        storage.close().await.unwrap();
        let storage = db.open().await;
        assert!(storage.next_seal_number(endpoint).await.unwrap() > newer + 1);
        let gone = EndpointId(endpoint.0 + 1);
        assert!(matches!(
            storage.next_seal_number(gone).await,
            Err(StorageError::UnknownEndpoint)
        ));
        assert!(matches!(
            storage.claim_seal_number(gone, 5).await,
            Err(StorageError::UnknownEndpoint)
        ));
    }
    on_both_backends!(seal_numbers_only_go_up);

    async fn messages_are_held_in_order(db: TestDb) {
        let (storage, endpoint) = with_endpoint(&db).await;
        let seal = ([1; 16], 5);
        let hold = |from: u64, count: u64, bytes: &[u8]| {
            storage.hold_messages(endpoint, seal, from, count, bytes.to_vec())
        };
        assert_eq!(hold(0, 2, b"ab").await.unwrap(), Ok(2));
        assert_eq!(hold(2, 1, b"c").await.unwrap(), Ok(3));
        // A part that does not follow: refused, with what is held.
        assert_eq!(hold(5, 1, b"x").await.unwrap(), Err(3));
        assert_eq!(hold(2, 1, b"x").await.unwrap(), Err(3));
        let other = storage
            .hold_messages(endpoint, ([2; 16], 6), 3, 1, b"y".to_vec())
            .await
            .unwrap();
        assert_eq!(other, Err(0));
        assert_eq!(
            storage.held_messages(endpoint, seal).await.unwrap(),
            (3, vec![b"ab".to_vec(), b"c".to_vec()])
        );
        assert_eq!(
            storage.held_messages(endpoint, (seal.0, 4)).await.unwrap(),
            (0, vec![])
        );
        // Another batch's first part replaces them.
        let next = ([2; 16], 6);
        assert_eq!(
            storage
                .hold_messages(endpoint, next, 0, 1, b"z".to_vec())
                .await
                .unwrap(),
            Ok(1)
        );
        assert_eq!(
            storage.held_messages(endpoint, seal).await.unwrap(),
            (0, vec![])
        );
        storage.drop_held_messages(endpoint).await.unwrap();
        assert_eq!(
            storage.held_messages(endpoint, next).await.unwrap(),
            (0, vec![])
        );
    }
    on_both_backends!(messages_are_held_in_order);
}
