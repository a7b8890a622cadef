//! Checking a loaded configuration, and the errors of this module.
//!
//! Validation collects every problem before failing, so that an operator fixes a
//! configuration in one round. Each message names the key, its value (never a
//! secret's) and where the value came from.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::{
    AuthConfig, ClaimFormat, Config, DEFAULT_BASE_PORT, DatabaseUrl, LimitsConfig, LogConfig,
    Origin, Origins, ServerConfig,
};
use crate::storage::StorageLocation;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read the configuration file {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML, has an unknown key or a value of the
    /// wrong type. The TOML error points at the line.
    #[error("configuration file {}: {source}", path.display())]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The parser's error, with line, column and key.
        source: Box<toml::de::Error>,
    },
    /// The `.env` file exists but could not be read or parsed.
    #[error("cannot read {}: {message}", path.display())]
    DotEnv {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// An environment variable has a value that does not parse, or is an unknown
    /// `GUARDIAN_…` setting.
    #[error("{}", env_message(var, layer, *key, message))]
    Env {
        /// The variable.
        var: String,
        /// Where it was set: the `.env` file's path or "the environment".
        layer: String,
        /// The key it sets, if it is a known one.
        key: Option<&'static str>,
        /// What is wrong.
        message: String,
    },
    /// The configuration was read but is not usable.
    #[error("invalid configuration:{}", bullets(problems))]
    Invalid {
        /// Every problem found, in key order.
        problems: Vec<Problem>,
    },
}

fn env_message(var: &str, layer: &str, key: Option<&str>, message: &str) -> String {
    match key {
        Some(key) => format!("{key} (from {var} in {layer}): {message}"),
        None => format!("{var} in {layer}: {message}"),
    }
}

fn bullets(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  - {p}")).collect()
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key at fault (the first one, when several conflict).
    pub key: &'static str,
    /// A sentence naming the key, its value and origin, and what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Collects problems, with the origins needed to describe values.
struct Checker<'a> {
    origins: &'a Origins,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    /// `key = value (origin)`.
    fn at(&self, key: &str, value: impl fmt::Display) -> String {
        format!("{key} = {value} ({})", self.origins.get(key))
    }

    /// `key (origin)`, for values not worth repeating.
    fn named(&self, key: &str) -> String {
        format!("{key} ({})", self.origins.get(key))
    }

    fn fail(&mut self, key: &'static str, message: String) {
        self.problems.push(Problem { key, message });
    }

    fn positive(&mut self, key: &'static str, value: u64) {
        if value == 0 {
            let at = self.at(key, value);
            self.fail(key, format!("{at}: must be greater than 0"));
        }
    }

    fn non_empty_path(&mut self, key: &'static str, path: Option<&Path>) {
        if path.is_some_and(|p| p.as_os_str().is_empty()) {
            let at = self.named(key);
            self.fail(key, format!("{at}: must not be an empty path"));
        }
    }
}

/// Checks everything; `Err(Invalid)` lists every problem.
pub(super) fn check(config: &Config, origins: &Origins) -> Result<(), ConfigError> {
    let mut c = Checker {
        origins,
        problems: Vec::new(),
    };
    server(&mut c, &config.server);
    limits(&mut c, &config.limits);
    header_room(&mut c, &config.limits, &config.auth);
    let endpoints = &config.endpoints;
    let min_batch = endpoints.default_min_batch;
    let floor = endpoints.min_batch_floor;
    if floor < 2 {
        let at = c.at("endpoints.min_batch_floor", floor);
        c.fail(
            "endpoints.min_batch_floor",
            format!(
                "{at}: must be at least 2, since a batch of one report releases that user's value"
            ),
        );
    }
    if min_batch < floor.max(2) {
        let at = c.at("endpoints.default_min_batch", min_batch);
        let floor = c.at("endpoints.min_batch_floor", floor);
        c.fail(
            "endpoints.default_min_batch",
            format!(
                "{at}: must be at least 2 and at least {floor}, since a batch of one report releases that user's value"
            ),
        );
    }
    if endpoints.max_batch < min_batch.max(2) {
        let at = c.at("endpoints.max_batch", endpoints.max_batch);
        c.fail(
            "endpoints.max_batch",
            format!("{at}: must be at least endpoints.default_min_batch ({min_batch}) and 2"),
        );
    }
    if endpoints.report_retention_secs == 0 {
        let at = c.at("endpoints.report_retention_secs", 0);
        c.fail(
            "endpoints.report_retention_secs",
            format!("{at}: must be positive, or no report could wait for its seal"),
        );
    }
    if endpoints.peer_timeout_ms == 0 {
        let at = c.at("endpoints.peer_timeout_ms", 0);
        c.fail(
            "endpoints.peer_timeout_ms",
            format!("{at}: must be positive"),
        );
    }
    approved_plugins(&mut c, &config.plugins.approved);
    log(&mut c, &config.log);
    cors(&mut c, &config.cors.allowed_origins);
    auth(&mut c, &config.auth);
    let storage = &config.storage;
    c.non_empty_path("storage.path", storage.path.as_deref());
    if let Some(url) = &storage.url {
        database_url(&mut c, url);
    }
    c.positive("storage.read_connections", storage.read_connections as u64);
    c.positive("storage.busy_timeout_ms", storage.busy_timeout_ms);
    if storage.lease_ttl_ms < MIN_LEASE_TTL_MS {
        let at = c.at("storage.lease_ttl_ms", storage.lease_ttl_ms);
        c.fail(
            "storage.lease_ttl_ms",
            format!("{at}: must be at least {MIN_LEASE_TTL_MS} (renewals come every third of it)"),
        );
    }

    if c.problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            problems: c.problems,
        })
    }
}

fn server(c: &mut Checker<'_>, s: &ServerConfig) {
    if s.servers < 2 {
        let at = c.at("server.servers", s.servers);
        c.fail(
            "server.servers",
            format!(
                "{at}: at least 2 share servers are needed (one server alone sees every value)"
            ),
        );
    }
    if s.index >= s.servers {
        let (index, servers) = (
            c.at("server.index", s.index),
            c.at("server.servers", s.servers),
        );
        c.fail(
            "server.index",
            format!(
                "{index} but {servers}: the index must be below the number of servers (0-based)"
            ),
        );
    }
    if s.peers.len() != s.servers as usize {
        let (peers, servers) = (c.named("server.peers"), c.at("server.servers", s.servers));
        c.fail(
            "server.peers",
            format!(
                "{peers} has {} entries but {servers}: list one base URL per server, \
                 this one included, in index order",
                s.peers.len()
            ),
        );
    }
    if !s.peer_keys.is_empty() && s.peer_keys.len() != s.servers as usize {
        let (keys, servers) = (
            c.named("server.peer_keys"),
            c.at("server.servers", s.servers),
        );
        c.fail(
            "server.peer_keys",
            format!(
                "{keys} has {} entries but {servers}: list every server's public key \
                 (`guardian peer-key`), this one's included, in index order",
                s.peer_keys.len()
            ),
        );
    }
    for (i, key) in s.peer_keys.iter().enumerate() {
        if let Err(why) = crate::auth::identity::parse_public_key(key) {
            let at = c.named("server.peer_keys");
            c.fail("server.peer_keys", format!("{at}: entry {i}: {why}"));
        }
    }
    let mut seen = HashMap::new();
    for (i, peer) in s.peers.iter().enumerate() {
        if let Err(why) = base_url(peer) {
            let at = c.named("server.peers");
            c.fail("server.peers", format!("{at}: entry {i} ({peer:?}) {why}"));
        }
        if let Some(j) = seen.insert(peer.as_str(), i) {
            let at = c.named("server.peers");
            c.fail(
                "server.peers",
                format!("{at}: entries {j} and {i} are both {peer:?}"),
            );
        }
    }
    if s.listen.is_none() && u32::from(DEFAULT_BASE_PORT) + s.index > u32::from(u16::MAX) {
        let at = c.at("server.index", s.index);
        c.fail(
            "server.listen",
            format!("server.listen must be set: with {at} the default port {DEFAULT_BASE_PORT} + index does not exist"),
        );
    }
    if let Some(url) = &s.public_url
        && let Err(why) = base_url(url)
    {
        let at = c.at("server.public_url", format!("{url:?}"));
        c.fail("server.public_url", format!("{at} {why}"));
    }
    c.non_empty_path("server.data_dir", s.data_dir.as_deref());
}

/// Every approved plugin is named by its digest: 64 hex digits, as
/// `guardian plugin upload` and `GET /api/v1/plugins` show it.
fn approved_plugins(c: &mut Checker<'_>, approved: &[String]) {
    const KEY: &str = "plugins.approved";
    for (i, digest) in approved.iter().enumerate() {
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            let at = c.named(KEY);
            c.fail(
                KEY,
                format!(
                    "{at}: entry {i} ({digest:?}) is not a plugin digest: give the 64 hex digits \
                     of SHA-256 that `guardian plugin upload` prints (names of built-in plugins \
                     are not needed: they are always approved)"
                ),
            );
        }
    }
}

/// Smallest plugin memory cap: a Rust plugin's stack alone takes 1 MiB.
const MIN_PLUGIN_MEMORY: usize = 1 << 20;

/// Shortest `storage.lease_ttl_ms`: a renewal statement must fit in a third of it.
const MIN_LEASE_TTL_MS: u64 = 30;

fn limits(c: &mut Checker<'_>, l: &LimitsConfig) {
    c.positive("limits.max_body_bytes", l.max_body_bytes as u64);
    c.positive("limits.max_plugin_bytes", l.max_plugin_bytes as u64);
    c.positive("limits.request_timeout_ms", l.request_timeout_ms);
    c.positive("limits.plugin_deadline_ms", l.plugin_deadline_ms);
    c.positive("limits.plugin_output_bytes", l.plugin_output_bytes as u64);
    if let Some(n) = l.plugin_concurrency {
        c.positive("limits.plugin_concurrency", n as u64);
    }
    c.positive("limits.header_read_timeout_ms", l.header_read_timeout_ms);
    c.positive(
        "limits.plugin_compile_concurrency",
        l.plugin_compile_concurrency as u64,
    );
    c.positive(
        "limits.plugin_compile_timeout_ms",
        l.plugin_compile_timeout_ms,
    );
    c.positive("limits.max_endpoints", l.max_endpoints as u64);
    c.positive("limits.max_params_bytes", l.max_params_bytes as u64);
    c.positive("limits.max_bulk_reports", l.max_bulk_reports as u64);
    c.positive("limits.max_bulk_body_bytes", l.max_bulk_body_bytes as u64);
    if l.plugin_memory_bytes < MIN_PLUGIN_MEMORY {
        let at = c.at("limits.plugin_memory_bytes", l.plugin_memory_bytes);
        c.fail(
            "limits.plugin_memory_bytes",
            format!("{at}: must be at least {MIN_PLUGIN_MEMORY} (1 MiB; a Rust plugin's stack alone takes that)"),
        );
    }
    if l.plugin_deadline_ms > l.request_timeout_ms {
        let deadline = c.at("limits.plugin_deadline_ms", l.plugin_deadline_ms);
        let timeout = c.at("limits.request_timeout_ms", l.request_timeout_ms);
        c.fail(
            "limits.plugin_deadline_ms",
            format!(
                "{deadline} exceeds {timeout}: a request would time out before its plugin call"
            ),
        );
    }
}

/// Smallest request head limit: hyper's own read buffer starts at 8 KiB, and a
/// request line, `Host` and `Content-Type` need some room besides a token.
const MIN_HEADER_BYTES: usize = 4 << 10;
/// Room for the request line and the other headers next to the longest token.
const HEADER_ROOM: usize = 1 << 10;

/// The longest accepted token must fit in the request head limit, or such tokens
/// would get 431 instead of being checked.
fn header_room(c: &mut Checker<'_>, l: &LimitsConfig, a: &AuthConfig) {
    let needed = a
        .max_token_bytes
        .saturating_add(HEADER_ROOM)
        .max(MIN_HEADER_BYTES);
    if l.max_header_bytes < needed {
        let at = c.at("limits.max_header_bytes", l.max_header_bytes);
        let token = c.at("auth.max_token_bytes", a.max_token_bytes);
        c.fail(
            "limits.max_header_bytes",
            format!(
                "{at}: must be at least {needed} ({token} plus {HEADER_ROOM} for the rest of \
                 the request head, and at least {MIN_HEADER_BYTES})"
            ),
        );
    }
}

fn log(c: &mut Checker<'_>, l: &LogConfig) {
    let level_error = if l.level.trim().is_empty() {
        Some("must not be empty".to_owned())
    } else {
        tracing_subscriber::EnvFilter::builder()
            .parse(&l.level)
            .err()
            .map(|e| format!("is not a level or tracing filter ({e})"))
    };
    if let Some(why) = level_error {
        let at = c.at("log.level", format!("{:?}", l.level));
        c.fail(
            "log.level",
            format!("{at} {why}; use e.g. info or info,guardian=debug"),
        );
    }
    let name = &l.file_name;
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\']) {
        let at = c.at("log.file_name", format!("{name:?}"));
        c.fail(
            "log.file_name",
            format!("{at}: must be a plain file name; put the directory in log.file_dir"),
        );
    }
    c.non_empty_path("log.file_dir", l.file_dir.as_deref());
    // A file name alone would be ignored (logs go to standard error without a
    // directory): say so rather than lose the operator's logs. Restating the default
    // name, as a copy of the example file does, is fine.
    if l.file_dir.is_none()
        && *c.origins.get("log.file_name") != Origin::Default
        && *name != LogConfig::default().file_name
    {
        let at = c.at("log.file_name", format!("{name:?}"));
        c.fail(
            "log.file_name",
            format!("{at} is set but log.file_dir is not: set log.file_dir (GUARDIAN_LOG_FILE_DIR or LOG_FILE_DIR) to log to a file"),
        );
    }
}

fn cors(c: &mut Checker<'_>, origins: &[String]) {
    const KEY: &str = "cors.allowed_origins";
    if origins.iter().any(|o| o == "*") && origins.len() > 1 {
        let at = c.named(KEY);
        c.fail(
            KEY,
            format!("{at}: \"*\" allows every origin and must be the only entry"),
        );
    }
    for origin in origins.iter().filter(|o| *o != "*") {
        let why = match parse_url(origin) {
            Ok(url) if url.rest.is_empty() => continue,
            Ok(url) => format!(
                "is not an origin: remove {:?} (an origin is scheme://host[:port])",
                url.rest
            ),
            Err(why) => why,
        };
        let at = c.named(KEY);
        c.fail(KEY, format!("{at}: {origin:?} {why}"));
    }
}

/// Most leeway accepted: the design asks for a small one.
const MAX_LEEWAY_SECS: u64 = 300;
/// Bounds of `max_token_bytes`: below, real RS256 tokens would not fit; above, the
/// check would no longer protect anything (HTTP servers refuse larger headers anyway).
const TOKEN_BYTES: std::ops::RangeInclusive<usize> = 512..=(64 << 10);
/// Shortest peer credential: 32 characters, e.g. 16 random bytes in hex.
const MIN_PEER_TOKEN: usize = 32;

fn auth(c: &mut Checker<'_>, a: &AuthConfig) {
    // The peer credential matters even with token checks off.
    match (&a.peer_token, &a.peer_token_file) {
        (Some(_), Some(_)) => {
            let (token, file) = (c.named("auth.peer_token"), c.named("auth.peer_token_file"));
            c.fail(
                "auth.peer_token",
                format!("{token} and {file} are both set; set one"),
            );
        }
        (Some(token), None) if token.expose().chars().count() < MIN_PEER_TOKEN => {
            let at = c.named("auth.peer_token");
            c.fail(
                "auth.peer_token",
                format!("{at} is too short: use at least {MIN_PEER_TOKEN} random characters, e.g. `openssl rand -hex 32`"),
            );
        }
        _ => {}
    }
    c.non_empty_path("auth.peer_token_file", a.peer_token_file.as_deref());
    // Peer clients use it too, so it matters with token checks off.
    c.non_empty_path("auth.ca_file", a.ca_file.as_deref());
    if a.disabled {
        return;
    }

    if a.dev_issuer {
        for (key, set) in [
            ("auth.issuer", a.issuer.is_some()),
            ("auth.jwks_url", a.jwks_url.is_some()),
            ("auth.jwks_file", a.jwks_file.is_some()),
        ] {
            if set {
                let (dev, other) = (c.at("auth.dev_issuer", true), c.named(key));
                c.fail(
                    key,
                    format!("{other} is set but {dev}: the development issuer brings its own issuer and keys; use one or the other"),
                );
            }
        }
        c.non_empty_path("auth.dev_issuer_dir", Some(&a.dev_issuer_dir));
    } else {
        if a.jwks_url.is_some() && a.jwks_file.is_some() {
            let (url, file) = (c.named("auth.jwks_url"), c.named("auth.jwks_file"));
            c.fail(
                "auth.jwks_url",
                format!("{url} and {file} are both set; set one key source"),
            );
        }
        if a.issuer.is_none() {
            for (key, set) in [
                ("auth.jwks_url", a.jwks_url.is_some()),
                ("auth.jwks_file", a.jwks_file.is_some()),
            ] {
                if set {
                    let at = c.named(key);
                    c.fail(
                        key,
                        format!("{at} is set but auth.issuer is not: tokens are checked against an exact issuer, so set auth.issuer too"),
                    );
                }
            }
        }
        c.non_empty_path("auth.jwks_file", a.jwks_file.as_deref());
    }

    if let Some(issuer) = &a.issuer {
        if let Err(why) = provider_url(issuer) {
            let at = c.at("auth.issuer", format!("{issuer:?}"));
            c.fail("auth.issuer", format!("{at} {why}"));
        }
        if a.audiences.is_empty() {
            let at = c.named("auth.audiences");
            c.fail(
                "auth.audiences",
                format!("{at} is empty: with an issuer, tokens must be checked for an audience; set auth.audiences (GUARDIAN_AUTH_AUDIENCES or OAUTH2_PROVIDER_AUDIENCE)"),
            );
        }
    }
    if let Some(url) = &a.jwks_url
        && let Err(why) = provider_url(url)
    {
        let at = c.at("auth.jwks_url", format!("{url:?}"));
        c.fail("auth.jwks_url", format!("{at} {why}"));
    }
    if a.audiences.iter().any(|aud| aud.trim().is_empty()) {
        let at = c.named("auth.audiences");
        c.fail("auth.audiences", format!("{at} has an empty entry"));
    }
    if a.algorithms.is_empty() {
        let at = c.named("auth.algorithms");
        c.fail(
            "auth.algorithms",
            format!("{at} is empty: no token could be verified"),
        );
    }
    if a.leeway_secs > MAX_LEEWAY_SECS {
        let at = c.at("auth.leeway_secs", a.leeway_secs);
        c.fail(
            "auth.leeway_secs",
            format!("{at}: at most {MAX_LEEWAY_SECS}; a large leeway keeps expired tokens valid"),
        );
    }
    if !TOKEN_BYTES.contains(&a.max_token_bytes) {
        let at = c.at("auth.max_token_bytes", a.max_token_bytes);
        c.fail(
            "auth.max_token_bytes",
            format!(
                "{at}: must be between {} and {}",
                TOKEN_BYTES.start(),
                TOKEN_BYTES.end()
            ),
        );
    }
    c.positive("auth.jwks_ttl_secs", a.jwks_ttl_secs);
    c.positive(
        "auth.jwks_refetch_cooldown_secs",
        a.jwks_refetch_cooldown_secs,
    );
    role_sources(c, a);
}

fn role_sources(c: &mut Checker<'_>, a: &AuthConfig) {
    const KEY: &str = "auth.role_sources";
    if a.role_sources.is_empty() && a.key_source().is_some() {
        let at = c.named(KEY);
        c.fail(KEY, format!("{at} is empty: no token would carry a role, so every protected route would answer 403"));
    }
    for (i, source) in a.role_sources.iter().enumerate() {
        let at = c.named(KEY);
        let mut why = Vec::new();
        if source.claim.is_empty() {
            why.push("claim has no segment".to_owned());
        }
        if source.claim.iter().any(String::is_empty) {
            why.push("claim has an empty segment".to_owned());
        }
        if source.roles.is_empty() {
            why.push("roles maps no value to a role".to_owned());
        }
        if source.roles.keys().any(String::is_empty) {
            why.push("roles has an empty claim value".to_owned());
        }
        if source.format == ClaimFormat::SpaceDelimited
            && let Some(value) = source
                .roles
                .keys()
                .find(|v| v.contains(char::is_whitespace))
        {
            why.push(format!(
                "roles has {value:?}, which a space-delimited claim can never contain"
            ));
        }
        if !why.is_empty() {
            c.fail(
                KEY,
                format!("{at}: entry {i} ({:?}): {}", source.claim, why.join("; ")),
            );
        }
    }
}

/// The warnings of [`super::Config::warnings`].
pub(super) fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let auth = &config.auth;
    if auth.disabled {
        out.push(
            "authentication is disabled (auth.disabled): every request is accepted with every \
             role; use this only for benchmarks and tests"
                .to_owned(),
        );
    } else if auth.key_source().is_none() {
        out.push(
            "no token issuer is configured (auth.issuer, or auth.dev_issuer for local use): \
             every authenticated request will be refused"
                .to_owned(),
        );
    }
    if config.server.peer_keys.is_empty() {
        out.push(
            "no peer keys are configured (server.peer_keys, every server's `guardian peer-key` \
             in index order): the servers cannot agree on batches, so nothing can be sealed"
                .to_owned(),
        );
    }
    if let Some(url) = &config.storage.url {
        out.extend(database_url_warning(url));
        if config.storage.path.is_some() {
            out.push(
                "storage.path is ignored: storage.url is set, so the state is kept in that \
                 PostgreSQL database"
                    .to_owned(),
            );
        }
    }
    for (i, peer) in config.server.peers.iter().enumerate() {
        if let Ok(url) = parse_url(peer)
            && url.scheme == "http"
            && !is_loopback(url.host)
        {
            out.push(format!(
                "server.peers entry {i} ({peer}) uses plain http to a host that is not \
                 loopback: shares and the peer credential would cross the network unencrypted"
            ));
        }
    }
    out
}

/// `storage.url` must name a PostgreSQL database the driver can connect to. Messages
/// show the URL without its password.
fn database_url(c: &mut Checker<'_>, url: &DatabaseUrl) {
    let at = c.at("storage.url", url.redacted());
    if let Err(why) = StorageLocation::from_url(url.expose()) {
        c.fail("storage.url", format!("{at}: {why}"));
        return;
    }
    if let Err(error) = url.expose().parse::<tokio_postgres::Config>() {
        let hint = if url.expose().contains("sslmode=verify") {
            "; use sslmode=require, which verifies the server's certificate and host name \
             (what libpq calls verify-full)"
        } else {
            ""
        };
        c.fail(
            "storage.url",
            format!("{at}: not a usable PostgreSQL URL ({error}){hint}"),
        );
    }
}

/// A warning when `storage.url` reaches a database over the network without
/// requiring TLS.
fn database_url_warning(url: &DatabaseUrl) -> Option<String> {
    let config = url.expose().parse::<tokio_postgres::Config>().ok()?;
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return None;
    }
    let remote = config.get_hosts().iter().find_map(|host| match host {
        tokio_postgres::config::Host::Tcp(name) if !is_loopback(name) && name != "::1" => {
            Some(name.clone())
        }
        _ => None,
    })?;
    Some(format!(
        "storage.url ({}) reaches {remote} without sslmode=require: shares and the \
         database password may cross the network unencrypted",
        url.redacted()
    ))
}

/// The parts of an absolute `http(s)` URL this module cares about.
struct Url<'a> {
    scheme: &'a str,
    host: &'a str,
    /// Everything after the authority: path, query, fragment.
    rest: &'a str,
}

/// Splits an `http` or `https` URL; enough to catch what operators get wrong,
/// without pulling in a URL library.
fn parse_url(s: &str) -> Result<Url<'_>, String> {
    let Some((scheme, after)) = s.split_once("://") else {
        return Err("is not a URL (expected http:// or https://)".to_owned());
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!("has scheme {scheme:?}; expected http or https"));
    }
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    if authority.contains('@') {
        return Err("must not contain credentials".to_owned());
    }
    let (host, port) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(close) => {
                let (host, tail) = authority.split_at(close + 1);
                (host, tail.strip_prefix(':'))
            }
            None => return Err("has an unclosed [ in its host".to_owned()),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err("has no valid host".to_owned());
    }
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(format!("has an invalid port {port:?}"));
    }
    if s.contains(char::is_whitespace) {
        return Err("contains whitespace".to_owned());
    }
    Ok(Url { scheme, host, rest })
}

/// A base URL (peer or public): http(s), no query or fragment.
fn base_url(s: &str) -> Result<(), String> {
    let url = parse_url(s)?;
    if url.rest.contains(['?', '#']) {
        return Err("must not have a query or fragment".to_owned());
    }
    Ok(())
}

/// An identity provider URL: https, or http on loopback only (a local test
/// provider), since keys fetched over plain http could be swapped in transit.
fn provider_url(s: &str) -> Result<(), String> {
    let url = parse_url(s)?;
    if url.scheme == "http" && !is_loopback(url.host) {
        return Err("must use https (plain http is accepted only on loopback)".to_owned());
    }
    Ok(())
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host == "[::1]"
        || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}
