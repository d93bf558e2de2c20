//! The hub: the one reader of the broker's event log in this process, fanning every new event
//! out to all the streams connected here.
//!
//! [`Hub::run`] follows `Broker::events(after, limit)` (the durable, merged log every node
//! writes to, so it sees events of jobs run by any process) and publishes each event once,
//! serialized once, on a bounded `broadcast` channel. A thousand clients are a thousand
//! receivers of that channel, not a thousand pollers of the broker; and the channel's ring is
//! the only buffer of events, so a client that stops reading costs no memory: it falls behind
//! the ring and is told so (`Lagged`, see `super::feed`).
//!
//! Besides the events, the hub publishes its *position*: the sequence number and id of the
//! last event it broadcast. A new stream subscribes and reads the position in one step (a page
//! is sent and the position moved under the position's lock), so it knows which broadcast
//! events its own replay from the broker already covers (`super::feed`).
//!
//! The hub also tracks the tasks streams spawn (an SSE stream's feeder, see `sse`): they stop
//! when the hub stops, and [`Hub::run`] returns only once they have, so the node's tracker
//! that runs the hub waits for them too.
//!
//! Between reads of an idle log the hub waits on the broker ([`Broker::wait_for_events`]): a
//! Redis broker blocks on the streams, so an event from any node wakes it at once, and the
//! wait is long ([`Broker::events_idle_wait`]: each read costs Redis a command per queue); a
//! SQLite broker is woken by this process's writes, and other processes' within [`IDLE_POLL`].
//!
//! With many streams connected, the hub pauses after each page it publishes ([`pace`]): every
//! page wakes every stream, so fewer, fuller pages cost a thousand streams fewer writes.
//!
//! Reading every event, the hub is also where cancellations are counted
//! (`hopper_jobs_finished_total{outcome="cancelled"}`), whoever made them: a job is cancelled
//! by a write to the broker from any process, and only the log sees them all.
//!
//! Not here: filtering, replay and the wire formats (`feed`, `ws`, `sse`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use hopper_workers::event::{Event, EventType};
use hopper_workers::{Broker, BrokerError};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Events held for slow receivers: past this many, a receiver that has not read lags.
pub const CAPACITY: usize = 16_384;
/// Events read from the broker per round-trip.
const PAGE: usize = 1000;
/// Longest wait on the broker when the log had nothing new. Short, because it bounds how late
/// an event the broker cannot signal arrives (another process's, on SQLite); one query per
/// interval per process.
const IDLE_POLL: Duration = Duration::from_millis(20);
/// The pause after a published page, per connected stream (see [`pace`]).
const PACE_PER_STREAM: Duration = Duration::from_micros(10);
/// The longest pause after a published page: what pacing may add to an event's delivery.
const MAX_PACE: Duration = Duration::from_millis(20);
/// How long the hub waits after a broker error before trying again.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// One event as broadcast: its place in this hub's sequence, the event, and its JSON text,
/// serialized once for every stream.
#[derive(Debug)]
pub struct HubEvent {
    pub seq: u64,
    pub event: Event,
    pub text: Utf8Bytes,
}

impl HubEvent {
    /// The event at `seq` (0 for one read from the broker rather than broadcast).
    pub fn new(seq: u64, event: Event) -> Result<Self, BrokerError> {
        let text = serde_json::to_string(&event)
            .map_err(BrokerError::backend)?
            .into();
        Ok(Self { seq, event, text })
    }
}

/// Where the hub is: the last event it broadcast (`seq` 0 and the log's last id before it
/// started, when it has broadcast nothing yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub seq: u64,
    pub id: Option<String>,
}

/// The shared end of the hub: subscribe, read the position, count connections. Cheap to
/// clone.
#[derive(Clone, Debug)]
pub struct Hub {
    broker: Arc<dyn Broker>,
    tx: broadcast::Sender<Arc<HubEvent>>,
    position: Arc<watch::Sender<Option<Position>>>,
    connections: Arc<AtomicUsize>,
    /// Fires when the process stops, so that every stream closes and graceful shutdown ends.
    shutdown: CancellationToken,
    /// The streams' own tasks, waited for when the hub stops.
    tasks: TaskTracker,
}

/// A counted connection; the count drops with it.
#[derive(Debug)]
pub struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Hub {
    /// A hub over `broker`, not yet reading (see [`Hub::run`]). Streams opened before it runs
    /// wait for it.
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        Self {
            broker,
            tx,
            position: Arc::new(watch::Sender::new(None)),
            connections: Arc::new(AtomicUsize::new(0)),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// The broker the hub reads (streams replay from it).
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// Fires when the hub stops.
    pub fn stopping(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs a stream's task, tracked: it must end once [`Hub::stopping`] fires.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Counts one more connection, unless `max` are open.
    pub fn admit(&self, max: usize) -> Option<Admitted> {
        let admitted = self
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        admitted.then(|| Admitted(self.connections.clone()))
    }

    /// Subscribes, then waits until the hub has caught up with the log, and answers the
    /// receiver with the position at that moment: every event broadcast after it (`seq`
    /// greater) is in the receiver; those up to it are in the broker's log up to `id`.
    /// `None` when the hub stopped.
    pub async fn subscribe(&self) -> Option<(broadcast::Receiver<Arc<HubEvent>>, Position)> {
        let mut watch = self.position.subscribe();
        tokio::select! {
            p = watch.wait_for(Option::is_some) => { p.ok()?; }
            () = self.shutdown.cancelled() => return None,
        };
        // Under the position's read lock: [`Hub::broadcast`] sends a page and moves the
        // position under its write lock, so the receiver and the position read here are of the
        // same moment. (Subscribing first and reading the position after, unlocked, could land
        // in the middle of a page: the receiver would miss the page's first events, and the
        // position, not yet moved, would say the replay need not cover them.)
        let position = self.position.borrow();
        let rx = self.tx.subscribe();
        let position = position.clone()?;
        Some((rx, position))
    }

    /// The id of the last event the hub read, without waiting: `None` before it caught up
    /// with the log, or while the log it read was empty.
    pub fn position_id(&self) -> Option<String> {
        self.position.borrow().as_ref().and_then(|p| p.id.clone())
    }

    /// Sends `page` (the events after the hub's position, in order) and moves the position
    /// to its last event, as one step for [`Hub::subscribe`]: the watch's write lock is held
    /// throughout.
    fn broadcast(&self, page: Vec<Arc<HubEvent>>, to: Position) {
        self.position.send_modify(|position| {
            for ev in page {
                // No receiver is not an error: nobody is listening right now.
                let _ = self.tx.send(ev);
            }
            *position = Some(to);
        });
    }

    /// Follows the log until `shutdown` fires: first to its end (without broadcasting the
    /// past), then every new event as it comes. Returns once the streams' tasks have ended.
    pub async fn run(self, shutdown: CancellationToken) {
        let tasks = self.tasks.clone();
        self.follow(shutdown).await;
        // `follow` fired `stopping` as it returned: the tasks are on their way out.
        tasks.close();
        tasks.wait().await;
    }

    async fn follow(self, shutdown: CancellationToken) {
        let stop = self.shutdown.clone();
        let _stop_streams = stop.drop_guard();
        let Some(mut cursor) = self.catch_up(&shutdown).await else {
            return;
        };
        let mut seq = 0u64;
        self.position.send_replace(Some(Position {
            seq,
            id: cursor.clone(),
        }));
        tracing::debug!(after = ?cursor, "event hub following the log");
        let idle = self.broker.events_idle_wait(IDLE_POLL);
        loop {
            let page = tokio::select! {
                () = shutdown.cancelled() => return,
                page = self.broker.events(cursor.as_deref(), PAGE) => page,
            };
            let wait = match page {
                Ok(events) if events.is_empty() => {
                    let waited = tokio::select! {
                        () = shutdown.cancelled() => return,
                        waited = self.broker.wait_for_events(cursor.as_deref(), idle) => waited,
                    };
                    match waited {
                        Ok(()) => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "event hub: waiting on the event log failed; retrying");
                            ERROR_BACKOFF
                        }
                    }
                }
                Ok(events) => {
                    let mut page = Vec::with_capacity(events.len());
                    for event in events {
                        cursor = Some(event.id.clone());
                        if let Some(ev) = self.prepare(seq + 1, event) {
                            seq += 1;
                            page.push(ev);
                        }
                    }
                    self.broadcast(
                        page,
                        Position {
                            seq,
                            id: cursor.clone(),
                        },
                    );
                    let pause = pace(self.tx.receiver_count());
                    if !pause.is_zero() {
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event hub: reading the event log failed; retrying");
                    ERROR_BACKOFF
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The end of the log (`Broker::events_end`): the last event's id (`None` for an empty
    /// log), or `None` when `shutdown` fired first.
    async fn catch_up(&self, shutdown: &CancellationToken) -> Option<Option<String>> {
        loop {
            let end = tokio::select! {
                () = shutdown.cancelled() => return None,
                end = self.broker.events_end() => end,
            };
            match end {
                Ok(end) => return Some(end),
                Err(e) => {
                    tracing::warn!(error = %e, "event hub: reading the event log failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(ERROR_BACKOFF) => {}
                    }
                }
            }
        }
    }

    /// Counts `event` and serializes it as the broadcast at `seq`; `None` (logged) when it
    /// does not serialize.
    fn prepare(&self, seq: u64, event: Event) -> Option<Arc<HubEvent>> {
        let id = event.id.clone();
        let kind = event.kind_of_event.as_str();
        if event.kind_of_event == EventType::Cancelled {
            // Counted here, from the log, and nowhere else: a cancel made by `hopper cancel`
            // (a process no scrape reaches), by another node's API or by a chain whose step
            // died is then counted like one made by this node's API, and each once.
            hopper_workers::metrics::job_finished(
                &event.queue,
                &event.kind,
                hopper_workers::metrics::Outcome::Cancelled,
            );
        }
        match HubEvent::new(seq, event) {
            Ok(ev) => {
                crate::metrics::event_published(kind);
                Some(Arc::new(ev))
            }
            Err(e) => {
                tracing::error!(error = %e, %id, "event hub: an event did not serialize");
                None
            }
        }
    }
}

/// How long the hub waits, after publishing a page, before reading the log again, with
/// `streams` connected. Each page wakes every stream, and a woken stream costs a write to its
/// socket (and its client a read) however few events the page held: at a thousand streams and
/// thousands of events a second, pages of one millisecond's events made the wakeups, not the
/// bytes, most of the machine's work. Pausing lets a page gather more events, so each wakeup
/// carries more frames, in proportion to the streams to wake: nothing for a few streams (the
/// pause would be under the timer's millisecond), 10 ms for a thousand, at most [`MAX_PACE`].
/// The events are only read later; none is skipped, so the stream's contract is unchanged.
fn pace(streams: usize) -> Duration {
    let pause = PACE_PER_STREAM
        .saturating_mul(u32::try_from(streams).unwrap_or(u32::MAX))
        .min(MAX_PACE);
    if pause < Duration::from_millis(1) {
        Duration::ZERO
    } else {
        pause
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::AtomicBool;

    use hopper_workers::JobId;
    use hopper_workers::time::Timestamp;

    use super::*;

    fn event(n: u64) -> Event {
        Event {
            id: n.to_string(),
            kind_of_event: EventType::Enqueued,
            job_id: JobId::generate(),
            queue: "default".into(),
            kind: "sys.noop".into(),
            at: Timestamp::EPOCH,
            attempt: 0,
            progress: None,
            message: None,
            result: None,
            error: None,
        }
    }

    /// A stream that subscribes while a page is being broadcast gets a receiver and a
    /// position of the same moment: the first event it receives is the one right after the
    /// position, never a later one (the events between would be neither replayed nor
    /// received: lost).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_subscribing_during_a_page_misses_none_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hopper.db");
        let broker = hopper_workers::broker::sqlite::open(
            path.to_str().unwrap(),
            hopper_workers::clock::system(),
        )
        .await
        .unwrap();
        let hub = Hub::new(broker);
        hub.position
            .send_replace(Some(Position { seq: 0, id: None }));
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = {
            let (hub, stop) = (hub.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let page = (0..200)
                        .map(|_| {
                            seq += 1;
                            Arc::new(HubEvent::new(seq, event(seq)).unwrap())
                        })
                        .collect();
                    hub.broadcast(
                        page,
                        Position {
                            seq,
                            id: Some(seq.to_string()),
                        },
                    );
                    std::thread::sleep(Duration::from_micros(50));
                }
            })
        };
        let mut checked = 0;
        for _ in 0..3000 {
            let (mut rx, position) = hub.subscribe().await.unwrap();
            match rx.recv().await {
                Ok(first) => {
                    assert_eq!(first.seq, position.seq + 1, "the receiver skipped events");
                    checked += 1;
                }
                // Overrun before the first read (a slow moment): nothing to check.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        publisher.join().unwrap();
        assert!(checked > 1000, "only {checked} subscriptions checked");
    }

    #[test]
    fn the_pace_grows_with_the_streams_and_is_bounded() {
        assert_eq!(pace(0), Duration::ZERO);
        assert_eq!(pace(1), Duration::ZERO);
        assert_eq!(pace(99), Duration::ZERO);
        assert_eq!(pace(100), Duration::from_millis(1));
        assert_eq!(pace(1000), Duration::from_millis(10));
        assert_eq!(pace(1_000_000), MAX_PACE);
    }
}
