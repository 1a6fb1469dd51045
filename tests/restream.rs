//! Restream: we push live streams to a real RTMP server nobody here wrote — Debian's nginx with
//! libnginx-mod-rtmp, started on free ports with its own config — and read them back from it
//! with ffmpeg/ffprobe. Covers the API, reconnects when nginx goes away and comes back, RTMPS
//! through a TLS terminator with a test CA, a stalled destination next to a healthy one,
//! unreachable destinations, sources RTMP cannot carry (WHIP Opus), camera sources, and that
//! no key ever shows up in responses or logs. Under `CI` a missing nginx or ffmpeg fails.

mod common;

#[path = "../examples/esp32_cam/frames.rs"]
#[allow(dead_code)]
mod frames;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::nginx::{require_nginx, Nginx, Tls};
use common::*;
use futures_util::SinkExt;
use reqwest::Method;
use serde_json::{json, Value};

fn base(ts: &TestServer) -> String {
    format!("http://{}", ts.server.http_addr)
}

/// Test servers retry fast and give up after a few attempts.
fn fast_retries(c: &mut media_server::Config) {
    c.restream.backoff_initial_ms = 200;
    c.restream.backoff_max_ms = 1000;
    c.restream.connect_timeout_ms = 3000;
    c.restream.write_timeout_ms = 3000;
    c.restream.max_attempts = 30;
}

async fn add(http: &str, stream: &str, body: Value) -> Value {
    let (status, v) = api(
        http,
        Method::POST,
        &format!("/api/v1/streams/{stream}/restreams"),
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    v
}

/// Adds a destination; returns its id.
async fn add_id(http: &str, stream: &str, body: Value) -> String {
    add(http, stream, body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn get_restream(http: &str, stream: &str, rid: &str) -> Value {
    let (status, v) = api(
        http,
        Method::GET,
        &format!("/api/v1/streams/{stream}/restreams/{rid}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

/// Polls until the destination's state is `want`.
async fn wait_state(http: &str, stream: &str, rid: &str, want: &str, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = get_restream(http, stream, rid).await;
        if v["state"] == want {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "restream never reached {want}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What ffmpeg got when reading `secs` seconds of a live RTMP stream from nginx.
struct Received {
    video_frames: u64,
    width: u64,
    height: u64,
    codecs: Vec<String>,
    errors: String,
    /// The audio's mean volume in dBFS (ffmpeg `volumedetect`), if it has audio.
    audio_db: Option<f64>,
}

/// Reads `secs` s of `url` with ffmpeg (stream copy into a file), then decodes the file with
/// ffmpeg and counts frames with ffprobe.
async fn read_from_nginx(url: String, dir: &Path, secs: u32) -> Received {
    let file = dir.join(format!("from-nginx-{}.mkv", rand::random::<u32>()));
    let f = file.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args([
                "30",
                "ffmpeg",
                "-hide_banner",
                "-v",
                "error",
                "-nostdin",
                "-i",
            ])
            .arg(&url)
            .args(["-t", &secs.to_string(), "-c", "copy", "-y"])
            .arg(&f)
            .stdout(Stdio::null())
            .output()
            .expect("ffmpeg")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "ffmpeg reading from nginx: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Frames keep their own timestamps (`-fps_mode passthrough`): the null muxer's guessed
    // frame rate would otherwise round a WebRTC source's timestamps onto each other.
    let decode = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-nostdin", "-i"])
        .arg(&file)
        .args(["-fps_mode", "passthrough", "-f", "null", "-"])
        .output()
        .unwrap();
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_type,codec_name,width,height,nb_read_frames",
            "-of",
            "json",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let volume = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-i"])
        .arg(&file)
        .args(["-map", "0:a:0", "-af", "volumedetect", "-f", "null", "-"])
        .output()
        .unwrap();
    let audio_db = String::from_utf8_lossy(&volume.stderr)
        .lines()
        .find_map(|l| l.split_once("mean_volume: "))
        .and_then(|(_, v)| v.trim_end_matches(" dB").trim().parse().ok());
    let v: Value = serde_json::from_slice(&probe.stdout).unwrap_or(Value::Null);
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    let video = streams
        .iter()
        .find(|s| s["codec_type"] == "video")
        .cloned()
        .unwrap_or(Value::Null);
    Received {
        video_frames: video["nb_read_frames"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
        width: video["width"].as_u64().unwrap_or(0),
        height: video["height"].as_u64().unwrap_or(0),
        codecs: streams
            .iter()
            .filter_map(|s| s["codec_name"].as_str().map(str::to_owned))
            .collect(),
        errors: String::from_utf8_lossy(&decode.stderr).into_owned(),
        audio_db,
    }
}

fn assert_decodes(r: &Received, min_frames: u64, size: (u64, u64), audio: bool) {
    assert!(r.errors.is_empty(), "decode errors: {}", r.errors);
    assert!(
        r.video_frames >= min_frames,
        "{} video frames",
        r.video_frames
    );
    assert_eq!((r.width, r.height), size);
    assert!(r.codecs.contains(&"h264".to_owned()), "{:?}", r.codecs);
    if audio {
        assert!(r.codecs.contains(&"aac".to_owned()), "{:?}", r.codecs);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_stream_is_pushed_to_nginx_survives_its_restart_and_follows_the_stream() {
    if !require_program("ffmpeg") || !require_nginx() {
        return;
    }
    let ts = start_with("rs-nginx", fast_retries).await;
    let http = base(&ts);
    let mut nginx = Nginx::start(&ts.dir.join("nginx"), None);
    let (id, key) = ts.create_stream("push").await;
    let created = add(
        &http,
        &id,
        json!({"platform": "custom", "url": nginx.url(), "key": "dest-key-0123456789", "name": "nginx"}),
    )
    .await;
    let rid = created["id"].as_str().unwrap().to_owned();
    // Not live yet: the destination waits.
    assert_eq!(created["state"], "idle", "{created}");
    assert_eq!(created["key_hint"], "****6789");
    assert!(!created.to_string().contains("dest-key-0123456789"));

    let mut ffmpeg = ffmpeg_publish(&ts.rtmp(&format!("/live/{key}")), 60);
    let active = wait_state(&http, &id, &rid, "active", 20).await;
    assert!(active["started_at"].is_string(), "{active}");
    let from_nginx = format!("{}/dest-key-0123456789", nginx.url());
    let got = read_from_nginx(from_nginx.clone(), &ts.dir, 3).await;
    assert_decodes(&got, 60, (640, 360), true);
    let v = get_restream(&http, &id, &rid).await;
    assert!(v["bytes_out"].as_u64().unwrap() > 100_000, "{v}");
    assert!(v["bitrate_bps"].as_u64().unwrap() > 50_000, "{v}");
    assert_eq!(v["reconnect_count"], 0);

    // nginx goes away: the destination retries; it comes back: active again, decodable again.
    nginx.stop();
    let retrying = wait_state(&http, &id, &rid, "retrying", 10).await;
    assert!(retrying["last_error"].is_string(), "{retrying}");
    nginx.restart();
    let back = wait_state(&http, &id, &rid, "active", 20).await;
    assert!(back["reconnect_count"].as_u64().unwrap() >= 1, "{back}");
    let got = read_from_nginx(from_nginx, &ts.dir, 3).await;
    assert_decodes(&got, 60, (640, 360), true);

    // Disabling disconnects; enabling reconnects at once while the stream is live.
    let (status, v) = api(
        &http,
        Method::PATCH,
        &format!("/api/v1/streams/{id}/restreams/{rid}"),
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!((status, v["state"].as_str()), (200, Some("stopped")), "{v}");
    let (status, _) = api(
        &http,
        Method::PATCH,
        &format!("/api/v1/streams/{id}/restreams/{rid}"),
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(status, 200);
    wait_state(&http, &id, &rid, "active", 20).await;

    // The stream ends: the destination goes back to idle, ready for the next broadcast.
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    wait_state(&http, &id, &rid, "idle", 20).await;
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmps_push_through_a_tls_terminator_trusts_the_configured_ca_only() {
    if !require_program("ffmpeg") || !require_nginx() {
        return;
    }
    let dir = temp_dir("rs-tls");
    let (ca, cert, key) = test_pki(&dir.join("pki"));
    let tls_port = free_port();
    let _nginx = Nginx::start(
        &dir.join("nginx"),
        Some(Tls {
            port: tls_port,
            cert,
            key,
        }),
    );
    let plain = format!("rtmp://127.0.0.1:{}/live", _nginx.rtmp_port);
    let ca_file = ca.display().to_string();
    let ts = start_with("rs-tls-server", move |c| {
        fast_retries(c);
        c.restream.ca_file = ca_file;
    })
    .await;
    let http = base(&ts);
    let (id, key) = ts.create_stream("tls").await;
    let good = add(
        &http,
        &id,
        json!({"platform": "custom", "url": format!("rtmps://localhost:{tls_port}/live"), "key": "tls-key"}),
    )
    .await;
    // Same server, but addressed by a name the certificate does not cover: must be refused.
    let bad = add(
        &http,
        &id,
        json!({"platform": "custom", "url": format!("rtmps://127.0.0.1:{tls_port}/live"), "key": "other-key"}),
    )
    .await;
    let (good, bad) = (
        good["id"].as_str().unwrap().to_owned(),
        bad["id"].as_str().unwrap().to_owned(),
    );
    let mut ffmpeg = ffmpeg_publish(&ts.rtmp(&format!("/live/{key}")), 40);
    wait_state(&http, &id, &good, "active", 20).await;
    let got = read_from_nginx(format!("{plain}/tls-key"), &ts.dir, 3).await;
    assert_decodes(&got, 60, (640, 360), true);
    let v = wait_state(&http, &id, &bad, "retrying", 10).await;
    let err = v["last_error"].as_str().unwrap_or("");
    assert!(
        err.contains("TLS") && err.contains("127.0.0.1"),
        "certificate mismatch should be reported: {v}"
    );
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    ts.server.shutdown().await;
}

/// What a fake destination received, in order, per connection.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    Metadata,
    VideoConfig,
    AudioConfig,
    Video { ts: u32, key: bool },
    Audio { ts: u32 },
}

struct FakeDestination {
    port: u16,
    connections: std::sync::Arc<std::sync::Mutex<Vec<Vec<Got>>>>,
    /// Closes every open connection (the destination drops us).
    drop_all: std::sync::Arc<tokio::sync::Notify>,
}

/// An RTMP server built from our own server session: completes the handshake, accepts the
/// publish and records what arrives — or, with `stall`, never reads again after accepting
/// (a destination whose network stalled; its receive buffer is tiny).
async fn fake_destination(stall: bool) -> FakeDestination {
    use media_server::proto::flv::{parse_audio, parse_video, AudioTag, VideoTag};
    use media_server::proto::rtmp::server::{ServerSession, SessionEvent};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    let listener = socket.listen(16).unwrap();
    let connections: std::sync::Arc<std::sync::Mutex<Vec<Vec<Got>>>> = Default::default();
    let drop_all = std::sync::Arc::new(tokio::sync::Notify::new());
    let (conns, dropper) = (connections.clone(), drop_all.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let index = {
                let mut c = conns.lock().unwrap();
                c.push(Vec::new());
                c.len() - 1
            };
            let (conns, dropper) = (conns.clone(), dropper.clone());
            tokio::spawn(async move {
                let serve = async {
                    let Some(rest) = server_handshake(&mut s).await else {
                        return;
                    };
                    let mut session = ServerSession::new(1 << 20, 4096);
                    session.push(&rest);
                    let mut buf = vec![0u8; 8192];
                    loop {
                        while let Ok(Some(ev)) = session.poll_event() {
                            let got = match ev {
                                SessionEvent::Publish { .. } => {
                                    session.accept_publish();
                                    let _ = s.write_all(&session.take_output()).await;
                                    if stall {
                                        // Hold the socket open, never read again.
                                        tokio::time::sleep(Duration::from_secs(3600)).await;
                                        return;
                                    }
                                    None
                                }
                                SessionEvent::Metadata(_) => Some(Got::Metadata),
                                SessionEvent::Video { timestamp, data } => {
                                    match parse_video(data) {
                                        Ok(VideoTag::SequenceHeader { .. }) => {
                                            Some(Got::VideoConfig)
                                        }
                                        Ok(VideoTag::Frame { keyframe, .. }) => Some(Got::Video {
                                            ts: timestamp,
                                            key: keyframe,
                                        }),
                                        _ => None,
                                    }
                                }
                                SessionEvent::Audio { timestamp, data } => {
                                    match parse_audio(data) {
                                        Ok(AudioTag::SequenceHeader { .. }) => {
                                            Some(Got::AudioConfig)
                                        }
                                        Ok(AudioTag::Frame { .. }) => {
                                            Some(Got::Audio { ts: timestamp })
                                        }
                                        _ => None,
                                    }
                                }
                                _ => None,
                            };
                            if let Some(g) = got {
                                conns.lock().unwrap()[index].push(g);
                            }
                        }
                        let _ = s.write_all(&session.take_output()).await;
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        session.push(&buf[..n]);
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = dropper.notified() => {}
                }
            });
        }
    });
    FakeDestination {
        port,
        connections,
        drop_all,
    }
}

/// Index of the newest segment and the media seconds of segments after `after`.
fn hls_progress(text: &str, after: Option<u64>) -> (u64, f32) {
    let pl = parse_media_playlist(text.as_bytes());
    let last = pl.media_sequence + pl.segments.len() as u64 - 1;
    let secs = pl
        .segments
        .iter()
        .enumerate()
        .filter(|(i, _)| after.is_none_or(|a| pl.media_sequence + *i as u64 > a))
        .map(|(_, s)| s.duration)
        .sum();
    (last, secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_destination_does_not_slow_the_other_one_or_hls() {
    if !require_program("ffmpeg") || !require_nginx() {
        return;
    }
    let ts = start_with("rs-stall", fast_retries).await;
    let http = base(&ts);
    let nginx = Nginx::start(&ts.dir.join("nginx"), None);
    let stall = fake_destination(true).await;
    let stall_port = stall.port;
    let (id, key) = ts.create_stream("stall").await;
    let healthy = add_id(
        &http,
        &id,
        json!({"platform": "custom", "url": nginx.url(), "key": "healthy"}),
    )
    .await;
    let stalled = add_id(
        &http,
        &id,
        json!({"platform": "custom", "url": format!("rtmp://127.0.0.1:{stall_port}/live"), "key": "stalled"}),
    )
    .await;
    let mut ffmpeg = ffmpeg_publish(&ts.rtmp(&format!("/live/{key}")), 60);
    wait_state(&http, &id, &healthy, "active", 20).await;
    let playlist = ts.http(&format!("/hls/{id}/media.m3u8"));
    let deadline = Instant::now() + Duration::from_secs(15);
    let mark = loop {
        let (_, _, first) = get(&playlist).await;
        let text = String::from_utf8_lossy(&first).into_owned();
        if text.contains("#EXTINF") {
            break hls_progress(&text, None).0;
        }
        assert!(Instant::now() < deadline, "no HLS segment: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Over the next ~8 s the stalled destination blocks, times out and reconnects; nginx keeps
    // receiving: 4 s read from it decode in full.
    let got = read_from_nginx(format!("{}/healthy", nginx.url()), &ts.dir, 4).await;
    assert_decodes(&got, 100, (640, 360), true);
    let stuck = wait_state(&http, &id, &stalled, "retrying", 15).await;
    assert!(
        stuck["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("took no data")),
        "{stuck}"
    );
    assert!(!stall.connections.lock().unwrap().is_empty());
    let h = get_restream(&http, &id, &healthy).await;
    assert_eq!(h["state"], "active", "{h}");
    assert_eq!(h["reconnect_count"], 0, "{h}");
    assert_eq!(h["frames_dropped"], 0, "{h}");
    // HLS kept producing segments in real time meanwhile.
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, _, later) = get(&playlist).await;
    let (_, produced) = hls_progress(&String::from_utf8_lossy(&later), Some(mark));
    let wall = started.elapsed().as_secs_f32() + 4.0;
    assert!(
        produced >= wall - 3.0,
        "HLS produced {produced} s of media while ~{wall} s passed"
    );
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_starts_with_headers_and_a_keyframe_and_timestamps_continue() {
    let ts = start_with("rs-resume", fast_retries).await;
    let http = base(&ts);
    let dest = fake_destination(false).await;
    let (id, key) = ts.create_stream("resume").await;
    let rid = add_id(
        &http,
        &id,
        json!({"platform": "custom", "url": format!("rtmp://127.0.0.1:{}/app", dest.port), "key": "k"}),
    )
    .await;
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .unwrap();
    // The fixture (4 s, a keyframe every second) twice on one timeline.
    let twice = looped(&read_flv(FIXTURE), 2);
    let sending = tokio::spawn(async move {
        publisher.send_tags(&twice, true).await;
        publisher
    });
    wait_state(&http, &id, &rid, "active", 10).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The destination drops us mid-stream; we reconnect.
    dest.drop_all.notify_waiters();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = get_restream(&http, &id, &rid).await;
        if v["state"] == "active" && v["reconnect_count"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no reconnect: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sending.await.unwrap().finish().await;
    wait_state(&http, &id, &rid, "idle", 10).await;
    let conns = dest.connections.lock().unwrap().clone();
    assert!(conns.len() >= 2, "{} connections", conns.len());
    let mut last_ts = None;
    for (n, c) in conns.iter().enumerate() {
        // Metadata and both sequence headers before any frame; the first frame is a keyframe.
        assert_eq!(
            &c[..3],
            &[Got::Metadata, Got::VideoConfig, Got::AudioConfig],
            "connection {n}"
        );
        let first_media = c
            .iter()
            .find(|g| matches!(g, Got::Video { .. } | Got::Audio { .. }));
        assert!(
            matches!(first_media, Some(Got::Video { key: true, .. })),
            "connection {n} starts with {first_media:?}"
        );
        let stamps: Vec<u32> = c
            .iter()
            .filter_map(|g| match g {
                Got::Video { ts, .. } | Got::Audio { ts } => Some(*ts),
                _ => None,
            })
            .collect();
        assert!(stamps.len() > 20, "connection {n}: {} frames", stamps.len());
        assert!(
            stamps.windows(2).all(|w| w[0] <= w[1]),
            "connection {n} goes back in time"
        );
        // One timeline across reconnects: the new connection continues after the old one.
        if let Some(prev) = last_ts {
            assert!(
                stamps[0] > prev,
                "connection {n} restarts at {} after {prev}",
                stamps[0]
            );
        }
        last_ts = stamps.last().copied();
    }
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_destination_fails_after_the_configured_attempts_with_a_webhook() {
    let ts = start_with("rs-unreach", |c| {
        fast_retries(c);
        c.restream.max_attempts = 3;
        c.restream.backoff_initial_ms = 100;
        c.restream.backoff_max_ms = 200;
    })
    .await;
    let http = base(&ts);
    let (hook, got) = hook_receiver().await;
    let (status, v) = api(
        &http,
        Method::POST,
        "/api/v1/webhooks",
        Some(json!({"url": hook, "events": ["restream.failed"], "secret": "0123456789abcdef-rs"})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let (id, key) = ts.create_stream("unreach").await;
    let closed = free_port();
    let rid = add_id(
        &http,
        &id,
        json!({"platform": "custom", "url": format!("rtmp://127.0.0.1:{closed}/live"), "key": "k-unreachable"}),
    )
    .await;
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .unwrap();
    let tags = read_flv(FIXTURE);
    let sending = tokio::spawn(async move {
        publisher.send_tags(&tags, true).await;
        publisher
    });
    let failed = wait_state(&http, &id, &rid, "failed", 15).await;
    let err = failed["last_error"].as_str().unwrap();
    assert!(
        err.contains("could not connect: no RTMP server answered")
            && err.contains("gave up after 3 attempts"),
        "{failed}"
    );
    assert_eq!(failed["failed_attempts"], 3, "{failed}");
    wait_for_hook(&got, "restream.failed", |e| {
        e["type"] == "restream.failed"
            && e["data"]["restream"]["id"] == rid.as_str()
            && e["data"]["restream"]["last_error"] == err
    })
    .await;
    assert!(!format!("{:?}", got.lock().unwrap()).contains("k-unreachable"));
    // Failed stays failed (no more attempts) while the stream stays live.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(get_restream(&http, &id, &rid).await["state"], "failed");
    sending.await.unwrap().finish().await;
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_stream_with_opus_fails_clearly_on_a_legacy_destination_without_transcoding() {
    if !require_nginx() {
        return;
    }
    let ts = start_with("rs-opus", |c| {
        fast_retries(c);
        c.transcode.audio = false;
    })
    .await;
    let http = base(&ts);
    // nginx-rtmp speaks legacy RTMP only: it does not announce Enhanced RTMP (Opus) in its
    // connect reply; with audio transcoding off the destination fails with the reason and no
    // media is sent.
    let nginx = Nginx::start(&ts.dir.join("nginx"), None);
    let (id, key) = ts.create_stream("opus").await;
    let rid = add_id(
        &http,
        &id,
        json!({"platform": "custom", "url": nginx.url(), "key": "k"}),
    )
    .await;
    let publishing = common::webrtc::whip_publish(&ts.http("/whip/live/opus"), &key, 1).await;
    let failed = wait_state(&http, &id, &rid, "failed", 15).await;
    let err = failed["last_error"].as_str().unwrap_or("");
    assert!(
        err.contains("Enhanced RTMP") && err.contains("opus audio"),
        "{failed}"
    );
    assert_eq!(
        failed["bytes_out"].as_u64().map(|b| b < 4096),
        Some(true),
        "{failed}"
    );
    let _ = publishing.sender.await;
    let _ = publishing.peer.pc.close().await;
    ts.server.shutdown().await;
}

/// Publishes over WHIP with `publisher` (a child process told the WHIP URL and key) to a
/// stream with two legacy destinations (nginx-rtmp does not announce Enhanced RTMP): both
/// receive H.264 + AAC transcoded from the Opus, which decodes and carries the tone; the
/// stream's audio is transcoded once (`/metrics`).
async fn whip_opus_reaches_legacy_destinations_as_aac(
    name: &str,
    publisher: impl FnOnce(&str, &str) -> tokio::process::Command,
    size: (u64, u64),
) {
    let ts = start_with(name, fast_retries).await;
    let http = base(&ts);
    let nginx = Nginx::start(&ts.dir.join("nginx"), None);
    let (id, key) = ts.create_stream(name).await;
    let mut rids = Vec::new();
    for dest in ["one", "two"] {
        rids.push(
            add_id(
                &http,
                &id,
                json!({"platform": "custom", "url": nginx.url(), "key": format!("{name}-{dest}")}),
            )
            .await,
        );
    }
    let mut child = publisher(&ts.http(&format!("/whip/live/{name}")), &key)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the WHIP publisher");
    for rid in &rids {
        wait_state(&http, &id, rid, "active", 30).await;
    }
    let metrics = transcoder_metrics(&http).await;
    assert!(
        metrics.contains("media_server_audio_transcoders 1\n"),
        "one transcoder for two destinations: {}",
        metrics
            .lines()
            .filter(|l| l.contains("transcod"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let got = read_from_nginx(format!("{}/{name}-one", nginx.url()), &ts.dir, 4).await;
    assert_decodes(&got, 30, size, true);
    let db = got.audio_db.expect("the AAC decodes to a level");
    assert!(
        db > -30.0,
        "the tone is heard in the AAC: mean volume {db} dB"
    );
    // Nobody needs AAC once the destinations are gone: the transcoder stops while the
    // stream stays live.
    for rid in &rids {
        let path = format!("/api/v1/streams/{id}/restreams/{rid}");
        let (status, _) = api(&http, Method::DELETE, &path, None).await;
        assert_eq!(status, 204);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !transcoder_metrics(&http)
        .await
        .contains("media_server_audio_transcoders 0\n")
    {
        assert!(Instant::now() < deadline, "the transcoder stops");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the publisher is still publishing"
    );
    let _ = child.kill().await;
    ts.server.shutdown().await;
}

async fn transcoder_metrics(http: &str) -> String {
    reqwest::Client::new()
        .get(format!("{http}/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_whip_opus_reaches_legacy_destinations_as_aac() {
    if !require_nginx() || !require_program("ffmpeg") {
        return;
    }
    let Some(python) = common::test_python() else {
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/whip_aiortc.py");
    whip_opus_reaches_legacy_destinations_as_aac(
        "aiortc",
        |url, key| {
            let mut c = tokio::process::Command::new(&python);
            c.arg(script).arg(url).arg(key).arg("30");
            c
        },
        (640, 360),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg9_whip_opus_reaches_legacy_destinations_as_aac() {
    if !require_nginx() || !require_program("ffmpeg") {
        return;
    }
    let Some(ffmpeg9) = common::ffmpeg9() else {
        return;
    };
    whip_opus_reaches_legacy_destinations_as_aac(
        "ffwhip",
        |url, key| {
            let mut c = tokio::process::Command::new(&ffmpeg9);
            c.args(["-hide_banner", "-v", "error", "-nostdin", "-re"])
                .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"])
                .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
                .args([
                    "-t",
                    "30",
                    "-c:v",
                    "libx264",
                    "-profile:v",
                    "baseline",
                    "-bf",
                    "0",
                ])
                .args([
                    "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "libopus", "-ac", "2",
                ])
                .args(["-f", "whip", "-authorization", key, url]);
            c
        },
        (320, 240),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_stream_restreams_its_h264() {
    if !require_program("ffmpeg") || !require_nginx() {
        return;
    }
    let ts = start_with("rs-cam", fast_retries).await;
    let http = base(&ts);
    let nginx = Nginx::start(&ts.dir.join("nginx"), None);
    let (id, key) = ts.create_stream("cam").await;
    let rid = add_id(
        &http,
        &id,
        json!({"platform": "custom", "url": nginx.url(), "key": "camera"}),
    )
    .await;
    let url = format!("ws://{}/ingest/ws?key={key}", ts.server.http_addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let camera = tokio::spawn(async move {
        let start = Instant::now();
        for n in 0..200u64 {
            let msg = tokio_tungstenite::tungstenite::Message::Binary(
                frames::jpeg(n, 640, 480, 70).into(),
            );
            if ws.send(msg).await.is_err() {
                return;
            }
            tokio::time::sleep_until((start + Duration::from_millis((n + 1) * 50)).into()).await;
        }
        let _ = ws.close(None).await;
    });
    wait_state(&http, &id, &rid, "active", 20).await;
    let got = read_from_nginx(format!("{}/camera", nginx.url()), &ts.dir, 2).await;
    assert_decodes(&got, 20, (640, 480), false);
    camera.abort();
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_validates_destinations_and_never_echoes_keys() {
    let ts = start_server("rs-api").await;
    let http = base(&ts);
    let (id, _) = ts.create_stream("api").await;
    let path = format!("/api/v1/streams/{id}/restreams");
    let long_url = format!("rtmp://h/{}", "a".repeat(2000));
    let cases = [
        (json!({"platform": "myspace", "key": "k"}), "platform"),
        (json!({"platform": "custom", "key": "k"}), "url"),
        (json!({"platform": "youtube"}), "key"),
        (
            json!({"platform": "custom", "url": "http://h/app", "key": "k"}),
            "url",
        ),
        (
            json!({"platform": "custom", "url": long_url, "key": "k"}),
            "url",
        ),
        (
            json!({"platform": "custom", "url": "rtmp://h/app", "key": "k".repeat(501)}),
            "key",
        ),
        (
            json!({"platform": "custom", "url": "rtmp://h/app", "key": ""}),
            "key",
        ),
        (
            json!({"platform": "custom", "url": "rtmp://h/app", "key": "k", "name": ""}),
            "name",
        ),
        (
            json!({"platform": "custom", "url": "rtmp://h/app", "key": "k", "colour": 1}),
            "colour",
        ),
    ];
    for (body, field) in cases {
        let (status, v) = api(&http, Method::POST, &path, Some(body.clone())).await;
        assert_eq!(status, 422, "{body} → {v}");
        let fields = v["error"].to_string();
        assert!(fields.contains(field), "{body}: expected {field} in {v}");
    }
    let (status, _) = api(
        &http,
        Method::POST,
        "/api/v1/streams/str_0000000000000000/restreams",
        Some(json!({"platform": "twitch", "key": "k"})),
    )
    .await;
    assert_eq!(status, 404);

    // A preset fills in the platform's RTMPS ingest; the key is write-only.
    let yt = add(
        &http,
        &id,
        json!({"platform": "youtube", "key": "abcd-efgh-ijkl-mnop-qrst"}),
    )
    .await;
    assert_eq!(yt["url"], "rtmps://a.rtmps.youtube.com:443/live2");
    assert_eq!(yt["name"], "youtube");
    assert_eq!(yt["key_hint"], "****qrst");
    // Credentials in a custom URL are masked, and so is the stream name in the path when it
    // stands in for the key. (A documentation address: disabled, never connected to.)
    let custom = add(
        &http,
        &id,
        json!({"platform": "custom", "url": "rtmp://bob:hunter22@203.0.113.7:1936/live/cam1?auth=s3cr3t", "key": "", "enabled": false}),
    )
    .await;
    assert_eq!(
        custom["url"],
        "rtmp://***@203.0.113.7:1936/live/***?auth=***"
    );
    assert_eq!(custom["state"], "stopped");
    let (status, list) = api(&http, Method::GET, &format!("{path}?limit=1"), None).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["pagination"]["has_more"], true);
    let cursor = list["pagination"]["next_cursor"].as_str().unwrap();
    let (_, page2) = api(
        &http,
        Method::GET,
        &format!("{path}?limit=1&cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(page2["data"][0]["id"], custom["id"]);
    let (status, _) = api(&http, Method::GET, &format!("{path}?cursor=zz"), None).await;
    assert_eq!(status, 400);
    let everything = format!("{yt}{custom}{list}{page2}");
    for secret in ["abcd-efgh-ijkl-mnop-qrst", "hunter22", "s3cr3t"] {
        assert!(
            !everything.contains(secret),
            "{secret} leaked: {everything}"
        );
    }
    // PATCH a new key: still masked; DELETE; then 404.
    let rid = yt["id"].as_str().unwrap();
    let (status, v) = api(
        &http,
        Method::PATCH,
        &format!("{path}/{rid}"),
        Some(json!({"key": "zzzz-yyyy-xxxx-wwww-9876", "name": "Main channel"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["key_hint"].as_str(), v["name"].as_str()),
        (Some("****9876"), Some("Main channel"))
    );
    let (status, v) = api(
        &http,
        Method::PATCH,
        &format!("{path}/{rid}"),
        Some(json!({"url": "ftp://x/y"})),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    let (status, _) = api(&http, Method::DELETE, &format!("{path}/{rid}"), None).await;
    assert_eq!(status, 204);
    let (status, _) = api(&http, Method::GET, &format!("{path}/{rid}"), None).await;
    assert_eq!(status, 404);
    // The per-stream limit.
    let ts2 = start_with("rs-api-limit", |c| c.restream.max_per_stream = 1).await;
    let http2 = base(&ts2);
    let (id2, _) = ts2.create_stream("lim").await;
    add(&http2, &id2, json!({"platform": "twitch", "key": "live_1"})).await;
    let (status, v) = api(
        &http2,
        Method::POST,
        &format!("/api/v1/streams/{id2}/restreams"),
        Some(json!({"platform": "twitch", "key": "live_2"})),
    )
    .await;
    assert_eq!(status, 409, "{v}");
    // A token without restreams:write cannot add one.
    let (status, tok) = api(
        &http2,
        Method::POST,
        "/api/v1/tokens",
        Some(json!({"name": "ro", "scopes": ["streams:read"]})),
    )
    .await;
    assert_eq!(status, 201, "{tok}");
    let resp = reqwest::Client::new()
        .post(format!("{http2}/api/v1/streams/{id2}/restreams"))
        .bearer_auth(tok["secret"].as_str().unwrap())
        .json(&json!({"platform": "twitch", "key": "live_3"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    ts.server.shutdown().await;
    ts2.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_never_reach_the_logs_and_destinations_survive_a_restart() {
    if !require_program("ffmpeg") || !require_nginx() {
        return;
    }
    let dir = temp_dir("rs-logs");
    let nginx = Nginx::start(&dir.join("nginx"), None);
    let (http_port, rtmp_port) = (free_port(), free_port());
    let config = dir.join("media-server.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n[webrtc]\nudp_listen = \"127.0.0.1:0\"\n\
             [rtmp]\nlisten = \"127.0.0.1:{rtmp_port}\"\n[auth]\nadmin_token = \"{ADMIN_TOKEN}\"\n\
             [restream]\nbackoff_initial_ms = 200\nbackoff_max_ms = 1000\n\
             [security]\noutbound_allow = [\"127.0.0.0/8\", \"::1/128\"]\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let log = dir.join("server.log");
    let spawn = || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_media-server"))
            .arg("--config")
            .arg(&config)
            // The most verbose logging this server has.
            .env("RUST_LOG", "trace")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap()
    };
    let http = format!("http://127.0.0.1:{http_port}");
    let mut server = spawn();
    wait_healthy(&format!("{http}/healthz")).await;
    let (status, created) = api(
        &http,
        Method::POST,
        "/api/v1/streams",
        Some(json!({"title": "secret test"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["stream"]["id"]
        .as_str()
        .or(created["id"].as_str())
        .unwrap()
        .to_owned();
    let stream_key = created["stream_key"].as_str().unwrap().to_owned();
    let restream_key = "rk-9f8e7d6c5b4a-secret";
    let dest_url = format!(
        "rtmp://pusher:pw-4f3e2d1c@127.0.0.1:{}/live?token=tk-77aa55bb",
        nginx.rtmp_port
    );
    let created = add(
        &http,
        &id,
        json!({"platform": "custom", "url": dest_url, "key": restream_key}),
    )
    .await;
    let rid = created["id"].as_str().unwrap().to_owned();
    // A second destination with its key written into the URL path (no key field).
    let path_key = "pk-5e4d3c2b1a-pathkey";
    let in_path = add(
        &http,
        &id,
        json!({"platform": "custom", "url": format!("rtmp://127.0.0.1:{}/live/{path_key}", nginx.rtmp_port)}),
    )
    .await;
    let rid2 = in_path["id"].as_str().unwrap().to_owned();
    let mut ffmpeg = ffmpeg_publish(
        &format!("rtmp://127.0.0.1:{rtmp_port}/live/{stream_key}"),
        30,
    );
    wait_state(&http, &id, &rid, "active", 20).await;
    wait_state(&http, &id, &rid2, "active", 20).await;
    let got = read_from_nginx(format!("{}/{restream_key}", nginx.url()), &dir, 2).await;
    assert_decodes(&got, 30, (640, 360), true);
    let mut seen = String::new();
    for path in [
        format!("/api/v1/streams/{id}"),
        format!("/api/v1/streams/{id}/restreams"),
        format!("/api/v1/streams/{id}/restreams/{rid}"),
        "/api/v1/stats".to_owned(),
        // Issue 8 adds Prometheus metrics; whatever this path serves must not leak either.
        "/metrics".to_owned(),
    ] {
        let resp = reqwest::Client::new()
            .get(format!("{http}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        seen.push_str(&resp.text().await.unwrap());
    }
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    wait_state(&http, &id, &rid, "idle", 20).await;
    // SIGTERM and a restart: the destination is still there, with its key usable.
    let _ = Command::new("kill").arg(server.id().to_string()).status();
    let _ = server.wait();
    let mut server = spawn();
    wait_healthy(&format!("{http}/healthz")).await;
    let again = get_restream(&http, &id, &rid).await;
    assert_eq!(again["state"], "idle", "{again}");
    assert_eq!(again["key_hint"], created["key_hint"]);
    let mut ffmpeg = ffmpeg_publish(
        &format!("rtmp://127.0.0.1:{rtmp_port}/live/{stream_key}"),
        30,
    );
    wait_state(&http, &id, &rid, "active", 20).await;
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    let _ = Command::new("kill").arg(server.id().to_string()).status();
    let _ = server.wait();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains(&rid), "the log names the destination");
    assert!(logs.contains(&rid2), "the log names the second destination");
    for secret in [
        stream_key.as_str(),
        restream_key,
        "pw-4f3e2d1c",
        "tk-77aa55bb",
        path_key,
    ] {
        assert!(!seen.contains(secret), "{secret} in an API response");
        assert!(!logs.contains(secret), "{secret} in the log");
    }
}
