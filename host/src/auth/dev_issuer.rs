//! The development issuer: a local RSA key pair that mints tokens for local use, so
//! that the demo needs no identity provider. Only trusted with `auth.dev_issuer`.
//!
//! Its directory (`auth.dev_issuer_dir`) holds:
//!
//! - `private-key.pem`: the RS256 signing key, PKCS#8, file mode 0600;
//! - `jwks.json`: its public key as a JWKS, which the servers read as their key file.
//!
//! Tokens carry `iss` [`DEV_ISSUER`], `aud` [`DEV_AUDIENCE`], the `sub` given, and the
//! role in the `roles` claim (what the default `auth.role_sources` reads). RS256
//! because FACTS.md measured it the cheapest asymmetric verification here.
//!
//! Several servers of a local deployment may start at once: the key file is published
//! with a hard link, which fails if another process published first, so they all end
//! up with the same key.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{EncodingKey, Header};

use super::keys::DEV_JWKS_FILE;
use crate::config::Role;

/// The `iss` of development tokens.
pub const DEV_ISSUER: &str = "guardian-dev";
/// The `aud` of development tokens (always accepted with `auth.dev_issuer`).
pub const DEV_AUDIENCE: &str = "guardian";
/// The signing key's file in the issuer directory.
pub const PRIVATE_KEY_FILE: &str = "private-key.pem";

/// Why the development issuer could not be set up or sign.
#[derive(Debug, thiserror::Error)]
pub enum DevIssuerError {
    /// A file or directory operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file exists but does not hold a usable RSA private key.
    #[error("{path} is not a usable RSA private key ({message}); delete it to create a new one")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Generating or encoding the key pair failed.
    #[error("cannot generate the development issuer's key pair")]
    Generate,
    /// Signing a token failed.
    #[error("cannot sign a development token: {0}")]
    Sign(String),
}

/// The development issuer's key pair, loaded.
pub struct DevIssuer {
    /// The issuer directory.
    dir: PathBuf,
    /// The key id: the RFC 7638 thumbprint of the public key.
    kid: String,
    /// The signing key.
    key: EncodingKey,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("dir", &self.dir)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl DevIssuer {
    /// Loads the key pair in `dir`, creating the directory and a new key pair if there
    /// is none, and (re)writes `jwks.json` from it. Blocking (file I/O, key
    /// generation): call it from `spawn_blocking` on a server.
    ///
    /// # Errors
    /// The directory or files cannot be created, read or written, or the key file
    /// holds something else than an RSA private key.
    pub fn load_or_create(dir: &Path) -> Result<DevIssuer, DevIssuerError> {
        // Before the first use of jsonwebtoken below, which would settle its provider.
        super::crypto::install();
        create_private_dir(dir)?;
        let key_path = dir.join(PRIVATE_KEY_FILE);
        if !key_path.exists() {
            create_key(dir, &key_path)?;
        }
        let pem = fs::read(&key_path).map_err(io("reading", &key_path))?;
        warn_if_readable_by_others(&key_path);
        let bad_key = |message: String| DevIssuerError::BadKey {
            path: key_path.clone(),
            message,
        };
        let key = EncodingKey::from_rsa_pem(&pem).map_err(|e| bad_key(e.to_string()))?;
        let mut jwk = Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::RS256)
            .map_err(|e| bad_key(e.to_string()))?;
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| bad_key(e.to_string()))?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let jwks = serde_json::to_vec_pretty(&JwkSet { keys: vec![jwk] })
            .map_err(|e| bad_key(e.to_string()))?;
        write_if_changed(&dir.join(DEV_JWKS_FILE), &jwks)?;
        Ok(DevIssuer {
            dir: dir.to_owned(),
            kid,
            key,
        })
    }

    /// A token for `sub` with `role`, valid from now for `ttl` (at least a second).
    ///
    /// # Errors
    /// Signing failed.
    pub fn mint(&self, role: Role, sub: &str, ttl: Duration) -> Result<String, DevIssuerError> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = serde_json::json!({
            "iss": DEV_ISSUER,
            "aud": DEV_AUDIENCE,
            "sub": sub,
            "roles": [role.as_str()],
            "iat": now,
            "nbf": now,
            "exp": now.saturating_add(ttl.as_secs().max(1)),
        });
        let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| DevIssuerError::Sign(e.to_string()))
    }

    /// The key id in tokens and in the JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The issuer directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The JWKS file the servers read.
    pub fn jwks_path(&self) -> PathBuf {
        self.dir.join(DEV_JWKS_FILE)
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DevIssuerError {
    let path = path.to_owned();
    move |source| DevIssuerError::Io {
        action,
        path,
        source,
    }
}

/// Creates `dir` (mode 0700 on Unix when it is new).
fn create_private_dir(dir: &Path) -> Result<(), DevIssuerError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(io("creating the directory", dir))
}

/// Generates a key pair and publishes it at `key_path` unless another process did
/// first (then theirs is kept).
fn create_key(dir: &Path, key_path: &Path) -> Result<(), DevIssuerError> {
    let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| DevIssuerError::Generate)?;
    let der = pair.as_der().map_err(|_| DevIssuerError::Generate)?;
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref()));
    let temp = dir.join(format!(
        ".{PRIVATE_KEY_FILE}.{:016x}",
        rand::random::<u64>()
    ));
    let written = write_private(&temp, pem.as_bytes());
    let published = written.and_then(|()| match fs::hard_link(&temp, key_path) {
        Ok(()) => Ok(()),
        // Another server published its key first: use that one.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io("publishing the key file", key_path)(e)),
    });
    let _ = fs::remove_file(&temp);
    if published.is_ok() {
        tracing::info!(path = %key_path.display(), "created the development issuer's key pair");
    }
    published
}

/// Writes a new file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DevIssuerError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io("creating", path))?;
    file.write_all(bytes).map_err(io("writing", path))?;
    file.sync_all().map_err(io("writing", path))
}

/// Replaces `path` atomically with `bytes` unless it already holds them.
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<(), DevIssuerError> {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let temp = path.with_extension(format!("{:016x}.tmp", rand::random::<u64>()));
    fs::write(&temp, bytes).map_err(io("writing", &temp))?;
    fs::rename(&temp, path).map_err(|e| {
        let _ = fs::remove_file(&temp);
        io("replacing", path)(e)
    })
}

/// The key is a secret: say so when its file is readable by others.
fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(metadata) = fs::metadata(path)
            && metadata.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "the development issuer's private key is readable by other users; chmod 600 it");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}
