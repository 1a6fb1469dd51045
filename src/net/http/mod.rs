//! The HTTP listener: the axum router served by hyper with the limits a public server needs,
//! which `axum::serve` does not set:
//! - a cap on connections, in all and per client (more are closed on accept);
//! - a deadline for the first bytes of every connection: the protocol (HTTP/1 or h2c) is
//!   detected here by peeking, so a socket that sends nothing, or half an h2 preface, is
//!   closed after `header_read_timeout` instead of being held forever;
//! - a deadline for request headers (hyper's `header_read_timeout`, which only works with a
//!   timer — without one a client dribbling header bytes holds its connection forever);
//! - an idle timeout: a connection with no request in flight and none for `idle_timeout`
//!   (HTTP/2 PINGs and other frames do not count), or to which nothing could be written for
//!   that long (a client that stopped reading), is asked to finish (HTTP/2 `GOAWAY`, HTTP/1
//!   close when between requests) and cut 5 s later. This covers idle keep-alive and h2c
//!   connections, which hyper keeps open forever.
//!
//! On HTTP/1.1 the plain `GET`s a [`FastRoute`] wants (HLS) are read and answered by our own
//! code first ([`fast`], heads in [`head`]); the first other request hands the connection to
//! hyper for the rest of its life.
//!
//! WebSocket upgrades (cameras) work; the peer address reaches handlers as `ConnectInfo`. On
//! shutdown no new connection is accepted and open ones are asked to finish.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use futures_util::future::Either;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

use super::limits::PerIpLimiter;

mod fast;
pub mod head;

/// The future of a request answered by a [`FastRoute`].
pub type FastFuture = Pin<Box<dyn std::future::Future<Output = axum::response::Response> + Send>>;

/// Requests answered before the router: the hot path of many viewers (HLS playlists, parts
/// and segments, each viewer several a second) skips routing, extractors and tower layers,
/// and on HTTP/1.1 hyper too ([`fast`]). What it does not want goes on to the router.
pub trait FastRoute: Send + Sync + 'static {
    /// Whether a `GET` of `path` (no query) is answered here.
    fn wants(&self, path: &str) -> bool;
    /// The answer to a `GET` whose path it [wants](FastRoute::wants).
    fn answer(&self, req: FastRequest, peer: std::net::SocketAddr) -> FastFuture;
}

/// A `GET` for a [`FastRoute`]: its target and `Origin`, as shared bytes of the request.
pub struct FastRequest {
    /// Path and query, ASCII.
    target: bytes::Bytes,
    origin: Option<bytes::Bytes>,
}

impl FastRequest {
    /// `None` unless `target` is an origin-form target of visible ASCII.
    pub fn new(target: bytes::Bytes, origin: Option<bytes::Bytes>) -> Option<Self> {
        (target.first() == Some(&b'/') && target.iter().all(u8::is_ascii_graphic))
            .then_some(FastRequest { target, origin })
    }

    fn target(&self) -> &str {
        std::str::from_utf8(&self.target).unwrap_or("/")
    }

    /// The path.
    pub fn path(&self) -> &str {
        let t = self.target();
        t.split_once('?').map_or(t, |(p, _)| p)
    }

    /// The query, without `?`.
    pub fn query(&self) -> Option<&str> {
        self.target().split_once('?').map(|(_, q)| q)
    }

    /// The `Origin` field, when it has one that is a valid field value.
    pub fn origin(&self) -> Option<axum::http::HeaderValue> {
        self.origin
            .clone()
            .and_then(|o| axum::http::HeaderValue::from_maybe_shared(o).ok())
    }
}

/// Connection limits.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Connections at once.
    pub max_connections: usize,
    /// Deadline for a connection's first bytes and for a request's headers.
    pub header_read_timeout: Duration,
    /// A connection that moves no byte for this long is closed.
    pub idle_timeout: Duration,
    /// Connections per client.
    pub per_ip: Arc<PerIpLimiter>,
}

/// What an idle connection gets to finish after it was asked to, before it is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The HTTP/2 connection preface (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves `router` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    fast: Option<Arc<dyn FastRoute>>,
    limits: HttpLimits,
    shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut stop = shutdown.clone();
    let mut refused: u64 = 0;
    let mut refused_ip: u64 = 0;
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%err, "http: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::shutdown::requested(&mut stop) => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused += 1;
            // One line per 1000 refusals: a flood must not flood the log too.
            if refused % 1000 == 1 {
                tracing::warn!(%peer, refused, limit = limits.max_connections, "http: connection limit reached; closing");
            }
            drop(socket);
            continue;
        };
        let Some(ip_guard) = limits.per_ip.try_acquire(peer.ip()) else {
            refused_ip += 1;
            if refused_ip % 1000 == 1 {
                tracing::warn!(%peer, refused = refused_ip, "http: per-client connection limit reached; closing");
            }
            drop(socket);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let router = router.clone();
        let fast = fast.clone();
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let h2 = match tokio::time::timeout(limits.header_read_timeout, detect(&socket)).await {
                Ok(Ok(h2)) => h2,
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::debug!(%peer, "http: no request within the deadline; closing");
                    return;
                }
            };
            let activity = Activity::new();
            // The counts go with the socket: an upgraded connection (a camera's WebSocket)
            // stays counted until it closes.
            let mut tracked = Tracked {
                inner: socket,
                activity: activity.clone(),
                _counted: (permit, ip_guard),
            };
            let mut shutdown = shutdown;
            // HTTP/1.1: the fast path first, hyper from the first request it does not take.
            let pre = match fast.as_deref().filter(|_| !h2) {
                Some(route) => {
                    match fast::serve(&mut tracked, route, peer, &activity, &limits, &mut shutdown)
                        .await
                    {
                        fast::Phase::Closed => return,
                        fast::Phase::HandOver(pre) => pre,
                    }
                }
                None => bytes::Bytes::new(),
            };
            let io = TokioIo::new(fast::Rewind::new(tracked, pre));
            // Every request is counted from its start to the end of its response body.
            let counter = activity.clone();
            let service =
                tower::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
                    let guard = counter.request_started();
                    let counted = move |res: axum::response::Response| {
                        res.map(|body| {
                            axum::body::Body::new(Counted {
                                inner: body,
                                _guard: guard,
                            })
                        })
                    };
                    if let Some(answer) = fast.as_ref().and_then(|f| fast_answer(&**f, &req, peer))
                    {
                        return Either::Left(async move {
                            Ok::<_, std::convert::Infallible>(counted(answer.await))
                        });
                    }
                    let mut req = req.map(axum::body::Body::new);
                    req.extensions_mut().insert(ConnectInfo(peer));
                    let response = router.clone().oneshot(req);
                    Either::Right(async move { Ok(counted(response.await?)) })
                });
            let service = TowerToHyperService::new(service);
            let mut builder = Builder::new(TokioExecutor::new());
            if h2 {
                builder = builder.http2_only();
                builder.http2().timer(TokioTimer::new());
            } else {
                builder = builder.http1_only();
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout);
            }
            let conn = builder.serve_connection_with_upgrades(io, service);
            // Runs the connection, closing it when idle or when the server shuts down.
            let idle = limits.idle_timeout;
            let mut conn = std::pin::pin!(conn);
            let mut cut_at: Option<tokio::time::Instant> = None;
            let mut asked = false;
            loop {
                let idle_at = tokio::time::Instant::from_std(activity.idle_since() + idle);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(err) = r {
                            tracing::debug!(%peer, %err, "http: connection ended with an error");
                        }
                        return;
                    }
                    _ = tokio::time::sleep_until(idle_at), if !asked => {
                        if activity.idle_since().elapsed() >= idle {
                            tracing::debug!(%peer, "http: idle connection; closing");
                            conn.as_mut().graceful_shutdown();
                            asked = true;
                            cut_at = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                        }
                    }
                    _ = async {
                        match cut_at {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    } => return,
                    _ = crate::shutdown::requested(&mut shutdown), if !asked => {
                        conn.as_mut().graceful_shutdown();
                        asked = true;
                    }
                }
            }
        });
    }
    // Open connections finish their requests (long-lived ones are bounded by the server's
    // shutdown timeout, which cuts this wait).
    let _ = permits.acquire_many(limits.max_connections as u32).await;
}

/// A request hyper read, answered by `route` when it wants it.
fn fast_answer(
    route: &dyn FastRoute,
    req: &axum::http::Request<hyper::body::Incoming>,
    peer: std::net::SocketAddr,
) -> Option<FastFuture> {
    if req.method() != axum::http::Method::GET || !route.wants(req.uri().path()) {
        return None;
    }
    let target = req.uri().path_and_query()?.as_str();
    let origin = req
        .headers()
        .get(axum::http::header::ORIGIN)
        .map(|o| bytes::Bytes::copy_from_slice(o.as_bytes()));
    let req = FastRequest::new(bytes::Bytes::copy_from_slice(target.as_bytes()), origin)?;
    Some(route.answer(req, peer))
}

/// Waits for the first bytes: `true` for an h2c preface, `false` for anything else (HTTP/1,
/// or bytes hyper will reject). An error when the client closes without a byte.
async fn detect(socket: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; 24];
    loop {
        let n = socket.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if !H2_PREFACE.starts_with(&buf[..n]) {
            return Ok(false);
        }
        if n >= H2_PREFACE.len() {
            return Ok(true);
        }
        // Part of the preface: peek returns at once with the same bytes, so wait a little.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What a connection is doing: requests in flight, when the last one started or ended, and
/// when the server last wrote to it. It is idle when no request is in flight and none came
/// for a while (PINGs or other frames alone do not keep it), or when nothing could be
/// written for a while (a client that stopped reading).
#[derive(Clone)]
struct Activity {
    base: Instant,
    /// Milliseconds after `base`.
    last_request_ms: Arc<AtomicU64>,
    last_write_ms: Arc<AtomicU64>,
    in_flight: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            base: Instant::now(),
            last_request_ms: Arc::new(AtomicU64::new(0)),
            last_write_ms: Arc::new(AtomicU64::new(0)),
            in_flight: Arc::new(AtomicU64::new(0)),
        }
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn wrote(&self) {
        self.last_write_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn request_started(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.last_request_ms.store(self.now_ms(), Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Since when the connection has been idle (in the past or now).
    fn idle_since(&self) -> Instant {
        let write = self.last_write_ms.load(Ordering::Relaxed);
        let ms = if self.in_flight.load(Ordering::Relaxed) > 0 {
            write
        } else {
            write.min(self.last_request_ms.load(Ordering::Relaxed))
        };
        self.base + Duration::from_millis(ms)
    }
}

/// One request in flight; ends with its response body.
struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0
            .last_request_ms
            .store(self.0.now_ms(), Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted until it is sent (or dropped).
struct Counted {
    inner: axum::body::Body,
    _guard: InFlight,
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A socket that records its last write.
struct Tracked {
    inner: TcpStream,
    activity: Activity,
    _counted: (tokio::sync::OwnedSemaphorePermit, super::limits::IpGuard),
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = crate::zerocopy::poll_send(&mut this.inner, cx, &[io::IoSlice::new(buf)])
            .unwrap_or_else(|| Pin::new(&mut this.inner).poll_write(cx, buf));
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = crate::zerocopy::poll_send(&mut this.inner, cx, bufs)
            .unwrap_or_else(|| Pin::new(&mut this.inner).poll_write_vectored(cx, bufs));
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
