//! One live stream in the hub: its tracks, GOP cache, subscribers and ingest counters, and the
//! [`Publisher`] handle through which an ingest driver feeds it.
//!
//! All mutable state sits behind one std mutex taken once per pushed frame and never across
//! an `.await`; each subscriber's queue has its own lock (see [`super::queue`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Instant, SystemTime};

use crate::media::{Frame, TrackId, Tracks};

use super::queue::{Queue, Subscription};
use super::stats::{RateMeter, TransportStats};
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
    state: Mutex<StreamState>,
    queue_capacity: usize,
    /// Server-wide ingest byte counter.
    bytes_in_total: Arc<AtomicU64>,
    /// Set by [`LiveStream::stop`]; the publisher's driver disconnects.
    stop_requested: AtomicBool,
    stop_notify: tokio::sync::Notify,
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
    /// Viewers served outside the hub's queues (MJPEG, HLS sessions), counted by guards.
    external_viewers: usize,
    /// RTP statistics of a WHIP publisher.
    transport: Option<TransportStats>,
    /// A video frame with pts ≠ dts was seen (B-frames).
    reordered: bool,
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
    /// Most viewers at once in this session.
    pub peak_viewers: usize,
    /// Frames dropped across subscribers that fell behind.
    pub dropped_frames: u64,
    /// Packet-level ingest statistics (WHIP).
    pub transport: Option<TransportStats>,
    /// The video has B-frames (reordered frames), which WebRTC players decode badly.
    pub has_b_frames: bool,
}

impl LiveStream {
    pub(crate) fn new(
        id: String,
        protocol: &'static str,
        queue_capacity: usize,
        bytes_in_total: Arc<AtomicU64>,
    ) -> Self {
        LiveStream {
            id,
            protocol,
            started_at: SystemTime::now(),
            state: Mutex::new(StreamState::default()),
            queue_capacity,
            bytes_in_total,
            stop_requested: AtomicBool::new(false),
            stop_notify: tokio::sync::Notify::new(),
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

    /// Subscribes: the queue starts with the current tracks and the GOP cache, so a new viewer
    /// begins at the last keyframe at once.
    pub fn subscribe(&self) -> Subscription {
        self.subscribe_as(true)
    }

    /// Subscribes an internal consumer (segmenter, recorder): not counted as a viewer.
    pub fn subscribe_internal(&self) -> Subscription {
        self.subscribe_as(false)
    }

    /// Subscribes a viewer with a short queue (latest-frame consumers like MJPEG).
    pub fn subscribe_short(&self, capacity: usize) -> Subscription {
        self.subscribe_with(true, capacity)
    }

    fn subscribe_as(&self, viewer: bool) -> Subscription {
        self.subscribe_with(viewer, self.queue_capacity)
    }

    fn subscribe_with(&self, viewer: bool, capacity: usize) -> Subscription {
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
        if viewer {
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
    pub fn viewer_guard(self: &Arc<Self>) -> ViewerGuard {
        let mut st = self.lock();
        st.external_viewers += 1;
        st.update_peak();
        ViewerGuard {
            stream: self.clone(),
        }
    }

    /// A consistent view of the stream for the API.
    pub fn snapshot(&self) -> StreamSnapshot {
        let st = self.lock();
        let now = Instant::now();
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
            viewers: st.subscribers.iter().filter(|q| q.is_viewer()).count() + st.external_viewers,
            peak_viewers: st.peak_viewers,
            dropped_frames: st.subscribers.iter().map(|q| q.dropped()).sum(),
            transport: st.transport.clone(),
            has_b_frames: st.reordered,
        }
    }

    fn set_tracks(&self, tracks: Arc<Tracks>) {
        let mut st = self.lock();
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
        st.reordered |= is_video && frame.pts != frame.dts;
        match st.latest.iter_mut().find(|(t, _)| *t == frame.track) {
            Some(slot) => slot.1 = frame.clone(),
            None => st.latest.push((frame.track, frame.clone())),
        }
        self.bytes_in_total
            .fetch_add(frame.data.len() as u64, Ordering::Relaxed);
        update_gop(&mut st, &frame, is_video, has_video);
        st.subscribers.retain(|q| q.push_frame(&frame, is_video));
    }

    fn end(&self) {
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
        let now = self.subscribers.iter().filter(|q| q.is_viewer()).count() + self.external_viewers;
        self.peak_viewers = self.peak_viewers.max(now);
    }
}

/// Keeps one viewer counted while it lives.
#[derive(Debug)]
pub struct ViewerGuard {
    stream: Arc<LiveStream>,
}

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        let mut st = self.stream.lock();
        st.external_viewers = st.external_viewers.saturating_sub(1);
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
#[derive(Debug)]
pub struct Publisher {
    stream: Arc<LiveStream>,
    hub: Weak<super::HubInner>,
}

impl Publisher {
    pub(crate) fn new(stream: Arc<LiveStream>, hub: Weak<super::HubInner>) -> Self {
        Publisher { stream, hub }
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

    /// The stream being fed.
    pub fn stream(&self) -> &Arc<LiveStream> {
        &self.stream
    }

    /// Resolves when the API asked to stop this stream; the driver then disconnects.
    pub async fn stopped(&self) {
        self.stream.stopped().await
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
