//! `dp-histogram` natively and through wasm (the component the host embeds),
//! every check on both backends: results equal the plain counts within the
//! noise bound, and the noise has the right scale over many batches.

use std::sync::LazyLock;

use dp_histogram::DpHistogram;
use guardian::runtime::{Plugin, testing::builtin};
use guardian_sdk::testing::{Backend, Native, RunOptions, assert_refused, run_with};

/// The component, compiled once per test process and cloned for each test.
static WASM: LazyLock<Plugin> = LazyLock::new(|| builtin("dp-histogram"));

/// The plugin natively and through wasm, named for assertion messages.
fn backends() -> [(&'static str, Box<dyn Backend>); 2] {
    [
        ("native", Box::new(Native::<DpHistogram>::new())),
        ("wasm", Box::new(WASM.clone())),
    ]
}

#[test]
fn noisy_counts_are_near_the_plain_counts_with_the_right_spread() {
    let epsilon: f64 = 0.5;
    let measurements: Vec<String> = (0..30).map(|i| (i % 3).to_string()).collect();
    let servers = 2u32;
    // Each server adds discrete Laplace noise of scale t = 1/epsilon:
    // variance 2p/(1-p)^2 with p = e^(-1/t); two servers add two draws.
    let p = (-epsilon).exp();
    let expected_var = servers as f64 * 2.0 * p / (1.0 - p).powi(2);
    for (name, plugin) in backends() {
        let config = plugin
            .configure(&format!(r#"{{"buckets": 3, "epsilon": {epsilon}}}"#))
            .expect(name);
        let mut errors = Vec::new();
        for seed in 0..400u64 {
            let options = RunOptions {
                servers,
                chunk: 8,
                seed,
            };
            let result = run_with(&*plugin, &config, &measurements, options).expect(name);
            let counts: Vec<i64> = serde_json::from_value(result["counts"].clone()).expect(name);
            for c in counts {
                errors.push((c - 10) as f64);
            }
        }
        let n = errors.len() as f64;
        let mean = errors.iter().sum::<f64>() / n;
        let var = errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.5, "{name}: noise mean {mean}");
        assert!(
            (var / expected_var - 1.0).abs() < 0.15,
            "{name}: variance {var}, expected {expected_var}"
        );
        // No draw is absurdly far: 40 scales is a probability of about e^-40.
        assert!(
            errors
                .iter()
                .all(|e| e.abs() < 40.0 / epsilon * servers as f64),
            "{name}"
        );
    }
}

#[test]
fn bad_params_are_refused() {
    for (name, plugin) in backends() {
        for (params, needle) in [
            (r#"{"buckets": 3, "epsilon": 0}"#, "epsilon must be > 0"),
            (r#"{"buckets": 3, "epsilon": -1}"#, "epsilon must be > 0"),
            (r#"{"buckets": 3, "epsilon": 1000}"#, "at most 100"),
            (r#"{"buckets": 3}"#, "missing field `epsilon`"),
            (r#"{"buckets": 0, "epsilon": 1}"#, "at least 1"),
            (r#"{"buckets": 3, "epsilon": "1"}"#, "invalid type"),
        ] {
            let result = plugin.configure(params);
            assert_refused(format!("{name} {params}"), result, "invalid_params", needle);
        }
    }
}
