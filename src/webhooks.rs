//! Webhook delivery: takes events off the [`crate::events`] bus and POSTs them as JSON to every
//! subscribed webhook, signed and retried.
//!
//! Signature: `X-Signature: t={unix},v1={hex(HMAC-SHA256(secret, "{unix}.{body}"))}` — the
//! receiver recomputes it over the raw body and rejects stale timestamps. Failed attempts
//! (no answer, timeout, non-2xx) are retried with exponential backoff and jitter up to the
//! configured number of attempts; every attempt is logged in `webhook_deliveries`. Each
//! delivery runs in its own task under a concurrency cap, so a slow receiver delays only its
//! own events and nothing here ever touches the media path.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::config::WebhooksConfig;
use crate::events::Event;
use crate::store::{DeliveryRow, Store, WebhookRow};

/// Deliveries in flight at once.
const MAX_CONCURRENT_DELIVERIES: usize = 64;

/// The `X-Signature` value for `body` sent at `timestamp` (Unix seconds).
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Delay before attempt `attempt + 1` (attempt counts from 1): `initial * 2^(attempt-1)`,
/// capped at five minutes, with ±20 % jitter drawn from `jitter` in `0.0..1.0`.
pub fn backoff(initial: Duration, attempt: u32, jitter: f64) -> Duration {
    let base = initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(Duration::from_secs(300));
    base.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
}

/// Starts the dispatcher; it ends when the bus closes or on shutdown.
pub fn spawn(
    store: Store,
    mut events: mpsc::Receiver<Event>,
    config: WebhooksConfig,
    policy: Arc<crate::outbound::OutboundPolicy>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Every resolved address is checked by the outbound policy; redirects are not
        // followed (a receiver answering 3xx gets a failed delivery); no proxy from the
        // environment (through a proxy, the policy would check the proxy, not the target).
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(crate::outbound::CheckedResolver(policy.clone())))
            .user_agent(concat!("media-server/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(err) => {
                tracing::error!(%err, "webhooks: cannot build the HTTP client; webhooks disabled");
                return;
            }
        };
        let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_DELIVERIES));
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = crate::shutdown::requested(&mut shutdown) => None,
            };
            let Some(event) = event else { return };
            let hooks = match store.list_webhooks().await {
                Ok(h) => h,
                Err(err) => {
                    tracing::error!(%err, event = event.kind, "webhooks: cannot read subscriptions");
                    continue;
                }
            };
            let event = Arc::new(event);
            for hook in hooks.into_iter().filter(|h| h.wants(event.kind)) {
                let delivery = Delivery {
                    client: client.clone(),
                    policy: policy.clone(),
                    store: store.clone(),
                    hook,
                    event: event.clone(),
                    config: config.clone(),
                    shutdown: shutdown.clone(),
                    permits: permits.clone(),
                };
                tokio::spawn(delivery.run());
            }
        }
    })
}

/// One event to one webhook, with retries.
struct Delivery {
    client: reqwest::Client,
    policy: Arc<crate::outbound::OutboundPolicy>,
    store: Store,
    hook: WebhookRow,
    event: Arc<Event>,
    config: WebhooksConfig,
    shutdown: watch::Receiver<bool>,
    /// Caps attempts in flight; held only while a request runs, not during backoff.
    permits: Arc<Semaphore>,
}

impl Delivery {
    async fn run(mut self) {
        let body = match serde_json::to_vec(&*self.event) {
            Ok(b) => b,
            Err(err) => {
                tracing::error!(%err, "webhooks: cannot serialise an event");
                return;
            }
        };
        let initial = Duration::from_millis(self.config.initial_backoff_ms);
        for attempt in 1..=self.config.max_attempts.max(1) {
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                return;
            };
            let (success, status_code, error, elapsed) = self.attempt(&body).await;
            drop(permit);
            let row = DeliveryRow {
                id: crate::store::random_id("dlv_", 8),
                webhook_id: self.hook.id.clone(),
                event_id: self.event.id.clone(),
                event: self.event.kind.to_owned(),
                attempt,
                success,
                status_code,
                error: error.clone(),
                duration_ms: elapsed.as_millis() as u64,
                created_at: crate::store::now_rfc3339(),
            };
            if let Err(err) = self.store.record_delivery(row).await {
                tracing::warn!(%err, "webhooks: cannot log a delivery");
            }
            if success {
                tracing::debug!(webhook = %self.hook.id, event = self.event.kind, attempt, "webhook delivered");
                return;
            }
            tracing::warn!(
                webhook = %self.hook.id,
                event = self.event.kind,
                attempt,
                status = ?status_code,
                error = error.as_deref().unwrap_or(""),
                "webhook delivery failed"
            );
            if attempt == self.config.max_attempts {
                break;
            }
            let wait = backoff(initial, attempt, rand::thread_rng().gen());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = crate::shutdown::requested(&mut self.shutdown) => return,
            }
        }
        tracing::error!(webhook = %self.hook.id, event = self.event.kind, "webhook gave up after {} attempts", self.config.max_attempts);
    }

    /// One POST: (2xx?, status, error text, time taken).
    async fn attempt(&self, body: &[u8]) -> (bool, Option<u16>, Option<String>, Duration) {
        let started = Instant::now();
        // Literal addresses never reach the client's resolver: check them here.
        let literal = url::Url::parse(&self.hook.url).ok().and_then(|u| {
            let host = u.host_str()?.to_owned();
            let port = u.port_or_known_default()?;
            Some((host, port))
        });
        if let Some((host, port)) = literal {
            if let Err(e) = self.policy.check_host(&host, port) {
                return (
                    false,
                    None,
                    Some(format!("destination refused: {e}")),
                    started.elapsed(),
                );
            }
        }
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let result = self
            .client
            .post(&self.hook.url)
            .header("content-type", "application/json")
            .header("x-signature", signature(&self.hook.secret, ts, body))
            .header("x-webhook-id", &self.hook.id)
            .header("x-event-id", &self.event.id)
            .header("x-event-type", self.event.kind)
            .body(body.to_vec())
            .send()
            .await;
        match result {
            Ok(resp) => {
                let status = resp.status();
                let ok = status.is_success();
                let error = (!ok).then(|| {
                    if status.is_redirection() {
                        format!("receiver answered {status}; redirects are not followed")
                    } else {
                        format!("receiver answered {status}")
                    }
                });
                (ok, Some(status.as_u16()), error, started.elapsed())
            }
            // Coarse on purpose: "connection refused", "timed out" and "reset" would tell a
            // tenant which ports are open where the server can reach.
            Err(err) => {
                let error = match crate::outbound::Refused::find(&err) {
                    Some(reason) => format!("destination refused: {reason}"),
                    None => "could not deliver (no HTTP answer)".to_owned(),
                };
                // No duration either: a refused port answers at once, a filtered one times out.
                (false, None, Some(error), Duration::ZERO)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_over_timestamp_and_body() {
        let sig = signature("whsec", 1_700_000_000, b"{\"a\":1}");
        assert!(sig.starts_with("t=1700000000,v1="));
        assert_eq!(sig.len(), "t=1700000000,v1=".len() + 64);
        assert_ne!(sig, signature("other", 1_700_000_000, b"{\"a\":1}"));
        assert_ne!(sig, signature("whsec", 1_700_000_001, b"{\"a\":1}"));
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        let one = Duration::from_secs(1);
        assert_eq!(backoff(one, 1, 0.5), one);
        assert_eq!(backoff(one, 3, 0.5), Duration::from_secs(4));
        assert!(backoff(one, 3, 0.0) >= Duration::from_millis(3200));
        assert!(backoff(one, 3, 1.0) <= Duration::from_millis(4800));
        assert_eq!(backoff(one, 30, 0.5), Duration::from_secs(300));
    }
}
