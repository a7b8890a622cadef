//! [`JwtAuthenticator`]: the caller from a JWT access token.
//!
//! Order of checks, cheapest first, so that junk costs no cryptography:
//!
//! 1. `Authorization: Bearer <token>` present, well-formed and at most
//!    `auth.max_token_bytes` long;
//! 2. the token cache (SHA-256 of the token): a token verified before and not yet
//!    expired is answered from there;
//! 3. three base64url parts, the header parses and its `alg` is in the allow-list (never `none` nor `HS*`,
//!    whatever their casing);
//! 4. the claims name no key twice, at any depth ([`super::claims`]): a token
//!    holding `roles` twice is refused, not read as whichever one a parser keeps;
//! 5. the key its `kid` names exists (one refetch within the cooldown) and is of the
//!    type `alg` needs;
//! 6. `jsonwebtoken` checks the signature, then `exp` and `nbf` (with leeway), `iss`
//!    and `aud`; `exp`, `iss`, `aud` and `sub` are required, and `iss` must also be
//!    one string equal to the configured issuer (not a list that contains it);
//! 7. roles come from the claims through `auth.role_sources`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Validation;
use jsonwebtoken::errors::ErrorKind;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::authenticator::{AuthFuture, Authenticator, Principal};
use super::cache::{TokenCache, token_hash};
use super::claims;
use super::dev_issuer::{DEV_AUDIENCE, DEV_ISSUER, DevIssuer};
use super::error::{TokenError, echo};
use super::keys::{Keys, KeysOptions, Source};
use super::roles::roles_from_claims;
use super::{Clock, SystemClock};
use crate::config::{Algorithm, AuthConfig, KeySource, RoleSource};
use crate::tls::ExtraRoots;

/// Verifies JWT access tokens against the configured issuer; see the module
/// documentation for the checks.
pub struct JwtAuthenticator {
    /// The exact `iss` accepted.
    issuer: String,
    /// `aud` values accepted (a token needs one of them).
    audiences: Vec<String>,
    /// The allow-list, each algorithm with its prepared `jsonwebtoken` validation.
    validations: Vec<(Algorithm, Validation)>,
    /// Longest token accepted, in bytes.
    max_token_bytes: usize,
    /// Where roles are read from.
    role_sources: Vec<RoleSource>,
    /// The issuer's keys.
    keys: Keys,
    /// Tokens verified before.
    cache: TokenCache,
    /// Time, for the token cache (and, through `keys`, TTL and cooldown).
    clock: Arc<dyn Clock>,
    /// Signature checks done, so tests can see the cache working.
    signature_checks: AtomicU64,
}

impl JwtAuthenticator {
    /// The verifier `config` describes (it must have a key source), with its keys
    /// loaded once. With `auth.dev_issuer`, the development issuer's key pair is
    /// created first if its directory has none.
    ///
    /// # Errors
    /// See [`super::authenticator_from_config`].
    pub async fn from_config(config: &AuthConfig) -> anyhow::Result<JwtAuthenticator> {
        Self::with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`JwtAuthenticator::from_config`] with a given clock.
    ///
    /// # Errors
    /// See [`super::authenticator_from_config`].
    pub async fn with_clock(
        config: &AuthConfig,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<JwtAuthenticator> {
        let source = config
            .key_source()
            .context("auth has no key source (issuer, jwks_url, jwks_file or dev_issuer)")?;
        let (issuer, mut audiences) = match source {
            KeySource::DevIssuer(dir) => {
                let dir = dir.to_owned();
                let issuer = tokio::task::spawn_blocking(move || DevIssuer::load_or_create(&dir))
                    .await
                    .context("creating the development issuer")??;
                tracing::warn!(
                    dir = %issuer.dir().display(),
                    "trusting the development issuer: tokens minted with `guardian token` are accepted"
                );
                let mut audiences = config.audiences.clone();
                audiences.push(DEV_AUDIENCE.to_owned());
                (DEV_ISSUER.to_owned(), audiences)
            }
            _ => (
                config
                    .issuer
                    .clone()
                    .context("auth.issuer is required to verify tokens")?,
                config.audiences.clone(),
            ),
        };
        audiences.sort();
        audiences.dedup();
        let ca_file = config.ca_file.clone();
        let roots =
            tokio::task::spawn_blocking(move || ExtraRoots::from_config(ca_file.as_deref()))
                .await
                .context("reading auth.ca_file")??;
        let keys = Keys::new(
            Source::from(source),
            KeysOptions {
                ttl: config.jwks_ttl(),
                cooldown: config.jwks_refetch_cooldown(),
                roots,
            },
            clock.clone(),
        )?;
        match keys.load().await {
            Ok(count) => tracing::info!(source = %keys.source(), keys = count, "token keys loaded"),
            // A local file is part of the configuration: a mistake there is fatal.
            Err(error) if matches!(keys.source(), Source::File(_)) => {
                return Err(error).context("loading the token verification keys");
            }
            // An issuer can be down for a while; keys are fetched again on demand.
            Err(error) => tracing::warn!(
                source = %keys.source(),
                %error,
                "token keys could not be loaded yet; tokens are refused until they can"
            ),
        }
        let validations = config
            .algorithms
            .iter()
            .map(|&alg| {
                (
                    alg,
                    validation(alg, &issuer, &audiences, config.leeway_secs),
                )
            })
            .collect();
        Ok(JwtAuthenticator {
            issuer,
            audiences,
            validations,
            max_token_bytes: config.max_token_bytes,
            role_sources: config.role_sources.clone(),
            keys,
            cache: TokenCache::default(),
            clock,
            signature_checks: AtomicU64::new(0),
        })
    }

    /// The caller a token stands for, or why it is refused.
    pub async fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        if token.len() > self.max_token_bytes {
            return Err(TokenError::TooLarge {
                limit: self.max_token_bytes,
            });
        }
        let now = self.clock.now().as_secs();
        let hash = token_hash(token);
        if let Some(principal) = self.cache.get(&hash, now) {
            return Ok(principal);
        }

        check_shape(token)?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| self.unparsable_header(token))?;
        let (alg, validation) = self
            .validations
            .iter()
            .find(|(alg, _)| jwt_alg(*alg) == header.alg)
            // Debug names are the `alg` names (`HS256`, `EdDSA`).
            .ok_or_else(|| self.not_allowed(&format!("{:?}", header.alg)))?;
        // A key named twice is refused at once, before any key lookup or fetch.
        // Claims that are not a JSON object at all are refused as before, after the
        // signature: `jsonwebtoken` finds that first.
        let claims = claims::parse(token);
        if let Err(duplicate @ TokenError::DuplicateClaim(_)) = claims {
            return Err(duplicate);
        }
        let key = self.keys.find(header.kid.as_deref(), *alg).await?;

        self.signature_checks.fetch_add(1, Ordering::Relaxed);
        // The signature and registered claims of the same payload `claims` was parsed
        // from; its own copy of the claims is not needed.
        jsonwebtoken::decode::<IgnoredAny>(token, &key.key, validation)
            .map_err(|error| self.refusal(error))?;
        let claims = claims?;

        // jsonwebtoken also accepts an `iss` list that merely contains the issuer.
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(self.wrong_issuer());
        }
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|sub| !sub.is_empty())
            .ok_or(TokenError::InvalidClaim("sub"))?;
        let exp = claims
            .get("exp")
            .and_then(seconds)
            .ok_or(TokenError::InvalidClaim("exp"))?;
        let principal = Principal {
            sub: sub.to_owned(),
            roles: roles_from_claims(&claims, &self.role_sources),
        };
        self.cache.insert(hash, exp, principal.clone(), now);
        Ok(principal)
    }

    /// Signature checks done so far (tokens answered from the cache do not count).
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }

    /// The issuer's keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The verified-token cache.
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// The exact issuer accepted.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Why a header `jsonwebtoken` could not parse was refused: an `alg` it does not know
    /// (`none`, `None`, `NONE`, `ES512`, …) is a refused algorithm, anything else is a
    /// malformed token. Only looks at the header's `alg`; nothing is verified here.
    fn unparsable_header(&self, token: &str) -> TokenError {
        let malformed = TokenError::Malformed("its header is not base64url-encoded JSON");
        let Some(encoded) = token.split('.').next() else {
            return malformed;
        };
        let Ok(json) = URL_SAFE_NO_PAD.decode(encoded) else {
            return malformed;
        };
        let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&json) else {
            return malformed;
        };
        match header.get("alg").and_then(Value::as_str) {
            Some(alg) if alg.parse::<jsonwebtoken::Algorithm>().is_err() => self.not_allowed(alg),
            Some(_) => TokenError::Malformed("its header has a field this server cannot use"),
            None => TokenError::Malformed("its header has no alg"),
        }
    }

    fn not_allowed(&self, alg: &str) -> TokenError {
        TokenError::AlgorithmNotAllowed {
            alg: echo(alg),
            allowed: self
                .validations
                .iter()
                .map(|(alg, _)| alg.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    fn wrong_issuer(&self) -> TokenError {
        TokenError::WrongIssuer {
            expected: self.issuer.clone(),
        }
    }

    fn wrong_audience(&self) -> TokenError {
        TokenError::WrongAudience {
            expected: self.audiences.join(", "),
        }
    }

    /// What a `jsonwebtoken` refusal means for the client.
    fn refusal(&self, error: jsonwebtoken::errors::Error) -> TokenError {
        match error.kind() {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidIssuer => self.wrong_issuer(),
            ErrorKind::InvalidAudience => self.wrong_audience(),
            ErrorKind::MissingRequiredClaim(claim) | ErrorKind::InvalidClaimFormat(claim) => {
                match claim.as_str() {
                    "iss" => self.wrong_issuer(),
                    "aud" => self.wrong_audience(),
                    "exp" => TokenError::InvalidClaim("exp"),
                    "nbf" => TokenError::InvalidClaim("nbf"),
                    _ => TokenError::InvalidClaim("sub"),
                }
            }
            ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidKeyFormat => {
                // The key passed the checks at load but the crypto library refused it:
                // the issuer's fault, not the client's; the token cannot be trusted.
                tracing::warn!(error = %error, "a published key could not verify a token");
                TokenError::BadSignature
            }
            ErrorKind::Base64(_) => TokenError::Malformed("a part is not base64url"),
            ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
                TokenError::Malformed("its claims are not a JSON object")
            }
            _ => TokenError::Malformed("it is not a JWS compact token this server supports"),
        }
    }
}

impl Authenticator for JwtAuthenticator {
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> AuthFuture<'a> {
        Box::pin(async move {
            let result = match bearer_token(&parts.headers, self.max_token_bytes) {
                Ok(token) => self.verify(token).await,
                Err(error) => Err(error),
            };
            result.inspect_err(|error| {
                tracing::debug!(code = error.code(), "credentials refused: {error}");
            })
        })
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive),
/// refused as too large before anything else is done with it.
pub(crate) fn bearer_token(headers: &HeaderMap, max_bytes: usize) -> Result<&str, TokenError> {
    const SCHEME: &str = "Bearer";
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(TokenError::MissingToken)?;
    if values.next().is_some() {
        return Err(TokenError::InvalidAuthorization);
    }
    // The scheme, a space and some slack for extra spaces.
    if value.len() > max_bytes + SCHEME.len() + 8 {
        return Err(TokenError::TooLarge { limit: max_bytes });
    }
    let value = value
        .to_str()
        .map_err(|_| TokenError::InvalidAuthorization)?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(TokenError::InvalidAuthorization)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case(SCHEME) || token.is_empty() {
        return Err(TokenError::InvalidAuthorization);
    }
    if token.len() > max_bytes {
        return Err(TokenError::TooLarge { limit: max_bytes });
    }
    Ok(token)
}

/// Refuses anything but three dot-separated base64url parts (unpadded, as JWS compact
/// serialization has them) before any parsing or cryptography.
fn check_shape(token: &str) -> Result<(), TokenError> {
    let mut parts = 0;
    for part in token.split('.') {
        parts += 1;
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(TokenError::Malformed("a part is not base64url"));
        }
    }
    if parts != 3 {
        return Err(TokenError::Malformed(
            "it is not three dot-separated parts (header.claims.signature)",
        ));
    }
    Ok(())
}

/// The `jsonwebtoken` validation of tokens signed with `alg`.
fn validation(alg: Algorithm, issuer: &str, audiences: &[String], leeway: u64) -> Validation {
    let mut validation = Validation::new(jwt_alg(alg));
    validation.leeway = leeway;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = true;
    validation.set_issuer(&[issuer]);
    validation.set_audience(audiences);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation
}

/// A NumericDate claim in whole seconds.
fn seconds(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

/// The `jsonwebtoken` algorithm of an allowed algorithm.
fn jwt_alg(alg: Algorithm) -> jsonwebtoken::Algorithm {
    use jsonwebtoken::Algorithm as J;
    match alg {
        Algorithm::Rs256 => J::RS256,
        Algorithm::Rs384 => J::RS384,
        Algorithm::Rs512 => J::RS512,
        Algorithm::Ps256 => J::PS256,
        Algorithm::Ps384 => J::PS384,
        Algorithm::Ps512 => J::PS512,
        Algorithm::Es256 => J::ES256,
        Algorithm::Es384 => J::ES384,
        Algorithm::EdDsa => J::EdDSA,
    }
}
