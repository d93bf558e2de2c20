//! The circuit breakers of `notify.send`'s endpoints as every broker shares them: saved,
//! replaced, listed by endpoint with the time left before their probe on the broker's clock,
//! forgotten once closed with no failures.

use std::sync::Arc;
use std::time::Duration;

use super::ManualClock;
use crate::broker::{Broker, Circuit};
use crate::error::BrokerError;

fn circuit(endpoint: &str, failures: u32, open_for: Option<u64>) -> Circuit {
    Circuit {
        endpoint: endpoint.into(),
        failures,
        open_for: open_for.map(Duration::from_millis),
        cooldown: Duration::from_secs(30),
        probing: false,
    }
}

/// Circuits are stored whole and replaced, listed by endpoint; the probe's time counts down
/// on the broker's clock and stops at zero; a closed circuit with no failures is forgotten; a
/// bad endpoint is refused naming `endpoint`.
pub async fn circuits_are_shared_count_down_and_close(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    assert!(
        b.circuits().await.expect("circuits").is_empty(),
        "none at first"
    );
    b.save_circuit(&circuit("https://b.example/hook", 2, None))
        .await
        .expect("save");
    b.save_circuit(&circuit("https://a.example/hook", 5, Some(30_000)))
        .await
        .expect("save");
    let all = b.circuits().await.expect("circuits");
    assert_eq!(
        all,
        vec![
            circuit("https://a.example/hook", 5, Some(30_000)),
            circuit("https://b.example/hook", 2, None),
        ],
        "stored whole, by endpoint"
    );
    assert_eq!(all[0].state(), "open");
    assert_eq!(
        b.circuit("https://b.example/hook").await.expect("circuit"),
        Some(circuit("https://b.example/hook", 2, None)),
        "one endpoint's read is its stored circuit"
    );
    assert_eq!(
        b.circuit("https://c.example/hook").await.expect("circuit"),
        None,
        "none kept for an endpoint never saved"
    );

    clock.advance(10_000);
    let all = b.circuits().await.expect("circuits");
    assert_eq!(
        all[0].open_for,
        Some(Duration::from_secs(20)),
        "counts down"
    );
    let one = b.circuit("https://a.example/hook").await.expect("circuit");
    assert_eq!(
        one.and_then(|c| c.open_for),
        Some(Duration::from_secs(20)),
        "one endpoint's read counts down on the broker's clock too"
    );
    clock.advance(25_000);
    let all = b.circuits().await.expect("circuits");
    assert_eq!(all[0].open_for, Some(Duration::ZERO), "stops at zero");
    assert_eq!(all[0].state(), "half_open");

    let mut probing = circuit("https://a.example/hook", 5, Some(60_000));
    probing.probing = true;
    probing.cooldown = Duration::from_secs(60);
    b.save_circuit(&probing).await.expect("replace");
    let all = b.circuits().await.expect("circuits");
    assert_eq!(all.len(), 2, "a save replaces");
    assert_eq!(all[0], probing);

    b.save_circuit(&circuit("https://a.example/hook", 0, None))
        .await
        .expect("close");
    let all = b.circuits().await.expect("circuits");
    let endpoints: Vec<&str> = all.iter().map(|c| c.endpoint.as_str()).collect();
    assert_eq!(endpoints, ["https://b.example/hook"], "closed is forgotten");
    assert_eq!(
        b.circuit("https://a.example/hook").await.expect("circuit"),
        None,
        "closed is forgotten by one endpoint's read too"
    );

    let err = b
        .save_circuit(&circuit("", 1, None))
        .await
        .expect_err("empty endpoint");
    assert!(
        matches!(&err, BrokerError::Invalid(f) if f.field == "endpoint"),
        "{err:?}"
    );
}
