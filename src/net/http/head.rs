//! HTTP/1.1 request and response heads for the fast path (sans-IO): [`read_head`] tells
//! whether the bytes at the front of a connection's buffer are a request the fast path may
//! answer itself, need more bytes, or are something else (hyper takes the connection
//! then, with the bytes read so far); [`write_response_head`] renders a response's head.
//!
//! The fast path only takes the plainest requests: `GET` in origin form, HTTP/1.1, no body
//! (no `Transfer-Encoding`, no `Content-Length` other than 0), no `Upgrade` or `Expect`,
//! and a head of at most [`MAX_HEAD`] bytes with at most [`MAX_HEADERS`] fields. Anything
//! else — HTTP/1.0, other methods, absolute-form targets, malformed heads — goes to hyper,
//! which answers it (or rejects it) exactly as before.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http;

/// The longest request head the fast path reads; longer heads go to hyper.
pub const MAX_HEAD: usize = 8 * 1024;
/// The most header fields the fast path reads; more go to hyper.
pub const MAX_HEADERS: usize = 32;

/// What the front of a connection's buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// Not a whole head yet (and not too long to become one).
    Partial,
    /// A request the fast path may answer.
    Fast(FastHead),
    /// Anything else: hyper's.
    Other,
}

/// A plain `GET`: where its pieces lie in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct FastHead {
    /// Bytes of the head, with its final empty line.
    pub len: usize,
    /// The request target (path and query, ASCII, starting with `/`).
    pub target: std::ops::Range<usize>,
    /// The `Origin` field's value, when there is one.
    pub origin: Option<std::ops::Range<usize>>,
    /// The client asked to close after this answer (`Connection: close`).
    pub close: bool,
}

/// Reads the request head at the front of `buf`.
pub fn read_head(buf: &[u8]) -> Head {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Head::Partial,
        _ => return Head::Other,
    };
    if req.method != Some("GET") || req.version != Some(1) {
        return Head::Other;
    }
    let Some(path) = req.path else {
        return Head::Other;
    };
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Head::Other;
    }
    let mut origin = None;
    let mut close = false;
    for field in req.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return Head::Other;
        }
        if name.eq_ignore_ascii_case("content-length") {
            if trim(field.value) != b"0" {
                return Head::Other;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in field.value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Head::Other;
                }
            }
        } else if name.eq_ignore_ascii_case("origin") {
            if origin.is_some() {
                return Head::Other;
            }
            origin = Some(range_in(buf, field.value));
        }
    }
    Head::Fast(FastHead {
        len,
        target: range_in(buf, path.as_bytes()),
        origin,
        close,
    })
}

/// Where `part` (a slice of `buf`) lies in `buf`.
fn range_in(buf: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
    start..start + part.len()
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

/// The `Date` field's value (RFC 9110 §6.6.1), formatted once a second.
#[derive(Default)]
pub struct DateCache {
    secs: u64,
    text: String,
}

impl DateCache {
    /// The value for `now`.
    pub fn get(&mut self, now: SystemTime) -> &str {
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if secs != self.secs || self.text.is_empty() {
            self.secs = secs;
            self.text = httpdate::fmt_http_date(now);
        }
        &self.text
    }
}

/// Writes the head of a response with a body of `body_len` bytes into `out`: the status
/// line, the response's fields (but `Content-Length`, `Transfer-Encoding`, `Connection` and
/// `Date`, which are the connection's to say), `Date`, `Content-Length`, and
/// `Connection: close` when `close`.
pub fn write_response_head(
    out: &mut Vec<u8>,
    status: http::StatusCode,
    headers: &http::HeaderMap,
    body_len: usize,
    close: bool,
    date: &str,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == http::header::CONTENT_LENGTH
            || name == http::header::TRANSFER_ENCODING
            || name == http::header::CONNECTION
            || name == http::header::DATE
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    let _ = write!(out, "{body_len}");
    if close {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast(buf: &[u8]) -> FastHead {
        match read_head(buf) {
            Head::Fast(h) => h,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn a_plain_get_is_fast_and_its_pieces_are_found() {
        let buf = b"GET /hls/abc/index.m3u8?x=1 HTTP/1.1\r\nHost: a\r\nOrigin: https://o.example\r\n\r\nGET /next";
        let h = fast(buf);
        assert_eq!(&buf[h.target.clone()], b"/hls/abc/index.m3u8?x=1");
        assert_eq!(&buf[h.origin.clone().unwrap()], b"https://o.example");
        assert_eq!(
            &buf[h.len..],
            b"GET /next",
            "a pipelined request stays in the buffer"
        );
        assert!(!h.close);
        let h =
            fast(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n");
        assert!(h.close);
        assert_eq!(h.origin, None);
    }

    #[test]
    fn partial_heads_wait_and_everything_else_goes_to_hyper() {
        assert_eq!(read_head(b""), Head::Partial);
        assert_eq!(read_head(b"GET /hls/a/x HTTP/1.1\r\nHost:"), Head::Partial);
        for other in [
            &b"POST /hls/a/s/0123456789abcdef/beacon HTTP/1.1\r\n\r\n"[..],
            b"HEAD /hls/a/index.m3u8 HTTP/1.1\r\n\r\n",
            b"GET /hls/a/index.m3u8 HTTP/1.0\r\n\r\n",
            b"GET http://h/hls/a/index.m3u8 HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            b"GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET /a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"GET /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET /a HTTP/1.1\r\nOrigin: a\r\nOrigin: b\r\n\r\n",
            b"\x00\x01garbage\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert_eq!(
                read_head(other),
                Head::Other,
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
        let long = format!("GET /a HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(MAX_HEAD));
        assert_eq!(read_head(long.as_bytes()), Head::Other, "too long");
        assert_eq!(
            read_head(&long.as_bytes()[..MAX_HEAD + 1]),
            Head::Other,
            "too long, partial"
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X{i}: 1\r\n")).collect();
        let many = format!("GET /a HTTP/1.1\r\n{many}\r\n");
        assert_eq!(read_head(many.as_bytes()), Head::Other, "too many fields");
    }

    #[test]
    fn response_heads_say_date_length_and_close_once() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, "video/mp4".parse().unwrap());
        headers.insert(http::header::CONTENT_LENGTH, "999".parse().unwrap());
        headers.insert(http::header::CONNECTION, "keep-alive".parse().unwrap());
        let mut out = vec![];
        let mut dates = DateCache::default();
        let now = UNIX_EPOCH + std::time::Duration::from_secs(784_111_777);
        let date = dates.get(now).to_owned();
        assert_eq!(date, "Sun, 06 Nov 1994 08:49:37 GMT");
        write_response_head(&mut out, http::StatusCode::OK, &headers, 12, true, &date);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-type: video/mp4\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\ncontent-length: 12\r\nconnection: close\r\n\r\n"
        );
        // Read back by an independent parser.
        let mut out = vec![];
        write_response_head(
            &mut out,
            http::StatusCode::SERVICE_UNAVAILABLE,
            &headers,
            0,
            false,
            &date,
        );
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut fields);
        assert!(resp.parse(&out).unwrap().is_complete());
        assert_eq!(resp.code, Some(503));
        assert_eq!(resp.reason, Some("Service Unavailable"));
    }
}
