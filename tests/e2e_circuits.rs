//! The circuit breakers of `notify.send`'s endpoints shared through the broker (Hopper issue
//! 12, item 3): two breakers (two worker nodes) on the daemon's SQLite file, each with its
//! own `hopper::notify::BrokerCircuits`, agree on an endpoint that one of them saw failing;
//! operators see it in `GET /v1/circuits`, `hopper queues` (table and `--json`) and
//! `/metrics` of the real binary, without the webhook's query string; a probe's success on
//! either node closes it for all.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use hopper::notify::BrokerCircuits;
use hopper_jobs::notify::breaker::Breakers;
use hopper_workers::broker::OpenOptions;
use serde_json::Value;

use crate::util::Scratch;

const HOOK: &str = "https://hooks.example/in?token=s3cret";
/// How the circuit is named everywhere: the origin and a hash for its path and query (the
/// path may be the secret).
const SHOWN: &str = "https://hooks.example/…#";

/// A node's breakers (2 failures open a circuit for an hour) over the broker at `url`.
async fn node(url: &str) -> Breakers {
    let broker = hopper_workers::broker::open_with(
        url,
        &OpenOptions::new("hopper"),
        hopper_workers::clock::system(),
    )
    .await
    .unwrap();
    Breakers::new(2, Duration::from_secs(3600)).shared(Arc::new(BrokerCircuits::new(broker)))
}

#[tokio::test]
async fn a_circuit_opened_on_one_node_holds_back_the_others_and_shows_to_operators() {
    let s = Scratch::with_config("");
    let (_d, api) = s.serve(&[]);
    let (a, b) = (node(&s.broker_url()).await, node(&s.broker_url()).await);

    // One failure on each node: two consecutive failures of the endpoint, counted together.
    a.admit(HOOK).await.unwrap();
    assert_eq!(a.failure(HOOK).await, None);
    b.admit(HOOK).await.unwrap();
    assert_eq!(
        b.failure(HOOK).await,
        Some(Duration::from_secs(3600)),
        "the second failure, on another node, opens it"
    );
    assert!(a.admit(HOOK).await.is_err(), "the other node waits too");
    assert!(
        a.admit("https://other.example/").await.is_ok(),
        "per endpoint"
    );

    let listed = api.get_json("/v1/circuits", &[]).await;
    let circuits = listed["circuits"].as_array().unwrap();
    assert_eq!(circuits.len(), 1, "{listed}");
    let shown = circuits[0]["endpoint"].as_str().unwrap();
    assert!(shown.starts_with(SHOWN), "{listed}");
    assert!(
        !shown.contains("/in") && !shown.contains("s3cret"),
        "{listed}"
    );
    assert_eq!(circuits[0]["state"], "open");
    assert_eq!(circuits[0]["failures"], 2);
    assert!(
        circuits[0]["probe_in_ms"].as_u64().unwrap() > 3_000_000,
        "{listed}"
    );

    let json = s.cli_json(&["queues"]);
    assert!(json["queues"].is_array(), "{json}");
    assert_eq!(
        without_probe_time(&json["circuits"]),
        without_probe_time(&listed["circuits"]),
        "{json}"
    );
    let table = s.cli_ok(&["queues"]);
    let line = table
        .lines()
        .find(|l| l.starts_with(SHOWN))
        .unwrap_or_else(|| panic!("no circuit line in:\n{table}"));
    assert!(line.contains("open"), "{line}");
    assert!(!table.contains("s3cret"), "{table}");

    let metrics = api_metrics(&api.base).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("hopper_notify_circuit_open{") && l.ends_with(" 1")),
        "{metrics}"
    );

    // A success (a probe's) closes it everywhere; nothing is listed any more.
    b.success(HOOK).await;
    assert!(a.admit(HOOK).await.is_ok(), "closed for the other node too");
    let listed = api.get_json("/v1/circuits", &[]).await;
    assert_eq!(listed["circuits"], Value::Array(vec![]), "{listed}");
    assert!(!s.cli_ok(&["queues"]).contains(SHOWN));
}

/// `GET /metrics` of the daemon at `base`.
async fn api_metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `circuits` without `probe_in_ms`, which counts down between two reads.
fn without_probe_time(circuits: &Value) -> Value {
    let mut c = circuits.clone();
    for one in c.as_array_mut().unwrap() {
        one.as_object_mut().unwrap().remove("probe_in_ms");
    }
    c
}
