//! The control API against a running server with real RTMP publishers: key rotation refuses
//! the old key, stop and forced delete disconnect the publisher, private streams need a play
//! token for HLS, and signed webhooks reach a local receiver (retried until it answers).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

async fn api(
    ts: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client
        .request(method, ts.http(path))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn create(ts: &TestServer, body: Value) -> (String, String) {
    let (status, v) = api(ts, reqwest::Method::POST, "/api/v1/streams", Some(body)).await;
    assert_eq!(status, 201, "{v}");
    (
        v["id"].as_str().unwrap().into(),
        v["stream_key"].as_str().unwrap().into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_key_refuses_the_old_key_and_accepts_the_new() {
    let ts = start_server("rotate").await;
    let (id, old) = create(&ts, json!({"title": "rotating"})).await;
    let (status, v) = api(
        &ts,
        reqwest::Method::POST,
        &format!("/api/v1/streams/{id}/key"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let new = v["stream_key"].as_str().unwrap().to_owned();
    assert!(RtmpPublisher::connect(ts.server.rtmp_addr, "live", &old)
        .await
        .is_err());
    let publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &new)
        .await
        .expect("the new key publishes");
    publisher.finish().await;
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_forced_delete_disconnect_the_publisher() {
    let ts = start_server("stop").await;
    let (id, key) = create(&ts, json!({"title": "stoppable"})).await;
    let tags = read_flv(FIXTURE);
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .unwrap();
    // The whole fixture (4 s): HLS answers once a complete segment exists.
    publisher.send_tags(&tags, false).await;
    wait_for_200(&ts.http(&format!("/hls/{id}/index.m3u8")), 10).await;
    let (status, v) = api(
        &ts,
        reqwest::Method::GET,
        &format!("/api/v1/streams/{id}"),
        None,
    )
    .await;
    assert_eq!((status, v["state"].as_str()), (200, Some("live")));
    assert_eq!(v["protocol"], "rtmp");
    let (status, v) = api(
        &ts,
        reqwest::Method::POST,
        &format!("/api/v1/streams/{id}/stop"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "ended", "{v}");
    assert!(ts.server.hub.get(&id).is_none());

    // Live again with the same key; DELETE needs force.
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .unwrap();
    publisher.send_tags(&tags[..40], false).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, v) = api(
        &ts,
        reqwest::Method::DELETE,
        &format!("/api/v1/streams/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["code"], "conflict");
    let (status, _) = api(
        &ts,
        reqwest::Method::DELETE,
        &format!("/api/v1/streams/{id}?force=true"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert!(ts.server.hub.get(&id).is_none());
    let (status, _) = api(
        &ts,
        reqwest::Method::GET,
        &format!("/api/v1/streams/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    drop(publisher);
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_streams_need_a_play_token_for_hls() {
    let ts = start_server("private").await;
    let (id, key) = create(&ts, json!({"title": "secret", "privacy": "private"})).await;
    let tags = read_flv(FIXTURE);
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .unwrap();
    publisher.send_tags(&tags, false).await;
    let url = ts.http(&format!("/hls/{id}/media.m3u8"));
    let (status, _, body) = get(&url).await;
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = get(&format!("{url}?token=123.abcd")).await;
    assert_eq!(status, 403);
    let (status, v) = api(
        &ts,
        reqwest::Method::POST,
        &format!("/api/v1/streams/{id}/play-token"),
        Some(json!({"ttl_seconds": 300})),
    )
    .await;
    assert_eq!(status, 201);
    let token = v["token"].as_str().unwrap();
    let text = String::from_utf8(
        wait_for_200(&format!("{url}?token={token}"), 10)
            .await
            .to_vec(),
    )
    .unwrap();
    // Every URI in the playlist carries the token, so players fetch parts with it.
    let uri_lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') || l.contains("URI="))
        .collect();
    assert!(!uri_lines.is_empty());
    assert!(
        uri_lines
            .iter()
            .all(|l| l.contains(&format!("?token={token}"))),
        "{text}"
    );
    let master = get(&format!(
        "{}?token={token}",
        ts.http(&format!("/hls/{id}/index.m3u8"))
    ))
    .await;
    assert_eq!(master.0, 200);
    assert!(String::from_utf8_lossy(&master.2).contains(&format!("media.m3u8?token={token}")));
    // RTMP play of a private stream needs the token too (in the play name's query).
    if require_program("ffprobe") {
        let probe = |url: String| async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new("ffprobe")
                    .args([
                        "-v",
                        "error",
                        "-rw_timeout",
                        "5000000",
                        "-show_entries",
                        "stream=codec_name",
                        "-of",
                        "csv=p=0",
                    ])
                    .arg(url)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        };
        let refused = probe(ts.rtmp(&format!("/live/{id}"))).await;
        assert!(
            !refused.status.success(),
            "RTMP play of a private stream without a token"
        );
        let allowed = probe(ts.rtmp(&format!("/live/{id}?token={token}"))).await;
        assert!(
            String::from_utf8_lossy(&allowed.stdout).contains("h264"),
            "with the token: {}",
            String::from_utf8_lossy(&allowed.stderr)
        );
    }
    // A public stream plays without one.
    let (pid, pkey) = create(&ts, json!({"title": "open"})).await;
    let mut p2 = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &pkey)
        .await
        .unwrap();
    p2.send_tags(&tags, false).await;
    wait_for_200(&ts.http(&format!("/hls/{pid}/media.m3u8")), 10).await;
    publisher.finish().await;
    p2.finish().await;
    ts.server.shutdown().await;
}

type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A local webhook receiver that fails the first `fail_first` requests with 500.
async fn receiver(fail_first: usize) -> (String, Received) {
    let received: Received = Arc::default();
    let count = Arc::new(Mutex::new(0usize));
    let r = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (r, count) = (r.clone(), count.clone());
            async move {
                r.lock().unwrap().push((headers, body));
                let mut n = count.lock().unwrap();
                *n += 1;
                if *n <= fail_first {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), received)
}

fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let sig = headers["x-signature"].to_str().unwrap();
    let (t, v1) = sig.split_once(',').unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let v1 = v1.strip_prefix("v1=").unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&hex::decode(v1).unwrap()).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_are_retried_until_delivered() {
    let ts = start_with("webhooks", |c| c.webhooks.initial_backoff_ms = 100).await;
    let (url, received) = receiver(2).await;
    let secret = "0123456789abcdef-webhook";
    let (status, v) = api(
        &ts,
        reqwest::Method::POST,
        "/api/v1/webhooks",
        Some(json!({"url": url, "events": ["stream.started"], "secret": secret})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let hook = v["id"].as_str().unwrap().to_owned();
    let (id, key) = create(&ts, json!({"title": "hooked"})).await;
    let publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "three attempts expected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = received.lock().unwrap().clone();
    assert_eq!(
        got.len(),
        3,
        "two failures, then delivered; no more attempts"
    );
    let event_ids: Vec<&str> = got
        .iter()
        .map(|(h, _)| h["x-event-id"].to_str().unwrap())
        .collect();
    assert!(
        event_ids.windows(2).all(|w| w[0] == w[1]),
        "the same event each time"
    );
    for (headers, body) in &got {
        assert!(verify(secret, headers, body), "signature verifies");
        assert!(!verify("wrong-secret-000000", headers, body));
        let event: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(event["type"], "stream.started");
        assert_eq!(event["data"]["stream"]["id"], id.as_str());
    }
    let (_, log) = api(
        &ts,
        reqwest::Method::GET,
        &format!("/api/v1/webhooks/{hook}/deliveries"),
        None,
    )
    .await;
    let attempts: Vec<(u64, bool)> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["attempt"].as_u64().unwrap(),
                d["success"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(attempts, vec![(3, true), (2, false), (1, false)], "{log}");
    publisher.finish().await;
    ts.server.shutdown().await;
}
