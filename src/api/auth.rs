//! Bearer-token authentication: the rate-limit middleware verifies the token once (by hash)
//! and leaves a [`super::rate_limit::Caller`] in the request; the [`Auth`] extractor turns it
//! into 401 (missing or invalid) or an authenticated caller whose scopes handlers check.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::rate_limit::Caller;
use crate::error::HttpError;
use crate::store::TokenRow;

/// Every scope a token can hold (`*` grants all).
pub const SCOPES: &[&str] = &[
    "streams:read",
    "streams:write",
    "recordings:read",
    "recordings:write",
    "restreams:write",
    "tokens:admin",
    "webhooks:write",
    "stats:read",
    "play",
    "*",
];

/// The `Authorization: Bearer …` value of a request (trimmed, non-empty): API tokens, and
/// stream keys for WHIP and cameras.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Auth(pub TokenRow);

impl Auth {
    /// 403 unless the token grants `scope`.
    pub fn require(&self, scope: &str) -> Result<(), HttpError> {
        if self.0.allows(scope) {
            Ok(())
        } else {
            Err(HttpError::forbidden(format!(
                "this token lacks the {scope} scope"
            )))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, HttpError> {
        match parts.extensions.get::<Caller>() {
            Some(Caller {
                token: Some(token), ..
            }) => Ok(Auth(token.clone())),
            Some(Caller {
                presented: true, ..
            }) => Err(HttpError::unauthorized(
                "invalid token (expected Authorization: Bearer <token>)",
            )),
            _ => Err(HttpError::unauthorized(
                "missing Authorization: Bearer token",
            )),
        }
    }
}
