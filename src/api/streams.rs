//! `GET /api/v1/streams` and `GET /api/v1/streams/{id}`: stored streams joined with what the
//! hub knows about them right now (the `live` block).

use std::collections::HashMap;
use std::time::SystemTime;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Serialize;

use super::{ApiState, Auth, Page, Pagination};
use crate::error::HttpError;
use crate::hub::StreamSnapshot;
use crate::media::CodecConfig;
use crate::store::{StreamRow, StreamState};

/// A stream as the API shows it.
#[derive(Debug, Serialize)]
pub struct StreamView {
    id: String,
    app: String,
    name: String,
    title: String,
    state: StreamState,
    created_at: String,
    updated_at: String,
    started_at: Option<String>,
    ended_at: Option<String>,
    rtmp_url: String,
    hls_url: String,
    rtmp_play_url: String,
    live: LiveView,
}

/// The runtime block.
#[derive(Debug, Serialize)]
struct LiveView {
    state: StreamState,
    protocol: Option<&'static str>,
    started_at: Option<String>,
    duration_seconds: Option<f64>,
    ingest_bitrate_bps: u64,
    bytes_in: u64,
    subscribers: usize,
    dropped_frames: u64,
    tracks: Vec<TrackView>,
}

#[derive(Debug, Serialize)]
struct TrackView {
    kind: &'static str,
    codec: &'static str,
    codec_string: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sample_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channels: Option<u8>,
}

fn live_view(snap: Option<StreamSnapshot>, stored: StreamState) -> LiveView {
    let Some(s) = snap else {
        return LiveView {
            state: if stored == StreamState::Live {
                StreamState::Ended
            } else {
                stored
            },
            protocol: None,
            started_at: None,
            duration_seconds: None,
            ingest_bitrate_bps: 0,
            bytes_in: 0,
            subscribers: 0,
            dropped_frames: 0,
            tracks: vec![],
        };
    };
    let tracks = s
        .tracks
        .as_ref()
        .map(|t| {
            t.list
                .iter()
                .map(|t| match &t.codec {
                    CodecConfig::H264(c) => TrackView {
                        kind: "video",
                        codec: "h264",
                        codec_string: c.codec_string(),
                        width: Some(c.info.width),
                        height: Some(c.info.height),
                        fps: c.info.fps.or(s.measured_fps),
                        sample_rate: None,
                        channels: None,
                    },
                    CodecConfig::Aac(c) => TrackView {
                        kind: "audio",
                        codec: "aac",
                        codec_string: c.codec_string(),
                        width: None,
                        height: None,
                        fps: None,
                        sample_rate: Some(c.sample_rate),
                        channels: Some(c.channels),
                    },
                })
                .collect()
        })
        .unwrap_or_default();
    LiveView {
        state: StreamState::Live,
        protocol: Some(s.protocol),
        started_at: Some(crate::proto::playlist::format_pdt(s.started_at)),
        duration_seconds: SystemTime::now()
            .duration_since(s.started_at)
            .ok()
            .map(|d| (d.as_secs_f64() * 10.0).round() / 10.0),
        ingest_bitrate_bps: s.bitrate_bps,
        bytes_in: s.bytes_in,
        subscribers: s.subscribers,
        dropped_frames: s.dropped_frames,
        tracks,
    }
}

fn view(state: &ApiState, row: StreamRow) -> StreamView {
    let snap = state.hub.get(&row.id).map(|s| s.snapshot());
    let live = live_view(snap, row.state);
    StreamView {
        rtmp_url: format!("{}/{}", state.config.rtmp.public_url, row.app),
        rtmp_play_url: format!("{}/{}/{}", state.config.rtmp.public_url, row.app, row.id),
        hls_url: format!("{}/hls/{}/index.m3u8", state.config.http.public_url, row.id),
        state: live.state,
        live,
        id: row.id,
        app: row.app,
        name: row.name,
        title: row.title,
        created_at: row.created_at,
        updated_at: row.updated_at,
        started_at: row.started_at,
        ended_at: row.ended_at,
    }
}

/// `GET /api/v1/streams?limit=&cursor=`
pub async fn list(
    auth: Auth,
    State(state): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Page<StreamView>>, HttpError> {
    auth.require("streams:read")?;
    let limit = match q.get("limit") {
        None => 20,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| HttpError::bad_request("limit must be an integer from 1 to 100"))?,
    };
    let cursor = q
        .get("cursor")
        .map(|c| {
            crate::store::decode_cursor(c).ok_or_else(|| HttpError::bad_request("invalid cursor"))
        })
        .transpose()?;
    let page = state
        .store
        .list_streams(limit, cursor)
        .await
        .map_err(|e| HttpError::internal("listing streams", e))?;
    Ok(Json(Page {
        pagination: Pagination {
            has_more: page.next_cursor.is_some(),
            next_cursor: page.next_cursor,
        },
        data: page.rows.into_iter().map(|r| view(&state, r)).collect(),
    }))
}

/// `GET /api/v1/streams/{id}`
pub async fn get_one(
    auth: Auth,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<StreamView>, HttpError> {
    auth.require("streams:read")?;
    let row = state
        .store
        .get_stream(&id)
        .await
        .map_err(|e| HttpError::internal("reading a stream", e))?
        .ok_or_else(|| HttpError::not_found(format!("no stream {id}")))?;
    Ok(Json(view(&state, row)))
}
