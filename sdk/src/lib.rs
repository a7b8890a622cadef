//! # guardian-sdk: write Privacy Guardian aggregation plugins
//!
//! A Privacy Guardian plugin is an aggregation algorithm compiled to a
//! WebAssembly component. Users split ("shard") each measurement into one
//! additive share per server; each share server folds the shares it holds and
//! releases an aggregate share once per batch; a scientist adds the released
//! shares ("unshards") to get the result. No single server learns anything
//! about one user's measurement.
//!
//! You write one type that implements [`Plugin`] and register it with
//! [`export_plugin!`]. The SDK does the rest: decoding the host's bytes into
//! your typed configuration, measurements, shares and aggregates, caching the
//! decoded configuration between calls, and the WebAssembly glue.
//!
//! A *robust* plugin (contract `guardian:plugin@0.2.0`) also proves that
//! each measurement is valid, and the servers check the proof before
//! aggregating it: it overrides [`Plugin`]'s verification methods and is
//! registered with [`export_robust_plugin!`]. With the `prio3` feature, the
//! `prio3` module does all of that for any Prio3 validity circuit.
//!
//! ## Layout
//!
//! - [`Plugin`]: the trait you implement. Typed, with defaults for the steps
//!   most algorithms do not need (`validate`, `release`, and verification:
//!   `shard_report`, `validate_report`, `verify_init`, `combine`,
//!   `verify_finish`).
//! - `prio3` (feature `prio3`): robust plugins from Prio3 validity circuits
//!   (`prio3::Circuit`, `prio3::Prio3Plugin`).
//! - [`Codec`]: how shares and aggregates become bytes. `Vec<u64>` (the
//!   wrapping ring used by every built-in) implements it already.
//! - [`ring`]: wrapping-`u64` vector arithmetic and additive secret sharing.
//! - [`Rng`]: the ChaCha20 CSPRNG seeded by the host; the only randomness a
//!   plugin may use.
//! - [`dp`]: exact discrete Laplace and discrete Gaussian samplers for
//!   differential privacy.
//! - [`raw`]: the byte-level contract (what the WIT worlds exchange, 0.1 and
//!   0.2), used by the wasm glue and by the native test harness.
//! - [`buckets`]: bucketed (one-hot) measurements.
//! - [`vector`]: integer-vector measurements (parsing, length limits,
//!   bounds).
//! - [`testing`]: checks that run a plugin natively and, through the host's
//!   runtime, as a real wasm component.
//!
//! ## A complete plugin
//!
//! A plugin that counts how many users answered "yes". Copy it into a new
//! crate with `crate-type = ["cdylib", "rlib"]` and `guardian-sdk`, `serde`
//! and `serde_json` as dependencies, then build the component with one
//! command: `cargo build --release --target wasm32-wasip2` (the file is
//! `target/wasm32-wasip2/release/<crate>.wasm`; upload it with
//! `guardian plugin upload`).
//!
//! ```
//! use guardian_sdk::{ring, Error, Info, Plugin, Rng};
//! use serde::{Deserialize, Serialize};
//!
//! /// Counts "yes" answers.
//! pub struct Yes;
//!
//! /// No parameters; `deny_unknown_fields` turns typos into clear errors.
//! #[derive(Serialize, Deserialize)]
//! #[serde(deny_unknown_fields)]
//! pub struct Config {}
//!
//! impl Plugin for Yes {
//!     type Config = Config;
//!     type Measurement = bool;
//!     type Share = Vec<u64>;
//!     type Aggregate = Vec<u64>;
//!
//!     fn info() -> Info {
//!         Info::new("yes", "0.1.0", "Counts the users who answered yes.")
//!     }
//!
//!     fn configure(params: serde_json::Value) -> Result<Config, Error> {
//!         guardian_sdk::params(params)
//!     }
//!
//!     fn shard(_: &Config, yes: bool, servers: u32, rng: &mut Rng) -> Result<Vec<Vec<u64>>, Error> {
//!         Ok(ring::split(&[u64::from(yes)], servers, rng))
//!     }
//!
//!     fn validate(_: &Config, share: &Vec<u64>, _server: u32) -> Result<(), Error> {
//!         ring::check_len(share, 1)
//!     }
//!
//!     fn init(_: &Config) -> Vec<u64> {
//!         vec![0]
//!     }
//!
//!     fn accumulate(_: &Config, agg: &mut Vec<u64>, share: &Vec<u64>) -> Result<(), Error> {
//!         ring::add_assign(agg, share)
//!     }
//!
//!     fn unshard(_: &Config, aggs: Vec<Vec<u64>>, _count: u64) -> Result<serde_json::Value, Error> {
//!         Ok(serde_json::json!(ring::sum_all(&aggs, 1)?[0]))
//!     }
//! }
//!
//! guardian_sdk::export_plugin!(Yes);
//!
//! // The same checks the host runs through wasm, natively:
//! use guardian_sdk::testing::{Native, Backend};
//! let plugin = Native::<Yes>::new();
//! let config = plugin.configure("{}").unwrap();
//! let answers = [true, false, true, true];
//! let result = guardian_sdk::testing::run(&plugin, &config, &answers.map(|a| a.to_string()), 2, 7).unwrap();
//! assert_eq!(result, serde_json::json!(3));
//! ```
#![deny(missing_docs)]

pub mod buckets;
mod codec;
pub mod dp;
mod error;
#[doc(hidden)]
pub mod export;
#[cfg(feature = "prio3")]
pub mod prio3;
pub mod raw;
pub mod ring;
mod rng;
pub mod testing;
pub mod vector;

pub use codec::Codec;
pub use error::Error;
pub use rng::Rng;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// What a plugin tells the host and its users about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Short machine name, e.g. `sum`.
    pub name: String,
    /// The plugin's version (semver), for people.
    pub version: String,
    /// One or two sentences for people choosing an algorithm.
    pub description: String,
    /// JSON Schema of the endpoint parameters, shown to developers.
    pub params_schema: serde_json::Value,
}

impl Info {
    /// Info with an empty (accept-anything) parameter schema; add one with
    /// [`Info::with_params_schema`].
    pub fn new(name: &str, version: &str, description: &str) -> Info {
        Info {
            name: name.to_owned(),
            version: version.to_owned(),
            description: description.to_owned(),
            params_schema: serde_json::json!({"type": "object"}),
        }
    }

    /// Sets the JSON Schema of the parameters.
    pub fn with_params_schema(mut self, schema: serde_json::Value) -> Info {
        self.params_schema = schema;
        self
    }
}

/// An aggregation algorithm. Implement it on a unit struct and register it
/// with [`export_plugin!`] (or, for a robust plugin, which overrides the
/// verification methods, [`export_robust_plugin!`]).
///
/// Every method is a pure function of its arguments: the host may call them
/// on any instance, in any order across batches, and keeps all state
/// (configuration and aggregates) itself.
pub trait Plugin: 'static {
    /// The endpoint configuration, checked by [`Plugin::configure`]. Its JSON
    /// serialisation is the canonical configuration the host stores and
    /// hashes, so it must serialise deterministically (plain structs do).
    type Config: Serialize + DeserializeOwned + 'static;
    /// One user's measurement, decoded from JSON.
    type Measurement: DeserializeOwned;
    /// One server's share of one measurement.
    type Share: Codec;
    /// An aggregate share.
    type Aggregate: Codec;

    /// Name, version, description and parameter schema.
    fn info() -> Info;

    /// Checks endpoint parameters and returns the configuration. Return
    /// [`Error::invalid_params`] with a message a developer can act on.
    /// [`params`] decodes a `deny_unknown_fields` struct with such messages.
    fn configure(params: serde_json::Value) -> Result<Self::Config, Error>;

    /// What a measurement of an endpoint with `config` looks like, in words
    /// for people who write one (e.g. `a list of 3 integers`): a measurement
    /// that does not decode is refused with `expected …, got …` in these
    /// words. `None` (the default) says what was expected in JSON's terms.
    fn expected_measurement(config: &Self::Config) -> Option<String> {
        let _ = config;
        None
    }

    /// Splits a measurement into `servers` additive shares (client side).
    /// Any `servers - 1` of them must be uniformly random.
    fn shard(
        config: &Self::Config,
        measurement: Self::Measurement,
        servers: u32,
        rng: &mut Rng,
    ) -> Result<Vec<Self::Share>, Error>;

    /// Checks one share on arrival at a server. Decoding already succeeded;
    /// check what decoding cannot (lengths against the configuration).
    fn validate(
        config: &Self::Config,
        share: &Self::Share,
        server_index: u32,
    ) -> Result<(), Error> {
        let _ = (config, share, server_index);
        Ok(())
    }

    /// The empty aggregate.
    fn init(config: &Self::Config) -> Self::Aggregate;

    /// Folds one share into the aggregate.
    fn accumulate(
        config: &Self::Config,
        agg: &mut Self::Aggregate,
        share: &Self::Share,
    ) -> Result<(), Error>;

    /// Combines two aggregates; the default folds `other` in as if it were a
    /// share, which is right whenever shares and aggregates are the same
    /// kind of vector.
    fn merge(
        config: &Self::Config,
        agg: &mut Self::Aggregate,
        other: Self::Aggregate,
    ) -> Result<(), Error> {
        let share =
            Self::Share::decode(&other.encode()).map_err(|e| Error::invalid_state(e.message()))?;
        Self::accumulate(config, agg, &share)
    }

    /// Turns a sealed batch's aggregate into the released aggregate share,
    /// once per batch (add differential-privacy noise here). The default
    /// releases the aggregate unchanged.
    fn release(
        config: &Self::Config,
        agg: Self::Aggregate,
        count: u64,
        server_index: u32,
        rng: &mut Rng,
    ) -> Result<Self::Aggregate, Error> {
        let _ = (config, count, server_index, rng);
        Ok(agg)
    }

    /// Combines every server's released share (in server order) into the
    /// result (scientist side).
    fn unshard(
        config: &Self::Config,
        aggs: Vec<Self::Aggregate>,
        count: u64,
    ) -> Result<serde_json::Value, Error>;

    // Robust plugins (contract 0.2.0). The five methods below have defaults
    // that refuse, which is what a plugin that does not verify wants: it
    // leaves them alone and is exported with `export_plugin!`.

    /// Splits a measurement into a report bound to `report_id` (client side,
    /// robust plugins): the public share every server receives alike and one
    /// input share per server, in server order. Neither the public share nor
    /// any `servers - 1` input shares may reveal anything about the
    /// measurement; all randomness comes from `rng`.
    ///
    /// What a server stores at ingest is the input share; what
    /// [`Plugin::accumulate`] folds is the output share
    /// ([`Plugin::Share`]) that [`Plugin::verify_finish`] makes of it once the
    /// servers have checked the proof. Input shares, public shares and the
    /// verification messages are bytes that only the plugin decodes: decoding
    /// them usually needs the configuration, the number of servers and the
    /// server's index (a Prio3 leader's share differs from a helper's), which
    /// a context-free [`Codec`] cannot be given.
    ///
    /// A robust plugin overrides this and the four methods after it, and is
    /// exported with [`export_robust_plugin!`]; its contract-0.1
    /// [`Plugin::shard`] is never called and should refuse.
    /// The `prio3` module (feature `prio3`) implements all of it for any Prio3
    /// validity circuit. The default refuses: the plugin is not robust.
    fn shard_report(
        config: &Self::Config,
        measurement: Self::Measurement,
        servers: u32,
        report_id: &ReportId,
        rng: &mut Rng,
    ) -> Result<raw::Report, Error> {
        let _ = (config, measurement, servers, report_id, rng);
        Err(error::not_robust())
    }

    /// Checks one report as it arrives at server `server_index` (robust
    /// plugins): the public share and this server's input share. It runs on
    /// the report path, so it checks lengths, not proofs: a report that
    /// passes but proves nothing is rejected by the verification round.
    /// Refuse with [`Error::invalid_share`]. The default refuses: the plugin
    /// is not robust.
    fn validate_report(
        config: &Self::Config,
        public_share: &[u8],
        input_share: &[u8],
        server_index: u32,
    ) -> Result<(), Error> {
        let _ = (config, public_share, input_share, server_index);
        Err(error::not_robust())
    }

    /// Starts checking one report's proof on server `server_index` of
    /// `servers`, under the endpoint's verification `key` (robust plugins):
    /// [`raw::Started::Ready`] with this server's state (kept until
    /// [`Plugin::verify_finish`]) and its verifier share (sent to server 0),
    /// or [`raw::Started::Invalid`] for a report that cannot be valid (its
    /// shares do not decode), which every server then rejects. An `Err`
    /// fails the whole batch: keep it for what is wrong with every report
    /// alike (the configuration, a number of servers the plugin cannot
    /// serve), never for one user's bytes. Deterministic. The default
    /// refuses: the plugin is not robust.
    fn verify_init(
        config: &Self::Config,
        key: &VerifyKey,
        servers: u32,
        server_index: u32,
        report_id: &ReportId,
        public_share: &[u8],
        input_share: &[u8],
    ) -> Result<raw::Started, Error> {
        let _ = (
            config,
            key,
            servers,
            server_index,
            report_id,
            public_share,
            input_share,
        );
        Err(error::not_robust())
    }

    /// Decides whether one report's proof holds (robust plugins; run once per
    /// report, by server 0) from every server's verifier share, in server
    /// order, and the report's public share (the host has checked that every
    /// server holds the same one): `Ok(Ok(message))` for a valid report,
    /// where `message` goes to every server's [`Plugin::verify_finish`], or
    /// `Ok(Err(why))`, in words without secret data. Return a message only
    /// if `verify_finish` with it succeeds on every server: this is where the
    /// servers' agreement about a report is decided. An `Err` fails the whole
    /// batch, as in [`Plugin::verify_init`]. The default refuses: the plugin
    /// is not robust.
    fn combine(
        config: &Self::Config,
        public_share: &[u8],
        verifier_shares: &[&[u8]],
    ) -> Result<Result<Vec<u8>, String>, Error> {
        let _ = (config, public_share, verifier_shares);
        Err(error::not_robust())
    }

    /// Finishes checking one valid report on server `server_index` of
    /// `servers` (robust plugins): from this server's state of
    /// [`Plugin::verify_init`] and the message of [`Plugin::combine`], the
    /// output share that [`Plugin::accumulate`] folds. Fails with
    /// [`Error::invalid_state`] for a state or message that does not decode
    /// or does not match. The default refuses: the plugin is not robust.
    fn verify_finish(
        config: &Self::Config,
        servers: u32,
        server_index: u32,
        state: &[u8],
        message: &[u8],
    ) -> Result<Self::Share, Error> {
        let _ = (config, servers, server_index, state, message);
        Err(error::not_robust())
    }
}

/// A report's id (contract 0.2): 16 bytes the client draws at random, one per
/// measurement. Robust plugins bind a report's proof to it, so shares posted
/// under another report's id fail to verify.
pub type ReportId = [u8; 16];

/// An endpoint's verification key (contract 0.2): 32 random bytes that the
/// servers share and clients never see (a client that knew it could craft a
/// proof that passes).
pub type VerifyKey = [u8; 32];

/// Decodes endpoint parameters into a typed struct, turning serde's errors
/// into [`Error::invalid_params`] messages ("unknown field `lenght`, expected
/// `length`"). `null` is read as `{}` so that "no parameters" works.
pub fn params<T: DeserializeOwned>(params: serde_json::Value) -> Result<T, Error> {
    let params = if params.is_null() {
        serde_json::json!({})
    } else {
        params
    };
    serde_json::from_value(params)
        .map_err(|e| Error::invalid_params(format!("invalid parameters: {e}")))
}
