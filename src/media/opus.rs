//! Opus (RFC 6716) as WebRTC carries it: 48 kHz RTP clock, one Opus packet per RTP payload.

/// Decoder configuration of an Opus track (what an `OpusHead` / MP4 `dOps` holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusConfig {
    /// Output channels (1 or 2; WebRTC always signals 2).
    pub channels: u8,
    /// The original input rate, informational; Opus always decodes at 48 kHz.
    pub input_sample_rate: u32,
    /// Samples (at 48 kHz) to discard from the decoder output at the start.
    pub pre_skip: u16,
}

impl OpusConfig {
    /// What a WebRTC `opus/48000/2` track is: stereo, 48 kHz, no pre-skip signalled.
    pub fn webrtc() -> Self {
        OpusConfig {
            channels: 2,
            input_sample_rate: 48_000,
            pre_skip: 0,
        }
    }

    /// Parses an `OpusHead` identification header (RFC 7845 §5.1), as Enhanced RTMP carries
    /// it in an `Opus` SequenceStart. Channel mapping families other than 0 (mono/stereo) are
    /// refused: nothing downstream can place more than two channels.
    pub fn parse_head(head: &[u8]) -> Result<Self, OpusError> {
        let body = head
            .strip_prefix(b"OpusHead")
            .ok_or(OpusError("no OpusHead magic"))?;
        let field =
            |range: std::ops::Range<usize>| body.get(range).ok_or(OpusError("truncated OpusHead"));
        let version = field(0..1)?[0];
        if version >> 4 != 0 {
            return Err(OpusError("unsupported OpusHead version"));
        }
        let channels = field(1..2)?[0];
        let pre_skip = u16::from_le_bytes([field(2..3)?[0], field(3..4)?[0]]);
        let rate = field(4..8)?;
        let input_sample_rate = u32::from_le_bytes([rate[0], rate[1], rate[2], rate[3]]);
        let family = field(10..11)?[0];
        if family != 0 || !(1..=2).contains(&channels) {
            return Err(OpusError(
                "only mono and stereo Opus (mapping family 0) is supported",
            ));
        }
        Ok(OpusConfig {
            channels,
            input_sample_rate,
            pre_skip,
        })
    }

    /// The `OpusHead` for this configuration (mapping family 0).
    pub fn head(&self) -> Vec<u8> {
        let mut out = b"OpusHead".to_vec();
        out.push(1);
        out.push(self.channels);
        out.extend_from_slice(&self.pre_skip.to_le_bytes());
        out.extend_from_slice(&self.input_sample_rate.to_le_bytes());
        out.extend_from_slice(&[0, 0, 0]);
        out
    }
}

/// A malformed or unsupported `OpusHead`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("OpusHead: {0}")]
pub struct OpusError(&'static str);

/// Duration of an Opus packet in 48 kHz samples from its TOC byte and frame count
/// (RFC 6716 §3.1), or `None` when the packet is empty or malformed.
pub fn packet_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    // Frame size in 48 kHz samples per configuration (SILK, hybrid, CELT ranges).
    let frame: u32 = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3f),
    };
    let total = frame * frames;
    (frames > 0 && total <= 5760).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toc_durations() {
        // config 31 (CELT FB 20 ms), code 0 → 960 samples.
        assert_eq!(packet_samples(&[31 << 3]), Some(960));
        // config 1 (SILK NB 20 ms), code 1 → two frames.
        assert_eq!(packet_samples(&[(1 << 3) | 1]), Some(1920));
        // code 3 with 3 frames of 10 ms CELT (config 30).
        assert_eq!(packet_samples(&[(30 << 3) | 3, 3]), Some(1440));
        assert_eq!(packet_samples(&[(30 << 3) | 3, 0]), None);
        assert_eq!(packet_samples(&[]), None);
        // 48 frames of 20 ms is over the 120 ms limit.
        assert_eq!(packet_samples(&[(31 << 3) | 3, 48]), None);
    }

    #[test]
    fn opus_head_round_trips_and_truncations_are_errors() {
        let c = OpusConfig {
            channels: 1,
            input_sample_rate: 44_100,
            pre_skip: 312,
        };
        let head = c.head();
        assert_eq!(head.len(), 19);
        assert_eq!(OpusConfig::parse_head(&head), Ok(c));
        for n in 0..head.len() {
            assert!(OpusConfig::parse_head(&head[..n]).is_err(), "{n}");
        }
        let mut surround = head.clone();
        surround[18] = 1;
        assert!(OpusConfig::parse_head(&surround).is_err());
    }
}
