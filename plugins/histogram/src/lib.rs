//! `histogram`: counts how many users fall in each declared bucket. Each
//! measurement is one-hot encoded and shared; the result is one count per
//! bucket.
//!
//! Parameters: `{"buckets": ["red", "green", "blue"]}` (distinct labels) or
//! `{"buckets": 5}` (labels "0".."4"), at most 100,000 buckets. A
//! measurement is a bucket label (string) or a bucket index (integer).

use guardian_sdk::buckets::{self, Buckets, MAX_BUCKETS, Measurement};
use guardian_sdk::{Error, Info, Plugin, Rng, ring};
use serde::{Deserialize, Serialize};

/// The `histogram` plugin.
pub struct Histogram;

/// Parameters as a developer writes them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    buckets: Buckets,
}

/// Canonical configuration: the bucket labels, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// One label per bucket.
    pub buckets: Vec<String>,
}

impl Plugin for Histogram {
    type Config = Config;
    type Measurement = Measurement;
    type Share = Vec<u64>;
    type Aggregate = Vec<u64>;

    fn info() -> Info {
        Info::new("histogram", env!("CARGO_PKG_VERSION"), "Counts per declared bucket (one-hot shares).")
            .with_params_schema(serde_json::json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["buckets"],
                "properties": {"buckets": {"oneOf": [
                    {"type": "integer", "minimum": 1, "maximum": MAX_BUCKETS},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_BUCKETS, "uniqueItems": true}
                ]}}
            }))
    }

    fn configure(params: serde_json::Value) -> Result<Config, Error> {
        let params: Params = guardian_sdk::params(params)?;
        let buckets = buckets::labels(params.buckets)?;
        Ok(Config { buckets })
    }

    fn expected_measurement(config: &Config) -> Option<String> {
        Some(guardian_sdk::buckets::expected(&config.buckets))
    }

    fn shard(
        config: &Config,
        m: Measurement,
        servers: u32,
        rng: &mut Rng,
    ) -> Result<Vec<Vec<u64>>, Error> {
        Ok(ring::split(
            &buckets::one_hot(&config.buckets, m)?,
            servers,
            rng,
        ))
    }

    fn validate(config: &Config, share: &Vec<u64>, _server: u32) -> Result<(), Error> {
        ring::check_len(share, config.buckets.len())
    }

    fn init(config: &Config) -> Vec<u64> {
        vec![0; config.buckets.len()]
    }

    fn accumulate(_: &Config, agg: &mut Vec<u64>, share: &Vec<u64>) -> Result<(), Error> {
        ring::add_assign(agg, share)
    }

    fn unshard(
        config: &Config,
        aggs: Vec<Vec<u64>>,
        _count: u64,
    ) -> Result<serde_json::Value, Error> {
        let counts = ring::sum_all(&aggs, config.buckets.len())?;
        Ok(serde_json::json!({"buckets": config.buckets, "counts": counts}))
    }
}

guardian_sdk::export_plugin!(Histogram);
