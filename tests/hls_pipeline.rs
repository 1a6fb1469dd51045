//! In-process RTMP → hub → LL-HLS: a Rust RTMP publisher (`rml_rtmp`'s client) pushes the
//! committed fixture (H.264 with B-frames + AAC, 4 s); the playlist must parse with `m3u8-rs`,
//! the segments and parts must hold every frame with continuous track timestamps, and (with
//! ffmpeg, required under CI) decode without errors.

mod common;

use std::time::Duration;

use common::*;
use mp4_atom::{Decode, Moof, Moov};

/// Per-track sample counts and the end time of each track, walking init + segments.
fn walk_segments(init: &[u8], segments: &[Vec<u8>]) -> (Vec<u32>, Vec<u64>, Vec<u32>) {
    let mut cur = std::io::Cursor::new(init);
    let _ftyp = mp4_atom::Ftyp::decode(&mut cur).unwrap();
    let moov = Moov::decode(&mut cur).unwrap();
    let timescales: Vec<u32> = moov.trak.iter().map(|t| t.mdia.mdhd.timescale).collect();
    let mut counts = vec![0u32; moov.trak.len()];
    let mut next: Vec<Option<u64>> = vec![None; moov.trak.len()];
    for seg in segments {
        let mut cur = std::io::Cursor::new(seg.as_slice());
        while (cur.position() as usize) < seg.len() {
            let moof = Moof::decode(&mut cur).unwrap();
            for traf in &moof.traf {
                let i = traf.tfhd.track_id as usize - 1;
                let base = traf.tfdt.as_ref().unwrap().base_media_decode_time;
                if let Some(expected) = next[i] {
                    assert_eq!(base, expected, "track {i}: decode times must be continuous");
                }
                let mut dur = 0u64;
                for e in traf.trun[0].samples.iter() {
                    dur += u64::from(e.duration.unwrap());
                    counts[i] += 1;
                }
                next[i] = Some(base + dur);
            }
            let header = mp4_atom::Header::decode(&mut cur).unwrap();
            assert_eq!(header.kind, mp4_atom::FourCC::new(b"mdat"));
            cur.set_position(cur.position() + header.size.unwrap() as u64);
        }
    }
    (
        counts,
        next.into_iter().map(|n| n.unwrap_or(0)).collect(),
        timescales,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_through_rtmp_becomes_complete_ll_hls() {
    let ts = start_server("pipeline").await;
    let (id, key) = ts.create_stream("fixture").await;
    let tags = read_flv(FIXTURE);
    // Media tags only: packet type 1 (not sequence headers or the end-of-sequence tag).
    let media = |kind: u8| {
        tags.iter()
            .filter(|t| t.kind == kind && t.body[1] == 1)
            .count() as u32
    };
    let (video_frames, audio_frames) = (media(9), media(8));
    assert_eq!(video_frames, 120, "fixture: 4 s at 30 fps");

    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .expect("publish accepted");
    publisher.send_tags(&tags, false).await;
    // Let the server read everything before the publisher leaves.
    tokio::time::sleep(Duration::from_millis(300)).await;
    publisher.finish().await;

    let text = wait_for_endlist(&ts, &id, 15).await;
    let pl = parse_media_playlist(text.as_bytes());
    assert!(text.contains("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES"));
    assert!(text.contains("#EXT-X-PART-INF:PART-TARGET=0.200"));
    assert!(text.contains("#EXT-X-PROGRAM-DATE-TIME:"));
    // 4 s with a keyframe every second and a 2 s target: two segments of 2 s.
    assert_eq!(pl.segments.len(), 2, "{text}");
    let total: f32 = pl.segments.iter().map(|s| s.duration).sum();
    assert!((total - 4.0).abs() < 0.1, "total duration {total}");
    for s in &pl.segments {
        assert!((s.duration - 2.0).abs() < 0.1, "segment of {}", s.duration);
    }

    let (status, ct, master) = get(&ts.http(&format!("/hls/{id}/index.m3u8"))).await;
    assert_eq!(status, 200);
    assert_eq!(ct, "application/vnd.apple.mpegurl");
    let master = String::from_utf8_lossy(&master);
    assert!(
        master.contains("CODECS=\"avc1.64000d,mp4a.40.2\""),
        "{master}"
    );
    assert!(master.contains("RESOLUTION=320x240"), "{master}");

    // Every object's name carries the playlist's run.
    let run = pl.segments[0].uri.split_once('-').unwrap().0.to_owned();
    assert!(
        text.contains(&format!("#EXT-X-MAP:URI=\"{run}-init0.mp4\"")),
        "{text}"
    );
    let (status, ct, init) = get(&ts.http(&format!("/hls/{id}/{run}-init0.mp4"))).await;
    assert_eq!((status, ct.as_str()), (200, "video/mp4"));
    let mut segments = vec![];
    for (i, s) in pl.segments.iter().enumerate() {
        let (status, _, seg) = get(&ts.http(&format!("/hls/{id}/{}", s.uri))).await;
        assert_eq!(status, 200);
        // The segment is exactly its parts, back to back.
        let mut parts = vec![];
        for p in 0.. {
            let (status, _, part) = get(&ts.http(&format!(
                "/hls/{id}/{run}-part{}.{p}.m4s",
                pl.media_sequence + i as u64
            )))
            .await;
            if status != 200 {
                break;
            }
            parts.extend_from_slice(&part);
        }
        assert_eq!(parts, seg.to_vec(), "segment {i} = its parts");
        segments.push(seg.to_vec());
    }
    let (counts, ends, timescales) = walk_segments(&init, &segments);
    assert_eq!(
        counts,
        vec![video_frames, audio_frames],
        "every frame is in a segment"
    );
    // Both tracks end where the input ends (within one frame).
    let video_end = ends[0] as f64 / f64::from(timescales[0]);
    assert!((video_end - 4.0).abs() < 0.05, "video ends at {video_end}");

    if require_program("ffmpeg") {
        let dir = ts.dir.join("decode");
        std::fs::create_dir_all(&dir).unwrap();
        let mut whole = init.to_vec();
        for s in &segments {
            whole.extend_from_slice(s);
        }
        let file = dir.join("all.mp4");
        std::fs::write(&file, &whole).unwrap();
        let out = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-xerror", "-i"])
            .arg(&file)
            .args(["-f", "null", "-"])
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "ffmpeg: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let probe = std::process::Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-count_frames",
                "-select_streams",
                "v",
                "-show_entries",
                "stream=nb_read_frames,has_b_frames",
                "-of",
                "csv=p=0",
            ])
            .arg(&file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&probe.stdout);
        assert!(
            text.trim().starts_with(&format!("{video_frames}"))
                || text.contains(&format!(",{video_frames}")),
            "ffprobe: {text}"
        );
    }
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_packaged_from_its_first_hls_request_starting_from_the_gop_cache() {
    let ts = start_with("on-demand", |c| c.hls.on_demand = true).await;
    let (id, key) = ts.create_stream("lazy").await;
    let tags = looped(&read_flv(FIXTURE), 3);
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .expect("publish accepted");
    let pusher = tokio::spawn(async move {
        publisher.send_tags(&tags, true).await;
        publisher.finish().await;
    });
    // Live for a while, nobody asked for HLS: nothing subscribes to package it.
    let live = loop {
        if let Some(l) = ts.server.hub.get(&id).filter(|l| l.tracks().is_some()) {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        live.snapshot().subscribers,
        0,
        "packaged before anyone asked"
    );
    // The first request starts it from the GOP cache (the fixture has a keyframe every
    // second) and is answered with a playlist that lists a whole segment.
    let (status, _, body) = get(&ts.http(&format!("/hls/{id}/media.m3u8"))).await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body).into_owned();
    let pl = parse_media_playlist(text.as_bytes());
    assert!(!pl.segments.is_empty(), "{text}");
    assert!(pl.segments[0].duration >= 1.9, "{text}");
    assert_eq!(live.snapshot().subscribers, 1);
    let run = pl.segments[0].uri.split_once('-').unwrap().0.to_owned();
    let (status, _, init) = get(&ts.http(&format!("/hls/{id}/{run}-init0.mp4"))).await;
    assert_eq!(status, 200);
    let (status, _, seg) = get(&ts.http(&format!("/hls/{id}/{}", pl.segments[0].uri))).await;
    assert_eq!(status, 200);
    let (counts, _, _) = walk_segments(&init, &[seg.to_vec()]);
    assert!(counts[0] >= 55, "about 2 s of 30 fps video: {counts:?}");
    pusher.abort();
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_reload_waits_for_the_next_part_and_rejects_bad_requests() {
    let ts = start_server("blocking").await;
    let (id, key) = ts.create_stream("live1").await;
    let tags = read_flv(FIXTURE);
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .expect("publish accepted");
    let pusher = tokio::spawn(async move {
        publisher.send_tags(&tags, true).await;
        publisher.finish().await;
    });
    let url = ts.http(&format!("/hls/{id}/media.m3u8"));
    let first = String::from_utf8(wait_for_200(&url, 10).await.to_vec()).unwrap();
    let pl = parse_media_playlist(first.as_bytes());
    // The part named by the preload hint.
    let hint = first
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\""))
        .expect("preload hint")
        .trim_end_matches('"')
        .to_owned();
    // URIs are relative (they resolve inside the viewer's session directory) and carry the
    // playlist's run: `{run}-part{msn}.{i}.m4s`.
    assert!(!hint.contains('?') && !hint.contains('/'), "{hint}");
    let (run, name) = hint.split_once('-').unwrap();
    let (msn, part) = name
        .trim_start_matches("part")
        .trim_end_matches(".m4s")
        .split_once('.')
        .map(|(a, b)| (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()))
        .unwrap();
    let started = std::time::Instant::now();
    let (status, _, body) = get(&format!("{url}?_HLS_msn={msn}&_HLS_part={part}")).await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains(&format!("URI=\"{hint}\"")),
        "the blocked reload returns once the hinted part exists:\n{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // The hinted part itself can be requested before it exists: the request waits.
    let (status, ct, _) =
        get(&ts.http(&format!("/hls/{id}/{run}-part{msn}.{}.m4s", part + 1))).await;
    assert_eq!((status, ct.as_str()), (200, "video/iso.segment"));
    // Another run's name is not this object.
    let (status, _, _) = get(&ts.http(&format!("/hls/{id}/0000abcd-part{msn}.0.m4s"))).await;
    assert_eq!(status, 404);

    let (status, ct, body) = get(&format!("{url}?_HLS_part=1")).await;
    assert_eq!(status, 400);
    assert_eq!(ct, "application/json");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["status"], 400);
    let (status, _, _) = get(&format!("{url}?_HLS_msn={}", pl.media_sequence + 50)).await;
    assert_eq!(status, 400);
    let (status, _, _) = get(&format!("{url}?_HLS_msn=abc")).await;
    assert_eq!(status, 400);
    let (status, _, _) = get(&ts.http("/hls/str_nope/media.m3u8")).await;
    assert_eq!(status, 404);
    pusher.await.unwrap();
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_player_receives_the_stream_from_the_gop_cache() {
    use rml_rtmp::sessions::{
        ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let ts = start_server("play").await;
    let (id, key) = ts.create_stream("p").await;
    let tags = read_flv(FIXTURE);
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .unwrap();
    // Two seconds of media first: a player joining now starts at the cached keyframe.
    let cut = tags.iter().position(|t| t.timestamp >= 1500).unwrap();
    publisher.send_tags(&tags[..cut], false).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut socket = tokio::net::TcpStream::connect(ts.server.rtmp_addr)
        .await
        .unwrap();
    let rest = client_handshake(&mut socket).await;
    let (mut session, _) = ClientSession::new(ClientSessionConfig::new()).unwrap();
    let mut results = session.handle_input(&rest).unwrap();
    results.push(session.request_connection("live".into()).unwrap());
    let mut video = vec![];
    let mut playing_requested = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 65536];
    let mut sent_rest = false;
    while video.len() < 30 && std::time::Instant::now() < deadline {
        for r in results.drain(..) {
            match r {
                ClientSessionResult::OutboundResponse(p) => {
                    socket.write_all(&p.bytes).await.unwrap()
                }
                ClientSessionResult::RaisedEvent(ClientSessionEvent::ConnectionRequestAccepted) => {
                    playing_requested = true;
                    let r = session.request_playback(id.clone()).unwrap();
                    if let ClientSessionResult::OutboundResponse(p) = r {
                        socket.write_all(&p.bytes).await.unwrap();
                    }
                }
                ClientSessionResult::RaisedEvent(ClientSessionEvent::VideoDataReceived {
                    data,
                    ..
                }) => {
                    video.push(data);
                }
                _ => {}
            }
        }
        if !video.is_empty() && !sent_rest {
            sent_rest = true;
            publisher.send_tags(&tags[cut..], false).await;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "server closed the player");
        results = session.handle_input(&buf[..n]).unwrap();
    }
    assert!(playing_requested);
    // First the AVC sequence header, then a keyframe.
    assert_eq!(&video[0][..2], &[0x17, 0x00], "sequence header first");
    assert_eq!(
        &video[1][..2],
        &[0x17, 0x01],
        "then a keyframe from the GOP cache"
    );
    assert!(video.len() >= 30);
    publisher.finish().await;
    ts.server.shutdown().await;
}
