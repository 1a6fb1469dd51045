//! AMF0 decoder, and decode -> encode -> decode round trip.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use media_server::proto::rtmp::amf0::{decode_all, encode, Amf0Value};

/// Whether `v` holds something that legitimately does not compare equal
/// after a round trip: a NaN (NaN != NaN), or a string / key longer than
/// 65535 bytes (documented: a long `String` is re-encoded as a long string,
/// a long key is truncated). Lossy UTF-8 decoding can make a short string
/// grow up to 3x, so such strings can appear from small inputs.
fn not_comparable(v: &Amf0Value) -> bool {
    const MAX_SHORT: usize = u16::MAX as usize;
    match v {
        Amf0Value::Number(n) => n.is_nan(),
        Amf0Value::Date { millis, .. } => millis.is_nan(),
        Amf0Value::String(s) => s.len() > MAX_SHORT,
        Amf0Value::Object(pairs) | Amf0Value::EcmaArray(pairs) => pairs
            .iter()
            .any(|(k, v)| k.len() > MAX_SHORT || not_comparable(v)),
        Amf0Value::StrictArray(items) => items.iter().any(not_comparable),
        Amf0Value::Boolean(_)
        | Amf0Value::Null
        | Amf0Value::Undefined
        | Amf0Value::LongString(_) => false,
    }
}

fn encode_all(values: &[Amf0Value]) -> BytesMut {
    let mut out = BytesMut::new();
    for v in values {
        encode(v, &mut out);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(first) = decode_all(data) else {
        return;
    };
    let encoded = encode_all(&first);
    let second = decode_all(&encoded).expect("re-encoded AMF0 must decode");
    if !first.iter().any(not_comparable) {
        assert_eq!(first, second, "AMF0 value changed in a round trip");
    }
    // Whatever the values, encode(decode(x)) must be a fixed point.
    let reencoded = encode_all(&second);
    assert_eq!(
        &encoded[..],
        &reencoded[..],
        "AMF0 encoding not stable across a round trip"
    );
});
