//! `mean` natively and through wasm (the component the host embeds), every
//! check on both backends: unsharded sums and means equal the plain ones.

use std::sync::LazyLock;

use guardian::runtime::{Plugin, testing::builtin};
use guardian_sdk::testing::{Backend, Native, RunOptions, assert_refused, run_with};
use mean::Mean;
use proptest::prelude::*;

/// The component, compiled once per test process and cloned for each test.
static WASM: LazyLock<Plugin> = LazyLock::new(|| builtin("mean"));

/// The plugin natively and through wasm, named for assertion messages.
fn backends() -> [(&'static str, Box<dyn Backend>); 2] {
    [
        ("native", Box::new(Native::<Mean>::new())),
        ("wasm", Box::new(WASM.clone())),
    ]
}

proptest! {
    #[test]
    fn unsharded_mean_equals_the_plain_mean(
        length in 1u32..6,
        rows in proptest::collection::vec(proptest::collection::vec(-1_000_000i64..1_000_000, 6), 1..40),
        servers in 2u32..=5,
        chunk in 1usize..10,
        seed in any::<u64>(),
    ) {
        let rows: Vec<Vec<i64>> = rows.into_iter().map(|r| r[..length as usize].to_vec()).collect();
        let measurements: Vec<String> = rows.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
        let sums: Vec<i64> = (0..length as usize).map(|i| rows.iter().map(|r| r[i]).sum()).collect();
        let n = rows.len() as f64;
        let means: Vec<f64> = sums.iter().map(|s| *s as f64 / n).collect();
        for (name, plugin) in backends() {
            let config = plugin.configure(&format!(r#"{{"length": {length}}}"#)).expect(name);
            let result = run_with(&*plugin, &config, &measurements, RunOptions { servers, chunk, seed }).expect(name);
            prop_assert_eq!(&result["count"], &serde_json::json!(rows.len()), "{}", name);
            prop_assert_eq!(&result["sum"], &serde_json::json!(sums), "{}", name);
            // JSON text does not round-trip every f64 bit for bit: compare means
            // to a relative 1e-12.
            let got: Vec<f64> = serde_json::from_value(result["mean"].clone()).expect(name);
            prop_assert_eq!(got.len(), means.len(), "{}", name);
            for (g, m) in got.iter().zip(&means) {
                prop_assert!((g - m).abs() <= 1e-12 * m.abs().max(1.0), "{}: {} != {}", name, g, m);
            }
        }
    }
}

#[test]
fn bad_params_are_refused() {
    for (name, plugin) in backends() {
        let result = plugin.configure(r#"{"length": 0}"#);
        assert_refused(name, result, "invalid_params", "at least 1");
        let result = plugin.configure(r#"{"length": -1}"#);
        assert_refused(name, result, "invalid_params", "invalid value");
        let config = plugin.configure("{}").expect(name);
        let result = plugin.shard(&config, "[1, 2]", 2, &[0; 32]);
        assert_refused(
            name,
            result,
            "invalid_measurement",
            "expected 1 integers, got 2",
        );
    }
}
