//! sum
