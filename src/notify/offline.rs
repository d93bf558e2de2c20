//! [`Offline`]: the ports `notify.send` is registered with in a process that never runs jobs
//! and has no broker open (`hopper check-config`), so the kind is known there (its payloads
//! checked, `[[subscription]]`s naming it accepted) without opening the broker. Delivering
//! through them fails, as a retryable error.

use async_trait::async_trait;
use hopper_jobs::notify::ports::{Inbox, Notification, PushSubscription, PushSubscriptions};

/// Both ports, answering every call with an error: no broker in this process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Offline;

const WHY: &str = "this process has no broker open; notify.send runs in hopper serve or worker";

#[async_trait]
impl Inbox for Offline {
    async fn deliver(&self, _n: &Notification) -> Result<(), String> {
        Err(WHY.into())
    }
}

#[async_trait]
impl PushSubscriptions for Offline {
    async fn list(&self, _user: &str) -> Result<Vec<PushSubscription>, String> {
        Err(WHY.into())
    }

    async fn remove(&self, _user: &str, _endpoint: &str) -> Result<(), String> {
        Err(WHY.into())
    }
}
