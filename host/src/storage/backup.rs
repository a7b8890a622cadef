//! Online backups of the embedded database (`guardian admin backup`): a
//! consistent copy of a server's SQLite file, taken while the server serves.
//!
//! The copy is SQLite's online backup, read under one read transaction: in WAL
//! mode a reader never blocks the writer, and the transaction's snapshot makes
//! every page come from the same instant, however long the copy takes and
//! however many reports commit meanwhile. It goes a few megabytes at a time with
//! a short pause between steps, so the disk is shared with the server. While it
//! runs, checkpoints cannot move the log past the snapshot, so the server's
//! `-wal` file grows by what commits meanwhile and shrinks back at the next
//! checkpoint after the copy.
//!
//! The copy goes to a temporary file beside the destination, is checked
//! (`PRAGMA quick_check`), synced, and only then renamed to the destination: the
//! destination is never a half backup.
//!
//! A PostgreSQL database (`storage.url`) is backed up with PostgreSQL's own
//! tools (`pg_dump`, or base backups with WAL archiving for point-in-time
//! recovery), not by this module: [`backup_location`] refuses it with
//! [`BackupError::Postgres`], which says so.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::storage::StorageLocation;

/// How a backup is made; `BackupOptions::default()` suits a serving server.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Pages copied per step (4 MiB with 4 KiB pages).
    pub pages_per_step: i32,
    /// Pause between steps, leaving the disk to the server.
    pub pause: Duration,
    /// Replace an existing destination file.
    pub force: bool,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            pages_per_step: 1024,
            pause: Duration::from_millis(5),
            force: false,
        }
    }
}

/// What a backup copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// The database that was copied.
    pub source: PathBuf,
    /// The backup file.
    pub dest: PathBuf,
    /// Pages copied (the whole database as of the snapshot).
    pub pages: u64,
    /// Bytes per page.
    pub page_size: u64,
    /// Size of the backup file.
    pub bytes: u64,
    /// The database's schema version (its number of applied migrations).
    pub schema_version: i64,
    /// Steps the copy took.
    pub steps: u64,
    /// Time from opening the source to the rename.
    pub elapsed: Duration,
}

impl BackupReport {
    /// One line for people: what was copied, where, how big, how long.
    pub fn render(&self) -> String {
        format!(
            "backed up {} to {}: {} ({} pages of {} bytes, schema version {}) in {:.2} s, {} steps\n",
            self.source.display(),
            self.dest.display(),
            human_bytes(self.bytes),
            self.pages,
            self.page_size,
            self.schema_version,
            self.elapsed.as_secs_f64(),
            self.steps,
        )
    }
}

fn human_bytes(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes as f64 >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// Why a backup failed; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The server's database is PostgreSQL, which this command does not copy.
    #[error(
        "backup_not_for_postgres: this server's database is PostgreSQL ({0}, storage.url): back it up with PostgreSQL's own tools, pg_dump for a consistent copy or base backups with WAL archiving (pg_basebackup) for point-in-time recovery; README, \"Backup and restore\", says how"
    )]
    Postgres(String),
    /// No file at the configured storage path.
    #[error(
        "no_database: there is no database at {0} (storage.path, default {{server.data_dir}}/guardian.sqlite): run the backup on the server's machine with the server's --config and environment"
    )]
    NoDatabase(PathBuf),
    /// The file is not a server database.
    #[error(
        "not_a_guardian_database: {path} is not a share server's database ({why}): check storage.path"
    )]
    NotAGuardianDatabase {
        /// The file.
        path: PathBuf,
        /// What was found.
        why: String,
    },
    /// The destination's folder does not exist.
    #[error("dest_folder_missing: the folder {0} does not exist: create it first")]
    DestFolderMissing(PathBuf),
    /// The destination is a folder.
    #[error(
        "dest_is_folder: {0} is a folder: give the backup file's name, e.g. {0}/guardian-backup.sqlite"
    )]
    DestIsFolder(PathBuf),
    /// The destination exists and `force` is off.
    #[error("dest_exists: {0} already exists: choose another name, or pass --force to replace it")]
    DestExists(PathBuf),
    /// The destination is the database itself.
    #[error("dest_is_source: {0} is the server's database itself: write the backup elsewhere")]
    DestIsSource(PathBuf),
    /// The copy does not pass SQLite's check.
    #[error(
        "backup_check_failed: the copy in {path} failed SQLite's quick_check ({found}); nothing was written to the destination: check the disk and run the backup again"
    )]
    CheckFailed {
        /// The temporary copy (deleted).
        path: PathBuf,
        /// What the check said.
        found: String,
    },
    /// Reading the database or writing the copy failed.
    #[error("backup_failed: {what}: {source}")]
    Database {
        /// What was being done.
        what: String,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A file operation failed.
    #[error("backup_failed: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn db(what: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Database { what, source }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Io { what, source }
}

/// The temporary copy, deleted unless it was renamed to the destination.
struct Partial {
    path: PathBuf,
    kept: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
            let mut journal = self.path.as_os_str().to_owned();
            journal.push("-journal");
            let _ = std::fs::remove_file(PathBuf::from(journal));
        }
    }
}

/// Copies the server's database at `location` to `dest` ([`backup`]): a SQLite
/// file; a PostgreSQL database is refused with [`BackupError::Postgres`].
/// Blocking (run it off any async executor).
pub fn backup_location(
    location: &StorageLocation,
    dest: &Path,
    options: &BackupOptions,
) -> Result<BackupReport, BackupError> {
    match location {
        StorageLocation::Sqlite(source) => backup(source, dest, options),
        StorageLocation::Postgres(_) => Err(BackupError::Postgres(location.to_string())),
    }
}

/// Copies the database at `source` to `dest` while its server may be serving;
/// blocking (run it off any async executor).
pub fn backup(
    source: &Path,
    dest: &Path,
    options: &BackupOptions,
) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    if !source.is_file() {
        return Err(BackupError::NoDatabase(source.to_path_buf()));
    }
    if dest.is_dir() {
        return Err(BackupError::DestIsFolder(dest.to_path_buf()));
    }
    let folder = match dest.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !folder.is_dir() {
        return Err(BackupError::DestFolderMissing(folder));
    }
    let Some(name) = dest.file_name() else {
        return Err(BackupError::DestIsFolder(dest.to_path_buf()));
    };
    if dest.exists() {
        let same = std::fs::canonicalize(dest).ok() == std::fs::canonicalize(source).ok();
        if same {
            return Err(BackupError::DestIsSource(dest.to_path_buf()));
        }
        if !options.force {
            return Err(BackupError::DestExists(dest.to_path_buf()));
        }
    }

    // Read-only: the backup never writes to the server's files (a read-only
    // connection in WAL mode still shares the server's `-shm` index).
    let src = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db(format!("opening {}", source.display())))?;
    src.busy_timeout(Duration::from_secs(5))
        .map_err(db("setting the busy timeout"))?;
    // One snapshot for the whole copy: the read transaction starts with the
    // first read and holds until the end, and steps copy from it.
    src.execute_batch("BEGIN DEFERRED")
        .map_err(db("starting a read transaction"))?;
    let not_ours = |why: String| BackupError::NotAGuardianDatabase {
        path: source.to_path_buf(),
        why,
    };
    let has_reports: bool = src
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'reports')",
            [],
            |row| row.get(0),
        )
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => not_ours("not an SQLite file".into()),
            _ => BackupError::Database {
                what: format!("reading {}", source.display()),
                source: e,
            },
        })?;
    if !has_reports {
        return Err(not_ours("it has no reports table".into()));
    }
    let schema_version: i64 = src
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(db("reading the schema version"))?;

    let mut partial = Partial {
        path: folder.join(format!(
            ".{}.{}.partial",
            name.to_string_lossy(),
            std::process::id()
        )),
        kept: false,
    };
    // A leftover of an interrupted run of this same process id.
    let _ = std::fs::remove_file(&partial.path);
    let mut dst = Connection::open(&partial.path)
        .map_err(db(format!("creating {}", partial.path.display())))?;
    let steps = {
        let copy = Backup::new(&src, &mut dst).map_err(db("starting SQLite's online backup"))?;
        let mut steps = 0u64;
        loop {
            steps += 1;
            match copy
                .step(options.pages_per_step)
                .map_err(db(format!("copying to {}", partial.path.display())))?
            {
                StepResult::Done => break,
                // Busy or locked: the destination or a lock on the source is
                // briefly held; try again after the pause.
                _ => std::thread::sleep(options.pause),
            }
        }
        steps
    };
    src.execute_batch("COMMIT")
        .map_err(db("ending the read transaction"))?;
    drop(src);

    let found: String = dst
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(db(format!("checking {}", partial.path.display())))?;
    if found != "ok" {
        return Err(BackupError::CheckFailed {
            path: partial.path.clone(),
            found,
        });
    }
    let page_size: u64 = dst
        .pragma_query_value(None, "page_size", |row| row.get(0))
        .map_err(db("reading the page size"))?;
    let pages: u64 = dst
        .pragma_query_value(None, "page_count", |row| row.get(0))
        .map_err(db("reading the page count"))?;
    dst.close()
        .map_err(|(_, e)| e)
        .map_err(db(format!("closing {}", partial.path.display())))?;

    File::open(&partial.path)
        .and_then(|file| file.sync_all())
        .map_err(io(format!("syncing {}", partial.path.display())))?;
    let bytes = std::fs::metadata(&partial.path)
        .map_err(io(format!(
            "reading the size of {}",
            partial.path.display()
        )))?
        .len();
    if !options.force && dest.exists() {
        return Err(BackupError::DestExists(dest.to_path_buf()));
    }
    std::fs::rename(&partial.path, dest).map_err(io(format!(
        "renaming {} to {}",
        partial.path.display(),
        dest.display()
    )))?;
    partial.kept = true;
    // The rename itself survives a power loss once the folder is synced.
    File::open(&folder)
        .and_then(|dir| dir.sync_all())
        .map_err(io(format!("syncing the folder {}", folder.display())))?;
    Ok(BackupReport {
        source: source.to_path_buf(),
        dest: dest.to_path_buf(),
        pages,
        page_size,
        bytes,
        schema_version,
        steps,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Storage, StorageOptions};

    fn options() -> BackupOptions {
        BackupOptions {
            pages_per_step: 1,
            pause: Duration::ZERO,
            force: false,
        }
    }

    #[tokio::test]
    async fn copies_an_open_database_and_refuses_what_it_should() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("guardian.sqlite");
        let storage = Storage::open(&source, StorageOptions::default())
            .await
            .unwrap();
        let dest = dir.path().join("copy.sqlite");
        let (from, to) = (source.clone(), dest.clone());
        let report = tokio::task::spawn_blocking(move || backup(&from, &to, &options()))
            .await
            .unwrap()
            .unwrap();
        assert!(
            report.pages > 1 && report.steps >= report.pages,
            "{report:?}"
        );
        assert_eq!(report.bytes, report.pages * report.page_size);
        assert!(report.schema_version > 0);
        // The copy opens as a server database, at the same schema version.
        let copy = Connection::open(&dest).unwrap();
        let version: i64 = copy
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, report.schema_version);
        drop(copy);
        // No temporary file is left beside it.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains("partial"))
            .collect();
        assert!(names.is_empty(), "{names:?}");

        let refused = |source: &Path, dest: &Path, force: bool| {
            let options = BackupOptions { force, ..options() };
            backup(source, dest, &options).unwrap_err().to_string()
        };
        assert!(refused(&source, &dest, false).starts_with("dest_exists:"));
        assert!(
            backup(
                &source,
                &dest,
                &BackupOptions {
                    force: true,
                    ..options()
                }
            )
            .is_ok()
        );
        assert!(refused(&source, &source, true).starts_with("dest_is_source:"));
        assert!(refused(&source, dir.path(), false).starts_with("dest_is_folder:"));
        let nowhere = dir.path().join("missing").join("copy.sqlite");
        assert!(refused(&source, &nowhere, false).starts_with("dest_folder_missing:"));
        let absent = dir.path().join("absent.sqlite");
        assert!(refused(&absent, &nowhere, false).starts_with("no_database:"));
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, vec![b'x'; 8192]).unwrap();
        let other = dir.path().join("other.sqlite");
        assert!(refused(&text, &other, false).starts_with("not_a_guardian_database:"));
        assert!(!other.exists());

        // With the server's storage closed too (no log, no shared index).
        storage.close().await.unwrap();
        let after = dir.path().join("after.sqlite");
        assert!(backup(&source, &after, &options()).is_ok());
    }

    #[test]
    fn a_postgres_database_is_refused_naming_its_tools_without_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("copy.sqlite");
        let location =
            StorageLocation::from_url("postgres://guardian:hunter2@db.example/shares").unwrap();
        let error = backup_location(&location, &dest, &options())
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("backup_not_for_postgres:"), "{error}");
        for part in [
            "postgres://guardian:***@db.example/shares",
            "pg_dump",
            "point-in-time recovery",
        ] {
            assert!(error.contains(part), "{part:?} not in {error}");
        }
        assert!(!error.contains("hunter2"), "{error}");
        assert!(!dest.exists());
        // A SQLite location goes to the copy (here: nothing there).
        let absent = StorageLocation::Sqlite(dir.path().join("absent.sqlite"));
        let error = backup_location(&absent, &dest, &options()).unwrap_err();
        assert!(error.to_string().starts_with("no_database:"), "{error}");
    }

    #[test]
    fn a_copy_in_small_steps_finishes_under_writes_and_is_one_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("busy.sqlite");
        let writer = Connection::open(&source).unwrap();
        writer
            .pragma_update_and_check(None, "journal_mode", "wal", |_| Ok(()))
            .unwrap();
        writer
            .execute_batch(
                "CREATE TABLE reports (id INTEGER PRIMARY KEY, share BLOB NOT NULL);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
                 INSERT INTO reports (share) SELECT randomblob(200) FROM n;",
            )
            .unwrap();
        // A writer committing all along, as the server does.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writing = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut commits = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    writer
                        .execute("INSERT INTO reports (share) VALUES (randomblob(200))", [])
                        .unwrap();
                    commits += 1;
                }
                commits
            })
        };
        let dest = dir.path().join("copy.sqlite");
        let slow = BackupOptions {
            pages_per_step: 1,
            pause: Duration::from_millis(1),
            force: false,
        };
        let report = backup(&source, &dest, &slow).unwrap();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let commits = writing.join().unwrap();
        // Each page its own step, while commits went on: a backup that restarted
        // at each change of the source would never have finished.
        assert!(
            report.steps >= report.pages && report.pages > 100,
            "{report:?}"
        );
        assert!(commits > 10, "only {commits} commits during the copy");
        let copy = Connection::open(&dest).unwrap();
        let (rows, last): (i64, i64) = copy
            .query_row("SELECT count(*), max(id) FROM reports", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .unwrap();
        // One instant: rows 1..=last, none missing in between.
        assert_eq!(rows, last);
        assert!(rows >= 2000);
        let check: String = copy
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
}
