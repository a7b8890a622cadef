//! `dp-sum` natively: results equal the plain sum within the noise bound
//! (exactly, when the noise is negligible), the noise has the calibrated
//! spread for both mechanisms, and bad parameters, measurements and shares
//! are refused with messages that say what to fix.

use dp_sum::DpSum;
use guardian_sdk::dp::{gaussian_sigma, laplace_scale};
use guardian_sdk::testing::{self, Backend, Native, RunOptions, run_with};
use proptest::prelude::*;
use serde_json::{Value, json};

fn configure(params: Value) -> Vec<u8> {
    Native::<DpSum>::new()
        .configure(&params.to_string())
        .unwrap_or_else(|e| panic!("{params}: {e}"))
}

/// One batch of `rows` through shard, validate, accumulate, merge, release
/// and unshard; the plugin's result.
fn run(config: &[u8], rows: &[Vec<i64>], servers: u32, chunk: usize, seed: u64) -> Value {
    let measurements: Vec<String> = rows.iter().map(|r| json!(r).to_string()).collect();
    let options = RunOptions {
        servers,
        chunk,
        seed,
    };
    run_with(&Native::<DpSum>::new(), config, &measurements, options)
        .unwrap_or_else(|e| panic!("batch of {} reports: {e}", rows.len()))
}

/// The element-wise sum of `rows`, each of `length` values.
fn plain_sum(rows: &[Vec<i64>], length: usize) -> Vec<i64> {
    (0..length)
        .map(|i| rows.iter().map(|r| r[i]).sum())
        .collect()
}

/// The result's `sum` minus the plain sum: the noise, element by element.
fn noise(result: &Value, rows: &[Vec<i64>], length: usize) -> Vec<i64> {
    let sum: Vec<i64> =
        serde_json::from_value(result["sum"].clone()).expect("`sum` is a vector of integers");
    assert_eq!(sum.len(), length, "{result}");
    sum.iter()
        .zip(plain_sum(rows, length))
        .map(|(noisy, plain)| noisy - plain)
        .collect()
}

/// Parameters for `mechanism`, with `delta` for the Gaussian.
fn params(length: u32, bound: u64, epsilon: f64, gaussian: bool, delta: f64) -> Value {
    if gaussian {
        json!({"length": length, "bound": bound, "epsilon": epsilon, "mechanism": "gaussian", "delta": delta})
    } else {
        json!({"length": length, "bound": bound, "epsilon": epsilon})
    }
}

/// `rows` cut to `length` values, each folded into [-bound, bound].
fn bounded(rows: Vec<Vec<i64>>, length: u32, bound: u64) -> Vec<Vec<i64>> {
    let modulus = i64::try_from(bound).expect("test bounds fit an i64") + 1;
    rows.into_iter()
        .map(|r| r[..length as usize].iter().map(|v| v % modulus).collect())
        .collect()
}

proptest! {
    #[test]
    fn result_is_the_plain_sum_within_the_noise_bound(
        length in 1u32..8,
        bound in 1u64..1000,
        rows in proptest::collection::vec(proptest::collection::vec(any::<i64>(), 8), 0..30),
        servers in 2u32..=5,
        chunk in 1usize..10,
        seed in any::<u64>(),
        epsilon in 0.1f64..=100.0,
        gaussian in any::<bool>(),
    ) {
        let delta = 1e-6;
        let config = configure(params(length, bound, epsilon, gaussian, delta));
        let rows = bounded(rows, length, bound);
        let result = run(&config, &rows, servers, chunk, seed);

        let (l1, l2) = (f64::from(length) * bound as f64, f64::from(length).sqrt() * bound as f64);
        let scale = if gaussian {
            gaussian_sigma(epsilon, delta, l2).unwrap()
        } else {
            laplace_scale(epsilon, l1).unwrap()
        };
        // Equal but for the last bit: serde_json's fast float parser may be
        // one unit off when the configuration and the result are read back.
        let reported = result["noise_scale"].as_f64().unwrap();
        prop_assert!((reported / scale - 1.0).abs() < 1e-14, "{} != {}", reported, scale);
        prop_assert_eq!(&result["mechanism"], if gaussian { "gaussian" } else { "laplace" });
        prop_assert!((result["epsilon"].as_f64().unwrap() / epsilon - 1.0).abs() < 1e-14);
        prop_assert_eq!(&result["delta"], &if gaussian { json!(delta) } else { Value::Null });
        // 40 scales per server: a Laplace draw lands beyond with probability
        // about 2e^-40, a Gaussian one with e^-800.
        let limit = f64::from(servers) * 40.0 * scale;
        for e in noise(&result, &rows, length as usize) {
            prop_assert!((e as f64).abs() <= limit, "noise {} above {}: {}", e, limit, result);
        }
    }

    /// With epsilon = 100 and bound 1 the noise is zero except with
    /// probability below e^-40 per draw, so sharing and folding must give
    /// the plain sum exactly.
    #[test]
    fn with_negligible_noise_the_result_is_exactly_the_plain_sum(
        length in 1u32..=2,
        rows in proptest::collection::vec(proptest::collection::vec(-1i64..=1, 2), 0..40),
        servers in 2u32..=5,
        chunk in 1usize..10,
        seed in any::<u64>(),
        gaussian in any::<bool>(),
    ) {
        let config = configure(params(length, 1, 100.0, gaussian, 0.5));
        let rows = bounded(rows, length, 1);
        let result = run(&config, &rows, servers, chunk, seed);
        prop_assert_eq!(&result["sum"], &json!(plain_sum(&rows, length as usize)));
    }
}

/// Noise of `draws` elements from batches of a few reports, with the
/// empirical mean and variance set against the expected variance.
fn check_spread(config: &[u8], length: u32, servers: u32, expected_var: f64, name: &str) {
    let rows: Vec<Vec<i64>> = (0..5)
        .map(|i| (0..length).map(|j| i64::from(j % 4) - i % 4).collect())
        .collect();
    let mut errors = Vec::new();
    for seed in 0..600 {
        let result = run(config, &rows, servers, 3, seed);
        errors.extend(
            noise(&result, &rows, length as usize)
                .into_iter()
                .map(|e| e as f64),
        );
    }
    let n = errors.len() as f64;
    let mean = errors.iter().sum::<f64>() / n;
    let var = errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / n;
    eprintln!(
        "{name}: {n} draws, mean {mean:.3}, variance {var:.2}, expected {expected_var:.2} \
         (ratio {:.4})",
        var / expected_var
    );
    // Standard errors: the mean's is sqrt(var / n); the variance's is
    // sqrt((kurtosis - 1) / n), about 2% here (kurtosis 4 for the sum of three
    // Laplace draws, 3 for Gaussians), so 10% is about five of them.
    assert!(
        mean.abs() < 5.0 * (expected_var / n).sqrt(),
        "{name}: noise mean {mean}"
    );
    assert!(
        (var / expected_var - 1.0).abs() < 0.10,
        "{name}: variance {var}, expected {expected_var}"
    );
}

#[test]
fn laplace_noise_has_the_calibrated_variance() {
    // L1 sensitivity 10·3 = 30, so scale 30/2 = 15 per server.
    let (length, bound, epsilon, servers) = (10, 3, 2.0, 3);
    let config = configure(params(length, bound, epsilon, false, 0.0));
    let scale = laplace_scale(epsilon, 30.0).unwrap();
    assert!((scale - 15.0).abs() < 1e-9);
    // Discrete Laplace of scale t: variance 2p/(1-p)² with p = e^(-1/t);
    // each server adds one draw.
    let p = (-1.0 / scale).exp();
    let expected_var = f64::from(servers) * 2.0 * p / (1.0 - p).powi(2);
    check_spread(&config, length, servers, expected_var, "laplace");
}

#[test]
fn gaussian_noise_has_the_calibrated_variance() {
    // L2 sensitivity sqrt(10)·3.
    let (length, bound, epsilon, delta, servers) = (10, 3, 1.0, 1e-5, 2);
    let config = configure(params(length, bound, epsilon, true, delta));
    let sigma = gaussian_sigma(epsilon, delta, 10f64.sqrt() * 3.0).unwrap();
    assert!((sigma - 46.5).abs() < 0.1, "{sigma}");
    // The discrete Gaussian's variance is σ² to within e^-(2π²σ²) at this σ.
    let expected_var = f64::from(servers) * sigma * sigma;
    check_spread(&config, length, servers, expected_var, "gaussian");
}

#[test]
fn release_noise_comes_from_the_seed_and_differs_between_servers() {
    let plugin = Native::<DpSum>::new();
    for gaussian in [false, true] {
        let config = configure(params(50, 10, 1.0, gaussian, 1e-6));
        let zero = plugin.init(&config).unwrap();
        let release = |server: u32, seed: u64| {
            plugin
                .release(&config, &zero, 4, server, &testing::seed(seed, 9))
                .unwrap()
        };
        assert_eq!(release(0, 1), release(0, 1), "same seed, same noise");
        assert_ne!(release(0, 1), zero, "noise was added");
        assert_ne!(
            release(1, 2),
            release(0, 1),
            "each server's seed, its own noise"
        );
    }
}

#[test]
fn configuration_is_canonical() {
    for (params, canonical) in [
        (
            json!({"bound": 5, "epsilon": 1}),
            r#"{"length":1,"bound":5,"epsilon":1.0,"mechanism":"laplace"}"#,
        ),
        (
            json!({"length": 3, "bound": 5, "epsilon": 0.5, "mechanism": "gaussian", "delta": 1e-6}),
            r#"{"length":3,"bound":5,"epsilon":0.5,"mechanism":"gaussian","delta":1e-6}"#,
        ),
        (
            json!({"mechanism": "laplace", "delta": null, "epsilon": 3, "bound": 2, "length": 4}),
            r#"{"length":4,"bound":2,"epsilon":3.0,"mechanism":"laplace"}"#,
        ),
    ] {
        let config = configure(params.clone());
        assert_eq!(
            String::from_utf8(config.clone()).unwrap(),
            canonical,
            "{params}"
        );
        // The canonical form configures to itself.
        assert_eq!(configure(serde_json::from_slice(&config).unwrap()), config);
    }
}

#[test]
fn bad_params_are_refused_with_the_plugins_message() {
    let plugin = Native::<DpSum>::new();
    for (params, needle) in [
        ("not json", "not valid JSON"),
        ("3", "invalid type: integer `3`, expected struct Config"),
        ("null", "missing field `bound`"),
        (
            r#"{"bound": 5, "epsilon": 1, "lenght": 3}"#,
            "unknown field `lenght`",
        ),
        (
            r#"{"length": 0, "bound": 5, "epsilon": 1}"#,
            "length must be at least 1, got 0",
        ),
        (
            r#"{"length": 100001, "bound": 5, "epsilon": 1}"#,
            "length must be at most 100000, got 100001",
        ),
        (
            r#"{"length": "3", "bound": 5, "epsilon": 1}"#,
            "invalid type: string \"3\"",
        ),
        (r#"{"length": 3, "epsilon": 1}"#, "missing field `bound`"),
        (
            r#"{"bound": 0, "epsilon": 1}"#,
            "bound must be at least 1, got 0",
        ),
        (
            r#"{"bound": -2, "epsilon": 1}"#,
            "invalid value: integer `-2`",
        ),
        (
            r#"{"bound": 1.5, "epsilon": 1}"#,
            "invalid type: floating point `1.5`",
        ),
        (r#"{"bound": 5}"#, "missing field `epsilon`"),
        (
            r#"{"bound": 5, "epsilon": 0}"#,
            "epsilon must be > 0 and at most 100, got 0",
        ),
        (
            r#"{"bound": 5, "epsilon": -1}"#,
            "epsilon must be > 0 and at most 100, got -1",
        ),
        (
            r#"{"bound": 5, "epsilon": 1000}"#,
            "epsilon must be > 0 and at most 100, got 1000",
        ),
        (
            r#"{"bound": 5, "epsilon": "1"}"#,
            "invalid type: string \"1\"",
        ),
        (
            r#"{"bound": 5, "epsilon": 1, "mechanism": "exponential"}"#,
            "unknown variant `exponential`, expected `laplace` or `gaussian`",
        ),
        (
            r#"{"bound": 5, "epsilon": 1, "mechanism": "gaussian"}"#,
            "\"mechanism\": \"gaussian\" needs delta",
        ),
        (
            r#"{"bound": 5, "epsilon": 1, "delta": 1e-6}"#,
            "delta applies only to \"mechanism\": \"gaussian\"",
        ),
        (
            r#"{"bound": 5, "epsilon": 1, "mechanism": "gaussian", "delta": 0}"#,
            "delta must be a number strictly between 0 and 1, got 0",
        ),
        (
            r#"{"bound": 5, "epsilon": 1, "mechanism": "gaussian", "delta": 1.5}"#,
            "delta must be a number strictly between 0 and 1, got 1.5",
        ),
        (
            r#"{"length": 1000, "bound": 1000000000000, "epsilon": 0.5}"#,
            "this privacy budget needs scale = 2.0000000000020003e15, outside the supported range \
             1e-6 to 1e12; raise epsilon (or delta) or lower the sensitivity",
        ),
        (
            r#"{"length": 1000, "bound": 1000000000, "epsilon": 0.5, "mechanism": "gaussian", "delta": 1e-6}"#,
            "this privacy budget needs sigma = ",
        ),
    ] {
        let err = plugin.configure(params).unwrap_err();
        assert_eq!(err.kind(), "invalid_params", "{params}");
        assert!(err.message().contains(needle), "{params}: {err}");
    }
}

#[test]
fn measurements_outside_the_bound_are_refused() {
    let plugin = Native::<DpSum>::new();
    let config = configure(json!({"length": 2, "bound": 5, "epsilon": 1}));
    let seed = testing::seed(0, 0);
    for ok in ["[5, -5]", "[0, 0]", "[-1, 4]"] {
        plugin.shard(&config, ok, 2, &seed).unwrap();
    }
    for (measurement, needle) in [
        ("[6, 0]", "value 6 at index 0 is out of range"),
        ("[0, -6]", "value -6 at index 1 is out of range"),
        (
            "[0, 18446744073709551615]",
            "value 18446744073709551615 at index 1",
        ),
        ("[1]", "expected 2 integers, got 1"),
        ("[1, 2, 3]", "expected 2 integers, got 3"),
        ("[1.5, 0]", "invalid measurement"),
        ("\"a\"", "invalid measurement"),
    ] {
        let err = plugin.shard(&config, measurement, 2, &seed).unwrap_err();
        assert_eq!(err.kind(), "invalid_measurement", "{measurement}");
        assert!(err.message().contains(needle), "{measurement}: {err}");
    }
    let err = plugin.shard(&config, "[6, 0]", 2, &seed).unwrap_err();
    assert!(
        err.message()
            .ends_with("every value must be between -5 and 5 (the endpoint's bound)"),
        "{err}"
    );
}

#[test]
fn bad_shares_are_refused() {
    let plugin = Native::<DpSum>::new();
    let config = configure(json!({"length": 3, "bound": 5, "epsilon": 1}));
    // Wrong length.
    let err = plugin.validate(&config, &[0u8; 16], 0).unwrap_err();
    assert_eq!(err.kind(), "invalid_share");
    assert!(
        err.message()
            .contains("share has 2 elements, the endpoint expects 3"),
        "{err}"
    );
    // Truncated.
    let err = plugin.validate(&config, &[0u8; 23], 1).unwrap_err();
    assert_eq!(err.kind(), "invalid_share");
    assert!(err.message().contains("23 bytes"), "{err}");
    plugin.validate(&config, &[0u8; 24], 1).unwrap();
    // The same shares slipped into a batch are refused when folded.
    let init = plugin.init(&config).unwrap();
    for bad in [&[0u8; 16][..], &[0u8; 23][..]] {
        let (data, ends) = testing::pack(&[&[0u8; 24], bad]);
        let err = plugin.accumulate(&config, &init, &data, &ends).unwrap_err();
        assert_eq!(err.kind(), "invalid_share", "{err}");
    }
    // A released share of the wrong length is the server's fault.
    let err = plugin
        .unshard(&config, &[init.clone(), vec![0u8; 16]], 1)
        .unwrap_err();
    assert_eq!(err.kind(), "invalid_state", "{err}");
}

#[test]
fn any_one_share_of_two_measurements_looks_alike() {
    let plugin = Native::<DpSum>::new();
    let config = configure(json!({"length": 4, "bound": 10, "epsilon": 1}));
    let collect = |m: &str| -> Vec<u8> {
        (0..2000u64)
            .flat_map(|i| {
                plugin
                    .shard(&config, m, 2, &testing::seed(i, 1))
                    .unwrap()
                    .remove(1)
            })
            .collect()
    };
    let (a, b) = (collect("[0,0,0,0]"), collect("[1,-2,3,-10]"));
    let limit = testing::CHI2_255_P0001;
    assert!(testing::chi_squared_uniform_bytes(&a) < limit);
    assert!(testing::chi_squared_uniform_bytes(&b) < limit);
    assert!(testing::chi_squared_two_sample_bytes(&a, &b) < limit);
}
