//! Integer-vector measurements: what `sum`, `mean` and other vector
//! algorithms share (parsing, length limits).

use crate::{Error, ring};
use serde::Deserialize;

/// The largest vector an endpoint may declare: 800 KB shares are already
/// more than any client should post per report.
pub const MAX_LENGTH: u32 = 100_000;

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
