//! A live stream's health (score, components, 10-minute history) and its viewers (counts by
//! protocol and the HLS sessions behind them).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiState, Auth};
use crate::egress::hls::sessions::SessionInfo;
use crate::error::{ErrorEnvelope, HttpError};
use crate::hub::health::Component;

/// A stream's health now and over the last 10 minutes.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthView {
    /// The stream.
    stream_id: String,
    /// Whether it is live (a stream that is not has no score).
    live: bool,
    /// 0-100, `null` when not live or in its first seconds.
    score: Option<u8>,
    /// `excellent` (≥ 90), `good` (≥ 75), `fair` (≥ 50), `poor` (≥ 25) or `bad`.
    grade: Option<String>,
    /// Seconds of media the score is computed over (sliding window, up to 30).
    window_seconds: u64,
    /// What the score is made of, worst first: each component's cost and why.
    #[schema(value_type = Vec<Object>)]
    components: Vec<Component>,
    /// Scores every `stats.health_interval_ms` over the last 10 minutes, oldest first.
    history: Vec<HealthPoint>,
}

/// One point of the history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthPoint {
    /// RFC 3339.
    at: String,
    /// 0-100.
    score: u8,
}

async fn exists(state: &ApiState, id: &str) -> Result<(), HttpError> {
    state
        .store
        .get_stream(id)
        .await
        .map_err(|e| HttpError::internal("reading a stream", e))?
        .map(|_| ())
        .ok_or_else(|| HttpError::not_found(format!("no stream {id}")))
}

/// The health score of a live stream with its components and history.
#[utoipa::path(get, path = "/api/v1/streams/{id}/health", tag = "streams",
    params(("id" = String, Path, description = "Stream id")),
    responses(
        (status = 200, body = HealthView),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["streams:read"])))]
pub async fn health(
    auth: Auth,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<HealthView>, HttpError> {
    auth.require("streams:read")?;
    exists(&state, &id).await?;
    let live = state.hub.get(&id);
    let (health, history) = match &live {
        Some(l) => (l.snapshot().health, l.health_history()),
        None => (None, Vec::new()),
    };
    Ok(Json(HealthView {
        stream_id: id,
        live: live.is_some(),
        score: health.as_ref().map(|h| h.score),
        grade: health.as_ref().map(|h| h.grade.to_owned()),
        window_seconds: health.as_ref().map_or(0, |h| h.window_seconds),
        components: health.map(|h| h.components).unwrap_or_default(),
        history: history
            .into_iter()
            .map(|(at, score)| HealthPoint {
                at: crate::proto::playlist::format_pdt(at),
                score,
            })
            .collect(),
    }))
}

/// Who is watching a stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct ViewersView {
    /// The stream.
    stream_id: String,
    /// Viewers now, all protocols.
    viewer_count: u64,
    /// Most at once in the current session.
    peak_viewer_count: u64,
    /// Viewers by protocol: `hls` sessions, `rtmp`/`mjpeg` connections, `whep` peers.
    viewer_count_by_protocol: BTreeMap<String, u64>,
    /// The HLS sessions (id, first request, idle time, requests, bytes, address).
    sessions: Vec<SessionInfo>,
}

/// The viewers of a stream and its HLS sessions.
#[utoipa::path(get, path = "/api/v1/streams/{id}/viewers", tag = "streams",
    params(("id" = String, Path, description = "Stream id")),
    responses(
        (status = 200, body = ViewersView),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["stats:read"])))]
pub async fn viewers(
    auth: Auth,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ViewersView>, HttpError> {
    auth.require("stats:read")?;
    exists(&state, &id).await?;
    let snap = state.hub.get(&id).map(|l| l.snapshot());
    let sessions = state.hls.as_ref().map_or_else(Vec::new, |h| {
        h.sessions.list(&id, std::time::Instant::now())
    });
    Ok(Json(ViewersView {
        stream_id: id,
        viewer_count: snap.as_ref().map_or(0, |s| s.viewers as u64),
        peak_viewer_count: snap.as_ref().map_or(0, |s| s.peak_viewers as u64),
        viewer_count_by_protocol: by_protocol(snap.as_ref()),
        sessions,
    }))
}

/// Viewers per protocol, every protocol present (0 when not live).
pub(super) fn by_protocol(snap: Option<&crate::hub::StreamSnapshot>) -> BTreeMap<String, u64> {
    crate::hub::VIEWER_PROTOCOLS
        .iter()
        .map(|p| {
            let n = snap.map_or(0, |s| {
                s.viewers_by_protocol
                    .iter()
                    .find(|(q, _)| q == p)
                    .map_or(0, |(_, n)| *n as u64)
            });
            ((*p).to_owned(), n)
        })
        .collect()
}
