//! The check suite: every check of the contract a plugin claims, on any
//! [`Backend`], each with its [`Outcome`]. `cargo test` runs it natively on
//! [`super::Native`]; `guardian plugin check` runs it on the component,
//! through a share server's runtime.

use std::fmt;
use std::ops::RangeInclusive;
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::robust::{robust_deterministic, robust_round_trips, tampering_rejected};
use super::{Backend, RunOptions, chunk_sizes, pack, run_robust, seed};
use crate::Error;

/// What [`check_plugin`] checks with.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The endpoint parameters, as JSON text: the plugin is configured with
    /// them, and they must be accepted.
    pub params: String,
    /// Valid example measurements, as users submit them (JSON texts; at
    /// least one). The round trips shard all of them; the other checks use
    /// the first and the last.
    pub measurements: Vec<String>,
    /// The plugin is robust (contract `guardian:plugin@0.2.0`, exported with
    /// [`crate::export_robust_plugin!`]): its reports are verified, so it
    /// gets the robust checks instead of the 0.1 round trips.
    pub robust: bool,
    /// The numbers of servers the round trips run for.
    pub servers: RangeInclusive<u32>,
    /// The result the measurements must give, when known: compared with
    /// every round trip's (0.1: folded without `release`; robust: the
    /// whole batch, released).
    pub expected: Option<serde_json::Value>,
}

impl CheckOptions {
    /// The checks of a 0.1 plugin configured with `params`, for 2 to 5
    /// servers, on `measurements` (surrounding blanks trimmed, blank ones
    /// skipped, so the lines of a `measurements.jsonl` file can be given as
    /// they are).
    pub fn new<M: AsRef<str>>(
        params: impl Into<String>,
        measurements: impl IntoIterator<Item = M>,
    ) -> Self {
        CheckOptions {
            params: params.into(),
            measurements: measurements
                .into_iter()
                .map(|m| m.as_ref().trim().to_owned())
                .filter(|m| !m.is_empty())
                .collect(),
            robust: false,
            servers: 2..=5,
            expected: None,
        }
    }
}

/// How one check went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It holds; the text says what was seen.
    Passed(String),
    /// It holds, but the plugin does something a server would regret; the
    /// text says what.
    Warning(String),
    /// It does not hold; the text says how.
    Failed(String),
}

/// One check of [`check_plugin`]: its name and how it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What is checked, in a few words ("bad shares are refused").
    pub name: String,
    /// How it went.
    pub outcome: Outcome,
}

impl Check {
    fn new(name: impl Into<String>, outcome: Outcome) -> Self {
        Check {
            name: name.into(),
            outcome,
        }
    }

    /// Whether the check failed.
    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Failed(_))
    }
}

/// The check for people: `ok`, `warn` or `FAIL`, the name, and the details
/// indented on the lines after.
impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (tag, detail) = match &self.outcome {
            Outcome::Passed(d) => ("ok  ", d),
            Outcome::Warning(d) => ("warn", d),
            Outcome::Failed(d) => ("FAIL", d),
        };
        writeln!(f, "{tag}  {}", self.name)?;
        for line in detail.lines().filter(|l| !l.is_empty()) {
            writeln!(f, "      {line}")?;
        }
        Ok(())
    }
}

/// Runs every check of the contract `options.robust` names on `backend`
/// and returns each outcome, in the order run; a check that fails does not
/// stop the others. A check that panics (a native plugin's bug) fails with
/// the panic's message.
///
/// Every plugin: `configure` accepts the parameters and is deterministic,
/// unknown parameters are refused (a warning otherwise), a measurement that
/// is not JSON is refused with `invalid_measurement`. Contract 0.1: round
/// trips for every number of `options.servers`, folded in chunks of 1, 3
/// and every share, give one result; `release` is deterministic given its
/// seed; `shard` is deterministic and random by its seed; malformed shares
/// are refused with `invalid_share`. Robust plugins: round trips through
/// the verification round ([`super::check_robust_round_trips`]),
/// determinism of every step ([`super::check_robust_deterministic`]),
/// tampered reports rejected for 2 and 3 servers
/// ([`super::check_tampering_rejected`]).
pub fn check_plugin(backend: &dyn Backend, options: &CheckOptions) -> Vec<Check> {
    let accepted = "configure accepts the parameters";
    let config = match backend.configure(&options.params) {
        Ok(config) => config,
        Err(e) => {
            let why = format!("--params {}: {}", options.params, describe(&e));
            return vec![Check::new(accepted, Outcome::Failed(why))];
        }
    };
    if options.measurements.is_empty() {
        let why = "no example measurement: the checks need at least one valid measurement";
        return vec![Check::new("measurements", Outcome::Failed(why.into()))];
    }
    let cx = Context {
        backend,
        options,
        config: &config,
    };
    let mut checks = vec![Check::new(
        accepted,
        Outcome::Passed(format!(
            "configuration: {}",
            String::from_utf8_lossy(&config)
        )),
    )];
    let mut run = |name: String, check: &dyn Fn() -> Outcome| {
        let outcome = catch_unwind(AssertUnwindSafe(check)).unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            Outcome::Failed(format!("panicked: {message}"))
        });
        checks.push(Check::new(name, outcome));
    };
    run("configure is deterministic".into(), &|| {
        configure_is_deterministic(&cx)
    });
    run("unknown parameters are refused".into(), &|| {
        unknown_params_refused(&cx)
    });
    run("a measurement that is not JSON is refused".into(), &|| {
        bad_measurement_refused(&cx)
    });
    let servers = format!(
        "{} to {} servers",
        options.servers.start(),
        options.servers.end()
    );
    if options.robust {
        let batch = RunOptions {
            servers: 2,
            chunk: options.measurements.len(),
            seed: 1,
        };
        let expected = match run_robust(backend, &config, &options.measurements, batch) {
            Ok(result) => result,
            Err(e) => {
                run("a batch of 2 servers".into(), &|| {
                    Outcome::Failed(describe(&e))
                });
                return checks;
            }
        };
        let outcome = match &options.expected {
            Some(wanted) if *wanted != expected => {
                Outcome::Failed(format!("the result is {expected}, expected {wanted}"))
            }
            _ => Outcome::Passed(format!("result: {expected}")),
        };
        run("a batch of 2 servers".into(), &|| outcome.clone());
        let measurements = &options.measurements;
        let passed = |result: Result<String, String>| match result {
            Ok(seen) => Outcome::Passed(seen),
            Err(e) => Outcome::Failed(e),
        };
        run(
            format!("round trips: {servers}, verified in chunks"),
            &|| {
                passed(robust_round_trips(
                    backend,
                    &config,
                    measurements,
                    &expected,
                    options.servers.clone(),
                    ROBUST_SEED,
                ))
            },
        );
        run("every step is deterministic given its seed".into(), &|| {
            passed(robust_deterministic(
                backend,
                &config,
                &measurements[0],
                ROBUST_SEED,
            ))
        });
        run(
            "tampered reports are rejected (2 and 3 servers)".into(),
            &|| {
                passed(
                    [2, 3]
                        .into_iter()
                        .map(|servers| {
                            tampering_rejected(backend, &config, measurements, servers, ROBUST_SEED)
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(|seen| seen.join("\n")),
                )
            },
        );
    } else {
        run(format!("round trips: {servers}, folded in chunks"), &|| {
            round_trips(&cx)
        });
        run("release".into(), &|| release(&cx));
        run(
            "shard is deterministic and random by its seed".into(),
            &|| shard_is_deterministic(&cx),
        );
        run("bad shares are refused".into(), &|| bad_shares_refused(&cx));
    }
    checks
}

/// [`check_plugin`] for `#[test]`s: returns the checks (warnings included)
/// when none failed.
///
/// # Panics
/// When a check failed, with every check's outcome.
#[track_caller]
pub fn assert_plugin(backend: &dyn Backend, options: &CheckOptions) -> Vec<Check> {
    let checks = check_plugin(backend, options);
    let failed = checks.iter().filter(|c| c.failed()).count();
    if failed > 0 {
        let report: String = checks.iter().map(Check::to_string).collect();
        panic!("{failed} of {} checks failed:\n{report}", checks.len());
    }
    checks
}

/// The seed of the robust checks, as `guardian plugin check` has always
/// run them.
const ROBUST_SEED: u64 = 7;

/// What every check takes.
struct Context<'a> {
    backend: &'a dyn Backend,
    options: &'a CheckOptions,
    config: &'a [u8],
}

fn describe(e: &Error) -> String {
    format!("{} ({})", e.message(), e.kind())
}

fn configure_is_deterministic(cx: &Context) -> Outcome {
    for _ in 0..3 {
        match cx.backend.configure(&cx.options.params) {
            Ok(again) if again == cx.config => {}
            Ok(again) => {
                return Outcome::Failed(format!(
                    "the same parameters gave another configuration:\n{}\nthen\n{}\n\
                     the servers hash the configuration to agree on an endpoint: \
                     configure must depend on its parameters only",
                    String::from_utf8_lossy(cx.config),
                    String::from_utf8_lossy(&again)
                ));
            }
            Err(e) => return Outcome::Failed(format!("configure failed: {}", describe(&e))),
        }
    }
    Outcome::Passed("the same configuration on every call".into())
}

fn unknown_params_refused(cx: &Context) -> Outcome {
    let Ok(serde_json::Value::Object(mut params)) = serde_json::from_str(&cx.options.params) else {
        return Outcome::Passed("the parameters are not an object: nothing to add".into());
    };
    params.insert("surely_not_a_parameter".into(), serde_json::json!(1));
    let text = serde_json::Value::Object(params).to_string();
    match cx.backend.configure(&text) {
        Err(Error::InvalidParams(m)) => Outcome::Passed(format!("refused: {m}")),
        Err(e) => Outcome::Failed(format!(
            "refused, but as {} instead of invalid_params: {}",
            e.kind(),
            e.message()
        )),
        Ok(_) => Outcome::Warning(
            "`surely_not_a_parameter` was accepted: a typo in an endpoint's parameters \
             would be ignored silently; add #[serde(deny_unknown_fields)] to the config"
                .into(),
        ),
    }
}

fn bad_measurement_refused(cx: &Context) -> Outcome {
    let result = if cx.options.robust {
        cx.backend
            .shard_report(cx.config, "not json", 2, &[0; 16], &[0; 32])
            .map(|_| ())
    } else {
        cx.backend
            .shard(cx.config, "not json", 2, &[0; 32])
            .map(|_| ())
    };
    match result {
        Err(Error::InvalidMeasurement(m)) => Outcome::Passed(format!("refused: {m}")),
        Err(e) => Outcome::Failed(format!(
            "refused as {} instead of invalid_measurement: {}",
            e.kind(),
            e.message()
        )),
        Ok(()) => Outcome::Failed("`not json` was sharded".into()),
    }
}

/// One batch through every server as a server runs it, each failure named
/// by its step; `release` `None` skips `release` (the aggregates are
/// unsharded as folded).
fn pipeline(
    cx: &Context,
    servers: u32,
    chunk: usize,
    run_seed: u64,
    release: Option<u64>,
) -> Result<serde_json::Value, String> {
    let at = |step: &str, e: Error| format!("{step}: {}", describe(&e));
    let measurements = &cx.options.measurements;
    let mut per_server = vec![Vec::new(); servers as usize];
    for (i, m) in measurements.iter().enumerate() {
        let shares = cx
            .backend
            .shard(cx.config, m, servers, &seed(run_seed, i as u64))
            .map_err(|e| at(&format!("shard {m}"), e))?;
        if shares.len() != servers as usize {
            return Err(format!(
                "shard {m} made {} shares for {servers} servers",
                shares.len()
            ));
        }
        for (server, share) in shares.into_iter().enumerate() {
            cx.backend
                .validate(cx.config, &share, server as u32)
                .map_err(|e| at(&format!("validate of server {server}'s share of {m}"), e))?;
            per_server[server].push(share);
        }
    }
    let count = measurements.len() as u64;
    let mut aggregates = Vec::new();
    for (server, shares) in per_server.iter().enumerate() {
        let init = cx.backend.init(cx.config).map_err(|e| at("init", e))?;
        let mut total = init.clone();
        for part in shares.chunks(chunk.max(1)) {
            let refs: Vec<&[u8]> = part.iter().map(Vec::as_slice).collect();
            let (data, ends) = pack(&refs);
            let folded = cx
                .backend
                .accumulate(cx.config, &init, &data, &ends)
                .map_err(|e| at("accumulate", e))?;
            total = cx
                .backend
                .merge(cx.config, &total, &folded)
                .map_err(|e| at("merge", e))?;
        }
        if let Some(release) = release {
            let release_seed = seed(release, u64::MAX - server as u64);
            total = cx
                .backend
                .release(cx.config, &total, count, server as u32, &release_seed)
                .map_err(|e| at("release", e))?;
        }
        aggregates.push(total);
    }
    let text = cx
        .backend
        .unshard(cx.config, &aggregates, count)
        .map_err(|e| at("unshard", e))?;
    serde_json::from_str(&text).map_err(|e| format!("unshard returned invalid JSON: {e}"))
}

fn round_trips(cx: &Context) -> Outcome {
    let mut first: Option<(String, serde_json::Value)> = None;
    for servers in cx.options.servers.clone() {
        for chunk in chunk_sizes(cx.options.measurements.len()) {
            let run = format!("{servers} servers, chunks of {chunk}");
            let run_seed = 1000 * u64::from(servers) + chunk as u64;
            let result = match pipeline(cx, servers, chunk, run_seed, None) {
                Ok(result) => result,
                Err(e) => return Outcome::Failed(format!("{run}: {e}")),
            };
            match &first {
                None => first = Some((run, result)),
                Some((first_run, expected)) if *expected != result => {
                    return Outcome::Failed(format!(
                        "the result depends on how the measurements were split and folded:\n\
                         {first_run}: {expected}\n{run}: {result}\n\
                         shares must add up to the measurement and accumulate/merge must \
                         add: a server sees only random shares, folded in any grouping"
                    ));
                }
                Some(_) => {}
            }
        }
    }
    let Some((_, result)) = first else {
        return Outcome::Failed("no number of servers to run for".into());
    };
    match &cx.options.expected {
        Some(wanted) if *wanted != result => Outcome::Failed(format!(
            "the same result for every split and grouping, but {result} where {wanted} \
             was expected"
        )),
        _ => Outcome::Passed(format!(
            "without release, the same result for every split and grouping: {result}"
        )),
    }
}

fn release(cx: &Context) -> Outcome {
    let mut noisy = false;
    for servers in cx.options.servers.clone() {
        let plain = pipeline(cx, servers, 3, 7, None);
        let released = pipeline(cx, servers, 3, 7, Some(1));
        let again = pipeline(cx, servers, 3, 7, Some(1));
        let other = pipeline(cx, servers, 3, 7, Some(2));
        let (plain, released, again, other) = match (plain, released, again, other) {
            (Ok(p), Ok(r), Ok(a), Ok(o)) => (p, r, a, o),
            (Err(e), ..) | (_, Err(e), ..) | (.., Err(e), _) | (.., Err(e)) => {
                return Outcome::Failed(format!("{servers} servers: {e}"));
            }
        };
        if released != again {
            return Outcome::Failed(format!(
                "{servers} servers: release is not deterministic given its seed: \
                 {released} then {again}"
            ));
        }
        noisy |= released != plain || other != plain;
    }
    Outcome::Passed(if noisy {
        "deterministic given its seed; adds noise (other seeds, other results), as a \
         differentially private plugin does"
            .into()
    } else {
        "releases the aggregate unchanged".into()
    })
}

fn shard_is_deterministic(cx: &Context) -> Outcome {
    let m = &cx.options.measurements[0];
    let shard = |s: u64| cx.backend.shard(cx.config, m, 3, &seed(s, 0));
    match (shard(1), shard(1), shard(2)) {
        (Ok(a), Ok(b), Ok(c)) => {
            if a != b {
                Outcome::Failed(format!(
                    "shard {m} with the same seed gave other shares: it must take its \
                     randomness from the seed only"
                ))
            } else if a == c {
                Outcome::Failed(format!(
                    "shard {m} gave the same shares for another seed: shares that are not \
                     random reveal the measurement"
                ))
            } else {
                Outcome::Passed("the same shares for a seed, others for another seed".into())
            }
        }
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => {
            Outcome::Failed(format!("shard {m}: {}", describe(&e)))
        }
    }
}

fn bad_shares_refused(cx: &Context) -> Outcome {
    let m = &cx.options.measurements[0];
    let share = match cx.backend.shard(cx.config, m, 2, &seed(3, 0)) {
        Ok(mut shares) if !shares.is_empty() => shares.remove(0),
        Ok(_) => return Outcome::Failed(format!("shard {m} made no share")),
        Err(e) => return Outcome::Failed(format!("shard {m}: {}", describe(&e))),
    };
    let mut bad: Vec<(&str, Vec<u8>)> = vec![
        ("one byte more", [share.as_slice(), &[0]].concat()),
        ("twice as long", [share.as_slice(), &share].concat()),
    ];
    if !share.is_empty() {
        bad.push(("one byte less", share[..share.len() - 1].to_vec()));
        bad.push(("empty", Vec::new()));
    }
    let mut failures = Vec::new();
    for (what, bytes) in &bad {
        match cx.backend.validate(cx.config, bytes, 0) {
            Err(Error::InvalidShare(_)) => {}
            Err(e) => failures.push(format!(
                "a share {what} was refused as {} instead of invalid_share: {}",
                e.kind(),
                e.message()
            )),
            Ok(()) => failures.push(format!(
                "a share {what} ({} bytes, the honest one has {}) was accepted: \
                 validate must check what accumulate relies on",
                bytes.len(),
                share.len()
            )),
        }
    }
    if failures.is_empty() {
        Outcome::Passed(format!(
            "refused {} malformed shares with invalid_share",
            bad.len()
        ))
    } else {
        Outcome::Failed(failures.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Native;
    use crate::{Info, Plugin, Rng, ring};

    /// A count with one flaw at a time, chosen by its parameters.
    struct Flawed;

    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Flaw {
        flaw: String,
    }

    impl Plugin for Flawed {
        type Config = Flaw;
        type Measurement = u64;
        type Share = Vec<u64>;
        type Aggregate = Vec<u64>;

        fn info() -> Info {
            Info::new("flawed", "0.1.0", "A count with a flaw.")
        }

        fn configure(params: serde_json::Value) -> Result<Flaw, Error> {
            crate::params(params)
        }

        fn shard(flaw: &Flaw, m: u64, servers: u32, rng: &mut Rng) -> Result<Vec<Vec<u64>>, Error> {
            let mut shares = ring::split(&[m], servers, rng);
            if flaw.flaw == "non-additive" {
                shares[0][0] ^= 1;
            }
            Ok(shares)
        }

        fn validate(flaw: &Flaw, share: &Vec<u64>, _server: u32) -> Result<(), Error> {
            if flaw.flaw == "lax-validate" {
                return Ok(());
            }
            ring::check_len(share, 1)
        }

        fn init(_: &Flaw) -> Vec<u64> {
            vec![0]
        }

        fn accumulate(_: &Flaw, agg: &mut Vec<u64>, share: &Vec<u64>) -> Result<(), Error> {
            ring::add_assign(agg, &share[..1])
        }

        fn unshard(
            flaw: &Flaw,
            aggs: Vec<Vec<u64>>,
            _count: u64,
        ) -> Result<serde_json::Value, Error> {
            assert!(flaw.flaw != "panic", "the plugin's own bug");
            Ok(serde_json::json!(ring::sum_all(&aggs, 1)?[0]))
        }
    }

    /// The names of the checks that failed, for `flaw`.
    fn failed(flaw: &str) -> Vec<(String, String)> {
        let params = format!(r#"{{"flaw": "{flaw}"}}"#);
        check_plugin(
            &Native::<Flawed>::new(),
            &CheckOptions::new(params, ["1", "2", "3", "4"]),
        )
        .into_iter()
        .filter_map(|check| match check.outcome {
            Outcome::Failed(why) => Some((check.name, why)),
            _ => None,
        })
        .collect()
    }

    #[test]
    fn each_flaw_fails_its_check_and_only_it() {
        assert_eq!(failed("none"), []);
        for (flaw, check, why) in [
            (
                "non-additive",
                "round trips: 2 to 5 servers, folded in chunks",
                "depends on how the measurements were split",
            ),
            (
                "lax-validate",
                "bad shares are refused",
                "a share twice as long (16 bytes, the honest one has 8) was accepted",
            ),
            (
                "panic",
                "round trips: 2 to 5 servers, folded in chunks",
                "panicked: the plugin's own bug",
            ),
        ] {
            let failed = failed(flaw);
            assert!(
                failed
                    .iter()
                    .any(|(name, text)| name == check && text.contains(why)),
                "{flaw}: {failed:?}"
            );
            if flaw != "panic" {
                assert_eq!(failed.len(), 1, "{flaw}: {failed:?}");
            }
        }
    }

    #[test]
    fn refused_parameters_and_no_measurements_stop_the_suite() {
        let plugin = Native::<Flawed>::new();
        let checks = check_plugin(&plugin, &CheckOptions::new(r#"{"flw": "none"}"#, ["1"]));
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert!(checks[0].failed() && checks[0].to_string().contains("unknown field"));
        let checks = check_plugin(&plugin, &CheckOptions::new(r#"{"flaw": "none"}"#, [""]));
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert!(checks[0].failed() && checks[0].name == "measurements");
    }

    #[test]
    #[should_panic(expected = "1 of 8 checks failed")]
    fn assert_plugin_panics_with_the_report() {
        let options = CheckOptions::new(r#"{"flaw": "lax-validate"}"#, ["1", "2"]);
        assert_plugin(&Native::<Flawed>::new(), &options);
    }

    #[test]
    fn a_check_shows_its_outcome_and_details() {
        let check = Check::new("c", Outcome::Failed("broken\n\nbecause".into()));
        assert_eq!(check.to_string(), "FAIL  c\n      broken\n      because\n");
        assert!(check.failed());
        let check = Check::new("b", Outcome::Warning("hmm".into()));
        assert_eq!(check.to_string(), "warn  b\n      hmm\n");
        assert!(!check.failed());
    }

    #[test]
    fn measurement_lines_are_trimmed_and_blank_ones_skipped() {
        let options = CheckOptions::new("{}", "1\n\n 2 \n".lines());
        assert_eq!(options.measurements, ["1", "2"]);
        assert_eq!(options.servers, 2..=5);
    }
}
