//! H.264/AVC parameter-set parsing and AVCC access-unit helpers.
//!
//! This module owns everything the server needs to know about H.264 bitstreams
//! without decoding pictures: parsing a sequence parameter set (SPS) into
//! [`SpsInfo`] (profile, level, chroma format, bit depth, cropped picture size,
//! frame rate), parsing the `AVCDecoderConfigurationRecord` carried in FLV AVC
//! sequence headers and MP4 `avcC` boxes into [`AvcConfig`], and walking the
//! length-prefixed NAL units of an AVCC access unit. It is sans-IO and never
//! panics on malformed input. The RTMP ingest path calls it when a video
//! sequence header arrives, and the fMP4/LL-HLS packager calls it to build the
//! `avcC` box, the RFC 6381 codec string, and to find IDR frames for segment
//! and part boundaries.

use bytes::Bytes;
use thiserror::Error;

use super::bits::{BitReader, BitsError};

/// NAL unit type of a sequence parameter set.
const NAL_TYPE_SPS: u8 = 7;
/// NAL unit type of a picture parameter set.
const NAL_TYPE_PPS: u8 = 8;
/// NAL unit type of a coded slice of an IDR picture.
const NAL_TYPE_IDR: u8 = 5;
/// Largest exp-Golomb prefix that still yields a value fitting in `u32`.
/// Upper bound of `num_ref_frames_in_pic_order_cnt_cycle` (spec: 0..=255).
const MAX_POC_CYCLE_LEN: u32 = 255;
/// Upper bound of `cpb_cnt_minus1` in HRD parameters (spec: 0..=31).
const MAX_CPB_CNT_MINUS1: u32 = 31;
/// `aspect_ratio_idc` value signalling an explicit (extended) SAR.
const EXTENDED_SAR: u32 = 255;

/// Errors produced while parsing H.264 structures.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum H264Error {
    /// The input ended before the structure was complete.
    #[error("truncated H.264 data while reading {0}")]
    Truncated(&'static str),
    /// The NAL unit is not of the expected type.
    #[error("unexpected NAL unit type {found}, expected {expected}")]
    UnexpectedNalType {
        /// NAL unit type that was required.
        expected: u8,
        /// NAL unit type found in the header.
        found: u8,
    },
    /// A syntax element holds a value the specification forbids.
    #[error("H.264 syntax element {0} out of range")]
    OutOfRange(&'static str),
    /// The SPS is not terminated by a valid `rbsp_trailing_bits`.
    #[error("H.264 SPS has no rbsp stop bit where expected")]
    MissingStopBit,
    /// The decoder configuration record has an unsupported version.
    #[error("unsupported AVCDecoderConfigurationRecord version {0}")]
    UnsupportedVersion(u8),
    /// The decoder configuration record carries no SPS.
    #[error("AVCDecoderConfigurationRecord has no SPS")]
    NoSps,
    /// The decoder configuration record carries no PPS.
    #[error("AVCDecoderConfigurationRecord has no PPS")]
    NoPps,
    /// The NAL length field size is not 1, 2, 3 or 4 bytes.
    #[error("invalid NAL length size {0}")]
    InvalidNalLengthSize(u8),
}

/// Stream properties decoded from a sequence parameter set.
#[derive(Debug, Clone, PartialEq)]
pub struct SpsInfo {
    /// `profile_idc` (66 Baseline, 77 Main, 100 High, ...).
    pub profile_idc: u8,
    /// The byte holding `constraint_set0..5_flag` and the reserved bits.
    pub constraint_flags: u8,
    /// `level_idc` (e.g. 31 for level 3.1).
    pub level_idc: u8,
    /// `chroma_format_idc`: 0 monochrome, 1 4:2:0, 2 4:2:2, 3 4:4:4.
    pub chroma_format_idc: u8,
    /// Luma sample bit depth (8..=14).
    pub bit_depth_luma: u8,
    /// Chroma sample bit depth (8..=14).
    pub bit_depth_chroma: u8,
    /// Displayed width in pixels, after frame cropping.
    pub width: u32,
    /// Displayed height in pixels (full frame, both fields), after cropping.
    pub height: u32,
    /// Frame rate from VUI timing info: `time_scale / (2 * num_units_in_tick)`;
    /// `None` when timing info is absent or has a zero field.
    pub fps: Option<f64>,
}

/// A parsed `AVCDecoderConfigurationRecord` (ISO/IEC 14496-15 `avcC`).
#[derive(Debug, Clone, PartialEq)]
pub struct AvcConfig {
    /// `AVCProfileIndication` byte of the record.
    pub profile: u8,
    /// `profile_compatibility` byte of the record.
    pub compatibility: u8,
    /// `AVCLevelIndication` byte of the record.
    pub level: u8,
    /// Size in bytes of the NAL length prefix in access units (1..=4).
    pub nal_length_size: u8,
    /// SPS NAL units (including NAL header), zero-copy slices of `raw`.
    pub sps: Vec<Bytes>,
    /// PPS NAL units (including NAL header), zero-copy slices of `raw`.
    pub pps: Vec<Bytes>,
    /// Decoded properties of the first SPS.
    pub info: SpsInfo,
    /// The complete record as received, suitable for an MP4 `avcC` box.
    pub raw: Bytes,
}

impl AvcConfig {
    /// Parses an `AVCDecoderConfigurationRecord`.
    ///
    /// Requires at least one SPS (the first is decoded into `info`) and at
    /// least one PPS. The optional high-profile extension after the PPS list
    /// is ignored whether present, absent or truncated.
    pub fn parse(avcc: Bytes) -> Result<Self, H264Error> {
        let mut cur = ByteCursor::new(&avcc);
        let version = cur.u8("configurationVersion")?;
        if version != 1 {
            return Err(H264Error::UnsupportedVersion(version));
        }
        let profile = cur.u8("AVCProfileIndication")?;
        let compatibility = cur.u8("profile_compatibility")?;
        let level = cur.u8("AVCLevelIndication")?;
        let nal_length_size = (cur.u8("lengthSizeMinusOne")? & 0x03) + 1;
        let sps_count = cur.u8("numOfSequenceParameterSets")? & 0x1f;
        let sps = read_parameter_sets(&mut cur, &avcc, sps_count, NAL_TYPE_SPS)?;
        let pps_count = cur.u8("numOfPictureParameterSets")?;
        let pps = read_parameter_sets(&mut cur, &avcc, pps_count, NAL_TYPE_PPS)?;
        let first_sps = sps.first().ok_or(H264Error::NoSps)?;
        if pps.is_empty() {
            return Err(H264Error::NoPps);
        }
        let info = parse_sps(first_sps)?;
        Ok(Self {
            profile,
            compatibility,
            level,
            nal_length_size,
            sps,
            pps,
            info,
            raw: avcc,
        })
    }

    /// RFC 6381 codec string, e.g. `avc1.64001f`, built from the record's
    /// profile, compatibility and level bytes.
    pub fn codec_string(&self) -> String {
        format!(
            "avc1.{:02x}{:02x}{:02x}",
            self.profile, self.compatibility, self.level
        )
    }
}

/// Reads `count` length-prefixed parameter sets of NAL type `nal_type`,
/// returning zero-copy slices of `whole`.
fn read_parameter_sets(
    cur: &mut ByteCursor<'_>,
    whole: &Bytes,
    count: u8,
    nal_type: u8,
) -> Result<Vec<Bytes>, H264Error> {
    let mut sets = Vec::new();
    for _ in 0..count {
        let len = usize::from(cur.u16("parameter set length")?);
        let range = cur.take_range(len, "parameter set")?;
        let found = whole
            .get(range.start)
            .map(|b| b & 0x1f)
            .ok_or(H264Error::Truncated("parameter set NAL header"))?;
        if found != nal_type {
            return Err(H264Error::UnexpectedNalType {
                expected: nal_type,
                found,
            });
        }
        sets.push(whole.slice(range));
    }
    Ok(sets)
}

/// The name of an H.264 `profile_idc`.
pub fn profile_name(profile_idc: u8) -> &'static str {
    match profile_idc {
        66 => "Baseline",
        77 => "Main",
        88 => "Extended",
        100 => "High",
        110 => "High 10",
        122 => "High 4:2:2",
        244 => "High 4:4:4 Predictive",
        44 => "CAVLC 4:4:4 Intra",
        _ => "other",
    }
}

/// Parses a sequence parameter set NAL unit (including its 1-byte header).
///
/// Emulation-prevention bytes are removed first. The whole SPS, including
/// VUI and HRD parameters, is parsed and must end with the rbsp stop bit, so
/// any truncation is reported as an error.
pub fn parse_sps(nal: &[u8]) -> Result<SpsInfo, H264Error> {
    let header = *nal.first().ok_or(H264Error::Truncated("NAL header"))?;
    let found = header & 0x1f;
    if found != NAL_TYPE_SPS {
        return Err(H264Error::UnexpectedNalType {
            expected: NAL_TYPE_SPS,
            found,
        });
    }
    let rbsp = remove_emulation_prevention(nal.get(1..).unwrap_or_default());
    let mut r = BitReader::new(&rbsp);
    let info = read_sps(&mut r)?;
    if r.bit("rbsp_stop_one_bit")? != 1 {
        return Err(H264Error::MissingStopBit);
    }
    Ok(info)
}

/// Chroma-related fields of the SPS (defaults apply to non-high profiles).
struct ChromaInfo {
    /// `chroma_format_idc`.
    format_idc: u8,
    /// `separate_colour_plane_flag`.
    separate_planes: bool,
    /// Luma bit depth.
    depth_luma: u8,
    /// Chroma bit depth.
    depth_chroma: u8,
}

/// Reads the SPS RBSP body up to (not including) the trailing bits.
fn read_sps(r: &mut BitReader<'_>) -> Result<SpsInfo, H264Error> {
    let profile_idc = r.u8_bits(8, "profile_idc")?;
    let constraint_flags = r.u8_bits(8, "constraint flags")?;
    let level_idc = r.u8_bits(8, "level_idc")?;
    r.ue_max(31, "seq_parameter_set_id")?;
    let chroma = if is_high_profile(profile_idc) {
        read_high_profile_fields(r)?
    } else {
        ChromaInfo {
            format_idc: 1,
            separate_planes: false,
            depth_luma: 8,
            depth_chroma: 8,
        }
    };
    r.ue_max(12, "log2_max_frame_num_minus4")?;
    skip_pic_order_cnt(r)?;
    r.ue("max_num_ref_frames")?;
    r.bit("gaps_in_frame_num_allowed_flag")?;
    let (width, height) = read_dimensions(r, &chroma)?;
    let fps = if r.flag("vui_parameters_present_flag")? {
        read_vui(r)?
    } else {
        None
    };
    Ok(SpsInfo {
        profile_idc,
        constraint_flags,
        level_idc,
        chroma_format_idc: chroma.format_idc,
        bit_depth_luma: chroma.depth_luma,
        bit_depth_chroma: chroma.depth_chroma,
        width,
        height,
        fps,
    })
}

/// Whether `profile_idc` carries the chroma/bit-depth/scaling-matrix fields.
fn is_high_profile(profile_idc: u8) -> bool {
    matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    )
}

/// Reads the high-profile-only fields: chroma format, bit depths, scaling
/// matrices.
fn read_high_profile_fields(r: &mut BitReader<'_>) -> Result<ChromaInfo, H264Error> {
    let format_idc = r.ue_max(3, "chroma_format_idc")?;
    let separate_planes = format_idc == 3 && r.flag("separate_colour_plane_flag")?;
    let depth_luma = r.ue_max(6, "bit_depth_luma_minus8")? + 8;
    let depth_chroma = r.ue_max(6, "bit_depth_chroma_minus8")? + 8;
    r.bit("qpprime_y_zero_transform_bypass_flag")?;
    if r.flag("seq_scaling_matrix_present_flag")? {
        let list_count = if format_idc == 3 { 12 } else { 8 };
        for i in 0..list_count {
            if r.flag("seq_scaling_list_present_flag")? {
                skip_scaling_list(r, if i < 6 { 16 } else { 64 })?;
            }
        }
    }
    Ok(ChromaInfo {
        format_idc,
        separate_planes,
        depth_luma,
        depth_chroma,
    })
}

/// Skips one `scaling_list()` of `size` coefficients (clause 7.3.2.1.1.1).
fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Result<(), H264Error> {
    let mut last_scale: i32 = 8;
    let mut next_scale: i32 = 8;
    for _ in 0..size {
        if next_scale != 0 {
            let delta = r.se("delta_scale")?;
            if !(-128..=127).contains(&delta) {
                return Err(H264Error::OutOfRange("delta_scale"));
            }
            // Both operands are bounded (0..=255 and -128..=127): no overflow.
            next_scale = (last_scale + delta + 256).rem_euclid(256);
        }
        if next_scale != 0 {
            last_scale = next_scale;
        }
    }
    Ok(())
}

/// Skips the picture-order-count fields for `pic_order_cnt_type` 0, 1 or 2.
fn skip_pic_order_cnt(r: &mut BitReader<'_>) -> Result<(), H264Error> {
    match r.ue_max(2, "pic_order_cnt_type")? {
        0 => {
            r.ue_max(12, "log2_max_pic_order_cnt_lsb_minus4")?;
        }
        1 => {
            r.bit("delta_pic_order_always_zero_flag")?;
            r.se("offset_for_non_ref_pic")?;
            r.se("offset_for_top_to_bottom_field")?;
            let cycle = r.ue("num_ref_frames_in_pic_order_cnt_cycle")?;
            if cycle > MAX_POC_CYCLE_LEN {
                return Err(H264Error::OutOfRange(
                    "num_ref_frames_in_pic_order_cnt_cycle",
                ));
            }
            for _ in 0..cycle {
                r.se("offset_for_ref_frame")?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Reads picture size, frame/field coding and cropping; returns the cropped
/// `(width, height)` in pixels.
fn read_dimensions(r: &mut BitReader<'_>, chroma: &ChromaInfo) -> Result<(u32, u32), H264Error> {
    let width_mbs = plus_one(r.ue("pic_width_in_mbs_minus1")?, "pic_width_in_mbs")?;
    let height_units = plus_one(
        r.ue("pic_height_in_map_units_minus1")?,
        "pic_height_in_map_units",
    )?;
    let frame_mbs_only = r.flag("frame_mbs_only_flag")?;
    if !frame_mbs_only {
        r.bit("mb_adaptive_frame_field_flag")?;
    }
    r.bit("direct_8x8_inference_flag")?;
    let field_factor: u32 = if frame_mbs_only { 1 } else { 2 };
    let width = mul(width_mbs, 16, "picture width")?;
    let height = mul(
        mul(height_units, field_factor, "picture height")?,
        16,
        "picture height",
    )?;
    if !r.flag("frame_cropping_flag")? {
        return Ok((width, height));
    }
    let (unit_x, unit_y) = crop_units(chroma, field_factor);
    let left = r.ue("frame_crop_left_offset")?;
    let right = r.ue("frame_crop_right_offset")?;
    let top = r.ue("frame_crop_top_offset")?;
    let bottom = r.ue("frame_crop_bottom_offset")?;
    let width = apply_crop(width, left, right, unit_x, "frame crop width")?;
    let height = apply_crop(height, top, bottom, unit_y, "frame crop height")?;
    Ok((width, height))
}

/// `CropUnitX` / `CropUnitY` per clause 7.4.2.1.1 (depend on ChromaArrayType).
fn crop_units(chroma: &ChromaInfo, field_factor: u32) -> (u32, u32) {
    let chroma_array_type = if chroma.separate_planes {
        0
    } else {
        chroma.format_idc
    };
    let (sub_width, sub_height) = match chroma_array_type {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    (sub_width, sub_height * field_factor)
}

/// Subtracts `(a + b) * unit` from `size`, rejecting overflow and crops that
/// leave nothing.
fn apply_crop(size: u32, a: u32, b: u32, unit: u32, what: &'static str) -> Result<u32, H264Error> {
    let crop = mul(
        a.checked_add(b).ok_or(H264Error::OutOfRange(what))?,
        unit,
        what,
    )?;
    match size.checked_sub(crop) {
        Some(v) if v > 0 => Ok(v),
        _ => Err(H264Error::OutOfRange(what)),
    }
}

/// Checked `v + 1`.
fn plus_one(v: u32, what: &'static str) -> Result<u32, H264Error> {
    v.checked_add(1).ok_or(H264Error::OutOfRange(what))
}

/// Checked multiplication.
fn mul(a: u32, b: u32, what: &'static str) -> Result<u32, H264Error> {
    a.checked_mul(b).ok_or(H264Error::OutOfRange(what))
}

/// Reads `vui_parameters()` (Annex E) and returns the frame rate, if signalled.
fn read_vui(r: &mut BitReader<'_>) -> Result<Option<f64>, H264Error> {
    if r.flag("aspect_ratio_info_present_flag")? && r.bits(8, "aspect_ratio_idc")? == EXTENDED_SAR {
        r.bits(16, "sar_width")?;
        r.bits(16, "sar_height")?;
    }
    if r.flag("overscan_info_present_flag")? {
        r.bit("overscan_appropriate_flag")?;
    }
    if r.flag("video_signal_type_present_flag")? {
        r.bits(3, "video_format")?;
        r.bit("video_full_range_flag")?;
        if r.flag("colour_description_present_flag")? {
            r.bits(24, "colour description")?;
        }
    }
    if r.flag("chroma_loc_info_present_flag")? {
        r.ue_max(5, "chroma_sample_loc_type_top_field")?;
        r.ue_max(5, "chroma_sample_loc_type_bottom_field")?;
    }
    let fps = if r.flag("timing_info_present_flag")? {
        read_timing_info(r)?
    } else {
        None
    };
    let nal_hrd = r.flag("nal_hrd_parameters_present_flag")?;
    if nal_hrd {
        skip_hrd_parameters(r)?;
    }
    let vcl_hrd = r.flag("vcl_hrd_parameters_present_flag")?;
    if vcl_hrd {
        skip_hrd_parameters(r)?;
    }
    if nal_hrd || vcl_hrd {
        r.bit("low_delay_hrd_flag")?;
    }
    r.bit("pic_struct_present_flag")?;
    if r.flag("bitstream_restriction_flag")? {
        skip_bitstream_restriction(r)?;
    }
    Ok(fps)
}

/// Reads VUI timing info and converts it to frames per second.
fn read_timing_info(r: &mut BitReader<'_>) -> Result<Option<f64>, H264Error> {
    let num_units_in_tick = r.bits(32, "num_units_in_tick")?;
    let time_scale = r.bits(32, "time_scale")?;
    r.bit("fixed_frame_rate_flag")?;
    if num_units_in_tick == 0 || time_scale == 0 {
        return Ok(None);
    }
    Ok(Some(
        f64::from(time_scale) / (2.0 * f64::from(num_units_in_tick)),
    ))
}

/// Skips `hrd_parameters()` (clause E.1.2).
fn skip_hrd_parameters(r: &mut BitReader<'_>) -> Result<(), H264Error> {
    let cpb_cnt = r.ue_max(MAX_CPB_CNT_MINUS1, "cpb_cnt_minus1")? + 1;
    r.bits(4, "bit_rate_scale")?;
    r.bits(4, "cpb_size_scale")?;
    for _ in 0..cpb_cnt {
        r.ue("bit_rate_value_minus1")?;
        r.ue("cpb_size_value_minus1")?;
        r.bit("cbr_flag")?;
    }
    r.bits(5, "initial_cpb_removal_delay_length_minus1")?;
    r.bits(5, "cpb_removal_delay_length_minus1")?;
    r.bits(5, "dpb_output_delay_length_minus1")?;
    r.bits(5, "time_offset_length")?;
    Ok(())
}

/// Skips the bitstream restriction fields at the end of the VUI.
fn skip_bitstream_restriction(r: &mut BitReader<'_>) -> Result<(), H264Error> {
    r.bit("motion_vectors_over_pic_boundaries_flag")?;
    r.ue("max_bytes_per_pic_denom")?;
    r.ue("max_bits_per_mb_denom")?;
    r.ue("log2_max_mv_length_horizontal")?;
    r.ue("log2_max_mv_length_vertical")?;
    r.ue("max_num_reorder_frames")?;
    r.ue("max_dec_frame_buffering")?;
    Ok(())
}

/// Removes emulation-prevention bytes: every `00 00 03` becomes `00 00`.
pub(crate) fn remove_emulation_prevention(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut zeros = 0usize;
    for &b in data {
        if zeros >= 2 && b == 0x03 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros.saturating_add(1) } else { 0 };
        out.push(b);
    }
    out
}

/// Iterator over the NAL units of a length-prefixed (AVCC) access unit.
///
/// Yields each NAL unit (header included) as a borrowed slice. Zero-length
/// NAL units are skipped. After the first error it yields nothing more.
#[derive(Debug, Clone)]
pub struct AvccNalUnits<'a> {
    /// Bytes not yet consumed.
    rest: &'a [u8],
    /// Width of the length prefix in bytes.
    length_size: u8,
    /// Set once an error has been yielded or the data is exhausted.
    done: bool,
}

impl<'a> Iterator for AvccNalUnits<'a> {
    type Item = Result<&'a [u8], H264Error>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done && !self.rest.is_empty() {
            match self.next_unit() {
                Ok([]) => continue,
                Ok(nal) => return Some(Ok(nal)),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        self.done = true;
        None
    }
}

impl<'a> AvccNalUnits<'a> {
    /// Splits the next length-prefixed unit off `rest`.
    fn next_unit(&mut self) -> Result<&'a [u8], H264Error> {
        if !(1..=4).contains(&self.length_size) {
            return Err(H264Error::InvalidNalLengthSize(self.length_size));
        }
        let prefix_len = usize::from(self.length_size);
        let (prefix, after) = split_checked(self.rest, prefix_len, "NAL length prefix")?;
        let len = prefix
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        let (nal, remaining) = split_checked(after, len, "NAL unit")?;
        self.rest = remaining;
        Ok(nal)
    }
}

/// `split_at` that reports truncation instead of panicking.
fn split_checked<'a>(
    data: &'a [u8],
    at: usize,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), H264Error> {
    if at > data.len() {
        return Err(H264Error::Truncated(what));
    }
    Ok(data.split_at(at))
}

/// Iterates the NAL units of a length-prefixed (AVCC) access unit.
///
/// `nal_length_size` must be 1..=4 (from [`AvcConfig::nal_length_size`]);
/// otherwise the first item is an [`H264Error::InvalidNalLengthSize`].
pub fn avcc_nal_units(data: &[u8], nal_length_size: u8) -> AvccNalUnits<'_> {
    AvccNalUnits {
        rest: data,
        length_size: nal_length_size,
        done: false,
    }
}

/// Whether the access unit contains an IDR slice (NAL type 5) before any
/// framing error.
pub fn avcc_has_idr(data: &[u8], nal_length_size: u8) -> bool {
    avcc_nal_units(data, nal_length_size)
        .map_while(Result::ok)
        .any(|nal| nal.first().is_some_and(|h| h & 0x1f == NAL_TYPE_IDR))
}

/// Big-endian byte cursor over a slice that reports truncation as errors.
struct ByteCursor<'a> {
    /// Underlying data.
    data: &'a [u8],
    /// Offset of the next unread byte.
    pos: usize,
}

impl<'a> ByteCursor<'a> {
    /// Creates a cursor at offset 0.
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// Consumes `len` bytes and returns their range within the data.
    fn take_range(
        &mut self,
        len: usize,
        what: &'static str,
    ) -> Result<std::ops::Range<usize>, H264Error> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.data.len())
            .ok_or(H264Error::Truncated(what))?;
        let range = self.pos..end;
        self.pos = end;
        Ok(range)
    }

    /// Reads one byte.
    fn u8(&mut self, what: &'static str) -> Result<u8, H264Error> {
        let range = self.take_range(1, what)?;
        self.data
            .get(range.start)
            .copied()
            .ok_or(H264Error::Truncated(what))
    }

    /// Reads a big-endian `u16`.
    fn u16(&mut self, what: &'static str) -> Result<u16, H264Error> {
        Ok(u16::from_be_bytes([self.u8(what)?, self.u8(what)?]))
    }
}

impl From<BitsError> for H264Error {
    fn from(e: BitsError) -> Self {
        match e {
            BitsError::Truncated(what) => H264Error::Truncated(what),
            BitsError::OutOfRange(what) => H264Error::OutOfRange(what),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// libx264 Baseline 1280x720 (supplied by the brief).
    const BASELINE_720P: &str =
        "67 42 c0 1f da 01 40 16 ec 04 40 00 00 03 00 40 00 00 0c 23 c6 0c a8";
    /// ffmpeg/libx264 -profile:v high 1920x1080 @30.
    const HIGH_1080P: &str = "67640028acd940780227e5c044000003000400000300f03c60c658";
    /// libx264 high 640x360 @25.
    const HIGH_360P: &str = "6764001eacd940a02ff97011000003000100000300320f162d96";
    /// libx264 high 854x480 @30000/1001.
    const HIGH_480P_NTSC: &str = "6764001facd940d83de6f01100000303e90000ea600f183196";
    /// libx264 high444 (4:4:4, 8-bit) 854x480 @30: odd crop in 1-pixel units.
    const HIGH444_854X480: &str = "67f4001f919b281b07bc5f8088000003000800000301e078c18cb0";
    /// libx264 high444 yuv444p10le 1280x720 @50.
    const HIGH444_10BIT_720P: &str = "67f4002090d9b280a00b760220000003002000000c81e30632c0";
    /// libx264 high422 yuv422p10le 1920x1080 @60 (4:2:2 crop unit y = 1).
    const HIGH422_10BIT_1080P: &str = "677a002ab6cd940780227e270110000003001000000780f1831960";
    /// libx264 interlaced (PAFF/MBAFF) 1920x1080 @25: frame_mbs_only = 0.
    const HIGH_INTERLACED_1080: &str = "67640028acd94078044fde0220000003002000000643e2c5b2c0";
    /// libx264 baseline 320x240 @15.
    const BASELINE_240P: &str = "6742c00cd90141fb0110000003001000000301e0f142a480";
    /// libx264 high, pix_fmt gray (chroma_format_idc 0) 640x480 @30.
    const HIGH_GRAY_480: &str = "6764001ef3650280f6c05b20000003002000000781e2c5b2c0";
    /// libx264 main 720x576, SAR 16:11, overscan, full colour description,
    /// chroma location.
    const MAIN_576_FULL_VUI: &str = "674d401eeca05a0936096e0202034a000003000200000300641e2c5b2c";
    /// libx264 main 720x480 with extended SAR (idc 255, 7:5).
    const MAIN_480_EXT_SAR: &str = "674d401eeca05a1edff80038002880000003008000001e078b16cb";
    /// Hand-built High SPS (verified with ffmpeg trace_headers): scaling
    /// matrices with explicit and use-default lists, POC type 1 with a
    /// 3-entry cycle, MBAFF, crop bottom 4, VUI with extended SAR, overscan,
    /// colour description, chroma loc, 1001/48000 timing and NAL HRD.
    const HAND_SCALING_POC1: &str = "67640028ada239b2a5e284c22ffffa23fffcae8857442ba215d10ae8857442ba215d10ae8857442ba215d10ae942a2108ca02805df97ff00040003b5010101f000003e90000bb80e8c00fa400fa2bdef8080";
    /// Hand-built High 4:4:4 SPS: separate_colour_plane, 10/12-bit, 12
    /// scaling lists, POC type 2, crop bottom 8, no VUI.
    const HAND_444_SEPARATE: &str = "67f4003392ca808449bfffffffffffffffad00f0044fc4a0";
    /// Hand-built Main SPS: field coding without MBAFF, crop on all four
    /// sides, VUI with nothing present.
    const HAND_MAIN_CROP_ALL: &str = "674d401eed816848ca44e008";

    fn sps(s: &str) -> SpsInfo {
        parse_sps(&hex(s)).unwrap()
    }

    fn assert_fps(info: &SpsInfo, expected: f64) {
        let fps = info.fps.unwrap();
        assert!((fps - expected).abs() < 1e-9, "fps {fps} != {expected}");
    }

    #[test]
    fn baseline_720p_from_brief() {
        let info = sps(BASELINE_720P);
        assert_eq!(info.profile_idc, 66);
        assert_eq!(info.constraint_flags, 0xc0);
        assert_eq!(info.level_idc, 31);
        assert_eq!((info.width, info.height), (1280, 720));
        assert_eq!(info.chroma_format_idc, 1);
        assert_eq!((info.bit_depth_luma, info.bit_depth_chroma), (8, 8));
        // VUI: num_units_in_tick = 1, time_scale = 48 -> 24 fps (not 25).
        assert_fps(&info, 24.0);
    }

    #[test]
    fn high_1080p_crops_1088_to_1080() {
        let info = sps(HIGH_1080P);
        assert_eq!((info.profile_idc, info.level_idc), (100, 40));
        assert_eq!((info.width, info.height), (1920, 1080));
        assert_fps(&info, 30.0);
    }

    #[test]
    fn high_small_and_odd_sizes() {
        let info = sps(HIGH_360P);
        assert_eq!((info.width, info.height, info.level_idc), (640, 360, 30));
        assert_fps(&info, 25.0);
        let info = sps(HIGH_480P_NTSC);
        assert_eq!((info.width, info.height), (854, 480));
        assert_fps(&info, 30000.0 / 1001.0);
        let info = sps(BASELINE_240P);
        assert_eq!((info.profile_idc, info.width, info.height), (66, 320, 240));
        assert_fps(&info, 15.0);
    }

    #[test]
    fn high444_and_high422_chroma_and_depth() {
        let info = sps(HIGH444_854X480);
        assert_eq!((info.profile_idc, info.chroma_format_idc), (244, 3));
        assert_eq!((info.width, info.height), (854, 480));
        let info = sps(HIGH444_10BIT_720P);
        assert_eq!((info.bit_depth_luma, info.bit_depth_chroma), (10, 10));
        assert_eq!((info.width, info.height), (1280, 720));
        assert_fps(&info, 50.0);
        let info = sps(HIGH422_10BIT_1080P);
        assert_eq!((info.profile_idc, info.chroma_format_idc), (122, 2));
        assert_eq!((info.bit_depth_luma, info.bit_depth_chroma), (10, 10));
        assert_eq!((info.width, info.height), (1920, 1080));
        assert_fps(&info, 60.0);
    }

    #[test]
    fn interlaced_and_monochrome() {
        let info = sps(HIGH_INTERLACED_1080);
        assert_eq!((info.width, info.height), (1920, 1080));
        assert_fps(&info, 25.0);
        let info = sps(HIGH_GRAY_480);
        assert_eq!(info.chroma_format_idc, 0);
        assert_eq!((info.width, info.height), (640, 480));
        assert_fps(&info, 30.0);
    }

    #[test]
    fn vui_variants() {
        let info = sps(MAIN_576_FULL_VUI);
        assert_eq!((info.profile_idc, info.width, info.height), (77, 720, 576));
        assert_fps(&info, 25.0);
        let info = sps(MAIN_480_EXT_SAR);
        assert_eq!((info.width, info.height), (720, 480));
        assert_fps(&info, 30.0);
    }

    #[test]
    fn hand_built_scaling_lists_poc1_hrd() {
        let info = sps(HAND_SCALING_POC1);
        assert_eq!((info.width, info.height), (1280, 720));
        assert_fps(&info, 48000.0 / 2002.0);
    }

    #[test]
    fn hand_built_separate_colour_planes() {
        let info = sps(HAND_444_SEPARATE);
        assert_eq!((info.profile_idc, info.chroma_format_idc), (244, 3));
        assert_eq!((info.bit_depth_luma, info.bit_depth_chroma), (10, 12));
        assert_eq!((info.width, info.height), (1920, 1080));
        assert_eq!(info.fps, None);
    }

    #[test]
    fn hand_built_field_crop_units() {
        // 720 - (4+3)*2 = 706; 18 map units * 2 * 16 = 576 - (1+2)*4 = 564.
        let info = sps(HAND_MAIN_CROP_ALL);
        assert_eq!((info.width, info.height), (706, 564));
        assert_eq!(info.fps, None);
    }

    #[test]
    fn emulation_prevention_removed() {
        assert_eq!(
            remove_emulation_prevention(&[0, 0, 3, 0, 0, 0, 3, 1, 0, 3]),
            vec![0, 0, 0, 0, 0, 1, 0, 3]
        );
        // Without removal, the 00 00 03 in the baseline SPS would shift the
        // timing fields; with it we must read exactly 24 fps.
        assert_fps(&sps(BASELINE_720P), 24.0);
    }

    #[test]
    fn trailing_zero_bytes_after_stop_bit_are_accepted() {
        let mut nal = hex(HIGH_1080P);
        nal.extend_from_slice(&[0, 0]);
        assert_eq!(parse_sps(&nal).unwrap().height, 1080);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for s in [
            BASELINE_720P,
            HIGH_1080P,
            HIGH444_10BIT_720P,
            HIGH422_10BIT_1080P,
            MAIN_576_FULL_VUI,
            HAND_SCALING_POC1,
            HAND_444_SEPARATE,
            HAND_MAIN_CROP_ALL,
        ] {
            let nal = hex(s);
            for len in 0..nal.len() {
                assert!(parse_sps(&nal[..len]).is_err(), "{s} len {len}");
            }
        }
    }

    #[test]
    fn rejects_wrong_nal_type_and_bad_values() {
        assert!(matches!(
            parse_sps(&hex("68ebe3cb22c0")),
            Err(H264Error::UnexpectedNalType {
                expected: 7,
                found: 8
            })
        ));
        // ue(v) with 32 leading zeros.
        assert!(parse_sps(&hex("6742c01f 00000000 80")).is_err());
    }

    #[test]
    fn poc_cycle_length_is_capped() {
        // profile 66; bits 1 1 010 0 1 1 = sps_id 0, log2_max_frame_num 0,
        // poc type 1, always_zero 0, se 0, se 0 (0xd3); then cycle = 256 as
        // ue(v): 8 zeros, then 100000001.
        let nal = hex("6742c01f d3 00 80 80 ff ff");
        assert_eq!(
            parse_sps(&nal),
            Err(H264Error::OutOfRange(
                "num_ref_frames_in_pic_order_cnt_cycle"
            ))
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds: Vec<Vec<u8>> = [HIGH_1080P, HAND_SCALING_POC1, BASELINE_720P]
            .iter()
            .map(|s| hex(s))
            .collect();
        for i in 0..10_000u32 {
            let len = (next() % 64) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 2 == 0 {
                // Mutate a real SPS so parsing goes deep.
                buf = seeds[(i as usize / 2) % seeds.len()].clone();
                for _ in 0..(1 + next() % 4) {
                    let pos = (next() as usize) % buf.len();
                    buf[pos] ^= 1 << (next() % 8);
                }
            } else if let Some(b) = buf.first_mut() {
                *b = 0x67;
            }
            let _ = parse_sps(&buf);
            let _ = AvcConfig::parse(Bytes::from(buf.clone()));
            let _ = avcc_nal_units(&buf, (next() % 6) as u8).count();
            let _ = avcc_has_idr(&buf, 4);
        }
    }

    fn avcc_record(sps_list: &[&[u8]], pps_list: &[&[u8]], ext: &[u8]) -> Vec<u8> {
        let mut v = vec![1, 0x64, 0x00, 0x28, 0xff, 0xe0 | sps_list.len() as u8];
        for s in sps_list {
            v.extend_from_slice(&(s.len() as u16).to_be_bytes());
            v.extend_from_slice(s);
        }
        v.push(pps_list.len() as u8);
        for p in pps_list {
            v.extend_from_slice(&(p.len() as u16).to_be_bytes());
            v.extend_from_slice(p);
        }
        v.extend_from_slice(ext);
        v
    }

    #[test]
    fn avcc_parses_with_and_without_extension() {
        let sps_nal = hex(HIGH_1080P);
        let pps_nal = hex("68ebe3cb22c0");
        for ext in [&[][..], &[0xfd, 0xf8, 0xf8, 0x00][..], &[0xfd][..]] {
            let raw = Bytes::from(avcc_record(&[&sps_nal], &[&pps_nal], ext));
            let cfg = AvcConfig::parse(raw.clone()).unwrap();
            assert_eq!(cfg.nal_length_size, 4);
            assert_eq!(cfg.sps, vec![Bytes::from(sps_nal.clone())]);
            assert_eq!(cfg.pps, vec![Bytes::from(pps_nal.clone())]);
            assert_eq!((cfg.info.width, cfg.info.height), (1920, 1080));
            assert_eq!(cfg.raw, raw);
            assert_eq!(cfg.codec_string(), "avc1.640028");
        }
    }

    #[test]
    fn avcc_codec_strings() {
        let pps_nal = hex("68cb83cb20");
        let mut rec = avcc_record(&[&hex(BASELINE_720P)], &[&pps_nal], &[]);
        rec[1..4].copy_from_slice(&[0x42, 0xc0, 0x1f]);
        let cfg = AvcConfig::parse(Bytes::from(rec)).unwrap();
        assert_eq!(cfg.codec_string(), "avc1.42c01f");
        let mut rec = avcc_record(&[&hex(HIGH_480P_NTSC)], &[&pps_nal], &[]);
        rec[1..4].copy_from_slice(&[0x64, 0x00, 0x1f]);
        let cfg = AvcConfig::parse(Bytes::from(rec)).unwrap();
        assert_eq!(cfg.codec_string(), "avc1.64001f");
    }

    /// The libx264 720p `avcC` record used as a fixture elsewhere in the
    /// server.
    #[test]
    fn libx264_baseline_avcc_record() {
        let rec = hex(
            "01 42 c0 1f ff e1 00 17 67 42 c0 1f da 01 40 16 ec 04 40 00 00 03 00 40
                       00 00 0c 23 c6 0c a8 01 00 04 68 ce 0f c8",
        );
        let cfg = AvcConfig::parse(Bytes::from(rec)).unwrap();
        assert_eq!(cfg.codec_string(), "avc1.42c01f");
        assert_eq!(cfg.nal_length_size, 4);
        assert_eq!((cfg.sps.len(), cfg.pps.len()), (1, 1));
        assert_eq!(&cfg.pps[0][..], &[0x68, 0xce, 0x0f, 0xc8]);
        assert_eq!((cfg.info.width, cfg.info.height), (1280, 720));
        assert_fps(&cfg.info, 24.0);
    }

    #[test]
    fn avcc_errors() {
        let sps_nal = hex(HIGH_1080P);
        let pps_nal = hex("68ebe3cb22c0");
        let no_sps = avcc_record(&[], &[&pps_nal], &[]);
        assert_eq!(AvcConfig::parse(Bytes::from(no_sps)), Err(H264Error::NoSps));
        let no_pps = avcc_record(&[&sps_nal], &[], &[]);
        assert_eq!(AvcConfig::parse(Bytes::from(no_pps)), Err(H264Error::NoPps));
        let mut bad_version = avcc_record(&[&sps_nal], &[&pps_nal], &[]);
        bad_version[0] = 2;
        assert_eq!(
            AvcConfig::parse(Bytes::from(bad_version)),
            Err(H264Error::UnsupportedVersion(2))
        );
        let swapped = avcc_record(&[&pps_nal], &[&sps_nal], &[]);
        assert!(AvcConfig::parse(Bytes::from(swapped)).is_err());
        let full = avcc_record(&[&sps_nal], &[&pps_nal], &[]);
        for len in 0..full.len() {
            assert!(AvcConfig::parse(Bytes::copy_from_slice(&full[..len])).is_err());
        }
    }

    #[test]
    fn avcc_nal_iteration_and_idr() {
        let au = [
            0, 0, 0, 2, 0x09, 0xf0, // AUD
            0, 0, 0, 0, // zero-length unit (skipped)
            0, 0, 0, 3, 0x65, 0x88, 0x84, // IDR slice
        ];
        let nals: Vec<&[u8]> = avcc_nal_units(&au, 4).map(Result::unwrap).collect();
        assert_eq!(nals, vec![&[0x09, 0xf0][..], &[0x65, 0x88, 0x84][..]]);
        assert!(avcc_has_idr(&au, 4));
        let non_idr = [0, 2, 0x41, 0x9a, 0, 1, 0x06];
        assert!(!avcc_has_idr(&non_idr, 2));
        assert_eq!(avcc_nal_units(&non_idr, 2).count(), 2);
        let one_byte = [3, 0x65, 1, 2];
        assert!(avcc_has_idr(&one_byte, 1));
    }

    #[test]
    fn avcc_nal_iteration_errors() {
        let truncated = [0, 0, 0, 9, 0x65, 0x88];
        let items: Vec<_> = avcc_nal_units(&truncated, 4).collect();
        assert_eq!(items, vec![Err(H264Error::Truncated("NAL unit"))]);
        assert!(!avcc_has_idr(&truncated, 4));
        let short_prefix = [0, 0, 0, 2, 0x65, 0x00, 0, 0];
        let items: Vec<_> = avcc_nal_units(&short_prefix, 4).collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1], Err(H264Error::Truncated("NAL length prefix")));
        assert_eq!(
            avcc_nal_units(&[1, 2], 0).collect::<Vec<_>>(),
            vec![Err(H264Error::InvalidNalLengthSize(0))]
        );
        assert_eq!(avcc_nal_units(&[], 4).count(), 0);
    }
}
