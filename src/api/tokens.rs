//! `/api/v1/tokens` (scope `tokens:admin`): create (the secret is shown once), list, revoke.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::json::{ApiJson, ApiQuery, Validate};
use super::{page_args, ApiState, Auth, Page, Pagination, SCOPES};
use crate::error::{ErrorEnvelope, HttpError};
use crate::store::TokenRow;

/// An API token (never with its secret, except once at creation).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    /// `tok_…`
    id: String,
    /// What it is for.
    name: String,
    /// Granted scopes.
    scopes: Vec<String>,
    /// RFC 3339.
    created_at: String,
    /// Last successful use.
    last_used_at: Option<String>,
}

impl From<TokenRow> for TokenView {
    fn from(t: TokenRow) -> Self {
        TokenView {
            id: t.id,
            name: t.name,
            scopes: t.scopes,
            created_at: t.created_at,
            last_used_at: t.last_used_at,
        }
    }
}

/// A created token with its secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    token: TokenView,
    /// Use as `Authorization: Bearer <secret>`. Stored hashed: it cannot be shown again.
    secret: String,
}

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// 1-100 characters, not only spaces.
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    name: String,
    /// One or more of `streams:read`, `streams:write`, `recordings:read`,
    /// `recordings:write`, `restreams:write`, `tokens:admin`, `webhooks:write`,
    /// `stats:read`, `*`.
    #[schema(min_items = 1)]
    scopes: Vec<String>,
}

/// Page query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1-100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub(super) limit: Option<i64>,
    /// Opaque cursor from `pagination.next_cursor`.
    pub(super) cursor: Option<String>,
}

/// Create an API token.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens",
    request_body = CreateToken,
    responses(
        (status = 201, body = CreatedToken),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 413, body = ErrorEnvelope),
        (status = 415, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["tokens:admin"])))]
pub async fn create(
    auth: Auth,
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), HttpError> {
    auth.require("tokens:admin")?;
    let name = body.name.trim().to_owned();
    let mut v = Validate::default();
    v.check(
        name.is_empty() || name.chars().count() > 100,
        "name",
        "1-100 characters",
    );
    v.check(body.scopes.is_empty(), "scopes", "at least one scope");
    for s in &body.scopes {
        v.check(
            !SCOPES.contains(&s.as_str()),
            "scopes",
            &format!("unknown scope {s:?}"),
        );
    }
    v.finish()?;
    let scopes: Vec<&str> = body.scopes.iter().map(String::as_str).collect();
    let (row, secret) = state
        .store
        .create_token(&name, &scopes, None)
        .await
        .map_err(|e| HttpError::internal("creating a token", e))?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token: row.into(),
            secret,
        }),
    ))
}

/// List API tokens.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    params(PageQuery),
    responses(
        (status = 200, body = Page<TokenView>),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["tokens:admin"])))]
pub async fn list(
    auth: Auth,
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<TokenView>>, HttpError> {
    auth.require("tokens:admin")?;
    let (limit, cursor) = page_args(q.limit, q.cursor.as_deref())?;
    let (rows, next) = state
        .store
        .list_tokens(limit, cursor)
        .await
        .map_err(|e| HttpError::internal("listing tokens", e))?;
    Ok(Json(Page {
        data: rows.into_iter().map(TokenView::from).collect(),
        pagination: Pagination::from_cursor(next),
    }))
}

/// Revoke an API token.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["tokens:admin"])))]
pub async fn delete(
    auth: Auth,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    auth.require("tokens:admin")?;
    if auth.0.id == id {
        return Err(HttpError::conflict(
            "a token cannot revoke itself; use another tokens:admin token",
        ));
    }
    let deleted = state
        .store
        .delete_token(&id)
        .await
        .map_err(|e| HttpError::internal("deleting a token", e))?;
    if deleted {
        state.limiter.forget_token(&id);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(HttpError::not_found(format!("no token {id}")))
    }
}
