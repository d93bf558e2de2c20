//! Where a client's `since` cursor is, against the broker's event log and the hub's position:
//! what the client already has, and whether it missed events the log no longer holds (a
//! gap).
//!
//! Ids are opaque and broker-specific (a row id on SQLite, `<stream id>@<queue>` on Redis), so
//! nothing here orders them: it asks the broker for the events after an id
//! (`Broker::events`) and compares ids for equality only. A cursor is one of:
//!
//! - **Behind** the hub's position (or at it): the feed replays the events after it from the
//!   broker, up to the position. A gap when retention trimmed an event after the cursor: as
//!   the broker tells it (`Broker::trimmed_after`: SQLite exactly, by its consecutive ids;
//!   Redis trims each queue's stream apart), or else when the first event after it is the
//!   oldest the log still holds, and it is not the cursor itself. A cursor before the first
//!   event ever (SQLite's `0`, Redis' `0-0@QUEUE`, which the brokers never issue) missed
//!   nothing until the log is trimmed.
//! - **Ahead** of the hub's position, in the log: a cursor another node or process issued a
//!   moment ago, before this process's hub read its event (the hub reads the log in a loop;
//!   on SQLite it sees another process's writes only within a poll). Found by reading the log
//!   from the hub's position on, normally nothing or a few events. No gap: the events from the
//!   position up to the cursor, which the hub is about to broadcast, are the ones the client
//!   already has, and the feed passes over them. No wait for the hub is needed, and no timing
//!   decides it: the log answers.
//! - **Past the end** of the log: no event follows the cursor, and it is neither the hub's
//!   position nor any event after it, nor the log's newest event (which a hub that read on
//!   into events a queue's drop removed is past), while the log holds events. A cursor kept from before
//!   the broker's data was wiped or replaced (on SQLite, ids start again at 1), or from
//!   another broker or a wrong clock. Taken like a cursor older than retention: a gap, then
//!   the log from its oldest event. Against an empty log a cursor is no gap: nothing was
//!   missed, and what comes next comes live (a JSON page's `next` stays the cursor, which is a
//!   gap once the log holds events).
//!
//! Not here: refusing a cursor not of the broker's form (`super`, before the stream), the
//! seam between replay and live (`super::feed`).

use hopper_workers::{Broker, BrokerError};

/// Events read per round-trip while looking for the cursor after the hub's position.
const PAGE: usize = 1000;

/// Where a cursor is (see the module docs).
#[derive(Debug, PartialEq, Eq)]
pub enum Cursor {
    /// At or behind the hub's position, or anywhere in an empty log; `gap` when its event was
    /// trimmed.
    Behind { gap: bool },
    /// Ahead of the hub's position: the ids after the position up to and including the
    /// cursor, in the log's order. The hub has yet to broadcast them; the client has them.
    Ahead { skip: Vec<String> },
    /// Past the end of a log that holds events: a gap, and the log from its start follows.
    PastEnd,
}

impl Cursor {
    /// Whether the client missed events the log no longer holds.
    pub fn gap(&self) -> bool {
        match self {
            Cursor::Behind { gap } => *gap,
            Cursor::Ahead { .. } => false,
            Cursor::PastEnd => true,
        }
    }
}

/// Where `since` is, given `hub_at`, the last event the hub read (`None` before it read any,
/// or when the log was empty): the log is read from there to its end.
pub async fn locate(
    broker: &dyn Broker,
    since: &str,
    hub_at: Option<&str>,
) -> Result<Cursor, BrokerError> {
    let at_hub = hub_at == Some(since);
    if !at_hub {
        let mut skip = Vec::new();
        let mut after = hub_at.map(str::to_owned);
        loop {
            let page = broker.events(after.as_deref(), PAGE).await?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.id.clone());
            for e in page {
                let found = e.id == since;
                skip.push(e.id);
                if found {
                    return Ok(Cursor::Ahead { skip });
                }
            }
        }
    }
    let next = broker.events(Some(since), 1).await?;
    let oldest = broker.events(None, 1).await?;
    Ok(match (next.first(), oldest.first()) {
        // The broker's own account of its trimming when it keeps one (Redis trims each
        // queue's stream apart: another queue's older events hid a trimmed cursor), else
        // one log trimmed from its start.
        (Some(next), Some(oldest)) => Cursor::Behind {
            gap: match broker.trimmed_after(since).await? {
                Some(trimmed) => trimmed,
                None => oldest.id == next.id && oldest.id != since,
            },
        },
        // Nothing after the cursor, which is not the hub's position: past the end, unless
        // it is the log's newest event (the hub read on past it into events since removed:
        // a queue dropped, `hopper bench`'s own when it ends). Those were a drop's, not
        // retention's, and are not a gap here, as a drop is none elsewhere on Redis.
        (None, Some(_)) if !at_hub && broker.events_end().await?.as_deref() != Some(since) => {
            Cursor::PastEnd
        }
        _ => Cursor::Behind { gap: false },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use hopper_workers::NewJob;
    use hopper_workers::time::Timestamp;

    use super::*;

    async fn broker(dir: &tempfile::TempDir) -> Arc<dyn Broker> {
        let path = dir.path().join("hopper.db");
        hopper_workers::broker::sqlite::open(
            path.to_str().unwrap(),
            hopper_workers::clock::system(),
        )
        .await
        .unwrap()
    }

    /// Appends `n` events (one `job.enqueued` each); answers the log's ids.
    async fn append(b: &dyn Broker, n: usize) -> Vec<String> {
        let jobs = (0..n)
            .map(|_| NewJob::new("sys.noop", serde_json::json!({})))
            .collect();
        b.enqueue(jobs).await.unwrap();
        b.events(None, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect()
    }

    #[tokio::test]
    async fn a_cursor_is_behind_ahead_of_the_hub_or_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let b = broker(&dir).await;
        // An empty log: nothing was missed, whatever the cursor.
        assert_eq!(
            locate(&*b, "50000", None).await.unwrap(),
            Cursor::Behind { gap: false }
        );
        let ids = append(&*b, 5).await;
        let hub = Some(ids[1].as_str());
        assert_eq!(
            locate(&*b, &ids[1], hub).await.unwrap(),
            Cursor::Behind { gap: false }
        );
        assert_eq!(
            locate(&*b, &ids[0], hub).await.unwrap(),
            Cursor::Behind { gap: false }
        );
        // Issued after what the hub read: the events up to it are the client's already.
        assert_eq!(
            locate(&*b, &ids[3], hub).await.unwrap(),
            Cursor::Ahead {
                skip: ids[2..4].to_vec()
            }
        );
        assert_eq!(
            locate(&*b, &ids[4], None).await.unwrap(),
            Cursor::Ahead { skip: ids.clone() }
        );
        // Past the end, whether or not the hub read the whole log.
        for hub in [hub, Some(ids[4].as_str()), None] {
            assert_eq!(
                locate(&*b, "50000", hub).await.unwrap(),
                Cursor::PastEnd,
                "{hub:?}"
            );
        }
        // Older than retention.
        b.purge(&[], Timestamp::EPOCH, 2).await.unwrap();
        let hub = Some(ids[4].as_str());
        assert_eq!(
            locate(&*b, &ids[0], hub).await.unwrap(),
            Cursor::Behind { gap: true }
        );
        assert_eq!(
            locate(&*b, &ids[3], hub).await.unwrap(),
            Cursor::Behind { gap: false }
        );
        // The hub read on past the log's newest event into events since removed (a queue
        // dropped): the newest is at the end, not past it.
        let dropped = b
            .enqueue(vec![
                NewJob::new("sys.noop", serde_json::json!({})).queue("gone"),
            ])
            .await
            .unwrap();
        let gone = b.events(Some(&ids[4]), 10).await.unwrap();
        assert_eq!(gone.len(), dropped.len());
        b.drop_queue("gone").await.unwrap();
        assert_eq!(
            locate(&*b, &ids[4], Some(gone[0].id.as_str()))
                .await
                .unwrap(),
            Cursor::Behind { gap: false }
        );
        // The hub's own position may be trimmed before the hub reads on.
        let hub = Some(ids[0].as_str());
        assert_eq!(
            locate(&*b, &ids[0], hub).await.unwrap(),
            Cursor::Behind { gap: true }
        );
    }
}
