//! Every SQL statement of the SQLite backend, as plain functions over a connection.
//!
//! Writers receive the writer thread's open transaction (as a `&Connection`) and never
//! begin or commit one themselves: the caller decides what commits together. Readers
//! run on a read-only connection. Statements are prepared once per connection and
//! cached.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::storage::{
    CreateEndpointOutcome, Endpoint, EndpointCounts, EndpointId, EndpointRecord,
    InsertReportOutcome, PluginInfo, PluginRecord, PutPluginOutcome, StorageError,
};

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
const ENDPOINT_COLUMNS: &str =
    "id, name, plugin_digest, plugin_name, params, config, config_hash, min_batch, created_at";

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
    if let Some(existing) = get_endpoint(conn, &new.name)? {
        let same = existing.record.plugin_digest == new.plugin_digest
            && existing.record.config_hash == new.config_hash
            && existing.record.min_batch == new.min_batch;
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
             (name, plugin_digest, plugin_name, params, config, config_hash, min_batch, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
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

/// Deletes an endpoint and its reports; returns whether it existed.
pub(crate) fn delete_endpoint(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    let Some(id) = conn
        .prepare_cached("SELECT id FROM endpoints WHERE name = ?1")?
        .query_row([name], |row| row.get::<_, i64>(0))
        .optional()?
    else {
        return Ok(false);
    };
    conn.prepare_cached("DELETE FROM reports WHERE endpoint_id = ?1")?
        .execute([id])?;
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
    // reports, the unique (endpoint_id, report_id) index for all of them.
    let unbatched: u64 = conn
        .prepare_cached("SELECT count(*) FROM reports WHERE endpoint_id = ?1 AND batch_id IS NULL")?
        .query_row([id], |row| row.get(0))?;
    let total: u64 = conn
        .prepare_cached("SELECT count(*) FROM reports WHERE endpoint_id = ?1")?
        .query_row([id], |row| row.get(0))?;
    Ok(Some(EndpointCounts {
        unbatched,
        batched: total.saturating_sub(unbatched),
    }))
}

/// Stores one report, or tells how it compares to the report already stored under
/// its id. A failure leaves the surrounding transaction usable (SQLite undoes only the
/// failed statement), unless the connection reports it rolled the transaction back.
pub(crate) fn insert_report(
    conn: &Connection,
    endpoint: EndpointId,
    report_id: &[u8; 16],
    share: &[u8],
    received_at: i64,
) -> Result<InsertReportOutcome, StorageError> {
    // Inserting first: a new id, the common case, costs one statement.
    let inserted = conn
        .prepare_cached(
            "INSERT INTO reports (endpoint_id, report_id, share, received_at) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (endpoint_id, report_id) DO NOTHING",
        )?
        .execute(params![endpoint.0, report_id, share, received_at]);
    match inserted {
        Ok(0) => {}
        Ok(_) => return Ok(InsertReportOutcome::Stored),
        Err(error) if is_foreign_key_violation(&error) => {
            return Err(StorageError::UnknownEndpoint);
        }
        Err(error) => return Err(error.into()),
    }
    let identical = conn
        .prepare_cached("SELECT share FROM reports WHERE endpoint_id = ?1 AND report_id = ?2")?
        .query_row(params![endpoint.0, report_id], |row| {
            // A NULL share was released and deleted: it cannot be compared, so the
            // replay is refused rather than acknowledged.
            Ok(row.get_ref(0)?.as_blob_or_null()? == Some(share))
        })?;
    Ok(if identical {
        InsertReportOutcome::Duplicate
    } else {
        InsertReportOutcome::Conflict
    })
}
