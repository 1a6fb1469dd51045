//! RTMP ingest: FLV audio/video tag bodies from an RTMP publisher → hub [`Frame`]s.
//!
//! Holds the codec configurations from the sequence headers and announces the stream's tracks
//! once every track the metadata promised has its configuration (or after a short wait, so a
//! publisher that lies in its metadata still goes live). Payloads are sliced, never copied.
//! Timestamps are the publisher's 32-bit milliseconds, unwrapped to 64 bits. A changed
//! sequence header mid-stream re-announces the tracks (subscribers see a discontinuity).
//!
//! Video: H.264 (legacy or `avc1`), HEVC (`hvc1`, or the legacy codec id 12), AV1 (`av01`) and
//! VP9 (`vp09`). Audio: AAC (legacy or `mp4a`) and Opus. An AV1 or VP9 record that does not
//! give the picture size waits for the first keyframe's. Enhanced RTMP v2 multitrack: track 0
//! (and the plain, non-multitrack packets) are the stream's main tracks; every other track is
//! described as a sub-stream (codec, bytes, bitrate) and not routed.

use std::sync::Arc;

use bytes::Bytes;

use crate::hub::{Publisher, SubStream};
use crate::media::aac::AacConfig;
use crate::media::av1::Av1Config;
use crate::media::h264::AvcConfig;
use crate::media::hevc::HevcConfig;
use crate::media::opus::OpusConfig;
use crate::media::vp9::{self, Vp9Config};
use crate::media::{CodecConfig, Frame, Track, TrackId, TrackKind, Tracks};
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
/// Sub-streams described at most (a multitrack publisher's extra tracks).
const MAX_SUB_STREAMS: usize = 16;
/// Media time (ms) between updates of the sub-streams' counters in the hub.
const SUB_STREAM_UPDATE_MS: i64 = 1000;

/// A tag that cannot be used; the connection goes on unless the caller decides otherwise.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The tag is malformed.
    #[error("flv: {0}")]
    Flv(#[from] flv::FlvError),
    /// The AVC sequence header is malformed.
    #[error("avc config: {0}")]
    Avc(#[from] crate::media::h264::H264Error),
    /// The HEVC sequence start is malformed.
    #[error("hevc config: {0}")]
    Hevc(#[from] crate::media::hevc::HevcError),
    /// The AV1 sequence start is malformed.
    #[error("av1 config: {0}")]
    Av1(#[from] crate::media::av1::Av1Error),
    /// The VP9 sequence start is malformed.
    #[error("vp9 config: {0}")]
    Vp9(#[from] crate::media::vp9::Vp9Error),
    /// The AAC sequence header is malformed.
    #[error("aac config: {0}")]
    Aac(#[from] crate::media::aac::AacError),
    /// The Opus sequence start is malformed.
    #[error("opus config: {0}")]
    Opus(#[from] crate::media::opus::OpusError),
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

/// Whether two configurations are the same record (a repeated sequence header changes
/// nothing, even after a keyframe taught an AV1/VP9 record its picture size).
fn same_record(a: &CodecConfig, b: &CodecConfig) -> bool {
    match (a, b) {
        (CodecConfig::H264(x), CodecConfig::H264(y)) => x.raw == y.raw,
        (CodecConfig::Hevc(x), CodecConfig::Hevc(y)) => x.raw == y.raw,
        (CodecConfig::Av1(x), CodecConfig::Av1(y)) => x.raw == y.raw,
        (CodecConfig::Vp9(x), CodecConfig::Vp9(y)) => x.raw == y.raw,
        (CodecConfig::Aac(x), CodecConfig::Aac(y)) => x.raw == y.raw,
        (x, y) => x == y,
    }
}

/// Whether a tag of `codec` belongs to a track configured as `config`.
fn video_matches(config: &CodecConfig, codec: VideoCodec) -> bool {
    matches!(
        (config, codec),
        (CodecConfig::H264(_), VideoCodec::H264)
            | (CodecConfig::Hevc(_), VideoCodec::Hevc)
            | (CodecConfig::Av1(_), VideoCodec::Av1)
            | (CodecConfig::Vp9(_), VideoCodec::Vp9)
    )
}

fn audio_matches(config: &CodecConfig, codec: AudioCodec) -> bool {
    matches!(
        (config, codec),
        (CodecConfig::Aac(_), AudioCodec::Aac) | (CodecConfig::Opus(_), AudioCodec::Opus)
    )
}

/// Whether the picture size is known (AV1/VP9 records may leave it to the first keyframe).
fn has_size(config: &CodecConfig) -> bool {
    config
        .video_info()
        .is_none_or(|i| i.width > 0 && i.height > 0)
}

/// Bookkeeping for one sub-stream.
#[derive(Debug)]
struct Sub {
    info: SubStream,
    first_dts: Option<i64>,
    last_dts: i64,
}

/// Converts one publisher's tags into hub frames.
#[derive(Debug)]
pub struct RtmpIngest {
    publisher: Publisher,
    video: Option<CodecConfig>,
    /// An AV1/VP9 record waiting for a keyframe to give its picture size.
    size_pending: Option<CodecConfig>,
    audio: Option<CodecConfig>,
    expect_video: bool,
    expect_audio: bool,
    metadata_seen: bool,
    announced: Option<Arc<Tracks>>,
    pending: Vec<Frame>,
    pending_bytes: usize,
    clock: Unwrapper,
    warned_codec: bool,
    subs: Vec<Sub>,
    subs_published_at: Option<i64>,
}

impl RtmpIngest {
    /// Feeds `publisher`.
    pub fn new(publisher: Publisher) -> Self {
        RtmpIngest {
            publisher,
            video: None,
            size_pending: None,
            audio: None,
            expect_video: false,
            expect_audio: false,
            metadata_seen: false,
            announced: None,
            pending: Vec::new(),
            pending_bytes: 0,
            clock: Unwrapper::default(),
            warned_codec: false,
            subs: Vec::new(),
            subs_published_at: None,
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
            VideoTag::Multitrack(tracks) => {
                // Track ids are unique within a tag (the parser checks), so track 0 comes
                // once; its error is reported after the other tracks are counted.
                let mut result = Ok(());
                for (id, tag) in tracks {
                    if id == 0 {
                        result = self.main_video(dts, tag);
                    } else {
                        self.sub_video(id, dts, tag);
                    }
                }
                self.publish_subs(dts);
                result
            }
            tag => self.main_video(dts, tag),
        }
    }

    fn main_video(&mut self, dts: i64, tag: VideoTag) -> Result<(), IngestError> {
        match tag {
            VideoTag::SequenceHeader { codec, config } => {
                let Some(cfg) = video_config(codec, config)? else {
                    self.warn_codec(&format!("video {codec:?}"));
                    return Ok(());
                };
                if self.video.as_ref().is_some_and(|v| same_record(v, &cfg))
                    || self
                        .size_pending
                        .as_ref()
                        .is_some_and(|v| same_record(v, &cfg))
                {
                    return Ok(());
                }
                self.expect_video = true;
                if has_size(&cfg) {
                    self.size_pending = None;
                    self.video = Some(cfg);
                    self.config_changed();
                } else {
                    // An AV1/VP9 record without the picture size: the current video goes on
                    // until a keyframe of the new codec gives the size.
                    self.size_pending = Some(cfg);
                }
            }
            VideoTag::Frame {
                codec,
                keyframe,
                composition_time,
                data,
            } => {
                if let Some(pending) = self.size_pending.as_mut() {
                    if video_matches(pending, codec) {
                        if !keyframe || !learn_size(pending, &data) {
                            return Ok(());
                        }
                        self.video = self.size_pending.take();
                        self.config_changed();
                    }
                }
                let Some(config) = self.video.as_ref() else {
                    if !matches!(
                        codec,
                        VideoCodec::H264 | VideoCodec::Hevc | VideoCodec::Av1 | VideoCodec::Vp9
                    ) {
                        self.warn_codec(&format!("video {codec:?}"));
                    }
                    return Ok(());
                };
                if !video_matches(config, codec) {
                    return Ok(());
                }
                self.frame(Frame {
                    track: VIDEO_TRACK,
                    dts,
                    pts: dts + i64::from(composition_time),
                    keyframe,
                    data,
                });
            }
            VideoTag::EndOfSequence { .. }
            | VideoTag::Metadata
            | VideoTag::Command
            | VideoTag::Multitrack(_) => {}
        }
        Ok(())
    }

    /// An FLV audio tag body at `timestamp` ms.
    pub fn on_audio(&mut self, timestamp: u32, tag: Bytes) -> Result<(), IngestError> {
        let dts = self.clock.unwrap(timestamp);
        match flv::parse_audio(tag)? {
            AudioTag::Multitrack(tracks) => {
                let mut result = Ok(());
                for (id, tag) in tracks {
                    if id == 0 {
                        result = self.main_audio(dts, tag);
                    } else {
                        self.sub_audio(id, dts, tag);
                    }
                }
                self.publish_subs(dts);
                result
            }
            tag => self.main_audio(dts, tag),
        }
    }

    fn main_audio(&mut self, dts: i64, tag: AudioTag) -> Result<(), IngestError> {
        match tag {
            AudioTag::SequenceHeader { codec, config } => {
                let Some(cfg) = audio_config(codec, &config)? else {
                    self.warn_codec(&format!("audio {codec:?}"));
                    return Ok(());
                };
                if self.audio.as_ref().is_none_or(|a| !same_record(a, &cfg)) {
                    self.audio = Some(cfg);
                    self.expect_audio = true;
                    self.config_changed();
                }
            }
            AudioTag::Frame { codec, data } => match &self.audio {
                Some(config) if audio_matches(config, codec) => {
                    self.frame(Frame {
                        track: AUDIO_TRACK,
                        dts,
                        pts: dts,
                        keyframe: true,
                        data,
                    });
                }
                Some(_) => {}
                None => {
                    if !matches!(codec, AudioCodec::Aac | AudioCodec::Opus) {
                        self.warn_codec(&format!("audio {codec:?}"));
                    }
                }
            },
            AudioTag::Other { sound_format } => {
                if sound_format != 9 {
                    self.warn_codec(&format!("audio format {sound_format}"));
                }
            }
            AudioTag::Multitrack(_) => {}
        }
        Ok(())
    }

    fn sub(&mut self, id: u8, kind: TrackKind) -> Option<&mut Sub> {
        let at = match self
            .subs
            .iter()
            .position(|s| s.info.track_id == id && s.info.kind == kind)
        {
            Some(at) => at,
            None if self.subs.len() < MAX_SUB_STREAMS => {
                self.subs.push(Sub {
                    info: SubStream {
                        track_id: id,
                        codec: None,
                        kind,
                        bytes_in: 0,
                        bitrate_bps: 0,
                    },
                    first_dts: None,
                    last_dts: 0,
                });
                self.subs.len() - 1
            }
            None => return None,
        };
        self.subs.get_mut(at)
    }

    fn sub_video(&mut self, id: u8, dts: i64, tag: VideoTag) {
        let Some(sub) = self.sub(id, TrackKind::Video) else {
            return;
        };
        match tag {
            VideoTag::SequenceHeader { codec, config } => {
                sub.info.codec = video_config(codec, config).ok().flatten();
            }
            VideoTag::Frame { keyframe, data, .. } => {
                if let Some(c) = sub.info.codec.as_mut().filter(|c| !has_size(c)) {
                    if keyframe {
                        learn_size(c, &data);
                    }
                }
                sub.count(dts, data.len());
            }
            _ => {}
        }
    }

    fn sub_audio(&mut self, id: u8, dts: i64, tag: AudioTag) {
        let Some(sub) = self.sub(id, TrackKind::Audio) else {
            return;
        };
        match tag {
            AudioTag::SequenceHeader { codec, config } => {
                sub.info.codec = audio_config(codec, &config).ok().flatten();
            }
            AudioTag::Frame { data, .. } => sub.count(dts, data.len()),
            _ => {}
        }
    }

    /// Hands the sub-streams' descriptions to the hub about once a second of media time.
    fn publish_subs(&mut self, dts: i64) {
        if self
            .subs_published_at
            .is_some_and(|at| (0..SUB_STREAM_UPDATE_MS).contains(&(dts - at)))
        {
            return;
        }
        self.subs_published_at = Some(dts);
        let list = self.subs.iter().map(|s| s.info.clone()).collect();
        self.publisher.set_sub_streams(list);
    }

    fn warn_codec(&mut self, what: &str) {
        if !self.warned_codec {
            self.warned_codec = true;
            tracing::warn!(
                stream = %self.publisher.stream().id,
                "rtmp: {what} is not supported (H.264, HEVC, AV1, VP9, AAC and Opus are); those tags are ignored"
            );
        }
    }

    fn tracks(&self) -> Tracks {
        let mut list = Vec::new();
        if let Some(v) = self.video.as_ref().filter(|v| has_size(v)) {
            list.push(Track {
                id: VIDEO_TRACK,
                timescale: 1000,
                codec: v.clone(),
            });
        }
        if let Some(a) = &self.audio {
            list.push(Track {
                id: AUDIO_TRACK,
                timescale: 1000,
                codec: a.clone(),
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
        let video = self.video.as_ref().is_some_and(has_size);
        (video || !self.expect_video)
            && (self.audio.is_some() || !self.expect_audio)
            && (video || self.audio.is_some())
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

impl Sub {
    fn count(&mut self, dts: i64, bytes: usize) {
        self.info.bytes_in = self.info.bytes_in.saturating_add(bytes as u64);
        let first = *self.first_dts.get_or_insert(dts);
        self.last_dts = self.last_dts.max(dts);
        let ms = self.last_dts - first;
        if ms > 0 {
            self.info.bitrate_bps = self.info.bytes_in.saturating_mul(8000) / ms as u64;
        }
    }
}

/// The configuration of a video sequence start; `None` for a codec the server does not take.
fn video_config(codec: VideoCodec, config: Bytes) -> Result<Option<CodecConfig>, IngestError> {
    Ok(Some(match codec {
        VideoCodec::H264 => CodecConfig::H264(AvcConfig::parse(config)?),
        VideoCodec::Hevc => CodecConfig::Hevc(HevcConfig::parse(config)?),
        VideoCodec::Av1 => CodecConfig::Av1(Av1Config::parse(config)?),
        VideoCodec::Vp9 => CodecConfig::Vp9(Vp9Config::parse(config)?),
        VideoCodec::Other(_) => return Ok(None),
    }))
}

/// The configuration of an audio sequence start; `None` for a codec the server does not take.
fn audio_config(codec: AudioCodec, config: &Bytes) -> Result<Option<CodecConfig>, IngestError> {
    Ok(Some(match codec {
        AudioCodec::Aac => CodecConfig::Aac(AacConfig::parse(config.clone())?),
        AudioCodec::Opus => CodecConfig::Opus(OpusConfig::parse_head(config)?),
        AudioCodec::Mp3 | AudioCodec::Other(_) => return Ok(None),
    }))
}

/// Learns an AV1/VP9 picture size from a keyframe; whether it is now known.
fn learn_size(config: &mut CodecConfig, keyframe: &[u8]) -> bool {
    match config {
        CodecConfig::Av1(c) => c.learn_size(keyframe),
        CodecConfig::Vp9(c) => {
            if let Some((w, h)) = vp9::keyframe_size(keyframe) {
                c.width = w;
                c.height = h;
            }
        }
        _ => {}
    }
    has_size(config)
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

    fn enhanced(packet: u8, frame_type: u8, fourcc: &[u8; 4], rest: &[u8]) -> Bytes {
        let mut v = vec![0x80 | (frame_type << 4) | packet];
        v.extend_from_slice(fourcc);
        v.extend_from_slice(rest);
        Bytes::from(v)
    }

    #[test]
    fn hevc_and_opus_over_enhanced_rtmp_reach_the_hub() {
        use crate::media::opus::OpusConfig;
        use crate::media::test_support::HVCC_1080P_MAIN;
        let hub = Hub::default();
        let mut ingest = RtmpIngest::new(hub.publish("s", "rtmp").unwrap());
        let mut sub = hub.subscribe("s", "rtmp").unwrap();
        ingest.on_metadata(&Amf0Value::object([
            ("videocodecid", Amf0Value::Number(1752589105.0)),
            ("audiocodecid", Amf0Value::Number(1332770163.0)),
        ]));
        ingest
            .on_video(0, enhanced(0, 1, b"hvc1", HVCC_1080P_MAIN))
            .unwrap();
        let head = OpusConfig {
            channels: 2,
            input_sample_rate: 48_000,
            pre_skip: 312,
        }
        .head();
        let mut audio = vec![0x90];
        audio.extend_from_slice(b"Opus");
        audio.extend_from_slice(&head);
        ingest.on_audio(0, Bytes::from(audio)).unwrap();
        // CodedFrames with a CTS of 40 ms, then CodedFramesX (no CTS).
        ingest
            .on_video(0, enhanced(1, 1, b"hvc1", &[0, 0, 40, 0, 0, 0, 1, 0x26]))
            .unwrap();
        ingest
            .on_video(33, enhanced(3, 2, b"hvc1", &[0, 0, 0, 1, 0x02]))
            .unwrap();
        let mut opus = vec![0x91];
        opus.extend_from_slice(b"Opus");
        opus.push(0xfc);
        ingest.on_audio(20, Bytes::from(opus)).unwrap();
        let (tracks, frames) = drain(&mut sub);
        assert_eq!(tracks, 1);
        assert_eq!(frames, vec![(0, 0, 40), (0, 33, 33), (1, 20, 20)]);
        let t = hub.get("s").unwrap().tracks().unwrap();
        assert_eq!(t.list[0].codec.name(), "hevc");
        assert_eq!(t.list[1].codec.name(), "opus");
    }

    #[test]
    fn vp9_waits_for_a_keyframe_to_learn_its_size() {
        use crate::media::test_support::VPCC_PROFILE0;
        let hub = Hub::default();
        let mut ingest = RtmpIngest::new(hub.publish("s", "rtmp").unwrap());
        let mut sub = hub.subscribe("s", "rtmp").unwrap();
        ingest
            .on_video(0, enhanced(0, 1, b"vp09", VPCC_PROFILE0))
            .unwrap();
        // An inter frame first: useless without a keyframe, dropped.
        ingest
            .on_video(0, enhanced(1, 2, b"vp09", &[0x86, 0, 0]))
            .unwrap();
        assert_eq!(drain(&mut sub), (0, vec![]));
        // A keyframe: frame marker, profile 0, key, sync code, BT.601, 640x360.
        let key = [0x82, 0x49, 0x83, 0x42, 0x00, 0x27, 0xf0, 0x16, 0x70, 0x00];
        ingest.on_video(33, enhanced(1, 1, b"vp09", &key)).unwrap();
        let (tracks, frames) = drain(&mut sub);
        assert_eq!((tracks, frames), (1, vec![(0, 33, 33)]));
        let info = hub.get("s").unwrap().tracks().unwrap().list[0]
            .codec
            .video_info()
            .unwrap();
        assert_eq!((info.width, info.height), (640, 360));
    }

    #[test]
    fn a_size_less_record_does_not_stop_the_current_video_until_its_keyframe() {
        use crate::media::test_support::{AVCC_720P, VPCC_PROFILE0};
        let hub = Hub::default();
        let mut ingest = RtmpIngest::new(hub.publish("s", "rtmp").unwrap());
        let mut sub = hub.subscribe("s", "rtmp").unwrap();
        ingest
            .on_video(0, avc_sequence_header_tag(AVCC_720P))
            .unwrap();
        ingest.on_video(0, video_frame(true, 0)).unwrap();
        ingest
            .on_video(0, enhanced(0, 1, b"vp09", VPCC_PROFILE0))
            .unwrap();
        ingest.on_video(33, video_frame(false, 0)).unwrap();
        ingest
            .on_video(40, enhanced(1, 2, b"vp09", &[0x86, 0, 0]))
            .unwrap();
        assert_eq!(drain(&mut sub), (1, vec![(0, 0, 0), (0, 33, 33)]));
        let key = [0x82, 0x49, 0x83, 0x42, 0x00, 0x27, 0xf0, 0x16, 0x70, 0x00];
        ingest.on_video(66, enhanced(1, 1, b"vp09", &key)).unwrap();
        ingest.on_video(70, video_frame(false, 0)).unwrap();
        assert_eq!(
            drain(&mut sub),
            (1, vec![(0, 66, 66)]),
            "switched to VP9 at its keyframe; H.264 frames after it are dropped"
        );
    }

    #[test]
    fn multitrack_keeps_track_zero_and_describes_the_rest() {
        use crate::media::test_support::{AV1C_360P, AVCC_720P};
        let hub = Hub::default();
        let mut ingest = RtmpIngest::new(hub.publish("s", "rtmp").unwrap());
        let mut sub = hub.subscribe("s", "rtmp").unwrap();
        ingest
            .on_video(0, avc_sequence_header_tag(AVCC_720P))
            .unwrap();
        // Track 1: AV1 in multitrack OneTrack packets.
        let mut start = vec![0x96, 0x00];
        start.extend_from_slice(b"av01");
        start.push(1);
        start.extend_from_slice(AV1C_360P);
        ingest.on_video(0, Bytes::from(start)).unwrap();
        ingest.on_video(0, video_frame(true, 0)).unwrap();
        for i in 0..40u8 {
            let mut f = vec![if i == 0 { 0x96 } else { 0xA6 }, 0x01];
            f.extend_from_slice(b"av01");
            f.push(1);
            f.extend_from_slice(&[0x32, 0x00, i]);
            ingest.on_video(u32::from(i) * 33, Bytes::from(f)).unwrap();
        }
        let (tracks, frames) = drain(&mut sub);
        assert_eq!(tracks, 1);
        assert_eq!(frames.len(), 1, "only track 0's frames reach the hub");
        let snap = hub.get("s").unwrap().snapshot();
        assert_eq!(snap.tracks.unwrap().list.len(), 1);
        let sub = &snap.sub_streams[0];
        assert_eq!(sub.track_id, 1);
        assert_eq!(sub.codec.as_ref().map(|c| c.name()), Some("av1"));
        // Published to the hub about once a second of media time.
        assert!((3..=40 * 3).contains(&sub.bytes_in), "{}", sub.bytes_in);
        assert!(sub.bitrate_bps > 0);
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
