//! The inbox hub: the one reader of the broker's inbox log in this process, handing every new
//! notification to the `GET /v1/notifications` connections open here.
//!
//! [`InboxHub::run`] follows [`Broker::inbox_read`] over every user (the log all nodes append
//! to), waiting on [`Broker::inbox_wait`] when it is idle (Redis: a blocking read that any
//! node's append wakes; SQLite: this process's appends at once, other processes' within a
//! poll), and broadcasts each entry once, rendered once, on a bounded channel. A connection
//! is a receiver that keeps its own user's entries: a thousand connections are a thousand
//! receivers, not a thousand pollers.
//!
//! It starts at the log's end (`Broker::inbox_end`), so a day of kept notifications is not
//! read through at start, and publishes whether it has caught up with the log: a connection
//! subscribes first and waits for that second, so every entry appended after its replay's
//! read reaches it live (`super::stream` drops the ones its replay already sent).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use hopper_workers::Broker;
use hopper_workers::broker::InboxEntry;
use hopper_workers::broker::inbox::MAX_INBOX_PAGE;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// Entries held for slow receivers: past this many, a receiver that has not read lags.
pub const CAPACITY: usize = 4096;
/// The longest wait on the broker between reads of an idle log.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// How long the hub waits after a broker error before trying again.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// The longest a new connection waits for the hub to catch up with the log (the broker may be
/// down at start) before it is closed with 1011, giving back its `max_connections` slot.
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(10);
/// The hub reads every entry after its cursor, however old: it follows the log, and `keep`
/// only decides what a replay returns.
const ALL: Duration = Duration::MAX;

/// One kept notification as connections send it: its user, id, cursor and frame text.
#[derive(Debug)]
pub struct Live {
    pub user: String,
    pub id: String,
    pub cursor: String,
    pub text: Utf8Bytes,
}

impl Live {
    /// An entry and its frame: `{"type": "notification", "id", "cursor", "user", "kind",
    /// "title", "body", "data", "at"}` (the notification's own `type` becomes `kind`, as
    /// `type` names the frame).
    pub fn new(entry: InboxEntry) -> Self {
        let mut frame = match entry.body {
            Value::Object(map) => map,
            other => {
                let mut map = serde_json::Map::new();
                map.insert("body".into(), other);
                map
            }
        };
        if let Some(kind) = frame.remove("type") {
            frame.insert("kind".into(), kind);
        }
        frame.insert("type".into(), json!("notification"));
        frame.insert("id".into(), json!(entry.id));
        frame.insert("user".into(), json!(entry.user));
        frame.insert("cursor".into(), json!(entry.cursor));
        frame.insert("at".into(), json!(entry.at));
        Self {
            text: Value::Object(frame).to_string().into(),
            user: entry.user,
            id: entry.id,
            cursor: entry.cursor,
        }
    }
}

/// What [`InboxHub::subscribe`] gives a connection.
#[derive(Debug)]
pub enum Subscription {
    /// Caught up: every entry appended from now on reaches this receiver.
    Live(broadcast::Receiver<Arc<Live>>),
    /// The hub stopped (the server is stopping).
    Stopped,
    /// The hub did not catch up within the wait (the broker is unreachable or slow).
    NotReady,
}

/// The shared end of the hub. Cheap to clone.
#[derive(Clone, Debug)]
pub struct InboxHub {
    broker: Arc<dyn Broker>,
    tx: broadcast::Sender<Arc<Live>>,
    caught_up: Arc<watch::Sender<bool>>,
    connections: Arc<AtomicUsize>,
    /// Open connections per user (only users with one or more).
    users: Arc<Mutex<HashMap<String, usize>>>,
    /// Fires when the hub stops, so that every connection closes.
    shutdown: CancellationToken,
}

/// A counted connection; the count drops with it.
#[derive(Debug)]
pub struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One user's place among their connections ([`InboxHub::admit_user`]), given back when
/// dropped.
pub struct UserAdmitted {
    users: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl Drop for UserAdmitted {
    fn drop(&mut self) {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = users.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                users.remove(&self.user);
            }
        }
    }
}

impl InboxHub {
    /// A hub over `broker`, not yet reading (see [`InboxHub::run`]).
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        Self {
            broker,
            tx,
            caught_up: Arc::new(watch::Sender::new(false)),
            connections: Arc::new(AtomicUsize::new(0)),
            users: Arc::default(),
            shutdown: CancellationToken::new(),
        }
    }

    /// The broker the hub reads (connections replay from it).
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// Fires when the hub stops.
    pub fn stopping(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Counts one more connection, unless `max` are open.
    pub fn admit(&self, max: usize) -> Option<Admitted> {
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
            .then(|| Admitted(self.connections.clone()))
    }

    /// A place among `user`'s connections, if they hold fewer than `max`.
    pub fn admit_user(&self, user: &str, max: usize) -> Option<UserAdmitted> {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let n = users.entry(user.to_owned()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(UserAdmitted {
            users: self.users.clone(),
            user: user.to_owned(),
        })
    }

    /// Subscribes, then waits until the hub has caught up with the log, at most `wait`
    /// ([`CATCH_UP_WAIT`] in the route): every entry appended after this returns
    /// [`Subscription::Live`] reaches the receiver.
    pub async fn subscribe(&self, wait: Duration) -> Subscription {
        let rx = self.tx.subscribe();
        let mut caught_up = self.caught_up.subscribe();
        tokio::select! {
            // A stopped hub stays caught up: its shutdown is looked at first, so that a
            // connection to it is told so rather than left live on a reader that is gone.
            biased;
            () = self.shutdown.cancelled() => Subscription::Stopped,
            r = tokio::time::timeout(wait, caught_up.wait_for(|c| *c)) => match r {
                Ok(Ok(_)) => Subscription::Live(rx),
                // The sender lives in `self`: it cannot be gone while we hold it.
                Ok(Err(_)) => Subscription::Stopped,
                Err(_) => Subscription::NotReady,
            },
        }
    }

    /// Follows the log until `shutdown` fires: from its end (`Broker::inbox_end`: the past is
    /// not broadcast, nor read), every new entry as it comes.
    pub async fn run(self, shutdown: CancellationToken) {
        let _stop_connections = self.shutdown.clone().drop_guard();
        let mut cursor = loop {
            let end = tokio::select! {
                () = shutdown.cancelled() => return,
                end = self.broker.inbox_end() => end,
            };
            match end {
                Ok(end) => break end,
                Err(e) => {
                    tracing::warn!(error = %e, "inbox hub: reading the inbox's end failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(ERROR_BACKOFF) => {}
                    }
                }
            }
        };
        let mut caught_up = false;
        loop {
            let page = tokio::select! {
                () = shutdown.cancelled() => return,
                page = self.broker.inbox_read(None, cursor.as_deref(), MAX_INBOX_PAGE, ALL) => page,
            };
            let pause = match page {
                Ok(entries) if entries.is_empty() => {
                    if !caught_up {
                        caught_up = true;
                        self.caught_up.send_replace(true);
                        tracing::debug!(after = ?cursor, "inbox hub following the log");
                    }
                    let waited = tokio::select! {
                        () = shutdown.cancelled() => return,
                        w = self.broker.inbox_wait(cursor.as_deref(), IDLE_WAIT) => w,
                    };
                    match waited {
                        Ok(()) => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "inbox hub: waiting on the inbox failed; retrying");
                            ERROR_BACKOFF
                        }
                    }
                }
                Ok(entries) => {
                    for entry in entries {
                        cursor = Some(entry.cursor.clone());
                        if caught_up {
                            // No receiver is not an error: nobody is connected right now.
                            let _ = self.tx.send(Arc::new(Live::new(entry)));
                        }
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "inbox hub: reading the inbox failed; retrying");
                    ERROR_BACKOFF
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sqlite_hub(dir: &tempfile::TempDir) -> InboxHub {
        let url = format!("sqlite://{}", dir.path().join("hub.db").display());
        let broker = hopper_workers::broker::open_with(
            &url,
            &hopper_workers::broker::OpenOptions::new("hopper"),
            hopper_workers::clock::system(),
        )
        .await
        .expect("open a SQLite broker");
        InboxHub::new(broker)
    }

    #[tokio::test]
    async fn a_connection_stops_waiting_for_a_hub_that_has_not_caught_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Not running: as when the broker is down at start, it never catches up.
        let hub = sqlite_hub(&dir).await;
        let sub = hub.subscribe(Duration::from_millis(50)).await;
        assert!(matches!(sub, Subscription::NotReady), "{sub:?}");
    }

    #[tokio::test]
    async fn a_connection_is_live_once_the_hub_has_caught_up_and_told_when_it_stops() {
        let dir = tempfile::tempdir().expect("temp dir");
        let hub = sqlite_hub(&dir).await;
        let stop = CancellationToken::new();
        let running = tokio::spawn(hub.clone().run(stop.clone()));
        let sub = hub.subscribe(Duration::from_secs(60)).await;
        assert!(matches!(sub, Subscription::Live(_)), "{sub:?}");
        stop.cancel();
        running.await.expect("the hub stops");
        let sub = hub.subscribe(Duration::from_secs(60)).await;
        assert!(matches!(sub, Subscription::Stopped), "{sub:?}");
    }
}
