//! The `guardian` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Dev { servers, dir, port } => dev(DevOptions { servers, dir, port }),
        Command::Token {
            role,
            sub,
            ttl,
            issuer_dir,
        } => token(role, &sub, ttl, issuer_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
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
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = Server::start(loaded.config).await?;
        server.run_until(shutdown_signal()).await
    })
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
