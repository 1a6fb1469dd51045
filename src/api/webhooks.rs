//! `/api/v1/webhooks` (scope `webhooks:write`): subscribe a URL to events, list, inspect
//! (the secret masked), delete, and read the delivery log.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::json::{ApiJson, ApiQuery, Validate};
use super::tokens::PageQuery;
use super::{page_args, ApiState, Auth, Page, Pagination};
use crate::error::{ErrorEnvelope, HttpError};
use crate::events::EVENT_TYPES;
use crate::store::{DeliveryRow, WebhookRow};

/// A webhook; the secret is masked.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    /// `wh_…`
    id: String,
    /// Where events are POSTed; user info and query values masked (`***`).
    url: String,
    /// Subscribed event types (or `*`).
    events: Vec<String>,
    /// The last four characters of the secret.
    secret_hint: String,
    /// RFC 3339.
    created_at: String,
}

impl From<WebhookRow> for WebhookView {
    fn from(w: WebhookRow) -> Self {
        let tail: String = w
            .secret
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        WebhookView {
            id: w.id,
            url: crate::redact::mask_url(&w.url),
            events: w.events,
            secret_hint: format!("…{tail}"),
            created_at: w.created_at,
        }
    }
}

/// A created webhook with its secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    webhook: WebhookView,
    /// HMAC-SHA256 key of `X-Signature: t={unix},v1={hex(hmac(secret, "{unix}.{body}"))}`.
    secret: String,
}

/// Body of `POST /api/v1/webhooks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// `http://` or `https://`, at most 2000 characters.
    #[schema(max_length = 2000, pattern = "^https?://[^/?#\\s]+")]
    url: String,
    /// Event types: `stream.created`, `stream.started`, `stream.ended`, `stream.deleted`,
    /// `recording.ready`, `restream.failed`, `health.degraded`, or `*`.
    #[schema(min_items = 1)]
    events: Vec<String>,
    /// 16-200 characters; generated when absent.
    #[serde(default)]
    #[schema(min_length = 16, max_length = 200)]
    secret: Option<String>,
}

/// One delivery attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// `dlv_…`
    id: String,
    /// The event's id (the same on every attempt).
    event_id: String,
    /// Event type.
    event: String,
    /// 1 for the first try.
    attempt: u32,
    /// The receiver answered 2xx.
    success: bool,
    /// The receiver's status, if it answered.
    status_code: Option<u16>,
    /// Why it failed.
    error: Option<String>,
    /// Time taken.
    duration_ms: u64,
    /// RFC 3339.
    created_at: String,
}

impl From<DeliveryRow> for DeliveryView {
    fn from(d: DeliveryRow) -> Self {
        DeliveryView {
            id: d.id,
            event_id: d.event_id,
            event: d.event,
            attempt: d.attempt,
            success: d.success,
            status_code: d.status_code,
            error: d.error,
            duration_ms: d.duration_ms,
            created_at: d.created_at,
        }
    }
}

/// Subscribe a URL to events.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks",
    request_body = CreateWebhook,
    responses(
        (status = 201, body = CreatedWebhook),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope),
        (status = 415, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["webhooks:write"])))]
pub async fn create(
    auth: Auth,
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateWebhook>,
) -> Result<(StatusCode, Json<CreatedWebhook>), HttpError> {
    auth.require("webhooks:write")?;
    let mut v = Validate::default();
    let url_ok = (body.url.starts_with("http://") || body.url.starts_with("https://"))
        && body.url.len() <= 2000
        && reqwest::Url::parse(&body.url).is_ok_and(|u| u.host_str().is_some());
    v.check(
        !url_ok,
        "url",
        "an http:// or https:// URL of at most 2000 characters",
    );
    if url_ok {
        // A literal address is checked now, a name each time it is resolved.
        let checked = reqwest::Url::parse(&body.url).ok().and_then(|u| {
            let host = u.host_str()?.to_owned();
            Some(state.outbound.check_host(&host, u.port_or_known_default()?))
        });
        if let Some(Err(problem)) = checked {
            v.check(true, "url", &problem);
        }
    }
    v.check(body.events.is_empty(), "events", "at least one event type");
    for e in &body.events {
        v.check(
            e != "*" && !EVENT_TYPES.contains(&e.as_str()),
            "events",
            &format!("unknown event type {e:?}"),
        );
    }
    if let Some(s) = &body.secret {
        v.check(
            !(16..=200).contains(&s.chars().count()),
            "secret",
            "16-200 characters",
        );
    }
    v.finish()?;
    let max = state.config.api.max_webhooks;
    let count = state
        .store
        .list_webhooks()
        .await
        .map_err(|e| HttpError::internal("counting webhooks", e))?
        .len();
    if count >= max as usize {
        return Err(HttpError::conflict(format!(
            "there are already {count} webhooks (api.max_webhooks = {max})"
        )));
    }
    let secret = body
        .secret
        .unwrap_or_else(|| crate::store::random_id("whsec_", 24));
    let row = state
        .store
        .create_webhook(&body.url, &body.events, &secret)
        .await
        .map_err(|e| HttpError::internal("creating a webhook", e))?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook {
            webhook: row.into(),
            secret,
        }),
    ))
}

/// List webhooks.
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks",
    responses(
        (status = 200, body = Page<WebhookView>),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["webhooks:write"])))]
pub async fn list(
    auth: Auth,
    State(state): State<ApiState>,
) -> Result<Json<Page<WebhookView>>, HttpError> {
    auth.require("webhooks:write")?;
    let rows = state
        .store
        .list_webhooks()
        .await
        .map_err(|e| HttpError::internal("listing webhooks", e))?;
    Ok(Json(Page {
        data: rows.into_iter().map(WebhookView::from).collect(),
        pagination: Pagination::from_cursor(None),
    }))
}

async fn load(state: &ApiState, id: &str) -> Result<WebhookRow, HttpError> {
    state
        .store
        .get_webhook(id)
        .await
        .map_err(|e| HttpError::internal("reading a webhook", e))?
        .ok_or_else(|| HttpError::not_found(format!("no webhook {id}")))
}

/// One webhook (secret masked).
#[utoipa::path(get, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses(
        (status = 200, body = WebhookView),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["webhooks:write"])))]
pub async fn get_one(
    auth: Auth,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<WebhookView>, HttpError> {
    auth.require("webhooks:write")?;
    Ok(Json(load(&state, &id).await?.into()))
}

/// Delete a webhook and its delivery log.
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["webhooks:write"])))]
pub async fn delete(
    auth: Auth,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    auth.require("webhooks:write")?;
    let deleted = state
        .store
        .delete_webhook(&id)
        .await
        .map_err(|e| HttpError::internal("deleting a webhook", e))?;
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(HttpError::not_found(format!("no webhook {id}")))
    }
}

/// A webhook's delivery attempts, newest first.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id"), PageQuery),
    responses(
        (status = 200, body = Page<DeliveryView>),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["webhooks:write"])))]
pub async fn deliveries(
    auth: Auth,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<DeliveryView>>, HttpError> {
    auth.require("webhooks:write")?;
    let (limit, cursor) = page_args(q.limit, q.cursor.as_deref())?;
    load(&state, &id).await?;
    let (rows, next) = state
        .store
        .list_deliveries(&id, limit, cursor)
        .await
        .map_err(|e| HttpError::internal("listing deliveries", e))?;
    Ok(Json(Page {
        data: rows.into_iter().map(DeliveryView::from).collect(),
        pagination: Pagination::from_cursor(next),
    }))
}
