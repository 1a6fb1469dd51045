//! Per-stream ingest counters: totals and a per-second ring of bytes and frames per track
//! from which the API reads the current bitrate and each track's frame rate.

use std::time::Instant;

use crate::media::TrackId;

/// Tracks counted per slot (track ids 0..MAX_TRACKS).
const MAX_TRACKS: usize = 4;

/// Seconds of history kept.
const SLOTS: usize = 8;
/// Complete seconds averaged for rates.
const WINDOW: u64 = 5;

/// One second: its index, bytes, frames per track.
type Slot = (u64, u64, [u32; MAX_TRACKS]);

/// Bytes and frames per wall-clock second, measured from the first frame.
#[derive(Debug, Default)]
pub struct RateMeter {
    origin: Option<Instant>,
    slots: [Slot; SLOTS],
    total_bytes: u64,
}

impl RateMeter {
    /// Counts one frame of `track` received at `now`.
    pub fn record(&mut self, now: Instant, bytes: usize, track: TrackId) {
        let origin = *self.origin.get_or_insert(now);
        let sec = now.saturating_duration_since(origin).as_secs();
        let slot = &mut self.slots[(sec % SLOTS as u64) as usize];
        if slot.0 != sec {
            *slot = (sec, 0, [0; MAX_TRACKS]);
        }
        slot.1 += bytes as u64;
        if let Some(n) = slot.2.get_mut(usize::from(track.0)) {
            *n += 1;
        }
        self.total_bytes += bytes as u64;
    }

    /// Every payload byte counted so far.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The complete seconds in the window before `now`, and their (bytes, frames of `track`)
    /// sums.
    fn window(&self, now: Instant, track: TrackId) -> Option<(u64, u64, u64)> {
        let origin = self.origin?;
        let current = now.saturating_duration_since(origin).as_secs();
        let first = current.saturating_sub(WINDOW);
        let secs = current - first;
        if secs == 0 {
            return None;
        }
        let (bytes, frames) = self
            .slots
            .iter()
            .filter(|s| s.0 >= first && s.0 < current)
            .fold((0, 0), |(b, f), s| {
                let frames = s.2.get(usize::from(track.0)).copied().unwrap_or(0);
                (b + s.1, f + u64::from(frames))
            });
        Some((secs, bytes, frames))
    }

    /// Bits per second over the last complete seconds (0 before the first full second).
    pub fn bits_per_second(&self, now: Instant) -> u64 {
        self.window(now, TrackId(0))
            .map_or(0, |(secs, bytes, _)| bytes * 8 / secs)
    }

    /// Frames per second of `track` over the last complete seconds.
    pub fn fps(&self, now: Instant, track: TrackId) -> Option<f64> {
        self.window(now, track)
            .filter(|(_, _, frames)| *frames > 0)
            .map(|(secs, _, frames)| frames as f64 / secs as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rates_over_complete_seconds() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        for i in 0..300u64 {
            // 30 fps of 1000-byte frames for 10 s.
            m.record(t0 + Duration::from_millis(i * 1000 / 30), 1000, TrackId(0));
        }
        let now = t0 + Duration::from_secs(10);
        assert_eq!(m.bits_per_second(now), 30 * 1000 * 8);
        assert_eq!(m.fps(now, TrackId(0)), Some(30.0));
        assert_eq!(m.fps(now, TrackId(1)), None);
        assert_eq!(m.total_bytes(), 300_000);
        // Nothing arrived for a long time: rates fall to zero.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(m.bits_per_second(later), 0);
        assert_eq!(m.fps(later, TrackId(0)), None);
    }
}

/// Packet-level ingest statistics of transports that have them (WHIP: RTP), fed by the
/// ingest driver and read by the API (and the health score).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct TransportStats {
    /// RTP packets received, all tracks.
    pub packets_received: u64,
    /// RTP packets lost (sequence gaps not filled by retransmission).
    pub packets_lost: u64,
    /// Interarrival jitter of the video track (audio if none), in milliseconds.
    pub jitter_ms: f64,
    /// Keyframe requests (PLI) sent to the publisher.
    pub keyframe_requests: u64,
    /// Payloads that could not be depacketized.
    pub malformed_packets: u64,
    /// Video frames dropped because a packet of them (or of their reference) was lost.
    pub damaged_frames: u64,
}
