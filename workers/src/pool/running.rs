//! The jobs running in this pool: each one's lease, the deadline it was last known to hold
//! until, and its stop signal, so a heartbeat's answer, a lease running out unrenewed, a local
//! cancel or the shutdown can stop exactly the handlers they mean.

use super::*;

/// Why a handler was told to stop before it finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum StopReason {
    None = 0,
    /// A user cancelled the job; the broker already has it `cancelled`.
    Cancelled = 1,
    /// Another attempt owns the job now; nothing this attempt writes would be accepted.
    LeaseLost = 2,
    /// Hard shutdown: give the job back.
    Shutdown = 3,
    /// The lease ran out without a successful heartbeat (the broker was unreachable): the job
    /// may already run elsewhere, and nothing this attempt writes would be accepted.
    LeaseExpired = 4,
}

impl StopReason {
    pub(super) fn from_u8(v: u8) -> Self {
        match v {
            1 => StopReason::Cancelled,
            2 => StopReason::LeaseLost,
            3 => StopReason::Shutdown,
            4 => StopReason::LeaseExpired,
            _ => StopReason::None,
        }
    }
}

/// A job running in this pool: how to stop it, and why it was stopped.
#[derive(Debug)]
pub(super) struct Running {
    pub(super) lease: Lease,
    /// Until when the lease is surely held: its deadline at fetch, then, at each successful
    /// heartbeat, the time the heartbeat was sent plus the lease (the broker extended it from
    /// a later time, so the real deadline is never earlier).
    pub(super) lease_until: Timestamp,
    pub(super) token: CancellationToken,
    pub(super) reason: Arc<AtomicU8>,
    /// The handler has returned and its completion waits for the acknowledger: the lease is
    /// still heartbeated (a slow write must not let the job be rescued and run again), but
    /// there is nothing left to stop.
    pub(super) finishing: bool,
}

impl Running {
    /// Records the first reason only: a job cancelled by a user stays "cancelled" even if a
    /// shutdown follows.
    pub(super) fn stop(&self, reason: StopReason) {
        let _ = self.reason.compare_exchange(
            StopReason::None as u8,
            reason as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        self.token.cancel();
    }
}

/// Jobs running in this process, by id.
type RunningMap = Arc<Mutex<HashMap<JobId, Running>>>;

/// A handle to a running pool, for the API of the same process.
#[derive(Clone, Debug, Default)]
pub struct PoolHandle {
    running: RunningMap,
    /// The loops' vital signs (`liveness`), read by [`PoolHandle::vitals`].
    pub(super) liveness: Arc<Liveness>,
    /// Cancelled by [`PoolHandle::end_grace`]: the shutdown's drain stops waiting.
    grace_ended: CancellationToken,
}

impl PoolHandle {
    /// Tells the handler of `id`, if it runs in this process, to stop at once (the broker has
    /// already recorded the cancel). True if it was running here. Handlers in other processes
    /// learn of a cancel at their next heartbeat.
    pub fn cancel_local(&self, id: &JobId) -> bool {
        let map = lock(&self.running);
        match map.get(id) {
            Some(r) if !r.finishing => {
                r.stop(StopReason::Cancelled);
                true
            }
            _ => false,
        }
    }

    /// Ends the shutdown's grace period now, for an operator who will not wait (a second
    /// Ctrl-C or SIGTERM): once the pool is stopping, its running jobs are stopped and
    /// released to their queues at once, as when `shutdown_grace` runs out, instead of being
    /// left leased for a rescue to count as interrupted. Before the shutdown it only marks
    /// the grace as over.
    pub fn end_grace(&self) {
        self.grace_ended.cancel();
    }

    /// Resolves once [`PoolHandle::end_grace`] was called.
    pub(super) async fn grace_ended(&self) {
        self.grace_ended.cancelled().await;
    }

    /// How many handlers run in this pool now.
    pub fn running(&self) -> usize {
        lock(&self.running)
            .values()
            .filter(|r| !r.finishing)
            .count()
    }

    /// Leases to heartbeat: running handlers, and completions not yet written.
    pub(super) fn leases(&self) -> Vec<Lease> {
        lock(&self.running)
            .values()
            .map(|r| r.lease.clone())
            .collect()
    }

    /// Records a new attempt. An entry left by an older attempt of the same job (its lease
    /// expired and this pool fetched the job again) is stopped: its writes would be refused.
    pub(super) fn insert(&self, running: Running) {
        let mut map = lock(&self.running);
        if let Some(old) = map.insert(running.lease.job_id.clone(), running)
            && !old.finishing
        {
            old.stop(StopReason::LeaseLost);
        }
    }

    /// Marks an attempt's handler as done, its completion on the way to the broker.
    pub(super) fn finishing(&self, lease: &Lease) {
        if let Some(r) = lock(&self.running).get_mut(&lease.job_id)
            && r.lease.token == lease.token
        {
            r.finishing = true;
        }
    }

    /// Forgets an attempt (only that attempt: a newer one of the same job stays).
    pub(super) fn remove(&self, lease: &Lease) {
        let mut map = lock(&self.running);
        if map
            .get(&lease.job_id)
            .is_some_and(|r| r.lease.token == lease.token)
        {
            map.remove(&lease.job_id);
        }
    }

    /// Stops the handler of this attempt if it still runs here; false when it had already
    /// ended (or a newer attempt runs instead).
    pub(super) fn stop(&self, lease: &Lease, reason: StopReason) -> bool {
        match lock(&self.running).get(&lease.job_id) {
            Some(r) if r.lease.token == lease.token && !r.finishing => {
                r.stop(reason);
                true
            }
            _ => false,
        }
    }

    /// Records that a heartbeat sent at `sent` extended this attempt's lease to `until`.
    pub(super) fn extended(&self, lease: &Lease, until: Timestamp) {
        if let Some(r) = lock(&self.running).get_mut(&lease.job_id)
            && r.lease.token == lease.token
        {
            r.lease_until = r.lease_until.max(until);
        }
    }

    /// Stops every handler whose lease is not known to be held at `now` (no heartbeat
    /// succeeded in time): another node may rescue and run its job from then on. Returns the
    /// jobs stopped now; a handler already told to stop is not counted again.
    pub(super) fn expire(&self, now: Timestamp) -> Vec<JobId> {
        let map = lock(&self.running);
        map.values()
            .filter(|r| !r.finishing && !r.token.is_cancelled() && r.lease_until <= now)
            .map(|r| {
                r.stop(StopReason::LeaseExpired);
                r.lease.job_id.clone()
            })
            .collect()
    }

    /// The earliest lease deadline of a handler still running.
    pub(super) fn next_deadline(&self) -> Option<Timestamp> {
        lock(&self.running)
            .values()
            .filter(|r| !r.finishing && !r.token.is_cancelled())
            .map(|r| r.lease_until)
            .min()
    }

    pub(super) fn stop_all(&self, reason: StopReason) -> usize {
        let map = lock(&self.running);
        let mut n = 0;
        for r in map.values().filter(|r| !r.finishing) {
            r.stop(reason);
            n += 1;
        }
        n
    }
}

/// Locks a std mutex, recovering from poisoning: the map stays consistent because every
/// critical section is a single insert, remove or read.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
