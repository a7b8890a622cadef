//! Reading the configuration: the TOML file, the `.env` file and the process
//! environment, each applied over the previous one, with the origin of every value.
//!
//! Every key has one entry in [`KEYS`], which knows how to parse the key's
//! environment variable; the environment name is derived from the key
//! ([`env_name`]). The old deployment's variables are in [`LEGACY`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::{
    Algorithm, ClaimFormat, Config, ConfigError, DatabaseUrl, Loaded, LogFormat, Role, RoleSource,
    Secret,
};

/// Prefix of every environment name.
pub(super) const ENV_PREFIX: &str = "GUARDIAN_";

/// The variables a share server reads, captured once, in two layers: the `.env` file
/// and the process environment (which wins).
///
/// Building one from pairs keeps tests from touching the process environment.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// Variables from the `.env` file, and the file's path for messages.
    dotenv: Option<(PathBuf, BTreeMap<String, String>)>,
    /// Variables of the process.
    process: BTreeMap<String, String>,
}

impl Environment {
    /// An empty environment: loading then uses the file and the defaults only.
    pub fn new() -> Self {
        Environment::default()
    }

    /// Sets the process layer.
    pub fn with_process<K, V>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.process = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self
    }

    /// Sets the `.env` layer; `path` only names it in messages.
    pub fn with_dotenv<K, V>(
        mut self,
        path: impl Into<PathBuf>,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        let vars = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self.dotenv = Some((path.into(), vars));
        self
    }

    /// Sets the `.env` layer from a file; a missing file leaves it empty.
    ///
    /// The file is parsed with `dotenvy` (quotes, comments, `export`, `${VAR}`
    /// substitution), but nothing is put into the process environment.
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed.
    pub fn with_dotenv_file(self, path: &Path) -> Result<Self, ConfigError> {
        let iter = match dotenvy::from_path_iter(path) {
            Ok(iter) => iter,
            Err(e) if e.not_found() => return Ok(self),
            Err(e) => return Err(dotenv_error(path, &e)),
        };
        let vars = iter
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| dotenv_error(path, &e))?;
        Ok(self.with_dotenv(path, vars))
    }

    /// What `main` calls, once: the `.env` file in `dir` (the working directory) and
    /// the process environment.
    ///
    /// # Errors
    /// The `.env` file cannot be parsed, or a variable this server reads is not UTF-8.
    pub fn capture(dir: &Path) -> Result<Self, ConfigError> {
        let process = process_vars(std::env::vars_os())?;
        Environment::new()
            .with_process(process)
            .with_dotenv_file(&dir.join(".env"))
    }

    /// The layers in the order they apply.
    fn layers(&self) -> Vec<Layer<'_>> {
        let mut layers = Vec::with_capacity(2);
        if let Some((path, vars)) = &self.dotenv {
            layers.push(Layer {
                dotenv: Some(path),
                vars,
            });
        }
        layers.push(Layer {
            dotenv: None,
            vars: &self.process,
        });
        layers
    }
}

/// Keeps the UTF-8 variables; a non-UTF-8 value is an error only for a variable this
/// server reads, since other programs' variables are none of its business.
fn process_vars(
    vars: impl Iterator<Item = (OsString, OsString)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (key, value) in vars {
        let Ok(key) = key.into_string() else { continue };
        match value.into_string() {
            Ok(value) => out.push((key, value)),
            Err(_) if is_ours(&key) => {
                return Err(ConfigError::Env {
                    var: key,
                    layer: "the environment".to_owned(),
                    key: None,
                    message: "the value is not valid UTF-8".to_owned(),
                });
            }
            Err(_) => {}
        }
    }
    Ok(out)
}

/// Whether a variable is one this server reads (or would reject as unknown).
fn is_ours(var: &str) -> bool {
    var.starts_with(ENV_PREFIX) || LEGACY.iter().any(|l| l.var == var)
}

fn dotenv_error(path: &Path, error: &dotenvy::Error) -> ConfigError {
    ConfigError::DotEnv {
        path: path.to_owned(),
        message: error.to_string(),
    }
}

/// One layer of variables being applied.
struct Layer<'a> {
    /// The `.env` file this layer came from; `None` for the process environment.
    dotenv: Option<&'a PathBuf>,
    vars: &'a BTreeMap<String, String>,
}

impl Layer<'_> {
    fn origin(&self, var: &str) -> Origin {
        match self.dotenv {
            Some(path) => Origin::DotEnv {
                var: var.to_owned(),
                path: path.clone(),
            },
            None => Origin::Env {
                var: var.to_owned(),
            },
        }
    }

    fn describe(&self) -> String {
        match self.dotenv {
            Some(path) => path.display().to_string(),
            None => "the environment".to_owned(),
        }
    }

    fn error(&self, var: &str, key: Option<&'static str>, message: String) -> ConfigError {
        ConfigError::Env {
            var: var.to_owned(),
            layer: self.describe(),
            key,
            message,
        }
    }
}

/// Where a configuration value came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    #[default]
    Default,
    /// The TOML configuration file.
    File(PathBuf),
    /// A variable in the `.env` file.
    DotEnv {
        /// The variable's name.
        var: String,
        /// The `.env` file.
        path: PathBuf,
    },
    /// A variable of the process environment.
    Env {
        /// The variable's name.
        var: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(path) => write!(f, "from {}", path.display()),
            Origin::DotEnv { var, path } => write!(f, "from {var} in {}", path.display()),
            Origin::Env { var } => write!(f, "from environment variable {var}"),
        }
    }
}

/// The origin of every configuration key that is not at its default, by dotted key
/// (`server.index`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins(BTreeMap<&'static str, Origin>);

impl Origins {
    /// Where `key` (dotted, e.g. `server.index`) came from.
    pub fn get(&self, key: &str) -> &Origin {
        static DEFAULT: Origin = Origin::Default;
        self.0.get(key).unwrap_or(&DEFAULT)
    }

    fn set(&mut self, key: &'static str, origin: Origin) {
        self.0.insert(key, origin);
    }
}

/// The environment name of a dotted key: `server.index` → `GUARDIAN_SERVER_INDEX`.
pub(super) fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Sets one key from its environment value.
type Setter = fn(&mut Config, &str) -> Result<(), String>;

/// One configuration key: its dotted name and how its environment value is parsed.
pub(super) struct Key {
    /// `section.key`, as in the TOML file.
    pub(super) path: &'static str,
    set: Setter,
}

/// `key!("section.key", field.path, parser)`: a [`Key`] whose environment value is
/// parsed by `parser` and stored in `config.field.path`.
macro_rules! key {
    ($path:literal, $($field:ident).+, $parse:expr) => {
        Key {
            path: $path,
            set: |config, value| {
                config.$($field).+ = $parse(value)?;
                Ok(())
            },
        }
    };
}

/// Every key of the configuration, in the order of the example file.
pub(super) static KEYS: &[Key] = &[
    key!("server.index", server.index, number),
    key!("server.servers", server.servers, number),
    key!("server.peers", server.peers, list),
    key!("server.listen", server.listen, optional::<SocketAddr>),
    key!("server.data_dir", server.data_dir, optional::<PathBuf>),
    key!("server.public_url", server.public_url, optional::<String>),
    key!("server.worker_threads", server.worker_threads, number),
    key!("server.key_file", server.key_file, optional::<PathBuf>),
    key!("server.peer_keys", server.peer_keys, list),
    key!("limits.max_body_bytes", limits.max_body_bytes, number),
    key!("limits.max_plugin_bytes", limits.max_plugin_bytes, number),
    key!(
        "limits.request_timeout_ms",
        limits.request_timeout_ms,
        number
    ),
    key!(
        "limits.plugin_deadline_ms",
        limits.plugin_deadline_ms,
        number
    ),
    key!(
        "limits.plugin_memory_bytes",
        limits.plugin_memory_bytes,
        number
    ),
    key!(
        "limits.plugin_output_bytes",
        limits.plugin_output_bytes,
        number
    ),
    key!(
        "limits.plugin_concurrency",
        limits.plugin_concurrency,
        optional::<usize>
    ),
    key!(
        "limits.plugin_compile_concurrency",
        limits.plugin_compile_concurrency,
        number
    ),
    key!(
        "limits.plugin_compile_timeout_ms",
        limits.plugin_compile_timeout_ms,
        number
    ),
    key!("limits.max_endpoints", limits.max_endpoints, number),
    key!("limits.max_params_bytes", limits.max_params_bytes, number),
    key!("limits.max_bulk_reports", limits.max_bulk_reports, number),
    key!(
        "limits.max_bulk_body_bytes",
        limits.max_bulk_body_bytes,
        number
    ),
    key!("limits.max_header_bytes", limits.max_header_bytes, number),
    key!(
        "limits.header_read_timeout_ms",
        limits.header_read_timeout_ms,
        number
    ),
    key!(
        "limits.reports_per_second_per_user",
        limits.reports_per_second_per_user,
        number
    ),
    key!(
        "limits.reports_burst_per_user",
        limits.reports_burst_per_user,
        number
    ),
    key!(
        "limits.reports_per_second_per_ip",
        limits.reports_per_second_per_ip,
        number
    ),
    key!(
        "limits.reports_burst_per_ip",
        limits.reports_burst_per_ip,
        number
    ),
    key!(
        "limits.trust_forwarded_for",
        limits.trust_forwarded_for,
        boolean
    ),
    key!(
        "endpoints.default_min_batch",
        endpoints.default_min_batch,
        number
    ),
    key!(
        "endpoints.min_batch_floor",
        endpoints.min_batch_floor,
        number
    ),
    key!("endpoints.max_batch", endpoints.max_batch, number),
    key!(
        "endpoints.report_retention_secs",
        endpoints.report_retention_secs,
        number
    ),
    key!(
        "endpoints.report_max_future_skew_secs",
        endpoints.report_max_future_skew_secs,
        number
    ),
    key!(
        "endpoints.peer_timeout_ms",
        endpoints.peer_timeout_ms,
        number
    ),
    key!(
        "endpoints.distinct_users",
        endpoints.distinct_users,
        boolean
    ),
    key!("plugins.approved", plugins.approved, list),
    key!("log.level", log.level, text),
    key!("log.format", log.format, LogFormat::from_str),
    key!("log.file_dir", log.file_dir, optional::<PathBuf>),
    key!("log.file_name", log.file_name, text),
    key!("cors.allowed_origins", cors.allowed_origins, list),
    key!("auth.disabled", auth.disabled, boolean),
    key!("auth.issuer", auth.issuer, optional::<String>),
    key!("auth.audiences", auth.audiences, list),
    key!("auth.jwks_url", auth.jwks_url, optional::<String>),
    key!("auth.jwks_file", auth.jwks_file, optional::<PathBuf>),
    key!("auth.ca_file", auth.ca_file, optional::<PathBuf>),
    key!("auth.algorithms", auth.algorithms, list_of::<Algorithm>),
    key!("auth.leeway_secs", auth.leeway_secs, number),
    key!("auth.max_token_bytes", auth.max_token_bytes, number),
    key!("auth.jwks_ttl_secs", auth.jwks_ttl_secs, number),
    key!(
        "auth.jwks_refetch_cooldown_secs",
        auth.jwks_refetch_cooldown_secs,
        number
    ),
    key!("auth.role_sources", auth.role_sources, role_sources),
    key!("auth.dev_issuer", auth.dev_issuer, boolean),
    key!("auth.dev_issuer_dir", auth.dev_issuer_dir, path),
    key!("auth.peer_token", auth.peer_token, secret),
    key!(
        "auth.peer_token_file",
        auth.peer_token_file,
        optional::<PathBuf>
    ),
    key!("storage.url", storage.url, database_url),
    key!("storage.path", storage.path, optional::<PathBuf>),
    key!("storage.read_connections", storage.read_connections, number),
    key!("storage.busy_timeout_ms", storage.busy_timeout_ms, number),
    key!("storage.lease_ttl_ms", storage.lease_ttl_ms, number),
];

/// Keys whose values are secrets: their environment values are never echoed.
const SECRET_KEYS: &[&str] = &["auth.peer_token", "storage.url"];

/// A variable of the old deployment and the keys it sets.
pub(super) struct Legacy {
    /// The old variable's name.
    pub(super) var: &'static str,
    /// The keys it sets (all of them get its origin).
    pub(super) keys: &'static [&'static str],
    set: Setter,
}

/// The old deployment's variables, mapped as the old server used them.
pub(super) static LEGACY: &[Legacy] = &[
    Legacy {
        var: "SERVER_ID",
        keys: &["server.index"],
        set: |config, value| {
            config.server.index = match value {
                "R_SERVER" => 0,
                "X_R_SERVER" => 1,
                other => {
                    return Err(format!(
                        "expected R_SERVER (server 0) or X_R_SERVER (server 1), got {other:?}; \
                         for another index set GUARDIAN_SERVER_INDEX"
                    ));
                }
            };
            Ok(())
        },
    },
    Legacy {
        var: "NUM_CLIENTS_TO_SUM",
        keys: &["endpoints.default_min_batch"],
        set: |config, value| {
            config.endpoints.default_min_batch = number(value)?;
            Ok(())
        },
    },
    Legacy {
        var: "LOG_FILE_DIR",
        keys: &["log.file_dir"],
        set: |config, value| {
            config.log.file_dir = Some(PathBuf::from(value));
            Ok(())
        },
    },
    Legacy {
        var: "LOG_FILE_NAME",
        keys: &["log.file_name"],
        set: |config, value| {
            config.log.file_name = value.to_owned();
            Ok(())
        },
    },
    Legacy {
        // The old server fetched `https://{domain}/.well-known/jwks.json` and required
        // `iss` to be exactly `https://{domain}/` (Auth0's form). A port may follow
        // the host (`id.example.org:8443`, e.g. a Keycloak or a custom domain).
        var: "OAUTH2_PROVIDER_DOMAIN",
        keys: &["auth.issuer", "auth.jwks_url"],
        set: |config, value| {
            if !is_host_and_port(value) {
                return Err(format!(
                    "expected a bare host name such as tenant.eu.auth0.com, optionally with \
                     a port (id.example.org:8443), got {value:?}; for a full issuer URL set \
                     GUARDIAN_AUTH_ISSUER"
                ));
            }
            config.auth.issuer = Some(format!("https://{value}/"));
            config.auth.jwks_url = Some(format!("https://{value}/.well-known/jwks.json"));
            Ok(())
        },
    },
    Legacy {
        var: "OAUTH2_PROVIDER_AUDIENCE",
        keys: &["auth.audiences"],
        set: |config, value| {
            config.auth.audiences = vec![value.to_owned()];
            Ok(())
        },
    },
];

/// Whether `value` is `host` or `host:port` (a port from 1 to 65535): no scheme,
/// path, user or IPv6 brackets, so that `https://{value}/` is the URL it looks like.
fn is_host_and_port(value: &str) -> bool {
    let (host, port) = match value.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (value, None),
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    let port_ok = port.is_none_or(|port| {
        port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    host_ok && port_ok
}

/// The permissions the old server checked in Auth0's `permissions` claim, and the
/// role each one stands for. Used when `OAUTH2_PROVIDER_DOMAIN` configures the issuer
/// and no role source is configured, so that an old Auth0 tenant keeps working.
pub(super) const LEGACY_PERMISSIONS: &[(&str, Role)] = &[
    ("post:eta-data", Role::User),
    ("create:endpoint", Role::Developer),
    ("get:eta-data", Role::Scientist),
    ("admin:tasks", Role::Admin),
];

/// The role source of the old deployment: Auth0 `permissions` with the old
/// permission names, plus the app role names themselves.
pub(super) fn legacy_role_source() -> RoleSource {
    let mut roles = super::identity_roles();
    roles.extend(
        LEGACY_PERMISSIONS
            .iter()
            .map(|(permission, role)| ((*permission).to_owned(), *role)),
    );
    RoleSource {
        claim: vec!["permissions".to_owned()],
        format: ClaimFormat::Array,
        roles,
    }
}

// Parsers of environment values. An empty value clears an optional key and empties a
// list; for other keys it is an error like any other unparsable value.

fn number<T: FromStr>(value: &str) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    value
        .trim()
        .parse()
        .map_err(|e| format!("expected a non-negative integer, got {value:?} ({e})"))
}

fn boolean(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true or false, got {value:?}")),
    }
}

fn text(value: &str) -> Result<String, String> {
    Ok(value.to_owned())
}

fn path(value: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err("expected a path, got an empty value".to_owned());
    }
    Ok(PathBuf::from(value))
}

fn optional<T: FromStr>(value: &str) -> Result<Option<T>, String>
where
    T::Err: fmt::Display,
{
    if value.trim().is_empty() {
        return Ok(None);
    }
    value
        .trim()
        .parse()
        .map(Some)
        .map_err(|e| format!("cannot parse {value:?}: {e}"))
}

fn secret(value: &str) -> Result<Option<Secret>, String> {
    Ok((!value.is_empty()).then(|| Secret::new(value)))
}

/// A database URL; checked by validation, which never shows its password.
fn database_url(value: &str) -> Result<Option<DatabaseUrl>, String> {
    Ok((!value.trim().is_empty()).then(|| DatabaseUrl::new(value.trim())))
}

/// A comma-separated list; blanks around items and empty items are dropped.
fn list(value: &str) -> Result<Vec<String>, String> {
    Ok(value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect())
}

fn list_of<T: FromStr<Err = String>>(value: &str) -> Result<Vec<T>, String> {
    list(value)?.iter().map(|item| item.parse()).collect()
}

/// Role sources are nested, so their environment value is JSON, the same shape as
/// in TOML: `[{"claim": ["permissions"], "format": "array", "roles": {"read": "user"}}]`.
fn role_sources(value: &str) -> Result<Vec<RoleSource>, String> {
    serde_json::from_str(value).map_err(|e| format!("expected a JSON array of role sources: {e}"))
}

/// Reads the file and the environment into a configuration, not yet validated.
pub(super) fn load(file: Option<&Path>, env: &Environment) -> Result<Loaded, ConfigError> {
    let mut origins = Origins::default();
    let mut config = match file {
        Some(path) => read_file(path, &mut origins)?,
        None => Config::default(),
    };
    let mut legacy_issuer = None;
    for layer in env.layers() {
        if let Some(origin) = apply_layer(&layer, &mut config, &mut origins)? {
            legacy_issuer = Some(origin);
        }
    }
    // The old server read roles from Auth0's `permissions`; keep that unless role
    // sources are configured, and unless a newer setting replaced the legacy issuer.
    if let Some(origin) = legacy_issuer
        && *origins.get("auth.issuer") == origin
        && *origins.get("auth.role_sources") == Origin::Default
    {
        config.auth.role_sources = vec![legacy_role_source()];
        origins.set("auth.role_sources", origin);
    }
    normalize(&mut config);
    Ok(Loaded { config, origins })
}

fn read_file(path: &Path, origins: &mut Origins) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    let parse_error = |source| ConfigError::ParseFile {
        path: path.to_owned(),
        source: Box::new(source),
    };
    // Typed parsing first: its errors point at the line and name unknown keys.
    let config: Config = toml::from_str(&text).map_err(parse_error)?;
    let table: toml::Table = toml::from_str(&text).map_err(parse_error)?;
    for key in KEYS {
        let (section, name) = split_key(key.path);
        if table
            .get(section)
            .and_then(toml::Value::as_table)
            .is_some_and(|t| t.contains_key(name))
        {
            origins.set(key.path, Origin::File(path.to_owned()));
        }
    }
    Ok(config)
}

fn split_key(path: &'static str) -> (&'static str, &'static str) {
    path.split_once('.').unwrap_or((path, ""))
}

/// Applies one layer: its legacy variables first, then its `GUARDIAN_…` variables,
/// so that within a layer the new names win. Returns the origin of a legacy
/// `OAUTH2_PROVIDER_DOMAIN` if this layer had one.
fn apply_layer(
    layer: &Layer<'_>,
    config: &mut Config,
    origins: &mut Origins,
) -> Result<Option<Origin>, ConfigError> {
    let mut legacy_issuer = None;
    for legacy in LEGACY {
        // The old deployment's `.env` files held empty values for unused variables;
        // an empty legacy variable counts as unset.
        let Some(value) = layer.vars.get(legacy.var).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        (legacy.set)(config, value.trim())
            .map_err(|message| layer.error(legacy.var, legacy.keys.first().copied(), message))?;
        let origin = layer.origin(legacy.var);
        for key in legacy.keys {
            origins.set(key, origin.clone());
        }
        if legacy.var == "OAUTH2_PROVIDER_DOMAIN" {
            legacy_issuer = Some(origin);
        }
    }

    for (var, value) in layer.vars {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        match KEYS.iter().find(|key| env_name(key.path) == *var) {
            Some(key) => {
                (key.set)(config, value).map_err(|message| {
                    let message = if SECRET_KEYS.contains(&key.path) {
                        "the value does not parse".to_owned()
                    } else {
                        message
                    };
                    layer.error(var, Some(key.path), message)
                })?;
                origins.set(key.path, layer.origin(var));
            }
            // A misspelt setting must not be ignored silently. Other `GUARDIAN_…`
            // names (the client's `GUARDIAN_SERVERS`, `GUARDIAN_TOKEN`) are left alone.
            None => {
                let section = KEYS
                    .iter()
                    .map(|key| split_key(key.path).0)
                    .find(|section| {
                        rest.strip_prefix(section.to_ascii_uppercase().as_str())
                            .is_some_and(|r| r.starts_with('_'))
                    });
                if let Some(section) = section {
                    let known = KEYS
                        .iter()
                        .filter(|key| split_key(key.path).0 == section)
                        .map(|key| env_name(key.path))
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(layer.error(
                        var,
                        None,
                        format!("unknown setting in [{section}]; known: {known}"),
                    ));
                }
            }
        }
    }
    Ok(legacy_issuer)
}

/// Puts values in the one form the rest of the server expects: base URLs without a
/// trailing slash, so that joining a route never doubles it, and plugin digests in
/// lower case, as the API shows them. (The issuer is left exactly as given: it is
/// compared byte for byte with `iss`.)
fn normalize(config: &mut Config) {
    for digest in &mut config.plugins.approved {
        digest.make_ascii_lowercase();
    }
    for url in config
        .server
        .peers
        .iter_mut()
        .chain(config.server.public_url.as_mut())
    {
        while url.len() > 1 && url.ends_with('/') {
            url.pop();
        }
    }
}

/// One line per key, `key = value (origin)`; unset keys say so.
pub(super) fn render(config: &Config, origins: &Origins) -> String {
    // Serializing plain data into a TOML value cannot fail; an empty table would only
    // make every line say "(not set)".
    let value = toml::Value::try_from(config).unwrap_or_else(|_| toml::Table::new().into());
    let table = value.as_table().cloned().unwrap_or_default();
    let mut out = String::new();
    for key in KEYS {
        let (section, name) = split_key(key.path);
        let value = table
            .get(section)
            .and_then(toml::Value::as_table)
            .and_then(|t| t.get(name));
        let value = match value {
            Some(value) => value.to_string(),
            None => "(not set)".to_owned(),
        };
        out.push_str(&format!(
            "{} = {value} ({})\n",
            key.path,
            origins.get(key.path)
        ));
    }
    out
}
