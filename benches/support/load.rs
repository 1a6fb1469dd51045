//! RTMP publishers and players and LL-HLS clients for the load generator
//! (`examples/loadgen.rs`) and the soak (`benches/soak.rs`), speaking to any RTMP server
//! (ours or nginx-rtmp) through our sans-IO client session.
//!
//! Latency is measured on the payload: the publisher puts an H.264 SEI NAL unit
//! (`user_data_unregistered`, [`STAMP_UUID`]) holding the wall-clock time it wrote the frame
//! in front of every video frame; a player reads it back from the FLV tag, an LL-HLS client
//! from the part's `mdat`. Neither server decodes the video, and the SEI is valid H.264, so
//! both pass it through untouched whatever they do to timestamps.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use media_server::proto::rtmp::client::{ClientEvent, ClientSession};
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, Instant};

/// Marks our timestamp SEI (a random, fixed UUID).
pub const STAMP_UUID: [u8; 16] = [
    0x6d, 0x73, 0x2d, 0x6c, 0x6f, 0x61, 0x64, 0x2d, 0x91, 0x3c, 0x4e, 0x0b, 0xa7, 0x52, 0xd8, 0x19,
];

/// Frames received within this time of a player's first frame are its start-up burst (the
/// GOP a server sends at once so the player can start on a keyframe): not counted as late.
pub const WARMUP: Duration = Duration::from_secs(3);

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Where to publish or play: `rtmp://host:port/app/name`.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub app: String,
    pub name: String,
    pub tc_url: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let u = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
        if u.scheme() != "rtmp" {
            return Err(format!("{url}: not rtmp://"));
        }
        let host = u.host_str().ok_or_else(|| format!("{url}: no host"))?;
        let port = u.port().unwrap_or(1935);
        let addr = format!("{host}:{port}")
            .parse()
            .map_err(|e| format!("{url}: {e} (use an IP address)"))?;
        let path = u.path().trim_start_matches('/');
        let (app, name) = path
            .rsplit_once('/')
            .ok_or_else(|| format!("{url}: expected rtmp://host:port/app/name"))?;
        Ok(Target {
            addr,
            app: app.to_owned(),
            name: name.to_owned(),
            tc_url: format!("rtmp://{host}:{port}/{app}"),
        })
    }
}

/// One FLV tag of the replayed file.
#[derive(Debug, Clone)]
pub struct Tag {
    pub type_id: u8,
    pub timestamp: u32,
    pub data: Bytes,
}

impl Tag {
    /// A codec configuration (AVC sequence header / AAC AudioSpecificConfig, or an Enhanced
    /// RTMP SequenceStart).
    pub fn is_config(&self) -> bool {
        let Some(&b0) = self.data.first() else {
            return false;
        };
        let enhanced = (self.type_id == 9 && b0 & 0x80 != 0) || (self.type_id == 8 && b0 >> 4 == 9);
        if enhanced {
            return b0 & 0x0F == 0;
        }
        self.data.len() > 1
            && self.data[1] == 0
            && ((self.type_id == 9 && b0 & 0x0F == 7) || (self.type_id == 8 && b0 >> 4 == 10))
    }

    /// A video keyframe (frame type 1, legacy or Enhanced RTMP).
    pub fn is_keyframe(&self) -> bool {
        self.type_id == 9
            && self.data.first().is_some_and(|b| (b >> 4) & 0x07 == 1)
            && !self.is_config()
    }
}

/// Audio and video tags of an FLV file (script tags are left out).
pub fn read_flv(path: &str) -> Result<Vec<Tag>, String> {
    let file = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let data = Bytes::from(file);
    if data.len() < 13 || &data[..3] != b"FLV" {
        return Err(format!("{path}: not an FLV file"));
    }
    let mut at = 13;
    let mut tags = Vec::new();
    while at + 11 <= data.len() {
        let h = &data[at..at + 11];
        let size = usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3]);
        let timestamp =
            u32::from(h[7]) << 24 | u32::from(h[4]) << 16 | u32::from(h[5]) << 8 | u32::from(h[6]);
        let end = at + 11 + size;
        if end > data.len() {
            break;
        }
        if matches!(h[0], 8 | 9) && size > 0 {
            tags.push(Tag {
                type_id: h[0],
                timestamp,
                data: data.slice(at + 11..end),
            });
        }
        at = end + 4;
    }
    if tags.is_empty() {
        return Err(format!("{path}: no audio/video tags"));
    }
    Ok(tags)
}

/// The SEI NAL unit (AVCC, 4-byte length) carrying `micros`: 8 bytes of 7 bits each with the
/// top bit set, so no emulation-prevention bytes are ever needed.
fn stamp_nal(micros: u64) -> [u8; 4 + 3 + 16 + 8 + 1] {
    let mut nal = [0u8; 32];
    nal[..4].copy_from_slice(&28u32.to_be_bytes());
    nal[4] = 0x06; // SEI
    nal[5] = 5; // user_data_unregistered
    nal[6] = 24; // payload size: UUID + 8 bytes
    nal[7..23].copy_from_slice(&STAMP_UUID);
    for i in 0..8 {
        nal[23 + i] = 0x80 | ((micros >> (7 * (7 - i))) & 0x7F) as u8;
    }
    nal[31] = 0x80; // rbsp trailing bits
    nal
}

fn decode_stamp(b: &[u8]) -> Option<u64> {
    let b = b.get(..8)?;
    Some(b.iter().fold(0u64, |v, x| v << 7 | u64::from(x & 0x7F)))
}

/// Where the NAL units of an H.264 or HEVC coded-frames tag start (legacy AVC, or Enhanced
/// RTMP `avc1`/`hvc1` CodedFrames / CodedFramesX), and whether it is HEVC.
fn nal_offset(data: &[u8]) -> Option<(usize, bool)> {
    let b0 = *data.first()?;
    if b0 & 0x80 == 0 {
        return (data.len() >= 5 && b0 & 0x0F == 7 && data[1] == 1).then_some((5, false));
    }
    let offset = match (b0 & 0x0F, data.get(1..5)?) {
        (1, b"avc1") => (8, false),
        (3, b"avc1") => (5, false),
        (1, b"hvc1") => (8, true),
        (3, b"hvc1") => (5, true),
        _ => return None,
    };
    (data.len() >= offset.0).then_some(offset)
}

/// The stamp as an HEVC prefix SEI NAL unit (type 39, two-byte header), length-prefixed.
fn stamp_nal_hevc(micros: u64) -> [u8; 33] {
    let h264 = stamp_nal(micros);
    let mut nal = [0u8; 33];
    nal[..4].copy_from_slice(&29u32.to_be_bytes());
    nal[4] = 39 << 1; // prefix SEI
    nal[5] = 1; // nuh_temporal_id_plus1
    nal[6..].copy_from_slice(&h264[5..]);
    nal
}

/// An H.264 or HEVC coded-frames tag with the stamp SEI put first; any other tag unchanged.
pub fn stamp_video(tag: &Tag, micros: u64) -> Bytes {
    let Some((offset, hevc)) = (tag.type_id == 9).then(|| nal_offset(&tag.data)).flatten() else {
        return tag.data.clone();
    };
    let mut out = BytesMut::with_capacity(tag.data.len() + 33);
    out.put_slice(&tag.data[..offset]);
    if hevc {
        out.put_slice(&stamp_nal_hevc(micros));
    } else {
        out.put_slice(&stamp_nal(micros));
    }
    out.put_slice(&tag.data[offset..]);
    out.freeze()
}

/// The stamp of an FLV video tag body made by [`stamp_video`].
pub fn stamp_of_tag(data: &[u8]) -> Option<u64> {
    let (offset, hevc) = nal_offset(data)?;
    let header = if hevc { 2 } else { 1 };
    let sei = data.get(offset..offset + 31 + header)?;
    let is_sei = if hevc {
        sei[4] == 39 << 1
    } else {
        sei[4] == 0x06
    };
    (is_sei && sei[6 + header..22 + header] == STAMP_UUID)
        .then(|| decode_stamp(&sei[22 + header..]))
        .flatten()
}

/// Every stamp found in `data` (an fMP4 part), in order.
pub fn stamps_in(data: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 24 <= data.len() {
        if data[i] == STAMP_UUID[0] && data[i..i + 16] == STAMP_UUID {
            if let Some(s) = decode_stamp(&data[i + 16..]) {
                out.push(s);
            }
            i += 24;
        } else {
            i += 1;
        }
    }
    out
}

/// RTMP handshake as a client; returns bytes the server sent after it.
pub async fn handshake(socket: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut hs = Handshake::new(PeerType::Client);
    let c0c1 = hs
        .generate_outbound_p0_and_p1()
        .map_err(|e| format!("handshake: {e:?}"))?;
    socket.write_all(&c0c1).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = socket.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed during the handshake".into());
        }
        match hs
            .process_bytes(&buf[..n])
            .map_err(|e| format!("handshake: {e:?}"))?
        {
            HandshakeProcessResult::InProgress { response_bytes } => {
                socket
                    .write_all(&response_bytes)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                socket
                    .write_all(&response_bytes)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(remaining_bytes);
            }
        }
    }
}

/// Connects, shakes hands and runs the command exchange until publishing/playing.
async fn open(target: &Target, play: bool) -> Result<(TcpStream, ClientSession), String> {
    let setup = async {
        let mut socket = TcpStream::connect(target.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = socket.set_nodelay(true);
        let rest = handshake(&mut socket).await?;
        let (app, tc, name) = (&target.app, &target.tc_url, &target.name);
        let mut session = if play {
            ClientSession::player(app, tc, name, 16 << 20, 4096)
        } else {
            ClientSession::new(app, tc, name, 16 << 20, 4096)
        };
        session.push(&rest);
        let mut buf = vec![0u8; 16384];
        loop {
            while let Some(ev) = session.poll_event().map_err(|e| e.to_string())? {
                if matches!(ev, ClientEvent::Publishing | ClientEvent::Playing) {
                    let out = session.take_output();
                    socket.write_all(&out).await.map_err(|e| e.to_string())?;
                    return Ok((socket, session));
                }
            }
            let out = session.take_output();
            socket.write_all(&out).await.map_err(|e| e.to_string())?;
            let n = socket.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("server closed the connection".to_owned());
            }
            session.push(&buf[..n]);
        }
    };
    timeout(Duration::from_secs(20), setup)
        .await
        .map_err(|_| "connect/publish/play took over 20 s".to_owned())?
}

/// What a publisher saw.
#[derive(Debug, Default)]
pub struct PublisherStats {
    /// Worst delay of a write behind its realtime schedule since the last `take` (µs).
    pub max_behind_us: AtomicU64,
    pub bytes: AtomicU64,
    pub failed: AtomicU64,
    pub publishing: AtomicU64,
}

/// How a publisher paces the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// In real time, looping for ever; the tags due within the next `batch_ms` go out in
    /// one write (one video frame period at 25 fps keeps the generator cheap per publisher
    /// without changing what the server sees over a second).
    Realtime { batch_ms: u64 },
    /// The first GOP at once, then nothing (the connection stays open, answering pings).
    OneGopThenIdle,
}

/// Publishes `tags` to `target` (stamping video frames) until the connection fails.
pub async fn publish(
    target: Target,
    tags: Arc<Vec<Tag>>,
    pace: Pace,
    stats: Arc<PublisherStats>,
) -> Result<(), String> {
    let result = publish_inner(&target, &tags, pace, &stats).await;
    stats.publishing.store(0, Ordering::Relaxed);
    if result.is_err() {
        stats.failed.fetch_add(1, Ordering::Relaxed);
    }
    result
}

async fn publish_inner(
    target: &Target,
    tags: &[Tag],
    pace: Pace,
    stats: &PublisherStats,
) -> Result<(), String> {
    let (socket, mut session) = open(target, false).await?;
    stats.publishing.store(1, Ordering::Relaxed);
    let (mut rd, mut wr) = socket.into_split();
    let span = tags.last().map_or(0, |t| t.timestamp) + 40;
    let start = Instant::now();
    let mut batch_due = start;
    let mut buf = vec![0u8; 4096];
    let mut keyframes = 0;
    for round in 0u64.. {
        for tag in tags {
            if round > 0 && tag.is_config() {
                continue;
            }
            if tag.is_keyframe() {
                keyframes += 1;
                if pace == Pace::OneGopThenIdle && keyframes == 2 {
                    let out = session.take_output();
                    wr.write_all(&out).await.map_err(|e| e.to_string())?;
                    // Idle: answer pings until the server closes.
                    loop {
                        let n = rd.read(&mut buf).await.map_err(|e| e.to_string())?;
                        if n == 0 {
                            return Err("server closed the idle publisher".into());
                        }
                        session.push(&buf[..n]);
                        while session.poll_event().map_err(|e| e.to_string())?.is_some() {}
                        let out = session.take_output();
                        wr.write_all(&out).await.map_err(|e| e.to_string())?;
                    }
                }
            }
            let ts = round * u64::from(span) + u64::from(tag.timestamp);
            let due = start + Duration::from_millis(ts);
            if let Pace::Realtime { batch_ms } = pace {
                if due > batch_due + Duration::from_millis(batch_ms) {
                    // This tag starts the next batch: send what is queued, then wait for it.
                    flush_batch(&mut session, &mut wr, stats, batch_due).await?;
                    loop {
                        tokio::select! {
                            () = sleep_until(due) => break,
                            r = rd.read(&mut buf) => {
                                let n = r.map_err(|e| e.to_string())?;
                                if n == 0 {
                                    return Err("server closed the publisher".into());
                                }
                                session.push(&buf[..n]);
                                while session.poll_event().map_err(|e| e.to_string())?.is_some() {}
                            }
                        }
                    }
                    batch_due = due;
                }
            }
            let data = stamp_video(tag, now_micros());
            session.send_media(tag.type_id, ts as u32, &data);
        }
    }
    Ok(())
}

/// Writes the queued tags; records how late the write finished against `due`.
async fn flush_batch(
    session: &mut ClientSession,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    stats: &PublisherStats,
    due: Instant,
) -> Result<(), String> {
    let out = session.take_output();
    if out.is_empty() {
        return Ok(());
    }
    wr.write_all(&out).await.map_err(|e| e.to_string())?;
    stats.bytes.fetch_add(out.len() as u64, Ordering::Relaxed);
    let behind = Instant::now().saturating_duration_since(due).as_micros() as u64;
    stats.max_behind_us.fetch_max(behind, Ordering::Relaxed);
    Ok(())
}

/// What a player saw.
#[derive(Debug, Default)]
pub struct PlayerStats {
    pub bytes: AtomicU64,
    pub frames: AtomicU64,
    /// Worst latency (stamp → receipt) after the start-up burst since the last `take` (µs).
    pub max_late_us: AtomicU64,
    /// When the last video frame arrived (µs since the epoch); 0 before the first.
    pub last_frame_us: AtomicU64,
    /// When the first video frame arrived (µs since the epoch); 0 before it.
    pub first_frame_us: AtomicU64,
    pub failed: AtomicU64,
}

/// Plays `target` until the connection ends. Latencies after the start-up burst go to
/// `samples` when given. With a `read_interval`, the player sleeps that long after each read
/// and then takes everything that arrived at once (fewer wake-ups for the generator; the
/// lateness it measures grows by at most that much).
pub async fn play(
    target: Target,
    stats: Arc<PlayerStats>,
    samples: Option<Arc<Mutex<Vec<u64>>>>,
    read_interval: Duration,
) -> Result<(), String> {
    let result = play_inner(&target, &stats, samples.as_deref(), read_interval).await;
    if result.is_err() {
        stats.failed.fetch_add(1, Ordering::Relaxed);
    }
    result
}

async fn play_inner(
    target: &Target,
    stats: &PlayerStats,
    samples: Option<&Mutex<Vec<u64>>>,
    read_interval: Duration,
) -> Result<(), String> {
    let (mut socket, mut session) = open(target, true).await?;
    let mut buf = vec![0u8; 65536];
    let warmup = WARMUP.as_micros() as u64;
    loop {
        while let Some(ev) = session.poll_event().map_err(|e| e.to_string())? {
            let ClientEvent::Media {
                type_id, payload, ..
            } = ev
            else {
                continue;
            };
            stats
                .bytes
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
            if type_id != 9 {
                continue;
            }
            stats.frames.fetch_add(1, Ordering::Relaxed);
            let now = now_micros();
            stats.last_frame_us.store(now, Ordering::Relaxed);
            let first = match stats.first_frame_us.load(Ordering::Relaxed) {
                0 => {
                    stats.first_frame_us.store(now, Ordering::Relaxed);
                    now
                }
                f => f,
            };
            if let Some(stamp) = stamp_of_tag(&payload) {
                if now - first >= warmup {
                    let late = now.saturating_sub(stamp);
                    stats.max_late_us.fetch_max(late, Ordering::Relaxed);
                    if let Some(s) = samples {
                        if let Ok(mut v) = s.lock() {
                            v.push(late);
                        }
                    }
                }
            }
        }
        if session.pending_output() > 0 {
            let out = session.take_output();
            socket.write_all(&out).await.map_err(|e| e.to_string())?;
        }
        let n = socket.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("server closed the player".into());
        }
        session.push(&buf[..n]);
        if !read_interval.is_zero() {
            tokio::time::sleep(read_interval).await;
        }
    }
}

/// Latencies of the newest and oldest frame of each part received (µs).
pub type PartSamples = Arc<Mutex<Vec<(u64, u64)>>>;

/// An LL-HLS client of `index` (a multivariant or media playlist URL): follows
/// `EXT-X-PRELOAD-HINT` with blocking playlist requests and fetches every part, counting the
/// bytes; with `samples`, records for each part the latency of its newest and oldest frame
/// (stamp → part received) as `(newest, oldest)`.
pub async fn ll_hls(index: String, received: Arc<AtomicU64>, samples: Option<PartSamples>) {
    let client = reqwest::Client::new();
    let Some(dir_end) = index.rfind('/') else {
        return;
    };
    let dir = index[..dir_end].to_owned();
    loop {
        let Ok(text) = async { client.get(&index).send().await?.text().await }.await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let media = if text.contains("#EXT-X-STREAM-INF") {
            match text.lines().find(|l| !l.starts_with('#') && !l.is_empty()) {
                Some(m) => format!("{dir}/{m}"),
                None => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        } else {
            index.clone()
        };
        // Part URIs are relative to the media playlist (a session directory by default).
        let media_path = media.split('?').next().unwrap_or("");
        let media_dir = media_path[..media_path.rfind('/').unwrap_or(0)].to_owned();
        let mut next: Option<(String, String)> = None;
        loop {
            let sep = if media.contains('?') { '&' } else { '?' };
            let url = match &next {
                Some((msn, part)) => format!("{media}{sep}_HLS_msn={msn}&_HLS_part={part}"),
                None => media.clone(),
            };
            let Ok(text) = async { client.get(&url).send().await?.text().await }.await else {
                break;
            };
            let Some(hint) = text
                .lines()
                .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\""))
            else {
                break;
            };
            let uri = hint.trim_end_matches('"').to_owned();
            if let Ok(r) = client.get(format!("{media_dir}/{uri}")).send().await {
                if let Ok(b) = r.bytes().await {
                    let now = now_micros();
                    received.fetch_add(b.len() as u64, Ordering::Relaxed);
                    if let Some(s) = &samples {
                        let stamps = stamps_in(&b);
                        if let (Some(first), Some(last)) = (stamps.first(), stamps.last()) {
                            if let Ok(mut v) = s.lock() {
                                v.push((now.saturating_sub(*last), now.saturating_sub(*first)));
                            }
                        }
                    }
                }
            }
            // {run}-part{msn}.{i}.m4s?… → ask for the playlist that lists the part after it.
            let name = uri.split('?').next().unwrap_or("");
            let name = name.split_once('-').map_or(name, |(_, n)| n);
            let Some((msn, part)) = name
                .strip_prefix("part")
                .and_then(|n| n.strip_suffix(".m4s"))
                .and_then(|n| n.split_once('.'))
            else {
                break;
            };
            next = Some((msn.to_owned(), part.to_owned()));
        }
    }
}

/// Percentile `p` (0-100) of `v` (sorted in place).
pub fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * p / 100.0).round() as usize;
    v[i.min(v.len() - 1)]
}
