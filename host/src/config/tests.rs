//! Tests of loading and validating the configuration. They never touch the process
//! environment: every environment is built from pairs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::sources::{KEYS, LEGACY, env_name};
use super::*;

/// The example file, compiled in so that a missing file fails the build.
const EXAMPLE: &str = include_str!("../../../guardian.example.toml");

/// A configuration file, `.env` pairs and process pairs, loaded in a temporary
/// directory (the file is `guardian.toml`, the `.env` file `.env`).
struct Setup<'a> {
    file: Option<&'a str>,
    dotenv: &'a [(&'a str, &'a str)],
    env: &'a [(&'a str, &'a str)],
}

const NOTHING: Setup<'static> = Setup {
    file: None,
    dotenv: &[],
    env: &[],
};

fn file(text: &str) -> Setup<'_> {
    Setup {
        file: Some(text),
        ..NOTHING
    }
}

fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> Setup<'a> {
    Setup {
        env: pairs,
        ..NOTHING
    }
}

impl Setup<'_> {
    fn load(&self) -> Result<Loaded, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("guardian.toml");
        if let Some(text) = self.file {
            std::fs::write(&config_path, text).unwrap();
        }
        let dotenv = self
            .dotenv
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect::<String>();
        std::fs::write(dir.path().join(".env"), dotenv).unwrap();
        let environment = Environment::new()
            .with_process(self.env.iter().copied())
            .with_dotenv_file(&dir.path().join(".env"))?;
        load(self.file.map(|_| config_path.as_path()), &environment)
    }

    fn ok(&self) -> Loaded {
        self.load()
            .unwrap_or_else(|e| panic!("expected a valid configuration: {e}"))
    }

    /// Expects a validation error on `key` whose message contains every one of
    /// `parts`.
    fn invalid(&self, key: &str, parts: &[&str]) {
        let problems = match self.load() {
            Err(ConfigError::Invalid { problems }) => problems,
            Err(other) => panic!("expected a validation error on {key}, got: {other}"),
            Ok(_) => panic!("expected a validation error on {key}, got a valid configuration"),
        };
        let Some(problem) = problems.iter().find(|p| p.key == key) else {
            panic!("expected a problem with {key}, got: {problems:#?}");
        };
        for part in parts {
            assert!(
                problem.message.contains(part),
                "message of {key} lacks {part:?}: {}",
                problem.message
            );
        }
    }

    /// Expects an error (of any kind) whose text contains every one of `parts`.
    fn error(&self, parts: &[&str]) -> ConfigError {
        let error = match self.load() {
            Err(e) => e,
            Ok(loaded) => panic!("expected an error, loaded {:#?}", loaded.config),
        };
        let text = error.to_string();
        for part in parts {
            assert!(text.contains(part), "error lacks {part:?}: {text}");
        }
        error
    }
}

fn origin_env(var: &str) -> Origin {
    Origin::Env {
        var: var.to_owned(),
    }
}

#[test]
fn defaults_describe_a_valid_local_pair() {
    let config = Config::default();
    config.validate().unwrap();
    assert_eq!(config.server.index, 0);
    assert_eq!(config.server.servers, 2);
    assert_eq!(
        config.server.listen_addr(),
        "127.0.0.1:8000".parse().unwrap()
    );
    assert_eq!(config.server.public_url(), Some("http://127.0.0.1:8000"));
    assert!(config.server.is_coordinator());
    assert!(
        !config.auth.dev_issuer,
        "the dev issuer is never on by default"
    );
    assert!(!config.auth.disabled);
    assert_eq!(config.auth.key_source(), None);

    // Server 1 of the pair needs nothing but its index.
    let second = env(&[("GUARDIAN_SERVER_INDEX", "1")]).ok().config;
    assert_eq!(
        second.server.listen_addr(),
        "127.0.0.1:8001".parse().unwrap()
    );
    assert_eq!(second.server.public_url(), Some("http://127.0.0.1:8001"));
    assert_ne!(second.server.data_dir(), config.server.data_dir());
    assert_ne!(second.storage_path(), config.storage_path());
    assert_eq!(
        config.storage_path(),
        Path::new("guardian-data/server-0/guardian.sqlite")
    );
}

#[test]
fn loading_nothing_gives_the_defaults() {
    let loaded = NOTHING.ok();
    assert_eq!(loaded.config, Config::default());
    assert_eq!(loaded.origins, Origins::default());
}

#[test]
fn readme_lists_every_key_with_its_environment_name() {
    let readme = include_str!("../../../README.md");
    for key in KEYS {
        let row = format!("| `{}` | `{}`", key.path, env_name(key.path));
        assert!(readme.contains(&row), "README.md has no row {row}");
    }
}

#[test]
fn example_file_is_the_defaults_and_lists_every_key() {
    let parsed: Config = toml::from_str(EXAMPLE).unwrap();
    assert_eq!(parsed, Config::default());

    for key in KEYS {
        let var = env_name(key.path);
        assert!(
            EXAMPLE.contains(&format!("env: {var}")),
            "the example does not document {var}"
        );
        let (section, name) = key.path.split_once('.').unwrap();
        let section_text = EXAMPLE
            .split(&format!("\n[{section}]\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no [{section}] in the example"));
        assert!(
            section_text.contains(&format!("\n{name} = "))
                || section_text.contains(&format!("\n# {name} = "))
                || section_text.contains(&format!("[[{section}.{name}]]")),
            "the example does not show {}",
            key.path
        );
    }
    for legacy in LEGACY {
        assert!(
            EXAMPLE.contains(&format!("legacy: {}", legacy.var))
                || EXAMPLE.contains(&format!("legacy: {}=", legacy.var)),
            "the example does not document {}",
            legacy.var
        );
    }
    // The example loads through the real path too.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("guardian.toml");
    std::fs::write(&path, EXAMPLE).unwrap();
    let loaded = load(Some(&path), &Environment::new()).unwrap();
    assert_eq!(loaded.config, Config::default());
}

#[test]
fn every_key_has_a_distinct_environment_name() {
    let mut names: Vec<_> = KEYS.iter().map(|k| env_name(k.path)).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), KEYS.len());
    assert_eq!(env_name("server.index"), "GUARDIAN_SERVER_INDEX");
    assert_eq!(
        env_name("limits.max_body_bytes"),
        "GUARDIAN_LIMITS_MAX_BODY_BYTES"
    );
}

#[test]
fn file_then_dotenv_then_environment() {
    let loaded = Setup {
        file: Some(
            "[log]\nlevel = \"debug\"\n\
             [limits]\nmax_body_bytes = 100\n\
             [endpoints]\ndefault_min_batch = 3\n",
        ),
        dotenv: &[
            ("GUARDIAN_LIMITS_MAX_BODY_BYTES", "200"),
            ("GUARDIAN_ENDPOINTS_DEFAULT_MIN_BATCH", "4"),
        ],
        env: &[("GUARDIAN_ENDPOINTS_DEFAULT_MIN_BATCH", "5")],
    }
    .ok();
    let config = &loaded.config;
    assert_eq!(config.log.level, "debug");
    assert_eq!(config.limits.max_body_bytes, 200);
    assert_eq!(config.endpoints.default_min_batch, 5);
    assert_eq!(
        config.limits.max_plugin_bytes,
        32 << 20,
        "untouched keys keep defaults"
    );

    let origins = &loaded.origins;
    assert!(matches!(origins.get("log.level"), Origin::File(p) if p.ends_with("guardian.toml")));
    assert!(matches!(
        origins.get("limits.max_body_bytes"),
        Origin::DotEnv { var, path }
            if var == "GUARDIAN_LIMITS_MAX_BODY_BYTES" && path.ends_with(".env")
    ));
    assert_eq!(
        *origins.get("endpoints.default_min_batch"),
        origin_env("GUARDIAN_ENDPOINTS_DEFAULT_MIN_BATCH")
    );
    assert_eq!(*origins.get("limits.max_plugin_bytes"), Origin::Default);
}

#[test]
fn dotenv_file_syntax_is_dotenvy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".env");
    std::fs::write(
        &path,
        "# a comment\nexport GUARDIAN_LOG_LEVEL=\"warn,guardian=debug\"\nGUARDIAN_LOG_FORMAT='json'\n",
    )
    .unwrap();
    let environment = Environment::new().with_dotenv_file(&path).unwrap();
    let config = load(None, &environment).unwrap().config;
    assert_eq!(config.log.level, "warn,guardian=debug");
    assert_eq!(config.log.format, LogFormat::Json);

    // A missing .env file is no error; a malformed one is.
    Environment::new()
        .with_dotenv_file(&dir.path().join("absent"))
        .unwrap();
    std::fs::write(&path, "GUARDIAN_LOG_LEVEL='unterminated\n").unwrap();
    let error = Environment::new().with_dotenv_file(&path).unwrap_err();
    assert!(matches!(error, ConfigError::DotEnv { .. }), "{error}");
}

#[test]
fn every_key_can_be_set_from_the_environment() {
    let peer_token = "p".repeat(40);
    let key = |byte: u8| BASE64.encode([byte; 32]);
    let peer_keys = format!("{}, {},{}", key(1), key(2), key(3));
    // Two digests, the second in upper case (kept in lower case), blanks trimmed.
    let approved = format!("{}, {}", "ab".repeat(32), "CD".repeat(32));
    let role_json =
        r#"[{"claim": ["realm_access", "roles"], "roles": {"guardian-admin": "admin"}}]"#;
    let vars: Vec<(&str, &str)> = vec![
        ("GUARDIAN_SERVER_INDEX", "2"),
        ("GUARDIAN_SERVER_SERVERS", "3"),
        (
            "GUARDIAN_SERVER_PEERS",
            "https://a.example, https://b.example/,https://c.example",
        ),
        ("GUARDIAN_SERVER_LISTEN", "0.0.0.0:9000"),
        ("GUARDIAN_SERVER_DATA_DIR", "/srv/guardian"),
        ("GUARDIAN_SERVER_PUBLIC_URL", "https://public.example/"),
        ("GUARDIAN_SERVER_WORKER_THREADS", "3"),
        ("GUARDIAN_SERVER_KEY_FILE", "/srv/peer-key"),
        ("GUARDIAN_SERVER_PEER_KEYS", &peer_keys),
        ("GUARDIAN_LIMITS_MAX_BODY_BYTES", "1000"),
        ("GUARDIAN_LIMITS_MAX_PLUGIN_BYTES", "2000"),
        ("GUARDIAN_LIMITS_REQUEST_TIMEOUT_MS", "3000"),
        ("GUARDIAN_LIMITS_PLUGIN_DEADLINE_MS", "400"),
        ("GUARDIAN_LIMITS_PLUGIN_MEMORY_BYTES", "5000000"),
        ("GUARDIAN_LIMITS_PLUGIN_OUTPUT_BYTES", "6000"),
        ("GUARDIAN_LIMITS_PLUGIN_CONCURRENCY", "7"),
        ("GUARDIAN_LIMITS_PLUGIN_COMPILE_CONCURRENCY", "2"),
        ("GUARDIAN_LIMITS_PLUGIN_COMPILE_TIMEOUT_MS", "9000"),
        ("GUARDIAN_LIMITS_MAX_ENDPOINTS", "12"),
        ("GUARDIAN_LIMITS_MAX_PARAMS_BYTES", "4096"),
        ("GUARDIAN_LIMITS_MAX_BULK_REPORTS", "76"),
        ("GUARDIAN_LIMITS_MAX_BULK_BODY_BYTES", "77000"),
        ("GUARDIAN_LIMITS_MAX_HEADER_BYTES", "32768"),
        ("GUARDIAN_LIMITS_HEADER_READ_TIMEOUT_MS", "71"),
        ("GUARDIAN_LIMITS_REPORTS_PER_SECOND_PER_USER", "72"),
        ("GUARDIAN_LIMITS_REPORTS_BURST_PER_USER", "73"),
        ("GUARDIAN_LIMITS_REPORTS_PER_SECOND_PER_IP", "74"),
        ("GUARDIAN_LIMITS_REPORTS_BURST_PER_IP", "75"),
        ("GUARDIAN_LIMITS_TRUST_FORWARDED_FOR", "true"),
        ("GUARDIAN_ENDPOINTS_DEFAULT_MIN_BATCH", "8"),
        ("GUARDIAN_ENDPOINTS_MIN_BATCH_FLOOR", "3"),
        ("GUARDIAN_ENDPOINTS_MAX_BATCH", "80"),
        ("GUARDIAN_ENDPOINTS_REPORT_RETENTION_SECS", "81"),
        ("GUARDIAN_ENDPOINTS_REPORT_MAX_FUTURE_SKEW_SECS", "83"),
        ("GUARDIAN_ENDPOINTS_PEER_TIMEOUT_MS", "82"),
        ("GUARDIAN_ENDPOINTS_DISTINCT_USERS", "false"),
        ("GUARDIAN_PLUGINS_APPROVED", &approved),
        ("GUARDIAN_LOG_LEVEL", "trace"),
        ("GUARDIAN_LOG_FORMAT", "json"),
        ("GUARDIAN_LOG_FILE_DIR", "/var/log/g"),
        ("GUARDIAN_LOG_FILE_NAME", "g.log"),
        (
            "GUARDIAN_CORS_ALLOWED_ORIGINS",
            "https://app.example,http://localhost:3000",
        ),
        ("GUARDIAN_AUTH_DISABLED", "false"),
        ("GUARDIAN_AUTH_ISSUER", "https://sso.example/realms/r"),
        ("GUARDIAN_AUTH_AUDIENCES", "guardian,account"),
        ("GUARDIAN_AUTH_JWKS_URL", "https://sso.example/certs"),
        ("GUARDIAN_AUTH_JWKS_FILE", ""),
        ("GUARDIAN_AUTH_CA_FILE", "/etc/guardian/ca.pem"),
        ("GUARDIAN_AUTH_ALGORITHMS", "RS256,ES384"),
        ("GUARDIAN_AUTH_LEEWAY_SECS", "5"),
        ("GUARDIAN_AUTH_MAX_TOKEN_BYTES", "4096"),
        ("GUARDIAN_AUTH_JWKS_TTL_SECS", "60"),
        ("GUARDIAN_AUTH_JWKS_REFETCH_COOLDOWN_SECS", "10"),
        ("GUARDIAN_AUTH_ROLE_SOURCES", role_json),
        ("GUARDIAN_AUTH_DEV_ISSUER", "no"),
        ("GUARDIAN_AUTH_DEV_ISSUER_DIR", "/tmp/dev"),
        ("GUARDIAN_AUTH_PEER_TOKEN", &peer_token),
        ("GUARDIAN_AUTH_PEER_TOKEN_FILE", ""),
        (
            "GUARDIAN_STORAGE_URL",
            "postgres://g:pw@db.example/guardian?sslmode=require",
        ),
        ("GUARDIAN_STORAGE_PATH", "/srv/db.sqlite"),
        ("GUARDIAN_STORAGE_READ_CONNECTIONS", "9"),
        ("GUARDIAN_STORAGE_BUSY_TIMEOUT_MS", "10"),
        ("GUARDIAN_STORAGE_LEASE_TTL_MS", "4000"),
    ];
    assert_eq!(vars.len(), KEYS.len(), "one variable per key");
    let loaded = env(&vars).ok();
    let c = &loaded.config;
    assert_eq!((c.server.index, c.server.servers), (2, 3));
    assert_eq!(
        c.server.peers,
        [
            "https://a.example",
            "https://b.example",
            "https://c.example"
        ],
        "items trimmed, trailing slash dropped"
    );
    assert_eq!(
        c.server.listen,
        Some("0.0.0.0:9000".parse::<SocketAddr>().unwrap())
    );
    assert_eq!(
        c.server.data_dir.as_deref(),
        Some(Path::new("/srv/guardian"))
    );
    assert_eq!(c.server.worker_threads(), 3);
    assert_eq!(c.server.public_url(), Some("https://public.example"));
    assert_eq!(c.server.key_file(), Path::new("/srv/peer-key"));
    assert_eq!(c.server.peer_keys, [key(1), key(2), key(3)]);
    let limits = &c.limits;
    assert_eq!(
        (
            limits.max_body_bytes,
            limits.max_plugin_bytes,
            limits.request_timeout_ms
        ),
        (1000, 2000, 3000)
    );
    assert_eq!(
        (
            limits.plugin_deadline_ms,
            limits.plugin_memory_bytes,
            limits.plugin_output_bytes
        ),
        (400, 5_000_000, 6000)
    );
    assert_eq!(limits.plugin_concurrency(), 7);
    assert_eq!(
        (
            limits.plugin_compile_concurrency,
            limits.plugin_compile_timeout_ms,
            limits.max_endpoints,
            limits.max_params_bytes
        ),
        (2, 9000, 12, 4096)
    );
    assert_eq!(
        (limits.max_header_bytes, limits.header_read_timeout_ms),
        (32768, 71)
    );
    assert_eq!(
        (limits.max_bulk_reports, limits.max_bulk_body_bytes),
        (76, 77000)
    );
    assert_eq!(
        (
            limits.reports_per_second_per_user,
            limits.reports_burst_per_user,
            limits.reports_per_second_per_ip,
            limits.reports_burst_per_ip,
            limits.trust_forwarded_for
        ),
        (72, 73, 74, 75, true)
    );
    assert_eq!(c.endpoints.default_min_batch, 8);
    assert_eq!(c.endpoints.min_batch_floor, 3);
    assert_eq!(c.plugins.approved, ["ab".repeat(32), "cd".repeat(32)]);
    assert_eq!(c.plugins.approved_digests(), [[0xab; 32], [0xcd; 32]]);
    assert_eq!(
        (
            c.endpoints.max_batch,
            c.endpoints.report_retention_secs,
            c.endpoints.report_max_future_skew_secs,
            c.endpoints.peer_timeout_ms
        ),
        (80, 81, 83, 82)
    );
    assert!(!c.endpoints.distinct_users);
    assert_eq!(
        (c.log.level.as_str(), c.log.format),
        ("trace", LogFormat::Json)
    );
    assert_eq!(c.log.file_path(), Some(PathBuf::from("/var/log/g/g.log")));
    assert_eq!(
        c.cors.allowed_origins,
        ["https://app.example", "http://localhost:3000"]
    );
    let a = &c.auth;
    assert_eq!(a.issuer.as_deref(), Some("https://sso.example/realms/r"));
    assert_eq!(a.audiences, ["guardian", "account"]);
    assert_eq!(
        a.key_source(),
        Some(KeySource::Url("https://sso.example/certs"))
    );
    assert_eq!(
        a.ca_file.as_deref(),
        Some(Path::new("/etc/guardian/ca.pem"))
    );
    assert_eq!(a.algorithms, [Algorithm::Rs256, Algorithm::Es384]);
    assert_eq!((a.leeway_secs, a.max_token_bytes), (5, 4096));
    assert_eq!((a.jwks_ttl_secs, a.jwks_refetch_cooldown_secs), (60, 10));
    assert_eq!(a.role_sources.len(), 1);
    assert_eq!(a.role_sources[0].claim, ["realm_access", "roles"]);
    assert_eq!(a.role_sources[0].format, ClaimFormat::Array);
    assert_eq!(a.role_sources[0].roles["guardian-admin"], Role::Admin);
    assert_eq!(a.dev_issuer_dir, Path::new("/tmp/dev"));
    assert_eq!(
        a.peer_token.as_ref().map(Secret::expose),
        Some(peer_token.as_str())
    );
    assert_eq!(c.storage_path(), Path::new("/srv/db.sqlite"));
    assert_eq!(
        c.storage_location(),
        Ok(crate::storage::StorageLocation::Postgres(
            "postgres://g:pw@db.example/guardian?sslmode=require".to_owned()
        ))
    );
    assert_eq!(
        (
            c.storage.read_connections,
            c.storage.busy_timeout_ms,
            c.storage.lease_ttl_ms
        ),
        (9, 10, 4000)
    );
    for key in KEYS {
        assert_eq!(
            *loaded.origins.get(key.path),
            origin_env(&env_name(key.path))
        );
    }
}

#[test]
fn server_id_maps_to_the_index() {
    let check = |value: &str, index: u32| {
        let loaded = env(&[("SERVER_ID", value)]).ok();
        assert_eq!(loaded.config.server.index, index, "SERVER_ID={value}");
        assert_eq!(*loaded.origins.get("server.index"), origin_env("SERVER_ID"));
    };
    check("R_SERVER", 0);
    check("X_R_SERVER", 1);
    env(&[("SERVER_ID", "Y_SERVER")]).error(&[
        "SERVER_ID",
        "server.index",
        "expected R_SERVER (server 0) or X_R_SERVER (server 1)",
        "\"Y_SERVER\"",
    ]);
}

#[test]
fn num_clients_to_sum_is_the_default_min_batch() {
    let config = env(&[("NUM_CLIENTS_TO_SUM", "5")]).ok().config;
    assert_eq!(config.endpoints.default_min_batch, 5);
    env(&[("NUM_CLIENTS_TO_SUM", "five")]).error(&["NUM_CLIENTS_TO_SUM", "non-negative integer"]);
}

#[test]
fn log_file_variables_place_the_log_file() {
    let config = env(&[("LOG_FILE_DIR", "."), ("LOG_FILE_NAME", "r_server.log")])
        .ok()
        .config;
    assert_eq!(
        config.log.file_path(),
        Some(PathBuf::from("./r_server.log"))
    );
    // The old README put LOG_FILE_DIR in .env and LOG_FILE_NAME in the shell.
    let config = Setup {
        dotenv: &[("LOG_FILE_DIR", "/logs")],
        env: &[("LOG_FILE_NAME", "x_r_server.log")],
        ..NOTHING
    }
    .ok()
    .config;
    assert_eq!(
        config.log.file_path(),
        Some(PathBuf::from("/logs/x_r_server.log"))
    );
    // Without a directory there is no file: say so instead of dropping the logs.
    env(&[("LOG_FILE_NAME", "r_server.log")]).invalid(
        "log.file_name",
        &[
            "from environment variable LOG_FILE_NAME",
            "log.file_dir is not",
        ],
    );
    assert_eq!(Config::default().log.file_path(), None);
}

#[test]
fn oauth2_variables_configure_the_issuer_as_the_old_server_did() {
    let loaded = env(&[
        ("OAUTH2_PROVIDER_DOMAIN", "tenant.eu.auth0.com"),
        ("OAUTH2_PROVIDER_AUDIENCE", "https://guardian.example/api"),
    ])
    .ok();
    let auth = &loaded.config.auth;
    assert_eq!(auth.issuer.as_deref(), Some("https://tenant.eu.auth0.com/"));
    assert_eq!(
        auth.key_source(),
        Some(KeySource::Url(
            "https://tenant.eu.auth0.com/.well-known/jwks.json"
        ))
    );
    assert_eq!(auth.audiences, ["https://guardian.example/api"]);
    // Roles come from Auth0's `permissions` with the old permission names.
    assert_eq!(auth.role_sources.len(), 1);
    let source = &auth.role_sources[0];
    assert_eq!(source.claim, ["permissions"]);
    for (permission, role) in [
        ("post:eta-data", Role::User),
        ("create:endpoint", Role::Developer),
        ("get:eta-data", Role::Scientist),
        ("admin:tasks", Role::Admin),
        ("scientist", Role::Scientist),
    ] {
        assert_eq!(source.roles.get(permission), Some(&role), "{permission}");
    }
    for key in ["auth.issuer", "auth.jwks_url", "auth.role_sources"] {
        assert_eq!(
            *loaded.origins.get(key),
            origin_env("OAUTH2_PROVIDER_DOMAIN"),
            "{key}"
        );
    }

    // Configured role sources are kept.
    let config = Setup {
        file: Some("[[auth.role_sources]]\nclaim = [\"roles\"]\n"),
        env: &[
            ("OAUTH2_PROVIDER_DOMAIN", "tenant.auth0.com"),
            ("OAUTH2_PROVIDER_AUDIENCE", "api"),
        ],
        ..NOTHING
    }
    .ok()
    .config;
    assert_eq!(config.auth.role_sources[0].claim, ["roles"]);

    env(&[("OAUTH2_PROVIDER_DOMAIN", "https://tenant.auth0.com/")])
        .error(&["OAUTH2_PROVIDER_DOMAIN", "bare host name"]);
    // A host with a port (a Keycloak, a custom domain) keeps the port in both URLs.
    let auth = env(&[
        ("OAUTH2_PROVIDER_DOMAIN", "id.example.org:8443"),
        ("OAUTH2_PROVIDER_AUDIENCE", "api"),
    ])
    .ok()
    .config
    .auth;
    assert_eq!(auth.issuer.as_deref(), Some("https://id.example.org:8443/"));
    assert_eq!(
        auth.key_source(),
        Some(KeySource::Url(
            "https://id.example.org:8443/.well-known/jwks.json"
        ))
    );
    for bad in [
        "id.example.org:",
        "id.example.org:0",
        "id.example.org:65536",
        "id.example.org:+443",
        ":443",
        "a:1:2",
        "user@id.example.org",
        "id.example.org/realms/x",
        "[::1]:443",
        "id example.org",
    ] {
        env(&[("OAUTH2_PROVIDER_DOMAIN", bad)])
            .error(&["OAUTH2_PROVIDER_DOMAIN", "bare host name"]);
    }
    // The old audience is required along with the domain.
    env(&[("OAUTH2_PROVIDER_DOMAIN", "tenant.auth0.com")])
        .invalid("auth.audiences", &["is empty", "OAUTH2_PROVIDER_AUDIENCE"]);
}

#[test]
fn new_names_win_over_legacy_ones_in_the_same_place() {
    let loaded = env(&[
        ("SERVER_ID", "X_R_SERVER"),
        ("GUARDIAN_SERVER_INDEX", "0"),
        ("NUM_CLIENTS_TO_SUM", "5"),
        ("GUARDIAN_ENDPOINTS_DEFAULT_MIN_BATCH", "7"),
        ("OAUTH2_PROVIDER_DOMAIN", "old.auth0.com"),
        ("OAUTH2_PROVIDER_AUDIENCE", "old"),
        ("GUARDIAN_AUTH_ISSUER", "https://new.example/"),
        ("GUARDIAN_AUTH_AUDIENCES", "new"),
    ])
    .ok();
    let config = &loaded.config;
    assert_eq!(config.server.index, 0);
    assert_eq!(config.endpoints.default_min_batch, 7);
    assert_eq!(config.auth.issuer.as_deref(), Some("https://new.example/"));
    assert_eq!(config.auth.audiences, ["new"]);
    // The legacy issuer was replaced, so its role mapping does not apply either.
    assert_eq!(
        config.auth.role_sources,
        Config::default().auth.role_sources
    );
    assert_eq!(
        *loaded.origins.get("server.index"),
        origin_env("GUARDIAN_SERVER_INDEX")
    );

    // Across places the later one wins, whatever the names.
    let config = Setup {
        dotenv: &[("GUARDIAN_SERVER_INDEX", "0")],
        env: &[("SERVER_ID", "X_R_SERVER")],
        ..NOTHING
    }
    .ok()
    .config;
    assert_eq!(config.server.index, 1);
    let config = Setup {
        file: Some("[server]\nindex = 1\n"),
        dotenv: &[("SERVER_ID", "R_SERVER")],
        ..NOTHING
    }
    .ok()
    .config;
    assert_eq!(config.server.index, 0);
}

#[test]
fn empty_legacy_variables_count_as_unset() {
    let config = env(&[("SERVER_ID", ""), ("OAUTH2_PROVIDER_DOMAIN", " ")])
        .ok()
        .config;
    assert_eq!(config, Config::default());
}

#[test]
fn unknown_keys_are_rejected() {
    let error = file("[server]\nindx = 1\n").error(&["indx", "guardian.toml"]);
    assert!(matches!(error, ConfigError::ParseFile { .. }));
    file("[servr]\nindex = 1\n").error(&["servr"]);
    file("[[auth.role_sources]]\nclaim = [\"roles\"]\nrole = {}\n").error(&["role"]);
    file("[server]\nindex = \"one\"\n").error(&["guardian.toml", "index"]);

    env(&[("GUARDIAN_SERVER_INDX", "1")]).error(&[
        "GUARDIAN_SERVER_INDX",
        "unknown setting in [server]",
        "GUARDIAN_SERVER_INDEX",
    ]);
    Setup {
        dotenv: &[("GUARDIAN_AUTH_ISUER", "x")],
        ..NOTHING
    }
    .error(&["GUARDIAN_AUTH_ISUER", ".env", "unknown setting in [auth]"]);
    // The client's variables, and other programs' GUARDIAN_ names, are not ours.
    let config = env(&[
        ("GUARDIAN_SERVERS", "http://a,http://b"),
        ("GUARDIAN_TOKEN", "t"),
        ("GUARDIAN_ANGEL", "x"),
    ])
    .ok()
    .config;
    assert_eq!(config, Config::default());
}

#[test]
fn unparsable_environment_values_name_variable_and_key() {
    env(&[("GUARDIAN_SERVER_INDEX", "-1")]).error(&[
        "server.index (from GUARDIAN_SERVER_INDEX in the environment)",
        "\"-1\"",
    ]);
    env(&[("GUARDIAN_SERVER_LISTEN", "localhost")]).error(&["GUARDIAN_SERVER_LISTEN"]);
    env(&[("GUARDIAN_AUTH_DISABLED", "maybe")]).error(&["auth.disabled", "true or false"]);
    env(&[("GUARDIAN_LOG_FORMAT", "xml")]).error(&["log.format", "`text` or `json`"]);
    env(&[("GUARDIAN_AUTH_ROLE_SOURCES", "permissions")]).error(&["auth.role_sources", "JSON"]);
    env(&[(
        "GUARDIAN_AUTH_ROLE_SOURCES",
        r#"[{"claim": ["r"], "roles": {"x": "root"}}]"#,
    )])
    .error(&["auth.role_sources", "root"]);
}

#[test]
fn symmetric_and_unsigned_algorithms_are_refused_at_load() {
    let error = env(&[("GUARDIAN_AUTH_ALGORITHMS", "RS256,HS256")])
        .error(&["auth.algorithms", "HS256 is not allowed (asymmetric only"]);
    assert!(matches!(
        error,
        ConfigError::Env {
            key: Some("auth.algorithms"),
            ..
        }
    ));
    file("[auth]\nalgorithms = [\"HS512\"]\n").error(&["HS512 is not allowed (asymmetric only"]);
    for none in ["none", "None", "NONE", "nOnE"] {
        env(&[("GUARDIAN_AUTH_ALGORITHMS", none)]).error(&["unsigned tokens are never accepted"]);
    }
    env(&[("GUARDIAN_AUTH_ALGORITHMS", "rs256")]).error(&["unknown algorithm", "RS256"]);
    let all = Algorithm::ALL.map(Algorithm::as_str).join(",");
    let config = env(&[("GUARDIAN_AUTH_ALGORITHMS", all.as_str())])
        .ok()
        .config;
    assert_eq!(config.auth.algorithms, Algorithm::ALL);
}

/// A valid `[auth]` section for a real provider, to which tests add one mistake.
const PROVIDER: &str = "[auth]\nissuer = \"https://sso.example/\"\naudiences = [\"guardian\"]\n";

#[test]
fn validation_names_key_value_and_origin() {
    env(&[("GUARDIAN_SERVER_INDEX", "3")]).invalid(
        "server.index",
        &[
            "server.index = 3 (from environment variable GUARDIAN_SERVER_INDEX) but server.servers = 2 (default)",
        ],
    );
    file("[server]\nservers = 1\npeers = [\"http://a\"]\n").invalid(
        "server.servers",
        &["server.servers = 1 (from ", "guardian.toml", "at least 2"],
    );
    file("[server]\nservers = 3\n").invalid(
        "server.peers",
        &["server.peers (default) has 2 entries but server.servers = 3 (from "],
    );
    env(&[("GUARDIAN_SERVER_PEERS", "http://a,ftp://b")])
        .invalid("server.peers", &["entry 1", "\"ftp://b\"", "scheme"]);
    env(&[("GUARDIAN_SERVER_PEERS", "http://a,http://a/")])
        .invalid("server.peers", &["entries 0 and 1"]);
    env(&[("GUARDIAN_SERVER_PEERS", "http://a,https://user:pw@b")])
        .invalid("server.peers", &["credentials"]);
    env(&[("GUARDIAN_SERVER_PEERS", "http://a,https://b?x=1")]).invalid("server.peers", &["query"]);
    env(&[("GUARDIAN_SERVER_PEERS", "http://a,https://b:99999")])
        .invalid("server.peers", &["port"]);
    env(&[("GUARDIAN_SERVER_PUBLIC_URL", "share.example")])
        .invalid("server.public_url", &["not a URL"]);
    file("[server]\ndata_dir = \"\"\n").invalid("server.data_dir", &["empty path"]);

    // The derived port 8000 + index must exist.
    let mut config = Config::default();
    config.server.servers = 60_000;
    config.server.index = 59_000;
    config.server.peers = (0..60_000).map(|i| format!("http://h{i}")).collect();
    let Err(ConfigError::Invalid { problems }) = config.validate() else {
        panic!("expected a validation error");
    };
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].key, "server.listen");
    assert!(
        problems[0]
            .message
            .contains("server.index = 59000 (default)"),
        "{}",
        problems[0]
    );
    config.server.listen = Some("0.0.0.0:443".parse().unwrap());
    config.validate().unwrap();
}

#[test]
fn validation_of_limits() {
    for key in [
        "max_body_bytes",
        "max_plugin_bytes",
        "request_timeout_ms",
        "plugin_deadline_ms",
        "plugin_output_bytes",
        "plugin_concurrency",
        "header_read_timeout_ms",
        "plugin_compile_concurrency",
        "plugin_compile_timeout_ms",
        "max_endpoints",
        "max_params_bytes",
        "max_bulk_reports",
        "max_bulk_body_bytes",
    ] {
        let var = format!("GUARDIAN_LIMITS_{}", key.to_ascii_uppercase());
        let path = format!("limits.{key}");
        env(&[(var.as_str(), "0")]).invalid(
            KEYS.iter().find(|k| k.path == path).unwrap().path,
            &[&format!("{path} = 0"), "greater than 0"],
        );
    }
    env(&[("GUARDIAN_LIMITS_PLUGIN_MEMORY_BYTES", "65536")])
        .invalid("limits.plugin_memory_bytes", &["at least 1048576"]);
    // The longest token must fit in the request head.
    env(&[("GUARDIAN_LIMITS_MAX_HEADER_BYTES", "9000")]).invalid(
        "limits.max_header_bytes",
        &[
            "limits.max_header_bytes = 9000",
            "at least 9216",
            "auth.max_token_bytes = 8192",
        ],
    );
    env(&[
        ("GUARDIAN_LIMITS_MAX_HEADER_BYTES", "2000"),
        ("GUARDIAN_AUTH_MAX_TOKEN_BYTES", "512"),
    ])
    .invalid("limits.max_header_bytes", &["at least 4096"]);
    env(&[
        ("GUARDIAN_LIMITS_MAX_HEADER_BYTES", "5000"),
        ("GUARDIAN_AUTH_MAX_TOKEN_BYTES", "512"),
    ])
    .ok();
    file("[limits]\nplugin_deadline_ms = 5000\nrequest_timeout_ms = 2000\n").invalid(
        "limits.plugin_deadline_ms",
        &["exceeds limits.request_timeout_ms = 2000"],
    );
    env(&[("GUARDIAN_ENDPOINTS_DEFAULT_MIN_BATCH", "1")])
        .invalid("endpoints.default_min_batch", &["at least 2"]);
    // The floor: at least 2, and the default may not be below it.
    for floor in ["0", "1"] {
        env(&[("GUARDIAN_ENDPOINTS_MIN_BATCH_FLOOR", floor)]).invalid(
            "endpoints.min_batch_floor",
            &[
                &format!("endpoints.min_batch_floor = {floor}"),
                "at least 2",
            ],
        );
    }
    env(&[
        ("GUARDIAN_ENDPOINTS_MIN_BATCH_FLOOR", "20"),
        ("GUARDIAN_ENDPOINTS_DEFAULT_MIN_BATCH", "10"),
    ])
    .invalid(
        "endpoints.default_min_batch",
        &[
            "endpoints.default_min_batch = 10",
            "at least endpoints.min_batch_floor = 20",
        ],
    );
    env(&[
        ("GUARDIAN_ENDPOINTS_MIN_BATCH_FLOOR", "20"),
        ("GUARDIAN_ENDPOINTS_DEFAULT_MIN_BATCH", "20"),
    ])
    .ok();
    env(&[("GUARDIAN_ENDPOINTS_MAX_BATCH", "5")]).invalid(
        "endpoints.max_batch",
        &["endpoints.max_batch = 5", "at least"],
    );
    env(&[("GUARDIAN_ENDPOINTS_REPORT_RETENTION_SECS", "0")])
        .invalid("endpoints.report_retention_secs", &["must be positive"]);
    env(&[("GUARDIAN_ENDPOINTS_PEER_TIMEOUT_MS", "0")])
        .invalid("endpoints.peer_timeout_ms", &["must be positive"]);
    env(&[("NUM_CLIENTS_TO_SUM", "1")]).invalid(
        "endpoints.default_min_batch",
        &["from environment variable NUM_CLIENTS_TO_SUM"],
    );
    env(&[("GUARDIAN_STORAGE_READ_CONNECTIONS", "0")])
        .invalid("storage.read_connections", &["greater than 0"]);
    env(&[("GUARDIAN_STORAGE_BUSY_TIMEOUT_MS", "0")])
        .invalid("storage.busy_timeout_ms", &["greater than 0"]);
    env(&[("GUARDIAN_STORAGE_LEASE_TTL_MS", "29")])
        .invalid("storage.lease_ttl_ms", &["at least 30"]);
}

#[test]
fn approved_plugins_are_digests() {
    let digest = "0123456789abcdef".repeat(4);
    let loaded = env(&[("GUARDIAN_PLUGINS_APPROVED", &digest)]).ok();
    assert_eq!(loaded.config.plugins.approved, [digest.as_str()]);
    file(&format!("[plugins]\napproved = [\"{digest}\"]\n")).ok();
    // A name, a short digest and a non-hex one: each entry is named with its index.
    for (value, entry) in [
        ("sum", "entry 0 (\"sum\")"),
        (&digest[..63], "entry 0"),
        (&format!("{digest},{}", "g".repeat(64)), "entry 1"),
    ] {
        env(&[("GUARDIAN_PLUGINS_APPROVED", value)]).invalid(
            "plugins.approved",
            &[
                "plugins.approved (from environment variable GUARDIAN_PLUGINS_APPROVED)",
                entry,
                "64 hex digits",
            ],
        );
    }
}

#[test]
fn validation_of_log_and_cors() {
    env(&[("GUARDIAN_LOG_LEVEL", "loud=[")]).invalid("log.level", &["\"loud=[\"", "filter"]);
    env(&[("GUARDIAN_LOG_LEVEL", " ")]).invalid("log.level", &["must not be empty"]);
    env(&[
        ("GUARDIAN_LOG_FILE_DIR", "/l"),
        ("GUARDIAN_LOG_FILE_NAME", "../x.log"),
    ])
    .invalid("log.file_name", &["plain file name"]);

    env(&[("GUARDIAN_CORS_ALLOWED_ORIGINS", "https://app.example/")])
        .invalid("cors.allowed_origins", &["not an origin", "\"/\""]);
    env(&[("GUARDIAN_CORS_ALLOWED_ORIGINS", "*,https://app.example")])
        .invalid("cors.allowed_origins", &["only entry"]);
    env(&[("GUARDIAN_CORS_ALLOWED_ORIGINS", "app.example")])
        .invalid("cors.allowed_origins", &["\"app.example\""]);
    env(&[("GUARDIAN_CORS_ALLOWED_ORIGINS", "*")]).ok();
}

#[test]
fn validation_of_auth() {
    file(PROVIDER).ok();
    file("[auth]\nissuer = \"https://sso.example/\"\n")
        .invalid("auth.audiences", &["auth.audiences (default) is empty"]);
    file("[auth]\nissuer = \"http://sso.example/\"\naudiences = [\"a\"]\n")
        .invalid("auth.issuer", &["must use https"]);
    file("[auth]\nissuer = \"http://127.0.0.1:9000/\"\naudiences = [\"a\"]\n").ok();
    file("[auth]\nissuer = \"http://localhost:9000/realms/x\"\naudiences = [\"a\"]\n").ok();
    file(&format!(
        "{PROVIDER}jwks_url = \"http://keys.example/jwks\"\n"
    ))
    .invalid("auth.jwks_url", &["must use https"]);
    file(&format!(
        "{PROVIDER}jwks_url = \"https://k.example/\"\njwks_file = \"k.json\"\n"
    ))
    .invalid("auth.jwks_url", &["both set"]);
    file("[auth]\njwks_file = \"k.json\"\n").invalid("auth.jwks_file", &["auth.issuer is not"]);
    // Checked with token checks off too: peers are called with the same trust.
    file("[auth]\ndisabled = true\nca_file = \"\"\n").invalid("auth.ca_file", &["empty path"]);
    file(&format!("{PROVIDER}dev_issuer = true\n")).invalid(
        "auth.issuer",
        &["auth.dev_issuer = true", "one or the other"],
    );
    file(&format!("{PROVIDER}algorithms = []\n")).invalid("auth.algorithms", &["is empty"]);
    file(&format!("{PROVIDER}leeway_secs = 3600\n")).invalid("auth.leeway_secs", &["at most 300"]);
    file(&format!("{PROVIDER}max_token_bytes = 100\n"))
        .invalid("auth.max_token_bytes", &["between 512 and 65536"]);
    file(&format!("{PROVIDER}jwks_refetch_cooldown_secs = 0\n"))
        .invalid("auth.jwks_refetch_cooldown_secs", &["greater than 0"]);
    file(&format!("{PROVIDER}role_sources = []\n")).invalid("auth.role_sources", &["403"]);
    file(&format!(
        "{PROVIDER}[[auth.role_sources]]\nclaim = [\"a\", \"\"]\nroles = {{}}\n"
    ))
    .invalid(
        "auth.role_sources",
        &["entry 0", "empty segment", "maps no value"],
    );
    file(&format!(
        "{PROVIDER}[[auth.role_sources]]\nclaim = [\"scope\"]\nformat = \"space_delimited\"\nroles = {{ \"read all\" = \"user\" }}\n"
    ))
    .invalid("auth.role_sources", &["\"read all\""]);

    env(&[("GUARDIAN_AUTH_PEER_TOKEN", "short-secret")])
        .invalid("auth.peer_token", &["too short", "openssl rand"]);
    let key = BASE64.encode([7; 32]);
    env(&[("GUARDIAN_SERVER_PEER_KEYS", &key)])
        .invalid("server.peer_keys", &["1 entries", "guardian peer-key"]);
    env(&[("GUARDIAN_SERVER_PEER_KEYS", &format!("{key},not-a-key"))])
        .invalid("server.peer_keys", &["entry 1", "not base64"]);
    env(&[(
        "GUARDIAN_SERVER_PEER_KEYS",
        &format!("{key},{}", BASE64.encode([7; 16])),
    )])
    .invalid("server.peer_keys", &["entry 1", "16 bytes", "32"]);
    let error = env(&[("GUARDIAN_AUTH_PEER_TOKEN", "short-secret")]).error(&[]);
    assert!(!error.to_string().contains("short-secret"), "{error}");
    let token = "t".repeat(32);
    env(&[
        ("GUARDIAN_AUTH_PEER_TOKEN", token.as_str()),
        ("GUARDIAN_AUTH_PEER_TOKEN_FILE", "/run/p"),
    ])
    .invalid("auth.peer_token", &["both set"]);

    // Every problem is reported at once.
    let Err(ConfigError::Invalid { problems }) =
        file("[server]\nindex = 5\n[auth]\nleeway_secs = 900\n").load()
    else {
        panic!("expected validation errors");
    };
    let keys: Vec<_> = problems.iter().map(|p| p.key).collect();
    assert_eq!(keys, ["server.index", "auth.leeway_secs"]);
}

#[test]
fn dev_issuer_and_disabled_auth() {
    let config = env(&[("GUARDIAN_AUTH_DEV_ISSUER", "true")]).ok().config;
    assert_eq!(
        config.auth.key_source(),
        Some(KeySource::DevIssuer(Path::new("guardian-data/dev-issuer")))
    );
    // Disabled authentication ignores the token settings but says so loudly.
    let config = file("[auth]\ndisabled = true\nissuer = \"http://x.example\"\n")
        .ok()
        .config;
    assert!(
        config
            .warnings()
            .iter()
            .any(|w| w.contains("authentication is disabled"))
    );
    // ... while the peer credential is still checked.
    env(&[
        ("GUARDIAN_AUTH_DISABLED", "1"),
        ("GUARDIAN_AUTH_PEER_TOKEN", "x"),
    ])
    .invalid("auth.peer_token", &["too short"]);
}

#[test]
fn key_source_order() {
    let mut auth = AuthConfig {
        issuer: Some("https://i.example/".to_owned()),
        ..AuthConfig::default()
    };
    assert_eq!(
        auth.key_source(),
        Some(KeySource::Discovery("https://i.example/"))
    );
    auth.jwks_url = Some("https://i.example/jwks".to_owned());
    assert_eq!(
        auth.key_source(),
        Some(KeySource::Url("https://i.example/jwks"))
    );
    auth.jwks_file = Some(PathBuf::from("k.json"));
    assert_eq!(
        auth.key_source(),
        Some(KeySource::File(Path::new("k.json")))
    );
}

#[test]
fn warnings_for_a_bare_default() {
    let warnings = Config::default().warnings();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(warnings[0].contains("no token issuer"));
    assert!(warnings[1].contains("no peer keys"));
    let config = env(&[(
        "GUARDIAN_SERVER_PEERS",
        "http://10.0.0.1:8000,https://b.example",
    )])
    .ok()
    .config;
    assert!(config.warnings().iter().any(|w| w.contains("plain http")));
}

#[test]
fn render_shows_origins_and_hides_secrets() {
    let secret = "s3cr3t-".repeat(6);
    let loaded = Setup {
        file: Some("[log]\nlevel = \"debug\"\n"),
        env: &[
            ("GUARDIAN_AUTH_PEER_TOKEN", secret.as_str()),
            ("SERVER_ID", "X_R_SERVER"),
        ],
        ..NOTHING
    }
    .ok();
    let text = loaded.render();
    assert!(!text.contains(&secret), "{text}");
    assert!(!format!("{loaded:?}").contains(&secret));
    assert!(
        text.contains(
            "auth.peer_token = \"<redacted>\" (from environment variable GUARDIAN_AUTH_PEER_TOKEN)"
        ),
        "{text}"
    );
    assert!(
        text.contains("server.index = 1 (from environment variable SERVER_ID)"),
        "{text}"
    );
    assert!(text.contains("log.level = \"debug\" (from "), "{text}");
    // Derived defaults are written out as the server will use them.
    assert!(
        text.contains("server.listen = \"127.0.0.1:8001\" (default)"),
        "{text}"
    );
    assert!(
        text.contains("server.public_url = \"http://127.0.0.1:8001\" (default)"),
        "{text}"
    );
    assert!(text.contains("auth.issuer = (not set) (default)"), "{text}");
    assert_eq!(text.lines().count(), KEYS.len());
}

#[test]
fn storage_url_selects_postgres_and_never_shows_its_password() {
    use crate::storage::StorageLocation;

    // Unset: the SQLite file, as before.
    let config = NOTHING.ok().config;
    assert_eq!(
        config.storage_location(),
        Ok(StorageLocation::Sqlite(config.storage_path()))
    );

    // From the file, then overridden by the environment.
    let url = "postgres://guardian:hunter2@db.example:5433/shares?sslmode=require";
    let loaded = Setup {
        file: Some("[storage]\nurl = \"postgresql://guardian@127.0.0.1/from_file\"\n"),
        env: &[("GUARDIAN_STORAGE_URL", url)],
        ..NOTHING
    }
    .ok();
    assert_eq!(
        loaded.config.storage_location(),
        Ok(StorageLocation::Postgres(url.to_owned()))
    );
    assert_eq!(
        *loaded.origins.get("storage.url"),
        origin_env("GUARDIAN_STORAGE_URL")
    );
    let from_file = file("[storage]\nurl = \"postgresql://guardian@127.0.0.1/from_file\"\n").ok();
    assert_eq!(
        from_file.config.storage_location(),
        Ok(StorageLocation::Postgres(
            "postgresql://guardian@127.0.0.1/from_file".to_owned()
        ))
    );
    // An empty variable clears it: back to SQLite.
    let cleared = Setup {
        file: Some("[storage]\nurl = \"postgres://g@127.0.0.1/x\"\n"),
        env: &[("GUARDIAN_STORAGE_URL", "")],
        ..NOTHING
    }
    .ok();
    assert!(matches!(
        cleared.config.storage_location(),
        Ok(StorageLocation::Sqlite(_))
    ));

    // The password appears nowhere: not in the rendered configuration, its debug
    // form, the location's display, nor a warning (no TLS to a remote host).
    let text = loaded.render();
    assert!(
        text.contains(
            "storage.url = \"postgres://guardian:***@db.example:5433/shares\" (from environment variable GUARDIAN_STORAGE_URL)"
        ),
        "{text}"
    );
    // With a URL the database path is not derived (it would not be used).
    assert!(text.contains("storage.path = (not set)"), "{text}");
    let plain = env(&[(
        "GUARDIAN_STORAGE_URL",
        "postgres://guardian:hunter2@db.example/shares",
    )])
    .ok();
    let warnings = plain.config.warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("without sslmode=require")),
        "{warnings:#?}"
    );
    assert!(
        !loaded
            .config
            .warnings()
            .iter()
            .any(|w| w.contains("sslmode")),
        "TLS required: no warning"
    );
    for shown in [
        text,
        format!("{loaded:?}"),
        loaded.config.storage_location().unwrap().to_string(),
        warnings.join("\n"),
    ] {
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

#[test]
fn storage_url_must_be_a_postgres_url() {
    env(&[("GUARDIAN_STORAGE_URL", "mysql://root:hunter2@db/x")]).invalid(
        "storage.url",
        &[
            "storage.url = mysql://root:***@db/x (from environment variable GUARDIAN_STORAGE_URL)",
            "must start with postgres:// or postgresql://",
            "storage.path",
        ],
    );
    env(&[("GUARDIAN_STORAGE_URL", "/srv/guardian.sqlite")])
        .invalid("storage.url", &["must start with postgres://"]);
    // libpq's verify-full is not a mode of the driver: say what to use instead.
    env(&[(
        "GUARDIAN_STORAGE_URL",
        "postgres://g:hunter2@db.example/x?sslmode=verify-full",
    )])
    .invalid(
        "storage.url",
        &["not a usable PostgreSQL URL", "use sslmode=require"],
    );
    file("[storage]\nurl = \"postgres://g@db.example:notaport/x\"\n")
        .invalid("storage.url", &["not a usable PostgreSQL URL"]);
    let error = env(&[("GUARDIAN_STORAGE_URL", "mysql://root:hunter2@db/x")])
        .error(&["storage.url"])
        .to_string();
    assert!(!error.contains("hunter2"), "{error}");
}

#[test]
fn unreadable_file_is_an_error() {
    let error = load(
        Some(Path::new("/nonexistent/guardian.toml")),
        &Environment::new(),
    )
    .unwrap_err();
    assert!(matches!(error, ConfigError::ReadFile { .. }));
    assert!(
        error.to_string().contains("/nonexistent/guardian.toml"),
        "{error}"
    );
}
