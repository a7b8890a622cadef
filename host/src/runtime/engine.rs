//! The wasmtime engine, its linker and the epoch ticker that enforces deadlines.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::RuntimeOptions;
use super::instance::HostState;

/// How often the engine's epoch advances; deadlines are counted in ticks.
pub(super) const TICK: Duration = Duration::from_millis(5);

pub(super) struct Engine {
    pub(super) wasmtime: wasmtime::Engine,
    pub(super) linker: Linker<HostState>,
    pub(super) pooling: bool,
    ticker: Ticker,
}

impl Engine {
    pub(super) fn new(options: &RuntimeOptions) -> wasmtime::Result<Self> {
        let (wasmtime, pooling) = match wasmtime::Engine::new(&config(options, true)) {
            Ok(engine) => (engine, true),
            Err(e) => {
                tracing::warn!(error = %e, "pooling allocator unavailable, allocating on demand");
                (wasmtime::Engine::new(&config(options, false))?, false)
            }
        };
        let mut linker = Linker::new(&wasmtime);
        // Plugins built for wasm32-wasip2 import WASI through Rust's std even
        // when they do no I/O; they link against a context that grants nothing.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        let ticker = Ticker::start(wasmtime.clone())?;
        Ok(Self {
            wasmtime,
            linker,
            pooling,
            ticker,
        })
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

fn config(options: &RuntimeOptions, pooling: bool) -> Config {
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        // No plugin uses component-model async; turning its bookkeeping off
        // makes every call about three times cheaper (shared/FACTS.md).
        .concurrency_support(false)
        .max_wasm_stack(512 << 10);
    if pooling {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(options.pool_slots)
            .total_core_instances(options.pool_slots.saturating_mul(2))
            .total_memories(options.pool_slots.saturating_mul(2))
            .total_tables(options.pool_slots.saturating_mul(2))
            .max_memories_per_component(2)
            .max_tables_per_component(4)
            .max_memory_size(options.memory_bytes);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// Advances the engine's epoch every [`TICK`] until stopped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: wasmtime::Engine) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
