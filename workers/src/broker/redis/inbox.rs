//! Users' inboxes and Web Push subscriptions on Redis (the rules are
//! `crate::broker::inbox`'s).
//!
//! Every key is under one hash tag, `{<prefix>:@inbox}:` (one Cluster slot; `@` is not
//! allowed in a queue name, so no queue's keys share it): `log`, a stream of every user's
//! entries, which the one reader per API process follows and [`inbox_wait`] blocks on (so an
//! append on any node wakes every node at once); `u:<user>`, the same entries of one user under
//! the same stream ids, which a connection's replay reads; `id:<id>`, what makes an append
//! idempotent; and `push:<user>`, a hash endpoint -> `{"p256dh", "auth"}`. The append is one
//! script (`inbox_append.lua`). A cursor is an entry's stream id; an entry's time is its stream
//! id's, Redis' clock, which is also what `keep` is measured on.
//!
//! One slot for all inboxes is a limit on purpose: notifications are small and few beside
//! jobs, and one stream is what lets one blocking read per process follow every user.

use std::time::Duration;

use redis::Value;

use super::RedisBroker;
use super::conn::Pipe;
use super::decode::{corrupt, string, text};
use super::scripts::SCRIPTS;
use crate::broker::inbox::{MAX_PUSH_SUBSCRIPTIONS, too_many_push_subscriptions};
use crate::broker::{Appended, InboxEntry, NewInboxEntry, WebPush};
use crate::error::BrokerResult;
use crate::field::FieldError;
use crate::time::{Timestamp, duration_ms};

/// The pseudo-queue whose hash tag the inbox keys use.
const INBOX: &str = "@inbox";

impl RedisBroker {
    fn inbox_key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.base(INBOX))
    }
}

/// A stream id `<ms>-<seq>`, checked; its milliseconds. `0` is before every entry, as on
/// SQLite.
fn cursor(s: &str) -> Result<u64, FieldError> {
    let bad = || FieldError::new("since", "not a notification cursor this broker issued");
    if s == "0" {
        return Ok(0);
    }
    let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
    crate::broker::canonical_number(seq).ok_or_else(bad)?;
    crate::broker::canonical_number(ms).ok_or_else(bad)
}

pub(super) async fn inbox_append(
    broker: &RedisBroker,
    new: &NewInboxEntry,
    keep: Duration,
) -> BrokerResult<Appended> {
    let body = serde_json::to_string(&new.body).map_err(crate::BrokerError::backend)?;
    let mut cmd = broker.eval(&SCRIPTS.inbox_append, INBOX);
    cmd.arg(&new.id)
        .arg(&new.user)
        .arg(body)
        .arg(duration_ms(keep).max(1));
    let reply: (String, i64) = broker.query(&cmd).await?;
    Ok(Appended {
        cursor: reply.0,
        created: reply.1 == 1,
    })
}

pub(super) async fn inbox_read(
    broker: &RedisBroker,
    user: Option<&str>,
    after: Option<&str>,
    limit: usize,
    keep: Duration,
) -> BrokerResult<Vec<InboxEntry>> {
    if let Some(a) = after {
        cursor(a)?;
    }
    if limit == 0 {
        return Ok(Vec::new());
    }
    let key = match user {
        Some(u) => broker.inbox_key(&format!("u:{u}")),
        None => broker.inbox_key("log"),
    };
    let start = after.map_or_else(|| "-".to_owned(), super::events::xrange_after);
    let mut pipe = Pipe::new();
    pipe.cmd("TIME");
    pipe.cmd("XRANGE")
        .arg(key)
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(limit);
    let (time, entries): (Vec<u64>, Value) = broker.query_pipe(&pipe).await?;
    let server_ms =
        time.first().copied().unwrap_or(0) * 1000 + time.get(1).copied().unwrap_or(0) / 1000;
    let since = server_ms.saturating_sub(u64::try_from(keep.as_millis()).unwrap_or(u64::MAX));
    let Value::Array(entries) = entries else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(entries.len());
    for e in &entries {
        let Value::Array(parts) = e else {
            return Err(corrupt("inbox entry is not an array"));
        };
        let [sid, Value::Array(fields)] = parts.as_slice() else {
            return Err(corrupt("inbox entry without fields"));
        };
        let sid = string(sid)?;
        let ms = cursor(&sid).map_err(|_| corrupt(format!("inbox stream id {sid}")))?;
        if ms < since {
            continue;
        }
        let (mut id, mut owner, mut body) = (None, user.map(str::to_owned), None);
        for pair in fields.chunks_exact(2) {
            match (text(&pair[0]), text(&pair[1])) {
                (Some("n"), Some(v)) => id = Some(v.to_owned()),
                (Some("u"), Some(v)) => owner = Some(v.to_owned()),
                (Some("b"), Some(v)) => body = Some(v),
                _ => {}
            }
        }
        let (Some(id), Some(owner), Some(body)) = (id, owner, body) else {
            return Err(corrupt(format!("inbox entry {sid}: missing fields")));
        };
        out.push(InboxEntry {
            at: Timestamp::from_millis(i64::try_from(ms).unwrap_or(i64::MAX)),
            body: serde_json::from_str(body)
                .map_err(|e| corrupt(format!("inbox entry {sid}: {e}")))?,
            cursor: sid,
            id,
            user: owner,
        });
    }
    Ok(out)
}

/// The log's newest entry, one `XREVRANGE … COUNT 1`: an append trims only entries older
/// than `keep` and keeps its own, so the newest one handed out is always there.
pub(super) async fn inbox_end(broker: &RedisBroker) -> BrokerResult<Option<String>> {
    let mut cmd = redis::cmd("XREVRANGE");
    cmd.arg(broker.inbox_key("log"))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1);
    let reply: Value = broker.query(&cmd).await?;
    let Value::Array(entries) = reply else {
        return Ok(None);
    };
    match entries.first() {
        None => Ok(None),
        Some(Value::Array(parts)) => match parts.first() {
            Some(sid) => Ok(Some(string(sid)?)),
            None => Err(corrupt("inbox entry without an id")),
        },
        Some(_) => Err(corrupt("inbox entry is not an array")),
    }
}

/// One `XREAD BLOCK` on the log, on a dedicated connection: any node's append wakes it.
pub(super) async fn inbox_wait(
    broker: &RedisBroker,
    after: Option<&str>,
    timeout: Duration,
) -> BrokerResult<()> {
    if let Some(a) = after {
        cursor(a)?;
    }
    let block_ms = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let key = broker.inbox_key("log");
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT")
        .arg(1)
        .arg("BLOCK")
        .arg(block_ms)
        .arg("STREAMS")
        .arg(&key)
        .arg(after.unwrap_or("0-0"));
    broker
        .block(&cmd, Some(&key), Duration::from_millis(block_ms))
        .await
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Keys {
    p256dh: String,
    auth: String,
}

/// `HSET` of one subscription unless the endpoint is new and the user has `ARGV[3]` already
/// (then -1), in one step so that two registrations at once cannot both pass the cap.
const PUSH_SUBSCRIBE: &str = "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 \
    and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end \
    return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])";

pub(super) async fn push_subscribe(
    broker: &RedisBroker,
    user: &str,
    sub: &WebPush,
) -> BrokerResult<bool> {
    let keys = serde_json::to_string(&Keys {
        p256dh: sub.p256dh.clone(),
        auth: sub.auth.clone(),
    })
    .map_err(crate::BrokerError::backend)?;
    let added: i64 = broker
        .query(
            redis::cmd("EVAL")
                .arg(PUSH_SUBSCRIBE)
                .arg(1)
                .arg(broker.inbox_key(&format!("push:{user}")))
                .arg(&sub.endpoint)
                .arg(keys)
                .arg(MAX_PUSH_SUBSCRIPTIONS),
        )
        .await?;
    if added < 0 {
        return Err(too_many_push_subscriptions().into());
    }
    Ok(added > 0)
}

pub(super) async fn push_subscriptions(
    broker: &RedisBroker,
    user: &str,
) -> BrokerResult<Vec<WebPush>> {
    let pairs: std::collections::HashMap<String, String> = broker
        .query(redis::cmd("HGETALL").arg(broker.inbox_key(&format!("push:{user}"))))
        .await?;
    let mut out = Vec::with_capacity(pairs.len());
    for (endpoint, keys) in pairs {
        let keys: Keys = serde_json::from_str(&keys)
            .map_err(|e| corrupt(format!("push subscription keys: {e}")))?;
        out.push(WebPush {
            endpoint,
            p256dh: keys.p256dh,
            auth: keys.auth,
        });
    }
    out.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
    Ok(out)
}

pub(super) async fn push_unsubscribe(
    broker: &RedisBroker,
    user: &str,
    endpoint: &str,
) -> BrokerResult<bool> {
    let removed: i64 = broker
        .query(
            redis::cmd("HDEL")
                .arg(broker.inbox_key(&format!("push:{user}")))
                .arg(endpoint),
        )
        .await?;
    Ok(removed > 0)
}
