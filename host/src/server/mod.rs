//! The share server: HTTP API over storage and the plugin runtime.
//!
//! [`Server::start`] opens storage (the SQLite file, or the PostgreSQL database
//! of `storage.url` that replicas of this server share), registers the built-in
//! plugins, reloads uploaded plugins (from the compiled-artifact cache) and
//! endpoints, binds the listener and serves until [`Server::shutdown`]: then it
//! stops accepting, lets in-flight requests finish and flushes pending writes.
//! Over a shared database a background task keeps the registry in step with
//! what the other replicas change (`registry`).
//!
//! Connections are served by our own accept loop over hyper's HTTP/1 (`serve`),
//! not `axum::serve`, because only hyper's builder sets the limits on a
//! connection: the request head size (`limits.max_header_bytes`, 431 beyond) and
//! the time to send it (`limits.header_read_timeout_ms`, which disconnects
//! slowloris clients). Each request carries its client's address
//! (`ConnectInfo<SocketAddr>`) for the per-IP rate limit (`rate_limit`), and
//! runs under `limits.request_timeout_ms`, body reading included, answered 408
//! `request_timeout` when exceeded.
//!
//! [`router`] registers every handler through `utoipa_axum::routes!`, which also
//! adds it to the OpenAPI document served at `/api/v1/openapi.json`: a route
//! cannot be served without being documented (`openapi` has the rest).

pub mod auth;
mod batches;
mod bulk;
mod error;
mod extract;
mod metrics;
mod openapi;
mod paging;
mod rate_limit;
mod registry;
mod report_time;
mod routes;
mod seal;
mod uploads;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt as _;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use self::error::ApiError;
use self::metrics::Metrics;
use self::registry::Registry;
pub(crate) use self::routes::parse_report_body;
pub use self::routes::{config_hash, scheduled_config_hash};
pub use self::seal::FAULT_VAR;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, LimitsConfig};
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
    /// Per-user and per-IP limits on posting reports.
    rate_limits: rate_limit::RateLimits,
    /// The time of day for every decision by time (tests inject a manual one).
    clock: Arc<dyn Clock>,
}

/// How often the rate limiters forget the keys whose allowance is full again.
const RATE_LIMIT_CLEANUP: Duration = Duration::from_secs(60);

/// How often a replica reads what the other replicas of its server changed
/// (endpoints created or deleted, plugins uploaded): two cheap reads.
const REGISTRY_REFRESH: Duration = Duration::from_secs(1);

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
        Self::start_with_clock(config, auth, Arc::new(SystemClock)).await
    }

    /// [`Server::start_with`] on a given clock (tests drive time with a
    /// [`crate::clock::ManualClock`]).
    pub async fn start_with_clock(
        config: Config,
        auth: Box<dyn auth::Authenticator>,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Server> {
        let data_dir = config.server.data_dir();
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
        let metrics = Arc::new(Metrics::new());
        let observer = metrics.clone();
        let location = config
            .storage_location()
            .map_err(|why| anyhow::anyhow!("{why}"))?;
        let storage = Storage::connect(
            &location,
            StorageOptions {
                read_connections: config.storage.read_connections,
                busy_timeout: std::time::Duration::from_millis(config.storage.busy_timeout_ms),
                commit_observer: Some(Arc::new(move |stats| observer.observe_commit(stats))),
                ..StorageOptions::default()
            },
        )
        .await
        .with_context(|| format!("opening the database {location}"))?;
        tracing::info!(%location, "storage open");
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
            (
                config.limits.plugin_compile_concurrency,
                config.limits.plugin_compile_timeout(),
            ),
            &config.plugins.approved_digests(),
            metrics.clone(),
        )
        .await?;

        let peer_auth = crate::auth::peer::PeerAuth::from_config(&config.auth)?;
        let sealer = Arc::new(seal::Sealer::new(&config)?);
        let listener = tokio::net::TcpListener::bind(config.server.listen_addr())
            .await
            .with_context(|| format!("listening on {}", config.server.listen_addr()))?;
        let addr = listener.local_addr()?;
        let rate_limits = rate_limit::RateLimits::new(&config.limits);
        let limits = config.limits.clone();
        let state = Arc::new(AppState {
            config,
            storage: storage.clone(),
            registry,
            metrics,
            auth,
            peer_auth,
            sealer,
            rate_limits,
            clock,
        });
        let mut background = tokio::task::JoinSet::new();
        if state.config.server.is_coordinator() {
            background.spawn(seal::retry_decided(state.clone()));
            background.spawn(seal::run_schedule(state.clone()));
        }
        background.spawn(seal::expire_reports(state.clone()));
        background.spawn(forget_idle_rate_limit_keys(state.clone()));
        if state.registry.is_shared() {
            background.spawn(learn_from_replicas(state.clone()));
        }
        let app = router(state);
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(listener, app, &limits, async {
                let _ = signal.await;
            })
            .await;
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

/// Serves HTTP/1 connections from `listener` with `app` until `shutdown`
/// completes; then stops accepting and waits for every connection to finish its
/// in-flight request (idle keep-alive connections are closed at once).
async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &LimitsConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits.header_read_timeout())
        .max_header_size(limits.max_header_bytes)
        // The read buffer bounds a head that never completes; hyper's minimum is 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(MIN_READ_BUFFER));
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers are written whole; waiting to coalesce them only adds latency.
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request)
        });
        let connection = connections.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A client that goes away or breaks the protocol ends only its connection.
            if let Err(error) = connection.await {
                tracing::debug!(%peer, error = &error as &dyn std::error::Error, "connection ended");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
}

/// Smallest read buffer hyper accepts.
const MIN_READ_BUFFER: usize = 8 << 10;

/// After a failed `accept`: errors of one connection (reset before it was
/// accepted) are skipped; others, such as running out of file descriptors, would
/// repeat at once, so wait a little first instead of spinning.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::warn!(
        error = &error as &dyn std::error::Error,
        "accepting a connection failed"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Periodically drops the rate limiters' idle keys, so that their memory follows
/// the clients active within one burst period, not every client ever seen.
async fn forget_idle_rate_limit_keys(state: Arc<AppState>) {
    let mut every = tokio::time::interval(RATE_LIMIT_CLEANUP);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        state.rate_limits.retain_recent();
    }
}

/// Keeps the registry in step with the database that other replicas of this
/// server write too (see `registry`): an endpoint deleted through another
/// replica stops taking reports here within about [`REGISTRY_REFRESH`]. A
/// failing database is logged once when it starts failing and once when it
/// works again, not every second.
async fn learn_from_replicas(state: Arc<AppState>) {
    let mut every = tokio::time::interval(REGISTRY_REFRESH);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        every.tick().await;
        match state.registry.refresh().await {
            Ok(refreshed) => {
                if failing {
                    tracing::info!("the endpoints are read from the database again");
                    failing = false;
                }
                if refreshed != registry::Refreshed::default() {
                    tracing::info!(
                        learned = refreshed.learned,
                        dropped = refreshed.dropped,
                        plugins = refreshed.plugins,
                        "learned what other replicas changed"
                    );
                }
            }
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "reading the endpoints other replicas changed failed; retrying every second"
                );
            }
            Err(_) => {}
        }
    }
}

/// Runs a request under `limits.request_timeout_ms`, reading its body included
/// (extractors run inside), so a body trickling in slower is cut off too. The
/// handler is dropped at the deadline, like a client that went away.
async fn request_timeout(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request took longer than {} ms (limits.request_timeout_ms), reading its body included",
                timeout.as_millis()
            ),
        )
        .into_response(),
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
        .merge(
            OpenApiRouter::new()
                .routes(routes!(bulk::post_reports))
                .layer(DefaultBodyLimit::max(limits.max_bulk_body_bytes)),
        )
        .routes(routes!(batches::seal_batch, batches::list_batches))
        .routes(routes!(batches::get_batch, batches::delete_batch))
        .routes(routes!(batches::total));
    // Decisions carry two bitmaps over up to `max_batch` proposed reports (the
    // agreed and the rejected), in base64 (proposals are read as a stream and
    // counted by the handler); verifier messages come in parts of at most 1 MiB.
    let peer_body = usize::try_from(state.config.endpoints.max_batch)
        .unwrap_or(usize::MAX)
        .div_ceil(3)
        .saturating_add(2 << 20);
    let peer = OpenApiRouter::new()
        .routes(routes!(batches::peer_prepare))
        .routes(routes!(batches::peer_commit))
        .routes(routes!(batches::peer_recommit))
        .routes(routes!(batches::peer_verify))
        .routes(routes!(batches::peer_messages))
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
    let router = router
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(Extension(document))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            limits.request_timeout(),
            request_timeout,
        ));
    // No origin allowed: no layer, so no CORS work or `vary` headers on every
    // response (a browser refuses a cross-origin answer without them anyway).
    let origins = &state.config.cors.allowed_origins;
    let router = if origins.is_empty() {
        router
    } else {
        router.layer(cors(origins))
    };
    router.with_state(state)
}

fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
        ])
        // A browser client honours a 429's `Retry-After` only if it may read it.
        .expose_headers([axum::http::header::RETRY_AFTER]);
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
