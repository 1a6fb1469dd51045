//! FLV video/audio tag classification, AVCDecoderConfigurationRecord and SPS
//! parsing, and AVCC NAL unit splitting, all on the same input.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use media_server::media::h264::{avcc_nal_units, parse_sps, AvcConfig};
use media_server::proto::flv::{parse_audio, parse_video, VideoTag};

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    // A sequence header tag's payload is an avcC: parse that too, so the
    // seeds (complete FLV tags) reach the record parser with a valid prefix.
    if let Ok(VideoTag::SequenceHeader { config, .. }) = parse_video(bytes.clone()) {
        let _ = AvcConfig::parse(config);
    }
    let _ = parse_audio(bytes.clone());
    if let Ok(cfg) = AvcConfig::parse(bytes) {
        let _ = cfg.codec_string();
    }
    let _ = parse_sps(data);
    for size in [4u8, 1, 0] {
        for nal in avcc_nal_units(data, size) {
            if nal.is_err() {
                break;
            }
        }
    }
});
