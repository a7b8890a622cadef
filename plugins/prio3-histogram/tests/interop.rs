//! `prio3-histogram` interoperates with the `prio` crate's own
//! Prio3Histogram (a circuit with joint randomness): reports sharded by
//! prio's client verify and aggregate through the plugin, natively and
//! through wasm, and reports sharded by the plugin verify and aggregate
//! under prio's aggregators and collector.

use std::sync::LazyLock;

use guardian::runtime::{Plugin, testing::builtin};
use guardian_sdk::prio3::interop;
use guardian_sdk::prio3::prio::vdaf::prio3::{Prio3, optimal_chunk_length};
use guardian_sdk::testing::{self, Backend, Native, RunOptions};
use prio3_histogram::Prio3Histogram;
use serde_json::json;

static WASM: LazyLock<Plugin> = LazyLock::new(|| builtin("prio3-histogram"));

fn backends() -> [(&'static str, Box<dyn Backend>); 2] {
    [
        ("native", Box::new(Native::<Prio3Histogram>::new())),
        ("wasm", Box::new(WASM.clone())),
    ]
}

const PICKS: [usize; 6] = [0, 4, 4, 2, 4, 0];
const PARAMS: &str = r#"{"buckets": 5}"#;

#[test]
fn reports_sharded_by_prio_aggregate_here() {
    for servers in [2u8, 3, 5] {
        let vdaf = Prio3::new_histogram(servers, 5, optimal_chunk_length(5)).unwrap();
        let reports: Vec<_> = PICKS
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let id = testing::report_id(5, i as u64);
                (id, interop::shard(&vdaf, p, &id).unwrap())
            })
            .collect();
        let expected = json!({"buckets": ["0", "1", "2", "3", "4"], "counts": [2, 0, 1, 0, 3]});
        for (name, plugin) in backends() {
            let config = plugin.configure(PARAMS).unwrap();
            let options = RunOptions {
                servers: servers.into(),
                chunk: 4,
                seed: 4,
            };
            let result = testing::aggregate_reports(&*plugin, &config, &reports, options);
            assert_eq!(result.expect(name), expected, "{name}, {servers} servers");
        }
    }
}

#[test]
fn reports_sharded_here_aggregate_under_prio() {
    for servers in [2u8, 3, 5] {
        let vdaf = Prio3::new_histogram(servers, 5, optimal_chunk_length(5)).unwrap();
        for (name, plugin) in backends() {
            let config = plugin.configure(PARAMS).unwrap();
            let reports: Vec<_> = PICKS
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let id = testing::report_id(6, i as u64);
                    let seed = testing::seed(6, i as u64);
                    let report =
                        plugin.shard_report(&config, &p.to_string(), servers.into(), &id, &seed);
                    (id, report.expect(name))
                })
                .collect();
            let result = interop::aggregate(&vdaf, &testing::verify_key(6), &reports);
            assert_eq!(
                result.expect(name),
                vec![2, 0, 1, 0, 3],
                "{name}, {servers} servers"
            );
        }
    }
}
