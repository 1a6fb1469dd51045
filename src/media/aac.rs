//! MPEG-4 AudioSpecificConfig (AAC) parsing.
//!
//! This module owns decoding of the `AudioSpecificConfig` (ISO/IEC 14496-3
//! §1.6.2.1) that arrives in FLV AAC sequence headers and MP4 `esds` boxes into
//! an [`AacConfig`]: audio object type (with the escape for types >= 32),
//! core sampling rate (table index or explicit 24-bit value), channel count
//! (from the channel configuration or, for configuration 0, from the embedded
//! program config element), frame length, and the SBR extension rate for
//! HE-AAC, both explicitly (object type 5/29 prefix) and backward-compatibly
//! (0x2b7 sync extension) signalled. It is sans-IO and never panics on
//! malformed input. The RTMP ingest path calls it when an audio sequence
//! header arrives; the fMP4/LL-HLS packager uses the result for the `mp4a`
//! sample entry, the track timescale and the RFC 6381 codec string.

use bytes::Bytes;
use thiserror::Error;

use super::bits::{BitReader, BitsError};

/// Sampling rates addressed by `samplingFrequencyIndex` 0..=12.
const SAMPLE_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];
/// `samplingFrequencyIndex` announcing an explicit 24-bit rate.
const EXPLICIT_RATE_INDEX: u32 = 15;
/// `audioObjectType` escape value: the real type is 32 + next 6 bits.
const OBJECT_TYPE_ESCAPE: u32 = 31;
/// Object type SBR (HE-AAC v1).
const OBJECT_TYPE_SBR: u8 = 5;
/// Object type PS (HE-AAC v2).
const OBJECT_TYPE_PS: u8 = 29;
/// Object type ER BSAC, which carries an extra extension channel config.
const OBJECT_TYPE_ER_BSAC: u8 = 22;
/// Object type ER AAC LD, which uses 512/480-sample frames.
const OBJECT_TYPE_ER_AAC_LD: u8 = 23;
/// Sync word introducing a backward-compatible SBR extension.
const SYNC_EXTENSION_SBR: u32 = 0x2b7;
/// Default number of samples per AAC frame.
const FRAME_LENGTH_DEFAULT: u32 = 1024;
/// Samples per frame when `frameLengthFlag` is set.
const FRAME_LENGTH_SHORT: u32 = 960;

/// Errors produced while parsing an AudioSpecificConfig.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AacError {
    /// The input ended before the structure was complete.
    #[error("truncated AudioSpecificConfig while reading {0}")]
    Truncated(&'static str),
    /// `audioObjectType` 0 (null object) is not a codec.
    #[error("invalid audio object type {0}")]
    InvalidObjectType(u8),
    /// A reserved sampling frequency index (13 or 14) was used.
    #[error("reserved sampling frequency index {0}")]
    ReservedSampleRateIndex(u8),
    /// An explicit sampling rate of zero was signalled.
    #[error("explicit sampling rate is zero")]
    ZeroSampleRate,
    /// The channel configuration is reserved or unsupported.
    #[error("unsupported channel configuration {0}")]
    UnsupportedChannelConfig(u8),
}

/// Decoded AudioSpecificConfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AacConfig {
    /// First `audioObjectType` in the config (2 = AAC-LC, 5 = HE-AAC with
    /// explicit SBR, 29 = HE-AAC v2, ...). This is what RFC 6381 signals.
    pub object_type: u8,
    /// Core (AAC) sampling rate in Hz; for HE-AAC this is the rate before SBR
    /// doubling, and the rate at which [`AacConfig::frame_length`] applies.
    pub sample_rate: u32,
    /// Channel count. For channel configuration 0 it is taken from the
    /// program config element (0 if none could be read). For HE-AAC v2 (PS)
    /// this is the core's count (usually 1) even though output is stereo.
    pub channels: u8,
    /// Samples per AAC frame at the core rate: 1024, or 960 when
    /// `frameLengthFlag` is set (512/480 for ER AAC LD). SBR never changes it.
    pub frame_length: u32,
    /// Output rate of the SBR extension when SBR is explicitly signalled
    /// (object type 5/29 prefix or a 0x2b7 sync extension); `None` otherwise.
    pub extension_sample_rate: Option<u32>,
    /// The AudioSpecificConfig as received, for the `esds` box.
    pub raw: Bytes,
}

impl AacConfig {
    /// Parses an AudioSpecificConfig.
    ///
    /// A malformed optional backward-compatible SBR extension after the core
    /// config is ignored rather than reported.
    pub fn parse(asc: Bytes) -> Result<Self, AacError> {
        let mut r = BitReader::new(&asc);
        let object_type = read_object_type(&mut r)?;
        let sample_rate = read_sample_rate(&mut r)?;
        let channel_config = r.u8_bits(4, "channelConfiguration")?;
        let mut core_type = object_type;
        let mut extension_sample_rate = None;
        if object_type == OBJECT_TYPE_SBR || object_type == OBJECT_TYPE_PS {
            extension_sample_rate = Some(read_sample_rate(&mut r)?);
            core_type = read_object_type(&mut r)?;
            if core_type == OBJECT_TYPE_ER_BSAC {
                r.bits(4, "extensionChannelConfiguration")?;
            }
        }
        let ga = if has_ga_specific_config(core_type) {
            read_ga_specific_config(&mut r, channel_config, core_type)?
        } else {
            GaInfo {
                frame_length: FRAME_LENGTH_DEFAULT,
                pce_channels: None,
            }
        };
        let channels = match channel_config {
            0 => ga.pce_channels.unwrap_or(0),
            n => channels_for_config(n)?,
        };
        if extension_sample_rate.is_none() {
            extension_sample_rate = read_sbr_sync_extension(&mut r).unwrap_or(None);
        }
        Ok(Self {
            object_type,
            sample_rate,
            channels,
            frame_length: ga.frame_length,
            extension_sample_rate,
            raw: asc,
        })
    }

    /// RFC 6381 codec string: `mp4a.40.{object_type}` (decimal).
    pub fn codec_string(&self) -> String {
        format!("mp4a.40.{}", self.object_type)
    }
}

/// Reads `audioObjectType`, including the escape to 32 + 6 bits.
fn read_object_type(r: &mut BitReader<'_>) -> Result<u8, AacError> {
    let mut value = r.bits(5, "audioObjectType")?;
    if value == OBJECT_TYPE_ESCAPE {
        value = 32 + r.bits(6, "audioObjectTypeExt")?;
    }
    match u8::try_from(value) {
        Ok(0) | Err(_) => Err(AacError::InvalidObjectType(0)),
        Ok(v) => Ok(v),
    }
}

/// Reads `samplingFrequencyIndex` and, for index 15, the explicit rate.
fn read_sample_rate(r: &mut BitReader<'_>) -> Result<u32, AacError> {
    let index = r.bits(4, "samplingFrequencyIndex")?;
    if index == EXPLICIT_RATE_INDEX {
        return match r.bits(24, "samplingFrequency")? {
            0 => Err(AacError::ZeroSampleRate),
            rate => Ok(rate),
        };
    }
    usize::try_from(index)
        .ok()
        .and_then(|i| SAMPLE_RATES.get(i))
        .copied()
        .ok_or(AacError::ReservedSampleRateIndex(index as u8))
}

/// Channel count for a non-zero `channelConfiguration` (ISO/IEC 14496-3 and
/// 23001-8 channel configurations).
fn channels_for_config(config: u8) -> Result<u8, AacError> {
    match config {
        1..=6 => Ok(config),
        7 | 12 | 14 => Ok(8),
        11 => Ok(7),
        13 => Ok(24),
        _ => Err(AacError::UnsupportedChannelConfig(config)),
    }
}

/// Whether the object type carries a `GASpecificConfig`.
fn has_ga_specific_config(object_type: u8) -> bool {
    matches!(object_type, 1..=4 | 6 | 7 | 17 | 19..=23)
}

/// What the server needs from `GASpecificConfig`.
struct GaInfo {
    /// Samples per frame.
    frame_length: u32,
    /// Channel count from the program config element, if one was present.
    pce_channels: Option<u8>,
}

/// Reads `GASpecificConfig` (ISO/IEC 14496-3 §4.4.1).
fn read_ga_specific_config(
    r: &mut BitReader<'_>,
    channel_config: u8,
    object_type: u8,
) -> Result<GaInfo, AacError> {
    let short_frames = r.flag("frameLengthFlag")?;
    let frame_length = match (object_type == OBJECT_TYPE_ER_AAC_LD, short_frames) {
        (true, false) => 512,
        (true, true) => 480,
        (false, false) => FRAME_LENGTH_DEFAULT,
        (false, true) => FRAME_LENGTH_SHORT,
    };
    if r.flag("dependsOnCoreCoder")? {
        r.bits(14, "coreCoderDelay")?;
    }
    let extension_flag = r.flag("extensionFlag")?;
    let pce_channels = if channel_config == 0 {
        Some(read_program_config_element(r)?)
    } else {
        None
    };
    if object_type == 6 || object_type == 20 {
        r.bits(3, "layerNr")?;
    }
    if extension_flag {
        skip_ga_extension(r, object_type)?;
    }
    Ok(GaInfo {
        frame_length,
        pce_channels,
    })
}

/// Skips the `extensionFlag` part of `GASpecificConfig`.
fn skip_ga_extension(r: &mut BitReader<'_>, object_type: u8) -> Result<(), AacError> {
    if object_type == OBJECT_TYPE_ER_BSAC {
        r.bits(5, "numOfSubFrame")?;
        r.bits(11, "layer_length")?;
    }
    if matches!(object_type, 17 | 19 | 20 | 23) {
        r.bits(3, "resilience flags")?;
    }
    r.bit("extensionFlag3")?;
    Ok(())
}

/// Reads a `program_config_element()` and returns its channel count
/// (front/side/back elements count 2 if CPE else 1, plus one per LFE).
fn read_program_config_element(r: &mut BitReader<'_>) -> Result<u8, AacError> {
    r.bits(4, "element_instance_tag")?;
    r.bits(2, "object_type")?;
    r.bits(4, "sampling_frequency_index")?;
    let front = r.bits(4, "num_front_channel_elements")?;
    let side = r.bits(4, "num_side_channel_elements")?;
    let back = r.bits(4, "num_back_channel_elements")?;
    let lfe = r.bits(2, "num_lfe_channel_elements")?;
    let assoc = r.bits(3, "num_assoc_data_elements")?;
    let cc = r.bits(4, "num_valid_cc_elements")?;
    for (present, len) in [(r.flag("mono_mixdown")?, 4), (r.flag("stereo_mixdown")?, 4)] {
        if present {
            r.bits(len, "mixdown_element_number")?;
        }
    }
    if r.flag("matrix_mixdown_idx_present")? {
        r.bits(3, "matrix_mixdown")?;
    }
    let mut channels: u32 = 0;
    for _ in 0..front.saturating_add(side).saturating_add(back) {
        let is_cpe = r.bit("is_cpe")?;
        r.bits(4, "element_tag_select")?;
        channels = channels.saturating_add(1 + is_cpe);
    }
    channels = channels.saturating_add(lfe);
    skip_repeated(r, lfe, 4, "lfe_element_tag_select")?;
    skip_repeated(r, assoc, 4, "assoc_data_element_tag_select")?;
    skip_repeated(r, cc, 5, "cc_element")?;
    r.byte_align();
    let comment_bytes = r.bits(8, "comment_field_bytes")?;
    skip_repeated(r, comment_bytes, 8, "comment_field_data")?;
    u8::try_from(channels).map_err(|_| AacError::UnsupportedChannelConfig(0))
}

/// Skips `count` fields of `len` bits each.
fn skip_repeated(
    r: &mut BitReader<'_>,
    count: u32,
    len: u32,
    what: &'static str,
) -> Result<(), AacError> {
    for _ in 0..count {
        r.bits(len, what)?;
    }
    Ok(())
}

/// Reads a backward-compatible SBR sync extension (0x2b7) if at least 16
/// bits remain; returns the extension sampling rate when SBR is present.
fn read_sbr_sync_extension(r: &mut BitReader<'_>) -> Result<Option<u32>, AacError> {
    if r.remaining() < 16 || r.bits(11, "syncExtensionType")? != SYNC_EXTENSION_SBR {
        return Ok(None);
    }
    if read_object_type(r)? != OBJECT_TYPE_SBR || !r.flag("sbrPresentFlag")? {
        return Ok(None);
    }
    Ok(Some(read_sample_rate(r)?))
}

impl From<BitsError> for AacError {
    fn from(e: BitsError) -> Self {
        match e {
            BitsError::Truncated(what) => AacError::Truncated(what),
            BitsError::OutOfRange(what) => AacError::Truncated(what),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<AacConfig, AacError> {
        AacConfig::parse(Bytes::copy_from_slice(bytes))
    }

    /// Minimal MSB-first bit writer for building configs in tests.
    #[derive(Default)]
    struct BitWriter {
        bits: Vec<u8>,
    }

    impl BitWriter {
        fn put(&mut self, n: u32, v: u32) -> &mut Self {
            for i in (0..n).rev() {
                self.bits.push(((v >> i) & 1) as u8);
            }
            self
        }
        fn bytes(&self) -> Vec<u8> {
            self.bits
                .chunks(8)
                .map(|c| {
                    c.iter()
                        .enumerate()
                        .fold(0u8, |acc, (i, b)| acc | (b << (7 - i)))
                })
                .collect()
        }
    }

    #[test]
    fn aac_lc_common_configs() {
        let c = parse(&[0x12, 0x10]).unwrap();
        assert_eq!((c.object_type, c.sample_rate, c.channels), (2, 44100, 2));
        assert_eq!((c.frame_length, c.extension_sample_rate), (1024, None));
        assert_eq!(c.codec_string(), "mp4a.40.2");
        let c = parse(&[0x11, 0x90]).unwrap();
        assert_eq!((c.object_type, c.sample_rate, c.channels), (2, 48000, 2));
        // 13 88: AAC-LC, index 7 = 22050 Hz, mono.
        let c = parse(&[0x13, 0x88]).unwrap();
        assert_eq!((c.object_type, c.sample_rate, c.channels), (2, 22050, 1));
        // 12 08: AAC-LC, 44100 Hz, mono. 11 b0: 48000 Hz, 6 channels (5.1).
        assert_eq!(parse(&[0x12, 0x08]).unwrap().channels, 1);
        assert_eq!(parse(&[0x11, 0xb0]).unwrap().channels, 6);
        // 11 f8: channel config 15 is reserved.
        assert_eq!(
            parse(&[0x11, 0xf8]),
            Err(AacError::UnsupportedChannelConfig(15))
        );
    }

    #[test]
    fn frame_length_flag_gives_960() {
        // 00010 0011 0010 1 0 0 -> 11 94.
        let c = parse(&[0x11, 0x94]).unwrap();
        assert_eq!((c.sample_rate, c.channels, c.frame_length), (48000, 2, 960));
    }

    #[test]
    fn he_aac_explicit_sbr() {
        // 2b 92 08 00: SBR(5), 22050 core, stereo, ext 44100, core AAC-LC.
        let c = parse(&[0x2b, 0x92, 0x08, 0x00]).unwrap();
        assert_eq!((c.object_type, c.sample_rate, c.channels), (5, 22050, 2));
        assert_eq!(c.extension_sample_rate, Some(44100));
        assert_eq!(c.frame_length, 1024);
        assert_eq!(c.codec_string(), "mp4a.40.5");
    }

    #[test]
    fn he_aac_v2_explicit_ps() {
        // eb 09 88 00: PS(29), 24000 core, mono core, ext 48000, AAC-LC core.
        let c = parse(&[0xeb, 0x09, 0x88, 0x00]).unwrap();
        assert_eq!((c.object_type, c.sample_rate, c.channels), (29, 24000, 1));
        assert_eq!(c.extension_sample_rate, Some(48000));
        assert_eq!(c.codec_string(), "mp4a.40.29");
    }

    #[test]
    fn he_aac_backward_compatible_sync_extension() {
        // 13 10 56 e5 98: AAC-LC 24000 stereo + 0x2b7, SBR present, 48000.
        let c = parse(&[0x13, 0x10, 0x56, 0xe5, 0x98]).unwrap();
        assert_eq!((c.object_type, c.sample_rate, c.channels), (2, 24000, 2));
        assert_eq!(c.extension_sample_rate, Some(48000));
        // A corrupt optional tail is ignored.
        let c = parse(&[0x13, 0x10, 0x56, 0xe5]).unwrap();
        assert_eq!(c.extension_sample_rate, None);
    }

    #[test]
    fn object_type_escape() {
        // 11111 001010 (32+10 = 42, USAC) 0011 (48000) 0010 (stereo).
        let bytes = BitWriter::default()
            .put(5, 31)
            .put(6, 10)
            .put(4, 3)
            .put(4, 2)
            .bytes();
        let c = parse(&bytes).unwrap();
        assert_eq!((c.object_type, c.sample_rate, c.channels), (42, 48000, 2));
        assert_eq!(c.codec_string(), "mp4a.40.42");
    }

    #[test]
    fn explicit_sampling_rate() {
        let bytes = BitWriter::default()
            .put(5, 2)
            .put(4, 15)
            .put(24, 44056)
            .put(4, 2)
            .put(3, 0)
            .bytes();
        let c = parse(&bytes).unwrap();
        assert_eq!((c.sample_rate, c.channels), (44056, 2));
        let zero = BitWriter::default()
            .put(5, 2)
            .put(4, 15)
            .put(24, 0)
            .put(4, 2)
            .put(3, 0)
            .bytes();
        assert_eq!(parse(&zero), Err(AacError::ZeroSampleRate));
        assert_eq!(
            parse(&[0x16, 0x90]),
            Err(AacError::ReservedSampleRateIndex(13))
        );
    }

    #[test]
    fn channel_config_zero_reads_pce() {
        let mut w = BitWriter::default();
        w.put(5, 2).put(4, 3).put(4, 0).put(3, 0); // LC 48k, PCE follows
        w.put(4, 0).put(2, 1).put(4, 3); // tag, profile, sf index
        w.put(4, 2).put(4, 0).put(4, 1).put(2, 1); // front 2, side 0, back 1, lfe 1
        w.put(3, 0).put(4, 0).put(1, 0).put(1, 0).put(1, 0);
        w.put(1, 0).put(4, 0); // front SCE
        w.put(1, 1).put(4, 0); // front CPE
        w.put(1, 1).put(4, 1); // back CPE
        w.put(4, 0); // LFE
        while w.bits.len() % 8 != 0 {
            w.put(1, 0);
        }
        w.put(8, 2).put(8, b'h'.into()).put(8, b'i'.into()); // comment
        let bytes = w.bytes();
        let c = parse(&bytes).unwrap();
        assert_eq!((c.sample_rate, c.channels), (48000, 6));
        for len in 0..bytes.len() {
            assert!(parse(&bytes[..len]).is_err(), "len {len}");
        }
    }

    /// Real ASCs from ffmpeg's native AAC encoder (Lavc59.37.100): layouts
    /// without a standard channel configuration use a PCE (with the encoder
    /// name as comment), and every ASC ends with a 0x2b7 sync extension that
    /// signals "no SBR".
    #[test]
    fn ffmpeg_encoder_configs() {
        const HEXAGONAL: &[u8] =
            b"\x11\x80\x04\xc8\x08\x00\x20\x08\x84\x0dLavc59.37.100\x56\xe5\x00";
        const WIDE_7_1: &[u8] =
            b"\x11\x80\x04\xc8\x48\x00\x20\x00\xc6\x40\x0dLavc59.37.100\x56\xe5\x00";
        let c = parse(HEXAGONAL).unwrap();
        assert_eq!(
            (c.sample_rate, c.channels, c.extension_sample_rate),
            (48000, 6, None)
        );
        let c = parse(WIDE_7_1).unwrap();
        assert_eq!(
            (c.sample_rate, c.channels, c.extension_sample_rate),
            (48000, 8, None)
        );
        let c = parse(&[0x11, 0xb0, 0x56, 0xe5, 0x00]).unwrap();
        assert_eq!((c.channels, c.extension_sample_rate), (6, None));
        let c = parse(&[0x11, 0x90, 0x56, 0xe5, 0x00]).unwrap();
        assert_eq!((c.channels, c.extension_sample_rate), (2, None));
    }

    #[test]
    fn invalid_object_type() {
        assert_eq!(parse(&[0x00, 0x10]), Err(AacError::InvalidObjectType(0)));
    }

    #[test]
    fn truncated_inputs_are_errors() {
        for cfg in [
            &[0x12, 0x10][..],
            &[0x11, 0x90][..],
            &[0x2b, 0x92, 0x08, 0x00][..],
            &[0xeb, 0x09, 0x88, 0x00][..],
        ] {
            for len in 0..cfg.len() {
                assert!(parse(&cfg[..len]).is_err(), "{cfg:02x?} len {len}");
            }
        }
    }

    #[test]
    fn raw_is_kept() {
        let raw = Bytes::from_static(&[0x12, 0x10]);
        assert_eq!(AacConfig::parse(raw.clone()).unwrap().raw, raw);
    }

    #[test]
    fn garbage_never_panics() {
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..10_000 {
            let len = (next() % 12) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = parse(&bytes);
        }
    }
}
