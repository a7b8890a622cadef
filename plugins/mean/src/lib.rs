//! mean
