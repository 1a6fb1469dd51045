//! JPEG framing checks for camera ingest: a frame must start with SOI, end with EOI (trailing
//! zero padding, as some camera drivers add, is allowed), and carry a start-of-frame segment
//! with a non-zero width and height before the scan. Only the marker segments before the
//! first SOS are walked, so a check costs microseconds; decoding is left to the transcoder.

/// What a valid frame declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegInfo {
    /// Pixels.
    pub width: u16,
    /// Pixels.
    pub height: u16,
}

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JpegError {
    /// Does not start with FF D8.
    #[error("missing SOI marker")]
    NoSoi,
    /// Does not end with FF D9 (the frame is truncated).
    #[error("missing EOI marker (truncated frame)")]
    NoEoi,
    /// A marker segment runs past the end or is malformed.
    #[error("malformed marker segment at byte {0}")]
    BadSegment(usize),
    /// No SOFn segment before the scan.
    #[error("no start-of-frame segment")]
    NoSof,
    /// SOF declares a zero dimension.
    #[error("zero width or height")]
    ZeroSize,
}

/// Checks the framing of one JPEG.
pub fn validate(data: &[u8]) -> Result<JpegInfo, JpegError> {
    if data.get(..2) != Some(&[0xFF, 0xD8][..]) {
        return Err(JpegError::NoSoi);
    }
    let trimmed = data.len() - data.iter().rev().take_while(|b| **b == 0).count();
    if trimmed < 4 || data.get(trimmed - 2..trimmed) != Some(&[0xFF, 0xD9][..]) {
        return Err(JpegError::NoEoi);
    }
    let mut pos = 2;
    loop {
        // Markers may be preceded by fill bytes (FF FF ...).
        let mut marker_at = pos;
        while data.get(marker_at) == Some(&0xFF) && data.get(marker_at + 1) == Some(&0xFF) {
            marker_at += 1;
        }
        if data.get(marker_at) != Some(&0xFF) {
            return Err(JpegError::BadSegment(marker_at));
        }
        let marker = *data
            .get(marker_at + 1)
            .ok_or(JpegError::BadSegment(marker_at))?;
        match marker {
            // Standalone markers without a length.
            0x01 | 0xD0..=0xD7 => {
                pos = marker_at + 2;
                continue;
            }
            0xD9 | 0xDA => return Err(JpegError::NoSof),
            _ => {}
        }
        let len_bytes = data
            .get(marker_at + 2..marker_at + 4)
            .ok_or(JpegError::BadSegment(marker_at))?;
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        if len < 2 || marker_at + 2 + len > trimmed {
            return Err(JpegError::BadSegment(marker_at));
        }
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            let body = data
                .get(marker_at + 4..marker_at + 2 + len)
                .ok_or(JpegError::BadSegment(marker_at))?;
            if body.len() < 5 {
                return Err(JpegError::BadSegment(marker_at));
            }
            let height = u16::from_be_bytes([body[1], body[2]]);
            let width = u16::from_be_bytes([body[3], body[4]]);
            if width == 0 || height == 0 {
                return Err(JpegError::ZeroSize);
            }
            return Ok(JpegInfo { width, height });
        }
        pos = marker_at + 2 + len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal baseline-JPEG header: SOI, APP0, SOF0 (WxH), SOS, one scan byte, EOI.
    pub(crate) fn synthetic(width: u16, height: u16) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8];
        v.extend_from_slice(&[
            0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0,
        ]);
        v.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 8]);
        v.extend_from_slice(&height.to_be_bytes());
        v.extend_from_slice(&width.to_be_bytes());
        v.extend_from_slice(&[1, 1, 0x11, 0]);
        v.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 1, 1, 0, 0, 0x3F, 0, 0x55]);
        v.extend_from_slice(&[0xFF, 0xD9]);
        v
    }

    #[test]
    fn accepts_a_frame_and_reads_its_size() {
        assert_eq!(
            validate(&synthetic(640, 480)),
            Ok(JpegInfo {
                width: 640,
                height: 480
            })
        );
        let mut padded = synthetic(320, 240);
        padded.extend_from_slice(&[0, 0, 0]);
        assert!(
            validate(&padded).is_ok(),
            "zero padding after EOI is tolerated"
        );
    }

    #[test]
    fn rejects_what_is_not_a_whole_jpeg() {
        let good = synthetic(640, 480);
        assert_eq!(validate(b"not a jpeg"), Err(JpegError::NoSoi));
        assert_eq!(validate(&good[..good.len() - 5]), Err(JpegError::NoEoi));
        assert_eq!(validate(&[0xFF, 0xD8, 0xFF, 0xD9]), Err(JpegError::NoSof));
        assert_eq!(validate(&synthetic(0, 480)), Err(JpegError::ZeroSize));
        let mut bad_len = good.clone();
        bad_len[5] = 0xFF; // APP0 length runs past the end
        assert!(matches!(validate(&bad_len), Err(JpegError::BadSegment(_))));
        for cut in 0..good.len() {
            let _ = validate(&good[..cut]);
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 0x9E37_79B9u32;
        for n in 0..5000usize {
            let len = n % 64;
            let mut v: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            if len > 4 {
                v[0] = 0xFF;
                v[1] = 0xD8;
                v[len - 2] = 0xFF;
                v[len - 1] = 0xD9;
            }
            let _ = validate(&v);
        }
    }
}
