//! WebRTC plumbing shared by WHIP ingest and WHEP playback: peer connections built from the
//! `[webrtc]` config (codecs, ICE servers, UDP ports, announced addresses), the session
//! registry behind the `Location` URLs, the offer→answer exchange (non-trickle: the answer
//! carries every host candidate) and the supervisor that closes a peer on DELETE, ICE
//! failure, connect timeout, API stop or shutdown and then releases everything it held.
//!
//! `webrtc` 0.21 facts this builds on (DESIGN.md): events arrive through one handler trait
//! object; there is no wait-for-gathering helper; the application must `close()` a peer
//! itself; each peer binds its own UDP socket(s) (no single-port mux yet), so a configured
//! port range is handed out one port per session.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_AV1, MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP9,
};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind,
};
use tokio::sync::{mpsc, Notify};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState,
    RTCIceServer, RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
};

use crate::config::WebRtcConfig;
use crate::error::HttpError;

/// Payload types and `profile-level-id`s of the H.264 variants we answer: constrained
/// baseline, baseline, main, high and constrained high, all packetization-mode 1. The
/// profile decides the match with an offer; the level is not binding (level-asymmetry).
const H264_VARIANTS: [(u8, &str); 5] = [
    (102, "42e01f"),
    (104, "42001f"),
    (106, "4d001f"),
    (108, "64001f"),
    (110, "640c1f"),
];
/// Payload type we answer Opus with when the offer leaves it to us.
const OPUS_PT: u8 = 111;
/// How long gathering host candidates may take before the answer is sent as it is.
const GATHER_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether a session publishes into the hub or plays out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// WHIP ingest.
    Whip,
    /// WHEP playback.
    Whep,
}

impl SessionKind {
    /// `whip` or `whep`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Whip => "whip",
            SessionKind::Whep => "whep",
        }
    }
}

/// What a peer connection reports to its session task.
pub enum PeerEvent {
    /// Connection state changed.
    State(RTCPeerConnectionState),
    /// The remote sends media on a new track.
    Track(Arc<dyn TrackRemote>),
}

struct Events {
    tx: mpsc::UnboundedSender<PeerEvent>,
    gathered: Arc<Notify>,
    gathered_flag: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered_flag.store(true, Ordering::SeqCst);
            self.gathered.notify_waiters();
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.tx.send(PeerEvent::State(state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.tx.send(PeerEvent::Track(track));
    }
}

/// A peer connection with its event stream, before it is registered as a session.
pub struct NewPeer {
    /// The connection.
    pub pc: Arc<dyn PeerConnection>,
    /// Its events.
    pub events: mpsc::UnboundedReceiver<PeerEvent>,
    gathered: Arc<Notify>,
    gathered_flag: Arc<AtomicBool>,
    port: Option<PortLease>,
    /// Counts the viewer's client while the session lives (WHEP).
    client: Option<crate::net::limits::IpGuard>,
}

/// Who asks for a peer connection: a publisher may use every slot, a viewer leaves
/// `reserved_whip_sessions` free and is held to `max_whep_sessions_per_ip`.
#[derive(Debug, Clone, Copy)]
pub enum PeerFor {
    /// A WHIP publisher (authenticated by its stream key).
    Publisher,
    /// A WHEP viewer from this address, of a stream whose video is this codec.
    Viewer(std::net::IpAddr, WebVideo),
}

/// The video codec a WebRTC peer negotiates. A publisher sends H.264; a viewer receives the
/// stream's own codec, and only that one is offered in its answer (the browser picks the
/// first codec both sides know, and the server cannot change a stream's codec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebVideo {
    /// H.264, packetization mode 1 (every profile variant).
    H264,
    /// VP9 profile 0.
    Vp9,
    /// AV1 main profile.
    Av1,
}

/// RTP payload type announced for VP9.
const VP9_PT: u8 = 98;
/// RTP payload type announced for AV1.
const AV1_PT: u8 = 45;

/// A UDP port taken from the configured range; returned when dropped.
struct PortLease {
    port: u16,
    ports: Arc<Mutex<BTreeSet<u16>>>,
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.port);
    }
}

/// One WHIP or WHEP session, addressed by its `Location`.
pub struct Session {
    /// Random, unguessable id (the `Location` path segment).
    pub id: String,
    /// WHIP or WHEP.
    pub kind: SessionKind,
    /// The stream published or played.
    pub stream_id: String,
    /// Entity tag of the ICE session (RFC 9725 §4.3.1), quoted.
    pub etag: String,
    /// SHA-256 of the bearer that created it, if any; DELETE/PATCH must present the same.
    pub bearer_hash: Option<String>,
    /// When it was created.
    pub created: Instant,
    pc: Arc<dyn PeerConnection>,
    close: Notify,
    closing: AtomicBool,
    state: Mutex<RTCPeerConnectionState>,
    _port: Option<PortLease>,
    _client: Option<crate::net::limits::IpGuard>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("stream_id", &self.stream_id)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Asks the session task to close the peer and release everything.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.close.notify_waiters();
    }

    /// Resolves once [`Session::close`] was called.
    pub async fn closed(&self) {
        loop {
            let notified = self.close.notified();
            if self.closing.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// The peer connection.
    pub fn pc(&self) -> &Arc<dyn PeerConnection> {
        &self.pc
    }

    /// The last connection state reported.
    pub fn state(&self) -> RTCPeerConnectionState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_state(&self, s: RTCPeerConnectionState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    /// Whether `bearer` is the one that created the session (or none was needed).
    pub fn authorizes(&self, bearer: Option<&str>) -> bool {
        match (&self.bearer_hash, bearer) {
            (None, _) => true,
            (Some(h), Some(b)) => *h == crate::store::hash_secret(b),
            (Some(_), None) => false,
        }
    }
}

/// Why a peer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The `webrtc` crate refused (bad SDP it could parse differently, bind failure...).
    #[error("{0}")]
    WebRtc(String),
    /// Every port of the configured range is in use.
    #[error("no free UDP port in the configured range")]
    NoPort,
    /// `max_sessions` reached.
    #[error("too many WebRTC sessions")]
    Full,
    /// This viewer's client has `max_whep_sessions_per_ip` sessions already.
    #[error("too many WHEP sessions from this client")]
    TooManyFromClient,
}

impl From<PeerError> for HttpError {
    fn from(e: PeerError) -> Self {
        match e {
            PeerError::WebRtc(msg) => {
                tracing::warn!(error = %msg, "webrtc: peer setup failed");
                HttpError::bad_request(format!("WebRTC negotiation failed: {msg}"))
            }
            PeerError::NoPort | PeerError::Full => HttpError::unavailable(e.to_string()),
            PeerError::TooManyFromClient => HttpError::rate_limited(5),
        }
    }
}

fn webrtc_err(e: impl std::fmt::Display) -> PeerError {
    PeerError::WebRtc(e.to_string())
}

/// The WebRTC side of the server: configuration and live sessions.
pub struct WebRtc {
    config: WebRtcConfig,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    ports: Arc<Mutex<BTreeSet<u16>>>,
    next_port: Mutex<u16>,
    viewers: Arc<crate::net::limits::PerIpLimiter>,
    /// Sessions that ended lately (id, kind, bearer hash, when): a client's DELETE of a
    /// session the server already closed (stream ended, ICE timeout) is answered as done.
    ended: Mutex<std::collections::VecDeque<Ended>>,
}

/// A session that ended: id, kind, bearer hash, when.
type Ended = (String, SessionKind, Option<String>, Instant);

/// How long an ended session's DELETE is still answered as done, and how many are kept.
const ENDED_KEPT: Duration = Duration::from_secs(120);
const ENDED_MAX: usize = 4096;

impl std::fmt::Debug for WebRtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtc").finish_non_exhaustive()
    }
}

impl WebRtc {
    /// Sessions are created through [`WebRtc::new_peer`] and [`WebRtc::register`].
    pub fn new(config: WebRtcConfig) -> Arc<Self> {
        Self::with_exempt(config, vec![])
    }

    /// As [`WebRtc::new`], with clients never held to the per-client WHEP cap.
    pub fn with_exempt(config: WebRtcConfig, exempt: Vec<ipnet::IpNet>) -> Arc<Self> {
        let first = config.udp_port_min;
        let viewers =
            crate::net::limits::PerIpLimiter::new(config.max_whep_sessions_per_ip, exempt);
        Arc::new(WebRtc {
            viewers,
            ended: Mutex::new(std::collections::VecDeque::new()),
            config,
            sessions: Mutex::new(HashMap::new()),
            ports: Arc::new(Mutex::new(BTreeSet::new())),
            next_port: Mutex::new(first),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &WebRtcConfig {
        &self.config
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session with this id and kind.
    pub fn get(&self, id: &str, kind: SessionKind) -> Option<Arc<Session>> {
        self.sessions().get(id).filter(|s| s.kind == kind).cloned()
    }

    /// Whether a session with this id and kind ended lately, and `bearer` would have been
    /// allowed to end it: `Some(true)` allowed, `Some(false)` not, `None` unknown.
    pub fn recently_ended(
        &self,
        id: &str,
        kind: SessionKind,
        bearer: Option<&str>,
    ) -> Option<bool> {
        let ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        let (_, _, hash, _) = ended
            .iter()
            .find(|(i, k, _, at)| i == id && *k == kind && at.elapsed() < ENDED_KEPT)?;
        Some(match (hash, bearer) {
            (None, _) => true,
            (Some(h), Some(b)) => *h == crate::store::hash_secret(b),
            (Some(_), None) => false,
        })
    }

    fn remember_ended(&self, session: &Session) {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        while ended.len() >= ENDED_MAX
            || ended
                .front()
                .is_some_and(|(_, _, _, at)| at.elapsed() >= ENDED_KEPT)
        {
            ended.pop_front();
        }
        ended.push_back((
            session.id.clone(),
            session.kind,
            session.bearer_hash.clone(),
            Instant::now(),
        ));
    }

    /// Live sessions (for the API and tests).
    pub fn list(&self) -> Vec<Arc<Session>> {
        let mut v: Vec<_> = self.sessions().values().cloned().collect();
        v.sort_by_key(|s| s.created);
        v
    }

    /// Number of live sessions.
    pub fn count(&self) -> usize {
        self.sessions().len()
    }

    /// Closes every session of a stream (the stream was stopped or deleted).
    pub fn close_stream(&self, stream_id: &str) {
        for s in self
            .sessions()
            .values()
            .filter(|s| s.stream_id == stream_id)
        {
            s.close();
        }
    }

    fn lease_port(&self) -> Result<Option<PortLease>, PeerError> {
        let (min, max) = (self.config.udp_port_min, self.config.udp_port_max);
        if min == 0 {
            return Ok(None);
        }
        let mut used = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = self.next_port.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..=u32::from(max - min) {
            let port = *next;
            *next = if port >= max { min } else { port + 1 };
            if used.insert(port) {
                return Ok(Some(PortLease {
                    port,
                    ports: self.ports.clone(),
                }));
            }
        }
        Err(PeerError::NoPort)
    }

    fn media_engine(&self, video: WebVideo) -> Result<MediaEngine, PeerError> {
        let mut engine = MediaEngine::default();
        let feedback = |typ: &str, parameter: &str| RTCPFeedback {
            typ: typ.into(),
            parameter: parameter.into(),
        };
        let video_feedback = || {
            vec![
                feedback("nack", ""),
                feedback("nack", "pli"),
                feedback("ccm", "fir"),
                feedback("goog-remb", ""),
            ]
        };
        let other = match video {
            WebVideo::H264 => None,
            WebVideo::Vp9 => Some((MIME_TYPE_VP9, VP9_PT, "profile-id=0")),
            WebVideo::Av1 => Some((MIME_TYPE_AV1, AV1_PT, "level-idx=5;profile=0;tier=0")),
        };
        if let Some((mime, pt, fmtp)) = other {
            engine
                .register_codec(
                    RTCRtpCodecParameters {
                        rtp_codec: RTCRtpCodec {
                            mime_type: mime.to_owned(),
                            clock_rate: 90_000,
                            channels: 0,
                            sdp_fmtp_line: fmtp.to_owned(),
                            rtcp_feedback: video_feedback(),
                        },
                        payload_type: pt,
                    },
                    RtpCodecKind::Video,
                )
                .map_err(webrtc_err)?;
        }
        let h264 = if other.is_some() {
            &[][..]
        } else {
            &H264_VARIANTS[..]
        };
        for &(pt, profile) in h264 {
            engine
                .register_codec(
                    RTCRtpCodecParameters {
                        rtp_codec: RTCRtpCodec {
                            mime_type: MIME_TYPE_H264.to_owned(),
                            clock_rate: 90_000,
                            channels: 0,
                            sdp_fmtp_line: format!(
                                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}"
                            ),
                            rtcp_feedback: video_feedback(),
                        },
                        payload_type: pt,
                    },
                    RtpCodecKind::Video,
                )
                .map_err(webrtc_err)?;
        }
        engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: RTCRtpCodec {
                        mime_type: MIME_TYPE_OPUS.to_owned(),
                        clock_rate: 48_000,
                        channels: 2,
                        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                        rtcp_feedback: vec![],
                    },
                    payload_type: OPUS_PT,
                },
                RtpCodecKind::Audio,
            )
            .map_err(webrtc_err)?;
        Ok(engine)
    }

    /// A new peer connection (not yet a session), refused when `max_sessions` is reached;
    /// a viewer also when only the slots reserved for publishers are left, or when its client
    /// has `max_whep_sessions_per_ip` sessions.
    pub async fn new_peer(&self, who: PeerFor) -> Result<NewPeer, PeerError> {
        let count = self.count();
        let client = match who {
            PeerFor::Publisher => {
                if count >= self.config.max_sessions {
                    return Err(PeerError::Full);
                }
                None
            }
            PeerFor::Viewer(ip, _) => {
                let viewer_cap = self
                    .config
                    .max_sessions
                    .saturating_sub(self.config.reserved_whip_sessions);
                if count >= viewer_cap {
                    return Err(PeerError::Full);
                }
                Some(
                    self.viewers
                        .try_acquire(ip)
                        .ok_or(PeerError::TooManyFromClient)?,
                )
            }
        };
        let port = self.lease_port()?;
        let video = match who {
            PeerFor::Publisher => WebVideo::H264,
            PeerFor::Viewer(_, video) => video,
        };
        let mut engine = self.media_engine(video)?;
        let registry =
            register_default_interceptors(Registry::new(), &mut engine).map_err(webrtc_err)?;
        let ice_servers = if self.config.ice_servers.is_empty() {
            vec![]
        } else {
            vec![RTCIceServer {
                urls: self.config.ice_servers.clone(),
                username: self.config.ice_username.clone(),
                credential: self.config.ice_credential.clone(),
            }]
        };
        let rtc_config = RTCConfigurationBuilder::new()
            .with_ice_servers(ice_servers)
            .build();
        let disconnect = Duration::from_millis(self.config.disconnect_timeout_ms);
        let settings = SettingEngineBuilder::new()
            .with_include_loopback_candidate(self.config.bind_ip.is_loopback())
            .with_ice_timeouts(
                Some(disconnect),
                Some(disconnect * 2),
                Some(Duration::from_secs(2)),
            )
            .build();
        let (tx, events) = mpsc::unbounded_channel();
        let gathered = Arc::new(Notify::new());
        let gathered_flag = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(Events {
            tx,
            gathered: gathered.clone(),
            gathered_flag: gathered_flag.clone(),
        });
        let addr =
            std::net::SocketAddr::new(self.config.bind_ip, port.as_ref().map_or(0, |p| p.port));
        let pc = PeerConnectionBuilder::new()
            .with_configuration(rtc_config)
            .with_media_engine(engine)
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_udp_addrs(vec![addr])
            .build()
            .await
            .map_err(webrtc_err)?;
        Ok(NewPeer {
            pc: Arc::new(pc),
            events,
            gathered,
            gathered_flag,
            port,
            client,
        })
    }

    /// Applies the remote offer (already checked by [`crate::proto::sdp`]).
    pub async fn apply_offer(&self, peer: &NewPeer, offer: String) -> Result<(), PeerError> {
        let offer = RTCSessionDescription::offer(offer).map_err(webrtc_err)?;
        peer.pc
            .set_remote_description(offer)
            .await
            .map_err(webrtc_err)
    }

    /// Creates the answer, waits for host candidates and returns the answer SDP with every
    /// candidate in it, plus copies of the host candidates on each configured public IP.
    pub async fn answer(&self, peer: &NewPeer) -> Result<String, PeerError> {
        let answer = peer.pc.create_answer(None).await.map_err(webrtc_err)?;
        let notified = peer.gathered.notified();
        peer.pc
            .set_local_description(answer)
            .await
            .map_err(webrtc_err)?;
        if !peer.gathered_flag.load(Ordering::SeqCst) {
            let _ = tokio::time::timeout(GATHER_TIMEOUT, notified).await;
        }
        let local = peer
            .pc
            .local_description()
            .await
            .ok_or_else(|| PeerError::WebRtc("no local description".into()))?;
        Ok(announce_public_ips(&local.sdp, &self.config.public_ips))
    }

    /// Registers a negotiated peer as a session and starts its supervisor. `on_event` gets
    /// every track and state event; the supervisor closes the peer when the session is
    /// closed, when ICE fails or disconnects, when it does not connect in time, and on
    /// shutdown, then removes the session.
    pub fn register(
        self: &Arc<Self>,
        peer: NewPeer,
        kind: SessionKind,
        stream_id: &str,
        bearer: Option<&str>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> (Arc<Session>, mpsc::UnboundedReceiver<PeerEvent>) {
        let id = crate::store::random_id("", 16);
        let session = Arc::new(Session {
            etag: format!("\"{}\"", crate::store::random_id("", 8)),
            id: id.clone(),
            kind,
            stream_id: stream_id.to_owned(),
            bearer_hash: bearer.map(crate::store::hash_secret),
            created: Instant::now(),
            pc: peer.pc,
            close: Notify::new(),
            closing: AtomicBool::new(false),
            state: Mutex::new(RTCPeerConnectionState::New),
            _port: peer.port,
            _client: peer.client,
        });
        self.sessions().insert(id, session.clone());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(supervise(
            self.clone(),
            session.clone(),
            peer.events,
            tx,
            shutdown,
        ));
        (session, rx)
    }

    /// Closes a peer that never became a session (negotiation failed).
    pub async fn discard(&self, peer: NewPeer) {
        if let Err(err) = peer.pc.close().await {
            tracing::debug!(%err, "webrtc: closing a discarded peer");
        }
    }

    /// Applies a trickle-ICE fragment (RFC 8840) to a session.
    pub async fn trickle(
        &self,
        session: &Session,
        fragment: &crate::proto::sdp::TrickleFragment,
    ) -> Result<(), PeerError> {
        for (candidate, mid) in &fragment.candidates {
            session
                .pc
                .add_ice_candidate(RTCIceCandidateInit {
                    candidate: candidate.clone(),
                    sdp_mid: mid.clone(),
                    sdp_mline_index: if mid.is_none() { Some(0) } else { None },
                    username_fragment: fragment.ufrag.clone(),
                    ..Default::default()
                })
                .await
                .map_err(webrtc_err)?;
        }
        Ok(())
    }
}

/// The remote ICE username fragment of a session (to tell trickle from restart).
pub async fn remote_ufrag(session: &Session) -> Option<String> {
    let remote = session.pc.remote_description().await?;
    remote
        .sdp
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:").map(str::to_owned))
}

async fn supervise(
    rtc: Arc<WebRtc>,
    session: Arc<Session>,
    mut events: mpsc::UnboundedReceiver<PeerEvent>,
    forward: mpsc::UnboundedSender<PeerEvent>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let connect_by =
        tokio::time::Instant::now() + Duration::from_millis(rtc.config.connect_timeout_ms);
    let mut connected = false;
    let reason = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                None => break "peer gone",
                Some(PeerEvent::State(state)) => {
                    session.set_state(state);
                    tracing::debug!(session = %session.id, %state, "webrtc: connection state");
                    match state {
                        RTCPeerConnectionState::Connected => connected = true,
                        RTCPeerConnectionState::Failed => break "ICE/DTLS failed",
                        RTCPeerConnectionState::Disconnected => break "peer disconnected",
                        RTCPeerConnectionState::Closed => break "closed",
                        _ => {}
                    }
                    let _ = forward.send(PeerEvent::State(state));
                }
                Some(ev) => { let _ = forward.send(ev); }
            },
            _ = tokio::time::sleep_until(connect_by), if !connected => break "not connected in time",
            _ = session.closed() => break "closed by DELETE or stream end",
            _ = crate::shutdown::requested(&mut shutdown) => break "server shutting down",
        }
    };
    tracing::info!(session = %session.id, kind = session.kind.as_str(), stream = %session.stream_id, reason, "webrtc: session ended");
    session.close();
    drop(forward);
    if let Err(err) = session.pc.close().await {
        tracing::debug!(%err, "webrtc: close");
    }
    rtc.sessions().remove(&session.id);
    rtc.remember_ended(&session);
}

/// Adds, for every host candidate line, one copy per public IP (1:1 NAT): the peer then
/// also tries the public address, which the NAT forwards to the same socket.
pub fn announce_public_ips(sdp: &str, public_ips: &[String]) -> String {
    if public_ips.is_empty() {
        return sdp.to_owned();
    }
    let mut out = String::with_capacity(sdp.len() * 2);
    for line in sdp.split_inclusive('\n') {
        out.push_str(line);
        let body = line.trim_end();
        let Some(cand) = body.strip_prefix("a=candidate:") else {
            continue;
        };
        let fields: Vec<&str> = cand.split(' ').collect();
        // foundation component transport priority address port typ host ...
        if fields.len() < 8 || fields[6] != "typ" || fields[7] != "host" {
            continue;
        }
        for (i, ip) in public_ips.iter().enumerate() {
            let mut f = fields.clone();
            let foundation = format!("{}{}", fields[0], 90 + i);
            f[0] = &foundation;
            f[4] = ip;
            out.push_str("a=candidate:");
            out.push_str(&f.join(" "));
            out.push_str("\r\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_ips_duplicate_host_candidates() {
        let sdp = "v=0\r\na=candidate:1 1 udp 2130706431 10.0.0.5 50000 typ host\r\na=candidate:2 1 udp 1694498815 1.2.3.4 50000 typ srflx raddr 0.0.0.0 rport 0\r\n";
        let out = announce_public_ips(sdp, &["203.0.113.7".into()]);
        assert!(out.contains("a=candidate:190 1 udp 2130706431 203.0.113.7 50000 typ host\r\n"));
        assert_eq!(out.matches("a=candidate").count(), 3);
        assert_eq!(announce_public_ips(sdp, &[]), sdp);
    }
}
