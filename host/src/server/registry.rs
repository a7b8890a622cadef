//! Loaded plugins and endpoints, kept in memory so the report path never
//! compiles anything or looks a name up in the database.
//!
//! Storage is the truth; these maps mirror it and are updated by the same
//! handlers that write it. On SQLite only this process writes its database, so
//! that is all. Replicas over one PostgreSQL database also learn what the others
//! wrote: a lookup that misses reads storage ([`Registry::endpoint_or_load`],
//! [`Registry::plugin_or_load`]), and [`Registry::refresh`], about every second,
//! drops the endpoints deleted elsewhere and picks up the ones created or
//! replaced elsewhere. A plugin uploaded through another replica is compiled
//! here from the bytes in the database, once per replica (the compiled-artifact
//! cache is this replica's own). A hit costs no query: the report path to a
//! known endpoint reads only memory.
//!
//! The registry also knows which plugins this server's operator approved
//! (`plugins.approved` plus the built-ins), fixed for the life of the process:
//! approving or revoking a plugin is a configuration change and a restart.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::error::{ApiError, plugin_failure};
use super::metrics::{CallLabel, Metrics};
use super::uploads::{Plugins, Uploads, record};
use crate::runtime::{CallError, LoadError, Plugin, Runtime, builtins::BUILTINS};
use crate::storage::{Endpoint, Storage, StorageError};

/// An endpoint with its plugin, ready for the report path.
pub(super) struct LiveEndpoint {
    pub(super) endpoint: Endpoint,
    pub(super) plugin: Plugin,
    /// Whether this server's operator approves the endpoint's plugin; reports
    /// are refused while not (an approval revoked since the endpoint was made).
    pub(super) approved: bool,
    budget: InlineBudget,
}

/// Whether an endpoint's `validate` still runs inline; see [`Registry::validate`].
#[derive(Default)]
struct InlineBudget {
    /// Set once a `validate` used more than [`INLINE_BUDGET`] of processor time.
    slow: AtomicBool,
    /// The last inline `validate` took longer than [`INLINE_BUDGET`] in wall
    /// time: the next one measures its processor time.
    suspect: AtomicBool,
}

impl InlineBudget {
    /// Before an inline call: whether to measure it, and its thread's processor
    /// time so far if so.
    fn start(&self) -> (bool, Option<Duration>) {
        let measured = self.suspect.load(Ordering::Relaxed);
        (measured, if measured { thread_cpu_time() } else { None })
    }

    /// After an inline call that took `elapsed`, given what [`Self::start`]
    /// said; `used` gives the processor time it used. Returns whether this call
    /// moved the endpoint off the inline path.
    fn finish(
        &self,
        (measured, _): (bool, Option<Duration>),
        elapsed: Duration,
        used: impl FnOnce() -> Duration,
    ) -> bool {
        let over = elapsed > INLINE_BUDGET;
        self.suspect.store(over, Ordering::Relaxed);
        over && measured && used() > INLINE_BUDGET && !self.slow.swap(true, Ordering::Relaxed)
    }
}

/// Longest `validate` tolerated on an async thread.
const INLINE_BUDGET: Duration = Duration::from_millis(2);

pub(super) struct Registry {
    runtime: Arc<Runtime>,
    plugins: Plugins,
    uploads: Arc<Uploads>,
    builtin_names: HashMap<String, [u8; 32]>,
    /// Digests of the plugins that may collect reports here: the built-ins and
    /// `plugins.approved`.
    approved: HashSet<[u8; 32]>,
    endpoints: RwLock<HashMap<String, Arc<LiveEndpoint>>>,
    calls: Semaphore,
    metrics: Arc<Metrics>,
    /// Held while an endpoint is created: caps are checked and kept at once.
    creating: tokio::sync::Mutex<()>,
    /// The database, read for what other replicas wrote.
    storage: Storage,
    /// Whether other processes write this database too (replicas over
    /// PostgreSQL): only then do misses and [`Registry::refresh`] read storage.
    shared: bool,
    /// Bumped (under the endpoints' write lock) by every change made to the
    /// endpoints outside [`Registry::refresh`] (this process's creations and
    /// deletions, lookups that loaded one), so that a refresh whose snapshot may
    /// predate one is not applied; the next refresh is.
    changes: AtomicU64,
    /// Held while a stored plugin is compiled, so that lookups missing at once
    /// compile it once.
    loading: tokio::sync::Mutex<()>,
    /// Digests of stored plugins that did not load here, so that refreshes do
    /// not compile them again and again (each failure was logged once).
    unloadable: Mutex<HashSet<[u8; 32]>>,
}

/// What one [`Registry::refresh`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refreshed {
    /// Endpoints created (or replaced) through another replica, now live here.
    pub(super) learned: usize,
    /// Endpoints deleted through another replica, now gone here.
    pub(super) dropped: usize,
    /// Plugins uploaded through another replica, now compiled here.
    pub(super) plugins: usize,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    /// Registers the built-ins, then loads every stored plugin (from the
    /// artifact cache: no recompilation) and every endpoint. `approved` are the
    /// digests of the uploaded plugins the operator approved.
    pub(super) async fn start(
        runtime: Arc<Runtime>,
        storage: &Storage,
        concurrency: usize,
        (compile_concurrency, compile_budget): (usize, Duration),
        approved: &[[u8; 32]],
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut plugins = HashMap::new();
        let mut builtin_names = HashMap::new();
        let mut approved: HashSet<[u8; 32]> = approved.iter().copied().collect();
        for (name, wasm) in BUILTINS {
            let plugin = load_blocking(&runtime, wasm.to_vec()).await?;
            storage
                .put_plugin(record(&plugin, wasm.to_vec(), true))
                .await?;
            builtin_names.insert((*name).to_owned(), plugin.digest());
            approved.insert(plugin.digest());
            plugins.insert(plugin.digest(), plugin);
        }
        for info in storage.list_plugins().await? {
            if plugins.contains_key(&info.digest) {
                continue;
            }
            let Some(wasm) = storage.plugin_wasm(info.digest).await? else {
                continue;
            };
            match load_blocking(&runtime, wasm).await {
                Ok(plugin) => {
                    plugins.insert(info.digest, plugin);
                }
                Err(e) => {
                    tracing::error!(digest = %hex::encode(info.digest), error = %e, "a stored plugin no longer loads")
                }
            }
        }
        let mut endpoints = HashMap::new();
        for endpoint in storage.list_endpoints().await? {
            match plugins.get(&endpoint.record.plugin_digest) {
                Some(plugin) => {
                    let live = LiveEndpoint {
                        plugin: plugin.clone(),
                        approved: approved.contains(&endpoint.record.plugin_digest),
                        endpoint,
                        budget: InlineBudget::default(),
                    };
                    if !live.approved {
                        tracing::warn!(endpoint = %live.endpoint.record.name, plugin = %hex::encode(live.endpoint.record.plugin_digest), "the endpoint's plugin is not approved (plugins.approved): its reports are refused");
                    }
                    endpoints.insert(live.endpoint.record.name.clone(), Arc::new(live));
                }
                None => {
                    tracing::error!(endpoint = %endpoint.record.name, "the endpoint's plugin is not loaded; it is unavailable")
                }
            }
        }
        let plugins: Plugins = Arc::new(RwLock::new(plugins));
        Ok(Self {
            storage: storage.clone(),
            shared: storage.sqlite_path().is_none(),
            changes: AtomicU64::new(0),
            loading: tokio::sync::Mutex::new(()),
            unloadable: Mutex::new(HashSet::new()),
            uploads: Arc::new(Uploads::new(
                runtime.clone(),
                plugins.clone(),
                compile_concurrency,
                compile_budget,
            )),
            runtime,
            plugins,
            builtin_names,
            approved,
            endpoints: RwLock::new(endpoints),
            calls: Semaphore::new(concurrency.max(1)),
            metrics,
            creating: tokio::sync::Mutex::new(()),
        })
    }

    pub(super) fn runtime_stats(&self) -> crate::runtime::RuntimeStats {
        self.runtime.stats()
    }

    /// A loaded plugin by reference (see [`Registry::resolve`]); a digest this
    /// server does not hold is `unknown_plugin`.
    pub(super) fn plugin(&self, reference: &str) -> Result<Plugin, ApiError> {
        let digest = self.resolve(reference)?;
        read(&self.plugins).get(&digest).cloned().ok_or_else(|| {
            ApiError::not_found(
                "unknown_plugin",
                format!("no plugin with digest {}", hex::encode(digest)),
            )
        })
    }

    /// The digest a plugin reference names: a digest (64 hex digits, returned
    /// as is: the caller looks it up), a built-in's name or `name@version`, or
    /// an uploaded plugin's `name@version` or `name`. See [`resolve`] for the
    /// rules and the errors.
    pub(super) fn resolve(&self, reference: &str) -> Result<[u8; 32], ApiError> {
        let plugins = read(&self.plugins);
        let builtins: HashMap<[u8; 32], &str> = self
            .builtin_names
            .iter()
            .map(|(name, digest)| (*digest, name.as_str()))
            .collect();
        let known: Vec<Known<'_>> = plugins
            .iter()
            .map(|(digest, plugin)| match builtins.get(digest) {
                Some(name) => Known {
                    name,
                    version: &plugin.info().version,
                    digest: *digest,
                    builtin: true,
                },
                None => Known {
                    name: &plugin.info().name,
                    version: &plugin.info().version,
                    digest: *digest,
                    builtin: false,
                },
            })
            .collect();
        resolve(reference, &known)
    }

    /// Whether this server's operator approves the plugin with this digest (the
    /// built-ins always).
    pub(super) fn is_approved(&self, digest: &[u8; 32]) -> bool {
        self.approved.contains(digest)
    }

    /// Compiles and type-checks an upload, stores it, and makes it callable (see
    /// [`Uploads`]). Returns the plugin and whether it was new.
    pub(super) async fn upload(
        &self,
        storage: &Storage,
        wasm: Vec<u8>,
    ) -> Result<(Plugin, bool), ApiError> {
        let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&wasm).into();
        if let Some(plugin) = read(&self.plugins).get(&digest).cloned() {
            return Ok((plugin, false));
        }
        self.uploads.upload(storage, digest, wasm).await
    }

    /// The lock under which endpoints are created.
    pub(super) async fn creating(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.creating.lock().await
    }

    pub(super) fn endpoint(&self, name: &str) -> Option<Arc<LiveEndpoint>> {
        read(&self.endpoints).get(name).cloned()
    }

    /// Every live endpoint.
    pub(super) fn endpoints(&self) -> Vec<Arc<LiveEndpoint>> {
        read(&self.endpoints).values().cloned().collect()
    }

    /// The live endpoint with this storage id, if loaded.
    pub(super) fn endpoint_by_id(
        &self,
        id: crate::storage::EndpointId,
    ) -> Option<Arc<LiveEndpoint>> {
        read(&self.endpoints)
            .values()
            .find(|live| live.endpoint.id == id)
            .cloned()
    }

    pub(super) fn set_endpoint(&self, endpoint: Endpoint, plugin: Plugin) {
        let live = self.live(endpoint, plugin);
        let mut endpoints = write(&self.endpoints);
        self.changes.fetch_add(1, Ordering::Relaxed);
        endpoints.insert(live.endpoint.record.name.clone(), live);
    }

    pub(super) fn remove_endpoint(&self, name: &str) {
        let mut endpoints = write(&self.endpoints);
        self.changes.fetch_add(1, Ordering::Relaxed);
        endpoints.remove(name);
    }

    fn live(&self, endpoint: Endpoint, plugin: Plugin) -> Arc<LiveEndpoint> {
        Arc::new(LiveEndpoint {
            approved: self.is_approved(&endpoint.record.plugin_digest),
            endpoint,
            plugin,
            budget: InlineBudget::default(),
        })
    }

    /// Whether other processes (replicas) write this server's database, so that
    /// [`Registry::refresh`] has something to learn.
    pub(super) fn is_shared(&self) -> bool {
        self.shared
    }

    /// The endpoint `name`, from memory; on a miss, when replicas share the
    /// database, from storage (created through another replica since the last
    /// refresh), with its plugin compiled here if need be. A hit costs no query.
    pub(super) async fn endpoint_or_load(
        &self,
        name: &str,
    ) -> Result<Option<Arc<LiveEndpoint>>, ApiError> {
        if let Some(live) = self.endpoint(name) {
            return Ok(Some(live));
        }
        if !self.shared {
            return Ok(None);
        }
        let before = self.changes.load(Ordering::Relaxed);
        let Some(endpoint) = self.storage.get_endpoint(name).await? else {
            return Ok(None);
        };
        let Some(plugin) = self.stored_plugin(endpoint.record.plugin_digest).await? else {
            return Ok(None);
        };
        let mut endpoints = write(&self.endpoints);
        // A refresh or this process may have put it (or a newer one) there meanwhile.
        if let Some(live) = endpoints.get(name) {
            return Ok(Some(live.clone()));
        }
        let live = self.live(endpoint, plugin);
        // Kept only if this process changed no endpoint meanwhile (it may have
        // deleted this one after it was read); else the next refresh decides.
        if self.changes.load(Ordering::Relaxed) == before {
            self.changes.fetch_add(1, Ordering::Relaxed);
            endpoints.insert(name.to_owned(), live.clone());
        }
        Ok(Some(live))
    }

    /// [`Registry::plugin`]; when replicas share the database and this one does
    /// not hold the plugin named, it first compiles the plugins uploaded through
    /// the others.
    pub(super) async fn plugin_or_load(&self, reference: &str) -> Result<Plugin, ApiError> {
        match self.plugin(reference) {
            Err(e) if self.shared && e.code == "unknown_plugin" => {
                self.learn_plugins().await?;
                self.plugin(reference)
            }
            found => found,
        }
    }

    /// The stored plugin with this digest, compiled here if this replica has not
    /// yet; `None` if it is not stored, or does not load (logged once).
    async fn stored_plugin(&self, digest: [u8; 32]) -> Result<Option<Plugin>, StorageError> {
        if let Some(plugin) = read(&self.plugins).get(&digest).cloned() {
            return Ok(Some(plugin));
        }
        let _loading = self.loading.lock().await;
        if let Some(plugin) = read(&self.plugins).get(&digest).cloned() {
            return Ok(Some(plugin));
        }
        if self
            .unloadable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&digest)
        {
            return Ok(None);
        }
        let Some(wasm) = self.storage.plugin_wasm(digest).await? else {
            return Ok(None);
        };
        match load_blocking(&self.runtime, wasm).await {
            Ok(plugin) => {
                write(&self.plugins).insert(digest, plugin.clone());
                tracing::info!(digest = %hex::encode(digest), name = %plugin.info().name, "compiled a plugin stored through another replica");
                Ok(Some(plugin))
            }
            Err(e) => {
                tracing::error!(digest = %hex::encode(digest), error = %e, "a stored plugin does not load here; its endpoints are unavailable on this replica");
                self.unloadable
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(digest);
                Ok(None)
            }
        }
    }

    /// Compiles the stored plugins this replica does not hold yet; returns how
    /// many.
    async fn learn_plugins(&self) -> Result<usize, StorageError> {
        let mut learned = 0;
        for info in self.storage.list_plugins().await? {
            if read(&self.plugins).contains_key(&info.digest) {
                continue;
            }
            if self.stored_plugin(info.digest).await?.is_some() {
                learned += 1;
            }
        }
        Ok(learned)
    }

    /// Brings the maps up to date with the database that other replicas write
    /// too: plugins uploaded elsewhere are compiled; endpoints deleted elsewhere
    /// are dropped; endpoints created elsewhere, or deleted and created again
    /// under their name (a new id), are put live. Endpoints unchanged keep their
    /// entry (and its inline budget). Two reads: the plugins' list and the
    /// endpoints' list. Does nothing when no other process writes the database.
    pub(super) async fn refresh(&self) -> Result<Refreshed, StorageError> {
        let mut refreshed = Refreshed::default();
        if !self.shared {
            return Ok(refreshed);
        }
        refreshed.plugins = self.learn_plugins().await?;
        let before = self.changes.load(Ordering::Relaxed);
        let stored = self.storage.list_endpoints().await?;
        let new: Vec<Endpoint> = {
            let endpoints = read(&self.endpoints);
            stored
                .iter()
                .filter(|e| {
                    endpoints
                        .get(&e.record.name)
                        .is_none_or(|live| live.endpoint.id != e.id)
                })
                .cloned()
                .collect()
        };
        let mut learned = Vec::with_capacity(new.len());
        for endpoint in new {
            if let Some(plugin) = self.stored_plugin(endpoint.record.plugin_digest).await? {
                learned.push(self.live(endpoint, plugin));
            }
        }
        let names: HashSet<&str> = stored.iter().map(|e| e.record.name.as_str()).collect();
        let mut endpoints = write(&self.endpoints);
        if self.changes.load(Ordering::Relaxed) != before {
            // This process changed an endpoint while the list was read: the
            // list may be older than that change. The next refresh applies.
            return Ok(refreshed);
        }
        let had = endpoints.len();
        endpoints.retain(|name, _| names.contains(name.as_str()));
        refreshed.dropped = had - endpoints.len();
        refreshed.learned = learned.len();
        for live in learned {
            endpoints.insert(live.endpoint.record.name.clone(), live);
        }
        Ok(refreshed)
    }

    /// Validates one report (its public share and this server's share) for
    /// `live`'s endpoint; returns what to store: the share, or for a robust
    /// endpoint the public share and the share together
    /// ([`super::seal::stored_report`]).
    ///
    /// A thread hand-off costs several times more than a normal `validate`
    /// (about a microsecond), so it runs on the calling thread. A plugin whose
    /// `validate` takes longer than [`INLINE_BUDGET`] is moved for good to the
    /// blocking pool, so a slow or hostile plugin can hold an async thread at
    /// most twice, each time for at most the plugin deadline; so is one that
    /// needs WASI I/O (see below). "Takes" is processor time of the calling
    /// thread where the system tells it: under load a call is often preempted
    /// for longer than the budget, and counting that moved busy endpoints to the
    /// blocking pool for good (a thread hand-off per report, which halved the
    /// ingest rate on two cores). Reading it is a system call, so only the call
    /// after one over the budget in wall time reads it.
    pub(super) async fn validate(
        &self,
        live: &Arc<LiveEndpoint>,
        public_share: Vec<u8>,
        share: Vec<u8>,
        server_index: u32,
    ) -> Result<Vec<u8>, ApiError> {
        if !live.budget.slow.load(Ordering::Relaxed) {
            let started = Instant::now();
            let measure = live.budget.start();
            // A plugin that touches WASI I/O (a panic message written to
            // stderr) needs a thread that may block on the WASI runtime; on an
            // async thread that panics inside the host, the instance is
            // dropped, and the call is redone on the blocking pool below.
            let inline = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                live.plugin.validate_report(
                    &live.endpoint.record.config,
                    &public_share,
                    &share,
                    server_index,
                )
            }));
            let elapsed = started.elapsed();
            match inline {
                Ok(result) => {
                    let used = || match (measure.1, thread_cpu_time()) {
                        (Some(start), Some(end)) => end.saturating_sub(start),
                        _ => elapsed,
                    };
                    if live.budget.finish(measure, elapsed, used) {
                        tracing::warn!(endpoint = %live.endpoint.record.name, ?elapsed, "slow validate: this endpoint's plugin calls now run on the blocking pool");
                    }
                    self.metrics
                        .plugin_call_seconds
                        .get_or_create(&CallLabel { call: "validate" })
                        .observe(elapsed.as_secs_f64());
                    return result
                        .map(|()| stored(live, &public_share, share))
                        .map_err(plugin_failure);
                }
                Err(_) => {
                    live.budget.slow.store(true, Ordering::Relaxed);
                    tracing::warn!(endpoint = %live.endpoint.record.name, "validate needed WASI I/O: this endpoint's plugin calls now run on the blocking pool");
                }
            }
        }
        let call_live = live.clone();
        let share = self
            .call("validate", move || {
                call_live
                    .plugin
                    .validate_report(
                        &call_live.endpoint.record.config,
                        &public_share,
                        &share,
                        server_index,
                    )
                    .map(|()| (public_share, share))
            })
            .await?;
        Ok(stored(live, &share.0, share.1))
    }

    /// Runs a plugin call on a blocking thread, at most `concurrency` at once,
    /// and records its latency.
    pub(super) async fn call<T: Send + 'static>(
        &self,
        call: &'static str,
        f: impl FnOnce() -> Result<T, CallError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let _permit =
            self.calls.acquire().await.map_err(|_| {
                ApiError::unavailable("shutting_down", "the server is shutting down")
            })?;
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ApiError::internal("running a plugin call", &e))?;
        self.metrics
            .plugin_call_seconds
            .get_or_create(&CallLabel { call })
            .observe(started.elapsed().as_secs_f64());
        result.map_err(plugin_failure)
    }
}

async fn load_blocking(runtime: &Arc<Runtime>, wasm: Vec<u8>) -> Result<Plugin, LoadError> {
    let runtime = runtime.clone();
    tokio::task::spawn_blocking(move || runtime.load(&wasm))
        .await
        .map_err(|e| LoadError::Internal(e.to_string()))?
}

/// What to store of a validated report: the share, or for a robust endpoint the
/// public share and the share together.
fn stored(live: &LiveEndpoint, public_share: &[u8], share: Vec<u8>) -> Vec<u8> {
    if live.plugin.robust() {
        super::seal::stored_report(public_share, &share)
    } else {
        share
    }
}

/// A plugin this server holds, as a reference can name it.
#[derive(Clone, Copy, Debug)]
struct Known<'a> {
    /// The built-in's name, or the name an uploaded plugin declares.
    name: &'a str,
    /// The version the plugin declares.
    version: &'a str,
    digest: [u8; 32],
    builtin: bool,
}

impl Known<'_> {
    fn describe(&self) -> String {
        let kind = if self.builtin { ", built-in" } else { "" };
        format!(
            "{}@{} (digest {}{kind})",
            self.name,
            self.version,
            hex::encode(self.digest)
        )
    }
}

/// How many plugins an `unknown_plugin` message lists at most.
const LISTED: usize = 20;

/// The digest `reference` names among `known`, in this order:
///
/// 1. 64 hex digits: that digest, as is (the caller looks it up, so a stored
///    plugin that no longer loads is still found by its digest).
/// 2. A built-in's name or `name@version`: the built-in. Built-ins always win,
///    so `sum` keeps meaning the built-in even after someone uploads a plugin
///    that calls itself `sum`; such an upload is named by its version (if it
///    differs) or its digest.
/// 3. An uploaded plugin's `name@version`, then its bare `name`: the plugin, if
///    exactly one matches; several are `ambiguous_plugin` (409: the reference
///    is well formed, but what this server holds leaves it open), listing each
///    one's `name@version` and digest.
///
/// Anything else is `unknown_plugin` (404), listing the plugins of that name,
/// or when there are none the names this server knows.
fn resolve(reference: &str, known: &[Known<'_>]) -> Result<[u8; 32], ApiError> {
    if let Some(digest) = parse_digest(reference) {
        return Ok(digest);
    }
    let full = |k: &Known<'_>| format!("{}@{}", k.name, k.version) == reference;
    let mut sorted = known.to_vec();
    sorted.sort_by(|a, b| (a.name, a.version, a.digest).cmp(&(b.name, b.version, b.digest)));
    let known = sorted;
    if let Some(builtin) = known
        .iter()
        .find(|k| k.builtin && (k.name == reference || full(k)))
    {
        return Ok(builtin.digest);
    }
    let uploaded = |by_name: bool| -> Vec<Known<'_>> {
        known
            .iter()
            .filter(|k| {
                !k.builtin
                    && if by_name {
                        k.name == reference
                    } else {
                        full(k)
                    }
            })
            .copied()
            .collect()
    };
    for by_name in [false, true] {
        match uploaded(by_name).as_slice() {
            [] => {}
            [one] => return Ok(one.digest),
            several => {
                let listed: Vec<String> = several.iter().map(Known::describe).collect();
                return Err(ApiError::conflict(
                    "ambiguous_plugin",
                    format!(
                        "{reference:?} names {} plugins on this server: {}; name one by name@version or by digest",
                        several.len(),
                        listed.join(", ")
                    ),
                ));
            }
        }
    }
    // Unknown: list what this server holds of that name, else every name.
    let name = reference
        .rsplit_once('@')
        .map_or(reference, |(name, _)| name);
    let same_name: Vec<String> = known
        .iter()
        .filter(|k| k.name == name)
        .map(Known::describe)
        .collect();
    let message = if same_name.is_empty() {
        let mut names: Vec<String> = known
            .iter()
            .map(|k| format!("{}@{}", k.name, k.version))
            .collect();
        names.dedup();
        let more = names.len().saturating_sub(LISTED);
        names.truncate(LISTED);
        let more = if more > 0 {
            format!(" and {more} more (guardian plugin list)")
        } else {
            String::new()
        };
        format!(
            "no plugin named {reference:?}: give a plugin's name, name@version or 64-hex digest; this server holds {}{more}",
            names.join(", ")
        )
    } else {
        format!(
            "no plugin {reference:?}: this server holds {}; name one by name@version or by digest",
            same_name.join(", ")
        )
    };
    Err(ApiError::not_found("unknown_plugin", message))
}

/// 64 lower- or upper-case hex digits.
fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let mut digest = [0; 32];
    hex::decode_to_slice(text, &mut digest).ok()?;
    Some(digest)
}

/// Processor time used by the calling thread so far, where the system keeps it.
#[cfg(unix)]
fn thread_cpu_time() -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` only writes the `timespec` it is given, which is a
    // valid, exclusively borrowed local.
    #[allow(unsafe_code)]
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    (status == 0).then(|| {
        Duration::new(
            u64::try_from(now.tv_sec).unwrap_or(0),
            u32::try_from(now.tv_nsec).unwrap_or(0),
        )
    })
}

#[cfg(not(unix))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn only_processor_time_over_the_budget_moves_an_endpoint() {
        let budget = InlineBudget::default();
        let fast = Duration::from_micros(5);
        let long = INLINE_BUDGET * 3;
        let not_asked = || -> Duration { panic!("an unmeasured call read the processor time") };
        // Quick calls are not measured.
        assert!(!budget.finish(budget.start(), fast, not_asked));
        // Over the budget in wall time: not moved, but the next call is measured.
        assert!(!budget.finish(budget.start(), long, not_asked));
        let measured = budget.start();
        assert!(measured.0 && measured.1.is_some());
        // Preempted (long in wall time, little processor time): stays inline.
        assert!(!budget.finish(measured, long, || fast));
        // Quick again: measuring stops.
        assert!(!budget.finish(budget.start(), fast, || fast));
        assert!(!budget.start().0);
        // Really slow twice in a row: moved, once.
        assert!(!budget.finish(budget.start(), long, not_asked));
        assert!(budget.finish(budget.start(), long, || long));
        assert!(budget.slow.load(Ordering::Relaxed));
        assert!(
            !budget.finish(budget.start(), long, || long),
            "moved only once"
        );
    }

    /// Resolves `reference` among a built-in `sum@0.1.0` (digest 1), an upload
    /// also calling itself `sum` (2), two `variance@0.1.0` with different bytes
    /// (3, 4), a `variance@0.2.0` (5) and a `mine@1.0.0` (6); `expected` is the
    /// digest's first byte, or the error code and words the message must hold.
    fn check(reference: &str, expected: Result<u8, (&str, &[&str])>) {
        let known = [
            ("sum", "0.1.0", 1, true),
            ("sum", "9.0.0", 2, false),
            ("variance", "0.1.0", 3, false),
            ("variance", "0.1.0", 4, false),
            ("variance", "0.2.0", 5, false),
            ("mine", "1.0.0", 6, false),
        ]
        .map(|(name, version, first, builtin)| Known {
            name,
            version,
            digest: [first; 32],
            builtin,
        });
        match (resolve(reference, &known), expected) {
            (Ok(digest), Ok(first)) => assert_eq!(digest, [first; 32], "{reference}"),
            (Err(e), Err((code, words))) => {
                assert_eq!(e.code, code, "{reference}: {}", e.message);
                for word in words {
                    assert!(
                        e.message.contains(word),
                        "{reference}: {word:?} not in {}",
                        e.message
                    );
                }
            }
            (got, expected) => panic!("{reference}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn plugin_references_resolve_by_digest_name_and_version() {
        let digest = |first: u8| hex::encode([first; 32]);
        // A digest is returned as is, even one not held (the caller looks it up).
        check(&digest(6), Ok(6));
        check(&digest(6).to_uppercase(), Ok(6));
        check(&digest(9), Ok(9));
        // Built-ins win, by name and by name@version; the upload named like one
        // is reached by its version.
        check("sum", Ok(1));
        check("sum@0.1.0", Ok(1));
        check("sum@9.0.0", Ok(2));
        // Uploads by name@version, and by name when it is unique.
        check("variance@0.2.0", Ok(5));
        check("mine", Ok(6));
        check("mine@1.0.0", Ok(6));
    }

    #[test]
    fn ambiguous_and_unknown_references_list_what_the_server_holds() {
        let (three, four, five) = (
            hex::encode([3u8; 32]),
            hex::encode([4u8; 32]),
            hex::encode([5u8; 32]),
        );
        // Two uploads with one name and version: only their digests tell them apart.
        check(
            "variance@0.1.0",
            Err(("ambiguous_plugin", &["2 plugins", &three, &four])),
        );
        check(
            "variance",
            Err((
                "ambiguous_plugin",
                &["3 plugins", "variance@0.2.0", &three, &four, &five],
            )),
        );
        // A version the server lacks: the versions and digests it holds.
        check(
            "variance@0.3.0",
            Err((
                "unknown_plugin",
                &["variance@0.1.0", "variance@0.2.0", &three, &five],
            )),
        );
        check(
            "sum@2.0.0",
            Err(("unknown_plugin", &["sum@0.1.0", "built-in", "sum@9.0.0"])),
        );
        // A name the server lacks: every name it knows.
        check(
            "median",
            Err((
                "unknown_plugin",
                &["no plugin named \"median\"", "mine@1.0.0", "sum@0.1.0"],
            )),
        );
        check("", Err(("unknown_plugin", &["variance@0.2.0"])));
    }

    #[test]
    fn thread_cpu_time_counts_work_not_waiting() {
        let start = thread_cpu_time().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let waited = thread_cpu_time().unwrap().saturating_sub(start);
        assert!(
            waited < Duration::from_millis(15),
            "sleeping used {waited:?}"
        );
        // Work: the count grows with it (spinning until it shows 20 ms, which on a
        // busy machine can take longer than 20 ms of wall time).
        let spin = Instant::now();
        let mut worked = Duration::ZERO;
        while worked < Duration::from_millis(20) && spin.elapsed() < Duration::from_secs(20) {
            std::hint::spin_loop();
            worked = thread_cpu_time().unwrap().saturating_sub(start);
        }
        assert!(
            worked >= Duration::from_millis(20),
            "spinning for {:?} used {worked:?}",
            spin.elapsed()
        );
    }
}
