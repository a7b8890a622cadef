//! Why a request's credentials were refused, each reason with a stable code.
//!
//! A refusal is a value, not an HTTP answer: `server::auth` turns it into one (401
//! with `WWW-Authenticate`, or 503 when [`TokenError::is_unavailable`]).

/// Longest piece of client input (a `kid`) repeated in a message.
const ECHO_LIMIT: usize = 64;

/// A refused credential. [`TokenError::code`] is stable (clients and tests match on
/// it); the message says what is wrong and never shows a key or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No `Authorization` header.
    #[error("the request has no Authorization header; send `Authorization: Bearer <token>`")]
    MissingToken,
    /// An `Authorization` header that is not `Bearer <token>`.
    #[error("the Authorization header must be `Bearer <token>`")]
    InvalidAuthorization,
    /// Longer than `auth.max_token_bytes`; refused before any cryptography.
    #[error("the token is longer than this server accepts ({limit} bytes)")]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// Not a well-formed JWS compact token (three base64url parts, JSON header and
    /// claims).
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is not in the allow-list (`none` and `HS*` never are).
    #[error("the token's algorithm {alg} is not accepted here; accepted: {allowed}")]
    AlgorithmNotAllowed {
        /// The header's `alg`, as sent (shortened).
        alg: String,
        /// The allow-list.
        allowed: String,
    },
    /// The header names a key the issuer does not publish (after one refetch), or
    /// names none while the issuer has several.
    #[error("{0}")]
    UnknownKey(String),
    /// The named key is of another type than the header's algorithm (e.g. `ES256`
    /// pointing at an RSA key).
    #[error("the token's algorithm {alg} does not match the type of the key it names")]
    KeyMismatch {
        /// The header's `alg`.
        alg: &'static str,
    },
    /// The signature does not verify with the named key.
    #[error("the token's signature is not valid")]
    BadSignature,
    /// `exp` is past (beyond the leeway).
    #[error("the token has expired; get a new one")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("the token is not valid yet (its nbf is in the future)")]
    NotYetValid,
    /// `iss` is missing or not exactly the configured issuer.
    #[error("the token was not issued by {expected} (iss must match exactly)")]
    WrongIssuer {
        /// The configured issuer.
        expected: String,
    },
    /// `aud` is missing or holds none of the configured audiences.
    #[error(
        "the token is not meant for this server: its audience (aud) must include one of {expected}"
    )]
    WrongAudience {
        /// The configured audiences, comma-separated.
        expected: String,
    },
    /// A required claim (`exp`, `sub`) is missing, or a time claim is not a number.
    #[error("the token's {0} claim is missing or not of the right type")]
    InvalidClaim(&'static str),
    /// The claims name a key twice (the path to it, shortened). Parsers disagree on
    /// which one counts (the last, the first, an error), so `{"roles": ["user"],
    /// "roles": ["admin"]}` could grant one role here and another elsewhere.
    #[error("the token's claims name {0} more than once; each key may appear only once")]
    DuplicateClaim(String),
    /// No key could be loaded from the issuer yet (answered 503, not 401).
    #[error("this server cannot reach its token issuer's keys right now; retry later")]
    KeysUnavailable,
    /// The server has no key source at all (`auth` configures none): every token is
    /// refused.
    #[error("this server has no token verification keys configured")]
    NoKeySource,
    /// The peer transport credential (`auth.peer_token`) presented is not this
    /// deployment's.
    #[error(
        "the peer credential is not this deployment's (auth.peer_token must be the same on every server)"
    )]
    BadPeerCredential,
}

impl TokenError {
    /// The stable machine code.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::MissingToken => "missing_token",
            TokenError::InvalidAuthorization => "invalid_authorization",
            TokenError::TooLarge { .. } => "token_too_large",
            TokenError::Malformed(_) => "malformed_token",
            TokenError::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
            TokenError::UnknownKey(_) => "unknown_key",
            TokenError::KeyMismatch { .. } => "key_mismatch",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::WrongIssuer { .. } => "wrong_issuer",
            TokenError::WrongAudience { .. } => "wrong_audience",
            TokenError::InvalidClaim(_) => "invalid_claim",
            TokenError::DuplicateClaim(_) => "duplicate_claim",
            TokenError::KeysUnavailable => "keys_unavailable",
            TokenError::NoKeySource => "no_key_source",
            TokenError::BadPeerCredential => "bad_peer_credential",
        }
    }

    /// Whether the refusal is not the client's fault and retrying later may work
    /// (the issuer's keys cannot be fetched now); every other refusal is final for
    /// these credentials.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, TokenError::KeysUnavailable)
    }

    /// An unknown `kid` (shown shortened, as the client's own input).
    pub(crate) fn unknown_kid(kid: &str) -> TokenError {
        TokenError::UnknownKey(format!(
            "the token names a key (kid {:?}) that the issuer does not publish",
            echo(kid)
        ))
    }
}

/// Client input made safe to repeat in a message: at most [`ECHO_LIMIT`] characters,
/// control characters dropped.
pub(crate) fn echo(input: &str) -> String {
    let mut out: String = input
        .chars()
        .filter(|c| !c.is_control())
        .take(ECHO_LIMIT)
        .collect();
    if input.chars().count() > ECHO_LIMIT {
        out.push('…');
    }
    out
}
