//! PostgreSQL for the tests: a fresh database on the cluster that `cargo xtask
//! test` starts (named by `GUARDIAN_TEST_POSTGRES_URL`), and clusters of a test's
//! own, for tests that take the database down and bring it back.
//!
//! A missing cluster or missing PostgreSQL programs make the test fail, naming the
//! command that prepares them: the tests never skip.
//!
//! The storage module's unit tests include this file too (`storage::test_backends`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// The environment variable naming the tests' cluster:
/// `postgres://postgres@127.0.0.1:PORT/postgres`.
pub const URL_VARIABLE: &str = "GUARDIAN_TEST_POSTGRES_URL";

/// Creates a database of its own on the tests' cluster and returns its URL.
///
/// Panics, naming `cargo xtask test`, when `GUARDIAN_TEST_POSTGRES_URL` is not set
/// or the cluster does not answer.
pub fn fresh_database() -> String {
    let Ok(url) = std::env::var(URL_VARIABLE) else {
        panic!(
            "{URL_VARIABLE} is not set: this test needs the PostgreSQL cluster that \
             `cargo xtask test` starts (`cargo xtask prepare` starts it alone and prints \
             the variable to set)"
        );
    };
    drop_stale_databases(&url);
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Unique across the test binaries that run at once and across runs; the
    // process id also tells when the database is no longer in use.
    let name = format!(
        "guardian_test_{}_{}_{:08x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    );
    execute(&url, &format!("CREATE DATABASE {name}")).unwrap_or_else(|error| {
        panic!(
            "cannot create a database on the PostgreSQL cluster of {URL_VARIABLE} ({url}): \
             {error}; `cargo xtask test` starts that cluster"
        )
    });
    with_database(&url, &name)
}

/// Drops, once per process, the databases of finished test processes: those
/// named `guardian_test_<pid>_…` whose process no longer runs (the cluster is on
/// this machine, so a pid is a process here). Tests leave their databases
/// behind because dropping one checkpoints the whole cluster, which would slow
/// every test; the cluster of `cargo xtask test` is new each run and has none,
/// but a long-lived one would otherwise fill its disk.
fn drop_stale_databases(url: &str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // In the background: the tests need not wait for it, and what a short
        // test process leaves undone the next one does.
        let url = url.to_owned();
        std::thread::spawn(move || {
            for name in database_names(&url).unwrap_or_default() {
                let pid = name
                    .strip_prefix("guardian_test_")
                    .and_then(|rest| rest.split('_').next())
                    .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
                if let Some(pid) = pid
                    && !Path::new("/proc").join(pid).exists()
                {
                    let _ = drop_database(&url, &name);
                }
            }
        });
    });
}

/// The names of the databases of the cluster at `url`.
fn database_names(url: &str) -> Result<Vec<String>, String> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("connecting: {e}"))?;
            let connection = tokio::spawn(connection);
            let names = client
                .query("SELECT datname FROM pg_database", &[])
                .await
                .map_err(|e| e.to_string())
                .map(|rows| rows.iter().map(|row| row.get(0)).collect());
            drop(client);
            let _ = connection.await;
            names
        })
    })
    .join()
    .unwrap_or_else(|_| Err("the SQL thread panicked".to_owned()))
}

/// Drops database `name` of the cluster at `url`, ending its connections; for
/// tests that clean up after themselves (the cluster of `cargo xtask test` goes
/// away at the end of the run in any case).
pub fn drop_database(url: &str, name: &str) -> Result<(), String> {
    execute(url, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
}

/// `url` naming database `name` instead of its own (query parameters kept).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_starts = base.find("://").map_or(0, |at| at + 3);
    let path_starts = base[authority_starts..]
        .find('/')
        .map_or(base.len(), |at| authority_starts + at);
    let mut renamed = format!("{}/{name}", &base[..path_starts]);
    if let Some(query) = query {
        renamed.push('?');
        renamed.push_str(query);
    }
    renamed
}

/// The database an URL names (`postgres` when it names none).
pub fn database_name(url: &str) -> String {
    let base = url.split_once('?').map_or(url, |(base, _)| base);
    let authority_starts = base.find("://").map_or(0, |at| at + 3);
    match base[authority_starts..].split_once('/') {
        Some((_, name)) if !name.is_empty() => name.to_owned(),
        _ => "postgres".to_owned(),
    }
}

/// Runs `sql` on the database at `url` with a connection of its own.
///
/// It runs on a thread with its own runtime, so that it works from synchronous
/// code and from inside any async test alike.
pub fn execute(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("connecting: {e}"))?;
            let connection = tokio::spawn(connection);
            let outcome = client
                .batch_execute(&sql)
                .await
                .map_err(|e| match e.as_db_error() {
                    Some(db) => format!("{sql}: {}", db.message()),
                    None => format!("{sql}: {e}"),
                });
            drop(client);
            let _ = connection.await;
            outcome
        })
    })
    .join()
    .unwrap_or_else(|_| Err("the SQL thread panicked".to_owned()))
}

/// The folder of PostgreSQL's server programs (`initdb`, `pg_ctl`): the newest
/// under `/usr/lib/postgresql/*/bin` (Debian), else the folder of an `initdb` on
/// the PATH.
pub fn server_programs() -> Option<PathBuf> {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin);
    newest.or_else(|| {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
    })
}

/// A PostgreSQL cluster of a test's own: its folder (data, unix socket, log) in a
/// temporary directory, a free port on 127.0.0.1, trust authentication, run as
/// the `postgres` user when the tests run as root (PostgreSQL refuses root).
///
/// Dropping it stops the server and removes the folder.
pub struct PgCluster {
    /// The cluster's folder, owned by the user the server runs as.
    dir: tempfile::TempDir,
    /// PostgreSQL's server programs.
    bin: PathBuf,
    /// The TCP port, kept across [`PgCluster::stop`] and [`PgCluster::start`].
    port: u16,
    /// Whether the programs run through `runuser -u postgres`.
    as_postgres: bool,
}

impl PgCluster {
    /// Initialises a cluster and starts it (about a second).
    ///
    /// Panics, naming `cargo xtask prepare`, when PostgreSQL is not installed;
    /// with the server's log when it does not start.
    pub fn new() -> PgCluster {
        let bin = server_programs().unwrap_or_else(|| {
            panic!(
                "PostgreSQL's server programs (initdb, pg_ctl) are not installed: \
                 `cargo xtask prepare` installs them (Debian's postgresql package)"
            )
        });
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("guardian-pg-")
            .tempdir()
            .expect("a temporary folder for a PostgreSQL cluster");
        if as_postgres {
            checked(
                Command::new("chown")
                    .arg("postgres:")
                    .arg(dir.path())
                    .output(),
                "chown postgres: of the cluster's folder",
            );
        }
        let cluster = PgCluster {
            dir,
            bin,
            port: free_port(),
            as_postgres,
        };
        let data = cluster.data();
        // No sync of the new files: a crash during a test's setup loses nothing
        // of value. The server itself keeps fsync on.
        checked(
            cluster
                .program("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
                .args(["--no-sync", "--no-instructions"])
                .output(),
            "initdb",
        );
        cluster.start();
        cluster
    }

    /// The URL of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port the cluster listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the server (again) on the same port and data, and waits until it
    /// accepts connections.
    pub fn start(&self) {
        let socket_dir = self.dir.path().to_string_lossy().into_owned();
        // After an immediate stop, recovery first syncs the data folder: one
        // syncfs call instead of an fsync per file saves a second or more.
        let options = format!(
            "-p {} -k {socket_dir} -c listen_addresses=127.0.0.1 -c max_connections=200 \
             -c recovery_init_sync_method=syncfs",
            self.port
        );
        let output = self
            .program("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log())
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .output();
        if !output.as_ref().is_ok_and(|o| o.status.success()) {
            panic!(
                "the PostgreSQL cluster in {} did not start ({}); its log ends with:\n{}",
                self.dir.path().display(),
                describe(&output),
                log_tail(&self.log())
            );
        }
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`):
    /// the next start recovers from the write-ahead log.
    pub fn stop(&self) {
        checked(
            self.program("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"])
                .output(),
            "pg_ctl stop",
        );
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// `program` of PostgreSQL's folder, as the user the server runs as.
    fn program(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }
}

impl Default for PgCluster {
    fn default() -> Self {
        PgCluster::new()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let _ = self
                .program("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// Whether this process runs as root.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// A port free on 127.0.0.1 now (the kernel's choice, never 5432's range).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// Panics with what `what` printed unless it succeeded.
fn checked(output: std::io::Result<Output>, what: &str) {
    if !output.as_ref().is_ok_and(|o| o.status.success()) {
        panic!("{what} failed: {}", describe(&output));
    }
}

fn describe(output: &std::io::Result<Output>) -> String {
    match output {
        Ok(output) => format!(
            "{}; {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(error) => error.to_string(),
    }
}

/// The last lines of the server's log.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| format!("(no log: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
