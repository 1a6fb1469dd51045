//! RTMP message layer: interprets a [`RawMessage`] from the chunk reader as a
//! typed [`RtmpMessage`] (protocol control, user control, media, AMF0
//! commands and data), and encodes the messages a server or client sends
//! through a [`ChunkWriter`]. It owns the message type ids and the chunk
//! stream ids used for sending. Connection/session code calls
//! [`RtmpMessage::parse`] for each message read and the `write_*` functions
//! to answer.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::proto::rtmp::amf0::{self, Amf0Error, Amf0Value};
use crate::proto::rtmp::chunk::{ChunkWriter, RawMessage, MAX_CHUNK_SIZE};

/// Message type: set chunk size.
pub const TYPE_SET_CHUNK_SIZE: u8 = 1;
/// Message type: abort message.
pub const TYPE_ABORT: u8 = 2;
/// Message type: acknowledgement.
pub const TYPE_ACKNOWLEDGEMENT: u8 = 3;
/// Message type: user control event.
pub const TYPE_USER_CONTROL: u8 = 4;
/// Message type: window acknowledgement size.
pub const TYPE_WINDOW_ACK_SIZE: u8 = 5;
/// Message type: set peer bandwidth.
pub const TYPE_SET_PEER_BANDWIDTH: u8 = 6;
/// Message type: audio.
pub const TYPE_AUDIO: u8 = 8;
/// Message type: video.
pub const TYPE_VIDEO: u8 = 9;
/// Message type: AMF3 data (leading format byte, then AMF0 here).
pub const TYPE_DATA_AMF3: u8 = 15;
/// Message type: AMF3 command (leading format byte, then AMF0 here).
pub const TYPE_COMMAND_AMF3: u8 = 17;
/// Message type: AMF0 data.
pub const TYPE_DATA_AMF0: u8 = 18;
/// Message type: AMF0 command.
pub const TYPE_COMMAND_AMF0: u8 = 20;

/// User control event: stream begin.
pub const EVENT_STREAM_BEGIN: u16 = 0;
/// User control event: stream EOF.
pub const EVENT_STREAM_EOF: u16 = 1;

/// Chunk stream for protocol and user control messages.
const CSID_CONTROL: u32 = 2;
/// Chunk stream for commands on message stream 0.
const CSID_COMMAND: u32 = 3;
/// Chunk stream for audio.
const CSID_AUDIO: u32 = 4;
/// Chunk stream for commands and data on media streams.
const CSID_STREAM: u32 = 5;
/// Chunk stream for video.
const CSID_VIDEO: u32 = 6;

/// Errors interpreting a message payload.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// The payload is shorter than the message type requires.
    #[error("message type {type_id} has {len} payload bytes, needs {need}")]
    Truncated {
        /// Message type id.
        type_id: u8,
        /// Payload length received.
        len: usize,
        /// Bytes required.
        need: usize,
    },
    /// The AMF0 body of a command or data message is malformed.
    #[error("bad AMF0 body: {0}")]
    Amf0(#[from] Amf0Error),
    /// A command's first value is not a string.
    #[error("command message does not start with a name string")]
    MissingCommandName,
    /// A command's second value is not a number.
    #[error("command {0:?} has no numeric transaction id")]
    MissingTransactionId(String),
}

/// A typed RTMP message.
#[derive(Debug, Clone, PartialEq)]
pub enum RtmpMessage {
    /// New chunk size for the sender's chunks (type 1, top bit masked).
    SetChunkSize(u32),
    /// Discard the partial message on a chunk stream (type 2).
    Abort {
        /// Chunk stream id to abort.
        csid: u32,
    },
    /// Bytes received so far by the peer (type 3).
    Acknowledgement(u32),
    /// User control event (type 4).
    UserControl {
        /// Event type.
        event: u16,
        /// Event data after the event type.
        data: Bytes,
    },
    /// Acknowledgement window size (type 5).
    WindowAckSize(u32),
    /// Output bandwidth limit for the receiver (type 6).
    SetPeerBandwidth {
        /// Window size.
        size: u32,
        /// Limit type: 0 hard, 1 soft, 2 dynamic.
        limit: u8,
    },
    /// Audio payload (type 8).
    Audio(Bytes),
    /// Video payload (type 9).
    Video(Bytes),
    /// Command (type 20, or type 17 with its leading byte skipped).
    Command {
        /// Command name, e.g. `connect`.
        name: String,
        /// Transaction id.
        transaction_id: f64,
        /// Command object (`Null` if absent).
        object: Amf0Value,
        /// Remaining arguments.
        args: Vec<Amf0Value>,
    },
    /// Data message (type 18, or type 15 with its leading byte skipped).
    Data(Vec<Amf0Value>),
    /// Any other message type, left uninterpreted.
    Other {
        /// Message type id.
        type_id: u8,
    },
}

impl RtmpMessage {
    /// Interprets a raw message by its type id.
    ///
    /// # Errors
    /// [`MessageError`] if the payload is too short or its AMF0 is invalid.
    pub fn parse(msg: &RawMessage) -> Result<RtmpMessage, MessageError> {
        let parsed = match msg.type_id {
            TYPE_SET_CHUNK_SIZE => Self::SetChunkSize(be_u32(msg)? & 0x7FFF_FFFF),
            TYPE_ABORT => Self::Abort { csid: be_u32(msg)? },
            TYPE_ACKNOWLEDGEMENT => Self::Acknowledgement(be_u32(msg)?),
            TYPE_USER_CONTROL => {
                let [hi, lo] = prefix::<2>(msg)?;
                Self::UserControl {
                    event: u16::from_be_bytes([hi, lo]),
                    data: msg.payload.slice(2..),
                }
            }
            TYPE_WINDOW_ACK_SIZE => Self::WindowAckSize(be_u32(msg)?),
            TYPE_SET_PEER_BANDWIDTH => {
                let [a, b, c, d, limit] = prefix::<5>(msg)?;
                Self::SetPeerBandwidth {
                    size: u32::from_be_bytes([a, b, c, d]),
                    limit,
                }
            }
            TYPE_AUDIO => Self::Audio(msg.payload.clone()),
            TYPE_VIDEO => Self::Video(msg.payload.clone()),
            TYPE_COMMAND_AMF0 => parse_command(&msg.payload)?,
            TYPE_COMMAND_AMF3 => parse_command(skip_format_byte(msg)?)?,
            TYPE_DATA_AMF0 => Self::Data(amf0::decode_all(&msg.payload)?),
            TYPE_DATA_AMF3 => Self::Data(amf0::decode_all(skip_format_byte(msg)?)?),
            type_id => Self::Other { type_id },
        };
        Ok(parsed)
    }
}

/// The first `N` payload bytes, or `Truncated`.
fn prefix<const N: usize>(msg: &RawMessage) -> Result<[u8; N], MessageError> {
    msg.payload
        .get(..N)
        .and_then(|b| <[u8; N]>::try_from(b).ok())
        .ok_or(MessageError::Truncated {
            type_id: msg.type_id,
            len: msg.payload.len(),
            need: N,
        })
}

/// A big-endian u32 at the start of the payload.
fn be_u32(msg: &RawMessage) -> Result<u32, MessageError> {
    prefix::<4>(msg).map(u32::from_be_bytes)
}

/// The payload after the leading format byte of AMF3 command/data messages.
fn skip_format_byte(msg: &RawMessage) -> Result<&[u8], MessageError> {
    msg.payload.get(1..).ok_or(MessageError::Truncated {
        type_id: msg.type_id,
        len: 0,
        need: 1,
    })
}

/// Decodes name, transaction id, command object and arguments.
fn parse_command(body: &[u8]) -> Result<RtmpMessage, MessageError> {
    let mut values = amf0::decode_all(body)?.into_iter();
    let Some(Amf0Value::String(name) | Amf0Value::LongString(name)) = values.next() else {
        return Err(MessageError::MissingCommandName);
    };
    let Some(Amf0Value::Number(transaction_id)) = values.next() else {
        return Err(MessageError::MissingTransactionId(name));
    };
    let object = values.next().unwrap_or(Amf0Value::Null);
    Ok(RtmpMessage::Command {
        name,
        transaction_id,
        object,
        args: values.collect(),
    })
}

/// Writes a protocol or user control message on csid 2, stream 0.
fn write_control(w: &mut ChunkWriter, out: &mut BytesMut, type_id: u8, payload: &[u8]) {
    w.write_message(out, CSID_CONTROL, 0, type_id, 0, payload);
}

/// Writes SetChunkSize (size clamped to `1..=0xFFFFFF`), then switches `w`
/// to that size so the following messages use it.
pub fn write_set_chunk_size(w: &mut ChunkWriter, out: &mut BytesMut, size: u32) {
    let size = size.clamp(1, MAX_CHUNK_SIZE);
    write_control(w, out, TYPE_SET_CHUNK_SIZE, &size.to_be_bytes());
    w.set_chunk_size(size);
}

/// Writes Window Acknowledgement Size.
pub fn write_window_ack_size(w: &mut ChunkWriter, out: &mut BytesMut, size: u32) {
    write_control(w, out, TYPE_WINDOW_ACK_SIZE, &size.to_be_bytes());
}

/// Writes Set Peer Bandwidth (`limit`: 0 hard, 1 soft, 2 dynamic).
pub fn write_set_peer_bandwidth(w: &mut ChunkWriter, out: &mut BytesMut, size: u32, limit: u8) {
    let [a, b, c, d] = size.to_be_bytes();
    write_control(w, out, TYPE_SET_PEER_BANDWIDTH, &[a, b, c, d, limit]);
}

/// Writes Acknowledgement with the received byte count `seq`.
pub fn write_acknowledgement(w: &mut ChunkWriter, out: &mut BytesMut, seq: u32) {
    write_control(w, out, TYPE_ACKNOWLEDGEMENT, &seq.to_be_bytes());
}

/// Writes the user control event StreamBegin for `stream_id`.
pub fn write_user_control_stream_begin(w: &mut ChunkWriter, out: &mut BytesMut, stream_id: u32) {
    write_user_control(w, out, EVENT_STREAM_BEGIN, stream_id);
}

/// Writes the user control event StreamEOF for `stream_id`.
pub fn write_user_control_stream_eof(w: &mut ChunkWriter, out: &mut BytesMut, stream_id: u32) {
    write_user_control(w, out, EVENT_STREAM_EOF, stream_id);
}

/// Writes a user control event whose data is a stream id.
fn write_user_control(w: &mut ChunkWriter, out: &mut BytesMut, event: u16, stream_id: u32) {
    let mut payload = BytesMut::with_capacity(6);
    payload.put_u16(event);
    payload.put_u32(stream_id);
    write_control(w, out, TYPE_USER_CONTROL, &payload);
}

/// Writes an AMF0 command (type 20): csid 3 on stream 0, csid 5 otherwise.
pub fn write_command(
    w: &mut ChunkWriter,
    out: &mut BytesMut,
    stream_id: u32,
    name: &str,
    transaction_id: f64,
    object: &Amf0Value,
    args: &[Amf0Value],
) {
    let mut body = BytesMut::new();
    amf0::encode(&Amf0Value::String(name.to_owned()), &mut body);
    amf0::encode(&Amf0Value::Number(transaction_id), &mut body);
    amf0::encode(object, &mut body);
    args.iter().for_each(|arg| amf0::encode(arg, &mut body));
    w.write_message(
        out,
        amf_csid(stream_id),
        0,
        TYPE_COMMAND_AMF0,
        stream_id,
        &body,
    );
}

/// Writes an AMF0 data message (type 18), on the same csids as commands.
pub fn write_data(w: &mut ChunkWriter, out: &mut BytesMut, stream_id: u32, values: &[Amf0Value]) {
    let mut body = BytesMut::new();
    values
        .iter()
        .for_each(|value| amf0::encode(value, &mut body));
    w.write_message(
        out,
        amf_csid(stream_id),
        0,
        TYPE_DATA_AMF0,
        stream_id,
        &body,
    );
}

/// Output capacity a session keeps for its next messages after handing its bytes to the
/// socket; a larger buffer (a player's start-up burst) is released with them.
const KEEP_OUTPUT_CAPACITY: usize = 16 * 1024;

/// The bytes queued in `out`, leaving `out` empty: it keeps its buffer for reuse unless
/// that is larger than [`KEEP_OUTPUT_CAPACITY`], so one burst does not pin its memory for
/// the rest of a connection.
pub fn take_output(out: &mut BytesMut) -> BytesMut {
    if out.capacity() > KEEP_OUTPUT_CAPACITY {
        std::mem::take(out)
    } else {
        out.split()
    }
}

/// Writes an audio (type 8, csid 4) or video (type 9, csid 6) message.
pub fn write_media(
    w: &mut ChunkWriter,
    out: &mut BytesMut,
    type_id: u8,
    stream_id: u32,
    timestamp: u32,
    payload: &[u8],
) {
    write_media_parts(w, out, type_id, stream_id, timestamp, &[], payload);
}

/// [`write_media`] of `head` followed by `body` (an FLV tag header and a shared frame).
pub fn write_media_parts(
    w: &mut ChunkWriter,
    out: &mut BytesMut,
    type_id: u8,
    stream_id: u32,
    timestamp: u32,
    head: &[u8],
    body: &[u8],
) {
    let csid = if type_id == TYPE_AUDIO {
        CSID_AUDIO
    } else {
        CSID_VIDEO
    };
    w.write_message_parts(out, csid, timestamp, type_id, stream_id, head, body);
}

/// Chunk stream for commands and data on `stream_id`.
fn amf_csid(stream_id: u32) -> u32 {
    if stream_id == 0 {
        CSID_COMMAND
    } else {
        CSID_STREAM
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rtmp::chunk::ChunkReader;

    /// Reads every message back from the writer output and parses it.
    fn read_back(bytes: &[u8]) -> Vec<(RawMessage, RtmpMessage)> {
        let mut reader = ChunkReader::new(1 << 20);
        reader.push(bytes);
        let mut out = Vec::new();
        while let Some(raw) = reader.read_message().unwrap() {
            let parsed = RtmpMessage::parse(&raw).unwrap();
            out.push((raw, parsed));
        }
        out
    }

    fn raw(type_id: u8, payload: &[u8]) -> RawMessage {
        RawMessage {
            csid: 3,
            timestamp: 0,
            type_id,
            stream_id: 0,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn string(s: &str) -> Amf0Value {
        Amf0Value::String(s.to_owned())
    }

    #[test]
    fn control_messages_round_trip() {
        let mut w = ChunkWriter::new();
        let mut out = BytesMut::new();
        write_set_chunk_size(&mut w, &mut out, 4096);
        write_window_ack_size(&mut w, &mut out, 2_500_000);
        write_set_peer_bandwidth(&mut w, &mut out, 2_500_000, 2);
        write_acknowledgement(&mut w, &mut out, 12_345);
        write_user_control_stream_begin(&mut w, &mut out, 1);
        write_user_control_stream_eof(&mut w, &mut out, 1);
        assert_eq!(w.chunk_size(), 4096);
        let got = read_back(&out);
        assert!(got
            .iter()
            .all(|(raw, _)| raw.csid == 2 && raw.stream_id == 0));
        let parsed: Vec<_> = got.into_iter().map(|(_, m)| m).collect();
        assert_eq!(
            parsed,
            vec![
                RtmpMessage::SetChunkSize(4096),
                RtmpMessage::WindowAckSize(2_500_000),
                RtmpMessage::SetPeerBandwidth {
                    size: 2_500_000,
                    limit: 2
                },
                RtmpMessage::Acknowledgement(12_345),
                RtmpMessage::UserControl {
                    event: EVENT_STREAM_BEGIN,
                    data: Bytes::from_static(&[0, 0, 0, 1])
                },
                RtmpMessage::UserControl {
                    event: EVENT_STREAM_EOF,
                    data: Bytes::from_static(&[0, 0, 0, 1])
                },
            ]
        );
    }

    #[test]
    fn set_chunk_size_masks_top_bit_and_abort_parses() {
        let m = RtmpMessage::parse(&raw(TYPE_SET_CHUNK_SIZE, &0x8000_1000u32.to_be_bytes()));
        assert_eq!(m, Ok(RtmpMessage::SetChunkSize(0x1000)));
        let m = RtmpMessage::parse(&raw(TYPE_ABORT, &[0, 0, 0, 6]));
        assert_eq!(m, Ok(RtmpMessage::Abort { csid: 6 }));
    }

    #[test]
    fn connect_as_ffmpeg_sends_it() {
        let object = Amf0Value::object([
            ("app", string("live")),
            ("type", string("nonprivate")),
            ("flashVer", string("FMLE/3.0 (compatible; Lavf61.7.100)")),
            ("tcUrl", string("rtmp://localhost:1935/live")),
        ]);
        let mut w = ChunkWriter::new();
        let mut out = BytesMut::new();
        write_command(&mut w, &mut out, 0, "connect", 1.0, &object, &[]);
        let got = read_back(&out);
        assert_eq!(got[0].0.csid, 3);
        let RtmpMessage::Command {
            name,
            transaction_id,
            object: obj,
            args,
        } = &got[0].1
        else {
            panic!("not a command: {:?}", got[0].1);
        };
        assert_eq!((name.as_str(), *transaction_id), ("connect", 1.0));
        assert_eq!(obj.get("app").and_then(Amf0Value::as_str), Some("live"));
        assert_eq!(
            obj.get("tcUrl").and_then(Amf0Value::as_str),
            Some("rtmp://localhost:1935/live")
        );
        assert!(args.is_empty());
    }

    #[test]
    fn release_stream_and_publish() {
        let mut w = ChunkWriter::new();
        let mut out = BytesMut::new();
        write_command(
            &mut w,
            &mut out,
            0,
            "releaseStream",
            2.0,
            &Amf0Value::Null,
            &[string("key")],
        );
        write_command(
            &mut w,
            &mut out,
            1,
            "publish",
            5.0,
            &Amf0Value::Null,
            &[string("key"), string("live")],
        );
        let got = read_back(&out);
        assert_eq!(
            got[0].1,
            RtmpMessage::Command {
                name: "releaseStream".into(),
                transaction_id: 2.0,
                object: Amf0Value::Null,
                args: vec![string("key")],
            }
        );
        assert_eq!((got[1].0.csid, got[1].0.stream_id), (5, 1));
        assert_eq!(
            got[1].1,
            RtmpMessage::Command {
                name: "publish".into(),
                transaction_id: 5.0,
                object: Amf0Value::Null,
                args: vec![string("key"), string("live")],
            }
        );
    }

    #[test]
    fn command_without_object_defaults_to_null() {
        let mut body = BytesMut::new();
        amf0::encode(&string("deleteStream"), &mut body);
        amf0::encode(&Amf0Value::Number(0.0), &mut body);
        let m = RtmpMessage::parse(&raw(TYPE_COMMAND_AMF0, &body)).unwrap();
        let RtmpMessage::Command { object, .. } = m else {
            panic!("not a command")
        };
        assert_eq!(object, Amf0Value::Null);
    }

    #[test]
    fn amf3_command_and_data_skip_format_byte() {
        let mut body = BytesMut::from(&[0u8][..]);
        amf0::encode(&string("play"), &mut body);
        amf0::encode(&Amf0Value::Number(4.0), &mut body);
        amf0::encode(&Amf0Value::Null, &mut body);
        let m = RtmpMessage::parse(&raw(TYPE_COMMAND_AMF3, &body)).unwrap();
        assert!(matches!(m, RtmpMessage::Command { ref name, .. } if name == "play"));
        let m = RtmpMessage::parse(&raw(TYPE_DATA_AMF3, &[0, 5])).unwrap();
        assert_eq!(m, RtmpMessage::Data(vec![Amf0Value::Null]));
    }

    #[test]
    fn data_and_media() {
        let values = [
            string("@setDataFrame"),
            string("onMetaData"),
            Amf0Value::EcmaArray(vec![]),
        ];
        let mut w = ChunkWriter::new();
        let mut out = BytesMut::new();
        write_data(&mut w, &mut out, 1, &values);
        write_media(&mut w, &mut out, TYPE_AUDIO, 1, 10, &[0xAF, 1, 2]);
        write_media(&mut w, &mut out, TYPE_VIDEO, 1, 20, &[0x17; 300]);
        let got = read_back(&out);
        assert_eq!(got[0].1, RtmpMessage::Data(values.to_vec()));
        assert_eq!((got[1].0.csid, got[1].0.timestamp), (4, 10));
        assert_eq!(
            got[1].1,
            RtmpMessage::Audio(Bytes::from_static(&[0xAF, 1, 2]))
        );
        assert_eq!((got[2].0.csid, got[2].0.timestamp), (6, 20));
        assert_eq!(got[2].1, RtmpMessage::Video(Bytes::from(vec![0x17; 300])));
    }

    #[test]
    fn other_types() {
        assert_eq!(
            RtmpMessage::parse(&raw(22, &[1, 2])),
            Ok(RtmpMessage::Other { type_id: 22 })
        );
    }

    #[test]
    fn truncated_payloads_are_errors() {
        for (type_id, need) in [(1u8, 4usize), (2, 4), (3, 4), (4, 2), (5, 4), (6, 5)] {
            for len in 0..need {
                let err = RtmpMessage::parse(&raw(type_id, &vec![0; len])).unwrap_err();
                assert_eq!(err, MessageError::Truncated { type_id, len, need });
            }
        }
        assert!(RtmpMessage::parse(&raw(TYPE_COMMAND_AMF3, &[])).is_err());
        assert!(RtmpMessage::parse(&raw(TYPE_DATA_AMF3, &[])).is_err());
        let mut body = BytesMut::new();
        amf0::encode(&string("connect"), &mut body);
        amf0::encode(&Amf0Value::Number(1.0), &mut body);
        amf0::encode(&Amf0Value::object([("app", string("live"))]), &mut body);
        let no_object = 10 + 9; // name + transaction id: a valid command without object
        for cut in (0..body.len()).filter(|cut| *cut != no_object) {
            assert!(
                RtmpMessage::parse(&raw(TYPE_COMMAND_AMF0, &body[..cut])).is_err(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn malformed_commands() {
        let mut body = BytesMut::new();
        amf0::encode(&Amf0Value::Number(1.0), &mut body);
        assert_eq!(
            RtmpMessage::parse(&raw(TYPE_COMMAND_AMF0, &body)),
            Err(MessageError::MissingCommandName)
        );
        let mut body = BytesMut::new();
        amf0::encode(&string("connect"), &mut body);
        amf0::encode(&Amf0Value::Null, &mut body);
        assert_eq!(
            RtmpMessage::parse(&raw(TYPE_COMMAND_AMF0, &body)),
            Err(MessageError::MissingTransactionId("connect".into()))
        );
        assert_eq!(
            RtmpMessage::parse(&raw(TYPE_DATA_AMF0, &[7, 0, 0])),
            Err(MessageError::Amf0(Amf0Error::Unsupported(7)))
        );
    }
}
