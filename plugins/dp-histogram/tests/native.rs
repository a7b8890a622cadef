//! `dp-histogram` natively: results equal the plain counts within the noise
//! bound, and the noise has the right scale over many batches.

use dp_histogram::DpHistogram;
use guardian_sdk::testing::{Backend, Native, RunOptions, run_with};

#[test]
fn noisy_counts_are_near_the_plain_counts_with_the_right_spread() {
    let plugin = Native::<DpHistogram>::new();
    let epsilon: f64 = 0.5;
    let config = plugin
        .configure(&format!(r#"{{"buckets": 3, "epsilon": {epsilon}}}"#))
        .unwrap();
    let measurements: Vec<String> = (0..30).map(|i| (i % 3).to_string()).collect();
    let servers = 2u32;
    let mut errors = Vec::new();
    for seed in 0..400u64 {
        let result = run_with(
            &plugin,
            &config,
            &measurements,
            RunOptions {
                servers,
                chunk: 8,
                seed,
            },
        )
        .unwrap();
        let counts: Vec<i64> = serde_json::from_value(result["counts"].clone()).unwrap();
        for c in counts {
            errors.push((c - 10) as f64);
        }
    }
    // Each server adds discrete Laplace noise of scale t = 1/epsilon:
    // variance 2p/(1-p)^2 with p = e^(-1/t); two servers add two draws.
    let p = (-epsilon).exp();
    let expected_var = servers as f64 * 2.0 * p / (1.0 - p).powi(2);
    let n = errors.len() as f64;
    let mean = errors.iter().sum::<f64>() / n;
    let var = errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / n;
    assert!(mean.abs() < 0.5, "noise mean {mean}");
    assert!(
        (var / expected_var - 1.0).abs() < 0.15,
        "variance {var}, expected {expected_var}"
    );
    // No draw is absurdly far: 40 scales is a probability of about e^-40.
    assert!(
        errors
            .iter()
            .all(|e| e.abs() < 40.0 / epsilon * servers as f64)
    );
}

#[test]
fn bad_params_are_refused() {
    let plugin = Native::<DpHistogram>::new();
    for (params, needle) in [
        (r#"{"buckets": 3, "epsilon": 0}"#, "epsilon must be > 0"),
        (r#"{"buckets": 3, "epsilon": -1}"#, "epsilon must be > 0"),
        (r#"{"buckets": 3, "epsilon": 1000}"#, "at most 100"),
        (r#"{"buckets": 3}"#, "missing field `epsilon`"),
        (r#"{"buckets": 0, "epsilon": 1}"#, "at least 1"),
        (r#"{"buckets": 3, "epsilon": "1"}"#, "invalid type"),
    ] {
        let err = plugin.configure(params).unwrap_err();
        assert_eq!(err.kind(), "invalid_params");
        assert!(err.message().contains(needle), "{params}: {err}");
    }
}
