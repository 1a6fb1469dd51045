//! HLS viewers as sessions. By default the first playlist request without a session gets
//! one: the multivariant playlist names its media playlist inside a session directory
//! (`s/{session}/media.m3u8`), and a bare media playlist request is redirected into one; the
//! media playlist's URIs are relative, so every part and segment request of that player
//! carries the session too. With `[hls] cdn = true` no URL carries a session (a cache in
//! front must see one URL for everyone); players report themselves instead with a beacon
//! (`POST /hls/{id}/s/{session}/beacon` every ~10 s, sent by this server's player page), and
//! the API marks the counts as estimates. Each request or beacon touches its session; a
//! session unseen for `hls.session_timeout_ms` (30 s) expires. A player re-fetching parts is
//! one session, so one viewer. While a session lives it holds a viewer guard on its stream,
//! so HLS viewers count with RTMP, WHEP and MJPEG viewers (and in the peak).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::hub::{Hub, ViewerGuard};

/// Most sessions kept (all streams); beyond it new sessions are not counted.
const MAX_SESSIONS: usize = 100_000;

/// One HLS viewer.
#[derive(Debug)]
struct Session {
    stream_id: String,
    started_at: SystemTime,
    last_seen: Instant,
    requests: u64,
    bytes: u64,
    remote: Option<IpAddr>,
    _guard: Option<ViewerGuard>,
}

/// A session as the API lists it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SessionInfo {
    /// The session id (the `s/{session}/` directory of the player's URLs).
    pub id: String,
    /// Always `hls`.
    pub protocol: &'static str,
    /// First request (RFC 3339).
    pub started_at: String,
    /// Seconds since the last request.
    pub idle_seconds: f64,
    /// Requests made (playlists, parts, segments).
    pub requests: u64,
    /// Bytes sent to it.
    pub bytes_out: u64,
    /// Client address, when known.
    pub remote_addr: Option<String>,
}

/// Every live HLS session.
#[derive(Debug)]
pub struct HlsSessions {
    map: Mutex<HashMap<String, Session>>,
    timeout: Duration,
}

impl HlsSessions {
    /// Sessions expiring `timeout` after their last request.
    pub fn new(timeout: Duration) -> Self {
        HlsSessions {
            map: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh session id: 16 hex characters.
    pub fn new_id() -> String {
        crate::store::random_id("", 8)
    }

    /// Whether `id` looks like one of ours (anything else is ignored, not stored).
    pub fn valid_id(id: &str) -> bool {
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
    }

    /// Records a request of session `id` for `stream_id` that sent `bytes`.
    pub fn touch(
        &self,
        hub: &Hub,
        id: &str,
        stream_id: &str,
        remote: Option<IpAddr>,
        bytes: u64,
        now: Instant,
    ) {
        let mut map = self.lock();
        if let Some(s) = map.get_mut(id) {
            if s.stream_id == stream_id {
                s.last_seen = now;
                s.requests += 1;
                s.bytes += bytes;
                // The stream went live after the session started, or came back as a new
                // session (a reconnect; a new relay in a cluster, whose viewers keep it open).
                let live = hub.get(stream_id);
                let current = match (&s._guard, &live) {
                    (Some(g), Some(l)) => g.counts_on(l),
                    (None, None) => true,
                    _ => false,
                };
                if !current {
                    s._guard = live.map(|l| l.viewer_guard("hls"));
                }
                return;
            }
        }
        if map.len() >= MAX_SESSIONS && !map.contains_key(id) {
            return;
        }
        map.insert(
            id.to_owned(),
            Session {
                stream_id: stream_id.to_owned(),
                started_at: SystemTime::now(),
                last_seen: now,
                requests: 1,
                bytes,
                remote,
                _guard: hub.get(stream_id).map(|l| l.viewer_guard("hls")),
            },
        );
    }

    /// Drops sessions unseen for the timeout (their viewers stop counting).
    pub fn expire(&self, now: Instant) {
        let timeout = self.timeout;
        self.lock()
            .retain(|_, s| now.saturating_duration_since(s.last_seen) < timeout);
    }

    /// A stream's sessions, oldest first.
    pub fn list(&self, stream_id: &str, now: Instant) -> Vec<SessionInfo> {
        let mut v: Vec<SessionInfo> = self
            .lock()
            .iter()
            .filter(|(_, s)| s.stream_id == stream_id)
            .map(|(id, s)| SessionInfo {
                id: id.clone(),
                protocol: "hls",
                started_at: crate::proto::playlist::format_pdt(s.started_at),
                idle_seconds: (now.saturating_duration_since(s.last_seen).as_secs_f64() * 10.0)
                    .round()
                    / 10.0,
                requests: s.requests,
                bytes_out: s.bytes,
                remote_addr: s.remote.map(|a| a.to_string()),
            })
            .collect();
        v.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::test_support::av_tracks;

    #[test]
    fn sessions_count_once_and_expire() {
        let hub = Hub::default();
        let publisher = hub.publish("s", "rtmp").unwrap();
        publisher.set_tracks(std::sync::Arc::new(av_tracks()));
        let sessions = HlsSessions::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let a = HlsSessions::new_id();
        assert!(HlsSessions::valid_id(&a));
        assert!(!HlsSessions::valid_id("../x") && !HlsSessions::valid_id(""));
        // One player fetching 50 parts is one viewer.
        for i in 0..50 {
            sessions.touch(
                &hub,
                &a,
                "s",
                None,
                1000,
                t0 + Duration::from_millis(i * 200),
            );
        }
        sessions.touch(&hub, &HlsSessions::new_id(), "s", None, 10, t0);
        let live = hub.get("s").unwrap();
        let snap = live.snapshot();
        assert_eq!(snap.viewers, 2);
        assert_eq!(snap.viewers_by_protocol[0], ("hls", 2));
        let list = sessions.list("s", t0 + Duration::from_secs(10));
        assert_eq!(list.len(), 2);
        let mine = list.iter().find(|s| s.id == a).unwrap();
        assert_eq!((mine.requests, mine.bytes_out), (50, 50_000));
        // 30 s after its last request the first expires; the second (t0) went before it.
        sessions.expire(t0 + Duration::from_secs(31));
        assert_eq!(live.snapshot().viewers, 1);
        sessions.expire(t0 + Duration::from_secs(40));
        assert_eq!(live.snapshot().viewers, 0);
        assert_eq!(live.snapshot().peak_viewers, 2);
    }
}
