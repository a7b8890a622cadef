//! The share server: HTTP API over storage and the plugin runtime.
//!
//! [`Server::start`] opens storage, registers the built-in plugins, reloads
//! uploaded plugins (from the compiled-artifact cache) and endpoints, binds the
//! listener and serves until [`Server::shutdown`]: then it stops accepting,
//! lets in-flight requests finish and flushes pending writes.

pub mod auth;
mod batches;
mod error;
mod extract;
mod metrics;
mod registry;
mod routes;
mod seal;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::routing::{get, post};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::TimeoutLayer;

pub use self::error::ApiError;
use self::metrics::Metrics;
use self::registry::Registry;
pub use self::routes::config_hash;
pub use self::seal::FAULT_VAR;
use crate::config::Config;
use crate::runtime::{Runtime, RuntimeOptions};
use crate::storage::{Storage, StorageOptions};

/// Everything a handler can reach.
pub struct AppState {
    config: Config,
    storage: Storage,
    registry: Registry,
    metrics: Arc<Metrics>,
    auth: Box<dyn auth::Authenticator>,
    peer_auth: crate::auth::peer::PeerAuth,
    sealer: Arc<seal::Sealer>,
}

/// A running share server.
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Starts serving according to `config` (port 0 picks a free port).
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        let authenticator = crate::auth::authenticator_from_config(&config.auth).await?;
        Self::start_with(config, authenticator).await
    }

    /// [`Server::start`] with a given authenticator.
    pub async fn start_with(
        config: Config,
        auth: Box<dyn auth::Authenticator>,
    ) -> anyhow::Result<Server> {
        let data_dir = config.server.data_dir();
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
        let metrics = Arc::new(Metrics::new());
        let observer = metrics.clone();
        let storage_path = config.storage_path();
        let storage = Storage::open(
            &storage_path,
            StorageOptions {
                read_connections: config.storage.read_connections,
                busy_timeout: std::time::Duration::from_millis(config.storage.busy_timeout_ms),
                commit_observer: Some(Arc::new(move |stats| observer.observe_commit(stats))),
                ..StorageOptions::default()
            },
        )
        .await
        .with_context(|| format!("opening {}", storage_path.display()))?;
        let runtime = Runtime::new(RuntimeOptions {
            deadline: config.limits.plugin_deadline(),
            memory_bytes: config.limits.plugin_memory_bytes,
            output_bytes: config.limits.plugin_output_bytes,
            cache_dir: Some(config.plugin_cache_dir()),
            ..RuntimeOptions::default()
        })?;
        let registry = Registry::start(
            Arc::new(runtime),
            &storage,
            config.limits.plugin_concurrency(),
            metrics.clone(),
        )
        .await?;

        let peer_auth = crate::auth::peer::PeerAuth::from_config(&config.auth)?;
        let sealer = Arc::new(seal::Sealer::new(&config)?);
        let listener = tokio::net::TcpListener::bind(config.server.listen_addr())
            .await
            .with_context(|| format!("listening on {}", config.server.listen_addr()))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(AppState {
            config,
            storage: storage.clone(),
            registry,
            metrics,
            auth,
            peer_auth,
            sealer,
        });
        let mut background = tokio::task::JoinSet::new();
        if state.config.server.is_coordinator() {
            background.spawn(seal::retry_decided(state.clone()));
        }
        background.spawn(seal::expire_reports(state.clone()));
        let app = router(state);
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = signal.await;
                })
                .await?;
            // A seal cut short here is like a crash: its decision, if any, is stored
            // and completed after the restart.
            background.shutdown().await;
            // Every handler has finished: commit what is queued, then stop.
            storage.close().await?;
            Ok(())
        });
        tracing::info!(%addr, "share server listening");
        Ok(Server {
            addr,
            shutdown: Some(shutdown),
            task,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, finishes in-flight requests, flushes storage.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task.await?
    }

    /// Runs until `signal` completes, then shuts down gracefully.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        signal.await;
        tracing::info!("shutting down: finishing in-flight requests");
        self.shutdown().await
    }
}

fn router(state: Arc<AppState>) -> Router {
    let limits = &state.config.limits;
    let api = Router::new()
        .route("/me", get(routes::me))
        .route(
            "/plugins",
            post(routes::upload_plugin)
                .get(routes::list_plugins)
                .layer(DefaultBodyLimit::max(limits.max_plugin_bytes)),
        )
        .route("/plugins/{digest}", get(routes::get_plugin))
        .route("/plugins/{digest}/wasm", get(routes::get_plugin_wasm))
        .route(
            "/endpoints",
            post(routes::create_endpoint).get(routes::list_endpoints),
        )
        .route(
            "/endpoints/{name}",
            get(routes::get_endpoint).delete(routes::delete_endpoint),
        )
        .route("/endpoints/{name}/reports", post(routes::post_report))
        .route(
            "/endpoints/{name}/batches",
            post(batches::seal_batch).get(batches::list_batches),
        )
        .route(
            "/endpoints/{name}/batches/{batch_id}",
            get(batches::get_batch),
        )
        .route("/endpoints/{name}/total", get(batches::total));
    // Proposals carry up to `max_batch` report ids in base64.
    let peer_body = usize::try_from(state.config.endpoints.max_batch)
        .unwrap_or(usize::MAX)
        .saturating_mul(24)
        .saturating_add(1 << 20);
    let peer = Router::new()
        .route("/endpoints/{name}/prepare", post(batches::peer_prepare))
        .route("/endpoints/{name}/commit", post(batches::peer_commit))
        .route("/endpoints/{name}/abort", post(batches::peer_abort))
        .layer(DefaultBodyLimit::max(peer_body));
    let cors = cors(&state.config.cors.allowed_origins);
    Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .nest("/api/v1", api)
        .nest("/peer/v1", peer)
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout(),
        ))
        .layer(cors)
        .with_state(state)
}

fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
        ]);
    if origins.iter().any(|o| o == "*") {
        layer.allow_origin(AllowOrigin::any())
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        layer.allow_origin(AllowOrigin::list(list))
    }
}
