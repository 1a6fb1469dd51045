//! HTTP for LL-HLS.
//!
//! Names, under `/hls/{stream_id}/`: `index.m3u8` (multivariant), `media.m3u8` (media
//! playlist, with blocking reload), and per playlist run `{run}-init{n}.mp4`,
//! `{run}-seg{msn}.m4s`, `{run}-part{msn}.{i}.m4s` (a request for the part named by the
//! preload hint waits until it exists). The run changes whenever a stream starts a fresh
//! playlist, so a name never means two different objects and caches may keep them for good.
//!
//! Viewers: by default each player gets a session directory (`s/{session}/`) named in the
//! multivariant playlist (a bare `media.m3u8` request is redirected into one); every URI in
//! the media playlist is relative, so the playlist bytes are the same for every viewer and
//! are rendered once per revision. With `[hls] cdn = true` nothing per viewer is put in any
//! URL (a cache in front serves everyone from one copy) and HLS viewers are counted from the
//! player page's beacons (`POST s/{session}/beacon`) instead.
//!
//! No client is handed a playlist it cannot start from: a plain playlist request (no
//! `_HLS_msn`) and the multivariant playlist wait until one complete segment exists
//! (bounded by 1.5 × the segment target, then 503 with `Retry-After`). Blocking requests
//! for parts work from the first part. Everything is served from the segmenter's memory.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;

use super::sessions::HlsSessions;
use super::{HlsRegistry, HlsStream, RequestKind};
use crate::error::HttpError;
use crate::proto::fmp4::Chunks;
use crate::proto::playlist::{self, ReloadDecision};

const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";
/// Init segments, segments and parts never change once published (their names carry the run).
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Routes under `/hls`.
pub fn router(registry: Arc<HlsRegistry>) -> Router {
    Router::new()
        .route("/hls/{stream_id}/{file}", get(serve_plain))
        .route("/hls/{stream_id}/s/{session}/{file}", get(serve_in_session))
        .route("/hls/{stream_id}/s/{session}/beacon", post(beacon))
        .with_state(registry)
}

/// `GET /hls/…` answered ahead of the router ([`crate::net::http::FastRoute`]): the same
/// handler, media rate limit and CORS headers as the routes above, without routing,
/// extractors or tower layers on the path every viewer takes several times a second.
/// Anything else under `/hls` (the beacon `POST`, `HEAD`, CORS preflights, percent-encoded
/// paths) goes to the router.
pub struct FastHls {
    registry: Arc<HlsRegistry>,
    limit: crate::api::rate_limit::MediaLimit,
    cors: Option<PlainCors>,
}

impl FastHls {
    /// `cors_origins` as in `[api] cors_allowed_origins` (empty: no CORS headers).
    pub fn new(
        registry: Arc<HlsRegistry>,
        limit: crate::api::rate_limit::MediaLimit,
        cors_origins: &[String],
    ) -> Self {
        FastHls {
            registry,
            limit,
            cors: PlainCors::new(cors_origins),
        }
    }
}

/// Where a fast-path request goes: `/hls/{stream_id}/{file}` or
/// `/hls/{stream_id}/s/{session}/{file}`. `None` for any other shape, an empty or
/// percent-encoded segment (the router decodes those), or the beacon.
pub fn split_hls_path(path: &str) -> Option<(&str, Option<&str>, &str)> {
    let rest = path.strip_prefix("/hls/")?;
    if rest.contains('%') {
        return None;
    }
    let mut it = rest.split('/');
    let stream_id = it.next().filter(|s| !s.is_empty())?;
    let second = it.next().filter(|s| !s.is_empty())?;
    match (it.next(), it.next(), it.next()) {
        (None, _, _) => Some((stream_id, None, second)),
        (Some(session), Some(file), None)
            if second == "s" && !session.is_empty() && !file.is_empty() && file != "beacon" =>
        {
            Some((stream_id, Some(session), file))
        }
        _ => None,
    }
}

impl crate::net::http::FastRoute for FastHls {
    fn wants(&self, path: &str) -> bool {
        split_hls_path(path).is_some()
    }

    fn answer(
        &self,
        req: crate::net::http::FastRequest,
        peer: std::net::SocketAddr,
    ) -> crate::net::http::FastFuture {
        let origin = self.cors.as_ref().and_then(|_| req.origin());
        let registry = self.registry.clone();
        let limit = self.limit.clone();
        let cors = self.cors.clone();
        Box::pin(async move {
            let decision = limit.decide(peer.ip());
            let mut resp = match decision {
                Some(d) if !d.allowed => crate::api::rate_limit::MediaLimit::refusal(d),
                _ => match split_hls_path(req.path()) {
                    Some((stream_id, session, file)) => {
                        let query = req.query();
                        let result = match session {
                            Some(s) if !HlsSessions::valid_id(s) => {
                                Err(HttpError::not_found("no such session directory"))
                            }
                            _ => {
                                serve(
                                    &registry,
                                    stream_id,
                                    session.map(str::to_owned),
                                    file,
                                    query,
                                    Some(peer.ip()),
                                )
                                .await
                            }
                        };
                        respond(&registry, query, result)
                    }
                    None => HttpError::not_found("no such file").into_response(),
                },
            };
            if let Some(d) = decision {
                resp = crate::api::rate_limit::with_headers(resp, d);
            }
            if let Some(cors) = &cors {
                cors.apply(origin.as_ref(), resp.headers_mut());
            }
            resp
        })
    }
}

/// The headers `api::cors`'s layer adds to a plain (not preflight) request's answer.
#[derive(Clone)]
struct PlainCors {
    /// `*`, or the allowed origins to echo.
    any: bool,
    origins: Arc<Vec<HeaderValue>>,
}

impl PlainCors {
    fn new(origins: &[String]) -> Option<Self> {
        if origins.is_empty() {
            return None;
        }
        Some(PlainCors {
            any: origins.iter().any(|o| o == "*"),
            origins: Arc::new(origins.iter().filter_map(|o| o.parse().ok()).collect()),
        })
    }

    fn apply(&self, origin: Option<&HeaderValue>, h: &mut axum::http::HeaderMap) {
        h.append(
            header::VARY,
            HeaderValue::from_static(
                "origin, access-control-request-method, access-control-request-headers",
            ),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("*"),
        );
        if self.any {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else if let Some(o) = origin.filter(|o| self.origins.contains(o)) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
        }
    }
}

/// What a file name in the stream's directory asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Resource<'a> {
    /// `index.m3u8`.
    Multivariant,
    /// `media.m3u8`.
    Media,
    /// `{run}-media.m3u8`: the media playlist of one run (what the multivariant playlist
    /// names behind a cache, so cached blocking responses of an earlier run never answer).
    RunMedia(&'a str),
    /// `{run}-init{n}.mp4`.
    Init(&'a str, u32),
    /// `{run}-seg{msn}.m4s`.
    Segment(&'a str, u64),
    /// `{run}-part{msn}.{i}.m4s`.
    Part(&'a str, u64, usize),
}

/// Reads a file name under a stream's directory; `None` for a name the server never gives.
pub fn parse_resource(file: &str) -> Option<Resource<'_>> {
    match file {
        "index.m3u8" => return Some(Resource::Multivariant),
        "media.m3u8" => return Some(Resource::Media),
        _ => {}
    }
    let (run, name) = file.split_once('-')?;
    if run.is_empty() || !run.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    if name == "media.m3u8" {
        return Some(Resource::RunMedia(run));
    }
    if let Some(n) = name
        .strip_prefix("init")
        .and_then(|f| f.strip_suffix(".mp4"))
    {
        return parse_number(n).map(|n| Resource::Init(run, n));
    }
    if let Some(n) = name
        .strip_prefix("seg")
        .and_then(|f| f.strip_suffix(".m4s"))
    {
        return parse_number(n).map(|n| Resource::Segment(run, n));
    }
    let rest = name.strip_prefix("part")?.strip_suffix(".m4s")?;
    let (msn, part) = rest.split_once('.')?;
    Some(Resource::Part(run, parse_number(msn)?, parse_number(part)?))
}

/// A decimal number of ASCII digits only (no sign, no spaces).
fn parse_number<N: std::str::FromStr>(s: &str) -> Option<N> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The query parameters HLS cares about.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HlsQuery<'a> {
    /// `_HLS_msn`.
    pub msn: Option<u64>,
    /// `_HLS_part`.
    pub part: Option<u64>,
    /// `token`, when it has only the characters a play token has.
    pub token: Option<&'a str>,
}

impl<'a> HlsQuery<'a> {
    /// Reads a raw query; a malformed `_HLS_msn`/`_HLS_part` is a 400.
    pub fn parse(raw: Option<&'a str>) -> Result<Self, HttpError> {
        let mut q = HlsQuery::default();
        for pair in raw.unwrap_or("").split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let number = |key: &str| {
                parse_number::<u64>(v).map(Some).ok_or_else(|| {
                    HttpError::bad_request(format!("{key} must be a non-negative integer"))
                })
            };
            match k {
                "_HLS_msn" => q.msn = number(k)?,
                "_HLS_part" => q.part = number(k)?,
                // Play tokens are URL-safe (base64url and dots): anything else is no token.
                "token"
                    if v.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-'
                    }) =>
                {
                    q.token = Some(v)
                }
                _ => {}
            }
        }
        Ok(q)
    }
}

async fn serve_plain(
    State(registry): State<Arc<HlsRegistry>>,
    Path((stream_id, file)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    connect: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
) -> Response {
    let remote = connect.map(|c| c.0 .0.ip());
    let result = serve(&registry, &stream_id, None, &file, query.as_deref(), remote).await;
    respond(&registry, query.as_deref(), result)
}

async fn serve_in_session(
    State(registry): State<Arc<HlsRegistry>>,
    Path((stream_id, session, file)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    connect: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
) -> Response {
    if !HlsSessions::valid_id(&session) {
        return HttpError::not_found("no such session directory").into_response();
    }
    let remote = connect.map(|c| c.0 .0.ip());
    let result = serve(
        &registry,
        &stream_id,
        Some(session),
        &file,
        query.as_deref(),
        remote,
    )
    .await;
    respond(&registry, query.as_deref(), result)
}

/// The response or the error's. Behind a cache (cdn), "not there (yet)" answers — 404 and
/// 503 — may be kept for a second: a shared cache then collapses the requests of every
/// viewer into one (an uncacheable answer would make it send each viewer's request on,
/// and Varnish would keep doing so for two minutes).
fn respond(
    registry: &HlsRegistry,
    raw_query: Option<&str>,
    result: Result<Response, HttpError>,
) -> Response {
    let mut resp = result.unwrap_or_else(IntoResponse::into_response);
    let status = resp.status();
    if registry.cfg.cdn
        && (status == StatusCode::NOT_FOUND || status == StatusCode::SERVICE_UNAVAILABLE)
    {
        let private = HlsQuery::parse(raw_query).is_ok_and(|q| q.token.is_some());
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, cache_header(private, "max-age=1"));
    }
    resp
}

/// `POST /hls/{stream_id}/s/{session}/beacon`: a player page says it is watching (every
/// ~10 s). This is how HLS viewers are counted when a cache sits in front (`[hls] cdn`).
async fn beacon(
    State(registry): State<Arc<HlsRegistry>>,
    Path((stream_id, session)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    connect: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
) -> Result<Response, HttpError> {
    if !HlsSessions::valid_id(&session) {
        return Err(HttpError::bad_request(
            "the session must be 16 hexadecimal characters",
        ));
    }
    let query = HlsQuery::parse(query.as_deref())?;
    registry
        .gate
        .check_viewer(&stream_id, query.token, "hls", None)
        .await?;
    if registry.hub.get(&stream_id).is_none() {
        return Err(HttpError::not_found(format!(
            "stream {stream_id} is not live"
        )));
    }
    registry.sessions.touch(
        &registry.hub,
        &session,
        &stream_id,
        connect.map(|c| c.0 .0.ip()),
        0,
        std::time::Instant::now(),
    );
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

async fn serve(
    registry: &Arc<HlsRegistry>,
    stream_id: &str,
    session: Option<String>,
    file: &str,
    raw_query: Option<&str>,
    remote: Option<std::net::IpAddr>,
) -> Result<Response, HttpError> {
    let resource = parse_resource(file)
        .ok_or_else(|| HttpError::not_found(format!("no such file: {file}")))?;
    let query = HlsQuery::parse(raw_query)?;
    registry
        .gate
        .check_viewer(stream_id, query.token, "hls", None)
        .await?;
    let cdn = registry.cfg.cdn;
    // The play token reaches every URI the playlists name.
    let token_query = query
        .token
        .map_or_else(String::new, |t| format!("?token={t}"));
    if registry.hub.in_cluster() && registry.hub.get(stream_id).is_none() {
        // Published on another node: relayed here first (its segmenter starts with it) —
        // again after a failover, when the playlist waits in its grace period for the stream
        // to come back from its new owner.
        if let Err(err) = registry.hub.ensure_live(stream_id).await {
            if registry.get(stream_id).is_none() {
                return Err(HttpError::from_hub(err));
            }
        }
    }
    let stream = registry
        .get_or_start(stream_id)
        .ok_or_else(|| HttpError::not_found(format!("stream {stream_id} is not live")))?;
    let kind = match &resource {
        Resource::Multivariant => RequestKind::Multivariant,
        Resource::Media | Resource::RunMedia(_) if query.msn.is_some() => {
            RequestKind::BlockingPlaylist
        }
        Resource::Media | Resource::RunMedia(_) => RequestKind::Playlist,
        Resource::Init(..) => RequestKind::Init,
        Resource::Segment(..) => RequestKind::Segment,
        Resource::Part(..) => RequestKind::Part,
    };
    registry.count_request(kind);
    let private = query.token.is_some();
    let response = match resource {
        Resource::Multivariant => {
            // A player's first request: by default it gets a session directory, named in the
            // media playlist URI; behind a cache (cdn) nothing per viewer goes in a URL.
            let media_uri = match (&session, cdn) {
                (None, false) => format!("s/{}/media.m3u8{token_query}", HlsSessions::new_id()),
                // Behind a cache the URL names the run: a cached answer to a blocking request
                // of an earlier run (msns start again at 0) can never answer this one.
                (_, true) => format!("{}-media.m3u8{token_query}", stream.lock().run()),
                (Some(_), false) => format!("media.m3u8{token_query}"),
            };
            multivariant(registry, stream_id, &stream, media_uri, private).await
        }
        Resource::Media if session.is_none() && !cdn => {
            // A player that went straight to the media playlist: into a session directory,
            // so its reloads and parts count as one viewer.
            return Ok(redirect_into_session(raw_query));
        }
        Resource::RunMedia(run) if stream.lock().run() != run => Err(HttpError::not_found(
            format!("{file} belongs to an earlier run of the stream; reload index.m3u8"),
        )),
        Resource::Media | Resource::RunMedia(_) => {
            media_playlist(registry, stream_id, &stream, &query, &token_query, private).await
        }
        Resource::Init(run, id) => {
            let init = {
                let seg = stream.lock();
                (seg.run() == run).then(|| seg.init(id)).flatten()
            };
            init.map(|b| {
                media_response(
                    Chunks {
                        len: b.len(),
                        parts: vec![b],
                    },
                    "video/mp4",
                    private,
                )
            })
            .ok_or_else(|| HttpError::not_found(format!("no init segment {file}")))
        }
        Resource::Segment(run, msn) => {
            let seg = {
                let seg = stream.lock();
                (seg.run() == run).then(|| seg.segment(msn)).flatten()
            };
            seg.map(|c| media_response(c, "video/iso.segment", private))
                .ok_or_else(|| HttpError::not_found(format!("segment {file} is not available")))
        }
        Resource::Part(run, msn, index) => part(&stream, run, msn, index, private).await,
    }?;
    let sent = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    registry.hub.add_stream_bytes_out(stream_id, sent);
    if let Some(id) = &session {
        registry.sessions.touch(
            &registry.hub,
            id,
            stream_id,
            remote,
            sent,
            std::time::Instant::now(),
        );
    }
    Ok(response)
}

/// `302` from `media.m3u8` to `s/{new session}/media.m3u8` with the query kept.
fn redirect_into_session(raw_query: Option<&str>) -> Response {
    let mut location = format!("s/{}/media.m3u8", HlsSessions::new_id());
    if let Some(q) = raw_query.filter(|q| !q.is_empty()) {
        location.push('?');
        location.push_str(q);
    }
    let mut resp = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Waits (bounded) until the stream has a complete segment or has ended; 503 with
/// `Retry-After` when the bound passes first.
async fn wait_for_first_segment(
    registry: &HlsRegistry,
    stream_id: &str,
    stream: &HlsStream,
) -> Result<(), HttpError> {
    let mut changes = stream.subscribe_changes();
    {
        let seg = stream.lock();
        if seg.has_complete_segment() || seg.is_ended() {
            return Ok(());
        }
    }
    let until = tokio::time::Instant::now() + registry.first_segment_wait(stream_id);
    loop {
        {
            let seg = stream.lock();
            if seg.has_complete_segment() || seg.is_ended() {
                return Ok(());
            }
        }
        match tokio::time::timeout_at(until, changes.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(HttpError::not_found("the stream is gone")),
            Err(_) => {
                let mut err = HttpError::unavailable(
                    "the stream has no complete segment yet; retry in a moment",
                );
                err.retry_after = Some(1);
                return Err(err);
            }
        }
    }
}

async fn multivariant(
    registry: &HlsRegistry,
    stream_id: &str,
    stream: &HlsStream,
    media_uri: String,
    private: bool,
) -> Result<Response, HttpError> {
    wait_for_first_segment(registry, stream_id, stream).await?;
    let variant = stream.lock().variant();
    let mut variant = variant.ok_or_else(|| HttpError::not_found("the stream has no media"))?;
    variant.uri = media_uri;
    // By default the body names a new session: never share it. Behind a cache (cdn) the
    // body is the same for everyone and changes only with BANDWIDTH.
    let cache = if registry.cfg.cdn {
        cache_header(private, "max-age=2")
    } else {
        HeaderValue::from_static("no-store")
    };
    Ok(playlist_response(
        Bytes::from(playlist::render_multivariant(&[variant])),
        cache,
    ))
}

/// `public, {rest}` or, for a private stream's request (a token in the URL), `private, {rest}`.
fn cache_header(private: bool, rest: &'static str) -> HeaderValue {
    let scope = if private { "private" } else { "public" };
    HeaderValue::from_str(&format!("{scope}, {rest}"))
        .unwrap_or(HeaderValue::from_static("no-store"))
}

/// Answers a media playlist request, holding it while `_HLS_msn`/`_HLS_part` are in the future,
/// and a plain request until a complete segment exists.
async fn media_playlist(
    registry: &HlsRegistry,
    stream_id: &str,
    stream: &HlsStream,
    query: &HlsQuery<'_>,
    token_query: &str,
    private: bool,
) -> Result<Response, HttpError> {
    let blocking = query.msn.is_some();
    if !blocking {
        if query.part.is_some() {
            return Err(HttpError::bad_request("_HLS_part needs _HLS_msn"));
        }
        wait_for_first_segment(registry, stream_id, stream).await?;
    }
    let mut changes = stream.subscribe_changes();
    let mut deadline = None;
    loop {
        let (decision, body, ended, target) = {
            let seg = stream.lock();
            let pl = seg.playlist();
            let decision = playlist::reload_decision(pl, query.msn, query.part);
            let body = (decision == ReloadDecision::Ready).then(|| {
                if token_query.is_empty() {
                    stream.rendered(&seg)
                } else {
                    Bytes::from(pl.render_with_query(token_query))
                }
            });
            (decision, body, pl.ended, pl.target_duration())
        };
        match decision {
            ReloadDecision::Ready => {
                let cache = if !registry.cfg.cdn {
                    HeaderValue::from_static("no-cache")
                } else if blocking && !ended {
                    // The answer to a blocking request holds what was asked for, whenever it
                    // is fetched: caches may keep it (keyed by _HLS_msn/_HLS_part).
                    cache_header(private, "max-age=60")
                } else {
                    cache_header(private, "max-age=1")
                };
                return Ok(playlist_response(body.unwrap_or_default(), cache));
            }
            ReloadDecision::BadRequest => {
                return Err(HttpError::bad_request(
                    "_HLS_msn/_HLS_part is malformed or too far ahead of the playlist",
                ))
            }
            ReloadDecision::Wait => {
                // The spec's limit: three target durations, then 503.
                let until = *deadline.get_or_insert_with(|| {
                    tokio::time::Instant::now() + Duration::from_secs(3 * target.max(1))
                });
                wait_for_change(&mut changes, until).await?;
            }
        }
    }
}

async fn wait_for_change(
    changes: &mut tokio::sync::watch::Receiver<u64>,
    until: tokio::time::Instant,
) -> Result<(), HttpError> {
    match tokio::time::timeout_at(until, changes.changed()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(HttpError::not_found("the stream is gone")),
        Err(_) => Err(HttpError::unavailable(
            "the requested segment or part did not appear in time",
        )),
    }
}

/// Serves a part; the part named by the preload hint (the next one) is waited for.
async fn part(
    stream: &HlsStream,
    run: &str,
    msn: u64,
    index: usize,
    private: bool,
) -> Result<Response, HttpError> {
    let mut changes = stream.subscribe_changes();
    let mut deadline = None;
    loop {
        let (found, awaitable, target) = {
            let seg = stream.lock();
            if seg.run() != run {
                return Err(HttpError::not_found(format!(
                    "part {index} of segment {msn} belongs to another run of the stream"
                )));
            }
            let pl = seg.playlist();
            let found = seg.serve_part(msn, index);
            let next = pl.next_msn();
            let open_parts = pl.open.as_ref().map_or(0, |o| o.parts.len());
            let awaitable = !pl.ended
                && ((msn == next && index <= open_parts + 1) || (msn == next + 1 && index == 0));
            (found, awaitable, pl.target_duration())
        };
        if let Some(chunks) = found {
            return Ok(media_response(chunks, "video/iso.segment", private));
        }
        if !awaitable {
            return Err(HttpError::not_found(format!(
                "part {index} of segment {msn} is not available"
            )));
        }
        let until = *deadline.get_or_insert_with(|| {
            tokio::time::Instant::now() + Duration::from_secs(3 * target.max(1))
        });
        wait_for_change(&mut changes, until).await?;
    }
}

fn playlist_response(body: Bytes, cache: HeaderValue) -> Response {
    let len = body.len();
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PLAYLIST_TYPE),
    );
    h.insert(header::CACHE_CONTROL, cache);
    resp
}

fn media_response(chunks: Chunks, content_type: &'static str, private: bool) -> Response {
    let len = chunks.len;
    let mut resp = Response::new(Body::new(ChunksBody {
        parts: chunks.parts.into(),
    }));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let cache = if private {
        HeaderValue::from_static("private, max-age=31536000, immutable")
    } else {
        HeaderValue::from_static(IMMUTABLE)
    };
    h.insert(header::CACHE_CONTROL, cache);
    resp
}

/// An HTTP body that writes shared `Bytes` one after the other, without joining them.
struct ChunksBody {
    parts: VecDeque<Bytes>,
}

impl http_body::Body for ChunksBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Ready(
            self.parts
                .pop_front()
                .map(|b| Ok(http_body::Frame::data(b))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.parts.iter().map(|b| b.len() as u64).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(parse_resource("index.m3u8"), Some(Resource::Multivariant));
        assert_eq!(parse_resource("media.m3u8"), Some(Resource::Media));
        assert_eq!(
            parse_resource("0a1b2c3d-init3.mp4"),
            Some(Resource::Init("0a1b2c3d", 3))
        );
        assert_eq!(
            parse_resource("0a1b2c3d-seg12.m4s"),
            Some(Resource::Segment("0a1b2c3d", 12))
        );
        assert_eq!(
            parse_resource("0a1b2c3d-part12.4.m4s"),
            Some(Resource::Part("0a1b2c3d", 12, 4))
        );
        assert_eq!(
            parse_resource("0a1b2c3d-media.m3u8"),
            Some(Resource::RunMedia("0a1b2c3d"))
        );
        assert_eq!(parse_resource("seg12.m4s"), None, "no run");
        assert_eq!(parse_resource("0a1b2c3d-part12.m4s"), None);
        assert_eq!(parse_resource("0a1b2c3d-seg+1.m4s"), None);
        assert_eq!(parse_resource("zz-seg1.m4s"), None);
        assert_eq!(parse_resource("../etc/passwd"), None);
    }

    #[test]
    fn fast_path_cors_is_the_layers() {
        let origin = HeaderValue::from_static("https://ok.example");
        let evil = HeaderValue::from_static("https://evil.example");
        assert!(PlainCors::new(&[]).is_none());
        let any = PlainCors::new(&["*".into()]).unwrap();
        let mut h = axum::http::HeaderMap::new();
        any.apply(None, &mut h);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS], "*");
        assert!(h[header::VARY].to_str().unwrap().starts_with("origin"));
        let listed = PlainCors::new(&["https://ok.example".into()]).unwrap();
        let mut h = axum::http::HeaderMap::new();
        listed.apply(Some(&origin), &mut h);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://ok.example");
        let mut h = axum::http::HeaderMap::new();
        listed.apply(Some(&evil), &mut h);
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    }

    #[test]
    fn fast_path_shapes() {
        assert_eq!(
            split_hls_path("/hls/abc/index.m3u8"),
            Some(("abc", None, "index.m3u8"))
        );
        assert_eq!(
            split_hls_path("/hls/abc/s/0123456789abcdef/media.m3u8"),
            Some(("abc", Some("0123456789abcdef"), "media.m3u8"))
        );
        for other in [
            "/hls/abc/s/0123456789abcdef/beacon",
            "/hls/abc",
            "/hls//index.m3u8",
            "/hls/abc/",
            "/hls/a%62c/index.m3u8",
            "/hls/abc/x/y/z",
            "/hls/abc/s/x/y/z",
            "/api/v1/streams",
        ] {
            assert_eq!(split_hls_path(other), None, "{other}");
        }
    }

    #[test]
    fn query_parameters() {
        let q = HlsQuery::parse(Some("_HLS_msn=12&_HLS_part=3&token=a.b-c_d")).unwrap();
        assert_eq!(
            q,
            HlsQuery {
                msn: Some(12),
                part: Some(3),
                token: Some("a.b-c_d")
            }
        );
        assert_eq!(HlsQuery::parse(None).unwrap(), HlsQuery::default());
        assert_eq!(HlsQuery::parse(Some("x=1&&")).unwrap(), HlsQuery::default());
        // A token with characters no token has is ignored (the gate then says 401).
        assert_eq!(HlsQuery::parse(Some("token=%22x")).unwrap().token, None);
        for bad in ["_HLS_msn=-1", "_HLS_msn=", "_HLS_part=1e3", "_HLS_msn=+4"] {
            assert!(HlsQuery::parse(Some(bad)).is_err(), "{bad}");
        }
    }
}
