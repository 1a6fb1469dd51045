//! LL-HLS playlist writing and the blocking-reload rules (draft-pantos-hls-rfc8216bis).
//!
//! `m3u8-rs` cannot write `EXT-X-PART`, `EXT-X-PRELOAD-HINT` or `EXT-X-SERVER-CONTROL`, so the
//! media and multivariant playlists are rendered here from a plain model ([`MediaPlaylist`]).
//! [`reload_decision`] answers a `_HLS_msn`/`_HLS_part` request against that model: serve now,
//! wait for more media, or reject with 400. The HLS segmenter owns the model; the HTTP layer
//! renders it. No I/O, no clock: times are passed in.

use std::fmt::Write as _;
use std::time::SystemTime;

use time::OffsetDateTime;

/// A partial segment as listed in the playlist.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PartEntry {
    /// Duration in seconds.
    pub duration: f64,
    /// Starts with a keyframe (or holds only audio).
    pub independent: bool,
}

/// A complete media segment as listed in the playlist.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SegmentEntry {
    /// Media sequence number.
    pub msn: u64,
    /// Duration in seconds.
    pub duration: f64,
    /// Wall-clock time of the segment's first sample.
    pub program_date_time: SystemTime,
    /// Preceded by `EXT-X-DISCONTINUITY` (publisher reconnected, timing or codecs changed).
    pub discontinuity: bool,
    /// Which init segment (`init{n}.mp4`) the segment needs.
    pub init_id: u32,
    /// Its parts.
    pub parts: Vec<PartEntry>,
}

/// Everything the media playlist shows.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MediaPlaylist {
    /// Configured part target, seconds.
    pub part_target: f64,
    /// Configured segment target, seconds (the floor of `EXT-X-TARGETDURATION`).
    pub segment_target: f64,
    /// Discontinuities that slid out of the window.
    pub discontinuity_sequence: u64,
    /// Complete segments in the window, oldest first.
    pub segments: Vec<SegmentEntry>,
    /// The segment being built: its msn, first-sample time, init and parts so far.
    pub open: Option<OpenSegment>,
    /// The publisher is gone for good: `EXT-X-ENDLIST`, no preload hint.
    pub ended: bool,
    /// The longest segment ever produced (seconds). `EXT-X-TARGETDURATION` follows it so the
    /// tag only ever grows, as the spec requires it not to change.
    pub longest_segment: f64,
    /// Prepended to every init, segment and part URI: the playlist's run (a new one each time
    /// a stream starts a fresh playlist), so a name never stands for two different objects
    /// and caches may keep every object for good.
    pub prefix: String,
}

/// The segment still being written.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OpenSegment {
    /// Its media sequence number.
    pub msn: u64,
    /// Wall-clock time of its first sample.
    pub program_date_time: SystemTime,
    /// Preceded by a discontinuity.
    pub discontinuity: bool,
    /// Its init segment.
    pub init_id: u32,
    /// Parts completed so far.
    pub parts: Vec<PartEntry>,
}

/// Segments (counted from the newest) whose parts are still listed.
const SEGMENTS_WITH_PARTS: usize = 2;

/// URI of an init segment.
pub fn init_uri(prefix: &str, init_id: u32) -> String {
    format!("{prefix}init{init_id}.mp4")
}

/// URI of a complete segment.
pub fn segment_uri(prefix: &str, msn: u64) -> String {
    format!("{prefix}seg{msn}.m4s")
}

/// URI of a partial segment.
pub fn part_uri(prefix: &str, msn: u64, part: usize) -> String {
    format!("{prefix}part{msn}.{part}.m4s")
}

impl MediaPlaylist {
    /// Media sequence number of the first listed segment.
    pub fn media_sequence(&self) -> u64 {
        self.segments
            .first()
            .map(|s| s.msn)
            .or(self.open.as_ref().map(|o| o.msn))
            .unwrap_or(0)
    }

    /// The msn the next complete segment will have.
    pub fn next_msn(&self) -> u64 {
        match (&self.open, self.segments.last()) {
            (Some(o), _) => o.msn,
            (None, Some(s)) => s.msn + 1,
            (None, None) => 0,
        }
    }

    /// `EXT-X-TARGETDURATION`: the longest segment rounded to the nearest second (the spec's
    /// rule), at least the configured target.
    pub fn target_duration(&self) -> u64 {
        let longest = self
            .segments
            .iter()
            .map(|s| s.duration)
            .fold(self.segment_target.max(self.longest_segment), f64::max);
        (longest.round() as u64).max(1)
    }

    /// Renders the playlist text.
    pub fn render(&self) -> String {
        self.render_with_query("")
    }

    /// Renders the playlist with `query` (e.g. `?token=…`, or empty) appended to every URI,
    /// so a private stream's play token reaches every part and segment request.
    pub fn render_with_query(&self, query: &str) -> String {
        let mut out = String::with_capacity(2048);
        let part_target = self.part_target;
        let _ = write!(
            out,
            "#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-TARGETDURATION:{}\n\
             #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3}\n\
             #EXT-X-PART-INF:PART-TARGET={:.3}\n#EXT-X-MEDIA-SEQUENCE:{}\n",
            self.target_duration(),
            part_target * 3.0,
            part_target,
            self.media_sequence(),
        );
        if self.discontinuity_sequence > 0 {
            let _ = writeln!(
                out,
                "#EXT-X-DISCONTINUITY-SEQUENCE:{}",
                self.discontinuity_sequence
            );
        }
        let with_parts_from = self.segments.len().saturating_sub(SEGMENTS_WITH_PARTS);
        let mut current_init = None;
        for (i, seg) in self.segments.iter().enumerate() {
            write_segment_head(
                &mut out,
                seg.discontinuity && i > 0,
                (&self.prefix, seg.init_id),
                &mut current_init,
                seg.program_date_time,
                query,
            );
            if i >= with_parts_from {
                write_parts(&mut out, &self.prefix, seg.msn, &seg.parts, query);
            }
            let _ = write!(
                out,
                "#EXTINF:{:.5},\n{}{query}\n",
                seg.duration,
                segment_uri(&self.prefix, seg.msn)
            );
        }
        if let Some(open) = &self.open {
            write_segment_head(
                &mut out,
                open.discontinuity && !self.segments.is_empty(),
                (&self.prefix, open.init_id),
                &mut current_init,
                open.program_date_time,
                query,
            );
            write_parts(&mut out, &self.prefix, open.msn, &open.parts, query);
            if !self.ended {
                let _ = writeln!(
                    out,
                    "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}{query}\"",
                    part_uri(&self.prefix, open.msn, open.parts.len())
                );
            }
        }
        if self.ended {
            out.push_str("#EXT-X-ENDLIST\n");
        }
        out
    }
}

fn write_segment_head(
    out: &mut String,
    discontinuity: bool,
    (prefix, init_id): (&str, u32),
    current_init: &mut Option<u32>,
    pdt: SystemTime,
    query: &str,
) {
    if discontinuity {
        out.push_str("#EXT-X-DISCONTINUITY\n");
    }
    if *current_init != Some(init_id) {
        let _ = writeln!(
            out,
            "#EXT-X-MAP:URI=\"{}{query}\"",
            init_uri(prefix, init_id)
        );
        *current_init = Some(init_id);
    }
    let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{}", format_pdt(pdt));
}

fn write_parts(out: &mut String, prefix: &str, msn: u64, parts: &[PartEntry], query: &str) {
    for (i, p) in parts.iter().enumerate() {
        let _ = write!(
            out,
            "#EXT-X-PART:DURATION={:.5},URI=\"{}{query}\"",
            p.duration,
            part_uri(prefix, msn, i)
        );
        if p.independent {
            out.push_str(",INDEPENDENT=YES");
        }
        out.push('\n');
    }
}

/// `2026-11-25T12:00:00.123Z`
pub fn format_pdt(t: SystemTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    OffsetDateTime::from(t).format(FORMAT).unwrap_or_default()
}

/// A variant of the multivariant playlist.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Variant {
    /// Peak bits per second (the largest segment bitrate in the window).
    pub bandwidth: u64,
    /// Average bits per second over the window.
    pub average_bandwidth: Option<u64>,
    /// RFC 6381 codec strings.
    pub codecs: Vec<String>,
    /// Width and height, for video.
    pub resolution: Option<(u32, u32)>,
    /// Nominal frame rate, for video.
    pub frame_rate: Option<f64>,
    /// URI of the media playlist.
    pub uri: String,
}

/// Renders a multivariant playlist.
pub fn render_multivariant(variants: &[Variant]) -> String {
    let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for v in variants {
        let _ = write!(
            out,
            "#EXT-X-STREAM-INF:BANDWIDTH={},CODECS=\"{}\"",
            v.bandwidth.max(1),
            v.codecs.join(",")
        );
        if let Some(avg) = v.average_bandwidth {
            let _ = write!(out, ",AVERAGE-BANDWIDTH={}", avg.max(1));
        }
        if let Some((w, h)) = v.resolution {
            let _ = write!(out, ",RESOLUTION={w}x{h}");
        }
        if let Some(fps) = v.frame_rate {
            let _ = write!(out, ",FRAME-RATE={fps:.3}");
        }
        let _ = write!(out, "\n{}\n", v.uri);
    }
    out
}

/// What to do with a playlist request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadDecision {
    /// The playlist already contains what was asked for: answer now.
    Ready,
    /// Hold the request until the playlist changes (up to 3 target durations, then 503).
    Wait,
    /// The request is malformed or too far in the future: 400.
    BadRequest,
}

/// Applies the blocking playlist reload rules to a request with `_HLS_msn` and `_HLS_part`.
pub fn reload_decision(pl: &MediaPlaylist, msn: Option<u64>, part: Option<u64>) -> ReloadDecision {
    let Some(msn) = msn else {
        // `_HLS_part` without `_HLS_msn` is an error; no parameters means "now".
        return if part.is_some() {
            ReloadDecision::BadRequest
        } else {
            ReloadDecision::Ready
        };
    };
    if pl.ended {
        return ReloadDecision::Ready;
    }
    let next = pl.next_msn();
    let open_parts = pl.open.as_ref().map_or(0, |o| o.parts.len() as u64);
    // "greater than the last Media Segment in the current Playlist plus two" (the open segment
    // counts as the last one being built).
    if msn > next + 2 {
        return ReloadDecision::BadRequest;
    }
    let advance_limit = if pl.part_target < 1.0 {
        (3.0 / pl.part_target).floor() as u64
    } else {
        3
    };
    match part {
        None if msn < next => ReloadDecision::Ready,
        None => ReloadDecision::Wait,
        Some(_) if msn < next => ReloadDecision::Ready,
        Some(p) if msn == next && p < open_parts => ReloadDecision::Ready,
        Some(p) if msn == next && p >= open_parts + advance_limit => ReloadDecision::BadRequest,
        Some(_) => ReloadDecision::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_764_072_000 + secs)
    }

    fn parts(n: usize) -> Vec<PartEntry> {
        (0..n)
            .map(|i| PartEntry {
                duration: 0.2,
                independent: i == 0,
            })
            .collect()
    }

    fn sample() -> MediaPlaylist {
        MediaPlaylist {
            part_target: 0.2,
            segment_target: 2.0,
            discontinuity_sequence: 0,
            segments: (3..6)
                .map(|msn| SegmentEntry {
                    msn,
                    duration: 2.0,
                    program_date_time: t(msn * 2),
                    discontinuity: msn == 5,
                    init_id: if msn == 5 { 1 } else { 0 },
                    parts: parts(10),
                })
                .collect(),
            open: Some(OpenSegment {
                msn: 6,
                program_date_time: t(12),
                discontinuity: false,
                init_id: 1,
                parts: parts(3),
            }),
            ended: false,
            longest_segment: 0.0,
            prefix: String::new(),
        }
    }

    #[test]
    fn renders_ll_hls_tags() {
        let text = sample().render();
        assert!(text.starts_with("#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-TARGETDURATION:2\n"));
        assert!(text.contains("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.600\n"));
        assert!(text.contains("#EXT-X-PART-INF:PART-TARGET=0.200\n"));
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:3\n"));
        // Parts only for the last two complete segments and the open one.
        assert!(!text.contains("part3.0.m4s"));
        assert!(text.contains("#EXT-X-PART:DURATION=0.20000,URI=\"part4.0.m4s\",INDEPENDENT=YES\n"));
        assert!(text.contains("part6.2.m4s\"\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part6.3.m4s\"\n"));
        assert!(text.contains("#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init1.mp4\"\n"));
        assert!(text.contains("#EXT-X-PROGRAM-DATE-TIME:2025-11-25T12:00:06.000Z\n"));
        assert!(text.contains("#EXTINF:2.00000,\nseg5.m4s\n"));
        assert!(!text.contains("ENDLIST"));
    }

    #[test]
    fn query_reaches_every_uri() {
        let text = sample().render_with_query("?token=abc");
        for line in text.lines() {
            if line.contains("URI=\"") {
                assert!(line.contains("?token=abc\""), "{line}");
            } else if !line.starts_with('#') {
                assert!(line.ends_with("?token=abc"), "{line}");
            }
        }
    }

    #[test]
    fn ended_playlist_has_endlist_and_no_hint() {
        let mut pl = sample();
        pl.ended = true;
        pl.open = None;
        let text = pl.render();
        assert!(text.ends_with("seg5.m4s\n#EXT-X-ENDLIST\n"));
        assert!(!text.contains("PRELOAD-HINT"));
    }

    #[test]
    fn rendered_playlist_parses_with_m3u8_rs() {
        let text = sample().render();
        match m3u8_rs::parse_playlist_res(text.as_bytes()) {
            Ok(m3u8_rs::Playlist::MediaPlaylist(pl)) => {
                assert_eq!(pl.media_sequence, 3);
                assert_eq!(pl.target_duration, 2);
                assert_eq!(pl.segments.len(), 3);
                assert_eq!(pl.segments[2].uri, "seg5.m4s");
                assert!(pl.segments[2].discontinuity);
            }
            other => panic!("not a media playlist: {other:?}"),
        }
    }

    #[test]
    fn long_segments_raise_the_target_duration_for_good() {
        let mut pl = sample();
        pl.segments[0].duration = 4.6;
        assert_eq!(pl.target_duration(), 5);
        // The long segment left the window: the tag does not shrink back.
        pl.segments.remove(0);
        pl.longest_segment = 4.6;
        assert_eq!(pl.target_duration(), 5);
    }

    #[test]
    fn blocking_reload_rules() {
        use ReloadDecision::*;
        let pl = sample();
        assert_eq!(reload_decision(&pl, None, None), Ready);
        assert_eq!(reload_decision(&pl, None, Some(1)), BadRequest);
        assert_eq!(reload_decision(&pl, Some(5), None), Ready);
        assert_eq!(reload_decision(&pl, Some(6), None), Wait);
        assert_eq!(reload_decision(&pl, Some(6), Some(2)), Ready);
        assert_eq!(reload_decision(&pl, Some(6), Some(3)), Wait);
        assert_eq!(reload_decision(&pl, Some(6), Some(18)), BadRequest);
        assert_eq!(reload_decision(&pl, Some(7), Some(0)), Wait);
        assert_eq!(reload_decision(&pl, Some(8), None), Wait);
        assert_eq!(reload_decision(&pl, Some(9), None), BadRequest);
        assert_eq!(reload_decision(&pl, Some(2), Some(0)), Ready);
        let mut ended = pl.clone();
        ended.ended = true;
        assert_eq!(reload_decision(&ended, Some(8), None), Ready);
    }

    #[test]
    fn multivariant_lists_codecs_and_resolution() {
        let text = render_multivariant(&[Variant {
            bandwidth: 2_500_000,
            average_bandwidth: Some(2_000_000),
            codecs: vec!["avc1.64001f".into(), "mp4a.40.2".into()],
            resolution: Some((1280, 720)),
            frame_rate: Some(30.0),
            uri: "media.m3u8".into(),
        }]);
        assert!(text.contains(
            "#EXT-X-STREAM-INF:BANDWIDTH=2500000,CODECS=\"avc1.64001f,mp4a.40.2\",AVERAGE-BANDWIDTH=2000000,RESOLUTION=1280x720,FRAME-RATE=30.000\nmedia.m3u8\n"
        ));
        assert!(matches!(
            m3u8_rs::parse_playlist_res(text.as_bytes()),
            Ok(m3u8_rs::Playlist::MasterPlaylist(_))
        ));
    }
}
