//! The writer thread: the only owner of the write connection, and its group commit.
//!
//! Callers queue [`Command`]s on a bounded channel and await a `oneshot` reply. The
//! thread blocks until one command arrives, takes whatever else is already queued (up
//! to `max_group`), and writes consecutive report inserts in one transaction, so that
//! one sync acknowledges many reports. It never waits for more work to arrive before
//! committing: under load the queue fills while the previous group commits, and that
//! is what forms the groups (a fixed linger time was measured to cut throughput by 3×).
//!
//! Durability is pipelined. Report groups commit with `synchronous=NORMAL` (written to
//! the write-ahead log, not synced) and go to a second thread, the syncer, which calls
//! `fdatasync` on the log and only then answers their callers. One sync covers every
//! group committed before it started, and while it waits for the disk the writer
//! already writes the next group: the disk wait is off the writer's path, which it
//! otherwise held for about half of each commit. This is as durable as syncing at
//! each commit: SQLite checksums every log frame and recovers the longest valid
//! prefix of committed transactions, so an acknowledged group, synced before its
//! answer, survives a power loss whatever happens to later, unsynced frames; and
//! SQLite itself syncs the log before a checkpoint copies it and before a log file
//! is reused. Every other write (a [`Command::Job`]) commits with
//! `synchronous=FULL`, because a job answers its caller itself.
//!
//! Both are `std::thread`s, not tokio tasks, because every statement and every sync
//! blocks.

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::ids::ReportIds;
use super::sql;
use crate::storage::{
    CommitObserver, CommitStats, EndpointId, InsertReportOutcome, StorageError, UserKey, UserQuota,
};

/// Work for the writer thread.
pub(crate) enum Command {
    /// Store one report; committed together with the other inserts queued with it.
    Insert(InsertReport),
    /// Any other write, run alone on the connection (it opens and commits its own
    /// transaction and answers its caller itself). Boxed closures keep the writer
    /// ignorant of plugins and endpoints.
    Job(Job),
    /// A write that also changes which report ids the writer knows (the
    /// collection of reports older than the window), run like a [`Command::Job`].
    IdsJob(IdsJob),
    /// Stop accepting commands; the ones already queued are still written.
    Shutdown,
}

/// A write other than a report insert; see [`Command::Job`].
pub(crate) type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A write given the writer's [`ReportIds`] too; see [`Command::IdsJob`].
pub(crate) type IdsJob = Box<dyn FnOnce(&mut Connection, &mut ReportIds) + Send>;

/// One queued report and where to send its outcome.
pub(crate) struct InsertReport {
    /// Endpoint the report belongs to.
    pub(crate) endpoint: EndpointId,
    /// Client-chosen id, the same on every server.
    pub(crate) report_id: [u8; 16],
    /// The encoded share.
    pub(crate) share: Vec<u8>,
    /// Arrival time, in stored form (Unix milliseconds).
    pub(crate) received_at: i64,
    /// The endpoint's per-user quota, if the endpoint has one.
    pub(crate) quota: Option<UserQuota>,
    /// Who posted it (kept while unbatched), when known.
    pub(crate) poster: Option<UserKey>,
    /// Receives the outcome once the group is committed (or has failed).
    pub(crate) reply: oneshot::Sender<Result<InsertReportOutcome, StorageError>>,
}

/// Whether writes currently fail, and why: what readiness reports. A failed sync
/// stays (no later sync proves earlier pages reached the disk); a failed group
/// commit (a full disk) lasts until a group commits again.
#[derive(Debug, Default)]
pub(crate) struct WriteHealth {
    /// The reason, and whether it lasts until a restart.
    failure: Mutex<Option<(String, bool)>>,
}

impl WriteHealth {
    fn failed(&self, reason: String, until_restart: bool) {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        if !failure.as_ref().is_some_and(|(_, sticky)| *sticky) {
            *failure = Some((reason, until_restart));
        }
    }

    fn committed(&self) {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        if failure.as_ref().is_some_and(|(_, sticky)| !sticky) {
            *failure = None;
        }
    }

    /// Why writes fail now, if they do.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(reason, _)| reason.clone())
    }
}

/// Starts the writer thread on `conn`, and its syncer, which syncs `wal` (the
/// database's write-ahead log file); both report failures to `health`.
pub(crate) fn spawn(
    conn: Connection,
    ids: ReportIds,
    wal: PathBuf,
    commands: mpsc::Receiver<Command>,
    max_group: usize,
    observer: Option<CommitObserver>,
    health: Arc<WriteHealth>,
) -> std::io::Result<JoinHandle<()>> {
    // Rendezvous: one group syncs while the writer commits the next, and no more
    // run ahead (a writer far ahead of the disk commits ever smaller groups).
    let (to_syncer, committed) = std_mpsc::sync_channel(0);
    let sync_observer = observer.clone();
    let sync_health = health.clone();
    let syncer = std::thread::Builder::new()
        .name("storage-sync".to_owned())
        .spawn(move || sync_loop(wal, committed, sync_observer, &sync_health))?;
    std::thread::Builder::new()
        .name("storage-writer".to_owned())
        .spawn(move || {
            let conn = run(
                conn,
                ids,
                commands,
                max_group.max(1),
                &to_syncer,
                observer.as_ref(),
                &health,
            );
            // Ends the syncer once it has answered every group already committed;
            // only then may the connection close (which can delete the log file).
            drop(to_syncer);
            if syncer.join().is_err() {
                tracing::error!("the storage sync thread panicked");
            }
            if let Err((_, error)) = conn.close() {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "closing the storage write connection failed"
                );
            }
        })
}

/// Report groups commit without a sync; see the module documentation.
const GROUP_SYNC: &str = "NORMAL";
/// Every other write syncs at its commit.
const JOB_SYNC: &str = "FULL";

fn run(
    mut conn: Connection,
    mut ids: ReportIds,
    mut commands: mpsc::Receiver<Command>,
    max_group: usize,
    syncer: &std_mpsc::SyncSender<Committed>,
    observer: Option<&CommitObserver>,
    health: &WriteHealth,
) -> Connection {
    let mut taken: Vec<Command> = Vec::with_capacity(max_group);
    let mut group: Vec<InsertReport> = Vec::with_capacity(max_group);
    // A connection whose `synchronous` cannot be set would break the durability of
    // whichever side it stays on; writing nothing at all is the only safe answer.
    let mut sync_mode = set_sync(&conn, GROUP_SYNC);
    // Ends when every sender is gone or, after a shutdown, the queue is drained.
    while let Some(first) = commands.blocking_recv() {
        taken.push(first);
        take_ready(&mut commands, &mut taken, max_group);
        for command in taken.drain(..) {
            match command {
                Command::Insert(insert) => group.push(insert),
                Command::Job(job) => {
                    // Keep queue order: inserts queued before the job commit first.
                    commit_group(
                        &mut conn, &mut ids, &mut group, &sync_mode, syncer, observer, health,
                    );
                    sync_mode = sync_mode.and_then(|()| set_sync(&conn, JOB_SYNC));
                    if sync_mode.is_ok() {
                        job(&mut conn);
                    }
                    // Dropping an unrun job drops its reply sender: its caller is
                    // told the storage is closed.
                    sync_mode = sync_mode.and_then(|()| set_sync(&conn, GROUP_SYNC));
                }
                Command::IdsJob(job) => {
                    commit_group(
                        &mut conn, &mut ids, &mut group, &sync_mode, syncer, observer, health,
                    );
                    sync_mode = sync_mode.and_then(|()| set_sync(&conn, JOB_SYNC));
                    if sync_mode.is_ok() {
                        job(&mut conn, &mut ids);
                    }
                    sync_mode = sync_mode.and_then(|()| set_sync(&conn, GROUP_SYNC));
                }
                // Senders now fail with `Closed`; what is already queued is still
                // received by this loop before it ends.
                Command::Shutdown => commands.close(),
            }
        }
        commit_group(
            &mut conn, &mut ids, &mut group, &sync_mode, syncer, observer, health,
        );
        // Between groups, and not durable by itself: a move lost in a crash is
        // redone from `reports` at the next start.
        if sync_mode.is_ok()
            && let Err(error) = ids.flush(&mut conn)
        {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                waiting = ids.waiting(),
                "moving report ids to their index failed; they keep waiting"
            );
        }
    }
    conn
}

/// Most times [`take_ready`] yields the processor for one group.
const MAX_YIELDS: usize = 8;

/// Moves what is queued into `taken` (up to `max_group`), yielding the processor
/// between takes for as long as that brings more.
///
/// Each commit has a fixed cost (the log frames of the pages every insert shares,
/// the sync, the wake-ups), so small groups cost more per report. The writer wakes
/// for the first report of a group, often on the processor of the request thread
/// that queued it and still holds more; yielding lets that thread queue them
/// first. On an idle machine the yield returns at once and finds nothing, so a
/// lone report is not delayed. Measured on two cores at the same rate: groups of
/// 55–60 reports instead of 30–38, a few per cent less server CPU per report.
fn take_ready(commands: &mut mpsc::Receiver<Command>, taken: &mut Vec<Command>, max_group: usize) {
    for yields in 0..=MAX_YIELDS {
        let before = taken.len();
        while taken.len() < max_group {
            match commands.try_recv() {
                Ok(command) => taken.push(command),
                Err(_) => break,
            }
        }
        let more = taken.len() > before;
        if taken.len() >= max_group || (yields > 0 && !more) || yields == MAX_YIELDS {
            return;
        }
        std::thread::yield_now();
    }
}

/// Sets the connection's `synchronous` mode.
fn set_sync(conn: &Connection, mode: &str) -> Result<(), StorageError> {
    conn.pragma_update(None, "synchronous", mode)
        .map_err(|error| {
            tracing::error!(
                error = &error as &dyn std::error::Error,
                mode,
                "setting the storage sync mode failed; no more writes are accepted"
            );
            StorageError::from(error)
        })
}

/// A group whose transaction committed, on its way to the syncer.
struct Committed {
    group: Vec<InsertReport>,
    answers: Vec<Result<InsertReportOutcome, StorageError>>,
    started: Instant,
}

/// Writes `group` in one transaction and hands it to the syncer, which answers its
/// callers; empties `group`.
///
/// A report that fails on its own (unknown endpoint) gets its error while the others
/// commit. If the transaction itself fails, every caller of the group gets the error
/// at once and nothing of the group is acknowledged.
fn commit_group(
    conn: &mut Connection,
    ids: &mut ReportIds,
    group: &mut Vec<InsertReport>,
    sync_mode: &Result<(), StorageError>,
    syncer: &std_mpsc::SyncSender<Committed>,
    observer: Option<&CommitObserver>,
    health: &WriteHealth,
) {
    if group.is_empty() {
        return;
    }
    let started = Instant::now();
    let mut answers = Vec::with_capacity(group.len());
    let written = sync_mode
        .clone()
        .and_then(|()| write_group(conn, ids, group, &mut answers));
    let committed = Committed {
        // A new vector of the group's size; the writer keeps its large one.
        #[allow(clippy::drain_collect)]
        group: group.drain(..).collect(),
        answers,
        started,
    };
    match written {
        Ok(()) => {
            health.committed();
            if let Err(std_mpsc::SendError(committed)) = syncer.send(committed) {
                // Only if the syncer panicked: the group is stored but unsynced.
                answer(committed, Err(&StorageError::TaskFailed), observer);
            }
        }
        Err(error) => {
            tracing::error!(
                error = &error as &dyn std::error::Error,
                reports = committed.group.len(),
                "group commit failed; no report of the group was acknowledged"
            );
            if error.is_unavailable() {
                let cause = std::error::Error::source(&error)
                    .map_or_else(String::new, |source| format!(" ({source})"));
                health.failed(format!("writing reports failed{cause}"), false);
            }
            answer(committed, Err(&error), observer);
        }
    }
}

/// Answers the callers of `committed`: each its own outcome if the group is durable
/// (`Ok`), the failure otherwise; reports the group to `observer` first, so that
/// whoever sees its report acknowledged also finds the commit counted.
fn answer(
    committed: Committed,
    durable: Result<(), &StorageError>,
    observer: Option<&CommitObserver>,
) {
    if let Some(observer) = observer {
        observer(CommitStats {
            reports: committed.group.len(),
            elapsed: committed.started.elapsed(),
            committed: durable.is_ok(),
        });
    }
    for (insert, outcome) in committed.group.into_iter().zip(committed.answers) {
        // The caller may have stopped waiting; its report is stored anyway.
        let _ = insert.reply.send(match durable {
            Ok(()) => outcome,
            Err(error) => Err(error.clone()),
        });
    }
}

/// The syncer thread: takes every committed group queued, syncs the log once, and
/// answers them all. After a failed sync it answers every later group with that
/// failure (see [`StorageError::Sync`]).
fn sync_loop(
    wal: PathBuf,
    committed: std_mpsc::Receiver<Committed>,
    observer: Option<CommitObserver>,
    health: &WriteHealth,
) {
    // Opened at the first sync: SQLite creates the log file lazily. It is never
    // deleted while the writer's connection is open, and that connection is closed
    // only after this thread ends.
    let mut log: Option<File> = None;
    let mut failed: Option<StorageError> = None;
    let mut pending = Vec::new();
    while let Ok(first) = committed.recv() {
        pending.push(first);
        pending.extend(committed.try_iter());
        if failed.is_none()
            && let Err(error) = sync(&wal, &mut log)
        {
            tracing::error!(
                error = &error as &dyn std::error::Error,
                log = %wal.display(),
                "syncing the database log failed; no more reports are acknowledged until a restart"
            );
            health.failed(
                format!(
                    "syncing the database log failed ({error}); no report is acknowledged until the server is restarted"
                ),
                true,
            );
            failed = Some(StorageError::Sync(std::sync::Arc::new(error)));
        }
        for group in pending.drain(..) {
            answer(
                group,
                failed.as_ref().map_or(Ok(()), Err),
                observer.as_ref(),
            );
        }
    }
}

/// `fdatasync` of the log file: what the commits written so far need to be durable.
fn sync(wal: &std::path::Path, log: &mut Option<File>) -> std::io::Result<()> {
    let file = match log {
        Some(file) => file,
        None => log.insert(File::open(wal)?),
    };
    file.sync_data()
}

/// Runs the inserts of `group` in one transaction, pushing each outcome to `answers`.
/// `ids` learns the group's new reports only if the transaction commits.
fn write_group(
    conn: &mut Connection,
    ids: &mut ReportIds,
    group: &[InsertReport],
    answers: &mut Vec<Result<InsertReportOutcome, StorageError>>,
) -> Result<(), StorageError> {
    let written = write_group_tx(conn, ids, group, answers);
    match written {
        Ok(()) => ids.commit(),
        Err(_) => ids.roll_back(),
    }
    written
}

fn write_group_tx(
    conn: &mut Connection,
    ids: &mut ReportIds,
    group: &[InsertReport],
    answers: &mut Vec<Result<InsertReportOutcome, StorageError>>,
) -> Result<(), StorageError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for insert in group {
        let answer = match &insert.quota {
            None => sql::insert_report(
                &tx,
                ids,
                insert.endpoint,
                &insert.report_id,
                &insert.share,
                insert.received_at,
                insert.poster.as_ref(),
            ),
            // Counted inside this transaction, after the inserts before it: posts of
            // one user in one group cannot exceed the quota together.
            Some(quota) => sql::insert_report_for_user(
                &tx,
                ids,
                insert.endpoint,
                &insert.report_id,
                &insert.share,
                insert.received_at,
                quota,
            ),
        };
        // Some errors (disk full, I/O) make SQLite roll the whole transaction back;
        // going on would run the rest in autocommit mode and lose the earlier rows.
        if let Err(error) = &answer
            && tx.is_autocommit()
        {
            return Err(error.clone());
        }
        answers.push(answer);
    }
    tx.commit()?;
    Ok(())
}
