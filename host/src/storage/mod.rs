//! Durable storage of a share server: plugins, endpoints and reports.
//!
//! This module owns all SQL of the server; nothing else in the server touches a
//! database driver. Everything goes through [`Storage`], a cheap-to-clone handle whose
//! async methods are the whole interface, so that a PostgreSQL backend (for stateless
//! replicas over a shared database, DESIGN.md section 8) can be added next to the
//! embedded one without changing any caller.
//!
//! Layout:
//!
//! - this file: the facade, the records it reads and writes, and [`StorageError`];
//! - `sqlite`: the embedded backend, one SQLite file in WAL mode:
//!   - `sqlite::migrations`: the versioned schema;
//!   - `sqlite::writer`: the single writer thread and its group commit;
//!   - `sqlite::sql`: every statement, as plain functions over a connection.
//! - `backup`: online copies of the SQLite file while the server serves
//!   (`guardian admin backup`).
//!
//! Invariants:
//!
//! - A write is answered only after its transaction is durably committed, so an
//!   acknowledged report survives a crash or a power loss: other writes commit with
//!   `synchronous=FULL`; report groups commit without a sync and are answered by a
//!   second thread once its `fdatasync` of the log covers them (see `sqlite::writer`).
//! - Reports of concurrent callers are committed together (group commit) by one writer
//!   thread, which commits as soon as anything is queued: batching comes from load,
//!   never from waiting.
//! - Blocking database work never runs on the async executor's worker threads: writes
//!   run on the writer thread, reads on `spawn_blocking` over a small pool of read-only
//!   connections.
//! - A report id, once stored for an endpoint, is never stored again for it: its row
//!   outlives its share (the share is deleted when its batch is released), so replays
//!   stay detectable.

#![warn(missing_docs)]

pub mod backup;
#[cfg(test)]
mod batch_deletion_tests;
mod postgres;
mod sqlite;
#[cfg(test)]
mod test_backends;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod window_tests;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Handle to the server's storage; clone it freely (it is an `Arc` inside).
///
/// Every public method is async and never blocks the calling executor thread.
#[derive(Clone)]
pub struct Storage {
    /// The backend doing the work.
    backend: Arc<Backend>,
    /// The database's secret, drawn once when it was created: the key of
    /// [`Storage::user_key`] and [`Storage::release_seed`], so every replica over
    /// one database derives the same values.
    secret: [u8; 32],
}

/// The two backends behind [`Storage`], with the same methods and guarantees.
enum Backend {
    /// One SQLite file, one process.
    Sqlite(sqlite::SqliteBackend),
    /// A PostgreSQL database, shared by any number of replicas of one server.
    Postgres(postgres::PgBackend),
}

/// Calls the backend's method of the same name and awaits it.
macro_rules! dispatch {
    ($self:ident, $method:ident ( $($arg:expr),* $(,)? )) => {
        match &*$self.backend {
            Backend::Sqlite(backend) => backend.$method($($arg),*).await,
            Backend::Postgres(backend) => backend.$method($($arg),*).await,
        }
    };
}

/// Where a server's database is: `storage.url` when set, else `storage.path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageLocation {
    /// A SQLite file, created if missing.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL database (`postgres://…` or `postgresql://…`; TLS when its
    /// `sslmode` asks for it).
    Postgres(String),
}

impl StorageLocation {
    /// The location a `storage.url` names: PostgreSQL for `postgres://` and
    /// `postgresql://` URLs; anything else is refused with the reason.
    pub fn from_url(url: &str) -> Result<StorageLocation, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(StorageLocation::Postgres(url.to_owned()))
        } else {
            Err(format!(
                "storage.url must start with postgres:// or postgresql:// (a SQLite file is set with storage.path), not {:?}",
                url.split(':').next().unwrap_or_default()
            ))
        }
    }
}

impl fmt::Display for StorageLocation {
    /// The file, or the URL without its password, for logs and errors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageLocation::Sqlite(path) => write!(f, "{}", path.display()),
            StorageLocation::Postgres(url) => f.write_str(&postgres::redact(url)),
        }
    }
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Storage");
        match &*self.backend {
            Backend::Sqlite(backend) => debug.field("path", &backend.path()),
            Backend::Postgres(backend) => debug.field("url", &backend.redacted_url()),
        };
        debug.finish_non_exhaustive()
    }
}

impl Storage {
    /// Opens (or creates) the database at `path`, brings its schema up to date and
    /// starts the writer thread.
    ///
    /// Fails with [`StorageError::SchemaTooNew`] if the file was written by a newer
    /// build, rather than guessing what its tables mean.
    pub async fn open(path: &Path, options: StorageOptions) -> Result<Storage, StorageError> {
        let path = path.to_path_buf();
        let backend =
            tokio::task::spawn_blocking(move || sqlite::SqliteBackend::open(&path, options))
                .await
                .map_err(|_| StorageError::TaskFailed)??;
        let secret = backend.secret();
        Ok(Storage {
            backend: Arc::new(Backend::Sqlite(backend)),
            secret,
        })
    }

    /// Connects to the PostgreSQL database at `url`, brings its schema up to date
    /// (one replica at a time) and starts the report writer.
    pub async fn open_postgres(
        url: &str,
        options: StorageOptions,
    ) -> Result<Storage, StorageError> {
        let backend = postgres::PgBackend::open(url, options).await?;
        let secret = backend.secret();
        Ok(Storage {
            backend: Arc::new(Backend::Postgres(backend)),
            secret,
        })
    }

    /// Opens the database at `location`, whichever backend it is.
    pub async fn connect(
        location: &StorageLocation,
        options: StorageOptions,
    ) -> Result<Storage, StorageError> {
        match location {
            StorageLocation::Sqlite(path) => Storage::open(path, options).await,
            StorageLocation::Postgres(url) => Storage::open_postgres(url, options).await,
        }
    }

    /// The SQLite file, if this storage is one (online backups copy it).
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &*self.backend {
            Backend::Sqlite(backend) => Some(backend.path()),
            Backend::Postgres(_) => None,
        }
    }

    /// The SQLite backend, for tests of its internals.
    #[cfg(test)]
    pub(crate) fn sqlite(&self) -> &sqlite::SqliteBackend {
        match &*self.backend {
            Backend::Sqlite(backend) => backend,
            Backend::Postgres(_) => panic!("not a SQLite storage"),
        }
    }

    /// Stops accepting work, commits everything already queued, answers its callers,
    /// and waits for the writer thread to finish.
    ///
    /// Affects every clone of this handle: afterwards their calls fail with
    /// [`StorageError::Closed`]. Calling it again (from another clone) is harmless.
    pub async fn close(self) -> Result<(), StorageError> {
        dispatch!(self, close())
    }

    /// Stores a plugin, unless one with the same digest is already stored.
    ///
    /// The digest must be the SHA-256 of `wasm`; storage trusts the caller on this (the
    /// plugin runtime hashes uploads once) instead of hashing megabytes again.
    pub async fn put_plugin(&self, plugin: PluginRecord) -> Result<PutPluginOutcome, StorageError> {
        dispatch!(self, put_plugin(plugin))
    }

    /// Lists every stored plugin, without its wasm bytes, ordered by name then age.
    pub async fn list_plugins(&self) -> Result<Vec<PluginInfo>, StorageError> {
        dispatch!(self, list_plugins())
    }

    /// Returns the metadata of the plugin with this digest, if stored.
    pub async fn get_plugin(&self, digest: [u8; 32]) -> Result<Option<PluginInfo>, StorageError> {
        dispatch!(self, get_plugin(digest))
    }

    /// Returns the wasm bytes of the plugin with this digest, if stored.
    pub async fn plugin_wasm(&self, digest: [u8; 32]) -> Result<Option<Vec<u8>>, StorageError> {
        dispatch!(self, plugin_wasm(digest))
    }

    /// Creates an endpoint, or reports the one that already has this name.
    ///
    /// An existing endpoint counts as identical when its plugin digest, config hash,
    /// `min_batch` and `max_reports_per_user` are equal to the requested ones (creating endpoints on every server
    /// is then safely retryable); anything else is a conflict. Fails with
    /// [`StorageError::UnknownPlugin`] if the plugin is not stored.
    pub async fn create_endpoint(
        &self,
        endpoint: EndpointRecord,
    ) -> Result<CreateEndpointOutcome, StorageError> {
        dispatch!(self, create_endpoint(endpoint))
    }

    /// Returns the endpoint with this name, if any.
    pub async fn get_endpoint(&self, name: &str) -> Result<Option<Endpoint>, StorageError> {
        dispatch!(self, get_endpoint(name.to_owned()))
    }

    /// Lists every endpoint, ordered by name.
    pub async fn list_endpoints(&self) -> Result<Vec<Endpoint>, StorageError> {
        dispatch!(self, list_endpoints())
    }

    /// At most `limit` endpoints whose names come after `after` (from the first
    /// when `None`), ordered by name: a page of a listing.
    pub async fn endpoints_after(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Endpoint>, StorageError> {
        dispatch!(self, endpoints_after(after, limit))
    }

    /// How many endpoints there are.
    pub async fn endpoint_count(&self) -> Result<u64, StorageError> {
        dispatch!(self, endpoint_count())
    }

    /// Deletes the endpoint with this name and all its reports; returns whether it
    /// existed.
    ///
    /// Its id is never reused, so a report insert still holding the old id fails with
    /// [`StorageError::UnknownEndpoint`] instead of landing in a re-created endpoint
    /// whose configuration may differ.
    pub async fn delete_endpoint(&self, name: &str) -> Result<bool, StorageError> {
        dispatch!(self, delete_endpoint(name.to_owned()))
    }

    /// Counts the reports of the endpoint with this name (`None` if there is none).
    pub async fn endpoint_counts(
        &self,
        name: &str,
    ) -> Result<Option<EndpointCounts>, StorageError> {
        dispatch!(self, endpoint_counts(name.to_owned()))
    }

    /// Stores one report durably; returns only once it is committed.
    ///
    /// Concurrent calls are committed together in one transaction (group commit). If
    /// the caller stops waiting (its future is dropped) after the report was queued,
    /// the report is still stored; a retry then answers [`InsertReportOutcome::Duplicate`].
    /// Fails with [`StorageError::UnknownEndpoint`] if the endpoint was deleted.
    pub async fn insert_report(
        &self,
        endpoint: EndpointId,
        report_id: [u8; 16],
        share: Vec<u8>,
        received_at: SystemTime,
    ) -> Result<InsertReportOutcome, StorageError> {
        let report = NewReport {
            report_id,
            share,
            quota: None,
            poster: None,
        };
        dispatch!(self, insert(endpoint, received_at, report))
    }

    /// [`Storage::insert_report`] for an endpoint with a per-user quota: the report
    /// is stored only if `quota.user` holds fewer than `quota.max` unbatched
    /// reports of the endpoint, else [`InsertReportOutcome::UserQuotaExceeded`].
    /// A report id already stored is answered as by `insert_report` whatever the
    /// count, so a retry is still acknowledged.
    ///
    /// The count and the insert happen in the writer's transaction, one report
    /// after the other, so concurrent posts of one user never exceed the quota.
    /// The user's key is stored with the report until the report is batched or
    /// expires.
    pub async fn insert_report_for_user(
        &self,
        endpoint: EndpointId,
        report_id: [u8; 16],
        share: Vec<u8>,
        received_at: SystemTime,
        quota: UserQuota,
    ) -> Result<InsertReportOutcome, StorageError> {
        let report = NewReport {
            report_id,
            share,
            quota: Some(quota),
            poster: None,
        };
        dispatch!(self, insert(endpoint, received_at, report))
    }

    /// [`Storage::insert_report`] recording who posted the report (kept until it is
    /// batched or expires), for [`Storage::distinct_posters`].
    pub async fn insert_report_from(
        &self,
        endpoint: EndpointId,
        report_id: [u8; 16],
        share: Vec<u8>,
        received_at: SystemTime,
        poster: UserKey,
    ) -> Result<InsertReportOutcome, StorageError> {
        let report = NewReport {
            report_id,
            share,
            quota: None,
            poster: Some(poster),
        };
        dispatch!(self, insert(endpoint, received_at, report))
    }

    /// Stores many reports of one endpoint durably, as [`Storage::insert_report`]
    /// (with its `quota` and `poster` variants) stores each, and answers one outcome
    /// per report, in order, once every one of them is committed.
    ///
    /// The reports are queued for the writer one after the other without waiting in
    /// between, so they commit together in one or a few groups rather than one
    /// group per report; the same report id twice in `reports` is stored once and
    /// answered as a duplicate (or conflict) the second time.
    pub async fn insert_reports(
        &self,
        endpoint: EndpointId,
        received_at: SystemTime,
        reports: Vec<NewReport>,
    ) -> Vec<Result<InsertReportOutcome, StorageError>> {
        dispatch!(self, insert_reports(endpoint, received_at, reports))
    }

    /// How many distinct users posted the unbatched reports at `rows` of an
    /// endpoint (see [`Storage::insert_report_from`]; the quota's user counts too),
    /// counting up to `enough` and no further. A report without a known poster
    /// counts as a user of its own. Fails with [`StorageError::ReportUnavailable`]
    /// if a row is not the endpoint's.
    pub async fn distinct_posters(
        &self,
        endpoint: EndpointId,
        mut rows: Vec<i64>,
        enough: u64,
    ) -> Result<u64, StorageError> {
        rows.sort_unstable();
        dispatch!(self, distinct_posters(endpoint, rows, enough))
    }

    /// Why this server cannot write now, if it cannot: a failed sync (until a
    /// restart) or a failed group commit such as a full disk (until a group
    /// commits again).
    pub fn write_failure(&self) -> Option<String> {
        match &*self.backend {
            Backend::Sqlite(backend) => backend.write_failure(),
            Backend::Postgres(backend) => backend.write_failure(),
        }
    }

    /// The key under which this server stores a user's reports for quotas: a hash
    /// of `sub` keyed by a random secret of this database, so the stored value
    /// tells nothing about the user without that secret, and differs between
    /// servers.
    pub fn user_key(&self, sub: &str) -> UserKey {
        // The first 16 bytes of SHA-256(domain, secret, sub).
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        hasher.update(b"guardian:user-key:v1\0");
        hasher.update(self.secret);
        hasher.update(sub.as_bytes());
        let digest = hasher.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        UserKey(key)
    }

    /// The oldest unbatched reports of an endpoint stored after row `after_row`
    /// (0: from the first), in arrival order, at most `limit`: what a seal proposes,
    /// a page at a time (coordinator), or what a proposal is matched against
    /// (follower).
    pub async fn unbatched_reports(
        &self,
        endpoint: EndpointId,
        after_row: i64,
        limit: usize,
    ) -> Result<Vec<SealReport>, StorageError> {
        dispatch!(self, unbatched_reports(endpoint, after_row, limit))
    }

    /// Records the seal in progress of `seal.endpoint`, replacing an undecided one
    /// (a follower's reservation for an older proposal).
    ///
    /// Fails with [`StorageError::SealPending`] if a decided seal with another batch id
    /// is pending: it must be completed first. Storing the same seal again is a no-op.
    pub async fn put_seal(&self, seal: &Seal) -> Result<(), StorageError> {
        dispatch!(self, put_seal(seal))
    }

    /// The seal in progress of an endpoint, if any.
    pub async fn pending_seal(&self, endpoint: EndpointId) -> Result<Option<Seal>, StorageError> {
        dispatch!(self, pending_seal(endpoint))
    }

    /// Every decided seal not yet committed here, to be driven to completion.
    pub async fn decided_seals(&self) -> Result<Vec<Seal>, StorageError> {
        dispatch!(self, decided_seals())
    }

    /// Forgets the seal in progress of an endpoint if it has this batch id; returns
    /// whether there was one.
    pub async fn drop_seal(
        &self,
        endpoint: EndpointId,
        batch_id: [u8; 16],
    ) -> Result<bool, StorageError> {
        dispatch!(self, drop_seal(endpoint, batch_id))
    }

    /// The shares of the reports stored at `rows` (ascending, see
    /// [`SealReport::row`]) of an endpoint, concatenated, and where each ends: the
    /// layout the plugins' `accumulate` takes. Reads every stored row between the
    /// first and the last, so give it a sorted chunk. Fails with
    /// [`StorageError::ReportUnavailable`] if one is not the endpoint's or has no
    /// share any more.
    pub async fn read_shares(
        &self,
        endpoint: EndpointId,
        rows: Vec<i64>,
    ) -> Result<(Vec<u8>, Vec<u32>), StorageError> {
        dispatch!(self, read_shares(endpoint, rows))
    }

    /// The report ids of an endpoint's reports at `rows` (ascending), batched or
    /// not, in that order: what a decision is made of, sent by id to a follower
    /// that lost its reservation of it. Fails with
    /// [`StorageError::ReportUnavailable`] if a row is not the endpoint's.
    pub async fn report_ids(
        &self,
        endpoint: EndpointId,
        rows: Vec<i64>,
    ) -> Result<Vec<[u8; 16]>, StorageError> {
        dispatch!(self, report_ids(endpoint, rows))
    }

    /// Seals the reports stored at `rows` into a batch with its released share, in
    /// one transaction:
    /// marks them batched, deletes their shares (keeping their ids), stores the
    /// batch and forgets the endpoint's reservation if it has this batch id (a
    /// decision is kept: the coordinator drops it once every server committed).
    ///
    /// Idempotent by batch id: if the batch is already stored, nothing changes and
    /// [`CommitOutcome::AlreadyCommitted`] tells it. Fails with
    /// [`StorageError::ReportUnavailable`] (and changes nothing) if a report is gone or
    /// already batched, so no report is ever in two batches.
    pub async fn commit_batch(
        &self,
        endpoint: EndpointId,
        batch: NewBatch,
        rows: Vec<i64>,
    ) -> Result<CommitOutcome, StorageError> {
        dispatch!(self, commit_batch(endpoint, batch, rows))
    }

    /// Marks the unbatched reports at `rows` of an endpoint as rejected (their proofs
    /// failed; a seal of too few valid reports), deleting their shares; returns how
    /// many were marked. Reports no longer unbatched are left alone.
    pub async fn reject_reports(
        &self,
        endpoint: EndpointId,
        mut rows: Vec<i64>,
    ) -> Result<u64, StorageError> {
        rows.sort_unstable();
        dispatch!(self, reject_reports(endpoint, rows))
    }

    /// The endpoint's verification key, storing `proposed` first if it has none
    /// (`None`: only read it): the key is set once and never changes.
    pub async fn verify_key(
        &self,
        endpoint: EndpointId,
        proposed: Option<[u8; 32]>,
    ) -> Result<Option<[u8; 32]>, StorageError> {
        dispatch!(self, verify_key(endpoint, proposed))
    }

    /// The sealed batches of an endpoint, oldest first, without their shares.
    pub async fn list_batches(&self, endpoint: EndpointId) -> Result<Vec<BatchInfo>, StorageError> {
        dispatch!(self, list_batches(endpoint))
    }

    /// One sealed batch with its released share.
    pub async fn get_batch(
        &self,
        endpoint: EndpointId,
        batch_id: [u8; 16],
    ) -> Result<Option<Batch>, StorageError> {
        dispatch!(self, get_batch(endpoint, batch_id))
    }

    /// Every sealed batch of an endpoint with its released share, oldest first.
    pub async fn all_batches(&self, endpoint: EndpointId) -> Result<Vec<Batch>, StorageError> {
        dispatch!(self, all_batches(endpoint))
    }

    /// Deletes a released batch of an endpoint, its row and its share, as an
    /// admin asks: it leaves the listings and the total. Its id and counts are
    /// kept, so a retried commit of it is answered as committed (see
    /// [`Storage::committed_batch`]), never folded and released again, and its
    /// reports stay batched. Refused while a decided seal of this batch is pending
    /// here (the coordinator's, until every server committed it).
    pub async fn delete_batch(
        &self,
        endpoint: EndpointId,
        batch_id: [u8; 16],
        now: SystemTime,
    ) -> Result<DeleteBatchOutcome, StorageError> {
        dispatch!(self, delete_batch(endpoint, batch_id, now))
    }

    /// A batch committed on this server: stored, or deleted by an admin since
    /// (then without its share). What a commit of a batch checks first, so that
    /// a batch is released at most once here.
    pub async fn committed_batch(
        &self,
        endpoint: EndpointId,
        batch_id: [u8; 16],
    ) -> Result<Option<BatchInfo>, StorageError> {
        dispatch!(self, committed_batch(endpoint, batch_id))
    }

    /// The seed of the noise this server draws releasing batch `batch_id`: a
    /// keyed hash under a secret of this database, so it is unpredictable to
    /// anyone else, and the same if the batch is released again from the same
    /// reports after the database was restored from a backup: the released
    /// share is then the same bytes, not a second draw of its noise.
    pub fn release_seed(&self, endpoint: EndpointId, batch_id: [u8; 16]) -> [u8; 32] {
        // HMAC-SHA256 under the database's secret, with its own label.
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.secret);
        let mut context = aws_lc_rs::hmac::Context::with_key(&key);
        context.update(b"guardian:release-seed:v1\0");
        context.update(&endpoint.0.to_le_bytes());
        context.update(&batch_id);
        let mut seed = [0u8; 32];
        seed.copy_from_slice(context.sign().as_ref());
        seed
    }

    /// Expires the unbatched reports of an endpoint received before `before`:
    /// deletes their shares and keeps their ids, so replays stay refused. Nothing
    /// expires while the endpoint has a seal in progress (its reports may be
    /// reserved or decided); the caller also holds the endpoint's seal lock, so a
    /// proposal being made is never expired under it. Returns how many expired.
    pub async fn expire_reports(
        &self,
        endpoint: EndpointId,
        before: SystemTime,
    ) -> Result<u64, StorageError> {
        dispatch!(self, expire_reports(endpoint, before))
    }

    /// Deletes, in one small transaction, at most `limit` reports of an endpoint
    /// that the report window no longer needs: made before `keep_from` (see
    /// [`crate::report_id::ReportWindow::keep_from`]), or stored before ids
    /// carried their time and received before `received_before`; batched or not,
    /// with their shares and ids. Nothing while the endpoint has a seal in
    /// progress; the caller also holds its seal lock. Released batches stay.
    pub async fn collect_reports(
        &self,
        endpoint: EndpointId,
        keep_from: [u8; 16],
        received_before: SystemTime,
        limit: usize,
    ) -> Result<Collected, StorageError> {
        dispatch!(
            self,
            collect_reports(endpoint, keep_from, received_before, limit)
        )
    }

    /// How many spans of id time the report-id filters cover.
    #[cfg(test)]
    pub(crate) async fn id_filter_spans(&self) -> Result<usize, StorageError> {
        dispatch!(self, id_filter_spans())
    }

    /// Takes lease `name` for `holder` until `ttl` from now (the database's
    /// clock), if it is free, expired or already `holder`'s (then renews it);
    /// returns whether `holder` holds it now. What one replica at a time may do
    /// (seal an endpoint, drive the background work) is guarded by a lease: a
    /// replica that dies loses its leases when they expire.
    pub async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StorageError> {
        dispatch!(self, try_lease(name.to_owned(), holder.to_owned(), ttl))
    }

    /// Gives lease `name` up if `holder` holds it; returns whether it did.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StorageError> {
        dispatch!(self, release_lease(name.to_owned(), holder.to_owned()))
    }

    /// The coordinator's number for a new seal of `endpoint`: the time in
    /// microseconds, or one more than the last number if that is not larger,
    /// stored before it is returned, so numbers only go up across replicas and
    /// restarts. Fails with [`StorageError::UnknownEndpoint`] if it is gone.
    pub async fn next_seal_number(&self, endpoint: EndpointId) -> Result<u64, StorageError> {
        dispatch!(self, next_seal_number(endpoint))
    }

    /// A follower's check of a new proposal's seal `number`: stores it as the
    /// highest seen and answers `None` if it is above every number seen for
    /// `endpoint` so far, else changes nothing and answers `Some` of the highest
    /// seen (the prepare is stale). Check and store are one statement, so of two
    /// replicas handed proposals at once only the newer can pass.
    pub async fn claim_seal_number(
        &self,
        endpoint: EndpointId,
        number: u64,
    ) -> Result<Option<u64>, StorageError> {
        dispatch!(self, claim_seal_number(endpoint, number))
    }

    /// Holds a part of the verifier messages of decided batch `seal` (batch id,
    /// seal number) of a robust endpoint until its commit: `count` messages
    /// encoded in `messages`, starting at message `from` of the batch. A part from
    /// 0 replaces whatever was held for the endpoint; a later part must start
    /// where the parts held for the same batch end. Answers `Ok` of the messages
    /// now held, or `Err` of those held when the part does not follow them
    /// (nothing changed).
    pub async fn hold_messages(
        &self,
        endpoint: EndpointId,
        seal: ([u8; 16], u64),
        from: u64,
        count: u64,
        messages: Vec<u8>,
    ) -> Result<Result<u64, u64>, StorageError> {
        dispatch!(self, hold_messages(endpoint, seal, from, count, messages))
    }

    /// The parts held by [`Storage::hold_messages`] for batch `seal` (batch id,
    /// seal number), in order, with how many messages they hold together.
    pub async fn held_messages(
        &self,
        endpoint: EndpointId,
        seal: ([u8; 16], u64),
    ) -> Result<(u64, Vec<Vec<u8>>), StorageError> {
        dispatch!(self, held_messages(endpoint, seal))
    }

    /// Forgets the verifier messages held for `endpoint` (its batch committed or
    /// aborted).
    pub async fn drop_held_messages(&self, endpoint: EndpointId) -> Result<(), StorageError> {
        dispatch!(self, drop_held_messages(endpoint))
    }

    /// The name of the lease held through a seal of `endpoint`:
    /// `seal:<endpoint id>` (see [`Storage::try_lease`]).
    pub fn seal_lease(endpoint: EndpointId) -> String {
        format!("seal:{}", endpoint.0)
    }
}

/// A user as the quota of [`Storage::insert_report_for_user`] knows them: see
/// [`Storage::user_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserKey(pub(crate) [u8; 16]);

/// One report of [`Storage::insert_reports`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReport {
    /// Client-chosen id, the same on every server.
    pub report_id: [u8; 16],
    /// The encoded share, as the plugin's `validate` returned it.
    pub share: Vec<u8>,
    /// The endpoint's per-user quota with the poster, if the endpoint has one
    /// (as [`Storage::insert_report_for_user`]).
    pub quota: Option<UserQuota>,
    /// Who posted it, when batches count distinct users (as
    /// [`Storage::insert_report_from`]).
    pub poster: Option<UserKey>,
}

/// The per-user quota a report is inserted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserQuota {
    /// Whose report it is.
    pub user: UserKey,
    /// Most unbatched reports the user may hold in the endpoint (at least 1).
    pub max: u64,
}

/// An unbatched report as a seal handles it: its id, and where it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SealReport {
    /// The client's report id, the same on every server.
    pub report_id: [u8; 16],
    /// Where this server stores the report: rows only grow, are never reused, and
    /// name one report of one endpoint for good, so a seal looks each id up once and
    /// then speaks of rows.
    pub row: i64,
}

/// A seal in progress: on a follower, the reports it holds of a proposal (reserved
/// until the coordinator commits or aborts); on the coordinator, the set it decided
/// to commit, kept until every server has committed it.
///
/// Both are kept as positions in the coordinator's proposal, so that the decision
/// travels to followers as a bitmap over what they were proposed, not as ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    /// The endpoint being sealed.
    pub endpoint: EndpointId,
    /// Batch id chosen by the coordinator for this seal.
    pub batch_id: [u8; 16],
    /// The coordinator's number of this seal, increasing per endpoint: a follower
    /// never lets a step of a lower number replace this seal.
    pub seal_number: u64,
    /// Whether the coordinator decided to commit (else a follower's reservation).
    pub decided: bool,
    /// Bit i (least significant first in each byte) is set when proposed report i
    /// is in the seal: held and reserved here, or agreed by every server.
    pub positions: Vec<u8>,
    /// This server's rows of the reports whose bit is set, in proposal order.
    pub rows: Vec<i64>,
    /// When the seal was recorded (kept to the millisecond).
    pub created_at: SystemTime,
    /// A decision of a robust endpoint: what the verification round found.
    pub verification: Option<Verification>,
}

/// What the verification round of a robust endpoint's seal decided, beside the
/// reports it commits.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verification {
    /// Bit i is set when proposed report i failed verification.
    pub rejected_positions: Vec<u8>,
    /// This server's rows of the rejected reports, in proposal order.
    pub rejected_rows: Vec<i64>,
    /// The verifier message of each committed report, in proposal order.
    pub messages: guardian_sdk::raw::Batch,
}

/// A batch to store with [`Storage::commit_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBatch {
    /// The coordinator's batch id.
    pub batch_id: [u8; 16],
    /// This server's released aggregate share of the batch.
    pub share: Vec<u8>,
    /// When it was sealed (kept to the millisecond).
    pub sealed_at: SystemTime,
    /// Rows of the reports the seal rejected (their proofs failed): marked so in
    /// the same transaction, never proposed again.
    pub rejected_rows: Vec<i64>,
}

/// A sealed batch without its share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    /// The coordinator's batch id, the same on every server.
    pub batch_id: [u8; 16],
    /// How many reports it holds.
    pub count: u64,
    /// How many reports the seal that made it rejected (failed verification).
    pub rejected: u64,
    /// When this server sealed it.
    pub sealed_at: SystemTime,
    /// The earliest and latest report time among its reports; `None` for batches
    /// sealed before spans were recorded.
    pub span: Option<(SystemTime, SystemTime)>,
}

/// A sealed batch with this server's released share of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// What the batch is.
    pub info: BatchInfo,
    /// The released aggregate share; it never changes.
    pub share: Vec<u8>,
}

/// Result of [`Storage::commit_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The batch is now stored.
    Committed(BatchInfo),
    /// The batch was stored before (a retried commit); nothing changed.
    AlreadyCommitted(BatchInfo),
}

impl CommitOutcome {
    /// The stored batch, whichever way.
    pub fn info(&self) -> BatchInfo {
        match self {
            CommitOutcome::Committed(info) | CommitOutcome::AlreadyCommitted(info) => *info,
        }
    }
}

/// Settings of [`Storage::open`]; `StorageOptions::default()` suits a server.
#[derive(Clone)]
pub struct StorageOptions {
    /// Number of read-only connections, which is also how many reads run at once.
    /// Reads never wait for the writer (WAL), only for a free connection.
    pub read_connections: usize,
    /// How long a statement waits for a lock held by another connection (another
    /// process on the same file, or a WAL checkpoint) before failing.
    pub busy_timeout: Duration,
    /// Most reports committed in one transaction. Bounds the latency one group adds
    /// to its last member and the memory held by the writer.
    pub max_group: usize,
    /// Called on the writer thread after every group commit of reports, e.g. to feed
    /// Prometheus metrics. It must be quick and must not block: the group's callers
    /// are answered only after it returns.
    pub commit_observer: Option<CommitObserver>,
    /// How many new report ids may wait in the writer's memory before it moves
    /// them, a key range at a time, to the index of stored ids (see
    /// `storage::sqlite::ids`). More waiting means fewer pages written per id.
    pub id_index_batch: usize,
}

/// Callback receiving the [`CommitStats`] of every group commit.
pub type CommitObserver = Arc<dyn Fn(CommitStats) + Send + Sync>;

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            read_connections: 4,
            busy_timeout: Duration::from_secs(5),
            max_group: 16384,
            commit_observer: None,
            id_index_batch: sqlite::ids::FLUSH_AT,
        }
    }
}

impl fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageOptions")
            .field("read_connections", &self.read_connections)
            .field("busy_timeout", &self.busy_timeout)
            .field("max_group", &self.max_group)
            .field("commit_observer", &self.commit_observer.is_some())
            .field("id_index_batch", &self.id_index_batch)
            .finish()
    }
}

/// What one group commit of reports did; given to the [`CommitObserver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Reports in the transaction (the group size), including rows answered with a
    /// per-report error such as an unknown endpoint.
    pub reports: usize,
    /// Time from the start of the transaction to the end of the sync that made it
    /// durable: the latency the group added to each of its reports.
    pub elapsed: Duration,
    /// False when the transaction or its sync failed: then every report of the group
    /// was answered with an error.
    pub committed: bool,
}

/// A plugin to store: its wasm component and what its `info()` said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRecord {
    /// SHA-256 of `wasm`: the plugin's identity, so uploads are idempotent and an
    /// endpoint names exactly the code it runs.
    pub digest: [u8; 32],
    /// Name from the plugin's `info()`, how people and built-in lookups refer to it.
    pub name: String,
    /// Version from the plugin's `info()`, shown to people.
    pub version: String,
    /// Description from the plugin's `info()`, shown to people.
    pub description: String,
    /// JSON schema of the endpoint parameters, from the plugin's `info()`.
    pub params_schema: String,
    /// The component itself, so the server can recompile it after a restart.
    pub wasm: Vec<u8>,
    /// Whether the server registered it at start-up rather than someone uploading it.
    pub builtin: bool,
    /// When it was first stored (kept to the millisecond).
    pub created_at: SystemTime,
}

/// A stored plugin's metadata: a [`PluginRecord`] without its wasm bytes, which
/// listings do not need and which can be megabytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// SHA-256 of the wasm bytes; see [`PluginRecord::digest`].
    pub digest: [u8; 32],
    /// See [`PluginRecord::name`].
    pub name: String,
    /// See [`PluginRecord::version`].
    pub version: String,
    /// See [`PluginRecord::description`].
    pub description: String,
    /// See [`PluginRecord::params_schema`].
    pub params_schema: String,
    /// See [`PluginRecord::builtin`].
    pub builtin: bool,
    /// See [`PluginRecord::created_at`].
    pub created_at: SystemTime,
    /// Size of the wasm bytes, so a listing can show it without loading them.
    pub wasm_len: u64,
}

/// Result of [`Storage::put_plugin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutPluginOutcome {
    /// The plugin was not stored before and now is.
    Inserted,
    /// A plugin with this digest, hence these exact bytes, was already stored; the
    /// stored metadata was kept.
    AlreadyPresent,
}

/// Internal id of an endpoint, which report rows reference.
///
/// Obtained from [`Endpoint::id`]; ids are never reused after a deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(i64);

/// An endpoint to create: a named binding of a plugin to its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRecord {
    /// Name used in URLs; unique on this server.
    pub name: String,
    /// Digest of the plugin the endpoint runs; that plugin must be stored.
    pub plugin_digest: [u8; 32],
    /// The plugin's name at creation, kept so listings need not join plugins.
    pub plugin_name: String,
    /// Parameters as canonical JSON, as given by the developer, for display.
    pub params: String,
    /// Configuration bytes returned by the plugin's `configure`, passed to every
    /// later plugin call.
    pub config: Vec<u8>,
    /// Hash of `config`, compared across servers (and on re-creation) to make sure
    /// every server runs the same configuration.
    pub config_hash: [u8; 32],
    /// Fewest reports a batch may hold, so no batch reveals a small group of users.
    pub min_batch: u64,
    /// Most unbatched reports one user may hold in the endpoint (see
    /// [`Storage::insert_report_for_user`]); `None`: no limit.
    pub max_reports_per_user: Option<u64>,
    /// When the endpoint was created (kept to the millisecond).
    pub created_at: SystemTime,
    /// When server 0 seals the endpoint by itself; the default: only when asked.
    pub schedule: SealSchedule,
}

/// When server 0 seals an endpoint without being asked (both may be set: the
/// first due wins). Part of the endpoint's definition and of its `config_hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SealSchedule {
    /// Seal every this many seconds (counted from the last seal attempt).
    pub every_secs: Option<u64>,
    /// Seal as soon as this many reports are held by every server.
    pub at: Option<u64>,
}

impl SealSchedule {
    /// Whether the endpoint is sealed only when asked.
    pub fn is_manual(&self) -> bool {
        self.every_secs.is_none() && self.at.is_none()
    }
}

/// A stored endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Internal id, which [`Storage::insert_report`] takes so the hot path does not
    /// look names up in the database.
    pub id: EndpointId,
    /// What was stored.
    pub record: EndpointRecord,
}

/// Result of [`Storage::create_endpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateEndpointOutcome {
    /// The endpoint did not exist and now does.
    Created(Endpoint),
    /// An endpoint with this name, plugin, config hash and `min_batch` already
    /// existed; nothing changed.
    Identical(Endpoint),
    /// An endpoint with this name but a different definition exists; nothing changed.
    Conflict(Endpoint),
}

/// Result of [`Storage::delete_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteBatchOutcome {
    /// The batch was released here and is now deleted.
    Deleted(BatchInfo),
    /// A decided seal of this batch is still pending here: not every server has
    /// committed it yet.
    NotReleased,
    /// No such batch here (never committed, or deleted before).
    Unknown,
}

/// What one [`Storage::collect_reports`] deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Collected {
    /// Reports deleted.
    pub reports: u64,
    /// Whether more may be due: the limit was reached.
    pub more: bool,
}

/// Report counts of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointCounts {
    /// Reports stored and in no batch yet: what the next seal can take.
    pub unbatched: u64,
    /// Reports already in a sealed batch.
    pub batched: u64,
    /// Reports that expired unbatched (held by only some servers past the retention).
    pub expired: u64,
    /// Reports whose validity proof failed (robust endpoints).
    pub rejected: u64,
    /// Sealed batches.
    pub batches: u64,
}

/// Result of [`Storage::insert_report`] when the database answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertReportOutcome {
    /// A new report id for this endpoint: the report is now durably stored.
    Stored,
    /// This report id was already stored with a byte-identical share: the client
    /// retried, and nothing changed.
    Duplicate,
    /// This report id was already stored with a different share, or its share was
    /// already released and deleted so it cannot be compared: nothing changed.
    Conflict,
    /// A new report id, but its user already holds `max` unbatched reports of the
    /// endpoint: nothing changed.
    UserQuotaExceeded {
        /// The endpoint's quota.
        max: u64,
    },
}

/// Why a storage operation failed.
///
/// `Display` never includes SQL or database details, so it may be logged anywhere;
/// the detail of a [`StorageError::Database`] is its `source()`, for logs only. It is
/// never shown to clients, who get a generic message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// [`Storage::close`] was called, or the writer thread stopped.
    #[error("storage is closed")]
    Closed,
    /// The endpoint id given to [`Storage::insert_report`] does not exist (any more).
    #[error("no such endpoint")]
    UnknownEndpoint,
    /// The plugin digest given to [`Storage::create_endpoint`] is not stored.
    #[error("no such plugin")]
    UnknownPlugin,
    /// A value does not fit the database's types (e.g. a `min_batch` above `i64::MAX`).
    #[error("{0} is out of range for storage")]
    OutOfRange(&'static str),
    /// The database was written by a newer build, whose schema this one does not know.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// Version found in the file.
        found: i64,
        /// Latest version this build knows.
        supported: usize,
    },
    /// The database failed; the source holds the detail (for logs only). Shared so
    /// that one failed group commit can answer every caller of the group.
    #[error("database error")]
    Database(#[source] Arc<rusqlite::Error>),
    /// The PostgreSQL database failed or could not be reached; the source holds
    /// the detail (for logs only).
    #[error("database error")]
    Postgres(#[source] Arc<tokio_postgres::Error>),
    /// No connection to the PostgreSQL database could be had in time (the
    /// database is down, unreachable or refusing connections).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// Syncing the write-ahead log to disk failed; the source holds the detail (for
    /// logs only). After one such failure the storage acknowledges no more writes:
    /// the kernel may have dropped the unsynced pages, so a later sync that succeeds
    /// would not prove that earlier writes are on disk.
    #[error("syncing the database log to disk failed")]
    Sync(#[source] Arc<std::io::Error>),
    /// A decided seal of the endpoint is pending and must be completed first.
    #[error("another seal of this endpoint is pending")]
    SealPending,
    /// A report of a seal has no share here any more, or is already in a batch.
    #[error("a report of the seal is not available unbatched on this server")]
    ReportUnavailable,
    /// A blocking storage task panicked or was cancelled.
    #[error("storage task failed")]
    TaskFailed,
}

impl StorageError {
    /// Whether this error means the storage cannot write for now (a full disk, an
    /// I/O failure, a failed sync) rather than a fault of the request: the server
    /// answers 503 and reports itself unready.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StorageError::Sync(_) | StorageError::Unavailable(_) => true,
            StorageError::Postgres(error) => postgres::is_unavailable(error),
            StorageError::Database(error) => matches!(
                error.sqlite_error_code(),
                Some(
                    rusqlite::ErrorCode::DiskFull
                        | rusqlite::ErrorCode::SystemIoFailure
                        | rusqlite::ErrorCode::ReadOnly
                        | rusqlite::ErrorCode::CannotOpen
                )
            ),
            _ => false,
        }
    }
}

impl From<tokio_postgres::Error> for StorageError {
    fn from(error: tokio_postgres::Error) -> Self {
        StorageError::Postgres(Arc::new(error))
    }
}

impl From<rusqlite::Error> for StorageError {
    fn from(error: rusqlite::Error) -> Self {
        StorageError::Database(Arc::new(error))
    }
}
