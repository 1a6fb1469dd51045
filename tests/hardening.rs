//! Hardening (issue 16): each test attacks the running server the way a client on the
//! network or a tenant with a limited token would, and checks that the attack is cut while
//! everyone else is served. All traffic stays on loopback (several 127.0.0.0/8 source
//! addresses stand for several clients).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use rml_rtmp::sessions::{ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult};
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
    assert_eq!(healthz(&ts).await, 200, "healthz answers once they are gone");

    // Half of an h2c preface, then nothing: closed by the same deadline.
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(read_until_closed(&mut half, Duration::from_secs(3)).await.is_some());

    // An h2c connection that sends its preface and settings, then stays idle: GOAWAY and a
    // close after the idle timeout, while a request on it before that is answered.
    let mut h2 = TcpStream::connect(addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    h2.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let started = Instant::now();
    let got = read_until_closed(&mut h2, Duration::from_secs(10))
        .await
        .expect("an idle h2c connection is closed");
    assert!(started.elapsed() >= Duration::from_millis(1500), "not before the idle timeout");
    // Frames: 3-byte length, type, flags, stream id. The server sent SETTINGS, then GOAWAY.
    let mut types = vec![];
    let mut at = 0;
    while at + 9 <= got.len() {
        let len = (usize::from(got[at]) << 16) | (usize::from(got[at + 1]) << 8) | usize::from(got[at + 2]);
        types.push(got[at + 3]);
        at += 9 + len;
    }
    assert!(types.contains(&4), "SETTINGS: {types:?}");
    assert!(types.contains(&7), "GOAWAY before the close: {types:?}");

    // HTTP/1 keep-alive: one request answered, then idle → closed.
    let mut h1 = TcpStream::connect(addr).await.unwrap();
    h1.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
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
        read_until_closed(&mut sixth, Duration::from_millis(500)).await.is_some(),
        "the client's 6th HTTP connection is closed on accept"
    );
    // Another client is served.
    let mut other = connect_from("127.0.0.3", http).await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut other, Duration::from_secs(3)).await.unwrap();
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));

    for _ in 0..3 {
        held.push(connect_from("127.0.0.2", rtmp).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = connect_from("127.0.0.2", rtmp).await;
    assert!(
        read_until_closed(&mut fourth, Duration::from_millis(500)).await.is_some(),
        "the client's 4th RTMP connection is closed on accept"
    );
    // Closing one frees a place.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect_from("127.0.0.2", rtmp).await;
    assert!(read_until_closed(&mut again, Duration::from_millis(500)).await.is_none());
    ts.server.shutdown().await;
}

/// Asks to play `name` on `app` with rml_rtmp's client; `Ok` when the server accepts.
async fn rtmp_play(addr: SocketAddr, app: &str, name: &str) -> Result<(), String> {
    let mut socket = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let remaining = client_handshake(&mut socket).await;
    let (mut session, _) = ClientSession::new(ClientSessionConfig::new()).unwrap();
    let mut pending = session.handle_input(&remaining).map_err(|e| format!("{e:?}"))?;
    pending.push(session.request_connection(app.to_owned()).unwrap());
    let mut asked_play = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65536];
    loop {
        for r in std::mem::take(&mut pending) {
            match r {
                ClientSessionResult::OutboundResponse(p) => {
                    socket.write_all(&p.bytes).await.map_err(|e| e.to_string())?
                }
                ClientSessionResult::RaisedEvent(ClientSessionEvent::ConnectionRequestAccepted) => {
                    asked_play = true;
                }
                ClientSessionResult::RaisedEvent(ClientSessionEvent::PlaybackRequestAccepted) => {
                    return Ok(())
                }
                ClientSessionResult::RaisedEvent(ClientSessionEvent::UnhandleableAmf0Command {
                    additional_values,
                    ..
                }) => return Err(format!("{additional_values:?}")),
                _ => {}
            }
        }
        if asked_play {
            asked_play = false;
            pending.push(session.request_playback(name.to_owned()).unwrap());
            continue;
        }
        let n = match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err("closed".into()),
            Ok(Ok(n)) => n,
            Err(_) => return Err("timed out".into()),
        };
        pending = session.handle_input(&buf[..n]).map_err(|e| format!("{e:?}"))?;
    }
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
    rtmp_play(ts.server.rtmp_addr, "live", &id).await.expect("first player accepted");
    // Viewers (or anyone) take all but two slots.
    let mut held = vec![];
    for _ in 0..9 {
        held.push(TcpStream::connect(ts.server.rtmp_addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = rtmp_play(ts.server.rtmp_addr, "live", &id).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("full") || e == "closed"),
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
    s.write_all(&chunk_header(3, 8 * 1024 * 1024)).await.unwrap();
    assert!(read_until_closed(&mut s, Duration::from_secs(3)).await.is_some());
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
        closed = read_until_closed(&mut s, Duration::from_secs(3)).await.is_some();
    }
    assert!(closed, "closed after {sent} bytes");
    // The server closes at the 5th partial message (under 1 KiB in); what the writes got
    // further is the kernel's socket buffers on both ends.
    assert!(sent < 8 * 1024 * 1024, "closed after {sent} bytes, not 64 MB");
    let grew = rss_kib().saturating_sub(before);
    assert!(grew < 16 * 1024, "RSS grew {grew} KiB");
    ts.server.shutdown().await;
}
