//! The job operations both front doors offer: the HTTP API (`crate::api`) and the CLI
//! (`crate::cli`) call the same [`Service`], so they accept, refuse and answer the same things.
//!
//! - [`submit`]: where a new job (or chain) is checked: an [`EnqueueRequest`] becomes a
//!   [`NewJob`](hopper_workers::NewJob) here and nowhere else.
//! - [`Service::submit`] stores a job or a chain; [`Service::submit_batch`] many of them in
//!   one broker call, all or none; [`Service::lookup`] reads one back with its history and the
//!   steps of its chain, and why it is not running yet ([`waiting`]).
//! - `coalesce`: single jobs submitted at the same time reach the broker in one call.
//! - [`queues`]: what a pause or resume tells about the queue it names ([`queues::QueueReach`]): its jobs
//!   and the workers serving it, and a warning when neither exists.
//!
//! This module knows no HTTP and no terminal: it speaks the engine's types and
//! [`FieldError`]s, and each front door renders them its own way.

mod coalesce;
pub mod queues;
pub mod submit;
pub mod waiting;

use std::collections::HashMap;
use std::sync::Arc;

use hopper_workers::clock::Clock;
use hopper_workers::event::Event;
use hopper_workers::job::{Job, JobId, NewJob, link_chain};
use hopper_workers::time::Timestamp;
use hopper_workers::{Broker, BrokerError, Registry};

pub use submit::{EnqueueRequest, FieldError};

/// Most steps after the first in one chain.
pub const MAX_CHAIN_STEPS: usize = 31;

/// Submit and lookup over one broker and one registry of kinds. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Service {
    broker: Arc<dyn Broker>,
    registry: Arc<Registry>,
    clock: Arc<dyn Clock>,
    /// `[retry] max_retries`, for requests that do not say.
    default_max_retries: u32,
    /// Single jobs submitted together, stored together.
    coalescer: Arc<coalesce::Coalescer>,
    /// The queues this process's config pauses (`[[queue]] paused`), which a lookup reports
    /// as paused like a pause stored in the broker.
    paused_by_config: Arc<Vec<String>>,
    /// The queues this process's config rates (`[[queue]] rate_limit`), with the rate as
    /// written, which a lookup names when the rate holds a job back.
    rates_by_config: Arc<HashMap<String, String>>,
}

/// One job to submit, as a request gives it: the job, and the later steps of its chain
/// (empty for a single job).
#[derive(Clone, Debug, PartialEq)]
pub struct Submission {
    pub first: EnqueueRequest,
    pub then: Vec<EnqueueRequest>,
}

/// What [`Service::submit`] stored (or found, for a taken `unique_key`).
#[derive(Clone, Debug)]
pub struct Submitted {
    /// False when the first step's `unique_key` was taken: nothing was created, and `job` is
    /// the existing job.
    pub created: bool,
    /// The job, or the first step of the chain.
    pub job: Job,
    /// Every step of the chain in order, the first included; empty for a single job.
    pub steps: Vec<Job>,
}

/// A job with what happened to it and, when it is a step of a chain, every step.
#[derive(Clone, Debug)]
pub struct JobDetail {
    pub job: Job,
    pub history: Vec<Event>,
    pub steps: Vec<Job>,
    /// Why it is not running yet; `None` when it runs or is finished.
    pub waiting: Option<waiting::Waiting>,
}

/// Why a submission was not stored.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The request is wrong; nothing was stored.
    #[error(transparent)]
    Field(#[from] FieldError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Why a batch was not stored. Nothing of it was.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The submission at `index` is wrong; `error` names its field as [`Service::submit`]
    /// would (`priority`, `then[0].kind`).
    #[error("job {index}: {error}")]
    Job { index: usize, error: FieldError },
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl Service {
    pub fn new(
        broker: Arc<dyn Broker>,
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
        default_max_retries: u32,
    ) -> Self {
        Self {
            coalescer: Arc::new(coalesce::Coalescer::new(broker.clone())),
            broker,
            registry,
            clock,
            default_max_retries,
            paused_by_config: Arc::default(),
            rates_by_config: Arc::default(),
        }
    }

    /// Reports jobs of these queues as waiting for a pause (`[[queue]] paused` of this
    /// process's config).
    #[must_use]
    pub fn with_paused_queues(mut self, queues: Vec<String>) -> Self {
        self.paused_by_config = Arc::new(queues);
        self
    }

    /// Names these rates (queue, `[[queue]] rate_limit` as written) when a lookup finds a
    /// job held back by its queue's rate.
    #[must_use]
    pub fn with_queue_rates(mut self, rates: HashMap<String, String>) -> Self {
        self.rates_by_config = Arc::new(rates);
        self
    }

    /// The broker underneath, for the operations that need no checking (list, cancel, retry).
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// The kinds this process accepts.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Checks and stores a job, or a chain when `then` is not empty (the steps run in order on
    /// the first step's queue, each receiving the previous result as `input`), all or none.
    /// A step's refusals name it: `then[0].kind`.
    pub async fn submit(
        &self,
        first: EnqueueRequest,
        then: Vec<EnqueueRequest>,
    ) -> Result<Submitted, SubmitError> {
        if then.is_empty() {
            // A single job goes with the others submitted at the same time (`coalesce`).
            let job = submit::prepare(
                first,
                &self.registry,
                self.default_max_retries,
                self.clock.now(),
            )?;
            let stored = self.coalescer.enqueue(job).await.map_err(|e| match e {
                BrokerError::Invalid(f) => SubmitError::Field(f),
                e => SubmitError::Broker(e),
            })?;
            // A replay answers the chain stored with its job, asked for or not.
            let steps = if stored.created {
                Vec::new()
            } else {
                self.stored_chain(&stored.job).await?
            };
            return Ok(Submitted {
                created: stored.created,
                job: stored.job,
                steps,
            });
        }
        match self.submit_batch(vec![Submission { first, then }]).await {
            Ok(mut done) => done.pop().ok_or_else(|| {
                BrokerError::Backend("the broker answered an enqueue with nothing".into()).into()
            }),
            Err(BatchError::Job { error, .. }) => Err(SubmitError::Field(error)),
            Err(BatchError::Broker(e)) => Err(e.into()),
        }
    }

    /// Checks and stores many jobs (each a job or a chain, as [`Service::submit`] takes it)
    /// in one broker call, all or none, and answers each in order. The first job refused is
    /// named by its index, its field as [`Service::submit`] would name it.
    pub async fn submit_batch(&self, batch: Vec<Submission>) -> Result<Vec<Submitted>, BatchError> {
        let now = self.clock.now();
        // How many broker jobs each submission became: 1, or the steps of its chain.
        let mut sizes = Vec::with_capacity(batch.len());
        let mut jobs = Vec::with_capacity(batch.len());
        for (index, s) in batch.into_iter().enumerate() {
            let steps = self
                .prepare(s, now)
                .map_err(|error| BatchError::Job { index, error })?;
            sizes.push(steps.len());
            jobs.extend(steps);
        }
        let total = jobs.len();
        let done = self.broker.enqueue(jobs).await.map_err(|e| match e {
            // The engine's rules are checked at the broker seam; name the job (and step) at
            // fault as the request does.
            BrokerError::Invalid(f) => {
                let (index, error) = locate(f, &sizes);
                BatchError::Job { index, error }
            }
            e => BatchError::Broker(e),
        })?;
        if done.len() != total {
            return Err(BatchError::Broker(BrokerError::Backend(
                format!(
                    "the broker answered {} of {total} enqueued jobs",
                    done.len()
                )
                .into(),
            )));
        }
        let mut done = done.into_iter();
        let mut out = Vec::with_capacity(sizes.len());
        for n in sizes {
            // Every submission is at least one job, and the answer's length was checked above.
            let Some(first) = done.next() else {
                return Err(BatchError::Broker(BrokerError::Backend(
                    "the broker answered a job with nothing".into(),
                )));
            };
            let steps = if first.created && n == 1 {
                Vec::new()
            } else if first.created {
                std::iter::once(first.job.clone())
                    .chain(done.by_ref().take(n - 1).map(|e| e.job))
                    .collect()
            } else {
                // A replay (its unique key taken) is the stored job and the chain stored with
                // it, read back (asked for or not: a client that lost the first answer may
                // send the key alone): the broker answers the request's later steps one by
                // one, and a step the stored chain lacks (a longer chain, a chain over a
                // single job) or one the same call stored was answered as asked, never stored.
                done.by_ref().take(n - 1).for_each(drop);
                self.stored_chain(&first.job)
                    .await
                    .map_err(BatchError::Broker)?
            };
            out.push(Submitted {
                created: first.created,
                job: first.job,
                steps,
            });
        }
        Ok(out)
    }

    /// The steps of the chain `job` is a step of, as stored; none for a single job.
    async fn stored_chain(&self, job: &Job) -> Result<Vec<Job>, BrokerError> {
        match &job.chain {
            Some(link) => self.broker.chain(&link.id).await,
            None => Ok(Vec::new()),
        }
    }

    /// One submission's jobs, checked: the job, or the linked steps of its chain.
    fn prepare(&self, s: Submission, now: Timestamp) -> Result<Vec<NewJob>, FieldError> {
        if s.then.len() > MAX_CHAIN_STEPS {
            return Err(FieldError::invalid(
                "then",
                format!("a chain has at most {MAX_CHAIN_STEPS} steps after the first"),
            ));
        }
        let first = submit::prepare(s.first, &self.registry, self.default_max_retries, now)?;
        let mut steps = vec![first];
        for (i, step) in s.then.into_iter().enumerate() {
            steps.push(submit::prepare_step(
                step,
                &format!("then[{i}]"),
                &steps[0].queue,
                &self.registry,
                self.default_max_retries,
                now,
            )?);
        }
        Ok(link_chain(steps))
    }

    /// A job, its history, its chain's steps and why it is not running yet; `None` when no
    /// job has this id.
    pub async fn lookup(&self, id: &JobId) -> Result<Option<JobDetail>, BrokerError> {
        let Some(job) = self.broker.get(id).await? else {
            return Ok(None);
        };
        let history = self.broker.history(id).await?;
        let steps = match &job.chain {
            Some(link) => self.broker.chain(&link.id).await?,
            None => Vec::new(),
        };
        let here = waiting::QueueConfig {
            paused: self.paused_by_config.contains(&job.queue),
            rate: self.rates_by_config.get(&job.queue).map(String::as_str),
        };
        let waiting = waiting::explain(&*self.broker, &job, &steps, here, self.clock.now()).await?;
        Ok(Some(JobDetail {
            job,
            history,
            steps,
            waiting,
        }))
    }
}

/// A field the broker named in its batch (`jobs[5].priority`: the broker's batch is every
/// submission's jobs, one after the other) as the request names it: the submission's index
/// (`sizes` holds how many jobs each became), and the field plainly for its first job or
/// under `then[i]` for a later step. A field named without `jobs[…]` is the only job's.
fn locate(mut f: FieldError, sizes: &[usize]) -> (usize, FieldError) {
    let Some((flat, rest)) = f
        .field
        .strip_prefix("jobs[")
        .and_then(|r| r.split_once(']'))
        .and_then(|(i, rest)| Some((i.parse::<usize>().ok()?, rest.to_owned())))
    else {
        return (0, f);
    };
    let rest = rest.strip_prefix('.').unwrap_or(&rest).to_owned();
    let mut start = 0;
    for (index, &n) in sizes.iter().enumerate() {
        if flat < start + n {
            let step = flat - start;
            f.field = rest;
            if step > 0 {
                f = f.under(&format!("then[{}]", step - 1));
            }
            return (index, f);
        }
        start += n;
    }
    (0, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_fields_name_the_job_and_step() {
        // A chain of 4 steps alone, then a batch of a single job, a chain of 3, a single job.
        let chain = |field: &str| {
            let (i, f) = locate(FieldError::new(field, "x"), &[4]);
            (i, f.field)
        };
        assert_eq!(chain("priority"), (0, "priority".into()));
        assert_eq!(chain("jobs[0].priority"), (0, "priority".into()));
        assert_eq!(chain("jobs[3].timeout"), (0, "then[2].timeout".into()));
        let batch = |field: &str| {
            let (i, f) = locate(FieldError::new(field, "x"), &[1, 3, 1]);
            (i, f.field)
        };
        assert_eq!(batch("jobs[0].queue"), (0, "queue".into()));
        assert_eq!(batch("jobs[1].queue"), (1, "queue".into()));
        assert_eq!(batch("jobs[3].timeout"), (1, "then[1].timeout".into()));
        assert_eq!(batch("jobs[4].unique_key"), (2, "unique_key".into()));
        assert_eq!(batch("jobs[4]"), (2, String::new()));
    }
}
