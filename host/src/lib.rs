//! Privacy Guardian share server.
