//! LL-HLS egress: one [`Segmenter`] per live stream, fed by a hub subscription in its own
//! task, shared with every HTTP viewer through [`HlsStream`].
//!
//! [`HlsRegistry::on_published`] is called when a stream goes live. With `[hls] on_demand`
//! (the default) a stream is packaged only once someone asks for its HLS
//! ([`HlsRegistry::get_or_start`], from the first request): the subscription starts from the
//! hub's GOP cache, so the first segment is ready within one GOP, and a publisher nobody
//! watches over HLS holds no HLS window. If the stream's previous playlist is still inside
//! its reconnect grace period, the new session continues it at once (with a
//! discontinuity); otherwise a fresh playlist starts. When the publisher leaves, the open
//! segment is closed at once and `EXT-X-ENDLIST` follows after the grace period (or at once
//! on shutdown). [`http`] serves the playlists, init segments, segments and parts.
//!
//! In a cluster, a stream relayed from its owner is not packaged here: the first HLS request
//! asks the relay for the owner's packaging ([`crate::hub::LiveStream::want_packaging`]) and
//! the relay applies the owner's updates to a mirror segmenter ([`HlsRegistry::apply_mirror`]),
//! so every node serves the same names, media sequence, discontinuity sequence and bytes. A
//! node that becomes the owner of a stream it mirrored continues that playlist.
//!
//! The task feeding a segmenter wakes waiting HTTP requests only when the playlist changed
//! (a part, a segment, the end), and the playlist text of each revision is rendered once and
//! shared by every request; it also relays the segmenter's keyframe requests to the
//! publisher (WHIP answers with a keyframe, RTMP cannot).

pub mod http;
pub mod segmenter;
pub mod sessions;

use crate::egress::transcode::InlineAac;
use crate::media::audio::AudioQuality;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::watch;

use super::PlaybackGate;
use crate::config::HlsConfig;
use crate::hub::{Event, Hub, LiveStream, Subscription};
use crate::proto::relay::{HlsSeed, HlsUpdate};
pub use segmenter::{MirrorCursor, Segmenter, SegmenterConfig};

/// How long an ended playlist stays available after `EXT-X-ENDLIST`.
const ENDED_RETENTION: Duration = Duration::from_secs(120);

/// One stream's packaged HLS output, shared by the segmenter task and HTTP handlers.
#[derive(Debug)]
pub struct HlsStream {
    segmenter: Mutex<Segmenter>,
    changed: watch::Sender<u64>,
    /// Bumped by every publish session; a grace timer only ends the playlist of its session.
    generation: AtomicU64,
    /// Held by the task feeding the segmenter, so a reconnecting publisher's task starts only
    /// after the previous session's frames are all written.
    session: tokio::sync::Mutex<()>,
    /// The media playlist text of one revision (without a query), rendered once.
    rendered: Mutex<Option<(u64, Bytes)>>,
}

impl HlsStream {
    fn new(cfg: SegmenterConfig) -> Self {
        // A new run id for every fresh playlist: object names never repeat across runs.
        let run = format!("{:08x}-", rand::random::<u32>());
        Self::with(Segmenter::new(cfg).with_prefix(run))
    }

    /// An empty copy of the owner's packaging (cluster), until its first update.
    fn new_mirror(cfg: SegmenterConfig) -> Self {
        Self::with(Segmenter::new_mirror(cfg))
    }

    fn with(segmenter: Segmenter) -> Self {
        HlsStream {
            segmenter: Mutex::new(segmenter),
            changed: watch::channel(0).0,
            generation: AtomicU64::new(0),
            session: tokio::sync::Mutex::new(()),
            rendered: Mutex::new(None),
        }
    }

    /// The media playlist as text, rendered once per revision and shared by every request.
    /// `seg` is this stream's locked segmenter.
    pub fn rendered(&self, seg: &Segmenter) -> Bytes {
        let mut cache = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
        match &*cache {
            Some((rev, bytes)) if *rev == seg.revision() => bytes.clone(),
            _ => {
                let bytes = Bytes::from(seg.playlist().render());
                *cache = Some((seg.revision(), bytes.clone()));
                bytes
            }
        }
    }

    /// Locks the segmenter for reading or writing; never held across `.await`.
    pub fn lock(&self) -> MutexGuard<'_, Segmenter> {
        self.segmenter.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver that wakes on every change (new part, segment, end).
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

/// What an HLS request asked for (counted for `/metrics`: behind a cache, these show how many
/// requests reach the origin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// `index.m3u8`.
    Multivariant,
    /// `media.m3u8` without `_HLS_msn`.
    Playlist,
    /// `media.m3u8?_HLS_msn=…`.
    BlockingPlaylist,
    /// An init segment.
    Init,
    /// A complete segment.
    Segment,
    /// A partial segment.
    Part,
}

impl RequestKind {
    /// Every kind, in the order of [`HlsRegistry::request_counts`].
    pub const ALL: [RequestKind; 6] = [
        RequestKind::Multivariant,
        RequestKind::Playlist,
        RequestKind::BlockingPlaylist,
        RequestKind::Init,
        RequestKind::Segment,
        RequestKind::Part,
    ];

    /// The label used in metrics.
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Multivariant => "multivariant",
            RequestKind::Playlist => "playlist",
            RequestKind::BlockingPlaylist => "blocking_playlist",
            RequestKind::Init => "init",
            RequestKind::Segment => "segment",
            RequestKind::Part => "part",
        }
    }
}

/// All HLS streams by stream id.
pub struct HlsRegistry {
    streams: Mutex<HashMap<String, Arc<HlsStream>>>,
    cfg: HlsConfig,
    shutdown: watch::Receiver<bool>,
    /// Counts bytes served.
    pub(crate) hub: Hub,
    /// Private-stream checks.
    pub(crate) gate: Arc<dyn PlaybackGate>,
    /// HLS viewers.
    pub sessions: sessions::HlsSessions,
    /// Requests served, by [`RequestKind`].
    requests: [AtomicU64; RequestKind::ALL.len()],
    /// Where another node's playlist of a stream stood when this node claimed it (cluster):
    /// the next fresh playlist of the stream here continues it.
    pending_seeds: Mutex<HashMap<String, (std::time::Instant, HlsSeed)>>,
    /// See [`HlsRegistry::set_failover_allowance`].
    failover_ms: AtomicU64,
    /// Opus sources are packaged as AAC (transcoded here), which every HLS player takes.
    opus_as_aac: Option<AudioQuality>,
}

impl std::fmt::Debug for HlsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HlsRegistry").finish_non_exhaustive()
    }
}

impl HlsRegistry {
    /// An empty registry; `shutdown` turning true ends every playlist at once; `gate`
    /// decides who may play.
    pub fn new(
        cfg: HlsConfig,
        shutdown: watch::Receiver<bool>,
        hub: Hub,
        gate: Arc<dyn PlaybackGate>,
        opus_as_aac: Option<AudioQuality>,
    ) -> Arc<Self> {
        Arc::new(HlsRegistry {
            opus_as_aac,
            streams: Mutex::new(HashMap::new()),
            sessions: sessions::HlsSessions::new(Duration::from_millis(cfg.session_timeout_ms)),
            cfg,
            shutdown,
            hub,
            gate,
            requests: Default::default(),
            pending_seeds: Mutex::default(),
            failover_ms: AtomicU64::new(0),
        })
    }

    /// Counts one request of `kind`.
    pub(crate) fn count_request(&self, kind: RequestKind) {
        let i = RequestKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(0);
        self.requests[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests served since start, by kind.
    pub fn request_counts(&self) -> Vec<(RequestKind, u64)> {
        RequestKind::ALL
            .iter()
            .zip(&self.requests)
            .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Whether HLS is served for a cache in front (`[hls] cdn`): no per-viewer URLs, HLS
    /// viewers counted from player beacons.
    pub fn cdn(&self) -> bool {
        self.cfg.cdn
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<HlsStream>>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The HLS output of a stream, live or recently ended.
    pub fn get(&self, stream_id: &str) -> Option<Arc<HlsStream>> {
        self.map().get(stream_id).cloned()
    }

    fn segmenter_config(&self) -> SegmenterConfig {
        SegmenterConfig {
            part_target: f64::from(self.cfg.part_target_ms) / 1000.0,
            segment_target: f64::from(self.cfg.segment_target_ms) / 1000.0,
            window: self.cfg.window_segments as usize,
        }
    }

    /// A stream went live (called from the hub's hook, under its registry lock): packaged
    /// now when `on_demand` is off or when it continues a playlist still in its grace period
    /// (its viewers are waiting); otherwise at the first HLS request.
    pub fn on_published(self: &Arc<Self>, live: &Arc<crate::hub::LiveStream>) {
        let continuing = self.get(&live.id).is_some_and(|s| !s.lock().is_ended());
        if live.is_relay() {
            // The owner packages it; a playlist with viewers waiting asks for its copy now.
            if continuing {
                live.want_packaging();
            }
            return;
        }
        if !self.cfg.on_demand || continuing {
            self.start(&live.id, live.subscribe_internal());
        }
    }

    /// The HLS output of a stream for a request: the current playlist, or — for a live stream
    /// not packaged yet (on demand) or live again after its last playlist ended — a new one
    /// started now from the GOP cache. `None` when the stream is neither live nor recently
    /// ended.
    pub fn get_or_start(self: &Arc<Self>, stream_id: &str) -> Option<Arc<HlsStream>> {
        self.get_or_start_seeded(stream_id, None)
    }

    /// [`HlsRegistry::get_or_start`]; a playlist started now continues `seed` (the playlist
    /// of another node, after a failover).
    pub fn get_or_start_seeded(
        self: &Arc<Self>,
        stream_id: &str,
        seed: Option<&HlsSeed>,
    ) -> Option<Arc<HlsStream>> {
        if let Some(live) = self.hub.get(stream_id).filter(|l| l.is_relay()) {
            return Some(self.mirror_for(&live));
        }
        if let Some(s) = self.get(stream_id) {
            if !s.lock().is_ended() {
                return Some(s);
            }
        }
        // Under the hub's registry lock (the order its hooks use: hub, then this map), so the
        // session subscribed to is the live one and no new session can slip in between.
        let started = self.hub.with_live(stream_id, |live| {
            if live.is_relay() {
                // Relayed here since the check above: a copy of the owner's, never packaged here.
                return (self.mirror_for(live), None);
            }
            let mut map = self.map();
            if let Some(s) = map.get(stream_id) {
                if !s.lock().is_ended() {
                    return (s.clone(), None); // another request started it meanwhile
                }
            }
            let (stream, generation) = self.insert_run(&mut map, stream_id, seed);
            drop(map);
            (stream, Some((live.subscribe_internal(), generation)))
        });
        match started {
            None => self.get(stream_id),
            Some((stream, None)) => Some(stream),
            Some((stream, Some((sub, generation)))) => {
                self.spawn_run(stream_id, stream.clone(), sub, generation);
                Some(stream)
            }
        }
    }

    /// The copy of the owner's packaging of a relayed stream: the current playlist (a
    /// reconnected relay continues it), or a new, empty one; the relay is asked for the
    /// owner's packaging.
    fn mirror_for(&self, live: &Arc<LiveStream>) -> Arc<HlsStream> {
        let stream = {
            let mut map = self.map();
            match map.get(&live.id) {
                Some(s) if !s.lock().is_ended() => s.clone(),
                _ => {
                    let s = Arc::new(HlsStream::new_mirror(self.segmenter_config()));
                    map.insert(live.id.clone(), s.clone());
                    s
                }
            }
        };
        live.want_packaging();
        stream
    }

    /// The next fresh playlist of `stream_id` here continues `seed` (this node claimed a
    /// stream another node was packaging: a failover or a publisher that moved).
    pub fn offer_seed(&self, stream_id: &str, seed: HlsSeed) {
        let mut seeds = self.pending_seeds.lock().unwrap_or_else(|e| e.into_inner());
        // A seed not taken within the grace period is stale: that playlist has ended.
        let grace = self.grace();
        seeds.retain(|_, (at, _)| at.elapsed() < grace);
        seeds.insert(stream_id.to_owned(), (std::time::Instant::now(), seed));
    }

    /// How long a playlist whose feed stopped waits for it to come back: `grace_period_ms`,
    /// plus in a cluster the lease TTL (a dead owner's stream comes back on another node
    /// only once its lease has expired; every node's copy waits as long).
    pub fn grace(&self) -> Duration {
        Duration::from_millis(
            self.cfg
                .grace_period_ms
                .saturating_add(self.failover_ms.load(Ordering::Relaxed)),
        )
    }

    /// In a cluster: how long a failover may take (the lease TTL), added to the grace period.
    pub fn set_failover_allowance(&self, d: Duration) {
        self.failover_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Where this node's playlist of a stream stands, for a node that continues it (sent
    /// with the relay's request, kept in Redis by the owner). `None` without a live
    /// playlist.
    pub fn continuation(&self, stream_id: &str) -> Option<HlsSeed> {
        self.get(stream_id)
            .filter(|s| !s.lock().is_ended())
            .and_then(|s| s.lock().continuation())
    }

    /// Applies an update of the owner's packaging to this node's copy (called by the relay).
    /// A first copy (`reset`) takes over the playlist from any earlier session.
    pub fn apply_mirror(
        &self,
        stream_id: &str,
        update: HlsUpdate,
    ) -> Result<(), segmenter::MirrorError> {
        let reset = update.reset;
        if self.hub.published(stream_id).is_some() {
            // This node has taken the stream over: its own packaging goes on.
            return Err(segmenter::MirrorError::new(
                "the stream is published here now",
            ));
        }
        let stream = {
            let mut map = self.map();
            match map.get(stream_id) {
                Some(s) if !s.lock().is_ended() || reset => s.clone(),
                _ if !reset => return Err(segmenter::MirrorError::new("no copy to update")),
                _ => {
                    let s = Arc::new(HlsStream::new_mirror(self.segmenter_config()));
                    map.insert(stream_id.to_owned(), s.clone());
                    s
                }
            }
        };
        if reset {
            // A grace timer of an earlier session must not end the playlist it continues.
            stream.generation.fetch_add(1, Ordering::SeqCst);
        }
        let changed = {
            let mut seg = stream.lock();
            let before = seg.revision();
            seg.apply_mirror(update)?;
            seg.revision() != before
        };
        if changed {
            stream.notify();
        }
        Ok(())
    }

    /// Whether a publisher on this node (not a relay) has the stream.
    pub fn is_published_here(&self, stream_id: &str) -> bool {
        self.hub.published(stream_id).is_some()
    }

    /// The relay feeding a copy ended (the stream ended on its owner, the owner died, or
    /// nobody here watches): the copy waits out the grace period for a new relay, as a
    /// local playlist waits for a reconnecting publisher, then ends.
    pub fn mirror_detached(self: &Arc<Self>, stream_id: &str) {
        if self.hub.published(stream_id).is_some() {
            return; // Taken over here: the local session owns the playlist now.
        }
        let Some(stream) = self.get(stream_id).filter(|s| s.lock().is_mirror()) else {
            return;
        };
        let generation = stream.generation.load(Ordering::SeqCst);
        let registry = self.clone();
        let id = stream_id.to_owned();
        tokio::spawn(async move {
            registry
                .end_after_grace(&id, stream, generation, true)
                .await;
        });
    }

    /// How long a plain request may wait for the first complete segment: 1.5 × the segment
    /// target, or longer for a publisher whose keyframes (which cannot be asked for over
    /// RTMP) come further apart — never past the forced cut of a stream without keyframes.
    pub(crate) fn first_segment_wait(&self, stream_id: &str) -> Duration {
        let target = f64::from(self.cfg.segment_target_ms) / 1000.0;
        let gop = self
            .hub
            .get(stream_id)
            .and_then(|l| l.keyframe_interval_s())
            .unwrap_or(0.0);
        let secs = (1.5 * target)
            .max(gop + 1.0)
            .min((4.0 * target).max(10.0) + 1.0);
        Duration::from_secs_f64(secs)
    }

    /// Starts packaging a stream that just went live. Must be called inside a tokio runtime.
    pub fn start(self: &Arc<Self>, stream_id: &str, sub: Subscription) {
        let (stream, generation) = self.insert_run(&mut self.map(), stream_id, None);
        self.spawn_run(stream_id, stream, sub, generation);
    }

    /// The playlist a new publish session feeds: the current one while it is not ended (a
    /// reconnect continues it), else a fresh one. The generation is bumped under the map lock,
    /// so a grace timer (which checks it under the same lock) cannot end a playlist a new
    /// session has just taken over.
    /// A fresh playlist continues `seed`, or the seed offered at the claim.
    fn insert_run(
        &self,
        map: &mut HashMap<String, Arc<HlsStream>>,
        stream_id: &str,
        seed: Option<&HlsSeed>,
    ) -> (Arc<HlsStream>, u64) {
        let reusable = map.get(stream_id).filter(|s| !s.lock().is_ended()).cloned();
        let offered = self
            .pending_seeds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(stream_id)
            .filter(|(at, _)| at.elapsed() < self.grace())
            .map(|(_, s)| s);
        // The seed furthest on wins (a copy may lag the owner's last position); one msn and
        // one init id more are skipped, as another node may have seen them.
        let seed = [seed.cloned(), offered]
            .into_iter()
            .flatten()
            .max_by_key(|s| s.next_msn)
            .map(|mut s| {
                s.next_msn = s.next_msn.saturating_add(1);
                s.next_init_id = s.next_init_id.saturating_add(1);
                s
            });
        // A fresh playlist, or an empty copy never fed, continues the seed (`seed` ignores a
        // playlist that has named anything).
        let stream = reusable.unwrap_or_else(|| Arc::new(HlsStream::new(self.segmenter_config())));
        if let Some(seed) = &seed {
            stream.lock().seed(seed);
        }
        map.insert(stream_id.to_owned(), stream.clone());
        let generation = stream.generation.fetch_add(1, Ordering::SeqCst) + 1;
        (stream, generation)
    }

    fn spawn_run(
        self: &Arc<Self>,
        stream_id: &str,
        stream: Arc<HlsStream>,
        sub: Subscription,
        generation: u64,
    ) {
        let registry = self.clone();
        let id = stream_id.to_owned();
        tokio::spawn(async move {
            registry.run(&id, stream, sub, generation).await;
        });
    }

    async fn run(
        self: Arc<Self>,
        id: &str,
        stream: Arc<HlsStream>,
        mut sub: Subscription,
        generation: u64,
    ) {
        let mut shutdown = self.shutdown.clone();
        let session = stream.session.lock().await;
        let mut aac = self.opus_as_aac.map(InlineAac::new);
        loop {
            let event = tokio::select! {
                ev = sub.recv() => ev,
                _ = crate::shutdown::requested(&mut shutdown) => None,
            };
            let Some(event) = event else { break };
            let events = match aac.as_mut() {
                Some(a) => a.map(event),
                None => vec![event],
            };
            let (result, changed, keyframe) = {
                let mut seg = stream.lock();
                let before = seg.revision();
                let now = SystemTime::now();
                // Every event is offered; the first error is reported.
                let mut result = Ok(());
                for event in events {
                    let r = match event {
                        Event::Tracks(tracks) => seg.push_tracks(tracks),
                        Event::Frame(frame) => seg.push_frame(frame, now),
                    };
                    if result.is_ok() {
                        result = r;
                    }
                }
                (
                    result,
                    seg.revision() != before,
                    seg.take_keyframe_request(),
                )
            };
            if let Err(err) = result {
                tracing::warn!(stream = id, %err, "hls: muxing failed; frame skipped");
            }
            if keyframe {
                if let Some(live) = self.hub.get(id) {
                    live.request_keyframe();
                }
            }
            // Waiting requests wake only when there is something new for them.
            if changed {
                stream.notify();
            }
        }
        drop(sub);
        let shutting_down = *self.shutdown.borrow();
        stream.lock().finish(shutting_down);
        stream.notify();
        drop(session);
        tracing::debug!(stream = id, "hls: publisher gone, waiting for a reconnect");
        self.end_after_grace(id, stream, generation, false).await;
    }

    /// Ends a playlist whose feed stopped unless a new session (generation) takes it over
    /// within the grace period; removes it after [`ENDED_RETENTION`].
    /// `mirror`: a copy whose relay ended; it is not ended if it has become this node's own
    /// packaging meanwhile (a takeover).
    async fn end_after_grace(
        &self,
        id: &str,
        stream: Arc<HlsStream>,
        generation: u64,
        mirror: bool,
    ) {
        let mut shutdown = self.shutdown.clone();
        let shutting_down = *self.shutdown.borrow();
        if !shutting_down {
            let grace = self.grace();
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = crate::shutdown::requested(&mut shutdown) => {}
            }
            {
                let _map = self.map();
                if stream.generation.load(Ordering::SeqCst) != generation {
                    return; // A new session took over.
                }
                let mut seg = stream.lock();
                if mirror && !seg.is_mirror() {
                    return; // This node took the stream over: its own session goes on.
                }
                seg.finish(true);
            }
            stream.notify();
            tracing::info!(stream = id, "hls: playlist ended");
        }
        tokio::select! {
            _ = tokio::time::sleep(ENDED_RETENTION) => {}
            _ = crate::shutdown::requested(&mut shutdown) => return,
        }
        let mut map = self.map();
        if map.get(id).is_some_and(|s| Arc::ptr_eq(s, &stream))
            && stream.generation.load(Ordering::SeqCst) == generation
        {
            map.remove(id);
        }
    }
}
