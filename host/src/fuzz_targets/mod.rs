//! Fuzz targets: one plain function per decoder that reads untrusted bytes,
//! each driving the server's own code path (no copy of it).
//!
//! - [`report_json`]: the body of `POST /api/v1/endpoints/{name}/reports`, parsed
//!   and checked as the handler does (JSON, 32-hex report id, base64 share);
//! - [`share_validate`]: a share through a built-in plugin's `validate`, as wasm
//!   in the real [`Runtime`];
//! - [`share_codec`]: the SDK's share codec, natively;
//! - [`jwt_header`]: an `Authorization` header through [`JwtAuthenticator`]
//!   with a fixed local key set and a fixed clock;
//! - [`plugin_upload`]: an uploaded plugin through [`Runtime::load`].
//!
//! `fuzz/` runs each under AFL++ (one binary per target); `host/tests/fuzz_corpus.rs`
//! replays the committed corpus through the same functions in the normal test
//! suite. None of them may panic on any input: a panic here is a crash the fuzzer
//! reports. Besides "no panic", each asserts what the API promises for bad input
//! (the documented error codes, a plugin refusing a share rather than trapping).
//! Expensive state (wasm runtime, authenticator) is built once per process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderValue, Request, StatusCode};
use guardian_sdk::Codec as _;

use crate::auth::{
    Authenticator as _, Clock, DEV_AUDIENCE, DEV_ISSUER, JwtAuthenticator, Principal,
};
use crate::config::AuthConfig;
use crate::runtime::{CallError, Plugin, Runtime, RuntimeOptions};
use crate::server::ApiError;

/// A fuzz target: runs one input, panics on a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory and fuzz binary.
pub const TARGETS: &[(&str, Target)] = &[
    ("report_json", report_json),
    ("share_validate", share_validate),
    ("share_codec", share_codec),
    ("jwt_header", jwt_header),
    ("plugin_upload", plugin_upload),
];

/// The body of a posted report, through [`crate::server::parse_report_body`]: the
/// JSON extractor's parse, then the handler's report id and share checks. Bad
/// input must be one of the three documented 400s.
pub fn report_json(data: &[u8]) {
    if let Err(e) = crate::server::parse_report_body(data) {
        assert_eq!(
            e.status,
            StatusCode::BAD_REQUEST,
            "{}: {}",
            e.code,
            e.message
        );
        assert!(
            matches!(
                e.code,
                "malformed_json" | "invalid_report_id" | "invalid_share_encoding"
            ),
            "undocumented code {}: {}",
            e.code,
            e.message
        );
    }
}

/// Where [`share_validate`] caches the compiled built-ins; see [`cache_artifacts_in`].
static ARTIFACTS: OnceLock<PathBuf> = OnceLock::new();

/// Makes [`share_validate`] cache the compiled built-ins in `dir` (call it before
/// the first input), as a server caches them in its data directory. The fuzzer
/// starts many processes, and compiling every built-in takes seconds, more than
/// it allows one input. `dir` must be written by nobody else: artifacts are
/// trusted native code.
pub fn cache_artifacts_in(dir: PathBuf) {
    let _ = ARTIFACTS.set(dir);
}

/// The built-ins with a configuration each, loaded once per process.
static PLUGINS: LazyLock<Vec<(Plugin, Vec<u8>)>> = LazyLock::new(|| {
    let runtime = Runtime::new(RuntimeOptions {
        cache_dir: ARTIFACTS.get().cloned(),
        ..RuntimeOptions::default()
    })
    .expect("plugin runtime");
    [
        ("sum", r#"{"length": 4}"#),
        ("sum", r#"{"length": 2, "signed": true}"#),
        ("count", "{}"),
        ("mean", r#"{"length": 3}"#),
        ("histogram", r#"{"buckets": 5}"#),
        ("dp-histogram", r#"{"buckets": 3, "epsilon": 1.0}"#),
        ("dp-sum", r#"{"length": 2, "bound": 10, "epsilon": 1.0}"#),
    ]
    .into_iter()
    .map(|(name, params)| {
        let plugin = runtime
            .load_builtin(name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let config = plugin
            .configure(params)
            .unwrap_or_else(|e| panic!("{name} {params}: {e}"));
        (plugin, config)
    })
    .collect()
});

/// A share through a built-in's `validate` as wasm. The first byte picks the
/// plugin and configuration (its value modulo their number) and the server index
/// (its top bit); the rest is the share. A built-in must refuse a bad share with
/// `invalid_share`, never trap, run out of memory or fail otherwise.
pub fn share_validate(data: &[u8]) {
    let Some((&selector, share)) = data.split_first() else {
        return;
    };
    let (plugin, config) = &PLUGINS[usize::from(selector & 0x7f) % PLUGINS.len()];
    let server_index = u32::from(selector >> 7);
    match plugin.validate(config, share, server_index) {
        Ok(()) | Err(CallError::Rejected(guardian_sdk::Error::InvalidShare(_))) => {}
        // A loaded machine can push a call past its deadline; that is not the
        // plugin's fault and the server answers it cleanly.
        Err(CallError::Timeout(_)) => {}
        Err(e) => panic!("{} refused a share wrongly: {e}", plugin.info().name),
    }
}

/// The SDK's share codec, natively: decoding never panics, and whatever decodes
/// encodes back to the same bytes.
pub fn share_codec(data: &[u8]) {
    if let Ok(elements) = Vec::<u64>::decode(data) {
        assert_eq!(elements.encode(), data);
    } else {
        assert!(!data.len().is_multiple_of(8));
    }
}

/// The time the jwt target's clock (token cache, key refetch) always shows: one
/// minute after the seed tokens were issued (`fuzz/make_jwt_seeds.py`).
/// `jsonwebtoken` checks `exp` and `nbf` against the system clock, so the valid
/// seeds expire only in 2100.
const FIXED_NOW: Duration = Duration::from_secs(1_700_000_060);

struct FixedClock;

impl Clock for FixedClock {
    fn now(&self) -> Duration {
        FIXED_NOW
    }
}

/// The verifier's key set: public keys only (RSA, P-256, Ed25519).
const JWKS: &str = include_str!("jwks.json");

/// A runtime to drive the async verifier and the verifier itself, trusting the
/// development issuer's `iss`/`aud` and the keys of [`JWKS`].
static VERIFIER: LazyLock<(tokio::runtime::Runtime, JwtAuthenticator)> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // One file per content, replaced atomically, so that many fuzzing processes
    // share it and none leaves files behind.
    let digest = hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(JWKS)[..8]);
    let path = std::env::temp_dir().join(format!("guardian-fuzz-jwks-{digest}.json"));
    if std::fs::read_to_string(&path).ok().as_deref() != Some(JWKS) {
        let temp = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&temp, JWKS).expect("writing the fuzz JWKS");
        std::fs::rename(&temp, &path).expect("publishing the fuzz JWKS");
    }
    let config = AuthConfig {
        issuer: Some(DEV_ISSUER.to_owned()),
        audiences: vec![DEV_AUDIENCE.to_owned()],
        jwks_file: Some(path),
        ..AuthConfig::default()
    };
    let verifier = runtime
        .block_on(JwtAuthenticator::with_clock(&config, Arc::new(FixedClock)))
        .expect("verifier");
    (runtime, verifier)
});

/// An `Authorization` header value through the verifier's `authenticate`, as the
/// server calls it for every request: bearer parsing, size check, cache, shape,
/// header decode, `alg` allow-list, `kid` and key type, then the signature and
/// claims. Refusals must be 401s (the keys are local, so never "unavailable").
pub fn jwt_header(data: &[u8]) {
    match authenticate(data) {
        None => {}
        Some(Ok(principal)) => assert!(!principal.sub.is_empty()),
        Some(Err(e)) => assert_eq!(
            e.status,
            StatusCode::UNAUTHORIZED,
            "{}: {}",
            e.code,
            e.message
        ),
    }
}

/// What [`jwt_header`]'s verifier answers to an `Authorization` header value, as the
/// server answers it (status and code);
/// `None` for bytes that are not a header value (HTTP parsing refuses them
/// before the server sees them). The corpus test uses it to check that the valid
/// seed tokens get past the signature check.
pub fn authenticate(data: &[u8]) -> Option<Result<Principal, ApiError>> {
    let value = HeaderValue::from_bytes(data).ok()?;
    let (parts, ()) = Request::builder()
        .header(AUTHORIZATION, value)
        .body(())
        .expect("request")
        .into_parts();
    let (runtime, verifier) = &*VERIFIER;
    Some(
        runtime
            .block_on(verifier.authenticate(&parts))
            .map_err(ApiError::from),
    )
}

/// The runtime uploads are loaded into.
static UPLOADS: LazyLock<Runtime> =
    LazyLock::new(|| Runtime::new(RuntimeOptions::default()).expect("plugin runtime"));

/// An uploaded plugin through [`Runtime::load`]: parse, compile, type-check and
/// the plugin's `info` call. Anything may be refused; nothing may panic.
pub fn plugin_upload(data: &[u8]) {
    let _ = UPLOADS.load(data);
}
