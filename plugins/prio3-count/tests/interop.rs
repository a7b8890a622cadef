//! `prio3-count` interoperates with the `prio` crate's own Prio3Count:
//! reports sharded by prio's client verify and aggregate through the
//! plugin, natively and through wasm, and reports sharded by the plugin
//! verify and aggregate under prio's aggregators and collector.

use std::sync::LazyLock;

use guardian::runtime::{Plugin, testing::builtin};
use guardian_sdk::prio3::interop;
use guardian_sdk::prio3::prio::vdaf::prio3::Prio3;
use guardian_sdk::testing::{self, Backend, Native, RunOptions};
use prio3_count::Prio3Count;
use serde_json::json;

static WASM: LazyLock<Plugin> = LazyLock::new(|| builtin("prio3-count"));

fn backends() -> [(&'static str, Box<dyn Backend>); 2] {
    [
        ("native", Box::new(Native::<Prio3Count>::new())),
        ("wasm", Box::new(WASM.clone())),
    ]
}

const ANSWERS: [bool; 5] = [true, false, true, true, false];

#[test]
fn reports_sharded_by_prio_aggregate_here() {
    for servers in [2u8, 3, 5] {
        let vdaf = Prio3::new_count(servers).unwrap();
        let reports: Vec<_> = ANSWERS
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let id = testing::report_id(5, i as u64);
                (id, interop::shard(&vdaf, a, &id).unwrap())
            })
            .collect();
        for (name, plugin) in backends() {
            let config = plugin.configure("{}").unwrap();
            let options = RunOptions {
                servers: servers.into(),
                chunk: 2,
                seed: 4,
            };
            let result = testing::aggregate_reports(&*plugin, &config, &reports, options);
            assert_eq!(result.expect(name), json!(3), "{name}, {servers} servers");
        }
    }
}

#[test]
fn reports_sharded_here_aggregate_under_prio() {
    for servers in [2u8, 3, 5] {
        let vdaf = Prio3::new_count(servers).unwrap();
        for (name, plugin) in backends() {
            let config = plugin.configure("{}").unwrap();
            let reports: Vec<_> = ANSWERS
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let id = testing::report_id(6, i as u64);
                    let seed = testing::seed(6, i as u64);
                    let report =
                        plugin.shard_report(&config, &a.to_string(), servers.into(), &id, &seed);
                    (id, report.expect(name))
                })
                .collect();
            let result = interop::aggregate(&vdaf, &testing::verify_key(6), &reports);
            assert_eq!(result.expect(name), 3, "{name}, {servers} servers");
        }
    }
}
