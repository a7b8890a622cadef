//! Request body extractors whose failures are API errors with stable codes.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The raw body, with "too large" as a 413 `body_too_large`.
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Self(bytes)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than this server accepts",
            )),
            Err(e) => Err(ApiError::bad_request("bad_body", e.body_text())),
        }
    }
}

/// A JSON body parsed into `T`; malformed JSON, wrong types and unknown fields
/// are 400 `malformed_json` with serde's message (which names the field).
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Body(bytes) = Body::from_request(req, state).await?;
        parse_json(&bytes).map(Json)
    }
}

/// A request body parsed into `T` exactly as the [`Json`] extractor parses it
/// (also what the report fuzz target drives).
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "malformed_json",
            "the request body is empty; expected JSON",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "malformed_json",
            format!("the request body is not valid: {e}"),
        )
    })
}

/// Path parameters parsed into `T`; a parameter that cannot be decoded (not
/// UTF-8 once percent-decoded, or not of `T`'s type) is 400 `invalid_path`, as
/// JSON like every other error, rather than axum's plain-text rejection.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(e) if e.status().is_server_error() => {
                Err(ApiError::internal("extracting path parameters", &e))
            }
            Err(e) => Err(ApiError::bad_request(
                "invalid_path",
                format!("the URL path is not valid: {}", e.body_text()),
            )),
        }
    }
}

/// Query parameters parsed into `T`; missing or malformed ones are 400 `bad_query`.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|e| {
                ApiError::bad_request(
                    "bad_query",
                    format!("the query string is not valid: {}", e.body_text()),
                )
            })
    }
}
