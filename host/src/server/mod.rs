//! The share server: HTTP API over storage and the plugin runtime.
//!
//! [`Server::start`] opens storage, registers the built-in plugins, reloads
//! uploaded plugins (from the compiled-artifact cache) and endpoints, binds the
//! listener and serves until [`Server::shutdown`]: then it stops accepting,
//! lets in-flight requests finish and flushes pending writes.
//!
//! [`router`] registers every handler through `utoipa_axum::routes!`, which also
//! adds it to the OpenAPI document served at `/api/v1/openapi.json`: a route
//! cannot be served without being documented (`openapi` has the rest).

pub mod auth;
mod batches;
mod error;
mod extract;
mod metrics;
mod openapi;
mod registry;
mod routes;
mod seal;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::{Extension, Router};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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

/// Every route, each added to the OpenAPI document as it is added to the router.
fn routes(state: &AppState) -> OpenApiRouter<Arc<AppState>> {
    let limits = &state.config.limits;
    let plugins = OpenApiRouter::new()
        .routes(routes!(routes::upload_plugin, routes::list_plugins))
        .layer(DefaultBodyLimit::max(limits.max_plugin_bytes));
    let api = OpenApiRouter::new()
        .routes(routes!(routes::openapi))
        .routes(routes!(routes::me))
        .merge(plugins)
        .routes(routes!(routes::get_plugin))
        .routes(routes!(routes::get_plugin_wasm))
        .routes(routes!(routes::create_endpoint, routes::list_endpoints))
        .routes(routes!(routes::get_endpoint, routes::delete_endpoint))
        .routes(routes!(routes::post_report))
        .routes(routes!(batches::seal_batch, batches::list_batches))
        .routes(routes!(batches::get_batch))
        .routes(routes!(batches::total));
    // Proposals carry up to `max_batch` report ids in base64.
    let peer_body = usize::try_from(state.config.endpoints.max_batch)
        .unwrap_or(usize::MAX)
        .saturating_mul(24)
        .saturating_add(1 << 20);
    let peer = OpenApiRouter::new()
        .routes(routes!(batches::peer_prepare))
        .routes(routes!(batches::peer_commit))
        .routes(routes!(batches::peer_abort))
        .layer(DefaultBodyLimit::max(peer_body));
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(routes::healthz))
        .routes(routes!(routes::readyz))
        .routes(routes!(routes::metrics))
        .nest("/api/v1", api)
        .nest("/peer/v1", peer)
}

fn router(state: Arc<AppState>) -> Router {
    let (router, document) = routes(&state).split_for_parts();
    let document = match document.to_json() {
        Ok(json) => routes::OpenApiJson(json.into()),
        // Serialising plain data structures cannot fail; should it, the route says so.
        Err(e) => {
            tracing::error!(error = %e, "the OpenAPI document cannot be serialised");
            routes::OpenApiJson(axum::body::Bytes::from_static(b"{}"))
        }
    };
    let limits = &state.config.limits;
    let cors = cors(&state.config.cors.allowed_origins);
    router
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(Extension(document))
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
