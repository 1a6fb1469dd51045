//! The sockets every WebRTC session shares: one UDP socket (`[webrtc] udp_listen`) and, when
//! configured, one ICE-TCP listener (`tcp_listen`, RFC 6544 passive candidates with RFC 4571
//! framing).
//!
//! Inbound, a datagram is routed to its session: a STUN binding request by the ICE ufrag in
//! its USERNAME (which also teaches the route its remote address), anything else (DTLS, SRTP,
//! SRTCP) by the remote address a binding request came from. What no session claims is
//! counted and dropped. Outbound, sessions send directly on the shared socket (with the source
//! address the engine chose, so a wildcard socket answers from the address it was reached on);
//! a run of equal-sized packets to one peer goes out as one GSO send where the kernel has it.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use str0m::net::{Protocol, TcpType};
use str0m::Candidate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::config::WebRtcConfig;
use crate::proto::ice;

/// Datagrams queued for one session before more are dropped.
const INBOX: usize = 1024;
/// Framed packets queued for one ICE-TCP connection before more are dropped.
const TCP_QUEUE: usize = 1024;
/// Socket buffers asked for (the kernel may cap them).
const SOCKET_BUFFER: usize = 8 << 20;
/// An ICE-TCP connection that has not sent a routable STUN request in this long is closed.
const TCP_HELLO: std::time::Duration = std::time::Duration::from_secs(10);
/// An ICE-TCP connection silent this long is closed (ICE checks come every few seconds).
const TCP_IDLE: std::time::Duration = std::time::Duration::from_secs(30);
/// Remote addresses one session may be reached from at once (ICE tries a few pairs).
const MAX_ADDRS_PER_SESSION: usize = 8;
/// Longer packets are no WebRTC traffic of ours (the engines send at most ~1,200 bytes).
const MAX_DATAGRAM: usize = 2048;

/// One packet for a session.
#[derive(Debug)]
pub struct Datagram {
    /// UDP or TCP.
    pub proto: Protocol,
    /// The peer's address.
    pub source: SocketAddr,
    /// Our address it arrived on.
    pub destination: SocketAddr,
    /// The packet.
    pub data: Vec<u8>,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Clone)]
struct Route {
    session: Arc<str>,
    /// The session's ICE password: a STUN request must prove it before it moves a route.
    password: Arc<str>,
    tx: mpsc::Sender<Datagram>,
}

#[derive(Default)]
struct Routes {
    by_ufrag: HashMap<String, Route>,
    by_addr: HashMap<(Protocol, SocketAddr), Route>,
}

/// Counters of the shared port (for `/metrics` and tests).
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Datagrams no session claimed.
    pub unrouted: AtomicU64,
    /// Datagrams dropped because their session's queue was full.
    pub inbox_full: AtomicU64,
    /// Packets not sent because the socket's buffer was full or it failed.
    pub send_dropped: AtomicU64,
}

/// The shared sockets and the routes to sessions.
pub struct Endpoint {
    udp: Arc<UdpSocket>,
    udp_state: quinn_udp::UdpSocketState,
    udp_local: SocketAddr,
    tcp_local: Option<SocketAddr>,
    host_ips: Vec<IpAddr>,
    discovered: Vec<IpAddr>,
    routes: Mutex<Routes>,
    tcp_conns: Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
    max_tcp: usize,
    /// Counters.
    pub stats: EndpointStats,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("udp", &self.udp_local)
            .field("tcp", &self.tcp_local)
            .finish_non_exhaustive()
    }
}

/// The addresses a wildcard socket is reachable on: every non-loopback interface address of
/// its family (IPv6 link-local left out), or the loopback one when there is no other.
fn interface_ips(wildcard: IpAddr) -> Vec<IpAddr> {
    let v6 = wildcard.is_ipv6();
    let mut ips: Vec<IpAddr> = match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs
            .filter_map(|a| {
                let addr = a.address?;
                if let Some(v4) = addr.as_sockaddr_in() {
                    return Some(IpAddr::V4(v4.ip()));
                }
                addr.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip()))
            })
            .filter(|ip| {
                !ip.is_loopback()
                    && !ip.is_unspecified()
                    && match ip {
                        IpAddr::V4(_) => true,
                        IpAddr::V6(a) => v6 && (a.segments()[0] & 0xffc0) != 0xfe80,
                    }
            })
            .collect(),
        Err(err) => {
            tracing::warn!(%err, "webrtc: cannot list the network interfaces");
            Vec::new()
        }
    };
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        ips.push(if v6 {
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        });
    }
    ips
}

impl Endpoint {
    /// Binds the UDP socket (and the TCP listener) and starts reading them until `shutdown`.
    pub async fn bind(
        config: &WebRtcConfig,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<Arc<Self>> {
        let udp = UdpSocket::bind(config.udp_listen).await?;
        let udp_state = quinn_udp::UdpSocketState::new((&udp).into())?;
        let _ = udp_state.set_send_buffer_size((&udp).into(), SOCKET_BUFFER);
        let _ = udp_state.set_recv_buffer_size((&udp).into(), SOCKET_BUFFER);
        let udp_local = udp.local_addr()?;
        let tcp = if config.tcp_listen.is_empty() {
            None
        } else {
            let addr: SocketAddr = config.tcp_listen.parse().map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "webrtc.tcp_listen")
            })?;
            Some(TcpListener::bind(addr).await?)
        };
        let tcp_local = tcp.as_ref().map(|l| l.local_addr()).transpose()?;
        let host_ips = if udp_local.ip().is_unspecified() {
            interface_ips(udp_local.ip())
        } else {
            vec![udp_local.ip()]
        };
        let mut discovered = Vec::new();
        for server in &config.ice_servers {
            match discover(&udp, server).await {
                Some(ip) if !host_ips.contains(&ip) && !discovered.contains(&ip) => {
                    tracing::info!(%server, %ip, "webrtc: public address from STUN");
                    discovered.push(ip);
                }
                Some(_) => {}
                None => tracing::warn!(%server, "webrtc: no answer from the STUN server"),
            }
        }
        let endpoint = Arc::new(Endpoint {
            discovered,
            udp: Arc::new(udp),
            udp_state,
            udp_local,
            tcp_local,
            host_ips,
            routes: Mutex::new(Routes::default()),
            tcp_conns: Mutex::new(HashMap::new()),
            max_tcp: config.max_sessions.saturating_mul(2),
            stats: EndpointStats::default(),
        });
        tracing::info!(udp = %udp_local, tcp = ?tcp_local, candidates = ?endpoint.host_ips, "webrtc: media port open");
        tokio::spawn(endpoint.clone().read_udp(shutdown.clone()));
        if let Some(listener) = tcp {
            tokio::spawn(endpoint.clone().accept_tcp(listener, shutdown));
        }
        Ok(endpoint)
    }

    /// The UDP address the socket is bound to.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_local
    }

    /// The ICE-TCP address, if listening.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_local
    }

    /// Public addresses the configured STUN servers reported for the UDP port.
    pub fn discovered_ips(&self) -> &[IpAddr] {
        &self.discovered
    }

    /// Our host candidates: the UDP port on every host address, and the TCP port (passive).
    pub fn candidates(&self) -> Vec<Candidate> {
        let mut out = Vec::new();
        for ip in &self.host_ips {
            if let Ok(c) = Candidate::host(SocketAddr::new(*ip, self.udp_local.port()), "udp") {
                out.push(c);
            }
        }
        if let Some(tcp) = self.tcp_local {
            let ips = if tcp.ip().is_unspecified() {
                self.host_ips.clone()
            } else {
                vec![tcp.ip()]
            };
            for ip in ips {
                let c = Candidate::builder()
                    .tcp()
                    .host(SocketAddr::new(ip, tcp.port()))
                    .tcptype(TcpType::Passive)
                    .build();
                if let Ok(c) = c {
                    out.push(c);
                }
            }
        }
        out
    }

    /// Routes STUN requests naming `ufrag` (and then their peers' packets) to a new inbox.
    pub fn register(&self, session: &str, ufrag: &str, password: &str) -> mpsc::Receiver<Datagram> {
        let (tx, rx) = mpsc::channel(INBOX);
        self.routes().by_ufrag.insert(
            ufrag.to_owned(),
            Route {
                session: Arc::from(session),
                password: Arc::from(password),
                tx,
            },
        );
        rx
    }

    /// Routes a session by new ICE credentials (after an ICE restart) instead of its old
    /// ones; the addresses it was reached from stay routed until the new checks move them.
    pub fn reroute(&self, session: &str, ufrag: &str, password: &str) {
        let mut routes = self.routes();
        let Some(tx) = routes
            .by_ufrag
            .values()
            .find(|r| &*r.session == session)
            .map(|r| r.tx.clone())
        else {
            return;
        };
        routes.by_ufrag.retain(|_, r| &*r.session != session);
        routes.by_ufrag.insert(
            ufrag.to_owned(),
            Route {
                session: Arc::from(session),
                password: Arc::from(password),
                tx,
            },
        );
    }

    /// Forgets every route to a session.
    pub fn unregister(&self, session: &str) {
        let mut routes = self.routes();
        routes.by_ufrag.retain(|_, r| &*r.session != session);
        routes.by_addr.retain(|_, r| &*r.session != session);
    }

    /// Sessions routed by ufrag (for tests: every session is reachable).
    pub fn routed_sessions(&self) -> usize {
        self.routes().by_ufrag.len()
    }

    /// Remote addresses routed to a session (for tests: none left behind).
    pub fn routed_addresses(&self) -> usize {
        self.routes().by_addr.len()
    }

    /// Open ICE-TCP connections.
    pub fn tcp_connections(&self) -> usize {
        self.tcp_conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands a packet to its session, or counts it as unrouted; true if a session took it.
    /// A STUN request that names a session and proves its password (MESSAGE-INTEGRITY)
    /// routes its source address to that session; nothing else moves a route, so a forged
    /// request cannot divert another session's media.
    fn dispatch(
        &self,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) -> bool {
        if data.len() > MAX_DATAGRAM {
            self.stats.unrouted.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let mut routes = self.routes();
        let key = (proto, source);
        let route = match ice::local_ufrag(data) {
            Some(ufrag) => match routes.by_ufrag.get(ufrag).cloned() {
                Some(route) if ice::integrity_ok(data, &route.password) => {
                    let known = routes
                        .by_addr
                        .get(&key)
                        .is_some_and(|r| r.session == route.session);
                    if !known {
                        let mine: Vec<(Protocol, SocketAddr)> = routes
                            .by_addr
                            .iter()
                            .filter(|(_, r)| r.session == route.session)
                            .map(|(k, _)| *k)
                            .collect();
                        if mine.len() >= MAX_ADDRS_PER_SESSION {
                            if let Some(oldest) = mine.first() {
                                routes.by_addr.remove(oldest);
                            }
                        }
                        routes.by_addr.insert(key, route.clone());
                    }
                    Some(route)
                }
                _ => None,
            },
            None => routes.by_addr.get(&key).cloned(),
        };
        drop(routes);
        let Some(route) = route else {
            self.stats.unrouted.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let d = Datagram {
            proto,
            source,
            destination,
            data: data.to_vec(),
            at: Instant::now(),
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = route.tx.try_send(d) {
            self.stats.inbox_full.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    async fn read_udp(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let slots = quinn_udp::BATCH_SIZE.clamp(1, 16);
        let mut bufs = vec![vec![0u8; 65_536]; slots];
        let mut metas = vec![quinn_udp::RecvMeta::default(); slots];
        loop {
            tokio::select! {
                r = self.udp.readable() => if let Err(err) = r {
                    tracing::warn!(%err, "webrtc: UDP socket failed");
                    return;
                },
                _ = crate::shutdown::requested(&mut shutdown) => return,
            }
            let mut iovs: Vec<IoSliceMut<'_>> = bufs
                .iter_mut()
                .map(|b| IoSliceMut::new(&mut b[..]))
                .collect();
            let got = self.udp.try_io(tokio::io::Interest::READABLE, || {
                self.udp_state
                    .recv((&*self.udp).into(), &mut iovs, &mut metas)
            });
            let n = match got {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(err) => {
                    // ICMP errors from one peer surface here; the socket keeps serving.
                    tracing::debug!(%err, "webrtc: UDP receive");
                    continue;
                }
            };
            for (meta, buf) in metas.iter().zip(iovs.iter()).take(n) {
                let destination = SocketAddr::new(
                    meta.dst_ip.map(unmap).unwrap_or(self.udp_local.ip()),
                    self.udp_local.port(),
                );
                let source = SocketAddr::new(unmap(meta.addr.ip()), meta.addr.port());
                let stride = meta.stride.max(1);
                for packet in buf[..meta.len.min(buf.len())].chunks(stride) {
                    self.dispatch(Protocol::Udp, source, destination, packet);
                }
            }
        }
    }

    async fn accept_tcp(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = crate::shutdown::requested(&mut shutdown) => return,
            };
            match accepted {
                Ok((stream, _)) if self.tcp_connections() >= self.max_tcp => {
                    // Full: the connection is dropped (closed) at once.
                    drop(stream);
                }
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(self.clone().serve_tcp(stream, peer, shutdown.clone()));
                }
                Err(err) => {
                    tracing::debug!(%err, "webrtc: TCP accept");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// One ICE-TCP connection: frames in are routed like datagrams; frames out come from
    /// its queue. It lives until the peer closes it, the server shuts down, it never sends a
    /// STUN request a session claims, or it is silent for [`TCP_IDLE`].
    async fn serve_tcp(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let local = match stream.local_addr() {
            Ok(a) => SocketAddr::new(unmap(a.ip()), a.port()),
            Err(_) => return,
        };
        let peer = SocketAddr::new(unmap(peer.ip()), peer.port());
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(TCP_QUEUE);
        self.tcp_conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, tx);
        let (mut read, mut write) = stream.into_split();
        let writer = tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if write.write_all(&frame).await.is_err() {
                    return;
                }
            }
        });
        let mut frames = ice::FrameReader::default();
        let mut buf = vec![0u8; 16 * 1024];
        let hello_by = tokio::time::Instant::now() + TCP_HELLO;
        let mut routed = false;
        loop {
            let n = tokio::select! {
                r = tokio::time::timeout(TCP_IDLE, read.read(&mut buf)) => match r {
                    Ok(Ok(0) | Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => n,
                },
                _ = tokio::time::sleep_until(hello_by), if !routed => break,
                _ = crate::shutdown::requested(&mut shutdown) => break,
            };
            frames.push(&buf[..n]);
            while let Some(frame) = frames.next_frame() {
                let stun = ice::local_ufrag(&frame).is_some();
                if self.dispatch(Protocol::Tcp, peer, local, &frame) && stun {
                    routed = true;
                }
            }
            if frames.buffered() > 2 * ice::MAX_FRAME {
                break;
            }
        }
        self.tcp_conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer);
        self.routes().by_addr.remove(&(Protocol::Tcp, peer));
        writer.abort();
    }

    /// Sends what an engine produced: UDP packets on the shared socket, TCP ones framed on
    /// their connection. A run of UDP packets to one destination, equal in size but for a
    /// shorter last one, goes out in one GSO send where the kernel supports it.
    pub fn send(&self, batch: &mut Vec<str0m::net::Transmit>) {
        let max_gso = self.udp_state.max_gso_segments().max(1);
        let mut i = 0;
        while i < batch.len() {
            let t = &batch[i];
            if t.proto != Protocol::Udp {
                self.send_tcp(t.destination, &t.contents);
                i += 1;
                continue;
            }
            let size = t.contents.len();
            // One GSO send is one UDP datagram's worth of bytes at most.
            let max_segments = max_gso.min(65_000 / size.max(1)).max(1);
            let mut end = i + 1;
            while end < batch.len()
                && end - i < max_segments
                && batch[end].proto == Protocol::Udp
                && batch[end].destination == t.destination
                && batch[end].source == t.source
                && batch[end - 1].contents.len() == size
                && batch[end].contents.len() <= size
            {
                end += 1;
            }
            let src_ip = self
                .udp_local
                .ip()
                .is_unspecified()
                .then_some(t.source.ip());
            if end - i == 1 {
                self.send_udp(t.destination, &t.contents, None, src_ip);
            } else {
                let mut joined = Vec::with_capacity(size * (end - i));
                for p in &batch[i..end] {
                    joined.extend_from_slice(&p.contents);
                }
                self.send_udp(t.destination, &joined, Some(size), src_ip);
            }
            i = end;
        }
        batch.clear();
    }

    fn send_udp(
        &self,
        destination: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
        src_ip: Option<IpAddr>,
    ) {
        let transmit = quinn_udp::Transmit {
            destination,
            ecn: None,
            contents,
            segment_size,
            src_ip,
        };
        let sent = self.udp.try_io(tokio::io::Interest::WRITABLE, || {
            self.udp_state.try_send((&*self.udp).into(), &transmit)
        });
        if let Err(err) = sent {
            let packets = segment_size.map_or(1, |s| contents.len().div_ceil(s.max(1)));
            self.stats
                .send_dropped
                .fetch_add(packets as u64, Ordering::Relaxed);
            if err.kind() != std::io::ErrorKind::WouldBlock {
                tracing::debug!(%err, %destination, "webrtc: UDP send");
            }
        }
    }

    fn send_tcp(&self, destination: SocketAddr, contents: &[u8]) {
        let Some(framed) = ice::frame(contents) else {
            return;
        };
        let conn = self
            .tcp_conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&destination)
            .cloned();
        match conn {
            Some(tx) if tx.try_send(framed).is_ok() => {}
            _ => {
                self.stats.send_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// How long a STUN server has to answer at startup.
const STUN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Asks a `stun:host[:port]` server which address our UDP socket has on its side.
async fn discover(udp: &UdpSocket, server: &str) -> Option<IpAddr> {
    let hostport = server.strip_prefix("stun:")?;
    let hostport = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_owned()
    } else {
        format!("{hostport}:3478")
    };
    let target = tokio::net::lookup_host(&hostport)
        .await
        .ok()?
        .find(|a| a.is_ipv4() == udp.local_addr().map(|l| l.is_ipv4()).unwrap_or(true))?;
    let transaction: [u8; 12] = rand::random();
    udp.send_to(&ice::binding_request(transaction), target)
        .await
        .ok()?;
    let mut buf = [0u8; 1500];
    let deadline = tokio::time::Instant::now() + STUN_WAIT;
    loop {
        let (n, from) = tokio::time::timeout_at(deadline, udp.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        if from != target {
            continue;
        }
        if let Some(addr) = ice::mapped_address(&buf[..n], transaction) {
            return Some(unmap(addr.ip()));
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is (a dual-stack socket reports them).
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
