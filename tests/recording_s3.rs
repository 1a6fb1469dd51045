//! Recordings in S3-compatible object storage, against moto's S3 server: parts go up while
//! the recording runs, the finished recording turns `ready` only once the object is
//! complete and verified (and the webhook waits for it), downloads and VOD come from
//! presigned URLs once the local spool is gone, delete removes the object; an object store
//! that goes away keeps the recording `uploading` and the upload finishes when it comes
//! back; refused credentials fail the recording with a clear reason and never show the
//! secret.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::s3::{Moto, ACCESS_KEY, SECRET_KEY};
use common::*;
use media_server::config::StorageConfig;
use serde_json::json;
use sha2::Digest;

const BUCKET: &str = "recs";

fn storage(moto: &Moto, keep_local: bool) -> StorageConfig {
    StorageConfig {
        kind: "s3".into(),
        endpoint: moto.endpoint(),
        bucket: BUCKET.into(),
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
        part_size_mb: 1,
        keep_local,
        ..StorageConfig::default()
    }
}

fn base(ts: &TestServer) -> String {
    format!("http://{}", ts.server.http_addr)
}

/// A stream with `record` set and its publish URL.
async fn recorded_stream(http: &str, rtmp: &str) -> (String, String) {
    let (status, created) = api(
        http,
        reqwest::Method::POST,
        "/api/v1/streams",
        Some(json!({"title": "s3", "record": true})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let stream = if created["stream"].is_object() {
        &created["stream"]
    } else {
        &created
    };
    let id = stream["id"].as_str().unwrap().to_owned();
    let key = created["stream_key"].as_str().unwrap().to_owned();
    let app = stream["app"].as_str().unwrap_or("live").to_owned();
    (id, format!("rtmp://{rtmp}/{app}/{key}"))
}

/// `ffmpeg -re` publishing testsrc2 at a steady ~2 Mbit/s for `secs` (so a recording has
/// several 1 MiB parts).
fn publish_2mbit(url: &str, secs: u32) -> std::process::Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", &secs.to_string()])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-pix_fmt",
            "yuv420p",
        ])
        .args([
            "-b:v", "2M", "-minrate", "2M", "-maxrate", "2M", "-bufsize", "1M",
        ])
        .args(["-x264-params", "nal-hrd=cbr"])
        .args(["-c:a", "aac", "-b:a", "96k", "-f", "flv", url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ffmpeg")
}

/// Polls the stream's single recording until `done` holds.
async fn wait_recording(
    http: &str,
    stream: &str,
    secs: u64,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let recs = recordings_of(http, stream).await;
        if let Some(r) = recs.first().filter(|r| done(r)) {
            return r.clone();
        }
        assert!(Instant::now() < deadline, "{what}: {recs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Subscribes `url` to the recording webhooks.
async fn subscribe(http: &str, url: &str) {
    let (status, v) = api(
        http,
        reqwest::Method::POST,
        "/api/v1/webhooks",
        Some(json!({"url": url, "events": ["recording.ready", "recording.failed"], "secret": "0123456789abcdef-s3"})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_uploads_while_recording_turns_ready_in_s3_and_plays_from_presigned_urls() {
    if !require_program("ffmpeg") {
        return;
    }
    let Some(moto) = Moto::start(&[]).await else {
        return;
    };
    moto.create_bucket(BUCKET).await;
    let (hook_url, hooks) = hook_receiver().await;
    let cfg = storage(&moto, false);
    let ts = start_with("rec-s3", move |c| c.recording.storage = cfg).await;
    let http = base(&ts);
    subscribe(&http, &hook_url).await;
    let (id, url) = recorded_stream(&http, &ts.server.rtmp_addr.to_string()).await;
    let mut ffmpeg = publish_2mbit(&url, 10);
    // Parts go up while the recording runs.
    let running = wait_recording(&http, &id, 20, "no part uploaded while recording", |r| {
        r["status"] == "recording" && r["uploaded_bytes"].as_i64().unwrap_or(0) >= 1 << 20
    })
    .await;
    assert_eq!(running["storage"], "local", "{running}");
    let rec_id = running["id"].as_str().unwrap().to_owned();
    let key = format!("recordings/{rec_id}.mp4");
    let _ = ffmpeg.wait();
    let rec = wait_recording(&http, &id, 60, "never ready", |r| r["status"] == "ready").await;
    assert_eq!(rec["storage"], "s3", "{rec}");
    // The object is the recording: its size and checksum are the API's.
    let object = moto
        .object(BUCKET, &key)
        .await
        .expect("the object is in the bucket");
    assert_eq!(
        object.len() as i64,
        rec["size_bytes"].as_i64().unwrap(),
        "{rec}"
    );
    assert!(
        object.len() > 2 << 20,
        "several parts: {} bytes",
        object.len()
    );
    assert_eq!(rec["sha256"].as_str(), Some(sha256_hex(&object).as_str()));
    assert_eq!(moto.keys(BUCKET, "recordings/").await, vec![key.clone()]);
    // The spool is gone (keep_local = false).
    let spool = ts.dir.join(format!("data/recordings/{rec_id}.mp4"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while spool.exists() {
        assert!(Instant::now() < deadline, "the spool is still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // recording.ready came with the object's key and checksums, never a URL or a secret.
    wait_for_hook(&hooks, "recording.ready", |h| {
        h["type"] == "recording.ready" && h["data"]["recording"]["storage"] == "s3"
    })
    .await;
    let sent = serde_json::to_string(&*hooks.lock().unwrap()).unwrap();
    assert!(
        sent.contains(&rec["sha256"].as_str().unwrap().to_string()),
        "{sent}"
    );
    assert!(
        !sent.contains(SECRET_KEY) && !sent.contains("X-Amz-Signature"),
        "{sent}"
    );
    // The download is a presigned URL of the object.
    let resp = no_redirects()
        .get(format!("{http}/api/v1/recordings/{rec_id}/download"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&moto.endpoint()) && location.contains("X-Amz-Signature"));
    assert!(!location.contains(SECRET_KEY));
    let fetched = ts.dir.join("fetched.mp4");
    let curl = Command::new("curl")
        .args(["-sSf", "-o"])
        .arg(&fetched)
        .arg(&location)
        .output()
        .unwrap();
    assert!(
        curl.status.success(),
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    let fetched = std::fs::read(&fetched).unwrap();
    assert_eq!(sha256_hex(&fetched), rec["sha256"].as_str().unwrap());
    // The recording's view carries a presigned URL too, valid for presign_ttl_secs.
    let (_, view) = api(
        &http,
        reqwest::Method::GET,
        &format!("/api/v1/recordings/{rec_id}"),
        None,
    )
    .await;
    let download_url = view["download_url"].as_str().unwrap();
    assert!(
        download_url.starts_with(&moto.endpoint()) && download_url.contains("X-Amz-Expires=3600"),
        "{view}"
    );
    assert!(view["download_expires_at"].is_string(), "{view}");
    // VOD from the stored index, its media from presigned URLs: ffmpeg plays it whole.
    let vod = format!("{http}/vod/{rec_id}/index.m3u8");
    let (status, _, playlist) = get(&vod).await;
    assert_eq!(status, 200);
    let playlist = parse_media_playlist(&playlist);
    assert!(
        playlist.end_list && playlist.segments.len() >= 5,
        "{playlist:?}"
    );
    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-http_persistent",
            "0",
            "-i",
            &vod,
            "-map",
            "0",
            "-f",
            "null",
            "-",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let probed = ffprobe_duration(&location);
    let duration = rec["duration_seconds"].as_f64().unwrap();
    assert!(
        (probed - duration).abs() < 0.5,
        "ffprobe {probed} s, API {duration} s"
    );
    assert!(duration > 8.0, "{duration} s of 10 s sent");
    // Retention removes the object: the recording made old, the server restarted with a
    // retention of one hour.
    let old_id = rec_id.clone();
    ts.server
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
    ts.server.shutdown().await;
    let mut config = test_config(&ts.dir);
    if let Some(db) = &ts.db {
        config.store.url = db.url.clone();
    }
    config.recording.storage = storage(&moto, false);
    config.recording.delete_after_hours = 1;
    let server = media_server::start(config).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    // The object goes first, then the row (never a row without its object).
    while !moto.keys(BUCKET, "recordings/").await.is_empty()
        || server.store.get_recording(&rec_id).await.unwrap().is_some()
    {
        assert!(
            Instant::now() < deadline,
            "retention left the object or the row"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_store_outage_keeps_the_recording_uploading_until_it_is_back() {
    if !require_program("ffmpeg") {
        return;
    }
    let Some(mut moto) = Moto::start(&[]).await else {
        return;
    };
    moto.create_bucket(BUCKET).await;
    let cfg = storage(&moto, true);
    let ts = start_with("rec-s3-outage", move |c| {
        c.recording.storage = StorageConfig {
            upload_attempts: 2,
            ..cfg
        };
    })
    .await;
    let http = base(&ts);
    let (id, url) = recorded_stream(&http, &ts.server.rtmp_addr.to_string()).await;
    let mut ffmpeg = publish_2mbit(&url, 8);
    let running = wait_recording(&http, &id, 20, "no part uploaded", |r| {
        r["uploaded_bytes"].as_i64().unwrap_or(0) >= 1 << 20
    })
    .await;
    let rec_id = running["id"].as_str().unwrap().to_owned();
    moto.kill();
    let _ = ffmpeg.wait();
    // The store is gone: the recording waits, saying why, and is not given up.
    let waiting = wait_recording(&http, &id, 30, "not uploading", |r| {
        r["status"] == "uploading"
            && r["reason"]
                .as_str()
                .is_some_and(|s| s.starts_with("retrying"))
    })
    .await;
    assert!(!waiting["reason"].as_str().unwrap().contains(SECRET_KEY));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let still = &recordings_of(&http, &id).await[0];
    assert_eq!(
        still["status"], "uploading",
        "outages never count as attempts: {still}"
    );
    // Back, empty (moto keeps nothing): the upload starts over from the spool.
    moto.restart().await;
    moto.create_bucket(BUCKET).await;
    let rec = wait_recording(&http, &id, 90, "never ready after the outage", |r| {
        r["status"] == "ready"
    })
    .await;
    let object = moto
        .object(BUCKET, &format!("recordings/{rec_id}.mp4"))
        .await
        .expect("the object");
    let spool = std::fs::read(ts.dir.join(format!("data/recordings/{rec_id}.mp4"))).unwrap();
    assert_eq!(
        sha256_hex(&object),
        sha256_hex(&spool),
        "the same bytes as the spool"
    );
    assert_eq!(rec["sha256"].as_str(), Some(sha256_hex(&spool).as_str()));
    // DELETE removes the object and the kept file.
    let (status, _) = api(
        &http,
        reqwest::Method::DELETE,
        &format!("/api/v1/recordings/{rec_id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert!(moto.keys(BUCKET, "recordings/").await.is_empty());
    assert!(!ts
        .dir
        .join(format!("data/recordings/{rec_id}.mp4"))
        .exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_fail_the_recording_with_a_clear_reason_and_keep_the_file() {
    if !require_program("ffmpeg") {
        return;
    }
    let Some(moto) = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]).await else {
        return;
    };
    let (hook_url, hooks) = hook_receiver().await;
    let cfg = storage(&moto, false);
    let ts = start_with("rec-s3-denied", move |c| {
        c.recording.storage = StorageConfig {
            upload_attempts: 2,
            ..cfg
        };
    })
    .await;
    let http = base(&ts);
    subscribe(&http, &hook_url).await;
    let (id, url) = recorded_stream(&http, &ts.server.rtmp_addr.to_string()).await;
    let mut ffmpeg = ffmpeg_publish(&url, 3);
    let _ = ffmpeg.wait();
    let rec = wait_recording(&http, &id, 60, "never failed", |r| r["status"] == "failed").await;
    let reason = rec["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("upload_failed") && reason.contains("InvalidAccessKeyId"),
        "{reason}"
    );
    let rec_id = rec["id"].as_str().unwrap();
    assert!(
        ts.dir
            .join(format!("data/recordings/{rec_id}.mp4"))
            .exists(),
        "the file is kept"
    );
    wait_for_hook(&hooks, "recording.failed", |h| {
        h["type"] == "recording.failed"
    })
    .await;
    let listed = serde_json::to_string(&recordings_of(&http, &id).await).unwrap();
    let sent = serde_json::to_string(&*hooks.lock().unwrap()).unwrap();
    let seen = format!("{sent}{listed}");
    assert!(!seen.contains(SECRET_KEY), "{seen}");
    // The failed recording still plays from this node's disk.
    let (status, _, _) = get(&format!("{http}/vod/{rec_id}/index.m3u8")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_recording_resumes_the_upload_and_never_logs_the_secret() {
    if !require_program("ffmpeg") || !require_program("ffprobe") {
        return;
    }
    let Some(moto) = Moto::start(&[]).await else {
        return;
    };
    moto.create_bucket(BUCKET).await;
    let dir = temp_dir("rec-s3-crash");
    let (http_port, rtmp_port) = (free_port(), free_port());
    let config = dir.join("media-server.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n[webrtc]\nudp_listen = \"127.0.0.1:0\"\n\
             [rtmp]\nlisten = \"127.0.0.1:{rtmp_port}\"\n[auth]\nadmin_token = \"{ADMIN_TOKEN}\"\n\
             [recording.storage]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"{BUCKET}\"\n\
             part_size_mb = 1\n",
            dir.join("data").display(),
            moto.endpoint()
        ),
    )
    .unwrap();
    let log = dir.join("server.log");
    // Keys from the environment, as in production; everything logged at debug.
    let spawn = || {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_media-server"))
            .arg("--config")
            .arg(&config)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("RUST_LOG", "debug")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap()
    };
    let http = format!("http://127.0.0.1:{http_port}");
    let mut server = spawn();
    wait_healthy(&format!("{http}/healthz")).await;
    let (id, url) = recorded_stream(&http, &format!("127.0.0.1:{rtmp_port}")).await;
    // A 2-minute recording, killed once several parts are up (about 25 s in).
    let mut ffmpeg = publish_2mbit(&url, 120);
    let running = wait_recording(&http, &id, 60, "parts not uploaded while recording", |r| {
        r["status"] == "recording" && r["uploaded_bytes"].as_i64().unwrap_or(0) >= 5 << 20
    })
    .await;
    let rec_id = running["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.kill().unwrap(); // SIGKILL, mid-recording and mid-upload
    let _ = server.wait();
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    let spool = dir.join(format!("data/recordings/{rec_id}.mp4"));
    assert!(spool.exists());

    let mut server = spawn();
    wait_healthy(&format!("{http}/healthz")).await;
    let rec = wait_recording(&http, &id, 60, "never ready after the crash", |r| {
        r["status"] == "ready"
    })
    .await;
    assert_eq!(rec["storage"], "s3", "{rec}");
    let object = moto
        .object(BUCKET, &format!("recordings/{rec_id}.mp4"))
        .await
        .expect("the object");
    assert_eq!(object.len() as i64, rec["size_bytes"].as_i64().unwrap());
    assert_eq!(rec["sha256"].as_str(), Some(sha256_hex(&object).as_str()));
    let resp = no_redirects()
        .get(format!("{http}/api/v1/recordings/{rec_id}/download"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let duration = ffprobe_duration(&location);
    let elapsed =
        running["duration_seconds"].as_f64().unwrap_or(0.0) + started.elapsed().as_secs_f64();
    assert!(duration >= 18.0, "the object plays {duration} s");
    assert!(
        duration <= elapsed + 3.0,
        "{duration} s of at most {elapsed:.1} s"
    );
    let _ = server.kill();
    let _ = server.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("resuming its upload"),
        "the upload was resumed"
    );
    assert!(!text.contains(SECRET_KEY), "the secret is never logged");
    assert!(text.contains("DEBUG"), "the log ran at debug level");
}
