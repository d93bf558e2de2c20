//! `hopper publish TOPIC --data JSON [--key K] [--json]`: an event published to the bus
//! (`crate::bus`) through the broker the config names, like `hopper enqueue` (no API needed),
//! so it creates exactly the jobs `POST /v1/publish` would. Prints each job's id, one a line
//! (or the whole answer with `--json`); a replayed key says so on stderr and prints the first
//! publish's ids.

use std::sync::Arc;

use anyhow::{Context, Result};
use hopper_workers::Broker;

use super::CliError;
use super::inspect::{eprint_line, service};
use crate::app;
use crate::bus::{Publish, PublishError};
use crate::config::Settings;
use crate::out;

/// `hopper publish` flags.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The topic, e.g. user.created.
    pub topic: String,
    /// The event's data: a JSON object, or @FILE to read it from a file. Default {}.
    #[arg(long, value_name = "JSON|@FILE")]
    pub data: Option<String>,
    /// Idempotency key (1 to 200 bytes): publishing the same key again creates nothing.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Print the whole answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Publishes and prints what was created.
pub(super) async fn run(
    args: PublishArgs,
    settings: &Settings,
    broker: Arc<dyn Broker>,
) -> Result<()> {
    let data = super::enqueue::read_payload(args.data.as_deref(), "--data")?;
    if !data.is_object() {
        return Err(CliError::Usage("--data: must be a JSON object".into()).into());
    }
    let service = service(settings, broker)?;
    app::check_kinds(settings, service.registry())?;
    let req = Publish {
        topic: args.topic,
        data,
        key: args.key,
    };
    let done = match settings.bus.publish(&service, req).await {
        Ok(done) => done,
        Err(PublishError::Field(e)) => {
            let flag = match e.field.as_str() {
                "topic" => "TOPIC".to_owned(),
                f => format!("--{f}"),
            };
            return Err(CliError::Usage(format!("{flag}: {}", e.message)).into());
        }
        Err(PublishError::Broker(e)) => return Err(e).context("publishing"),
    };
    if args.json {
        return Ok(out::json(&done)?);
    }
    if done.matched == 0 {
        eprint_line(&format!(
            "no subscription matches {}: nothing was enqueued",
            done.topic
        ));
    } else if done.duplicate {
        eprint_line("this key was published before; its jobs:");
    }
    for job in done.jobs {
        out::line(job.id)?;
    }
    Ok(())
}
