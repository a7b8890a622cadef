//! The issuer's verification keys: where they come from, which are usable, and when
//! they are fetched again.
//!
//! [`Keys`] holds the current [`KeySet`]. It is (re)loaded from its [`Source`]:
//!
//! - when it is older than the TTL (`auth.jwks_ttl_secs`),
//! - when a token names a `kid` the set does not have,
//!
//! but never twice within the cooldown (`auth.jwks_refetch_cooldown_secs`), so that a
//! flood of made-up key ids or a provider that is down cannot cause a fetch storm.
//! A load is single-flight: callers that need one while another is running wait for
//! that one and use its result. A load that fails, or that finds no usable key, keeps
//! the keys already held. The request that finds the keys stale waits for the load
//! (bounded by the HTTP timeouts); everyone else keeps using the current set.
//!
//! A key that cannot be used is skipped with a log line, never fatal: symmetric
//! (`oct`) keys, encryption keys, curves and sizes the verifier does not support,
//! anything that does not parse. The token header's own key hints (`jku`, `jwk`,
//! `x5u`, `x5c`) are never followed: keys come only from the configured source.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aws_lc_rs::signature::RsaPublicKeyComponents;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{DecodingKey, DecodingKeyKind};
use serde::Deserialize;
use serde_json::Value;

use super::Clock;
use super::error::TokenError;
use crate::config::{Algorithm, KeySource};
use crate::tls::{self, ExtraRoots};

/// Largest JWKS, discovery document or key file read (real ones are a few KiB).
pub const MAX_DOCUMENT_BYTES: usize = 256 << 10;
/// Time allowed to connect to the issuer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a whole request to the issuer, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Redirects followed when fetching keys.
const MAX_REDIRECTS: usize = 3;
/// The path OIDC discovery appends to the issuer.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// The JWKS file of a development issuer directory.
pub const DEV_JWKS_FILE: &str = "jwks.json";

/// Why loading keys failed. Messages name the source, never key material.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// A local key file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An HTTP request failed (connection, timeout, status).
    #[error("fetching {url}: {message}")]
    Http {
        /// What was fetched.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The HTTP client could not be built (TLS setup, e.g. a system CA store that
    /// holds no usable certificate).
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// A document was larger than [`MAX_DOCUMENT_BYTES`].
    #[error("{what} is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge {
        /// The URL or file.
        what: String,
    },
    /// A document was not what it should be (not JSON, no `keys`, no `jwks_uri`, …).
    #[error("{what}: {message}")]
    Invalid {
        /// The URL or file.
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// The source parsed but held no key this server can use.
    #[error("{what} has no usable signature verification key")]
    NoUsableKeys {
        /// The URL or file.
        what: String,
    },
}

/// Where keys are loaded from (an owned [`KeySource`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A local JWKS (JSON) or PEM public key file, read again on every load.
    File(PathBuf),
    /// A JWKS URL.
    Url(String),
    /// OIDC discovery: `{issuer}/.well-known/openid-configuration` names the JWKS.
    Discovery(String),
}

impl From<KeySource<'_>> for Source {
    fn from(source: KeySource<'_>) -> Self {
        match source {
            KeySource::DevIssuer(dir) => Source::File(dir.join(DEV_JWKS_FILE)),
            KeySource::File(path) => Source::File(path.to_owned()),
            KeySource::Url(url) => Source::Url(url.to_owned()),
            KeySource::Discovery(issuer) => Source::Discovery(issuer.to_owned()),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Url(url) => write!(f, "JWKS {url}"),
            Source::Discovery(issuer) => write!(f, "discovery from {issuer}"),
        }
    }
}

/// The kind of a public key, which decides the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA, 2048 to 8192 bits: RS* and PS*.
    Rsa,
    /// ECDSA P-256: ES256.
    P256,
    /// ECDSA P-384: ES384.
    P384,
    /// Ed25519: EdDSA.
    Ed25519,
}

impl KeyKind {
    /// Whether a key of this kind verifies `alg`.
    pub fn verifies(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, Rs256 | Rs384 | Rs512 | Ps256 | Ps384 | Ps512),
            KeyKind::P256 => alg == Es256,
            KeyKind::P384 => alg == Es384,
            KeyKind::Ed25519 => alg == EdDsa,
        }
    }
}

/// One usable verification key.
#[derive(Debug, Clone)]
pub struct VerifyKey {
    /// `kid`, absent for keys from a PEM file.
    pub kid: Option<String>,
    /// What kind of key it is.
    pub kind: KeyKind,
    /// The one algorithm the JWK allows (`alg`), if it names one.
    pub alg: Option<Algorithm>,
    /// The key, ready for `jsonwebtoken`.
    pub key: DecodingKey,
}

impl VerifyKey {
    /// Whether this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.verifies(alg) && self.alg.is_none_or(|own| own == alg)
    }
}

/// The outcome of looking a token's key up.
#[derive(Debug)]
pub enum Lookup {
    /// The key to verify with.
    Found(Arc<VerifyKey>),
    /// No key with that `kid` (or, without a `kid`, no key for the algorithm).
    Unknown,
    /// The named key cannot verify the header's algorithm.
    Mismatch,
    /// No `kid`, and several keys could verify the algorithm.
    Ambiguous,
}

/// A set of usable keys.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Arc<VerifyKey>>,
}

impl KeySet {
    /// Parses a JWKS (`{"keys": [...]}`), skipping (and logging) keys it cannot use.
    ///
    /// # Errors
    /// The document is not JSON or has no `keys` array.
    pub fn from_jwks(bytes: &[u8], what: &str) -> Result<KeySet, KeysError> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<Value>,
        }
        let document: Document = serde_json::from_slice(bytes).map_err(|e| KeysError::Invalid {
            what: what.to_owned(),
            message: format!("not a JWKS ({e})"),
        })?;
        let mut keys = Vec::new();
        for (index, value) in document.keys.into_iter().enumerate() {
            let kid = value.get("kid").and_then(Value::as_str).map(str::to_owned);
            match parse_jwk(value) {
                Ok(key) => keys.push(Arc::new(key)),
                Err(reason) => tracing::warn!(
                    source = what,
                    index,
                    kid = kid.as_deref().unwrap_or(""),
                    "skipping a key that cannot be used: {reason}"
                ),
            }
        }
        Ok(KeySet { keys })
    }

    /// Parses PEM public keys (`PUBLIC KEY`, `RSA PUBLIC KEY`), skipping (and logging)
    /// blocks it cannot use. The keys have no `kid`.
    ///
    /// # Errors
    /// The text holds no PEM block at all.
    pub fn from_pem(bytes: &[u8], what: &str) -> Result<KeySet, KeysError> {
        let blocks = pem::parse_many(bytes).map_err(|e| KeysError::Invalid {
            what: what.to_owned(),
            message: format!("not PEM ({e})"),
        })?;
        if blocks.is_empty() {
            return Err(KeysError::Invalid {
                what: what.to_owned(),
                message: "neither a JWKS nor a PEM public key".to_owned(),
            });
        }
        let mut keys = Vec::new();
        for (index, block) in blocks.iter().enumerate() {
            match parse_pem(block) {
                Ok(key) => keys.push(Arc::new(key)),
                Err(reason) => tracing::warn!(
                    source = what,
                    index,
                    "skipping a PEM block that cannot be used: {reason}"
                ),
            }
        }
        Ok(KeySet { keys })
    }

    /// Parses a key file: a JWKS if it is JSON, PEM otherwise.
    ///
    /// # Errors
    /// Neither a JWKS nor PEM.
    pub fn from_file_contents(bytes: &[u8], what: &str) -> Result<KeySet, KeysError> {
        if bytes.trim_ascii_start().starts_with(b"{") {
            KeySet::from_jwks(bytes, what)
        } else {
            KeySet::from_pem(bytes, what)
        }
    }

    /// How many usable keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there is no usable key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key for a token with this `kid` and `alg`.
    ///
    /// With a `kid`, the key with that id; keys without an id (from PEM) stand for
    /// any id. Without a `kid`, the one key that accepts `alg`.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        if let Some(kid) = kid
            && let Some(key) = self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
        {
            return if key.accepts(alg) {
                Lookup::Found(key.clone())
            } else {
                Lookup::Mismatch
            };
        }
        let mut candidates = self
            .keys
            .iter()
            .filter(|k| kid.is_none() || k.kid.is_none());
        let Some(first) = candidates.next() else {
            return Lookup::Unknown;
        };
        let mut usable = std::iter::once(first)
            .chain(candidates)
            .filter(|k| k.accepts(alg));
        match (usable.next(), usable.next()) {
            (Some(key), None) => Lookup::Found(key.clone()),
            (Some(_), Some(_)) => Lookup::Ambiguous,
            (None, _) => Lookup::Mismatch,
        }
    }
}

/// One JWK as a [`VerifyKey`], or why it cannot be used.
fn parse_jwk(value: Value) -> Result<VerifyKey, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("not a valid JWK ({e})"))?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err("it is not a signature key (use is not \"sig\")".to_owned()),
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err("its key_ops do not include \"verify\"".to_owned());
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(alg) => Some(
            alg.to_string()
                .parse::<Algorithm>()
                .map_err(|why| format!("its alg is not usable: {why}"))?,
        ),
    };
    let (kind, key) = match &jwk.algorithm {
        AlgorithmParameters::RSA(params) => {
            let key = DecodingKey::from_rsa_components(&params.n, &params.e)
                .map_err(|e| format!("bad RSA parameters ({e})"))?;
            (KeyKind::Rsa, key)
        }
        AlgorithmParameters::EllipticCurve(params) => {
            let kind = match params.curve {
                EllipticCurve::P256 => KeyKind::P256,
                EllipticCurve::P384 => KeyKind::P384,
                ref other => return Err(format!("curve {other:?} is not supported")),
            };
            let key = DecodingKey::from_ec_components(&params.x, &params.y)
                .map_err(|e| format!("bad EC parameters ({e})"))?;
            (kind, key)
        }
        AlgorithmParameters::OctetKeyPair(params) => {
            if params.curve != EllipticCurve::Ed25519 {
                return Err(format!("curve {:?} is not supported", params.curve));
            }
            let key = DecodingKey::from_ed_components(&params.x)
                .map_err(|e| format!("bad OKP parameters ({e})"))?;
            (KeyKind::Ed25519, key)
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err(
                "it is a symmetric (oct) key: whoever can verify with it could forge tokens"
                    .to_owned(),
            );
        }
        _ => return Err("its key type is not supported".to_owned()),
    };
    check_size(kind, &key)?;
    if let Some(alg) = alg
        && !kind.verifies(alg)
    {
        return Err(format!("its alg {alg} does not fit its key type"));
    }
    Ok(VerifyKey {
        kid: jwk.common.key_id,
        kind,
        alg,
        key,
    })
}

/// One PEM block as a [`VerifyKey`], or why it cannot be used.
fn parse_pem(block: &pem::Pem) -> Result<VerifyKey, String> {
    if block.tag().contains("PRIVATE") {
        return Err("it is a private key; give the public key".to_owned());
    }
    let text = pem::encode(block);
    let text = text.as_bytes();
    let (kind, key) = if let Ok(key) = DecodingKey::from_rsa_pem(text) {
        (KeyKind::Rsa, key)
    } else if let Ok(key) = DecodingKey::from_ec_pem(text) {
        let kind = match key.try_get_as_bytes().map(<[u8]>::len) {
            Ok(65) => KeyKind::P256,
            Ok(97) => KeyKind::P384,
            _ => return Err("its curve is not supported".to_owned()),
        };
        (kind, key)
    } else if let Ok(key) = DecodingKey::from_ed_pem(text) {
        (KeyKind::Ed25519, key)
    } else {
        return Err(format!("{:?} is not a supported public key", block.tag()));
    };
    check_size(kind, &key)?;
    Ok(VerifyKey {
        kid: None,
        kind,
        alg: None,
        key,
    })
}

/// Checks that a key has a size the verifier accepts, so that it fails here (skipped
/// with a reason) and not on every token.
fn check_size(kind: KeyKind, key: &DecodingKey) -> Result<(), String> {
    let ok = match (kind, key.kind()) {
        (KeyKind::Rsa, DecodingKeyKind::RsaModulusExponent { n, e }) => {
            rsa_modulus_ok(n) && !e.is_empty()
        }
        (KeyKind::Rsa, DecodingKeyKind::SecretOrDer(der)) => {
            aws_lc_rs::rsa::PublicKey::from_der(der).is_ok_and(|public| {
                rsa_modulus_ok(&RsaPublicKeyComponents::<Vec<u8>>::from(&public).n)
            })
        }
        (KeyKind::P256, DecodingKeyKind::SecretOrDer(point)) => point.len() == 65 && point[0] == 4,
        (KeyKind::P384, DecodingKeyKind::SecretOrDer(point)) => point.len() == 97 && point[0] == 4,
        (KeyKind::Ed25519, DecodingKeyKind::SecretOrDer(point)) => point.len() == 32,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "its size is not supported ({kind:?}; RSA needs 2048 to 8192 bits)"
        ))
    }
}

/// An RSA modulus of 2048 to 8192 bits (what the verifier accepts).
fn rsa_modulus_ok(n: &[u8]) -> bool {
    let first = n.iter().position(|b| *b != 0).unwrap_or(n.len());
    (256..=1024).contains(&(n.len() - first))
}

/// Settings of a [`Keys`].
#[derive(Debug, Clone)]
pub struct KeysOptions {
    /// How long a loaded set is used before it is loaded again.
    pub ttl: Duration,
    /// Least time between two loads on demand (stale set or unknown `kid`).
    pub cooldown: Duration,
    /// Certificate authorities trusted besides the built-in and system ones
    /// (`auth.ca_file`), for an issuer behind a private CA.
    pub roots: ExtraRoots,
}

/// The issuer's keys, loaded on demand; see the module documentation.
pub struct Keys {
    /// Where keys come from.
    source: Source,
    /// Settings.
    options: KeysOptions,
    /// HTTP client with the timeouts; unused for file sources.
    client: reqwest::Client,
    /// Time, for TTL and cooldown.
    clock: Arc<dyn Clock>,
    /// The current set and load bookkeeping; never held across an await.
    state: RwLock<State>,
    /// Held while a load runs: the single flight.
    loading: tokio::sync::Mutex<()>,
    /// Loads started (successful or not), for tests and metrics.
    loads: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    set: Arc<KeySet>,
    /// When `set` was loaded; `None` until a load succeeded.
    loaded_at: Option<Duration>,
    /// When the last load ended, successful or not.
    attempted_at: Option<Duration>,
    /// Loads ended so far: a caller that saw generation g and finds g+1 after waiting
    /// for the load lock knows someone else just loaded.
    generation: u64,
}

impl Keys {
    /// Keys from `source`, not loaded yet.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(
        source: Source,
        options: KeysOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Keys, KeysError> {
        let client = tls::client_builder(&options.roots)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                // A few redirects, and never off https (except on loopback).
                if attempt.previous().len() >= MAX_REDIRECTS {
                    attempt.error("too many redirects")
                } else if let Err(why) = check_fetch_url(attempt.url().as_str()) {
                    let message = format!("redirected to {}, which {why}", attempt.url());
                    attempt.error(message)
                } else {
                    attempt.follow()
                }
            }))
            .user_agent(concat!("guardian/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| KeysError::Client(tls::error_chain(&e)))?;
        Ok(Keys {
            source,
            options,
            client,
            clock,
            state: RwLock::new(State::default()),
            loading: tokio::sync::Mutex::new(()),
            loads: AtomicU64::new(0),
        })
    }

    /// Where the keys come from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Loads started so far (successful or not).
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// How many usable keys are held.
    pub fn len(&self) -> usize {
        self.read().set.len()
    }

    /// Whether no usable key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads now, whatever the TTL and cooldown say (at start, and in tests), after a
    /// load already running has ended. Returns the number of keys.
    ///
    /// # Errors
    /// The load failed or found no usable key; the keys held before are kept.
    pub async fn load(&self) -> Result<usize, KeysError> {
        let _flight = self.loading.lock().await;
        self.load_locked().await
    }

    /// The key for a token's `kid` and `alg`, loading first if the set is stale and
    /// once more if the `kid` is unknown (both within the cooldown).
    pub async fn find(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<VerifyKey>, TokenError> {
        let (mut set, mut generation) = self.snapshot();
        let mut loaded = false;
        if self.stale() && self.may_load() {
            (set, generation) = self.load_after(generation).await;
            loaded = true;
        }
        let mut lookup = set.find(kid, alg);
        if matches!(lookup, Lookup::Unknown) && !loaded {
            // Load once more within the cooldown; otherwise still look at the newest
            // set, which a load that ended since the snapshot may have replaced.
            (set, _) = if self.may_load() {
                self.load_after(generation).await
            } else {
                self.snapshot()
            };
            lookup = set.find(kid, alg);
        }
        match lookup {
            Lookup::Found(key) => Ok(key),
            Lookup::Mismatch => Err(TokenError::KeyMismatch { alg: alg.as_str() }),
            Lookup::Ambiguous => Err(TokenError::UnknownKey(
                "the token names no key (kid) and the issuer has several".to_owned(),
            )),
            Lookup::Unknown if set.is_empty() => Err(TokenError::KeysUnavailable),
            Lookup::Unknown => Err(match kid {
                Some(kid) => TokenError::unknown_kid(kid),
                None => TokenError::UnknownKey(format!(
                    "the token names no key (kid) and the issuer has no {alg} key"
                )),
            }),
        }
    }

    /// The current set and generation.
    fn snapshot(&self) -> (Arc<KeySet>, u64) {
        let state = self.read();
        (state.set.clone(), state.generation)
    }

    /// Whether the set is older than the TTL (or was never loaded).
    fn stale(&self) -> bool {
        let now = self.clock.now();
        self.read()
            .loaded_at
            .is_none_or(|at| now.saturating_sub(at) >= self.options.ttl)
    }

    /// Whether the cooldown since the last load has passed.
    fn may_load(&self) -> bool {
        let now = self.clock.now();
        self.read()
            .attempted_at
            .is_none_or(|at| now.saturating_sub(at) >= self.options.cooldown)
    }

    /// Loads unless a load ended since the caller saw `generation` (then that load's
    /// result is used): concurrent callers share one load.
    async fn load_after(&self, generation: u64) -> (Arc<KeySet>, u64) {
        let _flight = self.loading.lock().await;
        // Read before the load: the load takes the write lock.
        let nobody_loaded = self.read().generation == generation;
        if nobody_loaded && let Err(error) = self.load_locked().await {
            tracing::warn!(source = %self.source, %error, "loading token keys failed; keeping the keys held");
        }
        self.snapshot()
    }

    /// One load; the caller holds `loading`.
    async fn load_locked(&self) -> Result<usize, KeysError> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        let result = self.fetch().await.and_then(|set| {
            if set.is_empty() {
                Err(KeysError::NoUsableKeys {
                    what: self.source.to_string(),
                })
            } else {
                Ok(set)
            }
        });
        let now = self.clock.now();
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.attempted_at = Some(now);
        state.generation += 1;
        let set = result?;
        let count = set.len();
        tracing::debug!(source = %self.source, keys = count, "loaded token keys");
        state.set = Arc::new(set);
        state.loaded_at = Some(now);
        Ok(count)
    }

    /// Reads the source.
    async fn fetch(&self) -> Result<KeySet, KeysError> {
        match &self.source {
            Source::File(path) => {
                let bytes = read_file(path).await?;
                KeySet::from_file_contents(&bytes, &path.display().to_string())
            }
            Source::Url(url) => {
                let bytes = self.get(url).await?;
                KeySet::from_jwks(&bytes, url)
            }
            Source::Discovery(issuer) => {
                let jwks_uri = self.discover(issuer).await?;
                let bytes = self.get(&jwks_uri).await?;
                KeySet::from_jwks(&bytes, &jwks_uri)
            }
        }
    }

    /// The `jwks_uri` of an OIDC issuer. The document must name the same issuer
    /// (OpenID Connect Discovery 1.0, section 4.3).
    async fn discover(&self, issuer: &str) -> Result<String, KeysError> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let url = discovery_url(issuer);
        let bytes = self.get(&url).await?;
        let document: Discovery =
            serde_json::from_slice(&bytes).map_err(|e| KeysError::Invalid {
                what: url.clone(),
                message: format!("not an OpenID configuration with issuer and jwks_uri ({e})"),
            })?;
        if document.issuer != issuer {
            return Err(KeysError::Invalid {
                what: url,
                message: format!(
                    "it names issuer {:?}, not the configured {issuer:?}",
                    document.issuer
                ),
            });
        }
        check_fetch_url(&document.jwks_uri).map_err(|why| KeysError::Invalid {
            what: url,
            message: format!("its jwks_uri {:?} {why}", document.jwks_uri),
        })?;
        Ok(document.jwks_uri)
    }

    /// GETs `url`, at most [`MAX_DOCUMENT_BYTES`].
    async fn get(&self, url: &str) -> Result<Vec<u8>, KeysError> {
        let http = |message: String| KeysError::Http {
            url: url.to_owned(),
            message,
        };
        let mut response = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| http(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(http(format!("status {}", response.status())));
        }
        let too_large = || KeysError::TooLarge {
            what: url.to_owned(),
        };
        if response
            .content_length()
            .is_some_and(|len| len > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| http(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // Writers only assign fields, so a poisoned lock still holds a usable state.
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `{issuer}/.well-known/openid-configuration` (one slash between them).
pub fn discovery_url(issuer: &str) -> String {
    format!("{}{DISCOVERY_PATH}", issuer.trim_end_matches('/'))
}

/// A URL keys may be fetched from: `https`, or `http` on loopback only (the same rule
/// as for configured URLs).
fn check_fetch_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a URL ({e})"))?;
    let host = parsed.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err("must use https (plain http is accepted only on loopback)".to_owned()),
    }
}

/// Reads a key file, at most [`MAX_DOCUMENT_BYTES`].
async fn read_file(path: &Path) -> Result<Vec<u8>, KeysError> {
    let io = |source| KeysError::Io {
        path: path.to_owned(),
        source,
    };
    let metadata = tokio::fs::metadata(path).await.map_err(io)?;
    if metadata.len() > MAX_DOCUMENT_BYTES as u64 {
        return Err(KeysError::TooLarge {
            what: path.display().to_string(),
        });
    }
    tokio::fs::read(path).await.map_err(io)
}
