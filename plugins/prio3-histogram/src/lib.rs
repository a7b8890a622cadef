//! `prio3-histogram`: counts how many users fall in each declared bucket,
//! robustly: each report carries a Prio3 proof that its measurement is
//! one-hot (exactly one bucket), which the servers check before counting it.
//!
//! Parameters: `{"buckets": ["red", "green", "blue"]}` (distinct labels) or
//! `{"buckets": 5}` (labels "0".."4"), at most 100,000 buckets, as the
//! `histogram` plugin takes them; `{"chunk_length": C}` tunes the proof
//! (default: the shortest proof, prio's `optimal_chunk_length`). A
//! measurement is a bucket label (string) or a bucket index (integer). The
//! result is `{"buckets": [...], "counts": [...]}`, as `histogram`'s.

use guardian_sdk::buckets::{self, Buckets, MAX_BUCKETS, Measurement};
use guardian_sdk::prio3::prio::field::Field128;
use guardian_sdk::prio3::prio::flp::gadgets::{Mul, ParallelSum};
use guardian_sdk::prio3::prio::flp::types;
use guardian_sdk::prio3::prio::vdaf::prio3::optimal_chunk_length;
use guardian_sdk::prio3::{Circuit, Prio3Plugin};
use guardian_sdk::{Error, Info};
use serde::{Deserialize, Serialize};

/// The circuit of `prio3-histogram`: prio's `Histogram`.
pub struct Histogram;

/// The `prio3-histogram` plugin.
pub type Prio3Histogram = Prio3Plugin<Histogram>;

/// Parameters as a developer writes them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    buckets: Buckets,
    chunk_length: Option<u64>,
}

/// Canonical configuration: the bucket labels, in order, and the chunk
/// length chosen.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// One label per bucket.
    pub buckets: Vec<String>,
    /// The chunk length of the proof's parallel-sum gadget.
    pub chunk_length: u64,
}

type Type = types::Histogram<Field128, ParallelSum<Field128, Mul>>;

impl Circuit for Histogram {
    type Config = Config;
    type Measurement = Measurement;
    type Type = Type;
    /// Prio3Histogram's, so that prio's clients interoperate.
    const ALGORITHM_ID: u32 = 0x0000_0004;

    fn info() -> Info {
        Info::new(
            "prio3-histogram",
            env!("CARGO_PKG_VERSION"),
            "Counts per declared bucket; each report proves it names exactly one bucket (Prio3).",
        )
        .with_params_schema(serde_json::json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["buckets"],
            "properties": {
                "buckets": {"oneOf": [
                    {"type": "integer", "minimum": 1, "maximum": MAX_BUCKETS},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_BUCKETS, "uniqueItems": true}
                ]},
                "chunk_length": {"type": "integer", "minimum": 1}
            }
        }))
    }

    fn configure(params: serde_json::Value) -> Result<Config, Error> {
        let params: Params = guardian_sdk::params(params)?;
        let buckets = buckets::labels(params.buckets)?;
        let len = buckets.len() as u64;
        let chunk_length = params
            .chunk_length
            .unwrap_or(optimal_chunk_length(buckets.len()) as u64);
        if !(1..=len).contains(&chunk_length) {
            return Err(Error::invalid_params(format!(
                "chunk_length must be between 1 and the number of buckets ({len}), got {chunk_length}"
            )));
        }
        Ok(Config {
            buckets,
            chunk_length,
        })
    }

    fn expected_measurement(config: &Config) -> Option<String> {
        Some(buckets::expected(&config.buckets))
    }

    fn circuit(config: &Config) -> Result<Type, Error> {
        Type::new(config.buckets.len(), config.chunk_length as usize)
            .map_err(|e| Error::invalid_params(format!("{e}")))
    }

    fn measurement(config: &Config, m: Measurement) -> Result<usize, Error> {
        buckets::index(&config.buckets, m)
    }

    fn result(config: &Config, counts: Vec<u128>, _: u64) -> Result<serde_json::Value, Error> {
        let counts = counts
            .into_iter()
            .map(|c| {
                u64::try_from(c)
                    .map_err(|_| Error::internal(format!("a count of {c} exceeds 2^64")))
            })
            .collect::<Result<Vec<u64>, _>>()?;
        Ok(serde_json::json!({"buckets": config.buckets, "counts": counts}))
    }
}

guardian_sdk::export_robust_plugin!(Prio3Histogram);
