//! Webhook delivery: takes events off the [`crate::events`] bus into the outbox (a table) and
//! POSTs them as JSON to every subscribed webhook, signed and retried, from whichever node
//! claims them.
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

/// Outbox rows claimed at once.
const CLAIM_BATCH: usize = 32;
/// How often the outbox is looked at when nothing here woke the worker: rows from other
/// nodes' events, retries that fell due, rows of a node that died with them claimed.
const POLL: Duration = Duration::from_secs(1);

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Starts the dispatcher: events from the bus go into the outbox (one row per subscribed
/// webhook, in the database), and a worker claims due rows and delivers them. In a cluster
/// every node runs a worker on the same outbox and each row is claimed by one node at a time,
/// so an event is delivered once for the cluster, and a node that dies leaves its rows to
/// the others. Ends when the bus closes or on shutdown.
pub fn spawn(
    store: Store,
    mut events: mpsc::Receiver<Event>,
    config: WebhooksConfig,
    policy: Arc<crate::outbound::OutboundPolicy>,
    node: String,
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
        let wake = Arc::new(tokio::sync::Notify::new());
        let worker = Worker {
            client,
            policy,
            store: store.clone(),
            config,
            node,
            shutdown: shutdown.clone(),
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_DELIVERIES)),
            wake: wake.clone(),
        };
        let worker = tokio::spawn(worker.run());
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = crate::shutdown::requested(&mut shutdown) => None,
            };
            let Some(event) = event else { break };
            let hooks = match store.list_webhooks().await {
                Ok(h) => h,
                Err(err) => {
                    tracing::error!(%err, event = event.kind, "webhooks: cannot read subscriptions; event not sent");
                    continue;
                }
            };
            let ids: Vec<String> = hooks
                .into_iter()
                .filter(|h| h.wants(event.kind))
                .map(|h| h.id)
                .collect();
            if ids.is_empty() {
                continue;
            }
            let body = match serde_json::to_string(&event) {
                Ok(b) => b,
                Err(err) => {
                    tracing::error!(%err, "webhooks: cannot serialise an event");
                    continue;
                }
            };
            match store
                .enqueue_webhook_event(&event.id, event.kind, body, ids, unix_ms())
                .await
            {
                Ok(()) => wake.notify_one(),
                Err(err) => {
                    tracing::error!(%err, event = event.kind, "webhooks: cannot queue an event; not sent")
                }
            }
        }
        let _ = worker.await;
    })
}

/// Claims due outbox rows and delivers each in its own task.
struct Worker {
    client: reqwest::Client,
    policy: Arc<crate::outbound::OutboundPolicy>,
    store: Store,
    config: WebhooksConfig,
    node: String,
    shutdown: watch::Receiver<bool>,
    /// Caps attempts in flight.
    permits: Arc<Semaphore>,
    wake: Arc<tokio::sync::Notify>,
}

impl Worker {
    async fn run(self) {
        let this = Arc::new(self);
        let mut shutdown = this.shutdown.clone();
        // A claim outlives any attempt: the row is not taken over while being delivered.
        let lease = (this.config.timeout_ms as i64)
            .saturating_mul(3)
            .max(30_000);
        // The earliest retry this node scheduled (so a short backoff is not rounded up to
        // the poll interval).
        let next_retry = Arc::new(std::sync::Mutex::new(None::<tokio::time::Instant>));
        loop {
            let rows = match this
                .store
                .claim_outbox(&this.node, unix_ms(), lease, CLAIM_BATCH)
                .await
            {
                Ok(rows) => rows,
                Err(err) => {
                    tracing::warn!(%err, "webhooks: cannot read the outbox");
                    vec![]
                }
            };
            let claimed = rows.len();
            if claimed > 0 {
                let hooks = this.store.list_webhooks().await.unwrap_or_default();
                for row in rows {
                    let Some(hook) = hooks.iter().find(|h| h.id == row.webhook_id).cloned() else {
                        // Deleted since.
                        let _ = this.store.outbox_done(&row.id).await;
                        continue;
                    };
                    let (this, next_retry) = (this.clone(), next_retry.clone());
                    tokio::spawn(async move {
                        if let Some(at) = this.deliver(hook, row).await {
                            let mut n = next_retry.lock().unwrap_or_else(|e| e.into_inner());
                            *n = Some(n.map_or(at, |cur| cur.min(at)));
                            this.wake.notify_one();
                        }
                    });
                }
            }
            if claimed == CLAIM_BATCH {
                continue;
            }
            let now = tokio::time::Instant::now();
            let until = {
                let mut n = next_retry.lock().unwrap_or_else(|e| e.into_inner());
                match *n {
                    Some(at) if at <= now => {
                        *n = None;
                        now
                    }
                    Some(at) => at.min(now + POLL),
                    None => now + POLL,
                }
            };
            tokio::select! {
                _ = this.wake.notified() => {}
                _ = tokio::time::sleep_until(until) => {}
                _ = crate::shutdown::requested(&mut shutdown) => return,
            }
        }
    }

    /// One attempt of one row; the time of the retry when there will be one.
    async fn deliver(
        &self,
        hook: WebhookRow,
        row: crate::store::OutboxRow,
    ) -> Option<tokio::time::Instant> {
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return None;
        };
        let attempt = row.attempt + 1;
        let (success, status_code, error, elapsed) = self.attempt(&hook, &row).await;
        drop(permit);
        let log = DeliveryRow {
            id: crate::store::random_id("dlv_", 8),
            webhook_id: hook.id.clone(),
            event_id: row.event_id.clone(),
            event: row.event.clone(),
            attempt,
            success,
            status_code,
            error: error.clone(),
            duration_ms: elapsed.as_millis() as u64,
            created_at: crate::store::now_rfc3339(),
        };
        if let Err(err) = self.store.record_delivery(log).await {
            tracing::warn!(%err, "webhooks: cannot log a delivery");
        }
        if success {
            tracing::debug!(webhook = %hook.id, event = %row.event, attempt, "webhook delivered");
            let _ = self.store.outbox_done(&row.id).await;
            return None;
        }
        tracing::warn!(
            webhook = %hook.id,
            event = %row.event,
            attempt,
            status = ?status_code,
            error = error.as_deref().unwrap_or(""),
            "webhook delivery failed"
        );
        if attempt >= self.config.max_attempts.max(1) {
            tracing::error!(webhook = %hook.id, event = %row.event, "webhook gave up after {attempt} attempts");
            let _ = self.store.outbox_done(&row.id).await;
            return None;
        }
        let initial = Duration::from_millis(self.config.initial_backoff_ms);
        let wait = backoff(initial, attempt, rand::thread_rng().gen());
        let at = unix_ms().saturating_add(wait.as_millis() as i64);
        if let Err(err) = self.store.outbox_retry(&row.id, attempt, at).await {
            tracing::warn!(%err, "webhooks: cannot schedule a retry (the claim runs out and it is retried then)");
        }
        Some(tokio::time::Instant::now() + wait)
    }

    /// One POST: (2xx?, status, error text, time taken).
    async fn attempt(
        &self,
        hook: &WebhookRow,
        row: &crate::store::OutboxRow,
    ) -> (bool, Option<u16>, Option<String>, Duration) {
        let body = row.body.as_bytes();
        let started = Instant::now();
        // Literal addresses never reach the client's resolver: check them here.
        let literal = url::Url::parse(&hook.url).ok().and_then(|u| {
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
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("x-signature", signature(&hook.secret, ts, body))
            .header("x-webhook-id", &hook.id)
            .header("x-event-id", &row.event_id)
            .header("x-event-type", &row.event)
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
