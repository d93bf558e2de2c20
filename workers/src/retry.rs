//! The retry policy: exponential backoff with full jitter, capped.
//!
//! Full jitter (a uniform draw between zero and the exponential bound) spreads a burst of
//! failures out instead of retrying them all in lockstep (the "thundering herd").

use std::time::Duration;

use rand::Rng;

/// When to run a failed job again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The bound of the first retry's wait; doubles per attempt. Defaults to 1 s.
    pub base: Duration,
    /// No wait is longer. Defaults to 1 h.
    pub max: Duration,
    /// Draw the wait uniformly in `0..=bound` (true, the default) or wait exactly `bound`.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(3600),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the wait after failed attempt number `attempt` (from 1):
    /// `min(max, base * 2^(attempt-1))`.
    pub fn bound(&self, attempt: u32) -> Duration {
        let mut bound = self.base;
        // At most 40 doublings (a millisecond base is then past 30 years), and none once past
        // `max`: a huge attempt number costs nothing.
        for _ in 1..attempt.min(41) {
            if bound >= self.max {
                break;
            }
            bound = bound.saturating_mul(2);
        }
        bound.min(self.max)
    }

    /// The wait after failed attempt number `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let bound = self.bound(attempt);
        if !self.jitter || bound.is_zero() {
            return bound;
        }
        rand::rng().random_range(Duration::ZERO..=bound)
    }

    /// The wait after failed attempt `attempt` when the handler asked for `asked` (e.g. a
    /// server's `Retry-After`): what it asked, but never longer than `max` (a server's
    /// "retry in 10 years" is not a schedule), else the backoff.
    pub fn wait(&self, attempt: u32, asked: Option<Duration>) -> Duration {
        match asked {
            Some(asked) => asked.min(self.max),
            None => self.delay(attempt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_asked_wait_is_kept_within_the_maximum() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(3600),
            jitter: false,
        };
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(p.wait(1, Some(Duration::MAX)), Duration::from_secs(3600));
        assert_eq!(p.wait(2, None), Duration::from_millis(200));
    }

    #[test]
    fn bound_doubles_and_caps() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            jitter: false,
        };
        let got: Vec<u128> = (1..=6).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_within_bound() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(60),
            jitter: true,
        };
        for attempt in 1..=8 {
            for _ in 0..200 {
                assert!(p.delay(attempt) <= p.bound(attempt));
            }
        }
        // Full jitter spreads: 200 draws are not all the same.
        let draws: std::collections::HashSet<_> = (0..200).map(|_| p.delay(5)).collect();
        assert!(draws.len() > 10);
    }

    #[test]
    fn huge_attempts_do_not_overflow() {
        let p = RetryPolicy::default();
        assert_eq!(p.bound(u32::MAX), Duration::from_secs(3600));
    }
}
