//! The plugin runtime: the only module that touches wasmtime.
//!
//! A [`Runtime`] owns one wasmtime engine (pooling allocator when the machine
//! allows it, on-demand otherwise), an epoch ticker that enforces per-call
//! deadlines, and an on-disk cache of compiled artifacts. [`Runtime::load`]
//! turns component bytes into a [`Plugin`]: compiled (or read back from the
//! cache), type-checked against one of the `guardian:plugin` worlds it runs
//! and asked for its [`Info`]. A [`Plugin`] is cheap to clone and safe to call
//! from many threads; every call runs under the deadline, the memory cap and
//! the output cap, and every failure comes back as a [`CallError`], never as
//! a panic or a hang.
//!
//! Two contract versions run side by side (`worlds`): `guardian:plugin@0.1.0`
//! (frozen) and `guardian:plugin@0.2.0`, whose plugins are robust
//! ([`Plugin::robust`]: reports carry a public share and a validity proof that
//! the servers check with [`Plugin::verify_init`], [`Plugin::combine`] and
//! [`Plugin::verify_finish`]). A 0.1 plugin answers the 0.2 calls as a plugin
//! without proofs would: [`Plugin::shard_report`] gives an empty public share,
//! [`Plugin::validate_report`] refuses a public share, and the verification
//! calls are refused as not robust.
//!
//! Layout: `engine` (wasmtime engine, linker, epoch ticker), `worlds` (the
//! generated bindings of each version), `instance` (host state, limits, the
//! per-plugin pool of idle instances), `cache` (compiled artifacts on disk).
//!
//! Calls are blocking: async callers run them on a blocking thread.

mod cache;
mod engine;
mod instance;
#[cfg(test)]
mod tests;
mod worlds;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use guardian_sdk::Error as PluginError;
use guardian_sdk::raw::{Batch, Report, Started};
use sha2::{Digest, Sha256};

use self::instance::Pool;
use self::worlds::{V1, V2, v1, v2};

/// The worlds [`Runtime::load`] accepts, in the order it tries them.
const WORLDS: &str = "guardian:plugin/plugin@0.1.0 or guardian:plugin/plugin@0.2.0";

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
    /// A component, but one implementing neither
    /// `guardian:plugin/plugin@0.1.0` nor `guardian:plugin/plugin@0.2.0`; the
    /// text says what each world found missing or mistyped.
    #[error("the component implements neither accepted world ({WORLDS}): {0}")]
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
        if let Some(what) = not_a_component(wasm) {
            return Err(LoadError::NotAComponent(what.into()));
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
        let pool = self.pool(&component)?;
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

    /// Type-checks `component` against 0.1.0, then 0.2.0, and makes the pool
    /// of the first world it implements.
    fn pool(&self, component: &wasmtime::component::Component) -> Result<AnyPool, LoadError> {
        // Linking the imports (WASI) does not depend on the world.
        let pre = self
            .engine
            .linker
            .instantiate_pre(component)
            .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let (options, stats) = (self.options.clone(), self.stats.clone());
        let as_v1 = match v1::PluginPre::new(pre.clone()) {
            Ok(pre) => return Ok(AnyPool::V1(Pool::new(pre, options, stats))),
            Err(e) => e,
        };
        match v2::PluginPre::new(pre) {
            Ok(pre) => Ok(AnyPool::V2(Pool::new(pre, options, stats))),
            Err(as_v2) => Err(LoadError::WrongWorld(format!(
                "{}as 0.1.0: {as_v1:#}; as 0.2.0: {as_v2:#}",
                missing_export_hint(component, &self.engine.wasmtime)
            ))),
        }
    }
}

/// What the file is when it is not a component, with what to do, from its
/// first bytes; `None` when it may be one. Checked up front so that the
/// message says what the author built instead of what the parser tripped on.
fn not_a_component(wasm: &[u8]) -> Option<&'static str> {
    // A component is `\0asm` with version 0x0d and layer 1; a core module
    // has version 1 and layer 0.
    if wasm.starts_with(b"\0asm\x01\0\0\0") {
        return Some(
            "this is a core WebAssembly module, not a component: build the plugin crate \
             with `cargo build --release --target wasm32-wasip2` (a wasm32-unknown-unknown \
             build must be made a component with `wasm-tools component new`)",
        );
    }
    if wasm.starts_with(b"!<arch>\n") {
        return Some(
            "this is an archive (an .rlib or .a: a Rust library), not a component: \
             add `crate-type = [\"cdylib\", \"rlib\"]` under `[lib]` in the plugin's \
             Cargo.toml, rebuild with `cargo build --release --target wasm32-wasip2` and \
             use target/wasm32-wasip2/release/<crate>.wasm",
        );
    }
    if wasm.starts_with(b"\x7fELF")
        || wasm.starts_with(b"MZ")
        || wasm.starts_with(&[0xcf, 0xfa, 0xed, 0xfe])
        || wasm.starts_with(&[0xce, 0xfa, 0xed, 0xfe])
    {
        return Some(
            "this is a native executable or library, not WebAssembly: build the plugin \
             crate with `--target wasm32-wasip2`",
        );
    }
    if !wasm.starts_with(b"\0asm") {
        return Some(
            "this is not WebAssembly at all (a component starts with the bytes \\0asm): \
             upload the .wasm file that `cargo build --release --target wasm32-wasip2` \
             writes under target/wasm32-wasip2/release/",
        );
    }
    None
}

/// Says how to fix a component that exports nothing of `guardian:plugin`
/// (the usual cause: a Rust plugin crate that never registered its type),
/// or nothing when it exports something of that package.
fn missing_export_hint(
    component: &wasmtime::component::Component,
    engine: &wasmtime::Engine,
) -> String {
    let exports: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    if exports
        .iter()
        .any(|name| name.starts_with("guardian:plugin/"))
    {
        return String::new();
    }
    let found = if exports.is_empty() {
        "it exports nothing".to_owned()
    } else {
        format!("it exports only {}", exports.join(", "))
    };
    format!(
        "the component exports no guardian:plugin algorithm ({found}): register the \
         plugin in the crate's lib.rs with `guardian_sdk::export_plugin!(YourPlugin);` \
         (robust plugins: `guardian_sdk::export_robust_plugin!(YourPlugin);`). "
    )
}

/// A loaded plugin. Clones share the compiled code and the instance pool.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

struct PluginInner {
    /// SHA-256 of the component bytes: the plugin's identity.
    digest: [u8; 32],
    /// Idle instances, of the world the component implements.
    pool: AnyPool,
    /// What `info` said at load.
    info: Info,
}

/// The instance pool of a plugin, by contract version. Each call matches once
/// on it and then runs the world's own typed call.
enum AnyPool {
    /// `guardian:plugin@0.1.0`: not robust.
    V1(Pool<V1>),
    /// `guardian:plugin@0.2.0`: robust.
    V2(Pool<V2>),
}

impl AnyPool {
    fn check_output(&self, len: usize) -> Result<(), CallError> {
        match self {
            AnyPool::V1(pool) => pool.check_output(len),
            AnyPool::V2(pool) => pool.check_output(len),
        }
    }

    fn instantiate_idle(&self) -> Result<(), CallError> {
        match self {
            AnyPool::V1(pool) => pool.instantiate_idle(),
            AnyPool::V2(pool) => pool.instantiate_idle(),
        }
    }
}

/// Runs a call of the `algorithm` interface that has the same signature in
/// every world (`info`, `configure`, `init`, `merge`, `release`, `unshard`):
/// `$call` is written once and compiled against each world's bindings.
macro_rules! algorithm_call {
    ($pool:expr, |$algorithm:ident, $store:ident| $call:expr) => {
        match $pool {
            AnyPool::V1(pool) => pool.call(|bindings, $store| {
                let $algorithm = bindings.guardian_plugin_algorithm();
                $call
            }),
            AnyPool::V2(pool) => pool.call(|bindings, $store| {
                let $algorithm = bindings.guardian_plugin_algorithm();
                $call
            }),
        }
    };
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("digest", &self.digest_hex())
            .field("robust", &self.robust())
            .field("info", &self.inner.info)
            .finish()
    }
}

fn call_info(pool: &AnyPool) -> Result<Info, CallError> {
    // Each world has its own `plugin-info` type, with the same fields.
    let info = algorithm_call!(pool, |algorithm, store| algorithm.call_info(store).map(
        |i| {
            Ok(Info {
                name: i.name,
                version: i.version,
                description: i.description,
                params_schema: i.params_schema,
            })
        }
    ))?;
    let size = info.name.len() + info.version.len() + info.description.len();
    pool.check_output(size + info.params_schema.len())?;
    Ok(info)
}

/// The refusal of a verification call by a plugin that has none.
fn not_robust() -> CallError {
    CallError::Rejected(PluginError::Internal(
        "this plugin is not robust: it implements guardian:plugin@0.1.0, which has no verification"
            .into(),
    ))
}

/// A plugin's answer that breaks the contract's shape (one result per report):
/// a bug in the plugin, refused before a caller could misread it.
fn broken(call: &str, got: usize, expected: usize) -> CallError {
    CallError::Rejected(PluginError::Internal(format!(
        "the plugin's {call} returned {got} results for {expected} reports"
    )))
}

/// Bytes held by a share batch, counting each end offset as its 4 bytes.
fn batch_bytes(data: &[u8], ends: &[u32]) -> usize {
    data.len() + 4 * ends.len()
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

    /// Whether the plugin is robust: it implements `guardian:plugin@0.2.0`,
    /// so its reports carry a validity proof that the servers check
    /// ([`Plugin::verify_init`], [`Plugin::combine`],
    /// [`Plugin::verify_finish`]) before accumulating them.
    pub fn robust(&self) -> bool {
        matches!(self.inner.pool, AnyPool::V2(_))
    }

    /// `configure`: checks endpoint params (JSON text), returns canonical config bytes.
    pub fn configure(&self, params: &str) -> Result<Vec<u8>, CallError> {
        let out = algorithm_call!(&self.inner.pool, |algorithm, store| algorithm
            .call_configure(store, params))?;
        self.inner.pool.check_output(out.len())?;
        Ok(out)
    }

    /// 0.1 `shard`: splits one measurement (JSON text) into one share per
    /// server. A robust plugin needs the report id (its proof is bound to it)
    /// and gives a public share as well: for it this is refused, and
    /// [`Plugin::shard_report`] is the call to make.
    pub fn shard(
        &self,
        config: &[u8],
        measurement: &str,
        servers: u32,
        seed: &[u8],
    ) -> Result<Vec<Vec<u8>>, CallError> {
        let AnyPool::V1(pool) = &self.inner.pool else {
            return Err(CallError::Rejected(PluginError::Internal(
                "this plugin is robust (guardian:plugin@0.2.0): its shard needs the report id \
                 and gives a public share; use shard_report"
                    .into(),
            )));
        };
        let out = pool.call(|bindings, store| {
            bindings.guardian_plugin_algorithm().call_shard(
                store,
                &config.to_vec(),
                measurement,
                servers,
                &seed.to_vec(),
            )
        })?;
        pool.check_output(out.iter().map(Vec::len).sum())?;
        Ok(out)
    }

    /// `shard` of either version: splits one measurement (JSON text) into the
    /// public share and one share per server, the proof of a robust plugin
    /// bound to `report_id`. A 0.1 plugin ignores the report id and gives an
    /// empty public share.
    pub fn shard_report(
        &self,
        config: &[u8],
        measurement: &str,
        servers: u32,
        report_id: &[u8],
        seed: &[u8],
    ) -> Result<Report, CallError> {
        let pool = match &self.inner.pool {
            AnyPool::V1(_) => {
                return Ok(Report {
                    public_share: Vec::new(),
                    shares: self.shard(config, measurement, servers, seed)?,
                });
            }
            AnyPool::V2(pool) => pool,
        };
        let out = pool.call(|bindings, store| {
            bindings.guardian_plugin_algorithm().call_shard(
                store,
                &config.to_vec(),
                measurement,
                servers,
                &report_id.to_vec(),
                &seed.to_vec(),
            )
        })?;
        pool.check_output(out.public_share.len() + out.shares.iter().map(Vec::len).sum::<usize>())?;
        Ok(Report {
            public_share: out.public_share,
            shares: out.shares,
        })
    }

    /// `validate`: checks one share as server `server_index` receives it, for
    /// a report without public share (all a 0.1 plugin takes; a robust
    /// plugin is asked with an empty one).
    pub fn validate(
        &self,
        config: &[u8],
        share: &[u8],
        server_index: u32,
    ) -> Result<(), CallError> {
        self.validate_report(config, &[], share, server_index)
    }

    /// `validate` of either version: checks a report's public share and the
    /// share server `server_index` receives. A 0.1 plugin takes no public
    /// share: a non-empty one is refused as an invalid share.
    pub fn validate_report(
        &self,
        config: &[u8],
        public_share: &[u8],
        share: &[u8],
        server_index: u32,
    ) -> Result<(), CallError> {
        match &self.inner.pool {
            AnyPool::V1(pool) => {
                if !public_share.is_empty() {
                    return Err(CallError::Rejected(PluginError::InvalidShare(format!(
                        "this plugin takes no public share (it implements guardian:plugin@0.1.0), \
                         got {} bytes",
                        public_share.len()
                    ))));
                }
                pool.call(|bindings, store| {
                    bindings.guardian_plugin_algorithm().call_validate(
                        store,
                        &config.to_vec(),
                        &share.to_vec(),
                        server_index,
                    )
                })
            }
            AnyPool::V2(pool) => pool.call(|bindings, store| {
                bindings.guardian_plugin_algorithm().call_validate(
                    store,
                    &config.to_vec(),
                    &public_share.to_vec(),
                    &share.to_vec(),
                    server_index,
                )
            }),
        }
    }

    /// `init`: the empty aggregate share.
    pub fn init(&self, config: &[u8]) -> Result<Vec<u8>, CallError> {
        let out = algorithm_call!(&self.inner.pool, |algorithm, store| algorithm
            .call_init(store, &config.to_vec()))?;
        self.inner.pool.check_output(out.len())?;
        Ok(out)
    }

    /// `accumulate`: folds shares (concatenated in `data`, share `i` ending at
    /// `ends[i]`) into an aggregate share. For a robust plugin the shares are
    /// output shares, what [`Plugin::verify_finish`] gave.
    pub fn accumulate(
        &self,
        config: &[u8],
        agg: &[u8],
        data: &[u8],
        ends: &[u32],
    ) -> Result<Vec<u8>, CallError> {
        let (config, agg) = (config.to_vec(), agg.to_vec());
        let (data, ends) = (data.to_vec(), ends.to_vec());
        let out = match &self.inner.pool {
            AnyPool::V1(pool) => {
                let batch = v1::exports::guardian::plugin::algorithm::ShareBatch { data, ends };
                pool.call(|bindings, store| {
                    bindings
                        .guardian_plugin_algorithm()
                        .call_accumulate(store, &config, &agg, &batch)
                })
            }
            AnyPool::V2(pool) => {
                let batch = v2_batch(Batch { data, ends });
                pool.call(|bindings, store| {
                    bindings
                        .guardian_plugin_algorithm()
                        .call_accumulate(store, &config, &agg, &batch)
                })
            }
        }?;
        self.inner.pool.check_output(out.len())?;
        Ok(out)
    }

    /// `merge`: combines two aggregate shares of the same server.
    pub fn merge(&self, config: &[u8], a: &[u8], b: &[u8]) -> Result<Vec<u8>, CallError> {
        let out = algorithm_call!(&self.inner.pool, |algorithm, store| algorithm.call_merge(
            store,
            &config.to_vec(),
            &a.to_vec(),
            &b.to_vec()
        ))?;
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
        let out = algorithm_call!(&self.inner.pool, |algorithm, store| algorithm.call_release(
            store,
            &config.to_vec(),
            &agg.to_vec(),
            count,
            server_index,
            &seed.to_vec(),
        ))?;
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
        let out = algorithm_call!(&self.inner.pool, |algorithm, store| algorithm.call_unshard(
            store,
            &config.to_vec(),
            aggs,
            count
        ))?;
        self.inner.pool.check_output(out.len())?;
        Ok(out)
    }

    /// The pool of a robust plugin; a 0.1 plugin refuses the verification
    /// calls.
    fn robust_pool(&self) -> Result<&Pool<V2>, CallError> {
        match &self.inner.pool {
            AnyPool::V1(_) => Err(not_robust()),
            AnyPool::V2(pool) => Ok(pool),
        }
    }

    /// `verify-init`: starts checking the proofs of a chunk of reports on
    /// server `server_index` of `servers`, under the endpoint's verification
    /// `key`. Report `i` has the id `ids[16 * i..][..16]`, the `i`-th public
    /// share and the `i`-th share. Gives one [`Started`] per report, in order
    /// (a plugin that gives another number is refused as broken).
    #[allow(clippy::too_many_arguments)]
    pub fn verify_init(
        &self,
        config: &[u8],
        key: &[u8],
        servers: u32,
        server_index: u32,
        ids: &[u8],
        public_shares: &Batch,
        shares: &Batch,
    ) -> Result<Vec<Started>, CallError> {
        let pool = self.robust_pool()?;
        let reports = v2::exports::guardian::plugin::verify::Reports {
            ids: ids.to_vec(),
            public_shares: v2_batch(public_shares.clone()),
            shares: v2_batch(shares.clone()),
        };
        let out = pool.call(|bindings, store| {
            bindings.guardian_plugin_verify().call_verify_init(
                store,
                &config.to_vec(),
                &key.to_vec(),
                servers,
                server_index,
                &reports,
            )
        })?;
        use v2::exports::guardian::plugin::verify::Started as Guest;
        pool.check_output(
            out.iter()
                .map(|started| match started {
                    Guest::Ready((state, share)) => state.len() + share.len(),
                    Guest::Invalid(why) => why.len(),
                })
                .sum(),
        )?;
        if out.len() != shares.len() {
            return Err(broken("verify-init", out.len(), shares.len()));
        }
        Ok(out
            .into_iter()
            .map(|started| match started {
                Guest::Ready((state, verifier_share)) => Started::Ready {
                    state,
                    verifier_share,
                },
                Guest::Invalid(why) => Started::Invalid(why),
            })
            .collect())
    }

    /// `combine` (server 0 only): decides per report whether its proof holds,
    /// from `verifier_shares`, one batch per server in index order holding
    /// report `i`'s verifier share at position `i`. Gives, in order, the
    /// message for each valid report or why it is invalid (one per public
    /// share; a plugin that gives another number is refused as broken).
    pub fn combine(
        &self,
        config: &[u8],
        public_shares: &Batch,
        verifier_shares: &[Batch],
    ) -> Result<Vec<Result<Vec<u8>, String>>, CallError> {
        let pool = self.robust_pool()?;
        let public = v2_batch(public_shares.clone());
        let verifier: Vec<_> = verifier_shares.iter().cloned().map(v2_batch).collect();
        let out = pool.call(|bindings, store| {
            bindings.guardian_plugin_verify().call_combine(
                store,
                &config.to_vec(),
                &public,
                &verifier,
            )
        })?;
        pool.check_output(
            out.iter()
                .map(|r| r.as_ref().map_or_else(String::len, Vec::len))
                .sum(),
        )?;
        if out.len() != public_shares.len() {
            return Err(broken("combine", out.len(), public_shares.len()));
        }
        Ok(out)
    }

    /// `verify-finish`: this server's output shares of valid reports, from
    /// the state [`Plugin::verify_init`] gave for each and the message
    /// [`Plugin::combine`] gave, in order: a batch that
    /// [`Plugin::accumulate`] folds as it is (one share per state, and
    /// well-formed, else refused as broken).
    pub fn verify_finish(
        &self,
        config: &[u8],
        servers: u32,
        server_index: u32,
        states: &Batch,
        messages: &Batch,
    ) -> Result<Batch, CallError> {
        let pool = self.robust_pool()?;
        let (states_in, messages_in) = (v2_batch(states.clone()), v2_batch(messages.clone()));
        let out = pool.call(|bindings, store| {
            bindings.guardian_plugin_verify().call_verify_finish(
                store,
                &config.to_vec(),
                servers,
                server_index,
                &states_in,
                &messages_in,
            )
        })?;
        pool.check_output(batch_bytes(&out.data, &out.ends))?;
        let out = Batch {
            data: out.data,
            ends: out.ends,
        };
        if out.len() != states.len() {
            return Err(broken("verify-finish", out.len(), states.len()));
        }
        out.items().map_err(|e| {
            CallError::Rejected(PluginError::Internal(format!(
                "the plugin's verify-finish returned a malformed batch: {}",
                e.message()
            )))
        })?;
        Ok(out)
    }
}

/// A byte-level batch as the 0.2 bindings take it.
fn v2_batch(batch: Batch) -> v2::exports::guardian::plugin::algorithm::ShareBatch {
    v2::exports::guardian::plugin::algorithm::ShareBatch {
        data: batch.data,
        ends: batch.ends,
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
    fn shard_report(
        &self,
        config: &[u8],
        measurement: &str,
        servers: u32,
        report_id: &[u8],
        seed: &[u8],
    ) -> Result<Report, PluginError> {
        Plugin::shard_report(self, config, measurement, servers, report_id, seed)
            .map_err(into_plugin_error)
    }
    fn validate_report(
        &self,
        config: &[u8],
        public_share: &[u8],
        share: &[u8],
        server_index: u32,
    ) -> Result<(), PluginError> {
        Plugin::validate_report(self, config, public_share, share, server_index)
            .map_err(into_plugin_error)
    }
    fn verify_init(
        &self,
        config: &[u8],
        key: &[u8],
        servers: u32,
        server_index: u32,
        ids: &[u8],
        public_shares: &Batch,
        shares: &Batch,
    ) -> Result<Vec<Started>, PluginError> {
        Plugin::verify_init(
            self,
            config,
            key,
            servers,
            server_index,
            ids,
            public_shares,
            shares,
        )
        .map_err(into_plugin_error)
    }
    fn combine(
        &self,
        config: &[u8],
        public_shares: &Batch,
        verifier_shares: &[Batch],
    ) -> Result<Vec<Result<Vec<u8>, String>>, PluginError> {
        Plugin::combine(self, config, public_shares, verifier_shares).map_err(into_plugin_error)
    }
    fn verify_finish(
        &self,
        config: &[u8],
        servers: u32,
        server_index: u32,
        states: &Batch,
        messages: &Batch,
    ) -> Result<Batch, PluginError> {
        Plugin::verify_finish(self, config, servers, server_index, states, messages)
            .map_err(into_plugin_error)
    }
}

fn into_plugin_error(e: CallError) -> PluginError {
    match e {
        CallError::Rejected(e) => e,
        other => PluginError::Internal(other.to_string()),
    }
}
