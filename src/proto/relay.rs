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
//! - `HLS_WANT` (relay → owner): this node serves the stream's LL-HLS and wants the owner's
//!   packaging (below) rather than packaging its own, so that every node names segments and
//!   parts alike; the body is empty or an [`HlsSeed`] in JSON (where this node's playlist
//!   stands, for an owner that has no playlist of the stream yet: after a failover its
//!   playlist continues this one's).
//! - `HLS` (owner → relay): an [`HlsUpdate`]: `u32 length | JSON` (the playlist model and
//!   what the blobs are), then each blob (init segment or part, in the order the JSON lists
//!   them) as `u32 length | bytes`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::media::aac::AacConfig;
use crate::media::av1::Av1Config;
use crate::media::h264::AvcConfig;
use crate::media::hevc::HevcConfig;
use crate::media::opus::OpusConfig;
use crate::media::vp9::Vp9Config;
use crate::media::{CodecConfig, Frame, Track, TrackId, Tracks};
use crate::proto::playlist::{MediaPlaylist, Variant};

/// Largest message accepted (a frame of a 4K keyframe fits many times over; an LL-HLS
/// update of about 4 MiB plus one segment).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

const HELLO: u8 = 1;
const TRACKS: u8 = 2;
const FRAME: u8 = 3;
const KEYFRAME: u8 = 4;
const PING: u8 = 5;
const END: u8 = 6;
const HLS_WANT: u8 = 7;
const HLS: u8 = 8;

const H264: u8 = 1;
const AAC: u8 = 2;
const OPUS: u8 = 3;
const JPEG: u8 = 4;
const HEVC: u8 = 5;
const AV1: u8 = 6;
const VP9: u8 = 7;

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
    /// The owner's LL-HLS packaging is wanted (relay → owner).
    HlsWant(Option<HlsSeed>),
    /// A change of the owner's LL-HLS packaging (owner → relay).
    Hls(Box<HlsUpdate>),
}

/// Where a node's copy of a playlist stands: what an owner with no playlist of the stream
/// continues from (same run, later msns, one more discontinuity), so that after a failover
/// names never stand for two objects and the media sequence never goes back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HlsSeed {
    /// The playlist's run id (hex).
    pub run: String,
    /// The first msn the continuation may use.
    pub next_msn: u64,
    /// The discontinuity sequence number of the last segment listed.
    pub discontinuity_sequence: u64,
    /// The first init id the continuation may use.
    pub next_init_id: u32,
}

/// A segment the owner closed since the last update, with the parts of it not sent yet.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClosedSegment {
    /// Its msn.
    pub msn: u64,
    /// Its init segment.
    pub init_id: u32,
    /// Its duration, seconds.
    pub duration: f64,
    /// Index of its first part in this update (the earlier ones came while it was open).
    pub first_part: usize,
    /// How many of its parts this update carries.
    pub parts: usize,
}

/// One change of the owner's packaging: the whole playlist model (small) and the bytes that
/// are new since the last update (init segments and parts).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HlsUpdate {
    /// Forget what was mirrored before (the first update, or a new playlist on the owner).
    pub reset: bool,
    /// The owner's playlist model as it is now.
    pub playlist: MediaPlaylist,
    /// The multivariant entry (before its bandwidth is measured).
    pub variant: Option<Variant>,
    /// Ids of the new init segments, first in `data`.
    pub inits: Vec<u32>,
    /// Segments closed since the last update, oldest first, each with its new parts.
    pub closed: Vec<ClosedSegment>,
    /// Index of the first new part of the open segment.
    pub open_first_part: usize,
    /// How many new parts of the open segment follow in `data`.
    pub open_parts: usize,
    /// The blobs: inits, then the closed segments' parts, then the open segment's.
    #[serde(skip)]
    pub data: Vec<Bytes>,
}

impl HlsUpdate {
    /// How many blobs the JSON announces (`None` on overflow).
    fn blobs(&self) -> Option<usize> {
        self.closed
            .iter()
            .try_fold(self.inits.len(), |n, c| n.checked_add(c.parts))?
            .checked_add(self.open_parts)
    }
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
                    CodecConfig::Hevc(c) => {
                        out.put_u8(HEVC);
                        put_short_bytes(out, &c.raw);
                    }
                    // AV1 and VP9 records may lack the picture size a keyframe gave: send it.
                    CodecConfig::Av1(c) => {
                        out.put_u8(AV1);
                        put_short_bytes(out, &c.raw);
                        out.put_u32(c.width);
                        out.put_u32(c.height);
                    }
                    CodecConfig::Vp9(c) => {
                        out.put_u8(VP9);
                        put_short_bytes(out, &c.raw);
                        out.put_u32(c.width);
                        out.put_u32(c.height);
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
        Message::HlsWant(seed) => {
            out.put_u8(HLS_WANT);
            if let Some(seed) = seed {
                // Plain data: serializing it cannot fail.
                let _ = serde_json::to_writer((&mut *out).writer(), seed);
            }
        }
        Message::Hls(update) => {
            out.put_u8(HLS);
            let meta = serde_json::to_vec(update).unwrap_or_default();
            out.put_u32(meta.len() as u32);
            out.put_slice(&meta);
            for blob in &update.data {
                out.put_u32(blob.len() as u32);
                out.put_slice(blob);
            }
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
                    HEVC => CodecConfig::Hevc(
                        HevcConfig::parse(take_short_bytes(&mut b)?)
                            .map_err(|e| RelayError::Codec(id, e.to_string()))?,
                    ),
                    AV1 => {
                        let mut c = Av1Config::parse(take_short_bytes(&mut b)?)
                            .map_err(|e| RelayError::Codec(id, e.to_string()))?;
                        c.width = take_u32(&mut b, "tracks")?;
                        c.height = take_u32(&mut b, "tracks")?;
                        CodecConfig::Av1(c)
                    }
                    VP9 => {
                        let mut c = Vp9Config::parse(take_short_bytes(&mut b)?)
                            .map_err(|e| RelayError::Codec(id, e.to_string()))?;
                        c.width = take_u32(&mut b, "tracks")?;
                        c.height = take_u32(&mut b, "tracks")?;
                        CodecConfig::Vp9(c)
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
        HLS_WANT if b.is_empty() => Ok(Message::HlsWant(None)),
        HLS_WANT => serde_json::from_slice(&b)
            .map(|seed| Message::HlsWant(Some(seed)))
            .map_err(|_| RelayError::Malformed("hls want")),
        HLS => {
            let n = take_u32(&mut b, "hls")? as usize;
            if b.remaining() < n {
                return Err(RelayError::Malformed("hls"));
            }
            let meta = b.split_to(n);
            let mut update: HlsUpdate =
                serde_json::from_slice(&meta).map_err(|_| RelayError::Malformed("hls"))?;
            while b.has_remaining() {
                let n = take_u32(&mut b, "hls")? as usize;
                if b.remaining() < n {
                    return Err(RelayError::Malformed("hls"));
                }
                update.data.push(b.split_to(n));
            }
            if update.blobs() != Some(update.data.len()) {
                return Err(RelayError::Malformed("hls"));
            }
            Ok(Message::Hls(Box::new(update)))
        }
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
        // HEVC, AV1 and VP9 (with the size a keyframe taught it) cross the wire too.
        for (i, t) in crate::media::test_support::enhanced_tracks()
            .list
            .into_iter()
            .filter(|t| t.kind() == crate::media::TrackKind::Video)
            .enumerate()
        {
            tracks.list.push(Track {
                id: TrackId(4 + i as u8),
                ..t
            });
        }
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
            Message::HlsWant(None),
            Message::HlsWant(Some(HlsSeed {
                run: "0a1b2c3d".into(),
                next_msn: 12,
                discontinuity_sequence: 2,
                next_init_id: 3,
            })),
            Message::Hls(Box::new(hls_update())),
        ];
        assert_eq!(roundtrip(&msgs), msgs);
        // The split header is the encoder's header.
        let mut wire = BytesMut::new();
        encode(&Message::Frame(frame.clone()), &mut wire);
        assert_eq!(&wire[..23], &frame_header(&frame)[..]);
    }

    fn hls_update() -> HlsUpdate {
        use crate::proto::playlist::{OpenSegment, PartEntry, SegmentEntry};
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let part = |independent| PartEntry {
            duration: 0.2002,
            independent,
        };
        HlsUpdate {
            reset: true,
            playlist: MediaPlaylist {
                part_target: 0.2,
                segment_target: 2.0,
                discontinuity_sequence: 1,
                segments: vec![SegmentEntry {
                    msn: 4,
                    duration: 2.0021,
                    program_date_time: t,
                    discontinuity: true,
                    init_id: 1,
                    parts: vec![part(true), part(false)],
                }],
                open: Some(OpenSegment {
                    msn: 5,
                    program_date_time: t,
                    discontinuity: false,
                    init_id: 1,
                    parts: vec![part(true)],
                }),
                ended: false,
                longest_segment: 2.0021,
                prefix: "0a1b2c3d-".into(),
            },
            variant: None,
            inits: vec![1],
            closed: vec![ClosedSegment {
                msn: 4,
                init_id: 1,
                duration: 2.0021,
                first_part: 0,
                parts: 2,
            }],
            open_first_part: 0,
            open_parts: 1,
            data: vec![
                Bytes::from_static(b"init"),
                Bytes::from_static(b"part 4.0"),
                Bytes::from_static(b""),
                Bytes::from_static(b"part 5.0"),
            ],
        }
    }

    #[test]
    fn the_fuzz_seeds_are_valid_messages() {
        let mut d = Decoder::new();
        d.push(include_bytes!("../../fuzz/seeds/relay/hls_update"));
        let Some(Message::Hls(u)) = d.decode().unwrap() else {
            panic!("an HLS update")
        };
        assert_eq!(u.data.len(), 3);
        assert_eq!(u.playlist.prefix, "0a1b2c3d-");
        let mut d = Decoder::new();
        d.push(include_bytes!("../../fuzz/seeds/relay/hls_want"));
        assert!(matches!(d.decode(), Ok(Some(Message::HlsWant(Some(_))))));
        assert_eq!(d.decode(), Ok(Some(Message::HlsWant(None))));
    }

    #[test]
    fn an_hls_update_must_bring_the_blobs_it_names() {
        let mut update = hls_update();
        update.data.pop();
        let mut wire = BytesMut::new();
        encode(&Message::Hls(Box::new(update)), &mut wire);
        let mut d = Decoder::new();
        d.push(&wire);
        assert_eq!(d.decode(), Err(RelayError::Malformed("hls")));
        let mut d = Decoder::new();
        d.push(&[0, 0, 0, 3, HLS_WANT, b'{', b'}']);
        assert_eq!(d.decode(), Err(RelayError::Malformed("hls want")));
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
