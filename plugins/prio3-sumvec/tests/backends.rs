//! `prio3-sumvec` natively and through wasm (the component the host
//! embeds), every check on both backends: the SDK's robust checks (round
//! trips for 2 to 5 servers, determinism, tampered reports rejected: this
//! circuit uses joint randomness, so `combine`'s check of the public share
//! is exercised), out-of-range measurements with forged proofs rejected,
//! and parameters, measurements and shares refused with the plugin's
//! message.

use std::sync::LazyLock;

use guardian::runtime::{Plugin, testing::builtin};
use guardian_sdk::prio3::{self, prio::field::Field128};
use guardian_sdk::testing::{
    self, Backend, Native, RunOptions, assert_refused, assert_rejected, check_robust, run_robust,
};
use guardian_sdk::{Plugin as _, Rng};
use prio3_sumvec::{Prio3SumVec, SumVec};
use proptest::prelude::*;
use serde_json::json;

/// The component, compiled once per test process and cloned for each test.
static WASM: LazyLock<Plugin> = LazyLock::new(|| builtin("prio3-sumvec"));

/// The plugin natively and through wasm, named for assertion messages.
fn backends() -> [(&'static str, Box<dyn Backend>); 2] {
    [
        ("native", Box::new(Native::<Prio3SumVec>::new())),
        ("wasm", Box::new(WASM.clone())),
    ]
}

#[test]
fn robust_checks_pass() {
    let measurements: Vec<String> = ["[0, 255, 7]", "[255, 255, 255]", "[1, 2, 3]", "[0, 0, 0]"]
        .map(String::from)
        .to_vec();
    for (name, plugin) in backends() {
        let config = plugin.configure(r#"{"length": 3, "bits": 8}"#).expect(name);
        check_robust(
            name,
            &*plugin,
            &config,
            &measurements,
            &json!([256, 512, 265]),
            1,
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn the_result_is_the_plain_sum(
        length in 1usize..6,
        max in 1u64..1000,
        rows in proptest::collection::vec(proptest::collection::vec(any::<u64>(), 6), 1..8),
        servers in 2u32..=5,
        chunk in 1usize..5,
        seed in any::<u64>(),
    ) {
        let rows: Vec<Vec<u64>> = rows
            .into_iter()
            .map(|r| r[..length].iter().map(|v| v % (max + 1)).collect())
            .collect();
        let measurements: Vec<String> = rows.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
        let expected: Vec<u64> = (0..length).map(|i| rows.iter().map(|r| r[i]).sum()).collect();
        for (name, plugin) in backends() {
            let params = format!(r#"{{"length": {length}, "max_measurement": {max}}}"#);
            let config = plugin.configure(&params).expect(name);
            let options = RunOptions { servers, chunk, seed };
            let result = run_robust(&*plugin, &config, &measurements, options).expect(name);
            prop_assert_eq!(&result, &json!(expected), "{}", name);
        }
    }
}

#[test]
fn out_of_range_measurements_with_forged_proofs_are_rejected() {
    // Elements from 0 to 10 are 4 bits of weights 1, 2, 4 and 3; 10 is
    // [1, 1, 1, 1], and a first bit of 2 makes it 11.
    let config = Prio3SumVec::configure(json!({"length": 2, "max_measurement": 10})).unwrap();
    let encode = |bits: [u128; 8]| bits.map(Field128::from).to_vec();
    for (name, plugin) in backends() {
        let bytes = plugin
            .configure(r#"{"length": 2, "max_measurement": 10}"#)
            .expect(name);
        for servers in [2, 3, 5] {
            let context = format!("{name}, {servers} servers");
            let id = testing::report_id(3, servers.into());
            let mut report = plugin
                .shard_report(&bytes, "[10, 10]", servers, &id, &testing::seed(3, 0))
                .expect(name);
            prio3::add_to_leader_measurement::<SumVec>(&config, &mut report, 0, Field128::from(1))
                .expect(name);
            assert_rejected(&format!("{context}, 10 + 1"), &*plugin, &bytes, id, report);
            let mut rng = Rng::seed_from_u64(servers.into());
            let forged = prio3::shard_unchecked::<SumVec>(
                &config,
                encode([2, 1, 1, 1, 0, 0, 0, 0]),
                servers,
                &id,
                &mut rng,
            )
            .expect(name);
            assert_rejected(
                &format!("{context}, 11 proved"),
                &*plugin,
                &bytes,
                id,
                forged,
            );
            let honest = prio3::shard_unchecked::<SumVec>(
                &config,
                encode([1, 1, 1, 1, 1, 0, 0, 0]),
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
            assert_eq!(result.expect(&context), json!([10, 1]), "{context}");
        }
    }
}

#[test]
fn params_are_canonical_and_checked() {
    for (name, plugin) in backends() {
        let by_bits = plugin.configure(r#"{"length": 4, "bits": 8}"#).expect(name);
        let by_max = plugin
            .configure(r#"{"length": 4, "max_measurement": 255}"#)
            .expect(name);
        assert_eq!(
            by_bits, by_max,
            "{name}: the same bound is the same configuration"
        );
        let config: serde_json::Value = serde_json::from_slice(&by_bits).unwrap();
        assert_eq!(
            config,
            json!({"length": 4, "max_measurement": 255, "chunk_length": 5}),
            "{name}"
        );
        plugin
            .configure(r#"{"length": 1, "bits": 64}"#)
            .expect(name);
        for (params, needle) in [
            (r#"{"length": 3}"#, "either bits or max_measurement"),
            (
                r#"{"length": 3, "bits": 8, "max_measurement": 255}"#,
                "either bits or max_measurement",
            ),
            (r#"{"length": 0, "bits": 8}"#, "at least 1"),
            (r#"{"length": 3, "bits": 0}"#, "between 1 and 64"),
            (r#"{"length": 3, "bits": 65}"#, "between 1 and 64"),
            (r#"{"length": 3, "max_measurement": 0}"#, "at least 1"),
            (r#"{"length": 100000, "bits": 2}"#, "at most 100000"),
            (
                r#"{"length": 3, "bits": 8, "chunk_length": 0}"#,
                "chunk_length",
            ),
            (
                r#"{"length": 3, "bits": 8, "chunk_length": 25}"#,
                "chunk_length",
            ),
            (r#"{"length": 3, "bits": 8, "x": 1}"#, "unknown field"),
        ] {
            let result = plugin.configure(params);
            assert_refused(format!("{name} {params}"), result, "invalid_params", needle);
        }
    }
}

#[test]
fn bad_measurements_and_shares_are_refused() {
    for (name, plugin) in backends() {
        let config = plugin
            .configure(r#"{"length": 2, "max_measurement": 10}"#)
            .expect(name);
        for (m, needle) in [
            ("[1, 11]", "value 11 at index 1 is out of range"),
            ("[1]", "expected 2 integers, got 1"),
            ("3", "a single integer"),
            ("[1, -1]", "a list of 2 integers from 0 to 10"),
        ] {
            let result = plugin.shard_report(&config, m, 2, &[0; 16], &[0; 32]);
            assert_refused(format!("{name} {m}"), result, "invalid_measurement", needle);
        }
        let one = plugin.configure(r#"{"length": 1, "bits": 4}"#).expect(name);
        plugin
            .shard_report(&one, "15", 2, &[0; 16], &[0; 32])
            .expect(name);
        let report = plugin
            .shard_report(&config, "[1, 2]", 3, &[1; 16], &[2; 32])
            .expect(name);
        assert_eq!(
            report.public_share.len(),
            3 * 32,
            "{name}: a joint randomness part per server"
        );
        for (server, share) in report.shares.iter().enumerate() {
            let server = server as u32;
            plugin
                .validate_report(&config, &report.public_share, share, server)
                .expect(name);
            let result = plugin.validate_report(&config, &report.public_share, &share[1..], server);
            assert_refused(format!("{name} {server}"), result, "invalid_share", "bytes");
            let result = plugin.validate_report(&config, &report.public_share[1..], share, server);
            assert_refused(
                format!("{name} {server}"),
                result,
                "invalid_share",
                "public share",
            );
            let result = plugin.validate_report(&config, &[], share, server);
            assert_refused(
                format!("{name} {server}"),
                result,
                "invalid_share",
                "public share",
            );
        }
    }
}
