//! Hand-made RTMP bytes for the malformed-input tests: chunk headers, commands, garbage.

use bytes::BytesMut;
use media_server::proto::rtmp::amf0::{encode, Amf0Value};

/// A fmt-0 chunk header: csid (2..=63), timestamp, length, type, stream id.
pub fn fmt0(csid: u8, ts: u32, len: u32, type_id: u8, stream: u32) -> Vec<u8> {
    let mut v = vec![csid & 0x3f];
    v.extend_from_slice(&ts.to_be_bytes()[1..]);
    v.extend_from_slice(&len.to_be_bytes()[1..]);
    v.push(type_id);
    v.extend_from_slice(&stream.to_le_bytes());
    v
}

/// An AMF0 `connect` command whose app string is padded to make the payload `len` bytes.
pub fn connect_command(len: usize) -> Vec<u8> {
    let mut v = vec![0x02, 0x00, 0x07];
    v.extend_from_slice(b"connect");
    v.push(0x00);
    v.extend_from_slice(&1f64.to_be_bytes());
    v.push(0x03);
    v.extend_from_slice(&[0x00, 0x03]);
    v.extend_from_slice(b"app");
    let pad = len - v.len() - 3 - 3;
    v.push(0x02);
    v.extend_from_slice(&(pad as u16).to_be_bytes());
    v.extend(std::iter::repeat_n(b'a', pad));
    v.extend_from_slice(&[0x00, 0x00, 0x09]);
    assert_eq!(v.len(), len);
    v
}

pub fn set_chunk_size(size: u32) -> Vec<u8> {
    let mut v = fmt0(2, 0, 4, 1, 0);
    v.extend_from_slice(&size.to_be_bytes());
    v
}

pub fn huge_declared_message() -> Vec<u8> {
    let mut v = fmt0(3, 0, 0xFF_FFFF, 20, 0);
    v.extend_from_slice(&[0u8; 128]);
    v
}

pub fn garbage() -> Vec<u8> {
    // Deterministic pseudo-random bytes.
    let mut x = 0x1234_5678u32;
    (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A string value for [`command`].
pub fn amf_string(s: &str) -> Amf0Value {
    Amf0Value::String(s.to_owned())
}

/// A command message (type 20) on chunk stream 3 of message stream `stream_id`: `name`,
/// transaction id, a null command object, then `args`; in one chunk of up to 2^24-1 bytes
/// (preceded by a SetChunkSize to that).
pub fn command(stream_id: u32, name: &str, txn: f64, args: &[Amf0Value]) -> Vec<u8> {
    let mut payload = BytesMut::new();
    encode(&amf_string(name), &mut payload);
    encode(&Amf0Value::Number(txn), &mut payload);
    encode(&Amf0Value::Null, &mut payload);
    for a in args {
        encode(a, &mut payload);
    }
    let mut v = set_chunk_size(0xFF_FFFF);
    v.extend(fmt0(3, 0, payload.len() as u32, 20, stream_id));
    v.extend_from_slice(&payload);
    v
}

/// A command whose command object has `fields` (like `connect`).
pub fn command_with_object(
    stream_id: u32,
    name: &str,
    txn: f64,
    fields: &[(&str, Amf0Value)],
) -> Vec<u8> {
    let mut payload = BytesMut::new();
    encode(&amf_string(name), &mut payload);
    encode(&Amf0Value::Number(txn), &mut payload);
    encode(
        &Amf0Value::object(fields.iter().map(|(k, v)| (*k, v.clone()))),
        &mut payload,
    );
    let mut v = set_chunk_size(0xFF_FFFF);
    v.extend(fmt0(3, 0, payload.len() as u32, 20, stream_id));
    v.extend_from_slice(&payload);
    v
}
