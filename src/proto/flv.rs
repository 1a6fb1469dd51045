//! FLV audio/video tag bodies as carried in RTMP audio (type 8) and video
//! (type 9) messages, in both the legacy FLV form and Enhanced RTMP v1/v2.
//!
//! This module owns the classification of a tag body into sequence headers
//! (codec configuration), coded frames (with keyframe flag and signed
//! composition time) and the control packets that the server ignores, plus
//! building legacy AVC/AAC tag bodies for RTMP play and restreaming. Payloads
//! are returned as zero-copy slices of the input [`Bytes`]. Enhanced RTMP
//! `ModEx` prefixes are skipped; multitrack packets are split into their
//! tracks. It is sans-IO and never panics on malformed input. The RTMP
//! session layer calls [`parse_video`] / [`parse_audio`] for every media
//! message and hands the results to the codec parsers in `crate::media` and
//! the fMP4 packager; the RTMP play path uses the builders.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Legacy video codec id for H.264/AVC.
const CODEC_ID_AVC: u8 = 7;
/// Legacy video codec id commonly (non-standardly) used for HEVC.
const CODEC_ID_HEVC: u8 = 12;
/// Frame type: keyframe.
const FRAME_TYPE_KEY: u8 = 1;
/// Frame type: video info / command frame.
const FRAME_TYPE_COMMAND: u8 = 5;
/// Legacy sound format: MP3.
const SOUND_FORMAT_MP3: u8 = 2;
/// Enhanced RTMP: sound format value announcing the extended audio header.
const SOUND_FORMAT_EX_HEADER: u8 = 9;
/// Legacy sound format: AAC.
const SOUND_FORMAT_AAC: u8 = 10;
/// Legacy sound format: MP3 at 8 kHz.
const SOUND_FORMAT_MP3_8K: u8 = 14;
/// Legacy AVC/AAC packet type: sequence header.
const LEGACY_SEQUENCE_HEADER: u8 = 0;
/// Legacy AVC/AAC packet type: coded data.
const LEGACY_CODED_DATA: u8 = 1;
/// Legacy AVC packet type: end of sequence.
const LEGACY_END_OF_SEQUENCE: u8 = 2;
/// Enhanced packet type: sequence start (audio and video).
const EX_SEQUENCE_START: u8 = 0;
/// Enhanced packet type: coded frames (audio and video).
const EX_CODED_FRAMES: u8 = 1;
/// Enhanced packet type: sequence end (audio and video).
const EX_SEQUENCE_END: u8 = 2;
/// Enhanced video packet type: coded frames with implicit zero CTS.
const EX_VIDEO_CODED_FRAMES_X: u8 = 3;
/// Enhanced video packet type: AMF metadata.
const EX_VIDEO_METADATA: u8 = 4;
/// Enhanced video packet type: MPEG-2 TS sequence start.
const EX_VIDEO_MPEG2TS_SEQUENCE_START: u8 = 5;
/// Enhanced video packet type: multitrack.
const EX_VIDEO_MULTITRACK: u8 = 6;
/// Enhanced audio packet type: multichannel configuration.
const EX_AUDIO_MULTICHANNEL_CONFIG: u8 = 4;
/// Enhanced audio packet type: multitrack.
const EX_AUDIO_MULTITRACK: u8 = 5;
/// Enhanced packet type (v2, audio and video): ModEx prefix.
const EX_MOD_EX: u8 = 7;
/// Largest composition time representable in SI24.
const SI24_MAX: i32 = (1 << 23) - 1;
/// Smallest composition time representable in SI24.
const SI24_MIN: i32 = -(1 << 23);

/// FourCC `avc1`.
const FOURCC_AVC1: u32 = u32::from_be_bytes(*b"avc1");
/// FourCC `hvc1`.
const FOURCC_HVC1: u32 = u32::from_be_bytes(*b"hvc1");
/// FourCC `av01`.
const FOURCC_AV01: u32 = u32::from_be_bytes(*b"av01");
/// FourCC `vp09`.
const FOURCC_VP09: u32 = u32::from_be_bytes(*b"vp09");
/// FourCC `Opus`.
const FOURCC_OPUS: u32 = u32::from_be_bytes(*b"Opus");
/// FourCC `mp4a`.
const FOURCC_MP4A: u32 = u32::from_be_bytes(*b"mp4a");
/// FourCC `.mp3`.
const FOURCC_MP3: u32 = u32::from_be_bytes(*b".mp3");

/// Tag header of a legacy AAC raw frame (sound format 10, 44 kHz, 16-bit,
/// stereo flags as conventionally sent; AACPacketType 1).
pub const AAC_FRAME_TAG_HEADER: [u8; 2] = [0xAF, 0x01];

/// Errors produced while parsing FLV tag bodies.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FlvError {
    /// The tag body ended before the named field (or is empty).
    #[error("truncated FLV tag body while reading {0}")]
    Truncated(&'static str),
    /// The video frame type is reserved (0, 6 or 7).
    #[error("invalid video frame type {0}")]
    InvalidFrameType(u8),
    /// The (AVC/AAC/enhanced) packet type is reserved.
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    /// A valid but unsupported feature, e.g. `"multitrack"`.
    #[error("unsupported FLV feature: {0}")]
    Unsupported(&'static str),
}

/// Video codec of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// H.264/AVC (legacy codec id 7 or FourCC `avc1`).
    H264,
    /// H.265/HEVC (legacy codec id 12 or FourCC `hvc1`).
    Hevc,
    /// AV1 (FourCC `av01`).
    Av1,
    /// VP9 (FourCC `vp09`).
    Vp9,
    /// Anything else: the legacy codec id, or the big-endian FourCC value
    /// for enhanced tags.
    Other(u32),
}

/// A classified video tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoTag {
    /// Decoder configuration (AVC packet type 0 / enhanced SequenceStart),
    /// e.g. an `AVCDecoderConfigurationRecord`.
    SequenceHeader {
        /// Codec the configuration belongs to.
        codec: VideoCodec,
        /// Configuration record bytes (zero-copy slice of the tag).
        config: Bytes,
    },
    /// Coded frame data (AVC packet type 1 / enhanced CodedFrames(X)).
    Frame {
        /// Codec of the frame.
        codec: VideoCodec,
        /// Whether the frame type is 1 (keyframe).
        keyframe: bool,
        /// Composition time offset (PTS - DTS) in milliseconds.
        composition_time: i32,
        /// Frame payload, e.g. length-prefixed NAL units (zero-copy slice).
        data: Bytes,
    },
    /// End of sequence (AVC packet type 2 / enhanced SequenceEnd).
    EndOfSequence {
        /// Codec whose sequence ended.
        codec: VideoCodec,
    },
    /// Enhanced RTMP metadata packet (ignored by the server).
    Metadata,
    /// Video info / command frame (frame type 5, ignored by the server).
    Command,
    /// Enhanced RTMP v2 multitrack: each track's tag by track id, in the order sent.
    Multitrack(Vec<(u8, VideoTag)>),
}

/// Audio codec of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    /// AAC (legacy sound format 10 or FourCC `mp4a`).
    Aac,
    /// Opus (FourCC `Opus`).
    Opus,
    /// MP3 (legacy sound format 2/14 or FourCC `.mp3`).
    Mp3,
    /// Another enhanced codec, as its big-endian FourCC value (`fLaC`,
    /// `ac-3`, `ec-3`, ...).
    Other(u32),
}

/// A classified audio tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioTag {
    /// Decoder configuration (AAC packet type 0 / enhanced SequenceStart),
    /// e.g. an AudioSpecificConfig or OpusHead.
    SequenceHeader {
        /// Codec the configuration belongs to.
        codec: AudioCodec,
        /// Configuration bytes (zero-copy slice of the tag).
        config: Bytes,
    },
    /// Coded audio data.
    Frame {
        /// Codec of the frame.
        codec: AudioCodec,
        /// Frame payload (zero-copy slice of the tag).
        data: Bytes,
    },
    /// Anything the server does not use: legacy formats other than AAC/MP3,
    /// and enhanced SequenceEnd / MultichannelConfig packets.
    Other {
        /// The 4-bit sound format of the first byte (9 for enhanced).
        sound_format: u8,
    },
    /// Enhanced RTMP v2 multitrack: each track's tag by track id, in the order sent.
    Multitrack(Vec<(u8, AudioTag)>),
}

/// Parses a video tag body (legacy or Enhanced RTMP).
pub fn parse_video(tag: Bytes) -> Result<VideoTag, FlvError> {
    let first = byte_at(&tag, 0, "video tag header")?;
    if first & 0x80 != 0 {
        parse_enhanced_video(&tag, first)
    } else {
        parse_legacy_video(&tag, first)
    }
}

/// Parses a legacy video tag (frame type + codec id nibbles).
fn parse_legacy_video(tag: &Bytes, first: u8) -> Result<VideoTag, FlvError> {
    let frame_type = first >> 4;
    check_frame_type(frame_type)?;
    if frame_type == FRAME_TYPE_COMMAND {
        return Ok(VideoTag::Command);
    }
    let keyframe = frame_type == FRAME_TYPE_KEY;
    let codec = match first & 0x0f {
        CODEC_ID_AVC => VideoCodec::H264,
        CODEC_ID_HEVC => VideoCodec::Hevc,
        other => {
            return Ok(VideoTag::Frame {
                codec: VideoCodec::Other(u32::from(other)),
                keyframe,
                composition_time: 0,
                data: payload(tag, 1, "video data")?,
            })
        }
    };
    let packet_type = byte_at(tag, 1, "AVCPacketType")?;
    let composition_time = read_si24(tag, 2)?;
    match packet_type {
        LEGACY_SEQUENCE_HEADER => Ok(VideoTag::SequenceHeader {
            codec,
            config: payload(tag, 5, "decoder configuration")?,
        }),
        LEGACY_CODED_DATA => Ok(VideoTag::Frame {
            codec,
            keyframe,
            composition_time,
            data: payload(tag, 5, "video data")?,
        }),
        LEGACY_END_OF_SEQUENCE => Ok(VideoTag::EndOfSequence { codec }),
        other => Err(FlvError::InvalidPacketType(other)),
    }
}

/// Parses an Enhanced RTMP video tag (`IsExHeader` set).
fn parse_enhanced_video(tag: &Bytes, first: u8) -> Result<VideoTag, FlvError> {
    let frame_type = (first >> 4) & 0x07;
    let (packet_type, pos) = skip_mod_ex(tag, first & 0x0f, 1)?;
    if packet_type == EX_VIDEO_METADATA {
        // frameType is ignored for metadata packets.
        return Ok(VideoTag::Metadata);
    }
    check_frame_type(frame_type)?;
    if frame_type == FRAME_TYPE_COMMAND {
        return Ok(VideoTag::Command);
    }
    let keyframe = frame_type == FRAME_TYPE_KEY;
    if packet_type == EX_VIDEO_MULTITRACK {
        let tracks = multitrack(tag, pos, |fourcc, packet_type, body| {
            if packet_type == EX_VIDEO_MULTITRACK || packet_type == EX_MOD_EX {
                return Err(FlvError::Unsupported("nested multitrack or ModEx"));
            }
            video_body(
                video_codec_from_fourcc(fourcc),
                packet_type,
                keyframe,
                &body,
            )
        })?;
        return Ok(VideoTag::Multitrack(tracks));
    }
    let codec = video_codec_from_fourcc(read_fourcc(tag, pos)?);
    video_body(
        codec,
        packet_type,
        keyframe,
        &rest(tag, pos.saturating_add(4)),
    )
}

/// One track's enhanced video body after its FourCC.
fn video_body(
    codec: VideoCodec,
    packet_type: u8,
    keyframe: bool,
    body: &Bytes,
) -> Result<VideoTag, FlvError> {
    match packet_type {
        EX_SEQUENCE_START => Ok(VideoTag::SequenceHeader {
            codec,
            config: payload(body, 0, "decoder configuration")?,
        }),
        EX_CODED_FRAMES if matches!(codec, VideoCodec::H264 | VideoCodec::Hevc) => {
            Ok(VideoTag::Frame {
                codec,
                keyframe,
                composition_time: read_si24(body, 0)?,
                data: payload(body, 3, "video data")?,
            })
        }
        EX_CODED_FRAMES | EX_VIDEO_CODED_FRAMES_X => Ok(VideoTag::Frame {
            codec,
            keyframe,
            composition_time: 0,
            data: payload(body, 0, "video data")?,
        }),
        EX_SEQUENCE_END => Ok(VideoTag::EndOfSequence { codec }),
        EX_VIDEO_MPEG2TS_SEQUENCE_START => Err(FlvError::Unsupported("MPEG2TSSequenceStart")),
        other => Err(FlvError::InvalidPacketType(other)),
    }
}

/// Tracks one multitrack tag may carry (track ids are a byte; real publishers send a few).
pub const MAX_MULTITRACK_TRACKS: usize = 16;
/// Multitrack type: one track in this tag (its body runs to the end).
const MULTITRACK_ONE: u8 = 0;
/// Multitrack type: several tracks of one codec, each sized.
const MULTITRACK_MANY: u8 = 1;
/// Multitrack type: several tracks, each with its own FourCC and size.
const MULTITRACK_MANY_CODECS: u8 = 2;

/// Walks an Enhanced RTMP v2 multitrack body starting at `pos` (the byte holding the
/// multitrack type and the tracks' packet type) and parses each track's body with `one`
/// (FourCC, packet type, body after the track id and size). Every track consumes at least
/// one byte, so the walk is bounded by the tag's length.
fn multitrack<T>(
    tag: &Bytes,
    pos: usize,
    mut one: impl FnMut(u32, u8, Bytes) -> Result<T, FlvError>,
) -> Result<Vec<(u8, T)>, FlvError> {
    let b = byte_at(tag, pos, "multitrack type")?;
    let (kind, packet_type) = (b >> 4, b & 0x0f);
    if !matches!(
        kind,
        MULTITRACK_ONE | MULTITRACK_MANY | MULTITRACK_MANY_CODECS
    ) {
        return Err(FlvError::InvalidPacketType(kind));
    }
    let mut pos = pos.saturating_add(1);
    let mut fourcc = 0;
    if kind != MULTITRACK_MANY_CODECS {
        fourcc = read_fourcc(tag, pos)?;
        pos = pos.saturating_add(4);
    }
    let mut out = Vec::new();
    loop {
        if kind == MULTITRACK_MANY_CODECS {
            fourcc = read_fourcc(tag, pos)?;
            pos = pos.saturating_add(4);
        }
        let id = byte_at(tag, pos, "track id")?;
        pos = pos.saturating_add(1);
        let end = if kind == MULTITRACK_ONE {
            tag.len()
        } else {
            let [a, b, c]: [u8; 3] = tag
                .get(pos..pos.saturating_add(3))
                .and_then(|b| b.try_into().ok())
                .ok_or(FlvError::Truncated("track size"))?;
            pos = pos.saturating_add(3);
            pos.checked_add(usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c))
                .filter(|end| *end <= tag.len())
                .ok_or(FlvError::Truncated("track body"))?
        };
        if out.iter().any(|(seen, _)| *seen == id) {
            return Err(FlvError::Unsupported(
                "a track id repeated in one multitrack tag",
            ));
        }
        if out.len() >= MAX_MULTITRACK_TRACKS {
            return Err(FlvError::Unsupported(
                "more than 16 tracks in one multitrack tag",
            ));
        }
        out.push((id, one(fourcc, packet_type, tag.slice(pos..end))?));
        pos = end;
        if kind == MULTITRACK_ONE || pos >= tag.len() {
            return Ok(out);
        }
    }
}

/// The rest of the tag from `pos` (empty past the end).
fn rest(tag: &Bytes, pos: usize) -> Bytes {
    if pos >= tag.len() {
        Bytes::new()
    } else {
        tag.slice(pos..)
    }
}

/// Rejects reserved video frame types (valid: 1..=5).
fn check_frame_type(frame_type: u8) -> Result<(), FlvError> {
    if (1..=5).contains(&frame_type) {
        Ok(())
    } else {
        Err(FlvError::InvalidFrameType(frame_type))
    }
}

/// Maps an enhanced video FourCC to a [`VideoCodec`].
fn video_codec_from_fourcc(fourcc: u32) -> VideoCodec {
    match fourcc {
        FOURCC_AVC1 => VideoCodec::H264,
        FOURCC_HVC1 => VideoCodec::Hevc,
        FOURCC_AV01 => VideoCodec::Av1,
        FOURCC_VP09 => VideoCodec::Vp9,
        other => VideoCodec::Other(other),
    }
}

/// Parses an audio tag body (legacy or Enhanced RTMP).
pub fn parse_audio(tag: Bytes) -> Result<AudioTag, FlvError> {
    let first = byte_at(&tag, 0, "audio tag header")?;
    let sound_format = first >> 4;
    match sound_format {
        SOUND_FORMAT_EX_HEADER => parse_enhanced_audio(&tag, first),
        SOUND_FORMAT_AAC => parse_legacy_aac(&tag),
        SOUND_FORMAT_MP3 | SOUND_FORMAT_MP3_8K => Ok(AudioTag::Frame {
            codec: AudioCodec::Mp3,
            data: payload(&tag, 1, "audio data")?,
        }),
        _ => Ok(AudioTag::Other { sound_format }),
    }
}

/// Parses a legacy AAC tag (AACPacketType byte after the header).
fn parse_legacy_aac(tag: &Bytes) -> Result<AudioTag, FlvError> {
    let codec = AudioCodec::Aac;
    match byte_at(tag, 1, "AACPacketType")? {
        LEGACY_SEQUENCE_HEADER => Ok(AudioTag::SequenceHeader {
            codec,
            config: payload(tag, 2, "AudioSpecificConfig")?,
        }),
        LEGACY_CODED_DATA => Ok(AudioTag::Frame {
            codec,
            data: payload(tag, 2, "audio data")?,
        }),
        other => Err(FlvError::InvalidPacketType(other)),
    }
}

/// Parses an Enhanced RTMP audio tag (sound format 9).
fn parse_enhanced_audio(tag: &Bytes, first: u8) -> Result<AudioTag, FlvError> {
    let (packet_type, pos) = skip_mod_ex(tag, first & 0x0f, 1)?;
    if packet_type == EX_AUDIO_MULTITRACK {
        let tracks = multitrack(tag, pos, |fourcc, packet_type, body| {
            if packet_type == EX_AUDIO_MULTITRACK || packet_type == EX_MOD_EX {
                return Err(FlvError::Unsupported("nested multitrack or ModEx"));
            }
            audio_body(audio_codec_from_fourcc(fourcc), packet_type, &body)
        })?;
        return Ok(AudioTag::Multitrack(tracks));
    }
    let codec = audio_codec_from_fourcc(read_fourcc(tag, pos)?);
    audio_body(codec, packet_type, &rest(tag, pos.saturating_add(4)))
}

/// One track's enhanced audio body after its FourCC.
fn audio_body(codec: AudioCodec, packet_type: u8, body: &Bytes) -> Result<AudioTag, FlvError> {
    match packet_type {
        EX_SEQUENCE_START => Ok(AudioTag::SequenceHeader {
            codec,
            config: payload(body, 0, "audio configuration")?,
        }),
        EX_CODED_FRAMES => Ok(AudioTag::Frame {
            codec,
            data: payload(body, 0, "audio data")?,
        }),
        EX_SEQUENCE_END | EX_AUDIO_MULTICHANNEL_CONFIG => Ok(AudioTag::Other {
            sound_format: SOUND_FORMAT_EX_HEADER,
        }),
        other => Err(FlvError::InvalidPacketType(other)),
    }
}

/// Maps an enhanced audio FourCC to an [`AudioCodec`].
fn audio_codec_from_fourcc(fourcc: u32) -> AudioCodec {
    match fourcc {
        FOURCC_OPUS => AudioCodec::Opus,
        FOURCC_MP4A => AudioCodec::Aac,
        FOURCC_MP3 => AudioCodec::Mp3,
        other => AudioCodec::Other(other),
    }
}

/// Skips any Enhanced RTMP v2 `ModEx` blocks starting at `pos` while
/// `packet_type` is ModEx; returns the real packet type and the offset after
/// the last consumed byte.
///
/// Each block is `UI8 size-1` (255 escapes to `UI16 size-1`), the data, then
/// a byte whose low nibble is the next packet type. Every block consumes at
/// least two bytes, so the loop is bounded by the tag length.
fn skip_mod_ex(tag: &[u8], mut packet_type: u8, mut pos: usize) -> Result<(u8, usize), FlvError> {
    while packet_type == EX_MOD_EX {
        let mut size = usize::from(byte_at(tag, pos, "ModEx size")?) + 1;
        pos = pos.saturating_add(1);
        if size == 256 {
            let hi = byte_at(tag, pos, "ModEx size")?;
            let lo = byte_at(tag, pos.saturating_add(1), "ModEx size")?;
            size = usize::from(u16::from_be_bytes([hi, lo])) + 1;
            pos = pos.saturating_add(2);
        }
        pos = pos.saturating_add(size);
        packet_type = byte_at(tag, pos, "ModEx packet type")? & 0x0f;
        pos = pos.saturating_add(1);
    }
    Ok((packet_type, pos))
}

/// Reads the byte at `pos`.
fn byte_at(tag: &[u8], pos: usize, what: &'static str) -> Result<u8, FlvError> {
    tag.get(pos).copied().ok_or(FlvError::Truncated(what))
}

/// Reads a big-endian FourCC at `pos`.
fn read_fourcc(tag: &[u8], pos: usize) -> Result<u32, FlvError> {
    let bytes: [u8; 4] = tag
        .get(pos..pos.saturating_add(4))
        .and_then(|b| b.try_into().ok())
        .ok_or(FlvError::Truncated("FourCC"))?;
    Ok(u32::from_be_bytes(bytes))
}

/// Reads a signed big-endian 24-bit integer at `pos`.
fn read_si24(tag: &[u8], pos: usize) -> Result<i32, FlvError> {
    let [a, b, c]: [u8; 3] = tag
        .get(pos..pos.saturating_add(3))
        .and_then(|b| b.try_into().ok())
        .ok_or(FlvError::Truncated("composition time"))?;
    // Place the 24 bits at the top and shift back to sign-extend.
    Ok(i32::from_be_bytes([a, b, c, 0]) >> 8)
}

/// Returns the non-empty remainder of the tag from `pos` as a zero-copy slice.
fn payload(tag: &Bytes, pos: usize, what: &'static str) -> Result<Bytes, FlvError> {
    if pos >= tag.len() {
        return Err(FlvError::Truncated(what));
    }
    Ok(tag.slice(pos..))
}

/// Builds a legacy AVC sequence header tag body: `17 00 00 00 00` followed
/// by the `AVCDecoderConfigurationRecord`.
pub fn avc_sequence_header_tag(config: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(config.len().saturating_add(5));
    out.put_slice(&[0x17, LEGACY_SEQUENCE_HEADER, 0, 0, 0]);
    out.put_slice(config);
    out.freeze()
}

/// Builds the 5-byte header of a legacy AVC coded-frame tag body; the
/// length-prefixed NAL units follow it. The composition time is clamped to
/// the SI24 range.
pub fn avc_frame_tag_header(keyframe: bool, composition_time: i32) -> [u8; 5] {
    let first = if keyframe { 0x17 } else { 0x27 };
    let [_, a, b, c] = composition_time.clamp(SI24_MIN, SI24_MAX).to_be_bytes();
    [first, LEGACY_CODED_DATA, a, b, c]
}

/// Builds a legacy AAC sequence header tag body: `AF 00` followed by the
/// AudioSpecificConfig.
pub fn aac_sequence_header_tag(asc: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(asc.len().saturating_add(2));
    out.put_slice(&[0xAF, LEGACY_SEQUENCE_HEADER]);
    out.put_slice(asc);
    out.freeze()
}

/// An Enhanced RTMP video SequenceStart tag body for `fourcc` (`hvc1`, `av01`, `vp09`):
/// the configuration record follows the FourCC.
pub fn enhanced_video_sequence_start(fourcc: &[u8; 4], config: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(config.len().saturating_add(5));
    out.put_u8(0x80 | (FRAME_TYPE_KEY << 4) | EX_SEQUENCE_START);
    out.put_slice(fourcc);
    out.put_slice(config);
    out.freeze()
}

/// The header of an Enhanced RTMP coded-frames video tag (the frame follows): HEVC gets
/// `CodedFrames` with its composition time (or `CodedFramesX` when it is zero), AV1 and VP9
/// `CodedFrames` without one. Returns the bytes and how many of them are used.
pub fn enhanced_video_frame_header(
    fourcc: &[u8; 4],
    keyframe: bool,
    composition_time: i32,
) -> ([u8; 8], usize) {
    let frame_type = if keyframe { FRAME_TYPE_KEY } else { 2 };
    let mut out = [0u8; 8];
    out[1..5].copy_from_slice(fourcc);
    let with_cts = fourcc == b"hvc1" || fourcc == b"avc1";
    if with_cts && composition_time != 0 {
        out[0] = 0x80 | (frame_type << 4) | EX_CODED_FRAMES;
        let [_, a, b, c] = composition_time.clamp(SI24_MIN, SI24_MAX).to_be_bytes();
        out[5..8].copy_from_slice(&[a, b, c]);
        (out, 8)
    } else {
        let packet_type = if with_cts {
            EX_VIDEO_CODED_FRAMES_X
        } else {
            EX_CODED_FRAMES
        };
        out[0] = 0x80 | (frame_type << 4) | packet_type;
        (out, 5)
    }
}

/// An Enhanced RTMP audio SequenceStart tag body (`Opus`: the `OpusHead` follows).
pub fn enhanced_audio_sequence_start(fourcc: &[u8; 4], config: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(config.len().saturating_add(5));
    out.put_u8((SOUND_FORMAT_EX_HEADER << 4) | EX_SEQUENCE_START);
    out.put_slice(fourcc);
    out.put_slice(config);
    out.freeze()
}

/// The header of an Enhanced RTMP coded-frames audio tag (the frame follows).
pub fn enhanced_audio_frame_header(fourcc: &[u8; 4]) -> [u8; 5] {
    let mut out = [0u8; 5];
    out[0] = (SOUND_FORMAT_EX_HEADER << 4) | EX_CODED_FRAMES;
    out[1..5].copy_from_slice(fourcc);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(bytes: &[u8]) -> Result<VideoTag, FlvError> {
        parse_video(Bytes::copy_from_slice(bytes))
    }

    fn audio(bytes: &[u8]) -> Result<AudioTag, FlvError> {
        parse_audio(Bytes::copy_from_slice(bytes))
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    const AVCC: &[u8] = &[0x01, 0x64, 0x00, 0x1f, 0xff, 0xe1];
    const NALS: &[u8] = &[0, 0, 0, 2, 0x65, 0x88];

    #[test]
    fn legacy_avc_sequence_header() {
        let tag = Bytes::from(cat(&[&[0x17, 0, 0, 0, 0], AVCC]));
        let parsed = parse_video(tag.clone()).unwrap();
        assert_eq!(
            parsed,
            VideoTag::SequenceHeader {
                codec: VideoCodec::H264,
                config: Bytes::from_static(AVCC)
            }
        );
        // Zero-copy: the config points into the original buffer.
        if let VideoTag::SequenceHeader { config, .. } = parsed {
            assert_eq!(config.as_ptr(), tag[5..].as_ptr());
        }
    }

    #[test]
    fn legacy_avc_frames_and_composition_times() {
        let cases: [(&[u8], bool, i32); 5] = [
            (&[0x17, 1, 0x00, 0x00, 0x50], true, 80),
            (&[0x27, 1, 0xff, 0xff, 0xf6], false, -10),
            (&[0x27, 1, 0x80, 0x00, 0x00], false, -8_388_608),
            (&[0x37, 1, 0x7f, 0xff, 0xff], false, 8_388_607),
            (&[0x47, 1, 0x00, 0x00, 0x00], false, 0),
        ];
        for (header, keyframe, cts) in cases {
            assert_eq!(
                video(&cat(&[header, NALS])).unwrap(),
                VideoTag::Frame {
                    codec: VideoCodec::H264,
                    keyframe,
                    composition_time: cts,
                    data: Bytes::from_static(NALS)
                }
            );
        }
    }

    #[test]
    fn legacy_end_of_sequence_hevc_and_other_codecs() {
        assert_eq!(
            video(&[0x17, 2, 0, 0, 0]).unwrap(),
            VideoTag::EndOfSequence {
                codec: VideoCodec::H264
            }
        );
        assert!(matches!(
            video(&[0x1c, 1, 0, 0, 0x21, 0x26]).unwrap(),
            VideoTag::Frame {
                codec: VideoCodec::Hevc,
                keyframe: true,
                composition_time: 33,
                ..
            }
        ));
        assert_eq!(
            video(&[0x22, 0xaa]).unwrap(),
            VideoTag::Frame {
                codec: VideoCodec::Other(2),
                keyframe: false,
                composition_time: 0,
                data: Bytes::from_static(&[0xaa])
            }
        );
    }

    #[test]
    fn legacy_command_and_invalid() {
        assert_eq!(video(&[0x57, 0x01]).unwrap(), VideoTag::Command);
        assert_eq!(
            video(&[0x07, 1, 0, 0, 0, 1]),
            Err(FlvError::InvalidFrameType(0))
        );
        assert_eq!(
            video(&[0x67, 1, 0, 0, 0, 1]),
            Err(FlvError::InvalidFrameType(6))
        );
        assert_eq!(
            video(&[0x17, 3, 0, 0, 0, 1]),
            Err(FlvError::InvalidPacketType(3))
        );
        assert_eq!(video(&[]), Err(FlvError::Truncated("video tag header")));
    }

    #[test]
    fn enhanced_sequence_start_and_end() {
        let hvcc: &[u8] = &[0x01, 0x01, 0x60];
        assert_eq!(
            video(&cat(&[&[0x90], b"hvc1", hvcc])).unwrap(),
            VideoTag::SequenceHeader {
                codec: VideoCodec::Hevc,
                config: Bytes::from_static(hvcc)
            }
        );
        assert_eq!(
            video(&cat(&[&[0x92], b"vp09"])).unwrap(),
            VideoTag::EndOfSequence {
                codec: VideoCodec::Vp9
            }
        );
    }

    #[test]
    fn enhanced_coded_frames_with_and_without_cts() {
        assert_eq!(
            video(&cat(&[&[0x91], b"hvc1", &[0, 0, 0x10], NALS])).unwrap(),
            VideoTag::Frame {
                codec: VideoCodec::Hevc,
                keyframe: true,
                composition_time: 16,
                data: Bytes::from_static(NALS)
            }
        );
        assert_eq!(
            video(&cat(&[&[0xa1], b"avc1", &[0xff, 0xff, 0xff], NALS])).unwrap(),
            VideoTag::Frame {
                codec: VideoCodec::H264,
                keyframe: false,
                composition_time: -1,
                data: Bytes::from_static(NALS)
            }
        );
        // AV1 CodedFrames carries no composition time.
        assert_eq!(
            video(&cat(&[&[0x91], b"av01", &[0x12, 0x00]])).unwrap(),
            VideoTag::Frame {
                codec: VideoCodec::Av1,
                keyframe: true,
                composition_time: 0,
                data: Bytes::from_static(&[0x12, 0x00])
            }
        );
        // CodedFramesX: implicit zero composition time even for hvc1.
        assert_eq!(
            video(&cat(&[&[0xa3], b"hvc1", NALS])).unwrap(),
            VideoTag::Frame {
                codec: VideoCodec::Hevc,
                keyframe: false,
                composition_time: 0,
                data: Bytes::from_static(NALS)
            }
        );
        assert!(matches!(
            video(&cat(&[&[0x93], b"vvc1", &[1]])).unwrap(),
            VideoTag::Frame { codec: VideoCodec::Other(f), .. } if f == u32::from_be_bytes(*b"vvc1")
        ));
    }

    #[test]
    fn enhanced_metadata_command_and_unsupported() {
        assert_eq!(
            video(&cat(&[&[0x94], b"hvc1", &[2, 0]])).unwrap(),
            VideoTag::Metadata
        );
        // Metadata ignores the frame type, even a reserved one.
        assert_eq!(
            video(&cat(&[&[0x84], b"hvc1", &[2, 0]])).unwrap(),
            VideoTag::Metadata
        );
        assert_eq!(
            video(&cat(&[&[0xd1], b"avc1", &[0]])).unwrap(),
            VideoTag::Command
        );
        // Multitrack, one track: track 1's AVC sequence start.
        assert_eq!(
            video(&cat(&[&[0x96], &[0x00], b"avc1", &[1, 9, 8, 7]])).unwrap(),
            VideoTag::Multitrack(vec![(
                1,
                VideoTag::SequenceHeader {
                    codec: VideoCodec::H264,
                    config: Bytes::from_static(&[9, 8, 7])
                }
            )])
        );
        // Many tracks of many codecs, each sized: HEVC frames with a CTS, then AV1.
        assert_eq!(
            video(&cat(&[
                &[0x96, 0x21],
                b"hvc1",
                &[0, 0, 0, 5, 0, 0, 2, 0xAA, 0xBB],
                b"av01",
                &[3, 0, 0, 1, 0xCC],
            ]))
            .unwrap(),
            VideoTag::Multitrack(vec![
                (
                    0,
                    VideoTag::Frame {
                        codec: VideoCodec::Hevc,
                        keyframe: true,
                        composition_time: 2,
                        data: Bytes::from_static(&[0xAA, 0xBB])
                    }
                ),
                (
                    3,
                    VideoTag::Frame {
                        codec: VideoCodec::Av1,
                        keyframe: true,
                        composition_time: 0,
                        data: Bytes::from_static(&[0xCC])
                    }
                ),
            ])
        );
        // A repeated track id, 17 tracks, a size past the end, a bad multitrack type,
        // nesting: errors.
        assert!(video(&cat(&[
            &[0x96, 0x13],
            b"hvc1",
            &[0, 0, 0, 1, 7, 0, 0, 0, 1, 8]
        ]))
        .is_err());
        assert!(video(&cat(&[
            &[0x96, 0x13],
            b"hvc1",
            &[0, 0, 0, 1, 7, 1, 0, 0, 1, 8]
        ]))
        .is_ok());
        let many: Vec<u8> = (0..17u8).flat_map(|id| [id, 0, 0, 1, 7]).collect();
        assert!(video(&cat(&[&[0x96, 0x13], b"hvc1", &many])).is_err());
        assert!(video(&cat(&[&[0x96, 0x13], b"hvc1", &many[..80]])).is_ok());
        assert!(video(&cat(&[&[0x96, 0x11], b"hvc1", &[0, 0, 0, 9, 1]])).is_err());
        assert!(video(&cat(&[&[0x96, 0x31], b"hvc1", &[0, 1]])).is_err());
        assert!(video(&cat(&[&[0x96, 0x06], b"hvc1", &[0, 1]])).is_err());
        assert_eq!(
            video(&cat(&[&[0x95], b"av01", &[1]])),
            Err(FlvError::Unsupported("MPEG2TSSequenceStart"))
        );
        assert_eq!(
            video(&cat(&[&[0x98], b"avc1", &[1]])),
            Err(FlvError::InvalidPacketType(8))
        );
        assert_eq!(
            video(&cat(&[&[0x81], b"avc1", &[0, 0, 0, 1]])),
            Err(FlvError::InvalidFrameType(0))
        );
    }

    #[test]
    fn enhanced_mod_ex_is_skipped() {
        // ModEx: size-1 = 2 (3 bytes of TimestampOffsetNano), then
        // modExType 0 | packet type CodedFrames.
        let tag = cat(&[
            &[0x97, 0x02, 0x00, 0x01, 0x02, 0x01],
            b"avc1",
            &[0, 0, 5],
            NALS,
        ]);
        assert_eq!(
            video(&tag).unwrap(),
            VideoTag::Frame {
                codec: VideoCodec::H264,
                keyframe: true,
                composition_time: 5,
                data: Bytes::from_static(NALS)
            }
        );
        // 16-bit size escape: UI8 255 then UI16 size-1 = 0 (1 byte of data).
        let tag = cat(&[&[0x97, 0xff, 0x00, 0x00, 0xee, 0x03], b"av01", &[9]]);
        assert!(matches!(
            video(&tag).unwrap(),
            VideoTag::Frame {
                codec: VideoCodec::Av1,
                ..
            }
        ));
        let audio_tag = cat(&[&[0x97, 0x00, 0x11, 0x01], b"Opus", &[0xfc]]);
        assert!(matches!(
            audio(&audio_tag).unwrap(),
            AudioTag::Frame {
                codec: AudioCodec::Opus,
                ..
            }
        ));
    }

    #[test]
    fn legacy_audio() {
        assert_eq!(
            audio(&[0xaf, 0, 0x12, 0x10]).unwrap(),
            AudioTag::SequenceHeader {
                codec: AudioCodec::Aac,
                config: Bytes::from_static(&[0x12, 0x10])
            }
        );
        assert_eq!(
            audio(&[0xaf, 1, 0x21, 0x1b]).unwrap(),
            AudioTag::Frame {
                codec: AudioCodec::Aac,
                data: Bytes::from_static(&[0x21, 0x1b])
            }
        );
        assert_eq!(audio(&[0xaf, 2, 0]), Err(FlvError::InvalidPacketType(2)));
        assert_eq!(
            audio(&[0x2f, 0xff, 0xfb]).unwrap(),
            AudioTag::Frame {
                codec: AudioCodec::Mp3,
                data: Bytes::from_static(&[0xff, 0xfb])
            }
        );
        assert_eq!(
            audio(&[0x72, 0x01]).unwrap(),
            AudioTag::Other { sound_format: 7 }
        );
        assert_eq!(audio(&[]), Err(FlvError::Truncated("audio tag header")));
    }

    #[test]
    fn enhanced_audio() {
        let opus_head: &[u8] = b"OpusHead\x01\x02";
        assert_eq!(
            audio(&cat(&[&[0x90], b"Opus", opus_head])).unwrap(),
            AudioTag::SequenceHeader {
                codec: AudioCodec::Opus,
                config: Bytes::from_static(opus_head)
            }
        );
        assert_eq!(
            audio(&cat(&[&[0x90], b"mp4a", &[0x11, 0x90]])).unwrap(),
            AudioTag::SequenceHeader {
                codec: AudioCodec::Aac,
                config: Bytes::from_static(&[0x11, 0x90])
            }
        );
        assert_eq!(
            audio(&cat(&[&[0x91], b".mp3", &[0xff]])).unwrap(),
            AudioTag::Frame {
                codec: AudioCodec::Mp3,
                data: Bytes::from_static(&[0xff])
            }
        );
        for fourcc in [b"fLaC", b"ac-3", b"ec-3"] {
            assert_eq!(
                audio(&cat(&[&[0x91], fourcc, &[1]])).unwrap(),
                AudioTag::Frame {
                    codec: AudioCodec::Other(u32::from_be_bytes(*fourcc)),
                    data: Bytes::from_static(&[1])
                }
            );
        }
        let other = AudioTag::Other { sound_format: 9 };
        assert_eq!(audio(&cat(&[&[0x92], b"Opus"])).unwrap(), other);
        assert_eq!(audio(&cat(&[&[0x94], b"Opus", &[0, 2]])).unwrap(), other);
        assert_eq!(
            audio(&cat(&[
                &[0x95],
                &[0x11],
                b"Opus",
                &[0, 0, 0, 1, 7, 2, 0, 0, 1, 8]
            ]))
            .unwrap(),
            AudioTag::Multitrack(vec![
                (
                    0,
                    AudioTag::Frame {
                        codec: AudioCodec::Opus,
                        data: Bytes::from_static(&[7])
                    }
                ),
                (
                    2,
                    AudioTag::Frame {
                        codec: AudioCodec::Opus,
                        data: Bytes::from_static(&[8])
                    }
                ),
            ])
        );
        assert!(audio(&cat(&[&[0x95], &[0x00], b"Opus"])).is_err());
        assert_eq!(
            audio(&cat(&[&[0x93], b"Opus", &[1]])),
            Err(FlvError::InvalidPacketType(3))
        );
    }

    #[test]
    fn truncated_prefixes_are_errors() {
        // (tag, shortest valid length)
        let cases: Vec<(Vec<u8>, usize)> = vec![
            (cat(&[&[0x17, 0, 0, 0, 0], AVCC]), 6),
            (cat(&[&[0x27, 1, 0xff, 0xff, 0xf6], NALS]), 6),
            (vec![0x17, 2, 0, 0, 0], 5),
            (cat(&[&[0x91], b"hvc1", &[0, 0, 0x10], NALS]), 9),
            (cat(&[&[0x93], b"av01", NALS]), 6),
            (cat(&[&[0x90], b"avc1", AVCC]), 6),
            (cat(&[&[0x92], b"avc1"]), 5),
            (
                cat(&[
                    &[0x97, 0x02, 0x00, 0x01, 0x02, 0x01],
                    b"avc1",
                    &[0, 0, 5],
                    NALS,
                ]),
                14,
            ),
        ];
        for (tag, min_len) in &cases {
            assert!(video(tag).is_ok());
            for len in 0..*min_len {
                assert!(video(&tag[..len]).is_err(), "{tag:02x?} len {len}");
            }
        }
        let audio_cases: Vec<(Vec<u8>, usize)> = vec![
            (vec![0xaf, 0, 0x12, 0x10], 3),
            (vec![0xaf, 1, 0x21], 3),
            (vec![0x2f, 0xff], 2),
            (cat(&[&[0x90], b"Opus", b"OpusHead"]), 6),
            (cat(&[&[0x91], b"mp4a", &[1]]), 6),
            (cat(&[&[0x97, 0x00, 0x11, 0x01], b"Opus", &[0xfc]]), 9),
        ];
        for (tag, min_len) in &audio_cases {
            assert!(audio(tag).is_ok());
            for len in 0..*min_len {
                assert!(audio(&tag[..len]).is_err(), "{tag:02x?} len {len}");
            }
        }
    }

    #[test]
    fn builders_round_trip() {
        let tag = avc_sequence_header_tag(AVCC);
        assert_eq!(&tag[..5], &[0x17, 0, 0, 0, 0]);
        assert_eq!(
            parse_video(tag).unwrap(),
            VideoTag::SequenceHeader {
                codec: VideoCodec::H264,
                config: Bytes::from_static(AVCC)
            }
        );
        for (keyframe, cts) in [
            (true, 0),
            (false, -40),
            (true, 8_388_607),
            (false, -8_388_608),
        ] {
            let header = avc_frame_tag_header(keyframe, cts);
            assert_eq!(
                video(&cat(&[&header, NALS])).unwrap(),
                VideoTag::Frame {
                    codec: VideoCodec::H264,
                    keyframe,
                    composition_time: cts,
                    data: Bytes::from_static(NALS)
                }
            );
        }
        assert_eq!(
            avc_frame_tag_header(false, -40),
            [0x27, 1, 0xff, 0xff, 0xd8]
        );
        assert_eq!(
            avc_frame_tag_header(true, i32::MAX),
            [0x17, 1, 0x7f, 0xff, 0xff]
        );
        assert_eq!(
            avc_frame_tag_header(true, i32::MIN),
            [0x17, 1, 0x80, 0x00, 0x00]
        );
        let tag = aac_sequence_header_tag(&[0x12, 0x10]);
        assert_eq!(&tag[..], &[0xaf, 0x00, 0x12, 0x10]);
        assert_eq!(
            parse_audio(tag).unwrap(),
            AudioTag::SequenceHeader {
                codec: AudioCodec::Aac,
                config: Bytes::from_static(&[0x12, 0x10])
            }
        );
        assert_eq!(
            audio(&cat(&[&AAC_FRAME_TAG_HEADER, &[0x21]])).unwrap(),
            AudioTag::Frame {
                codec: AudioCodec::Aac,
                data: Bytes::from_static(&[0x21])
            }
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut state: u64 = 0xdead_beef_cafe_f00d;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..10_000u32 {
            let len = (next() % 24) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Bias towards interesting header bytes so deep paths are hit.
            if let Some(b) = bytes.first_mut() {
                *b = match i % 4 {
                    0 => 0x80 | *b,
                    1 => 0x90 | (*b & 0x0f),
                    2 => (*b & 0xf0) | 0x07,
                    _ => *b,
                };
            }
            let _ = parse_video(Bytes::from(bytes.clone()));
            let _ = parse_audio(Bytes::from(bytes));
        }
    }
}
