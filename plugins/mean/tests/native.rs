//! `mean` natively: unsharded sums and means equal the plain ones.

use guardian_sdk::testing::{Backend, Native, RunOptions, run_with};
use mean::Mean;
use proptest::prelude::*;

proptest! {
    #[test]
    fn unsharded_mean_equals_the_plain_mean(
        length in 1u32..6,
        rows in proptest::collection::vec(proptest::collection::vec(-1_000_000i64..1_000_000, 6), 1..40),
        servers in 2u32..=5,
        chunk in 1usize..10,
        seed in any::<u64>(),
    ) {
        let plugin = Native::<Mean>::new();
        let config = plugin.configure(&format!(r#"{{"length": {length}}}"#)).unwrap();
        let rows: Vec<Vec<i64>> = rows.into_iter().map(|r| r[..length as usize].to_vec()).collect();
        let measurements: Vec<String> = rows.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
        let sums: Vec<i64> = (0..length as usize).map(|i| rows.iter().map(|r| r[i]).sum()).collect();
        let n = rows.len() as f64;
        let means: Vec<f64> = sums.iter().map(|s| *s as f64 / n).collect();
        let result = run_with(&plugin, &config, &measurements, RunOptions { servers, chunk, seed }).unwrap();
        prop_assert_eq!(&result["count"], &serde_json::json!(rows.len()));
        prop_assert_eq!(&result["sum"], &serde_json::json!(sums));
        // JSON text does not round-trip every f64 bit for bit: compare means
        // to a relative 1e-12.
        let got: Vec<f64> = serde_json::from_value(result["mean"].clone()).unwrap();
        prop_assert_eq!(got.len(), means.len());
        for (g, m) in got.iter().zip(&means) {
            prop_assert!((g - m).abs() <= 1e-12 * m.abs().max(1.0), "{} != {}", g, m);
        }
    }
}

#[test]
fn bad_params_are_refused() {
    let plugin = Native::<Mean>::new();
    assert!(
        plugin
            .configure(r#"{"length": 0}"#)
            .unwrap_err()
            .message()
            .contains("at least 1")
    );
    assert!(
        plugin
            .configure(r#"{"length": -1}"#)
            .unwrap_err()
            .message()
            .contains("invalid value")
    );
    let config = plugin.configure("{}").unwrap();
    let err = plugin.shard(&config, "[1, 2]", 2, &[0; 32]).unwrap_err();
    assert!(
        err.message().contains("expected 1 integers, got 2"),
        "{err}"
    );
}
