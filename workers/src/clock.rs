//! Time, injected. Brokers and the pool read the time through a [`Clock`] so that tests of
//! delays, backoff and lease expiry can move time instead of sleeping. What a time *is*
//! ([`Timestamp`]) is `crate::time`'s business.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::time::{Timestamp, duration_ms};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The real clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        // A system clock set before 1970 reads as the epoch rather than failing every caller.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(Timestamp::EPOCH, |d| Timestamp::from_millis(duration_ms(d)))
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicI64,
}

impl ManualClock {
    /// A clock set to `start`.
    pub fn new(start: Timestamp) -> Arc<Self> {
        Arc::new(Self {
            now: AtomicI64::new(start.as_millis()),
        })
    }

    /// Moves the clock forward by `ms` milliseconds: tests read best with plain numbers
    /// (`advance(10_001)`, one past a 10 s lease).
    pub fn advance(&self, ms: i64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, at: Timestamp) {
        self.now.store(at.as_millis(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.now.load(Ordering::SeqCst))
    }
}

/// The system clock as a shared handle.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}
