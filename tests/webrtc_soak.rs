//! Sessions don't leak: 200 WHIP publish/DELETE cycles (each connected: ICE + DTLS up) and
//! 50 WHEP cycles, then the runtime's task count is back at its baseline, every session is
//! gone, and resident memory grew by less than the documented bound.

mod common;

use std::time::Duration;

use common::webrtc::*;
use common::*;

/// Allowed RSS growth over the soak (allocator caches, the interned SDP/crypto state of the
/// `webrtc` crate's first uses); a per-session leak of even 100 KB would exceed it.
const RSS_BOUND_KB: u64 = 24 * 1024;

/// One-off tasks that appear somewhere during the first few hundred sessions and stay (seen:
/// +1, constant from then on; the `webrtc` crate and the HTTP client start helpers lazily).
/// A per-session leak over 200 cycles would exceed this by far.
const TASK_SLACK: usize = 2;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn settle(ts: &TestServer, baseline: usize) -> usize {
    let metrics = tokio::runtime::Handle::current().metrics();
    for _ in 0..100 {
        if ts.server.webrtc.count() == 0 && metrics.num_alive_tasks() <= baseline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    metrics.num_alive_tasks()
}

async fn whip_cycle(ts: &TestServer, key: &str) {
    let (mut peer, offer) = publisher_offer().await;
    let (status, headers, answer) = post_sdp(&ts.http("/whip/live/soak"), Some(key), &offer).await;
    assert_eq!(status, 201, "{answer}");
    peer.accept(answer).await;
    peer.connected(10).await;
    let location = headers["location"].to_str().unwrap().to_owned();
    let resp = reqwest::Client::new()
        .delete(ts.http(&location))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    peer.pc.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_play_cycles_release_tasks_and_memory() {
    let ts = start_server("soak").await;
    let (id, key) = ts.create_stream("soak").await;
    // Warm up (first-use allocations and the lazily started helper tasks of the HTTP client
    // and the webrtc crate), then take the baseline.
    for _ in 0..20 {
        whip_cycle(&ts, &key).await;
    }
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline_tasks = settle(&ts, 0).await;
    let baseline_rss = rss_kb();
    let baseline_fds = open_fds();
    let started = std::time::Instant::now();
    for _ in 0..200 {
        whip_cycle(&ts, &key).await;
    }
    let whip_secs = started.elapsed().as_secs_f64();
    let whip_tasks = settle(&ts, baseline_tasks).await;

    assert!(
        whip_tasks <= baseline_tasks + TASK_SLACK,
        "WHIP cycles leaked tasks: {baseline_tasks} -> {whip_tasks}"
    );
    let whip_fds = open_fds();
    assert!(
        whip_fds <= baseline_fds + 2,
        "WHIP cycles leaked sockets/files: {baseline_fds} -> {whip_fds}"
    );

    // WHEP cycles against a live RTMP stream.
    let tags = read_flv(FIXTURE);
    let (play_id, play_key) = ts.create_stream("soakplay").await;
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &play_key)
        .await
        .unwrap();
    let pusher = tokio::spawn(async move {
        loop {
            publisher.send_tags(&tags, true).await;
        }
    });
    wait_for_200(&ts.http(&format!("/hls/{play_id}/index.m3u8")), 10).await;
    // Baseline with the RTMP stream (its connection and segmenter tasks) running.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let live_baseline = metrics.num_alive_tasks();
    for _ in 0..50 {
        let (mut peer, location) = whep_play(&ts.http(&format!("/whep/{play_id}")), None).await;
        peer.connected(10).await;
        let resp = reqwest::Client::new()
            .delete(ts.http(&location))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        peer.pc.close().await.unwrap();
    }
    let tasks = settle(&ts, live_baseline).await;
    pusher.abort();
    let rss = rss_kb();
    eprintln!(
        "soak: 200 WHIP cycles in {whip_secs:.1} s, tasks {baseline_tasks} -> {whip_tasks}; \
         50 WHEP cycles, tasks {live_baseline} -> {tasks}; fds {baseline_fds} -> {whip_fds}; \
         RSS {baseline_rss} kB -> {rss} kB"
    );
    assert_eq!(ts.server.webrtc.count(), 0, "sessions left behind");
    assert!(
        tasks <= live_baseline + TASK_SLACK,
        "WHEP cycles leaked tasks: {live_baseline} -> {tasks}"
    );
    assert!(
        rss.saturating_sub(baseline_rss) < RSS_BOUND_KB,
        "RSS grew {} kB (bound {RSS_BOUND_KB} kB)",
        rss.saturating_sub(baseline_rss)
    );
    assert!(ts.server.hub.get(&id).is_none());
    ts.server.shutdown().await;
}
