//! The job operations both front doors offer: the HTTP API (`crate::api`) and the CLI
//! (`crate::cli`) call the same [`Service`], so they accept, refuse and answer the same things.
//!
//! - [`submit`]: where a new job (or chain) is checked: an [`EnqueueRequest`] becomes a
//!   [`NewJob`](hopper_workers::NewJob) here and nowhere else.
//! - [`Service::submit`] stores a job or a chain; [`Service::lookup`] reads one back with its
//!   history and the steps of its chain.
//! - `coalesce`: single jobs submitted at the same time reach the broker in one call.
//!
//! This module knows no HTTP and no terminal: it speaks the engine's types and
//! [`FieldError`]s, and each front door renders them its own way.

mod coalesce;
pub mod submit;

use std::sync::Arc;

use hopper_workers::clock::Clock;
use hopper_workers::event::Event;
use hopper_workers::job::{Job, JobId, link_chain};
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
        }
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
        if then.len() > MAX_CHAIN_STEPS {
            return Err(FieldError::invalid(
                "then",
                format!("a chain has at most {MAX_CHAIN_STEPS} steps after the first"),
            )
            .into());
        }
        let now = self.clock.now();
        let first = submit::prepare(first, &self.registry, self.default_max_retries, now)?;
        let mut steps = vec![first];
        for (i, step) in then.into_iter().enumerate() {
            steps.push(submit::prepare_step(
                step,
                &format!("then[{i}]"),
                &steps[0].queue,
                &self.registry,
                self.default_max_retries,
                now,
            )?);
        }
        let chained = steps.len() > 1;
        let stored = if chained {
            self.broker.enqueue(link_chain(steps)).await
        } else {
            match steps.pop() {
                Some(job) => self.coalescer.enqueue(job).await.map(|e| vec![e]),
                None => Ok(Vec::new()),
            }
        };
        let mut done = stored.map_err(|e| match e {
            // The engine's rules are checked at the broker seam; name the step at fault
            // as the request does.
            BrokerError::Invalid(f) => SubmitError::Field(step_field(f)),
            e => SubmitError::Broker(e),
        })?;
        if done.is_empty() {
            return Err(
                BrokerError::Backend("the broker answered an enqueue with nothing".into()).into(),
            );
        }
        let first = done.remove(0);
        let steps = if chained {
            std::iter::once(first.job.clone())
                .chain(done.into_iter().map(|e| e.job))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Submitted {
            created: first.created,
            job: first.job,
            steps,
        })
    }

    /// A job, its history and its chain's steps; `None` when no job has this id.
    pub async fn lookup(&self, id: &JobId) -> Result<Option<JobDetail>, BrokerError> {
        let Some(job) = self.broker.get(id).await? else {
            return Ok(None);
        };
        let history = self.broker.history(id).await?;
        let steps = match &job.chain {
            Some(link) => self.broker.chain(&link.id).await?,
            None => Vec::new(),
        };
        Ok(Some(JobDetail {
            job,
            history,
            steps,
        }))
    }
}

/// A field the broker named in a batch (`jobs[2].priority`) as the request names it: the
/// first job's fields plainly, a later step's under `then[i]`.
fn step_field(mut f: FieldError) -> FieldError {
    let Some(rest) = f.field.strip_prefix("jobs[") else {
        return f;
    };
    let Some((index, field)) = rest.split_once("].") else {
        return f;
    };
    f.field = match index.parse::<usize>() {
        Ok(0) => field.to_owned(),
        Ok(i) => format!("then[{}].{field}", i - 1),
        Err(_) => return f,
    };
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_fields_name_the_step() {
        let named = |field: &str| step_field(FieldError::new(field, "x")).field;
        assert_eq!(named("priority"), "priority");
        assert_eq!(named("jobs[0].priority"), "priority");
        assert_eq!(named("jobs[3].timeout"), "then[2].timeout");
    }
}
