//! The MJPEG multipart writer and its parser: any sequence of parts (split from the input by
//! its first byte) written out and parsed back gives the same parts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media_server::proto::multipart;

fuzz_target!(|data: &[u8]| {
    let _ = multipart::parse_parts(data);
    let Some((&sep, rest)) = data.split_first() else {
        return;
    };
    let parts: Vec<&[u8]> = rest.split(|b| *b == sep).collect();
    let mut body = Vec::new();
    for p in &parts {
        body.extend_from_slice(&multipart::part_header(p.len()));
        body.extend_from_slice(p);
        body.extend_from_slice(&multipart::part_trailer());
    }
    let parsed = multipart::parse_parts(&body).expect("our own output parses");
    assert_eq!(parsed.len(), parts.len());
    for (a, b) in parsed.iter().zip(&parts) {
        assert_eq!(a.as_slice(), *b);
    }
});
