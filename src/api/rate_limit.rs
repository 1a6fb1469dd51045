//! Fixed-window rate limiting per API token and per client IP, and the middleware that
//! authenticates the caller once, applies the limit, and adds `X-RateLimit-*` headers to
//! every API response.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header::AUTHORIZATION, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::ApiState;
use crate::error::HttpError;
use crate::store::TokenRow;

/// Length of a rate-limit window, in seconds.
const WINDOW_SECS: u64 = 60;
/// Windows kept before stale ones are swept (at most once per window).
const SWEEP_ABOVE: usize = 10_000;
/// Keys tracked at most in one window; a new key beyond it is refused (429) until the next.
const MAX_KEYS: usize = 200_000;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Requests allowed per window.
    pub limit: u32,
    /// Requests left in this window.
    pub remaining: u32,
    /// Unix time (s) when the window resets.
    pub reset: u64,
}

/// How long a verified token is trusted without asking the database again.
const TOKEN_CACHE_SECS: u64 = 30;
/// Verified tokens remembered at most.
const TOKEN_CACHE_MAX: usize = 10_000;

/// Counters per key (`tok:{id}` or `ip:{addr}`), and the tokens verified recently.
#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: Mutex<Windows>,
    /// Verified tokens by the SHA-256 of their secret: (verified at, row).
    verified: Mutex<HashMap<[u8; 32], (u64, TokenRow)>>,
}

#[derive(Debug, Default)]
struct Windows {
    counts: HashMap<String, (u64, u32)>,
    swept: u64,
}

impl RateLimiter {
    /// Counts a request for `key` at `now` (Unix seconds) against `limit` per minute.
    pub fn check(&self, key: &str, limit: u32, now: u64) -> Decision {
        let start = now - now % WINDOW_SECS;
        let mut guard = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let windows = &mut *guard;
        if windows.counts.len() > SWEEP_ABOVE && windows.swept != start {
            windows.counts.retain(|_, (s, _)| *s == start);
            windows.swept = start;
        }
        if windows.counts.len() >= MAX_KEYS && !windows.counts.contains_key(key) {
            return Decision {
                allowed: false,
                limit,
                remaining: 0,
                reset: start + WINDOW_SECS,
            };
        }
        let w = windows.counts.entry(key.to_owned()).or_insert((start, 0));
        if w.0 != start {
            *w = (start, 0);
        }
        let allowed = w.1 < limit;
        if allowed {
            w.1 += 1;
        }
        Decision {
            allowed,
            limit,
            remaining: limit.saturating_sub(w.1),
            reset: start + WINDOW_SECS,
        }
    }
}

impl RateLimiter {
    /// Whether `key` has requests left in this window, without counting one.
    fn has_room(&self, key: &str, limit: u32, now: u64) -> Option<Decision> {
        let start = now - now % WINDOW_SECS;
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let used = windows
            .counts
            .get(key)
            .filter(|(s, _)| *s == start)
            .map_or(0, |(_, n)| *n);
        (used >= limit).then_some(Decision {
            allowed: false,
            limit,
            remaining: 0,
            reset: start + WINDOW_SECS,
        })
    }

    fn cached_token(&self, digest: &[u8; 32], now: u64) -> Option<TokenRow> {
        let cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(digest)
            .filter(|(at, _)| now.saturating_sub(*at) < TOKEN_CACHE_SECS)
            .map(|(_, row)| row.clone())
    }

    fn remember_token(&self, digest: [u8; 32], row: TokenRow, now: u64) {
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= TOKEN_CACHE_MAX {
            cache.retain(|_, (at, _)| now.saturating_sub(*at) < TOKEN_CACHE_SECS);
            if cache.len() >= TOKEN_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(digest, (now, row));
    }

    /// Forgets a deleted token at once (it is refused from the next request on).
    pub fn forget_token(&self, token_id: &str) {
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, (_, row)| row.id != token_id);
    }
}

/// What the middleware learned about the caller, for the [`super::Auth`] extractor.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The verified token, if a valid one was presented.
    pub token: Option<TokenRow>,
    /// Whether an `Authorization` header was present at all.
    pub presented: bool,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Authenticates once, rate-limits, and stamps the `X-RateLimit-*` headers.
///
/// A token seen in the last 30 s is taken from memory; any other bearer is looked up only
/// while the client's IP (an IPv4 address or IPv6 /64) has requests left, and a made-up one
/// is counted against it: a flood of made-up tokens costs at most the IP limit in database
/// queries per minute.
pub async fn middleware(State(state): State<ApiState>, mut req: Request, next: Next) -> Response {
    let header = req.headers().get(AUTHORIZATION).cloned();
    let presented = header.is_some();
    let now = unix_now();
    let ip_key = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(
            || "ip:unknown".to_owned(),
            |c| format!("ip:{}", crate::net::limits::client_key(c.0.ip())),
        );
    let ip_limit = state.config.api.rate_limit_per_ip;
    let mut charged: Option<Decision> = None;
    let token = match header
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        Some(secret) => {
            let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
            match state.limiter.cached_token(&digest, now) {
                Some(row) => Some(row),
                None => {
                    // A client over its IP limit gets no database work at all.
                    if let Some(d) = state.limiter.has_room(&ip_key, ip_limit, now) {
                        return with_headers(
                            HttpError::rate_limited(d.reset.saturating_sub(now).max(1))
                                .into_response(),
                            d,
                        );
                    }
                    match state.store.verify_token(secret).await {
                        Ok(Some(row)) => {
                            state.limiter.remember_token(digest, row.clone(), now);
                            Some(row)
                        }
                        // A made-up token counts against the client's IP.
                        Ok(None) => {
                            charged = Some(state.limiter.check(&ip_key, ip_limit, now));
                            None
                        }
                        Err(err) => {
                            return HttpError::internal("verifying a token", err).into_response()
                        }
                    }
                }
            }
        }
        None => None,
    };
    let decision = match (&token, charged) {
        (Some(t), _) => {
            charge(
                &state,
                &format!("tok:{}", t.id),
                state.config.api.rate_limit_per_token,
                now,
            )
            .await
        }
        // An unknown bearer was charged to the IP already.
        (None, Some(d)) => d,
        (None, None) => charge(&state, &ip_key, ip_limit, now).await,
    };
    let resp = if decision.allowed {
        req.extensions_mut().insert(Caller { token, presented });
        next.run(req).await
    } else {
        HttpError::rate_limited(decision.reset.saturating_sub(now).max(1)).into_response()
    };
    with_headers(resp, decision)
}

/// Counts a request against `limit` per window: on this node, or in a cluster on every node
/// together (a counter in Redis per key and window). Redis unreachable: this node's own count.
async fn charge(state: &ApiState, key: &str, limit: u32, now: u64) -> Decision {
    let Some(cluster) = &state.cluster else {
        return state.limiter.check(key, limit, now);
    };
    let start = now - now % WINDOW_SECS;
    match cluster
        .count_request(&format!("{key}:{start}"), WINDOW_SECS + 5)
        .await
    {
        Ok(n) => Decision {
            allowed: n <= u64::from(limit),
            limit,
            remaining: limit.saturating_sub(u32::try_from(n).unwrap_or(u32::MAX)),
            reset: start + WINDOW_SECS,
        },
        Err(err) => {
            tracing::warn!(%err, "shared rate limit unavailable; counting on this node");
            state.limiter.check(key, limit, now)
        }
    }
}

/// The light per-client limit of the media routes (HLS, MJPEG, VOD, WHIP/WHEP).
#[derive(Debug, Clone)]
pub struct MediaLimit {
    /// Counters (shared with nothing else).
    pub limiter: std::sync::Arc<RateLimiter>,
    /// Requests per minute per client (IPv4 address or IPv6 /64).
    pub per_minute: u32,
    /// Clients never limited (a cache or proxy in front).
    pub exempt: std::sync::Arc<Vec<ipnet::IpNet>>,
}

/// Counts media requests per client and answers 429 past the limit, with `X-RateLimit-*`
/// on every answer to a limited client.
pub async fn media_middleware(
    State(limit): State<MediaLimit>,
    req: Request,
    next: Next,
) -> Response {
    let Some(ip) = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
    else {
        return next.run(req).await;
    };
    let Some(decision) = limit.decide(ip) else {
        return next.run(req).await;
    };
    let resp = if decision.allowed {
        next.run(req).await
    } else {
        MediaLimit::refusal(decision)
    };
    with_headers(resp, decision)
}

impl MediaLimit {
    /// Counts a media request from `ip`: `None` when the client is not limited (no limit set,
    /// or an exempt address).
    pub fn decide(&self, ip: std::net::IpAddr) -> Option<Decision> {
        if self.per_minute == 0 || crate::net::limits::is_in(&self.exempt, ip) {
            return None;
        }
        let key = format!("media:{}", crate::net::limits::client_key(ip));
        Some(self.limiter.check(&key, self.per_minute, unix_now()))
    }

    /// The 429 for a refused request.
    pub fn refusal(decision: Decision) -> Response {
        HttpError::rate_limited(decision.reset.saturating_sub(unix_now()).max(1)).into_response()
    }
}

/// Adds `X-RateLimit-*` for `decision` to a response.
pub fn with_headers(mut resp: Response, decision: Decision) -> Response {
    let h = resp.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(decision.limit));
    h.insert(
        "x-ratelimit-remaining",
        HeaderValue::from(decision.remaining),
    );
    h.insert("x-ratelimit-reset", HeaderValue::from(decision.reset));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_window_counts_and_resets() {
        let l = RateLimiter::default();
        let t0 = 1_700_000_040; // 40 s into a minute
        for i in 0..3 {
            let d = l.check("k", 3, t0 + i);
            assert!(d.allowed);
            assert_eq!(d.remaining, 2 - i as u32);
            assert_eq!(d.reset, 1_700_000_100);
        }
        assert!(!l.check("k", 3, t0 + 5).allowed);
        assert!(l.check("other", 3, t0 + 5).allowed, "keys are independent");
        let next = l.check("k", 3, 1_700_000_100);
        assert!(
            next.allowed && next.remaining == 2,
            "a new window starts fresh"
        );
    }
}
