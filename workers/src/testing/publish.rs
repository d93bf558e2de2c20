//! What the event bus (`POST /v1/publish`, the shell's) needs of a broker: a fan-out of one
//! publish is one batch across queues whose unique keys make its replay create nothing (the
//! publish key's record *is* those keys, stored in the same atomic step as the jobs), and
//! a named cursor in the event log survives and is shared, for the relay of job events.

use std::sync::Arc;

use super::{ManualClock, job};
use crate::broker::Broker;
use crate::error::BrokerError;

/// A publish's jobs, one per subscription, on two queues, each with the key
/// `publish:<key>:<subscription>`: stored together; replayed, every job answers as the one
/// stored first and nothing new exists; a new key is new jobs.
pub async fn publish_fan_out_is_replayed_by_its_keys(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let fan_out = |key: &str| {
        vec![
            job("test.welcome")
                .queue("mail")
                .unique_key(format!("publish:{key}:0")),
            job("test.crm")
                .queue("sync")
                .unique_key(format!("publish:{key}:1")),
            job("test.push")
                .queue("mail")
                .unique_key(format!("publish:{key}:2")),
        ]
    };
    let first = b.enqueue(fan_out("k1")).await.expect("publish");
    assert!(first.iter().all(|e| e.created), "every job is new");
    let replay = b.enqueue(fan_out("k1")).await.expect("replay");
    assert!(
        replay.iter().all(|e| !e.created),
        "a replay creates nothing"
    );
    let ids =
        |v: &[crate::broker::Enqueued]| v.iter().map(|e| e.job.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&replay), ids(&first), "a replay answers the first jobs");
    let other = b.enqueue(fan_out("k2")).await.expect("another key");
    assert!(other.iter().all(|e| e.created), "another key is new jobs");
    let stats = b.queues().await.expect("queues");
    let queued = |q: &str| {
        stats
            .iter()
            .find(|s| s.queue == q)
            .map_or(0, |s| s.counts.queued)
    };
    assert_eq!((queued("mail"), queued("sync")), (4, 2));
}

/// A cursor is absent until saved, then read back as saved, replaced by the next save, kept
/// per name, and a name no broker stores is refused naming `cursor`.
pub async fn cursors_are_saved_and_replaced(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    assert_eq!(b.cursor("relay").await.expect("cursor"), None);
    let id = b
        .enqueue(vec![job("test.cursor")])
        .await
        .expect("enqueue")
        .remove(0)
        .job
        .id;
    let events = b.events(None, 10).await.expect("events");
    let last = events.last().expect("an event").id.clone();
    assert!(events.iter().any(|e| e.job_id == id));
    b.save_cursor("relay", &last).await.expect("save");
    assert_eq!(b.cursor("relay").await.expect("cursor"), Some(last.clone()));
    assert!(
        b.events(Some(&last), 10).await.expect("resume").is_empty(),
        "a saved cursor is an id the log resumes after"
    );
    b.save_cursor("relay", "later").await.expect("replace");
    assert_eq!(
        b.cursor("relay").await.expect("cursor").as_deref(),
        Some("later")
    );
    assert_eq!(b.cursor("other").await.expect("cursor"), None, "per name");
    for bad in [String::new(), "x".repeat(129)] {
        match b.save_cursor(&bad, "1").await {
            Err(BrokerError::Invalid(f)) => assert_eq!(f.field, "cursor"),
            other => panic!("a bad cursor name is refused, got {other:?}"),
        }
    }
}

/// A cursor advanced only goes forward: stored when absent, when larger, and over a value
/// that is not an integer; a smaller or equal one leaves it. `save_cursor` still replaces.
pub async fn cursors_advanced_only_go_forward(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let name = "schedule:nightly";
    b.advance_cursor(name, 1_000).await.expect("first");
    assert_eq!(
        b.cursor(name).await.expect("cursor").as_deref(),
        Some("1000")
    );
    b.advance_cursor(name, 2_000).await.expect("forward");
    assert_eq!(
        b.cursor(name).await.expect("cursor").as_deref(),
        Some("2000")
    );
    for older in [1_999, 2_000, -5] {
        b.advance_cursor(name, older).await.expect("not back");
        assert_eq!(
            b.cursor(name).await.expect("cursor").as_deref(),
            Some("2000"),
            "{older} does not move it back"
        );
    }
    for junk in ["", "later", "+3000", " 3000", "99999999999999999999"] {
        b.save_cursor(name, junk).await.expect("save");
        b.advance_cursor(name, 5).await.expect("over a non-integer");
        assert_eq!(
            b.cursor(name).await.expect("cursor").as_deref(),
            Some("5"),
            "{junk:?} is no integer: replaced"
        );
    }
    b.save_cursor(name, "-10").await.expect("save");
    b.advance_cursor(name, -20).await.expect("negative");
    assert_eq!(
        b.cursor(name).await.expect("cursor").as_deref(),
        Some("-10")
    );
    match b.advance_cursor(&"x".repeat(129), 1).await {
        Err(BrokerError::Invalid(f)) => assert_eq!(f.field, "cursor"),
        other => panic!("a bad cursor name is refused, got {other:?}"),
    }
}
