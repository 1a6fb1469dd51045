//! HTTP for LL-HLS: `/hls/{stream_id}/index.m3u8` (multivariant), `media.m3u8` (with blocking
//! reload), `init{n}.mp4`, `seg{msn}.m4s` and `part{msn}.{i}.m4s` (a request for the part
//! named by the preload hint waits until it exists). Everything is served from the
//! segmenter's memory; segment and part bodies are the shared `Bytes` written out in order.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;

use super::sessions::HlsSessions;
use super::{HlsRegistry, HlsStream};
use crate::error::HttpError;
use crate::proto::fmp4::Chunks;
use crate::proto::playlist::{self, ReloadDecision};

const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";

/// Routes under `/hls`.
pub fn router(registry: Arc<HlsRegistry>) -> Router {
    Router::new()
        .route("/hls/{stream_id}/{file}", get(serve))
        .with_state(registry)
}

/// What a file name in the stream's directory asks for.
#[derive(Debug, PartialEq, Eq)]
enum Resource {
    Multivariant,
    Media,
    Init(u32),
    Segment(u64),
    Part(u64, usize),
}

fn parse_resource(file: &str) -> Option<Resource> {
    match file {
        "index.m3u8" => return Some(Resource::Multivariant),
        "media.m3u8" => return Some(Resource::Media),
        _ => {}
    }
    if let Some(n) = file
        .strip_prefix("init")
        .and_then(|f| f.strip_suffix(".mp4"))
    {
        return n.parse().ok().map(Resource::Init);
    }
    if let Some(n) = file
        .strip_prefix("seg")
        .and_then(|f| f.strip_suffix(".m4s"))
    {
        return n.parse().ok().map(Resource::Segment);
    }
    let rest = file.strip_prefix("part")?.strip_suffix(".m4s")?;
    let (msn, part) = rest.split_once('.')?;
    Some(Resource::Part(msn.parse().ok()?, part.parse().ok()?))
}

async fn serve(
    State(registry): State<Arc<HlsRegistry>>,
    Path((stream_id, file)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    connect: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
) -> Result<Response, HttpError> {
    let resource = parse_resource(&file)
        .ok_or_else(|| HttpError::not_found(format!("no such file: {file}")))?;
    let token = query.get("token").map(String::as_str);
    registry.gate.check(&stream_id, token).await?;
    let mut session = query
        .get("session")
        .filter(|s| HlsSessions::valid_id(s))
        .cloned();
    if session.is_none() {
        match resource {
            // The first request of a player: a new session, named in the media playlist URI.
            Resource::Multivariant => session = Some(HlsSessions::new_id()),
            // A player that went straight to the media playlist: send it to one with a session
            // so its reloads and parts count as one viewer.
            Resource::Media => return Ok(redirect_with_session(&file, &query)),
            _ => {}
        }
    }
    // Carry the play token and the session to every URI the playlists name.
    let mut params = Vec::new();
    if let Some(t) = token.filter(|t| {
        t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    }) {
        params.push(format!("token={t}"));
    }
    if let Some(s) = &session {
        params.push(format!("session={s}"));
    }
    let suffix = if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    };
    let stream = registry
        .get(&stream_id)
        .ok_or_else(|| HttpError::not_found(format!("stream {stream_id} is not live")))?;
    let response = match resource {
        Resource::Multivariant => multivariant(&stream, &suffix),
        Resource::Media => media_playlist(&stream, &query, &suffix).await,
        Resource::Init(id) => {
            let init = stream.lock().init(id);
            init.map(|b| {
                media_response(
                    Chunks {
                        len: b.len(),
                        parts: vec![b],
                    },
                    "video/mp4",
                )
            })
            .ok_or_else(|| HttpError::not_found(format!("no init segment {id}")))
        }
        Resource::Segment(msn) => {
            let seg = stream.lock().segment(msn);
            seg.map(|c| media_response(c, "video/iso.segment"))
                .ok_or_else(|| HttpError::not_found(format!("segment {msn} is not available")))
        }
        Resource::Part(msn, index) => part(&stream, msn, index).await,
    }?;
    let sent = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    registry.hub.add_stream_bytes_out(&stream_id, sent);
    if let Some(id) = &session {
        let remote = connect.map(|c| c.0 .0.ip());
        registry.sessions.touch(
            &registry.hub,
            id,
            &stream_id,
            remote,
            sent,
            std::time::Instant::now(),
        );
    }
    Ok(response)
}

/// `302` to the same file with every query parameter kept and a new `session`.
fn redirect_with_session(file: &str, query: &HashMap<String, String>) -> Response {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    let mut keys: Vec<&String> = query.keys().filter(|k| *k != "session").collect();
    keys.sort();
    for k in keys {
        q.append_pair(k, &query[k]);
    }
    q.append_pair("session", &HlsSessions::new_id());
    let location = format!("{file}?{}", q.finish());
    let mut resp = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn multivariant(stream: &HlsStream, suffix: &str) -> Result<Response, HttpError> {
    let variant = stream.lock().variant();
    let mut variant = variant
        .ok_or_else(|| HttpError::not_found("the stream has not announced its tracks yet"))?;
    variant.uri.push_str(suffix);
    Ok(playlist_response(
        playlist::render_multivariant(&[variant]),
        "no-cache",
    ))
}

fn parse_u64(query: &HashMap<String, String>, key: &str) -> Result<Option<u64>, HttpError> {
    query
        .get(key)
        .map(|v| {
            v.parse().map_err(|_| {
                HttpError::bad_request(format!("{key} must be a non-negative integer"))
            })
        })
        .transpose()
}

/// Answers a media playlist request, holding it while `_HLS_msn`/`_HLS_part` are in the future.
async fn media_playlist(
    stream: &HlsStream,
    query: &HashMap<String, String>,
    suffix: &str,
) -> Result<Response, HttpError> {
    let msn = parse_u64(query, "_HLS_msn")?;
    let part = parse_u64(query, "_HLS_part")?;
    let mut changes = stream.subscribe_changes();
    let mut deadline = None;
    loop {
        let (decision, text, ended, target) = {
            let seg = stream.lock();
            let pl = seg.playlist();
            let decision = reload_or_wait(pl, msn, part);
            let text = (decision == ReloadDecision::Ready).then(|| pl.render_with_query(suffix));
            (decision, text, pl.ended, pl.target_duration())
        };
        match decision {
            ReloadDecision::Ready => {
                let cache = if ended { "max-age=60" } else { "no-cache" };
                return Ok(playlist_response(text.unwrap_or_default(), cache));
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

/// A playlist with no media yet cannot satisfy any request, not even a plain one (a player
/// given an empty playlist gives up): hold it like a blocking reload.
fn reload_or_wait(
    pl: &playlist::MediaPlaylist,
    msn: Option<u64>,
    part: Option<u64>,
) -> ReloadDecision {
    let decision = playlist::reload_decision(pl, msn, part);
    let empty = pl.segments.is_empty() && pl.open.as_ref().is_none_or(|o| o.parts.is_empty());
    if empty && !pl.ended && decision == ReloadDecision::Ready {
        return ReloadDecision::Wait;
    }
    decision
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
async fn part(stream: &HlsStream, msn: u64, index: usize) -> Result<Response, HttpError> {
    let mut changes = stream.subscribe_changes();
    let mut deadline = None;
    loop {
        let (found, awaitable, target) = {
            let seg = stream.lock();
            let pl = seg.playlist();
            let found = seg.serve_part(msn, index);
            let next = pl.next_msn();
            let open_parts = pl.open.as_ref().map_or(0, |o| o.parts.len());
            let awaitable = !pl.ended
                && ((msn == next && index <= open_parts + 1) || (msn == next + 1 && index == 0));
            (found, awaitable, pl.target_duration())
        };
        if let Some(chunks) = found {
            return Ok(media_response(chunks, "video/iso.segment"));
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

fn playlist_response(text: String, cache: &'static str) -> Response {
    let len = text.len();
    let mut resp = (StatusCode::OK, text).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PLAYLIST_TYPE),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

fn media_response(chunks: Chunks, content_type: &'static str) -> Response {
    let len = chunks.len;
    let mut resp = Response::new(Body::new(ChunksBody {
        parts: chunks.parts.into(),
    }));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    // Parts, segments and init segments never change once published.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60, immutable"),
    );
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
        assert_eq!(parse_resource("init3.mp4"), Some(Resource::Init(3)));
        assert_eq!(parse_resource("seg12.m4s"), Some(Resource::Segment(12)));
        assert_eq!(parse_resource("part12.4.m4s"), Some(Resource::Part(12, 4)));
        assert_eq!(parse_resource("part12.m4s"), None);
        assert_eq!(parse_resource("seg-1.m4s"), None);
        assert_eq!(parse_resource("../etc/passwd"), None);
    }
}
