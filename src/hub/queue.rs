//! The bounded, lossy queue between a live stream and one subscriber.
//!
//! The publisher pushes under a short std mutex and never waits; when a subscriber's queue is
//! full the queued frames are discarded, the subscriber skips everything until the next video
//! keyframe (so it resumes on a decodable picture with audio in step), and every discarded
//! frame is counted. The subscriber side awaits a [`tokio::sync::Notify`]. Pushing a frame
//! clones a [`Frame`] (a reference-count bump) into a `VecDeque` that has already grown to
//! what the subscriber needs (it starts small): no heap allocation per frame per subscriber
//! in steady state.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::media::{Frame, Tracks};

/// Slots a queue starts with (it grows to its capacity when a subscriber falls behind).
const INITIAL_ITEMS: usize = 16;
/// A drained queue with more slots than this shrinks back to [`INITIAL_ITEMS`].
const SHRINK_ABOVE: usize = 128;

/// What a subscriber receives, in order.
#[derive(Debug, Clone)]
pub enum Event {
    /// The publisher announced (or re-announced) its tracks; frames that follow refer to them.
    Tracks(Arc<Tracks>),
    /// One frame.
    Frame(Frame),
}

/// State shared between the stream (pushing) and the [`Subscription`] (popping).
#[derive(Debug)]
pub(crate) struct Queue {
    inner: Mutex<QueueState>,
    notify: Notify,
    capacity: usize,
    dropped: AtomicU64,
    /// The viewer's protocol; `None` for internal consumers (segmenter, recorder, restream).
    viewer: Option<&'static str>,
}

#[derive(Debug)]
struct QueueState {
    items: VecDeque<Event>,
    /// Skip frames until a video keyframe (after an overflow).
    awaiting_keyframe: bool,
    /// The stream has ended; `recv` returns `None` once `items` is drained.
    closed: bool,
    /// The subscriber dropped its end; the stream forgets this queue.
    detached: bool,
    /// Whether the stream has video (decides what counts as a resumption point).
    has_video: bool,
}

impl QueueState {
    /// The oldest event. A queue that a burst (the GOP a new viewer starts with, a stall)
    /// grew far beyond what its subscriber needs gives the memory back once drained.
    fn pop(&mut self) -> Option<Event> {
        let ev = self.items.pop_front();
        if self.items.is_empty() && self.items.capacity() > SHRINK_ABOVE {
            self.items.shrink_to(INITIAL_ITEMS);
        }
        ev
    }
}

impl Queue {
    pub(crate) fn new(capacity: usize, viewer: Option<&'static str>) -> Self {
        Queue {
            inner: Mutex::new(QueueState {
                // Grown on demand up to `capacity` and kept: a subscriber that keeps up holds a
                // few frames at a time, and thousands of RTMP players must not each hold a
                // full-length ring they never fill.
                items: VecDeque::with_capacity(capacity.min(INITIAL_ITEMS)),
                awaiting_keyframe: false,
                closed: false,
                detached: false,
                has_video: false,
            }),
            notify: Notify::new(),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
            viewer,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A poisoned lock only means another thread panicked mid-push; the queue itself is
        // still consistent (every mutation is a single VecDeque operation).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues new tracks. Never dropped: a subscriber must know what the frames mean.
    pub(crate) fn push_tracks(&self, tracks: Arc<Tracks>) {
        let mut q = self.lock();
        q.has_video = tracks.primary_video().is_some();
        // New tracks supersede whatever is still queued (frames of the old track set would be
        // cut at a discontinuity anyway); this keeps the queue bounded however often a
        // publisher re-announces.
        let superseded = q
            .items
            .iter()
            .filter(|e| matches!(e, Event::Frame(_)))
            .count() as u64;
        self.dropped.fetch_add(superseded, Ordering::Relaxed);
        q.items.clear();
        q.items.push_back(Event::Tracks(tracks));
        // A new track set starts at a keyframe from the publisher's side.
        q.awaiting_keyframe = q.has_video;
        drop(q);
        self.notify.notify_one();
    }

    /// Queues a frame, or drops it when the subscriber is behind. Returns false once the
    /// subscriber has gone away.
    pub(crate) fn push_frame(&self, frame: &Frame, is_video: bool) -> bool {
        let mut q = self.lock();
        if q.detached {
            return false;
        }
        let resumes = !q.has_video || (is_video && frame.keyframe);
        if q.awaiting_keyframe {
            if !resumes {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            q.awaiting_keyframe = false;
        }
        if q.items.len() >= self.capacity {
            let before = q.items.len();
            q.items.retain(|e| matches!(e, Event::Tracks(_)));
            let discarded = (before - q.items.len()) as u64;
            if !resumes {
                q.awaiting_keyframe = true;
                self.dropped.fetch_add(discarded + 1, Ordering::Relaxed);
                return true;
            }
            self.dropped.fetch_add(discarded, Ordering::Relaxed);
        }
        q.items.push_back(Event::Frame(frame.clone()));
        drop(q);
        self.notify.notify_one();
        true
    }

    /// Queues a frame from the GOP cache for a new subscriber, ignoring the capacity.
    pub(crate) fn prefill(&self, frame: &Frame) {
        let mut q = self.lock();
        q.awaiting_keyframe = false;
        q.items.push_back(Event::Frame(frame.clone()));
    }

    /// Marks the stream ended and wakes the subscriber.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    pub(crate) fn is_viewer(&self) -> bool {
        self.viewer.is_some()
    }

    pub(crate) fn viewer_protocol(&self) -> Option<&'static str> {
        self.viewer
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn is_detached(&self) -> bool {
        self.lock().detached
    }
}

/// The receiving end of one subscriber's queue. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    pub(crate) queue: Arc<Queue>,
}

impl Subscription {
    /// The next event, or `None` once the stream has ended and everything queued was read.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            let notified = self.queue.notify.notified();
            {
                let mut q = self.queue.lock();
                if let Some(ev) = q.pop() {
                    return Some(ev);
                }
                if q.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// The next event if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.queue.lock().pop()
    }

    /// Frames dropped for this subscriber because it fell behind.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped.load(Ordering::Relaxed)
    }

    /// Events waiting to be read.
    pub fn queued(&self) -> usize {
        self.queue.lock().items.len()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut q = self.queue.lock();
        q.detached = true;
        q.items.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::TrackId;
    use bytes::Bytes;

    fn frame(track: u8, dts: i64, keyframe: bool) -> Frame {
        Frame {
            track: TrackId(track),
            pts: dts,
            dts,
            keyframe,
            data: Bytes::from_static(b"x"),
        }
    }

    fn video_tracks() -> Arc<Tracks> {
        use crate::media::{CodecConfig, Track};
        let avc = crate::media::test_support::avc_config();
        Tracks::shared(vec![Track {
            id: TrackId(0),
            timescale: 1000,
            codec: CodecConfig::H264(avc),
        }])
    }

    fn frames(sub: &mut Subscription) -> Vec<i64> {
        let mut out = vec![];
        while let Some(ev) = sub.try_recv() {
            if let Event::Frame(f) = ev {
                out.push(f.dts);
            }
        }
        out
    }

    #[test]
    fn overflow_drops_until_next_keyframe_and_counts() {
        let q = Arc::new(Queue::new(4, Some("rtmp")));
        let mut sub = Subscription { queue: q.clone() };
        q.push_tracks(video_tracks());
        q.push_frame(&frame(0, 0, true), true);
        for i in 1..10 {
            q.push_frame(&frame(0, i, false), true);
        }
        // 0,1,2 fit (plus the tracks event = 4); 3 overflows: 0,1,2 and 3..9 are dropped.
        assert_eq!(sub.dropped(), 10);
        q.push_frame(&frame(0, 10, true), true);
        q.push_frame(&frame(0, 11, false), true);
        assert_eq!(frames(&mut sub), vec![10, 11]);
        assert_eq!(sub.dropped(), 10);
    }

    #[test]
    fn re_announcements_do_not_pile_up() {
        let q = Arc::new(Queue::new(8, Some("rtmp")));
        let sub = Subscription { queue: q.clone() };
        for i in 0..1000 {
            q.push_tracks(video_tracks());
            q.push_frame(&frame(0, i, true), true);
        }
        assert_eq!(sub.queued(), 2, "the latest tracks and what followed them");
        assert_eq!(sub.dropped(), 999);
    }

    #[test]
    fn waits_for_a_keyframe_after_new_tracks() {
        let q = Arc::new(Queue::new(8, Some("rtmp")));
        let mut sub = Subscription { queue: q.clone() };
        q.push_tracks(video_tracks());
        q.push_frame(&frame(0, 1, false), true);
        q.push_frame(&frame(0, 2, true), true);
        assert_eq!(frames(&mut sub), vec![2]);
    }

    #[test]
    fn detached_queue_reports_it() {
        let q = Arc::new(Queue::new(8, Some("rtmp")));
        let sub = Subscription { queue: q.clone() };
        drop(sub);
        assert!(!q.push_frame(&frame(0, 1, true), true));
        assert!(q.is_detached());
    }

    #[tokio::test]
    async fn recv_ends_after_close() {
        let q = Arc::new(Queue::new(8, Some("rtmp")));
        let mut sub = Subscription { queue: q.clone() };
        q.push_tracks(video_tracks());
        q.push_frame(&frame(0, 1, true), true);
        q.close();
        assert!(matches!(sub.recv().await, Some(Event::Tracks(_))));
        assert!(matches!(sub.recv().await, Some(Event::Frame(_))));
        assert!(sub.recv().await.is_none());
    }
}
