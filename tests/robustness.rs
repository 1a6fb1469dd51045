//! Connection floods against a running server while a healthy stream is published and
//! watched: 5,000 half-open TCP connections on the RTMP port and slow-drip ("slowloris") HTTP
//! headers on the HTTP port. The caps and timeouts cut the flood; the healthy publisher and
//! its HLS viewer lose nothing.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the server has closed `s` (EOF or reset) within `wait`.
async fn closed_by_server(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408/400 answer may come first; keep reading until the close.
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_cut_by_caps_and_timeouts_and_the_healthy_stream_loses_nothing() {
    let ts = start_with("flood", |c| {
        c.http.max_connections = 400;
        c.http.header_read_timeout_ms = 2000;
        c.rtmp.max_connections = 1000;
        c.rtmp.handshake_timeout_ms = 3000;
        // Keep every segment in the playlist, to check none is missing.
        c.hls.window_segments = 100;
    })
    .await;
    let http = format!("http://{}", ts.server.http_addr);
    let (id, key) = ts.create_stream("healthy").await;
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .unwrap();
    let tags = looped(&read_flv(FIXTURE), 4);
    let media_secs = f64::from(tags.last().unwrap().timestamp) / 1000.0;
    let publishing = tokio::spawn(async move {
        publisher.send_tags(&tags, true).await;
        publisher.finish().await;
    });
    let playlist = format!("{http}/hls/{id}/media.m3u8");
    wait_for_200(&playlist, 15).await;

    // The healthy viewer: one keep-alive connection, a playlist every 250 ms, all along.
    let viewer_url = playlist.clone();
    let viewer = tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let (mut ok, mut failed) = (0u32, Vec::new());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            match client.get(&viewer_url).send().await {
                Ok(r) if r.status().is_success() => {
                    let _ = r.bytes().await;
                    ok += 1;
                }
                Ok(r) => failed.push(r.status().to_string()),
                Err(e) => failed.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        (ok, failed)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Flood 1: 5,000 half-open connections on the RTMP port (connect, then silence).
    let flood_start = Instant::now();
    let mut rtmp_flood = Vec::with_capacity(5000);
    for _ in 0..5000 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_secs(2),
            TcpStream::connect(ts.server.rtmp_addr),
        )
        .await
        {
            rtmp_flood.push(s);
        }
    }
    assert!(rtmp_flood.len() >= 4000, "{} connected", rtmp_flood.len());
    // Flood 2: more slow-drip HTTP connections than the cap, each sending a header line
    // every 500 ms and never finishing the request.
    let mut drips = Vec::new();
    for _ in 0..600 {
        if let Ok(mut s) = TcpStream::connect(ts.server.http_addr).await {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
            drips.push(s);
        }
    }
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for s in &mut drips {
            let _ = s
                .write_all(format!("X-Drip-{round}: 1\r\n").as_bytes())
                .await;
        }
    }
    // By now (3 s of dripping; header deadline 2 s) every drip connection is closed.
    let mut open = 0;
    for s in &mut drips {
        if !closed_by_server(s, Duration::from_millis(200)).await {
            open += 1;
        }
    }
    assert_eq!(
        open, 0,
        "slow-drip connections still open after the header deadline"
    );
    // Every half-open RTMP connection is closed: over the cap at once, the rest after the
    // handshake timeout.
    let deadline = flood_start + Duration::from_secs(3 + 3);
    tokio::time::sleep_until(deadline.into()).await;
    let mut open = 0;
    for s in &mut rtmp_flood {
        if !closed_by_server(s, Duration::from_millis(50)).await {
            open += 1;
        }
    }
    assert_eq!(open, 0, "half-open RTMP connections still open");
    drop(rtmp_flood);
    drop(drips);
    // The server still answers new clients.
    let (status, _, _) = get(&format!("{http}/healthz")).await;
    assert_eq!(status, 200);

    // The healthy stream lost nothing: no frame dropped, the viewer never failed, and the
    // playlist holds all the media.
    let (_, detail) = api(
        &http,
        reqwest::Method::GET,
        &format!("/api/v1/streams/{id}"),
        None,
    )
    .await;
    assert_eq!(detail["live"]["dropped_frames"], 0, "{detail}");
    let (ok, failed) = viewer.await.unwrap();
    assert!(failed.is_empty(), "viewer failures: {failed:?}");
    assert!(ok >= 30, "{ok} playlist fetches");
    publishing.await.unwrap();
    let text = wait_for_endlist(&ts, &id, 30).await;
    let pl = parse_media_playlist(text.as_bytes());
    let total: f32 = pl.segments.iter().map(|s| s.duration).sum();
    assert!(
        (f64::from(total) - media_secs).abs() < 1.0,
        "{total} s in the playlist for {media_secs} s published"
    );
    ts.server.shutdown().await;
}
