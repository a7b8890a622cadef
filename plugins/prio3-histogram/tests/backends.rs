//! `prio3-histogram` natively and through wasm (the component the host
//! embeds), every check on both backends: the SDK's robust checks (round
//! trips for 2 to 5 servers, determinism, tampered reports rejected: this
//! circuit uses joint randomness, so `combine`'s check of the public share
//! is exercised), out-of-range measurements with forged proofs rejected (two
//! buckets, none, a bucket counted twice), and parameters, measurements and
//! shares refused with the plugin's message, as `histogram` refuses them.

use std::sync::LazyLock;

use guardian::runtime::{Plugin, testing::builtin};
use guardian_sdk::prio3::{self, prio::field::Field128};
use guardian_sdk::testing::{
    self, Backend, Native, RunOptions, assert_refused, assert_rejected, check_robust, run_robust,
};
use guardian_sdk::{Plugin as _, Rng};
use prio3_histogram::{Histogram, Prio3Histogram};
use proptest::prelude::*;
use serde_json::json;

/// The component, compiled once per test process and cloned for each test.
static WASM: LazyLock<Plugin> = LazyLock::new(|| builtin("prio3-histogram"));

/// The plugin natively and through wasm, named for assertion messages.
fn backends() -> [(&'static str, Box<dyn Backend>); 2] {
    [
        ("native", Box::new(Native::<Prio3Histogram>::new())),
        ("wasm", Box::new(WASM.clone())),
    ]
}

#[test]
fn robust_checks_pass() {
    let measurements: Vec<String> = [r#""red""#, r#""blue""#, "1", r#""red""#, "0"]
        .map(String::from)
        .to_vec();
    let expected = json!({"buckets": ["red", "green", "blue"], "counts": [3, 1, 1]});
    for (name, plugin) in backends() {
        let config = plugin
            .configure(r#"{"buckets": ["red", "green", "blue"]}"#)
            .expect(name);
        check_robust(name, &*plugin, &config, &measurements, &expected, 1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn the_result_is_the_plain_histogram(
        buckets in 1usize..12,
        picks in proptest::collection::vec(any::<u16>(), 1..12),
        servers in 2u32..=5,
        chunk in 1usize..5,
        seed in any::<u64>(),
    ) {
        let picks: Vec<usize> = picks.into_iter().map(|p| p as usize % buckets).collect();
        // Half by index, half by label: both name the same bucket.
        let measurements: Vec<String> = picks
            .iter()
            .enumerate()
            .map(|(i, p)| if i % 2 == 0 { p.to_string() } else { format!("\"{p}\"") })
            .collect();
        let mut counts = vec![0u64; buckets];
        picks.iter().for_each(|p| counts[*p] += 1);
        let labels: Vec<String> = (0..buckets).map(|i| i.to_string()).collect();
        let expected = json!({"buckets": labels, "counts": counts});
        for (name, plugin) in backends() {
            let config = plugin.configure(&format!(r#"{{"buckets": {buckets}}}"#)).expect(name);
            let options = RunOptions { servers, chunk, seed };
            let result = run_robust(&*plugin, &config, &measurements, options).expect(name);
            prop_assert_eq!(&result, &expected, "{}", name);
        }
    }
}

#[test]
fn out_of_range_measurements_with_forged_proofs_are_rejected() {
    let config = Prio3Histogram::configure(json!({"buckets": 4})).unwrap();
    let encode = |hot: [u128; 4]| hot.map(Field128::from).to_vec();
    for (name, plugin) in backends() {
        let bytes = plugin.configure(r#"{"buckets": 4}"#).expect(name);
        for servers in [2, 3, 5] {
            let context = format!("{name}, {servers} servers");
            let id = testing::report_id(3, servers.into());
            // Tampered after proving: bucket 0, and bucket 2 as well.
            let mut report = plugin
                .shard_report(&bytes, "0", servers, &id, &testing::seed(3, 0))
                .expect(name);
            prio3::add_to_leader_measurement::<Histogram>(
                &config,
                &mut report,
                2,
                Field128::from(1),
            )
            .expect(name);
            assert_rejected(&format!("{context}, two-hot"), &*plugin, &bytes, id, report);
            let mut rng = Rng::seed_from_u64(servers.into());
            for hot in [[1, 1, 0, 0], [0, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 5]] {
                let forged = prio3::shard_unchecked::<Histogram>(
                    &config,
                    encode(hot),
                    servers,
                    &id,
                    &mut rng,
                )
                .expect(name);
                assert_rejected(
                    &format!("{context}, {hot:?} proved"),
                    &*plugin,
                    &bytes,
                    id,
                    forged,
                );
            }
            let honest = prio3::shard_unchecked::<Histogram>(
                &config,
                encode([0, 0, 1, 0]),
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
            let expected = json!({"buckets": ["0", "1", "2", "3"], "counts": [0, 0, 1, 0]});
            assert_eq!(result.expect(&context), expected, "{context}");
        }
    }
}

#[test]
fn bad_params_measurements_and_shares_are_refused() {
    for (name, plugin) in backends() {
        for (params, needle) in [
            (r#"{"buckets": 0}"#, "at least 1"),
            (r#"{"buckets": []}"#, "at least 1"),
            (r#"{"buckets": 100001}"#, "at most 100000"),
            (r#"{"buckets": ["a", "a"]}"#, "appears twice"),
            (r#"{}"#, "missing field `buckets`"),
            (r#"{"buckets": 3, "x": 1}"#, "unknown field"),
            (r#"{"buckets": 3, "chunk_length": 0}"#, "chunk_length"),
            (r#"{"buckets": 3, "chunk_length": 4}"#, "chunk_length"),
        ] {
            let result = plugin.configure(params);
            assert_refused(format!("{name} {params}"), result, "invalid_params", needle);
        }
        let config = plugin
            .configure(r#"{"buckets": ["a", "b"], "chunk_length": 2}"#)
            .expect(name);
        let parsed: serde_json::Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(
            parsed,
            json!({"buckets": ["a", "b"], "chunk_length": 2}),
            "{name}"
        );
        for (m, needle) in [
            ("2", "out of range"),
            ("\"c\"", "unknown bucket"),
            ("4294967297", "out of range"),
        ] {
            let result = plugin.shard_report(&config, m, 2, &[0; 16], &[0; 32]);
            assert_refused(format!("{name} {m}"), result, "invalid_measurement", needle);
        }
        let report = plugin
            .shard_report(&config, "\"b\"", 2, &[1; 16], &[2; 32])
            .expect(name);
        for (server, share) in report.shares.iter().enumerate() {
            let server = server as u32;
            plugin
                .validate_report(&config, &report.public_share, share, server)
                .expect(name);
            let result = plugin.validate_report(&config, &report.public_share, &share[1..], server);
            assert_refused(format!("{name} {server}"), result, "invalid_share", "bytes");
        }
    }
}

#[test]
fn the_default_chunk_length_is_prios_optimum() {
    use guardian_sdk::prio3::prio::vdaf::prio3::optimal_chunk_length;
    for buckets in [1usize, 2, 10, 1000, 100_000] {
        let config = Prio3Histogram::configure(json!({"buckets": buckets})).unwrap();
        assert_eq!(
            config.chunk_length as usize,
            optimal_chunk_length(buckets),
            "{buckets}"
        );
    }
}
