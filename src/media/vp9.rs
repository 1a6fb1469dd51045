//! VP9 decoder configuration: the `VPCodecConfigurationRecord` (`vpcC`, version 1) that
//! Enhanced RTMP carries in a `vp09` SequenceStart, and the picture size from a keyframe's
//! uncompressed header (the record has none).
//!
//! Sans-IO, never panics on malformed input.

use bytes::Bytes;
use thiserror::Error;

use super::bits::{BitReader, BitsError};

/// Errors produced while parsing VP9 structures.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Vp9Error {
    /// The `vpcC` record is malformed or truncated.
    #[error("vpcC: {0}")]
    Record(&'static str),
    /// A keyframe header is malformed.
    #[error("VP9 frame header: {0}")]
    Frame(#[from] BitsError),
}

/// A parsed `vpcC` record, with the picture size once a keyframe gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Vp9Config {
    /// Profile 0..=3.
    pub profile: u8,
    /// Level × 10 (e.g. 31 for 3.1).
    pub level: u8,
    /// 8, 10 or 12.
    pub bit_depth: u8,
    /// `chroma_subsampling` (0/1 4:2:0, 2 4:2:2, 3 4:4:4).
    pub chroma_subsampling: u8,
    /// Picture width from a keyframe (0 until one arrived).
    pub width: u32,
    /// Picture height from a keyframe (0 until one arrived).
    pub height: u32,
    /// The record body as received (version and flags first).
    pub raw: Bytes,
}

impl Vp9Config {
    /// Parses a `vpcC` body: version (1), flags, then the record.
    pub fn parse(raw: Bytes) -> Result<Self, Vp9Error> {
        let b = |i: usize| raw.get(i).copied().ok_or(Vp9Error::Record("truncated"));
        if b(0)? != 1 {
            return Err(Vp9Error::Record("unsupported version"));
        }
        let profile = b(4)?;
        let level = b(5)?;
        let packed = b(6)?;
        // colour primaries, transfer, matrix, then a 16-bit init data size.
        b(11)?;
        let bit_depth = packed >> 4;
        if profile > 3 || !matches!(bit_depth, 8 | 10 | 12) {
            return Err(Vp9Error::Record("profile or bit depth out of range"));
        }
        Ok(Vp9Config {
            profile,
            level,
            bit_depth,
            chroma_subsampling: (packed >> 1) & 0x07,
            width: 0,
            height: 0,
            raw,
        })
    }

    /// RFC 6381 codec string per the VP9 ISOBMFF binding, e.g. `vp09.00.31.08`.
    pub fn codec_string(&self) -> String {
        format!(
            "vp09.{:02}.{:02}.{:02}",
            self.profile, self.level, self.bit_depth
        )
    }

    /// The profile's name.
    pub fn profile_name(&self) -> &'static str {
        match self.profile {
            0 => "Profile 0",
            1 => "Profile 1",
            2 => "Profile 2",
            _ => "Profile 3",
        }
    }
}

/// The picture size from a VP9 keyframe's uncompressed header (VP9 §6.2), or `None` for an
/// inter frame, a superframe whose first frame is not a keyframe, or malformed data.
pub fn keyframe_size(frame: &[u8]) -> Option<(u32, u32)> {
    parse_keyframe_size(frame).ok().flatten()
}

fn parse_keyframe_size(frame: &[u8]) -> Result<Option<(u32, u32)>, BitsError> {
    let mut r = BitReader::new(frame);
    if r.bits(2, "frame_marker")? != 2 {
        return Ok(None);
    }
    let low = r.bit("profile_low_bit")?;
    let high = r.bit("profile_high_bit")?;
    let profile = (high << 1) | low;
    if profile == 3 {
        r.bit("reserved_zero")?;
    }
    if r.flag("show_existing_frame")? {
        return Ok(None);
    }
    if r.bit("frame_type")? != 0 {
        return Ok(None);
    }
    r.bit("show_frame")?;
    r.bit("error_resilient_mode")?;
    if r.bits(24, "frame_sync_code")? != 0x49_83_42 {
        return Ok(None);
    }
    // color_config
    if profile >= 2 {
        r.bit("ten_or_twelve_bit")?;
    }
    let color_space = r.bits(3, "color_space")?;
    if color_space != 7 {
        r.bit("color_range")?;
        if profile == 1 || profile == 3 {
            r.bits(3, "subsampling_and_reserved")?;
        }
    } else if profile == 1 || profile == 3 {
        r.bit("reserved_zero")?;
    }
    let width = r.bits(16, "frame_width_minus_1")? + 1;
    let height = r.bits(16, "frame_height_minus_1")? + 1;
    Ok(Some((width, height)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::test_support::VPCC_PROFILE0;

    #[test]
    fn parses_a_libvpx_record() {
        let c = Vp9Config::parse(Bytes::from_static(VPCC_PROFILE0)).unwrap();
        assert_eq!((c.profile, c.level, c.bit_depth), (0, 21, 8));
        assert_eq!(c.codec_string(), "vp09.00.21.08");
        for n in 0..VPCC_PROFILE0.len() {
            assert!(Vp9Config::parse(Bytes::copy_from_slice(&VPCC_PROFILE0[..n])).is_err());
        }
    }

    #[test]
    fn keyframe_header_gives_the_size() {
        // frame_marker 2, profile 0, show_existing 0, key, show, not resilient, sync code,
        // color space 1 (BT.601), limited range, then 639 and 359.
        let mut bits = String::from("10" /* marker */);
        bits += "00"; // profile
        bits += "0"; // show_existing_frame
        bits += "0"; // frame_type = KEY_FRAME
        bits += "1"; // show_frame
        bits += "0"; // error_resilient_mode
        bits += &format!("{:024b}", 0x49_83_42);
        bits += "001"; // color_space
        bits += "0"; // color_range
        bits += &format!("{:016b}{:016b}", 639, 359);
        while bits.len() % 8 != 0 {
            bits.push('0');
        }
        let bytes: Vec<u8> = (0..bits.len() / 8)
            .map(|i| u8::from_str_radix(&bits[i * 8..i * 8 + 8], 2).unwrap())
            .collect();
        assert_eq!(keyframe_size(&bytes), Some((640, 360)));
        let mut inter = bytes.clone();
        inter[0] |= 0x04; // frame_type = NON_KEY
        assert_eq!(keyframe_size(&inter), None);
        for n in 0..bytes.len() {
            assert_eq!(keyframe_size(&bytes[..n]), None);
        }
    }
}
