//! Privacy Guardian share server.

pub mod auth;
pub mod client;
pub mod clock;
pub mod config;
pub mod dev;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod report_id;
pub mod runtime;
pub mod server;
pub mod storage;
pub mod tls;
