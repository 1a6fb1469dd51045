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

/// Counters per key (`tok:{id}` or `ip:{addr}`).
#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: Mutex<Windows>,
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
pub async fn middleware(State(state): State<ApiState>, mut req: Request, next: Next) -> Response {
    let header = req.headers().get(AUTHORIZATION).cloned();
    let presented = header.is_some();
    let token = match header
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        Some(secret) => match state.store.verify_token(secret).await {
            Ok(row) => row,
            Err(err) => return HttpError::internal("verifying a token", err).into_response(),
        },
        None => None,
    };
    let (key, limit) = match &token {
        Some(t) => (
            format!("tok:{}", t.id),
            state.config.api.rate_limit_per_token,
        ),
        None => {
            let ip = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string());
            (format!("ip:{ip}"), state.config.api.rate_limit_per_ip)
        }
    };
    let now = unix_now();
    let decision = state.limiter.check(&key, limit, now);
    let mut resp = if decision.allowed {
        req.extensions_mut().insert(Caller { token, presented });
        next.run(req).await
    } else {
        HttpError::rate_limited(decision.reset.saturating_sub(now).max(1)).into_response()
    };
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
