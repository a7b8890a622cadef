//! `count` natively: the unsharded count equals the plain count.

use count::Count;
use guardian_sdk::testing::{Backend, Native, RunOptions, run_with};
use proptest::prelude::*;

proptest! {
    #[test]
    fn unsharded_count_equals_the_plain_count(
        answers in proptest::collection::vec(any::<bool>(), 1..60),
        servers in 2u32..=5,
        chunk in 1usize..10,
        seed in any::<u64>(),
    ) {
        let plugin = Native::<Count>::new();
        let config = plugin.configure("{}").unwrap();
        let measurements: Vec<String> = answers.iter().map(|a| a.to_string()).collect();
        let expected = answers.iter().filter(|a| **a).count();
        let result = run_with(&plugin, &config, &measurements, RunOptions { servers, chunk, seed }).unwrap();
        prop_assert_eq!(result, serde_json::json!(expected));
    }
}

#[test]
fn bad_input_is_refused_with_a_message() {
    let plugin = Native::<Count>::new();
    let err = plugin.configure(r#"{"length": 2}"#).unwrap_err();
    assert!(err.message().contains("unknown field `length`"), "{err}");
    let config = plugin.configure("null").unwrap();
    let err = plugin.shard(&config, "2", 2, &[0; 32]).unwrap_err();
    assert_eq!(err.kind(), "invalid_measurement");
    let err = plugin.validate(&config, &[0; 16], 0).unwrap_err();
    assert_eq!(err.kind(), "invalid_share");
}
