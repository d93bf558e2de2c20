//! The `Inbox` port over the broker: a notification delivered to the `websocket` channel is
//! appended to its user's inbox ([`Broker::inbox_append`]), idempotent by its id and kept for
//! `[notify] keep`. Every API node's one inbox reader sees the append (on Redis at once, on
//! SQLite within a poll) and hands it to that user's connections.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hopper_jobs::notify::ports::{Inbox, Notification};
use hopper_workers::Broker;
use hopper_workers::broker::NewInboxEntry;

/// [`Inbox`] over a broker. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BrokerInbox {
    broker: Arc<dyn Broker>,
    keep: Duration,
}

impl BrokerInbox {
    /// Keeps each notification for `keep` (`[notify] keep`).
    pub fn new(broker: Arc<dyn Broker>, keep: Duration) -> Self {
        Self { broker, keep }
    }
}

#[async_trait]
impl Inbox for BrokerInbox {
    async fn deliver(&self, n: &Notification) -> Result<(), String> {
        let body = serde_json::to_value(n).map_err(|e| format!("notification {}: {e}", n.id))?;
        let entry = NewInboxEntry {
            id: n.id.clone(),
            user: n.user.clone(),
            body,
        };
        self.broker
            .inbox_append(&entry, self.keep)
            .await
            .map(drop)
            .map_err(|e| format!("keeping notification {} for user {}: {e}", n.id, n.user))
    }
}
