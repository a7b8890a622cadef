//! `guardian plugin check FILE`: the SDK's check suite
//! (`guardian_sdk::testing::check_plugin`, the same checks a plugin's own
//! `cargo test` runs natively) on a built component, through the runtime and
//! limits of a share server, with a report a person can read. A file that is
//! not a plugin is refused before any check, saying what it is (an `.rlib`,
//! a core module, a component without the export) and what to do.
//!
//! What only a server knows is checked here, after the suite: the file's
//! size, its compile time, the length of the parameters, and (contract 0.1)
//! 1,000 shares folded in one call within a quarter of the deadline.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guardian_sdk::Error as PluginError;
use guardian_sdk::testing::{self as sdk, Backend, Check, Outcome};

use super::AuthoringError;
use crate::config::LimitsConfig;
use crate::runtime::{Plugin, Runtime, RuntimeOptions};

/// What to check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The component (`.wasm`).
    pub file: PathBuf,
    /// The endpoint parameters, as JSON text.
    pub params: String,
    /// Example measurements, one JSON value per line (blank lines skipped).
    pub measurements: Option<PathBuf>,
}

/// The report of [`check`]: what was checked, and each check's outcome.
#[derive(Debug)]
pub struct Report {
    /// Plugin, contract, digest, measurements and limits, one line each.
    pub header: Vec<String>,
    /// Every check, in the order run: the SDK's suite, then the server's
    /// limits.
    pub checks: Vec<Check>,
}

impl Report {
    /// The checks that failed.
    pub fn failed(&self) -> usize {
        self.checks.iter().filter(|c| c.failed()).count()
    }

    /// The report for people: one line per check, details indented.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.header {
            let _ = writeln!(out, "{line}");
        }
        out.push('\n');
        let mut warnings = 0;
        for check in &self.checks {
            if matches!(check.outcome, Outcome::Warning(_)) {
                warnings += 1;
            }
            out.push_str(&check.to_string());
        }
        let _ = writeln!(
            out,
            "\n{} checks: {} passed, {} failed, {warnings} warnings",
            self.checks.len(),
            self.checks.len() - self.failed() - warnings,
            self.failed(),
        );
        out
    }
}

/// Loads `options.file` as a share server would and runs every check.
/// Errors are for what stops all checks (the file is not a plugin, the
/// parameters are refused, measurements are missing); a check that fails is
/// in the [`Report`].
pub fn check(options: &CheckOptions) -> Result<Report, AuthoringError> {
    let limits = LimitsConfig::default();
    let wasm = read_component(&options.file)?;
    let runtime = Runtime::new(RuntimeOptions {
        deadline: Duration::from_millis(limits.plugin_deadline_ms),
        memory_bytes: limits.plugin_memory_bytes,
        output_bytes: limits.plugin_output_bytes,
        cache_dir: None,
        ..RuntimeOptions::default()
    })
    .map_err(|e| AuthoringError::Io(e.to_string()))?;
    let started = Instant::now();
    let plugin = runtime
        .load(&wasm)
        .map_err(|e| AuthoringError::InvalidPlugin(e.to_string()))?;
    let compiled_in = started.elapsed();
    let info = plugin.info();
    let contract = if plugin.robust() {
        "0.2.0 (robust)"
    } else {
        "0.1.0"
    };
    let mut header = vec![
        format!("plugin check: {}", options.file.display()),
        format!(
            "  {} {}, contract guardian:plugin@{contract}, sha256 {}",
            info.name,
            info.version,
            plugin.digest_hex()
        ),
        format!("  {}", info.description),
    ];
    serde_json::from_str::<serde_json::Value>(&options.params)
        .map_err(|e| AuthoringError::InvalidParams(format!("--params is not JSON: {e}")))?;
    let config = plugin.configure(&options.params).map_err(|e| {
        AuthoringError::InvalidParams(format!(
            "the plugin refused --params {}: {e}",
            options.params
        ))
    })?;
    let measurements = read_measurements(options.measurements.as_deref(), &plugin, &config)?;
    header.push(format!(
        "  {} measurements from {}",
        measurements.len(),
        options
            .measurements
            .as_deref()
            .map_or_else(String::new, |p| p.display().to_string())
    ));
    header.push(format!(
        "  limits of a share server: {} ms a call, {} MiB of memory, {} MiB of output",
        limits.plugin_deadline_ms,
        limits.plugin_memory_bytes >> 20,
        limits.plugin_output_bytes >> 20
    ));

    let suite = sdk::CheckOptions {
        robust: plugin.robust(),
        ..sdk::CheckOptions::new(options.params.as_str(), &measurements)
    };
    let mut checks = sdk::check_plugin(&plugin, &suite);
    checks.push(Check {
        name: "within a share server's limits".to_owned(),
        outcome: within_limits(
            &Loaded {
                plugin: &plugin,
                config: &config,
                params: &options.params,
                measurements: &measurements,
                file_bytes: wasm.len(),
                compiled_in,
            },
            &limits,
        ),
    });
    Ok(Report { header, checks })
}

/// The file's bytes; a missing `.wasm` is usually a crate without `cdylib`.
fn read_component(file: &Path) -> Result<Vec<u8>, AuthoringError> {
    std::fs::read(file).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound
            && file.extension().is_some_and(|x| x == "wasm")
        {
            "; if `cargo build --release --target wasm32-wasip2` wrote no .wasm, the crate \
             lacks `crate-type = [\"cdylib\", \"rlib\"]` under `[lib]` in its Cargo.toml"
        } else {
            ""
        };
        AuthoringError::UnreadableFile(format!("reading {}: {e}{hint}", file.display()))
    })
}

/// The measurements of `file`, each checked to be JSON; without a file, an
/// error that says what a measurement of this endpoint looks like, in the
/// plugin's own words when it gives them.
fn read_measurements(
    file: Option<&Path>,
    plugin: &Plugin,
    config: &[u8],
) -> Result<Vec<String>, AuthoringError> {
    let Some(file) = file else {
        let hint = match plugin.shard(config, "null", 2, &[0; 32]) {
            Err(e) => format!(" (the plugin, given null: {e})"),
            Ok(_) => String::new(),
        };
        return Err(AuthoringError::InvalidMeasurements(format!(
            "the checks need example measurements: --measurements FILE, one JSON \
             measurement per line, as `guardian submit --file` takes them{hint}"
        )));
    };
    let text = std::fs::read_to_string(file).map_err(|e| {
        AuthoringError::InvalidMeasurements(format!("reading {}: {e}", file.display()))
    })?;
    let mut measurements = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        serde_json::from_str::<serde_json::Value>(line).map_err(|e| {
            AuthoringError::InvalidMeasurements(format!(
                "{} line {}: not JSON: {e}",
                file.display(),
                number + 1
            ))
        })?;
        measurements.push(line.to_owned());
    }
    if measurements.is_empty() {
        return Err(AuthoringError::InvalidMeasurements(format!(
            "{} holds no measurement",
            file.display()
        )));
    }
    Ok(measurements)
}

fn describe(e: &PluginError) -> String {
    format!("{} ({})", e.message(), e.kind())
}

/// What the limit checks look at: the loaded plugin and how it was loaded.
struct Loaded<'a> {
    /// The plugin, in the runtime of a share server.
    plugin: &'a Plugin,
    /// Its configuration for `params`.
    config: &'a [u8],
    /// The endpoint parameters, as given.
    params: &'a str,
    /// The example measurements (at least one).
    measurements: &'a [String],
    /// The component's size.
    file_bytes: usize,
    /// How long compiling and loading it took.
    compiled_in: Duration,
}

/// The limits a share server puts on an upload and on every call.
fn within_limits(cx: &Loaded, limits: &LimitsConfig) -> Outcome {
    let backend: &dyn Backend = cx.plugin;
    let file_bytes = cx.file_bytes;
    let compiled_in = cx.compiled_in;
    let mut failures = Vec::new();
    let mut seen = Vec::new();
    if file_bytes > limits.max_plugin_bytes {
        failures.push(format!(
            "the file has {file_bytes} bytes; a server takes uploads of at most {}",
            limits.max_plugin_bytes
        ));
    }
    let compile_budget = Duration::from_millis(limits.plugin_compile_timeout_ms);
    if compiled_in > compile_budget {
        failures.push(format!(
            "compiling took {compiled_in:?}; a server refuses uploads that take over {compile_budget:?}"
        ));
    }
    seen.push(format!(
        "{} KiB, compiled and loaded in {} ms",
        file_bytes / 1024,
        compiled_in.as_millis()
    ));
    if cx.params.len() > limits.max_params_bytes {
        failures.push(format!(
            "the parameters have {} bytes; a server takes at most {}",
            cx.params.len(),
            limits.max_params_bytes
        ));
    }
    if !cx.plugin.robust() {
        // A server folds a batch in calls of many shares: 1,000 in one call
        // must fit the deadline with room to spare.
        let shares: Result<Vec<Vec<u8>>, PluginError> = (0..1000u64)
            .map(|i| {
                let m = &cx.measurements[i as usize % cx.measurements.len()];
                backend
                    .shard(cx.config, m, 2, &sdk::seed(i, 9))
                    .map(|mut s| s.swap_remove(0))
            })
            .collect();
        match shares {
            Err(e) => failures.push(format!("shard: {}", describe(&e))),
            Ok(shares) => {
                let refs: Vec<&[u8]> = shares.iter().map(Vec::as_slice).collect();
                let (data, ends) = sdk::pack(&refs);
                let started = Instant::now();
                let folded = backend
                    .init(cx.config)
                    .and_then(|init| backend.accumulate(cx.config, &init, &data, &ends));
                let took = started.elapsed();
                let deadline = Duration::from_millis(limits.plugin_deadline_ms);
                match folded {
                    Err(e) => failures.push(format!(
                        "folding 1,000 shares in one call: {}",
                        describe(&e)
                    )),
                    Ok(_) if took > deadline / 4 => failures.push(format!(
                        "folding 1,000 shares in one call took {} ms, over a quarter of \
                         the {} ms deadline",
                        took.as_millis(),
                        limits.plugin_deadline_ms
                    )),
                    Ok(_) => seen.push(format!(
                        "1,000 shares of {} bytes folded in one call in {:.1} ms",
                        shares[0].len(),
                        took.as_secs_f64() * 1000.0
                    )),
                }
            }
        }
    }
    if failures.is_empty() {
        Outcome::Passed(seen.join("\n"))
    } else {
        Outcome::Failed(failures.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_counts_and_shows_every_check() {
        let report = Report {
            header: vec!["plugin check: x.wasm".into()],
            checks: [
                ("a", Outcome::Passed("fine".into())),
                ("b", Outcome::Warning("hmm".into())),
                ("c", Outcome::Failed("broken\nbecause".into())),
            ]
            .map(|(name, outcome)| Check {
                name: name.into(),
                outcome,
            })
            .into(),
        };
        let text = report.render();
        assert_eq!(report.failed(), 1);
        for needle in [
            "ok    a",
            "warn  b",
            "FAIL  c",
            "      because",
            "3 checks: 1 passed, 1 failed, 1 warnings",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
    }
}
