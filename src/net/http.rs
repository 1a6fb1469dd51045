//! The HTTP listener: the axum router served by hyper with the limits a public server needs,
//! which `axum::serve` does not set:
//! - a cap on connections, in all and per client (more are closed on accept);
//! - a deadline for the first bytes of every connection: the protocol (HTTP/1 or h2c) is
//!   detected here by peeking, so a socket that sends nothing, or half an h2 preface, is
//!   closed after `header_read_timeout` instead of being held forever;
//! - a deadline for request headers (hyper's `header_read_timeout`, which only works with a
//!   timer — without one a client dribbling header bytes holds its connection forever);
//! - an idle timeout: a connection that moved no byte either way for `idle_timeout` is asked
//!   to finish (HTTP/2 `GOAWAY`, HTTP/1 close when between requests) and cut 5 s later. This
//!   covers idle keep-alive and h2c connections, which hyper keeps open forever.
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
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

use super::limits::PerIpLimiter;

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
        let service = router.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.map(axum::body::Body::new)
            },
        );
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
            let io = TokioIo::new(Tracked {
                inner: socket,
                activity: activity.clone(),
                _counted: (permit, ip_guard),
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
            let mut shutdown = shutdown;
            let mut conn = std::pin::pin!(conn);
            let mut cut_at: Option<tokio::time::Instant> = None;
            let mut asked = false;
            loop {
                let idle_at = tokio::time::Instant::from_std(activity.last() + idle);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(err) = r {
                            tracing::debug!(%peer, %err, "http: connection ended with an error");
                        }
                        return;
                    }
                    _ = tokio::time::sleep_until(idle_at), if !asked => {
                        if activity.last().elapsed() >= idle {
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

/// When a connection last moved a byte.
#[derive(Clone)]
struct Activity {
    base: Instant,
    /// Milliseconds after `base`.
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            base: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A socket that records its last read or write.
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
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
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
