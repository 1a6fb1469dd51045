//! The crash-recovery fragment scanner and the VOD playlist built from it, on arbitrary
//! files: never panic; the usable length never exceeds the file and every fragment lies
//! inside it, in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media_server::proto::mp4scan;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    let Ok(s) = mp4scan::scan(&mut std::io::Cursor::new(data), len) else {
        return;
    };
    assert!(s.valid_len <= len && s.init_len <= s.valid_len);
    let mut end = s.init_len;
    for f in &s.fragments {
        assert_eq!(f.offset, end);
        end = f.offset + f.len;
    }
    assert_eq!(end, s.valid_len);
    let _ = s.duration_secs();
    let _ = media_server::egress::vod::vod_playlist(&s, "media.mp4", true);
});
