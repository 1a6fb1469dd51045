//! The hub: the registry of live streams between ingest and egress.
//!
//! Ingest drivers call [`Hub::publish`] and feed the returned [`Publisher`]; egress calls
//! [`Hub::subscribe`] and reads a [`Subscription`]. Fan-out is bounded and lossy per
//! subscriber, payloads are shared `Bytes`, and a publisher never waits for a viewer.
//! Lifecycle hooks ([`Hub::on_event`]) let the app start an HLS segmenter and update the
//! store when a stream goes live or ends, without ingest knowing about either.

pub mod health;
mod queue;
mod stats;
mod stream;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

pub use queue::{Event, Subscription};
pub use stats::{RateMeter, Rates, TrafficMeter, TransportStats};
pub use stream::{LiveStream, Publisher, StreamSnapshot, SubStream, ViewerGuard, VIEWER_PROTOCOLS};

/// Default per-subscriber queue length, in frames (~8 s of 30 fps video with audio).
pub const DEFAULT_QUEUE_FRAMES: usize = 512;

/// Why a publish was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HubError {
    /// Another publisher is live on this stream.
    #[error("stream {0} already has a publisher")]
    AlreadyPublishing(String),
    /// Another node of the cluster holds the stream's publisher (its node id).
    #[error("stream is published on node {0}")]
    OwnedElsewhere(String),
    /// The cluster's coordination service cannot be reached: neither a publish nor a relay
    /// can be decided now.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
}

/// A boxed future (the cluster hooks are called through trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The protocol name of a stream fed by a relay from the node that owns it.
pub const RELAY_PROTOCOL: &str = "relay";

/// What the hub asks of the cluster (none on a single node): who may publish a stream, and
/// how a stream published on another node comes here.
pub trait Cluster: Send + Sync + 'static {
    /// Claims the stream for a publisher on this node; refused with
    /// [`HubError::OwnedElsewhere`] while another node holds it.
    fn claim<'a>(
        &'a self,
        stream_id: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Ownership>, HubError>>;
    /// Brings a stream live on another node into this hub (a relay); `Ok(true)` once it is
    /// live here, `Ok(false)` when it is live nowhere.
    fn fetch<'a>(
        &'a self,
        hub: &'a Hub,
        stream_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, HubError>>;
}

/// A claim on a stream, held by its publisher; dropping it gives the stream up.
pub trait Ownership: Send + Sync {
    /// The fencing epoch of this claim (higher than every earlier claim's).
    fn epoch(&self) -> u64;
    /// Called once the stream is live: a claim that is lost later stops it.
    fn bind(&self, stream: &Arc<LiveStream>);
}

/// A stream went live or ended. Delivered synchronously to hooks, under the registry lock:
/// hooks must not block or call back into the hub's registry (`publish`, `get`, ...).
#[derive(Debug, Clone)]
pub enum HubEvent {
    /// A publisher claimed the stream.
    Published(Arc<LiveStream>),
    /// The publisher left.
    Unpublished(Arc<LiveStream>),
}

type Hook = Box<dyn Fn(&HubEvent) + Send + Sync>;

#[derive(Default)]
pub(crate) struct HubInner {
    streams: Mutex<HashMap<String, Arc<LiveStream>>>,
    hooks: Mutex<Vec<Hook>>,
    queue_capacity: usize,
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
    traffic: Mutex<TrafficMeter>,
    cluster: OnceLock<Arc<dyn Cluster>>,
}

impl std::fmt::Debug for HubInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubInner").finish_non_exhaustive()
    }
}

/// A cheap-to-clone handle on the registry.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(DEFAULT_QUEUE_FRAMES)
    }
}

impl Hub {
    /// An empty hub whose subscribers queue at most `queue_capacity` frames.
    pub fn new(queue_capacity: usize) -> Self {
        Hub {
            inner: Arc::new(HubInner {
                queue_capacity,
                ..HubInner::default()
            }),
        }
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<String, Arc<LiveStream>>> {
        self.inner.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a lifecycle hook.
    pub fn on_event(&self, hook: impl Fn(&HubEvent) + Send + Sync + 'static) {
        self.inner
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(hook));
    }

    fn emit(&self, event: HubEvent) {
        let hooks = self.inner.hooks.lock().unwrap_or_else(|e| e.into_inner());
        for hook in hooks.iter() {
            hook(&event);
        }
    }

    /// Joins the hub to a cluster (once, at start).
    pub fn set_cluster(&self, cluster: Arc<dyn Cluster>) {
        let _ = self.inner.cluster.set(cluster);
    }

    /// Whether this hub is part of a cluster.
    pub fn in_cluster(&self) -> bool {
        self.inner.cluster.get().is_some()
    }

    /// Claims `stream_id` for a publisher on this node, in the cluster too when there is
    /// one; refused while another publisher holds it here or on any node.
    pub async fn publish_owned(
        &self,
        stream_id: &str,
        protocol: &'static str,
    ) -> Result<Publisher, HubError> {
        let claim = self.claim(stream_id).await?;
        self.publish_claimed(stream_id, protocol, claim)
    }

    /// The first half of [`Hub::publish_owned`], for a driver that claims a stream before
    /// its first frame and publishes later (the camera WebSocket).
    pub async fn claim(&self, stream_id: &str) -> Result<Option<Box<dyn Ownership>>, HubError> {
        if self.published(stream_id).is_some() {
            return Err(HubError::AlreadyPublishing(stream_id.to_owned()));
        }
        match self.inner.cluster.get() {
            Some(cluster) => Ok(Some(cluster.claim(stream_id).await?)),
            None => Ok(None),
        }
    }

    /// The second half of [`Hub::publish_owned`]: publishes under a claim. A relay of the
    /// stream still running here (its owner died, this node now owns it) is ended first.
    pub fn publish_claimed(
        &self,
        stream_id: &str,
        protocol: &'static str,
        claim: Option<Box<dyn Ownership>>,
    ) -> Result<Publisher, HubError> {
        let mut streams = self.streams();
        if let Some(old) = streams.get(stream_id).cloned() {
            if !old.is_relay() || protocol == RELAY_PROTOCOL {
                return Err(HubError::AlreadyPublishing(stream_id.to_owned()));
            }
            old.stop();
            old.end();
            streams.remove(stream_id);
            self.emit(HubEvent::Unpublished(old));
        }
        let epoch = claim.as_ref().map_or(0, |c| c.epoch());
        let stream = Arc::new(LiveStream::new(
            stream_id.to_owned(),
            protocol,
            epoch,
            self.inner.queue_capacity,
            self.inner.bytes_in.clone(),
            self.inner.bytes_out.clone(),
        ));
        streams.insert(stream_id.to_owned(), stream.clone());
        self.emit(HubEvent::Published(stream.clone()));
        drop(streams);
        if let Some(c) = &claim {
            c.bind(&stream);
        }
        Ok(Publisher::new(stream, Arc::downgrade(&self.inner), claim))
    }

    /// Claims `stream_id` on this node only (tests, relays); refused while another publisher
    /// holds it. Hooks run under the registry lock, so a stream's Unpublished can never be
    /// seen after the next session's Published.
    pub fn publish(&self, stream_id: &str, protocol: &'static str) -> Result<Publisher, HubError> {
        self.publish_claimed(stream_id, protocol, None)
    }

    /// Whether `stream_id` is live here, after asking the cluster to relay it from its
    /// owner when it is live on another node.
    pub async fn ensure_live(&self, stream_id: &str) -> Result<bool, HubError> {
        if self.get(stream_id).is_some() {
            return Ok(true);
        }
        match self.inner.cluster.get() {
            Some(cluster) => cluster.fetch(self, stream_id).await,
            None => Ok(false),
        }
    }

    pub(crate) fn unpublish(&self, stream: &Arc<LiveStream>) {
        let mut streams = self.streams();
        if streams
            .get(&stream.id)
            .is_some_and(|s| Arc::ptr_eq(s, stream))
        {
            streams.remove(&stream.id);
            self.emit(HubEvent::Unpublished(stream.clone()));
        }
    }

    /// The live stream with this id.
    pub fn get(&self, stream_id: &str) -> Option<Arc<LiveStream>> {
        self.streams().get(stream_id).cloned()
    }

    /// Runs `f` on a live stream while no session of it can start or end (the registry lock
    /// is held, as it is for the lifecycle hooks): what `f` sets up for this session cannot
    /// be overtaken by the next one.
    pub fn with_live<R>(
        &self,
        stream_id: &str,
        f: impl FnOnce(&Arc<LiveStream>) -> R,
    ) -> Option<R> {
        let streams = self.streams();
        streams.get(stream_id).map(f)
    }

    /// The stream with this id if its publisher is on this node (not a relay from another).
    pub fn published(&self, stream_id: &str) -> Option<Arc<LiveStream>> {
        self.get(stream_id).filter(|s| !s.is_relay())
    }

    /// Subscribes to a live stream, starting from its GOP cache.
    pub fn subscribe(&self, stream_id: &str, protocol: &'static str) -> Option<Subscription> {
        self.get(stream_id).map(|s| s.subscribe(protocol))
    }

    /// Ids of every live stream.
    pub fn live_ids(&self) -> Vec<String> {
        self.streams().keys().cloned().collect()
    }

    /// Every live stream.
    pub fn live_streams(&self) -> Vec<Arc<LiveStream>> {
        self.streams().values().cloned().collect()
    }

    /// Counts bytes sent that belong to no live stream (server total only).
    pub fn add_bytes_out(&self, n: u64) {
        self.inner.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts bytes sent for a stream (its total and the server's), by id: for egress that
    /// holds no [`LiveStream`] (HLS requests).
    pub fn add_stream_bytes_out(&self, stream_id: &str, n: u64) {
        match self.get(stream_id) {
            Some(s) => s.add_bytes_out(n),
            None => self.add_bytes_out(n),
        }
    }

    /// Samples the server's traffic totals (the stats monitor, once a second).
    pub fn sample_traffic(&self, now: std::time::Instant) {
        let (i, o) = self.traffic_totals();
        self.inner
            .traffic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(now, i, o);
    }

    /// Server-wide in/out rates over the last 1 and 10 seconds.
    pub fn rates(&self) -> Rates {
        self.inner
            .traffic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rates()
    }

    /// Media payload bytes received and bytes sent to viewers since start.
    pub fn traffic_totals(&self) -> (u64, u64) {
        (
            self.inner.bytes_in.load(Ordering::Relaxed),
            self.inner.bytes_out.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{test_support::av_tracks, Frame, TrackId};
    use bytes::Bytes;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn frame(track: u8, dts: i64, keyframe: bool) -> Frame {
        Frame {
            track: TrackId(track),
            pts: dts,
            dts,
            keyframe,
            data: Bytes::from(vec![0u8; 100]),
        }
    }

    #[test]
    fn second_publisher_is_refused_until_the_first_leaves() {
        let hub = Hub::default();
        let p = hub.publish("str_a", "rtmp").unwrap();
        assert_eq!(
            hub.publish("str_a", "rtmp").unwrap_err(),
            HubError::AlreadyPublishing("str_a".into())
        );
        drop(p);
        assert!(hub.get("str_a").is_none());
        assert!(hub.publish("str_a", "rtmp").is_ok());
    }

    #[test]
    fn hooks_see_publish_and_unpublish() {
        let hub = Hub::default();
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        hub.on_event(move |ev| {
            s.fetch_add(
                match ev {
                    HubEvent::Published(_) => 1,
                    HubEvent::Unpublished(_) => 10,
                },
                Ordering::SeqCst,
            );
        });
        drop(hub.publish("str_a", "rtmp").unwrap());
        assert_eq!(seen.load(Ordering::SeqCst), 11);
    }

    #[test]
    fn late_subscriber_starts_at_the_cached_keyframe_without_copying() {
        let hub = Hub::default();
        let p = hub.publish("s", "rtmp").unwrap();
        p.set_tracks(Arc::new(av_tracks()));
        p.push(frame(0, 0, true));
        p.push(frame(0, 33, false));
        let kf = frame(0, 66, true);
        let payload_ptr = kf.data.as_ptr();
        p.push(kf);
        p.push(frame(1, 70, true));
        p.push(frame(0, 99, false));
        let mut sub = hub.subscribe("s", "rtmp").unwrap();
        assert!(matches!(sub.try_recv(), Some(Event::Tracks(_))));
        let mut got = vec![];
        while let Some(Event::Frame(f)) = sub.try_recv() {
            got.push((f.track.0, f.dts, f.data.as_ptr()));
        }
        assert_eq!(
            got.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(),
            vec![(0, 66), (1, 70), (0, 99)]
        );
        assert_eq!(got[0].2, payload_ptr, "payload is shared, not copied");
    }

    #[tokio::test]
    async fn subscribers_see_the_end() {
        let hub = Hub::default();
        let p = hub.publish("s", "rtmp").unwrap();
        p.set_tracks(Arc::new(av_tracks()));
        let mut sub = hub.subscribe("s", "rtmp").unwrap();
        p.push(frame(0, 0, true));
        drop(p);
        assert!(matches!(sub.recv().await, Some(Event::Tracks(_))));
        assert!(matches!(sub.recv().await, Some(Event::Frame(_))));
        assert!(sub.recv().await.is_none());
    }

    #[test]
    fn a_slow_subscriber_does_not_hold_back_a_fast_one() {
        let hub = Hub::new(16);
        let p = hub.publish("s", "rtmp").unwrap();
        p.set_tracks(Arc::new(av_tracks()));
        let mut fast = hub.subscribe("s", "rtmp").unwrap();
        let slow = hub.subscribe("s", "rtmp").unwrap();
        let mut fast_frames = 0;
        for i in 0..1000 {
            p.push(frame(0, i * 33, i % 30 == 0));
            while let Some(ev) = fast.try_recv() {
                fast_frames += matches!(ev, Event::Frame(_)) as usize;
            }
        }
        assert_eq!(fast_frames, 1000);
        assert_eq!(fast.dropped(), 0);
        assert!(slow.dropped() > 900, "slow dropped {}", slow.dropped());
        assert!(slow.queued() <= 16);
        let snap = hub.get("s").unwrap().snapshot();
        assert_eq!(snap.dropped_frames, slow.dropped());
    }
}
