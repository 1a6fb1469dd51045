//! H.265/HEVC decoder configuration: the `HEVCDecoderConfigurationRecord` (ISO/IEC 14496-15
//! `hvcC`) that Enhanced RTMP carries in a `hvc1` SequenceStart and MP4 in its `hvcC` box,
//! and the part of the sequence parameter set that gives the picture size.
//!
//! Sans-IO, never panics on malformed input. The record itself is decoded with `mp4-atom`'s
//! `Hvcc` (the same type the fMP4 muxer writes back); the SPS is ours.

use bytes::Bytes;
use mp4_atom::Atom;
use thiserror::Error;

use super::bits::{BitReader, BitsError};
use super::h264::remove_emulation_prevention;

/// NAL unit type of a video parameter set.
pub const NAL_VPS: u8 = 32;
/// NAL unit type of a sequence parameter set.
pub const NAL_SPS: u8 = 33;
/// NAL unit type of a picture parameter set.
pub const NAL_PPS: u8 = 34;
/// Largest picture dimension accepted: √(8 × MaxLumaPs) of level 6.2, the most HEVC allows.
const MAX_DIMENSION: u32 = 16_888;

/// Errors produced while parsing HEVC structures.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HevcError {
    /// The `hvcC` record is malformed or truncated.
    #[error("hvcC: {0}")]
    Record(String),
    /// The record carries no SPS.
    #[error("hvcC has no SPS")]
    NoSps,
    /// The SPS is malformed.
    #[error("HEVC SPS: {0}")]
    Sps(#[from] BitsError),
    /// The NAL length size is not 1, 2 or 4 bytes.
    #[error("invalid NAL length size {0}")]
    InvalidNalLengthSize(u8),
}

/// A parsed `HEVCDecoderConfigurationRecord`.
#[derive(Debug, Clone, PartialEq)]
pub struct HevcConfig {
    /// `general_profile_space` (0 in every real stream).
    pub profile_space: u8,
    /// `general_tier_flag`: high tier.
    pub high_tier: bool,
    /// `general_profile_idc` (1 Main, 2 Main 10, 3 Main Still Picture, 4 Range Extensions).
    pub profile_idc: u8,
    /// `general_profile_compatibility_flags`, bit 31 first as in the record.
    pub compatibility: u32,
    /// `general_constraint_indicator_flags` (48 bits).
    pub constraints: [u8; 6],
    /// `general_level_idc` (30 × the level, e.g. 93 for 3.1).
    pub level_idc: u8,
    /// Bytes of each NAL unit's length prefix in samples.
    pub nal_length_size: u8,
    /// Luma bit depth.
    pub bit_depth: u8,
    /// Displayed width (after the conformance window).
    pub width: u32,
    /// Displayed height (after the conformance window).
    pub height: u32,
    /// Frame rate from the record's `avgFrameRate`, when the encoder filled it in.
    pub fps: Option<f64>,
    /// The record as received.
    pub raw: Bytes,
}

impl HevcConfig {
    /// Parses an `hvcC` record; the first SPS gives the picture size.
    pub fn parse(raw: Bytes) -> Result<Self, HevcError> {
        let record = mp4_atom::Hvcc::decode_body(&mut &raw[..])
            .map_err(|e| HevcError::Record(e.to_string()))?;
        if record.configuration_version != 1 {
            return Err(HevcError::Record(format!(
                "unsupported version {}",
                record.configuration_version
            )));
        }
        let nal_length_size = record.length_size_minus_one + 1;
        if nal_length_size == 3 {
            return Err(HevcError::InvalidNalLengthSize(nal_length_size));
        }
        let sps = record
            .arrays
            .iter()
            .filter(|a| a.nal_unit_type == NAL_SPS)
            .flat_map(|a| a.nalus.iter())
            .next()
            .ok_or(HevcError::NoSps)?;
        let (width, height) = parse_sps_size(sps)?;
        let fps = (record.avg_frame_rate > 0).then(|| f64::from(record.avg_frame_rate) / 256.0);
        Ok(HevcConfig {
            profile_space: record.general_profile_space,
            high_tier: record.general_tier_flag,
            profile_idc: record.general_profile_idc,
            compatibility: u32::from_be_bytes(record.general_profile_compatibility_flags),
            constraints: record.general_constraint_indicator_flags,
            level_idc: record.general_level_idc,
            nal_length_size,
            bit_depth: record.bit_depth_luma_minus8 + 8,
            width,
            height,
            fps,
            raw,
        })
    }

    /// RFC 6381 / ISO/IEC 14496-15 Annex E codec string, e.g. `hvc1.1.6.L93.B0`.
    pub fn codec_string(&self) -> String {
        let space = match self.profile_space {
            1 => "A",
            2 => "B",
            3 => "C",
            _ => "",
        };
        let mut s = format!(
            "hvc1.{space}{}.{:X}.{}{}",
            self.profile_idc,
            self.compatibility.reverse_bits(),
            if self.high_tier { 'H' } else { 'L' },
            self.level_idc
        );
        let used = self
            .constraints
            .iter()
            .rposition(|b| *b != 0)
            .map_or(0, |i| i + 1);
        for b in &self.constraints[..used] {
            s.push_str(&format!(".{b:X}"));
        }
        s
    }

    /// The profile's name.
    pub fn profile_name(&self) -> &'static str {
        match self.profile_idc {
            1 => "Main",
            2 => "Main 10",
            3 => "Main Still Picture",
            4 => "Range Extensions",
            5 => "High Throughput",
            9 => "Screen Content Coding",
            _ => "other",
        }
    }
}

/// The displayed picture size from an SPS NAL unit (2-byte header included).
pub fn parse_sps_size(nal: &[u8]) -> Result<(u32, u32), HevcError> {
    let rbsp = remove_emulation_prevention(nal.get(2..).unwrap_or_default());
    let mut r = BitReader::new(&rbsp);
    r.bits(4, "sps_video_parameter_set_id")?;
    let max_sub_layers_minus1 = r.bits(3, "sps_max_sub_layers_minus1")?;
    r.bit("sps_temporal_id_nesting_flag")?;
    skip_profile_tier_level(&mut r, max_sub_layers_minus1)?;
    r.ue_max(15, "sps_seq_parameter_set_id")?;
    let chroma_format_idc = r.ue_max(3, "chroma_format_idc")?;
    let separate_planes = chroma_format_idc == 3 && r.flag("separate_colour_plane_flag")?;
    let width = r.ue("pic_width_in_luma_samples")?;
    let height = r.ue("pic_height_in_luma_samples")?;
    let (mut crop_w, mut crop_h) = (0u32, 0u32);
    if r.flag("conformance_window_flag")? {
        let left = r.ue("conf_win_left_offset")?;
        let right = r.ue("conf_win_right_offset")?;
        let top = r.ue("conf_win_top_offset")?;
        let bottom = r.ue("conf_win_bottom_offset")?;
        let (sub_w, sub_h) = match (chroma_format_idc, separate_planes) {
            (1, false) => (2, 2),
            (2, false) => (2, 1),
            _ => (1, 1),
        };
        crop_w = left.saturating_add(right).saturating_mul(sub_w);
        crop_h = top.saturating_add(bottom).saturating_mul(sub_h);
    }
    let (w, h) = (width.saturating_sub(crop_w), height.saturating_sub(crop_h));
    if w == 0 || h == 0 || w > MAX_DIMENSION || h > MAX_DIMENSION {
        return Err(HevcError::Sps(BitsError::OutOfRange("picture size")));
    }
    Ok((w, h))
}

/// Skips `profile_tier_level(1, max_sub_layers_minus1)` (H.265 §7.3.3).
fn skip_profile_tier_level(
    r: &mut BitReader<'_>,
    max_sub_layers_minus1: u32,
) -> Result<(), BitsError> {
    // general_profile_space .. general_level_idc: 2+1+5+32+48 bits + 8.
    for _ in 0..3 {
        r.bits(32, "general_profile_tier_level")?;
    }
    let mut present = Vec::with_capacity(max_sub_layers_minus1 as usize);
    for _ in 0..max_sub_layers_minus1 {
        let profile = r.flag("sub_layer_profile_present_flag")?;
        let level = r.flag("sub_layer_level_present_flag")?;
        present.push((profile, level));
    }
    if max_sub_layers_minus1 > 0 {
        for _ in max_sub_layers_minus1..8 {
            r.bits(2, "reserved_zero_2bits")?;
        }
    }
    for (profile, level) in present {
        if profile {
            // 2+1+5+32+4+43+1 = 88 bits.
            r.bits(32, "sub_layer_profile")?;
            r.bits(32, "sub_layer_profile")?;
            r.bits(24, "sub_layer_profile")?;
        }
        if level {
            r.bits(8, "sub_layer_level_idc")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::test_support::HVCC_1080P_MAIN;

    #[test]
    fn parses_an_x265_record() {
        let c = HevcConfig::parse(Bytes::from_static(HVCC_1080P_MAIN)).unwrap();
        assert_eq!((c.width, c.height), (1920, 1080), "cropped from 1088");
        assert_eq!(c.profile_idc, 1);
        assert_eq!(c.nal_length_size, 4);
        assert_eq!(c.codec_string(), "hvc1.1.6.L120.90");
        assert_eq!(c.profile_name(), "Main");
    }

    #[test]
    fn codec_string_follows_annex_e() {
        let mut c = HevcConfig::parse(Bytes::from_static(HVCC_1080P_MAIN)).unwrap();
        c.constraints = [0xB0, 0, 0, 0, 0, 0];
        c.level_idc = 93;
        assert_eq!(c.codec_string(), "hvc1.1.6.L93.B0");
        c.high_tier = true;
        c.profile_idc = 2;
        c.compatibility = 0x2000_0000;
        c.constraints = [0; 6];
        assert_eq!(c.codec_string(), "hvc1.2.4.H93");
    }

    #[test]
    fn truncated_records_are_errors() {
        for n in 0..HVCC_1080P_MAIN.len() {
            assert!(
                HevcConfig::parse(Bytes::copy_from_slice(&HVCC_1080P_MAIN[..n])).is_err(),
                "{n} bytes"
            );
        }
    }
}
