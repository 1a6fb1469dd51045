//! WebRTC load harness (not criterion: it measures a running server). Starts the release
//! `media-server` binary as its own process on loopback, then:
//!
//! 1. CPU per WHIP publisher: N publishers (webrtc crate) each sending synthetic H.264 at
//!    2 Mbit/s, 30 fps, IDR every 2 s, plus Opus at 48 kbit/s; the server's CPU time over a
//!    10 s window from `/proc/{pid}/stat`, divided by N.
//! 2. CPU per WHEP viewer: M viewers on one of those streams; the CPU added, divided by M.
//! 3. Glass-to-glass estimate on loopback: every synthetic frame carries its send time
//!    (µs since the harness started, as ASCII digits) right after the NAL header; a WHEP viewer reads it
//!    from the first RTP packet of each frame, and an LL-HLS client reading parts with
//!    blocking playlist reload reads it from each part's samples. Latency = arrival - send.
//!
//! Run: `cargo bench --bench webrtc` (numbers: BENCHMARKS.md). Env: `PUBLISHERS` (4),
//! `VIEWERS` (8), `SECONDS` (10), `KBPS` (2000, the synthetic video's bitrate). Under
//! `cargo test` it makes a 1+1 smoke run of 2 s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use rtc::media::Sample;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::media_stream::Track;

#[path = "../tests/common/webrtc.rs"]
mod peers;
#[path = "support/proc.rs"]
mod proc_stats;
use peers::{h264_codec, local_track, new_peer, opus_codec, post_sdp, Ev, Peer};
use proc_stats::{cpu_over, rss_mib};

const TOKEN: &str = "bench-admin-token-0123456789";
const MAGIC: [u8; 4] = *b"MSTS";
/// SPS/PPS of tests/fixtures/whip_baseline.h264 (x264 constrained baseline, 320x240; the
/// slices that follow are filler, only their size and NAL types matter to the server).
const SPS: &[u8] = &[
    0x67, 0x42, 0xc0, 0x0d, 0xda, 0x05, 0x07, 0xec, 0x04, 0x40, 0x00, 0x00, 0x03, 0x00, 0x40, 0x00,
    0x00, 0x0f, 0x03, 0xc5, 0x0a, 0xa8,
];
const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// One synthetic access unit: parameter sets + IDR every 60 frames, else a P slice; the
/// slice starts with MAGIC and the send time.
fn access_unit(n: u64, bytes: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(bytes + 64);
    let idr = n % 60 == 0;
    if idr {
        for ps in [SPS, PPS] {
            b.put_slice(&[0, 0, 0, 1]);
            b.put_slice(ps);
        }
    }
    b.put_slice(&[0, 0, 0, 1, if idr { 0x65 } else { 0x41 }]);
    b.put_slice(&MAGIC);
    // The send time as 16 ASCII digits: binary would contain 00 00 01, a start code.
    b.put_slice(format!("{:016}", now_us()).as_bytes());
    // Filler without start codes (0x01..=0xff never forms 00 00 01).
    let fill = bytes.saturating_sub(25);
    b.extend((0..fill).map(|i| ((i * 7 + n as usize) % 255 + 1) as u8));
    b.freeze()
}

async fn negotiate(p: &mut Peer, url: &str, bearer: Option<&str>) -> Vec<Arc<dyn TrackRemote>> {
    let offer = p.offer().await;
    let (status, _, answer) = post_sdp(url, bearer, &offer).await;
    assert_eq!(status, 201, "{answer}");
    p.accept(answer).await;
    p.connected(10).await
}

async fn publish(base: &str, name: &str, key: &str, stop: Arc<AtomicU64>, kbps: usize) -> Peer {
    let mut p = new_peer().await;
    let video = local_track(RtpCodecKind::Video, h264_codec());
    let audio = local_track(RtpCodecKind::Audio, opus_codec());
    let vs =
        p.pc.add_track(video.clone() as Arc<dyn TrackLocal>)
            .await
            .unwrap();
    let as_ =
        p.pc.add_track(audio.clone() as Arc<dyn TrackLocal>)
            .await
            .unwrap();
    negotiate(&mut p, &format!("{base}/whip/live/{name}"), Some(key)).await;
    let vpt = vs.get_parameters().await.unwrap().rtp_parameters.codecs[0].payload_type;
    let apt = as_.get_parameters().await.unwrap().rtp_parameters.codecs[0].payload_type;
    // KBPS at 30 fps (2 Mbit/s: 8,333 bytes per frame on average, an IDR of 40 kB a second
    // and 7.8 kB P-frames).
    let s1 = stop.clone();
    tokio::spawn(async move {
        let ssrc = video.ssrcs().await[0];
        let frame = Duration::from_nanos(1_000_000_000 / 30);
        let start = tokio::time::Instant::now();
        for n in 0u64.. {
            if s1.load(Ordering::Relaxed) != 0 {
                return;
            }
            let size = if n % 60 == 0 { 40_000 } else { 7_800 } * kbps / 2000;
            let _ = video
                .sample_writer(ssrc, vpt)
                .write_sample(&Sample {
                    data: access_unit(n, size),
                    duration: frame,
                    ..Sample::new(Instant::now())
                })
                .await;
            tokio::time::sleep_until(start + frame * (n as u32 + 1)).await;
        }
    });
    tokio::spawn(async move {
        let ssrc = audio.ssrcs().await[0];
        let start = tokio::time::Instant::now();
        let packet = Bytes::from(vec![0xfcu8; 120]); // CELT 20 ms TOC + 119 bytes
        for n in 0u32.. {
            if stop.load(Ordering::Relaxed) != 0 {
                return;
            }
            let _ = audio
                .sample_writer(ssrc, apt)
                .write_sample(&Sample {
                    data: packet.clone(),
                    duration: Duration::from_millis(20),
                    ..Sample::new(Instant::now())
                })
                .await;
            tokio::time::sleep_until(start + Duration::from_millis(20) * (n + 1)).await;
        }
    });
    p
}

/// A WHEP viewer; latency samples (µs) of frames whose first packet carries the stamp.
async fn view(
    base: &str,
    id: &str,
    latencies: Option<mpsc::UnboundedSender<u64>>,
    bytes: Arc<AtomicU64>,
) -> Peer {
    let mut p = new_peer().await;
    for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
        p.pc.add_transceiver_from_kind(
            kind,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    }
    let tracks = negotiate(&mut p, &format!("{base}/whep/{id}"), None).await;
    let spawn_reader = move |t: Arc<dyn TrackRemote>,
                             latencies: Option<mpsc::UnboundedSender<u64>>,
                             bytes: Option<Arc<AtomicU64>>| {
        tokio::spawn(async move {
            while let Some(ev) = t.poll().await {
                if let (TrackRemoteEvent::OnRtpPacket(pkt), Some(b)) = (&ev, &bytes) {
                    b.fetch_add(pkt.payload.len() as u64, Ordering::Relaxed);
                }
                if let (TrackRemoteEvent::OnRtpPacket(pkt), Some(l)) = (ev, &latencies) {
                    let p = &pkt.payload;
                    let body = match p.first().map(|b| b & 0x1f) {
                        Some(28) if p.len() > 2 && p[1] & 0x80 != 0 => &p[2..],
                        Some(1..=23) => &p[1..],
                        _ => continue,
                    };
                    if let Some(sent) = stamp(body) {
                        let _ = l.send(now_us().saturating_sub(sent));
                    }
                }
            }
        });
    };
    for t in tracks {
        let is_video = t.kind().await == RtpCodecKind::Video;
        let counter = is_video.then(|| bytes.clone());
        spawn_reader(t, if is_video { latencies.clone() } else { None }, counter);
    }
    // Tracks that arrive after Connected.
    let (_, placeholder) = mpsc::unbounded_channel();
    let mut late = std::mem::replace(&mut p.events, placeholder);
    tokio::spawn(async move {
        while let Some(ev) = late.recv().await {
            let Ev::Track(t) = ev else { continue };
            let is_video = t.kind().await == RtpCodecKind::Video;
            let counter = is_video.then(|| bytes.clone());
            spawn_reader(t, if is_video { latencies.clone() } else { None }, counter);
        }
    });
    p
}

/// The send time written after MAGIC at the start of `b`, if there is one.
fn stamp(b: &[u8]) -> Option<u64> {
    if b.len() < 20 || b[..4] != MAGIC {
        return None;
    }
    std::str::from_utf8(&b[4..20]).ok()?.parse().ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn percentile(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

/// LL-HLS client: follows the preload hint with blocking requests; for every part, the
/// latency of its newest stamped frame when the part arrived.
async fn hls_latency(base: String, id: String, secs: u64) -> Vec<(u64, u64)> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut out = Vec::new();
    let playlist_url = format!("{base}/hls/{id}/media.m3u8");
    let mut text = client
        .get(&playlist_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    while Instant::now() < deadline {
        let Some(hint) = text
            .lines()
            .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\""))
            .map(|h| h.trim_end_matches('"').to_owned())
        else {
            break;
        };
        let Ok(resp) = client.get(format!("{base}/hls/{id}/{hint}")).send().await else {
            break;
        };
        let body = resp.bytes().await.unwrap_or_default();
        let arrived = now_us();
        let stamps: Vec<u64> = body.windows(20).filter_map(stamp).collect();
        if let (Some(newest), Some(oldest)) = (stamps.iter().max(), stamps.iter().min()) {
            out.push((
                arrived.saturating_sub(*newest),
                arrived.saturating_sub(*oldest),
            ));
        }
        // Next hint: ask for the playlist that contains this part.
        let name = hint.split_once('-').map_or(hint.as_str(), |(_, n)| n);
        let (msn, part) = name
            .trim_start_matches("part")
            .trim_end_matches(".m4s")
            .split_once('.')
            .map(|(a, b)| (a.parse::<u64>().unwrap_or(0), b.parse::<u64>().unwrap_or(0)))
            .unwrap_or((0, 0));
        text = client
            .get(format!("{playlist_url}?_HLS_msn={msn}&_HLS_part={part}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; under `cargo test` this is a short smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let publishers = env("PUBLISHERS", if full { 4 } else { 1 });
    let viewers = env("VIEWERS", if full { 8 } else { 1 });
    let secs = env("SECONDS", if full { 10 } else { 2 }) as u64;
    let kbps = env("KBPS", 2000);
    now_us();
    let dir = std::env::temp_dir().join(format!("ms-bench-webrtc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (http_port, rtmp_port) = (free_port(), free_port());
    // Before/after runs: `MS_BENCH_SERVER` points at another build of the server (a build
    // from before the single-port WebRTC takes `bind_ip`: set `MS_BENCH_LEGACY_WEBRTC=1`).
    let server_binary = std::env::var("MS_BENCH_SERVER").ok();
    let webrtc = if std::env::var_os("MS_BENCH_LEGACY_WEBRTC").is_some() {
        "bind_ip = \"127.0.0.1\""
    } else {
        "udp_listen = \"127.0.0.1:0\""
    };
    let config = dir.join("media-server.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n\
             [rtmp]\nlisten = \"127.0.0.1:{rtmp_port}\"\n[auth]\nadmin_token = \"{TOKEN}\"\n\
             [api]\nrate_limit_per_token = 1000000\n[webrtc]\n{webrtc}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let exe = server_binary.unwrap_or_else(|| env!("CARGO_BIN_EXE_media-server").to_owned());
    let mut server = std::process::Command::new(exe)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start media-server");
    let pid = server.id();
    let base = format!("http://127.0.0.1:{http_port}");
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut streams = Vec::new();
    for i in 0..publishers {
        let resp: serde_json::Value = client
            .post(format!("{base}/api/v1/streams"))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({ "title": format!("bench {i}"), "app": "live", "name": format!("bench{i}") }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        streams.push((
            resp["id"].as_str().unwrap().to_owned(),
            resp["stream_key"].as_str().unwrap().to_owned(),
        ));
    }
    let idle = cpu_over(pid, secs.min(3)).await;
    let stop = Arc::new(AtomicU64::new(0));
    let mut peers = Vec::new();
    for (i, (_, key)) in streams.iter().enumerate() {
        peers.push(publish(&base, &format!("bench{i}"), key, stop.clone(), kbps).await);
    }
    tokio::time::sleep(Duration::from_secs(secs.min(3))).await;
    let with_publishers = cpu_over(pid, secs).await;
    let rss_publishers = rss_mib(pid);
    println!(
        "WHIP: {publishers} publishers at {kbps} kbit/s + Opus: server {with_publishers:.1} % of one core \
         (idle {idle:.1} %) -> {:.2} % per publisher; RSS {rss_publishers:.0} MiB",
        (with_publishers - idle) / publishers as f64
    );

    let (tx, mut rx) = mpsc::unbounded_channel();
    let target = streams[0].0.clone();
    let mut viewer_peers = Vec::new();
    let counters: Vec<Arc<AtomicU64>> = (0..viewers).map(|_| Arc::new(AtomicU64::new(0))).collect();
    for (i, c) in counters.iter().enumerate() {
        let latencies = (i == 0).then(|| tx.clone());
        viewer_peers.push(view(&base, &target, latencies, c.clone()).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    while rx.try_recv().is_ok() {}
    let hls = tokio::spawn(hls_latency(base.clone(), target.clone(), secs));
    let before: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let with_viewers = cpu_over(pid, secs).await;
    // Every viewer keeping up: its received video bitrate against the source's.
    let mut rates: Vec<f64> = counters
        .iter()
        .zip(&before)
        .map(|(c, b)| (c.load(Ordering::Relaxed) - b) as f64 * 8.0 / secs as f64 / 1000.0)
        .collect();
    rates.sort_by(f64::total_cmp);
    let keeping_up = rates.iter().filter(|r| **r >= 0.95 * kbps as f64).count();
    let mut whep: Vec<u64> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    let hls = hls.await.unwrap();
    let mut hls_newest: Vec<u64> = hls.iter().map(|h| h.0).collect();
    let mut hls_oldest: Vec<u64> = hls.iter().map(|h| h.1).collect();
    println!(
        "WHEP: {viewers} viewers of one {kbps} kbit/s stream: server {with_viewers:.1} % -> {:.3} % per viewer \
         (~{:.0} viewers per core); RSS {:.0} MiB; received video kbit/s min {:.0}, median {:.0}; \
         {keeping_up}/{viewers} viewers at >= 95 % of the source",
        (with_viewers - with_publishers) / viewers as f64,
        100.0 * viewers as f64 / (with_viewers - with_publishers).max(0.01),
        rss_mib(pid),
        rates.first().copied().unwrap_or(0.0),
        rates.get(rates.len() / 2).copied().unwrap_or(0.0),
    );
    println!(
        "glass-to-glass on loopback (send -> first RTP packet at the WHEP viewer): p50 {:.1} ms, p95 {:.1} ms ({} frames)",
        percentile(&mut whep, 0.5),
        percentile(&mut whep, 0.95),
        whep.len()
    );
    println!(
        "WHIP -> LL-HLS part at a blocking-reload client: newest frame of the part p50 {:.0} ms, \
         p95 {:.0} ms; oldest frame p50 {:.0} ms, p95 {:.0} ms ({} parts)",
        percentile(&mut hls_newest, 0.5),
        percentile(&mut hls_newest, 0.95),
        percentile(&mut hls_oldest, 0.5),
        percentile(&mut hls_oldest, 0.95),
        hls.len()
    );
    assert!(
        !whep.is_empty() && !hls_newest.is_empty(),
        "no frame reached a viewer: the harness or the server is broken"
    );
    stop.store(1, Ordering::Relaxed);
    for p in peers.into_iter().chain(viewer_peers) {
        let _ = p.pc.close().await;
    }
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
