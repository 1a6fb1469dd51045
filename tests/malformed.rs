//! The malformed-input corpus, thrown at one server while a healthy stream runs through it:
//! RTMP (every chunk header format on a fresh chunk stream, chunk sizes 1 / 2^24-1 / 2^31-1,
//! extended-timestamp edges, messages at and over the cap, unknown message types, aborts,
//! absurd window sizes, 10 KB app and stream names, commands out of order), the WebSocket
//! camera path (text frames, empty, truncated and bit-flipped JPEGs, absurd dimensions),
//! WHIP/WHEP SDP (every line of a real offer deleted, truncated, numbers made absurd, garbage
//! and oversized bodies) and every API route of the OpenAPI document (bogus, huge, unicode and
//! traversal ids; negative, huge and non-numeric limits; bogus cursors; wrong JSON types,
//! deep nesting, invalid UTF-8 and oversized bodies).
//!
//! What must hold: no panic anywhere in the process, no request without an answer within
//! 10 s, no 5xx, every API error in the documented JSON shape, and the healthy stream
//! untouched: its RTMP player gets every frame the publisher sent and its HLS playlist ends
//! complete.

mod common;

#[path = "../examples/esp32_cam/frames.rs"]
#[allow(dead_code)]
mod frames;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::raw_rtmp::*;
use common::*;
use futures_util::SinkExt;
use media_server::proto::rtmp::client::{ClientEvent, ClientSession};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Deterministic xorshift.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// An RTMP player (our client session) counting the video frames it receives.
async fn count_frames(addr: std::net::SocketAddr, id: String, frames: Arc<AtomicUsize>) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let rest = client_handshake(&mut socket).await;
    let mut session = ClientSession::player("live", "rtmp://h/live", &id, 16 << 20, 4096);
    session.push(&rest);
    let mut buf = vec![0u8; 65536];
    loop {
        while let Some(ev) = session
            .poll_event()
            .expect("the healthy player's stream is valid")
        {
            if let ClientEvent::Media {
                type_id: 9,
                payload,
                ..
            } = ev
            {
                // AVC NALU packets only (not the sequence header).
                if payload.get(1) == Some(&1) {
                    frames.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let out = session.take_output();
        if !out.is_empty() {
            socket.write_all(&out).await.unwrap();
        }
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => session.push(&buf[..n]),
        }
    }
}

/// The RTMP corpus: (name, bytes after the handshake, what must happen).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Expect {
    /// The connection is closed.
    Closed,
    /// The `connect` that follows the bytes is answered with success.
    ConnectAnswered,
    /// Either, but within the time limit and without harm.
    Survives,
}

fn rtmp_corpus() -> Vec<(&'static str, Vec<u8>, Expect)> {
    let connect = connect_command(120);
    let with_connect = |mut prelude: Vec<u8>| {
        prelude.extend(fmt0(3, 0, connect.len() as u32, 20, 0));
        prelude.extend_from_slice(&connect);
        prelude
    };
    let mut cases = vec![
        (
            "fmt 1 on a fresh chunk stream",
            {
                let mut v = vec![0x40 | 5, 0, 0, 10, 0, 0, 4, 5];
                v.extend_from_slice(&[0; 4]);
                v
            },
            Expect::Closed,
        ),
        (
            "fmt 2 on a fresh chunk stream",
            vec![0x80 | 5, 0, 0, 10, 1, 2, 3, 4],
            Expect::Closed,
        ),
        (
            "fmt 3 on a fresh chunk stream",
            vec![0xC0 | 5, 1, 2, 3, 4],
            Expect::Closed,
        ),
        (
            "chunk size 1, connect in 1-byte chunks",
            {
                let mut v = set_chunk_size(1);
                v.extend(fmt0(3, 0, connect.len() as u32, 20, 0));
                for (i, b) in connect.iter().enumerate() {
                    if i > 0 {
                        v.push(0xC3);
                    }
                    v.push(*b);
                }
                v
            },
            Expect::ConnectAnswered,
        ),
        (
            "chunk size 2^24-1",
            with_connect(set_chunk_size(0xFF_FFFF)),
            Expect::ConnectAnswered,
        ),
        (
            "chunk size 2^31-1",
            set_chunk_size(0x7FFF_FFFF),
            Expect::Closed,
        ),
        (
            "three-byte basic header, csid 65599",
            {
                let mut v = vec![0x01, 0xFF, 0xFF];
                v.extend_from_slice(&fmt0(3, 0, connect.len() as u32, 20, 0)[1..]);
                v.extend_from_slice(&connect);
                v
            },
            Expect::ConnectAnswered,
        ),
        (
            "extended timestamp 0xFFFFFFFF",
            {
                let mut v = fmt0(3, 0xFF_FFFF, connect.len() as u32, 20, 0);
                v.extend_from_slice(&u32::MAX.to_be_bytes());
                v.extend_from_slice(&connect);
                v
            },
            Expect::ConnectAnswered,
        ),
        (
            "extended timestamp missing (stream ends)",
            fmt0(3, 0xFF_FFFF, 10, 20, 0),
            Expect::Survives,
        ),
        (
            "unknown message type 99",
            with_connect({
                let mut v = fmt0(4, 0, 100, 99, 0);
                v.extend_from_slice(&[7; 100]);
                v
            }),
            Expect::ConnectAnswered,
        ),
        (
            "abort of a chunk stream never used",
            with_connect({
                let mut v = fmt0(2, 0, 4, 2, 0);
                v.extend_from_slice(&50u32.to_be_bytes());
                v
            }),
            Expect::ConnectAnswered,
        ),
        (
            "window ack size 0 and u32::MAX, peer bandwidth u32::MAX",
            with_connect({
                let mut v = fmt0(2, 0, 4, 5, 0);
                v.extend_from_slice(&0u32.to_be_bytes());
                v.extend(fmt0(2, 0, 4, 5, 0));
                v.extend_from_slice(&u32::MAX.to_be_bytes());
                v.extend(fmt0(2, 0, 5, 6, 0));
                v.extend_from_slice(&u32::MAX.to_be_bytes());
                v.push(9);
                v
            }),
            Expect::ConnectAnswered,
        ),
        (
            "zero-length command",
            with_connect(fmt0(3, 0, 0, 20, 0)),
            Expect::Survives,
        ),
        (
            "control message shorter than its type needs",
            fmt0(2, 0, 1, 1, 0).into_iter().chain([1]).collect(),
            Expect::Closed,
        ),
        (
            "message exactly at the pre-publish cap (64 KiB video before publish)",
            with_connect({
                let mut v = set_chunk_size(0xFF_FFFF);
                v.extend(fmt0(6, 0, 64 * 1024, 9, 1));
                v.extend(std::iter::repeat_n(0x17, 64 * 1024));
                v
            }),
            Expect::ConnectAnswered,
        ),
        (
            "message one byte over the cap",
            {
                let mut v = set_chunk_size(0xFF_FFFF);
                v.extend(fmt0(6, 0, 256 * 1024 + 1, 9, 1));
                v.extend(std::iter::repeat_n(0x17, 4096));
                v
            },
            Expect::Closed,
        ),
        (
            "publish before connect",
            command(1, "publish", 5.0, &[amf_string("key"), amf_string("live")]),
            Expect::Closed,
        ),
        (
            "play before connect",
            command(1, "play", 5.0, &[amf_string("x")]),
            Expect::Closed,
        ),
        (
            "createStream before connect",
            command(0, "createStream", 2.0, &[]),
            Expect::Closed,
        ),
        (
            "connect with a 10 KB app name",
            {
                let mut v = set_chunk_size(0xFF_FFFF);
                v.extend(command_with_object(
                    0,
                    "connect",
                    1.0,
                    &[("app", amf_string(&"a".repeat(10_000)))],
                ));
                v
            },
            Expect::Survives,
        ),
        (
            "connect with a NaN transaction id",
            command_with_object(0, "connect", f64::NAN, &[("app", amf_string("live"))]),
            Expect::Survives,
        ),
        (
            "garbage after a valid connect",
            {
                let mut v = with_connect(Vec::new());
                v.extend(garbage());
                v
            },
            Expect::Closed,
        ),
    ];
    // Every format of the basic header with absurd lengths and types on a used chunk stream.
    for fmt in 0u8..4 {
        let mut v = fmt0(7, 5, 10, 20, 0);
        v.extend_from_slice(&[0; 10]);
        v.push(fmt << 6 | 7);
        v.extend_from_slice(&[0xFF; 11][..[11, 7, 3, 0][usize::from(fmt)]]);
        v.extend_from_slice(&[0xEE; 64]);
        cases.push(("absurd header on a used chunk stream", v, Expect::Survives));
    }
    // Before a publisher is accepted, messages are small and few (issue 16): an 8 MB
    // declaration, or five interleaved partial messages, close the connection at once.
    cases.push((
        "8 MB message before publish",
        fmt0(3, 0, 8 * 1024 * 1024, 9, 1),
        Expect::Closed,
    ));
    let mut v = vec![];
    for csid in 3..8u8 {
        v.extend(fmt0(csid, 0, 60 * 1024, 9, 1));
        v.extend_from_slice(&[0; 128]);
    }
    cases.push(("five partial messages before publish", v, Expect::Closed));
    cases
}

/// Runs one RTMP case; panics with its name when the expectation fails.
async fn rtmp_case(addr: std::net::SocketAddr, name: &'static str, bytes: Vec<u8>, expect: Expect) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    client_handshake(&mut socket).await;
    let _ = socket.write_all(&bytes).await;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 65536];
    // The test server's handshake/command timeout is 3 s, its idle timeout 5 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let closed = loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => {
                seen.extend_from_slice(&buf[..n]);
                if expect == Expect::ConnectAnswered
                    && seen
                        .windows(29)
                        .any(|w| w == b"NetConnection.Connect.Success")
                {
                    return;
                }
            }
            Err(_) => break false,
        }
    };
    match expect {
        Expect::Closed => assert!(closed, "RTMP {name}: the connection must be closed"),
        Expect::ConnectAnswered => panic!("RTMP {name}: connect was not answered"),
        Expect::Survives => assert!(closed, "RTMP {name}: the connection must end, not hang"),
    }
}

/// A 10 KB stream name: refused, not published.
async fn long_stream_name(addr: std::net::SocketAddr) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let rest = client_handshake(&mut socket).await;
    let name = "k".repeat(10_000);
    let mut session = ClientSession::new("live", "rtmp://h/live", &name, 1 << 20, 4096);
    session.push(&rest);
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        match session.poll_event() {
            Ok(Some(ClientEvent::Publishing)) => panic!("a 10 KB stream key was accepted"),
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(_) => return, // refused
        }
        let out = session.take_output();
        if socket.write_all(&out).await.is_err() {
            return;
        }
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => session.push(&buf[..n]),
            Err(_) => panic!("a 10 KB stream key left the connection hanging"),
        }
    }
}

async fn rtmp_corpus_run(addr: std::net::SocketAddr) -> usize {
    let cases = rtmp_corpus();
    let n = cases.len() + 1;
    let mut tasks: Vec<_> = cases
        .into_iter()
        .map(|(name, bytes, expect)| tokio::spawn(rtmp_case(addr, name, bytes, expect)))
        .collect();
    tasks.push(tokio::spawn(long_stream_name(addr)));
    for t in tasks {
        t.await.unwrap();
    }
    n
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn camera(ts: &TestServer, key: &str) -> Ws {
    let url = format!("ws://{}/ingest/ws?key={key}", ts.server.http_addr);
    let request = url.as_str().into_client_request().unwrap();
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

/// Sends `msg`; on a closed socket, reconnects (the server closes after too many invalid
/// frames in a row) and returns the new one.
async fn cam_send(ts: &TestServer, key: &str, ws: &mut Ws, msg: Message) -> bool {
    if ws.send(msg).await.is_ok() {
        return false;
    }
    // The previous connection must be released before a new one is accepted.
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let url = format!("ws://{}/ingest/ws?key={key}", ts.server.http_addr);
        if let Ok((new, _)) =
            tokio_tungstenite::connect_async(url.as_str().into_client_request().unwrap()).await
        {
            *ws = new;
            return true;
        }
    }
    panic!("the camera could not reconnect after a closed socket");
}

/// The camera corpus: 300 mutated JPEGs, absurd dimensions, text and empty frames, between
/// valid frames; afterwards the camera's last valid frame is what MJPEG serves.
async fn camera_corpus(ts: &TestServer) -> usize {
    let (id, key) = ts.create_stream("cam-corpus").await;
    let mut ws = camera(ts, &key).await;
    let valid = frames::jpeg(0, 160, 120, 50);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut corpus: Vec<Message> = vec![
        Message::Text("not a frame".into()),
        Message::Binary(Vec::new().into()),
        Message::Binary(vec![0xFF, 0xD8].into()),
        Message::Binary(vec![0xFF, 0xD8, 0xFF, 0xD9].into()),
    ];
    // SOF0 with absurd dimensions: 65535x65535, 0x0, 1x65535.
    let sof = valid
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("baseline JPEG");
    for (h, w) in [(0xFFFFu16, 0xFFFFu16), (0, 0), (0xFFFF, 1)] {
        let mut j = valid.clone();
        j[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
        j[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
        corpus.push(Message::Binary(j.into()));
    }
    for _ in 0..300 {
        let mut j = valid.clone();
        match rng.below(3) {
            0 => j.truncate(rng.below(valid.len())),
            1 => {
                for _ in 0..1 + rng.below(8) {
                    let at = rng.below(j.len());
                    j[at] ^= 1 << rng.below(8);
                }
            }
            _ => {
                // A segment length made huge.
                let at = 2 + rng.below(j.len().saturating_sub(4));
                j[at] = 0xFF;
                j[at + 1] = 0xFF;
            }
        }
        corpus.push(Message::Binary(j.into()));
    }
    let n = corpus.len();
    let mut reconnects = 0;
    for (i, msg) in corpus.into_iter().enumerate() {
        reconnects += usize::from(cam_send(ts, &key, &mut ws, msg).await);
        if i % 2 == 1 {
            let frame = frames::jpeg(i as u64, 160, 120, 50);
            reconnects +=
                usize::from(cam_send(ts, &key, &mut ws, Message::Binary(frame.into())).await);
        }
    }
    let last = frames::jpeg(999, 160, 120, 50);
    cam_send(ts, &key, &mut ws, Message::Binary(last.clone().into())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, body) = get(&ts.http(&format!("/mjpeg/{id}/frame.jpg"))).await;
    assert_eq!(status, 200);
    assert_eq!(
        body.to_vec(),
        last,
        "the camera's last valid frame is served"
    );
    eprintln!("camera corpus: {n} bad frames, {reconnects} reconnects after 1007 closes");
    n
}

/// Posts `body` as an SDP offer; asserts a 4xx with the JSON error shape, or cleans up a
/// session if the mutation was still a valid offer. Returns the status.
async fn post_offer(http: &reqwest::Client, url: &str, key: Option<&str>, body: Vec<u8>) -> u16 {
    let mut req = http
        .post(url)
        .header("content-type", "application/sdp")
        .body(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), req.send())
        .await
        .expect("an SDP offer got no answer within 10 s")
        .unwrap();
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.unwrap_or_default();
    assert!(status < 500, "offer answered {status}: {text}");
    if status == 201 {
        let loc = location.expect("201 has a Location");
        let base = url.split("/whip/").next().unwrap_or(url);
        let mut del = http.delete(format!("{base}{loc}"));
        if let Some(k) = key {
            del = del.bearer_auth(k);
        }
        let r = del.send().await.unwrap();
        assert!(r.status().is_success(), "DELETE {loc}: {}", r.status());
    } else {
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("offer error {status} is not JSON: {text}"));
        assert!(v["error"]["code"].is_string(), "{v}");
    }
    status
}

/// The SDP corpus against WHIP and WHEP.
async fn sdp_corpus(ts: &TestServer) -> usize {
    let (_, key) = ts.create_stream("sdp-corpus").await;
    let (healthy_whep, _) = (ts.http("/whep/"), ());
    let url = ts.http("/whip/live/sdp-corpus");
    let (_peer, offer) = common::webrtc::publisher_offer().await;
    let lines: Vec<&str> = offer.split("\r\n").filter(|l| !l.is_empty()).collect();
    let mut bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"v=0".to_vec(),
        vec![0xFF, 0xFE, 0x00, 0xC3, 0x28],
        "v=0\r\n".repeat(5000).into_bytes(),
        format!(
            "v=0\r\ns=\u{1F4A5}\u{202E}\r\n{}",
            "a=\u{0}\u{FFFF}\r\n".repeat(100)
        )
        .into_bytes(),
        vec![b'a'; 2 * 1024 * 1024],
    ];
    // A thousand media sections.
    let m: String = lines
        .iter()
        .skip_while(|l| !l.starts_with("m="))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let head: String = lines
        .iter()
        .take_while(|l| !l.starts_with("m="))
        .map(|l| format!("{l}\r\n"))
        .collect();
    bodies.push(format!("{head}{}", m.repeat(500)).into_bytes());
    // Each line deleted; each line's numbers made absurd; each line doubled.
    for i in 0..lines.len() {
        let without: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, l)| *l)
            .collect();
        bodies.push(format!("{}\r\n", without.join("\r\n")).into_bytes());
        let absurd: Vec<String> = lines
            .iter()
            .enumerate()
            .map(|(j, l)| {
                if j != i {
                    return (*l).to_owned();
                }
                l.split(' ')
                    .map(|w| {
                        if w.chars().all(|c| c.is_ascii_digit()) && !w.is_empty() {
                            "99999999999999999999".to_owned()
                        } else {
                            w.to_owned()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        bodies.push(format!("{}\r\n", absurd.join("\r\n")).into_bytes());
    }
    // Truncated at every tenth.
    for t in 1..10 {
        bodies.push(offer.as_bytes()[..offer.len() * t / 10].to_vec());
    }
    // A fresh connection per request: a request that ends a connection (a malformed body
    // the server answers and closes) never leaves a half-closed socket in the pool.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let n = bodies.len();
    let mut created = 0;
    for body in bodies {
        if post_offer(&http, &url, Some(&key), body.clone()).await == 201 {
            created += 1;
            // Let the ended session release the stream before the next offer.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // WHEP of an unknown stream with the same body.
        post_offer(&http, &format!("{healthy_whep}str_unknown"), None, body).await;
    }
    eprintln!("SDP corpus: {n} offers, {created} still valid (answered and deleted)");
    n
}

/// Variants of a path parameter.
fn bogus_ids() -> Vec<String> {
    vec![
        "str_doesnotexist".into(),
        "x".repeat(10_000),
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd".into(),
        "%F0%9F%92%A5%E2%80%AE".into(),
        "%00".into(),
        "-1".into(),
        "'%20OR%201=1--".into(),
    ]
}

fn bogus_queries() -> Vec<&'static str> {
    vec![
        "limit=-1",
        "limit=0",
        "limit=abc",
        "limit=99999999999999999999999",
        "cursor=garbage",
        "cursor=eyJpZCI6Ij8ifQ",
        "cursor=%FF%FE",
        "status=%F0%9F%92%A5",
        "since=yesterday&until=-5",
        "order=%00&dir=sideways",
        "token=1.ab%0A%23EXT-X-INJECTED%0Ahttp://evil.example/x",
    ]
}

/// Bodies for a JSON operation: generic garbage plus every documented property given each
/// wrong type.
fn bogus_bodies(schema_props: &[String]) -> Vec<Vec<u8>> {
    let mut deep = "[".repeat(10_000);
    deep.push_str(&"]".repeat(10_000));
    let mut out: Vec<Vec<u8>> = vec![
        b"{}".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        b"\"string\"".to_vec(),
        b"-12".to_vec(),
        b"{\"unterminated\": ".to_vec(),
        vec![b'{', 0xFF, 0xFE, b'}'],
        deep.into_bytes(),
        serde_json::to_vec(&json!({ "title": "x".repeat(200_000) })).unwrap(),
    ];
    for p in schema_props {
        for v in [
            json!(12345),
            json!(-1),
            json!(1e308),
            json!("\u{1F4A5}\u{202E}\u{0}"),
            json!("x".repeat(5000)),
            json!(true),
            json!(null),
            json!([1, [2, [3]]]),
            json!({ "nested": { "deeper": [] } }),
        ] {
            out.push(serde_json::to_vec(&json!({ p.as_str(): v })).unwrap());
        }
    }
    out
}

/// Property names of an operation's JSON request body (following one `$ref`).
fn body_props(doc: &Value, op: &Value) -> Vec<String> {
    let schema = &op["requestBody"]["content"]["application/json"]["schema"];
    let schema = match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap_or("");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    };
    schema["properties"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Every API route of the OpenAPI document with bogus ids, queries and bodies.
async fn api_corpus(ts: &TestServer) -> usize {
    // A fresh connection per request: a request that ends a connection (a malformed body
    // the server answers and closes) never leaves a half-closed socket in the pool.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let doc: Value = http
        .get(ts.http("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().expect("paths").clone();
    let mut requests = 0;
    for (path, item) in &paths {
        let Some(item) = item.as_object() else {
            continue;
        };
        for (method, op) in item {
            let Ok(m) = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()) else {
                continue;
            };
            if !matches!(
                m,
                reqwest::Method::GET
                    | reqwest::Method::POST
                    | reqwest::Method::PATCH
                    | reqwest::Method::PUT
                    | reqwest::Method::DELETE
            ) {
                continue;
            }
            let has_param = path.contains('{');
            let ids = if has_param {
                bogus_ids()
            } else {
                vec![String::new()]
            };
            let props = body_props(&doc, op);
            let takes_body = matches!(
                m,
                reqwest::Method::POST | reqwest::Method::PATCH | reqwest::Method::PUT
            );
            for id in &ids {
                let url = ts.http(&fill_params(path, id));
                let mut variants: Vec<(String, Option<Vec<u8>>)> = Vec::new();
                if m == reqwest::Method::GET {
                    for q in bogus_queries() {
                        variants.push((format!("{url}?{q}"), None));
                    }
                } else if takes_body {
                    // Bodies against the real route only with the first (well-formed) id.
                    let bodies = if id == &ids[0] {
                        bogus_bodies(&props)
                    } else {
                        vec![b"{}".to_vec()]
                    };
                    for b in bodies {
                        variants.push((url.clone(), Some(b)));
                    }
                } else {
                    variants.push((url.clone(), None));
                }
                for (u, body) in variants {
                    let mut req = http.request(m.clone(), &u).bearer_auth(ADMIN_TOKEN);
                    if let Some(b) = body {
                        req = req.header("content-type", "application/json").body(b);
                    }
                    let resp = tokio::time::timeout(Duration::from_secs(10), req.send())
                        .await
                        .unwrap_or_else(|_| panic!("{method} {u}: no answer within 10 s"))
                        .unwrap();
                    requests += 1;
                    let status = resp.status().as_u16();
                    let ctype = resp
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let text = resp.text().await.unwrap_or_default();
                    let short: String = u.chars().take(120).collect();
                    assert!(status < 500, "{method} {short}: {status} {text}");
                    if status >= 400 {
                        assert!(
                            ctype.starts_with("application/json"),
                            "{method} {short}: {status} as {ctype}"
                        );
                        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                        assert!(
                            v["error"]["code"].is_string(),
                            "{method} {short}: {status} {text}"
                        );
                        assert_eq!(v["error"]["status"], status, "{method} {short}: {text}");
                    }
                }
            }
        }
    }
    requests
}

/// `path` with every `{param}` replaced by `id`.
fn fill_params(path: &str, id: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            break;
        };
        out.push_str(id);
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_corpus_leaves_the_healthy_stream_untouched() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    let ts = start_with("malformed", |c| {
        c.rtmp.max_message_bytes = 256 * 1024;
        c.api.rate_limit_per_token = 1_000_000;
        c.api.rate_limit_per_ip = 1_000_000;
        c.camera.max_invalid_frames = 3;
        // The whole healthy stream stays in the playlist, to be checked at the end.
        c.hls.window_segments = 30;
    })
    .await;
    let (id, key) = ts.create_stream("healthy").await;
    let addr = ts.server.rtmp_addr;
    let mut publisher = RtmpPublisher::connect(addr, "live", &key)
        .await
        .expect("publish accepted");
    let frames_seen = Arc::new(AtomicUsize::new(0));
    let player = tokio::spawn(count_frames(addr, id.clone(), frames_seen.clone()));
    // The player is in before the first frame, so it must get every one.
    for _ in 0..100 {
        let path = format!("/api/v1/streams/{id}");
        let (_, body) = api(&ts.http(""), reqwest::Method::GET, &path, None).await;
        if body["viewer_count"].as_u64() == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tags = looped(&read_flv(FIXTURE), 5);
    let sent = tags
        .iter()
        .filter(|t| t.kind == 9 && t.body.get(1) == Some(&1))
        .count();
    let span_s = f64::from(tags.last().map_or(0, |t| t.timestamp) + 40) / 1000.0;
    let pusher = tokio::spawn(async move {
        publisher.send_tags(&tags, true).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        publisher.finish().await;
    });

    let rtmp_cases = rtmp_corpus_run(addr).await;
    let camera_cases = camera_corpus(&ts).await;
    let sdp_cases = sdp_corpus(&ts).await;
    let api_requests = api_corpus(&ts).await;
    eprintln!(
        "corpus: {rtmp_cases} RTMP cases, {camera_cases} camera frames, {sdp_cases} SDP offers, \
         {api_requests} API requests"
    );

    pusher.await.unwrap();
    let text = wait_for_endlist(&ts, &id, 30).await;
    let pl = parse_media_playlist(text.as_bytes());
    let total: f64 = pl.segments.iter().map(|s| f64::from(s.duration)).sum();
    assert!(
        (total - span_s).abs() < 0.2,
        "the healthy stream's HLS is complete: {total} s of {span_s} s\n{text}"
    );
    tokio::time::timeout(Duration::from_secs(10), player)
        .await
        .expect("the player ends with the stream")
        .unwrap();
    assert_eq!(
        frames_seen.load(Ordering::Relaxed),
        sent,
        "the healthy stream's RTMP player got every frame"
    );
    let (status, _, _) = get(&ts.http("/healthz")).await;
    assert_eq!(status, 200);
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "nothing panicked");
    ts.server.shutdown().await;
}
