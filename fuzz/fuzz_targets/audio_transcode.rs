//! The audio transcoders on untrusted packets: AAC frames (decoded by rusty_aac) into
//! AAC → Opus, Opus packets (decoded by opus-rs) into Opus → AAC, with publisher-chosen
//! timestamps (jumps, repeats, going back). Input: one byte choosing the direction and the
//! source configuration, then packets as [u16 length][u16 pts step in ms][bytes].
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use media_server::media::aac::AacConfig;
use media_server::media::audio::{AudioQuality, Direction, Transcoder};
use media_server::media::opus::OpusConfig;
use media_server::media::{CodecConfig, Frame, Track, TrackId};

/// AAC-LC 44.1 kHz stereo, AAC-LC 48 kHz mono, HE-AAC (SBR) 22.05/44.1 kHz stereo.
const ASCS: [&[u8]; 3] = [&[0x12, 0x10], &[0x11, 0x88], &[0x2b, 0x14, 0x08, 0x00]];

static QUIET: std::sync::Once = std::sync::Once::new();

fuzz_target!(|data: &[u8]| {
    // The transcoder contains a codec crate's panic (`catch_unwind`) and reports an error;
    // libFuzzer's hook would abort on it first. A panic that escapes still aborts (it cannot
    // unwind out of the fuzz target), so the fuzzer still finds those.
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let Some((&head, mut rest)) = data.split_first() else {
        return;
    };
    let (codec, direction) = if head & 1 == 0 {
        let asc = ASCS[usize::from(head >> 1) % ASCS.len()];
        let Ok(c) = AacConfig::parse(Bytes::from_static(asc)) else {
            return;
        };
        (CodecConfig::Aac(c), Direction::AacToOpus)
    } else {
        let config = OpusConfig {
            channels: 1 + (head >> 1) % 2,
            input_sample_rate: 48_000,
            pre_skip: u16::from(head >> 2) * 13,
        };
        (CodecConfig::Opus(config), Direction::OpusToAac)
    };
    let source = Track {
        id: TrackId(1),
        timescale: 1000,
        codec,
    };
    let Ok(Some(mut t)) = Transcoder::new(&source, direction, AudioQuality::default()) else {
        return;
    };
    let mut pts = 0i64;
    while rest.len() >= 4 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let step = i64::from(i16::from_be_bytes([rest[2], rest[3]]));
        rest = &rest[4..];
        let n = len.min(rest.len());
        let (packet, tail) = rest.split_at(n);
        rest = tail;
        pts += step;
        let frame = Frame {
            track: TrackId(1),
            pts,
            dts: pts,
            keyframe: true,
            data: Bytes::copy_from_slice(packet),
        };
        if let Ok(out) = t.push(&frame) {
            for f in out {
                assert_eq!(f.track, TrackId(1));
            }
        }
    }
});
