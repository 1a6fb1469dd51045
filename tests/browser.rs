//! A real browser: headless Chromium (Debian's `chromium`, required under CI) loads a page
//! with `<img src="/mjpeg/…">` while a camera streams; two screenshots a second apart are not
//! blank and differ (the picture moves).

mod common;

#[path = "../examples/esp32_cam/frames.rs"]
#[allow(dead_code)]
mod frames;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Browser tests share the machine; the A/V sync measurement has it to itself (a loaded
/// machine delays a browser's audio and video by different amounts).
static BROWSERS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Takes a screenshot of `page` with a fresh profile; returns the decoded RGBA pixels.
fn screenshot(dir: &std::path::Path, page: &std::path::Path, name: &str) -> Vec<u8> {
    let png_path = dir.join(format!("{name}.png"));
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=640,480",
            "--timeout=2000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join(format!("profile-{name}")).display()
        ))
        .arg(format!("--screenshot={}", png_path.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(
        png_path.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    buf
}

fn distinct_colours(pixels: &[u8]) -> usize {
    let mut set = std::collections::HashSet::new();
    for px in pixels.chunks(4) {
        set.insert((px[0] / 8, px[1] / 8, px[2] / 8));
    }
    set.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_the_camera_in_an_img_tag() {
    if !require_program("chromium") {
        return;
    }
    let _turn = BROWSERS.read().await;
    let ts = start_server("browser").await;
    let (id, key) = ts.create_stream("cam").await;
    let mut request = format!("ws://{}/ingest/ws", ts.server.http_addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let camera = tokio::spawn(async move {
        for n in 0..120u64 {
            let jpeg = frames::jpeg(n, 640, 480, 70);
            if ws.send(Message::Binary(jpeg.into())).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = ws.close(None).await;
    });
    wait_for_200(&ts.http(&format!("/mjpeg/{id}/frame.jpg")), 10).await;
    let page = ts.dir.join("page.html");
    std::fs::write(
        &page,
        format!(
            "<html><body style=\"margin:0;background:#000\"><img src=\"{}\" width=\"640\" height=\"480\"></body></html>",
            ts.http(&format!("/mjpeg/{id}"))
        ),
    )
    .unwrap();
    let dir = ts.dir.clone();
    let (a, b) = tokio::task::spawn_blocking(move || {
        let a = screenshot(&dir, &page, "first");
        std::thread::sleep(Duration::from_millis(1000));
        let b = screenshot(&dir, &page, "second");
        (a, b)
    })
    .await
    .unwrap();
    assert!(distinct_colours(&a) > 50, "the first screenshot is blank");
    assert!(distinct_colours(&b) > 50, "the second screenshot is blank");
    assert!(a != b, "the picture changes between captures");
    camera.abort();
    ts.server.shutdown().await;
}

/// A WHEP player page: offers recvonly video + audio, posts to `whep`, counts decoded frames
/// with `requestVideoFrameCallback` and reports them to `report` after `ms` milliseconds.
fn whep_page(whep: &str, report: &str, ms: u32) -> String {
    format!(
        r#"<!doctype html><html><body>
<video id="v" autoplay muted playsinline width="640" height="360"></video>
<script>
(async () => {{
  const v = document.getElementById('v');
  let frames = 0, error = '';
  const count = () => {{ frames++; v.requestVideoFrameCallback(count); }};
  v.requestVideoFrameCallback(count);
  let pc = null;
  try {{
    pc = new RTCPeerConnection();
    pc.addTransceiver('video', {{ direction: 'recvonly' }});
    pc.addTransceiver('audio', {{ direction: 'recvonly' }});
    pc.ontrack = (e) => {{ if (e.track.kind === 'video') v.srcObject = e.streams[0] || new MediaStream([e.track]); }};
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((done) => {{
      if (pc.iceGatheringState === 'complete') return done();
      pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && done();
      setTimeout(done, 2000);
    }});
    const r = await fetch('{whep}', {{ method: 'POST', headers: {{ 'Content-Type': 'application/sdp' }}, body: pc.localDescription.sdp }});
    if (r.status !== 201) throw new Error('WHEP ' + r.status + ' ' + await r.text());
    await pc.setRemoteDescription({{ type: 'answer', sdp: await r.text() }});
  }} catch (e) {{ error = String(e); }}
  setTimeout(async () => {{
    // The transport of the pair in use (udp, or tcp for ICE-TCP) and the video's repair
    // counters.
    let proto = '', video = {{}};
    try {{
      const stats = await pc.getStats();
      stats.forEach((t) => {{
        if (t.type === 'inbound-rtp' && t.kind === 'video') video = t;
        if (t.type !== 'transport' || !t.selectedCandidatePairId) return;
        const pair = stats.get(t.selectedCandidatePairId);
        const local = pair && stats.get(pair.localCandidateId);
        if (local) proto = local.protocol;
      }});
    }} catch (e) {{ error += String(e); }}
    const q = 'frames=' + frames + '&width=' + v.videoWidth + '&proto=' + proto
      + '&nacks=' + (video.nackCount || 0) + '&plis=' + (video.pliCount || 0)
      + '&lost=' + (video.packetsLost || 0) + '&received=' + (video.packetsReceived || 0)
      + '&rtx=' + (video.retransmittedPacketsReceived || 0)
      + '&decoded=' + (video.framesDecoded || 0) + '&freezes=' + (video.freezeCount || 0)
      + '&error=' + encodeURIComponent(error);
    fetch('{report}?' + q, {{ mode: 'no-cors' }});
  }}, {ms});
}})();
</script></body></html>"#
    )
}

/// Loads `page` in headless Chromium and returns the query string the page reports to
/// `listener` (`fetch(report + '?…')`), or panics after 40 s.
async fn run_page(
    ts: &TestServer,
    page: &std::path::Path,
    listener: tokio::net::TcpListener,
    name: &str,
) -> String {
    run_page_in(ts, page, listener, name, None).await
}

/// [`run_page`] with Chromium inside a network namespace.
async fn run_page_in(
    ts: &TestServer,
    page: &std::path::Path,
    listener: tokio::net::TcpListener,
    name: &str,
    netns: Option<&str>,
) -> String {
    let mut command = match netns {
        Some(ns) => {
            let mut c = tokio::process::Command::new("ip");
            c.args(["netns", "exec", ns, "chromium"]);
            c
        }
        None => tokio::process::Command::new("chromium"),
    };
    let mut chromium = command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--autoplay-policy=no-user-gesture-required",
            "--allow-loopback-in-peer-connection",
            "--allow-file-access-from-files",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
        ])
        .arg(format!(
            "--user-data-dir={}",
            ts.dir.join(format!("profile-{name}")).display()
        ))
        .arg(format!("file://{}", page.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run chromium");
    let (mut socket, _) = tokio::time::timeout(Duration::from_secs(40), listener.accept())
        .await
        .expect("the page reports within 40 s")
        .unwrap();
    // The request line may be long (a page's measurements): read up to the header's end.
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16384];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 1 << 20 {
        let n = tokio::io::AsyncReadExt::read(&mut socket, &mut chunk)
            .await
            .unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let request = String::from_utf8_lossy(&buf).into_owned();
    let _ = tokio::io::AsyncWriteExt::write_all(
        &mut socket,
        b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    let _ = chromium.kill().await;
    request
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|p| p.split_once('?'))
        .map(|(_, q)| q.to_owned())
        .unwrap_or_default()
}

fn field(query: &str, name: &str) -> String {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or("")
        .to_owned()
}

/// hls.js from npm (installed by tests/run.sh into target/npm); under CI it must be there.
fn hlsjs() -> Option<std::path::PathBuf> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/npm/node_modules/hls.js/dist/hls.min.js");
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{} is required under CI (bash tests/run.sh installs it)",
            path.display()
        );
    }
    eprintln!(
        "SKIPPED LOCALLY: hls.js not installed at {}",
        path.display()
    );
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hlsjs_in_chromium_plays_a_whip_stream_with_its_opus_as_aac() {
    if !require_program("chromium") {
        return;
    }
    let Some(hls) = hlsjs() else {
        return;
    };
    let _turn = BROWSERS.read().await;
    let ts = start_server("browser-hlsjs").await;
    let (id, key) = ts.create_stream("whiphls").await;
    let publishing = common::webrtc::whip_publish(&ts.http("/whip/live/whiphls"), &key, 4).await;
    wait_for_200(&ts.http(&format!("/hls/{id}/index.m3u8")), 10).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let report = format!("http://{}/report", listener.local_addr().unwrap());
    let page = ts.dir.join("hlsjs.html");
    std::fs::write(
        &page,
        format!(
            r#"<!doctype html><html><body>
<video id="v" autoplay muted playsinline width="640" height="360"></video>
<script src="file://{hls}"></script>
<script>
  const v = document.getElementById('v');
  let frames = 0, error = '';
  const count = () => {{ frames++; v.requestVideoFrameCallback(count); }};
  v.requestVideoFrameCallback(count);
  const hls = new Hls({{ lowLatencyMode: true }});
  hls.on(Hls.Events.ERROR, (_, d) => {{ if (d.fatal) error = d.type + ':' + d.details; }});
  hls.loadSource('{url}');
  hls.attachMedia(v);
  hls.on(Hls.Events.MANIFEST_PARSED, () => v.play().catch((e) => error = String(e)));
  setTimeout(() => {{
    const q = 'frames=' + frames + '&width=' + v.videoWidth
      + '&audio=' + (v.webkitAudioDecodedByteCount || 0)
      + '&codecs=' + encodeURIComponent(hls.levels.map((l) => l.attrs.CODECS).join('|'))
      + '&error=' + encodeURIComponent(error);
    fetch('{report}?' + q, {{ mode: 'no-cors' }});
  }}, 7000);
</script></body></html>"#,
            hls = hls.display(),
            url = ts.http(&format!("/hls/{id}/index.m3u8")),
        ),
    )
    .unwrap();
    let q = run_page(&ts, &page, listener, "hlsjs").await;
    let frames: u64 = field(&q, "frames").parse().unwrap_or(0);
    let audio: u64 = field(&q, "audio").parse().unwrap_or(0);
    // WHIP's Opus is packaged as AAC (`[transcode] hls_aac`): the AAC rendition Safari and
    // AVPlayer play, and hls.js decodes it.
    assert!(
        frames > 30
            && field(&q, "width") == "320"
            && audio > 0
            && field(&q, "codecs").contains("mp4a.40.2"),
        "hls.js: {frames} frames, width {}, {audio} audio bytes decoded, codecs {}, error {}",
        field(&q, "width"),
        field(&q, "codecs"),
        field(&q, "error")
    );
    publishing.sender.abort();
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_an_rtmp_stream_over_whep() {
    if !require_program("chromium") {
        return;
    }
    let _turn = BROWSERS.read().await;
    let ts = start_server("browser-whep").await;
    let (id, key) = ts.create_stream("whep").await;
    // WebRTC decoders in browsers do not take B-frames: an RTMP source made for WebRTC
    // (x264 baseline, AAC), as the stream detail advises.
    let pusher = publish_baseline(&ts, &id, &key).await;

    // The page reports to this listener.
    let reports = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let report_url = format!("http://{}/report", reports.local_addr().unwrap());
    let page = ts.dir.join("whep.html");
    std::fs::write(
        &page,
        // Headless Chromium on a loaded 2-core machine renders a few frames a second: give
        // it 8 s to show more than 10.
        whep_page(&ts.http(&format!("/whep/{id}")), &report_url, 8000),
    )
    .unwrap();
    let query = run_page(&ts, &page, reports, "whep").await;
    let field = |name: &str| field(&query, name);
    let frames: u64 = field("frames").parse().unwrap_or(0);
    let width: u64 = field("width").parse().unwrap_or(0);
    assert!(
        frames > 10 && width == 320,
        "Chromium decoded {frames} frames at width {width}; page error: {}",
        field("error")
    );
    pusher.abort();
    ts.server.shutdown().await;
}

/// ffmpeg 9 publishes `codec_args` over Enhanced RTMP (testsrc2 640x360, a sine) until
/// aborted; Chromium plays the stream over WHEP and decodes frames of it.
async fn chromium_plays_an_enhanced_rtmp_stream_over_whep(tag: &str, codec_args: &[&str]) {
    let Some(ff) = ffmpeg9() else {
        return;
    };
    if !require_program("chromium") {
        return;
    }
    let _turn = BROWSERS.read().await;
    let ts = start_server(tag).await;
    let (id, key) = ts.create_stream(tag).await;
    let mut publisher = std::process::Command::new(ff)
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", "40"])
        .args(codec_args)
        .args(["-c:a", "libopus", "-f", "flv"])
        .arg(ts.rtmp(&format!("/live/{key}")))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ffmpeg 9");
    wait_for_200(&ts.http(&format!("/hls/{id}/index.m3u8")), 15).await;
    let (_, detail) = api(
        &ts.http(""),
        reqwest::Method::GET,
        &format!("/api/v1/streams/{id}"),
        None,
    )
    .await;
    assert_eq!(detail["live"]["webrtc_playback"]["video"], true, "{detail}");
    let reports = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let report_url = format!("http://{}/report", reports.local_addr().unwrap());
    let page = ts.dir.join("whep.html");
    std::fs::write(
        &page,
        whep_page(&ts.http(&format!("/whep/{id}")), &report_url, 8000),
    )
    .unwrap();
    let query = run_page(&ts, &page, reports, tag).await;
    let field = |name: &str| field(&query, name);
    let frames: u64 = field("frames").parse().unwrap_or(0);
    let width: u64 = field("width").parse().unwrap_or(0);
    let _ = publisher.kill();
    let _ = publisher.wait();
    assert!(
        frames > 10 && width == 640,
        "Chromium decoded {frames} frames at width {width}; page error: {}",
        field("error")
    );
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_av1_from_enhanced_rtmp_over_whep() {
    chromium_plays_an_enhanced_rtmp_stream_over_whep(
        "whep-av1",
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
            "lp=1:pred-struct=1",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_vp9_from_enhanced_rtmp_over_whep() {
    chromium_plays_an_enhanced_rtmp_stream_over_whep(
        "whep-vp9",
        &[
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-g",
            "30",
            "-lag-in-frames",
            "0",
            "-pix_fmt",
            "yuv420p",
        ],
    )
    .await;
}

/// A WHEP page that measures what the viewer hears and sees: the inbound audio's energy
/// (`getStats` `totalAudioEnergy`), and for each flash of the picture (the frame turns
/// bright, seen in `requestVideoFrameCallback` at its expected display time) and each beep
/// (an AudioWorklet on the received track crosses a level, mapped to the performance clock
/// with `getOutputTimestamp`), their times; the report lists both after `ms` milliseconds.
fn av_sync_page(whep: &str, report: &str, ms: u32) -> String {
    format!(
        r#"<!doctype html><html><body>
<video id="v" autoplay playsinline width="320" height="240"></video>
<canvas id="c" width="16" height="12"></canvas>
<script>
(async () => {{
  const v = document.getElementById('v');
  const g = document.getElementById('c').getContext('2d', {{ willReadFrequently: true }});
  let frames = 0, error = '', bright = false, audioBeeps = [], flashes = [], pc;
  const onFrame = (now, meta) => {{
    frames++;
    g.drawImage(v, 0, 0, 16, 12);
    const px = g.getImageData(0, 0, 16, 12).data;
    let sum = 0; for (let i = 0; i < px.length; i += 4) sum += px[i];
    const lit = sum / (px.length / 4) > 128;
    if (lit && !bright) flashes.push(meta.expectedDisplayTime);
    bright = lit;
    v.requestVideoFrameCallback(onFrame);
  }};
  v.requestVideoFrameCallback(onFrame);
  try {{
    pc = new RTCPeerConnection();
    pc.addTransceiver('video', {{ direction: 'recvonly' }});
    pc.addTransceiver('audio', {{ direction: 'recvonly' }});
    const ctx = new AudioContext();
    const worklet = `registerProcessor('onset', class extends AudioWorkletProcessor {{
      constructor() {{ super(); this.loud = false; this.quiet = 0; }}
      process(inputs) {{
        const ch = inputs[0] && inputs[0][0];
        if (!ch) return true;
        let peak = 0; for (let i = 0; i < ch.length; i++) peak = Math.max(peak, Math.abs(ch[i]));
        if (peak > 0.1 && !this.loud) {{
          let k = 0; while (k < ch.length && Math.abs(ch[k]) <= 0.1) k++;
          this.port.postMessage(currentTime + k / sampleRate);
          this.loud = true; this.quiet = 0;
        }} else if (peak < 0.02) {{ if (++this.quiet > 20) this.loud = false; }}
        return true;
      }}
    }});`;
    await ctx.audioWorklet.addModule(URL.createObjectURL(new Blob([worklet], {{ type: 'application/javascript' }})));
    const node = new AudioWorkletNode(ctx, 'onset');
    // A beep's time is when the browser's WebRTC audio hands it to the page: the worklet's
    // block time mapped to the performance clock as it is processed (WebAudio's own output
    // latency, a property of this measuring graph, is left out).
    node.port.onmessage = (e) => {{
      audioBeeps.push(performance.now() - (ctx.currentTime - e.data) * 1000);
    }};
    pc.ontrack = (e) => {{
      const stream = e.streams[0] || new MediaStream([e.track]);
      if (e.track.kind === 'video') v.srcObject = stream;
      if (e.track.kind === 'audio') {{
        // Chromium feeds a remote track to WebAudio only while a media element plays it.
        const a = new Audio(); a.srcObject = stream; a.muted = true; a.play().catch(() => {{}});
        ctx.createMediaStreamSource(new MediaStream([e.track])).connect(node);
        ctx.resume();
      }}
    }};
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((done) => {{
      if (pc.iceGatheringState === 'complete') return done();
      pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && done();
      setTimeout(done, 2000);
    }});
    const r = await fetch('{whep}', {{ method: 'POST', headers: {{ 'Content-Type': 'application/sdp' }}, body: pc.localDescription.sdp }});
    if (r.status !== 201) throw new Error('WHEP ' + r.status + ' ' + await r.text());
    await pc.setRemoteDescription({{ type: 'answer', sdp: await r.text() }});
  }} catch (e) {{ error = String(e); }}
  setTimeout(async () => {{
    let energy = 0, codec = '';
    try {{
      const stats = await pc.getStats();
      stats.forEach((s) => {{
        if (s.type === 'inbound-rtp' && s.kind === 'audio') {{
          energy = s.totalAudioEnergy || 0;
          const c = stats.get(s.codecId); codec = c ? c.mimeType : '';
        }}
      }});
    }} catch (e) {{ error += String(e); }}
    const q = 'frames=' + frames + '&width=' + v.videoWidth + '&energy=' + energy
      + '&codec=' + encodeURIComponent(codec)
      + '&flashes=' + flashes.map((t) => t.toFixed(1)).join(',')
      + '&beeps=' + audioBeeps.map((t) => t.toFixed(1)).join(',')
      + '&error=' + encodeURIComponent(error);
    fetch('{report}?' + q, {{ mode: 'no-cors' }});
  }}, {ms});
}})();
</script></body></html>"#
    )
}

/// Pairs every flash with the nearest beep (within half a second) and returns the offsets,
/// audio minus video, in milliseconds.
fn av_offsets(flashes: &[f64], beeps: &[f64]) -> Vec<f64> {
    flashes
        .iter()
        .filter_map(|f| {
            beeps
                .iter()
                .map(|b| b - f)
                .min_by(|a, b| a.abs().total_cmp(&b.abs()))
                .filter(|d| d.abs() < 500.0)
        })
        .collect()
}

fn times(s: &str) -> Vec<f64> {
    s.split(',').filter_map(|t| t.parse().ok()).collect()
}

/// What a browser viewer of one stream perceived.
struct Perceived {
    /// Median of audio-minus-video offsets (ms) once the player settled.
    offset_ms: f64,
    /// `totalAudioEnergy` of the inbound audio.
    energy: f64,
    /// The audio codec Chromium negotiated.
    codec: String,
}

/// Publishes a beep-and-flash source over RTMP with ffmpeg 9 (every second the picture
/// turns white for 100 ms while a 1 kHz tone sounds; stereo at 44.1 kHz) with `audio_codec`,
/// plays it in Chromium over WHEP and measures what the viewer perceived.
async fn perceived_over_whep(
    ts: &TestServer,
    ff: &std::path::Path,
    name: &str,
    audio_codec: &str,
) -> Perceived {
    let (id, key) = ts.create_stream(name).await;
    let mut publisher = std::process::Command::new(ff)
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "color=c=black:s=320x240:r=30,\
             drawbox=x=0:y=0:w=iw:h=ih:color=white:t=fill:enable='lt(mod(t,1),0.1)'",
        ])
        .args([
            "-f",
            "lavfi",
            "-i",
            "aevalsrc='if(lt(mod(t,1),0.1),0.6*sin(2*PI*1000*t),0)':s=44100:c=stereo",
        ])
        .args([
            "-t",
            "40",
            "-c:v",
            "libx264",
            "-profile:v",
            "baseline",
            "-bf",
            "0",
        ])
        .args(["-g", "30", "-tune", "zerolatency", "-pix_fmt", "yuv420p"])
        .args(["-c:a", audio_codec, "-b:a", "128k", "-f", "flv"])
        .arg(ts.rtmp(&format!("/live/{key}")))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ffmpeg 9");
    wait_for_200(&ts.http(&format!("/hls/{id}/index.m3u8")), 15).await;
    let (_, detail) = api(
        &ts.http(""),
        reqwest::Method::GET,
        &format!("/api/v1/streams/{id}"),
        None,
    )
    .await;
    let playback = &detail["live"]["webrtc_playback"];
    assert_eq!(playback["audio"], true, "{detail}");
    assert_eq!(
        playback["audio_transcoded"],
        audio_codec == "aac",
        "{detail}"
    );
    let reports = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let report_url = format!("http://{}/report", reports.local_addr().unwrap());
    let page = ts.dir.join(format!("{name}.html"));
    std::fs::write(
        &page,
        av_sync_page(&ts.http(&format!("/whep/{id}")), &report_url, 13_000),
    )
    .unwrap();
    let query = run_page(ts, &page, reports, name).await;
    let field = |name: &str| field(&query, name);
    let _ = publisher.kill();
    let _ = publisher.wait();
    let frames: u64 = field("frames").parse().unwrap_or(0);
    assert!(
        frames > 10,
        "{name}: Chromium decoded {frames} frames; error: {}",
        field("error")
    );
    let flashes = times(&field("flashes"));
    let beeps = times(&field("beeps"));
    // A player that joins catches up over its first seconds (NetEq shortens the GOP cache's
    // burst of audio): pairs from 6 s on are the settled state.
    let settled: Vec<f64> = flashes.iter().copied().filter(|f| *f > 6000.0).collect();
    let mut offsets = av_offsets(&settled, &beeps);
    assert!(
        offsets.len() >= 3,
        "{name}: flashes {flashes:?} and beeps {beeps:?} pair up at least 3 times after 6 s"
    );
    offsets.sort_by(f64::total_cmp);
    let offset_ms = offsets[offsets.len() / 2];
    eprintln!(
        "{name}: A/V offsets (audio - video, ms) once settled: {offsets:?}; median {offset_ms:.1}"
    );
    Perceived {
        offset_ms,
        energy: field("energy").parse().unwrap_or(0.0),
        codec: field("codec").replace("%2F", "/"),
    }
}

/// The path most people take: an RTMP publisher with AAC and a viewer in a browser over
/// WHEP. Chromium hears the audio (Opus transcoded from the AAC, resampled from 44.1 kHz), and
/// a beep arrives with its flash: the offset of the same source published with Opus (played
/// without transcoding) measures what this browser and this measuring page add themselves,
/// and transcoding moves the audio by at most 80 ms from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_hears_rtmp_aac_over_whep_in_sync_with_the_picture() {
    let Some(ff) = ffmpeg9() else {
        return;
    };
    if !require_program("chromium") {
        return;
    }
    let _alone = BROWSERS.write().await;
    let ts = start_server("browser-av").await;
    let native = perceived_over_whep(&ts, &ff, "avopus", "libopus").await;
    let transcoded = perceived_over_whep(&ts, &ff, "avaac", "aac").await;
    for (what, p) in [("native Opus", &native), ("transcoded AAC", &transcoded)] {
        assert!(
            p.energy > 0.01 && p.codec.to_lowercase().contains("opus"),
            "{what}: audio energy {}, codec {}",
            p.energy,
            p.codec
        );
    }
    let added = transcoded.offset_ms - native.offset_ms;
    eprintln!(
        "A/V offset: native Opus {:.1} ms, transcoded AAC {:.1} ms: transcoding adds {added:.1} ms",
        native.offset_ms, transcoded.offset_ms
    );
    assert!(
        added.abs() <= 80.0,
        "transcoded audio is {added:.1} ms off where the same browser puts native Opus \
         (native {:.1} ms, transcoded {:.1} ms)",
        native.offset_ms,
        transcoded.offset_ms
    );
    ts.server.shutdown().await;
}

/// A network namespace with a veth link to this one (`{root_ip}/30` here, `{ns_ip}/30`
/// there), deleted with its link when dropped.
struct Netns {
    name: String,
    root_ip: std::net::Ipv4Addr,
}

impl Netns {
    fn create(tag: &str) -> Netns {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // A random /30 in 10.213.0.0/16 and names from it: a namespace a killed run left
        // behind does not collide (and is removed if it does).
        let r: u16 = rand::random::<u16>() & 0x3fff;
        let (a, b) = ((r >> 6) as u8, ((r & 0x3f) as u8) * 4);
        let name = format!("ms{tag}{r}x{n}");
        let (root, inside) = (format!("vr{r}x{n}"), format!("vn{r}x{n}"));
        let root_ip = std::net::Ipv4Addr::new(10, 213, a, b + 1);
        let ns_ip = std::net::Ipv4Addr::new(10, 213, a, b + 2);
        let sh = |cmd: &str| {
            let out = std::process::Command::new("sh")
                .args(["-c", cmd])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = std::process::Command::new("sh")
            .args(["-c", &format!("ip netns del {name}; ip link del {root}")])
            .stderr(std::process::Stdio::null())
            .status();
        sh(&format!("ip netns add {name}"));
        let ns = Netns {
            name: name.clone(),
            root_ip,
        };
        sh(&format!(
            "ip link add {root} type veth peer name {inside} netns {name}"
        ));
        sh(&format!(
            "ip addr add {root_ip}/30 dev {root} && ip link set {root} up"
        ));
        sh(&format!(
            "ip netns exec {name} sh -c 'ip link set lo up && ip addr add {ns_ip}/30 dev {inside} && ip link set {inside} up'"
        ));
        ns
    }

    fn exec(&self, cmd: &str) {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A server whose HTTP and WebRTC ports are on `ip` (the root side of a [`Netns`] link, so a
/// browser inside the namespace reaches it), with a baseline H.264/AAC stream published
/// over RTMP in a loop until the returned task is aborted.
async fn baseline_stream_on(
    ip: std::net::Ipv4Addr,
    tag: &str,
    edit: impl FnOnce(&mut media_server::Config),
) -> (TestServer, String, tokio::task::JoinHandle<()>) {
    let ts = start_with(tag, |c| {
        c.http.listen = std::net::SocketAddr::from((ip, 0));
        c.webrtc.udp_listen = std::net::SocketAddr::from((ip, 0));
        edit(c);
    })
    .await;
    let (id, key) = ts.create_stream("s").await;
    let pusher = publish_baseline(&ts, &id, &key).await;
    (ts, id, pusher)
}

/// Publishes the baseline H.264/AAC fixture to stream `id` over RTMP in a loop until the
/// returned task is aborted; returns once the stream's HLS playlist answers.
async fn publish_baseline(ts: &TestServer, id: &str, key: &str) -> tokio::task::JoinHandle<()> {
    let tags = read_flv(BASELINE_FIXTURE);
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", key)
        .await
        .expect("publish accepted");
    let pusher = tokio::spawn(async move {
        loop {
            publisher.send_tags(&tags, true).await;
        }
    });
    wait_for_200(&ts.http(&format!("/hls/{id}/index.m3u8")), 10).await;
    pusher
}

/// A viewer whose network drops every UDP packet (iptables inside a namespace the test
/// makes) still plays: Chromium reaches the server's ICE-TCP port (RFC 6544) and the media
/// flows over that TCP connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_behind_a_udp_blocker_plays_over_ice_tcp() {
    if !require_program("chromium") || !require_program("iptables") {
        return;
    }
    let _turn = BROWSERS.read().await;
    let ns = Netns::create("tcp");
    ns.exec("iptables -A OUTPUT -p udp -j DROP && iptables -A INPUT -p udp -j DROP");
    let ip = ns.root_ip;
    let (ts, id, pusher) = baseline_stream_on(ip, "browser-ice-tcp", |c| {
        c.webrtc.tcp_listen = format!("{ip}:0");
    })
    .await;
    let reports = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let report_url = format!("http://{}/report", reports.local_addr().unwrap());
    let page = ts.dir.join("whep-tcp.html");
    std::fs::write(
        &page,
        whep_page(&ts.http(&format!("/whep/{id}")), &report_url, 10_000),
    )
    .unwrap();
    let query = run_page_in(&ts, &page, reports, "tcp", Some(&ns.name)).await;
    let field = |name: &str| field(&query, name);
    let frames: u64 = field("frames").parse().unwrap_or(0);
    assert!(
        frames > 10 && field("width") == "320",
        "Chromium decoded {frames} frames over {:?}; page error: {}",
        field("proto"),
        field("error")
    );
    assert_eq!(field("proto"), "tcp", "the media did not flow over ICE-TCP");
    // Chromium is gone: its TCP connection is closed at once; the session (ended here as a
    // DELETE would) leaves no route behind.
    let endpoint = ts.server.webrtc.endpoint().clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while endpoint.tcp_connections() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "TCP connection left open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in ts.server.webrtc.list() {
        s.close();
    }
    while ts.server.webrtc.count() > 0 || endpoint.routed_addresses() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "session or routes left behind"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pusher.abort();
    ts.server.shutdown().await;
}

/// Loss on one viewer's path: 5 % of the UDP packets reaching a Chromium viewer are
/// dropped (iptables inside its own namespace). It asks again (NACK) and the server's
/// engine resends from its send buffer over RTX; a viewer on a clean path beside it asks for
/// nothing and decodes as much as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_viewer_recovers_by_nack_and_rtx_and_costs_the_others_nothing() {
    if !require_program("chromium") || !require_program("iptables") {
        return;
    }
    let _alone = BROWSERS.write().await;
    let ns = Netns::create("loss");
    ns.exec("iptables -A INPUT -p udp -m statistic --mode random --probability 0.05 -j DROP");
    let ip = ns.root_ip;
    let (ts, id, pusher) = baseline_stream_on(ip, "browser-loss", |_| {}).await;
    let mut pages = Vec::new();
    for name in ["lossy", "clean"] {
        let reports = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let report_url = format!("http://{}/report", reports.local_addr().unwrap());
        let page = ts.dir.join(format!("whep-{name}.html"));
        std::fs::write(
            &page,
            whep_page(&ts.http(&format!("/whep/{id}")), &report_url, 12_000),
        )
        .unwrap();
        pages.push((page, reports));
    }
    let (clean_page, clean_reports) = pages.pop().unwrap();
    let (lossy_page, lossy_reports) = pages.pop().unwrap();
    let (lossy, clean) = tokio::join!(
        run_page_in(&ts, &lossy_page, lossy_reports, "lossy", Some(&ns.name)),
        run_page_in(&ts, &clean_page, clean_reports, "clean", None),
    );
    let num = |q: &str, name: &str| field(q, name).parse::<u64>().unwrap_or(0);
    eprintln!("lossy viewer: {lossy}");
    eprintln!("clean viewer: {clean}");
    // The loss happened, and was repaired: NACKs answered by retransmissions, few packets
    // left lost, the picture kept decoding.
    assert!(
        num(&lossy, "nacks") > 0,
        "the lossy viewer never NACKed: {lossy}"
    );
    assert!(
        num(&lossy, "rtx") > 0,
        "no retransmission reached the lossy viewer: {lossy}"
    );
    // `packetsLost` counts what the network dropped; the retransmissions that came back
    // over RTX cover (nearly) all of it.
    let (lost, rtx) = (num(&lossy, "lost"), num(&lossy, "rtx"));
    assert!(
        lost > 0,
        "nothing was lost: is the iptables rule in place? {lossy}"
    );
    assert!(
        rtx * 10 >= lost * 9,
        "{rtx} retransmissions for {lost} lost packets: {lossy}"
    );
    assert!(
        num(&lossy, "decoded") * 10 >= num(&clean, "decoded") * 6,
        "the lossy viewer decoded far less than the clean one: {lossy} / {clean}"
    );
    // The viewer beside it: nothing to repair, a picture as good.
    // (Two browsers on a loaded 2-core machine: a stray late packet is not a change.)
    assert!(num(&clean, "nacks") <= 2, "{clean}");
    assert!(num(&clean, "lost") <= 2, "{clean}");
    assert!(num(&clean, "decoded") > 10, "{clean}");
    pusher.abort();
    ts.server.shutdown().await;
}
