//! Queues new to this process, announced on the global stream `newq` (see `keys.rs`): an
//! entry per queue the first time this process enqueues to it, after the enqueue script, so
//! that a follower of the event log blocked on the queues' streams (`events.rs`,
//! `wait_for_events`) wakes for a queue created while it waits instead of waiting out its
//! timeout. A queue is announced once per process (again by each process, after a restart,
//! and after this process dropped it): a few entries per queue, not one per enqueue. A queue
//! dropped by another process and enqueued to again by one that announced it before is not
//! announced again: a follower then sees it at its next read of the log (at worst at the end
//! of its wait, `events.rs`' `IDLE_WAIT`); its events are delayed, never lost.

use redis::Cmd;

use super::RedisBroker;

/// About how many entries `newq` keeps: a waiter reads only entries newer than the last it saw.
const KEEP: u64 = 1000;
/// Names remembered as announced; past this many (queue names come from clients) the memory
/// starts over, which costs one more entry per queue.
const REMEMBERED: usize = 100_000;

impl RedisBroker {
    /// Those of `names` this process has not announced.
    pub(super) fn unannounced(&self, names: &[&str]) -> Vec<String> {
        let announced = self
            .announced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        names
            .iter()
            .filter(|n| !announced.contains(**n))
            .map(|n| (*n).to_owned())
            .collect()
    }

    /// The command announcing `queue`.
    pub(super) fn announce(&self, queue: &str) -> Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.new_queues_key())
            .arg("MAXLEN")
            .arg("~")
            .arg(KEEP)
            .arg("*")
            .arg("q")
            .arg(queue);
        cmd
    }

    /// Forgets that `queue` was announced (its drop, by this process).
    pub(super) fn forget_announced(&self, queue: &str) {
        self.announced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(queue);
    }

    /// Notes `names` as announced (their announcements were sent).
    pub(super) fn announced(&self, names: Vec<String>) {
        if names.is_empty() {
            return;
        }
        let mut announced = self
            .announced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if announced.len() + names.len() > REMEMBERED {
            announced.clear();
        }
        announced.extend(names);
    }
}
