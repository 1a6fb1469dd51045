//! The fast HTTP/1.1 path: a connection's plain `GET`s that a [`FastRoute`] wants (the
//! HLS playlists, parts and segments every viewer fetches several times a second) are
//! read, answered and written here, without hyper's per-request machinery: the head is
//! parsed in place ([`super::head`]), the answer's body is written with the head in one
//! vectored write (HLS parts and segments then leave with `sendfile`, see
//! [`crate::zerocopy`]), and the next request is read into the same buffer.
//!
//! The first request that is anything else (an API call, a WebSocket upgrade, a `POST`,
//! HTTP/1.0, a malformed or oversized head) hands the connection to hyper for the rest of
//! its life, with the bytes read so far put back in front of the socket ([`Rewind`]).
//!
//! Limits are those of the hyper path: a head must be complete within
//! `header_read_timeout` of its first byte; a connection with no request for
//! `idle_timeout`, or one that takes nothing we write for that long, is closed; on shutdown
//! a connection between requests is closed and one in a request is closed after its answer.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use super::head::{self, DateCache, Head};
use super::{Activity, FastRequest, FastRoute, HttpLimits};

/// How the fast path left a connection.
pub(super) enum Phase {
    /// Closed (by the client, a limit, an error or shutdown).
    Closed,
    /// Hyper's from here: the bytes read and not consumed.
    HandOver(Bytes),
}

/// Answers the connection's fast requests until it closes or one is not for the fast path.
pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    fast: &dyn FastRoute,
    peer: SocketAddr,
    activity: &Activity,
    limits: &HttpLimits,
    shutdown: &mut watch::Receiver<bool>,
) -> Phase {
    let idle = limits.idle_timeout;
    let idle_at = |a: &Activity| Instant::from_std(a.idle_since() + idle);
    let mut buf = BytesMut::with_capacity(2048);
    let mut out = Vec::with_capacity(512);
    let mut body: Vec<Bytes> = Vec::new();
    let mut dates = DateCache::default();
    // One timer for the connection's idle limit, moved on when it fires early.
    let idle_sleep = tokio::time::sleep_until(idle_at(activity));
    tokio::pin!(idle_sleep);
    loop {
        let mut head_by: Option<Instant> = None;
        let fh = loop {
            match head::read_head(&buf) {
                Head::Fast(h) => break h,
                Head::Other => return Phase::HandOver(buf.freeze()),
                Head::Partial => {}
            }
            if !buf.is_empty() && head_by.is_none() {
                head_by = Some(Instant::now() + limits.header_read_timeout);
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(2048);
            }
            let waiting = buf.is_empty();
            tokio::select! {
                biased;
                r = io.read_buf(&mut buf) => match r {
                    Ok(0) | Err(_) => return Phase::Closed,
                    Ok(_) => {}
                },
                // Between requests only: a head being read is bounded by `head_by` (reading
                // does not move the idle clock, so this timer would fire again at once).
                _ = idle_sleep.as_mut(), if waiting => {
                    if activity.idle_since().elapsed() >= idle {
                        tracing::debug!(%peer, "http: idle connection; closing");
                        return Phase::Closed;
                    }
                    idle_sleep.as_mut().reset(idle_at(activity));
                }
                _ = sleep_until_some(head_by) => {
                    tracing::debug!(%peer, "http: request head not complete in time; closing");
                    return Phase::Closed;
                }
                _ = crate::shutdown::requested(shutdown), if waiting => return Phase::Closed,
            }
        };
        // A request the route does not want goes to hyper, whole.
        let wanted = std::str::from_utf8(&buf[fh.target.clone()])
            .ok()
            .is_some_and(|t| fast.wants(t.split_once('?').map_or(t, |(p, _)| p)));
        if !wanted {
            return Phase::HandOver(buf.freeze());
        }
        let head_bytes = buf.split_to(fh.len).freeze();
        let Some(req) = FastRequest::new(
            head_bytes.slice(fh.target.clone()),
            fh.origin.clone().map(|r| head_bytes.slice(r)),
        ) else {
            return Phase::Closed;
        };
        drop(head_bytes);
        let in_flight = activity.request_started();
        let (parts, mut answer) = fast.answer(req, peer).await.into_parts();
        body.clear();
        while let Some(frame) = answer.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            body.push(data);
                        }
                    }
                }
                Err(err) => {
                    // Nothing was sent yet, but there is no answer to give: close.
                    tracing::debug!(%peer, %err, "http: answer body failed; closing");
                    return Phase::Closed;
                }
            }
        }
        let len = body.iter().map(Bytes::len).sum();
        let close = fh.close || *shutdown.borrow();
        out.clear();
        head::write_response_head(
            &mut out,
            parts.status,
            &parts.headers,
            len,
            close,
            dates.get(SystemTime::now()),
        );
        let written = {
            let write = write_all(io, &out, &body);
            tokio::pin!(write);
            loop {
                tokio::select! {
                    biased;
                    r = &mut write => break r.is_ok(),
                    _ = idle_sleep.as_mut() => {
                        if activity.idle_since().elapsed() >= idle {
                            tracing::debug!(%peer, "http: client takes no bytes; closing");
                            break false;
                        }
                        idle_sleep.as_mut().reset(idle_at(activity));
                    }
                }
            }
        };
        body.clear();
        drop(in_flight);
        if !written {
            return Phase::Closed;
        }
        if close {
            // Our side is done; what the client still sends is read and dropped for a
            // moment, so that closing with unread bytes does not reset the connection (and
            // lose the answer) before the client has read it.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                let _ = io.shutdown().await;
                let mut sink = [0u8; 1024];
                while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
            return Phase::Closed;
        }
    }
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes `head` and then every piece of `body`, several at a time.
async fn write_all<S: AsyncWrite + Unpin>(
    io: &mut S,
    head: &[u8],
    body: &[Bytes],
) -> io::Result<()> {
    let total = head.len() + body.iter().map(Bytes::len).sum::<usize>();
    let mut done = 0;
    while done < total {
        let mut slices = [IoSlice::new(&[]); 16];
        let mut n = 0;
        let mut skip = done;
        for piece in std::iter::once(head).chain(body.iter().map(|b| &b[..])) {
            if skip >= piece.len() {
                skip -= piece.len();
                continue;
            }
            if n == slices.len() {
                break;
            }
            slices[n] = IoSlice::new(&piece[skip..]);
            skip = 0;
            n += 1;
        }
        let wrote =
            std::future::poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]))
                .await?;
        if wrote == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        done += wrote;
    }
    Ok(())
}

/// A socket with bytes already read put back in front of it.
pub(super) struct Rewind<S> {
    pre: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub(super) fn new(inner: S, pre: Bytes) -> Self {
        Rewind { pre, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rewind_reads_the_kept_bytes_first() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut r = Rewind::new(a, Bytes::from_static(b"kept "));
        b.write_all(b"then the socket").await.unwrap();
        drop(b);
        let mut all = String::new();
        r.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "kept then the socket");
    }

    #[tokio::test]
    async fn write_all_writes_head_and_many_pieces_in_order() {
        let (mut a, mut b) = tokio::io::duplex(7);
        let body: Vec<Bytes> = (0..40u8).map(|i| Bytes::from(vec![i; 3])).collect();
        let expected: Vec<u8> = b"HEAD"
            .iter()
            .copied()
            .chain(body.iter().flat_map(|p| p.iter().copied()))
            .collect();
        let reader = tokio::spawn(async move {
            let mut got = vec![];
            b.read_to_end(&mut got).await.unwrap();
            got
        });
        write_all(&mut a, b"HEAD", &body).await.unwrap();
        drop(a);
        assert_eq!(reader.await.unwrap(), expected);
    }

    /// A route that answers `GET /fast/{anything}` with the path, query and origin.
    struct Echo;

    impl FastRoute for Echo {
        fn wants(&self, path: &str) -> bool {
            path.starts_with("/fast/")
        }

        fn answer(&self, req: FastRequest, _peer: SocketAddr) -> super::super::FastFuture {
            let text = format!(
                "fast {} {:?} {:?}",
                req.path(),
                req.query(),
                req.origin().map(|o| o.to_str().unwrap_or("").to_owned())
            );
            Box::pin(async move {
                let mut resp = axum::response::Response::new(axum::body::Body::from(text));
                resp.headers_mut()
                    .insert("x-served-by", axum::http::HeaderValue::from_static("fast"));
                resp
            })
        }
    }

    async fn server(idle_ms: u64, head_ms: u64) -> (SocketAddr, watch::Sender<bool>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new()
            .route("/api", axum::routing::get(|| async { "router" }))
            .route(
                "/fast/posted",
                axum::routing::post(|| async { "router post" }),
            );
        let (tx, rx) = watch::channel(false);
        let limits = HttpLimits {
            max_connections: 100,
            header_read_timeout: std::time::Duration::from_millis(head_ms),
            idle_timeout: std::time::Duration::from_millis(idle_ms),
            per_ip: crate::net::limits::PerIpLimiter::new(100, vec![]),
        };
        tokio::spawn(super::super::serve(
            listener,
            router,
            Some(std::sync::Arc::new(Echo)),
            limits,
            rx,
        ));
        (addr, tx)
    }

    /// Reads `n` responses (each with a `content-length`) from `s`: (head, body) each.
    async fn responses(s: &mut tokio::net::TcpStream, n: usize) -> Vec<(String, String)> {
        let mut buf = vec![];
        let mut out = vec![];
        while out.len() < n {
            let mut fields = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut fields);
            if let Ok(httparse::Status::Complete(len)) = resp.parse(&buf) {
                let body_len: usize = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                    .unwrap();
                if buf.len() >= len + body_len {
                    let head = String::from_utf8(buf[..len].to_vec()).unwrap();
                    let body = String::from_utf8(buf[len..len + body_len].to_vec()).unwrap();
                    buf.drain(..len + body_len);
                    out.push((head, body));
                    continue;
                }
            }
            let mut chunk = [0u8; 4096];
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut chunk))
                .await
                .expect("a response in time")
                .unwrap();
            assert!(got > 0, "closed after {} responses", out.len());
            buf.extend_from_slice(&chunk[..got]);
        }
        out
    }

    async fn closed(s: &mut tokio::net::TcpStream, within_ms: u64) -> bool {
        let mut chunk = [0u8; 64];
        matches!(
            tokio::time::timeout(
                std::time::Duration::from_millis(within_ms),
                s.read(&mut chunk)
            )
            .await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn pipelined_fast_requests_are_answered_in_order_then_hyper_takes_over() {
        let (addr, _stop) = server(10_000, 5_000).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"GET /fast/a?x=1 HTTP/1.1\r\nHost: h\r\nOrigin: https://o.example\r\n\r\n\
              GET /fast/b HTTP/1.1\r\nHost: h\r\n\r\n\
              GET /api HTTP/1.1\r\nHost: h\r\n\r\n\
              GET /fast/c HTTP/1.1\r\nHost: h\r\n\r\n\
              POST /fast/posted HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi",
        )
        .await
        .unwrap();
        let got = responses(&mut s, 5).await;
        assert_eq!(
            got[0].1,
            r#"fast /fast/a Some("x=1") Some("https://o.example")"#
        );
        assert!(got[0].0.starts_with("HTTP/1.1 200 OK\r\n"), "{}", got[0].0);
        assert!(got[0].0.contains("x-served-by: fast\r\n"));
        assert!(got[0].0.contains("\r\ndate: "), "{}", got[0].0);
        assert_eq!(got[1].1, "fast /fast/b None None");
        assert_eq!(got[2].1, "router");
        // After the hand-over, hyper reads the requests and the route still answers its own.
        assert_eq!(got[3].1, "fast /fast/c None None");
        assert_eq!(got[4].1, "router post");
    }

    #[tokio::test]
    async fn a_head_in_pieces_is_answered_and_close_is_honoured() {
        let (addr, _stop) = server(10_000, 5_000).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /fast/slow HTTP/1.1\r\nHo").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        s.write_all(b"st: h\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let got = responses(&mut s, 1).await;
        assert_eq!(got[0].1, "fast /fast/slow None None");
        assert!(got[0].0.contains("connection: close\r\n"), "{}", got[0].0);
        assert!(
            closed(&mut s, 2_000).await,
            "closed after a Connection: close answer"
        );
    }

    #[tokio::test]
    async fn http_1_0_goes_to_hyper() {
        let (addr, _stop) = server(10_000, 5_000).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /fast/old HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut all = String::new();
        s.read_to_string(&mut all).await.unwrap();
        assert!(all.starts_with("HTTP/1.0 200 OK\r\n"), "{all}");
        assert!(all.ends_with("fast /fast/old None None"), "{all}");
    }

    #[tokio::test]
    async fn a_head_started_after_a_quiet_spell_is_cut_by_the_head_deadline() {
        // Idle limit shorter than the head deadline: once the idle timer has run, a
        // half-sent head must still be cut at its own deadline (not spin on the idle timer).
        let (addr, _stop) = server(150, 400).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /fast/x HTTP/1.1\r\n\r\n").await.unwrap();
        responses(&mut s, 1).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        s.write_all(b"GET /fast/y HTTP/1.1\r\nHo").await.unwrap();
        let t = std::time::Instant::now();
        assert!(closed(&mut s, 3_000).await, "cut");
        assert!(
            t.elapsed() >= std::time::Duration::from_millis(300),
            "at the head deadline"
        );
    }

    #[tokio::test]
    async fn slow_heads_and_idle_connections_are_closed_and_shutdown_closes_idle_ones() {
        let (addr, stop) = server(400, 200).await;
        // Half a head, then nothing: closed after the head deadline.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /fast/x HTTP/1.1\r\nHost")
            .await
            .unwrap();
        assert!(closed(&mut slow, 2_000).await, "a slow head is cut");
        // An answered request, then silence: closed after the idle limit.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /fast/x HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        responses(&mut idle, 1).await;
        let t = std::time::Instant::now();
        assert!(closed(&mut idle, 3_000).await, "an idle connection is cut");
        assert!(
            t.elapsed() >= std::time::Duration::from_millis(300),
            "not before its limit"
        );
        // A connection between requests is closed on shutdown.
        let mut open = tokio::net::TcpStream::connect(addr).await.unwrap();
        open.write_all(b"GET /fast/x HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        responses(&mut open, 1).await;
        stop.send(true).unwrap();
        assert!(closed(&mut open, 300).await, "closed on shutdown");
    }
}
