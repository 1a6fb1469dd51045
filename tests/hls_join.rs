//! Every HLS client joins at the very first 200: players that do not speak LL-HLS (ffmpeg,
//! ffprobe — like VLC, TVs and CDN packagers) are started the moment the multivariant
//! playlist first answers, for an RTMP publisher (ffmpeg), a WHIP publisher with a long
//! keyframe interval (aiortc, whose encoder sends keyframes only when asked) and an ESP32-style
//! camera. Each must find its streams and decode. The WHIP stream's segments stay within
//! `EXT-X-TARGETDURATION` because the server asks for a keyframe when a segment is due, and
//! the multivariant playlist's `BANDWIDTH`/`AVERAGE-BANDWIDTH` are measured, not made up.
//! The servers run with the shipped defaults for HLS (packaging on demand, from the first
//! request). (Browsers joining at the first 200 are in tests/pages.rs.)

mod common;

#[path = "../examples/esp32_cam/frames.rs"]
#[allow(dead_code)]
mod frames;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

/// `ffprobe` on a live URL: success, the codec names of its streams (one per line), stderr.
async fn ffprobe(url: String) -> (bool, String, String) {
    let out = tokio::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
        ])
        .arg(&url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("ffprobe finishes")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ffmpeg` decoding `secs` seconds of a live URL: success, video frames decoded, stderr.
async fn ffmpeg_decode(url: String, secs: u32) -> (bool, u64, String) {
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(&url)
        .args(["-t", &secs.to_string(), "-map", "0:v", "-f", "null", "-"])
        .args(["-progress", "pipe:1"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("ffmpeg finishes")
        .unwrap();
    let progress = String::from_utf8_lossy(&out.stdout);
    let frames = progress
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("frame="))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0);
    (
        out.status.success(),
        frames,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts ffprobe (multivariant and media playlist) and ffmpeg at once, the moment the
/// multivariant playlist answers 200, and checks that each found `codecs` and decoded.
async fn join_at_first_200(ts: &TestServer, id: &str, codecs: &[&str]) -> String {
    let index = ts.http(&format!("/hls/{id}/index.m3u8"));
    let (master, waited) = first_200(&index, 30).await;
    eprintln!("{id}: first 200 after {waited:?}:\n{master}");
    let media = ts.http(&format!("/hls/{id}/media.m3u8"));
    let (probe_index, probe_media, decode) = tokio::join!(
        ffprobe(index.clone()),
        ffprobe(media.clone()),
        ffmpeg_decode(index.clone(), 3),
    );
    for (what, (ok, streams, err)) in [("index", probe_index), ("media", probe_media)] {
        assert!(ok, "ffprobe {what}: {err}");
        for c in codecs {
            assert!(
                streams.lines().any(|l| l.trim() == *c),
                "ffprobe {what} found {streams:?}, not {c}: {err}"
            );
        }
        assert!(!err.contains("Empty segment"), "ffprobe {what}: {err}");
    }
    let (ok, frames, err) = decode;
    assert!(ok && frames > 0, "ffmpeg decoded {frames} frames: {err}");
    // The first 200 of a plain media playlist request lists a complete segment.
    let (status, _, body) = get(&media).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("#EXTINF:"));
    // BANDWIDTH is measured: the peak over the window, at least the average.
    let attr = |name: &str| -> u64 {
        master
            .split(&format!("{name}="))
            .nth(1)
            .and_then(|v| v.split([',', '\n']).next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {master}"))
    };
    let (peak, average) = (attr("BANDWIDTH"), attr("AVERAGE-BANDWIDTH"));
    assert!(
        average > 10_000 && peak >= average && peak < 50_000_000,
        "BANDWIDTH={peak} AVERAGE-BANDWIDTH={average}"
    );
    master
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_and_ffprobe_join_an_rtmp_stream_at_the_first_200() {
    if !require_program("ffmpeg") {
        return;
    }
    let ts = start_with("join-rtmp", |c| c.hls.on_demand = true).await;
    let (id, key) = ts.create_stream("joinrtmp").await;
    // Ask before the publisher exists: 404 (not live), then held, then 200 with a segment.
    let mut publisher = ffmpeg_publish(&ts.rtmp(&format!("/live/{key}")), 20);
    join_at_first_200(&ts, &id, &["h264", "aac"]).await;
    let _ = publisher.kill();
    let _ = publisher.wait();
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_and_ffprobe_join_a_camera_at_the_first_200() {
    if !require_program("ffmpeg") {
        return;
    }
    let ts = start_with("join-camera", |c| c.hls.on_demand = true).await;
    let (id, key) = ts.create_stream("joincam").await;
    let url = format!("ws://{}/ingest/ws?key={key}", ts.server.http_addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let camera = tokio::spawn(async move {
        for n in 0..400u64 {
            let jpeg = frames::jpeg(n, 320, 240, 60);
            if ws.send(Message::Binary(jpeg.into())).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    join_at_first_200(&ts, &id, &["h264"]).await;
    // The camera encoder's keyframe interval follows the segment target (2 s).
    let text = String::from_utf8_lossy(&get(&ts.http(&format!("/hls/{id}/media.m3u8"))).await.2)
        .into_owned();
    let pl = parse_media_playlist(text.as_bytes());
    assert_eq!(pl.target_duration, 2, "{text}");
    for s in &pl.segments {
        assert!(s.duration < 2.5, "segment of {} s:\n{text}", s.duration);
    }
    camera.abort();
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aiortc_publisher_joins_at_the_first_200_and_its_segments_keep_their_length() {
    let Some(python) = test_python() else {
        return;
    };
    if !require_program("ffmpeg") {
        return;
    }
    let ts = start_with("join-aiortc", |c| c.hls.on_demand = true).await;
    let (id, key) = ts.create_stream("joinwhip").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/whip_aiortc.py");
    let child = tokio::process::Command::new(python)
        .arg(script)
        .arg(ts.http("/whip/live/joinwhip"))
        .arg(&key)
        .arg("14")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Opus is packaged as AAC for HLS (`[transcode] hls_aac`, the default).
    join_at_first_200(&ts, &id, &["h264", "aac"]).await;
    // aiortc's encoder (libx264 with its default 250-frame GOP) sends a keyframe only when
    // asked: the server asked whenever a segment was due.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, detail) = api(
        &ts.http(""),
        reqwest::Method::GET,
        &format!("/api/v1/streams/{id}"),
        None,
    )
    .await;
    let requests = detail["live"]["transport"]["keyframe_requests"]
        .as_u64()
        .unwrap_or(0);
    assert!(requests >= 2, "keyframe requests: {detail}");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("aiortc finishes")
        .unwrap();
    assert!(
        out.status.success(),
        "aiortc: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = wait_for_endlist(&ts, &id, 20).await;
    let pl = parse_media_playlist(text.as_bytes());
    assert!(pl.segments.len() >= 5, "{text}");
    assert_eq!(pl.target_duration, 2, "{text}");
    // Every segment but the last (closed by the publisher leaving) is cut near the target:
    // within EXT-X-TARGETDURATION once rounded, as the spec requires.
    for s in &pl.segments[..pl.segments.len() - 1] {
        assert!(
            s.duration >= 1.9 && s.duration < 2.5,
            "segment of {} s:\n{text}",
            s.duration
        );
    }
    ts.server.shutdown().await;
}
