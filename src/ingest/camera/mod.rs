//! Camera ingest: ESP32-class cameras push JPEG frames over a WebSocket, one binary message
//! per frame, to `GET /ingest/ws` with their stream key (`Authorization: Bearer …` or
//! `?key=…`, checked before the upgrade).
//!
//! Each frame's framing is validated ([`crate::proto::jpeg`]); an invalid frame is dropped and
//! counted and several in a row close the socket (1007 with a reason); a message over the
//! size cap closes it with 1009. The stream goes live on the first valid frame and ends when
//! the socket closes, like any RTMP stream. Frames enter the hub as a JPEG track (served as
//! MJPEG without transcoding) and, when enabled, as an H.264 track made by [`transcode`].

pub mod transcode;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::watch;

use crate::config::CameraConfig;
use crate::error::HttpError;
use crate::hub::{Hub, HubError, Publisher};
use crate::media::{CodecConfig, Frame, Track, Tracks};
use crate::proto::jpeg;
use crate::store::{Store, StreamRow};
use transcode::{Transcoder, JPEG_TRACK};

/// Close code for too many invalid frames (RFC 6455: inconsistent data).
pub const CLOSE_INVALID: u16 = 1007;
/// Close code for an oversized message.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code when the server ends the session (stop, shutdown, idle).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code when another publisher holds the stream.
pub const CLOSE_POLICY: u16 = 1008;
/// Close code: the server cannot take the stream now; reconnect later (RFC 6455 registry).
pub const CLOSE_TRY_AGAIN: u16 = 1013;

/// What the camera endpoint needs.
#[derive(Clone, Debug)]
pub struct CameraContext {
    /// Limits and the transcode switch.
    pub config: CameraConfig,
    /// Stream keys.
    pub store: Store,
    /// Live streams.
    pub hub: Hub,
    /// Turns true on shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// Longest time between the H.264 encoder's IDRs (the HLS segment target), ms.
    pub keyframe_interval_ms: u32,
}

/// `?key=` on the upgrade request.
#[derive(Debug, Deserialize)]
pub struct KeyQuery {
    key: Option<String>,
}

/// `GET /ingest/ws`.
pub fn router(ctx: CameraContext) -> Router {
    Router::new()
        .route("/ingest/ws", get(upgrade))
        .with_state(ctx)
}

async fn upgrade(
    State(ctx): State<CameraContext>,
    Query(q): Query<KeyQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, HttpError> {
    let key = crate::api::auth::bearer(&headers)
        .or(q.key)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| HttpError::unauthorized("a stream key is required (Bearer or ?key=)"))?;
    let stream = ctx
        .store
        .find_stream_by_any_app_key(&key)
        .await
        .map_err(|e| HttpError::internal("checking a camera key", e))?
        .ok_or_else(|| {
            tracing::warn!("camera: connection refused: unknown stream key");
            HttpError::unauthorized("unknown stream key")
        })?;
    if ctx.hub.get(&stream.id).is_some() {
        return Err(HttpError::new(
            StatusCode::CONFLICT,
            "conflict",
            "the stream already has a publisher",
        ));
    }
    let cap = ctx.config.max_frame_bytes;
    Ok(ws
        .max_message_size(cap.saturating_mul(2).saturating_add(1024))
        .on_upgrade(move |socket| async move {
            Session::new(ctx, stream).run(socket).await;
        }))
}

/// One camera connection.
struct Session {
    ctx: CameraContext,
    stream: StreamRow,
    publisher: Option<Arc<Publisher>>,
    /// The cluster claim taken at connect, used by the first frame's publish.
    claim: Option<Box<dyn crate::hub::Ownership>>,
    transcoder: Option<Transcoder>,
    jpeg_track: Option<Track>,
    started: Instant,
    /// The last frame's timestamp: frames that arrive within the same millisecond still get
    /// strictly increasing ones (muxers and RTMP destinations refuse equal DTS).
    last_dts: Option<i64>,
    invalid_in_a_row: u32,
    invalid_total: u64,
    frames: u64,
    skipped_by_encoder: u64,
}

/// The close a refused publish gets: the stream is live elsewhere, or the cluster cannot
/// decide now (try again later).
fn refusal(err: &HubError) -> (u16, String) {
    match err {
        HubError::AlreadyPublishing(_) | HubError::OwnedElsewhere(_) => {
            (CLOSE_POLICY, "the stream already has a publisher".into())
        }
        HubError::Unavailable(_) => (CLOSE_TRY_AGAIN, "try again later".into()),
    }
}

async fn until_stopped(p: &Option<Arc<Publisher>>) {
    match p {
        Some(p) => p.stopped().await,
        None => std::future::pending().await,
    }
}

impl Session {
    fn new(ctx: CameraContext, stream: StreamRow) -> Self {
        Session {
            ctx,
            stream,
            publisher: None,
            claim: None,
            transcoder: None,
            jpeg_track: None,
            started: Instant::now(),
            last_dts: None,
            invalid_in_a_row: 0,
            invalid_total: 0,
            frames: 0,
            skipped_by_encoder: 0,
        }
    }

    async fn run(mut self, mut socket: WebSocket) {
        let idle = Duration::from_millis(self.ctx.config.idle_timeout_ms);
        let mut ping =
            tokio::time::interval(Duration::from_millis(self.ctx.config.ping_interval_ms));
        ping.tick().await;
        let mut shutdown = self.ctx.shutdown.clone();
        // Idle is measured from the last frame received: neither our pings nor the camera's
        // pongs keep a camera that sends nothing (dead, or hung) live.
        let mut last_rx = tokio::time::Instant::now();
        // In a cluster the camera claims its stream on connect: a second camera of the same
        // stream on any node is refused before it sends a frame.
        let mut refused = None;
        if self.ctx.hub.in_cluster() {
            match self.ctx.hub.claim(&self.stream.id).await {
                Ok(claim) => self.claim = claim,
                Err(err) => refused = Some(refusal(&err)),
            }
        }
        let close = if let Some(refused) = refused {
            Some(refused)
        } else {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(last_rx + idle) => {
                        break Some((CLOSE_GOING_AWAY, "idle timeout".to_owned()));
                    }
                    msg = socket.recv() => match msg {
                        None | Some(Ok(Message::Close(_))) => break None,
                        Some(Err(err)) => {
                            tracing::info!(stream = %self.stream.id, %err, "camera: websocket error");
                            // A message over the transport's own limit surfaces as an error.
                            let text = err.to_string().to_ascii_lowercase();
                            if text.contains("too long") || text.contains("capacity") || text.contains("size") {
                                break Some((CLOSE_TOO_BIG, "message too large".to_owned()));
                            }
                            break None;
                        }
                        Some(Ok(Message::Binary(data))) => {
                            last_rx = tokio::time::Instant::now();
                            if let Some(close) = self.on_frame(data) {
                                break Some(close);
                            }
                        }
                        Some(Ok(_)) => {} // text, ping, pong
                    },
                    _ = ping.tick() => {
                        if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                            break None;
                        }
                    }
                    _ = until_stopped(&self.publisher) => {
                        break Some((CLOSE_GOING_AWAY, "stopped by the server".to_owned()));
                    }
                    _ = crate::shutdown::requested(&mut shutdown) => {
                        break Some((CLOSE_GOING_AWAY, "server shutting down".to_owned()));
                    }
                }
            }
        };
        // End the stream before telling the camera, so a reconnect never finds it still live.
        self.skipped_by_encoder = self.transcoder.as_ref().map_or(0, Transcoder::skipped);
        self.transcoder = None;
        self.publisher = None;
        if let Some((code, reason)) = close {
            tracing::info!(stream = %self.stream.id, code, %reason, "camera: closing");
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                })))
                .await;
        }
        tracing::info!(
            stream = %self.stream.id,
            frames = self.frames,
            invalid = self.invalid_total,
            skipped_by_encoder = self.skipped_by_encoder,
            "camera: disconnected"
        );
    }

    /// Handles one message; `Some((code, reason))` closes the socket.
    fn on_frame(&mut self, data: Bytes) -> Option<(u16, String)> {
        let cap = self.ctx.config.max_frame_bytes;
        if data.len() > cap {
            return Some((
                CLOSE_TOO_BIG,
                format!("frame of {} bytes exceeds {cap}", data.len()),
            ));
        }
        let info = match jpeg::validate(&data) {
            Ok(info) => info,
            Err(err) => {
                self.invalid_in_a_row += 1;
                self.invalid_total += 1;
                tracing::warn!(stream = %self.stream.id, %err, "camera: invalid frame dropped");
                if self.invalid_in_a_row >= self.ctx.config.max_invalid_frames {
                    return Some((
                        CLOSE_INVALID,
                        format!("{} invalid frames in a row: {err}", self.invalid_in_a_row),
                    ));
                }
                return None;
            }
        };
        self.invalid_in_a_row = 0;
        if self.publisher.is_none() {
            match self
                .ctx
                .hub
                .publish_claimed(&self.stream.id, "ws-mjpeg", self.claim.take())
            {
                Ok(p) => {
                    tracing::info!(stream = %self.stream.id, "camera: live");
                    let p = Arc::new(p);
                    if self.ctx.config.transcode {
                        match Transcoder::spawn(
                            &p,
                            self.ctx.config.h264_bitrate_kbps * 1000,
                            self.ctx.keyframe_interval_ms,
                        ) {
                            Ok(t) => self.transcoder = Some(t),
                            Err(err) => tracing::error!(%err, "camera: cannot start the encoder"),
                        }
                    }
                    self.publisher = Some(p);
                }
                Err(err) => return Some(refusal(&err)),
            }
        }
        let publisher = self.publisher.as_ref()?;
        let track = Track {
            id: JPEG_TRACK,
            timescale: 1000,
            codec: CodecConfig::Jpeg {
                width: info.width,
                height: info.height,
            },
        };
        if self.jpeg_track.as_ref() != Some(&track) {
            // First frame or a new size: announce (the encoder adds its H.264 track).
            publisher.set_tracks(Arc::new(Tracks {
                list: vec![track.clone()],
            }));
            self.jpeg_track = Some(track.clone());
        }
        let now = self.started.elapsed().as_millis() as i64;
        let dts = self.last_dts.map_or(now, |last| now.max(last + 1));
        self.last_dts = Some(dts);
        self.frames += 1;
        publisher.push(Frame {
            track: JPEG_TRACK,
            pts: dts,
            dts,
            keyframe: true,
            data: data.clone(),
        });
        if let Some(t) = &self.transcoder {
            t.offer(data, dts, track);
        }
        None
    }
}
