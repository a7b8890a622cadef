//! Plugin authors' commands, which need no server: `guardian plugin new`
//! writes a ready plugin crate ([`new_crate`]) and `guardian plugin check`
//! runs the SDK's check suite (the one the crate's own `cargo test` runs
//! natively) on a built component through the same runtime, and the same
//! limits, as a share server ([`check`]).
//!
//! - `new`: the crate template (`sdk/template/`, embedded by `build.rs` with
//!   the SDK's own source made self-contained, the workspace's `Cargo.lock`
//!   and `rust-toolchain.toml`), so that the crate builds with nothing but
//!   this binary and crates.io.
//! - `check`: loading the file, the SDK's suite, the checks only a server
//!   can make (size, compile time, the deadline of a large fold), the
//!   report, and what a file is when it is not a plugin (through
//!   [`crate::runtime::LoadError`]).

mod check;
mod new;

pub use self::check::{CheckOptions, Report, check};
pub use self::new::{Created, NewOptions, new_crate};
pub use guardian_sdk::testing::{Check, Outcome};

/// The files `build.rs` embeds for `plugin new`.
mod embedded {
    include!(concat!(env!("OUT_DIR"), "/authoring.rs"));
}

/// Why a command of this module could not run (a check that ran and failed
/// is a [`Report`] entry, not an error). Each has a stable code.
#[derive(Debug, thiserror::Error)]
pub enum AuthoringError {
    /// `plugin new`: the name cannot be a crate name.
    #[error("invalid_name: {0}")]
    InvalidName(String),
    /// `plugin new`: the folder is already there.
    #[error("already_exists: {0}")]
    AlreadyExists(String),
    /// `plugin new --sdk`: not a copy of the SDK.
    #[error("invalid_sdk: {0}")]
    InvalidSdk(String),
    /// `plugin check`: the file cannot be read.
    #[error("unreadable_file: {0}")]
    UnreadableFile(String),
    /// `plugin check`: the file is not a plugin the servers would load (the
    /// code a server answers an upload of it with).
    #[error("invalid_plugin: {0}")]
    InvalidPlugin(String),
    /// `plugin check`: `--params` is refused by the plugin or is not JSON.
    #[error("invalid_params: {0}")]
    InvalidParams(String),
    /// `plugin check`: no `--measurements`, or a file of them that cannot
    /// be used.
    #[error("invalid_measurements: {0}")]
    InvalidMeasurements(String),
    /// Writing files or starting the runtime failed.
    #[error("io_error: {0}")]
    Io(String),
}

impl AuthoringError {
    /// The stable code (the text before the colon).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidName(_) => "invalid_name",
            Self::AlreadyExists(_) => "already_exists",
            Self::InvalidSdk(_) => "invalid_sdk",
            Self::UnreadableFile(_) => "unreadable_file",
            Self::InvalidPlugin(_) => "invalid_plugin",
            Self::InvalidParams(_) => "invalid_params",
            Self::InvalidMeasurements(_) => "invalid_measurements",
            Self::Io(_) => "io_error",
        }
    }
}
