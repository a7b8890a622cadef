//! Token verification: who is calling, from a JWT access token or a peer credential.
//!
//! This module owns the [`Authenticator`] hook the server's role extractor
//! (`server::auth`) calls and everything behind it; no handler knows about tokens,
//! and nothing here knows about HTTP answers: refusals are [`TokenError`]s, which
//! the server maps to 401/503.
//!
//! - [`authenticator`]: [`Authenticator`], [`Principal`], and the two trivial
//!   authenticators [`Disabled`] (`auth.disabled`) and [`NoKeys`] (no key source).
//! - [`jwt`]: [`JwtAuthenticator`] reads `Authorization: Bearer …`, checks the token with
//!   `jsonwebtoken` (signature, exact `iss`, `aud`, `exp`/`nbf` with leeway, algorithm
//!   allow-list, key type matching the algorithm) and maps its claims to roles.
//! - [`keys`]: [`Keys`] holds the issuer's verification keys (local JWKS/PEM file,
//!   JWKS URL or OIDC discovery), cached with a TTL and refetched once, single-flight
//!   and under a cooldown, when a token names an unknown `kid`.
//! - [`cache`]: [`TokenCache`], verified tokens by SHA-256, so a reused token skips
//!   the signature check; never used past the token's `exp`.
//! - [`claims`]: the token's claims as JSON, refusing a key named twice at any depth.
//! - [`roles`]: claims → app roles ([`roles_from_claims`]).
//! - [`dev_issuer`]: [`DevIssuer`], the local key pair behind `auth.dev_issuer`.
//! - [`peer`]: [`PeerAuth`], the optional shared transport secret of the `/peer/v1/…`
//!   routes; [`identity`]: [`PeerIdentity`], each server's own key pair, which signs
//!   and checks every peer message.
//!
//! Every refusal is a [`TokenError`] with a stable code ([`TokenError::code`]) and a
//! message that says what is wrong without showing keys or secrets.
//!
//! [`authenticator_from_config`] is the one entry point the server needs.

#![warn(missing_docs)]

pub mod authenticator;
pub mod cache;
mod claims;
pub mod crypto;
pub mod dev_issuer;
mod error;
pub mod identity;
pub mod jwt;
pub mod keys;
pub mod peer;
pub mod roles;
#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use self::authenticator::{AuthFuture, Authenticator, Disabled, NoKeys, Principal};
pub use self::cache::TokenCache;
pub use self::dev_issuer::{DEV_AUDIENCE, DEV_ISSUER, DevIssuer, DevIssuerError};
pub use self::error::TokenError;
pub use self::identity::PeerIdentity;
pub use self::jwt::JwtAuthenticator;
pub use self::keys::{Keys, KeysError};
pub use self::peer::PeerAuth;
pub use self::roles::roles_from_claims;
use crate::config::AuthConfig;

/// The authenticator `config` asks for: [`Disabled`] when `auth.disabled`, [`NoKeys`]
/// (refuses every token) when there is no key source, a [`JwtAuthenticator`] otherwise.
///
/// Loads the keys once before returning. A local file (or the development issuer's
/// directory) that cannot be read is an error; an issuer that cannot be reached is
/// only logged, because keys are fetched again on demand.
///
/// # Errors
/// The development issuer cannot be created or loaded, the key file cannot be read or
/// holds no usable key, `auth.ca_file` cannot be read or holds no certificate, or the
/// HTTP client cannot be built.
pub async fn authenticator_from_config(
    config: &AuthConfig,
) -> anyhow::Result<Box<dyn Authenticator>> {
    if config.disabled {
        return Ok(Box::new(Disabled));
    }
    if config.key_source().is_none() {
        return Ok(Box::new(NoKeys));
    }
    Ok(Box::new(JwtAuthenticator::from_config(config).await?))
}

/// Wall-clock time, injected so that tests can move it (cache expiry, key TTL,
/// refetch cooldown) without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// Time since the Unix epoch.
    fn now(&self) -> Duration;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        // A clock before 1970 is a broken machine; treating it as the epoch only makes
        // every token look not yet valid, which fails closed.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}
