//! The cluster relay's messages (`proto::relay`), as a node reads them from another: any
//! bytes, fed in arbitrary pieces. No panic; a decoded message encodes back to bytes that
//! decode to the same message.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use media_server::proto::relay::{encode, Decoder, Message};

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(1, |b| usize::from(*b).max(1));
    let mut d = Decoder::new();
    let mut seen: Vec<Message> = vec![];
    'feed: for piece in data.chunks(split) {
        d.push(piece);
        loop {
            match d.decode() {
                Ok(Some(m)) => seen.push(m),
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    for m in seen {
        let mut wire = BytesMut::new();
        encode(&m, &mut wire);
        let mut again = Decoder::new();
        again.push(&wire);
        assert_eq!(again.decode().ok().flatten(), Some(m));
    }
});
