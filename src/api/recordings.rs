//! Recordings: list (filters, order, keyset cursor), get, download (attachment, ranges, 409
//! while recording), delete (file and row), and starting/stopping a live stream's recording.

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::json::{parse_timestamp, ApiQuery, Validate};
use super::{ApiState, Auth, Page, Pagination};
use crate::egress::record::Recorders;
use crate::error::{ErrorEnvelope, HttpError};
use crate::store::{RecordingFilter, RecordingOrder, RecordingRow, StoreError};

/// A recording as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordingView {
    /// `rec_…`
    id: String,
    /// The stream it recorded.
    stream_id: String,
    /// `recording`, `finalizing`, `uploading` (to object storage), `ready` or `failed`.
    #[schema(example = "ready")]
    status: String,
    /// Why it failed (`disk_full`, ...).
    reason: Option<String>,
    /// RFC 3339.
    started_at: String,
    /// RFC 3339, once finished.
    ended_at: Option<String>,
    /// Seconds of media.
    duration_seconds: f64,
    /// File size.
    size_bytes: i64,
    /// Video width.
    width: Option<i64>,
    /// Video height.
    height: Option<i64>,
    /// RFC 6381 codec strings.
    codecs: Vec<String>,
    /// VOD HLS playlist (byte ranges into the file).
    playback_url: String,
    /// The fMP4 file: the API's download (token needed; HTTP ranges supported) or, for a
    /// recording in object storage (`download = "redirect"`), a presigned URL of the object.
    download_url: String,
    /// When a presigned `download_url` stops working (RFC 3339); none for the API's.
    download_expires_at: Option<String>,
    /// `local` (this node's disk) or `s3` (object storage).
    storage: String,
    /// Bytes uploaded to object storage so far (while `recording` or `uploading`).
    uploaded_bytes: i64,
    /// SHA-256 of the stored object (hex), once uploaded.
    sha256: Option<String>,
}

async fn view(state: &ApiState, r: RecordingRow) -> RecordingView {
    let http = &state.config.http.public_url;
    let mut download_url = format!("{http}/api/v1/recordings/{}/download", r.id);
    let mut download_expires_at = None;
    let storage = state.recorders.as_ref().and_then(|recs| recs.storage());
    if let Some(storage) = storage.filter(|s| !s.proxy && r.storage == "s3") {
        let key = r.object_key.clone().unwrap_or_else(|| storage.key(&r.id));
        // Signing is local: no request to the store.
        if let Ok((url, expires)) = storage.presign(&key).await {
            download_url = url;
            download_expires_at = Some(crate::proto::playlist::format_pdt(expires));
        }
    }
    RecordingView {
        playback_url: format!("{http}/vod/{}/index.m3u8", r.id),
        download_url,
        download_expires_at,
        codecs: r
            .codecs
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect(),
        duration_seconds: r.duration_ms as f64 / 1000.0,
        id: r.id,
        stream_id: r.stream_id,
        status: r.status,
        reason: r.reason,
        started_at: r.started_at,
        ended_at: r.ended_at,
        size_bytes: r.size_bytes,
        width: r.width,
        height: r.height,
        storage: r.storage,
        uploaded_bytes: r.uploaded_bytes,
        sha256: r.sha256,
    }
}

/// Query of `GET /api/v1/recordings`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListRecordings {
    /// Only this stream's recordings.
    stream_id: Option<String>,
    /// `recording`, `finalizing`, `uploading`, `ready` or `failed`.
    status: Option<String>,
    /// Started at or after (RFC 3339).
    since: Option<String>,
    /// Started before (RFC 3339).
    until: Option<String>,
    /// `started_at` (default), `size_bytes` or `duration`.
    order: Option<String>,
    /// `asc` or `desc` (default `desc`).
    dir: Option<String>,
    /// Page size, 1-100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// Opaque cursor from `pagination.next_cursor`.
    cursor: Option<String>,
}

fn recorders(state: &ApiState) -> Result<&std::sync::Arc<Recorders>, HttpError> {
    state
        .recorders
        .as_ref()
        .ok_or_else(|| HttpError::unavailable("recording is not available in this server"))
}

async fn load(state: &ApiState, id: &str) -> Result<(RecordingRow, std::path::PathBuf), HttpError> {
    crate::egress::vod::lookup(&state.store, recorders(state)?, id).await
}

/// List recordings, newest first by default, with filters and cursor pagination.
#[utoipa::path(get, path = "/api/v1/recordings", tag = "recordings",
    params(ListRecordings),
    responses(
        (status = 200, body = Page<RecordingView>),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["recordings:read"])))]
pub async fn list(
    auth: Auth,
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<ListRecordings>,
) -> Result<Json<Page<RecordingView>>, HttpError> {
    auth.require("recordings:read")?;
    let mut v = Validate::default();
    let limit = q.limit.unwrap_or(20);
    v.check(
        !(1..=100).contains(&limit),
        "limit",
        "must be between 1 and 100",
    );
    if let Some(s) = &q.status {
        v.check(
            !["recording", "finalizing", "uploading", "ready", "failed"].contains(&s.as_str()),
            "status",
            "one of recording, finalizing, uploading, ready, failed",
        );
    }
    let since = q.since.as_deref().map(parse_timestamp);
    v.check(since == Some(None), "since", "an RFC 3339 timestamp");
    let until = q.until.as_deref().map(parse_timestamp);
    v.check(until == Some(None), "until", "an RFC 3339 timestamp");
    let order = match q.order.as_deref() {
        None | Some("started_at") => Some(RecordingOrder::StartedAt),
        Some("size_bytes") => Some(RecordingOrder::Size),
        Some("duration") => Some(RecordingOrder::Duration),
        Some(_) => None,
    };
    v.check(
        order.is_none(),
        "order",
        "one of started_at, size_bytes, duration",
    );
    let descending = match q.dir.as_deref() {
        None | Some("desc") => Some(true),
        Some("asc") => Some(false),
        Some(_) => None,
    };
    v.check(descending.is_none(), "dir", "asc or desc");
    v.finish()?;
    let filter = RecordingFilter {
        stream_id: q.stream_id,
        status: q.status,
        since: since.flatten(),
        until: until.flatten(),
    };
    let page = state
        .store
        .list_recordings(
            filter,
            order.unwrap_or(RecordingOrder::StartedAt),
            descending.unwrap_or(true),
            limit as usize,
            q.cursor,
        )
        .await
        .map_err(|e| match e {
            StoreError::Conflict(m) => HttpError::bad_request(m),
            other => HttpError::internal("listing recordings", other),
        })?;
    Ok(Json(Page {
        pagination: Pagination::from_cursor(page.next_cursor),
        data: {
            let mut data = Vec::with_capacity(page.rows.len());
            for r in page.rows {
                data.push(view(&state, r).await);
            }
            data
        },
    }))
}

/// One recording.
#[utoipa::path(get, path = "/api/v1/recordings/{id}", tag = "recordings",
    params(("id" = String, Path, description = "Recording id")),
    responses(
        (status = 200, body = RecordingView),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["recordings:read"])))]
pub async fn get_one(
    auth: Auth,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<RecordingView>, HttpError> {
    auth.require("recordings:read")?;
    let (row, _) = load(&state, &id).await?;
    Ok(Json(view(&state, row).await))
}

/// Download the fMP4 file (`Content-Disposition: attachment`, HTTP range requests). 409
/// while the recording is still being written. In object storage: a `302` to a presigned
/// URL of the object (or, with `download = "proxy"`, the bytes through this node).
#[utoipa::path(get, path = "/api/v1/recordings/{id}/download", tag = "recordings",
    params(("id" = String, Path, description = "Recording id")),
    responses(
        (status = 200, description = "The file (video/mp4)", content_type = "video/mp4"),
        (status = 206, description = "A byte range of it"),
        (status = 302, description = "In object storage: the presigned URL of the object"),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
        (status = 416, description = "Unsatisfiable range"),
        (status = 429, body = ErrorEnvelope),
        (status = 502, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope),
    ),
    security(("bearer" = ["recordings:read"])))]
pub async fn download(
    auth: Auth,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, HttpError> {
    auth.require("recordings:read")?;
    let (row, path) = load(&state, &id).await?;
    if matches!(row.status.as_str(), "recording" | "finalizing") {
        return Err(HttpError::conflict(
            "the recording is still being written; play it at playback_url meanwhile",
        ));
    }
    let name = format!("{}.mp4", row.id);
    match crate::egress::vod::locate(recorders(&state)?, &row, path).await? {
        crate::egress::vod::Media::Local(path) => {
            crate::egress::vod::serve_file(path, req, Some(&name)).await
        }
        crate::egress::vod::Media::Object(storage, key) => {
            let range = req.headers().get(axum::http::header::RANGE).cloned();
            drop(req);
            crate::egress::vod::serve_object(&storage, &key, range, Some(&name)).await
        }
    }
}

/// Delete a recording: its object (in object storage), its file and its row. A running
/// recording must be stopped first; an unreachable object store keeps it (503).
#[utoipa::path(delete, path = "/api/v1/recordings/{id}", tag = "recordings",
    params(("id" = String, Path, description = "Recording id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope), (status = 502, body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope),
    ),
    security(("bearer" = ["recordings:write"])))]
pub async fn delete(
    auth: Auth,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    auth.require("recordings:write")?;
    let recs = recorders(&state)?.clone();
    let (row, _) = load(&state, &id).await?;
    if recs.current(&row.stream_id).as_deref() == Some(row.id.as_str()) {
        return Err(HttpError::conflict(
            "the recording is running: stop it first (POST /api/v1/streams/{id}/recording/stop)",
        ));
    }
    recs.delete(&row).await.map_err(|e| {
        if e.starts_with("object store refused") {
            tracing::warn!(recording = %row.id, error = %e, "cannot delete a recording's object");
            HttpError::new(
                StatusCode::BAD_GATEWAY,
                "storage_error",
                "object storage refused to delete the recording's object; the recording is kept",
            )
        } else if e.starts_with("object store") {
            tracing::warn!(recording = %row.id, error = %e, "cannot delete a recording's object");
            let mut err = HttpError::unavailable(
                "object storage is unreachable; the recording is kept, retry in a moment",
            );
            err.retry_after = Some(5);
            err
        } else {
            HttpError::internal("deleting a recording", e)
        }
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// Whether a stream is being recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordingState {
    /// The stream.
    stream_id: String,
    /// A recorder is attached.
    recording: bool,
    /// The recording being written, once its first keyframe arrived.
    recording_id: Option<String>,
}

/// Start recording a live stream (the stream's `record` flag does this automatically). In a
/// cluster the node holding the publisher records; asked on another node, the answer has no
/// `recording_id` yet (the recording is listed once its first keyframe is written).
#[utoipa::path(post, path = "/api/v1/streams/{id}/recording/start", tag = "recordings",
    params(("id" = String, Path, description = "Stream id")),
    responses(
        (status = 202, body = RecordingState),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["recordings:write"])))]
pub async fn start(
    auth: Auth,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<RecordingState>), HttpError> {
    auth.require("recordings:write")?;
    let recs = recorders(&state)?.clone();
    stream_exists(&state, &id).await?;
    let control = crate::cluster::Control::RecordStart { stream: id.clone() };
    if super::on_owner(&state, control).await? == super::OnOwner::Sent {
        // The owner records; its recording appears in the list once its first keyframe is
        // written.
        return Ok((
            StatusCode::ACCEPTED,
            Json(RecordingState {
                recording_id: None,
                stream_id: id,
                recording: true,
            }),
        ));
    }
    let live = state
        .hub
        .published(&id)
        .ok_or_else(|| HttpError::conflict("the stream is not live"))?;
    if !recs.start(live) {
        return Err(HttpError::conflict("the stream is already being recorded"));
    }
    for _ in 0..50 {
        if recs.current(&id).is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(RecordingState {
            recording_id: recs.current(&id),
            stream_id: id,
            recording: true,
        }),
    ))
}

/// Stop recording a live stream; the file is finalised and becomes `ready`.
#[utoipa::path(post, path = "/api/v1/streams/{id}/recording/stop", tag = "recordings",
    params(("id" = String, Path, description = "Stream id")),
    responses(
        (status = 202, body = RecordingState),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["recordings:write"])))]
pub async fn stop(
    auth: Auth,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<RecordingState>), HttpError> {
    auth.require("recordings:write")?;
    let recs = recorders(&state)?.clone();
    stream_exists(&state, &id).await?;
    let control = crate::cluster::Control::RecordStop { stream: id.clone() };
    if super::on_owner(&state, control).await? == super::OnOwner::Sent {
        return Ok((
            StatusCode::ACCEPTED,
            Json(RecordingState {
                stream_id: id,
                recording: false,
                recording_id: None,
            }),
        ));
    }
    let current = recs.current(&id);
    if !recs.stop(&id) {
        return Err(HttpError::conflict("the stream is not being recorded"));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(RecordingState {
            stream_id: id,
            recording: false,
            recording_id: current,
        }),
    ))
}

async fn stream_exists(state: &ApiState, id: &str) -> Result<(), HttpError> {
    state
        .store
        .get_stream(id)
        .await
        .map_err(|e| HttpError::internal("reading a stream", e))?
        .map(|_| ())
        .ok_or_else(|| HttpError::not_found("no such stream"))
}
