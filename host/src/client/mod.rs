//! The command-line clients of every party: what `guardian plugin`, `endpoint`,
//! `submit` and `collect` do, over the public HTTP API of the share servers.
//!
//! - `http`: [`Cluster`], the servers in index order, retries, and
//!   [`ServerError`], which always names the server that failed.
//! - `endpoint`: opening an endpoint on the client side; every server must agree
//!   on it, and its plugin (the very component the servers run, checked against
//!   its digest) is loaded and configured locally.
//! - [`submit`]: sharding measurements locally and posting share i to server i.
//! - [`collect`]: sealing a batch, fetching every server's released share and
//!   combining them with the plugin's `unshard`.
//! - [`admin`]: plugin uploads and endpoint creation on every server, listings.
//! - [`authoring`]: `plugin new` and `plugin check`, for plugin authors; no
//!   server involved.
//! - [`dashboard`]: `guardian dashboard`, a local web page that charts what
//!   [`collect`] combines.
//!
//! - [`terminal`]: what is printed of the servers' words never drives the
//!   terminal.
//!
//! Functions return values with a `render` for people; printing is left to
//! `main` (through [`terminal::clean`]), so output formats are unit-tested here.

pub mod admin;
pub mod authoring;
pub mod collect;
pub mod dashboard;
mod endpoint;
mod http;
pub mod submit;
mod table;
pub mod terminal;

pub use self::endpoint::{EndpointInfo, ReportCounts};
pub use self::http::{Cluster, ErrorKind, RetryPolicy, ServerError};
