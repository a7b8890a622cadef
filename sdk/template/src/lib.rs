//! `my-plugin`: the sum of one bounded integer per user, and how many users
//! answered. Replace it with your algorithm; keep the shape: a typed,
//! strict configuration, shares that add up to the measurement, and
//! `export_plugin!` at the end.

use guardian_sdk::{Error, Info, Plugin, Rng, ring};
use serde::{Deserialize, Serialize};

/// The plugin.
pub struct MyPlugin;

/// The endpoint's parameters. `deny_unknown_fields` turns a typo (`"mx"`)
/// into a clear error instead of a silently ignored field.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The largest measurement accepted.
    pub max: u64,
}

impl Plugin for MyPlugin {
    type Config = Config;
    type Measurement = u64;
    type Share = Vec<u64>;
    type Aggregate = Vec<u64>;

    fn info() -> Info {
        Info::new(
            "my-plugin",
            env!("CARGO_PKG_VERSION"),
            "Sum of one integer from 0 to `max` per user.",
        )
        .with_params_schema(serde_json::json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["max"],
            "properties": {"max": {"type": "integer", "minimum": 1}}
        }))
    }

    fn configure(params: serde_json::Value) -> Result<Config, Error> {
        let config: Config = guardian_sdk::params(params)?;
        if config.max == 0 {
            return Err(Error::invalid_params("`max` must be at least 1"));
        }
        Ok(config)
    }

    fn expected_measurement(config: &Config) -> Option<String> {
        Some(format!("an integer from 0 to {}", config.max))
    }

    fn shard(config: &Config, m: u64, servers: u32, rng: &mut Rng) -> Result<Vec<Vec<u64>>, Error> {
        if m > config.max {
            return Err(Error::invalid_measurement(format!(
                "{m} is above the endpoint's max of {}",
                config.max
            )));
        }
        Ok(ring::split(&[m], servers, rng))
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

    fn unshard(_: &Config, aggs: Vec<Vec<u64>>, count: u64) -> Result<serde_json::Value, Error> {
        let sum = ring::sum_all(&aggs, 1)?[0];
        Ok(serde_json::json!({"sum": sum, "count": count}))
    }
}

guardian_sdk::export_plugin!(MyPlugin);
