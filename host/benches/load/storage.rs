//! The storage the bench's servers run on (`--storage sqlite,postgres`): SQLite
//! files in each server's data folder, or a fresh database per share server on
//! the PostgreSQL cluster named by `GUARDIAN_BENCH_POSTGRES_URL`, shared by that
//! server's replicas and dropped after the run.

use std::sync::atomic::{AtomicU32, Ordering};

/// The environment variable naming the PostgreSQL cluster of the bench
/// (`postgres://user@host:port/db`; the bench creates its databases there).
pub const URL_VARIABLE: &str = "GUARDIAN_BENCH_POSTGRES_URL";

/// A storage backend of the servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Parses `--storage`'s list (`sqlite`, `postgres`).
    pub fn parse_list(list: &[String]) -> Vec<Backend> {
        list.iter()
            .map(|name| match name.as_str() {
                "sqlite" => Backend::Sqlite,
                "postgres" | "postgresql" => Backend::Postgres,
                other => panic!("--storage {other}: expected sqlite or postgres"),
            })
            .collect()
    }

    /// The name in JSON lines.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// What a row's label says of it (nothing for SQLite, the default).
    pub fn label(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => ", PostgreSQL",
        }
    }
}

/// Fails early, naming the variable, when PostgreSQL is asked for without a
/// cluster; checks that the cluster answers.
pub fn check(backends: &[Backend]) {
    if backends.contains(&Backend::Postgres) {
        let url = admin_url();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        runtime.block_on(async {
            connect(&url).await;
        });
    }
}

fn admin_url() -> String {
    std::env::var(URL_VARIABLE).unwrap_or_else(|_| {
        panic!(
            "--storage postgres needs {URL_VARIABLE}=postgres://USER@HOST:PORT/DB naming a \
             PostgreSQL cluster where the bench may create databases (`cargo xtask prepare` \
             starts one for the tests and prints its URL)"
        )
    })
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {URL_VARIABLE} ({url}): {error}"));
    tokio::spawn(connection);
    client
}

/// `url` naming database `name` instead of its own (query parameters kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority = base.find("://").map_or(0, |at| at + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |at| authority + at);
    let mut out = format!("{}/{name}", &base[..path]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A new, empty database on the bench's cluster: its name and URL.
pub async fn fresh_database() -> (String, String) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let admin = admin_url();
    let name = format!(
        "guardian_bench_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let client = connect(&admin).await;
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        client
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error:?}"));
    }
    let url = with_database(&admin, &name);
    (name, url)
}

/// Drops a database of [`fresh_database`] (its servers have stopped).
pub async fn drop_database(name: &str) {
    if let Err(error) = connect(&admin_url())
        .await
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
    {
        eprintln!("  could not drop database {name}: {error:?}");
    }
}
