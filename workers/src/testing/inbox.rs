//! Users' inboxes and Web Push subscriptions (`crate::broker::inbox`): appends idempotent by
//! id, reads per user or of everyone after a cursor, entries older than `keep` dropped, a
//! wait woken by an append, and subscriptions upserted by endpoint.
//!
//! Redis measures `keep` on its own clock, SQLite on the broker's: the case about `keep`
//! moves both (the manual clock, and a short real sleep), so it holds on either.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::ManualClock;
use crate::broker::inbox::compare_cursors;
use crate::broker::{Broker, NewInboxEntry, WebPush};
use crate::error::BrokerError;

const HOUR: Duration = Duration::from_secs(3600);

fn note(id: &str, user: &str) -> NewInboxEntry {
    NewInboxEntry {
        id: id.into(),
        user: user.into(),
        body: json!({ "title": format!("t-{id}"), "n": [1, 2.5, "x"] }),
    }
}

fn ids(entries: &[crate::broker::InboxEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.id.as_str()).collect()
}

/// A user reads only their own entries, in append order, after a cursor; the reader of
/// everyone reads all of them; appending an id again appends nothing and answers the first
/// cursor; a cursor the broker never issued and an empty user are refused, naming them.
pub async fn inbox_appends_once_per_id_and_reads_per_user(
    b: Arc<dyn Broker>,
    _clock: Arc<ManualClock>,
) {
    let first = b
        .inbox_append(&note("n1", "42"), HOUR)
        .await
        .expect("append");
    assert!(first.created);
    b.inbox_append(&note("n2", "43"), HOUR)
        .await
        .expect("append");
    b.inbox_append(&note("n3", "42"), HOUR)
        .await
        .expect("append");
    let again = b
        .inbox_append(&note("n1", "42"), HOUR)
        .await
        .expect("append");
    assert!(!again.created, "a kept id is not appended twice");
    assert_eq!(again.cursor, first.cursor, "the kept entry's cursor");

    let mine = b
        .inbox_read(Some("42"), None, 100, HOUR)
        .await
        .expect("read");
    assert_eq!(ids(&mine), ["n1", "n3"], "user 42 reads only theirs");
    assert_eq!(
        mine[0].body,
        note("n1", "42").body,
        "the body comes back as given"
    );
    assert_eq!(mine[0].user, "42");
    assert_eq!(mine[0].cursor, first.cursor);
    let all = b.inbox_read(None, None, 100, HOUR).await.expect("read all");
    assert_eq!(ids(&all), ["n1", "n2", "n3"]);
    for pair in all.windows(2) {
        assert_eq!(
            compare_cursors(&pair[1].cursor, &pair[0].cursor),
            Some(std::cmp::Ordering::Greater),
            "cursors order as appended: {pair:?}"
        );
    }
    assert_eq!(all[1].user, "43");
    let after = b
        .inbox_read(Some("42"), Some(&first.cursor), 100, HOUR)
        .await
        .expect("read after");
    assert_eq!(ids(&after), ["n3"]);
    let page = b
        .inbox_read(None, None, 1, HOUR)
        .await
        .expect("read a page");
    assert_eq!(ids(&page), ["n1"]);
    let next = b
        .inbox_read(None, Some(&page[0].cursor), 1, HOUR)
        .await
        .expect("next page");
    assert_eq!(ids(&next), ["n2"]);
    assert!(
        b.inbox_read(Some("44"), None, 100, HOUR)
            .await
            .expect("read")
            .is_empty()
    );
    // `0` is before every entry on every broker (a client starting from scratch may send it).
    let from_zero = b
        .inbox_read(None, Some("0"), 100, HOUR)
        .await
        .expect("read after 0");
    assert_eq!(ids(&from_zero), ["n1", "n2", "n3"]);

    for bad in ["nope", "", "12-x", "00", "+1"] {
        match b.inbox_read(Some("42"), Some(bad), 10, HOUR).await {
            Err(BrokerError::Invalid(f)) => assert_eq!(f.field, "since"),
            other => panic!("cursor {bad:?}: {other:?}"),
        }
    }
    match b.inbox_append(&note("n9", ""), HOUR).await {
        Err(BrokerError::Invalid(f)) => assert_eq!(f.field, "user"),
        other => panic!("empty user: {other:?}"),
    }
}

/// An append drops the entries older than its `keep`; a read skips those older than its own.
///
/// The short `keep` of the second append is long enough for the reads after it to come within
/// it however loaded the machine: Redis lets a user's entries go once `keep` has passed since
/// the user's last append, on its own clock.
pub async fn inbox_drops_entries_older_than_keep(b: Arc<dyn Broker>, clock: Arc<ManualClock>) {
    const SHORT: Duration = Duration::from_secs(2);
    b.inbox_append(&note("old", "42"), HOUR)
        .await
        .expect("append");
    b.inbox_append(&note("old-other", "43"), HOUR)
        .await
        .expect("append");
    clock.advance(3_000);
    tokio::time::sleep(SHORT + Duration::from_millis(50)).await;
    b.inbox_append(&note("new", "42"), SHORT)
        .await
        .expect("append");
    let mine = b
        .inbox_read(Some("42"), None, 100, HOUR)
        .await
        .expect("read");
    assert_eq!(ids(&mine), ["new"], "the old entry was dropped");
    let all = b.inbox_read(None, None, 100, HOUR).await.expect("read all");
    assert_eq!(ids(&all), ["new"], "every user's old entries were dropped");
    // Dropped, its id may be delivered again (a new entry).
    assert!(
        b.inbox_append(&note("old", "42"), HOUR)
            .await
            .expect("append")
            .created
    );

    clock.advance(2_000);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let short = b
        .inbox_read(Some("42"), None, 100, Duration::from_millis(20))
        .await
        .expect("read");
    assert!(
        short.is_empty(),
        "entries older than the read's keep: {short:?}"
    );
}

/// `inbox_end` is the newest cursor handed out: none before the first append, then the last
/// append's (an idempotent repeat moves nothing), and the next append's once `keep` dropped
/// every other entry of the log.
pub async fn inbox_end_is_the_newest_cursor_handed_out(
    b: Arc<dyn Broker>,
    clock: Arc<ManualClock>,
) {
    assert_eq!(b.inbox_end().await.expect("end"), None, "an empty log");
    b.inbox_append(&note("e1", "42"), HOUR)
        .await
        .expect("append");
    let second = b
        .inbox_append(&note("e2", "43"), HOUR)
        .await
        .expect("append");
    b.inbox_append(&note("e1", "42"), HOUR)
        .await
        .expect("append");
    assert_eq!(
        b.inbox_end().await.expect("end").as_deref(),
        Some(second.cursor.as_str())
    );
    // Every entry older than a short `keep` is dropped by the next append, which stays.
    clock.advance(3_000);
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    let third = b
        .inbox_append(&note("e3", "42"), Duration::from_secs(1))
        .await
        .expect("append");
    assert_eq!(
        b.inbox_end().await.expect("end").as_deref(),
        Some(third.cursor.as_str())
    );
    let kept = b.inbox_read(None, None, 100, HOUR).await.expect("read");
    assert_eq!(ids(&kept), ["e3"], "the older entries were dropped");
    assert_eq!(
        compare_cursors(&third.cursor, &second.cursor),
        Some(std::cmp::Ordering::Greater)
    );
}

/// A wait after the last cursor returns once an entry is appended, and the entry is there.
pub async fn inbox_wait_returns_on_an_append(b: Arc<dyn Broker>, _clock: Arc<ManualClock>) {
    let last = b
        .inbox_append(&note("a", "42"), HOUR)
        .await
        .expect("append");
    let waiter = {
        let b = b.clone();
        let after = last.cursor.clone();
        tokio::spawn(async move { b.inbox_wait(Some(&after), Duration::from_secs(60)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.inbox_append(&note("b", "43"), HOUR)
        .await
        .expect("append");
    tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the wait returns after the append")
        .expect("join")
        .expect("wait");
    let after = b
        .inbox_read(None, Some(&last.cursor), 10, HOUR)
        .await
        .expect("read");
    assert_eq!(ids(&after), ["b"]);
    match b.inbox_wait(Some("bogus"), Duration::from_millis(10)).await {
        Err(BrokerError::Invalid(f)) => assert_eq!(f.field, "since"),
        other => panic!("bogus cursor: {other:?}"),
    }
}

/// Subscriptions are per user and per endpoint: a second one with the same endpoint replaces
/// the keys, listing shows a user's own, and removing says whether there was one.
pub async fn push_subscriptions_upsert_list_and_remove(
    b: Arc<dyn Broker>,
    _clock: Arc<ManualClock>,
) {
    let sub = |endpoint: &str, auth: &str| {
        WebPush {
        endpoint: endpoint.into(),
        p256dh: "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM".into(),
        auth: auth.into(),
    }
    };
    assert!(
        b.push_subscribe("42", &sub("https://push.example/b", "k1"))
            .await
            .expect("add")
    );
    assert!(
        b.push_subscribe("42", &sub("https://push.example/a", "k2"))
            .await
            .expect("add")
    );
    assert!(
        b.push_subscribe("43", &sub("https://push.example/c", "k3"))
            .await
            .expect("add")
    );
    assert!(
        !b.push_subscribe("42", &sub("https://push.example/b", "k4"))
            .await
            .expect("upsert"),
        "the same endpoint again is not new"
    );
    let mine = b.push_subscriptions("42").await.expect("list");
    assert_eq!(
        mine,
        vec![
            sub("https://push.example/a", "k2"),
            sub("https://push.example/b", "k4")
        ],
        "a user's own, by endpoint, keys replaced"
    );
    assert!(
        b.push_unsubscribe("42", "https://push.example/b")
            .await
            .expect("remove")
    );
    assert!(
        !b.push_unsubscribe("42", "https://push.example/b")
            .await
            .expect("remove")
    );
    assert!(
        !b.push_unsubscribe("42", "https://push.example/c")
            .await
            .expect("not theirs")
    );
    assert_eq!(
        b.push_subscriptions("42").await.expect("list"),
        vec![sub("https://push.example/a", "k2")]
    );
    assert_eq!(b.push_subscriptions("43").await.expect("list").len(), 1);
    assert!(b.push_subscriptions("44").await.expect("list").is_empty());
}
