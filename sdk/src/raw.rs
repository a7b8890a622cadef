//! The byte-level contract: exactly what crosses the WIT boundary.
//!
//! Each function takes and returns what the matching WIT function does and
//! drives a typed [`Plugin`]. The wasm glue calls these, and so does the
//! native test harness, so native and wasm runs execute the same code.

use crate::{Codec, Error, Plugin, Rng};
use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::rc::Rc;

/// [`crate::Info`] with the schema as a JSON string, as the WIT has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawInfo {
    /// See [`crate::Info::name`].
    pub name: String,
    /// See [`crate::Info::version`].
    pub version: String,
    /// See [`crate::Info::description`].
    pub description: String,
    /// See [`crate::Info::params_schema`].
    pub params_schema: String,
}

/// Many byte strings in one buffer: the WIT `share-batch`. Item `i` is
/// `data[ends[i-1]..ends[i]]` (with `ends[-1]` = 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Every item, concatenated.
    pub data: Vec<u8>,
    /// Where each item ends in `data`.
    pub ends: Vec<u32>,
}

impl Batch {
    /// Packs `items` in order.
    pub fn pack<I: AsRef<[u8]>>(items: impl IntoIterator<Item = I>) -> Batch {
        let mut batch = Batch::default();
        for item in items {
            batch.push(item.as_ref());
        }
        batch
    }

    /// Appends one item.
    pub fn push(&mut self, item: &[u8]) {
        self.data.extend_from_slice(item);
        self.ends
            .push(u32::try_from(self.data.len()).expect("a batch holds less than 4 GiB"));
    }

    /// How many items it holds.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether it holds no item.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Item `i`, or `None` past the end or where `ends` is malformed.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.data.get(start..end)
    }

    /// Every item in order; an [`Error::invalid_state`] for a malformed batch
    /// (`ends` decreasing or past `data`, or `data` longer than the last end).
    pub fn items(&self) -> Result<Vec<&[u8]>, Error> {
        let mut items = Vec::with_capacity(self.ends.len());
        let mut start = 0usize;
        for (i, &end) in self.ends.iter().enumerate() {
            let end = end as usize;
            items.push(self.data.get(start..end).ok_or_else(|| {
                Error::invalid_state(format!(
                    "batch is malformed at item {i}: {start}..{end} of {}",
                    self.data.len()
                ))
            })?);
            start = end;
        }
        if start != self.data.len() {
            return Err(Error::invalid_state(format!(
                "batch is malformed: items end at {start} but the buffer holds {} bytes",
                self.data.len()
            )));
        }
        Ok(items)
    }
}

/// A sharded measurement (contract 0.2.0): the public share every server
/// receives, and share `i` for server `i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The same bytes for every server; empty when the algorithm has none.
    pub public_share: Vec<u8>,
    /// One share per server, in index order.
    pub shares: Vec<Vec<u8>>,
}

/// What `verify-init` made of one report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// This server's state for the report and its verifier share.
    Ready {
        /// Kept by this server until `verify-finish`.
        state: Vec<u8>,
        /// Sent to server 0 for `combine`.
        verifier_share: Vec<u8>,
    },
    /// The report cannot be valid; why (no secret data).
    Invalid(String),
}

/// `info`.
pub fn info<P: Plugin>() -> RawInfo {
    let info = P::info();
    RawInfo {
        name: info.name,
        version: info.version,
        description: info.description,
        params_schema: info.params_schema.to_string(),
    }
}

/// `configure`: parameters JSON in, canonical configuration bytes out.
pub fn configure<P: Plugin>(params: &str) -> Result<Vec<u8>, Error> {
    let params: serde_json::Value = serde_json::from_str(params)
        .map_err(|e| Error::invalid_params(format!("parameters are not valid JSON: {e}")))?;
    let config = P::configure(params)?;
    serde_json::to_vec(&config)
        .map_err(|e| Error::internal(format!("cannot encode configuration: {e}")))
}

/// `shard`.
pub fn shard<P: Plugin>(
    config: &[u8],
    measurement: &str,
    servers: u32,
    seed: &[u8],
) -> Result<Vec<Vec<u8>>, Error> {
    if servers < 2 {
        return Err(Error::internal(format!(
            "at least 2 servers are needed, got {servers}"
        )));
    }
    let config = decode_config::<P>(config)?;
    let measurement: P::Measurement = serde_json::from_str(measurement)
        .map_err(|e| undecodable_measurement(P::expected_measurement(&config), measurement, &e))?;
    let mut rng = Rng::from_seed_bytes(seed)?;
    let shares = P::shard(&config, measurement, servers, &mut rng)?;
    if shares.len() != servers as usize {
        return Err(Error::internal(format!(
            "plugin made {} shares for {servers} servers",
            shares.len()
        )));
    }
    Ok(shares.iter().map(Codec::encode).collect())
}

/// Longest part of a refused measurement quoted back.
const QUOTED: usize = 60;

/// The error for a measurement that does not decode: what was expected, in the
/// plugin's words when it gives them (else in JSON's), and what came.
fn undecodable_measurement(
    expected: Option<String>,
    measurement: &str,
    error: &serde_json::Error,
) -> Error {
    let got: String = measurement.trim().chars().take(QUOTED).collect();
    let got = if got.len() < measurement.trim().len() {
        format!("{got}…")
    } else {
        got
    };
    if error.is_syntax() || error.is_eof() {
        return Error::invalid_measurement(format!("not JSON ({error}): {got}"));
    }
    let expected = expected.unwrap_or_else(|| json_words(&error.to_string()));
    Error::invalid_measurement(format!("expected {expected}, got {got}"))
}

/// What serde expected, said without Rust's type names (`u64` is "a
/// non-negative integer", an untagged enum "another kind of value").
fn json_words(message: &str) -> String {
    let expected = message
        .split(", expected ")
        .nth(1)
        .map(|rest| rest.split(" at line ").next().unwrap_or(rest))
        .unwrap_or("another kind of value");
    match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "a boolean" | "bool" => "true or false".to_owned(),
        "a sequence" => "a list".to_owned(),
        "a map" => "an object".to_owned(),
        other if other.starts_with("struct ") || other.starts_with("enum ") => {
            "another kind of value".to_owned()
        }
        other => other.to_owned(),
    }
}

/// `validate`.
pub fn validate<P: Plugin>(config: &[u8], share: &[u8], server_index: u32) -> Result<(), Error> {
    let config = decode_config::<P>(config)?;
    let share = P::Share::decode(share)?;
    P::validate(&config, &share, server_index)
}

/// `init`.
pub fn init<P: Plugin>(config: &[u8]) -> Result<Vec<u8>, Error> {
    let config = decode_config::<P>(config)?;
    Ok(P::init(&config).encode())
}

/// `accumulate`: folds the shares packed in `data`/`ends` (see the WIT
/// `share-batch`) into `agg`.
pub fn accumulate<P: Plugin>(
    config: &[u8],
    agg: &[u8],
    data: &[u8],
    ends: &[u32],
) -> Result<Vec<u8>, Error> {
    let config = decode_config::<P>(config)?;
    let mut agg = decode_aggregate::<P>(agg)?;
    let mut start = 0usize;
    for (i, &end) in ends.iter().enumerate() {
        let end = end as usize;
        let bytes = data.get(start..end).ok_or_else(|| {
            Error::invalid_state(format!(
                "share batch is malformed at share {i}: {start}..{end} of {}",
                data.len()
            ))
        })?;
        let share = P::Share::decode(bytes)?;
        P::accumulate(&config, &mut agg, &share)?;
        start = end;
    }
    if start != data.len() {
        return Err(Error::invalid_state(format!(
            "share batch is malformed: shares end at {start} but the buffer holds {} bytes",
            data.len()
        )));
    }
    Ok(agg.encode())
}

/// `merge`.
pub fn merge<P: Plugin>(config: &[u8], a: &[u8], b: &[u8]) -> Result<Vec<u8>, Error> {
    let config = decode_config::<P>(config)?;
    let mut a = decode_aggregate::<P>(a)?;
    let b = decode_aggregate::<P>(b)?;
    P::merge(&config, &mut a, b)?;
    Ok(a.encode())
}

/// `release`.
pub fn release<P: Plugin>(
    config: &[u8],
    agg: &[u8],
    count: u64,
    server_index: u32,
    seed: &[u8],
) -> Result<Vec<u8>, Error> {
    let config = decode_config::<P>(config)?;
    let agg = decode_aggregate::<P>(agg)?;
    let mut rng = Rng::from_seed_bytes(seed)?;
    Ok(P::release(&config, agg, count, server_index, &mut rng)?.encode())
}

/// `unshard`: the result as a JSON string.
pub fn unshard<P: Plugin>(config: &[u8], aggs: &[Vec<u8>], count: u64) -> Result<String, Error> {
    let config = decode_config::<P>(config)?;
    let aggs = aggs
        .iter()
        .map(|a| decode_aggregate::<P>(a))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(P::unshard(&config, aggs, count)?.to_string())
}

fn decode_aggregate<P: Plugin>(bytes: &[u8]) -> Result<P::Aggregate, Error> {
    P::Aggregate::decode(bytes)
        .map_err(|e| Error::invalid_state(format!("aggregate: {}", e.message())))
}

/// The decoded configuration cache entry: plugin type, bytes, decoded value.
type CachedConfig = Option<(TypeId, Vec<u8>, Rc<dyn Any>)>;

thread_local! {
    /// The last configuration decoded on this thread. The host passes the
    /// same configuration bytes to every call of an endpoint and reuses
    /// instances, so caching one entry turns a JSON parse per call into a
    /// byte comparison.
    static LAST_CONFIG: RefCell<CachedConfig> = const { RefCell::new(None) };
}

fn decode_config<P: Plugin>(bytes: &[u8]) -> Result<Rc<P::Config>, Error> {
    let hit = LAST_CONFIG.with_borrow(|last| match last {
        Some((ty, cached, config)) if *ty == TypeId::of::<P>() && cached == bytes => {
            Rc::clone(config).downcast::<P::Config>().ok()
        }
        _ => None,
    });
    if let Some(config) = hit {
        return Ok(config);
    }
    let config: Rc<P::Config> = Rc::new(
        serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid_state(format!("configuration does not decode: {e}")))?,
    );
    LAST_CONFIG.set(Some((TypeId::of::<P>(), bytes.to_vec(), config.clone())));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::json_words;

    #[test]
    fn serde_expectations_are_said_in_json_terms() {
        for (message, words) in [
            (
                "invalid type: string \"x\", expected u64 at line 1 column 3",
                "a non-negative integer",
            ),
            (
                "invalid type: string \"x\", expected i32 at line 1 column 3",
                "an integer",
            ),
            (
                "invalid type: map, expected a sequence at line 1 column 1",
                "a list",
            ),
            (
                "invalid type: integer `1`, expected a boolean at line 1 column 1",
                "true or false",
            ),
            (
                "invalid type: integer `1`, expected struct Point at line 1 column 1",
                "another kind of value",
            ),
            (
                "data did not match any variant of untagged enum Measurement",
                "another kind of value",
            ),
        ] {
            assert_eq!(json_words(message), words, "{message}");
        }
    }
}
