//! Relays between nodes: a viewer on node B of a stream owned by node A makes B open **one**
//! connection to A for that stream (however many viewers B has); B publishes what arrives
//! into its own hub under the protocol [`RELAY_PROTOCOL`], where its HLS segmenter, RTMP,
//! WHEP and MJPEG viewers take it as from any publisher. The relay closes when its last
//! local viewer has been gone for `relay_linger_ms`, or when the stream ends on A.
//!
//! The connection is an HTTP/1.1 upgrade on A's HTTP port (`GET /internal/v1/relay/{id}`,
//! `Upgrade: ms-relay/1`), so a node needs no second port; it is authenticated with the
//! cluster secret (an HMAC over the node, the stream and the time, valid for a minute).
//! After the upgrade the bytes are [`crate::proto::relay`] messages.
//!
//! LL-HLS is not packaged by B: when a viewer asks B for a relayed stream's HLS, B asks A for
//! its packaging (`HLS_WANT`) and A sends its segmenter's changes (`HLS`) next to the frames,
//! so every node serves the same names, media sequence, discontinuity sequence and bytes, and
//! a viewer (or a cache) can move between nodes. Frames still flow for B's RTMP, WHEP and
//! MJPEG viewers.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::BytesMut;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::node::ClusterNode;
use crate::egress::hls::{HlsStream, MirrorCursor};
use crate::error::HttpError;
use crate::hub::{Event, Hub, HubError, LiveStream, RELAY_PROTOCOL};
use crate::proto::relay::{encode, frame_header, Decoder, Message};

/// The upgrade token. Version 2 added the LL-HLS messages: nodes of both versions do not
/// relay to each other (the owner answers 400, the viewer's node 503).
const PROTOCOL: &str = "ms-relay/2";
/// A signed request is accepted this long around its time.
const CLOCK_SKEW_SECS: u64 = 60;
/// The owner sends a ping after this long without media; the relay gives up after
/// [`READ_TIMEOUT`] without any message.
const PING_EVERY: Duration = Duration::from_secs(2);
const READ_TIMEOUT: Duration = Duration::from_secs(8);
/// Connecting to the owner and its answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// When the publisher leaves, the owner keeps sending its packaging this long at most, until
/// its open segment is closed.
const HLS_DRAIN: Duration = Duration::from_secs(3);

/// The owner's packaging as sent to one relay.
struct HlsFeed {
    stream: Arc<HlsStream>,
    changes: tokio::sync::watch::Receiver<u64>,
    cursor: MirrorCursor,
}

impl HlsFeed {
    /// Encodes what changed since the last call; whether the owner's open segment was closed
    /// (read with the changes, so a drain never stops before sending the last segment). The
    /// segmenter is locked only to collect the changes (shared bytes), not to encode them.
    fn push(&mut self, out: &mut BytesMut) -> bool {
        let mut updates = Vec::new();
        let closed = {
            let seg = self.stream.lock();
            while let Some(update) = seg.mirror_update(&mut self.cursor) {
                updates.push(update);
                if self.cursor.is_complete() {
                    break;
                }
            }
            seg.playlist().open.is_none()
        };
        for update in updates {
            encode(&Message::Hls(Box::new(update)), out);
        }
        closed
    }

    /// Resolves on the next change (never, once the playlist is gone).
    async fn changed(feed: &mut Option<HlsFeed>) {
        if let Some(f) = feed {
            if f.changes.changed().await.is_ok() {
                return;
            }
        }
        std::future::pending().await
    }
}

fn signature(secret: &[u8], node: &str, stream_id: &str, time: u64) -> String {
    // Any key length is accepted by HMAC.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(format!("relay\n{node}\n{stream_id}\n{time}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn verify(secret: &[u8], node: &str, stream_id: &str, time: u64, sig: &str) -> bool {
    let Ok(given) = hex::decode(sig) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret) else {
        return false;
    };
    mac.update(format!("relay\n{node}\n{stream_id}\n{time}").as_bytes());
    mac.verify_slice(&given).is_ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The owner's side: `GET /internal/v1/relay/{id}`.
pub fn router(node: Arc<ClusterNode>, hub: Hub) -> Router {
    Router::new()
        .route("/internal/v1/relay/{id}", get(serve))
        .with_state((node, hub))
}

async fn serve(
    State((node, hub)): State<(Arc<ClusterNode>, Hub)>,
    Path(stream_id): Path<String>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, HttpError> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let from = text("x-ms-node").to_owned();
    let time: u64 = text("x-ms-time").parse().unwrap_or(0);
    if unix_now().abs_diff(time) > CLOCK_SKEW_SECS
        || !verify(
            &node.secret,
            &from,
            &stream_id,
            time,
            text("x-ms-signature"),
        )
    {
        tracing::warn!(from = %from, stream = %stream_id, "cluster: relay request with a bad signature refused");
        return Err(HttpError::unauthorized("bad cluster signature"));
    }
    if !text("upgrade").eq_ignore_ascii_case(PROTOCOL) {
        return Err(HttpError::bad_request(format!(
            "expected Upgrade: {PROTOCOL}"
        )));
    }
    let Some(live) = hub.published(&stream_id) else {
        return Err(HttpError::not_found(format!(
            "stream {stream_id} is not published on this node"
        )));
    };
    // Subscribed now, so the relay starts with the tracks and the GOP cache.
    let sub = live.subscribe_internal();
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let io = hyper_util::rt::TokioIo::new(upgraded);
                let _count = RelayCount::new(&node, &live.id);
                tracing::info!(stream = %live.id, to = %from, "cluster: relay opened");
                let reason = send(io, &node, &live, sub).await;
                tracing::info!(stream = %live.id, to = %from, reason, "cluster: relay closed");
            }
            Err(err) => tracing::warn!(%err, "cluster: relay upgrade failed"),
        }
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(PROTOCOL));
    Ok(resp)
}

/// Counts a relay served (the stream detail's `relays`).
struct RelayCount {
    node: Arc<ClusterNode>,
    stream: String,
}

impl RelayCount {
    fn new(node: &Arc<ClusterNode>, stream: &str) -> Self {
        *node
            .relays_out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(stream.to_owned())
            .or_default() += 1;
        RelayCount {
            node: node.clone(),
            stream: stream.to_owned(),
        }
    }
}

impl Drop for RelayCount {
    fn drop(&mut self) {
        let mut map = self
            .node
            .relays_out
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.stream) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.stream);
            }
        }
    }
}

/// Sends the stream until it ends, the remote node leaves or this node shuts down.
async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    node: &ClusterNode,
    live: &Arc<LiveStream>,
    mut sub: crate::hub::Subscription,
) -> &'static str {
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut out = BytesMut::with_capacity(64 * 1024);
    encode(
        &Message::Hello {
            epoch: live.epoch(),
            node: node.node.clone(),
        },
        &mut out,
    );
    let mut shutdown = node.shutdown.clone();
    let mut decoder = Decoder::new();
    let mut hls: Option<HlsFeed> = None;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !out.is_empty() {
            if wr.write_all(&out).await.is_err() {
                return "remote node gone";
            }
            out.clear();
        }
        tokio::select! {
            ev = sub.recv() => {
                let Some(ev) = ev else {
                    // The last segment, closed by the owner's segmenter, goes to the copy too.
                    if let Some(feed) = &mut hls {
                        let until = tokio::time::Instant::now() + HLS_DRAIN;
                        loop {
                            if feed.push(&mut out) {
                                break;
                            }
                            match tokio::time::timeout_at(until, feed.changes.changed()).await {
                                Ok(Ok(())) => {}
                                _ => break,
                            }
                        }
                    }
                    encode(&Message::End("publisher left".into()), &mut out);
                    let _ = wr.write_all(&out).await;
                    let _ = wr.shutdown().await;
                    return "stream ended";
                };
                push_event(ev, &mut out);
                // Everything already queued goes in the same write.
                while out.len() < 256 * 1024 {
                    match sub.try_recv() {
                        Some(ev) => push_event(ev, &mut out),
                        None => break,
                    }
                }
                ping.reset();
            }
            r = rd.read_buf(decoder.buffer()) => {
                match r {
                    Ok(0) | Err(_) => return "remote node gone",
                    Ok(_) => loop {
                        match decoder.decode() {
                            Ok(Some(Message::Keyframe)) => live.request_keyframe(),
                            Ok(Some(Message::HlsWant(seed))) => {
                                // A fresh copy: everything from the start.
                                let stream = node
                                    .hls
                                    .get()
                                    .and_then(|r| r.get_or_start_seeded(&live.id, seed.as_ref()));
                                hls = stream.map(|stream| HlsFeed {
                                    changes: stream.subscribe_changes(),
                                    stream,
                                    cursor: MirrorCursor::default(),
                                });
                                if let Some(feed) = &mut hls {
                                    feed.push(&mut out);
                                }
                            }
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(_) => return "bad message from the remote node",
                        }
                    },
                }
            }
            _ = HlsFeed::changed(&mut hls) => {
                if let Some(feed) = &mut hls {
                    feed.push(&mut out);
                    ping.reset();
                }
            }
            _ = ping.tick() => encode(&Message::Ping, &mut out),
            _ = crate::shutdown::requested(&mut shutdown) => return "shutting down",
        }
    }
}

fn push_event(ev: Event, out: &mut BytesMut) {
    match ev {
        Event::Tracks(t) => encode(&Message::Tracks((*t).clone()), out),
        Event::Frame(f) => {
            out.extend_from_slice(&frame_header(&f));
            out.extend_from_slice(&f.data);
        }
    }
}

/// The viewer's side: brings `stream_id` into `hub` from the node that owns it. `Ok(true)`
/// once it is live here; `Ok(false)` when no node publishes it.
pub(crate) async fn fetch(
    node: Arc<ClusterNode>,
    hub: &Hub,
    stream_id: &str,
) -> Result<bool, HubError> {
    // One fetch per stream at a time: the viewers that arrive together share one relay.
    let gate = {
        let mut map = node.fetching.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        match map.get(stream_id).and_then(std::sync::Weak::upgrade) {
            Some(g) => g,
            None => {
                let g = Arc::new(tokio::sync::Mutex::new(()));
                map.insert(stream_id.to_owned(), Arc::downgrade(&g));
                g
            }
        }
    };
    let _held = gate.lock().await;
    if hub.get(stream_id).is_some() {
        return Ok(true);
    }
    let unavailable = |e: super::ClusterError| HubError::Unavailable(e.to_string());
    let Some(owner) = node.owner(stream_id).await.map_err(unavailable)? else {
        return Ok(false);
    };
    if owner == node.node {
        // This node's lease with no publisher here: a publisher that just left.
        return Ok(false);
    }
    let Some(url) = node.node_url(&owner).await.map_err(unavailable)? else {
        return Err(HubError::Unavailable(format!(
            "node {owner} owns the stream but is not registered"
        )));
    };
    let (io, hello_epoch, rest) =
        match tokio::time::timeout(CONNECT_TIMEOUT, connect(&node, &url, stream_id)).await {
            Ok(Ok(c)) => c,
            Ok(Err(err)) => {
                tracing::warn!(stream = stream_id, owner = %owner, %err, "cluster: relay failed");
                return Err(HubError::Unavailable(format!(
                    "relay from node {owner}: {err}"
                )));
            }
            Err(_) => {
                return Err(HubError::Unavailable(format!(
                    "relay from node {owner}: no answer"
                )))
            }
        };
    let publisher = match hub.publish(stream_id, RELAY_PROTOCOL) {
        Ok(p) => p,
        // A publisher arrived here meanwhile: it is live either way.
        Err(_) => return Ok(hub.get(stream_id).is_some()),
    };
    publisher.stream().set_epoch(hello_epoch);
    tracing::info!(stream = stream_id, owner = %owner, "cluster: relaying");
    tokio::spawn(receive(
        io,
        rest,
        publisher,
        node.linger,
        node.hls.get().cloned(),
        node.shutdown.clone(),
    ));
    Ok(true)
}

/// Connects, upgrades and reads the owner's HELLO; returns the socket, the owner's epoch
/// and what was read past the HELLO.
async fn connect(
    node: &ClusterNode,
    url: &str,
    stream_id: &str,
) -> Result<(TcpStream, u64, Decoder), String> {
    let authority = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("advertised URL {url:?} is not http://"))?;
    let authority = authority.split('/').next().unwrap_or(authority);
    let mut socket = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let _ = socket.set_nodelay(true);
    let time = unix_now();
    let request = format!(
        "GET /internal/v1/relay/{stream_id} HTTP/1.1\r\nHost: {authority}\r\n\
         Connection: upgrade\r\nUpgrade: {PROTOCOL}\r\nx-ms-node: {}\r\nx-ms-time: {time}\r\n\
         x-ms-signature: {}\r\n\r\n",
        node.node,
        signature(&node.secret, &node.node, stream_id, time)
    );
    socket
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    // The response head, then relay messages.
    let mut decoder = Decoder::new();
    let head_end = loop {
        let buf = decoder.buffer();
        if buf.len() > 16 * 1024 {
            return Err("response head too long".into());
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if socket.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed before answering".into());
        }
    };
    let head = decoder.buffer().split_to(head_end);
    let status_line = String::from_utf8_lossy(&head);
    let status = status_line.split_whitespace().nth(1).unwrap_or("");
    if status != "101" {
        return Err(format!(
            "answered {}",
            status_line.lines().next().unwrap_or("").trim()
        ));
    }
    loop {
        match decoder.decode().map_err(|e| e.to_string())? {
            Some(Message::Hello { epoch, .. }) => return Ok((socket, epoch, decoder)),
            Some(_) => return Err("no hello".into()),
            None => {
                if socket
                    .read_buf(decoder.buffer())
                    .await
                    .map_err(|e| e.to_string())?
                    == 0
                {
                    return Err("closed before the hello".into());
                }
            }
        }
    }
}

/// Feeds the local hub from the relay until the stream ends on the owner, the owner goes
/// silent, or nobody here has watched for `linger`.
async fn receive(
    socket: TcpStream,
    mut decoder: Decoder,
    publisher: crate::hub::Publisher,
    linger: Duration,
    hls: Option<Arc<crate::egress::hls::HlsRegistry>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let id = publisher.stream().id.clone();
    let (mut rd, mut wr) = socket.into_split();
    let mut check = tokio::time::interval(Duration::from_millis(500));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unwatched_since: Option<tokio::time::Instant> = None;
    let mut deadline = tokio::time::Instant::now() + READ_TIMEOUT;
    let mut out = BytesMut::new();
    // After asking for a fresh copy, the updates already on their way are skipped.
    let mut awaiting_reset = false;
    let reason: String = 'outer: loop {
        loop {
            match decoder.decode() {
                Ok(Some(Message::Tracks(t))) => publisher.set_tracks(Arc::new(t)),
                Ok(Some(Message::Frame(f))) => publisher.push(f),
                Ok(Some(Message::Hls(update))) => {
                    let Some(hls) = &hls else { continue };
                    if awaiting_reset && !update.reset {
                        continue;
                    }
                    awaiting_reset = false;
                    if let Err(err) = hls.apply_mirror(&id, *update) {
                        if hls.is_published_here(&id) {
                            continue; // Taken over here; the relay is ending.
                        }
                        // Out of step (a bug, or a playlist replaced here): start over.
                        tracing::warn!(stream = %id, %err, "cluster: asking the owner for a fresh copy");
                        encode(&Message::HlsWant(hls.continuation(&id)), &mut out);
                        awaiting_reset = true;
                    }
                }
                Ok(Some(Message::End(why))) => break 'outer format!("ended on the owner: {why}"),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(err) => break 'outer format!("bad message: {err}"),
            }
        }
        if !out.is_empty() {
            if wr.write_all(&out).await.is_err() {
                break "owner gone".into();
            }
            out.clear();
        }
        tokio::select! {
            r = rd.read_buf(decoder.buffer()) => match r {
                Ok(0) => break "owner closed the relay".into(),
                Err(err) => break format!("read: {err}"),
                Ok(_) => deadline = tokio::time::Instant::now() + READ_TIMEOUT,
            },
            _ = tokio::time::sleep_until(deadline) => break "owner silent".into(),
            _ = publisher.keyframe_requested() => {
                encode(&Message::Keyframe, &mut out);
            }
            _ = publisher.packaging_wanted() => {
                let seed = hls.as_ref().and_then(|h| h.continuation(&id));
                encode(&Message::HlsWant(seed), &mut out);
            }
            _ = check.tick() => {
                if publisher.stream().viewer_count() > 0 {
                    unwatched_since = None;
                } else {
                    let since = *unwatched_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= linger {
                        break "no viewers left".into();
                    }
                }
            }
            _ = publisher.stopped() => break "replaced by a publisher on this node".into(),
            _ = crate::shutdown::requested(&mut shutdown) => break "shutting down".into(),
        }
    };
    tracing::info!(stream = %id, reason, "cluster: relay ended");
    drop(publisher);
    if let Some(hls) = &hls {
        hls.mirror_detached(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_node_stream_time_and_secret() {
        let s = signature(b"k", "a", "str_1", 100);
        assert!(verify(b"k", "a", "str_1", 100, &s));
        assert!(!verify(b"k", "b", "str_1", 100, &s));
        assert!(!verify(b"k", "a", "str_2", 100, &s));
        assert!(!verify(b"k", "a", "str_1", 101, &s));
        assert!(!verify(b"other", "a", "str_1", 100, &s));
        assert!(!verify(b"k", "a", "str_1", 100, "zz"));
    }
}
