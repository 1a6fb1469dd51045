//! [`Frame`], the unit that flows from ingest through the hub to every egress, and the track
//! descriptions ([`Track`], [`Tracks`]) that give its timestamps and payload a meaning.
//!
//! Video payloads are length-prefixed access units (AVCC), as FLV and MP4 carry them, so
//! RTMP→HLS/RTMP never rewrites a payload; audio payloads are raw codec frames. Cloning a
//! `Frame` bumps a reference count: the payload is never copied after ingest.

use std::sync::Arc;

use bytes::Bytes;

use super::aac::AacConfig;
use super::av1::Av1Config;
use super::h264::AvcConfig;
use super::hevc::HevcConfig;
use super::opus::OpusConfig;
use super::vp9::Vp9Config;

/// Index of a track within its stream's [`Tracks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackId(pub u8);

/// Whether a track carries pictures or sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    /// Pictures.
    Video,
    /// Sound.
    Audio,
}

/// The codec of a track together with its decoder configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum CodecConfig {
    /// H.264 with its `avcC` record; samples are AVCC access units.
    H264(AvcConfig),
    /// H.265 with its `hvcC` record; samples are length-prefixed access units.
    Hevc(HevcConfig),
    /// AV1 with its `av1C` record; samples are low-overhead OBU temporal units.
    Av1(Av1Config),
    /// VP9 with its `vpcC` record; samples are VP9 frames (or superframes).
    Vp9(Vp9Config),
    /// AAC with its AudioSpecificConfig; samples are raw AAC frames.
    Aac(AacConfig),
    /// Opus (WebRTC audio); samples are Opus packets, timescale 48 kHz.
    Opus(OpusConfig),
    /// Motion JPEG from a camera: every sample is a whole JPEG. Not carried by fMP4/FLV
    /// egress; served as MJPEG and transcoded to an H.264 track for everything else.
    Jpeg {
        /// Pixels.
        width: u16,
        /// Pixels.
        height: u16,
    },
}

impl CodecConfig {
    /// Video or audio.
    pub fn kind(&self) -> TrackKind {
        match self {
            CodecConfig::H264(_)
            | CodecConfig::Hevc(_)
            | CodecConfig::Av1(_)
            | CodecConfig::Vp9(_)
            | CodecConfig::Jpeg { .. } => TrackKind::Video,
            CodecConfig::Aac(_) | CodecConfig::Opus(_) => TrackKind::Audio,
        }
    }

    /// The RFC 6381 codec string (`avc1.64001f`, `mp4a.40.2`) used in HLS `CODECS`.
    pub fn codec_string(&self) -> String {
        match self {
            CodecConfig::H264(c) => c.codec_string(),
            CodecConfig::Hevc(c) => c.codec_string(),
            CodecConfig::Av1(c) => c.codec_string(),
            CodecConfig::Vp9(c) => c.codec_string(),
            CodecConfig::Aac(c) => c.codec_string(),
            CodecConfig::Opus(_) => "opus".into(),
            CodecConfig::Jpeg { .. } => "jpeg".into(),
        }
    }

    /// A short lower-case codec name for the API (`h264`, `aac`, `opus`).
    pub fn name(&self) -> &'static str {
        match self {
            CodecConfig::H264(_) => "h264",
            CodecConfig::Hevc(_) => "hevc",
            CodecConfig::Av1(_) => "av1",
            CodecConfig::Vp9(_) => "vp9",
            CodecConfig::Aac(_) => "aac",
            CodecConfig::Opus(_) => "opus",
            CodecConfig::Jpeg { .. } => "mjpeg",
        }
    }

    /// Whether fMP4 (HLS, recordings) and FLV (RTMP) can carry this codec.
    pub fn is_packaged(&self) -> bool {
        !matches!(self, CodecConfig::Jpeg { .. })
    }

    /// Whether legacy FLV (codec ids, no FourCC) can carry this codec: H.264 and AAC only.
    /// The others need Enhanced RTMP.
    pub fn is_legacy_flv(&self) -> bool {
        matches!(self, CodecConfig::H264(_) | CodecConfig::Aac(_))
    }

    /// Picture size, frame rate and profile of a video track (`None` for audio).
    pub fn video_info(&self) -> Option<VideoInfo> {
        let info = |width, height, fps, profile| VideoInfo {
            width,
            height,
            fps,
            profile,
        };
        match self {
            CodecConfig::H264(c) => Some(info(
                c.info.width,
                c.info.height,
                c.info.fps,
                super::h264::profile_name(c.info.profile_idc),
            )),
            CodecConfig::Hevc(c) => Some(info(c.width, c.height, c.fps, c.profile_name())),
            CodecConfig::Av1(c) => Some(info(c.width, c.height, c.fps, c.profile_name())),
            CodecConfig::Vp9(c) => Some(info(c.width, c.height, None, c.profile_name())),
            CodecConfig::Jpeg { width, height } => Some(info(
                u32::from(*width),
                u32::from(*height),
                None,
                "Baseline",
            )),
            CodecConfig::Aac(_) | CodecConfig::Opus(_) => None,
        }
    }
}

/// What the API and HLS say about a video track.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoInfo {
    /// Displayed width in pixels (0 when the bitstream has not said yet).
    pub width: u32,
    /// Displayed height in pixels.
    pub height: u32,
    /// Nominal frame rate, when the bitstream says.
    pub fps: Option<f64>,
    /// The codec profile's name (`High`, `Main 10`, ...).
    pub profile: &'static str,
}

/// One elementary stream of a live stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    /// The id frames of this track carry.
    pub id: TrackId,
    /// Ticks per second of this track's `pts`/`dts`.
    pub timescale: u32,
    /// Codec and decoder configuration.
    pub codec: CodecConfig,
}

impl Track {
    /// Video or audio.
    pub fn kind(&self) -> TrackKind {
        self.codec.kind()
    }
}

/// The tracks a publisher announced; shared by every subscriber behind an `Arc`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tracks {
    /// Tracks in id order; a stream has at most one video and one audio track today.
    pub list: Vec<Track>,
}

impl Tracks {
    /// Wraps a list in an `Arc` for sharing.
    pub fn shared(list: Vec<Track>) -> Arc<Tracks> {
        Arc::new(Tracks { list })
    }

    /// The track with this id.
    pub fn get(&self, id: TrackId) -> Option<&Track> {
        self.list.iter().find(|t| t.id == id)
    }

    /// The first track of a kind.
    pub fn first(&self, kind: TrackKind) -> Option<&Track> {
        self.list.iter().find(|t| t.kind() == kind)
    }

    /// The video track whose keyframes start GOPs (the first video track listed).
    pub fn primary_video(&self) -> Option<TrackId> {
        self.first(TrackKind::Video).map(|t| t.id)
    }

    /// The tracks fMP4 and FLV can carry (without camera JPEG tracks).
    pub fn packaged(&self) -> Tracks {
        Tracks {
            list: self
                .list
                .iter()
                .filter(|t| t.codec.is_packaged())
                .cloned()
                .collect(),
        }
    }
}

/// One access unit (video) or codec frame (audio).
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Which track this belongs to.
    pub track: TrackId,
    /// Presentation time, in the track's timescale.
    pub pts: i64,
    /// Decode time, in the track's timescale; non-decreasing within a track.
    pub dts: i64,
    /// A random access point (IDR for video; every audio frame).
    pub keyframe: bool,
    /// The payload, shared with every other holder of this frame.
    pub data: Bytes,
}
