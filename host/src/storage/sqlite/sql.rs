//! Every SQL statement of the SQLite backend, as plain functions over a connection.
//!
//! Writers receive the writer thread's open transaction (as a `&Connection`) and never
//! begin or commit one themselves: the caller decides what commits together. Readers
//! run on a read-only connection. Statements are prepared once per connection and
//! cached.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Row, params};
use sha2::Digest as _;

use super::ids::ReportIds;

use crate::storage::{
    Batch, BatchInfo, CommitOutcome, CreateEndpointOutcome, DeleteBatchOutcome, Endpoint,
    EndpointCounts, EndpointId, EndpointRecord, InsertReportOutcome, NewBatch, PluginInfo,
    PluginRecord, PutPluginOutcome, Seal, SealReport, SealSchedule, StorageError, UserKey,
    UserQuota, Verification,
};

/// `reports.batch_id` of a report that expired unbatched.
const EXPIRED: i64 = -1;

/// `reports.batch_id` of a report whose validity proof failed.
const REJECTED: i64 = -2;

/// Converts a time to the Unix milliseconds stored in the database.
pub(crate) fn to_millis(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// Converts stored Unix milliseconds back to a time.
pub(crate) fn from_millis(millis: i64) -> SystemTime {
    let offset = Duration::from_millis(millis.unsigned_abs());
    let time = if millis >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    };
    time.unwrap_or(UNIX_EPOCH)
}

/// Whether `error` is a violated foreign key, i.e. a row referencing something absent.
fn is_foreign_key_violation(error: &rusqlite::Error) -> bool {
    error
        .sqlite_error()
        .is_some_and(|e| e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY)
}

/// Columns read into a [`PluginInfo`] by [`plugin_info`]; `length()` of a blob does
/// not load the blob.
const PLUGIN_INFO_COLUMNS: &str =
    "digest, name, version, description, params_schema, builtin, created_at, length(wasm)";

fn plugin_info(row: &Row<'_>) -> rusqlite::Result<PluginInfo> {
    Ok(PluginInfo {
        digest: row.get(0)?,
        name: row.get(1)?,
        version: row.get(2)?,
        description: row.get(3)?,
        params_schema: row.get(4)?,
        builtin: row.get(5)?,
        created_at: from_millis(row.get(6)?),
        wasm_len: row.get(7)?,
    })
}

/// Inserts a plugin unless its digest is already stored.
pub(crate) fn put_plugin(
    conn: &Connection,
    plugin: &PluginRecord,
) -> Result<PutPluginOutcome, StorageError> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO plugins \
             (digest, name, version, description, params_schema, builtin, created_at, wasm) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (digest) DO NOTHING",
        )?
        .execute(params![
            plugin.digest,
            plugin.name,
            plugin.version,
            plugin.description,
            plugin.params_schema,
            plugin.builtin,
            to_millis(plugin.created_at),
            plugin.wasm,
        ])?;
    Ok(if inserted == 1 {
        PutPluginOutcome::Inserted
    } else {
        PutPluginOutcome::AlreadyPresent
    })
}

/// Lists plugin metadata, ordered by name then age.
pub(crate) fn list_plugins(conn: &Connection) -> rusqlite::Result<Vec<PluginInfo>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {PLUGIN_INFO_COLUMNS} FROM plugins ORDER BY name, created_at, digest"
    ))?;
    statement.query_map([], plugin_info)?.collect()
}

/// Reads one plugin's metadata.
pub(crate) fn get_plugin(
    conn: &Connection,
    digest: &[u8; 32],
) -> rusqlite::Result<Option<PluginInfo>> {
    conn.prepare_cached(&format!(
        "SELECT {PLUGIN_INFO_COLUMNS} FROM plugins WHERE digest = ?1"
    ))?
    .query_row([digest], plugin_info)
    .optional()
}

/// Reads one plugin's wasm bytes.
pub(crate) fn plugin_wasm(
    conn: &Connection,
    digest: &[u8; 32],
) -> rusqlite::Result<Option<Vec<u8>>> {
    conn.prepare_cached("SELECT wasm FROM plugins WHERE digest = ?1")?
        .query_row([digest], |row| row.get(0))
        .optional()
}

/// Columns read into an [`Endpoint`] by [`endpoint`].
const ENDPOINT_COLUMNS: &str = "id, name, plugin_digest, plugin_name, params, config, config_hash, \
     min_batch, created_at, max_reports_per_user, seal_every, seal_at";

fn endpoint(row: &Row<'_>) -> rusqlite::Result<Endpoint> {
    Ok(Endpoint {
        id: EndpointId(row.get(0)?),
        record: EndpointRecord {
            name: row.get(1)?,
            plugin_digest: row.get(2)?,
            plugin_name: row.get(3)?,
            params: row.get(4)?,
            config: row.get(5)?,
            config_hash: row.get(6)?,
            min_batch: row.get(7)?,
            created_at: from_millis(row.get(8)?),
            max_reports_per_user: row.get(9)?,
            schedule: SealSchedule {
                every_secs: row.get(10)?,
                at: row.get(11)?,
            },
        },
    })
}

/// Creates an endpoint, or returns the existing one of that name and how it compares.
pub(crate) fn create_endpoint(
    conn: &Connection,
    new: &EndpointRecord,
) -> Result<CreateEndpointOutcome, StorageError> {
    let min_batch =
        i64::try_from(new.min_batch).map_err(|_| StorageError::OutOfRange("min_batch"))?;
    let max_reports_per_user = new
        .max_reports_per_user
        .map(i64::try_from)
        .transpose()
        .map_err(|_| StorageError::OutOfRange("max_reports_per_user"))?;
    let seal_every = new
        .schedule
        .every_secs
        .map(i64::try_from)
        .transpose()
        .map_err(|_| StorageError::OutOfRange("seal_every"))?;
    let seal_at = new
        .schedule
        .at
        .map(i64::try_from)
        .transpose()
        .map_err(|_| StorageError::OutOfRange("seal_at"))?;
    if let Some(existing) = get_endpoint(conn, &new.name)? {
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
    let created_at = to_millis(new.created_at);
    let inserted = conn
        .prepare_cached(
            "INSERT INTO endpoints \
             (name, plugin_digest, plugin_name, params, config, config_hash, min_batch, created_at, \
              max_reports_per_user, seal_every, seal_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?
        .execute(params![
            new.name,
            new.plugin_digest,
            new.plugin_name,
            new.params,
            new.config,
            new.config_hash,
            min_batch,
            created_at,
            max_reports_per_user,
            seal_every,
            seal_at,
        ]);
    match inserted {
        Ok(_) => {}
        Err(error) if is_foreign_key_violation(&error) => return Err(StorageError::UnknownPlugin),
        Err(error) => return Err(error.into()),
    }
    Ok(CreateEndpointOutcome::Created(Endpoint {
        id: EndpointId(conn.last_insert_rowid()),
        record: EndpointRecord {
            // Read back as stored, to the millisecond, like every later read.
            created_at: from_millis(created_at),
            ..new.clone()
        },
    }))
}

/// Reads one endpoint by name.
pub(crate) fn get_endpoint(conn: &Connection, name: &str) -> rusqlite::Result<Option<Endpoint>> {
    conn.prepare_cached(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE name = ?1"
    ))?
    .query_row([name], endpoint)
    .optional()
}

/// Lists every endpoint, ordered by name.
pub(crate) fn list_endpoints(conn: &Connection) -> rusqlite::Result<Vec<Endpoint>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM endpoints ORDER BY name"
    ))?;
    statement.query_map([], endpoint)?.collect()
}

/// At most `limit` endpoints named after `after`, ordered by name.
pub(crate) fn endpoints_after(
    conn: &Connection,
    after: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<Endpoint>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE ?1 IS NULL OR name > ?1 \
         ORDER BY name LIMIT ?2"
    ))?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    statement
        .query_map(params![after, limit], endpoint)?
        .collect()
}

/// How many endpoints there are.
pub(crate) fn endpoint_count(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT count(*) FROM endpoints")?
        .query_row([], |row| row.get(0))
}

/// Deletes an endpoint and its reports; returns whether it existed.
pub(crate) fn delete_endpoint(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    let Some(id) = conn
        .prepare_cached("SELECT id FROM endpoints WHERE name = ?1")?
        .query_row([name], |row| row.get::<_, i64>(0))
        .optional()?
    else {
        return Ok(false);
    };
    for table in [
        "report_ids",
        "reports",
        "batches",
        "deleted_batches",
        "seals",
        "held_messages",
    ] {
        conn.prepare_cached(&format!("DELETE FROM {table} WHERE endpoint_id = ?1"))?
            .execute([id])?;
    }
    conn.prepare_cached("DELETE FROM endpoints WHERE id = ?1")?
        .execute([id])?;
    Ok(true)
}

/// Counts an endpoint's reports, unbatched and batched.
pub(crate) fn endpoint_counts(
    conn: &Connection,
    name: &str,
) -> rusqlite::Result<Option<EndpointCounts>> {
    let Some(id) = conn
        .prepare_cached("SELECT id FROM endpoints WHERE name = ?1")?
        .query_row([name], |row| row.get::<_, i64>(0))
        .optional()?
    else {
        return Ok(None);
    };
    // Two queries so that each uses an index: the partial index for the unbatched
    // reports, `reports_by_endpoint` for all of them.
    let unbatched: u64 = conn
        .prepare_cached("SELECT count(*) FROM reports WHERE endpoint_id = ?1 AND batch_id IS NULL")?
        .query_row([id], |row| row.get(0))?;
    let total: u64 = conn
        .prepare_cached("SELECT count(*) FROM reports WHERE endpoint_id = ?1")?
        .query_row([id], |row| row.get(0))?;
    // From the batches, not by scanning the batched reports.
    let (batches, batched): (u64, u64) = conn
        .prepare_cached(
            "SELECT count(*), coalesce(sum(count), 0) FROM batches WHERE endpoint_id = ?1",
        )?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))?;
    // The reports of batches an admin deleted stay batched.
    let deleted_batched: u64 = conn
        .prepare_cached(
            "SELECT coalesce(sum(count), 0) FROM deleted_batches WHERE endpoint_id = ?1",
        )?
        .query_row([id], |row| row.get(0))?;
    let batched = batched + deleted_batched;
    // Counted as they are marked, not by scanning the reports.
    // Reports deleted by the report window are counted as they go.
    let (rejected, collected): (u64, u64) = conn
        .prepare_cached("SELECT rejected, collected FROM endpoints WHERE id = ?1")?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))?;
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

/// Stores one report, or tells how it compares to the report already stored under
/// its id. A failure leaves the surrounding transaction usable (SQLite undoes only the
/// failed statement), unless the connection reports it rolled the transaction back.
/// Only the writer calls it, with its [`ReportIds`].
pub(crate) fn insert_report(
    conn: &Connection,
    ids: &mut ReportIds,
    endpoint: EndpointId,
    report_id: &[u8; 16],
    share: &[u8],
    received_at: i64,
    poster: Option<&UserKey>,
) -> Result<InsertReportOutcome, StorageError> {
    if let Some(outcome) = stored_outcome(conn, ids, endpoint, report_id, share)? {
        return Ok(outcome);
    }
    let inserted = conn
        .prepare_cached(
            "INSERT INTO reports (endpoint_id, report_id, share, received_at, poster, \
             share_digest) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            endpoint.0,
            report_id,
            share,
            received_at,
            poster.map(|p| p.0),
            share_digest(share)
        ]);
    stored(conn, ids, endpoint, report_id, inserted)
}

/// The outcome of the `INSERT` of a new report, which `ids` then knows.
fn stored(
    conn: &Connection,
    ids: &mut ReportIds,
    endpoint: EndpointId,
    report_id: &[u8; 16],
    inserted: rusqlite::Result<usize>,
) -> Result<InsertReportOutcome, StorageError> {
    match inserted {
        Ok(_) => {
            ids.added(endpoint, *report_id, conn.last_insert_rowid());
            Ok(InsertReportOutcome::Stored)
        }
        Err(error) if is_foreign_key_violation(&error) => Err(StorageError::UnknownEndpoint),
        Err(error) => Err(error.into()),
    }
}

/// What is kept of a share once it is deleted (batched or expired), so that an
/// identical retry is still told from a different share: the first 16 bytes of
/// its SHA-256.
fn share_digest(share: &[u8]) -> [u8; 16] {
    let digest = sha2::Sha256::digest(share);
    let mut first = [0; 16];
    first.copy_from_slice(&digest[..16]);
    first
}

/// How `share` compares to the report already stored under `report_id`, if any:
/// by the share itself while it is stored, by its digest once it is deleted.
fn stored_outcome(
    conn: &Connection,
    ids: &ReportIds,
    endpoint: EndpointId,
    report_id: &[u8; 16],
    share: &[u8],
) -> rusqlite::Result<Option<InsertReportOutcome>> {
    let Some(row) = ids.find(conn, endpoint, report_id)? else {
        return Ok(None);
    };
    conn.prepare_cached(
        "SELECT share, share_digest FROM reports WHERE id = ?1 AND endpoint_id = ?2",
    )?
    .query_row(params![row, endpoint.0], |row| {
        let same = match row.get_ref(0)?.as_blob_or_null()? {
            Some(stored) => stored == share,
            // Released or expired: compared by digest. A report stored before
            // digests were kept has none, and its replay is refused.
            None => row.get_ref(1)?.as_blob_or_null()? == Some(&share_digest(share)[..]),
        };
        Ok(if same {
            InsertReportOutcome::Duplicate
        } else {
            InsertReportOutcome::Conflict
        })
    })
    // No row: the endpoint was deleted (its insert then fails as unknown).
    .optional()
}

/// [`insert_report`] under a per-user quota: a report id already stored is
/// answered as there (a retry is acknowledged whatever the count); a new one is
/// stored with the user's key only if the user holds fewer than `quota.max`
/// unbatched reports of the endpoint. Run inside the writer's transaction, the
/// count sees every report inserted before it, those of the same group included.
pub(crate) fn insert_report_for_user(
    conn: &Connection,
    ids: &mut ReportIds,
    endpoint: EndpointId,
    report_id: &[u8; 16],
    share: &[u8],
    received_at: i64,
    quota: &UserQuota,
) -> Result<InsertReportOutcome, StorageError> {
    if let Some(outcome) = stored_outcome(conn, ids, endpoint, report_id, share)? {
        return Ok(outcome);
    }
    if unbatched_of_user(conn, endpoint, &quota.user)? >= quota.max {
        return Ok(InsertReportOutcome::UserQuotaExceeded { max: quota.max });
    }
    let inserted = conn
        .prepare_cached(
            "INSERT INTO reports (endpoint_id, report_id, share, received_at, user_key, \
             poster, share_digest) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)",
        )?
        .execute(params![
            endpoint.0,
            report_id,
            share,
            received_at,
            quota.user.0,
            share_digest(share)
        ]);
    stored(conn, ids, endpoint, report_id, inserted)
}

/// How many unbatched reports of an endpoint a user holds: a lookup in the partial
/// index `reports_unbatched_by_user`.
pub(crate) fn unbatched_of_user(
    conn: &Connection,
    endpoint: EndpointId,
    user: &UserKey,
) -> rusqlite::Result<u64> {
    conn.prepare_cached(
        "SELECT count(*) FROM reports \
         WHERE endpoint_id = ?1 AND user_key = ?2 AND batch_id IS NULL",
    )?
    .query_row(params![endpoint.0, user.0], |row| row.get(0))
}

/// The key of the users' hash (see [`crate::storage::Storage::user_key`]), drawn
/// by the migration that added quotas.
pub(crate) fn user_key_secret(conn: &Connection) -> rusqlite::Result<[u8; 32]> {
    conn.prepare_cached("SELECT value FROM server_secrets WHERE name = 'user_key'")?
        .query_row([], |row| row.get(0))
}

/// The oldest `limit` unbatched reports of an endpoint, from the partial index alone.
pub(crate) fn unbatched_reports(
    conn: &Connection,
    endpoint: EndpointId,
    after_row: i64,
    limit: usize,
) -> rusqlite::Result<Vec<SealReport>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // Counted first so that the list is allocated once at its size: a million
    // reports would otherwise pass through doubling copies of up to 32 MB.
    let count: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM reports WHERE endpoint_id = ?1 AND batch_id IS NULL \
             AND id > ?2",
        )?
        .query_row(params![endpoint.0, after_row], |row| row.get(0))?;
    let mut reports = Vec::with_capacity(usize::try_from(count.min(limit)).unwrap_or(0));
    let mut statement = conn.prepare_cached(
        "SELECT id, report_id FROM reports WHERE endpoint_id = ?1 AND batch_id IS NULL \
         AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let mut rows = statement.query(params![endpoint.0, after_row, limit])?;
    while let Some(row) = rows.next()? {
        reports.push(SealReport {
            row: row.get(0)?,
            report_id: row.get(1)?,
        });
    }
    Ok(reports)
}

/// A [`Seal`] as stored: its rows as little-endian `i64`s, encoded before it goes
/// to the writer thread so that the caller keeps its seal.
pub(crate) struct SealRecord {
    endpoint: EndpointId,
    batch_id: [u8; 16],
    seal_number: i64,
    decided: bool,
    positions: Vec<u8>,
    rows: Vec<u8>,
    created_at: i64,
    /// `rejected_positions`, `rejected_rows`, `messages`.
    verification: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>,
}

impl SealRecord {
    pub(crate) fn new(seal: &Seal) -> SealRecord {
        SealRecord {
            endpoint: seal.endpoint,
            batch_id: seal.batch_id,
            seal_number: i64::try_from(seal.seal_number).unwrap_or(i64::MAX),
            decided: seal.decided,
            positions: seal.positions.clone(),
            rows: encode_rows(&seal.rows),
            created_at: to_millis(seal.created_at),
            verification: seal.verification.as_ref().map(|v| {
                (
                    v.rejected_positions.clone(),
                    encode_rows(&v.rejected_rows),
                    encode_batch(&v.messages),
                )
            }),
        }
    }
}

pub(crate) fn encode_rows(rows: &[i64]) -> Vec<u8> {
    rows.iter().flat_map(|row| row.to_le_bytes()).collect()
}

pub(crate) fn decode_rows(blob: &[u8]) -> rusqlite::Result<Vec<i64>> {
    if !blob.len().is_multiple_of(8) {
        return Err(corrupt_seal("rows are not a whole number of rows"));
    }
    Ok(blob
        .chunks_exact(8)
        .map(|row| i64::from_le_bytes(row.try_into().expect("8 bytes")))
        .collect())
}

fn corrupt_seal(why: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        4,
        rusqlite::types::Type::Blob,
        format!("seals: {why}").into(),
    )
}

/// A batch of byte strings as stored: the count, each end, then the bytes (all
/// numbers u32, little-endian).
pub(crate) fn encode_batch(batch: &guardian_sdk::raw::Batch) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 4 * batch.ends.len() + batch.data.len());
    out.extend_from_slice(&(batch.ends.len() as u32).to_le_bytes());
    for end in &batch.ends {
        out.extend_from_slice(&end.to_le_bytes());
    }
    out.extend_from_slice(&batch.data);
    out
}

pub(crate) fn decode_batch(blob: &[u8]) -> rusqlite::Result<guardian_sdk::raw::Batch> {
    let u32_at = |at: usize| {
        blob.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| corrupt_seal("messages are truncated"))
    };
    let count = u32_at(0)? as usize;
    let ends = (0..count)
        .map(|i| u32_at(4 + 4 * i))
        .collect::<rusqlite::Result<Vec<u32>>>()?;
    let data = blob[4 + 4 * count..].to_vec();
    let batch = guardian_sdk::raw::Batch { data, ends };
    batch
        .items()
        .map_err(|_| corrupt_seal("messages are malformed"))?;
    Ok(batch)
}

const SEAL_COLUMNS: &str = "endpoint_id, batch_id, decided, positions, rows, created_at, \
     seal_number, rejected_positions, rejected_rows, messages";

fn seal(row: &Row<'_>) -> rusqlite::Result<Seal> {
    let verification = match (
        row.get::<_, Option<Vec<u8>>>(7)?,
        row.get_ref(8)?.as_blob_or_null()?,
        row.get_ref(9)?.as_blob_or_null()?,
    ) {
        (Some(rejected_positions), Some(rejected_rows), Some(messages)) => Some(Verification {
            rejected_positions,
            rejected_rows: decode_rows(rejected_rows)?,
            messages: decode_batch(messages)?,
        }),
        _ => None,
    };
    Ok(Seal {
        endpoint: EndpointId(row.get(0)?),
        batch_id: row.get(1)?,
        decided: row.get(2)?,
        positions: row.get(3)?,
        rows: decode_rows(row.get_ref(4)?.as_blob()?)?,
        created_at: from_millis(row.get(5)?),
        seal_number: u64::try_from(row.get::<_, i64>(6)?).unwrap_or(0),
        verification,
    })
}

/// Records a seal in progress; see [`crate::storage::Storage::put_seal`].
pub(crate) fn put_seal(conn: &Connection, new: &SealRecord) -> Result<(), StorageError> {
    let existing: Option<([u8; 16], bool)> = conn
        .prepare_cached("SELECT batch_id, decided FROM seals WHERE endpoint_id = ?1")?
        .query_row([new.endpoint.0], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    match existing {
        Some((batch_id, true)) if batch_id != new.batch_id => {
            return Err(StorageError::SealPending);
        }
        Some((_, true)) => return Ok(()),
        _ => {}
    }
    let stored = conn
        .prepare_cached(
            "INSERT OR REPLACE INTO seals (endpoint_id, batch_id, decided, positions, rows, \
             created_at, seal_number, rejected_positions, rejected_rows, messages) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            new.endpoint.0,
            new.batch_id,
            new.decided,
            new.positions,
            new.rows,
            new.created_at,
            new.seal_number,
            new.verification.as_ref().map(|v| &v.0),
            new.verification.as_ref().map(|v| &v.1),
            new.verification.as_ref().map(|v| &v.2),
        ]);
    match stored {
        Ok(_) => Ok(()),
        Err(error) if is_foreign_key_violation(&error) => Err(StorageError::UnknownEndpoint),
        Err(error) => Err(error.into()),
    }
}

/// The seal in progress of an endpoint.
pub(crate) fn pending_seal(
    conn: &Connection,
    endpoint: EndpointId,
) -> rusqlite::Result<Option<Seal>> {
    conn.prepare_cached(&format!(
        "SELECT {SEAL_COLUMNS} FROM seals WHERE endpoint_id = ?1"
    ))?
    .query_row([endpoint.0], seal)
    .optional()
}

/// Every decided seal, oldest first.
pub(crate) fn decided_seals(conn: &Connection) -> rusqlite::Result<Vec<Seal>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {SEAL_COLUMNS} FROM seals WHERE decided = 1 ORDER BY created_at"
    ))?;
    statement.query_map([], seal)?.collect()
}

/// Deletes the seal of an endpoint if it has this batch id.
pub(crate) fn drop_seal(
    conn: &Connection,
    endpoint: EndpointId,
    batch_id: &[u8; 16],
) -> rusqlite::Result<bool> {
    Ok(conn
        .prepare_cached("DELETE FROM seals WHERE endpoint_id = ?1 AND batch_id = ?2")?
        .execute(params![endpoint.0, batch_id])?
        == 1)
}

/// Visits the stored rows `rows` (ascending) of an endpoint with `column` read:
/// one scan of the rows between the first and the last, rather than a lookup per
/// report (measured 14x faster for a million reports stored one after another).
/// `visit` answers whether to go on. Fails with [`StorageError::ReportUnavailable`]
/// if a wanted row is not the endpoint's (or the rows were not sorted).
fn visit_rows(
    conn: &Connection,
    endpoint: EndpointId,
    rows: &[i64],
    column: &str,
    mut visit: impl FnMut(rusqlite::types::ValueRef<'_>) -> Result<bool, StorageError>,
) -> Result<(), StorageError> {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(());
    };
    // `+endpoint_id`: a filter only, so SQLite reads the table's row range. As an
    // index term it once made SQLite walk the endpoint's whole entry of an index
    // for each chunk (measured 16x slower than the row range for a million reports).
    let mut statement = conn.prepare_cached(&format!(
        "SELECT id, {column} FROM reports WHERE id BETWEEN ?1 AND ?2 AND +endpoint_id = ?3 \
         ORDER BY id"
    ))?;
    let mut stored = statement.query(params![first, last, endpoint.0])?;
    let mut wanted = rows.iter().peekable();
    while let Some(row) = stored.next()? {
        let Some(&&next) = wanted.peek() else { break };
        let id: i64 = row.get(0)?;
        if id < next {
            continue;
        }
        // Rows only go up: a wanted row passed over is not the endpoint's.
        if id > next {
            return Err(StorageError::ReportUnavailable);
        }
        if !visit(row.get_ref(1)?)? {
            return Ok(());
        }
        wanted.next();
    }
    if wanted.peek().is_some() {
        return Err(StorageError::ReportUnavailable);
    }
    Ok(())
}

/// The unbatched shares of the endpoint's reports at `rows` (ascending),
/// concatenated, and the end of each.
pub(crate) fn read_shares(
    conn: &Connection,
    endpoint: EndpointId,
    rows: &[i64],
) -> Result<(Vec<u8>, Vec<u32>), StorageError> {
    let mut data = Vec::new();
    let mut ends = Vec::with_capacity(rows.len());
    visit_rows(conn, endpoint, rows, "share", |share| {
        // A report's share is NULL exactly when it is batched or expired.
        let share = share
            .as_blob_or_null()
            .map_err(rusqlite::Error::from)?
            .ok_or(StorageError::ReportUnavailable)?;
        data.extend_from_slice(share);
        let end = u32::try_from(data.len())
            .map_err(|_| StorageError::OutOfRange("shares of one chunk"))?;
        ends.push(end);
        Ok(true)
    })?;
    Ok((data, ends))
}

/// The report ids of the endpoint's reports at `rows` (ascending), batched or not.
pub(crate) fn report_ids(
    conn: &Connection,
    endpoint: EndpointId,
    rows: &[i64],
) -> Result<Vec<[u8; 16]>, StorageError> {
    let mut ids = Vec::with_capacity(rows.len());
    visit_rows(conn, endpoint, rows, "report_id", |id| {
        let id = <[u8; 16]>::try_from(id.as_blob().map_err(rusqlite::Error::from)?)
            .map_err(|_| StorageError::OutOfRange("a report id"))?;
        ids.push(id);
        Ok(true)
    })?;
    Ok(ids)
}

const BATCH_COLUMNS: &str = "batch_id, count, sealed_at, rejected, first_report_at, last_report_at";

fn batch_info(row: &Row<'_>) -> rusqlite::Result<BatchInfo> {
    let first: Option<i64> = row.get(4)?;
    let last: Option<i64> = row.get(5)?;
    Ok(BatchInfo {
        batch_id: row.get(0)?,
        count: row.get(1)?,
        sealed_at: from_millis(row.get(2)?),
        rejected: row.get(3)?,
        span: first
            .zip(last)
            .map(|(f, l)| (from_millis(f), from_millis(l))),
    })
}

fn batch(row: &Row<'_>) -> rusqlite::Result<Batch> {
    Ok(Batch {
        info: batch_info(row)?,
        share: row.get(6)?,
    })
}

/// The earliest and latest report time (Unix milliseconds) among the unbatched
/// reports at `rows` (ascending) of an endpoint: the one place that says what a
/// report's time is. It is when this server received it, by its own clock: the
/// time in a report id is the client's word, good for the window's bounds but
/// not for telling a scientist when the batch's reports came.
fn report_span(
    conn: &Connection,
    endpoint: EndpointId,
    rows: &[i64],
) -> rusqlite::Result<Option<(i64, i64)>> {
    let mut span = conn.prepare_cached(
        "SELECT min(received_at), max(received_at) FROM reports \
         WHERE id BETWEEN ?1 AND ?2 AND +endpoint_id = ?3 AND batch_id IS NULL",
    )?;
    let mut whole: Option<(i64, i64)> = None;
    for run in rows.chunk_by(|a, b| b - a == 1) {
        let (first, last) = (run[0], run[run.len() - 1]);
        let found: (Option<i64>, Option<i64>) = span
            .query_row(params![first, last, endpoint.0], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?;
        if let (Some(low), Some(high)) = found {
            whole = Some(whole.map_or((low, high), |(l, h)| (l.min(low), h.max(high))));
        }
    }
    Ok(whole)
}

/// Seals reports into a batch; see [`crate::storage::Storage::commit_batch`].
pub(crate) fn commit_batch(
    conn: &Connection,
    endpoint: EndpointId,
    new: &NewBatch,
    mut rows: Vec<i64>,
) -> Result<CommitOutcome, StorageError> {
    if let Some(existing) = committed_batch(conn, endpoint, &new.batch_id)? {
        return Ok(CommitOutcome::AlreadyCommitted(existing));
    }
    if rows.is_empty() {
        return Err(StorageError::OutOfRange("an empty batch"));
    }
    let count = rows.len() as u64;
    let rejected = new.rejected_rows.len() as u64;
    let sealed_at = to_millis(new.sealed_at);
    let inserted = conn
        .prepare_cached(
            "INSERT INTO batches (endpoint_id, batch_id, count, sealed_at, share, rejected) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            endpoint.0,
            new.batch_id,
            count,
            sealed_at,
            new.share,
            rejected
        ]);
    match inserted {
        Ok(_) => {}
        Err(error) if is_foreign_key_violation(&error) => {
            return Err(StorageError::UnknownEndpoint);
        }
        Err(error) => return Err(error.into()),
    }
    let batch_row = conn.last_insert_rowid();
    rows.sort_unstable();
    // Read before the rows are marked (a batched report is no longer unbatched).
    let span = report_span(conn, endpoint, &rows)?;
    if let Some((first, last)) = span {
        conn.prepare_cached(
            "UPDATE batches SET first_report_at = ?1, last_report_at = ?2 WHERE id = ?3",
        )?
        .execute(params![first, last, batch_row])?;
    }
    if mark_rows(conn, endpoint, &rows, batch_row)? != count {
        // A report is already batched, gone, or listed twice. The caller drops the
        // transaction: nothing of this batch is kept.
        return Err(StorageError::ReportUnavailable);
    }
    let mut rejected_rows = new.rejected_rows.clone();
    rejected_rows.sort_unstable();
    if reject_reports(conn, endpoint, &rejected_rows)? != rejected {
        return Err(StorageError::ReportUnavailable);
    }
    // A reservation for this batch is done with; a decision stays until the
    // coordinator knows every follower committed too.
    conn.prepare_cached(
        "DELETE FROM seals WHERE endpoint_id = ?1 AND batch_id = ?2 AND decided = 0",
    )?
    .execute(params![endpoint.0, new.batch_id])?;
    Ok(CommitOutcome::Committed(BatchInfo {
        batch_id: new.batch_id,
        count,
        rejected,
        sealed_at: from_millis(sealed_at),
        span: span.map(|(f, l)| (from_millis(f), from_millis(l))),
    }))
}

/// Marks the unbatched reports at `rows` (ascending) of an endpoint with
/// `batch_id` (a batch's row, or [`REJECTED`]), deleting what they no longer need;
/// returns how many were marked.
///
/// Rows of an existing endpoint are never deleted nor reused, so a row id and the
/// endpoint id name one report: runs of consecutive rows are marked by one range
/// statement each.
fn mark_rows(
    conn: &Connection,
    endpoint: EndpointId,
    rows: &[i64],
    batch_id: i64,
) -> rusqlite::Result<u64> {
    let mut mark = conn.prepare_cached(
        "UPDATE reports SET batch_id = ?1, share = NULL, user_key = NULL, poster = NULL \
         WHERE id BETWEEN ?2 AND ?3 AND +endpoint_id = ?4 AND batch_id IS NULL",
    )?;
    let mut marked = 0;
    for run in rows.chunk_by(|a, b| b - a == 1) {
        let (first, last) = (run[0], run[run.len() - 1]);
        marked += mark.execute(params![batch_id, first, last, endpoint.0])? as u64;
    }
    Ok(marked)
}

/// Marks the unbatched reports at `rows` (ascending) of an endpoint as rejected and
/// counts them in the endpoint's `rejected`; returns how many were marked.
pub(crate) fn reject_reports(
    conn: &Connection,
    endpoint: EndpointId,
    rows: &[i64],
) -> rusqlite::Result<u64> {
    let marked = mark_rows(conn, endpoint, rows, REJECTED)?;
    if marked > 0 {
        conn.prepare_cached("UPDATE endpoints SET rejected = rejected + ?1 WHERE id = ?2")?
            .execute(params![marked, endpoint.0])?;
    }
    Ok(marked)
}

/// The endpoint's verification key, `proposed` stored first if it has none.
pub(crate) fn verify_key(
    conn: &Connection,
    endpoint: EndpointId,
    proposed: Option<&[u8; 32]>,
) -> Result<Option<[u8; 32]>, StorageError> {
    if let Some(proposed) = proposed {
        conn.prepare_cached(
            "UPDATE endpoints SET verify_key = ?1 WHERE id = ?2 AND verify_key IS NULL",
        )?
        .execute(params![proposed, endpoint.0])?;
    }
    conn.prepare_cached("SELECT verify_key FROM endpoints WHERE id = ?1")?
        .query_row([endpoint.0], |row| row.get(0))
        .optional()?
        .ok_or(StorageError::UnknownEndpoint)
}

/// The sealed batches of an endpoint, oldest first.
pub(crate) fn list_batches(
    conn: &Connection,
    endpoint: EndpointId,
) -> rusqlite::Result<Vec<BatchInfo>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {BATCH_COLUMNS} FROM batches WHERE endpoint_id = ?1 ORDER BY id"
    ))?;
    statement.query_map([endpoint.0], batch_info)?.collect()
}

/// One sealed batch with its share.
pub(crate) fn get_batch(
    conn: &Connection,
    endpoint: EndpointId,
    batch_id: &[u8; 16],
) -> rusqlite::Result<Option<Batch>> {
    conn.prepare_cached(&format!(
        "SELECT {BATCH_COLUMNS}, share FROM batches WHERE endpoint_id = ?1 AND batch_id = ?2"
    ))?
    .query_row(params![endpoint.0, batch_id], batch)
    .optional()
}

/// Every sealed batch of an endpoint with its share, oldest first.
pub(crate) fn all_batches(conn: &Connection, endpoint: EndpointId) -> rusqlite::Result<Vec<Batch>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {BATCH_COLUMNS}, share FROM batches WHERE endpoint_id = ?1 ORDER BY id"
    ))?;
    statement.query_map([endpoint.0], batch)?.collect()
}

/// Expires unbatched reports received before `before` (Unix milliseconds) of every
/// endpoint without a seal in progress; returns how many.
pub(crate) fn expire_reports(
    conn: &Connection,
    endpoint: EndpointId,
    before: i64,
) -> rusqlite::Result<u64> {
    let sealing: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM seals WHERE endpoint_id = ?1)")?
        .query_row([endpoint.0], |row| row.get(0))?;
    if sealing {
        return Ok(0);
    }
    let expired = conn
        .prepare_cached(
            "UPDATE reports SET batch_id = ?1, share = NULL, user_key = NULL, poster = NULL \
             WHERE endpoint_id = ?2 AND batch_id IS NULL AND received_at < ?3",
        )?
        .execute(params![EXPIRED, endpoint.0, before])?;
    Ok(expired as u64)
}

/// How many distinct posters the reports at `rows` (ascending) of an endpoint
/// have, counting up to `enough` and stopping there; a report without a poster
/// (posted anonymously or before posters were kept) counts as one of its own.
pub(crate) fn distinct_posters(
    conn: &Connection,
    endpoint: EndpointId,
    rows: &[i64],
    enough: u64,
) -> Result<u64, StorageError> {
    let mut seen = std::collections::HashSet::new();
    let mut anonymous = 0u64;
    let mut count = 0;
    for chunk in rows.chunks(16_384) {
        visit_rows(conn, endpoint, chunk, "poster", |poster| {
            match poster.as_blob_or_null().map_err(rusqlite::Error::from)? {
                Some(poster) => {
                    seen.insert(<[u8; 16]>::try_from(poster).unwrap_or_default());
                }
                None => anonymous += 1,
            }
            count = seen.len() as u64 + anonymous;
            Ok(count < enough)
        })?;
        if count >= enough {
            break;
        }
    }
    Ok(count)
}

/// Deletes a released batch; see [`crate::storage::Storage::delete_batch`].
pub(crate) fn delete_batch(
    conn: &Connection,
    endpoint: EndpointId,
    batch_id: &[u8; 16],
    now: i64,
) -> rusqlite::Result<DeleteBatchOutcome> {
    let sealing: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM seals WHERE endpoint_id = ?1 AND batch_id = ?2 AND decided = 1)",
        )?
        .query_row(params![endpoint.0, batch_id], |row| row.get(0))?;
    if sealing {
        return Ok(DeleteBatchOutcome::NotReleased);
    }
    let Some(batch) = get_batch(conn, endpoint, batch_id)? else {
        return Ok(DeleteBatchOutcome::Unknown);
    };
    conn.prepare_cached(
        "INSERT INTO deleted_batches (endpoint_id, batch_id, count, rejected, sealed_at, \
         first_report_at, last_report_at, deleted_at) \
         SELECT endpoint_id, batch_id, count, rejected, sealed_at, first_report_at, \
         last_report_at, ?3 FROM batches WHERE endpoint_id = ?1 AND batch_id = ?2",
    )?
    .execute(params![endpoint.0, batch_id, now])?;
    conn.prepare_cached("DELETE FROM batches WHERE endpoint_id = ?1 AND batch_id = ?2")?
        .execute(params![endpoint.0, batch_id])?;
    Ok(DeleteBatchOutcome::Deleted(batch.info))
}

/// A batch committed on this server, held or deleted by an admin since.
pub(crate) fn committed_batch(
    conn: &Connection,
    endpoint: EndpointId,
    batch_id: &[u8; 16],
) -> rusqlite::Result<Option<BatchInfo>> {
    if let Some(batch) = get_batch(conn, endpoint, batch_id)? {
        return Ok(Some(batch.info));
    }
    conn.prepare_cached(&format!(
        "SELECT {BATCH_COLUMNS} FROM deleted_batches WHERE endpoint_id = ?1 AND batch_id = ?2"
    ))?
    .query_row(params![endpoint.0, batch_id], batch_info)
    .optional()
}
