//! [`PeerAuth`]: the optional transport credential of the `/peer/v1/…` routes.
//!
//! Which server sent a peer message is told by its signature
//! ([`super::identity`]), never by this secret: any holder of a shared secret could
//! pose as any server. The secret (`auth.peer_token` or `auth.peer_token_file`, sent
//! as `Authorization: Bearer <secret>`) is kept as a cheap first gate: when set,
//! a request without it is refused before its body (a proposal can be tens of
//! megabytes) is read and hashed for the signature check. It is accepted on the
//! peer routes only, and a user's JWT is not the secret, and the secret is not a
//! JWT, so the user routes refuse it as a malformed token.
//!
//! The comparison hashes both sides with SHA-256 and compares the digests in constant
//! time, so neither the secret's content nor its length shows in the response time.

use std::path::Path;

use anyhow::Context as _;
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use super::error::TokenError;
use super::jwt::bearer_token;
use crate::config::AuthConfig;

/// Longest peer credential read from a request.
const MAX_PEER_TOKEN_BYTES: usize = 4096;
/// Shortest peer credential accepted (as `auth.peer_token` is validated).
const MIN_PEER_TOKEN_CHARS: usize = 32;

/// Checks the peer credential of a request.
pub struct PeerAuth {
    /// SHA-256 of the secret; `None` when none is configured (every call refused).
    expected: Option<[u8; 32]>,
}

impl std::fmt::Debug for PeerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerAuth")
            .field("configured", &self.expected.is_some())
            .finish()
    }
}

impl PeerAuth {
    /// The peer credential of `config`: `peer_token`, or the content of
    /// `peer_token_file` without surrounding whitespace.
    ///
    /// # Errors
    /// The file cannot be read, or its secret is shorter than 32 characters.
    pub fn from_config(config: &AuthConfig) -> anyhow::Result<PeerAuth> {
        Ok(PeerAuth::new(peer_secret(config)?.as_deref()))
    }

    /// Checks against `secret`; `None` lets every call through to the signature
    /// check.
    pub fn new(secret: Option<&str>) -> PeerAuth {
        PeerAuth {
            expected: secret.map(|s| Sha256::digest(s.as_bytes()).into()),
        }
    }

    /// Whether a credential is configured.
    pub fn is_configured(&self) -> bool {
        self.expected.is_some()
    }

    /// `Ok` when no credential is configured or the request carries it; why not
    /// otherwise.
    ///
    /// # Errors
    /// `missing_token`, `invalid_authorization`, `token_too_large`,
    /// `bad_peer_credential`.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), TokenError> {
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        let presented = bearer_token(headers, MAX_PEER_TOKEN_BYTES)?;
        let digest = Sha256::digest(presented.as_bytes());
        aws_lc_rs::constant_time::verify_slices_are_equal(&digest, expected)
            .map_err(|_| TokenError::BadPeerCredential)
    }
}

/// The peer credential of `config`, which this server also presents to its peers:
/// `peer_token`, or the content of `peer_token_file` without surrounding whitespace;
/// `None` if neither is set.
///
/// # Errors
/// The file cannot be read, or its secret is shorter than 32 characters.
pub fn peer_secret(config: &AuthConfig) -> anyhow::Result<Option<String>> {
    if let Some(secret) = &config.peer_token {
        return Ok(Some(secret.expose().to_owned()));
    }
    config
        .peer_token_file
        .as_deref()
        .map(read_secret)
        .transpose()
}

/// Reads a secret file, trimmed; at least [`MIN_PEER_TOKEN_CHARS`] characters.
fn read_secret(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading auth.peer_token_file {}", path.display()))?;
    let secret = text.trim();
    if secret.chars().count() < MIN_PEER_TOKEN_CHARS {
        anyhow::bail!(
            "auth.peer_token_file {} holds a secret shorter than {MIN_PEER_TOKEN_CHARS} characters; use e.g. `openssl rand -hex 32`",
            path.display()
        );
    }
    Ok(secret.to_owned())
}
