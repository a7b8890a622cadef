//! Plugins and endpoints in PostgreSQL: the same statements and outcomes as
//! SQLite's (`sqlite::sql`), each operation one statement or one transaction on a
//! pooled connection.
//!
//! Replicas create and delete endpoints concurrently, so what SQLite's single
//! writer serialises is serialised here by the database: a name is claimed with
//! `INSERT … ON CONFLICT (name) DO NOTHING` (two replicas creating the same
//! endpoint end as Created and Identical, never an error), and a deletion locks
//! the endpoint's row first, which waits for report groups holding it (see
//! `writer`) and makes later ones find the endpoint gone.

use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use super::PgBackend;
use crate::storage::sqlite::sql::{from_millis, to_millis};
use crate::storage::{
    CreateEndpointOutcome, Endpoint, EndpointCounts, EndpointId, EndpointRecord, PluginInfo,
    PluginRecord, PutPluginOutcome, SealSchedule, StorageError,
};

/// Columns read into a [`PluginInfo`] by [`plugin_info`]; `length()` of a bytea
/// reads its size from the header, so listings never load the wasm.
const PLUGIN_INFO_COLUMNS: &str = "digest, name, version, description, params_schema, builtin, \
     created_at, length(wasm)::bigint";

/// Columns read into an [`Endpoint`] by [`endpoint`].
const ENDPOINT_COLUMNS: &str = "id, name, plugin_digest, plugin_name, params, config, config_hash, \
     min_batch, created_at, max_reports_per_user, seal_every, seal_at";

/// A fixed-size byte column (digests, ids) as an array.
pub(super) fn bytes<const N: usize>(
    row: &Row,
    index: usize,
    what: &'static str,
) -> Result<[u8; N], StorageError> {
    let value: &[u8] = row.try_get(index)?;
    <[u8; N]>::try_from(value).map_err(|_| StorageError::OutOfRange(what))
}

/// A non-negative bigint column as a `u64`.
fn unsigned(row: &Row, index: usize, what: &'static str) -> Result<u64, StorageError> {
    let value: i64 = row.try_get(index)?;
    u64::try_from(value).map_err(|_| StorageError::OutOfRange(what))
}

/// A nullable non-negative bigint column as an `Option<u64>`.
fn unsigned_opt(row: &Row, index: usize, what: &'static str) -> Result<Option<u64>, StorageError> {
    let value: Option<i64> = row.try_get(index)?;
    value
        .map(u64::try_from)
        .transpose()
        .map_err(|_| StorageError::OutOfRange(what))
}

/// A `u64` setting as the bigint it is stored as.
fn signed(value: u64, what: &'static str) -> Result<i64, StorageError> {
    i64::try_from(value).map_err(|_| StorageError::OutOfRange(what))
}

/// A row of [`PLUGIN_INFO_COLUMNS`].
fn plugin_info(row: &Row) -> Result<PluginInfo, StorageError> {
    Ok(PluginInfo {
        digest: bytes(row, 0, "a plugin digest")?,
        name: row.try_get(1)?,
        version: row.try_get(2)?,
        description: row.try_get(3)?,
        params_schema: row.try_get(4)?,
        builtin: row.try_get(5)?,
        created_at: from_millis(row.try_get(6)?),
        wasm_len: unsigned(row, 7, "a plugin's size")?,
    })
}

/// A row of [`ENDPOINT_COLUMNS`].
fn endpoint(row: &Row) -> Result<Endpoint, StorageError> {
    Ok(Endpoint {
        id: EndpointId(row.try_get(0)?),
        record: EndpointRecord {
            name: row.try_get(1)?,
            plugin_digest: bytes(row, 2, "a plugin digest")?,
            plugin_name: row.try_get(3)?,
            params: row.try_get(4)?,
            config: row.try_get(5)?,
            config_hash: bytes(row, 6, "a config hash")?,
            min_batch: unsigned(row, 7, "min_batch")?,
            created_at: from_millis(row.try_get(8)?),
            max_reports_per_user: unsigned_opt(row, 9, "max_reports_per_user")?,
            schedule: SealSchedule {
                every_secs: unsigned_opt(row, 10, "seal_every")?,
                at: unsigned_opt(row, 11, "seal_at")?,
            },
        },
    })
}

impl PgBackend {
    /// See [`crate::storage::Storage::put_plugin`].
    pub(crate) async fn put_plugin(
        &self,
        plugin: PluginRecord,
    ) -> Result<PutPluginOutcome, StorageError> {
        let client = self.client().await?;
        let inserted = client
            .execute(
                "INSERT INTO plugins \
                 (digest, name, version, description, params_schema, builtin, created_at, wasm) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (digest) DO NOTHING",
                &[
                    &&plugin.digest[..],
                    &plugin.name,
                    &plugin.version,
                    &plugin.description,
                    &plugin.params_schema,
                    &plugin.builtin,
                    &to_millis(plugin.created_at),
                    &plugin.wasm,
                ],
            )
            .await?;
        Ok(if inserted == 1 {
            PutPluginOutcome::Inserted
        } else {
            PutPluginOutcome::AlreadyPresent
        })
    }

    /// See [`crate::storage::Storage::list_plugins`].
    pub(crate) async fn list_plugins(&self) -> Result<Vec<PluginInfo>, StorageError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {PLUGIN_INFO_COLUMNS} FROM plugins ORDER BY name, created_at, digest"
            ))
            .await?;
        client
            .query(&statement, &[])
            .await?
            .iter()
            .map(plugin_info)
            .collect()
    }

    /// See [`crate::storage::Storage::get_plugin`].
    pub(crate) async fn get_plugin(
        &self,
        digest: [u8; 32],
    ) -> Result<Option<PluginInfo>, StorageError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {PLUGIN_INFO_COLUMNS} FROM plugins WHERE digest = $1"
            ))
            .await?;
        client
            .query_opt(&statement, &[&&digest[..]])
            .await?
            .as_ref()
            .map(plugin_info)
            .transpose()
    }

    /// See [`crate::storage::Storage::plugin_wasm`].
    pub(crate) async fn plugin_wasm(
        &self,
        digest: [u8; 32],
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT wasm FROM plugins WHERE digest = $1",
                &[&&digest[..]],
            )
            .await?;
        Ok(row.map(|row| row.try_get(0)).transpose()?)
    }

    /// See [`crate::storage::Storage::create_endpoint`].
    ///
    /// The name is claimed with `ON CONFLICT (name) DO NOTHING`, so of two
    /// replicas creating one endpoint at once, one inserts it and the other reads
    /// it back and compares. A row skipped for its name never checks its plugin,
    /// so an existing endpoint is answered as SQLite answers it even if the
    /// request names an unknown plugin.
    pub(crate) async fn create_endpoint(
        &self,
        new: EndpointRecord,
    ) -> Result<CreateEndpointOutcome, StorageError> {
        let min_batch = signed(new.min_batch, "min_batch")?;
        let max_reports_per_user = new
            .max_reports_per_user
            .map(|max| signed(max, "max_reports_per_user"))
            .transpose()?;
        let seal_every = new
            .schedule
            .every_secs
            .map(|every| signed(every, "seal_every"))
            .transpose()?;
        let seal_at = new
            .schedule
            .at
            .map(|at| signed(at, "seal_at"))
            .transpose()?;
        let created_at = to_millis(new.created_at);
        let client = self.client().await?;
        // An endpoint read as existing may be deleted before it is read back; the
        // name is then free and the next round inserts it.
        loop {
            let inserted = client
                .query_opt(
                    "INSERT INTO endpoints \
                     (name, plugin_digest, plugin_name, params, config, config_hash, min_batch, \
                      created_at, max_reports_per_user, seal_every, seal_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                     ON CONFLICT (name) DO NOTHING RETURNING id",
                    &[
                        &new.name,
                        &&new.plugin_digest[..],
                        &new.plugin_name,
                        &new.params,
                        &new.config,
                        &&new.config_hash[..],
                        &min_batch,
                        &created_at,
                        &max_reports_per_user,
                        &seal_every,
                        &seal_at,
                    ],
                )
                .await;
            match inserted {
                Ok(Some(row)) => {
                    return Ok(CreateEndpointOutcome::Created(Endpoint {
                        id: EndpointId(row.try_get(0)?),
                        record: EndpointRecord {
                            // Read back as stored, to the millisecond, like every later read.
                            created_at: from_millis(created_at),
                            ..new
                        },
                    }));
                }
                Ok(None) => {}
                Err(error) if error.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                    return Err(StorageError::UnknownPlugin);
                }
                Err(error) => return Err(error.into()),
            }
            let Some(existing) = get_endpoint(&client, &new.name).await? else {
                continue;
            };
            let same = existing.record.plugin_digest == new.plugin_digest
                && existing.record.config_hash == new.config_hash
                && existing.record.min_batch == new.min_batch
                && existing.record.max_reports_per_user == new.max_reports_per_user
                && existing.record.schedule == new.schedule;
            return Ok(if same {
                CreateEndpointOutcome::Identical(existing)
            } else {
                CreateEndpointOutcome::Conflict(existing)
            });
        }
    }

    /// See [`crate::storage::Storage::get_endpoint`].
    pub(crate) async fn get_endpoint(
        &self,
        name: String,
    ) -> Result<Option<Endpoint>, StorageError> {
        let client = self.client().await?;
        get_endpoint(&client, &name).await
    }

    /// See [`crate::storage::Storage::list_endpoints`].
    pub(crate) async fn list_endpoints(&self) -> Result<Vec<Endpoint>, StorageError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {ENDPOINT_COLUMNS} FROM endpoints ORDER BY name"
            ))
            .await?;
        client
            .query(&statement, &[])
            .await?
            .iter()
            .map(endpoint)
            .collect()
    }

    /// See [`crate::storage::Storage::endpoints_after`].
    pub(crate) async fn endpoints_after(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Endpoint>, StorageError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {ENDPOINT_COLUMNS} FROM endpoints \
                 WHERE $1::text IS NULL OR name > $1 ORDER BY name LIMIT $2"
            ))
            .await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        client
            .query(&statement, &[&after, &limit])
            .await?
            .iter()
            .map(endpoint)
            .collect()
    }

    /// See [`crate::storage::Storage::endpoint_count`].
    pub(crate) async fn endpoint_count(&self) -> Result<u64, StorageError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT count(*) FROM endpoints", &[])
            .await?;
        unsigned(&row, 0, "the endpoint count")
    }

    /// See [`crate::storage::Storage::delete_endpoint`].
    ///
    /// One transaction. The endpoint's row is locked first (`FOR UPDATE`), which
    /// waits for the report groups that hold it and makes later groups find it
    /// gone, so no report can be inserted for it between the deletion of its
    /// reports and its own.
    pub(crate) async fn delete_endpoint(&self, name: String) -> Result<bool, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(row) = tx
            .query_opt(
                "SELECT id FROM endpoints WHERE name = $1 FOR UPDATE",
                &[&name],
            )
            .await?
        else {
            return Ok(false);
        };
        let id: i64 = row.try_get(0)?;
        for table in [
            "reports",
            "batches",
            "deleted_batches",
            "seals",
            "held_messages",
        ] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE endpoint_id = $1"),
                &[&id],
            )
            .await?;
        }
        tx.execute("DELETE FROM endpoints WHERE id = $1", &[&id])
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// See [`crate::storage::Storage::endpoint_counts`].
    ///
    /// One statement, so every count comes from one snapshot; the arithmetic is
    /// SQLite's (`sqlite::sql::endpoint_counts`).
    pub(crate) async fn endpoint_counts(
        &self,
        name: String,
    ) -> Result<Option<EndpointCounts>, StorageError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT \
                   (SELECT count(*) FROM reports r WHERE r.endpoint_id = e.id AND r.batch_id IS NULL), \
                   (SELECT count(*) FROM reports r WHERE r.endpoint_id = e.id), \
                   (SELECT count(*) FROM batches b WHERE b.endpoint_id = e.id), \
                   (SELECT coalesce(sum(b.count), 0)::bigint FROM batches b WHERE b.endpoint_id = e.id), \
                   (SELECT coalesce(sum(d.count), 0)::bigint FROM deleted_batches d \
                     WHERE d.endpoint_id = e.id), \
                   e.rejected, e.collected \
                 FROM endpoints e WHERE e.name = $1",
            )
            .await?;
        let Some(row) = client.query_opt(&statement, &[&name]).await? else {
            return Ok(None);
        };
        let unbatched = unsigned(&row, 0, "a report count")?;
        let total = unsigned(&row, 1, "a report count")?;
        let batches = unsigned(&row, 2, "a batch count")?;
        // The reports of batches an admin deleted stay batched.
        let batched = unsigned(&row, 3, "a report count")? + unsigned(&row, 4, "a report count")?;
        let rejected = unsigned(&row, 5, "a report count")?;
        // Reports deleted by the report window, counted as they go.
        let collected = unsigned(&row, 6, "a report count")?;
        Ok(Some(EndpointCounts {
            unbatched,
            batched,
            expired: (total + collected)
                .saturating_sub(unbatched)
                .saturating_sub(batched)
                .saturating_sub(rejected),
            rejected,
            batches,
        }))
    }
}

/// Reads one endpoint by name.
async fn get_endpoint(
    client: &deadpool_postgres::Client,
    name: &str,
) -> Result<Option<Endpoint>, StorageError> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE name = $1"
        ))
        .await?;
    client
        .query_opt(&statement, &[&name])
        .await?
        .as_ref()
        .map(endpoint)
        .transpose()
}
