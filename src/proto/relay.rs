//! The relay between cluster nodes: one TCP connection per stream carries a live stream from
//! the node that owns it to a node whose viewers want it.
//!
//! Why not RTMP: FLV cannot carry Opus or JPEG, squeezes timestamps into 32-bit
//! milliseconds, and would re-packetize every frame twice. This format carries the hub's
//! own values unchanged — tracks with their codec configuration, frames with 64-bit
//! dts/pts in the track's timescale and the keyframe flag — so what a remote hub fans out is
//! exactly what the owner's hub holds.
//!
//! Every message is `u32 length (big-endian) | u8 type | body`, `length` counting the type
//! and the body, at most [`MAX_MESSAGE`]:
//! - `HELLO` (owner → relay, first): `u64 epoch | node id (UTF-8, rest)`.
//! - `TRACKS`: `u8 count`, then per track `u8 id | u32 timescale | u8 codec | config`, the
//!   config being `u16 length | avcC` (H.264), `u16 length | AudioSpecificConfig` (AAC),
//!   `u8 channels | u32 input rate | u16 pre-skip` (Opus) or `u16 width | u16 height` (JPEG).
//!   Sent again whenever the tracks change (a discontinuity for the segmenter).
//! - `FRAME`: `u8 track | u8 flags (bit 0 keyframe) | i64 dts | i64 pts | payload (rest)`.
//! - `KEYFRAME` (relay → owner): the remote segmenter wants a keyframe; empty.
//! - `PING`: keep-alive while the stream sends nothing; empty.
//! - `END`: the publisher left; `reason (UTF-8)`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::media::aac::AacConfig;
use crate::media::h264::AvcConfig;
use crate::media::opus::OpusConfig;
use crate::media::{CodecConfig, Frame, Track, TrackId, Tracks};

/// Largest message accepted (a frame of a 4K keyframe fits many times over).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

const HELLO: u8 = 1;
const TRACKS: u8 = 2;
const FRAME: u8 = 3;
const KEYFRAME: u8 = 4;
const PING: u8 = 5;
const END: u8 = 6;

const H264: u8 = 1;
const AAC: u8 = 2;
const OPUS: u8 = 3;
const JPEG: u8 = 4;

/// One relay message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The owner's greeting: its claim's epoch and its node id.
    Hello {
        /// Fencing epoch of the owner's claim.
        epoch: u64,
        /// The owner's node id.
        node: String,
    },
    /// The stream's tracks.
    Tracks(Tracks),
    /// One frame.
    Frame(Frame),
    /// A keyframe is wanted (relay → owner).
    Keyframe,
    /// Keep-alive.
    Ping,
    /// The stream ended.
    End(String),
}

/// Why a relay byte stream is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelayError {
    /// A length over [`MAX_MESSAGE`] or under one byte.
    #[error("relay message of {0} bytes is out of bounds")]
    Length(usize),
    /// A type this version does not know.
    #[error("unknown relay message type {0}")]
    Type(u8),
    /// A body shorter than its fields, or with bytes left over.
    #[error("malformed relay {0} message")]
    Malformed(&'static str),
    /// A codec configuration that does not parse.
    #[error("relay track {0}: {1}")]
    Codec(u8, String),
}

/// Appends `msg`, framed, to `out`.
pub fn encode(msg: &Message, out: &mut BytesMut) {
    let start = out.len();
    out.put_u32(0);
    match msg {
        Message::Hello { epoch, node } => {
            out.put_u8(HELLO);
            out.put_u64(*epoch);
            out.put_slice(node.as_bytes());
        }
        Message::Tracks(tracks) => {
            out.put_u8(TRACKS);
            let list: Vec<&Track> = tracks.list.iter().take(usize::from(u8::MAX)).collect();
            out.put_u8(list.len() as u8);
            for t in list {
                out.put_u8(t.id.0);
                out.put_u32(t.timescale);
                match &t.codec {
                    CodecConfig::H264(c) => {
                        out.put_u8(H264);
                        put_short_bytes(out, &c.raw);
                    }
                    CodecConfig::Aac(c) => {
                        out.put_u8(AAC);
                        put_short_bytes(out, &c.raw);
                    }
                    CodecConfig::Opus(c) => {
                        out.put_u8(OPUS);
                        out.put_u8(c.channels);
                        out.put_u32(c.input_sample_rate);
                        out.put_u16(c.pre_skip);
                    }
                    CodecConfig::Jpeg { width, height } => {
                        out.put_u8(JPEG);
                        out.put_u16(*width);
                        out.put_u16(*height);
                    }
                }
            }
        }
        Message::Frame(f) => {
            out.put_u8(FRAME);
            out.put_u8(f.track.0);
            out.put_u8(u8::from(f.keyframe));
            out.put_i64(f.dts);
            out.put_i64(f.pts);
            out.put_slice(&f.data);
        }
        Message::Keyframe => out.put_u8(KEYFRAME),
        Message::Ping => out.put_u8(PING),
        Message::End(reason) => {
            out.put_u8(END);
            out.put_slice(reason.as_bytes());
        }
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// The frame header of a [`Message::Frame`] alone, for writers that send the payload from
/// its own buffer (no copy): `4 + 1 + 18` bytes, the length counting the payload.
pub fn frame_header(f: &Frame) -> [u8; 23] {
    let mut h = [0u8; 23];
    let len = (1 + 18 + f.data.len()) as u32;
    h[0..4].copy_from_slice(&len.to_be_bytes());
    h[4] = FRAME;
    h[5] = f.track.0;
    h[6] = u8::from(f.keyframe);
    h[7..15].copy_from_slice(&f.dts.to_be_bytes());
    h[15..23].copy_from_slice(&f.pts.to_be_bytes());
    h
}

fn put_short_bytes(out: &mut BytesMut, b: &[u8]) {
    let n = b.len().min(usize::from(u16::MAX));
    out.put_u16(n as u16);
    out.put_slice(&b[..n]);
}

/// Splits a byte stream into messages; frame payloads share the input buffer.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Decoder::default()
    }

    /// The buffer to read more bytes into.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, `None` until one is.
    pub fn decode(&mut self) -> Result<Option<Message>, RelayError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len == 0 || len > MAX_MESSAGE {
            return Err(RelayError::Length(len));
        }
        if self.buf.len() < 4 + len {
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        let mut body = self.buf.split_to(len).freeze();
        let kind = body.get_u8();
        parse(kind, body).map(Some)
    }
}

fn parse(kind: u8, mut b: Bytes) -> Result<Message, RelayError> {
    match kind {
        HELLO => {
            let epoch = take_u64(&mut b, "hello")?;
            let node = String::from_utf8(b.to_vec()).map_err(|_| RelayError::Malformed("hello"))?;
            Ok(Message::Hello { epoch, node })
        }
        TRACKS => {
            let count = take_u8(&mut b, "tracks")?;
            let mut list = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                let id = take_u8(&mut b, "tracks")?;
                let timescale = take_u32(&mut b, "tracks")?;
                if timescale == 0 {
                    return Err(RelayError::Malformed("tracks"));
                }
                let codec = match take_u8(&mut b, "tracks")? {
                    H264 => {
                        let raw = take_short_bytes(&mut b)?;
                        CodecConfig::H264(
                            AvcConfig::parse(raw)
                                .map_err(|e| RelayError::Codec(id, e.to_string()))?,
                        )
                    }
                    AAC => {
                        let raw = take_short_bytes(&mut b)?;
                        CodecConfig::Aac(
                            AacConfig::parse(raw)
                                .map_err(|e| RelayError::Codec(id, e.to_string()))?,
                        )
                    }
                    OPUS => CodecConfig::Opus(OpusConfig {
                        channels: take_u8(&mut b, "tracks")?,
                        input_sample_rate: take_u32(&mut b, "tracks")?,
                        pre_skip: take_u16(&mut b, "tracks")?,
                    }),
                    JPEG => CodecConfig::Jpeg {
                        width: take_u16(&mut b, "tracks")?,
                        height: take_u16(&mut b, "tracks")?,
                    },
                    other => return Err(RelayError::Codec(id, format!("unknown codec {other}"))),
                };
                if list.iter().any(|t: &Track| t.id.0 == id) {
                    return Err(RelayError::Malformed("tracks"));
                }
                list.push(Track {
                    id: TrackId(id),
                    timescale,
                    codec,
                });
            }
            if b.has_remaining() {
                return Err(RelayError::Malformed("tracks"));
            }
            Ok(Message::Tracks(Tracks { list }))
        }
        FRAME => {
            let track = take_u8(&mut b, "frame")?;
            let flags = take_u8(&mut b, "frame")?;
            let dts = take_u64(&mut b, "frame")? as i64;
            let pts = take_u64(&mut b, "frame")? as i64;
            Ok(Message::Frame(Frame {
                track: TrackId(track),
                pts,
                dts,
                keyframe: flags & 1 == 1,
                data: b,
            }))
        }
        KEYFRAME | PING if b.has_remaining() => Err(RelayError::Malformed("empty")),
        KEYFRAME => Ok(Message::Keyframe),
        PING => Ok(Message::Ping),
        END => Ok(Message::End(String::from_utf8_lossy(&b).into_owned())),
        other => Err(RelayError::Type(other)),
    }
}

fn take_u8(b: &mut Bytes, what: &'static str) -> Result<u8, RelayError> {
    b.try_get_u8().map_err(|_| RelayError::Malformed(what))
}

fn take_u16(b: &mut Bytes, what: &'static str) -> Result<u16, RelayError> {
    b.try_get_u16().map_err(|_| RelayError::Malformed(what))
}

fn take_u32(b: &mut Bytes, what: &'static str) -> Result<u32, RelayError> {
    b.try_get_u32().map_err(|_| RelayError::Malformed(what))
}

fn take_u64(b: &mut Bytes, what: &'static str) -> Result<u64, RelayError> {
    b.try_get_u64().map_err(|_| RelayError::Malformed(what))
}

fn take_short_bytes(b: &mut Bytes) -> Result<Bytes, RelayError> {
    let n = usize::from(take_u16(b, "tracks")?);
    if b.remaining() < n {
        return Err(RelayError::Malformed("tracks"));
    }
    Ok(b.split_to(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::test_support::av_tracks;

    fn roundtrip(msgs: &[Message]) -> Vec<Message> {
        let mut wire = BytesMut::new();
        for m in msgs {
            encode(m, &mut wire);
        }
        // Fed one byte at a time: no message is produced before it is complete.
        let mut d = Decoder::new();
        let mut out = vec![];
        for byte in wire.iter() {
            d.push(&[*byte]);
            while let Some(m) = d.decode().unwrap() {
                out.push(m);
            }
        }
        out
    }

    #[test]
    fn every_message_survives_the_wire() {
        let mut tracks = av_tracks();
        tracks.list.push(Track {
            id: TrackId(2),
            timescale: 48_000,
            codec: CodecConfig::Opus(OpusConfig::webrtc()),
        });
        tracks.list.push(Track {
            id: TrackId(3),
            timescale: 1000,
            codec: CodecConfig::Jpeg {
                width: 640,
                height: 480,
            },
        });
        let frame = Frame {
            track: TrackId(0),
            pts: (1 << 40) + 66,
            dts: -33,
            keyframe: true,
            data: Bytes::from_static(b"\x00\x00\x00\x01\x65abc"),
        };
        let msgs = vec![
            Message::Hello {
                epoch: 7,
                node: "node-a".into(),
            },
            Message::Tracks(tracks),
            Message::Frame(frame.clone()),
            Message::Keyframe,
            Message::Ping,
            Message::End("publisher left".into()),
        ];
        assert_eq!(roundtrip(&msgs), msgs);
        // The split header is the encoder's header.
        let mut wire = BytesMut::new();
        encode(&Message::Frame(frame.clone()), &mut wire);
        assert_eq!(&wire[..23], &frame_header(&frame)[..]);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut d = Decoder::new();
        d.push(&[0, 0, 0, 0]);
        assert_eq!(d.decode(), Err(RelayError::Length(0)));
        let mut d = Decoder::new();
        d.push(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.decode(), Err(RelayError::Length(_))));
        let mut d = Decoder::new();
        d.push(&[0, 0, 0, 1, 99]);
        assert_eq!(d.decode(), Err(RelayError::Type(99)));
        let mut d = Decoder::new();
        d.push(&[0, 0, 0, 3, FRAME, 0, 1]);
        assert_eq!(d.decode(), Err(RelayError::Malformed("frame")));
        let mut d = Decoder::new();
        d.push(&[0, 0, 0, 6, TRACKS, 1, 0, 0, 0, 0]);
        assert!(d.decode().is_err());
    }
}
