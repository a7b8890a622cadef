//! The byte-level contract: exactly what crosses the WIT boundary.
//!
//! Each function takes and returns what the matching WIT function does and
//! drives a typed [`Plugin`]. The wasm glue calls these, and so does the
//! native test harness, so native and wasm runs execute the same code.
//!
//! Contract 0.1.0 (`wit/plugin.wit`) is `info` to `unshard`. Contract 0.2.0
//! (`wit/0.2.0/plugin.wit`, robust plugins) replaces `shard` and `validate`
//! with [`shard_report`] and [`validate_report`], adds the `verify`
//! interface ([`verify_init`], [`combine`], [`verify_finish`]) and keeps the
//! rest; its `accumulate` folds the output shares of [`verify_finish`].

use crate::{Codec, Error, Plugin, ReportId, Rng, VerifyKey};
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
    let measurement = decode_measurement::<P>(&config, measurement)?;
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

/// A measurement (JSON text) as the plugin's type.
fn decode_measurement<P: Plugin>(config: &P::Config, text: &str) -> Result<P::Measurement, Error> {
    serde_json::from_str(text)
        .map_err(|e| undecodable_measurement(P::expected_measurement(config), text, &e))
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

// Contract 0.2.0: robust plugins. `configure`, `init`, `accumulate` (which
// folds the output shares of `verify_finish`), `merge`, `release` and
// `unshard` are the functions above, unchanged.

/// 0.2 `shard`: splits a measurement into a report bound to `report_id` (16
/// bytes).
pub fn shard_report<P: Plugin>(
    config: &[u8],
    measurement: &str,
    servers: u32,
    report_id: &[u8],
    seed: &[u8],
) -> Result<Report, Error> {
    if servers < 2 {
        return Err(Error::internal(format!(
            "at least 2 servers are needed, got {servers}"
        )));
    }
    let report_id: ReportId = report_id.try_into().map_err(|_| {
        Error::internal(format!("a report id is 16 bytes, got {}", report_id.len()))
    })?;
    let config = decode_config::<P>(config)?;
    let measurement = decode_measurement::<P>(&config, measurement)?;
    let mut rng = Rng::from_seed_bytes(seed)?;
    let report = P::shard_report(&config, measurement, servers, &report_id, &mut rng)?;
    if report.shares.len() != servers as usize {
        return Err(Error::internal(format!(
            "plugin made {} shares for {servers} servers",
            report.shares.len()
        )));
    }
    Ok(report)
}

/// 0.2 `validate`: the public share and this server's share.
pub fn validate_report<P: Plugin>(
    config: &[u8],
    public_share: &[u8],
    share: &[u8],
    server_index: u32,
) -> Result<(), Error> {
    let config = decode_config::<P>(config)?;
    P::validate_report(&config, public_share, share, server_index)
}

/// `verify-init`: report `i` has the id `ids[16 * i..][..16]`, the `i`-th
/// public share and the `i`-th share. One [`Started`] per report, in order.
pub fn verify_init<P: Plugin>(
    config: &[u8],
    key: &[u8],
    servers: u32,
    server_index: u32,
    ids: &[u8],
    public_shares: &Batch,
    shares: &Batch,
) -> Result<Vec<Started>, Error> {
    let config = decode_config::<P>(config)?;
    let key: &VerifyKey = key.try_into().map_err(|_| {
        Error::invalid_state(format!(
            "the verification key must be 32 bytes, got {}",
            key.len()
        ))
    })?;
    check_seat(servers, server_index)?;
    let public_shares = public_shares.items()?;
    let shares = shares.items()?;
    if public_shares.len() != shares.len() || ids.len() != 16 * shares.len() {
        return Err(Error::invalid_state(format!(
            "reports are malformed: {} ids ({} bytes), {} public shares, {} shares",
            ids.len() / 16,
            ids.len(),
            public_shares.len(),
            shares.len()
        )));
    }
    let (ids, _) = ids.as_chunks::<16>();
    ids.iter()
        .zip(public_shares)
        .zip(shares)
        .map(|((id, public_share), share)| {
            P::verify_init(&config, key, servers, server_index, id, public_share, share)
        })
        .collect()
}

/// `combine`: `verifier_shares` holds one batch per server, in index order,
/// with report `i`'s verifier share at position `i`. For each report, the
/// message for `verify-finish` or why the report is invalid.
pub fn combine<P: Plugin>(
    config: &[u8],
    public_shares: &Batch,
    verifier_shares: &[Batch],
) -> Result<Vec<Result<Vec<u8>, String>>, Error> {
    let config = decode_config::<P>(config)?;
    if verifier_shares.len() < 2 {
        return Err(Error::internal(format!(
            "combine needs the verifier shares of at least 2 servers, got {}",
            verifier_shares.len()
        )));
    }
    let public_shares = public_shares.items()?;
    let verifier_shares = verifier_shares
        .iter()
        .map(Batch::items)
        .collect::<Result<Vec<_>, _>>()?;
    if let Some((server, batch)) = verifier_shares
        .iter()
        .enumerate()
        .find(|(_, batch)| batch.len() != public_shares.len())
    {
        return Err(Error::invalid_state(format!(
            "server {server} sent {} verifier shares for {} reports",
            batch.len(),
            public_shares.len()
        )));
    }
    let mut report_shares = Vec::with_capacity(verifier_shares.len());
    public_shares
        .iter()
        .enumerate()
        .map(|(i, public_share)| {
            report_shares.clear();
            report_shares.extend(verifier_shares.iter().map(|batch| batch[i]));
            P::combine(&config, public_share, &report_shares)
        })
        .collect()
}

/// `verify-finish`: this server's output share of each report, packed as
/// `accumulate` takes them.
pub fn verify_finish<P: Plugin>(
    config: &[u8],
    servers: u32,
    server_index: u32,
    states: &Batch,
    messages: &Batch,
) -> Result<Batch, Error> {
    let config = decode_config::<P>(config)?;
    check_seat(servers, server_index)?;
    let states = states.items()?;
    let messages = messages.items()?;
    if states.len() != messages.len() {
        return Err(Error::invalid_state(format!(
            "{} verification states but {} messages",
            states.len(),
            messages.len()
        )));
    }
    let mut out = Batch::default();
    for (state, message) in states.into_iter().zip(messages) {
        out.push(&P::verify_finish(&config, servers, server_index, state, message)?.encode());
    }
    Ok(out)
}

/// Fails with [`Error::internal`] unless `server_index` is one of at least 2
/// `servers`: the host's mistake, not a report's.
fn check_seat(servers: u32, server_index: u32) -> Result<(), Error> {
    if servers < 2 {
        return Err(Error::internal(format!(
            "at least 2 servers are needed, got {servers}"
        )));
    }
    if server_index >= servers {
        return Err(Error::internal(format!(
            "server index {server_index} is not one of {servers} servers"
        )));
    }
    Ok(())
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
    use crate::testing::{Backend, Native};
    use crate::{Error, Info, Plugin, Rng, ring};

    /// A plugin that does not verify: it leaves the robust methods alone.
    struct Plain;

    impl Plugin for Plain {
        type Config = serde_json::Value;
        type Measurement = u64;
        type Share = Vec<u64>;
        type Aggregate = Vec<u64>;
        fn info() -> Info {
            Info::new("plain", "0.0.0", "A test plugin.")
        }
        fn configure(params: serde_json::Value) -> Result<serde_json::Value, Error> {
            Ok(params)
        }
        fn shard(
            _: &Self::Config,
            m: u64,
            servers: u32,
            rng: &mut Rng,
        ) -> Result<Vec<Vec<u64>>, Error> {
            Ok(ring::split(&[m], servers, rng))
        }
        fn init(_: &Self::Config) -> Vec<u64> {
            vec![0]
        }
        fn accumulate(_: &Self::Config, agg: &mut Vec<u64>, share: &Vec<u64>) -> Result<(), Error> {
            ring::add_assign(agg, share)
        }
        fn unshard(
            _: &Self::Config,
            aggs: Vec<Vec<u64>>,
            _: u64,
        ) -> Result<serde_json::Value, Error> {
            Ok(serde_json::json!(ring::sum_all(&aggs, 1)?[0]))
        }
    }

    #[test]
    fn plugins_that_do_not_verify_say_so_at_every_robust_call() {
        let plain = Native::<Plain>::new();
        let config = plain.configure("{}").unwrap();
        let empty = super::Batch::default();
        let results = [
            plain
                .shard_report(&config, "1", 2, &[0; 16], &[0; 32])
                .map(drop),
            plain.validate_report(&config, &[], &[0; 8], 0),
            plain
                .verify_init(
                    &config,
                    &[0; 32],
                    2,
                    0,
                    &[0; 16],
                    &super::Batch::pack([[]]),
                    &super::Batch::pack([[0u8; 8]]),
                )
                .map(drop),
            plain
                .combine(
                    &config,
                    &super::Batch::pack([[]]),
                    &[super::Batch::pack([[1]]), super::Batch::pack([[2]])],
                )
                .map(drop),
            plain
                .verify_finish(
                    &config,
                    2,
                    0,
                    &super::Batch::pack([[1]]),
                    &super::Batch::pack([[2]]),
                )
                .map(drop),
        ];
        for result in results {
            let err = result.unwrap_err();
            assert!(
                err.kind() == "internal" && err.message().contains("not robust"),
                "{err}"
            );
        }
        // The 0.1 calls are as they were; an empty round asks nothing of it.
        assert_eq!(plain.shard(&config, "1", 2, &[0; 32]).unwrap().len(), 2);
        assert!(
            plain
                .verify_finish(&config, 2, 0, &empty, &empty)
                .unwrap()
                .is_empty()
        );
    }

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
