//! The HTTP listener: the axum router served by hyper with the limits a public server needs,
//! which `axum::serve` does not set: a cap on connections (more are closed on accept) and a
//! deadline for request headers (hyper's `header_read_timeout`, which only works with a timer
//! — without one a client dribbling header bytes holds its connection forever). WebSocket
//! upgrades (cameras) work; the peer address reaches handlers as `ConnectInfo`. On shutdown
//! no new connection is accepted and open ones are asked to finish.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections at once.
    pub max_connections: usize,
    /// Deadline for a request's headers.
    pub header_read_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let mut refused: u64 = 0;
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
            _ = crate::shutdown::requested(&mut shutdown) => break,
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
        let _ = socket.set_nodelay(true);
        let service = router.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.map(axum::body::Body::new)
            },
        );
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(socket), TowerToHyperService::new(service))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(err) = conn.await {
                tracing::debug!(%peer, %err, "http: connection ended with an error");
            }
        });
    }
    // Open connections finish their requests (long-lived ones are bounded by the server's
    // shutdown timeout, which cuts this wait).
    graceful.shutdown().await;
}
