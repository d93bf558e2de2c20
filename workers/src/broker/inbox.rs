//! The broker's two small stores for user notifications, beside the jobs: each user's
//! **inbox** (the notifications `GET /v1/notifications` streams and replays) and each user's
//! **Web Push subscriptions**. The types here cross the [`Broker`](super::Broker) seam; each
//! broker stores them its own way (`sqlite/inbox.rs`, `redis/inbox.rs`).
//!
//! The inbox is one log of every user's notifications, in append order, each entry owned by
//! one user:
//!
//! - an append is idempotent by the notification's `id` (a retried job delivers it again)
//!   for as long as the entry is kept;
//! - entries older than the `keep` a call gives (on the broker's clock) are dropped as new
//!   ones are appended, and never read back;
//! - a reader follows either one user's entries (a connection's replay) or every user's (the
//!   one reader per process that feeds the live connections), after a *cursor*: an entry's
//!   broker-issued position in the log; a cursor the broker did not issue is
//!   [`BrokerError::Invalid`](crate::BrokerError::Invalid) naming `since`. Cursors are
//!   ordered, on every broker, as [`compare_cursors`] says: a reader that got an entry
//!   twice (replayed, then live from a reader that lagged behind) can tell;
//! - a wait returns when the log may hold entries after a cursor, woken by any process's
//!   append on Redis, by this process's at once and other processes' within a poll on SQLite
//!   (as [`Broker::wait_for_events`](super::Broker::wait_for_events)).
//!
//! What a notification says is the shell's business: the broker keeps its JSON `body` as
//! given. Nothing here knows a JWT, a channel or a WebSocket.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::field::FieldError;
use crate::time::Timestamp;

/// The most entries one [`Broker::inbox_read`](super::Broker::inbox_read) returns.
pub const MAX_INBOX_PAGE: usize = 1000;
/// The longest user id and notification id the inbox stores.
pub const MAX_INBOX_NAME: usize = 256;
/// The most Web Push subscriptions one user may have (every `notify.send` to the user fans out
/// to all of them): past it, a new endpoint is refused (see [`too_many_push_subscriptions`]);
/// one the user has already is still replaced.
pub const MAX_PUSH_SUBSCRIPTIONS: usize = 20;

/// A notification to keep in its user's inbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewInboxEntry {
    /// Unique per notification, stable across retries: a second append of it is a no-op.
    pub id: String,
    /// The user whose inbox it goes to.
    pub user: String,
    /// What the shell streams (kept as given).
    pub body: Value,
}

impl NewInboxEntry {
    /// Refuses an empty or over-long `id` or `user`, naming it.
    pub fn check(&self) -> Result<(), FieldError> {
        check_name("user", &self.user)?;
        check_name("id", &self.id)
    }
}

/// The refusal of a new endpoint for a user who has [`MAX_PUSH_SUBSCRIPTIONS`] already,
/// naming `endpoint`.
pub fn too_many_push_subscriptions() -> FieldError {
    FieldError::new(
        "endpoint",
        format!(
            "a user may have at most {MAX_PUSH_SUBSCRIPTIONS} push subscriptions: delete one first"
        ),
    )
}

/// Refuses an empty, blank or over-long user id or notification id (1 to [`MAX_INBOX_NAME`]
/// bytes, not only spaces, no control characters), naming `field`.
pub fn check_name(field: &str, value: &str) -> Result<(), FieldError> {
    // Blank (spaces only) is refused too: a user id of spaces is a client's bug, and
    // `notify.send` refused it while a JWT's `sub` and the push routes took it.
    if value.trim().is_empty()
        || value.len() > MAX_INBOX_NAME
        || value.chars().any(char::is_control)
    {
        return Err(FieldError::new(field, NAME_RULE));
    }
    Ok(())
}

/// What [`check_name`] requires, as its refusals say it.
pub const NAME_RULE: &str = "must be 1 to 256 bytes, not only spaces, without control characters";

/// The order of two cursors of one broker's inbox log: `Greater` when `a` was appended after
/// `b`. Every broker's cursors are decimal numbers joined by `-` (SQLite: the row's `seq`;
/// Redis: the stream id, `ms-seq`), ordered number by number. `None` when either is not such
/// a cursor.
pub fn compare_cursors(a: &str, b: &str) -> Option<Ordering> {
    fn parts(s: &str) -> Option<Vec<u64>> {
        s.split('-').map(|p| p.parse::<u64>().ok()).collect()
    }
    Some(parts(a)?.cmp(&parts(b)?))
}

/// A kept notification, as read back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InboxEntry {
    /// Its position in the log: read after it to get the entries appended after it.
    pub cursor: String,
    pub id: String,
    pub user: String,
    /// When it was appended (the broker's clock).
    pub at: Timestamp,
    pub body: Value,
}

/// What an append did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    /// The entry's cursor (the existing entry's when its id was kept already).
    pub cursor: String,
    /// False when an entry with that id was kept already and nothing was appended.
    pub created: bool,
}

/// One Web Push subscription of a user: the push service's endpoint and the browser's keys
/// (base64url, as `PushSubscription.toJSON()` gives them). A user holds at most one per
/// endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebPush {
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
}
