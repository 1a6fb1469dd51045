//! MJPEG playback of camera streams without transcoding: `GET /mjpeg/{stream_id}` as
//! `multipart/x-mixed-replace` (plays in an `<img>` tag) and `GET /mjpeg/{stream_id}/frame.jpg`
//! (the latest frame, with `ETag` and `Last-Modified`).
//!
//! A viewer reads the hub through a short queue and always sends the newest frame it has:
//! a slow viewer skips frames instead of building a backlog, and never slows the camera or
//! other viewers. Each part's JPEG is the camera's own buffer, written between a small
//! header and trailer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::StreamExt;

use super::PlaybackGate;
use crate::error::HttpError;
use crate::hub::{Event, Hub, LiveStream, Subscription};
use crate::media::{CodecConfig, Frame, TrackId};
use crate::proto::multipart;

/// Frames a viewer may have queued before it skips to newer ones.
const VIEWER_QUEUE: usize = 4;

/// What the MJPEG routes need.
#[derive(Clone)]
pub struct MjpegContext {
    /// Live streams.
    pub hub: Hub,
    /// Private-stream checks.
    pub gate: Arc<dyn PlaybackGate>,
}

/// `/mjpeg/{stream_id}` and `/mjpeg/{stream_id}/frame.jpg`.
pub fn router(ctx: MjpegContext) -> Router {
    Router::new()
        .route("/mjpeg/{stream_id}", get(stream))
        .route("/mjpeg/{stream_id}/frame.jpg", get(frame))
        .with_state(ctx)
}

fn jpeg_track(live: &LiveStream) -> Option<TrackId> {
    live.tracks()?
        .list
        .iter()
        .find(|t| matches!(t.codec, CodecConfig::Jpeg { .. }))
        .map(|t| t.id)
}

async fn live_camera(
    ctx: &MjpegContext,
    stream_id: &str,
    query: &HashMap<String, String>,
) -> Result<(Arc<LiveStream>, TrackId), HttpError> {
    ctx.gate
        .check(stream_id, query.get("token").map(String::as_str))
        .await?;
    ctx.hub
        .ensure_live(stream_id)
        .await
        .map_err(HttpError::from_hub)?;
    let live = ctx
        .hub
        .get(stream_id)
        .ok_or_else(|| HttpError::not_found(format!("stream {stream_id} is not live")))?;
    let track = jpeg_track(&live)
        .ok_or_else(|| HttpError::unavailable("the stream has no camera (MJPEG) frames yet"))?;
    Ok((live, track))
}

async fn stream(
    State(ctx): State<MjpegContext>,
    Path(stream_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, HttpError> {
    let (live, track) = live_camera(&ctx, &stream_id, &query).await?;
    let sub = live.subscribe_short(VIEWER_QUEUE, "mjpeg");
    let counted = live.clone();
    let parts = futures_util::stream::unfold(
        (sub, track, counted),
        |(mut sub, track, counted)| async move {
            let frame = next_latest(&mut sub, track).await?;
            counted.add_bytes_out(frame.data.len() as u64);
            let chunks = [
                multipart::part_header(frame.data.len()),
                frame.data,
                multipart::part_trailer(),
            ];
            Some((chunks, (sub, track, counted)))
        },
    )
    .flat_map(|chunks| {
        futures_util::stream::iter(chunks.map(Ok::<Bytes, std::convert::Infallible>))
    });
    let mut resp = Response::new(Body::from_stream(parts));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&multipart::content_type())
            .unwrap_or(HeaderValue::from_static("multipart/x-mixed-replace")),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    Ok(resp)
}

/// Waits for a frame of `track`, then skips to the newest one already queued.
async fn next_latest(sub: &mut Subscription, track: TrackId) -> Option<Frame> {
    loop {
        let mut newest = match sub.recv().await? {
            Event::Frame(f) if f.track == track => Some(f),
            _ => None,
        };
        while let Some(ev) = sub.try_recv() {
            if let Event::Frame(f) = ev {
                if f.track == track {
                    newest = Some(f);
                }
            }
        }
        if newest.is_some() {
            return newest;
        }
    }
}

fn http_date(t: SystemTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::OffsetDateTime::from(t)
        .format(FORMAT)
        .unwrap_or_default()
}

async fn frame(
    State(ctx): State<MjpegContext>,
    Path(stream_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let (live, track) = live_camera(&ctx, &stream_id, &query).await?;
    let frame = live
        .latest_frame(track)
        .ok_or_else(|| HttpError::unavailable("no frame has arrived yet"))?;
    let etag = format!("\"{}-{}\"", stream_id, frame.dts);
    let modified = live.started_at + Duration::from_millis(frame.dts.max(0) as u64);
    let mut resp = if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        live.add_bytes_out(frame.data.len() as u64);
        let len = frame.data.len();
        let mut r = Response::new(Body::from(frame.data));
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        r
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&http_date(modified)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_imf_fixdate() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
    }
}
