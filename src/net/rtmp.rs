//! The RTMP listener and connection driver: socket ↔ handshake ↔ [`ServerSession`], then
//! either RTMP ingest (publish) or RTMP play.
//!
//! One task per connection, one `select!` loop per phase. Every connection's errors are
//! logged inside its own task and never reach the listener or any other connection. Stream
//! keys are checked against the store and never logged. Connections are capped by a
//! semaphore; the handshake and commands must complete within the handshake timeout; a
//! silent connection is closed after the idle timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::timeout;

use crate::config::RtmpConfig;
use crate::egress::rtmp_play::FlvMuxer;
use crate::hub::{Event, Hub, HubError};
use crate::ingest::rtmp::RtmpIngest;
use crate::proto::rtmp::server::{ServerSession, SessionError, SessionEvent};
use crate::store::Store;

/// Events a player's connection takes from its queue for one socket write, at most.
const PLAY_BATCH: usize = 256;

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The handshake failed.
    #[error("handshake: {0:?}")]
    Handshake(rml_rtmp::handshake::HandshakeError),
    /// A protocol error.
    #[error("{0}")]
    Session(#[from] SessionError),
    /// The peer took too long.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The peer closed the connection.
    #[error("closed by peer")]
    Closed,
    /// The request was refused (already answered with an error status).
    #[error("refused: {0}")]
    Refused(String),
    /// Store failure while checking a key.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The TLS handshake failed (RTMPS).
    #[error("tls handshake: {0}")]
    Tls(String),
}

/// Everything a connection needs.
#[derive(Clone)]
pub struct RtmpContext {
    /// Limits and timeouts.
    pub config: RtmpConfig,
    /// Live streams.
    pub hub: Hub,
    /// Stream keys.
    pub store: Store,
    /// Private-stream checks for players.
    pub gate: std::sync::Arc<dyn crate::egress::PlaybackGate>,
    /// Connections per client.
    pub per_ip: Arc<crate::net::limits::PerIpLimiter>,
    /// The platform's authoriser, for publish names that carry no key of ours.
    pub external: Option<Arc<crate::extauth::ExternalAuth>>,
    /// Connection slots (`max_connections`); players leave `reserved_publisher_slots` free.
    pub slots: Arc<Semaphore>,
}

/// Accepts connections until `shutdown` turns true.
pub async fn serve(listener: TcpListener, ctx: RtmpContext, shutdown: watch::Receiver<bool>) {
    serve_with(listener, ctx, shutdown, None).await
}

/// Accepts RTMPS connections until `shutdown` turns true. The connection caps apply before
/// the TLS handshake, and the TLS handshake counts against the handshake timeout, so slow
/// or half-open TLS clients hold nothing longer than a slow plain-RTMP client does.
pub async fn serve_tls(
    listener: TcpListener,
    ctx: RtmpContext,
    tls: tokio_rustls::TlsAcceptor,
    shutdown: watch::Receiver<bool>,
) {
    serve_with(listener, ctx, shutdown, Some(tls)).await
}

async fn serve_with(
    listener: TcpListener,
    ctx: RtmpContext,
    mut shutdown: watch::Receiver<bool>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let permits = ctx.slots.clone();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = crate::shutdown::requested(&mut shutdown) => break,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(err) => {
                tracing::warn!(%err, "rtmp: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "rtmp: connection limit reached; closing");
            drop(socket);
            continue;
        };
        let Some(ip_guard) = ctx.per_ip.try_acquire(peer.ip()) else {
            tracing::debug!(%peer, "rtmp: per-client connection limit reached; closing");
            drop(socket);
            continue;
        };
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let _ip = ip_guard;
            let _ = socket.set_nodelay(true);
            let started = tokio::time::Instant::now();
            let result = match tls {
                None => {
                    Connection::new(socket, peer, ctx, shutdown)
                        .run(started)
                        .await
                }
                Some(acceptor) => {
                    // The same deadline the RTMP handshake gets, shortened for a connection
                    // holding one of the publishers' reserved slots.
                    let mut limit = Duration::from_millis(ctx.config.handshake_timeout_ms);
                    if ctx.slots.available_permits() < ctx.config.reserved_publisher_slots as usize
                    {
                        limit = limit.min(RESERVE_DEADLINE);
                    }
                    match timeout(limit, acceptor.accept(socket)).await {
                        Ok(Ok(stream)) => {
                            Connection::new(stream, peer, ctx, shutdown)
                                .run(started)
                                .await
                        }
                        // A plain-RTMP client on the TLS port, a scanner, a bad certificate
                        // on the client's side: one line, nothing else happens.
                        Ok(Err(err)) => Err(ConnectionError::Tls(err.to_string())),
                        Err(_) => Err(ConnectionError::Timeout("in the TLS handshake")),
                    }
                }
            };
            match result {
                Ok(()) | Err(ConnectionError::Closed) => {
                    tracing::debug!(%peer, "rtmp: connection closed")
                }
                Err(err) => tracing::info!(%peer, %err, "rtmp: connection closed"),
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    // Shutdown: connections see the same signal and finish on their own.
    while tasks.join_next().await.is_some() {}
}

/// How long a publisher that said it is done may take to close its connection.
const LINGER: Duration = Duration::from_secs(1);

/// Time a connection accepted into the publishers' reserve has to ask to publish.
const RESERVE_DEADLINE: Duration = Duration::from_secs(2);

/// Largest message before a publisher is accepted (commands are a few hundred bytes).
const PRE_PUBLISH_MAX_MESSAGE: u32 = 64 * 1024;
/// Most partially received messages before a publisher is accepted.
const PRE_PUBLISH_MAX_PARTIAL: usize = 4;

/// Read buffer of a connection until it publishes (handshake, commands, a player's acks).
const PLAY_READ_BUFFER: usize = 4 * 1024;
/// Read buffer of a publishing connection: media arrives in large reads.
const PUBLISH_READ_BUFFER: usize = 64 * 1024;

/// One RTMP connection over a TCP socket or a TLS stream.
struct Connection<S> {
    socket: S,
    peer: SocketAddr,
    ctx: RtmpContext,
    shutdown: watch::Receiver<bool>,
    session: ServerSession,
    buf: BytesMut,
    /// The stream being played, whose outgoing bytes this connection counts.
    playing: Option<Arc<crate::hub::LiveStream>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    fn new(socket: S, peer: SocketAddr, ctx: RtmpContext, shutdown: watch::Receiver<bool>) -> Self {
        let mut session =
            ServerSession::new(ctx.config.max_message_bytes, ctx.config.out_chunk_size);
        // Until a publisher is accepted, small messages only and few at once: a connection
        // that has shown no key cannot make the server buffer much.
        session.set_limits(PRE_PUBLISH_MAX_MESSAGE, PRE_PUBLISH_MAX_PARTIAL);
        Connection {
            socket,
            peer,
            ctx,
            shutdown,
            session,
            // Enough for the handshake and commands; a publisher's connection grows it to
            // PUBLISH_READ_BUFFER. Players send little, and thousands of them each holding a
            // large read buffer would cost more than their queues.
            buf: BytesMut::with_capacity(PLAY_READ_BUFFER),
            playing: None,
        }
    }

    /// Serves the connection; the handshake deadline runs from `started` (the accept, so a
    /// TLS handshake uses it up too).
    async fn run(mut self, started: tokio::time::Instant) -> Result<(), ConnectionError> {
        let mut deadline = Duration::from_millis(self.ctx.config.handshake_timeout_ms);
        // Taken from the publishers' reserve: it must show what it wants quickly, so that
        // idle unauthenticated connections cannot sit on the reserve.
        if self.ctx.slots.available_permits() < self.ctx.config.reserved_publisher_slots as usize {
            deadline = deadline.min(RESERVE_DEADLINE);
        }
        let deadline = deadline.saturating_sub(started.elapsed());
        let request = timeout(deadline, async {
            self.handshake().await?;
            self.next_request().await
        })
        .await
        .map_err(|_| ConnectionError::Timeout("before publish/play"))??;
        match request {
            SessionEvent::Publish { app, name, query } => self.publish(app, name, query).await,
            SessionEvent::Play { app, name, token } => self.play(app, name, token).await,
            _ => Ok(()),
        }
    }

    /// Reads more bytes into `buf`; `Closed` on EOF.
    async fn read_some(&mut self) -> Result<(), ConnectionError> {
        self.buf.clear();
        if self.socket.read_buf(&mut self.buf).await? == 0 {
            return Err(ConnectionError::Closed);
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ConnectionError> {
        if self.session.pending_output() > 0 {
            let out = self.session.take_output();
            match &self.playing {
                Some(s) => s.add_bytes_out(out.len() as u64),
                None => self.ctx.hub.add_bytes_out(out.len() as u64),
            }
            let idle = Duration::from_millis(self.ctx.config.idle_timeout_ms);
            // flush: a TLS stream may keep encrypted bytes buffered after write_all (a
            // no-op on plain TCP).
            timeout(idle, async {
                self.socket.write_all(&out).await?;
                self.socket.flush().await
            })
            .await
            .map_err(|_| ConnectionError::Timeout("writing"))??;
        }
        Ok(())
    }

    async fn handshake(&mut self) -> Result<(), ConnectionError> {
        let mut hs = Handshake::new(PeerType::Server);
        loop {
            self.read_some().await?;
            match hs
                .process_bytes(&self.buf)
                .map_err(ConnectionError::Handshake)?
            {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    self.socket.write_all(&response_bytes).await?;
                    self.socket.flush().await?;
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    self.socket.write_all(&response_bytes).await?;
                    self.socket.flush().await?;
                    self.session.push(&remaining_bytes);
                    return Ok(());
                }
            }
        }
    }

    /// Runs the command exchange until the client asks to publish or play.
    async fn next_request(&mut self) -> Result<SessionEvent, ConnectionError> {
        loop {
            while let Some(ev) = self.session.poll_event()? {
                if matches!(ev, SessionEvent::Publish { .. } | SessionEvent::Play { .. }) {
                    self.flush().await?;
                    return Ok(ev);
                }
            }
            self.flush().await?;
            self.read_some().await?;
            self.session.push(&self.buf);
        }
    }

    /// Reads and discards until the peer closes, for at most [`LINGER`].
    async fn linger(&mut self) {
        let _ = self.flush().await;
        let _ = timeout(LINGER, async {
            while self.read_some().await.is_ok() {
                self.session.push(&self.buf);
                while let Ok(Some(_)) = self.session.poll_event() {}
            }
        })
        .await;
    }

    async fn refuse(&mut self, code: &str, description: &str) -> Result<(), ConnectionError> {
        self.session.reject(code, description);
        self.flush().await?;
        let _ = self.socket.shutdown().await;
        Err(ConnectionError::Refused(description.to_owned()))
    }

    async fn publish(
        &mut self,
        app: String,
        key: String,
        query: String,
    ) -> Result<(), ConnectionError> {
        self.buf.reserve(PUBLISH_READ_BUFFER);
        let mut found = self.ctx.store.find_stream_by_key(&app, &key).await?;
        if found.is_none() {
            if let Some(ext) = self.ctx.external.clone() {
                // rtmp://host/app/name?token=… : the platform decides.
                let (name, credential) = (key.as_str(), crate::extauth::credential_of(&query));
                if let Some(row) = self.ctx.store.find_stream_by_name(&app, name).await? {
                    let req = crate::extauth::AuthRequest {
                        action: crate::extauth::Action::Publish.as_str(),
                        protocol: "rtmp",
                        app: &app,
                        name,
                        stream_id: &row.id,
                        client_ip: Some(self.peer.ip()),
                        credential,
                    };
                    if ext.allows(&req).await {
                        found = Some(row);
                    }
                }
            }
        }
        let Some(stream) = found else {
            tracing::warn!(peer = %self.peer, %app, "rtmp: publish refused: unknown stream key");
            return self
                .refuse("NetStream.Publish.BadName", "unknown stream key")
                .await;
        };
        let publisher = match self.ctx.hub.publish_owned(&stream.id, "rtmp").await {
            Ok(p) => p,
            Err(HubError::AlreadyPublishing(_) | HubError::OwnedElsewhere(_)) => {
                tracing::warn!(peer = %self.peer, stream = %stream.id, "rtmp: publish refused: stream already live");
                return self
                    .refuse(
                        "NetStream.Publish.BadName",
                        "stream is already being published",
                    )
                    .await;
            }
            Err(err @ HubError::Unavailable(_)) => {
                tracing::warn!(peer = %self.peer, stream = %stream.id, %err, "rtmp: publish refused");
                return self
                    .refuse(
                        "NetStream.Publish.Failed",
                        "the server cannot take the stream now; try again later",
                    )
                    .await;
            }
        };
        tracing::info!(peer = %self.peer, stream = %stream.id, "rtmp: publishing");
        self.session.set_limits(
            self.ctx.config.max_message_bytes,
            crate::proto::rtmp::chunk::MAX_PARTIAL_MESSAGES,
        );
        self.session.accept_publish();
        self.flush().await?;
        let mut ingest = RtmpIngest::new(publisher);
        let idle = Duration::from_millis(self.ctx.config.idle_timeout_ms);
        let mut shutdown = self.shutdown.clone();
        loop {
            while let Some(ev) = self.session.poll_event()? {
                let result = match ev {
                    SessionEvent::Video { timestamp, data } => ingest.on_video(timestamp, data),
                    SessionEvent::Audio { timestamp, data } => ingest.on_audio(timestamp, data),
                    SessionEvent::Metadata(meta) => {
                        ingest.on_metadata(&meta);
                        Ok(())
                    }
                    SessionEvent::Unpublish => {
                        tracing::info!(stream = %stream.id, "rtmp: publisher finished");
                        // The stream ends now; the connection is left to the publisher to
                        // close, so the commands it still sends (deleteStream after
                        // FCUnpublish) are not met with a reset.
                        drop(ingest);
                        self.linger().await;
                        return Ok(());
                    }
                    SessionEvent::Publish { .. } | SessionEvent::Play { .. } => {
                        return Err(SessionError::Protocol("second publish/play".into()).into())
                    }
                };
                if let Err(err) = result {
                    // One bad tag is dropped; the stream carries on.
                    tracing::warn!(stream = %stream.id, %err, "rtmp: tag dropped");
                }
            }
            self.flush().await?;
            tokio::select! {
                r = timeout(idle, self.read_some()) => {
                    r.map_err(|_| ConnectionError::Timeout("waiting for media"))??;
                }
                _ = ingest.publisher().stopped() => {
                    tracing::info!(stream = %stream.id, "rtmp: publisher disconnected by the API");
                    self.session.reject("NetStream.Publish.Idle", "stopped by the server");
                    let _ = self.flush().await;
                    return Ok(());
                }
                _ = crate::shutdown::requested(&mut shutdown) => return Ok(()),
            }
            self.session.push(&self.buf);
        }
    }

    /// Puts one hub event for a player into the session's output.
    fn queue_play_event(&mut self, muxer: &mut FlvMuxer, ev: Event) {
        match ev {
            Event::Tracks(t) => {
                for out in muxer.on_tracks(t) {
                    out.send_to(&mut self.session);
                }
            }
            Event::Frame(f) => {
                if let Some(out) = muxer.on_frame(&f) {
                    out.send_to(&mut self.session);
                }
            }
        }
    }

    async fn play(
        &mut self,
        app: String,
        stream_id: String,
        token: Option<String>,
    ) -> Result<(), ConnectionError> {
        // The last free slots are kept for publishers: viewers never starve ingest.
        if self.ctx.slots.available_permits() < self.ctx.config.reserved_publisher_slots as usize {
            tracing::warn!(peer = %self.peer, stream = %stream_id, "rtmp: play refused: only publisher slots are free");
            return self
                .refuse("NetStream.Play.Failed", "server is full; try again later")
                .await;
        }
        // Private streams need a play token, as for HLS and MJPEG (`str_…?token=…`).
        if let Err(err) = self
            .ctx
            .gate
            .check_viewer(&stream_id, token.as_deref(), "rtmp", Some(self.peer.ip()))
            .await
        {
            tracing::warn!(peer = %self.peer, stream = %stream_id, "rtmp: play refused: {}", err.message);
            return self.refuse("NetStream.Play.Failed", &err.message).await;
        }
        let row = self.ctx.store.get_stream(&stream_id).await?;
        let known = row.is_some_and(|r| r.app == app);
        if known {
            // Published on another node: relayed here first.
            if let Err(err) = self.ctx.hub.ensure_live(&stream_id).await {
                tracing::warn!(peer = %self.peer, stream = %stream_id, %err, "rtmp: play refused");
                return self
                    .refuse("NetStream.Play.Failed", "try again in a moment")
                    .await;
            }
        }
        let live = known.then(|| self.ctx.hub.get(&stream_id)).flatten();
        self.playing = live.clone();
        let Some(mut sub) = live.map(|l| l.subscribe("rtmp")) else {
            return self
                .refuse("NetStream.Play.StreamNotFound", "stream is not live")
                .await;
        };
        tracing::info!(peer = %self.peer, stream = %stream_id, "rtmp: playing");
        self.session.accept_play();
        self.flush().await?;
        let mut muxer = FlvMuxer::default();
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                ev = sub.recv() => {
                    let Some(ev) = ev else {
                        self.session.end_play();
                        self.flush().await?;
                        return Ok(());
                    };
                    // Everything already queued goes out in one write: under load this is
                    // what keeps the syscalls per player below one per frame.
                    self.queue_play_event(&mut muxer, ev);
                    for _ in 0..PLAY_BATCH {
                        let Some(ev) = sub.try_recv() else { break };
                        self.queue_play_event(&mut muxer, ev);
                    }
                    self.flush().await?;
                }
                r = self.socket.read_buf(&mut self.buf) => {
                    // Players send little (acks, buffer length); read it so the socket
                    // drains, and notice when they leave.
                    if r? == 0 {
                        return Err(ConnectionError::Closed);
                    }
                    let data = self.buf.split();
                    self.session.push(&data);
                    while self.session.poll_event()?.is_some() {}
                }
                _ = crate::shutdown::requested(&mut shutdown) => return Ok(()),
            }
        }
    }
}
