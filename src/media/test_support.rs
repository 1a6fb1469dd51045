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
