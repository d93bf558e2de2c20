//! The storage layout's version, and the migration a node runs when it connects to a Redis
//! whose jobs an older Hopper stored.
//!
//! Layout 1 stored a job as a hash. Layout 3 stores it as two strings: its record (what
//! changes as it moves, its kind and optional fields), which a step reads and writes whole
//! (fetch and finish a batch with one `MGET` and one `MSET`), and its `d` (what never
//! changes, the payload included), which enqueue writes and the rest read only to hand the
//! job over or for its priority. Layout 2, never released, kept `d` inside the record.
//! Layout 4 (today's, see `workers/lua/common.lua`) stores jobs as layout 3 does and numbers
//! the event streams' entries by one clock, `<prefix>:evclock`, across queues (`keys.rs`):
//! the log's reader relies on that, which a process of layout 3 does not keep, so it is a
//! version of its own; going from 3 to 4 rewrites nothing. The version lives in
//! `<prefix>:layout`; absent means 1, or a Redis that has no jobs yet.
//!
//! The migration (migrate.lua) rewrites each queue's jobs, then moves its succeeded ids from
//! layout 1's zset `succeeded` to the list `done`, in batches of [`BATCH`], so Redis is never
//! blocked for long; what is moved already stays as it is, so two nodes that connect at once
//! both migrate, harmlessly. The workers of a node start after its migration, so no finish
//! appends to `done` before the older ids are in it. A process of an older layout still
//! running meanwhile cannot read the rewritten jobs: upgrade every process together, as
//! README's "Upgrading" says (a job a layout-1 process still enqueues as a hash is rewritten
//! when the scripts meet it).

use super::RedisBroker;
use super::scripts::{BATCH, SCRIPTS};
use crate::error::{BrokerError, BrokerResult};

/// The layout this build reads and writes.
const LAYOUT: u32 = 4;

/// The first layout whose jobs this build reads as they are (3 and 4 store jobs alike).
const JOBS_AS_TODAY: u32 = 3;

impl RedisBroker {
    fn layout_key(&self) -> String {
        format!("{}:layout", self.prefix)
    }

    /// Brings the stored jobs to [`LAYOUT`]: a no-op once the version key says so. Refuses a
    /// Redis a newer Hopper has written, which this one cannot read.
    pub(super) async fn migrate_layout(&self) -> BrokerResult<()> {
        let stored: Option<String> = self.query(redis::cmd("GET").arg(self.layout_key())).await?;
        let stored = match stored.as_deref().map(str::parse::<u32>) {
            None => 1,
            Some(Ok(v)) => v,
            Some(Err(_)) => {
                return Err(BrokerError::Config(format!(
                    "redis key {}: not a storage layout version",
                    self.layout_key()
                )));
            }
        };
        if stored == LAYOUT {
            return Ok(());
        }
        if stored > LAYOUT {
            return Err(BrokerError::Config(format!(
                "the jobs under redis prefix {:?} are stored in layout {stored}, which only a newer \
                 Hopper reads (this one reads layout {LAYOUT})",
                self.prefix
            )));
        }
        let mut rewritten = 0u64;
        let queues = if stored >= JOBS_AS_TODAY {
            Vec::new()
        } else {
            self.queue_names().await?
        };
        for queue in queues {
            for phase in ["jobs", "done"] {
                let mut cursor = String::new();
                loop {
                    let mut cmd = self.eval(&SCRIPTS.migrate, &queue);
                    cmd.arg(&cursor).arg(BATCH).arg(phase);
                    let (next, n): (String, u64) = self.query(&cmd).await?;
                    if phase == "jobs" {
                        rewritten += n;
                    }
                    if next.is_empty() {
                        break;
                    }
                    cursor = next;
                }
            }
        }
        if !self.is_cluster() {
            self.seed_event_clock().await?;
        }
        // The version it replaced (`GETSET`, which Redis 6.0 has too): of nodes that connect
        // at once and all migrate (harmless), the one that moved it says so.
        let replaced: Option<String> = self
            .query(redis::cmd("GETSET").arg(self.layout_key()).arg(LAYOUT))
            .await?;
        if replaced != Some(LAYOUT.to_string()) {
            tracing::info!(
                from = stored,
                to = LAYOUT,
                prefix = %self.prefix,
                "moved the data stored in Redis to the current storage layout"
            );
        }
        if rewritten > 0 {
            tracing::info!(
                jobs = rewritten,
                from = stored,
                to = LAYOUT,
                "rewrote the jobs stored in Redis in the current storage layout"
            );
        }
        Ok(())
    }

    /// Starts the event clock at the newest entry of the queues' streams, unless it is past
    /// that already (a node of this build that connected first): an entry written earlier
    /// by a process of layout 3, or after Redis' clock went back, may be ahead of Redis'
    /// time, and the clock must never number an entry before one a reader handed out.
    async fn seed_event_clock(&self) -> BrokerResult<()> {
        let Some(newest) = super::events::newest_entry_id(self).await? else {
            return Ok(());
        };
        self.query::<i64>(
            redis::cmd("EVAL")
                .arg(SEED_CLOCK)
                .arg(1)
                .arg(self.event_clock_key())
                .arg(newest),
        )
        .await
        .map(drop)
    }
}

/// Sets the event clock (KEYS[1]) to the entry id ARGV[1] (`<ms>-<seq>`) unless it holds one
/// as great already; returns 1 when it did.
const SEED_CLOCK: &str = "
local function parse(id)
  local ms, seq = string.match(id or '', '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local ms, seq = parse(ARGV[1])
if not ms then
  return redis.error_reply('not a stream entry id: ' .. ARGV[1])
end
local cms, cseq = parse(redis.call('GET', KEYS[1]))
if cms and (cms > ms or (cms == ms and cseq >= seq)) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
";
