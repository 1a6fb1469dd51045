//! Recording end to end: an ffmpeg-published stream recorded to fMP4 that ffprobe reads while
//! it grows and that decodes, with the right duration, once finished; VOD HLS of it; the
//! recordings API (list, download with ranges, delete, path traversal); disk full; splitting
//! at max_duration; start/stop through the API; and `kill -9` mid-recording followed by
//! recovery on the next start.

mod common;

#[path = "../examples/esp32_cam/frames.rs"]
#[allow(dead_code)]
mod frames;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn base(ts: &TestServer) -> String {
    format!("http://{}", ts.server.http_addr)
}

/// Waits until every recording of the stream is finished and at least `n` exist.
async fn finished_recordings(
    http: &str,
    stream: &str,
    n: usize,
    secs: u64,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let recs = recordings_of(http, stream).await;
        if recs.len() >= n
            && recs
                .iter()
                .all(|r| r["status"] == "ready" || r["status"] == "failed")
        {
            return recs;
        }
        assert!(
            Instant::now() < deadline,
            "recordings not finished: {recs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_stream_is_recorded_plays_while_growing_and_as_vod() {
    if !require_program("ffmpeg") {
        return;
    }
    let ts = start_server("rec-ffmpeg").await;
    let http = base(&ts);
    let (id, key) = ts.create_stream("rec1").await;
    set_record(&ts, &id).await;
    let ffmpeg = ffmpeg_publish(&ts.rtmp(&format!("/live/{key}")), 10);

    // While recording: listed as `recording`, the growing file opens in ffprobe, the VOD
    // playlist is an EVENT playlist, and the download is refused with 409.
    let deadline = Instant::now() + Duration::from_secs(15);
    let rec = loop {
        let recs = recordings_of(&http, &id).await;
        if let Some(r) = recs
            .first()
            .filter(|_| Instant::now() > deadline - Duration::from_secs(11))
        {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "no recording started");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(rec["status"], "recording", "{rec}");
    let rec_id = rec["id"].as_str().unwrap().to_owned();
    let file = ts.dir.join("data/recordings").join(format!("{rec_id}.mp4"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let growing = ffprobe_duration(file.to_str().unwrap());
    assert!(growing > 1.0, "the growing file plays: {growing} s");
    let (status, _, body) = get(&format!("{http}/vod/{rec_id}/index.m3u8")).await;
    let text = String::from_utf8_lossy(&body);
    assert!(
        status == 200 && text.contains("#EXT-X-PLAYLIST-TYPE:EVENT"),
        "{status} {text}"
    );
    let (status, _) = api(
        &http,
        reqwest::Method::GET,
        &format!("/api/v1/recordings/{rec_id}/download"),
        None,
    )
    .await;
    assert_eq!(status, 409);
    let detail = api(
        &http,
        reqwest::Method::GET,
        &format!("/api/v1/streams/{id}"),
        None,
    )
    .await
    .1;
    assert_eq!(detail["live"]["is_recording"], true, "{detail}");

    let out = tokio::task::spawn_blocking(move || ffmpeg.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = finished_recordings(&http, &id, 1, 20).await;
    assert_eq!(recs.len(), 1, "{recs:?}");
    let rec = &recs[0];
    assert_eq!(rec["status"], "ready", "{rec}");
    assert_eq!(rec["width"], 640);
    assert_eq!(rec["height"], 360);
    let api_duration = rec["duration_seconds"].as_f64().unwrap();
    let file_duration = ffprobe_duration(file.to_str().unwrap());
    assert!(
        (file_duration - 10.0).abs() <= 1.0,
        "file lasts {file_duration} s, 10 s were sent"
    );
    assert!(
        (api_duration - file_duration).abs() <= 0.5,
        "API says {api_duration} s, ffprobe {file_duration} s"
    );
    let errors = decode_errors(file.to_str().unwrap());
    assert!(errors.is_empty(), "decoding the recording: {errors}");

    // VOD HLS: parses, ends, decodes.
    let vod = format!("{http}/vod/{rec_id}/index.m3u8");
    let (_, _, body) = get(&vod).await;
    let text = String::from_utf8_lossy(&body).into_owned();
    assert!(
        text.contains("#EXT-X-ENDLIST") && text.contains("#EXT-X-BYTERANGE"),
        "{text}"
    );
    assert!(matches!(
        m3u8_rs::parse_playlist_res(&body),
        Ok(m3u8_rs::Playlist::MediaPlaylist(_))
    ));
    let errors = decode_errors(&vod);
    assert!(errors.is_empty(), "decoding the VOD playlist: {errors}");
    let vod_duration = ffprobe_duration(&vod);
    assert!(
        (vod_duration - file_duration).abs() < 1.0,
        "VOD {vod_duration} s"
    );

    // Download: whole file as an attachment, and a range.
    let whole = std::fs::read(&file).unwrap();
    let client = reqwest::Client::new();
    let url = format!("{http}/api/v1/recordings/{rec_id}/download");
    let resp = client
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment"));
    assert_eq!(resp.bytes().await.unwrap().len(), whole.len());
    let resp = client
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .header("range", "bytes=100-1099")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 206);
    assert_eq!(
        resp.headers()["content-range"].to_str().unwrap(),
        format!("bytes 100-1099/{}", whole.len())
    );
    assert_eq!(&resp.bytes().await.unwrap()[..], &whole[100..1100]);
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401, "download needs a token");

    // Path traversal and unknown ids: 404 everywhere.
    for path in [
        "/vod/..%2F..%2Fetc%2Fpasswd/index.m3u8".to_owned(),
        "/vod/../../etc/passwd/media.mp4".to_owned(),
        format!("/vod/{rec_id}%2F..%2F..%2Fdata.db/media.mp4"),
        "/vod/rec_0000000000000000/media.mp4".to_owned(),
    ] {
        let (status, _, _) = get(&format!("{http}{path}")).await;
        assert_eq!(status, 404, "{path}");
    }
    for path in [
        "/api/v1/recordings/..%2F..%2Fdata.db/download",
        "/api/v1/recordings/%2Fetc%2Fpasswd",
    ] {
        let (status, _) = api(&http, reqwest::Method::GET, path, None).await;
        assert_eq!(status, 404, "{path}");
    }

    // Filters and ordering.
    let (status, v) = api(
        &http,
        reqwest::Method::GET,
        "/api/v1/recordings?status=ready&order=size_bytes&limit=1",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["data"][0]["id"], rec_id.as_str());
    let (status, _) = api(
        &http,
        reqwest::Method::GET,
        "/api/v1/recordings?status=bogus",
        None,
    )
    .await;
    assert_eq!(status, 422);
    let (status, _) = api(
        &http,
        reqwest::Method::GET,
        "/api/v1/recordings?cursor=zz",
        None,
    )
    .await;
    assert_eq!(status, 400);

    // Delete: file and row.
    let (status, _) = api(
        &http,
        reqwest::Method::DELETE,
        &format!("/api/v1/recordings/{rec_id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert!(!file.exists());
    let (status, _) = api(
        &http,
        reqwest::Method::GET,
        &format!("/api/v1/recordings/{rec_id}"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_fails_the_recording_and_live_hls_carries_on() {
    // "Minimum free space" larger than any disk: the first fragment finds the disk full.
    let ts = start_with("rec-full", |c| {
        c.recording.min_free_mb = u64::MAX / (1024 * 1024)
    })
    .await;
    let http = base(&ts);
    let (id, key) = ts.create_stream("full").await;
    set_record(&ts, &id).await;
    let tags = read_flv(FIXTURE);
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .unwrap();
    publisher.send_tags(&tags, true).await;
    publisher.finish().await;
    let recs = finished_recordings(&http, &id, 1, 20).await;
    assert_eq!(recs[0]["status"], "failed", "{:?}", recs);
    assert_eq!(recs[0]["reason"], "disk_full");
    // The live HLS output has every segment.
    let text = wait_for_endlist(&ts, &id, 20).await;
    let pl = parse_media_playlist(text.as_bytes());
    let total: f32 = pl.segments.iter().map(|s| s.duration).sum();
    assert!((total - 4.0).abs() < 0.2, "HLS has {total} s");
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_duration_splits_into_consecutive_recordings() {
    let ts = start_with("rec-split", |c| c.recording.max_duration_secs = 1).await;
    let http = base(&ts);
    let (id, key) = ts.create_stream("split").await;
    set_record(&ts, &id).await;
    // 4 s, a keyframe every second.
    let tags = read_flv(BASELINE_FIXTURE);
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .unwrap();
    publisher.send_tags(&tags, true).await;
    publisher.finish().await;
    let recs = finished_recordings(&http, &id, 3, 20).await;
    assert!(recs.len() >= 3, "{recs:?}");
    assert!(recs.iter().all(|r| r["status"] == "ready"), "{recs:?}");
    let durations: Vec<f64> = recs
        .iter()
        .map(|r| r["duration_seconds"].as_f64().unwrap())
        .collect();
    let total: f64 = durations.iter().sum();
    // Consecutive: together they hold the whole 4 s; no gap as long as a GOP (1 s).
    assert!((total - 4.0).abs() < 0.5, "durations {durations:?}");
    for d in &durations[..durations.len() - 1] {
        assert!(
            *d >= 0.9,
            "each split holds at least max_duration: {durations:?}"
        );
    }
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_starts_and_stops_through_the_api() {
    let ts = start_server("rec-api").await;
    let http = base(&ts);
    let (id, key) = ts.create_stream("manual").await;
    let (status, _) = api(
        &http,
        reqwest::Method::POST,
        &format!("/api/v1/streams/{id}/recording/start"),
        None,
    )
    .await;
    assert_eq!(status, 409, "not live yet");
    // One continuous timeline (the recording may span what would be a loop boundary).
    let tags = looped(&read_flv(FIXTURE), 3);
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .unwrap();
    let pusher = tokio::spawn(async move {
        publisher.send_tags(&tags, true).await;
        publisher.finish().await;
    });
    wait_for_200(&ts.http(&format!("/hls/{id}/index.m3u8")), 10).await;
    let (status, v) = api(
        &http,
        reqwest::Method::POST,
        &format!("/api/v1/streams/{id}/recording/start"),
        None,
    )
    .await;
    assert_eq!(status, 202, "{v}");
    assert!(v["recording_id"].as_str().is_some(), "{v}");
    let (status, _) = api(
        &http,
        reqwest::Method::POST,
        &format!("/api/v1/streams/{id}/recording/start"),
        None,
    )
    .await;
    assert_eq!(status, 409, "already recording");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, _) = api(
        &http,
        reqwest::Method::POST,
        &format!("/api/v1/streams/{id}/recording/stop"),
        None,
    )
    .await;
    assert_eq!(status, 202);
    let recs = finished_recordings(&http, &id, 1, 10).await;
    assert_eq!(recs[0]["status"], "ready", "{recs:?}");
    let d = recs[0]["duration_seconds"].as_f64().unwrap();
    assert!((2.0..=5.0).contains(&d), "{d}");
    pusher.abort();
    ts.server.shutdown().await;
}

/// Polls `url` until it answers 200; connection errors (server still starting) are retried.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_recording_is_recovered_on_the_next_start() {
    if !require_program("ffmpeg") {
        return;
    }
    let dir = temp_dir("rec-crash");
    let (http_port, rtmp_port) = (free_port(), free_port());
    let config = dir.join("media-server.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n[webrtc]\nudp_listen = \"127.0.0.1:0\"\n\
             [rtmp]\nlisten = \"127.0.0.1:{rtmp_port}\"\n[auth]\nadmin_token = \"{ADMIN_TOKEN}\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_media-server"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let http = format!("http://127.0.0.1:{http_port}");
    let mut server = spawn();
    wait_healthy(&format!("{http}/healthz")).await;
    let (status, created) = api(
        &http,
        reqwest::Method::POST,
        "/api/v1/streams",
        Some(json!({"title": "crash", "record": true})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["stream"]["id"]
        .as_str()
        .or(created["id"].as_str())
        .unwrap()
        .to_owned();
    let key = created["stream_key"].as_str().unwrap().to_owned();
    let app = created["stream"]["app"]
        .as_str()
        .or(created["app"].as_str())
        .unwrap_or("live")
        .to_owned();
    // ffmpeg publishes a continuous 30 s source in real time; the power goes after ~6 s.
    let mut ffmpeg = ffmpeg_publish(&format!("rtmp://127.0.0.1:{rtmp_port}/{app}/{key}"), 30);
    let deadline = Instant::now() + Duration::from_secs(15);
    while recordings_of(&http, &id).await.is_empty() {
        assert!(Instant::now() < deadline, "no recording started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let sent = started.elapsed().as_secs_f64();
    server.kill().unwrap(); // SIGKILL
    let _ = server.wait();
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    let recs = dir.join("data/recordings");
    let files: Vec<_> = std::fs::read_dir(&recs).unwrap().flatten().collect();
    assert_eq!(files.len(), 1, "one file was being written");
    let file = files[0].path();

    let mut server = spawn();
    wait_healthy(&format!("{http}/healthz")).await;
    let list = recordings_of(&http, &id).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let rec = &list[0];
    assert_eq!(rec["status"], "ready", "{rec}");
    let duration = rec["duration_seconds"].as_f64().unwrap();
    assert!(
        duration >= sent - 2.0,
        "recovered {duration} s of {sent:.1} s sent"
    );
    if require_program("ffprobe") {
        let probed = ffprobe_duration(file.to_str().unwrap());
        assert!(
            (probed - duration).abs() < 0.5,
            "ffprobe {probed} s, API {duration} s"
        );
        let errors = decode_errors(file.to_str().unwrap());
        assert!(errors.is_empty(), "{errors}");
    }
    let _ = server.kill();
    let _ = server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_h264_and_opus_are_recorded_and_announced() {
    let ts = start_server("rec-whip").await;
    let http = base(&ts);
    let (url, got) = hook_receiver().await;
    let (status, v) = api(
        &http,
        reqwest::Method::POST,
        "/api/v1/webhooks",
        Some(json!({"url": url, "events": ["recording.ready"], "secret": "0123456789abcdef-rec"})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let (id, key) = ts.create_stream("whiprec").await;
    set_record(&ts, &id).await;
    let publishing = common::webrtc::whip_publish(&ts.http("/whip/live/whiprec"), &key, 1).await;
    let _ = publishing.sender.await;
    let _ = publishing.peer.pc.close().await;
    let recs = finished_recordings(&http, &id, 1, 30).await;
    let rec = &recs[0];
    assert_eq!(rec["status"], "ready", "{rec}");
    let codecs: Vec<&str> = rec["codecs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert!(
        codecs.iter().any(|c| c.starts_with("avc1")) && codecs.contains(&"opus"),
        "{codecs:?}"
    );
    let rec_id = rec["id"].as_str().unwrap().to_owned();
    // The recording.ready webhook arrives with the recording's id.
    wait_for_hook(&got, "recording.ready", |e| {
        e["type"] == "recording.ready" && e["data"]["recording"]["id"] == rec_id.as_str()
    })
    .await;
    if require_program("ffprobe") {
        let file = ts.dir.join("data/recordings").join(format!("{rec_id}.mp4"));
        let out = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name",
                "-of",
                "csv=p=0",
            ])
            .arg(&file)
            .output()
            .unwrap();
        let names = String::from_utf8_lossy(&out.stdout);
        assert!(names.contains("h264") && names.contains("opus"), "{names}");
        let errors = decode_errors(file.to_str().unwrap());
        assert!(errors.is_empty(), "{errors}");
    }
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_recordings_and_their_files() {
    let dir = temp_dir("rec-retention");
    let mut config = test_config(&dir);
    let server = media_server::start(config.clone()).await.unwrap();
    let old = server
        .store
        .create_recording("str_x", "test", None, None, "")
        .await
        .unwrap();
    let fresh = server
        .store
        .create_recording("str_x", "test", None, None, "")
        .await
        .unwrap();
    let recs_dir = dir.join("data/recordings");
    std::fs::create_dir_all(&recs_dir).unwrap();
    for r in [&old, &fresh] {
        server
            .store
            .set_recording_status(&r.id, "ready", None, 1, 1)
            .await
            .unwrap();
        std::fs::write(recs_dir.join(&r.file), b"x").unwrap();
    }
    let old_id = old.id.clone();
    server
        .store
        .call(move |c| {
            c.execute(
                "UPDATE recordings SET ended_at = '2020-01-01T00:00:00.000Z' WHERE id = ?1",
                media_server::store::sql::params![old_id],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    server.shutdown().await;
    // Restarted with a retention of one hour: the old one goes at once, the fresh one stays.
    config.recording.delete_after_hours = 1;
    let server = media_server::start(config).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.store.get_recording(&old.id).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "old recording not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!recs_dir.join(&old.file).exists());
    assert!(recs_dir.join(&fresh.file).exists());
    assert!(server
        .store
        .get_recording(&fresh.id)
        .await
        .unwrap()
        .is_some());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_stream_is_recorded_as_its_h264() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let ts = start_server("rec-camera").await;
    let http = base(&ts);
    let (id, key) = ts.create_stream("cam").await;
    set_record(&ts, &id).await;
    let url = format!("ws://{}/ingest/ws?key={key}", ts.server.http_addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    // 4 s at 10 fps.
    for n in 0..40u64 {
        let jpeg = frames::jpeg(n, 320, 240, 70);
        ws.send(Message::Binary(jpeg.into())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = ws.close(None).await;
    let recs = finished_recordings(&http, &id, 1, 20).await;
    let rec = &recs[0];
    assert_eq!(rec["status"], "ready", "{rec}");
    let codecs = rec["codecs"].as_array().unwrap();
    assert!(
        codecs.len() == 1 && codecs[0].as_str().unwrap().starts_with("avc1"),
        "{rec}"
    );
    let d = rec["duration_seconds"].as_f64().unwrap();
    assert!(
        d >= 2.5,
        "{d} s of 4 s (the file starts at the encoder's first IDR)"
    );
    if require_program("ffprobe") {
        let file = ts
            .dir
            .join("data/recordings")
            .join(format!("{}.mp4", rec["id"].as_str().unwrap()));
        let errors = decode_errors(file.to_str().unwrap());
        assert!(errors.is_empty(), "{errors}");
    }
    ts.server.shutdown().await;
}
