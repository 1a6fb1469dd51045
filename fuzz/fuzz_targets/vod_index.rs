//! The stored VOD index of a recording in object storage (`VodIndex::decode`) and the
//! `Range` header of proxied downloads (`parse_range`): no panic; a decoded index has
//! ordered, non-overlapping segments after the init segment and encodes back to text that
//! decodes to the same index; a range lies inside the object and is not empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media_server::egress::vod::{parse_range, RangeAsk, VodIndex};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(index) = VodIndex::decode(text) {
            let mut end = index.init_len;
            for (offset, len, _) in &index.segments {
                assert!(*offset >= end);
                end = offset + len;
            }
            let again = VodIndex::decode(&index.encode()).expect("its own encoding");
            assert_eq!(again.init_len, index.init_len);
            assert_eq!(again.segments.len(), index.segments.len());
        }
    }
    let size = data.first().map_or(0, |b| u64::from(*b) * 1000);
    if let RangeAsk::Part(r) = parse_range(data.get(1..).unwrap_or(&[]), size) {
        assert!(r.start < r.end && r.end <= size);
    }
});
