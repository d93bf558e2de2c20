//! The `Circuits` port over the broker: the circuit breakers of `notify.send`'s endpoints,
//! kept in the broker ([`Broker::circuit`] read before a delivery, [`Broker::save_circuit`]
//! after it, [`Broker::circuits`] for the operators' views) so that every worker
//! node agrees on which endpoints are down, and operators see them (`GET /v1/circuits`,
//! `hopper queues`, the dashboard).

use std::sync::Arc;

use async_trait::async_trait;
use hopper_jobs::notify::circuits::{CircuitState, Circuits};
use hopper_workers::Broker;
use hopper_workers::broker::Circuit;

/// [`Circuits`] over a broker. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BrokerCircuits {
    broker: Arc<dyn Broker>,
}

impl BrokerCircuits {
    /// The circuits kept in `broker`.
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        Self { broker }
    }
}

#[async_trait]
impl Circuits for BrokerCircuits {
    async fn load(&self, endpoint: &str) -> Result<Option<CircuitState>, String> {
        let found = self
            .broker
            .circuit(endpoint)
            .await
            .map_err(|e| format!("reading the circuit: {e}"))?;
        Ok(found.map(|c| CircuitState {
            failures: c.failures,
            open_for: c.open_for,
            cooldown: c.cooldown,
            probing: c.probing,
        }))
    }

    async fn save(&self, endpoint: &str, state: &CircuitState) -> Result<(), String> {
        let circuit = Circuit {
            endpoint: endpoint.to_owned(),
            failures: state.failures,
            open_for: state.open_for,
            cooldown: state.cooldown,
            probing: state.probing,
        };
        self.broker
            .save_circuit(&circuit)
            .await
            .map_err(|e| format!("saving the circuit: {e}"))
    }
}

/// An open or half-open circuit as operators see it (`GET /v1/circuits`, `hopper queues`,
/// the dashboard).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CircuitView {
    /// The endpoint, without credentials, query or fragment ([`shown_endpoint`]).
    pub endpoint: String,
    /// `open` (deliveries wait for the cool-down) or `half_open` (a probe may go or is under
    /// way).
    pub state: &'static str,
    /// Consecutive failures that opened it.
    pub failures: u32,
    /// Milliseconds until its probe may go (0 when half-open).
    pub probe_in_ms: u64,
    /// The current cool-down, in milliseconds.
    pub cooldown_ms: u64,
    /// A probe is under way on some node.
    pub probing: bool,
}

/// The open and half-open circuits of `broker`, by endpoint (closed ones counting failures
/// are left out).
pub async fn open_circuits(broker: &dyn Broker) -> hopper_workers::BrokerResult<Vec<CircuitView>> {
    Ok(broker.circuits().await?.iter().filter_map(view).collect())
}

/// `c` as operators see it; `None` while it is closed.
pub fn view(c: &Circuit) -> Option<CircuitView> {
    let left = c.open_for?;
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Some(CircuitView {
        endpoint: shown_endpoint(&c.endpoint),
        state: c.state(),
        failures: c.failures,
        probe_in_ms: if c.state() == "half_open" {
            0
        } else {
            ms(left)
        },
        cooldown_ms: ms(c.cooldown),
        probing: c.probing,
    })
}

/// `endpoint` as every record of it names it (a job's checkpoint and errors, the metric's
/// label): its origin, and for a path or query a short hash in their place
/// (`https://hooks.example/…#1a2b3c4d`), as `hopper_jobs::notify::breaker::label` writes it.
/// A webhook's path is often its secret (`/services/T000/B000/XXXX`): showing the path whole,
/// as this did, gave it to every token holder, and named the circuit otherwise than the job
/// that tripped it.
pub fn shown_endpoint(endpoint: &str) -> String {
    hopper_jobs::notify::breaker::label(endpoint)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn shown_endpoints_drop_credentials_and_queries() {
        let shown =
            shown_endpoint("https://user:pw@hooks.example/services/T0/B0/S3CRET?token=s3cret");
        assert!(shown.starts_with("https://hooks.example/…#"), "{shown}");
        assert!(!shown.contains("S3CRET") && !shown.contains("s3cret") && !shown.contains("pw"));
        assert_eq!(
            shown,
            hopper_jobs::notify::breaker::label(
                "https://user:pw@hooks.example/services/T0/B0/S3CRET?token=s3cret"
            ),
            "named as the job's record names it"
        );
        assert!(!shown_endpoint("not a url").contains("not a url"));
        let mut c = Circuit {
            endpoint: "https://push.example".into(),
            failures: 5,
            open_for: None,
            cooldown: Duration::from_secs(30),
            probing: false,
        };
        assert_eq!(view(&c), None, "closed is not shown");
        c.open_for = Some(Duration::from_secs(12));
        let v = view(&c).expect("open");
        assert_eq!((v.state, v.probe_in_ms), ("open", 12_000));
        assert_eq!(v.endpoint, "https://push.example");
    }
}
