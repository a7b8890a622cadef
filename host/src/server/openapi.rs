//! The OpenAPI document (`GET /api/v1/openapi.json`).
//!
//! Nothing here lists routes: every handler carries its own `#[utoipa::path]`
//! (method, path, parameters, bodies, every status it answers), and the router
//! in `mod.rs` registers handlers through `utoipa_axum::routes!`, which adds each
//! one to the axum router and to the document at the same time. So a route is
//! served exactly when it is documented, and the schemas are the types the
//! handlers serialise. This module holds what is common to all routes: the
//! document's header, the two security schemes and the error responses shared
//! by every authenticated route.

use std::collections::BTreeMap;

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoResponses, Modify, OpenApi};

use super::error::ErrorBody;

/// The security scheme of the public routes: a JWT access token.
pub(super) const BEARER: &str = "bearer";
/// The security scheme of `/peer/v1`: calls signed by the coordinator (and the
/// optional shared transport credential).
pub(super) const PEER: &str = "peer";

/// The document's header and components; paths are added by the router.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Privacy Guardian share server",
        description = "One share server of a Privacy Guardian deployment (DESIGN.md section 5). \
Every error answer is `{\"error\": {\"code\", \"message\"}}` with a stable `code`; some codes \
add integer fields next to them. Any route may also answer 404 `no_route` or 405 \
`method_not_allowed` for a path or method it does not serve, 408 `request_timeout` when a \
request (reading its body included) takes longer than `limits.request_timeout_ms`, and 431 \
(empty body, then the connection is closed) when its request line and headers exceed \
`limits.max_header_bytes`."
    ),
    modifiers(&SecuritySchemes),
    components(schemas(ErrorBody)),
    tags(
        (name = "health", description = "Liveness, readiness, metrics and this document."),
        (name = "plugins", description = "Algorithm plugins (WebAssembly components)."),
        (name = "endpoints", description = "Endpoints: a plugin with its parameters."),
        (name = "reports", description = "Users' shares."),
        (name = "batches", description = "Sealed batches and their released shares."),
        (name = "peer", description = "The seal protocol between share servers."),
    )
)]
pub(super) struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.bearer_format = Some("JWT".into());
        bearer.description = Some(
            "An access token of the configured OAuth2/OIDC issuer (or `guardian token`); \
             its roles decide which routes it may call."
                .into(),
        );
        components.add_security_scheme(BEARER, SecurityScheme::Http(bearer));
        let mut peer = Http::new(HttpAuthScheme::Bearer);
        peer.description = Some(
            "Peer calls are signed by their sender (headers `guardian-peer-index` and \
             `guardian-peer-signature`, Ed25519 under `server.peer_keys`); the optional \
             transport credential `auth.peer_token` goes here. No user token is accepted \
             on these routes."
                .into(),
        );
        components.add_security_scheme(PEER, SecurityScheme::Http(peer));
    }
}

/// The 500 of a route whose only failures beyond its own are storage's.
pub(super) const STORAGE_500: &str = "Storage failed: `internal` (details in the server log).";
/// The 503 of such a route.
pub(super) const STORAGE_503: &str = "Retry later: `shutting_down`, `keys_unavailable`, \
    `storage_unavailable` (this server cannot write now; with `Retry-After`).";

/// A response whose body is [`ErrorBody`].
pub(super) fn error_response(description: &str, www_authenticate: bool) -> Response {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("Error")))
        .build();
    let mut response = ResponseBuilder::new()
        .description(description)
        .content("application/json", content);
    if www_authenticate {
        response = response.header(
            "WWW-Authenticate",
            HeaderBuilder::new()
                .description(Some("`Bearer error=\"invalid_token\", …` (RFC 6750)"))
                .build(),
        );
    }
    response.build()
}

const UNAUTHORIZED: &str = "The token is missing or not valid: `missing_token`, \
`invalid_authorization`, `token_too_large`, `malformed_token`, `algorithm_not_allowed`, \
`unknown_key`, `key_mismatch`, `bad_signature`, `token_expired`, `token_not_yet_valid`, \
`wrong_issuer`, `wrong_audience`, `invalid_claim`, `duplicate_claim`, `no_key_source`.";

/// 401 of a route open to any valid token.
pub(super) struct AuthErrors;

impl IntoResponses for AuthErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        BTreeMap::from([("401".into(), error_response(UNAUTHORIZED, true).into())])
    }
}

/// 401 and 403 of a route that needs a role.
pub(super) struct RoleErrors;

impl IntoResponses for RoleErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let mut responses = AuthErrors::responses();
        responses.insert(
            "403".into(),
            error_response(
                "The token lacks the role this route needs: `missing_role`.",
                false,
            )
            .into(),
        );
        responses
    }
}

/// 401 of a `/peer/v1` route.
pub(super) struct PeerAuthErrors;

impl IntoResponses for PeerAuthErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        BTreeMap::from([(
            "401".into(),
            error_response(
                "The transport credential (when configured) or the sender's signature \
                 is missing or wrong: `missing_token`, `invalid_authorization`, \
                 `token_too_large`, `bad_peer_credential`, `missing_peer_signature`, \
                 `unknown_peer`, `bad_peer_signature`, or `no_peer_keys` (this server \
                 has no `server.peer_keys`).",
                true,
            )
            .into(),
        )])
    }
}
