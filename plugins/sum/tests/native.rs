//! `sum` through the SDK's byte layer: shard → validate → accumulate in
//! chunks → merge → release → unshard equals the plain sum.

use guardian_sdk::testing::{Backend, Native, RunOptions, run_with};
use proptest::prelude::*;
use sum::Sum;

proptest! {
    #[test]
    fn unsharded_sum_equals_the_plain_sum(
        length in 1u32..12,
        rows in proptest::collection::vec(proptest::collection::vec(any::<i64>(), 12), 1..40),
        servers in 2u32..=5,
        chunk in 1usize..10,
        seed in any::<u64>(),
    ) {
        let plugin = Native::<Sum>::new();
        let config = plugin.configure(&format!(r#"{{"length": {length}, "signed": true}}"#)).unwrap();
        let rows: Vec<Vec<i64>> = rows.into_iter().map(|r| r[..length as usize].to_vec()).collect();
        let measurements: Vec<String> = rows.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
        let expected: Vec<i64> = (0..length as usize)
            .map(|i| rows.iter().fold(0i64, |acc, r| acc.wrapping_add(r[i])))
            .collect();
        let result = run_with(&plugin, &config, &measurements, RunOptions { servers, chunk, seed }).unwrap();
        prop_assert_eq!(result, serde_json::json!(expected));
    }
}

#[test]
fn bad_params_are_refused_with_the_plugins_message() {
    let plugin = Native::<Sum>::new();
    for (params, needle) in [
        (r#"{"length": 0}"#, "at least 1"),
        (r#"{"length": 100001}"#, "at most 100000"),
        (r#"{"length": "3"}"#, "invalid type"),
        (r#"{"lenght": 3}"#, "unknown field `lenght`"),
        ("not json", "not valid JSON"),
    ] {
        let err = plugin.configure(params).unwrap_err();
        assert_eq!(err.kind(), "invalid_params", "{params}");
        assert!(err.message().contains(needle), "{params}: {err}");
    }
}

#[test]
fn bad_shares_are_refused() {
    let plugin = Native::<Sum>::new();
    let config = plugin.configure(r#"{"length": 3}"#).unwrap();
    let err = plugin.validate(&config, &[0u8; 16], 0).unwrap_err();
    assert_eq!(err.kind(), "invalid_share");
    assert!(err.message().contains("2 elements"), "{err}");
    let err = plugin.validate(&config, &[0u8; 23], 0).unwrap_err();
    assert!(err.message().contains("23 bytes"), "{err}");
    plugin.validate(&config, &[0u8; 24], 1).unwrap();
}

#[test]
fn any_one_share_of_two_measurements_looks_alike() {
    let plugin = Native::<Sum>::new();
    let config = plugin.configure(r#"{"length": 4}"#).unwrap();
    let collect = |m: &str| -> Vec<u8> {
        (0..2000u64)
            .flat_map(|i| {
                plugin
                    .shard(&config, m, 2, &guardian_sdk::testing::seed(i, 1))
                    .unwrap()
                    .remove(1)
            })
            .collect()
    };
    let (a, b) = (collect("[0,0,0,0]"), collect("[1,2,3,4]"));
    let limit = guardian_sdk::testing::CHI2_255_P0001;
    assert!(guardian_sdk::testing::chi_squared_uniform_bytes(&a) < limit);
    assert!(guardian_sdk::testing::chi_squared_uniform_bytes(&b) < limit);
    assert!(guardian_sdk::testing::chi_squared_two_sample_bytes(&a, &b) < limit);
    // The test can fail: the measurement itself is far from uniform bytes.
    let plain: Vec<u8> = (0..2000)
        .flat_map(|_| [1u64, 2, 3, 4].map(u64::to_le_bytes).concat())
        .collect();
    assert!(guardian_sdk::testing::chi_squared_uniform_bytes(&plain) > limit);
}
