//! AV1 decoder configuration: the `AV1CodecConfigurationRecord` (`av1C`) that Enhanced RTMP
//! carries in an `av01` SequenceStart and MP4 in its `av1C` box, and the sequence header OBU
//! that gives the maximum picture size.
//!
//! Sans-IO, never panics on malformed input. The record's fixed fields are decoded with
//! `mp4-atom`'s `Av1c` (the type the fMP4 muxer writes back); OBUs are walked here.

use bytes::Bytes;
use mp4_atom::Atom;
use thiserror::Error;

use super::bits::{BitReader, BitsError};

/// OBU type of a sequence header.
const OBU_SEQUENCE_HEADER: u8 = 1;

/// Errors produced while parsing AV1 structures.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Av1Error {
    /// The `av1C` record is malformed or truncated.
    #[error("av1C: {0}")]
    Record(String),
    /// The sequence header OBU is malformed.
    #[error("AV1 sequence header: {0}")]
    SequenceHeader(#[from] BitsError),
}

/// A parsed `av1C` record.
#[derive(Debug, Clone, PartialEq)]
pub struct Av1Config {
    /// `seq_profile` (0 Main, 1 High, 2 Professional).
    pub profile: u8,
    /// `seq_level_idx_0` (e.g. 8 for level 4.0).
    pub level_idx: u8,
    /// `seq_tier_0`: high tier.
    pub high_tier: bool,
    /// 8, 10 or 12.
    pub bit_depth: u8,
    /// Maximum picture width from the sequence header OBU (0 when the record has none).
    pub width: u32,
    /// Maximum picture height from the sequence header OBU (0 when the record has none).
    pub height: u32,
    /// Frame rate from the sequence header's timing info, when present.
    pub fps: Option<f64>,
    /// The record as received.
    pub raw: Bytes,
}

impl Av1Config {
    /// Parses an `av1C` record (marker/version byte `0x81` first).
    pub fn parse(raw: Bytes) -> Result<Self, Av1Error> {
        let record = mp4_atom::Av1c::decode_body(&mut &raw[..])
            .map_err(|e| Av1Error::Record(e.to_string()))?;
        let bit_depth = match (record.high_bitdepth, record.twelve_bit) {
            (false, _) => 8,
            (true, false) => 10,
            (true, true) => 12,
        };
        // configOBUs may be empty; when present they must be whole OBUs.
        let header = match walk_obus(&record.config_obus) {
            Ok(Some(obu)) => Some(parse_sequence_header(obu)?),
            Ok(None) => None,
            Err(()) => return Err(Av1Error::Record("configOBUs are not whole OBUs".into())),
        };
        Ok(Av1Config {
            profile: record.seq_profile,
            level_idx: record.seq_level_idx_0,
            high_tier: record.seq_tier_0,
            bit_depth,
            width: header.map_or(0, |h| h.width),
            height: header.map_or(0, |h| h.height),
            fps: header.and_then(|h| h.fps),
            raw,
        })
    }

    /// RFC 6381 codec string per the AV1 ISOBMFF binding, e.g. `av01.0.08M.08`.
    pub fn codec_string(&self) -> String {
        format!(
            "av01.{}.{:02}{}.{:02}",
            self.profile,
            self.level_idx,
            if self.high_tier { 'H' } else { 'M' },
            self.bit_depth
        )
    }

    /// The profile's name.
    pub fn profile_name(&self) -> &'static str {
        match self.profile {
            0 => "Main",
            1 => "High",
            2 => "Professional",
            _ => "other",
        }
    }

    /// The record's configOBUs (the sequence header, when the encoder put it there).
    pub fn config_obus(&self) -> &[u8] {
        self.raw.get(4..).unwrap_or_default()
    }

    /// Fills in the picture size from a keyframe's sequence header when the record had none.
    pub fn learn_size(&mut self, sample: &[u8]) {
        if self.width != 0 {
            return;
        }
        if let Some(Ok(h)) = find_sequence_header(sample).map(parse_sequence_header) {
            self.width = h.width;
            self.height = h.height;
            self.fps = self.fps.or(h.fps);
        }
    }
}

/// What the server takes from a sequence header OBU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SequenceHeader {
    /// `max_frame_width_minus_1 + 1`.
    pub width: u32,
    /// `max_frame_height_minus_1 + 1`.
    pub height: u32,
    /// `time_scale / num_units_in_display_tick` when timing info is present.
    pub fps: Option<f64>,
}

/// Walks low-overhead OBUs (each with `obu_has_size_field`) and returns the payload of the
/// first sequence header; `None` if there is none or the OBUs are malformed.
pub fn find_sequence_header(obus: &[u8]) -> Option<&[u8]> {
    walk_obus(obus).ok().flatten()
}

/// The first sequence header's payload, `Ok(None)` when the OBUs hold none, `Err` when they
/// are cut or malformed before one was found.
fn walk_obus(mut obus: &[u8]) -> Result<Option<&[u8]>, ()> {
    while let Some((&header, rest)) = obus.split_first() {
        let obu_type = (header >> 3) & 0x0f;
        let has_extension = header & 0x04 != 0;
        let has_size = header & 0x02 != 0;
        let rest = if has_extension {
            rest.get(1..).ok_or(())?
        } else {
            rest
        };
        let (payload, next) = if has_size {
            let (size, used) = leb128(rest).ok_or(())?;
            let body = rest.get(used..).ok_or(())?;
            let size = usize::try_from(size).map_err(|_| ())?;
            (body.get(..size).ok_or(())?, body.get(size..).ok_or(())?)
        } else {
            (rest, &[][..])
        };
        if obu_type == OBU_SEQUENCE_HEADER {
            return Ok(Some(payload));
        }
        obus = next;
    }
    Ok(None)
}

/// OBU type of a temporal delimiter.
const OBU_TEMPORAL_DELIMITER: u8 = 2;

/// The sample without its temporal delimiter OBUs (shared, not copied, when it has none).
/// Malformed OBUs are left as they are.
pub fn strip_temporal_delimiters(sample: &Bytes) -> Bytes {
    let mut keep: Vec<std::ops::Range<usize>> = Vec::new();
    let mut pos = 0;
    while pos < sample.len() {
        let Some(len) = obu_len(&sample[pos..]) else {
            return sample.clone();
        };
        let obu_type = (sample[pos] >> 3) & 0x0f;
        if obu_type != OBU_TEMPORAL_DELIMITER {
            // Neighbouring OBUs stay one range, so a leading delimiter costs no copy.
            match keep.last_mut() {
                Some(last) if last.end == pos => last.end = pos + len,
                _ => keep.push(pos..pos + len),
            }
        }
        pos += len;
    }
    match keep.as_slice() {
        [only] if only.start == 0 && only.end == sample.len() => sample.clone(),
        [] => Bytes::new(),
        [only] => sample.slice(only.clone()),
        many => {
            let mut out = Vec::with_capacity(sample.len());
            for r in many {
                out.extend_from_slice(&sample[r.clone()]);
            }
            Bytes::from(out)
        }
    }
}

/// The whole length (header included) of the OBU at the start of `data`; `None` when it has
/// no size field or is cut.
fn obu_len(data: &[u8]) -> Option<usize> {
    let header = *data.first()?;
    if header & 0x02 == 0 {
        return None;
    }
    let head = if header & 0x04 != 0 { 2 } else { 1 };
    let (size, used) = leb128(data.get(head..)?)?;
    let total = head
        .checked_add(used)?
        .checked_add(usize::try_from(size).ok()?)?;
    (total <= data.len()).then_some(total)
}

/// Reads an unsigned LEB128 value (at most 8 bytes); returns it and the bytes used.
fn leb128(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in data.iter().take(8).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Parses a sequence header OBU payload (AV1 §5.5.1) up to the maximum frame size.
pub fn parse_sequence_header(payload: &[u8]) -> Result<SequenceHeader, Av1Error> {
    let mut r = BitReader::new(payload);
    r.bits(3, "seq_profile")?;
    r.bit("still_picture")?;
    let reduced = r.flag("reduced_still_picture_header")?;
    let mut fps = None;
    if reduced {
        r.bits(5, "seq_level_idx")?;
    } else {
        let mut decoder_model_info = false;
        let mut buffer_delay_length = 0;
        if r.flag("timing_info_present_flag")? {
            let units = r.bits(32, "num_units_in_display_tick")?;
            let scale = r.bits(32, "time_scale")?;
            if units > 0 && scale > 0 {
                fps = Some(f64::from(scale) / f64::from(units));
            }
            if r.flag("equal_picture_interval")? {
                uvlc(&mut r)?;
            }
            decoder_model_info = r.flag("decoder_model_info_present_flag")?;
            if decoder_model_info {
                buffer_delay_length = r.bits(5, "buffer_delay_length_minus_1")? + 1;
                r.bits(32, "num_units_in_decoding_tick")?;
                r.bits(5, "buffer_removal_time_length_minus_1")?;
                r.bits(5, "frame_presentation_time_length_minus_1")?;
            }
        }
        let initial_display_delay = r.flag("initial_display_delay_present_flag")?;
        let operating_points = r.bits(5, "operating_points_cnt_minus_1")? + 1;
        for _ in 0..operating_points {
            r.bits(12, "operating_point_idc")?;
            let level = r.bits(5, "seq_level_idx")?;
            if level > 7 {
                r.bit("seq_tier")?;
            }
            if decoder_model_info && r.flag("decoder_model_present_for_this_op")? {
                r.bits(buffer_delay_length, "decoder_buffer_delay")?;
                r.bits(buffer_delay_length, "encoder_buffer_delay")?;
                r.bit("low_delay_mode_flag")?;
            }
            if initial_display_delay && r.flag("initial_display_delay_present_for_this_op")? {
                r.bits(4, "initial_display_delay_minus_1")?;
            }
        }
    }
    let width_bits = r.bits(4, "frame_width_bits_minus_1")? + 1;
    let height_bits = r.bits(4, "frame_height_bits_minus_1")? + 1;
    let width = r.bits(width_bits, "max_frame_width_minus_1")? + 1;
    let height = r.bits(height_bits, "max_frame_height_minus_1")? + 1;
    Ok(SequenceHeader { width, height, fps })
}

/// Skips a `uvlc()` value.
fn uvlc(r: &mut BitReader<'_>) -> Result<(), BitsError> {
    let mut zeros = 0;
    while !r.flag("uvlc")? {
        zeros += 1;
        if zeros >= 32 {
            return Ok(());
        }
    }
    r.bits(zeros, "uvlc")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::test_support::AV1C_360P;

    #[test]
    fn parses_an_svt_av1_record() {
        let c = Av1Config::parse(Bytes::from_static(AV1C_360P)).unwrap();
        assert_eq!((c.width, c.height), (640, 360));
        assert_eq!((c.profile, c.level_idx, c.bit_depth), (0, 1, 8));
        assert_eq!(c.codec_string(), "av01.0.01M.08");
        assert_eq!(c.profile_name(), "Main");
    }

    #[test]
    fn learns_the_size_from_a_keyframe_when_the_record_has_none() {
        let mut c = Av1Config::parse(Bytes::from_static(&AV1C_360P[..4])).unwrap();
        assert_eq!(c.width, 0);
        // A temporal delimiter, then the sequence header, as a keyframe carries them.
        let mut key = vec![0x12, 0x00];
        key.extend_from_slice(&AV1C_360P[4..]);
        c.learn_size(&key);
        assert_eq!((c.width, c.height), (640, 360));
    }

    #[test]
    fn temporal_delimiters_are_stripped_without_copying_otherwise() {
        let seq = &AV1C_360P[4..];
        let with_td = Bytes::from([&[0x12, 0x00][..], seq].concat());
        assert_eq!(&strip_temporal_delimiters(&with_td)[..], seq);
        let plain = Bytes::copy_from_slice(seq);
        assert_eq!(strip_temporal_delimiters(&plain).as_ptr(), plain.as_ptr());
        let cut = Bytes::from_static(&[0x12, 0x05, 0x00]);
        assert_eq!(strip_temporal_delimiters(&cut), cut);
    }

    #[test]
    fn truncated_input_is_an_error_or_unknown_size() {
        for n in 0..AV1C_360P.len() {
            // Only the bare record (no configOBUs) parses: a cut OBU is an error.
            match Av1Config::parse(Bytes::copy_from_slice(&AV1C_360P[..n])) {
                Ok(c) => assert!(n == 4 && c.width == 0, "{n} bytes"),
                Err(_) => assert_ne!(n, 4),
            }
        }
        assert_eq!(find_sequence_header(&[0x0a, 0xff]), None);
        assert_eq!(leb128(&[0x80; 9]), None);
    }
}
