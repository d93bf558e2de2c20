//! Per-queue job rate limits (`[[queue]] rate_limit`), as every broker enforces them: the
//! rate ([`JobRate`]), what a rated fetch answers ([`RatedFetch`]) and the one rule both
//! brokers apply ([`JobRate::allowed`], [`JobRate::advance`]; `workers/lua/fetch.lua` is the
//! same rule in Lua).
//!
//! It owns the arithmetic, not the storage: the SQLite broker keeps a queue's state in
//! `queue_rates`, the Redis broker under `{<prefix>:<queue>}:rate`, and each advances it in
//! the very transaction or script that leases the jobs, so any number of nodes together start
//! no more than the rate allows.
//!
//! The rule is GCRA (the generic cell rate algorithm, a token bucket kept as one number): a
//! queue's state is `next`, the earliest time its next job may start, in milliseconds on the
//! broker's clock. A fetch at `now` first moves `next` up to `now - tolerance` (an idle queue
//! saves up no more than that), may then start one job per `interval` from `next` up to
//! `now`, and sets `next` to its old value plus `interval` times the jobs it started. The
//! tolerance is [`TOLERANCE_MS`]: it lets a fetch that comes late (a worker woken a little
//! after `next`) make up for it instead of losing the time, and bounds the burst of an idle
//! queue to a tenth of a second's worth of jobs (at least one). Nodes whose configs give a
//! queue different rates share its `next` and each applies its own interval to it.

use std::time::Duration;

use crate::job::Job;
use crate::time::Timestamp;

/// How late a fetch may come and still start the jobs it was owed, in milliseconds; also the
/// most an idle queue saves up (a tenth of a second's worth of jobs, plus one).
pub const TOLERANCE_MS: f64 = 100.0;

/// A queue's job rate: at most `count` starts per `per`, spread evenly.
///
/// ```
/// use std::time::Duration;
/// use hopper_workers::broker::JobRate;
/// let rate = JobRate::new(20, Duration::from_secs(1)).expect("a rate");
/// assert_eq!(rate.interval_ms(), 50.0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JobRate {
    count: u32,
    per: Duration,
}

impl JobRate {
    /// `count` starts per `per`; `None` when either is zero.
    pub fn new(count: u32, per: Duration) -> Option<Self> {
        (count > 0 && !per.is_zero()).then_some(Self { count, per })
    }

    /// Starts per period.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The period.
    pub fn per(&self) -> Duration {
        self.per
    }

    /// Milliseconds between two starts.
    pub fn interval_ms(&self) -> f64 {
        self.per.as_secs_f64() * 1000.0 / f64::from(self.count)
    }

    /// How many jobs a fetch at `now` may start given the queue's stored `next` (`None`: never
    /// limited before), at most `max`; and the `next` to count from (see the module docs).
    pub fn allowed(&self, next: Option<f64>, now: f64, max: usize) -> (usize, f64) {
        let from = next.map_or(now - TOLERANCE_MS, |n| n.max(now - TOLERANCE_MS));
        if from > now {
            return (0, from);
        }
        let owed = ((now - from) / self.interval_ms()).floor() + 1.0;
        // `owed` is at least 1 and bounded by the tolerance over the interval.
        let owed = if owed >= max as f64 {
            max
        } else {
            owed as usize
        };
        (owed, from)
    }

    /// The stored `next` after starting `started` jobs counted `from` (what [`Self::allowed`]
    /// answered).
    pub fn advance(&self, from: f64, started: usize) -> f64 {
        from + self.interval_ms() * started as f64
    }
}

/// What [`Broker::fetch_rated`](super::Broker::fetch_rated) answers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RatedFetch {
    /// The jobs leased, as [`Broker::fetch`](super::Broker::fetch) answers them.
    pub jobs: Vec<Job>,
    /// Set when the queue's rate allows no further start now: how long until it does
    /// (measured on the broker's clock, so a node's own clock does not matter). A worker
    /// sleeps this long before fetching from the queue again, instead of polling.
    pub held_for: Option<Duration>,
}

/// When a queue's next start is allowed, from its stored `next` (ms) and the broker's `now`:
/// `None` unless that is later than now. Shared by both brokers'
/// [`Broker::rate_held_until`](super::Broker::rate_held_until).
pub fn held_until(next: Option<f64>, now: Timestamp) -> Option<Timestamp> {
    let next = next?;
    let at = Timestamp::from_millis(next.ceil() as i64);
    (at > now).then_some(at)
}

/// Longest wait [`held_for`] answers: a stored `next` far in the future (a clock that jumped,
/// a damaged key) holds the queue for an hour at most, then the broker's rule decides again.
const LONGEST_HOLD: Duration = Duration::from_secs(3600);

/// How long from `now` until `next` (ms), when `next` is later; at most [`LONGEST_HOLD`].
/// Any stored value is safe here, infinite or not a number included.
pub fn held_for(next: f64, now: f64) -> Option<Duration> {
    if next.is_nan() || next <= now {
        return None;
    }
    let wait = Duration::try_from_secs_f64((next - now) / 1000.0).unwrap_or(LONGEST_HOLD);
    Some(wait.min(LONGEST_HOLD))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_next_start_holds_an_hour_at_most() {
        assert_eq!(held_for(f64::INFINITY, 0.0), Some(LONGEST_HOLD));
        assert_eq!(held_for(1e300, 0.0), Some(LONGEST_HOLD));
        assert_eq!(held_for(f64::NAN, 0.0), None);
        assert_eq!(held_for(1500.0, 1000.0), Some(Duration::from_millis(500)));
    }

    #[test]
    fn an_idle_queue_saves_up_a_tenth_of_a_second() {
        let rate = JobRate::new(20, Duration::from_secs(1)).expect("a rate");
        // 100 ms of tolerance at 50 ms each: three jobs at once, then one per interval.
        let (n, from) = rate.allowed(None, 10_000.0, 50);
        assert_eq!(n, 3);
        let next = rate.advance(from, n);
        assert_eq!(next, 10_050.0);
        assert_eq!(rate.allowed(Some(next), 10_010.0, 50).0, 0);
        assert_eq!(rate.allowed(Some(next), 10_050.0, 50).0, 1);
    }

    #[test]
    fn a_late_fetch_makes_up_for_its_lateness() {
        let rate = JobRate::new(20, Duration::from_secs(1)).expect("a rate");
        // Due at 10 000, fetched 60 ms late: two jobs, and no time lost.
        let (n, from) = rate.allowed(Some(10_000.0), 10_060.0, 50);
        assert_eq!((n, from), (2, 10_000.0));
        assert_eq!(rate.advance(from, n), 10_100.0);
    }

    #[test]
    fn per_minute_rates_space_starts_out() {
        let rate = JobRate::new(10, Duration::from_secs(60)).expect("a rate");
        assert_eq!(rate.interval_ms(), 6000.0);
        let (n, from) = rate.allowed(None, 0.0, 5);
        assert_eq!(n, 1);
        assert_eq!(
            held_for(rate.advance(from, n), 0.0),
            Some(Duration::from_millis(5900))
        );
    }
}
