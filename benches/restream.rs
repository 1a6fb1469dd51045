//! Restream load harness (not criterion: it measures a running server). Starts the release
//! `media-server` binary as its own process on loopback, publishes the committed FLV fixture
//! (H.264 with B-frames + AAC, ~390 kbit/s) in real time over RTMP, then adds K passthrough
//! destinations pointing at sinks in this process (a handshake plus our own RTMP server
//! session reading and discarding everything, so their cost is not the server's). Reports the
//! server's CPU (from `/proc/{pid}/stat`) and RSS with 0 and with K destinations, the CPU per
//! destination, and the bytes each sink received against the media sent.
//!
//! Run: `cargo bench --bench restream` (numbers: BENCHMARKS.md). Env: `DESTINATIONS` (20),
//! `SECONDS` (10). Under `cargo test` it makes a 2-destination smoke run of 2 s.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/proc.rs"]
mod proc_stats;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, looped, read_flv, server_handshake, RtmpPublisher, FIXTURE};
use media_server::proto::rtmp::server::{ServerSession, SessionEvent};
use proc_stats::{cpu_over, rss_mib};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "bench-admin-token-0123456789";

/// An RTMP sink: accepts publishes and discards the media; counts media bytes received.
async fn sink(received: Arc<AtomicU64>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let Some(rest) = server_handshake(&mut s).await else {
                    return;
                };
                let mut session = ServerSession::new(8 << 20, 4096);
                session.push(&rest);
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    loop {
                        match session.poll_event() {
                            Ok(Some(SessionEvent::Publish { .. })) => session.accept_publish(),
                            Ok(Some(SessionEvent::Video { data, .. }))
                            | Ok(Some(SessionEvent::Audio { data, .. })) => {
                                received.fetch_add(data.len() as u64, Ordering::Relaxed);
                            }
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(_) => return,
                        }
                    }
                    let out = session.take_output();
                    if !out.is_empty() && s.write_all(&out).await.is_err() {
                        return;
                    }
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    session.push(&buf[..n]);
                }
            });
        }
    });
    port
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let destinations = env("DESTINATIONS", if full { 20 } else { 2 }) as usize;
    let secs = env("SECONDS", if full { 10 } else { 2 });
    let dir = std::env::temp_dir().join(format!("ms-bench-restream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (http_port, rtmp_port) = (free_port(), free_port());
    let config = dir.join("media-server.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n\
             [rtmp]\nlisten = \"127.0.0.1:{rtmp_port}\"\n[auth]\nadmin_token = \"{TOKEN}\"\n\
             [api]\nrate_limit_per_token = 1000000\n[restream]\nmax_per_stream = 1000\n\
             [security]\noutbound_allow = [\"127.0.0.0/8\", \"::1/128\"]\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_media-server"))
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
    let created: serde_json::Value = client
        .post(format!("{base}/api/v1/streams"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "title": "restream bench", "app": "live", "name": "bench" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let key = created["stream_key"].as_str().unwrap().to_owned();

    // A publisher replaying the fixture in real time for the whole run.
    let tags = read_flv(FIXTURE);
    let media_bytes: u64 = tags.iter().map(|t| t.body.len() as u64).sum();
    let media_secs = f64::from(tags.last().map_or(1, |t| t.timestamp).max(1)) / 1000.0;
    let loops = ((secs * 2 + 15) as f64 / media_secs).ceil() as u32;
    let addr = format!("127.0.0.1:{rtmp_port}").parse().unwrap();
    let mut publisher = RtmpPublisher::connect(addr, "live", &key).await.unwrap();
    let all = looped(&tags, loops);
    let publishing = tokio::spawn(async move { publisher.send_tags(&all, true).await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let base_cpu = cpu_over(pid, secs).await;
    let base_rss = rss_mib(pid);

    let received = Arc::new(AtomicU64::new(0));
    for i in 0..destinations {
        let port = sink(received.clone()).await;
        let resp = client
            .post(format!("{base}/api/v1/streams/{id}/restreams"))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({
                "platform": "custom", "url": format!("rtmp://127.0.0.1:{port}/live"),
                "key": format!("dest{i}")
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r0 = received.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let with_cpu = cpu_over(pid, secs).await;
    let rate = (received.load(Ordering::Relaxed) - r0) as f64 * 8.0 / t0.elapsed().as_secs_f64();
    let with_rss = rss_mib(pid);
    let list: serde_json::Value = client
        .get(format!("{base}/api/v1/streams/{id}/restreams?limit=100"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let active = list["data"]
        .as_array()
        .map_or(0, |d| d.iter().filter(|r| r["state"] == "active").count());
    let dropped: u64 = list["data"].as_array().map_or(0, |d| {
        d.iter().filter_map(|r| r["frames_dropped"].as_u64()).sum()
    });
    let source_bps = media_bytes as f64 * 8.0 / media_secs;
    println!(
        "restream passthrough: source {:.0} kbit/s; {destinations} destinations ({active} active, \
         {dropped} frames dropped): server {with_cpu:.1} % of one core (no destinations {base_cpu:.1} %) \
         -> {:.3} % per destination; RSS {base_rss:.1} -> {with_rss:.1} MiB ({:.2} MiB per destination); \
         sinks received {:.0} kbit/s each",
        source_bps / 1000.0,
        (with_cpu - base_cpu) / destinations as f64,
        (with_rss - base_rss) / destinations as f64,
        rate / destinations as f64 / 1000.0,
    );
    assert_eq!(active, destinations, "every destination is active");
    publishing.abort();
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
