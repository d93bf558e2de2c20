//! Hopper's engine: it knows how to run *a* job, never what a job does.
//!
//! # Layout
//!
//! - [`job`]: the job model and its states.
//! - [`field`]: [`FieldError`], the one shape of a refused request field.
//! - [`event`]: the events every state change appends to a durable log.
//! - [`broker`]: the [`Broker`](broker::Broker) trait and its SQLite (`broker::sqlite`) and
//!   Redis (`broker::redis`) implementations; `broker::rate`, the per-queue job rate rule
//!   both apply in their fetch.
//! - [`handler`]: the object-safe [`Handler`](handler::Handler) the pool runs, the
//!   [`JobContext`](handler::JobContext) it runs with, and [`JobError`](handler::JobError).
//! - [`kind`]: what a job kind implements, [`Kind`](kind::Kind) (a typed payload and one
//!   `run`), payload parsing that names the bad field, and the adapter into a `Handler`.
//! - [`registry`]: the [`Registry`](registry::Registry) of kinds by their stable name.
//! - [`pool`]: the worker pool: fetch up to free slots, run with timeouts and cancellation,
//!   heartbeats, rescue of expired leases, two-phase shutdown, and its vital signs
//!   ([`Vitals`](pool::Vitals)) for a watchdog.
//! - [`metrics`]: the `hopper_*` metrics the engine records (job outcomes, run and pickup
//!   times, leases, heartbeats), the caps on client-named label values
//!   ([`LabelValues`](metrics::LabelValues)), and [`Metered`](metrics::Metered), a broker
//!   that times every call.
//! - [`nodes`]: the registry of worker nodes: [`WorkerNode`](nodes::WorkerNode), what each
//!   pool tells the broker about itself (queues, kinds, busy slots) every few seconds.
//! - [`retry`]: exponential backoff with full jitter.
//! - [`diagnostics`]: the built-in `sys.noop`, `sys.sleep` and `sys.fail` kinds.
//! - [`retention`]: `hopper.retention`, the engine's own clean-up, run as a scheduled job.
//! - [`schedule`]: cron schedules, one job per tick across any number of nodes.
//! - [`time`]: [`Timestamp`](time::Timestamp): millis inside, RFC 3339 on the wire.
//! - [`clock`]: injectable time.
//! - `testing` (feature `test-util`): the broker conformance suite, one file per topic.

pub mod broker;
pub mod clock;
pub mod diagnostics;
pub mod error;
pub mod event;
pub mod field;
pub mod handler;
pub mod job;
pub mod kind;
pub mod metrics;
pub mod nodes;
pub mod pool;
pub mod registry;
pub mod retention;
pub mod retry;
pub mod schedule;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod time;

pub use broker::Broker;
pub use error::{BrokerError, BrokerResult};
pub use field::FieldError;
pub use handler::{Handler, JobContext, JobError, JobResult};
pub use job::{Job, JobId, JobState, Lease, NewJob};
pub use kind::Kind;
pub use registry::Registry;
