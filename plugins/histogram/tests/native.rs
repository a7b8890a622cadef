//! `histogram` natively: unsharded counts equal the plain bucket counts.

use guardian_sdk::testing::{Backend, Native, RunOptions, run_with};
use histogram::Histogram;
use proptest::prelude::*;

proptest! {
    #[test]
    fn unsharded_counts_equal_the_plain_counts(
        buckets in 1usize..8,
        picks in proptest::collection::vec(any::<u16>(), 1..60),
        servers in 2u32..=5,
        chunk in 1usize..10,
        seed in any::<u64>(),
    ) {
        let plugin = Native::<Histogram>::new();
        let config = plugin.configure(&format!(r#"{{"buckets": {buckets}}}"#)).unwrap();
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
        let result = run_with(&plugin, &config, &measurements, RunOptions { servers, chunk, seed }).unwrap();
        prop_assert_eq!(result, serde_json::json!({"buckets": labels, "counts": expected}));
    }
}

#[test]
fn bad_params_and_measurements_are_refused() {
    let plugin = Native::<Histogram>::new();
    for (params, needle) in [
        (r#"{"buckets": 0}"#, "at least 1"),
        (r#"{"buckets": []}"#, "at least 1"),
        (r#"{"buckets": 100001}"#, "at most 100000"),
        (r#"{"buckets": ["a", "a"]}"#, "appears twice"),
        (r#"{}"#, "missing field `buckets`"),
        (r#"{"buckets": 3, "x": 1}"#, "unknown field"),
    ] {
        let err = plugin.configure(params).unwrap_err();
        assert!(err.message().contains(needle), "{params}: {err}");
    }
    let config = plugin.configure(r#"{"buckets": ["a", "b"]}"#).unwrap();
    for (m, needle) in [("2", "out of range"), ("\"c\"", "unknown bucket")] {
        let err = plugin.shard(&config, m, 2, &[0; 32]).unwrap_err();
        assert_eq!(err.kind(), "invalid_measurement");
        assert!(err.message().contains(needle), "{m}: {err}");
    }
    assert_eq!(
        plugin.validate(&config, &[0; 8], 0).unwrap_err().kind(),
        "invalid_share"
    );
}
