use std::time::{Duration, Instant};

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
fn a_component_of_another_world_is_refused_naming_what_is_missing() {
    let err = runtime().load(&fixture("fixture_other_world")).unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld(_)), "{err}");
    assert!(
        err.to_string().contains("guardian:plugin/algorithm"),
        "{err}"
    );
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
    let options = RuntimeOptions {
        deadline: Duration::from_millis(200),
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
    assert!(elapsed < Duration::from_secs(1), "{mode} took {elapsed:?}");

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
