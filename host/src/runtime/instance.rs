//! Instances: the deny-everything host state, limits, and the per-plugin pool
//! of idle instances that calls reuse.
//!
//! Instantiating costs microseconds while a small call costs a fraction of one,
//! so an instance that finished a call normally goes back to the pool. One that
//! trapped, timed out or hit a limit is dropped: its memory may be half-written.
//!
//! A [`Pool`] serves one world ([`World`]: 0.1 or 0.2). It is generic rather
//! than an enum of instance kinds so that a call into a 0.1 plugin compiles to
//! the same code it always did; [`super::Plugin`] picks the pool once per call.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::engine::TICK;
use super::worlds::World;
use super::{CallError, RuntimeOptions, Stats};

/// Bytes of a plugin's stderr kept to explain a trap (panic messages land there).
const STDERR_BYTES: usize = 4096;

/// Per-store state: a WASI context that grants nothing, and the memory cap.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Limits,
    stderr: MemoryOutputPipe,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

struct Limits {
    memory_bytes: usize,
    memory_hit: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.memory_bytes;
        self.memory_hit |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Clocks frozen at zero: plugins get no time source.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

fn host_state(options: &RuntimeOptions) -> HostState {
    let stderr = MemoryOutputPipe::new(STDERR_BYTES);
    // No args, no environment, no preopened directories, no sockets (the
    // builder's defaults), frozen clocks, stdout discarded, stderr captured.
    let wasi = WasiCtx::builder()
        .wall_clock(FrozenClock)
        .monotonic_clock(FrozenClock)
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    HostState {
        wasi,
        table: ResourceTable::new(),
        limits: Limits {
            memory_bytes: options.memory_bytes,
            memory_hit: false,
        },
        stderr,
    }
}

struct Instance<W: World> {
    store: Store<HostState>,
    bindings: W::Bindings,
}

/// Idle instances of one plugin, and how to make more.
pub(super) struct Pool<W: World> {
    /// The type-checked component, ready to instantiate.
    pre: W::Pre,
    /// Instances that finished their last call normally, ready for the next.
    idle: Mutex<Vec<Instance<W>>>,
    /// Deadline, memory and output caps, and how many instances to keep.
    options: RuntimeOptions,
    /// The runtime's counters (instances created).
    stats: Arc<Stats>,
}

impl<W: World> Pool<W> {
    pub(super) fn new(pre: W::Pre, options: RuntimeOptions, stats: Arc<Stats>) -> Self {
        Self {
            pre,
            idle: Mutex::new(Vec::new()),
            options,
            stats,
        }
    }

    fn instantiate(&self) -> Result<Instance<W>, CallError> {
        let mut store = Store::new(W::engine(&self.pre), host_state(&self.options));
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(deadline_ticks(self.options.deadline));
        store.epoch_deadline_trap();
        let bindings = W::instantiate(&self.pre, &mut store).map_err(|e| {
            let error = classify(&store, e, self.options.deadline, &self.options);
            match error {
                CallError::Trap(m) => CallError::Instantiate(m),
                other => other,
            }
        })?;
        self.stats.instantiated.fetch_add(1, Ordering::Relaxed);
        Ok(Instance { store, bindings })
    }

    pub(super) fn instantiate_idle(&self) -> Result<(), CallError> {
        let instance = self.instantiate()?;
        self.keep(instance);
        Ok(())
    }

    /// Returns a healthy instance to the idle list, or drops it if full.
    fn keep(&self, instance: Instance<W>) {
        let mut idle = self.idle();
        if idle.len() < self.options.idle_instances {
            idle.push(instance);
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Instance<W>>> {
        // The list stays consistent even if a holder panicked.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one export call on an idle (or new) instance under the deadline.
    /// The plugin's own refusals (the world's `error`) become
    /// [`CallError::Rejected`].
    pub(super) fn call<T>(
        &self,
        f: impl FnOnce(&W::Bindings, &mut Store<HostState>) -> wasmtime::Result<Result<T, W::Error>>,
    ) -> Result<T, CallError> {
        let idle = self.idle().pop();
        let mut instance = match idle {
            Some(instance) => instance,
            None => self.instantiate()?,
        };
        instance
            .store
            .set_epoch_deadline(deadline_ticks(self.options.deadline));
        instance.store.data_mut().limits.memory_hit = false;
        let started = Instant::now();
        match f(&instance.bindings, &mut instance.store) {
            Ok(result) => {
                self.keep(instance);
                result.map_err(W::rejected)
            }
            Err(e) => {
                tracing::debug!(elapsed = ?started.elapsed(), error = %e, "plugin call failed");
                Err(classify(
                    &instance.store,
                    e,
                    self.options.deadline,
                    &self.options,
                ))
            }
        }
    }

    /// Refuses results larger than the output cap.
    pub(super) fn check_output(&self, len: usize) -> Result<(), CallError> {
        if len > self.options.output_bytes {
            return Err(CallError::OutputTooLarge {
                len,
                cap: self.options.output_bytes,
            });
        }
        Ok(())
    }
}

fn deadline_ticks(deadline: Duration) -> u64 {
    // The current tick is already partly over, so one more is added.
    (deadline.as_nanos() / TICK.as_nanos()).max(1) as u64 + 1
}

/// Turns a wasmtime error from a call into what went wrong, in words.
fn classify(
    store: &Store<HostState>,
    error: wasmtime::Error,
    deadline: Duration,
    options: &RuntimeOptions,
) -> CallError {
    let state = store.data();
    if state.limits.memory_hit {
        return CallError::MemoryLimit(options.memory_bytes);
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Timeout(deadline),
        Some(trap) => {
            let stderr = state.stderr.contents();
            let said = String::from_utf8_lossy(&stderr);
            let said = said.trim();
            if said.is_empty() {
                CallError::Trap(trap.to_string())
            } else {
                CallError::Trap(format!("{trap}; the plugin said: {said}"))
            }
        }
        None => CallError::Trap(format!("{error:#}")),
    }
}
