//! `prio3-count` natively and through wasm (the component the host embeds),
//! every check on both backends: the SDK's robust checks (round trips for 2
//! to 5 servers, determinism, tampered reports rejected), out-of-range
//! measurements with forged proofs rejected, and parameters, measurements
//! and shares refused with the plugin's message.

use std::sync::LazyLock;

use guardian::runtime::{Plugin, testing::builtin};
use guardian_sdk::Rng;
use guardian_sdk::prio3::{self, prio::field::Field64};
use guardian_sdk::testing::{
    self, Backend, Native, RunOptions, assert_refused, assert_rejected, check_robust, run_robust,
};
use prio3_count::{Config, Count, Prio3Count};
use proptest::prelude::*;
use serde_json::json;

/// The component, compiled once per test process and cloned for each test.
static WASM: LazyLock<Plugin> = LazyLock::new(|| builtin("prio3-count"));

/// The plugin natively and through wasm, named for assertion messages.
fn backends() -> [(&'static str, Box<dyn Backend>); 2] {
    [
        ("native", Box::new(Native::<Prio3Count>::new())),
        ("wasm", Box::new(WASM.clone())),
    ]
}

#[test]
fn robust_checks_pass() {
    let measurements: Vec<String> = ["true", "false", "1", "true", "0", "true"]
        .map(String::from)
        .to_vec();
    for (name, plugin) in backends() {
        let config = plugin.configure("{}").expect(name);
        check_robust(name, &*plugin, &config, &measurements, &json!(4), 1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn the_result_is_the_plain_count(
        answers in proptest::collection::vec(any::<bool>(), 1..16),
        servers in 2u32..=5,
        chunk in 1usize..6,
        seed in any::<u64>(),
    ) {
        let measurements: Vec<String> = answers.iter().map(bool::to_string).collect();
        let expected = answers.iter().filter(|a| **a).count();
        for (name, plugin) in backends() {
            let config = plugin.configure("null").expect(name);
            let options = RunOptions { servers, chunk, seed };
            let result = run_robust(&*plugin, &config, &measurements, options).expect(name);
            prop_assert_eq!(&result, &json!(expected), "{}", name);
        }
    }
}

#[test]
fn out_of_range_measurements_with_forged_proofs_are_rejected() {
    let config = Config {};
    for (name, plugin) in backends() {
        let bytes = plugin.configure("{}").expect(name);
        for servers in [2, 3, 5] {
            let context = format!("{name}, {servers} servers");
            let id = testing::report_id(3, servers.into());
            // Tampered after proving: true plus 1 is 2.
            let mut report = plugin
                .shard_report(&bytes, "true", servers, &id, &testing::seed(3, 0))
                .expect(name);
            prio3::add_to_leader_measurement::<Count>(&config, &mut report, 0, Field64::from(1))
                .expect(name);
            assert_rejected(&format!("{context}, 1 + 1"), &*plugin, &bytes, id, report);
            // Proved honestly, but of 2 and of -1.
            let mut rng = Rng::seed_from_u64(servers.into());
            for (what, x) in [("2", Field64::from(2)), ("-1", -Field64::from(1))] {
                let forged =
                    prio3::shard_unchecked::<Count>(&config, vec![x], servers, &id, &mut rng)
                        .expect(name);
                assert_rejected(
                    &format!("{context}, {what} proved"),
                    &*plugin,
                    &bytes,
                    id,
                    forged,
                );
            }
            // The same forging path with a valid encoding verifies.
            let honest = prio3::shard_unchecked::<Count>(
                &config,
                vec![Field64::from(1)],
                servers,
                &id,
                &mut rng,
            )
            .expect(name);
            let options = RunOptions {
                servers,
                chunk: 1,
                seed: 1,
            };
            let result = testing::aggregate_reports(&*plugin, &bytes, &[(id, honest)], options);
            assert_eq!(result.expect(&context), json!(1), "{context}");
        }
    }
}

#[test]
fn bad_params_measurements_and_shares_are_refused() {
    for (name, plugin) in backends() {
        let result = plugin.configure(r#"{"x": 1}"#);
        assert_refused(name, result, "invalid_params", "unknown field `x`");
        let config = plugin.configure("{}").expect(name);
        for (m, needle) in [
            ("2", "expected true, false, 0 or 1, got 2"),
            ("\"yes\"", "true, false, 1 or 0"),
        ] {
            let result = plugin.shard_report(&config, m, 2, &[0; 16], &[0; 32]);
            assert_refused(format!("{name} {m}"), result, "invalid_measurement", needle);
        }
        let report = plugin
            .shard_report(&config, "1", 2, &[1; 16], &[2; 32])
            .expect(name);
        assert!(
            report.public_share.is_empty(),
            "{name}: Count has no joint randomness"
        );
        for (server, share) in report.shares.iter().enumerate() {
            let server = server as u32;
            plugin
                .validate_report(&config, &[], share, server)
                .expect(name);
            let result = plugin.validate_report(&config, &[], &share[1..], server);
            assert_refused(format!("{name} {server}"), result, "invalid_share", "bytes");
        }
    }
}
