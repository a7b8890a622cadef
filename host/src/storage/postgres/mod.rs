//! The PostgreSQL backend: a database shared by any number of replicas of one
//! share server (DESIGN.md section 8).
//!
//! Every replica holds a pool of connections. Reports go to writer tasks that
//! commit concurrent reports together (group commit), each transaction durable
//! at its commit (`synchronous_commit` on); report id uniqueness is the
//! database's `UNIQUE (endpoint_id, report_id)`, so replicas never need to agree
//! in memory. Everything else runs in its own transaction on a pooled
//! connection.
//!
//! Layout: this file holds the connection, the pool and the plumbing;
//! `migrations` the schema; `catalog` plugins and endpoints; `ingest` reports
//! outside seals, whose inserts `writer` group-commits; `seal` the seals.

mod catalog;
mod ingest;
#[cfg(test)]
mod ingest_bench;
#[cfg(test)]
mod ingest_tests;
mod leases;
pub(crate) mod migrations;
mod seal;
#[cfg(test)]
mod seal_tests;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::storage::{StorageError, StorageOptions};

/// The PostgreSQL backend behind [`crate::storage::Storage`].
pub(crate) struct PgBackend {
    /// The database URL without its password, for logs.
    redacted_url: String,
    /// Pooled connections.
    pool: Pool,
    /// The database's secret (`server_secrets.user_key`).
    secret: [u8; 32],
    /// The report writer; its `close` also refuses every later operation.
    writer: writer::Writer,
}

/// `url` without its password, for logs and errors.
pub(crate) fn redact(url: &str) -> String {
    // postgres://user:password@host/db → postgres://user:***@host/db
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(unparsable URL)".to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{user_info}@{host}"),
        },
        None => authority.to_owned(),
    };
    let query = path.split_once('?').map_or(path, |(path, _)| path);
    format!("{scheme}://{authority}{query}")
}

/// Whether a driver error means the database cannot be reached or cannot work
/// now (connection lost, server shutting down, out of resources), not a fault of
/// the request.
pub(crate) fn is_unavailable(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        // Class 08: connection exception; 53: insufficient resources; 57P0x:
        // operator intervention (shutdown, crash recovery); 58: system error.
        Some(code) => {
            let code = code.code();
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P0")
                || code.starts_with("58")
        }
        // No SQLSTATE: an I/O or protocol failure of the connection.
        None => {
            std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>())
        }
    }
}

/// A TLS connector trusting the web PKI roots and the system's store (or
/// `SSL_CERT_FILE` / `SSL_CERT_DIR`), used when the URL's `sslmode` asks for TLS.
fn tls() -> MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "a system certificate could not be loaded");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system certificates for the database's TLS");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
    .unwrap_or_else(|_| unreachable!("ring supports the default protocol versions"));
    MakeRustlsConnect::new(config)
}

/// How long a caller waits for a pooled connection before the database counts
/// as unavailable.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// How long connecting to the database may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl PgBackend {
    /// Connects, migrates the schema and reads the database's secret.
    pub(crate) async fn open(
        url: &str,
        options: StorageOptions,
    ) -> Result<PgBackend, StorageError> {
        let redacted_url = redact(url);
        let mut config: tokio_postgres::Config = url.parse().map_err(|error| {
            StorageError::Unavailable(format!("storage.url {redacted_url} is not valid: {error}"))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("guardian");
        let manager = Manager::from_config(
            config,
            tls(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.read_connections.max(1) + 4)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|error| StorageError::Unavailable(error.to_string()))?;
        let mut client = pooled(&pool, &redacted_url).await?;
        migrations::migrate(&mut client, migrations::MIGRATIONS).await?;
        let secret = load_secret(&client).await?;
        drop(client);
        let writer = writer::Writer::spawn(
            pool.clone(),
            redacted_url.clone(),
            options.max_group,
            options.commit_observer,
        );
        Ok(PgBackend {
            redacted_url,
            pool,
            secret,
            writer,
        })
    }

    /// A pooled connection, or [`StorageError::Unavailable`] saying why none;
    /// [`StorageError::Closed`] once the storage is closed.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Client, StorageError> {
        if self.writer.is_closed() {
            return Err(StorageError::Closed);
        }
        pooled(&self.pool, &self.redacted_url).await
    }

    /// The database URL without its password.
    pub(crate) fn redacted_url(&self) -> &str {
        &self.redacted_url
    }

    /// The database's secret: see [`crate::storage::Storage::user_key`].
    pub(crate) fn secret(&self) -> [u8; 32] {
        self.secret
    }
}

/// A connection of `pool`, or [`StorageError::Unavailable`] saying why none
/// (naming the database by `redacted_url`).
async fn pooled(
    pool: &Pool,
    redacted_url: &str,
) -> Result<deadpool_postgres::Client, StorageError> {
    pool.get().await.map_err(|error| {
        let detail = match &error {
            deadpool_postgres::PoolError::Backend(error) => crate::tls::error_chain(error),
            other => other.to_string(),
        };
        StorageError::Unavailable(format!("no connection to {redacted_url}: {detail}"))
    })
}

/// The database's secret, drawn by the first replica that finds none.
async fn load_secret(client: &deadpool_postgres::Client) -> Result<[u8; 32], StorageError> {
    let drawn: [u8; 32] = rand::random();
    client
        .execute(
            "INSERT INTO server_secrets (name, value) VALUES ('user_key', $1) \
             ON CONFLICT (name) DO NOTHING",
            &[&&drawn[..]],
        )
        .await?;
    let stored: Vec<u8> = client
        .query_one(
            "SELECT value FROM server_secrets WHERE name = 'user_key'",
            &[],
        )
        .await?
        .get(0);
    <[u8; 32]>::try_from(stored.as_slice())
        .map_err(|_| StorageError::OutOfRange("the server secret"))
}
