//! Shared test harness: an in-process server on loopback ports, a Rust RTMP publisher built on
//! `rml_rtmp`'s client session (an implementation independent of ours), an FLV file reader for
//! the committed fixture, and helpers for external programs (ffmpeg) that fail under `CI`
//! instead of skipping.
#![allow(dead_code)]

pub mod nginx;
pub mod raw_rtmp;
pub mod s3;
pub mod services;
pub mod webrtc;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use media_server::{Config, Server};
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType,
};
use rml_rtmp::time::RtmpTimestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/av_bframes.flv");
/// H.264 constrained baseline (no B-frames) + AAC, 320x240, 4 s: an RTMP source for WebRTC.
pub const BASELINE_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/av_baseline.flv"
);

/// A running in-process server with its own data directory (and, with
/// `MS_TEST_STORE=postgres`, its own PostgreSQL database).
pub struct TestServer {
    pub server: Server,
    pub dir: PathBuf,
    pub db: Option<services::TestDb>,
}

/// Whether tests run their servers on PostgreSQL (`MS_TEST_STORE=postgres`, how CI runs the
/// API suites a second time) instead of SQLite.
pub fn test_store_is_postgres() -> bool {
    std::env::var("MS_TEST_STORE").is_ok_and(|v| v == "postgres")
}

impl TestServer {
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.server.http_addr, path)
    }

    pub fn rtmp(&self, path: &str) -> String {
        format!("rtmp://{}{}", self.server.rtmp_addr, path)
    }

    /// Creates a stream in app `live`; returns (id, key).
    pub async fn create_stream(&self, name: &str) -> (String, String) {
        let (row, key) = self
            .server
            .store
            .create_stream(media_server::store::NewStream::named("live", name, name))
            .await
            .expect("create stream");
        (row.id, key)
    }
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "media-server-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Config for tests: loopback, ephemeral ports, a fixed admin token, a short grace period.
pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::default();
    c.server.data_dir = dir.join("data");
    c.server.shutdown_timeout_ms = 3000;
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.rtmp.listen = "127.0.0.1:0".parse().unwrap();
    c.auth.admin_token = Some(ADMIN_TOKEN.into());
    c.hls.grace_period_ms = 3000;
    // Most tests check what the packager makes of everything a publisher sent, often reading
    // the playlist only after the publisher is gone: they package from the moment a stream
    // goes live. The product default (`on_demand`, packaging from the first HLS request) is
    // what tests/hls_join.rs, tests/hls_cache.rs, the browser join test and
    // `a_stream_is_packaged_from_its_first_hls_request…` run with.
    c.hls.on_demand = false;
    c.rtmp.handshake_timeout_ms = 3000;
    c.rtmp.idle_timeout_ms = 5000;
    c.webrtc.udp_listen = "127.0.0.1:0".parse().unwrap();
    // Webhook receivers and restream destinations in tests are loopback listeners, which
    // the outbound policy refuses by default (tests/hardening.rs tests the default).
    c.security.outbound_allow = vec!["127.0.0.0/8".into(), "::1/128".into()];
    c
}

pub async fn start_server(tag: &str) -> TestServer {
    start_with(tag, |_| {}).await
}

pub async fn start_with(tag: &str, edit: impl FnOnce(&mut Config)) -> TestServer {
    let _ = tracing_subscriber_init();
    let dir = temp_dir(tag);
    let mut config = test_config(&dir);
    let db = test_store_is_postgres().then(|| services::TestDb::create(tag));
    if let Some(db) = &db {
        config.store.url = db.url.clone();
    }
    edit(&mut config);
    let server = media_server::start(config).await.expect("server starts");
    TestServer { server, dir, db }
}

fn tracing_subscriber_init() -> Result<(), ()> {
    // Logs help when a test fails; `RUST_LOG=debug cargo test` shows more.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init()
        .map_err(|_| ())
}

/// One tag of an FLV file.
#[derive(Debug, Clone)]
pub struct FlvTag {
    pub kind: u8,
    pub timestamp: u32,
    pub body: Bytes,
}

/// Reads every tag of an FLV file (the fixture is trusted, so this parser is minimal).
pub fn read_flv(path: &str) -> Vec<FlvTag> {
    let data = std::fs::read(path).expect("read fixture");
    assert_eq!(&data[..3], b"FLV");
    let mut pos = u32::from_be_bytes([data[5], data[6], data[7], data[8]]) as usize + 4;
    let mut tags = vec![];
    while pos + 11 <= data.len() {
        let kind = data[pos] & 0x1f;
        let size = u32::from_be_bytes([0, data[pos + 1], data[pos + 2], data[pos + 3]]) as usize;
        let ts = u32::from_be_bytes([data[pos + 7], data[pos + 4], data[pos + 5], data[pos + 6]]);
        let body = Bytes::copy_from_slice(&data[pos + 11..pos + 11 + size]);
        tags.push(FlvTag {
            kind,
            timestamp: ts,
            body,
        });
        pos += 11 + size + 4;
    }
    tags
}

/// A publisher speaking RTMP through `rml_rtmp`'s client session.
pub struct RtmpPublisher {
    socket: TcpStream,
    session: ClientSession,
}

/// Why a publish did not start.
#[derive(Debug)]
pub enum PublishError {
    /// The server answered with an error status or closed the connection.
    Refused(String),
}

impl RtmpPublisher {
    /// Connects, handshakes, connects to `app` and publishes `key`.
    pub async fn connect(
        addr: std::net::SocketAddr,
        app: &str,
        key: &str,
    ) -> Result<Self, PublishError> {
        let mut socket = TcpStream::connect(addr).await.expect("tcp connect");
        socket.set_nodelay(true).unwrap();
        let remaining = client_handshake(&mut socket).await;
        let (session, _) = ClientSession::new(ClientSessionConfig::new()).unwrap();
        let mut p = RtmpPublisher { socket, session };
        p.handle(&remaining).await?;
        let r = p.session.request_connection(app.to_owned()).unwrap();
        p.send(vec![r]).await;
        p.wait_for(|e| matches!(e, ClientSessionEvent::ConnectionRequestAccepted))
            .await?;
        let r = p
            .session
            .request_publishing(key.to_owned(), PublishRequestType::Live)
            .unwrap();
        p.send(vec![r]).await;
        p.wait_for(|e| matches!(e, ClientSessionEvent::PublishRequestAccepted))
            .await?;
        Ok(p)
    }

    async fn send(&mut self, results: Vec<ClientSessionResult>) {
        for r in results {
            if let ClientSessionResult::OutboundResponse(packet) = r {
                self.socket.write_all(&packet.bytes).await.expect("write");
            }
        }
    }

    async fn handle(&mut self, bytes: &[u8]) -> Result<Vec<ClientSessionEvent>, PublishError> {
        if bytes.is_empty() {
            return Ok(vec![]);
        }
        let results = self
            .session
            .handle_input(bytes)
            .map_err(|e| PublishError::Refused(format!("{e:?}")))?;
        let mut events = vec![];
        let mut out = vec![];
        for r in results {
            match r {
                ClientSessionResult::RaisedEvent(e) => events.push(e),
                other => out.push(other),
            }
        }
        self.send(out).await;
        Ok(events)
    }

    async fn wait_for(
        &mut self,
        want: impl Fn(&ClientSessionEvent) -> bool,
    ) -> Result<(), PublishError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let n = match tokio::time::timeout(left, self.socket.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return Err(PublishError::Refused("connection closed".into()))
                }
                Ok(Ok(n)) => n,
                Err(_) => return Err(PublishError::Refused("timed out".into())),
            };
            let chunk = buf[..n].to_vec();
            for e in self.handle(&chunk).await? {
                if want(&e) {
                    return Ok(());
                }
                if let ClientSessionEvent::UnhandleableAmf0Command {
                    additional_values, ..
                } = &e
                {
                    let text = format!("{additional_values:?}");
                    if text.contains("error") {
                        return Err(PublishError::Refused(text));
                    }
                }
            }
        }
    }

    /// Sends one FLV tag (8 audio, 9 video, 18 script data is skipped).
    pub async fn send_tag(&mut self, tag: &FlvTag) {
        let ts = RtmpTimestamp::new(tag.timestamp);
        let r = match tag.kind {
            8 => self.session.publish_audio_data(tag.body.clone(), ts, false),
            9 => self.session.publish_video_data(tag.body.clone(), ts, false),
            _ => return,
        }
        .unwrap();
        self.send(vec![r]).await;
    }

    /// Sends one FLV tag; an error (the server went away) instead of a panic.
    pub async fn try_send_tag(&mut self, tag: &FlvTag) -> std::io::Result<()> {
        let ts = RtmpTimestamp::new(tag.timestamp);
        let r = match tag.kind {
            8 => self.session.publish_audio_data(tag.body.clone(), ts, false),
            9 => self.session.publish_video_data(tag.body.clone(), ts, false),
            _ => return Ok(()),
        }
        .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        if let ClientSessionResult::OutboundResponse(packet) = r {
            self.socket.write_all(&packet.bytes).await?;
        }
        Ok(())
    }

    /// Sends `tags`; with `realtime`, paced by their timestamps.
    pub async fn send_tags(&mut self, tags: &[FlvTag], realtime: bool) {
        let start = Instant::now();
        let first = tags.first().map_or(0, |t| t.timestamp);
        for t in tags {
            if realtime {
                let due = start + Duration::from_millis(u64::from(t.timestamp - first));
                tokio::time::sleep_until(due.into()).await;
            }
            self.send_tag(t).await;
        }
        self.socket.flush().await.unwrap();
    }

    /// Ends publishing politely (FCUnpublish/deleteStream) and closes.
    pub async fn finish(mut self) {
        if let Ok(r) = self.session.stop_publishing() {
            self.send(r).await;
        }
        let _ = self.socket.shutdown().await;
    }

    /// Closes the socket without a word (a crash or network loss).
    pub async fn drop_connection(self) {
        drop(self.socket);
    }
}

/// Client side of the RTMP handshake; returns bytes that followed it.
pub async fn client_handshake(socket: &mut TcpStream) -> Vec<u8> {
    let mut hs = Handshake::new(PeerType::Client);
    let c0c1 = hs.generate_outbound_p0_and_p1().unwrap();
    socket.write_all(&c0c1).await.unwrap();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "server closed during handshake");
        match hs.process_bytes(&buf[..n]).unwrap() {
            HandshakeProcessResult::InProgress { response_bytes } => {
                socket.write_all(&response_bytes).await.unwrap();
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                socket.write_all(&response_bytes).await.unwrap();
                return remaining_bytes;
            }
        }
    }
}

/// `tags` repeated `loops` times on one continuous timeline.
pub fn looped(tags: &[FlvTag], loops: u32) -> Vec<FlvTag> {
    let span = tags.last().map_or(0, |t| t.timestamp) + 40;
    (0..loops)
        .flat_map(|i| {
            tags.iter().map(move |t| FlvTag {
                timestamp: t.timestamp + i * span,
                ..t.clone()
            })
        })
        .collect()
}

/// The server side of the RTMP handshake (test destinations and sinks); the bytes that
/// followed it, or `None` if the peer left or sent garbage.
pub async fn server_handshake(socket: &mut TcpStream) -> Option<Vec<u8>> {
    let mut hs = Handshake::new(PeerType::Server);
    let mut buf = vec![0u8; 8192];
    loop {
        let n = socket.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        match hs.process_bytes(&buf[..n]).ok()? {
            HandshakeProcessResult::InProgress { response_bytes } => {
                socket.write_all(&response_bytes).await.ok()?;
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                socket.write_all(&response_bytes).await.ok()?;
                return Some(remaining_bytes);
            }
        }
    }
}

/// Polls the webhook receiver's log until an event matches `hit`.
pub async fn wait_for_hook(
    got: &std::sync::Mutex<Vec<serde_json::Value>>,
    what: &str,
    hit: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if got.lock().unwrap().iter().any(&hit) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} webhook: {:?}",
            got.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An external program the test needs. Under `CI` a missing program fails the test; locally
/// it is reported and the test returns early.
pub fn require_program(name: &str) -> bool {
    let found = std::process::Command::new(name)
        .arg("-version")
        .output()
        .is_ok();
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{name} is required under CI (install it: bash .ci/run does)");
        }
        eprintln!("SKIPPED LOCALLY: {name} not installed");
    }
    found
}

/// GET with a client that has a timeout; returns status, content type and body.
pub async fn get(url: &str) -> (u16, String, Bytes) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let resp = client.get(url).send().await.expect("http get");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, ct, resp.bytes().await.unwrap())
}

/// Polls `url` until it answers 200 (or panics after `secs`).
pub async fn wait_for_200(url: &str, secs: u64) -> Bytes {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (status, _, body) = get(url).await;
        if status == 200 {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never became available (last {status})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Parses a media playlist with m3u8-rs (the independent parser).
pub fn parse_media_playlist(text: &[u8]) -> m3u8_rs::MediaPlaylist {
    match m3u8_rs::parse_playlist_res(text) {
        Ok(m3u8_rs::Playlist::MediaPlaylist(pl)) => pl,
        other => panic!(
            "not a media playlist: {other:?}\n{}",
            String::from_utf8_lossy(text)
        ),
    }
}

/// Waits until the media playlist ends (`EXT-X-ENDLIST`) and returns its text.
pub async fn wait_for_endlist(ts: &TestServer, id: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (status, _, body) = get(&ts.http(&format!("/hls/{id}/media.m3u8"))).await;
        let text = String::from_utf8_lossy(&body).into_owned();
        if status == 200 && text.contains("#EXT-X-ENDLIST") {
            return text;
        }
        assert!(Instant::now() < deadline, "playlist never ended:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The Python of the test venv (`target/py-venv`, made by `tests/run.sh` with aiortc) or
/// `MEDIA_SERVER_TEST_PYTHON`. Under `CI` a missing venv fails the test.
pub fn test_python() -> Option<PathBuf> {
    let path = std::env::var_os("MEDIA_SERVER_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py-venv/bin/python"));
    let ok = std::process::Command::new(&path)
        .args(["-c", "import aiortc, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!(
                "{} with aiortc is required under CI (bash tests/run.sh makes it)",
                path.display()
            );
        }
        eprintln!(
            "SKIPPED LOCALLY: no Python venv with aiortc at {}",
            path.display()
        );
        return None;
    }
    Some(path)
}

/// An API call with the admin token; returns the status and the JSON body (`Null` if none).
pub async fn api(
    ts_http: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{ts_http}{path}"))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// Waits until `url` answers 2xx (a server process starting).
pub async fn wait_healthy(url: &str) {
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never answered");
}

/// `ffmpeg -re` publishing testsrc2 640x360 30 fps (libx264, 1 s GOP) + a sine (AAC) for
/// `secs` seconds to `url`.
pub fn ffmpeg_publish(url: &str, secs: u32) -> std::process::Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", &secs.to_string()])
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-pix_fmt", "yuv420p",
        ])
        .args(["-c:a", "aac", "-b:a", "96k", "-f", "flv", url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffmpeg")
}

/// A local webhook receiver; returns its URL and what it got.
pub async fn hook_receiver() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    hook_receiver_on(0).await
}

/// [`hook_receiver`] on a given loopback port (0: any).
pub async fn hook_receiver_on(
    port: u16,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    let got: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Default::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let g = g.clone();
            async move {
                if let Ok(v) = serde_json::from_slice(&body) {
                    g.lock().unwrap().push(v);
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), got)
}

/// Polls `url` (the server may hold each request) until it answers 200; returns the body and
/// how long it took. Anything but 200, 404 (not live yet) or 503 (no segment yet) fails.
pub async fn first_200(url: &str, secs: u64) -> (String, std::time::Duration) {
    let client = reqwest::Client::new();
    let start = std::time::Instant::now();
    loop {
        if let Ok(r) = client.get(url).send().await {
            let status = r.status().as_u16();
            if status == 200 {
                return (r.text().await.unwrap(), start.elapsed());
            }
            assert!(matches!(status, 404 | 503), "{url} answered {status}");
            if status == 503 {
                assert!(
                    r.headers().contains_key("retry-after"),
                    "503 without Retry-After"
                );
            }
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(secs),
            "no 200 from {url}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
/// Asks to play `name` on `app` with rml_rtmp's client; the socket once the server accepts
/// (media follows on it).
pub async fn rtmp_player(
    addr: std::net::SocketAddr,
    app: &str,
    name: &str,
) -> Result<TcpStream, String> {
    let mut socket = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let remaining = client_handshake(&mut socket).await;
    let (mut session, _) = ClientSession::new(ClientSessionConfig::new()).unwrap();
    let mut pending = session
        .handle_input(&remaining)
        .map_err(|e| format!("{e:?}"))?;
    pending.push(session.request_connection(app.to_owned()).unwrap());
    let mut asked_play = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65536];
    loop {
        for r in std::mem::take(&mut pending) {
            match r {
                ClientSessionResult::OutboundResponse(p) => socket
                    .write_all(&p.bytes)
                    .await
                    .map_err(|e| e.to_string())?,
                ClientSessionResult::RaisedEvent(ClientSessionEvent::ConnectionRequestAccepted) => {
                    asked_play = true;
                }
                ClientSessionResult::RaisedEvent(ClientSessionEvent::PlaybackRequestAccepted) => {
                    return Ok(socket)
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
        pending = session
            .handle_input(&buf[..n])
            .map_err(|e| format!("{e:?}"))?;
    }
}

/// The recordings of a stream, oldest first (API `GET /api/v1/recordings`).
pub async fn recordings_of(http: &str, stream: &str) -> Vec<serde_json::Value> {
    let (status, v) = api(
        http,
        reqwest::Method::GET,
        &format!("/api/v1/recordings?stream_id={stream}&dir=asc"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["data"].as_array().cloned().unwrap_or_default()
}

/// ffprobe's duration of a file or URL (seconds).
pub fn ffprobe_duration(path_or_url: &str) -> f64 {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
            path_or_url,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| {
            panic!(
                "ffprobe {path_or_url}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// What ffmpeg says decoding every stream of `input` (empty: no error).
pub fn decode_errors(input: &str) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i", input, "-map", "0", "-f", "null", "-"])
        .output()
        .unwrap();
    if out.status.success() {
        String::from_utf8_lossy(&out.stderr).into_owned()
    } else {
        format!(
            "exit {:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// Writes a test CA and a `localhost` certificate signed by it; returns (ca, cert, key) paths.
pub fn test_pki(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "media-server test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let (ca_path, cert, key) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    (ca_path, cert, key)
}

/// The ffmpeg 9 binary: `MS_TEST_FFMPEG9` (tests/run.sh exports it) or the venv's.
pub fn ffmpeg9() -> Option<PathBuf> {
    let path = std::env::var_os("MS_TEST_FFMPEG9")
        .map(PathBuf::from)
        .or_else(|| {
            let py = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/ffmpeg9-venv/bin/python");
            let out = Command::new(py)
                .args([
                    "-c",
                    "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())",
                ])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
        .filter(|p| p.exists());
    if path.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "ffmpeg 9 (imageio-ffmpeg) is required under CI (bash tests/run.sh installs it)"
            );
        }
        eprintln!("SKIPPED LOCALLY: no ffmpeg 9 (imageio-ffmpeg); run bash tests/run.sh");
    }
    path.filter(|_| require_program("ffmpeg") && require_program("ffprobe"))
}

/// Turns recording on for a stream (straight in the store, as an admin PATCH would).
pub async fn set_record(ts: &TestServer, id: &str) {
    ts.server
        .store
        .update_stream(
            id,
            media_server::store::StreamPatch {
                record: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}
