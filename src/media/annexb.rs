//! H.264 Annex B (start-code) streams, as encoders produce them, → what the hub carries:
//! length-prefixed (AVCC) access units and an `avcC` record from the SPS and PPS.

use bytes::{BufMut, Bytes, BytesMut};

/// NAL unit type of an IDR slice.
pub const NAL_IDR: u8 = 5;
/// NAL unit type of a sequence parameter set.
pub const NAL_SPS: u8 = 7;
/// NAL unit type of a picture parameter set.
pub const NAL_PPS: u8 = 8;

/// The NAL units of an Annex B stream (start codes removed).
pub fn nal_units(stream: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= stream.len() {
        if stream[i] == 0 && stream[i + 1] == 0 && stream[i + 2] == 1 {
            starts.push((i, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(starts.len());
    for (k, &(_, payload)) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map_or(stream.len(), |&(sc, _)| sc);
        // A 4-byte start code leaves a zero before the next 3-byte one.
        let mut nal = &stream[payload..end];
        while nal.last() == Some(&0) {
            nal = &nal[..nal.len() - 1];
        }
        if !nal.is_empty() {
            out.push(nal);
        }
    }
    out
}

/// NAL unit type.
pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1f)
}

/// An AVCDecoderConfigurationRecord for one SPS and one PPS (4-byte NAL lengths).
pub fn avcc_record(sps: &[u8], pps: &[u8]) -> Option<Bytes> {
    if sps.len() < 4 || sps.len() > usize::from(u16::MAX) || pps.len() > usize::from(u16::MAX) {
        return None;
    }
    let mut b = BytesMut::with_capacity(11 + sps.len() + pps.len());
    b.put_u8(1);
    b.put_slice(&sps[1..4]);
    b.put_u8(0xFF); // 4-byte lengths
    b.put_u8(0xE1); // one SPS
    b.put_u16(sps.len() as u16);
    b.put_slice(sps);
    b.put_u8(1);
    b.put_u16(pps.len() as u16);
    b.put_slice(pps);
    Some(b.freeze())
}

/// The access unit's slices as an AVCC sample (parameter sets and AUDs left out, as they go
/// in `avcC`), and whether it holds an IDR slice.
pub fn to_avcc_sample(nals: &[&[u8]]) -> (Bytes, bool) {
    let mut b = BytesMut::new();
    let mut idr = false;
    for nal in nals {
        match nal_type(nal) {
            NAL_SPS | NAL_PPS | 9 => continue,
            t => idr |= t == NAL_IDR,
        }
        b.put_u32(nal.len() as u32);
        b.put_slice(nal);
    }
    (b.freeze(), idr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_three_and_four_byte_start_codes() {
        let s = [
            0, 0, 0, 1, 0x67, 1, 2, 3, 0, 0, 1, 0x68, 9, 0, 0, 0, 1, 0x65, 7, 7,
        ];
        let nals = nal_units(&s);
        assert_eq!(
            nals,
            vec![&[0x67, 1, 2, 3][..], &[0x68, 9][..], &[0x65, 7, 7][..]]
        );
        let (sample, idr) = to_avcc_sample(&nals);
        assert!(idr);
        assert_eq!(&sample[..], &[0, 0, 0, 3, 0x65, 7, 7]);
        let rec = avcc_record(&[0x67, 0x42, 0xc0, 0x1f], &[0x68, 9]).unwrap();
        assert_eq!(&rec[..6], &[1, 0x42, 0xc0, 0x1f, 0xFF, 0xE1]);
        assert!(avcc_record(&[0x67], &[0x68]).is_none());
        assert!(nal_units(&[1, 2, 3]).is_empty());
    }
}
