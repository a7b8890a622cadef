//! `dp-histogram`: a differentially private histogram. Like `histogram`,
//! each user's bucket is one-hot shared; at release every server adds its own
//! discrete Laplace noise of scale 1/epsilon to each bucket of its aggregate
//! share, once per batch. Adding or removing one user changes one bucket by
//! one (L1 sensitivity 1), so each server's noise alone makes the released
//! result epsilon-DP, whatever the other servers do. The result carries one
//! draw per server on each bucket; the batch's count is exact and public, so
//! against one user's bucket replaced by another (two buckets move) the
//! noise gives 2·epsilon: declare half the epsilon you want. The SDK's
//! [differential privacy chapter](guardian_sdk#differential-privacy) explains
//! these points, and how to split epsilon across endpoints and batches.
//!
//! Parameters: `{"buckets": N or [labels], "epsilon": e}` with
//! 0 < epsilon <= 100. Results are signed (noise can make a count negative).

use guardian_sdk::buckets::{self, Buckets, MAX_BUCKETS, Measurement};
use guardian_sdk::dp::{DiscreteLaplace, check_epsilon, laplace_scale};
use guardian_sdk::{Error, Info, Plugin, Rng, ring};
use serde::{Deserialize, Serialize};

/// The `dp-histogram` plugin.
pub struct DpHistogram;

/// The largest epsilon accepted: beyond it the noise protects nothing.
pub use guardian_sdk::dp::MAX_EPSILON;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    buckets: Buckets,
    epsilon: f64,
}

/// Canonical configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// One label per bucket.
    pub buckets: Vec<String>,
    /// The privacy parameter each server's noise provides.
    pub epsilon: f64,
}

impl Plugin for DpHistogram {
    type Config = Config;
    type Measurement = Measurement;
    type Share = Vec<u64>;
    type Aggregate = Vec<u64>;

    fn info() -> Info {
        Info::new(
            "dp-histogram",
            env!("CARGO_PKG_VERSION"),
            "Histogram with discrete Laplace noise (scale 1/epsilon) added by every server at release.",
        )
        .with_params_schema(serde_json::json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["buckets", "epsilon"],
            "properties": {
                "buckets": {"oneOf": [
                    {"type": "integer", "minimum": 1, "maximum": MAX_BUCKETS},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_BUCKETS, "uniqueItems": true}
                ]},
                "epsilon": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_EPSILON}
            }
        }))
    }

    fn configure(params: serde_json::Value) -> Result<Config, Error> {
        let params: Params = guardian_sdk::params(params)?;
        check_epsilon(params.epsilon)?;
        laplace_scale(params.epsilon, 1.0).and_then(DiscreteLaplace::new)?;
        let buckets = buckets::labels(params.buckets)?;
        Ok(Config {
            buckets,
            epsilon: params.epsilon,
        })
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

    fn release(
        config: &Config,
        mut agg: Vec<u64>,
        _count: u64,
        _server: u32,
        rng: &mut Rng,
    ) -> Result<Vec<u64>, Error> {
        let noise = laplace_scale(config.epsilon, 1.0).and_then(DiscreteLaplace::new)?;
        for a in &mut agg {
            *a = a.wrapping_add(ring::from_signed(noise.sample(rng)));
        }
        Ok(agg)
    }

    fn unshard(
        config: &Config,
        aggs: Vec<Vec<u64>>,
        _count: u64,
    ) -> Result<serde_json::Value, Error> {
        let counts = ring::sum_all_signed(&aggs, config.buckets.len())?;
        Ok(serde_json::json!({"buckets": config.buckets, "counts": counts}))
    }
}

guardian_sdk::export_plugin!(DpHistogram);
