//! `dp-sum`: a differentially private vector sum. As in `sum`, each user
//! submits a vector of `length` integers, shared additively over the wrapping
//! ring Z/2^64. Unlike `sum`, every value must lie between `-bound` and
//! `bound`, and at release every server adds its own noise to each element of
//! its aggregate share, once per batch.
//!
//! ## Privacy
//!
//! What every server's noise, the budget and the public report count mean is
//! explained once, for every plugin, in the SDK's
//! [differential privacy chapter](guardian_sdk#differential-privacy). For this
//! plugin: adding or removing one user moves each element of the sum by at
//! most `bound`, the whole vector by at most `length·bound` in L1 norm and
//! `sqrt(length)·bound` in L2 norm, and every server adds one draw per
//! element, from its own release seed:
//!
//! - `"laplace"` (the default): discrete Laplace noise of scale
//!   `length·bound / epsilon` on each element; epsilon-DP, no delta.
//! - `"gaussian"`: discrete Gaussian noise with the σ that
//!   [`guardian_sdk::dp::gaussian_sigma`] gives for L2 sensitivity
//!   `sqrt(length)·bound`; (epsilon, delta)-DP. It suits long vectors: σ grows
//!   with `sqrt(length)` where the Laplace scale grows with `length`.
//!
//! The epsilon of an endpoint covers its whole vector, once per batch;
//! several endpoints or batches about the same users spend it again. Since a
//! batch's count is exact, a value replaced by another (from `-bound` to
//! `bound`) moves the sum twice as far: against that, Laplace noise gives
//! 2·epsilon (declare half the epsilon you want). The bound is checked on the
//! client, where the measurement is sharded: that stops honest mistakes, not
//! a malicious client.
//!
//! ## Parameters
//!
//! `{"length": L, "bound": B, "epsilon": e, "mechanism": "laplace" | "gaussian", "delta": d}`
//! with 1 ≤ L ≤ 100,000 (default 1), B ≥ 1 and 0 < e ≤ 100. `mechanism`
//! defaults to `"laplace"`; `delta` (0 < d < 1) is required with
//! `"gaussian"` and refused with `"laplace"`. The noise the budget calls for
//! must be within the samplers' range (Laplace scale up to 10¹², σ up to 10⁹).
//!
//! A measurement is an array of L integers between -B and B, or a bare
//! integer when L is 1.
//!
//! ## Result
//!
//! `{"sum": [s, ...], "mechanism": "laplace", "epsilon": e, "delta": null, "noise_scale": t}`.
//! `sum` holds signed integers: noise can make any element negative.
//! `mechanism`, `epsilon` and `delta` (`null` for Laplace) repeat the
//! configuration. `noise_scale` is the Laplace scale or the Gaussian σ of one
//! server's noise on one element; each element carries one independent draw
//! per server, so its noise variance is `servers · 2p/(1-p)²` with
//! `p = e^(-1/t)` for Laplace, and at most `servers · t²` for the Gaussian.
//!
//! Sums are computed modulo 2^64 and read as signed 64-bit integers, so a true
//! sum beyond ±9.2·10¹⁸ (more than 9.2·10¹⁸ / B reports) wraps.

use guardian_sdk::dp::{
    DiscreteGaussian, DiscreteLaplace, MAX_EPSILON, check_epsilon, gaussian_sigma, laplace_scale,
};
use guardian_sdk::vector::{MAX_LENGTH, Measurement, bounded_measurement_to_ring, check_length};
use guardian_sdk::{Error, Info, Plugin, Rng, ring};
use serde::{Deserialize, Serialize};

/// The `dp-sum` plugin.
pub struct DpSum;

/// The noise the servers add at release.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mechanism {
    /// Discrete Laplace, calibrated to the L1 sensitivity: pure epsilon-DP.
    #[default]
    Laplace,
    /// Discrete Gaussian, calibrated to the L2 sensitivity: (epsilon, delta)-DP.
    Gaussian,
}

/// Canonical configuration of a `dp-sum` endpoint; also the parameters a
/// developer writes, with `length` and `mechanism` optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Number of integers in each measurement.
    #[serde(default = "one")]
    pub length: u32,
    /// Each value must be between `-bound` and `bound`; how much one user can
    /// move each element of the sum, hence the noise.
    pub bound: u64,
    /// The privacy parameter each server's noise provides on its own.
    pub epsilon: f64,
    /// Which noise the servers add.
    #[serde(default)]
    pub mechanism: Mechanism,
    /// The Gaussian mechanism's delta; `None` exactly when the mechanism is
    /// Laplace, which needs none (checked by `configure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
}

fn one() -> u32 {
    1
}

impl Plugin for DpSum {
    type Config = Config;
    type Measurement = Measurement;
    type Share = Vec<u64>;
    type Aggregate = Vec<u64>;

    fn info() -> Info {
        Info::new(
            "dp-sum",
            env!("CARGO_PKG_VERSION"),
            "Element-wise sum of bounded integer vectors, with discrete Laplace (epsilon-DP) \
             or discrete Gaussian ((epsilon, delta)-DP) noise added by every server at release.",
        )
        .with_params_schema(serde_json::json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["bound", "epsilon"],
            "properties": {
                "length": {"type": "integer", "minimum": 1, "maximum": MAX_LENGTH, "default": 1},
                "bound": {
                    "type": "integer", "minimum": 1,
                    "description": "every measured value must be between -bound and bound"
                },
                "epsilon": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_EPSILON},
                "mechanism": {"enum": ["laplace", "gaussian"], "default": "laplace"},
                "delta": {
                    "type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1,
                    "description": "gaussian only; well below 1 / number of users, e.g. 1e-6"
                }
            },
            "if": {"required": ["mechanism"], "properties": {"mechanism": {"const": "gaussian"}}},
            "then": {"required": ["delta"]},
            "else": {"not": {"required": ["delta"]}}
        }))
    }

    fn configure(params: serde_json::Value) -> Result<Config, Error> {
        let config: Config = guardian_sdk::params(params)?;
        check_length(config.length, "length")?;
        if config.bound == 0 {
            return Err(Error::invalid_params(
                "bound must be at least 1, got 0 (every value must be between -bound and bound)",
            ));
        }
        check_epsilon(config.epsilon)?;
        // Refuses a delta that does not fit the mechanism, and a budget whose
        // noise the samplers cannot draw, now rather than at release.
        noise(&config)?;
        Ok(config)
    }

    fn expected_measurement(config: &Config) -> Option<String> {
        Some(guardian_sdk::vector::expected(
            config.length,
            Some(config.bound),
        ))
    }

    fn shard(
        config: &Config,
        m: Measurement,
        servers: u32,
        rng: &mut Rng,
    ) -> Result<Vec<Vec<u64>>, Error> {
        let values = bounded_measurement_to_ring(m, config.length, config.bound)?;
        Ok(ring::split(&values, servers, rng))
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

    fn release(
        config: &Config,
        mut agg: Vec<u64>,
        _count: u64,
        _server: u32,
        rng: &mut Rng,
    ) -> Result<Vec<u64>, Error> {
        let noise = noise(config).map_err(stored_config)?;
        for a in &mut agg {
            *a = a.wrapping_add(ring::from_signed(noise.sample(rng)));
        }
        Ok(agg)
    }

    fn unshard(
        config: &Config,
        aggs: Vec<Vec<u64>>,
        _count: u64,
    ) -> Result<serde_json::Value, Error> {
        let sum = ring::sum_all_signed(&aggs, config.length as usize)?;
        let noise_scale = noise_scale(config).map_err(stored_config)?;
        Ok(serde_json::json!({
            "sum": sum,
            "mechanism": config.mechanism,
            "epsilon": config.epsilon,
            "delta": config.delta,
            "noise_scale": noise_scale,
        }))
    }
}

/// One server's noise on one element.
enum Noise {
    Laplace(DiscreteLaplace),
    Gaussian(DiscreteGaussian),
}

impl Noise {
    fn sample(&self, rng: &mut Rng) -> i64 {
        match self {
            Noise::Laplace(noise) => noise.sample(rng),
            Noise::Gaussian(noise) => noise.sample(rng),
        }
    }
}

/// The sampler the configuration calls for.
fn noise(config: &Config) -> Result<Noise, Error> {
    let scale = noise_scale(config)?;
    Ok(match config.mechanism {
        Mechanism::Laplace => Noise::Laplace(DiscreteLaplace::new(scale)?),
        Mechanism::Gaussian => Noise::Gaussian(DiscreteGaussian::new(scale)?),
    })
}

/// The Laplace scale or Gaussian σ of one server's noise on one element.
///
/// The sensitivities are computed in `f64`, which may round a bound above
/// 2^53 down by a relative 2^-53 at most; the calibrations' 10^-12 safety
/// margin absorbs that, so the noise is never below what the budget needs.
fn noise_scale(config: &Config) -> Result<f64, Error> {
    let length = f64::from(config.length);
    let bound = config.bound as f64;
    match (config.mechanism, config.delta) {
        (Mechanism::Laplace, None) => Ok(laplace_scale(config.epsilon, length * bound)?),
        (Mechanism::Gaussian, Some(delta)) => Ok(gaussian_sigma(
            config.epsilon,
            delta,
            length.sqrt() * bound,
        )?),
        (Mechanism::Laplace, Some(_)) => Err(Error::invalid_params(
            "delta applies only to \"mechanism\": \"gaussian\"; remove it to use the default \
             laplace mechanism (pure epsilon-DP, no delta), or set \"mechanism\": \"gaussian\"",
        )),
        (Mechanism::Gaussian, None) => Err(Error::invalid_params(
            "\"mechanism\": \"gaussian\" needs delta, a number strictly between 0 and 1 \
             (choose it well below 1 / number of users, e.g. 1e-6)",
        )),
    }
}

/// A configuration that `configure` accepted cannot fail here; if it does, the
/// host's stored configuration is at fault, not the caller's parameters.
fn stored_config(error: Error) -> Error {
    Error::invalid_state(format!("configuration: {}", error.message()))
}

guardian_sdk::export_plugin!(DpSum);
