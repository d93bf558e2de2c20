//! The circuit breaker of `notify.send`'s endpoints (each webhook URL, each push service
//! origin): after `[notify] breaker_failures` consecutive failures an endpoint's circuit
//! opens; while it is open, deliveries to it are not attempted (the job snoozes, its attempts
//! not spent) for a cool-down that starts at `[notify] breaker_cooldown` and doubles after
//! each failed probe, up to [`MAX_COOLDOWN`]; once it has passed, one delivery is let through
//! as the probe, and its outcome closes the circuit or opens it again.
//!
//! The state is per worker process (not shared through the broker): each process finds out
//! for itself that an endpoint is down, after at most `breaker_failures` failures of its own.
//! This module owns the state machine and the `hopper_notify_circuit_open` gauge; the
//! channels decide what counts as a failure (5xx, timeouts, refused connections).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::CIRCUIT_OPEN;

/// The longest cool-down of an open circuit.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(3600);

/// The state of one endpoint.
#[derive(Debug, Default)]
struct Circuit {
    /// Consecutive failures while closed.
    failures: u32,
    /// Open until then (a probe may go after it).
    open_until: Option<Instant>,
    /// The cool-down of the current (or next) opening.
    cooldown: Duration,
    /// A probe is under way: other deliveries keep waiting.
    probing: bool,
}

/// Every endpoint's circuit, shared by all jobs of the process.
#[derive(Debug)]
pub struct Breakers {
    failures: u32,
    cooldown: Duration,
    circuits: Mutex<HashMap<String, Circuit>>,
}

impl Breakers {
    /// Circuits opening after `failures` consecutive failures, for `cooldown` at first.
    pub fn new(failures: u32, cooldown: Duration) -> Self {
        Self {
            failures: failures.max(1),
            cooldown: cooldown.max(Duration::from_millis(1)),
            circuits: Mutex::new(HashMap::new()),
        }
    }

    fn circuits(&self) -> std::sync::MutexGuard<'_, HashMap<String, Circuit>> {
        self.circuits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// May a delivery to `endpoint` go now? `Err(wait)` while its circuit is open (or another
    /// delivery is probing it): try again after `wait`. When the cool-down has passed, the
    /// caller's delivery is the probe and must be reported with [`Self::success`] or
    /// [`Self::failure`].
    pub fn admit(&self, endpoint: &str) -> Result<(), Duration> {
        let mut circuits = self.circuits();
        let Some(c) = circuits.get_mut(endpoint) else {
            return Ok(());
        };
        let Some(until) = c.open_until else {
            return Ok(());
        };
        let now = Instant::now();
        if c.probing {
            return Err(self.cooldown.min(Duration::from_secs(5)));
        }
        if now < until {
            return Err(until - now);
        }
        c.probing = true;
        Ok(())
    }

    /// `endpoint` answered: its circuit closes and its failures are forgotten.
    pub fn success(&self, endpoint: &str) {
        let was_open = self
            .circuits()
            .remove(endpoint)
            .is_some_and(|c| c.open_until.is_some());
        if was_open {
            tracing::info!(endpoint, "circuit closed: the probe succeeded");
            metrics::gauge!(CIRCUIT_OPEN, "endpoint" => endpoint.to_owned()).set(0.0);
        }
    }

    /// `endpoint` failed (5xx, timeout, unreachable). Opens its circuit after enough
    /// consecutive failures, or again (for twice as long) after a failed probe. Returns the
    /// cool-down when this failure opened the circuit.
    pub fn failure(&self, endpoint: &str) -> Option<Duration> {
        let mut circuits = self.circuits();
        let c = circuits.entry(endpoint.to_owned()).or_default();
        let opened = if c.open_until.is_some() {
            // A failed probe (or a delivery that was let through before the circuit opened).
            let cooldown = if c.probing {
                (c.cooldown * 2).min(MAX_COOLDOWN)
            } else {
                c.cooldown
            };
            c.cooldown = cooldown;
            c.probing = false;
            c.open_until = Some(Instant::now() + cooldown);
            Some(cooldown)
        } else {
            c.failures += 1;
            if c.failures >= self.failures {
                c.cooldown = self.cooldown;
                c.open_until = Some(Instant::now() + self.cooldown);
                Some(self.cooldown)
            } else {
                None
            }
        };
        if let Some(cooldown) = opened {
            tracing::warn!(
                endpoint,
                cooldown = %humantime::format_duration(cooldown),
                "circuit open: deliveries wait"
            );
            metrics::gauge!(CIRCUIT_OPEN, "endpoint" => endpoint.to_owned()).set(1.0);
        }
        opened
    }

    /// The endpoints whose circuit is open now, with the time left before their probe.
    pub fn open(&self) -> Vec<(String, Duration)> {
        let now = Instant::now();
        let mut open: Vec<_> = self
            .circuits()
            .iter()
            .filter_map(|(e, c)| {
                c.open_until
                    .map(|u| (e.clone(), u.saturating_duration_since(now)))
            })
            .collect();
        open.sort();
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_failures_probes_once_and_doubles() {
        let b = Breakers::new(3, Duration::from_millis(40));
        for _ in 0..2 {
            assert!(b.admit("e").is_ok());
            assert_eq!(b.failure("e"), None);
        }
        assert!(b.admit("e").is_ok());
        assert_eq!(b.failure("e"), Some(Duration::from_millis(40)));
        assert!(b.admit("e").is_err(), "open");
        assert!(b.admit("other").is_ok(), "per endpoint");
        std::thread::sleep(Duration::from_millis(50));
        assert!(b.admit("e").is_ok(), "the probe");
        assert!(b.admit("e").is_err(), "one probe at a time");
        assert_eq!(b.failure("e"), Some(Duration::from_millis(80)));
        assert_eq!(b.open().len(), 1);
        std::thread::sleep(Duration::from_millis(90));
        assert!(b.admit("e").is_ok(), "the second probe");
        b.success("e");
        assert!(b.admit("e").is_ok());
        assert!(b.open().is_empty());
        assert_eq!(b.failure("e"), None, "failures start over");
    }

    #[test]
    fn cooldown_stops_doubling_at_an_hour() {
        let b = Breakers::new(1, Duration::from_secs(2000));
        b.failure("e");
        {
            let mut c = b.circuits();
            let c = c.get_mut("e").expect("circuit");
            c.open_until = Some(Instant::now());
        }
        assert!(b.admit("e").is_ok());
        assert_eq!(b.failure("e"), Some(MAX_COOLDOWN));
    }
}
