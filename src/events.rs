//! The internal event bus: features announce what happened (`stream.started`, ...), the
//! webhook dispatcher (and later others) consume it. Publishing never blocks: the bus is a
//! bounded queue and an event that does not fit is dropped with an error in the log, so a
//! stuck consumer can never slow the media path.

use serde::Serialize;
use tokio::sync::mpsc;

/// Every event type, as named in webhook subscriptions.
pub const EVENT_TYPES: &[&str] = &[
    "stream.created",
    "stream.started",
    "stream.ended",
    "stream.deleted",
    "recording.started",
    "recording.ready",
    "recording.failed",
    "restream.failed",
    "health.degraded",
    "health.recovered",
];

/// Capacity of the bus.
const BUS_CAPACITY: usize = 4096;

/// Something that happened.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// `evt_…`, the same on every delivery attempt.
    pub id: String,
    /// One of [`EVENT_TYPES`].
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// RFC 3339.
    pub created_at: String,
    /// Event-specific payload (e.g. the stream).
    pub data: serde_json::Value,
}

/// The sending side; cheap to clone.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: mpsc::Sender<Event>,
}

impl EventBus {
    /// A bus and its (single) receiving end.
    pub fn new() -> (EventBus, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(BUS_CAPACITY);
        (EventBus { tx }, rx)
    }

    /// Announces an event; never waits.
    pub fn publish(&self, kind: &'static str, data: serde_json::Value) {
        let event = Event {
            id: crate::store::random_id("evt_", 10),
            kind,
            created_at: crate::store::now_rfc3339(),
            data,
        };
        if let Err(err) = self.tx.try_send(event) {
            tracing::error!(event = kind, %err, "event bus full or closed; event dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_arrive_in_order_with_ids() {
        let (bus, mut rx) = EventBus::new();
        bus.publish("stream.started", serde_json::json!({"id": "str_1"}));
        bus.publish("stream.ended", serde_json::json!({"id": "str_1"}));
        let a = rx.recv().await.unwrap();
        let b = rx.recv().await.unwrap();
        assert_eq!((a.kind, b.kind), ("stream.started", "stream.ended"));
        assert!(a.id.starts_with("evt_") && a.id != b.id);
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["type"], "stream.started");
        assert_eq!(json["data"]["id"], "str_1");
    }
}
