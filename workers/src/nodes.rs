//! The registry of worker nodes: what each running pool tells the broker about itself (who it
//! is, which queues and kinds it serves, how busy its slots are), so that any process sharing
//! the broker (the API answering "why is my job not running", `hopper workers`) knows which
//! queues and kinds are served right now.
//!
//! It owns the shape of a node's entry ([`WorkerNode`]) and how long an entry lives without a
//! refresh ([`NODE_TTL`]). Storing entries is each broker's business
//! ([`Broker::register_node`](crate::broker::Broker::register_node)); refreshing them is the
//! pool's (`crate::pool`, every [`REGISTER_EVERY`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// A node whose entry has not been refreshed for this long is gone: brokers leave it out of
/// [`Broker::nodes`](crate::broker::Broker::nodes) and drop it.
pub const NODE_TTL: Duration = Duration::from_secs(60);

/// How often a running pool refreshes its entry: well inside [`NODE_TTL`], so that a node
/// survives a few failed refreshes (a broker restart) before it is taken for gone.
pub const REGISTER_EVERY: Duration = Duration::from_secs(5);

/// One queue as a node serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueLoad {
    pub queue: String,
    /// Its jobs running on this node now.
    pub busy: u64,
    /// Its `[[queue]] concurrency` on this node, if it has one.
    #[serde(default)]
    pub limit: Option<u64>,
    /// Paused on this node by its config (`[[queue]] paused`): the node does not fetch it.
    #[serde(default)]
    pub paused: bool,
}

impl QueueLoad {
    /// No job of the queue may start on this node now: paused here, or at its own limit.
    pub fn full(&self) -> bool {
        self.paused || self.limit.is_some_and(|l| self.busy >= l)
    }
}

/// A worker node's entry in the registry, as `GET /v1/workers` and `hopper workers` show it.
///
/// ```
/// use hopper_workers::nodes::{QueueLoad, WorkerNode};
/// let node = WorkerNode {
///     id: "web-1:4242:01J".into(),
///     host: "web-1".into(),
///     pid: 4242,
///     started_at: hopper_workers::time::Timestamp::EPOCH,
///     last_seen: hopper_workers::time::Timestamp::EPOCH,
///     queues: vec![QueueLoad { queue: "default".into(), busy: 2, limit: None, paused: false }],
///     kinds: vec!["sys.noop".into()],
///     slots_total: 16,
///     slots_busy: 2,
/// };
/// assert!(node.serves("default", "sys.noop"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerNode {
    /// Unique per process run: host, pid and a random part.
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// When the node's pool started.
    pub started_at: Timestamp,
    /// When the broker last heard from it, by the broker's clock (set by the broker on each
    /// refresh; what a node sends here is ignored).
    pub last_seen: Timestamp,
    /// The queues it serves, in its fetch order.
    pub queues: Vec<QueueLoad>,
    /// The job kinds it can run, sorted.
    pub kinds: Vec<String>,
    /// Its slots: jobs it runs at once.
    pub slots_total: u64,
    /// Its slots running a job now.
    pub slots_busy: u64,
}

impl WorkerNode {
    /// Whether the node fetches `queue` (paused here or not) and runs `kind`.
    pub fn serves(&self, queue: &str, kind: &str) -> bool {
        self.queue(queue).is_some() && self.kinds.iter().any(|k| k == kind)
    }

    /// The node's load for `queue`, if it serves it.
    pub fn queue(&self, queue: &str) -> Option<&QueueLoad> {
        self.queues.iter().find(|q| q.queue == queue)
    }

    /// No job of `queue` may start on this node now: it does not serve the queue, every slot
    /// is busy, or the queue is at its limit (or paused) here.
    pub fn full_for(&self, queue: &str) -> bool {
        self.slots_busy >= self.slots_total || self.queue(queue).is_none_or(QueueLoad::full)
    }
}

/// Sorts nodes as every broker lists them: by host, then pid, then id.
pub fn sort_nodes(nodes: &mut [WorkerNode]) {
    nodes.sort_by(|a, b| (&a.host, a.pid, &a.id).cmp(&(&b.host, b.pid, &b.id)));
}
