//! The WHIP media path: a byte string cut into RTP packets (sequence, timestamp, marker and
//! payload taken from the input) fed to the H.264 depacketizer through `WhipMedia`, plus
//! Opus packets. Must never panic; every published frame is a well-formed AVCC sample.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use media_server::ingest::whip::{Output, WhipMedia};
use media_server::proto::rtp::H264Depacketizer;

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut media = WhipMedia::new(true, true, t0);
    let mut depacketizer = H264Depacketizer::new();
    let mut out = Vec::new();
    let mut units = Vec::new();
    let mut rest = data;
    let mut n = 0u64;
    // Packet: [flags][seq lo][ts delta][len][payload...]
    while rest.len() >= 4 {
        let (flags, seq, ts, len) = (rest[0], rest[1], rest[2], usize::from(rest[3]));
        rest = &rest[4..];
        let len = len.min(rest.len());
        let payload = Bytes::copy_from_slice(&rest[..len]);
        rest = &rest[len..];
        n += 1;
        let at = t0 + Duration::from_millis(n * 5);
        let seq = u16::from(seq) | (u16::from(flags & 0x0f) << 8);
        let ts = (u32::from(ts) * 1500).wrapping_add(if flags & 0x20 != 0 { u32::MAX - 100 } else { 0 });
        if flags & 0x80 != 0 {
            media.on_audio(seq, ts, &payload, at, &mut out);
        } else {
            media.on_video(seq, ts, flags & 0x40 != 0, &payload, at, &mut out);
            let _ = depacketizer.push(seq, ts, flags & 0x40 != 0, &payload, &mut units);
        }
    }
    for o in out {
        if let Output::Frame(f) = o {
            if f.track == media_server::ingest::whip::VIDEO_TRACK {
                // Every length prefix lands exactly on the end.
                let mut d = &f.data[..];
                while !d.is_empty() {
                    assert!(d.len() >= 4);
                    let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
                    assert!(d.len() >= 4 + len);
                    d = &d[4 + len..];
                }
            }
        }
    }
    for u in units {
        assert!(u.nals.iter().all(|n| !n.is_empty()));
    }
});
