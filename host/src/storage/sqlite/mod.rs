//! The embedded backend: one SQLite file in WAL mode.
//!
//! Writes go to the writer thread (`writer`), which owns the only read-write
//! connection; reads run on `spawn_blocking` over a small pool of read-only
//! connections, which WAL lets proceed while the writer commits. Connection setup,
//! the read pool and the plumbing from async callers to these threads live here; the
//! statements live in `sql`, the schema in `migrations`.

pub(crate) mod collect;
pub(crate) mod ids;
mod leases;
pub(crate) mod migrations;
pub(crate) mod sql;
pub(crate) mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::{Semaphore, mpsc, oneshot};

use self::writer::{Command, InsertReport};
use crate::storage::{
    Batch, BatchInfo, CommitOutcome, CreateEndpointOutcome, DeleteBatchOutcome, Endpoint,
    EndpointCounts, EndpointId, EndpointRecord, InsertReportOutcome, NewBatch, NewReport,
    PluginInfo, PluginRecord, PutPluginOutcome, Seal, SealReport, StorageError, StorageOptions,
    UserKey, UserQuota,
};

/// Commands that may wait for the writer, per slot of a group. Enough for callers to
/// queue a full next group while one commits; beyond that they wait (backpressure)
/// instead of piling up memory.
const QUEUE_PER_GROUP_SLOT: usize = 4;

/// WAL size, in pages, past which a commit checkpoints the log into the database
/// (about 40 MB with 4 KiB pages; SQLite's default is 1000).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;

/// The SQLite backend behind [`crate::storage::Storage`].
pub(crate) struct SqliteBackend {
    /// Database file, for reopening read connections and for `Debug`.
    path: PathBuf,
    /// Queue of the writer thread.
    commands: mpsc::Sender<Command>,
    /// The writer thread, taken and joined by the first `close`.
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Read-only connections.
    readers: Arc<ReadPool>,
    /// Set by `close`, so that reads are refused too, not only writes.
    closed: AtomicBool,
    /// Key of the users' hash ([`crate::storage::Storage::user_key`]).
    user_key_secret: [u8; 32],
    /// Whether the writer can write now.
    health: Arc<writer::WriteHealth>,
}

/// Idle read-only connections, and a semaphore with one permit per connection so
/// that a read waits asynchronously for a free connection instead of blocking a
/// thread.
struct ReadPool {
    /// Connections not in use.
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection of the pool.
    permits: Arc<Semaphore>,
    /// Database file, to replace a connection lost to a panic.
    path: PathBuf,
    /// Busy timeout of new connections.
    busy_timeout: Duration,
}

/// SQLite's name for the write-ahead log of the database at `path`.
pub(crate) fn wal_path(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    wal.into()
}

/// Locks a mutex whose data stays valid even if a holder panicked (a list of idle
/// connections, a join handle), so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SqliteBackend {
    /// Opens the database, migrates it and starts the writer thread. Blocking.
    pub(crate) fn open(
        path: &Path,
        options: StorageOptions,
    ) -> Result<SqliteBackend, StorageError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(options.busy_timeout)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            // Still correct, but readers then wait for the writer.
            tracing::warn!(path = %path.display(), mode, "storage could not switch to WAL mode");
        }
        // FULL: in WAL mode, every commit syncs the log, so what is acknowledged
        // survives a power loss, not only a crash of the process. (The writer commits
        // report groups without it and syncs them on its own thread; see `writer`.)
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        // Report ids are random, so every insert dirties a random page of the unique
        // index; a longer log lets a checkpoint write each such page once for many
        // commits (measured +30% inserts/s over the default of 1000 pages).
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
        migrations::migrate(&mut conn, migrations::MIGRATIONS)?;
        let user_key_secret = sql::user_key_secret(&conn)?;

        let readers = (0..options.read_connections.max(1))
            .map(|_| open_reader(path, options.busy_timeout))
            .collect::<Result<Vec<_>, _>>()?;
        let readers = ReadPool {
            permits: Arc::new(Semaphore::new(readers.len())),
            idle: Mutex::new(readers),
            path: path.to_path_buf(),
            busy_timeout: options.busy_timeout,
        };

        let max_group = options.max_group.max(1);
        let (commands, queue) = mpsc::channel(max_group.saturating_mul(QUEUE_PER_GROUP_SLOT));
        let ids = ids::ReportIds::load(&conn, options.id_index_batch)?;
        let health = Arc::new(writer::WriteHealth::default());
        let writer = writer::spawn(
            conn,
            ids,
            wal_path(path),
            queue,
            max_group,
            options.commit_observer,
            health.clone(),
        )
        .map_err(|_| StorageError::TaskFailed)?;
        Ok(SqliteBackend {
            health,
            path: path.to_path_buf(),
            commands,
            writer: Mutex::new(Some(writer)),
            readers: Arc::new(readers),
            closed: AtomicBool::new(false),
            user_key_secret,
        })
    }

    /// The database file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// See [`crate::storage::Storage::close`].
    pub(crate) async fn close(&self) -> Result<(), StorageError> {
        self.closed.store(true, Ordering::SeqCst);
        // Fails only if the writer is already gone, which is what we want anyway.
        let _ = self.commands.send(Command::Shutdown).await;
        let writer = lock(&self.writer).take();
        if let Some(writer) = writer {
            tokio::task::spawn_blocking(move || writer.join())
                .await
                .map_err(|_| StorageError::TaskFailed)?
                .map_err(|_| StorageError::TaskFailed)?;
        }
        lock(&self.readers.idle).clear();
        Ok(())
    }

    /// Queues one report for the writer; the returned receiver yields its outcome
    /// once its group is committed: tests queue reports in a known order with it.
    #[cfg(test)]
    pub(crate) async fn queue_report(
        &self,
        endpoint: EndpointId,
        report_id: [u8; 16],
        share: Vec<u8>,
        received_at: SystemTime,
    ) -> Result<oneshot::Receiver<Result<InsertReportOutcome, StorageError>>, StorageError> {
        self.queue_insert(endpoint, report_id, share, received_at, None, None)
            .await
    }

    /// Queues one report, under a per-user quota if given.
    pub(crate) async fn queue_insert(
        &self,
        endpoint: EndpointId,
        report_id: [u8; 16],
        share: Vec<u8>,
        received_at: SystemTime,
        quota: Option<UserQuota>,
        poster: Option<UserKey>,
    ) -> Result<oneshot::Receiver<Result<InsertReportOutcome, StorageError>>, StorageError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StorageError::Closed);
        }
        let (reply, outcome) = oneshot::channel();
        let insert = InsertReport {
            endpoint,
            report_id,
            share,
            received_at: sql::to_millis(received_at),
            quota,
            poster,
            reply,
        };
        self.commands
            .send(Command::Insert(insert))
            .await
            .map_err(|_| StorageError::Closed)?;
        Ok(outcome)
    }

    /// Stores one report: see [`crate::storage::Storage::insert_report`] and its
    /// `quota` and `poster` variants.
    pub(crate) async fn insert(
        &self,
        endpoint: EndpointId,
        received_at: SystemTime,
        report: NewReport,
    ) -> Result<InsertReportOutcome, StorageError> {
        let outcome = self
            .queue_insert(
                endpoint,
                report.report_id,
                report.share,
                received_at,
                report.quota,
                report.poster,
            )
            .await?;
        // A dropped reply means the writer thread died before answering.
        outcome.await.map_err(|_| StorageError::Closed)?
    }

    /// See [`crate::storage::Storage::insert_reports`].
    pub(crate) async fn insert_reports(
        &self,
        endpoint: EndpointId,
        received_at: SystemTime,
        reports: Vec<NewReport>,
    ) -> Vec<Result<InsertReportOutcome, StorageError>> {
        // Everything is queued before anything is awaited, so the writer finds the
        // reports together; a report that cannot be queued gets its error.
        let mut queued = Vec::with_capacity(reports.len());
        for report in reports {
            queued.push(
                self.queue_insert(
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
        for outcome in queued {
            outcomes.push(match outcome {
                Ok(receiver) => receiver.await.unwrap_or(Err(StorageError::Closed)),
                Err(error) => Err(error),
            });
        }
        outcomes
    }

    /// See [`crate::storage::Storage::write_failure`].
    pub(crate) fn write_failure(&self) -> Option<String> {
        self.health.failure()
    }

    /// The database's secret: see [`crate::storage::Storage::user_key`].
    pub(crate) fn secret(&self) -> [u8; 32] {
        self.user_key_secret
    }

    /// Queues a raw job for the writer thread, which runs it with exclusive use of
    /// the write connection. Returns once the job is queued.
    pub(crate) async fn queue_job(&self, job: writer::Job) -> Result<(), StorageError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StorageError::Closed);
        }
        self.commands
            .send(Command::Job(job))
            .await
            .map_err(|_| StorageError::Closed)
    }

    /// Runs `write` in its own transaction on the writer thread and returns its
    /// result once committed.
    async fn write<T, F>(&self, write: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        self.queue_job(Box::new(move |conn: &mut Connection| {
            let outcome = (|| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let value = write(&tx)?;
                tx.commit()?;
                Ok(value)
            })();
            let _ = reply.send(outcome);
        }))
        .await?;
        result.await.map_err(|_| StorageError::Closed)?
    }

    /// Runs `read` on a read-only connection, on a blocking thread.
    async fn read<T, F>(&self, read: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.read_with(move |conn| Ok(read(conn)?)).await
    }

    /// [`Self::read`] for reads that fail with a [`StorageError`] of their own.
    async fn read_with<T, F>(&self, read: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StorageError::Closed);
        }
        let permit = Arc::clone(&self.readers.permits)
            .acquire_owned()
            .await
            .map_err(|_| StorageError::Closed)?;
        let pool = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || -> Result<T, StorageError> {
            // With a permit there is an idle connection, unless one was lost to a
            // panic during a read; then open a replacement.
            let conn = match lock(&pool.idle).pop() {
                Some(conn) => conn,
                None => open_reader(&pool.path, pool.busy_timeout)?,
            };
            let result = read(&conn);
            lock(&pool.idle).push(conn);
            drop(permit);
            result
        })
        .await
        .map_err(|_| StorageError::TaskFailed)?
    }

    /// See [`crate::storage::Storage::put_plugin`].
    pub(crate) async fn put_plugin(
        &self,
        plugin: PluginRecord,
    ) -> Result<PutPluginOutcome, StorageError> {
        self.write(move |conn| sql::put_plugin(conn, &plugin)).await
    }

    /// See [`crate::storage::Storage::list_plugins`].
    pub(crate) async fn list_plugins(&self) -> Result<Vec<PluginInfo>, StorageError> {
        self.read(sql::list_plugins).await
    }

    /// See [`crate::storage::Storage::get_plugin`].
    pub(crate) async fn get_plugin(
        &self,
        digest: [u8; 32],
    ) -> Result<Option<PluginInfo>, StorageError> {
        self.read(move |conn| sql::get_plugin(conn, &digest)).await
    }

    /// See [`crate::storage::Storage::plugin_wasm`].
    pub(crate) async fn plugin_wasm(
        &self,
        digest: [u8; 32],
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.read(move |conn| sql::plugin_wasm(conn, &digest)).await
    }

    /// See [`crate::storage::Storage::create_endpoint`].
    pub(crate) async fn create_endpoint(
        &self,
        endpoint: EndpointRecord,
    ) -> Result<CreateEndpointOutcome, StorageError> {
        self.write(move |conn| sql::create_endpoint(conn, &endpoint))
            .await
    }

    /// See [`crate::storage::Storage::get_endpoint`].
    pub(crate) async fn get_endpoint(
        &self,
        name: String,
    ) -> Result<Option<Endpoint>, StorageError> {
        self.read(move |conn| sql::get_endpoint(conn, &name)).await
    }

    /// See [`crate::storage::Storage::list_endpoints`].
    pub(crate) async fn list_endpoints(&self) -> Result<Vec<Endpoint>, StorageError> {
        self.read(sql::list_endpoints).await
    }

    /// See [`crate::storage::Storage::endpoints_after`].
    pub(crate) async fn endpoints_after(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Endpoint>, StorageError> {
        self.read(move |conn| sql::endpoints_after(conn, after.as_deref(), limit))
            .await
    }

    /// See [`crate::storage::Storage::endpoint_count`].
    pub(crate) async fn endpoint_count(&self) -> Result<u64, StorageError> {
        self.read(sql::endpoint_count).await
    }

    /// See [`crate::storage::Storage::delete_endpoint`].
    pub(crate) async fn delete_endpoint(&self, name: String) -> Result<bool, StorageError> {
        self.write(move |conn| Ok(sql::delete_endpoint(conn, &name)?))
            .await
    }

    /// See [`crate::storage::Storage::endpoint_counts`].
    pub(crate) async fn endpoint_counts(
        &self,
        name: String,
    ) -> Result<Option<EndpointCounts>, StorageError> {
        self.read(move |conn| sql::endpoint_counts(conn, &name))
            .await
    }

    /// See [`crate::storage::Storage::unbatched_reports`].
    pub(crate) async fn unbatched_reports(
        &self,
        endpoint: EndpointId,
        after_row: i64,
        limit: usize,
    ) -> Result<Vec<SealReport>, StorageError> {
        self.read(move |conn| sql::unbatched_reports(conn, endpoint, after_row, limit))
            .await
    }

    /// See [`crate::storage::Storage::distinct_posters`].
    pub(crate) async fn distinct_posters(
        &self,
        endpoint: EndpointId,
        rows: Vec<i64>,
        enough: u64,
    ) -> Result<u64, StorageError> {
        self.read_with(move |conn| sql::distinct_posters(conn, endpoint, &rows, enough))
            .await
    }

    /// See [`crate::storage::Storage::put_seal`].
    pub(crate) async fn put_seal(&self, seal: &Seal) -> Result<(), StorageError> {
        let record = sql::SealRecord::new(seal);
        self.write(move |conn| sql::put_seal(conn, &record)).await
    }

    /// See [`crate::storage::Storage::pending_seal`].
    pub(crate) async fn pending_seal(
        &self,
        endpoint: EndpointId,
    ) -> Result<Option<Seal>, StorageError> {
        self.read(move |conn| sql::pending_seal(conn, endpoint))
            .await
    }

    /// See [`crate::storage::Storage::decided_seals`].
    pub(crate) async fn decided_seals(&self) -> Result<Vec<Seal>, StorageError> {
        self.read(sql::decided_seals).await
    }

    /// See [`crate::storage::Storage::drop_seal`].
    pub(crate) async fn drop_seal(
        &self,
        endpoint: EndpointId,
        batch_id: [u8; 16],
    ) -> Result<bool, StorageError> {
        self.write(move |conn| Ok(sql::drop_seal(conn, endpoint, &batch_id)?))
            .await
    }

    /// See [`crate::storage::Storage::read_shares`].
    pub(crate) async fn read_shares(
        &self,
        endpoint: EndpointId,
        rows: Vec<i64>,
    ) -> Result<(Vec<u8>, Vec<u32>), StorageError> {
        self.read_with(move |conn| sql::read_shares(conn, endpoint, &rows))
            .await
    }

    /// See [`crate::storage::Storage::report_ids`].
    pub(crate) async fn report_ids(
        &self,
        endpoint: EndpointId,
        rows: Vec<i64>,
    ) -> Result<Vec<[u8; 16]>, StorageError> {
        self.read_with(move |conn| sql::report_ids(conn, endpoint, &rows))
            .await
    }

    /// See [`crate::storage::Storage::commit_batch`].
    pub(crate) async fn commit_batch(
        &self,
        endpoint: EndpointId,
        batch: NewBatch,
        rows: Vec<i64>,
    ) -> Result<CommitOutcome, StorageError> {
        self.write(move |conn| sql::commit_batch(conn, endpoint, &batch, rows))
            .await
    }

    /// See [`crate::storage::Storage::reject_reports`].
    pub(crate) async fn reject_reports(
        &self,
        endpoint: EndpointId,
        rows: Vec<i64>,
    ) -> Result<u64, StorageError> {
        self.write(move |conn| Ok(sql::reject_reports(conn, endpoint, &rows)?))
            .await
    }

    /// See [`crate::storage::Storage::verify_key`].
    pub(crate) async fn verify_key(
        &self,
        endpoint: EndpointId,
        proposed: Option<[u8; 32]>,
    ) -> Result<Option<[u8; 32]>, StorageError> {
        self.write(move |conn| sql::verify_key(conn, endpoint, proposed.as_ref()))
            .await
    }

    /// See [`crate::storage::Storage::list_batches`].
    pub(crate) async fn list_batches(
        &self,
        endpoint: EndpointId,
    ) -> Result<Vec<BatchInfo>, StorageError> {
        self.read(move |conn| sql::list_batches(conn, endpoint))
            .await
    }

    /// See [`crate::storage::Storage::get_batch`].
    pub(crate) async fn get_batch(
        &self,
        endpoint: EndpointId,
        batch_id: [u8; 16],
    ) -> Result<Option<Batch>, StorageError> {
        self.read(move |conn| sql::get_batch(conn, endpoint, &batch_id))
            .await
    }

    /// See [`crate::storage::Storage::all_batches`].
    pub(crate) async fn all_batches(
        &self,
        endpoint: EndpointId,
    ) -> Result<Vec<Batch>, StorageError> {
        self.read(move |conn| sql::all_batches(conn, endpoint))
            .await
    }

    /// See [`crate::storage::Storage::delete_batch`].
    pub(crate) async fn delete_batch(
        &self,
        endpoint: EndpointId,
        batch_id: [u8; 16],
        now: SystemTime,
    ) -> Result<DeleteBatchOutcome, StorageError> {
        let now = sql::to_millis(now);
        self.write(move |conn| Ok(sql::delete_batch(conn, endpoint, &batch_id, now)?))
            .await
    }

    /// See [`crate::storage::Storage::committed_batch`].
    pub(crate) async fn committed_batch(
        &self,
        endpoint: EndpointId,
        batch_id: [u8; 16],
    ) -> Result<Option<BatchInfo>, StorageError> {
        self.read(move |conn| sql::committed_batch(conn, endpoint, &batch_id))
            .await
    }

    /// See [`crate::storage::Storage::expire_reports`].
    pub(crate) async fn expire_reports(
        &self,
        endpoint: EndpointId,
        before: SystemTime,
    ) -> Result<u64, StorageError> {
        let before = sql::to_millis(before);
        self.write(move |conn| Ok(sql::expire_reports(conn, endpoint, before)?))
            .await
    }
}

/// Opens a read-only connection; it never needs the write settings (`synchronous`,
/// foreign keys), which only matter to writers.
fn open_reader(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(busy_timeout)?;
    Ok(conn)
}
