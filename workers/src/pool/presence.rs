//! The pool's entry in the registry of worker nodes (`crate::nodes`): registered when the
//! pool starts, refreshed every [`REGISTER_EVERY`] with its slots and per-queue load, and
//! dropped when it stops, so that the API of any node can tell which queues and kinds are
//! served and whether they have room.
//!
//! A failed registration is logged and tried again at the next tick: the registry informs
//! operators, it never decides whether a job runs. This module does not count busy slots
//! itself; [`QueueBusy`] is kept by the fetch loop as it starts and ends jobs.

use super::*;
use crate::nodes::{QueueLoad, REGISTER_EVERY, WorkerNode};

/// Jobs of each queue running in this pool now, kept by `fetch::start_job`.
#[derive(Debug, Default)]
pub(super) struct QueueBusy(Mutex<HashMap<String, u64>>);

impl QueueBusy {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        // A poisoned map only means a panic elsewhere while counting; the counts stay usable.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn started(&self, queue: &str) {
        *self.map().entry(queue.to_owned()).or_default() += 1;
    }

    pub(super) fn ended(&self, queue: &str) {
        if let Some(n) = self.map().get_mut(queue) {
            *n = n.saturating_sub(1);
        }
    }

    fn of(&self, queue: &str) -> u64 {
        self.map().get(queue).copied().unwrap_or(0)
    }
}

/// Who this node is, fixed for the pool's run.
fn identity(clock: &Arc<dyn Clock>) -> (String, String, u32, Timestamp) {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let host = if host.is_empty() {
        "unknown".into()
    } else {
        host
    };
    let pid = std::process::id();
    let id = format!(
        "{}:{pid}:{}",
        host.replace(char::is_whitespace, "_"),
        uuid::Uuid::now_v7().simple()
    );
    (id, host, pid, clock.now())
}

/// What the registration reads from the pool: not [`Shared`], whose senders must all be
/// dropped for the acknowledger to finish.
pub(super) struct Presence {
    pub(super) config: PoolConfig,
    pub(super) registry: Arc<Registry>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) handle: PoolHandle,
    pub(super) busy: Arc<QueueBusy>,
}

/// Registers the pool until `stop` fires, then deregisters it.
pub(super) async fn register(broker: Arc<dyn Broker>, shared: Presence, stop: CancellationToken) {
    let busy = &shared.busy;
    let (id, host, pid, started_at) = identity(&shared.clock);
    let mut kinds: Vec<String> = shared.registry.kinds().map(str::to_owned).collect();
    kinds.sort();
    let slots_total = to_u64(shared.config.concurrency.max(1));
    let entry = || WorkerNode {
        id: id.clone(),
        host: host.clone(),
        pid,
        started_at,
        last_seen: started_at,
        queues: shared
            .config
            .queues
            .iter()
            .map(|q| QueueLoad {
                queue: q.name.clone(),
                busy: busy.of(&q.name),
                limit: q.concurrency.map(|c| to_u64(c.max(1))),
                paused: q.paused,
            })
            .collect(),
        kinds: kinds.clone(),
        slots_total,
        slots_busy: to_u64(shared.handle.running()),
    };
    let mut failing = false;
    loop {
        match broker.register_node(&entry()).await {
            Ok(()) if failing => {
                info!("registered this worker node again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                warn!(error = %e, "registering this worker node failed; retrying");
                failing = true;
            }
            Err(e) => debug!(error = %e, "registering this worker node failed again"),
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(REGISTER_EVERY) => {}
        }
    }
    if let Err(e) = broker.deregister_node(&id).await {
        warn!(error = %e, "deregistering this worker node failed; it expires within a minute");
    }
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
