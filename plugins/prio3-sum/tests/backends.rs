//! `prio3-sum` natively and through wasm (the component the host embeds),
//! every check on both backends: the SDK's robust checks (round trips for 2
//! to 5 servers, determinism, tampered reports rejected), out-of-range
//! measurements with forged proofs rejected, any number of servers from 2 to
//! 254, and parameters, measurements and shares refused with the plugin's
//! message.

use std::sync::LazyLock;

use guardian::runtime::{Plugin, testing::builtin};
use guardian_sdk::Rng;
use guardian_sdk::prio3::{self, prio::field::Field64};
use guardian_sdk::testing::{
    self, Backend, Native, RunOptions, assert_refused, assert_rejected, check_robust, run_robust,
};
use prio3_sum::{Config, Prio3Sum, Sum};
use proptest::prelude::*;
use serde_json::json;

/// The component, compiled once per test process and cloned for each test.
static WASM: LazyLock<Plugin> = LazyLock::new(|| builtin("prio3-sum"));

/// The plugin natively and through wasm, named for assertion messages.
fn backends() -> [(&'static str, Box<dyn Backend>); 2] {
    [
        ("native", Box::new(Native::<Prio3Sum>::new())),
        ("wasm", Box::new(WASM.clone())),
    ]
}

fn texts(values: &[u64]) -> Vec<String> {
    values.iter().map(u64::to_string).collect()
}

#[test]
fn robust_checks_pass() {
    let measurements = texts(&[0, 10, 3, 7, 10, 1]);
    for (name, plugin) in backends() {
        let config = plugin.configure(r#"{"max_measurement": 10}"#).expect(name);
        check_robust(name, &*plugin, &config, &measurements, &json!(31), 1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn the_result_is_the_plain_sum(
        max in 1u64..=u64::from(u32::MAX),
        values in proptest::collection::vec(any::<u64>(), 1..12),
        servers in 2u32..=5,
        chunk in 1usize..6,
        seed in any::<u64>(),
    ) {
        let values: Vec<u64> = values.into_iter().map(|v| v % (max + 1)).collect();
        let expected: u64 = values.iter().sum();
        for (name, plugin) in backends() {
            let config = plugin.configure(&format!(r#"{{"max_measurement": {max}}}"#)).expect(name);
            let options = RunOptions { servers, chunk, seed };
            let result = run_robust(&*plugin, &config, &texts(&values), options).expect(name);
            prop_assert_eq!(&result, &json!(expected), "{}", name);
        }
    }
}

#[test]
fn out_of_range_measurements_with_forged_proofs_are_rejected() {
    let config = Config {
        max_measurement: 10,
    };
    // 10 with a maximum of 10 is encoded as the bits [1, 1, 1, 1] of weights
    // 1, 2, 4 and 3: an element of 2 makes it 11.
    let eleven = [2u64, 1, 1, 1].map(Field64::from).to_vec();
    let ten = [1u64, 1, 1, 1].map(Field64::from).to_vec();
    for (name, plugin) in backends() {
        let bytes = plugin.configure(r#"{"max_measurement": 10}"#).expect(name);
        for servers in [2, 3, 5] {
            let context = format!("{name}, {servers} servers");
            let id = testing::report_id(3, servers.into());
            // Tampered after proving: the leader adds 1 to the lowest bit.
            let mut report = plugin
                .shard_report(&bytes, "10", servers, &id, &testing::seed(3, 0))
                .expect(name);
            prio3::add_to_leader_measurement::<Sum>(&config, &mut report, 0, Field64::from(1))
                .expect(name);
            assert_rejected(&format!("{context}, 10 + 1"), &*plugin, &bytes, id, report);
            // Proved honestly, but of an invalid encoding.
            let mut rng = Rng::seed_from_u64(servers.into());
            let forged =
                prio3::shard_unchecked::<Sum>(&config, eleven.clone(), servers, &id, &mut rng)
                    .expect(name);
            assert_rejected(
                &format!("{context}, 11 proved"),
                &*plugin,
                &bytes,
                id,
                forged,
            );
            // The same forging path with a valid encoding verifies: the
            // rejections above are the circuit's doing.
            let honest =
                prio3::shard_unchecked::<Sum>(&config, ten.clone(), servers, &id, &mut rng)
                    .expect(name);
            let result = testing::aggregate_reports(
                &*plugin,
                &bytes,
                &[(id, honest)],
                RunOptions {
                    servers,
                    chunk: 1,
                    seed: 1,
                },
            );
            assert_eq!(result.expect(&context), json!(10), "{context}");
        }
    }
}

#[test]
fn any_number_of_servers_from_2_to_254() {
    for (name, plugin) in backends() {
        let config = plugin.configure(r#"{"max_measurement": 100}"#).expect(name);
        for servers in [2, 17, 254] {
            let options = RunOptions {
                servers,
                chunk: 2,
                seed: 9,
            };
            let result = run_robust(&*plugin, &config, &texts(&[100, 1, 50]), options);
            assert_eq!(result.expect(name), json!(151), "{name}, {servers} servers");
        }
        for servers in [0, 1, 255] {
            let result = plugin.shard_report(&config, "1", servers, &[0; 16], &[0; 32]);
            assert_refused(
                format!("{name}, {servers} servers"),
                result,
                "internal",
                "servers",
            );
        }
    }
}

#[test]
fn bad_params_and_measurements_are_refused() {
    for (name, plugin) in backends() {
        for (params, needle) in [
            (r#"{}"#, "missing field `max_measurement`"),
            (r#"{"max_measurement": 0}"#, "between 1 and"),
            (
                r#"{"max_measurement": 18446744073709551615}"#,
                "between 1 and",
            ),
            (r#"{"max_measurement": -1}"#, "invalid"),
            (r#"{"max_measurement": 3, "length": 2}"#, "unknown field"),
        ] {
            let result = plugin.configure(params);
            assert_refused(format!("{name} {params}"), result, "invalid_params", needle);
        }
        let config = plugin.configure(r#"{"max_measurement": 10}"#).expect(name);
        for (m, needle) in [
            ("11", "out of range"),
            ("-1", "an integer from 0 to 10"),
            ("\"x\"", "an integer from 0 to 10"),
        ] {
            let result = plugin.shard_report(&config, m, 2, &[0; 16], &[0; 32]);
            assert_refused(format!("{name} {m}"), result, "invalid_measurement", needle);
        }
    }
}

#[test]
fn validate_checks_lengths() {
    for (name, plugin) in backends() {
        let config = plugin.configure(r#"{"max_measurement": 10}"#).expect(name);
        let report = plugin
            .shard_report(&config, "3", 3, &[1; 16], &[2; 32])
            .expect(name);
        assert!(
            report.public_share.is_empty(),
            "{name}: Sum has no joint randomness"
        );
        for (server, share) in report.shares.iter().enumerate() {
            let server = server as u32;
            plugin
                .validate_report(&config, &[], share, server)
                .expect(name);
            let result = plugin.validate_report(&config, &[], &share[1..], server);
            assert_refused(format!("{name} {server}"), result, "invalid_share", "bytes");
            let result = plugin.validate_report(&config, &[0; 32], share, server);
            assert_refused(
                format!("{name} {server}"),
                result,
                "invalid_share",
                "public share",
            );
        }
        // The contract-0.1 calls are not this plugin's.
        assert!(plugin.shard(&config, "3", 2, &[0; 32]).is_err(), "{name}");
    }
}
