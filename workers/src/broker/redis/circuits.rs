//! The circuit breakers of `notify.send`'s endpoints: one hash, `{<prefix>}:circuits`,
//! endpoint -> its circuit as JSON (probe time in ms on Redis' clock), in the tag
//! `{<prefix>}` beside the registry of nodes so that it lives in one Cluster slot.

use std::collections::HashMap;

use super::RedisBroker;
use super::decode::corrupt;
use crate::broker::circuits::{Circuit, Stored};
use crate::error::{BrokerError, BrokerResult};

impl RedisBroker {
    fn circuits_key(&self) -> String {
        format!("{{{}}}:circuits", self.prefix)
    }
}

pub(super) async fn circuits(broker: &RedisBroker) -> BrokerResult<Vec<Circuit>> {
    let now = broker.now().await?.as_millis();
    let all: HashMap<String, String> = broker
        .query(redis::cmd("HGETALL").arg(broker.circuits_key()))
        .await?;
    all.into_iter()
        .map(|(endpoint, json)| {
            let stored: Stored = serde_json::from_str(&json)
                .map_err(|e| corrupt(format!("circuit of {endpoint}: {e}")))?;
            Ok(stored.into_circuit(endpoint, now))
        })
        .collect()
}

pub(super) async fn circuit(broker: &RedisBroker, endpoint: &str) -> BrokerResult<Option<Circuit>> {
    let now = broker.now().await?.as_millis();
    let json: Option<String> = broker
        .query(redis::cmd("HGET").arg(broker.circuits_key()).arg(endpoint))
        .await?;
    json.map(|json| {
        let stored: Stored = serde_json::from_str(&json)
            .map_err(|e| corrupt(format!("circuit of {endpoint}: {e}")))?;
        Ok(stored.into_circuit(endpoint.to_owned(), now))
    })
    .transpose()
}

pub(super) async fn save_circuit(broker: &RedisBroker, circuit: &Circuit) -> BrokerResult<()> {
    if !circuit.is_kept() {
        return broker
            .query::<()>(
                redis::cmd("HDEL")
                    .arg(broker.circuits_key())
                    .arg(&circuit.endpoint),
            )
            .await;
    }
    let now = broker.now().await?.as_millis();
    let json =
        serde_json::to_string(&Stored::from_circuit(circuit, now)).map_err(BrokerError::backend)?;
    broker
        .query::<()>(
            redis::cmd("HSET")
                .arg(broker.circuits_key())
                .arg(&circuit.endpoint)
                .arg(json),
        )
        .await
}
