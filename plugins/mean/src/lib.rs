//! `mean`: the element-wise mean of integer vectors. Each server sums the
//! shares (the ring sum of `sum`); `unshard` divides the sum by the batch's
//! report count. Measurements are signed integers.
//!
//! Parameters: `{"length": L}` (1 ≤ L ≤ 100,000, default 1). A measurement
//! is an array of L integers, or a bare integer when L is 1.

use guardian_sdk::vector::{MAX_LENGTH, Measurement, check_length, measurement_to_ring};
use guardian_sdk::{Error, Info, Plugin, Rng, ring};
use serde::{Deserialize, Serialize};

/// The `mean` plugin.
pub struct Mean;

/// Canonical configuration of a `mean` endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Number of integers in each measurement.
    #[serde(default = "one")]
    pub length: u32,
}

fn one() -> u32 {
    1
}

impl Plugin for Mean {
    type Config = Config;
    type Measurement = Measurement;
    type Share = Vec<u64>;
    type Aggregate = Vec<u64>;

    fn info() -> Info {
        Info::new("mean", env!("CARGO_PKG_VERSION"), "Element-wise mean of integer vectors.")
            .with_params_schema(serde_json::json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {"length": {"type": "integer", "minimum": 1, "maximum": MAX_LENGTH, "default": 1}}
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

    /// `{"count": n, "sum": [...], "mean": [...]}`; `mean` is `null` for an
    /// empty batch.
    fn unshard(
        config: &Config,
        aggs: Vec<Vec<u64>>,
        count: u64,
    ) -> Result<serde_json::Value, Error> {
        let sums: Vec<i64> = ring::sum_all(&aggs, config.length as usize)?
            .into_iter()
            .map(ring::to_signed)
            .collect();
        let mean = (count > 0).then(|| {
            sums.iter()
                .map(|s| *s as f64 / count as f64)
                .collect::<Vec<_>>()
        });
        Ok(serde_json::json!({"count": count, "sum": sums, "mean": mean}))
    }
}

guardian_sdk::export_plugin!(Mean);
