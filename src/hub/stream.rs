//! One live stream in the hub: its tracks, GOP cache, subscribers and ingest counters, and the
//! [`Publisher`] handle through which an ingest driver feeds it.
//!
//! All mutable state sits behind one std mutex taken once per pushed frame and never across
//! an `.await`; each subscriber's queue has its own lock (see [`super::queue`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use crate::media::{Frame, TrackId, Tracks};

use super::health::{External, FrameInfo, Health, HealthAlarm, HealthTracker, Transition};
use super::queue::{Queue, Subscription};
use super::stats::{RateMeter, Rates, TrafficMeter, TransportStats};
use super::Hub;

/// Frames kept at most in the GOP cache; a longer GOP is not cached (viewers wait for the next
/// keyframe instead of the server holding unbounded memory).
const GOP_MAX_FRAMES: usize = 4096;
/// Bytes kept at most in the GOP cache.
const GOP_MAX_BYTES: usize = 64 * 1024 * 1024;

/// A published stream, shared by the hub, its publisher and the API.
#[derive(Debug)]
pub struct LiveStream {
    /// The stream id (`str_…`).
    pub id: String,
    /// Ingest protocol name for the API (`rtmp`).
    pub protocol: &'static str,
    /// When publishing began.
    pub started_at: SystemTime,
    /// The fencing epoch of the publisher's claim in the cluster (0 on a single node).
    epoch: AtomicU64,
    state: Mutex<StreamState>,
    queue_capacity: usize,
    /// Server-wide ingest byte counter.
    bytes_in_total: Arc<AtomicU64>,
    /// Server-wide egress byte counter.
    bytes_out_total: Arc<AtomicU64>,
    /// Bytes sent to viewers and outputs of this stream.
    bytes_out: AtomicU64,
    /// Set by [`LiveStream::stop`]; the publisher's driver disconnects.
    stop_requested: AtomicBool,
    stop_notify: tokio::sync::Notify,
    /// Set by [`LiveStream::request_keyframe`] (the HLS segmenter, when a segment is due and
    /// no keyframe came); taken by the publisher's driver, which asks its encoder for one.
    keyframe_wanted: AtomicBool,
    keyframe_notify: tokio::sync::Notify,
    /// A relay's LL-HLS copy: 0 not wanted, 1 wanted by the HLS egress, 2 asked of the owner
    /// by the relay ([`LiveStream::want_packaging`], [`Publisher::packaging_wanted`]).
    packaging: std::sync::atomic::AtomicU8,
    packaging_notify: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct StreamState {
    tracks: Option<Arc<Tracks>>,
    gop: Vec<Frame>,
    gop_bytes: usize,
    subscribers: Vec<Arc<Queue>>,
    meter: RateMeter,
    ended: bool,
    peak_viewers: usize,
    /// The newest frame of each track (camera snapshots).
    latest: Vec<(TrackId, Frame)>,
    /// Viewers served outside the hub's queues (HLS sessions), counted by guards, by
    /// protocol (index into [`VIEWER_PROTOCOLS`]).
    external_viewers: [usize; VIEWER_PROTOCOLS.len()],
    /// Health score bookkeeping (per frame), its alarm and its history.
    health: HealthTracker,
    alarm: HealthAlarm,
    history: VecDeque<(SystemTime, u8)>,
    /// In/out byte totals sampled once a second.
    traffic: TrafficMeter,
    /// Frames received in this session.
    frames_in: u64,
    /// Frames dropped for subscribers that have since left.
    dropped_gone: u64,
    /// RTP statistics of a WHIP publisher.
    transport: Option<TransportStats>,
    sub_streams: Vec<SubStream>,
    /// A video frame with pts ≠ dts was seen (B-frames).
    reordered: bool,
}

/// Protocols viewers are counted under.
pub const VIEWER_PROTOCOLS: [&str; 4] = ["hls", "rtmp", "whep", "mjpeg"];

/// Health history kept: 10 minutes.
const HISTORY: Duration = Duration::from_secs(600);

fn protocol_index(protocol: &str) -> usize {
    VIEWER_PROTOCOLS
        .iter()
        .position(|p| *p == protocol)
        .unwrap_or(0)
}

/// A track of a multitrack publisher beyond the stream's main video and audio tracks.
#[derive(Debug, Clone, PartialEq)]
pub struct SubStream {
    /// The publisher's track id (Enhanced RTMP `trackId`).
    pub track_id: u8,
    /// The codec and its configuration, once its sequence start arrived.
    pub codec: Option<crate::media::CodecConfig>,
    /// `video` or `audio`.
    pub kind: crate::media::TrackKind,
    /// Payload bytes received on this track.
    pub bytes_in: u64,
    /// Average bitrate since the track's first frame, bits per second.
    pub bitrate_bps: u64,
}

/// What the API shows about a live stream.
#[derive(Debug, Clone)]
pub struct StreamSnapshot {
    /// Ingest protocol.
    pub protocol: &'static str,
    /// When publishing began.
    pub started_at: SystemTime,
    /// Announced tracks, if any yet.
    pub tracks: Option<Arc<Tracks>>,
    /// Total payload bytes received.
    pub bytes_in: u64,
    /// Ingest bitrate over the last few seconds, bits per second.
    pub bitrate_bps: u64,
    /// Measured frame rate of each track over the last few seconds.
    pub measured_fps: Vec<(TrackId, f64)>,
    /// Current subscribers (segmenters, players).
    pub subscribers: usize,
    /// Subscribers that are viewers (players), not internal consumers like the segmenter.
    pub viewers: usize,
    /// Viewers per protocol (every entry of [`VIEWER_PROTOCOLS`]).
    pub viewers_by_protocol: Vec<(&'static str, usize)>,
    /// Bytes sent to viewers and outputs in this session.
    pub bytes_out: u64,
    /// In/out bitrates over 1 s and 10 s.
    pub rates: Rates,
    /// Bitrate of each track over the last few seconds.
    pub track_bitrates: Vec<(TrackId, u64)>,
    /// Average interval between video keyframes (media seconds).
    pub keyframe_interval_s: Option<f64>,
    /// The health score now (`None` in the first seconds).
    pub health: Option<Health>,
    /// Most viewers at once in this session.
    pub peak_viewers: usize,
    /// Frames dropped across subscribers that fell behind (in this session).
    pub dropped_frames: u64,
    /// Frames received in this session.
    pub frames_in: u64,
    /// Packet-level ingest statistics (WHIP).
    pub transport: Option<TransportStats>,
    /// The tracks beyond the first video and audio track of an Enhanced RTMP multitrack
    /// publisher (other renditions, other languages): described, not routed.
    pub sub_streams: Vec<SubStream>,
    /// The video has B-frames (reordered frames), which WebRTC players decode badly.
    pub has_b_frames: bool,
}

impl LiveStream {
    pub(crate) fn new(
        id: String,
        protocol: &'static str,
        epoch: u64,
        queue_capacity: usize,
        bytes_in_total: Arc<AtomicU64>,
        bytes_out_total: Arc<AtomicU64>,
    ) -> Self {
        LiveStream {
            id,
            protocol,
            started_at: SystemTime::now(),
            epoch: AtomicU64::new(epoch),
            state: Mutex::new(StreamState::default()),
            queue_capacity,
            bytes_in_total,
            bytes_out_total,
            bytes_out: AtomicU64::new(0),
            stop_requested: AtomicBool::new(false),
            stop_notify: tokio::sync::Notify::new(),
            keyframe_wanted: AtomicBool::new(false),
            keyframe_notify: tokio::sync::Notify::new(),
            packaging: std::sync::atomic::AtomicU8::new(0),
            packaging_notify: tokio::sync::Notify::new(),
        }
    }

    /// Whether this stream is a relay of a stream published on another node.
    pub fn is_relay(&self) -> bool {
        self.protocol == super::RELAY_PROTOCOL
    }

    /// The fencing epoch of the publisher's claim in the cluster (0 on a single node).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// A renewed claim's epoch (the lease had expired while Redis was away).
    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Relaxed);
    }

    /// Viewers now, every protocol (what [`LiveStream::snapshot`] counts, cheaper).
    pub fn viewer_count(&self) -> usize {
        let st = self.lock();
        st.subscribers.iter().filter(|q| q.is_viewer()).count()
            + st.external_viewers.iter().sum::<usize>()
    }

    /// Average interval between video keyframes (media seconds), once measured.
    pub fn keyframe_interval_s(&self) -> Option<f64> {
        self.lock().health.keyframe_interval_s()
    }

    /// Asks the publisher for a keyframe: a WHIP publisher's driver sends a PLI (and FIR when
    /// negotiated), a camera's encoder makes the next frame an IDR; RTMP cannot be asked.
    pub fn request_keyframe(&self) {
        self.keyframe_wanted.store(true, Ordering::SeqCst);
        self.keyframe_notify.notify_one();
    }

    /// For a relay: the owner's LL-HLS packaging is wanted here (an HLS viewer came). The
    /// relay asks the owner once; later calls do nothing.
    pub fn want_packaging(&self) {
        if self
            .packaging
            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.packaging_notify.notify_one();
        }
    }

    /// Asks the publisher's driver to disconnect (API `stop`).
    pub fn stop(&self) {
        self.stop_requested.store(true, Ordering::SeqCst);
        self.stop_notify.notify_waiters();
    }

    /// Resolves once [`LiveStream::stop`] was called.
    pub async fn stopped(&self) {
        loop {
            let notified = self.stop_notify.notified();
            if self.stop_requested.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes a viewer of `protocol` (one of [`VIEWER_PROTOCOLS`]): the queue starts with
    /// the current tracks and the GOP cache, so a new viewer begins at the last keyframe at
    /// once.
    pub fn subscribe(&self, protocol: &'static str) -> Subscription {
        self.subscribe_with(Some(protocol), self.queue_capacity)
    }

    /// Subscribes an internal consumer (segmenter, recorder, restream): not counted as a
    /// viewer.
    pub fn subscribe_internal(&self) -> Subscription {
        self.subscribe_with(None, self.queue_capacity)
    }

    /// Subscribes a viewer with a short queue (latest-frame consumers like MJPEG).
    pub fn subscribe_short(&self, capacity: usize, protocol: &'static str) -> Subscription {
        self.subscribe_with(Some(protocol), capacity)
    }

    /// Counts bytes sent for this stream (and in the server's total).
    pub fn add_bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
        self.bytes_out_total.fetch_add(n, Ordering::Relaxed);
    }

    fn subscribe_with(&self, viewer: Option<&'static str>, capacity: usize) -> Subscription {
        let queue = Arc::new(Queue::new(capacity, viewer));
        let mut st = self.lock();
        if let Some(tracks) = &st.tracks {
            queue.push_tracks(tracks.clone());
            for f in &st.gop {
                queue.prefill(f);
            }
        }
        if st.ended {
            queue.close();
        }
        st.subscribers.push(queue.clone());
        if viewer.is_some() {
            st.update_peak();
        }
        Subscription { queue }
    }

    /// The newest frame of `track`, if any arrived.
    pub fn latest_frame(&self, track: TrackId) -> Option<Frame> {
        let st = self.lock();
        st.latest
            .iter()
            .find(|(t, _)| *t == track)
            .map(|(_, f)| f.clone())
    }

    /// The current tracks.
    pub fn tracks(&self) -> Option<Arc<Tracks>> {
        self.lock().tracks.clone()
    }

    /// Counts a viewer served outside the hub's queues until the guard is dropped.
    pub fn viewer_guard(self: &Arc<Self>, protocol: &'static str) -> ViewerGuard {
        let index = protocol_index(protocol);
        let mut st = self.lock();
        st.external_viewers[index] += 1;
        st.update_peak();
        ViewerGuard {
            stream: self.clone(),
            index,
        }
    }

    /// Once a second (the stats monitor): samples traffic and evaluates the health score;
    /// with `history`, the score is also kept for the history and fed to the alarm, whose
    /// transition (if any) is returned.
    pub fn tick(
        &self,
        now: Instant,
        wall: SystemTime,
        history: bool,
    ) -> (Option<Health>, Option<Transition>) {
        let bytes_out = self.bytes_out.load(Ordering::Relaxed);
        let mut st = self.lock();
        let bytes_in = st.meter.total_bytes();
        st.traffic.record(now, bytes_in, bytes_out);
        let external = st.external();
        let health = st.health.evaluate(now, external);
        let mut transition = None;
        if let (true, Some(h)) = (history, &health) {
            st.history.push_back((wall, h.score));
            while st
                .history
                .front()
                .is_some_and(|(at, _)| wall.duration_since(*at).unwrap_or_default() > HISTORY)
            {
                st.history.pop_front();
            }
            transition = st.alarm.update(h.score);
        }
        (health, transition)
    }

    /// The kept health scores, oldest first (last 10 minutes).
    pub fn health_history(&self) -> Vec<(SystemTime, u8)> {
        self.lock().history.iter().copied().collect()
    }

    /// A consistent view of the stream for the API.
    pub fn snapshot(&self) -> StreamSnapshot {
        let mut st = self.lock();
        let now = Instant::now();
        let external = st.external();
        let health = st.health.evaluate(now, external);
        let mut viewers_by_protocol: Vec<(&'static str, usize)> =
            VIEWER_PROTOCOLS.iter().map(|p| (*p, 0)).collect();
        for q in &st.subscribers {
            if let Some(p) = q.viewer_protocol() {
                viewers_by_protocol[protocol_index(p)].1 += 1;
            }
        }
        for (i, n) in st.external_viewers.iter().enumerate() {
            viewers_by_protocol[i].1 += n;
        }
        StreamSnapshot {
            protocol: self.protocol,
            started_at: self.started_at,
            tracks: st.tracks.clone(),
            bytes_in: st.meter.total_bytes(),
            bitrate_bps: st.meter.bits_per_second(now),
            measured_fps: st
                .tracks
                .iter()
                .flat_map(|t| t.list.iter())
                .filter_map(|t| st.meter.fps(now, t.id).map(|f| (t.id, f)))
                .collect(),
            subscribers: st.subscribers.len(),
            viewers: viewers_by_protocol.iter().map(|(_, n)| n).sum(),
            viewers_by_protocol,
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            rates: st.traffic.rates(),
            track_bitrates: st
                .tracks
                .iter()
                .flat_map(|t| t.list.iter())
                .map(|t| (t.id, st.meter.track_bits_per_second(now, t.id)))
                .collect(),
            keyframe_interval_s: st.health.keyframe_interval_s(),
            health,
            peak_viewers: st.peak_viewers,
            dropped_frames: external.dropped_frames,
            frames_in: st.frames_in,
            transport: st.transport.clone(),
            sub_streams: st.sub_streams.clone(),
            has_b_frames: st.reordered,
        }
    }

    fn set_tracks(&self, tracks: Arc<Tracks>) {
        let mut st = self.lock();
        let fps = tracks
            .primary_video()
            .and_then(|id| tracks.get(id))
            .and_then(|t| t.codec.video_info())
            .and_then(|i| i.fps);
        st.health.set_nominal_fps(fps);
        st.latest.retain(|(t, _)| tracks.get(*t).is_some());
        st.gop.clear();
        st.gop_bytes = 0;
        st.tracks = Some(tracks.clone());
        for q in &st.subscribers {
            q.push_tracks(tracks.clone());
        }
    }

    fn push(&self, frame: Frame, now: Instant) {
        let mut st = self.lock();
        let Some(tracks) = st.tracks.clone() else {
            return;
        };
        let primary = tracks.primary_video();
        let is_video = primary == Some(frame.track);
        let has_video = primary.is_some();
        st.meter.record(now, frame.data.len(), frame.track);
        if let Some(track) = tracks.get(frame.track) {
            let scale = i64::from(track.timescale.max(1));
            st.health.record(
                now,
                FrameInfo {
                    video: track.kind() == crate::media::TrackKind::Video,
                    clock: is_video || !has_video,
                    dts_ms: frame.dts.saturating_mul(1000) / scale,
                    keyframe: is_video && frame.keyframe,
                    bytes: frame.data.len(),
                },
            );
        }
        st.reordered |= is_video && frame.pts != frame.dts;
        match st.latest.iter_mut().find(|(t, _)| *t == frame.track) {
            Some(slot) => slot.1 = frame.clone(),
            None => st.latest.push((frame.track, frame.clone())),
        }
        self.bytes_in_total
            .fetch_add(frame.data.len() as u64, Ordering::Relaxed);
        update_gop(&mut st, &frame, is_video, has_video);
        st.frames_in += 1;
        let mut gone = 0;
        st.subscribers.retain(|q| {
            let keep = q.push_frame(&frame, is_video);
            if !keep {
                gone += q.dropped();
            }
            keep
        });
        st.dropped_gone += gone;
    }

    pub(crate) fn end(&self) {
        let mut st = self.lock();
        st.ended = true;
        st.gop.clear();
        for q in st.subscribers.drain(..) {
            q.close();
        }
    }
}

impl StreamState {
    fn update_peak(&mut self) {
        let now = self.subscribers.iter().filter(|q| q.is_viewer()).count()
            + self.external_viewers.iter().sum::<usize>();
        self.peak_viewers = self.peak_viewers.max(now);
    }

    /// Counters the health score takes from outside the frame path.
    fn external(&self) -> External {
        External {
            rtp_received: self.transport.as_ref().map_or(0, |t| t.packets_received),
            rtp_lost: self.transport.as_ref().map_or(0, |t| t.packets_lost),
            dropped_frames: self.dropped_gone
                + self.subscribers.iter().map(|q| q.dropped()).sum::<u64>(),
        }
    }
}

/// Keeps one viewer counted while it lives.
#[derive(Debug)]
pub struct ViewerGuard {
    stream: Arc<LiveStream>,
    index: usize,
}

impl ViewerGuard {
    /// Whether the guard counts a viewer of `stream` (not of an earlier session of it).
    pub fn counts_on(&self, stream: &Arc<LiveStream>) -> bool {
        Arc::ptr_eq(&self.stream, stream)
    }
}

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        let mut st = self.stream.lock();
        let n = &mut st.external_viewers[self.index];
        *n = n.saturating_sub(1);
    }
}

/// Keeps the frames since the last keyframe (of video, or of audio in audio-only streams).
fn update_gop(st: &mut StreamState, frame: &Frame, is_video: bool, has_video: bool) {
    let starts_gop = frame.keyframe && (is_video || !has_video);
    if starts_gop {
        st.gop.clear();
        st.gop_bytes = 0;
    } else if st.gop.is_empty() {
        // No keyframe seen since the cache was reset: a viewer could not start here.
        return;
    }
    if st.gop.len() >= GOP_MAX_FRAMES || st.gop_bytes + frame.data.len() > GOP_MAX_BYTES {
        st.gop.clear();
        st.gop_bytes = 0;
        return;
    }
    st.gop_bytes += frame.data.len();
    st.gop.push(frame.clone());
}

/// The ingest side of a live stream. Dropping it ends the stream: subscribers drain what is
/// queued and then see the end.
pub struct Publisher {
    stream: Arc<LiveStream>,
    hub: Weak<super::HubInner>,
    /// The cluster claim, given up after the stream ends.
    _claim: Option<Box<dyn super::Ownership>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("stream", &self.stream.id)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    pub(crate) fn new(
        stream: Arc<LiveStream>,
        hub: Weak<super::HubInner>,
        claim: Option<Box<dyn super::Ownership>>,
    ) -> Self {
        Publisher {
            stream,
            hub,
            _claim: claim,
        }
    }

    /// Announces the tracks (again, if they change mid-stream: subscribers see a new
    /// [`super::Event::Tracks`] and treat it as a discontinuity).
    pub fn set_tracks(&self, tracks: Arc<Tracks>) {
        self.stream.set_tracks(tracks);
    }

    /// Fans a frame out to every subscriber. Never blocks; slow subscribers drop frames.
    pub fn push(&self, frame: Frame) {
        self.stream.push(frame, Instant::now());
    }

    /// Replaces the packet-level ingest statistics shown for this stream.
    pub fn set_transport_stats(&self, stats: TransportStats) {
        self.stream.lock().transport = Some(stats);
    }

    /// The publisher's extra (multitrack) tracks, as they are now.
    pub fn set_sub_streams(&self, subs: Vec<SubStream>) {
        self.stream.lock().sub_streams = subs;
    }

    /// The stream being fed.
    pub fn stream(&self) -> &Arc<LiveStream> {
        &self.stream
    }

    /// Resolves when the API asked to stop this stream; the driver then disconnects.
    pub async fn stopped(&self) {
        self.stream.stopped().await
    }

    /// Whether a keyframe was asked for since the last call (for drivers that poll).
    pub fn take_keyframe_request(&self) -> bool {
        self.stream.keyframe_wanted.swap(false, Ordering::SeqCst)
    }

    /// Resolves once, when [`LiveStream::want_packaging`] was called. One driver waits.
    pub async fn packaging_wanted(&self) {
        loop {
            let notified = self.stream.packaging_notify.notified();
            if self
                .stream
                .packaging
                .compare_exchange(1, 2, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return;
            }
            notified.await;
        }
    }

    /// Resolves when a keyframe is asked for (and takes the request). One driver waits.
    pub async fn keyframe_requested(&self) {
        loop {
            if self.take_keyframe_request() {
                return;
            }
            self.stream.keyframe_notify.notified().await;
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stream.end();
        if let Some(inner) = self.hub.upgrade() {
            Hub { inner }.unpublish(&self.stream);
        }
    }
}
