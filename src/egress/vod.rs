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
//! Recordings in object storage play from any node: the playlist comes from the index kept
//! in the database ([`VodIndex`]), and `media.mp4` redirects to a fresh presigned URL of the
//! object (or streams it through this node with `download = "proxy"`). A node that still
//! has the file (the spool, before it is deleted) serves it itself.
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
use crate::egress::storage::{ObjectStorage, StorageError};
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

/// Where a recording's bytes are.
pub enum Media {
    /// A file on this node.
    Local(PathBuf),
    /// An object (its key) in the object storage.
    Object(Arc<ObjectStorage>, String),
}

/// Where to read a recording from: the local file if this node has it, else its object.
pub async fn locate(
    recorders: &Recorders,
    row: &RecordingRow,
    path: PathBuf,
) -> Result<Media, HttpError> {
    if tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Ok(Media::Local(path));
    }
    if let Some(storage) = recorders.storage() {
        if row.storage == "s3" {
            let key = row
                .object_key
                .clone()
                .unwrap_or_else(|| storage.key(&row.id));
            return Ok(Media::Object(storage.clone(), key));
        }
    }
    if matches!(
        row.status.as_str(),
        "recording" | "finalizing" | "uploading"
    ) {
        let mut err = HttpError::unavailable(
            "the recording is being written or uploaded by another node; retry in a moment",
        );
        err.retry_after = Some(5);
        return Err(err);
    }
    Err(HttpError::not_found("the recording file is gone"))
}

/// An object-storage failure as an HTTP answer: a short message (the details — endpoint,
/// bucket, key — go to the log, not to viewers).
pub fn storage_error(e: StorageError) -> HttpError {
    tracing::warn!(error = %e, "recording: object storage request failed");
    match e {
        StorageError::NotFound(_) => HttpError::not_found("the recording's object is gone"),
        StorageError::Unreachable(_) => {
            let mut err =
                HttpError::unavailable("object storage is unreachable; retry in a moment");
            err.retry_after = Some(5);
            err
        }
        _ => HttpError::new(
            StatusCode::BAD_GATEWAY,
            "storage_error",
            "object storage refused the request",
        ),
    }
}

/// A recording's object: a `302` to a fresh presigned URL, or (proxy mode) the bytes
/// streamed through this node, with a single `Range` honoured.
pub async fn serve_object(
    storage: &ObjectStorage,
    key: &str,
    range: Option<HeaderValue>,
    attachment: Option<&str>,
) -> Result<Response, HttpError> {
    if !storage.proxy {
        let (url, _) = storage.presign(key).await.map_err(storage_error)?;
        let mut res = StatusCode::FOUND.into_response();
        let location = HeaderValue::from_str(&url)
            .map_err(|e| HttpError::internal("presigning a recording", e))?;
        res.headers_mut().insert(header::LOCATION, location);
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(res);
    }
    let (size, _) = storage.head(key).await.map_err(storage_error)?;
    let range = match range.map(|v| parse_range(v.as_bytes(), size)) {
        None | Some(RangeAsk::Whole) => None,
        Some(RangeAsk::Part(r)) => Some(r),
        Some(RangeAsk::Unsatisfiable) => {
            let mut res = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                res.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(res);
        }
    };
    let got = storage
        .get(key, range.clone())
        .await
        .map_err(storage_error)?;
    let mut res = Response::new(axum::body::Body::from_stream(got.into_stream()));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let len = match &range {
        Some(r) => {
            *res.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{}/{size}", r.start, r.end - 1))
            {
                res.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r.end - r.start
        }
        None => size,
    };
    res.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(name) = attachment {
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
            res.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
    }
    Ok(res)
}

/// What a `Range` header asks of an object.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAsk {
    /// The whole object: no range we serve (several ranges, another unit, bad syntax —
    /// RFC 9110 §14.2 says to ignore those).
    Whole,
    /// One range, inside the object and not empty.
    Part(std::ops::Range<u64>),
    /// A range past the end (`416`).
    Unsatisfiable,
}

/// One `bytes=` range of an object of `size` bytes (`a-b`, `a-`, `-n`).
pub fn parse_range(value: &[u8], size: u64) -> RangeAsk {
    let Some(spec) = std::str::from_utf8(value)
        .ok()
        .and_then(|t| t.trim().strip_prefix("bytes="))
        .map(str::trim)
        .filter(|s| !s.contains(','))
    else {
        return RangeAsk::Whole;
    };
    let Some((a, b)) = spec.split_once('-').map(|(a, b)| (a.trim(), b.trim())) else {
        return RangeAsk::Whole;
    };
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let range = match (number(a), number(b), a.is_empty(), b.is_empty()) {
        (Some(start), None, false, true) => start..size,
        (Some(start), Some(last), false, false) if last >= start => {
            start..last.saturating_add(1).min(size)
        }
        (None, Some(n), true, false) => size.saturating_sub(n)..size,
        _ => return RangeAsk::Whole,
    };
    if range.start < range.end {
        RangeAsk::Part(range)
    } else {
        RangeAsk::Unsatisfiable
    }
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
    let index = match locate(&ctx.recorders, &row, path).await? {
        Media::Local(path) => {
            let scanned = tokio::task::spawn_blocking(move || {
                let mut f = std::fs::File::open(&path)?;
                let len = f.metadata()?.len();
                mp4scan::scan(&mut f, len).map_err(|e| std::io::Error::other(e.to_string()))
            })
            .await
            .map_err(|e| HttpError::internal("scanning a recording", e))?
            .map_err(|_| HttpError::not_found("the recording has no playable media"))?;
            VodIndex::from_scanned(&scanned)
        }
        Media::Object(..) => ctx
            .store
            .recording_vod_index(&row.id)
            .await
            .map_err(|e| HttpError::internal("reading a recording's index", e))?
            .as_deref()
            .and_then(VodIndex::decode)
            .ok_or_else(|| HttpError::not_found("the recording has no playable media"))?,
    };
    // Only a token-shaped value is carried into the playlist (a public recording's gate
    // does not read the token): anything else could write lines into it.
    let uri = match q.token.as_deref().filter(|t| is_token_shaped(t)) {
        Some(t) => format!("media.mp4?token={t}"),
        None => "media.mp4".to_owned(),
    };
    let finished = matches!(row.status.as_str(), "ready" | "failed");
    let body = index.render(&uri, finished);
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
    let (row, path) = playable(&ctx, &id, q.token.as_deref()).await?;
    match locate(&ctx.recorders, &row, path).await? {
        Media::Local(path) => serve_file(path, req, None).await,
        Media::Object(storage, key) => {
            let range = req.headers().get(header::RANGE).cloned();
            serve_object(&storage, &key, range, None).await
        }
    }
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

/// What a VOD playlist is made of: the init segment's length and, for each segment (a run
/// of fragments starting on a keyframe), its offset, length and duration. Kept in the
/// database for recordings in object storage, so any node renders their playlist without
/// the file.
#[derive(Debug, Clone, PartialEq)]
pub struct VodIndex {
    /// Bytes of the init segment at the start of the file.
    pub init_len: u64,
    /// (offset, length, duration in seconds) of each segment.
    pub segments: Vec<(u64, u64, f64)>,
}

impl VodIndex {
    /// The segments of a scanned file.
    pub fn from_scanned(scanned: &Scanned) -> Self {
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
        VodIndex {
            init_len: scanned.init_len,
            segments,
        }
    }

    /// `v1;{init_len};{offset},{len},{duration_ms};…` (about 25 bytes per segment).
    pub fn encode(&self) -> String {
        let mut out = format!("v1;{}", self.init_len);
        for (offset, len, duration) in &self.segments {
            out.push_str(&format!(
                ";{offset},{len},{}",
                (duration * 1000.0).round() as u64
            ));
        }
        out
    }

    /// Reads [`VodIndex::encode`]'s text; `None` for anything else (segments must follow
    /// each other without overlapping, after the init segment).
    pub fn decode(text: &str) -> Option<Self> {
        let mut fields = text.split(';');
        if fields.next()? != "v1" {
            return None;
        }
        let init_len: u64 = fields.next()?.parse().ok()?;
        let mut segments = Vec::new();
        let mut end = init_len;
        for field in fields {
            let mut it = field.split(',');
            let offset: u64 = it.next()?.parse().ok()?;
            let len: u64 = it.next()?.parse().ok()?;
            let ms: u64 = it.next()?.parse().ok()?;
            if it.next().is_some() || offset < end {
                return None;
            }
            end = offset.checked_add(len)?;
            segments.push((offset, len, ms as f64 / 1000.0));
        }
        Some(VodIndex { init_len, segments })
    }

    /// The playlist: every URI is `uri` (the file, with byte ranges).
    pub fn render(&self, uri: &str, finished: bool) -> String {
        let segments = &self.segments;
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
            self.init_len
        ));
        for (offset, len, duration) in segments {
            out.push_str(&format!(
                "#EXTINF:{duration:.3},\n#EXT-X-BYTERANGE:{len}@{offset}\n{uri}\n"
            ));
        }
        if finished {
            out.push_str("#EXT-X-ENDLIST\n");
        }
        out
    }
}

/// The HLS playlist of a scanned recording: byte-range segments that each start on a
/// keyframe fragment.
pub fn vod_playlist(scanned: &Scanned, uri: &str, finished: bool) -> String {
    VodIndex::from_scanned(scanned).render(uri, finished)
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
        assert_eq!(parse_range(b"bytes=0-9", 100), RangeAsk::Part(0..10));
        assert_eq!(parse_range(b"bytes=90-", 100), RangeAsk::Part(90..100));
        assert_eq!(parse_range(b"bytes=-10", 100), RangeAsk::Part(90..100));
        assert_eq!(parse_range(b"bytes=95-200", 100), RangeAsk::Part(95..100));
        assert_eq!(parse_range(b"bytes=100-", 100), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range(b"bytes=-0", 100), RangeAsk::Unsatisfiable);
        // Not one range we serve: the whole object (RFC 9110 §14.2).
        for bad in [
            &b"bytes=5-1"[..],
            b"bytes=0-1,3-4",
            b"items=0-1",
            b"bytes=-",
            b"bytes=+1-2",
        ] {
            assert_eq!(
                parse_range(bad, 100),
                RangeAsk::Whole,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // The stored index renders the same playlist.
        let index = VodIndex::from_scanned(&scanned);
        let text = index.encode();
        assert_eq!(text, "v1;700;700,200,2000;900,100,1000");
        let back = VodIndex::decode(&text).unwrap();
        assert_eq!(back, index);
        assert_eq!(
            back.render("media.mp4", true),
            vod_playlist(&scanned, "media.mp4", true)
        );
        for bad in [
            "",
            "v2;1",
            "v1;x",
            "v1;700;600,10,1",
            "v1;700;700,10",
            "v1;7;7,1,1,1",
            "v1;0;0,18446744073709551615,1;1,1,1",
        ] {
            assert_eq!(VodIndex::decode(bad), None, "{bad}");
        }
    }
}
