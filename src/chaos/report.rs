//! The campaign's ledger as printed: one JSON object, the last line on stdout, and the
//! verdict: a lost job, or a job completed twice with no interruption to explain it, fails
//! the run (exit 1).

use serde::Serialize;

use crate::exit::CliError;

/// The report's fields, in the order printed (issue 13).
#[derive(Debug, Serialize)]
pub struct Report {
    /// `sqlite` or `redis`.
    pub broker: &'static str,
    /// Jobs the campaign set out to enqueue.
    pub jobs: u64,
    /// Jobs the API acknowledged (answered with the job).
    pub acknowledged: u64,
    /// Acknowledged jobs that never completed per the ledger, or are not `succeeded` in the
    /// broker.
    pub lost: u64,
    /// Jobs the ledger shows completing more than once.
    pub completed_twice: u64,
    /// Handler starts in the ledger.
    pub starts: u64,
    /// Starts beyond the one that completed each job: attempts cut short by a kill, a stop
    /// or a lease lost.
    pub interruptions: u64,
    /// Writes with a stale lease token the broker refused (from the workers' logs).
    pub stale_writes_refused: u64,
    /// Times the Redis server was killed and restarted.
    pub redis_restarts: u64,
    /// Workers SIGKILLed (each restarted).
    pub kills: u64,
    /// Workers SIGSTOPped past their lease (each resumed).
    pub stops: u64,
    /// Wall-clock length of the campaign, processes' start to check's end.
    pub seconds: f64,
}

impl Report {
    /// Prints the report as the last line on stdout; an error when the campaign failed,
    /// `unexplained` being the jobs completed twice without an interruption, or whose accepted
    /// completion was a stale lease's.
    pub fn finish(&self, unexplained: u64) -> anyhow::Result<()> {
        crate::out::json(self)?;
        if self.lost > 0 || unexplained > 0 {
            return Err(CliError::Ended {
                message: format!(
                    "chaos: {} lost, {unexplained} completed twice without an interruption \
                     or under a stale lease",
                    self.lost
                ),
                code: 1,
            }
            .into());
        }
        Ok(())
    }
}
