//! `histogram`: counts how many users fall in each declared bucket. Each
//! measurement is one-hot encoded and shared; the result is one count per
//! bucket.
//!
//! Parameters: `{"buckets": ["red", "green", "blue"]}` (distinct labels) or
//! `{"buckets": 5}` (labels "0".."4"), at most 100,000 buckets. A
//! measurement is a bucket label (string) or a bucket index (integer).

use guardian_sdk::{Error, Info, Plugin, Rng, ring};
use serde::{Deserialize, Serialize};

/// The most buckets an endpoint may declare.
pub const MAX_BUCKETS: usize = 100_000;

/// The `histogram` plugin.
pub struct Histogram;

/// Parameters as a developer writes them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    buckets: Buckets,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Buckets {
    Count(u64),
    Labels(Vec<String>),
}

/// Canonical configuration: the bucket labels, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// One label per bucket.
    pub buckets: Vec<String>,
}

/// A bucket, by label or by index.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Measurement {
    /// Index into the buckets.
    Index(u64),
    /// A bucket label.
    Label(String),
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
        let buckets = match params.buckets {
            Buckets::Count(n) if n as usize <= MAX_BUCKETS => {
                (0..n).map(|i| i.to_string()).collect()
            }
            Buckets::Count(n) => {
                return Err(Error::invalid_params(format!(
                    "buckets must be at most {MAX_BUCKETS}, got {n}"
                )));
            }
            Buckets::Labels(labels) => labels,
        };
        if buckets.is_empty() {
            return Err(Error::invalid_params(
                "buckets must name at least 1 bucket, got 0",
            ));
        }
        if buckets.len() > MAX_BUCKETS {
            return Err(Error::invalid_params(format!(
                "buckets must be at most {MAX_BUCKETS}, got {}",
                buckets.len()
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = buckets.iter().find(|b| !seen.insert(b.as_str())) {
            return Err(Error::invalid_params(format!(
                "bucket label {dup:?} appears twice"
            )));
        }
        Ok(Config { buckets })
    }

    fn shard(
        config: &Config,
        m: Measurement,
        servers: u32,
        rng: &mut Rng,
    ) -> Result<Vec<Vec<u64>>, Error> {
        let index = match m {
            Measurement::Index(i) if (i as usize) < config.buckets.len() => i as usize,
            Measurement::Index(i) => {
                return Err(Error::invalid_measurement(format!(
                    "bucket index {i} is out of range: there are {} buckets",
                    config.buckets.len()
                )));
            }
            Measurement::Label(label) => config
                .buckets
                .iter()
                .position(|b| *b == label)
                .ok_or_else(|| Error::invalid_measurement(format!("unknown bucket {label:?}")))?,
        };
        let mut one_hot = vec![0u64; config.buckets.len()];
        one_hot[index] = 1;
        Ok(ring::split(&one_hot, servers, rng))
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
