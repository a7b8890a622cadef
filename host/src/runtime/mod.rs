//! The plugin runtime: the only module that touches wasmtime.
//!
//! A [`Runtime`] owns one wasmtime engine (pooling allocator when the machine
//! allows it, on-demand otherwise), an epoch ticker that enforces per-call
//! deadlines, and an on-disk cache of compiled artifacts. [`Runtime::load`]
//! turns component bytes into a [`Plugin`]: compiled (or read back from the
//! cache), type-checked against the `guardian:plugin` world and asked for its
//! [`Info`]. A [`Plugin`] is cheap to clone and safe to call from many threads;
//! every call runs under the deadline, the memory cap and the output cap, and
//! every failure comes back as a [`CallError`], never as a panic or a hang.
//!
//! Calls are blocking: async callers run them on a blocking thread.

mod cache;
mod engine;
mod instance;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use guardian_sdk::Error as PluginError;
use sha2::{Digest, Sha256};

use self::bindings::exports::guardian::plugin::algorithm;
use self::instance::Pool;

/// Host bindings for the `guardian:plugin@0.1.0` world, generated once.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
    });
}

/// The built-in plugins, compiled from `plugins/` by the build script and
/// embedded in the binary.
pub mod builtins {
    include!(concat!(env!("OUT_DIR"), "/builtins.rs"));
}

/// Test support: built-ins loaded once per process, so plugin crates can run
/// their checks through wasm as well as natively.
pub mod testing {
    use std::sync::LazyLock;

    use super::{Plugin, Runtime, RuntimeOptions};

    static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
        Runtime::new(RuntimeOptions::default()).unwrap_or_else(|e| panic!("plugin runtime: {e}"))
    });

    /// The built-in plugin `name` (its crate name), running as wasm.
    ///
    /// # Panics
    /// If there is no such built-in or it does not load: this is for tests.
    pub fn builtin(name: &str) -> Plugin {
        RUNTIME
            .load_builtin(name)
            .unwrap_or_else(|e| panic!("built-in {name}: {e}"))
    }
}

/// Limits and locations for a [`Runtime`].
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Wall-clock budget of one plugin call.
    pub deadline: Duration,
    /// Cap on the linear memory of one plugin instance, in bytes.
    pub memory_bytes: usize,
    /// Cap on the bytes one call may return (config, shares, aggregate, JSON).
    pub output_bytes: usize,
    /// Where compiled artifacts are cached; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// Idle instances kept per plugin for reuse.
    pub idle_instances: usize,
    /// Instance slots of the pooling allocator (all plugins together).
    pub pool_slots: u32,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            deadline: Duration::from_secs(1),
            memory_bytes: 128 << 20,
            output_bytes: 16 << 20,
            cache_dir: None,
            idle_instances: 2 * cores,
            pool_slots: 256,
        }
    }
}

/// Counters a server exposes as metrics and tests assert on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Components compiled with Cranelift.
    pub compiled: u64,
    /// Components read back from the artifact cache instead.
    pub from_cache: u64,
    /// Instances created (a reused instance is not counted again).
    pub instantiated: u64,
}

/// What a plugin says about itself (`info`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Info {
    /// Short name, e.g. `sum`.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// One-line description.
    pub description: String,
    /// JSON schema of the endpoint params, as text.
    pub params_schema: String,
}

/// Why bytes could not become a [`Plugin`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not a WebAssembly component at all (a core module, or garbage).
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    /// A component, but not one implementing `guardian:plugin/plugin@0.1.0`.
    #[error("the component does not implement the guardian:plugin@0.1.0 world: {0}")]
    WrongWorld(String),
    /// The component loaded but its `info` call failed.
    #[error("the plugin's info call failed: {0}")]
    Info(CallError),
    /// The runtime itself failed (cache directory, engine).
    #[error("plugin runtime error: {0}")]
    Internal(String),
}

/// Why one plugin call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin ran and returned one of the contract's errors.
    #[error("{0}")]
    Rejected(PluginError),
    /// The call ran past its deadline and was interrupted.
    #[error("the plugin call ran past its deadline of {0:?}")]
    Timeout(Duration),
    /// The plugin tried to grow its memory past the cap.
    #[error("the plugin tried to use more than {0} bytes of memory")]
    MemoryLimit(usize),
    /// The plugin returned more bytes than allowed.
    #[error("the plugin returned {len} bytes, more than the cap of {cap}")]
    OutputTooLarge {
        /// Bytes returned.
        len: usize,
        /// The cap.
        cap: usize,
    },
    /// The plugin trapped (panic, stack overflow, unreachable, …).
    #[error("the plugin trapped: {0}")]
    Trap(String),
    /// No instance could be created (instance slots exhausted, …).
    #[error("could not instantiate the plugin: {0}")]
    Instantiate(String),
}

impl CallError {
    /// A stable, lower-case code for logs, metrics and API errors.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Rejected(e) => e.kind(),
            Self::Timeout(_) => "plugin_timeout",
            Self::MemoryLimit(_) => "plugin_memory_limit",
            Self::OutputTooLarge { .. } => "plugin_output_too_large",
            Self::Trap(_) => "plugin_trap",
            Self::Instantiate(_) => "plugin_unavailable",
        }
    }
}

/// Loads and runs plugins. One per process is enough; cheap to share by reference.
pub struct Runtime {
    engine: engine::Engine,
    cache: Option<cache::ArtifactCache>,
    options: RuntimeOptions,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    compiled: AtomicU64,
    from_cache: AtomicU64,
    instantiated: AtomicU64,
}

impl Runtime {
    /// Builds the engine and starts the epoch ticker.
    pub fn new(options: RuntimeOptions) -> Result<Self, LoadError> {
        let engine =
            engine::Engine::new(&options).map_err(|e| LoadError::Internal(e.to_string()))?;
        let cache = options
            .cache_dir
            .as_ref()
            .map(|dir| cache::ArtifactCache::open(dir, &engine.wasmtime))
            .transpose()
            .map_err(|e| LoadError::Internal(format!("artifact cache: {e}")))?;
        Ok(Self {
            engine,
            cache,
            options,
            stats: Arc::default(),
        })
    }

    /// Whether the pooling allocator is in use (it falls back to on-demand
    /// allocation where the machine cannot reserve the address space).
    pub fn pooling(&self) -> bool {
        self.engine.pooling
    }

    /// Counters since start.
    pub fn stats(&self) -> RuntimeStats {
        RuntimeStats {
            compiled: self.stats.compiled.load(Ordering::Relaxed),
            from_cache: self.stats.from_cache.load(Ordering::Relaxed),
            instantiated: self.stats.instantiated.load(Ordering::Relaxed),
        }
    }

    /// Loads the embedded built-in plugin with crate name `name`.
    pub fn load_builtin(&self, name: &str) -> Result<Plugin, LoadError> {
        let (_, wasm) = builtins::BUILTINS
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| LoadError::Internal(format!("no built-in plugin named {name:?}")))?;
        self.load(wasm)
    }

    /// Removes the cached compiled form of the component with `digest`, if any:
    /// for a plugin that is refused after it loaded.
    pub fn forget_compiled(&self, digest: &[u8; 32]) {
        if let Some(cache) = &self.cache {
            cache.remove(digest);
        }
    }

    /// Compiles (or reads back from the cache), type-checks and describes a
    /// component. Compilation is expensive: never call this on a request path
    /// for a plugin that is already loaded.
    pub fn load(&self, wasm: &[u8]) -> Result<Plugin, LoadError> {
        let digest: [u8; 32] = Sha256::digest(wasm).into();
        if wasmparser_is_core_module(wasm) {
            return Err(LoadError::NotAComponent(
                "this is a core WebAssembly module; build a component (e.g. --target wasm32-wasip2)"
                    .into(),
            ));
        }
        let cached = self
            .cache
            .as_ref()
            .and_then(|c| c.get(&self.engine.wasmtime, &digest));
        let compiled = cached.is_none();
        let component = match cached {
            Some(component) => {
                self.stats.from_cache.fetch_add(1, Ordering::Relaxed);
                component
            }
            None => {
                let component = wasmtime::component::Component::new(&self.engine.wasmtime, wasm)
                    .map_err(|e| LoadError::NotAComponent(format!("{e:#}")))?;
                self.stats.compiled.fetch_add(1, Ordering::Relaxed);
                component
            }
        };
        let pre = self
            .engine
            .linker
            .instantiate_pre(&component)
            .and_then(bindings::PluginPre::new)
            .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let pool = Pool::new(pre, self.options.clone(), self.stats.clone());
        let info = call_info(&pool).map_err(LoadError::Info)?;
        // Cached only once it is known to be a plugin: a refused component leaves
        // nothing behind.
        if compiled && let Some(Err(e)) = self.cache.as_ref().map(|c| c.put(&digest, &component)) {
            tracing::warn!(error = %e, "could not cache a compiled plugin");
        }
        Ok(Plugin {
            inner: Arc::new(PluginInner { digest, pool, info }),
        })
    }
}

/// A core module starts with the magic and version 1; a component uses another
/// version/layer field. Checked up front so the message can say what to do.
fn wasmparser_is_core_module(wasm: &[u8]) -> bool {
    wasm.len() >= 8 && wasm[..4] == *b"\0asm" && wasm[4..8] == [1, 0, 0, 0]
}

/// A loaded plugin. Clones share the compiled code and the instance pool.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

struct PluginInner {
    digest: [u8; 32],
    pool: Pool,
    info: Info,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("digest", &self.digest_hex())
            .field("info", &self.inner.info)
            .finish()
    }
}

fn rejected(e: algorithm::Error) -> CallError {
    CallError::Rejected(match e {
        algorithm::Error::InvalidParams(m) => PluginError::InvalidParams(m),
        algorithm::Error::InvalidMeasurement(m) => PluginError::InvalidMeasurement(m),
        algorithm::Error::InvalidShare(m) => PluginError::InvalidShare(m),
        algorithm::Error::InvalidState(m) => PluginError::InvalidState(m),
        algorithm::Error::Internal(m) => PluginError::Internal(m),
    })
}

fn call_info(pool: &Pool) -> Result<Info, CallError> {
    let info = pool.call(|g, s| g.call_info(s).map(Ok))?;
    let size = info.name.len() + info.version.len() + info.description.len();
    pool.check_output(size + info.params_schema.len())?;
    Ok(Info {
        name: info.name,
        version: info.version,
        description: info.description,
        params_schema: info.params_schema,
    })
}

impl Plugin {
    /// Creates one instance ahead of traffic and keeps it idle if the pool has
    /// room (otherwise it is dropped again).
    pub fn instantiate_idle(&self) -> Result<(), CallError> {
        self.inner.pool.instantiate_idle()
    }

    /// SHA-256 of the component bytes.
    pub fn digest(&self) -> [u8; 32] {
        self.inner.digest
    }

    /// SHA-256 of the component bytes, lower-case hex.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.inner.digest)
    }

    /// What the plugin said about itself when it was loaded.
    pub fn info(&self) -> &Info {
        &self.inner.info
    }

    /// `configure`: checks endpoint params (JSON text), returns canonical config bytes.
    pub fn configure(&self, params: &str) -> Result<Vec<u8>, CallError> {
        let out = self.inner.pool.call(|g, s| g.call_configure(s, params))?;
        self.inner.pool.check_output(out.len())?;
        Ok(out)
    }

    /// `shard`: splits one measurement (JSON text) into one share per server.
    pub fn shard(
        &self,
        config: &[u8],
        measurement: &str,
        servers: u32,
        seed: &[u8],
    ) -> Result<Vec<Vec<u8>>, CallError> {
        let out = self
            .inner
            .pool
            .call(|g, s| g.call_shard(s, &config.to_vec(), measurement, servers, &seed.to_vec()))?;
        self.inner
            .pool
            .check_output(out.iter().map(Vec::len).sum())?;
        Ok(out)
    }

    /// `validate`: checks one share as server `server_index` receives it.
    pub fn validate(
        &self,
        config: &[u8],
        share: &[u8],
        server_index: u32,
    ) -> Result<(), CallError> {
        self.inner
            .pool
            .call(|g, s| g.call_validate(s, &config.to_vec(), &share.to_vec(), server_index))
    }

    /// `init`: the empty aggregate share.
    pub fn init(&self, config: &[u8]) -> Result<Vec<u8>, CallError> {
        let out = self
            .inner
            .pool
            .call(|g, s| g.call_init(s, &config.to_vec()))?;
        self.inner.pool.check_output(out.len())?;
        Ok(out)
    }

    /// `accumulate`: folds shares (concatenated in `data`, share `i` ending at
    /// `ends[i]`) into an aggregate share.
    pub fn accumulate(
        &self,
        config: &[u8],
        agg: &[u8],
        data: &[u8],
        ends: &[u32],
    ) -> Result<Vec<u8>, CallError> {
        let batch = algorithm::ShareBatch {
            data: data.to_vec(),
            ends: ends.to_vec(),
        };
        let out = self
            .inner
            .pool
            .call(|g, s| g.call_accumulate(s, &config.to_vec(), &agg.to_vec(), &batch))?;
        self.inner.pool.check_output(out.len())?;
        Ok(out)
    }

    /// `merge`: combines two aggregate shares of the same server.
    pub fn merge(&self, config: &[u8], a: &[u8], b: &[u8]) -> Result<Vec<u8>, CallError> {
        let out = self
            .inner
            .pool
            .call(|g, s| g.call_merge(s, &config.to_vec(), &a.to_vec(), &b.to_vec()))?;
        self.inner.pool.check_output(out.len())?;
        Ok(out)
    }

    /// `release`: turns an aggregate share into the released share (DP noise here).
    pub fn release(
        &self,
        config: &[u8],
        agg: &[u8],
        count: u64,
        server_index: u32,
        seed: &[u8],
    ) -> Result<Vec<u8>, CallError> {
        let out = self.inner.pool.call(|g, s| {
            g.call_release(
                s,
                &config.to_vec(),
                &agg.to_vec(),
                count,
                server_index,
                &seed.to_vec(),
            )
        })?;
        self.inner.pool.check_output(out.len())?;
        Ok(out)
    }

    /// `unshard`: combines every server's released share into the result (JSON text).
    pub fn unshard(
        &self,
        config: &[u8],
        aggs: &[Vec<u8>],
        count: u64,
    ) -> Result<String, CallError> {
        let out = self
            .inner
            .pool
            .call(|g, s| g.call_unshard(s, &config.to_vec(), aggs, count))?;
        self.inner.pool.check_output(out.len())?;
        Ok(out)
    }
}

/// The SDK's test harness drives a plugin through this trait, so the same
/// checks run natively and through wasm.
impl guardian_sdk::testing::Backend for Plugin {
    fn configure(&self, params: &str) -> Result<Vec<u8>, PluginError> {
        Plugin::configure(self, params).map_err(into_plugin_error)
    }
    fn shard(
        &self,
        config: &[u8],
        measurement: &str,
        servers: u32,
        seed: &[u8],
    ) -> Result<Vec<Vec<u8>>, PluginError> {
        Plugin::shard(self, config, measurement, servers, seed).map_err(into_plugin_error)
    }
    fn validate(&self, config: &[u8], share: &[u8], server_index: u32) -> Result<(), PluginError> {
        Plugin::validate(self, config, share, server_index).map_err(into_plugin_error)
    }
    fn init(&self, config: &[u8]) -> Result<Vec<u8>, PluginError> {
        Plugin::init(self, config).map_err(into_plugin_error)
    }
    fn accumulate(
        &self,
        config: &[u8],
        agg: &[u8],
        data: &[u8],
        ends: &[u32],
    ) -> Result<Vec<u8>, PluginError> {
        Plugin::accumulate(self, config, agg, data, ends).map_err(into_plugin_error)
    }
    fn merge(&self, config: &[u8], a: &[u8], b: &[u8]) -> Result<Vec<u8>, PluginError> {
        Plugin::merge(self, config, a, b).map_err(into_plugin_error)
    }
    fn release(
        &self,
        config: &[u8],
        agg: &[u8],
        count: u64,
        server_index: u32,
        seed: &[u8],
    ) -> Result<Vec<u8>, PluginError> {
        Plugin::release(self, config, agg, count, server_index, seed).map_err(into_plugin_error)
    }
    fn unshard(&self, config: &[u8], aggs: &[Vec<u8>], count: u64) -> Result<String, PluginError> {
        Plugin::unshard(self, config, aggs, count).map_err(into_plugin_error)
    }
}

fn into_plugin_error(e: CallError) -> PluginError {
    match e {
        CallError::Rejected(e) => e,
        other => PluginError::Internal(other.to_string()),
    }
}
