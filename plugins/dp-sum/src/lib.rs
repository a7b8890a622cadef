//! dp-sum
