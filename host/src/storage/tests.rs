//! Tests of the storage module through its facade, on both backends (a SQLite
//! file in a temporary folder, a fresh PostgreSQL database: see `test_backends`),
//! and of the SQLite backend's internals.
//!
//! SQLite only, because they examine what only SQLite has: the migrations of
//! SQLite files and their versions (`migrations_apply_once`, `opening_twice_*`,
//! `an_older_schema_*`, `a_seal_in_progress_of_the_old_layout_*`,
//! `a_failing_migration_*`, `reports_of_the_unique_index_schema_*`), the pragmas
//! (`open_sets_durable_pragmas`), the writer thread paused to form one group, its
//! jobs, a failed commit or sync of a group and what close does with its queue
//! (`one_group_behaves_*`, `a_failed_commit_*`, `after_a_failed_sync_*`,
//! `jobs_between_*`, `close_writes_what_is_queued_*`,
//! `concurrent_posts_of_one_user_in_one_group_*`), the crash image of the file
//! and its log (`acknowledged_reports_survive_a_crash`), SQLite's error type
//! (`database_errors_do_not_show_their_detail`), the index of report ids
//! (`sqlite::ids`: `ids_moved_to_the_index_*`, `a_deleted_endpoints_waiting_ids_*`
//! and its model test `the_id_index_agrees_with_a_model`), the plan of the
//! quota's query, and the benchmarks. Every other test runs on both, and the
//! model test of report ids runs through the facade on both
//! (`posts_are_answered_as_a_model_answers`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::sync::oneshot;

use super::sqlite::ids::ReportIds;
use super::sqlite::migrations::{self, MIGRATIONS, Migration};
use super::sqlite::sql;
use super::test_backends::{TestBackend, TestDb, on_both_backends};
use super::*;

/// A fixed time with whole milliseconds, so that it reads back unchanged.
fn at(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + millis)
}

fn plugin(name: &str, wasm: &[u8]) -> PluginRecord {
    PluginRecord {
        digest: Sha256::digest(wasm).into(),
        name: name.to_owned(),
        version: "1.0.0".to_owned(),
        description: format!("the {name} plugin"),
        params_schema: r#"{"type":"object"}"#.to_owned(),
        wasm: wasm.to_vec(),
        builtin: name == "sum",
        created_at: at(1),
    }
}

fn endpoint(name: &str, plugin: &PluginRecord, config: &[u8], min_batch: u64) -> EndpointRecord {
    EndpointRecord {
        name: name.to_owned(),
        plugin_digest: plugin.digest,
        plugin_name: plugin.name.clone(),
        params: r#"{"length":10}"#.to_owned(),
        config: config.to_vec(),
        config_hash: Sha256::digest(config).into(),
        min_batch,
        max_reports_per_user: None,
        created_at: at(2),
        schedule: Default::default(),
    }
}

fn report_id(n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    id
}

/// A temporary directory and the database path inside it.
fn temp_db() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("guardian.db");
    (dir, path)
}

/// Options whose observer records every group commit.
fn observed() -> (StorageOptions, Arc<Mutex<Vec<CommitStats>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let options = StorageOptions {
        commit_observer: Some(Arc::new(move |stats| sink.lock().unwrap().push(stats))),
        ..StorageOptions::default()
    };
    (options, seen)
}

/// Each recorded group commit as (reports, committed).
fn groups(seen: &Mutex<Vec<CommitStats>>) -> Vec<(usize, bool)> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|s| (s.reports, s.committed))
        .collect()
}

/// The endpoint of an outcome that must be `Created`.
fn created_endpoint(outcome: CreateEndpointOutcome) -> Endpoint {
    match outcome {
        CreateEndpointOutcome::Created(endpoint) => endpoint,
        other => panic!("endpoint not created: {other:?}"),
    }
}

/// Creates `record` through `storage`, which must not have it yet.
async fn create(storage: &Storage, record: EndpointRecord) -> Endpoint {
    created_endpoint(storage.create_endpoint(record).await.unwrap())
}

/// Handles to `db` for concurrent callers: `storage` alone on SQLite (one
/// process per file); on PostgreSQL also a second storage over the same database,
/// as a second replica would hold, so that what must hold across replicas is
/// checked too.
async fn replicas(db: &TestDb, storage: &Storage) -> Vec<Storage> {
    let mut handles = vec![storage.clone()];
    if db.backend() == TestBackend::Postgres {
        handles.push(db.open().await);
    }
    handles
}

/// Stores the `sum` plugin and creates endpoint `steps` directly on `conn`,
/// with only the columns of the first schema (so it works on every version).
fn steps_on(conn: &Connection) -> EndpointId {
    let sum = plugin("sum", b"sum wasm");
    sql::put_plugin(conn, &sum).unwrap();
    conn.execute(
        "INSERT INTO endpoints \
         (name, plugin_digest, plugin_name, params, config, config_hash, min_batch, created_at) \
         VALUES ('steps', ?1, 'sum', '{}', x'00', ?2, 10, 0)",
        rusqlite::params![sum.digest.to_vec(), vec![7u8; 32]],
    )
    .unwrap();
    EndpointId(conn.last_insert_rowid())
}

/// Opens a store with one plugin and one endpoint; returns the endpoint.
async fn store_with_endpoint(db: &TestDb, options: StorageOptions) -> (Storage, Endpoint) {
    let storage = db.open_with(options).await;
    let sum = plugin("sum", b"sum wasm");
    storage.put_plugin(sum.clone()).await.unwrap();
    let created = create(&storage, endpoint("steps", &sum, b"config", 10)).await;
    (storage, created)
}

/// The stored reports of an endpoint, read with a connection of our own.
fn stored_reports(path: &Path, endpoint: EndpointId) -> HashMap<[u8; 16], Option<Vec<u8>>> {
    let conn = Connection::open(path).unwrap();
    let mut statement = conn
        .prepare("SELECT report_id, share FROM reports WHERE endpoint_id = ?1")
        .unwrap();
    let rows = statement
        .query_map([endpoint.0], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap();
    let count = rows.len();
    let reports: HashMap<_, _> = rows.into_iter().collect();
    assert_eq!(reports.len(), count, "a report id is stored twice");
    reports
}

/// Blocks the writer thread until the returned sender is used or dropped, so that a
/// test can queue several commands and have them taken as one group.
async fn pause_writer(storage: &Storage) -> std::sync::mpsc::Sender<()> {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (started, on_start) = oneshot::channel();
    storage
        .sqlite()
        .queue_job(Box::new(move |_conn| {
            let _ = started.send(());
            let _ = released.recv();
        }))
        .await
        .unwrap();
    on_start.await.unwrap();
    release
}

const V1: Migration = Migration {
    description: "table t",
    sql: "CREATE TABLE t (x INTEGER NOT NULL);",
};
const V2: Migration = Migration {
    description: "column y",
    sql: "ALTER TABLE t ADD COLUMN y INTEGER NOT NULL DEFAULT 7;",
};

#[test]
fn migrations_apply_once() {
    let (_dir, path) = temp_db();
    let mut conn = Connection::open(&path).unwrap();
    assert_eq!(
        migrations::migrate(&mut conn, MIGRATIONS).unwrap(),
        MIGRATIONS.len()
    );
    assert_eq!(migrations::migrate(&mut conn, MIGRATIONS).unwrap(), 0);
    assert_eq!(migrations::version(&conn).unwrap(), MIGRATIONS.len() as i64);
}

#[tokio::test]
async fn opening_twice_is_a_no_op() {
    let (_dir, path) = temp_db();
    Storage::open(&path, StorageOptions::default())
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let schema = |path: &Path| -> Vec<String> {
        let conn = Connection::open(path).unwrap();
        let mut statement = conn
            .prepare("SELECT sql FROM sqlite_schema ORDER BY name")
            .unwrap();
        statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(|r| r.unwrap_or_default())
            .collect()
    };
    let before = schema(&path);
    Storage::open(&path, StorageOptions::default())
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    assert_eq!(schema(&path), before);
    let conn = Connection::open(&path).unwrap();
    assert_eq!(migrations::version(&conn).unwrap(), MIGRATIONS.len() as i64);
}

#[test]
fn an_older_schema_is_migrated_and_keeps_its_data() {
    let (_dir, path) = temp_db();
    let mut conn = Connection::open(&path).unwrap();
    assert_eq!(migrations::migrate(&mut conn, &[V1]).unwrap(), 1);
    conn.execute("INSERT INTO t (x) VALUES (1)", []).unwrap();

    assert_eq!(migrations::migrate(&mut conn, &[V1, V2]).unwrap(), 1);
    assert_eq!(migrations::version(&conn).unwrap(), 2);
    let row: (i64, i64) = conn
        .query_row("SELECT x, y FROM t", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!(row, (1, 7));
}

#[test]
fn a_seal_in_progress_of_the_old_layout_stops_the_upgrade() {
    let (_dir, path) = temp_db();
    let mut conn = Connection::open(&path).unwrap();
    // Version 2 kept seals as ids and rows; version 3 as positions in the proposal.
    migrations::migrate(&mut conn, &MIGRATIONS[..2]).unwrap();
    // A seal row alone, without its endpoint.
    conn.pragma_update(None, "foreign_keys", false).unwrap();
    conn.execute(
        "INSERT INTO seals (endpoint_id, batch_id, decided, reports, created_at) \
         VALUES (1, zeroblob(16), 1, zeroblob(24), 0)",
        [],
    )
    .unwrap();
    let error = migrations::migrate(&mut conn, &MIGRATIONS[..3]).unwrap_err();
    assert!(
        format!("{error:?}").contains("finish it with the previous version"),
        "{error:?}"
    );
    assert_eq!(migrations::version(&conn).unwrap(), 2);
    conn.execute("DELETE FROM seals", []).unwrap();
    assert_eq!(migrations::migrate(&mut conn, &MIGRATIONS[..3]).unwrap(), 1);
}

#[test]
fn a_failing_migration_leaves_the_previous_version() {
    let (_dir, path) = temp_db();
    let mut conn = Connection::open(&path).unwrap();
    let broken = Migration {
        description: "broken",
        sql: "CREATE TABLE u (a INTEGER); THIS IS NOT SQL;",
    };
    assert!(matches!(
        migrations::migrate(&mut conn, &[V1, broken]),
        Err(StorageError::Database(_))
    ));
    assert_eq!(migrations::version(&conn).unwrap(), 1);
    let u_exists: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'u'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(u_exists, 0, "the failed step was partly applied");
}

async fn a_newer_schema_is_refused(db: TestDb) {
    db.open().await.close().await.unwrap();
    let newer = db.supported_schema() as i64 + 1;
    db.set_schema_version(newer).await;
    let error = db.try_open(StorageOptions::default()).await.unwrap_err();
    assert!(
        matches!(error, StorageError::SchemaTooNew { found, supported } if found == newer && supported == db.supported_schema()),
        "{error:?}"
    );
}
on_both_backends!(a_newer_schema_is_refused);

#[tokio::test]
async fn open_sets_durable_pragmas() {
    let (_dir, path) = temp_db();
    let storage = Storage::open(&path, StorageOptions::default())
        .await
        .unwrap();
    let (reply, answer) = oneshot::channel();
    storage
        .sqlite()
        .queue_job(Box::new(move |conn| {
            let read = |name: &str| -> String {
                conn.pragma_query_value(None, name, |row| row.get::<_, rusqlite::types::Value>(0))
                    .map(|v| format!("{v:?}"))
                    .unwrap()
            };
            let _ = reply.send((
                read("journal_mode"),
                read("synchronous"),
                read("foreign_keys"),
            ));
        }))
        .await
        .unwrap();
    let (journal, synchronous, foreign_keys) = answer.await.unwrap();
    assert_eq!(journal, r#"Text("wal")"#);
    assert_eq!(synchronous, "Integer(2)", "synchronous must be FULL");
    assert_eq!(foreign_keys, "Integer(1)");
    storage.close().await.unwrap();
}

async fn reopening_keeps_plugins_endpoints_and_reports(db: TestDb) {
    let (storage, steps) = store_with_endpoint(&db, StorageOptions::default()).await;
    for n in 0..3 {
        let stored = storage
            .insert_report(steps.id, report_id(n), vec![n as u8; 8], at(3))
            .await
            .unwrap();
        assert_eq!(stored, InsertReportOutcome::Stored);
    }
    let plugins = storage.list_plugins().await.unwrap();
    storage.close().await.unwrap();

    let storage = db.open().await;
    assert_eq!(storage.list_plugins().await.unwrap(), plugins);
    assert_eq!(
        storage.get_endpoint("steps").await.unwrap(),
        Some(steps.clone())
    );
    assert_eq!(
        storage.endpoint_counts("steps").await.unwrap(),
        Some(EndpointCounts {
            unbatched: 3,
            ..EndpointCounts::default()
        })
    );
    assert_eq!(
        storage
            .insert_report(steps.id, report_id(1), vec![1; 8], at(4))
            .await
            .unwrap(),
        InsertReportOutcome::Duplicate
    );
    storage.close().await.unwrap();
    let reports = db.stored_reports(steps.id).await;
    assert_eq!(reports.len(), 3);
    assert_eq!(reports[&report_id(2)], Some(vec![2; 8]));
}
on_both_backends!(reopening_keeps_plugins_endpoints_and_reports);

async fn plugins_are_stored_once_by_digest(db: TestDb) {
    let storage = db.open().await;
    let sum = plugin("sum", b"sum wasm bytes");
    let count = plugin("count", b"count wasm");
    assert_eq!(
        storage.put_plugin(sum.clone()).await.unwrap(),
        PutPluginOutcome::Inserted
    );
    assert_eq!(
        storage.put_plugin(count.clone()).await.unwrap(),
        PutPluginOutcome::Inserted
    );
    // A second upload of the same bytes keeps the first metadata.
    let again = PluginRecord {
        description: "changed".to_owned(),
        ..sum.clone()
    };
    assert_eq!(
        storage.put_plugin(again).await.unwrap(),
        PutPluginOutcome::AlreadyPresent
    );

    let expected_sum = PluginInfo {
        digest: sum.digest,
        name: "sum".to_owned(),
        version: "1.0.0".to_owned(),
        description: "the sum plugin".to_owned(),
        params_schema: r#"{"type":"object"}"#.to_owned(),
        builtin: true,
        created_at: at(1),
        wasm_len: 14,
    };
    assert_eq!(
        storage.get_plugin(sum.digest).await.unwrap(),
        Some(expected_sum.clone())
    );
    let listed = storage.list_plugins().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["count", "sum"]);
    assert_eq!(listed[1], expected_sum);
    assert!(!listed[0].builtin);

    assert_eq!(
        storage.plugin_wasm(count.digest).await.unwrap(),
        Some(b"count wasm".to_vec())
    );
    assert_eq!(storage.get_plugin([9; 32]).await.unwrap(), None);
    assert_eq!(storage.plugin_wasm([9; 32]).await.unwrap(), None);
    storage.close().await.unwrap();
}
on_both_backends!(plugins_are_stored_once_by_digest);

async fn endpoint_creation_compares_with_the_existing_one(db: TestDb) {
    let storage = db.open().await;
    let sum = plugin("sum", b"sum wasm");
    let count = plugin("count", b"count wasm");
    storage.put_plugin(sum.clone()).await.unwrap();
    storage.put_plugin(count.clone()).await.unwrap();
    let original = endpoint("steps", &sum, b"config", 10);
    let created = create(&storage, original.clone()).await;
    assert_eq!(created.record, original);
    assert_eq!(
        storage.get_endpoint("steps").await.unwrap(),
        Some(created.clone())
    );

    async fn check(
        storage: &Storage,
        request: EndpointRecord,
        expected: &str,
        existing: &Endpoint,
    ) {
        let outcome = storage.create_endpoint(request).await.unwrap();
        let (kind, found) = match outcome {
            CreateEndpointOutcome::Created(e) => ("created", e),
            CreateEndpointOutcome::Identical(e) => ("identical", e),
            CreateEndpointOutcome::Conflict(e) => ("conflict", e),
        };
        assert_eq!(kind, expected);
        assert_eq!(
            &found, existing,
            "the stored endpoint must be returned unchanged"
        );
    }
    // Identical: params text and creation time are not part of the identity.
    let same = EndpointRecord {
        params: r#"{ "length": 10 }"#.to_owned(),
        created_at: at(99),
        ..original.clone()
    };
    check(&storage, same, "identical", &created).await;
    check(
        &storage,
        endpoint("steps", &count, b"config", 10),
        "conflict",
        &created,
    )
    .await;
    check(
        &storage,
        endpoint("steps", &sum, b"other config", 10),
        "conflict",
        &created,
    )
    .await;
    check(
        &storage,
        endpoint("steps", &sum, b"config", 11),
        "conflict",
        &created,
    )
    .await;

    let other = create(&storage, endpoint("clicks", &count, b"c", 1)).await;
    assert_ne!(other.id, created.id);
    let names: Vec<String> = storage
        .list_endpoints()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.record.name)
        .collect();
    assert_eq!(names, ["clicks", "steps"]);
    assert_eq!(storage.get_endpoint("nope").await.unwrap(), None);
    assert_eq!(storage.endpoint_counts("nope").await.unwrap(), None);
    storage.close().await.unwrap();
}
on_both_backends!(endpoint_creation_compares_with_the_existing_one);

async fn endpoint_of_an_unknown_plugin_or_too_large_is_refused(db: TestDb) {
    let storage = db.open().await;
    let missing = plugin("missing", b"never stored");
    let error = storage
        .create_endpoint(endpoint("steps", &missing, b"config", 10))
        .await
        .unwrap_err();
    assert!(matches!(error, StorageError::UnknownPlugin), "{error:?}");
    let sum = plugin("sum", b"sum wasm");
    storage.put_plugin(sum.clone()).await.unwrap();
    let error = storage
        .create_endpoint(endpoint("steps", &sum, b"config", u64::MAX))
        .await
        .unwrap_err();
    assert!(
        matches!(error, StorageError::OutOfRange("min_batch")),
        "{error:?}"
    );
    assert!(storage.list_endpoints().await.unwrap().is_empty());
    storage.close().await.unwrap();
}
on_both_backends!(endpoint_of_an_unknown_plugin_or_too_large_is_refused);

async fn deleting_an_endpoint_removes_its_reports(db: TestDb) {
    let (storage, steps) = store_with_endpoint(&db, StorageOptions::default()).await;
    let sum = plugin("sum", b"sum wasm");
    let kept = create(&storage, endpoint("kept", &sum, b"config", 10)).await;
    for n in 0..5 {
        storage
            .insert_report(steps.id, report_id(n), vec![1], at(3))
            .await
            .unwrap();
        storage
            .insert_report(kept.id, report_id(n), vec![1], at(3))
            .await
            .unwrap();
    }

    assert!(storage.delete_endpoint("steps").await.unwrap());
    assert!(!storage.delete_endpoint("steps").await.unwrap());
    assert_eq!(storage.get_endpoint("steps").await.unwrap(), None);
    assert!(db.stored_reports(steps.id).await.is_empty());
    assert_eq!(db.stored_reports(kept.id).await.len(), 5);

    // A report still holding the deleted id is refused, even after re-creation.
    let recreated = create(&storage, endpoint("steps", &sum, b"config", 10)).await;
    assert_ne!(recreated.id, steps.id, "endpoint ids must not be reused");
    let error = storage
        .insert_report(steps.id, report_id(9), vec![1], at(3))
        .await
        .unwrap_err();
    assert!(matches!(error, StorageError::UnknownEndpoint), "{error:?}");
    assert_eq!(
        storage.endpoint_counts("steps").await.unwrap(),
        Some(EndpointCounts::default())
    );
    storage.close().await.unwrap();
}
on_both_backends!(deleting_an_endpoint_removes_its_reports);

/// Commits `reports` as batch `[batch; 16]` with a made-up released share.
async fn commit(
    storage: &Storage,
    endpoint: EndpointId,
    batch: u8,
    reports: &[SealReport],
) -> Result<CommitOutcome, StorageError> {
    storage
        .commit_batch(
            endpoint,
            NewBatch {
                batch_id: [batch; 16],
                share: vec![batch; 4],
                sealed_at: at(10),
                rejected_rows: Vec::new(),
            },
            rows(reports),
        )
        .await
}

fn rows(reports: &[SealReport]) -> Vec<i64> {
    reports.iter().map(|r| r.row).collect()
}

async fn a_committed_batch_releases_its_reports_once(db: TestDb) {
    let (storage, steps) = store_with_endpoint(&db, StorageOptions::default()).await;
    for n in 0..7 {
        storage
            .insert_report(steps.id, report_id(n), vec![n as u8; 3], at(3))
            .await
            .unwrap();
    }
    let all = storage
        .unbatched_reports(steps.id, 0, usize::MAX)
        .await
        .unwrap();
    let first = storage.unbatched_reports(steps.id, 0, 3).await.unwrap();
    assert_eq!(first, all[..3]);
    assert_eq!(
        first.iter().map(|r| r.report_id).collect::<Vec<_>>(),
        [report_id(0), report_id(1), report_id(2)],
        "oldest first"
    );
    let (data, ends) = storage.read_shares(steps.id, rows(&first)).await.unwrap();
    assert_eq!(data, [0, 0, 0, 1, 1, 1, 2, 2, 2]);
    assert_eq!(ends, [3, 6, 9]);
    let outcome = commit(&storage, steps.id, 1, &first).await.unwrap();
    assert!(matches!(outcome, CommitOutcome::Committed(info) if info.count == 3));
    // Retried: the same batch, nothing changed.
    let again = commit(&storage, steps.id, 1, &first).await.unwrap();
    assert_eq!(again, CommitOutcome::AlreadyCommitted(outcome.info()));
    assert_eq!(
        storage.endpoint_counts("steps").await.unwrap(),
        Some(EndpointCounts {
            unbatched: 4,
            batched: 3,
            expired: 0,
            batches: 1,
            rejected: 0,
        })
    );
    // A report already batched cannot go into another batch: nothing of it is kept.
    assert!(matches!(
        commit(&storage, steps.id, 2, &all[2..4]).await,
        Err(StorageError::ReportUnavailable)
    ));
    // Its shares are gone: they cannot be read for another fold either.
    assert!(matches!(
        storage.read_shares(steps.id, rows(&first)).await,
        Err(StorageError::ReportUnavailable)
    ));
    assert_eq!(storage.list_batches(steps.id).await.unwrap().len(), 1);
    let batch = storage.get_batch(steps.id, [1; 16]).await.unwrap().unwrap();
    assert_eq!((batch.info.count, batch.share), (3, vec![1; 4]));
    // Report ids stay readable by row, batched or not (a decision is resent by id).
    assert_eq!(
        storage
            .report_ids(steps.id, vec![all[1].row, all[2].row, all[4].row])
            .await
            .unwrap(),
        [report_id(1), report_id(2), report_id(4)]
    );
    assert!(matches!(
        storage.report_ids(steps.id, vec![all[6].row + 1]).await,
        Err(StorageError::ReportUnavailable)
    ));
    // A released report's id stays taken: an identical retry is still told from
    // another share (by the share's digest), and nothing is stored again.
    for (share, expected) in [
        (vec![0; 3], InsertReportOutcome::Duplicate),
        (vec![9; 3], InsertReportOutcome::Conflict),
    ] {
        assert_eq!(
            storage
                .insert_report(steps.id, report_id(0), share, at(4))
                .await
                .unwrap(),
            expected
        );
    }
    storage.close().await.unwrap();
    // The schema refuses a share deleted before its report was batched.
    let refused = db
        .execute("UPDATE reports SET share = NULL WHERE batch_id IS NULL")
        .await;
    assert!(refused.is_err(), "an unbatched report lost its share");
    assert_eq!(
        db.count("SELECT count(*) FROM reports WHERE share IS NULL")
            .await,
        3
    );
}
on_both_backends!(a_committed_batch_releases_its_reports_once);

/// Shares are read by row whether the rows are dense (one endpoint's reports
/// with a few of another's between them) or sparse, and a row that is not the
/// endpoint's, or a list out of order, is refused either way.
async fn shares_are_read_from_dense_and_sparse_rows(db: TestDb) {
    let (storage, steps) = store_with_endpoint(&db, StorageOptions::default()).await;
    let sum = plugin("sum", b"sum wasm");
    let other = create(&storage, endpoint("other", &sum, b"config", 10)).await;
    // steps 0..40, with one report of `other` after every fourth.
    for n in 0..40u8 {
        storage
            .insert_report(steps.id, report_id(u64::from(n)), vec![n; 2], at(3))
            .await
            .unwrap();
        if n % 4 == 3 {
            storage
                .insert_report(
                    other.id,
                    report_id(1000 + u64::from(n)),
                    vec![255; 2],
                    at(3),
                )
                .await
                .unwrap();
        }
    }
    let all = rows(
        &storage
            .unbatched_reports(steps.id, 0, usize::MAX)
            .await
            .unwrap(),
    );
    let theirs = rows(
        &storage
            .unbatched_reports(other.id, 0, usize::MAX)
            .await
            .unwrap(),
    );
    let shares = |picked: &[usize]| {
        picked
            .iter()
            .flat_map(|&i| [i as u8; 2])
            .collect::<Vec<_>>()
    };
    // Dense: every report of `steps`, the rows of `other` between them skipped.
    let (data, ends) = storage.read_shares(steps.id, all.clone()).await.unwrap();
    assert_eq!(data, shares(&(0..40).collect::<Vec<_>>()));
    assert_eq!(ends.len(), 40);
    // Sparse: every ninth.
    let picked: Vec<usize> = (0..40).step_by(9).collect();
    let sparse: Vec<i64> = picked.iter().map(|&i| all[i]).collect();
    let (data, _) = storage.read_shares(steps.id, sparse).await.unwrap();
    assert_eq!(data, shares(&picked));
    // A row of `other` among them, dense or sparse: refused.
    for list in [
        vec![all[2], all[3], theirs[0], all[4]],
        vec![all[0], theirs[0], all[39]],
    ] {
        assert!(
            matches!(
                storage.read_shares(steps.id, list.clone()).await,
                Err(StorageError::ReportUnavailable)
            ),
            "{list:?}"
        );
    }
    // Out of order, or a row twice: refused.
    for list in [vec![all[5], all[4]], vec![all[4], all[4]]] {
        assert!(
            matches!(
                storage.read_shares(steps.id, list.clone()).await,
                Err(StorageError::ReportUnavailable)
            ),
            "{list:?}"
        );
    }
    storage.close().await.unwrap();
}
on_both_backends!(shares_are_read_from_dense_and_sparse_rows);

async fn one_seal_in_progress_per_endpoint(db: TestDb) {
    let (storage, steps) = store_with_endpoint(&db, StorageOptions::default()).await;
    for n in 0..4 {
        storage
            .insert_report(steps.id, report_id(n), vec![1], at(3))
            .await
            .unwrap();
    }
    let reports = storage.unbatched_reports(steps.id, 0, 10).await.unwrap();
    let seal = |batch: u8, decided: bool| Seal {
        endpoint: steps.id,
        batch_id: [batch; 16],
        seal_number: u64::from(batch),
        decided,
        positions: vec![0b1111],
        rows: rows(&reports),
        created_at: at(5),
        verification: None,
    };
    // A newer reservation replaces an older one.
    storage.put_seal(&seal(1, false)).await.unwrap();
    storage.put_seal(&seal(2, false)).await.unwrap();
    assert_eq!(
        storage.pending_seal(steps.id).await.unwrap(),
        Some(seal(2, false))
    );
    assert!(!storage.drop_seal(steps.id, [1; 16]).await.unwrap());
    // A decision stays until completed: another seal is refused, the same is a no-op.
    storage.put_seal(&seal(3, true)).await.unwrap();
    assert!(matches!(
        storage.put_seal(&seal(4, false)).await,
        Err(StorageError::SealPending)
    ));
    storage.put_seal(&seal(3, true)).await.unwrap();
    assert_eq!(storage.decided_seals().await.unwrap(), vec![seal(3, true)]);
    // It survives a restart, and committing its batch completes it.
    storage.close().await.unwrap();
    let storage = db.open().await;
    assert_eq!(
        storage.pending_seal(steps.id).await.unwrap(),
        Some(seal(3, true))
    );
    // Committing its batch keeps the decision (other servers may still have to
    // commit); dropping it ends the seal.
    commit(&storage, steps.id, 3, &reports).await.unwrap();
    assert_eq!(storage.decided_seals().await.unwrap(), vec![seal(3, true)]);
    assert!(storage.drop_seal(steps.id, [3; 16]).await.unwrap());
    assert_eq!(storage.pending_seal(steps.id).await.unwrap(), None);
    // A reservation is dropped by committing its batch.
    for n in 4..6 {
        storage
            .insert_report(steps.id, report_id(n), vec![1], at(7))
            .await
            .unwrap();
    }
    let rest = storage.unbatched_reports(steps.id, 0, 10).await.unwrap();
    storage
        .put_seal(&Seal {
            batch_id: [5; 16],
            positions: vec![0b11],
            rows: rows(&rest),
            ..seal(5, false)
        })
        .await
        .unwrap();
    commit(&storage, steps.id, 5, &rest).await.unwrap();
    assert_eq!(storage.pending_seal(steps.id).await.unwrap(), None);
    storage.close().await.unwrap();
}
on_both_backends!(one_seal_in_progress_per_endpoint);

async fn unbatched_reports_expire_unless_a_seal_may_hold_them(db: TestDb) {
    let (storage, steps) = store_with_endpoint(&db, StorageOptions::default()).await;
    for n in 0..5 {
        storage
            .insert_report(steps.id, report_id(n), vec![1], at(n * 1000))
            .await
            .unwrap();
    }
    let reserved = storage.unbatched_reports(steps.id, 0, 1).await.unwrap();
    storage
        .put_seal(&Seal {
            endpoint: steps.id,
            batch_id: [1; 16],
            seal_number: 1,
            decided: false,
            positions: vec![1],
            rows: rows(&reserved),
            created_at: at(0),
            verification: None,
        })
        .await
        .unwrap();
    assert_eq!(storage.expire_reports(steps.id, at(2500)).await.unwrap(), 0);
    assert!(storage.drop_seal(steps.id, [1; 16]).await.unwrap());
    assert_eq!(storage.expire_reports(steps.id, at(2500)).await.unwrap(), 3);
    assert_eq!(
        storage.endpoint_counts("steps").await.unwrap(),
        Some(EndpointCounts {
            unbatched: 2,
            batched: 0,
            expired: 3,
            batches: 0,
            rejected: 0,
        })
    );
    // An expired id stays taken: the same share is a duplicate, another refused.
    for (share, expected) in [
        (vec![1], InsertReportOutcome::Duplicate),
        (vec![2], InsertReportOutcome::Conflict),
    ] {
        assert_eq!(
            storage
                .insert_report(steps.id, report_id(0), share, at(9000))
                .await
                .unwrap(),
            expected
        );
    }
    storage.close().await.unwrap();
}
on_both_backends!(unbatched_reports_expire_unless_a_seal_may_hold_them);

async fn report_insert_outcomes(db: TestDb) {
    let (storage, steps) = store_with_endpoint(&db, StorageOptions::default()).await;
    let sum = plugin("sum", b"sum wasm");
    let other = create(&storage, endpoint("other", &sum, b"config", 10)).await;
    let id = report_id(42);
    let check = |endpoint: EndpointId, share: &'static [u8], expected: InsertReportOutcome| {
        let storage = storage.clone();
        async move {
            let outcome = storage
                .insert_report(endpoint, id, share.to_vec(), at(5))
                .await
                .unwrap();
            assert_eq!(outcome, expected, "share {share:?}");
        }
    };
    check(steps.id, b"first", InsertReportOutcome::Stored).await;
    check(steps.id, b"first", InsertReportOutcome::Duplicate).await;
    check(steps.id, b"second", InsertReportOutcome::Conflict).await;
    check(steps.id, b"", InsertReportOutcome::Conflict).await;
    // Report ids are per endpoint.
    check(other.id, b"second", InsertReportOutcome::Stored).await;

    let error = storage
        .insert_report(EndpointId(12345), id, vec![1], at(5))
        .await
        .unwrap_err();
    assert!(matches!(error, StorageError::UnknownEndpoint), "{error:?}");
    storage.close().await.unwrap();

    assert_eq!(
        db.stored_reports(steps.id).await[&id],
        Some(b"first".to_vec())
    );
    assert_eq!(
        db.stored_reports(other.id).await[&id],
        Some(b"second".to_vec())
    );
}
on_both_backends!(report_insert_outcomes);

#[tokio::test]
async fn one_group_behaves_like_sequential_inserts() {
    let db = TestDb::sqlite();
    let path = db.path().to_owned();
    let (options, seen) = observed();
    let (storage, steps) = store_with_endpoint(&db, options).await;
    let release = pause_writer(&storage).await;
    let queued = [
        (steps.id, report_id(1), b"a".to_vec()),
        (steps.id, report_id(1), b"a".to_vec()),
        (EndpointId(999), report_id(2), b"x".to_vec()),
        (steps.id, report_id(1), b"b".to_vec()),
        (steps.id, report_id(2), b"c".to_vec()),
    ];
    let mut replies = Vec::new();
    for (endpoint, id, share) in queued {
        replies.push(
            storage
                .sqlite()
                .queue_report(endpoint, id, share, at(6))
                .await
                .unwrap(),
        );
    }
    seen.lock().unwrap().clear();
    drop(release);
    let mut outcomes = Vec::new();
    for reply in replies {
        outcomes.push(reply.await.unwrap().map_err(|e| e.to_string()));
    }
    assert_eq!(
        outcomes,
        [
            Ok(InsertReportOutcome::Stored),
            Ok(InsertReportOutcome::Duplicate),
            Err("no such endpoint".to_owned()),
            Ok(InsertReportOutcome::Conflict),
            Ok(InsertReportOutcome::Stored),
        ]
    );
    assert_eq!(
        groups(&seen),
        [(5, true)],
        "the five inserts were not one group"
    );
    storage.close().await.unwrap();
    let reports = stored_reports(&path, steps.id);
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[&report_id(1)], Some(b"a".to_vec()));
}

#[tokio::test]
async fn a_failed_commit_fails_every_report_of_the_group() {
    let db = TestDb::sqlite();
    let path = db.path().to_owned();
    let (options, seen) = observed();
    let (storage, steps) = store_with_endpoint(&db, options).await;
    // A real commit-time failure: the poisoned report inserts a row whose deferred
    // foreign key is checked, and violated, only at COMMIT.
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE parent (id INTEGER PRIMARY KEY);
             CREATE TABLE poison (p INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);
             CREATE TRIGGER poison_commit AFTER INSERT ON reports
             WHEN NEW.report_id = X'ffffffffffffffffffffffffffffffff'
             BEGIN INSERT INTO poison (p) VALUES (42); END;",
        )
        .unwrap();

    let release = pause_writer(&storage).await;
    let mut replies = Vec::new();
    for id in [report_id(1), [0xff; 16], report_id(2)] {
        replies.push(
            storage
                .sqlite()
                .queue_report(steps.id, id, vec![1], at(7))
                .await
                .unwrap(),
        );
    }
    seen.lock().unwrap().clear();
    drop(release);
    for reply in replies {
        let error = reply.await.unwrap().unwrap_err();
        assert!(matches!(error, StorageError::Database(_)), "{error:?}");
    }
    assert_eq!(groups(&seen), [(3, false)]);
    assert!(
        stored_reports(&path, steps.id).is_empty(),
        "a failed group left rows"
    );

    // The writer goes on with the next group.
    assert_eq!(
        storage
            .insert_report(steps.id, report_id(1), vec![1], at(8))
            .await
            .unwrap(),
        InsertReportOutcome::Stored
    );
    storage.close().await.unwrap();
}

#[tokio::test]
async fn after_a_failed_sync_no_report_is_acknowledged() {
    let db = TestDb::sqlite();
    let path = db.path().to_owned();
    let (options, seen) = observed();
    let (storage, steps) = store_with_endpoint(&db, options).await;
    // The syncer opens the log at its first sync; gone, it cannot, as if the disk
    // had failed. SQLite itself keeps writing to the file it holds open.
    std::fs::remove_file(super::sqlite::wal_path(&path)).unwrap();

    for n in 1..=2 {
        let error = storage
            .insert_report(steps.id, report_id(n), vec![1], at(n))
            .await
            .unwrap_err();
        assert!(matches!(error, StorageError::Sync(_)), "{error:?}");
        // A log file to sync is back; the failure must stick all the same.
        std::fs::File::create(super::sqlite::wal_path(&path)).unwrap();
    }
    // Committed to the database, but never acknowledged: no later sync that
    // succeeds could prove the earlier log pages reached the disk.
    assert_eq!(groups(&seen), [(1, false), (1, false)]);
    storage.close().await.unwrap();
}

#[tokio::test]
async fn jobs_between_report_groups_still_commit_synced() {
    let db = TestDb::sqlite();
    let (storage, steps) = store_with_endpoint(&db, StorageOptions::default()).await;
    storage
        .insert_report(steps.id, report_id(1), vec![1], at(1))
        .await
        .unwrap();
    // Report groups commit unsynced (the syncer syncs them); a job must not.
    for _ in 0..2 {
        let (reply, answer) = oneshot::channel();
        storage
            .sqlite()
            .queue_job(Box::new(move |conn| {
                let mode: i64 = conn
                    .pragma_query_value(None, "synchronous", |row| row.get(0))
                    .unwrap();
                let _ = reply.send(mode);
            }))
            .await
            .unwrap();
        assert_eq!(
            answer.await.unwrap(),
            2,
            "jobs commit with synchronous=FULL"
        );
        storage
            .insert_report(steps.id, report_id(2), vec![1], at(2))
            .await
            .unwrap();
    }
    storage.close().await.unwrap();
}

async fn concurrent_inserts_are_grouped_and_each_stored_once(db: TestDb) {
    const TASKS: u64 = 64;
    const PER_TASK: u64 = 200;
    let (options, seen) = observed();
    let (storage, steps) = store_with_endpoint(&db, options.clone()).await;
    // On PostgreSQL the tasks alternate between two replicas (two storages over
    // the database): an id is stored once by the database, not by one writer.
    let mut handles = vec![storage.clone()];
    if db.backend() == TestBackend::Postgres {
        handles.push(db.open_with(options).await);
    }
    seen.lock().unwrap().clear();

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let storage = handles[task as usize % handles.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for i in 0..PER_TASK {
                // Every fourth report id is posted by every task: half of them with
                // one share, half with another.
                let (id, share) = if i % 4 == 0 {
                    (
                        report_id(i),
                        format!("shared {i} {}", task % 2).into_bytes(),
                    )
                } else {
                    (
                        report_id(1_000_000 + task * PER_TASK + i),
                        format!("own {task} {i}").into_bytes(),
                    )
                };
                let outcome = storage
                    .insert_report(steps.id, id, share.clone(), at(9))
                    .await
                    .unwrap();
                results.push((id, share, outcome));
            }
            results
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.extend(task.await.unwrap());
    }

    let winners: HashMap<[u8; 16], Vec<u8>> = results
        .iter()
        .filter(|(_, _, outcome)| *outcome == InsertReportOutcome::Stored)
        .map(|(id, share, _)| (*id, share.clone()))
        .collect();
    let stored_count = results
        .iter()
        .filter(|(_, _, outcome)| *outcome == InsertReportOutcome::Stored)
        .count();
    let distinct_ids = (PER_TASK / 4 + TASKS * (PER_TASK - PER_TASK / 4)) as usize;
    assert_eq!(winners.len(), distinct_ids);
    assert_eq!(stored_count, distinct_ids, "an id was stored twice");
    let (mut duplicates, mut conflicts) = (0, 0);
    for (id, share, outcome) in &results {
        match outcome {
            InsertReportOutcome::Stored => {}
            InsertReportOutcome::Duplicate => {
                duplicates += 1;
                assert_eq!(&winners[id], share);
            }
            InsertReportOutcome::Conflict => {
                conflicts += 1;
                assert_ne!(&winners[id], share);
            }
            InsertReportOutcome::UserQuotaExceeded { .. } => panic!("no quota here"),
        }
    }
    // Per shared id, 31 tasks posted the winner's share again and 32 the other one.
    assert_eq!(duplicates, (PER_TASK / 4 * (TASKS / 2 - 1)) as usize);
    assert_eq!(conflicts, (PER_TASK / 4 * (TASKS / 2)) as usize);

    let stats = seen.lock().unwrap().clone();
    assert_eq!(
        stats.iter().map(|s| s.reports).sum::<usize>(),
        (TASKS * PER_TASK) as usize
    );
    assert!(stats.iter().all(|s| s.committed));
    let largest = stats.iter().map(|s| s.reports).max().unwrap();
    assert!(
        largest > 1,
        "no group commit happened: {} commits",
        stats.len()
    );
    assert!(stats.len() < (TASKS * PER_TASK) as usize);

    for handle in handles {
        handle.close().await.unwrap();
    }
    let stored = db.stored_reports(steps.id).await;
    assert_eq!(stored.len(), distinct_ids);
    for (id, share) in &winners {
        assert_eq!(stored[id].as_ref(), Some(share));
    }
}
on_both_backends!(
    concurrent_inserts_are_grouped_and_each_stored_once,
    multi_thread
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_reports_survive_a_crash() {
    let db = TestDb::sqlite();
    let path = db.path().to_owned();
    let dir = path.parent().unwrap();
    let (storage, steps) = store_with_endpoint(&db, StorageOptions::default()).await;
    let mut tasks = Vec::new();
    for task in 0..10u64 {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let n = task * 50 + i;
                let outcome = storage
                    .insert_report(steps.id, report_id(n), n.to_be_bytes().to_vec(), at(10))
                    .await;
                assert_eq!(outcome.unwrap(), InsertReportOutcome::Stored);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    // The files as a crash would leave them now: the database and its write-ahead
    // log, without the shared-memory index and without the checkpoint of a clean close.
    let image = dir.join("crash");
    std::fs::create_dir(&image).unwrap();
    let copied = image.join("guardian.db");
    std::fs::copy(&path, &copied).unwrap();
    let wal = dir.join("guardian.db-wal");
    std::fs::copy(&wal, image.join("guardian.db-wal")).unwrap();
    // And the original, dropped without close.
    drop(storage);

    for path in [&copied, &path] {
        let storage = Storage::open(path, StorageOptions::default())
            .await
            .unwrap();
        assert_eq!(
            storage.endpoint_counts("steps").await.unwrap(),
            Some(EndpointCounts {
                unbatched: 500,
                ..EndpointCounts::default()
            }),
            "{}",
            path.display()
        );
        storage.close().await.unwrap();
        let reports = stored_reports(path, steps.id);
        assert_eq!(
            reports[&report_id(499)],
            Some(499u64.to_be_bytes().to_vec())
        );
    }
}

#[tokio::test]
async fn close_writes_what_is_queued_then_refuses_work() {
    let db = TestDb::sqlite();
    let path = db.path().to_owned();
    let (storage, steps) = store_with_endpoint(&db, StorageOptions::default()).await;
    let release = pause_writer(&storage).await;
    let mut replies = Vec::new();
    for n in 0..300 {
        replies.push(
            storage
                .sqlite()
                .queue_report(steps.id, report_id(n), vec![7], at(11))
                .await
                .unwrap(),
        );
    }
    let other = storage.clone();
    // `join!` polls in order: close queues its shutdown behind the 300 reports before
    // the writer is released.
    let (closed, ()) = tokio::join!(storage.close(), async move { drop(release) });
    closed.unwrap();
    for reply in replies {
        assert_eq!(reply.await.unwrap().unwrap(), InsertReportOutcome::Stored);
    }
    assert!(matches!(
        other
            .insert_report(steps.id, report_id(1000), vec![7], at(12))
            .await,
        Err(StorageError::Closed)
    ));
    assert!(matches!(
        other.list_endpoints().await,
        Err(StorageError::Closed)
    ));
    assert!(matches!(
        other.put_plugin(plugin("x", b"x")).await,
        Err(StorageError::Closed)
    ));
    other.close().await.unwrap();
    assert_eq!(stored_reports(&path, steps.id).len(), 300);
}

async fn a_closed_storage_refuses_work(db: TestDb) {
    let (storage, steps) = store_with_endpoint(&db, StorageOptions::default()).await;
    storage
        .insert_report(steps.id, report_id(1), vec![7], at(11))
        .await
        .unwrap();
    let other = storage.clone();
    storage.close().await.unwrap();
    assert!(matches!(
        other
            .insert_report(steps.id, report_id(2), vec![7], at(12))
            .await,
        Err(StorageError::Closed)
    ));
    assert!(matches!(
        other.list_endpoints().await,
        Err(StorageError::Closed)
    ));
    assert!(matches!(
        other.put_plugin(plugin("x", b"x")).await,
        Err(StorageError::Closed)
    ));
    assert!(matches!(
        other.unbatched_reports(steps.id, 0, 10).await,
        Err(StorageError::Closed)
    ));
    // Closing again, from another clone, is harmless.
    other.close().await.unwrap();
    let storage = db.open().await;
    assert_eq!(
        storage.endpoint_counts("steps").await.unwrap(),
        Some(EndpointCounts {
            unbatched: 1,
            ..EndpointCounts::default()
        })
    );
    storage.close().await.unwrap();
}
on_both_backends!(a_closed_storage_refuses_work);

#[test]
fn database_errors_do_not_show_their_detail() {
    let conn = Connection::open_in_memory().unwrap();
    let error: StorageError = conn
        .execute("SELECT secret FROM nowhere", [])
        .unwrap_err()
        .into();
    assert_eq!(error.to_string(), "database error");
    let detail = std::error::Error::source(&error).unwrap().to_string();
    assert!(detail.contains("nowhere"), "{detail}");
}

/// Throughput of durable report inserts: 200k reports from 64 concurrent tasks.
///
/// `cargo test -p guardian --release --lib storage::tests::reports_per_second -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run by hand"]
async fn reports_per_second() {
    const TASKS: u64 = 64;
    const PER_TASK: u64 = 3125;
    let db = TestDb::sqlite();
    let path = db.path().to_owned();
    let (options, seen) = observed();
    let (storage, steps) = store_with_endpoint(&db, options).await;
    seen.lock().unwrap().clear();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                // A random-looking id, like clients send, and an 80-byte share (a
                // length-10 vector of u64).
                let n = task * PER_TASK + i;
                let mut id = report_id(n);
                id[..8].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
                let outcome = storage
                    .insert_report(steps.id, id, vec![n as u8; 80], SystemTime::now())
                    .await;
                assert_eq!(outcome.unwrap(), InsertReportOutcome::Stored);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    storage.close().await.unwrap();
    let stats = seen.lock().unwrap().clone();
    let total = TASKS * PER_TASK;
    let in_commits: Duration = stats.iter().map(|s| s.elapsed).sum();
    println!(
        "{total} reports in {elapsed:.2?}: {:.0} reports/s durable; {} commits, mean group {:.1}, \
         largest {}, mean commit {:.2?}, writer in transactions {:.0}% of the time",
        total as f64 / elapsed.as_secs_f64(),
        stats.len(),
        total as f64 / stats.len() as f64,
        stats.iter().map(|s| s.reports).max().unwrap_or(0),
        in_commits / stats.len().max(1) as u32,
        100.0 * in_commits.as_secs_f64() / elapsed.as_secs_f64(),
    );
    assert_eq!(stored_reports(&path, steps.id).len(), total as usize);
}

/// The same inserts run directly on the writer's connection in groups of 43, without
/// the queue and the async callers: separates the cost of SQLite from that of the
/// plumbing when `reports_per_second` looks slow.
#[tokio::test]
#[ignore = "benchmark; run by hand"]
async fn sql_inserts_per_second_without_the_queue() {
    let db = TestDb::sqlite();
    let (storage, steps) = store_with_endpoint(&db, StorageOptions::default()).await;
    let (reply, answer) = oneshot::channel();
    storage
        .sqlite()
        .queue_job(Box::new(move |conn| {
            let started = Instant::now();
            let mut ids = ReportIds::load(conn, super::sqlite::ids::FLUSH_AT).unwrap();
            let mut n: u64 = 0;
            while n < 100_000 {
                let tx = conn.transaction().unwrap();
                for _ in 0..43 {
                    let mut id = report_id(n);
                    id[..8].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
                    sql::insert_report(&tx, &mut ids, steps.id, &id, &[1u8; 80], 0, None).unwrap();
                    n += 1;
                }
                tx.commit().unwrap();
                ids.commit();
                ids.flush(conn).unwrap();
            }
            let _ = reply.send(started.elapsed());
        }))
        .await
        .unwrap();
    let elapsed = answer.await.unwrap();
    println!(
        "direct on the write connection: {:.0} reports/s",
        100_000.0 / elapsed.as_secs_f64()
    );
    storage.close().await.unwrap();
}

/// Times each storage step of sealing a million length-10 reports; a figure, not a
/// check: `cargo test -p guardian --lib seal_steps -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run explicitly"]
async fn seal_steps_for_a_million_reports() {
    const N: u64 = 1_000_000;
    let db = TestDb::sqlite();
    let path = db.path().to_owned();
    let (storage, steps) = store_with_endpoint(&db, StorageOptions::default()).await;
    storage.close().await.unwrap();
    {
        let mut conn = Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx
                .prepare("INSERT INTO reports (endpoint_id, report_id, share, received_at) VALUES (?1, ?2, ?3, 0)")
                .unwrap();
            for n in 0..N {
                let mut id = report_id(n);
                id[..8].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
                insert
                    .execute(rusqlite::params![steps.id.0, id, vec![n as u8; 80]])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let storage = Storage::open(&path, StorageOptions::default())
        .await
        .unwrap();
    // Peak resident memory of each step, above what the process held before it.
    let status = |key: &str| -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
            / 1024
    };
    let mut steps_taken = Vec::new();
    let mut step = |name: &str, started: Instant, before: u64| {
        let peak = status("VmHWM:");
        steps_taken.push(format!(
            "{name} {:?} (+{} MB peak)",
            started.elapsed(),
            peak.saturating_sub(before)
        ));
        // Resets the peak to the current resident size.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    };
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (started, before) = (Instant::now(), status("VmRSS:"));
    let reports = storage
        .unbatched_reports(steps.id, 0, usize::MAX)
        .await
        .unwrap();
    step("list", started, before);
    let (started, before) = (Instant::now(), status("VmRSS:"));
    let reservation = Seal {
        endpoint: steps.id,
        batch_id: [1; 16],
        seal_number: 1,
        decided: false,
        positions: vec![0xff; N.div_ceil(8) as usize],
        rows: rows(&reports),
        created_at: at(0),
        verification: None,
    };
    storage.put_seal(&reservation).await.unwrap();
    assert_eq!(
        storage
            .pending_seal(steps.id)
            .await
            .unwrap()
            .unwrap()
            .rows
            .len(),
        N as usize
    );
    drop(reservation);
    step("reserve and read back", started, before);
    let (started, before) = (Instant::now(), status("VmRSS:"));
    let mut bytes = 0;
    for chunk in rows(&reports).chunks(65_536) {
        let (data, _) = storage.read_shares(steps.id, chunk.to_vec()).await.unwrap();
        bytes += data.len();
    }
    step("read shares", started, before);
    assert_eq!(bytes, 80 * N as usize);
    let (started, before) = (Instant::now(), status("VmRSS:"));
    let outcome = commit(&storage, steps.id, 1, &reports).await.unwrap();
    step("commit", started, before);
    assert_eq!(outcome.info().count, N);
    println!("{N} reports: {}", steps_taken.join(", "));
    storage.close().await.unwrap();
}

// ---------------------------------------------------------------- per-user quotas

/// Storage with an endpoint `capped` whose users may hold `max` unbatched reports.
async fn store_with_quota(db: &TestDb, max: u64) -> (Storage, Endpoint) {
    let storage = db.open().await;
    let sum = plugin("sum", b"sum wasm");
    storage.put_plugin(sum.clone()).await.unwrap();
    let record = EndpointRecord {
        max_reports_per_user: Some(max),
        ..endpoint("capped", &sum, b"config", 2)
    };
    let created = create(&storage, record).await;
    (storage, created)
}

async fn post_as(
    storage: &Storage,
    endpoint: &Endpoint,
    user: &str,
    n: u64,
    share: u8,
) -> InsertReportOutcome {
    let quota = UserQuota {
        user: storage.user_key(user),
        max: endpoint.record.max_reports_per_user.unwrap(),
    };
    storage
        .insert_report_for_user(endpoint.id, report_id(n), vec![share; 8], at(3), quota)
        .await
        .unwrap()
}

async fn a_user_holds_at_most_the_quota_until_a_batch_takes_their_reports(db: TestDb) {
    let (storage, capped) = store_with_quota(&db, 2).await;
    use InsertReportOutcome::*;
    assert_eq!(post_as(&storage, &capped, "alice", 1, 1).await, Stored);
    assert_eq!(post_as(&storage, &capped, "alice", 2, 2).await, Stored);
    let over = post_as(&storage, &capped, "alice", 3, 3).await;
    assert_eq!(over, UserQuotaExceeded { max: 2 });
    // A retry is answered as without a quota, even at the quota.
    assert_eq!(post_as(&storage, &capped, "alice", 1, 1).await, Duplicate);
    assert_eq!(post_as(&storage, &capped, "alice", 2, 9).await, Conflict);
    // Another user has a quota of their own.
    assert_eq!(post_as(&storage, &capped, "bob", 4, 4).await, Stored);
    assert_eq!(post_as(&storage, &capped, "bob", 5, 5).await, Stored);
    assert_eq!(
        post_as(&storage, &capped, "bob", 6, 6).await,
        UserQuotaExceeded { max: 2 }
    );
    let counts = storage.endpoint_counts("capped").await.unwrap().unwrap();
    assert_eq!(counts.unbatched, 4, "refused reports are not stored");

    // The quota survives a restart.
    storage.close().await.unwrap();
    let storage = db.open().await;
    assert_eq!(
        post_as(&storage, &capped, "alice", 3, 3).await,
        UserQuotaExceeded { max: 2 }
    );

    // Only hashes are stored, and only until the reports are batched.
    let keys = db.report_column(capped.id, "user_key").await;
    let alice = storage.user_key("alice");
    assert_eq!(keys[&report_id(1)].as_deref(), Some(&alice.0[..]));
    assert_ne!(storage.user_key("alice"), storage.user_key("bob"));
    let reports = storage.unbatched_reports(capped.id, 0, 3).await.unwrap();
    commit(&storage, capped.id, 1, &reports).await.unwrap();
    let keys = db.report_column(capped.id, "user_key").await;
    for n in [1, 2, 4] {
        assert_eq!(keys[&report_id(n)], None, "report {n} was batched");
    }
    // Alice's reports are batched: she may post again; Bob still holds one.
    assert_eq!(post_as(&storage, &capped, "alice", 3, 3).await, Stored);
    assert_eq!(post_as(&storage, &capped, "alice", 7, 7).await, Stored);
    assert_eq!(
        post_as(&storage, &capped, "alice", 8, 8).await,
        UserQuotaExceeded { max: 2 }
    );
    assert_eq!(post_as(&storage, &capped, "bob", 6, 6).await, Stored);
    assert_eq!(
        post_as(&storage, &capped, "bob", 9, 9).await,
        UserQuotaExceeded { max: 2 }
    );

    // Expired reports stop counting too, and lose their user key.
    storage.expire_reports(capped.id, at(1_000)).await.unwrap();
    assert!(
        db.report_column(capped.id, "user_key")
            .await
            .values()
            .all(Option::is_none)
    );
    assert_eq!(post_as(&storage, &capped, "alice", 10, 1).await, Stored);
    storage.close().await.unwrap();
}
on_both_backends!(a_user_holds_at_most_the_quota_until_a_batch_takes_their_reports);

#[tokio::test]
async fn concurrent_posts_of_one_user_in_one_group_never_exceed_the_quota() {
    let db = TestDb::sqlite();
    let (storage, capped) = store_with_quota(&db, 3).await;
    // Held back by a paused writer, all ten posts commit in one group.
    let release = pause_writer(&storage).await;
    let quota = UserQuota {
        user: storage.user_key("flooder"),
        max: 3,
    };
    let mut replies = Vec::new();
    for n in 0..10 {
        let reply = storage
            .sqlite()
            .queue_insert(
                capped.id,
                report_id(n),
                vec![1; 8],
                at(3),
                Some(quota),
                None,
            )
            .await
            .unwrap();
        replies.push(reply);
    }
    release.send(()).unwrap();
    let mut stored = 0;
    for reply in replies {
        match reply.await.unwrap().unwrap() {
            InsertReportOutcome::Stored => stored += 1,
            InsertReportOutcome::UserQuotaExceeded { max: 3 } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(stored, 3);
    let counts = storage.endpoint_counts("capped").await.unwrap().unwrap();
    assert_eq!(counts.unbatched, 3);
    storage.close().await.unwrap();
}

async fn concurrent_posts_of_one_user_never_exceed_the_quota(db: TestDb) {
    let (storage, capped) = store_with_quota(&db, 3).await;
    let quota = UserQuota {
        user: storage.user_key("flooder"),
        max: 3,
    };
    let handles = replicas(&db, &storage).await;
    let mut posts = tokio::task::JoinSet::new();
    for n in 0..20 {
        let storage = handles[n % handles.len()].clone();
        posts.spawn(async move {
            storage
                .insert_report_for_user(capped.id, report_id(n as u64), vec![1; 8], at(3), quota)
                .await
                .unwrap()
        });
    }
    let mut stored = 0;
    while let Some(outcome) = posts.join_next().await {
        match outcome.unwrap() {
            InsertReportOutcome::Stored => stored += 1,
            InsertReportOutcome::UserQuotaExceeded { max: 3 } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(stored, 3);
    let counts = storage.endpoint_counts("capped").await.unwrap().unwrap();
    assert_eq!(counts.unbatched, 3);
    for handle in handles {
        handle.close().await.unwrap();
    }
}
on_both_backends!(
    concurrent_posts_of_one_user_never_exceed_the_quota,
    multi_thread
);

async fn only_quota_endpoints_store_user_keys_and_the_quota_is_part_of_the_identity(db: TestDb) {
    let (storage, _capped) = store_with_quota(&db, 5).await;
    let sum = plugin("sum", b"sum wasm");
    let open = create(&storage, endpoint("open", &sum, b"config", 2)).await;
    storage
        .insert_report(open.id, report_id(1), vec![1; 8], at(3))
        .await
        .unwrap();
    assert_eq!(
        db.report_column(open.id, "user_key").await[&report_id(1)],
        None
    );
    // Creating the same endpoint again must give the same quota, or it conflicts.
    let again = storage
        .create_endpoint(EndpointRecord {
            max_reports_per_user: Some(5),
            ..endpoint("capped", &sum, b"config", 2)
        })
        .await
        .unwrap();
    assert!(matches!(again, CreateEndpointOutcome::Identical(_)));
    for other in [None, Some(6)] {
        let outcome = storage
            .create_endpoint(EndpointRecord {
                max_reports_per_user: other,
                ..endpoint("capped", &sum, b"config", 2)
            })
            .await
            .unwrap();
        assert!(
            matches!(outcome, CreateEndpointOutcome::Conflict(_)),
            "{other:?}"
        );
    }
    let shown = storage.get_endpoint("capped").await.unwrap().unwrap();
    assert_eq!(shown.record.max_reports_per_user, Some(5));
    storage.close().await.unwrap();
}
on_both_backends!(only_quota_endpoints_store_user_keys_and_the_quota_is_part_of_the_identity);

#[tokio::test]
async fn the_quota_count_is_an_index_lookup() {
    let db = TestDb::sqlite();
    let (storage, capped) = store_with_quota(&db, 5).await;
    storage.close().await.unwrap();
    let conn = Connection::open(db.path()).unwrap();
    let plan: Vec<String> = conn
        .prepare(
            "EXPLAIN QUERY PLAN SELECT count(*) FROM reports \
             WHERE endpoint_id = ?1 AND user_key = ?2 AND batch_id IS NULL",
        )
        .unwrap()
        .query_map(rusqlite::params![capped.id.0, [0u8; 16]], |row| row.get(3))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert!(
        plan.iter()
            .any(|step| step
                .contains("INDEX reports_unbatched_by_user (endpoint_id=? AND user_key=?)")),
        "{plan:?}"
    );
}

async fn user_keys_differ_between_databases(db: TestDb) {
    let other = TestDb::new(db.backend());
    let first = db.open().await;
    let second = other.open().await;
    let alice = first.user_key("alice");
    assert_eq!(first.user_key("alice"), alice);
    assert_ne!(second.user_key("alice"), alice);
    first.close().await.unwrap();
    second.close().await.unwrap();
    // The same database gives the same keys when opened again.
    let again = db.open().await;
    assert_eq!(again.user_key("alice"), alice);
    again.close().await.unwrap();
}
on_both_backends!(user_keys_differ_between_databases);

/// A report id whose first byte puts it in key range `n % 64` of the id index.
fn spread_id(n: u64) -> [u8; 16] {
    let mut id = report_id(n);
    id[0] = u8::try_from((n % 64) * 4).unwrap();
    id
}

/// Posts report `spread_id(n)` with a share of `share` bytes.
async fn post(storage: &Storage, endpoint: EndpointId, n: u64, share: u8) -> InsertReportOutcome {
    let share = vec![share; 8];
    storage
        .insert_report(endpoint, spread_id(n), share, at(5))
        .await
        .unwrap()
}

/// Reports `ids`, stored by [`post`] with share 1, are known: the same share is a
/// duplicate, another a conflict.
async fn retries_are_answered(storage: &Storage, endpoint: EndpointId, ids: std::ops::Range<u64>) {
    for n in ids {
        assert_eq!(
            post(storage, endpoint, n, 1).await,
            InsertReportOutcome::Duplicate
        );
        assert_eq!(
            post(storage, endpoint, n, 2).await,
            InsertReportOutcome::Conflict
        );
    }
}

/// Report rows up to the watermark whose id is missing from `report_ids`: none if
/// the index keeps its promise.
fn unindexed_below_watermark(conn: &Connection) -> i64 {
    conn.query_row(
        "SELECT count(*) FROM reports AS r \
         WHERE r.id <= (SELECT indexed_through FROM report_ids_state) \
         AND NOT EXISTS (SELECT 1 FROM report_ids AS i \
         WHERE i.endpoint_id = r.endpoint_id AND i.report_id = r.report_id AND i.row = r.id)",
        [],
        |row| row.get(0),
    )
    .unwrap()
}

#[tokio::test]
async fn ids_moved_to_the_index_still_answer_retries_after_a_restart() {
    let db = TestDb::sqlite();
    let path = db.path().to_owned();
    // Two waiting ids are enough for a move: most ids go through the index.
    let options = || StorageOptions {
        id_index_batch: 2,
        ..StorageOptions::default()
    };
    let (storage, steps) = store_with_endpoint(&db, options()).await;
    let endpoint = steps.id;
    for n in 0..300 {
        assert_eq!(
            post(&storage, endpoint, n, 1).await,
            InsertReportOutcome::Stored
        );
    }
    let indexed: i64 = Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM report_ids", [], |row| row.get(0))
        .unwrap();
    assert!(indexed >= 250, "only {indexed} of 300 ids were moved");
    retries_are_answered(&storage, endpoint, 0..300).await;
    storage.close().await.unwrap();

    let storage = Storage::open(&path, options()).await.unwrap();
    retries_are_answered(&storage, endpoint, 0..300).await;
    assert_eq!(
        post(&storage, endpoint, 300, 1).await,
        InsertReportOutcome::Stored
    );
    let counts = storage.endpoint_counts("steps").await.unwrap().unwrap();
    assert_eq!(
        (counts.unbatched, counts.batched, counts.expired),
        (301, 0, 0)
    );
    storage.close().await.unwrap();
    let reports = stored_reports(&path, steps.id);
    assert_eq!(reports.len(), 301);
    assert_eq!(
        unindexed_below_watermark(&Connection::open(&path).unwrap()),
        0
    );
}

#[tokio::test]
async fn a_deleted_endpoints_waiting_ids_never_reach_the_index() {
    let db = TestDb::sqlite();
    let path = db.path().to_owned();
    let options = StorageOptions {
        id_index_batch: 1,
        ..StorageOptions::default()
    };
    let (storage, steps) = store_with_endpoint(&db, options).await;
    let sum = plugin("sum", b"sum wasm");
    let other = create(&storage, endpoint("other", &sum, b"config", 10)).await;
    // Paused, so that these are one group and all wait in memory (a move after
    // a group takes one range) when the endpoint is deleted.
    let release = pause_writer(&storage).await;
    let mut replies = Vec::new();
    for n in 0..64 {
        let queued = storage
            .sqlite()
            .queue_report(steps.id, spread_id(n), vec![1; 8], at(5));
        replies.push(queued.await.unwrap());
    }
    drop(release);
    for reply in replies {
        assert_eq!(reply.await.unwrap().unwrap(), InsertReportOutcome::Stored);
    }
    assert!(storage.delete_endpoint("steps").await.unwrap());
    // Enough groups for every range to be moved at least once.
    for n in 0..200 {
        assert_eq!(
            post(&storage, other.id, n, 2).await,
            InsertReportOutcome::Stored
        );
    }
    storage.close().await.unwrap();
    let conn = Connection::open(&path).unwrap();
    let indexed = |endpoint: EndpointId| -> i64 {
        conn.query_row(
            "SELECT count(*) FROM report_ids WHERE endpoint_id = ?1",
            [endpoint.0],
            |row| row.get(0),
        )
        .unwrap()
    };
    assert_eq!(indexed(steps.id), 0);
    let moved = indexed(other.id);
    assert!(moved >= 100, "only {moved} of 200 ids were moved");
}

#[tokio::test]
async fn reports_of_the_unique_index_schema_keep_their_ids() {
    let (_dir, path) = temp_db();
    let created = {
        let mut conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "foreign_keys", true).unwrap();
        // The schema before the id index: version 4.
        migrations::migrate(&mut conn, &MIGRATIONS[..4]).unwrap();
        let created = steps_on(&conn);
        for n in 0..50 {
            conn.execute(
                "INSERT INTO reports (endpoint_id, report_id, share, received_at) \
                 VALUES (?1, ?2, ?3, 5)",
                rusqlite::params![created.0, spread_id(n), vec![1u8; 8]],
            )
            .unwrap();
        }
        created
    };
    let storage = Storage::open(&path, StorageOptions::default())
        .await
        .unwrap();
    retries_are_answered(&storage, created, 0..50).await;
    assert_eq!(
        post(&storage, created, 50, 1).await,
        InsertReportOutcome::Stored
    );
    storage.close().await.unwrap();
    let conn = Connection::open(&path).unwrap();
    let (indexed, through): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM report_ids), indexed_through FROM report_ids_state",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!((indexed, through), (50, 50));
    assert_eq!(unindexed_below_watermark(&conn), 0);
    assert_eq!(stored_reports(&path, created).len(), 51);
}

/// One step of [`the_id_index_agrees_with_a_model`].
#[derive(Debug, Clone)]
enum IdStep {
    /// Insert id `.0` of a small pool with share `.1` (in the open transaction).
    Insert(u8, u8),
    Commit,
    RollBack,
    /// Commit, then let the index move a range if enough ids wait.
    Move,
    /// Forget the memory, as a crash would, and read it back from the database.
    Crash,
}

fn id_step() -> impl proptest::strategy::Strategy<Value = IdStep> {
    use proptest::prelude::*;
    prop_oneof![
        6 => (0u8..=255, 0u8..2).prop_map(|(id, share)| IdStep::Insert(id, share)),
        2 => Just(IdStep::Commit),
        1 => Just(IdStep::RollBack),
        3 => Just(IdStep::Move),
        1 => Just(IdStep::Crash),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Any sequence of inserts, commits, rollbacks, moves and crashes: every insert
    /// is answered as a plain map of committed ids would answer it, no id is stored
    /// twice, and every row up to the watermark is in the index.
    #[test]
    fn the_id_index_agrees_with_a_model(
        steps in proptest::collection::vec(id_step(), 1..200),
        flush_at in 1usize..6,
        ranges in 1usize..5,
    ) {
        let (_dir, path) = temp_db();
        let mut conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "foreign_keys", true).unwrap();
        conn.pragma_update(None, "synchronous", "OFF").unwrap();
        migrations::migrate(&mut conn, MIGRATIONS).unwrap();
        let created = steps_on(&conn);
        let mut ids = ReportIds::load_with_ranges(&conn, flush_at, ranges).unwrap();
        let mut committed: HashMap<u8, u8> = HashMap::new();
        let mut open: HashMap<u8, u8> = HashMap::new();
        let mut in_tx = false;
        for step in steps {
            let commit = |conn: &Connection, ids: &mut ReportIds, in_tx: &mut bool,
                          open: &mut HashMap<u8, u8>, committed: &mut HashMap<u8, u8>| {
                if std::mem::take(in_tx) {
                    conn.execute_batch("COMMIT").unwrap();
                    ids.commit();
                    committed.extend(open.drain());
                }
            };
            match step {
                IdStep::Insert(id, share) => {
                    if !in_tx {
                        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                        in_tx = true;
                    }
                    let expected = match open.get(&id).or(committed.get(&id)) {
                        None => InsertReportOutcome::Stored,
                        Some(&stored) if stored == share => InsertReportOutcome::Duplicate,
                        Some(_) => InsertReportOutcome::Conflict,
                    };
                    let outcome = sql::insert_report(
                        &conn, &mut ids, created, &[id; 16], &[share; 4], 5, None,
                    )
                    .unwrap();
                    proptest::prop_assert_eq!(&outcome, &expected, "id {}", id);
                    if outcome == InsertReportOutcome::Stored {
                        open.insert(id, share);
                    }
                }
                IdStep::Commit => commit(&conn, &mut ids, &mut in_tx, &mut open, &mut committed),
                IdStep::RollBack => {
                    if std::mem::take(&mut in_tx) {
                        conn.execute_batch("ROLLBACK").unwrap();
                        ids.roll_back();
                        open.clear();
                    }
                }
                IdStep::Move => {
                    commit(&conn, &mut ids, &mut in_tx, &mut open, &mut committed);
                    ids.flush(&mut conn).unwrap();
                }
                IdStep::Crash => {
                    if std::mem::take(&mut in_tx) {
                        conn.execute_batch("ROLLBACK").unwrap();
                        open.clear();
                    }
                    ids = ReportIds::load_with_ranges(&conn, flush_at, ranges).unwrap();
                }
            }
            if !in_tx {
                proptest::prop_assert_eq!(unindexed_below_watermark(&conn), 0);
            }
        }
        if in_tx {
            conn.execute_batch("COMMIT").unwrap();
            committed.extend(open.drain());
        }
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM reports", [], |row| row.get(0))
            .unwrap();
        proptest::prop_assert_eq!(rows, committed.len() as i64);
        drop(conn);
        proptest::prop_assert_eq!(stored_reports(&path, created).len(), committed.len());
    }
}

/// One step of [`posts_are_answered_as_a_model_answers`].
#[derive(Debug, Clone)]
enum PostStep {
    /// Post report `.0` of a small pool with share `.1`.
    Post(u8, u8),
    /// Post these at the same time, from concurrent tasks.
    Burst(Vec<(u8, u8)>),
    /// Put every unbatched report into a batch: their shares go, their ids stay.
    Batch,
    /// Close the storage and open the database again.
    Reopen,
}

fn post_step() -> impl proptest::strategy::Strategy<Value = PostStep> {
    use proptest::prelude::*;
    let post = || (0u8..24, 0u8..2);
    prop_oneof![
        6 => post().prop_map(|(id, share)| PostStep::Post(id, share)),
        2 => proptest::collection::vec(post(), 2..8).prop_map(PostStep::Burst),
        1 => Just(PostStep::Batch),
        1 => Just(PostStep::Reopen),
    ]
}

/// The model test of report ids through the facade, on both backends: any
/// sequence of posts (repeats and conflicting shares included, alone or at the
/// same time), batches and restarts is answered as a plain map of the ids stored
/// so far would answer it, and every id is stored once. Each case posts to an
/// endpoint of its own in the one database.
fn posts_are_answered_as_a_model_answers(db: TestDb) {
    use proptest::test_runner::{Config, TestRunner};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sum = plugin("sum", b"sum wasm");
    runtime.block_on(async {
        let storage = db.open().await;
        storage.put_plugin(sum.clone()).await.unwrap();
        storage.close().await.unwrap();
    });
    let cases = std::cell::Cell::new(0u32);
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&proptest::collection::vec(post_step(), 1..24), |steps| {
        cases.set(cases.get() + 1);
        let name = format!("case{}", cases.get());
        runtime.block_on(check_posts(&db, endpoint(&name, &sum, b"c", 1), steps))
    });
    if let Err(error) = outcome {
        panic!("{error}");
    }
}
on_both_backends!(posts_are_answered_as_a_model_answers, sync);

/// One case of [`posts_are_answered_as_a_model_answers`].
async fn check_posts(
    db: &TestDb,
    record: EndpointRecord,
    steps: Vec<PostStep>,
) -> Result<(), proptest::test_runner::TestCaseError> {
    use proptest::prop_assert_eq;
    let mut storage = db.open().await;
    let id = create(&storage, record).await.id;
    // The share of every stored report id.
    let mut model: HashMap<u8, u8> = HashMap::new();
    let mut batches = 0u8;
    for step in steps {
        match step {
            PostStep::Post(n, share) => {
                let expected = match model.get(&n) {
                    None => InsertReportOutcome::Stored,
                    Some(&stored) if stored == share => InsertReportOutcome::Duplicate,
                    Some(_) => InsertReportOutcome::Conflict,
                };
                let outcome = storage
                    .insert_report(id, report_id(n.into()), vec![share; 4], at(5))
                    .await
                    .unwrap();
                prop_assert_eq!(&outcome, &expected, "report {}", n);
                model.entry(n).or_insert(share);
            }
            PostStep::Burst(posts) => {
                let mut tasks = tokio::task::JoinSet::new();
                for (n, share) in posts.clone() {
                    let storage = storage.clone();
                    tasks.spawn(async move {
                        let outcome = storage
                            .insert_report(id, report_id(n.into()), vec![share; 4], at(5))
                            .await
                            .unwrap();
                        (n, share, outcome)
                    });
                }
                let mut answered = Vec::new();
                while let Some(answer) = tasks.join_next().await {
                    answered.push(answer.unwrap());
                }
                // A new id is stored by exactly one of its posts; the others are
                // then answered by that one's share, as are posts of known ids.
                for &(n, share, ref outcome) in &answered {
                    if *outcome == InsertReportOutcome::Stored {
                        prop_assert_eq!(model.insert(n, share), None, "report {} stored twice", n);
                    }
                }
                for (n, share, outcome) in answered {
                    let expected = match model.get(&n) {
                        Some(&stored) if stored == share => InsertReportOutcome::Duplicate,
                        Some(_) => InsertReportOutcome::Conflict,
                        None => panic!("report {n} was posted and not stored"),
                    };
                    if outcome != InsertReportOutcome::Stored {
                        prop_assert_eq!(&outcome, &expected, "report {} in {:?}", n, posts);
                    }
                }
            }
            PostStep::Batch => {
                let reports = storage.unbatched_reports(id, 0, usize::MAX).await.unwrap();
                if !reports.is_empty() {
                    batches += 1;
                    commit(&storage, id, batches, &reports).await.unwrap();
                }
            }
            PostStep::Reopen => {
                storage.close().await.unwrap();
                storage = db.open().await;
            }
        }
    }
    storage.close().await.unwrap();
    let mut stored: Vec<[u8; 16]> = db.stored_reports(id).await.into_keys().collect();
    let mut expected: Vec<[u8; 16]> = model.keys().map(|&n| report_id(n.into())).collect();
    stored.sort_unstable();
    expected.sort_unstable();
    prop_assert_eq!(stored, expected);
    Ok(())
}

async fn distinct_posters_are_counted_over_rows_until_enough(db: TestDb) {
    let (storage, steps) = store_with_endpoint(&db, StorageOptions::default()).await;
    // alice ×3, bob, and one anonymous report.
    for (n, user) in [(0, "alice"), (1, "alice"), (2, "bob"), (3, "alice")] {
        let poster = storage.user_key(user);
        storage
            .insert_report_from(steps.id, report_id(n), vec![1], at(3), poster)
            .await
            .unwrap();
    }
    storage
        .insert_report(steps.id, report_id(4), vec![1], at(3))
        .await
        .unwrap();
    let reports = storage.unbatched_reports(steps.id, 0, 10).await.unwrap();
    let all = rows(&reports);
    let count = |rows: Vec<i64>, enough| storage.distinct_posters(steps.id, rows, enough);
    assert_eq!(count(all.clone(), 10).await.unwrap(), 3);
    // It stops once it has seen enough.
    assert_eq!(count(all.clone(), 2).await.unwrap(), 2);
    // Alice's three reports are one user, in any order.
    let alices = vec![all[3], all[0], all[1]];
    assert_eq!(count(alices, 10).await.unwrap(), 1);
    // A row of another endpoint, or none, is an error.
    assert!(matches!(
        count(vec![all[0], all[4] + 100], 10).await,
        Err(StorageError::ReportUnavailable)
    ));
    // Pages: after a row, at most a limit.
    let page = storage
        .unbatched_reports(steps.id, all[1], 2)
        .await
        .unwrap();
    assert_eq!(rows(&page), vec![all[2], all[3]]);
    // Posters go with batching.
    commit(&storage, steps.id, 1, &reports).await.unwrap();
    let kept = db
        .count("SELECT count(*) FROM reports WHERE poster IS NOT NULL")
        .await;
    assert_eq!(kept, 0);
    storage.close().await.unwrap();
}
on_both_backends!(distinct_posters_are_counted_over_rows_until_enough);

async fn verification_rejects_reports_for_good_and_counts_them(db: TestDb) {
    let (storage, steps) = store_with_endpoint(&db, StorageOptions::default()).await;
    for n in 0..8 {
        storage
            .insert_report(steps.id, report_id(n), vec![n as u8; 3], at(3))
            .await
            .unwrap();
    }
    let all = storage
        .unbatched_reports(steps.id, 0, usize::MAX)
        .await
        .unwrap();
    // A decision that keeps its verification: rejected rows and messages.
    let verification = crate::storage::Verification {
        rejected_positions: vec![0b1000_0001],
        rejected_rows: vec![all[0].row, all[7].row],
        messages: guardian_sdk::raw::Batch::pack([&b"m1"[..], b"", b"m3"]),
    };
    let decision = Seal {
        endpoint: steps.id,
        batch_id: [4; 16],
        seal_number: 9,
        decided: true,
        positions: vec![0b0000_1110],
        rows: rows(&all[1..4]),
        created_at: at(5),
        verification: Some(verification.clone()),
    };
    storage.put_seal(&decision).await.unwrap();
    assert_eq!(
        storage.pending_seal(steps.id).await.unwrap(),
        Some(decision)
    );

    // The batch and its rejected reports commit together.
    let outcome = storage
        .commit_batch(
            steps.id,
            NewBatch {
                batch_id: [4; 16],
                share: vec![4; 4],
                sealed_at: at(10),
                rejected_rows: verification.rejected_rows.clone(),
            },
            rows(&all[1..4]),
        )
        .await
        .unwrap();
    assert_eq!((outcome.info().count, outcome.info().rejected), (3, 2));
    assert_eq!(storage.list_batches(steps.id).await.unwrap()[0].rejected, 2);
    // Rejected reports are never proposed again, and cannot be rejected twice.
    let left = storage
        .unbatched_reports(steps.id, 0, usize::MAX)
        .await
        .unwrap();
    assert_eq!(left, all[4..7]);
    assert_eq!(
        storage
            .reject_reports(steps.id, vec![all[0].row, all[4].row])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        storage.endpoint_counts("steps").await.unwrap(),
        Some(EndpointCounts {
            unbatched: 2,
            batched: 3,
            expired: 0,
            rejected: 3,
            batches: 1,
        })
    );
    storage.close().await.unwrap();
}
on_both_backends!(verification_rejects_reports_for_good_and_counts_them);

async fn a_verification_key_is_set_once(db: TestDb) {
    let (storage, steps) = store_with_endpoint(&db, StorageOptions::default()).await;
    assert_eq!(storage.verify_key(steps.id, None).await.unwrap(), None);
    assert_eq!(
        storage.verify_key(steps.id, Some([1; 32])).await.unwrap(),
        Some([1; 32])
    );
    // Another proposal never replaces it.
    assert_eq!(
        storage.verify_key(steps.id, Some([2; 32])).await.unwrap(),
        Some([1; 32])
    );
    storage.close().await.unwrap();
    let storage = db.open().await;
    assert_eq!(
        storage.verify_key(steps.id, None).await.unwrap(),
        Some([1; 32])
    );
    storage.close().await.unwrap();
}
on_both_backends!(a_verification_key_is_set_once);

/// PostgreSQL only (SQLite has no server to lose): the database goes down under
/// an open storage, then comes back. While it is down every call fails as
/// unavailable and nothing is acknowledged; once it is back the same storage
/// works again without being reopened, and what was acknowledged is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_down_is_unavailable_until_it_is_back() {
    let cluster = super::test_backends::pg::PgCluster::new();
    let storage = Storage::open_postgres(&cluster.url(), StorageOptions::default())
        .await
        .unwrap();
    let sum = plugin("sum", b"sum wasm");
    storage.put_plugin(sum.clone()).await.unwrap();
    let steps = create(&storage, endpoint("steps", &sum, b"config", 10)).await;
    let post = |n: u64| storage.insert_report(steps.id, report_id(n), vec![1], at(3));
    assert_eq!(post(1).await.unwrap(), InsertReportOutcome::Stored);

    cluster.stop();
    let error = post(2).await.unwrap_err();
    assert!(error.is_unavailable(), "{error:?}");
    let error = storage.list_endpoints().await.unwrap_err();
    assert!(error.is_unavailable(), "{error:?}");

    cluster.start();
    assert_eq!(post(1).await.unwrap(), InsertReportOutcome::Duplicate);
    assert_eq!(post(2).await.unwrap(), InsertReportOutcome::Stored);
    assert_eq!(
        storage.endpoint_counts("steps").await.unwrap(),
        Some(EndpointCounts {
            unbatched: 2,
            ..EndpointCounts::default()
        })
    );
    storage.close().await.unwrap();
}
