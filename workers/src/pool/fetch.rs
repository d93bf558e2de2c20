//! The fetch loop: asks the broker for no more jobs than there are free slots (per queue too),
//! blocks in `wait_for_work` when there is nothing to do, and starts each job in its own task.
//! Each round asks the queues in the order their weights give (`weights`: smooth weighted
//! round-robin; plain round-robin when the weights are equal), so that a busy queue does not
//! keep the others' jobs waiting for the slots it leaves, and a heavier queue gets more rounds.
//! Every wait is bounded by [`BEAT`], and every round is recorded in the pool's liveness, so a
//! supervisor can tell an idle loop from a hung one.
//!
//! A queue with a job rate is fetched through [`Broker::fetch_rated`]; when the broker says its
//! rate allows no start for a while, the loop leaves that queue alone until then (no polling)
//! and waits for the others' work at most that long (and at most a [`BEAT`]).

use tracing::Instrument;

use super::weights::RoundOrder;
use super::*;

/// Fetches and starts jobs until `shutdown` fires.
pub(super) async fn fetch_loop(
    broker: &Arc<dyn Broker>,
    shared: &Arc<Shared>,
    jobs: &TaskTracker,
    concurrency: usize,
    shutdown: &CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let queue_slots: HashMap<String, Arc<Semaphore>> = shared
        .config
        .queues
        .iter()
        .filter_map(|q| {
            q.concurrency
                .map(|c| (q.name.clone(), Arc::new(Semaphore::new(c.max(1)))))
        })
        .collect();
    let unpaused: Vec<&QueueSpec> = shared.config.queues.iter().filter(|q| !q.paused).collect();
    let active: Vec<String> = unpaused.iter().map(|q| q.name.clone()).collect();
    // Which queue each round asks first, and then which (see the loop); its indexes are
    // `active`'s, both built from `unpaused`.
    let mut rounds = RoundOrder::new(unpaused.iter().map(|q| q.weight));
    if active.is_empty() {
        warn!("every queue of this pool is paused: nothing will run");
    }
    let rates: HashMap<String, JobRate> = shared
        .config
        .queues
        .iter()
        .filter_map(|q| q.rate.map(|r| (q.name.clone(), r)))
        .collect();
    // Rated queues whose rate allows no start before the instant given.
    let mut held: HashMap<String, Instant> = HashMap::new();
    let mut backoff = Duration::from_millis(100);
    let live = shared.handle.liveness();

    while !shutdown.is_cancelled() {
        live.fetch_beat();
        if let Some(path) = &shared.config.fault_block_fetch_file {
            fault_block(path, shutdown).await;
        }
        let mut saturated = false;
        let mut failed = false;
        // Queues with a free slot: the only ones worth waiting on (a queue at its own limit
        // may well have work, which would wake us at once, again and again).
        let mut open: Vec<String> = Vec::with_capacity(active.len());
        // The limits of the queues skipped at their own limit this round: one of their jobs
        // ending ends the wait below.
        let mut capped: Vec<Arc<Semaphore>> = Vec::new();
        let now = Instant::now();
        held.retain(|_, until| *until > now);
        // Each round starts at the queue the weights pick: a queue with a backlog takes every
        // free slot of its turn, so always starting at the first one left the others only the
        // slots that freed up mid-round (a rated queue, held on the rare round it got one,
        // starved), and how often a queue starts is about its share of the jobs run.
        for &i in rounds.next() {
            let queue = &active[i];
            let free = slots.available_permits();
            if free == 0 {
                break;
            }
            if held.contains_key(queue) {
                continue;
            }
            let queue_sem = queue_slots.get(queue);
            let want = queue_sem.map_or(free, |s| s.available_permits().min(free));
            if want == 0 {
                capped.extend(queue_sem.cloned());
                continue;
            }
            // Not raced against shutdown: a fetch dropped half-way may still lease jobs in
            // the broker, which would then sit `running` until their lease expired.
            // The broker grants each lease from its own reading of the time, later than this
            // one; the pool watches it on this node's clock, which may be off from the
            // broker's (Redis' `TIME`), so it keeps `sent + lease`, never later than the real
            // deadline, as heartbeats do.
            let sent = shared.clock.now();
            let fetched = match rates.get(queue) {
                None => broker.fetch(queue, want, shared.config.lease).await,
                Some(rate) => broker
                    .fetch_rated(queue, want, shared.config.lease, *rate)
                    .await
                    .map(|f| {
                        if let Some(wait) = f.held_for {
                            held.insert(queue.clone(), Instant::now() + wait);
                        }
                        f.jobs
                    }),
            };
            if !held.contains_key(queue) {
                open.push(queue.clone());
            }
            match fetched {
                Ok(batch) if shutdown.is_cancelled() => {
                    for job in batch {
                        let _ = shared.finish_tx.send(Finish {
                            lease: job.lease(),
                            outcome: Outcome::Released {
                                reason: "worker shutting down".into(),
                            },
                        });
                    }
                    break;
                }
                Ok(batch) => {
                    backoff = Duration::from_millis(100);
                    // A rated queue that filled the request but is now held has nothing more
                    // to give this round.
                    let filled = batch.len() == want && !held.contains_key(queue);
                    saturated |= filled;
                    for mut job in batch {
                        job.lease_until = Some(sent + shared.config.lease);
                        start_job(shared, jobs, &slots, queue_sem, job);
                    }
                    // The round ends at the first queue that gave all it was asked for: slots
                    // freed meanwhile (jobs end during a fetch) go to a new round, whose first
                    // queue the weights pick again, not to the next queue of this one; with
                    // short jobs that was a third of the slots, and weights 3:1 ran 1.4:1.
                    if filled {
                        break;
                    }
                }
                Err(e) => {
                    warn!(queue, error = %e, "fetch failed; retrying");
                    failed = true;
                }
            }
        }
        if failed {
            if !live.fetch_pause(backoff, shutdown).await {
                break;
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        if slots.available_permits() == 0 {
            // Every slot is busy: wait for one to free up, without holding it (and go round
            // every beat meanwhile: jobs may well run for an hour).
            tokio::select! {
                () = shutdown.cancelled() => break,
                permit = slots.acquire() => drop(permit),
                () = tokio::time::sleep(BEAT) => {}
            }
            continue;
        }
        // The first rated queue to be allowed a start again.
        let next_allowed = held
            .values()
            .min()
            .map(|until| until.saturating_duration_since(Instant::now()));
        if open.is_empty() {
            // Free slots, but every queue is at its own limit (wait for one of its jobs to
            // end) or held by its rate (wait until it may start one).
            let at_limit = active.len() > held.len();
            let wait = match next_allowed {
                Some(rated) if at_limit => rated.min(QUEUE_LIMIT_WAIT),
                Some(rated) => rated,
                None => QUEUE_LIMIT_WAIT,
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait.min(BEAT)) => {}
            }
            continue;
        }
        if !saturated {
            let idle_wait = next_allowed.map_or(shared.config.idle_wait, |rated| {
                rated.min(shared.config.idle_wait)
            });
            tokio::select! {
                () = shutdown.cancelled() => break,
                // The broker's wait does not wake on that (Redis' blocks on the open queues'
                // wake-ups): a queue limited to 1 ran about one job a second.
                () = slot_freed(&capped) => {}
                r = broker.wait_for_work(&open, idle_wait.min(BEAT)) => {
                    if let Err(e) = r {
                        warn!(error = %e, "waiting for work failed");
                        live.fetch_pause(backoff, shutdown).await;
                    }
                }
            }
        }
    }
    debug!("fetch loop stopped");
}

/// The test-only fault hook: blocks while `path` exists (or until shutdown), as a fetch loop
/// hung inside an iteration would, without recording any round.
async fn fault_block(path: &std::path::Path, shutdown: &CancellationToken) {
    if !path.exists() {
        return;
    }
    warn!(path = %path.display(), "fault hook: the fetch loop is blocked while this file exists");
    while path.exists() {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    info!("fault hook: the fetch loop runs again");
}

/// Returns once one of `limits` has a permit free (a job of a queue at its own limit ended);
/// never when there are none.
async fn slot_freed(limits: &[Arc<Semaphore>]) {
    if limits.is_empty() {
        return std::future::pending().await;
    }
    let acquires = limits.iter().map(|s| Box::pin(s.acquire()));
    match futures::future::select_all(acquires).await {
        (Ok(permit), _, _) => drop(permit),
        // A limit is never closed; if one were, waiting on it would spin.
        (Err(_), _, _) => std::future::pending().await,
    }
}

/// How often a pool whose queues are all at their own limit looks again.
pub(super) const QUEUE_LIMIT_WAIT: Duration = Duration::from_millis(50);

/// Takes the slots for a fetched job and spawns its task.
pub(super) fn start_job(
    shared: &Arc<Shared>,
    jobs: &TaskTracker,
    slots: &Arc<Semaphore>,
    queue_sem: Option<&Arc<Semaphore>>,
    job: Job,
) {
    // The fetch asked for no more jobs than free permits and only this loop takes permits,
    // so these cannot fail; if they ever did, the job is given back rather than overrun.
    let slot = slots.clone().try_acquire_owned().ok();
    let queue_slot = match queue_sem {
        Some(s) => s.clone().try_acquire_owned().ok().map(Some),
        None => Some(None),
    };
    let (Some(slot), Some(queue_slot)) = (slot, queue_slot) else {
        warn!(job = %job.id, "fetched more jobs than free slots; releasing one");
        let _ = shared.finish_tx.send(Finish {
            lease: job.lease(),
            outcome: Outcome::Released {
                reason: "no free slot".into(),
            },
        });
        return;
    };
    let shared = shared.clone();
    shared.busy.started(&job.queue);
    // Every line the attempt causes (the pool's, the handler's) carries the job's fields.
    let span = tracing::info_span!(
        "job",
        job_id = %job.id,
        queue = %job.queue,
        kind = %job.kind,
        attempt = job.attempt,
    );
    jobs.spawn(
        async move {
            let queue = job.queue.clone();
            let finish = run_job(&shared, job).await;
            shared.busy.ended(&queue);
            if let Some(finish) = finish {
                // The acknowledger outlives every job task, so this only fails if the pool's
                // run() was dropped mid-way, in which case the lease will expire and be rescued.
                let _ = shared.finish_tx.send(finish);
            }
            drop(queue_slot);
            drop(slot);
        }
        .instrument(span),
    );
}
