//! API errors: a status, a stable machine code and a message for people,
//! answered as `{"error": {"code", "message"}}`.

use std::collections::BTreeMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::runtime::CallError;
use crate::storage::StorageError;

/// An error answer. `code` is stable: clients and tests match on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable, lower-case machine code, e.g. `unknown_endpoint`.
    pub code: &'static str,
    /// What went wrong, for people. Never contains secrets or shares.
    pub message: String,
    /// `WWW-Authenticate` value for 401 answers.
    pub www_authenticate: Option<String>,
    /// Extra numbers for clients, answered next to `code` and `message` (e.g. the
    /// `agreed` and `needed` counts of `batch_too_small`).
    pub details: Vec<(&'static str, u64)>,
    /// `Retry-After` value in seconds, for 429 and 503 answers that know when to
    /// come back.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            www_authenticate: None,
            details: Vec::new(),
            retry_after: None,
        }
    }

    /// This error with one more number in its body.
    #[must_use]
    pub fn with_detail(mut self, key: &'static str, value: u64) -> Self {
        self.details.push((key, value));
        self
    }

    /// This error with a `Retry-After` header of `seconds`.
    #[must_use]
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 400: the request itself is malformed.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404: the named thing does not exist.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 409: conflicts with what is stored.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 500: our fault; the details go to the log, not to the client.
    pub fn internal(context: &str, error: &dyn std::error::Error) -> Self {
        tracing::error!(context, error = %error, source = ?error.source(), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error while {context}"),
        )
    }

    /// 503: try again later.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

/// Every error answer: `{"error": {"code", "message", …}}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The `error` of an [`ErrorBody`]. Its schema is written by hand below, since
/// the flattened `details` have no derivable one.
#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    /// Stable machine code.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// Extra integers for some codes, next to `code` and `message`.
    #[serde(flatten)]
    pub details: BTreeMap<&'static str, u64>,
}

impl PartialSchema for ErrorDetail {
    fn schema() -> RefOr<Schema> {
        let string = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(description))
        };
        let integer = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(0))
                .description(Some(description))
        };
        let object = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "What went wrong. Some codes add integer fields next to `code` and `message`.",
            ))
            .property(
                "code",
                string("Stable, lower-case machine code, e.g. `unknown_endpoint`: match on this."),
            )
            .required("code")
            .property(
                "message",
                string("What went wrong, for people; never contains secrets or shares."),
            )
            .required("message")
            .property(
                "agreed",
                integer("`batch_too_small`: unbatched reports held by every server."),
            )
            .property(
                "needed",
                integer("`batch_too_small`: the endpoint's `min_batch`."),
            )
            .property(
                "max_reports_per_user",
                integer("`user_quota_exceeded`: the endpoint's `max_reports_per_user`."),
            )
            .additional_properties(Some(integer("Another integer of the error.")));
        RefOr::T(Schema::Object(object.build()))
    }
}

impl ToSchema for ErrorDetail {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                details: self.details.into_iter().collect(),
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(value) = self
            .www_authenticate
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// `Retry-After` of a `storage_unavailable` answer.
const STORAGE_RETRY_AFTER_SECS: u64 = 30;

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::UnknownEndpoint => {
                Self::not_found("unknown_endpoint", "no such endpoint")
            }
            StorageError::UnknownPlugin => Self::not_found("unknown_plugin", "no such plugin"),
            StorageError::Closed => {
                Self::unavailable("shutting_down", "the server is shutting down")
            }
            StorageError::SealPending => Self::conflict(
                "seal_pending",
                "another seal of this endpoint is still being completed; retry shortly",
            ),
            StorageError::ReportUnavailable => Self::conflict(
                "report_unavailable",
                "a report of this seal is no longer held unbatched on this server",
            ),
            unavailable if unavailable.is_unavailable() => {
                tracing::error!(
                    error = &unavailable as &dyn std::error::Error,
                    "storage cannot write"
                );
                Self::unavailable(
                    "storage_unavailable",
                    "this server cannot write to its storage now (a full or failing disk); nothing was stored: retry later, its operator is told by /readyz",
                )
                .with_retry_after(STORAGE_RETRY_AFTER_SECS)
            }
            other => Self::internal("accessing storage", &other),
        }
    }
}

/// A plugin call that failed on a client's input: the plugin's own message for
/// a rejection, the limit that was hit otherwise.
pub fn plugin_failure(error: CallError) -> ApiError {
    match error {
        CallError::Instantiate(_) => {
            tracing::warn!(error = %error, "plugin could not be instantiated");
            ApiError::unavailable(
                "plugin_unavailable",
                "the plugin cannot run right now; retry later",
            )
        }
        CallError::Rejected(e) if e.kind() == "internal" => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "plugin_internal",
            e.message(),
        ),
        CallError::Rejected(e) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.kind(), e.message())
        }
        other => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            other.code(),
            other.to_string(),
        ),
    }
}
