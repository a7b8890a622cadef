//! `prio3-sumvec` interoperates with the `prio` crate's own Prio3SumVec (a
//! circuit with joint randomness): reports sharded by prio's client verify
//! and aggregate through the plugin, natively and through wasm, and reports
//! sharded by the plugin verify and aggregate under prio's aggregators and
//! collector.

use std::sync::LazyLock;

use guardian::runtime::{Plugin, testing::builtin};
use guardian_sdk::prio3::interop;
use guardian_sdk::prio3::prio::vdaf::prio3::{
    Prio3, Prio3SumVec as PrioSumVec, optimal_chunk_length,
};
use guardian_sdk::testing::{self, Backend, Native, RunOptions};
use prio3_sumvec::Prio3SumVec;
use serde_json::json;

static WASM: LazyLock<Plugin> = LazyLock::new(|| builtin("prio3-sumvec"));

fn backends() -> [(&'static str, Box<dyn Backend>); 2] {
    [
        ("native", Box::new(Native::<Prio3SumVec>::new())),
        ("wasm", Box::new(WASM.clone())),
    ]
}

const ROWS: [[u128; 3]; 4] = [[0, 100, 7], [100, 100, 100], [1, 2, 3], [50, 0, 0]];
const PARAMS: &str = r#"{"length": 3, "max_measurement": 100}"#;

fn vdaf(servers: u8) -> PrioSumVec {
    // 100 needs 7 bits: 3 × 7 = 21 field elements.
    Prio3::new_sum_vec(servers, 100, 3, optimal_chunk_length(21)).expect("a valid Prio3SumVec")
}

#[test]
fn reports_sharded_by_prio_aggregate_here() {
    for servers in [2u8, 3, 5] {
        let vdaf = vdaf(servers);
        let reports: Vec<_> = ROWS
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let id = testing::report_id(5, i as u64);
                (id, interop::shard(&vdaf, &row.to_vec(), &id).unwrap())
            })
            .collect();
        for (name, plugin) in backends() {
            let config = plugin.configure(PARAMS).unwrap();
            let options = RunOptions {
                servers: servers.into(),
                chunk: 3,
                seed: 4,
            };
            let result = testing::aggregate_reports(&*plugin, &config, &reports, options);
            assert_eq!(
                result.expect(name),
                json!([151, 202, 110]),
                "{name}, {servers} servers"
            );
        }
    }
}

#[test]
fn reports_sharded_here_aggregate_under_prio() {
    for servers in [2u8, 3, 5] {
        let vdaf = vdaf(servers);
        for (name, plugin) in backends() {
            let config = plugin.configure(PARAMS).unwrap();
            let reports: Vec<_> = ROWS
                .iter()
                .enumerate()
                .map(|(i, row)| {
                    let id = testing::report_id(6, i as u64);
                    let seed = testing::seed(6, i as u64);
                    let m = serde_json::to_string(&row.map(|x| x as u64)).unwrap();
                    (
                        id,
                        plugin
                            .shard_report(&config, &m, servers.into(), &id, &seed)
                            .expect(name),
                    )
                })
                .collect();
            let result = interop::aggregate(&vdaf, &testing::verify_key(6), &reports);
            assert_eq!(
                result.expect(name),
                vec![151, 202, 110],
                "{name}, {servers} servers"
            );
        }
    }
}
