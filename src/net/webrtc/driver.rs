//! One session's run loop around its `str0m` engine, used by the WHIP and WHEP tasks:
//!
//! ```text
//! loop {
//!     driver.drain(&mut events)?;          // transmits sent, events collected
//!     for e in events.drain(..) { … }       // media added, keyframe requests, RTP, …
//!     select! {
//!         w = driver.wait() => driver.handle(w)?,   // a datagram, a timer, a candidate, the end
//!         frame = hub.recv() => write it,            // (WHEP) one mutation
//!     }
//! }
//! ```
//!
//! Every mutation of the engine is followed by a drain (str0m's one rule). The driver ends
//! the session on DELETE or stream end ([`super::Session::close`]), on shutdown, when the
//! peer has not connected within `connect_timeout_ms`, and when ICE has been disconnected for
//! `disconnect_timeout_ms` (a peer that comes back within it keeps its session). Dropping the
//! driver releases the session: its routes, its registry entry and its slot.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::net::Receive;
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::mpsc;

use super::endpoint::Datagram;
use super::{Command, Session, WebRtc};

/// Why a session ended (for the log).
pub type End = &'static str;

/// What woke the driver up.
#[derive(Debug)]
pub enum Wake {
    /// A packet from the peer.
    Datagram(Datagram),
    /// A timer: the engine's or ours.
    Timeout,
    /// A command from the API.
    Command(Command),
    /// The session must end.
    End(End),
}

/// A session's engine and the inputs it waits on.
pub struct Driver {
    rtc: Rtc,
    webrtc: Arc<WebRtc>,
    session: Arc<Session>,
    inbox: mpsc::Receiver<Datagram>,
    commands: mpsc::UnboundedReceiver<Command>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    next_timeout: Instant,
    connect_by: Option<Instant>,
    /// An ICE restart must find a checked pair by then.
    restart_by: Option<Instant>,
    lost_since: Option<Instant>,
    transmits: Vec<str0m::net::Transmit>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("session", &self.session.id)
            .finish_non_exhaustive()
    }
}

impl Driver {
    pub(super) fn new(
        rtc: Rtc,
        webrtc: Arc<WebRtc>,
        session: Arc<Session>,
        inbox: mpsc::Receiver<Datagram>,
        commands: mpsc::UnboundedReceiver<Command>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        let now = Instant::now();
        let connect_by = now + Duration::from_millis(webrtc.config.connect_timeout_ms);
        Driver {
            rtc,
            webrtc,
            session,
            inbox,
            commands,
            shutdown,
            next_timeout: now,
            connect_by: Some(connect_by),
            restart_by: None,
            lost_since: None,
            transmits: Vec::new(),
        }
    }

    /// The engine, for one mutation (write media, request a keyframe); drain after it.
    pub fn rtc(&mut self) -> &mut Rtc {
        &mut self.rtc
    }

    /// The session.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// Whether ICE and DTLS are up.
    pub fn is_connected(&self) -> bool {
        self.session.connected.load(Ordering::SeqCst)
    }

    fn deadline(&self) -> Instant {
        let disconnect = Duration::from_millis(self.webrtc.config.disconnect_timeout_ms);
        [
            Some(self.next_timeout),
            self.connect_by,
            self.restart_by,
            self.lost_since.map(|t| t + disconnect),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.next_timeout)
    }

    /// Waits for the next input: a datagram, a timer, a command or the end.
    pub async fn wait(&mut self) -> Wake {
        let deadline = self.deadline();
        // A timer that is due goes first: a busy inbox must not starve RTCP, retransmits or
        // the ICE checks.
        if deadline <= Instant::now() {
            tokio::task::yield_now().await;
            return Wake::Timeout;
        }
        let deadline = tokio::time::Instant::from_std(deadline);
        tokio::select! {
            biased;
            _ = self.session.closed() => Wake::End("closed by DELETE or stream end"),
            _ = crate::shutdown::requested(&mut self.shutdown) => Wake::End("server shutting down"),
            d = self.inbox.recv() => d.map_or(Wake::End("endpoint gone"), Wake::Datagram),
            c = self.commands.recv() => c.map_or(Wake::End("session dropped"), Wake::Command),
            _ = tokio::time::sleep_until(deadline) => Wake::Timeout,
        }
    }

    /// Feeds one input to the engine (a mutation: drain after it).
    pub fn handle(&mut self, wake: Wake) -> Result<(), End> {
        let now = Instant::now();
        match wake {
            Wake::End(reason) => return Err(reason),
            Wake::Datagram(d) => {
                let Ok(receive) = Receive::new(d.proto, d.source, d.destination, &d.data) else {
                    // Not STUN, DTLS or RTP: ignored like any stray datagram.
                    return Ok(());
                };
                if let Err(err) = self.rtc.handle_input(Input::Receive(d.at, receive)) {
                    tracing::debug!(session = %self.session.id, %err, "webrtc: input refused");
                }
            }
            Wake::Command(Command::Candidate(c)) => self.rtc.add_remote_candidate(c),
            Wake::Command(Command::IceRestart {
                offer,
                ufrag,
                candidates,
                reply,
            }) => {
                let answer = str0m::change::SdpOffer::from_sdp_string(&offer)
                    .map_err(|e| e.to_string())
                    .and_then(|offer| {
                        // As at the first offer, a state str0m does not expect is caught.
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            self.rtc.sdp_api().accept_offer(offer)
                        }))
                        .map_err(|_| "the restart could not be negotiated".to_owned())?
                        .map(|answer| answer.to_sdp_string())
                        .map_err(|e| e.to_string())
                    });
                let fragment = answer.and_then(|answer| {
                    self.webrtc
                        .restarted(&self.session, &answer, ufrag)
                        .ok_or_else(|| "the restart's answer has no credentials".to_owned())
                });
                match fragment {
                    Ok(fragment) => {
                        for c in candidates {
                            self.rtc.add_remote_candidate(c);
                        }
                        let timeout = Duration::from_millis(self.webrtc.config.connect_timeout_ms);
                        self.restart_by = Some(now + timeout);
                        let _ = reply.send(Ok(fragment));
                    }
                    // The engine may be half-way through a restart: the session ends (the
                    // peer starts a new one) rather than carry on in a state nobody knows.
                    Err(err) => {
                        tracing::info!(session = %self.session.id, %err, "webrtc: ICE restart failed");
                        let _ = reply.send(Err(err));
                        return Err("ICE restart failed");
                    }
                }
            }
            Wake::Timeout => {
                if self.connect_by.is_some_and(|t| now >= t) {
                    return Err("not connected in time");
                }
                if self.restart_by.is_some_and(|t| now >= t) {
                    return Err("ICE restart not completed in time");
                }
                let disconnect = Duration::from_millis(self.webrtc.config.disconnect_timeout_ms);
                if self.lost_since.is_some_and(|t| now >= t + disconnect) {
                    return Err("peer disconnected");
                }
                if let Err(err) = self.rtc.handle_input(Input::Timeout(now)) {
                    tracing::debug!(session = %self.session.id, %err, "webrtc: timeout");
                }
            }
        }
        Ok(())
    }

    /// Drains the engine after a mutation: packets are sent, events appended to `events`.
    /// An error means the session is over.
    ///
    /// A timer that is already due waits for the next wake (a trip through the scheduler).
    /// Running such timers here (up to 64 in a row) cut a viewer's CPU by ~12 % but made
    /// Chromium place transcoded AAC ~40 ms further from the picture than native Opus
    /// (tests/browser.rs's A/V test failed 2 of 4 runs): reverted until that is understood.
    pub fn drain(&mut self, events: &mut Vec<Event>) -> Result<(), End> {
        let result = loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.next_timeout = t;
                    break Ok(());
                }
                Ok(Output::Transmit(t)) => self.transmits.push(t),
                Ok(Output::Event(e)) => {
                    match &e {
                        Event::Connected => {
                            self.connect_by = None;
                            self.session.connected.store(true, Ordering::SeqCst);
                        }
                        Event::IceConnectionStateChange(state) => {
                            tracing::debug!(session = %self.session.id, ?state, "webrtc: ICE");
                            match state {
                                IceConnectionState::Disconnected => {
                                    self.lost_since.get_or_insert_with(Instant::now);
                                }
                                IceConnectionState::Connected | IceConnectionState::Completed => {
                                    self.lost_since = None;
                                    self.restart_by = None;
                                    if !self.session.ice_up.swap(true, Ordering::SeqCst) {
                                        self.session.ice_connects.fetch_add(1, Ordering::SeqCst);
                                    }
                                }
                                IceConnectionState::Checking => {
                                    self.session.ice_up.store(false, Ordering::SeqCst)
                                }
                                _ => {}
                            }
                        }
                        Event::Closed => break Err("closed by the peer"),
                        _ => {}
                    }
                    events.push(e);
                }
                Err(err) => {
                    tracing::info!(session = %self.session.id, %err, "webrtc: engine failed");
                    break Err("ICE/DTLS failed");
                }
            }
        };
        if !self.transmits.is_empty() {
            self.webrtc.endpoint.send(&mut self.transmits);
        }
        if result.is_ok() && !self.rtc.is_alive() {
            return Err("closed");
        }
        result
    }

    /// Ends the session with a reason for the log (dropping the driver does the rest).
    pub fn finish(self, reason: End) {
        tracing::info!(session = %self.session.id, kind = self.session.kind.as_str(), stream = %self.session.stream_id, reason, "webrtc: session ended");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Sends what closing produced (the DTLS close_notify), then releases the session;
        // after a panic in the engine only the release.
        if !std::thread::panicking() {
            self.rtc.disconnect();
            let mut events = Vec::new();
            let _ = self.drain(&mut events);
        }
        self.session.close();
        self.webrtc.remove(&self.session);
    }
}
