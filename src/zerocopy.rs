//! Zero-copy delivery of HLS parts and segments with `sendfile(2)`.
//!
//! A part is copied once, when a viewer first asks for it, into an append-only arena of
//! memfd regions mapped read-only into the process. The part is a `Bytes` over that mapping,
//! so everything that handles it (the segmenter, hyper's write queue) is unchanged. The
//! HTTP socket ([`poll_send`]) recognises slices that lie in a region and sends them with
//! `sendfile` from the memfd instead of `writev` from memory: the kernel then passes page
//! references instead of copying every byte into the socket buffer once per viewer (with
//! `writev`, that copy was 37 % of the server's CPU time serving a segment).
//!
//! Safety: a region is written only with `pwrite` at offsets past everything handed out,
//! and a handed-out range is never written again; the memfd is sealed against shrinking
//! (no `SIGBUS` from a truncated mapping). A range's bytes are therefore immutable for as
//! long as a `Bytes` refers to them, and the mapping lives until the last one is dropped.
//! Pages still queued in the kernel when a region is unmapped stay referenced by the
//! kernel and are not reused while in flight.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// A region's size unless an object needs more.
const REGION_BYTES: usize = 1 << 20;

/// An memfd mapped read-only, filled from the front.
struct Region {
    fd: OwnedFd,
    base: usize,
    len: usize,
}

impl Drop for Region {
    fn drop(&mut self) {
        registry_remove(self.base);
        // SAFETY: `base..base+len` is the mapping made in `Region::new`; no `Bytes` refers
        // to it any more (each holds an `Arc<Region>`).
        let _ = unsafe { rustix::mm::munmap(self.base as *mut _, self.len) };
    }
}

impl Region {
    fn new(len: usize) -> io::Result<Arc<Region>> {
        use rustix::fs::{MemfdFlags, SealFlags};
        let fd = rustix::fs::memfd_create(
            "media-server-hls",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW)?;
        // SAFETY: a fresh shared read-only mapping of a memfd of `len` bytes that cannot
        // shrink; nothing else maps it.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::SHARED,
                &fd,
                0,
            )
        }?;
        let region = Arc::new(Region {
            fd,
            base: ptr as usize,
            len,
        });
        registry_insert(&region);
        Ok(region)
    }
}

/// A written range of a region: what a `Bytes` owns.
struct Slice {
    region: Arc<Region>,
    offset: usize,
    len: usize,
}

impl AsRef<[u8]> for Slice {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `offset..offset+len` lies in the mapping, was written before this slice
        // was made and is never written again; the `Arc` keeps the mapping alive.
        unsafe {
            std::slice::from_raw_parts((self.region.base + self.offset) as *const u8, self.len)
        }
    }
}

/// Copies objects into memfd regions (one arena per HLS stream, so a stream's window frees
/// its own regions).
#[derive(Default)]
pub struct Arena {
    current: Option<(Arc<Region>, usize)>,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("used", &self.current.as_ref().map(|(_, used)| *used))
            .finish()
    }
}

impl Arena {
    /// `pieces` joined into one `Bytes` that [`poll_send`] sends with `sendfile`; `None`
    /// when no region can be made (no memfd on this system): the caller joins on the heap.
    pub fn copy(&mut self, pieces: &[Bytes]) -> Option<Bytes> {
        let len: usize = pieces.iter().map(Bytes::len).sum();
        if len == 0 {
            return None;
        }
        let fits = |(r, used): &(Arc<Region>, usize)| r.len - used >= len;
        if !self.current.as_ref().is_some_and(fits) {
            let page = 4096;
            let size = REGION_BYTES.max(len.div_ceil(page) * page);
            match Region::new(size) {
                Ok(r) => self.current = Some((r, 0)),
                Err(err) => {
                    tracing::debug!(%err, "hls: no memfd region; serving from the heap");
                    return None;
                }
            }
        }
        let (region, used) = self.current.as_mut()?;
        let mut at = *used;
        for piece in pieces {
            let mut rest: &[u8] = piece;
            while !rest.is_empty() {
                match rustix::io::pwrite(&region.fd, rest, at as u64) {
                    Ok(0) | Err(_) => {
                        // The region is unusable past here: start a new one next time.
                        self.current = None;
                        return None;
                    }
                    Ok(n) => {
                        rest = &rest[n..];
                        at += n;
                    }
                }
            }
        }
        let slice = Slice {
            region: region.clone(),
            offset: *used,
            len,
        };
        *used = at;
        Some(Bytes::from_owner(slice))
    }
}

/// Live regions by base address, for [`poll_send`].
static REGIONS: RwLock<BTreeMap<usize, Weak<Region>>> = RwLock::new(BTreeMap::new());
/// How many regions exist (a socket skips the lookup when none does).
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Bytes sent with `sendfile` since start.
static SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bytes sent with `sendfile` since the process started.
pub fn sent_bytes() -> u64 {
    SENT.load(Ordering::Relaxed)
}

fn registry_insert(region: &Arc<Region>) {
    let mut map = REGIONS.write().unwrap_or_else(|e| e.into_inner());
    map.insert(region.base, Arc::downgrade(region));
    LIVE.store(map.len(), Ordering::Relaxed);
}

fn registry_remove(base: usize) {
    let mut map = REGIONS.write().unwrap_or_else(|e| e.into_inner());
    map.remove(&base);
    LIVE.store(map.len(), Ordering::Relaxed);
}

/// The region a slice of memory lies in, and its offset there.
fn find(buf: &[u8]) -> Option<(Arc<Region>, usize)> {
    if buf.is_empty() {
        return None;
    }
    let ptr = buf.as_ptr() as usize;
    let map = REGIONS.read().unwrap_or_else(|e| e.into_inner());
    let (base, weak) = map.range(..=ptr).next_back()?;
    let region = weak.upgrade()?;
    (ptr + buf.len() <= base + region.len).then(|| (region, ptr - base))
}

/// Writes `bufs` to `stream` like `poll_write_vectored`, sending what lies in an arena
/// region with `sendfile`. `None` when nothing in `bufs` does (the caller writes as usual).
pub fn poll_send(
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Option<Poll<io::Result<usize>>> {
    if LIVE.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let (first, (region, offset)) = bufs
        .iter()
        .enumerate()
        .find_map(|(i, b)| find(b).map(|f| (i, f)))?;
    if first > 0 {
        // What comes before (the response head) goes out first, marked as having more to
        // come (`MSG_MORE`), so that head and body leave in the same packets.
        let head = &bufs[..first];
        return Some(loop {
            match stream.poll_write_ready(cx) {
                Poll::Pending => break Poll::Pending,
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let sent = stream.try_io(Interest::WRITABLE, || {
                rustix::net::sendmsg(
                    stream.as_fd(),
                    head,
                    &mut rustix::net::SendAncillaryBuffer::default(),
                    rustix::net::SendFlags::MORE | rustix::net::SendFlags::NOSIGNAL,
                )
                .map_err(io::Error::from)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => break Poll::Ready(other),
            }
        });
    }
    // The following slices that continue the same range go in the same call.
    let mut len = bufs[0].len();
    for b in &bufs[1..] {
        if b.as_ptr() as usize == region.base + offset + len && offset + len + b.len() <= region.len
        {
            len += b.len();
        } else {
            break;
        }
    }
    Some(loop {
        match stream.poll_write_ready(cx) {
            Poll::Pending => break Poll::Pending,
            Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
        let mut at = offset as u64;
        let sent = stream.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(stream.as_fd(), &region.fd, Some(&mut at), len)
                .map_err(io::Error::from)
        });
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Ok(n) => {
                SENT.fetch_add(n as u64, Ordering::Relaxed);
                break Poll::Ready(Ok(n));
            }
            other => break Poll::Ready(other),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

    #[test]
    fn arena_bytes_read_back_and_regions_go_with_their_last_bytes() {
        let mut arena = Arena::default();
        let a = arena
            .copy(&[Bytes::from_static(b"hello "), Bytes::from_static(b"world")])
            .unwrap();
        assert_eq!(&a[..], b"hello world");
        let big = vec![7u8; REGION_BYTES + 10];
        let b = arena.copy(&[Bytes::from(big.clone())]).unwrap();
        assert_eq!(&b[..], &big[..]);
        assert!(find(&a[2..5]).is_some_and(|(_, off)| off == 2));
        assert!(find(b"not in a region").is_none());
        let base = a.as_ptr() as usize;
        drop(a);
        drop(arena);
        assert!(REGIONS.read().unwrap().get(&base).is_none());
        drop(b);
    }

    #[tokio::test]
    async fn a_socket_sends_arena_slices_with_sendfile_and_the_rest_as_usual() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut out = vec![];
            s.read_to_end(&mut out).await.unwrap();
            out
        });
        let mut arena = Arena::default();
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let part = arena.copy(&[Bytes::from(body.clone())]).unwrap();
        let before = sent_bytes();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        let mut pending: Vec<Bytes> = vec![
            Bytes::from(head.clone()),
            part.slice(..1000),
            part.slice(1000..),
        ];
        while !pending.is_empty() {
            let slices: Vec<IoSlice<'_>> = pending.iter().map(|b| IoSlice::new(b)).collect();
            let n = std::future::poll_fn(|cx| {
                poll_send(&mut stream, cx, &slices).unwrap_or_else(|| {
                    std::pin::Pin::new(&mut stream).poll_write_vectored(cx, &slices)
                })
            })
            .await
            .unwrap();
            let mut n = n;
            while n > 0 {
                let first = &mut pending[0];
                let take = n.min(first.len());
                let _ = first.split_to(take);
                n -= take;
                if first.is_empty() {
                    pending.remove(0);
                }
            }
        }
        stream.shutdown().await.unwrap();
        let got = reader.await.unwrap();
        assert_eq!(&got[..head.len()], &head[..]);
        assert_eq!(&got[head.len()..], &body[..]);
        assert!(
            sent_bytes() - before >= body.len() as u64,
            "sent with sendfile"
        );
    }
}
