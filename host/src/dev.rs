//! `guardian dev`: a local deployment of N share servers in one process, on
//! embedded defaults, with a demo endpoint, for trying the system out.
//!
//! Data lives under one folder (`server-{i}/` per server), so running it again
//! picks up where the last run stopped. With `--postgres URL` the servers keep
//! their state in PostgreSQL instead: one database per server on the cluster
//! the URL names (see [`server_database`]), since two share servers must never
//! share a database.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;

use anyhow::{Context as _, bail};

use crate::auth::DevIssuer;
use crate::config::{Config, DatabaseUrl, Role};
use crate::server::Server;

/// Options of `guardian dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Number of share servers (at least 2).
    pub servers: u32,
    /// Folder holding every server's data.
    pub dir: PathBuf,
    /// Server i listens on `port + i`.
    pub port: u16,
    /// Digests of uploaded plugins every demo server approves (`plugins.approved`);
    /// built-ins are always approved.
    pub approved: Vec<String>,
    /// A PostgreSQL cluster for the servers' state instead of SQLite files: server
    /// i uses database `{db}_server{i}` of the cluster this URL names (`db` is the
    /// URL's database), created if missing.
    pub postgres: Option<String>,
}

/// The demo endpoint created on every server.
pub const DEMO_ENDPOINT: &str = "demo";
const DEMO_PLUGIN: &str = "histogram";
const DEMO_PARAMS: &str = r#"{"buckets": ["red", "green", "blue"]}"#;
const DEMO_MIN_BATCH: u64 = 3;
/// The banner's example submission: four measurements of the demo endpoint
/// (one more than its minimum batch), posted with the user's token.
const DEMO_SUBMIT: &str = r#"printf '"red"\n"green"\n"blue"\n"red"\n' | guardian submit demo --file - --token "$USER_TOKEN""#;

/// The example survey app of the JavaScript client (`clients/js`, `npm run
/// example`) is served from this address; the demo servers allow it as a
/// cross-origin caller so that the app works out of the box.
pub const EXAMPLE_APP: &str = "http://127.0.0.1:5173";
/// The origins the demo servers allow (`cors.allowed_origins`): the example app,
/// by its address and by `localhost`.
const EXAMPLE_ORIGINS: [&str; 2] = [EXAMPLE_APP, "http://localhost:5173"];

/// How long the tokens printed by `guardian dev` last.
const TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The servers of a running local deployment.
pub struct Dev {
    servers: Vec<Server>,
    urls: Vec<String>,
    /// Where each server keeps its state, for the banner (passwords redacted).
    storage: Vec<String>,
    /// One token per role, in [`Role::ALL`] order.
    tokens: Vec<(Role, String)>,
}

impl Dev {
    /// Starts every server and creates the demo endpoint on each.
    pub async fn start(options: &DevOptions) -> anyhow::Result<Dev> {
        if options.servers < 2 {
            bail!("--servers must be at least 2 (got {})", options.servers);
        }
        let addrs: Vec<SocketAddr> = (0..options.servers)
            .map(|i| {
                let port = u16::try_from(i)
                    .ok()
                    .and_then(|i| options.port.checked_add(i));
                port.map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)))
                    .context("--port plus the number of servers is past 65535")
            })
            .collect::<anyhow::Result<_>>()?;
        for addr in &addrs {
            // A clear message now rather than a bind error half-way through.
            TcpListener::bind(addr).with_context(|| {
                format!("port {} is taken (is another `guardian dev` running?); choose another base port with --port", addr.port())
            })?;
        }
        let urls: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
        let issuer_dir = options.dir.join("dev-issuer");
        let issuer = {
            let dir = issuer_dir.clone();
            tokio::task::spawn_blocking(move || DevIssuer::load_or_create(&dir)).await??
        };
        let tokens = Role::ALL
            .iter()
            .map(|role| {
                Ok((
                    *role,
                    issuer.mint(*role, &format!("dev-{}", role.as_str()), TOKEN_TTL)?,
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // Each server's own peer key pair, and every public key for all of them.
        let peer_keys = {
            let dirs: Vec<_> = (0..addrs.len())
                .map(|index| options.dir.join(format!("server-{index}")))
                .collect();
            tokio::task::spawn_blocking(move || {
                dirs.iter()
                    .map(|dir| crate::auth::identity::public_key_of(&dir.join("peer-key")))
                    .collect::<anyhow::Result<Vec<String>>>()
            })
            .await??
        };
        let databases = match &options.postgres {
            Some(url) => {
                let databases = (0..options.servers)
                    .map(|index| server_database(url, index))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                create_databases(url, &databases).await?;
                Some(databases)
            }
            None => None,
        };
        let mut servers = Vec::new();
        let mut storage = Vec::new();
        for (index, addr) in addrs.iter().enumerate() {
            let mut config = Config::default();
            config.server.index = index as u32;
            config.server.servers = options.servers;
            config.server.peers = urls.clone();
            config.server.listen = Some(*addr);
            config.server.data_dir = Some(options.dir.join(format!("server-{index}")));
            config.auth.dev_issuer = true;
            config.auth.dev_issuer_dir = issuer_dir.clone();
            config.server.peer_keys = peer_keys.clone();
            config.plugins.approved = options.approved.clone();
            config.cors.allowed_origins = EXAMPLE_ORIGINS.map(String::from).to_vec();
            // One demo token submits everyone's measurements.
            config.endpoints.distinct_users = false;
            if let Some(databases) = &databases {
                config.storage.url = Some(DatabaseUrl::new(databases[index].url.clone()));
            }
            config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
            storage.push(
                config
                    .storage_location()
                    .map_err(|why| anyhow::anyhow!("{why}"))?
                    .to_string(),
            );
            servers.push(
                Server::start(config)
                    .await
                    .with_context(|| format!("starting server {index}"))?,
            );
        }
        let dev = Dev {
            servers,
            urls,
            storage,
            tokens,
        };
        dev.create_demo_endpoint().await?;
        Ok(dev)
    }

    async fn create_demo_endpoint(&self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let params: serde_json::Value = serde_json::from_str(DEMO_PARAMS)?;
        let body = serde_json::json!({
            "name": DEMO_ENDPOINT,
            "plugin": DEMO_PLUGIN,
            "params": params,
            "min_batch": DEMO_MIN_BATCH,
        });
        for url in &self.urls {
            let response = client
                .post(format!("{url}/api/v1/endpoints"))
                .bearer_auth(self.token(Role::Developer))
                .json(&body)
                .send()
                .await?;
            let status = response.status();
            if !status.is_success() {
                let text = response.text().await.unwrap_or_default();
                bail!("creating the demo endpoint on {url} failed: {status} {text}");
            }
        }
        Ok(())
    }

    /// The printed token for `role`.
    pub fn token(&self, role: Role) -> &str {
        self.tokens
            .iter()
            .find(|(r, _)| *r == role)
            .map_or("", |(_, t)| t.as_str())
    }

    /// Base URLs in server-index order.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// What to print for a newcomer: the servers, a token per role, the
    /// `export` lines for the client commands and the next three commands to try.
    pub fn banner(&self) -> String {
        let servers = self.urls.join(",");
        let list: Vec<String> = self
            .urls
            .iter()
            .enumerate()
            .map(|(i, u)| format!("  server {i}: {u}   (state: {})", self.storage[i]))
            .collect();
        let tokens: Vec<String> = self
            .tokens
            .iter()
            .map(|(role, token)| format!("  {:<9} {token}", role.as_str()))
            .collect();
        let first = &self.urls[0];
        format!(
            "Privacy Guardian: {n} share servers are running (Ctrl-C stops them).\n\n\
             {list}\n\n\
             Tokens from the development issuer (valid 24 h; `guardian token --role ROLE` mints more):\n\n\
             {tokens}\n\n\
             In another terminal:\n\n\
             \x20 export GUARDIAN_SERVERS={servers}\n\
             \x20 export GUARDIAN_TOKEN={scientist}\n\
             \x20 export USER_TOKEN={user}\n\n\
             The demo endpoint `{DEMO_ENDPOINT}` is a {DEMO_PLUGIN} over {DEMO_PARAMS} (min batch {DEMO_MIN_BATCH}). \
             Batches need not come from distinct users here (endpoints.distinct_users is off, \
             so that one token can submit for everyone); a real deployment counts them. Next, try:\n\n\
             \x20 guardian endpoint list\n\
             \x20 {submit}\n\
             \x20 guardian collect {DEMO_ENDPOINT}\n\n\
             Live charts of the released results, with a button to seal a batch:\n\n\
             \x20 guardian dashboard        (then open http://127.0.0.1:8080/; --listen ADDR for another)\n\n\
             The example survey web app (the JavaScript client), with the exports above:\n\n\
             \x20 cd clients/js && npm ci && npm run build && npm run example   (then open {EXAMPLE_APP}/)\n\n\
             (From a checkout, `cargo run -q --` works in place of `guardian`. Metrics: {first}/metrics)\n",
            n = self.urls.len(),
            list = list.join("\n"),
            tokens = tokens.join("\n"),
            scientist = self.token(Role::Scientist),
            user = self.token(Role::User),
            submit = DEMO_SUBMIT,
        )
    }

    /// Stops every server gracefully.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        for server in self.servers {
            server.shutdown().await?;
        }
        Ok(())
    }
}

/// The database of one demo server on a PostgreSQL cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerDatabase {
    /// The database's name, `{db}_server{index}`.
    pub name: String,
    /// The URL that names it: the cluster's URL with this database (user,
    /// password, host and query kept).
    pub url: String,
}

/// Longest database name PostgreSQL keeps (longer ones are cut, silently).
const MAX_DATABASE_NAME: usize = 63;

/// The database of demo server `index` on the cluster `url` names: `{db}_server{index}`,
/// `db` being the URL's database (`postgres` when it names none). One database per
/// server, because a server's state is its share of every report: two servers in
/// one database would be one party holding both shares.
///
/// # Errors
/// `url` is not a `postgres://` URL, or its database name is not plain lower-case
/// letters, digits and `_` (the name is used unquoted in SQL and must stay short).
pub fn server_database(url: &str, index: u32) -> anyhow::Result<ServerDatabase> {
    crate::storage::StorageLocation::from_url(url)
        .map_err(|why| anyhow::anyhow!("--postgres: {}", why.replace("storage.url", "the URL")))?;
    let db = database_of(url);
    let name = format!("{db}_server{index}");
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        || name.len() > MAX_DATABASE_NAME
    {
        bail!(
            "--postgres: the URL's database {db:?} cannot prefix the servers' databases: use lower-case letters, digits and _ (at most {} characters), e.g. postgres://user@host:5432/guardian",
            MAX_DATABASE_NAME - "_server99".len()
        );
    }
    let url = with_database(url, &name);
    Ok(ServerDatabase { name, url })
}

/// `url` split as `(scheme://authority, database, query)`.
fn url_parts(url: &str) -> (&str, &str, Option<&str>) {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority = base.find("://").map_or(0, |at| at + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |at| authority + at);
    (&base[..path], base[path..].trim_start_matches('/'), query)
}

/// The database `url` names: `postgres` when it names none, as for libpq.
fn database_of(url: &str) -> &str {
    match url_parts(url).1 {
        "" => "postgres",
        db => db,
    }
}

/// `url` naming database `name` instead (user, password, host and query kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, _, query) = url_parts(url);
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

/// Creates each database that does not exist yet, over one plain connection to
/// the cluster: to the URL's own database, or to `postgres` when that one does not
/// exist.
async fn create_databases(url: &str, databases: &[ServerDatabase]) -> anyhow::Result<()> {
    let redacted = crate::storage::StorageLocation::Postgres(url.to_owned()).to_string();
    let client = match connect(url).await {
        Ok(client) => client,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) => {
            connect(&with_database(url, "postgres"))
                .await
                .with_context(|| {
                    format!("--postgres: connecting to {redacted} (and to its postgres database)")
                })?
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "--postgres: connecting to {redacted} (guardian dev connects without TLS: use a local cluster)"
            )));
        }
    };
    for db in databases {
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db.name])
            .await?
            .is_some();
        if exists {
            continue;
        }
        // The name is checked to be plain (`server_database`): no quoting needed.
        match client
            .batch_execute(&format!("CREATE DATABASE {}", db.name))
            .await
        {
            Ok(()) => {}
            // Created meanwhile by another `guardian dev`: as good.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "--postgres: creating database {} on {redacted}",
                    db.name
                )));
            }
        }
    }
    Ok(())
}

/// A plain connection (no TLS: a local development cluster), driven by a task of
/// its own until the client is dropped.
async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "the database setup connection ended");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, index: u32, expected: Result<(&str, &str), &str>) {
        match (server_database(url, index), expected) {
            (Ok(db), Ok((name, db_url))) => {
                assert_eq!((db.name.as_str(), db.url.as_str()), (name, db_url), "{url}");
            }
            (Err(e), Err(part)) => {
                assert!(e.to_string().contains(part), "{url}: {e}");
            }
            (got, expected) => panic!("{url}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn each_server_gets_its_own_database_on_the_cluster() {
        check(
            "postgres://postgres@127.0.0.1:55432/guardian",
            0,
            Ok((
                "guardian_server0",
                "postgres://postgres@127.0.0.1:55432/guardian_server0",
            )),
        );
        check(
            "postgresql://u:pw@db.example/demo?sslmode=disable",
            1,
            Ok((
                "demo_server1",
                "postgresql://u:pw@db.example/demo_server1?sslmode=disable",
            )),
        );
        check(
            "postgres://postgres@127.0.0.1:55432",
            2,
            Ok((
                "postgres_server2",
                "postgres://postgres@127.0.0.1:55432/postgres_server2",
            )),
        );
        check(
            "postgres://postgres@127.0.0.1/Guardian",
            0,
            Err("lower-case letters, digits and _"),
        );
        check(
            "postgres://postgres@127.0.0.1/a;DROP",
            0,
            Err("lower-case letters"),
        );
        check("mysql://root@127.0.0.1/x", 0, Err("postgres://"));
    }
}
