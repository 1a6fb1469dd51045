//! Web pages served by the binary: the player (`/play/{id}`), the embed page
//! (`/embed/{id}`, the same player without chrome, for iframes) and the admin console
//! (`/console`, `/` redirects there). Plain HTML/CSS/JS embedded with `include_str!`: no
//! build step, no CDN; the only thing a page may load from elsewhere is the operator's
//! `[web] hlsjs_url`.
//!
//! Every page gets a strict Content-Security-Policy (no inline script or style, only this
//! origin), `nosniff` and `Referrer-Policy: no-referrer` (play tokens in `?token=` never leak
//! through a Referer). No page carries a secret: the pages hold only the stream id; what a
//! player may see comes from `/play/{id}/info`, which enforces the play token of private
//! streams like every media route; the console sends the operator's API token (kept in
//! session storage) as a Bearer header to the API.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::config::Config;
use crate::egress::PlaybackGate;
use crate::error::HttpError;
use crate::hub::Hub;
use crate::media::CodecConfig;
use crate::store::Store;

const PLAYER_HTML: &str = include_str!("assets/player.html");
const CONSOLE_HTML: &str = include_str!("assets/console.html");
const PLAYER_JS: &str = include_str!("assets/player.js");
const CONSOLE_JS: &str = include_str!("assets/console.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// What the pages need.
#[derive(Clone)]
pub struct WebContext {
    /// Server configuration (`[web]`, `[webrtc]`, public URLs).
    pub config: Arc<Config>,
    /// Streams (title, privacy, state).
    pub store: Store,
    /// Live streams (tracks, codecs).
    pub hub: Hub,
    /// Play tokens of private streams.
    pub gate: Arc<dyn PlaybackGate>,
}

/// The page routes (empty when `[web] enabled = false`).
pub fn router(ctx: WebContext) -> Router {
    if !ctx.config.web.enabled {
        return Router::new();
    }
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console", get(console))
        .route("/play/{stream_id}", get(play))
        .route("/embed/{stream_id}", get(embed))
        .route("/play/{stream_id}/info", get(info))
        .route("/assets/{file}", get(asset))
        .with_state(Arc::new(ctx))
}

/// The page URLs of a stream, for the API's stream views.
pub fn page_urls(public_url: &str, stream_id: &str) -> (String, String, String) {
    let play = format!("{public_url}/play/{stream_id}");
    let embed = format!("{public_url}/embed/{stream_id}");
    let iframe = format!(
        "<iframe src=\"{embed}\" width=\"640\" height=\"360\" frameborder=\"0\" \
         allow=\"autoplay; fullscreen; picture-in-picture\" allowfullscreen></iframe>"
    );
    (play, embed, iframe)
}

/// Which page a policy is for: who may frame it differs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Page {
    Console,
    Play,
    Embed,
}

/// The Content-Security-Policy of a page.
fn csp(config: &Config, page: Page) -> String {
    let hlsjs = origin_of(&config.web.hlsjs_url);
    let ancestors = match page {
        Page::Console => "'none'".to_owned(),
        Page::Play => "'self'".to_owned(),
        Page::Embed => config.web.embed_origins.join(" "),
    };
    format!(
        "default-src 'none'; script-src 'self'{hlsjs}; style-src 'self'; \
         img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; \
         worker-src 'self' blob:; frame-src 'self'; base-uri 'none'; form-action 'self'; \
         frame-ancestors {ancestors}"
    )
}

/// ` https://cdn.example` for an absolute hls.js URL; nothing for a path on this server.
fn origin_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {
            format!(" {}", u.origin().ascii_serialization())
        }
        _ => String::new(),
    }
}

fn page(config: &Config, kind: Page, html: String) -> Response {
    let mut resp = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html,
    )
        .into_response();
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp(config, kind)) {
        headers.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// Stream ids are `str_` + letters and digits; anything else is no stream.
fn valid_id(id: &str) -> Result<(), HttpError> {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(())
    } else {
        Err(HttpError::not_found("no such stream"))
    }
}

/// Escapes text for an HTML attribute value.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
}

fn player_page(ctx: &WebContext, id: &str, kind: Page) -> Result<Response, HttpError> {
    valid_id(id)?;
    let mode = if kind == Page::Embed { "embed" } else { "play" };
    let html = PLAYER_HTML
        .replace("{{STREAM_ID}}", &escape(id))
        .replace("{{MODE}}", mode)
        .replace("{{HLSJS}}", &escape(&ctx.config.web.hlsjs_url));
    Ok(page(&ctx.config, kind, html))
}

async fn play(
    State(ctx): State<Arc<WebContext>>,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    player_page(&ctx, &id, Page::Play)
}

async fn embed(
    State(ctx): State<Arc<WebContext>>,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    player_page(&ctx, &id, Page::Embed)
}

async fn console(State(ctx): State<Arc<WebContext>>) -> Response {
    page(&ctx.config, Page::Console, CONSOLE_HTML.to_owned())
}

async fn asset(Path(file): Path<String>) -> Result<Response, HttpError> {
    let (body, kind) = match file.as_str() {
        "player.js" => (PLAYER_JS, "text/javascript; charset=utf-8"),
        "console.js" => (CONSOLE_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        _ => return Err(HttpError::not_found(format!("no asset {file}"))),
    };
    Ok((
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response())
}

/// What a player may know about a stream (`GET /play/{id}/info`).
#[derive(Debug, Serialize)]
struct PlayInfo {
    id: String,
    title: String,
    /// `live`, `idle`, `scheduled` or `ended`.
    state: String,
    /// A JPEG camera (plays best as MJPEG).
    camera: bool,
    playback: Playback,
}

/// Playback paths for this stream, same-origin URLs (`null` where a path does not apply).
#[derive(Debug, Serialize)]
struct Playback {
    hls_url: String,
    /// With `[hls] cdn = true`: where the player reports that it is watching over HLS
    /// (`POST` every 10 s), since a cache in front answers its media requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    hls_beacon_url: Option<String>,
    /// WebRTC: only for H.264 without B-frames (browsers' WebRTC decoders need that).
    whep_url: Option<String>,
    mjpeg_url: Option<String>,
    /// Why WebRTC is not offered, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    webrtc_note: Option<String>,
}

async fn info(
    State(ctx): State<Arc<WebContext>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, HttpError> {
    valid_id(&id)?;
    let row = ctx
        .store
        .get_stream(&id)
        .await
        .map_err(|e| HttpError::internal("reading a stream", e))?
        .ok_or_else(|| HttpError::not_found("no such stream"))?;
    ctx.gate
        .check(&id, query.get("token").map(String::as_str))
        .await?;
    let snapshot = ctx.hub.get(&id).map(|s| s.snapshot());
    let state = if snapshot.is_some() {
        "live"
    } else {
        match row.status(&crate::store::now_rfc3339()) {
            "live" => "idle",
            s => s,
        }
    };
    let tracks = snapshot.as_ref().and_then(|s| s.tracks.clone());
    let has = |f: &dyn Fn(&CodecConfig) -> bool| {
        tracks
            .as_ref()
            .is_some_and(|t| t.list.iter().any(|t| f(&t.codec)))
    };
    let camera = has(&|c| matches!(c, CodecConfig::Jpeg { .. }));
    let h264 = has(&|c| matches!(c, CodecConfig::H264(_)));
    let web_video = h264
        || has(&|c| matches!(c, CodecConfig::Av1(_)))
        || has(&|c| matches!(c, CodecConfig::Vp9(v) if v.profile == 0));
    let b_frames = h264 && snapshot.as_ref().is_some_and(|s| s.has_b_frames);
    let (whep_url, webrtc_note) = if !ctx.config.webrtc.enabled {
        (
            None,
            Some("WebRTC playback is turned off on this server".to_owned()),
        )
    } else if !web_video {
        (
            None,
            Some("no H.264, VP9 or AV1 video to play over WebRTC".to_owned()),
        )
    } else if b_frames {
        (
            None,
            Some("the video has B-frames, which browsers' WebRTC decoders do not take".to_owned()),
        )
    } else {
        (Some(format!("/whep/{id}")), None)
    };
    let body = PlayInfo {
        title: row.title.clone(),
        state: state.to_owned(),
        camera,
        playback: Playback {
            hls_url: format!("/hls/{id}/index.m3u8"),
            hls_beacon_url: ctx.config.hls.cdn.then(|| {
                format!(
                    "/hls/{id}/s/{}/beacon",
                    crate::egress::hls::sessions::HlsSessions::new_id()
                )
            }),
            whep_url,
            mjpeg_url: camera.then(|| format!("/mjpeg/{id}")),
            webrtc_note,
        },
        id,
    };
    Ok((
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        Json(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csp_is_strict_and_names_only_the_configured_hlsjs_origin() {
        let mut config = Config::default();
        let p = csp(&config, Page::Console);
        assert!(p.contains("script-src 'self';"), "{p}");
        assert!(!p.contains("unsafe-inline"), "{p}");
        assert!(p.ends_with("frame-ancestors 'none'"), "{p}");
        assert!(csp(&config, Page::Embed).ends_with("frame-ancestors *"));
        config.web.hlsjs_url = "https://cdn.example.com/hls.js@1/dist/hls.min.js".into();
        config.web.embed_origins = vec!["https://a.example".into(), "https://b.example".into()];
        let p = csp(&config, Page::Embed);
        assert!(
            p.contains("script-src 'self' https://cdn.example.com;"),
            "{p}"
        );
        assert!(
            p.ends_with("frame-ancestors https://a.example https://b.example"),
            "{p}"
        );
        config.web.hlsjs_url = "/static/hls.min.js".into();
        assert!(csp(&config, Page::Play).contains("script-src 'self';"));
    }

    #[test]
    fn ids_are_checked_and_attributes_escaped() {
        assert!(valid_id("str_abc123").is_ok());
        for bad in ["", "../x", "a b", "<script>", &"x".repeat(65)] {
            assert!(valid_id(bad).is_err(), "{bad}");
        }
        assert_eq!(escape("\"><x a='1'&"), "&quot;&gt;&lt;x a=&#39;1&#39;&amp;");
    }
}
