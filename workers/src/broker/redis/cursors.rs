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
