//! This node's part in the cluster: it claims the streams its publishers push (leases with
//! a fencing epoch, renewed while they publish), announces itself and its load in Redis
//! (the node registry), publishes its viewer counts for the others to sum, takes control
//! messages addressed to it (stop a stream it owns), and relays streams owned elsewhere
//! into its hub when its viewers want them ([`super::relay`]).
//!
//! Redis keys (under `{prefix}`): `nodes` (a set of node ids), `node:{id}` (its JSON, with a
//! TTL a few heartbeats long), `viewers:{stream}:{node}` (a count, same TTL),
//! `stream:{id}:owner` / `stream:{id}:epoch` (the lease), channel `ctl:{node}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::lease::{Claim, Lease, Leases};
use super::ClusterError;
use crate::config::ClusterConfig;
use crate::hub::{BoxFuture, Hub, HubError, LiveStream, Ownership};
use crate::store::Store;

/// How often a node announces itself and its viewer counts.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node (and its viewer counts) is forgotten this long after its last heartbeat.
const NODE_TTL: Duration = Duration::from_secs(5);

/// What the registry holds about a node (`GET /api/v1/nodes`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    /// Its node id.
    pub id: String,
    /// Where the other nodes reach it.
    pub url: String,
    /// The server's version.
    pub version: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Streams whose publisher it holds.
    pub streams: u64,
    /// Streams it relays from their owners for its viewers.
    pub relayed_streams: u64,
    /// Its viewers, every protocol.
    pub viewers: u64,
    /// Bytes it sends per second (last 10 s).
    pub bytes_out_per_sec: u64,
    /// Bytes it receives per second (last 10 s).
    pub bytes_in_per_sec: u64,
    /// CPU time it used over the last heartbeat, percent of one core.
    pub cpu_percent: Option<f64>,
    /// When this was written (RFC 3339).
    pub updated_at: String,
}

/// This node in the cluster.
pub struct ClusterNode {
    pub(crate) node: String,
    pub(crate) advertise_url: String,
    pub(crate) prefix: String,
    pub(crate) secret: Vec<u8>,
    pub(crate) linger: Duration,
    redis_url: String,
    leases: Leases,
    conn: ConnectionManager,
    timeout: Duration,
    renew_every: Duration,
    /// How long a dead node's lease holds its streams.
    lease_ttl: Duration,
    store: Store,
    started_at: String,
    /// Relays this node serves, per stream (owner side).
    pub(crate) relays_out: Mutex<HashMap<String, usize>>,
    /// One fetch at a time per stream (viewer side): many viewers arriving at once open one
    /// relay.
    pub(crate) fetching: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    /// This node's LL-HLS: owners send their packaging to relays, relays copy it into it.
    pub(crate) hls: std::sync::OnceLock<Arc<crate::egress::hls::HlsRegistry>>,
    /// This node's recorders and restream pushers, driven by [`Control`] messages for the
    /// streams it owns.
    outputs: std::sync::OnceLock<Outputs>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// The hub, for the control channel and the heartbeat.
    hub: Hub,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("node", &self.node)
            .field("advertise_url", &self.advertise_url)
            .finish_non_exhaustive()
    }
}

impl ClusterNode {
    /// Gives the node this node's LL-HLS (set once at start, before any relay).
    pub fn set_hls(&self, hls: Arc<crate::egress::hls::HlsRegistry>) {
        hls.set_failover_allowance(self.lease_ttl);
        let _ = self.hls.set(hls);
    }

    /// Gives the node this node's recorders and restream pushers (set once at start).
    pub fn set_outputs(
        &self,
        recorders: Arc<crate::egress::record::Recorders>,
        restreamer: Arc<crate::egress::restream::Restreamer>,
    ) {
        let _ = self.outputs.set(Outputs {
            recorders,
            restreamer,
        });
    }

    /// Connects to Redis and joins `hub` to the cluster (claims and relays go through this
    /// node from now on). Fails when Redis cannot be reached at start.
    pub async fn join(
        cfg: &ClusterConfig,
        store: Store,
        hub: Hub,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<ClusterNode>, ClusterError> {
        let node = cfg.node_name();
        let timeout = Duration::from_millis(cfg.lease_renew_ms.clamp(200, 2000));
        let leases = Leases::connect(
            &cfg.redis_url,
            &cfg.redis_prefix,
            &node,
            Duration::from_millis(cfg.lease_ttl_ms),
            timeout,
        )
        .await?;
        let this = Arc::new(ClusterNode {
            conn: leases.connection(),
            leases,
            node,
            advertise_url: cfg.advertise_url.trim_end_matches('/').to_owned(),
            prefix: cfg.redis_prefix.clone(),
            secret: cfg.secret.as_bytes().to_vec(),
            linger: Duration::from_millis(cfg.relay_linger_ms),
            redis_url: cfg.redis_url.clone(),
            timeout,
            renew_every: Duration::from_millis(cfg.lease_renew_ms),
            lease_ttl: Duration::from_millis(cfg.lease_ttl_ms),
            store,
            started_at: crate::store::now_rfc3339(),
            relays_out: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
            hls: std::sync::OnceLock::new(),
            outputs: std::sync::OnceLock::new(),
            shutdown,
            hub: hub.clone(),
        });
        hub.set_cluster(Arc::new(Handle(this.clone())));
        Ok(this)
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.node
    }

    /// Relays this node serves for `stream_id` now (one per remote node watching it).
    pub fn relays_out(&self, stream_id: &str) -> usize {
        lock(&self.relays_out).get(stream_id).copied().unwrap_or(0)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, ClusterError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ClusterError::Timeout(self.timeout.as_millis() as u64)),
        }
    }

    /// The node that holds `stream_id`'s publisher, if any.
    pub async fn owner(&self, stream_id: &str) -> Result<Option<String>, ClusterError> {
        self.leases.owner(stream_id).await
    }

    /// Every node that sent a heartbeat recently, by id.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClusterError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = self
            .bounded(
                redis::cmd("SMEMBERS")
                    .arg(self.key("nodes"))
                    .query_async(&mut conn),
            )
            .await?;
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.key(&format!("node:{id}")))
            .collect();
        let values: Vec<Option<String>> = self
            .bounded(redis::cmd("MGET").arg(&keys).query_async(&mut conn))
            .await?;
        let mut out = vec![];
        let mut gone = vec![];
        for (id, v) in ids.iter().zip(values) {
            match v.and_then(|v| serde_json::from_str::<NodeInfo>(&v).ok()) {
                Some(info) => out.push(info),
                None => gone.push(id.clone()),
            }
        }
        if !gone.is_empty() {
            let _: Result<i64, _> = self
                .bounded(
                    redis::cmd("SREM")
                        .arg(self.key("nodes"))
                        .arg(&gone)
                        .query_async(&mut conn),
                )
                .await;
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Viewers and traffic of each stream summed over every live node but `except` (the
    /// caller counts its own, which is fresher).
    pub async fn viewers(
        &self,
        stream_ids: &[&str],
        except: &str,
    ) -> Result<Vec<StreamLoad>, ClusterError> {
        if stream_ids.is_empty() {
            return Ok(vec![]);
        }
        let mut conn = self.conn.clone();
        let nodes: Vec<String> = self
            .bounded(
                redis::cmd("SMEMBERS")
                    .arg(self.key("nodes"))
                    .query_async(&mut conn),
            )
            .await?;
        let nodes: Vec<String> = nodes.into_iter().filter(|n| n != except).collect();
        if nodes.is_empty() {
            return Ok(vec![StreamLoad::default(); stream_ids.len()]);
        }
        let keys: Vec<String> = stream_ids
            .iter()
            .flat_map(|s| {
                nodes
                    .iter()
                    .map(move |n| self.key(&format!("viewers:{s}:{n}")))
            })
            .collect();
        let values: Vec<Option<String>> = self
            .bounded(redis::cmd("MGET").arg(&keys).query_async(&mut conn))
            .await?;
        Ok(values
            .chunks(nodes.len())
            .map(|c| {
                c.iter()
                    .flatten()
                    .map(|v| StreamLoad::decode(v))
                    .fold(StreamLoad::default(), StreamLoad::plus)
            })
            .collect())
    }

    /// Counts one request under `key` (a rate-limit window shared by every node); the count
    /// so far. The counter expires `ttl_secs` after its first request.
    pub async fn count_request(&self, key: &str, ttl_secs: u64) -> Result<u64, ClusterError> {
        const COUNT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
";
        let mut conn = self.conn.clone();
        let script = redis::Script::new(COUNT);
        let mut call = script.key(self.key(&format!("rl:{key}")));
        call.arg(ttl_secs);
        let n: i64 = self.bounded(call.invoke_async(&mut conn)).await?;
        Ok(n.max(0) as u64)
    }

    /// Asks the node that owns `stream_id` to disconnect its publisher; `false` when no node
    /// owns it or the owner did not get the message.
    pub async fn stop_remote(&self, stream_id: &str) -> Result<bool, ClusterError> {
        self.send_control(&Control::Stop {
            stream: stream_id.to_owned(),
        })
        .await
    }

    /// The statuses other nodes report for restream destinations they push (those of
    /// `ids` that some node pushes). Redis away: none.
    pub async fn restream_statuses(
        &self,
        ids: &[&str],
    ) -> HashMap<String, crate::egress::restream::Status> {
        if ids.is_empty() {
            return HashMap::new();
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.key(&format!("restream:{id}")))
            .collect();
        let mut conn = self.conn.clone();
        let values: Vec<Option<String>> = match self
            .bounded(redis::cmd("MGET").arg(&keys).query_async(&mut conn))
            .await
        {
            Ok(v) => v,
            Err(err) => {
                tracing::warn!(%err, "cluster: restream states of other nodes unavailable");
                return HashMap::new();
            }
        };
        ids.iter()
            .zip(values)
            .filter_map(|(id, v)| Some(((*id).to_owned(), serde_json::from_str(&v?).ok()?)))
            .collect()
    }

    /// Sends `control` to the node that owns its stream; `Ok(false)` when no other node
    /// publishes it.
    pub async fn send_control(&self, control: &Control) -> Result<bool, ClusterError> {
        let Some(owner) = self.owner(control.stream()).await? else {
            return Ok(false);
        };
        if owner == self.node {
            return Ok(false);
        }
        let msg = serde_json::to_string(control).unwrap_or_default();
        let mut conn = self.conn.clone();
        let receivers: i64 = self
            .bounded(
                redis::cmd("PUBLISH")
                    .arg(self.key(&format!("ctl:{owner}")))
                    .arg(msg)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(receivers > 0)
    }

    /// The address another node announced.
    pub(crate) async fn node_url(&self, node: &str) -> Result<Option<String>, ClusterError> {
        let mut conn = self.conn.clone();
        let v: Option<String> = self
            .bounded(
                redis::cmd("GET")
                    .arg(self.key(&format!("node:{node}")))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(v.and_then(|v| serde_json::from_str::<NodeInfo>(&v).ok())
            .map(|i| i.url))
    }

    /// Starts the heartbeat (registry and viewer counts), the control channel and the
    /// janitor; `events` announces the streams the janitor ends.
    pub fn spawn(self: &Arc<Self>, events: crate::events::EventBus) -> Vec<JoinHandle<()>> {
        vec![
            tokio::spawn(self.clone().heartbeat()),
            tokio::spawn(self.clone().control()),
            tokio::spawn(self.clone().janitor(events)),
        ]
    }

    /// Ends the streams a dead node left live in the database: stored as live, with no
    /// lease in Redis and the owner gone from the node registry, on two passes in a row (a
    /// Redis that restarted empty gets its heartbeats and leases back within a pass). One
    /// node wins each (a fenced update) and announces `stream.ended`.
    async fn janitor(self: Arc<Self>, events: crate::events::EventBus) {
        let mut shutdown = self.shutdown.clone();
        let every = self.renew_every.max(Duration::from_secs(1));
        let mut suspects: std::collections::HashSet<(String, u64)> = Default::default();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = crate::shutdown::requested(&mut shutdown) => return,
            }
            let Ok(rows) = self.store.live_stream_owners().await else {
                continue;
            };
            let Ok(nodes) = self.nodes().await else {
                continue;
            };
            let mut now_suspect = std::collections::HashSet::new();
            for (id, owner, epoch, protocol) in rows {
                let alive = nodes.iter().any(|n| n.id == owner)
                    || (owner == self.node && self.hub.published(&id).is_some());
                if alive {
                    continue;
                }
                match self.owner(&id).await {
                    Ok(None) => {}
                    _ => continue, // held (or Redis cannot tell)
                }
                let key = (id.clone(), epoch);
                if suspects.contains(&key) {
                    if let Ok(true) = self.store.end_abandoned_stream(&id, &owner, epoch).await {
                        tracing::warn!(stream = %id, node = %owner, "cluster: the stream's node is gone; marked ended");
                        events.publish(
                            "stream.ended",
                            serde_json::json!({ "stream": { "id": id, "protocol": protocol } }),
                        );
                    }
                } else {
                    now_suspect.insert(key);
                }
            }
            suspects = now_suspect;
        }
    }

    fn info(&self, cpu: &mut CpuMeter) -> NodeInfo {
        let live = self.hub.live_streams();
        let mut streams = 0;
        let mut relayed = 0;
        let mut viewers = 0;
        for s in &live {
            if s.is_relay() {
                relayed += 1;
            } else {
                streams += 1;
            }
            viewers += s.viewer_count() as u64;
        }
        let rates = self.hub.rates();
        NodeInfo {
            id: self.node.clone(),
            url: self.advertise_url.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: self.started_at.clone(),
            streams,
            relayed_streams: relayed,
            viewers,
            bytes_out_per_sec: rates.out_bps_10s / 8,
            bytes_in_per_sec: rates.in_bps_10s / 8,
            cpu_percent: cpu.sample(),
            updated_at: crate::store::now_rfc3339(),
        }
    }

    async fn heartbeat(self: Arc<Self>) {
        let mut shutdown = self.shutdown.clone();
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut cpu = CpuMeter::default();
        let ttl = NODE_TTL.as_millis() as u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = crate::shutdown::requested(&mut shutdown) => break,
            }
            let info = self.info(&mut cpu);
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(self.key(&format!("node:{}", self.node)))
                .arg(serde_json::to_string(&info).unwrap_or_default())
                .arg("PX")
                .arg(ttl)
                .ignore()
                .cmd("SADD")
                .arg(self.key("nodes"))
                .arg(&self.node)
                .ignore();
            for s in self.hub.live_streams() {
                pipe.cmd("SET")
                    .arg(self.key(&format!("viewers:{}:{}", s.id, self.node)))
                    .arg(StreamLoad::of(&s).encode())
                    .arg("PX")
                    .arg(ttl)
                    .ignore();
                // Where the owner's LL-HLS stands: a node that takes the stream over within
                // the grace period continues the playlist (same run, later msns).
                let continuation = self
                    .hls
                    .get()
                    .filter(|_| !s.is_relay())
                    .and_then(|h| Some((h.continuation(&s.id)?, h.grace())));
                if let Some((seed, grace)) = continuation {
                    // Kept as long as the copies wait (the grace period includes the lease TTL).
                    pipe.cmd("SET")
                        .arg(self.key(&format!("hls:{}", s.id)))
                        .arg(serde_json::to_string(&seed).unwrap_or_default())
                        .arg("PX")
                        .arg((grace.as_millis() as u64).max(1000))
                        .ignore();
                }
            }
            // Restream pushers run on the owner; every node's API shows their state.
            for (rid, status) in self
                .outputs
                .get()
                .map(|o| o.restreamer.running_statuses())
                .unwrap_or_default()
            {
                pipe.cmd("SET")
                    .arg(self.key(&format!("restream:{rid}")))
                    .arg(serde_json::to_string(&status).unwrap_or_default())
                    .arg("PX")
                    .arg(ttl)
                    .ignore();
            }
            let mut conn = self.conn.clone();
            if let Err(err) = self.bounded(pipe.query_async::<()>(&mut conn)).await {
                tracing::warn!(%err, "cluster: heartbeat not written");
            }
        }
        // Leaving: the others stop counting on this node at once.
        let mut conn = self.conn.clone();
        let _: Result<(), _> = self
            .bounded(
                redis::pipe()
                    .cmd("DEL")
                    .arg(self.key(&format!("node:{}", self.node)))
                    .ignore()
                    .cmd("SREM")
                    .arg(self.key("nodes"))
                    .arg(&self.node)
                    .ignore()
                    .query_async::<()>(&mut conn),
            )
            .await;
    }

    /// Control messages addressed to this node (`ctl:{node}`), over Redis pub/sub; the
    /// subscription is made again whenever Redis comes back.
    async fn control(self: Arc<Self>) {
        use futures_util::StreamExt;
        let mut shutdown = self.shutdown.clone();
        let channel = self.key(&format!("ctl:{}", self.node));
        loop {
            let session = async {
                let client = redis::Client::open(self.redis_url.as_str())?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    let Ok(text) = msg.get_payload::<String>() else {
                        continue;
                    };
                    self.on_control(&text);
                }
                Ok::<(), redis::RedisError>(())
            };
            tokio::select! {
                r = session => {
                    if let Err(err) = r {
                        tracing::warn!(%err, "cluster: control channel lost; resubscribing");
                    }
                }
                _ = crate::shutdown::requested(&mut shutdown) => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = crate::shutdown::requested(&mut shutdown) => return,
            }
        }
    }

    fn on_control(&self, text: &str) {
        let Ok(control) = serde_json::from_str::<Control>(text) else {
            tracing::warn!("cluster: unreadable control message ignored");
            return;
        };
        let stream = control.stream().to_owned();
        let Some(live) = self.hub.published(&stream) else {
            return; // The publisher left meanwhile.
        };
        tracing::info!(stream = %stream, ?control, "cluster: control message from another node");
        let Some(outputs) = self.outputs.get() else {
            if matches!(control, Control::Stop { .. }) {
                live.stop();
            }
            return;
        };
        match control {
            Control::Stop { .. } => live.stop(),
            Control::RecordStart { .. } => {
                outputs.recorders.start(live);
            }
            Control::RecordStop { .. } => {
                outputs.recorders.stop(&stream);
            }
            Control::Restream {
                restream,
                restart,
                enable,
                ..
            } => {
                let (store, restreamer) = (self.store.clone(), outputs.restreamer.clone());
                tokio::spawn(async move {
                    match store.get_restream(&stream, &restream).await {
                        Ok(Some(row)) => {
                            let rearm = enable
                                && restreamer.status(&restream).is_some_and(|s| {
                                    s.state == crate::egress::restream::State::Failed
                                });
                            restreamer.apply(row, restart || rearm);
                        }
                        Ok(None) => restreamer.stop(&restream, true),
                        Err(err) => {
                            tracing::warn!(%err, restream = %restream, "cluster: restream change not applied");
                        }
                    }
                });
            }
            Control::RestreamStop { restream, .. } => outputs.restreamer.stop(&restream, true),
            Control::Privacy { .. } => outputs.restreamer.enforce_privacy(&stream),
        }
    }

    async fn claim(self: Arc<Self>, stream_id: &str) -> Result<Box<dyn Ownership>, HubError> {
        // The epoch PostgreSQL holds floors Redis's (a Redis that lost its data must not
        // hand out an old epoch again); unreadable: Redis's own counter still rises.
        let floor = match self.store.stream_owner_epoch(stream_id).await {
            Ok(e) => e,
            Err(err) => {
                tracing::warn!(stream = stream_id, %err, "cluster: stored epoch unreadable");
                0
            }
        };
        match self.leases.claim(stream_id, floor).await {
            Ok(Claim::Won(lease)) => {
                tracing::info!(
                    stream = stream_id,
                    epoch = lease.epoch,
                    "cluster: stream claimed"
                );
                self.offer_hls_seed(stream_id).await;
                Ok(Box::new(Claimed {
                    node: self.clone(),
                    lease: Arc::new(Mutex::new(lease)),
                    renewer: Mutex::new(None),
                }))
            }
            Ok(Claim::Held(node)) => Err(HubError::OwnedElsewhere(node)),
            Err(err) => Err(HubError::Unavailable(err.to_string())),
        }
    }
}

impl ClusterNode {
    /// Where the previous owner's LL-HLS of a stream stood, if it was packaged recently: the
    /// playlist this node starts continues it (past one more msn: the seed is written once a
    /// heartbeat, and the previous owner may have opened one since).
    async fn offer_hls_seed(&self, stream_id: &str) {
        let Some(hls) = self.hls.get() else {
            return;
        };
        let mut conn = self.conn.clone();
        let key = self.key(&format!("hls:{stream_id}"));
        let got: Result<Option<String>, _> = self
            .bounded(redis::cmd("GET").arg(&key).query_async(&mut conn))
            .await;
        let seed = got
            .ok()
            .flatten()
            .and_then(|text| serde_json::from_str::<crate::proto::relay::HlsSeed>(&text).ok());
        if let Some(seed) = seed {
            hls.offer_seed(stream_id, seed);
        }
    }
}

/// This node's outputs that only a stream's owner runs.
struct Outputs {
    recorders: Arc<crate::egress::record::Recorders>,
    restreamer: Arc<crate::egress::restream::Restreamer>,
}

/// An action on a live stream that only the node owning it takes, sent over Redis pub/sub
/// (`ctl:{node}`) by the node whose API was called.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Control {
    /// Disconnect the publisher.
    Stop {
        /// The stream.
        stream: String,
    },
    /// Start recording.
    RecordStart {
        /// The stream.
        stream: String,
    },
    /// Stop recording.
    RecordStop {
        /// The stream.
        stream: String,
    },
    /// A restream destination was added or changed: read it and apply it.
    Restream {
        /// The stream.
        stream: String,
        /// The destination.
        restream: String,
        /// Its target changed or it was enabled again: reconnect.
        restart: bool,
        /// It was enabled by this change (a failed destination is re-armed).
        enable: bool,
    },
    /// A restream destination was deleted.
    RestreamStop {
        /// The stream.
        stream: String,
        /// The destination.
        restream: String,
    },
    /// The stream became private: destinations that may not push it stop.
    Privacy {
        /// The stream.
        stream: String,
    },
}

impl Control {
    /// The stream it acts on.
    pub fn stream(&self) -> &str {
        match self {
            Control::Stop { stream }
            | Control::RecordStart { stream }
            | Control::RecordStop { stream }
            | Control::Restream { stream, .. }
            | Control::RestreamStop { stream, .. }
            | Control::Privacy { stream } => stream,
        }
    }
}

/// One node's share of a live stream, as its heartbeat reports it (`viewers:{stream}:{node}`,
/// space-separated numbers).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamLoad {
    /// Viewers on the node.
    pub viewers: u64,
    /// Bits per second sent to the node's viewers and outputs, last 1 and 10 seconds.
    pub out_bps_1s: u64,
    /// See `out_bps_1s`.
    pub out_bps_10s: u64,
    /// Bytes sent in the node's session of the stream.
    pub bytes_out: u64,
}

impl StreamLoad {
    fn of(s: &LiveStream) -> StreamLoad {
        let snap = s.snapshot();
        StreamLoad {
            viewers: s.viewer_count() as u64,
            out_bps_1s: snap.rates.out_bps_1s,
            out_bps_10s: snap.rates.out_bps_10s,
            bytes_out: snap.bytes_out,
        }
    }

    fn encode(&self) -> String {
        format!(
            "{} {} {} {}",
            self.viewers, self.out_bps_1s, self.out_bps_10s, self.bytes_out
        )
    }

    /// Reads what [`StreamLoad::encode`] wrote; a missing or unreadable number is 0.
    fn decode(text: &str) -> StreamLoad {
        let mut n = text
            .split_ascii_whitespace()
            .map(|v| v.parse::<u64>().unwrap_or(0));
        StreamLoad {
            viewers: n.next().unwrap_or(0),
            out_bps_1s: n.next().unwrap_or(0),
            out_bps_10s: n.next().unwrap_or(0),
            bytes_out: n.next().unwrap_or(0),
        }
    }

    fn plus(self, o: StreamLoad) -> StreamLoad {
        StreamLoad {
            viewers: self.viewers.saturating_add(o.viewers),
            out_bps_1s: self.out_bps_1s.saturating_add(o.out_bps_1s),
            out_bps_10s: self.out_bps_10s.saturating_add(o.out_bps_10s),
            bytes_out: self.bytes_out.saturating_add(o.bytes_out),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The hub's view of the cluster.
struct Handle(Arc<ClusterNode>);

impl crate::hub::Cluster for Handle {
    fn claim<'a>(
        &'a self,
        stream_id: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Ownership>, HubError>> {
        Box::pin(self.0.clone().claim(stream_id))
    }

    fn fetch<'a>(
        &'a self,
        hub: &'a Hub,
        stream_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, HubError>> {
        Box::pin(super::relay::fetch(self.0.clone(), hub, stream_id))
    }
}

/// A publisher's claim: renewed while the stream is live, released when it ends.
struct Claimed {
    node: Arc<ClusterNode>,
    lease: Arc<Mutex<Lease>>,
    renewer: Mutex<Option<JoinHandle<()>>>,
}

impl Ownership for Claimed {
    fn epoch(&self) -> u64 {
        lock(&self.lease).epoch
    }

    fn bind(&self, stream: &Arc<LiveStream>) {
        let task = tokio::spawn(renew(
            self.node.clone(),
            self.lease.clone(),
            Arc::downgrade(stream),
        ));
        *lock(&self.renewer) = Some(task);
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.renewer).take() {
            t.abort();
        }
        let (node, lease) = (self.node.clone(), lock(&self.lease).clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                match node.leases.release(&lease).await {
                    Ok(_) => tracing::debug!(stream = %lease.stream_id, "cluster: stream released"),
                    // It expires by itself.
                    Err(err) => {
                        tracing::warn!(stream = %lease.stream_id, %err, "cluster: release failed")
                    }
                }
            });
        }
    }
}

/// Renews a lease while its stream is live. Redis unreachable: the stream keeps playing
/// (nobody else can claim it either). The lease gone when Redis answers again (it expired
/// meanwhile): claimed again, under a new epoch, unless another node took the stream — then
/// this publisher is stopped.
async fn renew(node: Arc<ClusterNode>, lease: Arc<Mutex<Lease>>, stream: Weak<LiveStream>) {
    let mut tick = tokio::time::interval(node.renew_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut failing_since: Option<Instant> = None;
    loop {
        tick.tick().await;
        let Some(live) = stream.upgrade() else { return };
        let current = lock(&lease).clone();
        match node.leases.renew(&current).await {
            Ok(true) => {
                if failing_since.take().is_some() {
                    tracing::info!(stream = %live.id, "cluster: lease renewed again");
                }
            }
            Ok(false) => match node.leases.claim(&live.id, current.epoch).await {
                Ok(Claim::Won(new)) => {
                    tracing::warn!(stream = %live.id, epoch = new.epoch,
                        "cluster: lease had expired; claimed again");
                    live.set_epoch(new.epoch);
                    let _ = node
                        .store
                        .set_stream_state(
                            &live.id,
                            crate::store::StreamState::Live,
                            Some(live.protocol),
                            Some((&node.node, new.epoch)),
                        )
                        .await;
                    *lock(&lease) = new;
                }
                Ok(Claim::Held(other)) => {
                    tracing::warn!(stream = %live.id, owner = %other,
                        "cluster: another node owns the stream now; disconnecting the publisher");
                    live.stop();
                    return;
                }
                Err(err) => tracing::warn!(stream = %live.id, %err, "cluster: re-claim failed"),
            },
            Err(err) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                tracing::warn!(stream = %live.id, %err, failing_ms = since.elapsed().as_millis() as u64,
                    "cluster: lease not renewed; the stream keeps playing");
            }
        }
    }
}

/// CPU time of this process between samples (Linux `/proc/self/stat`).
#[derive(Default)]
struct CpuMeter {
    last: Option<(Instant, f64)>,
}

impl CpuMeter {
    fn sample(&mut self) -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces) in parentheses.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let cpu_s = (utime + stime) / ticks.max(1.0);
        let now = Instant::now();
        let out = self.last.map(|(at, before)| {
            let wall = now.duration_since(at).as_secs_f64().max(1e-3);
            ((cpu_s - before) / wall * 1000.0).round() / 10.0
        });
        self.last = Some((now, cpu_s));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::StreamLoad;

    #[test]
    fn stream_loads_survive_redis_and_add_up() {
        let a = StreamLoad {
            viewers: 3,
            out_bps_1s: 1_000,
            out_bps_10s: 900,
            bytes_out: 12_345,
        };
        assert_eq!(StreamLoad::decode(&a.encode()), a);
        // A node of the previous version wrote the viewer count alone; junk counts as 0.
        assert_eq!(StreamLoad::decode("7").viewers, 7);
        assert_eq!(StreamLoad::decode("x -1"), StreamLoad::default());
        let sum = a.plus(StreamLoad::decode("2 10 20 30"));
        assert_eq!(
            (sum.viewers, sum.out_bps_1s, sum.out_bps_10s, sum.bytes_out),
            (5, 1_010, 920, 12_375)
        );
    }
}
