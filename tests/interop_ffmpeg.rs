//! Interop with the real ffmpeg (Debian package): ffmpeg publishes RTMP, ffmpeg/ffprobe read
//! the LL-HLS output and RTMP play. Under `CI` a missing ffmpeg fails these tests.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `ffmpeg -re` publishing lavfi sources for `secs` seconds to `url`. `inputs` picks
/// "av", "video" or "audio".
fn publish_cmd(url: &str, secs: u32, inputs: &str) -> Command {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"]);
    if inputs != "audio" {
        cmd.args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"]);
    }
    if inputs != "video" {
        cmd.args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]);
    }
    cmd.args(["-t", &secs.to_string()]);
    if inputs != "audio" {
        // libx264 defaults (B-frames on), a keyframe every second.
        cmd.args([
            "-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-pix_fmt", "yuv420p",
        ]);
    }
    if inputs != "video" {
        cmd.args(["-c:a", "aac", "-b:a", "96k"]);
    }
    cmd.args(["-f", "flv", url]);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run ffmpeg"))
        .await
        .unwrap()
}

/// Decodes the whole HLS stream; returns ffmpeg's stderr (errors only).
async fn decode_hls(url: &str) -> Output {
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-hide_banner",
        "-v",
        "error",
        "-nostdin",
        "-i",
        url,
        "-f",
        "null",
        "-",
    ]);
    run(cmd).await
}

async fn probe_duration(url: &str) -> f64 {
    let mut cmd = Command::new("ffprobe");
    cmd.args([
        "-v",
        "error",
        "-show_entries",
        "format=duration",
        "-of",
        "csv=p=0",
        url,
    ]);
    let out = run(cmd).await;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("ffprobe: {}", String::from_utf8_lossy(&out.stderr)))
}

async fn assert_hls_decodes(ts: &TestServer, id: &str, seconds: f64) -> String {
    let text = wait_for_endlist(ts, id, 30).await;
    parse_media_playlist(text.as_bytes());
    let url = ts.http(&format!("/hls/{id}/index.m3u8"));
    let out = decode_hls(&url).await;
    assert!(
        out.status.success(),
        "decode failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "decode errors: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let duration = probe_duration(&url).await;
    assert!(
        (duration - seconds).abs() <= seconds * 0.1,
        "duration {duration} vs {seconds} sent"
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_publishes_and_ffmpeg_decodes_the_hls_output() {
    if !require_program("ffmpeg") {
        return;
    }
    let ts = start_server("ff-av").await;
    let (id, key) = ts.create_stream("ff").await;
    let out = run(publish_cmd(&ts.rtmp(&format!("/live/{key}")), 8, "av")).await;
    assert!(
        out.status.success(),
        "publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = assert_hls_decodes(&ts, &id, 8.0).await;
    assert!(!text.contains("DISCONTINUITY"));
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_only_and_video_only_streams_play() {
    if !require_program("ffmpeg") {
        return;
    }
    let ts = start_server("ff-single").await;
    let (audio_id, audio_key) = ts.create_stream("audio").await;
    let (video_id, video_key) = ts.create_stream("video").await;
    let a = run(publish_cmd(
        &ts.rtmp(&format!("/live/{audio_key}")),
        5,
        "audio",
    ));
    let v = run(publish_cmd(
        &ts.rtmp(&format!("/live/{video_key}")),
        5,
        "video",
    ));
    let (a, v) = tokio::join!(a, v);
    assert!(a.status.success() && v.status.success());
    assert_hls_decodes(&ts, &audio_id, 5.0).await;
    assert_hls_decodes(&ts, &video_id, 5.0).await;
    let (_, _, master) = get(&ts.http(&format!("/hls/{audio_id}/index.m3u8"))).await;
    let master = String::from_utf8_lossy(&master);
    assert!(
        master.contains("CODECS=\"mp4a.40.2\"") && !master.contains("RESOLUTION"),
        "{master}"
    );
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_and_second_publisher_are_refused() {
    if !require_program("ffmpeg") {
        return;
    }
    let ts = start_server("ff-refuse").await;
    let (id, key) = ts.create_stream("one").await;
    let started = Instant::now();
    let wrong = run(publish_cmd(&ts.rtmp("/live/sk_0000000000000000"), 5, "av")).await;
    assert!(!wrong.status.success(), "a wrong key must be refused");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "refused at once"
    );
    let row = ts.server.store.get_stream(&id).await.unwrap().unwrap();
    assert_eq!(row.state.as_str(), "idle");

    let first = tokio::spawn(run(publish_cmd(&ts.rtmp(&format!("/live/{key}")), 6, "av")));
    wait_for_200(&ts.http(&format!("/hls/{id}/index.m3u8")), 10).await;
    let second = run(publish_cmd(&ts.rtmp(&format!("/live/{key}")), 3, "av")).await;
    assert!(
        !second.status.success(),
        "a second publisher must be refused"
    );
    let first = first.await.unwrap();
    assert!(
        first.status.success(),
        "first publisher unaffected: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_hls_decodes(&ts, &id, 6.0).await;
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_inside_the_grace_period_continues_the_playlist() {
    if !require_program("ffmpeg") {
        return;
    }
    let ts = start_server("ff-reconnect").await;
    let (id, key) = ts.create_stream("re").await;
    let url = ts.rtmp(&format!("/live/{key}"));
    let one = run(publish_cmd(&url, 4, "av")).await;
    assert!(one.status.success());
    let two = run(publish_cmd(&url, 4, "av")).await;
    assert!(two.status.success());
    let text = assert_hls_decodes(&ts, &id, 8.0).await;
    assert_eq!(text.matches("#EXT-X-DISCONTINUITY\n").count(), 1, "{text}");
    let pl = parse_media_playlist(text.as_bytes());
    assert_eq!(pl.media_sequence, 0, "the same playlist went on");
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_plays_rtmp_by_stream_id() {
    if !require_program("ffmpeg") {
        return;
    }
    let ts = start_server("ff-play").await;
    let (id, key) = ts.create_stream("play").await;
    let publisher = tokio::spawn(run(publish_cmd(&ts.rtmp(&format!("/live/{key}")), 6, "av")));
    wait_for_200(&ts.http(&format!("/hls/{id}/index.m3u8")), 10).await;
    let mut cmd = Command::new("ffprobe");
    cmd.args([
        "-v",
        "error",
        "-read_intervals",
        "%+2",
        "-count_packets",
        "-show_entries",
        "stream=codec_name,width,nb_read_packets",
        "-of",
        "csv=p=0",
    ])
    .arg(ts.rtmp(&format!("/live/{id}")));
    let out = run(cmd).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("h264,640"),
        "ffprobe over RTMP: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("aac"), "{text}");
    // The key is not a play name: playing by key is refused.
    let mut cmd = Command::new("ffprobe");
    cmd.args(["-v", "error", "-rw_timeout", "3000000"])
        .arg(ts.rtmp(&format!("/live/{key}")));
    assert!(!run(cmd).await.status.success());
    publisher.await.unwrap();
    ts.server.shutdown().await;
}
