//! RTMP ingest: FLV audio/video tag bodies from an RTMP publisher → hub [`Frame`]s.
//!
//! Holds the codec configurations from the sequence headers and announces the stream's tracks
//! once every track the metadata promised has its configuration (or after a short wait, so a
//! publisher that lies in its metadata still goes live). Payloads are sliced, never copied.
//! Timestamps are the publisher's 32-bit milliseconds, unwrapped to 64 bits. A changed
//! sequence header mid-stream re-announces the tracks (subscribers see a discontinuity).
//! H.264 and AAC reach the hub; other codecs are parsed and reported, then ignored.

use std::sync::Arc;

use bytes::Bytes;

use crate::hub::Publisher;
use crate::media::aac::AacConfig;
use crate::media::h264::AvcConfig;
use crate::media::{CodecConfig, Frame, Track, TrackId, Tracks};
use crate::proto::flv::{self, AudioCodec, AudioTag, VideoCodec, VideoTag};
use crate::proto::rtmp::amf0::Amf0Value;

/// Track id of the video track of an RTMP stream.
pub const VIDEO_TRACK: TrackId = TrackId(0);
/// Track id of the audio track of an RTMP stream.
pub const AUDIO_TRACK: TrackId = TrackId(1);
/// Frames held at most while waiting for every sequence header.
const MAX_PENDING: usize = 512;
/// Bytes held at most while waiting for every sequence header.
const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;
/// Media time (ms) after which tracks are announced even if a promised one never came.
const ANNOUNCE_WAIT_MS: i64 = 2000;

/// A tag that cannot be used; the connection goes on unless the caller decides otherwise.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The tag is malformed.
    #[error("flv: {0}")]
    Flv(#[from] flv::FlvError),
    /// The AVC sequence header is malformed.
    #[error("avc config: {0}")]
    Avc(#[from] crate::media::h264::H264Error),
    /// The AAC sequence header is malformed.
    #[error("aac config: {0}")]
    Aac(#[from] crate::media::aac::AacError),
}

/// Unwraps 32-bit RTMP timestamps into a monotonic-ish 64-bit timeline.
#[derive(Debug, Default)]
struct Unwrapper {
    last: Option<u32>,
    epoch: i64,
}

impl Unwrapper {
    fn unwrap(&mut self, ts: u32) -> i64 {
        if let Some(last) = self.last {
            if ts < last && last - ts > 1 << 31 {
                self.epoch += 1 << 32;
            } else if ts > last && ts - last > 1 << 31 && self.epoch > 0 {
                // A late frame from before the wrap.
                self.last = Some(last);
                return self.epoch - (1 << 32) + i64::from(ts);
            }
        }
        self.last = Some(ts);
        self.epoch + i64::from(ts)
    }
}

/// Converts one publisher's tags into hub frames.
#[derive(Debug)]
pub struct RtmpIngest {
    publisher: Publisher,
    video: Option<AvcConfig>,
    audio: Option<AacConfig>,
    expect_video: bool,
    expect_audio: bool,
    metadata_seen: bool,
    announced: Option<Arc<Tracks>>,
    pending: Vec<Frame>,
    pending_bytes: usize,
    clock: Unwrapper,
    warned_codec: bool,
}

impl RtmpIngest {
    /// Feeds `publisher`.
    pub fn new(publisher: Publisher) -> Self {
        RtmpIngest {
            publisher,
            video: None,
            audio: None,
            expect_video: false,
            expect_audio: false,
            metadata_seen: false,
            announced: None,
            pending: Vec::new(),
            pending_bytes: 0,
            clock: Unwrapper::default(),
            warned_codec: false,
        }
    }

    /// The publisher being fed.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// `onMetaData`: learns which tracks to wait for.
    pub fn on_metadata(&mut self, meta: &Amf0Value) {
        let present = |k: &str| {
            meta.get(k).is_some_and(|v| {
                !matches!(
                    v,
                    Amf0Value::Null | Amf0Value::Undefined | Amf0Value::Boolean(false)
                )
            })
        };
        self.metadata_seen = true;
        self.expect_video |= present("videocodecid");
        self.expect_audio |= present("audiocodecid");
    }

    /// An FLV video tag body at `timestamp` ms.
    pub fn on_video(&mut self, timestamp: u32, tag: Bytes) -> Result<(), IngestError> {
        let dts = self.clock.unwrap(timestamp);
        match flv::parse_video(tag)? {
            VideoTag::SequenceHeader {
                codec: VideoCodec::H264,
                config,
            } => {
                let cfg = AvcConfig::parse(config)?;
                if self.video.as_ref().is_none_or(|v| v.raw != cfg.raw) {
                    self.video = Some(cfg);
                    self.expect_video = true;
                    self.config_changed();
                }
            }
            VideoTag::Frame {
                codec: VideoCodec::H264,
                keyframe,
                composition_time,
                data,
            } => {
                if self.video.is_some() {
                    self.frame(Frame {
                        track: VIDEO_TRACK,
                        dts,
                        pts: dts + i64::from(composition_time),
                        keyframe,
                        data,
                    });
                }
            }
            VideoTag::SequenceHeader { codec, .. } | VideoTag::Frame { codec, .. } => {
                self.warn_codec(&format!("video {codec:?}"));
            }
            VideoTag::EndOfSequence { .. } | VideoTag::Metadata | VideoTag::Command => {}
        }
        Ok(())
    }

    /// An FLV audio tag body at `timestamp` ms.
    pub fn on_audio(&mut self, timestamp: u32, tag: Bytes) -> Result<(), IngestError> {
        let dts = self.clock.unwrap(timestamp);
        match flv::parse_audio(tag)? {
            AudioTag::SequenceHeader {
                codec: AudioCodec::Aac,
                config,
            } => {
                let cfg = AacConfig::parse(config)?;
                if self.audio.as_ref().is_none_or(|a| a.raw != cfg.raw) {
                    self.audio = Some(cfg);
                    self.expect_audio = true;
                    self.config_changed();
                }
            }
            AudioTag::Frame {
                codec: AudioCodec::Aac,
                data,
            } => {
                if self.audio.is_some() {
                    self.frame(Frame {
                        track: AUDIO_TRACK,
                        dts,
                        pts: dts,
                        keyframe: true,
                        data,
                    });
                }
            }
            AudioTag::SequenceHeader { codec, .. } | AudioTag::Frame { codec, .. } => {
                self.warn_codec(&format!("audio {codec:?}"));
            }
            AudioTag::Other { sound_format } => {
                self.warn_codec(&format!("audio format {sound_format}"));
            }
        }
        Ok(())
    }

    fn warn_codec(&mut self, what: &str) {
        if !self.warned_codec {
            self.warned_codec = true;
            tracing::warn!(
                stream = %self.publisher.stream().id,
                "rtmp: {what} is not supported yet (H.264 and AAC are); those tags are ignored"
            );
        }
    }

    fn tracks(&self) -> Tracks {
        let mut list = Vec::new();
        if let Some(v) = &self.video {
            list.push(Track {
                id: VIDEO_TRACK,
                timescale: 1000,
                codec: CodecConfig::H264(v.clone()),
            });
        }
        if let Some(a) = &self.audio {
            list.push(Track {
                id: AUDIO_TRACK,
                timescale: 1000,
                codec: CodecConfig::Aac(a.clone()),
            });
        }
        Tracks { list }
    }

    /// A sequence header arrived or changed: announce again if already live, or for the
    /// first time if the metadata's promises are now kept.
    fn config_changed(&mut self) {
        if self.announced.is_some() {
            self.announce();
        } else if self.metadata_seen && self.ready() {
            self.announce();
            self.flush_pending();
        }
    }

    /// Every track the metadata promised has its configuration. Without metadata, the
    /// sequence headers that came before the first frame are all there will be.
    fn ready(&self) -> bool {
        (self.video.is_some() || !self.expect_video)
            && (self.audio.is_some() || !self.expect_audio)
            && (self.video.is_some() || self.audio.is_some())
    }

    fn announce(&mut self) {
        let tracks = Arc::new(self.tracks());
        self.publisher.set_tracks(tracks.clone());
        self.announced = Some(tracks);
    }

    fn flush_pending(&mut self) {
        self.pending_bytes = 0;
        for f in std::mem::take(&mut self.pending) {
            self.publisher.push(f);
        }
    }

    fn frame(&mut self, frame: Frame) {
        if self.announced.is_some() {
            self.publisher.push(frame);
            return;
        }
        if !self.metadata_seen && self.ready() {
            self.announce();
            self.flush_pending();
            self.publisher.push(frame);
            return;
        }
        let waited = self
            .pending
            .first()
            .is_some_and(|first| frame.dts - first.dts > ANNOUNCE_WAIT_MS);
        self.pending_bytes += frame.data.len();
        self.pending.push(frame);
        if waited || self.pending.len() >= MAX_PENDING || self.pending_bytes >= MAX_PENDING_BYTES {
            self.announce();
            self.flush_pending();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Event, Hub};
    use crate::media::test_support::{ASC_LC_44100_STEREO, AVCC_720P};
    use crate::proto::flv::{
        aac_sequence_header_tag, avc_frame_tag_header, avc_sequence_header_tag,
    };

    fn video_frame(keyframe: bool, cts: i32) -> Bytes {
        let mut v = avc_frame_tag_header(keyframe, cts).to_vec();
        v.extend_from_slice(&[0, 0, 0, 1, if keyframe { 0x65 } else { 0x41 }]);
        Bytes::from(v)
    }

    fn audio_frame() -> Bytes {
        Bytes::from_static(&[0xAF, 0x01, 0x21, 0x10])
    }

    fn drain(sub: &mut crate::hub::Subscription) -> (usize, Vec<(u8, i64, i64)>) {
        let (mut tracks, mut frames) = (0, vec![]);
        while let Some(ev) = sub.try_recv() {
            match ev {
                Event::Tracks(_) => tracks += 1,
                Event::Frame(f) => frames.push((f.track.0, f.dts, f.pts)),
            }
        }
        (tracks, frames)
    }

    #[test]
    fn waits_for_both_sequence_headers_then_forwards() {
        let hub = Hub::default();
        let mut ingest = RtmpIngest::new(hub.publish("s", "rtmp").unwrap());
        let mut sub = hub.subscribe("s", "rtmp").unwrap();
        ingest.on_metadata(&Amf0Value::object([
            ("videocodecid", Amf0Value::Number(7.0)),
            ("audiocodecid", Amf0Value::Number(10.0)),
        ]));
        ingest
            .on_video(0, avc_sequence_header_tag(AVCC_720P))
            .unwrap();
        ingest.on_video(0, video_frame(true, 66)).unwrap();
        assert_eq!(drain(&mut sub), (0, vec![]), "audio config still missing");
        ingest
            .on_audio(0, aac_sequence_header_tag(ASC_LC_44100_STEREO))
            .unwrap();
        ingest.on_audio(10, audio_frame()).unwrap();
        ingest.on_video(33, video_frame(false, 0)).unwrap();
        let (tracks, frames) = drain(&mut sub);
        assert_eq!(tracks, 1);
        assert_eq!(frames, vec![(0, 0, 66), (1, 10, 10), (0, 33, 33)]);
        let t = hub.get("s").unwrap().snapshot().tracks.unwrap();
        assert_eq!(t.list.len(), 2);
    }

    #[test]
    fn video_only_goes_live_without_metadata() {
        let hub = Hub::default();
        let mut ingest = RtmpIngest::new(hub.publish("s", "rtmp").unwrap());
        let mut sub = hub.subscribe("s", "rtmp").unwrap();
        ingest
            .on_video(0, avc_sequence_header_tag(AVCC_720P))
            .unwrap();
        ingest.on_video(0, video_frame(true, 0)).unwrap();
        assert_eq!(drain(&mut sub), (1, vec![(0, 0, 0)]));
    }

    #[test]
    fn a_missing_promised_track_delays_only_briefly() {
        let hub = Hub::default();
        let mut ingest = RtmpIngest::new(hub.publish("s", "rtmp").unwrap());
        let mut sub = hub.subscribe("s", "rtmp").unwrap();
        ingest.on_metadata(&Amf0Value::object([
            ("videocodecid", Amf0Value::Number(7.0)),
            ("audiocodecid", Amf0Value::Number(10.0)),
        ]));
        ingest
            .on_video(0, avc_sequence_header_tag(AVCC_720P))
            .unwrap();
        for i in 0..70 {
            ingest
                .on_video(i * 33, video_frame(i % 30 == 0, 0))
                .unwrap();
        }
        let (tracks, frames) = drain(&mut sub);
        assert_eq!(tracks, 1);
        assert_eq!(frames.len(), 70);
    }

    #[test]
    fn changed_sequence_header_reannounces_and_repeats_do_not() {
        let hub = Hub::default();
        let mut ingest = RtmpIngest::new(hub.publish("s", "rtmp").unwrap());
        let mut sub = hub.subscribe("s", "rtmp").unwrap();
        ingest
            .on_video(0, avc_sequence_header_tag(AVCC_720P))
            .unwrap();
        ingest.on_video(0, video_frame(true, 0)).unwrap();
        assert_eq!(drain(&mut sub).0, 1, "announced at the first frame");
        ingest
            .on_video(40, avc_sequence_header_tag(AVCC_720P))
            .unwrap();
        assert_eq!(
            drain(&mut sub).0,
            0,
            "a repeated sequence header changes nothing"
        );
        ingest
            .on_audio(40, aac_sequence_header_tag(ASC_LC_44100_STEREO))
            .unwrap();
        assert_eq!(
            drain(&mut sub).0,
            1,
            "the audio track appeared: one re-announcement"
        );
        let tracks = hub.get("s").unwrap().tracks().unwrap();
        assert_eq!(tracks.list.len(), 2);
    }

    #[test]
    fn bad_tags_are_errors_not_panics() {
        let hub = Hub::default();
        let mut ingest = RtmpIngest::new(hub.publish("s", "rtmp").unwrap());
        assert!(ingest.on_video(0, Bytes::new()).is_err());
        assert!(ingest
            .on_video(0, Bytes::from_static(&[0x17, 0, 0, 0, 0, 1, 2]))
            .is_err());
        assert!(ingest.on_audio(0, Bytes::from_static(&[0xAF, 0])).is_err());
    }

    #[test]
    fn timestamps_unwrap_past_32_bits() {
        let mut u = Unwrapper::default();
        assert_eq!(u.unwrap(u32::MAX - 10), i64::from(u32::MAX) - 10);
        assert_eq!(u.unwrap(5), (1i64 << 32) + 5);
        assert_eq!(u.unwrap(u32::MAX - 20), i64::from(u32::MAX) - 20);
        assert_eq!(u.unwrap(40), (1i64 << 32) + 40);
    }
}
