//! Server configuration: everything a share server is told at start.
//!
//! [`Config`] is plain data, one struct per TOML section (`[server]`, `[limits]`,
//! `[endpoints]`, `[plugins]`, `[log]`, `[cors]`, `[auth]`, `[storage]`). Every key has a default,
//! so an empty configuration describes server 0 of a local pair.
//! `guardian.example.toml` at the root of the repository lists every key with its
//! default and its environment name; a unit test parses it, so it stays the reference.
//!
//! [`load`] builds the effective configuration from four sources, each overriding the
//! one before, key by key:
//!
//! 1. the built-in defaults ([`Config::default`]);
//! 2. the TOML file given with `--config FILE`, if any;
//! 3. the `.env` file in the working directory, if any;
//! 4. the process environment.
//!
//! The environment names are `GUARDIAN_<SECTION>_<KEY>` (`server.index` is
//! `GUARDIAN_SERVER_INDEX`). The old deployment's variables keep working: `SERVER_ID`
//! (`R_SERVER` is index 0, `X_R_SERVER` index 1), `NUM_CLIENTS_TO_SUM`,
//! `LOG_FILE_DIR`, `LOG_FILE_NAME`, `OAUTH2_PROVIDER_DOMAIN` and
//! `OAUTH2_PROVIDER_AUDIENCE`. Within one source a new name wins over an old one.
//!
//! The environment reaches [`load`] as an [`Environment`] value, never read behind the
//! caller's back: `main` captures it once with [`Environment::capture`], tests build one
//! from pairs. Every loaded value remembers its [`Origin`], so a configuration error
//! says which key is wrong and where it was set, and [`Loaded::render`] can log the
//! effective configuration (secrets redacted) with the origin of each value.
//!
//! Layout: this file holds the data types; `sources` reads the file and the
//! environment; `validate` checks the result.

#![warn(missing_docs)]

mod sources;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::sources::{Environment, Origin, Origins};
pub use self::validate::{ConfigError, Problem};
use crate::storage::StorageLocation;

/// The whole configuration of one share server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Who this server is among the share servers and where it listens.
    pub server: ServerConfig,
    /// Resource limits that keep bad input from hurting the server.
    pub limits: LimitsConfig,
    /// Defaults for endpoints created without an explicit value, and their bounds.
    pub endpoints: EndpointsConfig,
    /// Which uploaded plugins this server's operator approved.
    pub plugins: PluginsConfig,
    /// Where and how the server logs.
    pub log: LogConfig,
    /// Which browser origins may call the API.
    pub cors: CorsConfig,
    /// How tokens are verified and mapped to roles.
    pub auth: AuthConfig,
    /// Where the server's state is kept.
    pub storage: StorageConfig,
}

/// `[server]`: this server's place among the share servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// This server's index, 0-based: it receives share `index` of every report, and
    /// server 0 coordinates batch sealing. Default 0.
    pub index: u32,
    /// How many share servers there are (at least 2). Default 2.
    pub servers: u32,
    /// Base URL of every share server, this one included, in index order; the peer
    /// routes (`/peer/v1/…`) are called under these. A list rather than a map because
    /// the order is the meaning: entry i is server i, and a gap cannot be written.
    /// Default: the local pair `http://127.0.0.1:8000`, `http://127.0.0.1:8001`.
    pub peers: Vec<String>,
    /// Socket address to listen on. Default `127.0.0.1:{8000 + index}`, so that a
    /// local pair needs nothing but the index; see [`ServerConfig::listen_addr`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Directory for this server's files (compiled plugin cache, database).
    /// Default `guardian-data/server-{index}`, so that a local pair does not share it;
    /// see [`ServerConfig::data_dir`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// The URL under which clients reach this server, when it differs from its entry
    /// in `peers` (e.g. peers talk over a private network). Default: `peers[index]`;
    /// see [`ServerConfig::public_url`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Threads serving requests (the async runtime's workers). 0, the default: one
    /// per processor; see [`ServerConfig::worker_threads`].
    pub worker_threads: usize,
    /// This server's private peer key (Ed25519, created at first start). Default
    /// `{data_dir}/peer-key`; see [`ServerConfig::key_file`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Public peer key of every share server, this one included, in index order
    /// (base64, as `guardian peer-key` prints it): peer messages are signed by their
    /// sender and checked against these. Empty, the default: peer calls are refused
    /// and nothing can be sealed.
    pub peer_keys: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            index: 0,
            servers: 2,
            peers: vec![
                "http://127.0.0.1:8000".to_owned(),
                "http://127.0.0.1:8001".to_owned(),
            ],
            listen: None,
            data_dir: None,
            public_url: None,
            worker_threads: 0,
            key_file: None,
            peer_keys: Vec::new(),
        }
    }
}

/// First port of the derived default listen addresses: server i listens on
/// `127.0.0.1:{DEFAULT_BASE_PORT + i}`.
pub const DEFAULT_BASE_PORT: u16 = 8000;

impl ServerConfig {
    /// The address to listen on: `listen`, or `127.0.0.1:{8000 + index}`.
    ///
    /// Validation guarantees that the derived port fits; should it not (an
    /// unvalidated config), the base port is used.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.unwrap_or_else(|| {
            let port = u16::try_from(self.index)
                .ok()
                .and_then(|i| DEFAULT_BASE_PORT.checked_add(i))
                .unwrap_or(DEFAULT_BASE_PORT);
            SocketAddr::from((Ipv4Addr::LOCALHOST, port))
        })
    }

    /// This server's directory: `data_dir`, or `guardian-data/server-{index}`.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| Path::new("guardian-data").join(format!("server-{}", self.index)))
    }

    /// How many threads serve requests. Besides them the storage writer thread,
    /// which every report waits for, is busy under load; fewer request threads
    /// than processors leave it one of its own (on two processors 2 threads
    /// verify twice as many fresh RS256 tokens as 1; reports without
    /// authentication go as fast with either since the report id index).
    pub fn worker_threads(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The URL clients use for this server: `public_url`, or this server's peer URL
    /// (`None` only for an unvalidated config whose index is outside `peers`).
    pub fn public_url(&self) -> Option<&str> {
        self.public_url
            .as_deref()
            .or_else(|| self.peers.get(self.index as usize).map(String::as_str))
    }

    /// This server's private peer key: `key_file`, or `{data_dir}/peer-key`.
    pub fn key_file(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.data_dir().join("peer-key"))
    }

    /// Whether this server coordinates batch sealing (server 0).
    pub fn is_coordinator(&self) -> bool {
        self.index == 0
    }
}

/// `[limits]`: caps on request and plugin resources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest JSON request body accepted (413 beyond). Default 1 MiB.
    pub max_body_bytes: usize,
    /// Largest plugin upload (`POST /api/v1/plugins`, 413 beyond). Default 32 MiB.
    pub max_plugin_bytes: usize,
    /// Time after which a request is abandoned. Default 30 000 ms.
    pub request_timeout_ms: u64,
    /// Wall-clock budget of one plugin call. Default 1 000 ms.
    pub plugin_deadline_ms: u64,
    /// Cap on the linear memory of one plugin instance. Default 128 MiB.
    pub plugin_memory_bytes: usize,
    /// Cap on what one plugin call may return. Default 16 MiB.
    pub plugin_output_bytes: usize,
    /// Plugin calls running at once; more wait their turn. Plugin calls are CPU-bound,
    /// so the default is the number of CPUs; see [`LimitsConfig::plugin_concurrency`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin_concurrency: Option<usize>,
    /// Plugin uploads compiled at once; more wait their turn (an upload of a
    /// component being compiled waits for that compilation). Default 1.
    pub plugin_compile_concurrency: usize,
    /// Longest a plugin upload may take to compile: a component that takes longer
    /// is refused (422 `plugin_too_complex`) and nothing of it is kept. Default
    /// 20 000 ms.
    pub plugin_compile_timeout_ms: u64,
    /// Most endpoints this server holds (409 `too_many_endpoints` beyond).
    /// Default 1000.
    pub max_endpoints: usize,
    /// Largest `params` of an endpoint, as JSON (413 `params_too_large` beyond).
    /// Default 64 KiB.
    pub max_params_bytes: usize,
    /// Most reports in one bulk upload (`POST .../reports/bulk`); a larger one is
    /// refused whole (413 `too_many_reports`). Default 1000.
    pub max_bulk_reports: usize,
    /// Largest body of a bulk upload, in bytes (413 `body_too_large` beyond); every
    /// other route keeps `max_body_bytes`. Default 16 MiB.
    pub max_bulk_body_bytes: usize,
    /// Largest request head (request line and headers) accepted, in bytes; hyper
    /// answers 431 beyond. Must leave room for the longest token
    /// (`auth.max_token_bytes`). Default 16 KiB.
    pub max_header_bytes: usize,
    /// Time a client has to send a complete request head, in milliseconds, counted
    /// from when the server starts waiting for it (so it also closes keep-alive
    /// connections idle that long); cuts off clients that send headers byte by byte
    /// to hold connections open (slowloris). Default 10 000 ms.
    pub header_read_timeout_ms: u64,
    /// Reports one user (token `sub`) may post per second, on average; 0 turns the
    /// limit off. No limit when authentication is off. Default 1000.
    pub reports_per_second_per_user: u32,
    /// Reports one user may post at once before the per-second rate applies; 0 means
    /// one second's worth. Default 2000.
    pub reports_burst_per_user: u32,
    /// Reports one client IP address may post per second, on average; 0 turns the
    /// limit off. Default 0: behind a reverse proxy every client has the proxy's
    /// address (see `trust_forwarded_for`).
    pub reports_per_second_per_ip: u32,
    /// Reports one client IP address may post at once before the per-second rate
    /// applies; 0 means one second's worth. Default 0.
    pub reports_burst_per_ip: u32,
    /// Take the client's address from the last `X-Forwarded-For` entry (the one the
    /// reverse proxy in front of the server added) instead of the TCP peer. Only
    /// for a server that nothing but the proxy can reach: otherwise clients choose
    /// their own address. Default false.
    pub trust_forwarded_for: bool,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 1 << 20,
            max_plugin_bytes: 32 << 20,
            request_timeout_ms: 30_000,
            plugin_deadline_ms: 1_000,
            plugin_memory_bytes: 128 << 20,
            plugin_output_bytes: 16 << 20,
            plugin_concurrency: None,
            plugin_compile_concurrency: 1,
            plugin_compile_timeout_ms: 20_000,
            max_endpoints: 1000,
            max_params_bytes: 64 << 10,
            max_bulk_reports: 1000,
            max_bulk_body_bytes: 16 << 20,
            max_header_bytes: 16 << 10,
            header_read_timeout_ms: 10_000,
            reports_per_second_per_user: 1000,
            reports_burst_per_user: 2000,
            reports_per_second_per_ip: 0,
            reports_burst_per_ip: 0,
            trust_forwarded_for: false,
        }
    }
}

impl LimitsConfig {
    /// `request_timeout_ms` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// `plugin_deadline_ms` as a duration.
    pub fn plugin_deadline(&self) -> Duration {
        Duration::from_millis(self.plugin_deadline_ms)
    }

    /// `plugin_compile_timeout_ms` as a duration.
    pub fn plugin_compile_timeout(&self) -> Duration {
        Duration::from_millis(self.plugin_compile_timeout_ms)
    }

    /// `header_read_timeout_ms` as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// Plugin calls allowed at once: `plugin_concurrency`, or the number of CPUs.
    pub fn plugin_concurrency(&self) -> usize {
        self.plugin_concurrency.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        })
    }
}

/// `[endpoints]`: defaults for new endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointsConfig {
    /// Fewest reports a batch may hold when an endpoint is created without
    /// `min_batch` (legacy `NUM_CLIENTS_TO_SUM`). At least 2: a batch of one report
    /// would release that user's value. At least `min_batch_floor`. Default 10.
    pub default_min_batch: u64,
    /// The smallest `min_batch` this server accepts for any endpoint, whoever creates
    /// it: the operator's own bound on how few users a released batch may hold, since
    /// a developer token alone must not be able to set up batches of one report
    /// (which release that user's value). At least 2. Default 2.
    pub min_batch_floor: u64,
    /// Most reports one seal takes (the oldest first; the rest wait for the next
    /// seal). Bounds the memory and time of a seal and the size of peer messages.
    /// Default 2,000,000.
    pub max_batch: u64,
    /// The report window, in seconds: a report whose id (see [`crate::report_id`])
    /// was made longer ago is refused (`report_too_old`), and every report older
    /// than that, batched or not (reports that only some servers received can never
    /// be sealed), is deleted with its id: a replay of it is refused by its age.
    /// Released batches stay. Default 604800 (7 days).
    pub report_retention_secs: u64,
    /// Seconds a report id's time may be ahead of the server's clock (clients'
    /// clocks drift); later ids are refused (`report_from_future`). Default 300.
    pub report_max_future_skew_secs: u64,
    /// Milliseconds a peer call of a seal may take before the peer counts as
    /// unavailable. A seal request also stops waiting at 90 % of
    /// `limits.request_timeout_ms`, whichever comes first, so its answer is never a
    /// 408. Default 20000.
    pub peer_timeout_ms: u64,
    /// With authentication on, refuse to seal a batch whose reports come from fewer
    /// than `min_batch` distinct users (each server counts on its own, by a keyed
    /// hash of the token's `sub`), so that no server can isolate one user's report
    /// among reports of its own. Default true; `guardian dev` turns it off.
    pub distinct_users: bool,
}

impl Default for EndpointsConfig {
    fn default() -> Self {
        EndpointsConfig {
            default_min_batch: 10,
            min_batch_floor: 2,
            max_batch: 2_000_000,
            report_retention_secs: 7 * 24 * 3600,
            report_max_future_skew_secs: 300,
            peer_timeout_ms: 20_000,
            distinct_users: true,
        }
    }
}

impl EndpointsConfig {
    /// See [`EndpointsConfig::report_retention_secs`].
    pub fn report_retention(&self) -> Duration {
        Duration::from_secs(self.report_retention_secs)
    }

    /// Which report ids the server takes: `report_retention_secs` old at most,
    /// `report_max_future_skew_secs` ahead at most.
    pub fn report_window(&self) -> crate::report_id::ReportWindow {
        crate::report_id::ReportWindow {
            max_age: self.report_retention(),
            max_future_skew: Duration::from_secs(self.report_max_future_skew_secs),
        }
    }

    /// See [`EndpointsConfig::peer_timeout_ms`].
    pub fn peer_timeout(&self) -> Duration {
        Duration::from_millis(self.peer_timeout_ms)
    }

    /// `max_batch` as a length (saturating on 32-bit targets).
    pub fn max_batch_len(&self) -> usize {
        usize::try_from(self.max_batch).unwrap_or(usize::MAX)
    }
}

/// `[plugins]`: which uploaded plugins may run on this server.
///
/// A plugin's `shard` decides what each server sees: one that puts the whole
/// measurement in one share makes clients post plaintext. So which plugins may
/// collect reports is every operator's decision, not whoever holds a developer
/// token: an uploaded plugin is stored and listed, but endpoints are created on
/// it, and reports accepted for them, only once its digest is listed here. The
/// built-in plugins are always approved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// SHA-256 digests (64 hex digits) of the uploaded plugins this operator
    /// approved, after reviewing their code. Removing one and restarting revokes
    /// it: its endpoints stop taking reports (stored ones can still be sealed).
    /// Default empty: built-ins only.
    pub approved: Vec<String>,
}

impl PluginsConfig {
    /// The approved digests as bytes. Validation guarantees that every entry is 64
    /// hex digits; an entry that is not (an unvalidated config) approves nothing.
    pub fn approved_digests(&self) -> Vec<[u8; 32]> {
        self.approved
            .iter()
            .filter_map(|text| {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(text, &mut digest).ok()?;
                Some(digest)
            })
            .collect()
    }
}

/// `[log]`: structured logging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A level (`error`, `warn`, `info`, `debug`, `trace`) or a `tracing` filter such
    /// as `info,guardian=debug`. Default `info`.
    pub level: String,
    /// Line format. Default `text`.
    pub format: LogFormat,
    /// Directory of the log file (legacy `LOG_FILE_DIR`). When unset, logs go to
    /// standard error. Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_dir: Option<PathBuf>,
    /// Name of the log file in `file_dir` (legacy `LOG_FILE_NAME`); a plain file name.
    /// Default `guardian.log`.
    pub file_name: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
            file_dir: None,
            file_name: "guardian.log".to_owned(),
        }
    }
}

impl LogConfig {
    /// The log file, when logging to a file.
    pub fn file_path(&self) -> Option<PathBuf> {
        self.file_dir.as_ref().map(|dir| dir.join(&self.file_name))
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("expected `text` or `json`, got {other:?}")),
        }
    }
}

/// `[cors]`: cross-origin access for browser clients.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins (`scheme://host[:port]`) allowed to call the API from a browser, or
    /// `["*"]` for any. Default empty: no cross-origin access.
    pub allowed_origins: Vec<String>,
}

/// `[auth]`: token verification and roles (DESIGN.md section 7).
///
/// Where the verification keys come from, in order: the development issuer when
/// `dev_issuer` is on; else `jwks_file`; else `jwks_url`; else OIDC discovery from
/// `issuer` (see [`AuthConfig::key_source`]). With none of them the server accepts no
/// token at all: every authenticated route answers 401.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Turns token checks off for the public API: every request then has every role.
    /// Only for benchmarks and tests; the peer routes still need the peer credential.
    /// Default false.
    pub disabled: bool,
    /// The token issuer, compared exactly with `iss` (a trailing slash matters). An
    /// `https` URL (`http` only on loopback). Legacy: `OAUTH2_PROVIDER_DOMAIN` gives
    /// `https://{domain}/`. Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Accepted `aud` values; a token must carry at least one. Required with an issuer.
    /// Legacy: `OAUTH2_PROVIDER_AUDIENCE`. Default empty.
    pub audiences: Vec<String>,
    /// Where to fetch the issuer's JWKS instead of OIDC discovery. Legacy:
    /// `OAUTH2_PROVIDER_DOMAIN` gives `https://{domain}/.well-known/jwks.json`.
    /// Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// A local JWKS (or PEM public key) file instead of fetching keys. Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// A PEM bundle of certificate authorities trusted on top of the compiled-in web
    /// roots and the system's store (`SSL_CERT_FILE`), for an issuer (or peers)
    /// behind a private CA. Read at start: unreadable or without a certificate, the
    /// server does not start. Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Signature algorithms accepted; asymmetric only (`none` and `HS*` are refused
    /// when the configuration is read). Default `RS256`, `PS256`, `ES256`, `EdDSA`.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds (at most 300). Default 60.
    pub leeway_secs: u64,
    /// Longest token accepted, in bytes; longer ones are refused before any
    /// cryptography. Default 8 KiB.
    pub max_token_bytes: usize,
    /// How long fetched keys are trusted before they are fetched again, in seconds.
    /// Default 600.
    pub jwks_ttl_secs: u64,
    /// Least time between two fetches caused by an unknown `kid`, in seconds, so that
    /// a flood of made-up key ids cannot cause a fetch storm. Default 30.
    pub jwks_refetch_cooldown_secs: u64,
    /// Where roles are read from in a token; the roles of all sources are united.
    /// Default: the claim `roles`, an array of app role names.
    pub role_sources: Vec<RoleSource>,
    /// Trust the built-in development issuer (local key pair, `guardian token`)
    /// instead of a real provider. Never on unless asked for. Default false.
    pub dev_issuer: bool,
    /// Directory of the development issuer's key pair and JWKS, shared by the servers
    /// of a local deployment. Used only with `dev_issuer`. Default
    /// `guardian-data/dev-issuer`.
    pub dev_issuer_dir: PathBuf,
    /// An optional transport credential share servers present to each other on
    /// `/peer/v1/…`: one shared random secret, at least 32 characters, accepted
    /// nowhere else. It does not tell which server calls (the signatures under
    /// `server.peer_keys` do); when set, peer requests without it are refused before
    /// their bodies are read. Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_token: Option<Secret>,
    /// A file holding the peer credential, instead of `peer_token`. Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_token_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            disabled: false,
            issuer: None,
            audiences: Vec::new(),
            jwks_url: None,
            jwks_file: None,
            ca_file: None,
            algorithms: vec![
                Algorithm::Rs256,
                Algorithm::Ps256,
                Algorithm::Es256,
                Algorithm::EdDsa,
            ],
            leeway_secs: 60,
            max_token_bytes: 8 << 10,
            jwks_ttl_secs: 600,
            jwks_refetch_cooldown_secs: 30,
            role_sources: vec![RoleSource {
                claim: vec!["roles".to_owned()],
                format: ClaimFormat::Array,
                roles: identity_roles(),
            }],
            dev_issuer: false,
            dev_issuer_dir: Path::new("guardian-data").join("dev-issuer"),
            peer_token: None,
            peer_token_file: None,
        }
    }
}

/// Where an [`AuthConfig`] takes its verification keys from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource<'a> {
    /// The development issuer's JWKS in this directory.
    DevIssuer(&'a Path),
    /// A local JWKS or PEM file.
    File(&'a Path),
    /// A JWKS URL.
    Url(&'a str),
    /// OIDC discovery (`{issuer}/.well-known/openid-configuration`).
    Discovery(&'a str),
}

impl AuthConfig {
    /// Where verification keys come from; `None` when no token can be verified.
    pub fn key_source(&self) -> Option<KeySource<'_>> {
        if self.dev_issuer {
            Some(KeySource::DevIssuer(&self.dev_issuer_dir))
        } else if let Some(file) = &self.jwks_file {
            Some(KeySource::File(file))
        } else if let Some(url) = &self.jwks_url {
            Some(KeySource::Url(url))
        } else {
            self.issuer.as_deref().map(KeySource::Discovery)
        }
    }

    /// `leeway_secs` as a duration.
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.leeway_secs)
    }

    /// `jwks_ttl_secs` as a duration.
    pub fn jwks_ttl(&self) -> Duration {
        Duration::from_secs(self.jwks_ttl_secs)
    }

    /// `jwks_refetch_cooldown_secs` as a duration.
    pub fn jwks_refetch_cooldown(&self) -> Duration {
        Duration::from_secs(self.jwks_refetch_cooldown_secs)
    }
}

/// One place in a token where roles are found.
///
/// Presets (see `guardian.example.toml`): Auth0 `claim = ["permissions"]`; Keycloak
/// `["realm_access", "roles"]`; Entra ID `["roles"]`; Cognito `["cognito:groups"]`;
/// Okta and others `["scope"]` with `format = "space_delimited"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSource {
    /// Path to the claim, one object key per segment, so that keys containing dots or
    /// slashes (`https://example.com/roles`) need no escaping.
    pub claim: Vec<String>,
    /// How the claim holds its values. Default `array`.
    #[serde(default)]
    pub format: ClaimFormat,
    /// Claim value → app role. Values not listed are ignored (deny by default).
    /// Default: `user`, `developer`, `scientist` and `admin` map to themselves.
    #[serde(default = "identity_roles")]
    pub roles: BTreeMap<String, Role>,
}

/// The map from each app role's name to itself.
fn identity_roles() -> BTreeMap<String, Role> {
    Role::ALL
        .iter()
        .map(|role| (role.as_str().to_owned(), *role))
        .collect()
}

/// How a role claim holds its values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimFormat {
    /// A JSON array of strings (`permissions`, `roles`, `cognito:groups`).
    #[default]
    Array,
    /// One string of space-separated values (`scope`).
    SpaceDelimited,
    /// One string, one value.
    String,
    /// An object whose keys are the values (e.g. Zitadel's project roles).
    ObjectKeys,
}

/// An application role. `Admin` implies the others (applied by the auth layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Posts reports.
    User,
    /// Uploads plugins and creates endpoints.
    Developer,
    /// Seals batches and collects results.
    Scientist,
    /// Everything, plus destructive operations.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 4] = [Role::User, Role::Developer, Role::Scientist, Role::Admin];

    /// The role's name in configuration, tokens and API answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Developer => "developer",
            Role::Scientist => "scientist",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A JWT signature algorithm the server may accept: asymmetric ones only.
///
/// There is deliberately no variant for `none` or `HS*`: parsing refuses them, so a
/// configuration that would accept unsigned tokens or shared-secret signatures (which
/// anyone holding the public key could forge) cannot be represented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// ECDSA on P-384 with SHA-384.
    Es384,
    /// Ed25519.
    EdDsa,
}

impl Algorithm {
    /// Every accepted algorithm.
    pub const ALL: [Algorithm; 9] = [
        Algorithm::Rs256,
        Algorithm::Rs384,
        Algorithm::Rs512,
        Algorithm::Ps256,
        Algorithm::Ps384,
        Algorithm::Ps512,
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::EdDsa,
    ];

    /// The `alg` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Rs384 => "RS384",
            Algorithm::Rs512 => "RS512",
            Algorithm::Ps256 => "PS256",
            Algorithm::Ps384 => "PS384",
            Algorithm::Ps512 => "PS512",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
            Algorithm::EdDsa => "EdDSA",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(alg) = Algorithm::ALL.into_iter().find(|a| a.as_str() == s) {
            return Ok(alg);
        }
        let allowed = Algorithm::ALL.map(Algorithm::as_str).join(", ");
        let upper = s.to_ascii_uppercase();
        Err(if upper == "NONE" {
            format!("{s:?} is not allowed: unsigned tokens are never accepted")
        } else if upper.starts_with("HS") {
            format!(
                "{s} is not allowed (asymmetric only: a shared-secret algorithm lets \
                 whoever can verify a token also forge one); use one of {allowed}"
            )
        } else {
            format!("unknown algorithm {s:?}; use one of {allowed}")
        })
    }
}

impl TryFrom<String> for Algorithm {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Algorithm> for &'static str {
    fn from(alg: Algorithm) -> Self {
        alg.as_str()
    }
}

/// A secret string: never printed by `Debug` and serialized as `"<redacted>"`, so that
/// logging a configuration cannot leak it. [`Secret::expose`] gives the value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

/// What a [`Secret`] looks like when printed or serialized.
pub const REDACTED: &str = "<redacted>";

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// `[storage]`: where the server keeps its state: an embedded SQLite file (the
/// default), or a PostgreSQL database shared by replicas of this server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// A PostgreSQL database (`postgres://user:password@host:port/db?sslmode=require`):
    /// every replica of this share server (same index, same keys) names the same one.
    /// Unset, the default: the SQLite file at `path`. See [`Config::storage_location`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<DatabaseUrl>,
    /// The database file when `url` is unset. Default
    /// `{server.data_dir}/guardian.sqlite`; see [`Config::storage_path`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Read-only connections, which is also how many reads run at once (SQLite); with
    /// `url`, the connection pool holds this many plus 4. Default 4.
    pub read_connections: usize,
    /// How long a statement waits for a lock held elsewhere before failing.
    /// Default 5 000 ms.
    pub busy_timeout_ms: u64,
    /// How long a lease (one seal per endpoint, the background work) outlives a
    /// replica that stopped renewing it: how long the other replicas wait before
    /// they take over. Renewed every third of it. Default 10 000 ms.
    pub lease_ttl_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: None,
            path: None,
            read_connections: 4,
            busy_timeout_ms: 5_000,
            lease_ttl_ms: 10_000,
        }
    }
}

impl StorageConfig {
    /// `busy_timeout_ms` as a duration.
    pub fn busy_timeout(&self) -> Duration {
        Duration::from_millis(self.busy_timeout_ms)
    }

    /// `lease_ttl_ms` as a duration.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }
}

/// A database URL, which may hold a password: `Debug` and serialization show it
/// without the password (and without its query string), as
/// [`StorageLocation`]'s `Display` does; [`DatabaseUrl::expose`] gives the value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseUrl(url.into())
    }

    /// The URL, password included, for the one place that connects.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL without its password, for logs and messages.
    pub fn redacted(&self) -> String {
        StorageLocation::Postgres(self.0.clone()).to_string()
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl Config {
    /// The database file: `storage.path`, or `guardian.sqlite` in the data directory.
    pub fn storage_path(&self) -> PathBuf {
        self.storage
            .path
            .clone()
            .unwrap_or_else(|| self.server.data_dir().join("guardian.sqlite"))
    }

    /// Where the database is: the PostgreSQL database at `storage.url` when it is
    /// set, else the SQLite file [`Config::storage_path`].
    ///
    /// # Errors
    /// `storage.url` is not a PostgreSQL URL (validation refuses such a
    /// configuration; this is for one built in code and not validated).
    pub fn storage_location(&self) -> Result<StorageLocation, String> {
        match &self.storage.url {
            Some(url) => StorageLocation::from_url(url.expose()),
            None => Ok(StorageLocation::Sqlite(self.storage_path())),
        }
    }

    /// Where compiled plugins are cached: `plugins` in the data directory.
    pub fn plugin_cache_dir(&self) -> PathBuf {
        self.server.data_dir().join("plugins")
    }

    /// Checks a configuration built in code (every value counts as a default in the
    /// messages). [`load`] checks what it loads itself.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::check(self, &Origins::default())
    }

    /// Things that are allowed but probably not what the operator wants (for example
    /// authentication turned off), one sentence each, for `main` to log as warnings.
    pub fn warnings(&self) -> Vec<String> {
        validate::warnings(self)
    }

    /// A copy with every derived default written out (listen address, data directory,
    /// public URL, database path unless `storage.url` is set, plugin concurrency), as
    /// the server will use them.
    pub fn resolved(&self) -> Config {
        let mut config = self.clone();
        config.server.listen = Some(self.server.listen_addr());
        config.server.data_dir = Some(self.server.data_dir());
        config.server.public_url = self.server.public_url().map(str::to_owned);
        if self.storage.url.is_none() {
            config.storage.path = Some(self.storage_path());
        }
        config.limits.plugin_concurrency = Some(self.limits.plugin_concurrency());
        config
    }
}

/// A loaded, validated configuration and where each of its values came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The effective configuration.
    pub config: Config,
    /// The source of every value that is not a default.
    pub origins: Origins,
}

impl Loaded {
    /// The effective configuration for the log: one `key = value (origin)` line per
    /// key, derived defaults written out, secrets redacted.
    pub fn render(&self) -> String {
        sources::render(&self.config.resolved(), &self.origins)
    }
}

/// Loads the configuration: defaults, then the TOML `file` if given, then
/// `env` (its `.env` layer, then its process layer), then validates it.
///
/// # Errors
/// A file that cannot be read or parsed (unknown keys included), an environment
/// variable that does not parse or is an unknown `GUARDIAN_…` setting, or a
/// configuration that fails validation; each error names the key and its source.
pub fn load(file: Option<&Path>, env: &Environment) -> Result<Loaded, ConfigError> {
    let loaded = sources::load(file, env)?;
    validate::check(&loaded.config, &loaded.origins)?;
    Ok(loaded)
}
