//! `sum`: the default algorithm. Each user submits a vector of integers of
//! the endpoint's declared length; the result is the element-wise sum over
//! the batch, computed in the wrapping ring Z/2^64.
//!
//! Parameters: `{"length": L}` (1 ≤ L ≤ 100,000, default 1) and
//! `{"signed": true}` to read results as signed 64-bit integers (so negative
//! measurements sum correctly). A measurement is an array of L integers, or
//! a bare integer when L is 1.

use guardian_sdk::vector::{MAX_LENGTH, Measurement, check_length, measurement_to_ring};
use guardian_sdk::{Error, Info, Plugin, Rng, ring};
use serde::{Deserialize, Serialize};

/// The `sum` plugin.
pub struct Sum;

/// Canonical configuration of a `sum` endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Number of integers in each measurement.
    #[serde(default = "one")]
    pub length: u32,
    /// Whether results are read as signed integers.
    #[serde(default)]
    pub signed: bool,
}

fn one() -> u32 {
    1
}

impl Plugin for Sum {
    type Config = Config;
    type Measurement = Measurement;
    type Share = Vec<u64>;
    type Aggregate = Vec<u64>;

    fn info() -> Info {
        Info::new(
            "sum",
            env!("CARGO_PKG_VERSION"),
            "Element-wise sum of integer vectors of a declared length.",
        )
        .with_params_schema(serde_json::json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "length": {"type": "integer", "minimum": 1, "maximum": MAX_LENGTH, "default": 1},
                "signed": {"type": "boolean", "default": false}
            }
        }))
    }

    fn configure(params: serde_json::Value) -> Result<Config, Error> {
        let config: Config = guardian_sdk::params(params)?;
        check_length(config.length, "length")?;
        Ok(config)
    }

    fn expected_measurement(config: &Config) -> Option<String> {
        Some(guardian_sdk::vector::expected(config.length, None))
    }

    fn shard(
        config: &Config,
        m: Measurement,
        servers: u32,
        rng: &mut Rng,
    ) -> Result<Vec<Vec<u64>>, Error> {
        Ok(ring::split(
            &measurement_to_ring(m, config.length)?,
            servers,
            rng,
        ))
    }

    fn validate(config: &Config, share: &Vec<u64>, _server: u32) -> Result<(), Error> {
        ring::check_len(share, config.length as usize)
    }

    fn init(config: &Config) -> Vec<u64> {
        vec![0; config.length as usize]
    }

    fn accumulate(_: &Config, agg: &mut Vec<u64>, share: &Vec<u64>) -> Result<(), Error> {
        ring::add_assign(agg, share)
    }

    fn unshard(
        config: &Config,
        aggs: Vec<Vec<u64>>,
        _count: u64,
    ) -> Result<serde_json::Value, Error> {
        let len = config.length as usize;
        Ok(if config.signed {
            serde_json::json!(ring::sum_all_signed(&aggs, len)?)
        } else {
            serde_json::json!(ring::sum_all(&aggs, len)?)
        })
    }
}

guardian_sdk::export_plugin!(Sum);
