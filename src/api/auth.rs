//! Bearer-token authentication: the [`Auth`] extractor verifies the token against the store
//! (by hash) and handlers ask it for the scope they need.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::ApiState;
use crate::error::HttpError;
use crate::store::TokenRow;

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

impl FromRequestParts<ApiState> for Auth {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, HttpError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| HttpError::unauthorized("missing Authorization: Bearer token"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| HttpError::unauthorized("Authorization must be \"Bearer <token>\""))?;
        let row = state
            .store
            .verify_token(token)
            .await
            .map_err(|e| HttpError::internal("verifying a token", e))?
            .ok_or_else(|| HttpError::unauthorized("invalid token"))?;
        Ok(Auth(row))
    }
}
