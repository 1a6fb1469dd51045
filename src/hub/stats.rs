//! Per-stream ingest counters: totals and a per-second ring of bytes and video frames from
//! which the API reads the current bitrate and frame rate.

use std::time::Instant;

/// Seconds of history kept.
const SLOTS: usize = 8;
/// Complete seconds averaged for rates.
const WINDOW: u64 = 5;

/// Bytes and video frames per wall-clock second, measured from the first frame.
#[derive(Debug, Default)]
pub struct RateMeter {
    origin: Option<Instant>,
    slots: [(u64, u64, u32); SLOTS],
    total_bytes: u64,
}

impl RateMeter {
    /// Counts one frame received at `now`.
    pub fn record(&mut self, now: Instant, bytes: usize, is_video: bool) {
        let origin = *self.origin.get_or_insert(now);
        let sec = now.saturating_duration_since(origin).as_secs();
        let slot = &mut self.slots[(sec % SLOTS as u64) as usize];
        if slot.0 != sec {
            *slot = (sec, 0, 0);
        }
        slot.1 += bytes as u64;
        slot.2 += u32::from(is_video);
        self.total_bytes += bytes as u64;
    }

    /// Every payload byte counted so far.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The complete seconds in the window before `now`, and their (bytes, frames) sums.
    fn window(&self, now: Instant) -> Option<(u64, u64, u64)> {
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
            .fold((0, 0), |(b, f), s| (b + s.1, f + u64::from(s.2)));
        Some((secs, bytes, frames))
    }

    /// Bits per second over the last complete seconds (0 before the first full second).
    pub fn bits_per_second(&self, now: Instant) -> u64 {
        self.window(now)
            .map_or(0, |(secs, bytes, _)| bytes * 8 / secs)
    }

    /// Video frames per second over the last complete seconds.
    pub fn video_fps(&self, now: Instant) -> Option<f64> {
        self.window(now)
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
            m.record(t0 + Duration::from_millis(i * 1000 / 30), 1000, true);
        }
        let now = t0 + Duration::from_secs(10);
        assert_eq!(m.bits_per_second(now), 30 * 1000 * 8);
        assert_eq!(m.video_fps(now), Some(30.0));
        assert_eq!(m.total_bytes(), 300_000);
        // Nothing arrived for a long time: rates fall to zero.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(m.bits_per_second(later), 0);
        assert_eq!(m.video_fps(later), None);
    }
}
