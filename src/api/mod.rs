//! The control API (`/api/v1`) and `/healthz`: axum routes over the store, the hub and the
//! event bus, documented by an OpenAPI document generated from the handlers themselves.
//!
//! [`router`] is built once; tests drive it with `oneshot` requests, no socket needed.
//! Conventions follow DESIGN.md: JSON with snake_case fields, `{data, pagination}` lists with
//! an opaque cursor, the `{error: {code, message, status}}` shape for every failure (404
//! unknown route, 405 wrong method, 400 malformed JSON, 422 invalid fields, 413 too large,
//! 429 rate limited), Bearer tokens with scopes, `X-RateLimit-*` and `X-Request-Id` headers.

pub mod auth;
mod json;
mod live_stats;
mod metrics;
mod nodes;
pub mod openapi;
pub mod rate_limit;
mod recordings;
mod restreams;
mod stats;
mod streams;
mod tokens;
mod webhooks;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::error::HttpError;
use crate::events::EventBus;
use crate::hub::Hub;
use crate::play_token::PlaySigner;
use crate::store::Store;

pub use auth::{Auth, SCOPES};
pub use rate_limit::RateLimiter;

/// Shared state of every API handler.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// Configuration (public URLs, limits).
    pub config: Arc<Config>,
    /// Database.
    pub store: Store,
    /// Live streams.
    pub hub: Hub,
    /// Where handlers announce events (`stream.created`, ...).
    pub events: EventBus,
    /// Signs play tokens for private streams.
    pub signer: PlaySigner,
    /// Per-token and per-IP request counters.
    pub limiter: Arc<RateLimiter>,
    /// When the server started (for uptime).
    pub started: Instant,
    /// Recorders (absent in API-only tests).
    pub recorders: Option<Arc<crate::egress::record::Recorders>>,
    /// Restream pushers (absent in API-only tests: destinations are stored, nothing pushes).
    pub restreamer: Option<Arc<crate::egress::restream::Restreamer>>,
    /// HLS output and its viewer sessions (absent in API-only tests).
    pub hls: Option<Arc<crate::egress::hls::HlsRegistry>>,
    /// Where webhooks and restreams may point.
    pub outbound: Arc<crate::outbound::OutboundPolicy>,
    /// This node in the cluster (cluster mode only).
    pub cluster: Option<Arc<crate::cluster::ClusterNode>>,
}

impl ApiState {
    /// State for a server (or a test) with these parts.
    pub fn new(
        config: Arc<Config>,
        store: Store,
        hub: Hub,
        events: EventBus,
        signer: PlaySigner,
    ) -> Self {
        ApiState {
            config: config.clone(),
            store,
            hub,
            events,
            signer,
            limiter: Arc::new(RateLimiter::default()),
            started: Instant::now(),
            recorders: None,
            restreamer: None,
            hls: None,
            outbound: Arc::new(crate::outbound::OutboundPolicy::for_config(&config)),
            cluster: None,
        }
    }

    /// With recorders (recording API and `is_recording`).
    pub fn with_recorders(mut self, recorders: Arc<crate::egress::record::Recorders>) -> Self {
        self.recorders = Some(recorders);
        self
    }

    /// With the HLS registry (viewer sessions).
    pub fn with_hls(mut self, hls: Arc<crate::egress::hls::HlsRegistry>) -> Self {
        self.hls = Some(hls);
        self
    }

    /// In a cluster.
    pub fn with_cluster(mut self, cluster: Option<Arc<crate::cluster::ClusterNode>>) -> Self {
        self.cluster = cluster;
        self
    }

    /// With restream pushers.
    pub fn with_restreamer(mut self, r: Arc<crate::egress::restream::Restreamer>) -> Self {
        self.restreamer = Some(r);
        self
    }
}

/// A page of a list endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T: ToSchema> {
    /// The items.
    pub data: Vec<T>,
    /// Where the next page starts.
    pub pagination: Pagination,
}

/// Cursor pagination block.
#[derive(Debug, Serialize, ToSchema)]
pub struct Pagination {
    /// Opaque cursor for the next page (`null` on the last page).
    pub next_cursor: Option<String>,
    /// Whether another page exists.
    pub has_more: bool,
}

impl Pagination {
    pub(crate) fn from_cursor(next_cursor: Option<String>) -> Self {
        Pagination {
            has_more: next_cursor.is_some(),
            next_cursor,
        }
    }
}

/// `limit` (1-100, default 20) and `cursor` → store arguments, or a 422/400.
/// Where an action on a live stream's outputs (recording, restream pushers) is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnOwner {
    /// Here: this node publishes the stream, or no node does.
    Here,
    /// Sent to the node that publishes it (cluster).
    Sent,
}

/// Sends `control` to the stream's owner when that is another node; otherwise the caller
/// acts here. Redis away: 503.
async fn on_owner(
    state: &ApiState,
    control: crate::cluster::Control,
) -> Result<OnOwner, HttpError> {
    let Some(cluster) = &state.cluster else {
        return Ok(OnOwner::Here);
    };
    if state.hub.published(control.stream()).is_some() {
        return Ok(OnOwner::Here);
    }
    match cluster.send_control(&control).await {
        Ok(true) => Ok(OnOwner::Sent),
        Ok(false) => Ok(OnOwner::Here),
        Err(err) => {
            let mut e = HttpError::unavailable(format!(
                "the node publishing the stream cannot be reached: {err}"
            ));
            e.retry_after = Some(1);
            Err(e)
        }
    }
}

/// [`on_owner`] after a stored change (a restream destination, privacy) that the owner
/// picks up at its next publish anyway: a failure to tell it now is logged, not an error.
async fn tell_owner(state: &ApiState, control: crate::cluster::Control) -> OnOwner {
    match on_owner(state, control).await {
        Ok(w) => w,
        Err(err) => {
            tracing::warn!(error = %err.message, "cluster: change not sent to the stream's owner");
            OnOwner::Sent
        }
    }
}

fn page_args(limit: Option<i64>, cursor: Option<&str>) -> Result<(usize, Option<i64>), HttpError> {
    let limit = match limit {
        None => 20,
        Some(l) if (1..=100).contains(&l) => l as usize,
        Some(_) => {
            return Err(HttpError::invalid_fields(vec![crate::error::FieldError {
                field: "limit".into(),
                message: "must be between 1 and 100".into(),
            }]))
        }
    };
    let cursor = cursor
        .map(|c| {
            crate::store::decode_cursor(c).ok_or_else(|| HttpError::bad_request("invalid cursor"))
        })
        .transpose()?;
    Ok((limit, cursor))
}

/// Request ids: 16 random hex characters.
#[derive(Clone, Copy, Default)]
struct MakeId;

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let id = crate::store::random_id("", 8);
        axum::http::HeaderValue::from_str(&id)
            .ok()
            .map(RequestId::new)
    }
}

/// The CORS layer for `api.cors_allowed_origins` (API, HLS, MJPEG, WHIP/WHEP); `None` when
/// the list is empty.
pub fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods(Any)
            .allow_headers(Any)
            .expose_headers(Any),
    )
}

/// The API routes and their OpenAPI document.
pub fn routes() -> (Router<ApiState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(streams::create, streams::list))
        .routes(routes!(streams::get_one, streams::update, streams::delete))
        .routes(routes!(streams::stop))
        .routes(routes!(streams::rotate_key))
        .routes(routes!(streams::play_token))
        .routes(routes!(streams::revoke_play_tokens))
        .routes(routes!(tokens::create, tokens::list))
        .routes(routes!(tokens::delete))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::get_one, webhooks::delete))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(stats::get))
        .routes(routes!(nodes::list))
        .routes(routes!(recordings::list))
        .routes(routes!(recordings::get_one, recordings::delete))
        .routes(routes!(recordings::download))
        .routes(routes!(recordings::start))
        .routes(routes!(recordings::stop))
        .routes(routes!(live_stats::health))
        .routes(routes!(live_stats::viewers))
        .routes(routes!(restreams::create, restreams::list))
        .routes(routes!(
            restreams::get_one,
            restreams::update,
            restreams::delete
        ))
        .split_for_parts()
}

/// `/healthz`, `/api/v1/openapi.json` and `/api/v1/...` with every layer.
pub fn router(state: ApiState) -> Router {
    let (api, doc) = routes();
    let doc = Arc::new(doc);
    let request_id = HeaderName::from_static("x-request-id");
    let api = api
        .route("/metrics", get(metrics::get))
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limit::middleware,
        ))
        .layer(DefaultBodyLimit::max(state.config.api.max_body_bytes));
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone());
    if let Some(cors) = cors(&state.config.api.cors_allowed_origins) {
        router = router.layer(cors);
    }
    router
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeId))
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
}

async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

async fn not_found(uri: axum::http::Uri) -> HttpError {
    HttpError::not_found(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> HttpError {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
