//! `hopper pause QUEUE` and `hopper resume QUEUE`: the queue controls, straight on the broker
//! the config names (like `hopper retry`), so they work on a node without an API.
//!
//! The pause is stored in the broker, so every node sharing it honours it from its next fetch
//! on; `[[queue]] paused = true` in a config stays a pause of that node's own, which `resume`
//! does not lift (it says so). Listing queues is `super::inspect`'s.

use std::sync::Arc;

use anyhow::{Context, Result};
use hopper_workers::Broker;

use super::Command;
use crate::config::Settings;
use crate::out;

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
        }
        _ => {}
    }
    Ok(())
}
