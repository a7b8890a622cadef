//! `dp-sum` natively and through wasm (the component the host embeds), every
//! check on both backends: results equal the plain sum within the noise bound
//! (exactly, when the noise is negligible), the noise has the calibrated
//! spread for both mechanisms, and bad parameters, measurements and shares
//! are refused with messages that say what to fix.

use std::sync::LazyLock;

use dp_sum::DpSum;
use guardian::runtime::{Plugin, testing::builtin};
use guardian_sdk::dp::{gaussian_sigma, laplace_scale};
use guardian_sdk::testing::{self, Backend, Native, RunOptions, assert_refused, run_with};
use proptest::prelude::*;
use serde_json::{Value, json};

/// The component, compiled once per test process and cloned for each test.
static WASM: LazyLock<Plugin> = LazyLock::new(|| builtin("dp-sum"));

/// The plugin natively and through wasm, named for assertion messages.
fn backends() -> [(&'static str, Box<dyn Backend>); 2] {
    [
        ("native", Box::new(Native::<DpSum>::new())),
        ("wasm", Box::new(WASM.clone())),
    ]
}

/// The configuration `plugin` makes of `params`; `context` (the backend)
/// leads a failure's message.
fn configure(context: &str, plugin: &dyn Backend, params: Value) -> Vec<u8> {
    plugin
        .configure(&params.to_string())
        .unwrap_or_else(|e| panic!("{context} {params}: {e}"))
}

/// One batch of `rows` through shard, validate, accumulate, merge, release
/// and unshard; the plugin's result.
fn run(
    context: &str,
    plugin: &dyn Backend,
    config: &[u8],
    rows: &[Vec<i64>],
    options: RunOptions,
) -> Value {
    let measurements: Vec<String> = rows.iter().map(|r| json!(r).to_string()).collect();
    run_with(plugin, config, &measurements, options)
        .unwrap_or_else(|e| panic!("{context}: batch of {} reports: {e}", rows.len()))
}

/// The element-wise sum of `rows`, each of `length` values.
fn plain_sum(rows: &[Vec<i64>], length: usize) -> Vec<i64> {
    (0..length)
        .map(|i| rows.iter().map(|r| r[i]).sum())
        .collect()
}

/// The result's `sum` minus the plain sum: the noise, element by element.
fn noise(context: &str, result: &Value, rows: &[Vec<i64>], length: usize) -> Vec<i64> {
    let sum: Vec<i64> = serde_json::from_value(result["sum"].clone())
        .unwrap_or_else(|e| panic!("{context}: `sum` is not a vector of integers: {e}"));
    assert_eq!(sum.len(), length, "{context}: {result}");
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
        let rows = bounded(rows, length, bound);
        let (l1, l2) = (f64::from(length) * bound as f64, f64::from(length).sqrt() * bound as f64);
        let scale = if gaussian {
            gaussian_sigma(epsilon, delta, l2).unwrap()
        } else {
            laplace_scale(epsilon, l1).unwrap()
        };
        // 40 scales per server: a Laplace draw lands beyond with probability
        // about 2e^-40, a Gaussian one with e^-800.
        let limit = f64::from(servers) * 40.0 * scale;
        for (name, plugin) in backends() {
            let config = configure(name, &*plugin, params(length, bound, epsilon, gaussian, delta));
            let result = run(name, &*plugin, &config, &rows, RunOptions { servers, chunk, seed });
            // Equal but for the last bit: serde_json's fast float parser may be
            // one unit off when the configuration and the result are read back.
            let reported = result["noise_scale"].as_f64().expect(name);
            prop_assert!((reported / scale - 1.0).abs() < 1e-14, "{}: {} != {}", name, reported, scale);
            prop_assert_eq!(&result["mechanism"], if gaussian { "gaussian" } else { "laplace" }, "{}", name);
            prop_assert!((result["epsilon"].as_f64().expect(name) / epsilon - 1.0).abs() < 1e-14, "{}: {}", name, result);
            prop_assert_eq!(&result["delta"], &if gaussian { json!(delta) } else { Value::Null }, "{}", name);
            for e in noise(name, &result, &rows, length as usize) {
                prop_assert!((e as f64).abs() <= limit, "{}: noise {} above {}: {}", name, e, limit, result);
            }
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
        let rows = bounded(rows, length, 1);
        for (name, plugin) in backends() {
            let config = configure(name, &*plugin, params(length, 1, 100.0, gaussian, 0.5));
            let result = run(name, &*plugin, &config, &rows, RunOptions { servers, chunk, seed });
            prop_assert_eq!(&result["sum"], &json!(plain_sum(&rows, length as usize)), "{}", name);
        }
    }
}

/// Noise of `draws` elements from batches of a few reports, with the
/// empirical mean and variance set against the expected variance; `context`
/// (the backend and the mechanism) leads the messages.
fn check_spread(
    context: &str,
    plugin: &dyn Backend,
    config: &[u8],
    length: u32,
    servers: u32,
    expected_var: f64,
) {
    let rows: Vec<Vec<i64>> = (0..5)
        .map(|i| (0..length).map(|j| i64::from(j % 4) - i % 4).collect())
        .collect();
    let mut errors = Vec::new();
    for seed in 0..600 {
        let options = RunOptions {
            servers,
            chunk: 3,
            seed,
        };
        let result = run(context, plugin, config, &rows, options);
        errors.extend(
            noise(context, &result, &rows, length as usize)
                .into_iter()
                .map(|e| e as f64),
        );
    }
    let n = errors.len() as f64;
    let mean = errors.iter().sum::<f64>() / n;
    let var = errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / n;
    eprintln!(
        "{context}: {n} draws, mean {mean:.3}, variance {var:.2}, expected {expected_var:.2} \
         (ratio {:.4})",
        var / expected_var
    );
    // Standard errors: the mean's is sqrt(var / n); the variance's is
    // sqrt((kurtosis - 1) / n), about 2% here (kurtosis 4 for the sum of three
    // Laplace draws, 3 for Gaussians), so 10% is about five of them.
    assert!(
        mean.abs() < 5.0 * (expected_var / n).sqrt(),
        "{context}: noise mean {mean}"
    );
    assert!(
        (var / expected_var - 1.0).abs() < 0.10,
        "{context}: variance {var}, expected {expected_var}"
    );
}

#[test]
fn laplace_noise_has_the_calibrated_variance() {
    // L1 sensitivity 10·3 = 30, so scale 30/2 = 15 per server.
    let (length, bound, epsilon, servers) = (10, 3, 2.0, 3);
    let scale = laplace_scale(epsilon, 30.0).unwrap();
    assert!((scale - 15.0).abs() < 1e-9);
    // Discrete Laplace of scale t: variance 2p/(1-p)² with p = e^(-1/t);
    // each server adds one draw.
    let p = (-1.0 / scale).exp();
    let expected_var = f64::from(servers) * 2.0 * p / (1.0 - p).powi(2);
    for (name, plugin) in backends() {
        let config = configure(name, &*plugin, params(length, bound, epsilon, false, 0.0));
        let context = format!("{name} laplace");
        check_spread(&context, &*plugin, &config, length, servers, expected_var);
    }
}

#[test]
fn gaussian_noise_has_the_calibrated_variance() {
    // L2 sensitivity sqrt(10)·3.
    let (length, bound, epsilon, delta, servers) = (10, 3, 1.0, 1e-5, 2);
    let sigma = gaussian_sigma(epsilon, delta, 10f64.sqrt() * 3.0).unwrap();
    assert!((sigma - 46.5).abs() < 0.1, "{sigma}");
    // The discrete Gaussian's variance is σ² to within e^-(2π²σ²) at this σ.
    let expected_var = f64::from(servers) * sigma * sigma;
    for (name, plugin) in backends() {
        let config = configure(name, &*plugin, params(length, bound, epsilon, true, delta));
        let context = format!("{name} gaussian");
        check_spread(&context, &*plugin, &config, length, servers, expected_var);
    }
}

#[test]
fn release_noise_comes_from_the_seed_and_differs_between_servers() {
    for (name, plugin) in backends() {
        for gaussian in [false, true] {
            let config = configure(name, &*plugin, params(50, 10, 1.0, gaussian, 1e-6));
            let zero = plugin.init(&config).expect(name);
            let release = |server: u32, seed: u64| {
                plugin
                    .release(&config, &zero, 4, server, &testing::seed(seed, 9))
                    .expect(name)
            };
            assert_eq!(
                release(0, 1),
                release(0, 1),
                "{name}: same seed, same noise"
            );
            assert_ne!(release(0, 1), zero, "{name}: noise was added");
            assert_ne!(
                release(1, 2),
                release(0, 1),
                "{name}: each server's seed, its own noise"
            );
        }
    }
}

#[test]
fn configuration_is_canonical() {
    for (name, plugin) in backends() {
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
            let config = configure(name, &*plugin, params.clone());
            assert_eq!(
                String::from_utf8(config.clone()).expect(name),
                canonical,
                "{name} {params}"
            );
            // The canonical form configures to itself.
            let again = serde_json::from_slice(&config).expect(name);
            assert_eq!(configure(name, &*plugin, again), config, "{name} {params}");
        }
    }
}

#[test]
fn bad_params_are_refused_with_the_plugins_message() {
    for (name, plugin) in backends() {
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
            let result = plugin.configure(params);
            assert_refused(format!("{name} {params}"), result, "invalid_params", needle);
        }
    }
}

#[test]
fn measurements_outside_the_bound_are_refused() {
    let seed = testing::seed(0, 0);
    for (name, plugin) in backends() {
        let config = configure(
            name,
            &*plugin,
            json!({"length": 2, "bound": 5, "epsilon": 1}),
        );
        for ok in ["[5, -5]", "[0, 0]", "[-1, 4]"] {
            plugin
                .shard(&config, ok, 2, &seed)
                .unwrap_or_else(|e| panic!("{name} {ok}: {e}"));
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
            (
                "[1.5, 0]",
                "expected a list of 2 integers between -5 and 5, got [1.5, 0]",
            ),
            (
                "\"a\"",
                "expected a list of 2 integers between -5 and 5, got \"a\"",
            ),
        ] {
            let result = plugin.shard(&config, measurement, 2, &seed);
            let context = format!("{name} {measurement}");
            assert_refused(context, result, "invalid_measurement", needle);
        }
        let err = plugin.shard(&config, "[6, 0]", 2, &seed).expect_err(name);
        assert!(
            err.message()
                .ends_with("every value must be between -5 and 5 (the endpoint's bound)"),
            "{name}: {err}"
        );
    }
}

#[test]
fn bad_shares_are_refused() {
    for (name, plugin) in backends() {
        let config = configure(
            name,
            &*plugin,
            json!({"length": 3, "bound": 5, "epsilon": 1}),
        );
        // Wrong length.
        let result = plugin.validate(&config, &[0u8; 16], 0);
        let needle = "share has 2 elements, the endpoint expects 3";
        assert_refused(name, result, "invalid_share", needle);
        // Truncated.
        let result = plugin.validate(&config, &[0u8; 23], 1);
        assert_refused(name, result, "invalid_share", "23 bytes");
        plugin.validate(&config, &[0u8; 24], 1).expect(name);
        // The same shares slipped into a batch are refused when folded.
        let init = plugin.init(&config).expect(name);
        for bad in [&[0u8; 16][..], &[0u8; 23][..]] {
            let (data, ends) = testing::pack(&[&[0u8; 24], bad]);
            let err = plugin
                .accumulate(&config, &init, &data, &ends)
                .expect_err(name);
            assert_eq!(err.kind(), "invalid_share", "{name}: {err}");
        }
        // A released share of the wrong length is the server's fault.
        let err = plugin
            .unshard(&config, &[init.clone(), vec![0u8; 16]], 1)
            .expect_err(name);
        assert_eq!(err.kind(), "invalid_state", "{name}: {err}");
    }
}

#[test]
fn any_one_share_of_two_measurements_looks_alike() {
    let limit = testing::CHI2_255_P0001;
    for (name, plugin) in backends() {
        let config = configure(
            name,
            &*plugin,
            json!({"length": 4, "bound": 10, "epsilon": 1}),
        );
        let collect = |m: &str| -> Vec<u8> {
            (0..2000u64)
                .flat_map(|i| {
                    plugin
                        .shard(&config, m, 2, &testing::seed(i, 1))
                        .expect(name)
                        .remove(1)
                })
                .collect()
        };
        let (a, b) = (collect("[0,0,0,0]"), collect("[1,-2,3,-10]"));
        assert!(testing::chi_squared_uniform_bytes(&a) < limit, "{name}");
        assert!(testing::chi_squared_uniform_bytes(&b) < limit, "{name}");
        assert!(
            testing::chi_squared_two_sample_bytes(&a, &b) < limit,
            "{name}"
        );
    }
}
