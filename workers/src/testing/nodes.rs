//! The registry of worker nodes (`crate::nodes`) as every broker keeps it: entries registered,
//! refreshed, listed in order, expired after [`NODE_TTL`] of silence and deregistered; and the
//! count of ready jobs ahead of a priority. The pool's side (that a running pool registers
//! itself) is tested through the binary, in the shell's tests.

use std::sync::Arc;

use super::{ManualClock, enqueue, job};
use crate::broker::Broker;
use crate::clock::Clock;
use crate::error::BrokerError;
use crate::nodes::{NODE_TTL, QueueLoad, WorkerNode};
use crate::time::Timestamp;

fn node(id: &str, host: &str, pid: u32, busy: u64) -> WorkerNode {
    WorkerNode {
        id: id.into(),
        host: host.into(),
        pid,
        started_at: Timestamp::from_millis(1),
        last_seen: Timestamp::EPOCH,
        queues: vec![QueueLoad {
            queue: "default".into(),
            busy,
            limit: Some(4),
            paused: false,
        }],
        kinds: vec!["sys.noop".into()],
        slots_total: 8,
        slots_busy: busy,
    }
}

/// Registered nodes are listed sorted by host and pid, stamped `last_seen` by the broker's
/// clock; a refresh replaces the entry; a node silent for longer than `NODE_TTL` is gone; a
/// deregistered one at once; a bad id is refused naming `id`.
pub async fn nodes_register_refresh_expire_and_deregister(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    assert!(b.nodes().await.expect("nodes").is_empty(), "none at first");
    let start = clock.now();
    b.register_node(&node("z:2:b", "zeta", 2, 0))
        .await
        .expect("register");
    b.register_node(&node("a:9:a", "alpha", 9, 1))
        .await
        .expect("register");
    let listed = b.nodes().await.expect("nodes");
    let hosts: Vec<&str> = listed.iter().map(|n| n.host.as_str()).collect();
    assert_eq!(hosts, ["alpha", "zeta"], "sorted by host");
    let mut expected = node("a:9:a", "alpha", 9, 1);
    expected.last_seen = start;
    assert_eq!(listed[0], expected, "stored whole, last_seen by the broker");

    clock.advance(40_000);
    b.register_node(&node("a:9:a", "alpha", 9, 3))
        .await
        .expect("refresh");
    let listed = b.nodes().await.expect("nodes");
    assert_eq!(listed.len(), 2, "a refresh adds no entry");
    assert_eq!(listed[0].slots_busy, 3, "a refresh replaces the entry");
    assert_eq!(listed[0].last_seen, clock.now());

    // zeta was last heard from 61 s ago: gone; alpha 21 s ago.
    clock.advance(i64::try_from(NODE_TTL.as_millis()).unwrap_or(60_000) - 39_000);
    let listed = b.nodes().await.expect("nodes");
    let ids: Vec<&str> = listed.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["a:9:a"], "a silent node expires");
    b.register_node(&node("z:3:c", "zeta", 3, 0))
        .await
        .expect("register");
    assert_eq!(b.nodes().await.expect("nodes").len(), 2);

    b.deregister_node("a:9:a").await.expect("deregister");
    b.deregister_node("never-registered")
        .await
        .expect("an unknown id is ignored");
    let ids: Vec<String> = b
        .nodes()
        .await
        .expect("nodes")
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ids, ["z:3:c"]);

    for bad in ["", "with space"] {
        match b.register_node(&node(bad, "h", 1, 0)).await {
            Err(BrokerError::Invalid(e)) => assert_eq!(e.field, "id", "{e}"),
            other => panic!("expected Invalid naming id, got {other:?}"),
        }
    }
}

/// `ready_ahead` counts the queue's queued jobs at the priority or a more urgent one: not
/// those of other queues, not scheduled ones, not running ones.
pub async fn ready_ahead_counts_queued_jobs_at_or_above_a_priority(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    for p in [0, 5, 5, 9] {
        enqueue(&b, job("test.ahead").queue("ahead").priority(p)).await;
    }
    enqueue(&b, job("test.ahead").queue("elsewhere").priority(0)).await;
    enqueue(
        &b,
        job("test.ahead")
            .queue("ahead")
            .priority(0)
            .run_at(clock.now() + super::ms(60_000)),
    )
    .await;
    let ahead = |p| {
        let b = b.clone();
        async move { b.ready_ahead("ahead", p).await.expect("ready_ahead") }
    };
    assert_eq!(ahead(0).await, 1);
    assert_eq!(ahead(5).await, 3);
    assert_eq!(ahead(9).await, 4);
    let fetched = b.fetch("ahead", 1, super::LEASE).await.expect("fetch");
    assert_eq!(fetched.len(), 1);
    assert_eq!(ahead(5).await, 2, "a running job is not ahead");
    assert_eq!(b.ready_ahead("nothing-here", 9).await.expect("empty"), 0);
    match b.ready_ahead("bad name", 0).await {
        Err(BrokerError::Invalid(e)) => assert_eq!(e.field, "queue", "{e}"),
        other => panic!("expected Invalid naming queue, got {other:?}"),
    }
}
