//! The versioned SQLite schema and the code that brings a database file up to date.
//!
//! The schema version is SQLite's `user_version` header field: version N means the
//! first N entries of [`MIGRATIONS`] have been applied. Each migration runs in its own
//! `BEGIN IMMEDIATE` transaction together with the version bump, so a crash or a
//! failing migration leaves the file at the previous version, never half-migrated, and
//! two processes opening the same file cannot both apply one migration.
//!
//! A released migration is never edited; changes are new entries at the end.

use rusqlite::{Connection, TransactionBehavior};

use crate::storage::StorageError;

/// One step of the schema.
pub(crate) struct Migration {
    /// What the step does, for the log line printed when it is applied.
    pub(crate) description: &'static str,
    /// The statements of the step, run as one batch inside its transaction.
    pub(crate) sql: &'static str,
}

/// Every migration, in order. Times are Unix milliseconds; digests and hashes are raw
/// 32-byte SHA-256 values; report ids raw 16 bytes.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        description: "plugins, endpoints and reports",
        sql: r#"
CREATE TABLE plugins (
    digest        BLOB NOT NULL PRIMARY KEY CHECK (length(digest) = 32),
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    description   TEXT NOT NULL,
    params_schema TEXT NOT NULL,
    builtin       INTEGER NOT NULL CHECK (builtin IN (0, 1)),
    created_at    INTEGER NOT NULL,
    -- Last, so that reading the other columns never loads the component's pages.
    wasm          BLOB NOT NULL
);
CREATE INDEX plugins_by_name ON plugins (name);

CREATE TABLE endpoints (
    -- AUTOINCREMENT: ids are never reused, so a stale id held by an in-flight report
    -- cannot point at a re-created endpoint with another configuration.
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL UNIQUE,
    plugin_digest BLOB NOT NULL REFERENCES plugins (digest),
    plugin_name   TEXT NOT NULL,
    params        TEXT NOT NULL,
    config        BLOB NOT NULL,
    config_hash   BLOB NOT NULL CHECK (length(config_hash) = 32),
    min_batch     INTEGER NOT NULL CHECK (min_batch >= 0),
    created_at    INTEGER NOT NULL
);
CREATE INDEX endpoints_by_plugin ON endpoints (plugin_digest);

CREATE TABLE reports (
    -- Insertion order, useful to the sealing code and for retention.
    id          INTEGER PRIMARY KEY,
    endpoint_id INTEGER NOT NULL REFERENCES endpoints (id),
    report_id   BLOB NOT NULL CHECK (length(report_id) = 16),
    -- NULL once the report's batch is released: the row stays so that a replay of
    -- the id is still detected.
    share       BLOB,
    received_at INTEGER NOT NULL,
    -- NULL until the report is sealed into a batch (a batches table comes with the
    -- sealing feature).
    batch_id    INTEGER,
    UNIQUE (endpoint_id, report_id),
    CHECK (share IS NOT NULL OR batch_id IS NOT NULL)
);
-- What a seal proposes: the unbatched report ids of one endpoint, in arrival order,
-- answered from the index alone, and staying small however many reports have been
-- released. Keyed by arrival (`id`) rather than by the random report id, so inserts
-- append to it instead of dirtying a random page each: measured 1.8x the insert rate.
CREATE INDEX reports_unbatched ON reports (endpoint_id, id, report_id) WHERE batch_id IS NULL;
"#,
    },
    Migration {
        description: "sealed batches and pending seals",
        sql: r#"
-- A sealed batch of one endpoint and this server's released aggregate share of it.
-- `reports.batch_id` holds `batches.id` of a report's batch; the value -1 marks a
-- report that expired unbatched (its share deleted, its id kept against replays).
CREATE TABLE batches (
    id          INTEGER PRIMARY KEY,
    endpoint_id INTEGER NOT NULL REFERENCES endpoints (id),
    -- Chosen by the coordinator; the same on every server.
    batch_id    BLOB NOT NULL CHECK (length(batch_id) = 16),
    count       INTEGER NOT NULL CHECK (count > 0),
    sealed_at   INTEGER NOT NULL,
    -- Released once (noise drawn once) and never changed afterwards.
    share       BLOB NOT NULL,
    UNIQUE (endpoint_id, batch_id)
);

-- The seal in progress of an endpoint, at most one: on a follower the reports it
-- reserved for a proposal, on the coordinator the set it decided to commit.
CREATE TABLE seals (
    endpoint_id INTEGER PRIMARY KEY REFERENCES endpoints (id),
    batch_id    BLOB NOT NULL CHECK (length(batch_id) = 16),
    decided     INTEGER NOT NULL CHECK (decided IN (0, 1)),
    -- Per report, its 16-byte id then its `reports.id` as 8 little-endian bytes.
    reports     BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);
"#,
    },
    Migration {
        description: "seals kept as positions in the proposal",
        sql: r#"
-- A seal in progress of the previous layout cannot be carried over (it lacks the
-- proposal positions the peers now exchange): refuse to upgrade rather than lose it.
CREATE TEMP TABLE upgrade_check (
    pending_seals INTEGER
        CONSTRAINT "a seal is in progress: finish it with the previous version before upgrading"
        CHECK (pending_seals = 0)
);
INSERT INTO upgrade_check SELECT count(*) FROM seals;
DROP TABLE upgrade_check;
DROP TABLE seals;
CREATE TABLE seals (
    endpoint_id INTEGER PRIMARY KEY REFERENCES endpoints (id),
    batch_id    BLOB NOT NULL CHECK (length(batch_id) = 16),
    decided     INTEGER NOT NULL CHECK (decided IN (0, 1)),
    -- Bit i set: report i of the coordinator's proposal is in the seal.
    positions   BLOB NOT NULL,
    -- This server's `reports.id` of each report in the seal, in proposal order, as
    -- 8 little-endian bytes each.
    rows        BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);
"#,
    },
    Migration {
        description: "per-user report quotas",
        sql: r#"
-- Most unbatched reports one user may hold in the endpoint; NULL: no limit.
ALTER TABLE endpoints ADD COLUMN max_reports_per_user INTEGER
    CHECK (max_reports_per_user IS NULL OR max_reports_per_user > 0);

-- Keyed hash (16 bytes) of the poster's token `sub`, only for endpoints with a quota,
-- and only while the report is unbatched: set to NULL with its share when the report
-- is batched or expires.
ALTER TABLE reports ADD COLUMN user_key BLOB
    CHECK (user_key IS NULL OR length(user_key) = 16);

-- Counting a user's unbatched reports of an endpoint is an index lookup, and the
-- index holds only the reports of quota endpoints waiting for a seal.
CREATE INDEX reports_unbatched_by_user ON reports (endpoint_id, user_key)
    WHERE batch_id IS NULL AND user_key IS NOT NULL;

-- Secrets of this database, drawn once by SQLite's CSPRNG. `user_key`: the key of
-- the hash above, so that stored keys cannot be checked against guessed `sub`s
-- without it and differ between servers.
CREATE TABLE server_secrets (
    name  TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL
);
INSERT INTO server_secrets (name, value) VALUES ('user_key', randomblob(32));
"#,
    },
    Migration {
        description: "report ids indexed in sorted runs, not one random page per report",
        sql: r#"
-- The unique (endpoint_id, report_id) index of `reports` dirtied one random page per
-- stored report (report ids are random): about one 4 KB log frame per report, the
-- largest cost of ingest. Ids now go to `report_ids` in key order, a range of keys
-- at a time, after they have waited in the writer's memory (see `sqlite::ids`).
CREATE TABLE reports_new (
    -- AUTOINCREMENT: a row id is never reused (after an endpoint's deletion), so
    -- every row inserted after the watermark below has a larger id.
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id INTEGER NOT NULL REFERENCES endpoints (id),
    report_id   BLOB NOT NULL CHECK (length(report_id) = 16),
    share       BLOB,
    received_at INTEGER NOT NULL,
    batch_id    INTEGER,
    user_key    BLOB CHECK (user_key IS NULL OR length(user_key) = 16),
    CHECK (share IS NOT NULL OR batch_id IS NOT NULL)
);
INSERT INTO reports_new (id, endpoint_id, report_id, share, received_at, batch_id, user_key)
    SELECT id, endpoint_id, report_id, share, received_at, batch_id, user_key FROM reports;
DROP TABLE reports;
ALTER TABLE reports_new RENAME TO reports;
CREATE INDEX reports_unbatched ON reports (endpoint_id, id, report_id) WHERE batch_id IS NULL;
CREATE INDEX reports_unbatched_by_user ON reports (endpoint_id, user_key)
    WHERE batch_id IS NULL AND user_key IS NOT NULL;
-- Counting and deleting an endpoint's reports; appended to, like the table.
CREATE INDEX reports_by_endpoint ON reports (endpoint_id, id);

-- Every stored report's id and row, except those still waiting in the writer's
-- memory: the rows after `report_ids_state.indexed_through` that are not here.
CREATE TABLE report_ids (
    endpoint_id INTEGER NOT NULL,
    report_id   BLOB NOT NULL,
    row         INTEGER NOT NULL,
    PRIMARY KEY (endpoint_id, report_id)
) WITHOUT ROWID;
INSERT INTO report_ids (endpoint_id, report_id, row)
    SELECT endpoint_id, report_id, id FROM reports ORDER BY endpoint_id, report_id;
-- Every report row up to `indexed_through` has its id in `report_ids`.
CREATE TABLE report_ids_state (
    singleton       INTEGER PRIMARY KEY CHECK (singleton = 0),
    indexed_through INTEGER NOT NULL
);
INSERT INTO report_ids_state (singleton, indexed_through)
    SELECT 0, coalesce(max(id), 0) FROM reports;
"#,
    },
    Migration {
        description: "seal numbers, the poster and the share digest of each report",
        sql: r#"
-- The coordinator numbers the seals of an endpoint in increasing order; a follower
-- keeps the number of the seal it reserved for, so that a late step of an older
-- seal never replaces a newer reservation.
ALTER TABLE seals ADD COLUMN seal_number INTEGER NOT NULL DEFAULT 0;
-- Keyed hash (16 bytes, the key of `user_key`) of the poster's token `sub`, while
-- the report is unbatched: a batch must hold reports of `min_batch` distinct users.
-- Not indexed (counted over a seal's rows only), so ingest writes no extra page.
ALTER TABLE reports ADD COLUMN poster BLOB CHECK (poster IS NULL OR length(poster) = 16);
-- The first 16 bytes of the SHA-256 of the share, kept when the share is deleted
-- (batched or expired): an identical retry of a report is acknowledged, a
-- different share refused, even after its batch is released.
ALTER TABLE reports ADD COLUMN share_digest BLOB
    CHECK (share_digest IS NULL OR length(share_digest) = 16);
"#,
    },
    Migration {
        description: "robust endpoints: verification keys, rejected reports",
        sql: r#"
-- The key under which the servers check the validity proofs of a robust endpoint's
-- reports (plugins of contract 0.2.0): drawn by the coordinator at the endpoint's
-- first verification, sent to the followers over the signed peer channel, then
-- never changed. Never shown to clients or scientists.
ALTER TABLE endpoints ADD COLUMN verify_key BLOB
    CHECK (verify_key IS NULL OR length(verify_key) = 32);
-- How many reports of the endpoint failed verification (`reports.batch_id` = -2).
ALTER TABLE endpoints ADD COLUMN rejected INTEGER NOT NULL DEFAULT 0;
-- How many reports failed verification in the seal that made the batch.
ALTER TABLE batches ADD COLUMN rejected INTEGER NOT NULL DEFAULT 0;
-- A decided seal of a robust endpoint: the reports it rejects (bit i: proposed
-- report i, and this server's rows of them as in `rows`) and the verifier message
-- of each report it commits, in proposal order (u32 count, u32 ends, then bytes).
ALTER TABLE seals ADD COLUMN rejected_positions BLOB;
ALTER TABLE seals ADD COLUMN rejected_rows BLOB;
ALTER TABLE seals ADD COLUMN messages BLOB;
"#,
    },
    Migration {
        description: "seal schedules, time span of each batch's reports",
        sql: r#"
-- Server 0 seals the endpoint by itself every `seal_every` seconds, and/or as
-- soon as `seal_at` reports are held by every server (NULL: only when asked).
ALTER TABLE endpoints ADD COLUMN seal_every INTEGER
    CHECK (seal_every IS NULL OR seal_every > 0);
ALTER TABLE endpoints ADD COLUMN seal_at INTEGER
    CHECK (seal_at IS NULL OR seal_at > 0);
-- The earliest and latest report time among the batch's reports; NULL for
-- batches sealed before this step.
ALTER TABLE batches ADD COLUMN first_report_at INTEGER;
ALTER TABLE batches ADD COLUMN last_report_at INTEGER;
"#,
    },
    Migration {
        description: "report window: reports older than it are deleted with their ids",
        sql: r#"
-- Report ids now start with the time the client made them (48-bit Unix
-- milliseconds), and reports older than the window are deleted with their ids
-- (see `report_id` and `sqlite::collect`). Rows stored before this step hold
-- random ids: those rows (up to `legacy_through`, the largest row id ever given)
-- are collected by `received_at` instead.
CREATE TABLE report_window (
    singleton      INTEGER PRIMARY KEY CHECK (singleton = 0),
    legacy_through INTEGER NOT NULL
);
INSERT INTO report_window (singleton, legacy_through)
    SELECT 0, coalesce((SELECT max(seq) FROM sqlite_sequence WHERE name = 'reports'), 0);
-- How many reports of the endpoint have been deleted by the window, so that the
-- counts of expired reports stay right once their rows are gone.
ALTER TABLE endpoints ADD COLUMN collected INTEGER NOT NULL DEFAULT 0;
"#,
    },
    Migration {
        description: "released batches deleted by an admin",
        sql: r#"
-- A released batch an admin deleted (its row and share are gone from `batches`):
-- its id and counts stay, so a retried commit of it is answered as committed
-- (never folded and released again) and its reports stay counted as batched.
-- Deleted with the endpoint.
CREATE TABLE deleted_batches (
    endpoint_id     INTEGER NOT NULL,
    batch_id        BLOB NOT NULL CHECK (length(batch_id) = 16),
    count           INTEGER NOT NULL,
    rejected        INTEGER NOT NULL,
    sealed_at       INTEGER NOT NULL,
    first_report_at INTEGER,
    last_report_at  INTEGER,
    deleted_at      INTEGER NOT NULL,
    PRIMARY KEY (endpoint_id, batch_id)
) WITHOUT ROWID;
"#,
    },
    Migration {
        description: "leases, seal numbers and held verifier messages in the database",
        sql: r#"
-- What one process at a time may do (seal an endpoint, drive the background
-- work), until `expires_at` (Unix ms) unless its holder renews it: the same
-- table as on PostgreSQL, where replicas of one server share it.
CREATE TABLE leases (
    name       TEXT NOT NULL PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
-- The highest seal number used (server 0) or seen in a prepare (a follower):
-- numbers only go up, across restarts too.
ALTER TABLE endpoints ADD COLUMN seal_number INTEGER NOT NULL DEFAULT 0;
-- A follower's verifier messages of a robust endpoint's decided batch, from
-- the coordinator's `messages` until the commit, one row per part received
-- (`first`: the position of its first message; `messages`: a little-endian
-- u32 length then the bytes of each).
CREATE TABLE held_messages (
    endpoint_id INTEGER NOT NULL,
    first       INTEGER NOT NULL,
    batch_id    BLOB NOT NULL CHECK (length(batch_id) = 16),
    seal_number INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    messages    BLOB NOT NULL,
    PRIMARY KEY (endpoint_id, first)
);
"#,
    },
];

/// Applies the migrations of `migrations` that the database does not have yet;
/// returns how many it applied.
///
/// Takes the list as a parameter so tests can check the mechanism with their own
/// steps; the server always passes [`MIGRATIONS`].
pub(crate) fn migrate(
    conn: &mut Connection,
    migrations: &[Migration],
) -> Result<usize, StorageError> {
    let mut applied = 0;
    loop {
        // The version is read inside the write transaction, so a concurrent opener
        // that migrated first is seen and its step is not applied twice.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
        let version = usize::try_from(found).map_err(|_| StorageError::SchemaTooNew {
            found,
            supported: migrations.len(),
        })?;
        let Some(migration) = migrations.get(version) else {
            if version > migrations.len() {
                return Err(StorageError::SchemaTooNew {
                    found,
                    supported: migrations.len(),
                });
            }
            return Ok(applied);
        };
        tx.execute_batch(migration.sql)?;
        tx.pragma_update(None, "user_version", found + 1)?;
        tx.commit()?;
        tracing::info!(
            version = found + 1,
            description = migration.description,
            "applied storage migration"
        );
        applied += 1;
    }
}

/// Returns the schema version of the database.
#[cfg(test)]
pub(crate) fn version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}
