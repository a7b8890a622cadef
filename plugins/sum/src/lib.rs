//! `sum`: the default algorithm. Each user submits a vector of integers of
//! the endpoint's declared length; the result is the element-wise sum over
//! the batch, computed in the wrapping ring Z/2^64.
//!
//! Parameters: `{"length": L}` (1 ≤ L ≤ 100,000, default 1) and
//! `{"signed": true}` to read results as signed 64-bit integers (so negative
//! measurements sum correctly). A measurement is an array of L integers, or
//! a bare integer when L is 1.

use guardian_sdk::{Error, Info, Plugin, Rng, ring};
use serde::{Deserialize, Serialize};

/// The largest vector an endpoint may declare: 800 KB shares are already
/// more than any client should post per report.
pub const MAX_LENGTH: u32 = 100_000;

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

/// A measurement: a vector, or a single integer for length 1.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Measurement {
    /// One value (only for length 1).
    One(Value),
    /// Every element.
    Many(Vec<Value>),
}

/// An integer as JSON gives it, signed or not.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// Non-negative, up to 2^64 - 1.
    Unsigned(u64),
    /// Negative.
    Signed(i64),
}

impl Value {
    /// The ring element.
    pub fn to_ring(self) -> u64 {
        match self {
            Value::Unsigned(x) => x,
            Value::Signed(x) => ring::from_signed(x),
        }
    }
}

/// Checks a `length` parameter; shared by the plugins that take one.
pub fn check_length(length: u32, what: &str) -> Result<(), Error> {
    if length == 0 {
        return Err(Error::invalid_params(format!(
            "{what} must be at least 1, got 0"
        )));
    }
    if length > MAX_LENGTH {
        return Err(Error::invalid_params(format!(
            "{what} must be at most {MAX_LENGTH}, got {length}"
        )));
    }
    Ok(())
}

/// Reads a measurement of `length` integers into ring elements.
pub fn measurement_to_ring(m: Measurement, length: u32) -> Result<Vec<u64>, Error> {
    let values = match m {
        Measurement::One(v) => vec![v],
        Measurement::Many(vs) => vs,
    };
    if values.len() != length as usize {
        return Err(Error::invalid_measurement(format!(
            "expected {length} integers, got {}",
            values.len()
        )));
    }
    Ok(values.into_iter().map(Value::to_ring).collect())
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
        let total = ring::sum_all(&aggs, config.length as usize)?;
        Ok(if config.signed {
            serde_json::json!(total.into_iter().map(ring::to_signed).collect::<Vec<_>>())
        } else {
            serde_json::json!(total)
        })
    }
}

guardian_sdk::export_plugin!(Sum);
