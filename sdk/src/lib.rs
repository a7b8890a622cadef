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
//! A plugin that counts how many users answered "yes". To make one of your
//! own, start from `guardian plugin new NAME` (see [Writing a plugin
//! crate](#writing-a-plugin-crate)), which writes a crate that builds and
//! passes its tests as written, and replace its `src/lib.rs`; then build
//! the component with one command, `cargo build --release --target
//! wasm32-wasip2` (the file is `target/wasm32-wasip2/release/<crate>.wasm`),
//! check it with `guardian plugin check` and upload it with `guardian
//! plugin upload`.
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
//! // The check suite `guardian plugin check` runs through wasm, natively:
//! use guardian_sdk::testing::{assert_plugin, CheckOptions, Native};
//! let options = CheckOptions {
//!     expected: Some(serde_json::json!(3)),
//!     ..CheckOptions::new("{}", ["true", "false", "true", "true"])
//! };
//! assert_plugin(&Native::<Yes>::new(), &options);
//! ```
//!
//! ## Writing a plugin crate
//!
//! `guardian plugin new NAME` writes a ready crate into `./NAME/`: a plugin
//! with a typed configuration that refuses unknown fields (`src/lib.rs`), its
//! native tests (`tests/plugin.rs`), example measurements, the `Cargo.lock`
//! the SDK was tested with, and this SDK's source in `guardian-sdk/` (the SDK
//! is not on crates.io; `--sdk PATH` depends on another copy instead). It
//! builds and passes its tests as written. Its `Cargo.toml` is this one, with
//! the crate's name:
//!
//! ```toml
#![doc = include_str!("../template/Cargo.toml")]
//! ```
//!
//! Two things a component cannot do without: `crate-type` must name `cdylib`
//! (without it cargo writes no `.wasm` at all), and the crate must register
//! its plugin with [`export_plugin!`] (without it the component exports
//! nothing, and servers refuse it naming the macro).
//!
//! ## Testing through wasm
//!
//! [`testing::check_plugin`] (or [`testing::assert_plugin`] in a `#[test]`)
//! runs the check suite natively, in `cargo test`. To run the same suite on
//! the component itself, through the runtime and the limits of a share
//! server, only the `guardian` binary is needed:
//!
//! ```text
//! cargo build --release --target wasm32-wasip2
//! guardian plugin check target/wasm32-wasip2/release/my_plugin.wasm \
//!     --params '{"max": 10}' --measurements measurements.jsonl
//! ```
//!
//! It loads the file as a server loads an upload (a file that is not a
//! plugin is named for what it is: a core module, an `.rlib`, a component
//! without the export) and reports each check: round trips for 2 to 5
//! servers folded in chunks of 1, 3 and every share, with and without
//! `release`; `configure`, `shard` and `release` deterministic given their
//! seeds; malformed shares and measurements refused with the plugin's own
//! errors; unknown parameters refused (a warning otherwise); 1,000 shares
//! folded in one call well within the deadline (the server-only checks:
//! file size, compile time and that fold). Robust plugins get the robust
//! checks (round trips through the verification round, determinism,
//! tampered reports rejected). The measurements file holds one
//! JSON measurement per line, as `guardian submit --file` takes them. It
//! exits non-zero when a check fails.
//!
//! ## Differential privacy
//!
//! Secret sharing hides each user's measurement from the servers; the result a
//! scientist unshards is still exact, and an exact sum or histogram can give
//! one user away (the difference of two results, or a bucket of one). A
//! differentially private plugin adds noise in [`Plugin::release`], so the
//! released result barely depends on any one user. The samplers and their
//! calibrations are in [`dp`]; `dp-sum` and `dp-histogram` are built-ins that
//! work this way. Four things decide what the guarantee is worth.
//!
//! **Every server adds its own noise.** `release` runs on each server, once
//! per batch, with that server's own seed, and adds a full draw of noise
//! calibrated to the whole privacy budget. One honest server's noise alone
//! makes the result private: the others can subtract their own noise (they
//! know their seeds) but not its. The price is accuracy: the result carries
//! one independent draw per server, so its noise variance is `servers` times
//! that of one draw (standard deviation `sqrt(servers)` times). A released
//! share is stored and never recomputed, so fetching a batch again returns the
//! same noise, never a fresh draw to average away.
//!
//! **Sensitivity is what one user can change**, in the norm the mechanism
//! needs: L1 for the discrete Laplace ([`dp::laplace_scale`]), L2 for the
//! discrete Gaussian ([`dp::gaussian_sigma`]). Bound every measurement in
//! `shard` (a count changes by 1; a sum of values in `-B..=B` by `B` per
//! element, so a vector of `L` elements by `L·B` in L1 and `sqrt(L)·B` in
//! L2; a histogram by 1 in one bucket). The bound is checked where the
//! measurement is sharded, on the client: that stops honest mistakes, but
//! only a robust plugin (validity proofs, [`export_robust_plugin!`]) stops a
//! malicious client from sharing an out-of-range value.
//!
//! **Split epsilon across everything released about the same users.** Budgets
//! add up (sequential composition): a batch that releases two values with
//! ε₁ and ε₂ is (ε₁ + ε₂)-DP, so a plugin releasing `k` values from one
//! budget ε gives each ε/k, or an uneven share by how precise each must be
//! (for the Gaussian, δs add up too). One vector counts as one value when its
//! sensitivity is taken over the whole vector, as above. The same holds
//! across endpoints fed by the same users, and across batches: a user who
//! reports into several batches (or several times into one:
//! `max_reports_per_user`) spends the budget each time. Combining released
//! batches (`guardian collect --total`) costs nothing more: it is
//! post-processing.
//!
//! **The report count is exact.** Every batch's number of reports is public:
//! the servers agree on it to seal, `unshard` receives it, `guardian
//! collect` prints it. The noise does not hide whether someone took part:
//! whoever knows who else reported learns it from the count. What the noise
//! protects is the *value* each participant reported. With the count known,
//! neighbouring batches differ by one user's value replaced by another, which
//! can move a sum element from `-B` to `B` (twice the add-or-remove
//! sensitivity) and a histogram by 1 in two buckets (L1 2, L2 `sqrt(2)`).
//! So noise calibrated to the add-or-remove sensitivity, as `dp-sum` and
//! `dp-histogram` calibrate it, protects each value with 2ε under the Laplace
//! (declare ε/2 to get ε), and under `dp-sum`'s Gaussian only as well as the
//! Gaussian for twice the sensitivity (declare twice the bound, or a smaller
//! ε). A plugin that wants ε against replacement passes the replacement
//! sensitivity to the calibration. Dividing by the exact count (a mean) is
//! post-processing and costs nothing more; a plugin never needs to add noise
//! to the count.
//!
//! A plugin that releases the mean and the variance of bounded integers:
//! two sums (of values and of squares) with half of ε each, one Laplace draw
//! per server on each, divided by the exact count.
//!
//! ```
//! use guardian_sdk::{dp, ring, Error, Info, Plugin, Rng};
//! use serde::{Deserialize, Serialize};
//!
//! /// Mean and variance of integers in `-bound..=bound`, ε-DP per batch.
//! pub struct Variance;
//!
//! #[derive(Serialize, Deserialize)]
//! #[serde(deny_unknown_fields)]
//! pub struct Config {
//!     /// Every measurement lies in `-bound..=bound`.
//!     pub bound: u32,
//!     /// The budget of one batch's release, split evenly between its two sums.
//!     pub epsilon: f64,
//! }
//!
//! impl Config {
//!     /// One sampler per released sum. Adding or removing a user moves the sum
//!     /// by at most `bound` and the sum of squares by at most `bound²`.
//!     fn noise(&self) -> Result<[dp::DiscreteLaplace; 2], Error> {
//!         let half = dp::check_epsilon(self.epsilon)? / 2.0;
//!         let bound = f64::from(self.bound);
//!         Ok([
//!             dp::DiscreteLaplace::new(dp::laplace_scale(half, bound)?)?,
//!             dp::DiscreteLaplace::new(dp::laplace_scale(half, bound * bound)?)?,
//!         ])
//!     }
//! }
//!
//! impl Plugin for Variance {
//!     type Config = Config;
//!     type Measurement = i64;
//!     type Share = Vec<u64>;
//!     type Aggregate = Vec<u64>;
//!
//!     fn info() -> Info {
//!         Info::new("variance", "0.1.0", "Mean and variance of bounded integers, differentially private.")
//!     }
//!
//!     fn configure(params: serde_json::Value) -> Result<Config, Error> {
//!         let config: Config = guardian_sdk::params(params)?;
//!         config.noise()?; // refuse a budget the samplers cannot meet now, not at release
//!         Ok(config)
//!     }
//!
//!     fn shard(config: &Config, x: i64, servers: u32, rng: &mut Rng) -> Result<Vec<Vec<u64>>, Error> {
//!         if x.unsigned_abs() > u64::from(config.bound) {
//!             return Err(Error::invalid_measurement(format!(
//!                 "{x} is outside -{0}..={0}", config.bound
//!             )));
//!         }
//!         let square = x.unsigned_abs() * x.unsigned_abs();
//!         Ok(ring::split(&[ring::from_signed(x), square], servers, rng))
//!     }
//!
//!     fn validate(_: &Config, share: &Vec<u64>, _server: u32) -> Result<(), Error> {
//!         ring::check_len(share, 2)
//!     }
//!
//!     fn init(_: &Config) -> Vec<u64> {
//!         vec![0, 0]
//!     }
//!
//!     fn accumulate(_: &Config, agg: &mut Vec<u64>, share: &Vec<u64>) -> Result<(), Error> {
//!         ring::add_assign(agg, share)
//!     }
//!
//!     /// Each server's own draw on each sum, from its own seed.
//!     fn release(config: &Config, mut agg: Vec<u64>, _count: u64, _server: u32, rng: &mut Rng) -> Result<Vec<u64>, Error> {
//!         for (sum, noise) in agg.iter_mut().zip(config.noise()?) {
//!             *sum = sum.wrapping_add(ring::from_signed(noise.sample(rng)));
//!         }
//!         Ok(agg)
//!     }
//!
//!     /// `count` is exact and public: dividing by it costs no budget.
//!     fn unshard(_: &Config, aggs: Vec<Vec<u64>>, count: u64) -> Result<serde_json::Value, Error> {
//!         let sums = ring::sum_all_signed(&aggs, 2)?;
//!         let n = count.max(1) as f64;
//!         let mean = sums[0] as f64 / n;
//!         let variance = (sums[1] as f64 / n - mean * mean).max(0.0);
//!         Ok(serde_json::json!({"count": count, "mean": mean, "variance": variance}))
//!     }
//! }
//!
//! guardian_sdk::export_plugin!(Variance);
//!
//! use guardian_sdk::testing::{Native, Backend};
//! let plugin = Native::<Variance>::new();
//! // A typo in the parameters is refused, not ignored.
//! assert!(plugin.configure(r#"{"bound": 10, "epsilon": 1, "epsilonn": 2}"#).is_err());
//! let config = plugin.configure(r#"{"bound": 10, "epsilon": 1}"#).unwrap();
//! // 2,000 users, half answering 4 and half -2: mean 1, variance 9.
//! let values: Vec<String> = (0..2000).map(|i| if i % 2 == 0 { "4" } else { "-2" }.to_string()).collect();
//! let result = guardian_sdk::testing::run(&plugin, &config, &values, 2, 7).unwrap();
//! assert_eq!(result["count"], 2000);
//! // Two servers' noise of scale 20 on the sum and 200 on the sum of squares.
//! let (mean, variance) = (result["mean"].as_f64().unwrap(), result["variance"].as_f64().unwrap());
//! assert!((mean - 1.0).abs() < 0.2, "{result}");
//! assert!((variance - 9.0).abs() < 2.0, "{result}");
//! // Outside the bound: refused where it is sharded.
//! assert!(guardian_sdk::testing::run(&plugin, &config, &["11".to_string()], 2, 7).is_err());
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

/// The README's Rust example, compiled and run by `cargo test --doc` so that
/// it cannot drift from the SDK.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

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
