//! `prio3-sum`: the sum of one bounded integer per user, robustly: each
//! report carries a Prio3 proof that its measurement is between 0 and the
//! endpoint's `max_measurement`, which the servers check before adding it.
//!
//! Parameters: `{"max_measurement": M}` (1 ≤ M < 2^64 - 2^32 + 1, the
//! field's modulus). A measurement is an integer from 0 to M; the result is
//! the sum, an integer (modulo the field's modulus, which only a batch of
//! more than 2^64 / M reports reaches).

use guardian_sdk::prio3::prio::field::{Field64, FieldElementWithInteger};
use guardian_sdk::prio3::prio::flp::types;
use guardian_sdk::prio3::{Circuit, Prio3Plugin};
use guardian_sdk::{Error, Info};
use serde::{Deserialize, Serialize};

/// The circuit of `prio3-sum`: prio's `Sum`.
pub struct Sum;

/// The `prio3-sum` plugin.
pub type Prio3Sum = Prio3Plugin<Sum>;

/// Canonical configuration of a `prio3-sum` endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The largest measurement a user may send.
    pub max_measurement: u64,
}

impl Circuit for Sum {
    type Config = Config;
    type Measurement = u64;
    type Type = types::Sum<Field64>;
    /// Prio3Sum's, so that prio's clients interoperate.
    const ALGORITHM_ID: u32 = 0x0000_0002;

    fn info() -> Info {
        Info::new(
            "prio3-sum",
            env!("CARGO_PKG_VERSION"),
            "Sum of one integer per user; each report proves it is between 0 and max_measurement (Prio3).",
        )
        .with_params_schema(serde_json::json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["max_measurement"],
            "properties": {
                "max_measurement": {"type": "integer", "minimum": 1, "maximum": Field64::modulus() - 1}
            }
        }))
    }

    fn configure(params: serde_json::Value) -> Result<Config, Error> {
        let config: Config = guardian_sdk::params(params)?;
        if config.max_measurement == 0 || config.max_measurement >= Field64::modulus() {
            return Err(Error::invalid_params(format!(
                "max_measurement must be between 1 and {}, got {}",
                Field64::modulus() - 1,
                config.max_measurement
            )));
        }
        Ok(config)
    }

    fn expected_measurement(config: &Config) -> Option<String> {
        Some(format!("an integer from 0 to {}", config.max_measurement))
    }

    fn circuit(config: &Config) -> Result<types::Sum<Field64>, Error> {
        types::Sum::new(config.max_measurement)
            .map_err(|e| Error::invalid_params(format!("max_measurement: {e}")))
    }

    fn measurement(config: &Config, m: u64) -> Result<u64, Error> {
        if m > config.max_measurement {
            return Err(Error::invalid_measurement(format!(
                "{m} is out of range: at most {} (the endpoint's max_measurement)",
                config.max_measurement
            )));
        }
        Ok(m)
    }

    fn result(_: &Config, sum: u64, _: u64) -> Result<serde_json::Value, Error> {
        Ok(serde_json::json!(sum))
    }
}

guardian_sdk::export_robust_plugin!(Prio3Sum);
