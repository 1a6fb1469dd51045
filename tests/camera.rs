//! ESP32-style cameras: JPEGs over a WebSocket in, MJPEG (multipart and frame.jpg) out without
//! transcoding, the H.264 made from them as HLS (decoded by ffprobe, required under CI), and
//! every documented failure: invalid and truncated frames, oversized messages, missing or
//! wrong keys — while other streams carry on.

mod common;

#[path = "../examples/esp32_cam/frames.rs"]
#[allow(dead_code)]
mod frames;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use media_server::proto::multipart;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(ts: &TestServer, key: Option<&str>, in_query: bool) -> Result<Ws, u16> {
    let base = format!("ws://{}/ingest/ws", ts.server.http_addr);
    let url = match (key, in_query) {
        (Some(k), true) => format!("{base}?key={k}"),
        _ => base,
    };
    let mut request = url.as_str().into_client_request().unwrap();
    if let (Some(k), false) = (key, in_query) {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("connect: {e}"),
    }
}

async fn send(ws: &mut Ws, data: Vec<u8>) {
    ws.send(Message::Binary(data.into())).await.unwrap();
}

/// Reads until the server closes; returns the close code and reason.
async fn close_of(ws: &mut Ws) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                return (u16::from(frame.code), frame.reason.to_string())
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    panic!("no close frame");
}

/// A multipart viewer collecting parts until `want` arrive, the part `until` arrives, or
/// `secs` pass.
async fn view(url: String, want: usize, secs: u64) -> Vec<Vec<u8>> {
    view_until(url, want, None, secs).await
}

async fn view_until(url: String, want: usize, until: Option<Vec<u8>>, secs: u64) -> Vec<Vec<u8>> {
    let client = reqwest::Client::new();
    let mut resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("multipart/x-mixed-replace; boundary="));
    let mut body = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, resp.chunk()).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            _ => break,
        }
        let parts = multipart::parse_parts(&body).unwrap_or_default();
        if parts.len() >= want || (until.is_some() && parts.last() == until.as_ref()) {
            break;
        }
    }
    multipart::parse_parts(&body).expect("well-formed multipart")
}

async fn wait_live(ts: &TestServer, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while ts.server.hub.get(id).is_none() {
        assert!(Instant::now() < deadline, "camera never went live");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_frames_reach_a_multipart_viewer_in_order_and_intact() {
    let ts = start_server("cam-mjpeg").await;
    let (id, key) = ts.create_stream("cam").await;
    let frames: Vec<Vec<u8>> = (0..100).map(|n| frames::jpeg(n, 320, 240, 60)).collect();
    let mut ws = connect(&ts, Some(&key), false).await.unwrap();
    send(&mut ws, frames[0].clone()).await;
    wait_live(&ts, &id).await;
    let viewer = tokio::spawn(view_until(
        ts.http(&format!("/mjpeg/{id}")),
        100,
        frames.last().cloned(),
        20,
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    for f in &frames[1..] {
        send(&mut ws, f.clone()).await;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let got = viewer.await.unwrap();
    // The viewer joined after frame 0: it gets a contiguous run ending with the last frame.
    let first = frames
        .iter()
        .position(|f| *f == got[0])
        .expect("a sent frame");
    assert!(first <= 5, "started at frame {first}");
    // Every part is a sent frame, byte for byte, in the order sent, ending with the last. A
    // viewer that falls behind skips to the newest frame by design (a loaded machine may
    // make this one skip a few): at most 5 of the run are missing.
    let positions: Vec<usize> = got
        .iter()
        .map(|g| {
            frames
                .iter()
                .position(|f| f == g)
                .expect("byte-identical to a sent frame")
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[1] > w[0]),
        "in order: {positions:?}"
    );
    assert_eq!(positions.last(), Some(&99), "ends with the last frame");
    assert!(
        got.len() + 5 >= frames.len() - first,
        "{} of {} frames arrived: {positions:?}",
        got.len(),
        frames.len() - first
    );
    let (status, ct, last) = get(&ts.http(&format!("/mjpeg/{id}/frame.jpg"))).await;
    assert_eq!((status, ct.as_str()), (200, "image/jpeg"));
    assert_eq!(last.to_vec(), frames[99]);
    // ETag revalidation.
    let client = reqwest::Client::new();
    let resp = client
        .get(ts.http(&format!("/mjpeg/{id}/frame.jpg")))
        .send()
        .await
        .unwrap();
    let etag = resp.headers()["etag"].clone();
    assert!(resp.headers().contains_key("last-modified"));
    let again = client
        .get(ts.http(&format!("/mjpeg/{id}/frame.jpg")))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    // The API shows the camera: protocol, resolution and frame rate.
    let v: serde_json::Value = reqwest::Client::new()
        .get(ts.http(&format!("/api/v1/streams/{id}")))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "live", "{v}");
    assert_eq!(v["live"]["protocol"], "ws-mjpeg", "{v}");
    let mjpeg = v["live"]["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["codec"] == "mjpeg")
        .expect("an mjpeg track")
        .clone();
    assert_eq!(
        (mjpeg["width"].as_u64(), mjpeg["height"].as_u64()),
        (Some(320), Some(240))
    );
    let fps = mjpeg["fps"]
        .as_f64()
        .unwrap_or_else(|| panic!("a measured frame rate: {v}"));
    assert!(
        (20.0..=45.0).contains(&fps),
        "about 35 fps sent, measured {fps}"
    );
    assert!(v["peak_viewer_count"].as_u64() >= Some(1), "{v}");
    ws.close(None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        ts.server.hub.get(&id).is_none(),
        "the stream ends when the socket closes"
    );
    let (status, ct, body) = get(&ts.http(&format!("/mjpeg/{id}/frame.jpg"))).await;
    assert_eq!(
        (status, ct.as_str()),
        (404, "application/json"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_keys_and_sizes_get_their_documented_outcome() {
    let ts = start_with("cam-bad", |c| {
        c.camera.max_frame_bytes = 64 * 1024;
        c.camera.max_invalid_frames = 3;
    })
    .await;
    let (healthy_id, healthy_key) = ts.create_stream("healthy").await;
    let (_, key) = ts.create_stream("bad").await;
    let mut healthy = connect(&ts, Some(&healthy_key), true).await.unwrap();
    send(&mut healthy, frames::jpeg(0, 160, 120, 50)).await;
    wait_live(&ts, &healthy_id).await;

    // No key, wrong key: 401 before the upgrade.
    assert_eq!(connect(&ts, None, false).await.err(), Some(401));
    assert_eq!(connect(&ts, Some("sk_wrong"), false).await.err(), Some(401));
    assert_eq!(connect(&ts, Some("sk_wrong"), true).await.err(), Some(401));
    // A second publisher on a live camera: 409.
    assert_eq!(
        connect(&ts, Some(&healthy_key), false).await.err(),
        Some(409)
    );

    // Invalid and truncated frames are dropped; three in a row close with 1007.
    let mut ws = connect(&ts, Some(&key), false).await.unwrap();
    let good = frames::jpeg(1, 160, 120, 50);
    send(&mut ws, b"definitely not a jpeg".to_vec()).await;
    send(&mut ws, good.clone()).await; // resets the count
    send(&mut ws, good[..good.len() / 2].to_vec()).await; // truncated
    send(&mut ws, vec![0xFF, 0xD8, 0xFF, 0xD9]).await; // no SOF
    send(&mut ws, b"garbage".to_vec()).await;
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(code, 1007, "{reason}");
    assert!(reason.contains("invalid frames in a row"), "{reason}");

    // Oversized: 1009.
    let mut ws = connect(&ts, Some(&key), false).await.unwrap();
    send(&mut ws, vec![0u8; 100 * 1024]).await;
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(code, u16::from(CloseCode::Size), "{reason}");

    // The healthy camera carried on.
    for n in 1..10 {
        send(&mut healthy, frames::jpeg(n, 160, 120, 50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _, last) = get(&ts.http(&format!("/mjpeg/{healthy_id}/frame.jpg"))).await;
    assert_eq!(status, 200);
    assert_eq!(last.to_vec(), frames::jpeg(9, 160, 120, 50));
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_that_stops_sending_is_closed_although_it_answers_pings() {
    let ts = start_with("cam-idle", |c| {
        c.camera.idle_timeout_ms = 1000;
        c.camera.ping_interval_ms = 200;
    })
    .await;
    let (id, key) = ts.create_stream("idle").await;
    let mut ws = connect(&ts, Some(&key), false).await.unwrap();
    send(&mut ws, frames::jpeg(0, 160, 120, 50)).await;
    wait_live(&ts, &id).await;
    let started = Instant::now();
    // Reading answers the server's pings with pongs; no more frames are sent.
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!((code, reason.as_str()), (1001, "idle timeout"));
    assert!(started.elapsed() < Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(ts.server.hub.get(&id).is_none(), "the stream ended");
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_viewer_does_not_slow_nine_others() {
    let ts = start_with("cam-fanout", |c| c.camera.transcode = false).await;
    let (id, key) = ts.create_stream("fan").await;
    // Large frames fill a stalled viewer's socket buffers quickly. (Made before connecting:
    // a camera that sends nothing is closed after the idle timeout.)
    let frames: Vec<Vec<u8>> = (0..80).map(|n| frames::jpeg(n, 1280, 720, 90)).collect();
    let mut ws = connect(&ts, Some(&key), false).await.unwrap();
    send(&mut ws, frames[0].clone()).await;
    wait_live(&ts, &id).await;
    // The stalled viewer opens the stream and never reads the body.
    let stalled = reqwest::Client::new()
        .get(ts.http(&format!("/mjpeg/{id}")))
        .send()
        .await
        .unwrap();
    let mut viewers = vec![];
    for _ in 0..9 {
        viewers.push(tokio::spawn(view(ts.http(&format!("/mjpeg/{id}")), 80, 15)));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let snapshot = ts.server.hub.get(&id).unwrap().snapshot();
    assert_eq!(snapshot.viewers, 10, "viewer connections are counted");
    for f in &frames[1..] {
        send(&mut ws, f.clone()).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    for v in viewers {
        let got = v.await.unwrap();
        assert!(
            got.len() >= 70,
            "a reading viewer got only {} of 80 frames",
            got.len()
        );
        assert!(got.last() == frames.last(), "and the newest frame");
    }
    drop(stalled);
    ws.close(None).await.unwrap();
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_camera_plays_as_hls() {
    let ts = start_server("cam-hls").await;
    let (id, key) = ts.create_stream("hls").await;
    let mut ws = connect(&ts, Some(&key), false).await.unwrap();
    let sent = 100u64;
    let start = Instant::now();
    for n in 0..sent {
        send(&mut ws, frames::jpeg(n, 640, 480, 70)).await;
        // 20 fps in real time.
        let due = start + Duration::from_millis((n + 1) * 50);
        tokio::time::sleep_until(due.into()).await;
    }
    // Frames are stamped on arrival: the video lasts as long as the sending did (5 s, more
    // when a loaded machine delays the sender).
    let span = start.elapsed().as_secs_f32();
    ws.close(None).await.unwrap();
    let text = wait_for_endlist(&ts, &id, 20).await;
    let pl = parse_media_playlist(text.as_bytes());
    assert!(!pl.segments.is_empty());
    let total: f32 = pl.segments.iter().map(|s| s.duration).sum();
    assert!(
        (total - span).abs() < 0.75,
        "about {span} s of video, got {total}:\n{text}"
    );
    if require_program("ffprobe") {
        let out = std::process::Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-count_frames",
                "-select_streams",
                "v",
                "-show_entries",
                "stream=codec_name,width,height,nb_read_frames",
                "-of",
                "csv=p=0",
            ])
            .arg(ts.http(&format!("/hls/{id}/index.m3u8")))
            .output()
            .unwrap();
        // ffprobe lists the stream once per program and once on its own: the same line.
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let line = text
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_owned();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "ffprobe: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(&fields[..3], &["h264", "640", "480"], "{line}");
        let decoded: u64 = fields[3].parse().unwrap();
        assert!(
            decoded >= sent * 8 / 10 && decoded <= sent,
            "decoded {decoded} of {sent} frames"
        );
    }
    ts.server.shutdown().await;
}
