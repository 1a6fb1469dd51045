//! AAC AudioSpecificConfig parsing (object type escape, explicit/implicit
//! SBR/PS, GASpecificConfig, program config element).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use media_server::media::aac::AacConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(cfg) = AacConfig::parse(Bytes::copy_from_slice(data)) {
        let _ = cfg.codec_string();
    }
});
