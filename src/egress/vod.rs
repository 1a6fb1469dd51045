//! Recordings as files and as VOD HLS, without a separate server:
//!
//! - `GET /vod/{id}/index.m3u8`: an HLS playlist of byte ranges into the recording's fMP4 —
//!   the init segment as `EXT-X-MAP`, then one segment per run of fragments that starts on a
//!   keyframe. While the recording runs it is an `EVENT` playlist that grows; once finished,
//!   `VOD` with `EXT-X-ENDLIST`. The index is the file itself ([`mp4scan`]), so a recovered
//!   file plays exactly as far as it survived.
//! - `GET /vod/{id}/media.mp4`: the file, with HTTP range requests (`tower-http`'s
//!   `ServeFile`).
//!
//! Recordings of private streams need the stream's play token (`?token=`), carried into the
//! playlist's URIs. Unknown ids — including anything that is not a recording id, such as a
//! path traversal attempt — are 404: paths come from the database, never from the URL.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tower::ServiceExt;

use crate::egress::record::Recorders;
use crate::egress::PlaybackGate;
use crate::error::HttpError;
use crate::proto::mp4scan::{self, Scanned};
use crate::store::{RecordingRow, Store};

/// What the VOD routes need.
#[derive(Clone)]
pub struct VodContext {
    /// Recording rows.
    pub store: Store,
    /// Where files are.
    pub recorders: Arc<Recorders>,
    /// Private-stream check.
    pub gate: Arc<dyn PlaybackGate>,
}

/// `?token=`.
#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// The VOD routes.
pub fn router(ctx: VodContext) -> Router {
    Router::new()
        .route("/vod/{id}/index.m3u8", get(playlist))
        .route("/vod/{id}/media.mp4", get(media))
        .with_state(ctx)
}

/// The recording row and file for an id from a URL: 404 unless it is one of ours.
pub async fn lookup(
    store: &Store,
    recorders: &Recorders,
    id: &str,
) -> Result<(RecordingRow, PathBuf), HttpError> {
    let valid =
        id.len() == 20 && id.starts_with("rec_") && id[4..].bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return Err(HttpError::not_found("no such recording"));
    }
    let row = store
        .get_recording(id)
        .await
        .map_err(|e| HttpError::internal("reading a recording", e))?
        .ok_or_else(|| HttpError::not_found("no such recording"))?;
    let path = recorders.path(&row);
    Ok((row, path))
}

/// The recording and its file, if this viewer may play it (its own privacy decides: a
/// private recording needs a play token of its stream, even once the stream is deleted).
async fn playable(
    ctx: &VodContext,
    id: &str,
    token: Option<&str>,
) -> Result<(RecordingRow, PathBuf), HttpError> {
    let (row, path) = lookup(&ctx.store, &ctx.recorders, id).await?;
    ctx.gate
        .check_recording(&row.stream_id, row.privacy, row.token_generation, token)
        .await?;
    Ok((row, path))
}

/// Play tokens are `{digits}.{hex}`; accept the URL-safe alphabet and nothing else.
fn is_token_shaped(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 512
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

async fn playlist(
    State(ctx): State<VodContext>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
) -> Result<Response, HttpError> {
    let (row, path) = playable(&ctx, &id, q.token.as_deref()).await?;
    let scanned = tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&path)?;
        let len = f.metadata()?.len();
        mp4scan::scan(&mut f, len).map_err(|e| std::io::Error::other(e.to_string()))
    })
    .await
    .map_err(|e| HttpError::internal("scanning a recording", e))?
    .map_err(|_| HttpError::not_found("the recording has no playable media"))?;
    // Only a token-shaped value is carried into the playlist (a public recording's gate
    // does not read the token): anything else could write lines into it.
    let uri = match q.token.as_deref().filter(|t| is_token_shaped(t)) {
        Some(t) => format!("media.mp4?token={t}"),
        None => "media.mp4".to_owned(),
    };
    let finished = matches!(row.status.as_str(), "ready" | "failed");
    let body = vod_playlist(&scanned, &uri, finished);
    let mut res = (StatusCode::OK, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.apple.mpegurl"),
    );
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if finished { "max-age=60" } else { "no-cache" }),
    );
    Ok(res)
}

async fn media(
    State(ctx): State<VodContext>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
    req: Request,
) -> Result<Response, HttpError> {
    let (_, path) = playable(&ctx, &id, q.token.as_deref()).await?;
    serve_file(path, req, None).await
}

/// Serves a file with range requests; `attachment` adds `Content-Disposition`.
pub async fn serve_file(
    path: PathBuf,
    req: Request,
    attachment: Option<&str>,
) -> Result<Response, HttpError> {
    // ServeFile answers Range, If-Range and HEAD, and types `.mp4` as video/mp4.
    let res = tower_http::services::ServeFile::new(&path)
        .oneshot(req)
        .await
        .map_err(|e| HttpError::internal("serving a recording", e))?;
    if res.status() == StatusCode::NOT_FOUND {
        return Err(HttpError::not_found("the recording file is gone"));
    }
    let mut res = res.map(axum::body::Body::new);
    if let Some(name) = attachment {
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
            res.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
    }
    Ok(res)
}

/// The HLS playlist of a scanned recording: byte-range segments that each start on a
/// keyframe fragment.
pub fn vod_playlist(scanned: &Scanned, uri: &str, finished: bool) -> String {
    // (offset, len, duration) of each segment.
    let mut segments: Vec<(u64, u64, f64)> = Vec::new();
    for (i, f) in scanned.fragments.iter().enumerate() {
        let duration = scanned.fragment_time(i).map_or(0.0, |(_, d)| d);
        match segments.last_mut() {
            Some(last) if !scanned.fragment_is_independent(i) => {
                last.1 += f.len;
                last.2 += duration;
            }
            _ => segments.push((f.offset, f.len, duration)),
        }
    }
    let target = segments.iter().map(|s| s.2).fold(1.0f64, f64::max).ceil() as u64;
    let mut out = String::with_capacity(128 + segments.len() * 64);
    out.push_str("#EXTM3U\n#EXT-X-VERSION:7\n");
    out.push_str(&format!(
        "#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:0\n"
    ));
    out.push_str(if finished {
        "#EXT-X-PLAYLIST-TYPE:VOD\n"
    } else {
        "#EXT-X-PLAYLIST-TYPE:EVENT\n"
    });
    out.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
    out.push_str(&format!(
        "#EXT-X-MAP:URI=\"{uri}\",BYTERANGE=\"{}@0\"\n",
        scanned.init_len
    ));
    for (offset, len, duration) in &segments {
        out.push_str(&format!(
            "#EXTINF:{duration:.3},\n#EXT-X-BYTERANGE:{len}@{offset}\n{uri}\n"
        ));
    }
    if finished {
        out.push_str("#EXT-X-ENDLIST\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mp4scan::{Fragment, RunInfo, TrackInfo};

    #[test]
    fn segments_start_on_keyframe_fragments() {
        let frag = |offset, sync, base| Fragment {
            offset,
            len: 100,
            runs: vec![RunInfo {
                track_id: 1,
                base,
                duration: 1000,
                samples: 30,
                starts_with_sync: sync,
            }],
        };
        let scanned = Scanned {
            init_len: 700,
            tracks: vec![TrackInfo {
                id: 1,
                timescale: 1000,
                video: true,
            }],
            fragments: vec![
                frag(700, true, 0),
                frag(800, false, 1000),
                frag(900, true, 2000),
            ],
            valid_len: 1000,
            file_len: 1000,
        };
        let text = vod_playlist(&scanned, "media.mp4", true);
        assert!(text.contains("#EXT-X-MAP:URI=\"media.mp4\",BYTERANGE=\"700@0\""));
        assert!(text.contains("#EXTINF:2.000,\n#EXT-X-BYTERANGE:200@700\n"));
        assert!(text.contains("#EXTINF:1.000,\n#EXT-X-BYTERANGE:100@900\n"));
        assert!(text.contains("#EXT-X-TARGETDURATION:2\n"));
        assert!(text.ends_with("#EXT-X-ENDLIST\n"));
        assert!(vod_playlist(&scanned, "m", false).contains("PLAYLIST-TYPE:EVENT"));
    }
}
