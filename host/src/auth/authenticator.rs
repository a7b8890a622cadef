//! The hook the server asks "who is calling?": [`Authenticator`], answering a
//! [`Principal`] or a [`TokenError`].
//!
//! Answers are plain values: how a refusal becomes an HTTP answer (status,
//! `WWW-Authenticate`) is the server's business (`server::auth`), so nothing here
//! knows about responses.

use std::future::Future;
use std::pin::Pin;

use axum::http::request::Parts;

use super::error::TokenError;
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
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Principal, TokenError>> + Send + 'a>>;

/// Decides who sent a request (from its headers).
pub trait Authenticator: Send + Sync + 'static {
    /// The caller, or why its credentials are refused.
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
        Box::pin(async { Err(TokenError::NoKeySource) })
    }
}
