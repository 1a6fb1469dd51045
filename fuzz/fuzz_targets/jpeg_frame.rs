//! The camera ingest's JPEG framing check, and (for inputs that pass it) the JPEG decoder the
//! transcoder runs on camera frames.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if media_server::proto::jpeg::validate(data).is_ok() {
        let _ = media_server::ingest::camera::transcode::decode_rgb(data);
    }
});
