//! The health score of a live stream: 0-100 over a sliding window, returned with the
//! components that explain it, each with what it cost.
//!
//! [`HealthTracker::record`] is called for every frame under the stream's own lock; it does
//! constant work on a fixed ring of per-second buckets and never allocates. Everything is a
//! function of the `now` passed in, so synthetic timelines test it exactly.
//! [`HealthTracker::evaluate`] (a few times a minute per stream) turns the window into a
//! [`Health`]: bitrate stability, frame rate against nominal, keyframe interval, timestamp
//! sanity (non-monotonic DTS, jumps, A/V drift), realtime-ness (media clock against wall
//! clock), ingest loss (RTP loss for WHIP, frame gaps for everyone) and frames dropped for
//! slow subscribers. [`HealthAlarm`] adds the hysteresis for `health.degraded` /
//! `health.recovered`.

use std::time::Instant;

use serde::Serialize;

/// Seconds in the sliding window.
pub const WINDOW_SECS: u64 = 30;
/// Complete seconds needed before a score is given.
const MIN_SECS: u64 = 3;
const SLOTS: usize = WINDOW_SECS as usize + 2;
/// A forward DTS step larger than this is a jump (ms).
const JUMP_MS: i64 = 3000;
/// A wall-clock pause between frames of the clock track at least this long is a gap (ms),
/// unless the frame rate itself is that low.
const GAP_MS: u64 = 1000;

/// One wall-clock second of the window.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Seconds since the first frame; buckets of other seconds are stale.
    sec: u64,
    bytes: u64,
    frames: u32,
    video_frames: u32,
    non_monotonic: u32,
    jumps: u32,
    gaps: u32,
    max_drift_ms: u32,
    /// Media time the clock track advanced in this second (ms, jumps excluded).
    media_advance_ms: u64,
    /// Wall time (ms since origin) of the first and last clock-track frame.
    first_wall_ms: Option<u64>,
    last_wall_ms: u64,
}

/// What the tracker needs to know about a frame.
#[derive(Debug, Clone, Copy)]
pub struct FrameInfo {
    /// Video (else audio).
    pub video: bool,
    /// The stream's clock track: its primary video, or audio when there is no video.
    pub clock: bool,
    /// Decode timestamp in ms.
    pub dts_ms: i64,
    /// A video keyframe.
    pub keyframe: bool,
    /// Payload bytes.
    pub bytes: usize,
}

/// Counters that live outside the frame path, sampled at each evaluation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct External {
    /// RTP packets received so far (WHIP).
    pub rtp_received: u64,
    /// RTP packets lost so far (WHIP).
    pub rtp_lost: u64,
    /// Frames dropped for slow subscribers so far.
    pub dropped_frames: u64,
}

/// Per-frame bookkeeping for one live stream.
#[derive(Debug)]
pub struct HealthTracker {
    origin: Option<Instant>,
    buckets: [Bucket; SLOTS],
    last_dts: [Option<i64>; 2],
    last_clock: Option<(u64, i64)>,
    /// Media time of the last keyframes (ring) and how many were seen.
    keyframes: [i64; 8],
    keyframe_count: usize,
    latest_clock_dts: Option<i64>,
    /// Moving average of the wall-clock interval between clock-track frames (ms).
    avg_interval_ms: Option<f64>,
    /// Nominal frame rate from the codec configuration, if it says.
    nominal_fps: Option<f64>,
    /// (when, counters) samples of [`External`], oldest first (fixed ring).
    samples: [(u64, External); 16],
    sample_count: usize,
}

impl Default for HealthTracker {
    fn default() -> Self {
        HealthTracker {
            origin: None,
            buckets: [Bucket::default(); SLOTS],
            last_dts: [None; 2],
            last_clock: None,
            keyframes: [0; 8],
            keyframe_count: 0,
            latest_clock_dts: None,
            avg_interval_ms: None,
            nominal_fps: None,
            samples: [(0, External::default()); 16],
            sample_count: 0,
        }
    }
}

/// One component of the score.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Component {
    /// `bitrate_stability`, `frame_rate`, `keyframe_interval`, `timestamps`, `realtime`,
    /// `ingest_loss`, `dropped_frames`.
    pub name: &'static str,
    /// Points this component took off the score.
    pub cost: f64,
    /// The most it can take off.
    pub max_cost: f64,
    /// The measured value behind it (unit in `detail`).
    pub value: f64,
    /// What was measured, in words.
    pub detail: String,
}

/// A stream's health over the window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Health {
    /// 0-100.
    pub score: u8,
    /// `excellent`, `good`, `fair`, `poor` or `bad`.
    pub grade: &'static str,
    /// Seconds of history the score is computed over.
    pub window_seconds: u64,
    /// Every component, worst first.
    pub components: Vec<Component>,
}

/// The grade of a score: Excellent ≥ 90, Good ≥ 75, Fair ≥ 50, Poor ≥ 25, Bad below.
pub fn grade(score: u8) -> &'static str {
    match score {
        90.. => "excellent",
        75..=89 => "good",
        50..=74 => "fair",
        25..=49 => "poor",
        _ => "bad",
    }
}

impl HealthTracker {
    /// The nominal frame rate (from the SPS or metadata), when known.
    pub fn set_nominal_fps(&mut self, fps: Option<f64>) {
        self.nominal_fps = fps.filter(|f| f.is_finite() && *f > 0.0 && *f < 1000.0);
    }

    /// The average interval between the last video keyframes, in media seconds.
    pub fn keyframe_interval_s(&self) -> Option<f64> {
        let n = self.keyframe_count.min(self.keyframes.len());
        if n < 2 {
            return None;
        }
        let ring = self.keyframes.len();
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for i in self.keyframe_count - n..self.keyframe_count {
            let k = self.keyframes[i % ring];
            lo = lo.min(k);
            hi = hi.max(k);
        }
        Some((hi - lo) as f64 / 1000.0 / (n - 1) as f64)
    }

    /// Counts one frame arriving at `now`. Constant time, no allocation.
    pub fn record(&mut self, now: Instant, f: FrameInfo) {
        let origin = *self.origin.get_or_insert(now);
        let wall_ms = now.saturating_duration_since(origin).as_millis() as u64;
        let sec = wall_ms / 1000;
        let slot = &mut self.buckets[(sec % SLOTS as u64) as usize];
        if slot.sec != sec || (slot.frames == 0 && slot.first_wall_ms.is_none()) {
            *slot = Bucket {
                sec,
                ..Bucket::default()
            };
        }
        slot.bytes += f.bytes as u64;
        slot.frames += 1;
        if f.video {
            slot.video_frames += 1;
        }
        let kind = usize::from(f.video);
        if let Some(prev) = self.last_dts[kind] {
            let delta = f.dts_ms - prev;
            if delta < 0 {
                slot.non_monotonic += 1;
            } else if delta > JUMP_MS {
                slot.jumps += 1;
            }
        }
        self.last_dts[kind] = Some(f.dts_ms);
        if let (Some(a), Some(v)) = (self.last_dts[0], self.last_dts[1]) {
            let drift = (a - v).unsigned_abs().min(u64::from(u32::MAX)) as u32;
            slot.max_drift_ms = slot.max_drift_ms.max(drift);
        }
        if f.clock {
            if let Some((prev_wall, prev_dts)) = self.last_clock {
                let advance = f.dts_ms - prev_dts;
                if (0..=JUMP_MS).contains(&advance) {
                    slot.media_advance_ms += advance as u64;
                }
                // A pause of a second or more, and far longer than the source's usual
                // interval, is a gap (a stalled source or lost frames); a 1 fps camera is not.
                let pause = wall_ms.saturating_sub(prev_wall) as f64;
                let usual = self.avg_interval_ms.unwrap_or(pause);
                if pause >= GAP_MS as f64 && pause > 4.0 * usual {
                    slot.gaps += 1;
                } else {
                    self.avg_interval_ms = Some(usual * 0.9 + pause * 0.1);
                }
            }
            slot.first_wall_ms.get_or_insert(wall_ms);
            slot.last_wall_ms = wall_ms;
            self.last_clock = Some((wall_ms, f.dts_ms));
            self.latest_clock_dts = Some(f.dts_ms);
            if f.video && f.keyframe {
                self.keyframes[self.keyframe_count % self.keyframes.len()] = f.dts_ms;
                self.keyframe_count += 1;
            }
        }
    }

    /// The health over the window ending at `now`, with `external` counters sampled now;
    /// `None` until a few seconds of media arrived.
    pub fn evaluate(&mut self, now: Instant, external: External) -> Option<Health> {
        let origin = self.origin?;
        let now_ms = now.saturating_duration_since(origin).as_millis() as u64;
        let current = now_ms / 1000;
        self.sample(now_ms, external);
        // Complete seconds only: from the first full second to the one before `current`.
        let first = current.saturating_sub(WINDOW_SECS).max(1);
        let secs = current.saturating_sub(first);
        if secs < MIN_SECS {
            return None;
        }
        let window: Vec<Bucket> = (first..current)
            .map(|s| {
                let b = self.buckets[(s % SLOTS as u64) as usize];
                if b.sec == s {
                    b
                } else {
                    Bucket {
                        sec: s,
                        ..Bucket::default()
                    }
                }
            })
            .collect();
        let mut components = vec![
            self.bitrate_stability(&window),
            self.frame_rate(&window, secs),
            self.keyframe_interval(),
            timestamps(&window),
            realtime(&window),
            self.ingest_loss(&window, now_ms, external),
            self.dropped(&window, now_ms, external),
        ];
        let cost: f64 = components.iter().map(|c| c.cost).sum();
        let score = (100.0 - cost).round().clamp(0.0, 100.0) as u8;
        components.sort_by(|a, b| b.cost.total_cmp(&a.cost));
        Some(Health {
            score,
            grade: grade(score),
            window_seconds: secs,
            components,
        })
    }

    fn sample(&mut self, now_ms: u64, external: External) {
        let n = self.samples.len();
        if self.sample_count > 0 {
            let last = self.samples[(self.sample_count - 1) % n];
            // One sample per second is plenty.
            if now_ms < last.0 + 1000 {
                return;
            }
        }
        self.samples[self.sample_count % n] = (now_ms, external);
        self.sample_count += 1;
    }

    /// The oldest sample still inside the window.
    fn baseline(&self, now_ms: u64) -> Option<(u64, External)> {
        let n = self.samples.len();
        let have = self.sample_count.min(n);
        (self.sample_count - have..self.sample_count)
            .map(|i| self.samples[i % n])
            .find(|(at, _)| now_ms.saturating_sub(*at) <= WINDOW_SECS * 1000)
    }

    fn bitrate_stability(&self, window: &[Bucket]) -> Component {
        // Pairs of seconds, so a keyframe's size does not read as instability.
        let rates: Vec<f64> = window
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].bytes + c[1].bytes) as f64 * 4.0)
            .collect();
        let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
        let cv = if mean > 0.0 && rates.len() >= 2 {
            let var = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64;
            var.sqrt() / mean
        } else {
            0.0
        };
        let cost = ((cv - 0.35) * 30.0).clamp(0.0, 15.0);
        component(
            "bitrate_stability",
            cost,
            15.0,
            cv,
            format!(
                "bitrate varies by {:.0} % around {:.0} kbit/s (2 s averages)",
                cv * 100.0,
                mean / 1000.0
            ),
        )
    }

    fn frame_rate(&self, window: &[Bucket], secs: u64) -> Component {
        let frames: u64 = window.iter().map(|b| u64::from(b.video_frames)).sum();
        if frames == 0 {
            return component("frame_rate", 0.0, 15.0, 0.0, "no video".into());
        }
        let measured = frames as f64 / secs as f64;
        let best = window.iter().map(|b| b.video_frames).max().unwrap_or(0) as f64;
        let nominal = self.nominal_fps.unwrap_or(best).max(1.0);
        let ratio = (measured / nominal).min(1.0);
        let cost = ((0.95 - ratio) * 50.0).clamp(0.0, 15.0);
        component(
            "frame_rate",
            cost,
            15.0,
            measured,
            format!("{measured:.1} fps of a nominal {nominal:.1} fps"),
        )
    }

    fn keyframe_interval(&self) -> Component {
        let n = self.keyframe_count.min(self.keyframes.len());
        let Some(latest) = self.latest_clock_dts else {
            return component("keyframe_interval", 0.0, 15.0, 0.0, "no media".into());
        };
        if self.keyframe_count == 0 {
            return component(
                "keyframe_interval",
                if self.last_dts[1].is_some() {
                    15.0
                } else {
                    0.0
                },
                15.0,
                0.0,
                "no keyframe seen".into(),
            );
        }
        let last = self.keyframes[(self.keyframe_count - 1) % self.keyframes.len()];
        let mut ordered: Vec<i64> = (self.keyframe_count - n..self.keyframe_count)
            .map(|i| self.keyframes[i % self.keyframes.len()])
            .collect();
        ordered.sort_unstable();
        let average = if ordered.len() >= 2 {
            (ordered[ordered.len() - 1] - ordered[0]) as f64 / (ordered.len() - 1) as f64
        } else {
            0.0
        };
        // A keyframe overdue counts as a long interval already.
        let gop_ms = average.max((latest - last) as f64);
        let gop = gop_ms / 1000.0;
        let cost = ((gop - 2.0) * 2.0).clamp(0.0, 15.0);
        component(
            "keyframe_interval",
            cost,
            15.0,
            gop,
            format!("a keyframe every {gop:.1} s (HLS segments cannot be shorter)"),
        )
    }

    fn ingest_loss(&self, window: &[Bucket], now_ms: u64, now: External) -> Component {
        let gaps: u32 = window.iter().map(|b| b.gaps).sum();
        let loss = self.baseline(now_ms).map_or(0.0, |(_, then)| {
            let received = now.rtp_received.saturating_sub(then.rtp_received);
            let lost = now.rtp_lost.saturating_sub(then.rtp_lost);
            if received + lost == 0 {
                0.0
            } else {
                lost as f64 / (received + lost) as f64
            }
        });
        let cost = (loss * 300.0 + f64::from(gaps) * 3.0).clamp(0.0, 15.0);
        component(
            "ingest_loss",
            cost,
            15.0,
            loss * 100.0,
            format!(
                "{:.2} % RTP packets lost, {gaps} pauses of 1 s or more in the source",
                loss * 100.0
            ),
        )
    }

    fn dropped(&self, window: &[Bucket], now_ms: u64, now: External) -> Component {
        let frames: u64 = window.iter().map(|b| u64::from(b.frames)).sum();
        let dropped = self.baseline(now_ms).map_or(0, |(_, then)| {
            now.dropped_frames.saturating_sub(then.dropped_frames)
        });
        let fraction = if frames == 0 {
            0.0
        } else {
            dropped as f64 / frames as f64
        };
        let cost = (fraction * 200.0).clamp(0.0, 10.0);
        component(
            "dropped_frames",
            cost,
            10.0,
            dropped as f64,
            format!("{dropped} frames dropped for slow viewers or outputs"),
        )
    }
}

fn timestamps(window: &[Bucket]) -> Component {
    let non_monotonic: u32 = window.iter().map(|b| b.non_monotonic).sum();
    let jumps: u32 = window.iter().map(|b| b.jumps).sum();
    let drift = window.iter().map(|b| b.max_drift_ms).max().unwrap_or(0);
    let drift_cost = ((f64::from(drift) - 500.0) / 100.0).clamp(0.0, 10.0);
    let cost =
        (f64::from(non_monotonic) * 4.0 + f64::from(jumps) * 5.0 + drift_cost).clamp(0.0, 20.0);
    component(
        "timestamps",
        cost,
        20.0,
        f64::from(non_monotonic + jumps),
        format!(
            "{non_monotonic} non-monotonic DTS, {jumps} jumps over {} s, A/V drift up to {drift} ms",
            JUMP_MS / 1000
        ),
    )
}

fn realtime(window: &[Bucket]) -> Component {
    let first = window.iter().filter_map(|b| b.first_wall_ms).min();
    let last = window
        .iter()
        .filter(|b| b.first_wall_ms.is_some())
        .map(|b| b.last_wall_ms)
        .max();
    let advance: u64 = window.iter().map(|b| b.media_advance_ms).sum();
    let (Some(first), Some(last)) = (first, last) else {
        return component("realtime", 20.0, 20.0, 0.0, "no media arrived".into());
    };
    let wall = last.saturating_sub(first);
    if wall < 1000 {
        return component("realtime", 0.0, 20.0, 1.0, "too little media yet".into());
    }
    // The frames in the window carry `advance` ms of media; they arrived over `wall` ms.
    // The first frame's own duration is not in `advance`; it roughly cancels the last's.
    let ratio = advance as f64 / wall as f64;
    let cost = if ratio < 0.97 {
        ((0.97 - ratio) * 100.0).clamp(0.0, 20.0)
    } else if ratio > 1.1 {
        ((ratio - 1.1) * 50.0).clamp(0.0, 10.0)
    } else {
        0.0
    };
    component(
        "realtime",
        cost,
        20.0,
        ratio,
        format!(
            "media arrives at {:.0} % of real time",
            (ratio * 100.0).min(999.0)
        ),
    )
}

fn component(name: &'static str, cost: f64, max: f64, value: f64, detail: String) -> Component {
    Component {
        name,
        cost: (cost * 10.0).round() / 10.0,
        max_cost: max,
        value: (value * 1000.0).round() / 1000.0,
        detail,
    }
}

/// `health.degraded` / `health.recovered` with hysteresis: degraded after two evaluations
/// in a row below 50 (Poor or worse), recovered after two in a row at 75 (Good) or more.
#[derive(Debug, Default, Clone)]
pub struct HealthAlarm {
    degraded: bool,
    streak: u8,
}

/// A change the alarm reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The stream went bad.
    Degraded,
    /// It is good again.
    Recovered,
}

impl HealthAlarm {
    /// Feeds one score; returns a transition when one happens.
    pub fn update(&mut self, score: u8) -> Option<Transition> {
        let toward = if self.degraded {
            score >= 75
        } else {
            score < 50
        };
        self.streak = if toward { self.streak + 1 } else { 0 };
        if self.streak < 2 {
            return None;
        }
        self.streak = 0;
        self.degraded = !self.degraded;
        Some(if self.degraded {
            Transition::Degraded
        } else {
            Transition::Recovered
        })
    }

    /// Whether the stream is currently considered degraded.
    pub fn is_degraded(&self) -> bool {
        self.degraded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A synthetic publisher: video at `fps` with a keyframe every `gop_s` seconds and AAC
    /// audio at ~47 frames/s, for `secs` seconds of wall time; `speed` is media seconds per
    /// wall second; `bytes(i)` the size of video frame `i`; `edit` may change or drop
    /// (return false) each video frame.
    struct Timeline {
        fps: f64,
        gop_s: f64,
        secs: f64,
        speed: f64,
        nominal: Option<f64>,
    }

    impl Default for Timeline {
        fn default() -> Self {
            Timeline {
                fps: 30.0,
                gop_s: 2.0,
                secs: 20.0,
                speed: 1.0,
                nominal: None,
            }
        }
    }

    fn run(
        t: Timeline,
        bytes: impl Fn(u64) -> usize,
        mut edit: impl FnMut(u64, &mut FrameInfo) -> bool,
    ) -> Health {
        let start = Instant::now();
        let mut h = HealthTracker::default();
        h.set_nominal_fps(t.nominal);
        let frame_ms = 1000.0 / t.fps;
        let per_gop = (t.fps * t.gop_s).round() as u64;
        let video_frames = (t.secs * t.speed * t.fps) as u64;
        let mut events: Vec<(f64, FrameInfo, u64)> = Vec::new();
        for i in 0..video_frames {
            let media = i as f64 * frame_ms;
            events.push((
                media / t.speed,
                FrameInfo {
                    video: true,
                    clock: true,
                    dts_ms: media as i64,
                    keyframe: i % per_gop == 0,
                    bytes: bytes(i),
                },
                i,
            ));
        }
        let audio_ms = 1024.0 / 48.0;
        let audio_frames = (t.secs * t.speed * 1000.0 / audio_ms) as u64;
        for j in 0..audio_frames {
            let media = j as f64 * audio_ms;
            events.push((
                media / t.speed,
                FrameInfo {
                    video: false,
                    clock: false,
                    dts_ms: media as i64,
                    keyframe: true,
                    bytes: 300,
                },
                u64::MAX,
            ));
        }
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (wall, mut f, i) in events {
            if i != u64::MAX && !edit(i, &mut f) {
                continue;
            }
            h.record(start + Duration::from_secs_f64(wall / 1000.0), f);
        }
        h.evaluate(start + Duration::from_secs_f64(t.secs), External::default())
            .expect("enough data")
    }

    fn steady(i: u64) -> usize {
        if i % 60 == 0 {
            40_000
        } else {
            8_000
        }
    }

    fn cost(h: &Health, name: &str) -> f64 {
        h.components
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.cost)
            .unwrap()
    }

    fn worst(h: &Health) -> &'static str {
        h.components[0].name
    }

    #[test]
    fn steady_30fps_with_2s_gop_is_excellent() {
        let h = run(Timeline::default(), steady, |_, _| true);
        assert!(h.score >= 90, "{h:#?}");
        assert_eq!(h.grade, "excellent");
        assert!(h.components.iter().all(|c| c.cost == 0.0), "{h:#?}");
    }

    #[test]
    fn a_10s_gop_costs_keyframe_interval() {
        let h = run(
            Timeline {
                gop_s: 10.0,
                secs: 25.0,
                ..Timeline::default()
            },
            |i| if i % 300 == 0 { 100_000 } else { 8_000 },
            |_, _| true,
        );
        assert_eq!(worst(&h), "keyframe_interval", "{h:#?}");
        assert_eq!(cost(&h, "keyframe_interval"), 15.0);
        assert!(h.score <= 85 && h.score >= 75, "{h:#?}");
        assert_eq!(h.grade, "good");
    }

    #[test]
    fn frame_gaps_cost_frame_rate_and_ingest_loss() {
        // The source stalls for 1.5 s every 5 s (frames lost, timeline continues).
        let h = run(Timeline::default(), steady, |i, _| {
            let t = i as f64 / 30.0;
            t % 5.0 < 3.5
        });
        assert!(cost(&h, "frame_rate") >= 10.0, "{h:#?}");
        assert!(cost(&h, "ingest_loss") >= 9.0, "{h:#?}");
        assert!(h.score < 75, "{h:#?}");
    }

    #[test]
    fn bitrate_swings_cost_bitrate_stability() {
        // 5 s at 300 kbit/s, 5 s at 4 Mbit/s, alternating.
        let h = run(
            Timeline::default(),
            |i| if (i / 150) % 2 == 0 { 1_250 } else { 16_600 },
            |_, _| true,
        );
        assert_eq!(worst(&h), "bitrate_stability", "{h:#?}");
        assert!(cost(&h, "bitrate_stability") >= 10.0, "{h:#?}");
        assert!(h.score < 90, "{h:#?}");
    }

    #[test]
    fn non_monotonic_dts_costs_timestamps() {
        let h = run(Timeline::default(), steady, |i, f| {
            if i % 90 == 45 {
                f.dts_ms -= 500;
            }
            true
        });
        assert_eq!(worst(&h), "timestamps", "{h:#?}");
        assert_eq!(cost(&h, "timestamps"), 20.0);
        assert_eq!(h.grade, "good");
    }

    #[test]
    fn a_source_at_80_percent_of_realtime_costs_realtime() {
        let h = run(
            Timeline {
                speed: 0.8,
                ..Timeline::default()
            },
            steady,
            |_, _| true,
        );
        assert_eq!(worst(&h), "realtime", "{h:#?}");
        let c = cost(&h, "realtime");
        assert!((15.0..=18.0).contains(&c), "{h:#?}");
        assert_eq!(h.grade, "good", "{h:#?}");
        let realtime = h.components.iter().find(|c| c.name == "realtime").unwrap();
        assert!((realtime.value - 0.8).abs() < 0.03, "{realtime:?}");
        // With the nominal rate known (SPS), the 24 fps that arrive cost frame_rate too.
        let h = run(
            Timeline {
                speed: 0.8,
                nominal: Some(30.0),
                ..Timeline::default()
            },
            steady,
            |_, _| true,
        );
        assert!(cost(&h, "frame_rate") >= 7.0, "{h:#?}");
        assert!(h.score < 80, "{h:#?}");
    }

    #[test]
    fn half_speed_is_worse_than_80_percent() {
        let slow = run(
            Timeline {
                speed: 0.5,
                ..Timeline::default()
            },
            steady,
            |_, _| true,
        );
        let less_slow = run(
            Timeline {
                speed: 0.8,
                ..Timeline::default()
            },
            steady,
            |_, _| true,
        );
        assert!(slow.score < less_slow.score);
        assert_eq!(cost(&slow, "realtime"), 20.0);
    }

    #[test]
    fn rtp_loss_and_dropped_frames_cost_their_components() {
        let start = Instant::now();
        let mut h = HealthTracker::default();
        for i in 0..600u64 {
            h.record(
                start + Duration::from_millis(i * 33),
                FrameInfo {
                    video: true,
                    clock: true,
                    dts_ms: (i * 33) as i64,
                    keyframe: i % 60 == 0,
                    bytes: 8000,
                },
            );
            if i % 30 == 0 {
                let e = External {
                    rtp_received: i * 10,
                    rtp_lost: i / 2,
                    dropped_frames: i / 10,
                };
                h.evaluate(start + Duration::from_millis(i * 33), e);
            }
        }
        let e = External {
            rtp_received: 6000,
            rtp_lost: 300,
            dropped_frames: 60,
        };
        let health = h.evaluate(start + Duration::from_secs(20), e).unwrap();
        assert_eq!(cost(&health, "ingest_loss"), 14.3, "{health:#?}");
        assert_eq!(cost(&health, "dropped_frames"), 10.0, "{health:#?}");
    }

    #[test]
    fn no_score_before_three_seconds_and_grades() {
        let start = Instant::now();
        let mut h = HealthTracker::default();
        assert!(h.evaluate(start, External::default()).is_none());
        h.record(
            start,
            FrameInfo {
                video: true,
                clock: true,
                dts_ms: 0,
                keyframe: true,
                bytes: 1,
            },
        );
        assert!(h
            .evaluate(start + Duration::from_millis(2500), External::default())
            .is_none());
        assert_eq!(
            [95, 90, 89, 75, 74, 50, 49, 25, 24, 0].map(grade),
            [
                "excellent",
                "excellent",
                "good",
                "good",
                "fair",
                "fair",
                "poor",
                "poor",
                "bad",
                "bad"
            ]
        );
    }

    #[test]
    fn the_alarm_has_hysteresis() {
        let mut a = HealthAlarm::default();
        assert_eq!(a.update(40), None);
        assert_eq!(a.update(80), None, "one bad sample is not enough");
        assert_eq!(a.update(40), None);
        assert_eq!(a.update(45), Some(Transition::Degraded));
        assert_eq!(a.update(60), None, "fair is not recovered");
        assert_eq!(a.update(70), None);
        assert_eq!(a.update(80), None);
        assert_eq!(a.update(90), Some(Transition::Recovered));
        assert!(!a.is_degraded());
    }
}
