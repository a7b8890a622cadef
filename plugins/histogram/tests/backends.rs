//! `histogram` natively and through wasm (the component the host embeds),
//! every check on both backends: unsharded counts equal the plain bucket
//! counts.

use std::sync::LazyLock;

use guardian::runtime::{Plugin, testing::builtin};
use guardian_sdk::testing::{Backend, Native, RunOptions, assert_refused, run_with};
use histogram::Histogram;
use proptest::prelude::*;

/// The component, compiled once per test process and cloned for each test.
static WASM: LazyLock<Plugin> = LazyLock::new(|| builtin("histogram"));

/// The plugin natively and through wasm, named for assertion messages.
fn backends() -> [(&'static str, Box<dyn Backend>); 2] {
    [
        ("native", Box::new(Native::<Histogram>::new())),
        ("wasm", Box::new(WASM.clone())),
    ]
}

proptest! {
    #[test]
    fn unsharded_counts_equal_the_plain_counts(
        buckets in 1usize..8,
        picks in proptest::collection::vec(any::<u16>(), 1..60),
        servers in 2u32..=5,
        chunk in 1usize..10,
        seed in any::<u64>(),
    ) {
        let picks: Vec<usize> = picks.into_iter().map(|p| p as usize % buckets).collect();
        // Half by index, half by label: both name the same bucket.
        let measurements: Vec<String> = picks
            .iter()
            .enumerate()
            .map(|(i, p)| if i % 2 == 0 { p.to_string() } else { format!("\"{p}\"") })
            .collect();
        let mut expected = vec![0u64; buckets];
        picks.iter().for_each(|p| expected[*p] += 1);
        let labels: Vec<String> = (0..buckets).map(|i| i.to_string()).collect();
        let expected = serde_json::json!({"buckets": labels, "counts": expected});
        for (name, plugin) in backends() {
            let config = plugin.configure(&format!(r#"{{"buckets": {buckets}}}"#)).expect(name);
            let result = run_with(&*plugin, &config, &measurements, RunOptions { servers, chunk, seed }).expect(name);
            prop_assert_eq!(&result, &expected, "{}", name);
        }
    }
}

#[test]
fn bad_params_and_measurements_are_refused() {
    for (name, plugin) in backends() {
        for (params, needle) in [
            (r#"{"buckets": 0}"#, "at least 1"),
            (r#"{"buckets": []}"#, "at least 1"),
            (r#"{"buckets": 100001}"#, "at most 100000"),
            (r#"{"buckets": ["a", "a"]}"#, "appears twice"),
            (r#"{}"#, "missing field `buckets`"),
            (r#"{"buckets": 3, "x": 1}"#, "unknown field"),
        ] {
            let result = plugin.configure(params);
            assert_refused(format!("{name} {params}"), result, "invalid_params", needle);
        }
        let config = plugin.configure(r#"{"buckets": ["a", "b"]}"#).expect(name);
        for (m, needle) in [("2", "out of range"), ("\"c\"", "unknown bucket")] {
            let result = plugin.shard(&config, m, 2, &[0; 32]);
            assert_refused(format!("{name} {m}"), result, "invalid_measurement", needle);
        }
        let err = plugin.validate(&config, &[0; 8], 0).expect_err(name);
        assert_eq!(err.kind(), "invalid_share", "{name}: {err}");
    }
}
