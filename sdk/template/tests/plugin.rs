//! The plugin natively, through the same byte layer as the component: the
//! SDK's whole check suite (the one `guardian plugin check` runs on the
//! built .wasm, through a share server's runtime), with the parameters and
//! measurements of that command, and this plugin's own refusals.

use guardian_sdk::testing::{Backend, CheckOptions, Native, assert_plugin, assert_refused};
use my_plugin::MyPlugin;

/// The parameters of `guardian plugin check … --params '{"max": 10}'`.
const PARAMS: &str = r#"{"max": 10}"#;

#[test]
fn the_sdk_check_suite_passes() {
    // Round trips for 2 to 5 servers in chunks, determinism of every step
    // given its seed, bad parameters, measurements and shares refused.
    let options = CheckOptions {
        expected: Some(serde_json::json!({"sum": 20, "count": 4})),
        ..CheckOptions::new(PARAMS, include_str!("../measurements.jsonl").lines())
    };
    assert_plugin(&Native::<MyPlugin>::new(), &options);
}

#[test]
fn bad_params_and_measurements_are_refused_in_the_plugins_words() {
    let plugin = Native::<MyPlugin>::new();
    assert_refused(
        "typo",
        plugin.configure(r#"{"mx": 10}"#),
        "invalid_params",
        "unknown field",
    );
    assert_refused(
        "zero",
        plugin.configure(r#"{"max": 0}"#),
        "invalid_params",
        "at least 1",
    );
    let config = plugin.configure(PARAMS).unwrap();
    assert_refused(
        "too big",
        plugin.shard(&config, "11", 2, &[0; 32]),
        "invalid_measurement",
        "above",
    );
    assert_refused(
        "short",
        plugin.validate(&config, &[0; 7], 0),
        "invalid_share",
        "",
    );
}
