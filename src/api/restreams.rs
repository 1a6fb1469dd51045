//! Restream destinations of a stream: create (platform preset or custom `rtmp(s)://` URL plus
//! key), list, get (with the pusher's live state), update (enable/disable, rename, new URL or
//! key) and delete. URL credentials and keys are write-only: responses carry the masked URL
//! and a key hint, never the secret.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::json::{ApiJson, ApiQuery, Validate};
use super::{page_args, ApiState, Auth, Page, Pagination};
use crate::egress::restream::{self, State as PushState};
use crate::error::{ErrorEnvelope, HttpError};
use crate::store::{NewRestream, RestreamPatch, RestreamRow, StoreError};

/// A restream destination as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RestreamView {
    /// `rst_…`
    id: String,
    /// The stream pushed.
    stream_id: String,
    /// `youtube`, `twitch`, `facebook` or `custom`.
    platform: String,
    /// Display name.
    name: String,
    /// Server URL with any credentials masked.
    #[schema(example = "rtmps://a.rtmps.youtube.com:443/live2")]
    url: String,
    /// The key's last four characters (`****abcd`); the key itself is never returned.
    key_hint: String,
    /// Whether it follows the stream (starts when the stream goes live).
    enabled: bool,
    /// It may push a private stream.
    allow_private_source: bool,
    /// `idle`, `starting`, `active`, `retrying`, `failed` or `stopped`.
    #[schema(example = "active")]
    state: String,
    /// The last failure, if any.
    last_error: Option<String>,
    /// Bytes sent to the destination in the current (or last) live session.
    bytes_out: u64,
    /// Outgoing bitrate over the last second, bits per second.
    bitrate_bps: u64,
    /// When pushing became active in the current (or last) live session (RFC 3339).
    started_at: Option<String>,
    /// Reconnections after failures in this live session.
    reconnect_count: u32,
    /// Consecutive failed attempts.
    failed_attempts: u32,
    /// Frames skipped because the destination was too slow (dropped to the next keyframe).
    frames_dropped: u64,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339.
    updated_at: String,
}

/// The statuses of destinations pushed by other nodes (cluster), for [`view`].
async fn remote_statuses(
    state: &ApiState,
    rows: &[RestreamRow],
) -> std::collections::HashMap<String, restream::Status> {
    let Some(cluster) = &state.cluster else {
        return Default::default();
    };
    let ids: Vec<&str> = rows
        .iter()
        .filter(|r| state.hub.published(&r.stream_id).is_none())
        .map(|r| r.id.as_str())
        .collect();
    cluster.restream_statuses(&ids).await
}

/// A destination as the API shows it; `remote` is its status on the node pushing it when
/// that is another node.
fn view(state: &ApiState, row: RestreamRow, remote: Option<&restream::Status>) -> RestreamView {
    let local = state.restreamer.as_ref().and_then(|r| r.status(&row.id));
    // Pushed from another node: its status, not what this node kept from an earlier session.
    let status = match remote {
        Some(r) if state.hub.published(&row.stream_id).is_none() => Some(r.clone()),
        _ => local,
    };
    let live = state.hub.get(&row.stream_id).is_some() || remote.is_some();
    let push_state = match &status {
        _ if !row.enabled => match &status {
            Some(s) if s.state == PushState::Failed => PushState::Failed,
            _ => PushState::Stopped,
        },
        Some(s) => s.state,
        None if live => PushState::Starting,
        None => PushState::Idle,
    };
    let s = status.as_ref();
    RestreamView {
        state: push_state.as_str().into(),
        last_error: s.and_then(|s| s.last_error.clone()),
        bytes_out: s.map_or(0, |s| s.bytes_out),
        bitrate_bps: s
            .filter(|s| s.state == PushState::Active)
            .map_or(0, |s| s.bitrate_bps),
        started_at: s
            .and_then(|s| s.started_at)
            .map(crate::proto::playlist::format_pdt),
        reconnect_count: s.map_or(0, |s| s.reconnects),
        failed_attempts: s.map_or(0, |s| s.attempts),
        frames_dropped: s.map_or(0, |s| s.frames_dropped),
        id: row.id,
        stream_id: row.stream_id,
        platform: row.platform,
        name: row.name,
        url: row.url_masked,
        key_hint: row.key_hint,
        enabled: row.enabled,
        allow_private_source: row.allow_private_source,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

/// Body of `POST /api/v1/streams/{id}/restreams`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRestream {
    /// `youtube`, `twitch`, `facebook` or `custom`.
    #[schema(example = "youtube")]
    platform: String,
    /// Server URL, `rtmp://` or `rtmps://` (≤ 2000). Required for `custom`; for a preset it
    /// overrides the platform's default ingest (e.g. a regional server).
    url: Option<String>,
    /// Stream key from the platform (≤ 500). For `custom` it may be empty when the URL ends
    /// with the stream name.
    key: Option<String>,
    /// Display name (≤ 100; default: the platform).
    name: Option<String>,
    /// Follow the stream (default true).
    enabled: Option<bool>,
    /// Required (true) to restream a private stream: a restream publishes the stream's media
    /// wherever it points, so `restreams:write` could otherwise copy a private stream out.
    allow_private_source: Option<bool>,
}

/// Body of `PATCH /api/v1/streams/{id}/restreams/{rid}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRestream {
    /// Enable (re-arms a `failed` destination) or disable (disconnects it).
    enabled: Option<bool>,
    /// New display name.
    name: Option<String>,
    /// New server URL (`rtmp://` / `rtmps://`).
    url: Option<String>,
    /// New stream key.
    key: Option<String>,
    /// Allow (or no longer allow) pushing a private stream.
    allow_private_source: Option<bool>,
}

/// Query of the list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListRestreams {
    /// Page size, 1-100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// Opaque cursor from `pagination.next_cursor`.
    cursor: Option<String>,
}

const MAX_URL: usize = 2000;
const MAX_KEY: usize = 500;
const MAX_NAME: usize = 100;

/// Checks a URL (scheme, host, path, length) and key together; reports into `v`.
fn check_destination_policy(v: &mut Validate, state: &ApiState, url: &str, key: &str) {
    if let Ok(t) = restream::parse_target(url, key) {
        if let Err(problem) = state.outbound.check_host(&t.host, t.port) {
            v.check(true, "url", &problem);
        }
    }
}

fn check_destination(v: &mut Validate, url: &str, key: &str) {
    v.check(
        url.chars().count() > MAX_URL,
        "url",
        "at most 2000 characters",
    );
    v.check(
        key.chars().count() > MAX_KEY,
        "key",
        "at most 500 characters",
    );
    v.check(
        key.chars().any(char::is_control),
        "key",
        "must not contain control characters",
    );
    if url.chars().count() <= MAX_URL {
        if let Err(problem) = restream::parse_target(url, key) {
            let field = if problem.contains("key") || problem.contains("stream name") {
                "key"
            } else {
                "url"
            };
            v.check(true, field, &problem);
        }
    }
}

async fn stream_exists(state: &ApiState, id: &str) -> Result<(), HttpError> {
    state
        .store
        .get_stream(id)
        .await
        .map_err(|e| HttpError::internal("reading a stream", e))?
        .map(|_| ())
        .ok_or_else(|| HttpError::not_found(format!("no stream {id}")))
}

fn store_err(context: &str, e: StoreError) -> HttpError {
    match e {
        StoreError::Conflict(m) => HttpError::conflict(m),
        other => HttpError::internal(context, other),
    }
}

/// Add a destination. It starts at once if the stream is live (and `enabled`), and whenever
/// the stream goes live from then on. The key is accepted here and never returned.
#[utoipa::path(post, path = "/api/v1/streams/{id}/restreams", tag = "restreams",
    params(("id" = String, Path, description = "Stream id")),
    request_body = CreateRestream,
    responses(
        (status = 201, body = RestreamView),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope), (status = 413, body = ErrorEnvelope),
        (status = 415, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["restreams:write"])))]
pub async fn create(
    auth: Auth,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CreateRestream>,
) -> Result<(StatusCode, Json<RestreamView>), HttpError> {
    auth.require("restreams:write")?;
    let mut v = Validate::default();
    v.check(
        !restream::PLATFORMS.contains(&body.platform.as_str()),
        "platform",
        "one of youtube, twitch, facebook, custom",
    );
    let preset = restream::preset_url(&body.platform);
    let url = match (&body.url, preset) {
        (Some(u), _) => u.trim().to_owned(),
        (None, Some(p)) => p.to_owned(),
        (None, None) => String::new(),
    };
    let key = body.key.clone().unwrap_or_default();
    if body.platform == "custom" && body.url.is_none() {
        v.check(true, "url", "required for platform custom");
    } else if preset.is_some() && key.is_empty() {
        v.check(
            true,
            "key",
            "required: the stream key from the platform's dashboard",
        );
    } else if restream::PLATFORMS.contains(&body.platform.as_str()) {
        check_destination(&mut v, &url, &key);
        check_destination_policy(&mut v, &state, &url, &key);
    }
    let name = body
        .name
        .as_deref()
        .map(str::trim)
        .unwrap_or(&body.platform)
        .to_owned();
    v.check(
        name.is_empty() || name.chars().count() > MAX_NAME,
        "name",
        "1-100 characters",
    );
    v.finish()?;
    let stream = state
        .store
        .get_stream(&id)
        .await
        .map_err(|e| HttpError::internal("reading a stream", e))?
        .ok_or_else(|| HttpError::not_found(format!("no stream {id}")))?;
    let allow_private_source = body.allow_private_source.unwrap_or(false);
    if stream.privacy == crate::store::Privacy::Private && !allow_private_source {
        let mut v = Validate::default();
        v.check(
            true,
            "allow_private_source",
            "the stream is private: a restream publishes its media at the destination; set allow_private_source to true to do so",
        );
        v.finish()?;
    }
    let row = state
        .store
        .create_restream(
            NewRestream {
                stream_id: id,
                platform: body.platform,
                name,
                url_masked: crate::redact::mask_destination(&url, &key),
                key_hint: restream::key_hint(&key),
                url,
                key,
                enabled: body.enabled.unwrap_or(true),
                allow_private_source,
            },
            state.config.restream.max_per_stream,
        )
        .await
        .map_err(|e| store_err("creating a restream", e))?;
    tracing::info!(restream = %row.id, stream = %row.stream_id, url = %row.url_masked, "restream destination added");
    let control = crate::cluster::Control::Restream {
        stream: row.stream_id.clone(),
        restream: row.id.clone(),
        restart: false,
        enable: false,
    };
    if super::tell_owner(&state, control).await == super::OnOwner::Here {
        if let Some(r) = &state.restreamer {
            r.apply(row.clone(), false);
        }
    }
    Ok((StatusCode::CREATED, Json(view(&state, row, None))))
}

/// A stream's destinations with their states, oldest first.
#[utoipa::path(get, path = "/api/v1/streams/{id}/restreams", tag = "restreams",
    params(("id" = String, Path, description = "Stream id"), ListRestreams),
    responses(
        (status = 200, body = Page<RestreamView>),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["streams:read"])))]
pub async fn list(
    auth: Auth,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ListRestreams>,
) -> Result<Json<Page<RestreamView>>, HttpError> {
    auth.require("streams:read")?;
    let (limit, cursor) = page_args(q.limit, q.cursor.as_deref())?;
    stream_exists(&state, &id).await?;
    let (rows, next) = state
        .store
        .list_restreams(&id, limit, cursor)
        .await
        .map_err(|e| store_err("listing restreams", e))?;
    let remote = remote_statuses(&state, &rows).await;
    Ok(Json(Page {
        data: rows
            .into_iter()
            .map(|r| {
                let st = remote.get(&r.id).cloned();
                view(&state, r, st.as_ref())
            })
            .collect(),
        pagination: Pagination::from_cursor(next),
    }))
}

async fn load(state: &ApiState, id: &str, rid: &str) -> Result<RestreamRow, HttpError> {
    state
        .store
        .get_restream(id, rid)
        .await
        .map_err(|e| store_err("reading a restream", e))?
        .ok_or_else(|| HttpError::not_found(format!("no restream {rid} on stream {id}")))
}

/// One destination with its state, bytes sent, bitrate and last error.
#[utoipa::path(get, path = "/api/v1/streams/{id}/restreams/{rid}", tag = "restreams",
    params(("id" = String, Path, description = "Stream id"),
           ("rid" = String, Path, description = "Restream id")),
    responses(
        (status = 200, body = RestreamView),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["streams:read"])))]
pub async fn get_one(
    auth: Auth,
    State(state): State<ApiState>,
    Path((id, rid)): Path<(String, String)>,
) -> Result<Json<RestreamView>, HttpError> {
    auth.require("streams:read")?;
    let row = load(&state, &id, &rid).await?;
    let remote = remote_statuses(&state, std::slice::from_ref(&row)).await;
    let st = remote.get(&row.id).cloned();
    Ok(Json(view(&state, row, st.as_ref())))
}

/// Enable or disable a destination (disabling disconnects it; enabling re-arms a `failed`
/// one and connects at once if the stream is live), rename it, or give it a new URL or key.
#[utoipa::path(patch, path = "/api/v1/streams/{id}/restreams/{rid}", tag = "restreams",
    params(("id" = String, Path, description = "Stream id"),
           ("rid" = String, Path, description = "Restream id")),
    request_body = UpdateRestream,
    responses(
        (status = 200, body = RestreamView),
        (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope), (status = 415, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["restreams:write"])))]
pub async fn update(
    auth: Auth,
    State(state): State<ApiState>,
    Path((id, rid)): Path<(String, String)>,
    ApiJson(body): ApiJson<UpdateRestream>,
) -> Result<Json<RestreamView>, HttpError> {
    auth.require("restreams:write")?;
    let mut v = Validate::default();
    let name = body.name.as_deref().map(str::trim).map(str::to_owned);
    if let Some(n) = &name {
        v.check(
            n.is_empty() || n.chars().count() > MAX_NAME,
            "name",
            "1-100 characters",
        );
    }
    v.finish()?;
    let current = load(&state, &id, &rid).await?;
    let url = body.url.as_deref().map(str::trim).map(str::to_owned);
    let changes_target = url.is_some() || body.key.is_some();
    if changes_target {
        let mut v = Validate::default();
        let (u, k) = (
            url.as_deref().unwrap_or(&current.url),
            body.key.as_deref().unwrap_or(&current.key),
        );
        check_destination(&mut v, u, k);
        check_destination_policy(&mut v, &state, u, k);
        v.finish()?;
    }
    let patch = RestreamPatch {
        name,
        enabled: body.enabled,
        url: url.map(|u| (u.clone(), restream::mask_url(&u))),
        key: body.key.map(|k| (k.clone(), restream::key_hint(&k))),
        allow_private_source: body.allow_private_source,
    };
    let row = state
        .store
        .update_restream(&id, &rid, patch)
        .await
        .map_err(|e| store_err("updating a restream", e))?
        .ok_or_else(|| HttpError::not_found(format!("no restream {rid} on stream {id}")))?;
    // A new target, or enabling again (a failed destination is re-armed), restarts it.
    let restart = changes_target || (body.enabled == Some(true) && !current.enabled);
    let control = crate::cluster::Control::Restream {
        stream: row.stream_id.clone(),
        restream: row.id.clone(),
        restart,
        enable: body.enabled == Some(true),
    };
    if super::tell_owner(&state, control).await == super::OnOwner::Here {
        if let Some(r) = &state.restreamer {
            let rearm = body.enabled == Some(true)
                && r.status(&rid).is_some_and(|s| s.state == PushState::Failed);
            r.apply(row.clone(), restart || rearm);
        }
    }
    Ok(Json(view(&state, row, None)))
}

/// Remove a destination (disconnecting it if it is pushing).
#[utoipa::path(delete, path = "/api/v1/streams/{id}/restreams/{rid}", tag = "restreams",
    params(("id" = String, Path, description = "Stream id"),
           ("rid" = String, Path, description = "Restream id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 429, body = ErrorEnvelope),
    ),
    security(("bearer" = ["restreams:write"])))]
pub async fn delete(
    auth: Auth,
    State(state): State<ApiState>,
    Path((id, rid)): Path<(String, String)>,
) -> Result<StatusCode, HttpError> {
    auth.require("restreams:write")?;
    let deleted = state
        .store
        .delete_restream(&id, &rid)
        .await
        .map_err(|e| store_err("deleting a restream", e))?;
    if !deleted {
        return Err(HttpError::not_found(format!(
            "no restream {rid} on stream {id}"
        )));
    }
    if let Some(r) = &state.restreamer {
        r.stop(&rid, true);
    }
    let control = crate::cluster::Control::RestreamStop {
        stream: id.clone(),
        restream: rid.clone(),
    };
    super::tell_owner(&state, control).await;
    tracing::info!(restream = %rid, stream = %id, "restream destination deleted");
    Ok(StatusCode::NO_CONTENT)
}
