//! The HTTP error shape shared by every route: `{"error": {"code", "message", "status"}}`.
//!
//! Lives below `api/` and `egress/` so both the control API and the HLS/MJPEG endpoints answer
//! errors the same way.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answered to an HTTP client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct HttpError {
    /// The status line.
    pub status: StatusCode,
    /// A stable snake_case code (`not_found`, `unauthorized`, ...).
    pub code: &'static str,
    /// A human-readable explanation.
    pub message: String,
    /// For 422: what is wrong with each field.
    pub details: Vec<FieldError>,
    /// For 429: seconds until the client may retry.
    pub retry_after: Option<u64>,
}

/// One invalid field of a request body or query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The field's name.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// The JSON shape of every error response.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

/// The body of [`ErrorEnvelope`].
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable snake_case code.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// HTTP status.
    pub status: u16,
    /// Per-field problems (422 only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

impl HttpError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        HttpError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
        }
    }

    /// 422 `validation_failed` listing every invalid field.
    pub fn invalid_fields(details: Vec<FieldError>) -> Self {
        let names: Vec<&str> = details.iter().map(|d| d.field.as_str()).collect();
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            format!("invalid fields: {}", names.join(", ")),
        );
        e.details = details;
        e
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 429 `rate_limited` with `Retry-After`.
    pub fn rate_limited(retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests; retry in {retry_after} s"),
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503 `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// A live stream that cannot be had from the cluster now: 503 with `Retry-After`.
    pub fn from_hub(err: crate::hub::HubError) -> Self {
        match err {
            crate::hub::HubError::Unavailable(reason) => {
                tracing::warn!(%reason, "cluster unavailable");
                let mut out = Self::unavailable(
                    "the stream is on another node, which cannot be reached now; retry in a moment",
                );
                out.retry_after = Some(2);
                out
            }
            other => Self::conflict(other.to_string()),
        }
    }

    /// 500 `internal`; the details go to the log, not to the client. A database that
    /// cannot be reached (PostgreSQL down) is a 503 `unavailable` with `Retry-After`
    /// instead: the client should try again, nothing is wrong with its request.
    pub fn internal(context: &str, err: impl std::fmt::Display + 'static) -> Self {
        if let Some(e) = (&err as &dyn std::any::Any).downcast_ref::<crate::store::StoreError>() {
            if e.is_unavailable() {
                tracing::warn!(%err, "{context}");
                let mut out = Self::unavailable("the database is unreachable; retry in a moment");
                out.retry_after = Some(2);
                return out;
            }
        }
        tracing::error!(%err, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&ErrorEnvelope {
            error: ErrorBody {
                code: self.code.to_owned(),
                message: self.message,
                status: self.status.as_u16(),
                details: self.details,
            },
        })
        .unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        let headers = resp.headers_mut();
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}
