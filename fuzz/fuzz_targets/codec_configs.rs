//! The Enhanced RTMP codec parsers on the same input: HEVC `hvcC` (and its SPS), AV1 `av1C`
//! (and OBU walking, the sequence header), VP9 `vpcC` and keyframe headers, `OpusHead`, and
//! Enhanced RTMP tag classification including multitrack (each track's sequence start is fed
//! to its codec's parser, so seeds that are whole tags reach the record parsers).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use media_server::media::av1::{find_sequence_header, parse_sequence_header, Av1Config};
use media_server::media::hevc::{parse_sps_size, HevcConfig};
use media_server::media::opus::OpusConfig;
use media_server::media::vp9::{keyframe_size, Vp9Config};
use media_server::proto::flv::{parse_audio, parse_video, AudioTag, VideoCodec, VideoTag};

fn video_config(codec: VideoCodec, config: Bytes) {
    match codec {
        VideoCodec::Hevc => {
            if let Ok(c) = HevcConfig::parse(config) {
                let _ = c.codec_string();
            }
        }
        VideoCodec::Av1 => {
            if let Ok(mut c) = Av1Config::parse(config.clone()) {
                let _ = c.codec_string();
                c.learn_size(&config);
            }
        }
        VideoCodec::Vp9 => {
            if let Ok(c) = Vp9Config::parse(config) {
                let _ = c.codec_string();
            }
        }
        _ => {}
    }
}

fn video(tag: VideoTag) {
    match tag {
        VideoTag::SequenceHeader { codec, config } => video_config(codec, config),
        VideoTag::Frame { data, .. } => {
            let _ = keyframe_size(&data);
            let _ = find_sequence_header(&data);
        }
        VideoTag::Multitrack(tracks) => tracks.into_iter().for_each(|(_, t)| video(t)),
        _ => {}
    }
}

fn audio(tag: AudioTag) {
    match tag {
        AudioTag::SequenceHeader { config, .. } => {
            let _ = OpusConfig::parse_head(&config);
        }
        AudioTag::Multitrack(tracks) => tracks.into_iter().for_each(|(_, t)| audio(t)),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(tag) = parse_video(bytes.clone()) {
        video(tag);
    }
    if let Ok(tag) = parse_audio(bytes.clone()) {
        audio(tag);
    }
    for codec in [VideoCodec::Hevc, VideoCodec::Av1, VideoCodec::Vp9] {
        video_config(codec, bytes.clone());
    }
    let _ = parse_sps_size(data);
    let _ = parse_sequence_header(data);
    let _ = keyframe_size(data);
    let _ = OpusConfig::parse_head(data);
});
