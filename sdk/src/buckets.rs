//! Bucketed measurements: what `histogram`, `dp-histogram` and other
//! one-hot algorithms share (declaring buckets, finding a user's bucket).

use crate::Error;
use serde::Deserialize;

/// The most buckets an endpoint may declare.
pub const MAX_BUCKETS: usize = 100_000;

/// Buckets as a developer declares them: a number (labels "0".."n-1") or
/// distinct labels.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Buckets {
    /// `n` buckets labelled by their index.
    Count(u64),
    /// One label per bucket.
    Labels(Vec<String>),
}

/// A user's bucket, by index or by label.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Measurement {
    /// Index into the buckets.
    Index(u64),
    /// A bucket label.
    Label(String),
}

/// Checks declared buckets and returns their labels: 1 to [`MAX_BUCKETS`],
/// no label twice.
pub fn labels(buckets: Buckets) -> Result<Vec<String>, Error> {
    let labels: Vec<String> = match buckets {
        Buckets::Count(n) if n as usize <= MAX_BUCKETS => (0..n).map(|i| i.to_string()).collect(),
        Buckets::Count(n) => {
            return Err(Error::invalid_params(format!(
                "buckets must be at most {MAX_BUCKETS}, got {n}"
            )));
        }
        Buckets::Labels(labels) => labels,
    };
    if labels.is_empty() {
        return Err(Error::invalid_params(
            "buckets must name at least 1 bucket, got 0",
        ));
    }
    if labels.len() > MAX_BUCKETS {
        return Err(Error::invalid_params(format!(
            "buckets must be at most {MAX_BUCKETS}, got {}",
            labels.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = labels.iter().find(|b| !seen.insert(b.as_str())) {
        return Err(Error::invalid_params(format!(
            "bucket label {dup:?} appears twice"
        )));
    }
    Ok(labels)
}

/// What a measurement over `labels` looks like, in words (for
/// [`crate::Plugin::expected_measurement`]): a label, or an index.
pub fn expected(labels: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut shown: Vec<String> = labels
        .iter()
        .take(SHOWN)
        .map(|l| format!("{l:?}"))
        .collect();
    if labels.len() > SHOWN {
        shown.push("…".to_owned());
    }
    format!(
        "a bucket label ({}) or a bucket index from 0 to {}",
        shown.join(", "),
        labels.len().saturating_sub(1)
    )
}

/// The one-hot vector of a measurement over `labels`.
pub fn one_hot(labels: &[String], m: Measurement) -> Result<Vec<u64>, Error> {
    let mut one_hot = vec![0u64; labels.len()];
    one_hot[index(labels, m)?] = 1;
    Ok(one_hot)
}

/// The index of a measurement's bucket among `labels`; an index out of range
/// or an unknown label is refused with [`Error::invalid_measurement`].
pub fn index(labels: &[String], m: Measurement) -> Result<usize, Error> {
    Ok(match m {
        // `try_from`, not `as`: on wasm32 `as usize` would wrap 2^32 + 1 to 1.
        Measurement::Index(i) => usize::try_from(i)
            .ok()
            .filter(|&i| i < labels.len())
            .ok_or_else(|| {
                Error::invalid_measurement(format!(
                    "bucket index {i} is out of range: there are {} buckets",
                    labels.len()
                ))
            })?,
        Measurement::Label(label) => labels.iter().position(|b| *b == label).ok_or_else(|| {
            Error::invalid_measurement(format!(
                "unknown bucket {label:?}: expected {}",
                expected(labels)
            ))
        })?,
    })
}
