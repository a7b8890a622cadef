//! The one place routes state the role they need, and where refused credentials
//! become HTTP answers.
//!
//! Every handler takes a [`Caller<R>`] whose marker `R` names the roles allowed
//! (for example [`need::Developer`]); the extractor asks the server's
//! [`Authenticator`] (from [`crate::auth`]) who is calling and refuses with
//! 401/403/503 before the handler runs. Token verification plugs in as another
//! [`Authenticator`] without touching any handler. `auth` answers plain
//! [`TokenError`]s; their status and `WWW-Authenticate` header are decided here.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
pub use crate::auth::{AuthFuture, Authenticator, Principal};
use crate::auth::{TokenError, identity};
use crate::config::Role;

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> Self {
        if error.is_unavailable() {
            // Not the client's fault: retrying later may work.
            ApiError::unavailable(error.code(), error.to_string())
        } else {
            unauthorized(error.code(), error.to_string())
        }
    }
}

/// A 401 with the `WWW-Authenticate` header RFC 6750 asks for: a bare challenge
/// when no credentials came (section 3.1: no error code then), else
/// `error="invalid_token"` with the reason.
pub fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
    let message = message.into();
    let mut error = ApiError::new(StatusCode::UNAUTHORIZED, code, message.clone());
    error.www_authenticate = Some(if code == "missing_token" {
        "Bearer realm=\"guardian\"".to_owned()
    } else {
        let description = message.replace(['"', '\\'], "'");
        format!(
            "Bearer realm=\"guardian\", error=\"invalid_token\", error_description=\"{description}\""
        )
    });
    error
}

/// A set of roles a route accepts; see [`need`].
pub trait Requirement: Send + Sync + 'static {
    /// Any one of these roles is enough (`admin` always is). Empty: any valid caller.
    const ROLES: &'static [Role];
    /// How the requirement reads in a 403 message.
    const DESCRIPTION: &'static str;
}

/// Role requirements, one marker type per combination the API uses.
pub mod need {
    use super::{Requirement, Role};

    macro_rules! requirement {
        ($(#[$doc:meta])* $name:ident, [$($role:ident),*], $description:literal) => {
            $(#[$doc])*
            pub struct $name;
            impl Requirement for $name {
                const ROLES: &'static [Role] = &[$(Role::$role),*];
                const DESCRIPTION: &'static str = $description;
            }
        };
    }

    requirement!(/// Posting reports.
        User, [User], "the user role");
    requirement!(/// Uploading plugins, creating endpoints.
        Developer, [Developer], "the developer role");
    requirement!(/// Sealing and fetching batches.
        Scientist, [Scientist], "the scientist role");
    requirement!(/// Destructive operations.
        Admin, [Admin], "the admin role");
    requirement!(/// Reading plugin details.
        DeveloperOrScientist, [Developer, Scientist], "the developer or scientist role");
    requirement!(/// Anyone with a valid token.
        AnyRole, [], "a valid token");
}

/// An authenticated caller allowed by requirement `R`.
pub struct Caller<R: Requirement> {
    /// Who it is.
    pub principal: Principal,
    _need: PhantomData<R>,
}

impl<R: Requirement> FromRequestParts<Arc<AppState>> for Caller<R> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let principal = state.auth.authenticate(parts).await?;
        let allowed = R::ROLES.is_empty() || R::ROLES.iter().any(|role| principal.has(*role));
        if !allowed {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "missing_role",
                format!("this action needs {}", R::DESCRIPTION),
            ));
        }
        Ok(Self {
            principal,
            _need: PhantomData,
        })
    }
}

/// A call from another share server, not yet believed: it passed the transport
/// credential (if one is configured) and names its sender and signature, which
/// [`Peer::verify`] checks once the body is read. The peer routes take this
/// instead of a [`Caller`], so no user token is accepted there.
pub struct Peer {
    /// The index the sender claims.
    sender: u32,
    /// Its signature, base64.
    signature: String,
    /// The query string as received (signed as sent).
    query: String,
}

impl FromRequestParts<Arc<AppState>> for Peer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        state.peer_auth.check(&parts.headers)?;
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let (Some(sender), Some(signature)) = (
            header(identity::SENDER_HEADER),
            header(identity::SIGNATURE_HEADER),
        ) else {
            return Err(unauthorized(
                "missing_peer_signature",
                format!(
                    "peer calls are signed by their sender: headers {} and {} are required",
                    identity::SENDER_HEADER,
                    identity::SIGNATURE_HEADER
                ),
            ));
        };
        let sender: u32 = sender.parse().map_err(|_| {
            unauthorized(
                "unknown_peer",
                format!("{} must be a server index", identity::SENDER_HEADER),
            )
        })?;
        // Refused before the body is read: only the coordinator sends seal steps.
        if sender != 0 {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_coordinator",
                format!("server {sender} sent this, but only server 0 coordinates seals"),
            ));
        }
        Ok(Peer {
            sender,
            signature,
            query: parts.uri.query().unwrap_or_default().to_owned(),
        })
    }
}

impl Peer {
    /// Checks that the coordinator (server 0, the only sender the extractor lets
    /// through) signed this call of `step` on `endpoint` with this body, for this
    /// server.
    ///
    /// # Errors
    /// 401 `no_peer_keys`, `unknown_peer`, `bad_peer_signature`.
    pub(super) fn verify(
        &self,
        state: &AppState,
        endpoint: &str,
        step: &str,
        body_sha256: &[u8; 32],
    ) -> Result<(), ApiError> {
        let identity = &state.sealer.identity;
        let message = identity::PeerMessage {
            sender: self.sender,
            receiver: identity.index(),
            endpoint,
            step,
            query: &self.query,
            body_sha256,
        };
        identity
            .verify(&message, &self.signature)
            .map_err(|refusal| unauthorized(refusal.code, refusal.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `error` is answered with `status` and exactly this `WWW-Authenticate`.
    fn check(error: TokenError, status: StatusCode, challenge: Option<&str>) {
        let code = error.code();
        let answer = ApiError::from(error);
        assert_eq!(
            (
                answer.status,
                answer.code,
                answer.www_authenticate.as_deref()
            ),
            (status, code, challenge),
        );
    }

    #[test]
    fn refused_credentials_become_401_with_a_challenge_or_503() {
        // RFC 6750 section 3.1: no credentials, no error code.
        check(
            TokenError::MissingToken,
            StatusCode::UNAUTHORIZED,
            Some("Bearer realm=\"guardian\""),
        );
        check(
            TokenError::BadSignature,
            StatusCode::UNAUTHORIZED,
            Some(
                "Bearer realm=\"guardian\", error=\"invalid_token\", \
                 error_description=\"the token's signature is not valid\"",
            ),
        );
        // Quotes in a message cannot break out of the header's quoted string.
        check(
            TokenError::DuplicateClaim("\"roles\"".to_owned()),
            StatusCode::UNAUTHORIZED,
            Some(
                "Bearer realm=\"guardian\", error=\"invalid_token\", \
                 error_description=\"the token's claims name 'roles' more than once; \
                 each key may appear only once\"",
            ),
        );
        for error in [TokenError::NoKeySource, TokenError::BadPeerCredential] {
            let answer = ApiError::from(error);
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
            assert!(answer.www_authenticate.is_some());
        }
        // The issuer cannot be reached: not the client's fault, no challenge.
        check(
            TokenError::KeysUnavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            None,
        );
    }
}
