//! Restream: push a live stream to YouTube, Twitch, Facebook or any RTMP(S) server.
//!
//! Each enabled destination of a live stream gets one pusher task: it subscribes to the hub
//! (an internal, bounded queue — a slow destination drops to the next keyframe there and never
//! slows the publisher or anyone else), waits for the tracks, connects (TCP, TLS for
//! `rtmps://`, RTMP handshake from `rml_rtmp`, then our [`ClientSession`]), sends metadata and
//! sequence headers and forwards every frame as an FLV tag without touching its payload.
//!
//! A failed connection is retried with capped exponential backoff and jitter; after
//! `max_attempts` consecutive failures the destination goes `failed` and a `restream.failed`
//! webhook is sent. Timestamps run on one timeline per live session, so a destination sees
//! them continue across reconnects (after a reconnect we resume at the next keyframe newer
//! than the last frame sent). Opus audio (WHIP, Enhanced RTMP) goes to a destination that
//! announces Enhanced RTMP as it is, and to a legacy one as AAC from the stream's shared
//! transcoder ([`crate::egress::transcode`]); with `[transcode] audio = false` the legacy
//! destination fails with a clear `last_error` instead of silently sending video only.
//!
//! Destination URLs and keys are secrets: logs and the API only ever see [`mask_url`] and
//! [`key_hint`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::timeout;

use crate::config::RestreamConfig;
use crate::egress::rtmp_play::{FlvMuxer, PlayOutput};
use crate::egress::transcode::{next_frame, AudioTranscoders};
use crate::events::EventBus;
use crate::hub::{Event, Hub, LiveStream, Subscription};
use crate::media::audio::Direction;
use crate::media::{CodecConfig, Frame, TrackKind, Tracks};
use crate::proto::rtmp::client::{ClientEvent, ClientSession};
use crate::store::{RestreamRow, Store};

/// Platforms with a preset server URL.
pub const PLATFORMS: &[&str] = &["youtube", "twitch", "facebook", "custom"];

/// Largest message accepted from a destination (they send only small control messages).
const MAX_INBOUND_MESSAGE: u32 = 256 * 1024;

/// The ingest URL of a platform preset (`None` for `custom`).
pub fn preset_url(platform: &str) -> Option<&'static str> {
    match platform {
        "youtube" => Some("rtmps://a.rtmps.youtube.com:443/live2"),
        "twitch" => Some("rtmps://live.twitch.tv:443/app"),
        "facebook" => Some("rtmps://live-api-s.facebook.com:443/rtmp"),
        _ => None,
    }
}

/// Where and how to connect, derived from a destination's URL and key.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// `rtmps://`.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port (1935 / 443 by default).
    pub port: u16,
    /// RTMP application (the URL path, with its query).
    pub app: String,
    /// `tcUrl` sent in `connect`.
    pub tc_url: String,
    /// Publishing name: the stream key (or the URL's last path segment without a key).
    pub stream_name: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("tls", &self.tls)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Parses an `rtmp://` or `rtmps://` URL. With an empty `key` the URL's last path segment is
/// the stream name (`rtmp://host/app/name`).
///
/// # Errors
/// A message naming what is wrong (never echoing the URL, which may hold credentials).
pub fn parse_target(raw: &str, key: &str) -> Result<Target, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("not a valid URL: {e}"))?;
    let tls = match url.scheme() {
        "rtmp" => false,
        "rtmps" => true,
        other => return Err(format!("scheme must be rtmp or rtmps, not {other}")),
    };
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("the URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port().unwrap_or(if tls { 443 } else { 1935 });
    let mut path = url.path().trim_matches('/').to_owned();
    let stream_name = if key.is_empty() {
        let (app, name) = path
            .rsplit_once('/')
            .ok_or("without a key, the URL must end with /app/stream_name")?;
        let name = name.to_owned();
        path = app.to_owned();
        name
    } else {
        key.to_owned()
    };
    if path.is_empty() {
        return Err("the URL has no application path (rtmp://host/app)".into());
    }
    if stream_name.is_empty() {
        return Err("the stream name is empty".into());
    }
    let app = match url.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let scheme = url.scheme();
    let tc_url = match url.port() {
        Some(p) => format!(
            "{scheme}://{}:{p}/{app}",
            url.host_str().unwrap_or_default()
        ),
        None => format!("{scheme}://{}/{app}", url.host_str().unwrap_or_default()),
    };
    Ok(Target {
        tls,
        host,
        port,
        app,
        tc_url,
        stream_name,
    })
}

pub use crate::redact::{key_hint, mask_url};

/// Wait before attempt `attempt + 1` (after `attempt` ≥ 1 failures): `initial · 2^(attempt-1)`
/// capped at `max`, with "equal jitter" — half fixed, half scaled by `jitter` in `0..1`.
pub fn backoff(attempt: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(20);
    let full = initial.saturating_mul(1u32 << exp).min(max);
    let half = full / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// Whether RTMP can carry these tracks: `Ok(true)` to send, `Ok(false)` when nothing can be
/// sent yet (a camera announces its JPEG track before the H.264 made from it), `Err` with the
/// reason the destination fails. Which codecs the destination takes is [`check_destination`]'s.
pub fn check_tracks(tracks: &Tracks) -> Result<bool, String> {
    // A camera's JPEG track is not sent; its H.264 track is.
    Ok(tracks.list.iter().any(|t| t.codec.is_packaged()))
}

/// The Enhanced RTMP FourCC of a codec legacy FLV cannot carry.
fn enhanced_fourcc(codec: &CodecConfig) -> Option<&'static str> {
    match codec {
        CodecConfig::Hevc(_) => Some("hvc1"),
        CodecConfig::Av1(_) => Some("av01"),
        CodecConfig::Vp9(_) => Some("vp09"),
        CodecConfig::Opus(_) => Some("Opus"),
        CodecConfig::H264(_) | CodecConfig::Aac(_) | CodecConfig::Jpeg { .. } => None,
    }
}

/// Whether a destination that announced the FourCCs `accepts` says yes to can take these
/// tracks: H.264 and AAC always; HEVC, AV1, VP9 and Opus only over Enhanced RTMP, which the
/// destination announces in its `connect` reply. A legacy destination would receive video
/// it cannot decode, so it fails with the reason instead.
pub fn check_destination(tracks: &Tracks, accepts: impl Fn(&str) -> bool) -> Result<(), String> {
    for t in &tracks.list {
        if let Some(fourcc) = enhanced_fourcc(&t.codec) {
            if !accepts(fourcc) {
                return Err(format!(
                    "the destination does not announce Enhanced RTMP support for {} ({fourcc}) \
                     in its connect reply; a legacy RTMP server takes H.264 and AAC only, so the \
                     stream's {} {} is not sent",
                    t.codec.name(),
                    t.codec.name(),
                    if t.kind() == TrackKind::Video {
                        "video"
                    } else {
                        "audio"
                    },
                ));
            }
        }
    }
    Ok(())
}

/// Why a source without an RTMP-capable track fails.
const NOTHING_TO_SEND: &str = "the stream has no track RTMP can carry";

/// Lifecycle state of a destination, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum State {
    /// Enabled, stream not live.
    Idle,
    /// Connecting for the first time in this live session.
    Starting,
    /// Publishing.
    Active,
    /// Lost or refused; waiting or reconnecting.
    Retrying,
    /// Gave up (attempts exhausted, or the source cannot be sent).
    Failed,
    /// Disabled.
    Stopped,
}

impl State {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Starting => "starting",
            State::Active => "active",
            State::Retrying => "retrying",
            State::Failed => "failed",
            State::Stopped => "stopped",
        }
    }
}

/// What the API shows about a destination's pusher.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// Current state.
    pub state: State,
    /// The last failure.
    pub last_error: Option<String>,
    /// Bytes written to the destination in this live session.
    pub bytes_out: u64,
    /// Outgoing bitrate over the last second.
    pub bitrate_bps: u64,
    /// When pushing first became active in this live session.
    pub started_at: Option<SystemTime>,
    /// Reconnections after a failure.
    pub reconnects: u32,
    /// Consecutive failed attempts.
    pub attempts: u32,
    /// Frames the hub dropped because the destination was too slow.
    pub frames_dropped: u64,
}

/// Shared, updated by the pusher, read by the API.
#[derive(Debug)]
struct Shared {
    status: Mutex<Status>,
    bytes_out: AtomicU64,
}

impl Shared {
    fn new(state: State) -> Self {
        Shared {
            status: Mutex::new(Status {
                state,
                last_error: None,
                bytes_out: 0,
                bitrate_bps: 0,
                started_at: None,
                reconnects: 0,
                attempts: 0,
                frames_dropped: 0,
            }),
            bytes_out: AtomicU64::new(0),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn snapshot(&self) -> Status {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        s.bytes_out = self.bytes_out.load(Ordering::Relaxed);
        s
    }
}

/// Why a pusher is asked to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Run,
    /// Disabled or deleted through the API, or replaced by a new configuration.
    Disabled,
    /// The stream ended.
    Ended,
}

/// A running pusher.
#[derive(Debug)]
struct Running {
    stop: watch::Sender<Stop>,
    live: std::sync::Weak<LiveStream>,
}

#[derive(Debug)]
struct Entry {
    stream_id: String,
    shared: Arc<Shared>,
    running: Option<Running>,
}

/// Every destination's pusher.
#[derive(Debug)]
pub struct Restreamer {
    /// Opus → AAC for destinations that take legacy FLV only.
    transcoders: Arc<AudioTranscoders>,
    store: Store,
    config: RestreamConfig,
    events: EventBus,
    hub: Hub,
    shutdown: watch::Receiver<bool>,
    tls: OnceLock<Result<Arc<tokio_rustls::rustls::ClientConfig>, String>>,
    entries: Mutex<HashMap<String, Entry>>,
    /// Where destinations may be.
    policy: Arc<crate::outbound::OutboundPolicy>,
}

impl Restreamer {
    /// A restreamer; pushers end when `shutdown` turns true.
    pub fn new(
        transcoders: Arc<AudioTranscoders>,
        store: Store,
        config: RestreamConfig,
        events: EventBus,
        hub: Hub,
        policy: Arc<crate::outbound::OutboundPolicy>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(Restreamer {
            transcoders,
            store,
            config,
            events,
            hub,
            policy,
            shutdown,
            tls: OnceLock::new(),
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The audio transcoders this server shares between restream and WHEP.
    pub fn transcoders(&self) -> &Arc<AudioTranscoders> {
        &self.transcoders
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stream went live: start its enabled destinations.
    pub fn on_published(self: &Arc<Self>, live: Arc<LiveStream>) {
        let this = self.clone();
        tokio::spawn(async move {
            match this.store.restreams_of(&live.id).await {
                Ok(rows) => {
                    for row in rows.into_iter().filter(|r| r.enabled) {
                        this.start(row, live.clone());
                    }
                }
                Err(err) => {
                    tracing::error!(stream = %live.id, %err, "restream: cannot load destinations")
                }
            }
        });
    }

    /// A stream ended: its pushers finish (also those waiting to retry).
    pub fn on_unpublished(&self, stream_id: &str) {
        for entry in self.lock().values() {
            if entry.stream_id == stream_id {
                if let Some(r) = &entry.running {
                    let _ = r.stop.send(Stop::Ended);
                }
            }
        }
    }

    /// After a create or update: (re)start the destination if it is enabled and its stream
    /// is live, stop it if it is disabled.
    pub fn apply(self: &Arc<Self>, row: RestreamRow, restart: bool) {
        if !row.enabled {
            self.stop(&row.id, false);
            return;
        }
        // Pushed by the node that owns the stream, never from a relay of it.
        let Some(live) = self.hub.published(&row.stream_id) else {
            return;
        };
        if restart {
            self.stop(&row.id, false);
        }
        self.start(row, live);
    }

    /// The stream is private now: destinations without `allow_private_source` that are
    /// pushing it restart, and their next attempt refuses to push.
    pub fn enforce_privacy(self: &Arc<Self>, stream_id: &str) {
        let this = self.clone();
        let stream_id = stream_id.to_owned();
        tokio::spawn(async move {
            let Ok(rows) = this.store.restreams_of(&stream_id).await else {
                return;
            };
            for row in rows
                .into_iter()
                .filter(|r| r.enabled && !r.allow_private_source)
            {
                let running = this
                    .lock()
                    .get(&row.id)
                    .is_some_and(|e| e.running.is_some());
                if running {
                    this.apply(row, true);
                }
            }
        });
    }

    /// Stops a destination's pusher; `forget` also drops its status (deleted).
    pub fn stop(&self, id: &str, forget: bool) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(id) {
            if let Some(r) = entry.running.take() {
                let _ = r.stop.send(Stop::Disabled);
            }
            entry.shared.update(|s| {
                if s.state != State::Failed {
                    s.state = State::Stopped;
                }
            });
        }
        if forget {
            entries.remove(id);
        }
    }

    /// Every destination that ran since the server started: (id, stream id, status).
    pub fn all(&self) -> Vec<(String, String, Status)> {
        self.lock()
            .iter()
            .map(|(id, e)| (id.clone(), e.stream_id.clone(), e.shared.snapshot()))
            .collect()
    }

    /// The pusher status of a destination, if it ran since the server started.
    pub fn status(&self, id: &str) -> Option<Status> {
        self.lock().get(id).map(|e| e.shared.snapshot())
    }

    /// Every destination pushing (or trying to) from this node, with its status: what a
    /// cluster node reports, so that every node's API shows it.
    pub fn running_statuses(&self) -> Vec<(String, Status)> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.running.is_some())
            .map(|(id, e)| (id.clone(), e.shared.snapshot()))
            .collect()
    }

    /// Starts a pusher for `row` on `live` unless one already runs for this live session.
    fn start(self: &Arc<Self>, row: RestreamRow, live: Arc<LiveStream>) {
        let mut entries = self.lock();
        let entry = entries.entry(row.id.clone()).or_insert_with(|| Entry {
            stream_id: row.stream_id.clone(),
            shared: Arc::new(Shared::new(State::Idle)),
            running: None,
        });
        if let Some(r) = &entry.running {
            let same = r.live.upgrade().is_some_and(|l| Arc::ptr_eq(&l, &live));
            if same && !r.stop.is_closed() {
                return;
            }
            let _ = r.stop.send(Stop::Disabled);
        }
        // A new live session: fresh counters.
        let shared = Arc::new(Shared::new(State::Starting));
        entry.shared = shared.clone();
        let (stop_tx, stop_rx) = watch::channel(Stop::Run);
        entry.running = Some(Running {
            stop: stop_tx,
            live: Arc::downgrade(&live),
        });
        drop(entries);
        if !row.secrets_ok {
            let reason = "the stored URL and key cannot be decrypted (secrets.key changed): \
                          set them again with PATCH";
            self.fail(&row, &shared, reason.into());
            return;
        }
        let target = match parse_target(&row.url, &row.key) {
            Ok(t) => t,
            Err(reason) => {
                self.fail(&row, &shared, reason);
                return;
            }
        };
        let pusher = Pusher {
            restreamer: self.clone(),
            row,
            target,
            shared,
            stop: stop_rx,
            muxer: FlvMuxer::default(),
            last_sent_ms: None,
        };
        tokio::spawn(pusher.run(live));
    }

    fn fail(&self, row: &RestreamRow, shared: &Shared, reason: String) {
        tracing::warn!(restream = %row.id, stream = %row.stream_id, url = %row.url_masked, %reason, "restream: failed");
        let attempts = {
            let mut attempts = 0;
            shared.update(|s| {
                s.state = State::Failed;
                s.last_error = Some(reason.clone());
                attempts = s.attempts;
            });
            attempts
        };
        self.events.publish(
            "restream.failed",
            serde_json::json!({ "restream": {
                "id": row.id, "stream_id": row.stream_id, "name": row.name,
                "platform": row.platform, "url": row.url_masked, "last_error": reason,
                "attempts": attempts,
            }}),
        );
    }

    fn tls(&self) -> Result<tokio_rustls::TlsConnector, String> {
        self.tls
            .get_or_init(|| tls_config(&self.config.ca_file))
            .clone()
            .map(tokio_rustls::TlsConnector::from)
    }
}

/// Builds the TLS client: webpki roots, the system bundle if present, and `ca_file`.
fn tls_config(ca_file: &str) -> Result<Arc<tokio_rustls::rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    use tokio_rustls::rustls;

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let system = "/etc/ssl/certs/ca-certificates.crt";
    if let Ok(certs) = CertificateDer::pem_file_iter(system) {
        let (added, _) = roots.add_parsable_certificates(certs.flatten());
        tracing::debug!(added, "restream: system CA bundle loaded");
    }
    if !ca_file.is_empty() {
        let certs = CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| format!("restream.ca_file: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("restream.ca_file: {e}"))?;
        let (added, ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!(
                "restream.ca_file holds no usable certificate ({ignored} ignored)"
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How one connection ended.
enum Outcome {
    /// The stream ended (pusher done).
    StreamEnded,
    /// Disabled, replaced or server shutdown.
    Stopped,
    /// The source cannot be sent; no retry.
    Unsupported(String),
    /// Connection failed or broke; `was_active` if it had been publishing.
    Failed { error: String, was_active: bool },
}

struct Pusher {
    restreamer: Arc<Restreamer>,
    row: RestreamRow,
    target: Target,
    shared: Arc<Shared>,
    stop: watch::Receiver<Stop>,
    /// One muxer per live session, so timestamps continue across reconnects.
    muxer: FlvMuxer,
    /// Media time (ms) of the last frame sent, to resume after it.
    last_sent_ms: Option<i64>,
}

impl Pusher {
    async fn run(mut self, live: Arc<LiveStream>) {
        let cfg = self.restreamer.config.clone();
        let mut shutdown = self.restreamer.shutdown.clone();
        let (id, stream) = (self.row.id.clone(), self.row.stream_id.clone());
        let url = self.row.url_masked.clone();
        let mut failures = 0u32;
        loop {
            let outcome = tokio::select! {
                o = self.attempt(&live) => o,
                _ = crate::shutdown::requested(&mut shutdown) => Outcome::Stopped,
            };
            match outcome {
                Outcome::StreamEnded => {
                    tracing::info!(restream = %id, stream = %stream, %url, "restream: stream ended");
                    self.shared.update(|s| s.state = State::Idle);
                    return;
                }
                Outcome::Stopped => {
                    tracing::info!(restream = %id, stream = %stream, %url, "restream: stopped");
                    if *self.stop.borrow() == Stop::Ended {
                        self.shared.update(|s| s.state = State::Idle);
                    }
                    return;
                }
                Outcome::Unsupported(reason) => {
                    self.restreamer.fail(&self.row, &self.shared, reason);
                    return;
                }
                Outcome::Failed { error, was_active } => {
                    if was_active {
                        failures = 0;
                    }
                    failures += 1;
                    self.shared.update(|s| {
                        s.attempts = failures;
                        s.last_error = Some(error.clone());
                        s.bitrate_bps = 0;
                    });
                    if cfg.max_attempts > 0 && failures >= cfg.max_attempts {
                        let reason = format!("{error} (gave up after {failures} attempts)");
                        self.restreamer.fail(&self.row, &self.shared, reason);
                        return;
                    }
                    let wait = backoff(
                        failures,
                        Duration::from_millis(cfg.backoff_initial_ms),
                        Duration::from_millis(cfg.backoff_max_ms),
                        rand::random::<f64>(),
                    );
                    tracing::warn!(restream = %id, stream = %stream, %url, %error, attempt = failures,
                        retry_in_ms = wait.as_millis() as u64, "restream: connection failed; retrying");
                    self.shared.update(|s| s.state = State::Retrying);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.stop.changed() => {}
                        _ = crate::shutdown::requested(&mut shutdown) => return,
                    }
                    match *self.stop.borrow() {
                        Stop::Run => {}
                        Stop::Ended => {
                            self.shared.update(|s| s.state = State::Idle);
                            return;
                        }
                        Stop::Disabled => return,
                    }
                    self.shared.update(|s| s.reconnects += 1);
                }
            }
        }
    }

    /// One connection: wait for tracks, connect, publish, forward until something ends it.
    async fn attempt(&mut self, live: &Arc<LiveStream>) -> Outcome {
        if *self.stop.borrow() != Stop::Run {
            return self.stopped();
        }
        let mut sub = live.subscribe_internal();
        let cfg = self.restreamer.config.clone();
        // Tracks first: there is no point connecting for a source RTMP cannot carry. A camera
        // adds its H.264 track shortly after its JPEG track; wait for it a while.
        let wait_for_tracks = tokio::time::sleep(Duration::from_millis(cfg.connect_timeout_ms));
        tokio::pin!(wait_for_tracks);
        let tracks = loop {
            tokio::select! {
                ev = sub.recv() => match ev {
                    Some(Event::Tracks(t)) => match check_tracks(&t) {
                        Ok(true) => break t,
                        Ok(false) => {}
                        Err(reason) => return Outcome::Unsupported(reason),
                    },
                    Some(Event::Frame(_)) => {}
                    None => return Outcome::StreamEnded,
                },
                _ = &mut wait_for_tracks => return Outcome::Unsupported(NOTHING_TO_SEND.into()),
                _ = self.stop.changed() => return self.stopped(),
            }
        };
        // A stream made private after the destination was added is not pushed out unless
        // the destination says so.
        if !self.row.allow_private_source {
            // Fail closed: a stream whose privacy cannot be read is not pushed out.
            let private = !matches!(
                self.restreamer.store.get_stream(&self.row.stream_id).await,
                Ok(Some(s)) if s.privacy == crate::store::Privacy::Public
            );
            if private {
                return Outcome::Unsupported(
                    "the stream is private and this destination does not set allow_private_source"
                        .into(),
                );
            }
        }
        let connect = timeout(
            Duration::from_millis(cfg.connect_timeout_ms),
            connect(self.restreamer.clone(), self.target.clone()),
        );
        let (mut io, mut session) = tokio::select! {
            r = connect => match r {
                Ok(Ok(pair)) => pair,
                Ok(Err(error)) => return Outcome::Failed { error, was_active: false },
                // The same words as a refused connection: a timeout must not tell a filtered
                // port from a closed one.
                Err(_) => return Outcome::Failed {
                    error: format!(
                        "could not connect: no RTMP server answered at {}:{}",
                        self.target.host, self.target.port
                    ),
                    was_active: false,
                },
            },
            _ = self.stop.changed() => return self.stopped(),
        };
        if let Err(reason) = self.destination_tracks(&tracks, &session) {
            let _ = timeout(Duration::from_millis(500), io.shutdown()).await;
            return Outcome::Unsupported(reason);
        }
        tracing::info!(restream = %self.row.id, stream = %self.row.stream_id, url = %self.row.url_masked, "restream: publishing");
        self.shared.update(|s| {
            s.state = State::Active;
            s.attempts = 0;
            s.started_at.get_or_insert_with(SystemTime::now);
        });
        let result = self
            .forward(live, &mut io, &mut session, &mut sub, tracks)
            .await;
        let dropped = sub.dropped();
        self.shared.update(|s| s.frames_dropped += dropped);
        if matches!(result, Outcome::StreamEnded | Outcome::Stopped) {
            // Say goodbye properly so the destination ends the broadcast at once.
            session.unpublish();
            let out = session.take_output();
            let _ = timeout(Duration::from_millis(500), io.write_all(&out)).await;
            let _ = timeout(Duration::from_millis(500), io.shutdown()).await;
        }
        result
    }

    /// The tracks this destination gets: the stream's, with Opus transcoded to AAC when the
    /// destination does not announce Enhanced RTMP Opus (and transcoding is on); whether that
    /// transcoding is needed. An error names a codec the destination cannot take.
    fn destination_tracks(
        &self,
        tracks: &Arc<Tracks>,
        session: &ClientSession,
    ) -> Result<(Arc<Tracks>, bool), String> {
        if !session.server_accepts("Opus") {
            let aac = self
                .restreamer
                .transcoders
                .output_track(tracks, Direction::OpusToAac);
            if let Some(aac) = aac {
                let list = tracks
                    .list
                    .iter()
                    .map(|t| {
                        if t.id == aac.id {
                            aac.clone()
                        } else {
                            t.clone()
                        }
                    })
                    .collect();
                let converted = Arc::new(Tracks { list });
                check_destination(&converted, |f| session.server_accepts(f))?;
                return Ok((converted, true));
            }
        }
        check_destination(tracks, |f| session.server_accepts(f))?;
        Ok((tracks.clone(), false))
    }

    fn stopped(&self) -> Outcome {
        match *self.stop.borrow() {
            Stop::Ended => Outcome::StreamEnded,
            _ => Outcome::Stopped,
        }
    }

    /// Forwards hub events until the stream ends, the pusher is stopped or the connection
    /// breaks.
    async fn forward(
        &mut self,
        live: &Arc<LiveStream>,
        io: &mut Box<dyn Io>,
        session: &mut ClientSession,
        sub: &mut Subscription,
        tracks: Arc<Tracks>,
    ) -> Outcome {
        let write_timeout = Duration::from_millis(self.restreamer.config.write_timeout_ms);
        let shared = self.shared.clone();
        let mut has_video = tracks.list.iter().any(|t| t.kind() == TrackKind::Video);
        let mut waiting_keyframe = true;
        let (mut current, mut transcode) = match self.destination_tracks(&tracks, session) {
            Ok(v) => v,
            Err(reason) => return Outcome::Unsupported(reason),
        };
        // Opus arrives as AAC from the stream's shared transcoder, joined with the hub.
        let mut feed = if transcode {
            self.restreamer.transcoders.feed(live, Direction::OpusToAac)
        } else {
            None
        };
        self.muxer.set_independent_kinds(transcode);
        let mut pending = self.muxer.on_tracks(current.clone());
        // Frames waiting for the transcoded audio to catch up (in hub order).
        let mut held: std::collections::VecDeque<Frame> = std::collections::VecDeque::new();
        let mut read_buf = BytesMut::with_capacity(4096);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let (mut last_bytes, mut last_tick) =
            (shared.bytes_out.load(Ordering::Relaxed), Instant::now());
        loop {
            for out in pending.drain(..) {
                out.send_to(session);
            }
            if session.pending_output() > 0 {
                let out = session.take_output();
                match timeout(write_timeout, io.write_all(&out)).await {
                    Ok(Ok(())) => {
                        shared
                            .bytes_out
                            .fetch_add(out.len() as u64, Ordering::Relaxed);
                        live.add_bytes_out(out.len() as u64);
                    }
                    Ok(Err(e)) => return broken(format!("write failed: {e}")),
                    Err(_) => {
                        return broken(format!(
                            "the destination took no data for {} ms",
                            write_timeout.as_millis()
                        ))
                    }
                }
            }
            tokio::select! {
                ev = sub.recv() => match ev {
                    None => return Outcome::StreamEnded,
                    Some(Event::Tracks(t)) => {
                        match check_tracks(&t) {
                            Ok(true) => {}
                            Ok(false) => return Outcome::Unsupported(NOTHING_TO_SEND.into()),
                            Err(reason) => return Outcome::Unsupported(reason),
                        }
                        let (converted, needs) = match self.destination_tracks(&t, session) {
                            Ok(v) => v,
                            Err(reason) => return Outcome::Unsupported(reason),
                        };
                        if needs && feed.is_none() {
                            feed = self.restreamer.transcoders.feed(live, Direction::OpusToAac);
                        } else if !needs {
                            feed = None;
                            for v in held.drain(..) {
                                pending.extend(self.take_frame(&current, has_video, &mut waiting_keyframe, &v));
                            }
                        }
                        transcode = needs;
                        self.muxer.set_independent_kinds(needs);
                        has_video = t.list.iter().any(|t| t.kind() == TrackKind::Video);
                        current = converted.clone();
                        pending.extend(self.muxer.on_tracks(converted));
                    }
                    Some(Event::Frame(f)) => {
                        if !transcode {
                            if let Some(tag) = self.take_frame(&current, has_video, &mut waiting_keyframe, &f) {
                                pending.push(tag);
                            }
                            continue;
                        }
                        // The source Opus; its AAC comes from the feed.
                        let Some(track) = current.get(f.track) else { continue };
                        if matches!(track.codec, CodecConfig::Aac(_)) {
                            continue;
                        }
                        // A transcoder that ended (its stream's session, a codec failure)
                        // is joined again: a new one starts.
                        if feed.is_none() {
                            feed = self.restreamer.transcoders.feed(live, Direction::OpusToAac);
                        }
                        // The AAC runs ~100 ms behind: video waits for it, so the tags go
                        // out in time order (a lone video waits at most HOLD_MS). A timeline
                        // that goes back sends out what waits first.
                        let at = dts_ms(&current, &f).unwrap_or(0);
                        if held.back().is_some_and(|b| dts_ms(&current, b).unwrap_or(0) > at) {
                            for v in held.drain(..) {
                                pending.extend(self.take_frame(&current, has_video, &mut waiting_keyframe, &v));
                            }
                        }
                        held.push_back(f);
                        while let Some(first) = held.front() {
                            let span = at - dts_ms(&current, first).unwrap_or(at);
                            if span <= HOLD_MS && held.len() <= MAX_HELD {
                                break;
                            }
                            if let Some(v) = held.pop_front() {
                                pending.extend(self.take_frame(&current, has_video, &mut waiting_keyframe, &v));
                            }
                        }
                    }
                },
                aac = next_frame(&mut feed) => {
                    let Some(a) = aac else {
                        // The transcoder ended: what waits goes out (the next frame joins
                        // a new one).
                        for v in held.drain(..) {
                            pending.extend(self.take_frame(&current, has_video, &mut waiting_keyframe, &v));
                        }
                        continue;
                    };
                    let at = dts_ms(&current, &a).unwrap_or(i64::MAX);
                    while held.front().is_some_and(|v| dts_ms(&current, v).unwrap_or(0) <= at) {
                        if let Some(v) = held.pop_front() {
                            pending.extend(self.take_frame(&current, has_video, &mut waiting_keyframe, &v));
                        }
                    }
                    pending.extend(self.take_frame(&current, has_video, &mut waiting_keyframe, &a));
                }
                r = io.read_buf(&mut read_buf) => {
                    match r {
                        Ok(0) => return broken("closed by the destination".into()),
                        Ok(_) => {
                            session.push(&read_buf);
                            read_buf.clear();
                            loop {
                                match session.poll_event() {
                                    Ok(Some(_)) => {}
                                    Ok(None) => break,
                                    Err(e) => return broken(e.to_string()),
                                }
                            }
                        }
                        Err(e) => return broken(format!("read failed: {e}")),
                    }
                }
                _ = tick.tick() => {
                    let bytes = shared.bytes_out.load(Ordering::Relaxed);
                    let secs = last_tick.elapsed().as_secs_f64().max(0.001);
                    let bps = ((bytes - last_bytes) as f64 * 8.0 / secs) as u64;
                    let dropped = sub.dropped();
                    shared.update(|s| { s.bitrate_bps = bps; s.frames_dropped = s.frames_dropped.max(dropped); });
                    (last_bytes, last_tick) = (bytes, Instant::now());
                }
                _ = self.stop.changed() => return self.stopped(),
            }
        }
    }
}

/// Longest a frame waits for transcoded audio before it goes out anyway, in ms.
const HOLD_MS: i64 = 1000;
/// Most frames waiting for transcoded audio (a bound whatever the timestamps say).
const MAX_HELD: usize = 256;

/// A frame's decode time in milliseconds, from its track's timescale.
fn dts_ms(tracks: &Tracks, f: &Frame) -> Option<i64> {
    let t = tracks.get(f.track)?;
    Some(f.dts * 1000 / i64::from(t.timescale.max(1)))
}

impl Pusher {
    /// The tag for one frame of `current`'s tracks, once the destination can start: on a
    /// keyframe newer than anything sent (at the start and after a reconnect), so it decodes
    /// from the first frame and its timestamps keep going forward.
    fn take_frame(
        &mut self,
        current: &Tracks,
        has_video: bool,
        waiting_keyframe: &mut bool,
        f: &Frame,
    ) -> Option<PlayOutput> {
        let track = current.get(f.track)?;
        let scale = i64::from(track.timescale.max(1));
        let dts_ms = f.dts * 1000 / scale;
        let is_video = track.kind() == TrackKind::Video;
        if *waiting_keyframe {
            let newer = self.last_sent_ms.is_none_or(|last| dts_ms > last);
            let start = newer
                && (!has_video || (is_video && f.keyframe))
                && !matches!(track.codec, CodecConfig::Jpeg { .. });
            if !start {
                return None;
            }
            *waiting_keyframe = false;
        }
        let tag = self.muxer.on_frame(f)?;
        self.last_sent_ms = Some(self.last_sent_ms.map_or(dts_ms, |l| l.max(dts_ms)));
        Some(tag)
    }
}

/// TCP (+ TLS) + handshake + command exchange until the server accepts the publish.
async fn connect(
    restreamer: Arc<Restreamer>,
    target: Target,
) -> Result<(Box<dyn Io>, ClientSession), String> {
    let t = &target;
    // Coarse on purpose: "refused", "timed out", "reset" or a failed handshake would tell a
    // tenant which ports are open where the server can reach. A refusal by the outbound
    // policy and TLS certificate problems are named.
    let unreachable = || {
        format!(
            "could not connect: no RTMP server answered at {}:{}",
            t.host, t.port
        )
    };
    let addrs = restreamer
        .policy
        .resolve(&t.host, t.port)
        .await
        .map_err(|e| {
            if e.starts_with("cannot resolve") {
                e
            } else {
                format!("destination refused: {e}")
            }
        })?;
    let tcp = connect_tcp(&addrs, restreamer.config.send_buffer_kb)
        .await
        .map_err(|_| unreachable())?;
    let _ = tcp.set_nodelay(true);
    let mut io: Box<dyn Io> = if t.tls {
        let connector = restreamer.tls()?;
        let name = rustls_pki_types::ServerName::try_from(t.host.clone())
            .map_err(|e| format!("invalid TLS server name {}: {e}", t.host))?;
        Box::new(
            connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {}: {e}", t.host))?,
        )
    } else {
        Box::new(tcp)
    };
    let mut session = ClientSession::new(
        &t.app,
        &t.tc_url,
        &t.stream_name,
        MAX_INBOUND_MESSAGE,
        restreamer.config.out_chunk_size,
    );
    let mut buf = BytesMut::with_capacity(8192);
    let mut hs = Handshake::new(PeerType::Client);
    let c0c1 = hs
        .generate_outbound_p0_and_p1()
        .map_err(|_| unreachable())?;
    io.write_all(&c0c1).await.map_err(|_| unreachable())?;
    loop {
        buf.clear();
        if io.read_buf(&mut buf).await.map_err(|_| unreachable())? == 0 {
            return Err(unreachable());
        }
        match hs.process_bytes(&buf).map_err(|_| unreachable())? {
            HandshakeProcessResult::InProgress { response_bytes } => {
                io.write_all(&response_bytes)
                    .await
                    .map_err(|_| unreachable())?;
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                io.write_all(&response_bytes)
                    .await
                    .map_err(|_| unreachable())?;
                session.push(&remaining_bytes);
                break;
            }
        }
    }
    loop {
        while let Some(ClientEvent::Publishing) = session.poll_event().map_err(|e| e.to_string())? {
        }
        let out = session.take_output();
        io.write_all(&out).await.map_err(io_err)?;
        if session.is_publishing() {
            return Ok((io, session));
        }
        buf.clear();
        if io.read_buf(&mut buf).await.map_err(io_err)? == 0 {
            return Err("closed by the destination before accepting the publish".into());
        }
        session.push(&buf);
    }
}

/// TCP to the first of the checked addresses that answers, with a bounded kernel send
/// buffer: a stalled destination then blocks our writes within seconds (and the hub drops
/// frames for it to the next keyframe) instead of the kernel queueing half a minute of stale
/// media.
async fn connect_tcp(addrs: &[SocketAddr], send_buffer_kb: u32) -> std::io::Result<TcpStream> {
    let mut last = None;
    for &addr in addrs {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_send_buffer_size(send_buffer_kb.saturating_mul(1024))?;
        match socket.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address for the host")))
}

fn broken(error: String) -> Outcome {
    Outcome::Failed {
        error,
        was_active: true,
    }
}

fn io_err(e: std::io::Error) -> String {
    format!("i/o: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_from_urls_and_keys() {
        let t = parse_target("rtmp://a.rtmp.youtube.com/live2", "abcd-efgh").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.app.as_str()),
            (false, "a.rtmp.youtube.com", 1935, "live2")
        );
        assert_eq!(t.tc_url, "rtmp://a.rtmp.youtube.com/live2");
        assert_eq!(t.stream_name, "abcd-efgh");
        let t = parse_target("rtmps://live-api-s.facebook.com:443/rtmp/", "FB-1").unwrap();
        assert_eq!((t.tls, t.port, t.app.as_str()), (true, 443, "rtmp"));
        assert_eq!(t.tc_url, "rtmps://live-api-s.facebook.com:443/rtmp");
        let t = parse_target("rtmp://127.0.0.1:19350/live/cam?token=x", "").unwrap();
        assert_eq!(
            (t.port, t.app.as_str(), t.stream_name.as_str()),
            (19350, "live?token=x", "cam")
        );
        let t = parse_target("rtmp://[::1]/a/b", "").unwrap();
        assert_eq!(t.host, "::1");
        for bad in [
            "http://h/app",
            "rtmp:///app",
            "rtmp://h",
            "rtmp://h/",
            "not a url",
        ] {
            assert!(parse_target(bad, "k").is_err(), "{bad}");
        }
        assert!(parse_target("rtmp://h/app", "").is_err());
        // Error messages never echo the URL (it may hold credentials).
        let err = parse_target("ftp://user:hunter2@h/app", "k").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn masks_credentials_and_keys() {
        assert_eq!(
            mask_url("rtmp://user:hunter2@h:1936/app?token=s3cret&x"),
            "rtmp://***@h:1936/app?token=***&***"
        );
        assert_eq!(mask_url("rtmps://h/app"), "rtmps://h/app");
        assert_eq!(mask_url("::"), "***");
        assert_eq!(key_hint("live_1234567890_abcd"), "****abcd");
        assert_eq!(key_hint("short"), "****");
        assert_eq!(key_hint(""), "");
        for p in ["youtube", "twitch", "facebook"] {
            assert!(parse_target(preset_url(p).unwrap(), "k").unwrap().tls);
        }
        assert!(preset_url("custom").is_none());
    }

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let (i, m) = (Duration::from_millis(1000), Duration::from_millis(30_000));
        assert_eq!(backoff(1, i, m, 1.0), Duration::from_millis(1000));
        assert_eq!(backoff(1, i, m, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(2, i, m, 1.0), Duration::from_millis(2000));
        assert_eq!(backoff(4, i, m, 1.0), Duration::from_millis(8000));
        assert_eq!(backoff(10, i, m, 1.0), m);
        assert_eq!(backoff(u32::MAX, i, m, 0.5), Duration::from_millis(22_500));
    }

    #[test]
    fn enhanced_codecs_need_an_enhanced_destination_and_jpeg_waits() {
        use crate::media::opus::OpusConfig;
        use crate::media::test_support::av_tracks;
        use crate::media::{Track, TrackId};
        assert_eq!(check_tracks(&av_tracks()), Ok(true));
        assert_eq!(check_destination(&av_tracks(), |_| false), Ok(()));
        let opus = Tracks {
            list: vec![Track {
                id: TrackId(1),
                timescale: 48_000,
                codec: CodecConfig::Opus(OpusConfig::webrtc()),
            }],
        };
        assert_eq!(check_tracks(&opus), Ok(true));
        let legacy = check_destination(&opus, |_| false).unwrap_err();
        assert!(
            legacy.contains("Enhanced RTMP") && legacy.contains("Opus"),
            "{legacy}"
        );
        assert_eq!(check_destination(&opus, |f| f == "Opus"), Ok(()));
        let jpeg = Tracks {
            list: vec![Track {
                id: TrackId(0),
                timescale: 90_000,
                codec: CodecConfig::Jpeg {
                    width: 640,
                    height: 480,
                },
            }],
        };
        assert_eq!(check_tracks(&jpeg), Ok(false));
    }
}
