//! The HTTP side of WHIP (RFC 9725) and WHEP: routes, CORS for browser publishers and
//! players, and the session resources behind `Location` (`DELETE` ends a session, `PATCH`
//! takes trickle-ICE candidates, and answers an ICE restart with new credentials and a new
//! ETag, RFC 9725 §4.3.2).
//!
//! ```text
//! POST    /whip/{app}/{name}        Bearer {stream_key}, application/sdp  → 201 + answer
//! POST    /whep/{stream_id}         [?token=], application/sdp            → 201 + answer
//! DELETE  /whip/session/{id}        Bearer {stream_key}                   → 200
//! DELETE  /whep/session/{id}                                              → 200
//! PATCH   /wh{i,e}p/session/{id}    application/trickle-ice-sdpfrag       → 204
//!                                   (new ice-ufrag/pwd: ICE restart)      → 200 + fragment
//! OPTIONS on each                   Accept-Post / Allow, CORS preflight
//! ```

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_TYPE, ETAG, IF_MATCH, LOCATION};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::Router;
use tokio::sync::watch;

use crate::egress::PlaybackGate;
use crate::error::HttpError;
use crate::hub::Hub;
use crate::net::webrtc::{Session, SessionKind, WebRtc};
use crate::proto::sdp::{self, SdpError};
use crate::store::Store;

/// What the WHIP/WHEP handlers need.
#[derive(Clone)]
pub struct WebRtcContext {
    /// Sessions and peer factory.
    pub webrtc: Arc<WebRtc>,
    /// Stream keys.
    pub store: Store,
    /// Live streams.
    pub hub: Hub,
    /// Private-stream check for WHEP.
    pub gate: Arc<dyn PlaybackGate>,
    /// Turns true on shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// Origins allowed to publish/play from a page (`api.cors_allowed_origins`).
    pub cors_origins: Vec<String>,
    /// The platform's authoriser, for WHIP bearers that are no key of ours.
    pub external: Option<Arc<crate::extauth::ExternalAuth>>,
    /// Audio transcoders (AAC → Opus for WHEP viewers).
    pub transcoders: Arc<crate::egress::transcode::AudioTranscoders>,
}

impl std::fmt::Debug for WebRtcContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcContext").finish_non_exhaustive()
    }
}

pub use crate::api::auth::bearer;

/// 415 unless the body is `application/sdp`.
pub fn require_sdp(headers: &HeaderMap) -> Result<(), HttpError> {
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if ct
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
    {
        Ok(())
    } else {
        Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be an SDP offer with Content-Type: application/sdp",
        ))
    }
}

/// An offer problem as the API's error JSON.
pub fn sdp_error(e: SdpError) -> HttpError {
    tracing::warn!(error = %e, "webrtc: offer refused");
    match e {
        SdpError::UnsupportedCodec(_) => {
            HttpError::new(StatusCode::BAD_REQUEST, "unsupported_codec", e.to_string())
        }
        SdpError::Malformed(_) | SdpError::Invalid(_) => {
            HttpError::new(StatusCode::BAD_REQUEST, "invalid_sdp", e.to_string())
        }
    }
}

/// `201 Created` with the answer, `Location` and `ETag`.
pub fn created_response(session: &Session, prefix: &str, answer: String) -> Response {
    let mut res = (StatusCode::CREATED, answer).into_response();
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/sdp"));
    if let Ok(v) = HeaderValue::from_str(&format!("/{prefix}/session/{}", session.id)) {
        h.insert(LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&session.etag()) {
        h.insert(ETAG, v);
    }
    res
}

/// WHIP/WHEP routes with their CORS layer.
pub fn router(ctx: WebRtcContext) -> Router {
    let cors = crate::api::cors(&ctx.cors_origins);
    let router = Router::new()
        .route(
            "/whip/{app}/{name}",
            post(crate::ingest::whip::publish).options(endpoint_options),
        )
        .route(
            "/whep/{stream_id}",
            post(crate::egress::whep::play).options(endpoint_options),
        )
        .route(
            "/whip/session/{id}",
            delete(delete_whip)
                .patch(patch_whip)
                .options(session_options),
        )
        .route(
            "/whep/session/{id}",
            delete(delete_whep)
                .patch(patch_whep)
                .options(session_options),
        )
        .with_state(ctx);
    let router = match cors {
        Some(c) => router.layer(c),
        None => router,
    };
    // The CORS layer answers every OPTIONS itself; add what RFC 9725 clients look for.
    router.layer(axum::middleware::from_fn(options_headers))
}

async fn options_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let is_options = req.method() == Method::OPTIONS;
    let session = req.uri().path().contains("/session/");
    let mut res = next.run(req).await;
    if is_options {
        let h = res.headers_mut();
        if session {
            h.insert(
                "accept-patch",
                HeaderValue::from_static("application/trickle-ice-sdpfrag"),
            );
        } else {
            h.insert("accept-post", HeaderValue::from_static("application/sdp"));
        }
    }
    res
}

async fn endpoint_options() -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    h.insert("accept-post", HeaderValue::from_static("application/sdp"));
    h.insert("allow", HeaderValue::from_static("OPTIONS, POST"));
    res
}

async fn session_options() -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    h.insert(
        "accept-patch",
        HeaderValue::from_static("application/trickle-ice-sdpfrag"),
    );
    h.insert("allow", HeaderValue::from_static("OPTIONS, PATCH, DELETE"));
    res
}

fn find(
    ctx: &WebRtcContext,
    id: &str,
    kind: SessionKind,
    headers: &HeaderMap,
) -> Result<Arc<Session>, HttpError> {
    let session = ctx
        .webrtc
        .get(id, kind)
        .ok_or_else(|| HttpError::not_found("no such session"))?;
    if !session.authorizes(bearer(headers).as_deref()) {
        return Err(HttpError::unauthorized(
            "the session's stream key is required: Authorization: Bearer {stream_key}",
        ));
    }
    Ok(session)
}

async fn delete_session(
    ctx: WebRtcContext,
    id: String,
    kind: SessionKind,
    headers: HeaderMap,
) -> Result<StatusCode, HttpError> {
    // DELETE is idempotent: a session the server ended lately (the stream ended, ICE never
    // connected) is answered as deleted, not 404, to the client that owned it.
    if ctx.webrtc.get(&id, kind).is_none() {
        match ctx
            .webrtc
            .recently_ended(&id, kind, bearer(&headers).as_deref())
        {
            Some(true) => return Ok(StatusCode::OK),
            Some(false) => {
                return Err(HttpError::unauthorized(
                    "the session's stream key is required: Authorization: Bearer {stream_key}",
                ))
            }
            None => {}
        }
    }
    let session = find(&ctx, &id, kind, &headers)?;
    tracing::info!(session = %session.id, kind = kind.as_str(), "webrtc: DELETE");
    session.close();
    if kind == SessionKind::Whip {
        // Answer once the publisher has let the stream go (bounded), so a client that
        // DELETEs and publishes again at once is not refused as a second publisher.
        for _ in 0..40 {
            if ctx.hub.get(&session.stream_id).is_none() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    Ok(StatusCode::OK)
}

async fn delete_whip(
    State(ctx): State<WebRtcContext>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, HttpError> {
    delete_session(ctx, id, SessionKind::Whip, headers).await
}

async fn delete_whep(
    State(ctx): State<WebRtcContext>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, HttpError> {
    delete_session(ctx, id, SessionKind::Whep, headers).await
}

async fn patch_session(
    ctx: WebRtcContext,
    id: String,
    kind: SessionKind,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let session = find(&ctx, &id, kind, &headers)?;
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/trickle-ice-sdpfrag") {
        return Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "PATCH takes Content-Type: application/trickle-ice-sdpfrag",
        ));
    }
    if let Some(tag) = headers.get(IF_MATCH).and_then(|h| h.to_str().ok()) {
        if tag != "*" && tag != session.etag() {
            return Err(HttpError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                "If-Match does not match the session's ETag",
            ));
        }
    }
    let fragment = sdp::parse_trickle_fragment(&body).map_err(sdp_error)?;
    let restart = fragment
        .ufrag
        .as_deref()
        .is_some_and(|u| session.remote_ufrag().as_deref() != Some(u));
    if !restart {
        ctx.webrtc
            .trickle(&session, &fragment)
            .map_err(HttpError::from)?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    // An ICE restart (RFC 9725 §4.3.2): new credentials of ours in a fragment, a new ETag;
    // the fragment's candidates belong to the new ICE session.
    let answer = ctx.webrtc.ice_restart(&session, &fragment).await?;
    let mut res = (StatusCode::OK, answer).into_response();
    let h = res.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/trickle-ice-sdpfrag"),
    );
    if let Ok(v) = HeaderValue::from_str(&session.etag()) {
        h.insert(ETAG, v);
    }
    Ok(res)
}

async fn patch_whip(
    State(ctx): State<WebRtcContext>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    patch_session(ctx, id, SessionKind::Whip, headers, body).await
}

async fn patch_whep(
    State(ctx): State<WebRtcContext>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    patch_session(ctx, id, SessionKind::Whep, headers, body).await
}
