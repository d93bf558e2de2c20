//! How a broker implementation answers the [`Broker`](super::Broker) trait: each operation is
//! a function of one of its modules, taking the broker first (`lifecycle::fetch(self, queue,
//! max, lease)`), so a broker's files are cut by concern, not by the trait's shape. The
//! hand-off from the trait to those functions is written once, here, for every broker: a
//! change of a trait method's signature is then made in the trait and in this one place.

/// Implements [`Broker`](crate::broker::Broker) for a broker type by calling, for each
/// operation, the function of the same name in the module given for it (`fetch: lifecycle`
/// calls `lifecycle::fetch(self, …)`). Every job operation is named, in the trait's order;
/// `inbox` names the module answering the six inbox and Web Push operations, `circuits` the
/// one answering the two circuit operations. The
/// invoking module need only have the modules it names in scope.
macro_rules! delegate_broker {
    (
        $broker:ty, $name:literal,
        store: $store:ident, fetch: $fetch:ident, fetch_rated: $fetch_rated:ident,
        rate_held_until: $rate_held:ident, wait_for_work: $wait:ident,
        heartbeat: $heartbeat:ident, progress: $progress:ident, checkpoint: $checkpoint:ident, finish: $finish:ident,
        cancel: $cancel:ident, retry: $retry:ident, retry_all_dead: $retry_all_dead:ident,
        rescue: $rescue:ident, get: $get:ident, history: $history:ident, list: $list:ident,
        queues: $queues:ident, events: $events:ident, wait_for_events: $wait_events:ident,
        purge: $purge:ident,
        drop_queue: $drop_queue:ident, ping: $ping:ident, pause: $pause:ident,
        resume: $resume:ident, cursor: $cursor:ident,
        ready_ahead: $ready_ahead:ident,
        register_node: $register_node:ident, deregister_node: $deregister_node:ident,
        nodes: $nodes:ident,
        inbox: $inbox:ident, circuits: $circuits:ident $(,)?
    ) => {
        // An anonymous constant, so that the names the signatures use are imported here and
        // nowhere else in the invoking module.
        const _: () = {
            use $crate::broker::delegate::prelude::*;

            #[async_trait::async_trait]
            impl $crate::broker::Broker for $broker {
                fn name(&self) -> &'static str {
                    $name
                }

                async fn store(&self, jobs: Vec<NewJob>) -> BrokerResult<Vec<Enqueued>> {
                    $store::store(self, jobs).await
                }

                async fn fetch(
                    &self,
                    queue: &str,
                    max: usize,
                    lease: Duration,
                ) -> BrokerResult<Vec<Job>> {
                    $fetch::fetch(self, queue, max, lease).await
                }

                async fn fetch_rated(
                    &self,
                    queue: &str,
                    max: usize,
                    lease: Duration,
                    rate: JobRate,
                ) -> BrokerResult<RatedFetch> {
                    $fetch_rated::fetch_rated(self, queue, max, lease, rate).await
                }

                async fn rate_held_until(&self, queue: &str) -> BrokerResult<Option<Timestamp>> {
                    $rate_held::rate_held_until(self, queue).await
                }

                async fn wait_for_work(
                    &self,
                    queues: &[String],
                    timeout: Duration,
                ) -> BrokerResult<()> {
                    $wait::wait_for_work(self, queues, timeout).await
                }

                // An empty batch is answered without a round trip, by every broker alike.
                async fn heartbeat(
                    &self,
                    leases: &[Lease],
                    lease: Duration,
                ) -> BrokerResult<Vec<LeaseStatus>> {
                    if leases.is_empty() {
                        return Ok(Vec::new());
                    }
                    $heartbeat::heartbeat(self, leases, lease).await
                }

                async fn progress(
                    &self,
                    lease: &Lease,
                    percent: u8,
                    message: Option<String>,
                ) -> BrokerResult<()> {
                    $progress::progress(self, lease, percent, message).await
                }

                async fn checkpoint(&self, lease: &Lease, value: &Value) -> BrokerResult<()> {
                    $checkpoint::checkpoint(self, lease, value).await
                }

                async fn finish(&self, batch: Vec<Finish>) -> BrokerResult<Vec<BrokerResult<()>>> {
                    if batch.is_empty() {
                        return Ok(Vec::new());
                    }
                    $finish::finish(self, batch).await
                }

                async fn cancel(&self, id: &JobId) -> BrokerResult<Job> {
                    $cancel::cancel(self, id).await
                }

                async fn retry(&self, id: &JobId) -> BrokerResult<Job> {
                    $retry::retry(self, id).await
                }

                async fn retry_all_dead(&self, queue: Option<&str>) -> BrokerResult<u64> {
                    $retry_all_dead::retry_all_dead(self, queue).await
                }

                async fn pause(&self, queue: &str) -> BrokerResult<()> {
                    $crate::job::check_new_queue(queue)?;
                    $pause::pause(self, queue).await
                }

                async fn resume(&self, queue: &str) -> BrokerResult<()> {
                    $resume::resume(self, queue).await
                }

                async fn cursor(&self, name: &str) -> BrokerResult<Option<String>> {
                    $crate::broker::check_cursor_name(name)?;
                    $cursor::cursor(self, name).await
                }

                async fn save_cursor(&self, name: &str, value: &str) -> BrokerResult<()> {
                    $crate::broker::check_cursor_name(name)?;
                    $cursor::save_cursor(self, name, value).await
                }

                async fn advance_cursor(&self, name: &str, value: i64) -> BrokerResult<()> {
                    $crate::broker::check_cursor_name(name)?;
                    $cursor::advance_cursor(self, name, value).await
                }

                async fn rescue(&self, max_interruptions: u32) -> BrokerResult<Vec<Rescued>> {
                    $rescue::rescue(self, max_interruptions).await
                }

                async fn get(&self, id: &JobId) -> BrokerResult<Option<Job>> {
                    $get::get(self, id).await
                }

                async fn history(&self, id: &JobId) -> BrokerResult<Vec<Event>> {
                    $history::history(self, id).await
                }

                async fn list(&self, filter: &JobFilter) -> BrokerResult<JobPage> {
                    $list::list(self, filter).await
                }

                async fn queues(&self) -> BrokerResult<Vec<QueueStats>> {
                    $queues::queues(self).await
                }

                async fn is_paused(&self, queue: &str) -> BrokerResult<bool> {
                    $pause::is_paused(self, queue).await
                }

                async fn events(
                    &self,
                    after: Option<&str>,
                    limit: usize,
                ) -> BrokerResult<Vec<Event>> {
                    $events::events(self, after, limit).await
                }

                async fn events_end(&self) -> BrokerResult<Option<String>> {
                    $events::events_end(self).await
                }

                async fn trimmed_after(&self, after: &str) -> BrokerResult<Option<bool>> {
                    $events::trimmed_after(self, after).await
                }

                async fn wait_for_events(
                    &self,
                    after: Option<&str>,
                    timeout: Duration,
                ) -> BrokerResult<()> {
                    $wait_events::wait_for_events(self, after, timeout).await
                }

                fn events_idle_wait(&self, short: Duration) -> Duration {
                    $wait_events::events_idle_wait(self, short)
                }

                async fn purge(
                    &self,
                    states: &[JobState],
                    before: Timestamp,
                    keep: u64,
                ) -> BrokerResult<u64> {
                    $purge::purge(self, states, before, keep).await
                }

                async fn drop_queue(&self, queue: &str) -> BrokerResult<u64> {
                    $drop_queue::drop_queue(self, queue).await
                }

                async fn ping(&self) -> BrokerResult<()> {
                    $ping::ping(self).await
                }

                async fn ready(&self) -> BrokerResult<()> {
                    $ping::ready(self).await
                }

                async fn ready_ahead(&self, queue: &str, priority: u8) -> BrokerResult<u64> {
                    $ready_ahead::ready_ahead(self, queue, priority).await
                }

                async fn register_node(&self, node: &WorkerNode) -> BrokerResult<()> {
                    $crate::broker::check_node_id(&node.id)?;
                    $register_node::register_node(self, node).await
                }

                async fn deregister_node(&self, id: &str) -> BrokerResult<()> {
                    $deregister_node::deregister_node(self, id).await
                }

                async fn nodes(&self) -> BrokerResult<Vec<WorkerNode>> {
                    let mut nodes = $nodes::nodes(self).await?;
                    $crate::nodes::sort_nodes(&mut nodes);
                    Ok(nodes)
                }

                async fn inbox_append(
                    &self,
                    entry: &NewInboxEntry,
                    keep: Duration,
                ) -> BrokerResult<Appended> {
                    entry.check()?;
                    $inbox::inbox_append(self, entry, keep).await
                }

                async fn inbox_read(
                    &self,
                    user: Option<&str>,
                    after: Option<&str>,
                    limit: usize,
                    keep: Duration,
                ) -> BrokerResult<Vec<InboxEntry>> {
                    let limit = limit.min($crate::broker::inbox::MAX_INBOX_PAGE);
                    $inbox::inbox_read(self, user, after, limit, keep).await
                }

                async fn inbox_wait(
                    &self,
                    after: Option<&str>,
                    timeout: Duration,
                ) -> BrokerResult<()> {
                    $inbox::inbox_wait(self, after, timeout).await
                }

                async fn inbox_end(&self) -> BrokerResult<Option<String>> {
                    $inbox::inbox_end(self).await
                }

                async fn push_subscribe(&self, user: &str, sub: &WebPush) -> BrokerResult<bool> {
                    $crate::broker::inbox::check_name("user", user)?;
                    $inbox::push_subscribe(self, user, sub).await
                }

                async fn push_subscriptions(&self, user: &str) -> BrokerResult<Vec<WebPush>> {
                    $inbox::push_subscriptions(self, user).await
                }

                async fn push_unsubscribe(&self, user: &str, endpoint: &str) -> BrokerResult<bool> {
                    $inbox::push_unsubscribe(self, user, endpoint).await
                }

                async fn circuits(&self) -> BrokerResult<Vec<Circuit>> {
                    let mut all = $circuits::circuits(self).await?;
                    all.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
                    Ok(all)
                }

                async fn circuit(&self, endpoint: &str) -> BrokerResult<Option<Circuit>> {
                    $circuits::circuit(self, endpoint).await
                }

                async fn save_circuit(&self, circuit: &Circuit) -> BrokerResult<()> {
                    circuit.check()?;
                    $circuits::save_circuit(self, circuit).await
                }
            }
        };
    };
}

pub(crate) use delegate_broker;

/// The names the trait's signatures use, imported by [`delegate_broker`]'s expansion.
pub(crate) mod prelude {
    pub(crate) use std::time::Duration;

    pub(crate) use serde_json::Value;

    pub(crate) use crate::broker::{
        Appended, Circuit, Enqueued, Finish, InboxEntry, JobFilter, JobPage, JobRate, LeaseStatus,
        NewInboxEntry, QueueStats, RatedFetch, Rescued, WebPush,
    };
    pub(crate) use crate::error::BrokerResult;
    pub(crate) use crate::event::Event;
    pub(crate) use crate::job::{Job, JobId, JobState, Lease, NewJob};
    pub(crate) use crate::nodes::WorkerNode;
    pub(crate) use crate::time::Timestamp;
}
