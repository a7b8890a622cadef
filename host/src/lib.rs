//! Privacy Guardian share server.

pub mod auth;
pub mod client;
pub mod config;
pub mod dev;
pub mod runtime;
pub mod server;
pub mod storage;
