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
            warn_reach(broker.as_ref(), &queue, "paused").await;
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
            warn_reach(broker.as_ref(), &queue, "resumed").await;
        }
        _ => {}
    }
    Ok(())
}

/// Warns on stderr when no job and no worker knows `queue`, read after the pause or resume
/// (`done`) is stored; or, when that cannot be read, says so: the change happened, so the
/// command still succeeds.
async fn warn_reach(broker: &dyn Broker, queue: &str, done: &str) {
    let warning = match QueueReach::of(broker, queue).await {
        Ok(reach) if done == "paused" => reach.pause_warning(queue),
        Ok(reach) => reach.resume_warning(queue),
        Err(e) => Some(format!(
            "{} ({e})",
            QueueReach::uncounted_warning(queue, done)
        )),
    };
    if let Some(warning) = warning {
        eprint_line(&format!("warning: {warning}"));
    }
}
