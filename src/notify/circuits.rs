//! The `Circuits` port over the broker: the circuit breakers of `notify.send`'s endpoints,
//! kept in the broker ([`Broker::circuits`], [`Broker::save_circuit`]) so that every worker
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
        let all = self
            .broker
            .circuits()
            .await
            .map_err(|e| format!("reading circuits: {e}"))?;
        Ok(all
            .into_iter()
            .find(|c| c.endpoint == endpoint)
            .map(|c| CircuitState {
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
