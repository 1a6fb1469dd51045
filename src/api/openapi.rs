//! The OpenAPI document's frame: title, version, the Bearer security scheme and shared
//! schemas. Paths are added by `utoipa-axum` from the handlers' `#[utoipa::path]`
//! annotations as the router is built, so a route cannot exist without being documented.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::ErrorEnvelope;

/// The document before paths are added.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "media-server control API",
        description = "Streams, keys, tokens, webhooks, recordings, restreams and stats. Authenticate with `Authorization: Bearer <token>`; every response carries X-RateLimit-Limit/Remaining/Reset and X-Request-Id.",
    ),
    components(schemas(ErrorEnvelope)),
    modifiers(&BearerAuth),
    tags(
        (name = "streams", description = "Live streams, their keys and playback"),
        (name = "tokens", description = "API tokens"),
        (name = "webhooks", description = "Signed event delivery"),
        (name = "stats", description = "Server statistics"),
        (name = "recordings", description = "Recordings: list, download, delete, start/stop"),
        (name = "restreams", description = "Push a stream to YouTube, Twitch, Facebook or any RTMP(S) server"),
    )
)]
struct Base;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The base document.
pub fn base() -> utoipa::openapi::OpenApi {
    Base::openapi()
}
