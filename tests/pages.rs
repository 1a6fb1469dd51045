//! The web pages in a real browser: Debian's `chromium` driven by `playwright-core` (npm,
//! installed by tests/run.sh into target/npm) through the scripts in tests/pages/. Under CI a
//! missing chromium, node or playwright-core fails these tests.
//!
//! The player picks native HLS for an RTMP stream with B-frames, WebRTC (WHEP) for a WHIP
//! stream, MJPEG for a camera, plays inside an iframe on another origin and explains private
//! streams; the console signs in, creates a stream, shows it live, counts two viewers,
//! charts its health and stops it. Screenshots land in target/test-artifacts/.

mod common;

#[path = "../examples/esp32_cam/frames.rs"]
#[allow(dead_code)]
mod frames;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const PLAYWRIGHT: &str = "target/npm/node_modules/playwright-core/package.json";

fn require_browser_tools() -> bool {
    if !require_program("chromium") || !require_program("node") {
        return false;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    if !root.join(PLAYWRIGHT).exists() {
        if std::env::var_os("CI").is_some() {
            panic!("{PLAYWRIGHT} is required under CI (bash tests/run.sh installs it)");
        }
        eprintln!("SKIPPED LOCALLY: playwright-core not installed");
        return false;
    }
    true
}

/// Runs `node tests/pages/{script}` with `env`; returns its JSON report lines.
async fn node(script: &str, env: &[(&str, String)]) -> Vec<Value> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(format!("{root}/tests/pages/{script}"))
        .current_dir(root)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(240), cmd.output())
        .await
        .expect("the browser script finished within 240 s")
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{script} failed: {stderr}\nreported so far:\n{stdout}"
    );
    eprintln!("{script}:\n{stdout}");
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn find<'a>(reports: &'a [Value], key: &str, name: &str) -> &'a Value {
    reports
        .iter()
        .find(|r| r[key] == name)
        .unwrap_or_else(|| panic!("no report {name}: {reports:?}"))
}

/// hls.js from npm, served from another origin as an operator's copy would be; its URL.
async fn hlsjs_elsewhere() -> String {
    let hlsjs = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/npm/node_modules/hls.js/dist/hls.min.js"),
    )
    .expect("hls.js is installed by tests/run.sh");
    static_file(hlsjs, "text/javascript").await
}

/// Serves `body` at `http://127.0.0.1:PORT/file` (another origin than the server).
async fn static_file(body: Vec<u8>, content_type: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = std::sync::Arc::new(body);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
                     access-control-allow-origin: *\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tokio::io::AsyncWriteExt::write_all(&mut s, head.as_bytes()).await;
                let _ = tokio::io::AsyncWriteExt::write_all(&mut s, &body).await;
            });
        }
    });
    format!("http://{addr}/hls.min.js")
}

/// A page on another origin (its own port) holding the embed page in an iframe.
async fn other_origin(embed_url: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let html = format!(
                "<!doctype html><title>Someone's blog</title><h1>Watch</h1>\
                 <iframe src=\"{embed_url}\" width=\"640\" height=\"360\" \
                 allow=\"autoplay\"></iframe>"
            );
            let mut buf = vec![0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
                html.len()
            );
            let _ = tokio::io::AsyncWriteExt::write_all(&mut s, resp.as_bytes()).await;
        }
    });
    format!("http://{addr}/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_picks_a_path_for_rtmp_whip_and_camera_and_explains_private_streams() {
    if !require_browser_tools() || !require_program("ffmpeg") {
        return;
    }
    let hlsjs_url = hlsjs_elsewhere().await;
    let configured = hlsjs_url.clone();
    let ts = start_with("pages-player", move |c| c.web.hlsjs_url = configured).await;
    let base = ts.http("");
    // RTMP from ffmpeg (libx264 with B-frames: WebRTC is not offered, HLS plays).
    let (rtmp_id, rtmp_key) = ts.create_stream("rtmp").await;
    let mut ffmpeg = ffmpeg_publish(&ts.rtmp(&format!("/live/{rtmp_key}")), 120);
    // WHIP (baseline H.264 + Opus): WebRTC.
    let (whip_id, whip_key) = ts.create_stream("whip").await;
    let whip_publisher =
        common::webrtc::whip_publish(&ts.http("/whip/live/whip"), &whip_key, 30).await;
    // A camera: MJPEG.
    let (cam_id, cam_key) = ts.create_stream("cam").await;
    let url = format!("ws://{}/ingest/ws?key={cam_key}", ts.server.http_addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let camera = tokio::spawn(async move {
        for n in 0..1200u64 {
            let jpeg = frames::jpeg(n, 320, 240, 60);
            if ws.send(Message::Binary(jpeg.into())).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // A private stream (not live: the token is checked first).
    let (private_id, _) = ts.create_stream("private").await;
    let (status, _) = api(
        &base,
        reqwest::Method::PATCH,
        &format!("/api/v1/streams/{private_id}"),
        Some(serde_json::json!({ "privacy": "private" })),
    )
    .await;
    assert_eq!(status, 200);
    for id in [&rtmp_id, &whip_id, &cam_id] {
        wait_live(&base, id).await;
    }
    let framing = other_origin(ts.http(&format!("/embed/{rtmp_id}"))).await;

    let cases = serde_json::json!([
        { "name": "rtmp", "url": ts.http(&format!("/play/{rtmp_id}")), "kind": "video" },
        { "name": "whip", "url": ts.http(&format!("/play/{whip_id}")), "kind": "video" },
        { "name": "camera", "url": ts.http(&format!("/play/{cam_id}")), "kind": "mjpeg" },
        { "name": "embed", "url": framing, "kind": "frame" },
        { "name": "hlsjs", "url": ts.http(&format!("/play/{rtmp_id}?path=hlsjs")), "kind": "video" },
        { "name": "private", "url": ts.http(&format!("/play/{private_id}")), "kind": "message" },
        { "name": "bad_token", "url": ts.http(&format!("/play/{private_id}?token=bogus")), "kind": "message" },
        { "name": "unknown", "url": ts.http("/play/str_doesnotexist"), "kind": "message" },
    ]);
    let reports = node("player.mjs", &[("CASES", cases.to_string())]).await;

    let rtmp = find(&reports, "name", "rtmp");
    assert_eq!(rtmp["state"], "playing", "{rtmp}");
    assert_eq!(rtmp["path"], "HLS (native)", "{rtmp}");
    assert!(rtmp["frames"].as_u64().unwrap_or(0) > 30, "{rtmp}");
    assert_eq!(rtmp["width"], 640, "{rtmp}");
    assert!(
        rtmp["text"].as_str().unwrap().contains("behind live"),
        "latency readout: {rtmp}"
    );

    let whip = find(&reports, "name", "whip");
    assert_eq!(whip["state"], "playing", "{whip}");
    assert_eq!(whip["path"], "WebRTC (WHEP)", "{whip}");
    assert!(whip["frames"].as_u64().unwrap_or(0) > 30, "{whip}");
    assert!(
        whip["latencyMs"].as_u64().is_some(),
        "latency readout: {whip}"
    );

    let cam = find(&reports, "name", "camera");
    assert_eq!(cam["state"], "playing", "{cam}");
    assert_eq!(cam["path"], "MJPEG", "{cam}");
    assert_eq!(cam["picture_changes"], true, "the <img> updates: {cam}");

    let embed = find(&reports, "name", "embed");
    assert_eq!(
        embed["state"], "playing",
        "the embed plays inside another origin's iframe: {embed}"
    );
    assert!(embed["frames"].as_u64().unwrap_or(0) > 30, "{embed}");

    let hls = find(&reports, "name", "hlsjs");
    assert_eq!(hls["state"], "playing", "{hls}");
    assert_eq!(hls["path"], "HLS (hls.js)", "{hls}");
    assert!(hls["frames"].as_u64().unwrap_or(0) > 30, "{hls}");
    assert!(
        hls["latencyMs"].as_u64().is_some(),
        "latency readout: {hls}"
    );

    let private = find(&reports, "name", "private");
    assert_eq!(private["state"], "denied", "{private}");
    assert!(
        private["message"].as_str().unwrap().contains("private"),
        "{private}"
    );
    let bad = find(&reports, "name", "bad_token");
    assert_eq!(bad["state"], "denied", "{bad}");
    assert!(
        bad["message"].as_str().unwrap().contains("not valid"),
        "{bad}"
    );
    let unknown = find(&reports, "name", "unknown");
    assert_eq!(unknown["state"], "notfound", "{unknown}");
    for r in &reports {
        assert_eq!(r["errors"], serde_json::json!([]), "page errors: {r}");
    }

    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    whip_publisher.sender.abort();
    camera.abort();
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_hls_and_hlsjs_join_rtmp_whip_and_camera_streams_at_the_first_200() {
    if !require_browser_tools() || !require_program("ffmpeg") {
        return;
    }
    let hlsjs_url = hlsjs_elsewhere().await;
    // The shipped HLS defaults, served for a cache in front (`cdn`): the players count
    // themselves with beacons.
    let ts = start_with("pages-join", move |c| {
        c.web.hlsjs_url = hlsjs_url;
        c.hls.on_demand = true;
        c.hls.cdn = true;
    })
    .await;
    // Three publishers start together: ffmpeg over RTMP, a WHIP client, a camera.
    let (rtmp_id, rtmp_key) = ts.create_stream("joinrtmp").await;
    let (whip_id, whip_key) = ts.create_stream("joinwhip").await;
    let (cam_id, cam_key) = ts.create_stream("joincam").await;
    let mut ffmpeg = ffmpeg_publish(&ts.rtmp(&format!("/live/{rtmp_key}")), 60);
    let whip = common::webrtc::whip_publish(&ts.http("/whip/live/joinwhip"), &whip_key, 15).await;
    let url = format!("ws://{}/ingest/ws?key={cam_key}", ts.server.http_addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let camera = tokio::spawn(async move {
        for n in 0..1200u64 {
            let jpeg = frames::jpeg(n, 320, 240, 60);
            if ws.send(Message::Binary(jpeg.into())).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // The moment each multivariant playlist first answers 200, the players open.
    let index = |id: &str| ts.http(&format!("/hls/{id}/index.m3u8"));
    let (a, b, c) = (index(&rtmp_id), index(&whip_id), index(&cam_id));
    let (rtmp, whip_first, cam) =
        tokio::join!(first_200(&a, 30), first_200(&b, 30), first_200(&c, 30));
    eprintln!(
        "first 200 after {:?} / {:?} / {:?}",
        rtmp.1, whip_first.1, cam.1
    );
    let mut cases = vec![];
    for (name, id) in [("rtmp", &rtmp_id), ("whip", &whip_id), ("camera", &cam_id)] {
        for path in ["hls", "hlsjs"] {
            cases.push(serde_json::json!({
                "name": format!("{name}_{path}"),
                "url": ts.http(&format!("/play/{id}?path={path}")),
                "kind": "video",
            }));
        }
    }
    let reports = node(
        "player.mjs",
        &[
            ("CASES", serde_json::Value::from(cases).to_string()),
            ("PARALLEL", "1".to_owned()),
        ],
    )
    .await;
    for (name, width) in [("rtmp", 640), ("whip", 320), ("camera", 320)] {
        for (path, label) in [("hls", "HLS (native)"), ("hlsjs", "HLS (hls.js)")] {
            let r = find(&reports, "name", &format!("{name}_{path}"));
            assert_eq!(r["state"], "playing", "{r}");
            assert_eq!(r["path"], label, "{r}");
            assert!(r["frames"].as_u64().unwrap_or(0) > 30, "{r}");
            assert_eq!(r["width"], width, "{r}");
            assert_eq!(r["errors"], serde_json::json!([]), "page errors: {r}");
        }
    }
    // Each page's beacons made it one HLS viewer (a cache would have hidden its requests).
    for id in [&rtmp_id, &whip_id, &cam_id] {
        let (_, v) = api(
            &ts.http(""),
            reqwest::Method::GET,
            &format!("/api/v1/streams/{id}"),
            None,
        )
        .await;
        assert!(
            v["viewer_count_by_protocol"]["hls"].as_u64().unwrap_or(0) >= 2,
            "two pages played {id} over HLS: {v}"
        );
        assert_eq!(v["hls_viewers_counted_by"], "beacons", "{v}");
    }
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    whip.sender.abort();
    camera.abort();
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_waits_for_a_stream_and_reconnects_when_it_comes_back() {
    if !require_browser_tools() || !require_program("ffmpeg") {
        return;
    }
    let ts = start_server("pages-comeback").await;
    let (id, key) = ts.create_stream("comeback").await;
    let publish = ts.rtmp(&format!("/live/{key}"));
    // Offline at first; live for ~12 s from t=6 s; ended; live again from t=30 s.
    let schedule = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(6)).await;
        let mut first = ffmpeg_publish(&publish, 12);
        let _ = tokio::task::spawn_blocking(move || first.wait()).await;
        tokio::time::sleep(Duration::from_secs(12)).await;
        let mut second = ffmpeg_publish(&publish, 40);
        let _ = tokio::task::spawn_blocking(move || second.wait()).await;
    });
    let cases = serde_json::json!([
        { "name": "comeback", "url": ts.http(&format!("/play/{id}")), "kind": "comeback" },
    ]);
    let reports = node("player.mjs", &[("CASES", cases.to_string())]).await;
    let r = find(&reports, "name", "comeback");
    let states: Vec<&str> = r["states"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let first_play = states.iter().position(|s| *s == "playing");
    let last_play = states.iter().rposition(|s| *s == "playing");
    assert!(
        states
            .iter()
            .take(first_play.unwrap_or(0))
            .any(|s| *s == "offline"),
        "offline before the stream started: {states:?}"
    );
    let (Some(first), Some(last)) = (first_play, last_play) else {
        panic!("never played: {states:?}");
    };
    assert!(
        last > first,
        "played again after the stream came back: {states:?}"
    );
    assert!(
        states[first..last]
            .iter()
            .any(|s| matches!(*s, "ended" | "offline" | "reconnecting")),
        "showed the interruption: {states:?}"
    );
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    schedule.abort();
    ts.server.shutdown().await;
}

async fn wait_live(base: &str, id: &str) {
    for _ in 0..100 {
        let (_, body) = api(
            base,
            reqwest::Method::GET,
            &format!("/api/v1/streams/{id}"),
            None,
        )
        .await;
        if body["state"] == "live" && !body["live"]["tracks"].as_array().is_none_or(Vec::is_empty) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{id} never went live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_creates_watches_and_stops_a_stream() {
    if !require_browser_tools() || !require_program("ffmpeg") {
        return;
    }
    let ts = start_with("pages-console", |c| c.stats.health_interval_ms = 1000).await;
    let reports = node(
        "console.mjs",
        &[
            ("BASE", ts.http("")),
            ("RTMP_BASE", ts.rtmp("")),
            ("TOKEN", ADMIN_TOKEN.to_owned()),
        ],
    )
    .await;
    let step = |name| find(&reports, "step", name);

    let wrong = step("wrong_tokens");
    let refused = wrong["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 2);
    assert_eq!(refused[0], "That token was not accepted.");
    assert_eq!(
        refused[0], refused[1],
        "a nearly-right token is refused in the same words"
    );
    assert_eq!(wrong["app_visible"], false);

    let signed = step("signed_in");
    assert!(
        !signed["url"].as_str().unwrap().contains(ADMIN_TOKEN),
        "the token is not in the URL"
    );

    let created = step("created");
    let labels: Vec<&str> = created["labels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for l in [
        "Stream key",
        "OBS: Server",
        "ffmpeg",
        "WHIP URL",
        "ESP32 camera (WebSocket)",
        "Embed",
    ] {
        assert!(labels.contains(&l), "the settings show {l}: {labels:?}");
    }
    let hidden = step("secrets_hidden");
    assert_eq!(hidden["hidden"], true);
    assert_eq!(
        hidden["list"], "",
        "the key is gone from the page once acknowledged"
    );

    assert_eq!(step("live")["live"], true, "{}", step("live"));
    let viewers = step("viewers");
    assert_eq!(viewers["players_playing"], true, "{viewers}");
    assert!(
        viewers["viewer_count"].as_u64().unwrap_or(0) >= 2,
        "{viewers}"
    );
    let detail = step("detail");
    assert!(
        detail["health_points"].as_u64().unwrap_or(0) >= 2,
        "the health chart has points: {detail}"
    );
    assert_eq!(detail["components"], 7, "{detail}");
    assert!(
        detail["bitrate_points"].as_u64().unwrap_or(0) >= 2,
        "{detail}"
    );
    let restream = step("restream");
    assert!(
        restream["row"]
            .as_str()
            .is_some_and(|r| r.contains("rtmp://127.0.0.1:9/live")),
        "{restream}"
    );
    assert_eq!(
        restream["key_shown"], false,
        "the destination key is masked: {restream}"
    );
    assert_eq!(restream["removed"], true, "{restream}");
    let stopped = step("stopped");
    assert_eq!(stopped["stopped"], true, "{stopped}");
    let recording = step("recording");
    assert_eq!(recording["listed"], true, "{recording}");
    assert!(
        recording["downloaded"].as_u64().unwrap_or(0) > 10_000,
        "{recording}"
    );
    assert!(
        recording["played_seconds"].as_f64().unwrap_or(0.0) > 1.0,
        "{recording}"
    );
    assert_eq!(step("rotated")["new_key_differs"], true);
    let access = step("access");
    assert_eq!(access["keyboard_opens_detail"], true, "{access}");
    assert!(
        access["phone_overflow_px"].as_i64().unwrap_or(99) <= 0,
        "usable on a phone: {access}"
    );
    assert_eq!(access["errors"], serde_json::json!([]), "{access}");
    for shot in ["created", "viewers", "detail", "stopped", "phone"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("target/test-artifacts/console-{shot}.png"));
        assert!(path.exists(), "screenshot {}", path.display());
    }
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_carry_no_secrets_and_a_strict_policy() {
    let ts = start_server("pages-secrets").await;
    let (id, key) = ts.create_stream("s").await;
    let client = reqwest::Client::new();
    for path in [
        "/console".to_owned(),
        format!("/play/{id}"),
        format!("/embed/{id}"),
        "/assets/console.js".to_owned(),
        "/assets/player.js".to_owned(),
        "/assets/style.css".to_owned(),
    ] {
        let resp = client.get(ts.http(&path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let csp = resp
            .headers()
            .get("content-security-policy")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = resp.text().await.unwrap();
        assert!(!body.contains(ADMIN_TOKEN), "{path} holds the admin token");
        assert!(!body.contains(&key), "{path} holds the stream key");
        if !path.starts_with("/assets/") {
            let csp = csp.unwrap_or_else(|| panic!("{path} has no CSP"));
            assert!(csp.contains("default-src 'none'"), "{csp}");
            assert!(csp.contains("script-src 'self'"), "{csp}");
            assert!(
                !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
                "{csp}"
            );
            assert!(!body.contains("<script>"), "{path} has an inline script");
        }
    }
    // Frame policy: the console cannot be framed, the embed can.
    let csp_of = |resp: &reqwest::Response| {
        resp.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let console = client.get(ts.http("/console")).send().await.unwrap();
    assert!(csp_of(&console).ends_with("frame-ancestors 'none'"));
    let embed = client
        .get(ts.http(&format!("/embed/{id}")))
        .send()
        .await
        .unwrap();
    assert!(csp_of(&embed).ends_with("frame-ancestors *"));
    // `/` leads to the console; unknown ids and odd paths are 404.
    let root = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(ts.http("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(root.headers()["location"], "/console");
    let (status, _, _) = get(&ts.http("/play/..%2f..%2fetc/info")).await;
    assert_eq!(status, 404);
    let (status, _, _) = get(&ts.http("/assets/../Cargo.toml")).await;
    assert_eq!(status, 404);

    // A wrong API token gets the same answer whether it is nearly right or nonsense.
    let mut answers = Vec::new();
    for wrong in [
        "nonsense",
        &format!("{}x", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]),
    ] {
        let r = client
            .get(ts.http("/api/v1/streams"))
            .bearer_auth(wrong)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let mut v: Value = r.json().await.unwrap();
        v["error"]["request_id"] = Value::Null;
        answers.push((status, v));
    }
    assert_eq!(answers[0].0, 401);
    assert_eq!(answers[0], answers[1], "no hint about which part was wrong");

    // The API's stream view carries the page URLs and a ready iframe.
    let (_, view) = api(
        &ts.http(""),
        reqwest::Method::GET,
        &format!("/api/v1/streams/{id}"),
        None,
    )
    .await;
    assert!(view["play_url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/play/{id}")));
    assert!(view["embed_url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/embed/{id}")));
    assert!(view["iframe"]
        .as_str()
        .unwrap()
        .starts_with("<iframe src=\""));
    ts.server.shutdown().await;
}
