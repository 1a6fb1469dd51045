//! Hostile RTMP input on one connection while a healthy stream is published on another: the
//! three reproduced `rml_rtmp`/`rml_amf0` crashers, chunk sizes 0 and 2^31, a 16 MiB declared
//! message and garbage. The bad connection is closed (or, for legal-but-nasty input, handled
//! correctly); the process survives and the healthy stream's HLS output is complete.

mod common;

use std::time::Duration;

use common::raw_rtmp::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Case 1 of DESIGN.md: a 200-byte message on csid 6 split at 128, a whole message on csid 4,
/// then the rest of csid 6 — legal RTMP that panics `rml_rtmp` 0.8.
fn interleaved_chunk_streams() -> Vec<u8> {
    let cmd = connect_command(200);
    let mut v = fmt0(6, 0, 200, 20, 0);
    v.extend_from_slice(&cmd[..128]);
    // A whole window-ack-size message on csid 4.
    v.extend(fmt0(4, 0, 4, 5, 0));
    v.extend_from_slice(&2_500_000u32.to_be_bytes());
    v.push(0xC0 | 6); // fmt 3 continuation of csid 6
    v.extend_from_slice(&cmd[128..]);
    v
}

/// Case 2: a fmt-1 chunk with timestamp delta 0xFFFFFF and a smaller extended timestamp.
fn extended_delta_smaller_than_marker() -> Vec<u8> {
    let mut v = fmt0(5, 1000, 4, 5, 0);
    v.extend_from_slice(&2_500_000u32.to_be_bytes());
    v.push(0x40 | 5); // fmt 1
    v.extend_from_slice(&[0xFF, 0xFF, 0xFF]);
    v.extend_from_slice(&4u32.to_be_bytes()[1..]);
    v.push(5);
    v.extend_from_slice(&5u32.to_be_bytes()); // extended timestamp 5 < 0xFFFFFF
    v.extend_from_slice(&2_500_000u32.to_be_bytes());
    v
}

/// Case 3: a command with 4,000 nested AMF0 objects (~16 KB), which overflows the stack of
/// `rml_amf0` 0.3.
fn deeply_nested_amf() -> Vec<u8> {
    let mut payload = vec![0x02, 0x00, 0x07];
    payload.extend_from_slice(b"connect");
    payload.push(0x00);
    payload.extend_from_slice(&1f64.to_be_bytes());
    for _ in 0..4000 {
        payload.extend_from_slice(&[0x03, 0x00, 0x01, b'a']);
    }
    let mut v = fmt0(3, 0, 4, 1, 0);
    v.extend_from_slice(&65536u32.to_be_bytes()); // big chunks: the payload in one chunk
    v.extend(fmt0(3, 0, payload.len() as u32, 20, 0));
    v.extend_from_slice(&payload);
    v
}

/// Sends `bytes` after a proper handshake; returns true if the server closed the connection
/// within `secs`, false if it stayed open.
async fn send_after_handshake(addr: std::net::SocketAddr, bytes: &[u8], secs: u64) -> bool {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    client_handshake(&mut socket).await;
    if socket.write_all(bytes).await.is_err() {
        return true;
    }
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_connections_do_not_disturb_a_healthy_stream() {
    let ts = start_server("bad-input").await;
    let (id, key) = ts.create_stream("healthy").await;
    let tags = read_flv(FIXTURE);
    let mut publisher = RtmpPublisher::connect(ts.server.rtmp_addr, "live", &key)
        .await
        .expect("publish accepted");
    let pusher = tokio::spawn(async move {
        publisher.send_tags(&tags, true).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        publisher.finish().await;
    });
    let addr = ts.server.rtmp_addr;

    // Legal but nasty: handled correctly, the server answers connect.
    let mut socket = TcpStream::connect(addr).await.unwrap();
    client_handshake(&mut socket).await;
    socket
        .write_all(&interleaved_chunk_streams())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), socket.read(&mut buf))
        .await
        .expect("the server answers the interleaved connect")
        .unwrap();
    assert!(n > 0, "connect over interleaved chunk streams is answered");
    assert!(buf[..n]
        .windows(29)
        .any(|w| w == b"NetConnection.Connect.Success"));
    drop(socket);

    // Legal timestamps arithmetic edge: no crash; nothing to publish, so the command
    // timeout (3 s in tests) closes it.
    assert!(send_after_handshake(addr, &extended_delta_smaller_than_marker(), 6).await);

    // Malformed: each closes its own connection at once.
    for (name, bytes) in [
        ("deep AMF nesting", deeply_nested_amf()),
        ("chunk size 0", set_chunk_size(0)),
        ("chunk size 2^31", set_chunk_size(1 << 31)),
        ("16 MiB declared message", huge_declared_message()),
        ("garbage after the handshake", garbage()),
    ] {
        assert!(
            send_after_handshake(addr, &bytes, 6).await,
            "{name}: connection must be closed"
        );
    }
    // Garbage instead of a handshake.
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(&garbage()).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(6), socket.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(_)) | Ok(Err(_))),
        "garbage handshake is answered or closed"
    );

    pusher.await.unwrap();
    let text = wait_for_endlist(&ts, &id, 20).await;
    let pl = parse_media_playlist(text.as_bytes());
    let total: f32 = pl.segments.iter().map(|s| s.duration).sum();
    assert!(
        (total - 4.0).abs() < 0.1,
        "the healthy stream is complete: {total} s\n{text}"
    );
    let (status, _, _) = get(&ts.http("/healthz")).await;
    assert_eq!(status, 200, "the server is still up");
    ts.server.shutdown().await;
}
