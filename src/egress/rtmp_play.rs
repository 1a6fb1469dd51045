//! RTMP play: hub events → FLV tag bodies for an RTMP player (ffplay, VLC, OBS media source).
//!
//! On new tracks it yields `onMetaData` values and the sequence headers: legacy FLV for H.264
//! and AAC, Enhanced RTMP (FourCC) for HEVC, AV1, VP9 and Opus, as OBS and ffmpeg 6.1+ send
//! them and SRS serves them; each frame becomes one tag with a timestamp relative to the first frame the player got, so every
//! player starts near zero. The connection driver writes the tags through the RTMP session.
//! A tag is its few header bytes plus the frame's shared buffer: the payload is copied once,
//! by the chunk writer into the socket's output.

use bytes::Bytes;

use crate::media::{CodecConfig, Frame, Tracks};
use crate::proto::flv;
use crate::proto::rtmp::amf0::Amf0Value;
use crate::proto::rtmp::message::{TYPE_AUDIO, TYPE_VIDEO};
use crate::proto::rtmp::MediaSink;

/// One message for the player.
#[derive(Debug, Clone, PartialEq)]
pub enum PlayOutput {
    /// `onMetaData` object.
    Metadata(Amf0Value),
    /// An FLV tag body of `type_id` (8 audio, 9 video) at `timestamp` ms: `head` then `body`.
    Tag {
        /// RTMP message type.
        type_id: u8,
        /// Milliseconds.
        timestamp: u32,
        /// The tag's header bytes (codec/frame type, packet type, composition time).
        head: TagHead,
        /// The rest of the tag body: the frame's data, shared with every other viewer.
        body: Bytes,
    },
}

impl PlayOutput {
    /// Queues this output on an RTMP session.
    pub fn send_to(&self, sink: &mut impl MediaSink) {
        match self {
            PlayOutput::Metadata(m) => sink.send_metadata(m),
            PlayOutput::Tag {
                type_id,
                timestamp,
                head,
                body,
            } => sink.send_media_parts(*type_id, *timestamp, head.as_slice(), body),
        }
    }
}

/// Up to 8 header bytes of an FLV audio/video tag body, kept inline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TagHead {
    bytes: [u8; 8],
    len: u8,
}

impl TagHead {
    fn new(head: &[u8]) -> Self {
        let mut bytes = [0; 8];
        let len = head.len().min(8);
        bytes[..len].copy_from_slice(&head[..len]);
        TagHead {
            bytes,
            len: len as u8,
        }
    }

    /// The header bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Converts hub events for one player.
#[derive(Debug, Default)]
pub struct FlvMuxer {
    tracks: Option<std::sync::Arc<Tracks>>,
    base_ms: Option<i64>,
    /// The latest timestamp sent (sequence headers go out at it).
    last_ms: u32,
    /// Latest timestamp per kind (video, audio), for [`FlvMuxer::set_independent_kinds`].
    last_by_kind: [u32; 2],
    independent_kinds: bool,
}

impl FlvMuxer {
    /// Timestamps never go back within a kind (video, audio) instead of across both: for
    /// audio that runs behind its video (transcoded), which a global clamp would squash onto
    /// the video's timestamps.
    pub fn set_independent_kinds(&mut self, on: bool) {
        self.independent_kinds = on;
    }

    /// New tracks: metadata and sequence headers.
    pub fn on_tracks(&mut self, tracks: std::sync::Arc<Tracks>) -> Vec<PlayOutput> {
        let mut meta = Vec::new();
        let mut out = Vec::new();
        for t in &tracks.list {
            match &t.codec {
                CodecConfig::H264(c) => {
                    meta.push(("videocodecid", Amf0Value::Number(7.0)));
                    meta.push(("width", Amf0Value::Number(f64::from(c.info.width))));
                    meta.push(("height", Amf0Value::Number(f64::from(c.info.height))));
                    if let Some(fps) = c.info.fps {
                        meta.push(("framerate", Amf0Value::Number(fps)));
                    }
                    out.push(PlayOutput::Tag {
                        type_id: TYPE_VIDEO,
                        timestamp: self.last_ms,
                        head: TagHead::default(),
                        body: flv::avc_sequence_header_tag(&c.raw),
                    });
                }
                CodecConfig::Hevc(_) | CodecConfig::Av1(_) | CodecConfig::Vp9(_) => {
                    let (fourcc, raw) = enhanced_video(&t.codec);
                    let info = t.codec.video_info();
                    meta.push(("videocodecid", Amf0Value::Number(fourcc_number(fourcc))));
                    if let Some(i) = info.filter(|i| i.width > 0) {
                        meta.push(("width", Amf0Value::Number(f64::from(i.width))));
                        meta.push(("height", Amf0Value::Number(f64::from(i.height))));
                    }
                    if let Some(fps) = info.and_then(|i| i.fps) {
                        meta.push(("framerate", Amf0Value::Number(fps)));
                    }
                    out.push(PlayOutput::Tag {
                        type_id: TYPE_VIDEO,
                        timestamp: self.last_ms,
                        head: TagHead::default(),
                        body: flv::enhanced_video_sequence_start(fourcc, raw),
                    });
                }
                CodecConfig::Opus(c) => {
                    meta.push(("audiocodecid", Amf0Value::Number(fourcc_number(b"Opus"))));
                    meta.push(("audiosamplerate", Amf0Value::Number(48_000.0)));
                    meta.push(("audiochannels", Amf0Value::Number(f64::from(c.channels))));
                    out.push(PlayOutput::Tag {
                        type_id: TYPE_AUDIO,
                        timestamp: self.last_ms,
                        head: TagHead::default(),
                        body: flv::enhanced_audio_sequence_start(b"Opus", &c.head()),
                    });
                }
                // Camera JPEG tracks are not carried over RTMP (their H.264 track is).
                CodecConfig::Jpeg { .. } => {}
                CodecConfig::Aac(c) => {
                    meta.push(("audiocodecid", Amf0Value::Number(10.0)));
                    meta.push((
                        "audiosamplerate",
                        Amf0Value::Number(f64::from(c.sample_rate)),
                    ));
                    meta.push(("audiochannels", Amf0Value::Number(f64::from(c.channels))));
                    out.push(PlayOutput::Tag {
                        type_id: TYPE_AUDIO,
                        timestamp: self.last_ms,
                        head: TagHead::default(),
                        body: flv::aac_sequence_header_tag(&c.raw),
                    });
                }
            }
        }
        out.insert(0, PlayOutput::Metadata(Amf0Value::object(meta)));
        self.tracks = Some(tracks);
        out
    }

    /// One frame as a tag; `None` for a frame of an unknown track.
    pub fn on_frame(&mut self, frame: &Frame) -> Option<PlayOutput> {
        let tracks = self.tracks.as_ref()?;
        let track = tracks.get(frame.track)?;
        let scale = i64::from(track.timescale.max(1));
        let dts_ms = frame.dts * 1000 / scale;
        let cts_ms = (frame.pts - frame.dts) * 1000 / scale;
        let base = *self.base_ms.get_or_insert(dts_ms);
        let kind = usize::from(track.kind() == crate::media::TrackKind::Audio);
        let floor = if self.independent_kinds {
            self.last_by_kind[kind]
        } else {
            self.last_ms
        };
        let timestamp = u32::try_from((dts_ms - base).max(0))
            .unwrap_or(u32::MAX)
            .max(floor);
        self.last_by_kind[kind] = timestamp;
        self.last_ms = self.last_ms.max(timestamp);
        let (type_id, head) = match &track.codec {
            CodecConfig::H264(_) => {
                let cts = i32::try_from(cts_ms).unwrap_or(0);
                let head = flv::avc_frame_tag_header(frame.keyframe, cts);
                (TYPE_VIDEO, TagHead::new(&head))
            }
            CodecConfig::Aac(_) => (TYPE_AUDIO, TagHead::new(&flv::AAC_FRAME_TAG_HEADER)),
            CodecConfig::Hevc(_) | CodecConfig::Av1(_) | CodecConfig::Vp9(_) => {
                let (fourcc, _) = enhanced_video(&track.codec);
                let cts = i32::try_from(cts_ms).unwrap_or(0);
                let (head, len) = flv::enhanced_video_frame_header(fourcc, frame.keyframe, cts);
                (TYPE_VIDEO, TagHead::new(&head[..len]))
            }
            CodecConfig::Opus(_) => (
                TYPE_AUDIO,
                TagHead::new(&flv::enhanced_audio_frame_header(b"Opus")),
            ),
            CodecConfig::Jpeg { .. } => return None,
        };
        Some(PlayOutput::Tag {
            type_id,
            timestamp,
            head,
            body: frame.data.clone(),
        })
    }
}

/// The Enhanced RTMP FourCC and configuration record of an HEVC, AV1 or VP9 track.
fn enhanced_video(codec: &CodecConfig) -> (&'static [u8; 4], &[u8]) {
    match codec {
        CodecConfig::Hevc(c) => (b"hvc1", &c.raw),
        CodecConfig::Av1(c) => (b"av01", &c.raw),
        CodecConfig::Vp9(c) => (b"vp09", &c.raw),
        _ => (b"avc1", &[]),
    }
}

/// A FourCC as the number Enhanced RTMP's `onMetaData` uses for `videocodecid`/`audiocodecid`.
fn fourcc_number(fourcc: &[u8; 4]) -> f64 {
    f64::from(u32::from_be_bytes(*fourcc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::test_support::av_tracks;
    use crate::media::TrackId;
    use crate::proto::flv::{parse_video, VideoTag};

    #[test]
    fn sequence_headers_then_relative_timestamps() {
        let mut m = FlvMuxer::default();
        let out = m.on_tracks(std::sync::Arc::new(av_tracks()));
        assert_eq!(out.len(), 3);
        assert!(
            matches!(&out[0], PlayOutput::Metadata(v) if v.get("width").and_then(Amf0Value::as_f64) == Some(1280.0))
        );
        let f = Frame {
            track: TrackId(0),
            dts: 5000,
            pts: 5066,
            keyframe: true,
            data: Bytes::from_static(&[0, 0, 0, 1, 0x65]),
        };
        let Some(PlayOutput::Tag {
            type_id,
            timestamp,
            head,
            body,
        }) = m.on_frame(&f)
        else {
            panic!("no tag")
        };
        assert_eq!((type_id, timestamp), (TYPE_VIDEO, 0));
        assert_eq!(
            body.as_ptr(),
            f.data.as_ptr(),
            "the frame's buffer is shared, not copied"
        );
        let tag = Bytes::from([head.as_slice(), &body[..]].concat());
        match parse_video(tag).unwrap() {
            VideoTag::Frame {
                keyframe,
                composition_time,
                data,
                ..
            } => {
                assert!(keyframe);
                assert_eq!(composition_time, 66);
                assert_eq!(&data[..], &[0, 0, 0, 1, 0x65]);
            }
            other => panic!("{other:?}"),
        }
        let g = Frame {
            dts: 5040,
            pts: 5040,
            track: TrackId(1),
            keyframe: true,
            data: Bytes::from_static(b"a"),
        };
        assert!(matches!(
            m.on_frame(&g),
            Some(PlayOutput::Tag {
                type_id: TYPE_AUDIO,
                timestamp: 40,
                ..
            })
        ));
    }

    #[test]
    fn enhanced_codecs_go_out_as_enhanced_rtmp_tags() {
        use crate::media::test_support::enhanced_tracks;
        use crate::proto::flv::{parse_audio, AudioCodec, AudioTag, VideoCodec};
        let mut m = FlvMuxer::default();
        let out = m.on_tracks(std::sync::Arc::new(enhanced_tracks()));
        let PlayOutput::Metadata(meta) = &out[0] else {
            panic!("metadata first")
        };
        assert_eq!(
            meta.get("videocodecid").and_then(Amf0Value::as_f64),
            Some(f64::from(u32::from_be_bytes(*b"hvc1")))
        );
        let tag = |o: &PlayOutput| match o {
            PlayOutput::Tag { head, body, .. } => {
                Bytes::from([head.as_slice(), &body[..]].concat())
            }
            other => panic!("{other:?}"),
        };
        let starts: Vec<_> = out[1..].iter().map(tag).collect();
        assert!(matches!(
            parse_video(starts[0].clone()).unwrap(),
            VideoTag::SequenceHeader { codec: VideoCodec::Hevc, config } if config[..] == *crate::media::test_support::HVCC_1080P_MAIN
        ));
        match parse_audio(starts[1].clone()).unwrap() {
            AudioTag::SequenceHeader {
                codec: AudioCodec::Opus,
                config,
            } => assert_eq!(
                crate::media::opus::OpusConfig::parse_head(&config)
                    .unwrap()
                    .pre_skip,
                312
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_video(starts[2].clone()).unwrap(),
            VideoTag::SequenceHeader {
                codec: VideoCodec::Av1,
                ..
            }
        ));
        let frame = |track: u8, pts: i64| Frame {
            track: TrackId(track),
            dts: 1000,
            pts,
            keyframe: false,
            data: Bytes::from_static(&[9, 9]),
        };
        // HEVC with a composition offset: CodedFrames with its CTS; without: CodedFramesX.
        for (pts, cts) in [(1040, 40), (1000, 0)] {
            let t = tag(&m.on_frame(&frame(0, pts)).unwrap());
            match parse_video(t).unwrap() {
                VideoTag::Frame {
                    codec: VideoCodec::Hevc,
                    keyframe: false,
                    composition_time,
                    data,
                } => assert_eq!((composition_time, &data[..]), (cts, &[9u8, 9][..])),
                other => panic!("{other:?}"),
            }
        }
        for (track, codec) in [(2, VideoCodec::Av1), (3, VideoCodec::Vp9)] {
            let t = tag(&m.on_frame(&frame(track, 1000)).unwrap());
            assert!(
                matches!(parse_video(t).unwrap(), VideoTag::Frame { codec: c, .. } if c == codec)
            );
        }
        let t = tag(&m.on_frame(&frame(1, 1000)).unwrap());
        assert!(matches!(
            parse_audio(t).unwrap(),
            AudioTag::Frame { codec: AudioCodec::Opus, data } if data[..] == [9, 9]
        ));
    }
}
