//! A broker a test can cut off: [`Partitioned`] wraps any [`Broker`] and, while cut, answers
//! every call with [`BrokerError::Unavailable`], as a node that lost its network would see it.
//! Other nodes keep using the wrapped broker directly, so a pool over a `Partitioned` can be
//! cut off while the rest of the cluster goes on. It does not pause time or the broker itself:
//! a case that needs a real stalled connection starts its own `redis-server` and stops it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::broker::{
    Appended, Broker, Circuit, Enqueued, Finish, InboxEntry, JobFilter, JobPage, JobRate,
    LeaseStatus, NewInboxEntry, QueueStats, RatedFetch, Rescued, WebPush,
};
use crate::error::{BrokerError, BrokerResult};
use crate::event::Event;
use crate::job::{Job, JobId, JobState, Lease, NewJob};
use crate::nodes::WorkerNode;
use crate::time::Timestamp;

/// A broker that fails every call while [`Partitioned::cut`] is in force.
#[derive(Debug)]
pub struct Partitioned {
    inner: Arc<dyn Broker>,
    cut: AtomicBool,
    /// Held shared by every call that reached the broker, so that [`Partitioned::cut`] can
    /// wait for those in flight: a call that got through before the cut must not land after
    /// the test has moved on (say, moved the clock past a lease).
    in_flight: tokio::sync::RwLock<()>,
    /// Calls of [`Broker::fetch_rated`] so far, reached or not: how a case tells a pool that
    /// sleeps while its queue is held from one that keeps asking.
    rated_fetches: AtomicU64,
}

/// The broker, reached: holds the call's share of [`Partitioned::in_flight`] until the call's
/// statement ends.
struct Reached<'a> {
    broker: &'a dyn Broker,
    _call: tokio::sync::RwLockReadGuard<'a, ()>,
}

impl std::ops::Deref for Reached<'_> {
    type Target = dyn Broker;

    fn deref(&self) -> &Self::Target {
        self.broker
    }
}

impl Partitioned {
    /// `inner`, reachable until cut.
    pub fn new(inner: Arc<dyn Broker>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            cut: AtomicBool::new(false),
            in_flight: tokio::sync::RwLock::new(()),
            rated_fetches: AtomicU64::new(0),
        })
    }

    /// How many times [`Broker::fetch_rated`] was called through this wrapper.
    pub fn rated_fetches(&self) -> u64 {
        self.rated_fetches.load(Ordering::SeqCst)
    }

    /// From now on every call fails as unreachable; returns once the calls that got through
    /// before have ended.
    pub async fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        drop(self.in_flight.write().await);
    }

    /// Calls reach the broker again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    async fn reach(&self) -> BrokerResult<Reached<'_>> {
        let call = self.in_flight.read().await;
        if self.cut.load(Ordering::SeqCst) {
            Err(BrokerError::Unavailable("partitioned by the test".into()))
        } else {
            Ok(Reached {
                broker: &*self.inner,
                _call: call,
            })
        }
    }
}

#[async_trait]
impl Broker for Partitioned {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn store(&self, jobs: Vec<NewJob>) -> BrokerResult<Vec<Enqueued>> {
        self.reach().await?.store(jobs).await
    }

    async fn fetch(&self, queue: &str, max: usize, lease: Duration) -> BrokerResult<Vec<Job>> {
        self.reach().await?.fetch(queue, max, lease).await
    }

    async fn fetch_rated(
        &self,
        queue: &str,
        max: usize,
        lease: Duration,
        rate: JobRate,
    ) -> BrokerResult<RatedFetch> {
        self.rated_fetches.fetch_add(1, Ordering::SeqCst);
        self.reach()
            .await?
            .fetch_rated(queue, max, lease, rate)
            .await
    }

    async fn rate_held_until(&self, queue: &str) -> BrokerResult<Option<Timestamp>> {
        self.reach().await?.rate_held_until(queue).await
    }

    async fn wait_for_work(&self, queues: &[String], timeout: Duration) -> BrokerResult<()> {
        self.reach().await?.wait_for_work(queues, timeout).await
    }

    async fn heartbeat(&self, leases: &[Lease], lease: Duration) -> BrokerResult<Vec<LeaseStatus>> {
        self.reach().await?.heartbeat(leases, lease).await
    }

    async fn progress(&self, lease: &Lease, percent: u8, note: Option<String>) -> BrokerResult<()> {
        self.reach().await?.progress(lease, percent, note).await
    }

    async fn checkpoint(&self, lease: &Lease, value: &serde_json::Value) -> BrokerResult<()> {
        self.reach().await?.checkpoint(lease, value).await
    }

    async fn finish(&self, batch: Vec<Finish>) -> BrokerResult<Vec<BrokerResult<()>>> {
        self.reach().await?.finish(batch).await
    }

    async fn cancel(&self, id: &JobId) -> BrokerResult<Job> {
        self.reach().await?.cancel(id).await
    }

    async fn retry(&self, id: &JobId) -> BrokerResult<Job> {
        self.reach().await?.retry(id).await
    }

    async fn retry_all_dead(&self, queue: Option<&str>) -> BrokerResult<u64> {
        self.reach().await?.retry_all_dead(queue).await
    }

    async fn cursor(&self, name: &str) -> BrokerResult<Option<String>> {
        self.reach().await?.cursor(name).await
    }

    async fn save_cursor(&self, name: &str, value: &str) -> BrokerResult<()> {
        self.reach().await?.save_cursor(name, value).await
    }

    async fn advance_cursor(&self, name: &str, value: i64) -> BrokerResult<()> {
        self.reach().await?.advance_cursor(name, value).await
    }

    async fn pause(&self, queue: &str) -> BrokerResult<()> {
        self.reach().await?.pause(queue).await
    }

    async fn resume(&self, queue: &str) -> BrokerResult<()> {
        self.reach().await?.resume(queue).await
    }

    async fn rescue(&self, max_interruptions: u32) -> BrokerResult<Vec<Rescued>> {
        self.reach().await?.rescue(max_interruptions).await
    }

    async fn get(&self, id: &JobId) -> BrokerResult<Option<Job>> {
        self.reach().await?.get(id).await
    }

    async fn history(&self, id: &JobId) -> BrokerResult<Vec<Event>> {
        self.reach().await?.history(id).await
    }

    async fn list(&self, filter: &JobFilter) -> BrokerResult<JobPage> {
        self.reach().await?.list(filter).await
    }

    async fn queues(&self) -> BrokerResult<Vec<QueueStats>> {
        self.reach().await?.queues().await
    }

    async fn events(&self, after: Option<&str>, limit: usize) -> BrokerResult<Vec<Event>> {
        self.reach().await?.events(after, limit).await
    }

    async fn events_end(&self) -> BrokerResult<Option<String>> {
        self.reach().await?.events_end().await
    }

    async fn trimmed_after(&self, after: &str) -> BrokerResult<Option<bool>> {
        self.reach().await?.trimmed_after(after).await
    }

    async fn wait_for_events(&self, after: Option<&str>, timeout: Duration) -> BrokerResult<()> {
        self.reach().await?.wait_for_events(after, timeout).await
    }

    fn events_idle_wait(&self, short: Duration) -> Duration {
        self.inner.events_idle_wait(short)
    }

    async fn purge(
        &self,
        states: &[JobState],
        before: Timestamp,
        keep_events: u64,
    ) -> BrokerResult<u64> {
        self.reach().await?.purge(states, before, keep_events).await
    }

    async fn drop_queue(&self, queue: &str) -> BrokerResult<u64> {
        self.reach().await?.drop_queue(queue).await
    }

    async fn ping(&self) -> BrokerResult<()> {
        self.reach().await?.ping().await
    }

    async fn ready_ahead(&self, queue: &str, priority: u8) -> BrokerResult<u64> {
        self.reach().await?.ready_ahead(queue, priority).await
    }

    async fn register_node(&self, node: &WorkerNode) -> BrokerResult<()> {
        self.reach().await?.register_node(node).await
    }

    async fn deregister_node(&self, id: &str) -> BrokerResult<()> {
        self.reach().await?.deregister_node(id).await
    }

    async fn nodes(&self) -> BrokerResult<Vec<WorkerNode>> {
        self.reach().await?.nodes().await
    }

    async fn inbox_append(&self, entry: &NewInboxEntry, keep: Duration) -> BrokerResult<Appended> {
        self.reach().await?.inbox_append(entry, keep).await
    }

    async fn inbox_read(
        &self,
        user: Option<&str>,
        after: Option<&str>,
        limit: usize,
        keep: Duration,
    ) -> BrokerResult<Vec<InboxEntry>> {
        self.reach()
            .await?
            .inbox_read(user, after, limit, keep)
            .await
    }

    async fn inbox_wait(&self, after: Option<&str>, timeout: Duration) -> BrokerResult<()> {
        self.reach().await?.inbox_wait(after, timeout).await
    }

    async fn inbox_end(&self) -> BrokerResult<Option<String>> {
        self.reach().await?.inbox_end().await
    }

    async fn push_subscribe(&self, user: &str, sub: &WebPush) -> BrokerResult<bool> {
        self.reach().await?.push_subscribe(user, sub).await
    }

    async fn push_subscriptions(&self, user: &str) -> BrokerResult<Vec<WebPush>> {
        self.reach().await?.push_subscriptions(user).await
    }

    async fn push_unsubscribe(&self, user: &str, endpoint: &str) -> BrokerResult<bool> {
        self.reach().await?.push_unsubscribe(user, endpoint).await
    }

    async fn circuits(&self) -> BrokerResult<Vec<Circuit>> {
        self.reach().await?.circuits().await
    }

    async fn circuit(&self, endpoint: &str) -> BrokerResult<Option<Circuit>> {
        self.reach().await?.circuit(endpoint).await
    }

    async fn save_circuit(&self, circuit: &Circuit) -> BrokerResult<()> {
        self.reach().await?.save_circuit(circuit).await
    }
}
