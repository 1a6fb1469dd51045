//! Load generator for RTMP servers (media-server, nginx-rtmp, any other): publishers replaying
//! an FLV file in real time, RTMP players and LL-HLS clients, with per-client delivered
//! bitrate and lateness, failures, and the server's CPU and RSS from `/proc` (`--pid`).
//! One thread (pin it with `taskset`); it prints its own CPU so a saturated generator shows.
//!
//! ```text
//! cargo run --release --example loadgen -- --pid PID players \
//!     --publish rtmp://127.0.0.1:1935/live/KEY --play rtmp://127.0.0.1:1935/live/ID \
//!     --flv load.flv --step 250 --max 8000
//! cargo run --release --example loadgen -- --pid PID publishers \
//!     --publish 'rtmp://127.0.0.1:1935/live/load{n}' --flv load.flv --step 25
//! cargo run --release --example loadgen -- --pid PID latency --publish … --play … --hls URL
//! cargo run --release --example loadgen -- --pid PID memory --publish '…{n}' --play '…' \
//!     --publishers 200 --players 1000
//! ```
//!
//! Against media-server, `--api http://127.0.0.1:8080 --token T` creates a stream per
//! publisher and fills `{key}` (publish) and `{id}` (play, HLS) in the URL templates.

#[path = "../benches/support/load.rs"]
mod load;
#[path = "../benches/support/proc.rs"]
mod proc_stats;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use load::{Pace, PlayerStats, PublisherStats, Tag, Target};

#[derive(Parser)]
#[command(about = "Load generator for RTMP / LL-HLS servers")]
struct Cli {
    /// The server's process id, for its CPU and RSS.
    #[arg(long, global = true)]
    pid: Option<u32>,
    /// media-server's HTTP base URL: streams are created through its API.
    #[arg(long, global = true)]
    api: Option<String>,
    /// Admin token for `--api`.
    #[arg(long, global = true, default_value = "")]
    token: String,
    /// FLV file replayed by publishers (H.264 + AAC).
    #[arg(long, global = true, default_value = "tests/fixtures/h264_aac.flv")]
    flv: String,
    /// A publisher writes the tags due within this many ms at once (40 = one video frame
    /// at 25 fps); 0 writes every tag on its own.
    #[arg(long, global = true, default_value_t = 40)]
    batch_ms: u64,
    /// A player (in the players and memory runs) sleeps this long after each read and then
    /// takes all that arrived at once; 0 reads as data comes (the latency run always does).
    #[arg(long, global = true, default_value_t = 50)]
    read_interval_ms: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One publisher; add RTMP players step by step until one falls behind.
    Players {
        /// Publish URL (`{key}`/`{id}`/`{n}` filled in).
        #[arg(long)]
        publish: String,
        /// Play URL.
        #[arg(long)]
        play: String,
        /// LL-HLS clients (media playlist or multivariant URL), started with the publisher.
        #[arg(long)]
        hls: Option<String>,
        #[arg(long, default_value_t = 0)]
        hls_clients: usize,
        #[arg(long, default_value_t = 250)]
        step: usize,
        #[arg(long, default_value_t = 6)]
        step_secs: u64,
        #[arg(long, default_value_t = 10_000)]
        max: usize,
        /// A player whose frames arrive later than this after they were sent has fallen
        /// behind (ms).
        #[arg(long, default_value_t = 1000)]
        late_ms: u64,
    },
    /// Add publishers step by step until one cannot send in real time.
    Publishers {
        /// Publish URL template (`{n}`, or `{key}` with `--api`).
        #[arg(long)]
        publish: String,
        #[arg(long, default_value_t = 25)]
        step: usize,
        #[arg(long, default_value_t = 8)]
        step_secs: u64,
        #[arg(long, default_value_t = 5000)]
        max: usize,
        #[arg(long, default_value_t = 1000)]
        late_ms: u64,
    },
    /// One publisher, one RTMP player and one LL-HLS client: latency distributions.
    Latency {
        #[arg(long)]
        publish: String,
        #[arg(long)]
        play: String,
        #[arg(long)]
        hls: Option<String>,
        #[arg(long, default_value_t = 20)]
        secs: u64,
    },
    /// RSS per idle publisher (one GOP sent, then silent) and per player of an idle stream;
    /// with `--active`, per publisher sending in real time (nobody watching) and per player
    /// of a live stream.
    Memory {
        /// Publish URL template (`{n}`, or `{key}` with `--api`).
        #[arg(long)]
        publish: String,
        /// Play URL of the first publisher's stream (`{id}` / `{n}` = 0).
        #[arg(long)]
        play: String,
        #[arg(long, default_value_t = 200)]
        publishers: usize,
        #[arg(long, default_value_t = 1000)]
        players: usize,
        /// Publishers keep sending in real time; players watch a live stream.
        #[arg(long)]
        active: bool,
    },
}

/// A stream to publish: its publish target and the values for URL templates.
struct Stream {
    n: usize,
    key: String,
    id: String,
}

impl Stream {
    fn fill(&self, template: &str) -> String {
        template
            .replace("{n}", &self.n.to_string())
            .replace("{key}", &self.key)
            .replace("{id}", &self.id)
    }
}

struct Ctx {
    cli_pid: Option<u32>,
    api: Option<String>,
    token: String,
    http: reqwest::Client,
    tags: Arc<Vec<Tag>>,
    cpu0: (f64, f64, Instant),
    realtime: Pace,
    read_interval: Duration,
}

impl Ctx {
    /// Creates stream `n` through the API when `--api` is given.
    async fn stream(&self, n: usize) -> Result<Stream, String> {
        let Some(api) = &self.api else {
            return Ok(Stream {
                n,
                key: format!("load{n}"),
                id: format!("load{n}"),
            });
        };
        let name = format!("load{n}-{}", std::process::id());
        let body = serde_json::json!({ "title": name, "app": "live", "name": name });
        let r = self
            .http
            .post(format!("{api}/api/v1/streams"))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let v: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
        let (Some(key), Some(id)) = (v["stream_key"].as_str(), v["id"].as_str()) else {
            return Err(format!("creating a stream: {status} {v}"));
        };
        Ok(Stream {
            n,
            key: key.to_owned(),
            id: id.to_owned(),
        })
    }

    /// `server CPU % / RSS MiB / generator CPU %` since the last call.
    fn usage(&mut self) -> (f64, f64, f64) {
        let (srv0, me0, t0) = self.cpu0;
        let srv = self.cli_pid.map_or(0.0, proc_stats::cpu_seconds);
        let me = proc_stats::cpu_seconds(std::process::id());
        let secs = t0.elapsed().as_secs_f64().max(0.001);
        self.cpu0 = (srv, me, Instant::now());
        let rss = self.cli_pid.map_or(0.0, proc_stats::rss_mib);
        ((srv - srv0) / secs * 100.0, rss, (me - me0) / secs * 100.0)
    }

    fn publisher(&self, url: &str, pace: Pace) -> Result<Arc<PublisherStats>, String> {
        let target = Target::parse(url)?;
        let stats = Arc::new(PublisherStats::default());
        let (tags, s) = (self.tags.clone(), stats.clone());
        tokio::spawn(async move {
            if let Err(e) = load::publish(target, tags, pace, s).await {
                eprintln!("publisher: {e}");
            }
        });
        Ok(stats)
    }
}

fn player(
    url: &str,
    samples: Option<Arc<Mutex<Vec<u64>>>>,
    read_interval: Duration,
) -> Result<Arc<PlayerStats>, String> {
    let target = Target::parse(url)?;
    let stats = Arc::new(PlayerStats::default());
    let s = stats.clone();
    tokio::spawn(async move {
        if let Err(e) = load::play(target, s, samples, read_interval).await {
            eprintln!("player: {e}");
        }
    });
    Ok(stats)
}

/// Waits until every publisher is publishing (or failed), at most 30 s.
async fn wait_publishing(stats: &[Arc<PublisherStats>]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && stats.iter().any(|s| {
            s.publishing.load(Ordering::Relaxed) == 0 && s.failed.load(Ordering::Relaxed) == 0
        })
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn players_ramp(ctx: &mut Ctx, cmd: &Cmd) -> Result<(), String> {
    let Cmd::Players {
        publish,
        play,
        hls,
        hls_clients,
        step,
        step_secs,
        max,
        late_ms,
    } = cmd
    else {
        return Ok(());
    };
    let stream = ctx.stream(0).await?;
    let publisher = ctx.publisher(&stream.fill(publish), ctx.realtime)?;
    wait_publishing(std::slice::from_ref(&publisher)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hls_bytes = Arc::new(AtomicU64::new(0));
    if let Some(h) = hls {
        for _ in 0..*hls_clients {
            tokio::spawn(load::ll_hls(stream.fill(h), hls_bytes.clone(), None));
        }
    }
    let play = stream.fill(play);
    let stream_kbps = bitrate_kbps(&ctx.tags);
    println!(
        "players: one {stream_kbps:.0} kbit/s stream; +{step} players every {step_secs} s; \
         fallen behind = a frame more than {late_ms} ms after it was sent, or none for 2 s"
    );
    println!(
        "{:>7} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9} {:>8} {:>7}",
        "players",
        "min kbps",
        "med kbps",
        "max late",
        "behind",
        "failed",
        "srv CPU%",
        "RSS MiB",
        "gen CPU%"
    );
    let mut all: Vec<Arc<PlayerStats>> = Vec::new();
    let mut last_good: Option<(usize, f64, f64)> = None;
    let mut last_bytes: Vec<u64> = Vec::new();
    ctx.usage();
    while all.len() < *max {
        for _ in 0..*step {
            all.push(player(&play, None, ctx.read_interval)?);
        }
        // Let the new players connect and get past their start-up burst, then measure.
        tokio::time::sleep(load::WARMUP + Duration::from_secs(1)).await;
        for p in &all {
            p.max_late_us.store(0, Ordering::Relaxed);
        }
        last_bytes.resize(all.len(), 0);
        for (i, p) in all.iter().enumerate() {
            last_bytes[i] = p.bytes.load(Ordering::Relaxed);
        }
        ctx.usage();
        let window = Duration::from_secs(*step_secs);
        tokio::time::sleep(window).await;
        let (cpu, rss, gen) = ctx.usage();
        let now = load::now_micros();
        let mut kbps: Vec<u64> = all
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (p.bytes.load(Ordering::Relaxed) - last_bytes[i]) * 8 / window.as_millis() as u64
            })
            .collect();
        let worst = all
            .iter()
            .map(|p| p.max_late_us.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        let behind = all
            .iter()
            .filter(|p| {
                p.max_late_us.load(Ordering::Relaxed) > late_ms * 1000
                    || now.saturating_sub(p.last_frame_us.load(Ordering::Relaxed)) > 2_000_000
            })
            .count();
        let failed: u64 = all.iter().map(|p| p.failed.load(Ordering::Relaxed)).sum();
        let min = kbps.iter().copied().min().unwrap_or(0);
        let med = load::percentile(&mut kbps, 50.0);
        println!(
            "{:>7} {min:>9} {med:>9} {:>7}ms {behind:>8} {failed:>8} {cpu:>9.1} {rss:>8.1} {gen:>7.1}",
            all.len(),
            worst / 1000,
        );
        if behind > 0 || failed > 0 || publisher.failed.load(Ordering::Relaxed) > 0 {
            break;
        }
        last_good = Some((all.len(), cpu, rss));
    }
    print_ramp_result("players", last_good);
    Ok(())
}

/// The `RESULT` line of a ramp: the last step where nobody fell behind, with the server's
/// CPU and RSS there.
fn print_ramp_result(kind: &str, last_good: Option<(usize, f64, f64)>) {
    let (n, cpu, rss) = last_good.unwrap_or((0, 0.0, 0.0));
    println!("RESULT {kind} max_{kind}={n} server_cpu_percent={cpu:.1} server_rss_mib={rss:.1}");
}

async fn publishers_ramp(ctx: &mut Ctx, cmd: &Cmd) -> Result<(), String> {
    let Cmd::Publishers {
        publish,
        step,
        step_secs,
        max,
        late_ms,
    } = cmd
    else {
        return Ok(());
    };
    let stream_kbps = bitrate_kbps(&ctx.tags);
    println!(
        "publishers: +{step} publishers of {stream_kbps:.0} kbit/s every {step_secs} s; \
         fallen behind = a write finishing more than {late_ms} ms after its realtime slot"
    );
    println!(
        "{:>10} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8}",
        "publishers", "max late", "behind", "failed", "srv CPU%", "RSS MiB", "gen CPU%"
    );
    // Streams are created up front: a saturated server answers its API slowly.
    let mut streams = Vec::new();
    for n in 0..*max {
        streams.push(ctx.stream(n).await?);
    }
    let mut all: Vec<Arc<PublisherStats>> = Vec::new();
    let mut last_good: Option<(usize, f64, f64)> = None;
    while all.len() < *max {
        let mut new = Vec::new();
        for s in streams.iter().skip(all.len()).take(*step) {
            new.push(ctx.publisher(&s.fill(publish), ctx.realtime)?);
        }
        wait_publishing(&new).await;
        all.extend(new);
        tokio::time::sleep(Duration::from_secs(1)).await;
        for p in &all {
            p.max_behind_us.store(0, Ordering::Relaxed);
        }
        ctx.usage();
        tokio::time::sleep(Duration::from_secs(*step_secs)).await;
        let (cpu, rss, gen) = ctx.usage();
        let worst = all
            .iter()
            .map(|p| p.max_behind_us.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        let behind = all
            .iter()
            .filter(|p| p.max_behind_us.load(Ordering::Relaxed) > late_ms * 1000)
            .count();
        let failed: u64 = all.iter().map(|p| p.failed.load(Ordering::Relaxed)).sum();
        println!(
            "{:>10} {:>7}ms {behind:>8} {failed:>8} {cpu:>9.1} {rss:>8.1} {gen:>7.1}",
            all.len(),
            worst / 1000
        );
        if behind > 0 || failed > 0 {
            break;
        }
        last_good = Some((all.len(), cpu, rss));
    }
    print_ramp_result("publishers", last_good);
    Ok(())
}

async fn latency(ctx: &mut Ctx, cmd: &Cmd) -> Result<(), String> {
    let Cmd::Latency {
        publish,
        play,
        hls,
        secs,
    } = cmd
    else {
        return Ok(());
    };
    let stream = ctx.stream(0).await?;
    let publisher = ctx.publisher(&stream.fill(publish), ctx.realtime)?;
    wait_publishing(std::slice::from_ref(&publisher)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rtmp = Arc::new(Mutex::new(Vec::new()));
    let _player = player(&stream.fill(play), Some(rtmp.clone()), Duration::ZERO)?;
    let parts = Arc::new(Mutex::new(Vec::new()));
    if let Some(h) = hls {
        let bytes = Arc::new(AtomicU64::new(0));
        tokio::spawn(load::ll_hls(stream.fill(h), bytes, Some(parts.clone())));
    }
    tokio::time::sleep(Duration::from_secs(*secs) + load::WARMUP).await;
    let mut r = rtmp.lock().map_err(|_| "lock")?.clone();
    let n = r.len();
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "RESULT latency rtmp_frames={n} rtmp_p50_ms={:.2} rtmp_p95_ms={:.2} rtmp_max_ms={:.2}",
        ms(load::percentile(&mut r, 50.0)),
        ms(load::percentile(&mut r, 95.0)),
        ms(load::percentile(&mut r, 100.0))
    );
    let p = parts.lock().map_err(|_| "lock")?.clone();
    if hls.is_some() {
        let (mut newest, mut oldest): (Vec<u64>, Vec<u64>) = p.iter().copied().unzip();
        println!(
            "RESULT latency hls_parts={} part_newest_p50_ms={:.1} part_newest_p95_ms={:.1} \
             part_oldest_p50_ms={:.1}",
            newest.len(),
            ms(load::percentile(&mut newest, 50.0)),
            ms(load::percentile(&mut newest, 95.0)),
            ms(load::percentile(&mut oldest, 50.0)),
        );
    }
    Ok(())
}

async fn memory(ctx: &mut Ctx, cmd: &Cmd) -> Result<(), String> {
    let Cmd::Memory {
        publish,
        play,
        publishers,
        players,
        active,
    } = cmd
    else {
        return Ok(());
    };
    let pace = if *active {
        ctx.realtime
    } else {
        Pace::OneGopThenIdle
    };
    let Some(pid) = ctx.cli_pid else {
        return Err("memory needs --pid".into());
    };
    let gop = gop_bytes(&ctx.tags);
    let mut streams = Vec::new();
    for n in 0..*publishers {
        streams.push(ctx.stream(n).await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = proc_stats::rss_mib(pid);
    let mut pubs = Vec::new();
    for s in &streams {
        pubs.push(ctx.publisher(&s.fill(publish), pace)?);
    }
    wait_publishing(&pubs).await;
    // Active publishers fill their buffers (GOP cache, a packaged HLS window if any) first.
    let settle = if *active { 15 } else { 3 };
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let rss1 = proc_stats::rss_mib(pid);
    let failed: u64 = pubs.iter().map(|p| p.failed.load(Ordering::Relaxed)).sum();
    let per_pub = (rss1 - rss0) * 1024.0 / *publishers as f64;
    let play = streams.first().map(|s| s.fill(play)).unwrap_or_default();
    let mut ps = Vec::new();
    for _ in 0..*players {
        ps.push(player(&play, None, ctx.read_interval)?);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss2 = proc_stats::rss_mib(pid);
    let playing = ps
        .iter()
        .filter(|p| p.failed.load(Ordering::Relaxed) == 0)
        .count();
    let per_player = (rss2 - rss1) * 1024.0 / *players as f64;
    println!(
        "RESULT memory active={active} publishers={publishers} failed={failed} gop_kib={:.0} \
         kib_per_idle_publisher={per_pub:.1} players={playing} kib_per_idle_player={per_player:.1} \
         rss_mib={rss0:.1}/{rss1:.1}/{rss2:.1}",
        gop as f64 / 1024.0
    );
    Ok(())
}

/// Average bitrate of the file (kbit/s).
fn bitrate_kbps(tags: &[Tag]) -> f64 {
    let bytes: usize = tags.iter().map(|t| t.data.len()).sum();
    let ms = f64::from(tags.last().map_or(1, |t| t.timestamp).max(1));
    bytes as f64 * 8.0 / ms
}

/// Bytes of the file's first GOP.
fn gop_bytes(tags: &[Tag]) -> usize {
    let mut keyframes = 0;
    tags.iter()
        .take_while(|t| {
            keyframes += usize::from(t.is_keyframe());
            keyframes < 2
        })
        .map(|t| t.data.len())
        .sum()
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let result = runtime.block_on(async {
        let tags = Arc::new(load::read_flv(&cli.flv)?);
        let me = proc_stats::cpu_seconds(std::process::id());
        let mut ctx = Ctx {
            cli_pid: cli.pid,
            api: cli.api.clone(),
            token: cli.token.clone(),
            http: reqwest::Client::new(),
            tags,
            realtime: Pace::Realtime {
                batch_ms: cli.batch_ms,
            },
            read_interval: Duration::from_millis(cli.read_interval_ms),
            cpu0: (
                cli.pid.map_or(0.0, proc_stats::cpu_seconds),
                me,
                Instant::now(),
            ),
        };
        match &cli.cmd {
            c @ Cmd::Players { .. } => players_ramp(&mut ctx, c).await,
            c @ Cmd::Publishers { .. } => publishers_ramp(&mut ctx, c).await,
            c @ Cmd::Latency { .. } => latency(&mut ctx, c).await,
            c @ Cmd::Memory { .. } => memory(&mut ctx, c).await,
        }
    });
    if let Err(e) = result {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}
