//! The versioned PostgreSQL schema and the code that brings a database up to date.
//!
//! The version is the one row of `schema_version`: version N means the first N
//! entries of [`MIGRATIONS`] have been applied. Each migration runs in one
//! transaction together with the version bump, after locking that row
//! (`SELECT … FOR UPDATE`), so replicas starting together apply each migration once
//! and a failing migration leaves the previous version. Only plain tables, row
//! locks and `ON CONFLICT` are used (no advisory locks, no `LOCK TABLE`), so the
//! schema also runs on PostgreSQL-compatible distributed engines.
//!
//! Unlike SQLite's history, this schema starts at the layout SQLite reached: a
//! released migration is never edited; changes are new entries at the end.

use deadpool_postgres::Client;

use crate::storage::StorageError;

/// One step of the schema.
pub(crate) struct Migration {
    pub(crate) description: &'static str,
    pub(crate) sql: &'static str,
}

/// Every migration, oldest first.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        description: "plugins, endpoints, reports, batches, seals, leases",
        sql: r#"
CREATE TABLE plugins (
    digest        bytea PRIMARY KEY CHECK (length(digest) = 32),
    name          text NOT NULL,
    version       text NOT NULL,
    description   text NOT NULL,
    params_schema text NOT NULL,
    builtin       boolean NOT NULL,
    created_at    bigint NOT NULL,
    wasm          bytea NOT NULL
);
CREATE INDEX plugins_by_name ON plugins (name);

CREATE TABLE endpoints (
    -- Never reused, so a stale id held by an in-flight report cannot point at a
    -- re-created endpoint with another configuration.
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                 text NOT NULL UNIQUE,
    plugin_digest        bytea NOT NULL REFERENCES plugins (digest),
    plugin_name          text NOT NULL,
    params               text NOT NULL,
    config               bytea NOT NULL,
    config_hash          bytea NOT NULL CHECK (length(config_hash) = 32),
    min_batch            bigint NOT NULL CHECK (min_batch >= 0),
    created_at           bigint NOT NULL,
    max_reports_per_user bigint CHECK (max_reports_per_user IS NULL OR max_reports_per_user > 0),
    seal_every           bigint CHECK (seal_every IS NULL OR seal_every > 0),
    seal_at              bigint CHECK (seal_at IS NULL OR seal_at > 0),
    verify_key           bytea CHECK (verify_key IS NULL OR length(verify_key) = 32),
    -- Reports that failed verification (`reports.batch_id` = -2).
    rejected             bigint NOT NULL DEFAULT 0,
    -- Reports deleted by the report window.
    collected            bigint NOT NULL DEFAULT 0,
    -- The highest seal number used (server 0) or seen in a prepare (a follower),
    -- shared by the replicas: numbers only go up.
    seal_number          bigint NOT NULL DEFAULT 0
);

CREATE TABLE reports (
    -- Arrival order; never reused. Concurrent replicas commit out of order, so a
    -- row may become visible after a larger one: a seal that misses it takes it
    -- next time.
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id  bigint NOT NULL REFERENCES endpoints (id),
    report_id    bytea NOT NULL CHECK (length(report_id) = 16),
    -- NULL once batched, expired or rejected; the row stays against replays.
    share        bytea,
    received_at  bigint NOT NULL,
    -- NULL while unbatched; `batches.id`, -1 expired, -2 rejected.
    batch_id     bigint,
    user_key     bytea CHECK (user_key IS NULL OR length(user_key) = 16),
    poster       bytea CHECK (poster IS NULL OR length(poster) = 16),
    share_digest bytea CHECK (share_digest IS NULL OR length(share_digest) = 16),
    CHECK (share IS NOT NULL OR batch_id IS NOT NULL),
    -- Replay protection, enforced by the database for every replica.
    UNIQUE (endpoint_id, report_id)
);
CREATE INDEX reports_unbatched ON reports (endpoint_id, id) WHERE batch_id IS NULL;
CREATE INDEX reports_unbatched_by_user ON reports (endpoint_id, user_key)
    WHERE batch_id IS NULL AND user_key IS NOT NULL;

CREATE TABLE batches (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id     bigint NOT NULL REFERENCES endpoints (id),
    batch_id        bytea NOT NULL CHECK (length(batch_id) = 16),
    count           bigint NOT NULL CHECK (count > 0),
    sealed_at       bigint NOT NULL,
    share           bytea NOT NULL,
    rejected        bigint NOT NULL DEFAULT 0,
    first_report_at bigint,
    last_report_at  bigint,
    UNIQUE (endpoint_id, batch_id)
);

CREATE TABLE deleted_batches (
    endpoint_id     bigint NOT NULL,
    batch_id        bytea NOT NULL CHECK (length(batch_id) = 16),
    count           bigint NOT NULL,
    rejected        bigint NOT NULL,
    sealed_at       bigint NOT NULL,
    first_report_at bigint,
    last_report_at  bigint,
    deleted_at      bigint NOT NULL,
    PRIMARY KEY (endpoint_id, batch_id)
);

-- The seal in progress of an endpoint, at most one (see SQLite's `seals`).
CREATE TABLE seals (
    endpoint_id        bigint PRIMARY KEY REFERENCES endpoints (id),
    batch_id           bytea NOT NULL CHECK (length(batch_id) = 16),
    decided            boolean NOT NULL,
    positions          bytea NOT NULL,
    rows               bytea NOT NULL,
    created_at         bigint NOT NULL,
    seal_number        bigint NOT NULL DEFAULT 0,
    rejected_positions bytea,
    rejected_rows      bytea,
    messages           bytea
);

-- Secrets of this database, drawn once by the first replica to migrate it.
CREATE TABLE server_secrets (
    name  text PRIMARY KEY,
    value bytea NOT NULL
);

-- Leases: what one replica at a time may do (seal an endpoint, drive the
-- background work), until `expires_at` (the database's clock, Unix ms) unless
-- renewed. A replica that dies loses its leases when they expire.
CREATE TABLE leases (
    name       text PRIMARY KEY,
    holder     text NOT NULL,
    expires_at bigint NOT NULL
);
"#,
    },
    Migration {
        description: "verifier messages held for a commit, shared by the replicas",
        sql: r#"
-- A follower's verifier messages of a robust endpoint's decided batch, from the
-- coordinator's `messages` until the commit, which may reach another replica
-- (see SQLite's `held_messages`).
CREATE TABLE held_messages (
    endpoint_id bigint NOT NULL,
    first       bigint NOT NULL,
    batch_id    bytea NOT NULL CHECK (length(batch_id) = 16),
    seal_number bigint NOT NULL,
    count       bigint NOT NULL,
    messages    bytea NOT NULL,
    PRIMARY KEY (endpoint_id, first)
);
"#,
    },
];

/// The row holding the schema version, created if missing.
const CREATE_VERSION: &str = "CREATE TABLE IF NOT EXISTS schema_version ( \
     singleton integer PRIMARY KEY CHECK (singleton = 0), version integer NOT NULL); \
     INSERT INTO schema_version (singleton, version) VALUES (0, 0) ON CONFLICT DO NOTHING";

/// Applies the migrations `client`'s database lacks, each in its own transaction.
pub(crate) async fn migrate(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<(), StorageError> {
    // Two replicas creating the table at once: one fails on the catalog's unique
    // index and finds the table the second time.
    if client.batch_execute(CREATE_VERSION).await.is_err() {
        client.batch_execute(CREATE_VERSION).await?;
    }
    loop {
        let tx = client.transaction().await?;
        let version: i32 = tx
            .query_one(
                "SELECT version FROM schema_version WHERE singleton = 0 FOR UPDATE",
                &[],
            )
            .await?
            .get(0);
        let version = usize::try_from(version).unwrap_or(usize::MAX);
        if version > migrations.len() {
            return Err(StorageError::SchemaTooNew {
                found: version as i64,
                supported: migrations.len(),
            });
        }
        let Some(migration) = migrations.get(version) else {
            return Ok(());
        };
        tracing::info!(
            version = version + 1,
            description = migration.description,
            "migrating the PostgreSQL schema"
        );
        tx.batch_execute(migration.sql).await?;
        tx.execute(
            "UPDATE schema_version SET version = $1 WHERE singleton = 0",
            &[&i32::try_from(version + 1).unwrap_or(i32::MAX)],
        )
        .await?;
        tx.commit().await?;
    }
}
