//! WebRTC plumbing shared by WHIP ingest and WHEP playback, on one UDP port for every session
//! (and an optional ICE-TCP port, RFC 6544), the way MediaMTX, SRS and LiveKit serve it.
//!
//! - [`WebRtc`] holds the `[webrtc]` settings, the session registry behind the `Location` URLs
//!   and the limits (`max_sessions`, the slots kept for publishers, WHEP sessions per client).
//!   [`WebRtc::accept`] turns an offer into a session: a `str0m` engine (sans-IO, ICE-lite,
//!   our UDP/TCP addresses as its only candidates), the answer SDP, and the [`Driver`] that the
//!   WHIP or WHEP task runs the engine with.
//! - [`endpoint`] owns the sockets: it reads every datagram, finds its session (a STUN binding
//!   request names our ICE ufrag; after that the remote address does) and sends what the
//!   engines produce.
//! - [`driver`] is one session's run loop: network input, the engine's timers, trickle
//!   candidates, and the end of a session (DELETE, stream end, shutdown, no connection in
//!   `connect_timeout_ms`, ICE lost for `disconnect_timeout_ms`), which releases everything.
//!
//! Why str0m (measured in BENCHMARKS.md): the `webrtc` crate 0.21 binds a socket per peer and
//! runs several tasks per peer; str0m is a state machine we feed, so one socket and one task
//! per session serve every peer, and a viewer's packets go from the hub to the socket without
//! another task in between.

mod driver;
pub mod endpoint;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::rtp::Extension;
use str0m::{Candidate, IceCreds, Rtc};
use tokio::sync::{mpsc, Notify};

pub use driver::{Driver, End};
pub use endpoint::Endpoint;

use crate::config::WebRtcConfig;
use crate::error::HttpError;

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

/// Who asks for a session: a publisher may use every slot, a viewer leaves
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

/// Sent to a session's driver from outside its task.
#[derive(Debug)]
pub enum Command {
    /// A trickled remote candidate (RFC 8840).
    Candidate(Candidate),
    /// An ICE restart (RFC 9725 §4.3.2): the session's offer again with the peer's new
    /// credentials; the engine's answer (with our new credentials) or why not goes back.
    IceRestart {
        /// The renegotiating offer.
        offer: String,
        /// The peer's new username fragment.
        ufrag: String,
        /// Candidates that came with the restart (they belong to the new ICE session).
        candidates: Vec<Candidate>,
        /// The fragment that answers it, or why there is none.
        reply: tokio::sync::oneshot::Sender<Result<String, String>>,
    },
}

/// One WHIP or WHEP session, addressed by its `Location`.
pub struct Session {
    /// Random, unguessable id (the `Location` path segment).
    pub id: String,
    /// WHIP or WHEP.
    pub kind: SessionKind,
    /// The stream published or played.
    pub stream_id: String,
    /// SHA-256 of the bearer that created it, if any; DELETE/PATCH must present the same.
    pub bearer_hash: Option<String>,
    /// When it was created.
    pub created: Instant,
    /// The peer's offer (an ICE restart renegotiates it with new credentials).
    offer: String,
    /// The peer's ICE username fragment: from its offer, then from its last ICE restart.
    remote_ufrag: Mutex<Option<String>>,
    /// The entity tag of the ICE session (RFC 9725 §4.3.1), quoted: a new one after each
    /// ICE restart.
    etag: Mutex<String>,
    /// When the last ICE restart was asked for (one a second at most).
    last_restart: Mutex<Option<Instant>>,
    close: Notify,
    closing: AtomicBool,
    connected: AtomicBool,
    /// ICE has a checked pair now.
    ice_up: AtomicBool,
    /// Times ICE got a checked pair (the first connection, then after each restart).
    ice_connects: std::sync::atomic::AtomicU64,
    /// Remote candidates trickled so far (capped).
    trickled: std::sync::atomic::AtomicUsize,
    commands: mpsc::UnboundedSender<Command>,
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

    /// Whether ICE and DTLS are up (media flows).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// How many times ICE got a checked pair: 1 once connected, one more after each ICE
    /// restart whose new checks succeeded.
    pub fn ice_connects(&self) -> u64 {
        self.ice_connects.load(Ordering::SeqCst)
    }

    /// The peer's ICE username fragment (to tell a trickle from an ICE restart).
    pub fn remote_ufrag(&self) -> Option<String> {
        self.remote_ufrag
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The entity tag of the current ICE session (`ETag`, `If-Match`).
    pub fn etag(&self) -> String {
        self.etag.lock().unwrap_or_else(|e| e.into_inner()).clone()
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

/// Why a session could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The engine refused the offer or a candidate.
    #[error("{0}")]
    WebRtc(String),
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
            PeerError::Full => HttpError::unavailable(e.to_string()),
            PeerError::TooManyFromClient => HttpError::rate_limited(5),
        }
    }
}

fn webrtc_err(e: impl std::fmt::Display) -> PeerError {
    PeerError::WebRtc(e.to_string())
}

/// Remote candidates one session may trickle in all.
const MAX_TRICKLED: usize = 128;

/// A negotiated session: the answer to send and the driver to run.
pub struct Accepted {
    /// The session (already registered; dropping `driver` ends it).
    pub session: Arc<Session>,
    /// Its run loop.
    pub driver: Driver,
    /// The answer SDP, with our candidates (and the configured public addresses).
    pub answer: String,
}

/// The WebRTC side of the server: configuration, sockets and live sessions.
pub struct WebRtc {
    config: WebRtcConfig,
    endpoint: Arc<Endpoint>,
    /// `public_ips` and what STUN discovered: announced besides the interface addresses.
    announced: Vec<String>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
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
    /// Binds the media port(s) from `[webrtc]` and starts reading them until `shutdown`;
    /// clients in `exempt` are never held to the per-client WHEP cap.
    pub async fn start(
        config: WebRtcConfig,
        exempt: Vec<ipnet::IpNet>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<Arc<Self>> {
        str0m::crypto::from_feature_flags().install_process_default();
        let endpoint = Endpoint::bind(&config, shutdown).await?;
        let viewers =
            crate::net::limits::PerIpLimiter::new(config.max_whep_sessions_per_ip, exempt);
        let mut announced = config.public_ips.clone();
        for ip in endpoint.discovered_ips() {
            let ip = ip.to_string();
            if !announced.contains(&ip) {
                announced.push(ip);
            }
        }
        Ok(Arc::new(WebRtc {
            announced,
            viewers,
            ended: Mutex::new(std::collections::VecDeque::new()),
            config,
            endpoint,
            sessions: Mutex::new(HashMap::new()),
        }))
    }

    /// The configuration.
    pub fn config(&self) -> &WebRtcConfig {
        &self.config
    }

    /// The sockets every session shares.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
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

    /// Forgets a session whose driver ended, and remembers it as ended.
    fn remove(&self, session: &Session) {
        self.endpoint.unregister(&session.id);
        self.sessions().remove(&session.id);
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

    /// Takes a slot for `who`: refused when `max_sessions` is reached; for a viewer also
    /// when only the slots reserved for publishers are left, or when its client has
    /// `max_whep_sessions_per_ip` sessions.
    fn admit(&self, who: PeerFor) -> Result<Option<crate::net::limits::IpGuard>, PeerError> {
        let count = self.count();
        match who {
            PeerFor::Publisher => {
                if count >= self.config.max_sessions {
                    return Err(PeerError::Full);
                }
                Ok(None)
            }
            PeerFor::Viewer(ip, _) => {
                let viewer_cap = self
                    .config
                    .max_sessions
                    .saturating_sub(self.config.reserved_whip_sessions);
                if count >= viewer_cap {
                    return Err(PeerError::Full);
                }
                Ok(Some(
                    self.viewers
                        .try_acquire(ip)
                        .ok_or(PeerError::TooManyFromClient)?,
                ))
            }
        }
    }

    /// The engine for one session: ICE-lite on our candidates, the codecs `who` may use.
    /// A publisher's engine hands us RTP packets (our depacketizer makes the frames); a
    /// viewer's takes whole frames and packetizes, paces, retransmits on NACK and estimates
    /// the viewer's bandwidth itself.
    fn engine(&self, who: PeerFor, creds: IceCreds) -> Rtc {
        let builder = Rtc::builder()
            .set_ice_lite(true)
            .set_local_ice_credentials(creds)
            .clear_codecs()
            .enable_opus(true, false);
        let mut builder = match who {
            PeerFor::Publisher => builder.set_rtp_mode(true).enable_h264(true),
            PeerFor::Viewer(_, video) => {
                // No ssrc-audio-level: we do not decode the audio, so we have no level to
                // send in it.
                let b = builder
                    .clear_extension_map()
                    .set_extension(2, Extension::AbsoluteSendTime)
                    .set_extension(3, Extension::TransportSequenceNumber)
                    .set_extension(4, Extension::RtpMid)
                    .enable_bwe(Some(str0m::bwe::Bitrate::mbps(5)));
                match video {
                    WebVideo::H264 => b.enable_h264(true),
                    WebVideo::Vp9 => b.enable_vp9(true),
                    WebVideo::Av1 => b.enable_av1(true),
                }
            }
        };
        if matches!(who, PeerFor::Publisher | PeerFor::Viewer(_, WebVideo::H264)) {
            // Constrained High (Chromium offers it; str0m's defaults stop at High).
            builder
                .codec_config()
                .add_h264(112.into(), Some(113.into()), true, 0x640c1f);
        }
        builder.build(Instant::now())
    }

    /// Negotiates a session from an offer (already checked by [`crate::proto::sdp`]): the
    /// engine accepts it with our host candidates, the session is registered (so the peer's
    /// first STUN finds it), and the answer carries copies of the candidates on each
    /// configured public IP.
    pub fn accept(
        self: &Arc<Self>,
        who: PeerFor,
        kind: SessionKind,
        stream_id: &str,
        bearer: Option<&str>,
        offer: &str,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Accepted, PeerError> {
        let client = self.admit(who)?;
        let creds = IceCreds {
            ufrag: crate::store::random_id("", 16),
            pass: crate::store::random_id("", 24),
        };
        let mut rtc = self.engine(who, creds.clone());
        for c in self.endpoint.candidates() {
            rtc.add_local_candidate(c);
        }
        let offer_sdp = SdpOffer::from_sdp_string(offer).map_err(webrtc_err)?;
        // str0m fails fast on states it does not expect: an offer that gets one there is
        // refused like any other it cannot take, and the server carries on.
        let negotiated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rtc.sdp_api().accept_offer(offer_sdp)
        }))
        .map_err(|_| PeerError::WebRtc("the offer could not be negotiated".into()))?;
        let answer = one_media_stream(&negotiated.map_err(webrtc_err)?.to_sdp_string());
        let remote_ufrag = offer
            .lines()
            .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:").map(str::to_owned));
        let (commands, command_rx) = mpsc::unbounded_channel();
        let id = crate::store::random_id("", 16);
        let session = Arc::new(Session {
            etag: Mutex::new(new_etag()),
            id: id.clone(),
            kind,
            stream_id: stream_id.to_owned(),
            bearer_hash: bearer.map(crate::store::hash_secret),
            created: Instant::now(),
            offer: offer.to_owned(),
            remote_ufrag: Mutex::new(remote_ufrag),
            last_restart: Mutex::new(None),
            close: Notify::new(),
            closing: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            ice_up: AtomicBool::new(false),
            ice_connects: std::sync::atomic::AtomicU64::new(0),
            trickled: std::sync::atomic::AtomicUsize::new(0),
            commands,
            _client: client,
        });
        let inbox = self
            .endpoint
            .register(&session.id, &creds.ufrag, &creds.pass);
        self.sessions().insert(id, session.clone());
        let driver = Driver::new(
            rtc,
            self.clone(),
            session.clone(),
            inbox,
            command_rx,
            shutdown,
        );
        Ok(Accepted {
            session,
            driver,
            answer: announce_public_ips(&answer, &self.announced),
        })
    }

    /// Restarts a session's ICE (RFC 9725 §4.3.2) with the peer's new credentials in
    /// `fragment`. The session's driver does it in one step: the engine renegotiates the
    /// session's offer with them and picks new credentials of ours, the shared port routes the
    /// new ones to the session, the session gets a new entity tag, and the fragment's
    /// candidates are added. Media keeps flowing on the old path while the peer checks the
    /// new one; a restart that does not connect within `connect_timeout_ms` ends the session.
    /// Returns the fragment for the `200 OK`.
    pub async fn ice_restart(
        &self,
        session: &Session,
        fragment: &crate::proto::sdp::TrickleFragment,
    ) -> Result<String, HttpError> {
        let (Some(ufrag), Some(pwd)) = (fragment.ufrag.as_deref(), fragment.pwd.as_deref()) else {
            return Err(HttpError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "ice_restart_without_password",
                "an ICE restart (a new a=ice-ufrag) must carry the new a=ice-pwd",
            ));
        };
        if !ice_chars(ufrag, 4) || !ice_chars(pwd, 22) {
            return Err(HttpError::bad_request(
                "a=ice-ufrag must be 4-256 and a=ice-pwd 22-256 ice-chars (RFC 8839)",
            ));
        }
        {
            let mut last = session
                .last_restart
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < RESTART_INTERVAL) {
                return Err(HttpError::rate_limited(1));
            }
            *last = Some(Instant::now());
        }
        let candidates = parse_candidates(fragment).map_err(HttpError::from)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let gone = || HttpError::not_found("the session has ended");
        session
            .commands
            .send(Command::IceRestart {
                offer: restart_offer(&session.offer, ufrag, pwd),
                ufrag: ufrag.to_owned(),
                candidates,
                reply,
            })
            .map_err(|_| gone())?;
        answer
            .await
            .map_err(|_| gone())?
            .map_err(|e| HttpError::from(PeerError::WebRtc(e)))
    }

    /// Applies what an ICE restart's answer says to the session and the shared port (in the
    /// session's driver, right after the engine took the restart); returns the fragment.
    fn restarted(&self, session: &Session, answer: &str, remote_ufrag: String) -> Option<String> {
        let answer = announce_public_ips(answer, &self.announced);
        let (fragment, ufrag, pwd) = restart_fragment(&answer)?;
        self.endpoint.reroute(&session.id, &ufrag, &pwd);
        *session
            .remote_ufrag
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(remote_ufrag);
        *session.etag.lock().unwrap_or_else(|e| e.into_inner()) = new_etag();
        session.trickled.store(0, Ordering::SeqCst);
        tracing::info!(session = %session.id, "webrtc: ICE restarted");
        Some(fragment)
    }

    /// Applies a trickle-ICE fragment (RFC 8840) to a session.
    pub fn trickle(
        &self,
        session: &Session,
        fragment: &crate::proto::sdp::TrickleFragment,
    ) -> Result<(), PeerError> {
        let before = session
            .trickled
            .fetch_add(fragment.candidates.len(), Ordering::SeqCst);
        if before + fragment.candidates.len() > MAX_TRICKLED {
            return Err(PeerError::WebRtc(format!(
                "more than {MAX_TRICKLED} trickled candidates in one session"
            )));
        }
        for c in parse_candidates(fragment)? {
            // A closed session's driver is gone: nothing to apply, nothing to report.
            let _ = session.commands.send(Command::Candidate(c));
        }
        Ok(())
    }
}

/// The candidates of a trickle-ICE fragment.
fn parse_candidates(
    fragment: &crate::proto::sdp::TrickleFragment,
) -> Result<Vec<Candidate>, PeerError> {
    fragment
        .candidates
        .iter()
        .map(|(candidate, _mid)| {
            let line = candidate.strip_prefix("candidate:").unwrap_or(candidate);
            Candidate::from_sdp_string(&format!("candidate:{line}"))
                .or_else(|_| Candidate::from_sdp_string(line))
                .map_err(webrtc_err)
        })
        .collect()
}

/// Least time between two ICE restarts of one session.
const RESTART_INTERVAL: Duration = Duration::from_secs(1);

/// Whether `value` is an ICE ufrag/pwd: `min`..=256 ice-chars (ALPHA / DIGIT / "+" / "/").
fn ice_chars(value: &str, min: usize) -> bool {
    (min..=256).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// A fresh entity tag for an ICE session.
fn new_etag() -> String {
    format!("\"{}\"", crate::store::random_id("", 8))
}

/// The offer of an ICE restart: the session's offer with the peer's new credentials in place
/// of the old (its candidates come as trickled ones).
pub fn restart_offer(offer: &str, ufrag: &str, pwd: &str) -> String {
    let mut out = String::with_capacity(offer.len());
    for line in offer.lines().map(|l| l.trim_end_matches('\r')) {
        if line.starts_with("a=ice-ufrag:") {
            out.push_str("a=ice-ufrag:");
            out.push_str(ufrag);
        } else if line.starts_with("a=ice-pwd:") {
            out.push_str("a=ice-pwd:");
            out.push_str(pwd);
        } else if line.starts_with("a=candidate:") || line == "a=end-of-candidates" {
            continue;
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out
}

/// The trickle-ICE fragment (RFC 8840) that answers an ICE restart: our new credentials, and
/// each m-section's `mid` with our candidates; with our new ufrag and password.
pub fn restart_fragment(answer: &str) -> Option<(String, String, String)> {
    let mut ufrag = None;
    let mut pwd = None;
    let mut sections = String::new();
    for line in answer.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(u) = line.strip_prefix("a=ice-ufrag:") {
            ufrag.get_or_insert_with(|| u.to_owned());
        } else if let Some(p) = line.strip_prefix("a=ice-pwd:") {
            pwd.get_or_insert_with(|| p.to_owned());
        } else if line.starts_with("m=")
            || line.starts_with("a=mid:")
            || line.starts_with("a=candidate:")
            || line == "a=end-of-candidates"
        {
            sections.push_str(line);
            sections.push_str("\r\n");
        }
    }
    let (ufrag, pwd) = (ufrag?, pwd?);
    let fragment = format!("a=ice-lite\r\na=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n{sections}");
    Some((fragment, ufrag, pwd))
}

/// The answer with every track we send in one MediaStream. str0m gives each answered m-line
/// its own random msid stream id when the offer names none (a recvonly offer never does);
/// browsers synchronise audio with video only within one stream, and a player that attaches
/// the video's stream to a `<video>` element would play it silent.
pub fn one_media_stream(sdp: &str) -> String {
    let ids: Vec<&str> = sdp
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=msid:"))
        .filter_map(|v| v.split(' ').next())
        .filter(|id| !id.is_empty() && *id != "-")
        .collect();
    let Some(first) = ids.first() else {
        return sdp.to_owned();
    };
    let mut out = sdp.to_owned();
    for id in ids.iter().skip(1).filter(|id| *id != first) {
        out = out.replace(id, first);
    }
    // `a=msid-semantic: WMS a a` → one id.
    out.split_inclusive('\n')
        .map(
            |line| match line.trim_end().strip_prefix("a=msid-semantic:") {
                Some(_) => format!("a=msid-semantic: WMS {first}\r\n"),
                None => line.to_owned(),
            },
        )
        .collect()
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
    fn an_ice_restart_renegotiates_the_offer_with_new_credentials_only() {
        let offer = "v=0\r\na=ice-ufrag:old\r\na=ice-pwd:oldpass\r\nm=audio 9 x\r\na=mid:0\r\n\
                     a=candidate:1 1 udp 1 10.0.0.1 9 typ host\r\na=end-of-candidates\r\n";
        let re = restart_offer(offer, "new", "newpass");
        assert_eq!(
            re,
            "v=0\r\na=ice-ufrag:new\r\na=ice-pwd:newpass\r\nm=audio 9 x\r\na=mid:0\r\n"
        );
        let answer =
            "v=0\r\na=ice-lite\r\nm=audio 9 x\r\na=ice-ufrag:ours\r\na=ice-pwd:ourpass\r\n\
                      a=mid:0\r\na=candidate:1 1 udp 1 127.0.0.1 8189 typ host\r\n\
                      a=end-of-candidates\r\na=rtpmap:111 opus/48000/2\r\n";
        let (fragment, ufrag, pwd) = restart_fragment(answer).unwrap();
        assert_eq!((ufrag.as_str(), pwd.as_str()), ("ours", "ourpass"));
        assert_eq!(
            fragment,
            "a=ice-lite\r\na=ice-ufrag:ours\r\na=ice-pwd:ourpass\r\nm=audio 9 x\r\na=mid:0\r\n\
             a=candidate:1 1 udp 1 127.0.0.1 8189 typ host\r\na=end-of-candidates\r\n"
        );
        assert!(restart_fragment("v=0\r\nm=audio 9 x\r\n").is_none());
    }

    #[test]
    fn answered_tracks_share_one_media_stream() {
        let sdp = "v=0\r\na=msid-semantic: WMS AAA BBB\r\nm=video 9 x\r\na=msid:AAA t1\r\na=ssrc:1 msid:AAA t1\r\nm=audio 9 x\r\na=msid:BBB t2\r\na=ssrc:2 msid:BBB t2\r\n";
        let out = one_media_stream(sdp);
        assert!(!out.contains("BBB"), "{out}");
        assert!(out.contains("a=msid:AAA t2\r\n") && out.contains("a=ssrc:2 msid:AAA t2\r\n"));
        assert!(out.contains("a=msid-semantic: WMS AAA\r\n"), "{out}");
        assert_eq!(one_media_stream("v=0\r\n"), "v=0\r\n");
    }

    #[test]
    fn public_ips_duplicate_host_candidates() {
        let sdp = "v=0\r\na=candidate:1 1 udp 2130706431 10.0.0.5 50000 typ host\r\na=candidate:2 1 udp 1694498815 1.2.3.4 50000 typ srflx raddr 0.0.0.0 rport 0\r\n";
        let out = announce_public_ips(sdp, &["203.0.113.7".into()]);
        assert!(out.contains("a=candidate:190 1 udp 2130706431 203.0.113.7 50000 typ host\r\n"));
        assert_eq!(out.matches("a=candidate").count(), 3);
        assert_eq!(announce_public_ips(sdp, &[]), sdp);
    }
}
