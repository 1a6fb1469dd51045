//! HTTP/1.1 request heads as the fast path reads them (`net::http::head::read_head`): no
//! panic; a fast head lies inside the bytes read, its target is an origin-form target of
//! visible ASCII inside the head, and the head ends with its empty line; "need more bytes"
//! only below the head limit. Bytes after the head (a pipelined request) are never part
//! of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media_server::net::http::head::{read_head, Head, MAX_HEAD};

fuzz_target!(|data: &[u8]| {
    match read_head(data) {
        Head::Partial => assert!(data.len() < MAX_HEAD),
        Head::Other => {}
        Head::Fast(h) => {
            assert!(h.len <= data.len() && h.len <= MAX_HEAD);
            assert!(data[..h.len].ends_with(b"\n"));
            assert!(h.target.end <= h.len);
            let target = &data[h.target.clone()];
            assert!(target.starts_with(b"/"));
            assert!(target.iter().all(u8::is_ascii_graphic));
            if let Some(o) = h.origin {
                assert!(o.end <= h.len);
            }
            // The same head followed by anything reads the same.
            let mut more = data[..h.len].to_vec();
            more.extend_from_slice(b"GET / HTTP/1.1\r\n");
            match read_head(&more) {
                Head::Fast(again) => assert_eq!(again.len, h.len),
                other => panic!("{other:?}"),
            }
        }
    }
});
