//! The control API (`/api/v1`) and `/healthz`: axum routes over the store and the hub.
//!
//! [`router`] is built once; tests drive it with `oneshot` requests, no socket needed.
//! Conventions follow DESIGN.md: JSON with snake_case fields, `{data, pagination}` lists with
//! an opaque cursor, the `{error: {code, message, status}}` shape, Bearer tokens with scopes.

mod auth;
mod streams;

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::config::Config;
use crate::hub::Hub;
use crate::store::Store;

pub use auth::Auth;

/// Shared state of every API handler.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// Configuration (public URLs).
    pub config: Arc<Config>,
    /// Database.
    pub store: Store,
    /// Live streams.
    pub hub: Hub,
}

/// A page of a list endpoint.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    /// The items.
    pub data: Vec<T>,
    /// Where the next page starts.
    pub pagination: Pagination,
}

/// Cursor pagination block.
#[derive(Debug, Serialize)]
pub struct Pagination {
    /// Opaque cursor for the next page (`null` on the last page).
    pub next_cursor: Option<String>,
    /// Whether another page exists.
    pub has_more: bool,
}

/// `/healthz` and `/api/v1/...`.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/streams", get(streams::list))
        .route("/api/v1/streams/{id}", get(streams::get_one))
        .fallback(not_found)
        .with_state(state)
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

async fn not_found(uri: axum::http::Uri) -> crate::error::HttpError {
    crate::error::HttpError::not_found(format!("no route for {}", uri.path()))
}
