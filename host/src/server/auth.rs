//! The one place routes state the role they need.
//!
//! Every handler takes a [`Caller<R>`] whose marker `R` names the roles allowed
//! (for example [`need::Developer`]); the extractor asks the server's
//! [`Authenticator`] who is calling and refuses with 401/403 before the handler
//! runs. Token verification plugs in as another [`Authenticator`] without
//! touching any handler.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::auth::identity;
use crate::config::Role;

/// Who is calling, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's subject.
    pub sub: String,
    /// App roles granted (already expanded: `admin` implies the others).
    pub roles: Vec<Role>,
}

impl Principal {
    /// Whether the caller holds `role` (directly or through `admin`).
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role) || self.roles.contains(&Role::Admin)
    }
}

/// Future returned by [`Authenticator::authenticate`].
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Principal, ApiError>> + Send + 'a>>;

/// Decides who sent a request (from its headers). 401 errors come from here.
pub trait Authenticator: Send + Sync + 'static {
    /// The caller, or a 401 saying what is wrong with the credentials.
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> AuthFuture<'a>;
}

/// Authentication turned off (`auth.disabled`): every caller has every role.
/// For benchmarks and tests only.
pub struct Disabled;

impl Authenticator for Disabled {
    fn authenticate<'a>(&'a self, _parts: &'a Parts) -> AuthFuture<'a> {
        Box::pin(async {
            Ok(Principal {
                sub: "anonymous".into(),
                roles: Role::ALL.to_vec(),
            })
        })
    }
}

/// Refuses everyone: the server has no way to verify tokens (no key source).
pub struct NoKeys;

impl Authenticator for NoKeys {
    fn authenticate<'a>(&'a self, _parts: &'a Parts) -> AuthFuture<'a> {
        Box::pin(async {
            Err(unauthorized(
                "no_key_source",
                "this server has no token verification keys configured",
            ))
        })
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
