//! Named cursors in the event log: the string key `<prefix>:cursor:<name>`, outside any
//! queue's slot (a cursor spans every queue's stream).
//!
//! It owns storing and reading them; what a cursor means is its reader's business (the
//! shell's job-event relay).

use super::RedisBroker;
use crate::error::BrokerResult;

pub(super) async fn cursor(broker: &RedisBroker, name: &str) -> BrokerResult<Option<String>> {
    broker
        .query(redis::cmd("GET").arg(broker.cursor_key(name)))
        .await
}

pub(super) async fn save_cursor(broker: &RedisBroker, name: &str, value: &str) -> BrokerResult<()> {
    broker
        .query(redis::cmd("SET").arg(broker.cursor_key(name)).arg(value))
        .await
}

/// `advance_cursor`'s rule (`crate::broker::cursor_number`'s reading of a stored value) in one
/// script, so that no other writer comes between the read and the write. Not one of
/// `workers/lua/`'s queue scripts: its one key is the cursor's, outside any queue's slot.
const ADVANCE: &str = r"
local v = redis.call('GET', KEYS[1])
local n = tonumber(ARGV[1])
if v and string.match(v, '^%-?%d+$') and #v < 20 and tonumber(v) >= n then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
";

pub(super) async fn advance_cursor(
    broker: &RedisBroker,
    name: &str,
    value: i64,
) -> BrokerResult<()> {
    broker
        .query::<i64>(
            redis::cmd("EVAL")
                .arg(ADVANCE)
                .arg(1)
                .arg(broker.cursor_key(name))
                .arg(value),
        )
        .await
        .map(drop)
}
