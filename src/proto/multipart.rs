//! `multipart/x-mixed-replace` framing for MJPEG playback: each JPEG becomes one part with its
//! own headers; browsers replace the image in an `<img>` tag with each part.

use bytes::{BufMut, Bytes, BytesMut};

/// The boundary string used between parts.
pub const BOUNDARY: &str = "mjpegframe";

/// The response `Content-Type`.
pub fn content_type() -> String {
    format!("multipart/x-mixed-replace; boundary={BOUNDARY}")
}

/// The delimiter and headers that precede a part of `len` bytes. The part's body follows it
/// unchanged and [`part_trailer`] ends it, so the JPEG itself is never copied.
pub fn part_header(len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(96);
    b.put_slice(b"--");
    b.put_slice(BOUNDARY.as_bytes());
    b.put_slice(b"\r\nContent-Type: image/jpeg\r\nContent-Length: ");
    b.put_slice(len.to_string().as_bytes());
    b.put_slice(b"\r\n\r\n");
    b.freeze()
}

/// Ends a part.
pub fn part_trailer() -> Bytes {
    Bytes::from_static(b"\r\n")
}

/// Splits a multipart body into its parts' bodies (for tests and clients); `None` if the
/// framing is broken. Incomplete trailing data is left out.
pub fn parse_parts(body: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut parts = Vec::new();
    let mut rest = body;
    let delimiter = format!("--{BOUNDARY}\r\n");
    while !rest.is_empty() {
        let Some(after) = rest.strip_prefix(delimiter.as_bytes()) else {
            // A cut inside the next delimiter is an incomplete tail; anything else is broken.
            if delimiter.as_bytes().starts_with(rest) {
                break;
            }
            return None;
        };
        rest = after;
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            break; // headers not complete yet
        };
        let headers = std::str::from_utf8(rest.get(..end)?).ok()?;
        let len: usize = headers
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))?
            .trim()
            .parse()
            .ok()?;
        let body_start = end + 4;
        let Some(part) = rest.get(body_start..body_start + len) else {
            break; // incomplete tail
        };
        parts.push(part.to_vec());
        rest = rest.get(body_start + len..)?;
        if rest.len() < 2 {
            break;
        }
        rest = rest.strip_prefix(b"\r\n")?;
    }
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let frames: Vec<Vec<u8>> = vec![b"\xFF\xD8one\xFF\xD9".to_vec(), vec![0xFF; 3000], vec![]];
        let mut body = Vec::new();
        for f in &frames {
            body.extend_from_slice(&part_header(f.len()));
            body.extend_from_slice(f);
            body.extend_from_slice(&part_trailer());
        }
        assert_eq!(parse_parts(&body), Some(frames.clone()));
        // A cut in the middle yields the complete parts before it.
        let cut = part_header(frames[0].len()).len() + frames[0].len() + 2 + 10;
        assert_eq!(parse_parts(&body[..cut]).map(|p| p.len()), Some(1));
        assert!(String::from_utf8_lossy(&part_header(5))
            .starts_with("--mjpegframe\r\nContent-Type: image/jpeg\r\nContent-Length: 5\r\n\r\n"));
        assert_eq!(parse_parts(b"garbage"), None);
    }
}
