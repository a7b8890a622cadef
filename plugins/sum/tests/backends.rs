//! `sum` natively and through wasm (the component the host embeds), every
//! check on both backends: shard → validate → accumulate in chunks → merge →
//! release → unshard equals the plain sum.

use std::sync::LazyLock;

use guardian::runtime::{Plugin, testing::builtin};
use guardian_sdk::testing::{self, Backend, Native, RunOptions, assert_refused, run_with};
use proptest::prelude::*;
use sum::Sum;

/// The component, compiled once per test process and cloned for each test.
static WASM: LazyLock<Plugin> = LazyLock::new(|| builtin("sum"));

/// The plugin natively and through wasm, named for assertion messages.
fn backends() -> [(&'static str, Box<dyn Backend>); 2] {
    [
        ("native", Box::new(Native::<Sum>::new())),
        ("wasm", Box::new(WASM.clone())),
    ]
}

proptest! {
    #[test]
    fn unsharded_sum_equals_the_plain_sum(
        length in 1u32..12,
        rows in proptest::collection::vec(proptest::collection::vec(any::<i64>(), 12), 1..40),
        servers in 2u32..=5,
        chunk in 1usize..10,
        seed in any::<u64>(),
    ) {
        let rows: Vec<Vec<i64>> = rows.into_iter().map(|r| r[..length as usize].to_vec()).collect();
        let measurements: Vec<String> = rows.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
        let expected: Vec<i64> = (0..length as usize)
            .map(|i| rows.iter().fold(0i64, |acc, r| acc.wrapping_add(r[i])))
            .collect();
        for (name, plugin) in backends() {
            let config = plugin.configure(&format!(r#"{{"length": {length}, "signed": true}}"#)).expect(name);
            let result = run_with(&*plugin, &config, &measurements, RunOptions { servers, chunk, seed }).expect(name);
            prop_assert_eq!(&result, &serde_json::json!(expected), "{}", name);
        }
    }
}

#[test]
fn bad_params_are_refused_with_the_plugins_message() {
    for (name, plugin) in backends() {
        for (params, needle) in [
            (r#"{"length": 0}"#, "at least 1"),
            (r#"{"length": 100001}"#, "at most 100000"),
            (r#"{"length": "3"}"#, "invalid type"),
            (r#"{"lenght": 3}"#, "unknown field `lenght`"),
            ("not json", "not valid JSON"),
        ] {
            let result = plugin.configure(params);
            assert_refused(format!("{name} {params}"), result, "invalid_params", needle);
        }
    }
}

#[test]
fn bad_shares_are_refused() {
    for (name, plugin) in backends() {
        let config = plugin.configure(r#"{"length": 3}"#).expect(name);
        let result = plugin.validate(&config, &[0u8; 16], 0);
        assert_refused(name, result, "invalid_share", "2 elements");
        let err = plugin.validate(&config, &[0u8; 23], 0).expect_err(name);
        assert!(err.message().contains("23 bytes"), "{name}: {err}");
        plugin.validate(&config, &[0u8; 24], 1).expect(name);
    }
}

#[test]
fn any_one_share_of_two_measurements_looks_alike() {
    let limit = testing::CHI2_255_P0001;
    for (name, plugin) in backends() {
        let config = plugin.configure(r#"{"length": 4}"#).expect(name);
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
        let (a, b) = (collect("[0,0,0,0]"), collect("[1,2,3,4]"));
        assert!(testing::chi_squared_uniform_bytes(&a) < limit, "{name}");
        assert!(testing::chi_squared_uniform_bytes(&b) < limit, "{name}");
        assert!(
            testing::chi_squared_two_sample_bytes(&a, &b) < limit,
            "{name}"
        );
    }
    // The test can fail: the measurement itself is far from uniform bytes.
    let plain: Vec<u8> = (0..2000)
        .flat_map(|_| [1u64, 2, 3, 4].map(u64::to_le_bytes).concat())
        .collect();
    assert!(testing::chi_squared_uniform_bytes(&plain) > limit);
}
