use std::time::{Duration, Instant};

use guardian_sdk::raw::{Batch, Started};
use guardian_sdk::testing::{RunOptions, run_with};

use super::builtins::BUILTINS;
use super::*;

fn builtin(name: &str) -> &'static [u8] {
    BUILTINS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, wasm)| *wasm)
        .unwrap()
}

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("GUARDIAN_FIXTURES_DIR")).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn runtime() -> Runtime {
    Runtime::new(RuntimeOptions::default()).unwrap()
}

/// The built-ins of contract 0.1.0, which must keep working as they did.
const NOT_ROBUST: [&str; 6] = [
    "count",
    "dp-histogram",
    "dp-sum",
    "histogram",
    "mean",
    "sum",
];

#[test]
fn every_builtin_loads_and_names_itself() {
    let runtime = runtime();
    assert!(
        runtime.pooling(),
        "this machine supports the pooling allocator"
    );
    assert!(BUILTINS.len() >= 5, "{} built-ins", BUILTINS.len());
    for (name, wasm) in BUILTINS {
        let plugin = runtime.load(wasm).unwrap();
        assert_eq!(plugin.info().name, *name);
        assert!(!plugin.info().description.is_empty(), "{name}");
        serde_json::from_str::<serde_json::Value>(&plugin.info().params_schema)
            .unwrap_or_else(|e| panic!("{name}: params schema is not JSON: {e}"));
        assert_eq!(plugin.digest(), <[u8; 32]>::from(Sha256::digest(wasm)));
        // The robust built-ins are the Prio3 ones; the others implement 0.1.0.
        assert_eq!(plugin.robust(), name.starts_with("prio3-"), "{name}");
    }
    for name in NOT_ROBUST {
        assert!(
            BUILTINS.iter().any(|(n, _)| *n == name),
            "{name} is built in"
        );
    }
}

#[test]
fn sum_through_wasm_equals_the_plain_sum() {
    let plugin = runtime().load(builtin("sum")).unwrap();
    let config = plugin
        .configure(r#"{"length": 3, "signed": true}"#)
        .unwrap();
    let rows = [[1i64, -2, 3], [10, 20, -30], [i64::MAX, 1, 0], [5, 5, 5]];
    let measurements: Vec<String> = rows
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    let expected: Vec<i64> = (0..3)
        .map(|i| rows.iter().fold(0i64, |a, r| a.wrapping_add(r[i])))
        .collect();
    for servers in 2..=5 {
        let options = RunOptions {
            servers,
            chunk: 3,
            seed: u64::from(servers),
        };
        let result = run_with(&plugin, &config, &measurements, options).unwrap();
        assert_eq!(result, serde_json::json!(expected), "{servers} servers");
    }
}

#[test]
fn plugin_errors_come_back_with_the_plugins_message() {
    let runtime = runtime();
    let plugin = runtime.load(builtin("sum")).unwrap();
    let err = plugin.configure(r#"{"lenght": 3}"#).unwrap_err();
    assert_eq!(err.code(), "invalid_params");
    assert!(err.to_string().contains("unknown field `lenght`"), "{err}");
    let config = plugin.configure(r#"{"length": 3}"#).unwrap();
    let err = plugin.validate(&config, &[0; 23], 0).unwrap_err();
    assert_eq!(err.code(), "invalid_share");
    assert!(err.to_string().contains("23 bytes"), "{err}");
    // A rejection is a normal return: the instance is reused, not rebuilt.
    plugin.validate(&config, &[0; 24], 1).unwrap();
    assert_eq!(runtime.stats().instantiated, 1);
}

#[test]
fn a_measurement_that_does_not_decode_is_refused_in_the_plugins_words() {
    let runtime = runtime();
    // (plugin, params, measurement, the whole message)
    let cases = [
        (
            "count",
            "{}",
            r#""maybe""#,
            r#"expected true, false, 1 or 0, got "maybe""#,
        ),
        (
            "sum",
            r#"{"length": 3}"#,
            r#"{"a": 1}"#,
            r#"expected a list of 3 integers, got {"a": 1}"#,
        ),
        (
            "sum",
            "{}",
            "1.5",
            "expected an integer (or a list of one), got 1.5",
        ),
        (
            "histogram",
            r#"{"buckets": ["red", "green"]}"#,
            "[1]",
            r#"expected a bucket label ("red", "green") or a bucket index from 0 to 1, got [1]"#,
        ),
        (
            "dp-sum",
            r#"{"length": 2, "bound": 10, "epsilon": 1.0}"#,
            "true",
            "expected a list of 2 integers between -10 and 10, got true",
        ),
        (
            "count",
            "{}",
            "[1,",
            "not JSON (EOF while parsing a value at line 1 column 3): [1,",
        ),
    ];
    for (name, params, measurement, expected) in cases {
        let plugin = runtime.load(builtin(name)).unwrap();
        let config = plugin.configure(params).unwrap();
        let err = plugin.shard(&config, measurement, 2, &[7; 32]).unwrap_err();
        assert_eq!(err.code(), "invalid_measurement", "{name} {measurement}");
        let CallError::Rejected(refusal) = err else {
            panic!("{name}: not a refusal")
        };
        assert_eq!(refusal.message(), expected, "{name} {measurement}");
    }
}

#[test]
fn instances_are_reused_between_calls() {
    let runtime = runtime();
    let plugin = runtime.load(builtin("count")).unwrap();
    let config = plugin.configure("{}").unwrap();
    let share = plugin.shard(&config, "1", 2, &[7; 32]).unwrap().remove(0);
    for _ in 0..100 {
        plugin.validate(&config, &share, 0).unwrap();
    }
    assert_eq!(runtime.stats().instantiated, 1, "{:?}", runtime.stats());
}

#[test]
fn bytes_that_are_not_a_component_are_refused_with_a_reason() {
    let runtime = runtime();
    for (bytes, needle) in [
        (b"hello".to_vec(), "not a WebAssembly component"),
        (b"\0asm\x01\0\0\0".to_vec(), "core WebAssembly module"),
        (
            b"!<arch>\nlib.rmeta".to_vec(),
            "crate-type = [\"cdylib\", \"rlib\"]",
        ),
        (
            b"\x7fELF\x02\x01\x01".to_vec(),
            "native executable or library",
        ),
        (b"hello".to_vec(), "not WebAssembly at all"),
        (
            builtin("sum")[..1000].to_vec(),
            "not a WebAssembly component",
        ),
    ] {
        let err = runtime.load(&bytes).unwrap_err();
        assert!(matches!(err, LoadError::NotAComponent(_)), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }
}

#[test]
fn a_component_without_the_export_is_refused_naming_the_macro() {
    let err = runtime().load(&fixture("fixture_no_export")).unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld(_)), "{err}");
    let message = err.to_string();
    for needle in ["it exports nothing", "guardian_sdk::export_plugin!("] {
        assert!(message.contains(needle), "{needle}: {message}");
    }
}

#[test]
fn a_component_of_another_world_is_refused_naming_what_is_missing() {
    let err = runtime().load(&fixture("fixture_other_world")).unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld(_)), "{err}");
    let message = err.to_string();
    for needle in [
        // Both accepted worlds, and what each found missing.
        "guardian:plugin/plugin@0.1.0",
        "guardian:plugin/plugin@0.2.0",
        "guardian:plugin/algorithm@0.1.0",
        "guardian:plugin/algorithm@0.2.0",
    ] {
        assert!(message.contains(needle), "{needle}: {message}");
    }
}

#[test]
fn a_plugin_of_contract_0_1_keeps_its_behaviour_under_the_0_2_calls() {
    let runtime = runtime();
    // (plugin, params, measurement)
    let cases = [
        ("count", "{}", "1"),
        (
            "dp-histogram",
            r#"{"buckets": ["a", "b", "c"], "epsilon": 1.0}"#,
            r#""b""#,
        ),
        (
            "dp-sum",
            r#"{"length": 2, "bound": 10, "epsilon": 1.0}"#,
            "[3, -4]",
        ),
        (
            "histogram",
            r#"{"buckets": ["red", "green"]}"#,
            r#""green""#,
        ),
        ("mean", r#"{"length": 1}"#, "[42]"),
        ("sum", r#"{"length": 3}"#, "[1, 2, 3]"),
    ];
    assert_eq!(cases.map(|c| c.0), NOT_ROBUST);
    for (name, params, measurement) in cases {
        let plugin = runtime.load(builtin(name)).unwrap();
        assert!(!plugin.robust(), "{name}");
        let config = plugin
            .configure(params)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let seed = [7; 32];
        let shares = plugin.shard(&config, measurement, 3, &seed).unwrap();
        // 0.2's shard: the same shares (the report id is not used), and no
        // public share.
        let report = plugin
            .shard_report(&config, measurement, 3, &[1; 16], &seed)
            .unwrap();
        assert_eq!(report.shares, shares, "{name}");
        assert!(report.public_share.is_empty(), "{name}");
        for (server, share) in shares.iter().enumerate() {
            let server = server as u32;
            plugin.validate(&config, share, server).unwrap();
            plugin.validate_report(&config, &[], share, server).unwrap();
            // A 0.1 plugin takes no public share: one is refused, not dropped.
            let err = plugin
                .validate_report(&config, &[0], share, server)
                .unwrap_err();
            assert_eq!(err.code(), "invalid_share", "{name}: {err}");
            assert!(
                err.to_string()
                    .contains("this plugin takes no public share"),
                "{name}: {err}"
            );
        }
        // Refusals the plugin makes are its own, whichever call is used.
        let validate = plugin.validate(&config, &[0; 3], 0).unwrap_err();
        let validate_report = plugin
            .validate_report(&config, &[], &[0; 3], 0)
            .unwrap_err();
        assert_eq!(validate.to_string(), validate_report.to_string(), "{name}");

        // The verification round is not for a plugin without proofs.
        let batch = Batch::pack(&shares[..1]);
        let refusals = [
            plugin
                .verify_init(
                    &config,
                    &[0; 32],
                    3,
                    0,
                    &[1; 16],
                    &Batch::pack([[]; 1]),
                    &batch,
                )
                .map(drop),
            plugin
                .combine(
                    &config,
                    &Batch::pack([[]; 1]),
                    &[batch.clone(), batch.clone()],
                )
                .map(drop),
            plugin
                .verify_finish(&config, 3, 0, &batch, &batch)
                .map(drop),
        ];
        for refusal in refusals {
            let err = refusal.unwrap_err();
            assert_eq!(err.code(), "internal", "{name}: {err}");
            assert!(err.to_string().contains("not robust"), "{name}: {err}");
        }
    }
}

#[test]
fn compiled_artifacts_are_cached_and_reused_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let options = RuntimeOptions {
        cache_dir: Some(dir.path().to_owned()),
        ..Default::default()
    };
    let first = Runtime::new(options.clone()).unwrap();
    first.load(builtin("mean")).unwrap();
    assert_eq!(first.stats().compiled, 1);
    drop(first);

    let second = Runtime::new(options.clone()).unwrap();
    let plugin = second.load(builtin("mean")).unwrap();
    assert_eq!((second.stats().compiled, second.stats().from_cache), (0, 1));
    assert_eq!(plugin.info().name, "mean");

    // A damaged artifact is ignored and replaced, never trusted.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let third = Runtime::new(options).unwrap();
    third.load(builtin("mean")).unwrap();
    assert_eq!((third.stats().compiled, third.stats().from_cache), (1, 0));
}

/// Runs one hostile mode and checks the call fails fast with `code`, and that
/// the runtime still serves the same plugin and others afterwards.
fn hostile(mode: &str, code: &str, needle: &str) {
    // Only the endless loop is meant to meet the deadline: every other mode must
    // fail by its own cap, however busy the machine, so it gets ample time.
    let deadline = if mode == "loop" {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(10)
    };
    let options = RuntimeOptions {
        deadline,
        // Room for the huge output so that the output cap, not the memory cap, refuses it.
        memory_bytes: if mode == "huge" { 96 << 20 } else { 32 << 20 },
        output_bytes: 1 << 20,
        ..Default::default()
    };
    let runtime = Runtime::new(options).unwrap();
    let plugin = runtime.load(&fixture("fixture_hostile")).unwrap();
    let config = plugin
        .configure(&format!(r#"{{"mode": "{mode}"}}"#))
        .unwrap();
    let agg = plugin.init(&config);
    let started = Instant::now();
    let err = match mode {
        "huge" => agg.unwrap_err(),
        "trap" => plugin.validate(&config, &[0; 8], 0).unwrap_err(),
        "stack" => plugin.merge(&config, &[0; 8], &[0; 8]).unwrap_err(),
        _ => plugin
            .accumulate(&config, &agg.unwrap(), &[0; 8], &[8])
            .unwrap_err(),
    };
    let elapsed = started.elapsed();
    assert_eq!(err.code(), code, "{mode}: {err}");
    assert!(err.to_string().contains(needle), "{mode}: {err}");
    assert!(
        elapsed < deadline + Duration::from_secs(1),
        "{mode} took {elapsed:?}"
    );

    // The same plugin, in its well-behaved mode, and another plugin still work.
    let ok = plugin.configure(r#"{"mode": "ok"}"#).unwrap();
    plugin.init(&ok).unwrap();
    let sum = runtime.load(builtin("sum")).unwrap();
    let config = sum.configure(r#"{"length": 2}"#).unwrap();
    let result = run_with(
        &sum,
        &config,
        &["[1,2]".into(), "[3,4]".into()],
        RunOptions {
            servers: 2,
            chunk: 1,
            seed: 1,
        },
    )
    .unwrap();
    assert_eq!(result, serde_json::json!([4, 6]));
}

#[test]
fn an_endless_loop_times_out() {
    hostile("loop", "plugin_timeout", "deadline");
}

#[test]
fn a_memory_bomb_hits_the_cap() {
    hostile("memory", "plugin_memory_limit", "memory");
}

#[test]
fn a_panic_is_a_trap_with_the_panic_message() {
    hostile("trap", "plugin_trap", "hostile fixture: deliberate panic");
}

#[test]
fn a_huge_output_is_refused() {
    hostile("huge", "plugin_output_too_large", "cap of 1048576");
}

#[test]
fn unbounded_recursion_is_a_trap() {
    hostile("stack", "plugin_trap", "stack");
}

#[test]
fn plugins_see_no_environment_files_clock_or_network() {
    let plugin = runtime().load(&fixture("fixture_hostile")).unwrap();
    let config = plugin.configure(r#"{"mode": "probe"}"#).unwrap();
    let seen: serde_json::Value =
        serde_json::from_str(&plugin.unshard(&config, &[], 0).unwrap()).unwrap();
    assert_eq!(
        seen,
        serde_json::json!({
            "env_vars": 0,
            "args": 0,
            "read_root": false,
            "read_cwd": false,
            "now_secs": 0,
            "tcp_connect": false,
        })
    );
}

/// How one report fared in [`robust_run`]'s verification round.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Its proof held: it was aggregated.
    Valid,
    /// `verify-init` found it undecodable on some server.
    Invalid,
    /// `combine` found its proof false.
    Rejected,
}

/// The life of one batch of a robust plugin through wasm, as the servers
/// live it: shard every measurement into a report (its id is its index),
/// optionally `tamper` with one report's share for one server after sharding,
/// validate each share at its server, `verify-init` on every server, `combine`
/// on server 0, `verify-finish` on every server for the valid reports,
/// accumulate, release and unshard. Returns each report's verdict and the
/// result over the valid ones.
fn robust_run(
    plugin: &Plugin,
    config: &[u8],
    measurements: &[&str],
    servers: u32,
    tamper: Option<(usize, u32)>,
) -> (Vec<Verdict>, serde_json::Value) {
    let key = [9; 32];
    let ids: Vec<u8> = (0..measurements.len())
        .flat_map(|i| [i as u8 + 1; 16])
        .collect();
    let mut publics = Batch::default();
    let mut per_server = vec![Batch::default(); servers as usize];
    for (i, measurement) in measurements.iter().enumerate() {
        let mut report = plugin
            .shard_report(
                config,
                measurement,
                servers,
                &ids[16 * i..][..16],
                &[i as u8; 32],
            )
            .unwrap();
        assert_eq!(report.shares.len(), servers as usize);
        if let Some((report_index, server)) = tamper
            && report_index == i
        {
            report.shares[server as usize][0] ^= 1;
        }
        for (server, share) in report.shares.iter().enumerate() {
            // Validation checks lengths, not proofs: a tampered share passes.
            plugin
                .validate_report(config, &report.public_share, share, server as u32)
                .unwrap();
            per_server[server].push(share);
        }
        publics.push(&report.public_share);
    }

    // verify-init on every server, on its own shares.
    let started: Vec<Vec<Started>> = (0..servers)
        .map(|server| {
            plugin
                .verify_init(
                    config,
                    &key,
                    servers,
                    server,
                    &ids,
                    &publics,
                    &per_server[server as usize],
                )
                .unwrap()
        })
        .collect();
    let mut verdicts: Vec<Verdict> = (0..measurements.len())
        .map(|i| {
            if started
                .iter()
                .all(|s| matches!(s[i], Started::Ready { .. }))
            {
                Verdict::Valid
            } else {
                Verdict::Invalid
            }
        })
        .collect();
    let candidates: Vec<usize> = (0..measurements.len())
        .filter(|&i| verdicts[i] == Verdict::Valid)
        .collect();
    let part = |server: usize, state: bool| {
        Batch::pack(candidates.iter().map(|&i| match &started[server][i] {
            Started::Ready {
                state: s,
                verifier_share,
            } => {
                if state {
                    s.clone()
                } else {
                    verifier_share.clone()
                }
            }
            Started::Invalid(_) => unreachable!("only candidates"),
        }))
    };

    // combine on server 0, over every server's verifier shares.
    let verifier_shares: Vec<Batch> = (0..servers as usize).map(|s| part(s, false)).collect();
    let candidate_publics = Batch::pack(candidates.iter().map(|&i| publics.get(i).unwrap()));
    let combined = plugin
        .combine(config, &candidate_publics, &verifier_shares)
        .unwrap();
    assert_eq!(combined.len(), candidates.len());
    let mut valid = Vec::new();
    let mut messages = Batch::default();
    for (&i, outcome) in candidates.iter().zip(&combined) {
        match outcome {
            Ok(message) => {
                valid.push(i);
                messages.push(message);
            }
            Err(why) => {
                assert!(!why.is_empty(), "report {i} is rejected with a reason");
                verdicts[i] = Verdict::Rejected;
            }
        }
    }

    // verify-finish on every server for the valid reports, then the 0.1 fold.
    let count = valid.len() as u64;
    let released: Vec<Vec<u8>> = (0..servers)
        .map(|server| {
            let states = part(server as usize, true);
            let states = Batch::pack(
                candidates
                    .iter()
                    .zip(states.items().unwrap())
                    .filter(|(i, _)| valid.contains(i))
                    .map(|(_, state)| state),
            );
            let output = plugin
                .verify_finish(config, servers, server, &states, &messages)
                .unwrap();
            assert_eq!(output.len(), valid.len());
            let agg = plugin.init(config).unwrap();
            let agg = plugin
                .accumulate(config, &agg, &output.data, &output.ends)
                .unwrap();
            plugin
                .release(config, &agg, count, server, &[server as u8; 32])
                .unwrap()
        })
        .collect();
    let result = plugin.unshard(config, &released, count).unwrap();
    (verdicts, serde_json::from_str(&result).unwrap())
}

/// The robust built-in the flow tests run, its params and measurements, and
/// the exact sum of those.
const ROBUST: &str = "prio3-sum";
const ROBUST_PARAMS: &str = r#"{"max_measurement": 1000}"#;
const ROBUST_MEASUREMENTS: [&str; 5] = ["1", "20", "300", "1000", "0"];
const ROBUST_SUM: u64 = 1321;

#[test]
fn a_robust_builtin_verifies_and_sums_exactly_through_wasm() {
    let runtime = runtime();
    let plugin = runtime.load(builtin(ROBUST)).unwrap();
    assert!(plugin.robust(), "{plugin:?}");
    let config = plugin.configure(ROBUST_PARAMS).unwrap();
    for servers in [2, 3] {
        let (verdicts, result) = robust_run(&plugin, &config, &ROBUST_MEASUREMENTS, servers, None);
        assert!(
            verdicts.iter().all(|v| *v == Verdict::Valid),
            "{servers} servers: {verdicts:?}"
        );
        assert_eq!(result, serde_json::json!(ROBUST_SUM), "{servers} servers");
    }
    // The run reused its instances: rejections and verification calls are
    // normal returns.
    assert_eq!(runtime.stats().instantiated, 1, "{:?}", runtime.stats());
}

#[test]
fn a_tampered_share_is_rejected_by_combine_and_left_out() {
    let plugin = runtime().load(builtin(ROBUST)).unwrap();
    let config = plugin.configure(ROBUST_PARAMS).unwrap();
    // Report 2 (300) has one server's share altered after sharding: the
    // share still has the right length, so only the proof can tell.
    for server in [0, 1] {
        let (verdicts, result) =
            robust_run(&plugin, &config, &ROBUST_MEASUREMENTS, 2, Some((2, server)));
        assert_eq!(
            verdicts,
            [
                Verdict::Valid,
                Verdict::Valid,
                Verdict::Rejected,
                Verdict::Valid,
                Verdict::Valid
            ],
            "share of server {server}"
        );
        assert_eq!(
            result,
            serde_json::json!(ROBUST_SUM - 300),
            "share of server {server}"
        );
    }
}

#[test]
fn a_robust_plugin_refuses_the_0_1_shard_and_validates_without_public_share() {
    let plugin = runtime().load(builtin(ROBUST)).unwrap();
    let config = plugin.configure(ROBUST_PARAMS).unwrap();
    let err = plugin.shard(&config, "1", 2, &[7; 32]).unwrap_err();
    assert_eq!(err.code(), "internal", "{err}");
    assert!(err.to_string().contains("use shard_report"), "{err}");
    // `validate` is 0.2's with an empty public share: whatever the plugin
    // says of that, it says through `validate_report` too.
    let report = plugin
        .shard_report(&config, "1", 2, &[1; 16], &[7; 32])
        .unwrap();
    let direct = plugin.validate(&config, &report.shares[0], 0);
    let via = plugin.validate_report(&config, &[], &report.shares[0], 0);
    assert_eq!(
        direct.map_err(|e| e.to_string()),
        via.map_err(|e| e.to_string())
    );
}

#[test]
fn verification_outputs_are_capped() {
    let plugin = runtime().load(builtin(ROBUST)).unwrap();
    let config = plugin.configure(ROBUST_PARAMS).unwrap();
    let reports = 64;
    let ids: Vec<u8> = (0..reports).flat_map(|i| [i as u8; 16]).collect();
    let mut publics = Batch::default();
    let mut shares = Batch::default();
    for i in 0..reports {
        let report = plugin
            .shard_report(&config, "7", 2, &ids[16 * i..][..16], &[i as u8; 32])
            .unwrap();
        publics.push(&report.public_share);
        shares.push(&report.shares[0]);
    }
    let started = plugin
        .verify_init(&config, &[9; 32], 2, 0, &ids, &publics, &shares)
        .unwrap();
    let bytes: usize = started
        .iter()
        .map(|s| match s {
            Started::Ready {
                state,
                verifier_share,
            } => state.len() + verifier_share.len(),
            Started::Invalid(why) => why.len(),
        })
        .sum();

    // The same call on a runtime whose cap is one byte short of the answer.
    let capped = Runtime::new(RuntimeOptions {
        output_bytes: bytes - 1,
        ..Default::default()
    })
    .unwrap();
    let capped = capped.load(builtin(ROBUST)).unwrap();
    let err = capped
        .verify_init(&config, &[9; 32], 2, 0, &ids, &publics, &shares)
        .unwrap_err();
    assert_eq!(err.code(), "plugin_output_too_large", "{err}");
    assert!(err.to_string().contains(&format!("{bytes} bytes")), "{err}");
}
