//! The report writer of the PostgreSQL backend: group commit of concurrent
//! reports, one transaction and one multi-row `INSERT` per group.
//!
//! Callers queue [`InsertReport`]s on a bounded channel and await a `oneshot`
//! reply. [`WRITERS`] tasks share the queue: the one holding it waits for a
//! report, takes whatever else is ready (up to `max_group`) and lets go of the
//! queue before committing, so that the next group forms and is written while
//! this one's `COMMIT` waits for the WAL flush. As in SQLite's writer, nothing
//! ever waits for more reports to arrive: load makes the groups.
//!
//! A group's transaction (see [`write_group`]) locks the endpoints it writes
//! to, decides the quota reports in queue order, inserts every new report with
//! one `INSERT … SELECT * FROM unnest(…) ON CONFLICT DO NOTHING`, and answers
//! the rest from the rows stored under their ids. Callers are answered only
//! once `COMMIT` returned, and `synchronous_commit` stays on: an acknowledged
//! report survives a crash of the database. Uniqueness of report ids is the
//! database's unique index, so groups of several writers and of several
//! replicas may overlap freely.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use deadpool_postgres::{Pool, Transaction};
use sha2::Digest as _;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;

use crate::storage::{
    CommitObserver, CommitStats, EndpointId, InsertReportOutcome, StorageError, UserKey, UserQuota,
};

/// Reports that may wait for the writers, per slot of a group: as in SQLite's
/// backend, enough to queue a full next group while one commits; beyond that
/// callers wait (backpressure) instead of piling up memory.
const QUEUE_PER_GROUP_SLOT: usize = 4;

/// How many groups are in flight at once: one commits while the next is built
/// and written. Measured on two cores with the database on the same machine
/// (`ingest_bench`): see BENCHMARKS.md.
const WRITERS: usize = 2;

/// Most times [`take_ready`] yields for one group (see SQLite's writer).
const MAX_YIELDS: usize = 8;

/// How often a group is retried after the database aborted it to break a
/// deadlock or a serialization conflict (never after an ambiguous failure).
const RETRIES: usize = 3;

/// Work for the writer tasks.
enum Command {
    /// Store one report; committed together with the others taken with it.
    Insert(InsertReport),
    /// Stop accepting reports; the ones already queued are still written.
    Shutdown,
}

/// One queued report and where to send its outcome.
struct InsertReport {
    /// Endpoint the report belongs to.
    endpoint: EndpointId,
    /// Client-chosen id, the same on every server.
    report_id: [u8; 16],
    /// The encoded share.
    share: Vec<u8>,
    /// Arrival time, in stored form (Unix milliseconds).
    received_at: i64,
    /// The endpoint's per-user quota, if the endpoint has one.
    quota: Option<UserQuota>,
    /// Who posted it (kept while unbatched), when known.
    poster: Option<UserKey>,
    /// Receives the outcome once the group is committed (or has failed).
    reply: oneshot::Sender<Result<InsertReportOutcome, StorageError>>,
}

/// An outcome on its way to a caller.
pub(super) type Answer = Result<InsertReportOutcome, StorageError>;

/// The queue of the writer tasks and what `close` needs.
pub(super) struct Writer {
    /// Where callers queue reports.
    commands: mpsc::Sender<Command>,
    /// The writer tasks, taken and awaited by the first `close`.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Set by `close`: later reports are refused at once.
    closed: AtomicBool,
    /// Whether the last group could be written, for readiness.
    health: Arc<WriteHealth>,
}

/// Whether report groups currently fail because the database is unavailable,
/// and why: what readiness reports, until a group commits again (SQLite's
/// `WriteHealth` without its sticky sync failures, which PostgreSQL has not).
#[derive(Debug, Default)]
struct WriteHealth {
    /// The reason.
    failure: Mutex<Option<String>>,
}

impl WriteHealth {
    /// Records why writing failed.
    fn failed(&self, reason: String) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
    }

    /// A group committed: writing works.
    fn committed(&self) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Why writes fail now, if they do.
    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What every writer task holds.
struct Shared {
    /// The queue, held by the task forming the next group.
    queue: tokio::sync::Mutex<mpsc::Receiver<Command>>,
    /// Connections.
    pool: Pool,
    /// The database URL without its password, for errors.
    redacted_url: String,
    /// Most reports of one group.
    max_group: usize,
    /// Told about every group.
    observer: Option<CommitObserver>,
    /// See [`Writer::health`].
    health: Arc<WriteHealth>,
}

impl Writer {
    /// Starts the writer tasks on the current runtime.
    pub(super) fn spawn(
        pool: Pool,
        redacted_url: String,
        max_group: usize,
        observer: Option<CommitObserver>,
    ) -> Writer {
        let max_group = max_group.max(1);
        let (commands, queue) = mpsc::channel(max_group.saturating_mul(QUEUE_PER_GROUP_SLOT));
        let health = Arc::new(WriteHealth::default());
        let shared = Arc::new(Shared {
            queue: tokio::sync::Mutex::new(queue),
            pool,
            redacted_url,
            max_group,
            observer,
            health: health.clone(),
        });
        let tasks = (0..WRITERS)
            .map(|_| tokio::spawn(run(shared.clone())))
            .collect();
        Writer {
            commands,
            tasks: Mutex::new(tasks),
            closed: AtomicBool::new(false),
            health,
        }
    }

    /// Queues one report, under a per-user quota if given; the returned
    /// receiver yields its outcome once its group is committed.
    pub(super) async fn queue(
        &self,
        endpoint: EndpointId,
        report_id: [u8; 16],
        share: Vec<u8>,
        received_at: i64,
        quota: Option<UserQuota>,
        poster: Option<UserKey>,
    ) -> Result<oneshot::Receiver<Answer>, StorageError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StorageError::Closed);
        }
        let (reply, outcome) = oneshot::channel();
        let insert = InsertReport {
            endpoint,
            report_id,
            share,
            received_at,
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

    /// Whether reads and other writes should be refused too.
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Stops accepting reports, lets the writers commit what is queued and
    /// answer it, and waits for them to end. Harmless when repeated.
    pub(super) async fn close(&self) -> Result<(), StorageError> {
        self.closed.store(true, Ordering::SeqCst);
        // Fails only if the writers are already gone, which is what we want anyway.
        let _ = self.commands.send(Command::Shutdown).await;
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            task.await.map_err(|_| StorageError::TaskFailed)?;
        }
        Ok(())
    }

    /// Why reports cannot be written now, if they cannot.
    pub(super) fn failure(&self) -> Option<String> {
        self.health.failure()
    }
}

/// One writer task: forms groups from the queue and commits them, until the
/// queue is closed and drained (or every sender is gone).
async fn run(shared: Arc<Shared>) {
    let mut taken = Vec::with_capacity(shared.max_group);
    loop {
        let group = {
            let mut queue = shared.queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            taken.push(first);
            take_ready(&mut queue, &mut taken, shared.max_group).await;
            let mut group = Vec::with_capacity(taken.len());
            for command in taken.drain(..) {
                match command {
                    Command::Insert(insert) => group.push(insert),
                    // Senders now fail with `Closed`; what is queued is still received.
                    Command::Shutdown => queue.close(),
                }
            }
            group
        };
        if !group.is_empty() {
            commit_group(&shared, group).await;
        }
    }
}

/// Moves what is queued into `taken` (up to `max_group`), yielding between takes
/// for as long as that brings more: the callers that woke this task often have
/// more reports to queue on the same worker thread (see SQLite's writer).
async fn take_ready(
    queue: &mut mpsc::Receiver<Command>,
    taken: &mut Vec<Command>,
    max_group: usize,
) {
    for yields in 0..=MAX_YIELDS {
        let before = taken.len();
        while taken.len() < max_group {
            match queue.try_recv() {
                Ok(command) => taken.push(command),
                Err(_) => break,
            }
        }
        let more = taken.len() > before;
        if taken.len() >= max_group || (yields > 0 && !more) || yields == MAX_YIELDS {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// Writes `group` in one transaction and answers its callers: each its own
/// outcome once committed, or every one the failure.
async fn commit_group(shared: &Shared, group: Vec<InsertReport>) {
    let started = Instant::now();
    let written = write_with_retries(shared, &group).await;
    let committed = written.is_ok();
    match &written {
        Ok(_) => shared.health.committed(),
        Err(error) => {
            tracing::error!(
                error = error as &dyn std::error::Error,
                reports = group.len(),
                "group commit failed; no report of the group was acknowledged"
            );
            if error.is_unavailable() {
                let cause = std::error::Error::source(error)
                    .map_or_else(|| error.to_string(), |source| source.to_string());
                shared
                    .health
                    .failed(format!("writing reports failed ({cause})"));
            }
        }
    }
    // Counted before anyone is answered, so whoever sees a report acknowledged
    // also finds its commit counted.
    if let Some(observer) = &shared.observer {
        observer(CommitStats {
            reports: group.len(),
            elapsed: started.elapsed(),
            committed,
        });
    }
    match written {
        Ok(answers) => {
            for (insert, answer) in group.into_iter().zip(answers) {
                // The caller may have stopped waiting; its report is stored anyway.
                let _ = insert.reply.send(answer);
            }
        }
        Err(error) => {
            for insert in group {
                let _ = insert.reply.send(Err(error.clone()));
            }
        }
    }
}

/// [`write_group`] on a pooled connection, again after a deadlock or a
/// serialization failure (the database rolled the whole group back, so it is
/// as if it never ran).
async fn write_with_retries(
    shared: &Shared,
    group: &[InsertReport],
) -> Result<Vec<Answer>, StorageError> {
    let mut client = super::pooled(&shared.pool, &shared.redacted_url).await?;
    let mut attempt = 0;
    loop {
        let tx = client.transaction().await?;
        match write_group(&tx, group).await {
            Ok(answers) => {
                tx.commit().await?;
                return Ok(answers);
            }
            Err(error) if attempt < RETRIES && is_retryable(&error) => {
                attempt += 1;
                tracing::debug!(
                    attempt,
                    "a report group was rolled back by the database; retrying"
                );
                drop(tx);
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Whether the database aborted a transaction that may simply run again.
fn is_retryable(error: &tokio_postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(code) if *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

/// Locks the group's endpoints, in id order so that concurrent groups never
/// deadlock on them. `FOR KEY SHARE` is what each insert's foreign key check
/// takes anyway: taken first, it makes the group find a deleted endpoint here
/// rather than fail as a whole on the foreign key, and a deletion waits for the
/// group. Quota groups take `FOR NO KEY UPDATE`, which serialises them with
/// every other quota group of these endpoints (on any replica) but not with
/// plain inserts, whose key-share locks it does not block.
const LOCK_ENDPOINTS: &str =
    "SELECT id FROM endpoints WHERE id = ANY($1) ORDER BY id FOR KEY SHARE";

/// [`LOCK_ENDPOINTS`] for a group with quota reports.
const LOCK_ENDPOINTS_FOR_QUOTA: &str =
    "SELECT id FROM endpoints WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE";

/// Which of the given report ids are stored (quota reports: a stored id is
/// answered whatever the user's count).
const STORED_IDS: &str = "SELECT r.endpoint_id, r.report_id FROM reports r \
     JOIN unnest($1::bigint[], $2::bytea[]) AS q (endpoint_id, report_id) \
     USING (endpoint_id, report_id)";

/// How many unbatched reports each given user holds in each given endpoint: a
/// lookup in the partial index `reports_unbatched_by_user` per pair.
const USER_COUNTS: &str = "SELECT q.endpoint_id, q.user_key, \
       (SELECT count(*) FROM reports r WHERE r.endpoint_id = q.endpoint_id \
          AND r.user_key = q.user_key AND r.batch_id IS NULL) \
     FROM unnest($1::bigint[], $2::bytea[]) AS q (endpoint_id, user_key)";

/// The group's new reports, one statement; a report id already stored (by any
/// replica, committed or in flight) is skipped and left to [`STORED_ROWS`].
const INSERT_REPORTS: &str = "INSERT INTO reports \
     (endpoint_id, report_id, share, received_at, user_key, poster, share_digest) \
     SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[], $4::bigint[], \
       $5::bytea[], $6::bytea[], $7::bytea[]) \
     ON CONFLICT (endpoint_id, report_id) DO NOTHING RETURNING endpoint_id, report_id";

/// The stored share (or its digest) under each given report id.
const STORED_ROWS: &str = "SELECT r.endpoint_id, r.report_id, r.share, r.share_digest \
     FROM reports r JOIN unnest($1::bigint[], $2::bytea[]) AS q (endpoint_id, report_id) \
     USING (endpoint_id, report_id)";

/// An endpoint and a report id (or user key): what the group's maps are keyed by.
type Key = (i64, [u8; 16]);

/// A stored report's share (NULL once batched or expired) and its digest.
type StoredShare = (Option<Vec<u8>>, Option<Vec<u8>>);

/// What becomes of one report of a group, decided before the insert.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Answered already (unknown endpoint, quota exceeded).
    Answered,
    /// In the `INSERT`; stored unless its id is taken.
    Insert,
    /// Its id is stored already (or earlier in the group): answered from the row.
    Compare,
}

/// The group's statements in the open transaction `tx`; one answer per report
/// of `group`, in order. Semantics of SQLite's `write_group_tx`, one report
/// after the other in queue order: quota counts see the reports before them,
/// the same id twice is stored once and the second compared with the first.
async fn write_group(
    tx: &Transaction<'_>,
    group: &[InsertReport],
) -> Result<Vec<Answer>, tokio_postgres::Error> {
    let mut answers: Vec<Option<Answer>> = (0..group.len()).map(|_| None).collect();
    let mut plans = vec![Plan::Answered; group.len()];

    let mut endpoints: Vec<i64> = group.iter().map(|insert| insert.endpoint.0).collect();
    endpoints.sort_unstable();
    endpoints.dedup();
    let has_quota = group.iter().any(|insert| insert.quota.is_some());
    let lock = tx
        .prepare_cached(if has_quota {
            LOCK_ENDPOINTS_FOR_QUOTA
        } else {
            LOCK_ENDPOINTS
        })
        .await?;
    let mut known = HashSet::with_capacity(endpoints.len());
    for row in tx.query(&lock, &[&endpoints]).await? {
        known.insert(row.try_get::<_, i64>(0)?);
    }

    // Quota reports are decided first, in queue order, from the stored ids and
    // the users' counts, which the endpoint locks keep still.
    let quota_reports: Vec<&InsertReport> = group
        .iter()
        .filter(|insert| insert.quota.is_some() && known.contains(&insert.endpoint.0))
        .collect();
    let mut stored_before = HashSet::new();
    let mut counts: HashMap<Key, u64> = HashMap::new();
    if !quota_reports.is_empty() {
        let (endpoint_ids, report_ids): (Vec<i64>, Vec<&[u8]>) = quota_reports
            .iter()
            .map(|insert| (insert.endpoint.0, &insert.report_id[..]))
            .unzip();
        let statement = tx.prepare_cached(STORED_IDS).await?;
        for row in tx.query(&statement, &[&endpoint_ids, &report_ids]).await? {
            stored_before.insert((row.try_get(0)?, id16(row.try_get(1)?)));
        }
        let mut users: Vec<Key> = quota_reports
            .iter()
            .filter_map(|insert| Some((insert.endpoint.0, insert.quota?.user.0)))
            .collect();
        users.sort_unstable();
        users.dedup();
        let (endpoint_ids, user_keys): (Vec<i64>, Vec<&[u8]>) = users
            .iter()
            .map(|(endpoint, user)| (*endpoint, &user[..]))
            .unzip();
        let statement = tx.prepare_cached(USER_COUNTS).await?;
        for row in tx.query(&statement, &[&endpoint_ids, &user_keys]).await? {
            let count: i64 = row.try_get(2)?;
            counts.insert(
                (row.try_get(0)?, id16(row.try_get(1)?)),
                u64::try_from(count).unwrap_or(0),
            );
        }
    }

    let mut planned: HashSet<Key> = HashSet::with_capacity(group.len());
    for (index, insert) in group.iter().enumerate() {
        let key = (insert.endpoint.0, insert.report_id);
        if !known.contains(&key.0) {
            answers[index] = Some(Err(StorageError::UnknownEndpoint));
            continue;
        }
        if planned.contains(&key) {
            plans[index] = Plan::Compare;
            continue;
        }
        if let Some(quota) = &insert.quota {
            if stored_before.contains(&key) {
                plans[index] = Plan::Compare;
                continue;
            }
            let count = counts.entry((key.0, quota.user.0)).or_insert(0);
            if *count >= quota.max {
                answers[index] = Some(Ok(InsertReportOutcome::UserQuotaExceeded {
                    max: quota.max,
                }));
                continue;
            }
            *count += 1;
        }
        planned.insert(key);
        plans[index] = Plan::Insert;
    }

    // Inserted in key order, as every group of every replica inserts: two groups
    // with ids in common then wait for each other without deadlocking.
    let mut to_insert: Vec<usize> = (0..group.len())
        .filter(|&index| plans[index] == Plan::Insert)
        .collect();
    to_insert.sort_unstable_by_key(|&index| (group[index].endpoint.0, group[index].report_id));
    let mut inserted: HashSet<Key> = HashSet::with_capacity(to_insert.len());
    if !to_insert.is_empty() {
        let digests: Vec<[u8; 16]> = to_insert
            .iter()
            .map(|&index| share_digest(&group[index].share))
            .collect();
        let mut endpoint_ids = Vec::with_capacity(to_insert.len());
        let mut report_ids = Vec::with_capacity(to_insert.len());
        let mut shares = Vec::with_capacity(to_insert.len());
        let mut received = Vec::with_capacity(to_insert.len());
        let mut user_keys = Vec::with_capacity(to_insert.len());
        let mut posters = Vec::with_capacity(to_insert.len());
        for &index in &to_insert {
            let insert = &group[index];
            endpoint_ids.push(insert.endpoint.0);
            report_ids.push(&insert.report_id[..]);
            shares.push(&insert.share[..]);
            received.push(insert.received_at);
            // As SQLite stores them: a quota report keeps its user as its poster.
            let user = insert.quota.as_ref().map(|quota| &quota.user.0[..]);
            user_keys.push(user);
            posters.push(user.or(insert.poster.as_ref().map(|poster| &poster.0[..])));
        }
        let digest_refs: Vec<&[u8]> = digests.iter().map(|digest| &digest[..]).collect();
        let statement = tx.prepare_cached(INSERT_REPORTS).await?;
        for row in tx
            .query(
                &statement,
                &[
                    &endpoint_ids,
                    &report_ids,
                    &shares,
                    &received,
                    &user_keys,
                    &posters,
                    &digest_refs,
                ],
            )
            .await?
        {
            inserted.insert((row.try_get(0)?, id16(row.try_get(1)?)));
        }
    }

    let mut compare = Vec::new();
    for (index, insert) in group.iter().enumerate() {
        let key = (insert.endpoint.0, insert.report_id);
        match plans[index] {
            Plan::Answered => {}
            Plan::Insert if inserted.remove(&key) => {
                answers[index] = Some(Ok(InsertReportOutcome::Stored));
            }
            Plan::Insert | Plan::Compare => compare.push(index),
        }
    }
    if !compare.is_empty() {
        let (endpoint_ids, report_ids): (Vec<i64>, Vec<&[u8]>) = compare
            .iter()
            .map(|&index| (group[index].endpoint.0, &group[index].report_id[..]))
            .unzip();
        let statement = tx.prepare_cached(STORED_ROWS).await?;
        let mut stored: HashMap<Key, StoredShare> = HashMap::new();
        for row in tx.query(&statement, &[&endpoint_ids, &report_ids]).await? {
            stored.insert(
                (row.try_get(0)?, id16(row.try_get(1)?)),
                (row.try_get(2)?, row.try_get(3)?),
            );
        }
        for index in compare {
            let insert = &group[index];
            let same = match stored.get(&(insert.endpoint.0, insert.report_id)) {
                Some((Some(share), _)) => *share == insert.share,
                // Batched or expired: compared by digest.
                Some((None, digest)) => digest.as_deref() == Some(&share_digest(&insert.share)[..]),
                // Taken, then collected by the report window before it could be
                // read: its share is gone and cannot be compared.
                None => false,
            };
            answers[index] = Some(Ok(if same {
                InsertReportOutcome::Duplicate
            } else {
                InsertReportOutcome::Conflict
            }));
        }
    }
    Ok(answers
        .into_iter()
        .map(|answer| answer.unwrap_or(Err(StorageError::TaskFailed)))
        .collect())
}

/// A stored 16-byte value (report id, user key); the schema's checks guarantee
/// the length, so anything else reads as zeros rather than failing the group.
fn id16(value: &[u8]) -> [u8; 16] {
    <[u8; 16]>::try_from(value).unwrap_or_default()
}

/// What is kept of a share once it is deleted: the first 16 bytes of its
/// SHA-256, as SQLite keeps it.
pub(super) fn share_digest(share: &[u8]) -> [u8; 16] {
    let digest = sha2::Sha256::digest(share);
    let mut first = [0; 16];
    first.copy_from_slice(&digest[..16]);
    first
}
