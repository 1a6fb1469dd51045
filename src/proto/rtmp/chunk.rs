//! RTMP chunk stream layer: turns the byte stream of a connection (after the
//! handshake) into whole [`RawMessage`]s, and turns outgoing messages back
//! into chunks. It owns the per-chunk-stream header state, the partial
//! payload of every interleaved message, the incoming chunk size and the
//! protocol control messages that change how chunks are read (SetChunkSize,
//! Abort). It is sans-IO: the connection task pushes socket bytes into a
//! [`ChunkReader`] and writes what a [`ChunkWriter`] appends to a buffer; the
//! message layer (`crate::proto::rtmp::message`) interprets the messages.
//!
//! Every length and count in here comes from the peer, so nothing is indexed
//! unchecked, nothing is reserved from a declared length, and a chunk is only
//! parsed once its header and payload slice are fully buffered.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Chunk size every RTMP connection starts with, in both directions.
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// Largest valid chunk size (and largest message length a header can carry).
pub const MAX_CHUNK_SIZE: u32 = 0xFF_FFFF;
/// Smallest chunk stream id a message may use (0 and 1 select longer forms).
pub const MIN_CSID: u32 = 2;
/// Largest chunk stream id expressible in the 3-byte basic header.
pub const MAX_CSID: u32 = 65_599;
/// Most distinct chunk streams a peer may use on one connection.
pub const MAX_CHUNK_STREAMS: usize = 1024;
/// Most messages that may be partially received at the same time.
pub const MAX_PARTIAL_MESSAGES: usize = 64;

/// 24-bit timestamp field value announcing a 4-byte extended timestamp.
const EXTENDED_TIMESTAMP: u32 = 0xFF_FFFF;
/// Message type of SetChunkSize, which the reader applies itself.
const TYPE_SET_CHUNK_SIZE: u8 = 1;
/// Message type of Abort, which the reader applies itself.
const TYPE_ABORT: u8 = 2;

/// Errors of the chunk layer; all are fatal for the connection.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ChunkError {
    /// A chunk size outside `1..=0xFFFFFF` was requested.
    #[error("chunk size {0} is outside 1..=16777215")]
    InvalidChunkSize(u32),
    /// A message header declared more bytes than the reader accepts.
    #[error("message of {declared} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Length declared by the peer.
        declared: u32,
        /// The reader's limit.
        max: u32,
    },
    /// A format 1, 2 or 3 chunk arrived on a chunk stream with no prior header.
    #[error("format {fmt} chunk on chunk stream {csid}, which has no previous header")]
    UnknownChunkStream {
        /// Chunk stream id.
        csid: u32,
        /// Header format (1, 2 or 3).
        fmt: u8,
    },
    /// A format 0, 1 or 2 header arrived while a message on that chunk stream
    /// was still incomplete.
    #[error("format {fmt} header on chunk stream {csid} while a message is incomplete")]
    HeaderMidMessage {
        /// Chunk stream id.
        csid: u32,
        /// Header format (0, 1 or 2).
        fmt: u8,
    },
    /// The peer used more than [`MAX_CHUNK_STREAMS`] chunk stream ids.
    #[error("more than {0} chunk streams in use")]
    TooManyChunkStreams(usize),
    /// The peer interleaved more than [`MAX_PARTIAL_MESSAGES`] messages.
    #[error("more than {0} partially received messages")]
    TooManyPartialMessages(usize),
    /// A SetChunkSize or Abort message had fewer than 4 payload bytes.
    #[error("control message type {type_id} has {len} payload bytes, expected 4")]
    BadControlMessage {
        /// Message type id (1 or 2).
        type_id: u8,
        /// Payload length received.
        len: usize,
    },
}

/// One complete message as reassembled from chunks, not yet interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// Chunk stream the message arrived on.
    pub csid: u32,
    /// Absolute timestamp in milliseconds (deltas are added with wrapping).
    pub timestamp: u32,
    /// RTMP message type id.
    pub type_id: u8,
    /// Message stream id (0 for connection-level messages).
    pub stream_id: u32,
    /// The message body.
    pub payload: Bytes,
}

/// Message header as resolved for one chunk stream.
#[derive(Debug, Clone, Copy, Default)]
struct MessageHeader {
    /// Absolute timestamp of the current message.
    timestamp: u32,
    /// Delta reused by a format 3 chunk that starts a new message.
    delta: u32,
    /// Declared payload length.
    length: u32,
    /// Message type id.
    type_id: u8,
    /// Message stream id.
    stream_id: u32,
    /// Whether the last format 0/1/2 header used an extended timestamp.
    extended: bool,
}

/// Everything remembered about one chunk stream id.
#[derive(Debug, Default)]
struct StreamState {
    /// Header of the current (or last) message.
    header: MessageHeader,
    /// Whether a message has started and not yet completed.
    in_progress: bool,
    /// Payload received so far of the current message; grows per chunk.
    partial: BytesMut,
}

impl StreamState {
    /// Payload bytes still missing from the current message.
    fn remaining(&self) -> usize {
        usize_from(self.header.length).saturating_sub(self.partial.len())
    }

    /// Builds the finished message from this stream's header.
    fn message(&self, csid: u32, payload: Bytes) -> RawMessage {
        RawMessage {
            csid,
            timestamp: self.header.timestamp,
            type_id: self.header.type_id,
            stream_id: self.header.stream_id,
            payload,
        }
    }
}

/// Fields present in a message header, by format.
#[derive(Debug, Default)]
struct Fields {
    /// Timestamp or delta (24-bit field, or the extended value).
    ts: Option<u32>,
    /// Message length (formats 0 and 1).
    length: Option<u32>,
    /// Message type id (formats 0 and 1).
    type_id: Option<u8>,
    /// Message stream id (format 0).
    stream_id: Option<u32>,
}

/// What a fully buffered chunk does.
#[derive(Debug)]
enum ChunkKind {
    /// Starts a new message with this header.
    Start(MessageHeader),
    /// Continues the message in progress.
    Continue,
}

/// A chunk whose header and payload are both in the input buffer.
#[derive(Debug)]
struct Chunk {
    /// Chunk stream id.
    csid: u32,
    /// Bytes of basic header, message header and extended timestamp.
    header_len: usize,
    /// Payload bytes carried by this chunk.
    payload_len: usize,
    /// Whether the chunk starts or continues a message.
    kind: ChunkKind,
}

/// Reassembles RTMP messages from received bytes.
#[derive(Debug)]
pub struct ChunkReader {
    /// Received bytes not yet parsed.
    buf: BytesMut,
    /// Current incoming chunk size.
    chunk_size: u32,
    /// Largest message length accepted.
    max_message_bytes: u32,
    /// Per chunk stream id state.
    streams: HashMap<u32, StreamState>,
    /// Total bytes pushed, for acknowledgements.
    bytes_received: u64,
    /// Number of streams with `in_progress` set.
    partial_messages: usize,
    /// Most messages partially received at once.
    max_partial: usize,
}

impl ChunkReader {
    /// Creates a reader with chunk size 128 that rejects messages declaring
    /// more than `max_message_bytes` bytes.
    pub fn new(max_message_bytes: u32) -> Self {
        Self {
            buf: BytesMut::new(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_message_bytes,
            streams: HashMap::new(),
            bytes_received: 0,
            partial_messages: 0,
            max_partial: MAX_PARTIAL_MESSAGES,
        }
    }

    /// Changes the largest message and the most partial messages accepted from now on (a
    /// server keeps both small until a publisher is accepted: an unauthenticated peer then
    /// cannot make it buffer much).
    pub fn set_limits(&mut self, max_message_bytes: u32, max_partial: usize) {
        self.max_message_bytes = max_message_bytes;
        self.max_partial = max_partial.clamp(1, MAX_PARTIAL_MESSAGES);
    }

    /// Appends bytes read from the socket.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        self.bytes_received = self.bytes_received.saturating_add(len);
    }

    /// Returns the next complete message, `Ok(None)` if more bytes are
    /// needed. SetChunkSize and Abort are applied before being returned.
    ///
    /// # Errors
    /// Any [`ChunkError`]; all are protocol violations after which the
    /// connection should be closed (the reader's state is then unspecified).
    pub fn read_message(&mut self) -> Result<Option<RawMessage>, ChunkError> {
        while let Some(chunk) = self.next_chunk()? {
            if let Some(msg) = self.consume_chunk(chunk)? {
                self.apply_control(&msg)?;
                return Ok(Some(msg));
            }
        }
        Ok(None)
    }

    /// Current incoming chunk size.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Sets the incoming chunk size; valid sizes are `1..=0xFFFFFF`.
    ///
    /// # Errors
    /// [`ChunkError::InvalidChunkSize`] outside that range.
    pub fn set_chunk_size(&mut self, size: u32) -> Result<(), ChunkError> {
        if !(1..=MAX_CHUNK_SIZE).contains(&size) {
            return Err(ChunkError::InvalidChunkSize(size));
        }
        self.chunk_size = size;
        Ok(())
    }

    /// Total bytes pushed so far.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Bytes waiting in the input buffer.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Parses the next chunk without consuming it; `None` until it is whole.
    fn next_chunk(&self) -> Result<Option<Chunk>, ChunkError> {
        let mut cur = Cursor::new(&self.buf);
        let Some((fmt, csid)) = read_basic_header(&mut cur) else {
            return Ok(None);
        };
        let prev = self.streams.get(&csid);
        let Some(kind) = read_chunk_kind(&mut cur, fmt, csid, prev)? else {
            return Ok(None);
        };
        let remaining = match (&kind, prev) {
            (ChunkKind::Start(header), _) => self.checked_length(header.length)?,
            (ChunkKind::Continue, Some(state)) => state.remaining(),
            (ChunkKind::Continue, None) => 0,
        };
        let payload_len = remaining.min(usize_from(self.chunk_size));
        let header_len = cur.pos;
        if self.buf.len().saturating_sub(header_len) < payload_len {
            return Ok(None);
        }
        Ok(Some(Chunk {
            csid,
            header_len,
            payload_len,
            kind,
        }))
    }

    /// Rejects lengths above the configured maximum.
    fn checked_length(&self, length: u32) -> Result<usize, ChunkError> {
        if length > self.max_message_bytes {
            return Err(ChunkError::MessageTooLarge {
                declared: length,
                max: self.max_message_bytes,
            });
        }
        Ok(usize_from(length))
    }

    /// Consumes a buffered chunk; returns the message it completes, if any.
    fn consume_chunk(&mut self, chunk: Chunk) -> Result<Option<RawMessage>, ChunkError> {
        let whole = match chunk.kind {
            ChunkKind::Start(header) => {
                let whole = usize_from(header.length) == chunk.payload_len;
                self.begin_message(chunk.csid, header, whole)?;
                whole
            }
            ChunkKind::Continue => false,
        };
        // next_chunk checked that the header and payload are both buffered.
        self.buf.advance(chunk.header_len);
        let data = self.buf.split_to(chunk.payload_len);
        let Some(state) = self.streams.get_mut(&chunk.csid) else {
            return Ok(None);
        };
        if whole {
            return Ok(Some(state.message(chunk.csid, data.freeze())));
        }
        state.partial.extend_from_slice(&data);
        if state.remaining() > 0 {
            return Ok(None);
        }
        state.in_progress = false;
        self.partial_messages = self.partial_messages.saturating_sub(1);
        let payload = state.partial.split().freeze();
        Ok(Some(state.message(chunk.csid, payload)))
    }

    /// Records a new message header on `csid`, enforcing the stream caps.
    fn begin_message(
        &mut self,
        csid: u32,
        header: MessageHeader,
        whole: bool,
    ) -> Result<(), ChunkError> {
        if !self.streams.contains_key(&csid) && self.streams.len() >= MAX_CHUNK_STREAMS {
            return Err(ChunkError::TooManyChunkStreams(MAX_CHUNK_STREAMS));
        }
        if !whole {
            if self.partial_messages >= self.max_partial {
                return Err(ChunkError::TooManyPartialMessages(self.max_partial));
            }
            self.partial_messages = self.partial_messages.saturating_add(1);
        }
        let state = self.streams.entry(csid).or_default();
        state.header = header;
        state.in_progress = !whole;
        state.partial = BytesMut::new();
        Ok(())
    }

    /// Applies SetChunkSize and Abort as soon as they are complete.
    fn apply_control(&mut self, msg: &RawMessage) -> Result<(), ChunkError> {
        match msg.type_id {
            TYPE_SET_CHUNK_SIZE => self.set_chunk_size(control_value(msg)? & 0x7FFF_FFFF),
            TYPE_ABORT => {
                self.abort(control_value(msg)?);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Drops the partial message on `csid`, keeping its header state.
    fn abort(&mut self, csid: u32) {
        if let Some(state) = self.streams.get_mut(&csid).filter(|s| s.in_progress) {
            state.in_progress = false;
            state.partial = BytesMut::new();
            self.partial_messages = self.partial_messages.saturating_sub(1);
        }
    }

    /// Total capacity held by partial payload buffers (for memory tests).
    #[cfg(test)]
    fn partial_capacity(&self) -> usize {
        self.streams.values().map(|s| s.partial.capacity()).sum()
    }
}

/// Reads the big-endian u32 that SetChunkSize and Abort carry.
fn control_value(msg: &RawMessage) -> Result<u32, ChunkError> {
    msg.payload
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or(ChunkError::BadControlMessage {
            type_id: msg.type_id,
            len: msg.payload.len(),
        })
}

/// Reads the basic header: `(fmt, csid)`, or `None` if incomplete.
fn read_basic_header(cur: &mut Cursor<'_>) -> Option<(u8, u32)> {
    let first = cur.u8()?;
    let csid = match first & 0x3F {
        0 => 64 + u32::from(cur.u8()?),
        1 => 64 + u32::from(u16::from_le_bytes(cur.take::<2>()?)),
        id => u32::from(id),
    };
    Some((first >> 6, csid))
}

/// Reads the message header and extended timestamp and decides whether the
/// chunk starts or continues a message. `Ok(None)` if incomplete.
fn read_chunk_kind(
    cur: &mut Cursor<'_>,
    fmt: u8,
    csid: u32,
    prev: Option<&StreamState>,
) -> Result<Option<ChunkKind>, ChunkError> {
    let in_progress = prev.is_some_and(|s| s.in_progress);
    if fmt != 0 && prev.is_none() {
        return Err(ChunkError::UnknownChunkStream { csid, fmt });
    }
    if fmt != 3 && in_progress {
        return Err(ChunkError::HeaderMidMessage { csid, fmt });
    }
    let Some(mut fields) = read_fields(cur, fmt) else {
        return Ok(None);
    };
    let base = prev.map(|s| s.header).unwrap_or_default();
    let extended = fields
        .ts
        .map_or(base.extended, |ts| ts == EXTENDED_TIMESTAMP);
    if extended {
        let Some(ext) = cur.u32_be() else {
            return Ok(None);
        };
        fields.ts = Some(ext);
    }
    if in_progress {
        return Ok(Some(ChunkKind::Continue));
    }
    Ok(Some(ChunkKind::Start(resolve_header(
        fmt, base, &fields, extended,
    ))))
}

/// Reads the fixed message header fields of format `fmt`.
fn read_fields(cur: &mut Cursor<'_>, fmt: u8) -> Option<Fields> {
    let mut fields = Fields::default();
    if fmt <= 2 {
        fields.ts = Some(cur.u24_be()?);
    }
    if fmt <= 1 {
        fields.length = Some(cur.u24_be()?);
        fields.type_id = Some(cur.u8()?);
    }
    if fmt == 0 {
        fields.stream_id = Some(cur.u32_le()?);
    }
    Some(fields)
}

/// Combines a new message's header fields with the previous header.
/// Format 0 carries an absolute timestamp, which also becomes the delta a
/// following format 3 message reuses (as the RTMP specification says).
fn resolve_header(fmt: u8, base: MessageHeader, fields: &Fields, extended: bool) -> MessageHeader {
    let delta = fields.ts.unwrap_or(base.delta);
    let timestamp = if fmt == 0 {
        delta
    } else {
        base.timestamp.wrapping_add(delta)
    };
    MessageHeader {
        timestamp,
        delta,
        length: fields.length.unwrap_or(base.length),
        type_id: fields.type_id.unwrap_or(base.type_id),
        stream_id: fields.stream_id.unwrap_or(base.stream_id),
        extended,
    }
}

/// Converts a 32-bit length to `usize`, saturating on exotic targets.
fn usize_from(value: u32) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// Non-consuming reader over the input buffer.
struct Cursor<'a> {
    /// The buffered bytes.
    data: &'a [u8],
    /// Bytes read so far.
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// Starts at the beginning of `data`.
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// Reads `N` bytes, or `None` if fewer are buffered.
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let end = self.pos.checked_add(N)?;
        let bytes = <[u8; N]>::try_from(self.data.get(self.pos..end)?).ok()?;
        self.pos = end;
        Some(bytes)
    }

    /// Reads one byte.
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }

    /// Reads a big-endian 24-bit value.
    fn u24_be(&mut self) -> Option<u32> {
        self.take::<3>()
            .map(|[a, b, c]| u32::from_be_bytes([0, a, b, c]))
    }

    /// Reads a big-endian u32.
    fn u32_be(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_be_bytes)
    }

    /// Reads a little-endian u32 (the message stream id).
    fn u32_le(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_le_bytes)
    }
}

/// Splits outgoing messages into chunks.
#[derive(Debug, Clone)]
pub struct ChunkWriter {
    /// Current outgoing chunk size.
    chunk_size: u32,
}

impl Default for ChunkWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkWriter {
    /// Creates a writer with the default chunk size of 128.
    pub fn new() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }

    /// Current outgoing chunk size.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Changes the outgoing chunk size, clamped to `1..=0xFFFFFF`. Send the
    /// SetChunkSize message (with the old size) before calling this.
    pub fn set_chunk_size(&mut self, size: u32) {
        self.chunk_size = size.clamp(1, MAX_CHUNK_SIZE);
    }

    /// Appends one message as a format 0 chunk plus format 3 continuations.
    /// `csid` is clamped to `2..=65599`. A payload longer than `0xFFFFFF`
    /// bytes cannot be expressed; it is a caller bug and nothing is written.
    pub fn write_message(
        &mut self,
        out: &mut BytesMut,
        csid: u32,
        timestamp: u32,
        type_id: u8,
        stream_id: u32,
        payload: &[u8],
    ) {
        self.write_message_parts(out, csid, timestamp, type_id, stream_id, &[], payload);
    }

    /// [`Self::write_message`] of the payload `head` followed by `body`, without joining
    /// them first (an FLV tag header in front of a shared frame buffer).
    #[allow(clippy::too_many_arguments)]
    pub fn write_message_parts(
        &mut self,
        out: &mut BytesMut,
        csid: u32,
        timestamp: u32,
        type_id: u8,
        stream_id: u32,
        head: &[u8],
        body: &[u8],
    ) {
        let total = head.len() + body.len();
        debug_assert!(total <= usize_from(MAX_CHUNK_SIZE), "RTMP payload too long");
        debug_assert!(
            (MIN_CSID..=MAX_CSID).contains(&csid),
            "invalid chunk stream id"
        );
        let Some(length) = u32::try_from(total).ok().filter(|l| *l <= MAX_CHUNK_SIZE) else {
            return;
        };
        let csid = csid.clamp(MIN_CSID, MAX_CSID);
        let extended = timestamp >= EXTENDED_TIMESTAMP;
        let chunk = usize_from(self.chunk_size).max(1);
        // Headers: 18 bytes for the first chunk, up to 7 for each continuation.
        out.reserve(total + 18 + total / chunk * 7);
        write_basic_header(out, 0, csid);
        out.put_uint(u64::from(timestamp.min(EXTENDED_TIMESTAMP)), 3);
        out.put_uint(u64::from(length), 3);
        out.put_u8(type_id);
        out.put_u32_le(stream_id);
        let mut pos = 0;
        loop {
            if pos > 0 {
                write_basic_header(out, 3, csid);
            }
            if extended {
                out.put_u32(timestamp);
            }
            let end = (pos + chunk).min(total);
            if pos < head.len() {
                out.put_slice(&head[pos..end.min(head.len())]);
            }
            if end > head.len() {
                out.put_slice(&body[pos.max(head.len()) - head.len()..end - head.len()]);
            }
            pos = end;
            if pos >= total {
                break;
            }
        }
    }
}

/// Writes the 1, 2 or 3 byte basic header for a csid in `2..=65599`.
fn write_basic_header(out: &mut BytesMut, fmt: u8, csid: u32) {
    let fmt_bits = fmt << 6;
    match csid {
        0..=63 => out.put_u8(fmt_bits | u8::try_from(csid).unwrap_or(0)),
        64..=319 => {
            out.put_u8(fmt_bits);
            out.put_u8(u8::try_from(csid.saturating_sub(64)).unwrap_or(0));
        }
        _ => {
            out.put_u8(fmt_bits | 1);
            out.put_u16_le(u16::try_from(csid.saturating_sub(64)).unwrap_or(u16::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic xorshift generator for property and garbage tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn raw(csid: u32, timestamp: u32, type_id: u8, stream_id: u32, payload: &[u8]) -> RawMessage {
        RawMessage {
            csid,
            timestamp,
            type_id,
            stream_id,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    /// fmt 0 header on a 1-byte csid.
    fn fmt0(csid: u8, ts: u32, len: u32, type_id: u8, stream_id: u32) -> Vec<u8> {
        let mut v = vec![csid];
        v.extend_from_slice(&ts.to_be_bytes()[1..]);
        v.extend_from_slice(&len.to_be_bytes()[1..]);
        v.push(type_id);
        v.extend_from_slice(&stream_id.to_le_bytes());
        v
    }

    fn fmt1(csid: u8, delta: u32, len: u32, type_id: u8) -> Vec<u8> {
        let mut v = vec![0x40 | csid];
        v.extend_from_slice(&delta.to_be_bytes()[1..]);
        v.extend_from_slice(&len.to_be_bytes()[1..]);
        v.push(type_id);
        v
    }

    fn fmt2(csid: u8, delta: u32) -> Vec<u8> {
        let mut v = vec![0x80 | csid];
        v.extend_from_slice(&delta.to_be_bytes()[1..]);
        v
    }

    fn read_all(reader: &mut ChunkReader) -> Vec<RawMessage> {
        let mut out = Vec::new();
        while let Some(msg) = reader.read_message().unwrap() {
            out.push(msg);
        }
        out
    }

    fn feed(bytes: &[u8]) -> Result<Vec<RawMessage>, ChunkError> {
        let mut reader = ChunkReader::new(1 << 20);
        reader.push(bytes);
        let mut out = Vec::new();
        while let Some(msg) = reader.read_message()? {
            out.push(msg);
        }
        Ok(out)
    }

    #[test]
    fn fmt0_single_chunk() {
        let mut bytes = fmt0(3, 1000, 5, 20, 1);
        bytes.extend_from_slice(b"hello");
        assert_eq!(feed(&bytes).unwrap(), vec![raw(3, 1000, 20, 1, b"hello")]);
    }

    #[test]
    fn fmt1_fmt2_fmt3_deltas() {
        let mut b = fmt0(4, 100, 2, 8, 1);
        b.extend_from_slice(b"aa");
        b.extend(fmt1(4, 20, 3, 9));
        b.extend_from_slice(b"bbb");
        b.extend(fmt2(4, 30));
        b.extend_from_slice(b"ccc");
        b.push(0xC0 | 4); // fmt 3 starting a new message reuses delta 30
        b.extend_from_slice(b"ddd");
        let got = feed(&b).unwrap();
        assert_eq!(
            got,
            vec![
                raw(4, 100, 8, 1, b"aa"),
                raw(4, 120, 9, 1, b"bbb"),
                raw(4, 150, 9, 1, b"ccc"),
                raw(4, 180, 9, 1, b"ddd"),
            ]
        );
    }

    #[test]
    fn fmt3_after_fmt0_reuses_timestamp_as_delta() {
        let mut b = fmt0(5, 40, 1, 8, 1);
        b.push(1);
        b.push(0xC5);
        b.push(2);
        let got = feed(&b).unwrap();
        assert_eq!(got[1].timestamp, 80);
    }

    #[test]
    fn timestamps_wrap() {
        let mut b = fmt0(5, 0xFF_FFFF, 0, 8, 1);
        b.extend_from_slice(&0xFFFF_FFF0u32.to_be_bytes());
        b.extend(fmt2(5, 0x20));
        let got = feed(&b).unwrap();
        assert_eq!(got[0].timestamp, 0xFFFF_FFF0);
        assert_eq!(got[1].timestamp, 0x10);
        assert!(got[1].payload.is_empty());
    }

    #[test]
    fn basic_header_forms() {
        let mut b = vec![0x00, 100 - 64];
        b.extend_from_slice(&fmt0(0, 1, 1, 8, 0)[1..]);
        b.push(b'x');
        let csid = 1000u32 - 64;
        b.extend_from_slice(&[0x01, (csid & 0xFF) as u8, (csid >> 8) as u8]);
        b.extend_from_slice(&fmt0(0, 2, 1, 9, 0)[1..]);
        b.push(b'y');
        let got = feed(&b).unwrap();
        assert_eq!(got, vec![raw(100, 1, 8, 0, b"x"), raw(1000, 2, 9, 0, b"y")]);
    }

    #[test]
    fn writer_csid_forms_round_trip() {
        let mut writer = ChunkWriter::new();
        let mut out = BytesMut::new();
        let csids = [2, 63, 64, 319, 320, 65_599];
        for csid in csids {
            writer.write_message(&mut out, csid, 7, 8, 1, &[1; 300]);
        }
        let got = feed(&out).unwrap();
        assert_eq!(got.iter().map(|m| m.csid).collect::<Vec<_>>(), csids);
    }

    #[test]
    fn extended_timestamp_with_fmt3_continuation() {
        let payload = [7u8; 200];
        let mut b = fmt0(6, 0xFF_FFFF, 200, 9, 1);
        b.extend_from_slice(&0x0100_0000u32.to_be_bytes());
        b.extend_from_slice(&payload[..128]);
        b.push(0xC6);
        b.extend_from_slice(&0x0100_0000u32.to_be_bytes());
        b.extend_from_slice(&payload[128..]);
        assert_eq!(feed(&b).unwrap(), vec![raw(6, 0x0100_0000, 9, 1, &payload)]);
    }

    #[test]
    fn parts_are_chunked_like_the_joined_payload() {
        let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        for chunk_size in [1, 2, 5, 128, 999, 1000, 4096] {
            for split in [0, 1, 4, 5, 6, 127, 128, 129, 500, 1000] {
                for ts in [40, 0x0100_0000] {
                    let mut joined = BytesMut::new();
                    let mut parts = BytesMut::new();
                    let mut w = ChunkWriter::new();
                    w.set_chunk_size(chunk_size);
                    w.write_message(&mut joined, 6, ts, 9, 1, &payload);
                    let (head, body) = payload.split_at(split);
                    w.write_message_parts(&mut parts, 6, ts, 9, 1, head, body);
                    assert_eq!(joined, parts, "chunk {chunk_size} split {split} ts {ts}");
                    if chunk_size == DEFAULT_CHUNK_SIZE {
                        assert_eq!(feed(&parts).unwrap(), vec![raw(6, ts, 9, 1, &payload)]);
                    }
                }
            }
        }
        let mut empty = BytesMut::new();
        ChunkWriter::new().write_message_parts(&mut empty, 6, 0x0100_0000, 9, 1, &[], &[]);
        assert_eq!(empty.len(), 12 + 4);
    }

    #[test]
    fn writer_emits_extended_timestamp_on_continuations() {
        let mut out = BytesMut::new();
        ChunkWriter::new().write_message(&mut out, 6, 0x0100_0000, 9, 1, &[0; 200]);
        // 12 header + 4 ext + 128 payload, then 1 + 4 ext + 72.
        assert_eq!(out.len(), 12 + 4 + 128 + 1 + 4 + 72);
        assert_eq!(out[12 + 4 + 128], 0xC6);
        assert_eq!(&out[12 + 4 + 128 + 1..][..4], &0x0100_0000u32.to_be_bytes());
    }

    #[test]
    fn defect_interleaved_chunk_streams() {
        let video: Vec<u8> = (0..200u8).collect();
        let mut b = fmt0(6, 10, 200, 9, 1);
        b.extend_from_slice(&video[..128]);
        b.extend(fmt0(4, 11, 50, 8, 1));
        b.extend_from_slice(&[0xAA; 50]);
        b.push(0xC6);
        b.extend_from_slice(&video[128..]);
        let got = feed(&b).unwrap();
        assert_eq!(
            got,
            vec![raw(4, 11, 8, 1, &[0xAA; 50]), raw(6, 10, 9, 1, &video)]
        );
    }

    #[test]
    fn defect_fmt1_extended_delta_smaller_than_marker() {
        let mut b = fmt0(4, 1000, 1, 8, 1);
        b.push(0);
        b.extend(fmt1(4, 0xFF_FFFF, 1, 8));
        b.extend_from_slice(&5u32.to_be_bytes());
        b.push(1);
        let got = feed(&b).unwrap();
        assert_eq!(got[1].timestamp, 1005);
    }

    #[test]
    fn defect_huge_declared_length() {
        let header = fmt0(4, 0, MAX_CHUNK_SIZE, 9, 1); // 16 MiB - 1, the 24-bit maximum
        let mut small = ChunkReader::new(1 << 20);
        small.push(&header);
        assert_eq!(
            small.read_message(),
            Err(ChunkError::MessageTooLarge {
                declared: MAX_CHUNK_SIZE,
                max: 1 << 20
            })
        );

        let declared = MAX_CHUNK_SIZE;
        let mut big = ChunkReader::new(u32::MAX);
        big.push(&fmt0(4, 0, declared, 9, 1));
        big.push(&[0; 128]);
        assert_eq!(big.read_message(), Ok(None));
        assert!(big.partial_capacity() < 4096, "{}", big.partial_capacity());
        for _ in 0..10 {
            big.push(&[0xC4]);
            big.push(&[0; 128]);
        }
        assert_eq!(big.read_message(), Ok(None));
        assert!(big.partial_capacity() >= 11 * 128);
        assert!(big.partial_capacity() < 16 * 1024);
    }

    #[test]
    fn chunk_size_validation() {
        let mut reader = ChunkReader::new(1024);
        assert_eq!(
            reader.set_chunk_size(0),
            Err(ChunkError::InvalidChunkSize(0))
        );
        assert_eq!(
            reader.set_chunk_size(1 << 31),
            Err(ChunkError::InvalidChunkSize(1 << 31))
        );
        assert_eq!(
            reader.set_chunk_size(0x100_0000),
            Err(ChunkError::InvalidChunkSize(0x100_0000))
        );
        assert_eq!(reader.set_chunk_size(MAX_CHUNK_SIZE), Ok(()));
        assert_eq!(reader.set_chunk_size(1), Ok(()));
        assert_eq!(reader.chunk_size(), 1);
    }

    #[test]
    fn set_chunk_size_message_is_applied() {
        let mut b = fmt0(2, 0, 4, 1, 0);
        b.extend_from_slice(&0x8000_0100u32.to_be_bytes()); // top bit masked
        b.extend(fmt0(3, 0, 300, 20, 0));
        b.extend_from_slice(&[1; 256]);
        b.push(0xC3);
        b.extend_from_slice(&[1; 44]);
        let mut reader = ChunkReader::new(1 << 20);
        reader.push(&b);
        let got = read_all(&mut reader);
        assert_eq!(reader.chunk_size(), 256);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].payload.len(), 300);
    }

    #[test]
    fn set_chunk_size_message_zero_or_short_is_error() {
        for value in [0u32, 0x8000_0000] {
            let mut b = fmt0(2, 0, 4, 1, 0);
            b.extend_from_slice(&value.to_be_bytes());
            assert_eq!(feed(&b), Err(ChunkError::InvalidChunkSize(0)));
        }
        let mut b = fmt0(2, 0, 2, 1, 0);
        b.extend_from_slice(&[0, 1]);
        assert_eq!(
            feed(&b),
            Err(ChunkError::BadControlMessage { type_id: 1, len: 2 })
        );
    }

    #[test]
    fn abort_drops_partial_message() {
        let mut b = fmt0(6, 0, 200, 9, 1);
        b.extend_from_slice(&[1; 128]);
        b.extend(fmt0(2, 0, 4, 2, 0));
        b.extend_from_slice(&6u32.to_be_bytes());
        b.extend(fmt0(6, 5, 3, 9, 1));
        b.extend_from_slice(b"new");
        let got = feed(&b).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].type_id, 2);
        assert_eq!(got[1], raw(6, 5, 9, 1, b"new"));
    }

    #[test]
    fn protocol_violations_are_errors() {
        assert_eq!(
            feed(&fmt1(9, 0, 1, 8)),
            Err(ChunkError::UnknownChunkStream { csid: 9, fmt: 1 })
        );
        assert_eq!(
            feed(&fmt2(9, 0)),
            Err(ChunkError::UnknownChunkStream { csid: 9, fmt: 2 })
        );
        assert_eq!(
            feed(&[0xC9]),
            Err(ChunkError::UnknownChunkStream { csid: 9, fmt: 3 })
        );
        let mut b = fmt0(6, 0, 200, 9, 1);
        b.extend_from_slice(&[1; 128]);
        b.extend(fmt0(6, 0, 1, 9, 1));
        assert_eq!(
            feed(&b),
            Err(ChunkError::HeaderMidMessage { csid: 6, fmt: 0 })
        );
    }

    #[test]
    fn partial_message_cap() {
        let mut out = BytesMut::new();
        for csid in 0..=MAX_PARTIAL_MESSAGES as u32 {
            let mut b = vec![0x00, csid as u8];
            b.extend_from_slice(&fmt0(0, 0, 200, 9, 1)[1..]);
            b.extend_from_slice(&[0; 128]);
            out.extend_from_slice(&b);
        }
        let err = feed(&out).unwrap_err();
        assert_eq!(
            err,
            ChunkError::TooManyPartialMessages(MAX_PARTIAL_MESSAGES)
        );
    }

    #[test]
    fn aborted_and_completed_messages_free_partial_slots() {
        let mut out = Vec::new();
        for round in 0..3 * MAX_PARTIAL_MESSAGES as u8 {
            let csid = 3 + round % 50;
            out.extend(fmt0(csid, 0, 200, 9, 1));
            out.extend_from_slice(&[0; 128]);
            if round % 2 == 0 {
                out.extend(fmt0(2, 0, 4, 2, 0));
                out.extend_from_slice(&u32::from(csid).to_be_bytes());
            } else {
                out.push(0xC0 | csid);
                out.extend_from_slice(&[0; 72]);
            }
        }
        assert_eq!(feed(&out).unwrap().len(), 3 * MAX_PARTIAL_MESSAGES);
    }

    #[test]
    fn chunk_stream_cap() {
        let mut writer = ChunkWriter::new();
        let mut out = BytesMut::new();
        for csid in 0..=MAX_CHUNK_STREAMS as u32 {
            writer.write_message(&mut out, 2 + csid, 0, 8, 1, b"x");
        }
        assert_eq!(
            feed(&out),
            Err(ChunkError::TooManyChunkStreams(MAX_CHUNK_STREAMS))
        );
    }

    #[test]
    fn counters() {
        let mut reader = ChunkReader::new(1024);
        let mut b = fmt0(3, 0, 4, 20, 0);
        reader.push(&b[..5]);
        assert_eq!(reader.read_message(), Ok(None));
        assert_eq!(reader.buffered(), 5);
        b.extend_from_slice(b"abcd");
        reader.push(&b[5..]);
        assert!(reader.read_message().unwrap().is_some());
        assert_eq!(reader.buffered(), 0);
        assert_eq!(reader.bytes_received(), 16);
    }

    fn sample_messages() -> Vec<RawMessage> {
        let mut rng = Rng(0x1234_5678);
        let lens = [0usize, 1, 2, 7, 127, 128, 129, 1000, 4097, 9000];
        let stamps = [0u32, 1, 0xFF_FFFE, 0xFF_FFFF, 0x0100_0000, u32::MAX];
        let csids = [3u32, 4, 6, 63, 64, 319, 320, 65_599];
        let mut msgs = Vec::new();
        for (i, len) in lens.iter().enumerate() {
            let payload: Vec<u8> = (0..*len).map(|_| rng.next() as u8).collect();
            let csid = csids[i % csids.len()];
            let ts = stamps[i % stamps.len()];
            let type_id = [8, 9, 18, 20][i % 4];
            msgs.push(raw(csid, ts, type_id, i as u32, &payload));
        }
        msgs
    }

    #[test]
    fn round_trip_all_chunk_sizes() {
        let msgs = sample_messages();
        for size in [1u32, 2, 7, 128, 4096, 65_536, MAX_CHUNK_SIZE] {
            let mut writer = ChunkWriter::new();
            writer.set_chunk_size(size);
            let mut out = BytesMut::new();
            for m in &msgs {
                writer.write_message(
                    &mut out,
                    m.csid,
                    m.timestamp,
                    m.type_id,
                    m.stream_id,
                    &m.payload,
                );
            }
            let mut reader = ChunkReader::new(MAX_CHUNK_SIZE);
            reader.set_chunk_size(size).unwrap();
            reader.push(&out);
            assert_eq!(read_all(&mut reader), msgs, "chunk size {size}");

            let mut reader = ChunkReader::new(MAX_CHUNK_SIZE);
            reader.set_chunk_size(size).unwrap();
            let mut got = Vec::new();
            for byte in out.iter() {
                reader.push(&[*byte]);
                got.extend(read_all(&mut reader));
            }
            assert_eq!(got, msgs, "byte at a time, chunk size {size}");
            assert_eq!(reader.bytes_received(), out.len() as u64);
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut valid = BytesMut::new();
        ChunkWriter::new().write_message(&mut valid, 4, 0xFF_FFFF, 8, 1, &[5; 300]);
        for round in 0..10_000 {
            let mut reader = ChunkReader::new(64 * 1024);
            if round % 3 == 0 {
                reader.set_chunk_size(1 + rng.below(300) as u32).unwrap();
            }
            if round % 2 == 0 {
                let cut = rng.below(valid.len() as u64) as usize;
                reader.push(&valid[..cut]);
            }
            let len = rng.below(400) as usize;
            let garbage: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            reader.push(&garbage);
            while let Ok(Some(_)) = reader.read_message() {}
        }
    }
}
