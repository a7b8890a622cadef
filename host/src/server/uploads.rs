//! Compiling plugin uploads: a few at a time (`limits.plugin_compile_concurrency`),
//! once per component however many uploads of it arrive together, and within a
//! time budget (`limits.plugin_compile_timeout_ms`).
//!
//! A compilation runs in a task of its own, not in the request: it stores the
//! plugin when it succeeds, whether or not the uploader is still waiting, and
//! nothing of it is kept when it fails. One whose uploaders all left before its
//! turn came is not started. Compiling cannot be interrupted, so one over the
//! budget is refused at once but keeps its turn until it ends; its compiled
//! artifact is then removed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use tokio::sync::{Semaphore, watch};

use super::error::ApiError;
use crate::runtime::{LoadError, Plugin, Runtime};
use crate::storage::{PluginRecord, PutPluginOutcome, Storage};

/// The loaded plugins by digest, shared with the registry.
pub(super) type Plugins = Arc<RwLock<HashMap<[u8; 32], Plugin>>>;

/// An upload's outcome: the plugin and whether this compilation stored it.
type Outcome = Option<Result<(Plugin, bool), ApiError>>;

pub(super) struct Uploads {
    runtime: Arc<Runtime>,
    plugins: Plugins,
    turns: Semaphore,
    budget: Duration,
    /// The compilations in progress, by the component's digest.
    compiling: Mutex<HashMap<[u8; 32], watch::Sender<Outcome>>>,
}

impl Uploads {
    pub(super) fn new(
        runtime: Arc<Runtime>,
        plugins: Plugins,
        concurrency: usize,
        budget: Duration,
    ) -> Uploads {
        Uploads {
            runtime,
            plugins,
            turns: Semaphore::new(concurrency.max(1)),
            budget,
            compiling: Mutex::new(HashMap::new()),
        }
    }

    /// Compiles, type-checks and stores `wasm` (with this `digest`), or waits for
    /// the compilation of the same component already in progress.
    pub(super) async fn upload(
        self: &Arc<Self>,
        storage: &Storage,
        digest: [u8; 32],
        wasm: Vec<u8>,
    ) -> Result<(Plugin, bool), ApiError> {
        let mut outcome = {
            let mut compiling = self
                .compiling
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match compiling.get(&digest) {
                Some(sender) => sender.subscribe(),
                None => {
                    let (sender, receiver) = watch::channel(None);
                    compiling.insert(digest, sender.clone());
                    tokio::spawn(self.clone().compile(storage.clone(), digest, wasm, sender));
                    receiver
                }
            }
        };
        let outcome = outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|e| ApiError::internal("compiling a plugin", &e))?;
        outcome.clone().expect("waited for an outcome")
    }

    /// One compilation, to its end; its outcome goes to every uploader waiting.
    async fn compile(
        self: Arc<Self>,
        storage: Storage,
        digest: [u8; 32],
        wasm: Vec<u8>,
        outcome: watch::Sender<Outcome>,
    ) {
        let done = async {
            let _turn = self
                .turns
                .acquire()
                .await
                .map_err(|e| ApiError::internal("waiting to compile a plugin", &e))?;
            {
                // Checked under the lock that a new uploader takes to subscribe.
                let mut compiling = self
                    .compiling
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if outcome.receiver_count() == 0 {
                    compiling.remove(&digest);
                    tracing::info!(digest = %hex::encode(digest), "every uploader left before the compilation started; not compiling");
                    return Ok(None);
                }
            }
            let runtime = self.runtime.clone();
            let record_wasm = wasm.clone();
            let mut job = tokio::task::spawn_blocking(move || runtime.load(&wasm));
            let loaded = match tokio::time::timeout(self.budget, &mut job).await {
                Ok(loaded) => loaded,
                Err(_) => {
                    outcome.send_replace(Some(Err(too_complex(self.budget))));
                    let _ = job.await;
                    self.runtime.forget_compiled(&digest);
                    tracing::warn!(digest = %hex::encode(digest), "a plugin upload took longer than limits.plugin_compile_timeout_ms to compile; refused");
                    return Ok(None);
                }
            };
            let plugin = loaded
                .map_err(|e| LoadError::Internal(e.to_string()))
                .and_then(|loaded| loaded)
                .map_err(refused)?;
            if let Err(e) = check_info(&plugin) {
                self.runtime.forget_compiled(&digest);
                return Err(e);
            }
            let stored = storage
                .put_plugin(record(&plugin, record_wasm, false))
                .await;
            let inserted = match stored {
                Ok(outcome) => outcome == PutPluginOutcome::Inserted,
                Err(e) => {
                    self.runtime.forget_compiled(&digest);
                    return Err(e.into());
                }
            };
            self.plugins
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(digest, plugin.clone());
            Ok(Some((plugin, inserted)))
        };
        match done.await {
            Ok(Some(done)) => {
                outcome.send_replace(Some(Ok(done)));
            }
            Ok(None) => {}
            Err(e) => {
                outcome.send_replace(Some(Err(e)));
            }
        }
        self.compiling
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&digest);
    }
}

/// Refuses a plugin whose name, version or description holds a control
/// character (a newline or tab only in the description): they are printed on
/// operators' terminals, where escapes would hide what was uploaded.
fn check_info(plugin: &Plugin) -> Result<(), ApiError> {
    let info = plugin.info();
    for (field, text, allowed) in [
        ("name", &info.name, &[][..]),
        ("version", &info.version, &[][..]),
        ("description", &info.description, &['\n', '\t'][..]),
    ] {
        if let Some(c) = text
            .chars()
            .find(|c| c.is_control() && !allowed.contains(c))
        {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_plugin_info",
                format!(
                    "the plugin's {field} holds the control character U+{:04X}; names, versions and descriptions must be plain text",
                    u32::from(c)
                ),
            ));
        }
    }
    Ok(())
}

fn refused(e: LoadError) -> ApiError {
    match e {
        LoadError::Internal(_) => ApiError::internal("compiling a plugin", &e),
        other => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plugin",
            other.to_string(),
        ),
    }
}

fn too_complex(budget: Duration) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "plugin_too_complex",
        format!(
            "the component takes longer than {} ms to compile (limits.plugin_compile_timeout_ms); nothing of it was kept",
            budget.as_millis()
        ),
    )
}

/// What storage keeps of a plugin.
pub(super) fn record(plugin: &Plugin, wasm: Vec<u8>, builtin: bool) -> PluginRecord {
    let info = plugin.info();
    PluginRecord {
        digest: plugin.digest(),
        name: info.name.clone(),
        version: info.version.clone(),
        description: info.description.clone(),
        params_schema: info.params_schema.clone(),
        wasm,
        builtin,
        created_at: SystemTime::now(),
    }
}
