//! The checks every plugin must pass, over any [`Backend`] (the byte-level
//! contract of the WIT worlds), so that one suite runs two ways:
//!
//! - natively, in the plugin crate's `cargo test`: [`Native<P>`] calls the
//!   plugin's Rust code through the same byte layer as the wasm glue;
//! - on the component itself: `guardian plugin check FILE --params JSON
//!   --measurements FILE` loads the `.wasm` as a share server loads an
//!   upload and runs the same suite through the server's wasm runtime and
//!   limits, then the checks only a server can make (the file's size, its
//!   compile time, 1,000 shares folded in one call within the deadline).
//!
//! The suite is [`check_plugin`], which returns every check's [`Outcome`]
//! for a report, and [`assert_plugin`], which panics naming the failed
//! checks, for `#[test]`s. [`CheckOptions`] says what to check with: the
//! endpoint parameters, example measurements, the contract (0.1 or robust),
//! the numbers of servers and, when known, the expected result.
//!
//! ```
//! # use guardian_sdk::{ring, Error, Info, Plugin, Rng};
//! # #[derive(serde::Serialize, serde::Deserialize)]
//! # #[serde(deny_unknown_fields)]
//! # pub struct Config {}
//! # pub struct Yes;
//! # impl Plugin for Yes {
//! #     type Config = Config;
//! #     type Measurement = bool;
//! #     type Share = Vec<u64>;
//! #     type Aggregate = Vec<u64>;
//! #     fn info() -> Info {
//! #         Info::new("yes", "0.1.0", "Counts the users who answered yes.")
//! #     }
//! #     fn configure(params: serde_json::Value) -> Result<Config, Error> {
//! #         guardian_sdk::params(params)
//! #     }
//! #     fn shard(_: &Config, yes: bool, servers: u32, rng: &mut Rng) -> Result<Vec<Vec<u64>>, Error> {
//! #         Ok(ring::split(&[u64::from(yes)], servers, rng))
//! #     }
//! #     fn validate(_: &Config, share: &Vec<u64>, _server: u32) -> Result<(), Error> {
//! #         ring::check_len(share, 1)
//! #     }
//! #     fn init(_: &Config) -> Vec<u64> {
//! #         vec![0]
//! #     }
//! #     fn accumulate(_: &Config, agg: &mut Vec<u64>, share: &Vec<u64>) -> Result<(), Error> {
//! #         ring::add_assign(agg, share)
//! #     }
//! #     fn unshard(_: &Config, aggs: Vec<Vec<u64>>, _count: u64) -> Result<serde_json::Value, Error> {
//! #         Ok(serde_json::json!(ring::sum_all(&aggs, 1)?[0]))
//! #     }
//! # }
//! use guardian_sdk::testing::{CheckOptions, Native, Outcome, assert_plugin, check_plugin};
//!
//! // In the plugin crate's tests/: every check, natively, on the plugin
//! // `Yes` (the "complete plugin" of the crate docs). A `measurements.jsonl`
//! // file can be given as `include_str!("../measurements.jsonl").lines()`.
//! let options = CheckOptions {
//!     expected: Some(serde_json::json!(2)),
//!     ..CheckOptions::new("{}", ["true", "false", "true"])
//! };
//! let checks = assert_plugin(&Native::<Yes>::new(), &options);
//! assert!(checks.iter().any(|c| c.name == "bad shares are refused"));
//!
//! // The same suite, as results: a wrong expectation is a failed check.
//! let options = CheckOptions {
//!     expected: Some(serde_json::json!(3)),
//!     ..options
//! };
//! let failed: Vec<_> = check_plugin(&Native::<Yes>::new(), &options)
//!     .into_iter()
//!     .filter(|c| matches!(c.outcome, Outcome::Failed(_)))
//!     .collect();
//! assert_eq!(failed.len(), 1, "{failed:?}");
//! assert!(failed[0].name.starts_with("round trips"));
//! ```
//!
//! The building blocks are here too, for a plugin's own tests: [`run`] and
//! [`run_with`] (the life of a batch), [`assert_refused`], [`pack`],
//! [`seed`], chi-squared tests of share bytes; and for robust plugins
//! (contract 0.2.0) [`run_robust`], [`verify_round`],
//! [`aggregate_reports`] and the robust checks ([`check_robust`] and the
//! three it runs), which panic with what failed.

mod robust;
mod suite;

pub use self::robust::{
    Verdicts, aggregate_reports, assert_rejected, check_robust, check_robust_deterministic,
    check_robust_round_trips, check_tampering_rejected, report_id, run_robust, verify_key,
    verify_round,
};
pub use self::suite::{Check, CheckOptions, Outcome, assert_plugin, check_plugin};

use crate::{Error, Plugin, raw};
use std::marker::PhantomData;

/// The WIT functions, byte for byte. Errors that are not the plugin's own
/// (a trap, a timeout) are reported by a wasm backend as [`Error::Internal`].
pub trait Backend {
    /// `configure`.
    fn configure(&self, params: &str) -> Result<Vec<u8>, Error>;
    /// `shard`.
    fn shard(
        &self,
        config: &[u8],
        measurement: &str,
        servers: u32,
        seed: &[u8],
    ) -> Result<Vec<Vec<u8>>, Error>;
    /// `validate`.
    fn validate(&self, config: &[u8], share: &[u8], server_index: u32) -> Result<(), Error>;
    /// `init`.
    fn init(&self, config: &[u8]) -> Result<Vec<u8>, Error>;
    /// `accumulate`, with the shares packed as the WIT `share-batch`.
    fn accumulate(
        &self,
        config: &[u8],
        agg: &[u8],
        data: &[u8],
        ends: &[u32],
    ) -> Result<Vec<u8>, Error>;
    /// `merge`.
    fn merge(&self, config: &[u8], a: &[u8], b: &[u8]) -> Result<Vec<u8>, Error>;
    /// `release`.
    fn release(
        &self,
        config: &[u8],
        agg: &[u8],
        count: u64,
        server_index: u32,
        seed: &[u8],
    ) -> Result<Vec<u8>, Error>;
    /// `unshard`, returning the JSON text.
    fn unshard(&self, config: &[u8], aggs: &[Vec<u8>], count: u64) -> Result<String, Error>;

    // Contract 0.2.0 (robust plugins). The defaults say the backend runs a
    // plugin that is not robust.

    /// 0.2 `shard`: with the report id, giving the public share too.
    fn shard_report(
        &self,
        config: &[u8],
        measurement: &str,
        servers: u32,
        report_id: &[u8],
        seed: &[u8],
    ) -> Result<raw::Report, Error> {
        let _ = (config, measurement, servers, report_id, seed);
        Err(not_robust())
    }
    /// 0.2 `validate`: the public share and this server's share.
    fn validate_report(
        &self,
        config: &[u8],
        public_share: &[u8],
        share: &[u8],
        server_index: u32,
    ) -> Result<(), Error> {
        let _ = (config, public_share, share, server_index);
        Err(not_robust())
    }
    /// `verify-init`: report `i` is `ids[16 * i..][..16]`, the `i`-th public
    /// share and the `i`-th share.
    #[allow(clippy::too_many_arguments)]
    fn verify_init(
        &self,
        config: &[u8],
        key: &[u8],
        servers: u32,
        server_index: u32,
        ids: &[u8],
        public_shares: &raw::Batch,
        shares: &raw::Batch,
    ) -> Result<Vec<raw::Started>, Error> {
        let _ = (
            config,
            key,
            servers,
            server_index,
            ids,
            public_shares,
            shares,
        );
        Err(not_robust())
    }
    /// `combine`: one batch of verifier shares per server, in index order.
    fn combine(
        &self,
        config: &[u8],
        public_shares: &raw::Batch,
        verifier_shares: &[raw::Batch],
    ) -> Result<Vec<Result<Vec<u8>, String>>, Error> {
        let _ = (config, public_shares, verifier_shares);
        Err(not_robust())
    }
    /// `verify-finish`: the output shares, as `accumulate` takes them.
    fn verify_finish(
        &self,
        config: &[u8],
        servers: u32,
        server_index: u32,
        states: &raw::Batch,
        messages: &raw::Batch,
    ) -> Result<raw::Batch, Error> {
        let _ = (config, servers, server_index, states, messages);
        Err(not_robust())
    }
}

fn not_robust() -> Error {
    crate::error::not_robust()
}

/// Runs a [`Plugin`] natively, through the same byte layer as the wasm glue.
pub struct Native<P>(PhantomData<P>);

impl<P: Plugin> Native<P> {
    /// The native backend for `P`.
    pub fn new() -> Self {
        Native(PhantomData)
    }
}

impl<P: Plugin> Default for Native<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Plugin> Backend for Native<P> {
    fn configure(&self, params: &str) -> Result<Vec<u8>, Error> {
        raw::configure::<P>(params)
    }
    fn shard(
        &self,
        config: &[u8],
        measurement: &str,
        servers: u32,
        seed: &[u8],
    ) -> Result<Vec<Vec<u8>>, Error> {
        raw::shard::<P>(config, measurement, servers, seed)
    }
    fn validate(&self, config: &[u8], share: &[u8], server_index: u32) -> Result<(), Error> {
        raw::validate::<P>(config, share, server_index)
    }
    fn init(&self, config: &[u8]) -> Result<Vec<u8>, Error> {
        raw::init::<P>(config)
    }
    fn accumulate(
        &self,
        config: &[u8],
        agg: &[u8],
        data: &[u8],
        ends: &[u32],
    ) -> Result<Vec<u8>, Error> {
        raw::accumulate::<P>(config, agg, data, ends)
    }
    fn merge(&self, config: &[u8], a: &[u8], b: &[u8]) -> Result<Vec<u8>, Error> {
        raw::merge::<P>(config, a, b)
    }
    fn release(
        &self,
        config: &[u8],
        agg: &[u8],
        count: u64,
        server_index: u32,
        seed: &[u8],
    ) -> Result<Vec<u8>, Error> {
        raw::release::<P>(config, agg, count, server_index, seed)
    }
    fn unshard(&self, config: &[u8], aggs: &[Vec<u8>], count: u64) -> Result<String, Error> {
        raw::unshard::<P>(config, aggs, count)
    }
    fn shard_report(
        &self,
        config: &[u8],
        measurement: &str,
        servers: u32,
        report_id: &[u8],
        seed: &[u8],
    ) -> Result<raw::Report, Error> {
        raw::shard_report::<P>(config, measurement, servers, report_id, seed)
    }
    fn validate_report(
        &self,
        config: &[u8],
        public_share: &[u8],
        share: &[u8],
        server_index: u32,
    ) -> Result<(), Error> {
        raw::validate_report::<P>(config, public_share, share, server_index)
    }
    fn verify_init(
        &self,
        config: &[u8],
        key: &[u8],
        servers: u32,
        server_index: u32,
        ids: &[u8],
        public_shares: &raw::Batch,
        shares: &raw::Batch,
    ) -> Result<Vec<raw::Started>, Error> {
        raw::verify_init::<P>(
            config,
            key,
            servers,
            server_index,
            ids,
            public_shares,
            shares,
        )
    }
    fn combine(
        &self,
        config: &[u8],
        public_shares: &raw::Batch,
        verifier_shares: &[raw::Batch],
    ) -> Result<Vec<Result<Vec<u8>, String>>, Error> {
        raw::combine::<P>(config, public_shares, verifier_shares)
    }
    fn verify_finish(
        &self,
        config: &[u8],
        servers: u32,
        server_index: u32,
        states: &raw::Batch,
        messages: &raw::Batch,
    ) -> Result<raw::Batch, Error> {
        raw::verify_finish::<P>(config, servers, server_index, states, messages)
    }
}

/// Packs shares into the WIT `share-batch` layout: one buffer and the end
/// offset of each share.
pub fn pack(shares: &[&[u8]]) -> (Vec<u8>, Vec<u32>) {
    let mut data = Vec::with_capacity(shares.iter().map(|s| s.len()).sum());
    let mut ends = Vec::with_capacity(shares.len());
    for share in shares {
        data.extend_from_slice(share);
        ends.push(u32::try_from(data.len()).unwrap_or(u32::MAX));
    }
    (data, ends)
}

/// Checks that a call was refused with the plugin's own error: one of `kind`
/// (`"invalid_params"`, `"invalid_measurement"`, ...) whose message contains
/// `needle`. The same check holds for every backend, since a wasm backend
/// returns the plugin's error unchanged.
///
/// # Panics
/// If the call succeeded or failed otherwise; the message starts with
/// `context` (the backend and the input, say).
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    context: impl std::fmt::Display,
    result: Result<T, Error>,
    kind: &str,
    needle: &str,
) {
    match result {
        Ok(value) => panic!("{context}: expected {kind}, got Ok({value:?})"),
        Err(err) => assert!(
            err.kind() == kind && err.message().contains(needle),
            "{context}: expected {kind} containing {needle:?}, got {err}"
        ),
    }
}

/// Derives a 32-byte seed from a test number and a purpose, so that runs
/// are reproducible.
pub fn seed(test_seed: u64, purpose: u64) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&test_seed.to_le_bytes());
    s[8..16].copy_from_slice(&purpose.to_le_bytes());
    s
}

/// How [`run_with`] drives the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Number of share servers (at least 2).
    pub servers: u32,
    /// Shares folded per `accumulate` call; the batch is cut in chunks of
    /// this size and the chunk aggregates are merged, as a server does with
    /// large batches.
    pub chunk: usize,
    /// Seed for sharding and release noise.
    pub seed: u64,
}

/// Shards every measurement (JSON texts) for `servers` servers, validates
/// every share at its server, folds each server's shares, releases and
/// unshards: the whole life of one batch. Returns the plugin's result.
pub fn run(
    backend: &dyn Backend,
    config: &[u8],
    measurements: &[String],
    servers: u32,
    seed: u64,
) -> Result<serde_json::Value, Error> {
    run_with(
        backend,
        config,
        measurements,
        RunOptions {
            servers,
            chunk: 7,
            seed,
        },
    )
}

/// [`run`] with every knob.
pub fn run_with(
    backend: &dyn Backend,
    config: &[u8],
    measurements: &[String],
    options: RunOptions,
) -> Result<serde_json::Value, Error> {
    let servers = options.servers as usize;
    let mut per_server: Vec<Vec<Vec<u8>>> = vec![Vec::new(); servers];
    for (i, m) in measurements.iter().enumerate() {
        let shares = backend.shard(config, m, options.servers, &seed(options.seed, i as u64))?;
        for (server, share) in shares.into_iter().enumerate() {
            backend.validate(config, &share, server as u32)?;
            per_server[server].push(share);
        }
    }
    let count = measurements.len() as u64;
    let mut released = Vec::with_capacity(servers);
    for (server, shares) in per_server.iter().enumerate() {
        let mut total = backend.init(config)?;
        for chunk in shares.chunks(options.chunk.max(1)) {
            let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            let (data, ends) = pack(&refs);
            let part = backend.accumulate(config, &backend.init(config)?, &data, &ends)?;
            total = backend.merge(config, &total, &part)?;
        }
        let release_seed = seed(options.seed, u64::MAX - server as u64);
        released.push(backend.release(config, &total, count, server as u32, &release_seed)?);
    }
    let text = backend.unshard(config, &released, count)?;
    serde_json::from_str(&text)
        .map_err(|e| Error::internal(format!("unshard returned invalid JSON: {e}")))
}

/// The chunk sizes a batch of `len` shares is folded in by the round
/// trips: one share a call, three, and all of them.
fn chunk_sizes(len: usize) -> Vec<usize> {
    let mut sizes = vec![1, 3, len.max(1)];
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// Pearson's chi-squared statistic of byte values against the uniform
/// distribution on 0..=255 (255 degrees of freedom).
pub fn chi_squared_uniform_bytes(bytes: &[u8]) -> f64 {
    let mut counts = [0u64; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let expected = bytes.len() as f64 / 256.0;
    counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum()
}

/// Chi-squared statistic of the two-sample test that `a` and `b` draw their
/// byte values from the same distribution (255 degrees of freedom).
pub fn chi_squared_two_sample_bytes(a: &[u8], b: &[u8]) -> f64 {
    let (mut ca, mut cb) = ([0f64; 256], [0f64; 256]);
    a.iter().for_each(|&x| ca[x as usize] += 1.0);
    b.iter().for_each(|&x| cb[x as usize] += 1.0);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (ka, kb) = ((nb / na).sqrt(), (na / nb).sqrt());
    ca.iter()
        .zip(&cb)
        .filter(|(x, y)| **x + **y > 0.0)
        .map(|(x, y)| (ka * x - kb * y).powi(2) / (x + y))
        .sum()
}

/// The chi-squared value for 255 degrees of freedom above which a test
/// rejects at p < 0.0001 (Wilson–Hilferty): uniform bytes stay below it.
pub const CHI2_255_P0001: f64 = 347.7;
