//! `GET /api/v1/stats` (scope `stats:read`): uptime, live streams, publishers per protocol,
//! viewers and traffic totals.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiState, Auth};
use crate::error::{ErrorEnvelope, HttpError};

/// Server-wide numbers.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerStats {
    /// Seconds since start.
    uptime_seconds: u64,
    /// Server version.
    version: String,
    /// Streams in the database.
    streams_total: i64,
    /// Streams with a publisher on this server now.
    live_streams: u64,
    /// Live publishers per ingest protocol.
    publishers_by_protocol: BTreeMap<String, u64>,
    /// Viewers across all streams now.
    total_viewers: u64,
    /// Viewers across all streams by protocol (`hls` sessions, `rtmp`, `whep`, `mjpeg`).
    viewers_by_protocol: BTreeMap<String, u64>,
    /// Server-wide in/out bitrates over the last 1 and 10 seconds.
    bandwidth: crate::hub::Rates,
    /// Media bytes received since start.
    bytes_in: u64,
    /// Bytes sent to viewers since start.
    bytes_out: u64,
    /// The whole cluster (cluster mode; `null` on a single server, where the numbers above
    /// are the whole service): sums over every live node, as of their last heartbeat.
    cluster: Option<ClusterStats>,
}

/// Sums over the cluster's nodes.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterStats {
    /// Live nodes.
    nodes: u64,
    /// Streams with a publisher on some node.
    live_streams: u64,
    /// Viewers on every node.
    total_viewers: u64,
    /// Bytes sent per second by every node (last 10 s).
    bytes_out_per_sec: u64,
    /// Bytes received per second by every node (last 10 s).
    bytes_in_per_sec: u64,
}

/// Server statistics.
#[utoipa::path(get, path = "/api/v1/stats", tag = "stats",
    responses(
        (status = 200, body = ServerStats),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope),
    ),
    security(("bearer" = ["stats:read"])))]
pub async fn get(
    auth: Auth,
    State(state): State<ApiState>,
) -> Result<Json<ServerStats>, HttpError> {
    auth.require("stats:read")?;
    let live = state.hub.live_streams();
    let mut publishers_by_protocol = BTreeMap::new();
    let mut total_viewers = 0;
    let mut viewers_by_protocol: BTreeMap<String, u64> = crate::hub::VIEWER_PROTOCOLS
        .iter()
        .map(|p| ((*p).to_owned(), 0))
        .collect();
    for s in &live {
        // A relay of a stream published on another node is no publisher of this one (its
        // viewers here are this node's).
        if !s.is_relay() {
            *publishers_by_protocol
                .entry(s.protocol.to_owned())
                .or_insert(0) += 1;
        }
        let snap = s.snapshot();
        total_viewers += snap.viewers as u64;
        for (p, n) in &snap.viewers_by_protocol {
            *viewers_by_protocol.entry((*p).to_owned()).or_default() += *n as u64;
        }
    }
    let (bytes_in, bytes_out) = state.hub.traffic_totals();
    let streams_total = state
        .store
        .count_streams()
        .await
        .map_err(|e| HttpError::internal("counting streams", e))?;
    let cluster = match &state.cluster {
        None => None,
        Some(c) => match c.nodes().await {
            Ok(nodes) => Some(ClusterStats {
                nodes: nodes.len() as u64,
                live_streams: nodes.iter().map(|n| n.streams).sum(),
                total_viewers: nodes.iter().map(|n| n.viewers).sum(),
                bytes_out_per_sec: nodes.iter().map(|n| n.bytes_out_per_sec).sum(),
                bytes_in_per_sec: nodes.iter().map(|n| n.bytes_in_per_sec).sum(),
            }),
            Err(err) => {
                tracing::warn!(%err, "cluster stats unavailable");
                return Err(HttpError::unavailable(
                    "the cluster registry (Redis) is unreachable; retry in a moment",
                ));
            }
        },
    };
    Ok(Json(ServerStats {
        cluster,
        uptime_seconds: state.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION").into(),
        streams_total,
        live_streams: live.iter().filter(|s| !s.is_relay()).count() as u64,
        publishers_by_protocol,
        total_viewers,
        viewers_by_protocol,
        bandwidth: state.hub.rates(),
        bytes_in,
        bytes_out,
    }))
}
