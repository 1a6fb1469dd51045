//! Checks that the committed seeds still reach the states they were written
//! for (a seed the library now rejects early gives the fuzzer a poor start).
//! Run inside fuzz/: `cargo test` (uses fuzz/target, not the main target dir).

use std::path::PathBuf;

use bytes::Bytes;
use media_server::hub::{Event, Hub};
use media_server::ingest::rtmp::RtmpIngest;
use media_server::media::aac::AacConfig;
use media_server::media::h264::AvcConfig;
use media_server::proto::flv::{parse_video, VideoTag};
use media_server::proto::rtmp::amf0::{decode_all, encode};
use media_server::proto::rtmp::chunk::ChunkReader;
use media_server::proto::rtmp::message::RtmpMessage;
use media_server::proto::rtmp::server::{ServerSession, SessionEvent};

fn seed(target: &str, name: &str) -> Vec<u8> {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "seeds", target, name].iter().collect();
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "seeds", target].iter().collect();
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn rtmp_chunk_seeds_parse_completely() {
    for (name, data) in seeds("rtmp_chunk") {
        let n = usize::from(data[0] % 8);
        let stream = &data[1 + n..];
        let mut r = ChunkReader::new(1 << 20);
        r.push(stream);
        let mut count = 0;
        while let Some(m) = r.read_message().unwrap_or_else(|e| panic!("{name}: {e}")) {
            RtmpMessage::parse(&m).unwrap_or_else(|e| panic!("{name}: {e}"));
            count += 1;
        }
        assert!(count > 0, "{name}: no message");
        assert_eq!(r.buffered(), 0, "{name}: trailing bytes");
    }
}

fn session_events(data: &[u8]) -> Vec<SessionEvent> {
    let mut s = ServerSession::new(1 << 20, 4096);
    s.push(data);
    let mut v = vec![];
    while let Some(e) = s.poll_event().unwrap() {
        v.push(e);
    }
    assert!(!s.take_output().is_empty());
    v
}

#[test]
fn rtmp_session_seeds_reach_publish_and_play() {
    let ev = session_events(&seed("rtmp_session", "publish_flow"));
    assert!(matches!(&ev[0], SessionEvent::Publish { app, name, .. } if app == "live" && name == "key"), "{ev:?}");
    assert!(matches!(ev[1], SessionEvent::Metadata(_)), "{ev:?}");
    assert!(ev.iter().any(|e| matches!(e, SessionEvent::Video { timestamp: 33, .. })), "{ev:?}");
    assert!(matches!(ev.last(), Some(SessionEvent::Unpublish)), "{ev:?}");
    let ev = session_events(&seed("rtmp_session", "play_flow"));
    assert!(matches!(&ev[0], SessionEvent::Play { name, .. } if name == "stream1"), "{ev:?}");
    session_events(&seed("rtmp_session", "connect"));
    let ev = session_events(&seed("rtmp_session", "multi_chunk"));
    assert!(matches!(&ev[0], SessionEvent::Video { timestamp: 1000, .. }), "{ev:?}");
}

#[test]
fn amf0_seeds_decode() {
    for (name, data) in seeds("amf0") {
        let values = decode_all(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut out = bytes::BytesMut::new();
        values.iter().for_each(|v| encode(v, &mut out));
        assert_eq!(decode_all(&out).unwrap(), values, "{name}");
    }
}

#[test]
fn flv_avc_seeds() {
    let tag = Bytes::from(seed("flv_avc", "avc_seq_header_tag"));
    let Ok(VideoTag::SequenceHeader { config, .. }) = parse_video(tag) else {
        panic!("not a sequence header");
    };
    let cfg = AvcConfig::parse(config).unwrap();
    assert_eq!((cfg.info.width, cfg.info.height), (1280, 720));
    AvcConfig::parse(Bytes::from(seed("flv_avc", "avcc"))).unwrap();
    media_server::media::h264::parse_sps(&seed("flv_avc", "sps")).unwrap();
    let Ok(VideoTag::SequenceHeader { config, .. }) = parse_video(Bytes::from(seed("flv_avc", "enhanced_seq_start"))) else {
        panic!("enhanced seq start");
    };
    AvcConfig::parse(config).unwrap();
    for name in ["idr_frame_tag", "enhanced_coded_frames", "enhanced_modex"] {
        let t = parse_video(Bytes::from(seed("flv_avc", name))).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(matches!(t, VideoTag::Frame { .. }), "{name}: {t:?}");
    }
    let nals = seed("flv_avc", "avcc_nal_units");
    let units: Vec<_> = media_server::media::h264::avcc_nal_units(&nals, 4).collect();
    assert!(units.len() == 2 && units.iter().all(Result::is_ok), "{units:?}");
    for name in ["aac_seq_header_tag", "enhanced_audio"] {
        media_server::proto::flv::parse_audio(Bytes::from(seed("flv_avc", name))).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn aac_seeds_parse() {
    for (name, data) in seeds("aac_config") {
        AacConfig::parse(Bytes::from(data)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn ingest_seeds_reach_the_hub() {
    for (name, data) in seeds("ingest_rtmp") {
        let hub = Hub::default();
        let mut ingest = RtmpIngest::new(hub.publish("s", "rtmp").unwrap());
        let mut sub = hub.subscribe("s", "test").unwrap();
        let mut ts = 0u32;
        let (mut pos, mut tracks, mut frames) = (0, 0, 0);
        while pos + 3 <= data.len() {
            let kind = data[pos];
            let len = usize::from(u16::from_be_bytes([data[pos + 1], data[pos + 2]]));
            let body = Bytes::copy_from_slice(&data[pos + 3..pos + 3 + len]);
            pos += 3 + len;
            ts = match kind >> 2 {
                63 => ts.wrapping_sub(0x8000_0007),
                step => ts.wrapping_add(u32::from(step) * 33),
            };
            match kind & 3 {
                0 => ingest.on_video(ts, body).unwrap_or_else(|e| panic!("{name}: {e}")),
                1 => ingest.on_audio(ts, body).unwrap_or_else(|e| panic!("{name}: {e}")),
                2 => ingest.on_metadata(decode_all(&body).unwrap().last().unwrap()),
                _ => {}
            }
        }
        assert_eq!(pos, data.len(), "{name}");
        while let Some(ev) = sub.try_recv() {
            match ev {
                Event::Tracks(_) => tracks += 1,
                Event::Frame(_) => frames += 1,
            }
        }
        assert!(tracks > 0 && frames > 0, "{name}: {tracks} tracks, {frames} frames");
    }
}

/// The audio seeds are real AAC and Opus packets: each transcodes into frames of the other
/// codec (a seed the decoders refused would start the fuzzer nowhere).
#[test]
fn audio_transcode_seeds_come_out_as_the_other_codec() {
    use media_server::media::audio::{AudioQuality, Direction, Transcoder};
    use media_server::media::opus::OpusConfig;
    use media_server::media::{CodecConfig, Frame, Track, TrackId};
    // crash-*: inputs that once crashed the target (they need only not crash).
    for (name, data) in seeds("audio_transcode").into_iter().filter(|(n, _)| !n.starts_with("crash-")) {
        let head = data[0];
        let (codec, direction) = if head & 1 == 0 {
            let asc = AacConfig::parse(Bytes::from_static(&[0x12, 0x10])).unwrap();
            (CodecConfig::Aac(asc), Direction::AacToOpus)
        } else {
            let c = OpusConfig {
                channels: 1 + (head >> 1) % 2,
                input_sample_rate: 48_000,
                pre_skip: u16::from(head >> 2) * 13,
            };
            (CodecConfig::Opus(c), Direction::OpusToAac)
        };
        let source = Track { id: TrackId(1), timescale: 1000, codec };
        let mut t = Transcoder::new(&source, direction, AudioQuality::default()).unwrap().unwrap();
        let (mut rest, mut pts, mut out, mut errors) = (&data[1..], 0i64, 0usize, 0usize);
        while rest.len() >= 4 {
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            pts += i64::from(i16::from_be_bytes([rest[2], rest[3]]));
            let (packet, tail) = rest[4..].split_at(len.min(rest.len() - 4));
            rest = tail;
            let frame = Frame { track: TrackId(1), pts, dts: pts, keyframe: true, data: Bytes::copy_from_slice(packet) };
            match t.push(&frame) {
                Ok(f) => out += f.len(),
                Err(_) => errors += 1,
            }
        }
        assert!(out >= 8 && errors == 0, "{name}: {out} frames out, {errors} refused");
    }
}

#[test]
fn ice_stun_seeds_reach_routing_and_framing() {
    use media_server::proto::ice;
    let req = seed("ice_stun", "binding_request");
    assert_eq!(ice::local_ufrag(&req), Some("srvUfrag"));
    let resp = seed("ice_stun", "binding_response");
    let mut tx = [0u8; 12];
    tx.copy_from_slice(&resp[8..20]);
    assert!(ice::mapped_address(&resp, tx).is_some());
    let mut r = ice::FrameReader::default();
    r.push(&seed("ice_stun", "tcp_frames"));
    assert_eq!(r.next_frame(), Some(req));
    assert_eq!(r.next_frame().map(|f| f.len()), Some(3));
}
