//! The minimal control API over real HTTP: auth (401/403), the error shape, cursor
//! pagination and the `live` block of a publishing stream.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

async fn call(url: &str, token: Option<&str>) -> (u16, Value, reqwest::header::HeaderMap) {
    let client = reqwest::Client::new();
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
        headers,
    )
}

fn assert_error(body: &Value, status: u16, code: &str) {
    assert_eq!(body["error"]["status"], status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_errors_and_pagination() {
    let ts = start_server("api").await;
    let (status, body, _) = call(&ts.http("/healthz"), None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));

    let url = ts.http("/api/v1/streams");
    let (status, body, headers) = call(&url, None).await;
    assert_eq!(status, 401);
    assert_error(&body, 401, "unauthorized");
    assert_eq!(headers["content-type"], "application/json");
    let (status, body, _) = call(&url, Some("ms_not_a_token")).await;
    assert_eq!(status, 401);
    assert_error(&body, 401, "unauthorized");
    let (_, narrow) = ts
        .server
        .store
        .create_token("narrow", &["recordings:read"], None)
        .await
        .unwrap();
    let (status, body, _) = call(&url, Some(&narrow)).await;
    assert_eq!(status, 403);
    assert_error(&body, 403, "forbidden");

    // The bootstrap made `demo`; add four more and page through five in pages of two.
    for i in 0..4 {
        ts.create_stream(&format!("s{i}")).await;
    }
    let mut seen = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let page_url = match &cursor {
            Some(c) => format!("{url}?limit=2&cursor={c}"),
            None => format!("{url}?limit=2"),
        };
        let (status, body, _) = call(&page_url, Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200, "{body}");
        let data = body["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|s| s["id"].as_str().unwrap().to_owned()));
        if !body["pagination"]["has_more"].as_bool().unwrap() {
            assert!(body["pagination"]["next_cursor"].is_null());
            break;
        }
        cursor = body["pagination"]["next_cursor"]
            .as_str()
            .map(str::to_owned);
    }
    assert_eq!(seen.len(), 5);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5, "no stream twice");

    let (status, body, _) = call(&format!("{url}?limit=0"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 422);
    assert_error(&body, 422, "validation_failed");
    let (status, _, _) = call(&format!("{url}?limit=101"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 422);
    let (status, body, _) = call(&format!("{url}?cursor=zzz"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 400);
    assert_error(&body, 400, "bad_request");
    let (status, body, _) = call(&format!("{url}/str_missing"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404);
    assert_error(&body, 404, "not_found");
    let (status, body, _) = call(&ts.http("/api/v1/nothing"), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404);
    assert_error(&body, 404, "not_found");
    // Keys never appear in API output.
    let (_, body, _) = call(&url, Some(ADMIN_TOKEN)).await;
    assert!(!body.to_string().contains("sk_"), "{body}");
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_block_shows_tracks_and_bitrate_while_publishing() {
    let ts = start_server("api-live").await;
    let (id, key) = ts.create_stream("cam").await;
    let url = ts.http(&format!("/api/v1/streams/{id}"));
    let (status, body, _) = call(&url, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(body["state"], "idle");
    assert_eq!(body["live"]["state"], "idle");
    assert_eq!(
        body["hls_url"],
        format!("http://localhost:8080/hls/{id}/index.m3u8")
    );

    let tags = read_flv(FIXTURE);
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .unwrap();
    let pusher = tokio::spawn(async move {
        publisher.send_tags(&tags, true).await;
        publisher.finish().await;
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, body, _) = call(&url, Some(ADMIN_TOKEN)).await;
    assert_eq!(body["state"], "live", "{body}");
    let live = &body["live"];
    assert_eq!(live["protocol"], "rtmp");
    assert!(live["started_at"].as_str().is_some());
    assert!(
        live["ingest_bitrate_bps"].as_u64().unwrap() > 50_000,
        "{live}"
    );
    let tracks = live["tracks"].as_array().unwrap();
    assert_eq!(tracks.len(), 2);
    assert_eq!(tracks[0]["codec"], "h264");
    assert_eq!(tracks[0]["width"], 320);
    assert_eq!(tracks[0]["height"], 240);
    assert_eq!(tracks[0]["fps"], 30.0);
    assert_eq!(tracks[1]["codec"], "aac");
    assert_eq!(tracks[1]["sample_rate"], 44100);
    pusher.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, body, _) = call(&url, Some(ADMIN_TOKEN)).await;
    assert_eq!(body["state"], "ended", "{body}");
    assert!(body["ended_at"].as_str().is_some());
    ts.server.shutdown().await;
}
