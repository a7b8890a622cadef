//! Privacy Guardian share server.

pub mod storage;
