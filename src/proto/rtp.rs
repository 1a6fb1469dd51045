//! Sans-IO RTP helpers for WebRTC ingest: the H.264 depacketizer (RFC 6184 packetization
//! mode 1: single NAL unit, STAP-A, FU-A), the 32-bit timestamp unwrapper and receive
//! statistics (loss and interarrival jitter per RFC 3550 §6.4.1, A.3, A.8).
//!
//! Bytes in, values out: no sockets, no clocks (arrival times are passed in), never panics on
//! malformed input. The `webrtc` crate delivers decrypted RTP packets; everything from the
//! payload on is ours.

use bytes::{BufMut, Bytes, BytesMut};

/// Largest access unit we assemble (an 8K intra frame fits); a larger one is dropped.
pub const MAX_ACCESS_UNIT_BYTES: usize = 8 * 1024 * 1024;
/// Most NAL units in one access unit.
pub const MAX_NALS_PER_ACCESS_UNIT: usize = 1024;

const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;

/// Why a payload could not be used. The depacketizer stays usable after every error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepacketizeError {
    /// An empty RTP payload.
    #[error("empty RTP payload")]
    Empty,
    /// A STAP-A or FU-A shorter than its headers say.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// STAP-B, MTAP, FU-B (interleaved mode) or a reserved type.
    #[error("unsupported NAL unit type {0} (packetization-mode 1 only)")]
    Unsupported(u8),
    /// An access unit grew past [`MAX_ACCESS_UNIT_BYTES`] or [`MAX_NALS_PER_ACCESS_UNIT`].
    #[error("access unit too large")]
    TooLarge,
}

/// One access unit: the NAL units (without start codes) sharing an RTP timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    /// The RTP timestamp of its packets (90 kHz).
    pub rtp_timestamp: u32,
    /// NAL units in decode order, each starting with its NAL header byte.
    pub nals: Vec<Bytes>,
    /// False when a packet of it was lost or malformed: decoding it would show corruption.
    pub complete: bool,
}

/// Reassembles H.264 access units from RTP payloads in arrival order.
#[derive(Debug, Default)]
pub struct H264Depacketizer {
    nals: Vec<Bytes>,
    bytes: usize,
    fu: Option<BytesMut>,
    timestamp: Option<u32>,
    last_seq: Option<u16>,
    damaged: bool,
}

impl H264Depacketizer {
    /// A depacketizer waiting for its first packet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one RTP packet. Finished access units are appended to `out`: the previous one
    /// when the timestamp changes (its marker packet was lost), this one on the marker bit.
    /// An error means this packet was unusable; the current access unit is marked damaged.
    pub fn push(
        &mut self,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &Bytes,
        out: &mut Vec<AccessUnit>,
    ) -> Result<(), DepacketizeError> {
        if let Some(last) = self.last_seq {
            let delta = seq.wrapping_sub(last);
            if delta == 0 || delta > 0x8000 {
                // A duplicate or a late packet: its access unit is already gone.
                return Ok(());
            }
            if delta != 1 {
                self.damaged = true;
                self.fu = None;
            }
        }
        self.last_seq = Some(seq);
        if self.timestamp.is_some_and(|t| t != timestamp) {
            self.finish(out);
        }
        self.timestamp = Some(timestamp);
        let result = self.parse(payload);
        if result.is_err() {
            self.damaged = true;
            self.fu = None;
        }
        if marker {
            self.finish(out);
        }
        result
    }

    fn parse(&mut self, payload: &Bytes) -> Result<(), DepacketizeError> {
        let header = *payload.first().ok_or(DepacketizeError::Empty)?;
        match header & 0x1f {
            1..=23 => {
                self.fu = None;
                self.add_nal(payload.clone())
            }
            NAL_STAP_A => {
                self.fu = None;
                let mut rest = payload.slice(1..);
                while !rest.is_empty() {
                    let len = match rest.get(..2) {
                        Some(&[a, b]) => usize::from(u16::from_be_bytes([a, b])),
                        _ => return Err(DepacketizeError::Truncated("STAP-A size")),
                    };
                    if len == 0 || rest.len() < 2 + len {
                        return Err(DepacketizeError::Truncated("STAP-A NAL unit"));
                    }
                    self.add_nal(rest.slice(2..2 + len))?;
                    rest = rest.slice(2 + len..);
                }
                Ok(())
            }
            NAL_FU_A => {
                let fu_header = *payload
                    .get(1)
                    .ok_or(DepacketizeError::Truncated("FU-A header"))?;
                let data = payload.get(2..).unwrap_or_default();
                let start = fu_header & 0x80 != 0;
                let end = fu_header & 0x40 != 0;
                if start {
                    let mut nal = BytesMut::with_capacity(data.len() * 8 + 1);
                    nal.put_u8((header & 0xe0) | (fu_header & 0x1f));
                    self.fu = Some(nal);
                }
                let Some(nal) = self.fu.as_mut() else {
                    // A middle or end fragment whose start was lost.
                    self.damaged = true;
                    return Ok(());
                };
                if self.bytes + nal.len() + data.len() > MAX_ACCESS_UNIT_BYTES {
                    return Err(DepacketizeError::TooLarge);
                }
                nal.extend_from_slice(data);
                if end {
                    if let Some(nal) = self.fu.take() {
                        self.add_nal(nal.freeze())?;
                    }
                }
                Ok(())
            }
            other => Err(DepacketizeError::Unsupported(other)),
        }
    }

    fn add_nal(&mut self, nal: Bytes) -> Result<(), DepacketizeError> {
        if self.bytes + nal.len() > MAX_ACCESS_UNIT_BYTES
            || self.nals.len() >= MAX_NALS_PER_ACCESS_UNIT
        {
            return Err(DepacketizeError::TooLarge);
        }
        self.bytes += nal.len();
        self.nals.push(nal);
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<AccessUnit>) {
        let Some(rtp_timestamp) = self.timestamp.take() else {
            return;
        };
        if self.fu.take().is_some() {
            // The access unit ended inside a fragmented NAL unit.
            self.damaged = true;
        }
        let nals = std::mem::take(&mut self.nals);
        let complete = !std::mem::replace(&mut self.damaged, false);
        self.bytes = 0;
        if !nals.is_empty() || !complete {
            out.push(AccessUnit {
                rtp_timestamp,
                nals,
                complete,
            });
        }
    }
}

/// Extends 32-bit RTP timestamps to a monotonic-ish 64-bit timeline (wrap-around and small
/// reorderings handled by signed 32-bit differences).
#[derive(Debug, Default, Clone)]
pub struct TimestampUnwrapper {
    last: Option<(u32, i64)>,
}

impl TimestampUnwrapper {
    /// The unwrapped value of `ts`; the first timestamp maps to itself.
    pub fn unwrap(&mut self, ts: u32) -> i64 {
        let value = match self.last {
            None => i64::from(ts),
            Some((last_ts, last_value)) => last_value + i64::from(ts.wrapping_sub(last_ts) as i32),
        };
        self.last = Some((ts, value));
        value
    }
}

/// Receive statistics of one RTP stream (RFC 3550 A.3 and A.8).
#[derive(Debug, Default, Clone)]
pub struct ReceiveStats {
    base_seq: Option<u16>,
    /// Highest sequence number seen, extended with the wrap count.
    max_ext_seq: i64,
    received: u64,
    /// Interarrival jitter in timestamp units, scaled by 16 as in RFC 3550 A.8.
    jitter_q4: i64,
    last_transit: Option<i64>,
}

impl ReceiveStats {
    /// Records a packet with sequence number `seq`, RTP timestamp `ts` (unwrapped), arriving
    /// at `arrival` (same clock units as `ts`).
    pub fn record(&mut self, seq: u16, ts: i64, arrival: i64) {
        self.received += 1;
        match self.base_seq {
            None => {
                self.base_seq = Some(seq);
                self.max_ext_seq = i64::from(seq);
            }
            Some(_) => {
                let last = (self.max_ext_seq & 0xffff) as u16;
                let delta = i64::from(seq.wrapping_sub(last) as i16);
                if delta > 0 {
                    self.max_ext_seq += delta;
                }
            }
        }
        let transit = arrival - ts;
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs();
            self.jitter_q4 += d - ((self.jitter_q4 + 8) >> 4);
        }
        self.last_transit = Some(transit);
    }

    /// Packets received (duplicates included).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets expected from the sequence numbers seen.
    pub fn expected(&self) -> u64 {
        match self.base_seq {
            None => 0,
            Some(base) => (self.max_ext_seq - i64::from(base) + 1).max(0) as u64,
        }
    }

    /// Packets lost (never negative; duplicates can hide losses, as in RFC 3550).
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    /// Interarrival jitter in timestamp units.
    pub fn jitter(&self) -> f64 {
        self.jitter_q4 as f64 / 16.0
    }
}

/// The Annex B form (start codes) of an AVCC access unit with 4-byte lengths, with the
/// parameter sets put in front when `prefix` is given (keyframes sent to WebRTC decoders).
pub fn avcc_to_annexb(avcc: &[u8], nal_length_size: u8, prefix: &[Bytes]) -> Bytes {
    let mut out = BytesMut::with_capacity(avcc.len() + 64);
    for nal in prefix {
        out.put_slice(&[0, 0, 0, 1]);
        out.put_slice(nal);
    }
    for nal in crate::media::h264::avcc_nal_units(avcc, nal_length_size).map_while(Result::ok) {
        out.put_slice(&[0, 0, 0, 1]);
        out.put_slice(nal);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(d: &mut H264Depacketizer, seq: u16, ts: u32, m: bool, p: &[u8]) -> Vec<AccessUnit> {
        let mut out = Vec::new();
        let _ = d.push(seq, ts, m, &Bytes::copy_from_slice(p), &mut out);
        out
    }

    #[test]
    fn single_stap_a_and_fu_a_make_one_access_unit() {
        let mut d = H264Depacketizer::new();
        // STAP-A with SPS and PPS.
        assert!(push(
            &mut d,
            1,
            900,
            false,
            &[24, 0, 3, 0x67, 1, 2, 0, 2, 0x68, 3]
        )
        .is_empty());
        // FU-A IDR in three fragments (NRI 3).
        assert!(push(&mut d, 2, 900, false, &[0x7c, 0x85, 1, 2]).is_empty());
        assert!(push(&mut d, 3, 900, false, &[0x7c, 0x05, 3]).is_empty());
        let out = push(&mut d, 4, 900, true, &[0x7c, 0x45, 4]);
        assert_eq!(out.len(), 1);
        let au = &out[0];
        assert!(au.complete);
        assert_eq!(au.rtp_timestamp, 900);
        assert_eq!(
            au.nals,
            vec![
                Bytes::from_static(&[0x67, 1, 2]),
                Bytes::from_static(&[0x68, 3]),
                Bytes::from_static(&[0x65, 1, 2, 3, 4]),
            ]
        );
        // A single NAL unit packet, marker set.
        let out = push(&mut d, 5, 3900, true, &[0x41, 9, 9]);
        assert_eq!(out[0].nals, vec![Bytes::from_static(&[0x41, 9, 9])]);
    }

    #[test]
    fn a_lost_fragment_damages_only_its_access_unit() {
        let mut d = H264Depacketizer::new();
        push(&mut d, 10, 0, false, &[0x7c, 0x85, 1]);
        // seq 11 lost
        let out = push(&mut d, 12, 0, true, &[0x7c, 0x45, 3]);
        assert_eq!(out.len(), 1);
        assert!(!out[0].complete);
        let out = push(&mut d, 13, 3000, true, &[0x41, 1]);
        assert!(out[0].complete);
    }

    #[test]
    fn a_lost_marker_is_recovered_by_the_timestamp_change() {
        let mut d = H264Depacketizer::new();
        push(&mut d, 1, 0, false, &[0x41, 1]);
        let out = push(&mut d, 2, 3000, true, &[0x41, 2]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].rtp_timestamp, 0);
        assert_eq!(out[1].rtp_timestamp, 3000);
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        let mut d = H264Depacketizer::new();
        let mut out = Vec::new();
        for (seq, p) in [
            &[][..],
            &[24, 0],
            &[24, 0, 9, 1],
            &[24, 0, 0],
            &[28],
            &[25, 1, 2],
            &[0],
        ]
        .iter()
        .enumerate()
        {
            assert!(d
                .push(seq as u16, 0, false, &Bytes::copy_from_slice(p), &mut out)
                .is_err());
        }
        assert!(d
            .push(99, 0, true, &Bytes::from_static(&[0x41]), &mut out)
            .is_ok());
        assert!(!out[0].complete);
    }

    #[test]
    fn duplicates_and_late_packets_are_ignored() {
        let mut d = H264Depacketizer::new();
        push(&mut d, 5, 0, false, &[0x41, 1]);
        assert!(push(&mut d, 5, 0, false, &[0x41, 1]).is_empty());
        assert!(push(&mut d, 4, 0, false, &[0x41, 1]).is_empty());
        let out = push(&mut d, 6, 0, true, &[0x41, 2]);
        assert_eq!(out[0].nals.len(), 2);
        assert!(out[0].complete);
    }

    #[test]
    fn timestamps_unwrap_across_the_32_bit_boundary() {
        let mut u = TimestampUnwrapper::default();
        assert_eq!(u.unwrap(u32::MAX - 10), i64::from(u32::MAX - 10));
        assert_eq!(u.unwrap(5), i64::from(u32::MAX) + 6);
        assert_eq!(u.unwrap(2), i64::from(u32::MAX) + 3);
    }

    #[test]
    fn loss_and_jitter_follow_rfc_3550() {
        let mut s = ReceiveStats::default();
        for (i, seq) in [65534u16, 65535, 1, 2].iter().enumerate() {
            let ts = i as i64 * 3000;
            s.record(*seq, ts, ts + 100);
        }
        assert_eq!(s.expected(), 5);
        assert_eq!(s.lost(), 1);
        assert_eq!(s.jitter(), 0.0);
        s.record(3, 12_000, 12_000 + 1700);
        assert!((s.jitter() - 100.0).abs() < 1.0, "{}", s.jitter());
    }

    #[test]
    fn avcc_becomes_annexb_with_parameter_sets() {
        let avcc = [0, 0, 0, 2, 0x65, 1, 0, 0, 0, 1, 0x65];
        let out = avcc_to_annexb(&avcc, 4, &[Bytes::from_static(&[0x67, 7])]);
        assert_eq!(
            &out[..],
            &[0, 0, 0, 1, 0x67, 7, 0, 0, 0, 1, 0x65, 1, 0, 0, 0, 1, 0x65]
        );
    }
}
