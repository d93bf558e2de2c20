//! The `chaos.ledger` job kind: records every start and every completion of a job in an
//! append-only file of its own process, so that `hopper chaos` can count lost and duplicated
//! jobs without trusting the broker it is testing.
//!
//! It is registered only in the processes `hopper chaos` starts (their hidden
//! `--chaos-ledger DIR` flag); a normal `serve` or `worker` does not offer it. Each process
//! appends to `DIR/ledger-PID.log`, opened with `O_APPEND`, one `write` per line, so a line is
//! either whole or absent when the process is killed; the page cache keeps what was written
//! when the process dies, so no fsync is needed (the machine itself does not crash).
//!
//! A `done` line is written before the completion is acknowledged, so it does not say whether
//! the broker took it; the job's result does: `{"token": LEASE_TOKEN}`, the token of the
//! completion the broker accepted.
//!
//! Not here: reading the ledger back (`ledger`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hopper_workers::handler::{JobContext, JobError, JobResult};
use hopper_workers::kind::Kind;
use hopper_workers::registry::{Registry, RegistryError};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::json;

/// The kind's stable name.
pub const NAME: &str = "chaos.ledger";

/// The payload of `chaos.ledger`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerArgs {
    /// How long the job sleeps between its start and its completion, in milliseconds, so
    /// that kills hit running jobs.
    pub ms: u64,
    #[serde(default, rename = "input")]
    _input: Option<IgnoredAny>,
}

/// `chaos.ledger`: appends `start` and `done` lines to this process's ledger file.
#[derive(Debug, Clone)]
pub struct Ledger {
    file: Arc<Mutex<File>>,
}

/// Registers `chaos.ledger`, writing to a file of this process in `dir`.
pub fn register(registry: &mut Registry, dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(format!("ledger-{}.log", std::process::id()));
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("opening the chaos ledger {}: {e}", path.display()))?;
    registry
        .add(Ledger {
            file: Arc::new(Mutex::new(file)),
        })
        .map_err(|e: RegistryError| anyhow::anyhow!("registering {NAME}: {e}"))
}

impl Ledger {
    /// Appends one line `EVENT JOB ATTEMPT TOKEN PID MS` in one write.
    fn append(&self, event: &str, cx: &JobContext) -> Result<(), JobError> {
        let job = cx.job();
        let line = format!(
            "{event} {} {} {} {} {}\n",
            job.id,
            job.attempt,
            job.lease_token,
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
        );
        // A poisoned lock only means another job panicked mid-write; the file is still fine.
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(line.as_bytes())
            .map_err(|e| JobError::retryable(format!("writing the chaos ledger: {e}")))
    }
}

impl Kind for Ledger {
    const NAME: &'static str = NAME;
    type Args = LedgerArgs;

    async fn run(&self, cx: JobContext, args: LedgerArgs) -> JobResult {
        self.append("start", &cx)?;
        tokio::select! {
            () = cx.cancelled() => return Err(JobError::retryable("cancelled while sleeping")),
            () = tokio::time::sleep(Duration::from_millis(args.ms)) => {}
        }
        self.append("done", &cx)?;
        // The broker keeps the result of the completion it accepted: its lease token tells
        // the check which of the `done` lines that was (`ledger`).
        Ok(json!({ "token": cx.job().lease_token }))
    }
}
