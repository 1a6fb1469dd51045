//! Enhanced RTMP with a real publisher and real players: ffmpeg 9 (the PyPI `imageio-ffmpeg`
//! build, whose FLV muxer writes Enhanced RTMP) publishes HEVC + AAC, AV1 + Opus, VP9, and a
//! two-video-track multitrack stream. Debian's ffmpeg/ffprobe 5.1 (an independent decoder)
//! read the LL-HLS output and the recording; ffmpeg 9 plays RTMP back; a legacy destination
//! (nginx-rtmp) is refused with a reason while an Enhanced RTMP one (a second server) gets
//! the HEVC stream. Under `CI` a missing program fails these tests.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// `ffmpeg9 -re` publishing testsrc2 640x360 (1 s GOP) and a sine for `secs` seconds with
/// the given codec arguments.
fn publish9(ff: &PathBuf, url: &str, secs: u32, codec_args: &[&str]) -> Command {
    let mut cmd = Command::new(ff);
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", &secs.to_string()])
        .args(codec_args)
        .args(["-f", "flv", url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run"))
        .await
        .unwrap()
}

fn spawn_run(cmd: Command) -> tokio::task::JoinHandle<Output> {
    tokio::spawn(run(cmd))
}

/// ffprobe's `codec_name,width,height` lines for every stream of `input`.
async fn probe_streams(input: &str) -> String {
    let mut cmd = Command::new("ffprobe");
    cmd.args([
        "-v",
        "error",
        "-show_entries",
        "stream=codec_name,width,height",
        "-of",
        "csv=p=0",
        input,
    ]);
    let out = run(cmd).await;
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Decodes `input` whole with Debian's ffmpeg; panics on any decode error.
async fn assert_decodes(input: &str) {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-v", "error", "-nostdin", "-i", input])
        .args(["-f", "null", "-"]);
    let out = run(cmd).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "{input}: {err}"
    );
}

/// Plays the stream over RTMP with ffmpeg 9 for two seconds into a Matroska file and returns
/// what ffprobe finds in it.
async fn play_rtmp9(ff: &PathBuf, url: &str, dir: &std::path::Path, input: &[&str]) -> String {
    let file = dir.join(format!("played-{}.mkv", free_port()));
    let mut cmd = Command::new(ff);
    cmd.args([
        "-hide_banner",
        "-v",
        "error",
        "-nostdin",
        "-rw_timeout",
        "5000000",
    ])
    .args(input)
    .args(["-i", url])
    .args(["-t", "2", "-c", "copy", "-y"])
    .arg(&file)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "ffmpeg 9 RTMP play: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    probe_streams(file.to_str().unwrap()).await
}

async fn stream_detail(ts: &TestServer, id: &str) -> Value {
    let (status, v) = api(
        &ts.http(""),
        Method::GET,
        &format!("/api/v1/streams/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

/// The live view's video track once it is announced.
async fn live_video_track(ts: &TestServer, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = stream_detail(ts, id).await;
        let live = v.get("live").cloned().unwrap_or(Value::Null);
        if let Some(t) = live["tracks"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["kind"] == "video").cloned())
        {
            return t;
        }
        assert!(Instant::now() < deadline, "no video track: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn finished_recording(ts: &TestServer, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let recs = recordings_of(&ts.http(""), id).await;
        if let Some(r) = recs.first().filter(|r| r["status"] == "ready") {
            return r.clone();
        }
        assert!(Instant::now() < deadline, "no finished recording: {recs:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// One publish checked everywhere: live detail, RTMP play, LL-HLS, the recording.
struct Expect<'a> {
    video: &'a str,
    audio: Option<&'a str>,
    /// The audio HLS carries (Opus is packaged as AAC by default: `[transcode] hls_aac`).
    hls_audio: Option<&'a str>,
    codecs_prefix: &'a str,
    profile: &'a str,
}

async fn publish_and_check(tag: &str, codec_args: &[&str], want: Expect<'_>) {
    let Some(ff) = ffmpeg9() else {
        return;
    };
    let ts = start_server(tag).await;
    let (id, key) = ts.create_stream(tag).await;
    set_record(&ts, &id).await;
    let publisher = spawn_run(publish9(
        &ff,
        &ts.rtmp(&format!("/live/{key}")),
        7,
        codec_args,
    ));

    // Live: the stream detail names the codec, size and profile.
    let track = live_video_track(&ts, &id).await;
    assert_eq!(track["codec"], want.video, "{track}");
    assert_eq!(
        (track["width"].as_u64(), track["height"].as_u64()),
        (Some(640), Some(360)),
        "{track}"
    );
    assert_eq!(track["profile"], want.profile, "{track}");
    assert!(
        track["codec_string"]
            .as_str()
            .unwrap_or("")
            .starts_with(want.codecs_prefix),
        "{track}"
    );

    // An Enhanced RTMP player (ffmpeg 9) receives the codec.
    wait_for_200(&ts.http(&format!("/hls/{id}/index.m3u8")), 15).await;
    let played = play_rtmp9(&ff, &ts.rtmp(&format!("/live/{id}")), &ts.dir, &[]).await;
    assert!(
        played.contains(&format!("{},640,360", want.video)),
        "RTMP play: {played}"
    );
    if let Some(audio) = want.audio {
        assert!(played.contains(audio), "RTMP play: {played}");
    }

    let out = publisher.await.unwrap();
    assert!(
        out.status.success(),
        "publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // LL-HLS: the master names the codec; Debian's ffmpeg decodes the whole playlist.
    wait_for_endlist(&ts, &id, 30).await;
    let (_, _, master) = get(&ts.http(&format!("/hls/{id}/index.m3u8"))).await;
    let master = String::from_utf8_lossy(&master).into_owned();
    assert!(
        master.contains(&format!("CODECS=\"{}", want.codecs_prefix)),
        "{master}"
    );
    assert!(master.contains("RESOLUTION=640x360"), "{master}");
    let media = ts.http(&format!("/hls/{id}/media.m3u8"));
    let probed = probe_streams(&media).await;
    assert!(
        probed.contains(&format!("{},640,360", want.video)),
        "HLS: {probed}"
    );
    if let Some(audio) = want.hls_audio {
        assert!(probed.contains(audio), "HLS: {probed}");
    }
    assert_decodes(&media).await;

    // The recording holds the same codec and decodes.
    let rec = finished_recording(&ts, &id).await;
    let file = ts
        .dir
        .join("data/recordings")
        .join(format!("{}.mp4", rec["id"].as_str().unwrap()));
    let probed = probe_streams(file.to_str().unwrap()).await;
    assert!(
        probed.contains(&format!("{},640,360", want.video)),
        "recording: {probed}"
    );
    assert_decodes(file.to_str().unwrap()).await;
    let secs = ffprobe_duration(file.to_str().unwrap());
    assert!((5.0..=8.5).contains(&secs), "recording of {secs} s");
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hevc_and_aac_over_enhanced_rtmp_play_everywhere() {
    publish_and_check(
        "hevc",
        &[
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-pix_fmt",
            "yuv420p",
            "-x265-params",
            "log-level=error",
            "-c:a",
            "aac",
            "-b:a",
            "96k",
        ],
        Expect {
            video: "hevc",
            audio: Some("aac"),
            hls_audio: Some("aac"),
            codecs_prefix: "hvc1.1.6.L",
            profile: "Main",
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn av1_and_opus_over_enhanced_rtmp_play_everywhere() {
    publish_and_check(
        "av1",
        &[
            "-c:v",
            "libsvtav1",
            "-preset",
            "12",
            "-g",
            "30",
            "-pix_fmt",
            "yuv420p",
            "-svtav1-params",
            "lp=1",
            "-c:a",
            "libopus",
            "-b:a",
            "64k",
        ],
        Expect {
            video: "av1",
            audio: Some("opus"),
            hls_audio: Some("aac"),
            codecs_prefix: "av01.0.",
            profile: "Main",
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp9_over_enhanced_rtmp_plays_everywhere() {
    publish_and_check(
        "vp9",
        &[
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-g",
            "30",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
        ],
        Expect {
            video: "vp9",
            audio: Some("aac"),
            hls_audio: Some("aac"),
            codecs_prefix: "vp09.00.",
            profile: "Profile 0",
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multitrack_publisher_keeps_track_zero_and_describes_the_others() {
    let Some(ff) = ffmpeg9() else {
        return;
    };
    let ts = start_server("multitrack").await;
    let (id, key) = ts.create_stream("mt").await;
    // Track 0: H.264 640x360 (legacy packets); track 1: HEVC 320x180 (multitrack packets).
    let publisher = spawn_run(publish9(
        &ff,
        &ts.rtmp(&format!("/live/{key}")),
        6,
        &[
            "-map",
            "0:v",
            "-map",
            "0:v",
            "-map",
            "1:a",
            "-c:v:0",
            "libx264",
            "-preset",
            "veryfast",
            "-g",
            "30",
            "-c:v:1",
            "libx265",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-x265-params",
            "log-level=error",
            "-s:v:1",
            "320x180",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
        ],
    ));
    let track = live_video_track(&ts, &id).await;
    assert_eq!(track["codec"], "h264", "{track}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let sub = loop {
        let v = stream_detail(&ts, &id).await;
        let subs = v["live"]["sub_streams"].clone();
        if let Some(s) = subs.as_array().and_then(|s| {
            s.iter()
                .find(|s| s["bitrate_bps"].as_u64() > Some(0))
                .cloned()
        }) {
            assert_eq!(v["live"]["tracks"].as_array().map(Vec::len), Some(2), "{v}");
            break s;
        }
        assert!(Instant::now() < deadline, "no sub-stream: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(sub["track_id"], 1, "{sub}");
    assert_eq!(sub["kind"], "video", "{sub}");
    assert_eq!(sub["codec"], "hevc", "{sub}");
    assert_eq!(
        (sub["width"].as_u64(), sub["height"].as_u64()),
        (Some(320), Some(180)),
        "{sub}"
    );
    let out = publisher.await.unwrap();
    assert!(
        out.status.success(),
        "publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The main tracks reach HLS untouched by the sub-stream's packets.
    wait_for_endlist(&ts, &id, 30).await;
    let media = ts.http(&format!("/hls/{id}/media.m3u8"));
    let probed = probe_streams(&media).await;
    assert!(
        probed.contains("h264,640,360") && probed.contains("aac"),
        "{probed}"
    );
    assert!(!probed.contains("hevc"), "{probed}");
    assert_decodes(&media).await;
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hevc_restreams_to_an_enhanced_destination_and_a_legacy_one_fails_with_a_reason() {
    let Some(ff) = ffmpeg9() else {
        return;
    };
    if !common::nginx::require_nginx() {
        return;
    }
    let fast = |c: &mut media_server::Config| {
        c.restream.backoff_initial_ms = 200;
        c.restream.backoff_max_ms = 1000;
        c.restream.connect_timeout_ms = 3000;
    };
    let src = start_with("erestream-src", fast).await;
    let dst = start_server("erestream-dst").await;
    let nginx = common::nginx::Nginx::start(&src.dir.join("nginx"), None);
    let (id, key) = src.create_stream("src").await;
    let (dst_id, dst_key) = dst.create_stream("dst").await;
    let http = src.http("");
    let add = |body: Value| {
        let http = http.clone();
        let id = id.clone();
        async move {
            let (status, v) = api(
                &http,
                Method::POST,
                &format!("/api/v1/streams/{id}/restreams"),
                Some(body),
            )
            .await;
            assert_eq!(status, 201, "{v}");
            v["id"].as_str().unwrap().to_owned()
        }
    };
    let enhanced =
        add(json!({"platform": "custom", "url": dst.rtmp("/live"), "key": dst_key})).await;
    let legacy = add(json!({"platform": "custom", "url": nginx.url(), "key": "legacy"})).await;
    let publisher = spawn_run(publish9(
        &ff,
        &src.rtmp(&format!("/live/{key}")),
        8,
        &[
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-pix_fmt",
            "yuv420p",
            "-x265-params",
            "log-level=error",
            "-c:a",
            "aac",
        ],
    ));
    // The legacy destination fails at once, saying why.
    let deadline = Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let (_, v) = api(
            &http,
            Method::GET,
            &format!("/api/v1/streams/{id}/restreams/{legacy}"),
            None,
        )
        .await;
        if v["state"] == "failed" {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "legacy destination never failed: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let err = failed["last_error"].as_str().unwrap_or("");
    assert!(
        err.contains("Enhanced RTMP") && err.contains("hevc"),
        "{failed}"
    );
    // The Enhanced RTMP destination (a second server) plays the HEVC stream.
    let (_, v) = api(
        &http,
        Method::GET,
        &format!("/api/v1/streams/{id}/restreams/{enhanced}"),
        None,
    )
    .await;
    assert_ne!(v["state"], "failed", "{v}");
    let out = publisher.await.unwrap();
    assert!(
        out.status.success(),
        "publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_endlist(&dst, &dst_id, 30).await;
    let media = dst.http(&format!("/hls/{dst_id}/media.m3u8"));
    let probed = probe_streams(&media).await;
    assert!(
        probed.contains("hevc,640,360") && probed.contains("aac"),
        "{probed}"
    );
    assert_decodes(&media).await;
    src.server.shutdown().await;
    dst.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmps_ingest_with_a_test_ca_and_plain_rtmp_on_the_tls_port_is_refused() {
    let Some(ff) = ffmpeg9() else {
        return;
    };
    let dir = temp_dir("rtmps-pki");
    let (ca, cert, key) = test_pki(&dir);
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let ts = start_with("rtmps", move |c| {
        c.rtmp.tls_listen = "127.0.0.1:0".into();
        c.rtmp.tls_cert = cert_s;
        c.rtmp.tls_key = key_s;
    })
    .await;
    let tls_addr = ts.server.rtmps_addr.expect("rtmps listens");
    let (id, key) = ts.create_stream("tls").await;
    let detail = stream_detail(&ts, &id).await;
    assert!(
        detail["rtmps_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("rtmps://")),
        "{detail}"
    );

    // A plain RTMP publisher on the TLS port gets nowhere, quickly, and harms nothing.
    let plain = run(publish9(
        &ff,
        &format!("rtmp://127.0.0.1:{}/live/{key}", tls_addr.port()),
        2,
        &["-c:v", "libx264", "-c:a", "aac", "-rw_timeout", "4000000"],
    ))
    .await;
    assert!(
        !plain.status.success(),
        "plain RTMP on the TLS port was accepted"
    );

    // ffmpeg 9 publishes over RTMPS, verifying our certificate against the test CA.
    let url = format!("rtmps://localhost:{}/live/{key}", tls_addr.port());
    let publisher = spawn_run(publish9(
        &ff,
        &url,
        7,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-g",
            "30",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-tls_verify",
            "1",
            "-ca_file",
            ca.to_str().unwrap(),
        ],
    ));
    // And an RTMPS player (ffmpeg 9) gets the stream.
    wait_for_200(&ts.http(&format!("/hls/{id}/index.m3u8")), 15).await;
    let played = play_rtmp9(
        &ff,
        &format!("rtmps://localhost:{}/live/{id}", tls_addr.port()),
        &ts.dir,
        &["-tls_verify", "1", "-ca_file", ca.to_str().unwrap()],
    )
    .await;
    assert!(
        played.contains("h264,640,360") && played.contains("aac"),
        "RTMPS play: {played}"
    );
    let out = publisher.await.unwrap();
    assert!(
        out.status.success(),
        "rtmps publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_endlist(&ts, &id, 30).await;
    let media = ts.http(&format!("/hls/{id}/media.m3u8"));
    let probed = probe_streams(&media).await;
    assert!(
        probed.contains("h264,640,360") && probed.contains("aac"),
        "{probed}"
    );
    assert_decodes(&media).await;
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_rtmps_certificate_fails_the_start_with_one_line() {
    let dir = temp_dir("rtmps-bad");
    let (_, cert, key) = test_pki(&dir);
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    for (c, k) in [
        (garbage.clone(), key.clone()),
        (cert.clone(), garbage.clone()),
        (dir.join("missing.pem"), key.clone()),
    ] {
        let mut config = test_config(&dir.join(format!("srv-{}", free_port())));
        config.rtmp.tls_listen = "127.0.0.1:0".into();
        config.rtmp.tls_cert = c.display().to_string();
        config.rtmp.tls_key = k.display().to_string();
        let err = media_server::start(config)
            .await
            .expect_err("starts with a bad pair")
            .to_string();
        assert!(err.starts_with("rtmp.tls_cert: "), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}

/// Malformed Enhanced RTMP tags, truncated HEVC/AV1/VP9 records, bad `OpusHead`s and cut
/// audio packets, each a video (9) or audio (8) tag body.
fn malformed_enhanced_tags() -> Vec<(u8, Vec<u8>)> {
    let cat = |parts: &[&[u8]]| parts.concat();
    let hvcc: &[u8] = &[
        0x01, 0x01, 0x60, 0x00, 0x00, 0x00, 0x90, 0x00, 0x00, 0x00, 0x00, 0x00, 0x78, 0xf0, 0x00,
        0xfc, 0xfd, 0xf8, 0xf8, 0x00, 0x00, 0x0f, 0x03, 0xa0, 0x00, 0x01, 0x00, 0x18, 0x40,
    ];
    let mut cases = vec![
        (9, cat(&[&[0x90], b"hvc1", hvcc])),
        (9, cat(&[&[0x90], b"hvc1", &hvcc[..5]])),
        (9, cat(&[&[0x90], b"av01", &[0x81, 0x01]])),
        // An av1C whose sequence header OBU is cut (this one used to be taken as a record
        // without a size, switching the stream's video to AV1).
        (
            9,
            cat(&[
                &[0x90],
                b"av01",
                &[0x81, 0x01, 0x0c, 0x00, 0x0a, 0x0c, 0x02],
            ]),
        ),
        (9, cat(&[&[0x90], b"vp09", &[0x01, 0x00]])),
        (
            9,
            cat(&[
                &[0x90],
                b"vp09",
                &[0x07, 0, 0, 0, 9, 9, 0xff, 2, 2, 2, 0, 0],
            ]),
        ),
        (9, cat(&[&[0x96, 0x10], b"hvc1", &[0, 0xff, 0xff, 0xff, 1]])),
        (9, cat(&[&[0x96, 0x31], b"hvc1", &[0, 1]])),
        (9, cat(&[&[0x96, 0x06], b"hvc1", &[0, 1]])),
        (9, cat(&[&[0x96, 0x21], b"hv"])),
        (9, vec![0x97, 0xff]),
        (9, vec![0x97, 0x00, 0x00]),
        (9, cat(&[&[0x91], b"hvc1", &[0]])),
        (9, cat(&[&[0x91], b"zzzz", &[1, 2, 3]])),
        (9, vec![0x90]),
        (9, vec![0x80]),
        (8, cat(&[&[0x90], b"Opus", b"OpusHe"])),
        (
            8,
            cat(&[
                &[0x90],
                b"Opus",
                b"OpusHead",
                &[1, 6, 0, 0, 0x80, 0xbb, 0, 0, 0, 0, 1],
            ]),
        ),
        (8, cat(&[&[0x95, 0x10], b"Opus", &[0, 0, 0, 9]])),
        (8, cat(&[&[0x91], b"Opus"])),
        (8, cat(&[&[0x90], b"mp4a", &[0xff]])),
        (8, vec![0xAF, 0x00]),
        (8, vec![0xAF]),
        (8, vec![0x97, 0x05]),
    ];
    // Every truncation of a multitrack HEVC sequence start.
    let whole = cat(&[&[0x96, 0x20], b"hvc1", &[1, 0, 0, hvcc.len() as u8], hvcc]);
    for n in 1..whole.len() {
        cases.push((9, whole[..n].to_vec()));
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_enhanced_rtmp_tags_are_dropped_and_the_stream_carries_on() {
    let ts = start_server("erts-malformed").await;
    let (id, key) = ts.create_stream("malformed").await;
    let mut bad = malformed_enhanced_tags().into_iter().cycle();
    let mut tags = Vec::new();
    for (i, tag) in read_flv("tests/fixtures/av_baseline.flv")
        .into_iter()
        .enumerate()
    {
        let timestamp = tag.timestamp;
        tags.push(tag);
        // Past the sequence headers, a malformed tag after every few good ones.
        if i > 4 && i % 3 == 0 {
            let (kind, body) = bad.next().unwrap();
            tags.push(FlvTag {
                kind,
                timestamp,
                body: body.into(),
            });
        }
    }
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .expect("publish accepted");
    publisher.send_tags(&tags, true).await;
    publisher.finish().await;
    let text = wait_for_endlist(&ts, &id, 20).await;
    let pl = parse_media_playlist(text.as_bytes());
    let total: f32 = pl.segments.iter().map(|s| s.duration).sum();
    assert!(
        (total - 4.0).abs() < 0.1,
        "the stream is whole: {total} s\n{text}"
    );
    assert!(
        !text.contains("DISCONTINUITY"),
        "no codec change was made up:\n{text}"
    );
    let (status, _, _) = get(&ts.http("/healthz")).await;
    assert_eq!(status, 200);
    ts.server.shutdown().await;
}

/// Whether a TLS handshake with `addr` succeeds when only `ca` is trusted (server name
/// `localhost`).
async fn tls_trusts(addr: std::net::SocketAddr, ca: &std::path::Path) -> bool {
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_rtmps_certificate_is_served_without_a_restart() {
    let dir = temp_dir("rtmps-renew");
    let (ca_old, cert_old, key_old) = test_pki(&dir.join("old"));
    let (ca_new, cert_new, key_new) = test_pki(&dir.join("new"));
    let (cert, key) = (dir.join("live.crt"), dir.join("live.key"));
    std::fs::copy(&cert_old, &cert).unwrap();
    std::fs::copy(&key_old, &key).unwrap();
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let ts = start_with("rtmps-renew-srv", move |cfg| {
        cfg.rtmp.tls_listen = "127.0.0.1:0".into();
        cfg.rtmp.tls_cert = c;
        cfg.rtmp.tls_key = k;
    })
    .await;
    let addr = ts.server.rtmps_addr.unwrap();
    assert!(
        tls_trusts(addr, &ca_old).await,
        "the configured certificate is served"
    );
    assert!(!tls_trusts(addr, &ca_new).await);
    // A renewal writes the new pair over the files (the key first, as certbot's deploy
    // hooks do): a half-renewed pair that does not fit is not taken, the whole pair is.
    std::fs::copy(&key_new, &key).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        tls_trusts(addr, &ca_old).await,
        "a key that does not fit keeps the old pair"
    );
    std::fs::copy(&cert_new, &cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tls_trusts(addr, &ca_new).await {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!tls_trusts(addr, &ca_old).await);
    ts.server.shutdown().await;
}
