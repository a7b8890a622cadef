//! `prio3-sumvec`: the element-wise sum of bounded integer vectors, robustly:
//! each report carries a Prio3 proof that every element is between 0 and the
//! endpoint's bound, which the servers check before adding it.
//!
//! Parameters: `{"length": L}` (1 ≤ L ≤ 100,000) and the bound, either
//! `{"bits": B}` (elements below 2^B, 1 ≤ B ≤ 64) or
//! `{"max_measurement": M}` (elements from 0 to M, M ≥ 1); L times the bits
//! of the bound is at most 100,000. `{"chunk_length": C}` tunes the proof
//! (default: the shortest proof, prio's `optimal_chunk_length`). A
//! measurement is a list of L integers, or a bare integer when L is 1; the
//! result is the list of sums.

use guardian_sdk::prio3::prio::field::Field128;
use guardian_sdk::prio3::prio::flp::gadgets::{Mul, ParallelSum};
use guardian_sdk::prio3::prio::flp::types;
use guardian_sdk::prio3::prio::vdaf::prio3::optimal_chunk_length;
use guardian_sdk::prio3::{Circuit, Prio3Plugin};
use guardian_sdk::vector::{MAX_LENGTH, check_length};
use guardian_sdk::{Error, Info};
use serde::{Deserialize, Serialize};

/// The circuit of `prio3-sumvec`: prio's `SumVec`.
pub struct SumVec;

/// The `prio3-sumvec` plugin.
pub type Prio3SumVec = Prio3Plugin<SumVec>;

/// The largest encoded measurement, in field elements (length times the
/// bits of the bound): the leader's share takes 16 bytes per element, so
/// about 1.6 MB plus the proof.
pub const MAX_ENCODED: u64 = 100_000;

/// Parameters as a developer writes them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    length: u32,
    bits: Option<u32>,
    max_measurement: Option<u64>,
    chunk_length: Option<u64>,
}

/// Canonical configuration: the bound as `max_measurement` whichever way it
/// was given, and the chunk length chosen.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Number of integers in each measurement.
    pub length: u32,
    /// The largest value of an element.
    pub max_measurement: u64,
    /// The chunk length of the proof's parallel-sum gadget.
    pub chunk_length: u64,
}

/// A measurement: a list, or one integer when the length is 1.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Measurement {
    /// One value (only for length 1).
    One(u64),
    /// Every element.
    Many(Vec<u64>),
}

type Type = types::SumVec<Field128, ParallelSum<Field128, Mul>>;

impl Circuit for SumVec {
    type Config = Config;
    type Measurement = Measurement;
    type Type = Type;
    /// Prio3SumVec's, so that prio's clients interoperate.
    const ALGORITHM_ID: u32 = 0x0000_0003;

    fn info() -> Info {
        Info::new(
            "prio3-sumvec",
            env!("CARGO_PKG_VERSION"),
            "Element-wise sum of integer vectors; each report proves every element is between 0 and the bound (Prio3).",
        )
        .with_params_schema(serde_json::json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["length"],
            "oneOf": [{"required": ["bits"]}, {"required": ["max_measurement"]}],
            "properties": {
                "length": {"type": "integer", "minimum": 1, "maximum": MAX_LENGTH},
                "bits": {"type": "integer", "minimum": 1, "maximum": 64},
                "max_measurement": {"type": "integer", "minimum": 1, "maximum": u64::MAX},
                "chunk_length": {"type": "integer", "minimum": 1}
            }
        }))
    }

    fn configure(params: serde_json::Value) -> Result<Config, Error> {
        let params: Params = guardian_sdk::params(params)?;
        check_length(params.length, "length")?;
        let max_measurement = match (params.bits, params.max_measurement) {
            (Some(bits @ 1..=64), None) => u64::MAX >> (64 - bits),
            (Some(bits), None) => {
                return Err(Error::invalid_params(format!(
                    "bits must be between 1 and 64, got {bits}"
                )));
            }
            (None, Some(0)) => {
                return Err(Error::invalid_params(
                    "max_measurement must be at least 1, got 0",
                ));
            }
            (None, Some(max)) => max,
            (None, None) | (Some(_), Some(_)) => {
                return Err(Error::invalid_params(
                    "give the bound of the elements as either bits or max_measurement (one of them)",
                ));
            }
        };
        let bits = u64::from(u64::BITS - max_measurement.leading_zeros());
        let encoded = u64::from(params.length) * bits;
        if encoded > MAX_ENCODED {
            return Err(Error::invalid_params(format!(
                "length × bits of the bound must be at most {MAX_ENCODED}, got {} × {bits} = {encoded}",
                params.length
            )));
        }
        let chunk_length = params
            .chunk_length
            .unwrap_or(optimal_chunk_length(encoded as usize) as u64);
        if !(1..=encoded).contains(&chunk_length) {
            return Err(Error::invalid_params(format!(
                "chunk_length must be between 1 and length × bits = {encoded}, got {chunk_length}"
            )));
        }
        Ok(Config {
            length: params.length,
            max_measurement,
            chunk_length,
        })
    }

    fn expected_measurement(config: &Config) -> Option<String> {
        let range = format!("from 0 to {}", config.max_measurement);
        Some(if config.length == 1 {
            format!("an integer {range} (or a list of one)")
        } else {
            format!("a list of {} integers {range}", config.length)
        })
    }

    fn circuit(config: &Config) -> Result<Type, Error> {
        Type::new(
            u128::from(config.max_measurement),
            config.length as usize,
            config.chunk_length as usize,
        )
        .map_err(|e| Error::invalid_params(format!("{e}")))
    }

    fn measurement(config: &Config, m: Measurement) -> Result<Vec<u128>, Error> {
        let values = match m {
            Measurement::One(x) if config.length == 1 => vec![x],
            Measurement::One(_) => {
                return Err(Error::invalid_measurement(format!(
                    "expected a list of {} integers, got a single integer",
                    config.length
                )));
            }
            Measurement::Many(values) if values.len() == config.length as usize => values,
            Measurement::Many(values) => {
                return Err(Error::invalid_measurement(format!(
                    "expected {} integers, got {}",
                    config.length,
                    values.len()
                )));
            }
        };
        if let Some((i, v)) = values
            .iter()
            .enumerate()
            .find(|(_, v)| **v > config.max_measurement)
        {
            return Err(Error::invalid_measurement(format!(
                "value {v} at index {i} is out of range: every value must be between 0 and {}",
                config.max_measurement
            )));
        }
        Ok(values.into_iter().map(u128::from).collect())
    }

    fn result(_: &Config, sums: Vec<u128>, _: u64) -> Result<serde_json::Value, Error> {
        let sums = sums
            .into_iter()
            .map(|s| {
                u64::try_from(s).map_err(|_| Error::internal(format!("a sum of {s} exceeds 2^64")))
            })
            .collect::<Result<Vec<u64>, _>>()?;
        Ok(serde_json::json!(sums))
    }
}

guardian_sdk::export_robust_plugin!(Prio3SumVec);
