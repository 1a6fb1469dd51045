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

/// One second: its index, bytes, frames per track, bytes per track.
type Slot = (u64, u64, [u32; MAX_TRACKS], [u64; MAX_TRACKS]);

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
            *slot = (sec, 0, [0; MAX_TRACKS], [0; MAX_TRACKS]);
        }
        slot.1 += bytes as u64;
        if let Some(n) = slot.2.get_mut(usize::from(track.0)) {
            *n += 1;
        }
        if let Some(b) = slot.3.get_mut(usize::from(track.0)) {
            *b += bytes as u64;
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

    /// Bits per second of one track over the last complete seconds.
    pub fn track_bits_per_second(&self, now: Instant, track: TrackId) -> u64 {
        let Some(origin) = self.origin else {
            return 0;
        };
        let current = now.saturating_duration_since(origin).as_secs();
        let first = current.saturating_sub(WINDOW);
        let secs = current - first;
        if secs == 0 {
            return 0;
        }
        let bytes: u64 = self
            .slots
            .iter()
            .filter(|s| s.0 >= first && s.0 < current)
            .map(|s| s.3.get(usize::from(track.0)).copied().unwrap_or(0))
            .sum();
        bytes * 8 / secs
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
        assert_eq!(m.track_bits_per_second(now, TrackId(0)), 30 * 1000 * 8);
        assert_eq!(m.track_bits_per_second(now, TrackId(1)), 0);
        // Nothing arrived for a long time: rates fall to zero.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(m.bits_per_second(later), 0);
        assert_eq!(m.fps(later, TrackId(0)), None);
    }

    #[test]
    fn traffic_rates_over_1_and_10_seconds() {
        let t0 = Instant::now();
        let mut t = TrafficMeter::default();
        assert_eq!(t.rates(), Rates::default());
        // In: 1000 B/s for 10 s, then 5000 B/s for 1 s; out: 2000 B/s throughout.
        let mut total_in = 0;
        for s in 0..=11u64 {
            t.record(t0 + Duration::from_secs(s), total_in, s * 2000);
            total_in += if s < 10 { 1000 } else { 5000 };
        }
        let r = t.rates();
        assert_eq!(r.in_bps_1s, 5000 * 8);
        assert_eq!(r.in_bps_10s, (9 * 1000 + 5000) * 8 / 10);
        assert_eq!((r.out_bps_1s, r.out_bps_10s), (16_000, 16_000));
    }
}

/// In and out bitrates over the last second and the last ten seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Rates {
    /// Bits per second received, last second.
    pub in_bps_1s: u64,
    /// Bits per second received, last 10 seconds.
    pub in_bps_10s: u64,
    /// Bits per second sent, last second.
    pub out_bps_1s: u64,
    /// Bits per second sent, last 10 seconds.
    pub out_bps_10s: u64,
}

/// Byte totals sampled about once a second (by the stats monitor, not per frame); rates are
/// the differences over the last 1 and 10 seconds.
#[derive(Debug, Default, Clone)]
pub struct TrafficMeter {
    samples: std::collections::VecDeque<(Instant, u64, u64)>,
}

impl TrafficMeter {
    /// Samples the totals at `now`.
    pub fn record(&mut self, now: Instant, bytes_in: u64, bytes_out: u64) {
        self.samples.push_back((now, bytes_in, bytes_out));
        while self.samples.len() > 12 {
            self.samples.pop_front();
        }
    }

    /// Rates between the newest sample and the ones 1 and 10 samples before it.
    pub fn rates(&self) -> Rates {
        let Some(&(t, i, o)) = self.samples.back() else {
            return Rates::default();
        };
        let over = |back: usize| {
            let idx = self.samples.len().saturating_sub(1 + back);
            let (t0, i0, o0) = self.samples[idx];
            let secs = t.saturating_duration_since(t0).as_secs_f64();
            if secs <= 0.0 {
                return (0, 0);
            }
            (
                (i.saturating_sub(i0) as f64 * 8.0 / secs) as u64,
                (o.saturating_sub(o0) as f64 * 8.0 / secs) as u64,
            )
        };
        let (in_bps_1s, out_bps_1s) = over(1);
        let (in_bps_10s, out_bps_10s) = over(10);
        Rates {
            in_bps_1s,
            in_bps_10s,
            out_bps_1s,
            out_bps_10s,
        }
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
