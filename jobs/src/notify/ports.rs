//! What `notify.send` needs from outside this crate. The jobs crate never sees a broker: the
//! shell implements these ports over the broker and hands them to the kind when it registers
//! it (`hopper::notify`).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One notification as it is delivered to a user's inbox (the `websocket` channel) and
/// rendered for the other channels. `id` is stable across retries of the job that sends it
/// (derived from the job id), so delivering it twice is a no-op.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub id: String,
    pub user: String,
    /// The notification type, which selects the email templates (`"default"` when unset).
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub body: String,
    #[serde(default)]
    pub data: Value,
}

/// A user's inbox: what `GET /v1/notifications` streams and replays for `[notify] keep`.
#[async_trait]
pub trait Inbox: Send + Sync {
    /// Keeps `n` for the user and wakes their open connections on any API node. Idempotent
    /// by `n.id`. `Err` is a retryable failure, described for the job's `last_error`.
    async fn deliver(&self, n: &Notification) -> Result<(), String>;
}

/// A Web Push subscription as a browser's `PushSubscription.toJSON()` gives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushSubscription {
    pub endpoint: String,
    pub keys: PushKeys,
}

/// The subscription's public key (`p256dh`) and auth secret, base64url as browsers give them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushKeys {
    pub p256dh: String,
    pub auth: String,
}

/// The Web Push subscriptions users registered with `POST /v1/users/{id}/push-subscriptions`.
#[async_trait]
pub trait PushSubscriptions: Send + Sync {
    async fn list(&self, user: &str) -> Result<Vec<PushSubscription>, String>;
    /// Forgets one subscription, after its push service answered 404 or 410.
    async fn remove(&self, user: &str, endpoint: &str) -> Result<(), String>;
}
