//! Hardening (issue 16): each test attacks the running server the way a client on the
//! network or a tenant with a limited token would, and checks that the attack is cut while
//! everyone else is served. All traffic stays on loopback (several 127.0.0.0/8 source
//! addresses stand for several clients).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connects to `addr` from the loopback address `from` (a second "client").
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(addr).await.unwrap()
}

/// Reads until the server closes `s` (EOF or reset) and returns what it sent, or `None` if
/// it is still open after `wait`.
async fn read_until_closed(s: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut got = vec![];
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

/// An API call (admin token) that must answer `want`; returns the body.
async fn must(
    http: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
    want: u16,
) -> serde_json::Value {
    let (status, v) = api(http, method.clone(), path, body).await;
    assert_eq!(status, want, "{method} {path}: {v}");
    v
}

async fn healthz(ts: &TestServer) -> u16 {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    match client.get(ts.http("/healthz")).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_half_preface_idle_h2c_and_idle_keepalive_connections_are_closed() {
    let ts = start_with("idle-conns", |c| {
        c.http.max_connections = 40;
        c.http.header_read_timeout_ms = 1000;
        c.http.idle_timeout_ms = 2000;
    })
    .await;
    let addr = ts.server.http_addr;
    // Every slot taken by a socket that never sends a byte: nobody else gets in ...
    let mut silent = vec![];
    for _ in 0..40 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = TcpStream::connect(addr).await.unwrap();
    assert!(
        read_until_closed(&mut refused, Duration::from_millis(500))
            .await
            .is_some(),
        "the 41st connection is closed on accept"
    );
    // ... until the first-bytes deadline closes them all.
    let start = Instant::now();
    for s in &mut silent {
        assert!(
            read_until_closed(s, Duration::from_secs(4)).await.is_some(),
            "a silent socket is closed by the first-bytes deadline"
        );
    }
    assert!(start.elapsed() < Duration::from_secs(4));
    assert_eq!(
        healthz(&ts).await,
        200,
        "healthz answers once they are gone"
    );

    // Half of an h2c preface, then nothing: closed by the same deadline.
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(read_until_closed(&mut half, Duration::from_secs(3))
        .await
        .is_some());

    // An h2c connection that sends its preface and settings, then stays idle: GOAWAY and a
    // close after the idle timeout, while a request on it before that is answered.
    let mut h2 = TcpStream::connect(addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    h2.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let started = Instant::now();
    let got = read_until_closed(&mut h2, Duration::from_secs(10))
        .await
        .expect("an idle h2c connection is closed");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "not before the idle timeout"
    );
    // Frames: 3-byte length, type, flags, stream id. The server sent SETTINGS, then GOAWAY.
    let mut types = vec![];
    let mut at = 0;
    while at + 9 <= got.len() {
        let len = (usize::from(got[at]) << 16)
            | (usize::from(got[at + 1]) << 8)
            | usize::from(got[at + 2]);
        types.push(got[at + 3]);
        at += 9 + len;
    }
    assert!(types.contains(&4), "SETTINGS: {types:?}");
    assert!(types.contains(&7), "GOAWAY before the close: {types:?}");

    // An h2c client that only sends PINGs (no request) is idle all the same.
    let mut pinger = TcpStream::connect(addr).await.unwrap();
    pinger
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    pinger
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    let (mut rd, mut wr) = pinger.into_split();
    let pings = tokio::spawn(async move {
        for n in 0..40u8 {
            let mut ping = vec![0, 0, 8, 6, 0, 0, 0, 0, 0];
            ping.extend_from_slice(&[n; 8]);
            if wr.write_all(&ping).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("a PING-only h2c connection stayed open"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "closed by the idle timeout"
    );
    pings.abort();

    // HTTP/1 keep-alive: one request answered, then idle → closed.
    let mut h1 = TcpStream::connect(addr).await.unwrap();
    h1.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut h1, Duration::from_secs(10))
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert_eq!(healthz(&ts).await, 200);
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_is_held_to_its_connection_caps_and_others_are_served() {
    let ts = start_with("per-ip", |c| {
        c.security.connection_limit_exempt = vec![];
        c.http.max_connections_per_ip = 5;
        c.rtmp.max_connections_per_ip = 3;
        c.rtmp.max_connections = 100;
        c.rtmp.reserved_publisher_slots = 10;
    })
    .await;
    let http = ts.server.http_addr;
    let rtmp = ts.server.rtmp_addr;
    let mut held = vec![];
    for _ in 0..5 {
        held.push(connect_from("127.0.0.2", http).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut sixth = connect_from("127.0.0.2", http).await;
    assert!(
        read_until_closed(&mut sixth, Duration::from_millis(500))
            .await
            .is_some(),
        "the client's 6th HTTP connection is closed on accept"
    );
    // Another client is served.
    let mut other = connect_from("127.0.0.3", http).await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut other, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));

    for _ in 0..3 {
        held.push(connect_from("127.0.0.2", rtmp).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = connect_from("127.0.0.2", rtmp).await;
    assert!(
        read_until_closed(&mut fourth, Duration::from_millis(500))
            .await
            .is_some(),
        "the client's 4th RTMP connection is closed on accept"
    );
    // Closing one frees a place.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect_from("127.0.0.2", rtmp).await;
    assert!(read_until_closed(&mut again, Duration::from_millis(500))
        .await
        .is_none());
    ts.server.shutdown().await;
}

/// Asks to play `name` on `app`; `Ok` when the server accepts.
async fn rtmp_play(addr: SocketAddr, app: &str, name: &str) -> Result<(), String> {
    rtmp_player(addr, app, name).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_leave_the_reserved_rtmp_slots_to_publishers() {
    let ts = start_with("reserved-slots", |c| {
        c.rtmp.max_connections = 12;
        c.rtmp.reserved_publisher_slots = 3;
        c.rtmp.handshake_timeout_ms = 20_000;
    })
    .await;
    let (id, key) = ts.create_stream("reserved").await;
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .expect("publish");
    let tags = read_flv(FIXTURE);
    publisher.send_tags(&tags[..20], false).await;
    // A player is accepted while many slots are free.
    rtmp_play(ts.server.rtmp_addr, "live", &id)
        .await
        .expect("first player accepted");
    // Viewers (or anyone) take all but two slots.
    let mut held = vec![];
    for _ in 0..9 {
        held.push(TcpStream::connect(ts.server.rtmp_addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = rtmp_play(ts.server.rtmp_addr, "live", &id).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("full") || e == "closed"),
        "a player is refused when only reserved slots are left: {refused:?}"
    );
    // A publisher still gets in.
    let (_, key2) = ts.create_stream("reserved2").await;
    let second = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key2).await;
    assert!(second.is_ok(), "a publisher takes a reserved slot");
    drop(held);
    ts.server.shutdown().await;
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A type-0 chunk header on `csid` announcing a message of `len` bytes (type 9, stream 1).
fn chunk_header(csid: u8, len: u32) -> Vec<u8> {
    let l = len.to_be_bytes();
    vec![csid, 0, 0, 0, l[1], l[2], l[3], 9, 1, 0, 0, 0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_rtmp_connection_cannot_make_the_server_buffer() {
    let ts = start_server("rtmp-buffer").await;
    let before = rss_kib();
    // One 8 MB message declared before any publish: closed at its header.
    let mut s = TcpStream::connect(ts.server.rtmp_addr).await.unwrap();
    client_handshake(&mut s).await;
    s.write_all(&chunk_header(3, 8 * 1024 * 1024))
        .await
        .unwrap();
    assert!(read_until_closed(&mut s, Duration::from_secs(3))
        .await
        .is_some());
    // Interleaved partial messages of 60 KiB on many chunk streams, 64 MB in all: closed
    // long before, by the partial-message cap.
    let mut s = TcpStream::connect(ts.server.rtmp_addr).await.unwrap();
    client_handshake(&mut s).await;
    let mut sent = 0usize;
    let mut closed = false;
    'outer: for round in 0..1000u32 {
        for csid in 3..63u8 {
            let mut b = if round == 0 {
                chunk_header(csid, 60 * 1024)
            } else {
                vec![0xC0 | csid]
            };
            b.extend_from_slice(&[0u8; 128]);
            if s.write_all(&b).await.is_err() {
                closed = true;
                break 'outer;
            }
            sent += b.len();
            if sent > 64 * 1024 * 1024 {
                break 'outer;
            }
        }
    }
    if !closed {
        closed = read_until_closed(&mut s, Duration::from_secs(3))
            .await
            .is_some();
    }
    assert!(closed, "closed after {sent} bytes");
    // The server closes at the 5th partial message (under 1 KiB in); what the writes got
    // further is the kernel's socket buffers on both ends.
    assert!(
        sent < 8 * 1024 * 1024,
        "closed after {sent} bytes, not 64 MB"
    );
    let grew = rss_kib().saturating_sub(before);
    assert!(grew < 16 * 1024, "RSS grew {grew} KiB");
    ts.server.shutdown().await;
}

/// A TCP listener on loopback that counts the connections it accepts.
async fn counting_listener() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    (port, hits)
}

async fn wait_restream(
    http: &str,
    id: &str,
    rid: &str,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = api(
            http,
            reqwest::Method::GET,
            &format!("/api/v1/streams/{id}/restreams/{rid}"),
            None,
        )
        .await;
        if want(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "restream never got there: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_destinations_are_refused_before_a_packet_is_sent() {
    // The shipped policy: nothing but public addresses.
    let ts = start_with("outbound", |c| {
        c.security.outbound_allow = vec![];
        c.restream.max_attempts = 2;
        c.restream.backoff_initial_ms = 100;
        c.restream.backoff_max_ms = 200;
    })
    .await;
    let http = ts.http("");
    // Literal addresses are refused when the webhook or destination is created. None of
    // these is ever connected to (the check happens before any socket exists).
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/hook",
        "http://192.168.0.1:8080/hook",
        "http://[fd00::1]/hook",
        "http://[fe80::1]/hook",
        "http://[::ffff:127.0.0.1]:9/hook",
        "http://127.0.0.1:9/hook",
        "http://2130706433:9/hook",
        "http://localhost:9/hook",
        "http://0.0.0.0:9/hook",
    ] {
        let (status, v) = api(
            &http,
            reqwest::Method::POST,
            "/api/v1/webhooks",
            Some(serde_json::json!({"url": url, "events": ["*"]})),
        )
        .await;
        assert_eq!(status, 422, "{url}: {v}");
        assert!(
            v.to_string().contains("outbound_allow") || v.to_string().contains("loopback"),
            "{url}: {v}"
        );
    }
    let (id, key) = ts.create_stream("outbound").await;
    for url in [
        "rtmp://192.168.1.10/live",
        "rtmp://169.254.169.254/live",
        "rtmp://[::1]/live",
        "rtmps://100.64.0.1/live",
    ] {
        let (status, v) = api(
            &http,
            reqwest::Method::POST,
            &format!("/api/v1/streams/{id}/restreams"),
            Some(serde_json::json!({"platform": "custom", "url": url, "key": "k"})),
        )
        .await;
        assert_eq!(status, 422, "{url}: {v}");
    }
    // A name is checked when it is resolved: "2130706433" is 127.0.0.1 to the resolver.
    let (port, hits) = counting_listener().await;
    let (status, v) = api(&http, reqwest::Method::POST, &format!("/api/v1/streams/{id}/restreams"),
        Some(serde_json::json!({"platform": "custom", "url": format!("rtmp://2130706433:{port}/live"), "key": "k"}))).await;
    assert_eq!(status, 201, "{v}");
    let rid = v["id"].as_str().unwrap().to_owned();
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .unwrap();
    let tags = read_flv(FIXTURE);
    let pusher = tokio::spawn(async move {
        loop {
            publisher.send_tags(&tags, true).await;
        }
    });
    let failed = wait_restream(&http, &id, &rid, |v| {
        v["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("destination refused"))
    })
    .await;
    // Refused, without telling where the name points.
    let error = failed["last_error"].as_str().unwrap();
    assert!(
        error.contains("outbound policy refuses") && !error.contains("127.0.0.1"),
        "{failed}"
    );
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing connected"
    );
    pusher.abort();
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_redirects_are_not_followed_and_failures_reveal_no_port_state() {
    let ts = start_with("hook-redirect", |c| {
        c.webhooks.max_attempts = 1;
    })
    .await;
    let http = ts.http("");
    // B would receive the event if the redirect were followed.
    let (b_port, b_hits) = counting_listener().await;
    let redirect = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || async move {
            (
                axum::http::StatusCode::FOUND,
                [("location", format!("http://127.0.0.1:{b_port}/steal"))],
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, redirect).await.unwrap() });
    let closed = free_port();
    let mut hooks = vec![];
    for url in [
        format!("http://{a}/hook"),
        format!("http://127.0.0.1:{closed}/hook"),
    ] {
        let (status, v) = api(
            &http,
            reqwest::Method::POST,
            "/api/v1/webhooks",
            Some(serde_json::json!({"url": url, "events": ["stream.created"]})),
        )
        .await;
        assert_eq!(status, 201, "{v}");
        hooks.push(v["id"].as_str().unwrap().to_owned());
    }
    must(
        &http,
        reqwest::Method::POST,
        "/api/v1/streams",
        Some(serde_json::json!({"title": "t", "name": "redirected"})),
        201,
    )
    .await;
    let delivery = |hook: String| {
        let http = http.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let (_, v) = api(
                    &http,
                    reqwest::Method::GET,
                    &format!("/api/v1/webhooks/{hook}/deliveries"),
                    None,
                )
                .await;
                if let Some(d) = v["data"].as_array().and_then(|d| d.first()) {
                    return d.clone();
                }
                assert!(Instant::now() < deadline, "no delivery logged: {v}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let redirected = delivery(hooks[0].clone()).await;
    assert_eq!(redirected["success"], false, "{redirected}");
    assert_eq!(redirected["status_code"], 302, "{redirected}");
    assert!(
        redirected["error"]
            .as_str()
            .unwrap()
            .contains("redirects are not followed"),
        "{redirected}"
    );
    let refused = delivery(hooks[1].clone()).await;
    assert_eq!(
        refused["error"], "could not deliver (no HTTP answer)",
        "{refused}"
    );
    assert_eq!(refused["duration_ms"], 0, "{refused}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        b_hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the redirect was not followed"
    );
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_written_into_the_destination_path_is_masked_in_views_webhooks_and_the_database() {
    let ts = start_with("mask-path", |c| {
        c.restream.max_attempts = 1;
        c.restream.connect_timeout_ms = 1000;
    })
    .await;
    let http = ts.http("");
    let (hook, got) = hook_receiver().await;
    must(
        &http,
        reqwest::Method::POST,
        "/api/v1/webhooks",
        Some(serde_json::json!({"url": hook, "events": ["restream.failed"]})),
        201,
    )
    .await;
    let (id, key) = ts.create_stream("maskpath").await;
    let secret = "sk-path-9f8e7d6c5b4a3210";
    let closed = free_port();
    let (status, v) = api(&http, reqwest::Method::POST, &format!("/api/v1/streams/{id}/restreams"),
        Some(serde_json::json!({"platform": "custom", "url": format!("rtmp://pusher:pw-77aa@127.0.0.1:{closed}/live/{secret}?sig=q-5511")}))).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        v["url"],
        format!("rtmp://***@127.0.0.1:{closed}/live/***?sig=***"),
        "{v}"
    );
    let rid = v["id"].as_str().unwrap().to_owned();
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .unwrap();
    let tags = read_flv(FIXTURE);
    let pusher = tokio::spawn(async move {
        loop {
            publisher.send_tags(&tags, true).await;
        }
    });
    let failed = wait_restream(&http, &id, &rid, |v| v["state"] == "failed").await;
    wait_for_hook(&got, "restream.failed", |e| e["type"] == "restream.failed").await;
    let event = serde_json::Value::from(got.lock().unwrap().clone());
    for text in [failed.to_string(), event.to_string()] {
        for s in [secret, "pw-77aa", "q-5511"] {
            assert!(!text.contains(s), "{s} shown in {text}");
        }
    }
    pusher.abort();
    ts.server.shutdown().await;
    // At rest: sealed, and the stored masked URL hides it too.
    let data = ts.dir.join("data");
    for entry in std::fs::read_dir(&data).unwrap().flatten() {
        if entry.path().is_file() {
            let bytes = std::fs::read(entry.path()).unwrap();
            let hay = String::from_utf8_lossy(&bytes);
            assert!(
                !hay.contains(secret),
                "{} holds the key",
                entry.path().display()
            );
        }
    }
}

async fn status_of(url: &str) -> u16 {
    reqwest::get(url).await.map_or(0, |r| r.status().as_u16())
}

async fn play_token(http: &str, id: &str) -> String {
    let (status, v) = api(
        http,
        reqwest::Method::POST,
        &format!("/api/v1/streams/{id}/play-token"),
        None,
    )
    .await;
    assert_eq!(status, 201, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_keep_their_privacy_after_the_stream_is_deleted_and_vod_playlists_take_no_injection(
) {
    use std::os::unix::fs::PermissionsExt;
    let ts = start_server("rec-privacy").await;
    let http = ts.http("");
    let (id, key) = ts.create_stream("recpriv").await;
    must(
        &http,
        reqwest::Method::PATCH,
        &format!("/api/v1/streams/{id}"),
        Some(serde_json::json!({"record": true})),
        200,
    )
    .await;
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .unwrap();
    publisher.send_tags(&read_flv(FIXTURE), false).await;
    publisher.finish().await;
    let rec = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, v) = api(
                &http,
                reqwest::Method::GET,
                &format!("/api/v1/recordings?stream_id={id}"),
                None,
            )
            .await;
            if let Some(r) = v["data"]
                .as_array()
                .and_then(|d| d.first())
                .filter(|r| r["status"] == "ready")
            {
                break r["id"].as_str().unwrap().to_owned();
            }
            assert!(Instant::now() < deadline, "no ready recording: {v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let vod = ts.http(&format!("/vod/{rec}/index.m3u8"));
    // Public: served; a "token" carrying playlist lines is not written into it.
    let (status, _, body) = get(&format!(
        "{vod}?token=1.ab%0A%23EXT-X-INJECTED%0Ahttp://evil.example/x.mp4"
    ))
    .await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(
        !text.contains("INJECTED") && !text.contains("evil.example"),
        "{text}"
    );
    // The recording file is the server's only (umask 077).
    let file = std::fs::read_dir(ts.dir.join("data/recordings"))
        .unwrap()
        .flatten()
        .next()
        .unwrap();
    assert_eq!(file.metadata().unwrap().permissions().mode() & 0o777, 0o600);
    // The stream turns private: so does its recording.
    must(
        &http,
        reqwest::Method::PATCH,
        &format!("/api/v1/streams/{id}"),
        Some(serde_json::json!({"privacy": "private"})),
        200,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(status_of(&vod).await, 401);
    let token = play_token(&http, &id).await;
    assert_eq!(status_of(&format!("{vod}?token={token}")).await, 200);
    // The stream is deleted: the recording stays private (it was public to everyone before).
    must(
        &http,
        reqwest::Method::DELETE,
        &format!("/api/v1/streams/{id}"),
        None,
        204,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(status_of(&vod).await, 401, "no token, no recording");
    assert_eq!(
        status_of(&ts.http(&format!("/vod/{rec}/media.mp4"))).await,
        401
    );
    assert_eq!(status_of(&format!("{vod}?token={token}")).await, 200);
    // A PATCH of the deleted stream changes nothing (it cannot make the recording public).
    must(
        &http,
        reqwest::Method::PATCH,
        &format!("/api/v1/streams/{id}"),
        Some(serde_json::json!({"privacy": "public"})),
        404,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(status_of(&vod).await, 401, "still private");
    // An API caller with recordings:read still gets it.
    let (status, v) = api(
        &http,
        reqwest::Method::GET,
        &format!("/api/v1/recordings/{rec}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_tokens_die_on_revoke_key_rotation_and_privacy_change() {
    let ts = start_with("revoke", |c| c.auth.play_token_max_ttl_secs = 7200).await;
    let http = ts.http("");
    let (id, _) = ts.create_stream("revoke").await;
    must(
        &http,
        reqwest::Method::PATCH,
        &format!("/api/v1/streams/{id}"),
        Some(serde_json::json!({"privacy": "private"})),
        200,
    )
    .await;
    let hls = ts.http(&format!("/hls/{id}/index.m3u8"));
    // Not live: a valid token gets past the gate to a 404; a dead one is refused with 403.
    let ok = |s: u16| s != 401 && s != 403;
    let settle = || tokio::time::sleep(Duration::from_millis(2100));
    let t1 = play_token(&http, &id).await;
    assert!(ok(status_of(&format!("{hls}?token={t1}")).await));
    must(
        &http,
        reqwest::Method::POST,
        &format!("/api/v1/streams/{id}/play-tokens/revoke"),
        None,
        204,
    )
    .await;
    settle().await;
    assert_eq!(
        status_of(&format!("{hls}?token={t1}")).await,
        403,
        "revoked"
    );
    let t2 = play_token(&http, &id).await;
    assert!(
        ok(status_of(&format!("{hls}?token={t2}")).await),
        "a new token works"
    );
    must(
        &http,
        reqwest::Method::POST,
        &format!("/api/v1/streams/{id}/key"),
        None,
        200,
    )
    .await;
    settle().await;
    assert_eq!(
        status_of(&format!("{hls}?token={t2}")).await,
        403,
        "dies with the key"
    );
    let t3 = play_token(&http, &id).await;
    for privacy in ["public", "private"] {
        must(
            &http,
            reqwest::Method::PATCH,
            &format!("/api/v1/streams/{id}"),
            Some(serde_json::json!({"privacy": privacy})),
            200,
        )
        .await;
    }
    settle().await;
    assert_eq!(
        status_of(&format!("{hls}?token={t3}")).await,
        403,
        "dies with a privacy change"
    );
    // The longest lifetime is the configured one.
    let (status, v) = api(
        &http,
        reqwest::Method::POST,
        &format!("/api/v1/streams/{id}/play-token"),
        Some(serde_json::json!({"ttl_seconds": 7201})),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    // A `play` token mints play tokens and reads nothing else.
    let (status, v) = api(
        &http,
        reqwest::Method::POST,
        "/api/v1/tokens",
        Some(serde_json::json!({"name": "player-backend", "scopes": ["play"]})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let player = v["secret"].as_str().unwrap().to_owned();
    let client = reqwest::Client::new();
    let r = client
        .post(ts.http(&format!("/api/v1/streams/{id}/play-token")))
        .bearer_auth(&player)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = client
        .get(ts.http(&format!("/api/v1/streams/{id}")))
        .bearer_auth(&player)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_is_private_on_disk_and_the_play_token_key_is_sealed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("at-rest");
    let data = dir.join("data");
    // An older install left everything world-readable.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = test_config(&dir);
    config.server.data_dir = data.clone();
    let server = media_server::start(config.clone()).await.unwrap();
    let ts = TestServer {
        server,
        dir: dir.clone(),
        db: None,
    };
    let (id, _) = ts.create_stream("atrest").await;
    let (status, _) = api(
        &ts.http(""),
        reqwest::Method::PATCH,
        &format!("/api/v1/streams/{id}"),
        Some(serde_json::json!({"privacy": "private"})),
    )
    .await;
    assert_eq!(status, 200);
    let token = play_token(&ts.http(""), &id).await;
    ts.server.shutdown().await;
    let db = data.join("media-server.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // The key is stored sealed, not in clear.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let keys: Vec<String> = conn
        .prepare("SELECT key FROM settings")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        keys.contains(&"play_token_key_sealed".to_owned())
            && !keys.contains(&"play_token_key".to_owned()),
        "{keys:?}"
    );
    drop(conn);
    // A restart tightens what was loosened and keeps the key: the token still plays.
    let server = media_server::start(config).await.unwrap();
    let ts = TestServer {
        server,
        dir,
        db: None,
    };
    assert_eq!(mode(&data), 0o700);
    for entry in std::fs::read_dir(&data).unwrap().flatten() {
        if entry.path().is_file() {
            assert_eq!(mode(&entry.path()), 0o600, "{}", entry.path().display());
        }
    }
    let s = status_of(&ts.http(&format!("/hls/{id}/index.m3u8?token={token}"))).await;
    assert!(s != 401 && s != 403, "token from before the restart: {s}");
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_made_up_tokens_are_limited() {
    let ts = start_with("quotas", |c| {
        c.api.max_streams_per_app = 2;
        c.api.max_webhooks = 1;
        c.api.rate_limit_per_ip = 5;
        c.api.media_rate_limit_per_ip = 6;
        c.security.connection_limit_exempt = vec![];
    })
    .await;
    let http = ts.http("");
    for (n, want) in [(1, 201), (2, 201), (3, 409)] {
        let (status, v) = api(
            &http,
            reqwest::Method::POST,
            "/api/v1/streams",
            Some(serde_json::json!({"title": "q", "name": format!("q{n}"), "app": "quota"})),
        )
        .await;
        assert_eq!(status, want, "{v}");
    }
    // Another app has its own quota.
    must(
        &http,
        reqwest::Method::POST,
        "/api/v1/streams",
        Some(serde_json::json!({"title": "q", "name": "q3", "app": "other"})),
        201,
    )
    .await;
    for want in [201, 409] {
        let (status, v) = api(
            &http,
            reqwest::Method::POST,
            "/api/v1/webhooks",
            Some(serde_json::json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]})),
        )
        .await;
        assert_eq!(status, want, "{v}");
    }
    // Made-up bearer tokens are charged to the client's IP (5 a minute here, one of them
    // spent verifying the admin token): refused with 429 before they are looked up, while
    // the admin token (cached) keeps working. Not across a minute boundary.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    if secs > 54 {
        tokio::time::sleep(Duration::from_secs(61 - secs)).await;
        let (status, _) = api(&http, reqwest::Method::GET, "/api/v1/streams", None).await;
        assert_eq!(status, 200);
    }
    let client = reqwest::Client::new();
    let mut codes = vec![];
    for n in 0..8 {
        let r = client
            .get(ts.http("/api/v1/streams"))
            .bearer_auth(format!("ms_made_up_{n}"))
            .send()
            .await
            .unwrap();
        codes.push(r.status().as_u16());
    }
    let first_429 = codes
        .iter()
        .position(|c| *c == 429)
        .expect("refused at some point");
    assert!((3..=5).contains(&first_429), "{codes:?}");
    assert!(codes[..first_429].iter().all(|c| *c == 401), "{codes:?}");
    assert!(codes[first_429..].iter().all(|c| *c == 429), "{codes:?}");
    let (status, _) = api(&http, reqwest::Method::GET, "/api/v1/streams", None).await;
    assert_eq!(status, 200);
    // The media routes have their own, light per-client limit with X-RateLimit-* headers.
    let mut media = vec![];
    for _ in 0..6 {
        let r = client
            .get(ts.http("/hls/str_0000000000000000/index.m3u8"))
            .send()
            .await
            .unwrap();
        assert!(r.headers().contains_key("x-ratelimit-remaining"));
        // HLS is answered ahead of the router (net::http::FastRoute) with the same CORS.
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        media.push(r.status().as_u16());
    }
    let r = client
        .get(ts.http("/vod/rec_0000000000000000/index.m3u8"))
        .send()
        .await
        .unwrap();
    media.push(r.status().as_u16());
    assert!(media[..6].iter().all(|s| *s == 404), "{media:?}");
    assert_eq!(media[6], 429, "{media:?}");
    ts.server.shutdown().await;
}

/// POSTs a WHEP offer from the loopback address `from`; returns the status.
async fn whep_offer_from(from: &str, url: &str, offer: &str) -> u16 {
    let client = reqwest::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    client
        .post(url)
        .header("content-type", "application/sdp")
        .body(offer.to_owned())
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_anonymous_whep_offers_cannot_lock_out_a_whip_publisher() {
    let ts = start_with("whep-flood", |c| {
        c.security.connection_limit_exempt = vec![];
        c.webrtc.max_sessions = 6;
        c.webrtc.reserved_whip_sessions = 2;
        c.webrtc.max_whep_sessions_per_ip = 3;
        c.webrtc.connect_timeout_ms = 2000;
    })
    .await;
    let (id, key) = ts.create_stream("flooded").await;
    let tags = read_flv(BASELINE_FIXTURE);
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .unwrap();
    let pusher = tokio::spawn(async move {
        loop {
            publisher.send_tags(&tags, true).await;
        }
    });
    wait_for_200(&ts.http(&format!("/hls/{id}/index.m3u8")), 10).await;
    // Offers that will never connect (nobody answers the server's ICE checks).
    let (_peer, offer) = common::webrtc::viewer_offer().await;
    let whep = ts.http(&format!("/whep/{id}"));
    let mut codes = vec![];
    for _ in 0..4 {
        codes.push(whep_offer_from("127.0.0.2", &whep, &offer).await);
    }
    assert_eq!(codes, [201, 201, 201, 429], "one client holds at most 3");
    assert_eq!(whep_offer_from("127.0.0.3", &whep, &offer).await, 201);
    assert_eq!(
        whep_offer_from("127.0.0.4", &whep, &offer).await,
        503,
        "viewers leave the reserved slots free"
    );
    // A WHIP publisher still gets in.
    let (_, whip_key) = ts.create_stream("whipper").await;
    let whip = common::webrtc::whip_publish(&ts.http("/whip/live/whipper"), &whip_key, 3).await;
    // Sessions that never connect are closed after the connect timeout: room again.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let (status, headers, _) = common::webrtc::post_sdp(&whep, None, &offer).await;
    assert_eq!(status, 201);
    let location = headers["location"].to_str().unwrap().to_owned();
    // A viewer's DELETE after the server ended its session (never connected) is answered
    // as done, not 404; an unknown session is 404.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let client = reqwest::Client::new();
    let r = client.delete(ts.http(&location)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{location}");
    let r = client
        .delete(ts.http("/whep/session/0123456789abcdef0123456789abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    whip.sender.abort();
    pusher.abort();
    ts.server.shutdown().await;
}

/// An ES256 key the test signs JWTs with, and its JWKS.
struct Issuer {
    pkcs8: Vec<u8>,
    jwks: serde_json::Value,
}

impl Issuer {
    fn new() -> Self {
        use base64::Engine;
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "k1",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }]});
        Issuer {
            pkcs8: pkcs8.as_ref().to_vec(),
            jwks,
        }
    }

    fn jwt(&self, claims: serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_der(&self.pkcs8),
        )
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_authorises_publish_and_play_with_a_callback_and_jwts() {
    // The platform: an auth callback (allows the credential "let-me-in") and a JWKS.
    let issuer = Issuer::new();
    let jwks = issuer.jwks.clone();
    let asked: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Default::default();
    let log = asked.clone();
    let platform = axum::Router::new()
        .route(
            "/jwks.json",
            axum::routing::get(move || async move { axum::Json(jwks) }),
        )
        .route(
            "/auth",
            axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
                let log = log.clone();
                async move {
                    let ok = v["credential"] == "let-me-in";
                    log.lock().unwrap().push(v);
                    if ok {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::FORBIDDEN
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let paddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, platform).await.unwrap() });
    let ts = start_with("extauth", move |c| {
        c.external_auth.callback_url = format!("http://{paddr}/auth");
        c.external_auth.jwks_url = format!("http://{paddr}/jwks.json");
        c.external_auth.jwt_issuer = "https://auth.example".into();
        c.external_auth.jwt_audience = "media-server".into();
    })
    .await;
    let http = ts.http("");
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = |stream: &str, actions: &[&str], aud: &str, exp: u64| serde_json::json!({"iss": "https://auth.example", "aud": aud, "exp": exp, "stream": stream, "actions": actions});
    let (cam_id, _) = ts.create_stream("cam").await;
    ts.create_stream("cam2").await;

    // RTMP publish with the platform's credential in the publish name.
    let publisher =
        RtmpPublisher::connect(ts.server.rtmp_addr, "live", "cam?token=let-me-in").await;
    assert!(publisher.is_ok(), "the callback allowed it");
    let refused = RtmpPublisher::connect(ts.server.rtmp_addr, "live", "cam2?token=wrong").await;
    assert!(refused.is_err(), "the callback refused it");
    {
        let asked = asked.lock().unwrap();
        let first = &asked[0];
        assert_eq!(first["action"], "publish");
        assert_eq!(first["protocol"], "rtmp");
        assert_eq!(first["app"], "live");
        assert_eq!(first["name"], "cam");
        assert_eq!(first["stream_id"], cam_id);
        assert_eq!(first["client_ip"], "127.0.0.1");
    }

    // WHIP publish with a JWT as the bearer.
    let (jw_id, _) = ts.create_stream("jw").await;
    let whip = ts.http("/whip/live/jw");
    let (_peer, offer) = common::webrtc::publisher_offer().await;
    for (name, jwt, want) in [
        (
            "play-only",
            issuer.jwt(claims("live/jw", &["play"], "media-server", exp)),
            401,
        ),
        (
            "other stream",
            issuer.jwt(claims("live/cam2", &["publish"], "media-server", exp)),
            401,
        ),
        (
            "wrong audience",
            issuer.jwt(claims("live/jw", &["publish"], "elsewhere", exp)),
            401,
        ),
        (
            "expired",
            issuer.jwt(claims("live/jw", &["publish"], "media-server", exp - 1200)),
            401,
        ),
        (
            "good",
            issuer.jwt(claims("live/jw", &["publish"], "media-server", exp)),
            201,
        ),
    ] {
        let (status, _, body) = common::webrtc::post_sdp(&whip, Some(&jwt), &offer).await;
        assert_eq!(status, want, "{name}: {body}");
    }
    assert!(
        !asked
            .lock()
            .unwrap()
            .iter()
            .any(|a| a["protocol"] == "whip"),
        "JWTs never go to the callback"
    );

    // Play of a private stream: a JWT with the play action, or the callback's credential.
    must(
        &http,
        reqwest::Method::PATCH,
        &format!("/api/v1/streams/{jw_id}"),
        Some(serde_json::json!({"privacy": "private"})),
        200,
    )
    .await;
    let hls = ts.http(&format!("/hls/{jw_id}/index.m3u8"));
    let passes = |s: u16| s != 401 && s != 403;
    let play = issuer.jwt(claims(&jw_id, &["play"], "media-server", exp));
    assert!(passes(status_of(&format!("{hls}?token={play}")).await));
    let star = issuer.jwt(claims("*", &["play", "publish"], "media-server", exp));
    assert!(passes(status_of(&format!("{hls}?token={star}")).await));
    let publish_only = issuer.jwt(claims(&jw_id, &["publish"], "media-server", exp));
    assert_eq!(status_of(&format!("{hls}?token={publish_only}")).await, 403);
    assert!(passes(status_of(&format!("{hls}?token=let-me-in")).await));
    assert_eq!(status_of(&format!("{hls}?token=nope")).await, 403);
    assert_eq!(status_of(&hls).await, 401);
    let asked = asked.lock().unwrap().clone();
    assert!(
        asked.iter().any(|a| a["action"] == "play"
            && a["protocol"] == "hls"
            && a["credential"] == "let-me-in"),
        "{asked:?}"
    );
    ts.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_stream_is_restreamed_only_by_destinations_that_say_so() {
    if !common::nginx::require_nginx() {
        return;
    }
    let ts = start_server("private-source").await;
    let http = ts.http("");
    let nginx = common::nginx::Nginx::start(&ts.dir.join("nginx"), None);
    let dest = format!("rtmp://127.0.0.1:{}/live", nginx.rtmp_port);
    let (id, key) = ts.create_stream("privsrc").await;
    let path = format!("/api/v1/streams/{id}/restreams");
    let plain = must(
        &http,
        reqwest::Method::POST,
        &path,
        Some(serde_json::json!({"platform": "custom", "url": dest, "key": "plain"})),
        201,
    )
    .await;
    let allowed = must(&http, reqwest::Method::POST, &path,
        Some(serde_json::json!({"platform": "custom", "url": dest, "key": "allowed", "allow_private_source": true})), 201).await;
    assert_eq!(allowed["allow_private_source"], true);
    let (plain, allowed) = (
        plain["id"].as_str().unwrap().to_owned(),
        allowed["id"].as_str().unwrap().to_owned(),
    );
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .unwrap();
    let tags = read_flv(FIXTURE);
    let pusher = tokio::spawn(async move {
        loop {
            publisher.send_tags(&tags, true).await;
        }
    });
    for rid in [&plain, &allowed] {
        wait_restream(&http, &id, rid, |v| v["state"] == "active").await;
    }
    // The stream turns private: the plain destination stops at once, the other goes on.
    must(
        &http,
        reqwest::Method::PATCH,
        &format!("/api/v1/streams/{id}"),
        Some(serde_json::json!({"privacy": "private"})),
        200,
    )
    .await;
    let stopped = wait_restream(&http, &id, &plain, |v| v["state"] == "failed").await;
    assert!(
        stopped["last_error"]
            .as_str()
            .unwrap()
            .contains("allow_private_source"),
        "{stopped}"
    );
    let (_, still) = api(
        &http,
        reqwest::Method::GET,
        &format!("{path}/{allowed}"),
        None,
    )
    .await;
    assert_eq!(still["state"], "active", "{still}");
    // A new destination of the private stream must say so.
    let (status, v) = api(
        &http,
        reqwest::Method::POST,
        &path,
        Some(serde_json::json!({"platform": "custom", "url": dest, "key": "new"})),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    assert!(v.to_string().contains("allow_private_source"), "{v}");
    pusher.abort();
    ts.server.shutdown().await;
}
