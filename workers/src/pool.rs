//! The worker pool (being written): public API fixed.
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::clock::Clock;
use crate::error::BrokerResult;
use crate::handler::Registry;
use crate::job::JobId;
use crate::retry::RetryPolicy;

/// One queue the pool serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    /// At most this many of its jobs run at once in this pool; `None`: only the pool's limit.
    pub concurrency: Option<usize>,
    /// A paused queue is not fetched from.
    pub paused: bool,
}

/// How the pool runs.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub concurrency: usize,
    pub queues: Vec<QueueSpec>,
    pub lease: Duration,
    pub heartbeat: Duration,
    pub shutdown_grace: Duration,
    pub job_timeout: Duration,
    pub retry: RetryPolicy,
    pub max_interruptions: u32,
    pub rescue_interval: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            queues: vec![QueueSpec { name: crate::job::DEFAULT_QUEUE.into(), concurrency: None, paused: false }],
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(25),
            job_timeout: Duration::from_secs(1800),
            retry: RetryPolicy::default(),
            max_interruptions: 3,
            rescue_interval: Duration::from_secs(1),
        }
    }
}

/// The pool.
#[derive(Debug)]
pub struct Pool {
    broker: Arc<dyn Broker>,
    registry: Arc<Registry>,
    config: PoolConfig,
    clock: Arc<dyn Clock>,
    handle: PoolHandle,
}

/// A handle to a running pool, for the API of the same process.
#[derive(Clone, Debug, Default)]
pub struct PoolHandle {}

impl PoolHandle {
    /// Tells the handler of `id`, if it runs in this process, to stop. True if it was running here.
    pub fn cancel_local(&self, _id: &JobId) -> bool {
        false
    }
}

impl Pool {
    /// A pool over `broker` running the kinds of `registry`.
    pub fn new(broker: Arc<dyn Broker>, registry: Arc<Registry>, config: PoolConfig, clock: Arc<dyn Clock>) -> Self {
        Self { broker, registry, config, clock, handle: PoolHandle::default() }
    }

    /// A handle for cancelling jobs running in this pool.
    pub fn handle(&self) -> PoolHandle {
        self.handle.clone()
    }

    /// Runs until `shutdown` fires, then drains within the grace period and releases the rest.
    pub async fn run(self, shutdown: CancellationToken) -> BrokerResult<()> {
        let _ = (&self.broker, &self.registry, &self.config, &self.clock);
        shutdown.cancelled().await;
        Ok(())
    }
}
