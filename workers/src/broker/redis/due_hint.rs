//! What each queue's last fetch learned about its earliest scheduled job, so that the idle
//! wait that follows it (`lifecycle::wait_for_work`) can block on the signal list at once.
//!
//! Without it, every idle wait began with two round trips of its own (`TIME`, then a `ZRANGE`
//! of each queue's due set) before its `BLPOP`: a job enqueued meanwhile waited for both
//! before its fetch, which was most of the pickup p99 at 1,000 jobs/s. fetch.lua reads the
//! earliest due time anyway, as it promotes due jobs; it now answers it, and the hint keeps
//! it until the wait.
//!
//! A hint is as good as the look the wait did itself: a job scheduled after the fetch pushes
//! a wake-up token (enqueue.lua, finish.lua and every other script that schedules signal),
//! which the `BLPOP` pops at once, and the fetch after it answers the new earliest time.
//! A hint is used once, and only while fresh: a wait that finds none (another loop used it,
//! or no fetch came first) looks for itself, as before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::time::Timestamp;

/// How long after its fetch a hint may still stand in for the wait's own look. The pool
/// waits right after it fetches; anything older is another loop's, or a slow round's.
const FRESH: Duration = Duration::from_secs(1);

/// One queue's hint: when its fetch ran and when its earliest scheduled job is due (`None`:
/// nothing scheduled), both on the broker's clock.
#[derive(Clone, Copy)]
struct Hint {
    at: Timestamp,
    due: Option<Timestamp>,
}

/// The hints of the queues fetched since their last wait, by queue name.
#[derive(Default)]
pub(super) struct DueHints(Mutex<HashMap<String, Hint>>);

impl DueHints {
    /// Records what a fetch of `queue` at `at` answered: its earliest job is due `due_in`
    /// after the fetch (a negative delay: due already), or nothing is scheduled.
    pub(super) fn record(&self, queue: &str, at: Timestamp, due_in: Option<i64>) {
        let due = due_in.map(|ms| Timestamp::from_millis(at.as_millis().saturating_add(ms)));
        // A poisoned lock only costs the waits their shortcut.
        if let Ok(mut hints) = self.0.lock() {
            match hints.get_mut(queue) {
                Some(hint) => *hint = Hint { at, due },
                None => {
                    hints.insert(queue.to_owned(), Hint { at, due });
                }
            }
        }
    }

    /// Takes the hints of `queues`, seen at `now`: the earliest due time among them (`None`:
    /// nothing scheduled), or `None` outright when one of them has no fresh hint and the
    /// wait must look for itself.
    pub(super) fn take(&self, queues: &[String], now: Timestamp) -> Option<Option<Timestamp>> {
        let mut hints = self.0.lock().ok()?;
        let mut earliest: Option<Timestamp> = None;
        let mut whole = true;
        for q in queues {
            match hints.remove(q) {
                Some(hint) if now.since(hint.at) <= FRESH && hint.at <= now => {
                    if let Some(due) = hint.due {
                        earliest = Some(earliest.map_or(due, |e| e.min(due)));
                    }
                }
                _ => whole = false,
            }
        }
        whole.then_some(earliest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn the_earliest_of_fresh_hints_is_taken_once() {
        let hints = DueHints::default();
        hints.record("a", at(1_000), Some(500));
        hints.record("b", at(1_000), Some(200));
        hints.record("c", at(1_000), None);
        let queues = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
        assert_eq!(hints.take(&queues, at(1_010)), Some(Some(at(1_200))));
        assert_eq!(
            hints.take(&queues, at(1_010)),
            None,
            "a hint serves one wait"
        );
    }

    #[test]
    fn a_missing_or_stale_hint_makes_the_wait_look_for_itself() {
        let hints = DueHints::default();
        hints.record("a", at(1_000), None);
        let queues = ["a".to_owned(), "b".to_owned()];
        assert_eq!(hints.take(&queues, at(1_000)), None);
        hints.record("a", at(1_000), None);
        assert_eq!(hints.take(&queues[..1], at(3_000)), None);
        hints.record("a", at(1_000), None);
        assert_eq!(hints.take(&queues[..1], at(1_001)), Some(None));
    }
}
