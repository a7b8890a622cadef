//! The writer thread: the only owner of the write connection, and its group commit.
//!
//! Callers queue [`Command`]s on a bounded channel and await a `oneshot` reply. The
//! thread blocks until one command arrives, takes whatever else is already queued (up
//! to `max_group`), and writes consecutive report inserts in one transaction, so that
//! one fsync acknowledges many reports. It never waits for more work to arrive before
//! committing: under load the queue fills while the previous commit syncs, and that is
//! what forms the groups (a fixed linger time was measured to cut throughput by 3×).
//!
//! It is a `std::thread`, not a tokio task, because every statement and every fsync
//! blocks.

use std::thread::JoinHandle;
use std::time::Instant;

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::sql;
use crate::storage::{
    CommitObserver, CommitStats, EndpointId, InsertReportOutcome, StorageError, UserQuota,
};

/// Work for the writer thread.
pub(crate) enum Command {
    /// Store one report; committed together with the other inserts queued with it.
    Insert(InsertReport),
    /// Any other write, run alone on the connection (it opens and commits its own
    /// transaction and answers its caller itself). Boxed closures keep the writer
    /// ignorant of plugins and endpoints.
    Job(Job),
    /// Stop accepting commands; the ones already queued are still written.
    Shutdown,
}

/// A write other than a report insert; see [`Command::Job`].
pub(crate) type Job = Box<dyn FnOnce(&mut Connection) + Send>;

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
    /// The endpoint's per-user quota and the poster, if the endpoint has one.
    pub(crate) quota: Option<UserQuota>,
    /// Receives the outcome once the group is committed (or has failed).
    pub(crate) reply: oneshot::Sender<Result<InsertReportOutcome, StorageError>>,
}

/// Starts the writer thread on `conn`.
pub(crate) fn spawn(
    conn: Connection,
    commands: mpsc::Receiver<Command>,
    max_group: usize,
    observer: Option<CommitObserver>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("storage-writer".to_owned())
        .spawn(move || run(conn, commands, max_group.max(1), observer))
}

fn run(
    mut conn: Connection,
    mut commands: mpsc::Receiver<Command>,
    max_group: usize,
    observer: Option<CommitObserver>,
) {
    let mut taken: Vec<Command> = Vec::with_capacity(max_group);
    let mut group: Vec<InsertReport> = Vec::with_capacity(max_group);
    // Ends when every sender is gone or, after a shutdown, the queue is drained.
    while let Some(first) = commands.blocking_recv() {
        taken.push(first);
        while taken.len() < max_group {
            match commands.try_recv() {
                Ok(command) => taken.push(command),
                Err(_) => break,
            }
        }
        for command in taken.drain(..) {
            match command {
                Command::Insert(insert) => group.push(insert),
                Command::Job(job) => {
                    // Keep queue order: inserts queued before the job commit first.
                    commit_group(&mut conn, &mut group, observer.as_ref());
                    job(&mut conn);
                }
                // Senders now fail with `Closed`; what is already queued is still
                // received by this loop before it ends.
                Command::Shutdown => commands.close(),
            }
        }
        commit_group(&mut conn, &mut group, observer.as_ref());
    }
    if let Err((_, error)) = conn.close() {
        tracing::warn!(
            error = &error as &dyn std::error::Error,
            "closing the storage write connection failed"
        );
    }
}

/// Writes `group` in one transaction and answers each caller; empties `group`.
///
/// A report that fails on its own (unknown endpoint) gets its error while the others
/// commit. If the transaction itself fails, every caller of the group gets the error
/// and nothing of the group is acknowledged.
fn commit_group(
    conn: &mut Connection,
    group: &mut Vec<InsertReport>,
    observer: Option<&CommitObserver>,
) {
    if group.is_empty() {
        return;
    }
    let started = Instant::now();
    let mut answers = Vec::with_capacity(group.len());
    let committed = write_group(conn, group, &mut answers);
    let stats = CommitStats {
        reports: group.len(),
        elapsed: started.elapsed(),
        committed: committed.is_ok(),
    };
    // Before answering, so that whoever sees its report acknowledged also finds the
    // commit counted.
    if let Some(observer) = observer {
        observer(stats);
    }
    match committed {
        Ok(()) => {
            for (insert, answer) in group.drain(..).zip(answers) {
                // The caller may have stopped waiting; its report is stored anyway.
                let _ = insert.reply.send(answer);
            }
        }
        Err(error) => {
            tracing::error!(
                error = &error as &dyn std::error::Error,
                reports = stats.reports,
                "group commit failed; no report of the group was acknowledged"
            );
            for insert in group.drain(..) {
                let _ = insert.reply.send(Err(error.clone()));
            }
        }
    }
}

/// Runs the inserts of `group` in one transaction, pushing each outcome to `answers`.
fn write_group(
    conn: &mut Connection,
    group: &[InsertReport],
    answers: &mut Vec<Result<InsertReportOutcome, StorageError>>,
) -> Result<(), StorageError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for insert in group {
        let answer = match &insert.quota {
            None => sql::insert_report(
                &tx,
                insert.endpoint,
                &insert.report_id,
                &insert.share,
                insert.received_at,
            ),
            // Counted inside this transaction, after the inserts before it: posts of
            // one user in one group cannot exceed the quota together.
            Some(quota) => sql::insert_report_for_user(
                &tx,
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
