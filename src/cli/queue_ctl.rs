//! `hopper pause QUEUE` and `hopper resume QUEUE`: the queue controls, straight on the broker
//! the config names (like `hopper retry`), so they work on a node without an API.
//!
//! The pause is stored in the broker, so every node sharing it honours it from its next fetch
//! on; `[[queue]] paused = true` in a config stays a pause of that node's own, which `resume`
//! does not lift (it says so). Pausing or resuming a queue that holds no job and that no worker
//! serves succeeds with a warning on stderr naming it (`crate::service::queues`). Listing queues
//! is `super::inspect`'s.

use std::sync::Arc;

use anyhow::{Context, Result};
use hopper_workers::Broker;

use super::Command;
use super::inspect::eprint_line;
use crate::config::Settings;
use crate::out;
use crate::service::queues::QueueReach;

/// Runs `pause` or `resume`; any other command is not this module's and does nothing.
pub async fn run(command: Command, settings: &Settings, broker: Arc<dyn Broker>) -> Result<()> {
    match command {
        Command::Pause { queue } => {
            broker
                .pause(&queue)
                .await
                .with_context(|| format!("cannot pause queue {queue:?}"))?;
            out::line(format!(
                "queue {queue} paused: its jobs wait until `hopper resume {queue}`"
            ))?;
            // A warning, not a refusal: a queue may be paused ahead of its first job.
            if let Some(warning) = reach(broker.as_ref(), &queue).await?.pause_warning(&queue) {
                eprint_line(&format!("warning: {warning}"));
            }
        }
        Command::Resume { queue } => {
            broker
                .resume(&queue)
                .await
                .with_context(|| format!("cannot resume queue {queue:?}"))?;
            let by_config = settings
                .config
                .queues
                .iter()
                .any(|q| q.name == queue && q.paused);
            if by_config {
                out::line(format!(
                    "queue {queue} resumed in the broker, but this config still pauses it \
                     ([[queue]] paused = true) for the workers that read it"
                ))?;
            } else {
                out::line(format!("queue {queue} resumed"))?;
            }
            if let Some(warning) = reach(broker.as_ref(), &queue).await?.resume_warning(&queue) {
                eprint_line(&format!("warning: {warning}"));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Who knows `queue`, read after the pause or resume is stored.
async fn reach(broker: &dyn Broker, queue: &str) -> Result<QueueReach> {
    QueueReach::of(broker, queue)
        .await
        .with_context(|| format!("cannot read who knows queue {queue:?}"))
}
