//! Soak: one stream with RTMP players and LL-HLS clients for a long time (`SOAK_MINUTES`;
//! 1 minute under a plain `cargo bench`, a 10 s smoke run under `cargo test`), against
//! the release server running as its own process. Every `SAMPLE_SECS` it prints the server's
//! RSS, threads, open fds and live runtime tasks (`media_server_tokio_tasks` from `/metrics`)
//! and what the clients received; at the end it compares the last sample with the first one
//! after warm-up and exits 1 if RSS grew more than 20 % or tasks/fds grew (a leak).
//!
//! `SOAK_MINUTES=30 PLAYERS=10 HLS=10 cargo bench --bench soak`

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/proc.rs"]
mod proc_stats;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client_handshake, free_port, looped, read_flv, RtmpPublisher, FIXTURE};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "bench-admin-token-0123456789";

/// An RTMP player (rml_rtmp's client session) counting the media bytes it receives;
/// reconnects if the server closes it.
async fn rtmp_player(addr: std::net::SocketAddr, id: String, received: Arc<AtomicU64>) {
    loop {
        let Ok(mut socket) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let rest = client_handshake(&mut socket).await;
        let Ok((mut session, _)) = ClientSession::new(ClientSessionConfig::new()) else {
            return;
        };
        let mut results = session.handle_input(&rest).unwrap_or_default();
        if let Ok(r) = session.request_connection("live".into()) {
            results.push(r);
        }
        let mut buf = vec![0u8; 65536];
        loop {
            for r in results.drain(..) {
                match r {
                    ClientSessionResult::OutboundResponse(p) => {
                        let _ = socket.write_all(&p.bytes).await;
                    }
                    ClientSessionResult::RaisedEvent(
                        ClientSessionEvent::ConnectionRequestAccepted,
                    ) => {
                        if let Ok(ClientSessionResult::OutboundResponse(p)) =
                            session.request_playback(id.clone())
                        {
                            let _ = socket.write_all(&p.bytes).await;
                        }
                    }
                    ClientSessionResult::RaisedEvent(
                        ClientSessionEvent::VideoDataReceived { data, .. }
                        | ClientSessionEvent::AudioDataReceived { data, .. },
                    ) => {
                        received.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
            let n = socket.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            results = session.handle_input(&buf[..n]).unwrap_or_default();
        }
    }
}

/// An LL-HLS client: follows the preload hint with blocking requests and fetches each part.
async fn hls_client(base: String, id: String, received: Arc<AtomicU64>) {
    let client = reqwest::Client::new();
    let index = format!("{base}/hls/{id}/index.m3u8");
    loop {
        let Ok(text) = async { client.get(&index).send().await?.text().await }.await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let Some(media) = text.lines().find(|l| l.starts_with("media.m3u8")) else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let media = format!("{base}/hls/{id}/{media}");
        let mut next: Option<(String, String)> = None;
        loop {
            let url = match &next {
                Some((msn, part)) => format!("{media}&_HLS_msn={msn}&_HLS_part={part}"),
                None => media.clone(),
            };
            let Ok(text) = async { client.get(&url).send().await?.text().await }.await else {
                break;
            };
            let Some(hint) = text
                .lines()
                .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\""))
            else {
                break;
            };
            let uri = hint.trim_end_matches('"').to_owned();
            if let Ok(r) = client.get(format!("{base}/hls/{id}/{uri}")).send().await {
                if let Ok(b) = r.bytes().await {
                    received.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
            }
            // part{msn}.{i}.m4s?… → ask for the playlist that lists the part after it.
            let name = uri.split('?').next().unwrap_or("");
            let Some((msn, part)) = name
                .strip_prefix("part")
                .and_then(|n| n.strip_suffix(".m4s"))
                .and_then(|n| n.split_once('.'))
            else {
                break;
            };
            next = Some((msn.to_owned(), part.to_owned()));
        }
    }
}

async fn tasks(client: &reqwest::Client, base: &str) -> f64 {
    let Ok(text) = async {
        client
            .get(format!("{base}/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .await?
            .text()
            .await
    }
    .await
    else {
        return f64::NAN;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("media_server_tokio_tasks "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
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
    let total = Duration::from_secs(if full {
        env("SOAK_MINUTES", 1) * 60
    } else {
        10
    });
    let sample = Duration::from_secs(env("SAMPLE_SECS", if full { 10 } else { 2 }));
    let (players, hls) = (
        env("PLAYERS", if full { 10 } else { 2 }),
        env("HLS", if full { 10 } else { 2 }),
    );
    let dir = std::env::temp_dir().join(format!("ms-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (http_port, rtmp_port) = (free_port(), free_port());
    let config = dir.join("media-server.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n\
             [rtmp]\nlisten = \"127.0.0.1:{rtmp_port}\"\n[auth]\nadmin_token = \"{TOKEN}\"\n\
             [api]\nrate_limit_per_token = 1000000\n",
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
        .json(&serde_json::json!({ "title": "soak", "app": "live", "name": "soak" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let key = created["stream_key"].as_str().unwrap().to_owned();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{rtmp_port}").parse().unwrap();
    let tags = read_flv(FIXTURE);
    let span = f64::from(tags.last().map_or(1, |t| t.timestamp) + 40) / 1000.0;
    let loops = (total.as_secs_f64() / span).ceil() as u32 + 2;
    let mut publisher = RtmpPublisher::connect(addr, "live", &key).await.unwrap();
    let all = looped(&tags, loops);
    let publishing = tokio::spawn(async move { publisher.send_tags(&all, true).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..players {
        clients.push(tokio::spawn(rtmp_player(
            addr,
            id.clone(),
            received.clone(),
        )));
    }
    for _ in 0..hls {
        clients.push(tokio::spawn(hls_client(
            base.clone(),
            id.clone(),
            received.clone(),
        )));
    }
    println!(
        "soak: {players} RTMP players + {hls} LL-HLS clients on one stream for {:?}",
        total
    );
    println!(
        "{:>7} {:>9} {:>7} {:>5} {:>6} {:>12}",
        "secs", "RSS MiB", "threads", "fds", "tasks", "client kbit/s"
    );
    let start = Instant::now();
    let mut samples: Vec<(f64, f64, usize, f64)> = Vec::new();
    let mut last_bytes = received.load(Ordering::Relaxed);
    while start.elapsed() < total {
        tokio::time::sleep(sample).await;
        let bytes = received.load(Ordering::Relaxed);
        let rate = (bytes - last_bytes) as f64 * 8.0 / sample.as_secs_f64() / 1000.0;
        last_bytes = bytes;
        let (rss, t) = (proc_stats::rss_mib(pid), tasks(&client, &base).await);
        let (th, fd) = (threads(pid), fds(pid));
        println!(
            "{:>7.0} {rss:>9.1} {th:>7} {fd:>5} {t:>6} {rate:>12.0}",
            start.elapsed().as_secs_f64()
        );
        samples.push((start.elapsed().as_secs_f64(), rss, fd, t));
    }
    for c in clients {
        c.abort();
    }
    publishing.abort();
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    // After a warm-up of a tenth of the run, compare first and last.
    let warm = samples.len() / 10;
    let (Some(first), Some(last)) = (samples.get(warm), samples.last()) else {
        return;
    };
    let grew = last.1 / first.1.max(1.0);
    println!(
        "soak: RSS {:.1} -> {:.1} MiB ({:+.1} %), fds {} -> {}, tasks {} -> {}",
        first.1,
        last.1,
        (grew - 1.0) * 100.0,
        first.2,
        last.2,
        first.3,
        last.3
    );
    if full && (grew > 1.2 || last.2 > first.2 + 5 || last.3 > first.3 + 5.0) {
        eprintln!("soak: resources grew: a leak");
        std::process::exit(1);
    }
}
