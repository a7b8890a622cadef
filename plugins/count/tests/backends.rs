//! `count` natively and through wasm (the component the host embeds), every
//! check on both backends: the unsharded count equals the plain count.

use std::sync::LazyLock;

use count::Count;
use guardian::runtime::{Plugin, testing::builtin};
use guardian_sdk::testing::{Backend, Native, RunOptions, assert_refused, run_with};
use proptest::prelude::*;

/// The component, compiled once per test process and cloned for each test.
static WASM: LazyLock<Plugin> = LazyLock::new(|| builtin("count"));

/// The plugin natively and through wasm, named for assertion messages.
fn backends() -> [(&'static str, Box<dyn Backend>); 2] {
    [
        ("native", Box::new(Native::<Count>::new())),
        ("wasm", Box::new(WASM.clone())),
    ]
}

proptest! {
    #[test]
    fn unsharded_count_equals_the_plain_count(
        answers in proptest::collection::vec(any::<bool>(), 1..60),
        servers in 2u32..=5,
        chunk in 1usize..10,
        seed in any::<u64>(),
    ) {
        let measurements: Vec<String> = answers.iter().map(|a| a.to_string()).collect();
        let expected = answers.iter().filter(|a| **a).count();
        for (name, plugin) in backends() {
            let config = plugin.configure("{}").expect(name);
            let result = run_with(&*plugin, &config, &measurements, RunOptions { servers, chunk, seed }).expect(name);
            prop_assert_eq!(&result, &serde_json::json!(expected), "{}", name);
        }
    }
}

#[test]
fn bad_input_is_refused_with_a_message() {
    for (name, plugin) in backends() {
        let result = plugin.configure(r#"{"length": 2}"#);
        assert_refused(name, result, "invalid_params", "unknown field `length`");
        let config = plugin.configure("null").expect(name);
        let err = plugin.shard(&config, "2", 2, &[0; 32]).expect_err(name);
        assert_eq!(err.kind(), "invalid_measurement", "{name}: {err}");
        let err = plugin.validate(&config, &[0; 16], 0).expect_err(name);
        assert_eq!(err.kind(), "invalid_share", "{name}: {err}");
    }
}
