//! AMF0 (Action Message Format 0) values as carried by RTMP command and data
//! messages. It owns the [`Amf0Value`] model, a decoder that treats every
//! length and count as untrusted (nesting capped at [`MAX_DEPTH`], nothing
//! pre-allocated from a declared count, errors rather than panics on
//! truncation) and an encoder. The message layer
//! (`crate::proto::rtmp::message`) calls [`decode_all`] and [`encode`].

use bytes::{BufMut, BytesMut};
use thiserror::Error;

/// Deepest nesting of objects and arrays the decoder accepts.
pub const MAX_DEPTH: usize = 64;

/// Most elements of a strict array reserved up front, whatever its count.
const MAX_PREALLOC: usize = 1024;

const NUMBER: u8 = 0;
const BOOLEAN: u8 = 1;
const STRING: u8 = 2;
const OBJECT: u8 = 3;
const NULL: u8 = 5;
const UNDEFINED: u8 = 6;
const ECMA_ARRAY: u8 = 8;
const OBJECT_END: u8 = 9;
const STRICT_ARRAY: u8 = 10;
const DATE: u8 = 11;
const LONG_STRING: u8 = 12;
const UNSUPPORTED: u8 = 13;
const TYPED_OBJECT: u8 = 16;

/// Errors of the AMF0 decoder.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Amf0Error {
    /// The input ended inside a value.
    #[error("AMF0 input truncated")]
    Truncated,
    /// Objects or arrays were nested deeper than [`MAX_DEPTH`].
    #[error("AMF0 values nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// A type marker this decoder does not support (reference, AMF3, ...).
    #[error("unsupported AMF0 type marker {0}")]
    Unsupported(u8),
    /// An object-end marker appeared where a value was expected.
    #[error("AMF0 object-end marker outside an object")]
    UnexpectedObjectEnd,
}

/// One AMF0 value.
#[derive(Debug, Clone, PartialEq)]
pub enum Amf0Value {
    /// IEEE 754 double (marker 0).
    Number(f64),
    /// Boolean (marker 1).
    Boolean(bool),
    /// String of at most 65535 bytes (marker 2).
    String(String),
    /// Anonymous object: ordered key/value pairs (marker 3; marker 16 typed
    /// objects decode to this too, dropping the class name).
    Object(Vec<(String, Amf0Value)>),
    /// Null (marker 5).
    Null,
    /// Undefined (marker 6; marker 13 "unsupported" decodes to this too).
    Undefined,
    /// ECMA (associative) array: ordered key/value pairs (marker 8).
    EcmaArray(Vec<(String, Amf0Value)>),
    /// Strict (dense) array (marker 10).
    StrictArray(Vec<Amf0Value>),
    /// Date (marker 11).
    Date {
        /// Milliseconds since the Unix epoch.
        millis: f64,
        /// Time zone offset; should be 0.
        timezone: i16,
    },
    /// String longer than 65535 bytes (marker 12).
    LongString(String),
}

impl Amf0Value {
    /// Looks up `key` in an `Object` or `EcmaArray` (first match).
    pub fn get(&self, key: &str) -> Option<&Amf0Value> {
        match self {
            Self::Object(pairs) | Self::EcmaArray(pairs) => {
                pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    /// The text of a `String` or `LongString`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) | Self::LongString(s) => Some(s),
            _ => None,
        }
    }

    /// The value of a `Number`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// Builds an `Object` from key/value pairs.
    pub fn object<'a>(pairs: impl IntoIterator<Item = (&'a str, Amf0Value)>) -> Self {
        Self::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }
}

/// Decodes consecutive values until `data` is exhausted.
///
/// # Errors
/// Any [`Amf0Error`] met while decoding one of the values.
pub fn decode_all(data: &[u8]) -> Result<Vec<Amf0Value>, Amf0Error> {
    let mut buf = data;
    let mut values = Vec::new();
    while !buf.is_empty() {
        values.push(decode_one(&mut buf)?);
    }
    Ok(values)
}

/// Decodes one value and advances `buf` past it. On error, `buf` is left at
/// an unspecified position.
///
/// # Errors
/// [`Amf0Error`] on truncation, unsupported markers or nesting deeper than
/// [`MAX_DEPTH`].
pub fn decode_one(buf: &mut &[u8]) -> Result<Amf0Value, Amf0Error> {
    decode_value(buf, 0)
}

/// Decodes one value found at nesting `depth`.
fn decode_value(buf: &mut &[u8], depth: usize) -> Result<Amf0Value, Amf0Error> {
    let marker = read_u8(buf)?;
    let value = match marker {
        NUMBER => Amf0Value::Number(read_f64(buf)?),
        BOOLEAN => Amf0Value::Boolean(read_u8(buf)? != 0),
        STRING => Amf0Value::String(read_short_string(buf)?),
        OBJECT => Amf0Value::Object(read_pairs(buf, enter(depth)?)?),
        NULL => Amf0Value::Null,
        UNDEFINED | UNSUPPORTED => Amf0Value::Undefined,
        ECMA_ARRAY => {
            let depth = enter(depth)?;
            read_u32(buf)?; // count hint only: pairs run until the end marker
            Amf0Value::EcmaArray(read_pairs(buf, depth)?)
        }
        OBJECT_END => return Err(Amf0Error::UnexpectedObjectEnd),
        STRICT_ARRAY => Amf0Value::StrictArray(read_strict_array(buf, enter(depth)?)?),
        DATE => Amf0Value::Date {
            millis: read_f64(buf)?,
            timezone: read_i16(buf)?,
        },
        LONG_STRING => {
            let len = usize::try_from(read_u32(buf)?).map_err(|_| Amf0Error::Truncated)?;
            Amf0Value::LongString(read_string(buf, len)?)
        }
        TYPED_OBJECT => {
            let depth = enter(depth)?;
            read_short_string(buf)?; // class name, not kept
            Amf0Value::Object(read_pairs(buf, depth)?)
        }
        other => return Err(Amf0Error::Unsupported(other)),
    };
    Ok(value)
}

/// Returns the depth of a container's children, or `TooDeep`.
fn enter(depth: usize) -> Result<usize, Amf0Error> {
    let inner = depth.saturating_add(1);
    if inner > MAX_DEPTH {
        return Err(Amf0Error::TooDeep);
    }
    Ok(inner)
}

/// Reads key/value pairs up to and including the `00 00 09` end marker.
fn read_pairs(buf: &mut &[u8], depth: usize) -> Result<Vec<(String, Amf0Value)>, Amf0Error> {
    let mut pairs = Vec::new();
    loop {
        let key = read_short_string(buf)?;
        if key.is_empty() && buf.first() == Some(&OBJECT_END) {
            take(buf, 1)?;
            return Ok(pairs);
        }
        let value = decode_value(buf, depth)?;
        pairs.push((key, value));
    }
}

/// Reads a strict array; its count is bounded by the bytes left.
fn read_strict_array(buf: &mut &[u8], depth: usize) -> Result<Vec<Amf0Value>, Amf0Error> {
    let count = usize::try_from(read_u32(buf)?).unwrap_or(usize::MAX);
    if count > buf.len() {
        return Err(Amf0Error::Truncated);
    }
    let mut items = Vec::with_capacity(count.min(MAX_PREALLOC));
    for _ in 0..count {
        items.push(decode_value(buf, depth)?);
    }
    Ok(items)
}

/// Splits `n` bytes off the front of `buf`.
fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], Amf0Error> {
    let (head, tail) = buf.split_at_checked(n).ok_or(Amf0Error::Truncated)?;
    *buf = tail;
    Ok(head)
}

/// Splits a fixed-size array off the front of `buf`.
fn take_array<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N], Amf0Error> {
    <[u8; N]>::try_from(take(buf, N)?).map_err(|_| Amf0Error::Truncated)
}

fn read_u8(buf: &mut &[u8]) -> Result<u8, Amf0Error> {
    take_array::<1>(buf).map(|[b]| b)
}

fn read_u16(buf: &mut &[u8]) -> Result<u16, Amf0Error> {
    take_array(buf).map(u16::from_be_bytes)
}

fn read_i16(buf: &mut &[u8]) -> Result<i16, Amf0Error> {
    take_array(buf).map(i16::from_be_bytes)
}

fn read_u32(buf: &mut &[u8]) -> Result<u32, Amf0Error> {
    take_array(buf).map(u32::from_be_bytes)
}

fn read_f64(buf: &mut &[u8]) -> Result<f64, Amf0Error> {
    take_array(buf).map(f64::from_be_bytes)
}

/// Reads a string with a 16-bit length prefix.
fn read_short_string(buf: &mut &[u8]) -> Result<String, Amf0Error> {
    let len = usize::from(read_u16(buf)?);
    read_string(buf, len)
}

/// Reads `len` bytes as UTF-8, replacing invalid sequences.
fn read_string(buf: &mut &[u8], len: usize) -> Result<String, Amf0Error> {
    Ok(String::from_utf8_lossy(take(buf, len)?).into_owned())
}

/// Appends the AMF0 encoding of `value`. A `String` over 65535 bytes is
/// written as a long string; object keys over 65535 bytes are truncated.
pub fn encode(value: &Amf0Value, out: &mut BytesMut) {
    match value {
        Amf0Value::Number(n) => {
            out.put_u8(NUMBER);
            out.put_f64(*n);
        }
        Amf0Value::Boolean(b) => {
            out.put_u8(BOOLEAN);
            out.put_u8(u8::from(*b));
        }
        Amf0Value::String(s) if s.len() <= usize::from(u16::MAX) => {
            out.put_u8(STRING);
            encode_key(s, out);
        }
        Amf0Value::String(s) | Amf0Value::LongString(s) => encode_long_string(s, out),
        Amf0Value::Object(pairs) => {
            out.put_u8(OBJECT);
            encode_pairs(pairs, out);
        }
        Amf0Value::Null => out.put_u8(NULL),
        Amf0Value::Undefined => out.put_u8(UNDEFINED),
        Amf0Value::EcmaArray(pairs) => {
            out.put_u8(ECMA_ARRAY);
            out.put_u32(u32::try_from(pairs.len()).unwrap_or(u32::MAX));
            encode_pairs(pairs, out);
        }
        Amf0Value::StrictArray(items) => encode_strict_array(items, out),
        Amf0Value::Date { millis, timezone } => {
            out.put_u8(DATE);
            out.put_f64(*millis);
            out.put_i16(*timezone);
        }
    }
}

/// Writes key/value pairs and the end marker.
fn encode_pairs(pairs: &[(String, Amf0Value)], out: &mut BytesMut) {
    for (key, value) in pairs {
        encode_key(key, out);
        encode(value, out);
    }
    out.put_slice(&[0, 0, OBJECT_END]);
}

/// Writes a strict array (at most `u32::MAX` elements).
fn encode_strict_array(items: &[Amf0Value], out: &mut BytesMut) {
    let count = u32::try_from(items.len()).unwrap_or(u32::MAX);
    out.put_u8(STRICT_ARRAY);
    out.put_u32(count);
    for item in items
        .iter()
        .take(usize::try_from(count).unwrap_or(usize::MAX))
    {
        encode(item, out);
    }
}

/// Writes a 16-bit length prefixed string, truncated to fit.
fn encode_key(key: &str, out: &mut BytesMut) {
    let key = truncate_str(key, usize::from(u16::MAX));
    out.put_u16(u16::try_from(key.len()).unwrap_or(u16::MAX));
    out.put_slice(key.as_bytes());
}

/// Writes a long string (marker 12), truncated to `u32::MAX` bytes.
fn encode_long_string(s: &str, out: &mut BytesMut) {
    let s = truncate_str(s, usize::try_from(u32::MAX).unwrap_or(usize::MAX));
    out.put_u8(LONG_STRING);
    out.put_u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
    out.put_slice(s.as_bytes());
}

/// Longest prefix of `s` of at most `max` bytes ending on a char boundary.
fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let end = (0..=max)
        .rev()
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0);
    s.get(..end).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(value: &Amf0Value) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(value, &mut out);
        out.to_vec()
    }

    fn round_trip(value: Amf0Value) {
        let bytes = encoded(&value);
        assert_eq!(decode_all(&bytes), Ok(vec![value]));
    }

    fn metadata() -> Vec<Amf0Value> {
        let pairs = [
            ("duration", Amf0Value::Number(0.0)),
            ("width", Amf0Value::Number(1280.0)),
            ("height", Amf0Value::Number(720.0)),
            ("videodatarate", Amf0Value::Number(2500.0)),
            ("framerate", Amf0Value::Number(30.0)),
            ("videocodecid", Amf0Value::Number(7.0)),
            ("audiodatarate", Amf0Value::Number(128.0)),
            ("audiosamplerate", Amf0Value::Number(48000.0)),
            ("audiosamplesize", Amf0Value::Number(16.0)),
            ("stereo", Amf0Value::Boolean(true)),
            ("audiocodecid", Amf0Value::Number(10.0)),
            ("encoder", Amf0Value::String("Lavf61.7.100".into())),
            ("filesize", Amf0Value::Number(0.0)),
        ];
        vec![
            Amf0Value::String("@setDataFrame".into()),
            Amf0Value::String("onMetaData".into()),
            Amf0Value::EcmaArray(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
        ]
    }

    #[test]
    fn round_trip_each_type() {
        round_trip(Amf0Value::Number(-1.5));
        round_trip(Amf0Value::Boolean(true));
        round_trip(Amf0Value::Boolean(false));
        round_trip(Amf0Value::String("héllo".into()));
        round_trip(Amf0Value::String(String::new()));
        round_trip(Amf0Value::object([
            ("a", Amf0Value::Null),
            ("", Amf0Value::Number(1.0)),
        ]));
        round_trip(Amf0Value::Null);
        round_trip(Amf0Value::Undefined);
        round_trip(Amf0Value::EcmaArray(vec![(
            "k".into(),
            Amf0Value::Boolean(false),
        )]));
        round_trip(Amf0Value::StrictArray(vec![
            Amf0Value::Number(1.0),
            Amf0Value::Null,
        ]));
        round_trip(Amf0Value::StrictArray(vec![]));
        round_trip(Amf0Value::Date {
            millis: 1.7e12,
            timezone: -60,
        });
        round_trip(Amf0Value::LongString("x".repeat(70_000)));
        round_trip(Amf0Value::LongString("short".into()));
    }

    #[test]
    fn long_plain_string_is_written_as_long_string() {
        let bytes = encoded(&Amf0Value::String("y".repeat(70_000)));
        assert_eq!(bytes[0], LONG_STRING);
        assert_eq!(
            decode_all(&bytes).unwrap()[0].as_str().map(str::len),
            Some(70_000)
        );
    }

    #[test]
    fn set_data_frame_as_ffmpeg_sends_it() {
        let mut out = BytesMut::new();
        for v in metadata() {
            encode(&v, &mut out);
        }
        let values = decode_all(&out).unwrap();
        assert_eq!(values, metadata());
        assert_eq!(
            values[2].get("width").and_then(Amf0Value::as_f64),
            Some(1280.0)
        );
        assert_eq!(
            values[2].get("encoder").and_then(Amf0Value::as_str),
            Some("Lavf61.7.100")
        );
    }

    #[test]
    fn ecma_array_count_is_only_a_hint() {
        let mut bytes = vec![ECMA_ARRAY, 0xFF, 0xFF, 0xFF, 0xFF];
        bytes.extend_from_slice(&[0, 1, b'a', NUMBER]);
        bytes.extend_from_slice(&2.0f64.to_be_bytes());
        bytes.extend_from_slice(&[0, 0, OBJECT_END]);
        let value = decode_all(&bytes).unwrap();
        assert_eq!(
            value,
            vec![Amf0Value::EcmaArray(vec![(
                "a".into(),
                Amf0Value::Number(2.0)
            )])]
        );
    }

    #[test]
    fn strict_array_huge_count_is_truncation() {
        let bytes = [STRICT_ARRAY, 0xFF, 0xFF, 0xFF, 0xFF, NULL, NULL];
        assert_eq!(decode_all(&bytes), Err(Amf0Error::Truncated));
    }

    fn nested(depth: usize, open: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for _ in 0..depth {
            bytes.extend_from_slice(open);
        }
        bytes.push(NULL);
        bytes
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let object = [OBJECT, 0, 1, b'a'];
        let ecma = [ECMA_ARRAY, 0, 0, 0, 1, 0, 1, b'a'];
        let strict = [STRICT_ARRAY, 0, 0, 0, 1];
        for open in [&object[..], &ecma[..], &strict[..]] {
            for depth in [MAX_DEPTH + 1, 4_000, 100_000] {
                assert_eq!(decode_all(&nested(depth, open)), Err(Amf0Error::TooDeep));
            }
        }
    }

    #[test]
    fn max_depth_is_accepted() {
        let mut value = Amf0Value::Null;
        for _ in 0..MAX_DEPTH {
            value = Amf0Value::object([("a", value)]);
        }
        round_trip(value.clone());
        let too_deep = Amf0Value::object([("a", value)]);
        assert_eq!(decode_all(&encoded(&too_deep)), Err(Amf0Error::TooDeep));
    }

    #[test]
    fn truncation_at_every_position_is_an_error() {
        let value = Amf0Value::StrictArray(vec![
            Amf0Value::object([
                ("n", Amf0Value::Number(1.0)),
                ("s", Amf0Value::String("abc".into())),
                (
                    "e",
                    Amf0Value::EcmaArray(vec![("b".into(), Amf0Value::Boolean(true))]),
                ),
            ]),
            Amf0Value::Date {
                millis: 0.0,
                timezone: 0,
            },
            Amf0Value::LongString("long".into()),
        ]);
        let bytes = encoded(&value);
        for cut in 1..bytes.len() {
            let mut buf = &bytes[..cut];
            assert!(decode_one(&mut buf).is_err(), "cut at {cut}");
        }
        let mut meta = BytesMut::new();
        metadata().iter().for_each(|v| encode(v, &mut meta));
        for cut in 0..meta.len() {
            let result = decode_all(&meta[..cut]);
            let whole_values = result.as_ref().map(Vec::len).unwrap_or(0);
            assert!(result.is_err() || whole_values < 3, "cut at {cut}");
        }
    }

    #[test]
    fn unsupported_markers() {
        assert_eq!(decode_all(&[7, 0, 1]), Err(Amf0Error::Unsupported(7)));
        assert_eq!(decode_all(&[17, 1]), Err(Amf0Error::Unsupported(17)));
        assert_eq!(
            decode_all(&[OBJECT_END]),
            Err(Amf0Error::UnexpectedObjectEnd)
        );
        assert_eq!(decode_all(&[UNSUPPORTED]), Ok(vec![Amf0Value::Undefined]));
    }

    #[test]
    fn typed_object_and_lossy_strings() {
        let bytes = [
            TYPED_OBJECT,
            0,
            1,
            b'C',
            0,
            1,
            b'k',
            STRING,
            0,
            2,
            0xFF,
            b'a',
            0,
            0,
            OBJECT_END,
        ];
        let value = decode_all(&bytes).unwrap();
        assert_eq!(
            value[0].get("k").and_then(Amf0Value::as_str),
            Some("\u{FFFD}a")
        );
    }

    #[test]
    fn accessors() {
        let v = Amf0Value::object([("x", Amf0Value::Number(3.0))]);
        assert_eq!(v.get("x").and_then(Amf0Value::as_f64), Some(3.0));
        assert_eq!(v.get("y"), None);
        assert_eq!(Amf0Value::Null.get("x"), None);
        assert_eq!(Amf0Value::Null.as_str(), None);
        assert_eq!(Amf0Value::Null.as_f64(), None);
    }

    #[test]
    fn long_key_is_truncated_on_char_boundary() {
        let key = "é".repeat(40_000);
        let bytes = encoded(&Amf0Value::object([(key.as_str(), Amf0Value::Null)]));
        let value = decode_all(&bytes).unwrap();
        let Amf0Value::Object(pairs) = &value[0] else {
            panic!("not an object")
        };
        assert_eq!(pairs[0].0.len(), 65_534);
    }
}
