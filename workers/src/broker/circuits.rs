//! The circuit breakers of `notify.send`'s endpoints, as the broker shares them between
//! nodes: one [`Circuit`] per endpoint (a webhook URL, a push service origin), so every node
//! agrees on which endpoints are down and operators can see them (`GET /v1/circuits`,
//! `hopper queues`).
//!
//! The broker only stores what it is told: the state machine is the breaker's
//! (`hopper_jobs::notify::breaker`). Times cross the seam as delays, stamped on the broker's
//! clock ("one clock per store"): a saved `open_for` is counted from the broker's now, and a
//! read one is what is left of it (zero once it has passed). A circuit saved closed with no
//! failures is forgotten. Two nodes saving the same endpoint at once: the last writer wins
//! (a lost failure count delays an opening by one failure, which a breaker tolerates).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::field::FieldError;

/// The longest endpoint a broker stores, in bytes.
pub const MAX_ENDPOINT: usize = 2048;

/// One endpoint's circuit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Circuit {
    /// The endpoint: a webhook URL or a push service's `scheme://host[:port]`.
    pub endpoint: String,
    /// Consecutive failures while closed.
    pub failures: u32,
    /// `Some` while open: how long until its probe may go (zero: it may go now).
    pub open_for: Option<Duration>,
    /// The cool-down of the current (or next) opening.
    pub cooldown: Duration,
    /// A probe is under way (on some node): other deliveries keep waiting.
    pub probing: bool,
}

impl Circuit {
    /// Whether the broker keeps it: open, or counting failures.
    pub fn is_kept(&self) -> bool {
        self.failures > 0 || self.open_for.is_some()
    }

    /// `closed`, `open` (waiting for its cool-down) or `half_open` (its probe may go or is
    /// under way).
    pub fn state(&self) -> &'static str {
        match self.open_for {
            None => "closed",
            Some(left) if left.is_zero() || self.probing => "half_open",
            Some(_) => "open",
        }
    }

    /// Refuses an endpoint no broker stores: empty or over [`MAX_ENDPOINT`] bytes.
    pub fn check(&self) -> Result<(), FieldError> {
        if self.endpoint.is_empty() || self.endpoint.len() > MAX_ENDPOINT {
            return Err(FieldError::new(
                "endpoint",
                format!("must be 1 to {MAX_ENDPOINT} bytes"),
            ));
        }
        Ok(())
    }
}

/// How a broker stores a circuit: its probe time absolute, on the broker's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) failures: u32,
    /// ms since the epoch on the broker's clock.
    pub(crate) open_until: Option<i64>,
    pub(crate) cooldown_ms: u64,
    pub(crate) probing: bool,
}

impl Stored {
    /// `c` as stored at `now_ms`.
    pub(crate) fn from_circuit(c: &Circuit, now_ms: i64) -> Self {
        Self {
            failures: c.failures,
            open_until: c
                .open_for
                .map(|d| now_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))),
            cooldown_ms: u64::try_from(c.cooldown.as_millis()).unwrap_or(u64::MAX),
            probing: c.probing,
        }
    }

    /// The circuit of `endpoint` as read at `now_ms`.
    pub(crate) fn into_circuit(self, endpoint: String, now_ms: i64) -> Circuit {
        Circuit {
            endpoint,
            failures: self.failures,
            open_for: self
                .open_until
                .map(|u| Duration::from_millis(u64::try_from(u - now_ms).unwrap_or(0))),
            cooldown: Duration::from_millis(self.cooldown_ms),
            probing: self.probing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_the_round_trip_through_storage() {
        let mut c = Circuit {
            endpoint: "https://hooks.example/a".into(),
            failures: 5,
            open_for: Some(Duration::from_secs(30)),
            cooldown: Duration::from_secs(30),
            probing: false,
        };
        assert_eq!(c.state(), "open");
        let stored = Stored::from_circuit(&c, 1_000);
        assert_eq!(stored.open_until, Some(31_000));
        let back = stored.clone().into_circuit(c.endpoint.clone(), 21_000);
        assert_eq!(back.open_for, Some(Duration::from_secs(10)));
        let late = stored.into_circuit(c.endpoint.clone(), 40_000);
        assert_eq!(late.open_for, Some(Duration::ZERO));
        assert_eq!(late.state(), "half_open");
        c.open_for = None;
        c.failures = 0;
        assert!(!c.is_kept());
        assert_eq!(c.state(), "closed");
        c.endpoint = String::new();
        assert_eq!(
            c.check().map_err(|e| e.field).err().as_deref(),
            Some("endpoint")
        );
    }
}
