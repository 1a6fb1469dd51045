//! `/api/v1/streams`: create (the key is shown once), list with filters, get, patch, delete,
//! stop, rotate key, and play tokens for private streams. A stream's view joins the stored
//! row with what the hub knows right now (the `live` block).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::json::{is_slug, parse_timestamp, ApiJson, ApiQuery, Validate};
use super::{page_args, ApiState, Auth, Page, Pagination};
use crate::error::{ErrorEnvelope, HttpError};
use crate::hub::StreamSnapshot;
use crate::media::CodecConfig;
use crate::store::{
    NewStream, Privacy, StoreError, StreamFilter, StreamPatch, StreamRow, StreamState,
};

/// A stream as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamView {
    /// `str_…`
    id: String,
    /// RTMP application.
    app: String,
    /// Unique name within the app.
    name: String,
    /// Title (≤ 120 characters).
    title: String,
    /// Description (≤ 2000 characters).
    description: String,
    /// Category slug.
    category: Option<String>,
    /// `public` or `private` (private playback needs a play token).
    #[schema(value_type = String, example = "public")]
    privacy: Privacy,
    /// Planned start (RFC 3339).
    scheduled_at: Option<String>,
    /// Record whenever live.
    record: bool,
    /// `idle`, `scheduled`, `live` or `ended`.
    #[schema(example = "idle")]
    state: String,
    /// Last ingest protocol.
    protocol: Option<String>,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339.
    updated_at: String,
    /// Last time it went live.
    started_at: Option<String>,
    /// Last time it ended.
    ended_at: Option<String>,
    /// Server for OBS; append the key for ffmpeg.
    rtmp_url: String,
    /// The same server over TLS (`rtmps://`), when `rtmp.tls_listen` is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    rtmps_url: Option<String>,
    /// WHIP endpoint (WebRTC ingest).
    whip_url: String,
    /// WHEP endpoint (WebRTC playback, sub-second latency).
    whep_url: String,
    /// WebSocket endpoint for JPEG cameras.
    ws_url: String,
    /// HLS multivariant playlist.
    hls_url: String,
    /// RTMP play URL (by stream id, never the key).
    rtmp_play_url: String,
    /// Player page: picks WebRTC, HLS or MJPEG for the viewer's browser (private streams:
    /// append `?token=` with a play token).
    play_url: String,
    /// The same player without chrome, for iframes.
    embed_url: String,
    /// A ready `<iframe>` snippet of `embed_url`.
    iframe: String,
    /// Viewers now, all protocols (in a cluster: summed over every node).
    viewer_count: u64,
    /// The node holding the publisher while live (its `[cluster] node_id`, or host name).
    node: Option<String>,
    /// Relays this node serves for the stream: one per other node with viewers of it
    /// (cluster mode; 0 on a single node).
    relays: u64,
    /// Viewers now per protocol (`hls` sessions, `rtmp`, `whep`, `mjpeg` connections).
    viewer_count_by_protocol: std::collections::BTreeMap<String, u64>,
    /// Most viewers at once during the current or last session.
    peak_viewer_count: u64,
    /// How HLS viewers are counted: `sessions` (every player's requests, exact) or, with
    /// `[hls] cdn = true`, `beacons` (only players that report themselves, such as this
    /// server's player page: an estimate, since requests answered by a cache never reach
    /// this server).
    hls_viewers_counted_by: &'static str,
    /// Whether `viewer_count` and `peak_viewer_count` are estimates (`hls_viewers_counted_by`
    /// is `beacons`).
    viewer_count_is_estimate: bool,
    /// Runtime state.
    live: LiveView,
}

/// The runtime block.
#[derive(Debug, Serialize, ToSchema)]
struct LiveView {
    /// `live` while a publisher is connected, else the stored state.
    state: String,
    /// Ingest protocol while live.
    protocol: Option<String>,
    /// When the current session started.
    started_at: Option<String>,
    /// Seconds since then.
    duration_seconds: Option<f64>,
    /// Ingest bitrate over the last seconds, bits per second.
    ingest_bitrate_bps: u64,
    /// Media bytes received in this session.
    bytes_in: u64,
    /// Bytes sent to viewers and outputs in this session (in a cluster: by every node).
    bytes_out: u64,
    /// In/out bitrates over the last 1 and 10 seconds (in a cluster, out is summed over
    /// every node).
    bandwidth: crate::hub::Rates,
    /// Health score 0-100 (`null` in the first seconds); details at `/health`.
    health_score: Option<u8>,
    /// `excellent`, `good`, `fair`, `poor` or `bad`.
    health_grade: Option<String>,
    /// Subscribers (segmenters and players).
    subscribers: u64,
    /// Frames dropped for slow subscribers.
    dropped_frames: u64,
    /// Whether a recording is running.
    is_recording: bool,
    /// Announced tracks.
    tracks: Vec<TrackView>,
    /// An Enhanced RTMP multitrack publisher's tracks beyond the first video and audio track
    /// (other renditions or languages): described here, not played out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    sub_streams: Vec<SubStreamView>,
    /// RTP packet statistics of a WHIP publisher (loss, jitter, keyframe requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    transport: Option<crate::hub::TransportStats>,
    /// What a WHEP viewer gets of this stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    webrtc_playback: Option<WebRtcPlayback>,
}

/// A multitrack publisher's extra track.
#[derive(Debug, Serialize, ToSchema)]
struct SubStreamView {
    /// The publisher's track id.
    track_id: u8,
    /// `video` or `audio`.
    kind: String,
    /// `h264`, `hevc`, `av1`, `vp9`, `aac`, `opus`; absent until its sequence start arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    codec: Option<String>,
    /// RFC 6381 codec string.
    #[serde(skip_serializing_if = "Option::is_none")]
    codec_string: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    height: Option<u32>,
    /// Average bitrate since the track's first frame.
    bitrate_bps: u64,
    /// Payload bytes received.
    bytes_in: u64,
}

fn sub_stream_views(s: &StreamSnapshot) -> Vec<SubStreamView> {
    s.sub_streams
        .iter()
        .map(|sub| {
            let info = sub.codec.as_ref().and_then(|c| c.video_info());
            SubStreamView {
                track_id: sub.track_id,
                kind: match sub.kind {
                    crate::media::TrackKind::Video => "video",
                    crate::media::TrackKind::Audio => "audio",
                }
                .into(),
                codec: sub.codec.as_ref().map(|c| c.name().into()),
                codec_string: sub.codec.as_ref().map(|c| c.codec_string()),
                width: info.map(|i| i.width).filter(|w| *w > 0),
                height: info.map(|i| i.height).filter(|h| *h > 0),
                bitrate_bps: sub.bitrate_bps,
                bytes_in: sub.bytes_in,
            }
        })
        .collect()
}

/// What WebRTC playback carries of a live stream.
#[derive(Debug, Serialize, ToSchema)]
struct WebRtcPlayback {
    /// Video (H.264, VP9 or AV1) is played.
    video: bool,
    /// Opus audio is played.
    audio: bool,
    /// The Opus is transcoded from the stream's AAC (once per stream, while viewers need it).
    audio_transcoded: bool,
    /// Why a track is left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// One track of a live stream.
#[derive(Debug, Serialize, ToSchema)]
struct TrackView {
    /// `video` or `audio`.
    kind: String,
    /// `h264`, `hevc`, `av1`, `vp9`, `mjpeg`, `aac`, `opus`.
    codec: String,
    /// RFC 6381 codec string.
    codec_string: String,
    /// The codec profile (`High`, `Main 10`, ...), video only.
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<String>,
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
    /// Bitrate over the last seconds, bits per second.
    bitrate_bps: u64,
    /// Seconds between keyframes (video), measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    keyframe_interval_seconds: Option<f64>,
}

/// A created stream: the view plus the key, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedStream {
    #[serde(flatten)]
    stream: StreamView,
    /// The stream key (`sk_…`). Stored hashed: it cannot be shown again; rotate it if lost.
    stream_key: String,
}

/// Body of `POST /api/v1/streams`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateStream {
    /// Title, 1-120 characters, not only spaces.
    #[schema(min_length = 1, max_length = 120, pattern = "\\S")]
    title: String,
    /// Up to 2000 characters.
    #[serde(default)]
    #[schema(max_length = 2000)]
    description: String,
    /// RTMP application, a slug (default `live`).
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    app: Option<String>,
    /// Unique name within the app, a slug (default: derived from the id).
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    name: Option<String>,
    /// Category slug.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    category: Option<String>,
    /// `public` (default) or `private`.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "public")]
    privacy: Option<Privacy>,
    /// Planned start, RFC 3339, in the future.
    #[serde(default)]
    scheduled_at: Option<String>,
    /// Record whenever live.
    #[serde(default)]
    record: bool,
}

/// Body of `PATCH /api/v1/streams/{id}`; absent fields stay as they are, `null` clears the
/// nullable ones.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateStream {
    /// New title, 1-120 characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 120, pattern = "\\S")]
    title: Option<String>,
    /// New description, up to 2000 characters.
    #[serde(default)]
    #[schema(max_length = 2000)]
    description: Option<String>,
    /// New category slug, or `null` to clear.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, pattern = "^[a-z0-9_-]{1,64}$")]
    category: Option<Option<String>>,
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "private")]
    privacy: Option<Privacy>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    scheduled_at: Option<Option<String>>,
    #[serde(default)]
    record: Option<bool>,
}

fn double_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Query of `GET /api/v1/streams`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListStreams {
    /// `idle`, `scheduled`, `live` or `ended`.
    status: Option<String>,
    /// Application.
    app: Option<String>,
    /// Category slug.
    category: Option<String>,
    /// Last ingest protocol (`rtmp`).
    protocol: Option<String>,
    /// Page size, 1-100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// Opaque cursor from `pagination.next_cursor`.
    cursor: Option<String>,
}

/// Query of `DELETE /api/v1/streams/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Stop a live stream first instead of answering 409.
    #[serde(default)]
    force: Option<bool>,
}

/// Body of `POST /api/v1/streams/{id}/play-token`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlayTokenRequest {
    /// Lifetime in seconds, 1-86400 (default from config).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86400)]
    ttl_seconds: Option<u64>,
}

/// A play token.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlayToken {
    /// Append as `?token=` to playback URLs.
    token: String,
    /// RFC 3339.
    expires_at: String,
    /// The HLS URL with the token.
    hls_url: String,
}

/// A rotated key.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedKey {
    /// The stream.
    id: String,
    /// The new key, shown this once; the old one no longer publishes.
    stream_key: String,
    /// Server for OBS.
    rtmp_url: String,
    /// The same server over TLS, when RTMPS is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    rtmps_url: Option<String>,
}

fn track_views(s: &StreamSnapshot) -> Vec<TrackView> {
    let Some(tracks) = &s.tracks else {
        return vec![];
    };
    let primary = tracks.primary_video();
    let mut views = base_track_views(s, tracks);
    for (view, t) in views.iter_mut().zip(&tracks.list) {
        view.bitrate_bps = s
            .track_bitrates
            .iter()
            .find(|(id, _)| *id == t.id)
            .map_or(0, |(_, b)| *b);
        if primary == Some(t.id) {
            view.keyframe_interval_seconds =
                s.keyframe_interval_s.map(|k| (k * 100.0).round() / 100.0);
        }
    }
    views
}

fn base_track_views(s: &StreamSnapshot, tracks: &crate::media::Tracks) -> Vec<TrackView> {
    let measured = |id| {
        s.measured_fps
            .iter()
            .find(|(t, _)| *t == id)
            .map(|(_, f)| (f * 10.0).round() / 10.0)
    };
    tracks
        .list
        .iter()
        .map(|t| match &t.codec {
            CodecConfig::Aac(c) => TrackView {
                kind: "audio".into(),
                codec: "aac".into(),
                codec_string: c.codec_string(),
                profile: None,
                width: None,
                height: None,
                fps: None,
                sample_rate: Some(c.sample_rate),
                channels: Some(c.channels),
                bitrate_bps: 0,
                keyframe_interval_seconds: None,
            },
            CodecConfig::Opus(c) => TrackView {
                kind: "audio".into(),
                codec: "opus".into(),
                codec_string: "opus".into(),
                profile: None,
                width: None,
                height: None,
                fps: None,
                sample_rate: Some(48_000),
                channels: Some(c.channels),
                bitrate_bps: 0,
                keyframe_interval_seconds: None,
            },
            video => {
                let info = video.video_info();
                TrackView {
                    kind: "video".into(),
                    codec: video.name().into(),
                    codec_string: video.codec_string(),
                    profile: info.map(|i| i.profile.to_string()),
                    width: info.map(|i| i.width).filter(|w| *w > 0),
                    height: info.map(|i| i.height).filter(|h| *h > 0),
                    fps: info.and_then(|i| i.fps).or(measured(t.id)),
                    sample_rate: None,
                    channels: None,
                    bitrate_bps: 0,
                    keyframe_interval_seconds: None,
                }
            }
        })
        .collect()
}

/// `clustered`: a stream stored as live without a publisher here is live on another node
/// (on a single node it is a leftover of a crash, shown as ended).
fn live_view(
    snap: Option<&StreamSnapshot>,
    status: &str,
    is_recording: bool,
    clustered: bool,
    transcode: bool,
) -> LiveView {
    let Some(s) = snap else {
        return LiveView {
            state: if status == "live" && !clustered {
                "ended"
            } else {
                status
            }
            .into(),
            protocol: None,
            started_at: None,
            duration_seconds: None,
            ingest_bitrate_bps: 0,
            bytes_in: 0,
            bytes_out: 0,
            bandwidth: crate::hub::Rates::default(),
            health_score: None,
            health_grade: None,
            subscribers: 0,
            dropped_frames: 0,
            is_recording: false,
            tracks: vec![],
            sub_streams: vec![],
            transport: None,
            webrtc_playback: None,
        };
    };
    LiveView {
        state: "live".into(),
        protocol: Some(s.protocol.into()),
        started_at: Some(crate::proto::playlist::format_pdt(s.started_at)),
        duration_seconds: SystemTime::now()
            .duration_since(s.started_at)
            .ok()
            .map(|d| (d.as_secs_f64() * 10.0).round() / 10.0),
        ingest_bitrate_bps: s.bitrate_bps,
        bytes_in: s.bytes_in,
        bytes_out: s.bytes_out,
        bandwidth: s.rates,
        health_score: s.health.as_ref().map(|h| h.score),
        health_grade: s.health.as_ref().map(|h| h.grade.to_owned()),
        subscribers: s.subscribers as u64,
        dropped_frames: s.dropped_frames,
        is_recording,
        tracks: track_views(s),
        sub_streams: sub_stream_views(s),
        transport: s.transport.clone(),
        webrtc_playback: s.tracks.as_ref().map(|t| {
            let opus = transcode
                .then(|| {
                    crate::media::audio::converted_track(
                        t,
                        crate::media::audio::Direction::AacToOpus,
                    )
                })
                .flatten();
            let p = crate::egress::whep::Playable::of(t, s.has_b_frames, opus);
            WebRtcPlayback {
                video: p.video.is_some(),
                audio: p.audio.is_some(),
                audio_transcoded: p.audio_transcoded,
                note: p.note,
            }
        }),
    }
}

fn view(state: &ApiState, row: StreamRow) -> StreamView {
    let snap = state.hub.get(&row.id).map(|s| s.snapshot());
    let status = row.status(&crate::store::now_rfc3339());
    let is_recording = state
        .recorders
        .as_ref()
        .is_some_and(|r| r.is_recording(&row.id));
    let transcode = state.config.transcode.audio;
    let mut live = live_view(
        snap.as_ref(),
        status,
        is_recording,
        state.cluster.is_some(),
        transcode,
    );
    // Relayed here from its owner: the ingest protocol is the owner's.
    if live.protocol.as_deref() == Some(crate::hub::RELAY_PROTOCOL) {
        live.protocol = row.protocol.clone();
    }
    let http = &state.config.http.public_url;
    let ws_base = http.replacen("http", "ws", 1);
    let (play_url, embed_url, iframe) = crate::web::page_urls(http, &row.id);
    StreamView {
        play_url,
        embed_url,
        iframe,
        rtmp_url: format!("{}/{}", state.config.rtmp.public_url, row.app),
        rtmps_url: state
            .config
            .rtmp
            .rtmps_url()
            .map(|u| format!("{u}/{}", row.app)),
        rtmp_play_url: format!("{}/{}/{}", state.config.rtmp.public_url, row.app, row.id),
        hls_url: format!("{http}/hls/{}/index.m3u8", row.id),
        whip_url: format!("{http}/whip/{}/{}", row.app, row.name),
        whep_url: format!("{http}/whep/{}", row.id),
        ws_url: format!("{ws_base}/ingest/ws"),
        state: live.state.clone(),
        viewer_count: snap.as_ref().map_or(0, |s| s.viewers as u64),
        node: (status == "live").then(|| row.owner_node.clone()).flatten(),
        relays: state
            .cluster
            .as_ref()
            .map_or(0, |c| c.relays_out(&row.id) as u64),
        viewer_count_by_protocol: super::live_stats::by_protocol(snap.as_ref()),
        peak_viewer_count: snap.as_ref().map_or(0, |s| s.peak_viewers as u64),
        hls_viewers_counted_by: if state.config.hls.cdn {
            "beacons"
        } else {
            "sessions"
        },
        viewer_count_is_estimate: state.config.hls.cdn,
        live,
        id: row.id,
        app: row.app,
        name: row.name,
        title: row.title,
        description: row.description,
        category: row.category,
        privacy: row.privacy,
        scheduled_at: row.scheduled_at,
        record: row.record,
        protocol: row.protocol,
        created_at: row.created_at,
        updated_at: row.updated_at,
        started_at: row.started_at,
        ended_at: row.ended_at,
    }
}

/// In a cluster, a live stream's viewers and outgoing traffic are summed over every node
/// (each node reports its own once a second; this node's is taken now).
async fn sum_viewers(state: &ApiState, views: &mut [StreamView]) {
    let Some(cluster) = &state.cluster else {
        return;
    };
    let live: Vec<usize> = (0..views.len())
        .filter(|&i| views[i].state == "live")
        .collect();
    if live.is_empty() {
        return;
    }
    let ids: Vec<&str> = live.iter().map(|&i| views[i].id.as_str()).collect();
    match cluster.viewers(&ids, cluster.id()).await {
        Ok(others) => {
            for (&i, n) in live.iter().zip(others) {
                let v = &mut views[i];
                v.viewer_count += n.viewers;
                v.live.bytes_out += n.bytes_out;
                v.live.bandwidth.out_bps_1s += n.out_bps_1s;
                v.live.bandwidth.out_bps_10s += n.out_bps_10s;
            }
        }
        // Redis away: this node's own count, which is what it knows.
        Err(err) => tracing::warn!(%err, "viewer counts of other nodes unavailable"),
    }
}

fn store_err(context: &str, e: StoreError) -> HttpError {
    match e {
        StoreError::Conflict(m) => HttpError::conflict(m),
        other => HttpError::internal(context, other),
    }
}

async fn load(state: &ApiState, id: &str) -> Result<StreamRow, HttpError> {
    state
        .store
        .get_stream(id)
        .await
        .map_err(|e| store_err("reading a stream", e))?
        .ok_or_else(|| HttpError::not_found(format!("no stream {id}")))
}

fn check_scheduled(v: &mut Validate, scheduled_at: Option<&str>) -> Option<String> {
    let raw = scheduled_at?;
    let parsed = parse_timestamp(raw);
    v.check(
        parsed.is_none(),
        "scheduled_at",
        "must be an RFC 3339 timestamp",
    );
    let parsed = parsed?;
    v.check(
        parsed <= crate::store::now_rfc3339(),
        "scheduled_at",
        "must be in the future",
    );
    Some(parsed)
}

/// Create a stream; the response carries its key, shown this once.
#[utoipa::path(post, path = "/api/v1/streams", tag = "streams",
    request_body = CreateStream,
    responses(
        (status = 201, description = "Created", body = CreatedStream),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope), (status = 415, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["streams:write"])))]
pub async fn create(
    auth: Auth,
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateStream>,
) -> Result<(StatusCode, Json<CreatedStream>), HttpError> {
    auth.require("streams:write")?;
    let mut v = Validate::default();
    let title = body.title.trim().to_owned();
    v.check(
        title.is_empty() || title.chars().count() > 120,
        "title",
        "1-120 characters",
    );
    v.check(
        body.description.chars().count() > 2000,
        "description",
        "at most 2000 characters",
    );
    let app = body.app.unwrap_or_else(|| "live".into());
    v.check(!is_slug(&app), "app", "a slug: 1-64 of a-z, 0-9, - and _");
    if let Some(name) = &body.name {
        v.check(!is_slug(name), "name", "a slug: 1-64 of a-z, 0-9, - and _");
    }
    if let Some(c) = &body.category {
        v.check(!is_slug(c), "category", "a slug: 1-64 of a-z, 0-9, - and _");
    }
    let scheduled_at = check_scheduled(&mut v, body.scheduled_at.as_deref());
    v.finish()?;
    let max = state.config.api.max_streams_per_app;
    let count = state
        .store
        .count_streams_in_app(&app)
        .await
        .map_err(|e| HttpError::internal("counting streams", e))?;
    if count >= u64::from(max) {
        return Err(HttpError::conflict(format!(
            "app {app} already has {count} streams (api.max_streams_per_app = {max})"
        )));
    }
    let name = body
        .name
        .unwrap_or_else(|| crate::store::random_id("stream-", 6));
    let new = NewStream {
        app,
        name,
        title,
        description: body.description,
        category: body.category,
        privacy: body.privacy.unwrap_or(Privacy::Public),
        scheduled_at,
        record: body.record,
    };
    let (row, key) = state
        .store
        .create_stream(new)
        .await
        .map_err(|e| store_err("creating a stream", e))?;
    let stream = view(&state, row);
    state.events.publish(
        "stream.created",
        serde_json::json!({ "stream": serde_json::to_value(&stream).unwrap_or_default() }),
    );
    Ok((
        StatusCode::CREATED,
        Json(CreatedStream {
            stream,
            stream_key: key,
        }),
    ))
}

/// List streams, oldest first, with filters and cursor pagination.
#[utoipa::path(get, path = "/api/v1/streams", tag = "streams",
    params(ListStreams),
    responses(
        (status = 200, body = Page<StreamView>),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["streams:read"])))]
pub async fn list(
    auth: Auth,
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<ListStreams>,
) -> Result<Json<Page<StreamView>>, HttpError> {
    auth.require("streams:read")?;
    let (limit, cursor) = page_args(q.limit, q.cursor.as_deref())?;
    let mut v = Validate::default();
    if let Some(s) = &q.status {
        v.check(
            !["idle", "scheduled", "live", "ended"].contains(&s.as_str()),
            "status",
            "one of idle, scheduled, live, ended",
        );
    }
    v.finish()?;
    let filter = StreamFilter {
        status: q.status,
        app: q.app,
        category: q.category,
        protocol: q.protocol,
    };
    let page = state
        .store
        .list_streams(limit, cursor, filter)
        .await
        .map_err(|e| store_err("listing streams", e))?;
    let mut data: Vec<StreamView> = page.rows.into_iter().map(|r| view(&state, r)).collect();
    sum_viewers(&state, &mut data).await;
    Ok(Json(Page {
        pagination: Pagination::from_cursor(page.next_cursor),
        data,
    }))
}

/// One stream with its live block.
#[utoipa::path(get, path = "/api/v1/streams/{id}", tag = "streams",
    params(("id" = String, Path, description = "Stream id")),
    responses(
        (status = 200, body = StreamView),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["streams:read"])))]
pub async fn get_one(
    auth: Auth,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<StreamView>, HttpError> {
    auth.require("streams:read")?;
    let row = load(&state, &id).await?;
    let mut one = [view(&state, row)];
    sum_viewers(&state, &mut one).await;
    let [one] = one;
    Ok(Json(one))
}

/// Change a stream's title, description, category, privacy, schedule or record flag.
#[utoipa::path(patch, path = "/api/v1/streams/{id}", tag = "streams",
    params(("id" = String, Path, description = "Stream id")),
    request_body = UpdateStream,
    responses(
        (status = 200, body = StreamView),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope), (status = 415, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["streams:write"])))]
pub async fn update(
    auth: Auth,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateStream>,
) -> Result<Json<StreamView>, HttpError> {
    auth.require("streams:write")?;
    let mut v = Validate::default();
    let title = body.title.map(|t| t.trim().to_owned());
    if let Some(t) = &title {
        v.check(
            t.is_empty() || t.chars().count() > 120,
            "title",
            "1-120 characters",
        );
    }
    if let Some(d) = &body.description {
        v.check(
            d.chars().count() > 2000,
            "description",
            "at most 2000 characters",
        );
    }
    if let Some(Some(c)) = &body.category {
        v.check(!is_slug(c), "category", "a slug: 1-64 of a-z, 0-9, - and _");
    }
    let scheduled_at = match &body.scheduled_at {
        Some(Some(raw)) => Some(check_scheduled(&mut v, Some(raw))),
        Some(None) => Some(None),
        None => None,
    };
    v.finish()?;
    let patch = StreamPatch {
        title,
        description: body.description,
        category: body.category,
        privacy: body.privacy,
        scheduled_at,
        record: body.record,
    };
    let row = state
        .store
        .update_stream(&id, patch)
        .await
        .map_err(|e| store_err("updating a stream", e))?
        .ok_or_else(|| HttpError::not_found(format!("no stream {id}")))?;
    if row.privacy == crate::store::Privacy::Private {
        // Destinations that may not push a private stream stop now, not at their next
        // reconnect (on the node pushing them).
        let control = crate::cluster::Control::Privacy {
            stream: row.id.clone(),
        };
        if super::tell_owner(&state, control).await == super::OnOwner::Here {
            if let Some(r) = &state.restreamer {
                r.enforce_privacy(&row.id);
            }
        }
    }
    Ok(Json(view(&state, row)))
}

/// Disconnects the publisher and waits (briefly) until the hub has let the stream go. In a
/// cluster, a publisher on another node is stopped by its node (a control message).
async fn stop_live(state: &ApiState, id: &str) -> Result<bool, HttpError> {
    let Some(live) = state.hub.published(id) else {
        let Some(cluster) = &state.cluster else {
            return Ok(false);
        };
        let sent = cluster.stop_remote(id).await.map_err(|err| {
            tracing::warn!(%err, stream = id, "stop on another node");
            HttpError::unavailable("the cluster (Redis) is unreachable; retry in a moment")
        })?;
        if sent {
            // The owner stores the end; wait for it briefly.
            for _ in 0..150 {
                match state.store.get_stream(id).await {
                    Ok(Some(row)) if row.state == StreamState::Live => {}
                    _ => break,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        return Ok(sent);
    };
    live.stop();
    for _ in 0..100 {
        if state.hub.get(id).is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(true)
}

/// Delete a stream (409 while live unless `force=true`, which stops it first).
#[utoipa::path(delete, path = "/api/v1/streams/{id}", tag = "streams",
    params(("id" = String, Path, description = "Stream id"), DeleteQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["streams:write"])))]
pub async fn delete(
    auth: Auth,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> Result<StatusCode, HttpError> {
    auth.require("streams:write")?;
    let row = load(&state, &id).await?;
    let live_here = state.hub.published(&id).is_some();
    let live_elsewhere = state.cluster.is_some() && row.state == StreamState::Live;
    if live_here || live_elsewhere {
        if !q.force.unwrap_or(false) {
            return Err(HttpError::conflict(
                "the stream is live; stop it first or pass force=true",
            ));
        }
        stop_live(&state, &id).await?;
    }
    state
        .store
        .delete_stream(&id)
        .await
        .map_err(|e| store_err("deleting a stream", e))?;
    state.events.publish(
        "stream.deleted",
        serde_json::json!({ "stream": { "id": row.id } }),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// Disconnect the publisher; the stream ends (`stream.ended` follows).
#[utoipa::path(post, path = "/api/v1/streams/{id}/stop", tag = "streams",
    params(("id" = String, Path, description = "Stream id")),
    responses(
        (status = 200, body = StreamView),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["streams:write"])))]
pub async fn stop(
    auth: Auth,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<StreamView>, HttpError> {
    auth.require("streams:write")?;
    load(&state, &id).await?;
    if !stop_live(&state, &id).await? {
        return Err(HttpError::conflict("the stream is not live"));
    }
    // The stored state follows the hub asynchronously; wait for it briefly.
    for _ in 0..50 {
        let row = load(&state, &id).await?;
        if row.state != StreamState::Live {
            return Ok(Json(view(&state, row)));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Json(view(&state, load(&state, &id).await?)))
}

/// Replace the stream key; the old key stops working for new publishes at once.
#[utoipa::path(post, path = "/api/v1/streams/{id}/key", tag = "streams",
    params(("id" = String, Path, description = "Stream id")),
    responses(
        (status = 200, body = RotatedKey),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["streams:write"])))]
pub async fn rotate_key(
    auth: Auth,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<RotatedKey>, HttpError> {
    auth.require("streams:write")?;
    let row = load(&state, &id).await?;
    let key = state
        .store
        .rotate_stream_key(&id)
        .await
        .map_err(|e| store_err("rotating a key", e))?
        .ok_or_else(|| HttpError::not_found(format!("no stream {id}")))?;
    Ok(Json(RotatedKey {
        id,
        stream_key: key,
        rtmp_url: format!("{}/{}", state.config.rtmp.public_url, row.app),
        rtmps_url: state
            .config
            .rtmp
            .rtmps_url()
            .map(|u| format!("{u}/{}", row.app)),
    }))
}

/// Revoke every play token minted for the stream so far (the stream's token generation is
/// bumped; rotating the key and changing privacy do the same). Viewers holding one are
/// refused within two seconds.
#[utoipa::path(post, path = "/api/v1/streams/{id}/play-tokens/revoke", tag = "streams",
    params(("id" = String, Path, description = "Stream id")),
    responses(
        (status = 204),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["streams:write"])))]
pub async fn revoke_play_tokens(
    auth: Auth,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    auth.require("streams:write")?;
    let found = state
        .store
        .revoke_play_tokens(&id)
        .await
        .map_err(|e| HttpError::internal("revoking play tokens", e))?;
    if !found {
        return Err(HttpError::not_found(format!("no stream {id}")));
    }
    tracing::info!(stream = %id, "play tokens revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// A short-lived signed token for playing a private stream (`?token=`).
#[utoipa::path(post, path = "/api/v1/streams/{id}/play-token", tag = "streams",
    params(("id" = String, Path, description = "Stream id")),
    request_body = Option<PlayTokenRequest>,
    responses(
        (status = 201, body = PlayToken),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope), (status = 415, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["streams:read"]), ("bearer" = ["play"])))]
pub async fn play_token(
    auth: Auth,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    super::json::OptionalJson(body): super::json::OptionalJson<PlayTokenRequest>,
) -> Result<(StatusCode, Json<PlayToken>), HttpError> {
    // `play` lets a player backend mint tokens without reading stream details.
    if auth.require("play").is_err() {
        auth.require("streams:read")?;
    }
    let row = load(&state, &id).await?;
    let max = state.config.auth.play_token_max_ttl_secs;
    let ttl = body
        .ttl_seconds
        .unwrap_or(state.config.auth.play_token_ttl_secs.min(max));
    Validate::default()
        .check(
            !(1..=max).contains(&ttl),
            "ttl_seconds",
            &format!("between 1 and {max} (auth.play_token_max_ttl_secs)"),
        )
        .finish()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expires = now + ttl;
    let token = state
        .signer
        .sign_generation(&row.id, row.token_generation, expires);
    Ok((
        StatusCode::CREATED,
        Json(PlayToken {
            hls_url: format!(
                "{}/hls/{}/index.m3u8?token={token}",
                state.config.http.public_url, row.id
            ),
            expires_at: crate::proto::playlist::format_pdt(
                UNIX_EPOCH + Duration::from_secs(expires),
            ),
            token,
        }),
    ))
}
