//! dp-histogram
