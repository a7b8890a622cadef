//! Integer-vector measurements: what `sum`, `mean`, `dp-sum` and other
//! vector algorithms share (parsing, length limits, bounds).

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

    /// The absolute value; exact for every value (|i64::MIN| fits a `u64`).
    fn magnitude(self) -> u64 {
        match self {
            Value::Unsigned(x) => x,
            Value::Signed(x) => x.unsigned_abs(),
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Unsigned(x) => write!(f, "{x}"),
            Value::Signed(x) => write!(f, "{x}"),
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
    Ok(values(m, length)?.into_iter().map(Value::to_ring).collect())
}

/// Reads a measurement of `length` integers, each between `-bound` and
/// `bound` inclusive, into ring elements. A value outside is refused with
/// [`Error::invalid_measurement`] naming it, its index and the bound, rather
/// than clamped: a silently changed measurement would bias the result.
///
/// Differentially private sums need the bound: it is how much one user can
/// move each element of the result. The check runs where the measurement is
/// sharded (on the client), so it stops honest mistakes; without validity
/// proofs, a malicious client can still share an out-of-range value.
pub fn bounded_measurement_to_ring(
    m: Measurement,
    length: u32,
    bound: u64,
) -> Result<Vec<u64>, Error> {
    let values = values(m, length)?;
    if let Some((i, v)) = values
        .iter()
        .enumerate()
        .find(|(_, v)| v.magnitude() > bound)
    {
        return Err(Error::invalid_measurement(format!(
            "value {v} at index {i} is out of range: every value must be between \
             -{bound} and {bound} (the endpoint's bound)"
        )));
    }
    Ok(values.into_iter().map(Value::to_ring).collect())
}

/// What a measurement of `length` integers looks like, in words (for
/// [`crate::Plugin::expected_measurement`]); with `bound`, each between
/// `-bound` and `bound`.
pub fn expected(length: u32, bound: Option<u64>) -> String {
    let range = bound.map_or_else(String::new, |b| format!(" between -{b} and {b}"));
    if length == 1 {
        format!("an integer{range} (or a list of one)")
    } else {
        format!("a list of {length} integers{range}")
    }
}

/// The measurement's values, checked to number `length`.
fn values(m: Measurement, length: u32) -> Result<Vec<Value>, Error> {
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
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Measurement {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn bounded_measurements_keep_values_within_the_bound() {
        let m = bounded_measurement_to_ring(parse("[-5, 0, 5]"), 3, 5).unwrap();
        assert_eq!(m, [ring::from_signed(-5), 0, 5]);
        assert_eq!(bounded_measurement_to_ring(parse("3"), 1, 3).unwrap(), [3]);
        let max = format!("[{}, {}]", i64::MIN, u64::MAX);
        assert_eq!(
            bounded_measurement_to_ring(parse(&max), 2, u64::MAX).unwrap(),
            [ring::from_signed(i64::MIN), u64::MAX]
        );
        for (json, length, bound, expected) in [
            ("[1, -6]", 2, 5, "value -6 at index 1 is out of range"),
            ("[6]", 1, 5, "value 6 at index 0 is out of range"),
            ("7", 1, 0, "between -0 and 0"),
            (
                &max,
                2,
                u64::MAX - 1,
                "value 18446744073709551615 at index 1",
            ),
            ("[1, 2]", 3, 5, "expected 3 integers, got 2"),
        ] {
            let err = bounded_measurement_to_ring(parse(json), length, bound).unwrap_err();
            assert_eq!(err.kind(), "invalid_measurement", "{json}");
            assert!(err.message().contains(expected), "{json}: {err}");
        }
        let err = bounded_measurement_to_ring(parse("[6]"), 1, 5).unwrap_err();
        assert!(
            err.message()
                .ends_with("between -5 and 5 (the endpoint's bound)"),
            "{err}"
        );
    }
}
