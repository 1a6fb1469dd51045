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
#[path = "support/load.rs"]
mod load;
#[path = "support/proc.rs"]
mod proc_stats;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, looped, read_flv, RtmpPublisher, FIXTURE};

const TOKEN: &str = "bench-admin-token-0123456789";

/// An RTMP player (our client session, see support/load.rs) adding the media bytes it
/// receives to `received`; reconnects if the server closes it.
async fn rtmp_player(addr: std::net::SocketAddr, id: String, received: Arc<AtomicU64>) {
    let target = load::Target {
        addr,
        app: "live".into(),
        name: id,
        tc_url: format!("rtmp://{addr}/live"),
    };
    loop {
        let stats = Arc::new(load::PlayerStats::default());
        let counting = {
            let (stats, received) = (stats.clone(), received.clone());
            tokio::spawn(async move {
                let mut last = 0;
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let now = stats.bytes.load(Ordering::Relaxed);
                    received.fetch_add(now - last, Ordering::Relaxed);
                    last = now;
                }
            })
        };
        let _ = load::play(target.clone(), stats, None, Duration::ZERO).await;
        counting.abort();
        tokio::time::sleep(Duration::from_secs(1)).await;
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
        clients.push(tokio::spawn(load::ll_hls(
            format!("{base}/hls/{id}/index.m3u8"),
            received.clone(),
            None,
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
