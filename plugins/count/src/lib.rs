//! `count`: counts the users whose measurement is true. No parameters. A
//! measurement is `true`/`false` (or `1`/`0`).

use guardian_sdk::{Error, Info, Plugin, Rng, ring};
use serde::{Deserialize, Serialize};

/// The `count` plugin.
pub struct Count;

/// `count` takes no parameters; unknown ones are refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// A yes/no measurement.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Measurement {
    /// `true` or `false`.
    Bool(bool),
    /// `1` or `0`.
    Int(u64),
}

impl Plugin for Count {
    type Config = Config;
    type Measurement = Measurement;
    type Share = Vec<u64>;
    type Aggregate = Vec<u64>;

    fn info() -> Info {
        Info::new(
            "count",
            env!("CARGO_PKG_VERSION"),
            "Counts the users whose measurement is true.",
        )
        .with_params_schema(serde_json::json!({"type": "object", "additionalProperties": false}))
    }

    fn configure(params: serde_json::Value) -> Result<Config, Error> {
        guardian_sdk::params(params)
    }

    fn expected_measurement(_: &Config) -> Option<String> {
        Some("true, false, 1 or 0".to_owned())
    }

    fn shard(
        _: &Config,
        m: Measurement,
        servers: u32,
        rng: &mut Rng,
    ) -> Result<Vec<Vec<u64>>, Error> {
        let bit = match m {
            Measurement::Bool(b) => u64::from(b),
            Measurement::Int(x @ (0 | 1)) => x,
            Measurement::Int(x) => {
                return Err(Error::invalid_measurement(format!(
                    "expected true, false, 0 or 1, got {x}"
                )));
            }
        };
        Ok(ring::split(&[bit], servers, rng))
    }

    fn validate(_: &Config, share: &Vec<u64>, _server: u32) -> Result<(), Error> {
        ring::check_len(share, 1)
    }

    fn init(_: &Config) -> Vec<u64> {
        vec![0]
    }

    fn accumulate(_: &Config, agg: &mut Vec<u64>, share: &Vec<u64>) -> Result<(), Error> {
        ring::add_assign(agg, share)
    }

    fn unshard(_: &Config, aggs: Vec<Vec<u64>>, _count: u64) -> Result<serde_json::Value, Error> {
        Ok(serde_json::json!(ring::sum_all(&aggs, 1)?[0]))
    }
}

guardian_sdk::export_plugin!(Count);
