//! The faults of a campaign and when they happen: a random worker SIGKILLed and restarted
//! about every second; one worker SIGSTOPped for longer than its lease and then SIGCONTed
//! (its jobs are rescued meanwhile, so whatever it writes when it wakes is stale and must be
//! refused); with Redis, the server SIGKILLed once and restarted on its AOF.
//!
//! Not here: the processes themselves (`procs`), counting the refusals (`logs`).

use std::time::{Duration, Instant};

use anyhow::Result;
use nix::sys::signal::Signal;
use rand::Rng;
use rand::rngs::StdRng;

use super::procs::{Cluster, LEASE};

/// How long a stopped worker stays stopped: past its lease and the rescue after it.
const STOP_FOR: Duration = Duration::from_millis(LEASE.as_millis() as u64 + 1500);

/// The one SIGSTOP of a campaign.
#[derive(Debug)]
enum Stop {
    Due(Instant),
    Stopped { worker: usize, until: Instant },
    Done,
}

/// The fault schedule and what was done so far.
pub(super) struct Faults {
    rng: StdRng,
    next_kill: Instant,
    stop: Stop,
    /// When Redis is to be killed; `None` with SQLite or once done.
    redis_at: Option<Instant>,
    pub kills: u64,
    pub stops: u64,
    pub redis_restarts: u64,
}

impl Faults {
    /// The schedule of a campaign starting at `start`.
    pub(super) fn new(rng: StdRng, start: Instant, redis: bool) -> Self {
        Self {
            rng,
            next_kill: start + Duration::from_millis(800),
            stop: Stop::Due(start + Duration::from_millis(300)),
            redis_at: redis.then(|| start + Duration::from_millis(1500)),
            kills: 0,
            stops: 0,
            redis_restarts: 0,
        }
    }

    /// Whether the one-off faults are behind: the stopped worker resumed, Redis restarted.
    pub(super) fn settled(&self) -> bool {
        matches!(self.stop, Stop::Done) && self.redis_at.is_none()
    }

    /// Does whatever is due at `now`.
    pub(super) async fn step(&mut self, cluster: &mut Cluster, now: Instant) -> Result<()> {
        let stopped = match self.stop {
            Stop::Stopped { worker, .. } => Some(worker),
            _ => None,
        };
        match self.stop {
            Stop::Due(at) if now >= at => {
                let worker = self.rng.random_range(0..cluster.workers());
                if let Some(w) = cluster.worker(worker) {
                    w.signal(Signal::SIGSTOP)?;
                    self.stops += 1;
                    tracing::info!("chaos: SIGSTOP worker slot {worker} for {STOP_FOR:?}");
                    self.stop = Stop::Stopped {
                        worker,
                        until: now + STOP_FOR,
                    };
                }
            }
            Stop::Stopped { worker, until } if now >= until => self.resume(cluster, worker)?,
            _ => {}
        }
        if now >= self.next_kill {
            let candidates: Vec<usize> = (0..cluster.workers())
                .filter(|i| Some(*i) != stopped)
                .collect();
            if !candidates.is_empty() {
                let worker = candidates[self.rng.random_range(0..candidates.len())];
                cluster.kill_and_restart_worker(worker).await?;
                self.kills += 1;
                tracing::info!("chaos: SIGKILL worker slot {worker}, restarted");
            }
            self.next_kill = now + Duration::from_millis(self.rng.random_range(700..=1300));
        }
        if self.redis_at.is_some_and(|at| now >= at) {
            self.redis_at = None;
            cluster.kill_and_restart_redis().await?;
            self.redis_restarts += 1;
            tracing::info!("chaos: SIGKILL redis-server, restarted on its AOF");
        }
        Ok(())
    }

    /// Resumes a stopped worker, if one is, ahead of its time: the campaign is ending.
    pub(super) fn finish(&mut self, cluster: &Cluster) -> Result<()> {
        if let Stop::Stopped { worker, .. } = self.stop {
            self.resume(cluster, worker)?;
        }
        Ok(())
    }

    fn resume(&mut self, cluster: &Cluster, worker: usize) -> Result<()> {
        if let Some(w) = cluster.worker(worker) {
            w.signal(Signal::SIGCONT)?;
            tracing::info!("chaos: SIGCONT worker slot {worker}");
        }
        self.stop = Stop::Done;
        Ok(())
    }
}
