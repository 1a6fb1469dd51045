//! The `webhooks`, `webhook_outbox` and `webhook_deliveries` tables. A webhook's secret is needed to sign
//! deliveries, so it is stored as given; the API masks it in every response after creation.

use super::sql::{params, Row};

use super::{now_rfc3339, random_id, Store, StoreError};

/// A webhook subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRow {
    /// `wh_…`
    pub id: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// Event types (`stream.started`, ...) or `*`.
    pub events: Vec<String>,
    /// HMAC key for `X-Signature`.
    pub secret: String,
    /// RFC 3339.
    pub created_at: String,
}

impl WebhookRow {
    /// Whether this webhook wants `event`.
    pub fn wants(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == "*" || e == event)
    }
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    /// `dlv_…`
    pub id: String,
    /// The webhook.
    pub webhook_id: String,
    /// The event's id (the same on every attempt).
    pub event_id: String,
    /// The event type.
    pub event: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// A 2xx answer.
    pub success: bool,
    /// The receiver's status, if it answered.
    pub status_code: Option<u16>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// How long the attempt took.
    pub duration_ms: u64,
    /// RFC 3339.
    pub created_at: String,
}

fn webhook_from(r: &Row, at: usize) -> Result<WebhookRow, StoreError> {
    Ok(WebhookRow {
        id: r.get(at)?,
        url: r.get(at + 1)?,
        events: super::split_words(&r.get::<String>(at + 2)?),
        secret: r.get(at + 3)?,
        created_at: r.get(at + 4)?,
    })
}

/// An event waiting for delivery to one webhook (the outbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// The row.
    pub id: String,
    /// The webhook.
    pub webhook_id: String,
    /// The event's id.
    pub event_id: String,
    /// The event type.
    pub event: String,
    /// The JSON body, as first serialised (the same bytes on every attempt).
    pub body: String,
    /// Attempts made so far.
    pub attempt: u32,
}

impl Store {
    /// Puts an event in the outbox for each of `webhook_ids`, in one transaction: from here
    /// on it is delivered by whichever node claims it, even if this one dies.
    pub async fn enqueue_webhook_event(
        &self,
        event_id: &str,
        event: &str,
        body: String,
        webhook_ids: Vec<String>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (event_id, event) = (event_id.to_owned(), event.to_owned());
        self.call(move |c| {
            let mut tx = c.transaction()?;
            for hook in &webhook_ids {
                let res = tx.execute(
                    "INSERT INTO webhook_outbox (id, webhook_id, event_id, event, body, next_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        format!("{event_id}:{hook}"),
                        hook,
                        event_id,
                        event,
                        body,
                        now_ms
                    ],
                );
                match res {
                    // The webhook was deleted meanwhile.
                    Err(e) if super::sql::is_constraint_violation(&e) => {}
                    other => {
                        other?;
                    }
                }
            }
            tx.commit()
        })
        .await
    }

    /// Claims up to `limit` due outbox rows for `node` until `now_ms + lease_ms` (another node
    /// takes them over only after that); on PostgreSQL rows claimed by a concurrent caller
    /// are skipped (`FOR UPDATE SKIP LOCKED`), so each row goes to one node.
    pub async fn claim_outbox(
        &self,
        node: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let node = node.to_owned();
        self.call(move |c| {
            let lock = if c.is_pg() {
                "FOR UPDATE SKIP LOCKED"
            } else {
                ""
            };
            let sql = format!(
                "UPDATE webhook_outbox SET claimed_by = ?1, claimed_until = ?2
                 WHERE id IN (SELECT id FROM webhook_outbox
                              WHERE next_at <= ?3 AND claimed_until <= ?3
                              ORDER BY next_at LIMIT ?4 {lock})
                 RETURNING id, webhook_id, event_id, event, body, attempt"
            );
            c.query_map(
                &sql,
                params![node, now_ms + lease_ms, now_ms, limit as i64],
                |r| {
                    Ok(OutboxRow {
                        id: r.get(0)?,
                        webhook_id: r.get(1)?,
                        event_id: r.get(2)?,
                        event: r.get(3)?,
                        body: r.get(4)?,
                        attempt: r.get::<i64>(5)?.max(0) as u32,
                    })
                },
            )
        })
        .await
    }

    /// An outbox row is done with (delivered, or given up).
    pub async fn outbox_done(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            c.execute("DELETE FROM webhook_outbox WHERE id = ?1", params![id])?;
            Ok(())
        })
        .await
    }

    /// An outbox row failed its attempt `attempt`: due again at `next_at_ms`, by any node.
    pub async fn outbox_retry(
        &self,
        id: &str,
        attempt: u32,
        next_at_ms: i64,
    ) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            c.execute(
                "UPDATE webhook_outbox SET attempt = ?2, next_at = ?3, claimed_by = NULL,
                    claimed_until = 0 WHERE id = ?1",
                params![id, attempt, next_at_ms],
            )?;
            Ok(())
        })
        .await
    }

    /// Creates a webhook.
    pub async fn create_webhook(
        &self,
        url: &str,
        events: &[String],
        secret: &str,
    ) -> Result<WebhookRow, StoreError> {
        let row = WebhookRow {
            id: random_id("wh_", 8),
            url: url.to_owned(),
            events: events.to_vec(),
            secret: secret.to_owned(),
            created_at: now_rfc3339(),
        };
        let r = row.clone();
        self.call(move |c| {
            c.execute(
                "INSERT INTO webhooks (id, url, events, secret, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![r.id, r.url, r.events.join(" "), r.secret, r.created_at],
            )?;
            Ok(())
        })
        .await?;
        Ok(row)
    }

    /// Every webhook, oldest first.
    pub async fn list_webhooks(&self) -> Result<Vec<WebhookRow>, StoreError> {
        self.call(|c| {
            c.query_map(
                "SELECT id, url, events, secret, created_at FROM webhooks ORDER BY rowid",
                params![],
                |r| webhook_from(r, 0),
            )
        })
        .await
    }

    /// One webhook.
    pub async fn get_webhook(&self, id: &str) -> Result<Option<WebhookRow>, StoreError> {
        Ok(self.list_webhooks().await?.into_iter().find(|w| w.id == id))
    }

    /// Deletes a webhook and its delivery log; false if there was none.
    pub async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |c| Ok(c.execute("DELETE FROM webhooks WHERE id = ?1", params![id])? > 0))
            .await
    }

    /// Logs a delivery attempt.
    pub async fn record_delivery(&self, d: DeliveryRow) -> Result<(), StoreError> {
        self.call(move |c| {
            let res = c.execute(
                "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event, attempt, success,
                    status_code, error, duration_ms, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    d.id,
                    d.webhook_id,
                    d.event_id,
                    d.event,
                    d.attempt,
                    d.success,
                    d.status_code,
                    d.error,
                    d.duration_ms as i64,
                    d.created_at
                ],
            );
            match res {
                // The webhook was deleted while the delivery was in flight.
                // (A foreign-key violation: SQLite reports it as a constraint violation.)
                Err(e) if super::sql::is_constraint_violation(&e) => Ok(()),
                other => other.map(|_| ()),
            }
        })
        .await
    }

    /// A webhook's deliveries, newest first, `limit` per page after `cursor`.
    pub async fn list_deliveries(
        &self,
        webhook_id: &str,
        limit: usize,
        cursor: Option<i64>,
    ) -> Result<(Vec<DeliveryRow>, Option<String>), StoreError> {
        let webhook_id = webhook_id.to_owned();
        self.call(move |c| {
            let rows = c.query_map(
                "SELECT rowid, id, webhook_id, event_id, event, attempt, success, status_code, error,
                        duration_ms, created_at
                 FROM webhook_deliveries WHERE webhook_id = ?1 AND rowid < ?2
                 ORDER BY rowid DESC LIMIT ?3",
                    params![webhook_id, cursor.unwrap_or(i64::MAX), limit as i64 + 1],
                    |r| {
                        Ok((
                            r.get::<i64>(0)?,
                            DeliveryRow {
                                id: r.get(1)?,
                                webhook_id: r.get(2)?,
                                event_id: r.get(3)?,
                                event: r.get(4)?,
                                attempt: r.get(5)?,
                                success: r.get(6)?,
                                status_code: r.get(7)?,
                                error: r.get(8)?,
                                duration_ms: r.get::<i64>(9)?.max(0) as u64,
                                created_at: r.get(10)?,
                            },
                        ))
                    },
                )?;
Ok(super::into_page(rows, limit))
        })
        .await
    }
}
