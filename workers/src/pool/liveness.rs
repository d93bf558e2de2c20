//! The pool's vital signs, for a supervisor such as systemd's watchdog: when the fetch loop
//! and the acknowledger last went round, how many slots are busy and how many jobs this pool
//! has finished.
//!
//! It owns the counters only; the loops bump them and the shell decides what a stall means.
//! Cheap on purpose: one relaxed atomic store per loop iteration, nothing locked. A healthy
//! loop never waits longer than [`BEAT`] without going round (an idle fetch loop, a full pool
//! waiting for a slot, an acknowledger with nothing to write), so a loop whose last round is
//! much older than that is stuck inside an iteration.

use super::*;

use std::sync::atomic::AtomicU64;

/// Longest a healthy pool loop waits before it goes round again and records it. A
/// supervisor's stall threshold must be well above it (systemd's `WatchdogSec=` is 30 s in
/// the shipped units).
pub const BEAT: Duration = Duration::from_secs(1);

/// The counters the loops bump, shared by the pool and its [`PoolHandle`]s.
#[derive(Debug)]
pub(super) struct Liveness {
    /// The origin of the stored times: they are milliseconds since it.
    origin: Instant,
    fetch: AtomicU64,
    acknowledger: AtomicU64,
    done: AtomicU64,
    slots: AtomicUsize,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            fetch: AtomicU64::new(0),
            acknowledger: AtomicU64::new(0),
            done: AtomicU64::new(0),
            slots: AtomicUsize::new(0),
        }
    }
}

impl Liveness {
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The fetch loop went round.
    pub(super) fn fetch_beat(&self) {
        self.fetch.store(self.now(), Ordering::Relaxed);
    }

    /// The acknowledger went round (or retried a write).
    pub(super) fn acknowledger_beat(&self) {
        self.acknowledger.store(self.now(), Ordering::Relaxed);
    }

    /// `n` completions were written.
    pub(super) fn finished(&self, n: usize) {
        self.done
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The pool runs `n` slots.
    pub(super) fn set_slots(&self, n: usize) {
        self.slots.store(n, Ordering::Relaxed);
    }

    /// Sleeps `total` in slices of at most [`BEAT`], recording a fetch-loop round after each,
    /// so a long backoff does not look like a stall. False when `shutdown` fired first.
    pub(super) async fn fetch_pause(&self, total: Duration, shutdown: &CancellationToken) -> bool {
        let until = Instant::now() + total;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(left.min(BEAT)) => self.fetch_beat(),
            }
        }
    }

    fn since(&self, at: &AtomicU64) -> Duration {
        Duration::from_millis(self.now().saturating_sub(at.load(Ordering::Relaxed)))
    }
}

/// A snapshot of a pool's vital signs ([`PoolHandle::vitals`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vitals {
    /// How long ago the fetch loop last went round.
    pub since_fetch: Duration,
    /// How long ago the acknowledger last went round.
    pub since_acknowledger: Duration,
    /// Handlers running now.
    pub busy: usize,
    /// The pool's slots (0 before it runs).
    pub slots: usize,
    /// Completions (succeeded, failed, released...) this pool has written.
    pub done: u64,
}

impl Vitals {
    /// True when both loops went round within `limit`.
    pub fn progressing(&self, limit: Duration) -> bool {
        self.since_fetch <= limit && self.since_acknowledger <= limit
    }
}

impl PoolHandle {
    /// The pool's vital signs now: cheap enough to read every second.
    pub fn vitals(&self) -> Vitals {
        let l = &self.liveness;
        Vitals {
            since_fetch: l.since(&l.fetch),
            since_acknowledger: l.since(&l.acknowledger),
            busy: self.running(),
            slots: l.slots.load(Ordering::Relaxed),
            done: l.done.load(Ordering::Relaxed),
        }
    }

    pub(super) fn liveness(&self) -> &Liveness {
        &self.liveness
    }
}
