//! The storage tests' databases, on either backend.
//!
//! A test written once as `async fn name(db: TestDb)` runs on both backends with
//! `on_both_backends!(name)` after it: that defines `name::sqlite` and
//! `name::postgres`, each giving the body a fresh, empty database (a SQLite file in
//! a temporary folder; a new database on the cluster of
//! `GUARDIAN_TEST_POSTGRES_URL`, which `cargo xtask test` starts). Without that
//! variable the PostgreSQL half fails, naming the command; it never skips.
//!
//! [`TestDb`] also reads what the facade does not show (the stored rows of an
//! endpoint, a count) with a connection of its own, so that a test checks the
//! database itself the same way on both backends.

use std::collections::HashMap;
use std::path::Path;

use tempfile::TempDir;

use super::{EndpointId, Storage, StorageError, StorageLocation, StorageOptions};

/// PostgreSQL for tests, shared with the integration tests.
#[path = "../../tests/common/pg.rs"]
#[allow(dead_code)]
pub(crate) mod pg;

/// Defines `$test::sqlite` and `$test::postgres`, running the test function
/// `$test(db: TestDb)` on a fresh database of each backend.
///
/// `on_both_backends!(name)` runs it on a current-thread runtime,
/// `on_both_backends!(name, multi_thread)` on two worker threads, and
/// `on_both_backends!(name, sync)` calls a plain `fn name(db: TestDb)`.
macro_rules! on_both_backends {
    ($test:ident) => {
        $crate::storage::test_backends::on_both_backends!($test, #[tokio::test]);
    };
    ($test:ident, multi_thread) => {
        $crate::storage::test_backends::on_both_backends!(
            $test,
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        );
    };
    ($test:ident, sync) => {
        mod $test {
            use $crate::storage::test_backends::{TestBackend, TestDb};

            #[test]
            fn sqlite() {
                super::$test(TestDb::new(TestBackend::Sqlite))
            }

            #[test]
            fn postgres() {
                super::$test(TestDb::new(TestBackend::Postgres))
            }
        }
    };
    ($test:ident, #[$runner:meta]) => {
        mod $test {
            use $crate::storage::test_backends::{TestBackend, TestDb};

            #[$runner]
            async fn sqlite() {
                super::$test(TestDb::new(TestBackend::Sqlite)).await
            }

            #[$runner]
            async fn postgres() {
                super::$test(TestDb::new(TestBackend::Postgres)).await
            }
        }
    };
}
pub(crate) use on_both_backends;

/// The two backends of [`Storage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TestBackend {
    Sqlite,
    Postgres,
}

/// A fresh database of one backend.
///
/// A SQLite file goes with its folder when this is dropped. A PostgreSQL
/// database stays until a later test process finds it stale
/// (`pg::fresh_database`): dropping it at once forces a checkpoint of the whole
/// cluster, which more than doubled the time of the PostgreSQL half of the
/// suite; the cluster of `cargo xtask test` is new every run in any case.
pub(crate) struct TestDb {
    /// Where the database is.
    location: StorageLocation,
    /// The folder holding the SQLite file.
    _dir: Option<TempDir>,
}

impl TestDb {
    /// A new, empty database.
    pub(crate) fn new(backend: TestBackend) -> TestDb {
        match backend {
            TestBackend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("guardian.db");
                TestDb {
                    location: StorageLocation::Sqlite(path),
                    _dir: Some(dir),
                }
            }
            TestBackend::Postgres => TestDb {
                location: StorageLocation::Postgres(pg::fresh_database()),
                _dir: None,
            },
        }
    }

    /// A new, empty SQLite file, for the tests of SQLite's internals.
    pub(crate) fn sqlite() -> TestDb {
        TestDb::new(TestBackend::Sqlite)
    }

    pub(crate) fn backend(&self) -> TestBackend {
        match self.location {
            StorageLocation::Sqlite(_) => TestBackend::Sqlite,
            StorageLocation::Postgres(_) => TestBackend::Postgres,
        }
    }

    /// The SQLite file; panics on PostgreSQL.
    pub(crate) fn path(&self) -> &Path {
        match &self.location {
            StorageLocation::Sqlite(path) => path,
            StorageLocation::Postgres(_) => panic!("not a SQLite database"),
        }
    }

    /// Opens the database with the default options (again, after a close: the
    /// same file or the same PostgreSQL database).
    pub(crate) async fn open(&self) -> Storage {
        self.open_with(StorageOptions::default()).await
    }

    /// Opens the database with `options`.
    pub(crate) async fn open_with(&self, options: StorageOptions) -> Storage {
        self.try_open(options).await.unwrap()
    }

    /// Opens the database with `options`, or the error.
    pub(crate) async fn try_open(&self, options: StorageOptions) -> Result<Storage, StorageError> {
        Storage::connect(&self.location, options).await
    }

    /// The stored reports of an endpoint (`report_id` → `share`), read with a
    /// connection of our own; checks that no report id is stored twice.
    pub(crate) async fn stored_reports(
        &self,
        endpoint: EndpointId,
    ) -> HashMap<[u8; 16], Option<Vec<u8>>> {
        self.report_column(endpoint, "share").await
    }

    /// Column `column` of an endpoint's stored reports, by report id.
    pub(crate) async fn report_column(
        &self,
        endpoint: EndpointId,
        column: &str,
    ) -> HashMap<[u8; 16], Option<Vec<u8>>> {
        let rows: Vec<(Vec<u8>, Option<Vec<u8>>)> = match &self.location {
            StorageLocation::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).unwrap();
                let mut statement = conn
                    .prepare(&format!(
                        "SELECT report_id, {column} FROM reports WHERE endpoint_id = ?1"
                    ))
                    .unwrap();
                statement
                    .query_map([endpoint.0], |row| Ok((row.get(0)?, row.get(1)?)))
                    .unwrap()
                    .collect::<rusqlite::Result<_>>()
                    .unwrap()
            }
            StorageLocation::Postgres(url) => pg_client(url)
                .await
                .query(
                    &format!("SELECT report_id, {column} FROM reports WHERE endpoint_id = $1"),
                    &[&endpoint.0],
                )
                .await
                .unwrap()
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect(),
        };
        let count = rows.len();
        let reports: HashMap<[u8; 16], Option<Vec<u8>>> = rows
            .into_iter()
            .map(|(id, value)| (id.try_into().unwrap(), value))
            .collect();
        assert_eq!(reports.len(), count, "a report id is stored twice");
        reports
    }

    /// The one integer `sql` (the same text on both backends) selects.
    pub(crate) async fn count(&self, sql: &str) -> i64 {
        match &self.location {
            StorageLocation::Sqlite(path) => rusqlite::Connection::open(path)
                .unwrap()
                .query_row(sql, [], |row| row.get(0))
                .unwrap(),
            StorageLocation::Postgres(url) => pg_client(url)
                .await
                .query_one(sql, &[])
                .await
                .unwrap()
                .get(0),
        }
    }

    /// Runs `sql` (the same text on both backends) with a connection of our own.
    pub(crate) async fn execute(&self, sql: &str) -> Result<(), String> {
        match &self.location {
            StorageLocation::Sqlite(path) => rusqlite::Connection::open(path)
                .and_then(|conn| conn.execute_batch(sql))
                .map_err(|e| e.to_string()),
            StorageLocation::Postgres(url) => pg_client(url)
                .await
                .batch_execute(sql)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Makes the schema look written by a newer build: version `version`.
    pub(crate) async fn set_schema_version(&self, version: i64) {
        let sql = match self.backend() {
            TestBackend::Sqlite => format!("PRAGMA user_version = {version}"),
            TestBackend::Postgres => {
                format!("UPDATE schema_version SET version = {version} WHERE singleton = 0")
            }
        };
        self.execute(&sql).await.unwrap();
    }

    /// The number of schema versions this build knows for the backend.
    pub(crate) fn supported_schema(&self) -> usize {
        match self.backend() {
            TestBackend::Sqlite => super::sqlite::migrations::MIGRATIONS.len(),
            TestBackend::Postgres => super::postgres::migrations::MIGRATIONS.len(),
        }
    }

    /// A copy of the whole database as it is now (what restoring a backup gives),
    /// as a database of its own. Every storage on it must be closed.
    pub(crate) async fn copy(&self) -> TestDb {
        match &self.location {
            StorageLocation::Sqlite(path) => {
                let copy = TestDb::sqlite();
                std::fs::copy(path, copy.path()).unwrap();
                copy
            }
            StorageLocation::Postgres(url) => {
                let original = pg::database_name(url);
                let name = format!("{original}_copy");
                let sql = format!("CREATE DATABASE {name} TEMPLATE {original}");
                let admin = pg_client(&admin_url()).await;
                // A closed storage's connections end just after it lets go of them.
                let started = std::time::Instant::now();
                while let Err(error) = admin.batch_execute(&sql).await {
                    let busy = error
                        .as_db_error()
                        .is_some_and(|e| e.message().contains("other users"));
                    if !busy || started.elapsed() > std::time::Duration::from_secs(10) {
                        panic!("copying the database: {error:?}");
                    }
                    tokio::task::yield_now().await;
                }
                TestDb {
                    location: StorageLocation::Postgres(pg::with_database(url, &name)),
                    _dir: None,
                }
            }
        }
    }
}

/// The URL of the tests' cluster's own database.
fn admin_url() -> String {
    std::env::var(pg::URL_VARIABLE).unwrap_or_default()
}

/// A connection of our own to the database at `url`.
async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}
