//! The error a plugin returns; mirrors the WIT `error` variant.

use std::fmt;

/// Why a plugin call failed. The message reaches whoever caused the failure,
/// so it must say what is wrong and never contain secret data such as a share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Endpoint parameters refused by `configure`.
    InvalidParams(String),
    /// A measurement refused by `shard`.
    InvalidMeasurement(String),
    /// A share refused by `validate` or `accumulate`.
    InvalidShare(String),
    /// Host-held state (configuration or aggregate) that does not decode.
    InvalidState(String),
    /// A bug or unsupported request inside the plugin.
    Internal(String),
}

impl Error {
    /// Endpoint parameters are wrong.
    pub fn invalid_params(message: impl Into<String>) -> Error {
        Error::InvalidParams(message.into())
    }
    /// A measurement is wrong.
    pub fn invalid_measurement(message: impl Into<String>) -> Error {
        Error::InvalidMeasurement(message.into())
    }
    /// A share is wrong.
    pub fn invalid_share(message: impl Into<String>) -> Error {
        Error::InvalidShare(message.into())
    }
    /// Host-held state is wrong.
    pub fn invalid_state(message: impl Into<String>) -> Error {
        Error::InvalidState(message.into())
    }
    /// Something inside the plugin went wrong.
    pub fn internal(message: impl Into<String>) -> Error {
        Error::Internal(message.into())
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        match self {
            Error::InvalidParams(m)
            | Error::InvalidMeasurement(m)
            | Error::InvalidShare(m)
            | Error::InvalidState(m)
            | Error::Internal(m) => m,
        }
    }

    /// A stable machine name of the kind, as the host reports it.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidParams(_) => "invalid_params",
            Error::InvalidMeasurement(_) => "invalid_measurement",
            Error::InvalidShare(_) => "invalid_share",
            Error::InvalidState(_) => "invalid_state",
            Error::Internal(_) => "internal",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for Error {}

/// What the verification methods of a plugin that is not robust answer.
pub(crate) fn not_robust() -> Error {
    Error::internal(
        "this plugin is not robust: it implements guardian:plugin@0.1.0, which has no verification",
    )
}
