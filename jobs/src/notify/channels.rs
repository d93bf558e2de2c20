//! The channels a notification may go out on, as the payload names them, and the key each
//! delivery is made idempotent with (`<job id>.<channel>`).

use serde::Deserialize;

/// One channel of `payload.channels`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// The user's inbox: every open `GET /v1/notifications` connection of theirs, and a
    /// replay when they reconnect.
    Websocket,
    /// An email to `payload.email`, rendered from the type's templates.
    Email,
    /// Web Push to every subscription the user registered.
    Push,
    /// A signed POST to every URL of `[notify] webhooks`.
    Webhook,
}

impl Channel {
    /// The name, as in the payload, the result and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Websocket => "websocket",
            Channel::Email => "email",
            Channel::Push => "push",
            Channel::Webhook => "webhook",
        }
    }

    /// The idempotency key of this channel's delivery of job `job_id`'s notification: the
    /// same on every retry, so receivers can drop a duplicate.
    pub fn idempotency_key(self, job_id: &str) -> String {
        format!("{job_id}.{}", self.name())
    }
}
