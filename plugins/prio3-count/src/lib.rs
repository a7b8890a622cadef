//! `prio3-count`: counts the users whose measurement is true, robustly: each
//! report carries a Prio3 proof that its measurement is 0 or 1, which the
//! servers check before counting it. No parameters. A measurement is
//! `true`/`false` (or `1`/`0`); the result is the count, an integer.

use guardian_sdk::prio3::prio::field::Field64;
use guardian_sdk::prio3::prio::flp::types;
use guardian_sdk::prio3::{Circuit, Prio3Plugin};
use guardian_sdk::{Error, Info};
use serde::{Deserialize, Serialize};

/// The circuit of `prio3-count`: prio's `Count`.
pub struct Count;

/// The `prio3-count` plugin.
pub type Prio3Count = Prio3Plugin<Count>;

/// `prio3-count` takes no parameters; unknown ones are refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// A yes/no measurement.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Measurement {
    /// `true` or `false`.
    Bool(bool),
    /// `1` or `0`.
    Int(u64),
}

impl Circuit for Count {
    type Config = Config;
    type Measurement = Measurement;
    type Type = types::Count<Field64>;
    /// Prio3Count's, so that prio's clients interoperate.
    const ALGORITHM_ID: u32 = 0x0000_0001;

    fn info() -> Info {
        Info::new(
            "prio3-count",
            env!("CARGO_PKG_VERSION"),
            "Counts the users whose measurement is true; each report proves it is 0 or 1 (Prio3).",
        )
        .with_params_schema(serde_json::json!({"type": "object", "additionalProperties": false}))
    }

    fn configure(params: serde_json::Value) -> Result<Config, Error> {
        guardian_sdk::params(params)
    }

    fn expected_measurement(_: &Config) -> Option<String> {
        Some("true, false, 1 or 0".to_owned())
    }

    fn circuit(_: &Config) -> Result<types::Count<Field64>, Error> {
        Ok(types::Count::new())
    }

    fn measurement(_: &Config, m: Measurement) -> Result<bool, Error> {
        match m {
            Measurement::Bool(b) => Ok(b),
            Measurement::Int(x @ (0 | 1)) => Ok(x == 1),
            Measurement::Int(x) => Err(Error::invalid_measurement(format!(
                "expected true, false, 0 or 1, got {x}"
            ))),
        }
    }

    fn result(_: &Config, count: u64, _: u64) -> Result<serde_json::Value, Error> {
        Ok(serde_json::json!(count))
    }
}

guardian_sdk::export_robust_plugin!(Prio3Count);
