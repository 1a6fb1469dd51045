//! `GET /api/v1/nodes` (scope `stats:read`): the nodes serving this service, with their load
//! and version. On a single node: this node alone.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiState, Auth};
use crate::error::{ErrorEnvelope, HttpError};

/// One node.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeView {
    /// Node id (`[cluster] node_id`, or the host name).
    id: String,
    /// Where the other nodes reach it (cluster mode).
    url: Option<String>,
    /// Server version.
    version: String,
    /// When it started (RFC 3339).
    started_at: String,
    /// Streams whose publisher it holds.
    streams: u64,
    /// Streams it relays from their owners for its own viewers.
    relayed_streams: u64,
    /// Its viewers, every protocol.
    viewers: u64,
    /// Bytes sent per second (last 10 s).
    bytes_out_per_sec: u64,
    /// Bytes received per second (last 10 s).
    bytes_in_per_sec: u64,
    /// CPU used, percent of one core (last second; `null` where unknown).
    cpu_percent: Option<f64>,
    /// When it last reported (RFC 3339).
    updated_at: String,
    /// Whether this is the node that answered.
    this_node: bool,
}

/// The list.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    /// Every live node, by id.
    data: Vec<NodeView>,
    /// Whether the server runs as a cluster.
    cluster: bool,
}

/// The nodes serving this service, with their load.
#[utoipa::path(get, path = "/api/v1/nodes", tag = "stats",
    responses(
        (status = 200, body = NodeList),
        (status = 401, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 429, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope),
    ),
    security(("bearer" = ["stats:read"])))]
pub async fn list(auth: Auth, State(state): State<ApiState>) -> Result<Json<NodeList>, HttpError> {
    auth.require("stats:read")?;
    let Some(cluster) = &state.cluster else {
        let live = state.hub.live_streams();
        let rates = state.hub.rates();
        let started = std::time::SystemTime::now() - state.started.elapsed();
        return Ok(Json(NodeList {
            cluster: false,
            data: vec![NodeView {
                id: state.config.cluster.node_name(),
                url: None,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                started_at: crate::proto::playlist::format_pdt(started),
                streams: live.len() as u64,
                relayed_streams: 0,
                viewers: live.iter().map(|s| s.viewer_count() as u64).sum(),
                bytes_out_per_sec: rates.out_bps_10s / 8,
                bytes_in_per_sec: rates.in_bps_10s / 8,
                cpu_percent: None,
                updated_at: crate::store::now_rfc3339(),
                this_node: true,
            }],
        }));
    };
    let nodes = cluster.nodes().await.map_err(|err| {
        tracing::warn!(%err, "listing nodes");
        HttpError::unavailable("the cluster registry (Redis) is unreachable; retry in a moment")
    })?;
    Ok(Json(NodeList {
        cluster: true,
        data: nodes
            .into_iter()
            .map(|n| NodeView {
                this_node: n.id == cluster.id(),
                id: n.id,
                url: Some(n.url),
                version: n.version,
                started_at: n.started_at,
                streams: n.streams,
                relayed_streams: n.relayed_streams,
                viewers: n.viewers,
                bytes_out_per_sec: n.bytes_out_per_sec,
                bytes_in_per_sec: n.bytes_in_per_sec,
                cpu_percent: n.cpu_percent,
                updated_at: n.updated_at,
            })
            .collect(),
    }))
}
