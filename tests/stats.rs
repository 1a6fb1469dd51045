//! Live stats end to end: HLS viewers counted as sessions (50 clients are 50, an LL-HLS
//! client fetching parts is one, all expire) or, behind a cache (`[hls] cdn`), from player
//! beacons, health scores that tell a real-time ffmpeg
//! publisher from one at half speed (and say why), the `health.degraded` webhook, and
//! `/metrics` parsed by an independent Prometheus text parser agreeing with the API.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

fn base(ts: &TestServer) -> String {
    format!("http://{}", ts.server.http_addr)
}

/// Publishes the fixture in real time, looped, until the returned task is aborted.
async fn publish_fixture(ts: &TestServer, key: &str, loops: u32) -> tokio::task::JoinHandle<()> {
    let mut p = RtmpPublisher::connect(ts.server.rtmp_addr, "live", key)
        .await
        .unwrap();
    let tags = looped(&read_flv(FIXTURE), loops);
    tokio::spawn(async move { p.send_tags(&tags, true).await })
}

async fn stream(http: &str, id: &str) -> Value {
    let (status, v) = api(http, Method::GET, &format!("/api/v1/streams/{id}"), None).await;
    assert_eq!(status, 200, "{v}");
    v
}

/// An HLS player: the multivariant playlist, then its media playlist every 500 ms.
async fn hls_client(http: String, id: String, stop: tokio::sync::watch::Receiver<bool>) {
    let client = reqwest::Client::new();
    let index = client
        .get(format!("{http}/hls/{id}/index.m3u8"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let media = index
        .lines()
        .find(|l| l.ends_with("media.m3u8"))
        .expect("variant URI")
        .to_owned();
    // The player's session directory.
    assert!(media.starts_with("s/"), "{media}");
    while !*stop.borrow() {
        let r = client
            .get(format!("{http}/hls/{id}/{media}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let _ = r.bytes().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_cache_hls_viewers_are_counted_from_beacons_and_marked_as_estimates() {
    let ts = start_with("stats-beacon", |c| c.hls.cdn = true).await;
    let http = base(&ts);
    let (id, key) = ts.create_stream("beacons").await;
    let publishing = publish_fixture(&ts, &key, 6).await;
    let (index, _) = first_200(&ts.http(&format!("/hls/{id}/index.m3u8")), 15).await;
    // Nothing per viewer in the URL: the run's media playlist.
    let media = index
        .lines()
        .find(|l| !l.starts_with('#') && !l.is_empty())
        .unwrap()
        .to_owned();
    assert!(
        media.ends_with("-media.m3u8") && !media.contains('/'),
        "{media}"
    );
    for _ in 0..5 {
        let (status, _, _) = get(&ts.http(&format!("/hls/{id}/{media}"))).await;
        assert_eq!(status, 200);
    }
    // Requests a cache could have answered count no one.
    let v = stream(&http, &id).await;
    assert_eq!(v["viewer_count"], 0, "{v}");
    assert_eq!(v["hls_viewers_counted_by"], "beacons", "{v}");
    assert_eq!(v["viewer_count_is_estimate"], true, "{v}");
    // The player page learns where to report from its info call.
    let info: Value = reqwest::get(ts.http(&format!("/play/{id}/info")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let beacon = info["playback"]["hls_beacon_url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(beacon.starts_with(&format!("/hls/{id}/s/")), "{info}");
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let r = client.post(ts.http(&beacon)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 204);
        assert_eq!(r.headers()["cache-control"], "no-store");
    }
    let other = client
        .post(ts.http(&format!("/hls/{id}/s/0123456789abcdef/beacon")))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 204);
    let v = wait_viewers(&http, &id, 2, 5).await;
    assert_eq!(v["viewer_count_by_protocol"]["hls"], 2, "{v}");
    // A beacon that is not one of ours, or for a stream that is not live, is refused.
    let bad = client
        .post(ts.http(&format!("/hls/{id}/s/not-a-session/beacon")))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let gone = client
        .post(ts.http("/hls/str_nope/s/0123456789abcdef/beacon"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status().as_u16(), 404);
    publishing.abort();
    ts.server.shutdown().await;
}

async fn wait_viewers(http: &str, id: &str, want: u64, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = stream(http, id).await;
        if v["viewer_count"] == want {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "viewer_count never became {want}: {}",
            v["viewer_count"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_viewers_are_sessions_counted_once_and_expired() {
    let ts = start_with("stats-hls", |c| c.hls.session_timeout_ms = 3000).await;
    let http = base(&ts);
    let (id, key) = ts.create_stream("viewers").await;
    let publishing = publish_fixture(&ts, &key, 6).await;
    wait_for_200(&ts.http(&format!("/hls/{id}/media.m3u8")), 15).await;
    // The probe above was one session; let it expire.
    wait_viewers(&http, &id, 0, 10).await;

    // One LL-HLS client: blocking reloads and every part, ~5 requests a second for 3 s.
    let client = reqwest::Client::new();
    let first = client
        .get(ts.http(&format!("/hls/{id}/media.m3u8")))
        .send()
        .await
        .unwrap();
    // A bare media playlist request was redirected into a session directory.
    let url = first.url().to_string();
    assert!(url.contains("/s/"), "{url}");
    let session = url
        .split("/s/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let dir = url.trim_end_matches("media.m3u8").to_owned();
    let mut requests = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let text = client.get(&url).send().await.unwrap().text().await.unwrap();
        let pl = parse_media_playlist(text.as_bytes());
        let next = pl.media_sequence + pl.segments.len() as u64;
        for part in text.lines().filter(|l| l.starts_with("#EXT-X-PART:")) {
            let uri = part
                .split("URI=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            // Relative: it resolves inside the session directory.
            assert!(!uri.contains('/'), "{uri}");
            let r = client.get(format!("{dir}{uri}")).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            requests += 1;
        }
        let blocking = format!("{url}?_HLS_msn={next}&_HLS_part=0");
        let _ = client.get(&blocking).send().await.unwrap().bytes().await;
        requests += 2;
    }
    assert!(requests > 20, "{requests} requests");
    let v = wait_viewers(&http, &id, 1, 2).await;
    assert_eq!(v["viewer_count_by_protocol"]["hls"], 1, "{v}");

    // 50 concurrent players: 51 viewers within 2 s.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let clients: Vec<_> = (0..50)
        .map(|_| tokio::spawn(hls_client(http.clone(), id.clone(), stop.clone())))
        .collect();
    let v = wait_viewers(&http, &id, 51, 10).await;
    assert!(
        started.elapsed() < Duration::from_secs(2) + Duration::from_millis(500),
        "counted after {:?}",
        started.elapsed()
    );
    assert_eq!(v["viewer_count_by_protocol"]["hls"], 51);
    assert!(v["peak_viewer_count"].as_u64().unwrap() >= 51);
    // They stay 51 (not one per request) while they keep polling.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stream(&http, &id).await["viewer_count"], 51);
    let (status, list) = api(
        &http,
        Method::GET,
        &format!("/api/v1/streams/{id}/viewers"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 51);
    let ll = sessions
        .iter()
        .find(|s| s["id"] == session.as_str())
        .unwrap();
    assert!(ll["requests"].as_u64().unwrap() >= requests, "{ll}");
    assert_eq!(ll["remote_addr"], "127.0.0.1");
    // They leave: 0 after the session timeout.
    stop_tx.send(true).unwrap();
    for c in clients {
        c.await.unwrap();
    }
    wait_viewers(&http, &id, 0, 8).await;
    publishing.abort();
    ts.server.shutdown().await;
}

fn ffmpeg_copy(url: &str, rate: &str) -> std::process::Child {
    std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(["-readrate", rate, "-stream_loop", "-1", "-i", FIXTURE])
        .args(["-c", "copy", "-f", "flv", url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ffmpeg")
}

async fn health(http: &str, id: &str) -> Value {
    let (status, v) = api(
        http,
        Method::GET,
        &format!("/api/v1/streams/{id}/health"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

fn cost(h: &Value, name: &str) -> f64 {
    h["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["cost"].as_f64())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_speed_publisher_scores_below_a_real_time_one_because_of_realtime() {
    if !require_program("ffmpeg") {
        return;
    }
    let ts = start_with("stats-health", |c| c.stats.health_interval_ms = 1000).await;
    let http = base(&ts);
    let (rt_id, rt_key) = ts.create_stream("realtime").await;
    let (slow_id, slow_key) = ts.create_stream("halfspeed").await;
    let mut realtime = ffmpeg_copy(&ts.rtmp(&format!("/live/{rt_key}")), "1");
    let mut slow = ffmpeg_copy(&ts.rtmp(&format!("/live/{slow_key}")), "0.5");
    // Twelve seconds of media in the window.
    tokio::time::sleep(Duration::from_secs(14)).await;
    let good = health(&http, &rt_id).await;
    let bad = health(&http, &slow_id).await;
    let (g, b) = (
        good["score"].as_u64().unwrap(),
        bad["score"].as_u64().unwrap(),
    );
    assert!(g >= 90, "real time: {good}");
    assert!(b < g, "half speed {b} vs real time {g}");
    assert_eq!(bad["components"][0]["name"], "realtime", "{bad}");
    assert_eq!(cost(&bad, "realtime"), 20.0, "{bad}");
    assert_eq!(cost(&good, "realtime"), 0.0, "{good}");
    let realtime_value = bad["components"][0]["value"].as_f64().unwrap();
    assert!((0.4..0.6).contains(&realtime_value), "{bad}");
    assert_ne!(bad["grade"], "excellent");
    // The history has a point a second.
    assert!(good["history"].as_array().unwrap().len() >= 5, "{good}");
    // The stream detail carries the score and grade too.
    let detail = stream(&http, &slow_id).await;
    assert!(detail["live"]["health_score"].as_u64().unwrap() < g);
    assert!(
        detail["live"]["bandwidth"]["in_bps_10s"].as_u64().unwrap() > 50_000,
        "{detail}"
    );
    let video = &detail["live"]["tracks"][0];
    assert!(video["bitrate_bps"].as_u64().unwrap() > 10_000, "{video}");
    assert!(
        video["keyframe_interval_seconds"].as_f64().is_some(),
        "{video}"
    );
    let _ = realtime.kill();
    let _ = slow.kill();
    let _ = realtime.wait();
    let _ = slow.wait();
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_publisher_raises_health_degraded() {
    let ts = start_with("stats-degraded", |c| c.stats.health_interval_ms = 1000).await;
    let http = base(&ts);
    let (hook, got) = hook_receiver().await;
    let (status, v) = api(
        &http,
        Method::POST,
        "/api/v1/webhooks",
        Some(json!({"url": hook, "events": ["health.degraded"], "secret": "0123456789abcdef-hd"})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let (id, key) = ts.create_stream("broken").await;
    // At 40 % of real time with timestamps that step back every second.
    let mut p = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .unwrap();
    let tags = looped(&read_flv(FIXTURE), 3);
    let sending = tokio::spawn(async move {
        let start = Instant::now();
        for (i, t) in tags.iter().enumerate() {
            let due = start + Duration::from_millis(u64::from(t.timestamp) * 10 / 4);
            tokio::time::sleep_until(due.into()).await;
            let mut t = t.clone();
            if i % 40 == 20 {
                t.timestamp = t.timestamp.saturating_sub(800);
            }
            p.send_tag(&t).await;
        }
    });
    wait_for_hook(&got, "health.degraded", |e| {
        e["type"] == "health.degraded" && e["data"]["stream"]["id"] == id.as_str()
    })
    .await;
    let event = got
        .lock()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "health.degraded")
        .cloned()
        .unwrap();
    assert!(
        event["data"]["health"]["score"].as_u64().unwrap() < 50,
        "{event}"
    );
    assert!(
        event["data"]["health"]["components"]
            .as_array()
            .unwrap()
            .len()
            == 7
    );
    sending.abort();
    ts.server.shutdown().await;
}

fn scrape(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses")
}

fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_agree_with_the_api() {
    let ts = start_server("stats-metrics").await;
    let http = base(&ts);
    let (id, key) = ts.create_stream("metrics").await;
    let publishing = publish_fixture(&ts, &key, 3).await;
    wait_for_200(&ts.http(&format!("/hls/{id}/index.m3u8")), 15).await;
    // Let the health score settle in.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let client = reqwest::Client::new();
    let resp = client.get(format!("{http}/metrics")).send().await.unwrap();
    assert_eq!(
        resp.status().as_u16(),
        401,
        "metrics need a token by default"
    );
    let before = stream(&http, &id).await;
    let resp = client
        .get(format!("{http}/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = resp.text().await.unwrap();
    let after = stream(&http, &id).await;
    let s = scrape(&text);
    let labels = [
        ("stream_id", id.as_str()),
        ("app", "live"),
        ("protocol", "rtmp"),
    ];
    let bytes_in = value(&s, "media_server_stream_received_bytes_total", &labels).unwrap();
    let (b0, b1) = (
        before["live"]["bytes_in"].as_f64().unwrap(),
        after["live"]["bytes_in"].as_f64().unwrap(),
    );
    assert!(
        b0 <= bytes_in && bytes_in <= b1,
        "{b0} <= {bytes_in} <= {b1}"
    );
    let viewers = value(&s, "media_server_stream_viewers", &labels).unwrap();
    assert_eq!(viewers, after["viewer_count"].as_f64().unwrap());
    let score = value(&s, "media_server_stream_health_score", &labels).unwrap();
    let api_score = after["live"]["health_score"].as_f64().unwrap();
    assert!((score - api_score).abs() <= 5.0, "{score} vs {api_score}");
    let hls_viewers = value(
        &s,
        "media_server_stream_viewers_by_protocol",
        &[("stream_id", id.as_str()), ("viewer_protocol", "hls")],
    )
    .unwrap();
    assert_eq!(
        hls_viewers,
        after["viewer_count_by_protocol"]["hls"].as_f64().unwrap()
    );
    assert_eq!(
        value(&s, "media_server_publishers", &[("protocol", "rtmp")]),
        Some(1.0)
    );
    let (_, stats) = api(&http, Method::GET, "/api/v1/stats", None).await;
    let sent = value(&s, "media_server_sent_bytes_total", &[]).unwrap();
    assert!(sent > 0.0 && sent <= stats["bytes_out"].as_f64().unwrap());
    assert!(value(&s, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(value(&s, "process_cpu_seconds_total", &[]).unwrap() > 0.0);
    assert!(value(&s, "media_server_recordings_active", &[]).is_some());
    // Every family is documented and typed.
    for name in [
        "media_server_stream_sent_bytes_total",
        "media_server_uptime_seconds",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
    }
    // A token without stats:read is refused.
    let (_, tok) = api(
        &http,
        Method::POST,
        "/api/v1/tokens",
        Some(json!({"name": "ro", "scopes": ["streams:read"]})),
    )
    .await;
    let resp = client
        .get(format!("{http}/metrics"))
        .bearer_auth(tok["secret"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    publishing.abort();
    ts.server.shutdown().await;
}
