//! Codec configurations from real encoders, for unit tests across the crate.

use bytes::Bytes;

use super::aac::AacConfig;
use super::h264::AvcConfig;
use super::{CodecConfig, Track, TrackId, Tracks};

/// An `avcC` record as libx264 writes it: Baseline 1280x720, level 3.1.
pub const AVCC_720P: &[u8] = &[
    0x01, 0x42, 0xc0, 0x1f, 0xff, 0xe1, 0x00, 0x17, 0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16,
    0xec, 0x04, 0x40, 0x00, 0x00, 0x03, 0x00, 0x40, 0x00, 0x00, 0x0c, 0x23, 0xc6, 0x0c, 0xa8, 0x01,
    0x00, 0x04, 0x68, 0xce, 0x0f, 0xc8,
];

/// AAC-LC, 44.1 kHz, stereo.
pub const ASC_LC_44100_STEREO: &[u8] = &[0x12, 0x10];

/// The parsed 720p `avcC`.
pub fn avc_config() -> AvcConfig {
    AvcConfig::parse(Bytes::from_static(AVCC_720P)).expect("fixture avcC parses")
}

/// The parsed AAC config.
pub fn aac_config() -> AacConfig {
    AacConfig::parse(Bytes::from_static(ASC_LC_44100_STEREO)).expect("fixture ASC parses")
}

/// Video (track 0, ms timescale) + audio (track 1, ms timescale), as RTMP announces them.
pub fn av_tracks() -> Tracks {
    Tracks {
        list: vec![
            Track {
                id: TrackId(0),
                timescale: 1000,
                codec: CodecConfig::H264(avc_config()),
            },
            Track {
                id: TrackId(1),
                timescale: 1000,
                codec: CodecConfig::Aac(aac_config()),
            },
        ],
    }
}

/// An `hvcC` record from x265 (ffmpeg 9, 1920×1080 Main, level 4), VPS/SPS/PPS only (its
/// SEI array dropped).
pub const HVCC_1080P_MAIN: &[u8] = &[
    0x01, 0x01, 0x60, 0x00, 0x00, 0x00, 0x90, 0x00, 0x00, 0x00, 0x00, 0x00, 0x78, 0xf0, 0x00, 0xfc,
    0xfd, 0xf8, 0xf8, 0x00, 0x00, 0x0f, 0x03, 0xa0, 0x00, 0x01, 0x00, 0x18, 0x40, 0x01, 0x0c, 0x01,
    0xff, 0xff, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x00,
    0x78, 0x95, 0x94, 0x09, 0xa1, 0x00, 0x01, 0x00, 0x2b, 0x42, 0x01, 0x01, 0x01, 0x60, 0x00, 0x00,
    0x03, 0x00, 0x90, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x00, 0x78, 0xa0, 0x03, 0xc0, 0x80, 0x11,
    0x07, 0xcb, 0x96, 0x56, 0x54, 0xa4, 0xc2, 0xf0, 0x16, 0x80, 0x80, 0x00, 0x00, 0x03, 0x00, 0x80,
    0x00, 0x00, 0x0f, 0x04, 0xa2, 0x00, 0x01, 0x00, 0x06, 0x44, 0x01, 0xc0, 0x73, 0xc1, 0x89,
];

/// An `av1C` record from SVT-AV1 (ffmpeg 9, 640×360 Main 8-bit) with its sequence header OBU.
pub const AV1C_360P: &[u8] = &[
    0x81, 0x01, 0x0c, 0x00, 0x0a, 0x0c, 0x02, 0x00, 0x00, 0x0d, 0x26, 0x27, 0xfb, 0x38, 0x05, 0xf0,
    0x00, 0x80,
];

/// A `vpcC` body (version 1, flags 0) from libvpx-vp9 (ffmpeg 9): profile 0, level 2.1,
/// 8-bit 4:2:0.
pub const VPCC_PROFILE0: &[u8] = &[
    0x01, 0x00, 0x00, 0x00, 0x00, 0x15, 0x82, 0x02, 0x02, 0x02, 0x00, 0x00,
];

/// HEVC (track 0), AV1 (track 2) and VP9 (track 3, size from a keyframe) video and Opus audio
/// (track 1), every configuration from a real encoder.
pub fn enhanced_tracks() -> Tracks {
    use super::av1::Av1Config;
    use super::hevc::HevcConfig;
    use super::opus::OpusConfig;
    use super::vp9::Vp9Config;
    let mut vp9 = Vp9Config::parse(Bytes::from_static(VPCC_PROFILE0)).expect("fixture vpcC");
    vp9.width = 640;
    vp9.height = 360;
    Tracks {
        list: vec![
            Track {
                id: TrackId(0),
                timescale: 1000,
                codec: CodecConfig::Hevc(
                    HevcConfig::parse(Bytes::from_static(HVCC_1080P_MAIN)).expect("fixture hvcC"),
                ),
            },
            Track {
                id: TrackId(1),
                timescale: 1000,
                codec: CodecConfig::Opus(OpusConfig {
                    channels: 2,
                    input_sample_rate: 48_000,
                    pre_skip: 312,
                }),
            },
            Track {
                id: TrackId(2),
                timescale: 1000,
                codec: CodecConfig::Av1(
                    Av1Config::parse(Bytes::from_static(AV1C_360P)).expect("fixture av1C"),
                ),
            },
            Track {
                id: TrackId(3),
                timescale: 1000,
                codec: CodecConfig::Vp9(vp9),
            },
        ],
    }
}
