//! The LL-HLS segmenter: turns one stream's hub events into an init segment, ~200 ms parts
//! and keyframe-aligned ~2 s segments, all kept in memory as shared `Bytes`, plus the
//! playlist model that describes them.
//!
//! Sans-IO: [`Segmenter::push_tracks`], [`Segmenter::push_frame`] and [`Segmenter::finish`]
//! take the wall-clock `now` (used only for `EXT-X-PROGRAM-DATE-TIME`); media timing comes from
//! the frames. One segmenter serves every viewer of a stream; [`super::HlsStream`] wraps it in
//! a lock and a change notification.
//!
//! Timing rules: the segment and part clock is the video track (the audio track for
//! audio-only streams). A sample's duration is known when the next sample of its track
//! arrives, so each track holds back one frame. A part closes before the frame that would make
//! it longer than the part target; a segment closes before a keyframe once it has reached the
//! segment target. A publisher that reconnects (new tracks) continues the same timeline: its
//! timestamps are shifted to follow on from where the previous session stopped, and the next
//! segment carries a discontinuity and, if needed, a new init segment.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;

use crate::zerocopy::Arena;

use crate::media::{Frame, Track, TrackKind, Tracks};
use crate::proto::fmp4::{self, Chunks, Sample, TrackRun};
use crate::proto::playlist::{MediaPlaylist, OpenSegment, PartEntry, SegmentEntry, Variant};
use crate::proto::relay::{ClosedSegment, HlsSeed, HlsUpdate};

/// Segmenter settings, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct SegmenterConfig {
    /// Target part duration.
    pub part_target: f64,
    /// Target segment duration.
    pub segment_target: f64,
    /// Complete segments kept.
    pub window: usize,
}

/// Per-track state of the current session.
#[derive(Debug, Clone)]
struct TrackState {
    track: Track,
    /// Added to every source dts/pts so the timeline continues across reconnects.
    offset: Option<i64>,
    /// The frame whose duration is not known yet.
    held: Option<Frame>,
    /// The last known sample duration, used to estimate durations at the end.
    last_duration: i64,
    /// Samples of the part being built.
    samples: Vec<Sample>,
    /// Decode time of `samples[0]`.
    part_base: i64,
    /// Where this track's timeline ends (dts + duration of the last sample), adjusted.
    end: i64,
}

/// Stored bytes of one segment.
#[derive(Debug, Clone)]
struct StoredSegment {
    msn: u64,
    init_id: u32,
    parts: Vec<StoredPart>,
    /// Bytes of all its parts and its duration (seconds), for `BANDWIDTH`.
    bytes: usize,
    duration: f64,
}

/// A finished part: its pieces as muxed (headers plus sample payloads shared with the hub),
/// joined into one buffer the first time a viewer asks for it, so that it goes to every
/// viewer in one write instead of one small write per sample. The buffer lies in the
/// stream's memfd arena ([`crate::zerocopy`]), so the HTTP socket sends it with
/// `sendfile` (on the heap where no memfd can be made). A stream nobody watches over HLS
/// never pays for the copy.
#[derive(Debug, Clone)]
struct StoredPart {
    pieces: Chunks,
    joined: Arc<std::sync::OnceLock<Bytes>>,
}

impl StoredPart {
    fn from_bytes(b: Bytes) -> Self {
        let mut pieces = Chunks::default();
        pieces.push(b);
        StoredPart::new(pieces)
    }

    fn new(pieces: Chunks) -> Self {
        StoredPart {
            pieces,
            joined: Arc::default(),
        }
    }

    /// The part as one buffer, joined on first use.
    fn served(&self, arena: &Mutex<Arena>) -> Chunks {
        let bytes = self
            .joined
            .get_or_init(|| {
                arena
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .copy(&self.pieces.parts)
                    .unwrap_or_else(|| self.pieces.joined())
            })
            .clone();
        let mut out = Chunks::default();
        out.push(bytes);
        out
    }
}

/// One stream's LL-HLS packager.
#[derive(Debug)]
pub struct Segmenter {
    cfg: SegmenterConfig,
    tracks: Vec<TrackState>,
    /// Index in `tracks` of the track that drives parts and segments.
    driver: usize,
    /// Source time (seconds) of the first frame of this session.
    origin: Option<f64>,
    /// Timeline position (seconds) where this session starts.
    resume_at: f64,
    model: MediaPlaylist,
    stored: VecDeque<StoredSegment>,
    open_parts: Vec<StoredPart>,
    /// Where served parts are joined (memfd regions for `sendfile`).
    arena: Mutex<Arena>,
    inits: Vec<(u32, Bytes)>,
    init_id: Option<u32>,
    next_init_id: u32,
    next_msn: u64,
    fragment_seq: u32,
    /// Start (driver ticks) of the open segment and part.
    segment_start: i64,
    part_start: i64,
    part_independent: bool,
    pending_discontinuity: bool,
    variant: Option<Variant>,
    /// Bumped whenever the playlist changes (a part, a segment, new tracks, the end): the
    /// HTTP layer renders each revision once and wakes blocked requests only on a change.
    revision: u64,
    /// A keyframe is wanted (the open segment reached its target without one); taken by
    /// [`Segmenter::take_keyframe_request`].
    keyframe_request: bool,
    /// Driver time (ticks) of the last keyframe request in the open segment.
    keyframe_requested_at: Option<i64>,
    /// A copy of another node's packaging ([`Segmenter::apply_mirror`]) rather than packaged
    /// here; taken over by the first tracks pushed (this node became the owner).
    mirror: bool,
}

/// What one mirror has been sent of a segmenter ([`Segmenter::mirror_update`]).
#[derive(Debug, Default, Clone)]
pub struct MirrorCursor {
    started: bool,
    revision: u64,
    last_closed: Option<u64>,
    /// The open segment and how many of its parts were sent.
    open: Option<(u64, usize)>,
    inits: Vec<u32>,
    /// The last update stopped at [`MIRROR_UPDATE_BYTES`]; more follows at once.
    partial: bool,
}

impl MirrorCursor {
    /// Whether everything up to the segmenter's current revision was sent.
    pub fn is_complete(&self) -> bool {
        self.started && !self.partial
    }
}

/// An update carries about this many bytes, plus at most one segment (≤ 10 s, the forced
/// cut) or the open segment's parts, so a first copy of a high-bitrate stream goes as several
/// messages, each well under the relay's message limit below 50 Mbit/s.
const MIRROR_UPDATE_BYTES: usize = 4 << 20;

/// Why a mirror update does not fit the mirror (it then asks for a fresh copy).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("hls mirror out of step: {0}")]
pub struct MirrorError(&'static str);

impl MirrorError {
    pub(crate) fn new(why: &'static str) -> Self {
        MirrorError(why)
    }
}

impl Segmenter {
    /// An empty copy of another node's packaging, waiting for its first update.
    pub fn new_mirror(cfg: SegmenterConfig) -> Self {
        let mut s = Segmenter::new(cfg);
        s.mirror = true;
        s
    }

    /// An empty segmenter.
    pub fn new(cfg: SegmenterConfig) -> Self {
        Segmenter {
            cfg,
            tracks: Vec::new(),
            driver: 0,
            origin: None,
            resume_at: 0.0,
            model: MediaPlaylist {
                part_target: cfg.part_target,
                segment_target: cfg.segment_target,
                discontinuity_sequence: 0,
                segments: Vec::new(),
                open: None,
                ended: false,
                longest_segment: 0.0,
                prefix: String::new(),
            },
            stored: VecDeque::new(),
            open_parts: Vec::new(),
            arena: Mutex::default(),
            inits: Vec::new(),
            init_id: None,
            next_init_id: 0,
            next_msn: 0,
            fragment_seq: 1,
            segment_start: 0,
            part_start: 0,
            part_independent: false,
            pending_discontinuity: false,
            variant: None,
            revision: 0,
            keyframe_request: false,
            keyframe_requested_at: None,
            mirror: false,
        }
    }

    /// Names every init, segment and part with `prefix` (the playlist's run id).
    pub fn with_prefix(mut self, prefix: String) -> Self {
        self.model.prefix = prefix;
        self
    }

    /// The run id in the names of this playlist's objects (the prefix without its dash).
    pub fn run(&self) -> &str {
        self.model.prefix.trim_end_matches('-')
    }

    /// Changes with every part, segment, track change and end of the playlist.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Whether the publisher should be asked for a keyframe now (returns `true` once per
    /// request): the open segment has reached its target and no keyframe came to cut it.
    /// Asked again every segment target while none comes.
    pub fn take_keyframe_request(&mut self) -> bool {
        std::mem::take(&mut self.keyframe_request)
    }

    /// Whether at least one complete segment is listed: a client that does not speak LL-HLS
    /// (ffmpeg, VLC, most TVs) can start from the playlist.
    pub fn has_complete_segment(&self) -> bool {
        !self.model.segments.is_empty()
    }

    /// The playlist model (render it with [`MediaPlaylist::render`]).
    pub fn playlist(&self) -> &MediaPlaylist {
        &self.model
    }

    /// The multivariant entry for this stream, once tracks are known: `BANDWIDTH` is the
    /// largest segment bitrate in the window, `AVERAGE-BANDWIDTH` the window's average
    /// (both `None`/0 before the first complete segment).
    pub fn variant(&self) -> Option<Variant> {
        let (bytes, secs) = self
            .listed()
            .fold((0usize, 0.0f64), |(b, d), s| (b + s.bytes, d + s.duration));
        let peak = self
            .listed()
            .filter(|s| s.duration > 0.0)
            .map(|s| (s.bytes as f64 * 8.0 / s.duration).ceil() as u64)
            .max()
            .unwrap_or(0);
        self.variant.clone().map(|mut v| {
            v.bandwidth = peak;
            v.average_bandwidth = (secs > 0.0).then(|| (bytes as f64 * 8.0 / secs).ceil() as u64);
            v
        })
    }

    /// An init segment by id.
    pub fn init(&self, id: u32) -> Option<Bytes> {
        self.inits
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, b)| b.clone())
    }

    /// A complete segment's bytes.
    pub fn segment(&self, msn: u64) -> Option<Chunks> {
        let seg = self.stored.iter().find(|s| s.msn == msn)?;
        let mut out = Chunks::default();
        for p in &seg.parts {
            out.extend(&p.served(&self.arena));
        }
        Some(out)
    }

    fn stored_part(&self, msn: u64, index: usize) -> Option<&StoredPart> {
        if self.model.open.as_ref().is_some_and(|o| o.msn == msn) {
            return self.open_parts.get(index);
        }
        self.stored
            .iter()
            .find(|s| s.msn == msn)
            .and_then(|s| s.parts.get(index))
    }

    /// A part's bytes (of a complete segment or the open one) as muxed, in pieces.
    pub fn part(&self, msn: u64, index: usize) -> Option<Chunks> {
        self.stored_part(msn, index).map(|p| p.pieces.clone())
    }

    /// A part's bytes for a viewer: one buffer, joined once and shared by every viewer.
    pub fn serve_part(&self, msn: u64, index: usize) -> Option<Chunks> {
        self.stored_part(msn, index).map(|p| p.served(&self.arena))
    }

    /// Whether this is a copy of another node's packaging.
    pub fn is_mirror(&self) -> bool {
        self.mirror
    }

    /// What changed since `cursor` (everything, the first time), for a mirror on another
    /// node; `None` when nothing did. Advances the cursor.
    pub fn mirror_update(&self, cursor: &mut MirrorCursor) -> Option<HlsUpdate> {
        if cursor.is_complete() && cursor.revision == self.revision {
            return None;
        }
        let reset = !cursor.started;
        if reset {
            *cursor = MirrorCursor {
                started: true,
                ..MirrorCursor::default()
            };
        }
        cursor.revision = self.revision;
        let mut data = Vec::new();
        let mut inits = Vec::new();
        for (id, bytes) in &self.inits {
            if !cursor.inits.contains(id) {
                inits.push(*id);
                data.push(bytes.clone());
                cursor.inits.push(*id);
            }
        }
        cursor
            .inits
            .retain(|id| self.inits.iter().any(|(i, _)| i == id));
        // Joined once and shared with this node's HTTP viewers (no copy per relay).
        let part_bytes = |p: &StoredPart| p.served(&self.arena).joined();
        let full =
            |data: &[Bytes]| data.iter().map(Bytes::len).sum::<usize>() >= MIRROR_UPDATE_BYTES;
        cursor.partial = false;
        let mut closed = Vec::new();
        for seg in &self.stored {
            if cursor.last_closed.is_some_and(|m| seg.msn <= m) {
                continue;
            }
            if full(&data) {
                cursor.partial = true;
                break;
            }
            let first = match cursor.open {
                Some((msn, n)) if msn == seg.msn => n.min(seg.parts.len()),
                _ => 0,
            };
            data.extend(seg.parts[first..].iter().map(part_bytes));
            closed.push(ClosedSegment {
                msn: seg.msn,
                init_id: seg.init_id,
                duration: seg.duration,
                first_part: first,
                parts: seg.parts.len() - first,
            });
            cursor.last_closed = Some(seg.msn);
        }
        if !cursor.partial && full(&data) {
            cursor.partial = true;
        }
        let (open_first_part, open_parts) = match &self.model.open {
            Some(open) if !cursor.partial => {
                let first = match cursor.open {
                    Some((msn, n)) if msn == open.msn => n.min(self.open_parts.len()),
                    _ => 0,
                };
                data.extend(self.open_parts[first..].iter().map(part_bytes));
                cursor.open = Some((open.msn, self.open_parts.len()));
                (first, self.open_parts.len() - first)
            }
            Some(open) => match cursor.open {
                // Nothing new of it this time.
                Some((msn, n)) if msn == open.msn => (n, 0),
                _ => (0, 0),
            },
            None => {
                cursor.open = None;
                (0, 0)
            }
        };
        Some(HlsUpdate {
            reset,
            playlist: self.model.clone(),
            variant: self.variant.clone(),
            inits,
            closed,
            open_first_part,
            open_parts,
            data,
        })
    }

    /// Applies an update from the owner's segmenter: this one becomes (or stays) a byte-exact
    /// copy of it — same names, msns, discontinuity sequence, parts and segments. An update
    /// that does not follow the last one is refused; the mirror then asks for a fresh copy.
    pub fn apply_mirror(&mut self, update: HlsUpdate) -> Result<(), MirrorError> {
        let HlsUpdate {
            reset,
            playlist,
            variant,
            inits,
            closed,
            open_first_part,
            open_parts,
            data,
        } = update;
        if !reset && !self.mirror {
            return Err(MirrorError("an update before the first copy"));
        }
        if reset {
            self.stored.clear();
            self.open_parts.clear();
            self.inits.clear();
            self.tracks.clear();
            self.model.open = None;
        }
        let mut blobs = data.into_iter();
        let mut next_blob = || {
            blobs
                .next()
                .ok_or(MirrorError("fewer blobs than announced"))
        };
        for id in &inits {
            let b = next_blob()?;
            self.inits.retain(|(i, _)| i != id);
            self.inits.push((*id, b));
        }
        let mut open_msn = self.model.open.as_ref().map(|o| o.msn);
        for c in &closed {
            let mut parts = if open_msn == Some(c.msn) {
                open_msn = None;
                std::mem::take(&mut self.open_parts)
            } else {
                Vec::new()
            };
            if parts.len() != c.first_part || self.stored.back().is_some_and(|s| s.msn >= c.msn) {
                return Err(MirrorError("a closed segment out of order"));
            }
            for _ in 0..c.parts {
                parts.push(StoredPart::from_bytes(next_blob()?));
            }
            self.stored.push_back(StoredSegment {
                msn: c.msn,
                init_id: c.init_id,
                bytes: parts.iter().map(|p| p.pieces.len).sum(),
                parts,
                duration: c.duration,
            });
        }
        match &playlist.open {
            Some(open) => {
                if open_msn != Some(open.msn) {
                    self.open_parts.clear();
                }
                if self.open_parts.len() != open_first_part {
                    return Err(MirrorError("open parts out of step"));
                }
                for _ in 0..open_parts {
                    self.open_parts.push(StoredPart::from_bytes(next_blob()?));
                }
            }
            None => self.open_parts.clear(),
        }
        self.mirror = true;
        self.model = playlist;
        self.variant = variant;
        self.next_msn = self.model.next_msn();
        while self.stored.len() > self.cfg.window * 2 + 1 {
            self.stored.pop_front();
        }
        let newest_init = self.inits.iter().map(|(i, _)| *i).max();
        let mut used: Vec<u32> = self.stored.iter().map(|s| s.init_id).collect();
        used.extend(self.model.open.as_ref().map(|o| o.init_id));
        used.extend(newest_init);
        self.inits.retain(|(id, _)| used.contains(id));
        self.revision += 1;
        Ok(())
    }

    /// Where this playlist stands, for an owner that continues it ([`Segmenter::seed`]).
    pub fn continuation(&self) -> Option<HlsSeed> {
        let run = self.run();
        if run.is_empty() || (self.model.segments.is_empty() && self.model.open.is_none()) {
            return None;
        }
        // The open segment's msn is not reused: another node may hold parts of it; nor one
        // skipped when this copy was taken over.
        let next_msn = match &self.model.open {
            Some(o) => o.msn + 1,
            None => self.model.next_msn(),
        }
        .max(self.next_msn);
        let tags = self
            .model
            .segments
            .iter()
            .skip(1)
            .filter(|s| s.discontinuity)
            .count()
            + usize::from(
                self.model
                    .open
                    .as_ref()
                    .is_some_and(|o| o.discontinuity && !self.model.segments.is_empty()),
            );
        let next_init_id = self
            .inits
            .iter()
            .map(|(i, _)| *i)
            .chain(self.model.segments.iter().map(|s| s.init_id))
            .chain(self.model.open.as_ref().map(|o| o.init_id))
            .max()
            .map_or(0, |i| i.saturating_add(1));
        Some(HlsSeed {
            run: run.to_owned(),
            next_msn,
            discontinuity_sequence: self.model.discontinuity_sequence + tags as u64,
            next_init_id,
        })
    }

    /// Continues another node's playlist (a failover: this node's first copy of the stream):
    /// the same run, msns from `seed.next_msn` on, a discontinuity first. Only a segmenter
    /// that has produced nothing yet is seeded; a malformed seed is ignored.
    pub fn seed(&mut self, seed: &HlsSeed) {
        // Nothing named yet (an empty copy waiting for its first update counts as fresh).
        let fresh = self.next_msn == 0
            && self.model.open.is_none()
            && self.model.segments.is_empty()
            && self.inits.is_empty();
        let run_ok = !seed.run.is_empty()
            && seed.run.len() <= 16
            && seed.run.bytes().all(|b| b.is_ascii_hexdigit());
        if !fresh || !run_ok || seed.next_msn > u64::MAX / 2 {
            return;
        }
        self.mirror = false;
        self.model.prefix = format!("{}-", seed.run);
        self.next_msn = seed.next_msn;
        self.next_init_id = seed.next_init_id.min(u32::MAX / 2);
        // The first segment follows a discontinuity; being the oldest listed, its tag is
        // counted in the sequence instead of shown.
        self.model.discontinuity_sequence = seed.discontinuity_sequence.saturating_add(1);
        self.pending_discontinuity = true;
        self.revision += 1;
    }

    /// This node became the owner of a stream it mirrored: the mirrored open segment is
    /// closed with the parts that arrived, and local packaging continues after it with a
    /// discontinuity (same run, later msns, new init ids).
    fn adopt_mirror(&mut self) {
        self.mirror = false;
        self.next_msn = self.close_mirrored_segment();
        self.next_init_id = self
            .inits
            .iter()
            .map(|(i, _)| *i)
            .chain(self.model.segments.iter().map(|s| s.init_id))
            .max()
            .map_or(0, |i| i.saturating_add(1));
        self.pending_discontinuity = self.next_msn > 0;
        self.model.ended = false;
        self.origin = None;
        self.resume_at = 0.0;
        self.trim_window();
    }

    /// Closes a mirrored open segment with the parts that arrived; returns the msn the next
    /// segment may use (not the open one's: another node may hold more of its parts).
    fn close_mirrored_segment(&mut self) -> u64 {
        let mut next_msn = self.model.next_msn();
        if let Some(mut open) = self.model.open.take() {
            next_msn = open.msn + 1;
            let parts = std::mem::take(&mut self.open_parts);
            if !parts.is_empty() {
                // Only the parts whose bytes arrived are listed.
                open.parts.truncate(parts.len());
                let duration: f64 = open.parts.iter().map(|p| p.duration).sum();
                self.list_segment(open, parts, duration);
            }
        }
        next_msn
    }

    /// Lists a closed segment and keeps its parts' bytes.
    fn list_segment(&mut self, open: OpenSegment, parts: Vec<StoredPart>, duration: f64) {
        self.model.longest_segment = self.model.longest_segment.max(duration);
        self.revision += 1;
        self.stored.push_back(StoredSegment {
            msn: open.msn,
            init_id: open.init_id,
            bytes: parts.iter().map(|p| p.pieces.len).sum(),
            parts,
            duration,
        });
        self.model.segments.push(SegmentEntry {
            msn: open.msn,
            duration,
            program_date_time: open.program_date_time,
            discontinuity: open.discontinuity,
            init_id: open.init_id,
            parts: open.parts,
        });
    }

    /// New tracks from the publisher: the first announcement, or a reconnect / codec change,
    /// which closes what is open and starts a discontinuity.
    pub fn push_tracks(&mut self, tracks: Arc<Tracks>) -> Result<(), fmp4::Fmp4Error> {
        if self.mirror {
            self.adopt_mirror();
        }
        if !self.tracks.is_empty() {
            self.flush();
            self.pending_discontinuity = self.next_msn > 0;
        }
        self.revision += 1;
        self.model.ended = false;
        // Camera JPEG tracks are served as MJPEG; HLS carries the packaged ones.
        let tracks = Arc::new(tracks.packaged());
        if tracks.list.is_empty() {
            self.tracks.clear();
            self.variant = None;
            return Ok(());
        }
        let init = fmp4::init_segment(&tracks)?;
        let id = self.next_init_id;
        self.next_init_id += 1;
        self.inits.push((id, init));
        self.init_id = Some(id);
        self.tracks = tracks
            .list
            .iter()
            .map(|t| TrackState {
                track: t.clone(),
                offset: None,
                held: None,
                last_duration: 0,
                samples: Vec::new(),
                part_base: 0,
                end: 0,
            })
            .collect();
        self.driver = self
            .tracks
            .iter()
            .position(|t| t.track.kind() == TrackKind::Video)
            .unwrap_or(0);
        self.origin = None;
        self.variant = Some(Variant {
            bandwidth: 0,
            average_bandwidth: None,
            codecs: tracks.list.iter().map(|t| t.codec.codec_string()).collect(),
            resolution: tracks
                .first(TrackKind::Video)
                .and_then(|t| t.codec.video_info())
                .filter(|i| i.width > 0 && i.height > 0)
                .map(|i| (i.width, i.height)),
            frame_rate: tracks
                .first(TrackKind::Video)
                .and_then(|t| t.codec.video_info())
                .and_then(|i| i.fps),
            uri: "media.m3u8".into(),
        });
        Ok(())
    }

    /// Adds one frame. Frames before the first keyframe of the clock track are skipped.
    pub fn push_frame(&mut self, frame: Frame, now: SystemTime) -> Result<(), fmp4::Fmp4Error> {
        let Some(idx) = self.tracks.iter().position(|t| t.track.id == frame.track) else {
            return Ok(());
        };
        let is_driver = idx == self.driver;
        if self.model.open.is_none() {
            if !is_driver || !frame.keyframe {
                return Ok(());
            }
            if self.origin.is_none() {
                let ts = f64::from(self.tracks[idx].track.timescale.max(1));
                self.origin = Some(frame.dts as f64 / ts);
            }
        }
        let frame = self.adjust(idx, frame);
        if frame.dts < 0 {
            return Ok(());
        }
        if is_driver {
            self.resolve_held(idx, frame.dts);
            if self.model.open.is_none() {
                self.open_segment(frame.dts, now);
            } else {
                self.cut_if_due(&frame, now)?;
                self.place_open_segment(frame.dts, now);
            }
        } else {
            self.resolve_held(idx, frame.dts);
        }
        self.tracks[idx].held = Some(frame);
        Ok(())
    }

    /// The publisher left: everything held is written out and the open segment closed.
    /// `ended` adds `EXT-X-ENDLIST` (after the reconnect grace period, or on shutdown).
    pub fn finish(&mut self, ended: bool) {
        if self.mirror {
            // The owner's last updates never came (it died): what arrived is closed here.
            self.next_msn = self.close_mirrored_segment();
            self.trim_window();
        }
        self.flush();
        if ended {
            self.model.ended = true;
        }
        self.revision += 1;
    }

    /// Whether the playlist carries `EXT-X-ENDLIST`.
    pub fn is_ended(&self) -> bool {
        self.model.ended
    }

    /// Shifts a frame onto the continuous timeline and keeps dts increasing.
    fn adjust(&mut self, idx: usize, mut frame: Frame) -> Frame {
        let origin = self.origin.unwrap_or(0.0);
        let resume_at = self.resume_at;
        let t = &mut self.tracks[idx];
        let ts = f64::from(t.track.timescale.max(1));
        let offset = *t
            .offset
            .get_or_insert_with(|| ((resume_at - origin) * ts).round() as i64);
        frame.dts = frame.dts.saturating_add(offset);
        frame.pts = frame.pts.saturating_add(offset);
        if let Some(held) = &t.held {
            if frame.dts <= held.dts {
                // Non-monotonic input: keep decode order strictly increasing.
                let shift = held.dts + 1 - frame.dts;
                frame.dts += shift;
                frame.pts += shift;
            }
        }
        frame
    }

    /// The held frame of track `idx` gets its duration from `next_dts` and joins the part.
    fn resolve_held(&mut self, idx: usize, next_dts: i64) {
        let t = &mut self.tracks[idx];
        let Some(held) = t.held.take() else {
            return;
        };
        let duration = (next_dts - held.dts).clamp(1, i64::from(u32::MAX));
        t.last_duration = duration;
        push_sample(t, held, duration);
    }

    fn open_segment(&mut self, start: i64, now: SystemTime) {
        let discontinuity = std::mem::take(&mut self.pending_discontinuity);
        self.model.open = Some(OpenSegment {
            msn: self.next_msn,
            program_date_time: now,
            discontinuity,
            init_id: self.init_id.unwrap_or(0),
            parts: Vec::new(),
        });
        self.segment_start = start;
        self.part_start = start;
        self.part_independent = true;
        self.keyframe_requested_at = None;
        self.revision += 1;
    }

    /// Keeps the open segment's `EXT-X-PROGRAM-DATE-TIME` on the wall clock of the live edge:
    /// frames replayed from the GOP cache (a stream packaged on demand) arrive all at once,
    /// so the time its first frame was seen is later than the time it was taken. A later
    /// frame that shows the segment began earlier (by more than 100 ms, above network jitter)
    /// moves it back.
    fn place_open_segment(&mut self, dts: i64, now: SystemTime) {
        let ts = f64::from(self.tracks[self.driver].track.timescale.max(1));
        let into = ((dts - self.segment_start).max(0) as f64 / ts).max(0.0);
        let Some(open) = self.model.open.as_mut() else {
            return;
        };
        if let Some(start) = now.checked_sub(std::time::Duration::from_secs_f64(into)) {
            if open
                .program_date_time
                .duration_since(start)
                .is_ok_and(|d| d > std::time::Duration::from_millis(100))
            {
                open.program_date_time = start;
            }
        }
    }

    fn cut_if_due(&mut self, frame: &Frame, now: SystemTime) -> Result<(), fmp4::Fmp4Error> {
        let ts = f64::from(self.tracks[self.driver].track.timescale.max(1));
        let segment_len = (frame.dts - self.segment_start) as f64 / ts;
        // A publisher that stops sending keyframes must not grow one segment forever: past
        // this length the segment is cut anyway (the next one starts without a keyframe).
        let forced = segment_len >= (4.0 * self.cfg.segment_target).max(10.0);
        if forced && !frame.keyframe {
            tracing::warn!("hls: no keyframe for {segment_len:.1} s; cutting the segment anyway");
        }
        if (frame.keyframe || forced) && segment_len >= self.cfg.segment_target - 0.001 {
            self.close_part(frame.dts)?;
            self.close_segment(frame.dts);
            self.open_segment(frame.dts, now);
            self.part_independent = frame.keyframe;
            return Ok(());
        }
        // The segment is due and no keyframe came: ask the publisher for one (WebRTC
        // publishers answer a PLI within a frame or two; RTMP publishers cannot be asked).
        // Asked again every segment target while none comes.
        let due = (self.cfg.segment_target * ts) as i64;
        if !frame.keyframe
            && segment_len >= self.cfg.segment_target - 0.001
            && self
                .keyframe_requested_at
                .is_none_or(|at| frame.dts - at >= due.max(1))
        {
            self.keyframe_request = true;
            self.keyframe_requested_at = Some(frame.dts);
        }
        let estimate = self.tracks[self.driver].last_duration;
        let part_len = (frame.dts + estimate - self.part_start) as f64 / ts;
        if part_len > self.cfg.part_target + 0.001 {
            self.close_part(frame.dts)?;
            self.part_start = frame.dts;
            self.part_independent = frame.keyframe;
        }
        Ok(())
    }

    /// Muxes the samples gathered since the last part into a fragment.
    fn close_part(&mut self, end: i64) -> Result<(), fmp4::Fmp4Error> {
        let Some(open) = self.model.open.as_mut() else {
            return Ok(());
        };
        if self.tracks.iter().all(|t| t.samples.is_empty()) {
            return Ok(());
        }
        let runs: Vec<TrackRun<'_>> = self
            .tracks
            .iter()
            .map(|t| TrackRun {
                track_id: fmp4::mp4_track_id(&t.track),
                base_decode_time: u64::try_from(t.part_base).unwrap_or(0),
                samples: &t.samples,
            })
            .collect();
        let chunks = fmp4::fragment(self.fragment_seq, &runs)?;
        self.fragment_seq = self.fragment_seq.wrapping_add(1);
        for t in &mut self.tracks {
            t.samples.clear();
        }
        let ts = f64::from(self.tracks[self.driver].track.timescale.max(1));
        open.parts.push(PartEntry {
            duration: (end - self.part_start).max(0) as f64 / ts,
            independent: self.part_independent,
        });
        self.open_parts.push(StoredPart::new(chunks));
        self.revision += 1;
        Ok(())
    }

    fn close_segment(&mut self, end: i64) {
        let Some(open) = self.model.open.take() else {
            return;
        };
        let parts = std::mem::take(&mut self.open_parts);
        if parts.is_empty() {
            return;
        }
        let ts = f64::from(self.tracks[self.driver].track.timescale.max(1));
        let duration = (end - self.segment_start).max(0) as f64 / ts;
        self.next_msn = open.msn + 1;
        self.list_segment(open, parts, duration);
        self.trim_window();
    }

    fn trim_window(&mut self) {
        while self.model.segments.len() > self.cfg.window {
            self.model.segments.remove(0);
            // A discontinuity that leaves the window is counted in the sequence tag; the
            // oldest listed segment never shows its own discontinuity tag.
            if self.model.segments.first().is_some_and(|s| s.discontinuity) {
                self.model.discontinuity_sequence += 1;
            }
        }
        // RFC 8216 6.2.2: a segment removed from the playlist stays available for its own
        // duration plus the longest playlist that listed it, for a player that loaded the
        // playlist just before the slide: one window and one segment more.
        while self.stored.len() > self.cfg.window * 2 + 1 {
            self.stored.pop_front();
        }
        let mut used: Vec<u32> = self.stored.iter().map(|s| s.init_id).collect();
        used.extend(self.model.open.as_ref().map(|o| o.init_id));
        used.extend(self.init_id);
        self.inits.retain(|(id, _)| used.contains(id));
    }

    /// Stored segments still listed in the playlist (the rest are kept only for late
    /// requests).
    fn listed(&self) -> impl Iterator<Item = &StoredSegment> {
        let first = self.model.segments.first().map_or(u64::MAX, |s| s.msn);
        self.stored.iter().filter(move |s| s.msn >= first)
    }

    /// Writes out held frames with estimated durations and closes the open segment.
    fn flush(&mut self) {
        for t in &mut self.tracks {
            if let Some(held) = t.held.take() {
                let duration = if t.last_duration > 0 {
                    t.last_duration
                } else {
                    i64::from(t.track.timescale / 30).max(1)
                };
                push_sample(t, held, duration);
            }
        }
        let Some(driver) = self.tracks.get(self.driver) else {
            return;
        };
        let end = driver.end;
        let ts = f64::from(driver.track.timescale.max(1));
        if self.model.open.is_some() {
            // A failed mux here only loses the tail of a session that is ending anyway.
            let _ = self.close_part(end);
            self.close_segment(end);
        }
        self.resume_at = self.resume_at.max(end as f64 / ts);
        for t in &mut self.tracks {
            t.samples.clear();
        }
    }
}

fn push_sample(t: &mut TrackState, frame: Frame, duration: i64) {
    if t.samples.is_empty() {
        t.part_base = frame.dts;
    }
    t.end = frame.dts + duration;
    let cts = (frame.pts - frame.dts).clamp(i64::from(i32::MIN), i64::from(i32::MAX));
    t.samples.push(Sample {
        duration: duration as u32,
        composition_offset: cts as i32,
        keyframe: frame.keyframe,
        data: frame.data,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::test_support::av_tracks;
    use crate::media::TrackId;
    use std::time::{Duration, UNIX_EPOCH};

    const CFG: SegmenterConfig = SegmenterConfig {
        part_target: 0.2,
        segment_target: 2.0,
        window: 4,
    };

    fn now(ms: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms as u64)
    }

    /// 30 fps video with B-frames (decode order I P B B ..., GOP of `gop` frames) and
    /// 44.1 kHz AAC in ms, interleaved by dts, starting at `t0` ms.
    fn feed(seg: &mut Segmenter, t0: i64, secs: i64, gop: i64) {
        let mut events: Vec<Frame> = vec![];
        let frames = secs * 30;
        for i in 0..frames {
            let dts = t0 + i * 1000 / 30;
            // pts of a IPBB pattern: P is shown 2 frames later, Bs 1 frame earlier.
            let cts = if i % gop == 0 {
                33
            } else if i % 3 == 1 {
                100
            } else {
                0
            };
            events.push(Frame {
                track: TrackId(0),
                dts,
                pts: dts + cts,
                keyframe: i % gop == 0,
                data: Bytes::from(vec![0x17u8; 100]),
            });
        }
        let mut a = 0i64;
        while a * 1024 * 1000 / 44100 < secs * 1000 {
            let dts = t0 + a * 1024 * 1000 / 44100;
            events.push(Frame {
                track: TrackId(1),
                dts,
                pts: dts,
                keyframe: true,
                data: Bytes::from(vec![0xAFu8; 20]),
            });
            a += 1;
        }
        events.sort_by_key(|f| f.dts);
        for f in events {
            let t = f.dts;
            seg.push_frame(f, now(t)).unwrap();
        }
    }

    #[test]
    fn segments_cut_on_keyframes_and_parts_near_target() {
        let mut seg = Segmenter::new(CFG);
        seg.push_tracks(Arc::new(av_tracks())).unwrap();
        feed(&mut seg, 0, 10, 60);
        seg.finish(true);
        let pl = seg.playlist();
        // 10 s with a keyframe every 2 s: 5 segments of 2 s, the window keeps the last 4.
        assert_eq!(pl.segments.len(), 4);
        assert_eq!(pl.media_sequence(), 1);
        for s in &pl.segments {
            assert!(
                (s.duration - 2.0).abs() < 0.05,
                "segment {}: {}",
                s.msn,
                s.duration
            );
            assert!(s.parts[0].independent);
            assert!(s.parts[1..].iter().all(|p| !p.independent));
            let total: f64 = s.parts.iter().map(|p| p.duration).sum();
            assert!((total - s.duration).abs() < 1e-6);
            for p in &s.parts {
                assert!(p.duration <= 0.2 + 1e-9, "part of {}", p.duration);
                assert!(p.duration >= 0.1, "part of {}", p.duration);
            }
        }
        assert!(seg.is_ended());
        assert!(pl.render().ends_with("#EXT-X-ENDLIST\n"));
        // Segment bytes are its parts' bytes.
        let s4 = seg.segment(4).unwrap();
        let parts_len: usize = (0..pl.segments[3].parts.len())
            .map(|i| seg.part(4, i).unwrap().len)
            .sum();
        assert_eq!(s4.len, parts_len);
        // Segment 0 left the playlist but stays fetchable for a late player (RFC 8216
        // 6.2.2) until a window and one segment more have passed.
        assert!(seg.segment(0).is_some(), "kept after the slide");
        let mut seg = Segmenter::new(CFG);
        seg.push_tracks(Arc::new(av_tracks())).unwrap();
        feed(&mut seg, 0, 22, 60);
        seg.finish(true);
        assert_eq!(seg.playlist().media_sequence(), 7);
        assert!(
            seg.segment(1).is_none(),
            "gone a window and a segment later"
        );
        assert!(seg.segment(2).is_some());
        assert!(seg.part(2, 0).is_some());
    }

    #[test]
    fn long_gop_makes_long_segments() {
        let mut seg = Segmenter::new(CFG);
        seg.push_tracks(Arc::new(av_tracks())).unwrap();
        feed(&mut seg, 0, 9, 90);
        seg.finish(true);
        let durations: Vec<f64> = seg.playlist().segments.iter().map(|s| s.duration).collect();
        assert_eq!(durations.len(), 3);
        assert!(
            durations.iter().all(|d| (d - 3.0).abs() < 0.05),
            "{durations:?}"
        );
        assert_eq!(seg.playlist().target_duration(), 3);
    }

    #[test]
    fn a_stream_without_keyframes_still_gets_bounded_segments() {
        let mut seg = Segmenter::new(CFG);
        seg.push_tracks(Arc::new(av_tracks())).unwrap();
        feed(&mut seg, 0, 30, 1_000_000);
        seg.finish(true);
        let pl = seg.playlist();
        assert!(pl.segments.len() >= 3, "{}", pl.segments.len());
        assert!(pl.segments.iter().all(|s| s.duration <= 10.1));
        assert!(!pl.segments[1].parts[0].independent);
    }

    /// One video frame of track 0 at `dts` ms.
    fn push_video(seg: &mut Segmenter, dts: i64, keyframe: bool) {
        let frame = Frame {
            track: TrackId(0),
            dts,
            pts: dts,
            keyframe,
            data: Bytes::from_static(b"v"),
        };
        seg.push_frame(frame, now(dts)).unwrap();
    }

    #[test]
    fn a_due_segment_without_a_keyframe_asks_for_one_once_per_target() {
        let mut seg = Segmenter::new(CFG);
        seg.push_tracks(Arc::new(av_tracks())).unwrap();
        // A keyframe at 0 and then none: like a WebRTC encoder that sends them on request.
        let mut asked_at = vec![];
        for i in 0..(7 * 30) {
            let dts = i * 1000 / 30;
            push_video(&mut seg, dts, i == 0);
            if seg.take_keyframe_request() {
                asked_at.push(dts);
            }
            assert!(!seg.take_keyframe_request(), "taken once");
        }
        // Asked when the segment reached 2 s, again at 4 s and 6 s while none came.
        assert_eq!(asked_at, vec![2000, 4000, 6000], "{asked_at:?}");
        // Answered at once: the segment is cut at the keyframe, nothing more is asked.
        let mut seg = Segmenter::new(CFG);
        seg.push_tracks(Arc::new(av_tracks())).unwrap();
        let mut asked = 0;
        let mut key_due = false;
        for i in 0..(9 * 30) {
            let dts = i * 1000 / 30;
            push_video(&mut seg, dts, i == 0 || std::mem::take(&mut key_due));
            if seg.take_keyframe_request() {
                asked += 1;
                key_due = true;
            }
        }
        seg.finish(true);
        let pl = seg.playlist();
        assert_eq!(asked, 4, "one request per segment");
        assert_eq!(pl.target_duration(), 2);
        for s in &pl.segments[..pl.segments.len() - 1] {
            assert!(
                (s.duration - 2.033).abs() < 0.01,
                "cut one frame after the request: {}",
                s.duration
            );
        }
    }

    #[test]
    fn bandwidth_is_measured_over_the_window() {
        let mut seg = Segmenter::new(CFG);
        seg.push_tracks(Arc::new(av_tracks())).unwrap();
        assert_eq!(seg.variant().unwrap().average_bandwidth, None);
        // 30 fps × 100 B video + ~43 × 20 B audio per second, plus the fMP4 headers.
        feed(&mut seg, 0, 10, 60);
        let v = seg.variant().unwrap();
        let avg = v.average_bandwidth.unwrap();
        let payload_bps = (30 * 100 + 44100 / 1024 * 20) * 8;
        assert!(
            avg > payload_bps && avg < payload_bps * 3,
            "{avg} vs {payload_bps}"
        );
        assert!(v.bandwidth >= avg && v.bandwidth < avg * 2, "{v:?}");
    }

    #[test]
    fn revision_changes_with_parts_not_with_every_frame() {
        let mut seg = Segmenter::new(CFG);
        seg.push_tracks(Arc::new(av_tracks())).unwrap();
        let r0 = seg.revision();
        let mut changes = 0;
        let mut last = r0;
        for i in 0..60 {
            let dts = i * 1000 / 30;
            push_video(&mut seg, dts, i == 0);
            if seg.revision() != last {
                changes += 1;
                last = seg.revision();
            }
        }
        // 2 s of video at 200 ms parts: about ten parts, not sixty frames.
        assert!((8..=11).contains(&changes), "{changes}");
    }

    #[test]
    fn starts_at_the_first_keyframe() {
        let mut seg = Segmenter::new(CFG);
        seg.push_tracks(Arc::new(av_tracks())).unwrap();
        for i in 0..5 {
            seg.push_frame(
                Frame {
                    track: TrackId(0),
                    dts: i * 33,
                    pts: i * 33,
                    keyframe: false,
                    data: Bytes::from_static(b"p"),
                },
                now(0),
            )
            .unwrap();
        }
        assert!(seg.playlist().open.is_none());
        assert!(seg.playlist().segments.is_empty());
    }

    #[test]
    fn fragments_decode_with_continuous_track_times() {
        use mp4_atom::{Decode, Moof};
        let mut seg = Segmenter::new(CFG);
        seg.push_tracks(Arc::new(av_tracks())).unwrap();
        feed(&mut seg, 5000, 6, 60);
        seg.finish(true);
        let mut next = [None::<u64>; 2];
        for s in &seg.playlist().segments {
            let bytes = seg.segment(s.msn).unwrap().to_vec();
            let mut cur = std::io::Cursor::new(bytes.as_slice());
            while (cur.position() as usize) < bytes.len() {
                let moof = Moof::decode(&mut cur).unwrap();
                for traf in &moof.traf {
                    let i = traf.tfhd.track_id as usize - 1;
                    let base = traf.tfdt.as_ref().unwrap().base_media_decode_time;
                    if let Some(expected) = next[i] {
                        assert_eq!(base, expected, "track {i} gap");
                    }
                    let dur: u64 = traf.trun[0]
                        .samples
                        .iter()
                        .map(|e| u64::from(e.duration.unwrap()))
                        .sum();
                    next[i] = Some(base + dur);
                }
                let header = mp4_atom::Header::decode(&mut cur).unwrap();
                cur.set_position(cur.position() + header.size.unwrap() as u64);
            }
        }
        // The timeline starts at zero whatever the publisher's first timestamp was.
        assert!(
            next[0].unwrap() >= 5900 && next[0].unwrap() <= 6100,
            "{next:?}"
        );
    }

    #[test]
    fn reconnect_continues_with_a_discontinuity() {
        let mut seg = Segmenter::new(CFG);
        seg.push_tracks(Arc::new(av_tracks())).unwrap();
        feed(&mut seg, 0, 4, 60);
        seg.finish(false);
        assert!(!seg.is_ended());
        let before = seg.playlist().segments.len();
        // The new session's clock restarts at 0.
        seg.push_tracks(Arc::new(av_tracks())).unwrap();
        feed(&mut seg, 0, 4, 60);
        seg.finish(true);
        let pl = seg.playlist();
        let first_new = &pl.segments[before];
        assert!(first_new.discontinuity);
        assert_ne!(first_new.init_id, pl.segments[0].init_id);
        let text = pl.render();
        assert!(text.contains("#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init1.mp4\""));
        assert!(seg.init(1).is_some());
        // Msns keep counting.
        let msns: Vec<u64> = pl.segments.iter().map(|s| s.msn).collect();
        assert!(msns.windows(2).all(|w| w[1] == w[0] + 1), "{msns:?}");
    }

    #[test]
    fn audio_only_streams_are_clocked_by_audio() {
        let mut tracks = av_tracks();
        tracks.list.remove(0);
        let mut seg = Segmenter::new(CFG);
        seg.push_tracks(Arc::new(tracks)).unwrap();
        for a in 0..(6 * 44100 / 1024) {
            let dts = a * 1024 * 1000 / 44100;
            seg.push_frame(
                Frame {
                    track: TrackId(1),
                    dts,
                    pts: dts,
                    keyframe: true,
                    data: Bytes::from_static(b"aac"),
                },
                now(dts),
            )
            .unwrap();
        }
        seg.finish(true);
        let pl = seg.playlist();
        assert_eq!(pl.segments.len(), 3);
        let d: Vec<f64> = pl.segments.iter().map(|s| s.duration).collect();
        // The last segment is closed by the end of the stream, not by the target.
        assert!(d[..2].iter().all(|s| (s - 2.0).abs() < 0.05), "{d:?}");
        assert!(d[2] > 1.5 && d[2] < 2.05, "{d:?}");
    }

    /// Every part and segment of `a` and `b` (listed or kept) has the same bytes.
    fn same_objects(a: &Segmenter, b: &Segmenter) {
        assert_eq!(a.playlist().render(), b.playlist().render());
        let pl = a.playlist();
        for s in &pl.segments {
            assert_eq!(
                a.segment(s.msn).unwrap().joined(),
                b.segment(s.msn).unwrap().joined(),
                "segment {}",
                s.msn
            );
            assert_eq!(a.init(s.init_id), b.init(s.init_id));
        }
        if let Some(o) = &pl.open {
            for i in 0..o.parts.len() {
                assert_eq!(
                    a.part(o.msn, i).unwrap().joined(),
                    b.part(o.msn, i).unwrap().joined()
                );
            }
        }
        assert_eq!(a.variant(), b.variant());
    }

    /// Feeds `secs` of A/V into `owner`, applying its updates to every mirror after each
    /// frame.
    fn feed_mirrored(
        owner: &mut Segmenter,
        mirrors: &mut [(&mut Segmenter, &mut MirrorCursor)],
        t0: i64,
        secs: i64,
    ) {
        let mut tmp = Segmenter::new(CFG);
        tmp.push_tracks(Arc::new(av_tracks())).unwrap();
        let mut frames = vec![];
        for i in 0..secs * 30 {
            frames.push((TrackId(0), t0 + i * 1000 / 30, i % 60 == 0));
        }
        for a in 0..secs * 1000 * 44100 / 1024 / 1000 {
            frames.push((TrackId(1), t0 + a * 1024 * 1000 / 44100, true));
        }
        frames.sort_by_key(|f| f.1);
        for (track, dts, keyframe) in frames {
            let f = Frame {
                track,
                dts,
                pts: dts,
                keyframe,
                data: Bytes::from(vec![(dts % 251) as u8; 150]),
            };
            owner.push_frame(f, now(dts)).unwrap();
            for (m, c) in mirrors.iter_mut() {
                while let Some(u) = owner.mirror_update(c) {
                    m.apply_mirror(u).unwrap();
                }
            }
        }
    }

    #[test]
    fn a_mirror_is_a_byte_exact_copy_whenever_it_joins() {
        let mut owner = Segmenter::new(CFG).with_prefix("00c0ffee-".into());
        owner.push_tracks(Arc::new(av_tracks())).unwrap();
        let (mut early, mut early_cursor) = (Segmenter::new(CFG), MirrorCursor::default());
        feed_mirrored(&mut owner, &mut [(&mut early, &mut early_cursor)], 0, 5);
        same_objects(&owner, &early);
        // A mirror that joins mid-stream gets everything kept so far in its first update,
        // then follows.
        let (mut late, mut late_cursor) = (Segmenter::new(CFG), MirrorCursor::default());
        feed_mirrored(
            &mut owner,
            &mut [
                (&mut early, &mut early_cursor),
                (&mut late, &mut late_cursor),
            ],
            5000,
            7,
        );
        same_objects(&owner, &early);
        same_objects(&owner, &late);
        assert_eq!(late.run(), "00c0ffee");
        // Kept-but-unlisted segments too (a late request after the slide).
        let oldest = owner.stored.front().unwrap().msn;
        assert!(oldest < owner.playlist().media_sequence());
        assert_eq!(
            owner.segment(oldest).unwrap().joined(),
            late.segment(oldest).unwrap().joined()
        );
        // A reconnect on the owner (a discontinuity, a new init) and its end.
        owner.finish(false);
        owner.push_tracks(Arc::new(av_tracks())).unwrap();
        feed_mirrored(&mut owner, &mut [(&mut late, &mut late_cursor)], 0, 5);
        owner.finish(true);
        while let Some(u) = owner.mirror_update(&mut late_cursor) {
            late.apply_mirror(u).unwrap();
        }
        same_objects(&owner, &late);
        assert!(late.is_ended());
        assert!(late.playlist().render().contains("#EXT-X-DISCONTINUITY\n"));
        // An update that does not follow what the mirror holds is refused, not applied.
        let update = owner.mirror_update(&mut early_cursor.clone()).unwrap();
        assert!(!update.reset);
        assert!(
            Segmenter::new(CFG).apply_mirror(update).is_err(),
            "not a copy yet"
        );

        // The same update twice: the second does not follow the first.
        let mut owner = Segmenter::new(CFG);
        owner.push_tracks(Arc::new(av_tracks())).unwrap();
        let (mut m, mut c) = (Segmenter::new(CFG), MirrorCursor::default());
        feed_mirrored(&mut owner, &mut [(&mut m, &mut c)], 0, 3);
        for i in 0..10 {
            push_video(&mut owner, 3000 + i * 33, false);
        }
        let twice = owner.mirror_update(&mut c.clone()).unwrap();
        assert!(twice.open_parts > 0 || !twice.closed.is_empty());
        m.apply_mirror(twice.clone()).unwrap();
        assert!(m.apply_mirror(twice).is_err());
    }

    #[test]
    fn a_big_first_copy_comes_in_several_updates() {
        let mut owner = Segmenter::new(CFG);
        owner.push_tracks(Arc::new(av_tracks())).unwrap();
        // ~1 MB a second of video.
        for i in 0..(12 * 30) {
            let dts = i * 1000 / 30;
            let f = Frame {
                track: TrackId(0),
                dts,
                pts: dts,
                keyframe: i % 60 == 0,
                data: Bytes::from(vec![1u8; 35_000]),
            };
            owner.push_frame(f, now(dts)).unwrap();
        }
        let (mut m, mut c) = (Segmenter::new(CFG), MirrorCursor::default());
        let mut updates = 0;
        while let Some(u) = owner.mirror_update(&mut c) {
            assert!(u.data.iter().map(Bytes::len).sum::<usize>() < 8 << 20);
            m.apply_mirror(u).unwrap();
            updates += 1;
        }
        assert!(updates >= 2, "{updates}");
        same_objects(&owner, &m);
    }

    #[test]
    fn a_new_owner_continues_a_mirrored_playlist() {
        let mut owner = Segmenter::new(CFG).with_prefix("0000abcd-".into());
        owner.push_tracks(Arc::new(av_tracks())).unwrap();
        let (mut b, mut bc) = (Segmenter::new(CFG), MirrorCursor::default());
        feed_mirrored(&mut owner, &mut [(&mut b, &mut bc)], 0, 9);
        let before = b.playlist().clone();
        let open = before.open.clone().unwrap();
        assert!(!open.parts.is_empty());
        // The owner dies mid-segment; the publisher comes back to B (a mirror until now).
        let seed = b.continuation().unwrap();
        assert_eq!(seed.run, "0000abcd");
        assert_eq!(seed.next_msn, open.msn + 1);
        b.push_tracks(Arc::new(av_tracks())).unwrap();
        assert!(!b.is_mirror());
        let mut c = Segmenter::new(CFG);
        c.seed(&seed);
        c.push_tracks(Arc::new(av_tracks())).unwrap();
        for seg in [&mut b, &mut c] {
            feed(seg, 0, 5, 60);
        }
        let pl = b.playlist();
        // The mirrored open segment was closed with the parts that came, under its name.
        let closed = pl.segments.iter().find(|s| s.msn == open.msn).unwrap();
        assert_eq!(closed.parts, open.parts);
        let first_new = pl.segments.iter().find(|s| s.msn == open.msn + 1).unwrap();
        assert!(first_new.discontinuity);
        assert!(first_new.init_id > open.init_id);
        assert_eq!(b.run(), "0000abcd");
        let msns: Vec<u64> = pl.segments.iter().map(|s| s.msn).collect();
        assert!(msns.windows(2).all(|w| w[1] == w[0] + 1), "{msns:?}");
        // A node that had no copy and was seeded: same run, later msns, and the
        // discontinuity counted as B counts it once B's old segments slid out.
        let cpl = c.playlist();
        assert_eq!(c.run(), "0000abcd");
        assert_eq!(cpl.segments[0].msn, open.msn + 1);
        let b_ds_at = |msn: u64| {
            // The discontinuity number of segment `msn` in B's playlist.
            let pl = b.playlist();
            pl.discontinuity_sequence
                + pl.segments
                    .iter()
                    .skip(1)
                    .take_while(|s| s.msn <= msn)
                    .filter(|s| s.discontinuity)
                    .count() as u64
        };
        assert_eq!(cpl.discontinuity_sequence, b_ds_at(open.msn + 1));
        // A seed is ignored by a playlist that has begun.
        let mut d = Segmenter::new(CFG);
        d.push_tracks(Arc::new(av_tracks())).unwrap();
        feed(&mut d, 0, 3, 60);
        let run = d.run().to_owned();
        d.seed(&seed);
        assert_eq!(d.run(), run);
    }
}
