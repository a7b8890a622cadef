//! The `guardian` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use guardian::client::terminal::clean;
use guardian::client::{Cluster, admin, authoring, collect, dashboard, submit};
use guardian::config::{self, Environment, LogFormat};
use guardian::dev::{Dev, DevOptions};
use guardian::server::Server;
use tracing_subscriber::EnvFilter;

/// Privacy Guardian: privacy-preserving aggregation over additive secret shares.
#[derive(Parser)]
#[command(name = "guardian", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one share server.
    ///
    /// Configuration: built-in defaults, then the TOML file given with --config,
    /// then a `.env` file in the working directory, then the environment
    /// (`GUARDIAN_<SECTION>_<KEY>`); see guardian.example.toml.
    ///
    /// Example: GUARDIAN_SERVER_INDEX=1 guardian serve --config guardian.toml
    Serve {
        /// A TOML configuration file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print this server's public peer key, creating its key pair if missing.
    ///
    /// Every operator lists each server's key, in index order, in `server.peer_keys`
    /// (env GUARDIAN_SERVER_PEER_KEYS); peer messages are signed with these keys.
    ///
    /// Example: GUARDIAN_SERVER_INDEX=1 guardian peer-key --config guardian.toml
    PeerKey {
        /// A TOML configuration file (its `server.key_file` or data directory).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Mint a token from the development issuer (for `guardian dev` or servers
    /// with `auth.dev_issuer = true`).
    ///
    /// Example: guardian token --role scientist --sub alice --ttl 2h
    Token {
        /// user, developer, scientist or admin.
        #[arg(long, value_parser = parse_role)]
        role: config::Role,
        /// The token's subject.
        #[arg(long, default_value = "dev")]
        sub: String,
        /// Lifetime, e.g. 30m, 12h, 7d.
        #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// The development issuer's folder (default: `auth.dev_issuer_dir` of the configuration).
        #[arg(long)]
        issuer_dir: Option<PathBuf>,
    },
    /// Run a local demo: N share servers on embedded defaults with a demo endpoint.
    ///
    /// Data is kept in DIR, so running it again reuses it. Ctrl-C stops everything.
    ///
    /// Example: guardian dev --servers 3 --dir /tmp/guardian-demo
    Dev {
        /// Number of share servers.
        #[arg(long, default_value_t = 2)]
        servers: u32,
        /// Folder for every server's data.
        #[arg(long, default_value = "guardian-data")]
        dir: PathBuf,
        /// Server i listens on PORT + i.
        #[arg(long, default_value_t = guardian::config::DEFAULT_BASE_PORT)]
        port: u16,
        /// Approve an uploaded plugin on every demo server (its 64-hex digest, as
        /// `guardian plugin upload` prints it); repeat or separate with commas.
        /// Built-ins are always approved.
        #[arg(long, value_name = "DIGEST", value_delimiter = ',')]
        approve: Vec<String>,
        /// Keep the servers' state in PostgreSQL instead of SQLite files: server i
        /// uses database DB_server{i} of the cluster URL names (DB: the URL's
        /// database), created if missing. Each server needs a database of its
        /// own (two servers in one database would be one party holding both
        /// shares). Example: --postgres postgres://postgres@127.0.0.1:5432/guardian
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
    },
    /// Upload or list algorithm plugins (developer).
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Create or list endpoints (developer).
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Read or delete released batches (scientist, admin).
    #[command(subcommand)]
    Batch(BatchCommand),
    /// Operate a server: backups (run on the server's machine).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Shard measurements locally and post share i to server i (user).
    ///
    /// The endpoint's plugin is fetched from the servers (checked against its
    /// digest) and run here, so no server ever sees a measurement. `--value`
    /// posts one measurement; `--file` posts one JSON measurement per line (blank
    /// lines skipped, `-` reads standard input) concurrently, with a progress bar
    /// and a summary, and exits non-zero if any failed. Retries are safe: a report
    /// is retried under the same id, which the servers store once.
    ///
    /// Example: guardian submit demo --value '"red"'
    ///
    /// Example: guardian submit sums --file measurements.jsonl
    Submit {
        /// The endpoint.
        name: String,
        /// One measurement, as JSON (e.g. '[1, 2, 3]', '"red"' or -3).
        #[arg(
            long,
            value_name = "JSON",
            required_unless_present = "file",
            conflicts_with = "file",
            allow_hyphen_values = true
        )]
        value: Option<String>,
        /// A file of measurements, one JSON value per line (`-` for standard input).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// With --file: write every failed line to FILE, one JSON object a line
        /// (`line`, `value`, `code`, `server`, `message`), instead of listing
        /// only the first ones when many fail.
        #[arg(long, value_name = "FILE", requires = "file")]
        errors: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Shard one measurement and print the report instead of posting it (user).
    ///
    /// Prints `{"report_id": "<32 hex>", "public_share": "<base64>" or null,
    /// "shares": ["<base64>", …]}`, share i for server i: what `submit` would
    /// post (as `{"report_id", "share", "public_share"}` to server i), for clients
    /// in other languages and for tests. The plugin is fetched and checked as
    /// for `submit`.
    ///
    /// Example: guardian shard demo --value '"red"'
    Shard {
        /// The endpoint.
        name: String,
        /// The measurement, as JSON (e.g. -3).
        #[arg(long, value_name = "JSON", allow_hyphen_values = true)]
        value: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Seal a batch and combine every server's released share (scientist).
    ///
    /// Asks server 0 to seal a batch of the reports every server holds, fetches
    /// each server's released share, checks that they agree and combines them
    /// locally with the endpoint's plugin. With --total, combines every batch
    /// released so far instead of sealing a new one.
    ///
    /// Example: guardian collect demo
    ///
    /// Example: guardian collect demo --total --json
    Collect {
        /// The endpoint.
        name: String,
        /// Combine every released batch instead of sealing a new one.
        #[arg(long, conflicts_with_all = ["latest", "since"])]
        total: bool,
        /// Combine the newest released batch, without sealing (e.g. one the
        /// servers sealed on their schedule).
        #[arg(long, conflicts_with = "since")]
        latest: bool,
        /// Combine every batch sealed at or after TIME (RFC 3339, e.g.
        /// 2026-01-31T00:00:00Z), without sealing.
        #[arg(long, value_name = "TIME", value_parser = parse_since)]
        since: Option<std::time::SystemTime>,
        /// Print one JSON object: {"endpoint", "batch_id" or "batches", "count", "result"}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Serve a local web page with live charts of every endpoint's results (scientist).
    ///
    /// The page lists the endpoints with their report counts and charts each
    /// one's total over every released batch, refreshing on its own, with a
    /// button to seal a batch. Shares are fetched and combined by this process,
    /// as `guardian collect --total` does; the page never talks to the share
    /// servers, and it needs nothing from the internet.
    ///
    /// Example: guardian dashboard --listen 127.0.0.1:8080
    Dashboard {
        /// Address to serve the page on (port 0 picks a free port).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `guardian plugin …`
#[derive(Subcommand)]
enum PluginCommand {
    /// Upload a plugin component (.wasm) to every server.
    ///
    /// Reports what each server did. Uploading the same file again is safe, so
    /// after a partial failure run the same command again.
    ///
    /// Example: guardian plugin upload target/wasm32-wasip2/release/my_plugin.wasm
    Upload {
        /// The component, built with `cargo build --release --target wasm32-wasip2`.
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the plugins of every server (built-in and uploaded).
    ///
    /// Example: guardian plugin list
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write a ready plugin crate into ./NAME/ (plugin author).
    ///
    /// The crate has a typed configuration, the export macro and tests, and
    /// builds with nothing but this binary and crates.io: the SDK source this
    /// binary was built with is written into NAME/guardian-sdk/ (or `--sdk`
    /// points at another copy), with the Cargo.lock it was tested with.
    ///
    /// Example: guardian plugin new variance
    New {
        /// The crate's name: a-z, 0-9, '-', '_', starting with a letter.
        name: String,
        /// Depend on this copy of guardian-sdk instead of writing one.
        #[arg(long, value_name = "PATH")]
        sdk: Option<PathBuf>,
    },
    /// Run every check of the SDK on a built component, through the runtime
    /// and limits of a share server (plugin author).
    ///
    /// Round trips for 2 to 5 servers, determinism, bad shares and
    /// measurements refused, the server's limits (robust plugins: the robust
    /// checks). Exits non-zero if any check fails. No server is needed.
    ///
    /// Example: guardian plugin check target/wasm32-wasip2/release/variance.wasm --params '{"max": 10}' --measurements measurements.jsonl
    Check {
        /// The component, built with `cargo build --release --target wasm32-wasip2`.
        file: PathBuf,
        /// The endpoint parameters, as JSON.
        #[arg(long, value_name = "JSON", default_value = "{}")]
        params: String,
        /// Example measurements, one JSON value per line.
        #[arg(long, value_name = "FILE")]
        measurements: Option<PathBuf>,
    },
}

/// `guardian endpoint …`
#[derive(Subcommand)]
enum EndpointCommand {
    /// Create an endpoint on every server.
    ///
    /// PLUGIN is a built-in's name (sum, count, histogram, mean, dp-sum,
    /// dp-histogram, …), or an uploaded plugin's name@version, name (when one
    /// plugin has it) or digest, as `guardian plugin list` shows them; a
    /// built-in's name always means the built-in. Creating the same endpoint
    /// again is safe, so after a partial failure run the same command again.
    ///
    /// Example: guardian endpoint create colors --plugin histogram --params '{"buckets": ["red", "green", "blue"]}' --min-batch 100
    Create {
        /// The endpoint's name: 1 to 64 of a-z, 0-9, '-', '_', '.'.
        name: String,
        /// A built-in's name, or an uploaded plugin's name@version, name or digest.
        #[arg(long)]
        plugin: String,
        /// The plugin's parameters, as a JSON object.
        #[arg(long, value_name = "JSON", default_value = "{}")]
        params: String,
        /// Fewest reports in a batch (default: the servers' `endpoints.default_min_batch`).
        #[arg(long, value_name = "K")]
        min_batch: Option<u64>,
        /// Most reports one user may hold in the endpoint on a server until the
        /// next seal (default: no limit).
        #[arg(long, value_name = "K")]
        max_reports_per_user: Option<u64>,
        /// Server 0 seals the endpoint by itself this often, e.g. 1h, 30m, 1day
        /// (whole seconds; default: only when asked).
        #[arg(long, value_name = "DURATION", value_parser = parse_seal_every)]
        seal_every: Option<std::time::Duration>,
        /// Server 0 seals the endpoint by itself as soon as every server holds
        /// this many reports (at least the min batch).
        #[arg(long, value_name = "K")]
        seal_at: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the endpoints of every server, with their report counts.
    ///
    /// Example: guardian endpoint list
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `guardian batch …`
#[derive(Subcommand)]
enum BatchCommand {
    /// Delete one released batch on every server: its stored share and its
    /// record (admin).
    ///
    /// Released batches are kept until an admin deletes them. The batch's
    /// reports stay counted as batched and are never sealed again; the batch
    /// just leaves the listings and the total. A batch whose seal is not
    /// finished is refused (`batch_not_released`); deleting it again on a
    /// server that has deleted it answers `unknown_batch`, so after a partial
    /// failure run the same command again.
    ///
    /// Example: guardian batch delete demo 0123456789abcdef0123456789abcdef
    Delete {
        /// The endpoint.
        name: String,
        /// The batch's id, 32 hex digits, as `guardian collect` prints it.
        batch_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `guardian admin …`
#[derive(Subcommand)]
enum AdminCommand {
    /// Copy this server's database to DEST while it serves (SQLite's online
    /// backup, one consistent snapshot).
    ///
    /// Run it on the server's machine with the server's configuration (the same
    /// --config, `.env` and environment as `guardian serve`): it reads the
    /// database at `storage.path`. The copy is written beside DEST, checked,
    /// and renamed to DEST at the end, so DEST is never a half backup. README,
    /// "Backup and restore", says how to restore and what it means for sealing.
    /// A server on PostgreSQL (`storage.url`) is refused: back it up with
    /// pg_dump or point-in-time recovery.
    ///
    /// Example: guardian admin backup /backups/guardian-2026-12-07.sqlite --config guardian.toml
    Backup {
        /// The backup file to write (its folder must exist).
        dest: PathBuf,
        /// A TOML configuration file (the server's).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Replace DEST if it exists.
        #[arg(long)]
        force: bool,
    },
}

/// Where the share servers are and who is asking: every client command takes them.
#[derive(clap::Args)]
struct ClientArgs {
    /// The share servers' base URLs, comma-separated, in server-index order.
    #[arg(
        long,
        env = "GUARDIAN_SERVERS",
        value_name = "URL,URL,…",
        value_delimiter = ',',
        required = true
    )]
    servers: Vec<String>,
    /// An access token of your identity provider (or of `guardian token`).
    #[arg(long, env = "GUARDIAN_TOKEN", value_name = "T", hide_env_values = true)]
    token: Option<String>,
}

impl ClientArgs {
    fn cluster(self) -> anyhow::Result<Cluster> {
        Cluster::new(&self.servers, self.token)
    }
}

fn main() -> ExitCode {
    fix_malloc_thresholds();
    guardian::auth::crypto::install();
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Command::Serve { .. } | Command::Dev { .. } | Command::Dashboard { .. }
    ) {
        stop_quietly_on_closed_output();
    }
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::PeerKey { config } => peer_key(config),
        Command::Dev {
            servers,
            dir,
            port,
            approve,
            postgres,
        } => dev(DevOptions {
            servers,
            dir,
            port,
            approved: approve,
            postgres,
        }),
        Command::Token {
            role,
            sub,
            ttl,
            issuer_dir,
        } => token(role, &sub, ttl, issuer_dir),
        Command::Plugin(command) => client(plugin(command)),
        Command::Endpoint(command) => client(endpoint(command)),
        Command::Batch(command) => client(batch(command)),
        Command::Admin(AdminCommand::Backup {
            dest,
            config,
            force,
        }) => backup(config, &dest, force),
        Command::Submit {
            name,
            value,
            file,
            errors,
            client: args,
        } => client(submit(name, value, file, errors, args)),
        Command::Shard {
            name,
            value,
            client: args,
        } => client(async move {
            let cluster = args.cluster()?;
            println!("{}", submit::shard_value(&cluster, &name, &value).await?);
            Ok(())
        }),
        Command::Collect {
            name,
            total,
            latest,
            since,
            json,
            client: args,
        } => {
            let read = match (total, latest, since) {
                (true, _, _) => collect::Read::Total,
                (_, true, _) => collect::Read::Latest,
                (_, _, Some(since)) => collect::Read::Since(since),
                _ => collect::Read::Seal,
            };
            client(collect(name, read, json, args))
        }
        Command::Dashboard {
            listen,
            client: args,
        } => client(serve_dashboard(listen, args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", clean(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn serve(file: Option<PathBuf>) -> anyhow::Result<()> {
    let env = Environment::capture(&std::env::current_dir()?)?;
    let loaded = config::load(file.as_deref(), &env)?;
    let _log_guard = init_logging(&loaded.config.log)?;
    for warning in loaded.config.warnings() {
        tracing::warn!("{warning}");
    }
    tracing::info!("effective configuration:\n{}", loaded.render());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(loaded.config.server.worker_threads())
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = Server::start(loaded.config).await?;
        server.run_until(shutdown_signal()).await
    })
}

fn peer_key(file: Option<PathBuf>) -> anyhow::Result<()> {
    let env = Environment::capture(&std::env::current_dir()?)?;
    let loaded = config::load(file.as_deref(), &env)?;
    let path = loaded.config.server.key_file();
    println!("{}", guardian::auth::identity::public_key_of(&path)?);
    eprintln!(
        "(server {}'s public peer key, from {}: list it at index {} of server.peer_keys on every server)",
        loaded.config.server.index,
        path.display(),
        loaded.config.server.index
    );
    Ok(())
}

fn parse_role(text: &str) -> Result<config::Role, String> {
    config::Role::ALL
        .into_iter()
        .find(|role| role.as_str() == text)
        .ok_or_else(|| format!("expected user, developer, scientist or admin, got {text:?}"))
}

fn token(
    role: config::Role,
    sub: &str,
    ttl: std::time::Duration,
    dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let dir = match dir {
        Some(dir) => dir,
        None => {
            let env = Environment::capture(&std::env::current_dir()?)?;
            config::load(None, &env)?.config.auth.dev_issuer_dir
        }
    };
    let issuer = guardian::auth::DevIssuer::load_or_create(&dir)?;
    println!("{}", issuer.mint(role, sub, ttl)?);
    Ok(())
}

fn dev(options: DevOptions) -> anyhow::Result<()> {
    let _log_guard = init_logging(&config::LogConfig {
        level: "warn".into(),
        ..Default::default()
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dev = Dev::start(&options).await?;
        println!("{}", dev.banner());
        shutdown_signal().await;
        println!("stopping…");
        dev.shutdown().await
    })
}

/// Runs one client command on a fresh async runtime.
fn client(command: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(command)
}

async fn plugin(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::Upload { file, client } => {
            let cluster = client.cluster()?;
            let wasm = std::fs::read(&file)
                .with_context(|| format!("reading the plugin {}", file.display()))?;
            let upload = admin::upload_plugin(&cluster, wasm).await;
            print!("{}", clean(&upload.report.render()));
            upload.report.check()?;
            println!("{} is on every server", clean(&upload.report.what));
            print!("{}", clean(&upload.approval()));
            Ok(())
        }
        PluginCommand::List { client } => {
            let listing = admin::list_plugins(&client.cluster()?).await?;
            print_listing(listing)
        }
        PluginCommand::New { name, sdk } => {
            let options = authoring::NewOptions {
                name,
                parent: std::env::current_dir()?,
                sdk,
            };
            print!("{}", authoring::new_crate(&options)?.render());
            Ok(())
        }
        PluginCommand::Check {
            file,
            params,
            measurements,
        } => {
            let options = authoring::CheckOptions {
                file,
                params,
                measurements,
            };
            let report = tokio::task::spawn_blocking(move || authoring::check(&options)).await??;
            print!("{}", clean(&report.render()));
            if report.failed() > 0 {
                anyhow::bail!(
                    "check_failed: {} of {} checks failed",
                    report.failed(),
                    report.checks.len()
                );
            }
            Ok(())
        }
    }
}

async fn endpoint(command: EndpointCommand) -> anyhow::Result<()> {
    match command {
        EndpointCommand::Create {
            name,
            plugin,
            params,
            min_batch,
            max_reports_per_user,
            seal_every,
            seal_at,
            client,
        } => {
            let cluster = client.cluster()?;
            let params: serde_json::Value = serde_json::from_str(&params)
                .with_context(|| format!("--params is not JSON: {params}"))?;
            let new = admin::NewEndpoint {
                name,
                plugin,
                params,
                min_batch,
                max_reports_per_user,
                seal_every,
                seal_at,
            };
            let report = admin::create_endpoint(&cluster, &new).await;
            print!("{}", clean(&report.render()));
            report.check()?;
            println!("{} is on every server", clean(&report.what));
            Ok(())
        }
        EndpointCommand::List { client } => {
            let listing = admin::list_endpoints(&client.cluster()?).await?;
            print_listing(listing)
        }
    }
}

async fn batch(command: BatchCommand) -> anyhow::Result<()> {
    match command {
        BatchCommand::Delete {
            name,
            batch_id,
            client,
        } => {
            let report = admin::delete_batch(&client.cluster()?, &name, &batch_id).await;
            print!("{}", clean(&report.render()));
            report.check()?;
            println!("{} is deleted on every server", clean(&report.what));
            Ok(())
        }
    }
}

fn backup(file: Option<PathBuf>, dest: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let env = Environment::capture(&std::env::current_dir()?)?;
    let loaded = config::load(file.as_deref(), &env)?;
    let location = loaded
        .config
        .storage_location()
        .map_err(|why| anyhow::anyhow!("{why}"))?;
    let options = guardian::storage::backup::BackupOptions {
        force,
        ..Default::default()
    };
    let report = guardian::storage::backup::backup_location(&location, dest, &options)?;
    print!("{}", clean(&report.render()));
    Ok(())
}

fn print_listing(listing: admin::Listing) -> anyhow::Result<()> {
    print!("{}", clean(&listing.table));
    if listing.warnings.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "not every server agrees:\n  {}",
        clean(&listing.warnings.join("\n  "))
    )
}

async fn submit(
    name: String,
    value: Option<String>,
    file: Option<PathBuf>,
    errors: Option<PathBuf>,
    client: ClientArgs,
) -> anyhow::Result<()> {
    let cluster = client.cluster()?;
    if let Some(value) = value {
        let id = submit::submit_value(&cluster, &name, &value).await?;
        println!("report {id} stored on all {} servers", cluster.len());
        return Ok(());
    }
    let Some(file) = file else {
        anyhow::bail!("give --value JSON or --file FILE");
    };
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
    };
    let measurements = submit::parse_lines(&text);
    if measurements.is_empty() {
        anyhow::bail!("{} holds no measurements", file.display());
    }
    let summary = submit::submit_many(
        &cluster,
        &name,
        measurements,
        submit::SubmitOptions::default(),
    )
    .await?;
    if let Some(errors) = &errors {
        std::fs::write(errors, summary.failures_jsonl())
            .with_context(|| format!("writing the failed lines to {}", errors.display()))?;
    }
    print!("{}", clean(&summary.render(errors.as_deref())));
    match summary.failed_total() {
        0 => Ok(()),
        n => anyhow::bail!("{n} of {} reports failed", summary.sent),
    }
}

async fn collect(
    name: String,
    read: collect::Read,
    json: bool,
    client: ClientArgs,
) -> anyhow::Result<()> {
    let cluster = client.cluster()?;
    let collected = collect::collect(&cluster, &name, read).await?;
    if json {
        println!("{}", clean(&collected.to_json()));
    } else {
        print!("{}", clean(&collected.render()));
    }
    Ok(())
}

async fn serve_dashboard(listen: std::net::SocketAddr, client: ClientArgs) -> anyhow::Result<()> {
    let cluster = client.cluster()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!("cannot listen on {listen} (is it taken? choose another with --listen)")
        })?;
    let addr = listener.local_addr()?;
    println!("Dashboard: http://{addr}/ (Ctrl-C stops it)");
    dashboard::run(listener, cluster, shutdown_signal()).await
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn init_logging(
    log: &config::LogConfig,
) -> anyhow::Result<Option<tracing_appender::non_blocking::WorkerGuard>> {
    let filter = EnvFilter::try_new(&log.level)?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let (writer, guard) = match log.file_path() {
        Some(path) => {
            let dir = path.parent().map(PathBuf::from).unwrap_or_default();
            std::fs::create_dir_all(&dir)?;
            let name = path.file_name().map(PathBuf::from).unwrap_or_default();
            let appender = tracing_appender::rolling::never(dir, name);
            let (writer, guard) = tracing_appender::non_blocking(appender);
            (
                tracing_subscriber::fmt::writer::BoxMakeWriter::new(writer),
                Some(guard),
            )
        }
        None => (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
            None,
        ),
    };
    let builder = builder.with_writer(writer);
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(guard)
}

/// Keeps glibc's malloc at its default thresholds instead of letting it raise
/// them. By default, freeing a large block raises the size above which blocks get
/// their own mapping to that block's size (up to 32 MiB), and the size of free
/// memory kept before trimming to twice that; after the first multi-megabyte
/// buffer of a seal is freed, later ones stay resident in malloc's arenas once
/// freed. Measured on a million-report seal: peak RSS 154 / 125 MB per server
/// with the moving thresholds, 113 / 84 MB with fixed ones. Blocks of 128 KiB and
/// more (never on the per-report path) are mapped and unmapped on their own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn fix_malloc_thresholds() {
    // SAFETY: `mallopt` only changes malloc's tuning parameters and may be called
    // at any time; it is called once, first thing in `main`.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 10);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fix_malloc_thresholds() {}

/// Lets a one-shot command end quietly, as Unix tools do, when whatever reads
/// its output goes away (`guardian collect demo --json | head -c 10`). Rust
/// ignores `SIGPIPE`, so the next `println!` would panic on the broken pipe.
/// Servers keep ignoring it: a client closing a socket must never stop them.
#[cfg(unix)]
#[allow(unsafe_code)]
fn stop_quietly_on_closed_output() {
    // SAFETY: resetting one signal's disposition to the default, once, first
    // thing in `main`, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn stop_quietly_on_closed_output() {}

/// `--seal-every`: a duration such as `1h` or `90s`, at least a second and in
/// whole seconds.
fn parse_seal_every(text: &str) -> Result<std::time::Duration, String> {
    let every = humantime::parse_duration(text)
        .map_err(|e| format!("{e}: give a duration such as 1h, 30m or 1day"))?;
    if every.as_secs() == 0 || every.subsec_nanos() != 0 {
        return Err("give whole seconds, at least 1s (e.g. 1h, 30m, 90s)".to_owned());
    }
    Ok(every)
}

/// `--since`: a time in RFC 3339 form.
fn parse_since(text: &str) -> Result<std::time::SystemTime, String> {
    humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{e}: give a time such as 2026-01-31T00:00:00Z"))
}
